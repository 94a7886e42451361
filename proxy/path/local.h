/*
 * local.h: the "answered by pgwarden" stage of the statement path.
 *
 * Some statements never need a server, or must not reach one: pgwarden answers them
 * itself with the replies PostgreSQL would send, in order with everything else the client
 * receives.  Today (transaction pooling):
 *   - while the client has no server: BEGIN is held back (txn.h) and answered "BEGIN",
 *     ReadyForQuery 'T'; the COMMIT/ROLLBACK of such an empty transaction; DEALLOCATE of a
 *     statement pgwarden renamed, and DEALLOCATE ALL.  By the simple protocol, and by the
 *     extended protocol (Parse / Bind / Describe / Execute of those statements, Close);
 *   - while linked: DEALLOCATE of a renamed statement (the server does not know the
 *     client's name), when nothing is in flight so that the reply stays in order.
 * The pgwarden lock functions (SPEC section 2) are answered by locks.h, at the same stage.
 * A statement refused before it reaches a server (the circuit breaker, pool/breaker.h)
 * fails here as it would on PostgreSQL.
 *
 * Simple protocol: the input is a Query already classified by the path (sqlscan.h); the
 * message is consumed only when answered.  Extended protocol: one whole message at a
 * time, each answered at once (as PostgreSQL would, a Flush or Sync only has the replies
 * already written go out), so that waiting for a lock that follows holds no server.
 *
 * Why the extended protocol too: psycopg 3 sends its BEGIN as Parse / Bind / Describe /
 * Execute / Sync, pgJDBC sends Parse / Bind / Execute of BEGIN in the same group as the
 * first statement (and, after prepareThreshold uses, Binds a named BEGIN statement).
 * Without a held BEGIN such a client would take a server for its lock wait.
 *
 * The statement and portal of such a message are pgwarden's: a named statement is
 * recorded in the client's statement map (prepared.h) exactly as the renaming stage
 * records a relayed Parse, so a Bind of it later works on whichever server gets it; the
 * unnamed statement and the unnamed portal are kept in the client (c->local_unnamed,
 * c->local_portal) while it has no server.  Named portals are left to a server.
 *
 * Event loop thread only.
 */
#ifndef PGW_PROXY_PATH_LOCAL_H
#define PGW_PROXY_PATH_LOCAL_H

#include <stdbool.h>

#include <stdint.h>

#include "conn.h"
#include "path/sqlscan.h"

/* c has no server; the Query at the head of its input (total bytes, header included) is
 * classified as info.  True when answered (the message was removed from the input). */
bool px_local_answer_unlinked(struct px_client *c, const struct px_sql_info *info, uint32_t total);

/* c is linked; a Query classified as info is about to be relayed.  True when answered
 * here (the caller drops the message). */
bool px_local_answer_linked(struct px_client *c, const struct px_sql_info *info);

/*
 * c has no server; a whole extended-protocol message (type, body of len bytes) at the head
 * of its input is about to be handled.  Forgets what it replaces of the unnamed statement
 * and portal pgwarden keeps (a Parse of the unnamed statement, a Bind of the unnamed
 * portal, a simple Query, a Sync).  Call before any stage answers the message (locks.h
 * included), so that a lock call parsed as the unnamed statement replaces a held one.
 */
void px_local_note_unlinked(struct px_client *c, char type, const uint8_t *body, uint32_t len);

/* c has no server: answers the extended-protocol message (not Sync or Flush, which the
 * caller handles) when it is transaction control or a Close pgwarden can answer.  True
 * when answered (the caller removes it from the input); false when a server is needed. */
bool px_local_answer_unlinked_ext(struct px_client *c, char type, const uint8_t *body,
                                  uint32_t len);

/* c got a server (or goes away): the unnamed statement and portal pgwarden kept are
 * forgotten.  The server's unnamed statement is not the client's (rename.c closes it
 * before a Bind of it), as after any change of server in transaction pooling. */
void px_local_forget(struct px_client *c);

/* Writes CommandComplete tag and ReadyForQuery status to the client. */
void px_local_complete(struct px_client *c, const char *tag, char status);

/*
 * c has no server and the statement at the head of its input fails with ERROR sqlstate,
 * message and detail (may be NULL; e.g. the circuit breaker refused it), answered as
 * PostgreSQL answers a failed statement: a Query or FunctionCall gets the ErrorResponse and
 * a ReadyForQuery with c's transaction status; any other message starts an
 * extended-protocol group, which gets the ErrorResponse and whose messages are dropped up
 * to its Sync, answered with ReadyForQuery.  The failed messages are dropped as they
 * arrive, never held whole (px_local_skipping, px_local_skip).  Inside a transaction block
 * the block fails (txn.h).  True when answered (the rest of the input is handled as
 * usual, after px_local_skip); false when the client was failed (out of memory).
 */
bool px_local_fail_unlinked(struct px_client *c, const char *sqlstate, const char *message,
                            const char *detail);

/* Whether c's input starts with what a failed statement left to drop. */
static inline bool px_local_skipping(const struct px_client *c)
{
    return c->skip_bytes > 0 || c->skip_to_sync;
}

/* Drops what a failed statement left: the rest of its message and, for a failed group,
 * every message up to and including its Sync (answered with ReadyForQuery).  True when
 * done (the input that follows is new); false when more input is needed or the client was
 * closed (Terminate, bad length). */
bool px_local_skip(struct px_client *c);

#endif
