/*
 * outcome.h: the outcome of a COMMIT whose server connection was lost (SPEC section 5,
 * docs/retry.md "COMMIT with an unknown outcome").
 *
 * Such a COMMIT is never sent again.  Instead pgwarden learns the transaction's id without
 * a round trip of its own, on a server that owes nothing: a simple-Query COMMIT goes out as
 * one Query `SELECT pg_current_xact_id_if_assigned();COMMIT` (the client's own text after
 * the `;`), whose first replies (RowDescription, DataRow, CommandComplete) are swallowed:
 * PostgreSQL runs both in one cycle, with one ReadyForQuery and one send (a query of its
 * own cost PostgreSQL 7-13% more CPU per pgbench tpcb-like transaction).  The Parse of an
 * unnamed COMMIT starting an extended-protocol group gets the SELECT in front in the same
 * group, as Parse/Bind/Execute of the unnamed statement, which the client's Parse replaces
 * right after (one Sync); a named COMMIT statement's Bind gets it as a hidden Query in the
 * same write.  An error before the SELECT's CommandComplete (a cancel, a terminated
 * backend) means the COMMIT never ran: the client gets it as usual.  When the server is
 * lost after the COMMIT went out and before its ReadyForQuery came back, the client is
 * answered with what PostgreSQL says on another server of the pool
 * (`pg_xact_status(xid)`):
 *
 *   committed        CommandComplete COMMIT, as if nothing had happened;
 *   aborted          ERROR 40000 (transaction_rollback): it did not commit;
 *   in progress      asked again every 100 ms, at most 10 s (the backend notices it lost
 *                    its connection and ends the transaction);
 *   no id assigned   CommandComplete COMMIT: the transaction wrote nothing;
 *   anything else    ERROR 40003 (statement_completion_unknown): the id was not learned,
 *                    the status is unknown, or no server answered in time.
 *
 * In transaction pooling the client then goes on (its session state follows it to the
 * next server); in session pooling its session is gone with the server, so the answer is
 * followed by FATAL 08006.  Only while retry is on ([retry] max_attempts > 1).
 * Event loop thread only.
 */
#ifndef PGW_PROXY_PATH_OUTCOME_H
#define PGW_PROXY_PATH_OUTCOME_H

#include <stdbool.h>

#include <event2/buffer.h>

#include "conn.h"
#include "proto/relay.h"

/* c's COMMIT is being relayed to its server (out: the relay's destination; quiescent: the
 * server owes no reply).  Sends the hidden transaction-id query first when it can. */
void px_outcome_commit_sent(struct px_client *c, struct evbuffer *out, bool quiescent);

/* The same for a simple Query COMMIT (body, len: the Query's body): true when it wrote the
 * Query with the transaction-id query in front to out, in place of the client's (which the
 * relay then drops); false: the client's Query goes as it is. */
bool px_outcome_commit_query(struct px_client *c, struct evbuffer *out, bool quiescent,
                             const uint8_t *body, uint32_t len);

/* The same for the Parse (body, len: its body) of a COMMIT that starts an extended-protocol
 * group.  For the unnamed statement, the transaction-id query goes in front in the same
 * group, as Parse/Bind/Execute of the unnamed statement (which the client's Parse replaces
 * right after), one Sync and one PostgreSQL cycle for both, its replies swallowed like the
 * simple form's; a named statement's COMMIT gets it as a hidden Query (px_outcome_commit_sent). */
void px_outcome_commit_parse(struct px_client *c, struct evbuffer *out, bool quiescent,
                             const uint8_t *body, uint32_t len);

/* A reply of s while s->xid_prefix: true when it is the prefix's, swallowed (*action), its
 * DataRow kept; its CommandComplete ends the prefix and stops the relay
 * (s->prefix_done) so that the rest is relayed as usual. */
bool px_outcome_prefix_reply(struct px_server *s, char type, const uint8_t *body, uint32_t len,
                             enum px_relay_action *action);

/* c's server s was lost (s and c are already unlinked).  True when c's COMMIT was in flight
 * and this module answers it; false: the client gets the usual connection error. */
bool px_outcome_server_lost(struct px_client *c, struct px_server *s);

/* An answer is being found for c: its input waits. */
bool px_outcome_pending(const struct px_client *c);

/* c was linked to a server to ask for the outcome: sends the status query (hidden). */
void px_outcome_linked(struct px_client *c);

/* The hidden replies on c's server are all in: answers the client when the status query's
 * answer is there.  False when c was failed or is gone (stop). */
bool px_outcome_hidden_done(struct px_client *c);

void px_outcome_client_free(struct px_client *c);

#endif
