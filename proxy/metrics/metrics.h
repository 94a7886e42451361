/*
 * metrics.h: pgwarden's metrics registry (library px_metrics: pure C, no I/O, no locking).
 *
 * Every metric family is one row of a static table (struct px_metric_def): name, type,
 * help, the kind of its dynamic label set, its fixed-enumeration labels and, for
 * histograms, its buckets.  The built-in table lives in metrics.c and is indexed by
 * enum px_metric; docs/metrics.md describes every row.
 *
 * Labels come in two parts, both bounded:
 *   - a dynamic label set of a kind (PX_MK_POOL: {database,user}).  A set is created when
 *     its owner appears (px_metrics_pool_new when a pool is created) and released when it
 *     goes; at most max_sets live sets per kind, further ones share one overflow set whose
 *     label values are all "other" (and pgwarden_metrics_overflow_total{kind} counts them).
 *     Families of kind PX_MK_GLOBAL have no dynamic labels; pass NULL as their set.
 *   - a fixed enumeration (state, reason, SQLSTATE class, ...): a label index, one of the
 *     PX_M*_ enums below.  An index out of range is counted in the last value.
 * So the number of series is bounded at init time: no hashing and no allocation on the
 * hot path; an update is an index computation and a plain add on the set's value array.
 * The proxy is single-threaded: every function here runs on the event loop thread.
 *
 * Adding metrics later (locks, retries, breakers, chaos): add a row to the table in
 * metrics.c and an enumerator to enum px_metric (same order), and, when the family needs a
 * new dynamic dimension (e.g. {key_prefix} capped at 1000, or {database} for breakers), a
 * row to the kind table and an enumerator to enum px_metrics_kind.  Nothing else changes.
 *
 * Rendering produces the Prometheus text exposition format 0.0.4: "# HELP" and "# TYPE"
 * lines, names prefixed "pgwarden_", counters suffixed "_total", histograms as _bucket
 * (cumulative, with le including "+Inf"), _sum and _count; label values escaped and always
 * valid UTF-8 (invalid bytes become U+FFFD when the set is created).
 */
#ifndef PGW_PROXY_METRICS_H
#define PGW_PROXY_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PX_METRICS_PREFIX "pgwarden_"
/* Default cap on live label sets per dynamic kind (pools); see px_metrics_init(). */
#define PX_METRICS_DEFAULT_MAX_SETS 1000
/* Label values are truncated (on a UTF-8 character boundary) to this many bytes. */
#define PX_METRICS_MAX_LABEL_BYTES 256
/* At most this many collectors (px_metrics_add_collector). */
#define PX_METRICS_MAX_COLLECTORS 8

enum px_metric_type { PX_METRIC_COUNTER = 0, PX_METRIC_GAUGE = 1, PX_METRIC_HISTOGRAM = 2 };

/* Family flags. */
enum {
    /* Series whose value is zero (histograms: count zero) are not rendered: for large
     * enumerations such as SQLSTATE classes. */
    PX_MF_SPARSE = 1u << 0,
};

/* Kinds of dynamic label sets (rows of the kind table in metrics.c). */
enum px_metrics_kind {
    PX_MK_GLOBAL = 0, /* no dynamic labels: exactly one set, always present */
    PX_MK_POOL = 1,   /* {database, user}: one set per pool */
    PX_MK_DATABASE,   /* {database}: one set per circuit breaker (pool/breaker.h) */
    PX_MK_CHAOS_RULE, /* {rule, kind, sqlstate}: one set per fault-injection rule */
    PX_MK__COUNT
};

/* Built-in families (rows of the table in metrics.c, same order).  The comment gives the
 * kind and the fixed-enumeration label with its index enum. */
enum px_metric {
    PX_M_CLIENTS = 0,             /* gauge, pool, state: enum px_metrics_client_state */
    PX_M_SERVERS,                 /* gauge, pool, state: enum px_metrics_server_state */
    PX_M_POOL_WAIT_SECONDS,       /* histogram, pool */
    PX_M_SERVER_CONNECT_SECONDS,  /* histogram, pool (successful connections + login) */
    PX_M_SERVER_CONNECT_FAILURES, /* counter, pool */
    PX_M_TRANSACTIONS,            /* counter, pool */
    PX_M_QUERIES,                 /* counter, pool */
    PX_M_BYTES_RECEIVED,          /* counter, pool: bytes received from clients */
    PX_M_BYTES_SENT,              /* counter, pool: bytes sent to clients */
    PX_M_CLIENT_CONNECTIONS,      /* counter, global: accepted client connections */
    PX_M_TLS_HANDSHAKES,          /* counter, global, {side,outcome}: PX_METRICS_TLS() */
    PX_M_AUTH_FAILURES,           /* counter, global, reason: enum px_metrics_auth_reason */
    PX_M_CLIENT_ERRORS,           /* counter, global, sqlstate_class: px_metrics_sqlstate_class */
    PX_M_METRICS_OVERFLOW,        /* counter, global, kind: enum px_metrics_kind */
    PX_M_LOCKS_HELD,              /* gauge, global, mode: enum px_metrics_lock_mode */
    PX_M_LOCK_WAITERS,            /* gauge, global */
    PX_M_LOCK_KEYS,               /* gauge, global */
    PX_M_LOCK_WAIT_SECONDS,       /* histogram, global, outcome: px_metrics_lock_outcome */
    PX_M_LOCK_GRANTS,             /* counter, global */
    PX_M_LOCK_WAITS,              /* counter, global */
    PX_M_LOCK_TIMEOUTS,           /* counter, global */
    PX_M_LOCK_DEADLOCKS,          /* counter, global */
    PX_M_LOCK_CANCELS,            /* counter, global */
    PX_M_LOCK_LIMIT_REFUSALS,     /* counter, global */
    PX_M_CLIENTS_PINNED,          /* gauge, pool */
    PX_M_RETRIES,                 /* counter, pool, {sqlstate,outcome}: PX_METRICS_RETRY() */
    PX_M_RETRY_ATTEMPTS,          /* counter, pool, sqlstate: enum px_metrics_retry_sqlstate */
    PX_M_RETRY_BUFFER_BYTES,      /* gauge, global */
    PX_M_COMMIT_OUTCOMES,         /* counter, global, outcome: enum px_metrics_commit_outcome */
    PX_M_BREAKER_STATE,           /* gauge, database: 0 closed, 1 open, 2 half-open */
    PX_M_BREAKER_TRANSITIONS,     /* counter, database, {from,to}: enum px_metrics_breaker_move */
    PX_M_BREAKER_FAILURES,        /* counter, database: failures the breaker counted */
    PX_M_BREAKER_REFUSED,         /* counter, database: transactions and logins refused */
    PX_M_CHAOS_INJECTED,          /* counter, chaos_rule: faults injected (chaos/chaos.c) */
    PX_M_CHAOS_RULES,             /* gauge, global: fault-injection rules in effect */
    PX_M_LOCK_HYBRID_PROBES,      /* counter, global: pg_blocking_pids() queries (lockprobe.c) */
    PX_M_LOCK_HYBRID_DEADLOCKS,   /* counter, global: hybrid deadlocks broken (one victim each) */
    PX_M_LOCK_GRAPH_ROUNDS,       /* counter, global: wait-for parts exchanged (lockspace.c) */
    PX_M_LOCK_INSTANCE_DEADLOCKS, /* counter, global: deadlocks across instances broken here */
    PX_M_CLIENTS_PARKED,          /* gauge, global: idle clients without buffers (net/client.c) */
    PX_M__COUNT
};

/* state label of PX_M_CLIENTS: "login", "idle", "waiting", "active". */
enum px_metrics_client_state {
    PX_MCS_LOGIN = 0, /* connected, startup / authentication not finished */
    PX_MCS_IDLE,      /* logged in, no server linked and not asking for one */
    PX_MCS_WAITING,   /* waiting for a server from the pool */
    PX_MCS_ACTIVE,    /* linked to a server */
    PX_MCS__COUNT
};

/* state label of PX_M_SERVERS: "login", "idle", "active", "resetting". */
enum px_metrics_server_state {
    PX_MSS_LOGIN = 0, /* connecting, TLS or authentication in progress */
    PX_MSS_IDLE,      /* in the pool, ready */
    PX_MSS_ACTIVE,    /* linked to a client */
    PX_MSS_RESETTING, /* running server_reset_query / being checked before reuse */
    PX_MSS__COUNT
};

/* {side,outcome} of PX_M_TLS_HANDSHAKES: label index PX_METRICS_TLS(side, outcome). */
enum px_metrics_tls_side { PX_MTLS_CLIENT = 0, PX_MTLS_SERVER = 1 };
enum px_metrics_tls_outcome { PX_MTLS_OK = 0, PX_MTLS_ERROR = 1 };
#define PX_METRICS_TLS(side, outcome) ((unsigned)(side)*2u + (unsigned)(outcome))

/* {from,to} of PX_M_BREAKER_TRANSITIONS: the legal moves of a breaker. */
enum px_metrics_breaker_move {
    PX_MBM_CLOSED_OPEN = 0,  /* tripped */
    PX_MBM_OPEN_HALF_OPEN,   /* open period over: a probe runs */
    PX_MBM_HALF_OPEN_CLOSED, /* the probe succeeded */
    PX_MBM_HALF_OPEN_OPEN,   /* the probe failed or timed out */
    PX_MBM__COUNT
};

/* reason label of PX_M_AUTH_FAILURES. */
enum px_metrics_auth_reason {
    PX_MAR_PASSWORD = 0, /* "password": wrong password or SCRAM proof */
    PX_MAR_UNKNOWN_USER, /* "unknown_user": not in auth_file */
    PX_MAR_METHOD,       /* "method": client cannot do the required method */
    PX_MAR_TLS_REQUIRED, /* "tls_required": plaintext refused by client_tls_mode */
    PX_MAR_PROTOCOL,     /* "protocol": malformed startup or auth message */
    PX_MAR_TIMEOUT,      /* "timeout": client_login_timeout_ms expired */
    PX_MAR_OTHER,        /* "other" */
    PX_MAR__COUNT
};

/* mode label of PX_M_LOCKS_HELD: "read", "write", "exclusive" (lockmgr's order). */
enum px_metrics_lock_mode { PX_MLM_READ = 0, PX_MLM_WRITE, PX_MLM_EXCLUSIVE, PX_MLM__COUNT };

/* outcome label of PX_M_LOCK_WAIT_SECONDS: how a lock wait ended. */
enum px_metrics_lock_outcome {
    PX_MLO_GRANTED = 0, /* "granted" */
    PX_MLO_TIMEOUT,     /* "timeout": lock_timeout_ms or the call's timeout_ms (55P03) */
    PX_MLO_DEADLOCK,    /* "deadlock": chosen as deadlock victim (40P01) */
    PX_MLO_CANCELED,    /* "canceled": CancelRequest (57014), or the upgraded lock went */
    PX_MLO_ERROR,       /* "error": any other end (fencing tokens used up) */
    PX_MLO__COUNT
};

/* sqlstate label of PX_M_RETRIES and PX_M_RETRY_ATTEMPTS: the error that was retried. */
enum px_metrics_retry_sqlstate {
    PX_MRS_40001 = 0, /* "40001" serialization_failure */
    PX_MRS_40P01,     /* "40P01" deadlock_detected */
    PX_MRS_OTHER,     /* "other": another configured retryable SQLSTATE */
    PX_MRS__COUNT
};
/* outcome label of PX_M_RETRIES: how the retry of one client transaction ended. */
enum px_metrics_retry_outcome {
    PX_MRO_SUCCEEDED = 0,   /* "succeeded": replayed, the client saw no error */
    PX_MRO_DIVERGED,        /* "diverged": the replay differed from what the client saw */
    PX_MRO_EXHAUSTED,       /* "exhausted": max_attempts reached */
    PX_MRO_OVER_BUDGET,     /* "over_budget": the database's retry budget was used up */
    PX_MRO_BREAKER_OPEN,    /* "breaker_open": the database's circuit breaker is not closed */
    PX_MRO_NOT_REPLAYABLE,  /* "not_replayable": the transaction cannot be replayed safely */
    PX_MRO_BUFFER_EXCEEDED, /* "buffer_exceeded": it needed more than retry_buffer_bytes */
    PX_MRO_CANCELED,        /* "canceled": the client canceled it during the backoff */
    PX_MRO__COUNT
};
#define PX_METRICS_RETRY(sqlstate, outcome)                                                        \
    ((unsigned)(sqlstate) * (unsigned)PX_MRO__COUNT + (unsigned)(outcome))

/* outcome label of PX_M_COMMIT_OUTCOMES: what a client whose COMMIT lost its server was
 * told (path/outcome.h). */
enum px_metrics_commit_outcome {
    PX_MCO_COMMITTED = 0, /* "committed": PostgreSQL said committed */
    PX_MCO_ABORTED,       /* "aborted": it said aborted (40000) */
    PX_MCO_READ_ONLY,     /* "read_only": no transaction id: nothing was written */
    PX_MCO_UNKNOWN,       /* "unknown": 40003 */
    PX_MCO__COUNT
};

/* One dynamic label-set kind. */
struct px_metrics_kind_def {
    const char *name;               /* e.g. "pool": the kind label of the overflow counter */
    const char *const *label_names; /* nlabels names */
    unsigned nlabels;
    unsigned max_sets; /* cap on live sets (0: default); the overflow set comes on top */
};

/* One metric family. */
struct px_metric_def {
    const char *name; /* without the "pgwarden_" prefix and the "_total" suffix */
    enum px_metric_type type;
    const char *help;
    unsigned kind;                  /* index in the kind table */
    const char *const *enum_labels; /* names of the fixed-enumeration labels (may be 0) */
    unsigned n_enum_labels;
    const char *const *enum_values; /* n_enum_values rows of n_enum_labels strings */
    unsigned n_enum_values;         /* 0 when n_enum_labels is 0 */
    const double *buckets;          /* histograms: finite, strictly increasing; +Inf implied */
    unsigned nbuckets;
    unsigned flags; /* PX_MF_* */
};

/* A whole registry description, for px_metrics_init_tables (tests use their own). */
struct px_metrics_tables {
    const struct px_metric_def *defs; /* indexed by the family id */
    size_t ndefs;
    const struct px_metrics_kind_def *kinds; /* kinds[0] must have no labels (global) */
    size_t nkinds;
    int overflow_metric; /* family counting overflows: global counter enumerating kinds;
                          * -1: none */
};

/* Built-in tables (metrics.c). */
extern const struct px_metrics_tables px_metrics_builtin_tables;

/*
 * Sets the registry up with the built-in tables; max_pools caps live pool label sets
 * (0: PX_METRICS_DEFAULT_MAX_SETS).  Call once at startup, before any other function.
 * Returns 0, or -1 with *errmsg (free with free()) on allocation failure.
 */
__attribute__((warn_unused_result)) int px_metrics_init(unsigned max_pools, char **errmsg);
/* Same with explicit tables (borrowed: must outlive the registry).  Validates them: names,
 * label names, bucket order, enumeration sizes.  Returns 0 or -1 with *errmsg. */
__attribute__((warn_unused_result)) int
px_metrics_init_tables(const struct px_metrics_tables *tables, char **errmsg);
/* Frees everything (sets still held by callers become invalid).  Safe when not set up. */
void px_metrics_shutdown(void);

/* ---- dynamic label sets ---- */

struct px_metrics_set;

/*
 * Returns the set of the given kind with these label values (nlabels strings, borrowed;
 * copied, sanitized to UTF-8 and truncated to PX_METRICS_MAX_LABEL_BYTES), taking a
 * reference: an existing live set with the same values is shared.  When the kind's cap is
 * reached, returns the overflow set (values "other").  Returns NULL only on allocation
 * failure; every update function accepts NULL as a no-op, so callers need not check.
 * Not for the hot path (allocates, compares strings).  For PX_MK_GLOBAL use NULL instead.
 */
struct px_metrics_set *px_metrics_set_get(unsigned kind, const char *const *values);
/* Drops a reference; the set and its series disappear with the last one.  NULL: no-op. */
void px_metrics_set_release(struct px_metrics_set *set);
/* True when set is the overflow set of its kind. */
bool px_metrics_set_is_overflow(const struct px_metrics_set *set);

/* The database label set of a circuit breaker; release with px_metrics_set_release. */
static inline struct px_metrics_set *px_metrics_database_new(const char *database)
{
    const char *values[1] = {database ? database : ""};
    return px_metrics_set_get(PX_MK_DATABASE, values);
}

/* The pool label set: call when a pool is created, release with px_metrics_pool_free. */
static inline struct px_metrics_set *px_metrics_pool_new(const char *database, const char *user)
{
    const char *values[2] = {database ? database : "", user ? user : ""};
    return px_metrics_set_get(PX_MK_POOL, values);
}
static inline void px_metrics_pool_free(struct px_metrics_set *set)
{
    px_metrics_set_release(set);
}

/* ---- hot path: no allocation, no hashing ----
 * set: the family's label set (NULL for PX_MK_GLOBAL families; NULL for another kind is a
 * no-op).  label: the fixed-enumeration index (0 when the family has none).  A family of
 * the wrong type or kind is an assertion failure in debug builds and a no-op otherwise. */

void px_metrics_add(struct px_metrics_set *set, unsigned metric, unsigned label, uint64_t n);
static inline void px_metrics_inc(struct px_metrics_set *set, unsigned metric, unsigned label)
{
    px_metrics_add(set, metric, label, 1);
}
void px_metrics_gauge_set(struct px_metrics_set *set, unsigned metric, unsigned label, double v);
void px_metrics_gauge_add(struct px_metrics_set *set, unsigned metric, unsigned label,
                          double delta);
/* Histograms: value in the family's unit (seconds for *_seconds).  NaN is ignored. */
void px_metrics_observe(struct px_metrics_set *set, unsigned metric, unsigned label, double value);
/* Microseconds to seconds, for callers that measure time in µs. */
static inline void px_metrics_observe_us(struct px_metrics_set *set, unsigned metric,
                                         unsigned label, uint64_t us)
{
    px_metrics_observe(set, metric, label, (double)us / 1e6);
}
/*
 * Pre-resolved counter slot: `++*slot` or `*slot += n` is then the whole update.  Valid
 * until the set is released (global families: until px_metrics_shutdown).  Returns a
 * pointer to a static dummy when set is NULL for a non-global family, so it is always
 * safe to dereference.
 */
uint64_t *px_metrics_counter_slot(struct px_metrics_set *set, unsigned metric, unsigned label);

/* Read back (tests, admin JSON): counter value, gauge value, histogram count and sum. */
uint64_t px_metrics_counter_get(const struct px_metrics_set *set, unsigned metric, unsigned label);
double px_metrics_gauge_get(const struct px_metrics_set *set, unsigned metric, unsigned label);
uint64_t px_metrics_histogram_count(const struct px_metrics_set *set, unsigned metric,
                                    unsigned label);
double px_metrics_histogram_sum(const struct px_metrics_set *set, unsigned metric, unsigned label);

/* ---- label helpers ---- */

/* Label index of PX_M_CLIENT_ERRORS for a 5-character SQLSTATE (or its 2-character
 * class); unknown classes and NULL give the "other" index. */
unsigned px_metrics_sqlstate_class(const char *sqlstate);

/* ---- rendering ---- */

/* Receives successive pieces of the exposition; returns 0, or -1 to stop rendering. */
typedef int (*px_metrics_sink_cb)(void *arg, const char *data, size_t len);
/* Called at the start of every render, to fill gauges from live state (e.g. clients and
 * servers per pool and state with px_metrics_gauge_set). */
typedef void (*px_metrics_collect_cb)(void *arg);

/* Registers a collector; returns 0, or -1 when PX_METRICS_MAX_COLLECTORS are registered. */
__attribute__((warn_unused_result)) int px_metrics_add_collector(px_metrics_collect_cb cb,
                                                                 void *arg);
/* Removes the collector registered with this cb and arg (no-op when absent). */
void px_metrics_remove_collector(px_metrics_collect_cb cb, void *arg);

/* Runs the collectors, then writes every family to sink in table order, sets in creation
 * order.  Returns 0, or -1 when sink failed. */
int px_metrics_render(px_metrics_sink_cb sink, void *arg);

/* A growable buffer owned by the caller: start zeroed, free data with free(). */
struct px_metrics_buf {
    char *data; /* NUL-terminated after a successful render */
    size_t len;
    size_t cap;
};
/* Appends the rendering to buf.  Returns 0, or -1 on allocation failure. */
int px_metrics_render_buf(struct px_metrics_buf *buf);

#endif
