/*
 * metrics.c: the metrics registry: the built-in family table, label sets, hot-path updates
 * and the Prometheus text rendering.
 *
 * Interface: metrics.h (px_metrics_init, px_metrics_set_get/release, px_metrics_add,
 * px_metrics_gauge_set, px_metrics_observe, px_metrics_render); user-facing reference:
 * docs/metrics.md.
 *
 * Data layout.  At init every family gets an offset and a stride inside the value array of
 * its kind: a counter or gauge series is one value, a histogram series nbuckets + 1 bucket
 * counts (the last one is +Inf, stored non-cumulative) and one sum.  A family with an
 * enumeration has n_enum_values series per set.  A label set is one allocation: header,
 * then the value array of its kind.  An update is therefore
 *     set->vals[fam->offset + label * fam->stride] += n
 * with no hashing and no allocation.  Sets of a kind are kept in a list in creation order,
 * which is also the rendering order; the kind's overflow set (values "other") is created
 * lazily when the cap is reached.
 *
 * Single-threaded: the registry is a module-level singleton used from the event loop only.
 */
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/json_util.h"
#include "metrics/metrics.h"

/* ---- built-in tables ---- */

static const char *const pool_labels[] = {"database", "user"};
static const char *const database_labels[] = {"database"};
static const char *const chaos_rule_labels[] = {"rule", "kind", "sqlstate"};

static struct px_metrics_kind_def builtin_kinds[PX_MK__COUNT] = {
    [PX_MK_GLOBAL] = {"global", NULL, 0, 1},
    [PX_MK_POOL] = {"pool", pool_labels, 2, PX_METRICS_DEFAULT_MAX_SETS},
    [PX_MK_DATABASE] = {"database", database_labels, 1, PX_METRICS_DEFAULT_MAX_SETS},
    /* chaos.h caps rules at PX_CHAOS_MAX_RULES (1000) */
    [PX_MK_CHAOS_RULE] = {"chaos_rule", chaos_rule_labels, 3, 1000},
};

static const char *const state_label[] = {"state"};
static const char *const client_states[PX_MCS__COUNT] = {
    [PX_MCS_LOGIN] = "login",
    [PX_MCS_IDLE] = "idle",
    [PX_MCS_WAITING] = "waiting",
    [PX_MCS_ACTIVE] = "active",
};
static const char *const server_states[PX_MSS__COUNT] = {
    [PX_MSS_LOGIN] = "login",
    [PX_MSS_IDLE] = "idle",
    [PX_MSS_ACTIVE] = "active",
    [PX_MSS_RESETTING] = "resetting",
};

static const char *const tls_labels[] = {"side", "outcome"};
static const char *const tls_values[] = {
    "client", "ok", "client", "error", /* PX_METRICS_TLS(PX_MTLS_CLIENT, ...) */
    "server", "ok", "server", "error", /* PX_METRICS_TLS(PX_MTLS_SERVER, ...) */
};

static const char *const reason_label[] = {"reason"};
static const char *const auth_reasons[PX_MAR__COUNT] = {
    [PX_MAR_PASSWORD] = "password", [PX_MAR_UNKNOWN_USER] = "unknown_user",
    [PX_MAR_METHOD] = "method",     [PX_MAR_TLS_REQUIRED] = "tls_required",
    [PX_MAR_PROTOCOL] = "protocol", [PX_MAR_TIMEOUT] = "timeout",
    [PX_MAR_OTHER] = "other",
};

/* PostgreSQL's SQLSTATE classes (Appendix A of its manual), then "other". */
static const char *const sqlstate_class_label[] = {"sqlstate_class"};
static const char *const sqlstate_classes[] = {
    "00", "01", "02", "03", "08", "09", "0A", "0B", "0F", "0L", "0P", "0Z", "20", "21",    "22",
    "23", "24", "25", "26", "27", "28", "2B", "2D", "2F", "34", "38", "39", "3B", "3D",    "3F",
    "40", "42", "44", "53", "54", "55", "57", "58", "72", "F0", "HV", "P0", "XX", "other",
};
#define N_SQLSTATE_CLASSES (sizeof(sqlstate_classes) / sizeof(sqlstate_classes[0]))

static const char *const kind_label[] = {"kind"};
static const char *const kind_names[PX_MK__COUNT] = {"global", "pool", "database", "chaos_rule"};

static const char *const move_labels[] = {"from", "to"};
static const char *const breaker_moves[2 * PX_MBM__COUNT] = {
    "closed",    "open",      /* PX_MBM_CLOSED_OPEN */
    "open",      "half-open", /* PX_MBM_OPEN_HALF_OPEN */
    "half-open", "closed",    /* PX_MBM_HALF_OPEN_CLOSED */
    "half-open", "open",      /* PX_MBM_HALF_OPEN_OPEN */
};

static const char *const mode_label[] = {"mode"};
static const char *const lock_modes[PX_MLM__COUNT] = {
    [PX_MLM_READ] = "read",
    [PX_MLM_WRITE] = "write",
    [PX_MLM_EXCLUSIVE] = "exclusive",
};
static const char *const outcome_label[] = {"outcome"};
static const char *const lock_outcomes[PX_MLO__COUNT] = {
    [PX_MLO_GRANTED] = "granted",   [PX_MLO_TIMEOUT] = "timeout", [PX_MLO_DEADLOCK] = "deadlock",
    [PX_MLO_CANCELED] = "canceled", [PX_MLO_ERROR] = "error",
};

static const char *const sqlstate_label[] = {"sqlstate"};
static const char *const retry_sqlstates[PX_MRS__COUNT] = {
    [PX_MRS_40001] = "40001", [PX_MRS_40P01] = "40P01", [PX_MRS_OTHER] = "other"};
static const char *const retry_labels[] = {"sqlstate", "outcome"};
#define RETRY_ROW(st)                                                                              \
    st, "succeeded", st, "diverged", st, "exhausted", st, "over_budget", st, "breaker_open", st,   \
        "not_replayable", st, "buffer_exceeded", st, "canceled"
static const char *const retry_values[PX_MRS__COUNT * PX_MRO__COUNT * 2] = {
    RETRY_ROW("40001"), RETRY_ROW("40P01"), RETRY_ROW("other")};
_Static_assert(PX_MRO_SUCCEEDED == 0 && PX_MRO_BUFFER_EXCEEDED == 6 && PX_MRO__COUNT == 8,
               "RETRY_ROW order");

static const char *const commit_outcomes[PX_MCO__COUNT] = {[PX_MCO_COMMITTED] = "committed",
                                                           [PX_MCO_ABORTED] = "aborted",
                                                           [PX_MCO_READ_ONLY] = "read_only",
                                                           [PX_MCO_UNKNOWN] = "unknown"};

static const double pool_wait_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                           0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
static const double connect_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,  0.5,    1,     2.5,  5,     10};
static const double lock_wait_buckets[] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
#define NB(a) (unsigned)(sizeof(a) / sizeof((a)[0]))

static const struct px_metric_def builtin_defs[PX_M__COUNT] = {
    [PX_M_CLIENTS] = {"clients", PX_METRIC_GAUGE, "Client connections by pool and state.",
                      PX_MK_POOL, state_label, 1, client_states, PX_MCS__COUNT},
    [PX_M_SERVERS] = {"servers", PX_METRIC_GAUGE, "Server connections by pool and state.",
                      PX_MK_POOL, state_label, 1, server_states, PX_MSS__COUNT},
    [PX_M_POOL_WAIT_SECONDS] = {"pool_wait_seconds", PX_METRIC_HISTOGRAM,
                                "Time clients waited for a server connection from the pool.",
                                PX_MK_POOL, .buckets = pool_wait_buckets,
                                .nbuckets = NB(pool_wait_buckets)},
    [PX_M_SERVER_CONNECT_SECONDS] = {"server_connect_seconds", PX_METRIC_HISTOGRAM,
                                     "Time to open and log in a server connection.", PX_MK_POOL,
                                     .buckets = connect_buckets, .nbuckets = NB(connect_buckets)},
    [PX_M_SERVER_CONNECT_FAILURES] = {"server_connect_failures", PX_METRIC_COUNTER,
                                      "Server connection attempts that failed.", PX_MK_POOL},
    [PX_M_TRANSACTIONS] = {"transactions", PX_METRIC_COUNTER,
                           "Transactions completed (including implicit ones).", PX_MK_POOL},
    [PX_M_QUERIES] = {"queries", PX_METRIC_COUNTER,
                      "Queries run (simple Query messages and extended-protocol Syncs).",
                      PX_MK_POOL},
    [PX_M_BYTES_RECEIVED] = {"bytes_received", PX_METRIC_COUNTER, "Bytes received from clients.",
                             PX_MK_POOL},
    [PX_M_BYTES_SENT] = {"bytes_sent", PX_METRIC_COUNTER, "Bytes sent to clients.", PX_MK_POOL},
    [PX_M_CLIENT_CONNECTIONS] = {"client_connections", PX_METRIC_COUNTER,
                                 "Client connections accepted.", PX_MK_GLOBAL},
    [PX_M_TLS_HANDSHAKES] = {"tls_handshakes", PX_METRIC_COUNTER,
                             "TLS handshakes by side (client or server) and outcome.", PX_MK_GLOBAL,
                             tls_labels, 2, tls_values, 4},
    [PX_M_AUTH_FAILURES] = {"auth_failures", PX_METRIC_COUNTER,
                            "Client authentication failures by reason.", PX_MK_GLOBAL, reason_label,
                            1, auth_reasons, PX_MAR__COUNT},
    [PX_M_CLIENT_ERRORS] = {"client_errors", PX_METRIC_COUNTER,
                            "ErrorResponses sent to clients by SQLSTATE class.", PX_MK_GLOBAL,
                            sqlstate_class_label, 1, sqlstate_classes, (unsigned)N_SQLSTATE_CLASSES,
                            .flags = PX_MF_SPARSE},
    [PX_M_METRICS_OVERFLOW] = {"metrics_overflow", PX_METRIC_COUNTER,
                               "Label sets that hit the cardinality cap and were counted "
                               "in the \"other\" series.",
                               PX_MK_GLOBAL, kind_label, 1, kind_names, PX_MK__COUNT},
    /* Locks (docs/locks.md): gauges and counters copied from lockmgr at render time
     * (stats.c), the wait histogram observed when a wait's outcome is delivered. */
    [PX_M_LOCKS_HELD] = {"locks_held", PX_METRIC_GAUGE,
                         "Locks held (one per client and key) by the strongest mode held.",
                         PX_MK_GLOBAL, mode_label, 1, lock_modes, PX_MLM__COUNT},
    [PX_M_LOCK_WAITERS] = {"lock_waiters", PX_METRIC_GAUGE, "Clients waiting for a lock.",
                           PX_MK_GLOBAL},
    [PX_M_LOCK_KEYS] = {"lock_keys", PX_METRIC_GAUGE, "Lock keys with a holder or a waiter.",
                        PX_MK_GLOBAL},
    [PX_M_LOCK_WAIT_SECONDS] = {"lock_wait_seconds", PX_METRIC_HISTOGRAM,
                                "Time clients waited for a lock, by how the wait ended.",
                                PX_MK_GLOBAL, outcome_label, 1, lock_outcomes, PX_MLO__COUNT,
                                lock_wait_buckets, NB(lock_wait_buckets)},
    [PX_M_LOCK_GRANTS] = {"lock_grants", PX_METRIC_COUNTER,
                          "Locks granted (at once or after a wait; upgrades included).",
                          PX_MK_GLOBAL},
    [PX_M_LOCK_WAITS] = {"lock_waits", PX_METRIC_COUNTER,
                         "Lock requests that had to wait (deadlock victims included).",
                         PX_MK_GLOBAL},
    [PX_M_LOCK_TIMEOUTS] = {"lock_timeouts", PX_METRIC_COUNTER,
                            "Lock waits that ended by timeout (55P03).", PX_MK_GLOBAL},
    [PX_M_LOCK_DEADLOCKS] = {"lock_deadlocks", PX_METRIC_COUNTER,
                             "Deadlocks among lock waiters (one victim each, 40P01).",
                             PX_MK_GLOBAL},
    [PX_M_LOCK_CANCELS] = {"lock_cancels", PX_METRIC_COUNTER,
                           "Lock waits canceled (CancelRequest, or the upgraded lock released).",
                           PX_MK_GLOBAL},
    [PX_M_LOCK_LIMIT_REFUSALS] = {"lock_limit_refusals", PX_METRIC_COUNTER,
                                  "Lock requests refused because max_locks was reached (53200).",
                                  PX_MK_GLOBAL},
    [PX_M_CLIENTS_PINNED] = {"clients_pinned", PX_METRIC_GAUGE,
                             "Transaction pooling: clients that keep their server because of "
                             "session state that cannot move (LISTEN, temporary tables, ...).",
                             PX_MK_POOL},
    [PX_M_RETRIES] = {"retries", PX_METRIC_COUNTER,
                      "Client transactions that met a retryable error, by the error and how "
                      "their retry ended.",
                      PX_MK_POOL, retry_labels, 2, retry_values, PX_MRS__COUNT *PX_MRO__COUNT, NULL,
                      0, PX_MF_SPARSE},
    [PX_M_RETRY_ATTEMPTS] = {"retry_attempts", PX_METRIC_COUNTER,
                             "Replays started (each one is an attempt after the first).",
                             PX_MK_POOL, sqlstate_label, 1, retry_sqlstates, PX_MRS__COUNT},
    [PX_M_RETRY_BUFFER_BYTES] = {"retry_buffer_bytes", PX_METRIC_GAUGE,
                                 "Bytes kept to replay transactions (client messages and "
                                 "response digests), all clients together.",
                                 PX_MK_GLOBAL},
    [PX_M_COMMIT_OUTCOMES] = {"commit_outcomes", PX_METRIC_COUNTER,
                              "COMMITs whose server connection was lost after they were "
                              "sent, by what the client was told.",
                              PX_MK_GLOBAL, outcome_label, 1, commit_outcomes, PX_MCO__COUNT},
    [PX_M_BREAKER_STATE] = {"breaker_state", PX_METRIC_GAUGE,
                            "Circuit breaker state per database: 0 closed, 1 open, 2 half-open.",
                            PX_MK_DATABASE},
    [PX_M_BREAKER_TRANSITIONS] = {"breaker_transitions", PX_METRIC_COUNTER,
                                  "Circuit breaker state changes per database, by from and to.",
                                  PX_MK_DATABASE, move_labels, 2, breaker_moves, PX_MBM__COUNT},
    [PX_M_BREAKER_FAILURES] = {"breaker_failures", PX_METRIC_COUNTER,
                               "Failures counted by the circuit breaker of each database "
                               "(connect, login, timeouts, SQLSTATE classes 08 and 53, "
                               "57P01-57P03, connections lost mid-use).",
                               PX_MK_DATABASE},
    [PX_M_BREAKER_REFUSED] = {"breaker_refused", PX_METRIC_COUNTER,
                              "Transactions and logins refused with 57P03 while the "
                              "database's circuit breaker was not closed.",
                              PX_MK_DATABASE},
    /* Fault injection (docs/chaos.md): apart from client_errors, which counts every
     * ErrorResponse sent, injected or real. */
    [PX_M_CHAOS_INJECTED] = {"chaos_injected", PX_METRIC_COUNTER,
                             "Faults injected by fault-injection rules, by rule id, kind and "
                             "SQLSTATE (kind error).",
                             PX_MK_CHAOS_RULE},
    [PX_M_CHAOS_RULES] = {"chaos_rules", PX_METRIC_GAUGE, "Fault-injection rules in effect.",
                          PX_MK_GLOBAL},
    /* Hybrid deadlocks (path/lockprobe.c, docs/locks.md). */
    [PX_M_LOCK_HYBRID_PROBES] = {"lock_hybrid_probes", PX_METRIC_COUNTER,
                                 "Queries to PostgreSQL's pg_blocking_pids() looking for "
                                 "deadlocks through pgwarden's and PostgreSQL's locks (first "
                                 "looks and re-checks).",
                                 PX_MK_GLOBAL},
    [PX_M_LOCK_HYBRID_DEADLOCKS] = {"lock_hybrid_deadlocks", PX_METRIC_COUNTER,
                                    "Deadlocks through pgwarden's and PostgreSQL's locks, "
                                    "confirmed and broken (one lock waiter got 40P01 each).",
                                    PX_MK_GLOBAL},
    /* Deadlocks across instances (lockspace/lockspace.c, docs/locks.md). */
    [PX_M_LOCK_GRAPH_ROUNDS] = {"lock_graph_rounds", PX_METRIC_COUNTER,
                                "Statements that published this instance's part of the wait-for "
                                "graph in PostgreSQL and read the other instances' parts "
                                "(backend = postgresql, while a global lock wait is long).",
                                PX_MK_GLOBAL},
    [PX_M_LOCK_INSTANCE_DEADLOCKS] = {"lock_instance_deadlocks", PX_METRIC_COUNTER,
                                      "Deadlocks across pgwarden instances broken by this "
                                      "instance (one of its lock waiters got 40P01 each).",
                                      PX_MK_GLOBAL},
    [PX_M_CLIENTS_PARKED] = {"clients_parked", PX_METRIC_GAUGE,
                             "Idle clients that gave their buffers back until they send "
                             "something (plain and TLS).",
                             PX_MK_GLOBAL},
};

const struct px_metrics_tables px_metrics_builtin_tables = {
    builtin_defs, PX_M__COUNT, builtin_kinds, PX_MK__COUNT, PX_M_METRICS_OVERFLOW,
};

/* ---- registry state ---- */

union mval {
    uint64_t u;
    double d;
};

struct fam {
    const struct px_metric_def *def;
    size_t offset;   /* first value in the set's array */
    unsigned stride; /* values per series */
    unsigned nseries;
};

struct px_metrics_set {
    unsigned kind;
    unsigned refs;
    bool overflow;
    char **values; /* nlabels sanitized copies */
    struct px_metrics_set *prev, *next;
    union mval vals[]; /* kind's nvals */
};

struct kindstate {
    const struct px_metrics_kind_def *def;
    size_t nvals;
    unsigned max_sets;
    unsigned nlive; /* live sets, not counting the overflow set */
    struct px_metrics_set *head, *tail;
};

static struct {
    bool ready;
    const struct px_metrics_tables *t;
    struct fam *fams;
    size_t nfams;
    struct kindstate *kinds;
    size_t nkinds;
    struct px_metrics_set *global;
    struct {
        px_metrics_collect_cb cb;
        void *arg;
    } coll[PX_METRICS_MAX_COLLECTORS];
    unsigned ncoll;
} R;

/* Where updates go when the caller has no usable set. */
static uint64_t dummy_counter;

static char *dupmsg(const char *fmt, const char *a, const char *b)
{
    char tmp[512];
    snprintf(tmp, sizeof tmp, fmt, a ? a : "(null)", b ? b : "(null)");
    return strdup(tmp);
}

/* ---- validation ---- */

static bool valid_name(const char *s, bool metric)
{
    if (!s || !*s)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (metric && c == ':') || (p != s && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return metric || strncmp(s, "__", 2) != 0;
}

/* Returns a message format ("%s" the label, then "%s" the metric) or NULL; *which is the
 * offending label. */
static const char *check_labels(const char *const *names, unsigned n, const char *const *other,
                                unsigned nother, bool histogram, const char **which)
{
    for (unsigned i = 0; i < n; i++) {
        *which = names[i];
        if (!valid_name(names[i], false))
            return "bad label name %s in %s";
        if (histogram && strcmp(names[i], "le") == 0)
            return "label %s is reserved in histogram %s";
        for (unsigned j = 0; j < i; j++)
            if (strcmp(names[i], names[j]) == 0)
                return "duplicate label %s in %s";
        for (unsigned j = 0; j < nother; j++)
            if (strcmp(names[i], other[j]) == 0)
                return "duplicate label %s in %s";
    }
    return NULL;
}

static int check_def(const struct px_metrics_tables *t, const struct px_metric_def *d,
                     char **errmsg)
{
    const char *bad = NULL, *arg = "";
    if (!valid_name(d->name, true))
        bad = "bad metric name %s%s";
    else if (d->type > PX_METRIC_HISTOGRAM || !d->help)
        bad = "bad type or missing help%s in %s";
    else if (d->kind >= t->nkinds)
        bad = "bad kind%s in %s";
    else if ((d->n_enum_labels == 0) != (d->n_enum_values == 0) ||
             (d->n_enum_values && (!d->enum_values || !d->enum_labels)))
        bad = "enumeration labels and values disagree%s in %s";
    else if ((d->type == PX_METRIC_HISTOGRAM) != (d->nbuckets > 0 && d->buckets != NULL))
        bad = "buckets%s are for histograms only, and required there: %s";
    if (!bad) {
        const struct px_metrics_kind_def *k = &t->kinds[d->kind];
        bad = check_labels(d->enum_labels, d->n_enum_labels, k->label_names, k->nlabels,
                           d->type == PX_METRIC_HISTOGRAM, &arg);
        if (!bad && d->type == PX_METRIC_HISTOGRAM)
            bad = check_labels(k->label_names, k->nlabels, NULL, 0, true, &arg);
        if (!bad)
            arg = "";
    }
    for (unsigned i = 0; !bad && i < d->nbuckets; i++)
        if (!isfinite(d->buckets[i]) || (i > 0 && !(d->buckets[i] > d->buckets[i - 1])))
            bad = "buckets%s not finite and strictly increasing in %s";
    for (unsigned i = 0; !bad && i < d->n_enum_values * d->n_enum_labels; i++)
        if (!d->enum_values[i])
            bad = "missing enumeration value%s in %s";
    if (bad) {
        if (errmsg)
            *errmsg = dupmsg(bad, arg, d->name);
        return -1;
    }
    return 0;
}

static int check_tables(const struct px_metrics_tables *t, char **errmsg)
{
    const char *bad = NULL, *arg = "", *where = "";
    if (!t || !t->kinds || t->nkinds == 0 || t->kinds[0].nlabels != 0 || (t->ndefs && !t->defs))
        bad = "bad tables%s%s";
    for (size_t k = 0; !bad && k < t->nkinds; k++) {
        const struct px_metrics_kind_def *kd = &t->kinds[k];
        where = kd->name ? kd->name : "";
        if (!kd->name || (kd->nlabels && !kd->label_names))
            bad = "bad kind%s %s";
        else
            bad = check_labels(kd->label_names, kd->nlabels, NULL, 0, false, &arg);
    }
    if (!bad && t->overflow_metric >= 0) {
        const struct px_metric_def *o =
            (size_t)t->overflow_metric < t->ndefs ? &t->defs[t->overflow_metric] : NULL;
        where = "";
        if (!o || o->type != PX_METRIC_COUNTER || o->kind != 0 || o->n_enum_values != t->nkinds)
            bad = "bad overflow metric%s%s";
    }
    if (bad) {
        if (errmsg)
            *errmsg = dupmsg(bad, arg, where);
        return -1;
    }
    for (size_t i = 0; i < t->ndefs; i++) {
        if (check_def(t, &t->defs[i], errmsg) < 0)
            return -1;
        for (size_t j = 0; j < i; j++)
            if (strcmp(t->defs[i].name, t->defs[j].name) == 0) {
                if (errmsg)
                    *errmsg = dupmsg("duplicate metric %s%s", t->defs[i].name, "");
                return -1;
            }
    }
    return 0;
}

/* ---- init and shutdown ---- */

static unsigned stride_of(const struct px_metric_def *d)
{
    return d->type == PX_METRIC_HISTOGRAM ? d->nbuckets + 2 : 1;
}

int px_metrics_init_tables(const struct px_metrics_tables *t, char **errmsg)
{
    if (errmsg)
        *errmsg = NULL;
    px_metrics_shutdown();
    if (check_tables(t, errmsg) < 0)
        return -1;
    R.t = t;
    R.nfams = t->ndefs;
    R.nkinds = t->nkinds;
    R.fams = calloc(t->ndefs ? t->ndefs : 1, sizeof *R.fams);
    R.kinds = calloc(t->nkinds, sizeof *R.kinds);
    if (!R.fams || !R.kinds)
        goto nomem;
    for (size_t k = 0; k < t->nkinds; k++) {
        R.kinds[k].def = &t->kinds[k];
        R.kinds[k].max_sets = k == 0                 ? 1
                              : t->kinds[k].max_sets ? t->kinds[k].max_sets
                                                     : PX_METRICS_DEFAULT_MAX_SETS;
    }
    for (size_t i = 0; i < t->ndefs; i++) {
        const struct px_metric_def *d = &t->defs[i];
        struct kindstate *k = &R.kinds[d->kind];
        R.fams[i].def = d;
        R.fams[i].stride = stride_of(d);
        R.fams[i].nseries = d->n_enum_values ? d->n_enum_values : 1;
        R.fams[i].offset = k->nvals;
        k->nvals += (size_t)R.fams[i].stride * R.fams[i].nseries;
    }
    R.ready = true;
    R.global = px_metrics_set_get(0, NULL);
    if (!R.global)
        goto nomem;
    return 0;
nomem:
    px_metrics_shutdown();
    if (errmsg)
        *errmsg = strdup("metrics: out of memory");
    return -1;
}

int px_metrics_init(unsigned max_pools, char **errmsg)
{
    builtin_kinds[PX_MK_POOL].max_sets = max_pools ? max_pools : PX_METRICS_DEFAULT_MAX_SETS;
    return px_metrics_init_tables(&px_metrics_builtin_tables, errmsg);
}

static void set_free(struct px_metrics_set *s)
{
    if (!s)
        return;
    if (s->values) {
        for (unsigned i = 0; i < R.kinds[s->kind].def->nlabels; i++)
            free(s->values[i]);
        free(s->values);
    }
    free(s);
}

void px_metrics_shutdown(void)
{
    if (R.kinds) {
        for (size_t k = 0; k < R.nkinds; k++) {
            struct px_metrics_set *s = R.kinds[k].head;
            while (s) {
                struct px_metrics_set *next = s->next;
                set_free(s);
                s = next;
            }
        }
    }
    free(R.fams);
    free(R.kinds);
    memset(&R, 0, sizeof R);
    dummy_counter = 0;
}

/* ---- label sets ---- */

static bool set_matches(const struct px_metrics_set *s, const char *const *values, size_t *lens)
{
    unsigned n = R.kinds[s->kind].def->nlabels;
    for (unsigned i = 0; i < n; i++)
        if (strlen(s->values[i]) != lens[i] || memcmp(s->values[i], values[i], lens[i]) != 0)
            return false;
    return true;
}

static struct px_metrics_set *set_find(unsigned kind, const char *const *values, size_t *lens)
{
    for (struct px_metrics_set *s = R.kinds[kind].head; s; s = s->next)
        if (set_matches(s, values, lens))
            return s;
    return NULL;
}

static struct px_metrics_set *set_create(unsigned kind, const char *const *values, size_t *lens,
                                         bool overflow)
{
    struct kindstate *k = &R.kinds[kind];
    struct px_metrics_set *s = calloc(1, sizeof *s + k->nvals * sizeof(union mval));
    if (!s)
        return NULL;
    s->kind = kind;
    s->refs = 1;
    s->overflow = overflow;
    if (k->def->nlabels) {
        s->values = calloc(k->def->nlabels, sizeof *s->values);
        if (!s->values)
            goto fail;
        for (unsigned i = 0; i < k->def->nlabels; i++) {
            s->values[i] = strndup(values[i], lens[i]);
            if (!s->values[i])
                goto fail;
        }
    }
    s->prev = k->tail;
    if (k->tail)
        k->tail->next = s;
    else
        k->head = s;
    k->tail = s;
    if (!overflow)
        k->nlive++;
    return s;
fail:
    set_free(s);
    return NULL;
}

struct px_metrics_set *px_metrics_set_get(unsigned kind, const char *const *values)
{
    assert(R.ready);
    if (!R.ready || kind >= R.nkinds)
        return NULL;
    struct kindstate *k = &R.kinds[kind];
    unsigned n = k->def->nlabels;
    if (kind == 0 && R.global)
        return R.global; /* the global set is never released */
    char *clean[n ? n : 1];
    size_t lens[n ? n : 1];
    const char *other[n ? n : 1];
    struct px_metrics_set *s = NULL;
    unsigned i;
    for (i = 0; i < n; i++) {
        const char *v = values && values[i] ? values[i] : "";
        clean[i] = px_utf8_sanitize(v, strlen(v), &lens[i]);
        if (!clean[i])
            goto out;
        lens[i] = px_utf8_truncate(clean[i], lens[i], PX_METRICS_MAX_LABEL_BYTES);
        other[i] = "other";
    }
    s = set_find(kind, (const char *const *)clean, lens);
    if (s) {
        s->refs++;
    } else if (k->nlive < k->max_sets) {
        s = set_create(kind, (const char *const *)clean, lens, false);
    } else {
        size_t olens[n ? n : 1];
        for (unsigned j = 0; j < n; j++)
            olens[j] = 5;
        s = set_find(kind, other, olens);
        if (s)
            s->refs++;
        else
            s = set_create(kind, other, olens, true);
        if (s && R.t->overflow_metric >= 0)
            px_metrics_inc(NULL, (unsigned)R.t->overflow_metric, kind);
    }
out:
    for (unsigned j = 0; j < i; j++)
        free(clean[j]);
    return s;
}

void px_metrics_set_release(struct px_metrics_set *s)
{
    if (!s || s == R.global)
        return;
    assert(s->refs > 0);
    if (--s->refs > 0)
        return;
    struct kindstate *k = &R.kinds[s->kind];
    if (s->prev)
        s->prev->next = s->next;
    else
        k->head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        k->tail = s->prev;
    if (!s->overflow)
        k->nlive--;
    set_free(s);
}

bool px_metrics_set_is_overflow(const struct px_metrics_set *s)
{
    return s && s->overflow;
}

/* ---- updates ---- */

/* The first value of series (set, metric, label), or NULL when the call does not fit. */
static union mval *series(const struct px_metrics_set *cs, unsigned metric, unsigned label,
                          enum px_metric_type type)
{
    assert(R.ready && metric < R.nfams);
    if (metric >= R.nfams)
        return NULL;
    const struct fam *f = &R.fams[metric];
    struct px_metrics_set *s = (struct px_metrics_set *)cs;
    if (!s && f->def->kind == 0)
        s = R.global;
    assert(f->def->type == type);
    assert(!s || s->kind == f->def->kind);
    if (!s || s->kind != f->def->kind || f->def->type != type)
        return NULL;
    assert(label < f->nseries);
    if (label >= f->nseries)
        label = f->nseries - 1;
    return &s->vals[f->offset + (size_t)label * f->stride];
}

void px_metrics_add(struct px_metrics_set *set, unsigned metric, unsigned label, uint64_t n)
{
    union mval *v = series(set, metric, label, PX_METRIC_COUNTER);
    if (v)
        v->u += n;
}

uint64_t *px_metrics_counter_slot(struct px_metrics_set *set, unsigned metric, unsigned label)
{
    union mval *v = series(set, metric, label, PX_METRIC_COUNTER);
    return v ? &v->u : &dummy_counter;
}

void px_metrics_gauge_set(struct px_metrics_set *set, unsigned metric, unsigned label, double x)
{
    union mval *v = series(set, metric, label, PX_METRIC_GAUGE);
    if (v)
        v->d = x;
}

void px_metrics_gauge_add(struct px_metrics_set *set, unsigned metric, unsigned label, double delta)
{
    union mval *v = series(set, metric, label, PX_METRIC_GAUGE);
    if (v)
        v->d += delta;
}

void px_metrics_observe(struct px_metrics_set *set, unsigned metric, unsigned label, double x)
{
    union mval *v = series(set, metric, label, PX_METRIC_HISTOGRAM);
    if (!v || isnan(x))
        return;
    const struct px_metric_def *d = R.fams[metric].def;
    unsigned i = 0;
    while (i < d->nbuckets && x > d->buckets[i]) /* le: upper bounds are inclusive */
        i++;
    v[i].u++;
    v[d->nbuckets + 1].d += x;
}

uint64_t px_metrics_counter_get(const struct px_metrics_set *set, unsigned metric, unsigned label)
{
    union mval *v = series(set, metric, label, PX_METRIC_COUNTER);
    return v ? v->u : 0;
}

double px_metrics_gauge_get(const struct px_metrics_set *set, unsigned metric, unsigned label)
{
    union mval *v = series(set, metric, label, PX_METRIC_GAUGE);
    return v ? v->d : 0;
}

static uint64_t hist_count(const union mval *v, unsigned nbuckets)
{
    uint64_t c = 0;
    for (unsigned i = 0; i <= nbuckets; i++)
        c += v[i].u;
    return c;
}

uint64_t px_metrics_histogram_count(const struct px_metrics_set *set, unsigned metric,
                                    unsigned label)
{
    union mval *v = series(set, metric, label, PX_METRIC_HISTOGRAM);
    return v ? hist_count(v, R.fams[metric].def->nbuckets) : 0;
}

double px_metrics_histogram_sum(const struct px_metrics_set *set, unsigned metric, unsigned label)
{
    union mval *v = series(set, metric, label, PX_METRIC_HISTOGRAM);
    return v ? v[R.fams[metric].def->nbuckets + 1].d : 0;
}

unsigned px_metrics_sqlstate_class(const char *sqlstate)
{
    const unsigned other = (unsigned)N_SQLSTATE_CLASSES - 1;
    if (!sqlstate || !sqlstate[0] || !sqlstate[1])
        return other;
    for (unsigned i = 0; i < other; i++)
        if (sqlstate_classes[i][0] == sqlstate[0] && sqlstate_classes[i][1] == sqlstate[1])
            return i;
    return other;
}

/* ---- collectors ---- */

int px_metrics_add_collector(px_metrics_collect_cb cb, void *arg)
{
    if (!cb || R.ncoll >= PX_METRICS_MAX_COLLECTORS)
        return -1;
    R.coll[R.ncoll].cb = cb;
    R.coll[R.ncoll].arg = arg;
    R.ncoll++;
    return 0;
}

void px_metrics_remove_collector(px_metrics_collect_cb cb, void *arg)
{
    for (unsigned i = 0; i < R.ncoll; i++) {
        if (R.coll[i].cb == cb && R.coll[i].arg == arg) {
            memmove(&R.coll[i], &R.coll[i + 1], (R.ncoll - i - 1) * sizeof R.coll[0]);
            R.ncoll--;
            return;
        }
    }
}

/* ---- rendering ---- */

/* Batches small pieces into sink calls of up to sizeof buf bytes. */
struct writer {
    px_metrics_sink_cb sink;
    void *arg;
    int err;
    size_t len;
    char buf[4096];
};

static void w_flush(struct writer *w)
{
    if (!w->err && w->len && w->sink(w->arg, w->buf, w->len) != 0)
        w->err = -1;
    w->len = 0;
}

static void w_put(struct writer *w, const char *s, size_t n)
{
    if (w->err)
        return;
    if (w->len + n > sizeof w->buf) {
        w_flush(w);
        if (n > sizeof w->buf) {
            if (!w->err && w->sink(w->arg, s, n) != 0)
                w->err = -1;
            return;
        }
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

static void w_str(struct writer *w, const char *s)
{
    w_put(w, s, strlen(s));
}

/* Escapes backslash and newline (HELP text), and the double quote too (label values). */
static void w_escaped(struct writer *w, const char *s, bool quote)
{
    const char *run = s;
    for (const char *p = s; *p; p++) {
        const char *rep = NULL;
        if (*p == '\\')
            rep = "\\\\";
        else if (*p == '\n')
            rep = "\\n";
        else if (quote && *p == '"')
            rep = "\\\"";
        if (rep) {
            w_put(w, run, (size_t)(p - run));
            w_str(w, rep);
            run = p + 1;
        }
    }
    w_str(w, run);
}

/* Shortest decimal that reads back as v; Prometheus spellings for the special values. */
static void fmt_double(double v, char *buf, size_t n)
{
    if (isnan(v)) {
        snprintf(buf, n, "NaN");
    } else if (isinf(v)) {
        snprintf(buf, n, v > 0 ? "+Inf" : "-Inf");
    } else if (v > -1e15 && v < 1e15 && v == (double)(long long)v) { /* no libm */
        snprintf(buf, n, "%.0f", v);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, n, "%.*g", prec, v);
            if (strtod(buf, NULL) == v)
                break;
        }
    }
}

static void w_double(struct writer *w, double v)
{
    char b[40];
    fmt_double(v, b, sizeof b);
    w_str(w, b);
}

static void w_u64(struct writer *w, uint64_t v)
{
    char b[24];
    snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    w_str(w, b);
}

static void w_label(struct writer *w, bool *first, const char *name, const char *value)
{
    w_str(w, *first ? "{" : ",");
    *first = false;
    w_str(w, name);
    w_str(w, "=\"");
    w_escaped(w, value, true);
    w_str(w, "\"");
}

/* Name (with suffix) and the label block of one sample. */
static void w_sample_start(struct writer *w, const struct fam *f, const char *suffix,
                           const struct px_metrics_set *s, unsigned e, const char *le)
{
    const struct px_metric_def *d = f->def;
    const struct px_metrics_kind_def *k = R.kinds[d->kind].def;
    bool first = true;
    w_str(w, PX_METRICS_PREFIX);
    w_str(w, d->name);
    w_str(w, suffix);
    for (unsigned i = 0; i < k->nlabels; i++)
        w_label(w, &first, k->label_names[i], s->values[i]);
    for (unsigned i = 0; i < d->n_enum_labels; i++)
        w_label(w, &first, d->enum_labels[i], d->enum_values[e * d->n_enum_labels + i]);
    if (le)
        w_label(w, &first, "le", le);
    if (!first)
        w_str(w, "}");
    w_str(w, " ");
}

static void render_histogram(struct writer *w, const struct fam *f, const struct px_metrics_set *s,
                             unsigned e, const union mval *v)
{
    const struct px_metric_def *d = f->def;
    uint64_t cum = 0;
    char le[40];
    for (unsigned b = 0; b <= d->nbuckets; b++) {
        cum += v[b].u;
        if (b < d->nbuckets)
            fmt_double(d->buckets[b], le, sizeof le);
        else
            snprintf(le, sizeof le, "+Inf");
        w_sample_start(w, f, "_bucket", s, e, le);
        w_u64(w, cum);
        w_str(w, "\n");
    }
    w_sample_start(w, f, "_sum", s, e, NULL);
    w_double(w, v[d->nbuckets + 1].d);
    w_str(w, "\n");
    w_sample_start(w, f, "_count", s, e, NULL);
    w_u64(w, cum);
    w_str(w, "\n");
}

static void render_family(struct writer *w, const struct fam *f)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    const struct px_metric_def *d = f->def;
    const char *suffix = d->type == PX_METRIC_COUNTER ? "_total" : "";
    w_str(w, "# HELP " PX_METRICS_PREFIX);
    w_str(w, d->name);
    w_str(w, suffix);
    w_str(w, " ");
    w_escaped(w, d->help, false);
    w_str(w, "\n# TYPE " PX_METRICS_PREFIX);
    w_str(w, d->name);
    w_str(w, suffix);
    w_str(w, " ");
    w_str(w, type_names[d->type]);
    w_str(w, "\n");
    for (const struct px_metrics_set *s = R.kinds[d->kind].head; s; s = s->next) {
        for (unsigned e = 0; e < f->nseries; e++) {
            const union mval *v = &s->vals[f->offset + (size_t)e * f->stride];
            if (d->type == PX_METRIC_HISTOGRAM) {
                if ((d->flags & PX_MF_SPARSE) && hist_count(v, d->nbuckets) == 0)
                    continue;
                render_histogram(w, f, s, e, v);
                continue;
            }
            if ((d->flags & PX_MF_SPARSE) && v->u == 0) /* 0 and +0.0 have the same bits */
                continue;
            w_sample_start(w, f, suffix, s, e, NULL);
            if (d->type == PX_METRIC_COUNTER)
                w_u64(w, v->u);
            else
                w_double(w, v->d);
            w_str(w, "\n");
        }
    }
}

int px_metrics_render(px_metrics_sink_cb sink, void *arg)
{
    assert(R.ready);
    if (!R.ready)
        return -1;
    for (unsigned i = 0; i < R.ncoll; i++)
        R.coll[i].cb(R.coll[i].arg);
    struct writer w;
    w.sink = sink;
    w.arg = arg;
    w.err = 0;
    w.len = 0;
    for (size_t i = 0; i < R.nfams && !w.err; i++)
        render_family(&w, &R.fams[i]);
    w_flush(&w);
    return w.err;
}

static int buf_sink(void *arg, const char *data, size_t len)
{
    struct px_metrics_buf *b = arg;
    if (b->cap - b->len <= len) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len <= len)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (!p)
            return -1;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

int px_metrics_render_buf(struct px_metrics_buf *buf)
{
    return px_metrics_render(buf_sink, buf);
}
