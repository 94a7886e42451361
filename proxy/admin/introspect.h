/*
 * introspect.h: read-only views of the proxy's state, for the admin port.
 *
 * Implemented by the modules that own the state (pools, clients, servers); called by
 * admin.c on the event loop thread.  Each function returns a new jansson reference the
 * caller owns (json_decref), or NULL on allocation failure.  Strings that came from
 * clients (application_name, user, database) are passed to jansson as they are; the admin
 * module is responsible for producing valid UTF-8 JSON (jansson rejects invalid UTF-8 in
 * json_string, so the owners use json_stringn_nocheck only after px_utf8_sanitize()).
 */
#ifndef PGW_PROXY_INTROSPECT_H
#define PGW_PROXY_INTROSPECT_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/* [{"database","user","mode","pool_size","clients_active","clients_waiting",
 *   "servers_active","servers_idle","servers_connecting","longest_wait_ms",
 *   "breaker":{"state","next_probe_ms","last_failure","failures"}}, ...]: every pool, then
 * every [databases] entry but "*" that has no pool yet (user null, zeros). */
json_t *px_introspect_pools(void);
/* [{"id","database","user","application_name","address","state","tls","connected_ms",
 *   "server_id"[, "locks"][, "lock_wait"]}, ...]: "locks" ([{"key","mode","scope",
 *   "token"}, ...]) when the client holds locks, "lock_wait" ({"key","mode","waited_ms"})
 *   while it waits for one. */
json_t *px_introspect_clients(void);
/* [{"id","database","user","state","address","tls","connected_ms","client_id",
 *   "backend_pid"}, ...] */
json_t *px_introspect_servers(void);
/* {"keys": [{"key", "holders": [...], "waiters": [...]}, ...], "totals": {"keys",
 *  "holders", "waiters"}}: every lock key (introspect_locks.c, docs/admin-api.md); keys in
 *  byte order, holders oldest grant first, waiters in queue order. */
json_t *px_introspect_locks(void);
/* One key's {"key", "holders", "waiters"}.  NULL with *found false when nobody holds or
 * waits for key (or keylen is not 1 to 256); NULL with *found true when out of memory. */
json_t *px_introspect_lock_key(const char *key, size_t keylen, bool *found);
/* true when at least one database can serve (a pool has a usable server or can open one
 * and its last connection attempt did not fail); *detail gets a JSON object describing
 * each database (owned by the caller, may be set to NULL). */
bool px_introspect_healthy(json_t **detail);
/* Asks the proxy to reload its config file now.  Returns 0 on success, -1 with *errmsg
 * (free with free()) when the new file is invalid (the old config stays). */
int px_introspect_reload(char **errmsg);

#endif
