/*
 * deadlock.c: deadlock detection when a wait begins, and the victim policy.
 *
 * Interface: lm_deadlock_find(lm, start) searches the wait-for graph from the owner whose
 * wait just began and, if it lies on a cycle, describes one cycle in lm->cycle.
 * lm_victim_default() is the one default victim policy; lm_cycle_copy() makes an owned
 * copy for a victim other than the requester.  See lockmgr/README.md, "Deadlock
 * detection".
 *
 * The graph is never built.  Nodes are owners; a waiting owner O (waiting for mode M on
 * key K) has a hard edge to every other holder of K whose mode conflicts with M, and,
 * unless O is an upgrade, a soft edge to every waiter ahead of it in K's queue whose
 * requested mode conflicts with M.  Those are exactly the conditions under which
 * lm_wakeup() would not grant O, so a cycle is a real deadlock and vice versa.
 *
 * Only a cycle through the new waiter can be new (every edge added since the last
 * check starts or ends at it), so one depth-first search from it suffices.  The search
 * is iterative over lm->stack, which has a slot per owner (sized by lockmgr_owner_new),
 * so it never allocates and has no depth cap.  Each owner is expanded at most once
 * (visit_gen).  To keep a long queue from costing O(n^2) edge visits, frames other than
 * the root share one cursor per (key, requested mode) over the holders and the queue:
 * whatever lies behind a shared cursor has already been pushed, so skipping it loses
 * nothing.  The root keeps private cursors because its own hold is skipped as a
 * self-edge, which would be an edge to the start for any other frame.
 */
#include <stdlib.h>
#include <string.h>

#include "lockmgr_int.h"

/* After 2^32 searches the marks could collide: clear them all and start over. */
static void gen_wrap(struct lockmgr *lm)
{
    for (struct lockmgr_owner *o = lm->owners; o; o = o->all_next)
        o->visit_gen = 0;
    for (size_t b = 0; b < lm->nbuckets; b++)
        for (struct lm_key *k = lm->buckets[b]; k; k = k->hnext)
            if (k->queue)
                k->queue->scan_gen = 0;
    lm->gen = 1;
}

static void scan_reset(struct lockmgr *lm, struct lm_key *k)
{
    struct lm_queue *q = k->queue;
    if (q->scan_gen == lm->gen)
        return;
    q->scan_gen = lm->gen;
    for (int m = 0; m < LOCKMGR_NMODES; m++) {
        q->hscan[m] = k->holders;
        q->wscan[m] = q->head;
    }
}

static void frame_init(struct lockmgr *lm, struct lm_frame *f, struct lockmgr_owner *o, bool root)
{
    const struct lm_wait *w = &o->wait;
    f->owner = o;
    f->phase = 0;
    /* A waiter alone in its queue is the only frame that will ever scan its key: it
     * keeps private cursors and the search never touches the queue. */
    f->shared = !root && (w->qprev || w->qnext);
    f->hcur = w->key->holders;
    f->wcur = w->qprev ? w->key->queue->head : NULL;
    if (f->shared)
        scan_reset(lm, w->key);
}

/* The next owner f's owner waits for (recording the edge in f), NULL when exhausted. */
static struct lockmgr_owner *frame_next(struct lm_frame *f)
{
    struct lockmgr_owner *o = f->owner;
    struct lm_wait *w = &o->wait;
    uint8_t conflicts = lm_conflicts[w->mode];
    if (f->phase == 0) {
        struct lm_hold **cur = f->shared ? &w->key->queue->hscan[w->mode] : &f->hcur;
        while (*cur) {
            struct lm_hold *h = *cur;
            int hm = lm_hold_mode(h);
            *cur = h->knext;
            if (h->owner != o && (conflicts & LM_BIT(hm))) {
                f->edge_soft = false;
                f->edge_mode = (uint8_t)hm;
                return h->owner;
            }
        }
        /* upgrades have no soft edges; the head of the queue has nobody ahead */
        f->phase = w->upgrade || !w->qprev ? 2 : 1;
    }
    if (f->phase == 1) {
        struct lm_wait **cur = f->shared ? &w->key->queue->wscan[w->mode] : &f->wcur;
        while (*cur && (*cur)->ord < w->ord) {
            struct lm_wait *x = *cur;
            *cur = x->qnext;
            if (conflicts & LM_BIT(x->mode)) {
                f->edge_soft = true;
                f->edge_mode = x->mode;
                return LM_WAIT_OWNER(x);
            }
        }
        f->phase = 2;
    }
    return NULL;
}

/* Fills lm->cycle from stack[0..depth], whose last frame's edge leads back to stack[0]. */
static void cycle_build(struct lockmgr *lm, size_t depth)
{
    for (size_t i = 0; i <= depth; i++) {
        const struct lm_frame *f = &lm->stack[i];
        const struct lockmgr_owner *blocker = lm->stack[i < depth ? i + 1 : 0].owner;
        const struct lm_wait *w = &f->owner->wait;
        struct lockmgr_cycle_edge *e = &lm->cyc_edges[i];
        e->waiter_id = f->owner->id;
        e->blocker_id = blocker->id;
        e->key = w->key->bytes;
        e->keylen = w->key->len;
        e->wanted = (enum lockmgr_mode)w->mode;
        e->blocker_mode = (enum lockmgr_mode)f->edge_mode;
        e->soft = f->edge_soft;
        e->wait_seq = w->seq;
        e->wait_since_us = w->since_us;
        lm->cyc_owners[i] = f->owner;
    }
    lm->cycle.n = depth + 1;
    lm->cycle.edges = lm->cyc_edges;
}

/*
 * A cycle through start needs an edge into it: a waiter whose request conflicts with a
 * mode start holds (hard), or a new request queued behind start's (soft).  Checking that
 * first costs O(start's holds) and spares the search for the common case of a waiter
 * nobody waits for.  Conservative: it may say yes when there is no such edge.
 */
static bool has_in_edge(const struct lockmgr_owner *start)
{
    for (const struct lm_hold *h = start->holds; h; h = h->onext) {
        const struct lm_queue *q = h->key->queue;
        if (!q)
            continue;
        uint8_t held = (uint8_t)LM_BIT(lm_hold_mode(h));
        for (int m = 0; m < LOCKMGR_NMODES; m++)
            if (q->nwait[m] && (lm_conflicts[m] & held))
                return true;
    }
    return start->wait.qnext != NULL;
}

/*
 * Depth-first search from start over hard and soft edges.  Returns true and fills
 * lm->cycle if start is on a cycle.  Cost O(owners + keys + holders + waiters reached);
 * no allocation; runs on the caller's thread inside lockmgr_acquire.
 */
bool lm_deadlock_find(struct lockmgr *lm, struct lockmgr_owner *start)
{
    if (!has_in_edge(start))
        return false;
    if (++lm->gen == 0)
        gen_wrap(lm);
    uint32_t gen = lm->gen;
    struct lm_frame *stack = lm->stack;
    size_t depth = 0;
    start->visit_gen = gen;
    frame_init(lm, &stack[0], start, true);
    for (;;) {
        struct lockmgr_owner *next = frame_next(&stack[depth]);
        if (!next) {
            if (depth == 0)
                return false;
            depth--;
            continue;
        }
        if (next == start) {
            cycle_build(lm, depth);
            return true;
        }
        if (next->visit_gen == gen || !next->wait.active)
            continue;
        next->visit_gen = gen;
        LM_ASSERT(depth + 1 < lm->ws_cap);
        frame_init(lm, &stack[++depth], next, false);
    }
}

/*
 * The victim policy: the waiter whose wait began last.  With detection at wait start that
 * is always the requester, so the default never disturbs an older waiter.  This is the
 * one place to change (or replace through lockmgr_config.victim) to prefer, say, a
 * transaction the proxy can replay invisibly.
 */
size_t lm_victim_default(void *arg, const struct lockmgr_cycle *cycle)
{
    size_t best = 0;
    for (size_t i = 1; i < cycle->n; i++)
        if (cycle->edges[i].wait_seq > cycle->edges[best].wait_seq)
            best = i;
    return best;
}

/* One owned allocation holding a cycle, its edges and its keys; NULL on OOM. */
void *lm_cycle_copy(const struct lockmgr_cycle *c)
{
    size_t keybytes = 0;
    for (size_t i = 0; i < c->n; i++)
        keybytes += c->edges[i].keylen;
    size_t size = sizeof(struct lockmgr_cycle) + c->n * sizeof(struct lockmgr_cycle_edge);
    struct lockmgr_cycle *copy = malloc(size + keybytes);
    if (!copy)
        return NULL;
    struct lockmgr_cycle_edge *edges = (struct lockmgr_cycle_edge *)(copy + 1);
    uint8_t *kp = (uint8_t *)(edges + c->n);
    for (size_t i = 0; i < c->n; i++) {
        edges[i] = c->edges[i];
        memcpy(kp, c->edges[i].key, c->edges[i].keylen);
        edges[i].key = kp;
        kp += c->edges[i].keylen;
    }
    copy->n = c->n;
    copy->edges = edges;
    return copy;
}

const struct lockmgr_cycle *lockmgr_last_cycle(const struct lockmgr *lm)
{
    return &lm->cycle;
}
