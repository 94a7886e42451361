/*
 * test_tls_auth.c: TLS on each side of pgwarden and client authentication.
 *   client side: TLS used or not as the client asks (client_tls_mode=allow), verify-full
 *   against the cluster CA, client_tls_mode=require refusing a plain client;
 *   server side: server_tls_mode disable / require / verify-full, checked in pg_stat_ssl
 *   for the backend that served the client;
 *   auth: SCRAM right and wrong password (28P01), unknown user (same answer), md5
 *   auth_type, trust, unknown database (3D000);
 *   as PostgreSQL answers them, compared with the cluster itself over raw sockets: an
 *   SSLRequest or GSSENCRequest inside TLS or repeated (FATAL 0A000), and SCRAM
 *   client-first messages with an authzid, a mandatory extension or an oversized nonce;
 *   peers gone without a TLS close_notify (a client mid-handshake or logged in, a server
 *   behind a TCP relay that is killed): an end of stream, not a TLS error (log, metrics).
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <libpq-fe.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_http.h"
#include "itest_relay.h"
#include "itest_util.h"
#include "itest_wire.h"

static int suite_init(void)
{
    return itu_suite_init();
}

static struct harness_proxy *start(const char *client_tls, const char *server_tls,
                                   const char *auth_type)
{
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 4,
                                   .client_tls_mode = client_tls,
                                   .server_tls_mode = server_tls,
                                   .auth_type = auth_type,
                                   .query_wait_timeout_ms = 20000};
    return harness_proxy_start(&o);
}

static void stop(struct harness_proxy *px)
{
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* Whether the backend with this pid uses TLS, from a direct connection: "t", "f" or "". */
static const char *backend_ssl(const char *pid)
{
    static char v[8];
    v[0] = '\0';
    PGconn *d = harness_connect_info(harness_cluster_conninfo("sslmode=disable"));
    if (PQstatus(d) == CONNECTION_OK) {
        char sql[128];
        snprintf(sql, sizeof(sql), "SELECT ssl FROM pg_stat_ssl WHERE pid = %d", atoi(pid));
        itu_value_copy(v, sizeof(v), d, sql);
    }
    PQfinish(d);
    return v;
}

/* ---- client side ------------------------------------------------------------------- */

static void test_client_tls_allow(void)
{
    struct harness_proxy *px = start("allow", "disable", "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);

    PGconn *c = harness_connect(px, "sslmode=require");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_TRUE(PQsslInUse(c));
    const char *proto = PQsslAttribute(c, "protocol");
    CU_ASSERT_PTR_NOT_NULL(proto);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'over tls'"), "over tls");
    PQfinish(c);

    c = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_FALSE(PQsslInUse(c));
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'plain'"), "plain");
    PQfinish(c);

    /* verify-full with the cluster CA: pgwarden presents the server certificate
     * (CN and SAN 127.0.0.1, SAN DNS localhost). */
    c = harness_connect(px, "sslmode=verify-full");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "verify-full: %s", PQerrorMessage(c));
    CU_ASSERT_TRUE(PQsslInUse(c));
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
    PQfinish(c);
    c = harness_connect(px, "host=localhost sslmode=verify-full");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    PQfinish(c);

    stop(px);
}

static void test_client_tls_disable(void)
{
    struct harness_proxy *px = start("disable", "disable", "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    /* pgwarden answers 'N' to SSLRequest: prefer falls back, require fails. */
    PGconn *c = harness_connect(px, "sslmode=prefer");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_FALSE(PQsslInUse(c));
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
    PQfinish(c);
    c = harness_connect(px, "sslmode=require");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    PQfinish(c);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    stop(px);
}

static void test_client_tls_require_refuses_plain(void)
{
    struct harness_proxy *px = start("require", "disable", "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *c = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    /* An error answer (not just a closed socket), class 28. */
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "28000");
    CU_ASSERT_TRUE(itu_error_contains(c, "TLS"));
    PQfinish(c);

    c = harness_connect(px, "sslmode=require");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_TRUE(PQsslInUse(c));
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
    PQfinish(c);
    stop(px);
}

/* ---- server side ------------------------------------------------------------------- */

static void check_server_tls(const char *server_tls, const char *want_ssl)
{
    struct harness_proxy *px = start("allow", server_tls, "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *c = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    char pid[32];
    itu_value_copy(pid, sizeof(pid), c, "SELECT pg_backend_pid()");
    CU_ASSERT(atoi(pid) > 0);
    CU_ASSERT_STRING_EQUAL(backend_ssl(pid), want_ssl);
    /* Some traffic over that link. */
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT count(*) FROM generate_series(1, 50000)"), "50000");
    PQfinish(c);
    stop(px);
}

static void test_server_tls_disable(void)
{
    check_server_tls("disable", "f");
}

static void test_server_tls_require(void)
{
    check_server_tls("require", "t");
}

static void test_server_tls_verify_full(void)
{
    check_server_tls("verify-full", "t");
}

/* ---- authentication ---------------------------------------------------------------- */

static void test_scram_right_and_wrong(void)
{
    struct harness_proxy *px = start("allow", "prefer", "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *c = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT current_user"), "pgwarden_test");
    PQfinish(c);

    c = harness_connect(px, "sslmode=disable password=wrong-password");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "28P01");
    CU_ASSERT_TRUE(itu_error_contains(c, "password authentication failed"));
    PQfinish(c);

    /* Over TLS too (with channel binding not required). */
    c = harness_connect(px, "sslmode=require password=wrong-password");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "28P01");
    PQfinish(c);

    /* Unknown user: the same answer as a wrong password. */
    c = harness_connect(px, "sslmode=disable user=nobody_here password=whatever");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "28P01");
    CU_ASSERT_TRUE(itu_error_contains(c, "password authentication failed for user "
                                         "\"nobody_here\""));
    PQfinish(c);

    /* Still serving after the failures. */
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=require"));
    stop(px);
}

static void test_md5_auth(void)
{
    struct harness_proxy *px = start("disable", "prefer", "md5");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    const struct harness_cluster *cl = harness_cluster();
    char extra[256];
    snprintf(extra, sizeof(extra), "sslmode=disable user=%s password=%s", cl->md5_user,
             cl->md5_password);
    PGconn *c = harness_connect(px, extra);
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "md5 login: %s", PQerrorMessage(c));
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT current_user"), "md5user");
    PQfinish(c);

    /* The SCRAM-stored test user can log in with md5 to pgwarden as well. */
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));

    snprintf(extra, sizeof(extra), "sslmode=disable user=%s password=nope", cl->md5_user);
    c = harness_connect(px, extra);
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "28P01");
    CU_ASSERT_TRUE(itu_error_contains(c, "password authentication failed"));
    PQfinish(c);
    stop(px);
}

static void test_trust_auth(void)
{
    struct harness_proxy *px = start("disable", "prefer", "trust");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    /* No password asked: a wrong one in the conninfo is never sent. */
    PGconn *c = harness_connect(px, "sslmode=disable password=not-asked");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "trust login: %s", PQerrorMessage(c));
    CU_ASSERT_FALSE(PQconnectionUsedPassword(c));
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT current_user"), "pgwarden_test");
    PQfinish(c);
    stop(px);
}

static void test_unknown_database(void)
{
    struct harness_proxy *px = start("disable", "prefer", "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *c = harness_connect(px, "sslmode=disable dbname=no_such_db");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "3D000");
    CU_ASSERT_TRUE(itu_error_contains(c, "does not exist"));
    PQfinish(c);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    stop(px);
}

/* ---- raw negotiation and SCRAM, compared with PostgreSQL --------------------------- */

#define SSL_REQUEST 80877103u
#define GSS_REQUEST 80877104u

/* A raw client connection, plain or TLS (after SSLRequest and 'S'). */
struct rawc {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
};

static void rawc_close(struct rawc *r)
{
    if (r->ssl)
        SSL_free(r->ssl);
    if (r->ctx)
        SSL_CTX_free(r->ctx);
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    r->ssl = NULL;
    r->ctx = NULL;
}

/* Waits for what an SSL call asked for; false on timeout. */
static bool rawc_wait(struct rawc *r, int err, int64_t deadline)
{
    int64_t left = deadline - itu_now_ms();
    struct pollfd p = {r->fd, err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, 0};
    return left > 0 && poll(&p, 1, (int)left) == 1;
}

static void request_packet(uint8_t pkt[8], uint32_t code)
{
    itw_put32(pkt, 8);
    itw_put32(pkt + 4, code);
}

static bool rawc_send(struct rawc *r, const void *buf, size_t len)
{
    if (!r->ssl)
        return harness_raw_send(r->fd, buf, len, 2000) == 0;
    int64_t deadline = itu_now_ms() + 2000;
    for (;;) {
        int n = SSL_write(r->ssl, buf, (int)len);
        if (n == (int)len)
            return true;
        if (n > 0 || !rawc_wait(r, SSL_get_error(r->ssl, n), deadline))
            return false;
    }
}

/* Reads messages until one of a type in stop is complete, the peer closed or 5 s passed. */
static ssize_t rawc_recv(struct rawc *r, uint8_t *buf, size_t cap, const char *stop)
{
    if (!r->ssl)
        return itw_recv_until(r->fd, buf, cap, stop, 5000);
    size_t len = 0, end;
    int64_t deadline = itu_now_ms() + 5000;
    while (len < cap && !itw_complete(buf, len, stop, &end)) {
        int n = SSL_read(r->ssl, buf + len, (int)(cap - len));
        if (n > 0) {
            len += (size_t)n;
            continue;
        }
        int err = SSL_get_error(r->ssl, n);
        if ((err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) ||
            !rawc_wait(r, err, deadline))
            break; /* closed, reset or quiet */
    }
    ERR_clear_error();
    return (ssize_t)len;
}

/* Sends an SSLRequest on fd; true when pgwarden answered 'S' (TLS next). */
static bool ssl_request_accepted(int fd)
{
    uint8_t pkt[8], answer = 0;
    request_packet(pkt, SSL_REQUEST);
    return harness_raw_send(fd, pkt, 8, 2000) == 0 &&
           harness_raw_recv(fd, &answer, 1, 5000, NULL) == 1 && answer == 'S';
}

/* Connects to port; with tls, negotiates TLS (no certificate check: only the protocol
 * inside matters here). */
static bool rawc_open(struct rawc *r, int port, bool tls)
{
    *r = (struct rawc){.fd = harness_raw_connect(port, 2000)};
    if (r->fd < 0 || !tls)
        return r->fd >= 0;
    if (!ssl_request_accepted(r->fd))
        return false;
    r->ctx = SSL_CTX_new(TLS_client_method());
    r->ssl = r->ctx ? SSL_new(r->ctx) : NULL;
    if (!r->ssl || SSL_set_fd(r->ssl, r->fd) != 1)
        return false;
    int64_t deadline = itu_now_ms() + 5000;
    for (;;) {
        int rc = SSL_connect(r->ssl);
        if (rc == 1)
            return true;
        if (!rawc_wait(r, SSL_get_error(r->ssl, rc), deadline))
            return false;
    }
}

/* SQLSTATE and message of the answer in buf ("" and "" when it is no ErrorResponse). */
struct answer {
    char state[8];
    char msg[256];
    char first; /* first byte: 'S', 'N', 'E', 'R', ... (0: nothing) */
};

static struct answer answer_of(const uint8_t *buf, ssize_t n)
{
    struct answer a = {.first = n > 0 ? (char)buf[0] : 0};
    itw_error_field(buf, n > 0 ? (size_t)n : 0, 'C', a.state, sizeof(a.state));
    itw_error_field(buf, n > 0 ? (size_t)n : 0, 'M', a.msg, sizeof(a.msg));
    return a;
}

/* Inside TLS, sends an SSLRequest or GSSENCRequest (code) and returns the answer. */
static struct answer request_inside_tls(int port, uint32_t code)
{
    struct rawc r;
    struct answer a = {0};
    uint8_t pkt[8], buf[1024];
    if (!rawc_open(&r, port, true)) {
        fprintf(stderr, "TLS to port %d failed\n", port);
        rawc_close(&r);
        return a;
    }
    request_packet(pkt, code);
    if (rawc_send(&r, pkt, 8))
        a = answer_of(buf, rawc_recv(&r, buf, sizeof(buf), "E"));
    rawc_close(&r);
    return a;
}

static void check_same(const struct answer *proxy, const struct answer *pg, const char *state,
                       const char *msg, const char *what)
{
    if (strcmp(proxy->state, pg->state) || strcmp(proxy->msg, pg->msg))
        fprintf(stderr, "%s: pgwarden %s \"%s\" ('%c'), PostgreSQL %s \"%s\"\n", what, proxy->state,
                proxy->msg, proxy->first ? proxy->first : '0', pg->state, pg->msg);
    CU_ASSERT_STRING_EQUAL(pg->state, state);
    CU_ASSERT_STRING_EQUAL(pg->msg, msg);
    CU_ASSERT_STRING_EQUAL(proxy->state, state);
    CU_ASSERT_STRING_EQUAL(proxy->msg, msg);
}

/* PostgreSQL: a second SSLRequest (or a GSSENCRequest) once TLS is up is no known request
 * code, so it is refused as an unsupported protocol version, FATAL 0A000. */
static void test_encryption_request_inside_tls(void)
{
    struct harness_proxy *px = start("allow", "prefer", "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    int pg_port = harness_cluster()->port;
    struct answer p = request_inside_tls(px->port, SSL_REQUEST);
    struct answer d = request_inside_tls(pg_port, SSL_REQUEST);
    check_same(&p, &d, "0A000",
               "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0",
               "SSLRequest inside TLS");
    p = request_inside_tls(px->port, GSS_REQUEST);
    d = request_inside_tls(pg_port, GSS_REQUEST);
    check_same(&p, &d, "0A000",
               "unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0",
               "GSSENCRequest inside TLS");
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=require"));
    stop(px);
}

/* Sends the request packets of codes in order on one plain connection; returns what came
 * back for the last one. */
static struct answer plain_requests(int port, const uint32_t *codes, int n)
{
    struct rawc r;
    struct answer a = {0};
    uint8_t pkt[8], buf[1024];
    if (!rawc_open(&r, port, false))
        return a;
    for (int i = 0; i < n; i++) {
        request_packet(pkt, codes[i]);
        if (!rawc_send(&r, pkt, 8))
            break;
        ssize_t got = i + 1 < n ? harness_raw_recv(r.fd, buf, 1, 5000, NULL)
                                : rawc_recv(&r, buf, sizeof(buf), "E");
        a = answer_of(buf, got);
    }
    rawc_close(&r);
    return a;
}

/* Each encryption request once per connection, as PostgreSQL (whose refusals of SSL then
 * GSS in either order are allowed); a repeated one is FATAL 0A000 instead of another 'N'. */
static void test_encryption_request_repeated(void)
{
    struct harness_proxy *px = start("disable", "prefer", "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    static const uint32_t ssl2[] = {SSL_REQUEST, SSL_REQUEST};
    static const uint32_t gss2[] = {GSS_REQUEST, GSS_REQUEST};
    static const uint32_t ssl_gss_ssl[] = {SSL_REQUEST, GSS_REQUEST, SSL_REQUEST};
    static const uint32_t gss_ssl_gss[] = {GSS_REQUEST, SSL_REQUEST, GSS_REQUEST};
    struct answer a = plain_requests(px->port, ssl2, 2);
    CU_ASSERT_STRING_EQUAL(a.state, "0A000");
    CU_ASSERT_STRING_EQUAL(a.msg,
                           "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0");
    a = plain_requests(px->port, gss2, 2);
    CU_ASSERT_STRING_EQUAL(a.state, "0A000");
    CU_ASSERT_STRING_EQUAL(a.msg,
                           "unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0");
    a = plain_requests(px->port, ssl_gss_ssl, 3);
    CU_ASSERT_STRING_EQUAL(a.state, "0A000");
    a = plain_requests(px->port, gss_ssl_gss, 3);
    CU_ASSERT_STRING_EQUAL(a.state, "0A000");
    a = plain_requests(px->port, gss_ssl_gss, 2); /* both refused once: 'N' each */
    CU_ASSERT_EQUAL(a.first, 'N');
    /* Refused once each, then a StartupMessage: the login goes on. */
    struct rawc r;
    CU_ASSERT_FATAL(rawc_open(&r, px->port, false));
    uint8_t pkt[512], buf[1024];
    for (int i = 0; i < 2; i++) {
        request_packet(pkt, i ? SSL_REQUEST : GSS_REQUEST);
        CU_ASSERT(rawc_send(&r, pkt, 8));
        CU_ASSERT_EQUAL(harness_raw_recv(r.fd, buf, 1, 5000, NULL), 1);
        CU_ASSERT_EQUAL(buf[0], 'N');
    }
    size_t n = harness_build_startup(pkt, sizeof(pkt), "pgwarden_test", "pgwarden_test");
    CU_ASSERT(rawc_send(&r, pkt, n));
    ssize_t got = rawc_recv(&r, buf, sizeof(buf), "RE");
    size_t blen = 0;
    const uint8_t *auth = itw_find(buf, got > 0 ? (size_t)got : 0, 'R', &blen);
    CU_ASSERT(auth != NULL && blen >= 4 && itw_get32(auth) == 10); /* AuthenticationSASL */
    rawc_close(&r);
    stop(px);
}

/* Starts a SCRAM login on port and sends client_first as the SASLInitialResponse. */
static struct answer scram_first(int port, const char *client_first)
{
    struct rawc r;
    struct answer a = {0};
    static uint8_t pkt[8192], buf[4096];
    if (!rawc_open(&r, port, false))
        return a;
    size_t n = harness_build_startup(pkt, sizeof(pkt), "pgwarden_test", "pgwarden_test");
    ssize_t got = rawc_send(&r, pkt, n) ? rawc_recv(&r, buf, sizeof(buf), "RE") : -1;
    size_t blen = 0, dlen = strlen(client_first);
    const uint8_t *auth = itw_find(buf, got > 0 ? (size_t)got : 0, 'R', &blen);
    if (!auth || blen < 4 || itw_get32(auth) != 10) {
        a = answer_of(buf, got);
        rawc_close(&r);
        return a;
    }
    uint8_t body[8192];
    memcpy(body, "SCRAM-SHA-256", 14);
    itw_put32(body + 14, (uint32_t)dlen);
    memcpy(body + 18, client_first, dlen);
    n = 0;
    if (itw_msg(pkt, sizeof(pkt), &n, 'p', body, 18 + dlen) && rawc_send(&r, pkt, n))
        a = answer_of(buf, rawc_recv(&r, buf, sizeof(buf), "RE"));
    rawc_close(&r);
    return a;
}

/* SCRAM client-first messages PostgreSQL refuses, refused by pgwarden with the same
 * SQLSTATE and message (auth-scram.c, and the 1024-byte limit on SASL messages). */
static void test_scram_errors_as_postgresql(void)
{
    struct harness_proxy *px = start("disable", "prefer", "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    int pg_port = harness_cluster()->port;
    static char big[2100];
    memcpy(big, "n,,n=,r=", 8);
    memset(big + 8, 'x', 2000);
    static const struct {
        const char *what, *client_first, *state, *msg;
    } cases[] = {
        {"authzid", "n,a=someone,n=,r=abcdefghijkl", "0A000",
         "client uses authorization identity, but it is not supported"},
        {"mandatory extension", "n,,m=ext,n=,r=abcdefghijkl", "0A000",
         "client requires an unsupported SCRAM extension"},
        {"oversized nonce", big, "28P01",
         "password authentication failed for user \"pgwarden_test\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct answer p = scram_first(px->port, cases[i].client_first);
        struct answer d = scram_first(pg_port, cases[i].client_first);
        check_same(&p, &d, cases[i].state, cases[i].msg, cases[i].what);
    }
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    stop(px);
}

/* ---- a peer gone without a TLS close_notify ---------------------------------------- */

/* Waits up to timeout_ms for px's log to contain needle. */
static bool log_wait(const struct harness_proxy *px, const char *needle, int timeout_ms)
{
    int64_t deadline = itu_now_ms() + timeout_ms;
    while (!harness_proxy_log_contains(px, needle)) {
        if (itu_now_ms() > deadline)
            return false;
        itu_sleep_ms(20);
    }
    return true;
}

/* A process killed, a cable pulled: the TCP connection ends, no TLS close_notify first
 * (SSL_free sends none).  SHUT_RDWR: a FIN, whatever is left unread. */
static void rawc_vanish(struct rawc *r)
{
    shutdown(r->fd, SHUT_RDWR);
    rawc_close(r);
}

static struct harness_proxy *start_for_close(const char *server_tls, const char *databases)
{
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 4,
                                   .client_tls_mode = "allow",
                                   .server_tls_mode = server_tls,
                                   .auth_type = "trust",
                                   .log_level = "debug",
                                   .admin = true,
                                   .databases_extra = databases,
                                   .query_wait_timeout_ms = 20000};
    return harness_proxy_start(&o);
}

#define CLIENT_TLS_ERRORS "pgwarden_tls_handshakes_total{side=\"client\",outcome=\"error\"}"
#define CLIENT_TLS_OK     "pgwarden_tls_handshakes_total{side=\"client\",outcome=\"ok\"}"

/* A client that hangs up in the middle of its TLS handshake (a health check, a port
 * scanner, a client that gave up) is no failed handshake: with OpenSSL 3 it was one
 * ("unexpected eof while reading"), counted as certificates going wrong are. */
static void test_client_gone_mid_handshake(void)
{
    struct harness_proxy *px = start_for_close("disable", NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    int fd = harness_raw_connect(px->port, 2000);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_TRUE(ssl_request_accepted(fd));
    /* The ClientHello from an SSL object on memory BIOs: it never reads pgwarden's answer,
     * so the handshake stops there whatever the timing. */
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = ctx ? SSL_new(ctx) : NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(ssl);
    SSL_set_bio(ssl, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
    int rc = SSL_connect(ssl);
    CU_ASSERT_EQUAL(SSL_get_error(ssl, rc), SSL_ERROR_WANT_READ);
    char *hello = NULL;
    long hello_len = BIO_get_mem_data(SSL_get_wbio(ssl), &hello);
    CU_ASSERT_FATAL(hello_len > 0);
    CU_ASSERT_EQUAL(harness_raw_send(fd, hello, (size_t)hello_len, 2000), 0);
    /* pgwarden's answer, read in full (the peer then closes with a FIN, not a reset) */
    static uint8_t flight[16384];
    CU_ASSERT(harness_raw_recv(fd, flight, sizeof(flight), 500, NULL) > 0);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    shutdown(fd, SHUT_RDWR);
    close(fd);
    CU_ASSERT(log_wait(px, "C-2: closing", 5000)); /* C-1: the harness waiting for the port */
    CU_ASSERT_EQUAL(metric_value(px->admin_port, CLIENT_TLS_ERRORS), 0);
    CU_ASSERT_EQUAL(metric_value(px->admin_port, CLIENT_TLS_OK), 0);
    CU_ASSERT_FALSE(harness_proxy_log_contains(px, "connection lost"));
    CU_ASSERT_TRUE(harness_proxy_log_contains(px, "C-2: client closed the connection"));
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=require"));
    stop(px);
}

/* A client that asks for TLS and then stays silent in the handshake is closed at
 * client_login_timeout_ms, as one silent in plain text is: no error can be written there,
 * and waiting for one to be read kept it 5 s longer. */
static void test_tls_handshake_login_timeout(void)
{
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 2,
                                   .client_tls_mode = "allow",
                                   .auth_type = "trust",
                                   .client_login_timeout_ms = 1000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    int fd = harness_raw_connect(px->port, 2000);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_TRUE(ssl_request_accepted(fd));
    int64_t t0 = itu_now_ms();
    bool closed = false;
    uint8_t buf[64];
    ssize_t n = harness_raw_recv(fd, buf, sizeof(buf), 8000, &closed);
    int64_t waited = itu_now_ms() - t0;
    printf("\n    silent TLS client closed after %lld ms ", (long long)waited);
    CU_ASSERT_TRUE(closed || n == 0);
    CU_ASSERT(waited < 3000); /* 1 s, plus the janitor's tick */
    close(fd);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=require"));
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* Logs in over r (trust) and runs SELECT 1; true when both were answered. */
static bool rawc_login(struct rawc *r)
{
    uint8_t pkt[512], buf[4096];
    size_t n = harness_build_startup(pkt, sizeof(pkt), "pgwarden_test", "pgwarden_test");
    ssize_t got = rawc_send(r, pkt, n) ? rawc_recv(r, buf, sizeof(buf), "ZE") : -1;
    size_t blen = 0;
    if (got <= 0 || !itw_find(buf, (size_t)got, 'Z', &blen))
        return false;
    n = 0;
    if (!itw_msg(pkt, sizeof(pkt), &n, 'Q', "SELECT 1", 9) || !rawc_send(r, pkt, n))
        return false;
    got = rawc_recv(r, buf, sizeof(buf), "ZE");
    return got > 0 && itw_find(buf, (size_t)got, 'D', &blen) &&
           !itw_find(buf, (size_t)got, 'E', &blen);
}

/* A logged-in TLS client that vanishes (the process killed: libpq never sends a
 * close_notify then) is a client that went away, not a connection error: a debug line,
 * nothing at info. */
static void test_client_gone_without_close_notify(void)
{
    struct harness_proxy *px = start_for_close("disable", NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    struct rawc r;
    CU_ASSERT_FATAL(rawc_open(&r, px->port, true));
    CU_ASSERT_TRUE(rawc_login(&r));
    rawc_vanish(&r);
    CU_ASSERT(log_wait(px, "C-2: closing", 5000));
    CU_ASSERT_TRUE(
        harness_proxy_log_contains(px, "DEBUG client C-2: client closed the connection"));
    CU_ASSERT_FALSE(harness_proxy_log_contains(px, "connection lost"));
    CU_ASSERT_FALSE(harness_proxy_log_contains(px, "unexpected eof"));
    CU_ASSERT_EQUAL(metric_value(px->admin_port, CLIENT_TLS_OK), 1);
    CU_ASSERT_EQUAL(metric_value(px->admin_port, CLIENT_TLS_ERRORS), 0);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=require"));
    stop(px);
}

/* A client that goes away with a TCP reset (a killed process, a health check closing with
 * SO_LINGER 0) went away: a debug line, not an info one as for a connection error. */
static void test_client_reset_is_no_error(void)
{
    struct harness_proxy *px = start_for_close("disable", NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    struct rawc r;
    CU_ASSERT_FATAL(rawc_open(&r, px->port, false));
    CU_ASSERT_TRUE(rawc_login(&r));
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    CU_ASSERT_EQUAL(setsockopt(r.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    rawc_close(&r); /* a reset */
    CU_ASSERT(log_wait(px, "C-2: closing", 5000));
    CU_ASSERT_TRUE(harness_proxy_log_contains(px, "DEBUG client C-2: connection lost: "));
    CU_ASSERT_FALSE(harness_proxy_log_contains(px, "INFO client C-2: connection lost"));
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    stop(px);
}

/* PostgreSQL's TLS connection ending without a close_notify (its host or the path to it
 * gone) is a server that closed the connection: the client gets 08006 as for any lost
 * server, and the log has no TLS error. */
static void test_server_gone_without_close_notify(void)
{
    int rport = 0;
    pid_t relay = relay_start(harness_cluster()->port, &rport);
    CU_ASSERT_FATAL(relay > 0);
    char db[200];
    snprintf(db, sizeof(db), "relayed = host=127.0.0.1 port=%d dbname=pgwarden_test", rport);
    struct harness_proxy *px = start_for_close("require", db);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *c = harness_connect(px, "sslmode=disable dbname=relayed");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
    CU_ASSERT_TRUE(harness_proxy_log_contains(px, "S-1: ")); /* the server through the relay */
    relay_stop(relay);
    CU_ASSERT(log_wait(px, "S-1: closing", 5000));
    CU_ASSERT_TRUE(harness_proxy_log_contains(px, "S-1: closing: server closed the connection"));
    CU_ASSERT_FALSE(harness_proxy_log_contains(px, "connection lost: "));
    CU_ASSERT_FALSE(harness_proxy_log_contains(px, "unexpected eof"));
    PGresult *res = PQexec(c, "SELECT 1");
    CU_ASSERT_EQUAL(PQresultStatus(res), PGRES_FATAL_ERROR);
    CU_ASSERT_TRUE(itu_error_contains(c, "server closed the connection unexpectedly"));
    PQclear(res);
    CU_ASSERT_TRUE(harness_proxy_log_contains(px, "closing with 08006"));
    PQfinish(c);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    stop(px);
}

/* ---- pgwarden's own closes: a close_notify, as PostgreSQL and libpq send ------------- */

/* Reads r until the connection ends (5 s at most); true when it ended with a TLS
 * close_notify (SSL_ERROR_ZERO_RETURN), not a bare end of the TCP stream. */
static bool rawc_ends_with_close_notify(struct rawc *r)
{
    uint8_t buf[4096];
    int64_t deadline = itu_now_ms() + 5000;
    for (;;) {
        ERR_clear_error();
        int n = SSL_read(r->ssl, buf, sizeof(buf));
        if (n > 0)
            continue;
        int err = SSL_get_error(r->ssl, n);
        if ((err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) &&
            rawc_wait(r, err, deadline))
            continue;
        if (err != SSL_ERROR_ZERO_RETURN)
            fprintf(stderr, "TLS connection ended with SSL error %d (%s)\n", err,
                    ERR_reason_error_string(ERR_peek_error())
                        ? ERR_reason_error_string(ERR_peek_error())
                        : "no reason");
        ERR_clear_error();
        return err == SSL_ERROR_ZERO_RETURN;
    }
}

/* A startup packet of protocol 9.0, which both refuse with a FATAL and then close. */
static bool rawc_refused_startup_ends_cleanly(int port)
{
    struct rawc r;
    bool ok = rawc_open(&r, port, true);
    uint8_t pkt[64];
    size_t n = harness_build_startup(pkt, sizeof(pkt), "pgwarden_test", "pgwarden_test");
    itw_put32(pkt + 4, 9u << 16); /* protocol 9.0 */
    ok = ok && n > 8 && rawc_send(&r, pkt, n) && rawc_ends_with_close_notify(&r);
    rawc_close(&r);
    return ok;
}

/* A client's TLS connection that pgwarden ends, after the client's Terminate or after a
 * FATAL, ends with a close_notify, as one to PostgreSQL does (libpq and other TLS stacks
 * see an orderly end, not "unexpected eof while reading"). */
static void test_client_close_sends_close_notify(void)
{
    struct harness_proxy *px = start_for_close("disable", NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    CU_ASSERT_TRUE(rawc_refused_startup_ends_cleanly(harness_cluster()->port)); /* PostgreSQL */
    CU_ASSERT_TRUE(rawc_refused_startup_ends_cleanly(px->port));
    struct rawc r;
    CU_ASSERT_FATAL(rawc_open(&r, px->port, true));
    CU_ASSERT_TRUE(rawc_login(&r));
    static const uint8_t terminate[5] = {'X', 0, 0, 0, 4};
    CU_ASSERT_TRUE(rawc_send(&r, terminate, sizeof(terminate)));
    CU_ASSERT_TRUE(rawc_ends_with_close_notify(&r));
    rawc_close(&r);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=require"));
    stop(px);
}

/* The bytes PostgreSQL's log gained since offset (at most cap - 1, NUL-terminated). */
static void pg_log_since(long offset, char *buf, size_t cap)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/postgres.log", harness_cluster()->dir);
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    if (fseek(f, offset, SEEK_SET) == 0) {
        size_t n = fread(buf, 1, cap - 1, f);
        buf[n] = 0;
    }
    fclose(f);
}

static long pg_log_size(void)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/postgres.log", harness_cluster()->dir);
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* Servers over TLS that pgwarden closes (here: at shutdown, while they may still be
 * answering their server_reset_query: those are closed once they have answered) get a
 * Terminate and a close_notify inside TLS, as from libpq: PostgreSQL logs nothing for
 * their backends.  Without them, each one left "could not receive data from client:
 * Connection reset by peer".  (Only these backends' lines count: an earlier test's may
 * still arrive.) */
static void test_server_close_is_orderly(void)
{
    /* the positive control: each backend's "disconnection" line must be there */
    CU_ASSERT_EQUAL_FATAL(harness_cluster_exec("ALTER SYSTEM SET log_disconnections = on"), 0);
    CU_ASSERT_EQUAL_FATAL(harness_cluster_exec("SELECT pg_reload_conf()"), 0);
    itu_sleep_ms(200); /* the postmaster has read the file */
    struct harness_proxy *px = start_for_close("require", NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    long log_at = pg_log_size();
    PGconn *c[3];
    char pids[3][32];
    for (int i = 0; i < 3; i++) { /* session pooling: three servers */
        c[i] = harness_connect(px, "sslmode=disable");
        CU_ASSERT_EQUAL_FATAL(PQstatus(c[i]), CONNECTION_OK);
        CU_ASSERT_STRING_EQUAL(itu_value(c[i], "SELECT ssl::text FROM pg_stat_ssl "
                                               "WHERE pid = pg_backend_pid()"),
                               "true");
        snprintf(pids[i], sizeof(pids[i]), "[%.20s]", itu_value(c[i], "SELECT pg_backend_pid()"));
    }
    for (int i = 0; i < 3; i++)
        PQfinish(c[i]);
    stop(px); /* SIGTERM at once: the servers may still be answering their resets */
    /* the backends are gone when none of the test user's but ours is left */
    PGconn *d = PQconnectdb(harness_cluster_conninfo("sslmode=disable"));
    int64_t deadline = itu_now_ms() + 5000;
    while (strcmp(itu_value(d, "SELECT count(*) FROM pg_stat_activity WHERE usename = "
                               "current_user AND pid <> pg_backend_pid()"),
                  "0") != 0 &&
           itu_now_ms() < deadline)
        itu_sleep_ms(20);
    PQfinish(d);
    itu_sleep_ms(100); /* a backend writes its last log line as it exits */
    static char logged[65536];
    pg_log_since(log_at, logged, sizeof(logged));
    int bad = 0, disconnections = 0;
    for (char *line = strtok(logged, "\n"); line; line = strtok(NULL, "\n")) {
        bool ours = strstr(line, pids[0]) || strstr(line, pids[1]) || strstr(line, pids[2]);
        disconnections += ours && strstr(line, "disconnection: session time") != NULL;
        if (ours && (strstr(line, "could not receive") || strstr(line, "SSL error") ||
                     strstr(line, "unexpected EOF"))) {
            fprintf(stderr, "PostgreSQL logged: %s\n", line);
            bad++;
        }
    }
    CU_ASSERT_EQUAL(disconnections, 3);
    CU_ASSERT_EQUAL(bad, 0);
    harness_cluster_exec("ALTER SYSTEM RESET log_disconnections");
    harness_cluster_exec("SELECT pg_reload_conf()");
}

static void register_suites(void)
{
    static const CU_TestInfo tls_tests[] = {
        {"client_tls_allow_on_off_verify_full", test_client_tls_allow},
        {"client_tls_disable", test_client_tls_disable},
        {"client_tls_require_refuses_plain", test_client_tls_require_refuses_plain},
        {"server_tls_disable", test_server_tls_disable},
        {"server_tls_require", test_server_tls_require},
        {"server_tls_verify_full", test_server_tls_verify_full},
        {"encryption_request_inside_tls", test_encryption_request_inside_tls},
        {"encryption_request_repeated", test_encryption_request_repeated},
        {"client_gone_mid_handshake", test_client_gone_mid_handshake},
        {"tls_handshake_login_timeout", test_tls_handshake_login_timeout},
        {"client_gone_without_close_notify", test_client_gone_without_close_notify},
        {"client_reset_is_no_error", test_client_reset_is_no_error},
        {"server_gone_without_close_notify", test_server_gone_without_close_notify},
        {"client_close_sends_close_notify", test_client_close_sends_close_notify},
        {"server_close_is_orderly", test_server_close_is_orderly},
        CU_TEST_INFO_NULL,
    };
    static const CU_TestInfo auth_tests[] = {
        {"scram_right_wrong_unknown_user", test_scram_right_and_wrong},
        {"md5_auth", test_md5_auth},
        {"trust_auth", test_trust_auth},
        {"unknown_database_3D000", test_unknown_database},
        {"scram_errors_as_postgresql", test_scram_errors_as_postgresql},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("tls", suite_init, NULL, tls_tests);
    cunit_add_suite("auth", suite_init, NULL, auth_tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
