/*
 * deadlock.c: deadlock detection when a wait begins, and the victim policy.
 *
 * Interface: lm_deadlock_find(lm, start, describe) searches the wait-for graph from the
 * owner whose wait just began and, if it lies on a cycle, describes one cycle in lm->cycle
 * (when !describe and the cycle is the search stack itself, only its first edge: the rest
 * is written by lm_cycle_describe() when lockmgr_last_cycle[_head]() asks).
 * lm_victim_default() is the one default victim policy; lm_cycle_copy() makes an owned
 * copy for a victim other than the requester.  See lockmgr/README.md, "Deadlock
 * detection", for the graph, the two lemmas this file relies on and why it is complete.
 *
 * The graph is never built.  A waiting owner O (mode M on key K) has a hard edge to every
 * other holder of K whose mode conflicts with M and, unless O is an upgrade, a soft edge
 * to every request queued ahead of it on K that conflicts with M: exactly the conditions
 * under which lm_wakeup() leaves O waiting.
 *
 * Every out-edge of a waiter stays on its own key, so the search does not walk queues.
 * It is a depth-first search over "O reaches holder H of K": the holder modes O reaches
 * through K's queue are reach() of O's mode, its position and the position of the first
 * exclusive request on K (lemma 1), and whether a waiter on the start's own key reaches
 * the start is reaches_start() (lemma 2).  A queue of any length costs O(1); each key's
 * holders are walked at most once per holder-mode set, and the mode sets only grow
 * ({X} < {W,X} < {R,W,X}), so at most three times.  A key's holders are read from the
 * dense lm->qhot[] record when there is one holder, so a long chain of waits costs one
 * cache miss per key.  The stack has a slot per owner (an owner is pushed at most once),
 * nothing is allocated, and there is no depth limit.
 */
#include <stdlib.h>
#include <string.h>

#include "lockmgr_int.h"

#define ALL_MODES (LM_BIT(LOCKMGR_READ) | LM_BIT(LOCKMGR_WRITE) | LM_BIT(LOCKMGR_EXCLUSIVE))

struct search {
    struct lockmgr *lm;
    struct lockmgr_owner *start;
    uint32_t gen, qi0; /* qi0: the start's queue */
    int start_hm;      /* the start's mode on its key when it upgrades, else -1 */
};

/* How the search reached the start (cycle_build). */
enum lm_end { LM_END_HOLDER, LM_END_HARD, LM_END_SOFT };

/* After LM_GEN_MAX searches the marks could collide: clear them all and start over. */
static void gen_wrap(struct lockmgr *lm)
{
    memset(lm->qmark, 0, lm->ws_cap * sizeof(*lm->qmark));
    lm->gen = 1;
}

/*
 * Lemma 1: the holder modes a waiter reaches through its own queue.  An upgrade has hard
 * edges only.  A new request queued behind an exclusive request x (soft edge to x, which
 * conflicts with every holder) reaches every holder; otherwise only the holders it
 * conflicts with itself (for an exclusive request that is every holder too).
 */
static inline uint8_t reach(uint8_t mode, bool upgrade, uint64_t ord, uint64_t firstx)
{
    if (!upgrade && firstx < ord)
        return ALL_MODES;
    return lm_conflicts[mode];
}

/*
 * Lemma 2: does a waiter j (not the start) on the start's own key reach the start without
 * leaving the queue?  Only if the start upgrades: a new request is last in its queue and
 * holds nothing there.  LM_END_HARD: j reaches the start's hold (lemma 1).  Otherwise
 * LM_END_SOFT when j is a new request (behind every upgrade) whose mode conflicts with the
 * start's: the one case left is a write request behind a read-to-write upgrade, with no
 * exclusive request ahead of it (any such would make reach() all modes).  While the graph
 * is acyclic that case cannot close a cycle (README, lemma 2); it keeps the lemma exact.
 * -1: neither.
 */
static int reaches_start(const struct search *s, uint8_t jmode, bool jupg, uint8_t jreach)
{
    if (s->start_hm < 0)
        return -1;
    if (jreach & LM_BIT(s->start_hm))
        return LM_END_HARD;
    if (!jupg && (lm_conflicts[jmode] & LM_BIT(s->start->wait.mode)))
        return LM_END_SOFT;
    return -1;
}

/*
 * A cycle through start needs an edge into it: a waiter whose request conflicts with a
 * mode start holds (hard), or a request queued behind start's (soft).  Checking that
 * first costs O(start's holds) and spares the search for the common case of a waiter
 * nobody waits for.  Conservative: it may say yes when there is no such edge.
 */
static bool has_in_edge(const struct lockmgr *lm, const struct lockmgr_owner *start)
{
    for (const struct lm_hold *h = start->holds; h; h = h->onext) {
        const struct lm_queue *q = lm_queue_of(lm, h->key);
        if (!q)
            continue;
        uint8_t held = (uint8_t)LM_BIT(lm_hold_mode(h));
        for (int m = 0; m < LOCKMGR_NMODES; m++)
            if (q->nwait[m] && (lm_conflicts[m] & held))
                return true;
    }
    return start->wait.qnext != NULL;
}

#ifdef PGW_ASSERTS
/* Debug builds: the search's record of k's queue is what lm_qhot_refresh() and the queue
 * would give now, so a missed refresh fails loudly instead of missing a cycle. */
static bool qhot_ok(const struct lockmgr *lm, const struct lm_key *k)
{
    if (k->qi == LM_NO_QUEUE)
        return false;
    const struct lm_qhot *hot = &lm->qhot[k->qi];
    const struct lm_queue *q = &lm->queues[k->qi];
    if (hot->firstx != (q->xhead ? q->xhead->ord : UINT64_MAX))
        return false;
    size_t n = 0;
    const struct lm_hold *one = NULL;
    for (const struct lm_hold *h = k->holders; h; h = h->knext) {
        if (lm_hold_mode(h) >= 0) {
            n++;
            one = h;
        }
    }
    if (n != 1)
        return hot->h1 == NULL;
    const struct lm_wait *w = &one->owner->wait;
    if (hot->h1 != one->owner || hot->h1mode != lm_hold_mode(one))
        return false;
    if (!w->active)
        return hot->jqi == LM_NO_QUEUE;
    return hot->jqi == w->qi && hot->jmode == w->mode && hot->jupg == w->upgrade &&
           hot->jord == w->ord && w->key->qi == w->qi;
}
#endif

/* A holder reached from the top frame, and its own wait (jqi LM_NO_QUEUE: not waiting). */
struct cand {
    struct lockmgr_owner *j;
    uint64_t jord;
    uint32_t jqi;
    uint8_t hm, jmode;
    bool jupg;
};

/* The holder a frame for e, walking `modes`, gets from a key whose one holder the record
 * h describes (NULL: none): the only candidate, unless it is e itself or not in modes. */
static inline struct lockmgr_owner *sole_holder(const struct lm_qhot *h,
                                                const struct lockmgr_owner *e, uint8_t modes)
{
    return h->h1 != e && (modes & LM_BIT(h->h1mode)) ? h->h1 : NULL;
}

/*
 * The next holder of f's key that f's owner reaches (in f->modes, not itself): fills *c
 * and returns true, or returns false when f is done.  A frame is marked done (phase 2) as
 * soon as its last candidate is taken, so unwinding skips it without looking at its key.
 */
static inline bool frame_next(struct lm_frame *f, struct lm_hold **cur, const struct lm_qhot *fh,
                              struct cand *c)
{
    if (f->phase == 2)
        return false;
    if (f->phase == 0) {
        if (fh->h1) {
            f->phase = 2;
            struct lockmgr_owner *j = sole_holder(fh, f->owner, f->modes);
            if (!j)
                return false;
            *c = (struct cand){j, fh->jord, fh->jqi, fh->h1mode, fh->jmode, fh->jupg};
            return true;
        }
        f->phase = 1;
        *cur = f->owner->wait.key->holders;
    }
    while (*cur) {
        struct lm_hold *h = *cur;
        int m = lm_hold_mode(h);
        *cur = h->knext;
        LM_ASSERT(m >= 0);
        if (h->owner != f->owner && (f->modes & LM_BIT(m))) {
            const struct lm_wait *w = &h->owner->wait;
            if (!*cur)
                f->phase = 2;
            *c = (struct cand){h->owner, w->ord, w->qi, (uint8_t)m, w->mode, w->upgrade};
            return true;
        }
    }
    f->phase = 2;
    return false;
}

/* ---- describing the cycle ---- */

/*
 * The cycle is written edge by edge as a closed walk from the start is replayed.  An
 * owner met twice (an exclusive request used to pass through a queue can also be on the
 * stack) closes a shorter loop, which is cut out by going back to its first position and
 * keeping the later edge; meeting the start again closes the cycle early.  So the result
 * is a simple cycle (at most one edge per owner: it fits lm->cyc_edges) of real edges.
 */
struct emit {
    struct lockmgr *lm;
    size_t n;
    uint32_t gen;
    bool marks; /* an owner may come twice: mark positions */
    bool closed;
};

static void emit_init(struct emit *em, struct lockmgr *lm, bool marks)
{
    *em = (struct emit){.lm = lm, .marks = marks};
    if (!marks)
        return;
    if (++lm->cyc_gen == 0) {
        for (struct lockmgr_owner *o = lm->owners; o; o = o->all_next)
            o->cyc_gen = 0;
        lm->cyc_gen = 1;
    }
    em->gen = lm->cyc_gen;
}

/* Edge i of a cycle whose owners are all distinct and all edges hard and direct: frame i
 * waits for the holder of its key in mode hm (the next owner). */
static inline void edge_fill(struct lockmgr_cycle_edge *e, const struct lockmgr_owner *o,
                             uint8_t hm)
{
    const struct lm_wait *w = &o->wait;
    e->waiter_id = o->id;
    e->key = w->key->bytes;
    e->keylen = w->keylen;
    e->wanted = (enum lockmgr_mode)w->mode;
    e->blocker_mode = (enum lockmgr_mode)hm;
    e->soft = false;
    e->wait_seq = w->seq;
    e->wait_since_us = w->since_us;
}

/* Edge: waiter waits for the waiter of the next edge, which holds (or, if soft, wants)
 * blocker_mode. */
static inline void emit(struct emit *em, struct lockmgr_owner *waiter, uint8_t blocker_mode,
                        bool soft)
{
    struct lockmgr *lm = em->lm;
    if (em->closed || (em->n > 0 && waiter == lm->cyc_owners[0])) {
        em->closed = true;
        return;
    }
    struct lockmgr_cycle_edge *e;
    if (em->marks && waiter->cyc_gen == em->gen && waiter->cyc_pos < em->n &&
        lm->cyc_owners[waiter->cyc_pos] == waiter) {
        em->n = waiter->cyc_pos + 1; /* the previous edge already points at waiter */
        e = &lm->cyc_edges[waiter->cyc_pos];
    } else {
        LM_ASSERT(em->n < lm->ws_cap);
        if (em->marks) {
            waiter->cyc_gen = em->gen;
            waiter->cyc_pos = (uint32_t)em->n;
        }
        if (em->n > 0)
            lm->cyc_edges[em->n - 1].blocker_id = waiter->id;
        lm->cyc_owners[em->n] = waiter;
        e = &lm->cyc_edges[em->n++];
        edge_fill(e, waiter, blocker_mode);
    }
    e->blocker_mode = (enum lockmgr_mode)blocker_mode;
    e->soft = soft;
}

static inline bool direct(uint8_t mode, uint8_t hm)
{
    return lm_conflicts[mode] & LM_BIT(hm);
}

/* Edges for "e (waiting for mode) reaches holder t (mode hm) of its key through its
 * queue" (lemma 1). */
static void segment(struct emit *em, struct lockmgr_owner *e, uint8_t mode,
                    const struct lockmgr_owner *t, uint8_t hm)
{
    if (direct(mode, hm)) {
        emit(em, e, hm, false);
        return;
    }
    /* e is a new request behind an exclusive request x: e -> x soft, x -> t hard */
    const struct lm_wait *w = &e->wait;
    const struct lm_wait *x = em->lm->queues[w->qi].xhead;
    LM_ASSERT(x && x->ord < w->ord && !w->upgrade);
    struct lockmgr_owner *xo = LM_WAIT_OWNER(x);
    emit(em, e, LOCKMGR_EXCLUSIVE, true);
    if (xo != t) /* else x is t's own upgrade */
        emit(em, xo, hm, false);
}

/* Edges from..to of a direct cycle of depth + 1 frames whose last frame waits for the
 * start's hold in mode last_hm. */
static void direct_edges(struct lockmgr *lm, size_t from, size_t to, size_t depth, uint8_t last_hm)
{
    const struct lm_frame *st = lm->stack;
    struct lockmgr_cycle_edge *edges = lm->cyc_edges;
    for (size_t i = from; i <= to; i++) {
        struct lockmgr_owner *o = st[i].owner, *next = st[i < depth ? i + 1 : 0].owner;
        uint8_t hm = i < depth ? st[i + 1].via : last_hm;
        if (i + 32 <= to) /* the owners are independent misses: overlap them */
            __builtin_prefetch(st[i + 32].owner);
        edge_fill(&edges[i], o, hm);
        edges[i].blocker_id = next->id;
    }
}

/* The common case: every frame waits directly for the next one's hold (no queue to pass
 * through) and the last one for the start's, so the cycle is the stack, no owner twice.
 * Returns 0 as soon as an edge is not direct (the caller then takes the general way).
 * Checking reads only the stack; describing reads every owner, so with !describe only
 * edge 0 (the start's, whose wait is about to go) is written now. */
static size_t cycle_direct(struct lockmgr *lm, size_t depth, uint8_t last_hm, bool describe)
{
    direct_edges(lm, 0, describe ? depth : 0, depth, last_hm);
    lm->cyc_last_hm = last_hm;
    lm->cycle.described = describe ? depth + 1 : 1;
    return depth + 1;
}

#ifdef PGW_ASSERTS
/* Detection runs as each wait begins, so the request that closed the cycle (edge 0) began
 * its wait last: the default victim policy relies on it. */
static bool latest_first(const struct lockmgr_cycle *c)
{
    for (size_t i = 1; i < c->n; i++)
        if (c->edges[i].wait_seq >= c->edges[0].wait_seq)
            return false;
    return true;
}
#endif

/*
 * Fills lm->cycle: the stack frames 0..depth are a path of "reaches" from the start;
 * `last` (held in mode last_hm on the top frame's key) is the start itself
 * (LM_END_HOLDER) or a waiter on the start's key, waiting for lmode, that reaches it as
 * `end` says.  Frame owners are distinct and `last` is none of them (it would have been
 * found when first reached), so owners can repeat only through an exclusive request
 * passed on the way; without one the edges are written with no marks.
 */
static void cycle_build(const struct search *s, size_t depth, struct lockmgr_owner *last,
                        uint8_t last_hm, uint8_t lmode, int end, bool describe)
{
    struct lockmgr *lm = s->lm;
    const struct lm_frame *st = lm->stack;
    bool simple = true;
    for (size_t i = 0; simple && i <= depth; i++)
        simple = direct(st[i].mode, i < depth ? st[i + 1].via : last_hm);
    lm->cyc_direct = simple && end == LM_END_HOLDER;
    size_t n = lm->cyc_direct ? cycle_direct(lm, depth, last_hm, describe) : 0;
    if (n == 0) {
        if (end == LM_END_HARD)
            simple = simple && direct(lmode, (uint8_t)s->start_hm);
        else if (end == LM_END_SOFT)
            simple = simple && direct(lmode, s->start->wait.mode);
        struct emit em;
        emit_init(&em, lm, !simple);
        for (size_t i = 0; i < depth; i++)
            segment(&em, st[i].owner, st[i].mode, st[i + 1].owner, st[i + 1].via);
        segment(&em, st[depth].owner, st[depth].mode, last, last_hm);
        if (end == LM_END_HARD)
            segment(&em, last, lmode, s->start, (uint8_t)s->start_hm);
        else if (end == LM_END_SOFT) /* j -> start: soft and direct (lemma 2) */
            emit(&em, last, s->start->wait.mode, true);
        n = em.n;
        lm->cyc_edges[n - 1].blocker_id = s->start->id;
        lm->cycle.described = n;
    }
    lm->cycle.n = n;
    lm->cycle.edges = lm->cyc_edges;
    LM_ASSERT(n >= 2 && lm_cycle_owner(lm, 0) == s->start);
    LM_ASSERT(lm->cycle.described < n || latest_first(&lm->cycle));
}

void lm_cycle_describe(struct lockmgr *lm, size_t upto)
{
    struct lockmgr_cycle *c = &lm->cycle;
    if (upto > c->n)
        upto = c->n;
    if (c->described >= upto)
        return;
    LM_ASSERT(lm->cyc_direct); /* only a direct cycle is left undescribed */
    direct_edges(lm, c->described, upto - 1, c->n - 1, lm->cyc_last_hm);
    c->described = upto;
    LM_ASSERT(c->described < c->n || latest_first(c));
}

void lm_cycle_forget(struct lockmgr *lm)
{
    lm->cycle.n = 0;
    lm->cycle.described = 0;
}

/* The waiter of edge i of lm->cycle (for the victim policy's choice). */
struct lockmgr_owner *lm_cycle_owner(const struct lockmgr *lm, size_t i)
{
    LM_ASSERT(i < lm->cycle.n);
    return lm->cyc_direct ? lm->stack[i].owner : lm->cyc_owners[i];
}

/* ---- the search ---- */

static void search_init(struct search *s, struct lockmgr *lm, struct lockmgr_owner *start)
{
    const struct lm_wait *sw = &start->wait;
    if (++lm->gen > LM_GEN_MAX)
        gen_wrap(lm);
    s->lm = lm;
    s->start = start;
    s->gen = lm->gen;
    s->qi0 = sw->qi;
    s->start_hm = sw->upgrade ? lm_hold_mode(sw->hold) : -1;
}

/*
 * Depth-first search from start.  Returns true and fills lm->cycle if start is on a
 * cycle.  Cost O(waiting owners reached + holders of their keys); never allocates; runs
 * inside lockmgr_acquire on the caller's thread.
 */
bool lm_deadlock_find(struct lockmgr *lm, struct lockmgr_owner *start, bool describe)
{
    if (!has_in_edge(lm, start))
        return false;
    struct search s;
    search_init(&s, lm, start);
    const struct lm_wait *sw = &start->wait;
    LM_ASSERT(qhot_ok(lm, sw->key));
    const struct lm_qhot *fh = &lm->qhot[s.qi0];
    uint32_t *qmark = lm->qmark, genmark = s.gen << LM_MARK_BITS;
    uint8_t r0 = reach(sw->mode, sw->upgrade, sw->ord, fh->firstx);
    qmark[s.qi0] = genmark | r0;
    struct lm_frame *stack = lm->stack, *f = stack;
    *f = (struct lm_frame){.owner = start, .qi = s.qi0, .modes = r0, .mode = sw->mode};
    for (;;) {
        struct cand c;
        if (!frame_next(f, &lm->hcur[f - stack], fh, &c)) {
            do { /* unwind past the frames with nothing left */
                if (f == stack)
                    return false;
                f--;
            } while (f->phase == 2);
            fh = &lm->qhot[f->qi];
            continue;
        }
        if (c.j == start) {
            cycle_build(&s, (size_t)(f - stack), start, c.hm, 0, LM_END_HOLDER, describe);
            return true;
        }
        if (c.jqi == LM_NO_QUEUE)
            continue; /* not waiting: no out-edges */
        /* j holds f's key in mode c.hm and is reached; where does its own wait lead? */
        LM_ASSERT(qhot_ok(lm, f->owner->wait.key) && qhot_ok(lm, c.j->wait.key));
        const struct lm_qhot *jh = &lm->qhot[c.jqi];
        uint8_t r = reach(c.jmode, c.jupg, c.jord, jh->firstx);
        if (c.jqi == s.qi0) {
            int end = reaches_start(&s, c.jmode, c.jupg, r);
            if (end >= 0) {
                cycle_build(&s, (size_t)(f - stack), c.j, c.hm, c.jmode, end, describe);
                return true;
            }
        }
        /* A frame for j on a key with one holder would get sole_holder() and stop there
         * if that is not waiting (the start always is): no frame, and nothing to claim. */
        if (jh->h1 && (!sole_holder(jh, c.j, r) || jh->jqi == LM_NO_QUEUE))
            continue;
        uint32_t mark = qmark[c.jqi];
        uint8_t done = (mark & ~(uint32_t)ALL_MODES) == genmark ? (uint8_t)(mark & ALL_MODES) : 0;
        uint8_t fresh = r & (uint8_t)~done;
        if (!fresh)
            continue; /* those holders are walked by another frame */
        qmark[c.jqi] = genmark | done | fresh;
        LM_ASSERT((size_t)(f - stack) + 1 < lm->ws_cap);
        *++f = (struct lm_frame){
            .owner = c.j, .qi = c.jqi, .modes = fresh, .via = c.hm, .mode = c.jmode};
        fh = jh;
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
    (void)arg;
    (void)cycle;
    /* Edge 0's waiter is the requester, and detection runs as each wait begins, so its
     * wait is the latest of the cycle (latest_first): no need to read 10^4 edges, which
     * are not even written yet when the caller has not asked for them. */
    return 0;
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
    copy->n = copy->described = c->n;
    copy->edges = edges;
    return copy;
}

const struct lockmgr_cycle *lockmgr_last_cycle(struct lockmgr *lm)
{
    lm_cycle_describe(lm, lm->cycle.n);
    return &lm->cycle;
}

const struct lockmgr_cycle *lockmgr_last_cycle_head(struct lockmgr *lm, size_t max_edges)
{
    lm_cycle_describe(lm, max_edges);
    return &lm->cycle;
}
