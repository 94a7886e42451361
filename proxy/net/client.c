/*
 * client.c: client connections (see client.h).
 *
 * Login sequence, as PostgreSQL runs it:
 *   [SSLRequest -> 'S' + TLS handshake | 'N'] [GSSENCRequest -> 'N'] StartupMessage
 *   -> authentication (trust | md5 | SCRAM-SHA-256) -> AuthenticationOk
 *   -> (pool links a server) ParameterStatus* BackendKeyData ReadyForQuery
 * A CancelRequest packet instead of a StartupMessage is handed to cancel.c and the
 * connection is closed without an answer, as PostgreSQL does.
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/crypto.h>

#include "base/log.h"
#include "base/random.h"
#include "metrics/metrics.h"
#include "metrics/stats.h"
#include "net/cancel.h"
#include "net/client.h"
#include "net/tls.h"
#include "proto/relay.h"

static void client_read_cb(struct bufferevent *bev, void *arg);
static void client_auth_ok(struct px_client *c);
static void client_write_cb(struct bufferevent *bev, void *arg);
static void client_event_cb(struct bufferevent *bev, short what, void *arg);

static const char *const state_names[] = {"login",   "idle",    "waiting", "active",
                                          "batched", "failing", "closing"};

/* ---- login replies --------------------------------------------------------------------- */

/* The replies of a plain-TCP client's login are assembled here and written to its socket
 * directly (px_relay_write), as the relay writes replies: through the bufferevent each one
 * would add its write event, wake the loop and remove it again (three system calls per
 * reply, three replies per SCRAM login).  Flushed before any other write to the client
 * (login_flush), so the order stays; always empty between events. */
static struct evbuffer *login_scratch;

static struct evbuffer *login_out(struct px_client *c)
{
    if (login_scratch || (login_scratch = evbuffer_new()))
        return login_scratch;
    return bufferevent_get_output(c->bev);
}

static void login_flush(struct px_client *c)
{
    if (login_scratch && evbuffer_get_length(login_scratch) > 0)
        px_relay_write(login_scratch, bufferevent_get_output(c->bev), px_client_direct(c));
}

void px_client_shutdown_buffers(void)
{
    if (login_scratch)
        evbuffer_free(login_scratch);
    login_scratch = NULL;
}

const char *px_client_state_name(enum px_client_state st)
{
    return state_names[st];
}

void px_client_set_state(struct px_client *c, enum px_client_state st)
{
    /* Legal transitions: login->idle|waiting|active, idle->waiting|active|batched,
     * waiting->active|batched, batched->active, active->idle (transaction pooling
     * detaches); any of these ->failing (an error is on its way) or ->closing;
     * failing->closing; closing is final. */
    static const bool legal[7][7] = {
        [PX_CL_LOGIN] = {[PX_CL_IDLE] = true,
                         [PX_CL_WAITING] = true,
                         [PX_CL_ACTIVE] = true,
                         [PX_CL_FAILING] = true,
                         [PX_CL_CLOSING] = true},
        [PX_CL_IDLE] = {[PX_CL_WAITING] = true,
                        [PX_CL_ACTIVE] = true,
                        [PX_CL_BATCHED] = true,
                        [PX_CL_FAILING] = true,
                        [PX_CL_CLOSING] = true},
        [PX_CL_WAITING] = {[PX_CL_ACTIVE] = true,
                           [PX_CL_BATCHED] = true,
                           [PX_CL_FAILING] = true,
                           [PX_CL_CLOSING] = true},
        [PX_CL_BATCHED] = {[PX_CL_ACTIVE] = true, [PX_CL_FAILING] = true, [PX_CL_CLOSING] = true},
        [PX_CL_ACTIVE] = {[PX_CL_IDLE] = true, [PX_CL_FAILING] = true, [PX_CL_CLOSING] = true},
        [PX_CL_FAILING] = {[PX_CL_CLOSING] = true},
        [PX_CL_CLOSING] = {false},
    };
    PX_ASSERT(legal[c->state][st]);
    if (!legal[c->state][st]) {
        px_error("client", 'C', c->id, "illegal state change %s -> %s", state_names[c->state],
                 state_names[st]);
        return;
    }
    px_list_remove(&c->link);
    if (c->pool) {
        if (c->state == PX_CL_WAITING)
            c->pool->n_waiting--;
        else if (c->state == PX_CL_ACTIVE || c->state == PX_CL_BATCHED)
            c->pool->n_active_clients--;
        else if (c->state == PX_CL_IDLE)
            c->pool->n_idle_clients--;
    }
    c->state = st;
    switch (st) {
    case PX_CL_IDLE:
        px_list_append(&c->pool->clients_idle, &c->link);
        c->pool->n_idle_clients++;
        break;
    case PX_CL_WAITING:
        px_list_append(&c->pool->clients_waiting, &c->link);
        c->pool->n_waiting++;
        c->wait_start_ms = px_now_ms();
        break;
    case PX_CL_ACTIVE:
    case PX_CL_BATCHED: /* counted as active: it has a server */
        px_list_append(&c->pool->clients_active, &c->link);
        c->pool->n_active_clients++;
        break;
    case PX_CL_FAILING: px_list_append(&px.clients_failing, &c->link); break;
    case PX_CL_CLOSING:
        px_list_append(&px.clients_closing, &c->link);
        event_active(px.reaper, EV_TIMEOUT, 0);
        break;
    case PX_CL_LOGIN: break;
    }
}

static void keep_addr(const struct sockaddr *sa, struct px_peer_addr *a)
{
    a->family = (uint8_t)sa->sa_family;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        memcpy(a->ip, &in->sin_addr, sizeof(in->sin_addr));
        a->port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        memcpy(a->ip, &in6->sin6_addr, sizeof(in6->sin6_addr));
        a->port = ntohs(in6->sin6_port);
    } else if (sa->sa_family != AF_UNIX) {
        a->family = 0;
    }
}

const char *px_client_addr(const struct px_client *c, char buf[PX_CLIENT_ADDR_LEN])
{
    const struct px_peer_addr *a = &c->peer;
    char host[INET6_ADDRSTRLEN] = "?";
    if (a->family == AF_UNIX)
        return "unix";
    if (a->family == AF_INET || a->family == AF_INET6)
        inet_ntop(a->family, a->ip, host, sizeof(host));
    snprintf(buf, PX_CLIENT_ADDR_LEN, "%s:%u", host, (unsigned)a->port);
    return buf;
}

/* A bufferevent for c's socket (plain, or its established TLS connection when it unparks),
 * callbacks and write watermark set, writing on (pgwarden's reader reads: px_reader_bind /
 * px_reader_unpark); NULL when out of memory. */
static struct bufferevent *client_bev_new(struct px_client *c)
{
    struct bufferevent *bev =
        c->ssl ? bufferevent_openssl_socket_new(px.base, c->fd, c->ssl, BUFFEREVENT_SSL_OPEN, 0)
               : bufferevent_socket_new(px.base, c->fd, 0);
    if (!bev)
        return NULL;
    if (c->ssl)
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    bufferevent_setcb(bev, client_read_cb, client_write_cb, client_event_cb, c);
    bufferevent_setwatermark(bev, EV_WRITE, PX_BACKPRESSURE_LOW, 0);
    /* A new bufferevent is enabled for writing already; enabling it again would add its
     * write event at once (an epoll_ctl, a wake-up with nothing to write, another epoll_ctl
     * to remove it: three system calls per connection for nothing). */
    return bev;
}

void px_client_accept(evutil_socket_t fd, const struct sockaddr *sa, int socklen)
{
    (void)socklen;
    /* Past max_client_conn we still read the startup packet so that the client sees
     * SQLSTATE 53300 rather than a reset; far past it we just close. */
    if (px.n_clients >= px.cfg->max_client_conn + 1000 || px.shutting_down) {
        evutil_closesocket(fd);
        return;
    }
    struct px_client *c = calloc(1, sizeof(*c));
    if (!c) {
        evutil_closesocket(fd);
        return;
    }
    c->fd = fd;
    c->reject_full = px.n_clients >= px.cfg->max_client_conn;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* non-blocking already: net/listen.c's listener accepts with SOCK_NONBLOCK */
    c->bev = client_bev_new(c);
    if (!c->bev || px_reader_bind(&c->rd, px.base, c->bev, fd) < 0) {
        if (c->bev)
            bufferevent_free(c->bev);
        evutil_closesocket(fd);
        free(c);
        return;
    }
    c->id = ++px.next_client_id;
    c->state = PX_CL_LOGIN;
    c->login_step = PX_LOGIN_STARTUP;
    c->connect_ms = px_now_ms();
    keep_addr(sa, &c->peer);
    px_list_init(&c->link);
    px_list_append(&px.clients_login, &c->link);
    px.n_clients++;
    px_stats_client_accepted();
    px_reader_enable(&c->rd, true);
    char addr[PX_CLIENT_ADDR_LEN];
    px_debug("client", 'C', c->id, "connection from %s", px_client_addr(c, addr));
    px_reader_read_soon(&c->rd); /* the startup packet is usually there already */
}

/* ---- closing -------------------------------------------------------------------------- */

void px_client_close(struct px_client *c)
{
    if (c->state == PX_CL_CLOSING)
        return;
    px_debug("client", 'C', c->id, "closing");
    px_cancel_forget(c);
    px_cancel_waiter_gone(c);
    px_path_client_leaving(c);
    if (c->launching) {
        /* The server being opened for us logs in anyway and goes idle. */
        if (c->launching->opener == c)
            c->launching->opener = NULL;
        c->launching = NULL;
    }
    px_reader_enable(&c->rd, false);
    if (c->bev) /* NULL when switching to TLS failed */
        bufferevent_disable(c->bev, EV_WRITE);
    px.n_clients--;
    px_client_set_state(c, PX_CL_CLOSING); /* the reaper checks shutdown progress */
}

/* ---- parking ------------------------------------------------------------------------- */

/*
 * An idle plain client costs mostly its bufferevent (~1 kB: the bufferevent, its two
 * evbuffers and their events; a TLS one ~1.5 kB besides OpenSSL's ~14 kB).  A client that
 * has nothing buffered either way (OpenSSL's read-ahead included) and no stage waiting on
 * its buffers gives it up (px_client_park, from the janitor) and keeps only its read event
 * (sockread.h) and, under TLS, its SSL object (c->ssl, which the bufferevent never owns);
 * the bufferevent is made again, for TLS in state BUFFEREVENT_SSL_OPEN around the same
 * SSL, when the client sends something (client_wake), gets an error (px_client_fatal) or a
 * server (path.c, through px_client_unpark).  Only idle and waiting clients park: nothing
 * else writes to them.
 */
bool px_client_unpark(struct px_client *c)
{
    if (c->bev)
        return true;
    struct bufferevent *bev = client_bev_new(c);
    if (!bev)
        return false;
    c->bev = bev;
    px_reader_unpark(&c->rd, bev);
    px.n_parked--;
    return true;
}

static void client_wake(struct px_reader *r)
{
    struct px_client *c = PX_CONTAINER_OF(r, struct px_client, rd);
    if (!px_client_unpark(c)) {
        px_error("client", 'C', c->id, "out of memory: closing the connection");
        px_client_close(c);
    }
}

void px_client_park(struct px_client *c)
{
    if (!c->bev || !c->rd.ev)
        return; /* parked already, or not read by pgwarden */
    if (c->ssl && (!c->rd.tls || SSL_has_pending(c->ssl)))
        return; /* TLS: read by the bufferevent (handshake), or OpenSSL holds bytes */
    if (c->state != PX_CL_IDLE && c->state != PX_CL_WAITING)
        return;
    px_path_client_parking(c);
    /* Stages that keep state on its buffers or write to it by themselves. */
    if (c->retry || c->outcome || c->lock_waiting || c->fault_waiting || c->reply_hold ||
        c->read_paused || c->c2s.remaining || c->skip_to_sync || c->head_sql_len)
        return;
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) ||
        evbuffer_get_length(bufferevent_get_output(c->bev)))
        return;
    px_reader_park(&c->rd, client_wake);
    bufferevent_free(c->bev); /* its callbacks go with it; socket and TLS stay (no CLOSE_ON_FREE) */
    c->bev = NULL;
    px.n_parked++;
}

static void close_after_flush(struct px_client *c)
{
    px_path_client_leaving(c);
    px_reader_enable(&c->rd, false);
    if (!c->bev || evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        px_client_close(c);
        return;
    }
    /* Off its pool's lists: nothing serves or fails it again.  A client that never reads
     * its error must not keep the slot forever. */
    px_client_set_state(c, PX_CL_FAILING);
    c->close_deadline_ms = px_now_ms() + 5000;
}

/* The auth-failure label of a login refused with sqlstate (wrong passwords are counted
 * where they are detected). */
static int login_failure_reason(const struct px_client *c, const char *sqlstate)
{
    if (!strcmp(sqlstate, PX_SQLSTATE_INVALID_AUTH_SPEC))
        return px.cfg->client_tls_mode == PX_CTLS_REQUIRE && !c->tls ? PX_MAR_TLS_REQUIRED
                                                                     : PX_MAR_OTHER;
    if (!strcmp(sqlstate, PX_SQLSTATE_PROTOCOL_VIOLATION))
        return PX_MAR_PROTOCOL;
    if (!strcmp(sqlstate, PX_SQLSTATE_QUERY_CANCELED))
        return PX_MAR_TIMEOUT;
    return PX_MAR_OTHER;
}

void px_client_fatal(struct px_client *c, const char *sqlstate, const char *msg)
{
    if (c->state == PX_CL_FAILING || c->state == PX_CL_CLOSING)
        return; /* one error per client */
    login_flush(c);
    /* In the TLS handshake no error can be written (PostgreSQL just closes then too), and
     * waiting for one to be read would hold the connection 5 s longer. */
    bool handshaking = c->state == PX_CL_LOGIN && c->login_step == PX_LOGIN_TLS;
    if (sqlstate) {
        px_info("client", 'C', c->id, "closing with %s: %s", sqlstate, msg);
        if (!handshaking) {
            if (!px_client_unpark(c)) {
                px_client_close(c); /* out of memory: no error message, just the close */
                return;
            }
            px_wire_error(bufferevent_get_output(c->bev), PX_SEV_FATAL, sqlstate, msg, NULL);
            px_stats_error_sent(c->pool, sqlstate);
        }
        if (c->state == PX_CL_LOGIN && strcmp(sqlstate, PX_SQLSTATE_INVALID_PASSWORD) != 0)
            px_stats_auth_failure(login_failure_reason(c, sqlstate));
    }
    if (handshaking)
        px_client_close(c);
    else
        close_after_flush(c);
}

void px_client_fatal_buffer(struct px_client *c, struct evbuffer *error)
{
    if (c->state == PX_CL_FAILING || c->state == PX_CL_CLOSING)
        return;
    login_flush(c);
    size_t len = evbuffer_get_length(error);
    const uint8_t *bytes = evbuffer_pullup(error, (ssize_t)len);
    if (!bytes || !px_client_unpark(c) ||
        evbuffer_add(bufferevent_get_output(c->bev), bytes, len) < 0) {
        px_client_fatal(c, PX_SQLSTATE_CANNOT_CONNECT, "cannot connect to server");
        return;
    }
    close_after_flush(c);
}

bool px_client_close_overdue(struct px_client *c, uint64_t now)
{
    return c->state == PX_CL_FAILING && now >= c->close_deadline_ms;
}

void px_client_free(struct px_client *c)
{
    px_list_remove(&c->link);
    px_path_client_free(c); /* first: its stages may have callbacks on c's buffers */
    if (px_reader_parked(&c->rd))
        px.n_parked--;
    px_reader_unbind(&c->rd);
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->ssl) {                    /* after its bufferevent, which does not own it */
        px_tls_close_notify(c->ssl); /* as PostgreSQL's backend does when it exits */
        SSL_free(c->ssl);
    }
    evutil_closesocket(c->fd);
    px_scram_server_free(c->scram);
    OPENSSL_cleanse(c->client_key, sizeof(c->client_key));
    free(c->application_name);
    free(c->signature); /* hard signature, user and database with it */
    if (c->pool)
        px_pool_unref(c->pool);
    free(c);
}

/* ---- login ---------------------------------------------------------------------------- */

static int cmp_param(const void *a, const void *b)
{
    return strcmp(((const struct px_startup_param *)a)->name,
                  ((const struct px_startup_param *)b)->name);
}

/*
 * Keeps what the client's login said, in one allocation (one per idle client, issue 19):
 * the parameters that go to servers, sorted by name, as "name\0value\0" pairs (the
 * client's signature: a server opened with the same bytes gives exactly the session
 * defaults of a direct connection), the hard signature, then user and database.
 */
static int keep_login(struct px_client *c, const struct px_startup *st, const char *user,
                      const char *db)
{
    /* The pairs to keep, pointing into the packet, sorted; freed once copied. */
    struct px_startup_param *kept = calloc(st->nparams ? st->nparams : 1, sizeof(*kept));
    if (!kept)
        return -1;
    size_t n = 0, bytes = 0;
    const char *pos = NULL;
    struct px_startup_param prm;
    while (px_startup_next(st, &pos, &prm)) {
        if (!strcmp(prm.name, "user") || !strcmp(prm.name, "database") ||
            !strncmp(prm.name, "_pq_.", 5))
            continue;
        kept[n++] = prm;
        bytes += strlen(prm.name) + 1 + strlen(prm.value) + 1;
    }
    qsort(kept, n, sizeof(kept[0]), cmp_param);
    /* the signature, then the hard signature (at most as long), each ending in a '\0' */
    size_t ulen = strlen(user) + 1, dlen = strlen(db) + 1;
    char *buf = malloc(2 * bytes + 2 + ulen + dlen);
    if (!buf) {
        free(kept);
        return -1;
    }
    char *p = buf, *hard = buf + bytes + 1;
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(kept[i].name) + 1, vl = strlen(kept[i].value) + 1;
        memcpy(p, kept[i].name, nl);
        memcpy(p + nl, kept[i].value, vl);
        p += nl + vl;
        if (px_tracked_index(kept[i].name, nl - 1) < 0) {
            memcpy(hard, p - nl - vl, nl + vl);
            hard += nl + vl;
        }
    }
    *p = '\0';
    *hard = '\0';
    free(kept);
    c->signature = buf;
    c->signature_len = (uint32_t)bytes;
    c->hard_signature = buf + bytes + 1;
    c->hard_signature_len = (uint32_t)(hard - c->hard_signature);
    c->user = memcpy(hard + 1, user, ulen);
    c->database = memcpy(c->user + ulen, db, dlen);
    return 0;
}

static void send_auth_request(struct px_client *c)
{
    struct evbuffer *out = login_out(c);
    const struct px_scram_secret *secret;
    struct px_scram_secret mock;
    switch (px.cfg->auth_type) {
    case PX_AUTH_TRUST: client_auth_ok(c); return;
    case PX_AUTH_MD5:
        if (px_random_bytes(c->md5_salt, sizeof(c->md5_salt)) < 0) {
            px_client_fatal(c, PX_SQLSTATE_INTERNAL, "could not generate random MD5 salt");
            return;
        }
        px_wire_auth(out, PX_AUTH_MD5_REQ, c->md5_salt, 4);
        c->login_step = PX_LOGIN_MD5;
        return;
    case PX_AUTH_SCRAM:
        /* A plaintext password's secret is derived here at the user's first login (one
         * PBKDF2), not when the auth_file is loaded. */
        secret = px.users ? px_userlist_scram(px.users, c->user) : NULL;
        if (!secret) {
            px_scram_secret_mock(c->user, &mock);
            secret = &mock;
        }
        c->scram = px_scram_server_new(secret); /* keeps its own copy */
        if (!c->scram) {
            px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
            return;
        }
        px_wire_auth(out, PX_AUTH_SASL, "SCRAM-SHA-256\0", 15);
        c->login_step = PX_LOGIN_SCRAM_INITIAL;
        return;
    }
}

/* reason: enum px_metrics_auth_reason (a wrong password, or a protocol error that
 * PostgreSQL answers the same way). */
static void auth_failed(struct px_client *c, int reason)
{
    char msg[200];
    snprintf(msg, sizeof(msg), "password authentication failed for user \"%.64s\"", c->user);
    px_stats_auth_failure(reason);
    px_client_fatal(c, PX_SQLSTATE_INVALID_PASSWORD, msg);
}

/* A SCRAM message refused by scram.c: 0A000 for what is not supported, else 08P01. */
static void scram_refused(struct px_client *c)
{
    bool unsupported = false;
    const char *why = px_scram_server_error(c->scram, &unsupported);
    px_client_fatal(c, unsupported ? PX_SQLSTATE_FEATURE_NOT_SUPP : PX_SQLSTATE_PROTOCOL_VIOLATION,
                    why);
}

void px_client_welcome(struct px_client *c, const struct px_params *params, struct px_welcome *w)
{
    struct evbuffer *out = login_out(c);
    for (size_t i = 0; i < params->n; i++)
        px_wire_param_status(out, params->items[i].name, params->items[i].value);
    px_wire_backend_key(out, c->cancel_pid, c->cancel_key);
    px_wire_ready(out, 'I');
    login_flush(c); /* the client may be answered by other writers from now on */
    c->welcomed = true;
    c->welcome = px_welcome_ref(w);
}

static void client_auth_ok(struct px_client *c)
{
    c->login_step = PX_LOGIN_DONE;
    px_wire_auth(login_out(c), PX_AUTH_OK, NULL, 0);
    px_scram_server_free(c->scram);
    c->scram = NULL;
    if (px_cancel_register(c) < 0) {
        px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
        return;
    }
    px_path_client_authenticated(c);
}

/* Password message of the md5 exchange. */
static void handle_md5(struct px_client *c, const uint8_t *body, uint32_t len)
{
    const struct px_user *u = px.users ? px_userlist_find(px.users, c->user) : NULL;
    char expected[36];
    if (len != 36 || body[35] != '\0' || !u || !u->md5) {
        /* Same work as a right password: compute and compare a dummy. */
        px_md5_salted("md500000000000000000000000000000000", c->md5_salt, expected);
        auth_failed(c, PX_MAR_PASSWORD);
        return;
    }
    px_md5_salted(u->md5, c->md5_salt, expected);
    if (CRYPTO_memcmp(expected, body, 35) != 0) {
        auth_failed(c, PX_MAR_PASSWORD);
        return;
    }
    client_auth_ok(c);
}

static void handle_scram_initial(struct px_client *c, const uint8_t *body, uint32_t len)
{
    const char *mech = (const char *)body;
    const uint8_t *nul = memchr(body, '\0', len);
    if (!nul || (size_t)(nul - body) + 5 > len) {
        px_client_fatal(c, PX_SQLSTATE_PROTOCOL_VIOLATION, "malformed SASLInitialResponse");
        return;
    }
    if (strcmp(mech, "SCRAM-SHA-256") != 0) {
        px_client_fatal(c, PX_SQLSTATE_PROTOCOL_VIOLATION,
                        "client selected an invalid SASL authentication mechanism");
        return;
    }
    const uint8_t *p = nul + 1;
    int32_t dlen = (int32_t)px_get_u32(p);
    p += 4;
    if (dlen < 0 || (size_t)dlen != len - (size_t)(p - body)) {
        px_client_fatal(c, PX_SQLSTATE_PROTOCOL_VIOLATION, "malformed SASLInitialResponse");
        return;
    }
    char *server_first = NULL;
    if (px_scram_server_first(c->scram, (const char *)p, (size_t)dlen, &server_first) < 0) {
        scram_refused(c);
        return;
    }
    px_wire_auth(login_out(c), PX_AUTH_SASL_CONTINUE, server_first, strlen(server_first));
    free(server_first);
    c->login_step = PX_LOGIN_SCRAM_FINAL;
}

static void handle_scram_final(struct px_client *c, const uint8_t *body, uint32_t len)
{
    bool ok = false;
    char *server_final = NULL;
    if (px_scram_server_final(c->scram, (const char *)body, len, &ok, &server_final) < 0) {
        scram_refused(c);
        return;
    }
    const struct px_user *u = px.users ? px_userlist_find(px.users, c->user) : NULL;
    if (!ok || !u || !u->has_scram) {
        free(server_final);
        auth_failed(c, PX_MAR_PASSWORD);
        return;
    }
    c->have_client_key = px_scram_server_client_key(c->scram, c->client_key);
    px_wire_auth(login_out(c), PX_AUTH_SASL_FINAL, server_final, strlen(server_final));
    free(server_final);
    client_auth_ok(c);
}

static void reject(struct px_client *c, const char *sqlstate, const char *fmt, const char *arg)
{
    char msg[300];
    snprintf(msg, sizeof(msg), fmt, arg);
    px_client_fatal(c, sqlstate, msg);
}

/* A StartupMessage (protocol 3.x) arrived. */
static void handle_startup(struct px_client *c, const struct px_startup *st)
{
    /* Protocol options (_pq_.*) we do not know, for NegotiateProtocolVersion. */
    size_t nunsupported = 0;
    const char *pos = NULL;
    struct px_startup_param prm;
    while (px_startup_next(st, &pos, &prm))
        nunsupported += !strncmp(prm.name, "_pq_.", 5);
    const char **unsupported = nunsupported ? calloc(nunsupported, sizeof(*unsupported)) : NULL;
    if (nunsupported && !unsupported) {
        px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
        return;
    }
    size_t i = 0;
    for (pos = NULL; unsupported && px_startup_next(st, &pos, &prm);)
        if (!strncmp(prm.name, "_pq_.", 5))
            unsupported[i++] = prm.name;
    if ((st->code & 0xffff) > 0 || nunsupported)
        px_wire_negotiate(login_out(c), 0, unsupported, nunsupported);
    free(unsupported);

    if (c->reject_full) {
        px_client_fatal(c, PX_SQLSTATE_TOO_MANY_CONNECTIONS, "sorry, too many clients already");
        return;
    }
    if (px.shutting_down) {
        px_client_fatal(c, PX_SQLSTATE_CANNOT_CONNECT_NOW, "the database system is shutting down");
        return;
    }
    if (px.cfg->client_tls_mode == PX_CTLS_REQUIRE && !c->tls) {
        px_client_fatal(c, PX_SQLSTATE_INVALID_AUTH_SPEC,
                        "pgwarden requires TLS: connect with sslmode=require or stronger");
        return;
    }
    const char *user = px_startup_get(st, "user");
    if (!user || !*user) {
        px_client_fatal(c, PX_SQLSTATE_INVALID_AUTH_SPEC,
                        "no PostgreSQL user name specified in startup packet");
        return;
    }
    const char *repl = px_startup_get(st, "replication");
    if (repl && strcasecmp(repl, "false") != 0 && strcasecmp(repl, "off") != 0 &&
        strcasecmp(repl, "no") != 0 && strcmp(repl, "0") != 0) {
        px_client_fatal(c, PX_SQLSTATE_FEATURE_NOT_SUPP,
                        "replication connections are not supported by pgwarden");
        return;
    }
    const char *db = px_startup_get(st, "database");
    if (!db || !*db)
        db = user;
    const char *app = px_startup_get(st, "application_name");
    c->application_name = strdup(app ? app : "");
    if (!c->application_name || keep_login(c, st, user, db) < 0) {
        px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
        return;
    }
    if (!px_config_find_db(px.cfg, c->database)) {
        reject(c, PX_SQLSTATE_INVALID_CATALOG, "database \"%.128s\" does not exist", c->database);
        return;
    }
    send_auth_request(c);
}

/* Switches the connection to TLS: 'S' has been sent on the plain socket. */
static void start_tls(struct px_client *c)
{
    SSL *ssl = SSL_new(px.client_tls);
    if (!ssl) {
        px_client_close(c);
        return;
    }
    if (px_reader_switch_to_tls(&c->rd, px.base, &c->bev, c->fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                false) < 0) {
        px_client_close(c);
        return;
    }
    c->ssl = ssl;
    c->login_step = PX_LOGIN_TLS;
}

static bool startup_packet_dispatch(struct px_client *c, const char *pkt, uint32_t len);

/* Returns false when the connection was closed or changed (stop reading). */
static bool handle_startup_packet(struct px_client *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t avail = evbuffer_get_length(in);
    if (avail < 4)
        return false;
    uint8_t lenbuf[4];
    evbuffer_copyout(in, lenbuf, 4);
    uint32_t len = px_get_u32(lenbuf);
    if (len < 8 || len > PX_MAX_STARTUP_PACKET) {
        px_client_fatal(c, PX_SQLSTATE_PROTOCOL_VIOLATION, "invalid length of startup packet");
        return false;
    }
    if (avail < len)
        return false;
    /* Consume the packet before acting on it (trust auth may link a server at once). */
    char *pkt = malloc(len);
    if (!pkt) {
        px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
        return false;
    }
    evbuffer_remove(in, pkt, len);
    bool more = startup_packet_dispatch(c, pkt, len);
    free(pkt);
    return more;
}

static bool startup_packet_dispatch(struct px_client *c, const char *pkt, uint32_t len)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct px_startup st;
    const char *err = px_wire_parse_startup(pkt + 4, len - 4, &st);
    if (err) {
        px_client_fatal(c, PX_SQLSTATE_PROTOCOL_VIOLATION, err);
        return false;
    }
    /* A request already answered falls through to the version check below, which refuses
     * it with FATAL 0A000 (code 1234.5679 or 1234.5680) exactly as PostgreSQL does. */
    if ((st.code == PX_SSL_REQUEST_CODE && !c->ssl_done) ||
        (st.code == PX_GSSENC_REQUEST_CODE && !c->gss_done)) {
        bool tls_ok = st.code == PX_SSL_REQUEST_CODE && px.client_tls;
        if (st.code == PX_SSL_REQUEST_CODE)
            c->ssl_done = true;
        else
            c->gss_done = true;
        if (evbuffer_get_length(in) > 0) {
            /* Bytes after an encryption request, before the answer: a MITM could inject them
             * into the encrypted session (CVE-2021-23214); refuse. */
            px_client_fatal(c, PX_SQLSTATE_PROTOCOL_VIOLATION,
                            "received unencrypted data after encryption request");
            return false;
        }
        if (!tls_ok) {
            evbuffer_add(login_out(c), "N", 1);
            return true;
        }
        /* Write 'S' straight to the socket: nothing else is queued on it yet. */
        c->gss_done = true; /* no GSS encryption inside TLS */
        if (send(c->fd, "S", 1, MSG_NOSIGNAL) != 1) {
            px_client_close(c);
            return false;
        }
        start_tls(c);
        return false;
    }
    if (st.code == PX_CANCEL_REQUEST_CODE) {
        if (px_cancel_request(st.cancel_pid, st.cancel_key, c)) {
            px_reader_enable(&c->rd, false); /* nothing more to read: it waits to be closed */
            return false;
        }
        px_client_close(c);
        return false;
    }
    if ((st.code >> 16) != 3) {
        char msg[128];
        snprintf(msg, sizeof(msg),
                 "unsupported frontend protocol %u.%u: server supports 3.0 to 3.0", st.code >> 16,
                 st.code & 0xffff);
        px_client_fatal(c, PX_SQLSTATE_FEATURE_NOT_SUPP, msg);
        return false;
    }
    handle_startup(c, &st);
    return c->state == PX_CL_LOGIN && c->login_step != PX_LOGIN_DONE;
}

static void login_read(struct px_client *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    for (;;) {
        if (c->state != PX_CL_LOGIN)
            return;
        if (c->login_step == PX_LOGIN_STARTUP) {
            if (!handle_startup_packet(c))
                return;
            continue;
        }
        if (c->login_step == PX_LOGIN_TLS || c->login_step == PX_LOGIN_DONE)
            return;
        char type;
        uint8_t *body;
        uint32_t len;
        bool sasl = c->login_step != PX_LOGIN_MD5;
        int r = px_take_message(in, sasl ? PX_SCRAM_MAX_CLIENT_MESSAGE : PX_MAX_STARTUP_PACKET,
                                &type, &body, &len);
        if (r == 0)
            return;
        if (r < 0 && sasl) {
            /* PostgreSQL reads SASL messages of at most 1024 bytes, logs "invalid message
             * length" and fails the login as it fails a wrong password. */
            px_info("client", 'C', c->id, "invalid message length in SASL exchange");
            auth_failed(c, PX_MAR_PROTOCOL);
            return;
        }
        if (r < 0 || type != 'p') {
            if (r > 0)
                free(body);
            px_client_fatal(c, PX_SQLSTATE_PROTOCOL_VIOLATION,
                            r < 0 ? "invalid message length during authentication"
                                  : "expected password response");
            return;
        }
        switch (c->login_step) {
        case PX_LOGIN_MD5: handle_md5(c, body, len); break;
        case PX_LOGIN_SCRAM_INITIAL: handle_scram_initial(c, body, len); break;
        case PX_LOGIN_SCRAM_FINAL: handle_scram_final(c, body, len); break;
        default: break;
        }
        free(body);
    }
}

/* ---- state queries ------------------------------------------------------------------- */

bool px_client_is_idle(const struct px_client *c)
{
    const struct px_server *s = c->server;
    if (c->state == PX_CL_IDLE)
        return !c->held_begin;
    if (c->state != PX_CL_ACTIVE)
        return c->state == PX_CL_LOGIN || c->state == PX_CL_WAITING;
    if (!s)
        return true;
    return s->pending_ready == 0 && !s->unsynced && s->txn_status == 'I' && c->c2s.remaining == 0 &&
           evbuffer_get_length(bufferevent_get_input(c->bev)) == 0;
}

/* ---- callbacks ------------------------------------------------------------------------ */

static void client_read_cb(struct bufferevent *bev, void *arg)
{
    struct px_client *c = arg;
    (void)bev;
    switch (c->state) {
    case PX_CL_LOGIN:
        login_read(c);
        login_flush(c);
        break;
    case PX_CL_IDLE:
    case PX_CL_WAITING:
    case PX_CL_ACTIVE:
    case PX_CL_BATCHED: px_path_client_input(c); break;
    case PX_CL_FAILING: /* reading is off: input that was already read is ignored */
    case PX_CL_CLOSING: break;
    }
}

static void client_write_cb(struct bufferevent *bev, void *arg)
{
    struct px_client *c = arg;
    if (c->state == PX_CL_FAILING) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            px_client_close(c);
        return;
    }
    px_path_client_drained(c);
}

static void client_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct px_client *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        /* TLS handshake finished: pgwarden reads through OpenSSL itself from now on. */
        c->tls = true;
        if (px_reader_own_tls(&c->rd, px.base, c->fd, c->ssl) < 0)
            px_debug("client", 'C', c->id, "TLS reads stay with the bufferevent");
        c->login_step = PX_LOGIN_STARTUP;
        px_stats_tls_handshake(true, true);
        login_read(c);
        login_flush(c);
        return;
    }
    if (what & BEV_EVENT_ERROR) {
        /* A TLS error is a problem worth a line; a client that goes away, with or without a
         * Terminate or a TLS close_notify, or with a reset (a killed process, a health
         * check closing with SO_LINGER 0), is not. */
        int sys_err;
        const char *why = px_tls_failure(bev, &sys_err);
        if (sys_err == ECONNRESET || sys_err == EPIPE)
            px_debug("client", 'C', c->id, "connection lost: %s", why);
        else
            px_info("client", 'C', c->id, "connection lost: %s", why);
        if (c->login_step == PX_LOGIN_TLS)
            px_stats_tls_handshake(true, false);
        px_client_close(c);
    } else if (what & BEV_EVENT_EOF) {
        px_debug("client", 'C', c->id, "client closed the connection");
        px_client_close(c);
    }
}
