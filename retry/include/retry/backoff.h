/*
 * retry/backoff.h: delays between attempts of one transaction.
 *
 * With expo(k) = min(cap, base * multiplier^(k-1)) for the k-th retry (k >= 1), the
 * jitter modes are those of the AWS Architecture Blog's "Exponential Backoff And Jitter":
 *   none          expo(k)
 *   full          U(0, expo(k))
 *   equal         expo(k)/2 + U(0, expo(k)/2)
 *   decorrelated  min(cap, U(base, 3 * previous delay)), previous delay starting at base
 * Delays are in microseconds.  See retry/README.md, "Backoff".
 */
#ifndef PGW_RETRY_BACKOFF_H
#define PGW_RETRY_BACKOFF_H

#include <stdint.h>

#include "retry/base.h"

struct retry_config;

enum backoff_jitter {
    BACKOFF_JITTER_FULL = 0,
    BACKOFF_JITTER_EQUAL,
    BACKOFF_JITTER_DECORRELATED,
    BACKOFF_JITTER_NONE,
};

/* The jitter keyword ("full", "equal", "decorrelated", "none"), and its parser. */
const char *backoff_jitter_name(enum backoff_jitter j);
RETRY_WUR enum retry_status backoff_jitter_parse(const char *name, enum backoff_jitter *out);

/* Per-transaction backoff state, embedded by the caller (no allocation).  Fields are
 * private. */
struct backoff {
    const struct retry_config *cfg; /* borrowed; must outlive the backoff */
    uint32_t attempts;              /* attempts started so far, the first included */
    uint64_t prev_us;               /* previous delay (decorrelated jitter) */
};

/* Starts a transaction's backoff: its first attempt is under way.  cfg is borrowed. */
void backoff_init(struct backoff *b, const struct retry_config *cfg);
/*
 * Decides the next attempt.  RETRY_OK: *delay_us is the wait before it and the attempt
 * is counted as started.  RETRY_EXHAUSTED: max_attempts have been made; *delay_us is 0.
 * rng is borrowed.
 */
RETRY_WUR enum retry_status backoff_next(struct backoff *b, struct retry_rng *rng,
                                         uint64_t *delay_us);
/* Attempts started so far, the first included (1 right after backoff_init). */
uint32_t backoff_attempts(const struct backoff *b);
/* expo(k) in microseconds for the k-th retry (k >= 1): the bound full jitter draws under. */
uint64_t backoff_ceiling_us(const struct retry_config *cfg, uint32_t k);

#endif
