/*
 * pool.h: pools of server connections per (database, user), and the waiting queue of
 * clients.  The pool decides which server a client gets, when a new server is opened, and
 * runs the periodic janitor (timeouts, idle servers, shutdown progress).
 */
#ifndef PGW_PROXY_POOL_H
#define PGW_PROXY_POOL_H

#include <sys/socket.h>

#include "conn.h"

/* Finds (by hash) or creates the pool of (database, user), configured from db.  NULL on
 * ENOMEM.  The caller takes a reference with px_pool_ref (conn.h) for the object that keeps
 * it. */
struct px_pool *px_pool_get(const char *database, const char *user, const struct px_db_config *db);

/* An authenticated client wants a server: link one now or queue the client (FIFO). */
void px_pool_request_server(struct px_pool *pool, struct px_client *c);

/* Whether s may serve c (startup signatures; see pool.c). */
bool px_pool_server_fits(const struct px_server *s, const struct px_client *c);

/* px_pool_server_logged_in, px_pool_server_ready, px_pool_server_login_failed and
 * px_pool_server_closed are the transport's events (declared in net/server.h). */

/* Whether pool's database can serve now (GET /health): its circuit breaker is closed, and
 * it has a logged-in server or its last server connect attempt did not fail recently.  See
 * pool.c for the exact rule. */
bool px_pool_can_serve(const struct px_pool *pool, uint64_t now);

/* The cached welcome of a startup signature (moved to most recently used), or NULL. */
struct px_welcome *px_pool_welcome_find(struct px_pool *pool, const char *sig, size_t len);
/* s just logged in: cache what it reported for its signature and keep a reference in s. */
void px_pool_welcome_store(struct px_server *s);

/* Opens servers for waiting clients while the pool has room. */
void px_pool_maintain(struct px_pool *pool);
/* Runs px_pool_maintain(pool) at the next safe point of the loop (from callbacks that may
 * be inside an iteration over the pool's lists). */
void px_pool_schedule_maintain(struct px_pool *pool);
/* The reaper's part: runs the scheduled maintenance. */
void px_pool_run_pending(void);

/* Periodic work (timeouts, idle servers); now is px_now_ms(). */
void px_pool_janitor(uint64_t now);

/* After SIGHUP: refresh every pool from the new [databases] entries. */
void px_pool_reconfigure(void);

/* Shutdown: close what is idle; when no client is left, stop the loop. */
void px_pool_check_shutdown(void);

/* Frees every pool and server (after the loop has stopped). */
void px_pool_free_all(void);

/* ---- Events reported upward: implemented by the statement path (path/path.c) ---------- */

/* c was just linked to c->server.  queued: the server was freed for c, the first client
 * waiting in the queue. */
void px_path_client_linked(struct px_client *c, bool queued);

#endif
