/*
 * local.h: the "answered by pgwarden" stage of the statement path.
 *
 * Some statements never need a server, or must not reach one: pgwarden answers them
 * itself with the replies PostgreSQL would send, in order with everything else the client
 * receives.  Today (transaction pooling):
 *   - while the client has no server: BEGIN is held back (txn.h) and answered "BEGIN",
 *     ReadyForQuery 'T'; the COMMIT/ROLLBACK of such an empty transaction; DEALLOCATE of a
 *     statement pgwarden renamed, and DEALLOCATE ALL;
 *   - while linked: DEALLOCATE of a renamed statement (the server does not know the
 *     client's name), when nothing is in flight so that the reply stays in order.
 * The pgwarden lock functions (SPEC section 2) are answered here too once they land.
 *
 * Input is a simple Query already classified by the path (sqlscan.h); the message is
 * consumed only when answered.  Event loop thread only.
 */
#ifndef PGW_PROXY_PATH_LOCAL_H
#define PGW_PROXY_PATH_LOCAL_H

#include <stdbool.h>

#include "conn.h"
#include "path/sqlscan.h"

/* c has no server; the Query at the head of its input (total bytes, header included) is
 * classified as info.  True when answered (the message was removed from the input). */
bool px_local_answer_unlinked(struct px_client *c, const struct px_sql_info *info, uint32_t total);

/* c is linked; a Query classified as info is about to be relayed.  True when answered
 * here (the caller drops the message). */
bool px_local_answer_linked(struct px_client *c, const struct px_sql_info *info);

/* Writes CommandComplete tag and ReadyForQuery status to the client. */
void px_local_complete(struct px_client *c, const char *tag, char status);

#endif
