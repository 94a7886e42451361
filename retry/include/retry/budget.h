/*
 * retry/budget.h: the retry budget of one database.
 *
 * Retries are allowed while, over a sliding window of budget_window_ms (20 buckets),
 *     retries + 1 <= max(budget_min_retries, budget_pct% of first attempts)
 * and never while the database's breaker is not closed.  So under a 100% failure rate
 * attempts per client transaction stay at or below 1 + budget_pct/100 once the window
 * holds enough first attempts for the floor not to matter.  See retry/README.md,
 * "Retry budget".
 *
 * Not thread-safe: one budget is driven from one event loop.
 */
#ifndef PGW_RETRY_BUDGET_H
#define PGW_RETRY_BUDGET_H

#include <stdint.h>

#include "retry/base.h"

struct retry_config;
struct breaker;

struct budget;

/* Returns a budget (free with budget_free) or NULL when out of memory; cfg is read now
 * (budget_pct, budget_window_ms, budget_min_retries) and not kept. */
struct budget *budget_new(const struct retry_config *cfg);
void budget_free(struct budget *b);

/* Counts the first attempt of a client transaction (or of a statement outside one). */
void budget_record_first(struct budget *b, uint64_t now_us);
/*
 * Asks to retry once.  RETRY_OK: the retry is counted and may go ahead.
 * RETRY_BREAKER_OPEN: breaker (borrowed, may be NULL) is not closed.  RETRY_NO_BUDGET:
 * the share is used up.  Either refusal means: give the client the original error.
 */
RETRY_WUR enum retry_status budget_try_retry(struct budget *b, struct breaker *breaker,
                                             uint64_t now_us);

/* Current window contents, for metrics and tests. */
void budget_window(struct budget *b, uint64_t now_us, uint64_t *firsts, uint64_t *retries);

#endif
