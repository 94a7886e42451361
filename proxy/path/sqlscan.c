/*
 * sqlscan.c: the simple-query classifier (see sqlscan.h for what it guarantees).
 *
 * Two layers, one pass, no token stored.
 *
 *   lexer      lex_next() returns the next token as PostgreSQL's scan.l would split it
 *              (sqllex.h: whitespace and comments skipped, literals and quoted identifiers
 *              whole), and on the way notices calls of session advisory lock functions: a
 *              lock function name token followed by a '(' token.  Only words, quoted
 *              identifiers, ';', single characters and the end matter here: constants of
 *              every kind (strings, numbers, parameters) and '::' are just tokens.
 *   statements classify_stmt() looks at the first token of a statement and, for the few
 *              statement forms that matter, pulls further tokens with stmt_next() and
 *              matches them against the grammar (a little recursive descent).
 *              stmt_next() never crosses the statement's ';', so a matcher can stop
 *              anywhere; px_sql_classify() then drains the statement's remaining tokens.
 *
 * Every token advances the position by at least one byte and every token is looked at a
 * bounded number of times, so the whole is linear in the length of the text.
 */
#include <string.h>

#include "base/json_util.h"
#include "path/sqllex.h"
#include "path/sqlscan.h"
#include "proto/params.h"

struct lexer {
    struct px_lex src;     /* the text, and the position in it */
    bool stmt_done;        /* the last token ended a statement (PX_LEX_SEMI or PX_LEX_END) */
    bool after_lock_fn;    /* the last token named a session advisory lock function */
    const char *feature;   /* first session-only feature seen (static string) */
    bool drops_prepared;   /* a statement starts with DEALLOCATE or DISCARD */
    bool rollback_to;      /* ROLLBACK [WORK | TRANSACTION] TO ... */
    bool ends_commit;      /* COMMIT / END [WORK | TRANSACTION] [AND [NO] CHAIN] */
    bool ends_rollback;    /* ROLLBACK / ABORT [WORK | TRANSACTION] [AND [NO] CHAIN] */
    bool after_set_config; /* the last token named set_config */
    bool after_unlock_all; /* the last token named pg_advisory_unlock_all */
    bool after_outside_fn; /* the last token named a function whose effects a rollback
                              does not undo */
    bool in_copy;          /* the current statement starts with COPY */
    const char *outside;   /* first such effect seen (static string) */
    uint8_t pins, unpins;  /* PX_SQL_PIN_* */
    /* The session state of the current statement, and whether an earlier one had one. */
    enum px_sql_state state;
    bool state_reset;
    char state_key[PX_SQL_NAME_SIZE];
    int stmts_with_state;
};

#define GENERIC_SET "SET of a parameter that is not re-synced"

/* ---- lexer ---------------------------------------------------------------------------- */

static const char *const lock_fns[] = {
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
};

/* Functions whose effects outlive a rolled-back transaction: another connection's
 * (dblink's, pg_background's), a file written, another backend signalled. */
static const char *const outside_fns[] = {
    "dblink",        "dblink_exec",          "dblink_send_query",
    "lo_export",     "pg_background_launch", "pg_cancel_backend",
    "pg_file_write", "pg_terminate_backend",
};

/* t names the function fn: a word in any case, or exactly "quoted". */
static bool is_fn(const struct px_lex_token *t, const char *fn)
{
    if ((t->kind != PX_LEX_WORD && t->kind != PX_LEX_QIDENT) || t->n == 0 ||
        (t->s[0] | 0x20) != fn[0])
        return false; /* most tokens: at a glance */
    return px_lex_lookup(t, &fn, 1, true) == 0;
}

static bool is_outside_fn(const struct px_lex_token *t)
{
    if ((t->kind != PX_LEX_WORD && t->kind != PX_LEX_QIDENT) || t->n < 6 ||
        ((t->s[0] | 0x20) != 'd' && (t->s[0] | 0x20) != 'l' && (t->s[0] | 0x20) != 'p'))
        return false;
    return px_lex_lookup(t, outside_fns, sizeof(outside_fns) / sizeof(outside_fns[0]), true) >= 0;
}

/* t names a session advisory lock function: a word in any case, or exactly "quoted". */
static bool is_lock_fn(const struct px_lex_token *t)
{
    if ((t->kind != PX_LEX_WORD && t->kind != PX_LEX_QIDENT) || t->n < 16 ||
        (t->s[0] | 0x20) != 'p')
        return false;
    return px_lex_lookup(t, lock_fns, sizeof(lock_fns) / sizeof(lock_fns[0]), true) >= 0;
}

static void note_feature(struct lexer *lx, const char *feature)
{
    if (!lx->feature)
        lx->feature = feature;
}

static void copy_name(const struct px_lex_token *t, char out[PX_SQL_NAME_SIZE]);

/* The statement changes session state; key (may be NULL) names what, as copy_name reads a
 * name; fold_all: a parameter name, case-insensitive even when quoted. */
static void note_state(struct lexer *lx, enum px_sql_state st, const struct px_lex_token *key,
                       bool fold_all)
{
    if (lx->state == PX_STATE_NONE)
        lx->stmts_with_state++;
    lx->state = st;
    lx->state_key[0] = '\0';
    if (!key)
        return;
    copy_name(key, lx->state_key);
    for (char *p = lx->state_key; fold_all && *p; p++)
        *p = px_lex_fold(*p);
}

/* pg_temp, or a backend's own pg_temp_N: a name in the session's temporary schema. */
static bool is_temp_schema(const struct px_lex_token *t)
{
    return (t->kind == PX_LEX_WORD || t->kind == PX_LEX_QIDENT) && t->n >= 7 &&
           (t->s[0] | 0x20) == 'p' && px_lex_fold_eq(t->s, 7, "pg_temp") &&
           (t->n == 7 || t->s[7] == '_');
}

/* A boolean constant PostgreSQL reads as true: TRUE, or one of its input strings. */
static bool is_true_const(const struct px_lex_token *t)
{
    if (t->kind == PX_LEX_WORD)
        return px_lex_fold_eq(t->s, t->n, "true");
    if (t->kind != PX_LEX_STRING || t->str != PX_LEX_STR_STD || t->n < 3)
        return false;
    static const char *const yes[] = {"t", "true", "y", "yes", "on", "1"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        if (px_lex_fold_eq(t->s + 1, t->n - 2, yes[i]))
            return true;
    return false;
}

/* After "set_config(": whether its third argument is a constant true (is_local: the
 * setting ends with the transaction, as SET LOCAL's does).  Reads a copy of the lexer. */
static bool set_config_is_local(const struct px_lex *at)
{
    struct px_lex src = *at;
    struct px_lex_token t, third = {0};
    int depth = 0, commas = 0, third_tokens = 0;
    for (;;) {
        px_lex_next(&src, &t);
        if (t.kind == PX_LEX_END || t.kind == PX_LEX_SEMI || t.kind == PX_LEX_BAD)
            return false;
        if (t.kind == PX_LEX_CHAR && (*t.s == '(' || *t.s == '['))
            depth++;
        else if (t.kind == PX_LEX_CHAR && (*t.s == ')' || *t.s == ']') && depth-- == 0)
            return commas == 2 && third_tokens == 1 && is_true_const(&third);
        else if (depth == 0 && t.kind == PX_LEX_CHAR && *t.s == ',')
            commas++;
        else if (commas == 2 && third_tokens++ == 0)
            third = t;
    }
}

/* The next token of the text (PX_LEX_END, again and again, at the end). */
static void lex_next(struct lexer *lx, struct px_lex_token *t)
{
    px_lex_next(&lx->src, t);
    if (t->kind == PX_LEX_CHAR && *t->s == '(') {
        if (lx->after_lock_fn) {
            note_feature(lx, "session advisory lock");
            lx->pins |= PX_SQL_PIN_ADVISORY;
        } else if (lx->after_set_config && !set_config_is_local(&lx->src)) {
            /* a session-level setting made inside a query: not followed, so it pins;
             * set_config(name, value, true) ends with its transaction, as SET LOCAL */
            note_feature(lx, "set_config()");
            lx->pins |= PX_SQL_PIN_OTHER;
        } else if (lx->after_unlock_all) {
            lx->unpins |= PX_SQL_PIN_ADVISORY;
        }
        if (lx->after_outside_fn && !lx->outside)
            lx->outside = "a function whose effects a rollback does not undo";
    }
    if (lx->in_copy && t->kind == PX_LEX_WORD && t->n == 7 && px_lex_fold_eq(t->s, 7, "program") &&
        !lx->outside)
        lx->outside = "COPY ... PROGRAM";
    if (is_temp_schema(t)) {
        /* CREATE TABLE pg_temp.t, SET search_path TO pg_temp, ...: a temporary object
         * whatever the statement; only CREATE TEMP says so in its first words */
        note_feature(lx, "temporary object");
        lx->pins |= PX_SQL_PIN_TEMP;
    }
    lx->after_lock_fn = is_lock_fn(t);
    lx->after_set_config = is_fn(t, "set_config");
    lx->after_unlock_all = is_fn(t, "pg_advisory_unlock_all");
    lx->after_outside_fn = is_outside_fn(t);
    lx->stmt_done = t->kind == PX_LEX_SEMI || t->kind == PX_LEX_END;
    if (lx->stmt_done)
        lx->in_copy = false;
}

/* The next token of the current statement: PX_LEX_END once its ';' or the end was read. */
static void stmt_next(struct lexer *lx, struct px_lex_token *t)
{
    if (lx->stmt_done) {
        t->kind = PX_LEX_END;
        t->s = lx->src.p;
        t->n = 0;
        return;
    }
    lex_next(lx, t);
}

/* ---- statement forms ------------------------------------------------------------------ */

#define IS_KW(t, kw) is_kw((t), "" kw) /* kw: a lower-case string literal */

static bool is_kw(const struct px_lex_token *t, const char *kw)
{
    return t->kind == PX_LEX_WORD && px_lex_fold_eq(t->s, t->n, kw);
}

static bool is_char(const struct px_lex_token *t, char c)
{
    return t->kind == PX_LEX_CHAR && *t->s == c;
}

static bool is_stmt_end(const struct px_lex_token *t)
{
    return t->kind == PX_LEX_SEMI || t->kind == PX_LEX_END;
}

/* One transaction_mode_item starting at t; consumes it.  False when it is not one. */
static bool mode_item(struct lexer *lx, struct px_lex_token *t)
{
    if (IS_KW(t, "isolation")) {
        stmt_next(lx, t);
        if (!IS_KW(t, "level"))
            return false;
        stmt_next(lx, t);
        if (IS_KW(t, "serializable"))
            return true;
        if (IS_KW(t, "repeatable")) {
            stmt_next(lx, t);
            return IS_KW(t, "read");
        }
        if (!IS_KW(t, "read"))
            return false;
        stmt_next(lx, t);
        return IS_KW(t, "committed") || IS_KW(t, "uncommitted");
    }
    if (IS_KW(t, "read")) {
        stmt_next(lx, t);
        return IS_KW(t, "only") || IS_KW(t, "write");
    }
    if (IS_KW(t, "not"))
        stmt_next(lx, t);
    return IS_KW(t, "deferrable");
}

/* transaction_mode_list_or_empty from t to the end of the statement: items separated by
 * ',' or nothing (no leading, trailing or doubled comma). */
static bool rest_is_modes(struct lexer *lx, struct px_lex_token *t)
{
    if (is_stmt_end(t))
        return true;
    for (;;) {
        if (!mode_item(lx, t))
            return false;
        stmt_next(lx, t);
        if (is_stmt_end(t))
            return true;
        if (is_char(t, ','))
            stmt_next(lx, t);
    }
}

/* BEGIN [WORK | TRANSACTION] modes, or (start) START TRANSACTION modes. */
static void begin_stmt(struct lexer *lx, bool start, struct px_sql_info *res)
{
    struct px_lex_token t;
    stmt_next(lx, &t);
    if (start) {
        if (!IS_KW(&t, "transaction"))
            return;
        stmt_next(lx, &t);
    } else if (IS_KW(&t, "work") || IS_KW(&t, "transaction")) {
        stmt_next(lx, &t);
    }
    if (rest_is_modes(lx, &t)) {
        res->kind = PX_SQL_BEGIN;
        res->tag = start ? "START TRANSACTION" : "BEGIN";
    }
}

/* COMMIT/END/ROLLBACK/ABORT: [WORK | TRANSACTION] [AND NO CHAIN] and nothing else; with
 * AND CHAIN it only ends the block (ends_commit, ends_rollback). */
static void end_xact_stmt(struct lexer *lx, bool commit, struct px_sql_info *res)
{
    struct px_lex_token t;
    bool chain = false;
    stmt_next(lx, &t);
    if (IS_KW(&t, "work") || IS_KW(&t, "transaction"))
        stmt_next(lx, &t);
    if (!commit && IS_KW(&t, "to"))
        lx->rollback_to = true;
    if (IS_KW(&t, "and")) { /* AND CHAIN starts a new transaction: not ours to answer */
        stmt_next(lx, &t);
        chain = !IS_KW(&t, "no");
        if (!chain)
            stmt_next(lx, &t);
        if (!IS_KW(&t, "chain"))
            return;
        stmt_next(lx, &t);
    }
    if (!is_stmt_end(&t))
        return;
    if (commit)
        lx->ends_commit = true;
    else
        lx->ends_rollback = true;
    if (chain)
        return;
    res->kind = commit ? PX_SQL_COMMIT : PX_SQL_ROLLBACK;
    res->tag = commit ? "COMMIT" : "ROLLBACK";
}

/* Keywords that cannot be a ColId (RESERVED_KEYWORD and TYPE_FUNC_NAME_KEYWORD in
 * PostgreSQL 15's kwlist.h): DEALLOCATE select is a syntax error, not a name. */
/* clang-format off */
static const char *const not_colid[] = {
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "authorization",
    "binary", "both", "case", "cast", "check", "collate", "collation", "column", "concurrently",
    "constraint", "create", "cross", "current_catalog", "current_date", "current_role",
    "current_schema", "current_time", "current_timestamp", "current_user", "default", "deferrable",
    "desc", "distinct", "do", "else", "end", "except", "false", "fetch", "for", "foreign",
    "freeze", "from", "full", "grant", "group", "having", "ilike", "in", "initially", "inner",
    "intersect", "into", "is", "isnull", "join", "lateral", "leading", "left", "like", "limit",
    "localtime", "localtimestamp", "natural", "not", "notnull", "null", "offset", "on", "only",
    "or", "order", "outer", "overlaps", "placing", "primary", "references", "returning", "right",
    "select", "session_user", "similar", "some", "symmetric", "table", "tablesample", "then", "to",
    "trailing", "true", "union", "unique", "user", "using", "variadic", "verbose", "when", "where",
    "window", "with",
};
/* clang-format on */

/* t can be a statement name: a quoted identifier (not empty, no NUL) or a word that is
 * not a reserved keyword. */
static bool is_name(const struct px_lex_token *t)
{
    if (t->kind == PX_LEX_QIDENT)
        return t->n > 0 && !memchr(t->s, '\0', t->n);
    return t->kind == PX_LEX_WORD &&
           px_lex_lookup(t, not_colid, sizeof(not_colid) / sizeof(not_colid[0]), false) < 0;
}

/* Copies the name t as PostgreSQL reads it: folded or unescaped, cut to 63 bytes without
 * splitting a UTF-8 character (pg_mbcliplen). */
static void copy_name(const struct px_lex_token *t, char out[PX_SQL_NAME_SIZE])
{
    char buf[PX_SQL_NAME_SIZE + 1];
    size_t n = px_lex_ident(t, buf, sizeof(buf));
    if (n >= PX_SQL_NAME_SIZE) {
        n = PX_SQL_NAME_SIZE - 1;
        while (n > 0 && ((unsigned char)buf[n] & 0xC0) == 0x80)
            n--; /* buf[n] is the first byte cut: back up to its character's start */
    }
    memcpy(out, buf, n);
    out[n] = '\0';
}

/* DEALLOCATE [PREPARE] {name | ALL}. */
static void deallocate_stmt(struct lexer *lx, struct px_sql_info *res)
{
    struct px_lex_token t, u;
    stmt_next(lx, &t);
    stmt_next(lx, &u);
    if (IS_KW(&t, "prepare") && !is_stmt_end(&u)) {
        t = u; /* DEALLOCATE PREPARE x; a bare DEALLOCATE PREPARE names "prepare" */
        stmt_next(lx, &u);
    }
    if (!is_stmt_end(&u))
        return;
    if (IS_KW(&t, "all")) {
        res->kind = PX_SQL_DEALLOCATE_ALL;
    } else if (is_name(&t)) {
        res->kind = PX_SQL_DEALLOCATE;
        copy_name(&t, res->name);
    }
}

static void discard_stmt(struct lexer *lx, struct px_sql_info *res)
{
    struct px_lex_token t, u;
    stmt_next(lx, &t);
    stmt_next(lx, &u);
    if (!is_stmt_end(&u))
        return;
    if (IS_KW(&t, "all")) {
        res->kind = PX_SQL_DISCARD_ALL;
        lx->unpins = 0xff;
    } else if (IS_KW(&t, "temp") || IS_KW(&t, "temporary")) {
        lx->unpins |= PX_SQL_PIN_TEMP;
    }
}

/* UNLISTEN *: no channel is listened to any more. */
static void unlisten_stmt(struct lexer *lx)
{
    struct px_lex_token t, u;
    stmt_next(lx, &t);
    stmt_next(lx, &u);
    if (is_char(&t, '*') && is_stmt_end(&u))
        lx->unpins |= PX_SQL_PIN_LISTEN;
}

/* CLOSE ALL: every cursor goes. */
static void close_stmt(struct lexer *lx)
{
    struct px_lex_token t, u;
    stmt_next(lx, &t);
    stmt_next(lx, &u);
    if (IS_KW(&t, "all") && is_stmt_end(&u))
        lx->unpins |= PX_SQL_PIN_CURSOR;
}

/* Untracked parameters worth naming in the warning (the rest get GENERIC_SET). */
static const struct {
    const char *name, *feature;
} set_names[] = {
    {"search_path", "SET search_path"},
    {"role", "SET ROLE"},
    {"session_authorization", "SET SESSION AUTHORIZATION"},
    {"statement_timeout", "SET statement_timeout"},
    {"lock_timeout", "SET lock_timeout"},
    {"idle_in_transaction_session_timeout", "SET idle_in_transaction_session_timeout"},
    {"work_mem", "SET work_mem"},
    {"default_transaction_isolation", "SET default_transaction_isolation"},
};

/* var_name (ColId ['.' ColId ...]) at t, after SET [SESSION] or RESET: flags it unless it
 * is a tracked parameter.  Parameter names are case-insensitive even when quoted. */
static void param_name(struct lexer *lx, const struct px_lex_token *t)
{
    struct px_lex_token u;
    if (t->kind != PX_LEX_WORD && t->kind != PX_LEX_QIDENT)
        return; /* a syntax error: nothing is set */
    stmt_next(lx, &u);
    if (is_char(&u, '.')) { /* a custom (extension) parameter: the key is the dotted name */
        struct px_lex_token whole = *t;
        while (is_char(&u, '.')) {
            stmt_next(lx, &u);
            if (u.kind != PX_LEX_WORD && u.kind != PX_LEX_QIDENT)
                return;
            whole.n = (size_t)(u.s + u.n - whole.s);
            whole.kind = PX_LEX_WORD;
            stmt_next(lx, &u);
        }
        note_feature(lx, GENERIC_SET);
        note_state(lx, PX_STATE_SET, &whole, true);
        return;
    }
    if (px_tracked_index(t->s, t->n) >= 0)
        return;
    if (px_lex_fold_eq(t->s, t->n, "role"))
        note_state(lx, PX_STATE_ROLE, NULL, false);
    else if (px_lex_fold_eq(t->s, t->n, "session_authorization"))
        note_state(lx, PX_STATE_SESSION_AUTH, NULL, false);
    else
        note_state(lx, PX_STATE_SET, t, true);
    for (size_t i = 0; i < sizeof(set_names) / sizeof(set_names[0]); i++) {
        if (px_lex_fold_eq(t->s, t->n, set_names[i].name)) {
            note_feature(lx, set_names[i].feature);
            return;
        }
    }
    note_feature(lx, GENERIC_SET);
}

/* After SET SESSION: SESSION AUTHORIZATION or SESSION CHARACTERISTICS at t? */
static bool session_special(struct lexer *lx, const struct px_lex_token *t)
{
    if (IS_KW(t, "authorization")) {
        note_feature(lx, "SET SESSION AUTHORIZATION");
        note_state(lx, PX_STATE_SESSION_AUTH, NULL, false);
    } else if (IS_KW(t, "characteristics")) {
        note_feature(lx, "SET SESSION CHARACTERISTICS");
        note_state(lx, PX_STATE_CHARACTERISTICS, NULL, false);
    } else {
        return false;
    }
    return true;
}

/* After TIME: TIME ZONE is TimeZone (tracked); else "time" is some parameter name. */
static void after_time(struct lexer *lx, const struct px_lex_token *time)
{
    struct px_lex_token t;
    stmt_next(lx, &t);
    if (!IS_KW(&t, "zone")) {
        note_feature(lx, GENERIC_SET);
        note_state(lx, PX_STATE_SET, time, true);
    }
}

/* SET [LOCAL | SESSION] set_rest (gram.y VariableSetStmt). */
static void set_stmt(struct lexer *lx)
{
    struct px_lex_token t;
    stmt_next(lx, &t);
    if (IS_KW(&t, "local") || IS_KW(&t, "transaction") || IS_KW(&t, "constraints"))
        return; /* transaction-scoped */
    if (IS_KW(&t, "session")) {
        stmt_next(lx, &t);
        if (session_special(lx, &t) || IS_KW(&t, "transaction"))
            return;
        if (IS_KW(&t, "session")) { /* SET SESSION SESSION AUTHORIZATION is valid */
            stmt_next(lx, &t);
            if (!session_special(lx, &t))
                note_feature(lx, GENERIC_SET);
            return;
        }
    }
    if (IS_KW(&t, "time")) {
        after_time(lx, &t);
    } else if (IS_KW(&t, "names")) {
        return; /* client_encoding */
    } else if (IS_KW(&t, "role")) {
        note_feature(lx, "SET ROLE");
        note_state(lx, PX_STATE_ROLE, NULL, false);
    } else if (IS_KW(&t, "schema")) {
        static const struct px_lex_token search_path = {
            .kind = PX_LEX_WORD, .s = "search_path", .n = 11};
        note_feature(lx, "SET search_path");
        note_state(lx, PX_STATE_SET, &search_path, true);
    } else {
        param_name(lx, &t);
    }
}

/* RESET {ALL | TIME ZONE | TRANSACTION ISOLATION LEVEL | SESSION AUTHORIZATION | name}. */
static void reset_stmt(struct lexer *lx)
{
    struct px_lex_token t;
    lx->state_reset = true;
    stmt_next(lx, &t);
    if (IS_KW(&t, "all")) {
        note_state(lx, PX_STATE_RESET_ALL, NULL, false);
        return;
    }
    if (IS_KW(&t, "transaction"))
        return;
    if (IS_KW(&t, "time")) {
        after_time(lx, &t);
    } else if (IS_KW(&t, "session")) {
        stmt_next(lx, &t);
        bool auth = IS_KW(&t, "authorization");
        note_feature(lx, auth ? "SET SESSION AUTHORIZATION" : GENERIC_SET);
        note_state(lx, auth ? PX_STATE_SESSION_AUTH : PX_STATE_UNTRACKED, NULL, false);
    } else {
        param_name(lx, &t);
    }
}

/* PREPARE name ... (not PREPARE TRANSACTION 'gid'; "transaction" can also be a name). */
static void prepare_stmt(struct lexer *lx)
{
    struct px_lex_token t, u;
    stmt_next(lx, &t);
    if (t.kind != PX_LEX_WORD && t.kind != PX_LEX_QIDENT)
        return;
    if (IS_KW(&t, "transaction")) {
        stmt_next(lx, &u);
        if (!IS_KW(&u, "as") && !is_char(&u, '('))
            return;
    }
    note_feature(lx, "PREPARE");
    note_state(lx, PX_STATE_PREPARE, &t, false);
}

/* DECLARE name [cursor options] CURSOR {WITH | WITHOUT} HOLD FOR ... */
static void declare_stmt(struct lexer *lx)
{
    struct px_lex_token t;
    stmt_next(lx, &t);
    if (t.kind != PX_LEX_WORD && t.kind != PX_LEX_QIDENT)
        return;
    for (;;) {
        stmt_next(lx, &t);
        if (IS_KW(&t, "cursor"))
            break;
        if (!IS_KW(&t, "no") && !IS_KW(&t, "scroll") && !IS_KW(&t, "binary") &&
            !IS_KW(&t, "insensitive") && !IS_KW(&t, "asensitive") && !IS_KW(&t, "sensitive"))
            return;
    }
    stmt_next(lx, &t);
    if (!IS_KW(&t, "with"))
        return;
    stmt_next(lx, &t);
    if (IS_KW(&t, "hold")) {
        note_feature(lx, "WITH HOLD cursor");
        lx->pins |= PX_SQL_PIN_CURSOR;
    }
}

/* Reads the rest of a CREATE TEMP TABLE: whether it says ON COMMIT DROP (outside the
 * column list and AS query's parentheses). */
static bool drops_at_commit(struct lexer *lx)
{
    struct px_lex_token t;
    int depth = 0, matched = 0; /* of "on commit drop" */
    static const char *const words[] = {"on", "commit", "drop"};
    for (;;) {
        stmt_next(lx, &t);
        if (is_stmt_end(&t))
            return false;
        if (is_char(&t, '('))
            depth++;
        else if (is_char(&t, ')'))
            depth--;
        if (depth == 0 && t.kind == PX_LEX_WORD && px_lex_fold_eq(t.s, t.n, words[matched]))
            matched++;
        else
            matched = depth == 0 && IS_KW(&t, "on") ? 1 : 0;
        if (matched == 3)
            return true;
    }
}

/* CREATE [OR REPLACE] [GLOBAL | LOCAL] {TEMP | TEMPORARY} [RECURSIVE] {TABLE | VIEW | ...} */
static void create_stmt(struct lexer *lx)
{
    struct px_lex_token t;
    stmt_next(lx, &t);
    if (IS_KW(&t, "or")) {
        stmt_next(lx, &t);
        if (!IS_KW(&t, "replace"))
            return;
        stmt_next(lx, &t);
    }
    if (IS_KW(&t, "global") || IS_KW(&t, "local"))
        stmt_next(lx, &t);
    if (!IS_KW(&t, "temp") && !IS_KW(&t, "temporary"))
        return;
    stmt_next(lx, &t);
    if (IS_KW(&t, "view") || IS_KW(&t, "recursive")) {
        note_feature(lx, "temporary view");
    } else if (IS_KW(&t, "sequence")) {
        note_feature(lx, "temporary sequence");
    } else {
        if (drops_at_commit(lx))
            return; /* gone when its transaction ends: nothing outlives it */
        note_feature(lx, "temporary table");
    }
    lx->pins |= PX_SQL_PIN_TEMP;
}

/* SELECT ... INTO {TEMP | TEMPORARY} [TABLE] name: reads the whole statement. */
static void select_stmt(struct lexer *lx)
{
    struct px_lex_token t;
    bool after_into = false;
    for (;;) {
        stmt_next(lx, &t);
        if (is_stmt_end(&t))
            return;
        if (after_into && (IS_KW(&t, "temp") || IS_KW(&t, "temporary"))) {
            note_feature(lx, "temporary table");
            lx->pins |= PX_SQL_PIN_TEMP;
            return;
        }
        after_into = IS_KW(&t, "into");
    }
}

/* A query or data change starts with one of these (sqlscan.h, dml). */
static bool is_dml_keyword(const struct px_lex_token *t)
{
    switch (px_lex_fold(t->s[0])) {
    case 's': return IS_KW(t, "select");
    case 'v': return IS_KW(t, "values");
    case 't': return IS_KW(t, "table");
    case 'w': return IS_KW(t, "with");
    case 'i': return IS_KW(t, "insert");
    case 'u': return IS_KW(t, "update");
    case 'd': return IS_KW(t, "delete");
    case 'm': return IS_KW(t, "merge");
    default: return false;
    }
}

/* One statement whose first token is t (not ';', not the end): fills res->kind, tag
 * and name when it is one of ours, notes session features.  May stop before its end. */
static void classify_stmt(struct lexer *lx, const struct px_lex_token *t, struct px_sql_info *res)
{
    if (t->kind != PX_LEX_WORD)
        return;
    res->dml = is_dml_keyword(t);
    switch (px_lex_fold(t->s[0])) {
    case 'a':
        if (IS_KW(t, "abort"))
            end_xact_stmt(lx, false, res);
        break;
    case 'b':
        if (IS_KW(t, "begin"))
            begin_stmt(lx, false, res);
        break;
    case 'c':
        if (IS_KW(t, "commit"))
            end_xact_stmt(lx, true, res);
        else if (IS_KW(t, "create"))
            create_stmt(lx);
        else if (IS_KW(t, "close"))
            close_stmt(lx);
        break;
    case 'd':
        if (IS_KW(t, "deallocate")) {
            lx->drops_prepared = true;
            deallocate_stmt(lx, res);
        } else if (IS_KW(t, "discard")) {
            lx->drops_prepared = true;
            discard_stmt(lx, res);
        } else if (IS_KW(t, "declare")) {
            declare_stmt(lx);
        }
        break;
    case 'e':
        if (IS_KW(t, "end"))
            end_xact_stmt(lx, true, res);
        break;
    case 'l':
        if (IS_KW(t, "listen")) {
            note_feature(lx, "LISTEN");
            lx->pins |= PX_SQL_PIN_LISTEN;
        } else if (IS_KW(t, "load")) {
            note_feature(lx, "LOAD");
            lx->pins |= PX_SQL_PIN_OTHER;
        }
        break;
    case 'u':
        if (IS_KW(t, "unlisten"))
            unlisten_stmt(lx);
        break;
    case 'p':
        if (IS_KW(t, "prepare"))
            prepare_stmt(lx);
        break;
    case 'r':
        if (IS_KW(t, "rollback"))
            end_xact_stmt(lx, false, res);
        else if (IS_KW(t, "reset"))
            reset_stmt(lx);
        break;
    case 's':
        if (IS_KW(t, "select"))
            select_stmt(lx);
        else if (IS_KW(t, "set"))
            set_stmt(lx);
        else if (IS_KW(t, "start"))
            begin_stmt(lx, true, res);
        break;
    default: break;
    }
}

void px_sql_classify(const char *sql, size_t len, struct px_sql_info *out)
{
    if (!sql) {
        sql = "";
        len = 0;
    }
    struct lexer lx = {.src = {.p = sql, .end = sql + len, .numbers_lenient = true}};
    struct px_sql_info scratch; /* later statements: written, never read (only their
                                   session features count, which the lexer keeps) */
    struct px_lex_token t;
    size_t nstmt = 0;
    /* The last statement's change of session state, and whether a statement of the text
     * begins or ends a transaction or a savepoint (for a text of several statements). */
    enum px_sql_state last_state = PX_STATE_NONE;
    bool last_reset = false, txn_control = false, proc = false;
    char last_key[PX_SQL_NAME_SIZE] = "";
    memset(out, 0, sizeof(*out));
    for (;;) {
        lex_next(&lx, &t);
        if (t.kind == PX_LEX_END)
            break;
        if (t.kind == PX_LEX_SEMI)
            continue; /* empty statement: PostgreSQL drops it */
        nstmt++;
        lx.state = PX_STATE_NONE;
        lx.state_reset = false;
        txn_control |= IS_KW(&t, "begin") || IS_KW(&t, "start") || IS_KW(&t, "commit") ||
                       IS_KW(&t, "end") || IS_KW(&t, "rollback") || IS_KW(&t, "abort") ||
                       IS_KW(&t, "savepoint") || IS_KW(&t, "release") || IS_KW(&t, "prepare");
        lx.in_copy = IS_KW(&t, "copy");
        proc |= IS_KW(&t, "call") || IS_KW(&t, "do");
        classify_stmt(&lx, &t, nstmt == 1 ? out : &scratch);
        if (lx.state != PX_STATE_NONE) {
            last_state = lx.state;
            last_reset = lx.state_reset;
            memcpy(last_key, lx.state_key, sizeof(last_key));
        }
        if (nstmt == 1) {
            out->state = lx.state;
            out->state_reset = lx.state_reset && lx.state != PX_STATE_NONE;
            memcpy(out->state_key, lx.state_key, sizeof(out->state_key));
        }
        while (!lx.stmt_done)
            lex_next(&lx, &t);
    }
    if (nstmt == 0) {
        out->kind = PX_SQL_EMPTY;
    } else if (nstmt > 1) {
        *out = (struct px_sql_info){.kind = PX_SQL_OTHER, .multi = true};
    }
    /* A kind means pgwarden may answer or hold the text itself: only when PostgreSQL
     * would accept it.  It rejects invalid UTF-8 and NUL bytes before parsing anything
     * (22021; a NUL ends the Query string early: 08P01).  Such texts are rare and short
     * when they get a kind, so the check costs nothing on the common path. */
    if (out->kind != PX_SQL_OTHER && (memchr(sql, '\0', len) || !px_utf8_valid(sql, len))) {
        *out = (struct px_sql_info){.kind = PX_SQL_OTHER};
    }
    out->session_feature = lx.feature;
    out->txn_control = txn_control;
    out->proc = proc;
    out->outside_effect = lx.outside;
    out->drops_prepared = lx.drops_prepared;
    out->rollback_to = lx.rollback_to;
    out->ends_commit = lx.ends_commit;
    out->ends_rollback = lx.ends_rollback;
    out->pins = lx.pins;
    out->unpins = lx.unpins;
    if (nstmt > 1 && lx.stmts_with_state == 1 && last_reset && !txn_control) {
        /* One RESET among statements that change no session state (asyncpg's pool resets
         * its connections with "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
         * RESET ALL;"): followed as the RESET alone.  A RESET keeps no text to replay, and
         * the text runs as one implicit transaction, so an error anywhere in it undoes the
         * RESET, as the error of a single statement does. */
        out->state = last_state;
        out->state_reset = true;
        memcpy(out->state_key, last_key, sizeof(out->state_key));
    } else if (nstmt > 1 && lx.stmts_with_state > 0) {
        out->state = PX_STATE_UNTRACKED;
        out->state_key[0] = '\0';
    }
}

bool px_sql_param_tracked(const char *name, size_t len)
{
    return px_tracked_index(name, len) >= 0;
}
