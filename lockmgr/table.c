/*
 * table.c: the lock manager object, its owners and its key table.
 *
 * Owns: lockmgr_new/free, lockmgr_owner_new/free, the key hash table (lm_key_*), hold
 * lookup, the detector workspace sizing, counters and names.  Lock semantics are in
 * locks.c, waiting in waits.c, deadlock detection in deadlock.c.  See lockmgr/README.md.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lockmgr_int.h"

#define LM_BUCKETS_MIN 64

const uint8_t lm_conflicts[LOCKMGR_NMODES] = {
    [LOCKMGR_READ] = LM_BIT(LOCKMGR_EXCLUSIVE),
    [LOCKMGR_WRITE] = LM_BIT(LOCKMGR_WRITE) | LM_BIT(LOCKMGR_EXCLUSIVE),
    [LOCKMGR_EXCLUSIVE] = LM_BIT(LOCKMGR_READ) | LM_BIT(LOCKMGR_WRITE) | LM_BIT(LOCKMGR_EXCLUSIVE),
};

struct lockmgr *lockmgr_new(const struct lockmgr_config *cfg)
{
    struct lockmgr *lm = calloc(1, sizeof(*lm));
    if (!lm)
        return NULL;
    if (cfg)
        lm->cfg = *cfg;
    if (lm->cfg.token_ceiling == 0)
        lm->cfg.token_ceiling = INT64_MAX;
    lm->last_token = lm->cfg.token_floor;
    lm->qfree = LM_NO_QUEUE;
    lm->nbuckets = LM_BUCKETS_MIN;
    lm->buckets = calloc(lm->nbuckets, sizeof(*lm->buckets));
    if (!lm->buckets) {
        free(lm);
        return NULL;
    }
    return lm;
}

static void key_free_all(struct lockmgr *lm)
{
    for (size_t b = 0; b < lm->nbuckets; b++) {
        struct lm_key *k = lm->buckets[b];
        while (k) {
            struct lm_key *next = k->hnext;
            for (struct lm_hold *h = k->holders, *hn; h; h = hn) {
                hn = h->knext;
                free(h);
            }
            struct lm_queue *q = lm_queue_of(lm, k);
            for (struct lm_wait *w = q ? q->head : NULL; w; w = w->qnext)
                if (!w->upgrade)
                    free(w->hold);
            free(k);
            k = next;
        }
    }
}

void lockmgr_free(struct lockmgr *lm)
{
    if (!lm)
        return;
    key_free_all(lm);
    for (struct lockmgr_owner *o = lm->owners, *next; o; o = next) {
        next = o->all_next;
        free(o->ev_mem);
        free(o);
    }
    free(lm->buckets);
    free(lm->queues);
    free(lm->qhot);
    free(lm->qmark);
    free(lm->stack);
    free(lm->hcur);
    free(lm->cyc_owners);
    free(lm->cyc_edges);
    free(lm->heap);
    free(lm);
}

/* realloc that leaves *p alone on failure. */
static bool grow(void *p, size_t n, size_t size)
{
    void *np = realloc(*(void **)p, n * size);
    if (!np)
        return false;
    *(void **)p = np;
    return true;
}

/*
 * Grows every per-owner workspace array to hold at least n entries: the deadlock search's
 * stack and cycle buffers, the deadline heap and the queue slots (an owner waits for one
 * key at a time, so there are never more queues than owners).  The only place they grow:
 * waiting and searching never allocate.
 */
static bool workspace_reserve(struct lockmgr *lm, size_t n)
{
    if (n <= lm->ws_cap)
        return true;
    size_t cap = lm->ws_cap ? lm->ws_cap * 2 : 64;
    while (cap < n)
        cap *= 2;
    if (cap >= LM_NO_QUEUE / 2)
        return false;
    if (!grow(&lm->stack, cap, sizeof(*lm->stack)) || !grow(&lm->hcur, cap, sizeof(*lm->hcur)) ||
        !grow(&lm->cyc_owners, cap, sizeof(*lm->cyc_owners)) ||
        !grow(&lm->cyc_edges, cap, sizeof(*lm->cyc_edges)) ||
        !grow(&lm->heap, cap, sizeof(*lm->heap)) || !grow(&lm->qhot, cap, sizeof(*lm->qhot)) ||
        !grow(&lm->qmark, cap, sizeof(*lm->qmark)) || !grow(&lm->queues, cap, sizeof(*lm->queues)))
        return false;
    /* chain the new slots in front of the free ones, lowest index first */
    for (size_t i = cap; i-- > lm->ws_cap;) {
        lm->qmark[i] = 0;
        lm->queues[i].next_free = lm->qfree;
        lm->qfree = (uint32_t)i;
    }
    lm->ws_cap = cap;
    return true;
}

struct lockmgr_owner *lockmgr_owner_new(struct lockmgr *lm, uint64_t id, lockmgr_wait_cb cb,
                                        void *udata)
{
    lm_cycle_forget(lm); /* the workspace may move */
    if (!workspace_reserve(lm, lm->nowners + 1))
        return NULL;
    size_t size = (sizeof(struct lockmgr_owner) + 63) & ~(size_t)63;
    struct lockmgr_owner *o = aligned_alloc(64, size);
    if (!o)
        return NULL;
    memset(o, 0, sizeof(*o));
    o->id = id;
    o->cb = cb;
    o->udata = udata;
    o->wait.heap_idx = LM_NO_HEAP;
    o->wait.qi = LM_NO_QUEUE;
    o->all_next = lm->owners;
    if (lm->owners)
        lm->owners->all_prev = o;
    lm->owners = o;
    lm->nowners++;
    return o;
}

void lockmgr_owner_free(struct lockmgr *lm, struct lockmgr_owner *o, uint64_t now_us)
{
    if (!o)
        return;
    (void)lockmgr_release_owner(lm, o, now_us);
    LM_ASSERT(!o->ev_pending && !o->wait.active && !o->holds);
    if (o->all_prev)
        o->all_prev->all_next = o->all_next;
    else
        lm->owners = o->all_next;
    if (o->all_next)
        o->all_next->all_prev = o->all_prev;
    lm->nowners--;
    free(o);
}

uint64_t lockmgr_owner_id(const struct lockmgr_owner *o)
{
    return o->id;
}

/* FNV-1a, folded to 32 bits: keys are short text. */
uint32_t lm_hash(const void *key, size_t len)
{
    const uint8_t *p = key;
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    return (uint32_t)(h ^ (h >> 32));
}

struct lm_key *lm_key_find(const struct lockmgr *lm, const void *key, size_t len, uint32_t h)
{
    for (struct lm_key *k = lm->buckets[h & (lm->nbuckets - 1)]; k; k = k->hnext)
        if (k->hash == h && k->len == len && memcmp(k->bytes, key, len) == 0)
            return k;
    return NULL;
}

/* Doubles the bucket array; on allocation failure the table just stays denser. */
static void table_grow(struct lockmgr *lm)
{
    size_t n = lm->nbuckets * 2;
    struct lm_key **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return;
    for (size_t b = 0; b < lm->nbuckets; b++) {
        for (struct lm_key *k = lm->buckets[b], *next; k; k = next) {
            next = k->hnext;
            k->hnext = nb[k->hash & (n - 1)];
            nb[k->hash & (n - 1)] = k;
        }
    }
    free(lm->buckets);
    lm->buckets = nb;
    lm->nbuckets = n;
}

/* Finds or creates the key; NULL on allocation failure. */
struct lm_key *lm_key_get(struct lockmgr *lm, const void *key, size_t len)
{
    uint32_t h = lm_hash(key, len);
    struct lm_key *k = lm_key_find(lm, key, len, h);
    if (k)
        return k;
    k = calloc(1, sizeof(*k) + len);
    if (!k)
        return NULL;
    k->hash = h;
    k->qi = LM_NO_QUEUE;
    k->len = (uint16_t)len;
    memcpy(k->bytes, key, len);
    if (lm->nkeys >= lm->nbuckets)
        table_grow(lm);
    struct lm_key **b = &lm->buckets[h & (lm->nbuckets - 1)];
    k->hnext = *b;
    *b = k;
    lm->nkeys++;
    return k;
}

/* Frees k once nobody holds or waits for it.  Tokens live in lm, so nothing is lost. */
void lm_key_maybe_free(struct lockmgr *lm, struct lm_key *k)
{
    if (k->holders || k->qi != LM_NO_QUEUE)
        return;
    struct lm_key **p = &lm->buckets[k->hash & (lm->nbuckets - 1)];
    while (*p != k)
        p = &(*p)->hnext;
    *p = k->hnext;
    lm->nkeys--;
    free(k);
}

static size_t key_nholds(const struct lm_key *k)
{
    return (size_t)k->nheld[0] + k->nheld[1] + k->nheld[2];
}

/* o's hold of k, walking whichever list is shorter. */
struct lm_hold *lm_hold_find(const struct lm_key *k, const struct lockmgr_owner *o)
{
    if (o->nholds <= key_nholds(k)) {
        for (struct lm_hold *h = o->holds; h; h = h->onext)
            if (h->key == k)
                return h;
    } else {
        for (struct lm_hold *h = k->holders; h; h = h->knext)
            if (h->owner == o)
                return h;
    }
    return NULL;
}

/* Modes held on k, counting one hold of except_mode less (-1: none). */
uint8_t lm_held_mask(const struct lm_key *k, int except_mode)
{
    uint8_t mask = 0;
    for (int m = 0; m < LOCKMGR_NMODES; m++)
        if (k->nheld[m] > (uint32_t)(m == except_mode))
            mask |= LM_BIT(m);
    return mask;
}

/*
 * Recomputes the search's view of k's holders (struct lm_qhot): the sole holder, its mode
 * and its own wait.  Called after every change to k's holds or to their modes, and after
 * an owner's wait begins or ends (lm_qhot_refresh_holds), so the deadlock search can trust
 * it.  O(1); only for a key somebody waits for (lm_qhot_refresh tests that).  Robust to a
 * hold that is linked but has no mode yet (or any more): it is not counted in nheld and is
 * skipped.
 */
void lm_qhot_recompute(struct lockmgr *lm, struct lm_key *k)
{
    struct lm_qhot *hot = &lm->qhot[k->qi];
    hot->h1 = NULL;
    if (key_nholds(k) != 1)
        return;
    const struct lm_hold *h = k->holders;
    while (lm_hold_mode(h) < 0)
        h = h->knext;
    struct lockmgr_owner *o = h->owner;
    const struct lm_wait *w = &o->wait;
    hot->h1 = o;
    hot->h1mode = (uint8_t)lm_hold_mode(h);
    hot->jqi = w->qi;
    hot->jmode = w->mode;
    hot->jupg = w->upgrade;
    hot->jord = w->ord;
}

/* o's wait began or ended: refresh the keys o holds, where o may be the sole holder. */
void lm_qhot_refresh_holds(struct lockmgr *lm, struct lockmgr_owner *o)
{
    for (struct lm_hold *h = o->holds; h; h = h->onext)
        lm_qhot_refresh(lm, h->key);
}

void lockmgr_stats_get(const struct lockmgr *lm, struct lockmgr_stats *out)
{
    *out = lm->st;
    out->owners = lm->nowners;
    out->keys = lm->nkeys;
    out->waiters = lm->nwaiters;
    out->locks = 0;
    for (int m = 0; m < LOCKMGR_NMODES; m++)
        out->held_by_mode[m] = 0;
    for (size_t b = 0; b < lm->nbuckets; b++)
        for (const struct lm_key *k = lm->buckets[b]; k; k = k->hnext)
            for (int m = 0; m < LOCKMGR_NMODES; m++)
                out->held_by_mode[m] += k->nheld[m];
    for (int m = 0; m < LOCKMGR_NMODES; m++)
        out->locks += out->held_by_mode[m];
}

uint64_t lockmgr_token_last(const struct lockmgr *lm)
{
    return lm->last_token;
}

const char *lockmgr_strerror(enum lockmgr_status st)
{
    static const char *const names[] = {
        [LOCKMGR_OK] = "ok",
        [LOCKMGR_WAITING] = "waiting",
        [LOCKMGR_WOULD_BLOCK] = "would block",
        [LOCKMGR_TIMEOUT] = "lock wait timed out",
        [LOCKMGR_DEADLOCK] = "deadlock detected",
        [LOCKMGR_CANCELED] = "lock wait canceled",
        [LOCKMGR_NOT_HELD] = "lock not held",
        [LOCKMGR_NOT_WAITING] = "not waiting",
        [LOCKMGR_BUSY] = "owner already waiting",
        [LOCKMGR_LIMIT] = "too many locks (max_locks)",
        [LOCKMGR_TOKENS_EXHAUSTED] = "fencing tokens exhausted",
        [LOCKMGR_INVALID] = "invalid argument",
        [LOCKMGR_NOMEM] = "out of memory",
    };
    if ((unsigned)st < sizeof(names) / sizeof(names[0]) && names[st])
        return names[st];
    return "unknown status";
}

static const char *const mode_names[LOCKMGR_NMODES] = {"read", "write", "exclusive"};

const char *lockmgr_mode_name(enum lockmgr_mode mode)
{
    return (unsigned)mode < LOCKMGR_NMODES ? mode_names[mode] : "?";
}

const char *lockmgr_scope_name(enum lockmgr_scope scope)
{
    return scope == LOCKMGR_SESSION ? "session" : scope == LOCKMGR_XACT ? "transaction" : "?";
}

bool lockmgr_mode_parse(const char *s, size_t len, enum lockmgr_mode *mode)
{
    for (int m = 0; m < LOCKMGR_NMODES; m++) {
        if (strlen(mode_names[m]) == len && strncasecmp(s, mode_names[m], len) == 0) {
            *mode = (enum lockmgr_mode)m;
            return true;
        }
    }
    return false;
}
