/*
 * admin.c: the admin HTTP port: listener, TLS, limits, bearer-token auth, routing and the
 * reply helpers.  The built-in endpoints are in admin_handlers.c, the JSON helpers in
 * admin_json.c.
 *
 * Interface: admin.h (px_admin_new, px_admin_reconfigure, px_admin_free,
 * px_admin_route_add, px_admin_reply_*).  User-facing reference: docs/admin-api.md.
 *
 * Everything runs on the proxy's event loop.  Requests are answered synchronously from
 * the evhttp callback, so a px_admin_req lives on the stack of dispatch().
 *
 * Connections (slowloris defences): evhttp 2.1 counts no connections and its timeout
 * restarts with every byte read, so each connection gets a struct admin_conn of ours.  It
 * is made where evhttp asks for the connection's bufferevent (our bevcb, plain or TLS), is
 * attached to the evhttp_connection one loop turn later (evhttp gives no accept hook; the
 * connection is the argument of the callbacks it sets on that bufferevent), and is freed
 * by the connection's close callback.  Over admin_max_connections, the connection is freed
 * when it is attached; otherwise a deadline timer closes it unless a complete request
 * arrives within admin_request_timeout_ms (rearmed at each request).  We hold a reference
 * on the bufferevent for the connection's life, so the timer can always tell whether
 * evhttp has freed the connection behind our back (its callbacks are then cleared).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "admin/admin.h"
#include "base/config.h"
#include "base/json_util.h"
#include "base/list.h"
#include "base/log.h"
#include "net/listen.h"

#define TOKEN_DIGEST_LEN 32 /* SHA-256 */

struct route {
    unsigned methods;
    char *path;
    size_t pathlen;
    bool prefix;
    px_admin_handler_cb handler;
    void *arg;
};

/* One accepted admin connection (see the header comment). */
struct admin_conn {
    struct px_list link; /* on px_admin.conns */
    struct px_admin *admin;
    struct bufferevent *bev;         /* referenced by us until the connection is gone */
    struct evhttp_connection *evcon; /* NULL until attached */
    struct event *timer;             /* attach (at once), then the request deadline */
    bool refused;                    /* over admin_max_connections when accepted */
};

struct px_admin {
    struct event_base *base;
    struct evhttp *http;
    struct px_list conns; /* struct admin_conn */
    int nconns;
    int max_connections;               /* admin_max_connections */
    struct timeval deadline;           /* admin_request_timeout_ms */
    uint64_t refused;                  /* connections refused since the last warning */
    time_t refused_logged;             /* when that warning was last written */
    struct evhttp_bound_socket *bound; /* NULL when admin_port is 0 */
    char *addr;
    int port;
    bool has_token;
    unsigned char token_digest[TOKEN_DIGEST_LEN];
    SSL_CTX *ssl_ctx; /* NULL: plain HTTP */
    char *tls_cert;
    char *tls_key;
    struct route routes[PX_ADMIN_MAX_ROUTES];
    size_t nroutes;
};

struct px_admin_req {
    struct px_admin *admin;
    struct evhttp_request *ev;
    unsigned method;
    char *path; /* decoded */
    const char *subpath;
    struct evkeyvalq query;
    bool query_parsed;
    bool replied;
};

static char *errf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *errf(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return strdup(buf);
}

static bool str_eq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

static int token_digest(const char *token, size_t len, unsigned char out[TOKEN_DIGEST_LEN])
{
    unsigned int n = 0;
    if (EVP_Digest(token, len, out, &n, EVP_sha256(), NULL) != 1 || n != TOKEN_DIGEST_LEN)
        return -1;
    return 0;
}

/* ---- TLS ---- */

static SSL_CTX *tls_ctx_new(const char *cert, const char *key, char **errmsg)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        *errmsg = errf("admin TLS: cannot create context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* A client that hangs up without a close_notify ends its connection, as on the
     * PostgreSQL ports (net/tls.c); HTTP frames requests itself (Content-Length), so a
     * truncated one is never taken for a whole one. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        *errmsg = errf("admin TLS: cannot load admin_tls_cert_file %s: %s", cert,
                       ERR_reason_error_string(ERR_get_error()));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        *errmsg = errf("admin TLS: cannot load admin_tls_key_file %s: %s", key,
                       ERR_reason_error_string(ERR_get_error()));
        goto fail;
    }
    ERR_clear_error();
    return ctx;
fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

/* ---- connections ---- */

static void conn_free(struct admin_conn *ac)
{
    px_list_remove(&ac->link);
    ac->admin->nconns--;
    event_free(ac->timer);
    bufferevent_decref(ac->bev); /* evhttp's own reference may still hold it */
    free(ac);
}

/* evhttp is freeing the connection (its bufferevent goes right after). */
static void conn_closed(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    conn_free(arg);
}

/* Whether evhttp still has ac's connection: freeing it clears the bufferevent's callbacks. */
static bool conn_alive(const struct admin_conn *ac)
{
    bufferevent_event_cb eventcb = NULL;
    bufferevent_getcb(ac->bev, NULL, NULL, &eventcb, NULL);
    return eventcb != NULL;
}

static void refusal_note(struct px_admin *a)
{
    time_t now = time(NULL);
    a->refused++;
    if (now - a->refused_logged < 10)
        return; /* at most one line per 10 s, however hard the port is hit */
    px_warning("admin", 0, 0,
               "refused %llu admin connection(s): admin_max_connections (%d) are open",
               (unsigned long long)a->refused, a->max_connections);
    a->refused = 0;
    a->refused_logged = now;
}

/* The timer: first the attach step (right after the accept), then the request deadline. */
static void conn_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct admin_conn *ac = arg;
    if (!conn_alive(ac)) {
        conn_free(ac); /* gone without its close callback (setup failed inside evhttp) */
        return;
    }
    if (!ac->evcon) {
        void *cbarg = NULL;
        bufferevent_getcb(ac->bev, NULL, NULL, NULL, &cbarg);
        struct evhttp_connection *evcon = cbarg;
        PX_ASSERT(evhttp_connection_get_bufferevent(evcon) == ac->bev);
        ac->evcon = evcon;
        evhttp_connection_set_closecb(evcon, conn_closed, ac);
        /* Without TCP_NODELAY an answer written in more than one segment (/metrics) waits
         * for the client's delayed ACK (~40 ms) on every request of a kept-alive
         * connection after the first. */
        evutil_socket_t sock = bufferevent_getfd(ac->bev);
        int one = 1;
        if (sock >= 0)
            (void)setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (ac->refused) {
            refusal_note(ac->admin);
            evhttp_connection_free(evcon); /* calls conn_closed */
            return;
        }
        evtimer_add(ac->timer, &ac->admin->deadline);
        return;
    }
    px_debug("admin", 0, 0, "closing an admin connection: no complete request within %ld ms",
             (long)(ac->admin->deadline.tv_sec * 1000 + ac->admin->deadline.tv_usec / 1000));
    evhttp_connection_free(ac->evcon); /* calls conn_closed */
}

/* evhttp calls this for every accepted connection: we make its bufferevent (TLS or plain)
 * and start tracking it. */
static struct bufferevent *conn_bevcb(struct event_base *base, void *arg)
{
    struct px_admin *a = arg;
    struct admin_conn *ac = calloc(1, sizeof(*ac));
    SSL *ssl = NULL;
    struct bufferevent *bev = NULL;
    if (!ac)
        goto fail;
    if (a->ssl_ctx) {
        ssl = SSL_new(a->ssl_ctx);
        bev = ssl ? bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                   BEV_OPT_CLOSE_ON_FREE)
                  : NULL;
        if (!bev)
            SSL_free(ssl);
    } else {
        bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    ac->timer = bev ? evtimer_new(base, conn_timer, ac) : NULL;
    if (!ac->timer)
        goto fail;
    ac->admin = a;
    ac->bev = bev;
    bufferevent_incref(bev);
    ac->refused = a->nconns >= a->max_connections;
    px_list_append(&a->conns, &ac->link);
    a->nconns++;
    event_active(ac->timer, EV_TIMEOUT, 0); /* attach once evhttp has set the bev up */
    return bev;
fail:
    /* evhttp then makes a plain bufferevent itself: a TLS client fails its handshake, a
     * plain one is served without our limits (only when memory ran out). */
    px_error("admin", 0, 0, "out of memory accepting an admin connection");
    if (bev)
        bufferevent_free(bev);
    free(ac);
    return NULL;
}

/* A complete request arrived on evcon: the next one has a new deadline. */
static void conn_request_seen(struct px_admin *a, struct evhttp_connection *evcon)
{
    struct px_list *it;
    px_list_for_each_reverse(it, &a->conns)
    {
        struct admin_conn *ac = PX_CONTAINER_OF(it, struct admin_conn, link);
        if (ac->evcon == evcon) {
            evtimer_add(ac->timer, &a->deadline);
            return;
        }
    }
}

/* ---- settings that can change on reload ---- */

struct settings {
    bool has_token;
    unsigned char digest[TOKEN_DIGEST_LEN];
    SSL_CTX *ssl_ctx;
    struct evhttp_bound_socket *bound;
    bool rebind;
};

/* Prepares everything cfg needs without touching a; on failure releases what it made. */
static int settings_prepare(struct px_admin *a, const struct px_config *cfg, struct settings *s,
                            char **errmsg)
{
    memset(s, 0, sizeof *s);
    if (cfg->admin_token && cfg->admin_token[0]) {
        s->has_token = true;
        if (token_digest(cfg->admin_token, strlen(cfg->admin_token), s->digest) < 0) {
            *errmsg = errf("admin: cannot hash admin_token");
            return -1;
        }
    }
    bool want_tls = cfg->admin_tls_cert_file && cfg->admin_tls_cert_file[0];
    if (want_tls && !(cfg->admin_tls_key_file && cfg->admin_tls_key_file[0])) {
        *errmsg = errf("admin TLS: admin_tls_cert_file is set but admin_tls_key_file is not");
        return -1;
    }
    if (want_tls) {
        s->ssl_ctx = tls_ctx_new(cfg->admin_tls_cert_file, cfg->admin_tls_key_file, errmsg);
        if (!s->ssl_ctx)
            return -1;
    }
    const char *addr = cfg->admin_addr && cfg->admin_addr[0] ? cfg->admin_addr : "127.0.0.1";
    s->rebind =
        cfg->admin_port != a->port || !str_eq(addr, a->addr) || (cfg->admin_port > 0 && !a->bound);
    if (s->rebind && cfg->admin_port > 0) {
        s->bound = evhttp_bind_socket_with_handle(a->http, addr, (ev_uint16_t)cfg->admin_port);
        if (!s->bound) {
            *errmsg = errf("admin: cannot listen on %s:%d: %s", addr, cfg->admin_port,
                           strerror(errno ? errno : EADDRINUSE));
            SSL_CTX_free(s->ssl_ctx);
            return -1;
        }
    }
    return 0;
}

static int settings_apply(struct px_admin *a, const struct px_config *cfg, struct settings *s)
{
    const char *addr = cfg->admin_addr && cfg->admin_addr[0] ? cfg->admin_addr : "127.0.0.1";
    char *addr_copy = strdup(addr);
    char *cert = cfg->admin_tls_cert_file ? strdup(cfg->admin_tls_cert_file) : NULL;
    char *key = cfg->admin_tls_key_file ? strdup(cfg->admin_tls_key_file) : NULL;
    if (!addr_copy || (cfg->admin_tls_cert_file && !cert) || (cfg->admin_tls_key_file && !key)) {
        free(addr_copy);
        free(cert);
        free(key);
        if (s->bound)
            evhttp_del_accept_socket(a->http, s->bound);
        SSL_CTX_free(s->ssl_ctx);
        return -1;
    }
    a->has_token = s->has_token;
    memcpy(a->token_digest, s->digest, sizeof a->token_digest);
    SSL_CTX_free(a->ssl_ctx); /* live SSL objects keep their own reference */
    a->ssl_ctx = s->ssl_ctx;
    a->max_connections = cfg->admin_max_connections;
    a->deadline.tv_sec = cfg->admin_request_timeout_ms / 1000;
    a->deadline.tv_usec = (cfg->admin_request_timeout_ms % 1000) * 1000;
    if (s->rebind) {
        if (a->bound) {
            px_listen_unguard(evhttp_bound_socket_get_listener(a->bound));
            evhttp_del_accept_socket(a->http, a->bound);
        }
        a->bound = s->bound;
        a->port = cfg->admin_port;
        if (a->bound) {
            /* Out of descriptors: back off instead of spinning (listen.h).  Without the
             * guard (no memory) the port still works. */
            char name[300];
            snprintf(name, sizeof(name), "admin %s:%d", addr, a->port);
            (void)px_listen_guard(evhttp_bound_socket_get_listener(a->bound), name);
        }
    }
    free(a->addr);
    a->addr = addr_copy;
    free(a->tls_cert);
    a->tls_cert = cert;
    free(a->tls_key);
    a->tls_key = key;
    return 0;
}

/* ---- lifecycle ---- */

static void dispatch(struct evhttp_request *ev, void *arg);

struct px_admin *px_admin_new(struct event_base *base, const struct px_config *cfg, char **errmsg)
{
    *errmsg = NULL;
    struct px_admin *a = calloc(1, sizeof *a);
    if (!a) {
        *errmsg = errf("admin: out of memory");
        return NULL;
    }
    a->base = base;
    px_list_init(&a->conns);
    a->http = evhttp_new(base);
    if (!a->http) {
        *errmsg = errf("admin: cannot create the HTTP server");
        goto fail;
    }
    evhttp_set_max_headers_size(a->http, PX_ADMIN_MAX_HEADERS_BYTES);
    evhttp_set_max_body_size(a->http, PX_ADMIN_MAX_BODY_BYTES);
    evhttp_set_timeout(a->http, PX_ADMIN_TIMEOUT_SECS);
    /* Every method evhttp knows reaches the router, so that a wrong one gets 405. */
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_default_content_type(a->http, "application/json");
    evhttp_set_gencb(a->http, dispatch, a);
    evhttp_set_bevcb(a->http, conn_bevcb, a);
    if (px_admin_register_builtin(a) < 0) {
        *errmsg = errf("admin: cannot register the built-in routes");
        goto fail;
    }
    struct settings s;
    if (settings_prepare(a, cfg, &s, errmsg) < 0)
        goto fail;
    if (settings_apply(a, cfg, &s) < 0) {
        *errmsg = errf("admin: out of memory");
        goto fail;
    }
    if (a->bound)
        px_info("admin", 0, 0, "admin port listening on %s:%d%s%s", a->addr, a->port,
                a->ssl_ctx ? " (TLS)" : "", a->has_token ? " (token required)" : "");
    return a;
fail:
    px_admin_free(a);
    return NULL;
}

int px_admin_reconfigure(struct px_admin *a, const struct px_config *cfg, char **errmsg)
{
    *errmsg = NULL;
    struct settings s;
    if (settings_prepare(a, cfg, &s, errmsg) < 0)
        return -1;
    if (settings_apply(a, cfg, &s) < 0) {
        *errmsg = errf("admin: out of memory");
        return -1;
    }
    if (s.rebind)
        px_info("admin", 0, 0, "admin port now on %s:%d", a->addr, a->port);
    return 0;
}

int px_admin_check(const struct px_config *cfg, char **errmsg)
{
    *errmsg = NULL;
    if (!cfg->admin_tls_cert_file || !cfg->admin_tls_cert_file[0])
        return 0;
    SSL_CTX *ctx = tls_ctx_new(cfg->admin_tls_cert_file, cfg->admin_tls_key_file, errmsg);
    SSL_CTX_free(ctx);
    return ctx ? 0 : -1;
}

void px_admin_free(struct px_admin *a)
{
    if (!a)
        return;
    if (a->bound)
        px_listen_unguard(evhttp_bound_socket_get_listener(a->bound));
    if (a->http)
        evhttp_free(a->http);         /* closes the listener and the connections (conn_closed) */
    while (!px_list_empty(&a->conns)) /* not yet attached, or missed by conn_closed */
        conn_free(PX_CONTAINER_OF(px_list_first(&a->conns), struct admin_conn, link));
    SSL_CTX_free(a->ssl_ctx);
    for (size_t i = 0; i < a->nroutes; i++)
        free(a->routes[i].path);
    free(a->addr);
    free(a->tls_cert);
    free(a->tls_key);
    free(a);
}

int px_admin_route_add(struct px_admin *a, unsigned methods, const char *path, bool prefix,
                       px_admin_handler_cb handler, void *arg)
{
    if (!a || !path || path[0] != '/' || !handler || !methods || a->nroutes >= PX_ADMIN_MAX_ROUTES)
        return -1;
    struct route *r = &a->routes[a->nroutes];
    r->path = strdup(path);
    if (!r->path)
        return -1;
    r->pathlen = strlen(path);
    r->methods = methods;
    r->prefix = prefix;
    r->handler = handler;
    r->arg = arg;
    a->nroutes++;
    return 0;
}

/* ---- method names ---- */

static const struct {
    unsigned bit;
    const char *name;
} method_names[] = {
    {PX_ADMIN_GET, "GET"},       {PX_ADMIN_POST, "POST"},   {PX_ADMIN_PUT, "PUT"},
    {PX_ADMIN_DELETE, "DELETE"}, {PX_ADMIN_PATCH, "PATCH"},
};

static unsigned method_bit(enum evhttp_cmd_type t)
{
    switch (t) {
    case EVHTTP_REQ_GET:
    case EVHTTP_REQ_HEAD: return PX_ADMIN_GET;
    case EVHTTP_REQ_POST: return PX_ADMIN_POST;
    case EVHTTP_REQ_PUT: return PX_ADMIN_PUT;
    case EVHTTP_REQ_DELETE: return PX_ADMIN_DELETE;
    case EVHTTP_REQ_PATCH: return PX_ADMIN_PATCH;
    default: return 0; /* OPTIONS, TRACE, CONNECT: never routed, always 405 */
    }
}

static void allow_header(unsigned methods, char *buf, size_t n)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof method_names / sizeof method_names[0]; i++) {
        if (!(methods & method_names[i].bit))
            continue;
        o += (size_t)snprintf(buf + o, o < n ? n - o : 0, "%s%s", o ? ", " : "",
                              method_names[i].name);
        if (method_names[i].bit == PX_ADMIN_GET)
            o += (size_t)snprintf(buf + o, o < n ? n - o : 0, ", HEAD");
    }
}

struct json_t *px_admin_routes_json(const struct px_admin *a)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < a->nroutes; i++) {
        const struct route *r = &a->routes[i];
        json_t *m = json_array();
        for (size_t j = 0; m && j < sizeof method_names / sizeof method_names[0]; j++)
            if (r->methods & method_names[j].bit)
                json_array_append_new(m, json_string(method_names[j].name));
        json_t *o =
            json_pack("{s:s, s:b, s:o*}", "path", r->path, "prefix", r->prefix, "methods", m);
        if (!o || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

/* ---- replies ---- */

static void send_reply(struct px_admin_req *req, int status, const char *content_type,
                       struct evbuffer *body)
{
    PX_ASSERT(!req->replied);
    if (req->replied)
        return;
    req->replied = true;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req->ev);
    evhttp_remove_header(h, "Content-Type");
    evhttp_add_header(h, "Content-Type", content_type);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req->ev);
    if ((cmd == EVHTTP_REQ_HEAD || cmd == EVHTTP_REQ_CONNECT) && body) {
        /* libevent 2.1 sets no Content-Length for these.  HEAD: the GET answer's length, no
         * body (libevent would send it).  CONNECT (its path is never one of ours: 400): the
         * body's length, or a client could not tell where it ends on a kept-alive
         * connection (libevent never closes one after a CONNECT). */
        char len[32];
        snprintf(len, sizeof(len), "%zu", evbuffer_get_length(body));
        evhttp_add_header(h, "Content-Length", len);
        if (cmd == EVHTTP_REQ_HEAD)
            evbuffer_drain(body, evbuffer_get_length(body));
    }
    evhttp_send_reply(req->ev, status, NULL, body);
    if (status >= 500 && status != 503) /* 503 is /health's normal answer */
        px_warning("admin", 0, 0, "%s: answered %d", req->path ? req->path : "?", status);
}

static int dump_cb(const char *buf, size_t size, void *data)
{
    return evbuffer_add(data, buf, size);
}

void px_admin_reply_json(struct px_admin_req *req, int status, struct json_t *body)
{
    struct evbuffer *b = evbuffer_new();
    if (!body || !b || json_dump_callback(body, dump_cb, b, JSON_COMPACT) < 0 ||
        evbuffer_add(b, "\n", 1) < 0) {
        if (b)
            evbuffer_free(b);
        json_decref(body);
        /* Out of memory: a fixed answer that needs no allocation by jansson. */
        struct evbuffer *e = evbuffer_new();
        if (e && evbuffer_add(e, "{\"error\":\"out of memory\"}\n", 26) == 0) {
            send_reply(req, 500, "application/json", e);
        } else if (!req->replied) {
            req->replied = true;
            evhttp_send_error(req->ev, 500, NULL);
        }
        if (e)
            evbuffer_free(e);
        return;
    }
    json_decref(body);
    send_reply(req, status, "application/json", b);
    evbuffer_free(b);
}

void px_admin_reply_error(struct px_admin_req *req, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *m = px_json_string(msg); /* the message may quote client input */
    px_admin_reply_json(req, status, m ? json_pack("{s:o}", "error", m) : NULL);
}

void px_admin_reply_buffer(struct px_admin_req *req, int status, const char *content_type,
                           struct evbuffer *body)
{
    send_reply(req, status, content_type, body);
}

/* ---- request accessors ---- */

unsigned px_admin_req_method(const struct px_admin_req *req)
{
    return req->method;
}

const char *px_admin_req_path(const struct px_admin_req *req)
{
    return req->path;
}

const char *px_admin_req_subpath(const struct px_admin_req *req)
{
    return req->subpath ? req->subpath : "";
}

const char *px_admin_req_query(struct px_admin_req *req, const char *key)
{
    if (!req->query_parsed) {
        const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req->ev);
        const char *q = u ? evhttp_uri_get_query(u) : NULL;
        req->query_parsed = true; /* evhttp_parse_query_str initializes the list */
        if (evhttp_parse_query_str(q ? q : "", &req->query) < 0)
            return NULL;
    }
    return evhttp_find_header(&req->query, key);
}

const char *px_admin_req_body(struct px_admin_req *req, size_t *len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req->ev);
    *len = evbuffer_get_length(in);
    return *len ? (const char *)evbuffer_pullup(in, -1) : NULL;
}

struct json_t *px_admin_req_json(struct px_admin_req *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req->ev);
    size_t len = evbuffer_get_length(in);
    if (len == 0) {
        px_admin_reply_error(req, 400, "a JSON request body is required");
        return NULL;
    }
    const char *data = (const char *)evbuffer_pullup(in, -1);
    json_error_t jerr;
    json_t *j = data ? json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    if (!j)
        px_admin_reply_error(req, 400, "invalid JSON body: %s (line %d, column %d)",
                             data ? jerr.text : "out of memory", data ? jerr.line : 0,
                             data ? jerr.column : 0);
    return j;
}

/* ---- auth and routing ---- */

/* 0 when the request carries the configured token. */
static int check_token(const struct px_admin *a, struct evhttp_request *ev, const char **why)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(ev), "Authorization");
    *why = "missing bearer token";
    if (!h)
        return -1;
    while (*h == ' ')
        h++;
    if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
        return -1;
    h += 6;
    while (*h == ' ' || *h == '\t')
        h++;
    size_t len = strlen(h);
    while (len > 0 && (h[len - 1] == ' ' || h[len - 1] == '\t'))
        len--;
    unsigned char d[TOKEN_DIGEST_LEN];
    *why = "invalid token";
    if (token_digest(h, len, d) < 0)
        return -1;
    return CRYPTO_memcmp(d, a->token_digest, sizeof d) == 0 ? 0 : -1;
}

/* The route for path, or NULL; *path_methods gets the methods of every route that
 * matches the path (for 405 and its Allow header). */
static const struct route *route_find(const struct px_admin *a, const char *path, unsigned m,
                                      unsigned *path_methods)
{
    *path_methods = 0;
    const struct route *found = NULL;
    for (size_t i = 0; i < a->nroutes; i++) {
        const struct route *r = &a->routes[i];
        bool match = r->prefix
                         ? strncmp(path, r->path, r->pathlen) == 0 ||
                               (r->path[r->pathlen - 1] == '/' && strlen(path) == r->pathlen - 1 &&
                                strncmp(path, r->path, r->pathlen - 1) == 0)
                         : strcmp(path, r->path) == 0;
        if (!match)
            continue;
        *path_methods |= r->methods;
        if (!found && (r->methods & m))
            found = r;
    }
    return found;
}

static void reply_unauthorized(struct px_admin_req *req, const char *why)
{
    evhttp_add_header(evhttp_request_get_output_headers(req->ev), "WWW-Authenticate",
                      strcmp(why, "invalid token") == 0
                          ? "Bearer realm=\"pgwarden\", error=\"invalid_token\""
                          : "Bearer realm=\"pgwarden\"");
    px_admin_reply_error(req, 401, "%s", why);
}

static void route_request(struct px_admin_req *req)
{
    struct px_admin *a = req->admin;
    const char *why;
    if (a->has_token && check_token(a, req->ev, &why) < 0) {
        px_debug("admin", 0, 0, "%s: %s", req->path, why);
        reply_unauthorized(req, why);
        return;
    }
    unsigned path_methods;
    const struct route *r = route_find(a, req->path, req->method, &path_methods);
    if (!r && !path_methods) {
        px_admin_reply_error(req, 404, "no such endpoint: %s", req->path);
        return;
    }
    if (!r) {
        char allow[64];
        allow_header(path_methods, allow, sizeof allow);
        evhttp_add_header(evhttp_request_get_output_headers(req->ev), "Allow", allow);
        px_admin_reply_error(req, 405, "method not allowed; allowed: %s", allow);
        return;
    }
    if ((req->method & ~(unsigned)PX_ADMIN_GET) && !a->has_token) {
        px_admin_reply_error(req, 403, "mutating requests are refused: no admin_token is set");
        return;
    }
    if (req->method & ~(unsigned)PX_ADMIN_GET) {
        /* No route reads query parameters: on a request that changes something, one that
         * is ignored could do more than its sender meant (DELETE /chaos?id=3 would clear
         * every rule). */
        const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req->ev);
        const char *q = u ? evhttp_uri_get_query(u) : NULL;
        if (q && *q) {
            px_admin_reply_error(req, 400, "query parameters are not accepted here: %s?%s",
                                 req->path, q);
            return;
        }
    }
    req->subpath =
        r->prefix ? req->path + (strlen(req->path) >= r->pathlen ? r->pathlen : strlen(req->path))
                  : "";
    r->handler(req, r->arg);
    if (!req->replied) {
        PX_ASSERT(!"admin handler returned without replying");
        px_admin_reply_error(req, 500, "internal error: no reply");
    }
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * The percent-decoded copy of a request path (owned, free()), its length in *len; NULL
 * when a '%' is not followed by two hex digits (evhttp_uridecode would keep such bytes
 * as they are, so "/locks/a%2" would name the key "a%2") or when out of memory.  '+' is
 * not a space in a path.
 */
static char *path_decode(const char *raw, size_t *len)
{
    size_t n = strlen(raw), o = 0;
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (raw[i] != '%') {
            out[o++] = raw[i];
            continue;
        }
        /* raw is NUL-terminated: raw[i + 2] is read only when raw[i + 1] is a digit. */
        int hi = hex_value(raw[i + 1]);
        int lo = hi >= 0 ? hex_value(raw[i + 2]) : -1;
        if (lo < 0) {
            free(out);
            return NULL;
        }
        out[o++] = (char)(hi << 4 | lo);
        i += 2;
    }
    out[o] = '\0';
    *len = o;
    return out;
}

static void dispatch(struct evhttp_request *ev, void *arg)
{
    struct px_admin_req req = {.admin = arg, .ev = ev};
    conn_request_seen(req.admin, evhttp_request_get_connection(ev));
    req.method = method_bit(evhttp_request_get_command(ev));
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(ev);
    const char *raw = uri ? evhttp_uri_get_path(uri) : NULL;
    size_t dlen = 0;
    req.path = raw ? path_decode(raw, &dlen) : NULL;
    if (!req.path || dlen != strlen(req.path) || req.path[0] != '/' ||
        !px_utf8_valid(req.path, dlen)) {
        free(req.path);
        req.path = strdup("?");
        px_admin_reply_error(&req, 400, "bad request path");
    } else {
        route_request(&req);
    }
    if (req.query_parsed)
        evhttp_clear_headers(&req.query);
    free(req.path);
}
