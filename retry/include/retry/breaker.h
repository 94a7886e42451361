/*
 * retry/breaker.h: the circuit breaker of one database.
 *
 * States CLOSED -> OPEN (failure rate over a time-bucketed window with at least
 * min_requests calls, or consecutive_failures in a row) -> HALF_OPEN (after the open
 * period) -> CLOSED (a probe succeeded) or OPEN again (a probe failed or timed out, with a
 * longer period: open_ms * 2^(trips-1), capped at open_max_ms).  Probes are run by the
 * proxy when breaker_tick() asks for one, so the breaker can never stay half-open.  Every
 * transition is reported through the callback.  See retry/README.md, "Circuit breaker".
 *
 * Not thread-safe: one breaker is driven from one event loop.
 */
#ifndef PGW_RETRY_BREAKER_H
#define PGW_RETRY_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

#include "retry/base.h"

/* The [breaker] section; names are the config keys. */
struct breaker_config {
    unsigned failure_rate_pct;     /* 1..100: trip when failures/calls reach this share */
    unsigned min_requests;         /* calls in the window before the rate is considered */
    unsigned window_ms;            /* sliding window, 10 buckets */
    unsigned consecutive_failures; /* trip after this many failures in a row; 0 = off */
    unsigned open_ms;              /* first open period */
    unsigned open_max_ms;          /* cap of the growing open period */
    unsigned probe_timeout_ms;     /* a probe not answered by then counts as failed */
};

void breaker_config_defaults(struct breaker_config *cfg);
/* RETRY_OK or RETRY_EINVAL with *why (static string) naming the bad key. */
RETRY_WUR enum retry_status breaker_config_check(const struct breaker_config *cfg,
                                                 const char **why);

enum breaker_state {
    BREAKER_CLOSED = 0,
    BREAKER_OPEN,
    BREAKER_HALF_OPEN,
};

enum breaker_reason {
    BREAKER_REASON_FAILURE_RATE = 0, /* closed -> open */
    BREAKER_REASON_CONSECUTIVE,      /* closed -> open */
    BREAKER_REASON_OPEN_EXPIRED,     /* open -> half-open */
    BREAKER_REASON_PROBE_OK,         /* half-open -> closed */
    BREAKER_REASON_PROBE_FAILED,     /* half-open -> open */
    BREAKER_REASON_PROBE_TIMEOUT,    /* half-open -> open */
};

const char *breaker_state_name(enum breaker_state s);   /* "closed", "open", "half-open" */
const char *breaker_reason_name(enum breaker_reason r); /* "failure_rate", ... */

/* What the transition callback is told; valid only during the call. */
struct breaker_transition {
    enum breaker_state from, to;
    enum breaker_reason reason;
    uint64_t now_us;
    uint64_t open_us; /* when to == OPEN: the length of this open period, else 0 */
    unsigned trips;   /* trips in the current series (resets after a quiet closed period) */
};

/* Called on every transition, from inside the breaker call that caused it.  The callback
 * must not call back into the same breaker. */
typedef void (*breaker_transition_cb)(const struct breaker_transition *t, void *arg);

struct breaker;

/* Returns a closed breaker (free with breaker_free) or NULL when out of memory.  cfg is
 * copied; cb may be NULL; arg is passed to cb. */
struct breaker *breaker_new(const struct breaker_config *cfg, breaker_transition_cb cb, void *arg);
void breaker_free(struct breaker *b);

enum breaker_state breaker_get_state(const struct breaker *b);

/*
 * May a new transaction start now?  RETRY_OK when closed; RETRY_BREAKER_OPEN otherwise,
 * with *wait_us (may be NULL) the time until the next probe is due (0 when one is due or
 * running), for the 57P03 message.  Performs due time-driven transitions first.
 */
RETRY_WUR enum retry_status breaker_admit(struct breaker *b, uint64_t now_us, uint64_t *wait_us);

/* Outcomes of user traffic (transactions, server logins).  Counted only while closed: in
 * the other states only probes decide.  failure is true when retry_classify() or
 * retry_classify_event() gave RETRY_CLASS_BREAKER; any other outcome is a success. */
void breaker_record(struct breaker *b, bool failure, uint64_t now_us);

/*
 * Drives time: open -> half-open once the open period is over, and a probe timeout into a
 * failed probe.  Returns true when the proxy must start a probe now (e.g. SELECT 1 on a
 * fresh connection) and later report it with breaker_probe_done(*probe_id, ...).  Call it
 * at breaker_next_deadline_us() and whenever convenient; at most one probe runs at a time.
 */
RETRY_WUR bool breaker_tick(struct breaker *b, uint64_t now_us, uint64_t *probe_id);
/* The result of the probe probe_id.  Stale ids (a probe that already timed out) are
 * ignored. */
void breaker_probe_done(struct breaker *b, uint64_t probe_id, bool ok, uint64_t now_us);
/* When breaker_tick() next has something to do (open period end, probe deadline), or
 * UINT64_MAX when closed.  Arm the loop's timer with it. */
uint64_t breaker_next_deadline_us(const struct breaker *b);

#endif
