/*
 * lockspace.c: [locks] backend = postgresql (see lockspace.h and
 * docs/design/distributed-locks.md).
 *
 * Per key this instance knows in PostgreSQL (struct ls_key): the advisory locks it holds
 * (`have`, bits below), the provisional local grants waiting for confirmation (`pend`, in
 * arrival order), the confirmed grants with their global tokens (`holds`), and its place
 * on its lock connection.  A key lives on connection hash % backend_connections, has at
 * most one statement in flight, and is reconciled with lockmgr's view of its holders
 * (want) after every release.  Lock connections never wait in PostgreSQL: acquisitions are
 * pg_try_advisory_lock* statements, retried with backoff.
 *
 * Per connection (struct ls_conn): libpq's asynchronous API, its socket on the event loop,
 * a FIFO of keys that need a statement, a timer for reconnecting and for the heartbeat.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "base/list.h"
#include "base/log.h"
#include "conn.h"
#include "metrics/metrics.h"
#include "lockspace/lockspace.h"
#include "lockspace/waitgraph.h"

/* Advisory locks of one key: bit i is sub-id i of the key's ids, except A_SH. */
enum {
    LS_A_EX = 1u << 0, /* A exclusive: a local exclusive holder */
    LS_B_EX = 1u << 1, /* B exclusive: a local write or exclusive holder */
    LS_G_R = 1u << 2,  /* gates: the first waiting instance for read, write, exclusive */
    LS_G_W = 1u << 3,
    LS_G_X = 1u << 4,
    LS_A_SH = 1u << 5, /* A shared: local read holders */
};
#define LS_GATE(mode) (LS_G_R << (mode))

#define BACKOFF_MIN_US 1000u
#define BACKOFF_MAX_US 32000u
#define SQL_MAX        2048

/* A provisional local grant waiting for its global part. */
struct ls_pend {
    struct ls_pend *next;
    uint64_t client_id;
    uint64_t lm_token;
    uint64_t deadline_us; /* 0: none */
    enum lockmgr_mode mode;
    bool try;
    uint32_t round;    /* the poll round in which it was last attempted */
    uint64_t since_us; /* when the global wait began (px_now_us) */
};

/* A confirmed grant: the client's latest local token, its global token and the mode
 * confirmed in PostgreSQL. */
struct ls_hold {
    struct ls_hold *next;
    uint64_t client_id;
    uint64_t lm_token;
    uint64_t token;
    enum lockmgr_mode mode;
};

enum ls_op {
    LS_OP_NONE = 0,
    LS_OP_ATTEMPT,
    LS_OP_RELEASE,
    LS_OP_PING,
    LS_OP_SETUP,
    LS_OP_GRAPH_PUBLISH, /* this instance's part of the wait-for graph, and the others' */
    LS_OP_GRAPH_CLEAR,   /* no long wait any more: the part is removed */
};

struct ls_key {
    struct ls_key *hnext;
    uint64_t hash;
    unsigned have;
    struct ls_pend *pend;
    struct ls_hold *holds;
    struct ls_conn *conn;
    struct px_list qlink; /* on conn->queue while queued */
    bool queued, dirty, in_flight;
    struct ls_pend *attempting; /* the entry of the attempt in flight */
    unsigned attempt_take;      /* locks the attempt in flight tries to take */
    unsigned attempt_gate;      /* the gate of the attempt's mode */
    uint32_t round;
    uint64_t backoff_us;
    struct event *poll;    /* next attempt after a failed one */
    bool ask_remote;       /* the attempt in flight also asks pg_locks who holds k */
    uint64_t remote_at_us; /* when remote[] was learned (0: never) */
    size_t nremote;
    struct px_lockspace_remote *remote; /* other instances' holds, from a failed attempt */
    size_t keylen;
    char key[]; /* keylen bytes + NUL */
};

enum ls_conn_state { LS_DOWN = 0, LS_CONNECTING, LS_SETUP, LS_READY };

struct ls_conn {
    int index;
    enum ls_conn_state state;
    PGconn *pg;
    struct event *io;    /* its socket, while connecting or connected */
    struct event *timer; /* reconnect (down) or heartbeat (ready) */
    struct px_list queue;
    struct ls_key *busy_key; /* the key of the statement in flight */
    enum ls_op busy_op;
    uint64_t sent_us, last_answer_us;
    uint64_t reconnect_us;
    bool fatal; /* the server sent FATAL while the connection was idle (terminating it) */
};

/* A wait in the part last taken, parallel to its nodes: how to find it again here. */
struct ls_gwait {
    uint64_t since_local; /* px_now_us at its start (lockmgr's or the ls_pend's) */
    bool global;
};

struct ls_graph {
    struct event *timer;        /* every deadlock_timeout / 4 while a global wait exists */
    enum ls_op want;            /* the statement wanted on connection 0, or LS_OP_NONE */
    bool published;             /* this instance's row holds a part */
    uint64_t disabled_until_us; /* after a failed statement (table missing, privileges) */
    char instance[64];
    struct wg_part own; /* the part in flight (or last sent) */
    struct ls_gwait *waits;
};

/* A lock lost with its connection, to be reported at the client's next lock call. */
struct ls_lost {
    struct ls_lost *next;
    uint64_t client_id;
    char key[LOCKMGR_KEY_MAX + 1];
};

static struct {
    bool active;
    struct lockmgr *lm;
    char *conninfo;
    int nconns;
    uint64_t lease_us;
    struct ls_conn *conns;
    struct ls_key **buckets;
    size_t nbuckets, nkeys;
    struct event *reconcile; /* dirty keys, at a safe point */
    struct event *kick;      /* queued keys, at a safe point */
    struct ls_lost *lost;
    char appname[64];
    struct ls_graph *graph; /* deadlocks across instances (section at the end) */
} S;

bool px_lockspace_active(void)
{
    return S.active;
}

/* ---- keys ------------------------------------------------------------------------------ */

/* FNV-1a 64: the same on every instance and every build (the ids are shared). */
static uint64_t key_hash(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* The advisory id of sub-lock sub (0 A, 1 B, 2-4 gates) of a key. */
static long long advisory_id(uint64_t hash, unsigned sub)
{
    return (long long)((hash & ~(uint64_t)7) | sub);
}

static struct ls_key *key_find(const void *key, size_t len, uint64_t h)
{
    if (!S.nbuckets)
        return NULL;
    for (struct ls_key *k = S.buckets[h & (S.nbuckets - 1)]; k; k = k->hnext)
        if (k->hash == h && k->keylen == len && memcmp(k->key, key, len) == 0)
            return k;
    return NULL;
}

static void on_poll(evutil_socket_t fd, short what, void *arg);

static struct ls_key *key_get(const char *key, size_t len)
{
    uint64_t h = key_hash(key, len);
    struct ls_key *k = key_find(key, len, h);
    if (k)
        return k;
    if (S.nkeys >= S.nbuckets) {
        size_t n = S.nbuckets ? S.nbuckets * 2 : 64;
        struct ls_key **b = calloc(n, sizeof(*b));
        if (!b)
            return NULL;
        for (size_t i = 0; i < S.nbuckets; i++)
            for (struct ls_key *e = S.buckets[i], *next; e; e = next) {
                next = e->hnext;
                e->hnext = b[e->hash & (n - 1)];
                b[e->hash & (n - 1)] = e;
            }
        free(S.buckets);
        S.buckets = b;
        S.nbuckets = n;
    }
    k = calloc(1, sizeof(*k) + len + 1);
    if (!k)
        return NULL;
    k->poll = evtimer_new(px.base, on_poll, k);
    if (!k->poll) {
        free(k);
        return NULL;
    }
    memcpy(k->key, key, len);
    k->keylen = len;
    k->hash = h;
    k->conn = &S.conns[(h >> 3) % (uint64_t)S.nconns];
    px_list_init(&k->qlink);
    k->hnext = S.buckets[h & (S.nbuckets - 1)];
    S.buckets[h & (S.nbuckets - 1)] = k;
    S.nkeys++;
    return k;
}

/* Frees k when nothing refers to it any more. */
static void key_maybe_free(struct ls_key *k)
{
    if (k->have || k->pend || k->holds || k->in_flight || k->queued || k->dirty)
        return;
    for (struct ls_key **pp = &S.buckets[k->hash & (S.nbuckets - 1)]; *pp; pp = &(*pp)->hnext)
        if (*pp == k) {
            *pp = k->hnext;
            break;
        }
    S.nkeys--;
    event_free(k->poll);
    free(k->remote);
    free(k);
}

static struct ls_hold *hold_find(struct ls_key *k, uint64_t client_id)
{
    for (struct ls_hold *h = k->holds; h; h = h->next)
        if (h->client_id == client_id)
            return h;
    return NULL;
}

/* Queues k for a statement on its connection; the connections are kicked from an event
 * of this module's own (never inside a call into it, never while walking the keys). */
static void key_queue(struct ls_key *k)
{
    if (k->queued)
        return;
    k->queued = true;
    px_list_append(&k->conn->queue, &k->qlink);
    event_active(S.kick, EV_TIMEOUT, 0);
}

/* ---- what the local holders need ---------------------------------------------------------- */

/* The advisory locks that holders of these modes need (modes: bit per lockmgr_mode). */
static unsigned locks_for_modes(unsigned modes)
{
    unsigned need = 0;
    if (modes & (1u << LOCKMGR_EXCLUSIVE))
        need |= LS_A_EX | LS_B_EX;
    else if (modes & (1u << LOCKMGR_READ))
        need |= LS_A_SH;
    if (modes & (1u << LOCKMGR_WRITE))
        need |= LS_B_EX;
    return need;
}

/* have covers need (A exclusive covers A shared). */
static unsigned missing(unsigned have, unsigned need)
{
    if (have & LS_A_EX)
        have |= LS_A_SH;
    return need & ~have;
}

/* The modes the key's local holders hold *in PostgreSQL*: for each holder in lockmgr
 * with a confirmed grant, the weaker of its local mode (lower after the end of a
 * transaction lock) and its confirmed mode (lower while an upgrade waits).  Provisional
 * grants keep nothing: a waiter that cannot pass a gate must not keep the key from the
 * instance first in line.  Also drops confirmed grants of clients that no longer hold
 * the key. */
static unsigned local_modes(struct ls_key *k)
{
    unsigned modes = 0;
    struct lockmgr_snapshot *snap = lockmgr_snapshot(S.lm, NULL, k->key, k->keylen);
    if (!snap)
        return 1u << LOCKMGR_EXCLUSIVE; /* out of memory: release nothing now */
    const struct lockmgr_snap_key *sk = snap->nkeys ? &snap->keys[0] : NULL;
    for (size_t i = 0; sk && i < sk->nholders; i++) {
        const struct lockmgr_snap_holder *hd = &sk->holders[i];
        struct ls_hold *h = hold_find(k, hd->owner_id);
        if (h)
            modes |= 1u << (hd->mode < h->mode ? hd->mode : h->mode);
    }
    for (struct ls_hold **pp = &k->holds; *pp;) {
        bool held = false;
        for (size_t i = 0; sk && i < sk->nholders && !held; i++)
            held = sk->holders[i].owner_id == (*pp)->client_id;
        if (held) {
            pp = &(*pp)->next;
        } else {
            struct ls_hold *dead = *pp;
            *pp = dead->next;
            free(dead);
        }
    }
    lockmgr_snapshot_free(snap);
    return modes;
}

/* ---- SQL ---------------------------------------------------------------------------------- */

static int sql_append(char *buf, size_t *used, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#include <stdarg.h>
static int sql_append(char *buf, size_t *used, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *used, SQL_MAX - *used, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= SQL_MAX - *used)
        return -1;
    *used += (size_t)n;
    return 0;
}

/* Gates a request of mode waits behind: those of the modes it conflicts with. */
static unsigned gates_for(enum lockmgr_mode mode)
{
    switch (mode) {
    case LOCKMGR_READ: return LS_G_X;
    case LOCKMGR_WRITE: return LS_G_W | LS_G_X;
    default: return LS_G_R | LS_G_W | LS_G_X;
    }
}

/*
 * The attempt for p: one statement returning (ok, token, gate taken).  ok: the gates
 * passed (unless this instance is first in line for p's mode) and every missing advisory
 * lock was taken, all or nothing (an ordered CASE; B before A, B given back when A
 * fails); token: nextval of the sequence when ok; gate taken: a waiting attempt that
 * passed the gates but not the locks takes the gate of its mode.  One stopped by another
 * instance's gate takes none (the inner ok is NULL then): it is not first in line, and a
 * gate of its own would let it skip the gate check that stopped it on its next attempt
 * (a stream of readers on one instance would pass the exclusive gate of another).
 */
static int build_attempt(struct ls_key *k, struct ls_pend *p, char *sql, unsigned *take)
{
    size_t u = 0;
    uint64_t h = k->hash;
    unsigned need = locks_for_modes(1u << p->mode);
    unsigned miss = missing(k->have, need);
    unsigned gate = LS_GATE(p->mode);
    bool first_in_line = (k->have & gate) != 0;
    *take = miss;
    k->attempt_gate = gate;
    if (sql_append(sql, &u,
                   "SELECT coalesce(ok, false), CASE WHEN ok THEN "
                   "nextval('pgwarden_lock_token_seq') END, ") < 0)
        return -1;
    if (first_in_line) {
        if (sql_append(sql, &u, "CASE WHEN ok THEN NOT pg_advisory_unlock(%lld) END",
                       advisory_id(h, 2 + p->mode)) < 0)
            return -1;
    } else if (!p->try) {
        if (sql_append(sql, &u, "CASE WHEN ok IS FALSE THEN pg_try_advisory_lock(%lld) END",
                       advisory_id(h, 2 + p->mode)) < 0)
            return -1;
    } else if (sql_append(sql, &u, "NULL::boolean") < 0) {
        return -1;
    }
    /* Who holds the key elsewhere, when the attempt fails (at most once a second per key:
     * pg_locks takes every lock partition's lock).  Per other session: its application
     * name, then a letter per sub-lock it holds: A/a the key's A lock exclusive/shared, B
     * its B lock, 2-4 the gates. */
    k->ask_remote = !k->remote_at_us || px_now_us() - k->remote_at_us >= 1000000u;
    if (k->ask_remote) {
        uint64_t id = (uint64_t)advisory_id(h, 0);
        if (sql_append(sql, &u,
                       ", CASE WHEN ok IS NOT TRUE THEN (SELECT string_agg(x, E'\\n') FROM "
                       "(SELECT "
                       "a.application_name || ' ' || string_agg(CASE l.objid::bigint & 7 "
                       "WHEN 0 THEN CASE l.mode WHEN 'ExclusiveLock' THEN 'A' ELSE 'a' END "
                       "WHEN 1 THEN 'B' ELSE (l.objid::bigint & 7)::text END, '') AS x "
                       "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                       "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                       "AND l.pid <> pg_backend_pid() AND l.classid = %" PRIu64
                       " AND (l.objid::bigint & 4294967288) = %" PRIu64
                       " GROUP BY a.pid, a.application_name) r) END",
                       id >> 32, id & 0xfffffff8u) < 0)
            return -1;
    }
    /* The first WHEN keeps the CASE valid when nothing is checked or taken: a waiter first
     * in line whose mode this instance already holds (a reader behind a gate). */
    if (sql_append(sql, &u, " FROM (SELECT CASE WHEN false THEN false") < 0)
        return -1;
    if (!first_in_line) {
        unsigned g = gates_for(p->mode);
        bool any = false;
        if (sql_append(sql, &u, " WHEN NOT (") < 0)
            return -1;
        for (unsigned m = 0; m < LOCKMGR_NMODES; m++) {
            if (!(g & LS_GATE(m)))
                continue;
            if (sql_append(sql, &u, "%spg_try_advisory_xact_lock_shared(%lld)", any ? " AND " : "",
                           advisory_id(h, 2 + m)) < 0)
                return -1;
            any = true;
        }
        if (sql_append(sql, &u, ") THEN NULL") < 0) /* stopped at a gate */
            return -1;
    }
    if (miss & LS_B_EX) {
        if (sql_append(sql, &u, " WHEN NOT pg_try_advisory_lock(%lld) THEN false",
                       advisory_id(h, 1)) < 0)
            return -1;
    }
    if (miss & (LS_A_EX | LS_A_SH)) {
        const char *fn = miss & LS_A_EX ? "pg_try_advisory_lock" : "pg_try_advisory_lock_shared";
        if (sql_append(sql, &u, " WHEN NOT %s(%lld) THEN ", fn, advisory_id(h, 0)) < 0)
            return -1;
        if (miss & LS_B_EX) {
            if (sql_append(sql, &u, "NOT pg_advisory_unlock(%lld)", advisory_id(h, 1)) < 0)
                return -1;
        } else if (sql_append(sql, &u, "false") < 0) {
            return -1;
        }
    }
    return sql_append(sql, &u, " ELSE true END AS ok OFFSET 0) s");
}

/* Gives back what is in `drop` (a downgrade from A exclusive to A shared takes A shared
 * first: this session's own exclusive lock never blocks it). */
static int build_release(struct ls_key *k, unsigned drop, bool take_a_sh, char *sql)
{
    size_t u = 0;
    if (sql_append(sql, &u, "SELECT true") < 0)
        return -1;
    if (take_a_sh &&
        sql_append(sql, &u, ", pg_try_advisory_lock_shared(%lld)", advisory_id(k->hash, 0)) < 0)
        return -1;
    for (unsigned sub = 0; sub < 5; sub++) {
        if (!(drop & (1u << sub)))
            continue;
        if (sql_append(sql, &u, ", pg_advisory_unlock(%lld)", advisory_id(k->hash, sub)) < 0)
            return -1;
    }
    if ((drop & LS_A_SH) &&
        sql_append(sql, &u, ", pg_advisory_unlock_shared(%lld)", advisory_id(k->hash, 0)) < 0)
        return -1;
    return 0;
}

/* ---- outcomes ------------------------------------------------------------------------------ */

static void pend_remove(struct ls_key *k, struct ls_pend *p)
{
    for (struct ls_pend **pp = &k->pend; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    if (k->attempting == p)
        k->attempting = NULL;
    free(p);
}

/* Ends p with outcome (reported upward) and forgets it. */
static void pend_finish(struct ls_key *k, struct ls_pend *p, enum px_lockspace_outcome outcome,
                        uint64_t token, const char *detail)
{
    uint64_t id = p->client_id;
    if (outcome == PX_LOCKSPACE_GRANTED) {
        struct ls_hold *h = hold_find(k, id);
        if (!h) {
            h = calloc(1, sizeof(*h));
            if (h) {
                h->client_id = id;
                h->next = k->holds;
                k->holds = h;
            }
        }
        if (h) {
            h->lm_token = p->lm_token;
            h->token = token;
            h->mode = p->mode;
        }
    }
    pend_remove(k, p);
    px_locks_global_done(id, outcome, token, detail);
}

/* Ends the waits whose deadline passed. */
static void expire(struct ls_key *k, uint64_t now)
{
    for (struct ls_pend *p = k->pend, *next; p; p = next) {
        next = p->next;
        if (p != k->attempting && p->deadline_us && p->deadline_us <= now)
            pend_finish(k, p, PX_LOCKSPACE_TIMEOUT, 0, NULL);
    }
}

/* ---- connections ------------------------------------------------------------------------- */

static void conn_lost(struct ls_conn *cn, const char *why);
static void on_io(evutil_socket_t fd, short what, void *arg);
static void conn_timer_arm(struct ls_conn *cn, uint64_t after_us);

static int conn_send_params(struct ls_conn *cn, const char *sql, int nparams,
                            const char *const *params, struct ls_key *k, enum ls_op op)
{
    int sent = nparams ? PQsendQueryParams(cn->pg, sql, nparams, NULL, params, NULL, NULL, 0)
                       : PQsendQuery(cn->pg, sql);
    if (!sent) {
        conn_lost(cn, PQerrorMessage(cn->pg));
        return -1;
    }
    int f = PQflush(cn->pg);
    if (f < 0) {
        conn_lost(cn, PQerrorMessage(cn->pg));
        return -1;
    }
    cn->busy_key = k;
    cn->busy_op = op;
    cn->sent_us = px_now_us();
    if (op == LS_OP_ATTEMPT || op == LS_OP_RELEASE)
        px_debug("lockspace", 0, (uint64_t)cn->index, "sent: %.300s", sql);
    if (k)
        k->in_flight = true;
    if (f == 1) { /* rare: the statement did not fit in the socket buffer */
        event_del(cn->io);
        event_assign(cn->io, px.base, PQsocket(cn->pg), EV_READ | EV_WRITE | EV_PERSIST, on_io, cn);
        event_add(cn->io, NULL);
    }
    return 0;
}

static int conn_send(struct ls_conn *cn, const char *sql, struct ls_key *k, enum ls_op op)
{
    return conn_send_params(cn, sql, 0, NULL, k, op);
}

static bool graph_kick(struct ls_conn *cn);
static void graph_result(PGresult *res);
static void graph_failed(const char *why, const char *sqlstate);

/* Picks the next statement for k: a release of what no local holder needs, else an
 * attempt for a waiting grant not yet tried in this round.  False when k needs none. */
static bool key_statement(struct ls_key *k, char *sql, enum ls_op *op)
{
    uint64_t now = px_now_us();
    expire(k, now);
    unsigned modes = local_modes(k);
    unsigned need = locks_for_modes(modes);
    for (struct ls_pend *p = k->pend; p; p = p->next)
        need |= LS_GATE(p->mode) & k->have; /* a gate stays while its waiter waits */
    unsigned drop = k->have & ~need;
    if (drop) {
        /* A hand-over within this instance: a waiting grant whose mode the locks still held
         * cover is confirmed in one statement (the gates checked, nothing taken) instead of
         * a release and a new attempt.  When a gate stops it (another instance is first in
         * line), the release follows in the next statement, as before. */
        for (struct ls_pend *p = k->pend; p; p = p->next) {
            if (p->round == k->round + 1 || missing(k->have, locks_for_modes(1u << p->mode)))
                continue;
            p->round = k->round + 1;
            if (build_attempt(k, p, sql, &k->attempt_take) < 0)
                continue;
            k->attempting = p;
            *op = LS_OP_ATTEMPT;
            return true;
        }
        bool take_a_sh = (drop & LS_A_EX) && (need & LS_A_SH) && !(k->have & LS_A_SH);
        if (build_release(k, drop, take_a_sh, sql) == 0) {
            k->have &= ~drop;
            if (take_a_sh)
                k->have |= LS_A_SH;
            *op = LS_OP_RELEASE;
            return true;
        }
    }
    for (struct ls_pend *p = k->pend; p; p = p->next) {
        if (p->round == k->round + 1)
            continue; /* tried in this round */
        p->round = k->round + 1;
        if (build_attempt(k, p, sql, &k->attempt_take) < 0)
            continue;
        k->attempting = p;
        *op = LS_OP_ATTEMPT;
        return true;
    }
    return false;
}

/* Runs the next queued key's statement when the connection is idle. */
static void conn_kick(struct ls_conn *cn)
{
    char sql[SQL_MAX];
    while (cn->state == LS_READY && !cn->busy_op) {
        if (graph_kick(cn))
            continue;
        struct px_list *first = px_list_first(&cn->queue);
        if (!first)
            return;
        struct ls_key *k = PX_CONTAINER_OF(first, struct ls_key, qlink);
        px_list_remove(first); /* left linked to itself */
        k->queued = false;
        enum ls_op op;
        if (k->in_flight || !key_statement(k, sql, &op)) {
            if (!k->in_flight && k->pend) { /* every waiter tried: poll again later */
                k->round++;
                k->backoff_us = k->backoff_us ? k->backoff_us * 2 : BACKOFF_MIN_US;
                if (k->backoff_us > BACKOFF_MAX_US)
                    k->backoff_us = BACKOFF_MAX_US;
                uint64_t d = k->backoff_us / 2 + (uint64_t)random() % (k->backoff_us / 2 + 1);
                for (struct ls_pend *p = k->pend; p; p = p->next)
                    if (p->deadline_us && p->deadline_us > px_now_us() &&
                        p->deadline_us - px_now_us() < d)
                        d = p->deadline_us - px_now_us();
                struct timeval tv = {(time_t)(d / 1000000u), (suseconds_t)(d % 1000000u)};
                evtimer_add(k->poll, &tv);
            }
            key_maybe_free(k);
            continue;
        }
        if (conn_send(cn, sql, k, op) < 0)
            return;
    }
}

/* While k's connection is not ready, its poll timer stands for the earliest deadline. */
static void arm_deadline(struct ls_key *k)
{
    uint64_t first = UINT64_MAX, now = px_now_us();
    for (struct ls_pend *p = k->pend; p; p = p->next)
        if (p->deadline_us && p->deadline_us < first)
            first = p->deadline_us;
    if (first == UINT64_MAX)
        return;
    uint64_t d = first > now ? first - now : 0;
    struct timeval tv = {(time_t)(d / 1000000u), (suseconds_t)(d % 1000000u)};
    evtimer_add(k->poll, &tv);
}

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct ls_key *k = arg;
    expire(k, px_now_us());
    if (!k->pend) {
        key_maybe_free(k);
        return;
    }
    key_queue(k);
    if (k->conn->state != LS_READY)
        arm_deadline(k);
}

/* Parses the holders pg_locks showed ("pgwarden-locks host:pid AaB234" lines) into
 * k->remote. */
static void remote_learn(struct ls_key *k, const char *text)
{
    struct px_lockspace_remote *r = k->remote;
    if (!r && !(r = k->remote = calloc(PX_LOCKSPACE_REMOTE_MAX, sizeof(*r))))
        return;
    k->nremote = 0;
    k->remote_at_us = px_now_us();
    for (const char *line = text; *line && k->nremote < PX_LOCKSPACE_REMOTE_MAX;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        const char *sp = memrchr(line, ' ', len);
        if (sp) {
            struct px_lockspace_remote *e = &r[k->nremote];
            const char *name = line;
            if (sp - line > 15 && memcmp(line, "pgwarden-locks ", 15) == 0)
                name += 15; /* an instance: show its host:pid */
            snprintf(e->instance, sizeof(e->instance), "%.*s", (int)(sp - name), name);
            e->holds = e->first = 0;
            bool a_ex = false, a_sh = false, b = false;
            for (const char *c = sp + 1; c < line + len; c++) {
                if (*c == 'A')
                    a_ex = true;
                else if (*c == 'a')
                    a_sh = true;
                else if (*c == 'B')
                    b = true;
                else if (*c >= '2' && *c <= '4')
                    e->first |= 1u << (*c - '2');
            }
            if (a_ex)
                e->holds |= 1u << LOCKMGR_EXCLUSIVE;
            else if (a_sh)
                e->holds |= 1u << LOCKMGR_READ;
            if (b && !a_ex)
                e->holds |= 1u << LOCKMGR_WRITE;
            if (e->holds || e->first)
                k->nremote++;
        }
        line = end ? end + 1 : line + len;
    }
}

/* The reply to an attempt. */
static void attempt_done(struct ls_key *k, PGresult *res)
{
    struct ls_pend *p = k->attempting;
    k->attempting = NULL;
    bool ok = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    uint64_t token = ok ? strtoull(PQgetvalue(res, 0, 1), NULL, 10) : 0;
    bool gate_changed =
        PQntuples(res) == 1 && !PQgetisnull(res, 0, 2) && strcmp(PQgetvalue(res, 0, 2), "t") == 0;
    unsigned gate = k->attempt_gate;
    if (ok) {
        /* A shared and A exclusive may both be held (an upgrade): both are tracked. */
        k->have |= k->attempt_take;
        k->have &= ~gate; /* given back by the statement if it was held */
        k->backoff_us = 0;
        k->round = 0;
        for (struct ls_pend *q = k->pend; q; q = q->next)
            q->round = 0; /* a grant changes what the others may get */
        /* Reconciled next: what its waiter took if it went, and after a hand-over the
         * locks kept that the new holder does not need (exclusive handed to a reader). */
        k->dirty = true;
        if (p)
            pend_finish(k, p, PX_LOCKSPACE_GRANTED, token, NULL);
    } else {
        if (gate_changed)
            k->have |= gate;
        if (k->ask_remote && PQntuples(res) == 1 && PQnfields(res) > 3)
            remote_learn(k, PQgetisnull(res, 0, 3) ? "" : PQgetvalue(res, 0, 3));
        if (p && p->try)
            pend_finish(k, p, PX_LOCKSPACE_BUSY, 0, NULL);
    }
}

static void conn_result(struct ls_conn *cn)
{
    struct ls_key *k = cn->busy_key;
    enum ls_op op = cn->busy_op;
    PGresult *res;
    bool failed = false;
    char why[256] = "", sqlstate[6] = "";
    while ((res = PQgetResult(cn->pg)) != NULL) {
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE || st == PGRES_NONFATAL_ERROR) {
            const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            if (!failed)
                snprintf(why, sizeof(why), "%s", PQresultErrorMessage(res));
            if (!failed && code)
                snprintf(sqlstate, sizeof(sqlstate), "%s", code);
            failed = true;
        } else if (op == LS_OP_ATTEMPT && st == PGRES_TUPLES_OK && k) {
            px_debug("lockspace", 0, (uint64_t)cn->index, "attempt: ok %s token %s gate %s",
                     PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 2));
            attempt_done(k, res);
        } else if (op == LS_OP_GRAPH_PUBLISH && st == PGRES_TUPLES_OK) {
            graph_result(res);
        } else if (op == LS_OP_GRAPH_CLEAR && st == PGRES_COMMAND_OK) {
            S.graph->published = false;
        }
        PQclear(res);
    }
    cn->busy_key = NULL;
    cn->busy_op = LS_OP_NONE;
    cn->last_answer_us = px_now_us();
    if (k)
        k->in_flight = false;
    if (failed && (op == LS_OP_GRAPH_PUBLISH || op == LS_OP_GRAPH_CLEAR)) {
        /* The wait-for graph table is missing or not writable: the locks are fine, only
         * deadlocks across instances go undetected for a while. */
        graph_failed(why, sqlstate);
        failed = false;
    }
    if (failed) {
        /* A statement of ours failed (privileges, the sequence missing, ...): nothing
         * is known for sure about the locks of this connection any more. */
        conn_lost(cn, why);
        return;
    }
    if (op == LS_OP_SETUP) {
        cn->state = LS_READY;
        cn->reconnect_us = 0;
        px_info("lockspace", 0, (uint64_t)cn->index, "lock connection %d ready", cn->index);
        conn_timer_arm(cn, S.lease_us / 16);
    }
    if (k) {
        if (k->pend || k->dirty) {
            k->dirty = false;
            key_queue(k);
        } else {
            /* released: maybe more to release, checked on the next change */
            key_maybe_free(k);
        }
    }
    conn_kick(cn);
}

static void conn_setup(struct ls_conn *cn)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t start = ((uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u) << 10;
    unsigned idle_s = (unsigned)(S.lease_us / 2000000u),
             intvl_s = (unsigned)(S.lease_us / 8000000u);
    if (!idle_s)
        idle_s = 1;
    if (!intvl_s)
        intvl_s = 1;
    char sql[SQL_MAX];
    /* lock_timeout: the try functions never wait, but the wait-for graph statement's rows
     * can (another instance's statement on the same row): it must not hold the
     * connection, whose keys wait behind it, for long. */
    snprintf(sql, sizeof(sql),
             "SET tcp_keepalives_idle = %u; SET tcp_keepalives_interval = %u; "
             "SET tcp_keepalives_count = 4; SET tcp_user_timeout = %" PRIu64 "; "
             "SET lock_timeout = %" PRIu64 "; "
             "DO $pgw$BEGIN BEGIN IF to_regclass('pgwarden_lock_token_seq') IS NULL THEN "
             "CREATE SEQUENCE pgwarden_lock_token_seq START %" PRIu64 "; END IF; "
             "EXCEPTION WHEN duplicate_table OR unique_violation THEN NULL; END; "
             "BEGIN IF to_regclass('pgwarden_lock_waits') IS NULL THEN "
             "CREATE UNLOGGED TABLE pgwarden_lock_waits (instance text PRIMARY KEY, "
             "published timestamptz NOT NULL, graph text NOT NULL); END IF; "
             "EXCEPTION WHEN duplicate_table OR unique_violation OR insufficient_privilege "
             "THEN NULL; END; END$pgw$",
             idle_s, intvl_s, S.lease_us / 1000u, S.lease_us / 8000u, start);
    cn->state = LS_SETUP;
    conn_send(cn, sql, NULL, LS_OP_SETUP);
}

/* Messages the server sends outside a statement: a FATAL one (pg_terminate_backend, a
 * server shutdown) means the session and its advisory locks are going away now, before
 * the socket closes: the connection counts as lost at once. */
static void on_notice(void *arg, const PGresult *res)
{
    struct ls_conn *cn = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
        cn->fatal = true;
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    struct ls_conn *cn = arg;
    if (cn->state == LS_CONNECTING) {
        PostgresPollingStatusType st = PQconnectPoll(cn->pg);
        if (st == PGRES_POLLING_FAILED) {
            conn_lost(cn, PQerrorMessage(cn->pg));
            return;
        }
        event_del(cn->io);
        if (st == PGRES_POLLING_OK) {
            PQsetnonblocking(cn->pg, 1);
            PQsetNoticeReceiver(cn->pg, on_notice, cn);
            cn->fatal = false;
            event_assign(cn->io, px.base, PQsocket(cn->pg), EV_READ | EV_PERSIST, on_io, cn);
            event_add(cn->io, NULL);
            conn_setup(cn);
            return;
        }
        short ev = st == PGRES_POLLING_READING ? EV_READ : EV_WRITE;
        event_assign(cn->io, px.base, PQsocket(cn->pg), ev, on_io, cn);
        event_add(cn->io, NULL);
        return;
    }
    if (what & EV_WRITE) {
        int f = PQflush(cn->pg);
        if (f < 0) {
            conn_lost(cn, PQerrorMessage(cn->pg));
            return;
        }
        if (f == 0) {
            event_del(cn->io);
            event_assign(cn->io, px.base, PQsocket(cn->pg), EV_READ | EV_PERSIST, on_io, cn);
            event_add(cn->io, NULL);
        }
    }
    if (!(what & EV_READ))
        return;
    px_debug("lockspace", 0, (uint64_t)cn->index, "readable, busy %d", (int)cn->busy_op);
    if (!PQconsumeInput(cn->pg) || PQstatus(cn->pg) == CONNECTION_BAD) {
        conn_lost(cn, PQerrorMessage(cn->pg));
        return;
    }
    if (!cn->busy_op) {
        (void)PQisBusy(cn->pg); /* parses what came: a FATAL notice sets cn->fatal */
        if (cn->fatal)
            conn_lost(cn, "the server is terminating the lock connection");
        return;
    }
    if (!PQisBusy(cn->pg))
        conn_result(cn);
}

/* pgwarden's side of a lock connection gives up after lease/2 (keepalives idle lease/4
 * + 2 probes lease/8 apart, tcp_user_timeout lease/2), PostgreSQL's side (conn_setup)
 * after lease (idle lease/2 + 4 probes lease/8 apart, tcp_user_timeout lease): the two
 * formulas differ on purpose, so that an instance stops believing in its locks before
 * PostgreSQL can give them to another (design section 7). */
static void conn_start(struct ls_conn *cn)
{
    char idle_s[16], intvl_s[16], uto[24];
    snprintf(idle_s, sizeof(idle_s), "%" PRIu64, S.lease_us / 4000000u ? S.lease_us / 4000000u : 1);
    snprintf(intvl_s, sizeof(intvl_s), "%" PRIu64,
             S.lease_us / 8000000u ? S.lease_us / 8000000u : 1);
    snprintf(uto, sizeof(uto), "%" PRIu64, S.lease_us / 2000u);
    const char *keys[] = {"dbname",
                          "application_name",
                          "keepalives",
                          "keepalives_idle",
                          "keepalives_interval",
                          "keepalives_count",
                          "tcp_user_timeout",
                          NULL};
    const char *vals[] = {S.conninfo, S.appname, "1", idle_s, intvl_s, "2", uto, NULL};
    cn->pg = PQconnectStartParams(keys, vals, 1);
    if (!cn->pg || PQstatus(cn->pg) == CONNECTION_BAD) {
        conn_lost(cn, cn->pg ? PQerrorMessage(cn->pg) : "out of memory");
        return;
    }
    cn->state = LS_CONNECTING;
    event_assign(cn->io, px.base, PQsocket(cn->pg), EV_WRITE, on_io, cn);
    event_add(cn->io, NULL);
    cn->sent_us = px_now_us();
    conn_timer_arm(cn, S.lease_us / 16);
}

/* Reconnect when down; heartbeat when ready (a statement unanswered for lease/2 is a
 * loss; an idle connection is pinged every lease/8; checked every lease/16, so the
 * instance gives up at most 3/4 lease after its last answer). */
static void on_conn_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct ls_conn *cn = arg;
    uint64_t now = px_now_us();
    if (cn->state == LS_DOWN) {
        conn_start(cn);
        return;
    }
    if (cn->state == LS_CONNECTING || cn->state == LS_SETUP) {
        if (now - cn->sent_us > S.lease_us / 2) {
            conn_lost(cn, "connecting took longer than lease_ms / 2");
            return;
        }
    } else if (cn->busy_op) {
        if (now - cn->sent_us > S.lease_us / 2) {
            conn_lost(cn, "no answer within lease_ms / 2");
            return;
        }
    } else if (now - cn->last_answer_us >= S.lease_us / 8) {
        conn_send(cn, "SELECT 1", NULL, LS_OP_PING);
    }
    if (cn->state != LS_DOWN)
        conn_timer_arm(cn, S.lease_us / 16);
}

static void conn_timer_arm(struct ls_conn *cn, uint64_t after_us)
{
    struct timeval tv = {(time_t)(after_us / 1000000u), (suseconds_t)(after_us % 1000000u)};
    evtimer_add(cn->timer, &tv);
}

/* The connection is gone: PostgreSQL drops (or has dropped) its advisory locks.  Every
 * key on it forgets them; confirmed holders are reported lost, waiting grants fail; the
 * connection is re-established with backoff. */
static void conn_lost(struct ls_conn *cn, const char *why)
{
    size_t n = strlen(why);
    while (n && (why[n - 1] == '\n' || why[n - 1] == ' '))
        n--;
    px_warning("lockspace", 0, (uint64_t)cn->index, "lock connection %d lost: %.*s", cn->index,
               (int)(n > 200 ? 200 : n), why);
    /* Only a connection that was up can have held something or run an attempt: a failed
     * connect or setup (PostgreSQL down, a reconnect failing) ends no wait.  Calls that
     * came while it was down keep waiting for the reconnect within their deadline (on_poll
     * ends them with 55P03, a try at once); a 55000 is for what was held or tried. */
    bool was_ready = cn->state == LS_READY;
    event_del(cn->io);
    if (cn->pg)
        PQfinish(cn->pg);
    cn->pg = NULL;
    cn->state = LS_DOWN;
    cn->busy_key = NULL;
    cn->busy_op = LS_OP_NONE;
    /* Note the lost holds first: the events below release local holds. */
    for (size_t b = 0; b < S.nbuckets; b++) {
        for (struct ls_key *k = S.buckets[b]; k; k = k->hnext) {
            if (k->conn != cn)
                continue;
            k->have = 0;
            k->in_flight = false;
            k->attempting = NULL;
            for (struct ls_hold *h = k->holds; h; h = h->next) {
                struct ls_lost *l = calloc(1, sizeof(*l));
                if (!l)
                    continue;
                l->client_id = h->client_id;
                snprintf(l->key, sizeof(l->key), "%.*s", (int)k->keylen, k->key);
                l->next = S.lost;
                S.lost = l;
            }
        }
    }
    /* Report: waiting grants fail, confirmed holds are released locally. */
    bool again = true;
    while (again) {
        again = false;
        for (size_t b = 0; b < S.nbuckets && !again; b++) {
            for (struct ls_key *k = S.buckets[b]; k && !again; k = k->hnext) {
                if (k->conn != cn)
                    continue;
                if (k->pend && was_ready) {
                    pend_finish(k, k->pend, PX_LOCKSPACE_LOST, 0, NULL);
                    again = true;
                } else if (k->holds) {
                    struct ls_hold *h = k->holds;
                    k->holds = h->next;
                    uint64_t id = h->client_id;
                    free(h);
                    px_locks_global_lost(id, k->key, k->keylen);
                    again = true;
                }
            }
        }
    }
    uint64_t d = cn->reconnect_us ? cn->reconnect_us * 2 : 100000u;
    if (d > 2000000u)
        d = 2000000u;
    cn->reconnect_us = d;
    conn_timer_arm(cn, d);
}

/* ---- deadlocks across instances (docs/design/distributed-locks.md section 8) ---------- */

/* Clients in the part, by id: an open-addressing set (ids are never 0). */
#define GSET_SIZE (2 * WG_MAX_NODES)
static size_t gset_slot(const uint64_t *ids, uint64_t id)
{
    size_t i = (size_t)(id * 0x9e3779b97f4a7c15ull) & (GSET_SIZE - 1);
    while (ids[i] && ids[i] != id)
        i = (i + 1) & (GSET_SIZE - 1);
    return i;
}

static uint64_t graph_period_us(void)
{
    uint64_t t = (uint64_t)px.cfg->deadlock_timeout_ms * 1000u / 4u;
    return t < 10000u ? 10000u : t;
}

/* Adds a node for a waiting client unless it is there already (or the part is full). */
static void part_add_node(struct ls_graph *g, uint64_t *ids, uint64_t client, uint64_t since_local,
                          uint64_t now, bool global, uint64_t hash, enum lockmgr_mode mode,
                          const struct wg_part *prev, const struct ls_gwait *prev_waits)
{
    size_t slot = gset_slot(ids, client);
    if (ids[slot] || g->own.nnodes == WG_MAX_NODES)
        return;
    ids[slot] = client;
    struct wg_node *n = &g->own.nodes[g->own.nnodes];
    struct ls_gwait *w = &g->waits[g->own.nnodes++];
    *n = (struct wg_node){.client = client,
                          .age_us = now > since_local ? now - since_local : 0,
                          .global = global,
                          .key_hash = hash,
                          .mode = (uint8_t)mode};
    *w = (struct ls_gwait){since_local, global};
    /* the start learned in an earlier round, so that every reader derives the same one */
    for (size_t i = 0; prev && i < prev->nnodes; i++)
        if (prev->nodes[i].client == client && prev_waits[i].since_local == since_local)
            n->since_us = prev->nodes[i].since_us;
}

/* Takes this instance's part: every waiting client (global waits first, then lockmgr's
 * waiters), the global holds of those clients, and lockmgr's edges among them. */
static int graph_take_part(struct ls_graph *g)
{
    uint64_t now = px_now_us();
    struct wg_part prev = g->own;
    struct ls_gwait *prev_waits = g->waits;
    struct lockmgr_snapshot *snap = lockmgr_snapshot(S.lm, NULL, NULL, 0);
    uint64_t *ids = calloc(GSET_SIZE, sizeof(*ids));
    memset(&g->own, 0, sizeof(g->own));
    snprintf(g->own.instance, sizeof(g->own.instance), "%s", g->instance);
    g->own.nodes = calloc(WG_MAX_NODES, sizeof(*g->own.nodes));
    g->own.holds = calloc(WG_MAX_HOLDS, sizeof(*g->own.holds));
    g->own.edges = calloc(WG_MAX_EDGES, sizeof(*g->own.edges));
    g->waits = calloc(WG_MAX_NODES, sizeof(*g->waits));
    int rc = -1;
    if (!snap || !ids || !g->own.nodes || !g->own.holds || !g->own.edges || !g->waits)
        goto out;
    for (size_t b = 0; b < S.nbuckets; b++)
        for (struct ls_key *k = S.buckets[b]; k; k = k->hnext)
            for (struct ls_pend *p = k->pend; p; p = p->next)
                if (!p->try)
                    part_add_node(g, ids, p->client_id, p->since_us, now, true,
                                  k->hash & ~(uint64_t)7, p->mode, &prev, prev_waits);
    for (size_t i = 0; i < snap->nkeys; i++)
        for (size_t j = 0; j < snap->keys[i].nwaiters; j++) {
            const struct lockmgr_snap_waiter *w = &snap->keys[i].waiters[j];
            part_add_node(g, ids, w->owner_id, w->since_us, now, false, 0, w->mode, &prev,
                          prev_waits);
        }
    for (size_t i = 0; i < snap->nkeys; i++) {
        const struct lockmgr_snap_key *sk = &snap->keys[i];
        struct ls_key *k = key_find(sk->key, sk->keylen, key_hash(sk->key, sk->keylen));
        for (size_t j = 0; k && j < sk->nholders && g->own.nholds < WG_MAX_HOLDS; j++) {
            const struct lockmgr_snap_holder *hd = &sk->holders[j];
            struct ls_hold *h =
                ids[gset_slot(ids, hd->owner_id)] ? hold_find(k, hd->owner_id) : NULL;
            if (h) /* held in PostgreSQL: what another instance can wait for */
                g->own.holds[g->own.nholds++] =
                    (struct wg_hold){hd->owner_id, k->hash & ~(uint64_t)7, /* the advisory id */
                                     (uint8_t)(hd->mode < h->mode ? hd->mode : h->mode)};
        }
        /* lockmgr's edges: to each conflicting holder, and to each conflicting request
         * queued earlier (unless an upgrade) */
        for (size_t j = 0; j < sk->nwaiters; j++) {
            const struct lockmgr_snap_waiter *w = &sk->waiters[j];
            for (size_t m = 0; m < sk->nholders && g->own.nedges < WG_MAX_EDGES; m++) {
                const struct lockmgr_snap_holder *hd = &sk->holders[m];
                if (hd->owner_id != w->owner_id && wg_conflict(w->mode, hd->mode) &&
                    ids[gset_slot(ids, hd->owner_id)])
                    g->own.edges[g->own.nedges++] = (struct wg_edge){w->owner_id, hd->owner_id};
            }
            for (size_t m = 0; !w->upgrade && m < j && g->own.nedges < WG_MAX_EDGES; m++) {
                const struct lockmgr_snap_waiter *e = &sk->waiters[m];
                if (e->owner_id != w->owner_id && wg_conflict(w->mode, e->mode))
                    g->own.edges[g->own.nedges++] = (struct wg_edge){w->owner_id, e->owner_id};
            }
        }
    }
    rc = 0;
out:
    wg_part_clear(&prev);
    free(prev_waits);
    free(ids);
    if (snap)
        lockmgr_snapshot_free(snap);
    return rc;
}

/* Sends the graph statement on connection 0 when one is wanted; true when it did. */
static bool graph_kick(struct ls_conn *cn)
{
    struct ls_graph *g = S.graph;
    if (cn->index != 0 || !g || g->want == LS_OP_NONE)
        return false;
    enum ls_op op = g->want;
    g->want = LS_OP_NONE;
    if (op == LS_OP_GRAPH_CLEAR) {
        const char *params[1] = {g->instance};
        return conn_send_params(cn, "DELETE FROM pgwarden_lock_waits WHERE instance = $1", 1,
                                params, NULL, op) == 0;
    }
    if (graph_take_part(g) < 0)
        return false;
    char *text = wg_encode(&g->own);
    if (!text)
        return false;
    char stale[32];
    snprintf(stale, sizeof(stale), "%.3f", (double)(2 * 4 * graph_period_us()) / 1e6);
    const char *params[3] = {g->instance, text, stale};
    /* Our part in, parts nobody refreshed for two deadlock timeouts out (their instance
     * is gone or has no long wait), and every other live part back, with the time
     * PostgreSQL stamped ours with. */
    int rc = conn_send_params(
        cn,
        "WITH me AS (INSERT INTO pgwarden_lock_waits AS w (instance, published, graph) "
        "VALUES ($1, clock_timestamp(), $2) ON CONFLICT (instance) DO UPDATE SET "
        "published = excluded.published, graph = excluded.graph RETURNING published), "
        "gone AS (DELETE FROM pgwarden_lock_waits WHERE instance <> $1 AND "
        "published < clock_timestamp() - make_interval(secs => $3::float8)) "
        "SELECT $1, (extract(epoch FROM published) * 1000000)::bigint, NULL FROM me "
        "UNION ALL SELECT instance, (extract(epoch FROM published) * 1000000)::bigint, graph "
        "FROM pgwarden_lock_waits WHERE instance <> $1 AND "
        "published >= clock_timestamp() - make_interval(secs => $3::float8)",
        3, params, NULL, op);
    free(text);
    return rc == 0;
}

static void graph_failed(const char *why, const char *sqlstate)
{
    struct ls_graph *g = S.graph;
    size_t n = strlen(why);
    while (n && (why[n - 1] == '\n' || why[n - 1] == ' '))
        n--;
    if (strcmp(sqlstate, "55P03") == 0 || strcmp(sqlstate, "40P01") == 0) {
        /* another instance's statement on the table held a row (lock_timeout of the lock
         * connections): only this round is lost */
        px_debug("lockspace", 0, 0, "wait-for graph round skipped: %.*s", (int)n, why);
        return;
    }
    if (!g->disabled_until_us)
        px_warning("lockspace", 0, 0,
                   "cannot use table pgwarden_lock_waits (%.*s): deadlocks across instances "
                   "are not detected (they end at the lock timeout); retrying every 30 s",
                   (int)(n > 200 ? 200 : n), why);
    g->disabled_until_us = px_now_us() + 30000000u;
}

/* The cycle's victim is a wait of this instance: it ends with 40P01 if it is still the
 * same wait. */
static void graph_victim(struct ls_graph *g, const struct wg_cycle *cy, const struct wg_part *parts)
{
    uint64_t id = cy->at[cy->victim].client;
    size_t j = 0;
    while (j < g->own.nnodes && g->own.nodes[j].client != id)
        j++;
    if (j == g->own.nnodes)
        return;
    char detail[1024];
    size_t used = 0;
    int w = snprintf(detail, sizeof(detail),
                     "deadlock across pgwarden instances: a cycle of %zu lock waits; this one "
                     "began last:",
                     cy->len);
    used = w > 0 ? (size_t)w : 0;
    for (size_t i = 0; i < cy->len && used + 1 < sizeof(detail); i++) {
        w = snprintf(detail + used, sizeof(detail) - used, "\nclient %" PRIu64 " on %s%s",
                     cy->at[i].client, parts[cy->at[i].part].instance,
                     i == cy->victim ? " (this wait)" : "");
        if (w < 0)
            break;
        used += (size_t)w < sizeof(detail) - used ? (size_t)w : sizeof(detail) - used - 1;
    }
    if (g->waits[j].global) {
        for (size_t b = 0; b < S.nbuckets; b++)
            for (struct ls_key *k = S.buckets[b]; k; k = k->hnext)
                for (struct ls_pend *p = k->pend; p; p = p->next)
                    if (p->client_id == id && p->since_us == g->waits[j].since_local && !p->try) {
                        px_info("lockspace", 'C', id,
                                "deadlock across instances (%zu waits): this wait is the victim",
                                cy->len);
                        k->dirty = true; /* its gate, if it held one */
                        event_active(S.reconcile, EV_TIMEOUT, 0);
                        px_metrics_inc(NULL, PX_M_LOCK_INSTANCE_DEADLOCKS, 0);
                        pend_finish(k, p, PX_LOCKSPACE_DEADLOCK, 0, detail);
                        return;
                    }
        return;
    }
    struct lockmgr_snapshot *snap = lockmgr_snapshot(S.lm, NULL, NULL, 0);
    bool same = false;
    for (size_t i = 0; snap && i < snap->nkeys && !same; i++)
        for (size_t m = 0; m < snap->keys[i].nwaiters && !same; m++)
            same = snap->keys[i].waiters[m].owner_id == id &&
                   snap->keys[i].waiters[m].since_us == g->waits[j].since_local;
    if (snap)
        lockmgr_snapshot_free(snap);
    if (same) {
        px_info("lockspace", 'C', id,
                "deadlock across instances (%zu waits): this lock wait is the victim", cy->len);
        px_metrics_inc(NULL, PX_M_LOCK_INSTANCE_DEADLOCKS, 0);
        px_locks_global_victim(id, detail);
    }
}

/* The answer to the publish statement: our stamp and the other instances' parts. */
static void graph_result(PGresult *res)
{
    struct ls_graph *g = S.graph;
    int rows = PQntuples(res);
    struct wg_part *parts = calloc((size_t)(rows > 0 ? rows : 1), sizeof(*parts));
    size_t n = 0, own = SIZE_MAX;
    g->published = true;
    g->disabled_until_us = 0;
    px_metrics_inc(NULL, PX_M_LOCK_GRAPH_ROUNDS, 0);
    if (!parts)
        return;
    for (int r = 0; r < rows; r++) {
        int64_t stamp = strtoll(PQgetvalue(res, r, 1), NULL, 10);
        if (PQgetisnull(res, r, 2)) { /* ours */
            if (own != SIZE_MAX)
                continue;
            g->own.published_us = stamp;
            for (size_t i = 0; i < g->own.nnodes; i++) /* learn the starts, keep them */
                if (!g->own.nodes[i].since_us)
                    g->own.nodes[i].since_us = stamp - (int64_t)g->own.nodes[i].age_us;
            own = n;
            parts[n++] = g->own; /* borrowed */
            continue;
        }
        struct wg_part *p = &parts[n];
        snprintf(p->instance, sizeof(p->instance), "%s", PQgetvalue(res, r, 0));
        p->published_us = stamp;
        if (wg_decode(PQgetvalue(res, r, 2), p) == 0)
            n++;
        else
            px_debug("lockspace", 0, 0, "unreadable wait-for part of %s", p->instance);
    }
    struct wg_cycle cy;
    int64_t margin = (int64_t)graph_period_us();
    if (own != SIZE_MAX && n > 1 && wg_find(parts, n, own, margin, &cy) &&
        cy.at[cy.victim].part == own)
        graph_victim(g, &cy, parts);
    for (size_t i = 0; i < n; i++)
        if (i != own)
            wg_part_clear(&parts[i]);
    free(parts);
}

/* Every deadlock_timeout / 4 while a global wait exists: a wait older than
 * deadlock_timeout / 2 makes this instance publish its part and read the others'. */
static void on_graph_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    struct ls_graph *g = S.graph;
    uint64_t now = px_now_us(), period = graph_period_us();
    bool any = false, long_wait = false;
    for (size_t b = 0; b < S.nbuckets; b++)
        for (struct ls_key *k = S.buckets[b]; k; k = k->hnext)
            for (struct ls_pend *p = k->pend; p; p = p->next)
                if (!p->try) {
                    any = true;
                    long_wait |= now - p->since_us >= 2 * period;
                }
    if (long_wait && now >= g->disabled_until_us)
        g->want = LS_OP_GRAPH_PUBLISH;
    else if (!long_wait && g->published)
        g->want = LS_OP_GRAPH_CLEAR;
    else
        g->want = LS_OP_NONE;
    if (g->want != LS_OP_NONE)
        conn_kick(&S.conns[0]);
    if (any || g->published) {
        struct timeval tv = {(time_t)(period / 1000000u), (suseconds_t)(period % 1000000u)};
        evtimer_add(g->timer, &tv);
    }
}

static void graph_wait_began(void)
{
    if (S.graph && !evtimer_pending(S.graph->timer, NULL)) {
        uint64_t period = graph_period_us();
        struct timeval tv = {(time_t)(period / 1000000u), (suseconds_t)(period % 1000000u)};
        evtimer_add(S.graph->timer, &tv);
    }
}

static int graph_init(void)
{
    S.graph = calloc(1, sizeof(*S.graph));
    if (!S.graph)
        return -1;
    S.graph->timer = evtimer_new(px.base, on_graph_timer, NULL);
    /* host:pid and a nonce: two containers may share both host name and pid */
    snprintf(S.graph->instance, sizeof(S.graph->instance), "%s/%06x",
             S.appname + strlen("pgwarden-locks "),
             (unsigned)((px_now_us() ^ (uint64_t)random()) & 0xffffffu));
    return S.graph->timer ? 0 : -1;
}

static void graph_free(void)
{
    if (!S.graph)
        return;
    if (S.graph->timer)
        event_free(S.graph->timer);
    wg_part_clear(&S.graph->own);
    free(S.graph->waits);
    free(S.graph);
    S.graph = NULL;
}

/* ---- the interface -------------------------------------------------------------------- */

static void on_reconcile(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    for (size_t b = 0; b < S.nbuckets; b++) {
        for (struct ls_key *k = S.buckets[b], *next; k; k = next) {
            next = k->hnext;
            if (!k->dirty || k->in_flight)
                continue;
            k->dirty = false;
            key_queue(k);
        }
    }
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    for (int i = 0; i < S.nconns; i++)
        conn_kick(&S.conns[i]);
}

int px_lockspace_init(const struct px_config *cfg, struct lockmgr *lm, char **errmsg)
{
    memset(&S, 0, sizeof(S));
    if (cfg->backend != PX_LOCKS_POSTGRESQL)
        return 0;
    S.active = true;
    S.lm = lm;
    S.nconns = cfg->backend_connections;
    S.lease_us = (uint64_t)cfg->lease_ms * 1000u;
    S.conninfo = strdup(cfg->backend_conninfo);
    S.conns = calloc((size_t)S.nconns, sizeof(*S.conns));
    S.reconcile = event_new(px.base, -1, 0, on_reconcile, NULL);
    S.kick = event_new(px.base, -1, 0, on_kick, NULL);
    char host[40] = "";
    gethostname(host, sizeof(host) - 1);
    snprintf(S.appname, sizeof(S.appname), "pgwarden-locks %s:%d", host, (int)getpid());
    if (!S.conninfo || !S.conns || !S.reconcile || !S.kick || graph_init() < 0) {
        *errmsg = strdup("out of memory");
        return -1;
    }
    for (int i = 0; i < S.nconns; i++) {
        struct ls_conn *cn = &S.conns[i];
        cn->index = i;
        px_list_init(&cn->queue);
        cn->io = event_new(px.base, -1, 0, on_io, cn);
        cn->timer = evtimer_new(px.base, on_conn_timer, cn);
        if (!cn->io || !cn->timer) {
            *errmsg = strdup("out of memory");
            return -1;
        }
        conn_start(cn);
    }
    px_info("lockspace", 0, 0, "lock space in PostgreSQL: %d lock connections, lease %d ms",
            S.nconns, cfg->lease_ms);
    return 0;
}

void px_lockspace_shutdown(void)
{
    if (!S.active)
        return;
    for (int i = 0; S.conns && i < S.nconns; i++) {
        struct ls_conn *cn = &S.conns[i];
        if (cn->io)
            event_free(cn->io);
        if (cn->timer)
            event_free(cn->timer);
        if (cn->pg)
            PQfinish(cn->pg);
    }
    for (size_t b = 0; b < S.nbuckets; b++)
        for (struct ls_key *k = S.buckets[b], *next; k; k = next) {
            next = k->hnext;
            while (k->pend) {
                struct ls_pend *p = k->pend;
                k->pend = p->next;
                free(p);
            }
            while (k->holds) {
                struct ls_hold *h = k->holds;
                k->holds = h->next;
                free(h);
            }
            event_free(k->poll);
            free(k->remote);
            free(k);
        }
    graph_free();
    while (S.lost) {
        struct ls_lost *l = S.lost;
        S.lost = l->next;
        free(l);
    }
    if (S.reconcile)
        event_free(S.reconcile);
    if (S.kick)
        event_free(S.kick);
    free(S.buckets);
    free(S.conns);
    free(S.conninfo);
    memset(&S, 0, sizeof(S));
}

bool px_lockspace_confirm(uint64_t client_id, const char *key, size_t keylen,
                          enum lockmgr_mode mode, uint64_t lm_token, uint64_t deadline_us, bool try,
                          uint64_t *token)
{
    struct ls_key *k = key_get(key, keylen);
    if (!k) { /* out of memory: fails as a lost connection would */
        px_locks_global_done(client_id, PX_LOCKSPACE_LOST, 0, NULL);
        return false;
    }
    struct ls_hold *h = hold_find(k, client_id);
    if (h && h->lm_token == lm_token) {
        *token = h->token;
        return true;
    }
    struct ls_pend *p = calloc(1, sizeof(*p));
    if (!p) {
        px_locks_global_done(client_id, PX_LOCKSPACE_LOST, 0, NULL);
        return false;
    }
    p->client_id = client_id;
    p->lm_token = lm_token;
    p->deadline_us = deadline_us;
    p->mode = mode;
    p->try = try;
    p->since_us = px_now_us();
    if (!try)
        graph_wait_began();
    if (try && k->conn->state != LS_READY)
        p->deadline_us = px_now_us(); /* a try never waits, not even for the connection: 55P03 */
    struct ls_pend **pp = &k->pend;
    while (*pp)
        pp = &(*pp)->next;
    *pp = p;
    event_del(k->poll);
    key_queue(k);
    if (k->conn->state != LS_READY) /* waits for the connection, within its deadline */
        arm_deadline(k);
    return false;
}

void px_lockspace_releasing(struct lockmgr *lm, const struct lockmgr_owner *o)
{
    if (!S.active || !o)
        return;
    struct lockmgr_snapshot *snap = lockmgr_snapshot(lm, o, NULL, 0);
    if (!snap)
        return;
    bool any = false;
    for (size_t i = 0; i < snap->nkeys; i++) {
        const struct lockmgr_snap_key *sk = &snap->keys[i];
        struct ls_key *k = key_find(sk->key, sk->keylen, key_hash(sk->key, sk->keylen));
        if (k) {
            k->dirty = true;
            any = true;
        }
    }
    lockmgr_snapshot_free(snap);
    if (any)
        event_active(S.reconcile, EV_TIMEOUT, 0);
}

/* Finds client_id's waiting grant, if any. */
static struct ls_pend *pend_of(uint64_t client_id, struct ls_key **kp)
{
    for (size_t b = 0; b < S.nbuckets; b++)
        for (struct ls_key *k = S.buckets[b]; k; k = k->hnext)
            for (struct ls_pend *p = k->pend; p; p = p->next)
                if (p->client_id == client_id) {
                    *kp = k;
                    return p;
                }
    return NULL;
}

bool px_lockspace_cancel(uint64_t client_id)
{
    if (!S.active)
        return false;
    struct ls_key *k;
    struct ls_pend *p = pend_of(client_id, &k);
    if (!p)
        return false;
    pend_remove(k, p);
    k->dirty = true;
    event_active(S.reconcile, EV_TIMEOUT, 0);
    return true;
}

void px_lockspace_client_gone(uint64_t client_id)
{
    if (!S.active)
        return;
    struct ls_key *k;
    struct ls_pend *p;
    while ((p = pend_of(client_id, &k)) != NULL) {
        pend_remove(k, p);
        k->dirty = true;
        event_active(S.reconcile, EV_TIMEOUT, 0);
    }
    for (struct ls_lost **pp = &S.lost; *pp;) {
        if ((*pp)->client_id == client_id) {
            struct ls_lost *l = *pp;
            *pp = l->next;
            free(l);
        } else {
            pp = &(*pp)->next;
        }
    }
}

uint64_t px_lockspace_token(uint64_t client_id, const void *key, size_t keylen, uint64_t lm_token)
{
    if (!S.active)
        return lm_token;
    struct ls_key *k = key_find(key, keylen, key_hash(key, keylen));
    struct ls_hold *h = k ? hold_find(k, client_id) : NULL;
    return h ? h->token : lm_token;
}

enum px_lockspace_hold px_lockspace_hold_state(uint64_t client_id, const void *key, size_t keylen,
                                               uint64_t lm_token, uint64_t *token)
{
    *token = lm_token;
    if (!S.active)
        return PX_LOCKSPACE_HOLD_LOCAL;
    struct ls_key *k = key_find(key, keylen, key_hash(key, keylen));
    if (k)
        for (struct ls_pend *p = k->pend; p; p = p->next)
            if (p->client_id == client_id)
                return PX_LOCKSPACE_HOLD_WAITING; /* a first grant or an upgrade */
    struct ls_hold *h = k ? hold_find(k, client_id) : NULL;
    if (!h)
        return PX_LOCKSPACE_HOLD_WAITING;
    *token = h->token;
    return PX_LOCKSPACE_HOLD_HELD;
}

size_t px_lockspace_remote(const void *key, size_t keylen, struct px_lockspace_remote *out,
                           size_t cap, uint64_t *age_us)
{
    *age_us = 0;
    if (!S.active)
        return 0;
    struct ls_key *k = key_find(key, keylen, key_hash(key, keylen));
    if (!k || !k->remote_at_us)
        return 0;
    size_t n = k->nremote < cap ? k->nremote : cap;
    memcpy(out, k->remote, n * sizeof(*out));
    *age_us = px_now_us() - k->remote_at_us;
    return n;
}

bool px_lockspace_take_lost(uint64_t client_id, char *key, size_t cap)
{
    bool found = false;
    for (struct ls_lost **pp = &S.lost; *pp;) {
        struct ls_lost *l = *pp;
        if (l->client_id != client_id) {
            pp = &l->next;
            continue;
        }
        if (!found && cap)
            snprintf(key, cap, "%s", l->key);
        found = true;
        *pp = l->next;
        free(l);
    }
    return found;
}

bool px_lockspace_peek_lost(uint64_t client_id, char *key, size_t cap)
{
    for (const struct ls_lost *l = S.lost; l; l = l->next) {
        if (l->client_id == client_id) {
            if (cap)
                snprintf(key, cap, "%s", l->key);
            return true;
        }
    }
    return false;
}
