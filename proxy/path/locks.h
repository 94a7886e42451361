/*
 * locks.h: the lock stage of the statement path: pgwarden_lock() and the other lock
 * functions of SPEC section 2, answered by pgwarden on top of lockmgr/ (docs/locks.md).
 *
 * Where it sits.  Part of stage 3, "answered by pgwarden" (proxy/README.md): a simple Query
 * or a Parse whose text is a lock call (lockcall.h), and the Bind, Describe, Execute and
 * Close of such statements and their portals, never reach a server.  This module keeps,
 * per client, the lock-call statements and portals of the extended protocol, its lockmgr
 * owner, and its wait.
 *
 * Ordering.  A reply pgwarden writes must follow every reply the server owes for what the
 * client sent before.  The caller (path.c) says whether that holds (may_answer); when it
 * does not, a lock message gets PX_LOCKS_HOLD and the caller stops the relay before it
 * until the server has answered everything.
 *
 * Waiting.  A lock that is not granted at once parks the client: its further input waits
 * (px_locks_waiting) and it holds no server unless it already had one (a client inside a
 * transaction that did work keeps it).  The outcome is delivered at a safe point of the
 * loop (never inside another client's callback): the reply is written and the client's
 * input is handled again (px_path_client_input).
 *
 * Errors behave as PostgreSQL errors: inside a transaction block the block fails on both
 * sides (a client without a server gets its held block marked failed, txn.h; a client with
 * one has the server's transaction aborted by a hidden statement that fails on purpose);
 * in the extended protocol everything up to the next Sync is skipped, on both sides.
 * Transaction-scoped locks are released when the transaction has ended on the server
 * (px_locks_txn_end at ReadyForQuery 'I', or when pgwarden answered the COMMIT / ROLLBACK of
 * a block that never reached a server); everything a client holds when it goes away.
 *
 * Event loop thread only.
 */
#ifndef PGW_PROXY_PATH_LOCKS_H
#define PGW_PROXY_PATH_LOCKS_H

#include <stdbool.h>
#include <stdint.h>

#include "conn.h"
#include "lockmgr/lockmgr.h"

/* Sets up the lock manager: fencing tokens from [locks] state_file (or the clock), the
 * deadline timer.  0, or -1 with *errmsg (free()). */
int px_locks_init(const struct px_config *cfg, char **errmsg);
/* Frees the lock manager (after the loop stopped, every client freed). */
void px_locks_shutdown(void);
/* Creates the state file with its first epoch (pgwarden --init-lock-state).  0 or -1 with
 * *errmsg. */
int px_locks_init_state_file(const char *path, char **errmsg);
/* Reads the state file and checks it (--check).  0 or -1 with *errmsg. */
int px_locks_check_state_file(const char *path, char **errmsg);

enum px_locks_verdict {
    PX_LOCKS_NOT_MINE = 0, /* not a lock message: the other stages go on */
    PX_LOCKS_ANSWERED,     /* consumed: answered, skipped, or the client now waits */
    PX_LOCKS_HOLD,         /* a lock message, but a server reply is owed before it */
    PX_LOCKS_CLOSE,        /* out of memory: the client cannot be served */
};

/*
 * A client message (type, body of len bytes) on its way to a server, or from a client
 * without one (c->server NULL).  may_answer: nothing is owed to the client before a reply
 * to this message.  The caller removes the message from the input when ANSWERED.
 * Query, Parse, Bind, Describe, Execute and Close are looked at; Sync ends a skipped
 * group (the caller forwards it, or, without a server, px_locks_sync answers it).
 * A client with a lost global lock not reported yet (lockspace.h) inside a transaction
 * block gets the 55000 at any of these messages, as a failed lock call (docs/locks.md);
 * meanwhile its messages are held (HOLD) until the server has answered what went before,
 * and a held BEGIN to be merged (txn.h) must go alone first.
 */
enum px_locks_verdict px_locks_message(struct px_client *c, char type, const uint8_t *body,
                                       uint32_t len, bool may_answer);

/* A message too big to be read whole (its first visible bytes at head: path.c c2s_big) is
 * never a lock message, but a Bind of it replaces the lock-call portal of its name, which
 * must not answer the Describe and Execute that follow it. */
void px_locks_big_message(struct px_client *c, char type, const uint8_t *head, uint32_t visible);

/* A lock message of c's current extended-protocol group failed: everything up to the next
 * Sync is skipped (with a server, the server skips too: txn.h px_txn_statement_failed). */
bool px_locks_skipping(const struct px_client *c);

/* A Sync from c: the end of a group skipped after an error.  Without a server, writes the
 * ReadyForQuery (with one, the caller forwards the Sync). */
void px_locks_sync(struct px_client *c);

/* c waits for a lock: its input must not be handled. */
static inline bool px_locks_waiting(const struct px_client *c)
{
    return c->lock_waiting;
}

/* c's transaction ended (ReadyForQuery 'I' after a block, or a block pgwarden answered):
 * its transaction-scoped locks go, and the next waiters are granted. */
void px_locks_txn_end(struct px_client *c);

/* A Query of c's is relayed; its reply ends with the ready_due-th ReadyForQuery from now.
 * When the text ends c's block and a new one may follow at once (COMMIT AND CHAIN,
 * ROLLBACK AND CHAIN, COMMIT; BEGIN), the block's transaction locks go at its COMMIT's or
 * ROLLBACK's CommandComplete (px_locks_complete): true when the caller must read those
 * (until px_locks_ready says it is over). */
struct px_sql_info;
bool px_locks_note_query(struct px_client *c, const struct px_sql_info *info, uint32_t ready_due);

/* A CommandComplete (tag) from c's server, read while a Query noted above is answered;
 * c->locks is set. */
void px_locks_complete(struct px_client *c, const char *tag);

/* A ReadyForQuery from c's server is relayed; c->locks is set.  True while a Query noted
 * above is still to be answered (its tags are still to be read). */
bool px_locks_ready(struct px_client *c);

/* A CancelRequest for c: ends its lock wait with 57014.  False when c does not wait. */
bool px_locks_cancel(struct px_client *c);

/* Ends c's lock wait with 40P01 for a deadlock found outside lockmgr (a hybrid deadlock
 * through PostgreSQL's own locks, path/lockprobe.h); detail (borrowed) is the error's
 * DETAIL.  The answer is delivered as for any other victim.  False when c does not wait
 * (any more). */
bool px_locks_deadlock_victim(struct px_client *c, const char *detail);

/* c is going away: releases everything it holds and waits for, forgets its statements. */
void px_locks_client_free(struct px_client *c);

/* The lock manager, for the admin views (NULL before px_locks_init). */
struct lockmgr *px_locks_manager(void);
/* c's lock owner, or NULL when it never ran a lock function. */
struct lockmgr_owner *px_locks_owner(const struct px_client *c);
/* The client of a lock owner id (for the admin views), or NULL. */
struct px_client *px_locks_client(uint64_t id);
/* How long c has waited (ms), 0 when not waiting; the key and mode it waits for. */
uint64_t px_locks_wait_info(const struct px_client *c, const char **key, size_t *keylen,
                            const char **mode);

#endif
