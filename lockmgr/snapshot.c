/*
 * snapshot.c: a stable copy of the lock table for the admin port and pgwarden_locks().
 *
 * Owns: lockmgr_snapshot, lockmgr_snapshot_free.  Two passes over the same walk: the
 * first counts rows and key bytes, the second fills one allocation, so the copy costs
 * O(keys + holds + waiters) and one malloc.  See lockmgr/README.md.
 */
#include <stdlib.h>
#include <string.h>

#include "lockmgr_int.h"

struct snap_build {
    const struct lockmgr *lm;
    const struct lockmgr_owner *owner; /* filter, or NULL */
    size_t nkeys, nholders, nwaiters, keybytes;
    bool fill;
    struct lockmgr_snapshot *snap;
    struct lockmgr_snap_key *keys;
    struct lockmgr_snap_holder *holders;
    struct lockmgr_snap_waiter *waiters;
    uint8_t *kbytes;
};

static void add_holder_rows(struct snap_build *b, const struct lm_hold *h)
{
    for (int s = 0; s < 2; s++) {
        if (!h->smode[s])
            continue;
        if (b->fill) {
            struct lockmgr_snap_holder *r = &b->holders[b->nholders];
            r->owner_id = h->owner->id;
            r->udata = h->owner->udata;
            r->mode = (enum lockmgr_mode)(h->smode[s] - 1);
            r->scope = (enum lockmgr_scope)s;
            r->token = h->token;
            r->since_us = h->since_us;
        }
        b->nholders++;
    }
}

static void add_waiter_row(struct snap_build *b, const struct lm_wait *w)
{
    if (b->fill) {
        const struct lockmgr_owner *o = LM_WAIT_OWNER(w);
        struct lockmgr_snap_waiter *r = &b->waiters[b->nwaiters];
        r->owner_id = o->id;
        r->udata = o->udata;
        r->mode = (enum lockmgr_mode)w->mode;
        r->scope = (enum lockmgr_scope)w->scope;
        r->upgrade = w->upgrade;
        r->since_us = w->since_us;
        r->deadline_us = w->deadline_us;
    }
    b->nwaiters++;
}

/* Emits key k with its rows (only b->owner's when filtering). */
static void add_key(struct snap_build *b, const struct lm_key *k)
{
    size_t h0 = b->nholders, w0 = b->nwaiters;
    for (const struct lm_hold *h = k->holders; h; h = h->knext)
        if (!b->owner || h->owner == b->owner)
            add_holder_rows(b, h);
    const struct lm_queue *q = lm_queue_of(b->lm, k);
    for (const struct lm_wait *w = q ? q->head : NULL; w; w = w->qnext)
        if (!b->owner || LM_WAIT_OWNER(w) == b->owner)
            add_waiter_row(b, w);
    if (b->fill) {
        struct lockmgr_snap_key *r = &b->keys[b->nkeys];
        memcpy(b->kbytes, k->bytes, k->len);
        r->key = b->kbytes;
        r->keylen = k->len;
        r->holders = b->holders + h0;
        r->nholders = b->nholders - h0;
        r->waiters = b->waiters + w0;
        r->nwaiters = b->nwaiters - w0;
    }
    b->kbytes += b->fill ? k->len : 0;
    b->keybytes += k->len;
    b->nkeys++;
}

static void walk(const struct lockmgr *lm, struct snap_build *b, const void *key, size_t len)
{
    if (key) {
        const struct lm_key *k = lm_key_find(lm, key, len, lm_hash(key, len));
        if (k)
            add_key(b, k);
    } else if (b->owner) {
        for (const struct lm_hold *h = b->owner->holds; h; h = h->onext)
            add_key(b, h->key);
        if (b->owner->wait.active && !b->owner->wait.upgrade)
            add_key(b, b->owner->wait.key);
    } else {
        for (size_t i = 0; i < lm->nbuckets; i++)
            for (const struct lm_key *k = lm->buckets[i]; k; k = k->hnext)
                add_key(b, k);
    }
}

struct lockmgr_snapshot *lockmgr_snapshot(const struct lockmgr *lm,
                                          const struct lockmgr_owner *owner, const void *key,
                                          size_t keylen)
{
    struct snap_build b = {.lm = lm, .owner = owner};
    walk(lm, &b, key, keylen);
    size_t size = sizeof(struct lockmgr_snapshot) + b.nkeys * sizeof(struct lockmgr_snap_key) +
                  b.nholders * sizeof(struct lockmgr_snap_holder) +
                  b.nwaiters * sizeof(struct lockmgr_snap_waiter) + b.keybytes;
    struct lockmgr_snapshot *snap = calloc(1, size);
    if (!snap)
        return NULL;
    struct snap_build f = {.lm = lm, .owner = owner, .fill = true, .snap = snap};
    f.keys = (struct lockmgr_snap_key *)(snap + 1);
    f.holders = (struct lockmgr_snap_holder *)(f.keys + b.nkeys);
    f.waiters = (struct lockmgr_snap_waiter *)(f.holders + b.nholders);
    f.kbytes = (uint8_t *)(f.waiters + b.nwaiters);
    walk(lm, &f, key, keylen);
    LM_ASSERT(f.nkeys == b.nkeys && f.nholders == b.nholders && f.nwaiters == b.nwaiters);
    snap->nkeys = f.nkeys;
    snap->nholders = f.nholders;
    snap->nwaiters = f.nwaiters;
    snap->keys = f.keys;
    return snap;
}

void lockmgr_snapshot_free(struct lockmgr_snapshot *snap)
{
    free(snap);
}
