/*
 * window.c: the time-bucketed sliding window used by the retry budget (first attempts,
 * retries) and the circuit breaker (calls, failures).
 *
 * Interface (retry_int.h): retry_window_init, _clear, _advance, _add.  Each bucket is
 * zeroed when the head moves past it, so memory is fixed and every operation is
 * O(nbuckets) at worst.  See retry/README.md, "Sliding windows".
 */
#include <string.h>

#include "retry_int.h"

void retry_window_init(struct retry_window *w, uint64_t window_us, unsigned nbuckets)
{
    RETRY_ASSERT(nbuckets >= 1 && nbuckets <= RETRY_WINDOW_MAX_BUCKETS);
    memset(w, 0, sizeof(*w));
    w->nbuckets = nbuckets;
    w->bucket_us = window_us / nbuckets;
    if (w->bucket_us == 0)
        w->bucket_us = 1;
}

void retry_window_clear(struct retry_window *w)
{
    uint64_t bucket_us = w->bucket_us;
    unsigned nbuckets = w->nbuckets;

    memset(w, 0, sizeof(*w));
    w->bucket_us = bucket_us;
    w->nbuckets = nbuckets;
}

void retry_window_advance(struct retry_window *w, uint64_t now_us)
{
    if (!w->started) {
        w->started = true;
        w->head_start_us = now_us;
        return;
    }
    if (now_us < w->head_start_us + w->bucket_us)
        return;
    uint64_t steps = (now_us - w->head_start_us) / w->bucket_us;
    w->head_start_us += steps * w->bucket_us;
    if (steps >= w->nbuckets) {
        memset(w->a, 0, sizeof(w->a));
        memset(w->b, 0, sizeof(w->b));
        w->sum_a = w->sum_b = 0;
        return;
    }
    for (uint64_t i = 0; i < steps; i++) {
        w->head = (w->head + 1) % w->nbuckets;
        w->sum_a -= w->a[w->head];
        w->sum_b -= w->b[w->head];
        w->a[w->head] = 0;
        w->b[w->head] = 0;
    }
}

void retry_window_add(struct retry_window *w, uint64_t now_us, uint32_t da, uint32_t db)
{
    retry_window_advance(w, now_us);
    w->a[w->head] += da;
    w->b[w->head] += db;
    w->sum_a += da;
    w->sum_b += db;
}
