/*
 * path.h: the statement path: what happens to a client's messages between the client
 * socket and the server socket, and to the server's replies on the way back.  The design
 * is in proxy/README.md ("The statement path") and docs/architecture.md.
 *
 * This module is the one place where the stages are composed, in order:
 *
 *   client -> server (per message, px_relay callback):
 *     classify (classify.h, sqlscan.h) -> answered by pgwarden (local.h) -> session state
 *     (session.h) -> statement renaming (rename.h) -> expected replies (expect.h) -> server
 *   server -> client:
 *     hidden replies swallowed (expect.h) -> reply matched to the FIFO (expect.h) ->
 *     bookkeeping (ReadyForQuery, ParameterStatus -> session.h, ErrorResponse) -> client,
 *     and at a transaction boundary the server goes back to the pool (txn.h)
 *
 * It also implements the events the layers below report upward (net/client.h,
 * net/server.h, pool/pool.h: "implemented by the statement path"), so that the transport
 * and the pool never call into the stages directly.  Event loop thread only.
 */
#ifndef PGW_PROXY_PATH_PATH_H
#define PGW_PROXY_PATH_PATH_H

#include "conn.h"

/* Relays what the client has buffered to its server, through the stages. */
void px_path_relay_client(struct px_client *c);

/* Relays what the server has buffered to its client (with a batch: to each batched client
 * in turn), through the stages. */
void px_path_relay_server(struct px_server *s);

/* Transaction mode: moves c's input through the client->server stages into out (which is
 * not written to the socket now: query batching collects several clients' queries in
 * one write).  Returns the relay's result; *moved: bytes appended to out. */
enum px_relay_result px_path_relay_into(struct px_client *c, struct evbuffer *out, size_t *moved);

/*
 * Where a stage writes messages of its own for c's server: while c's messages are being
 * relayed, the relay's destination (the bytes relayed before the current message are
 * there, those after it follow), else the server's output buffer.  Writing anywhere else
 * could put pgwarden's message behind client messages relayed after it.
 */
struct evbuffer *px_path_server_out(struct px_client *c);

/* Where a stage writes messages of its own for client c (its replies, errors,
 * ReadyForQuery): through the retry stage (retry.h), which sees every byte the client
 * gets.  Never c's output buffer directly. */
struct evbuffer *px_path_client_out(struct px_client *c);
/* pgwarden's own reply to c, assembled in reply (left empty): as px_path_client_out, but
 * written to the client's socket at once when nothing is queued before it. */
void px_path_client_send(struct px_client *c, struct evbuffer *reply);

#endif
