/*
 * budget_sim.h: a virtual-clock simulation of client transactions against a database that
 * fails a share of attempts, driven through the retry budget, backoff and breaker.  Used by
 * test_budget.c and bench/retry_bench.c (amplification figures).
 */
#ifndef PGW_TEST_BUDGET_SIM_H
#define PGW_TEST_BUDGET_SIM_H

#include <stdbool.h>
#include <stdint.h>

struct budget_sim {
    /* inputs */
    unsigned rate_per_s;  /* client transactions started per second, evenly spaced */
    unsigned seconds;     /* simulated duration */
    double fail_prob;     /* share of attempts that fail with sqlstate */
    const char *sqlstate; /* the failure, e.g. "40001" or "08006" */
    bool use_budget;      /* false: naive retries up to max_attempts */
    unsigned max_attempts;
    uint64_t seed;
    /* outputs; "after" counts transactions started at or after 1 s */
    uint64_t txns, attempts, client_errors, rejected;
    uint64_t txns_after, attempts_after;
    uint64_t denied_budget, denied_breaker;
    double amplification_after;   /* attempts_after / txns_after */
    double worst_second_after;    /* max over whole seconds >= 1 of attempts / first attempts */
    unsigned breaker_transitions; /* closed -> open and back */
    uint64_t first_open_us;       /* when the breaker first opened; UINT64_MAX: never */
};

/* Runs the simulation; returns 0, or -1 when out of memory. */
int budget_sim_run(struct budget_sim *sim);

#endif
