/*
 * classify.h: a client's simple queries are classified once.
 *
 * The statement path looks at a simple Query's text twice in transaction mode: while the
 * client has no server (is it a BEGIN to hold back, a statement pgwarden answers?) and
 * again when the message is relayed to a server (session state it creates).  The lexer
 * (sqlscan.h) runs once: the first look stores what the relay needs in the client
 * (c->head_sql_*), and the second look reuses it when it is the same message.
 * Event loop thread only.
 */
#ifndef PGW_PROXY_PATH_CLASSIFY_H
#define PGW_PROXY_PATH_CLASSIFY_H

#include "conn.h"
#include "path/sqlscan.h"

/* Simple queries up to this size are classified; larger ones are PX_SQL_OTHER unread. */
#define PX_CLASSIFY_MAX (64 * 1024)

/* Classifies the Query at the head of c's input (body: its text, len bytes, the
 * terminating NUL included if present) and remembers the result for px_classify_relayed. */
void px_classify_head(struct px_client *c, const uint8_t *body, uint32_t len,
                      struct px_sql_info *info);

/* A Query of c is being relayed: its classification, reused when px_classify_head saw the
 * same message (a DEALLOCATE's name is not kept: it is scanned again). */
void px_classify_relayed(struct px_client *c, const uint8_t *body, uint32_t len,
                         struct px_sql_info *info);

#endif
