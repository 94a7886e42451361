/*
 * rename.h: the statement-renaming stage of the statement path (transaction pooling).
 *
 * A client's named prepared statements are interned by content (prepared.h) and sent to
 * servers under pgwarden's names ("_pgw_<id>"), so they work on whichever server the
 * client gets next and never collide with another client's names.  This stage rewrites
 * the client's Parse, Bind, Describe and Close messages on their way to the server, and
 * prepares (hidden) a statement the server lacks before the Bind or Describe that needs
 * it.  Every Parse and Close it sends is recorded in the expected-reply FIFO (expect.h).
 *
 * Each function handles one client message of its type (body: the whole message body)
 * going to c->server; out is the server's output buffer.  Return value as the relay's
 * callbacks (proto/relay.h): FORWARD (unchanged), DROP (replaced by what was written to
 * out), CLOSE (out of memory: the client cannot be served as it expects).
 */
#ifndef PGW_PROXY_PATH_RENAME_H
#define PGW_PROXY_PATH_RENAME_H

#include <stdbool.h>

#include "conn.h"
#include "path/sqlscan.h"

enum px_relay_action px_rename_parse(struct px_client *c, struct evbuffer *out, const uint8_t *body,
                                     uint32_t len);
enum px_relay_action px_rename_bind(struct px_client *c, struct evbuffer *out, const uint8_t *body,
                                    uint32_t len);
/* A Bind too big to be held whole: head has its first PX_RELAY_HEAD_MAX bytes (len is the
 * whole body's length).  The statement name is rewritten in place (PX_RELAY_REPLACE_HEAD,
 * c->c2s.skip set) and the parameters stream through. */
enum px_relay_action px_rename_bind_head(struct px_client *c, struct evbuffer *out,
                                         const uint8_t *head, uint32_t len);
/* Describe ('D') or Close ('C'). */
enum px_relay_action px_rename_target(struct px_client *c, struct evbuffer *out, char type,
                                      const uint8_t *body, uint32_t len);

/* Whether c may record the named statement name (it has it already, or has fewer than
 * max_client_prepared_statements); beyond, its Parse fails the client with 53400. */
bool px_rename_client_may_add(const struct px_client *c, const char *name);

/* Whether a Parse's content (query\0, parameter types) is DEALLOCATE of one of c's
 * statements, which px_rename_parse runs as a stand-in when unnamed (name gets it). */
bool px_rename_client_dealloc(const struct px_client *c, const uint8_t *content, uint32_t clen,
                              char name[PX_SQL_NAME_SIZE]);

/* The process-wide statement registry (created on first use; NULL when out of memory). */
struct px_stmt_registry *px_rename_registry(void);

#endif
