/*
 * server.h: server connections, the transport side: connecting to PostgreSQL, TLS,
 * startup, authentication as a client of PostgreSQL, the reset before reuse, and closing.
 * Relaying an active server's replies is the statement path's business (path/path.h):
 * this module reports events upward (the declarations at the end).  Event loop thread.
 */
#ifndef PGW_PROXY_NET_SERVER_H
#define PGW_PROXY_NET_SERVER_H

#include <sys/socket.h>

#include "conn.h"

/* Opens a new server connection for pool, with opener's startup parameters (opener NULL:
 * none, for a connection pgwarden opens itself, e.g. a circuit-breaker probe).  Returns
 * NULL when it cannot even start (the caller fails the client). */
struct px_server *px_server_launch(struct px_pool *pool, struct px_client *opener);
/* The plaintext password pgwarden logs in to pool's servers with (the [databases] entry's
 * password=, else the auth_file's plaintext one), or NULL. */
const char *px_pool_server_password(const struct px_pool *pool);

void px_server_set_state(struct px_server *s, enum px_server_state st);

/* Closes s; a linked client gets a FATAL error and is closed too.  reason is logged. */
void px_server_close(struct px_server *s, const char *reason);
/* Frees a server on the closing list (reaper only). */
void px_server_free(struct px_server *s);

/* The client let go of s (it disconnected, or transaction pooling detaches it).  The server
 * is reset and returned to the pool.  Work the client left in flight is cancelled and its
 * replies are drained first (the caller has emptied the expected-reply FIFO); s is closed
 * when that cannot be done (client_mid_message: the client stream stopped inside a message;
 * marked for close; shutting down). */
void px_server_release(struct px_server *s, bool client_mid_message);

/* The cancel that s sent for its last client's work is done (net/cancel.c): a reset that
 * waited for it makes s ready now. */
void px_server_cancel_finished(struct px_server *s);

/* A ParameterStatus from s (body: name\0value\0): s's own view follows it.  *name and
 * *value point into body.  0, or -1 when malformed or out of memory. */
int px_server_param_status(struct px_server *s, const uint8_t *body, uint32_t len,
                           const char **name, const char **value);

/* The socket address of pool's PostgreSQL.  0, or -1 when it cannot be resolved. */
int px_server_address(const struct px_pool *pool, struct sockaddr_storage *ss, socklen_t *len);

/* ---- Events reported upward ------------------------------------------------------------ */

/* Implemented by the pool (pool/pool.c): */
/* s logged in (its welcome is cached by the pool, then it is handed out or parked idle). */
void px_pool_server_logged_in(struct px_server *s);
/* s finished resetting: hand it out or park it idle. */
void px_pool_server_ready(struct px_server *s);
/* s failed to log in.  error (may be NULL) is the server's ErrorResponse message, copied
 * to the clients that wait for this kind of server; otherwise msg describes the failure
 * and the pool fast-fails new clients for server_login_retry_ms. */
void px_pool_server_login_failed(struct px_server *s, struct evbuffer *error, const char *msg);
/* s is closing: its slot in the pool comes free. */
void px_pool_server_closed(struct px_server *s);
/* An active server's connection was lost (before px_server_close): the database's health
 * (implemented by pool/breaker.c). */
void px_pool_server_lost(struct px_server *s);

/* Implemented by the statement path (path/path.c): */
/* An active server has new input (also once more when its connection is lost). */
void px_path_server_input(struct px_server *s);
/* s's output drained below the low watermark: its client may be read again. */
void px_path_server_drained(struct px_server *s);
/* s is closing: clients whose queries were batched on it get their error. */
void px_path_server_closing(struct px_server *s);
/* s was lost while linked to c (already unlinked): true when the statement path answers c
 * itself (a COMMIT in flight, path/outcome.h); false: c gets the connection error. */
bool px_path_server_lost(struct px_client *c, struct px_server *s);
/* s is being freed: release what the statement path keeps for it. */
void px_path_server_free(struct px_server *s);

#endif
