/*
 * lockmgr.h: pgwarden's named-lock manager (SPEC section 2), the only public header of
 * lockmgr/.  See lockmgr/README.md for the design and docs/locks.md for the user view.
 *
 * The library does no I/O, never prints, never reads a clock and never sleeps.  The
 * caller (the proxy) drives it from one thread (the event loop):
 *
 *   - time comes in as `now_us`, microseconds on any monotonic clock the caller likes
 *     (deadlines use the same clock);
 *   - a request that cannot be granted at once is queued (LOCKMGR_WAITING) and its
 *     outcome (granted, timed out, chosen as deadlock victim, cancelled) is delivered
 *     later through the owner's lockmgr_wait_cb;
 *   - the caller arms one timer for lockmgr_next_deadline() and calls lockmgr_expire()
 *     when it fires.
 *
 * Callbacks run at the end of the lockmgr call that caused them, after the lock table is
 * consistent again, in the order the events happened.  A callback may call any lockmgr
 * function, including lockmgr_owner_free() on its own owner.
 *
 * Owners are the proxy's clients: a uint64 id chosen by the caller (reported in cycles and
 * snapshots) plus an opaque udata pointer passed back to the callback.  An owner has at
 * most one wait at a time.
 *
 * Fencing tokens: one counter per lock manager, so tokens are strictly increasing per key
 * and across keys.  Every token is > config.token_floor and <= config.token_ceiling.
 * Across restarts use an epoch in the high bits: token_floor = epoch << 40 and
 * token_ceiling = ((epoch + 1) << 40) - 1, where epoch is a counter the proxy persists and
 * increments (fsync'ed) before it serves; epochs below 2^23 keep tokens within a signed
 * bigint.  When a run exhausts its 2^40 tokens, grants fail with
 * LOCKMGR_TOKENS_EXHAUSTED instead of ever repeating a token.
 */
#ifndef PGW_LOCKMGR_H
#define PGW_LOCKMGR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lockmgr;
struct lockmgr_owner;

/* Modes from weakest to strongest; every mode conflicts with all stronger ones. */
enum lockmgr_mode { LOCKMGR_READ = 0, LOCKMGR_WRITE = 1, LOCKMGR_EXCLUSIVE = 2 };
#define LOCKMGR_NMODES 3

/* Session locks live until released; transaction locks go with lockmgr_release_scope(). */
enum lockmgr_scope { LOCKMGR_SESSION = 0, LOCKMGR_XACT = 1 };

#define LOCKMGR_KEY_MAX 256

enum lockmgr_status {
    LOCKMGR_OK = 0,           /* granted (token set), released, cancelled */
    LOCKMGR_WAITING,          /* queued: the outcome comes through the callback */
    LOCKMGR_WOULD_BLOCK,      /* try: not grantable at once (SQL: NULL) */
    LOCKMGR_TIMEOUT,          /* deadline passed (SQLSTATE 55P03) */
    LOCKMGR_DEADLOCK,         /* chosen as deadlock victim (SQLSTATE 40P01) */
    LOCKMGR_CANCELED,         /* wait ended because the upgraded lock was released */
    LOCKMGR_NOT_HELD,         /* release of a lock not held in that scope */
    LOCKMGR_NOT_WAITING,      /* cancel without a wait */
    LOCKMGR_BUSY,             /* owner already waits or has an undelivered result */
    LOCKMGR_LIMIT,            /* max_locks reached (SQLSTATE 53200) */
    LOCKMGR_TOKENS_EXHAUSTED, /* token_ceiling reached: restart with a new epoch */
    LOCKMGR_INVALID,          /* bad argument: key length, mode, scope */
    LOCKMGR_NOMEM,            /* allocation failed; nothing changed */
};

/*
 * One edge of a deadlock cycle: `waiter` waits for `wanted` on key and is blocked by
 * `blocker`, which holds `blocker_mode` (hard edge) or, when soft, waits earlier in the
 * same queue for `blocker_mode`.  Edge i's blocker is edge i+1's waiter; the last edge's
 * blocker is the first edge's waiter.  Edge 0's waiter is the request that closed the
 * cycle.
 */
struct lockmgr_cycle_edge {
    uint64_t waiter_id;
    uint64_t blocker_id;
    const void *key; /* borrowed, see the owner of the cycle */
    size_t keylen;
    enum lockmgr_mode wanted;
    enum lockmgr_mode blocker_mode;
    bool soft;
    uint64_t wait_seq;      /* order in which the waits began (larger = later) */
    uint64_t wait_since_us; /* when the waiter's wait began */
};

struct lockmgr_cycle {
    size_t n;         /* edges in the cycle */
    size_t described; /* edges[0..described) are written: n, except after
                         lockmgr_last_cycle_head() */
    const struct lockmgr_cycle_edge *edges;
};

/* The outcome of a wait, passed to the owner's callback. */
struct lockmgr_result {
    enum lockmgr_status status; /* OK, TIMEOUT, DEADLOCK, CANCELED or TOKENS_EXHAUSTED */
    uint64_t token;             /* OK only */
    /* DEADLOCK only: the cycle, borrowed for the duration of the callback (keys copied).
     * NULL if the copy could not be allocated. */
    const struct lockmgr_cycle *cycle;
};

/* Called once per wait that ended other than by lockmgr_cancel_wait/release_owner. */
typedef void (*lockmgr_wait_cb)(struct lockmgr_owner *owner, void *udata,
                                const struct lockmgr_result *res);

/*
 * Victim policy: returns the index of the edge whose waiter is aborted.  The cycle is
 * borrowed for the call.  The default (NULL) picks the waiter whose wait began last
 * (largest wait_seq), which is always the request that closed the cycle.
 */
typedef size_t (*lockmgr_victim_cb)(void *arg, const struct lockmgr_cycle *cycle);

struct lockmgr_config {
    size_t max_locks;         /* held (owner, key) pairs + queued new requests; 0 = no limit */
    uint64_t token_floor;     /* every token > token_floor */
    uint64_t token_ceiling;   /* every token <= token_ceiling; 0 = INT64_MAX */
    lockmgr_victim_cb victim; /* NULL = latest waiter */
    void *victim_arg;         /* borrowed, passed to victim */
};

/* Returns a new lock manager (owned; lockmgr_free) or NULL on allocation failure.  cfg is
 * copied; NULL means all defaults. */
struct lockmgr *lockmgr_new(const struct lockmgr_config *cfg);

/* Frees lm, all owners and all locks; no callbacks run.  NULL is a no-op. */
void lockmgr_free(struct lockmgr *lm);

/* Registers an owner (owned by lm, freed by lockmgr_owner_free or lockmgr_free).  cb may be
 * NULL if the owner never waits; udata is borrowed and passed back.  NULL on OOM.  The
 * allocation also grows the deadlock detector's workspace, so waits never allocate it. */
__attribute__((warn_unused_result)) struct lockmgr_owner *
lockmgr_owner_new(struct lockmgr *lm, uint64_t id, lockmgr_wait_cb cb, void *udata);

/* Releases everything o holds, drops its wait and any undelivered result (no callback for
 * o), then frees o.  Waiters granted as a result are called back before it returns.  NULL
 * is a no-op. */
void lockmgr_owner_free(struct lockmgr *lm, struct lockmgr_owner *o, uint64_t now_us);

uint64_t lockmgr_owner_id(const struct lockmgr_owner *o);

/*
 * Requests key (1..LOCKMGR_KEY_MAX bytes, borrowed, copied if kept) in mode and scope.
 * Returns LOCKMGR_OK with *token set when granted at once (also for a re-request of a mode
 * no stronger than one held: same token, no stacking); LOCKMGR_WAITING when queued, the
 * outcome then comes through the callback; LOCKMGR_DEADLOCK when this wait would close a
 * cycle and the victim policy chose this request (lockmgr_last_cycle() describes it; if
 * the policy chose another owner, that owner gets DEADLOCK through its callback and this
 * request keeps waiting or is granted); LOCKMGR_TIMEOUT if deadline_us <= now_us and not
 * grantable; LOCKMGR_BUSY, LOCKMGR_LIMIT, LOCKMGR_TOKENS_EXHAUSTED, LOCKMGR_INVALID,
 * LOCKMGR_NOMEM.  deadline_us is absolute on the now_us clock; 0 = wait forever.
 */
__attribute__((warn_unused_result)) enum lockmgr_status
lockmgr_acquire(struct lockmgr *lm, struct lockmgr_owner *o, const void *key, size_t keylen,
                enum lockmgr_mode mode, enum lockmgr_scope scope, uint64_t deadline_us,
                uint64_t now_us, uint64_t *token);

/* As lockmgr_acquire but never waits: LOCKMGR_WOULD_BLOCK instead of queueing. */
__attribute__((warn_unused_result)) enum lockmgr_status
lockmgr_try_acquire(struct lockmgr *lm, struct lockmgr_owner *o, const void *key, size_t keylen,
                    enum lockmgr_mode mode, enum lockmgr_scope scope, uint64_t now_us,
                    uint64_t *token);

/* Releases o's hold of key in scope (the other scope's hold, if any, stays).  Returns
 * LOCKMGR_OK or LOCKMGR_NOT_HELD.  If o was waiting to upgrade key and no longer holds it,
 * that wait ends with LOCKMGR_CANCELED through the callback. */
enum lockmgr_status lockmgr_release(struct lockmgr *lm, struct lockmgr_owner *o, const void *key,
                                    size_t keylen, enum lockmgr_scope scope, uint64_t now_us);

/*
 * Taking a grant back.  For a caller whose grants have a second part that can fail after
 * lockmgr granted (pgwarden's backend = postgresql: a grant is provisional until the lock
 * space in PostgreSQL confirms it).  lockmgr_hold_mark records what o holds of key before
 * a request; lockmgr_hold_restore puts exactly that back after the request was granted:
 * a failed upgrade keeps the weaker mode (and the token) o held before, a failed first
 * grant releases the key.  Releasing instead would drop what o held before the request.
 */
struct lockmgr_hold_mark {
    bool held;        /* o held key before (in either scope) */
    uint8_t smode[2]; /* per scope: 0 = not held, else mode + 1 */
    uint64_t token, since_us;
};
/* Fills *mark with o's hold of key now.  O(holders of the key). */
void lockmgr_hold_mark(const struct lockmgr *lm, const struct lockmgr_owner *o, const void *key,
                       size_t keylen, struct lockmgr_hold_mark *mark);
/* Sets o's hold of key back to *mark (taken before a grant of key to o) and wakes the
 * waiters the lower mode lets in.  LOCKMGR_OK; LOCKMGR_NOT_HELD when o holds nothing of
 * key; LOCKMGR_BUSY when o waits (nothing changed); LOCKMGR_INVALID. */
enum lockmgr_status lockmgr_hold_restore(struct lockmgr *lm, struct lockmgr_owner *o,
                                         const void *key, size_t keylen,
                                         const struct lockmgr_hold_mark *mark, uint64_t now_us);

/* Releases every lock o holds in scope (COMMIT / ROLLBACK for LOCKMGR_XACT, unlock_all for
 * LOCKMGR_SESSION).  Returns how many were released.  A wait is not affected, except as
 * described for lockmgr_release. */
size_t lockmgr_release_scope(struct lockmgr *lm, struct lockmgr_owner *o, enum lockmgr_scope scope,
                             uint64_t now_us);

/* Disconnect: cancels o's wait, drops its undelivered result and releases all its locks.
 * Returns how many (key) locks were released.  o stays registered. */
size_t lockmgr_release_owner(struct lockmgr *lm, struct lockmgr_owner *o, uint64_t now_us);

/* Cancels o's wait without a callback for o.  LOCKMGR_OK or LOCKMGR_NOT_WAITING. */
enum lockmgr_status lockmgr_cancel_wait(struct lockmgr *lm, struct lockmgr_owner *o,
                                        uint64_t now_us);

/* Ends every wait whose deadline is <= now_us with LOCKMGR_TIMEOUT (earliest deadline
 * first; a wait granted by an earlier expiry's release is granted, not timed out).
 * Returns how many timed out. */
size_t lockmgr_expire(struct lockmgr *lm, uint64_t now_us);

/* The earliest pending deadline, or UINT64_MAX when no wait has one.  Arm one timer. */
uint64_t lockmgr_next_deadline(const struct lockmgr *lm);

/*
 * The cycle behind the last LOCKMGR_DEADLOCK returned by lockmgr_acquire, all n edges
 * described; borrowed, valid until the next call that changes lm (which also ends the
 * chance to ask: n == 0 then).  n == 0 if none.
 *
 * With the default victim policy detection describes only edge 0: describing a long cycle
 * reads every owner on it, costs about as much as finding it and evicts the search's data
 * from the cache.  The edges are written when asked: all of them here, O(n), or only the
 * first max_edges by lockmgr_last_cycle_head(), O(max_edges), which is what an error
 * DETAIL of bounded length needs ("... and n - max_edges more").
 */
const struct lockmgr_cycle *lockmgr_last_cycle(struct lockmgr *lm);
const struct lockmgr_cycle *lockmgr_last_cycle_head(struct lockmgr *lm, size_t max_edges);

/* The last token granted (token_floor if none yet): persist it if your scheme needs it. */
uint64_t lockmgr_token_last(const struct lockmgr *lm);

/* ---- Snapshot for the admin port and pgwarden_locks() ---- */

struct lockmgr_snap_holder {
    uint64_t owner_id;
    void *udata; /* the owner's udata, borrowed */
    enum lockmgr_mode mode;
    enum lockmgr_scope scope;
    uint64_t token;
    uint64_t since_us; /* time of the grant that produced token */
};

struct lockmgr_snap_waiter {
    uint64_t owner_id;
    void *udata;
    enum lockmgr_mode mode;
    enum lockmgr_scope scope;
    bool upgrade; /* the owner already holds the key in a weaker mode */
    uint64_t since_us;
    uint64_t deadline_us; /* 0 = none */
};

struct lockmgr_snap_key {
    const void *key;
    size_t keylen;
    size_t nholders, nwaiters;
    const struct lockmgr_snap_holder *holders; /* one row per (owner, scope) held */
    const struct lockmgr_snap_waiter *waiters; /* in queue order */
};

struct lockmgr_snapshot {
    size_t nkeys, nholders, nwaiters;
    const struct lockmgr_snap_key *keys;
};

/*
 * Copies the lock table into one owned allocation (free with lockmgr_snapshot_free), so it
 * stays stable while the caller iterates, whatever lm does meanwhile.  Cost O(locks).
 * Filters: owner != NULL keeps only that owner's rows and keys; key != NULL keeps only
 * that key.  NULL on allocation failure.
 */
__attribute__((warn_unused_result)) struct lockmgr_snapshot *
lockmgr_snapshot(const struct lockmgr *lm, const struct lockmgr_owner *owner, const void *key,
                 size_t keylen);
void lockmgr_snapshot_free(struct lockmgr_snapshot *snap);

/* ---- The wait-for edges of one wait (hybrid deadlocks) ----
 *
 * For a caller that joins lockmgr's wait-for graph to waits it learns elsewhere (pgwarden
 * adds PostgreSQL's row and table lock waits: docs/locks.md "Hybrid deadlocks") and breaks
 * cycles through both itself, with lockmgr_wait_victim on the waiter it picks.  The queries
 * are read-only and allocate nothing.
 */

struct lockmgr_wait_info {
    const void *key; /* borrowed: valid until the next call that changes lm */
    size_t keylen;
    enum lockmgr_mode mode; /* wanted */
    bool upgrade;
    uint64_t wait_seq; /* identifies this wait: order in which the waits began */
    uint64_t since_us;
    uint64_t deadline_us; /* 0 = none */
};

/* o's wait, or false when o does not wait.  O(1). */
bool lockmgr_owner_wait(const struct lockmgr *lm, const struct lockmgr_owner *o,
                        struct lockmgr_wait_info *out);

/* One edge out of a wait: the blocker holds blocker_mode (hard edge) or, when soft, waits
 * earlier in the same queue for blocker_mode. */
struct lockmgr_wait_edge {
    uint64_t blocker_id;
    void *blocker_udata; /* the blocker's udata, borrowed */
    enum lockmgr_mode blocker_mode;
    bool soft;
    uint64_t token;    /* hard: the blocker's token on the key (a new grant, a new token) */
    uint64_t wait_seq; /* soft: the blocker's wait (lockmgr_wait_info.wait_seq) */
};

/*
 * The edges out of o's wait, exactly as the deadlock search sees them: a hard edge to each
 * other holder of the key whose mode conflicts with the mode o wants and, unless o
 * upgrades, a soft edge to each request queued ahead of o that conflicts with it (hard
 * edges first, then soft ones nearest first).  Writes at most cap edges to out and returns
 * how many there are (more than cap: call again with room); 0 when o does not wait.
 * O(holders of the key + requests queued ahead of o).
 */
size_t lockmgr_wait_edges(const struct lockmgr *lm, const struct lockmgr_owner *o,
                          struct lockmgr_wait_edge *out, size_t cap);

/* Ends o's wait as the victim of a deadlock the caller found through waits lockmgr does
 * not see: o's callback gets LOCKMGR_DEADLOCK with cycle NULL (the caller describes its
 * own cycle), the wait counts in stats.deadlocks, and waiters it held up are granted.
 * LOCKMGR_OK, or LOCKMGR_NOT_WAITING. */
enum lockmgr_status lockmgr_wait_victim(struct lockmgr *lm, struct lockmgr_owner *o,
                                        uint64_t now_us);

/* ---- Counters for metrics ---- */

struct lockmgr_stats {
    size_t owners, keys, locks, waiters;
    size_t held_by_mode[LOCKMGR_NMODES]; /* (owner, key) holds by strongest mode */
    uint64_t grants, waits, timeouts, deadlocks, cancels, limit_hits;
    uint64_t bypass_reentry, bypass_upgrade; /* grants ahead of earlier waiters */
};

/* Fills *out; O(keys) for the per-mode counts. */
void lockmgr_stats_get(const struct lockmgr *lm, struct lockmgr_stats *out);

/* ---- Names ---- */

const char *lockmgr_strerror(enum lockmgr_status st);     /* static string */
const char *lockmgr_mode_name(enum lockmgr_mode mode);    /* "read", "write", "exclusive" */
const char *lockmgr_scope_name(enum lockmgr_scope scope); /* "session", "transaction" */
/* Parses a mode name, any case, not NUL-terminated.  false if unknown. */
bool lockmgr_mode_parse(const char *s, size_t len, enum lockmgr_mode *mode);

#endif
