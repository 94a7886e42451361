/*
 * budget_sim.c: see budget_sim.h.  One millisecond per tick; each attempt completes in the
 * tick it starts; a failed attempt asks the budget for a retry and waits its backoff.
 */
#include <stdlib.h>

#include "budget_sim.h"
#include "retry/retry.h"

#define SIM_PENDING_MAX 65536
#define SIM_US_PER_MS   1000ULL
#define SIM_DRAIN_MS    100000 /* beyond any backoff: sec_* arrays have room for it */

struct pending {
    uint64_t due_us;
    uint64_t start_us;
    struct backoff b;
};

struct sim_state {
    struct budget_sim *sim;
    struct retry_config cfg;
    struct retry_rng rng;
    struct budget *budget;
    struct breaker *breaker;
    struct pending *pending;
    unsigned npending;
    uint64_t *sec_attempts, *sec_firsts;
};

static void on_transition(const struct breaker_transition *t, void *arg)
{
    struct budget_sim *sim = arg;
    sim->breaker_transitions++;
    if (t->to == BREAKER_OPEN && sim->first_open_us == UINT64_MAX)
        sim->first_open_us = t->now_us;
}

/* One attempt of a transaction started at p->start_us; schedules its retry if allowed. */
static void attempt(struct sim_state *st, struct pending p, uint64_t now_us)
{
    struct budget_sim *sim = st->sim;
    bool failed = (double)(retry_rng_next(&st->rng) >> 11) * 0x1.0p-53 < sim->fail_prob;
    unsigned cls = failed ? retry_classify(&st->cfg.retryable_sqlstates, sim->sqlstate) : 0;
    uint64_t delay;

    sim->attempts++;
    st->sec_attempts[now_us / 1000000]++;
    if (p.start_us >= 1000000)
        sim->attempts_after++;
    breaker_record(st->breaker, cls & RETRY_CLASS_BREAKER, now_us);
    if (!failed)
        return;
    if (!(cls & RETRY_CLASS_RETRY) || backoff_next(&p.b, &st->rng, &delay) != RETRY_OK) {
        sim->client_errors++;
        return;
    }
    enum retry_status rs =
        sim->use_budget ? budget_try_retry(st->budget, st->breaker, now_us) : RETRY_OK;
    if (rs != RETRY_OK || st->npending == SIM_PENDING_MAX) {
        sim->denied_budget += rs == RETRY_NO_BUDGET;
        sim->denied_breaker += rs == RETRY_BREAKER_OPEN;
        sim->client_errors++;
        return;
    }
    p.due_us = now_us + delay;
    st->pending[st->npending++] = p;
}

static void start_txn(struct sim_state *st, uint64_t now_us)
{
    struct budget_sim *sim = st->sim;
    uint64_t probe;

    sim->txns++;
    sim->txns_after += now_us >= 1000000;
    if (breaker_tick(st->breaker, now_us, &probe))
        breaker_probe_done(st->breaker, probe, sim->fail_prob < 1.0, now_us);
    if (sim->use_budget && breaker_admit(st->breaker, now_us, NULL) != RETRY_OK) {
        sim->rejected++;
        sim->client_errors++;
        return;
    }
    struct pending p = {.start_us = now_us};
    backoff_init(&p.b, &st->cfg);
    budget_record_first(st->budget, now_us);
    st->sec_firsts[now_us / 1000000]++;
    attempt(st, p, now_us);
}

static void run_due(struct sim_state *st, uint64_t now_us)
{
    for (unsigned i = 0; i < st->npending;) {
        if (st->pending[i].due_us > now_us) {
            i++;
            continue;
        }
        struct pending p = st->pending[i];
        st->pending[i] = st->pending[--st->npending];
        attempt(st, p, now_us);
    }
}

static void summarize(struct sim_state *st)
{
    struct budget_sim *sim = st->sim;

    sim->amplification_after =
        sim->txns_after ? (double)sim->attempts_after / (double)sim->txns_after : 0.0;
    sim->worst_second_after = 0.0;
    for (unsigned s = 1; s < sim->seconds; s++) {
        if (!st->sec_firsts[s])
            continue;
        double a = (double)st->sec_attempts[s] / (double)st->sec_firsts[s];
        sim->worst_second_after = a > sim->worst_second_after ? a : sim->worst_second_after;
    }
}

static void simulate(struct sim_state *st)
{
    struct budget_sim *sim = st->sim;
    uint64_t end_ms = (uint64_t)sim->seconds * 1000;
    double spacing_ms = 1000.0 / sim->rate_per_s, next_ms = 0.0;

    for (uint64_t ms = 0; ms < end_ms; ms++) {
        uint64_t now_us = ms * SIM_US_PER_MS;
        run_due(st, now_us);
        for (; next_ms < (double)(ms + 1); next_ms += spacing_ms)
            start_txn(st, now_us);
    }
    /* let the retries already scheduled finish, so every transaction's attempts count */
    for (uint64_t ms = end_ms; st->npending && ms < end_ms + SIM_DRAIN_MS; ms++)
        run_due(st, ms * SIM_US_PER_MS);
    summarize(st);
}

int budget_sim_run(struct budget_sim *sim)
{
    struct sim_state st = {.sim = sim};
    struct breaker_config bcfg;
    int rc = -1;

    sim->txns = sim->attempts = sim->client_errors = sim->rejected = 0;
    sim->txns_after = sim->attempts_after = sim->denied_budget = sim->denied_breaker = 0;
    sim->breaker_transitions = 0;
    sim->first_open_us = UINT64_MAX;
    retry_config_defaults(&st.cfg);
    st.cfg.max_attempts = sim->max_attempts;
    breaker_config_defaults(&bcfg);
    retry_rng_seed(&st.rng, sim->seed);
    st.budget = budget_new(&st.cfg);
    st.breaker = breaker_new(&bcfg, on_transition, sim);
    st.pending = malloc(SIM_PENDING_MAX * sizeof(*st.pending));
    st.sec_attempts = calloc(sim->seconds + SIM_DRAIN_MS / 1000 + 1, sizeof(uint64_t));
    st.sec_firsts = calloc(sim->seconds + SIM_DRAIN_MS / 1000 + 1, sizeof(uint64_t));
    if (st.budget && st.breaker && st.pending && st.sec_attempts && st.sec_firsts) {
        simulate(&st);
        rc = 0;
    }
    free(st.sec_firsts);
    free(st.sec_attempts);
    free(st.pending);
    breaker_free(st.breaker);
    budget_free(st.budget);
    return rc;
}
