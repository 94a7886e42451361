/*
 * lockmgr_int.h: data structures shared by the lockmgr/ source files.  Not installed: the
 * include path keeps it private to the library.  Invariants are in lockmgr/README.md.
 */
#ifndef PGW_LOCKMGR_INT_H
#define PGW_LOCKMGR_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lockmgr/lockmgr.h"

#ifdef PGW_ASSERTS
/* PGW_ASSERTS means checked, whatever the build type (-DPGW_SANITIZE=ON on a Release
 * tree defines NDEBUG too). */
#undef NDEBUG
#include <assert.h>
#define LM_ASSERT(x) assert(x)
#else
#define LM_ASSERT(x) ((void)0)
#endif

#define LM_BIT(m) (1u << (m))

/* lm_conflicts[m]: the modes that may not be held by another owner while m is held. */
extern const uint8_t lm_conflicts[LOCKMGR_NMODES];

/* One (owner, key) hold; both scopes share it, the stronger mode governs.  The fields the
 * deadlock search reads come first (one cache line). */
struct lm_hold {
    struct lm_hold *knext, *kprev; /* key->holders */
    struct lockmgr_owner *owner;
    uint8_t smode[2]; /* per scope: 0 = not held, else mode + 1 */
    struct lm_key *key;
    struct lm_hold *onext, *oprev; /* owner->holds */
    uint64_t token;                /* of the latest grant (first grant or upgrade) */
    uint64_t since_us;
};

/* An owner's one wait; embedded in the owner.  The fields the deadlock search and the cycle
 * description read come first: with the owner's id they fill its first cache line. */
struct lm_wait {
    uint64_t ord; /* queue position: upgrades (bit 63 clear) before new requests */
    uint32_t qi;  /* the key's queue slot (lm->queues, lm->qhot) */
    uint8_t mode, scope;
    bool active, upgrade;
    struct lm_key *key;
    uint64_t seq; /* when the wait began, in lm->seq order */
    uint64_t since_us;
    uint32_t heap_idx; /* in lm->heap, LM_NO_HEAP if no deadline */
    uint16_t keylen;   /* key->len, so describing a cycle does not touch the keys */
    uint64_t deadline_us;
    struct lm_hold *hold; /* upgrade: the existing hold; else preallocated, unlinked */
    struct lm_wait *qprev, *qnext;
    struct lm_wait *xprev, *xnext; /* exclusive requests only: the queue's X list */
};
#define LM_NO_HEAP  UINT32_MAX
#define LM_NO_QUEUE UINT32_MAX
#define LM_WAIT_OWNER(w)                                                                           \
    ((struct lockmgr_owner *)((char *)(w)-offsetof(struct lockmgr_owner, wait)))
#define LM_ORD_NEW (UINT64_C(1) << 63)

/*
 * Wait queue of one key, in slot k->qi of lm->queues while the key has waiters.  Slots
 * are preallocated (one per owner: every queue has a waiter and an owner waits once), so
 * queueing never allocates.  Upgrades first, then new requests; the exclusive requests
 * are also on a second list in the same order, whose head answers "is an exclusive
 * request queued ahead of position p" for the deadlock search.
 */
struct lm_queue {
    struct lm_wait *head, *tail, *upg_last;
    struct lm_wait *xhead, *xtail, *xupg_last;
    uint32_t nwait[LOCKMGR_NMODES];
    uint32_t next_free; /* free-slot chain while unused */
};

/*
 * What the deadlock search reads of a queue, 32 bytes in a dense array beside lm->queues
 * so that a long wait chain costs one cache miss per key (README "Deadlock detection").
 * Kept exact by lm_qhot_refresh() on every change to the key's holders and to the waits
 * of its sole holder.  The search only reads it; its marks are in lm->qmark.
 */
struct lm_qhot {
    struct lockmgr_owner *h1; /* the sole holder of the key, NULL if none or several */
    uint64_t firstx;          /* ord of the first exclusive request queued, or UINT64_MAX */
    uint64_t jord;            /* h1's wait, when h1 is waiting (jqi != LM_NO_QUEUE) */
    uint32_t jqi;
    uint8_t jmode;
    bool jupg;
    uint8_t h1mode; /* h1's effective mode */
};

/* lm->qmark[qi]: the search generation << LM_MARK_BITS | the holder modes of the queue's
 * key already claimed by a frame of that search ("done"). */
#define LM_MARK_BITS 3
#define LM_GEN_MAX   (UINT32_MAX >> LM_MARK_BITS)

struct lm_key {
    struct lm_key *hnext;
    struct lm_hold *holders;
    uint32_t qi; /* queue slot, LM_NO_QUEUE while nobody waits */
    uint32_t hash;
    uint32_t nheld[LOCKMGR_NMODES]; /* holds by effective mode */
    uint16_t len;
    uint8_t bytes[];
};

/* Allocated 64-byte aligned: id, the cycle marks and the hot half of the wait share the
 * first cache line. */
struct lockmgr_owner {
    uint64_t id;
    uint32_t cyc_gen, cyc_pos; /* position in the cycle being described */
    struct lm_wait wait;
    void *udata;
    lockmgr_wait_cb cb;
    struct lm_hold *holds;
    size_t nholds;
    /* undelivered result, linked on lm->ev_head */
    bool ev_pending;
    struct lockmgr_owner *ev_next;
    struct lockmgr_result ev;
    void *ev_mem;                              /* owned copy of ev.cycle */
    struct lockmgr_owner *all_next, *all_prev; /* lm->owners */
};

/* Deadlock search stack frame: one waiting owner whose key's holders are being walked.
 * 16 bytes: a 10^4-deep search writes 160 KB of them. */
struct lm_frame {
    struct lockmgr_owner *owner;
    uint32_t qi;   /* owner's wait queue */
    uint8_t modes; /* holder modes this frame walks */
    uint8_t phase; /* 0: not started, 1: walking lm->hcur[depth], 2: done */
    uint8_t via;   /* owner's mode on the previous frame's key (its edge into here) */
    uint8_t mode;  /* the mode owner waits for */
};

struct lockmgr {
    struct lockmgr_config cfg;
    struct lm_key **buckets;
    size_t nbuckets, nkeys;
    struct lockmgr_owner *owners;
    size_t nowners, nlocks, nwaiters;
    uint64_t seq, last_token;
    uint32_t gen, cyc_gen;
    /* preallocated workspace, capacity ws_cap >= nowners */
    size_t ws_cap;
    struct lm_queue *queues; /* queue slots, free ones chained from qfree */
    struct lm_qhot *qhot;
    uint32_t *qmark;
    uint32_t qfree;
    struct lm_frame *stack;
    struct lm_hold **hcur; /* per stack depth: next hold, for keys with several holders */
    struct lockmgr_owner **cyc_owners;
    struct lockmgr_cycle_edge *cyc_edges;
    struct lockmgr_cycle cycle;
    bool cyc_direct;     /* the cycle's waiters are stack[0..n-1], cyc_owners unused */
    uint8_t cyc_last_hm; /* direct cycle: the mode in which the start holds the last key */
    struct lm_wait **heap;
    size_t heap_n;
    /* undelivered results, FIFO */
    struct lockmgr_owner *ev_head, *ev_tail;
    bool delivering;
    struct lockmgr_stats st;
};

/* k's queue, NULL if nobody waits.  Valid until the workspace grows (lockmgr_owner_new). */
static inline struct lm_queue *lm_queue_of(const struct lockmgr *lm, const struct lm_key *k)
{
    return k->qi == LM_NO_QUEUE ? NULL : &lm->queues[k->qi];
}

/* table.c */
uint32_t lm_hash(const void *key, size_t len);
struct lm_key *lm_key_find(const struct lockmgr *lm, const void *key, size_t len, uint32_t h);
struct lm_key *lm_key_get(struct lockmgr *lm, const void *key, size_t len);
void lm_key_maybe_free(struct lockmgr *lm, struct lm_key *k);
struct lm_hold *lm_hold_find(const struct lm_key *k, const struct lockmgr_owner *o);
uint8_t lm_held_mask(const struct lm_key *k, int except_mode);
void lm_qhot_recompute(struct lockmgr *lm, struct lm_key *k);
void lm_qhot_refresh_holds(struct lockmgr *lm, struct lockmgr_owner *o);

/* After a change to k's holds or to its sole holder's wait: keeps k's queue record exact
 * (table.c).  Inline so that a key nobody waits for (the common case) costs one test. */
static inline void lm_qhot_refresh(struct lockmgr *lm, struct lm_key *k)
{
    if (k->qi != LM_NO_QUEUE)
        lm_qhot_recompute(lm, k);
}

/* h's effective mode (the stronger scope), -1 if none. */
static inline int lm_hold_mode(const struct lm_hold *h)
{
    int a = h->smode[0], b = h->smode[1];
    return (a > b ? a : b) - 1;
}

/* waits.c */
void lm_wait_enqueue(struct lockmgr *lm, struct lm_wait *w);
void lm_wait_unqueue(struct lockmgr *lm, struct lm_wait *w);
void lm_wait_remove(struct lockmgr *lm, struct lm_wait *w);
void lm_event_push(struct lockmgr *lm, struct lockmgr_owner *o, enum lockmgr_status st,
                   uint64_t token, void *mem);
void lm_event_drop(struct lockmgr *lm, struct lockmgr_owner *o);
void lm_deliver(struct lockmgr *lm);

/* locks.c */
void lm_wakeup(struct lockmgr *lm, struct lm_key *k, uint64_t now_us);

/* deadlock.c */
bool lm_deadlock_find(struct lockmgr *lm, struct lockmgr_owner *start, bool describe);
void lm_cycle_describe(struct lockmgr *lm, size_t upto);
void lm_cycle_forget(struct lockmgr *lm);
struct lockmgr_owner *lm_cycle_owner(const struct lockmgr *lm, size_t i);
size_t lm_victim_default(void *arg, const struct lockmgr_cycle *cycle);
void *lm_cycle_copy(const struct lockmgr_cycle *c);

#endif
