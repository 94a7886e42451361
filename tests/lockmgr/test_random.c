/*
 * test_random.c: a randomized test of the whole library against a brute-force model.
 *
 * Three configurations, LOCKMGR_RANDOM_OPS operations each (default 10^6;
 * LOCKMGR_RANDOM_SEED picks the seed): "model", 50 owners on 20 keys; "crowded", 12
 * owners on 3 keys, so queues are long, mix all three modes and hold many upgrades (the
 * cases the deadlock search summarizes instead of walking); "victim", 24 owners on 4 keys
 * with a victim policy that picks a random edge, so the library has to search again after
 * aborting another owner.  The model keeps a (owner x key) matrix of held modes per scope
 * and one wait per owner, and recomputes everything from the definitions in SPEC section
 * 2: grants by scanning the queue in order, deadlocks by a search over all hard and soft
 * edges.  After every operation the library's return value and the exact set of callbacks
 * must match the model's; tokens must grow per key and re-requests return the held token.
 * Every cycle reported (or handed to the victim policy) must start at the requester, be
 * simple, and consist of real edges with the right kind and modes; the model applies the
 * same victims in the same order, and the requester must be on a cycle exactly as long as
 * the library keeps choosing.  Every 1000 steps the whole table is compared through a
 * snapshot and the model's wait-for graph is checked to be acyclic.  At the end, holders
 * leave until every waiter has been granted.
 */
#include <stdio.h>
#include <stdlib.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "lmtest.h"

#define NO_MAX  50 /* array sizes; the configuration uses NO <= NO_MAX owners */
#define NK_MAX  20
#define ORD_NEW (UINT64_C(1) << 63)

struct rconfig {
    int owners, keys;
    size_t max_locks;
    bool random_victim;
};
static struct rconfig cfg;
#define NO (cfg.owners)
#define NK (cfg.keys)

static const uint8_t conf[3] = {4, 6, 7}; /* SPEC table: read-X, write-W/X, X-all */

struct mhold {
    uint8_t smode[2]; /* 0 = none, else mode + 1 */
    uint64_t token;
};

struct mwait {
    bool active, upgrade;
    int key, mode, scope;
    uint64_t ord, seq, deadline;
};

struct mevent {
    int owner, key;
    enum lockmgr_status st;
};

static struct model {
    struct mhold h[NO_MAX][NK_MAX];
    struct mwait w[NO_MAX];
    uint64_t maxtok[NK_MAX];
    uint64_t steptok[NK_MAX]; /* maxtok before the current step */
    uint64_t seq, now;
    size_t nlocks;
    struct mevent ev[NO_MAX * 2];
    int nev;
} M;

/* A cycle as the library reported it: to the victim policy, or by lockmgr_last_cycle. */
struct rcycle {
    size_t n, victim;
    struct {
        int waiter, blocker, wanted, blocker_mode;
        bool soft;
    } e[NO_MAX];
};
static struct rcycle plog[NO_MAX + 1]; /* the victim policy's calls during one step */
static int nplog;

static struct lockmgr *lm;
static struct lockmgr_owner *ow[NO_MAX];
static char keyname[NK_MAX][16];
static uint64_t rng;
static long step;
static char failmsg[256];

static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int eff(int o, int k)
{
    int a = M.h[o][k].smode[0], b = M.h[o][k].smode[1];
    return (a > b ? a : b) - 1;
}

static uint8_t held_mask(int k, int except)
{
    uint8_t m = 0;
    for (int o = 0; o < NO; o++)
        if (o != except && eff(o, k) >= 0)
            m |= (uint8_t)(1u << eff(o, k));
    return m;
}

/* Modes of the waiters on k queued before position ord. */
static uint8_t wait_mask(int k, uint64_t ord)
{
    uint8_t m = 0;
    for (int o = 0; o < NO; o++)
        if (M.w[o].active && M.w[o].key == k && M.w[o].ord < ord)
            m |= (uint8_t)(1u << M.w[o].mode);
    return m;
}

static void push_event(int o, int k, enum lockmgr_status st)
{
    M.ev[M.nev++] = (struct mevent){o, k, st};
}

static void remove_wait(int o)
{
    M.w[o].active = false;
    if (!M.w[o].upgrade)
        M.nlocks--;
}

/* Grants the waiters of k in queue order, as SPEC section 2 says. */
static void wakeup(int k)
{
    int order[NO_MAX], n = 0;
    for (int o = 0; o < NO; o++)
        if (M.w[o].active && M.w[o].key == k)
            order[n++] = o;
    for (int i = 1; i < n; i++) /* insertion sort by queue position */
        for (int j = i; j > 0 && M.w[order[j]].ord < M.w[order[j - 1]].ord; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    uint8_t waitmask = 0;
    for (int i = 0; i < n; i++) {
        struct mwait *w = &M.w[order[i]];
        uint8_t blocked = w->upgrade ? held_mask(k, order[i]) : held_mask(k, -1) | waitmask;
        if (conf[w->mode] & blocked) {
            waitmask |= (uint8_t)(1u << w->mode);
            continue;
        }
        w->active = false;
        M.h[order[i]][k].smode[w->scope] = (uint8_t)(w->mode + 1);
        push_event(order[i], k, LOCKMGR_OK);
    }
}

/* Does x wait for y (hard or soft)?  soft/hard report which kinds exist. */
static bool edge(int x, int y, bool *hard, bool *soft)
{
    const struct mwait *w = &M.w[x];
    *hard = *soft = false;
    if (!w->active || x == y)
        return false;
    int e = eff(y, w->key);
    *hard = e >= 0 && (conf[w->mode] & (1u << e));
    *soft = !w->upgrade && M.w[y].active && M.w[y].key == w->key && M.w[y].ord < w->ord &&
            (conf[w->mode] & (1u << M.w[y].mode));
    return *hard || *soft;
}

/* Is s on a cycle of the wait-for graph?  Plain search over the adjacency definition. */
static bool on_cycle(int s)
{
    bool seen[NO_MAX] = {false}, h, so;
    int stack[NO_MAX], n = 0;
    for (int y = 0; y < NO; y++)
        if (edge(s, y, &h, &so) && !seen[y]) {
            seen[y] = true;
            stack[n++] = y;
        }
    while (n) {
        int x = stack[--n];
        if (x == s)
            return true;
        for (int y = 0; y < NO; y++)
            if (!seen[y] && edge(x, y, &h, &so)) {
                seen[y] = true;
                stack[n++] = y;
            }
    }
    return false;
}

static int fail(const char *fmt, long a, long b)
{
    snprintf(failmsg, sizeof(failmsg), fmt, a, b);
    return -1;
}

static void rcycle_copy(struct rcycle *r, const struct lockmgr_cycle *c)
{
    r->n = c->n <= NO_MAX ? c->n : NO_MAX + 1;
    for (size_t i = 0; i < c->n && i < NO_MAX; i++) {
        const struct lockmgr_cycle_edge *e = &c->edges[i];
        r->e[i].waiter = (int)e->waiter_id;
        r->e[i].blocker = (int)e->blocker_id;
        r->e[i].wanted = (int)e->wanted;
        r->e[i].blocker_mode = (int)e->blocker_mode;
        r->e[i].soft = e->soft;
    }
}

/* A reported cycle must be a simple cycle through the requester o, of real edges. */
static int check_cycle(const struct rcycle *c, int o)
{
    bool seen[NO_MAX] = {false};
    if (c->n < 2 || c->n > (size_t)NO || c->e[0].waiter != o)
        return fail("cycle of %ld edges not from the requester at step %ld", (long)c->n, step);
    for (size_t i = 0; i < c->n; i++) {
        int x = c->e[i].waiter, y = c->e[i].blocker;
        bool h, s;
        if (x < 0 || x >= NO || seen[x])
            return fail("owner %ld twice in the cycle at step %ld", x, step);
        seen[x] = true;
        int want_bmode = c->e[i].soft ? M.w[y].mode : eff(y, M.w[x].key);
        if (!edge(x, y, &h, &s) || (c->e[i].soft ? !s : !h) || c->e[i].wanted != M.w[x].mode ||
            c->e[i].blocker_mode != want_bmode || y != c->e[(i + 1) % c->n].waiter)
            return fail("bad cycle edge %ld at step %ld", (long)i, step);
    }
    return 0;
}

/* The "victim" configuration's policy: any edge, at random; the model replays the log. */
static size_t random_victim(void *arg, const struct lockmgr_cycle *c)
{
    (void)arg;
    struct rcycle *r = &plog[nplog < NO_MAX ? nplog++ : NO_MAX];
    rcycle_copy(r, c);
    r->victim = (size_t)(rnd() % c->n);
    return r->victim;
}

/* Drops o's event of this step (its wait was granted while the library resolved a
 * deadlock, so the library returns the grant instead of calling back). */
static void take_event(int o)
{
    for (int i = 0; i < M.nev; i++)
        if (M.ev[i].owner == o) {
            M.ev[i] = M.ev[--M.nev];
            return;
        }
}

/* Deadlock resolution with a replaced victim policy: each cycle the library handed to the
 * policy must be a cycle of the model's graph at that point, and the requester must be on
 * a cycle exactly until the library stops asking. */
static enum lockmgr_status model_victims(int o, int k, bool *cycle_ok)
{
    for (int i = 0;; i++) {
        if (!on_cycle(o)) {
            if (i != nplog)
                *cycle_ok = fail("policy called %ld times, model %ld cycles", nplog, i) == 0;
            return LOCKMGR_WAITING;
        }
        if (i >= nplog || check_cycle(&plog[i], o) < 0) {
            if (i >= nplog)
                fail("the library missed a cycle at step %ld (%ld)", step, i);
            *cycle_ok = false;
            return LOCKMGR_WAITING;
        }
        int v = plog[i].e[plog[i].victim].waiter, vk = M.w[v].key;
        remove_wait(v);
        if (v == o) {
            wakeup(k);
            return LOCKMGR_DEADLOCK;
        }
        push_event(v, vk, LOCKMGR_DEADLOCK);
        wakeup(vk);
        if (!M.w[o].active) {
            take_event(o);
            return LOCKMGR_OK;
        }
    }
}

/* Starts o's wait in the model; returns the status the library must return. */
static enum lockmgr_status model_wait(int o, int k, int mode, int scope, bool upgrade,
                                      uint64_t deadline, bool *cycle_ok)
{
    if (deadline && deadline <= M.now)
        return LOCKMGR_TIMEOUT;
    M.seq++;
    M.w[o] = (struct mwait){true,  upgrade, k, mode, scope, upgrade ? M.seq : (ORD_NEW | M.seq),
                            M.seq, deadline};
    if (!upgrade)
        M.nlocks++;
    if (cfg.random_victim)
        return model_victims(o, k, cycle_ok);
    if (!on_cycle(o))
        return LOCKMGR_WAITING;
    struct rcycle c;
    rcycle_copy(&c, lockmgr_last_cycle(lm));
    *cycle_ok = check_cycle(&c, o) == 0;
    remove_wait(o);
    wakeup(k);
    return LOCKMGR_DEADLOCK;
}

static enum lockmgr_status model_acquire(int o, int k, int mode, int scope, uint64_t deadline,
                                         bool wait, bool *cycle_ok)
{
    if (M.w[o].active)
        return LOCKMGR_BUSY;
    int e = eff(o, k);
    if (e >= mode) {
        if (M.h[o][k].smode[scope] < mode + 1)
            M.h[o][k].smode[scope] = (uint8_t)(mode + 1);
        return LOCKMGR_OK;
    }
    bool grantable;
    if (e >= 0) {
        grantable = !(conf[mode] & held_mask(k, o));
    } else {
        if (M.nlocks >= cfg.max_locks)
            return LOCKMGR_LIMIT;
        grantable = !(conf[mode] & (held_mask(k, -1) | wait_mask(k, UINT64_MAX)));
    }
    if (grantable) {
        if (e < 0)
            M.nlocks++;
        M.h[o][k].smode[scope] = (uint8_t)(mode + 1);
        return LOCKMGR_OK;
    }
    if (!wait)
        return LOCKMGR_WOULD_BLOCK;
    return model_wait(o, k, mode, scope, e >= 0, deadline, cycle_ok);
}

static void model_release(int o, int k, unsigned scopes)
{
    int before = eff(o, k);
    for (int s = 0; s < 2; s++)
        if (scopes & (1u << s))
            M.h[o][k].smode[s] = 0;
    int after = eff(o, k);
    if (after < 0 && before >= 0) {
        if (M.w[o].active && M.w[o].upgrade && M.w[o].key == k) {
            remove_wait(o);
            push_event(o, k, LOCKMGR_CANCELED);
        }
        M.nlocks--;
    }
    if (after != before)
        wakeup(k);
}

static size_t model_expire(void)
{
    size_t n = 0;
    for (;;) {
        int best = -1;
        for (int o = 0; o < NO; o++) {
            const struct mwait *w = &M.w[o];
            if (w->active && w->deadline && w->deadline <= M.now &&
                (best < 0 || w->deadline < M.w[best].deadline ||
                 (w->deadline == M.w[best].deadline && w->seq < M.w[best].seq)))
                best = o;
        }
        if (best < 0)
            return n;
        remove_wait(best);
        push_event(best, M.w[best].key, LOCKMGR_TIMEOUT);
        wakeup(M.w[best].key);
        n++;
    }
}

static int cmp_event(const void *a, const void *b)
{
    const struct mevent *x = a, *y = b;
    return x->owner - y->owner;
}

static int cmp_lmt(const void *a, const void *b)
{
    const struct lmt_event *x = a, *y = b;
    return (x->owner_id > y->owner_id) - (x->owner_id < y->owner_id);
}

/* The library's callbacks of this step must be exactly the model's. */
static int check_events(void)
{
    if ((size_t)M.nev != lmt_nevents)
        return fail("%ld events, model %ld", (long)lmt_nevents, M.nev);
    qsort(M.ev, (size_t)M.nev, sizeof(M.ev[0]), cmp_event);
    qsort(lmt_events, lmt_nevents, sizeof(lmt_events[0]), cmp_lmt);
    const uint64_t *before = M.steptok; /* one step may grant a key several times */
    for (int i = 0; i < M.nev; i++) {
        const struct mevent *m = &M.ev[i];
        const struct lmt_event *e = &lmt_events[i];
        if ((int)e->owner_id != m->owner || e->status != m->st)
            return fail("event for owner %ld status %ld differs", (long)e->owner_id, e->status);
        if (m->st == LOCKMGR_OK) {
            if (e->token <= before[m->key])
                return fail("token not increasing on key %ld at step %ld", m->key, step);
            if (e->token > M.maxtok[m->key])
                M.maxtok[m->key] = e->token;
            M.h[m->owner][m->key].token = e->token;
        }
    }
    return 0;
}

static int check_token(int o, int k, bool rerequest, uint64_t token)
{
    if (rerequest)
        return token == M.h[o][k].token ? 0 : fail("re-request token differs, step %ld", step, 0);
    if (token <= M.steptok[k]) /* the step may also have granted k to others, in any order */
        return fail("token not increasing on key %ld at step %ld", k, step);
    if (token > M.maxtok[k])
        M.maxtok[k] = token;
    M.h[o][k].token = token;
    return 0;
}

static int op_acquire(int o, bool wait)
{
    int k = (int)(rnd() % NK), r = (int)(rnd() % 10);
    int mode = r < 4 ? 0 : r < 7 ? 1 : 2, scope = (int)(rnd() % 2);
    uint64_t deadline = rnd() % 2 ? 0 : M.now + 1 + rnd() % 2000, token = 0;
    bool rerequest = eff(o, k) >= mode && !M.w[o].active, cycle_ok = true;
    /* the library first: the model checks the cycle the library reported */
    enum lockmgr_status got =
        wait ? lockmgr_acquire(lm, ow[o], keyname[k], 5, (enum lockmgr_mode)mode,
                               (enum lockmgr_scope)scope, deadline, M.now, &token)
             : lockmgr_try_acquire(lm, ow[o], keyname[k], 5, (enum lockmgr_mode)mode,
                                   (enum lockmgr_scope)scope, M.now, &token);
    enum lockmgr_status want = model_acquire(o, k, mode, scope, deadline, wait, &cycle_ok);
    if (got != want)
        return fail("acquire returned %ld, model %ld", got, want);
    if (!cycle_ok)
        return -1;
    return got == LOCKMGR_OK ? check_token(o, k, rerequest, token) : 0;
}

static int op_release(int o)
{
    int k = (int)(rnd() % NK), scope = (int)(rnd() % 2);
    for (int i = 0; i < NK && !M.h[o][k].smode[scope]; i++)
        k = (k + 1) % NK;
    enum lockmgr_status want = M.h[o][k].smode[scope] ? LOCKMGR_OK : LOCKMGR_NOT_HELD;
    if (want == LOCKMGR_OK)
        model_release(o, k, 1u << scope);
    enum lockmgr_status got =
        lockmgr_release(lm, ow[o], keyname[k], 5, (enum lockmgr_scope)scope, M.now);
    return got == want ? 0 : fail("release returned %ld, model %ld", got, want);
}

static int op_release_all(int o, bool owner)
{
    int scope = (int)(rnd() % 2);
    size_t want = 0, got;
    if (owner && M.w[o].active) {
        remove_wait(o);
        wakeup(M.w[o].key);
    }
    for (int k = 0; k < NK; k++) {
        if (owner ? eff(o, k) >= 0 : M.h[o][k].smode[scope] != 0) {
            model_release(o, k, owner ? 3u : 1u << scope);
            want++;
        }
    }
    if (owner)
        got = lockmgr_release_owner(lm, ow[o], M.now);
    else
        got = lockmgr_release_scope(lm, ow[o], (enum lockmgr_scope)scope, M.now);
    return got == want ? 0 : fail("released %ld, model %ld", (long)got, (long)want);
}

static int op_cancel(int o)
{
    enum lockmgr_status want = M.w[o].active ? LOCKMGR_OK : LOCKMGR_NOT_WAITING;
    if (M.w[o].active) {
        remove_wait(o);
        wakeup(M.w[o].key);
    }
    enum lockmgr_status got = lockmgr_cancel_wait(lm, ow[o], M.now);
    return got == want ? 0 : fail("cancel returned %ld, model %ld", got, want);
}

static int op_expire(void)
{
    M.now += rnd() % 400;
    size_t want = model_expire();
    size_t got = lockmgr_expire(lm, M.now);
    return got == want ? 0 : fail("expired %ld, model %ld", (long)got, (long)want);
}

static int one_step(void)
{
    int o = (int)(rnd() % NO), r = (int)(rnd() % 100);
    M.nev = 0;
    nplog = 0;
    memcpy(M.steptok, M.maxtok, sizeof(M.steptok));
    lmt_reset();
    int rc;
    if (r < 40)
        rc = op_acquire(o, true);
    else if (r < 50)
        rc = op_acquire(o, false);
    else if (r < 74)
        rc = op_release(o);
    else if (r < 80)
        rc = op_release_all(o, false);
    else if (r < 83)
        rc = op_release_all(o, true);
    else if (r < 88)
        rc = op_cancel(o);
    else
        rc = op_expire();
    return rc < 0 ? rc : check_events();
}

/* Whole-table comparison through a snapshot, and acyclicity of the model's graph. */
static int check_table(void)
{
    struct lockmgr_snapshot *s = lockmgr_snapshot(lm, NULL, NULL, 0);
    if (!s)
        return fail("snapshot failed", 0, 0);
    size_t holders = 0, waiters = 0;
    for (int o = 0; o < NO; o++) {
        for (int k = 0; k < NK; k++)
            holders += (M.h[o][k].smode[0] != 0) + (M.h[o][k].smode[1] != 0);
        waiters += M.w[o].active;
        if (M.w[o].active && on_cycle(o)) {
            lockmgr_snapshot_free(s);
            return fail("model cycle through %ld at step %ld", o, step);
        }
    }
    int rc = s->nholders == holders && s->nwaiters == waiters ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < s->nkeys; i++) {
        const struct lockmgr_snap_key *sk = &s->keys[i];
        const char *kb = sk->key; /* "keyNN", not NUL-terminated */
        int k = (kb[3] - '0') * 10 + (kb[4] - '0');
        for (size_t j = 0; j < sk->nholders; j++) {
            const struct lockmgr_snap_holder *h = &sk->holders[j];
            const struct mhold *mh = &M.h[h->owner_id][k];
            if (mh->smode[h->scope] != h->mode + 1 || mh->token != h->token)
                rc = -1;
        }
        uint64_t last_ord = 0;
        for (size_t j = 0; j < sk->nwaiters; j++) {
            const struct mwait *w = &M.w[sk->waiters[j].owner_id];
            if (!w->active || w->key != k || w->mode != (int)sk->waiters[j].mode ||
                w->ord <= last_ord)
                rc = -1;
            last_ord = w->ord;
        }
    }
    lockmgr_snapshot_free(s);
    return rc == 0 ? 0 : fail("table differs from the model at step %ld", step, 0);
}

/* Holders leave one by one (skipping waiters) until nobody waits. */
static int drain(void)
{
    for (int round = 0; round < NO + 1; round++) {
        bool waiting = false;
        for (int o = 0; o < NO; o++) {
            if (M.w[o].active) {
                waiting = true;
                continue;
            }
            M.nev = 0;
            memcpy(M.steptok, M.maxtok, sizeof(M.steptok));
            lmt_reset();
            if (op_release_all(o, true) < 0 || check_events() < 0)
                return -1;
        }
        if (!waiting)
            return 0;
    }
    return fail("waiters left after draining", 0, 0);
}

static void run_config(const struct rconfig *c)
{
    const char *env = getenv("LOCKMGR_RANDOM_OPS");
    long ops = env ? atol(env) : 1000000;
    env = getenv("LOCKMGR_RANDOM_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 10) : 20240601;
    rng = seed ? seed : 1;
    cfg = *c;
    memset(&M, 0, sizeof(M));
    M.now = 1;
    struct lockmgr_config lc = {.max_locks = cfg.max_locks};
    if (cfg.random_victim)
        lc.victim = random_victim;
    lm = lockmgr_new(&lc);
    CU_ASSERT_PTR_NOT_NULL_FATAL(lm);
    for (int o = 0; o < NO; o++)
        ow[o] = lockmgr_owner_new(lm, (uint64_t)o, lmt_record, NULL);
    for (int k = 0; k < NK; k++)
        snprintf(keyname[k], sizeof(keyname[k]), "key%02d", k);
    int rc = 0;
    for (step = 0; step < ops && rc == 0; step++) {
        rc = one_step();
        if (rc == 0 && step % 1000 == 999)
            rc = check_table();
    }
    if (rc == 0)
        rc = drain();
    if (rc != 0)
        fprintf(stderr, "\n  seed %llu step %ld: %s\n", (unsigned long long)seed, step, failmsg);
    CU_ASSERT_EQUAL(rc, 0);
    struct lockmgr_stats st;
    lockmgr_stats_get(lm, &st);
    CU_ASSERT_EQUAL(st.waiters, 0);
    if (getenv("LOCKMGR_RANDOM_VERBOSE"))
        fprintf(stderr,
                "\n  %ld ops: grants %llu waits %llu timeouts %llu deadlocks %llu "
                "limit %llu\n",
                ops, (unsigned long long)st.grants, (unsigned long long)st.waits,
                (unsigned long long)st.timeouts, (unsigned long long)st.deadlocks,
                (unsigned long long)st.limit_hits);
    lockmgr_free(lm);
}

static void test_random_model(void)
{
    run_config(&(struct rconfig){.owners = 50, .keys = 20, .max_locks = 60});
}

static void test_random_crowded(void)
{
    run_config(&(struct rconfig){.owners = 12, .keys = 3, .max_locks = 30});
}

static void test_random_victim(void)
{
    run_config(&(struct rconfig){.owners = 24, .keys = 4, .max_locks = 60, .random_victim = true});
}

static const CU_TestInfo tests[] = {
    {"model", test_random_model},
    {"crowded", test_random_crowded},
    {"victim", test_random_victim},
    CU_TEST_INFO_NULL,
};

void lmt_register_random(void)
{
    cunit_add_suite("random", NULL, NULL, tests);
}
