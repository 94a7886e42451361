/*
 * sqllex.h: PostgreSQL 15's lexical rules (src/backend/parser/scan.l), once, for the two
 * modules of the statement path that read SQL text: sqlscan.c (statement classification
 * for transaction pooling) and lockcall.c (calls of pgwarden's lock functions).
 *
 * What it owns.  The character classes and ASCII case folding; white space, -- line
 * comments and nested block comments; "quoted identifiers" ("" inside); string constants:
 * 'standard' ('' inside), E'escape' (a backslash escapes the next byte) and $tag$ dollar
 * quotes $tag$, a 'standard' or E'' string continued by a quote after white space holding
 * a newline ('a'<newline>'b' is 'ab'); numeric constants (integer, decimal, real) with
 * PostgreSQL 15's errors for trailing junk ("123abc", "1e", "1.x"; no 0x1F, which is
 * PostgreSQL 16's); $n parameters; ';'; '::'.  Every other byte is a token of its own:
 * neither user needs multi-character operators.  Strings are lexed as with
 * standard_conforming_strings = on (the default since PostgreSQL 9.1).
 *
 * Names: px_lex_lookup() finds a word (any case) or quoted identifier in a caller's list
 * of keywords or names, px_lex_ident() reads its value (folded, or "" undone).
 *
 * What it does not do.  It holds no keyword list and decodes no string (lockcall.c does,
 * for its arguments).  U&, B, X and N before a quote lex as a word, then a 'standard'
 * string of the extent PostgreSQL gives it (but for '' inside B'' and X'', which
 * PostgreSQL ends at the first quote, in texts it then rejects); a zero-length "" is a
 * QIDENT of length 0, which PostgreSQL rejects (the users refuse it where they read a
 * name).
 *
 * Guarantees.  No allocation, no state outside struct px_lex: safe from any thread.
 * Nothing at or past end is read.  Every token but PX_LEX_END is at least one byte long and
 * lexing a text is linear in its length.  Tests: tests/proxy/test_sqllex.c.
 */
#ifndef PGW_PROXY_PATH_SQLLEX_H
#define PGW_PROXY_PATH_SQLLEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum px_lex_kind {
    PX_LEX_END,    /* end of the text: s = end, n = 0 (again and again) */
    PX_LEX_SEMI,   /* ';' */
    PX_LEX_WORD,   /* identifier or keyword, as written */
    PX_LEX_QIDENT, /* "quoted identifier": s/n is the body between the quotes, "" not undone */
    PX_LEX_STRING, /* string constant, s/n the whole token (E, quotes, continuations, $tag$) */
    PX_LEX_INT,    /* digits */
    PX_LEX_NUM,    /* decimal or real constant: 1.5, .5, 1., 1e10, 1.5E-3 */
    PX_LEX_PARAM,  /* $n */
    PX_LEX_CAST,   /* '::' */
    PX_LEX_CHAR,   /* any other byte: punctuation, operator character, junk (n = 1) */
    PX_LEX_BAD,    /* what scan.l rejects: an unterminated comment, string or quoted
                      identifier, trailing junk after a number or parameter.  PostgreSQL
                      rejects the whole text: the token runs to the end (s at or before
                      the bad input). */
};

/* Which string constant a PX_LEX_STRING is. */
enum px_lex_str {
    PX_LEX_STR_STD,    /* 'standard' */
    PX_LEX_STR_ESC,    /* E'escape' */
    PX_LEX_STR_DOLLAR, /* $tag$dollar-quoted$tag$ */
};

struct px_lex_token {
    uint8_t kind; /* enum px_lex_kind */
    uint8_t str;  /* PX_LEX_STRING: enum px_lex_str; else 0 */
    const char *s;
    size_t n;
};

/* A position in a text: p the next byte to lex, end just past the text (borrowed). */
struct px_lex {
    const char *p, *end;
    /* Junk after a number or parameter (1abc, 0x1F, 1_000, $1abc) is no PX_LEX_BAD: the
     * number ends where the junk begins and lexing goes on.  PostgreSQL 15 rejects such
     * text, but 16 accepts 0x1F, 0o17, 0b1 and 1_000, and 14 reads 1abc as "1 AS abc": a
     * classifier that must not miss what comes after (sqlscan) sets this. */
    bool numbers_lenient;
};

/* PostgreSQL 15's space [ \t\n\r\f] (no \v before 16). */
static inline bool px_lex_is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

static inline bool px_lex_is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* ident_start [A-Za-z\200-\377_] */
static inline bool px_lex_is_ident_start(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}

/* ident_cont [A-Za-z\200-\377_0-9\$] */
static inline bool px_lex_is_ident_cont(unsigned char c)
{
    return px_lex_is_ident_start(c) || px_lex_is_digit(c) || c == '$';
}

/* ASCII lower case, as PostgreSQL folds unquoted identifiers (downcase_identifier, for
 * the ASCII letters; other bytes are kept). */
static inline char px_lex_fold(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* s[0..n) equals the NUL-terminated lower-case ASCII word w, ignoring ASCII case. */
bool px_lex_fold_eq(const char *s, size_t n, const char *w);

/* The index in names[0..n) (lower-case ASCII) of the name t spells, or -1: a word in any
 * ASCII case, as scan.l folds it, and when quoted_too a "quoted identifier" exactly (a
 * quoted keyword is a plain name, but a quoted function name still names the function). */
int px_lex_lookup(const struct px_lex_token *t, const char *const *names, size_t n,
                  bool quoted_too);

/* The value of the word or quoted identifier t as scan.l makes it: a word folded to ASCII
 * lower case, a quoted identifier with "" undone (truncating it to NAMEDATALEN is the
 * caller's business).  Writes its first min(length, size - 1) bytes and a NUL to out
 * (size >= 1) and returns its whole length. */
size_t px_lex_ident(const struct px_lex_token *t, char *out, size_t size);

/* The next token of lx (PX_LEX_END at the end, again and again); advances lx->p past it.
 * The token points into the text. */
void px_lex_next(struct px_lex *lx, struct px_lex_token *t);

/* Skips white space and comments from p.  Returns the start of the next token (end when
 * none), or NULL for an unterminated block comment. */
const char *px_lex_skip_blank(const char *p, const char *end);

/* p is just past a string's closing quote.  quotecontinue: white space and -- comments
 * holding a newline, then a quote.  Returns just past that quote, or NULL when the string
 * ends at p. */
const char *px_lex_quote_continue(const char *p, const char *end);

/* p is at '$'.  The length of a dollar-quote delimiter $[tag]$ starting there (dolqdelim:
 * \$({dolq_start}{dolq_cont}*)?\$, no '$' in the tag), or 0. */
size_t px_lex_dollar_delim(const char *p, const char *end);

#endif
