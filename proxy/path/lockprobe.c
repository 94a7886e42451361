/*
 * lockprobe.c: hybrid deadlocks through pgwarden's and PostgreSQL's locks (see
 * lockprobe.h; docs/locks.md "Hybrid deadlocks").
 *
 * Owns: the list of clients waiting for a pgwarden lock (oldest first), one timer, the
 * probe connections (libpq, non-blocking, one per PostgreSQL cluster) and the state of
 * one probe round: the PostgreSQL wait-for edges learned, the candidate cycle.
 *
 * A round: (1) from every wait older than hybrid_probe_ms, follow pgwarden's wait-for
 * edges (lockmgr_wait_edges) to the clients it waits for, directly or through other
 * waiters; the servers among them with a statement in flight are the candidates.  (2) One
 * query per cluster: pg_blocking_pids() of the candidates and, recursively, of their
 * blockers.  (3) The graph: pgwarden edges between clients, PostgreSQL edges between
 * backends, a backend standing for the client its server serves.  A cycle through a long
 * wait with at least one PostgreSQL edge is a candidate.  (4) A second query re-reads the
 * PostgreSQL edges of the cycle; the pgwarden edges and the backend-to-client map are
 * compared with what they were after (2).  (5) Confirmed: the pgwarden waiter on the
 * cycle whose wait began last gets 40P01 (px_locks_deadlock_victim).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "base/log.h"
#include "metrics/metrics.h"
#include "net/server.h"
#include "path/lockprobe.h"
#include "path/locks.h"

#define MAX_CLUSTERS   8
#define MAX_NODES      256 /* clients and backends one round follows */
#define MAX_CANDS      256 /* backends asked about per cluster */
#define MAX_PGEDGES    1024
#define MAX_CYCLE      32
#define MAX_WEDGES     64    /* pgwarden edges read per waiter */
#define DEPTH_MAX      8     /* recursion of the blocking query */
#define ROUND_MIN_MS   1000  /* a round (connect + queries) gets at least this long */
#define BACKOFF_MIN_MS 1000  /* after a failure, no new attempt on the cluster before this */
#define BACKOFF_MAX_MS 30000 /* doubling up to this while it keeps failing */
#define NODE_PID       (1ull << 63)

struct cluster {
    char host[256];
    int port;
    PGconn *conn;
    struct event *ev;
    bool connecting, busy;
    bool failed; /* last attempt failed: logged once until it works again */
    /* after a failure (PostgreSQL down, login refused, no answer in time) the cluster is
     * left alone until retry_ms, backoff_ms doubling while it keeps failing */
    uint64_t retry_ms;
    uint32_t backoff_ms;
    int32_t cands[MAX_CANDS];
    size_t ncands;
};

struct pgedge {
    uint8_t cl;
    int32_t pid, blocker;
};

/* A node of the round's graph: a client (by id) or a backend that serves no client. */
struct node {
    uint64_t key; /* client id, or NODE_PID | cl << 32 | pid */
    struct px_client *c;
};

/* One edge of the candidate cycle, with what must still hold when it is re-checked. */
struct cedge {
    bool pg;
    uint64_t from, to; /* node keys */
    /* pgwarden edge: from waits (wait_seq) for to (hard: token; soft: to's wait_seq) */
    uint64_t wait_seq, stamp;
    bool soft;
    enum lockmgr_mode wanted, blocker_mode;
    char key[65];
    /* PostgreSQL edge: backend pid waits for backend blocker in cluster cl; the servers
     * standing for client nodes (0: a backend of no client) */
    uint8_t cl;
    int32_t pid, blocker;
    uint64_t from_server, to_server;
    uint64_t from_gen, to_gen; /* the servers' client_gen: no reassignment in between */
};

static struct {
    struct event *timer;
    struct px_list waiters; /* struct px_lockprobe_wait, oldest wait first */
    bool inited;
    bool in_round, verifying;
    int outstanding;
    uint64_t round_start_us;
    struct cluster cl[MAX_CLUSTERS];
    size_t ncl;
    struct pgedge pge[MAX_PGEDGES];
    size_t npge;
    struct cedge cyc[MAX_CYCLE];
    size_t ncyc;
} P;

static void arm(uint64_t ms);
static void tick(evutil_socket_t fd, short what, void *arg);
static void cluster_step(evutil_socket_t fd, short what, void *arg);

static bool init(void)
{
    if (P.inited)
        return true;
    P.timer = evtimer_new(px.base, tick, NULL);
    if (!P.timer)
        return false;
    px_list_init(&P.waiters);
    P.inited = true;
    return true;
}

/* A waiting client on P.waiters (allocated per wait: an idle client carries a pointer,
 * not the link). */
struct px_lockprobe_wait {
    struct px_list link;
    struct px_client *client;
    uint64_t since_ms;
};

#define WAITER(it) (PX_CONTAINER_OF(it, struct px_lockprobe_wait, link)->client)

void px_lockprobe_wait_begin(struct px_client *c)
{
    if (px.cfg->hybrid_probe_ms <= 0 || !init())
        return;
    struct px_lockprobe_wait *w = c->lockprobe;
    if (w)
        px_list_remove(&w->link);
    else if (!(w = calloc(1, sizeof(*w)))) {
        px_warning("lockprobe", 'C', c->id, "out of memory: this lock wait is not probed");
        return;
    }
    c->lockprobe = w;
    w->client = c;
    w->since_ms = px_now_ms();
    px_list_append(&P.waiters, &w->link);
    if (!P.in_round && !evtimer_pending(P.timer, NULL))
        arm((uint64_t)px.cfg->hybrid_probe_ms);
}

static void cluster_close(struct cluster *k)
{
    if (k->ev)
        event_free(k->ev);
    k->ev = NULL;
    if (k->conn)
        PQfinish(k->conn);
    k->conn = NULL;
    k->connecting = k->busy = false;
}

void px_lockprobe_wait_end(struct px_client *c)
{
    if (!c->lockprobe)
        return;
    px_list_remove(&c->lockprobe->link);
    free(c->lockprobe);
    c->lockprobe = NULL;
    if (P.in_round || !px_list_empty(&P.waiters))
        return;
    /* nobody waits: no timer, no connection (a round in flight ends by itself) */
    evtimer_del(P.timer);
    for (size_t i = 0; i < P.ncl; i++)
        cluster_close(&P.cl[i]);
}

void px_lockprobe_shutdown(void)
{
    for (size_t i = 0; i < P.ncl; i++)
        cluster_close(&P.cl[i]);
    while (P.inited && !px_list_empty(&P.waiters)) {
        struct px_list *it = P.waiters.next;
        px_list_remove(it);
    }
    if (P.timer)
        event_free(P.timer);
    memset(&P, 0, sizeof(P));
}

static void arm(uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000u), (suseconds_t)((ms % 1000u) * 1000u)};
    evtimer_add(P.timer, &tv);
}

/* ---- the graph ----------------------------------------------------------------------- */

/* The cluster of a pool (host and port), created when asked; -1 when full. */
static int cluster_of(const struct px_pool *pool, bool create)
{
    const char *host = pool->host ? pool->host : "";
    for (size_t i = 0; i < P.ncl; i++)
        if (P.cl[i].port == pool->port && !strcmp(P.cl[i].host, host))
            return (int)i;
    if (!create || P.ncl == MAX_CLUSTERS || strlen(host) >= sizeof(P.cl[0].host))
        return -1;
    struct cluster *k = &P.cl[P.ncl];
    memset(k, 0, sizeof(*k));
    snprintf(k->host, sizeof(k->host), "%s", host);
    k->port = pool->port;
    return (int)P.ncl++;
}

/* A server that runs a statement of its client: its backend may wait for a lock. */
static bool busy(const struct px_server *s)
{
    return s && s->state == PX_SV_ACTIVE && s->backend_pid && (s->pending_ready > 0 || s->unsynced);
}

/* The client whose server is backend pid of cluster cl, or NULL; *server_id and *gen
 * identify the server and its current assignment (left alone when NULL). */
static struct px_client *client_of_backend(int cl, int32_t pid, uint64_t *server_id, uint64_t *gen)
{
    struct px_list *it;
    for (it = px.pools.next; it != &px.pools; it = it->next) {
        struct px_pool *pool = PX_CONTAINER_OF(it, struct px_pool, link);
        if (cluster_of(pool, false) != cl)
            continue;
        for (struct px_list *si = pool->servers_active.next; si != &pool->servers_active;
             si = si->next) {
            struct px_server *s = PX_CONTAINER_OF(si, struct px_server, link);
            if ((int32_t)s->backend_pid == pid && s->client) {
                *server_id = s->id;
                *gen = s->client_gen;
                return s->client;
            }
        }
    }
    return NULL;
}

static uint64_t pid_key(int cl, int32_t pid)
{
    return NODE_PID | (uint64_t)cl << 32 | (uint32_t)pid;
}

/* The node of backend pid: its client's, or the backend itself. */
static struct node backend_node(int cl, int32_t pid, uint64_t *server_id, uint64_t *gen)
{
    *server_id = *gen = 0;
    struct px_client *c = client_of_backend(cl, pid, server_id, gen);
    struct node n = {c ? c->id : pid_key(cl, pid), c};
    return n;
}

/* Out-edges of a node, written to out (at most cap). */
static size_t out_edges(const struct node *n, struct cedge *out, size_t cap, struct node *to)
{
    size_t k = 0;
    struct px_client *c = n->c;
    if (c) {
        struct lockmgr *lm = px_locks_manager();
        struct lockmgr_owner *o = px_locks_owner(c);
        struct lockmgr_wait_info wi;
        if (lm && o && lockmgr_owner_wait(lm, o, &wi)) {
            struct lockmgr_wait_edge e[MAX_WEDGES];
            size_t ne = lockmgr_wait_edges(lm, o, e, MAX_WEDGES);
            for (size_t i = 0; i < ne && i < MAX_WEDGES && k < cap; i++) {
                struct px_client *b = px_locks_client(e[i].blocker_id);
                if (!b)
                    continue;
                struct cedge *ce = &out[k];
                memset(ce, 0, sizeof(*ce));
                ce->from = c->id;
                ce->to = b->id;
                ce->wait_seq = wi.wait_seq;
                ce->soft = e[i].soft;
                ce->stamp = e[i].soft ? e[i].wait_seq : e[i].token;
                ce->wanted = wi.mode;
                ce->blocker_mode = e[i].blocker_mode;
                snprintf(ce->key, sizeof(ce->key), "%.*s", (int)(wi.keylen > 64 ? 64 : wi.keylen),
                         (const char *)wi.key);
                to[k].key = b->id;
                to[k].c = b;
                k++;
            }
        }
    }
    int cl = -1;
    int32_t pid = 0;
    uint64_t from_server = 0, from_gen = 0;
    if (c && busy(c->server)) {
        cl = cluster_of(c->server->pool, false);
        pid = (int32_t)c->server->backend_pid;
        from_server = c->server->id;
        from_gen = c->server->client_gen;
    } else if (!c) {
        cl = (int)((n->key >> 32) & 0x7fffffff);
        pid = (int32_t)(uint32_t)n->key;
    }
    if (cl < 0)
        return k;
    for (size_t i = 0; i < P.npge && k < cap; i++) {
        if (P.pge[i].cl != cl || P.pge[i].pid != pid)
            continue;
        struct cedge *ce = &out[k];
        memset(ce, 0, sizeof(*ce));
        ce->pg = true;
        ce->from = n->key;
        ce->cl = (uint8_t)cl;
        ce->pid = pid;
        ce->blocker = P.pge[i].blocker;
        ce->from_server = from_server;
        ce->from_gen = from_gen;
        to[k] = backend_node(cl, ce->blocker, &ce->to_server, &ce->to_gen);
        ce->to = to[k].key;
        k++;
    }
    return k;
}

/* A cycle through start with at least one PostgreSQL edge, into P.cyc.  Depth-first over
 * the nodes reachable from start; a node fully explored without reaching start is not
 * explored again. */
static bool find_cycle(struct px_client *start)
{
    static struct node seen[MAX_NODES];
    static struct {
        struct node n;
        struct cedge e[MAX_WEDGES];
        struct node to[MAX_WEDGES];
        size_t ne, next;
    } stack[MAX_CYCLE];
    size_t nseen = 0, depth = 0;
    stack[0].n.key = start->id;
    stack[0].n.c = start;
    stack[0].ne = out_edges(&stack[0].n, stack[0].e, MAX_WEDGES, stack[0].to);
    stack[0].next = 0;
    seen[nseen++] = stack[0].n;
    depth = 1;
    while (depth) {
        size_t d = depth - 1;
        if (stack[d].next >= stack[d].ne) {
            depth--;
            continue;
        }
        size_t i = stack[d].next++;
        const struct node *t = &stack[d].to[i];
        if (t->key == start->id) {
            bool pg = false;
            P.ncyc = 0;
            for (size_t j = 0; j <= d; j++) {
                const struct cedge *e = &stack[j].e[j == d ? i : stack[j].next - 1];
                pg |= e->pg;
                P.cyc[P.ncyc++] = *e;
            }
            if (pg)
                return true;
            continue; /* a pgwarden-only cycle is lockmgr's own (never stable) */
        }
        bool known = false;
        for (size_t j = 0; j < nseen && !known; j++)
            known = seen[j].key == t->key;
        if (known || nseen == MAX_NODES || depth == MAX_CYCLE)
            continue;
        seen[nseen++] = *t;
        stack[depth].n = *t;
        stack[depth].ne = out_edges(t, stack[depth].e, MAX_WEDGES, stack[depth].to);
        stack[depth].next = 0;
        depth++;
    }
    return false;
}

/* ---- the queries --------------------------------------------------------------------- */

static void round_end(void);
static void analyze(void);
static void cluster_fail(struct cluster *k, const char *why);

static void cluster_done(struct cluster *k, bool ok)
{
    if (k->ev)
        event_free(k->ev);
    k->ev = NULL;
    k->busy = false;
    if (!ok) {
        cluster_fail(k, NULL);
    } else {
        k->failed = false;
        k->backoff_ms = 0;
    }
    if (P.outstanding > 0 && --P.outstanding == 0)
        analyze();
}

/* Waits for the connection's socket (read or write) to come back to cluster_step. */
static bool cluster_wait(struct cluster *k, short what)
{
    if (k->ev)
        event_free(k->ev);
    k->ev = NULL;
    if (PQsocket(k->conn) < 0)
        return false;
    k->ev = event_new(px.base, PQsocket(k->conn), what, cluster_step, k);
    return k->ev && event_add(k->ev, NULL) == 0;
}

static void read_rows(struct cluster *k, PGresult *r)
{
    int cl = (int)(k - P.cl);
    for (int i = 0; i < PQntuples(r); i++) {
        int32_t pid = (int32_t)strtol(PQgetvalue(r, i, 0), NULL, 10);
        const char *a = PQgetvalue(r, i, 1); /* "{1,2}" */
        while (*a && P.npge < MAX_PGEDGES) {
            char *end;
            long b = strtol(a, &end, 10);
            if (end == a) {
                a++;
                continue;
            }
            if (b > 0) /* 0: a prepared transaction, which no client serves */
                P.pge[P.npge++] = (struct pgedge){(uint8_t)cl, pid, (int32_t)b};
            a = end;
        }
    }
}

/* Sends the cluster's query: the blocking graph from its candidates (recursive), or, when
 * verifying, just their direct blockers. */
static bool cluster_send(struct cluster *k)
{
    if (k->busy)
        return false;
    char list[MAX_CANDS * 12 + 4];
    size_t used = 0;
    list[used++] = '{';
    for (size_t i = 0; i < k->ncands; i++)
        used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%" PRId32, i ? "," : "",
                                 k->cands[i]);
    snprintf(list + used, sizeof(list) - used, "}");
    char sql[sizeof(list) + 600];
    if (P.verifying)
        snprintf(sql, sizeof(sql),
                 "SELECT p, pg_catalog.pg_blocking_pids(p) FROM pg_catalog.unnest('%s'::int4[]) "
                 "AS p",
                 list);
    else
        snprintf(sql, sizeof(sql),
                 "WITH RECURSIVE w(pid, blockers, depth) AS ("
                 "SELECT p, pg_catalog.pg_blocking_pids(p), 1 "
                 "FROM pg_catalog.unnest('%s'::int4[]) AS p "
                 "UNION SELECT b, pg_catalog.pg_blocking_pids(b), w.depth + 1 "
                 "FROM w, pg_catalog.unnest(w.blockers) AS b WHERE w.depth < %d) "
                 "SELECT DISTINCT pid, blockers FROM w "
                 "WHERE pg_catalog.cardinality(blockers) > 0",
                 list, DEPTH_MAX);
    px_metrics_inc(NULL, PX_M_LOCK_HYBRID_PROBES, 0);
    if (!PQsendQuery(k->conn, sql))
        return false;
    k->busy = true;
    int f = PQflush(k->conn);
    return f >= 0 && cluster_wait(k, f ? EV_READ | EV_WRITE : EV_READ);
}

static void cluster_step(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    struct cluster *k = arg;
    if (k->connecting) {
        PostgresPollingStatusType st = PQconnectPoll(k->conn);
        if (st == PGRES_POLLING_FAILED) {
            cluster_done(k, false);
        } else if (st == PGRES_POLLING_OK) {
            k->connecting = false;
            if (PQsetnonblocking(k->conn, 1) != 0 || !cluster_send(k))
                cluster_done(k, false);
        } else if (!cluster_wait(k, st == PGRES_POLLING_READING ? EV_READ : EV_WRITE)) {
            cluster_done(k, false);
        }
        return;
    }
    if (what & EV_WRITE) {
        int f = PQflush(k->conn);
        if (f < 0 || !cluster_wait(k, f ? EV_READ | EV_WRITE : EV_READ))
            cluster_done(k, false);
        return;
    }
    if (!PQconsumeInput(k->conn)) {
        cluster_done(k, false);
        return;
    }
    bool ok = true;
    while (!PQisBusy(k->conn)) {
        PGresult *r = PQgetResult(k->conn);
        if (!r) {
            cluster_done(k, ok);
            return;
        }
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQnfields(r) == 2)
            read_rows(k, r);
        else
            ok = false;
        PQclear(r);
    }
    if (!cluster_wait(k, EV_READ))
        cluster_done(k, false);
}

/* Starts the cluster's query, connecting first when needed, with the credentials of pool
 * (the [databases] entry's user and password, or auth_file's plaintext password). */
static bool cluster_start(struct cluster *k, const struct px_pool *pool)
{
    if (k->busy)
        return false;
    if (k->conn)
        return cluster_send(k);
    const char *pw = px_pool_server_password(pool);
    char port[16];
    snprintf(port, sizeof(port), "%d", k->port);
    const char *keys[10], *vals[10];
    size_t n = 0;
#define KV(key, val) (keys[n] = (key), vals[n] = (val), n++)
    KV("host", k->host);
    KV("port", port);
    KV("dbname", pool->dbname ? pool->dbname : pool->database);
    KV("user", pool->server_user);
    KV("sslmode", px_config_server_tls_name(px.cfg->server_tls_mode));
    KV("application_name", "pgwarden lock probe");
    if (px.cfg->server_tls_ca_file)
        KV("sslrootcert", px.cfg->server_tls_ca_file);
    if (pw)
        KV("password", pw);
#undef KV
    keys[n] = vals[n] = NULL;
    k->conn = PQconnectStartParams(keys, vals, 0);
    if (!k->conn || PQstatus(k->conn) == CONNECTION_BAD)
        return false;
    k->connecting = true;
    return cluster_wait(k, EV_WRITE);
}

/* The cluster's connection or query failed (why: NULL for libpq's message): logged once
 * until it works again, the connection closed, no new attempt before the backoff ends. */
static void cluster_fail(struct cluster *k, const char *why)
{
    if (!why)
        why = k->conn ? PQerrorMessage(k->conn) : "out of memory";
    int len = (int)strcspn(why, "\n"); /* libpq's message ends with a newline */
    if (!k->failed)
        px_warning("lockprobe", 0, 0,
                   "cannot ask PostgreSQL at %s:%d for lock waits (hybrid deadlocks are not "
                   "found meanwhile; retried with backoff): %.*s",
                   k->host, k->port, len, why);
    k->failed = true;
    cluster_close(k);
    k->backoff_ms = k->backoff_ms ? k->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (k->backoff_ms > BACKOFF_MAX_MS)
        k->backoff_ms = BACKOFF_MAX_MS;
    k->retry_ms = px_now_ms() + k->backoff_ms;
}

/* ---- rounds -------------------------------------------------------------------------- */

static bool long_wait(const struct px_client *c, uint64_t now_ms)
{
    return c->lockprobe->since_ms + (uint64_t)px.cfg->hybrid_probe_ms <= now_ms;
}

/* Adds c's busy server to the candidates of its cluster; first[cl]: the pool whose
 * credentials the cluster's probe connection uses. */
static void add_candidate(const struct px_client *c, const struct px_pool **first)
{
    if (!busy(c->server))
        return;
    int cl = cluster_of(c->server->pool, true);
    if (cl < 0)
        return;
    struct cluster *k = &P.cl[cl];
    int32_t pid = (int32_t)c->server->backend_pid;
    for (size_t i = 0; i < k->ncands; i++)
        if (k->cands[i] == pid)
            return;
    if (k->ncands < MAX_CANDS)
        k->cands[k->ncands++] = pid;
    if (!first[cl])
        first[cl] = c->server->pool;
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    if (P.in_round) { /* the round took too long: give it up */
        for (size_t i = 0; i < P.ncl; i++)
            if (P.cl[i].busy || P.cl[i].connecting)
                cluster_fail(&P.cl[i], "no answer in time");
        round_end();
        return;
    }
    uint64_t now = px_now_ms();
    if (px.cfg->hybrid_probe_ms <= 0 || px_list_empty(&P.waiters)) {
        for (size_t i = 0; i < P.ncl; i++)
            cluster_close(&P.cl[i]);
        return;
    }
    /* Follow pgwarden's edges from the long waits; the oldest wait is first. */
    static struct px_client *seen[MAX_NODES];
    size_t nseen = 0;
    for (struct px_list *it = P.waiters.next; it != &P.waiters && nseen < MAX_NODES;
         it = it->next) {
        struct px_client *c = WAITER(it);
        if (!long_wait(c, now))
            break;
        seen[nseen++] = c;
    }
    if (!nseen) {
        for (size_t i = 0; i < P.ncl; i++)
            cluster_close(&P.cl[i]); /* no wait is long: nothing stays open */
        uint64_t due =
            WAITER(P.waiters.next)->lockprobe->since_ms + (uint64_t)px.cfg->hybrid_probe_ms;
        arm(due > now ? due - now : 1);
        return;
    }
    for (size_t i = 0; i < P.ncl; i++)
        P.cl[i].ncands = 0;
    const struct px_pool *first[MAX_CLUSTERS] = {0};
    struct lockmgr *lm = px_locks_manager();
    for (size_t i = 0; i < nseen; i++) {
        struct px_client *c = seen[i];
        add_candidate(c, first);
        struct lockmgr_owner *o = px_locks_owner(c);
        struct lockmgr_wait_edge e[MAX_WEDGES];
        size_t ne = lm && o ? lockmgr_wait_edges(lm, o, e, MAX_WEDGES) : 0;
        for (size_t j = 0; j < ne && j < MAX_WEDGES && nseen < MAX_NODES; j++) {
            struct px_client *b = px_locks_client(e[j].blocker_id);
            bool known = !b;
            for (size_t x = 0; x < nseen && !known; x++)
                known = seen[x] == b;
            if (!known)
                seen[nseen++] = b;
        }
    }
    P.outstanding = 0;
    P.npge = 0;
    P.verifying = false;
    P.in_round = true;
    P.round_start_us = px_now_us();
    for (size_t i = 0; i < P.ncl; i++) {
        if (!P.cl[i].ncands || now < P.cl[i].retry_ms)
            continue; /* nothing to ask, or failing: left alone until its backoff ends */
        if (first[i] && cluster_start(&P.cl[i], first[i]))
            P.outstanding++;
        else
            cluster_fail(&P.cl[i], NULL);
    }
    if (!P.outstanding) { /* no holder is running a statement: look again later */
        P.in_round = false;
        arm((uint64_t)px.cfg->hybrid_probe_ms);
        return;
    }
    uint64_t limit = (uint64_t)px.cfg->hybrid_probe_ms * 4;
    arm(limit > ROUND_MIN_MS ? limit : ROUND_MIN_MS);
}

static void round_end(void)
{
    for (size_t i = 0; i < P.ncl; i++)
        if (P.cl[i].busy || P.cl[i].connecting)
            cluster_close(&P.cl[i]); /* a late answer must not land in the next round */
    P.in_round = false;
    P.verifying = false;
    P.outstanding = 0;
    P.npge = 0;
    evtimer_del(P.timer);
    if (!px_list_empty(&P.waiters)) {
        arm((uint64_t)(px.cfg->hybrid_probe_ms > 0 ? px.cfg->hybrid_probe_ms : 1000));
        return;
    }
    for (size_t i = 0; i < P.ncl; i++)
        cluster_close(&P.cl[i]); /* the last wait ended during the round */
}

/* Every edge of P.cyc still holds (after the second query). */
static bool cycle_holds(void)
{
    struct lockmgr *lm = px_locks_manager();
    for (size_t i = 0; i < P.ncyc; i++) {
        const struct cedge *e = &P.cyc[i];
        if (e->pg) {
            bool found = false;
            for (size_t j = 0; j < P.npge && !found; j++)
                found = P.pge[j].cl == e->cl && P.pge[j].pid == e->pid &&
                        P.pge[j].blocker == e->blocker;
            uint64_t sid = 0, gen = 0;
            struct px_client *fc = client_of_backend(e->cl, e->pid, &sid, &gen);
            if (!found || (fc ? fc->id : pid_key(e->cl, e->pid)) != e->from ||
                sid != e->from_server || gen != e->from_gen || (fc && !busy(fc->server)))
                return false;
            sid = gen = 0;
            struct px_client *tc = client_of_backend(e->cl, e->blocker, &sid, &gen);
            if ((tc ? tc->id : pid_key(e->cl, e->blocker)) != e->to || sid != e->to_server ||
                gen != e->to_gen)
                return false;
            continue;
        }
        struct px_client *w = px_locks_client(e->from);
        struct lockmgr_owner *o = w ? px_locks_owner(w) : NULL;
        struct lockmgr_wait_info wi;
        if (!o || !lockmgr_owner_wait(lm, o, &wi) || wi.wait_seq != e->wait_seq)
            return false;
        struct lockmgr_wait_edge we[MAX_WEDGES];
        size_t n = lockmgr_wait_edges(lm, o, we, MAX_WEDGES);
        bool found = false;
        for (size_t j = 0; j < n && j < MAX_WEDGES && !found; j++)
            found = we[j].blocker_id == e->to && we[j].soft == e->soft &&
                    (e->soft ? we[j].wait_seq : we[j].token) == e->stamp;
        if (!found)
            return false;
    }
    return true;
}

static const char *app_of(uint64_t key)
{
    if (key & NODE_PID)
        return NULL;
    struct px_client *c = px_locks_client(key);
    if (c)
        return c->application_name ? c->application_name : "";
    /* a client without pgwarden locks: find it through its server */
    struct px_list *it;
    for (it = px.pools.next; it != &px.pools; it = it->next) {
        struct px_pool *pool = PX_CONTAINER_OF(it, struct px_pool, link);
        for (struct px_list *si = pool->servers_active.next; si != &pool->servers_active;
             si = si->next) {
            struct px_server *s = PX_CONTAINER_OF(si, struct px_server, link);
            if (s->client && s->client->id == key)
                return s->client->application_name ? s->client->application_name : "";
        }
    }
    return "";
}

static int describe_node(char *buf, size_t cap, uint64_t key)
{
    if (key & NODE_PID)
        return snprintf(buf, cap, "backend %" PRIu32 " (no pgwarden client)", (uint32_t)key);
    return snprintf(buf, cap, "client %" PRIu64 " (application_name \"%.32s\")", key, app_of(key));
}

/* The DETAIL: one line per edge. */
static void describe(char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < P.ncyc && used + 1 < cap; i++) {
        const struct cedge *e = &P.cyc[i];
        char from[160], to[160];
        describe_node(from, sizeof(from), e->from);
        describe_node(to, sizeof(to), e->to);
        int n;
        if (e->pg)
            n = snprintf(buf + used, cap - used,
                         "%s%s waits in PostgreSQL (backend %" PRId32
                         ") for a lock held by backend %" PRId32 " of %s.",
                         i ? "\n" : "", from, e->pid, e->blocker, to);
        else
            n = snprintf(
                buf + used, cap - used, "%s%s waits for %s on \"%s\"; blocked by %s, which %s %s.",
                i ? "\n" : "", from, lockmgr_mode_name(e->wanted), e->key, to,
                e->soft ? "queued earlier for" : "holds", lockmgr_mode_name(e->blocker_mode));
        if (n < 0)
            break;
        used += (size_t)n < cap - used ? (size_t)n : cap - used - 1;
    }
}

/* The verification confirmed the cycle: its pgwarden waiter whose wait began last gets
 * 40P01. */
static void act(void)
{
    const struct cedge *v = NULL;
    for (size_t i = 0; i < P.ncyc; i++)
        if (!P.cyc[i].pg && (!v || P.cyc[i].wait_seq > v->wait_seq))
            v = &P.cyc[i];
    struct px_client *c = v ? px_locks_client(v->from) : NULL;
    if (!c)
        return;
    char detail[2048];
    describe(detail, sizeof(detail));
    if (!px_locks_deadlock_victim(c, detail))
        return;
    px_metrics_inc(NULL, PX_M_LOCK_HYBRID_DEADLOCKS, 0);
    px_info("lockprobe", 'C', c->id,
            "deadlock through PostgreSQL's locks (%zu edges, round of %" PRIu64
            " ms): this lock wait is the victim",
            P.ncyc, (px_now_us() - P.round_start_us) / 1000u);
}

static void analyze(void)
{
    if (P.verifying) {
        if (cycle_holds())
            act();
        else
            px_debug("lockprobe", 0, 0, "the candidate cycle did not hold: nothing done");
        round_end();
        return;
    }
    uint64_t now = px_now_ms();
    bool found = false;
    for (struct px_list *it = P.waiters.next; it != &P.waiters && !found; it = it->next) {
        struct px_client *c = WAITER(it);
        if (!long_wait(c, now))
            break;
        found = find_cycle(c);
    }
    if (!found) {
        round_end();
        return;
    }
    /* Re-read the PostgreSQL edges of the cycle. */
    for (size_t i = 0; i < P.ncl; i++)
        P.cl[i].ncands = 0;
    for (size_t i = 0; i < P.ncyc; i++) {
        const struct cedge *e = &P.cyc[i];
        if (!e->pg)
            continue;
        struct cluster *k = &P.cl[e->cl];
        bool dup = false;
        for (size_t j = 0; j < k->ncands && !dup; j++)
            dup = k->cands[j] == e->pid;
        if (!dup && k->ncands < MAX_CANDS)
            k->cands[k->ncands++] = e->pid;
    }
    P.verifying = true;
    P.npge = 0;
    P.outstanding = 0;
    for (size_t i = 0; i < P.ncl; i++) {
        if (!P.cl[i].ncands)
            continue;
        if (!P.cl[i].conn || P.cl[i].connecting || !cluster_send(&P.cl[i])) {
            round_end(); /* cannot confirm: nothing done */
            return;
        }
        P.outstanding++;
    }
}
