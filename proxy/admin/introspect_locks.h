/*
 * introspect_locks.h: what each client holds and waits for, for GET /clients (inside
 * admin/: used by introspect.c, implemented by introspect_locks.c).
 *
 * /clients takes one copy of the lock table and looks every client up in it, so the view
 * costs O(locks log locks + clients), not a walk of the table per client.  Event loop
 * thread only; valid during one handler call (the rows borrow the clients).
 */
#ifndef PGW_PROXY_ADMIN_INTROSPECT_LOCKS_H
#define PGW_PROXY_ADMIN_INTROSPECT_LOCKS_H

#include <jansson.h>

struct px_client;
struct px_lock_index;

/* Copies the lock table, indexed by client.  0 with *out (free with
 * px_introspect_lock_index_free; NULL when nobody holds a lock), or -1 when out of
 * memory. */
int px_introspect_lock_index_new(struct px_lock_index **out);
/* NULL is a no-op. */
void px_introspect_lock_index_free(struct px_lock_index *ix);

/* Adds to client object o, only when there is something to show, "locks":
 * [{"key","mode","scope","token"}, ...] (what c holds, from ix, which may be NULL) and
 * "lock_wait": {"key","mode","waited_ms"} (what c waits for).  0, or -1 when out of
 * memory. */
int px_introspect_client_locks(const struct px_lock_index *ix, const struct px_client *c,
                               json_t *o);

#endif
