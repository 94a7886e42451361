/* test_prepared.c: tests of proxy/prepared.c: interning, client maps, server LRU sets and
 * the Parse/Bind/Describe/Close splitters and writers. */
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <event2/buffer.h>

#include "cunit_main.h"
#include "path/prepared.h"
#include "proto/wire.h"

void test_prepared_register(void);

/* ---- helpers ------------------------------------------------------------------------- */

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* Parse content: query\0, int16 n, n x int32 oids.  Returns its length. */
static uint32_t make_content(uint8_t *buf, const char *query, int n, const uint32_t *oids)
{
    size_t q = strlen(query) + 1;
    memcpy(buf, query, q);
    put_u16(buf + q, (uint16_t)n);
    for (int i = 0; i < n; i++)
        px_put_u32(buf + q + 2 + 4 * i, oids[i]);
    return (uint32_t)(q + 2 + 4 * (size_t)n);
}

/* Parse body: name\0 then content. */
static uint32_t make_parse(uint8_t *buf, const char *name, const char *query, int n,
                           const uint32_t *oids)
{
    size_t l = strlen(name) + 1;
    memcpy(buf, name, l);
    return (uint32_t)l + make_content(buf + l, query, n, oids);
}

/* Interns the parameterless statement "SELECT <i>" (a reference the caller owns). */
static struct px_stmt *intern_select(struct px_stmt_registry *reg, int i)
{
    uint8_t buf[64];
    char q[32];
    snprintf(q, sizeof(q), "SELECT %d", i);
    return px_stmt_intern(reg, buf, make_content(buf, q, 0, NULL));
}

/* Copies the evbuffer's single message out: checks type and length word, returns the body
 * in buf (caller's, large enough) and its length. */
static uint32_t take_msg(struct evbuffer *out, char type, uint8_t *buf, size_t cap)
{
    size_t total = evbuffer_get_length(out);
    CU_ASSERT_FATAL(total >= 5 && total - 5 <= cap);
    uint8_t hdr[5];
    CU_ASSERT_FATAL(evbuffer_remove(out, hdr, 5) == 5);
    CU_ASSERT_EQUAL(hdr[0], (uint8_t)type);
    CU_ASSERT_EQUAL(px_get_u32(hdr + 1), (uint32_t)(total - 1));
    uint32_t len = (uint32_t)(total - 5);
    CU_ASSERT_FATAL(evbuffer_remove(out, buf, len) == (int)len);
    return len;
}

/* Every strict prefix of a valid body must be rejected; each one sits in a buffer of
 * exactly its size so that ASan sees any read past the end. */
enum split_kind { SPLIT_PARSE, SPLIT_BIND, SPLIT_TARGET };

static int run_split(enum split_kind k, const uint8_t *b, uint32_t len)
{
    const char *s1, *s2;
    const uint8_t *p;
    uint32_t n;
    char kind;
    switch (k) {
    case SPLIT_PARSE: return px_parse_split(b, len, &s1, &p, &n);
    case SPLIT_BIND: return px_bind_split(b, len, &s1, &s2, &p, &n);
    case SPLIT_TARGET: return px_target_split(b, len, &kind, &s1);
    }
    return 0;
}

static void check_truncations(enum split_kind k, const uint8_t *body, uint32_t len)
{
    uint32_t accepted = 0;
    for (uint32_t l = 0; l < len; l++) {
        uint8_t *copy = malloc(l ? l : 1);
        CU_ASSERT_FATAL(copy != NULL);
        memcpy(copy, body, l);
        if (run_split(k, l ? copy : NULL, l) != -1)
            accepted++;
        free(copy);
    }
    CU_ASSERT_EQUAL(accepted, 0);
    /* ... and the full body is accepted, from an exact-size buffer too. */
    uint8_t *copy = malloc(len);
    CU_ASSERT_FATAL(copy != NULL);
    memcpy(copy, body, len);
    CU_ASSERT_EQUAL(run_split(k, copy, len), 0);
    free(copy);
}

/* ---- registry ------------------------------------------------------------------------ */

static void test_intern_same_content(void)
{
    struct px_stmt_registry *reg = px_stmt_registry_new();
    CU_ASSERT_FATAL(reg != NULL);
    uint8_t a[64], b[64];
    uint32_t oid = 23;
    uint32_t la = make_content(a, "SELECT $1", 1, &oid);
    uint32_t lb = make_content(b, "SELECT $1", 1, &oid); /* same bytes, another buffer */
    CU_ASSERT_EQUAL(la, 16);
    struct px_stmt *s1 = px_stmt_intern(reg, a, la);
    struct px_stmt *s2 = px_stmt_intern(reg, b, lb);
    CU_ASSERT_FATAL(s1 != NULL);
    CU_ASSERT_PTR_EQUAL(s1, s2);
    CU_ASSERT_STRING_EQUAL(px_stmt_server_name(s1), "_pgw_1");
    CU_ASSERT_EQUAL(px_stmt_id(s1), 1);
    CU_ASSERT_EQUAL(px_stmt_refcount(s1), 2);
    CU_ASSERT_EQUAL(px_stmt_registry_count(reg), 1);
    CU_ASSERT_EQUAL(px_stmt_registry_bytes(reg), 16);
    uint32_t clen = 0;
    const uint8_t *c = px_stmt_content(s1, &clen);
    CU_ASSERT_EQUAL(clen, 16);
    CU_ASSERT_EQUAL(memcmp(c, a, 16), 0);
    CU_ASSERT_PTR_NOT_EQUAL(c, a); /* copied */
    px_stmt_unref(s1);
    CU_ASSERT_EQUAL(px_stmt_refcount(s2), 1);
    CU_ASSERT_EQUAL(px_stmt_registry_count(reg), 1);
    px_stmt_unref(s2);
    CU_ASSERT_EQUAL(px_stmt_registry_count(reg), 0);
    CU_ASSERT_EQUAL(px_stmt_registry_bytes(reg), 0);
    px_stmt_unref(NULL); /* no-op */
    px_stmt_registry_free(reg);
    px_stmt_registry_free(NULL);
}

static void test_intern_distinct(void)
{
    struct px_stmt_registry *reg = px_stmt_registry_new();
    CU_ASSERT_FATAL(reg != NULL);
    uint8_t buf[5][64];
    uint32_t len[5];
    uint32_t int4 = 23, text = 25, two[2] = {23, 23};
    len[0] = make_content(buf[0], "SELECT $1", 1, &int4);
    len[1] = make_content(buf[1], "SELECT $1", 1, &text); /* other type */
    len[2] = make_content(buf[2], "SELECT $1", 0, NULL);  /* types left to the server */
    len[3] = make_content(buf[3], "SELECT $2", 1, &int4); /* other text */
    len[4] = make_content(buf[4], "SELECT $1", 2, two);   /* extra parameter */
    struct px_stmt *s[5];
    for (int i = 0; i < 5; i++) {
        s[i] = px_stmt_intern(reg, buf[i], len[i]);
        CU_ASSERT_FATAL(s[i] != NULL);
    }
    static const char *const names[] = {"_pgw_1", "_pgw_2", "_pgw_3", "_pgw_4", "_pgw_5"};
    for (int i = 0; i < 5; i++) {
        CU_ASSERT_STRING_EQUAL(px_stmt_server_name(s[i]), names[i]);
        CU_ASSERT_EQUAL(px_stmt_refcount(s[i]), 1);
        for (int j = 0; j < i; j++)
            CU_ASSERT_PTR_NOT_EQUAL(s[i], s[j]);
    }
    CU_ASSERT_EQUAL(px_stmt_registry_count(reg), 5);
    CU_ASSERT_EQUAL(px_stmt_registry_bytes(reg), len[0] + len[1] + len[2] + len[3] + len[4]);
    /* Interning again finds each one. */
    for (int i = 0; i < 5; i++) {
        struct px_stmt *again = px_stmt_intern(reg, buf[i], len[i]);
        CU_ASSERT_PTR_EQUAL(again, s[i]);
        px_stmt_unref(again);
    }
    for (int i = 0; i < 5; i++)
        px_stmt_unref(s[i]);
    CU_ASSERT_EQUAL(px_stmt_registry_count(reg), 0);
    px_stmt_registry_free(reg);
}

static void test_intern_refcount_frees(void)
{
    struct px_stmt_registry *reg = px_stmt_registry_new();
    CU_ASSERT_FATAL(reg != NULL);
    uint8_t a[64];
    uint32_t la = make_content(a, "SELECT now()", 0, NULL);
    struct px_stmt *s = px_stmt_intern(reg, a, la);
    CU_ASSERT_FATAL(s != NULL);
    CU_ASSERT_PTR_EQUAL(px_stmt_ref(s), s);
    CU_ASSERT_EQUAL(px_stmt_refcount(s), 2);
    px_stmt_unref(s);
    CU_ASSERT_EQUAL(px_stmt_registry_count(reg), 1);
    px_stmt_unref(s);
    CU_ASSERT_EQUAL(px_stmt_registry_count(reg), 0);
    /* Same content after the last reference went: a new statement, ids never reused. */
    s = px_stmt_intern(reg, a, la);
    CU_ASSERT_FATAL(s != NULL);
    CU_ASSERT_EQUAL(px_stmt_id(s), 2);
    CU_ASSERT_STRING_EQUAL(px_stmt_server_name(s), "_pgw_2");
    /* Freeing the registry first leaves the statement usable until its last unref. */
    px_stmt_registry_free(reg);
    CU_ASSERT_STRING_EQUAL(px_stmt_server_name(s), "_pgw_2");
    uint32_t clen;
    CU_ASSERT_EQUAL(memcmp(px_stmt_content(s, &clen), a, la), 0);
    CU_ASSERT_EQUAL(clen, la);
    px_stmt_unref(s);
    CU_ASSERT_PTR_NULL(px_stmt_intern(NULL, a, la));
}

static void test_intern_many_grows(void)
{
    struct px_stmt_registry *reg = px_stmt_registry_new();
    CU_ASSERT_FATAL(reg != NULL);
    enum { N = 3000 };
    struct px_stmt **s = calloc(N, sizeof(*s));
    CU_ASSERT_FATAL(s != NULL);
    for (int i = 0; i < N; i++) {
        s[i] = intern_select(reg, i);
        CU_ASSERT_FATAL(s[i] != NULL);
    }
    CU_ASSERT_EQUAL(px_stmt_registry_count(reg), N);
    int found = 0;
    for (int i = 0; i < N; i++) {
        struct px_stmt *again = intern_select(reg, i);
        found += again == s[i];
        px_stmt_unref(again);
    }
    CU_ASSERT_EQUAL(found, N);
    for (int i = 0; i < N; i++)
        px_stmt_unref(s[i]);
    CU_ASSERT_EQUAL(px_stmt_registry_count(reg), 0);
    free(s);
    px_stmt_registry_free(reg);
}

/* ---- client map ---------------------------------------------------------------------- */

struct fixture {
    struct px_stmt_registry *reg;
    struct px_stmt *s[8];
};

static void fixture_init(struct fixture *f, int n)
{
    f->reg = px_stmt_registry_new();
    CU_ASSERT_FATAL(f->reg != NULL);
    for (int i = 0; i < n; i++) {
        uint8_t buf[64];
        char q[32];
        snprintf(q, sizeof(q), "SELECT %c", 'A' + i);
        f->s[i] = px_stmt_intern(f->reg, buf, make_content(buf, q, 0, NULL));
        CU_ASSERT_FATAL(f->s[i] != NULL);
    }
}

static void fixture_free(struct fixture *f, int n)
{
    for (int i = 0; i < n; i++)
        px_stmt_unref(f->s[i]);
    CU_ASSERT_EQUAL(px_stmt_registry_count(f->reg), 0);
    px_stmt_registry_free(f->reg);
}

static void test_map_put_replace_remove(void)
{
    struct fixture f;
    fixture_init(&f, 2);
    struct px_stmt *A = f.s[0], *B = f.s[1];
    struct px_stmt_map m = {0}, other = {0};
    CU_ASSERT_EQUAL(px_stmt_map_count(&m), 0);
    CU_ASSERT_PTR_NULL(px_stmt_map_get(&m, "a"));
    CU_ASSERT_FALSE(px_stmt_map_remove(&m, "a"));

    CU_ASSERT_EQUAL(px_stmt_map_put(&m, "a", A), 0);
    CU_ASSERT_EQUAL(px_stmt_refcount(A), 2);
    CU_ASSERT_EQUAL(px_stmt_map_put(&m, "b", A), 0);
    CU_ASSERT_EQUAL(px_stmt_refcount(A), 3);
    CU_ASSERT_EQUAL(px_stmt_map_count(&m), 2);
    CU_ASSERT_PTR_EQUAL(px_stmt_map_get(&m, "a"), A);
    CU_ASSERT_PTR_EQUAL(px_stmt_map_get(&m, "b"), A);
    CU_ASSERT_PTR_NULL(px_stmt_map_get(&m, "c"));

    /* Another client may use the same name for another statement. */
    CU_ASSERT_EQUAL(px_stmt_map_put(&other, "a", B), 0);
    CU_ASSERT_PTR_EQUAL(px_stmt_map_get(&other, "a"), B);
    CU_ASSERT_PTR_EQUAL(px_stmt_map_get(&m, "a"), A);

    /* Replace: the old statement loses the map's reference. */
    CU_ASSERT_EQUAL(px_stmt_map_put(&m, "a", B), 0);
    CU_ASSERT_EQUAL(px_stmt_map_count(&m), 2);
    CU_ASSERT_PTR_EQUAL(px_stmt_map_get(&m, "a"), B);
    CU_ASSERT_EQUAL(px_stmt_refcount(A), 2);
    CU_ASSERT_EQUAL(px_stmt_refcount(B), 3);
    /* Replacing with the same statement changes nothing. */
    CU_ASSERT_EQUAL(px_stmt_map_put(&m, "a", B), 0);
    CU_ASSERT_EQUAL(px_stmt_refcount(B), 3);

    CU_ASSERT_TRUE(px_stmt_map_remove(&m, "a"));
    CU_ASSERT_FALSE(px_stmt_map_remove(&m, "a"));
    CU_ASSERT_EQUAL(px_stmt_refcount(B), 2);
    CU_ASSERT_EQUAL(px_stmt_map_count(&m), 1);
    CU_ASSERT_TRUE(px_stmt_map_remove(&m, "b"));
    CU_ASSERT_EQUAL(px_stmt_refcount(A), 1);
    CU_ASSERT_EQUAL(px_stmt_map_count(&m), 0);
    CU_ASSERT_PTR_NULL(m.tab); /* an empty map owns no memory */

    CU_ASSERT_EQUAL(px_stmt_map_put(&m, "x", A), 0);
    CU_ASSERT_EQUAL(px_stmt_map_put(&m, "y", B), 0);
    CU_ASSERT_EQUAL(px_stmt_map_put(&m, "", B), 0); /* the map itself accepts any name */
    CU_ASSERT_PTR_EQUAL(px_stmt_map_get(&m, ""), B);
    px_stmt_map_clear(&m);
    CU_ASSERT_EQUAL(px_stmt_map_count(&m), 0);
    CU_ASSERT_PTR_NULL(m.tab);
    CU_ASSERT_PTR_NULL(px_stmt_map_get(&m, "x"));
    CU_ASSERT_EQUAL(px_stmt_refcount(A), 1);
    CU_ASSERT_EQUAL(px_stmt_refcount(B), 2); /* still in other */
    px_stmt_map_clear(&m);                   /* clearing an empty map is a no-op */
    px_stmt_map_clear(&other);
    CU_ASSERT_EQUAL(px_stmt_refcount(B), 1);
    fixture_free(&f, 2);
}

static void test_map_name_truncation(void)
{
    struct fixture f;
    fixture_init(&f, 2);
    char n62[63], n63[64], n64[65], n100[101];
    memset(n62, 'x', 62);
    n62[62] = '\0';
    memset(n63, 'x', 63);
    n63[63] = '\0';
    memcpy(n64, n63, 63);
    n64[63] = 'A';
    n64[64] = '\0';
    memcpy(n100, n63, 63);
    memset(n100 + 63, 'B', 37);
    n100[100] = '\0';

    struct px_stmt_map m = {0};
    CU_ASSERT_EQUAL(px_stmt_map_put(&m, n64, f.s[0]), 0);
    CU_ASSERT_PTR_EQUAL(px_stmt_map_get(&m, n63), f.s[0]); /* stored as its 63 bytes */
    CU_ASSERT_PTR_EQUAL(px_stmt_map_get(&m, n100), f.s[0]);
    CU_ASSERT_PTR_NULL(px_stmt_map_get(&m, n62));
    CU_ASSERT_EQUAL(px_stmt_map_put(&m, n100, f.s[1]), 0); /* same truncated name: replaces */
    CU_ASSERT_EQUAL(px_stmt_map_count(&m), 1);
    CU_ASSERT_PTR_EQUAL(px_stmt_map_get(&m, n63), f.s[1]);
    CU_ASSERT_EQUAL(px_stmt_refcount(f.s[0]), 1);
    CU_ASSERT_EQUAL(px_stmt_map_put(&m, n62, f.s[0]), 0);
    CU_ASSERT_EQUAL(px_stmt_map_count(&m), 2);
    CU_ASSERT_TRUE(px_stmt_map_remove(&m, n64));
    CU_ASSERT_PTR_NULL(px_stmt_map_get(&m, n63));
    CU_ASSERT_PTR_EQUAL(px_stmt_map_get(&m, n62), f.s[0]);
    px_stmt_map_clear(&m);
    fixture_free(&f, 2);
}

static void test_map_many(void)
{
    struct px_stmt_registry *reg = px_stmt_registry_new();
    CU_ASSERT_FATAL(reg != NULL);
    enum { NS = 100, NN = 5000 };
    struct px_stmt *s[NS];
    for (int i = 0; i < NS; i++) {
        s[i] = intern_select(reg, i);
        CU_ASSERT_FATAL(s[i] != NULL);
    }
    struct px_stmt_map m = {0};
    char name[32];
    int bad = 0;
    for (int i = 0; i < NN; i++) {
        snprintf(name, sizeof(name), "__asyncpg_stmt_%x__", i);
        bad += px_stmt_map_put(&m, name, s[i % NS]) != 0;
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(px_stmt_map_count(&m), NN);
    CU_ASSERT_EQUAL(px_stmt_refcount(s[7]), 1 + NN / NS);
    for (int i = 0; i < NN; i++) {
        snprintf(name, sizeof(name), "__asyncpg_stmt_%x__", i);
        bad += px_stmt_map_get(&m, name) != s[i % NS];
    }
    CU_ASSERT_EQUAL(bad, 0);
    for (int i = 0; i < NN; i += 2) {
        snprintf(name, sizeof(name), "__asyncpg_stmt_%x__", i);
        bad += !px_stmt_map_remove(&m, name);
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(px_stmt_map_count(&m), NN / 2);
    for (int i = 0; i < NN; i++) {
        snprintf(name, sizeof(name), "__asyncpg_stmt_%x__", i);
        bad += px_stmt_map_get(&m, name) != (i % 2 ? s[i % NS] : NULL);
    }
    CU_ASSERT_EQUAL(bad, 0);
    /* NS is even, so names of even statements were all removed. */
    CU_ASSERT_EQUAL(px_stmt_refcount(s[6]), 1);
    CU_ASSERT_EQUAL(px_stmt_refcount(s[7]), 1 + NN / NS);
    px_stmt_map_clear(&m);
    CU_ASSERT_EQUAL(px_stmt_refcount(s[7]), 1);
    for (int i = 0; i < NS; i++)
        px_stmt_unref(s[i]);
    CU_ASSERT_EQUAL(px_stmt_registry_count(reg), 0);
    px_stmt_registry_free(reg);
}

/* ---- server set ---------------------------------------------------------------------- */

/* Adds st expecting victim (or NULL) to be evicted; drops the evicted reference. */
static void add_expect(struct px_stmt_set *set, struct px_stmt *st, uint32_t cap,
                       struct px_stmt *victim)
{
    struct px_stmt *ev = (struct px_stmt *)1;
    CU_ASSERT_EQUAL(px_stmt_set_add(set, st, cap, &ev), 0);
    CU_ASSERT_PTR_EQUAL(ev, victim);
    if (ev)
        CU_ASSERT_EQUAL(px_stmt_refcount(ev), 2); /* the test's own + the handed-over one */
    px_stmt_unref(ev);
}

static void test_set_lru_eviction(void)
{
    struct fixture f;
    fixture_init(&f, 6);
    struct px_stmt *A = f.s[0], *B = f.s[1], *C = f.s[2], *D = f.s[3], *E = f.s[4], *F = f.s[5];
    struct px_stmt_set set = {0};
    CU_ASSERT_FALSE(px_stmt_set_has(&set, A));
    CU_ASSERT_PTR_NULL(px_stmt_set_evict_candidate(&set, 3));
    add_expect(&set, A, 3, NULL);
    add_expect(&set, B, 3, NULL);
    CU_ASSERT_PTR_NULL(px_stmt_set_evict_candidate(&set, 3));
    add_expect(&set, C, 3, NULL);
    CU_ASSERT_EQUAL(px_stmt_set_count(&set), 3);
    CU_ASSERT_EQUAL(px_stmt_refcount(A), 2);
    CU_ASSERT_PTR_EQUAL(px_stmt_set_evict_candidate(&set, 3), A);
    add_expect(&set, D, 3, A); /* order now D C B */
    CU_ASSERT_EQUAL(px_stmt_refcount(A), 1);
    CU_ASSERT_FALSE(px_stmt_set_has(&set, A));
    CU_ASSERT_TRUE(px_stmt_set_has(&set, B)); /* B D C */
    CU_ASSERT_PTR_EQUAL(px_stmt_set_evict_candidate(&set, 3), C);
    add_expect(&set, E, 3, C);                /* E B D */
    CU_ASSERT_TRUE(px_stmt_set_has(&set, D)); /* D E B */
    add_expect(&set, F, 3, B);                /* F D E */
    add_expect(&set, D, 3, NULL);             /* present: touched only, D F E */
    CU_ASSERT_EQUAL(px_stmt_set_count(&set), 3);
    CU_ASSERT_EQUAL(px_stmt_refcount(D), 2);
    add_expect(&set, A, 3, E); /* A D F */
    CU_ASSERT_PTR_EQUAL(px_stmt_set_evict_candidate(&set, 3), F);
    CU_ASSERT_TRUE(px_stmt_set_has(&set, F)); /* F A D */
    CU_ASSERT_PTR_EQUAL(px_stmt_set_evict_candidate(&set, 3), D);
    CU_ASSERT_TRUE(px_stmt_set_has(&set, D)); /* D F A: touching the LRU one */
    CU_ASSERT_PTR_EQUAL(px_stmt_set_evict_candidate(&set, 3), A);
    CU_ASSERT_TRUE(px_stmt_set_has(&set, D)); /* touching the MRU one changes nothing */
    CU_ASSERT_PTR_EQUAL(px_stmt_set_evict_candidate(&set, 3), A);
    CU_ASSERT_FALSE(px_stmt_set_has(&set, B));
    CU_ASSERT_FALSE(px_stmt_set_has(&set, C));
    CU_ASSERT_FALSE(px_stmt_set_has(&set, E));
    CU_ASSERT_EQUAL(px_stmt_refcount(B), 1);
    CU_ASSERT_EQUAL(px_stmt_refcount(C), 1);
    CU_ASSERT_EQUAL(px_stmt_refcount(E), 1);
    px_stmt_set_clear(&set);
    CU_ASSERT_EQUAL(px_stmt_refcount(A), 1);
    CU_ASSERT_EQUAL(px_stmt_refcount(D), 1);
    CU_ASSERT_EQUAL(px_stmt_refcount(F), 1);

    /* Capacity 1 (and 0, which counts as 1): each add replaces the only member. */
    add_expect(&set, A, 1, NULL);
    add_expect(&set, B, 1, A);
    add_expect(&set, C, 0, B);
    CU_ASSERT_EQUAL(px_stmt_set_count(&set), 1);
    CU_ASSERT_TRUE(px_stmt_set_has(&set, C));
    px_stmt_set_clear(&set);
    fixture_free(&f, 6);
}

static void test_set_remove_clear(void)
{
    struct fixture f;
    fixture_init(&f, 6);
    struct px_stmt *A = f.s[0], *B = f.s[1], *C = f.s[2], *D = f.s[3], *E = f.s[4], *F = f.s[5];
    struct px_stmt_set set = {0};
    CU_ASSERT_FALSE(px_stmt_set_remove(&set, A));
    add_expect(&set, A, 10, NULL);
    add_expect(&set, B, 10, NULL);
    add_expect(&set, C, 10, NULL);
    add_expect(&set, D, 10, NULL);
    add_expect(&set, E, 10, NULL); /* E D C B A */
    CU_ASSERT_TRUE(px_stmt_set_remove(&set, C));
    CU_ASSERT_FALSE(px_stmt_set_remove(&set, C));
    CU_ASSERT_EQUAL(px_stmt_refcount(C), 1);
    CU_ASSERT_EQUAL(px_stmt_set_count(&set), 4);
    CU_ASSERT_FALSE(px_stmt_set_has(&set, C));
    CU_ASSERT_PTR_EQUAL(px_stmt_set_evict_candidate(&set, 4), A);
    CU_ASSERT_TRUE(px_stmt_set_remove(&set, E)); /* the MRU one: D B A */
    CU_ASSERT_TRUE(px_stmt_set_remove(&set, A)); /* the LRU one: D B */
    CU_ASSERT_PTR_EQUAL(px_stmt_set_evict_candidate(&set, 2), B);
    add_expect(&set, F, 2, B); /* F D */
    CU_ASSERT_PTR_EQUAL(px_stmt_set_evict_candidate(&set, 2), D);
    CU_ASSERT_TRUE(px_stmt_set_remove(&set, D));
    CU_ASSERT_TRUE(px_stmt_set_remove(&set, F));
    CU_ASSERT_EQUAL(px_stmt_set_count(&set), 0);
    CU_ASSERT_PTR_NULL(set.slots); /* an empty set owns no memory */
    for (int i = 0; i < 6; i++)
        CU_ASSERT_EQUAL(px_stmt_refcount(f.s[i]), 1);

    add_expect(&set, A, 10, NULL);
    add_expect(&set, B, 10, NULL);
    CU_ASSERT_TRUE(px_stmt_set_has(&set, A));
    px_stmt_set_clear(&set);
    CU_ASSERT_EQUAL(px_stmt_set_count(&set), 0);
    CU_ASSERT_PTR_NULL(set.slots);
    CU_ASSERT_FALSE(px_stmt_set_has(&set, A));
    CU_ASSERT_EQUAL(px_stmt_refcount(A), 1);
    CU_ASSERT_EQUAL(px_stmt_refcount(B), 1);
    px_stmt_set_clear(&set); /* no-op */
    fixture_free(&f, 6);
}

static void test_set_grow_and_shrink_capacity(void)
{
    struct px_stmt_registry *reg = px_stmt_registry_new();
    CU_ASSERT_FATAL(reg != NULL);
    enum { N = 150 };
    struct px_stmt *s[N];
    for (int i = 0; i < N; i++) {
        s[i] = intern_select(reg, i);
        CU_ASSERT_FATAL(s[i] != NULL);
    }
    struct px_stmt_set set = {0};
    int bad = 0;
    for (int i = 0; i < 100; i++) { /* grows 8, 16, ..., 64, 100 */
        struct px_stmt *ev;
        bad += px_stmt_set_add(&set, s[i], 100, &ev) != 0 || ev != NULL;
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(set.alloc, 100);
    for (int i = 0; i < 100; i += 2) /* even ones become the most recent */
        bad += !px_stmt_set_has(&set, s[i]);
    CU_ASSERT_EQUAL(bad, 0);
    /* Next 50 adds evict the odd ones, oldest first. */
    for (int i = 100; i < N; i++) {
        struct px_stmt *ev;
        bad += px_stmt_set_add(&set, s[i], 100, &ev) != 0 || ev != s[2 * (i - 100) + 1];
        px_stmt_unref(ev);
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(px_stmt_set_count(&set), 100);
    /* A reload lowered max_prepared_statements to 30: the caller trims LRU first. */
    struct px_stmt *v;
    int trimmed = 0;
    while ((v = px_stmt_set_evict_candidate(&set, 30)) != NULL) {
        /* The evens touched long ago, then the first of those added last. */
        bad += v != s[trimmed < 50 ? 2 * trimmed : 100 + (trimmed - 50)];
        CU_ASSERT_TRUE(px_stmt_set_remove(&set, v));
        trimmed++;
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(trimmed, 71); /* down to 29: room for one more */
    CU_ASSERT_EQUAL(px_stmt_set_count(&set), 29);
    px_stmt_set_clear(&set);
    for (int i = 0; i < N; i++) {
        bad += px_stmt_refcount(s[i]) != 1;
        px_stmt_unref(s[i]);
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(px_stmt_registry_count(reg), 0);
    px_stmt_registry_free(reg);
}

static void test_embedded_structs_small(void)
{
    /* The proxy embeds one map per client and one set per server connection. */
    CU_ASSERT(sizeof(struct px_stmt_map) <= 32);
    CU_ASSERT(sizeof(struct px_stmt_set) <= 32);
    struct px_stmt_map m = {0};
    struct px_stmt_set set = {0};
    CU_ASSERT_EQUAL(px_stmt_map_count(&m), 0);
    CU_ASSERT_EQUAL(px_stmt_set_count(&set), 0);
    CU_ASSERT_PTR_NULL(px_stmt_map_get(&m, "x"));
    CU_ASSERT_FALSE(px_stmt_map_remove(&m, "x"));
    px_stmt_map_clear(&m);
    px_stmt_set_clear(&set);
    CU_ASSERT_PTR_NULL(m.tab);
    CU_ASSERT_PTR_NULL(set.slots);
}

/* ---- randomized, against a reference model ------------------------------------------- */

enum { RC = 50, RS = 200, RV = 5, RCAP = 20, RNAMES = 30, ROPS = 100000 };

struct model {
    int map[RC][RNAMES]; /* statement index or -1 */
    int set[RV][RCAP];   /* statement indices, most recently used first */
    int setn[RV];
    int refs[RS];          /* references held by maps and sets */
    struct px_stmt *p[RS]; /* the interned statement while refs > 0 */
    uint8_t content[RS][48];
    uint32_t clen[RS];
};

static uint64_t rng_state;

static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)((rng_state >> 16) % n);
}

static int model_set_find(const struct model *m, int v, int k)
{
    for (int i = 0; i < m->setn[v]; i++)
        if (m->set[v][i] == k)
            return i;
    return -1;
}

static void model_set_take(struct model *m, int v, int pos)
{
    memmove(&m->set[v][pos], &m->set[v][pos + 1], (size_t)(m->setn[v] - pos - 1) * sizeof(int));
    m->setn[v]--;
}

static void model_set_front(struct model *m, int v, int k)
{
    memmove(&m->set[v][1], &m->set[v][0], (size_t)m->setn[v] * sizeof(int));
    m->set[v][0] = k;
    m->setn[v]++;
}

static void model_drop(struct model *m, int k)
{
    if (--m->refs[k] == 0)
        m->p[k] = NULL;
}

/* Compares everything observable with the model; returns the number of mismatches. */
static int model_check(const struct model *m, struct px_stmt_registry *reg,
                       struct px_stmt_map *maps, struct px_stmt_set *sets)
{
    int bad = 0;
    size_t live = 0;
    for (int k = 0; k < RS; k++) {
        if (m->refs[k] == 0)
            continue;
        live++;
        bad += px_stmt_refcount(m->p[k]) != (uint32_t)m->refs[k];
        uint32_t clen;
        const uint8_t *c = px_stmt_content(m->p[k], &clen);
        bad += clen != m->clen[k] || memcmp(c, m->content[k], clen) != 0;
    }
    bad += px_stmt_registry_count(reg) != live;
    for (int c = 0; c < RC; c++) {
        uint32_t n = 0;
        for (int j = 0; j < RNAMES; j++) {
            char name[16];
            snprintf(name, sizeof(name), "s%d", j);
            int k = m->map[c][j];
            n += k >= 0;
            bad += px_stmt_map_get(&maps[c], name) != (k >= 0 ? m->p[k] : NULL);
        }
        bad += px_stmt_map_count(&maps[c]) != n;
    }
    for (int v = 0; v < RV; v++) {
        bad += px_stmt_set_count(&sets[v]) != (uint32_t)m->setn[v];
        int lru = m->setn[v] ? m->set[v][m->setn[v] - 1] : -1;
        bad += px_stmt_set_evict_candidate(&sets[v], (uint32_t)m->setn[v]) !=
               (lru >= 0 ? m->p[lru] : NULL);
    }
    return bad;
}

/* Client c prepares statement k under name j. */
static int op_parse(struct model *m, struct px_stmt_registry *reg, struct px_stmt_map *maps, int c,
                    int j, int k)
{
    char name[16];
    snprintf(name, sizeof(name), "s%d", j);
    int bad = 0;
    struct px_stmt *st = px_stmt_intern(reg, m->content[k], m->clen[k]);
    if (!st)
        return 1;
    if (m->p[k])
        bad += st != m->p[k]; /* interned: the same statement as every other user's */
    else
        bad += px_stmt_refcount(st) != 1; /* a fresh one */
    m->p[k] = st;
    m->refs[k]++;
    bad += px_stmt_map_put(&maps[c], name, st) != 0;
    int old = m->map[c][j];
    m->map[c][j] = k;
    if (old >= 0)
        model_drop(m, old);
    px_stmt_unref(st);
    return bad;
}

/* Client c binds name j on server v: the server gets the statement first if it lacks it. */
static int op_bind(struct model *m, struct px_stmt_map *maps, struct px_stmt_set *sets, int c,
                   int j, int v)
{
    char name[16];
    snprintf(name, sizeof(name), "s%d", j);
    int k = m->map[c][j];
    struct px_stmt *st = px_stmt_map_get(&maps[c], name);
    if (k < 0)
        return st != NULL;
    int bad = st != m->p[k];
    int pos = model_set_find(m, v, k);
    bad += px_stmt_set_has(&sets[v], st) != (pos >= 0);
    if (pos >= 0) {
        model_set_take(m, v, pos);
        model_set_front(m, v, k);
        return bad;
    }
    struct px_stmt *ev;
    bad += px_stmt_set_add(&sets[v], st, RCAP, &ev) != 0;
    int victim = m->setn[v] == RCAP ? m->set[v][RCAP - 1] : -1;
    bad += ev != (victim >= 0 ? m->p[victim] : NULL);
    if (victim >= 0) {
        model_set_take(m, v, RCAP - 1);
        px_stmt_unref(ev);
        model_drop(m, victim);
    }
    model_set_front(m, v, k);
    m->refs[k]++;
    return bad;
}

static int op_close(struct model *m, struct px_stmt_map *maps, int c, int j)
{
    char name[16];
    snprintf(name, sizeof(name), "s%d", j);
    int k = m->map[c][j];
    int bad = px_stmt_map_remove(&maps[c], name) != (k >= 0);
    if (k >= 0) {
        m->map[c][j] = -1;
        model_drop(m, k);
    }
    return bad;
}

static int op_server_remove(struct model *m, struct px_stmt_set *sets, int v, int k)
{
    if (!m->p[k])
        return 0;
    int pos = model_set_find(m, v, k);
    int bad = px_stmt_set_remove(&sets[v], m->p[k]) != (pos >= 0);
    if (pos >= 0) {
        model_set_take(m, v, pos);
        model_drop(m, k);
    }
    return bad;
}

static void op_server_clear(struct model *m, struct px_stmt_set *sets, int v)
{
    px_stmt_set_clear(&sets[v]);
    while (m->setn[v] > 0)
        model_drop(m, m->set[v][--m->setn[v]]);
}

static void op_client_clear(struct model *m, struct px_stmt_map *maps, int c)
{
    px_stmt_map_clear(&maps[c]);
    for (int j = 0; j < RNAMES; j++) {
        if (m->map[c][j] >= 0)
            model_drop(m, m->map[c][j]);
        m->map[c][j] = -1;
    }
}

static void test_randomized_model(void)
{
    struct model *m = calloc(1, sizeof(*m));
    struct px_stmt_map *maps = calloc(RC, sizeof(*maps));
    struct px_stmt_set *sets = calloc(RV, sizeof(*sets));
    struct px_stmt_registry *reg = px_stmt_registry_new();
    CU_ASSERT_FATAL(m && maps && sets && reg);
    memset(m->map, -1, sizeof(m->map));
    for (int k = 0; k < RS; k++) {
        /* Triples share the text and differ in the parameter type. */
        char q[40];
        snprintf(q, sizeof(q), "SELECT $1 FROM t%d", k / 3);
        uint32_t oid = 20 + (uint32_t)(k % 3);
        m->clen[k] = make_content(m->content[k], q, 1, &oid);
    }
    rng_state = 0x9E3779B97F4A7C15ULL;
    int bad = 0, checks = 0;
    uint32_t hits = 0, evictions = 0;
    for (int op = 0; op < ROPS; op++) {
        int c = (int)rnd(RC), j = (int)rnd(RNAMES), v = (int)rnd(RV), k = (int)rnd(RS);
        uint32_t r = rnd(1000);
        if (r < 300) {
            bad += op_parse(m, reg, maps, c, j, k);
        } else if (r < 750) {
            int n = m->setn[v];
            int had = m->map[c][j] >= 0 && model_set_find(m, v, m->map[c][j]) >= 0;
            bad += op_bind(m, maps, sets, c, j, v);
            hits += (uint32_t)had;
            evictions += !had && m->map[c][j] >= 0 && n == RCAP;
        } else if (r < 900) {
            bad += op_close(m, maps, c, j);
        } else if (r < 990) {
            bad += op_server_remove(m, sets, v, k);
        } else if (r < 995) {
            op_server_clear(m, sets, v);
        } else {
            op_client_clear(m, maps, c);
        }
        if (op % 1000 == 999) {
            bad += model_check(m, reg, maps, sets);
            checks++;
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(checks, ROPS / 1000);
    /* The mix really exercised both paths. */
    CU_ASSERT(hits > 1000);
    CU_ASSERT(evictions > 1000);
    for (int c = 0; c < RC; c++)
        op_client_clear(m, maps, c);
    for (int v = 0; v < RV; v++)
        op_server_clear(m, sets, v);
    for (int k = 0; k < RS; k++)
        bad += m->refs[k] != 0 || m->p[k] != NULL;
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(px_stmt_registry_count(reg), 0);
    CU_ASSERT_EQUAL(px_stmt_registry_bytes(reg), 0);
    px_stmt_registry_free(reg);
    free(sets);
    free(maps);
    free(m);
}

/* ---- messages ------------------------------------------------------------------------ */

static void test_parse_split_roundtrip(void)
{
    uint8_t body[128], back[256];
    uint32_t oids[2] = {23, 20};
    uint32_t len = make_parse(body, "s1", "SELECT $1::int + $2", 2, oids);
    CU_ASSERT_EQUAL(len, 3 + 20 + 2 + 8);
    const char *name;
    const uint8_t *content;
    uint32_t clen;
    CU_ASSERT_EQUAL(px_parse_split(body, len, &name, &content, &clen), 0);
    CU_ASSERT_STRING_EQUAL(name, "s1");
    CU_ASSERT_PTR_EQUAL(content, body + 3);
    CU_ASSERT_EQUAL(clen, len - 3);

    struct evbuffer *out = evbuffer_new();
    CU_ASSERT_FATAL(out != NULL);
    CU_ASSERT_EQUAL(px_write_parse(out, "_pgw_7", content, clen), 0);
    CU_ASSERT_EQUAL(evbuffer_get_length(out), 5 + 7 + clen);
    uint32_t blen = take_msg(out, 'P', back, sizeof(back));
    CU_ASSERT_EQUAL(blen, 7 + clen);
    const char *name2;
    const uint8_t *content2;
    uint32_t clen2;
    CU_ASSERT_EQUAL(px_parse_split(back, blen, &name2, &content2, &clen2), 0);
    CU_ASSERT_STRING_EQUAL(name2, "_pgw_7");
    CU_ASSERT_EQUAL(clen2, clen);
    CU_ASSERT_EQUAL(memcmp(content2, content, clen), 0);

    /* Exact bytes of a small one. */
    static const uint8_t want[] = {'P', 0,   0,   0,   22,  '_', 'p', 'g', 'w', '_', '3', 0,
                                   'S', 'E', 'L', 'E', 'C', 'T', ' ', '1', 0,   0,   0};
    uint8_t c1[16];
    uint32_t l1 = make_content(c1, "SELECT 1", 0, NULL);
    CU_ASSERT_EQUAL(px_write_parse(out, "_pgw_3", c1, l1), 0);
    CU_ASSERT_EQUAL(evbuffer_get_length(out), sizeof(want));
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(out, -1), want, sizeof(want)), 0);
    evbuffer_free(out);

    /* Unnamed, no parameters. */
    len = make_parse(body, "", "SELECT 1", 0, NULL);
    CU_ASSERT_EQUAL(px_parse_split(body, len, &name, &content, &clen), 0);
    CU_ASSERT_STRING_EQUAL(name, "");
    CU_ASSERT_EQUAL(clen, 11);
    CU_ASSERT_STRING_EQUAL((const char *)content, "SELECT 1");
}

static void test_parse_split_malformed(void)
{
    uint8_t body[128];
    uint32_t oids[3] = {23, 20, 25};
    uint32_t len = make_parse(body, "stmt", "SELECT $1, $2, $3", 3, oids);
    check_truncations(SPLIT_PARSE, body, len);
    len = make_parse(body, "", "", 0, NULL); /* the shortest valid Parse: 4 bytes */
    CU_ASSERT_EQUAL(len, 4);
    check_truncations(SPLIT_PARSE, body, len);

    const char *name;
    const uint8_t *content;
    uint32_t clen;
    len = make_parse(body, "s", "SELECT $1", 1, oids);
    body[len] = 0; /* a trailing byte */
    CU_ASSERT_EQUAL(px_parse_split(body, len + 1, &name, &content, &clen), -1);
    put_u16(body + 12, 2); /* says 2 types, has 1 */
    CU_ASSERT_EQUAL(px_parse_split(body, len, &name, &content, &clen), -1);
    put_u16(body + 12, 0xffff); /* negative */
    CU_ASSERT_EQUAL(px_parse_split(body, len, &name, &content, &clen), -1);
    put_u16(body + 12, 0); /* says 0, has 4 more bytes */
    CU_ASSERT_EQUAL(px_parse_split(body, len, &name, &content, &clen), -1);
    memset(body, 'x', 20); /* no terminator at all */
    CU_ASSERT_EQUAL(px_parse_split(body, 20, &name, &content, &clen), -1);
}

/* Bind body: portal, stmt, nfmt formats, nparams parameters (every third NULL, others i % 7
 * bytes long), 2 result formats. */
static uint32_t make_bind(uint8_t *buf, const char *portal, const char *stmt, int nparams)
{
    uint32_t off = 0;
    size_t l = strlen(portal) + 1;
    memcpy(buf, portal, l);
    off += (uint32_t)l;
    l = strlen(stmt) + 1;
    memcpy(buf + off, stmt, l);
    off += (uint32_t)l;
    put_u16(buf + off, nparams ? 1 : 0); /* one format for all, or none */
    off += 2;
    if (nparams) {
        put_u16(buf + off, 1);
        off += 2;
    }
    put_u16(buf + off, (uint16_t)nparams);
    off += 2;
    for (int i = 0; i < nparams; i++) {
        if (i % 3 == 0) {
            px_put_u32(buf + off, UINT32_MAX);
            off += 4;
            continue;
        }
        uint32_t pl = (uint32_t)(i % 7);
        px_put_u32(buf + off, pl);
        off += 4;
        memset(buf + off, 'a' + i % 26, pl);
        off += pl;
    }
    put_u16(buf + off, 2);
    put_u16(buf + off + 2, 0);
    put_u16(buf + off + 4, 1);
    return off + 6;
}

static void test_bind_split(void)
{
    const char *portal, *stmt;
    const uint8_t *rest;
    uint32_t rlen;
    uint8_t small[64];
    uint32_t len = make_bind(small, "", "s1", 0);
    CU_ASSERT_EQUAL(len, 1 + 3 + 2 + 2 + 6);
    CU_ASSERT_EQUAL(px_bind_split(small, len, &portal, &stmt, &rest, &rlen), 0);
    CU_ASSERT_STRING_EQUAL(portal, "");
    CU_ASSERT_STRING_EQUAL(stmt, "s1");
    CU_ASSERT_PTR_EQUAL(rest, small + 4);
    CU_ASSERT_EQUAL(rlen, 10);
    check_truncations(SPLIT_BIND, small, len);

    enum { NP = 1000 };
    uint8_t *big = malloc(64 + NP * (4 + 6)); /* names, counts, params, one spare */
    CU_ASSERT_FATAL(big != NULL);
    len = make_bind(big, "portal_1", "__asyncpg_stmt_1__", NP);
    CU_ASSERT_EQUAL(px_bind_split(big, len, &portal, &stmt, &rest, &rlen), 0);
    CU_ASSERT_STRING_EQUAL(portal, "portal_1");
    CU_ASSERT_STRING_EQUAL(stmt, "__asyncpg_stmt_1__");
    CU_ASSERT_EQUAL(rlen, len - 9 - 19);
    check_truncations(SPLIT_BIND, big, len);

    /* Rewritten for the server, the parameters are carried over byte for byte. */
    struct evbuffer *out = evbuffer_new();
    CU_ASSERT_FATAL(out != NULL);
    CU_ASSERT_EQUAL(px_write_bind(out, portal, "_pgw_12", rest, rlen), 0);
    uint8_t *back = malloc(len + 16);
    CU_ASSERT_FATAL(back != NULL);
    uint32_t blen = take_msg(out, 'B', back, len + 16);
    CU_ASSERT_EQUAL(blen, 9 + 8 + rlen);
    const char *portal2, *stmt2;
    const uint8_t *rest2;
    uint32_t rlen2;
    CU_ASSERT_EQUAL(px_bind_split(back, blen, &portal2, &stmt2, &rest2, &rlen2), 0);
    CU_ASSERT_STRING_EQUAL(portal2, "portal_1");
    CU_ASSERT_STRING_EQUAL(stmt2, "_pgw_12");
    CU_ASSERT_EQUAL(rlen2, rlen);
    CU_ASSERT_EQUAL(memcmp(rest2, rest, rlen), 0);
    free(back);
    evbuffer_free(out);

    /* Malformed: trailing byte, a parameter length of -2, a negative count. */
    big[len] = 0;
    CU_ASSERT_EQUAL(px_bind_split(big, len + 1, &portal, &stmt, &rest, &rlen), -1);
    len = make_bind(big, "", "s", 2); /* params: NULL, then 1 byte */
    CU_ASSERT_EQUAL(px_bind_split(big, len, &portal, &stmt, &rest, &rlen), 0);
    uint32_t p1 = 1 + 2 + 2 + 2 + 2 + 4; /* the second parameter's length word */
    CU_ASSERT_EQUAL(px_get_u32(big + p1), 1);
    px_put_u32(big + p1, 0xfffffffe);
    CU_ASSERT_EQUAL(px_bind_split(big, len, &portal, &stmt, &rest, &rlen), -1);
    px_put_u32(big + p1, 0x7fffffff); /* longer than the body */
    CU_ASSERT_EQUAL(px_bind_split(big, len, &portal, &stmt, &rest, &rlen), -1);
    /* One empty (not NULL) parameter; as -2 it would be neither NULL nor a length. */
    static const uint8_t one_empty[] = {0, 's', 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0};
    CU_ASSERT_EQUAL(px_bind_split(one_empty, sizeof(one_empty), &portal, &stmt, &rest, &rlen), 0);
    CU_ASSERT_EQUAL(rlen, 10);
    memcpy(big, one_empty, sizeof(one_empty));
    px_put_u32(big + 7, 0xfffffffe);
    CU_ASSERT_EQUAL(px_bind_split(big, sizeof(one_empty), &portal, &stmt, &rest, &rlen), -1);
    px_put_u32(big + 7, 0xffffffff); /* NULL instead of empty: still well formed */
    CU_ASSERT_EQUAL(px_bind_split(big, sizeof(one_empty), &portal, &stmt, &rest, &rlen), 0);
    len = make_bind(big, "", "s", 0);
    put_u16(big + 3, 0x8000); /* negative format count */
    CU_ASSERT_EQUAL(px_bind_split(big, len, &portal, &stmt, &rest, &rlen), -1);
    free(big);
}

static void test_target_split_write(void)
{
    char kind = 0;
    const char *name = NULL;
    CU_ASSERT_EQUAL(px_target_split((const uint8_t *)"Ss1", 4, &kind, &name), 0);
    CU_ASSERT_EQUAL(kind, 'S');
    CU_ASSERT_STRING_EQUAL(name, "s1");
    CU_ASSERT_EQUAL(px_target_split((const uint8_t *)"P", 2, &kind, &name), 0);
    CU_ASSERT_EQUAL(kind, 'P');
    CU_ASSERT_STRING_EQUAL(name, "");
    CU_ASSERT_EQUAL(px_target_split((const uint8_t *)"Xs1", 4, &kind, &name), -1);
    CU_ASSERT_EQUAL(px_target_split((const uint8_t *)"Ss1\0x", 6, &kind, &name), -1);
    CU_ASSERT_EQUAL(px_target_split((const uint8_t *)"Ss1", 3, &kind, &name), -1);
    check_truncations(SPLIT_TARGET, (const uint8_t *)"S__asyncpg_stmt_2a__", 21);

    struct evbuffer *out = evbuffer_new();
    CU_ASSERT_FATAL(out != NULL);
    CU_ASSERT_EQUAL(px_write_target(out, 'C', 'S', "_pgw_1"), 0);
    static const uint8_t close_want[] = {'C', 0, 0, 0, 12, 'S', '_', 'p', 'g', 'w', '_', '1', 0};
    CU_ASSERT_EQUAL(evbuffer_get_length(out), sizeof(close_want));
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(out, -1), close_want, sizeof(close_want)), 0);
    evbuffer_drain(out, sizeof(close_want));
    CU_ASSERT_EQUAL(px_write_target(out, 'D', 'P', ""), 0);
    static const uint8_t desc_want[] = {'D', 0, 0, 0, 6, 'P', 0};
    CU_ASSERT_EQUAL(evbuffer_get_length(out), sizeof(desc_want));
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(out, -1), desc_want, sizeof(desc_want)), 0);
    evbuffer_drain(out, sizeof(desc_want));
    CU_ASSERT_EQUAL(px_write_target(out, 'D', 'S', "_pgw_99"), 0);
    uint8_t back[32];
    uint32_t blen = take_msg(out, 'D', back, sizeof(back));
    CU_ASSERT_EQUAL(px_target_split(back, blen, &kind, &name), 0);
    CU_ASSERT_EQUAL(kind, 'S');
    CU_ASSERT_STRING_EQUAL(name, "_pgw_99");
    evbuffer_free(out);
}

static const CU_TestInfo prepared_tests[] = {
    {"intern_same_content", test_intern_same_content},
    {"intern_distinct", test_intern_distinct},
    {"intern_refcount_frees", test_intern_refcount_frees},
    {"intern_many_grows", test_intern_many_grows},
    {"map_put_replace_remove", test_map_put_replace_remove},
    {"map_name_truncation", test_map_name_truncation},
    {"map_many", test_map_many},
    {"set_lru_eviction", test_set_lru_eviction},
    {"set_remove_clear", test_set_remove_clear},
    {"set_grow_and_shrink_capacity", test_set_grow_and_shrink_capacity},
    {"embedded_structs_small", test_embedded_structs_small},
    {"randomized_model", test_randomized_model},
    {"parse_split_roundtrip", test_parse_split_roundtrip},
    {"parse_split_malformed", test_parse_split_malformed},
    {"bind_split", test_bind_split},
    {"target_split_write", test_target_split_write},
    CU_TEST_INFO_NULL,
};

void test_prepared_register(void)
{
    cunit_add_suite("prepared", NULL, NULL, prepared_tests);
}
