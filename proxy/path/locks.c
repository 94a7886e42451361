/*
 * locks.c: the lock stage of the statement path (see locks.h).
 *
 * Per client (struct px_client_locks, allocated at its first lock message): the lockmgr
 * owner, the lock-call statements and portals of the extended protocol, and the wait.  Per
 * process: the lock manager, one timer for the earliest wait deadline, and one deferred
 * event that delivers wait outcomes at a safe point of the loop (lockmgr calls its
 * callback from inside whatever call granted or ended the wait, often while another
 * client's messages are being relayed).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "base/log.h"
#include "lockspace/lockspace.h"
#include "metrics/stats.h"
#include "net/client.h"
#include "net/server.h"
#include "path/expect.h"
#include "path/lockcall.h"
#include "path/lockprobe.h"
#include "path/locks.h"
#include "path/path.h"
#include "path/prepared.h"
#include "path/retry.h"
#include "path/sqlscan.h"
#include "path/tokenstate.h"
#include "path/txn.h"

/* A lock call prepared with Parse; name "" is the unnamed statement. */
struct px_lockstmt {
    struct px_lockstmt *next;
    char name[PX_STMT_NAME_MAX + 1];
    struct px_lockcall call;
};

/* A portal bound to a lock call: a copy of the call (the statement may go first, as in
 * PostgreSQL) and its argument values. */
struct px_lockportal {
    struct px_lockportal *next;
    char name[PX_STMT_NAME_MAX + 1];
    struct px_lockcall call;
    struct px_lockcall_values values;
    /* A portal runs once, as PostgreSQL's: a later Execute of it returns no rows and does
     * not call the function again.  pgwarden_locks() keeps its rows (DataRow messages) for
     * Executes with a row limit, which get them in slices with PortalSuspended. */
    bool ran;
    struct evbuffer *rows;
};

/* The outcome of a wait, copied out of lockmgr's callback. */
struct px_lockwait_result {
    enum lockmgr_status status;
    uint64_t token;
    char *detail; /* DEADLOCK: the cycle, described (owned) */
    bool global;  /* backend = postgresql: the global part is done (lockspace.h) */
    bool lost;    /* ... and failed because the lock connection was lost (55000) */
};

struct px_client_locks {
    struct px_client *client;
    struct px_client_locks *hnext; /* owner-id hash chain */
    struct lockmgr_owner *owner;   /* NULL until the first lock function runs */
    struct px_lockstmt *stmts;
    struct px_lockportal *portals;
    bool skip;     /* an error in this extended-protocol group: skip to Sync */
    bool has_xact; /* may hold transaction-scoped locks */
    /* A Query or group that ends the block (COMMIT / ROLLBACK AND CHAIN, COMMIT; BEGIN,
     * ...) was sent: its CommandComplete tags are read until this many ReadyForQuery from
     * now (0: none such); its COMMIT's or ROLLBACK's ends the block (px_locks_complete). */
    uint32_t end_at_ready;
    bool lost;      /* a lock was lost with its lock connection, maybe not reported yet */
    bool lost_pass; /* ... and this extended-protocol group is a ROLLBACK: it runs */

    /* The wait, while c->lock_waiting. */
    struct px_lockreq req;
    bool wait_simple; /* answer as a simple Query, else as an Execute */
    bool wait_try;    /* a try call waiting for its global part */
    /* backend = postgresql: the client's hold of the key before this request, put back
     * when the global part fails or is cancelled (a failed upgrade keeps the weaker mode
     * held before; release_provisional) */
    struct lockmgr_hold_mark before;
    /* What the answer needs of the call (its function, FROM form and column name), not
     * the whole parsed call: its errors, arguments and parameter types (2.8 kB) are done
     * with once the call runs. */
    enum px_lockfn wait_fn;
    bool wait_from_clause;
    char wait_column[PX_LOCKCALL_NAME_SIZE];
    int16_t formats[4];
    uint64_t wait_since_us;
    bool have_result; /* on L.pending: the outcome waits to be delivered */
    struct px_list pending_link;
    struct px_lockwait_result result;
    char *victim_detail; /* a deadlock found outside lockmgr (lockprobe.h): its DETAIL */
};

/* A deadlock's DETAIL describes this many edges of the cycle ("... and N more"). */
#define CYCLE_EDGES_SHOWN 8
#define DETAIL_MAX        2048

static struct {
    struct lockmgr *lm;
    struct event *timer;   /* earliest wait deadline */
    uint64_t armed_us;     /* deadline the timer is set for; UINT64_MAX: none */
    struct event *deliver; /* wait outcomes, delivered at a safe point */
    struct px_list pending;
    struct px_client_locks **buckets; /* owner id -> client */
    size_t nbuckets, count;
} L;

/* ---- time and the owner-id index ------------------------------------------------------- */

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static size_t bucket_of(uint64_t id, size_t n)
{
    return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 32) & (n - 1);
}

static int index_add(struct px_client_locks *cl)
{
    if (L.count >= L.nbuckets) {
        size_t n = L.nbuckets ? L.nbuckets * 2 : 256;
        struct px_client_locks **b = calloc(n, sizeof(*b));
        if (!b)
            return -1;
        for (size_t i = 0; i < L.nbuckets; i++) {
            for (struct px_client_locks *e = L.buckets[i], *next; e; e = next) {
                next = e->hnext;
                size_t k = bucket_of(e->client->id, n);
                e->hnext = b[k];
                b[k] = e;
            }
        }
        free(L.buckets);
        L.buckets = b;
        L.nbuckets = n;
    }
    size_t k = bucket_of(cl->client->id, L.nbuckets);
    cl->hnext = L.buckets[k];
    L.buckets[k] = cl;
    L.count++;
    return 0;
}

static void index_remove(struct px_client_locks *cl)
{
    if (!L.nbuckets)
        return;
    for (struct px_client_locks **pp = &L.buckets[bucket_of(cl->client->id, L.nbuckets)]; *pp;
         pp = &(*pp)->hnext) {
        if (*pp == cl) {
            *pp = cl->hnext;
            L.count--;
            return;
        }
    }
}

struct px_client *px_locks_client(uint64_t id)
{
    if (!L.nbuckets)
        return NULL;
    for (struct px_client_locks *e = L.buckets[bucket_of(id, L.nbuckets)]; e; e = e->hnext)
        if (e->client->id == id)
            return e->client;
    return NULL;
}

struct lockmgr_owner *px_locks_owner(const struct px_client *c)
{
    return c->locks ? c->locks->owner : NULL;
}

struct lockmgr *px_locks_manager(void)
{
    return L.lm;
}

/* ---- the deadline timer and delivery --------------------------------------------------- */

static void arm_timer(void)
{
    uint64_t next = L.lm ? lockmgr_next_deadline(L.lm) : UINT64_MAX;
    if (next == L.armed_us)
        return;
    L.armed_us = next;
    if (next == UINT64_MAX) {
        event_del(L.timer);
        return;
    }
    uint64_t now = now_us();
    uint64_t wait = next > now ? next - now : 0;
    struct timeval tv = {(time_t)(wait / 1000000u), (suseconds_t)(wait % 1000000u)};
    event_add(L.timer, &tv);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    L.armed_us = UINT64_MAX;
    lockmgr_expire(L.lm, now_us());
    arm_timer();
}

static void deliver_all(evutil_socket_t fd, short what, void *arg);

int px_locks_init(const struct px_config *cfg, char **errmsg)
{
    struct lockmgr_config lc = {.max_locks = (size_t)cfg->max_locks};
    if (cfg->state_file) {
        struct px_tokenstate ts;
        if (px_tokenstate_claim(cfg->state_file, false, &ts, errmsg) < 0)
            return -1;
        lc.token_floor = ts.token_floor;
        lc.token_ceiling = ts.token_ceiling;
        px_info("locks", 0, 0, "fencing tokens of this run: epoch %" PRIu64, ts.epoch);
    } else {
        /* Microseconds since 1970 times 1024: above every token of an earlier run unless
         * the clock went back, or that run granted more than one token per nanosecond. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        lc.token_floor = ((uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u) << 10;
    }
    L.lm = lockmgr_new(&lc);
    L.timer = evtimer_new(px.base, on_timer, NULL);
    L.deliver = event_new(px.base, -1, 0, deliver_all, NULL);
    L.armed_us = UINT64_MAX;
    px_list_init(&L.pending);
    if (!L.lm || !L.timer || !L.deliver) {
        *errmsg = strdup("out of memory");
        return -1;
    }
    return 0;
}

void px_locks_shutdown(void)
{
    px_lockprobe_shutdown();
    lockmgr_free(L.lm);
    if (L.timer)
        event_free(L.timer);
    if (L.deliver)
        event_free(L.deliver);
    free(L.buckets);
    memset(&L, 0, sizeof(L));
}

int px_locks_init_state_file(const char *path, char **errmsg)
{
    char line[PX_TOKENSTATE_LINE_MAX];
    size_t n = px_tokenstate_format(0, line);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (asprintf(errmsg, "cannot create %s: %s", path, strerror(errno)) < 0)
            *errmsg = NULL;
        return -1;
    }
    bool ok = write(fd, line, n) == (ssize_t)n && fsync(fd) == 0;
    int err = errno;
    close(fd);
    if (!ok) {
        unlink(path);
        if (asprintf(errmsg, "cannot write %s: %s", path, strerror(err)) < 0)
            *errmsg = NULL;
        return -1;
    }
    return 0;
}

int px_locks_check_state_file(const char *path, char **errmsg)
{
    char buf[PX_TOKENSTATE_LINE_MAX + 1];
    FILE *f = fopen(path, "r");
    if (!f) {
        if (asprintf(errmsg, "[locks] state_file %s: %s (create it with --init-lock-state)", path,
                     strerror(errno)) < 0)
            *errmsg = NULL;
        return -1;
    }
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    uint64_t epoch;
    const char *why;
    if (px_tokenstate_parse(buf, n, &epoch, &why) < 0) {
        if (asprintf(errmsg, "[locks] state_file %s is corrupt: %s", path, why) < 0)
            *errmsg = NULL;
        return -1;
    }
    return 0;
}

/* ---- per-client state ------------------------------------------------------------------ */

static struct px_client_locks *state_of(struct px_client *c)
{
    if (c->locks)
        return c->locks;
    struct px_client_locks *cl = calloc(1, sizeof(*cl));
    if (!cl)
        return NULL;
    cl->client = c;
    px_list_init(&cl->pending_link);
    c->locks = cl;
    return cl;
}

static void on_wait_done(struct lockmgr_owner *o, void *udata, const struct lockmgr_result *res);
static void release_provisional(struct px_client_locks *cl);
static bool global_lost(struct px_client *c, const struct px_lockcall *call, const int16_t *formats,
                        const struct px_lockreq *req, bool simple);

static struct lockmgr_owner *owner_of(struct px_client_locks *cl)
{
    if (!cl->owner) {
        cl->owner = lockmgr_owner_new(L.lm, cl->client->id, on_wait_done, cl->client);
        if (cl->owner && index_add(cl) < 0) {
            lockmgr_owner_free(L.lm, cl->owner, now_us());
            cl->owner = NULL;
        }
    }
    return cl->owner;
}

static struct px_lockstmt *find_stmt(struct px_client_locks *cl, const char *name)
{
    for (struct px_lockstmt *st = cl ? cl->stmts : NULL; st; st = st->next)
        if (!strcmp(st->name, name))
            return st;
    return NULL;
}

static struct px_lockportal *find_portal(struct px_client_locks *cl, const char *name)
{
    for (struct px_lockportal *p = cl ? cl->portals : NULL; p; p = p->next)
        if (!strcmp(p->name, name))
            return p;
    return NULL;
}

static void drop_stmt(struct px_client_locks *cl, const char *name)
{
    for (struct px_lockstmt **pp = cl ? &cl->stmts : NULL; pp && *pp; pp = &(*pp)->next) {
        if (!strcmp((*pp)->name, name)) {
            struct px_lockstmt *st = *pp;
            *pp = st->next;
            free(st);
            return;
        }
    }
}

static void drop_portal(struct px_client_locks *cl, const char *name)
{
    for (struct px_lockportal **pp = cl ? &cl->portals : NULL; pp && *pp; pp = &(*pp)->next) {
        if (!strcmp((*pp)->name, name)) {
            struct px_lockportal *p = *pp;
            *pp = p->next;
            if (p->rows)
                evbuffer_free(p->rows);
            free(p);
            return;
        }
    }
}

/* Portals end with their transaction, as PostgreSQL's do (an Execute of one afterwards is
 * PostgreSQL's 34000). */
static void drop_portals(struct px_client_locks *cl)
{
    while (cl->portals)
        drop_portal(cl, cl->portals->name);
}

/* ---- errors and the transaction they happen in ----------------------------------------- */

static void set_error(struct px_lockcall_error *err, const char *sqlstate, const char *detail,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void set_error(struct px_lockcall_error *err, const char *sqlstate, const char *detail,
                      const char *fmt, ...)
{
    memset(err, 0, sizeof(*err));
    snprintf(err->sqlstate, sizeof(err->sqlstate), "%s", sqlstate);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    if (detail)
        snprintf(err->detail, sizeof(err->detail), "%s", detail);
}

/* The transaction state the client sees: 'I', 'T' or 'E'. */
static char txn_status(const struct px_client *c)
{
    return c->server ? c->server->txn_status : px_txn_unlinked_status(c);
}

/* Writes err as the answer to the current message (with long_detail, when not NULL, as
 * its DETAIL) and fails the statement. */
static void answer_error_detail(struct px_client *c, const struct px_lockcall_error *err,
                                bool simple, const char *long_detail)
{
    struct evbuffer *out = px_path_client_out(c);
    if (long_detail && *long_detail) {
        struct px_wire_errfields e = {.sev = PX_SEV_ERROR,
                                      .sqlstate = err->sqlstate,
                                      .message = err->message,
                                      .detail = long_detail,
                                      .hint = err->hint[0] ? err->hint : NULL};
        px_wire_error_fields(out, &e);
    } else {
        px_lockcall_write_error(out, err);
    }
    if (!simple && c->locks)
        c->locks->skip = true;
    px_txn_statement_failed(c, simple);
    if (simple)
        px_wire_ready(out, txn_status(c));
}

static void answer_error(struct px_client *c, const struct px_lockcall_error *err, bool simple)
{
    answer_error_detail(c, err, simple, NULL);
}

/* ---- running a lock function ----------------------------------------------------------- */

/* The rows of pgwarden_locks(): every lock c holds. */
static int write_locks_rows(struct px_client *c, struct evbuffer *out,
                            const struct px_lockcall *call, const int16_t *formats, uint64_t *rows)
{
    *rows = 0;
    struct px_client_locks *cl = c->locks;
    if (!cl || !cl->owner)
        return 0;
    struct lockmgr_snapshot *snap = lockmgr_snapshot(L.lm, cl->owner, NULL, 0);
    if (!snap)
        return -1;
    for (size_t k = 0; k < snap->nkeys; k++) {
        const struct lockmgr_snap_key *key = &snap->keys[k];
        for (size_t h = 0; h < key->nholders; h++) {
            const struct lockmgr_snap_holder *hd = &key->holders[h];
            px_lockcall_write_locks_row(
                out, call, formats, key->key, key->keylen, hd->mode, hd->scope,
                px_lockspace_token(hd->owner_id, key->key, key->keylen, hd->token));
            (*rows)++;
        }
    }
    lockmgr_snapshot_free(snap);
    return 0;
}

/* The reply to a one-value function (value, or NULL). */
static void answer_value(struct px_client *c, const struct px_lockcall *call,
                         const int16_t *formats, bool simple, bool is_null, int64_t value)
{
    struct evbuffer *out = px_path_client_out(c);
    if (simple)
        px_lockcall_write_row_description(out, call, NULL);
    px_lockcall_write_value(out, call, formats ? formats[0] : 0, is_null, value);
    px_lockcall_write_complete(out, 1);
    if (simple)
        px_wire_ready(out, txn_status(c));
}

static void answer_locks(struct px_client *c, const struct px_lockcall *call,
                         const int16_t *formats, bool simple)
{
    struct evbuffer *out = px_path_client_out(c);
    if (simple)
        px_lockcall_write_row_description(out, call, NULL);
    uint64_t rows = 0;
    if (write_locks_rows(c, out, call, formats, &rows) < 0) {
        struct px_lockcall_error err;
        set_error(&err, "53200", NULL, "out of memory");
        answer_error(c, &err, simple);
        return;
    }
    px_lockcall_write_complete(out, rows);
    if (simple)
        px_wire_ready(out, txn_status(c));
}

/* The error of a lockmgr status other than OK and WAITING (a deadlock's DETAIL is passed
 * to answer_error_detail apart: it is longer than err->detail). */
static void status_error(struct px_lockcall_error *err, enum lockmgr_status st,
                         const struct px_lockreq *req, uint64_t waited_ms)
{
    switch (st) {
    case LOCKMGR_TIMEOUT:
        set_error(err, "55P03", NULL,
                  "could not obtain %s lock on \"%.*s\": lock timeout after %" PRIu64 " ms",
                  lockmgr_mode_name(req->mode), (int)(req->keylen > 200 ? 200 : req->keylen),
                  req->key, waited_ms);
        return;
    case LOCKMGR_DEADLOCK: set_error(err, "40P01", NULL, "deadlock detected"); return;
    case LOCKMGR_LIMIT:
        set_error(err, "53200", NULL, "pgwarden's lock table is full (max_locks = %d)",
                  px.cfg->max_locks);
        snprintf(err->hint, sizeof(err->hint), "Raise max_locks in the [locks] section.");
        return;
    case LOCKMGR_TOKENS_EXHAUSTED:
        set_error(err, "54000", NULL,
                  "the fencing tokens of this pgwarden run are used up: restart pgwarden");
        return;
    case LOCKMGR_CANCELED:
        set_error(err, "57014", NULL, "canceling statement due to user request");
        return;
    case LOCKMGR_NOT_HELD: /* backend = postgresql: the lock connection was lost */
        set_error(err, "55000", NULL,
                  "pgwarden lost the global lock on \"%.*s\": its lock connection to "
                  "PostgreSQL was lost",
                  (int)(req->keylen > 200 ? 200 : req->keylen), req->key);
        return;
    default: set_error(err, "53200", NULL, "out of memory"); return;
    }
}

/* Describes a deadlock cycle for the error's DETAIL: the first edges, each naming the
 * waiter and the blocker (client id and application_name), the key and the modes. */
static void describe_cycle(const struct lockmgr_cycle *cy, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    if (!cy)
        return;
    for (size_t i = 0; i < cy->described && used + 1 < cap; i++) {
        const struct lockmgr_cycle_edge *e = &cy->edges[i];
        struct px_client *w = px_locks_client(e->waiter_id), *b = px_locks_client(e->blocker_id);
        int n = snprintf(
            buf + used, cap - used,
            "%sclient %" PRIu64 " (application_name \"%.32s\") waits for %s on "
            "\"%.*s\"; blocked by client %" PRIu64 " (application_name \"%.32s\"), which %s %s.",
            i ? "\n" : "", e->waiter_id, w && w->application_name ? w->application_name : "",
            lockmgr_mode_name(e->wanted), (int)(e->keylen > 64 ? 64 : e->keylen),
            (const char *)e->key, e->blocker_id,
            b && b->application_name ? b->application_name : "",
            e->soft ? "queued earlier for" : "holds", lockmgr_mode_name(e->blocker_mode));
        if (n < 0)
            break;
        used += (size_t)n < cap - used ? (size_t)n : cap - used - 1;
    }
    if (cy->n > cy->described && used + 1 < cap)
        snprintf(buf + used, cap - used, "\n... and %zu more", cy->n - cy->described);
}

/* Parks c until its wait ends; what the answer needs of the call, and the formats, are
 * kept to answer then (wait_call). */
static void start_wait(struct px_client *c, const struct px_lockcall *call, const int16_t *formats,
                       const struct px_lockreq *req, bool simple)
{
    struct px_client_locks *cl = c->locks;
    cl->wait_fn = call->fn;
    cl->wait_from_clause = call->from_clause;
    memcpy(cl->wait_column, call->column, sizeof(cl->wait_column));
    if (formats)
        memcpy(cl->formats, formats, sizeof(cl->formats));
    else
        memset(cl->formats, 0, sizeof(cl->formats));
    cl->req = *req;
    cl->wait_simple = simple;
    cl->wait_since_us = now_us();
    c->lock_waiting = true;
    px_lockprobe_wait_begin(c); /* hybrid deadlocks: probed if the wait grows long */
    px_debug("locks", 'C', c->id, "waits for %s on \"%.*s\"", lockmgr_mode_name(req->mode),
             (int)(req->keylen > 64 ? 64 : req->keylen), req->key);
}

/* The call a wait answers, as start_wait kept it: only the fields the replies read (the
 * function, FROM form and column name of px_lockcall_write_row_description / _value). */
static void wait_call(const struct px_client_locks *cl, struct px_lockcall *call)
{
    memset(call, 0, sizeof(*call));
    call->fn = cl->wait_fn;
    call->from_clause = cl->wait_from_clause;
    memcpy(call->column, cl->wait_column, sizeof(call->column));
}

/* Runs the call with its argument values; writes the answer unless c now waits.  False
 * when out of memory. */
static bool run_call(struct px_client *c, const struct px_lockcall *call,
                     const struct px_lockcall_values *v, bool simple)
{
    struct px_lockcall_error err;
    struct px_lockreq req;
    const int16_t *formats = simple ? NULL : v->formats;
    if (px_lockcall_request(call, v, &req, &err) < 0) {
        answer_error(c, &err, simple);
        return true;
    }
    if (req.null_result) { /* STRICT: a NULL argument, nothing done */
        answer_value(c, call, formats, simple, true, 0);
        return true;
    }
    if (req.fn == PX_LOCKFN_LOCK || req.fn == PX_LOCKFN_TRY_LOCK || req.fn == PX_LOCKFN_UNLOCK ||
        req.fn == PX_LOCKFN_UNLOCK_ALL)
        px_retry_note_session_lock(c);
    struct px_client_locks *cl = state_of(c);
    if (!cl || !owner_of(cl))
        return false;
    uint64_t now = now_us(), token = 0;
    enum lockmgr_status st;
    if (px_lockspace_active() && global_lost(c, call, formats, &req, simple))
        return true;
    switch (req.fn) {
    case PX_LOCKFN_LOCK:
    case PX_LOCKFN_XACT_LOCK:
    case PX_LOCKFN_TRY_LOCK:
    case PX_LOCKFN_TRY_XACT_LOCK: {
        bool try = req.fn == PX_LOCKFN_TRY_LOCK || req.fn == PX_LOCKFN_TRY_XACT_LOCK;
        if (req.scope == LOCKMGR_XACT && txn_status(c) != 'T') {
            set_error(&err, "25P01", NULL, "%s can only be used in transaction blocks",
                      px_lockfn_name(req.fn));
            answer_error(c, &err, simple);
            return true;
        }
        uint64_t deadline = 0;
        if (px_lockspace_active())
            lockmgr_hold_mark(L.lm, cl->owner, req.key, req.keylen, &cl->before);
        if (try) {
            st = lockmgr_try_acquire(L.lm, cl->owner, req.key, req.keylen, req.mode, req.scope, now,
                                     &token);
        } else {
            uint32_t ms = req.has_timeout ? req.timeout_ms : (uint32_t)px.cfg->lock_timeout_ms;
            deadline = ms ? now + (uint64_t)ms * 1000u : 0;
            st = lockmgr_acquire(L.lm, cl->owner, req.key, req.keylen, req.mode, req.scope,
                                 deadline, now, &token);
        }
        if (st == LOCKMGR_OK && px_lockspace_active() &&
            !px_lockspace_confirm(c->id, req.key, req.keylen, req.mode, token, try ? 0 : deadline,
                                  try, &token)) {
            /* granted here, not yet in PostgreSQL: wait for the global part */
            if (req.scope == LOCKMGR_XACT)
                cl->has_xact = true;
            start_wait(c, call, formats, &req, simple);
            cl->wait_try = try;
            arm_timer();
            return true;
        }
        if (st == LOCKMGR_OK || st == LOCKMGR_WAITING) {
            if (req.scope == LOCKMGR_XACT)
                cl->has_xact = true;
        }
        if (st == LOCKMGR_OK) {
            answer_value(c, call, formats, simple, false, (int64_t)token);
        } else if (st == LOCKMGR_WOULD_BLOCK) {
            answer_value(c, call, formats, simple, true, 0);
        } else if (st == LOCKMGR_WAITING) {
            start_wait(c, call, formats, &req, simple);
        } else {
            char detail[DETAIL_MAX];
            detail[0] = '\0';
            if (st == LOCKMGR_DEADLOCK)
                describe_cycle(lockmgr_last_cycle_head(L.lm, CYCLE_EDGES_SHOWN), detail,
                               sizeof(detail));
            status_error(&err, st, &req, 0);
            answer_error_detail(c, &err, simple, detail);
        }
        arm_timer();
        return true;
    }
    case PX_LOCKFN_UNLOCK:
        px_lockspace_releasing(L.lm, cl->owner);
        st = lockmgr_release(L.lm, cl->owner, req.key, req.keylen, LOCKMGR_SESSION, now);
        answer_value(c, call, formats, simple, false, st == LOCKMGR_OK);
        arm_timer();
        return true;
    case PX_LOCKFN_UNLOCK_ALL: {
        px_lockspace_releasing(L.lm, cl->owner);
        size_t n = lockmgr_release_scope(L.lm, cl->owner, LOCKMGR_SESSION, now);
        answer_value(c, call, formats, simple, false, (int64_t)n);
        arm_timer();
        return true;
    }
    case PX_LOCKFN_LOCKS: answer_locks(c, call, formats, simple); return true;
    }
    return true;
}

/* ---- wait outcomes --------------------------------------------------------------------- */

static void on_wait_done(struct lockmgr_owner *o, void *udata, const struct lockmgr_result *res)
{
    (void)o;
    struct px_client *c = udata;
    struct px_client_locks *cl = c->locks;
    if (!cl || !c->lock_waiting || cl->have_result)
        return;
    cl->result.status = res->status;
    cl->result.token = res->token;
    free(cl->result.detail);
    cl->result.detail = NULL;
    if (res->status == LOCKMGR_DEADLOCK && cl->victim_detail) {
        cl->result.detail = cl->victim_detail; /* px_locks_deadlock_victim */
        cl->victim_detail = NULL;
    } else if (res->status == LOCKMGR_DEADLOCK) {
        char detail[DETAIL_MAX];
        describe_cycle(res->cycle, detail, sizeof(detail));
        cl->result.detail = strdup(detail);
    }
    cl->have_result = true;
    px_list_append(&L.pending, &cl->pending_link);
    event_active(L.deliver, EV_TIMEOUT, 0);
}

static void deliver_one(struct px_client *c)
{
    struct px_client_locks *cl = c->locks;
    px_list_remove(&cl->pending_link);
    px_list_init(&cl->pending_link);
    cl->have_result = false;
    if (cl->result.status == LOCKMGR_OK && px_lockspace_active() && !cl->result.global) {
        /* granted here after a wait: now the global part (the wait goes on) */
        uint32_t ms = cl->req.has_timeout ? cl->req.timeout_ms : (uint32_t)px.cfg->lock_timeout_ms;
        uint64_t deadline = ms ? cl->wait_since_us + (uint64_t)ms * 1000u : 0;
        if (deadline && deadline <= now_us())
            deadline = now_us(); /* one attempt, then the timeout */
        if (!px_lockspace_confirm(c->id, cl->req.key, cl->req.keylen, cl->req.mode,
                                  cl->result.token, deadline, false, &cl->result.token))
            return;
    }
    cl->result.global = false;
    c->lock_waiting = false;
    px_lockprobe_wait_end(c);
    px_stats_lock_wait(cl->result.status, now_us() - cl->wait_since_us);
    const int16_t *formats = cl->wait_simple ? NULL : cl->formats;
    if (cl->result.status == LOCKMGR_OK) {
        struct px_lockcall call;
        wait_call(cl, &call);
        answer_value(c, &call, formats, cl->wait_simple, false, (int64_t)cl->result.token);
    } else if (cl->result.status == LOCKMGR_WOULD_BLOCK) { /* try: taken elsewhere */
        struct px_lockcall call;
        wait_call(cl, &call);
        answer_value(c, &call, formats, cl->wait_simple, true, 0);
    } else {
        struct px_lockcall_error err;
        status_error(&err, cl->result.status, &cl->req, (now_us() - cl->wait_since_us) / 1000u);
        if (cl->result.status == LOCKMGR_DEADLOCK)
            px_info("locks", 'C', c->id, "deadlock victim waiting for \"%.*s\"",
                    (int)(cl->req.keylen > 64 ? 64 : cl->req.keylen), cl->req.key);
        answer_error_detail(c, &err, cl->wait_simple, cl->result.detail);
    }
    free(cl->result.detail);
    cl->result.detail = NULL;
    cl->wait_try = false;
    px_path_client_input(c); /* what it sent while it waited */
}

/* ---- backend = postgresql: the global part of a grant (lockspace.h) ------------------- */

/* Gives back the local grant of c's request (its global part failed or was cancelled):
 * the client's hold of the key goes back to what it was before the request, so a failed
 * upgrade keeps the mode held before (still held in PostgreSQL) instead of losing it. */
static void release_provisional(struct px_client_locks *cl)
{
    px_lockspace_releasing(L.lm, cl->owner);
    if (lockmgr_hold_restore(L.lm, cl->owner, cl->req.key, cl->req.keylen, &cl->before, now_us()) !=
        LOCKMGR_OK)
        px_debug("locks", 'C', cl->client->id, "provisional grant already gone");
    arm_timer();
}

void px_locks_global_done(uint64_t client_id, enum px_lockspace_outcome outcome, uint64_t token,
                          const char *detail)
{
    struct px_client *c = px_locks_client(client_id);
    struct px_client_locks *cl = c ? c->locks : NULL;
    if (!cl || !c->lock_waiting || cl->have_result)
        return;
    cl->result.global = true;
    cl->result.token = token;
    switch (outcome) {
    case PX_LOCKSPACE_GRANTED: cl->result.status = LOCKMGR_OK; break;
    case PX_LOCKSPACE_TIMEOUT: cl->result.status = LOCKMGR_TIMEOUT; break;
    case PX_LOCKSPACE_BUSY: cl->result.status = LOCKMGR_WOULD_BLOCK; break;
    case PX_LOCKSPACE_LOST: cl->result.status = LOCKMGR_NOT_HELD; break;
    case PX_LOCKSPACE_DEADLOCK: cl->result.status = LOCKMGR_DEADLOCK; break;
    }
    free(cl->result.detail);
    cl->result.detail = detail ? strdup(detail) : NULL;
    if (outcome != PX_LOCKSPACE_GRANTED)
        release_provisional(cl);
    cl->have_result = true;
    px_list_append(&L.pending, &cl->pending_link);
    event_active(L.deliver, EV_TIMEOUT, 0);
}

void px_locks_global_victim(uint64_t client_id, const char *detail)
{
    struct px_client *c = px_locks_client(client_id);
    if (c)
        (void)px_locks_deadlock_victim(c, detail);
}

void px_locks_global_lost(uint64_t client_id, const char *key, size_t keylen)
{
    struct px_client *c = px_locks_client(client_id);
    struct px_client_locks *cl = c ? c->locks : NULL;
    if (!cl || !cl->owner)
        return;
    px_warning("locks", 'C', client_id, "lost the global lock on \"%.*s\"",
               (int)(keylen > 64 ? 64 : keylen), key);
    cl->lost = true; /* reported at its next lock call or statement in a block */
    px_lockspace_releasing(L.lm, cl->owner);
    enum lockmgr_status a =
        lockmgr_release(L.lm, cl->owner, key, keylen, LOCKMGR_SESSION, now_us());
    enum lockmgr_status b = lockmgr_release(L.lm, cl->owner, key, keylen, LOCKMGR_XACT, now_us());
    (void)a, (void)b;
    arm_timer();
}

/* The report of a lock of c lost with its lock connection (lockspace.h): its key, and
 * whether there is one.  Consumed (once) unless the answer may never reach the client: a
 * replay's answers are checked against what the client saw and dropped when they differ
 * (retry.h), and the report then waits for the client's next statement. */
static bool lost_report(struct px_client *c, char *key, size_t cap, bool consume)
{
    bool keep = !consume || px_retry_replaying(c);
    bool found =
        keep ? px_lockspace_peek_lost(c->id, key, cap) : px_lockspace_take_lost(c->id, key, cap);
    if (c->locks && (!found || !keep))
        c->locks->lost = false;
    return found;
}

/* The 55000 of a lost lock on key. */
static void lost_error(struct px_lockcall_error *err, const char *key, const char *detail)
{
    set_error(err, "55000", detail,
              "pgwarden lost the global lock on \"%.200s\": its lock connection to PostgreSQL "
              "was lost, the lock may be held by another client now",
              key);
    snprintf(err->hint, sizeof(err->hint),
             "Writes protected by the lock's fencing token are refused once a newer token "
             "was granted.");
}

/* A lock of c was lost with its lock connection and not reported yet: this lock call
 * fails with 55000, once.  True when it answered. */
static bool global_lost(struct px_client *c, const struct px_lockcall *call, const int16_t *formats,
                        const struct px_lockreq *req, bool simple)
{
    char key[LOCKMGR_KEY_MAX + 1];
    (void)call, (void)formats, (void)req;
    if (!lost_report(c, key, sizeof(key), true))
        return false;
    struct px_lockcall_error err;
    lost_error(&err, key, NULL);
    answer_error(c, &err, simple);
    return true;
}

static void deliver_all(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    struct px_list *first;
    while ((first = px_list_first(&L.pending)) != NULL) {
        struct px_client_locks *cl = PX_CONTAINER_OF(first, struct px_client_locks, pending_link);
        struct px_client *c = cl->client;
        if (c->state == PX_CL_FAILING || c->state == PX_CL_CLOSING) {
            px_list_remove(first);
            px_list_init(first);
            cl->have_result = false;
            continue;
        }
        deliver_one(c);
    }
    arm_timer();
}

bool px_locks_cancel(struct px_client *c)
{
    struct px_client_locks *cl = c->locks;
    if (!c->lock_waiting || !cl || cl->have_result)
        return false;
    if (px_lockspace_cancel(c->id)) /* granted here, waiting in PostgreSQL */
        release_provisional(cl);
    else
        lockmgr_cancel_wait(L.lm, cl->owner, now_us());
    cl->result.status = LOCKMGR_CANCELED;
    cl->have_result = true;
    px_list_append(&L.pending, &cl->pending_link);
    event_active(L.deliver, EV_TIMEOUT, 0);
    px_info("locks", 'C', c->id, "lock wait canceled by the client");
    return true;
}

bool px_locks_deadlock_victim(struct px_client *c, const char *detail)
{
    struct px_client_locks *cl = c->locks;
    if (!c->lock_waiting || !cl || cl->have_result)
        return false;
    free(cl->victim_detail);
    cl->victim_detail = strdup(detail ? detail : "");
    if (lockmgr_wait_victim(L.lm, cl->owner, now_us()) != LOCKMGR_OK) {
        free(cl->victim_detail);
        cl->victim_detail = NULL;
        return false;
    }
    arm_timer();
    return true; /* on_wait_done queued the 40P01 */
}

/* ---- messages -------------------------------------------------------------------------- */

/* The text and parameter types of a Parse's content. */
static bool parse_content(const uint8_t *content, uint32_t clen, const char **sql, size_t *sqllen,
                          const uint8_t **types, uint16_t *ntypes)
{
    const uint8_t *nul = memchr(content, '\0', clen);
    if (!nul || (size_t)(nul - content) + 3 > clen)
        return false;
    *sql = (const char *)content;
    *sqllen = (size_t)(nul - content);
    *ntypes = px_get_u16(nul + 1);
    *types = nul + 3;
    return (size_t)(nul - content) + 3 + 4u * *ntypes <= clen;
}

/* DEALLOCATE of a lock-call statement (which no server has): answered here.  DEALLOCATE
 * ALL drops them and goes on to the server for its own. */
static enum px_locks_verdict on_deallocate(struct px_client *c, const uint8_t *body, size_t n,
                                           bool may_answer)
{
    struct px_client_locks *cl = c->locks;
    struct px_sql_info info;
    px_sql_classify((const char *)body, n, &info);
    if (info.multi)
        return PX_LOCKS_NOT_MINE;
    if (info.kind == PX_SQL_DEALLOCATE_ALL) {
        while (cl->stmts)
            drop_stmt(cl, cl->stmts->name);
        return PX_LOCKS_NOT_MINE;
    }
    if (info.kind != PX_SQL_DEALLOCATE || !find_stmt(cl, info.name))
        return PX_LOCKS_NOT_MINE;
    if (!may_answer)
        return PX_LOCKS_HOLD;
    drop_stmt(cl, info.name);
    struct evbuffer *out = px_path_client_out(c);
    px_wire_msg(out, 'C', "DEALLOCATE", sizeof("DEALLOCATE"));
    px_wire_ready(out, txn_status(c));
    return PX_LOCKS_ANSWERED;
}

/* A simple query: SELECT of a lock function, or not mine. */
static enum px_locks_verdict on_query(struct px_client *c, const uint8_t *body, uint32_t len,
                                      bool may_answer)
{
    size_t n = len > 0 && body[len - 1] == '\0' ? len - 1 : len;
    if (!px_lockcall_maybe((const char *)body, n))
        return c->locks && c->locks->stmts ? on_deallocate(c, body, n, may_answer)
                                           : PX_LOCKS_NOT_MINE;
    struct px_lockcall *call = malloc(sizeof(*call));
    if (!call)
        return PX_LOCKS_CLOSE;
    enum px_locks_verdict v = PX_LOCKS_ANSWERED;
    if (!px_lockcall_parse((const char *)body, n, call)) {
        v = PX_LOCKS_NOT_MINE;
    } else if (!may_answer) {
        v = PX_LOCKS_HOLD;
    } else if (txn_status(c) == 'E') {
        struct px_lockcall_error err;
        set_error(&err, "25P02", NULL,
                  "current transaction is aborted, commands ignored until end of transaction "
                  "block");
        answer_error(c, &err, true);
    } else if (call->error.sqlstate[0]) {
        answer_error(c, &call->error, true);
    } else {
        struct px_lockcall_values vals;
        struct px_lockcall_error err;
        if (px_lockcall_bind(call, NULL, NULL, NULL, &vals, &err) < 0)
            answer_error(c, &err, true);
        else if (!run_call(c, call, &vals, true))
            v = PX_LOCKS_CLOSE;
    }
    free(call);
    if (v == PX_LOCKS_ANSWERED && c->locks) /* a simple query drops the unnamed statement */
        drop_stmt(c->locks, "");
    return v;
}

static enum px_locks_verdict on_parse(struct px_client *c, const uint8_t *body, uint32_t len,
                                      bool may_answer)
{
    const char *name, *sql;
    const uint8_t *content, *types;
    uint32_t clen;
    size_t sqllen;
    uint16_t ntypes;
    if (px_parse_split(body, len, &name, &content, &clen) < 0 ||
        !parse_content(content, clen, &sql, &sqllen, &types, &ntypes))
        return PX_LOCKS_NOT_MINE; /* malformed: PostgreSQL says so */
    struct px_client_locks *cl = c->locks;
    if (!px_lockcall_maybe(sql, sqllen)) {
        if (!*name && cl)
            drop_stmt(cl, ""); /* an ordinary unnamed statement replaces a lock call */
        return PX_LOCKS_NOT_MINE;
    }
    struct px_lockstmt *st = calloc(1, sizeof(*st));
    if (!st)
        return PX_LOCKS_CLOSE;
    if (!px_lockcall_parse_prepared(sql, sqllen, types, ntypes, &st->call)) {
        free(st);
        if (!*name && cl)
            drop_stmt(cl, "");
        return PX_LOCKS_NOT_MINE;
    }
    if (!may_answer) {
        free(st);
        return PX_LOCKS_HOLD;
    }
    if (cl && cl->skip) {
        free(st);
        return PX_LOCKS_ANSWERED;
    }
    struct px_lockcall_error err;
    if (txn_status(c) == 'E') {
        set_error(&err, "25P02", NULL,
                  "current transaction is aborted, commands ignored until end of transaction "
                  "block");
        free(st);
        answer_error(c, &err, false);
        return PX_LOCKS_ANSWERED;
    }
    if (st->call.error.sqlstate[0]) {
        err = st->call.error;
        free(st);
        answer_error(c, &err, false);
        return PX_LOCKS_ANSWERED;
    }
    cl = state_of(c);
    if (!cl) {
        free(st);
        return PX_LOCKS_CLOSE;
    }
    if (*name && (find_stmt(cl, name) || px_stmt_map_get(&c->stmts, name))) {
        set_error(&err, "42P05", NULL, "prepared statement \"%s\" already exists", name);
        free(st);
        answer_error(c, &err, false);
        return PX_LOCKS_ANSWERED;
    }
    drop_stmt(cl, name); /* the unnamed one */
    snprintf(st->name, sizeof(st->name), "%s", name);
    st->next = cl->stmts;
    cl->stmts = st;
    px_wire_msg(px_path_client_out(c), '1', NULL, 0);
    return PX_LOCKS_ANSWERED;
}

static enum px_locks_verdict on_bind(struct px_client *c, const uint8_t *body, uint32_t len,
                                     bool may_answer)
{
    const char *portal, *name;
    const uint8_t *rest;
    uint32_t rlen;
    if (px_bind_split(body, len, &portal, &name, &rest, &rlen) < 0)
        return PX_LOCKS_NOT_MINE;
    struct px_client_locks *cl = c->locks;
    struct px_lockstmt *st = find_stmt(cl, name);
    if (!st) {
        if (cl)
            drop_portal(cl, portal); /* an ordinary portal of that name replaces ours */
        return PX_LOCKS_NOT_MINE;
    }
    if (!may_answer)
        return PX_LOCKS_HOLD;
    if (cl->skip)
        return PX_LOCKS_ANSWERED;
    struct px_lockcall_error err;
    if (txn_status(c) == 'E') {
        set_error(&err, "25P02", NULL,
                  "current transaction is aborted, commands ignored until end of transaction "
                  "block");
        answer_error(c, &err, false);
        return PX_LOCKS_ANSWERED;
    }
    struct px_lockportal *p = calloc(1, sizeof(*p));
    if (!p)
        return PX_LOCKS_CLOSE;
    struct px_wire_bind bind;
    const char *why = px_wire_bind_parse(rest, rlen, &bind);
    if (why) {
        set_error(&err, "08P01", NULL, "%s", why);
        free(p);
        answer_error(c, &err, false);
        return PX_LOCKS_ANSWERED;
    }
    if (px_lockcall_bind(&st->call, &bind, name, portal, &p->values, &err) < 0) {
        free(p);
        answer_error(c, &err, false);
        return PX_LOCKS_ANSWERED;
    }
    memcpy(&p->call, &st->call, sizeof(p->call));
    drop_portal(cl, portal);
    snprintf(p->name, sizeof(p->name), "%s", portal);
    p->next = cl->portals;
    cl->portals = p;
    px_wire_msg(px_path_client_out(c), '2', NULL, 0);
    return PX_LOCKS_ANSWERED;
}

static enum px_locks_verdict on_describe(struct px_client *c, const uint8_t *body, uint32_t len,
                                         bool may_answer)
{
    char kind;
    const char *name;
    if (px_target_split(body, len, &kind, &name) < 0)
        return PX_LOCKS_NOT_MINE;
    struct px_client_locks *cl = c->locks;
    struct px_lockstmt *st = kind == 'S' ? find_stmt(cl, name) : NULL;
    struct px_lockportal *p = kind == 'P' ? find_portal(cl, name) : NULL;
    if (!st && !p)
        return PX_LOCKS_NOT_MINE;
    if (!may_answer)
        return PX_LOCKS_HOLD;
    if (cl->skip)
        return PX_LOCKS_ANSWERED;
    struct evbuffer *out = px_path_client_out(c);
    if (st) {
        px_lockcall_write_param_description(out, &st->call);
        px_lockcall_write_row_description(out, &st->call, NULL);
    } else {
        px_lockcall_write_row_description(out, &p->call, p->values.formats);
    }
    return PX_LOCKS_ANSWERED;
}

/* An Execute of a pgwarden_locks() portal: its rows from where the last Execute stopped,
 * at most max_rows of them (0: all), then PortalSuspended or CommandComplete with the
 * count of this Execute, as PostgreSQL answers a portal fetched in parts. */
static bool execute_locks(struct px_client *c, struct px_lockportal *p, int32_t max_rows)
{
    struct evbuffer *out = px_path_client_out(c);
    if (!p->ran) {
        uint64_t n;
        p->rows = evbuffer_new();
        if (!p->rows || write_locks_rows(c, p->rows, &p->call, p->values.formats, &n) < 0) {
            struct px_lockcall_error err;
            set_error(&err, "53200", NULL, "out of memory");
            answer_error(c, &err, false);
            return true;
        }
        p->ran = true;
    }
    uint64_t sent = 0;
    while (evbuffer_get_length(p->rows) >= 5 && (max_rows <= 0 || sent < (uint64_t)max_rows)) {
        uint8_t hdr[5];
        evbuffer_copyout(p->rows, hdr, 5);
        size_t n = 1 + (size_t)px_get_u32(hdr + 1);
        if (evbuffer_remove_buffer(p->rows, out, n) != (int)n)
            return false;
        sent++;
    }
    if (evbuffer_get_length(p->rows) > 0)
        px_wire_msg(out, 's', NULL, 0);
    else
        px_lockcall_write_complete(out, sent);
    return true;
}

static enum px_locks_verdict on_execute(struct px_client *c, const uint8_t *body, uint32_t len,
                                        bool may_answer)
{
    const uint8_t *nul = memchr(body, '\0', len);
    if (!nul)
        return PX_LOCKS_NOT_MINE;
    struct px_client_locks *cl = c->locks;
    struct px_lockportal *p = find_portal(cl, (const char *)body);
    if (!p)
        return PX_LOCKS_NOT_MINE;
    if (!may_answer)
        return PX_LOCKS_HOLD;
    if (cl->skip)
        return PX_LOCKS_ANSWERED;
    if (txn_status(c) == 'E') {
        struct px_lockcall_error err;
        set_error(&err, "25P02", NULL,
                  "current transaction is aborted, commands ignored until end of transaction "
                  "block");
        answer_error(c, &err, false);
        return PX_LOCKS_ANSWERED;
    }
    int32_t max_rows = 0;
    if ((size_t)(nul - body) + 1 + 4 <= len)
        max_rows = (int32_t)px_get_u32(nul + 1);
    if (p->call.fn == PX_LOCKFN_LOCKS)
        return execute_locks(c, p, max_rows) ? PX_LOCKS_ANSWERED : PX_LOCKS_CLOSE;
    if (p->ran) { /* run already: nothing more (PostgreSQL's "SELECT 0") */
        px_lockcall_write_complete(px_path_client_out(c), 0);
        return PX_LOCKS_ANSWERED;
    }
    p->ran = true;
    return run_call(c, &p->call, &p->values, false) ? PX_LOCKS_ANSWERED : PX_LOCKS_CLOSE;
}

static enum px_locks_verdict on_close(struct px_client *c, const uint8_t *body, uint32_t len,
                                      bool may_answer)
{
    char kind;
    const char *name;
    if (px_target_split(body, len, &kind, &name) < 0)
        return PX_LOCKS_NOT_MINE;
    struct px_client_locks *cl = c->locks;
    bool mine = kind == 'S' ? find_stmt(cl, name) != NULL : find_portal(cl, name) != NULL;
    if (!mine)
        return PX_LOCKS_NOT_MINE;
    if (!may_answer)
        return PX_LOCKS_HOLD;
    if (cl->skip)
        return PX_LOCKS_ANSWERED;
    if (kind == 'S')
        drop_stmt(cl, name);
    else
        drop_portal(cl, name);
    px_wire_msg(px_path_client_out(c), '3', NULL, 0);
    return PX_LOCKS_ANSWERED;
}

/* A ROLLBACK (of the whole transaction: not TO SAVEPOINT, not PREPARED): a simple Query's
 * text, or a Parse's. */
static bool is_rollback(char type, const uint8_t *body, uint32_t len)
{
    const char *sql = (const char *)body;
    size_t n = len;
    if (type == 'P') {
        const char *name;
        const uint8_t *content;
        uint32_t clen;
        if (px_parse_split(body, len, &name, &content, &clen) < 0)
            return false;
        sql = (const char *)content;
        n = clen;
    }
    struct px_sql_info info;
    px_sql_classify(sql, strnlen(sql, n), &info);
    return info.kind == PX_SQL_ROLLBACK;
}

/*
 * c has a lost lock not reported yet (cl->lost).  Inside a transaction block its next
 * statement of any kind does not run: c gets the lock's 55000 instead, as for an error of
 * a lock call, and its block fails on both sides (answer_error), so that its COMMIT rolls
 * back; in the extended protocol the rest of the group is skipped up to Sync.  Outside a
 * block the report waits for c's next lock call (global_lost).  A ROLLBACK runs (it writes
 * nothing) and leaves the report for later.  The transaction state must be the one the
 * statement would run in: while a report is pending, a message waits until the server has
 * answered what c sent before it (a pipelined BEGIN), and a held BEGIN that was to go in
 * front of a Query goes alone first (path.c).
 */
static enum px_locks_verdict lost_statement(struct px_client *c, char type, const uint8_t *body,
                                            uint32_t len, bool may_answer)
{
    struct px_client_locks *cl = c->locks;
    char key[LOCKMGR_KEY_MAX + 1];
    switch (type) {
    case 'Q':
    case 'P':
    case 'B':
    case 'D':
    case 'E':
    case 'C': break;
    default: return PX_LOCKS_NOT_MINE;
    }
    if (cl->skip || cl->lost_pass || !lost_report(c, key, sizeof(key), false))
        return PX_LOCKS_NOT_MINE;
    if ((type == 'Q' || type == 'P') && is_rollback(type, body, len)) {
        cl->lost_pass = type == 'P'; /* its Bind and Execute too, up to Sync */
        return PX_LOCKS_NOT_MINE;
    }
    if (c->server && c->begin_merge)
        return PX_LOCKS_HOLD; /* in a block, not yet begun on the server: path.c sends it */
    if (!may_answer)
        return PX_LOCKS_HOLD;
    if (txn_status(c) != 'T')
        return PX_LOCKS_NOT_MINE;
    lost_report(c, key, sizeof(key), true);
    px_info("locks", 'C', c->id,
            "lost global lock on \"%.64s\" reported at a statement in a "
            "transaction block: not run, the block fails",
            key);
    struct px_lockcall_error err;
    lost_error(&err, key,
               "The statement was not run; the transaction is failed and its COMMIT rolls back.");
    answer_error(c, &err, type == 'Q');
    if (type == 'Q')
        drop_stmt(cl, ""); /* a simple query drops the unnamed statement */
    return PX_LOCKS_ANSWERED;
}

static enum px_locks_verdict message(struct px_client *c, char type, const uint8_t *body,
                                     uint32_t len, bool may_answer);

enum px_locks_verdict px_locks_message(struct px_client *c, char type, const uint8_t *body,
                                       uint32_t len, bool may_answer)
{
    enum px_locks_verdict v = PX_LOCKS_NOT_MINE;
    if (c->locks && c->locks->lost)
        v = lost_statement(c, type, body, len, may_answer);
    if (v == PX_LOCKS_NOT_MINE)
        v = message(c, type, body, len, may_answer);
    if (v != PX_LOCKS_NOT_MINE)
        px_debug("locks", 'C', c->id, "'%c' %s%s", type,
                 v == PX_LOCKS_ANSWERED ? "answered"
                 : v == PX_LOCKS_HOLD   ? "held"
                                        : "close",
                 c->locks && c->locks->skip ? " (skipping)" : "");
    return v;
}

static enum px_locks_verdict message(struct px_client *c, char type, const uint8_t *body,
                                     uint32_t len, bool may_answer)
{
    switch (type) {
    case 'Q': return on_query(c, body, len, may_answer);
    case 'P': return on_parse(c, body, len, may_answer);
    case 'B': return c->locks ? on_bind(c, body, len, may_answer) : PX_LOCKS_NOT_MINE;
    case 'D': return c->locks ? on_describe(c, body, len, may_answer) : PX_LOCKS_NOT_MINE;
    case 'E': return c->locks ? on_execute(c, body, len, may_answer) : PX_LOCKS_NOT_MINE;
    case 'C': return c->locks ? on_close(c, body, len, may_answer) : PX_LOCKS_NOT_MINE;
    default: return PX_LOCKS_NOT_MINE;
    }
}

void px_locks_sync(struct px_client *c)
{
    if (c->locks)
        c->locks->skip = c->locks->lost_pass = false;
    if (!c->server) {
        char status = px_txn_unlinked_status(c);
        if (status == 'I' && c->locks)
            drop_portals(c->locks); /* the group's implicit transaction ended */
        px_wire_ready(px_path_client_out(c), status);
    }
}

void px_locks_big_message(struct px_client *c, char type, const uint8_t *head, uint32_t visible)
{
    if (type == 'B' && c->locks && memchr(head, '\0', visible))
        drop_portal(c->locks, (const char *)head); /* the portal name comes first */
}

bool px_locks_skipping(const struct px_client *c)
{
    return c->locks && c->locks->skip;
}

/* ---- transaction end, leaving, admin ---------------------------------------------------- */

void px_locks_txn_end(struct px_client *c)
{
    struct px_client_locks *cl = c->locks;
    if (!cl)
        return;
    drop_portals(cl);
    if (!cl->has_xact || !cl->owner)
        return;
    cl->has_xact = false;
    px_lockspace_releasing(L.lm, cl->owner);
    size_t n = lockmgr_release_scope(L.lm, cl->owner, LOCKMGR_XACT, now_us());
    if (n)
        px_debug("locks", 'C', c->id, "transaction ended: %zu transaction locks released", n);
    arm_timer();
}

bool px_locks_note_query(struct px_client *c, const struct px_sql_info *info, uint32_t ready_due)
{
    struct px_client_locks *cl = c->locks;
    /* only a block with something to end (a COMMIT that fails, 40001 held for a replay,
     * answers an error, not its tag: the locks stay for the replay) */
    if (!cl || !(cl->has_xact || cl->portals) || !(info->ends_commit || info->ends_rollback))
        return false;
    cl->end_at_ready = ready_due;
    return true;
}

void px_locks_complete(struct px_client *c, const char *tag)
{
    /* its COMMIT or ROLLBACK ran, whatever follows it (a new block, even one that fails) */
    if (c->locks->end_at_ready && (!strcmp(tag, "COMMIT") || !strcmp(tag, "ROLLBACK")))
        px_locks_txn_end(c);
}

bool px_locks_ready(struct px_client *c)
{
    struct px_client_locks *cl = c->locks;
    return cl->end_at_ready && --cl->end_at_ready > 0;
}

void px_locks_client_free(struct px_client *c)
{
    struct px_client_locks *cl = c->locks;
    if (!cl)
        return;
    px_lockspace_client_gone(c->id);
    if (cl->owner) {
        index_remove(cl);
        px_lockspace_releasing(L.lm, cl->owner);
        lockmgr_owner_free(L.lm, cl->owner, now_us());
        arm_timer();
    }
    px_list_remove(&cl->pending_link);
    while (cl->stmts)
        drop_stmt(cl, cl->stmts->name);
    while (cl->portals)
        drop_portal(cl, cl->portals->name);
    free(cl->result.detail);
    free(cl->victim_detail);
    free(cl);
    c->locks = NULL;
    c->lock_waiting = false;
    px_lockprobe_wait_end(c);
}

uint64_t px_locks_wait_info(const struct px_client *c, const char **key, size_t *keylen,
                            const char **mode)
{
    const struct px_client_locks *cl = c->locks;
    if (!c->lock_waiting || !cl)
        return 0;
    *key = cl->req.key;
    *keylen = cl->req.keylen;
    *mode = lockmgr_mode_name(cl->req.mode);
    return (now_us() - cl->wait_since_us) / 1000u;
}
