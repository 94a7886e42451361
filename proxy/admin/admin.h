/*
 * admin.h: the admin HTTP/1.1 port (libevent evhttp on the proxy's own event loop).
 *
 * Serves JSON views of the proxy (introspect.h), Prometheus metrics (metrics.h) and
 * control requests.  Everything runs on the event loop thread; handlers must not block.
 * User-facing reference: docs/admin-api.md.
 *
 * Connections: at most admin_max_connections are open (more are closed when accepted), and
 * each request must be complete within admin_request_timeout_ms of the connection or of
 * the previous request, however slowly its bytes come (see admin.c).
 *
 * Request pipeline (admin.c), in this order:
 *   1. evhttp limits: headers over 8 KiB, bodies over 64 KiB (413), idle clients (10 s
 *      without a byte), unparsable requests (400) never reach the router.
 *   2. Auth: when admin_token is set, every request needs "Authorization: Bearer <token>";
 *      missing or wrong gives 401 with "WWW-Authenticate: Bearer realm="pgwarden"".  The
 *      token is compared in constant time (SHA-256 of both, then CRYPTO_memcmp).
 *   3. Routing: the route table is searched for the path (exact, or prefix for routes
 *      added with prefix=true).  No route for the path: 404.  A route for the path but not
 *      for the method: 405 with an Allow header listing the methods that exist.  HEAD is
 *      served by GET routes (no body).
 *   4. Mutating routes (any method but GET) are refused with 403 when no admin_token is
 *      configured: they are never open to anyone who can reach the port.
 *   5. The handler runs and replies exactly once with px_admin_reply_*; a handler that
 *      returns without replying gets a 500 for it.
 *
 * JSON conventions for every endpoint: Content-Type "application/json"; bodies are objects
 * or arrays made with jansson (valid UTF-8: client strings go through px_json_string from
 * json_util.h); errors are {"error": "<message>"} with a 4xx/5xx status; times are
 * integers in milliseconds with an "_ms" suffix; ids are integers.
 */
#ifndef PGW_PROXY_ADMIN_H
#define PGW_PROXY_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct evbuffer;
struct json_t;
struct px_config;

struct px_admin;
/* One request being handled; valid only during the handler call. */
struct px_admin_req;

/* Method bits for routes. */
enum px_admin_method {
    PX_ADMIN_GET = 1u << 0, /* also serves HEAD */
    PX_ADMIN_POST = 1u << 1,
    PX_ADMIN_PUT = 1u << 2,
    PX_ADMIN_DELETE = 1u << 3,
    PX_ADMIN_PATCH = 1u << 4,
};

/* Limits (see docs/admin-api.md). */
#define PX_ADMIN_MAX_HEADERS_BYTES 8192
#define PX_ADMIN_MAX_BODY_BYTES    65536
#define PX_ADMIN_TIMEOUT_SECS      10 /* without a byte read or written */
#define PX_ADMIN_MAX_ROUTES        64

/* A route handler: runs on the event loop; must reply once with px_admin_reply_*. */
typedef void (*px_admin_handler_cb)(struct px_admin_req *req, void *arg);

/*
 * Starts the admin port on base (borrowed; must outlive the admin) as cfg says
 * (admin_addr, admin_port, admin_token, admin_tls_cert_file, admin_tls_key_file; cfg is
 * only read during the call).  admin_port 0 gives an admin object that listens nowhere.
 * Registers the built-in routes (/, /health, /pools, /clients, /servers, /locks,
 * /locks/<key>, /metrics, /reload, /chaos, /chaos/<id>).  Returns the admin (free with
 * px_admin_free), or NULL with *errmsg (free with free()) when the address cannot be bound or the
 * TLS files cannot be loaded.
 */
__attribute__((warn_unused_result)) struct px_admin *
px_admin_new(struct event_base *base, const struct px_config *cfg, char **errmsg);

/*
 * Applies a reloaded config: a new admin_token takes effect for the next request, new
 * connection limits for new connections; the TLS files are loaded again; a new
 * admin_addr/admin_port is bound before the old one is closed (main.c's reload passes the
 * running address and TLS paths, which need a restart, so there the port never moves).
 * Returns 0, or -1 with *errmsg (free()) and the admin unchanged (token included) when
 * the new address cannot be bound or the TLS files cannot be loaded.  Safe to call from
 * inside a handler (POST /reload does so through px_introspect_reload).
 */
__attribute__((warn_unused_result)) int
px_admin_reconfigure(struct px_admin *admin, const struct px_config *cfg, char **errmsg);

/* Closes the listener and every admin connection.  NULL is a no-op. */
void px_admin_free(struct px_admin *admin);

/* For --check: loads the admin TLS files cfg names (if any) and frees them again.  Returns
 * 0, or -1 with *errmsg (free()).  The address is checked with px_listen_check(). */
__attribute__((warn_unused_result)) int px_admin_check(const struct px_config *cfg, char **errmsg);

/*
 * Adds a route: methods is a mask of enum px_admin_method; path starts with '/'.  With
 * prefix, the route serves path itself and everything below it (path "/locks/" serves
 * "/locks/a%2Fb", with px_admin_req_subpath() = "a/b").  Any method other than GET makes
 * the route mutating (token always required).  Routes are searched in insertion order;
 * the first route whose path matches and has the method wins.  arg is borrowed.
 * Returns 0, or -1 when the table is full or path is not absolute.
 */
__attribute__((warn_unused_result)) int px_admin_route_add(struct px_admin *admin, unsigned methods,
                                                           const char *path, bool prefix,
                                                           px_admin_handler_cb handler, void *arg);

/* ---- inside a handler ---- */

/* The request method: one enum px_admin_method bit (HEAD reads as PX_ADMIN_GET). */
unsigned px_admin_req_method(const struct px_admin_req *req);
/* The percent-decoded path, e.g. "/locks/a/b".  Requests whose path has a malformed
 * escape ('%' not followed by two hex digits), decodes to invalid UTF-8 or contains %00
 * are answered 400 before routing. */
const char *px_admin_req_path(const struct px_admin_req *req);
/* For prefix routes, the decoded rest of the path after the route's path ("" if none). */
const char *px_admin_req_subpath(const struct px_admin_req *req);
/* The decoded value of query parameter key, or NULL when absent. */
const char *px_admin_req_query(struct px_admin_req *req, const char *key);
/*
 * The request body parsed as JSON (a new reference, json_decref it).  When the body is
 * empty or not valid JSON, replies 400 {"error": ...} itself and returns NULL: the
 * handler then just returns.
 */
struct json_t *px_admin_req_json(struct px_admin_req *req);

/*
 * The raw request body: a pointer valid during the handler call (NULL when empty, *len 0),
 * for handlers that parse the body themselves.
 */
const char *px_admin_req_body(struct px_admin_req *req, size_t *len);

/* Replies with body as JSON (reference stolen; NULL replies 500 "out of memory"). */
void px_admin_reply_json(struct px_admin_req *req, int status, struct json_t *body);
/* Replies {"error": message} (printf format). */
void px_admin_reply_error(struct px_admin_req *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Replies with the contents of body (drained) as content_type. */
void px_admin_reply_buffer(struct px_admin_req *req, int status, const char *content_type,
                           struct evbuffer *body);

/* Built-in handlers (admin_handlers.c); called by px_admin_new. */
int px_admin_register_builtin(struct px_admin *admin);
/* GET, POST, DELETE /chaos and DELETE /chaos/<id> (admin_chaos.c); called by
 * px_admin_register_builtin. */
int px_admin_register_chaos(struct px_admin *admin);
/* The route table as JSON [{"path","prefix","methods":[...]}, ...] for GET /. */
struct json_t *px_admin_routes_json(const struct px_admin *admin);

#endif
