/*
 * txn.h: what transaction pooling adds to the session relay.
 *
 * A client in transaction mode holds a server only while it has work in flight:
 *
 *   idle (no server) --first message--> waiting | active --ReadyForQuery 'I', nothing
 *   outstanding--> idle
 *
 * While idle, pgwarden answers a few statements itself: a BEGIN is held back (answered
 * "BEGIN" + ReadyForQuery 'T') and sent, hidden, with the first real statement, so that
 * waiting (e.g. for a pgwarden lock) holds no server; an empty BEGIN/COMMIT never takes a
 * server; DEALLOCATE of a statement pgwarden tracks.  When a server is linked, pgwarden
 * first sends (hidden) the SETs that make the server's reported parameters equal the
 * client's, then the held BEGIN, then the client's bytes.
 *
 * Named prepared statements are interned by content (prepared.h) and renamed on the way
 * to the server; a statement the server lacks is prepared (hidden) before the Bind or
 * Describe that needs it.  Each server keeps a FIFO of the Parse/Close/Sync messages sent
 * to it so that the replies to hidden messages are swallowed and, when an error makes the
 * server skip to the next Sync, what the skipped messages would have done is undone.
 */
#ifndef PGW_PROXY_TXN_H
#define PGW_PROXY_TXN_H

#include "conn.h"
#include "proto/relay.h"

/* The client (state idle) has input: answer it, hold it, or ask for a server. */
void px_txn_client_idle_read(struct px_client *c);

/* c was just linked to c->server: queue the hidden re-sync and the held BEGIN.  False when
 * out of memory (the client cannot be served as it expects). */
bool px_txn_client_linked(struct px_client *c);

/* Relay tables and callbacks of transaction mode (ctx: the client, resp. the server). */
extern const uint8_t px_txn_c2s_see[256];
enum px_relay_action px_txn_c2s(void *ctx, struct evbuffer *out, char type, const uint8_t *body,
                                uint32_t len);
extern const uint8_t px_txn_s2c_see[256];
enum px_relay_action px_txn_s2c(void *ctx, struct evbuffer *out, char type, const uint8_t *body,
                                uint32_t len);

/* Swallows the replies to hidden queries.  True when none is left (relaying may go on). */
bool px_txn_read_hidden(struct px_server *s);

/* c's server was taken away at a transaction boundary: c becomes idle, and what it has
 * buffered is handled as an idle client's input. */
void px_txn_client_detached(struct px_client *c);

/* Whether a and b see the same values of the re-synced parameters. */
bool px_txn_same_params(const struct px_client *a, const struct px_client *b);

/* Returns s to the pool when its client is at a transaction boundary with nothing in
 * flight.  Call last: s may be linked to another client on return. */
void px_txn_maybe_release(struct px_server *s);

/* A reported parameter changed while c was linked (c's view follows it).  0 or -1. */
int px_txn_client_param(struct px_client *c, const char *name, const char *value);

/* The server ran DISCARD ALL / DEALLOCATE ALL: it has no prepared statement left. */
void px_txn_server_forget_statements(struct px_server *s);

void px_txn_client_free(struct px_client *c);
void px_txn_server_free(struct px_server *s);

/* The process-wide statement registry (created on first use). */
struct px_stmt_registry *px_txn_registry(void);

#endif
