/*
 * retry/retry.h: the retry library, the one header other modules include.
 *
 * Pure logic, no I/O, no printing: time comes in as now_us (monotonic microseconds),
 * randomness from a caller-owned struct retry_rng, breaker transitions through a callback.
 *   base.h      status codes, the seedable generator
 *   classify.h  SQLSTATE -> retry / breaker failure / neither
 *   backoff.h   delay before each retry (full, equal, decorrelated, none jitter)
 *   budget.h    retries as a share of recent first attempts, per database
 *   breaker.h   circuit breaker per database, probes run by the proxy
 *   replay.h    transaction recorder and replay verifier (keyed SipHash checkpoints)
 * This header adds struct retry_config, the [retry] section.  See retry/README.md.
 */
#ifndef PGW_RETRY_RETRY_H
#define PGW_RETRY_RETRY_H

#include <stddef.h>

#include "retry/base.h"
#include "retry/classify.h"
#include "retry/backoff.h"
#include "retry/budget.h"
#include "retry/breaker.h"
#include "retry/replay.h"

/* The [retry] section; names are the config keys. */
struct retry_config {
    struct retry_sqlstates retryable_sqlstates; /* default 40001, 40P01 */
    unsigned max_attempts;                      /* attempts in all; 1 = no retry */
    unsigned base_ms;                           /* first backoff ceiling */
    unsigned cap_ms;                            /* largest backoff */
    double multiplier;                          /* growth of the ceiling per retry */
    enum backoff_jitter jitter;                 /* full | equal | decorrelated | none */
    unsigned budget_pct;                        /* retries per 100 first attempts */
    unsigned budget_window_ms;                  /* sliding window of the budget */
    unsigned budget_min_retries;                /* floor: retries per window always allowed */
    size_t retry_buffer_bytes;                  /* recorder limit per transaction */
    size_t retry_checkpoint_bytes;              /* response bytes between checkpoints */
};

void retry_config_defaults(struct retry_config *cfg);
/* RETRY_OK or RETRY_EINVAL with *why (static string) naming the bad key and its range. */
RETRY_WUR enum retry_status retry_config_check(const struct retry_config *cfg, const char **why);

#endif
