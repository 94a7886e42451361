/*
 * pool.h: pools of server connections per (database, user), and the waiting queue of
 * clients.  The pool decides which server a client gets, when a new server is opened, and
 * runs the periodic janitor (timeouts, idle servers, shutdown progress).
 */
#ifndef PGW_PROXY_POOL_H
#define PGW_PROXY_POOL_H

#include <sys/socket.h>

#include "conn.h"

/* Finds or creates the pool of (database, user), configured from db.  NULL on ENOMEM. */
struct px_pool *px_pool_get(const char *database, const char *user, const struct px_db_config *db);

/* An authenticated client wants a server: link one now or queue the client (FIFO). */
void px_pool_request_server(struct px_pool *pool, struct px_client *c);

/* Whether s may serve c (startup signatures; see pool.c). */
bool px_pool_server_fits(const struct px_server *s, const struct px_client *c);

/* s finished logging in or resetting: give it to the first waiting client with the same
 * startup signature, else park it idle. */
void px_pool_server_ready(struct px_server *s);

/* s failed to log in.  error (may be NULL) is the server's ErrorResponse message, copied
 * to the clients that wait for this kind of server; otherwise msg describes the failure
 * and the pool fast-fails new clients for server_login_retry_ms. */
void px_pool_server_login_failed(struct px_server *s, struct evbuffer *error, const char *msg);

/* Whether pool's database can serve now (GET /health): it has a logged-in server, or its
 * last server connect attempt did not fail recently.  See pool.c for the exact rule. */
bool px_pool_can_serve(const struct px_pool *pool, uint64_t now);

/* The cached welcome of a startup signature (moved to most recently used), or NULL. */
struct px_welcome *px_pool_welcome_find(struct px_pool *pool, const char *sig, size_t len);
/* s just logged in: cache what it reported for its signature and keep a reference in s. */
void px_pool_welcome_store(struct px_server *s);
struct px_welcome *px_welcome_ref(struct px_welcome *w);
void px_welcome_unref(struct px_welcome *w); /* NULL is a no-op */

/* Opens servers for waiting clients while the pool has room. */
void px_pool_maintain(struct px_pool *pool);
/* Runs px_pool_maintain(pool) at the next safe point of the loop (from callbacks that may
 * be inside an iteration over the pool's lists). */
void px_pool_schedule_maintain(struct px_pool *pool);
/* The reaper's part: runs the scheduled maintenance. */
void px_pool_run_pending(void);

/* The socket address of the pool's server.  Returns 0, or -1 when it cannot be resolved. */
int px_pool_address(const struct px_pool *pool, struct sockaddr_storage *ss, socklen_t *len);

/* Periodic work (timeouts, idle servers); now is px_now_ms(). */
void px_pool_janitor(uint64_t now);

/* After SIGHUP: refresh every pool from the new [databases] entries. */
void px_pool_reconfigure(void);

/* Shutdown: close what is idle; when no client is left, stop the loop. */
void px_pool_check_shutdown(void);

/* Frees every pool and server (after the loop has stopped). */
void px_pool_free_all(void);

#endif
