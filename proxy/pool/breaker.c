/*
 * breaker.c: the circuit breaker of each database (see breaker.h and docs/breaker.md).
 *
 * Owns the set of breakers (a chained hash table by database name, keyed SipHash, since
 * names come from clients through the "*" entry, plus a list for the janitor), the
 * outcome classification of the proxy's events, the 57P03 refusal text, and the probes.
 * The state machine itself is retry/'s (retry/breaker.c): this file never decides a
 * transition, it only feeds outcomes and time in and runs the probes it asks for.
 *
 * Interface: px_breaker_configure, _get, _put, _find, _free_all, _admit, _txn_done,
 * _server_error, _login_ok, _login_failed, _janitor, _info, _closed, _set_clock (tests),
 * and the transport's event px_pool_server_lost (net/server.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "retry/breaker.h"
#include "retry/classify.h"

#include "base/hash.h"
#include "base/log.h"
#include "metrics/metrics.h"
#include "net/server.h"
#include "pool/breaker.h"

struct px_breaker {
    struct px_breaker *hash_next; /* chain of its bucket */
    struct px_list link;          /* on reg.all */
    uint64_t hash;
    char *database;
    int refs;        /* pools pointing at it, plus one while configured */
    bool configured; /* a [databases] entry of this name exists */
    bool mark;       /* px_breaker_configure's sweep */
    bool stale;      /* [breaker] changed: renewed with the new settings once closed */
    struct breaker *br;
    /* Successes (transactions, logins) not yet credited: one increment on the hot path,
     * credited by the janitor or before the next failure, so that a success between two
     * failures still breaks their run. */
    uint64_t ok_pending;
    uint64_t failures;
    char last_failure[160];
    struct px_metrics_set *metrics;
};

#define INDEX_MIN 16

static struct {
    bool ready;
    struct px_breaker **buckets;
    size_t nbuckets; /* a power of two */
    size_t n;
    struct px_hash_key key;
    struct px_list all;
    struct breaker_config cfg;
} reg;

/* ---- the clock ---------------------------------------------------------------------------- */

static uint64_t monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t (*clock_us)(void) = monotonic_us;

void px_breaker_set_clock(uint64_t (*now_us)(void))
{
    clock_us = now_us ? now_us : monotonic_us;
}

/* ---- settings and transitions ---------------------------------------------------------- */

static void config_of(const struct px_config *c, struct breaker_config *bc)
{
    breaker_config_defaults(bc);
    if (!c)
        return;
    struct breaker_config want = *bc;
    want.failure_rate_pct = (unsigned)c->failure_rate_pct;
    want.min_requests = (unsigned)c->min_requests;
    want.window_ms = (unsigned)c->window_ms;
    want.consecutive_failures = (unsigned)c->consecutive_failures;
    want.open_ms = (unsigned)c->open_ms;
    want.open_max_ms = (unsigned)c->open_max_ms;
    want.probe_timeout_ms = (unsigned)c->probe_timeout_ms;
    const char *why = NULL;
    if (breaker_config_check(&want, &why) == RETRY_OK) /* config.c checked the same ranges */
        *bc = want;
    else
        px_error("breaker", 0, 0, "[breaker] %s: using the defaults", why ? why : "invalid");
}

static bool config_equal(const struct breaker_config *a, const struct breaker_config *b)
{
    return a->failure_rate_pct == b->failure_rate_pct && a->min_requests == b->min_requests &&
           a->window_ms == b->window_ms && a->consecutive_failures == b->consecutive_failures &&
           a->open_ms == b->open_ms && a->open_max_ms == b->open_max_ms &&
           a->probe_timeout_ms == b->probe_timeout_ms;
}

static unsigned move_index(enum breaker_state from, enum breaker_state to)
{
    if (from == BREAKER_CLOSED)
        return PX_MBM_CLOSED_OPEN;
    if (from == BREAKER_OPEN)
        return PX_MBM_OPEN_HALF_OPEN;
    return to == BREAKER_CLOSED ? PX_MBM_HALF_OPEN_CLOSED : PX_MBM_HALF_OPEN_OPEN;
}

/* retry/'s transition callback: logs and metrics only (it must not call the breaker). */
static void on_transition(const struct breaker_transition *t, void *arg)
{
    struct px_breaker *b = arg;
    px_metrics_gauge_set(b->metrics, PX_M_BREAKER_STATE, 0, (double)t->to);
    px_metrics_inc(b->metrics, PX_M_BREAKER_TRANSITIONS, move_index(t->from, t->to));
    const char *why = breaker_reason_name(t->reason);
    switch (t->to) {
    case BREAKER_OPEN:
        px_warning("breaker", 0, 0,
                   "database \"%s\": circuit breaker open (%s, trip %u), next probe in %.1f s; "
                   "last failure: %s",
                   b->database, why, t->trips, (double)t->open_us / 1e6,
                   b->last_failure[0] ? b->last_failure : "none");
        break;
    case BREAKER_HALF_OPEN:
        px_info("breaker", 0, 0, "database \"%s\": circuit breaker half-open, probing",
                b->database);
        break;
    case BREAKER_CLOSED:
        px_info("breaker", 0, 0, "database \"%s\": circuit breaker closed (%s)", b->database, why);
        break;
    }
}

/* A new state machine for b with the current settings (the old one is freed).  False
 * when out of memory (b keeps its old one). */
static bool renew(struct px_breaker *b)
{
    struct breaker *br = breaker_new(&reg.cfg, on_transition, b);
    if (!br)
        return false;
    breaker_free(b->br);
    b->br = br;
    b->stale = false;
    b->ok_pending = 0;
    px_metrics_gauge_set(b->metrics, PX_M_BREAKER_STATE, 0, BREAKER_CLOSED);
    return true;
}

/* ---- the set of breakers --------------------------------------------------------------- */

static void registry_init(void)
{
    if (reg.ready)
        return;
    reg.ready = true;
    px_list_init(&reg.all);
    px_hash_key_init(&reg.key);
    config_of(px.cfg, &reg.cfg);
}

static uint64_t name_hash(const char *database)
{
    return px_siphash13(&reg.key, database, strlen(database));
}

/* Doubles the table when it holds more breakers than buckets.  -1 when out of memory and
 * there is no table yet (a full table keeps working with longer chains). */
static int index_grow(void)
{
    if (reg.nbuckets && reg.n < reg.nbuckets)
        return 0;
    size_t n = reg.nbuckets ? reg.nbuckets * 2 : INDEX_MIN;
    struct px_breaker **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return reg.nbuckets ? 0 : -1;
    for (size_t i = 0; i < reg.nbuckets; i++) {
        struct px_breaker *b = reg.buckets[i], *next;
        for (; b; b = next) {
            next = b->hash_next;
            b->hash_next = nb[b->hash & (n - 1)];
            nb[b->hash & (n - 1)] = b;
        }
    }
    free(reg.buckets);
    reg.buckets = nb;
    reg.nbuckets = n;
    return 0;
}

struct px_breaker *px_breaker_find(const char *database)
{
    if (!reg.ready || !reg.nbuckets || !database)
        return NULL;
    uint64_t h = name_hash(database);
    struct px_breaker *b = reg.buckets[h & (reg.nbuckets - 1)];
    for (; b; b = b->hash_next)
        if (b->hash == h && !strcmp(b->database, database))
            return b;
    return NULL;
}

/* Finds or makes the breaker of database (no reference taken).  NULL when out of memory. */
static struct px_breaker *find_or_make(const char *database)
{
    registry_init();
    struct px_breaker *b = px_breaker_find(database);
    if (b)
        return b;
    if (index_grow() < 0)
        return NULL;
    b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->database = strdup(database);
    b->br = breaker_new(&reg.cfg, on_transition, b);
    if (!b->database || !b->br) {
        breaker_free(b->br);
        free(b->database);
        free(b);
        return NULL;
    }
    b->metrics = px_metrics_database_new(database);
    px_metrics_gauge_set(b->metrics, PX_M_BREAKER_STATE, 0, BREAKER_CLOSED);
    b->hash = name_hash(database);
    b->hash_next = reg.buckets[b->hash & (reg.nbuckets - 1)];
    reg.buckets[b->hash & (reg.nbuckets - 1)] = b;
    px_list_append(&reg.all, &b->link);
    reg.n++;
    return b;
}

static void breaker_destroy(struct px_breaker *b)
{
    struct px_breaker **pp = &reg.buckets[b->hash & (reg.nbuckets - 1)];
    while (*pp && *pp != b)
        pp = &(*pp)->hash_next;
    if (*pp)
        *pp = b->hash_next;
    px_list_remove(&b->link);
    reg.n--;
    px_metrics_set_release(b->metrics);
    breaker_free(b->br);
    free(b->database);
    free(b);
}

struct px_breaker *px_breaker_get(const char *database)
{
    struct px_breaker *b = find_or_make(database);
    if (b)
        b->refs++;
    return b;
}

void px_breaker_put(struct px_breaker *b)
{
    if (b && --b->refs <= 0)
        breaker_destroy(b);
}

int px_breaker_configure(void)
{
    registry_init();
    int rc = 0;
    struct breaker_config bc;
    config_of(px.cfg, &bc);
    bool changed = !config_equal(&bc, &reg.cfg);
    reg.cfg = bc;
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &reg.all)
    {
        struct px_breaker *b = PX_CONTAINER_OF(it, struct px_breaker, link);
        b->mark = b->configured;
        b->configured = false;
        if (changed) {
            b->stale = true;
            if (breaker_get_state(b->br) == BREAKER_CLOSED)
                renew(b); /* else once it closes (janitor) */
        }
    }
    for (size_t i = 0; px.cfg && i < px.cfg->ndbs; i++) {
        const char *name = px.cfg->dbs[i].name;
        if (!strcmp(name, "*"))
            continue;
        struct px_breaker *b = find_or_make(name);
        if (!b) {
            rc = -1;
            continue;
        }
        b->configured = true;
        if (b->mark)
            b->mark = false; /* configured before: keeps its reference */
        else
            b->refs++;
    }
    px_list_for_each_safe(it, tmp, &reg.all)
    {
        struct px_breaker *b = PX_CONTAINER_OF(it, struct px_breaker, link);
        if (b->mark) { /* its entry is gone: pools of the name may still hold it */
            b->mark = false;
            px_breaker_put(b);
        }
    }
    return rc;
}

void px_breaker_free_all(void)
{
    struct px_list *it, *tmp;
    if (!reg.ready)
        return;
    px_list_for_each_safe(it, tmp, &reg.all)
    {
        breaker_destroy(PX_CONTAINER_OF(it, struct px_breaker, link));
    }
    free(reg.buckets);
    memset(&reg, 0, sizeof(reg));
}

/* ---- outcomes ------------------------------------------------------------------------- */

/* Credits the pending successes: they all happened before whatever comes next. */
static void credit(struct px_breaker *b, uint64_t now)
{
    uint64_t n = b->ok_pending;
    b->ok_pending = 0;
    if (breaker_get_state(b->br) != BREAKER_CLOSED)
        return; /* outcomes do not count while open or half-open: only probes decide */
    while (n--)
        breaker_record(b->br, false, now);
}

static void count_failure(struct px_breaker *b, const char *what)
{
    uint64_t now = clock_us();
    credit(b, now);
    b->failures++;
    px_metrics_inc(b->metrics, PX_M_BREAKER_FAILURES, 0);
    snprintf(b->last_failure, sizeof(b->last_failure), "%s", what);
    breaker_record(b->br, true, now);
}

static bool is_breaker_failure(const char *sqlstate)
{
    return sqlstate && (retry_classify(NULL, sqlstate) & RETRY_CLASS_BREAKER) != 0;
}

void px_breaker_txn_done(struct px_pool *pool)
{
    if (pool->breaker)
        pool->breaker->ok_pending++;
}

void px_breaker_server_error(struct px_server *s, const char *sqlstate)
{
    struct px_breaker *b = s->pool->breaker;
    /* 08P01 from a server in use answers the client's own malformed message (a Bind with
     * the wrong number of parameters, say): one buggy client must not take the database
     * away from the others. */
    if (!b || !is_breaker_failure(sqlstate) || (sqlstate && !strcmp(sqlstate, "08P01")))
        return;
    char what[80];
    snprintf(what, sizeof(what), "ErrorResponse %.5s from a server in use", sqlstate);
    s->breaker_counted = true;
    count_failure(b, what);
}

void px_pool_server_lost(struct px_server *s)
{
    struct px_breaker *b = s->pool->breaker;
    if (!b || s->breaker_counted)
        return; /* its FATAL was counted already */
    s->breaker_counted = true;
    count_failure(b, "server connection lost while in use");
}

/* The probe s ran is over. */
static void probe_done(struct px_breaker *b, struct px_server *s, bool ok, const char *what)
{
    uint64_t id = s->probe_id;
    s->probe_id = 0;
    if (!ok) {
        snprintf(b->last_failure, sizeof(b->last_failure), "probe: %.150s", what);
        b->failures++;
        px_metrics_inc(b->metrics, PX_M_BREAKER_FAILURES, 0);
    }
    px_info("breaker", 'S', s->id, "database \"%s\": probe %s%s%s", b->database,
            ok ? "succeeded" : "failed", what ? ": " : "", what ? what : "");
    breaker_probe_done(b->br, id, ok, clock_us());
}

void px_breaker_login_ok(struct px_server *s)
{
    struct px_breaker *b = s->pool->breaker;
    if (!b)
        return;
    if (s->probe_id)
        probe_done(b, s, true, NULL);
    else
        b->ok_pending++;
}

void px_breaker_login_failed(struct px_server *s, struct evbuffer *error, const char *msg)
{
    struct px_breaker *b = s->pool->breaker;
    if (!b)
        return;
    const char *code = NULL, *text = msg;
    if (error) {
        size_t n = evbuffer_get_length(error);
        const char *m = (const char *)evbuffer_pullup(error, (ssize_t)n);
        code = m && n > 5 ? px_wire_error_field(m + 5, n - 5, 'C') : NULL;
        text = m && n > 5 ? px_wire_error_field(m + 5, n - 5, 'M') : NULL;
    }
    /* PostgreSQL's own refusal counts by its SQLSTATE (53300, 57P03 count; a wrong password
     * or database name does not); without one, the connection failed or timed out, unless
     * pgwarden stopped because it has no credentials the server accepts. */
    bool failure = error ? is_breaker_failure(code) : !s->login_no_credentials;
    char what[200];
    snprintf(what, sizeof(what), "%s%s%s%s", code ? code : "", code ? " " : "",
             text ? text : "server login failed", code ? " at login" : "");
    if (s->probe_id) {
        probe_done(b, s, !failure, what);
        return;
    }
    if (failure)
        count_failure(b, what);
}

/* ---- admission -------------------------------------------------------------------------- */

bool px_breaker_admit(struct px_breaker *b, struct px_breaker_refusal *why)
{
    /* Closed: no clock read (admit would only do housekeeping), so the hot path stays a
     * load and a compare. */
    if (!b || breaker_get_state(b->br) == BREAKER_CLOSED)
        return true;
    uint64_t wait_us = 0;
    if (breaker_admit(b->br, clock_us(), &wait_us) == RETRY_OK)
        return true;
    px_metrics_inc(b->metrics, PX_M_BREAKER_REFUSED, 0);
    if (breaker_get_state(b->br) == BREAKER_OPEN) {
        /* Rounded up to a tenth of a second: never promises a probe earlier than it runs. */
        uint64_t tenths = (wait_us + 99999) / 100000;
        snprintf(why->message, sizeof(why->message),
                 "database \"%.100s\" is unavailable (circuit breaker open): next probe in "
                 "%llu.%llu s",
                 b->database, (unsigned long long)(tenths / 10), (unsigned long long)(tenths % 10));
    } else {
        snprintf(why->message, sizeof(why->message),
                 "database \"%.100s\" is unavailable (circuit breaker half-open): a probe is "
                 "running",
                 b->database);
    }
    snprintf(why->detail, sizeof(why->detail), "Last failure counted: %s.",
             b->last_failure[0] ? b->last_failure : "none");
    return false;
}

/* ---- probes ----------------------------------------------------------------------------- */

static int total_servers(const struct px_pool *p)
{
    return p->n_login + p->n_idle + p->n_active + p->n_resetting;
}

/* The pool a probe of b logs in through: one of its database with room, else any. */
static struct px_pool *probe_pool(const struct px_breaker *b)
{
    struct px_pool *any = NULL;
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &px.pools)
    {
        struct px_pool *p = PX_CONTAINER_OF(it, struct px_pool, link);
        if (p->breaker != b)
            continue;
        if (total_servers(p) < p->pool_size)
            return p;
        if (!any)
            any = p;
    }
    return any;
}

static void start_probe(struct px_breaker *b, uint64_t id)
{
    struct px_pool *pool = probe_pool(b);
    if (!pool) {
        /* No pool of the name is left (they were all freed): nothing to log in through,
         * and the next client's own login is the test. */
        px_info("breaker", 0, 0, "database \"%s\": no pool to probe through: closing", b->database);
        breaker_probe_done(b->br, id, true, clock_us());
        return;
    }
    struct px_server *s = px_server_launch(pool, NULL);
    if (!s) {
        snprintf(b->last_failure, sizeof(b->last_failure), "probe: cannot connect to %s:%d",
                 pool->host, pool->port);
        breaker_probe_done(b->br, id, false, clock_us());
        return;
    }
    s->probe_id = id;
    uint64_t deadline = s->created_ms + (uint64_t)reg.cfg.probe_timeout_ms;
    if (deadline < s->login_deadline_ms)
        s->login_deadline_ms = deadline;
    px_info("breaker", 'S', s->id, "database \"%s\": probing with a login as %s to %s:%d",
            b->database, pool->server_user, pool->host, pool->port);
}

void px_breaker_janitor(void)
{
    if (!reg.ready)
        return;
    uint64_t now = clock_us();
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &reg.all)
    {
        struct px_breaker *b = PX_CONTAINER_OF(it, struct px_breaker, link);
        credit(b, now);
        if (b->stale && breaker_get_state(b->br) == BREAKER_CLOSED)
            renew(b);
        uint64_t id;
        if (!px.shutting_down && breaker_tick(b->br, now, &id))
            start_probe(b, id);
    }
}

/* ---- views ------------------------------------------------------------------------------ */

void px_breaker_info(const struct px_breaker *b, struct px_breaker_info *out)
{
    memset(out, 0, sizeof(*out));
    out->state = breaker_state_name(BREAKER_CLOSED);
    out->next_probe_ms = -1;
    out->last_failure = "";
    if (!b)
        return;
    enum breaker_state st = breaker_get_state(b->br);
    out->state = breaker_state_name(st);
    if (st != BREAKER_CLOSED) {
        uint64_t at = breaker_next_deadline_us(b->br), now = clock_us();
        out->next_probe_ms = st == BREAKER_OPEN && at > now ? (int64_t)((at - now) / 1000) : 0;
    }
    out->last_failure = b->last_failure;
    out->failures = b->failures;
}

bool px_breaker_closed(const struct px_breaker *b)
{
    return !b || breaker_get_state(b->br) == BREAKER_CLOSED;
}
