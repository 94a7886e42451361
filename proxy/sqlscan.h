/*
 * sqlscan.h: a small classifier of simple-query SQL text, for transaction pooling.
 *
 * Why: in transaction mode pgwarden answers or holds back a few statements itself (BEGIN,
 * an empty transaction's COMMIT, DEALLOCATE of statements it renamed) and must notice
 * statements that create session state a later transaction on another server would not
 * see (LISTEN, SET of an unreported parameter, session advisory locks, ...).
 *
 * What it guarantees: it is a lexer, not a parser.  It skips comments (nested), string
 * literals (standard, E'' with backslashes), quoted identifiers and dollar quotes
 * correctly, so a keyword inside them never matches and a semicolon inside them never
 * splits statements.  It never reads past len (the text need not be NUL-terminated and may
 * hold any bytes), allocates nothing and runs in linear time.  A statement it does not
 * recognise exactly is PX_SQL_OTHER, which always means "let PostgreSQL answer"; exotic
 * spellings of a session feature may go unnoticed (a missed warning, never a wrong answer).
 */
#ifndef PGW_PROXY_SQLSCAN_H
#define PGW_PROXY_SQLSCAN_H

#include <stdbool.h>
#include <stddef.h>

enum px_sql_kind {
    PX_SQL_OTHER = 0,
    PX_SQL_EMPTY,          /* only white space, comments and semicolons */
    PX_SQL_BEGIN,          /* BEGIN [WORK | TRANSACTION] / START TRANSACTION [modes] */
    PX_SQL_COMMIT,         /* COMMIT / END [WORK | TRANSACTION] */
    PX_SQL_ROLLBACK,       /* ROLLBACK / ABORT [WORK | TRANSACTION] */
    PX_SQL_DEALLOCATE,     /* DEALLOCATE [PREPARE] name */
    PX_SQL_DEALLOCATE_ALL, /* DEALLOCATE [PREPARE] ALL */
    PX_SQL_DISCARD_ALL,    /* DISCARD ALL */
};

struct px_sql_info {
    enum px_sql_kind kind; /* of a string holding one statement; OTHER when multi */
    const char *tag;       /* BEGIN/COMMIT/ROLLBACK: PostgreSQL's CommandComplete tag */
    char name[64];         /* DEALLOCATE: the name as PostgreSQL folds it (63 bytes max) */
    bool multi;            /* more than one statement */
    /* NULL, or what session-only feature some statement uses (points into feature_buf or
     * to a static string). */
    const char *session_feature;
    char feature_buf[80];
};

void px_sql_classify(const char *sql, size_t len, struct px_sql_info *out);

/* The reported parameters a client may SET that transaction pooling re-syncs
 * (case-insensitive): application_name, client_encoding, DateStyle,
 * default_transaction_read_only, IntervalStyle, standard_conforming_strings, TimeZone. */
bool px_sql_param_tracked(const char *name, size_t len);

#endif
