/*
 * stats.c: the proxy's traffic reports mapped onto the metrics registry (see stats.h).
 * Gauges of clients and servers per pool and state are filled by a collector at render
 * time from the pool counters, so the state machines never touch them.  The lock gauges
 * and counters are copied from lockmgr's own statistics the same way (lockmgr counts them
 * anyway); only the lock wait histogram is observed as waits end.
 */
#include "conn.h"
#include "metrics/metrics.h"
#include "metrics/stats.h"

static uint64_t dummy_slot;

int px_stats_pool_init(struct px_pool *pool)
{
    pool->metrics = px_metrics_pool_new(pool->database, pool->user);
    pool->m_bytes_in = px_metrics_counter_slot(pool->metrics, PX_M_BYTES_RECEIVED, 0);
    pool->m_bytes_out = px_metrics_counter_slot(pool->metrics, PX_M_BYTES_SENT, 0);
    pool->m_transactions = px_metrics_counter_slot(pool->metrics, PX_M_TRANSACTIONS, 0);
    pool->m_queries = px_metrics_counter_slot(pool->metrics, PX_M_QUERIES, 0);
    return 0;
}

void px_stats_pool_destroy(struct px_pool *pool)
{
    px_metrics_pool_free(pool->metrics);
    pool->metrics = NULL;
    pool->m_bytes_in = pool->m_bytes_out = &dummy_slot;
    pool->m_transactions = pool->m_queries = &dummy_slot;
}

void px_stats_bytes(struct px_pool *pool, size_t to_server, size_t to_client)
{
    *pool->m_bytes_in += to_server;
    *pool->m_bytes_out += to_client;
}

void px_stats_transaction(struct px_pool *pool)
{
    ++*pool->m_transactions;
}

void px_stats_query(struct px_pool *pool)
{
    ++*pool->m_queries;
}

void px_stats_error_sent(struct px_pool *pool, const char *sqlstate)
{
    (void)pool; /* may be NULL: errors before a pool is chosen */
    px_metrics_inc(NULL, PX_M_CLIENT_ERRORS, px_metrics_sqlstate_class(sqlstate));
}

void px_stats_server_connected(struct px_pool *pool, uint64_t connect_ms)
{
    px_metrics_observe(pool->metrics, PX_M_SERVER_CONNECT_SECONDS, 0, (double)connect_ms / 1e3);
}

void px_stats_server_connect_failed(struct px_pool *pool)
{
    px_metrics_inc(pool->metrics, PX_M_SERVER_CONNECT_FAILURES, 0);
}

void px_stats_pool_wait(struct px_pool *pool, uint64_t wait_ms)
{
    px_metrics_observe(pool->metrics, PX_M_POOL_WAIT_SECONDS, 0, (double)wait_ms / 1e3);
}

void px_stats_tls_handshake(bool client_side, bool ok)
{
    px_metrics_inc(NULL, PX_M_TLS_HANDSHAKES,
                   PX_METRICS_TLS(client_side ? PX_MTLS_CLIENT : PX_MTLS_SERVER,
                                  ok ? PX_MTLS_OK : PX_MTLS_ERROR));
}

void px_stats_auth_failure(int reason)
{
    px_metrics_inc(NULL, PX_M_AUTH_FAILURES, (unsigned)reason);
}

void px_stats_client_accepted(void)
{
    px_metrics_inc(NULL, PX_M_CLIENT_CONNECTIONS, 0);
}

static void collect_pool_gauges(void *arg)
{
    (void)arg;
    px_metrics_gauge_set(NULL, PX_M_CLIENTS_PARKED, 0, px.n_parked);
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &px.pools)
    {
        struct px_pool *p = PX_CONTAINER_OF(it, struct px_pool, link);
        struct px_metrics_set *m = p->metrics;
        px_metrics_gauge_set(m, PX_M_CLIENTS, PX_MCS_WAITING, p->n_waiting);
        px_metrics_gauge_set(m, PX_M_CLIENTS, PX_MCS_ACTIVE, p->n_active_clients);
        px_metrics_gauge_set(m, PX_M_SERVERS, PX_MSS_LOGIN, p->n_login);
        px_metrics_gauge_set(m, PX_M_SERVERS, PX_MSS_IDLE, p->n_idle);
        px_metrics_gauge_set(m, PX_M_SERVERS, PX_MSS_ACTIVE, p->n_active);
        px_metrics_gauge_set(m, PX_M_SERVERS, PX_MSS_RESETTING, p->n_resetting);
        px_metrics_gauge_set(m, PX_M_CLIENTS_PINNED, 0, p->n_pinned);
    }
}

int px_stats_init(void)
{
    return px_metrics_add_collector(collect_pool_gauges, NULL);
}

void px_stats_lock_wait(enum lockmgr_status status, uint64_t waited_us)
{
    unsigned outcome;
    switch (status) {
    case LOCKMGR_OK: outcome = PX_MLO_GRANTED; break;
    case LOCKMGR_TIMEOUT: outcome = PX_MLO_TIMEOUT; break;
    case LOCKMGR_DEADLOCK: outcome = PX_MLO_DEADLOCK; break;
    case LOCKMGR_CANCELED: outcome = PX_MLO_CANCELED; break;
    default: outcome = PX_MLO_ERROR; break;
    }
    px_metrics_observe_us(NULL, PX_M_LOCK_WAIT_SECONDS, outcome, waited_us);
}

/* The mode label's values are lockmgr's modes, in lockmgr's order. */
_Static_assert(PX_MLM__COUNT == LOCKMGR_NMODES && PX_MLM_READ == (int)LOCKMGR_READ &&
                   PX_MLM_WRITE == (int)LOCKMGR_WRITE && PX_MLM_EXCLUSIVE == (int)LOCKMGR_EXCLUSIVE,
               "lock mode labels follow enum lockmgr_mode");

/* lockmgr's counters are monotonic for the life of the lock manager (the process), so
 * they are copied into the counter slots as they are. */
static void collect_locks(void *arg)
{
    const struct lockmgr *lm = arg;
    struct lockmgr_stats st;
    lockmgr_stats_get(lm, &st);
    for (unsigned m = 0; m < PX_MLM__COUNT; m++)
        px_metrics_gauge_set(NULL, PX_M_LOCKS_HELD, m, (double)st.held_by_mode[m]);
    px_metrics_gauge_set(NULL, PX_M_LOCK_WAITERS, 0, (double)st.waiters);
    px_metrics_gauge_set(NULL, PX_M_LOCK_KEYS, 0, (double)st.keys);
    *px_metrics_counter_slot(NULL, PX_M_LOCK_GRANTS, 0) = st.grants;
    *px_metrics_counter_slot(NULL, PX_M_LOCK_WAITS, 0) = st.waits;
    *px_metrics_counter_slot(NULL, PX_M_LOCK_TIMEOUTS, 0) = st.timeouts;
    *px_metrics_counter_slot(NULL, PX_M_LOCK_DEADLOCKS, 0) = st.deadlocks;
    *px_metrics_counter_slot(NULL, PX_M_LOCK_CANCELS, 0) = st.cancels;
    *px_metrics_counter_slot(NULL, PX_M_LOCK_LIMIT_REFUSALS, 0) = st.limit_hits;
}

int px_stats_locks_init(const struct lockmgr *lm)
{
    if (!lm)
        return 0;
    /* The registry passes arg back unchanged; the collector only reads. */
    return px_metrics_add_collector(collect_locks, (void *)lm);
}
