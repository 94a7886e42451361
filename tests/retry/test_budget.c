/*
 * test_budget.c: tests of retry/budget.c: the share rule, the floor, the sliding window,
 * the breaker gate, and simulated storms at 0%, 10% and 100% failure.
 */
#include <CUnit/CUnit.h>

#include "budget_sim.h"
#include "cunit_main.h"
#include "retry/retry.h"
#include "test_retry.h"

static struct budget *make_budget(unsigned pct, unsigned min_retries)
{
    struct retry_config cfg;
    retry_config_defaults(&cfg);
    cfg.budget_pct = pct;
    cfg.budget_min_retries = min_retries;
    return budget_new(&cfg);
}

static void test_share(void)
{
    struct budget *b = make_budget(10, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(budget_try_retry(b, NULL, 0), RETRY_NO_BUDGET);
    for (int i = 0; i < 100; i++)
        budget_record_first(b, 0);
    for (int i = 0; i < 10; i++)
        CU_ASSERT_EQUAL(budget_try_retry(b, NULL, 0), RETRY_OK);
    CU_ASSERT_EQUAL(budget_try_retry(b, NULL, 0), RETRY_NO_BUDGET);
    for (int i = 0; i < 10; i++)
        budget_record_first(b, 1 * MS);
    CU_ASSERT_EQUAL(budget_try_retry(b, NULL, 1 * MS), RETRY_OK);
    CU_ASSERT_EQUAL(budget_try_retry(b, NULL, 1 * MS), RETRY_NO_BUDGET);
    uint64_t firsts, retries;
    budget_window(b, 1 * MS, &firsts, &retries);
    CU_ASSERT_EQUAL(firsts, 110);
    CU_ASSERT_EQUAL(retries, 11);
    budget_free(b);
}

static void test_floor(void)
{
    struct budget *b = make_budget(10, 3);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    budget_record_first(b, 0);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(budget_try_retry(b, NULL, 0), RETRY_OK);
    CU_ASSERT_EQUAL(budget_try_retry(b, NULL, 0), RETRY_NO_BUDGET);
    budget_free(b);
    budget_free(NULL);
}

static void test_window_slides(void)
{
    struct budget *b = make_budget(10, 0);
    uint64_t firsts, retries;
    for (int i = 0; i < 100; i++)
        budget_record_first(b, 0);
    for (int i = 0; i < 10; i++)
        CU_ASSERT_EQUAL(budget_try_retry(b, NULL, 0), RETRY_OK);
    CU_ASSERT_EQUAL(budget_try_retry(b, NULL, 9 * SEC), RETRY_NO_BUDGET);
    budget_window(b, 9 * SEC, &firsts, &retries);
    CU_ASSERT_EQUAL(firsts, 100);
    budget_window(b, 10 * SEC + 1, &firsts, &retries); /* everything expired */
    CU_ASSERT_EQUAL(firsts, 0);
    CU_ASSERT_EQUAL(retries, 0);
    budget_window(b, 60 * SEC, &firsts, &retries);
    CU_ASSERT_EQUAL(firsts, 0);
    budget_free(b);
}

static void test_breaker_gate(void)
{
    struct breaker_config bcfg;
    breaker_config_defaults(&bcfg);
    struct breaker *br = breaker_new(&bcfg, NULL, NULL);
    struct budget *b = make_budget(100, 100);
    CU_ASSERT_EQUAL(budget_try_retry(b, br, 0), RETRY_OK);
    for (unsigned i = 0; i < bcfg.consecutive_failures; i++)
        breaker_record(br, true, 0);
    CU_ASSERT_EQUAL(breaker_get_state(br), BREAKER_OPEN);
    CU_ASSERT_EQUAL(budget_try_retry(b, br, 1), RETRY_BREAKER_OPEN);
    uint64_t probe;
    CU_ASSERT_FALSE(breaker_tick(br, bcfg.open_ms * MS - 1, &probe));
    CU_ASSERT_TRUE(breaker_tick(br, bcfg.open_ms * MS, &probe));
    CU_ASSERT_EQUAL(budget_try_retry(b, br, bcfg.open_ms * MS), RETRY_BREAKER_OPEN); /* half */
    breaker_probe_done(br, probe, true, bcfg.open_ms * MS);
    CU_ASSERT_EQUAL(budget_try_retry(b, br, bcfg.open_ms * MS), RETRY_OK);
    budget_free(b);
    breaker_free(br);
}

static struct budget_sim storm(double fail_prob, const char *sqlstate, bool use_budget)
{
    struct budget_sim sim = {.rate_per_s = 100,
                             .seconds = 30,
                             .fail_prob = fail_prob,
                             .sqlstate = sqlstate,
                             .use_budget = use_budget,
                             .max_attempts = 5,
                             .seed = 1234};
    CU_ASSERT_EQUAL(budget_sim_run(&sim), 0);
    return sim;
}

static void test_sim_no_failure(void)
{
    struct budget_sim sim = storm(0.0, "40001", true);
    CU_ASSERT_EQUAL(sim.txns, 3000);
    CU_ASSERT_EQUAL(sim.attempts, 3000);
    CU_ASSERT_EQUAL(sim.client_errors, 0);
    CU_ASSERT_EQUAL(sim.denied_budget, 0);
}

static void test_sim_ten_percent(void)
{
    struct budget_sim sim = storm(0.10, "40001", true);
    CU_ASSERT(sim.amplification_after <= 1.1);
    CU_ASSERT(sim.amplification_after >= 1.08); /* most failures were retried */
    /* about 10% fail first; nearly all of them are rescued within the budget */
    CU_ASSERT(sim.client_errors < sim.txns / 50);
    CU_ASSERT_EQUAL(sim.breaker_transitions, 0);
}

static void test_sim_full_failure(void)
{
    struct budget_sim sim = storm(1.0, "40001", true);
    CU_ASSERT(sim.amplification_after <= 1.1);
    CU_ASSERT(sim.worst_second_after <= 1.1);
    CU_ASSERT_EQUAL(sim.client_errors, sim.txns);
    CU_ASSERT(sim.denied_budget > 0);
    /* a 40001 storm is contention, not ill health: the breaker never opens */
    CU_ASSERT_EQUAL(sim.breaker_transitions, 0);
    CU_ASSERT_EQUAL(sim.first_open_us, UINT64_MAX);

    struct budget_sim naive = storm(1.0, "40001", false);
    CU_ASSERT(naive.amplification_after > 4.99); /* what the budget prevents */
}

static void test_sim_full_outage(void)
{
    /* 100% 08006: the breaker opens at once and no retry runs while it is not closed */
    struct budget_sim sim = storm(1.0, "08006", true);
    CU_ASSERT(sim.first_open_us <= 100 * MS);
    CU_ASSERT(sim.rejected > sim.txns * 9 / 10);
    CU_ASSERT(sim.attempts < sim.txns / 10);
    CU_ASSERT(sim.amplification_after <= 1.1);
}

static const CU_TestInfo tests[] = {
    {"share", test_share},
    {"floor", test_floor},
    {"window_slides", test_window_slides},
    {"breaker_gate", test_breaker_gate},
    {"sim_no_failure", test_sim_no_failure},
    {"sim_ten_percent", test_sim_ten_percent},
    {"sim_full_failure", test_sim_full_failure},
    {"sim_full_outage", test_sim_full_outage},
    CU_TEST_INFO_NULL,
};

void register_budget_suite(void)
{
    cunit_add_suite("budget", NULL, NULL, tests);
}
