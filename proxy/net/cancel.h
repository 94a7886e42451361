/*
 * cancel.h: cancel keys.  Every client gets a random (pid, key) pair from pgwarden in its
 * BackendKeyData; a CancelRequest carrying it is forwarded, on a new connection, to the
 * server the client has at that moment, with that server's own key.  A cancel for a client
 * without a server is dropped: there is nothing running to cancel.
 *
 * At most one cancel is in flight per server: more would only cost PostgreSQL a fork each
 * (a flood of them delays every new connection's login).  While one is in flight the
 * server stays with its client (px_server_cancel_busy): PostgreSQL ignores a cancel that
 * reaches an idle backend, so once it has closed the cancel connection the signal cannot
 * land on the next client's query.
 */
#ifndef PGW_PROXY_CANCEL_H
#define PGW_PROXY_CANCEL_H

#include <stdint.h>

#include "conn.h"

/* Gives c a fresh random key and indexes it.  Returns -1 on allocation failure. */
int px_cancel_register(struct px_client *c);
/* Removes c from the index (no-op when not registered). */
void px_cancel_forget(struct px_client *c);
/* Handles a CancelRequest packet that arrived on connection from.  True when from is to
 * stay open until PostgreSQL has processed the forwarded cancel (it then closes it, as
 * PostgreSQL closes a cancel connection only once it has signalled the backend: libpq and
 * asyncpg wait for that close before their next command, which an earlier close let the
 * signal reach); false: close it now (nothing was forwarded). */
bool px_cancel_request(uint32_t pid, uint32_t key, struct px_client *from);
/* from (a CancelRequest connection) is closing: it waits no longer. */
void px_cancel_waiter_gone(struct px_client *from);
/* Sends a cancel for the query c's server runs now (c->server must be set and active);
 * dropped when one is already on its way to that server. */
void px_cancel_forward(struct px_client *c);
/* Sends a cancel for whatever s's backend runs (a client left it mid-query).  False when
 * one is already on its way or it cannot be sent. */
bool px_cancel_server(struct px_server *s);
/* Whether a cancel is on its way to s (s must not go to another client yet). */
static inline bool px_server_cancel_busy(const struct px_server *s)
{
    return s->cancel != NULL;
}
/* s is being freed: its in-flight cancel finishes without it. */
void px_cancel_server_gone(struct px_server *s);
/* Frees the index and the cancels still in flight (shutdown). */
void px_cancel_destroy(void);

/* Events reported upward, implemented by the statement path (path/path.c): */
/* A CancelRequest for c: the path decides what it cancels (a lock wait, a query, or
 * nothing). */
void px_path_cancel_request(struct px_client *c);
/* The cancel on its way to s is done (sent and closed by PostgreSQL, or failed). */
void px_path_server_cancel_done(struct px_server *s);

#endif
