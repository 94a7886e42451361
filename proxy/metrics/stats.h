/*
 * stats.h: what the proxy reports about its traffic, in the proxy's own terms.  Each call
 * is a few increments on pre-resolved slots of the metrics registry (metrics.h), so the
 * hot path never allocates, hashes or locks.  Keeping these calls in one place means the
 * connection code never knows metric names or labels.
 */
#ifndef PGW_PROXY_STATS_H
#define PGW_PROXY_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lockmgr/lockmgr.h"

struct px_pool;

/* Pool lifetime: attach and detach the pool's metric series. */
int px_stats_pool_init(struct px_pool *pool);
void px_stats_pool_destroy(struct px_pool *pool);

void px_stats_bytes(struct px_pool *pool, size_t to_server, size_t to_client);
void px_stats_transaction(struct px_pool *pool);
void px_stats_query(struct px_pool *pool);
/* sqlstate may be NULL. */
void px_stats_error_sent(struct px_pool *pool, const char *sqlstate);
void px_stats_server_connected(struct px_pool *pool, uint64_t connect_ms);
void px_stats_pool_wait(struct px_pool *pool, uint64_t wait_ms);
void px_stats_server_connect_failed(struct px_pool *pool);
void px_stats_tls_handshake(bool client_side, bool ok);
/* reason: enum px_metrics_auth_reason. */
void px_stats_auth_failure(int reason);
void px_stats_client_accepted(void);

/* A lock wait ended and its outcome reached the client (path/locks.c): status is what
 * lockmgr delivered (LOCKMGR_OK: granted; TIMEOUT, DEADLOCK, CANCELED; anything else is
 * counted as "error"), waited_us how long the client waited. */
void px_stats_lock_wait(enum lockmgr_status status, uint64_t waited_us);

/* Registers the gauge collector; call once after px_metrics_init. */
int px_stats_init(void);
/* Registers the collector that copies lm's gauges and counters (lockmgr_stats_get) into
 * the registry before each render.  lm is borrowed: it must outlive every render (main.c
 * frees the admin port before the lock manager).  0, or -1 when the collectors are full. */
int px_stats_locks_init(const struct lockmgr *lm);

#endif
