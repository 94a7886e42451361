/*
 * test_waitgraph.c: tests of proxy/lockspace/waitgraph.c, the wait-for graph across
 * pgwarden instances.
 *
 * The text form (round trip, a start derived from the age, malformed text rejected), and
 * the search: a two-instance cycle found from either side with the same victim, a cycle
 * through a local edge, compatible modes and holders that do not wait make no cycle, and
 * waits that were never in progress together (one began after the other's part was taken)
 * are not a deadlock.
 */
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "lockspace/waitgraph.h"

void test_waitgraph_register(void);

enum { R = 0, W = 1, X = 2 };
#define K1 0x1111000000000008ull
#define K2 0x2222000000000010ull
#define K3 0x3333000000000018ull

/* A part from text, as a reader would see it. */
static struct wg_part part(const char *instance, int64_t published_us, const char *text)
{
    struct wg_part p;
    memset(&p, 0, sizeof(p));
    strcpy(p.instance, instance);
    p.published_us = published_us;
    CU_ASSERT_FATAL(wg_decode(text, &p) == 0);
    return p;
}

static void test_roundtrip(void)
{
    struct wg_node nodes[2] = {
        {.client = 7, .since_us = 0, .age_us = 1500, .global = true, .key_hash = K1, .mode = X},
        {.client = 9, .since_us = 1000000, .age_us = 0},
    };
    struct wg_hold holds[1] = {{.client = 9, .key_hash = K2, .mode = W}};
    struct wg_edge edges[1] = {{.from = 9, .to = 7}};
    struct wg_part p = {.nodes = nodes, .holds = holds, .edges = edges};
    p.nnodes = 2, p.nholds = 1, p.nedges = 1;
    char *text = wg_encode(&p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    struct wg_part q = part("b", 5000000, text);
    CU_ASSERT_EQUAL(q.nnodes, 2);
    CU_ASSERT_EQUAL(q.nodes[0].client, 7);
    CU_ASSERT_EQUAL(q.nodes[0].since_us, 5000000 - 1500); /* from the age */
    CU_ASSERT_TRUE(q.nodes[0].global);
    CU_ASSERT_EQUAL(q.nodes[0].key_hash, K1);
    CU_ASSERT_EQUAL(q.nodes[0].mode, X);
    CU_ASSERT_EQUAL(q.nodes[1].since_us, 1000000); /* kept as published */
    CU_ASSERT_FALSE(q.nodes[1].global);
    CU_ASSERT_EQUAL(q.nholds, 1);
    CU_ASSERT_EQUAL(q.holds[0].key_hash, K2);
    CU_ASSERT_EQUAL(q.holds[0].mode, W);
    CU_ASSERT_EQUAL(q.nedges, 1);
    CU_ASSERT_EQUAL(q.edges[0].from, 9);
    CU_ASSERT_EQUAL(q.edges[0].to, 7);
    wg_part_clear(&q);
    free(text);
}

static void test_malformed(void)
{
    static const char *bad[] = {
        "x 1 2 3\n",                    /* unknown kind */
        "n 1 2\n",                      /* a field missing */
        "n 1 2 3 4\n",                  /* one too many */
        "g 1 2 3\n",                    /* mode out of range */
        "n 99999999999999999999 0 0\n", /* overflow */
        "h 1 -2 0\n",                   /* negative hash */
        "e 1\n",                        /* half an edge */
        "n1 0 0\n",                     /* no separator */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct wg_part p;
        memset(&p, 0, sizeof(p));
        CU_ASSERT_EQUAL(wg_decode(bad[i], &p), -1);
        CU_ASSERT_PTR_NULL(p.nodes);
    }
    struct wg_part p;
    memset(&p, 0, sizeof(p));
    CU_ASSERT_EQUAL(wg_decode("", &p), 0); /* an instance with nothing long */
    CU_ASSERT_EQUAL(p.nnodes, 0);
    wg_part_clear(&p);
}

/* Client 1 on "a" holds K1 and waits for K2; client 2 on "b" holds K2 and waits for K1. */
static void two_instances(const char *mode_a, const char *mode_b, int64_t since_b,
                          struct wg_part parts[2])
{
    char ta[256], tb[256];
    snprintf(ta, sizeof(ta), "n 1 1000000 0\ng 1 %llu %s\nh 1 %llu 2\n", (unsigned long long)K2,
             mode_a, (unsigned long long)K1);
    snprintf(tb, sizeof(tb), "n 2 %lld 0\ng 2 %llu %s\nh 2 %llu 2\n", (long long)since_b,
             (unsigned long long)K1, mode_b, (unsigned long long)K2);
    parts[0] = part("a", 3000000, ta);
    parts[1] = part("b", 2500000, tb);
}

static void test_two_instances(void)
{
    struct wg_part parts[2];
    two_instances("2", "2", 1200000, parts);
    struct wg_cycle c;
    CU_ASSERT_FALSE(wg_find(parts, 2, 0, 100000, &c)); /* b's wait began last: not a's */
    CU_ASSERT_TRUE_FATAL(wg_find(parts, 2, 1, 100000, &c));
    CU_ASSERT_EQUAL(c.len, 2);
    CU_ASSERT_EQUAL(c.at[c.victim].part, 1);
    CU_ASSERT_EQUAL(c.at[c.victim].client, 2);
    wg_part_clear(&parts[0]);
    wg_part_clear(&parts[1]);
}

static void test_tie_by_instance(void)
{
    struct wg_part parts[2];
    two_instances("2", "2", 1000000, parts); /* both began at 1 s */
    struct wg_cycle c;
    CU_ASSERT_FALSE(wg_find(parts, 2, 0, 0, &c)); /* "b" > "a": b's */
    CU_ASSERT_TRUE_FATAL(wg_find(parts, 2, 1, 0, &c));
    CU_ASSERT_EQUAL(c.at[c.victim].part, 1);
    wg_part_clear(&parts[0]);
    wg_part_clear(&parts[1]);
}

static void test_not_together(void)
{
    struct wg_part parts[2];
    /* b's wait began at 2.45 s; b's part was taken at 2.5 s, a's at 3 s.  Within the
     * margin of the earliest part, the waits cannot be shown to have been in progress
     * together. */
    two_instances("2", "2", 2450000, parts);
    struct wg_cycle c;
    CU_ASSERT_FALSE(wg_find(parts, 2, 1, 100000, &c));
    CU_ASSERT_TRUE(wg_find(parts, 2, 1, 0, &c)); /* inside the part without a margin */
    wg_part_clear(&parts[0]);
    wg_part_clear(&parts[1]);
    two_instances("2", "2", 2600000, parts); /* began after b's own part: stale */
    CU_ASSERT_FALSE(wg_find(parts, 2, 1, 0, &c));
    wg_part_clear(&parts[0]);
    wg_part_clear(&parts[1]);
}

static void test_compatible(void)
{
    struct wg_part parts[2];
    /* a waits to read K2, which b holds for writing: read and write are compatible */
    char ta[256], tb[256];
    snprintf(ta, sizeof(ta), "n 1 1000000 0\ng 1 %llu 0\nh 1 %llu 2\n", (unsigned long long)K2,
             (unsigned long long)K1);
    snprintf(tb, sizeof(tb), "n 2 1000000 0\ng 2 %llu 2\nh 2 %llu 1\n", (unsigned long long)K1,
             (unsigned long long)K2);
    parts[0] = part("a", 3000000, ta);
    parts[1] = part("b", 3000000, tb);
    struct wg_cycle c;
    CU_ASSERT_FALSE(wg_find(parts, 2, 0, 0, &c));
    CU_ASSERT_FALSE(wg_find(parts, 2, 1, 0, &c));
    wg_part_clear(&parts[0]);
    wg_part_clear(&parts[1]);
    two_instances("1", "1", 1000000, parts);     /* write against exclusive holds: conflict */
    CU_ASSERT_TRUE(wg_find(parts, 2, 1, 0, &c)); /* tie at 1 s: b's */
    wg_part_clear(&parts[0]);
    wg_part_clear(&parts[1]);
}

/* a:1 holds K1, waits globally for K2; b:2 holds K2 and waits locally behind b:3 (a local
 * edge); b:3 waits globally for K1. */
static void test_local_edge(void)
{
    char ta[256], tb[512];
    snprintf(ta, sizeof(ta), "n 1 1000000 0\ng 1 %llu 2\nh 1 %llu 2\n", (unsigned long long)K2,
             (unsigned long long)K1);
    snprintf(tb, sizeof(tb),
             "n 2 1100000 0\nn 3 1050000 0\ng 3 %llu 2\nh 2 %llu 2\nh 3 %llu 2\ne 2 3\n",
             (unsigned long long)K1, (unsigned long long)K2, (unsigned long long)K3);
    struct wg_part parts[2] = {part("a", 3000000, ta), part("b", 3000000, tb)};
    struct wg_cycle c;
    CU_ASSERT_FALSE(wg_find(parts, 2, 0, 0, &c)); /* b:2 began last: b's */
    CU_ASSERT_TRUE_FATAL(wg_find(parts, 2, 1, 0, &c));
    CU_ASSERT_EQUAL(c.len, 3);
    CU_ASSERT_EQUAL(c.at[c.victim].client, 2);
    wg_part_clear(&parts[1]);
    /* without the local edge there is no cycle */
    snprintf(tb, sizeof(tb), "n 2 1100000 0\nn 3 1050000 0\ng 3 %llu 2\nh 2 %llu 2\nh 3 %llu 2\n",
             (unsigned long long)K1, (unsigned long long)K2, (unsigned long long)K3);
    parts[1] = part("b", 3000000, tb);
    CU_ASSERT_FALSE(wg_find(parts, 2, 1, 0, &c));
    wg_part_clear(&parts[0]);
    wg_part_clear(&parts[1]);
}

/* The holder of K2 on b is not waiting (not a node): it will release, no deadlock. */
static void test_holder_not_waiting(void)
{
    char ta[256], tb[256];
    snprintf(ta, sizeof(ta), "n 1 1000000 0\ng 1 %llu 2\nh 1 %llu 2\n", (unsigned long long)K2,
             (unsigned long long)K1);
    snprintf(tb, sizeof(tb), "n 2 1000000 0\ng 2 %llu 2\nh 4 %llu 2\n", (unsigned long long)K1,
             (unsigned long long)K2);
    struct wg_part parts[2] = {part("a", 3000000, ta), part("b", 3000000, tb)};
    struct wg_cycle c;
    CU_ASSERT_FALSE(wg_find(parts, 2, 0, 0, &c));
    CU_ASSERT_FALSE(wg_find(parts, 2, 1, 0, &c));
    wg_part_clear(&parts[0]);
    wg_part_clear(&parts[1]);
}

/* Three instances in a ring: a -> b -> c -> a, each holding one key and waiting for the
 * next one's. */
static void test_three_instances(void)
{
    char t[3][256];
    const unsigned long long k[3] = {K1, K2, K3};
    struct wg_part parts[3];
    const char *names[3] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        snprintf(t[i], sizeof(t[i]), "n %d %d 0\ng %d %llu 2\nh %d %llu 2\n", i + 1,
                 1000000 + 1000 * i, i + 1, k[(i + 1) % 3], i + 1, k[i]);
        parts[i] = part(names[i], 3000000, t[i]);
    }
    struct wg_cycle c;
    CU_ASSERT_FALSE(wg_find(parts, 3, 0, 0, &c)); /* c's wait began last */
    CU_ASSERT_FALSE(wg_find(parts, 3, 1, 0, &c));
    CU_ASSERT_TRUE_FATAL(wg_find(parts, 3, 2, 0, &c));
    CU_ASSERT_EQUAL(c.len, 3);
    CU_ASSERT_EQUAL(c.at[c.victim].part, 2);
    for (int i = 0; i < 3; i++)
        wg_part_clear(&parts[i]);
}

/* Two cycles between the same two instances: a1 <-> b1 (victim b1 on b) and a2 <-> b2
 * (victim a2 on a).  Each instance must find the cycle whose victim is its own, whichever
 * it meets first. */
static void test_two_cycles(void)
{
    char ta[256], tb[256];
    snprintf(ta, sizeof(ta), "n 1 10 0\ng 1 %llu 2\nh 1 %llu 2\nn 2 30 0\ng 2 %llu 2\nh 2 %llu 2\n",
             (unsigned long long)K2, (unsigned long long)K1, (unsigned long long)(K2 + 8),
             (unsigned long long)(K1 + 8));
    snprintf(tb, sizeof(tb),
             "n 11 20 0\ng 11 %llu 2\nh 11 %llu 2\nn 12 5 0\ng 12 %llu 2\nh 12 %llu 2\n",
             (unsigned long long)K1, (unsigned long long)K2, (unsigned long long)(K1 + 8),
             (unsigned long long)(K2 + 8));
    struct wg_part parts[2] = {part("a", 3000000, ta), part("b", 3000000, tb)};
    struct wg_cycle c;
    CU_ASSERT_TRUE_FATAL(wg_find(parts, 2, 0, 0, &c));
    CU_ASSERT_EQUAL(c.at[c.victim].part, 0);
    CU_ASSERT_EQUAL(c.at[c.victim].client, 2);
    CU_ASSERT_TRUE_FATAL(wg_find(parts, 2, 1, 0, &c));
    CU_ASSERT_EQUAL(c.at[c.victim].part, 1);
    CU_ASSERT_EQUAL(c.at[c.victim].client, 11);
    wg_part_clear(&parts[0]);
    wg_part_clear(&parts[1]);
}

/* A part of 2,000 waiting clients queued behind each other (a chain of local edges, no
 * cycle) next to a two-instance cycle: the cycle is found, the chain makes none. */
static void test_large_part(void)
{
    size_t cap = 2000 * 40 + 256;
    char *ta = malloc(cap), *tb = malloc(256);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ta);
    CU_ASSERT_PTR_NOT_NULL_FATAL(tb);
    size_t n = 0;
    for (int i = 100; i < 2100; i++)
        n += (size_t)snprintf(ta + n, cap - n, "n %d 500000 0\ne %d %d\n", i, i, i + 1);
    snprintf(ta + n, cap - n, "n 1 1000000 0\ng 1 %llu 2\nh 1 %llu 2\n", (unsigned long long)K2,
             (unsigned long long)K1);
    snprintf(tb, 256, "n 2 1200000 0\ng 2 %llu 2\nh 2 %llu 2\n", (unsigned long long)K1,
             (unsigned long long)K2);
    struct wg_part parts[2] = {part("a", 3000000, ta), part("b", 3000000, tb)};
    CU_ASSERT_EQUAL(parts[0].nnodes, 2001);
    CU_ASSERT_EQUAL(parts[0].nedges, 2000);
    struct wg_cycle c;
    CU_ASSERT_FALSE(wg_find(parts, 2, 0, 0, &c));
    CU_ASSERT_TRUE_FATAL(wg_find(parts, 2, 1, 0, &c));
    CU_ASSERT_EQUAL(c.len, 2);
    CU_ASSERT_EQUAL(c.at[c.victim].client, 2);
    wg_part_clear(&parts[0]);
    wg_part_clear(&parts[1]);
    free(ta);
    free(tb);
}

void test_waitgraph_register(void)
{
    static const CU_TestInfo tests[] = {
        {"roundtrip", test_roundtrip},
        {"malformed", test_malformed},
        {"two_instances", test_two_instances},
        {"tie_by_instance", test_tie_by_instance},
        {"not_together", test_not_together},
        {"compatible", test_compatible},
        {"local_edge", test_local_edge},
        {"holder_not_waiting", test_holder_not_waiting},
        {"three_instances", test_three_instances},
        {"two_cycles", test_two_cycles},
        {"large_part", test_large_part},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("waitgraph", NULL, NULL, tests);
}
