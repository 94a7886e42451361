/*
 * sqlscan.c: simple-query classifier (see sqlscan.h).
 *
 * One pass of a lexer over the text.  Each statement keeps its first MAX_TOKENS tokens
 * (words upper-cased, quoted identifiers as written); the statement is classified from
 * them when its ';' or the end of the text is reached.  Calls of session advisory lock
 * functions are looked for in every token of every statement.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "sqlscan.h"

#define MAX_TOKENS 24
#define TOKEN_MAX  64

enum tok_kind { TOK_WORD, TOK_QIDENT, TOK_OTHER };

struct token {
    enum tok_kind kind;
    char text[TOKEN_MAX]; /* WORD: upper case; QIDENT: unescaped; cut at TOKEN_MAX - 1 */
    char punct;           /* TOK_OTHER: the character ('(' ',' '.' ...), 0 for literals */
};

struct stmt {
    struct token tok[MAX_TOKENS];
    int n;                 /* tokens kept */
    int total;             /* tokens seen */
    bool pending_advisory; /* last token was an advisory lock function name */
};

static const char *const tracked_params[] = {
    "application_name", "client_encoding",
    "DateStyle",        "default_transaction_read_only",
    "IntervalStyle",    "standard_conforming_strings",
    "TimeZone",
};

bool px_sql_param_tracked(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(tracked_params) / sizeof(tracked_params[0]); i++)
        if (strlen(tracked_params[i]) == len && !strncasecmp(tracked_params[i], name, len))
            return true;
    return false;
}

static bool ident_start(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' || ch >= 0x80;
}

static bool ident_char(unsigned char ch)
{
    return ident_start(ch) || (ch >= '0' && ch <= '9') || ch == '$';
}

static bool is_word(const struct stmt *st, int i, const char *w)
{
    return i < st->n && st->tok[i].kind == TOK_WORD && !strcmp(st->tok[i].text, w);
}

static bool is_punct(const struct stmt *st, int i, char p)
{
    return i < st->n && st->tok[i].kind == TOK_OTHER && st->tok[i].punct == p;
}

static void set_feature(struct px_sql_info *out, const char *what, const char *name)
{
    if (out->session_feature)
        return;
    if (name) {
        snprintf(out->feature_buf, sizeof(out->feature_buf), "%s %s", what, name);
        out->session_feature = out->feature_buf;
    } else {
        out->session_feature = what;
    }
}

/* BEGIN/START TRANSACTION modes from token i on: true when every token is a valid mode. */
static bool valid_modes(const struct stmt *st, int i)
{
    while (i < st->n) {
        if (is_punct(st, i, ',')) {
            i++;
        } else if (is_word(st, i, "ISOLATION") && is_word(st, i + 1, "LEVEL")) {
            i += 2;
            if (is_word(st, i, "SERIALIZABLE"))
                i++;
            else if (is_word(st, i, "REPEATABLE") && is_word(st, i + 1, "READ"))
                i += 2;
            else if (is_word(st, i, "READ") &&
                     (is_word(st, i + 1, "COMMITTED") || is_word(st, i + 1, "UNCOMMITTED")))
                i += 2;
            else
                return false;
        } else if (is_word(st, i, "READ") &&
                   (is_word(st, i + 1, "WRITE") || is_word(st, i + 1, "ONLY"))) {
            i += 2;
        } else if (is_word(st, i, "DEFERRABLE")) {
            i++;
        } else if (is_word(st, i, "NOT") && is_word(st, i + 1, "DEFERRABLE")) {
            i += 2;
        } else {
            return false;
        }
    }
    return true;
}

/* COMMIT/ROLLBACK forms: the verb, then nothing or one of WORK/TRANSACTION. */
static bool bare_verb(const struct stmt *st)
{
    return st->n == 1 || (st->n == 2 && (is_word(st, 1, "WORK") || is_word(st, 1, "TRANSACTION")));
}

static void copy_name(char *dst, const struct token *t)
{
    /* Unquoted names fold to lower case, as PostgreSQL does. */
    size_t i = 0;
    for (; t->text[i] && i < 63; i++) {
        char ch = t->text[i];
        dst[i] = t->kind == TOK_WORD && ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
    }
    dst[i] = '\0';
}

static enum px_sql_kind classify_stmt(const struct stmt *st, struct px_sql_info *out)
{
    bool complete = st->total == st->n;
    if (is_word(st, 0, "BEGIN")) {
        int i = 1;
        if (is_word(st, 1, "WORK") || is_word(st, 1, "TRANSACTION"))
            i = 2;
        if (complete && valid_modes(st, i)) {
            out->tag = "BEGIN";
            return PX_SQL_BEGIN;
        }
        return PX_SQL_OTHER;
    }
    if (is_word(st, 0, "START") && is_word(st, 1, "TRANSACTION")) {
        if (complete && valid_modes(st, 2)) {
            out->tag = "START TRANSACTION";
            return PX_SQL_BEGIN;
        }
        return PX_SQL_OTHER;
    }
    if ((is_word(st, 0, "COMMIT") || is_word(st, 0, "END")) && complete && bare_verb(st)) {
        out->tag = "COMMIT";
        return PX_SQL_COMMIT;
    }
    if ((is_word(st, 0, "ROLLBACK") || is_word(st, 0, "ABORT")) && complete && bare_verb(st)) {
        out->tag = "ROLLBACK";
        return PX_SQL_ROLLBACK;
    }
    if (is_word(st, 0, "DEALLOCATE") && complete) {
        int i = is_word(st, 1, "PREPARE") ? 2 : 1;
        if (st->n == i + 1 && is_word(st, i, "ALL"))
            return PX_SQL_DEALLOCATE_ALL;
        if (st->n == i + 1 && st->tok[i].kind != TOK_OTHER) {
            copy_name(out->name, &st->tok[i]);
            return PX_SQL_DEALLOCATE;
        }
        return PX_SQL_OTHER;
    }
    if (is_word(st, 0, "DISCARD") && is_word(st, 1, "ALL") && st->n == 2 && complete)
        return PX_SQL_DISCARD_ALL;
    return PX_SQL_OTHER;
}

/* Session-only features named by the first tokens of a statement. */
static void note_session_state(const struct stmt *st, struct px_sql_info *out)
{
    char lower[64];
    if (is_word(st, 0, "SET")) {
        int i = 1;
        if (is_word(st, 1, "LOCAL") || is_word(st, 1, "TRANSACTION") ||
            is_word(st, 1, "CONSTRAINTS"))
            return;
        if (is_word(st, 1, "SESSION")) {
            if (is_word(st, 2, "CHARACTERISTICS")) {
                set_feature(out, "SET SESSION CHARACTERISTICS", NULL);
                return;
            }
            if (is_word(st, 2, "AUTHORIZATION")) {
                set_feature(out, "SET SESSION AUTHORIZATION", NULL);
                return;
            }
            i = 2;
        }
        if (is_word(st, i, "ROLE")) {
            set_feature(out, "SET ROLE", NULL);
            return;
        }
        if ((is_word(st, i, "TIME") && is_word(st, i + 1, "ZONE")) || is_word(st, i, "NAMES"))
            return; /* TimeZone, client_encoding: tracked */
        if (i < st->n && st->tok[i].kind != TOK_OTHER) {
            const char *name = st->tok[i].text;
            if (px_sql_param_tracked(name, strlen(name)) && !is_punct(st, i + 1, '.'))
                return;
            copy_name(lower, &st->tok[i]);
            set_feature(out, "SET", lower);
        }
        return;
    }
    if (is_word(st, 0, "RESET") && st->n >= 2 && !is_word(st, 1, "ALL") &&
        st->tok[1].kind != TOK_OTHER) {
        const char *name = st->tok[1].text;
        if (is_word(st, 1, "TIME") || is_word(st, 1, "SESSION") ||
            (px_sql_param_tracked(name, strlen(name)) && !is_punct(st, 2, '.')))
            return;
        copy_name(lower, &st->tok[1]);
        set_feature(out, "RESET", lower);
        return;
    }
    if (is_word(st, 0, "LISTEN")) {
        set_feature(out, "LISTEN", NULL);
    } else if (is_word(st, 0, "PREPARE") && !is_word(st, 1, "TRANSACTION")) {
        set_feature(out, "PREPARE", NULL);
    } else if (is_word(st, 0, "LOAD")) {
        set_feature(out, "LOAD", NULL);
    } else if (is_word(st, 0, "DECLARE")) {
        for (int i = 1; i + 1 < st->n && !is_word(st, i, "FOR"); i++)
            if (is_word(st, i, "WITH") && is_word(st, i + 1, "HOLD"))
                set_feature(out, "WITH HOLD cursor", NULL);
    } else if (is_word(st, 0, "CREATE")) {
        for (int i = 1; i < 5 && i < st->n; i++)
            if (is_word(st, i, "TEMP") || is_word(st, i, "TEMPORARY"))
                set_feature(out, "temporary table", NULL);
    }
}

static bool advisory_name(const char *upper)
{
    return !strcmp(upper, "PG_ADVISORY_LOCK") || !strcmp(upper, "PG_ADVISORY_LOCK_SHARED") ||
           !strcmp(upper, "PG_TRY_ADVISORY_LOCK") || !strcmp(upper, "PG_TRY_ADVISORY_LOCK_SHARED");
}

static void add_token(struct stmt *st, const struct token *t, struct px_sql_info *out)
{
    if (st->pending_advisory && t->kind == TOK_OTHER && t->punct == '(')
        set_feature(out, "session advisory lock", NULL);
    st->pending_advisory = t->kind == TOK_WORD && advisory_name(t->text);
    if (st->n < MAX_TOKENS)
        st->tok[st->n++] = *t;
    st->total++;
}

/* Ends the current statement.  Returns true when it was not empty. */
static bool end_stmt(struct stmt *st, struct px_sql_info *out, int *count,
                     enum px_sql_kind *first_kind, struct px_sql_info *first)
{
    if (st->total == 0)
        return false;
    note_session_state(st, out);
    if (++*count == 1)
        *first_kind = classify_stmt(st, first);
    st->n = st->total = 0;
    st->pending_advisory = false;
    return true;
}

void px_sql_classify(const char *sql, size_t len, struct px_sql_info *out)
{
    memset(out, 0, sizeof(*out));
    static struct stmt st; /* large; the proxy is single-threaded */
    struct px_sql_info first;
    memset(&first, 0, sizeof(first));
    enum px_sql_kind first_kind = PX_SQL_EMPTY;
    int count = 0;
    st.n = st.total = 0;
    st.pending_advisory = false;
    const unsigned char *p = (const unsigned char *)sql, *end = p + len;
    while (p < end) {
        unsigned char ch = *p;
        struct token t = {.kind = TOK_OTHER};
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v') {
            p++;
            continue;
        }
        if (ch == '-' && p + 1 < end && p[1] == '-') {
            while (p < end && *p != '\n')
                p++;
            continue;
        }
        if (ch == '/' && p + 1 < end && p[1] == '*') {
            int depth = 1;
            p += 2;
            while (p < end && depth > 0) {
                if (*p == '/' && p + 1 < end && p[1] == '*')
                    depth++, p += 2;
                else if (*p == '*' && p + 1 < end && p[1] == '/')
                    depth--, p += 2;
                else
                    p++;
            }
            continue;
        }
        if (ch == ';') {
            end_stmt(&st, out, &count, &first_kind, &first);
            p++;
            continue;
        }
        if (ch == '\'' || ((ch == 'E' || ch == 'e') && p + 1 < end && p[1] == '\'')) {
            bool backslash = ch != '\'';
            p += backslash ? 2 : 1;
            while (p < end) {
                if (backslash && *p == '\\' && p + 1 < end) {
                    p += 2;
                } else if (*p == '\'') {
                    if (p + 1 < end && p[1] == '\'')
                        p += 2;
                    else {
                        p++;
                        break;
                    }
                } else {
                    p++;
                }
            }
            add_token(&st, &t, out);
            continue;
        }
        if (ch == '"') {
            size_t n = 0;
            p++;
            while (p < end) {
                if (*p == '"') {
                    if (p + 1 < end && p[1] == '"')
                        p++;
                    else {
                        p++;
                        break;
                    }
                }
                if (n < TOKEN_MAX - 1)
                    t.text[n++] = (char)*p;
                p++;
            }
            t.text[n] = '\0';
            t.kind = TOK_QIDENT;
            add_token(&st, &t, out);
            continue;
        }
        if (ch == '$') {
            /* $tag$ ... $tag$ (tag may be empty); $1 is a parameter. */
            const unsigned char *q = p + 1;
            while (q < end && *q != '$' && ident_char(*q))
                q++;
            bool tag_ok = q < end && *q == '$' && (q == p + 1 || ident_start(p[1]));
            if (tag_ok) {
                size_t tag_len = (size_t)(q - p) + 1; /* "$tag$" */
                const unsigned char *body = q + 1, *close = NULL;
                for (const unsigned char *r = body; r + tag_len <= end; r++)
                    if (*r == '$' && !memcmp(r, p, tag_len)) {
                        close = r;
                        break;
                    }
                p = close ? close + tag_len : end;
                add_token(&st, &t, out);
                continue;
            }
            p++;
            while (p < end && *p >= '0' && *p <= '9')
                p++;
            add_token(&st, &t, out);
            continue;
        }
        if (ident_start(ch)) {
            size_t n = 0;
            while (p < end && ident_char(*p)) {
                if (n < TOKEN_MAX - 1) {
                    char c = (char)*p;
                    t.text[n++] = c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
                }
                p++;
            }
            t.text[n] = '\0';
            t.kind = TOK_WORD;
            add_token(&st, &t, out);
            continue;
        }
        if (ch >= '0' && ch <= '9') {
            while (p < end && ((*p >= '0' && *p <= '9') || *p == '.' || *p == 'e' || *p == 'E' ||
                               *p == '_' || ident_char(*p)))
                p++;
            add_token(&st, &t, out);
            continue;
        }
        t.punct = (char)ch;
        p++;
        add_token(&st, &t, out);
    }
    end_stmt(&st, out, &count, &first_kind, &first);
    out->multi = count > 1;
    if (count == 1) {
        out->kind = first_kind;
        out->tag = first.tag;
        memcpy(out->name, first.name, sizeof(out->name));
    } else {
        out->kind = count == 0 ? PX_SQL_EMPTY : PX_SQL_OTHER;
    }
}
