/*
 * introspect_locks.c: the JSON views of pgwarden's locks for the admin port: GET /locks,
 * GET /locks/<key>, and what each client holds and waits for in GET /clients.
 *
 * Interface: px_introspect_locks, px_introspect_lock_key (introspect.h) and the client
 * index used by introspect.c (introspect_locks.h).  User-facing reference:
 * docs/admin-api.md.
 *
 * Everything comes from one lockmgr_snapshot per request, a copy of the lock table, so a
 * view is consistent (totals agree with the rows) however large the table is; it costs
 * O(locks) plus a sort.  The snapshot's udata is the owning struct px_client, borrowed:
 * valid while the handler runs, which is synchronous on the event loop.  Times: the
 * snapshot's since_us and deadline_us are on the lock stage's clock (CLOCK_MONOTONIC in
 * microseconds, path/locks.c), read here the same way.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "admin/introspect.h"
#include "admin/introspect_locks.h"
#include "base/json_util.h"
#include "net/client.h"
#include "conn.h"
#include "lockmgr/lockmgr.h"
#include "lockspace/lockspace.h"
#include "path/locks.h"

/* The lock stage's clock (path/locks.c now_us()). */
static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Milliseconds from since_us to now_us (0 if the clock readings cross). */
static json_int_t elapsed_ms(uint64_t since_us, uint64_t now_us)
{
    return now_us > since_us ? (json_int_t)((now_us - since_us) / 1000u) : 0;
}

/* The client behind a snapshot row: its udata, else the lock stage's index by id. */
static const struct px_client *row_client(void *udata, uint64_t owner_id)
{
    return udata ? (const struct px_client *)udata : px_locks_client(owner_id);
}

/* Sets application_name and address of row client c (null when it is gone). */
static int set_client_fields(json_t *o, const struct px_client *c)
{
    json_t *app = c ? px_json_string(c->application_name ? c->application_name : "") : json_null();
    char buf[PX_CLIENT_ADDR_LEN];
    json_t *addr = c ? px_json_string(px_client_addr(c, buf)) : json_null();
    if (json_object_set_new(o, "application_name", app) < 0 ||
        json_object_set_new(o, "address", addr) < 0)
        return -1;
    return 0;
}

/* backend = postgresql adds "global": "held" (the token is PostgreSQL's) or "waiting"
 * (granted in this instance, not yet in PostgreSQL; the token is not final). */
static json_t *holder_json(const struct lockmgr_snap_key *k, const struct lockmgr_snap_holder *h,
                           uint64_t now)
{
    uint64_t token;
    enum px_lockspace_hold g =
        px_lockspace_hold_state(h->owner_id, k->key, k->keylen, h->token, &token);
    json_t *o = json_pack("{s:I, s:s, s:s, s:I, s:I}", "client_id", (json_int_t)h->owner_id, "mode",
                          lockmgr_mode_name(h->mode), "scope", lockmgr_scope_name(h->scope),
                          "token", (json_int_t)token, "held_ms", elapsed_ms(h->since_us, now));
    if (o && g != PX_LOCKSPACE_HOLD_LOCAL &&
        json_object_set_new(o, "global",
                            json_string(g == PX_LOCKSPACE_HOLD_HELD ? "held" : "waiting")) < 0) {
        json_decref(o);
        return NULL;
    }
    if (o && set_client_fields(o, row_client(h->udata, h->owner_id)) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *waiter_json(const struct lockmgr_snap_waiter *w, uint64_t now)
{
    json_t *left = json_null();
    if (w->deadline_us)
        left =
            json_integer(w->deadline_us > now ? (json_int_t)((w->deadline_us - now) / 1000u) : 0);
    json_t *o =
        json_pack("{s:I, s:s, s:s, s:b, s:I, s:o*}", "client_id", (json_int_t)w->owner_id, "mode",
                  lockmgr_mode_name(w->mode), "scope", lockmgr_scope_name(w->scope), "upgrade",
                  w->upgrade, "waited_ms", elapsed_ms(w->since_us, now), "timeout_in_ms", left);
    if (o && set_client_fields(o, row_client(w->udata, w->owner_id)) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Holders in grant order: the oldest token first, session before transaction. */
static int holder_cmp(const void *a, const void *b)
{
    const struct lockmgr_snap_holder *x = *(const struct lockmgr_snap_holder *const *)a;
    const struct lockmgr_snap_holder *y = *(const struct lockmgr_snap_holder *const *)b;
    if (x->token != y->token)
        return x->token < y->token ? -1 : 1;
    if (x->owner_id != y->owner_id)
        return x->owner_id < y->owner_id ? -1 : 1;
    return (int)x->scope - (int)y->scope;
}

/* Mode names of a bit set (bit per lockmgr_mode). */
static json_t *modes_json(unsigned bits)
{
    json_t *a = json_array();
    for (int m = 0; a && m < LOCKMGR_NMODES; m++)
        if ((bits & (1u << m)) && json_array_append_new(a, json_string(lockmgr_mode_name(m))) < 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

/* backend = postgresql: "remote": the other instances holding the key, as PostgreSQL
 * showed them at this instance's last failed attempt on it (NULL: nothing known). */
static json_t *remote_json(const struct lockmgr_snap_key *k)
{
    struct px_lockspace_remote r[PX_LOCKSPACE_REMOTE_MAX];
    uint64_t age_us;
    size_t n = px_lockspace_remote(k->key, k->keylen, r, PX_LOCKSPACE_REMOTE_MAX, &age_us);
    if (!n && !age_us)
        return NULL;
    json_t *list = json_array();
    for (size_t i = 0; list && i < n; i++) {
        json_t *e = json_pack("{s:s, s:o, s:o}", "instance", r[i].instance, "holds",
                              modes_json(r[i].holds), "first_in_line", modes_json(r[i].first));
        if (!e || json_array_append_new(list, e) < 0) {
            json_decref(list);
            return NULL;
        }
    }
    return json_pack("{s:I, s:o}", "as_of_ms", (json_int_t)(age_us / 1000u), "instances", list);
}

/* {"key", "holders": [...], "waiters": [...]} for one key of a snapshot. */
static json_t *key_json(const struct lockmgr_snap_key *k, uint64_t now)
{
    json_t *holders = json_array(), *waiters = json_array();
    const struct lockmgr_snap_holder **order =
        malloc((k->nholders ? k->nholders : 1) * sizeof(*order));
    json_t *o = NULL;
    if (!holders || !waiters || !order)
        goto done;
    for (size_t i = 0; i < k->nholders; i++)
        order[i] = &k->holders[i];
    qsort(order, k->nholders, sizeof(*order), holder_cmp);
    for (size_t i = 0; i < k->nholders; i++)
        if (json_array_append_new(holders, holder_json(k, order[i], now)) < 0)
            goto done;
    for (size_t i = 0; i < k->nwaiters; i++) /* queue order */
        if (json_array_append_new(waiters, waiter_json(&k->waiters[i], now)) < 0)
            goto done;
    o = json_pack("{s:o, s:O, s:O}", "key", px_json_stringn(k->key, k->keylen), "holders", holders,
                  "waiters", waiters);
    json_t *remote = o ? remote_json(k) : NULL;
    if (remote && json_object_set_new(o, "remote", remote) < 0) {
        json_decref(o);
        o = NULL;
    }
done:
    json_decref(holders);
    json_decref(waiters);
    free(order);
    return o;
}

/* Keys in byte order, so that the answer is stable from one request to the next. */
static int key_cmp(const void *a, const void *b)
{
    const struct lockmgr_snap_key *x = *(const struct lockmgr_snap_key *const *)a;
    const struct lockmgr_snap_key *y = *(const struct lockmgr_snap_key *const *)b;
    size_t n = x->keylen < y->keylen ? x->keylen : y->keylen;
    int c = memcmp(x->key, y->key, n);
    if (c)
        return c;
    return x->keylen < y->keylen ? -1 : x->keylen > y->keylen;
}

json_t *px_introspect_locks(void)
{
    struct lockmgr *lm = px_locks_manager();
    struct lockmgr_snapshot *snap = lm ? lockmgr_snapshot(lm, NULL, NULL, 0) : NULL;
    if (lm && !snap)
        return NULL;
    uint64_t now = mono_us();
    size_t nkeys = snap ? snap->nkeys : 0;
    json_t *keys = json_array(), *out = NULL;
    const struct lockmgr_snap_key **order = malloc((nkeys ? nkeys : 1) * sizeof(*order));
    if (!keys || !order)
        goto done;
    for (size_t i = 0; i < nkeys; i++)
        order[i] = &snap->keys[i];
    qsort(order, nkeys, sizeof(*order), key_cmp);
    for (size_t i = 0; i < nkeys; i++)
        if (json_array_append_new(keys, key_json(order[i], now)) < 0)
            goto done;
    out = json_pack("{s:O, s:{s:I, s:I, s:I}}", "keys", keys, "totals", "keys", (json_int_t)nkeys,
                    "holders", (json_int_t)(snap ? snap->nholders : 0), "waiters",
                    (json_int_t)(snap ? snap->nwaiters : 0));
    /* backend = postgresql: this is one instance's view; other instances' holders of a
     * key appear only as "remote", learned when this instance failed to take the key
     * (docs/locks.md "Several instances"). */
    if (out && px_lockspace_active() &&
        json_object_set_new(out, "view", json_string("this instance only")) < 0) {
        json_decref(out);
        out = NULL;
    }
done:
    json_decref(keys);
    free(order);
    lockmgr_snapshot_free(snap);
    return out;
}

json_t *px_introspect_lock_key(const char *key, size_t keylen, bool *found)
{
    *found = false;
    struct lockmgr *lm = px_locks_manager();
    if (!lm || keylen == 0 || keylen > LOCKMGR_KEY_MAX)
        return NULL;
    struct lockmgr_snapshot *snap = lockmgr_snapshot(lm, NULL, key, keylen);
    if (!snap) {
        *found = true; /* not known: answer 500, never a wrong 404 */
        return NULL;
    }
    json_t *o = NULL;
    if (snap->nkeys == 1) {
        *found = true;
        o = key_json(&snap->keys[0], mono_us());
    }
    lockmgr_snapshot_free(snap);
    return o;
}

/* ---- what each client holds, for GET /clients ---- */

struct px_lock_index {
    struct lockmgr_snapshot *snap;
    size_t n;
    struct held {
        uint64_t owner_id;
        const struct lockmgr_snap_key *key;
        const struct lockmgr_snap_holder *holder;
    } rows[];
};

static int held_cmp(const void *a, const void *b)
{
    const struct held *x = a, *y = b;
    if (x->owner_id != y->owner_id)
        return x->owner_id < y->owner_id ? -1 : 1;
    return holder_cmp(&x->holder, &y->holder);
}

int px_introspect_lock_index_new(struct px_lock_index **out)
{
    *out = NULL;
    struct lockmgr *lm = px_locks_manager();
    if (!lm)
        return 0;
    struct lockmgr_stats st;
    lockmgr_stats_get(lm, &st);
    if (st.locks == 0)
        return 0; /* nobody holds anything: nothing to copy */
    struct lockmgr_snapshot *snap = lockmgr_snapshot(lm, NULL, NULL, 0);
    struct px_lock_index *ix =
        snap ? malloc(sizeof(*ix) + snap->nholders * sizeof(ix->rows[0])) : NULL;
    if (!ix) {
        lockmgr_snapshot_free(snap);
        return -1;
    }
    ix->snap = snap;
    ix->n = 0;
    for (size_t k = 0; k < snap->nkeys; k++) {
        const struct lockmgr_snap_key *key = &snap->keys[k];
        for (size_t h = 0; h < key->nholders; h++)
            ix->rows[ix->n++] = (struct held){key->holders[h].owner_id, key, &key->holders[h]};
    }
    qsort(ix->rows, ix->n, sizeof(ix->rows[0]), held_cmp);
    *out = ix;
    return 0;
}

void px_introspect_lock_index_free(struct px_lock_index *ix)
{
    if (!ix)
        return;
    lockmgr_snapshot_free(ix->snap);
    free(ix);
}

/* "locks": [{"key","mode","scope","token"}, ...] of the rows of owner id, if any. */
static int add_held(const struct px_lock_index *ix, uint64_t id, json_t *o)
{
    size_t lo = 0, hi = ix ? ix->n : 0;
    while (lo < hi) { /* the first row of id */
        size_t mid = lo + (hi - lo) / 2;
        if (ix->rows[mid].owner_id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (!ix || lo >= ix->n || ix->rows[lo].owner_id != id)
        return 0;
    json_t *arr = json_array();
    if (!arr || json_object_set_new(o, "locks", arr) < 0)
        return -1;
    for (size_t i = lo; i < ix->n && ix->rows[i].owner_id == id; i++) {
        const struct held *r = &ix->rows[i];
        uint64_t token; /* backend = postgresql: the global token once held there */
        (void)px_lockspace_hold_state(r->holder->owner_id, r->key->key, r->key->keylen,
                                      r->holder->token, &token);
        json_t *e =
            json_pack("{s:o, s:s, s:s, s:I}", "key", px_json_stringn(r->key->key, r->key->keylen),
                      "mode", lockmgr_mode_name(r->holder->mode), "scope",
                      lockmgr_scope_name(r->holder->scope), "token", (json_int_t)token);
        if (json_array_append_new(arr, e) < 0)
            return -1;
    }
    return 0;
}

int px_introspect_client_locks(const struct px_lock_index *ix, const struct px_client *c, json_t *o)
{
    if (!c->locks)
        return 0; /* never called a lock function */
    if (add_held(ix, c->id, o) < 0)
        return -1;
    if (!px_locks_waiting(c))
        return 0;
    const char *key = NULL, *mode = NULL;
    size_t keylen = 0;
    uint64_t waited = px_locks_wait_info(c, &key, &keylen, &mode);
    if (!key)
        return 0;
    json_t *w = json_pack("{s:o, s:s, s:I}", "key", px_json_stringn(key, keylen), "mode",
                          mode ? mode : "", "waited_ms", (json_int_t)waited);
    return json_object_set_new(o, "lock_wait", w);
}
