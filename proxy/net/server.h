/*
 * server.h: server connections: connecting to PostgreSQL, TLS, startup, authentication as
 * a client of PostgreSQL, relaying the server's messages to the linked client, the reset
 * before reuse, and closing.  Runs on the event loop thread.
 */
#ifndef PGW_PROXY_SERVER_H
#define PGW_PROXY_SERVER_H

#include "conn.h"
#include "proto/relay.h"

/* Opens a new server connection for pool, with opener's startup parameters.  Returns NULL
 * when it cannot even start (the caller fails the client). */
struct px_server *px_server_launch(struct px_pool *pool, struct px_client *opener);

void px_server_set_state(struct px_server *s, enum px_server_state st);

/* Closes s; a linked client gets a FATAL error and is closed too.  reason is logged. */
void px_server_close(struct px_server *s, const char *reason);
/* Frees a server on the closing list (reaper only). */
void px_server_free(struct px_server *s);

/* The client let go of s (it disconnected, or transaction pooling detaches it).  The server
 * is reset and returned to the pool when its protocol state is clean, else closed.
 * client_mid_message: the client stream stopped inside a message. */
void px_server_release(struct px_server *s, bool client_mid_message);

/* The bookkeeping every relayed server reply gets (ReadyForQuery, ParameterStatus,
 * ErrorResponse); transaction pooling's own reply handler calls it too. */
enum px_relay_action px_server_on_reply(struct px_server *s, char type, const uint8_t *body,
                                        uint32_t len);

/* Relays what the server has buffered to its client. */
void px_server_relay(struct px_server *s);
/* The client's output drained below the low watermark: resume reading from the server. */
void px_server_resume(struct px_server *s);

#endif
