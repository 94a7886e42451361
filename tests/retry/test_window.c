/*
 * test_window.c: tests of retry/window.c, the sliding window under the budget and the
 * breaker (internal: retry_int.h).
 */
#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "retry_int.h"
#include "test_retry.h"

static void test_buckets_expire_one_by_one(void)
{
    struct retry_window w;
    retry_window_init(&w, 10 * SEC, 10);
    for (int s = 0; s < 10; s++)
        retry_window_add(&w, s * SEC, s + 1, 1);
    CU_ASSERT_EQUAL(w.sum_a, 55);
    CU_ASSERT_EQUAL(w.sum_b, 10);
    retry_window_advance(&w, 10 * SEC); /* bucket of second 0 leaves */
    CU_ASSERT_EQUAL(w.sum_a, 54);
    retry_window_advance(&w, 12 * SEC + 999 * MS); /* seconds 1 and 2 leave */
    CU_ASSERT_EQUAL(w.sum_a, 54 - 2 - 3);
    CU_ASSERT_EQUAL(w.sum_b, 7);
}

static void test_idle_clears(void)
{
    struct retry_window w;
    retry_window_init(&w, 1 * SEC, 20);
    retry_window_add(&w, 5 * SEC, 3, 3);
    retry_window_advance(&w, 500 * SEC);
    CU_ASSERT_EQUAL(w.sum_a, 0);
    CU_ASSERT_EQUAL(w.sum_b, 0);
    retry_window_add(&w, 500 * SEC, 1, 0);
    CU_ASSERT_EQUAL(w.sum_a, 1);
}

static void test_backwards_time_is_current_bucket(void)
{
    struct retry_window w;
    retry_window_init(&w, 10 * SEC, 10);
    retry_window_add(&w, 5 * SEC, 1, 0);
    retry_window_add(&w, 4 * SEC, 1, 0);
    CU_ASSERT_EQUAL(w.sum_a, 2);
    retry_window_clear(&w);
    CU_ASSERT_EQUAL(w.sum_a, 0);
    CU_ASSERT_EQUAL(w.nbuckets, 10);
    CU_ASSERT_EQUAL(w.bucket_us, 1 * SEC);
}

static void test_tiny_window(void)
{
    struct retry_window w;
    retry_window_init(&w, 5, 10); /* shorter than one microsecond per bucket */
    CU_ASSERT_EQUAL(w.bucket_us, 1);
    retry_window_add(&w, 0, 1, 1);
    retry_window_advance(&w, 100);
    CU_ASSERT_EQUAL(w.sum_a, 0);
}

static const CU_TestInfo tests[] = {
    {"buckets_expire_one_by_one", test_buckets_expire_one_by_one},
    {"idle_clears", test_idle_clears},
    {"backwards_time_is_current_bucket", test_backwards_time_is_current_bucket},
    {"tiny_window", test_tiny_window},
    CU_TEST_INFO_NULL,
};

void register_window_suite(void)
{
    cunit_add_suite("window", NULL, NULL, tests);
}
