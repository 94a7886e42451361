/*
 * test_breaker.c: tests of retry/breaker.c: the transition table, both trip rules, growth
 * and cap of the open period, probes (success, failure, timeout, stale results), the end
 * of a trip series, and a 40001 storm that never opens it.
 */
#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "retry/retry.h"
#include "test_retry.h"

#define LOG_MAX 64

struct log {
    unsigned n;
    struct breaker_transition t[LOG_MAX];
};

static void log_cb(const struct breaker_transition *t, void *arg)
{
    struct log *log = arg;
    if (log->n < LOG_MAX)
        log->t[log->n++] = *t;
}

static struct breaker_config cfg_defaults(void)
{
    struct breaker_config cfg;
    breaker_config_defaults(&cfg);
    return cfg;
}

static void expect(const struct log *log, unsigned i, enum breaker_state from,
                   enum breaker_state to, enum breaker_reason why, uint64_t open_us)
{
    CU_ASSERT_FATAL(i < log->n);
    CU_ASSERT_EQUAL(log->t[i].from, from);
    CU_ASSERT_EQUAL(log->t[i].to, to);
    CU_ASSERT_EQUAL(log->t[i].reason, why);
    CU_ASSERT_EQUAL(log->t[i].open_us, open_us);
}

/* Opens b at now by consecutive failures. */
static void trip(struct breaker *b, const struct breaker_config *cfg, uint64_t now)
{
    for (unsigned i = 0; i < cfg->consecutive_failures; i++)
        breaker_record(b, true, now);
}

/* Takes an open b to half-open at its deadline and runs one probe with result ok. */
static uint64_t probe_at_deadline(struct breaker *b, bool ok)
{
    uint64_t at = breaker_next_deadline_us(b), id = 0;
    CU_ASSERT_FALSE(breaker_tick(b, at - 1, &id));
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_OPEN);
    CU_ASSERT_TRUE(breaker_tick(b, at, &id));
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_HALF_OPEN);
    breaker_probe_done(b, id, ok, at + 10 * MS);
    return at + 10 * MS;
}

static void test_consecutive(void)
{
    struct breaker_config cfg = cfg_defaults();
    struct log log = {0};
    struct breaker *b = breaker_new(&cfg, log_cb, &log);

    for (int i = 0; i < 4; i++)
        breaker_record(b, true, 0);
    breaker_record(b, false, 0); /* a success resets the run */
    for (int i = 0; i < 4; i++)
        breaker_record(b, true, 0);
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_CLOSED);
    breaker_record(b, true, 1 * MS);
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_OPEN);
    CU_ASSERT_EQUAL(log.n, 1);
    expect(&log, 0, BREAKER_CLOSED, BREAKER_OPEN, BREAKER_REASON_CONSECUTIVE, 5 * SEC);
    CU_ASSERT_EQUAL(log.t[0].trips, 1);
    CU_ASSERT_EQUAL(log.t[0].now_us, 1 * MS);
    breaker_free(b);
}

static void test_failure_rate(void)
{
    struct breaker_config cfg = cfg_defaults();
    struct log log = {0};
    cfg.consecutive_failures = 0;
    struct breaker *b = breaker_new(&cfg, log_cb, &log);

    for (int i = 0; i < 19; i++)
        breaker_record(b, i % 2, i * MS); /* 19 calls: under min_requests */
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_CLOSED);
    breaker_record(b, true, 19 * MS); /* 20 calls, 10 failures: 50% */
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_OPEN);
    expect(&log, 0, BREAKER_CLOSED, BREAKER_OPEN, BREAKER_REASON_FAILURE_RATE, 5 * SEC);
    breaker_free(b);
}

static void test_rate_below_threshold_and_min_requests(void)
{
    struct breaker_config cfg = cfg_defaults();
    cfg.consecutive_failures = 0;
    struct breaker *b = breaker_new(&cfg, NULL, NULL);

    for (int i = 0; i < 19; i++)
        breaker_record(b, true, 0); /* 100% but fewer than min_requests */
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_CLOSED);
    for (int i = 0; i < 1000; i++)
        breaker_record(b, i % 3 == 0, 11 * SEC + i * MS); /* 33%, old failures expired */
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_CLOSED);
    breaker_free(b);
}

static void test_window_expiry(void)
{
    struct breaker_config cfg = cfg_defaults();
    cfg.consecutive_failures = 0;
    struct breaker *b = breaker_new(&cfg, NULL, NULL);

    for (int i = 0; i < 19; i++)
        breaker_record(b, true, 0);
    breaker_record(b, true, 11 * SEC); /* the 19 are out of the window */
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_CLOSED);
    breaker_free(b);
}

static void test_open_admission_and_ignored_records(void)
{
    struct breaker_config cfg = cfg_defaults();
    struct breaker *b = breaker_new(&cfg, NULL, NULL);
    uint64_t wait;

    CU_ASSERT_EQUAL(breaker_admit(b, 0, &wait), RETRY_OK);
    CU_ASSERT_EQUAL(wait, 0);
    CU_ASSERT_EQUAL(breaker_next_deadline_us(b), UINT64_MAX);
    trip(b, &cfg, 1 * SEC);
    CU_ASSERT_EQUAL(breaker_admit(b, 2 * SEC, &wait), RETRY_BREAKER_OPEN);
    CU_ASSERT_EQUAL(wait, 4 * SEC);
    CU_ASSERT_EQUAL(breaker_next_deadline_us(b), 6 * SEC);
    for (int i = 0; i < 100; i++)
        breaker_record(b, false, 3 * SEC); /* in-flight outcomes do not close it */
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_OPEN);
    /* admission at the deadline moves to half-open, still refusing user traffic */
    CU_ASSERT_EQUAL(breaker_admit(b, 6 * SEC, &wait), RETRY_BREAKER_OPEN);
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_HALF_OPEN);
    CU_ASSERT_EQUAL(wait, 0);
    CU_ASSERT_EQUAL(breaker_next_deadline_us(b), 0); /* a probe is due now */
    breaker_record(b, false, 6 * SEC);
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_HALF_OPEN);
    breaker_free(b);
}

static void test_probe_success_closes(void)
{
    struct breaker_config cfg = cfg_defaults();
    struct log log = {0};
    struct breaker *b = breaker_new(&cfg, log_cb, &log);
    uint64_t id;

    trip(b, &cfg, 0);
    uint64_t now = probe_at_deadline(b, true);
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_CLOSED);
    CU_ASSERT_EQUAL(breaker_admit(b, now, NULL), RETRY_OK);
    CU_ASSERT_FALSE(breaker_tick(b, now, &id));
    CU_ASSERT_EQUAL(log.n, 3);
    expect(&log, 0, BREAKER_CLOSED, BREAKER_OPEN, BREAKER_REASON_CONSECUTIVE, 5 * SEC);
    expect(&log, 1, BREAKER_OPEN, BREAKER_HALF_OPEN, BREAKER_REASON_OPEN_EXPIRED, 0);
    expect(&log, 2, BREAKER_HALF_OPEN, BREAKER_CLOSED, BREAKER_REASON_PROBE_OK, 0);
    /* the window restarted: four new failures do not trip it */
    for (int i = 0; i < 4; i++)
        breaker_record(b, true, now);
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_CLOSED);
    breaker_free(b);
}

static void test_probe_failure_growth_and_cap(void)
{
    struct breaker_config cfg = cfg_defaults();
    struct log log = {0};
    struct breaker *b = breaker_new(&cfg, log_cb, &log);
    const uint64_t want[] = {5, 10, 20, 40, 60, 60, 60};

    trip(b, &cfg, 0);
    for (unsigned i = 1; i < sizeof(want) / sizeof(want[0]); i++) {
        probe_at_deadline(b, false);
        CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_OPEN);
    }
    CU_ASSERT_EQUAL(log.n, 1 + 2 * 6);
    for (unsigned i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const struct breaker_transition *t = &log.t[i == 0 ? 0 : 2 * i];
        CU_ASSERT_EQUAL(t->to, BREAKER_OPEN);
        CU_ASSERT_EQUAL(t->open_us, want[i] * SEC);
        CU_ASSERT_EQUAL(t->trips, i + 1);
        if (i > 0)
            CU_ASSERT_EQUAL(t->reason, BREAKER_REASON_PROBE_FAILED);
    }
    breaker_free(b);
}

static void test_probe_timeout_and_stale_result(void)
{
    struct breaker_config cfg = cfg_defaults();
    struct log log = {0};
    struct breaker *b = breaker_new(&cfg, log_cb, &log);
    uint64_t id1, id2;

    trip(b, &cfg, 0);
    CU_ASSERT_TRUE(breaker_tick(b, 5 * SEC, &id1));
    CU_ASSERT_FALSE(breaker_tick(b, 5 * SEC + 500 * MS, &id2)); /* one probe at a time */
    CU_ASSERT_EQUAL(breaker_next_deadline_us(b), 6 * SEC);
    CU_ASSERT_FALSE(breaker_tick(b, 6 * SEC, &id2)); /* timed out: open again */
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_OPEN);
    expect(&log, 2, BREAKER_HALF_OPEN, BREAKER_OPEN, BREAKER_REASON_PROBE_TIMEOUT, 10 * SEC);
    breaker_probe_done(b, id1, true, 6 * SEC + 1); /* late answer: ignored */
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_OPEN);
    CU_ASSERT_TRUE(breaker_tick(b, 16 * SEC, &id2));
    CU_ASSERT_NOT_EQUAL(id1, id2);
    breaker_probe_done(b, id1, true, 16 * SEC); /* stale id while a new probe runs */
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_HALF_OPEN);
    breaker_probe_done(b, id2, true, 16 * SEC);
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_CLOSED);
    breaker_probe_done(b, id2, false, 16 * SEC); /* repeated answer: ignored */
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_CLOSED);
    breaker_free(b);
}

static void test_never_stuck_half_open(void)
{
    /* Whatever the proxy does, each tick either starts a probe or finds one running, and a
     * running probe ends by its deadline: the breaker leaves half-open within
     * probe_timeout_ms of entering it. */
    struct breaker_config cfg = cfg_defaults();
    struct breaker *b = breaker_new(&cfg, NULL, NULL);
    uint64_t id;

    trip(b, &cfg, 0);
    CU_ASSERT_TRUE(breaker_tick(b, 5 * SEC, &id));
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_HALF_OPEN);
    CU_ASSERT_FALSE(breaker_tick(b, breaker_next_deadline_us(b), &id)); /* never answered */
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_OPEN);
    breaker_free(b);
}

static void test_series_grows_then_resets(void)
{
    struct breaker_config cfg = cfg_defaults();
    struct log log = {0};
    struct breaker *b = breaker_new(&cfg, log_cb, &log);

    trip(b, &cfg, 0);
    uint64_t now = probe_at_deadline(b, true); /* closed, series goes on */
    trip(b, &cfg, now + 1 * SEC);              /* flapping: second trip is longer */
    CU_ASSERT_EQUAL(log.t[log.n - 1].open_us, 10 * SEC);
    now = probe_at_deadline(b, true);
    /* closed for open_max_ms: the next trip starts from open_ms again */
    trip(b, &cfg, now + cfg.open_max_ms * MS);
    CU_ASSERT_EQUAL(log.t[log.n - 1].open_us, 5 * SEC);
    CU_ASSERT_EQUAL(log.t[log.n - 1].trips, 1);
    breaker_free(b);
}

static void test_serialization_storm_never_opens(void)
{
    struct breaker_config cfg = cfg_defaults();
    struct log log = {0};
    struct breaker *b = breaker_new(&cfg, log_cb, &log);
    const char *contention[] = {"40001", "40P01", "55P03", "23505", "42P01", "22012"};

    for (int i = 0; i < 100000; i++) {
        unsigned cls = retry_classify(NULL, contention[i % 6]);
        breaker_record(b, cls & RETRY_CLASS_BREAKER, (uint64_t)i * 100);
    }
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_CLOSED);
    CU_ASSERT_EQUAL(log.n, 0);
    /* while the same classification trips it on 08006 */
    for (unsigned i = 0; i < cfg.consecutive_failures; i++)
        breaker_record(b, retry_classify(NULL, "08006") & RETRY_CLASS_BREAKER, 11 * SEC);
    CU_ASSERT_EQUAL(breaker_get_state(b), BREAKER_OPEN);
    breaker_free(b);
}

static void test_names(void)
{
    CU_ASSERT_STRING_EQUAL(breaker_state_name(BREAKER_CLOSED), "closed");
    CU_ASSERT_STRING_EQUAL(breaker_state_name(BREAKER_OPEN), "open");
    CU_ASSERT_STRING_EQUAL(breaker_state_name(BREAKER_HALF_OPEN), "half-open");
    CU_ASSERT_STRING_EQUAL(breaker_reason_name(BREAKER_REASON_PROBE_TIMEOUT), "probe_timeout");
    breaker_free(NULL);
}

static const CU_TestInfo tests[] = {
    {"consecutive", test_consecutive},
    {"failure_rate", test_failure_rate},
    {"rate_below_threshold_and_min_requests", test_rate_below_threshold_and_min_requests},
    {"window_expiry", test_window_expiry},
    {"open_admission_and_ignored_records", test_open_admission_and_ignored_records},
    {"probe_success_closes", test_probe_success_closes},
    {"probe_failure_growth_and_cap", test_probe_failure_growth_and_cap},
    {"probe_timeout_and_stale_result", test_probe_timeout_and_stale_result},
    {"never_stuck_half_open", test_never_stuck_half_open},
    {"series_grows_then_resets", test_series_grows_then_resets},
    {"serialization_storm_never_opens", test_serialization_storm_never_opens},
    {"names", test_names},
    CU_TEST_INFO_NULL,
};

void register_breaker_suite(void)
{
    cunit_add_suite("breaker", NULL, NULL, tests);
}
