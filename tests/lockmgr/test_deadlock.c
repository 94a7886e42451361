/*
 * test_deadlock.c: lockmgr/deadlock.c: the schedule specs in specs/ (deadlocks of 2, 3
 * and 10 owners, upgrade deadlocks, cycles through soft edges, long chains that are not
 * cycles, mixed read/write/exclusive queues), the cycle description, a replaced victim
 * policy and a 10^4-deep chain.
 */
#include <stdio.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "lmtest.h"

#define X    LOCKMGR_EXCLUSIVE
#define R    LOCKMGR_READ
#define SESS LOCKMGR_SESSION

static void run_spec(const char *name)
{
    char path[512], err[512] = "";
    snprintf(path, sizeof(path), "%s/%s.spec", LOCKMGR_SPEC_DIR, name);
    int rc = lmt_schedule_run(path, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "\n  %s: %s\n", path, err);
    CU_ASSERT_EQUAL(rc, 0);
}

#define SPEC_TEST(name)                                                                            \
    static void test_spec_##name(void)                                                             \
    {                                                                                              \
        run_spec(#name);                                                                           \
    }
SPEC_TEST(fifo)
SPEC_TEST(deadlock2)
SPEC_TEST(deadlock3)
SPEC_TEST(deadlock10)
SPEC_TEST(upgrade_deadlock)
SPEC_TEST(soft_cycle)
SPEC_TEST(chain_no_cycle)
SPEC_TEST(timeouts)
SPEC_TEST(scopes)
SPEC_TEST(mixed_queue)

/* The cycle names every edge: waiter, blocker, key, modes, hard or soft. */
static void test_cycle_description(void)
{
    struct lockmgr *lm = lockmgr_new(NULL);
    struct lockmgr_owner *a = lockmgr_owner_new(lm, 10, lmt_record, NULL);
    struct lockmgr_owner *b = lockmgr_owner_new(lm, 20, lmt_record, NULL);
    struct lockmgr_owner *c = lockmgr_owner_new(lm, 30, lmt_record, NULL);
    uint64_t t;
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, a, LMT_KEY("k1"), R, SESS, 0, 1, &t), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, b, LMT_KEY("k1"), X, SESS, 0, 2, &t), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, c, LMT_KEY("k2"), X, SESS, 0, 3, &t), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, c, LMT_KEY("k1"), R, SESS, 0, 4, &t), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, a, LMT_KEY("k2"), LOCKMGR_WRITE, SESS, 0, 5, &t),
                    LOCKMGR_DEADLOCK);
    const struct lockmgr_cycle *cy = lockmgr_last_cycle(lm);
    CU_ASSERT_EQUAL_FATAL(cy->n, 3);
    /* a waits for write on k2 held exclusive by c */
    CU_ASSERT_EQUAL(cy->edges[0].waiter_id, 10);
    CU_ASSERT_EQUAL(cy->edges[0].blocker_id, 30);
    CU_ASSERT_EQUAL(cy->edges[0].keylen, 2);
    CU_ASSERT_NSTRING_EQUAL(cy->edges[0].key, "k2", 2);
    CU_ASSERT_EQUAL(cy->edges[0].wanted, LOCKMGR_WRITE);
    CU_ASSERT_EQUAL(cy->edges[0].blocker_mode, X);
    CU_ASSERT(!cy->edges[0].soft);
    CU_ASSERT_EQUAL(cy->edges[0].wait_since_us, 5);
    /* c waits for read on k1 behind b's exclusive request (soft) */
    CU_ASSERT_EQUAL(cy->edges[1].waiter_id, 30);
    CU_ASSERT_EQUAL(cy->edges[1].blocker_id, 20);
    CU_ASSERT(cy->edges[1].soft);
    CU_ASSERT_EQUAL(cy->edges[1].blocker_mode, X);
    /* b waits for exclusive on k1 held read by a */
    CU_ASSERT_EQUAL(cy->edges[2].waiter_id, 20);
    CU_ASSERT_EQUAL(cy->edges[2].blocker_id, 10);
    CU_ASSERT_EQUAL(cy->edges[2].blocker_mode, R);
    CU_ASSERT(!cy->edges[2].soft);
    struct lockmgr_stats st;
    lockmgr_stats_get(lm, &st);
    CU_ASSERT_EQUAL(st.deadlocks, 1);
    CU_ASSERT_EQUAL(st.waiters, 2);
    lockmgr_free(lm);
}

/* A policy that picks the oldest waiter: exactly that one fails, the requester waits. */
static size_t oldest_victim(void *arg, const struct lockmgr_cycle *c)
{
    size_t best = 0;
    for (size_t i = 1; i < c->n; i++)
        if (c->edges[i].wait_seq < c->edges[best].wait_seq)
            best = i;
    (*(int *)arg)++;
    return best;
}

static void test_victim_policy(void)
{
    int calls = 0;
    struct lockmgr_config cfg = {.victim = oldest_victim, .victim_arg = &calls};
    struct lockmgr *lm = lockmgr_new(&cfg);
    struct lockmgr_owner *o[3];
    const char *keys[3] = {"a", "b", "c"};
    uint64_t t;
    for (int i = 0; i < 3; i++) {
        o[i] = lockmgr_owner_new(lm, (uint64_t)i, lmt_record, NULL);
        CU_ASSERT_EQUAL(lockmgr_acquire(lm, o[i], LMT_KEY(keys[i]), X, SESS, 0, 1, &t), LOCKMGR_OK);
    }
    lmt_reset();
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, o[0], LMT_KEY("b"), X, SESS, 0, 2, &t), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, o[1], LMT_KEY("c"), X, SESS, 0, 3, &t), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, o[2], LMT_KEY("a"), X, SESS, 0, 4, &t), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(calls, 1);
    CU_ASSERT_EQUAL_FATAL(lmt_nevents, 1);
    CU_ASSERT_EQUAL(lmt_events[0].owner_id, 0);
    CU_ASSERT_EQUAL(lmt_events[0].status, LOCKMGR_DEADLOCK);
    CU_ASSERT_EQUAL(lmt_events[0].cycle_n, 3);
    /* 0 is no longer waiting; once it disconnects, 2 gets a */
    lockmgr_owner_free(lm, o[0], 5);
    CU_ASSERT_EQUAL(lmt_nevents, 2);
    CU_ASSERT_EQUAL(lmt_events[1].owner_id, 2);
    CU_ASSERT_EQUAL(lmt_events[1].status, LOCKMGR_OK);
    lockmgr_free(lm);
}

/* The victim policy may free the requester's path: the requester is granted at once. */
static void test_victim_other_grants_requester(void)
{
    int calls = 0;
    struct lockmgr_config cfg = {.victim = oldest_victim, .victim_arg = &calls};
    struct lockmgr *lm = lockmgr_new(&cfg);
    struct lockmgr_owner *a = lockmgr_owner_new(lm, 1, lmt_record, NULL);
    struct lockmgr_owner *b = lockmgr_owner_new(lm, 2, lmt_record, NULL);
    struct lockmgr_owner *c = lockmgr_owner_new(lm, 3, lmt_record, NULL);
    uint64_t t;
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, a, LMT_KEY("k"), R, SESS, 0, 1, &t), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, b, LMT_KEY("k"), X, SESS, 0, 1, &t), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, c, LMT_KEY("j"), X, SESS, 0, 1, &t), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, c, LMT_KEY("k"), R, SESS, 0, 1, &t), LOCKMGR_WAITING);
    lmt_reset();
    /* a -> c (j) -> b (soft, k) -> a: the oldest waiter b goes, so c gets k, a waits */
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, a, LMT_KEY("j"), R, SESS, 0, 2, &t), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lmt_nevents, 2);
    CU_ASSERT_EQUAL(lmt_events[0].owner_id, 2);
    CU_ASSERT_EQUAL(lmt_events[0].status, LOCKMGR_DEADLOCK);
    CU_ASSERT_EQUAL(lmt_events[1].owner_id, 3);
    CU_ASSERT_EQUAL(lmt_events[1].status, LOCKMGR_OK);
    lockmgr_free(lm);
}

/* 10^4 owners in a chain: no false deadlock, and closing it is found (no depth cap). */
static void test_deep_chain(void)
{
    enum { N = 10000 };
    struct lockmgr *lm = lockmgr_new(NULL);
    static struct lockmgr_owner *o[N];
    char key[32];
    uint64_t t;
    for (int i = 0; i < N; i++) {
        o[i] = lockmgr_owner_new(lm, (uint64_t)i, lmt_record, NULL);
        snprintf(key, sizeof(key), "k%d", i);
        CU_ASSERT_EQUAL_FATAL(lockmgr_acquire(lm, o[i], LMT_KEY(key), X, SESS, 0, 1, &t),
                              LOCKMGR_OK);
    }
    for (int i = 0; i + 1 < N; i++) {
        snprintf(key, sizeof(key), "k%d", i + 1);
        CU_ASSERT_EQUAL_FATAL(lockmgr_acquire(lm, o[i], LMT_KEY(key), X, SESS, 0, 1, &t),
                              LOCKMGR_WAITING);
    }
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, o[N - 1], LMT_KEY("k0"), X, SESS, 0, 1, &t),
                    LOCKMGR_DEADLOCK);
    CU_ASSERT_EQUAL(lockmgr_last_cycle(lm)->n, N);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, o[N - 1], LMT_KEY("other"), X, SESS, 0, 1, &t), LOCKMGR_OK);
    /* releasing the tail grants one owner at a time down the chain */
    lmt_reset();
    lockmgr_release_owner(lm, o[N - 1], 2);
    CU_ASSERT_EQUAL(lmt_nevents, 1);
    CU_ASSERT_EQUAL(lmt_events[0].owner_id, N - 2);
    lockmgr_free(lm);
}

/* A ring of n owners: o[i] holds r<i> and waits for r<i+1>; o[n-1]'s request for r0
 * closes it.  Returns that request's status. */
static enum lockmgr_status ring(struct lockmgr *lm, struct lockmgr_owner **o, int n)
{
    char key[16];
    uint64_t t;
    for (int i = 0; i < n; i++) {
        o[i] = lockmgr_owner_new(lm, (uint64_t)(100 + i), lmt_record, NULL);
        snprintf(key, sizeof(key), "r%d", i);
        CU_ASSERT_EQUAL(lockmgr_acquire(lm, o[i], LMT_KEY(key), X, SESS, 0, 1, &t), LOCKMGR_OK);
    }
    for (int i = 0; i + 1 < n; i++) {
        snprintf(key, sizeof(key), "r%d", i + 1);
        CU_ASSERT_EQUAL(lockmgr_acquire(lm, o[i], LMT_KEY(key), X, SESS, 0, 2, &t),
                        LOCKMGR_WAITING);
    }
    return lockmgr_acquire(lm, o[n - 1], LMT_KEY("r0"), X, SESS, 0, 3, &t);
}

/* Detection describes edge 0 only; the head and the whole cycle are described on demand
 * and agree with each other, and the next change to lm ends the chance to ask. */
static void test_cycle_described_on_demand(void)
{
    enum { N = 50 };
    struct lockmgr *lm = lockmgr_new(NULL);
    struct lockmgr_owner *o[N];
    CU_ASSERT_EQUAL_FATAL(ring(lm, o, N), LOCKMGR_DEADLOCK);
    const struct lockmgr_cycle *head = lockmgr_last_cycle_head(lm, 5);
    CU_ASSERT_EQUAL_FATAL(head->n, N);
    CU_ASSERT_TRUE_FATAL(head->described >= 5 && head->described <= N);
    struct lockmgr_cycle_edge first[5];
    memcpy(first, head->edges, sizeof(first));
    /* edge 0: the requester o[N-1] waits for r0, held by o[0] */
    CU_ASSERT_EQUAL(first[0].waiter_id, 100 + N - 1);
    CU_ASSERT_EQUAL(first[0].blocker_id, 100);
    CU_ASSERT_EQUAL(first[0].keylen, 2);
    CU_ASSERT_EQUAL(memcmp(first[0].key, "r0", 2), 0);
    for (int i = 1; i < 5; i++) { /* then o[0] -> o[1] -> ... */
        CU_ASSERT_EQUAL(first[i].waiter_id, 100 + i - 1);
        CU_ASSERT_EQUAL(first[i].blocker_id, 100 + i);
        CU_ASSERT_EQUAL(first[i].blocker_mode, X);
        CU_ASSERT_FALSE(first[i].soft);
    }
    const struct lockmgr_cycle *all = lockmgr_last_cycle(lm);
    CU_ASSERT_EQUAL_FATAL(all->described, N);
    CU_ASSERT_EQUAL(memcmp(all->edges, first, sizeof(first)), 0); /* the head is unchanged */
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(all->edges[i].blocker_id, all->edges[(i + 1) % N].waiter_id);
        if (i > 0)
            CU_ASSERT_TRUE(all->edges[i].wait_seq < all->edges[0].wait_seq);
    }
    CU_ASSERT_EQUAL(all->edges[N - 1].waiter_id, 100 + N - 2);
    CU_ASSERT_EQUAL(all->edges[N - 1].blocker_id, 100 + N - 1);
    CU_ASSERT_EQUAL(lockmgr_last_cycle_head(lm, 3)->described, N); /* already written */
    /* Any change to lm forgets it, also one that touches none of the cycle's owners. */
    struct lockmgr_owner *x = lockmgr_owner_new(lm, 1, lmt_record, NULL);
    CU_ASSERT_EQUAL(lockmgr_last_cycle(lm)->n, 0);
    CU_ASSERT_EQUAL(lockmgr_last_cycle_head(lm, 4)->described, 0);
    lockmgr_owner_free(lm, x, 4);
    lockmgr_free(lm);

    /* Asked for the head only, then a change: nothing stale is described later. */
    lm = lockmgr_new(NULL);
    CU_ASSERT_EQUAL_FATAL(ring(lm, o, N), LOCKMGR_DEADLOCK);
    CU_ASSERT_EQUAL(lockmgr_last_cycle_head(lm, 2)->n, N);
    lockmgr_release_owner(lm, o[0], 5);
    CU_ASSERT_EQUAL(lockmgr_last_cycle(lm)->n, 0);
    lockmgr_free(lm);
}

/* A policy of the caller's reads every edge: they are all described before it runs. */
static size_t check_described(void *arg, const struct lockmgr_cycle *c)
{
    (*(int *)arg) += c->described == c->n && c->n == 50;
    for (size_t i = 0; i < c->n; i++)
        (*(int *)arg) += c->edges[i].blocker_id != c->edges[(i + 1) % c->n].waiter_id ? 1000 : 0;
    return 0;
}

static void test_victim_policy_sees_whole_cycle(void)
{
    int ok = 0;
    struct lockmgr_config cfg = {.victim = check_described, .victim_arg = &ok};
    struct lockmgr *lm = lockmgr_new(&cfg);
    struct lockmgr_owner *o[50];
    CU_ASSERT_EQUAL(ring(lm, o, 50), LOCKMGR_DEADLOCK);
    CU_ASSERT_EQUAL(ok, 1);
    lockmgr_free(lm);
}

static const CU_TestInfo tests[] = {
    {"spec_fifo", test_spec_fifo},
    {"spec_deadlock2", test_spec_deadlock2},
    {"spec_deadlock3", test_spec_deadlock3},
    {"spec_deadlock10", test_spec_deadlock10},
    {"spec_upgrade_deadlock", test_spec_upgrade_deadlock},
    {"spec_soft_cycle", test_spec_soft_cycle},
    {"spec_chain_no_cycle", test_spec_chain_no_cycle},
    {"spec_timeouts", test_spec_timeouts},
    {"spec_scopes", test_spec_scopes},
    {"spec_mixed_queue", test_spec_mixed_queue},
    {"cycle_description", test_cycle_description},
    {"victim_policy", test_victim_policy},
    {"victim_other_grants_requester", test_victim_other_grants_requester},
    {"deep_chain", test_deep_chain},
    {"cycle_described_on_demand", test_cycle_described_on_demand},
    {"victim_policy_sees_whole_cycle", test_victim_policy_sees_whole_cycle},
    CU_TEST_INFO_NULL,
};

void lmt_register_deadlock(void)
{
    cunit_add_suite("deadlock", NULL, NULL, tests);
}
