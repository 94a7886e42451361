/*
 * edges.c: the wait-for edges out of one waiting owner, for a caller that joins lockmgr's
 * graph to waits it learns elsewhere (the proxy's hybrid deadlocks through PostgreSQL's
 * own locks, docs/locks.md).
 *
 * Owns: lockmgr_owner_wait, lockmgr_wait_edges.  The edges are exactly those of the
 * deadlock search (lockmgr/README.md "Deadlock detection"): a hard edge to every other
 * holder of the key whose mode conflicts with the mode wanted and, unless the wait is an
 * upgrade, a soft edge to every request queued ahead of it that conflicts.  Read-only:
 * no I/O, no allocation, O(holders of the key + requests ahead of the wait).
 */
#include "lockmgr_int.h"

bool lockmgr_owner_wait(const struct lockmgr *lm, const struct lockmgr_owner *o,
                        struct lockmgr_wait_info *out)
{
    (void)lm;
    const struct lm_wait *w = &o->wait;
    if (!w->active)
        return false;
    out->key = w->key->bytes;
    out->keylen = w->key->len;
    out->mode = (enum lockmgr_mode)w->mode;
    out->upgrade = w->upgrade;
    out->wait_seq = w->seq;
    out->since_us = w->since_us;
    out->deadline_us = w->deadline_us;
    return true;
}

size_t lockmgr_wait_edges(const struct lockmgr *lm, const struct lockmgr_owner *o,
                          struct lockmgr_wait_edge *out, size_t cap)
{
    (void)lm;
    const struct lm_wait *w = &o->wait;
    if (!w->active)
        return 0;
    uint8_t conflicts = lm_conflicts[w->mode];
    size_t n = 0;
    for (const struct lm_hold *h = w->key->holders; h; h = h->knext) {
        int hm = lm_hold_mode(h);
        if (h->owner == o || hm < 0 || !(conflicts & LM_BIT(hm)))
            continue;
        if (n < cap) {
            struct lockmgr_wait_edge *e = &out[n];
            e->blocker_id = h->owner->id;
            e->blocker_udata = h->owner->udata;
            e->blocker_mode = (enum lockmgr_mode)hm;
            e->soft = false;
            e->token = h->token;
            e->wait_seq = 0;
        }
        n++;
    }
    if (w->upgrade)
        return n; /* an upgrade never waits for a waiter */
    for (const struct lm_wait *q = w->qprev; q; q = q->qprev) {
        if (!(conflicts & LM_BIT(q->mode)))
            continue;
        if (n < cap) {
            const struct lockmgr_owner *qo = LM_WAIT_OWNER(q);
            struct lockmgr_wait_edge *e = &out[n];
            e->blocker_id = qo->id;
            e->blocker_udata = qo->udata;
            e->blocker_mode = (enum lockmgr_mode)q->mode;
            e->soft = true;
            e->token = 0;
            e->wait_seq = q->seq;
        }
        n++;
    }
    return n;
}

enum lockmgr_status lockmgr_wait_victim(struct lockmgr *lm, struct lockmgr_owner *o,
                                        uint64_t now_us)
{
    lm_cycle_forget(lm);
    if (!o->wait.active)
        return LOCKMGR_NOT_WAITING;
    struct lm_key *k = o->wait.key;
    lm_wait_remove(lm, &o->wait);
    lm->st.deadlocks++;
    lm_event_push(lm, o, LOCKMGR_DEADLOCK, 0, NULL);
    lm_wakeup(lm, k, now_us);
    lm_key_maybe_free(lm, k);
    lm_deliver(lm);
    return LOCKMGR_OK;
}
