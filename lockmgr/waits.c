/*
 * waits.c: wait queues, deadlines and the delivery of wait outcomes.
 *
 * Owns: the per-key FIFO queue (upgrades first, then new requests, each in arrival
 * order), the deadline heap behind lockmgr_next_deadline/lockmgr_expire,
 * lockmgr_cancel_wait, and the result queue drained by lm_deliver() at the end of every
 * public call, so callbacks never see a half-updated table.  See lockmgr/README.md.
 */
#include <stdlib.h>
#include <string.h>

#include "lockmgr_int.h"

/* ---- deadline heap, ordered by (deadline, seq) ---- */

static bool heap_less(const struct lm_wait *a, const struct lm_wait *b)
{
    return a->deadline_us < b->deadline_us || (a->deadline_us == b->deadline_us && a->seq < b->seq);
}

static void heap_set(struct lockmgr *lm, size_t i, struct lm_wait *w)
{
    lm->heap[i] = w;
    w->heap_idx = (uint32_t)i;
}

static void heap_up(struct lockmgr *lm, size_t i)
{
    struct lm_wait *w = lm->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(w, lm->heap[parent]))
            break;
        heap_set(lm, i, lm->heap[parent]);
        i = parent;
    }
    heap_set(lm, i, w);
}

static void heap_down(struct lockmgr *lm, size_t i)
{
    struct lm_wait *w = lm->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= lm->heap_n)
            break;
        if (c + 1 < lm->heap_n && heap_less(lm->heap[c + 1], lm->heap[c]))
            c++;
        if (!heap_less(lm->heap[c], w))
            break;
        heap_set(lm, i, lm->heap[c]);
        i = c;
    }
    heap_set(lm, i, w);
}

static void heap_remove(struct lockmgr *lm, struct lm_wait *w)
{
    size_t i = w->heap_idx;
    w->heap_idx = LM_NO_HEAP;
    struct lm_wait *last = lm->heap[--lm->heap_n];
    if (last == w)
        return;
    heap_set(lm, i, last);
    heap_up(lm, i);
    heap_down(lm, last->heap_idx);
}

uint64_t lockmgr_next_deadline(const struct lockmgr *lm)
{
    return lm->heap_n ? lm->heap[0]->deadline_us : UINT64_MAX;
}

/* ---- queues ---- */

/* Takes a free queue slot for k; there is always one (table.c, workspace_reserve). */
static struct lm_queue *queue_open(struct lockmgr *lm, struct lm_key *k)
{
    uint32_t qi = lm->qfree;
    LM_ASSERT(qi != LM_NO_QUEUE);
    struct lm_queue *q = &lm->queues[qi];
    lm->qfree = q->next_free;
    memset(q, 0, sizeof(*q));
    lm->qhot[qi].firstx = UINT64_MAX;
    k->qi = qi;
    lm_qhot_recompute(lm, k);
    return q;
}

static void queue_close(struct lockmgr *lm, struct lm_key *k)
{
    lm->queues[k->qi].next_free = lm->qfree;
    lm->qfree = k->qi;
    k->qi = LM_NO_QUEUE;
}

/* Links w after `after` (NULL: at the front) on the list given by the field offsets. */
#define LIST_INSERT(head, tail, after, w, prev, next)                                              \
    do {                                                                                           \
        (w)->prev = (after);                                                                       \
        (w)->next = (after) ? (after)->next : (head);                                              \
        if ((w)->next)                                                                             \
            (w)->next->prev = (w);                                                                 \
        else                                                                                       \
            (tail) = (w);                                                                          \
        if (after)                                                                                 \
            (after)->next = (w);                                                                   \
        else                                                                                       \
            (head) = (w);                                                                          \
    } while (0)

#define LIST_REMOVE(head, tail, w, prev, next)                                                     \
    do {                                                                                           \
        if ((w)->prev)                                                                             \
            (w)->prev->next = (w)->next;                                                           \
        else                                                                                       \
            (head) = (w)->next;                                                                    \
        if ((w)->next)                                                                             \
            (w)->next->prev = (w)->prev;                                                           \
        else                                                                                       \
            (tail) = (w)->prev;                                                                    \
    } while (0)

/* Links w into its key's queue (opening one if needed) and the deadline heap.  Never
 * allocates: queue slots and the heap have room for every owner (table.c). */
void lm_wait_enqueue(struct lockmgr *lm, struct lm_wait *w)
{
    struct lm_key *k = w->key;
    struct lm_queue *q = k->qi == LM_NO_QUEUE ? queue_open(lm, k) : &lm->queues[k->qi];
    struct lm_wait *after = w->upgrade ? q->upg_last : q->tail;
    LIST_INSERT(q->head, q->tail, after, w, qprev, qnext);
    if (w->upgrade)
        q->upg_last = w;
    if (w->mode == LOCKMGR_EXCLUSIVE) {
        after = w->upgrade ? q->xupg_last : q->xtail;
        LIST_INSERT(q->xhead, q->xtail, after, w, xprev, xnext);
        if (w->upgrade)
            q->xupg_last = w;
        lm->qhot[k->qi].firstx = q->xhead->ord;
    }
    q->nwait[w->mode]++;
    w->qi = k->qi;
    w->active = true;
    lm->nwaiters++;
    if (w->deadline_us) {
        LM_ASSERT(lm->heap_n < lm->ws_cap);
        heap_set(lm, lm->heap_n++, w);
        heap_up(lm, lm->heap_n - 1);
    }
    /* the owner is waiting now: the search's view of its keys (and of k) changed */
    struct lockmgr_owner *o = LM_WAIT_OWNER(w);
    lm_qhot_refresh_holds(lm, o);
}

/* Takes w off its queue and the heap; frees the queue slot when it empties.  The hold is
 * untouched (the caller grants or frees it). */
void lm_wait_unqueue(struct lockmgr *lm, struct lm_wait *w)
{
    struct lm_key *k = w->key;
    struct lm_queue *q = &lm->queues[k->qi];
    if (q->upg_last == w)
        q->upg_last = w->qprev;
    LIST_REMOVE(q->head, q->tail, w, qprev, qnext);
    if (w->mode == LOCKMGR_EXCLUSIVE) {
        if (q->xupg_last == w)
            q->xupg_last = w->xprev;
        LIST_REMOVE(q->xhead, q->xtail, w, xprev, xnext);
        lm->qhot[k->qi].firstx = q->xhead ? q->xhead->ord : UINT64_MAX;
    }
    q->nwait[w->mode]--;
    if (!q->head)
        queue_close(lm, k);
    if (w->heap_idx != LM_NO_HEAP)
        heap_remove(lm, w);
    w->active = false;
    w->qprev = w->qnext = NULL;
    w->qi = LM_NO_QUEUE;
    lm->nwaiters--;
    lm_qhot_refresh_holds(lm, LM_WAIT_OWNER(w));
}

/* Ends w without a grant; frees a new request's preallocated hold.  The caller wakes the
 * key (the queue changed) and frees it if empty. */
void lm_wait_remove(struct lockmgr *lm, struct lm_wait *w)
{
    lm_wait_unqueue(lm, w);
    if (!w->upgrade) {
        free(w->hold);
        lm->nlocks--;
    }
    w->hold = NULL;
}

enum lockmgr_status lockmgr_cancel_wait(struct lockmgr *lm, struct lockmgr_owner *o,
                                        uint64_t now_us)
{
    lm_cycle_forget(lm);
    if (!o->wait.active)
        return LOCKMGR_NOT_WAITING;
    struct lm_key *k = o->wait.key;
    lm_wait_remove(lm, &o->wait);
    lm->st.cancels++;
    lm_wakeup(lm, k, now_us);
    lm_key_maybe_free(lm, k);
    lm_deliver(lm);
    return LOCKMGR_OK;
}

size_t lockmgr_expire(struct lockmgr *lm, uint64_t now_us)
{
    size_t n = 0;
    lm_cycle_forget(lm);
    while (lm->heap_n && lm->heap[0]->deadline_us <= now_us) {
        struct lm_wait *w = lm->heap[0];
        struct lm_key *k = w->key;
        lm_wait_remove(lm, w);
        lm_event_push(lm, LM_WAIT_OWNER(w), LOCKMGR_TIMEOUT, 0, NULL);
        lm->st.timeouts++;
        n++;
        lm_wakeup(lm, k, now_us);
        lm_key_maybe_free(lm, k);
    }
    lm_deliver(lm);
    return n;
}

/* ---- results ---- */

/* Queues o's wait outcome; mem (owned, may be NULL) is the cycle copy for DEADLOCK. */
void lm_event_push(struct lockmgr *lm, struct lockmgr_owner *o, enum lockmgr_status st,
                   uint64_t token, void *mem)
{
    LM_ASSERT(!o->ev_pending);
    o->ev_pending = true;
    o->ev.status = st;
    o->ev.token = token;
    o->ev.cycle = mem;
    o->ev_mem = mem;
    o->ev_next = NULL;
    if (lm->ev_tail)
        lm->ev_tail->ev_next = o;
    else
        lm->ev_head = o;
    lm->ev_tail = o;
}

/* Forgets o's undelivered result, if any. */
void lm_event_drop(struct lockmgr *lm, struct lockmgr_owner *o)
{
    if (!o->ev_pending)
        return;
    struct lockmgr_owner **p = &lm->ev_head, *prev = NULL;
    while (*p != o) {
        prev = *p;
        p = &(*p)->ev_next;
    }
    *p = o->ev_next;
    if (lm->ev_tail == o)
        lm->ev_tail = prev;
    o->ev_pending = false;
    free(o->ev_mem);
    o->ev_mem = NULL;
}

/* Calls back every queued result in order.  Re-entrant calls only queue; the outermost
 * call drains, so callbacks may call into lm (and free their own owner). */
void lm_deliver(struct lockmgr *lm)
{
    if (lm->delivering)
        return;
    lm->delivering = true;
    while (lm->ev_head) {
        struct lockmgr_owner *o = lm->ev_head;
        lm->ev_head = o->ev_next;
        if (!lm->ev_head)
            lm->ev_tail = NULL;
        struct lockmgr_result res = o->ev;
        void *mem = o->ev_mem;
        o->ev_pending = false;
        o->ev_mem = NULL;
        if (o->cb)
            o->cb(o, o->udata, &res);
        free(mem);
    }
    lm->delivering = false;
}
