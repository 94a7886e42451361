/*
 * fault.h: the fault-injection stage of the statement path (SPEC section 7).
 *
 * Between "answered by pgwarden" and the session stage (proxy/README.md), each statement
 * that is about to reach a server is shown to the rule engine (chaos/chaos.h) as a
 * "statement" or a "commit", or not at all:
 *   - a simple Query: COMMIT / END is a commit; other transaction control (BEGIN, START
 *     TRANSACTION, ROLLBACK), empty queries and a driver's housekeeping (DEALLOCATE,
 *     DISCARD ALL) are never shown; the rest are statements;
 *   - an Execute: what its portal runs, classified the same way.  The statement behind the
 *     unnamed portal is known from the client's Bind: the unnamed statement's last Parse,
 *     or a named statement's text.  Drivers run their own transaction control as named
 *     statements (pgJDBC Binds a named BEGIN after prepareThreshold uses, psycopg 3
 *     prepares any query it ran prepare_threshold times), so named statements are
 *     classified too: in transaction pooling from the client's statement map (prepared.h,
 *     c->stmts); in session pooling, where pgwarden keeps no map, from the names of the
 *     client's named statements that are transaction control (or housekeeping), recorded
 *     at every named Parse whether rules exist or not (a connection may have prepared its
 *     BEGIN before the first rule was added), at most 16 of them per client,
 *     the least recently bound forgotten first.  Executes of named portals are statements.
 * What a rule injects:
 *   error       the client gets ErrorResponse (the rule's SQLSTATE and message) instead of
 *               the statement's reply, and both sides end up as after a real error: inside
 *               a block the server's transaction is aborted (txn.h), at COMMIT it is rolled
 *               back (by either protocol), in the extended protocol the rest of the group is
 *               skipped;
 *   latency     the statement waits latency_ms before it goes on;
 *   disconnect  the server connection is closed instead of sending the statement (the client
 *               gets 08006 as from a lost server), or, at commit, just after the COMMIT is
 *               sent (an ambiguous commit).
 * With no rules the stage costs one load and one branch per statement, plus, in session
 * pooling, a look at the text of each named Parse (its prepare, not its executions).
 * Event loop thread only.
 */
#ifndef PGW_PROXY_PATH_FAULT_H
#define PGW_PROXY_PATH_FAULT_H

#include <stdbool.h>

#include "chaos/chaos.h"
#include "conn.h"

enum px_fault_verdict {
    PX_FAULT_NONE = 0,   /* nothing injected: the statement goes on */
    PX_FAULT_ANSWERED,   /* an error was injected: the message is dropped */
    PX_FAULT_HOLD,       /* wait: latency, or a server reply is owed before the error */
    PX_FAULT_DISCONNECT, /* forward the message, then close the server (commit) */
    PX_FAULT_CLOSED,     /* the server, or the client, is closed (the client got its error) */
};

/* A client message about to go to c->server (type 'Q' or 'E'; body of len bytes).
 * may_answer: the server owes no reply (pgwarden may answer now). */
enum px_fault_verdict px_fault_message(struct px_client *c, char type, const uint8_t *body,
                                       uint32_t len, bool may_answer);

/* What a statement is to the rules (struct px_client's fault_unnamed_stmt and
 * fault_unnamed_portal, the session-pooling names). */
enum px_fault_stmt {
    PX_FAULT_STMT_OTHER = 0, /* a statement */
    PX_FAULT_STMT_COMMIT,    /* COMMIT / END: a commit */
    PX_FAULT_STMT_NEVER,     /* BEGIN, ROLLBACK, empty, DEALLOCATE, DISCARD ALL: never hit */
};

/* A Parse of c's goes to its server (body whole).  Remembers what the unnamed statement is
 * (while rules exist), and in session pooling whether a named one is transaction control.
 * Call for every Parse relayed, rules or not. */
void px_fault_note_parse(struct px_client *c, const uint8_t *body, uint32_t len);

/* A Bind of c's goes to its server (while rules exist; body whole, or the head of a long
 * one: len bytes of it): remembers what the unnamed portal runs.  True when it binds a
 * named statement that is COMMIT and a rule is for c's commits: the caller counts the
 * COMMIT as being sent from here (outcome.h), as it does at the Parse of an unnamed
 * COMMIT, so that a disconnect injected at it is answered the same way (without such a
 * rule nothing more is sent: the outcome stage learns a transaction's id only for an
 * unnamed COMMIT). */
bool px_fault_note_bind(struct px_client *c, const uint8_t *body, uint32_t len);

/* The head (len bytes) of a Parse too long to be read whole: a statement (while rules
 * exist). */
void px_fault_note_long_parse(struct px_client *c, const uint8_t *head, uint32_t len);

/* Frees the client's fault state (its latency timer, the names it kept). */
void px_fault_client_free(struct px_client *c);

#endif
