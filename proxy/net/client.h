/*
 * client.h: client connections, the transport side: accept, startup, TLS, authentication,
 * the welcome, errors and closing.  What a welcomed client sends is the statement path's
 * business (path/path.h): this module reports it upward (the events at the end).
 * Runs on the event loop thread.
 */
#ifndef PGW_PROXY_NET_CLIENT_H
#define PGW_PROXY_NET_CLIENT_H

#include <sys/socket.h>

#include <event2/util.h>

#include "conn.h"

/* Takes over fd (a freshly accepted socket). */
void px_client_accept(evutil_socket_t fd, const struct sockaddr *sa, int socklen);

/* Moves c to state st and onto that state's list; asserts the transition is legal. */
void px_client_set_state(struct px_client *c, enum px_client_state st);

/* Ends the login: ParameterStatus of params, our BackendKeyData, ReadyForQuery.  w (may be
 * NULL) is the cached welcome params come from; the client keeps a reference. */
void px_client_welcome(struct px_client *c, const struct px_params *params, struct px_welcome *w);
/* Frees the buffer login replies are assembled in (at exit). */
void px_client_shutdown_buffers(void);

/* Sends a FATAL ErrorResponse (when sqlstate is not NULL), then closes the connection once
 * the error is flushed.  Lets go of the server (which is reset or closed). */
void px_client_fatal(struct px_client *c, const char *sqlstate, const char *msg);
/* Sends a copy of an already built error (e.g. a server's login FATAL), then closes. */
void px_client_fatal_buffer(struct px_client *c, struct evbuffer *error);
/* Closes at once (the peer is gone). */
void px_client_close(struct px_client *c);
/* True when a client closing after an error did not read it in time (janitor). */
bool px_client_close_overdue(struct px_client *c, uint64_t now);
/* "login", "idle", "waiting", "active", "batched", "failing", "closing" (admin views). */
const char *px_client_state_name(enum px_client_state st);
/* Frees a client on the closing list (reaper only). */
void px_client_free(struct px_client *c);

/* A client is at a transaction boundary with nothing outstanding (shutdown may close it). */
bool px_client_is_idle(const struct px_client *c);

/* c's address as "host:port" (or "unix"), formatted into buf. */
#define PX_CLIENT_ADDR_LEN 64
const char *px_client_addr(const struct px_client *c, char buf[PX_CLIENT_ADDR_LEN]);

/*
 * Parking (client.c): an idle or waiting client (plain, or TLS once pgwarden reads it) with
 * nothing buffered, OpenSSL's read-ahead included, and no stage holding state on its
 * buffers gives up its bufferevent (c->bev NULL) until it sends
 * something, gets an error or is linked.  px_client_park does nothing for a client that
 * cannot park.  px_client_unpark makes c->bev again (a no-op when it has one): code that
 * reaches an idle or waiting client's buffers from anywhere but its own input calls it
 * first; false: out of memory (c->bev stays NULL).
 */
void px_client_park(struct px_client *c);
__attribute__((warn_unused_result)) bool px_client_unpark(struct px_client *c);

/* ---- Events reported upward: implemented by the statement path (path/path.c) ---------- */

/* c authenticated (its cancel key registered): find its pool, welcome it or queue it. */
void px_path_client_authenticated(struct px_client *c);
/* A welcomed client (idle, waiting, active or batched) has new input. */
void px_path_client_input(struct px_client *c);
/* c's output drained below the low watermark: its server may be read again. */
void px_path_client_drained(struct px_client *c);
/* c is about to park (idle or waiting, plain socket): the statement path gives back what
 * it keeps for c only between a query and its answer (the retry stage's recorder). */
void px_path_client_parking(struct px_client *c);
/* c is failing or closing: it lets go of its server (c->server is NULL on return). */
void px_path_client_leaving(struct px_client *c);
/* c is being freed: release what the statement path keeps for it. */
void px_path_client_free(struct px_client *c);

#endif
