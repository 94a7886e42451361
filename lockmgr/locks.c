/*
 * locks.c: granting and releasing locks.
 *
 * Owns: lockmgr_acquire, lockmgr_try_acquire, lockmgr_release, lockmgr_release_scope,
 * lockmgr_release_owner, lockmgr_hold_mark/_restore and the wake-up rule lm_wakeup().  The grant
 * rules (README "Grant rules") are implemented here and nowhere else: acquire_held/acquire_new
 * decide at request time, lm_wakeup decides on every change that can unblock a waiter.
 */
#include <stdlib.h>

#include "lockmgr_int.h"

static bool token_next(struct lockmgr *lm, uint64_t *tok)
{
    if (lm->last_token >= lm->cfg.token_ceiling)
        return false;
    *tok = ++lm->last_token;
    return true;
}

static void hold_link(struct lm_hold *h, struct lm_key *k, struct lockmgr_owner *o)
{
    h->key = k;
    h->owner = o;
    h->kprev = NULL;
    h->knext = k->holders;
    if (k->holders)
        k->holders->kprev = h;
    k->holders = h;
    h->oprev = NULL;
    h->onext = o->holds;
    if (o->holds)
        o->holds->oprev = h;
    o->holds = h;
    o->nholds++;
}

static void hold_unlink(struct lockmgr *lm, struct lm_hold *h)
{
    struct lm_key *k = h->key;
    struct lockmgr_owner *o = h->owner;
    if (h->kprev)
        h->kprev->knext = h->knext;
    else
        k->holders = h->knext;
    if (h->knext)
        h->knext->kprev = h->kprev;
    if (h->oprev)
        h->oprev->onext = h->onext;
    else
        o->holds = h->onext;
    if (h->onext)
        h->onext->oprev = h->oprev;
    o->nholds--;
    lm_qhot_refresh(lm, k);
}

/* Sets h's mode in scope (0 = none, else mode + 1), keeping k->nheld and the deadlock
 * search's view of the key in step. Returns true if the effective mode changed. */
static bool hold_set(struct lockmgr *lm, struct lm_hold *h, int scope, uint8_t v)
{
    int before = lm_hold_mode(h);
    h->smode[scope] = v;
    int after = lm_hold_mode(h);
    if (before == after)
        return false;
    if (before >= 0)
        h->key->nheld[before]--;
    if (after >= 0)
        h->key->nheld[after]++;
    lm_qhot_refresh(lm, h->key);
    return true;
}

static uint8_t queue_mask(const struct lockmgr *lm, const struct lm_key *k)
{
    uint8_t mask = 0;
    const struct lm_queue *q = lm_queue_of(lm, k);
    if (q)
        for (int m = 0; m < LOCKMGR_NMODES; m++)
            if (q->nwait[m])
                mask |= LM_BIT(m);
    return mask;
}

/* Grants a queued wait (removing it from the queue) and queues the owner's callback. */
static void grant_wait(struct lockmgr *lm, struct lm_wait *w, uint64_t now_us)
{
    struct lockmgr_owner *o = LM_WAIT_OWNER(w);
    uint64_t tok;
    if (!token_next(lm, &tok)) {
        lm_wait_remove(lm, w);
        lm_event_push(lm, o, LOCKMGR_TOKENS_EXHAUSTED, 0, NULL);
        return;
    }
    struct lm_hold *h = w->hold;
    struct lm_key *k = w->key;
    lm_wait_unqueue(lm, w);
    if (!w->upgrade)
        hold_link(h, k, o);
    hold_set(lm, h, w->scope, (uint8_t)(w->mode + 1));
    h->token = tok;
    h->since_us = now_us;
    lm->st.grants++;
    lm_event_push(lm, o, LOCKMGR_OK, tok, NULL);
}

/*
 * Grants exactly the waiters of k that can now be granted, in queue order: an upgrade when
 * no other holder conflicts, a new request when neither a holder nor an earlier waiter
 * that stays queued conflicts.  Stops at the first point where not even a reader could be
 * granted, so a long queue behind a blocked exclusive costs O(1).
 */
void lm_wakeup(struct lockmgr *lm, struct lm_key *k, uint64_t now_us)
{
    uint8_t waitmask = 0;
    struct lm_queue *q = lm_queue_of(lm, k);
    struct lm_wait *w = q ? q->head : NULL;
    while (w) {
        struct lm_wait *next = w->qnext;
        uint8_t conflicts = lm_conflicts[w->mode];
        if (w->upgrade) {
            if (!(conflicts & lm_held_mask(k, lm_hold_mode(w->hold))))
                grant_wait(lm, w, now_us);
            else
                waitmask |= LM_BIT(w->mode);
        } else {
            uint8_t blocked = lm_held_mask(k, -1) | waitmask;
            if (!(conflicts & blocked)) {
                grant_wait(lm, w, now_us);
            } else {
                waitmask |= LM_BIT(w->mode);
                if (lm_conflicts[LOCKMGR_READ] & (lm_held_mask(k, -1) | waitmask))
                    break;
            }
        }
        w = next;
    }
}

/* Starts waiting, then resolves any deadlock the new wait closes. */
static enum lockmgr_status start_wait(struct lockmgr *lm, struct lockmgr_owner *o, struct lm_key *k,
                                      struct lm_hold *h, bool upgrade, enum lockmgr_mode mode,
                                      enum lockmgr_scope scope, uint64_t deadline_us,
                                      uint64_t now_us)
{
    struct lm_wait *w = &o->wait;
    w->key = k;
    w->keylen = k->len;
    w->hold = h;
    w->upgrade = upgrade;
    w->mode = (uint8_t)mode;
    w->scope = (uint8_t)scope;
    w->since_us = now_us;
    w->deadline_us = deadline_us;
    w->seq = ++lm->seq;
    w->ord = upgrade ? w->seq : (LM_ORD_NEW | w->seq);
    lm_wait_enqueue(lm, w);
    if (!upgrade)
        lm->nlocks++;
    lm->st.waits++;

    /* The default policy needs no edges; a policy of the caller's reads them all. */
    bool describe = lm->cfg.victim != NULL;
    while (lm_deadlock_find(lm, o, describe)) {
        lm->st.deadlocks++;
        lockmgr_victim_cb pick = lm->cfg.victim ? lm->cfg.victim : lm_victim_default;
        size_t vi = pick(lm->cfg.victim_arg, &lm->cycle);
        if (vi >= lm->cycle.n)
            vi = 0;
        struct lockmgr_owner *v = lm_cycle_owner(lm, vi);
        struct lm_key *vk = v->wait.key;
        lm_wait_remove(lm, &v->wait);
        if (v != o)
            lm_event_push(lm, v, LOCKMGR_DEADLOCK, 0, lm_cycle_copy(&lm->cycle));
        lm_wakeup(lm, vk, now_us);
        if (v == o)
            return LOCKMGR_DEADLOCK;
        lm_key_maybe_free(lm, vk);
        if (!w->active)
            break;
    }
    return w->active ? LOCKMGR_WAITING : LOCKMGR_OK;
}

/* o already holds k through h. */
static enum lockmgr_status acquire_held(struct lockmgr *lm, struct lockmgr_owner *o,
                                        struct lm_key *k, struct lm_hold *h, enum lockmgr_mode mode,
                                        enum lockmgr_scope scope, uint64_t deadline_us,
                                        uint64_t now_us, bool wait, uint64_t *token)
{
    int held = lm_hold_mode(h);
    if ((int)mode <= held) {
        /* Re-request: no stacking, same token; the scope takes the mode too. */
        if (h->smode[scope] < mode + 1)
            h->smode[scope] = (uint8_t)(mode + 1);
        if (queue_mask(lm, k) & lm_conflicts[mode])
            lm->st.bypass_reentry++;
        *token = h->token;
        return LOCKMGR_OK;
    }
    if (!(lm_conflicts[mode] & lm_held_mask(k, held))) {
        uint64_t tok;
        if (!token_next(lm, &tok))
            return LOCKMGR_TOKENS_EXHAUSTED;
        if (queue_mask(lm, k) & lm_conflicts[mode])
            lm->st.bypass_upgrade++;
        hold_set(lm, h, scope, (uint8_t)(mode + 1));
        h->token = tok;
        h->since_us = now_us;
        lm->st.grants++;
        *token = tok;
        return LOCKMGR_OK;
    }
    if (!wait)
        return LOCKMGR_WOULD_BLOCK;
    if (deadline_us && deadline_us <= now_us) {
        lm->st.timeouts++;
        return LOCKMGR_TIMEOUT;
    }
    return start_wait(lm, o, k, h, true, mode, scope, deadline_us, now_us);
}

/* o holds nothing on k. */
static enum lockmgr_status acquire_new(struct lockmgr *lm, struct lockmgr_owner *o,
                                       struct lm_key *k, enum lockmgr_mode mode,
                                       enum lockmgr_scope scope, uint64_t deadline_us,
                                       uint64_t now_us, bool wait, uint64_t *token)
{
    if (lm->cfg.max_locks && lm->nlocks >= lm->cfg.max_locks) {
        lm->st.limit_hits++;
        return LOCKMGR_LIMIT;
    }
    bool grantable = !(lm_conflicts[mode] & (lm_held_mask(k, -1) | queue_mask(lm, k)));
    if (!grantable && !wait)
        return LOCKMGR_WOULD_BLOCK;
    if (!grantable && deadline_us && deadline_us <= now_us) {
        lm->st.timeouts++;
        return LOCKMGR_TIMEOUT;
    }
    struct lm_hold *h = calloc(1, sizeof(*h));
    if (!h)
        return LOCKMGR_NOMEM;
    if (!grantable)
        return start_wait(lm, o, k, h, false, mode, scope, deadline_us, now_us);
    uint64_t tok;
    if (!token_next(lm, &tok)) {
        free(h);
        return LOCKMGR_TOKENS_EXHAUSTED;
    }
    hold_link(h, k, o);
    hold_set(lm, h, scope, (uint8_t)(mode + 1));
    h->token = tok;
    h->since_us = now_us;
    lm->nlocks++;
    lm->st.grants++;
    *token = tok;
    return LOCKMGR_OK;
}

/* If o's result arrived during this call (granted while resolving deadlocks), take it. */
static enum lockmgr_status take_own_result(struct lockmgr *lm, struct lockmgr_owner *o,
                                           uint64_t *token)
{
    LM_ASSERT(o->ev_pending);
    enum lockmgr_status st = o->ev.status;
    *token = o->ev.token;
    lm_event_drop(lm, o);
    return st;
}

static bool args_valid(const void *key, size_t keylen, enum lockmgr_mode mode,
                       enum lockmgr_scope scope)
{
    return key && keylen >= 1 && keylen <= LOCKMGR_KEY_MAX && (unsigned)mode < LOCKMGR_NMODES &&
           (scope == LOCKMGR_SESSION || scope == LOCKMGR_XACT);
}

static enum lockmgr_status acquire(struct lockmgr *lm, struct lockmgr_owner *o, const void *key,
                                   size_t keylen, enum lockmgr_mode mode, enum lockmgr_scope scope,
                                   uint64_t deadline_us, uint64_t now_us, bool wait,
                                   uint64_t *token)
{
    if (!args_valid(key, keylen, mode, scope) || !token)
        return LOCKMGR_INVALID;
    if (o->wait.active || o->ev_pending)
        return LOCKMGR_BUSY;
    lm_cycle_forget(lm);
    struct lm_key *k = lm_key_get(lm, key, keylen);
    if (!k)
        return LOCKMGR_NOMEM;
    struct lm_hold *h = lm_hold_find(k, o);
    enum lockmgr_status st;
    if (h)
        st = acquire_held(lm, o, k, h, mode, scope, deadline_us, now_us, wait, token);
    else
        st = acquire_new(lm, o, k, mode, scope, deadline_us, now_us, wait, token);
    if (st == LOCKMGR_OK && o->ev_pending)
        st = take_own_result(lm, o, token);
    lm_key_maybe_free(lm, k);
    lm_deliver(lm);
    return st;
}

enum lockmgr_status lockmgr_acquire(struct lockmgr *lm, struct lockmgr_owner *o, const void *key,
                                    size_t keylen, enum lockmgr_mode mode, enum lockmgr_scope scope,
                                    uint64_t deadline_us, uint64_t now_us, uint64_t *token)
{
    return acquire(lm, o, key, keylen, mode, scope, deadline_us, now_us, true, token);
}

enum lockmgr_status lockmgr_try_acquire(struct lockmgr *lm, struct lockmgr_owner *o,
                                        const void *key, size_t keylen, enum lockmgr_mode mode,
                                        enum lockmgr_scope scope, uint64_t now_us, uint64_t *token)
{
    return acquire(lm, o, key, keylen, mode, scope, 0, now_us, false, token);
}

/*
 * Drops the scopes in scope_mask (bit per scope) from h, frees h when nothing is left,
 * and wakes k's waiters if the effective mode dropped.  An upgrade wait on a hold that
 * disappears is cancelled (LOCKMGR_CANCELED to its owner).
 */
static void hold_release(struct lockmgr *lm, struct lm_hold *h, unsigned scope_mask,
                         uint64_t now_us)
{
    struct lm_key *k = h->key;
    struct lockmgr_owner *o = h->owner;
    bool changed = false;
    for (int s = 0; s < 2; s++)
        if (scope_mask & (1u << s))
            changed |= hold_set(lm, h, s, 0);
    if (lm_hold_mode(h) < 0) {
        if (o->wait.active && o->wait.hold == h) {
            lm_wait_remove(lm, &o->wait);
            lm_event_push(lm, o, LOCKMGR_CANCELED, 0, NULL);
            lm->st.cancels++;
        }
        hold_unlink(lm, h);
        free(h);
        lm->nlocks--;
    }
    if (changed)
        lm_wakeup(lm, k, now_us);
    lm_key_maybe_free(lm, k);
}

enum lockmgr_status lockmgr_release(struct lockmgr *lm, struct lockmgr_owner *o, const void *key,
                                    size_t keylen, enum lockmgr_scope scope, uint64_t now_us)
{
    lm_cycle_forget(lm);
    if (!args_valid(key, keylen, LOCKMGR_READ, scope))
        return LOCKMGR_INVALID;
    struct lm_key *k = lm_key_find(lm, key, keylen, lm_hash(key, keylen));
    struct lm_hold *h = k ? lm_hold_find(k, o) : NULL;
    if (!h || !h->smode[scope])
        return LOCKMGR_NOT_HELD;
    hold_release(lm, h, 1u << scope, now_us);
    lm_deliver(lm);
    return LOCKMGR_OK;
}

void lockmgr_hold_mark(const struct lockmgr *lm, const struct lockmgr_owner *o, const void *key,
                       size_t keylen, struct lockmgr_hold_mark *mark)
{
    *mark = (struct lockmgr_hold_mark){0};
    if (!args_valid(key, keylen, LOCKMGR_READ, LOCKMGR_SESSION))
        return;
    struct lm_key *k = lm_key_find(lm, key, keylen, lm_hash(key, keylen));
    struct lm_hold *h = k ? lm_hold_find(k, o) : NULL;
    if (!h)
        return;
    *mark = (struct lockmgr_hold_mark){.held = true,
                                       .smode = {h->smode[0], h->smode[1]},
                                       .token = h->token,
                                       .since_us = h->since_us};
}

enum lockmgr_status lockmgr_hold_restore(struct lockmgr *lm, struct lockmgr_owner *o,
                                         const void *key, size_t keylen,
                                         const struct lockmgr_hold_mark *mark, uint64_t now_us)
{
    lm_cycle_forget(lm);
    if (!args_valid(key, keylen, LOCKMGR_READ, LOCKMGR_SESSION) || !mark ||
        mark->smode[0] > LOCKMGR_NMODES || mark->smode[1] > LOCKMGR_NMODES)
        return LOCKMGR_INVALID;
    if (o->wait.active)
        return LOCKMGR_BUSY;
    struct lm_key *k = lm_key_find(lm, key, keylen, lm_hash(key, keylen));
    struct lm_hold *h = k ? lm_hold_find(k, o) : NULL;
    if (!h)
        return LOCKMGR_NOT_HELD;
    if (!mark->held || (!mark->smode[0] && !mark->smode[1])) {
        hold_release(lm, h, 3u, now_us); /* the grant created the hold */
    } else {
        h->token = mark->token;
        h->since_us = mark->since_us;
        bool changed = hold_set(lm, h, 0, mark->smode[0]);
        changed |= hold_set(lm, h, 1, mark->smode[1]);
        if (changed)
            lm_wakeup(lm, k, now_us);
    }
    lm_deliver(lm);
    return LOCKMGR_OK;
}

size_t lockmgr_release_scope(struct lockmgr *lm, struct lockmgr_owner *o, enum lockmgr_scope scope,
                             uint64_t now_us)
{
    size_t n = 0;
    lm_cycle_forget(lm);
    if (scope != LOCKMGR_SESSION && scope != LOCKMGR_XACT)
        return 0;
    for (struct lm_hold *h = o->holds, *next; h; h = next) {
        next = h->onext;
        if (h->smode[scope]) {
            hold_release(lm, h, 1u << scope, now_us);
            n++;
        }
    }
    lm_deliver(lm);
    return n;
}

size_t lockmgr_release_owner(struct lockmgr *lm, struct lockmgr_owner *o, uint64_t now_us)
{
    size_t n = 0;
    lm_cycle_forget(lm);
    if (o->wait.active) {
        struct lm_key *k = o->wait.key;
        lm_wait_remove(lm, &o->wait);
        lm_wakeup(lm, k, now_us);
        lm_key_maybe_free(lm, k);
    }
    lm_event_drop(lm, o);
    while (o->holds) {
        hold_release(lm, o->holds, 3u, now_us);
        n++;
    }
    lm_deliver(lm);
    return n;
}
