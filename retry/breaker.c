/*
 * breaker.c: the circuit breaker of one database.
 *
 * Interface (retry/breaker.h): breaker_new, breaker_free, breaker_get_state,
 * breaker_admit, breaker_record, breaker_tick, breaker_probe_done,
 * breaker_next_deadline_us, breaker_state_name, breaker_reason_name.
 *
 * Every state change goes through breaker_set_state(), which checks it against the
 * transition table and reports it.  State table and reasoning: retry/README.md,
 * "Circuit breaker".
 */
#include <stdbool.h>
#include <stdlib.h>

#include "retry/breaker.h"
#include "retry_int.h"

#define BREAKER_BUCKETS 10
#define US_PER_MS       1000ULL

struct breaker {
    struct breaker_config cfg;
    breaker_transition_cb cb;
    void *cb_arg;

    enum breaker_state state;
    struct retry_window win; /* a = calls, b = failures; used while closed */
    unsigned consecutive;    /* failures in a row while closed */
    unsigned trips;          /* trips in the current series */
    uint64_t closed_since_us;
    uint64_t open_until_us; /* while open */
    bool probe_running;     /* while half-open */
    uint64_t probe_id;      /* id of the running (or last) probe */
    uint64_t probe_deadline_us;
};

/* Legal transitions: [from][to]. */
static const bool legal[3][3] = {
    [BREAKER_CLOSED] = {[BREAKER_OPEN] = true},
    [BREAKER_OPEN] = {[BREAKER_HALF_OPEN] = true},
    [BREAKER_HALF_OPEN] = {[BREAKER_CLOSED] = true, [BREAKER_OPEN] = true},
};

const char *breaker_state_name(enum breaker_state s)
{
    switch (s) {
    case BREAKER_CLOSED: return "closed";
    case BREAKER_OPEN: return "open";
    case BREAKER_HALF_OPEN: return "half-open";
    }
    return "unknown";
}

const char *breaker_reason_name(enum breaker_reason r)
{
    switch (r) {
    case BREAKER_REASON_FAILURE_RATE: return "failure_rate";
    case BREAKER_REASON_CONSECUTIVE: return "consecutive_failures";
    case BREAKER_REASON_OPEN_EXPIRED: return "open_expired";
    case BREAKER_REASON_PROBE_OK: return "probe_ok";
    case BREAKER_REASON_PROBE_FAILED: return "probe_failed";
    case BREAKER_REASON_PROBE_TIMEOUT: return "probe_timeout";
    }
    return "unknown";
}

struct breaker *breaker_new(const struct breaker_config *cfg, breaker_transition_cb cb, void *arg)
{
    struct breaker *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->cfg = *cfg;
    b->cb = cb;
    b->cb_arg = arg;
    b->state = BREAKER_CLOSED;
    retry_window_init(&b->win, (uint64_t)cfg->window_ms * US_PER_MS, BREAKER_BUCKETS);
    return b;
}

void breaker_free(struct breaker *b)
{
    free(b);
}

enum breaker_state breaker_get_state(const struct breaker *b)
{
    return b->state;
}

/* open_ms * 2^(trips-1), capped at open_max_ms; trips >= 1. */
static uint64_t open_period_us(const struct breaker *b)
{
    uint64_t ms = b->cfg.open_ms;
    for (unsigned i = 1; i < b->trips && ms < b->cfg.open_max_ms; i++)
        ms *= 2;
    if (ms > b->cfg.open_max_ms)
        ms = b->cfg.open_max_ms;
    return ms * US_PER_MS;
}

/* The one place that changes state: checks legality, sets the state's fields, reports. */
static void breaker_set_state(struct breaker *b, enum breaker_state to, enum breaker_reason why,
                              uint64_t now_us)
{
    struct breaker_transition t = {.from = b->state, .to = to, .reason = why, .now_us = now_us};

    if (!legal[b->state][to]) {
        RETRY_ASSERT(!"illegal breaker transition");
        return;
    }
    b->state = to;
    b->probe_running = false;
    switch (to) {
    case BREAKER_OPEN:
        b->trips++;
        t.open_us = open_period_us(b);
        b->open_until_us = now_us + t.open_us;
        break;
    case BREAKER_HALF_OPEN: break;
    case BREAKER_CLOSED:
        retry_window_clear(&b->win);
        b->consecutive = 0;
        b->closed_since_us = now_us;
        break;
    }
    t.trips = b->trips;
    if (b->cb)
        b->cb(&t, b->cb_arg);
}

/* A series of trips ends once the breaker has stayed closed as long as the longest
 * open period: the next trip starts again from open_ms. */
static void maybe_end_series(struct breaker *b, uint64_t now_us)
{
    if (b->trips && now_us - b->closed_since_us >= (uint64_t)b->cfg.open_max_ms * US_PER_MS)
        b->trips = 0;
}

static void advance_time(struct breaker *b, uint64_t now_us)
{
    if (b->state == BREAKER_OPEN && now_us >= b->open_until_us)
        breaker_set_state(b, BREAKER_HALF_OPEN, BREAKER_REASON_OPEN_EXPIRED, now_us);
    if (b->state == BREAKER_HALF_OPEN && b->probe_running && now_us >= b->probe_deadline_us)
        breaker_set_state(b, BREAKER_OPEN, BREAKER_REASON_PROBE_TIMEOUT, now_us);
    if (b->state == BREAKER_CLOSED)
        maybe_end_series(b, now_us);
}

enum retry_status breaker_admit(struct breaker *b, uint64_t now_us, uint64_t *wait_us)
{
    advance_time(b, now_us);
    if (b->state == BREAKER_CLOSED) {
        if (wait_us)
            *wait_us = 0;
        return RETRY_OK;
    }
    if (wait_us)
        *wait_us = b->state == BREAKER_OPEN ? b->open_until_us - now_us : 0;
    return RETRY_BREAKER_OPEN;
}

static bool rate_tripped(const struct breaker *b)
{
    uint64_t calls = b->win.sum_a, failures = b->win.sum_b;
    return calls >= b->cfg.min_requests && failures * 100 >= calls * b->cfg.failure_rate_pct;
}

void breaker_record(struct breaker *b, bool failure, uint64_t now_us)
{
    advance_time(b, now_us);
    if (b->state != BREAKER_CLOSED)
        return;
    retry_window_add(&b->win, now_us, 1, failure ? 1 : 0);
    b->consecutive = failure ? b->consecutive + 1 : 0;
    if (!failure)
        return;
    if (b->cfg.consecutive_failures && b->consecutive >= b->cfg.consecutive_failures)
        breaker_set_state(b, BREAKER_OPEN, BREAKER_REASON_CONSECUTIVE, now_us);
    else if (rate_tripped(b))
        breaker_set_state(b, BREAKER_OPEN, BREAKER_REASON_FAILURE_RATE, now_us);
}

bool breaker_tick(struct breaker *b, uint64_t now_us, uint64_t *probe_id)
{
    advance_time(b, now_us);
    if (b->state != BREAKER_HALF_OPEN || b->probe_running)
        return false;
    b->probe_running = true;
    b->probe_id++;
    b->probe_deadline_us = now_us + (uint64_t)b->cfg.probe_timeout_ms * US_PER_MS;
    if (probe_id)
        *probe_id = b->probe_id;
    return true;
}

void breaker_probe_done(struct breaker *b, uint64_t probe_id, bool ok, uint64_t now_us)
{
    if (b->state != BREAKER_HALF_OPEN || !b->probe_running || probe_id != b->probe_id)
        return;
    if (ok)
        breaker_set_state(b, BREAKER_CLOSED, BREAKER_REASON_PROBE_OK, now_us);
    else
        breaker_set_state(b, BREAKER_OPEN, BREAKER_REASON_PROBE_FAILED, now_us);
}

uint64_t breaker_next_deadline_us(const struct breaker *b)
{
    switch (b->state) {
    case BREAKER_CLOSED: return UINT64_MAX;
    case BREAKER_OPEN: return b->open_until_us;
    case BREAKER_HALF_OPEN: return b->probe_running ? b->probe_deadline_us : 0;
    }
    return UINT64_MAX;
}
