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

/* An owner's one wait; embedded in the owner.  Fields the deadlock search reads first. */
struct lm_wait {
    struct lm_key *key;
    uint64_t ord;         /* queue position: upgrades (bit 63 clear) before new requests */
    struct lm_hold *hold; /* upgrade: the existing hold; else preallocated, unlinked */
    uint8_t mode, scope;
    bool active, upgrade;
    uint32_t heap_idx; /* in lm->heap, LM_NO_HEAP if no deadline */
    struct lm_wait *qprev, *qnext;
    uint64_t seq; /* when the wait began, in lm->seq order */
    uint64_t since_us, deadline_us;
};
#define LM_NO_HEAP UINT32_MAX
#define LM_WAIT_OWNER(w)                                                                           \
    ((struct lockmgr_owner *)((char *)(w)-offsetof(struct lockmgr_owner, wait)))
#define LM_ORD_NEW (UINT64_C(1) << 63)

/* Wait queue of one key, allocated while the key has waiters.  The scan fields are the
 * deadlock detector's per-search cursors (see deadlock.c), valid when scan_gen matches. */
struct lm_queue {
    uint32_t scan_gen;
    struct lm_hold *hscan[LOCKMGR_NMODES];
    struct lm_wait *wscan[LOCKMGR_NMODES];
    struct lm_wait *head, *tail, *upg_last;
    uint32_t nwait[LOCKMGR_NMODES];
};

struct lm_key {
    struct lm_key *hnext;
    struct lm_hold *holders;
    struct lm_queue *queue;
    uint32_t hash;
    uint32_t nheld[LOCKMGR_NMODES]; /* holds by effective mode */
    uint16_t len;
    uint8_t bytes[];
};

struct lockmgr_owner {
    uint32_t visit_gen;  /* deadlock search mark */
    struct lm_wait wait; /* early: the deadlock search reads one cache line per owner */
    uint64_t id;
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

/* Deadlock detector stack frame: one waiting owner being expanded. */
struct lm_frame {
    struct lockmgr_owner *owner;
    struct lm_hold *hcur; /* private cursors (root, or a key with one waiter) */
    struct lm_wait *wcur;
    bool shared;    /* use the key's shared cursors instead */
    uint8_t phase;  /* 0: holders (hard edges), 1: earlier waiters (soft), 2: done */
    bool edge_soft; /* the edge to the next frame */
    uint8_t edge_mode;
};

struct lockmgr {
    struct lockmgr_config cfg;
    struct lm_key **buckets;
    size_t nbuckets, nkeys;
    struct lockmgr_owner *owners;
    size_t nowners, nlocks, nwaiters;
    uint64_t seq, last_token;
    uint32_t gen;
    /* preallocated workspace, capacity ws_cap >= nowners */
    size_t ws_cap;
    struct lm_frame *stack;
    struct lockmgr_owner **cyc_owners;
    struct lockmgr_cycle_edge *cyc_edges;
    struct lockmgr_cycle cycle;
    struct lm_wait **heap;
    size_t heap_n;
    /* undelivered results, FIFO */
    struct lockmgr_owner *ev_head, *ev_tail;
    bool delivering;
    struct lockmgr_stats st;
};

/* table.c */
uint32_t lm_hash(const void *key, size_t len);
struct lm_key *lm_key_find(const struct lockmgr *lm, const void *key, size_t len, uint32_t h);
struct lm_key *lm_key_get(struct lockmgr *lm, const void *key, size_t len);
void lm_key_maybe_free(struct lockmgr *lm, struct lm_key *k);
struct lm_hold *lm_hold_find(const struct lm_key *k, const struct lockmgr_owner *o);
uint8_t lm_held_mask(const struct lm_key *k, int except_mode);

/* h's effective mode (the stronger scope), -1 if none. */
static inline int lm_hold_mode(const struct lm_hold *h)
{
    int a = h->smode[0], b = h->smode[1];
    return (a > b ? a : b) - 1;
}

/* waits.c */
bool lm_wait_enqueue(struct lockmgr *lm, struct lm_wait *w);
void lm_wait_unqueue(struct lockmgr *lm, struct lm_wait *w);
void lm_wait_remove(struct lockmgr *lm, struct lm_wait *w);
void lm_event_push(struct lockmgr *lm, struct lockmgr_owner *o, enum lockmgr_status st,
                   uint64_t token, void *mem);
void lm_event_drop(struct lockmgr *lm, struct lockmgr_owner *o);
void lm_deliver(struct lockmgr *lm);

/* locks.c */
void lm_wakeup(struct lockmgr *lm, struct lm_key *k, uint64_t now_us);

/* deadlock.c */
bool lm_deadlock_find(struct lockmgr *lm, struct lockmgr_owner *start);
size_t lm_victim_default(void *arg, const struct lockmgr_cycle *cycle);
void *lm_cycle_copy(const struct lockmgr_cycle *c);

#endif
