/*
 * classify.c: the SQLSTATE classification table and the retryable list.
 *
 * Interface (retry/classify.h): retry_sqlstates_defaults, retry_sqlstates_parse,
 * retry_classify, retry_classify_event.  The table is the single place that says which
 * errors are contention (retryable by default, never a breaker failure), which are the
 * database's health (breaker failures), and which are the application's (neither).  See
 * retry/README.md, "Classification".
 */
#include <stdbool.h>
#include <string.h>

#include "retry/classify.h"
#include "retry_int.h"

struct class_row {
    const char *pattern; /* 5-character code, or 2-character class */
    bool retry_default;  /* in the default retryable list */
    bool breaker;        /* counts as a breaker failure */
};

/* Exact codes first: the first matching row wins.  Anything not listed: neither. */
static const struct class_row class_table[] = {
    {"40001", true, false},  /* serialization_failure: contention */
    {"40P01", true, false},  /* deadlock_detected: contention */
    {"55P03", false, false}, /* lock_not_available: contention, opt-in retry only */
    {"57P01", false, true},  /* admin_shutdown */
    {"57P02", false, true},  /* crash_shutdown */
    {"57P03", false, true},  /* cannot_connect_now */
    {"57014", false, false}, /* query_canceled: the client's or a timeout's doing */
    {"08", false, true},     /* connection exceptions */
    {"53", false, true},     /* insufficient resources (53300 too_many_connections) */
    {"22", false, false},    /* data exceptions: application */
    {"23", false, false},    /* integrity constraints: application (23505 never by default) */
    {"42", false, false},    /* syntax and access rules: application */
};

#define CLASS_TABLE_LEN (sizeof(class_table) / sizeof(class_table[0]))

/* Table for failures without SQLSTATE, indexed by enum retry_event. */
static const unsigned event_table[] = {
    [RETRY_EVENT_CONNECT_FAILED] = RETRY_CLASS_BREAKER,
    [RETRY_EVENT_LOGIN_FAILED] = RETRY_CLASS_BREAKER,
    [RETRY_EVENT_CONNECT_TIMEOUT] = RETRY_CLASS_BREAKER,
    [RETRY_EVENT_QUERY_TIMEOUT] = RETRY_CLASS_BREAKER,
};

static bool sqlstate_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z');
}

static bool sqlstate_valid(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!sqlstate_char(s[i]))
            return false;
    return true;
}

/* A pattern of 2 characters matches the class, of 5 the exact code. */
static bool pattern_matches(const char *pattern, const char *sqlstate)
{
    return strncmp(pattern, sqlstate, strlen(pattern)) == 0;
}

void retry_sqlstates_defaults(struct retry_sqlstates *list)
{
    list->n = 0;
    for (size_t i = 0; i < CLASS_TABLE_LEN; i++) {
        if (!class_table[i].retry_default)
            continue;
        RETRY_ASSERT(list->n < RETRY_SQLSTATES_MAX);
        strcpy(list->codes[list->n++], class_table[i].pattern);
    }
}

enum retry_status retry_sqlstates_parse(struct retry_sqlstates *list, const char *text)
{
    struct retry_sqlstates out = {.n = 0};
    const char *p = text;

    while (*p) {
        if (*p == ',' || *p == ' ' || *p == '\t') {
            p++;
            continue;
        }
        size_t len = strcspn(p, ", \t");
        if ((len != 5 && len != 2) || !sqlstate_valid(p, len) || out.n == RETRY_SQLSTATES_MAX)
            return RETRY_EINVAL;
        memcpy(out.codes[out.n], p, len);
        out.codes[out.n++][len] = '\0';
        p += len;
    }
    *list = out;
    return RETRY_OK;
}

static bool list_contains(const struct retry_sqlstates *list, const char *sqlstate)
{
    for (unsigned i = 0; i < list->n; i++)
        if (pattern_matches(list->codes[i], sqlstate))
            return true;
    return false;
}

unsigned retry_classify(const struct retry_sqlstates *retryable, const char *sqlstate)
{
    if (!sqlstate || strlen(sqlstate) != 5 || !sqlstate_valid(sqlstate, 5))
        return RETRY_CLASS_NONE;

    unsigned cls = RETRY_CLASS_NONE;
    for (size_t i = 0; i < CLASS_TABLE_LEN; i++) {
        if (!pattern_matches(class_table[i].pattern, sqlstate))
            continue;
        if (class_table[i].breaker)
            cls |= RETRY_CLASS_BREAKER;
        if (!retryable && class_table[i].retry_default)
            cls |= RETRY_CLASS_RETRY;
        break;
    }
    if (retryable && list_contains(retryable, sqlstate))
        cls |= RETRY_CLASS_RETRY;
    return cls;
}

unsigned retry_classify_event(enum retry_event ev)
{
    if ((unsigned)ev >= sizeof(event_table) / sizeof(event_table[0]))
        return RETRY_CLASS_BREAKER;
    return event_table[ev];
}
