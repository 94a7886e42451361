/*
 * backoff.c: exponential backoff with jitter for the retries of one transaction.
 *
 * Interface (retry/backoff.h): backoff_init, backoff_next, backoff_attempts,
 * backoff_ceiling_us, backoff_jitter_name, backoff_jitter_parse.  Formulas are those of
 * the AWS Architecture Blog's "Exponential Backoff And Jitter"; see retry/README.md,
 * "Backoff".
 */
#include <string.h>

#include "retry/retry.h"
#include "retry_int.h"

/* The AWS definition of decorrelated jitter grows the upper bound by 3 each time. */
#define DECORRELATED_FACTOR 3

static const char *const jitter_names[] = {
    [BACKOFF_JITTER_FULL] = "full",
    [BACKOFF_JITTER_EQUAL] = "equal",
    [BACKOFF_JITTER_DECORRELATED] = "decorrelated",
    [BACKOFF_JITTER_NONE] = "none",
};

#define JITTER_COUNT (sizeof(jitter_names) / sizeof(jitter_names[0]))

const char *backoff_jitter_name(enum backoff_jitter j)
{
    if ((unsigned)j >= JITTER_COUNT)
        return "unknown";
    return jitter_names[j];
}

enum retry_status backoff_jitter_parse(const char *name, enum backoff_jitter *out)
{
    for (unsigned i = 0; i < JITTER_COUNT; i++) {
        if (strcmp(name, jitter_names[i]) == 0) {
            *out = (enum backoff_jitter)i;
            return RETRY_OK;
        }
    }
    return RETRY_EINVAL;
}

uint64_t backoff_ceiling_us(const struct retry_config *cfg, uint32_t k)
{
    double cap = (double)cfg->cap_ms * 1000.0;
    double expo = (double)cfg->base_ms * 1000.0;

    for (uint32_t i = 1; i < k && expo < cap; i++)
        expo *= cfg->multiplier;
    return (uint64_t)(expo < cap ? expo : cap);
}

void backoff_init(struct backoff *b, const struct retry_config *cfg)
{
    b->cfg = cfg;
    b->attempts = 1;
    b->prev_us = (uint64_t)cfg->base_ms * 1000;
}

static uint64_t decorrelated_us(struct backoff *b, struct retry_rng *rng)
{
    uint64_t base = (uint64_t)b->cfg->base_ms * 1000;
    uint64_t cap = (uint64_t)b->cfg->cap_ms * 1000;
    uint64_t hi = b->prev_us * DECORRELATED_FACTOR;
    uint64_t d = retry_rng_between(rng, base, hi);

    d = d < cap ? d : cap;
    b->prev_us = d;
    return d;
}

enum retry_status backoff_next(struct backoff *b, struct retry_rng *rng, uint64_t *delay_us)
{
    *delay_us = 0;
    if (b->attempts >= b->cfg->max_attempts)
        return RETRY_EXHAUSTED;

    uint64_t expo = backoff_ceiling_us(b->cfg, b->attempts);
    switch (b->cfg->jitter) {
    case BACKOFF_JITTER_NONE: *delay_us = expo; break;
    case BACKOFF_JITTER_FULL: *delay_us = retry_rng_between(rng, 0, expo); break;
    case BACKOFF_JITTER_EQUAL:
        *delay_us = expo / 2 + retry_rng_between(rng, 0, expo - expo / 2);
        break;
    case BACKOFF_JITTER_DECORRELATED: *delay_us = decorrelated_us(b, rng); break;
    }
    b->attempts++;
    return RETRY_OK;
}

uint32_t backoff_attempts(const struct backoff *b)
{
    return b->attempts;
}
