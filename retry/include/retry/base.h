/*
 * retry/base.h: status codes and the injected random generator shared by every part of
 * the retry library.  See retry/README.md.
 *
 * Units used throughout the library: time is a monotonic clock in microseconds
 * (uint64_t now_us, any fixed origin, never going backwards), passed in by the caller;
 * configuration durations are in milliseconds, as the [retry] and [breaker] keys are.
 */
#ifndef PGW_RETRY_BASE_H
#define PGW_RETRY_BASE_H

#include <stdint.h>

#define RETRY_WUR __attribute__((warn_unused_result))

/* Outcomes of the library's functions; expected outcomes are values, not failures. */
enum retry_status {
    RETRY_OK = 0,
    RETRY_EXHAUSTED,      /* backoff: max_attempts reached, give the client the error */
    RETRY_NO_BUDGET,      /* budget: retries already at their share of first attempts */
    RETRY_BREAKER_OPEN,   /* breaker not closed: no new work and no retries */
    RETRY_OVER_BUFFER,    /* recorder: retry_buffer_bytes exceeded, not replayable */
    RETRY_NOT_REPLAYABLE, /* verifier: the recording cannot be replayed */
    RETRY_NOMEM,          /* allocation failed */
    RETRY_EINVAL,         /* bad argument or configuration value */
};

/* Static description of a status; never NULL. */
const char *retry_strerror(enum retry_status st);

/*
 * A small seedable generator (xoshiro256**, seeded through splitmix64), owned and embedded
 * by the caller: one per event loop is enough.  Fields are private.  The same seed gives
 * the same sequence on every platform.
 */
struct retry_rng {
    uint64_t s[4];
};

void retry_rng_seed(struct retry_rng *rng, uint64_t seed);
uint64_t retry_rng_next(struct retry_rng *rng);
/* Uniform integer in [lo, hi] (inclusive, unbiased); returns lo when hi <= lo. */
uint64_t retry_rng_between(struct retry_rng *rng, uint64_t lo, uint64_t hi);

#endif
