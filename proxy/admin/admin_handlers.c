/*
 * admin_handlers.c: the built-in admin endpoints: GET /, /health, /pools, /clients,
 * /servers, /locks, /locks/<key>, /metrics and POST /reload (/chaos: admin_chaos.c).
 *
 * Interface: px_admin_register_builtin (admin.h), called by px_admin_new.  The JSON views
 * come from introspect.h (implemented by the proxy core), the metrics from metrics.h.
 * Answers are documented with examples in docs/admin-api.md.
 */
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <jansson.h>

#include "admin/admin.h"
#include "admin/introspect.h"
#include "base/log.h"
#include "lockmgr/lockmgr.h"
#include "metrics/metrics.h"

/* GET /: what this port serves. */
static void h_index(struct px_admin_req *req, void *arg)
{
    struct px_admin *a = arg;
    json_t *routes = px_admin_routes_json(a);
    px_admin_reply_json(req, 200,
                        routes ? json_pack("{s:s, s:o}", "service", "pgwarden", "endpoints", routes)
                               : NULL);
}

/* GET /health: 200 when at least one database can serve, 503 otherwise. */
static void h_health(struct px_admin_req *req, void *arg)
{
    json_t *detail = NULL;
    bool ok = px_introspect_healthy(&detail);
    if (!detail)
        detail = json_object();
    px_admin_reply_json(
        req, ok ? 200 : 503,
        detail ? json_pack("{s:s, s:o}", "status", ok ? "ok" : "unavailable", "databases", detail)
               : NULL);
}

/* GET /pools, /clients, /servers: arg is the introspect function. */
typedef json_t *(*introspect_fn)(void);
struct view {
    introspect_fn fn;
};
static const struct view view_pools = {px_introspect_pools};
static const struct view view_clients = {px_introspect_clients};
static const struct view view_servers = {px_introspect_servers};

static void h_view(struct px_admin_req *req, void *arg)
{
    const struct view *v = arg;
    px_admin_reply_json(req, 200, v->fn()); /* NULL answers 500 */
}

/* GET /locks: every key with its holders and waiters, and totals. */
static void h_locks(struct px_admin_req *req, void *arg)
{
    (void)arg;
    px_admin_reply_json(req, 200, px_introspect_locks()); /* NULL answers 500 */
}

/* GET /locks/<key>: one key (percent-decoded by the router, which answers 400 for a
 * malformed escape); 404 when nobody holds or waits for it. */
static void h_lock_key(struct px_admin_req *req, void *arg)
{
    (void)arg;
    const char *key = px_admin_req_subpath(req);
    size_t len = strlen(key);
    if (len == 0 || len > LOCKMGR_KEY_MAX) {
        px_admin_reply_error(req, 400, "a lock key is 1 to %d bytes (this one has %zu)",
                             LOCKMGR_KEY_MAX, len);
        return;
    }
    bool found;
    json_t *j = px_introspect_lock_key(key, len, &found);
    if (!found) {
        px_admin_reply_error(req, 404, "no lock on key \"%s\": nobody holds or waits for it", key);
        return;
    }
    px_admin_reply_json(req, 200, j); /* NULL answers 500 */
}

static int evbuffer_sink(void *arg, const char *data, size_t len)
{
    return evbuffer_add(arg, data, len);
}

/* GET /metrics: the Prometheus text exposition format. */
static void h_metrics(struct px_admin_req *req, void *arg)
{
    struct evbuffer *b = evbuffer_new();
    if (!b || px_metrics_render(evbuffer_sink, b) < 0) {
        if (b)
            evbuffer_free(b);
        px_admin_reply_error(req, 500, "cannot render metrics");
        return;
    }
    px_admin_reply_buffer(req, 200, "text/plain; version=0.0.4; charset=utf-8", b);
    evbuffer_free(b);
}

/* POST /reload: reload the config file now. */
static void h_reload(struct px_admin_req *req, void *arg)
{
    char *err = NULL;
    px_info("admin", 0, 0, "reload requested through the admin port");
    if (px_introspect_reload(&err) < 0) {
        px_admin_reply_error(req, 400, "%s", err ? err : "reload failed");
        free(err);
        return;
    }
    px_admin_reply_json(req, 200, json_pack("{s:s}", "status", "reloaded"));
}

int px_admin_register_builtin(struct px_admin *a)
{
    /* The casts drop const: handlers only read their view. */
    if (px_admin_route_add(a, PX_ADMIN_GET, "/", false, h_index, a) < 0 ||
        px_admin_route_add(a, PX_ADMIN_GET, "/health", false, h_health, NULL) < 0 ||
        px_admin_route_add(a, PX_ADMIN_GET, "/pools", false, h_view, (void *)&view_pools) < 0 ||
        px_admin_route_add(a, PX_ADMIN_GET, "/clients", false, h_view, (void *)&view_clients) < 0 ||
        px_admin_route_add(a, PX_ADMIN_GET, "/servers", false, h_view, (void *)&view_servers) < 0 ||
        px_admin_route_add(a, PX_ADMIN_GET, "/locks", false, h_locks, NULL) < 0 ||
        px_admin_route_add(a, PX_ADMIN_GET, "/locks/", true, h_lock_key, NULL) < 0 ||
        px_admin_route_add(a, PX_ADMIN_GET, "/metrics", false, h_metrics, NULL) < 0 ||
        px_admin_route_add(a, PX_ADMIN_POST, "/reload", false, h_reload, NULL) < 0 ||
        px_admin_register_chaos(a) < 0)
        return -1;
    return 0;
}
