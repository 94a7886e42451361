/*
 * test_waits.c: lockmgr/waits.c: deadlines and lockmgr_expire, lockmgr_next_deadline,
 * cancel, and callback delivery (ordering, re-entrancy, freeing inside a callback).
 */
#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "lmtest.h"

#define R    LOCKMGR_READ
#define W    LOCKMGR_WRITE
#define X    LOCKMGR_EXCLUSIVE
#define SESS LOCKMGR_SESSION

static struct lockmgr *lm;
static struct lockmgr_owner *ow[8];
static uint64_t tok;

static void setup(lockmgr_wait_cb cb)
{
    lm = lockmgr_new(NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(lm);
    for (int i = 0; i < 8; i++) {
        ow[i] = lockmgr_owner_new(lm, (uint64_t)i, cb, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(ow[i]);
    }
    lmt_reset();
}

static enum lockmgr_status acq(int o, const char *key, enum lockmgr_mode m, uint64_t deadline,
                               uint64_t now)
{
    return lockmgr_acquire(lm, ow[o], LMT_KEY(key), m, SESS, deadline, now, &tok);
}

static void test_timeout(void)
{
    setup(lmt_record);
    CU_ASSERT_EQUAL(lockmgr_next_deadline(lm), UINT64_MAX);
    CU_ASSERT_EQUAL(acq(0, "k", R, 0, 100), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(1, "k", X, 5000, 100), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(2, "k", R, 9000, 100), LOCKMGR_WAITING); /* behind the exclusive */
    CU_ASSERT_EQUAL(acq(3, "j", R, 0, 100), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_next_deadline(lm), 5000);
    CU_ASSERT_EQUAL(lockmgr_expire(lm, 4999), 0);
    CU_ASSERT_EQUAL(lmt_nevents, 0);
    CU_ASSERT_EQUAL(lockmgr_expire(lm, 5000), 1);
    CU_ASSERT_EQUAL(lmt_nevents, 2); /* 1 timed out, then 2 granted behind it */
    CU_ASSERT_EQUAL(lmt_events[0].owner_id, 1);
    CU_ASSERT_EQUAL(lmt_events[0].status, LOCKMGR_TIMEOUT);
    CU_ASSERT_EQUAL(lmt_events[1].owner_id, 2);
    CU_ASSERT_EQUAL(lmt_events[1].status, LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_next_deadline(lm), UINT64_MAX);
    CU_ASSERT_EQUAL(acq(1, "k", X, 100, 100), LOCKMGR_TIMEOUT); /* deadline already past */
    CU_ASSERT_EQUAL(acq(1, "k", R, 100, 100), LOCKMGR_OK);      /* grantable: no timeout */
    lockmgr_free(lm);
}

/* Many deadlines: expiry in deadline order, heap stays consistent under cancels. */
static void test_deadline_order(void)
{
    setup(lmt_record);
    CU_ASSERT_EQUAL(acq(0, "k", X, 0, 0), LOCKMGR_OK);
    const uint64_t dl[7] = {700, 300, 500, 100, 600, 200, 400};
    for (int i = 1; i < 8; i++)
        CU_ASSERT_EQUAL(acq(i, "k", X, dl[i - 1], 0), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_next_deadline(lm), 100);
    CU_ASSERT_EQUAL(lockmgr_cancel_wait(lm, ow[4], 0), LOCKMGR_OK); /* deadline 100 */
    CU_ASSERT_EQUAL(lockmgr_cancel_wait(lm, ow[4], 0), LOCKMGR_NOT_WAITING);
    CU_ASSERT_EQUAL(lockmgr_next_deadline(lm), 200);
    CU_ASSERT_EQUAL(lockmgr_expire(lm, 1000), 6);
    const uint64_t order[6] = {6, 2, 7, 3, 5, 1};
    CU_ASSERT_EQUAL_FATAL(lmt_nevents, 6);
    for (int i = 0; i < 6; i++) {
        CU_ASSERT_EQUAL(lmt_events[i].owner_id, order[i]);
        CU_ASSERT_EQUAL(lmt_events[i].status, LOCKMGR_TIMEOUT);
    }
    lockmgr_free(lm);
}

/* Cancel removes the wait without a callback and lets later waiters through. */
static void test_cancel(void)
{
    setup(lmt_record);
    CU_ASSERT_EQUAL(acq(0, "k", R, 0, 0), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(1, "k", X, 0, 0), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(2, "k", R, 0, 0), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(3, "k", W, 0, 0), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_cancel_wait(lm, ow[1], 0), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lmt_nevents, 2);
    CU_ASSERT_EQUAL(lmt_events[0].owner_id, 2);
    CU_ASSERT_EQUAL(lmt_events[1].owner_id, 3);
    lockmgr_free(lm);
}

/* A callback that releases at once: grants chain through re-entrant calls. */
static int chain_calls;
static void chain_cb(struct lockmgr_owner *o, void *udata, const struct lockmgr_result *res)
{
    lmt_record(o, udata, res);
    chain_calls++;
    CU_ASSERT_EQUAL(res->status, LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_release(lm, o, LMT_KEY("k"), SESS, 1), LOCKMGR_OK);
}

static void test_reentrant_callbacks(void)
{
    setup(chain_cb);
    CU_ASSERT_EQUAL(acq(0, "k", X, 0, 0), LOCKMGR_OK);
    for (int i = 1; i < 8; i++)
        CU_ASSERT_EQUAL(acq(i, "k", X, 0, 0), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_release(lm, ow[0], LMT_KEY("k"), SESS, 1), LOCKMGR_OK);
    CU_ASSERT_EQUAL(chain_calls, 7);
    for (int i = 0; i < 7; i++)
        CU_ASSERT_EQUAL(lmt_events[i].owner_id, (uint64_t)i + 1);
    struct lockmgr_stats st;
    lockmgr_stats_get(lm, &st);
    CU_ASSERT_EQUAL(st.keys, 0);
    CU_ASSERT_EQUAL(st.waiters, 0);
    lockmgr_free(lm);
}

/* A callback may free its own owner (the proxy's client is gone). */
static void free_cb(struct lockmgr_owner *o, void *udata, const struct lockmgr_result *res)
{
    lmt_record(o, udata, res);
    lockmgr_owner_free(lm, o, 1);
}

static void test_free_in_callback(void)
{
    setup(free_cb);
    CU_ASSERT_EQUAL(acq(0, "k", W, 0, 0), LOCKMGR_OK);
    CU_ASSERT_EQUAL(acq(1, "k", W, 0, 0), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(2, "k", W, 50, 0), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(acq(3, "k", W, 0, 0), LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_expire(lm, 60), 1); /* 2 times out and frees itself */
    CU_ASSERT_EQUAL(lockmgr_release(lm, ow[0], LMT_KEY("k"), SESS, 1), LOCKMGR_OK);
    /* 1 is granted and frees itself in the callback, which grants 3, which frees too */
    CU_ASSERT_EQUAL(lmt_nevents, 3);
    struct lockmgr_stats st;
    lockmgr_stats_get(lm, &st);
    CU_ASSERT_EQUAL(st.owners, 5);
    CU_ASSERT_EQUAL(st.keys, 0);
    lockmgr_free(lm);
}

static const CU_TestInfo tests[] = {
    {"timeout", test_timeout},
    {"deadline_order", test_deadline_order},
    {"cancel", test_cancel},
    {"reentrant_callbacks", test_reentrant_callbacks},
    {"free_in_callback", test_free_in_callback},
    CU_TEST_INFO_NULL,
};

void lmt_register_waits(void)
{
    cunit_add_suite("waits", NULL, NULL, tests);
}
