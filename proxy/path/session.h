/*
 * session.h: session state that follows a client across servers (transaction pooling).
 *
 * The session stage of the statement path.  It owns the client's view of its session:
 *   - reported parameters (client_encoding, DateStyle, TimeZone, application_name, ...,
 *     every parameter PostgreSQL reports with ParameterStatus): what the client was told
 *     at login (its welcome) plus what changed since (c->vars).  When the client is linked
 *     to a server whose values differ, hidden SETs make them equal before its first byte;
 *   - state that cannot follow the client (LISTEN, temporary tables, SQL PREPARE, a SET of
 *     a parameter that is not re-synced, ...): noticed in the statements the client sends,
 *     warned about once per client, and the server is reset before its next client.
 * Event loop thread only.
 */
#ifndef PGW_PROXY_PATH_SESSION_H
#define PGW_PROXY_PATH_SESSION_H

#include <stdbool.h>

#include "conn.h"
#include "path/sqlscan.h"

/* c was just linked to c->server: queues (hidden) the SETs that make the server's reported
 * parameters equal the client's.  The common case, nothing differs, allocates nothing.
 * False when out of memory (nothing was queued). */
bool px_session_resync(struct px_client *c);

/* The server linked to c reported a parameter: c's view follows it.  0, or -1 on OOM. */
int px_session_reported(struct px_client *c, const char *name, const char *value);

/* Whether a and b see the same values of the re-synced parameters. */
bool px_session_same_params(const struct px_client *a, const struct px_client *b);

/* A statement c sends to c->server, as classified: remembers session state it creates. */
void px_session_note_sql(struct px_client *c, const struct px_sql_info *info);

/* Frees what the client's session view owns (client teardown). */
void px_session_client_free(struct px_client *c);

#endif
