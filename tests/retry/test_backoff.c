/*
 * test_backoff.c: tests of retry/backoff.c and the generator of retry/base.c: bounds and
 * means of every jitter mode over 10^5 draws, determinism by seed, exhaustion.
 */
#include <math.h>
#include <stdint.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "retry/retry.h"
#include "test_retry.h"

#define DRAWS   100000
#define RETRIES 10 /* expo(k) for k = 1..10 spans 5 ms .. the 1 s cap */

static struct retry_config make_cfg(enum backoff_jitter j)
{
    struct retry_config cfg;
    retry_config_defaults(&cfg);
    cfg.jitter = j;
    cfg.max_attempts = RETRIES + 1;
    return cfg;
}

struct stats {
    double sum[RETRIES + 1];
    uint64_t min[RETRIES + 1], max[RETRIES + 1];
    unsigned out_of_bounds;
};

/* Runs DRAWS transactions of RETRIES retries each; checks each delay against its bounds. */
static void draw(const struct retry_config *cfg, uint64_t seed, struct stats *st)
{
    struct retry_rng rng;
    retry_rng_seed(&rng, seed);
    *st = (struct stats){.out_of_bounds = 0};
    for (int k = 1; k <= RETRIES; k++)
        st->min[k] = UINT64_MAX;
    for (int i = 0; i < DRAWS; i++) {
        struct backoff b;
        backoff_init(&b, cfg);
        uint64_t prev = (uint64_t)cfg->base_ms * MS;
        for (uint32_t k = 1; k <= RETRIES; k++) {
            uint64_t d, expo = backoff_ceiling_us(cfg, k);
            CU_ASSERT_EQUAL_FATAL(backoff_next(&b, &rng, &d), RETRY_OK);
            uint64_t lo = 0, hi = expo;
            if (cfg->jitter == BACKOFF_JITTER_EQUAL)
                lo = expo / 2;
            else if (cfg->jitter == BACKOFF_JITTER_NONE)
                lo = expo;
            else if (cfg->jitter == BACKOFF_JITTER_DECORRELATED) {
                lo = (uint64_t)cfg->base_ms * MS;
                hi = prev * 3 < (uint64_t)cfg->cap_ms * MS ? prev * 3 : cfg->cap_ms * MS;
            }
            st->out_of_bounds += d < lo || d > hi;
            st->sum[k] += (double)d;
            st->min[k] = d < st->min[k] ? d : st->min[k];
            st->max[k] = d > st->max[k] ? d : st->max[k];
            prev = d;
        }
    }
}

/* Checks the mean of the k-th retry's delay against share * expo(k), within 1%. */
static void check_means(const struct retry_config *cfg, const struct stats *st, double share)
{
    for (uint32_t k = 1; k <= RETRIES; k++) {
        double want = share * (double)backoff_ceiling_us(cfg, k);
        double mean = st->sum[k] / DRAWS;
        CU_ASSERT(fabs(mean - want) <= 0.01 * want);
    }
}

static void test_ceiling(void)
{
    struct retry_config cfg = make_cfg(BACKOFF_JITTER_NONE);
    CU_ASSERT_EQUAL(backoff_ceiling_us(&cfg, 1), 5 * MS);
    CU_ASSERT_EQUAL(backoff_ceiling_us(&cfg, 2), 10 * MS);
    CU_ASSERT_EQUAL(backoff_ceiling_us(&cfg, 8), 640 * MS);
    CU_ASSERT_EQUAL(backoff_ceiling_us(&cfg, 9), 1000 * MS);
    CU_ASSERT_EQUAL(backoff_ceiling_us(&cfg, 60), 1000 * MS);
    cfg.multiplier = 1.5;
    CU_ASSERT_EQUAL(backoff_ceiling_us(&cfg, 3), 11250);
}

static void test_none(void)
{
    struct retry_config cfg = make_cfg(BACKOFF_JITTER_NONE);
    struct stats st;
    draw(&cfg, 1, &st);
    CU_ASSERT_EQUAL(st.out_of_bounds, 0);
    for (uint32_t k = 1; k <= RETRIES; k++)
        CU_ASSERT(st.min[k] == st.max[k] && st.max[k] == backoff_ceiling_us(&cfg, k));
}

static void test_full(void)
{
    struct retry_config cfg = make_cfg(BACKOFF_JITTER_FULL);
    struct stats st;
    draw(&cfg, 2, &st);
    CU_ASSERT_EQUAL(st.out_of_bounds, 0);
    check_means(&cfg, &st, 0.5);
    /* the whole range is used: near 0 and near expo */
    CU_ASSERT(st.min[RETRIES] < 1000 * MS / 100);
    CU_ASSERT(st.max[RETRIES] > 1000 * MS * 99 / 100);
}

static void test_equal(void)
{
    struct retry_config cfg = make_cfg(BACKOFF_JITTER_EQUAL);
    struct stats st;
    draw(&cfg, 3, &st);
    CU_ASSERT_EQUAL(st.out_of_bounds, 0);
    check_means(&cfg, &st, 0.75);
}

static void test_decorrelated(void)
{
    struct retry_config cfg = make_cfg(BACKOFF_JITTER_DECORRELATED);
    struct stats st;
    draw(&cfg, 4, &st);
    CU_ASSERT_EQUAL(st.out_of_bounds, 0);
    /* first retry: U(base, 3 base), mean 2 base */
    double mean1 = st.sum[1] / DRAWS;
    CU_ASSERT(fabs(mean1 - 10.0 * MS) <= 0.01 * 10.0 * MS);
    for (uint32_t k = 1; k <= RETRIES; k++) {
        CU_ASSERT(st.min[k] >= 5 * MS);
        CU_ASSERT(st.max[k] <= 1000 * MS);
    }
    CU_ASSERT(st.max[RETRIES] == 1000 * MS); /* the cap is reached and held */
}

static void test_deterministic_by_seed(void)
{
    enum backoff_jitter modes[] = {BACKOFF_JITTER_FULL, BACKOFF_JITTER_EQUAL,
                                   BACKOFF_JITTER_DECORRELATED};
    for (unsigned m = 0; m < 3; m++) {
        struct retry_config cfg = make_cfg(modes[m]);
        struct retry_rng r1, r2, r3;
        retry_rng_seed(&r1, 42);
        retry_rng_seed(&r2, 42);
        retry_rng_seed(&r3, 43);
        unsigned same = 0, differ = 0;
        for (int i = 0; i < 1000; i++) {
            struct backoff a, b, c;
            backoff_init(&a, &cfg);
            backoff_init(&b, &cfg);
            backoff_init(&c, &cfg);
            for (int k = 0; k < RETRIES; k++) {
                uint64_t da, db, dc;
                CU_ASSERT_EQUAL(backoff_next(&a, &r1, &da), RETRY_OK);
                CU_ASSERT_EQUAL(backoff_next(&b, &r2, &db), RETRY_OK);
                CU_ASSERT_EQUAL(backoff_next(&c, &r3, &dc), RETRY_OK);
                same += da == db;
                differ += da != dc;
            }
        }
        CU_ASSERT_EQUAL(same, 1000 * RETRIES);
        CU_ASSERT(differ > 1000 * RETRIES * 9 / 10);
    }
}

static void test_known_sequence(void)
{
    /* xoshiro256** seeded by splitmix64(0): values from the reference algorithm, so the
     * same seed gives the same delays on every platform and release. */
    const uint64_t want[] = {0x99ec5f36cb75f2b4ULL, 0xbf6e1f784956452aULL, 0x1a5f849d4933e6e0ULL};
    struct retry_rng rng;
    retry_rng_seed(&rng, 0);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(retry_rng_next(&rng), want[i]);
}

static void test_exhaustion(void)
{
    struct retry_config cfg = make_cfg(BACKOFF_JITTER_FULL);
    struct retry_rng rng;
    struct backoff b;
    uint64_t d;

    retry_rng_seed(&rng, 5);
    cfg.max_attempts = 3;
    backoff_init(&b, &cfg);
    CU_ASSERT_EQUAL(backoff_attempts(&b), 1);
    CU_ASSERT_EQUAL(backoff_next(&b, &rng, &d), RETRY_OK);
    CU_ASSERT_EQUAL(backoff_next(&b, &rng, &d), RETRY_OK);
    CU_ASSERT_EQUAL(backoff_attempts(&b), 3);
    CU_ASSERT_EQUAL(backoff_next(&b, &rng, &d), RETRY_EXHAUSTED);
    CU_ASSERT_EQUAL(d, 0);
    CU_ASSERT_EQUAL(backoff_attempts(&b), 3);

    cfg.max_attempts = 1; /* 1 = no retry */
    backoff_init(&b, &cfg);
    CU_ASSERT_EQUAL(backoff_next(&b, &rng, &d), RETRY_EXHAUSTED);
}

static void test_rng_between(void)
{
    struct retry_rng rng;
    unsigned counts[10] = {0};

    retry_rng_seed(&rng, 7);
    for (int i = 0; i < DRAWS; i++) {
        uint64_t x = retry_rng_between(&rng, 10, 19);
        CU_ASSERT_FATAL(x >= 10 && x <= 19);
        counts[x - 10]++;
    }
    for (int i = 0; i < 10; i++)
        CU_ASSERT(counts[i] > DRAWS / 10 * 97 / 100 && counts[i] < DRAWS / 10 * 103 / 100);
    CU_ASSERT_EQUAL(retry_rng_between(&rng, 5, 5), 5);
    CU_ASSERT_EQUAL(retry_rng_between(&rng, 9, 3), 9);
    (void)retry_rng_between(&rng, 0, UINT64_MAX);
}

static void test_jitter_names(void)
{
    enum backoff_jitter j;
    const char *names[] = {"full", "equal", "decorrelated", "none"};
    for (unsigned i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(backoff_jitter_parse(names[i], &j), RETRY_OK);
        CU_ASSERT_STRING_EQUAL(backoff_jitter_name(j), names[i]);
    }
    CU_ASSERT_EQUAL(backoff_jitter_parse("Full", &j), RETRY_EINVAL);
}

static const CU_TestInfo tests[] = {
    {"ceiling", test_ceiling},
    {"jitter_none", test_none},
    {"jitter_full", test_full},
    {"jitter_equal", test_equal},
    {"jitter_decorrelated", test_decorrelated},
    {"deterministic_by_seed", test_deterministic_by_seed},
    {"known_sequence", test_known_sequence},
    {"exhaustion", test_exhaustion},
    {"rng_between", test_rng_between},
    {"jitter_names", test_jitter_names},
    CU_TEST_INFO_NULL,
};

void register_backoff_suite(void)
{
    cunit_add_suite("backoff", NULL, NULL, tests);
}
