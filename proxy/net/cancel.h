/*
 * cancel.h: cancel keys.  Every client gets a random (pid, key) pair from pgwarden in its
 * BackendKeyData; a CancelRequest carrying it is forwarded, on a new connection, to the
 * server the client has at that moment, with that server's own key.  A cancel for a client
 * without a server is dropped: there is nothing running to cancel.
 */
#ifndef PGW_PROXY_CANCEL_H
#define PGW_PROXY_CANCEL_H

#include <stdint.h>

#include "conn.h"

/* Gives c a fresh random key and indexes it.  Returns -1 on allocation failure. */
int px_cancel_register(struct px_client *c);
/* Removes c from the index (no-op when not registered). */
void px_cancel_forget(struct px_client *c);
/* Handles a CancelRequest packet. */
void px_cancel_request(uint32_t pid, uint32_t key);
/* Sends a cancel for the query c's server runs now (c->server must be set and active). */
void px_cancel_forward(struct px_client *c);
/* Frees the index (shutdown). */
void px_cancel_destroy(void);

#endif
