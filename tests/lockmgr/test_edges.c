/*
 * test_edges.c: lockmgr/edges.c: lockmgr_owner_wait and lockmgr_wait_edges, the edges a
 * caller joins to waits it learns elsewhere (hybrid deadlocks).
 */
#include <stdlib.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "lmtest.h"

#define R LOCKMGR_READ
#define W LOCKMGR_WRITE
#define X LOCKMGR_EXCLUSIVE

/* The edge of e[0..n) to blocker id (soft or hard as asked), or NULL. */
static const struct lockmgr_wait_edge *edge_to(const struct lockmgr_wait_edge *e, size_t n,
                                               uint64_t id, bool soft)
{
    for (size_t i = 0; i < n; i++)
        if (e[i].blocker_id == id && e[i].soft == soft)
            return &e[i];
    return NULL;
}

static void test_not_waiting(void)
{
    struct lockmgr *lm = lockmgr_new(NULL);
    struct lockmgr_owner *a = lockmgr_owner_new(lm, 1, lmt_record, NULL);
    uint64_t t;
    struct lockmgr_wait_info wi;
    struct lockmgr_wait_edge e[4];
    CU_ASSERT_FALSE(lockmgr_owner_wait(lm, a, &wi));
    CU_ASSERT_EQUAL(lockmgr_wait_edges(lm, a, e, 4), 0);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, a, LMT_KEY("k"), X, LOCKMGR_SESSION, 0, 1, &t), LOCKMGR_OK);
    CU_ASSERT_FALSE(lockmgr_owner_wait(lm, a, &wi)); /* a holder is no waiter */
    CU_ASSERT_EQUAL(lockmgr_wait_edges(lm, a, e, 4), 0);
    lockmgr_free(lm);
}

/* Holders read (a) and write (b); queued: c exclusive, d write, e read. */
static void test_hard_and_soft(void)
{
    struct lockmgr *lm = lockmgr_new(NULL);
    int tag_b = 2;
    struct lockmgr_owner *a = lockmgr_owner_new(lm, 1, lmt_record, NULL);
    struct lockmgr_owner *b = lockmgr_owner_new(lm, 2, lmt_record, &tag_b);
    struct lockmgr_owner *c = lockmgr_owner_new(lm, 3, lmt_record, NULL);
    struct lockmgr_owner *d = lockmgr_owner_new(lm, 4, lmt_record, NULL);
    struct lockmgr_owner *f = lockmgr_owner_new(lm, 5, lmt_record, NULL);
    uint64_t ta, tb, t;
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, a, LMT_KEY("k"), R, LOCKMGR_SESSION, 0, 1, &ta),
                    LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, b, LMT_KEY("k"), W, LOCKMGR_XACT, 0, 2, &tb), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, c, LMT_KEY("k"), X, LOCKMGR_XACT, 900, 3, &t),
                    LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, d, LMT_KEY("k"), W, LOCKMGR_XACT, 0, 4, &t),
                    LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, f, LMT_KEY("k"), R, LOCKMGR_XACT, 0, 5, &t),
                    LOCKMGR_WAITING);

    struct lockmgr_wait_info wc, wd;
    CU_ASSERT_TRUE_FATAL(lockmgr_owner_wait(lm, c, &wc));
    CU_ASSERT_EQUAL(wc.keylen, 1);
    CU_ASSERT_EQUAL(memcmp(wc.key, "k", 1), 0);
    CU_ASSERT_EQUAL(wc.mode, X);
    CU_ASSERT_FALSE(wc.upgrade);
    CU_ASSERT_EQUAL(wc.since_us, 3);
    CU_ASSERT_EQUAL(wc.deadline_us, 900);
    CU_ASSERT_TRUE_FATAL(lockmgr_owner_wait(lm, d, &wd));
    CU_ASSERT(wd.wait_seq > wc.wait_seq);

    struct lockmgr_wait_edge e[8];
    /* c (exclusive): hard to both holders, nothing queued ahead */
    size_t n = lockmgr_wait_edges(lm, c, e, 8);
    CU_ASSERT_EQUAL(n, 2);
    const struct lockmgr_wait_edge *ea = edge_to(e, n, 1, false);
    const struct lockmgr_wait_edge *eb = edge_to(e, n, 2, false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ea);
    CU_ASSERT_PTR_NOT_NULL_FATAL(eb);
    CU_ASSERT_EQUAL(ea->blocker_mode, R);
    CU_ASSERT_EQUAL(ea->token, ta);
    CU_ASSERT_EQUAL(eb->blocker_mode, W);
    CU_ASSERT_EQUAL(eb->token, tb);
    CU_ASSERT_PTR_EQUAL(eb->blocker_udata, &tag_b);
    CU_ASSERT_EQUAL(e[0].soft, false); /* hard edges first */

    /* d (write): hard to b only (read does not conflict with write), soft to c */
    n = lockmgr_wait_edges(lm, d, e, 8);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_PTR_NOT_NULL(edge_to(e, n, 2, false));
    CU_ASSERT_PTR_NULL(edge_to(e, n, 1, false));
    const struct lockmgr_wait_edge *ec = edge_to(e, n, 3, true);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ec);
    CU_ASSERT_EQUAL(ec->blocker_mode, X);
    CU_ASSERT_EQUAL(ec->wait_seq, wc.wait_seq);

    /* f (read): no holder conflicts; soft to c (exclusive), not to d (write) */
    n = lockmgr_wait_edges(lm, f, e, 8);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_PTR_NOT_NULL(edge_to(e, n, 3, true));

    /* not enough room: the count is still the whole count */
    CU_ASSERT_EQUAL(lockmgr_wait_edges(lm, c, e, 1), 2);
    CU_ASSERT_EQUAL(lockmgr_wait_edges(lm, c, NULL, 0), 2);

    /* b goes: c still waits for a, d now only for c */
    lockmgr_release_owner(lm, b, 6);
    n = lockmgr_wait_edges(lm, c, e, 8);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_PTR_NOT_NULL(edge_to(e, n, 1, false));
    n = lockmgr_wait_edges(lm, d, e, 8);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_PTR_NOT_NULL(edge_to(e, n, 3, true));
    lockmgr_free(lm);
}

/* An upgrade has hard edges to the other holders only (never to itself, never soft). */
static void test_upgrade(void)
{
    struct lockmgr *lm = lockmgr_new(NULL);
    struct lockmgr_owner *a = lockmgr_owner_new(lm, 1, lmt_record, NULL);
    struct lockmgr_owner *b = lockmgr_owner_new(lm, 2, lmt_record, NULL);
    struct lockmgr_owner *c = lockmgr_owner_new(lm, 3, lmt_record, NULL);
    uint64_t t;
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, a, LMT_KEY("k"), R, LOCKMGR_SESSION, 0, 1, &t), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, b, LMT_KEY("k"), R, LOCKMGR_SESSION, 0, 2, &t), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, c, LMT_KEY("k"), X, LOCKMGR_SESSION, 0, 3, &t),
                    LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, a, LMT_KEY("k"), W, LOCKMGR_SESSION, 0, 4, &t),
                    LOCKMGR_OK); /* read and write go together */
    CU_ASSERT_EQUAL(lockmgr_release(lm, a, LMT_KEY("k"), LOCKMGR_SESSION, 5), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, a, LMT_KEY("k"), R, LOCKMGR_SESSION, 0, 6, &t),
                    LOCKMGR_WAITING); /* behind c */
    lockmgr_release_owner(lm, a, 7);
    /* b upgrades to exclusive while c waits: b's edges are hard ones only */
    struct lockmgr_owner *d = lockmgr_owner_new(lm, 4, lmt_record, NULL);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, d, LMT_KEY("k"), R, LOCKMGR_SESSION, 0, 8, &t),
                    LOCKMGR_WAITING); /* behind c's exclusive request */
    lockmgr_release_owner(lm, d, 9);
    CU_ASSERT_EQUAL(lockmgr_cancel_wait(lm, c, 10), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, d, LMT_KEY("k"), R, LOCKMGR_SESSION, 0, 11, &t),
                    LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, c, LMT_KEY("k"), W, LOCKMGR_SESSION, 0, 12, &t),
                    LOCKMGR_OK); /* holders b read, d read, c write */
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, b, LMT_KEY("k"), X, LOCKMGR_SESSION, 0, 13, &t),
                    LOCKMGR_WAITING);
    struct lockmgr_wait_info wi;
    CU_ASSERT_TRUE_FATAL(lockmgr_owner_wait(lm, b, &wi));
    CU_ASSERT_TRUE(wi.upgrade);
    struct lockmgr_wait_edge e[8];
    size_t n = lockmgr_wait_edges(lm, b, e, 8);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_PTR_NOT_NULL(edge_to(e, n, 3, false));
    CU_ASSERT_PTR_NOT_NULL(edge_to(e, n, 4, false));
    CU_ASSERT_PTR_NULL(edge_to(e, n, 2, false));
    /* a new request behind the upgrade: soft edge to it, hard edge to the writer */
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, a, LMT_KEY("k"), W, LOCKMGR_SESSION, 0, 14, &t),
                    LOCKMGR_WAITING);
    n = lockmgr_wait_edges(lm, a, e, 8);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_PTR_NOT_NULL(edge_to(e, n, 2, true));
    CU_ASSERT_PTR_NOT_NULL(edge_to(e, n, 3, false));
    lockmgr_free(lm);
}

/* lockmgr_wait_victim: the callback gets DEADLOCK without a cycle, the queue moves on. */
static void test_wait_victim(void)
{
    struct lockmgr *lm = lockmgr_new(NULL);
    struct lockmgr_owner *a = lockmgr_owner_new(lm, 1, lmt_record, NULL);
    struct lockmgr_owner *b = lockmgr_owner_new(lm, 2, lmt_record, NULL);
    struct lockmgr_owner *c = lockmgr_owner_new(lm, 3, lmt_record, NULL);
    uint64_t t;
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, a, LMT_KEY("k"), R, LOCKMGR_SESSION, 0, 1, &t), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, b, LMT_KEY("k"), X, LOCKMGR_SESSION, 0, 2, &t),
                    LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, c, LMT_KEY("k"), R, LOCKMGR_SESSION, 0, 3, &t),
                    LOCKMGR_WAITING); /* behind b's exclusive request */
    CU_ASSERT_EQUAL(lockmgr_wait_victim(lm, a, 4), LOCKMGR_NOT_WAITING);
    lmt_reset();
    CU_ASSERT_EQUAL(lockmgr_wait_victim(lm, b, 5), LOCKMGR_OK);
    /* b's callback said DEADLOCK (no cycle), then c was granted */
    CU_ASSERT_EQUAL_FATAL(lmt_nevents, 2);
    CU_ASSERT_EQUAL(lmt_events[0].owner_id, 2);
    CU_ASSERT_EQUAL(lmt_events[0].status, LOCKMGR_DEADLOCK);
    CU_ASSERT_EQUAL(lmt_events[0].cycle_n, 0);
    CU_ASSERT_EQUAL(lmt_events[1].owner_id, 3);
    CU_ASSERT_EQUAL(lmt_events[1].status, LOCKMGR_OK);
    struct lockmgr_wait_info wi;
    CU_ASSERT_FALSE(lockmgr_owner_wait(lm, b, &wi));
    struct lockmgr_stats st;
    lockmgr_stats_get(lm, &st);
    CU_ASSERT_EQUAL(st.deadlocks, 1);
    CU_ASSERT_EQUAL(st.cancels, 0);
    CU_ASSERT_EQUAL(st.waiters, 0);
    /* b may wait again */
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, b, LMT_KEY("k"), X, LOCKMGR_SESSION, 0, 6, &t),
                    LOCKMGR_WAITING);
    lockmgr_free(lm);
}

/*
 * Random operations on few owners and keys: after every call, every waiting owner has at
 * least one edge (a wait nothing blocks would have been granted: no edge is missing) and
 * the graph of the edges has no cycle (lockmgr breaks every cycle: no edge is invented).
 */
#define NOWN 10
#define NKEY 3

static bool on_cycle(struct lockmgr *lm, struct lockmgr_owner **own, int start)
{
    /* iterative DFS over owners, colours: 0 new, 1 on the path, 2 done */
    int colour[NOWN] = {0};
    int stack[NOWN + 1], sp = 0;
    size_t next[NOWN] = {0};
    struct lockmgr_wait_edge e[2 * NOWN];
    stack[sp++] = start;
    colour[start] = 1;
    while (sp) {
        int v = stack[sp - 1];
        size_t n = lockmgr_wait_edges(lm, own[v], e, 2 * NOWN);
        if (next[v] >= n) {
            colour[v] = 2;
            sp--;
            continue;
        }
        int u = (int)e[next[v]++].blocker_id;
        if (colour[u] == 1)
            return true;
        if (colour[u] == 0) {
            colour[u] = 1;
            stack[sp++] = u;
        }
    }
    return false;
}

static void test_random_consistent(void)
{
    struct lockmgr *lm = lockmgr_new(NULL);
    struct lockmgr_owner *own[NOWN];
    for (int i = 0; i < NOWN; i++)
        own[i] = lockmgr_owner_new(lm, (uint64_t)i, NULL, NULL);
    static const char *keys[NKEY] = {"a", "b", "c"};
    unsigned seed = 12345;
    uint64_t now = 1;
    size_t waits_seen = 0, soft_seen = 0;
    for (int step = 0; step < 20000; step++, now++) {
        int i = rand_r(&seed) % NOWN;
        const char *k = keys[rand_r(&seed) % NKEY];
        uint64_t t;
        struct lockmgr_wait_info wi;
        switch (rand_r(&seed) % 6) {
        case 0:
        case 1:
        case 2:
            if (!lockmgr_owner_wait(lm, own[i], &wi)) {
                enum lockmgr_status st =
                    lockmgr_acquire(lm, own[i], k, 1, (enum lockmgr_mode)(rand_r(&seed) % 3),
                                    LOCKMGR_SESSION, 0, now, &t);
                CU_ASSERT(st == LOCKMGR_OK || st == LOCKMGR_WAITING || st == LOCKMGR_DEADLOCK);
            }
            break;
        case 3: lockmgr_release(lm, own[i], k, 1, LOCKMGR_SESSION, now); break;
        case 4: lockmgr_cancel_wait(lm, own[i], now); break;
        default: lockmgr_release_owner(lm, own[i], now); break;
        }
        struct lockmgr_wait_edge e[2 * NOWN];
        for (int j = 0; j < NOWN; j++) {
            if (!lockmgr_owner_wait(lm, own[j], &wi))
                continue;
            waits_seen++;
            size_t n = lockmgr_wait_edges(lm, own[j], e, 2 * NOWN);
            CU_ASSERT(n > 0);
            for (size_t x = 0; x < n && x < 2 * NOWN; x++) {
                CU_ASSERT(e[x].blocker_id != (uint64_t)j);
                soft_seen += e[x].soft;
            }
            if (on_cycle(lm, own, j)) {
                CU_FAIL("a cycle in the wait-for edges");
                step = 1 << 30;
                break;
            }
        }
    }
    CU_ASSERT(waits_seen > 1000);
    CU_ASSERT(soft_seen > 100);
    lockmgr_free(lm);
}

static const CU_TestInfo tests[] = {
    {"not_waiting", test_not_waiting},
    {"hard_and_soft", test_hard_and_soft},
    {"upgrade", test_upgrade},
    {"wait_victim", test_wait_victim},
    {"random_consistent", test_random_consistent},
    CU_TEST_INFO_NULL,
};

void lmt_register_edges(void)
{
    cunit_add_suite("edges", NULL, NULL, tests);
}
