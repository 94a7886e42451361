/*
 * client.h: client connections: accept, startup, TLS, authentication, relaying the
 * client's messages to its server, and closing.  Runs on the event loop thread.
 */
#ifndef PGW_PROXY_CLIENT_H
#define PGW_PROXY_CLIENT_H

#include <sys/socket.h>

#include <event2/util.h>

#include "conn.h"
#include "proto/relay.h"

/* Takes over fd (a freshly accepted socket). */
void px_client_accept(evutil_socket_t fd, const struct sockaddr *sa, int socklen);

/* Moves c to state st and onto that state's list; asserts the transition is legal. */
void px_client_set_state(struct px_client *c, enum px_client_state st);

/* Sends a FATAL ErrorResponse (when sqlstate is not NULL), then closes the connection once
 * the error is flushed.  Unlinks the server (which is reset or closed). */
void px_client_fatal(struct px_client *c, const char *sqlstate, const char *msg);
/* Sends a copy of an already built error (e.g. a server's login FATAL), then closes. */
void px_client_fatal_buffer(struct px_client *c, struct evbuffer *error);
/* Closes at once (the peer is gone). */
void px_client_close(struct px_client *c);
/* True when a client closing after an error did not read it in time (janitor). */
bool px_client_close_overdue(struct px_client *c, uint64_t now);
/* "login", "idle", "waiting", "active", "failing", "closing" (admin views). */
const char *px_client_state_name(enum px_client_state st);
/* Frees a client on the closing list (reaper only). */
void px_client_free(struct px_client *c);

/* The pool linked c to a server: welcome the client (first time) and start relaying. */
void px_client_on_linked(struct px_client *c);
/* The bookkeeping every relayed client message gets (the session-mode relay callback):
 * ReadyForQuery replies expected, unsynced extended-protocol messages, query counts;
 * CLOSE for Terminate.  Transaction pooling's own callback calls it too. */
enum px_relay_action px_client_on_request(void *ctx, struct evbuffer *out, char type,
                                          const uint8_t *body, uint32_t len);

/* Relays whatever the client has buffered to its server. */
void px_client_relay(struct px_client *c);
/* The server's output drained below the low watermark: resume reading from the client. */
void px_client_resume(struct px_client *c);

/* A client is at a transaction boundary with nothing outstanding (shutdown may close it). */
bool px_client_is_idle(const struct px_client *c);

#endif
