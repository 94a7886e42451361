/*
 * test_admin.c: pgwarden's admin HTTP port (docs/admin-api.md, docs/metrics.md) driven
 * over plain TCP while libpq clients use the proxy: /health, /clients (including a
 * non-ASCII and an invalid-UTF-8 application_name; JSON checked with jansson), /pools,
 * /servers, /metrics checked line by line with a strict exposition-format parser and
 * counters moving with traffic, admin_token enforcement, bad requests (400, 404,
 * 405, 413) answered while queries keep being served, the slowloris defences
 * (admin_max_connections, the absolute admin_request_timeout_ms), a reload that does
 * not move the admin port, and prompt answers on a kept-alive connection (TCP_NODELAY).
 */
#include <ctype.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_http.h"
#include "itest_util.h"

#define TOKEN "s3cret-admin-token"

static struct harness_proxy *g_px;     /* no admin_token */
static struct harness_proxy *g_px_tok; /* admin_token = TOKEN */
static struct harness_proxy *g_px_txn; /* transaction mode */

/* [databases] entries nobody connects to: listed by /pools all the same (not "*"). */
#define UNUSED_DATABASES                                                                           \
    "unused_db = host=127.0.0.1 port=5432 dbname=nothing pool_size=3 pool_mode=transaction\n"      \
    "* = host=127.0.0.1 port=5432"

static int suite_init(void)
{
    if (itu_suite_init() != 0)
        return 1;
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 5,
                                   .client_tls_mode = "allow",
                                   .auth_type = "scram-sha-256",
                                   .query_wait_timeout_ms = 10000,
                                   .admin = true,
                                   .databases_extra = UNUSED_DATABASES};
    g_px = harness_proxy_start(&o);
    o.databases_extra = NULL;
    o.pgwarden_extra = "admin_token = " TOKEN;
    g_px_tok = harness_proxy_start(&o);
    o.pgwarden_extra = NULL;
    o.pool_mode = "transaction";
    g_px_txn = harness_proxy_start(&o);
    return g_px && g_px_tok && g_px_txn ? 0 : 1;
}

static int suite_cleanup(void)
{
    int rc = 0;
    struct harness_proxy *all[3] = {g_px, g_px_tok, g_px_txn};
    for (int i = 0; i < 3; i++) {
        if (!all[i])
            continue;
        int st = harness_proxy_stop(all[i], 0);
        if (st != 0) {
            harness_proxy_dump_log(all[i], 40);
            rc = 1;
        }
        harness_proxy_free(all[i]);
    }
    g_px = g_px_tok = g_px_txn = NULL;
    return rc;
}

/* ---- /health, /clients, /pools, /servers ------------------------------------------- */

static void test_health(void)
{
    struct http_reply r = http(g_px->admin_port, "GET", "/health", NULL);
    CU_ASSERT_EQUAL(r.status, 200);
    http_reply_free(&r);
    json_t *j = get_json(g_px->admin_port, "/health", NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "status")) ?: "", "ok");
    CU_ASSERT_TRUE(json_is_object(json_object_get(j, "databases")));
    json_decref(j);

    /* HEAD: same status, no body. */
    r = http(g_px->admin_port, "HEAD", "/health", NULL);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_EQUAL(r.body_len, 0);
    http_reply_free(&r);
}

/* docs/admin-api.md: "databases":{"<name>":{"ok":true,"servers_idle":N,...}} */
static void test_health_documented_shape(void)
{
    PGconn *c = harness_connect(g_px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
    json_t *j = get_json(g_px->admin_port, "/health", NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    json_t *db = json_object_get(json_object_get(j, "databases"), "pgwarden_test/pgwarden_test");
    if (!json_is_object(db)) {
        char *s = json_dumps(j, JSON_COMPACT);
        fprintf(stderr, "/health: %s\n", s ? s : "");
        free(s);
    }
    CU_ASSERT_TRUE(json_is_object(db));
    CU_ASSERT_TRUE(json_is_true(json_object_get(db, "ok")));
    json_decref(j);
    PQfinish(c);
}

static void test_clients_and_servers(void)
{
    /* application_name "itest-admin-ü" (UTF-8) and one with two invalid bytes. */
    PGconn *c1 = harness_connect(g_px, "sslmode=require application_name=itest-admin-\xc3\xbc");
    PGconn *c2 = harness_connect(g_px, "sslmode=disable application_name='bad\xff\xfename'");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c1), CONNECTION_OK);
    CU_ASSERT_EQUAL(PQstatus(c2), CONNECTION_OK);
    if (PQstatus(c2) != CONNECTION_OK)
        fprintf(stderr, "invalid-UTF-8 application_name: %s", PQerrorMessage(c2));
    char pid1[32];
    itu_value_copy(pid1, sizeof(pid1), c1, "SELECT pg_backend_pid()");

    json_t *clients = get_json(g_px->admin_port, "/clients", NULL);
    CU_ASSERT_TRUE_FATAL(json_is_array(clients));
    json_t *e1 = find_by(clients, "application_name", "itest-admin-\xc3\xbc");
    CU_ASSERT_PTR_NOT_NULL(e1);
    json_int_t id1 = -1;
    if (e1) {
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e1, "user")) ?: "",
                               "pgwarden_test");
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e1, "database")) ?: "",
                               "pgwarden_test");
        CU_ASSERT_TRUE(json_is_true(json_object_get(e1, "tls")));
        CU_ASSERT_TRUE(json_is_integer(json_object_get(e1, "connected_ms")));
        CU_ASSERT_TRUE(json_is_integer(json_object_get(e1, "server_id")));
        id1 = json_integer_value(json_object_get(e1, "id"));
    }
    /* The invalid bytes come back as U+FFFD each. */
    json_t *e2 = find_by(clients, "application_name", "bad\xef\xbf\xbd\xef\xbf\xbdname");
    CU_ASSERT_PTR_NOT_NULL(e2);
    if (!e2 || !e1) {
        char *s = json_dumps(clients, JSON_COMPACT);
        fprintf(stderr, "/clients: %s\n", s ? s : "");
        free(s);
    }
    if (e2)
        CU_ASSERT_TRUE(json_is_false(json_object_get(e2, "tls")));
    json_decref(clients);

    /* /servers: the backend serving c1 is linked to that client. */
    json_t *servers = get_json(g_px->admin_port, "/servers", NULL);
    CU_ASSERT_TRUE_FATAL(json_is_array(servers));
    size_t i;
    json_t *s, *mine = NULL;
    json_array_foreach(servers, i, s)
    {
        if (json_integer_value(json_object_get(s, "backend_pid")) == atoi(pid1))
            mine = s;
    }
    CU_ASSERT_PTR_NOT_NULL(mine);
    if (mine) {
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(mine, "client_id")), id1);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(mine, "state")) ?: "", "active");
    }
    json_decref(servers);

    /* /pools: our pool, its size, at least these two servers active. */
    json_t *pools = get_json(g_px->admin_port, "/pools", NULL);
    CU_ASSERT_TRUE_FATAL(json_is_array(pools));
    json_t *p = find_by(pools, "database", "pgwarden_test");
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(p, "user")) ?: "", "pgwarden_test");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(p, "mode")) ?: "", "session");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(p, "pool_size")), 5);
    CU_ASSERT(json_integer_value(json_object_get(p, "servers_active")) >= 2);
    CU_ASSERT(json_integer_value(json_object_get(p, "clients_active")) >= 2);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(p, "clients_waiting")), 0);
    json_decref(pools);

    PQfinish(c1);
    PQfinish(c2);

    /* Gone from /clients once closed (bounded poll: pgwarden notices the close). */
    bool gone = false;
    for (int k = 0; k < 100 && !gone; k++) {
        json_t *cl = get_json(g_px->admin_port, "/clients", NULL);
        gone = cl && !find_by(cl, "application_name", "itest-admin-\xc3\xbc");
        json_decref(cl);
        if (!gone)
            usleep(20000);
    }
    CU_ASSERT_TRUE(gone);
}

/* /pools lists every configured database, also those nobody used yet (zero counts, user
 * null), but not the "*" entry itself (its pools appear once opened). */
static void test_pools_lists_configured_databases(void)
{
    json_t *pools = get_json(g_px->admin_port, "/pools", NULL);
    CU_ASSERT_TRUE_FATAL(json_is_array(pools));
    json_t *p = find_by(pools, "database", "unused_db");
    if (!p) {
        char *s = json_dumps(pools, JSON_COMPACT);
        fprintf(stderr, "/pools: %s\n", s ? s : "");
        free(s);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_TRUE(json_is_null(json_object_get(p, "user")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(p, "mode")) ?: "", "transaction");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(p, "pool_size")), 3);
    static const char *const zero[] = {"clients_active", "clients_waiting",    "servers_active",
                                       "servers_idle",   "servers_connecting", "longest_wait_ms"};
    for (size_t i = 0; i < sizeof(zero) / sizeof(zero[0]); i++) {
        json_t *v = json_object_get(p, zero[i]);
        CU_ASSERT_TRUE(json_is_integer(v) && json_integer_value(v) == 0);
    }
    CU_ASSERT_PTR_NULL(find_by(pools, "database", "*"));
    json_decref(pools);
}

#define POOL_LABELS "database=pgwarden_test,user=pgwarden_test,"

static void test_metrics(void)
{
    PGconn *c = harness_connect(g_px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");

    struct series *s0 = NULL, *s1 = NULL;
    int n0 = 0, n1 = 0;
    CU_ASSERT_TRUE_FATAL(scrape(g_px->admin_port, &s0, &n0));
    double q0 = series_value(s0, n0, "pgwarden_queries_total|" POOL_LABELS "|");
    double t0 = series_value(s0, n0, "pgwarden_transactions_total|" POOL_LABELS "|");
    double b0 = series_value(s0, n0, "pgwarden_bytes_received_total|" POOL_LABELS "|");
    double o0 = series_value(s0, n0, "pgwarden_bytes_sent_total|" POOL_LABELS "|");
    double cc0 = series_value(s0, n0, "pgwarden_client_connections_total||");
    CU_ASSERT(q0 >= 1);
    CU_ASSERT(t0 >= 1);
    CU_ASSERT(cc0 >= 1);

    /* Traffic: 10 simple queries, 5 extended (one Sync each), one explicit transaction. */
    for (int i = 0; i < 10; i++)
        CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 7"), "7");
    for (int i = 0; i < 5; i++) {
        PGresult *r =
            PQexecParams(c, "SELECT $1::int", 1, NULL, (const char *[]){"3"}, NULL, NULL, 0);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
        PQclear(r);
    }
    CU_ASSERT_TRUE(itu_exec_ok(c, "BEGIN"));
    CU_ASSERT_TRUE(itu_exec_ok(c, "SELECT 1"));
    CU_ASSERT_TRUE(itu_exec_ok(c, "COMMIT"));
    PGconn *c2 = harness_connect(g_px, "sslmode=disable");
    CU_ASSERT_EQUAL(PQstatus(c2), CONNECTION_OK);
    PQfinish(c2);

    CU_ASSERT_TRUE_FATAL(scrape(g_px->admin_port, &s1, &n1));
    double q1 = series_value(s1, n1, "pgwarden_queries_total|" POOL_LABELS "|");
    double t1 = series_value(s1, n1, "pgwarden_transactions_total|" POOL_LABELS "|");
    double b1 = series_value(s1, n1, "pgwarden_bytes_received_total|" POOL_LABELS "|");
    double o1 = series_value(s1, n1, "pgwarden_bytes_sent_total|" POOL_LABELS "|");
    double cc1 = series_value(s1, n1, "pgwarden_client_connections_total||");
    printf("\n    queries %.0f -> %.0f, transactions %.0f -> %.0f ", q0, q1, t0, t1);
    CU_ASSERT(q1 - q0 >= 18);
    CU_ASSERT(t1 - t0 >= 16);
    CU_ASSERT(b1 > b0);
    CU_ASSERT(o1 > o0);
    CU_ASSERT(cc1 - cc0 >= 1);
    /* The clients gauge shows ours as active. */
    CU_ASSERT(series_value(s1, n1, "pgwarden_clients|" POOL_LABELS "state=active,|") >= 1);
    free(s0);
    free(s1);
    PQfinish(c);
}

/* Reads one HTTP answer with a Content-Length from fd into buf; true when complete, with
 * its total length in *len. */
static bool read_one_answer(int fd, char *buf, size_t cap, size_t *len)
{
    size_t got = 0;
    int64_t deadline = itu_now_ms() + 5000;
    while (got < cap - 1 && itu_now_ms() < deadline) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        ssize_t n = recv(fd, buf + got, cap - 1 - got, 0);
        if (n <= 0)
            return false;
        got += (size_t)n;
        buf[got] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        char *cl = strcasestr(buf, "\r\nContent-Length:");
        if (end && cl && cl < end &&
            got - (size_t)(end + 4 - buf) >= (size_t)strtoul(cl + 17, NULL, 10)) {
            *len = got;
            return true;
        }
    }
    return false;
}

/* Answers on a kept-alive connection go out at once.  libevent writes at most 16 KiB per
 * send, so a longer answer (/clients of 96 clients here, /metrics of a busy pgwarden) takes
 * two; with Nagle's algorithm on the admin socket the second waited for the client's
 * delayed ACK on every request after the first, ~40 ms each: 10 answers took over 400 ms. */
static void test_keepalive_answers_prompt(void)
{
    enum { NCLIENTS = 96 };
    PGconn *conns[NCLIENTS];
    for (int i = 0; i < NCLIENTS; i++) {
        conns[i] = harness_connect(g_px_txn, "sslmode=disable application_name="
                                             "keepalive-answers-prompt-padding-padding-padding");
        CU_ASSERT_EQUAL(PQstatus(conns[i]), CONNECTION_OK);
    }
    static const char req[] = "GET /clients HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    int fd = harness_raw_connect(g_px_txn->admin_port, 2000);
    CU_ASSERT_FATAL(buf && fd >= 0);
    int answered = 0;
    size_t longest = 0;
    int64_t t0 = 0;
    for (int i = 0; i < 11; i++) {
        if (i == 1)
            t0 = itu_now_ms(); /* the first answer never waited */
        size_t len = 0;
        if (harness_raw_send(fd, req, sizeof(req) - 1, 2000) != 0 ||
            !read_one_answer(fd, buf, cap, &len))
            break;
        CU_ASSERT(strncmp(buf, "HTTP/1.1 200", 12) == 0);
        if (len > longest)
            longest = len;
        answered++;
    }
    int64_t ms = itu_now_ms() - t0;
    printf("\n    10 answers of %zu bytes on one kept-alive connection in %lld ms ", longest,
           (long long)ms);
    CU_ASSERT_EQUAL(answered, 11);
    CU_ASSERT(longest > 16384); /* more than one send */
    CU_ASSERT(ms < 250);
    close(fd);
    free(buf);
    for (int i = 0; i < NCLIENTS; i++)
        PQfinish(conns[i]);
}

/* Every assignment of a server is one pool-wait observation, waits of zero included: in
 * transaction mode each of 10 queries gets a server (idle in the pool: no wait). */
static void test_pool_wait_counts_every_assignment(void)
{
    PGconn *c = harness_connect(g_px_txn, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
    struct series *s0 = NULL, *s1 = NULL;
    int n0 = 0, n1 = 0;
    CU_ASSERT_TRUE_FATAL(scrape(g_px_txn->admin_port, &s0, &n0));
    for (int i = 0; i < 10; i++)
        CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 2"), "2");
    CU_ASSERT_TRUE_FATAL(scrape(g_px_txn->admin_port, &s1, &n1));
    const char *count = "pgwarden_pool_wait_seconds_count|" POOL_LABELS "|";
    const char *fast = "pgwarden_pool_wait_seconds_bucket|" POOL_LABELS "|0.0005";
    double c0 = series_value(s0, n0, count), c1 = series_value(s1, n1, count);
    double f0 = series_value(s0, n0, fast), f1 = series_value(s1, n1, fast);
    printf("\n    pool waits observed %.0f -> %.0f (under 0.5 ms: %.0f -> %.0f) ", c0, c1, f0, f1);
    CU_ASSERT_EQUAL(c1 - c0, 10);
    CU_ASSERT_EQUAL(f1 - f0, 10); /* a server was idle every time */
    free(s0);
    free(s1);
    PQfinish(c);
}

/* ---- admin_token ------------------------------------------------------------------- */

static void test_token_enforced(void)
{
    int port = g_px_tok->admin_port;
    struct http_reply r = http(port, "GET", "/health", NULL);
    CU_ASSERT_EQUAL(r.status, 401);
    CU_ASSERT_PTR_NOT_NULL(r.head ? strcasestr(r.head, "WWW-Authenticate: Bearer") : NULL);
    http_reply_free(&r);
    r = http(port, "GET", "/metrics", "Bearer wrong-token");
    CU_ASSERT_EQUAL(r.status, 401);
    CU_ASSERT_PTR_NOT_NULL(r.head ? strstr(r.head, "invalid_token") : NULL);
    http_reply_free(&r);
    r = http(port, "GET", "/nope", NULL); /* unknown paths need the token too */
    CU_ASSERT_EQUAL(r.status, 401);
    http_reply_free(&r);
    r = http(port, "GET", "/clients", "Basic " TOKEN);
    CU_ASSERT_EQUAL(r.status, 401);
    http_reply_free(&r);

    r = http(port, "GET", "/health", "Bearer " TOKEN);
    CU_ASSERT_EQUAL(r.status, 200);
    http_reply_free(&r);
    r = http(port, "GET", "/metrics", "bearer " TOKEN);
    CU_ASSERT_EQUAL(r.status, 200);
    http_reply_free(&r);
    json_t *j = get_json(port, "/pools", "Bearer " TOKEN);
    CU_ASSERT_TRUE(json_is_array(j));
    json_decref(j);

    /* POST /reload: with the token it reloads; without a configured token it is 403. */
    r = http(port, "POST", "/reload", "Bearer " TOKEN);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_PTR_NOT_NULL(r.body ? strstr(r.body, "reloaded") : NULL);
    http_reply_free(&r);
    r = http(port, "POST", "/reload", NULL);
    CU_ASSERT_EQUAL(r.status, 401);
    http_reply_free(&r);
    r = http(g_px->admin_port, "POST", "/reload", NULL);
    CU_ASSERT_EQUAL(r.status, 403);
    http_reply_free(&r);
    CU_ASSERT_TRUE(itu_proxy_serves(g_px_tok, "sslmode=disable"));
}

/* ---- bad requests while the proxy serves ------------------------------------------- */

static void test_bad_requests_while_serving(void)
{
    int port = g_px->admin_port;
    PGconn *c = harness_connect(g_px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_TRUE(itu_exec_ok(c, "BEGIN"));

    /* A slow HTTP client holding a half-sent request open the whole time. */
    int slow = harness_raw_connect(port, 2000);
    CU_ASSERT_FATAL(slow >= 0);
    CU_ASSERT_EQUAL(harness_raw_send(slow, "GET /metr", 9, 2000), 0);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'q1'"), "q1");

    static const char garbage[] = "\x16\x03\x01\x02\x00garbage\x01\xff\r\n\r\n";
    struct http_reply r = http_raw(port, garbage, sizeof(garbage) - 1);
    CU_ASSERT_TRUE(r.status == 400 || (r.status == 0 && r.closed));
    if (r.status != 400)
        fprintf(stderr, "garbage: status %d closed %d\n", r.status, r.closed);
    http_reply_free(&r);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'q2'"), "q2");

    r = http(port, "GET", "/nope", NULL);
    CU_ASSERT_EQUAL(r.status, 404);
    json_error_t err;
    json_t *j = r.body ? json_loads(r.body, 0, &err) : NULL;
    CU_ASSERT_TRUE(json_is_string(json_object_get(j, "error")));
    json_decref(j);
    http_reply_free(&r);

    r = http(port, "DELETE", "/health", NULL);
    CU_ASSERT_EQUAL(r.status, 405);
    CU_ASSERT_PTR_NOT_NULL(r.head ? strcasestr(r.head, "\r\nAllow: GET") : NULL);
    http_reply_free(&r);
    r = http(port, "POST", "/metrics", NULL);
    CU_ASSERT_EQUAL(r.status, 405);
    http_reply_free(&r);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'q3'"), "q3");

    /* A body over 64 KiB: 413. */
    size_t body = 100000;
    char *req = malloc(body + 256);
    CU_ASSERT_PTR_NOT_NULL_FATAL(req);
    int h = snprintf(req, 256,
                     "POST /reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     body);
    memset(req + h, 'a', body);
    r = http_raw(port, req, (size_t)h + body);
    CU_ASSERT_EQUAL(r.status, 413);
    http_reply_free(&r);
    /* Headers over 8 KiB: 400 (or 431). */
    h = snprintf(req, 256, "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(req + h, 'b', 20000);
    memcpy(req + h + 20000, "\r\nConnection: close\r\n\r\n", 23);
    r = http_raw(port, req, (size_t)h + 20023);
    CU_ASSERT_TRUE(r.status == 400 || r.status == 431 || (r.status == 0 && r.closed));
    http_reply_free(&r);
    free(req);
    /* CONNECT (never a path of ours) on a kept-alive connection: a 400 the client can
     * frame (libevent sets no Content-Length for a CONNECT, and keeps the connection), so
     * the request behind it is answered on the same connection. */
    static const char connect_req[] = "CONNECT /pools HTTP/1.1\r\nHost: x\r\n\r\n"
                                      "GET /health HTTP/1.1\r\nHost: x\r\n"
                                      "Connection: close\r\n\r\n";
    int64_t t0 = itu_now_ms();
    r = http_raw(port, connect_req, sizeof(connect_req) - 1);
    CU_ASSERT_EQUAL(r.status, 400);
    CU_ASSERT_PTR_NOT_NULL(r.head ? strcasestr(r.head, "\r\nContent-Length: ") : NULL);
    CU_ASSERT_PTR_NOT_NULL(r.body ? strstr(r.body, "\r\n\r\n{\"status\"") : NULL);
    CU_ASSERT_TRUE(r.closed);
    CU_ASSERT(itu_now_ms() - t0 < 4000);
    http_reply_free(&r);
    /* Bad path encoding. */
    r = http(port, "GET", "/clients%00", NULL);
    CU_ASSERT_TRUE(r.status == 400 || r.status == 404);
    http_reply_free(&r);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'q4'"), "q4");

    /* The slow client finishes its request and is answered. */
    static const char rest[] = "ics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    CU_ASSERT_EQUAL(harness_raw_send(slow, rest, sizeof(rest) - 1, 2000), 0);
    char buf[256];
    bool closed = false;
    ssize_t n = harness_raw_recv(slow, buf, sizeof(buf) - 1, 5000, &closed);
    CU_ASSERT(n > 12 && strncmp(buf, "HTTP/1.1 200", 12) == 0);
    close(slow);

    CU_ASSERT_TRUE(itu_exec_ok(c, "COMMIT"));
    CU_ASSERT_TRUE(harness_proxy_alive(g_px));
    CU_ASSERT_TRUE(itu_proxy_serves(g_px, "sslmode=require"));
    json_t *hj = get_json(port, "/health", NULL);
    CU_ASSERT_PTR_NOT_NULL(hj);
    json_decref(hj);
    PQfinish(c);
}

/* ---- slowloris: a cap on connections and an absolute request deadline -------------- */

/* True when the peer closes fd within ms (reading and discarding whatever it sends). */
static bool closed_within(int fd, int ms)
{
    char buf[512];
    int64_t deadline = itu_now_ms() + ms;
    for (;;) {
        int64_t left = deadline - itu_now_ms();
        if (left <= 0)
            return false;
        bool closed = false;
        ssize_t n = harness_raw_recv(fd, buf, sizeof(buf), (int)left, &closed);
        if (closed || n < 0)
            return true;
    }
}

static void test_slowloris(void)
{
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 2,
                                   .auth_type = "scram-sha-256",
                                   .query_wait_timeout_ms = 10000,
                                   .admin = true,
                                   .pgwarden_extra = "admin_max_connections = 4\n"
                                                     "admin_request_timeout_ms = 1500"};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    CU_ASSERT_EQUAL_FATAL(harness_wait_port(px->admin_port, 5000), 0);
    itu_sleep_ms(50); /* the probe's connection is gone */
    int held[4];
    for (int i = 0; i < 4; i++) {
        held[i] = harness_raw_connect(px->admin_port, 2000);
        CU_ASSERT_FATAL(held[i] >= 0);
    }
    itu_sleep_ms(100); /* accepted */
    /* A fifth connection is refused at once, long before any timeout. */
    int extra = harness_raw_connect(px->admin_port, 2000);
    CU_ASSERT_FATAL(extra >= 0);
    CU_ASSERT_TRUE(closed_within(extra, 700));
    close(extra);
    /* One leaves: there is room again. */
    close(held[0]);
    itu_sleep_ms(100);
    struct http_reply r = http(px->admin_port, "GET", "/health", NULL);
    CU_ASSERT_EQUAL(r.status, 200);
    http_reply_free(&r);
    /* A client dripping header bytes is closed at the deadline, not kept alive by each
     * byte (evhttp's own timeout restarts with every read). */
    int drip = harness_raw_connect(px->admin_port, 2000);
    CU_ASSERT_FATAL(drip >= 0);
    int64_t t0 = itu_now_ms();
    static const char line1[] = "GET /health HTTP/1.1\r\n", more[] = "X-A: b\r\n";
    CU_ASSERT_EQUAL(harness_raw_send(drip, line1, strlen(line1), 2000), 0);
    bool closed = false;
    while (!closed && itu_now_ms() - t0 < 4000) {
        closed = closed_within(drip, 200);
        if (!closed)
            (void)harness_raw_send(drip, more, strlen(more), 1000);
    }
    int64_t took = itu_now_ms() - t0;
    printf("\n    dripping client %s after %lld ms (deadline 1500) ",
           closed ? "closed" : "still open", (long long)took);
    CU_ASSERT_TRUE(closed);
    CU_ASSERT(took >= 1000);
    close(drip);
    /* The idle ones met the same deadline; the port serves. */
    for (int i = 1; i < 4; i++) {
        CU_ASSERT_TRUE(closed_within(held[i], 2000));
        close(held[i]);
    }
    r = http(px->admin_port, "GET", "/health", NULL);
    CU_ASSERT_EQUAL(r.status, 200);
    http_reply_free(&r);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* ---- pools of the "*" entry are freed when unused ----------------------------------- */

/* The number of pools /pools lists, and whether one is (database, user). */
static int pools_listed(int port, const char *database, bool *found)
{
    json_t *j = get_json(port, "/pools", NULL);
    int n = json_is_array(j) ? (int)json_array_size(j) : -1;
    *found = false;
    for (int i = 0; i < n; i++) {
        const char *d =
            json_string_value(json_object_get(json_array_get(j, (size_t)i), "database"));
        *found = *found || (d && strcmp(d, database) == 0);
    }
    json_decref(j);
    return n;
}

static void test_auto_pools_reaped(void)
{
    const struct harness_cluster *cl = harness_cluster();
    char star[256];
    snprintf(star, sizeof(star), "* = host=127.0.0.1 port=%d dbname=%s", cl->port, cl->dbname);
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 2,
                                   .auth_type = "scram-sha-256",
                                   .query_wait_timeout_ms = 10000,
                                   .admin = true,
                                   .databases_extra = star,
                                   .pgwarden_extra = "autodb_idle_timeout_ms = 500\n"
                                                     "server_idle_timeout_ms = 1000"};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    /* Held: a client of one auto pool; the configured database is used and left. */
    PGconn *keep = harness_connect(px, "sslmode=disable dbname=kept_db");
    CU_ASSERT_EQUAL_FATAL(PQstatus(keep), CONNECTION_OK);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    for (int i = 0; i < 40; i++) {
        char extra[64];
        snprintf(extra, sizeof(extra), "sslmode=disable dbname=auto_%d", i);
        PGconn *c = harness_connect(px, extra);
        CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
        PQfinish(c);
    }
    bool found = false;
    CU_ASSERT(pools_listed(px->admin_port, "auto_39", &found) > 2);
    CU_ASSERT_TRUE(found); /* its server is still idle */
    /* Servers idle out (1 s), then the unused auto pools go (0.5 s later). */
    int n = -1;
    int64_t t0 = itu_now_ms();
    while (itu_now_ms() - t0 < 8000 && (n = pools_listed(px->admin_port, "x", &found)) > 2)
        itu_sleep_ms(100);
    printf("\n    pools listed after the auto pools went unused: %d ", n);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT(pools_listed(px->admin_port, "kept_db", &found) == 2 && found);
    CU_ASSERT(pools_listed(px->admin_port, cl->dbname, &found) == 2 && found);
    /* A freed pool's name works again (a new pool). */
    PGconn *c = harness_connect(px, "sslmode=disable dbname=auto_7");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 7"), "7");
    PQfinish(c);
    CU_ASSERT_STRING_EQUAL(itu_value(keep, "SELECT 8"), "8");
    PQfinish(keep);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* ---- reload keeps the admin port --------------------------------------------------- */

/* admin_addr and admin_port need a restart (docs/configuration.md, docs/admin-api.md): a
 * reload with another admin_port logs that and keeps serving on the old one. */
static void test_reload_keeps_admin_port(void)
{
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 2,
                                   .auth_type = "scram-sha-256",
                                   .query_wait_timeout_ms = 10000,
                                   .admin = true};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    CU_ASSERT_EQUAL_FATAL(harness_wait_port(px->admin_port, 5000), 0);
    int other = harness_free_port();
    CU_ASSERT_FATAL(other > 0);
    /* Rewrite "admin_port = N" in the config file. */
    FILE *f = fopen(px->config_path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    static char text[65536], out[65536];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    char key[64];
    snprintf(key, sizeof(key), "admin_port = %d", px->admin_port);
    char *at = strstr(text, key);
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    snprintf(out, sizeof(out), "%.*sadmin_port = %d%s", (int)(at - text), text, other,
             at + strlen(key));
    f = fopen(px->config_path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(out, f);
    fclose(f);
    CU_ASSERT_EQUAL(harness_proxy_signal(px, SIGHUP), 0);
    bool logged = false;
    for (int i = 0; i < 50 && !logged; i++) {
        itu_sleep_ms(50);
        logged = harness_proxy_log_contains(px, "admin_port changed: it takes effect after a "
                                                "restart");
    }
    CU_ASSERT_TRUE(logged);
    struct http_reply r = http(px->admin_port, "GET", "/health", NULL);
    CU_ASSERT_EQUAL(r.status, 200);
    http_reply_free(&r);
    int fd = harness_raw_connect(other, 500);
    CU_ASSERT(fd < 0);
    if (fd >= 0)
        close(fd);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

static void register_suites(void)
{
    static const CU_TestInfo tests[] = {
        {"health", test_health},
        {"health_documented_shape", test_health_documented_shape},
        {"clients_servers_pools_json", test_clients_and_servers},
        {"pools_lists_configured_databases", test_pools_lists_configured_databases},
        {"metrics_parse_and_move", test_metrics},
        {"pool_wait_counts_every_assignment", test_pool_wait_counts_every_assignment},
        {"admin_token_enforced", test_token_enforced},
        {"bad_requests_while_serving", test_bad_requests_while_serving},
        {"slowloris_cap_and_deadline", test_slowloris},
        {"reload_keeps_admin_port", test_reload_keeps_admin_port},
        {"auto_pools_reaped", test_auto_pools_reaped},
        {"keepalive_answers_prompt", test_keepalive_answers_prompt},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("admin", suite_init, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
