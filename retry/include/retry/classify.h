/*
 * retry/classify.h: what an error means for retry and for the circuit breaker.
 *
 * One static table (classify.c) maps SQLSTATEs (exact codes first, then 2-character
 * classes) to whether the error counts against the breaker; the retryable set is a
 * configurable list (default 40001, 40P01).  See retry/README.md, "Classification".
 */
#ifndef PGW_RETRY_CLASSIFY_H
#define PGW_RETRY_CLASSIFY_H

#include <stdbool.h>

#include "retry/base.h"

#define RETRY_SQLSTATES_MAX 16

/* Flags: an error may be both retryable and a breaker failure (if an operator configures,
 * e.g., 57P01 as retryable); RETRY_CLASS_NONE means "forward it, count nothing". */
enum retry_class {
    RETRY_CLASS_NONE = 0,
    RETRY_CLASS_RETRY = 1 << 0,   /* replay the transaction (subject to budget/backoff) */
    RETRY_CLASS_BREAKER = 1 << 1, /* counts as a failure for the database's breaker */
};

/* Failures that have no SQLSTATE of their own; all count against the breaker. */
enum retry_event {
    RETRY_EVENT_CONNECT_FAILED = 0, /* TCP/TLS connect to the server failed */
    RETRY_EVENT_LOGIN_FAILED,       /* server refused pgwarden's own login */
    RETRY_EVENT_CONNECT_TIMEOUT,    /* server_connect_timeout_ms expired */
    RETRY_EVENT_QUERY_TIMEOUT,      /* a probe or server reply timed out */
};

/* The configurable retryable list ([retry] retryable_sqlstates): 5-character codes or
 * 2-character classes, each NUL-terminated. */
struct retry_sqlstates {
    char codes[RETRY_SQLSTATES_MAX][6];
    unsigned n;
};

/* Fills list with the table's default retryable codes (40001, 40P01). */
void retry_sqlstates_defaults(struct retry_sqlstates *list);
/*
 * Parses a comma- or space-separated list such as "40001, 40P01" (codes of 5 or classes of
 * 2 characters from [0-9A-Z]).  On error returns RETRY_EINVAL and leaves list unchanged.
 * An empty string gives an empty list (nothing is retried).
 */
RETRY_WUR enum retry_status retry_sqlstates_parse(struct retry_sqlstates *list, const char *text);

/* Classifies sqlstate (5 characters; anything else is RETRY_CLASS_NONE).  retryable is
 * borrowed; NULL means the default list. */
unsigned retry_classify(const struct retry_sqlstates *retryable, const char *sqlstate);
/* Classifies a failure that has no SQLSTATE. */
unsigned retry_classify_event(enum retry_event ev);

#endif
