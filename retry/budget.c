/*
 * budget.c: the retry budget of one database.
 *
 * Interface (retry/budget.h): budget_new, budget_free, budget_record_first,
 * budget_try_retry, budget_window.  Rule and reasoning: retry/README.md, "Retry budget".
 */
#include <stdlib.h>

#include "retry/retry.h"
#include "retry_int.h"

#define BUDGET_BUCKETS 20

struct budget {
    struct retry_window win; /* a = first attempts, b = retries */
    unsigned pct;
    unsigned min_retries;
};

struct budget *budget_new(const struct retry_config *cfg)
{
    struct budget *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->pct = cfg->budget_pct;
    b->min_retries = cfg->budget_min_retries;
    retry_window_init(&b->win, (uint64_t)cfg->budget_window_ms * 1000, BUDGET_BUCKETS);
    return b;
}

void budget_free(struct budget *b)
{
    free(b);
}

void budget_record_first(struct budget *b, uint64_t now_us)
{
    retry_window_add(&b->win, now_us, 1, 0);
}

/* retries + 1 <= max(min_retries, pct% of firsts), in integers. */
static bool has_room(const struct budget *b)
{
    uint64_t next = b->win.sum_b + 1;
    return next <= b->min_retries || next * 100 <= b->win.sum_a * b->pct;
}

enum retry_status budget_try_retry(struct budget *b, struct breaker *breaker, uint64_t now_us)
{
    if (breaker && breaker_admit(breaker, now_us, NULL) != RETRY_OK)
        return RETRY_BREAKER_OPEN;
    retry_window_advance(&b->win, now_us);
    if (!has_room(b))
        return RETRY_NO_BUDGET;
    retry_window_add(&b->win, now_us, 0, 1);
    return RETRY_OK;
}

void budget_window(struct budget *b, uint64_t now_us, uint64_t *firsts, uint64_t *retries)
{
    retry_window_advance(&b->win, now_us);
    if (firsts)
        *firsts = b->win.sum_a;
    if (retries)
        *retries = b->win.sum_b;
}
