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

/* Whether s carries exactly c's other session state (SET of parameters that are not
 * reported, SET ROLE, SQL PREPARE, ...; none when c has none): linking c to s would send no
 * state prelude.  Query batching (batch.h) sends no prelude, so it asks this first. */
bool px_session_state_fits(const struct px_client *c, const struct px_server *s);

/*
 * A simple query c sends to c->server (text[0..len), classified as info): a change of
 * session state it makes (SET, RESET, SET ROLE, SET SESSION AUTHORIZATION / CHARACTERISTICS,
 * PREPARE, DEALLOCATE, DISCARD ALL) is recorded once its ReadyForQuery says it succeeded,
 * and, for a transactional one, once its transaction committed; state that cannot move
 * (LISTEN, temporary objects, WITH HOLD cursors, session advisory locks, LOAD, set_config,
 * several statements that change state in one text) pins the server to c, or, with
 * unmovable_state = reset, is reset after the transaction (the client is warned once).
 */
void px_session_note_sql(struct px_client *c, const struct px_sql_info *info, const char *text,
                         size_t len);
/* The extended protocol: a Parse of statement name (text classified as info), a Bind of
 * statement, an Execute (of the portal last bound): a change made through the unnamed
 * statement counts like a simple query's; through a named one it pins. */
void px_session_note_parse(struct px_client *c, const char *name, const struct px_sql_info *info,
                           const char *text, size_t len);
void px_session_note_bind(struct px_client *c, const char *statement);
void px_session_note_execute(struct px_client *c);
/* The unnamed statement just parsed deallocates the client's statement name (rename.h runs
 * it as a stand-in): name leaves the client's map once an Execute of it succeeded. */
void px_session_note_dealloc(struct px_client *c, const char *name);

/* Replies: an ErrorResponse relayed to c; a ReadyForQuery with status. */
void px_session_error(struct px_client *c);
void px_session_ready(struct px_client *c, char status);

/* c's server must stay with it (state that cannot move), and why (static), or NULL. */
bool px_session_pinned(const struct px_client *c);
const char *px_session_pin_reason(const struct px_client *c);

/* Frees what the client's session view owns (client teardown). */
void px_session_client_free(struct px_client *c);

#endif
