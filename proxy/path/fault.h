/*
 * fault.h: the fault-injection stage of the statement path (SPEC section 7).
 *
 * Between "answered by pgwarden" and the session stage (proxy/README.md), each statement
 * that is about to reach a server is shown to the rule engine (chaos/chaos.h): a simple
 * Query (COMMIT / END as "commit", other transaction control never, the rest as
 * "statement"), or an Execute (the unnamed statement last parsed as COMMIT is "commit").
 * What a rule injects:
 *   error       the client gets ErrorResponse (the rule's SQLSTATE and message) instead of
 *               the statement's reply, and both sides end up as after a real error: inside
 *               a block the server's transaction is aborted (txn.h), at COMMIT it is rolled
 *               back, in the extended protocol the rest of the group is skipped;
 *   latency     the statement waits latency_ms before it goes on;
 *   disconnect  the server connection is closed instead of sending the statement (the client
 *               gets 08006 as from a lost server), or, at commit, just after the COMMIT is
 *               sent (an ambiguous commit).
 * With no rules the stage costs one load and one branch per statement.
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
    PX_FAULT_CLOSED,     /* the server was closed (the client got its error) */
};

/* A client message about to go to c->server (type 'Q' or 'E'; body of len bytes).
 * may_answer: the server owes no reply (pgwarden may answer now). */
enum px_fault_verdict px_fault_message(struct px_client *c, char type, const uint8_t *body,
                                       uint32_t len, bool may_answer);

/* What an Execute of the unnamed portal runs, for the rules (struct px_client's
 * fault_unnamed_stmt and fault_unnamed_portal).  A named statement is always a statement. */
enum px_fault_stmt {
    PX_FAULT_STMT_OTHER = 0,   /* a statement */
    PX_FAULT_STMT_COMMIT,      /* COMMIT / END: a commit */
    PX_FAULT_STMT_TXN_CONTROL, /* BEGIN, ROLLBACK, empty: never injected into */
};

/* A Parse of c's goes to its server: remembers what the unnamed statement is. */
void px_fault_note_parse(struct px_client *c, const uint8_t *body, uint32_t len);
/* A Bind of c's goes to its server: remembers what the unnamed portal runs. */
void px_fault_note_bind(struct px_client *c, const uint8_t *body, uint32_t len);

/* Frees the client's fault state (its latency timer). */
void px_fault_client_free(struct px_client *c);

#endif
