/*
 * sqllex.c: PostgreSQL 15's lexical rules for the statement path (see sqllex.h for what
 * it owns and guarantees; proxy/README.md for the path).
 *
 * Interface: px_lex_next() splits a text into tokens; px_lex_skip_blank(),
 * px_lex_quote_continue() and px_lex_dollar_delim() are the pieces lockcall.c needs again
 * to decode strings and look at argument texts; px_lex_fold_eq() and px_lex_lookup()
 * compare keywords and names, px_lex_ident() reads a name's value.
 *
 * Each rule names the scan.l definition it follows.  Literal bodies are skipped with
 * memchr where there are no escapes to look at: sqlscan.c lexes every simple query of a
 * client in transaction mode.
 */
#include <string.h>

#include "path/sqllex.h"

bool px_lex_fold_eq(const char *s, size_t n, const char *w)
{
    for (size_t i = 0; i < n; i++)
        if (w[i] == '\0' || px_lex_fold(s[i]) != w[i])
            return false;
    return w[n] == '\0';
}

int px_lex_lookup(const struct px_lex_token *t, const char *const *names, size_t n, bool quoted_too)
{
    for (size_t i = 0; i < n; i++) {
        if (t->kind == PX_LEX_WORD ? px_lex_fold_eq(t->s, t->n, names[i])
                                   : quoted_too && t->kind == PX_LEX_QIDENT &&
                                         t->n == strlen(names[i]) && !memcmp(t->s, names[i], t->n))
            return (int)i;
    }
    return -1;
}

size_t px_lex_ident(const struct px_lex_token *t, char *out, size_t size)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++, n++) {
        char c = t->s[i];
        if (t->kind == PX_LEX_WORD)
            c = px_lex_fold(c);
        else if (c == '"')
            i++; /* "" is one quote: the lexer guarantees the second */
        if (n + 1 < size)
            out[n] = c;
    }
    out[n + 1 < size ? n : size - 1] = '\0';
    return n;
}

/* p is just past the opening slash-star.  Returns just past the matching star-slash
 * (xc: comments nest), or NULL when the text ends first. */
static const char *skip_block_comment(const char *p, const char *end)
{
    size_t depth = 1;
    while (p < end) {
        if (*p == '*' && end - p > 1 && p[1] == '/') {
            p += 2;
            if (--depth == 0)
                return p;
        } else if (*p == '/' && end - p > 1 && p[1] == '*') {
            p += 2;
            depth++;
        } else {
            p++;
        }
    }
    return NULL;
}

/* p is just past "--".  comment ("--"{non_newline}*), non_newline [^\n\r]. */
static const char *skip_line_comment(const char *p, const char *end)
{
    while (p < end && *p != '\n' && *p != '\r')
        p++;
    return p;
}

const char *px_lex_skip_blank(const char *p, const char *end)
{
    while (p < end) {
        if (px_lex_is_space((unsigned char)*p)) {
            p++;
        } else if (*p == '-' && end - p > 1 && p[1] == '-') {
            p = skip_line_comment(p + 2, end);
        } else if (*p == '/' && end - p > 1 && p[1] == '*') {
            p = skip_block_comment(p + 2, end);
            if (!p)
                return NULL;
        } else {
            break;
        }
    }
    return p;
}

/* quotecontinue {whitespace_with_newline}{quote}: horizontal space and -- comments, a
 * newline, then space and comments each ended by a newline.  A -- comment always runs to
 * a newline or the end, so "white space and -- comments holding a newline" is the same;
 * block comments do not count. */
const char *px_lex_quote_continue(const char *p, const char *end)
{
    bool newline = false;
    while (p < end) {
        if (*p == '\n' || *p == '\r') {
            newline = true;
            p++;
        } else if (px_lex_is_space((unsigned char)*p)) {
            p++;
        } else if (*p == '-' && end - p > 1 && p[1] == '-') {
            p = skip_line_comment(p + 2, end);
        } else {
            break;
        }
    }
    return newline && p < end && *p == '\'' ? p + 1 : NULL;
}

/* p is just past the opening quote of a 'string' (esc: of an E'string').  Returns just
 * past its end, continuations included, or NULL when the text ends first.  xqdouble ''
 * stands for a quote; in E'' (xe) a backslash escapes the next byte, whatever it is (\',
 * \\, and every other escape start with one: what they mean is the decoder's business).
 * A continuation keeps the string's kind (xqs returns to the state before the quote). */
static const char *string_end(const char *p, const char *end, bool esc)
{
    for (;;) {
        if (esc) {
            while (p < end && *p != '\'')
                p += *p == '\\' && end - p > 1 ? 2 : 1;
        } else {
            p = memchr(p, '\'', (size_t)(end - p));
            if (!p)
                return NULL;
        }
        if (p >= end)
            return NULL;
        p++; /* the quote */
        if (p < end && *p == '\'') {
            p++; /* '' */
            continue;
        }
        const char *q = px_lex_quote_continue(p, end);
        if (!q)
            return p;
        p = q;
    }
}

/* p is just past an opening double quote.  Returns the closing one (xddouble "" stands
 * for one), or NULL. */
static const char *qident_end(const char *p, const char *end)
{
    for (;; p += 2) {
        p = memchr(p, '"', (size_t)(end - p));
        if (!p || end - p < 2 || p[1] != '"')
            return p;
    }
}

size_t px_lex_dollar_delim(const char *p, const char *end)
{
    const char *q = p + 1;
    if (q < end && px_lex_is_ident_start((unsigned char)*q)) {
        q++;
        while (q < end &&
               (px_lex_is_ident_start((unsigned char)*q) || px_lex_is_digit((unsigned char)*q)))
            q++;
    }
    return q < end && *q == '$' ? (size_t)(q - p) + 1 : 0;
}

/* p is just past the opening delimiter d[0..dn).  Returns just past the closing one, or
 * NULL.  The tag holds no '$', so each comparison stops by the next '$' of the body:
 * linear. */
static const char *dollar_end(const char *p, const char *end, const char *d, size_t dn)
{
    while ((size_t)(end - p) >= dn) {
        const char *hit = memchr(p, '$', (size_t)(end - p) - dn + 1);
        if (!hit)
            return NULL;
        if (!memcmp(hit, d, dn))
            return hit + dn;
        p = hit + 1;
    }
    return NULL;
}

/* A numeric constant at p (a digit, or '.' and a digit): integer, decimal
 * (({digit}*\.{digit}+)|({digit}+\.{digit}*)) or real (...[Ee][-+]?{digit}+).  Sets
 * t->kind (PX_LEX_BAD for realfail and {integer,decimal,real}_junk) and returns the end. */
static const char *lex_number(const char *p, const char *end, bool lenient, struct px_lex_token *t)
{
    const char *q = p;
    t->kind = PX_LEX_INT;
    while (q < end && px_lex_is_digit((unsigned char)*q))
        q++;
    if (q < end && *q == '.' && !(end - q > 1 && q[1] == '.')) { /* decimalfail: 1..2 */
        t->kind = PX_LEX_NUM;
        q++;
        while (q < end && px_lex_is_digit((unsigned char)*q))
            q++;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        const char *r = q + 1;
        if (r < end && (*r == '+' || *r == '-'))
            r++;
        if (r < end && px_lex_is_digit((unsigned char)*r)) {
            t->kind = PX_LEX_NUM;
            while (r < end && px_lex_is_digit((unsigned char)*r))
                r++;
            q = r;
        } else if (!lenient) {
            t->kind = PX_LEX_BAD; /* realfail, or integer_junk / decimal_junk */
        }
    }
    if (!lenient && q < end && px_lex_is_ident_start((unsigned char)*q))
        t->kind = PX_LEX_BAD; /* "trailing junk after numeric literal" (0x1F too) */
    return q;
}

/* One token at p (< end, not blank): sets t, returns the position after it. */
static const char *lex_token(const char *p, const char *end, bool lenient, struct px_lex_token *t)
{
    unsigned char c = (unsigned char)*p;
    const char *q;
    size_t dn;
    t->s = p;
    t->str = 0;
    t->kind = PX_LEX_CHAR;
    if (c == ';') {
        t->kind = PX_LEX_SEMI;
        q = p + 1;
    } else if ((c == 'e' || c == 'E') && end - p > 1 && p[1] == '\'') { /* xestart */
        q = string_end(p + 2, end, true);
        t->kind = PX_LEX_STRING;
        t->str = PX_LEX_STR_ESC;
    } else if (px_lex_is_ident_start(c)) {
        for (q = p + 1; q < end && px_lex_is_ident_cont((unsigned char)*q);)
            q++;
        t->kind = PX_LEX_WORD;
    } else if (c == '\'') {
        q = string_end(p + 1, end, false);
        t->kind = PX_LEX_STRING;
        t->str = PX_LEX_STR_STD;
    } else if (c == '"') {
        q = qident_end(p + 1, end);
        if (q) {
            t->kind = PX_LEX_QIDENT;
            t->s = p + 1;
            t->n = (size_t)(q - t->s);
            return q + 1;
        }
    } else if (px_lex_is_digit(c) ||
               (c == '.' && end - p > 1 && px_lex_is_digit((unsigned char)p[1]))) {
        q = lex_number(p, end, lenient, t);
    } else if (c == '$' && end - p > 1 && px_lex_is_digit((unsigned char)p[1])) {
        for (q = p + 1; q < end && px_lex_is_digit((unsigned char)*q);)
            q++;
        /* param \${integer}; param_junk \${integer}{ident_start} */
        t->kind = !lenient && q < end && px_lex_is_ident_start((unsigned char)*q) ? PX_LEX_BAD
                                                                                  : PX_LEX_PARAM;
    } else if (c == '$' && (dn = px_lex_dollar_delim(p, end)) > 0) {
        q = dollar_end(p + dn, end, p, dn);
        t->kind = PX_LEX_STRING;
        t->str = PX_LEX_STR_DOLLAR;
    } else if (c == ':' && end - p > 1 && p[1] == ':') {
        t->kind = PX_LEX_CAST;
        q = p + 2;
    } else {
        q = p + 1;
    }
    if (!q || t->kind == PX_LEX_BAD) { /* unterminated, or junk: the text is rejected */
        t->kind = PX_LEX_BAD;
        t->str = 0;
        q = end;
    }
    t->n = (size_t)(q - p);
    return q;
}

void px_lex_next(struct px_lex *lx, struct px_lex_token *t)
{
    const char *p = px_lex_skip_blank(lx->p, lx->end);
    if (!p) { /* unterminated block comment */
        t->kind = PX_LEX_BAD;
        t->str = 0;
        t->s = lx->p;
        t->n = (size_t)(lx->end - lx->p);
        lx->p = lx->end;
    } else if (p == lx->end) {
        t->kind = PX_LEX_END;
        t->str = 0;
        t->s = p;
        t->n = 0;
        lx->p = p;
    } else {
        lx->p = lex_token(p, lx->end, lx->numbers_lenient, t);
    }
}
