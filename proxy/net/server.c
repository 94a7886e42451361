/*
 * server.c: server connections (see server.h).
 *
 * Login sequence, as libpq runs it:
 *   connect -> [SSLRequest -> 'S' + TLS handshake | 'N' (prefer only)]
 *   -> StartupMessage(user, database, the opener's startup parameters)
 *   -> AuthenticationXXX exchanges (cleartext, md5, SCRAM-SHA-256)
 *   -> ParameterStatus* BackendKeyData ReadyForQuery  => idle, handed to the pool
 * An ErrorResponse during login fails the waiting clients that share the opener's
 * signature with exactly the server's error.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>

#include "base/log.h"
#include "metrics/stats.h"
#include "net/cancel.h"
#include "net/client.h"
#include "net/server.h"
#include "net/tls.h"

#define LOGIN_MAX_MESSAGE (1u << 20)

static void server_read_cb(struct bufferevent *bev, void *arg);
static void server_write_cb(struct bufferevent *bev, void *arg);
static void server_event_cb(struct bufferevent *bev, short what, void *arg);

static struct px_list *list_of(struct px_pool *p, enum px_server_state st, int **count)
{
    switch (st) {
    case PX_SV_LOGIN: *count = &p->n_login; return &p->servers_login;
    case PX_SV_IDLE: *count = &p->n_idle; return &p->servers_idle;
    case PX_SV_ACTIVE: *count = &p->n_active; return &p->servers_active;
    case PX_SV_RESETTING: *count = &p->n_resetting; return &p->servers_resetting;
    case PX_SV_CLOSING: break;
    }
    *count = NULL;
    return &px.servers_closing;
}

void px_server_set_state(struct px_server *s, enum px_server_state st)
{
    static const bool legal[5][5] = {
        [PX_SV_LOGIN] = {[PX_SV_IDLE] = true, [PX_SV_ACTIVE] = true, [PX_SV_CLOSING] = true},
        [PX_SV_IDLE] = {[PX_SV_ACTIVE] = true, [PX_SV_CLOSING] = true},
        [PX_SV_ACTIVE] = {[PX_SV_IDLE] = true, [PX_SV_RESETTING] = true, [PX_SV_CLOSING] = true},
        [PX_SV_RESETTING] = {[PX_SV_IDLE] = true, [PX_SV_ACTIVE] = true, [PX_SV_CLOSING] = true},
        [PX_SV_CLOSING] = {false},
    };
    PX_ASSERT(legal[s->state][st]);
    if (!legal[s->state][st]) {
        px_error("server", 'S', s->id, "illegal state change %d -> %d", s->state, st);
        return;
    }
    int *count;
    px_list_remove(&s->link);
    list_of(s->pool, s->state, &count);
    if (count)
        (*count)--;
    struct px_list *l = list_of(s->pool, st, &count);
    if (count)
        (*count)++;
    px_list_append(l, &s->link);
    s->state = st;
    if (st == PX_SV_CLOSING)
        event_active(px.reaper, EV_TIMEOUT, 0);
}

int px_server_param_status(struct px_server *s, const uint8_t *body, uint32_t len,
                           const char **name, const char **value)
{
    if (px_params_parse_status(body, len, name, value) < 0 ||
        px_params_set(&s->params, *name, *value) < 0)
        return -1;
    return 0;
}

/* ParameterStatus outside relaying (login, reset, idle): the server's own view. */
static int apply_param_status(struct px_server *s, const uint8_t *body, uint32_t len)
{
    const char *name, *value;
    return px_server_param_status(s, body, len, &name, &value);
}

/* Fails s in the way its state calls for: a login failure reaches the waiting clients. */
static void server_fail(struct px_server *s, const char *why)
{
    if (s->state == PX_SV_LOGIN)
        px_pool_server_login_failed(s, NULL, why);
    else
        px_server_close(s, why);
}

/* ---- launch and connect --------------------------------------------------------------- */

int px_server_address(const struct px_pool *pool, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (pool->host[0] == '/') {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        un->sun_family = AF_UNIX;
        if ((size_t)snprintf(un->sun_path, sizeof(un->sun_path), "%s/.s.PGSQL.%d", pool->host,
                             pool->port) >= sizeof(un->sun_path))
            return -1;
        *len = sizeof(*un);
        return 0;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char port[16];
    snprintf(port, sizeof(port), "%d", pool->port);
    if (getaddrinfo(pool->host, port, &hints, &res) != 0 || !res)
        return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int connect_socket(struct px_server *s, struct px_pool *pool)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (px_server_address(pool, &ss, &sslen) < 0)
        return -1;
    evutil_socket_t fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (ss.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    s->fd = fd;
    s->bev = bufferevent_socket_new(px.base, fd, 0);
    if (!s->bev || px_reader_bind(&s->rd, px.base, s->bev, fd) < 0)
        return -1;
    bufferevent_setcb(s->bev, server_read_cb, server_write_cb, server_event_cb, s);
    bufferevent_setwatermark(s->bev, EV_WRITE, PX_BACKPRESSURE_LOW, 0);
    if (bufferevent_socket_connect(s->bev, (struct sockaddr *)&ss, (int)sslen) < 0)
        return -1;
    bufferevent_enable(s->bev, EV_WRITE); /* reading starts once connected */
    return 0;
}

struct px_server *px_server_launch(struct px_pool *pool, struct px_client *opener)
{
    struct px_server *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->fd = -1;
    s->id = ++px.next_server_id;
    s->pool = pool;
    px_pool_ref(pool);
    s->state = PX_SV_LOGIN;
    s->login_step = PX_SVL_CONNECT;
    s->created_ms = s->last_used_ms = px_now_ms();
    s->login_deadline_ms = s->created_ms + (uint64_t)px.cfg->server_connect_timeout_ms;
    s->txn_status = 'I';
    s->opener = opener;
    /* signature and hard signature in one allocation (no opener: both empty) */
    const char *sig = opener ? opener->signature : "", *hard = opener ? opener->hard_signature : "";
    size_t sig_len = opener ? opener->signature_len : 0;
    size_t hard_len = opener ? opener->hard_signature_len : 0;
    s->signature = malloc(sig_len + 1 + hard_len + 1);
    if (!s->signature) {
        free(s);
        return NULL;
    }
    memcpy(s->signature, sig, sig_len + 1);
    s->signature_len = sig_len;
    s->hard_signature = s->signature + s->signature_len + 1;
    memcpy(s->hard_signature, hard, hard_len + 1);
    s->hard_signature_len = hard_len;
    if (opener && opener->have_client_key && !strcmp(opener->user, pool->server_user)) {
        memcpy(s->client_key, opener->client_key, PX_SCRAM_KEY_LEN);
        s->have_client_key = true;
    }
    px_list_init(&s->link);
    px_list_append(&pool->servers_login, &s->link);
    pool->n_login++;
    if (connect_socket(s, pool) < 0) {
        /* libevent may already have reported the failure through server_event_cb (a Unix
         * socket that does not exist fails inside connect()): then s is closed already. */
        int err = errno;
        /* out of descriptors or memory here is pgwarden's shortage, not the database's:
         * the operator must see which (nothing counts it against the database) */
        bool local = err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
        px_warning("server", 'S', s->id, "cannot connect to %s:%d: %s%s", pool->host, pool->port,
                   strerror(err), local ? " (pgwarden's own limit, not the database's)" : "");
        s->opener = NULL;
        if (s->state != PX_SV_CLOSING)
            px_server_set_state(s, PX_SV_CLOSING);
        return NULL;
    }
    px_debug("server", 'S', s->id, "connecting to %s:%d for %s/%s", pool->host, pool->port,
             pool->database, pool->user);
    return s;
}

/* The StartupMessage: the pool's user and database, then the opener's parameters (as many
 * as the client sent: PostgreSQL takes any number within its packet limit). */
static void send_startup(struct px_server *s)
{
    struct px_pool *pool = s->pool;
    const char *p, *end = s->signature + s->signature_len;
    size_t n = 2;
    for (p = s->signature; p < end; p += strlen(p) + 1) /* names and values */
        n++;
    struct px_startup_param *params = calloc(n / 2 + 2, sizeof(*params));
    if (!params) {
        server_fail(s, "out of memory");
        return;
    }
    n = 0;
    params[n++] = (struct px_startup_param){"user", pool->server_user};
    params[n++] = (struct px_startup_param){"database", pool->dbname};
    for (p = s->signature; p < end;) {
        const char *name = p;
        const char *value = name + strlen(name) + 1;
        params[n++] = (struct px_startup_param){name, value};
        p = value + strlen(value) + 1;
    }
    int rc = px_wire_startup(bufferevent_get_output(s->bev), params, n);
    free(params);
    if (rc < 0) {
        server_fail(s, "out of memory");
        return;
    }
    s->login_step = PX_SVL_AUTH;
}

static void start_tls(struct px_server *s)
{
    SSL *ssl = px_tls_server_ssl_new(px.server_tls, px.cfg->server_tls_mode, s->pool->host);
    if (!ssl) {
        server_fail(s, "cannot create TLS connection to server");
        return;
    }
    if (px_reader_switch_to_tls(&s->rd, px.base, &s->bev, s->fd, ssl, BUFFEREVENT_SSL_CONNECTING,
                                true) < 0) {
        server_fail(s, "cannot create TLS connection to server");
        return;
    }
    s->fd_in_tls_bev = true;
    s->login_step = PX_SVL_TLS;
}

/* ---- authentication as a client of PostgreSQL ------------------------------------------ */

const char *px_pool_server_password(const struct px_pool *pool)
{
    if (pool->server_password)
        return pool->server_password;
    const struct px_user *u = px.users ? px_userlist_find(px.users, pool->server_user) : NULL;
    return u ? u->password : NULL;
}

static const char *server_password(const struct px_server *s)
{
    return px_pool_server_password(s->pool);
}

static int auth_md5(struct px_server *s, const uint8_t *salt)
{
    const char *pw = server_password(s);
    const struct px_user *u = px.users ? px_userlist_find(px.users, s->pool->server_user) : NULL;
    char hash[36], resp[36];
    if (pw)
        px_md5_encrypt(pw, s->pool->server_user, hash);
    else if (u && u->md5)
        memcpy(hash, u->md5, 36);
    else
        return -1;
    px_md5_salted(hash, salt, resp);
    return px_wire_msg(bufferevent_get_output(s->bev), 'p', resp, 36);
}

static int auth_sasl_start(struct px_server *s, const uint8_t *body, uint32_t len)
{
    bool offered = false;
    for (const char *p = (const char *)body, *end = p + len; p < end && *p; p += strlen(p) + 1) {
        if (!memchr(p, '\0', (size_t)(end - p)))
            return -1;
        if (!strcmp(p, "SCRAM-SHA-256"))
            offered = true;
    }
    if (!offered)
        return -1;
    const char *pw = server_password(s);
    if (pw) {
        s->scram = px_scram_client_new(pw);
    } else {
        /* SCRAM passthrough: keys recovered from the opener's own SCRAM login. */
        const struct px_scram_secret *secret =
            px.users ? px_userlist_scram(px.users, s->pool->server_user) : NULL;
        if (!s->have_client_key || !secret)
            return -1;
        s->scram = px_scram_client_new_keys(s->client_key, secret);
    }
    char *first = NULL;
    if (!s->scram || px_scram_client_first(s->scram, &first) < 0)
        return -1;
    size_t flen = strlen(first);
    struct evbuffer *out = bufferevent_get_output(s->bev);
    uint8_t l[4];
    px_put_u32(l, (uint32_t)flen);
    uint8_t hdr[5] = {'p'};
    px_put_u32(hdr + 1, (uint32_t)(4 + 14 + 4 + flen));
    evbuffer_add(out, hdr, 5);
    evbuffer_add(out, "SCRAM-SHA-256", 14);
    evbuffer_add(out, l, 4);
    evbuffer_add(out, first, flen);
    free(first);
    return 0;
}

static int handle_auth(struct px_server *s, const uint8_t *body, uint32_t len)
{
    if (len < 4)
        return -1;
    uint32_t code = px_get_u32(body);
    body += 4;
    len -= 4;
    switch (code) {
    case PX_AUTH_OK: return 0;
    case PX_AUTH_CLEARTEXT: {
        const char *pw = server_password(s);
        if (!pw)
            return -1;
        return px_wire_msg(bufferevent_get_output(s->bev), 'p', pw, strlen(pw) + 1);
    }
    case PX_AUTH_MD5_REQ: return len == 4 ? auth_md5(s, body) : -1;
    case PX_AUTH_SASL: return auth_sasl_start(s, body, len);
    case PX_AUTH_SASL_CONTINUE: {
        char *final = NULL;
        if (!s->scram || px_scram_client_final(s->scram, (const char *)body, len, &final) < 0)
            return -1;
        int rc = px_wire_msg(bufferevent_get_output(s->bev), 'p', final, strlen(final));
        free(final);
        return rc;
    }
    case PX_AUTH_SASL_FINAL:
        if (!s->scram || px_scram_client_verify(s->scram, (const char *)body, len) < 0)
            return -1;
        px_scram_client_free(s->scram);
        s->scram = NULL;
        return 0;
    default: return -1;
    }
}

/* Handles one whole message; returns false once it stopped reading (closed s or moved it
 * to another state). */
typedef bool (*server_msg_cb)(struct px_server *s, char type, const uint8_t *body, uint32_t len);

/*
 * Reads whole messages while s stays in its current state.  Each message is taken out of
 * the buffer before handle sees it, so a handler may link s to a client and start relaying
 * whatever follows.  Only for the small messages of login, reset and idle time.
 */
static void read_messages(struct px_server *s, server_msg_cb handle)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    enum px_server_state state = s->state;
    while (s->state == state) {
        char type;
        uint8_t *body;
        uint32_t len;
        int r = px_take_message(in, LOGIN_MAX_MESSAGE, &type, &body, &len);
        if (r == 0)
            return;
        if (r < 0) {
            server_fail(s, "invalid message from server");
            return;
        }
        bool more = handle(s, type, body, len);
        free(body);
        if (!more)
            return;
    }
}

static bool login_message(struct px_server *s, char type, const uint8_t *body, uint32_t len)
{
    switch (type) {
    case 'R':
        if (handle_auth(s, body, len) < 0) {
            s->login_no_credentials = true; /* the database answered: not its failure */
            server_fail(s, "pgwarden cannot authenticate to the server: no usable credentials "
                           "for this user");
            return false;
        }
        return true;
    case 'S':
        if (apply_param_status(s, body, len) < 0) {
            server_fail(s, "invalid ParameterStatus from server");
            return false;
        }
        return true;
    case 'K':
        if (len != 8) {
            server_fail(s, "invalid BackendKeyData from server");
            return false;
        }
        s->backend_pid = px_get_u32(body);
        s->backend_key = px_get_u32(body + 4);
        return true;
    case 'Z':
        s->txn_status = len ? (char)body[0] : 'I';
        px_stats_server_connected(s->pool, px_now_ms() - s->created_ms);
        px_debug("server", 'S', s->id, "logged in (backend pid %u)", s->backend_pid);
        px_pool_server_logged_in(s);
        return false;
    case 'E': {
        /* The clients waiting for this server get PostgreSQL's own error. */
        struct evbuffer *err = evbuffer_new();
        if (err)
            px_wire_msg(err, 'E', body, len);
        const char *msg = px_wire_error_field((const char *)body, len, 'M');
        px_warning("server", 'S', s->id, "login failed: %s", msg ? msg : "?");
        px_pool_server_login_failed(s, err, NULL);
        if (err)
            evbuffer_free(err);
        return false;
    }
    default: /* NoticeResponse, NegotiateProtocolVersion: nothing to do */ return true;
    }
}

static void login_read(struct px_server *s)
{
    if (s->login_step == PX_SVL_TLS_ANSWER) {
        char answer;
        if (evbuffer_remove(bufferevent_get_input(s->bev), &answer, 1) != 1)
            return;
        if (answer == 'S' && evbuffer_get_length(bufferevent_get_input(s->bev)) > 0)
            /* Bytes before the handshake could be injected by a MITM (CVE-2021-23222). */
            server_fail(s, "received unencrypted data after SSL response");
        else if (answer == 'S')
            start_tls(s);
        else if (answer == 'N' && px.cfg->server_tls_mode == PX_STLS_PREFER)
            send_startup(s);
        else
            server_fail(s, "server does not support TLS");
        return;
    }
    if (s->login_step == PX_SVL_AUTH)
        read_messages(s, login_message);
}

/* ---- reset, release, close ------------------------------------------------------------ */

static void finish_reset(struct px_server *s)
{
    if (px_server_cancel_busy(s)) {
        /* The cancel of the work its client abandoned is still on its way: a signal that
         * reached the backend after the next client's query began would cancel that query.
         * PostgreSQL ignores a cancel that reaches an idle backend, so the server waits
         * here until the cancel connection is done (px_server_cancel_finished). */
        s->ready_after_cancel = true;
        return;
    }
    s->last_used_ms = px_now_ms();
    px_pool_server_ready(s);
}

void px_server_cancel_finished(struct px_server *s)
{
    if (s->state == PX_SV_RESETTING && s->drain_ready > 0)
        px_cancel_server(s); /* abandoned requests are still running (drain_message) */
    if (s->state == PX_SV_RESETTING && s->ready_after_cancel) {
        s->ready_after_cancel = false;
        finish_reset(s);
    }
}

/* The replies to the reset queries; they are never shown to anyone. */
/* How long a server may drain the work its client abandoned before it is closed. */
#define DRAIN_TIMEOUT_MS 10000

static void send_reset_queries(struct px_server *s);

/* A reply to work the client abandoned: read and dropped; errors (the cancel's) expected. */
static bool drain_message(struct px_server *s, char type, const uint8_t *body, uint32_t len)
{
    if (type == 'S' && apply_param_status(s, body, len) < 0) {
        px_server_close(s, "out of memory");
        return false;
    }
    if (type == 'G') /* COPY FROM STDIN of the abandoned query: end it */
        px_wire_msg(bufferevent_get_output(s->bev), 'f', "client went away",
                    sizeof("client went away"));
    if (type == 'Z') {
        s->txn_status = len ? (char)body[0] : 'I';
        if (--s->drain_ready == 0) {
            px_debug("server", 'S', s->id, "drained what its client left");
            send_reset_queries(s);
            return false;
        }
        /* the next abandoned request runs now: cancel it too (when the cancel in flight
         * is done: px_server_cancel_finished), not only the one that ran when the client
         * left (a pipeline of long queries held the server for all of them) */
        px_cancel_server(s);
    }
    return true;
}

static bool reset_message(struct px_server *s, char type, const uint8_t *body, uint32_t len)
{
    if (s->drain_ready > 0)
        return drain_message(s, type, body, len);
    if (type == 'E') {
        const char *msg = px_wire_error_field((const char *)body, len, 'M');
        px_warning("server", 'S', s->id, "server_reset_query failed: %s", msg ? msg : "?");
        px_server_close(s, "reset failed");
        return false;
    }
    if (type == 'S' && apply_param_status(s, body, len) < 0) {
        px_server_close(s, "out of memory");
        return false;
    }
    if (type == 'Z') {
        s->txn_status = len ? (char)body[0] : 'I';
        if (--s->reset_pending == 0) {
            finish_reset(s);
            return false;
        }
    }
    return true;
}

/* Reads the server's replies while it resets or drains (RESETTING): first the rest of a
 * message its client's relay had started, then whole messages. */
static void reset_read(struct px_server *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    if (s->drain_skip) {
        size_t n = evbuffer_get_length(in);
        if (n > s->drain_skip)
            n = s->drain_skip;
        evbuffer_drain(in, n);
        s->drain_skip -= (uint32_t)n;
        if (s->drain_skip)
            return;
    }
    read_messages(s, reset_message);
}

/*
 * The client left with work in flight on s.  Rather than closing s (PostgreSQL would run
 * the abandoned query on, and the pool would open another backend beside it), pgwarden
 * cancels that work, ends an unsynced group and a COPY, reads and drops every reply it
 * owes, then resets s as usual: the backend is reused and pool_size keeps bounding them.
 */
static void drain(struct px_server *s)
{
    struct evbuffer *out = bufferevent_get_output(s->bev);
    if (s->pending_ready > 0 || s->unsynced || s->hidden_queries > 0)
        px_cancel_server(s);
    if (s->copy_in)
        px_wire_msg(out, 'f', "client went away", sizeof("client went away"));
    if (s->unsynced) {
        static const uint8_t sync[5] = {'S', 0, 0, 0, 4};
        evbuffer_add(out, sync, sizeof(sync));
        s->pending_ready++;
    }
    s->drain_ready = s->pending_ready + s->hidden_queries;
    s->drain_skip = s->s2c.remaining;
    s->drain_deadline_ms = px_now_ms() + DRAIN_TIMEOUT_MS;
    s->pending_ready = s->hidden_queries = 0;
    s->unsynced = s->copy_in = s->group_failed = s->hidden_abort = s->last_untracked = false;
    s->s2c.remaining = 0;
    px_server_set_state(s, PX_SV_RESETTING);
    px_reader_enable(&s->rd, true);
    px_debug("server", 'S', s->id, "its client left mid-request: draining %d replies",
             s->drain_ready);
    if (s->drain_ready == 0) {
        send_reset_queries(s);
        return;
    }
    reset_read(s);
}

void px_server_release(struct px_server *s, bool client_mid_message)
{
    if (s->state != PX_SV_ACTIVE)
        return; /* still logging in: it will go idle for the next client */
    uint64_t now = px_now_ms();
    const char *why = NULL;
    bool work = s->s2c.remaining || s->pending_ready > 0 || s->unsynced || s->hidden_queries > 0 ||
                s->expect_n > 0;
    if (s->close_needed)
        why = "marked for close";
    else if (client_mid_message)
        why = "client left in the middle of a message";
    else if (px.shutting_down)
        why = "shutting down";
    else if (!work && px.cfg->server_lifetime_ms > 0 &&
             now - s->created_ms >= (uint64_t)px.cfg->server_lifetime_ms)
        why = "server_lifetime_ms reached";
    if (why) {
        if (work)
            px_cancel_server(s); /* the backend must not run on what nobody waits for */
        px_server_close(s, why);
        return;
    }
    if (work) {
        drain(s);
        return;
    }
    px_server_set_state(s, PX_SV_RESETTING);
    send_reset_queries(s);
}

/* ROLLBACK if a transaction is open and server_reset_query where needed, then idle (s is
 * RESETTING). */
static void send_reset_queries(struct px_server *s)
{
    struct evbuffer *out = bufferevent_get_output(s->bev);
    int queries = 0;
    if (s->txn_status != 'I') {
        px_wire_query(out, "ROLLBACK");
        queries++;
    }
    /* Transaction pooling resets only a server a client left session state on: the
     * reported parameters are re-synced per client anyway. */
    const char *reset = px.cfg->server_reset_query;
    if (reset && *reset && (s->pool->mode == PX_POOL_SESSION || s->dirty)) {
        px_wire_query(out, reset);
        queries++;
        px_stmt_set_clear(&s->stmts); /* DISCARD ALL dropped them */
        s->stmts_uncertain = false;
        s->sstate_owner = 0; /* ... and every session state */
        s->sstate_prepared = false;
        s->dirty = false;
    }
    if (!queries) {
        finish_reset(s);
        return;
    }
    s->unnamed_owner = 0; /* a simple Query destroys the unnamed statement */
    s->reset_pending = queries;
    px_reader_enable(&s->rd, true);
    reset_read(s);
}

void px_server_close(struct px_server *s, const char *reason)
{
    if (s->state == PX_SV_CLOSING)
        return;
    px_debug("server", 'S', s->id, "closing: %s", reason);
    struct px_client *c = s->client;
    /* a client message forwarded in part: a Terminate now would land inside it */
    bool mid_message = c && c->c2s.remaining > 0;
    if (c) {
        s->client = NULL;
        c->server = NULL;
        if (!px_path_server_lost(c, s))
            px_client_fatal(c, PX_SQLSTATE_CONNECTION_FAILURE,
                            "server closed the connection unexpectedly");
    }
    px_path_server_closing(s);
    if (s->opener && s->opener->launching == s)
        s->opener->launching = NULL;
    s->opener = NULL;
    if (s->bev) {
        /* A polite Terminate keeps PostgreSQL's log free of "unexpected EOF" (plain) or
         * "could not receive data from client: Connection reset by peer" (TLS), and over
         * TLS a close_notify follows, as libpq sends one.  Only when nothing else waits to
         * be written: the Terminate must not cut into a message. */
        static const uint8_t terminate[5] = {'X', 0, 0, 0, 4};
        bool polite = s->state != PX_SV_LOGIN && !mid_message &&
                      evbuffer_get_length(bufferevent_get_output(s->bev)) == 0;
        SSL *ssl = s->fd_in_tls_bev ? bufferevent_openssl_get_ssl(s->bev) : NULL;
        if (polite && ssl && SSL_is_init_finished(ssl)) {
            ERR_clear_error();
            if (SSL_write(ssl, terminate, sizeof(terminate)) == (int)sizeof(terminate))
                px_tls_close_notify(ssl);
            ERR_clear_error();
        } else if (polite && !s->fd_in_tls_bev && s->fd >= 0) {
            ssize_t w = send(s->fd, terminate, sizeof(terminate), MSG_NOSIGNAL);
            (void)w;
        }
        px_reader_enable(&s->rd, false);
        bufferevent_disable(s->bev, EV_WRITE);
    }
    px_server_set_state(s, PX_SV_CLOSING);
    px_pool_server_closed(s); /* a slot came free */
}

void px_server_free(struct px_server *s)
{
    px_list_remove(&s->link);
    px_cancel_server_gone(s);
    px_reader_unbind(&s->rd);
    if (s->bev)
        bufferevent_free(s->bev);
    if (!s->fd_in_tls_bev && s->fd >= 0)
        evutil_closesocket(s->fd);
    px_scram_client_free(s->scram);
    OPENSSL_cleanse(s->client_key, sizeof(s->client_key));
    px_params_clear(&s->params);
    px_path_server_free(s);
    px_welcome_unref(s->welcome);
    free(s->signature);
    if (s->pool)
        px_pool_unref(s->pool);
    free(s);
}

/* ---- callbacks ------------------------------------------------------------------------ */

/* An idle server speaks only to say it is going away (FATAL from an administrator) or to
 * report a parameter; anything else means it is unusable. */
static bool idle_message(struct px_server *s, char type, const uint8_t *body, uint32_t len)
{
    if (type == 'E' || (type == 'S' && apply_param_status(s, body, len) < 0)) {
        px_server_close(s, "unexpected message from idle server");
        return false;
    }
    return true;
}

static void server_read_cb(struct bufferevent *bev, void *arg)
{
    struct px_server *s = arg;
    (void)bev;
    switch (s->state) {
    case PX_SV_LOGIN: login_read(s); break;
    case PX_SV_ACTIVE: px_path_server_input(s); break;
    case PX_SV_RESETTING: reset_read(s); break;
    case PX_SV_IDLE: read_messages(s, idle_message); break;
    case PX_SV_CLOSING: break;
    }
}

static void server_write_cb(struct bufferevent *bev, void *arg)
{
    struct px_server *s = arg;
    (void)bev;
    px_path_server_drained(s);
}

static void server_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct px_server *s = arg;
    if (what & BEV_EVENT_CONNECTED) {
        if (s->login_step == PX_SVL_CONNECT) {
            px_reader_enable(&s->rd, true);
            if (px.server_tls && s->pool->host[0] != '/') {
                px_wire_ssl_request(bufferevent_get_output(s->bev));
                s->login_step = PX_SVL_TLS_ANSWER;
            } else {
                send_startup(s);
            }
        } else if (s->login_step == PX_SVL_TLS) {
            s->tls = true;
            if (px_reader_own_tls(&s->rd, px.base, s->fd, bufferevent_openssl_get_ssl(s->bev)) < 0)
                px_debug("server", 'S', s->id, "TLS reads stay with the bufferevent");
            px_stats_tls_handshake(false, true);
            send_startup(s);
        }
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        /* A socket or TLS error gets a line of its own (PostgreSQL going away, with or
         * without a TLS close_notify, is an EOF: the client is told either way). */
        if ((what & BEV_EVENT_ERROR) && s->state != PX_SV_LOGIN)
            px_info("server", 'S', s->id, "connection lost: %s", px_tls_failure(bev, NULL));
        if (s->state == PX_SV_LOGIN) {
            char msg[256];
            if (s->login_step == PX_SVL_TLS) {
                px_stats_tls_handshake(false, false);
                snprintf(msg, sizeof(msg), "TLS handshake with server failed: %s",
                         px_tls_failure(bev, NULL));
            } else {
                snprintf(msg, sizeof(msg), "could not connect to server %s:%d", s->pool->host,
                         s->pool->port);
            }
            px_pool_server_login_failed(s, NULL, msg);
            return;
        }
        /* Give the client whatever the server said last (e.g. a FATAL) before closing. */
        if (s->state == PX_SV_ACTIVE) {
            px_path_server_input(s);
            if (s->state == PX_SV_ACTIVE)
                px_pool_server_lost(s);
        }
        px_server_close(s, what & BEV_EVENT_ERROR ? "server connection lost"
                                                  : "server closed the connection");
    }
}
