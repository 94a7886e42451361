/*
 * lockcall.c: recognising lock calls and their parse analysis (see lockcall.h for what is
 * a lock call and what PostgreSQL would answer).  Bind, execution and replies are in
 * lockcall_exec.c; what both share is lockcall_int.h.
 *
 * Three layers over one text, no allocation:
 *
 *   lexer      sqllex.h: the text split as PostgreSQL 15's scan.l does (white space and
 *              comments skipped, literals whole, strings continued across newlines,
 *              numbers with trailing junk refused: PX_LEX_BAD).
 *   shape      recognise(): [;...] SELECT fn ( ... ) [[AS] alias] [;...] or
 *              SELECT * FROM fn ( ... ), finding the matching ')' and the arguments'
 *              extents at depth one; then every string constant of the arguments is
 *              decoded once to find what the lexer would reject (bad escapes, bytes that
 *              are not UTF-8) and the whole text is checked to be UTF-8.
 *   analysis   parse_arg() reads one argument (constant or $n, casts); analyze()
 *              follows the order of PostgreSQL's transformFuncCall: arguments left to
 *              right with their casts, then the function match (42883), then the
 *              coercion of each argument to the function's type, then the parameters'
 *              types (42P18).  The first error stops it, as in PostgreSQL.
 *
 * Each token advances by at least one byte and is looked at a bounded number of times;
 * decoding passes over each literal twice at most: linear in the length of the text.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "path/lockcall_int.h"
#include "path/sqllex.h"

static bool is_hex(unsigned char c)
{
    return px_lex_is_digit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

static unsigned hex_val(unsigned char c)
{
    return px_lex_is_digit(c) ? (unsigned)(c - '0') : (unsigned)((c | 0x20) - 'a' + 10);
}

/* ---- decoding string constants --------------------------------------------------------- */

struct sink {
    struct px_lc_val *v;
    struct px_lc_utf8 u;
};

static void sink_put(struct sink *k, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        px_lc_utf8_feed(&k->u, (unsigned char)s[i]);
    px_lc_val_put(k->v, s, n);
}

/* addunicode(): code point c as UTF-8; false for PostgreSQL's "invalid Unicode escape
 * value". */
static bool put_unicode(struct sink *k, uint32_t c)
{
    char b[4];
    size_t n;
    if (c == 0 || c > 0x10FFFF)
        return false;
    if (c < 0x80) {
        b[0] = (char)c;
        n = 1;
    } else if (c < 0x800) {
        b[0] = (char)(0xC0 | (c >> 6));
        b[1] = (char)(0x80 | (c & 0x3F));
        n = 2;
    } else if (c < 0x10000) {
        b[0] = (char)(0xE0 | (c >> 12));
        b[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        b[2] = (char)(0x80 | (c & 0x3F));
        n = 3;
    } else {
        b[0] = (char)(0xF0 | (c >> 18));
        b[1] = (char)(0x80 | ((c >> 12) & 0x3F));
        b[2] = (char)(0x80 | ((c >> 6) & 0x3F));
        b[3] = (char)(0x80 | (c & 0x3F));
        n = 4;
    }
    sink_put(k, b, n);
    return true;
}

/* \uXXXX or \UXXXXXXXX at p (the backslash): the code point and the escape's length, or 0
 * when the hex digits are missing (xeunicodefail). */
static size_t unicode_escape(const char *p, const char *end, uint32_t *c)
{
    size_t digits = p[1] == 'u' ? 4 : 8;
    if ((size_t)(end - p) < 2 + digits)
        return 0;
    *c = 0;
    for (size_t i = 0; i < digits; i++) {
        if (!is_hex((unsigned char)p[2 + i]))
            return 0;
        *c = *c << 4 | hex_val((unsigned char)p[2 + i]);
    }
    return 2 + digits;
}

/* One backslash escape of an E'' string at p (p < end, *p == '\\'): decodes it into k and
 * returns its length, or 0 for an escape PostgreSQL's lexer rejects. */
static size_t esc_escape(const char *p, const char *end, struct sink *k)
{
    static const char plain[] = "b\bf\fn\nr\rt\t";
    unsigned char c = (unsigned char)p[1];
    if (c >= '0' && c <= '7') { /* \ooo, the value cut to a byte */
        size_t n = 1;
        unsigned v = 0;
        while (n <= 3 && p + n < end && p[n] >= '0' && p[n] <= '7')
            v = v * 8 + (unsigned)(p[n++] - '0');
        char b = (char)(v & 0xFF);
        sink_put(k, &b, 1);
        return n;
    }
    if (c == 'x' && end - p > 2 && is_hex((unsigned char)p[2])) { /* \xh or \xhh */
        size_t n = end - p > 3 && is_hex((unsigned char)p[3]) ? 4 : 3;
        char b = (char)(n == 4 ? hex_val((unsigned char)p[2]) * 16 + hex_val((unsigned char)p[3])
                               : hex_val((unsigned char)p[2]));
        sink_put(k, &b, 1);
        return n;
    }
    if (c == 'u' || c == 'U') {
        uint32_t cp, lo;
        size_t n = unicode_escape(p, end, &cp);
        if (n == 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
            return 0;
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair: the second must follow */
            size_t m =
                end - p > (ptrdiff_t)n + 1 && p[n] == '\\' && (p[n + 1] == 'u' || p[n + 1] == 'U')
                    ? unicode_escape(p + n, end, &lo)
                    : 0;
            if (m == 0 || lo < 0xDC00 || lo > 0xDFFF)
                return 0;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            n += m;
        }
        return put_unicode(k, cp) ? n : 0;
    }
    const char *m = c ? strchr(plain, (char)c) : NULL;
    char b = m && (m - plain) % 2 == 0 ? m[1] : (char)c;
    sink_put(k, &b, 1);
    return 2;
}

/*
 * Decodes the string token t into k.  False when PostgreSQL's lexer rejects it: a bad
 * escape, or decoded bytes that are not UTF-8 (NUL included).  The token is known to be
 * well terminated.
 */
static bool decode_string(const struct px_lex_token *t, struct sink *k)
{
    const char *p = t->s, *end = t->s + t->n;
    px_lc_val_text(k->v, PX_LT_UNKNOWN);
    k->u = (struct px_lc_utf8){0};
    if (t->str == PX_LEX_STR_DOLLAR) {
        size_t dn = px_lex_dollar_delim(p, end);
        sink_put(k, p + dn, t->n - 2 * dn);
        return px_lc_utf8_ok(&k->u);
    }
    bool esc = t->str == PX_LEX_STR_ESC;
    p += esc ? 2 : 1;
    while (p < end) {
        const char *run = p;
        while (p < end && *p != '\'' && !(esc && *p == '\\'))
            p++;
        sink_put(k, run, (size_t)(p - run));
        if (p >= end)
            break;
        if (*p == '\\') {
            size_t n = esc_escape(p, end, k);
            if (n == 0)
                return false;
            p += n;
        } else if (end - p > 1 && p[1] == '\'') {
            sink_put(k, "'", 1);
            p += 2;
        } else {
            p = px_lex_quote_continue(p + 1, end); /* NULL at the token's end */
            if (!p)
                break;
        }
    }
    return px_lc_utf8_ok(&k->u);
}

/* ---- shape ----------------------------------------------------------------------------- */

static const char *const fn_names[PX_LOCKFN_COUNT] = {
    "pgwarden_lock",   "pgwarden_xact_lock",  "pgwarden_try_lock", "pgwarden_try_xact_lock",
    "pgwarden_unlock", "pgwarden_unlock_all", "pgwarden_locks",
};

const char *px_lockfn_name(enum px_lockfn fn)
{
    return (unsigned)fn < PX_LOCKFN_COUNT ? fn_names[fn] : "?";
}

/* The function t names: a word in any case, or exactly "quoted"; -1 if none. */
static int fn_of(const struct px_lex_token *t)
{
    return px_lex_lookup(t, fn_names, PX_LOCKFN_COUNT, true);
}

/* PostgreSQL 15's keywords that cannot be a bare column label (pg_get_keywords() where
 * not barelabel). */
/* clang-format off */
static const char *const not_bare[] = {
    "array", "as", "char", "character", "create", "day", "except", "fetch", "filter", "for",
    "from", "grant", "group", "having", "hour", "intersect", "into", "isnull", "limit",
    "minute", "month", "notnull", "offset", "on", "order", "over", "overlaps", "precision",
    "returning", "second", "to", "union", "varying", "where", "window", "with", "within",
    "without", "year",
};
/* clang-format on */

static bool is_bare_label(const struct px_lex_token *t)
{
    return t->kind == PX_LEX_QIDENT ||
           (t->kind == PX_LEX_WORD &&
            px_lex_lookup(t, not_bare, sizeof(not_bare) / sizeof(not_bare[0]), false) < 0);
}

/* The column name t gives (folded, or "" undone): false when empty or too long (PostgreSQL
 * would truncate it, with a NOTICE). */
static bool label_name(const struct px_lex_token *t, char out[PX_LOCKCALL_NAME_SIZE])
{
    size_t n = px_lex_ident(t, out, PX_LOCKCALL_NAME_SIZE);
    return n > 0 && n < PX_LOCKCALL_NAME_SIZE;
}

struct shape {
    int fn;
    bool from;
    const char *fn_loc;
    char column[PX_LOCKCALL_NAME_SIZE];
    size_t nargs;
    const char *arg_start[PX_LOCKCALL_MAX_ARGS]; /* each argument's text */
    const char *arg_end[PX_LOCKCALL_MAX_ARGS];
};

/* The rest of the text after the statement is only empty statements. */
static bool only_empties(struct px_lex *lx, struct px_lex_token *t)
{
    while (t->kind == PX_LEX_SEMI)
        px_lex_next(lx, t);
    return t->kind == PX_LEX_END;
}

/* From just after '(': the arguments' extents up to the matching ')'. */
static bool split_args(struct px_lex *lx, struct shape *sh)
{
    struct px_lex_token t;
    int depth = 1;
    const char *start = lx->p;
    sh->nargs = 0;
    for (;;) {
        px_lex_next(lx, &t);
        if (t.kind == PX_LEX_END || t.kind == PX_LEX_SEMI || t.kind == PX_LEX_BAD)
            return false;
        if (t.kind != PX_LEX_CHAR)
            continue;
        if (*t.s == '(') {
            depth++;
        } else if (depth == 1 && (*t.s == ',' || *t.s == ')')) {
            if (sh->nargs == PX_LOCKCALL_MAX_ARGS)
                return false;
            sh->arg_start[sh->nargs] = start;
            sh->arg_end[sh->nargs++] = t.s;
            start = t.s + 1;
            if (*t.s == ')')
                return true;
        } else if (*t.s == ')') {
            depth--;
        }
    }
}

/* An argument's text holds no token (fn() has none; fn(,) is a syntax error). */
static bool arg_empty(const struct shape *sh, size_t i)
{
    const char *p = px_lex_skip_blank(sh->arg_start[i], sh->arg_end[i]);
    return p == sh->arg_end[i];
}

static bool recognise(const char *sql, size_t len, struct shape *sh)
{
    struct px_lex lx = {.p = sql, .end = sql + len};
    struct px_lex_token t;
    px_lex_next(&lx, &t);
    while (t.kind == PX_LEX_SEMI)
        px_lex_next(&lx, &t);
    if (t.kind != PX_LEX_WORD || !px_lex_fold_eq(t.s, t.n, "select"))
        return false;
    px_lex_next(&lx, &t);
    sh->from = t.kind == PX_LEX_CHAR && *t.s == '*';
    if (sh->from) {
        px_lex_next(&lx, &t);
        if (t.kind != PX_LEX_WORD || !px_lex_fold_eq(t.s, t.n, "from"))
            return false;
        px_lex_next(&lx, &t);
    }
    sh->fn = fn_of(&t);
    sh->fn_loc = t.kind == PX_LEX_QIDENT ? t.s - 1 : t.s;
    if (sh->fn < 0)
        return false;
    snprintf(sh->column, sizeof(sh->column), "%s", fn_names[sh->fn]);
    px_lex_next(&lx, &t);
    if (t.kind != PX_LEX_CHAR || *t.s != '(' || !split_args(&lx, sh))
        return false;
    if (sh->nargs == 1 && arg_empty(sh, 0))
        sh->nargs = 0;
    for (size_t i = 0; i < sh->nargs; i++)
        if (arg_empty(sh, i))
            return false;
    px_lex_next(&lx, &t);
    if (!sh->from && t.kind == PX_LEX_WORD && px_lex_fold_eq(t.s, t.n, "as")) {
        px_lex_next(&lx, &t);
        if ((t.kind != PX_LEX_WORD && t.kind != PX_LEX_QIDENT) || !label_name(&t, sh->column))
            return false;
        px_lex_next(&lx, &t);
    } else if (!sh->from && is_bare_label(&t)) {
        if (!label_name(&t, sh->column))
            return false;
        px_lex_next(&lx, &t);
    }
    return only_empties(&lx, &t);
}

/* Every string constant of the arguments decodes (PostgreSQL's lexer accepts it). */
static bool strings_decode(const struct shape *sh)
{
    struct px_lc_val v;
    struct sink k = {.v = &v};
    for (size_t i = 0; i < sh->nargs; i++) {
        struct px_lex lx = {.p = sh->arg_start[i], .end = sh->arg_end[i]};
        struct px_lex_token t;
        for (px_lex_next(&lx, &t); t.kind != PX_LEX_END; px_lex_next(&lx, &t))
            if (t.kind == PX_LEX_STRING && !decode_string(&t, &k))
                return false;
    }
    return true;
}

/* ---- arguments ------------------------------------------------------------------------- */

enum src { SRC_STRING, SRC_INT, SRC_NUM, SRC_NULL, SRC_BOOL, SRC_PARAM };

/* One argument as written: a constant or parameter and its casts. */
struct arg {
    uint8_t src;             /* enum src */
    const char *loc;         /* where the constant or parameter starts (positions) */
    struct px_lex_token str; /* SRC_STRING */
    uint8_t itype;           /* SRC_INT: PX_LT_INT4, PX_LT_INT8 or PX_LT_NUMERIC */
    int64_t ival;            /* SRC_INT */
    uint32_t param;          /* SRC_PARAM: n of $n */
    uint8_t ncasts;
    uint8_t casts[PX_LOCKCALL_MAX_CASTS]; /* enum px_locktype, innermost first */
};

/* A type name at t for a cast: one of ours, else -1 (two-word names read u). */
static int cast_type(struct px_lex *lx, const struct px_lex_token *t)
{
    static const struct {
        const char *name;
        uint8_t type;
        bool quoted_ok; /* also as a "quoted" name: the real pg_type name */
    } names[] = {
        {"text", PX_LT_TEXT, true},      {"varchar", PX_LT_VARCHAR, true},
        {"bpchar", PX_LT_BPCHAR, true},  {"int4", PX_LT_INT4, true},
        {"int2", PX_LT_INT2, true},      {"int8", PX_LT_INT8, true},
        {"int", PX_LT_INT4, false},      {"integer", PX_LT_INT4, false},
        {"smallint", PX_LT_INT2, false}, {"bigint", PX_LT_INT8, false},
    };
    if (t->kind == PX_LEX_WORD &&
        (px_lex_fold_eq(t->s, t->n, "character") || px_lex_fold_eq(t->s, t->n, "char"))) {
        struct px_lex_token u;
        px_lex_next(lx, &u);
        return u.kind == PX_LEX_WORD && px_lex_fold_eq(u.s, u.n, "varying") ? PX_LT_VARCHAR : -1;
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        size_t n = strlen(names[i].name);
        if (t->kind == PX_LEX_WORD ? px_lex_fold_eq(t->s, t->n, names[i].name)
                                   : t->kind == PX_LEX_QIDENT && names[i].quoted_ok && t->n == n &&
                                         !memcmp(t->s, names[i].name, n))
            return names[i].type;
    }
    return -1;
}

static bool add_cast(struct arg *a, int type)
{
    if (type < 0 || a->ncasts == PX_LOCKCALL_MAX_CASTS)
        return false;
    a->casts[a->ncasts++] = (uint8_t)type;
    return true;
}

/* An integer constant: its type and value as PostgreSQL's make_const gives them. */
static void int_const(const struct px_lex_token *t, bool neg, struct arg *a)
{
    uint64_t mag = 0;
    bool big = false;
    for (size_t i = 0; i < t->n; i++) {
        unsigned d = (unsigned)(t->s[i] - '0');
        if (mag > (UINT64_MAX - d) / 10)
            big = true;
        else
            mag = mag * 10 + d;
    }
    a->itype = PX_LT_NUMERIC;
    if (big || mag > (neg ? UINT64_C(1) << 63 : (uint64_t)INT64_MAX))
        return;
    a->ival = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    a->itype = a->ival >= INT32_MIN && a->ival <= INT32_MAX ? PX_LT_INT4 : PX_LT_INT8;
}

/* The constant or parameter at t.  False when it is none. */
static bool primary(struct px_lex *lx, struct px_lex_token *t, struct arg *a)
{
    bool neg = t->kind == PX_LEX_CHAR && *t->s == '-';
    bool sign = neg || (t->kind == PX_LEX_CHAR && *t->s == '+'); /* +5 is 5, of the same type */
    a->loc = t->s;
    if (sign) {
        px_lex_next(lx, t);
        if (t->kind != PX_LEX_INT && t->kind != PX_LEX_NUM)
            return false;
    }
    switch (t->kind) {
    case PX_LEX_INT:
        a->src = SRC_INT;
        int_const(t, neg, a);
        return true;
    case PX_LEX_NUM: a->src = SRC_NUM; return true;
    case PX_LEX_STRING:
        a->str = *t;
        a->src = SRC_STRING;
        return true;
    case PX_LEX_PARAM:
        a->src = SRC_PARAM;
        a->param = 0;
        for (size_t i = 1; i < t->n && a->param <= 1000000; i++)
            a->param = a->param * 10 + (uint32_t)(t->s[i] - '0');
        return true;
    case PX_LEX_WORD:
        if (px_lex_fold_eq(t->s, t->n, "null")) {
            a->src = SRC_NULL;
        } else if (px_lex_fold_eq(t->s, t->n, "true") || px_lex_fold_eq(t->s, t->n, "false")) {
            a->src = SRC_BOOL;
        } else if (px_lex_fold_eq(t->s, t->n, "n")) { /* N'national': a bpchar constant */
            struct px_lex_token u;
            px_lex_next(lx, &u);
            if (u.kind != PX_LEX_STRING || u.str != PX_LEX_STR_STD || u.s != t->s + 1)
                return false;
            *t = u;
            a->str = u;
            a->src = SRC_STRING;
            a->casts[a->ncasts++] = PX_LT_BPCHAR;
        } else {
            return false;
        }
        return true;
    default: return false;
    }
}

/* arg := CAST '(' arg AS type ')' {'::' type} | primary {'::' type}.  On return t is the
 * token after it. */
static bool parse_arg_at(struct px_lex *lx, struct px_lex_token *t, struct arg *a, int depth)
{
    if (t->kind == PX_LEX_WORD && px_lex_fold_eq(t->s, t->n, "cast")) {
        px_lex_next(lx, t);
        if (depth > PX_LOCKCALL_MAX_CASTS || t->kind != PX_LEX_CHAR || *t->s != '(')
            return false;
        px_lex_next(lx, t);
        if (!parse_arg_at(lx, t, a, depth + 1) || t->kind != PX_LEX_WORD ||
            !px_lex_fold_eq(t->s, t->n, "as"))
            return false;
        px_lex_next(lx, t);
        if (!add_cast(a, cast_type(lx, t)))
            return false;
        px_lex_next(lx, t);
        if (t->kind != PX_LEX_CHAR || *t->s != ')')
            return false;
    } else if (!primary(lx, t, a)) {
        return false;
    }
    bool sign = *a->loc == '-' || *a->loc == '+';
    for (px_lex_next(lx, t); t->kind == PX_LEX_CAST; px_lex_next(lx, t)) {
        px_lex_next(lx, t);
        if (sign || !add_cast(a, cast_type(lx, t)))
            return false; /* -5::int is -(5::int): an operator, not a constant */
    }
    return true;
}

static bool is_constant(const struct px_lex_token *t)
{
    return t->kind == PX_LEX_STRING || t->kind == PX_LEX_INT || t->kind == PX_LEX_NUM ||
           t->kind == PX_LEX_PARAM;
}

enum arg_form {
    ARG_OK,          /* read into *a */
    ARG_UNSUPPORTED, /* well formed, perhaps, but not a form pgwarden evaluates (0A000) */
    ARG_SYNTAX,      /* two constants in a row: a syntax error PostgreSQL reports */
};

/* Argument i of the shape. */
static enum arg_form parse_arg(const struct shape *sh, size_t i, struct arg *a)
{
    struct px_lex lx = {.p = sh->arg_start[i], .end = sh->arg_end[i]};
    struct px_lex_token t;
    memset(a, 0, sizeof(*a));
    px_lex_next(&lx, &t);
    if (!parse_arg_at(&lx, &t, a, 0))
        return ARG_UNSUPPORTED;
    if (t.kind == PX_LEX_END)
        return ARG_OK;
    return is_constant(&t) ? ARG_SYNTAX : ARG_UNSUPPORTED;
}

/* ---- analysis -------------------------------------------------------------------------- */

/* Names of parameter types a Parse may give that pgwarden does not convert, for 42883
 * (format_type names from PostgreSQL 15); others print as their OID. */
static const struct {
    uint32_t oid;
    const char *name;
} other_types[] = {
    {16, "boolean"},
    {17, "bytea"},
    {18, "\"char\""},
    {19, "name"},
    {26, "oid"},
    {114, "json"},
    {142, "xml"},
    {700, "real"},
    {701, "double precision"},
    {790, "money"},
    {869, "inet"},
    {1005, "smallint[]"},
    {1007, "integer[]"},
    {1009, "text[]"},
    {1015, "character varying[]"},
    {1016, "bigint[]"},
    {1082, "date"},
    {1083, "time without time zone"},
    {1114, "timestamp without time zone"},
    {1184, "timestamp with time zone"},
    {1186, "interval"},
    {1266, "time with time zone"},
    {1700, "numeric"},
    {2950, "uuid"},
    {3802, "jsonb"},
};

/* The state of parse analysis. */
struct an {
    const char *sql;
    bool extended;
    uint16_t nparams;
    uint8_t ptype[PX_LOCKCALL_MAX_PARAMS]; /* enum px_locktype */
    uint32_t poid[PX_LOCKCALL_MAX_PARAMS]; /* the OID given for PX_LT_OTHER */
    struct px_lockcall *out;
};

/* 1-based character position of p in the text (PostgreSQL's P field; UTF-8). */
static uint32_t position(const struct an *an, const char *p)
{
    uint32_t n = 1;
    for (const char *q = an->sql; q < p; q++)
        n += ((unsigned char)*q & 0xC0) != 0x80;
    return n;
}

static uint8_t lt_of_oid(uint32_t oid)
{
    for (int t = PX_LT_TEXT; t < PX_LT_OTHER; t++)
        if (px_locktype_oid((enum px_locktype)t) == oid)
            return (uint8_t)t;
    return oid == 0 || oid == 705 ? PX_LT_UNKNOWN : PX_LT_OTHER;
}

/* The type name for 42883 of a value of type t (oid for PX_LT_OTHER); buf >= 16 bytes. */
static const char *type_name(uint8_t t, uint32_t oid, char *buf)
{
    if (t != PX_LT_OTHER)
        return px_lc_type_name(t);
    for (size_t i = 0; i < sizeof(other_types) / sizeof(other_types[0]); i++)
        if (other_types[i].oid == oid)
            return other_types[i].name;
    snprintf(buf, 16, "%" PRIu32, oid);
    return buf;
}

static bool fail(struct an *an, const char *sqlstate, const char *loc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Sets the call's error; returns false. */
static bool fail(struct an *an, const char *sqlstate, const char *loc, const char *fmt, ...)
{
    struct px_lockcall_error *e = &an->out->error;
    va_list ap;
    px_lc_err(e, sqlstate, "%s", "");
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    e->position = loc ? position(an, loc) : 0;
    return false;
}

static bool unsupported(struct an *an, const char *loc, const char *what)
{
    fail(an, "0A000", loc, "pgwarden cannot evaluate this argument of %s: %s",
         fn_names[an->out->fn], what);
    snprintf(an->out->error.hint, sizeof(an->out->error.hint),
             "Pass constants or $n parameters, cast only to text, varchar or an integer type.");
    return false;
}

/* An argument being analysed: its current type and, for constants, value. */
struct cur {
    uint8_t type;
    uint32_t oid;        /* PX_LT_OTHER: the parameter's type OID */
    bool unknown_node;   /* an untyped parameter or string/NULL constant not yet coerced */
    bool deferred;       /* a constant whose evaluation fails at Bind */
    struct px_lc_val *v; /* constants */
    uint8_t nconv;       /* parameters: types passed through, conv[0] the parameter's */
    uint8_t conv[PX_LOCKCALL_MAX_CASTS + 2];
};

/* Parameter $n (1-based, <= nparams) used where type `to` is wanted while its node is
 * untyped (variable_coerce_param_hook). */
static bool infer_param(struct an *an, const struct arg *a, uint8_t to)
{
    uint8_t *pt = &an->ptype[a->param - 1];
    if (*pt != PX_LT_UNKNOWN && *pt != to) {
        fail(an, "42P08", a->loc, "inconsistent types deduced for parameter $%u", a->param);
        snprintf(an->out->error.detail, sizeof(an->out->error.detail), "%s versus %s",
                 px_lc_type_name(*pt), px_lc_type_name(to));
        return false;
    }
    *pt = to;
    return true;
}

/* Converts c (argument a) to `to`: a cast, or the coercion to the function's type. */
static bool convert(struct an *an, const struct arg *a, struct cur *c, uint8_t to)
{
    if (a->src == SRC_PARAM) {
        if (c->unknown_node) {
            if (!infer_param(an, a, to))
                return false;
            c->nconv = 0;
        } else if (c->type != to) {
            struct px_lc_val probe = {.isnull = true, .type = c->type};
            if (px_lc_convert(&probe, to, 0, NULL) == -2)
                return unsupported(an, a->loc, "a parameter of a type pgwarden does not convert");
        }
        if (c->nconv == 0 || c->conv[c->nconv - 1] != to)
            c->conv[c->nconv++] = to;
    } else if (c->deferred) {
        struct px_lc_val probe = {.isnull = true, .type = c->type};
        if (c->type != to && px_lc_convert(&probe, to, 0, NULL) == -2)
            return unsupported(an, a->loc, "a cast pgwarden does not make");
    } else {
        struct px_lockcall_error err;
        int rc = px_lc_convert(c->v, to, 0, &err);
        if (rc == -2)
            return unsupported(an, a->loc, "a cast pgwarden does not make");
        if (rc < 0 && c->type == PX_LT_UNKNOWN) { /* input of a string constant: now */
            an->out->error = err;
            an->out->error.position = position(an, a->loc);
            return false;
        }
        if (rc < 0) { /* a cast of a typed value: when the plan is made, at Bind */
            if (!an->out->deferred.sqlstate[0])
                an->out->deferred = err;
            c->deferred = true;
        }
    }
    c->type = to;
    c->unknown_node = false;
    return true;
}

/* transformExpr of argument a: its source, then its casts. */
static bool transform(struct an *an, const struct arg *a, struct cur *c)
{
    memset(c->v, 0, sizeof(*c->v));
    c->oid = 0;
    c->unknown_node = false;
    c->deferred = false;
    c->nconv = 0;
    switch (a->src) {
    case SRC_STRING: {
        struct sink k = {.v = c->v};
        decode_string(&a->str, &k); /* known to decode: strings_decode() */
        c->type = PX_LT_UNKNOWN;
        c->unknown_node = true;
        break;
    }
    case SRC_INT:
        px_lc_val_int(c->v, a->itype, a->ival);
        c->type = a->itype;
        break;
    case SRC_NUM: c->type = PX_LT_NUMERIC; break;
    case SRC_NULL:
        c->v->isnull = true;
        c->type = PX_LT_UNKNOWN;
        c->unknown_node = true;
        break;
    case SRC_BOOL: c->type = PX_LT_BOOL; break;
    case SRC_PARAM:
        if (!an->extended || a->param == 0)
            return fail(an, "42P02", a->loc, "there is no parameter $%u", a->param);
        if (a->param > PX_LOCKCALL_MAX_PARAMS)
            return fail(an, "0A000", a->loc, "pgwarden lock calls take at most %d parameters",
                        PX_LOCKCALL_MAX_PARAMS);
        while (an->nparams < a->param)
            an->ptype[an->nparams++] = PX_LT_UNKNOWN;
        c->type = an->ptype[a->param - 1];
        c->oid = an->poid[a->param - 1];
        c->unknown_node = c->type == PX_LT_UNKNOWN;
        if (!c->unknown_node)
            c->conv[c->nconv++] = c->type;
        break;
    }
    c->v->type = c->type;
    if (a->ncasts && (a->src == SRC_NUM || a->src == SRC_BOOL))
        return unsupported(an, a->loc, "a cast pgwarden does not make");
    for (uint8_t i = 0; i < a->ncasts; i++)
        if (!convert(an, a, c, a->casts[i]))
            return false;
    return true;
}

/* Does a value of type t (oid) match an argument of type want (func_match_argtypes with
 * implicit casts)?  *unsupported: PostgreSQL would accept it, pgwarden cannot convert. */
static bool type_matches(uint8_t t, uint32_t oid, uint8_t want, bool *unsup)
{
    if (t == PX_LT_UNKNOWN)
        return true;
    if (want == PX_LT_INT4)
        return t == PX_LT_INT2 || t == PX_LT_INT4;
    if (t == PX_LT_OTHER && (oid == 18 || oid == 19)) { /* "char", name: implicit to text */
        *unsup = true;
        return true;
    }
    return t == PX_LT_TEXT || t == PX_LT_VARCHAR || t == PX_LT_BPCHAR;
}

/* The argument types of fn for nargs arguments; false when fn has no such arity. */
static bool signature(int fn, size_t nargs, uint8_t want[3])
{
    want[0] = want[1] = PX_LT_TEXT;
    want[2] = PX_LT_INT4;
    switch (fn) {
    case PX_LOCKFN_LOCK:
    case PX_LOCKFN_XACT_LOCK: return nargs == 2 || nargs == 3;
    case PX_LOCKFN_TRY_LOCK:
    case PX_LOCKFN_TRY_XACT_LOCK: return nargs == 2;
    case PX_LOCKFN_UNLOCK: return nargs == 1;
    default: return nargs == 0;
    }
}

/* ParseFuncOrColumn's lookup: 42883 when no function matches. */
static bool match(struct an *an, const struct shape *sh, const struct cur *cs, uint8_t want[3])
{
    bool unsup = false, ok = signature(sh->fn, sh->nargs, want);
    for (size_t i = 0; ok && i < sh->nargs; i++)
        ok = type_matches(cs[i].type, cs[i].oid, want[i], &unsup);
    if (ok && !unsup)
        return true;
    if (ok)
        return unsupported(an, sh->fn_loc, "a parameter of type name or \"char\"");
    char list[sizeof(an->out->error.message)] = "", num[16];
    size_t at = 0;
    for (size_t i = 0; i < sh->nargs; i++) {
        const char *name = cs[i].unknown_node ? "unknown" : type_name(cs[i].type, cs[i].oid, num);
        at += (size_t)snprintf(list + at, sizeof(list) - at, "%s%s", i ? ", " : "", name);
        if (at >= sizeof(list))
            at = sizeof(list) - 1;
    }
    fail(an, "42883", sh->fn_loc, "function %s(%s) does not exist", fn_names[sh->fn], list);
    snprintf(an->out->error.hint, sizeof(an->out->error.hint),
             "No function matches the given name and argument types. You might need to add "
             "explicit type casts.");
    return false;
}

/* The analysed argument a as the call keeps it. */
static void store_arg(struct px_lockarg *pa, const struct arg *a, const struct cur *c)
{
    memset(pa, 0, sizeof(*pa));
    if (a->src == SRC_PARAM) {
        pa->kind = PX_LOCKARG_PARAM;
        pa->param = (uint16_t)a->param;
        pa->nconv = c->nconv;
        memcpy(pa->conv, c->conv, c->nconv);
    } else if (c->deferred) {
        pa->kind = PX_LOCKARG_ERROR;
    } else if (c->v->isnull) {
        pa->kind = PX_LOCKARG_NULL;
    } else if (c->type == PX_LT_INT4) {
        pa->kind = PX_LOCKARG_INT;
        pa->ival = c->v->ival;
    } else {
        pa->kind = PX_LOCKARG_TEXT;
        pa->len = c->v->len;
        memcpy(pa->text, c->v->text, pa->len < sizeof(pa->text) ? pa->len : sizeof(pa->text));
    }
}

/* Parse analysis of the recognised call sh whose arguments read as args[] (forms[]: how
 * each read).  Fills out, with out->error set at the first error. */
static void analyze(struct an *an, const struct shape *sh, const struct arg *args,
                    const uint8_t *forms)
{
    struct px_lockcall *out = an->out;
    struct cur cs[PX_LOCKCALL_MAX_ARGS];
    struct px_lc_val vals[3], scratch;
    uint8_t want[3];
    for (size_t i = 0; i < sh->nargs; i++) {
        if (forms[i] != ARG_OK) {
            unsupported(an, px_lex_skip_blank(sh->arg_start[i], sh->arg_end[i]),
                        "an expression, or a form of constant it does not read");
            return;
        }
        cs[i].v = i < 3 ? &vals[i] : &scratch;
        if (!transform(an, &args[i], &cs[i]))
            return;
    }
    if (!match(an, sh, cs, want))
        return;
    for (size_t i = 0; i < sh->nargs; i++)
        if (!convert(an, &args[i], &cs[i], want[i]))
            return;
    for (uint16_t i = 0; i < an->nparams; i++) {
        if (an->ptype[i] == PX_LT_UNKNOWN) {
            fail(an, "42P18", NULL, "could not determine data type of parameter $%u", i + 1u);
            return;
        }
    }
    out->nargs = (uint16_t)sh->nargs;
    for (size_t i = 0; i < sh->nargs; i++)
        store_arg(&out->args[i], &args[i], &cs[i]);
    out->nparams = an->nparams;
    for (uint16_t i = 0; i < an->nparams; i++) {
        out->param_lt[i] = an->ptype[i];
        out->param_types[i] =
            an->ptype[i] == PX_LT_OTHER ? an->poid[i] : px_locktype_oid(an->ptype[i]);
    }
}

static bool parse_call(const char *sql, size_t len, bool extended, const uint8_t *types_be,
                       uint16_t ntypes, struct px_lockcall *out)
{
    struct shape sh;
    struct arg args[PX_LOCKCALL_MAX_ARGS];
    uint8_t forms[PX_LOCKCALL_MAX_ARGS];
    if (!sql) {
        sql = "";
        len = 0;
    }
    if (!recognise(sql, len, &sh) || px_lc_utf8_check(sql, len) < len || !strings_decode(&sh))
        return false;
    for (size_t i = 0; i < sh.nargs; i++)
        if ((forms[i] = (uint8_t)parse_arg(&sh, i, &args[i])) == ARG_SYNTAX)
            return false;
    memset(out, 0, sizeof(*out));
    out->fn = (enum px_lockfn)sh.fn;
    out->from_clause = sh.from;
    memcpy(out->column, sh.column, sizeof(out->column));
    struct an an = {.sql = sql, .extended = extended, .out = out};
    if (ntypes > PX_LOCKCALL_MAX_PARAMS) {
        fail(&an, "0A000", NULL, "pgwarden lock calls take at most %d parameters",
             PX_LOCKCALL_MAX_PARAMS);
        return true;
    }
    for (uint16_t i = 0; i < ntypes; i++) {
        an.poid[i] = px_get_u32(types_be + 4 * (size_t)i);
        an.ptype[i] = lt_of_oid(an.poid[i]);
    }
    an.nparams = ntypes;
    analyze(&an, &sh, args, forms);
    return true;
}

bool px_lockcall_parse(const char *sql, size_t len, struct px_lockcall *out)
{
    return parse_call(sql, len, false, NULL, 0, out);
}

bool px_lockcall_parse_prepared(const char *sql, size_t len, const uint8_t *types_be,
                                uint16_t ntypes, struct px_lockcall *out)
{
    return parse_call(sql, len, true, types_be, ntypes, out);
}

/* ---- the pre-check --------------------------------------------------------------------- */

bool px_lockcall_maybe(const char *sql, size_t len)
{
    const char *p = sql, *end = sql + len, *u;
    if (!sql)
        return false;
    while (p < end && px_lex_is_space((unsigned char)*p))
        p++;
    if (p < end && px_lex_is_ident_start((unsigned char)*p)) { /* a statement's first word */
        if (end - p < 6 || !px_lex_fold_eq(p, 6, "select") ||
            (end - p > 6 && px_lex_is_ident_cont((unsigned char)p[6])))
            return false;
        p += 6;
    }
    for (; p < end && (u = memchr(p, '_', (size_t)(end - p))); p = u + 1)
        if (u - sql >= 8 && px_lex_fold_eq(u - 8, 8, "pgwarden"))
            return true;
    return false;
}
