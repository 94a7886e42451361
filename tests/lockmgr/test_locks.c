/*
 * test_locks.c: grant and release rules of lockmgr/locks.c: the compatibility matrix,
 * FIFO fairness, re-requests, upgrades, scopes, release by owner, max_locks and fencing
 * tokens.
 */
#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "lmtest.h"

#define R    LOCKMGR_READ
#define W    LOCKMGR_WRITE
#define X    LOCKMGR_EXCLUSIVE
#define SESS LOCKMGR_SESSION
#define XACT LOCKMGR_XACT

static struct lockmgr *lm;
static struct lockmgr_owner *ow[16];
static uint64_t tok;

static void setup(const struct lockmgr_config *cfg)
{
    lm = lockmgr_new(cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(lm);
    for (int i = 0; i < 16; i++) {
        ow[i] = lockmgr_owner_new(lm, (uint64_t)i, lmt_record, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(ow[i]);
    }
    lmt_reset();
}

static void teardown(void)
{
    lockmgr_free(lm);
    lm = NULL;
}

static enum lockmgr_status acq(int o, const char *key, enum lockmgr_mode m)
{
    return lockmgr_acquire(lm, ow[o], LMT_KEY(key), m, SESS, 0, 1, &tok);
}

static enum lockmgr_status try_(int o, const char *key, enum lockmgr_mode m)
{
    return lockmgr_try_acquire(lm, ow[o], LMT_KEY(key), m, SESS, 1, &tok);
}

static enum lockmgr_status rel(int o, const char *key)
{
    return lockmgr_release(lm, ow[o], LMT_KEY(key), SESS, 2);
}

/* SPEC section 2: yes = may be held at the same time by different clients. */
static const int spec_compatible[3][3] = {{1, 1, 0}, {1, 0, 0}, {0, 0, 0}};

static void test_matrix(void)
{
    for (int held = 0; held < 3; held++) {
        for (int req = 0; req < 3; req++) {
            /* both orders: held then requested, and requested then held */
            for (int order = 0; order < 2; order++) {
                int first = order ? req : held, second = order ? held : req;
                setup(NULL);
                CU_ASSERT_EQUAL(acq(0, "k", first), LOCKMGR_OK);
                enum lockmgr_status want =
                    spec_compatible[first][second] ? LOCKMGR_OK : LOCKMGR_WOULD_BLOCK;
                CU_ASSERT_EQUAL(try_(1, "k", second), want);
                if (want == LOCKMGR_OK)
                    CU_ASSERT_EQUAL(rel(1, "k"), LOCKMGR_OK);
                want = spec_compatible[first][second] ? LOCKMGR_OK : LOCKMGR_WAITING;
                CU_ASSERT_EQUAL(acq(2, "k", second), want);
                teardown();
            }
        }
    }
}

/* A waiting exclusive is not starved by a stream of readers. */
static void test_fifo_writer_not_starved(void)
{
    setup(NULL);
    CU_ASSERT_EQUAL(acq(0, "k", R), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(1, "k", X), LOCKMGR_WAITING);
    for (int i = 2; i < 8; i++)
        CU_ASSERT_EQUAL(acq(i, "k", R), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(try_(9, "k", R), LOCKMGR_WOULD_BLOCK);
    CU_ASSERT_EQUAL(rel(0, "k"), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lmt_nevents, 1);
    CU_ASSERT_EQUAL(lmt_events[0].owner_id, 1);
    CU_ASSERT_EQUAL(lmt_events[0].status, LOCKMGR_OK);
    lmt_reset();
    CU_ASSERT_EQUAL(rel(1, "k"), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lmt_nevents, 6); /* all readers together, nobody else */
    for (size_t i = 0; i < lmt_nevents; i++)
        CU_ASSERT_EQUAL(lmt_events[i].owner_id, i + 2);
    teardown();
}

/* Readers and one writer share; a second writer waits and blocks later readers. */
static void test_fifo_writer_queue(void)
{
    setup(NULL);
    CU_ASSERT_EQUAL(acq(0, "k", R), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(1, "k", W), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(2, "k", W), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(3, "k", R), LOCKMGR_OK); /* read conflicts with no write */
    CU_ASSERT_EQUAL(acq(4, "k", X), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(5, "k", R), LOCKMGR_WAITING); /* behind the exclusive */
    CU_ASSERT_EQUAL(rel(0, "k"), LOCKMGR_OK);
    CU_ASSERT_EQUAL(rel(3, "k"), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lmt_nevents, 0);
    CU_ASSERT_EQUAL(rel(1, "k"), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lmt_nevents, 1);
    CU_ASSERT_EQUAL(lmt_events[0].owner_id, 2);
    CU_ASSERT_EQUAL(rel(2, "k"), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lmt_nevents, 2);
    CU_ASSERT_EQUAL(lmt_events[1].owner_id, 4);
    CU_ASSERT_EQUAL(rel(4, "k"), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lmt_nevents, 3);
    CU_ASSERT_EQUAL(lmt_events[2].owner_id, 5);
    teardown();
}

static void test_rerequest(void)
{
    setup(NULL);
    CU_ASSERT_EQUAL(acq(0, "k", W), LOCKMGR_OK);
    uint64_t t0 = tok;
    CU_ASSERT_EQUAL(acq(1, "k", W), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(0, "k", R), LOCKMGR_OK); /* weaker: at once, same token */
    CU_ASSERT_EQUAL(tok, t0);
    CU_ASSERT_EQUAL(acq(0, "k", W), LOCKMGR_OK);
    CU_ASSERT_EQUAL(tok, t0);
    CU_ASSERT_EQUAL(try_(0, "k", W), LOCKMGR_OK);
    CU_ASSERT_EQUAL(tok, t0);
    CU_ASSERT_EQUAL(rel(0, "k"), LOCKMGR_OK); /* no stacking: one unlock releases */
    CU_ASSERT_EQUAL(rel(0, "k"), LOCKMGR_NOT_HELD);
    CU_ASSERT_EQUAL(lmt_nevents, 1);
    CU_ASSERT(lmt_events[0].token > t0);
    struct lockmgr_stats st;
    lockmgr_stats_get(lm, &st);
    CU_ASSERT_EQUAL(st.bypass_reentry, 2);
    teardown();
}

/* An upgrade waits only for other holders and goes ahead of waiters holding nothing. */
static void test_upgrade(void)
{
    setup(NULL);
    CU_ASSERT_EQUAL(acq(0, "k", R), LOCKMGR_OK);
    uint64_t t0 = tok;
    CU_ASSERT_EQUAL(acq(1, "k", R), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(2, "k", X), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(0, "k", W), LOCKMGR_OK); /* compatible with 1's read: at once */
    CU_ASSERT(tok > t0);
    t0 = tok;
    CU_ASSERT_EQUAL(acq(0, "k", X), LOCKMGR_WAITING); /* waits for 1 only */
    CU_ASSERT_EQUAL(acq(3, "k", R), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(rel(1, "k"), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lmt_nevents, 1);
    CU_ASSERT_EQUAL(lmt_events[0].owner_id, 0);
    CU_ASSERT(lmt_events[0].token > t0);
    CU_ASSERT_EQUAL(rel(0, "k"), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lmt_nevents, 2);
    CU_ASSERT_EQUAL(lmt_events[1].owner_id, 2);
    struct lockmgr_stats st;
    lockmgr_stats_get(lm, &st);
    CU_ASSERT_EQUAL(st.bypass_upgrade, 1);
    teardown();
}

/* Releasing the lock an upgrade waits on cancels the upgrade wait. */
static void test_upgrade_cancelled_by_release(void)
{
    setup(NULL);
    CU_ASSERT_EQUAL(acq(0, "k", R), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(1, "k", R), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(0, "k", X), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(2, "k", W), LOCKMGR_WAITING); /* behind the upgrade */
    CU_ASSERT_EQUAL(rel(0, "k"), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lmt_nevents, 2);
    CU_ASSERT_EQUAL(lmt_events[0].owner_id, 0);
    CU_ASSERT_EQUAL(lmt_events[0].status, LOCKMGR_CANCELED);
    CU_ASSERT_EQUAL(lmt_events[1].owner_id, 2);
    CU_ASSERT_EQUAL(lmt_events[1].status, LOCKMGR_OK);
    teardown();
}

/* A grant taken back (lockmgr_hold_restore): a failed upgrade keeps the mode and token held
 * before, in its scope; a failed first grant releases; the lower mode lets waiters in. */
static void test_hold_restore(void)
{
    setup(NULL);
    struct lockmgr_hold_mark m;
    CU_ASSERT_EQUAL(acq(0, "k", R), LOCKMGR_OK);
    uint64_t t0 = tok;
    lockmgr_hold_mark(lm, ow[0], LMT_KEY("k"), &m);
    CU_ASSERT(m.held && m.smode[SESS] == R + 1 && m.smode[XACT] == 0 && m.token == t0);
    CU_ASSERT_EQUAL(acq(0, "k", W), LOCKMGR_OK); /* the upgrade */
    CU_ASSERT(tok > t0);
    CU_ASSERT_EQUAL(acq(1, "k", W), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_hold_restore(lm, ow[0], LMT_KEY("k"), &m, 3), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lmt_nevents, 1); /* read and write are compatible: 1 goes */
    CU_ASSERT_EQUAL(lmt_events[0].owner_id, 1);
    CU_ASSERT_EQUAL(acq(0, "k", R), LOCKMGR_OK); /* still held, with its token */
    CU_ASSERT_EQUAL(tok, t0);
    CU_ASSERT_EQUAL(try_(2, "k", X), LOCKMGR_WOULD_BLOCK);
    /* in the other scope: the transaction hold goes, the session read stays */
    CU_ASSERT_EQUAL(rel(1, "k"), LOCKMGR_OK);
    lockmgr_hold_mark(lm, ow[0], LMT_KEY("k"), &m);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, ow[0], LMT_KEY("k"), X, XACT, 0, 1, &tok), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_hold_restore(lm, ow[0], LMT_KEY("k"), &m, 4), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_release(lm, ow[0], LMT_KEY("k"), XACT, 4), LOCKMGR_NOT_HELD);
    CU_ASSERT_EQUAL(try_(2, "k", W), LOCKMGR_OK);
    /* a first grant taken back is released */
    lockmgr_hold_mark(lm, ow[3], LMT_KEY("k"), &m);
    CU_ASSERT_FALSE(m.held);
    CU_ASSERT_EQUAL(acq(3, "k", R), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_hold_restore(lm, ow[3], LMT_KEY("k"), &m, 5), LOCKMGR_OK);
    CU_ASSERT_EQUAL(rel(3, "k"), LOCKMGR_NOT_HELD);
    CU_ASSERT_EQUAL(lockmgr_hold_restore(lm, ow[3], LMT_KEY("k"), &m, 5), LOCKMGR_NOT_HELD);
    teardown();
}

static void test_try(void)
{
    setup(NULL);
    CU_ASSERT_EQUAL(try_(0, "k", X), LOCKMGR_OK);
    CU_ASSERT_EQUAL(try_(1, "k", R), LOCKMGR_WOULD_BLOCK);
    CU_ASSERT_EQUAL(try_(0, "other", R), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(2, "k", R), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(try_(3, "k", R), LOCKMGR_WOULD_BLOCK);
    CU_ASSERT_EQUAL(rel(0, "k"), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lmt_nevents, 1);
    CU_ASSERT_EQUAL(lmt_events[0].owner_id, 2);
    teardown();
}

/* Session and transaction holds of one key: the stronger governs; COMMIT drops xact. */
static void test_scopes(void)
{
    setup(NULL);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, ow[0], LMT_KEY("k"), R, SESS, 0, 1, &tok), LOCKMGR_OK);
    uint64_t t0 = tok;
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, ow[0], LMT_KEY("k"), X, XACT, 0, 1, &tok), LOCKMGR_OK);
    CU_ASSERT(tok > t0);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, ow[0], LMT_KEY("j"), W, XACT, 0, 1, &tok), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(1, "k", R), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(2, "j", R), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(3, "j", W), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_release_scope(lm, ow[0], XACT, 3), 2);
    CU_ASSERT_EQUAL(lmt_nevents, 2); /* 1 now shares k with 0's session read; 3 gets j */
    CU_ASSERT(lmt_find(1) >= 0 && lmt_find(3) >= 0);
    CU_ASSERT_EQUAL(lockmgr_release(lm, ow[0], LMT_KEY("k"), XACT, 4), LOCKMGR_NOT_HELD);
    CU_ASSERT_EQUAL(lockmgr_release_scope(lm, ow[0], SESS, 4), 1);
    CU_ASSERT_EQUAL(lockmgr_release_scope(lm, ow[0], SESS, 4), 0);
    teardown();
}

/* Disconnect releases everything and wakes exactly the waiters that can now go. */
static void test_release_owner(void)
{
    setup(NULL);
    CU_ASSERT_EQUAL(acq(0, "a", X), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(0, "b", W), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(4, "c", X), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(1, "a", R), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(2, "b", W), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(3, "b", R), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(0, "c", R), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(5, "a", X), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_release_owner(lm, ow[0], 5), 2);
    CU_ASSERT_EQUAL(lmt_nevents, 2); /* 1 and 2; not 5 (behind 1), not 0 (gone) */
    CU_ASSERT(lmt_find(1) >= 0 && lmt_find(2) >= 0);
    CU_ASSERT_EQUAL(lockmgr_cancel_wait(lm, ow[0], 5), LOCKMGR_NOT_WAITING);
    lockmgr_owner_free(lm, ow[1], 6);
    CU_ASSERT_EQUAL(lmt_nevents, 3);
    CU_ASSERT_EQUAL(lmt_events[2].owner_id, 5);
    teardown();
}

static void test_max_locks(void)
{
    struct lockmgr_config cfg = {.max_locks = 2};
    setup(&cfg);
    CU_ASSERT_EQUAL(acq(0, "a", X), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(1, "a", X), LOCKMGR_WAITING); /* a queued request counts */
    CU_ASSERT_EQUAL(acq(2, "b", R), LOCKMGR_LIMIT);
    CU_ASSERT_EQUAL(try_(2, "b", R), LOCKMGR_LIMIT);
    CU_ASSERT_EQUAL(acq(0, "a", R), LOCKMGR_OK); /* re-request needs no new slot */
    CU_ASSERT_EQUAL(lockmgr_cancel_wait(lm, ow[1], 2), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(2, "b", R), LOCKMGR_OK);
    struct lockmgr_stats st;
    lockmgr_stats_get(lm, &st);
    CU_ASSERT_EQUAL(st.limit_hits, 2);
    CU_ASSERT_EQUAL(st.locks, 2);
    teardown();
}

static void test_tokens_restart(void)
{
    uint64_t last[4] = {0};
    const char *keys[4] = {"a", "b", "c", "d"};
    for (uint64_t epoch = 1; epoch <= 3; epoch++) {
        struct lockmgr_config cfg = {.token_floor = epoch << 40,
                                     .token_ceiling = ((epoch + 1) << 40) - 1};
        setup(&cfg);
        for (int round = 0; round < 50; round++) {
            int k = round % 4;
            CU_ASSERT_EQUAL(acq(round % 3, keys[k], (enum lockmgr_mode)(round % 3)), LOCKMGR_OK);
            CU_ASSERT(tok > last[k]);
            last[k] = tok;
            CU_ASSERT_EQUAL(rel(round % 3, keys[k]), LOCKMGR_OK);
        }
        CU_ASSERT_EQUAL(lockmgr_token_last(lm), (epoch << 40) + 50);
        teardown(); /* "restart" */
    }
    struct lockmgr_config cfg = {.token_floor = 10, .token_ceiling = 11};
    setup(&cfg);
    CU_ASSERT_EQUAL(acq(0, "a", R), LOCKMGR_OK);
    CU_ASSERT_EQUAL(tok, 11);
    CU_ASSERT_EQUAL(acq(1, "a", R), LOCKMGR_TOKENS_EXHAUSTED);
    CU_ASSERT_EQUAL(acq(0, "a", R), LOCKMGR_OK); /* re-request: no new token */
    teardown();
}

static void test_invalid_and_busy(void)
{
    setup(NULL);
    char big[LOCKMGR_KEY_MAX + 1];
    memset(big, 'k', sizeof(big));
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, ow[0], big, 0, R, SESS, 0, 1, &tok), LOCKMGR_INVALID);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, ow[0], big, sizeof(big), R, SESS, 0, 1, &tok),
                    LOCKMGR_INVALID);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, ow[0], big, LOCKMGR_KEY_MAX, R, SESS, 0, 1, &tok),
                    LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, ow[0], "k", 1, (enum lockmgr_mode)3, SESS, 0, 1, &tok),
                    LOCKMGR_INVALID);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, ow[0], "k", 1, R, (enum lockmgr_scope)2, 0, 1, &tok),
                    LOCKMGR_INVALID);
    CU_ASSERT_EQUAL(acq(1, "k", X), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(0, "k", R), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(0, "j", R), LOCKMGR_BUSY);
    CU_ASSERT_EQUAL(rel(0, "j"), LOCKMGR_NOT_HELD);
    enum lockmgr_mode m;
    CU_ASSERT(lockmgr_mode_parse("EXCLUSIVE", 9, &m) && m == X);
    CU_ASSERT(lockmgr_mode_parse("Read", 4, &m) && m == R);
    CU_ASSERT(!lockmgr_mode_parse("share", 5, &m));
    CU_ASSERT_STRING_EQUAL(lockmgr_mode_name(W), "write");
    CU_ASSERT_STRING_EQUAL(lockmgr_strerror(LOCKMGR_DEADLOCK), "deadlock detected");
    teardown();
}

static const CU_TestInfo tests[] = {
    {"matrix", test_matrix},
    {"fifo_writer_not_starved", test_fifo_writer_not_starved},
    {"fifo_writer_queue", test_fifo_writer_queue},
    {"rerequest", test_rerequest},
    {"upgrade", test_upgrade},
    {"upgrade_cancelled_by_release", test_upgrade_cancelled_by_release},
    {"hold_restore", test_hold_restore},
    {"try", test_try},
    {"scopes", test_scopes},
    {"release_owner", test_release_owner},
    {"max_locks", test_max_locks},
    {"tokens_restart", test_tokens_restart},
    {"invalid_and_busy", test_invalid_and_busy},
    CU_TEST_INFO_NULL,
};

void lmt_register_locks(void)
{
    cunit_add_suite("locks", NULL, NULL, tests);
}
