/*
 * introspect.c: JSON views of pools, clients and servers for the admin port (see
 * introspect.h; the lock views and each client's locks are in introspect_locks.c).
 * Client-supplied strings go through px_json_string, which repairs invalid UTF-8, so the
 * answers are always valid JSON.
 */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "net/client.h"
#include "conn.h"
#include "path/retry.h"
#include "path/session.h"
#include "admin/introspect.h"
#include "admin/introspect_locks.h"
#include "base/json_util.h"
#include "main.h"
#include "pool/breaker.h"
#include "pool/pool.h"

static const char *const server_states[] = {"login", "idle", "active", "resetting", "closing"};

static uint64_t longest_wait_ms(const struct px_pool *p, uint64_t now)
{
    struct px_list *first = px_list_first(&p->clients_waiting);
    if (!first)
        return 0;
    return now - PX_CONTAINER_OF(first, struct px_client, link)->wait_start_ms;
}

static bool has_pool(const char *database)
{
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &px.pools)
    {
        if (!strcmp(PX_CONTAINER_OF(it, struct px_pool, link)->database, database))
            return true;
    }
    return false;
}

/* {"state","next_probe_ms","last_failure","failures"} of a database's circuit breaker (b
 * may be NULL: closed, nothing counted). */
static json_t *breaker_json(const struct px_breaker *b)
{
    struct px_breaker_info i;
    px_breaker_info(b, &i);
    return json_pack("{s:s, s:o, s:o, s:I}", "state", i.state, "next_probe_ms",
                     i.next_probe_ms < 0 ? json_null() : json_integer((json_int_t)i.next_probe_ms),
                     "last_failure",
                     i.last_failure[0] ? px_json_string(i.last_failure) : json_null(), "failures",
                     (json_int_t)i.failures);
}

static const char *mode_name(enum px_pool_mode mode)
{
    return mode == PX_POOL_SESSION ? "session" : "transaction";
}

/* A configured database no client has used yet: the pool it would get, empty.  Its user
 * is null because pools are per (database, user) and no user has asked. */
static json_t *unused_db_json(const struct px_db_config *db)
{
    const struct px_config *cfg = px.cfg;
    enum px_pool_mode mode = db->pool_mode >= 0 ? (enum px_pool_mode)db->pool_mode : cfg->pool_mode;
    int size = db->pool_size >= 0 ? db->pool_size : cfg->default_pool_size;
    return json_pack("{s:o, s:n, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:o}", "database",
                     px_json_string(db->name), "user", "mode", mode_name(mode), "pool_size", size,
                     "clients_active", 0, "clients_waiting", 0, "servers_active", 0, "servers_idle",
                     0, "servers_connecting", 0, "longest_wait_ms", 0, "breaker",
                     breaker_json(px_breaker_find(db->name)));
}

json_t *px_introspect_pools(void)
{
    json_t *arr = json_array();
    uint64_t now = px_now_ms();
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &px.pools)
    {
        struct px_pool *p = PX_CONTAINER_OF(it, struct px_pool, link);
        json_t *o = json_pack(
            "{s:o, s:o, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:o}", "database",
            px_json_string(p->database), "user", px_json_string(p->user), "mode",
            mode_name(p->mode), "pool_size", p->pool_size, "clients_active", p->n_active_clients,
            "clients_waiting", p->n_waiting, "servers_active", p->n_active, "servers_idle",
            p->n_idle, "servers_connecting", p->n_login, "longest_wait_ms",
            (json_int_t)longest_wait_ms(p, now), "breaker", breaker_json(p->breaker));
        if (o && p->mode == PX_POOL_TRANSACTION)
            json_object_set_new(o, "clients_pinned", json_integer(p->n_pinned));
        if (o)
            json_array_append_new(arr, o);
    }
    /* Every configured database is listed, used or not ("*" only through its pools). */
    for (size_t i = 0; px.cfg && i < px.cfg->ndbs; i++) {
        const struct px_db_config *db = &px.cfg->dbs[i];
        if (strcmp(db->name, "*") != 0 && !has_pool(db->name)) {
            json_t *o = unused_db_json(db);
            if (o)
                json_array_append_new(arr, o);
        }
    }
    return arr;
}

static json_t *client_json(const struct px_client *c, uint64_t now,
                           const struct px_lock_index *locks)
{
    char addr[PX_CLIENT_ADDR_LEN];
    json_t *o = json_pack("{s:I, s:o, s:o, s:o, s:s, s:s, s:b, s:I, s:o}", "id", (json_int_t)c->id,
                          "database", px_json_string(c->database ? c->database : ""), "user",
                          px_json_string(c->user ? c->user : ""), "application_name",
                          px_json_string(c->application_name ? c->application_name : ""), "address",
                          px_client_addr(c, addr), "state", px_client_state_name(c->state), "tls",
                          c->tls, "connected_ms", (json_int_t)(now - c->connect_ms), "server_id",
                          c->server ? json_integer((json_int_t)c->server->id) : json_null());
    const char *pinned = px_session_pin_reason(c);
    if (o && pinned) /* session state that keeps its server (transaction pooling) */
        json_object_set_new(o, "pinned", json_string(pinned));
    unsigned attempt = px_retry_attempt(c);
    if (o && attempt) /* its transaction is being retried (path/retry.h) */
        json_object_set_new(o, "retry_attempt", json_integer(attempt));
    /* What it holds and waits for: only when there is something (introspect_locks.h). */
    if (o && px_introspect_client_locks(locks, c, o) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static void append_clients(json_t *arr, const struct px_list *list, uint64_t now,
                           const struct px_lock_index *locks)
{
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, list)
    {
        json_t *o = client_json(PX_CONTAINER_OF(it, struct px_client, link), now, locks);
        if (o)
            json_array_append_new(arr, o);
    }
}

json_t *px_introspect_clients(void)
{
    struct px_lock_index *locks;
    if (px_introspect_lock_index_new(&locks) < 0)
        return NULL;
    json_t *arr = json_array();
    uint64_t now = px_now_ms();
    append_clients(arr, &px.clients_login, now, locks);
    append_clients(arr, &px.clients_failing, now, locks);
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &px.pools)
    {
        struct px_pool *p = PX_CONTAINER_OF(it, struct px_pool, link);
        append_clients(arr, &p->clients_idle, now, locks);
        append_clients(arr, &p->clients_waiting, now, locks);
        append_clients(arr, &p->clients_active, now, locks);
    }
    px_introspect_lock_index_free(locks);
    return arr;
}

static void append_servers(json_t *arr, const struct px_list *list, uint64_t now)
{
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, list)
    {
        const struct px_server *s = PX_CONTAINER_OF(it, struct px_server, link);
        char addr[300];
        snprintf(addr, sizeof(addr), "%s:%d", s->pool->host, s->pool->port);
        json_t *o = json_pack(
            "{s:I, s:o, s:o, s:s, s:o, s:b, s:I, s:o, s:I}", "id", (json_int_t)s->id, "database",
            px_json_string(s->pool->database), "user", px_json_string(s->pool->user), "state",
            server_states[s->state], "address", px_json_string(addr), "tls", s->tls, "connected_ms",
            (json_int_t)(now - s->created_ms), "client_id",
            s->client ? json_integer((json_int_t)s->client->id) : json_null(), "backend_pid",
            (json_int_t)s->backend_pid);
        if (o)
            json_array_append_new(arr, o);
    }
}

json_t *px_introspect_servers(void)
{
    json_t *arr = json_array();
    uint64_t now = px_now_ms();
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &px.pools)
    {
        struct px_pool *p = PX_CONTAINER_OF(it, struct px_pool, link);
        append_servers(arr, &p->servers_login, now);
        append_servers(arr, &p->servers_idle, now);
        append_servers(arr, &p->servers_active, now);
        append_servers(arr, &p->servers_resetting, now);
    }
    return arr;
}

bool px_introspect_healthy(json_t **detail)
{
    /* A database can serve as px_pool_can_serve() says (pool.c: its circuit breaker is
     * closed, and a logged-in server or no recent failed connect attempt).  With no pool
     * yet nothing has been tried and pgwarden itself is up: healthy. */
    bool any = px.n_pools == 0, ok_any = false;
    uint64_t now = px_now_ms();
    json_t *dbs = detail ? json_object() : NULL;
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &px.pools)
    {
        struct px_pool *p = PX_CONTAINER_OF(it, struct px_pool, link);
        bool ok = px_pool_can_serve(p, now);
        ok_any |= ok;
        if (dbs) {
            char name[600];
            snprintf(name, sizeof(name), "%s/%s", p->database, p->user);
            struct px_breaker_info bi;
            px_breaker_info(p->breaker, &bi);
            const char *why = strcmp(bi.state, "closed") ? bi.last_failure
                              : p->connect_error[0]      ? p->connect_error
                              : !p->logged_in_once       ? "no server login has succeeded"
                                                         : "its server is unavailable";
            json_t *last = !ok ? px_json_string(why) : json_null();
            json_object_set_new(dbs, name,
                                json_pack("{s:b, s:i, s:o, s:s}", "ok", ok, "servers_idle",
                                          p->n_idle, "last_error", last, "breaker", bi.state));
        }
    }
    if (detail)
        *detail = dbs;
    return (any || ok_any) && !px.shutting_down;
}

int px_introspect_reload(char **errmsg)
{
    return px_main_reload(errmsg);
}
