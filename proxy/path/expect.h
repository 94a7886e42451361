/*
 * expect.h: what a server still owes pgwarden, so that replies are matched by position.
 *
 * Two things are tracked per server connection (struct px_server in conn.h):
 *   - hidden queries: simple Query messages pgwarden sent on its own (the re-sync SETs,
 *     the held-back BEGIN).  They are always sent before the client's bytes, so their
 *     replies come first; px_expect_read_hidden() reads and swallows them.
 *   - the expected-reply FIFO: every Parse, Close and Sync (and Query / FunctionCall,
 *     which end with ReadyForQuery like a Sync) sent to the server in transaction mode,
 *     in order, with whether pgwarden sent it itself (its reply is swallowed) and what
 *     sending it did to the server's statement set (undone if an error makes the server
 *     skip it).  Replies are matched to entries by order, never by guessing from content.
 *
 * Part of the statement path (path/README in proxy/README.md); no I/O of its own except
 * reading the server's input buffer in px_expect_read_hidden().  Event loop thread only.
 */
#ifndef PGW_PROXY_PATH_EXPECT_H
#define PGW_PROXY_PATH_EXPECT_H

#include <stdbool.h>

#include "conn.h"

enum px_expect_kind { PX_EXP_PARSE = 1, PX_EXP_CLOSE, PX_EXP_SYNC };
enum px_expect_setop { PX_SETOP_NONE = 0, PX_SETOP_ADD, PX_SETOP_REMOVE };

/* Appends an entry (zeroed but for kind and hidden); NULL when out of memory. */
struct px_expect *px_expect_push(struct px_server *s, enum px_expect_kind kind, bool hidden);
/* The oldest entry, or NULL. */
struct px_expect *px_expect_head(struct px_server *s);
/* Drops the oldest entry (there must be one). */
void px_expect_pop(struct px_server *s);
/* An error made the server skip everything up to the next Sync: undoes, newest first, what
 * the skipped Parse/Close entries did to the server's statement set and the client's
 * names, and drops them. */
void px_expect_skip_to_sync(struct px_server *s);

enum px_hidden_result {
    PX_HIDDEN_DONE,   /* no hidden reply is owed any more: relaying may go on */
    PX_HIDDEN_MORE,   /* more input is needed */
    PX_HIDDEN_CLOSED, /* s was closed (and its client failed) */
};

/*
 * Swallows the replies to hidden queries at the head of s's input.  An ERROR reply (a
 * cancel that hit a hidden SET, say) sets s->prelude_failed and keeps its message in
 * s->prelude_error: the caller sends the prelude again once DONE.  A FATAL reply (the
 * backend was terminated) is the client's answer: it gets PostgreSQL's own error and s is
 * closed.
 */
enum px_hidden_result px_expect_read_hidden(struct px_server *s);

/* Keeps the first value of a hidden query's DataRow in s->captured (NULL:
 * s->captured_null), for path/outcome.h. */
void px_expect_capture_value(struct px_server *s, const uint8_t *body, uint32_t len);

/* Frees the FIFO (server teardown). */
void px_expect_free(struct px_server *s);

#endif
