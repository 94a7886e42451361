/*
 * txn.h: transaction pooling's lifecycle of a client, and the client's transaction state.
 *
 * A client in transaction mode holds a server only while it has work in flight:
 *
 *   idle (no server) --first real statement--> waiting | active --ReadyForQuery 'I',
 *   nothing outstanding--> idle
 *
 * This module owns that cycle (asking the pool for a server, handing it back at the
 * transaction boundary) and the client's transaction state while it has no server: a
 * BEGIN held back (answered by local.h) that is sent, hidden, with the first real
 * statement, so that waiting (for a server, or a pgwarden lock) holds no server.  Other
 * stages read and change that state only through these functions.
 *
 * The one place an idle client asks for a server is px_txn_idle_input() (admission to a
 * database, e.g. a circuit breaker, belongs there); the one place a server is handed back
 * at a transaction boundary is px_txn_maybe_release().  Event loop thread only.
 */
#ifndef PGW_PROXY_PATH_TXN_H
#define PGW_PROXY_PATH_TXN_H

#include <stdbool.h>

#include <event2/buffer.h>

#include "conn.h"
#include "proto/relay.h"

/* The client (state idle) has input: answer it, hold it, or ask for a server. */
void px_txn_idle_input(struct px_client *c);

/*
 * c was just linked to c->server: sends the prelude, hidden: the SETs that re-sync the
 * server's reported parameters, then the held BEGIN.  The client's own messages wait until
 * every reply of the prelude is in (px_txn_prelude_done), so that a prelude that fails
 * (a cancel hit it) never leaves the client's statement running in the wrong session or
 * outside its transaction block.  False when out of memory.
 */
bool px_txn_linked(struct px_client *c);

/*
 * The held BEGIN without a round trip of its own: when the message that made c take a
 * server is a simple Query, or a Parse, Bind or Describe (the extended protocol), the BEGIN
 * is not sent in the prelude (c->begin_merge) but with that message.  A Query gets it in
 * front, as one Query `<BEGIN text>;<client's text>`: PostgreSQL runs both in one cycle.
 * An extended-protocol message gets it in front as Parse/Bind/Execute of the unnamed
 * statement and portal and a Close of that portal, in the same group (one Sync, one
 * cycle).  The BEGIN's own replies are swallowed (px_txn_begin_reply and hidden FIFO
 * entries).  A failed BEGIN (a cancel hit it) means PostgreSQL ran nothing of the Query
 * or group: the client gets the error and a ReadyForQuery 'E', and holds a failed block
 * (px_txn_begin_failed_ready).
 */
/* c's Query (body, len: its body) goes to out with the held BEGIN in front, in place of
 * the client's (which the relay then drops).  False when out of memory. */
bool px_txn_begin_query(struct px_client *c, struct evbuffer *out, const uint8_t *body,
                        uint32_t len);
/* c's next message is a Parse, Bind or Describe: the held BEGIN goes to out in front of it
 * (as above; the server's unnamed statement is then not c's: c->unnamed_parsed false).
 * False when out of memory. */
bool px_txn_begin_group(struct px_client *c, struct evbuffer *out);
/* c's next message is not the one the BEGIN was to go with (it was answered by pgwarden,
 * or chaos rules came): the BEGIN goes alone to out, and the client's relay waits for its
 * reply (c->reply_hold), as at link.  False when out of memory. */
bool px_txn_begin_alone(struct px_client *c, struct evbuffer *out);
/* A reply of s while s->begin_prefix: true when it is the BEGIN's BindComplete, swallowed,
 * or its CommandComplete, swallowed, which stops the relay (s->prefix_done); an error
 * marks the BEGIN failed. */
bool px_txn_begin_reply(struct px_server *s, char type, enum px_relay_action *action);
/* The ReadyForQuery of a Query or group whose BEGIN failed, once the server's own state
 * took it (path.c server_ready): for the client its block failed (ReadyForQuery 'E'
 * written to out, a failed held block); the server, outside any block, may go back to the
 * pool. */
enum px_relay_action px_txn_begin_failed_ready(struct px_server *s, struct evbuffer *out);

/* Every reply of c's prelude is in.  True when it succeeded: the client's messages may go.
 * False when it was sent again (after an error; at most three attempts) or when the client
 * was failed (it cannot be restored). */
bool px_txn_prelude_done(struct px_client *c);

/* Returns s to the pool when its client is at a transaction boundary with nothing in
 * flight.  Call last: s may be linked to another client on return. */
void px_txn_maybe_release(struct px_server *s);

/* c's server was taken away at a transaction boundary: c becomes idle, and what it has
 * buffered is handled as an idle client's input. */
void px_txn_detached(struct px_client *c);

/* ---- the transaction state of a client without a server ---- */

/* Inside a transaction block pgwarden answered (a held BEGIN). */
bool px_txn_in_block(const struct px_client *c);
/* The ReadyForQuery status to send to an unlinked client: 'T' in a held block, 'E' when
 * that block failed, else 'I'. */
char px_txn_unlinked_status(const struct px_client *c);
/* A statement of the held block failed (a lock error): later statements get 25P02 (from
 * the server, whose transaction is aborted when it is linked) and COMMIT rolls back. */
void px_txn_fail_block(struct px_client *c);
/* Takes the BEGIN (total bytes, the whole message at the head of c's input) out of the
 * input and keeps it to send with the first real statement.  False when out of memory
 * (nothing changed). */
bool px_txn_hold_begin(struct px_client *c, uint32_t total);
/* Puts c (without a server) in a failed held block, as if its BEGIN had been held and a
 * statement had failed: a transparent retry gave up and the client was told 'E'.  False
 * when out of memory. */
bool px_txn_hold_failed_block(struct px_client *c);
/* The same for a BEGIN of the extended protocol (its statement text, len bytes): kept as
 * the simple Query of that text. */
bool px_txn_hold_begin_sql(struct px_client *c, const char *sql, size_t len);
/* The held block ended without real work (COMMIT/ROLLBACK answered by pgwarden). */
void px_txn_drop_begin(struct px_client *c);

/*
 * pgwarden answered the client's current statement with an error (a lock call, an injected
 * fault): the statement failed, on both sides, as a PostgreSQL error would.  Without a
 * server, a held block is marked failed.  With one, inside a block, a statement that fails
 * on purpose aborts the server's transaction (simple: a hidden Query; its ReadyForQuery is
 * swallowed, s->txn_status says 'E' at once); in the extended protocol (simple false) a
 * hidden Parse that fails puts the server into skip-to-Sync, so the rest of the group is
 * skipped and its implicit transaction rolled back.  The caller writes the error (and, for
 * a simple query, the ReadyForQuery with the status that results).  Call only when the
 * server owes no reply (pgwarden's reply goes out now).
 */
void px_txn_statement_failed(struct px_client *c, bool simple);

/* The client's COMMIT failed (an injected fault): its transaction is rolled back (hidden
 * ROLLBACK; s->txn_status says 'I' at once), as PostgreSQL ends a transaction whose COMMIT
 * fails; in the extended protocol (simple false) the rest of the group is skipped too, so
 * the client's Sync is answered ReadyForQuery 'I'.  Same conditions as
 * px_txn_statement_failed. */
void px_txn_commit_failed(struct px_client *c, bool simple);

void px_txn_client_free(struct px_client *c);

#endif
