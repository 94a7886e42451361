/*
 * test_config.c: tests of retry/config.c: defaults are valid and as documented, and each
 * out-of-range value is refused naming its key.
 */
#include <string.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "retry/retry.h"
#include "test_retry.h"

static void test_retry_defaults(void)
{
    struct retry_config cfg;
    const char *why = "x";
    retry_config_defaults(&cfg);
    CU_ASSERT_EQUAL(retry_config_check(&cfg, &why), RETRY_OK);
    CU_ASSERT_PTR_NULL(why);
    CU_ASSERT_EQUAL(cfg.max_attempts, 5);
    CU_ASSERT_EQUAL(cfg.base_ms, 5);
    CU_ASSERT_EQUAL(cfg.cap_ms, 1000);
    CU_ASSERT_EQUAL(cfg.jitter, BACKOFF_JITTER_FULL);
    CU_ASSERT_EQUAL(cfg.budget_pct, 10);
    CU_ASSERT_EQUAL(cfg.budget_window_ms, 10000);
    CU_ASSERT_EQUAL(cfg.retry_buffer_bytes, 1024 * 1024);
    CU_ASSERT_EQUAL(cfg.retryable_sqlstates.n, 2);
}

static void expect_bad(const struct retry_config *cfg, const char *key)
{
    const char *why = NULL;
    CU_ASSERT_EQUAL(retry_config_check(cfg, &why), RETRY_EINVAL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(why);
    CU_ASSERT(strncmp(why, key, strlen(key)) == 0);
}

static void test_retry_ranges(void)
{
    struct retry_config d, c;
    retry_config_defaults(&d);
    c = d, c.max_attempts = 0, expect_bad(&c, "max_attempts");
    c = d, c.base_ms = 0, expect_bad(&c, "base_ms");
    c = d, c.cap_ms = 4, expect_bad(&c, "cap_ms");
    c = d, c.multiplier = 0.5, expect_bad(&c, "multiplier");
    c = d, c.jitter = (enum backoff_jitter)9, expect_bad(&c, "jitter");
    c = d, c.budget_pct = 101, expect_bad(&c, "budget_pct");
    c = d, c.budget_window_ms = 10, expect_bad(&c, "budget_window_ms");
    c = d, c.retry_checkpoint_bytes = 8, expect_bad(&c, "retry_checkpoint_bytes");
}

static void test_breaker_defaults_and_ranges(void)
{
    struct breaker_config d, c;
    const char *why = "x";
    breaker_config_defaults(&d);
    CU_ASSERT_EQUAL(breaker_config_check(&d, &why), RETRY_OK);
    CU_ASSERT_PTR_NULL(why);
    CU_ASSERT_EQUAL(d.failure_rate_pct, 50);
    CU_ASSERT_EQUAL(d.min_requests, 20);
    CU_ASSERT_EQUAL(d.consecutive_failures, 5);
    CU_ASSERT_EQUAL(d.open_max_ms, 60000);
    c = d, c.failure_rate_pct = 0;
    CU_ASSERT_EQUAL(breaker_config_check(&c, &why), RETRY_EINVAL);
    CU_ASSERT(strncmp(why, "failure_rate_pct", 16) == 0);
    c = d, c.open_max_ms = 10;
    CU_ASSERT_EQUAL(breaker_config_check(&c, &why), RETRY_EINVAL);
    CU_ASSERT(strncmp(why, "open_max_ms", 11) == 0);
}

static void test_strerror(void)
{
    for (int s = RETRY_OK; s <= RETRY_EINVAL; s++)
        CU_ASSERT(strcmp(retry_strerror((enum retry_status)s), "unknown retry status") != 0);
}

static const CU_TestInfo tests[] = {
    {"retry_defaults", test_retry_defaults},
    {"retry_ranges", test_retry_ranges},
    {"breaker_defaults_and_ranges", test_breaker_defaults_and_ranges},
    {"strerror", test_strerror},
    CU_TEST_INFO_NULL,
};

void register_config_suite(void)
{
    cunit_add_suite("config", NULL, NULL, tests);
}
