/*
 * test_snapshot.c: lockmgr/snapshot.c and the counters: rows, filters, stability.
 */
#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "lmtest.h"

#define R LOCKMGR_READ
#define W LOCKMGR_WRITE
#define X LOCKMGR_EXCLUSIVE

static const struct lockmgr_snap_key *find_key(const struct lockmgr_snapshot *s, const char *k)
{
    for (size_t i = 0; i < s->nkeys; i++)
        if (s->keys[i].keylen == strlen(k) && memcmp(s->keys[i].key, k, strlen(k)) == 0)
            return &s->keys[i];
    return NULL;
}

static void test_snapshot(void)
{
    struct lockmgr *lm = lockmgr_new(NULL);
    int tag = 7;
    struct lockmgr_owner *a = lockmgr_owner_new(lm, 1, lmt_record, &tag);
    struct lockmgr_owner *b = lockmgr_owner_new(lm, 2, lmt_record, NULL);
    struct lockmgr_owner *c = lockmgr_owner_new(lm, 3, lmt_record, NULL);
    uint64_t t, ta;
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, a, LMT_KEY("k"), R, LOCKMGR_SESSION, 0, 10, &t),
                    LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, a, LMT_KEY("k"), W, LOCKMGR_XACT, 0, 20, &ta), LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, b, LMT_KEY("k"), R, LOCKMGR_SESSION, 0, 30, &t),
                    LOCKMGR_OK);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, c, LMT_KEY("k"), X, LOCKMGR_XACT, 500, 40, &t),
                    LOCKMGR_WAITING);
    CU_ASSERT_EQUAL(lockmgr_acquire(lm, b, LMT_KEY("j"), X, LOCKMGR_SESSION, 0, 50, &t),
                    LOCKMGR_OK);

    struct lockmgr_snapshot *s = lockmgr_snapshot(lm, NULL, NULL, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL(s->nkeys, 2);
    CU_ASSERT_EQUAL(s->nholders, 4);
    CU_ASSERT_EQUAL(s->nwaiters, 1);
    /* the snapshot stays valid while lm changes */
    lockmgr_release_owner(lm, a, 60);
    lockmgr_release_owner(lm, b, 60);
    const struct lockmgr_snap_key *k = find_key(s, "k");
    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    CU_ASSERT_EQUAL(k->nholders, 3);
    CU_ASSERT_EQUAL(k->nwaiters, 1);
    int seen = 0;
    for (size_t i = 0; i < k->nholders; i++) {
        const struct lockmgr_snap_holder *h = &k->holders[i];
        if (h->owner_id == 1 && h->scope == LOCKMGR_XACT) {
            CU_ASSERT_EQUAL(h->mode, W);
            CU_ASSERT_EQUAL(h->token, ta);
            CU_ASSERT_EQUAL(h->since_us, 20);
            CU_ASSERT_PTR_EQUAL(h->udata, &tag);
            seen++;
        }
        if (h->owner_id == 1 && h->scope == LOCKMGR_SESSION) {
            CU_ASSERT_EQUAL(h->mode, R);
            seen++;
        }
    }
    CU_ASSERT_EQUAL(seen, 2);
    CU_ASSERT_EQUAL(k->waiters[0].owner_id, 3);
    CU_ASSERT_EQUAL(k->waiters[0].mode, X);
    CU_ASSERT_EQUAL(k->waiters[0].scope, LOCKMGR_XACT);
    CU_ASSERT_EQUAL(k->waiters[0].since_us, 40);
    CU_ASSERT_EQUAL(k->waiters[0].deadline_us, 500);
    CU_ASSERT(!k->waiters[0].upgrade);
    lockmgr_snapshot_free(s);

    /* c was granted by the releases; filters by owner and by key */
    s = lockmgr_snapshot(lm, c, NULL, 0);
    CU_ASSERT_EQUAL(s->nkeys, 1);
    CU_ASSERT_EQUAL(s->nholders, 1);
    lockmgr_snapshot_free(s);
    s = lockmgr_snapshot(lm, NULL, LMT_KEY("j"));
    CU_ASSERT_EQUAL(s->nkeys, 0);
    lockmgr_snapshot_free(s);
    s = lockmgr_snapshot(lm, NULL, LMT_KEY("k"));
    CU_ASSERT_EQUAL(s->nkeys, 1);
    CU_ASSERT_EQUAL(s->keys[0].holders[0].owner_id, 3);
    lockmgr_snapshot_free(s);

    struct lockmgr_stats st;
    lockmgr_stats_get(lm, &st);
    CU_ASSERT_EQUAL(st.owners, 3);
    CU_ASSERT_EQUAL(st.keys, 1);
    CU_ASSERT_EQUAL(st.locks, 1);
    CU_ASSERT_EQUAL(st.held_by_mode[X], 1);
    CU_ASSERT_EQUAL(st.grants, 5);
    CU_ASSERT_EQUAL(st.waits, 1);
    lockmgr_free(lm);
}

static const CU_TestInfo tests[] = {
    {"snapshot", test_snapshot},
    CU_TEST_INFO_NULL,
};

void lmt_register_snapshot(void)
{
    cunit_add_suite("snapshot", NULL, NULL, tests);
}
