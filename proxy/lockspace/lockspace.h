/*
 * lockspace.h: one lock space shared by several pgwarden instances through PostgreSQL
 * ([locks] backend = postgresql, SPEC section 9).  Design: docs/design/distributed-locks.md.
 *
 * The local lock manager (lockmgr/) keeps deciding which local client is next; a local
 * grant is provisional until this module holds the key's mode in PostgreSQL (advisory
 * locks on one of a few lock connections, libpq's asynchronous API on the event loop) and
 * PostgreSQL gave the grant its fencing token.  The module holds the global mode on behalf
 * of all local holders of a key and releases it when no local holder needs it any more;
 * it reads who holds what here from lockmgr (lockmgr_snapshot of a key).
 *
 * The caller is path/locks.c.  Clients are named by their id (px_client.id); results come
 * back through the events at the end of this header, implemented by path/locks.c, always
 * from an event of this module's own (never inside a call into it).
 *
 * With backend = local every function is a no-op and px_lockspace_active() is false.
 * Event loop thread only.
 */
#ifndef PGW_PROXY_LOCKSPACE_H
#define PGW_PROXY_LOCKSPACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/config.h"
#include "lockmgr/lockmgr.h"

/* Starts the lock connections (asynchronously: they connect on the loop).  lm is
 * borrowed for the module's life.  0, or -1 with *errmsg (free()). */
int px_lockspace_init(const struct px_config *cfg, struct lockmgr *lm, char **errmsg);
/* Closes the lock connections (PostgreSQL drops their locks) and frees everything; no
 * events are reported. */
void px_lockspace_shutdown(void);

/* backend = postgresql. */
bool px_lockspace_active(void);

/*
 * lockmgr granted key in mode to client_id with its local token lm_token.  Returns true
 * with *token set when the grant is already confirmed (a re-request: the same lm_token as
 * the client's confirmed grant of the key); otherwise the confirmation runs and its
 * outcome comes through px_locks_global_done().  deadline_us (0: none) bounds the global
 * wait on the monotonic microsecond clock of path/locks.c; try: one attempt, never wait
 * and never queue at a gate.
 */
bool px_lockspace_confirm(uint64_t client_id, const char *key, size_t keylen,
                          enum lockmgr_mode mode, uint64_t lm_token, uint64_t deadline_us, bool try,
                          uint64_t *token);

/* o is about to release locks (unlock, end of transaction, disconnect, a failed global
 * grant): the keys it holds are reconciled with PostgreSQL afterwards (deferred). */
void px_lockspace_releasing(struct lockmgr *lm, const struct lockmgr_owner *o);

/* A client waiting for a confirmation asked to cancel: true when it was waiting here (the
 * confirmation is dropped, no event follows; the caller releases the local grant). */
bool px_lockspace_cancel(uint64_t client_id);

/* The client is going away: its confirmations are dropped (no events), its lost-lock
 * reports forgotten. */
void px_lockspace_client_gone(uint64_t client_id);

/* The global token of client_id's hold of key (lm_token: the local token lockmgr shows);
 * lm_token itself when the module does not know the hold (backend = local). */
uint64_t px_lockspace_token(uint64_t client_id, const void *key, size_t keylen, uint64_t lm_token);

/* How client_id's local hold of key stands in PostgreSQL (GET /locks). */
enum px_lockspace_hold {
    PX_LOCKSPACE_HOLD_LOCAL = 0, /* backend = local: nothing global */
    PX_LOCKSPACE_HOLD_HELD,      /* held in PostgreSQL: *token is the global token */
    PX_LOCKSPACE_HOLD_WAITING,   /* granted here, still waiting in PostgreSQL */
};
enum px_lockspace_hold px_lockspace_hold_state(uint64_t client_id, const void *key, size_t keylen,
                                               uint64_t lm_token, uint64_t *token);

/* Another instance's hold of a key, as PostgreSQL showed it when this instance last failed
 * to take the key (GET /locks). */
struct px_lockspace_remote {
    char instance[48]; /* "host:pid" of the instance's lock connection */
    unsigned holds;    /* bit per lockmgr_mode it holds (for its local holders) */
    unsigned first;    /* bit per lockmgr_mode it is first in line for (its gate) */
};
#define PX_LOCKSPACE_REMOTE_MAX 8

/* The other instances holding key, learned from the last failed attempt on it (at most
 * once a second per key, from pg_locks); *age_us: how old that view is.  0 when nothing
 * is known (no failed attempt, or backend = local). */
size_t px_lockspace_remote(const void *key, size_t keylen, struct px_lockspace_remote *out,
                           size_t cap, uint64_t *age_us);

/* A lock of client_id was lost with its lock connection and not reported yet: copies the
 * key (at most cap - 1 bytes, NUL-terminated) and forgets every such report of the client.
 * False when there is none. */
bool px_lockspace_take_lost(uint64_t client_id, char *key, size_t cap);
/* The same, but the reports stay (a reply that may never reach the client: retry.h
 * px_retry_replaying). */
bool px_lockspace_peek_lost(uint64_t client_id, char *key, size_t cap);

/* ---- Events reported upward: implemented by path/locks.c ------------------------------ */

enum px_lockspace_outcome {
    PX_LOCKSPACE_GRANTED = 0, /* token is the global fencing token */
    PX_LOCKSPACE_TIMEOUT,     /* the deadline passed (55P03) */
    PX_LOCKSPACE_BUSY,        /* try: taken on another instance (NULL) */
    PX_LOCKSPACE_LOST,        /* the lock connection was lost (55000) */
    PX_LOCKSPACE_DEADLOCK,    /* the victim of a deadlock across instances (40P01) */
};

/* The confirmation of client_id's grant ended.  Anything but GRANTED: the caller releases
 * the provisional local grant.  detail: NULL, or the error's DETAIL (DEADLOCK: the
 * cycle). */
void px_locks_global_done(uint64_t client_id, enum px_lockspace_outcome outcome, uint64_t token,
                          const char *detail);

/* client_id, waiting in lockmgr, is the victim of a deadlock across instances: its wait
 * ends with 40P01 and detail (px_locks_deadlock_victim). */
void px_locks_global_victim(uint64_t client_id, const char *detail);

/* A confirmed lock of client_id on key is no longer held in PostgreSQL (its lock
 * connection was lost): the caller releases the local hold (both scopes). */
void px_locks_global_lost(uint64_t client_id, const char *key, size_t keylen);

#endif
