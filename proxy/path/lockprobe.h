/*
 * lockprobe.h: hybrid deadlocks, cycles through pgwarden's locks and PostgreSQL's own
 * (SPEC section 9, docs/locks.md "Hybrid deadlocks").
 *
 * The shape: client A holds pgwarden lock K and its statement waits in PostgreSQL for a row
 * that client B's transaction locked; B waits in pgwarden for K.  Neither lockmgr nor
 * PostgreSQL's detector sees a cycle.  This module finds such cycles and ends one pgwarden
 * wait on each with 40P01 (path/locks.h px_locks_deadlock_victim).
 *
 * Cost.  Nothing runs while no client waits for a pgwarden lock (the timer is deleted and
 * the connections closed when the last wait ends).  While some do, one timer is armed for
 * the moment the oldest wait reaches [locks] hybrid_probe_ms.  A wait that
 * long starts a probe round only when a client it waits for (through pgwarden's wait-for
 * edges, lockmgr_wait_edges) has a server with a statement in flight; then one query per
 * PostgreSQL cluster asks pg_blocking_pids() for those backends and, recursively, for the
 * backends that block them.  Rounds repeat every hybrid_probe_ms while such waits last.
 *
 * Connection.  Its own libpq connection per PostgreSQL cluster (host and port of the
 * pools' [databases] entries), opened when a round needs it and closed when no wait is
 * long any more.  A round is given up after max(4 * hybrid_probe_ms, 1 s); a cluster whose
 * connection or query fails (down, login refused, no answer in time) is logged once and
 * left alone for a backoff of 1 s doubling to 30 s.  Never a pool server (the pool may be
 * exhausted by the very clients in the cycle, and a query on a pool server would need the
 * path's reply bookkeeping).
 *
 * No false deadlocks.  A cycle found in one round is acted on only after a second query
 * confirms every PostgreSQL edge of it, while every pgwarden edge of it is checked to be
 * the same wait and the same grant (wait sequence, fencing token) at both times, and every
 * backend still serves the same client in the same assignment (server id and client_gen):
 * so every edge was there during the second query.  A node on a cycle waits and releases
 * nothing; an edge can only go away by an outside event (a timeout, a cancel, another
 * detector's victim) racing with the check, as for any deadlock detector.
 *
 * Event loop thread only.
 */
#ifndef PGW_PROXY_PATH_LOCKPROBE_H
#define PGW_PROXY_PATH_LOCKPROBE_H

#include "conn.h"

/* c began to wait for a pgwarden lock (path/locks.c). */
void px_lockprobe_wait_begin(struct px_client *c);
/* c's wait ended, or c is going away (path/locks.c).  No-op when c was not waiting. */
void px_lockprobe_wait_end(struct px_client *c);
/* Closes the probe connections and the timer (px_locks_shutdown). */
void px_lockprobe_shutdown(void);

#endif
