/*
 * test_sqllex.c: tests of proxy/path/sqllex.c, PostgreSQL 15's lexical rules.
 *
 * Each case is a text and the tokens expected, written as KIND:text (the token's s[0..n)):
 * W word, Q quoted identifier (its body), S/E/D standard, E'' and dollar-quoted string, I
 * integer, N decimal or real, P parameter, C '::', ; and c (any other byte), BAD (to the
 * end of the text).  Every text is lexed from a heap buffer of exactly its length (the
 * sanitizer build proves nothing past it is read), and so is every prefix of it and 100k
 * seeded random texts, checking that tokens are in order, inside the text, at least one
 * byte long and end with PX_LEX_END; large pathological inputs must be quick.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "path/sqllex.h"
#include "sqltext.h"

void test_sqllex_register(void);

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

struct lex_case {
    const char *sql;
    const char *tokens;
};

static const char *kind_name(const struct px_lex_token *t)
{
    static const char *const names[] = {"END", ";", "W", "Q", "S", "I", "N", "P", "C", "c", "BAD"};
    if (t->kind == PX_LEX_STRING)
        return t->str == PX_LEX_STR_ESC ? "E" : t->str == PX_LEX_STR_DOLLAR ? "D" : "S";
    return t->kind < NELEM(names) ? names[t->kind] : "?";
}

/* Appends s to out[*at..size), keeping it NUL-terminated. */
static void put(char *out, size_t size, size_t *at, const char *s, size_t n)
{
    if (*at + n >= size)
        n = *at + 1 < size ? size - *at - 1 : 0;
    memcpy(out + *at, s, n);
    *at += n;
    out[*at] = '\0';
}

/*
 * Lexes text[0..len) from an exact-size heap copy into out (tokens as KIND:text separated
 * by spaces, without the END) and checks the invariants every text must keep.
 */
static void lex_describe_as(const char *text, size_t len, bool lenient, char *out, size_t size)
{
    char *buf = malloc(len ? len : 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    memcpy(buf, text, len);
    struct px_lex lx = {.p = buf, .end = buf + len, .numbers_lenient = lenient};
    struct px_lex_token t;
    const char *prev_end = buf;
    size_t at = 0;
    out[0] = '\0';
    for (size_t i = 0;; i++) {
        CU_ASSERT_FATAL(i <= len); /* every token but the end takes at least one byte */
        px_lex_next(&lx, &t);
        CU_ASSERT_FATAL(t.s >= buf && t.s + t.n <= buf + len);
        CU_ASSERT(lx.p >= prev_end && lx.p <= buf + len);
        if (t.kind == PX_LEX_END) {
            CU_ASSERT(t.n == 0 && t.s == buf + len && lx.p == buf + len);
            break;
        }
        CU_ASSERT(t.s >= prev_end);
        CU_ASSERT(t.kind == PX_LEX_QIDENT || t.n >= 1);
        CU_ASSERT(t.kind != PX_LEX_CHAR || t.n == 1);
        if (t.kind == PX_LEX_BAD)
            CU_ASSERT(t.s + t.n == buf + len && lx.p == buf + len);
        if (at)
            put(out, size, &at, " ", 1);
        const char *k = kind_name(&t);
        put(out, size, &at, k, strlen(k));
        put(out, size, &at, ":", 1);
        put(out, size, &at, t.s, t.n);
        prev_end = lx.p;
    }
    px_lex_next(&lx, &t); /* the end, again */
    CU_ASSERT(t.kind == PX_LEX_END);
    free(buf);
}

static void lex_describe(const char *text, size_t len, char *out, size_t size)
{
    lex_describe_as(text, len, false, out, size);
}

static void check_cases(const struct lex_case *cases, size_t n)
{
    char got[512];
    for (size_t i = 0; i < n; i++) {
        lex_describe(cases[i].sql, strlen(cases[i].sql), got, sizeof(got));
        if (strcmp(got, cases[i].tokens))
            fprintf(stderr, "\n    [%s]: got [%s], want [%s]", cases[i].sql, got, cases[i].tokens);
        CU_ASSERT_STRING_EQUAL(got, cases[i].tokens);
    }
}

/* ---- blanks and comments --------------------------------------------------------------- */

static const struct lex_case comment_cases[] = {
    {" \t\n\r\fa", "W:a"},
    {"a\vb", "W:a c:\v W:b"}, /* \v is white space only from PostgreSQL 16 */
    {"a /* x */ b", "W:a W:b"},
    {"a /* x /* y */ z */ b", "W:a W:b"}, /* nested */
    {"/*/**/*/x", "W:x"},
    {"/*/ */x", "W:x"},
    {"a/**/b", "W:a W:b"},
    {"a */ b", "W:a c:* c:/ W:b"},
    {"a -- c ; d\nb", "W:a W:b"},
    {"a --\r;", "W:a ;:;"},
    {"a--", "W:a"},
    {"1+--2\n3", "I:1 c:+ I:3"},
    {"a/", "W:a c:/"},
    {"-", "c:-"},
    /* Unterminated: PostgreSQL rejects the text; the token runs from the blanks to the end. */
    {"a /* x", "W:a BAD: /* x"},
    {"a /* x /* y */ b", "W:a BAD: /* x /* y */ b"},
    {"a /* x */ /* y", "W:a BAD: /* x */ /* y"},
    {"/*", "BAD:/*"},
};

static void test_comments(void)
{
    check_cases(comment_cases, NELEM(comment_cases));
}

/* ---- strings and quoted identifiers ---------------------------------------------------- */

static const struct lex_case string_cases[] = {
    {"'a;b'", "S:'a;b'"},
    {"'it''s' x", "S:'it''s' W:x"},
    {"''", "S:''"},
    {"'a\\' x", "S:'a\\' W:x"}, /* standard_conforming_strings: a backslash is a byte */
    /* Continuation: white space holding a newline (and -- comments), then a quote. */
    {"'a'\n'b' x", "S:'a'\n'b' W:x"},
    {"'a' \t-- c\n  'b'", "S:'a' \t-- c\n  'b'"},
    {"'a'\n-- c\n'b'", "S:'a'\n-- c\n'b'"},
    {"'a'\r'b'\n'c'", "S:'a'\r'b'\n'c'"},
    {"'a' 'b'", "S:'a' S:'b'"},      /* no newline: two strings (a syntax error) */
    {"'a'/*\n*/'b'", "S:'a' S:'b'"}, /* a block comment does not continue a string */
    {"'a'\n", "S:'a'"},              /* the blanks after the string are not in it */
    {"'a'\nb", "S:'a' W:b"},
    {"'a' --c\n", "S:'a'"},
    /* E'': a backslash escapes the next byte, \' included; '' still doubles. */
    {"E'\\'' x", "E:E'\\'' W:x"},
    {"e'a\\\\' x", "E:e'a\\\\' W:x"},
    {"E'a''b'", "E:E'a''b'"},
    {"E'\\x41\\n\\u00e9'", "E:E'\\x41\\n\\u00e9'"},
    {"E'a'\n'\\'; x'", "E:E'a'\n'\\'; x'"}, /* the continuation is in E'' too */
    {"'a'\n'\\'; x'", "S:'a'\n'\\' ;:; W:x BAD:'"},
    {"fooe'x\\' y", "W:fooe S:'x\\' W:y"}, /* fooe is a word: a standard string follows */
    {"N'a' B'01' X'ff' U&'d'", "W:N S:'a' W:B S:'01' W:X S:'ff' W:U c:& S:'d'"},
    /* Quoted identifiers: the body, "" not undone. */
    {"\"a;b\"", "Q:a;b"},
    {"\"a\"\"b\" c", "Q:a\"\"b W:c"},
    {"\"\"", "Q:"}, /* zero-length: PostgreSQL rejects it, the users refuse it */
    {"\"\"\"\"", "Q:\"\""},
    {"\"a\\\"", "Q:a\\"},
    /* Unterminated: to the end. */
    {"'abc", "BAD:'abc"},
    {"x 'a'' y", "W:x BAD:'a'' y"},
    {"E'\\", "BAD:E'\\"},
    {"E'\\'", "BAD:E'\\'"},
    {"E'a'\n'b", "BAD:E'a'\n'b"},
    {"\"abc", "BAD:\"abc"},
    {"\"a\"\"", "BAD:\"a\"\""},
};

static void test_strings(void)
{
    check_cases(string_cases, NELEM(string_cases));
}

static const struct lex_case dollar_cases[] = {
    {"$$a$$", "D:$$a$$"},
    {"$$$$ x", "D:$$$$ W:x"},
    {"$tag$ a;'b $tag$ c", "D:$tag$ a;'b $tag$ W:c"},
    {"$a$ $A$ $a$", "D:$a$ $A$ $a$"}, /* tags are case-sensitive */
    {"$a$ $b$ $a$", "D:$a$ $b$ $a$"},
    {"$a$ $a ; a$ $a$", "D:$a$ $a ; a$ $a$"},
    {"$abc$ $ab$ $abc ; $abc$", "D:$abc$ $ab$ $abc ; $abc$"},
    {"$_1$x$_1$", "D:$_1$x$_1$"},
    {"$a$x$$a$", "D:$a$x$$a$"},
    {"$\xc3\xa9$x$\xc3\xa9$", "D:$\xc3\xa9$x$\xc3\xa9$"},
    {"$1$ x", "P:$1 c:$ W:x"}, /* $1 is a parameter: digits cannot start a tag */
    {"a$b$c", "W:a$b$c"},      /* '$' continues an identifier */
    {"1$$;$$", "I:1 D:$$;$$"},
    {"$", "c:$"},
    {"$a", "c:$ W:a"},
    {"$a b$", "c:$ W:a W:b$"},
    {"$a$ x", "BAD:$a$ x"},
    {"$ab$ $ab", "BAD:$ab$ $ab"},
    {"$$", "BAD:$$"},
};

static void test_dollar_quotes(void)
{
    check_cases(dollar_cases, NELEM(dollar_cases));
}

/* ---- numbers, parameters, casts -------------------------------------------------------- */

static const struct lex_case number_cases[] = {
    {"1", "I:1"},
    {"12345678901234567890", "I:12345678901234567890"},
    {"1.5", "N:1.5"},
    {".5", "N:.5"},
    {"1.", "N:1."},
    {"1e10", "N:1e10"},
    {"1E+10 1e-3", "N:1E+10 N:1e-3"},
    {"1.5e-3", "N:1.5e-3"},
    {"1.e5", "N:1.e5"},
    {".5E2", "N:.5E2"},
    {"1..2", "I:1 c:. N:.2"}, /* decimalfail: 1, then .. */
    {"1.5.3", "N:1.5 N:.3"},
    {"1e5.5", "N:1e5 N:.5"},
    {"1-2", "I:1 c:- I:2"},
    {"1$", "I:1 c:$"},
    {"1;2", "I:1 ;:; I:2"},
    {"(1)", "c:( I:1 c:)"},
    /* Trailing junk: PostgreSQL 15 rejects the text (15 started to, 16 added 0x1F, 0o17,
     * 0b1 and 1_000). */
    {"1abc", "BAD:1abc"},
    {"1e", "BAD:1e"},
    {"1e+", "BAD:1e+"},
    {"1.5E-", "BAD:1.5E-"},
    {"1.x", "BAD:1.x"},
    {".5e", "BAD:.5e"},
    {"1e5x", "BAD:1e5x"},
    {"0x1F", "BAD:0x1F"},
    {"0o17", "BAD:0o17"},
    {"0b1", "BAD:0b1"},
    {"1_000", "BAD:1_000"},
    {"1\xc3\xa9", "BAD:1\xc3\xa9"},
    /* Parameters and casts. */
    {"$1", "P:$1"},
    {"$12 $3", "P:$12 P:$3"},
    {"$1::int", "P:$1 C::: W:int"},
    {"'1'::text::int", "S:'1' C::: W:text C::: W:int"},
    {":::", "C::: c::"},
    {"a:b", "W:a c:: W:b"},
    {"$1.x", "P:$1 c:. W:x"},
    {"$1abc", "BAD:$1abc"},
    {"$1_", "BAD:$1_"},
    {"SELECT 1abc; LISTEN x", "W:SELECT BAD:1abc; LISTEN x"},
};

static void test_numbers(void)
{
    check_cases(number_cases, NELEM(number_cases));
}

/* numbers_lenient (sqlscan): junk after a number or parameter ends the number, and
 * lexing goes on (PostgreSQL 16's 0x1F and 1_000, 14's "1abc"). */
static void test_numbers_lenient(void)
{
    static const struct lex_case cases[] = {
        {"0x1F; LISTEN x", "I:0 W:x1F ;:; W:LISTEN W:x"},
        {"1_000, pg_advisory_lock(1)", "I:1 W:_000 c:, W:pg_advisory_lock c:( I:1 c:)"},
        {"$1abc 1e 1.5e+ 0o17", "P:$1 W:abc I:1 W:e N:1.5 W:e c:+ I:0 W:o17"},
        {"1.5 .5 1e10 $2", "N:1.5 N:.5 N:1e10 P:$2"}, /* the valid ones as strictly */
        {"'open", "BAD:'open"},                       /* what no version accepts stays bad */
    };
    char got[512];
    for (size_t i = 0; i < NELEM(cases); i++) {
        lex_describe_as(cases[i].sql, strlen(cases[i].sql), true, got, sizeof(got));
        if (strcmp(got, cases[i].tokens))
            fprintf(stderr, "\n    [%s]: got [%s], want [%s]", cases[i].sql, got, cases[i].tokens);
        CU_ASSERT_STRING_EQUAL(got, cases[i].tokens);
    }
}

static const struct lex_case other_cases[] = {
    {"", ""},
    {"   ", ""},
    {"-- only a comment", ""},
    {"SELECT a_1, \xc3\xa9t\xc3\xa9 FROM t;",
     "W:SELECT W:a_1 c:, W:\xc3\xa9t\xc3\xa9 W:FROM W:t ;:;"},
    {"_x9$ \xff", "W:_x9$ W:\xff"},
    {"a<=b", "W:a c:< c:= W:b"},
    {"a\0b", "W:a"}, /* strlen: a NUL ends these C strings, see test_nul */
};

static void test_other(void)
{
    check_cases(other_cases, NELEM(other_cases));
}

/* A NUL byte is just a byte: one CHAR token. */
static void test_nul(void)
{
    char got[64];
    lex_describe("a\0b", 3, got, sizeof(got));
    static const char want1[] = "W:a c:\0 W:b", want2[] = "S:'\0'";
    CU_ASSERT_EQUAL(memcmp(got, want1, sizeof(want1)), 0);
    lex_describe("'\0'", 3, got, sizeof(got));
    CU_ASSERT_EQUAL(memcmp(got, want2, sizeof(want2)), 0);
}

/* ---- the helpers lockcall.c uses ------------------------------------------------------- */

static void test_helpers(void)
{
    CU_ASSERT_TRUE(px_lex_fold_eq("SeLeCt", 6, "select"));
    CU_ASSERT_FALSE(px_lex_fold_eq("select", 5, "select"));
    CU_ASSERT_FALSE(px_lex_fold_eq("selectx", 7, "select"));
    CU_ASSERT_FALSE(px_lex_fold_eq("selecT", 6, "selecx"));
    CU_ASSERT_TRUE(px_lex_fold_eq("", 0, ""));
    CU_ASSERT_FALSE(px_lex_fold_eq("a\0", 2, "a"));
    CU_ASSERT_FALSE(px_lex_fold_eq("\xc3\x89", 2, "\xc3\xa9")); /* ASCII only */
    CU_ASSERT_EQUAL(px_lex_fold('Q'), 'q');
    CU_ASSERT_EQUAL(px_lex_fold('['), '[');

    const char *s = "  -- c\n /* a /* b */ */ x";
    CU_ASSERT_PTR_EQUAL(px_lex_skip_blank(s, s + strlen(s)), s + strlen(s) - 1);
    s = " /* a /* b */ x";
    CU_ASSERT_PTR_NULL(px_lex_skip_blank(s, s + strlen(s)));
    s = " ";
    CU_ASSERT_PTR_EQUAL(px_lex_skip_blank(s, s + 1), s + 1);

    s = " -- c\n 'x";
    CU_ASSERT_PTR_EQUAL(px_lex_quote_continue(s, s + strlen(s)), s + strlen(s) - 1);
    s = "  'x";
    CU_ASSERT_PTR_NULL(px_lex_quote_continue(s, s + strlen(s)));
    s = "\n/**/'x";
    CU_ASSERT_PTR_NULL(px_lex_quote_continue(s, s + strlen(s)));
    s = "\n";
    CU_ASSERT_PTR_NULL(px_lex_quote_continue(s, s + 1));

    s = "$tag$x";
    CU_ASSERT_EQUAL(px_lex_dollar_delim(s, s + strlen(s)), 5);
    CU_ASSERT_EQUAL(px_lex_dollar_delim(s, s + 4), 0); /* the closing '$' is past the end */
    CU_ASSERT_EQUAL(px_lex_dollar_delim("$$", (const char *)"$$" + 2), 2);
    CU_ASSERT_EQUAL(px_lex_dollar_delim("$1$", (const char *)"$1$" + 3), 0);
    CU_ASSERT_EQUAL(px_lex_dollar_delim("$a$b$", (const char *)"$a$b$" + 5), 3);
}

/* First token of text (a string literal). */
static struct px_lex_token first_token(const char *text)
{
    struct px_lex lx = {.p = text, .end = text + strlen(text)};
    struct px_lex_token t;
    px_lex_next(&lx, &t);
    return t;
}

static void test_names(void)
{
    static const char *const names[] = {"select", "pg_temp", "a\"b"};
    struct px_lex_token t = first_token("PG_Temp");
    CU_ASSERT_EQUAL(px_lex_lookup(&t, names, NELEM(names), false), 1);
    t = first_token("\"pg_temp\"");
    CU_ASSERT_EQUAL(px_lex_lookup(&t, names, NELEM(names), false), -1); /* a keyword? no */
    CU_ASSERT_EQUAL(px_lex_lookup(&t, names, NELEM(names), true), 1);
    t = first_token("\"PG_temp\"");
    CU_ASSERT_EQUAL(px_lex_lookup(&t, names, NELEM(names), true), -1); /* quoted: exact */
    t = first_token("selec");
    CU_ASSERT_EQUAL(px_lex_lookup(&t, names, NELEM(names), true), -1);
    t = first_token("'select'");
    CU_ASSERT_EQUAL(px_lex_lookup(&t, names, NELEM(names), true), -1);

    char out[8];
    t = first_token("AbC_\xc3\x89");
    CU_ASSERT_EQUAL(px_lex_ident(&t, out, sizeof(out)), 6);
    CU_ASSERT_STRING_EQUAL(out, "abc_\xc3\x89"); /* ASCII folding only */
    t = first_token("\"A\"\"b\"");
    CU_ASSERT_EQUAL(px_lex_ident(&t, out, sizeof(out)), 3);
    CU_ASSERT_STRING_EQUAL(out, "A\"b");
    t = first_token("abcdefghij");
    CU_ASSERT_EQUAL(px_lex_ident(&t, out, sizeof(out)), 10); /* the whole length */
    CU_ASSERT_STRING_EQUAL(out, "abcdefg");                  /* cut to size - 1 */
    CU_ASSERT_EQUAL(px_lex_ident(&t, out, 1), 10);
    CU_ASSERT_STRING_EQUAL(out, "");
}

/* ---- robustness ------------------------------------------------------------------------ */

static size_t prefixes_of(const struct lex_case *cases, size_t n)
{
    char got[512];
    size_t checked = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k <= strlen(cases[i].sql); k++, checked++)
            lex_describe(cases[i].sql, k, got, sizeof(got));
    return checked;
}

static void test_every_prefix(void)
{
    size_t checked = prefixes_of(comment_cases, NELEM(comment_cases));
    checked += prefixes_of(string_cases, NELEM(string_cases));
    checked += prefixes_of(dollar_cases, NELEM(dollar_cases));
    checked += prefixes_of(number_cases, NELEM(number_cases));
    checked += prefixes_of(other_cases, NELEM(other_cases));
    printf("(%zu texts) ", checked);
    CU_ASSERT(checked > 800);
}

/* Pieces that switch the lexer's states, for random texts that go somewhere. */
/* clang-format off */
static const char *const fragments[] = {
    "SELECT", "x", "e", "E", "'", "''", "E'", "\\", "\\'", "\"", "\"\"", "$", "$$", "$a$", "$1",
    "1", ".", "5", "e5", "+", "-", "--", "/*", "*/", "*", "/", ";", ":", "::", " ", "\n", "\r",
    "\xc3\xa9", "\xff",
};
/* clang-format on */

static void test_random_texts(void)
{
    uint64_t seed = 0x2545F4914F6CDD1Dull;
    char text[256], got[1024];
    for (int r = 0; r < 100000; r++) {
        size_t len = sqltext_random(&seed, r, fragments, NELEM(fragments), text, sizeof(text));
        lex_describe(text, len, got, sizeof(got));
    }
}

/* Lexes prefix + n x piece + suffix (heap, exact size); returns the number of tokens and
 * the kind of the first one. */
static size_t lex_large(const char *prefix, const char *piece, size_t n, const char *suffix,
                        uint8_t *first)
{
    size_t len;
    char *buf = sqltext_repeat(prefix, piece, n, suffix, &len);
    struct px_lex lx = {.p = buf, .end = buf + len};
    struct px_lex_token t;
    size_t count = 0;
    for (px_lex_next(&lx, &t), *first = t.kind; t.kind != PX_LEX_END; px_lex_next(&lx, &t))
        count++;
    free(buf);
    return count;
}

/* Inputs that are slow for a quadratic scanner (about 1 MB each): all must be quick. */
static void test_large_inputs(void)
{
    clock_t start = clock();
    uint8_t first;
    CU_ASSERT_EQUAL(lex_large("", "/*", 250000, "", &first), 1);
    CU_ASSERT_EQUAL(first, PX_LEX_BAD);
    CU_ASSERT_EQUAL(lex_large("/*", "/**/", 250000, "*/ x", &first), 1);
    CU_ASSERT_EQUAL(first, PX_LEX_WORD);
    CU_ASSERT_EQUAL(lex_large("'", "a'\n'", 250000, "'", &first), 1); /* continuations */
    CU_ASSERT_EQUAL(first, PX_LEX_STRING);
    /* a failed continuation is looked at twice: still linear */
    CU_ASSERT_EQUAL(lex_large("", "; 'a'\n \n -- c\n ", 80000, "", &first), 160000);
    CU_ASSERT_EQUAL(lex_large("E'", "\\'", 400000, "'", &first), 1);
    CU_ASSERT_EQUAL(lex_large("'", "''", 400000, "'", &first), 1);
    CU_ASSERT_EQUAL(lex_large("\"", "\"\"", 400000, "\"", &first), 1);
    CU_ASSERT_EQUAL(first, PX_LEX_QIDENT);
    CU_ASSERT_EQUAL(lex_large("$abc$", "$ab", 300000, "$abc$", &first), 1);
    CU_ASSERT_EQUAL(lex_large("$abc$", "$", 1000000, "$abc$", &first), 1);
    CU_ASSERT_EQUAL(lex_large("", "1", 1000000, "x", &first), 1);
    CU_ASSERT_EQUAL(first, PX_LEX_BAD);
    CU_ASSERT_EQUAL(lex_large("", "$1 ", 300000, "", &first), 300000);
    CU_ASSERT_EQUAL(lex_large("", "--", 500000, "", &first), 0);
    double secs = (double)(clock() - start) / CLOCKS_PER_SEC;
    CU_ASSERT(secs < 5.0); /* linear: tens of ms; quadratic: hours */
}

void test_sqllex_register(void)
{
    static CU_TestInfo tests[] = {
        {"comments", test_comments},
        {"strings", test_strings},
        {"dollar_quotes", test_dollar_quotes},
        {"numbers", test_numbers},
        {"numbers_lenient", test_numbers_lenient},
        {"other", test_other},
        {"nul", test_nul},
        {"helpers", test_helpers},
        {"names", test_names},
        {"every_prefix", test_every_prefix},
        {"random_texts", test_random_texts},
        {"large_inputs", test_large_inputs},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("sqllex", NULL, NULL, tests);
}
