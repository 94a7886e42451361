/*
 * retry.h: the retry stage: transparent replay of a client's transaction after a
 * serialization failure or deadlock (SPEC section 5, docs/retry.md), in both pool modes.
 *
 * The unit of replay is everything a client sent since its last transaction boundary (a
 * ReadyForQuery 'I' that answered its last outstanding request): one autocommit statement,
 * or a whole transaction block.  While a client is in a unit the stage keeps:
 *
 *   - every byte the client sent that pgwarden consumed (taken from its input buffer by
 *     any stage: relayed, answered by pgwarden, held back), in retry/'s recorder;
 *   - a keyed 128-bit digest (SipHash) of every response byte that reached the client,
 *     checkpointed at message boundaries (NoticeResponse, ParameterStatus and
 *     NotificationResponse excepted: they may differ between runs).
 *
 * Every byte for the client passes through the stage (px_retry_client_out for pgwarden's
 * own replies, the server relay through px_retry_relay_target and px_retry_relayed).  When
 * the server sends an ERROR with a retryable SQLSTATE (px_retry_server_error), the error
 * and whatever follows are held back, the client's next messages stay in its socket, and
 * once the server has answered everything the client sent, the stage decides: a unit that
 * is replayable (nothing after a COMMIT, no session state, within retry_buffer_bytes),
 * within max_attempts and the database's retry budget is rolled back (hidden ROLLBACK), the
 * server may go back to the pool, and after the backoff the recorded bytes are put back in
 * front of the client's input, so that every stage handles them again as if the client had
 * sent them anew (on any server: re-synced parameters, prepared statements, held BEGIN,
 * pgwarden locks, which were kept).  The replay's responses are checked against the
 * digests; when everything the client saw has been reproduced the rest flows on.  If
 * anything refuses or differs, the client gets the original error and what followed it,
 * unchanged, and the server is put back in the state that error left (a failed block, or
 * none).
 *
 * pgwarden's own errors (lock timeouts and deadlocks, injected faults) are not retried.
 * Event loop thread only.
 */
#ifndef PGW_PROXY_PATH_RETRY_H
#define PGW_PROXY_PATH_RETRY_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "conn.h"
#include "path/sqlscan.h"

/* Whether retry is on (max_attempts > 1 and a retryable SQLSTATE configured): asked once
 * per client, at login (c->retry_wanted). */
bool px_retry_enabled(void);
/* Starts recording for c (a no-op when it records already or retry is off): called when c
 * first needs it, at its first input without a server or when it gets a server (path.c),
 * so that an idle client that never sent a query keeps none of it.  False when out of
 * memory (c is then failed). */
bool px_retry_client_start(struct px_client *c);
void px_retry_client_free(struct px_client *c);
/* Frees c's retry state when c (without a server) is between transactions with nothing
 * recorded, pending, held or scheduled: an idle client keeps none of it (~2.3 kB), and
 * px_retry_client_start makes it again at its next query.  True when c has none now. */
bool px_retry_client_release_idle(struct px_client *c);

/* Where every byte for c goes (path.h px_path_client_out): the stage's buffer while c is
 * recorded, else c's output buffer. */
struct evbuffer *px_retry_client_out(struct px_client *c);

/* The server relay towards c: the buffer to relay into instead of c's output (NULL: relay
 * as usual), and the call that takes what was relayed (d: how c is written past its
 * bufferevent, px_client_direct). */
struct evbuffer *px_retry_relay_target(struct px_client *c);
void px_retry_relayed(struct px_client *c, struct px_direct d);

/* The server relay met an ErrorResponse for c (body, len; what was relayed before it is in
 * out).  True when the stage holds it back (the relay drops it). */
bool px_retry_server_error(struct px_client *c, struct evbuffer *out, const uint8_t *body,
                           uint32_t len);

/* The server relay for c is done for now: a held attempt whose replies are all in is
 * decided, a discarded replay is wound up.  Call before the server may be released. */
void px_retry_after_relay(struct px_client *c);

/* c's input must not be consumed now (a retry is being decided, waits or is verified). */
bool px_retry_holds_input(const struct px_client *c);
/* The stage decides when c's transaction ended for the client (its ReadyForQuery 'I'
 * delivered, not a failed attempt's or a hidden rollback's): it then releases c's
 * transaction-scoped pgwarden locks itself, which a replay keeps. */
bool px_retry_owns_txn_end(const struct px_client *c);

/* A statement of c's unit, classified: session state that a replay would create twice
 * (session advisory locks, LISTEN, temporary objects, ...) makes the unit not replayable. */
void px_retry_note_sql(struct px_client *c, const struct px_sql_info *info);
/* c parses a statement (name "" for the unnamed one): what its text does is remembered for
 * the Binds that run it later, in this unit or another; in session pooling a named one
 * makes the unit not replayable (a replay's Parse would find the name taken). */
void px_retry_note_parse(struct px_client *c, const char *name, const struct px_sql_info *info);
/* c binds the statement name: a CALL or DO outside a block, session state or an effect a
 * rollback does not undo, remembered from its Parse, makes the unit not replayable. */
void px_retry_note_bind(struct px_client *c, const char *name);
/* c prepared such statements: its Binds must be read (session pooling reads none else). */
bool px_retry_watches_binds(const struct px_client *c);
/* c takes or releases a session-scoped pgwarden lock: its unit is not replayed (a replay
 * could take a lock the client was told it did not get, or release one it holds). */
void px_retry_note_session_lock(struct px_client *c);
/* A message of c too big to be recorded whole (streamed): the unit is not replayable. */
void px_retry_note_streamed(struct px_client *c);

/* A CancelRequest for c: true when it ended a retry waiting for its backoff (the client
 * gets the original error at once); false: handle it as usual. */
bool px_retry_cancel(struct px_client *c);

/* c's messages are being replayed and what pgwarden answers to them may never reach the
 * client (it is checked against what the client saw, and dropped if it differs): a report
 * that must reach the client (a lost lock, locks.h) is not consumed by such an answer. */
bool px_retry_replaying(const struct px_client *c);
/* A retryable error of c's is held back until its attempt's replies are in (the client
 * has not had it, nor anything after it). */
bool px_retry_holding(const struct px_client *c);

/* For /clients: 0 when c is not being retried, else the attempt under way (2, 3, ...). */
unsigned px_retry_attempt(const struct px_client *c);

/* The configuration was (re)loaded: settings for transactions that start from now on. */
void px_retry_configure(void);
/* Frees the per-database budgets (at exit, after every client). */
void px_retry_shutdown(void);

#endif
