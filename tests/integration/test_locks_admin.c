/*
 * test_locks_admin.c: what an operator sees of pgwarden's locks on the admin port
 * (docs/admin-api.md, docs/metrics.md) while libpq clients take and wait for locks through
 * pgwarden with the simple query protocol, in both pool modes:
 *
 *   - GET /locks: holders (client id, mode, scope, token, held_ms, application_name,
 *     address) in grant order, waiters in queue order (mode, waited_ms, upgrade,
 *     timeout_in_ms), totals, keys in byte order; an upgrade; the view after releases and
 *     disconnects;
 *   - GET /locks/<key>: percent-encoded keys (":" "/" " " and UTF-8), 404 with a JSON
 *     error for an unknown key, 400 for a malformed escape, an empty or too long key;
 *   - GET /clients: "locks" and "lock_wait" on the clients that hold or wait, absent on
 *     the others;
 *   - GET /metrics: locks held by mode, waiters, keys, the lock wait histogram by outcome
 *     (granted, timeout, canceled), grants, waits, timeouts, deadlocks, cancels, under the
 *     strict exposition-format check of itest_http.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_http.h"
#include "itest_util.h"

static struct harness_proxy *g_session; /* pool_mode = session */
static struct harness_proxy *g_txn;     /* pool_mode = transaction, pool of 2 */

static int suite_init(void)
{
    if (itu_suite_init() != 0)
        return 1;
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 8,
                                   .auth_type = "scram-sha-256",
                                   .query_wait_timeout_ms = 10000,
                                   .admin = true};
    g_session = harness_proxy_start(&o);
    o.pool_mode = "transaction";
    o.pool_size = 2;
    g_txn = harness_proxy_start(&o);
    return g_session && g_txn ? 0 : 1;
}

static int suite_cleanup(void)
{
    int rc = 0;
    if (g_session && itu_proxy_stop_free(g_session) != 0)
        rc = 1;
    if (g_txn && itu_proxy_stop_free(g_txn) != 0)
        rc = 1;
    g_session = g_txn = NULL;
    return rc;
}

/* ---- helpers ------------------------------------------------------------------------- */

/* A connection through px with this application_name (asserted usable). */
static PGconn *connect_app(const struct harness_proxy *px, const char *app)
{
    char extra[128];
    snprintf(extra, sizeof(extra), "sslmode=disable application_name=%s", app);
    PGconn *c = harness_connect(px, extra);
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "connect %s: %s", app, PQerrorMessage(c));
    return c;
}

/* The /clients entry with this application_name (a new reference) or NULL. */
static json_t *client_entry(const struct harness_proxy *px, const char *app)
{
    json_t *all = get_json(px->admin_port, "/clients", NULL);
    json_t *e = all ? find_by(all, "application_name", app) : NULL;
    json_incref(e);
    json_decref(all);
    return e;
}

static json_int_t client_id(const struct harness_proxy *px, const char *app)
{
    json_t *e = client_entry(px, app);
    json_int_t id = e ? json_integer_value(json_object_get(e, "id")) : -1;
    json_decref(e);
    return id;
}

static json_int_t int_at(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

static const char *str_at(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* GET /locks once totals.waiters is want (at most 5 s); NULL (printed) otherwise. */
static json_t *locks_with_waiters(const struct harness_proxy *px, json_int_t want)
{
    json_t *j = NULL;
    for (int i = 0; i < 250; i++) {
        json_decref(j);
        j = get_json(px->admin_port, "/locks", NULL);
        if (int_at(json_object_get(j, "totals"), "waiters") == want)
            return j;
        itu_sleep_ms(20);
    }
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    fprintf(stderr, "/locks never had %lld waiters: %s\n", (long long)want, s ? s : "(none)");
    free(s);
    json_decref(j);
    return NULL;
}

/* Waits until /locks is empty (every lock released); true when it is. */
static bool locks_empty(const struct harness_proxy *px)
{
    for (int i = 0; i < 250; i++) {
        json_t *j = get_json(px->admin_port, "/locks", NULL);
        json_t *t = json_object_get(j, "totals");
        bool empty = int_at(t, "keys") == 0 && int_at(t, "holders") == 0 &&
                     int_at(t, "waiters") == 0 && json_array_size(json_object_get(j, "keys")) == 0;
        json_decref(j);
        if (empty)
            return true;
        itu_sleep_ms(20);
    }
    return false;
}

/* Sends sql without waiting for its result; true when sent. */
static bool send_query(PGconn *c, const char *sql)
{
    bool ok = PQsendQuery(c, sql) == 1;
    if (!ok)
        fprintf(stderr, "PQsendQuery %s: %s", sql, PQerrorMessage(c));
    return ok;
}

/* The value of the pending query's result (a lock call), copied into out; "" on error. */
static void pending_value(PGconn *c, char *out, size_t cap)
{
    PGresult *r = itu_wait_result(c, 10000);
    out[0] = '\0';
    if (r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        snprintf(out, cap, "%s", PQgetvalue(r, 0, 0));
    else
        fprintf(stderr, "pending lock call: %s %s", r ? PQresStatus(PQresultStatus(r)) : "none",
                r ? PQresultErrorMessage(r) : "");
    PQclear(r);
}

/* The holder of key object k that is client id (NULL if none). */
static json_t *holder_of(json_t *k, json_int_t id)
{
    size_t i;
    json_t *h;
    json_array_foreach(json_object_get(k, "holders"), i, h)
    {
        if (int_at(h, "client_id") == id)
            return h;
    }
    return NULL;
}

static void dump(const char *what, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    fprintf(stderr, "%s: %s\n", what, s ? s : "(null)");
    free(s);
}

/* ---- GET /locks and /clients while clients hold and wait ------------------------------ */

/*
 * holder (app lk-holder) holds portfolio:42 exclusive and symbol:AAPL read; reader waits
 * for portfolio:42 read (no timeout), writer then for write (timeout 60 s); idle never
 * locks anything.  Then the holder unlocks: both waiters are granted together (read and
 * write are compatible).
 */
static void check_views(const struct harness_proxy *px)
{
    PGconn *holder = connect_app(px, "lk-holder");
    PGconn *reader = connect_app(px, "lk-reader");
    PGconn *writer = connect_app(px, "lk-writer");
    PGconn *idle = connect_app(px, "lk-idle");
    CU_ASSERT_FATAL(PQstatus(holder) == CONNECTION_OK && PQstatus(reader) == CONNECTION_OK &&
                    PQstatus(writer) == CONNECTION_OK && PQstatus(idle) == CONNECTION_OK);
    CU_ASSERT_TRUE_FATAL(locks_empty(px));
    char t_ex[32], t_rd[32];
    itu_value_copy(t_ex, sizeof(t_ex), holder, "SELECT pgwarden_lock('portfolio:42','exclusive')");
    itu_value_copy(t_rd, sizeof(t_rd), holder, "select PGWARDEN_LOCK('symbol:AAPL', 'READ');");
    CU_ASSERT(atoll(t_ex) > 0);
    CU_ASSERT(atoll(t_rd) > atoll(t_ex));
    CU_ASSERT_STRING_EQUAL(itu_value(idle, "SELECT 1"), "1");
    CU_ASSERT_TRUE(send_query(reader, "SELECT pgwarden_lock('portfolio:42','read')"));
    json_t *j = locks_with_waiters(px, 1);
    json_decref(j);
    CU_ASSERT_TRUE(send_query(writer, "SELECT pgwarden_lock('portfolio:42','write', 60000)"));
    json_decref(locks_with_waiters(px, 2));
    itu_sleep_ms(250); /* held_ms and waited_ms grow */
    json_int_t id_h = client_id(px, "lk-holder"), id_r = client_id(px, "lk-reader");
    json_int_t id_w = client_id(px, "lk-writer"), id_i = client_id(px, "lk-idle");
    CU_ASSERT(id_h > 0 && id_r > 0 && id_w > 0 && id_i > 0);

    j = locks_with_waiters(px, 2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    json_t *totals = json_object_get(j, "totals");
    CU_ASSERT_EQUAL(int_at(totals, "keys"), 2);
    CU_ASSERT_EQUAL(int_at(totals, "holders"), 2);
    CU_ASSERT_EQUAL(int_at(totals, "waiters"), 2);
    json_t *keys = json_object_get(j, "keys");
    CU_ASSERT_EQUAL_FATAL(json_array_size(keys), 2);
    json_t *pf = json_array_get(keys, 0), *sy = json_array_get(keys, 1); /* byte order */
    CU_ASSERT_STRING_EQUAL(str_at(pf, "key"), "portfolio:42");
    CU_ASSERT_STRING_EQUAL(str_at(sy, "key"), "symbol:AAPL");

    /* portfolio:42: the holder, with every field a user checks. */
    CU_ASSERT_EQUAL(json_array_size(json_object_get(pf, "holders")), 1);
    json_t *h = holder_of(pf, id_h);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    CU_ASSERT_STRING_EQUAL(str_at(h, "mode"), "exclusive");
    CU_ASSERT_STRING_EQUAL(str_at(h, "scope"), "session");
    CU_ASSERT_EQUAL(int_at(h, "token"), atoll(t_ex));
    CU_ASSERT(int_at(h, "held_ms") >= 250 && int_at(h, "held_ms") < 60000);
    CU_ASSERT_STRING_EQUAL(str_at(h, "application_name"), "lk-holder");
    CU_ASSERT_NSTRING_EQUAL(str_at(h, "address"), "127.0.0.1:", 10);
    /* ... and its waiters in queue order. */
    json_t *ws = json_object_get(pf, "waiters");
    CU_ASSERT_EQUAL_FATAL(json_array_size(ws), 2);
    json_t *w0 = json_array_get(ws, 0), *w1 = json_array_get(ws, 1);
    CU_ASSERT_EQUAL(int_at(w0, "client_id"), id_r);
    CU_ASSERT_STRING_EQUAL(str_at(w0, "mode"), "read");
    CU_ASSERT_STRING_EQUAL(str_at(w0, "scope"), "session");
    CU_ASSERT_TRUE(json_is_false(json_object_get(w0, "upgrade")));
    CU_ASSERT(int_at(w0, "waited_ms") >= 250);
    CU_ASSERT_TRUE(json_is_null(json_object_get(w0, "timeout_in_ms"))); /* waits forever */
    CU_ASSERT_STRING_EQUAL(str_at(w0, "application_name"), "lk-reader");
    CU_ASSERT_EQUAL(int_at(w1, "client_id"), id_w);
    CU_ASSERT_STRING_EQUAL(str_at(w1, "mode"), "write");
    CU_ASSERT(int_at(w1, "waited_ms") >= 250 && int_at(w1, "waited_ms") <= int_at(w0, "waited_ms"));
    CU_ASSERT(int_at(w1, "timeout_in_ms") > 50000 && int_at(w1, "timeout_in_ms") <= 60000);
    /* symbol:AAPL: the same holder, read, no waiter. */
    h = holder_of(sy, id_h);
    CU_ASSERT_PTR_NOT_NULL(h);
    CU_ASSERT_STRING_EQUAL(str_at(h, "mode"), "read");
    CU_ASSERT_EQUAL(int_at(h, "token"), atoll(t_rd));
    CU_ASSERT_EQUAL(json_array_size(json_object_get(sy, "waiters")), 0);
    if (!holder_of(pf, id_h))
        dump("/locks", j);
    json_decref(j);

    /* GET /locks/<key>: the same object for one key. */
    j = get_json(px->admin_port, "/locks/portfolio%3A42", NULL);
    CU_ASSERT_STRING_EQUAL(str_at(j, "key"), "portfolio:42");
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "holders")), 1);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "waiters")), 2);
    CU_ASSERT_EQUAL(int_at(json_array_get(json_object_get(j, "waiters"), 0), "client_id"), id_r);
    CU_ASSERT_PTR_NULL(json_object_get(j, "totals"));
    json_decref(j);
    j = get_json(px->admin_port, "/locks/symbol:AAPL", NULL); /* ":" needs no escape */
    CU_ASSERT_EQUAL(int_at(holder_of(j, id_h), "token"), atoll(t_rd));
    json_decref(j);

    /* /clients: the holder lists both locks, the waiters what they wait for, the idle
     * client neither field. */
    json_t *e = client_entry(px, "lk-holder");
    json_t *held = json_object_get(e, "locks");
    CU_ASSERT_EQUAL(json_array_size(held), 2);
    bool saw_pf = false, saw_sy = false;
    size_t i;
    json_t *l;
    json_array_foreach(held, i, l)
    {
        if (!strcmp(str_at(l, "key"), "portfolio:42")) {
            saw_pf = true;
            CU_ASSERT_STRING_EQUAL(str_at(l, "mode"), "exclusive");
            CU_ASSERT_STRING_EQUAL(str_at(l, "scope"), "session");
            CU_ASSERT_EQUAL(int_at(l, "token"), atoll(t_ex));
        } else if (!strcmp(str_at(l, "key"), "symbol:AAPL")) {
            saw_sy = true;
            CU_ASSERT_STRING_EQUAL(str_at(l, "mode"), "read");
            CU_ASSERT_EQUAL(int_at(l, "token"), atoll(t_rd));
        }
    }
    CU_ASSERT_TRUE(saw_pf && saw_sy);
    CU_ASSERT_PTR_NULL(json_object_get(e, "lock_wait"));
    if (!saw_pf || !saw_sy)
        dump("/clients lk-holder", e);
    json_decref(e);
    e = client_entry(px, "lk-reader");
    json_t *lw = json_object_get(e, "lock_wait");
    CU_ASSERT_STRING_EQUAL(str_at(lw, "key"), "portfolio:42");
    CU_ASSERT_STRING_EQUAL(str_at(lw, "mode"), "read");
    CU_ASSERT(int_at(lw, "waited_ms") >= 250);
    CU_ASSERT_PTR_NULL(json_object_get(e, "locks"));
    json_decref(e);
    e = client_entry(px, "lk-writer");
    CU_ASSERT_STRING_EQUAL(str_at(json_object_get(e, "lock_wait"), "mode"), "write");
    json_decref(e);
    e = client_entry(px, "lk-idle");
    CU_ASSERT_PTR_NOT_NULL(e);
    CU_ASSERT_PTR_NULL(json_object_get(e, "locks"));
    CU_ASSERT_PTR_NULL(json_object_get(e, "lock_wait"));
    json_decref(e);

    /* The holder unlocks portfolio:42: reader and writer are granted together, in queue
     * order (the reader's token first). */
    CU_ASSERT_STRING_EQUAL(itu_value(holder, "SELECT pgwarden_unlock('portfolio:42')"), "t");
    char t_r2[32], t_w2[32];
    pending_value(reader, t_r2, sizeof(t_r2));
    pending_value(writer, t_w2, sizeof(t_w2));
    CU_ASSERT(atoll(t_r2) > atoll(t_rd));
    CU_ASSERT(atoll(t_w2) > atoll(t_r2));
    j = get_json(px->admin_port, "/locks/portfolio%3a42", NULL); /* lower-case hex */
    json_t *hs = json_object_get(j, "holders");
    CU_ASSERT_EQUAL(json_array_size(hs), 2);
    CU_ASSERT_EQUAL(int_at(json_array_get(hs, 0), "client_id"), id_r); /* oldest grant first */
    CU_ASSERT_EQUAL(int_at(json_array_get(hs, 0), "token"), atoll(t_r2));
    CU_ASSERT_EQUAL(int_at(json_array_get(hs, 1), "client_id"), id_w);
    CU_ASSERT_STRING_EQUAL(str_at(json_array_get(hs, 1), "mode"), "write");
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "waiters")), 0);
    json_decref(j);
    e = client_entry(px, "lk-reader");
    CU_ASSERT_PTR_NULL(json_object_get(e, "lock_wait"));
    CU_ASSERT_EQUAL(json_array_size(json_object_get(e, "locks")), 1);
    json_decref(e);

    /* Disconnects release everything: the view empties. */
    PQfinish(holder);
    PQfinish(reader);
    PQfinish(writer);
    PQfinish(idle);
    CU_ASSERT_TRUE(locks_empty(px));
}

static void test_views_session(void)
{
    check_views(g_session);
}

static void test_views_transaction(void)
{
    check_views(g_txn);
}

/* An upgrade: two readers; one asks for exclusive and waits for the other (a waiter
 * that already holds the key: "upgrade": true, its read still listed among the holders).
 * The other also holds a transaction-scoped lock inside a block. */
static void test_upgrade_and_scope(void)
{
    const struct harness_proxy *px = g_session;
    PGconn *a = connect_app(px, "lk-up-a"), *b = connect_app(px, "lk-up-b");
    CU_ASSERT_FATAL(PQstatus(a) == CONNECTION_OK && PQstatus(b) == CONNECTION_OK);
    CU_ASSERT(atoll(itu_value(a, "SELECT pgwarden_lock('u:1','read')")) > 0);
    CU_ASSERT(atoll(itu_value(b, "SELECT pgwarden_lock('u:1','read')")) > 0);
    CU_ASSERT_TRUE(itu_exec_ok(b, "BEGIN"));
    CU_ASSERT(atoll(itu_value(b, "SELECT pgwarden_xact_lock('u:2','write')")) > 0);
    CU_ASSERT_TRUE(send_query(a, "SELECT pgwarden_lock('u:1','exclusive')"));
    json_t *j = locks_with_waiters(px, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    json_int_t id_a = client_id(px, "lk-up-a"), id_b = client_id(px, "lk-up-b");
    json_t *u1 = json_array_get(json_object_get(j, "keys"), 0);
    json_t *u2 = json_array_get(json_object_get(j, "keys"), 1);
    CU_ASSERT_STRING_EQUAL(str_at(u1, "key"), "u:1");
    CU_ASSERT_EQUAL(json_array_size(json_object_get(u1, "holders")), 2);
    json_t *w = json_array_get(json_object_get(u1, "waiters"), 0);
    CU_ASSERT_EQUAL(int_at(w, "client_id"), id_a);
    CU_ASSERT_STRING_EQUAL(str_at(w, "mode"), "exclusive");
    CU_ASSERT_TRUE(json_is_true(json_object_get(w, "upgrade")));
    CU_ASSERT_STRING_EQUAL(str_at(holder_of(u1, id_a), "mode"), "read"); /* still held */
    CU_ASSERT_STRING_EQUAL(str_at(u2, "key"), "u:2");
    CU_ASSERT_STRING_EQUAL(str_at(holder_of(u2, id_b), "scope"), "transaction");
    CU_ASSERT_STRING_EQUAL(str_at(holder_of(u2, id_b), "mode"), "write");
    json_decref(j);
    json_t *e = client_entry(px, "lk-up-a");
    CU_ASSERT_STRING_EQUAL(str_at(json_object_get(e, "lock_wait"), "mode"), "exclusive");
    CU_ASSERT_EQUAL(json_array_size(json_object_get(e, "locks")), 1); /* its read */
    json_decref(e);

    /* COMMIT ends b's transaction lock; unlocking its read grants a's upgrade. */
    CU_ASSERT_TRUE(itu_exec_ok(b, "COMMIT"));
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SELECT pgwarden_unlock('u:1')"), "t");
    char tok[32];
    pending_value(a, tok, sizeof(tok));
    CU_ASSERT(atoll(tok) > 0);
    j = get_json(px->admin_port, "/locks", NULL);
    CU_ASSERT_EQUAL(int_at(json_object_get(j, "totals"), "keys"), 1);
    json_t *only = json_array_get(json_object_get(j, "keys"), 0);
    CU_ASSERT_STRING_EQUAL(str_at(holder_of(only, id_a), "mode"), "exclusive");
    CU_ASSERT_EQUAL(int_at(holder_of(only, id_a), "token"), atoll(tok));
    json_decref(j);
    PQfinish(a);
    PQfinish(b);
    CU_ASSERT_TRUE(locks_empty(px));
}

/* ---- GET /locks/<key>: encodings and errors ------------------------------------------- */

static void expect_error(int port, const char *path, int status)
{
    struct http_reply r = http(port, "GET", path, NULL);
    CU_ASSERT_EQUAL(r.status, status);
    json_error_t err;
    json_t *j = r.body ? json_loads(r.body, 0, &err) : NULL;
    CU_ASSERT_TRUE(json_is_string(json_object_get(j, "error")));
    if (r.status != status || !json_is_string(json_object_get(j, "error")))
        fprintf(stderr, "GET %s: %d %s\n", path, r.status, r.body ? r.body : "");
    json_decref(j);
    http_reply_free(&r);
}

static void test_key_lookup(void)
{
    const struct harness_proxy *px = g_session;
    int port = px->admin_port;
    PGconn *c = connect_app(px, "lk-keys");
    CU_ASSERT_FATAL(PQstatus(c) == CONNECTION_OK);
    /* A key with a slash, a space, a quote and a non-ASCII letter. */
    CU_ASSERT(
        atoll(itu_value(c, "SELECT pgwarden_lock('orders/\xc3\xa9t\xc3\xa9 ''1''','write')")) > 0);
    static const char *const paths[] = {
        "/locks/orders%2F%C3%A9t%C3%A9%20%271%27",
        "/locks/orders/%c3%a9t%c3%a9%20'1'", /* "/" unescaped, lower-case hex */
    };
    for (size_t i = 0; i < 2; i++) {
        json_t *j = get_json(port, paths[i], NULL);
        CU_ASSERT_STRING_EQUAL(str_at(j, "key"), "orders/\xc3\xa9t\xc3\xa9 '1'");
        CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "holders")), 1);
        json_decref(j);
    }
    /* HEAD answers like GET, without a body. */
    struct http_reply r = http(port, "HEAD", paths[0], NULL);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_EQUAL(r.body_len, 0);
    http_reply_free(&r);

    expect_error(port, "/locks/nobody%3Aholds", 404);
    expect_error(port, "/locks/orders", 404);   /* a prefix of a key is not the key */
    expect_error(port, "/locks/orders%2", 400); /* malformed escapes */
    expect_error(port, "/locks/orders%zz1", 400);
    expect_error(port, "/locks/%", 400);
    expect_error(port, "/locks/", 400);    /* empty key */
    expect_error(port, "/locks/%00", 400); /* NUL */
    expect_error(port, "/locks/%FF", 400); /* not UTF-8 */
    char longpath[400] = "/locks/";
    memset(longpath + 7, 'k', 257);
    longpath[7 + 257] = '\0';
    expect_error(port, longpath, 400);
    longpath[7 + 256] = '\0'; /* 256 bytes: a valid key nobody holds */
    expect_error(port, longpath, 404);
    expect_error(port, "/lockss", 404);
    r = http(port, "POST", "/locks", NULL);
    CU_ASSERT_EQUAL(r.status, 405);
    http_reply_free(&r);
    /* Malformed escapes elsewhere are 400 too, and the proxy still serves. */
    expect_error(port, "/pools%G0", 400);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'still'"), "still");
    PQfinish(c);
    CU_ASSERT_TRUE(locks_empty(px));
}

/* ---- /metrics ------------------------------------------------------------------------- */

struct lock_metrics {
    double held[3], waiters, keys;
    double grants, waits, timeouts, deadlocks, cancels;
    double count[5], sum[5]; /* lock_wait_seconds by outcome */
};

static const char *const outcomes[5] = {"granted", "timeout", "deadlock", "canceled", "error"};

static bool lock_metrics(int port, struct lock_metrics *m)
{
    struct series *s = NULL;
    int n = 0;
    if (!scrape(port, &s, &n))
        return false;
    static const char *const modes[3] = {"read", "write", "exclusive"};
    char key[160];
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof(key), "pgwarden_locks_held|mode=%s,|", modes[i]);
        m->held[i] = series_value(s, n, key);
    }
    m->waiters = series_value(s, n, "pgwarden_lock_waiters||");
    m->keys = series_value(s, n, "pgwarden_lock_keys||");
    m->grants = series_value(s, n, "pgwarden_lock_grants_total||");
    m->waits = series_value(s, n, "pgwarden_lock_waits_total||");
    m->timeouts = series_value(s, n, "pgwarden_lock_timeouts_total||");
    m->deadlocks = series_value(s, n, "pgwarden_lock_deadlocks_total||");
    m->cancels = series_value(s, n, "pgwarden_lock_cancels_total||");
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof(key), "pgwarden_lock_wait_seconds_count|outcome=%s,|", outcomes[i]);
        m->count[i] = series_value(s, n, key);
        snprintf(key, sizeof(key), "pgwarden_lock_wait_seconds_sum|outcome=%s,|", outcomes[i]);
        m->sum[i] = series_value(s, n, key);
    }
    free(s);
    return true;
}

/*
 * A fresh pgwarden (transaction mode), so every value is exact: one grant at once, one
 * wait that is granted (about 300 ms), one that times out (200 ms), one canceled by
 * PQcancel, one deadlock (the request that closes the cycle is the victim at once: no
 * wait to observe), each checked on /metrics.
 */
static void test_metrics(void)
{
    struct harness_proxy_opts o = {.pool_mode = "transaction",
                                   .pool_size = 2,
                                   .auth_type = "scram-sha-256",
                                   .query_wait_timeout_ms = 10000,
                                   .admin = true};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    int port = px->admin_port;
    struct lock_metrics m;
    CU_ASSERT_TRUE_FATAL(lock_metrics(port, &m));
    CU_ASSERT_EQUAL(m.held[0] + m.held[1] + m.held[2] + m.waiters + m.keys, 0);
    CU_ASSERT_EQUAL(m.grants + m.waits + m.timeouts + m.deadlocks + m.cancels, 0);
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(m.count[i], 0);

    PGconn *a = connect_app(px, "lk-m-a"), *b = connect_app(px, "lk-m-b");
    PGconn *c = connect_app(px, "lk-m-c");
    CU_ASSERT_FATAL(PQstatus(a) == CONNECTION_OK && PQstatus(b) == CONNECTION_OK &&
                    PQstatus(c) == CONNECTION_OK);
    /* A grant at once, and a waiter. */
    CU_ASSERT(atoll(itu_value(a, "SELECT pgwarden_lock('m:1','exclusive')")) > 0);
    CU_ASSERT(atoll(itu_value(a, "SELECT pgwarden_lock('m:2','read')")) > 0);
    CU_ASSERT_TRUE(send_query(b, "SELECT pgwarden_lock('m:1','write')"));
    json_decref(locks_with_waiters(px, 1));
    CU_ASSERT_TRUE_FATAL(lock_metrics(port, &m));
    CU_ASSERT_EQUAL(m.held[0], 1);
    CU_ASSERT_EQUAL(m.held[1], 0);
    CU_ASSERT_EQUAL(m.held[2], 1);
    CU_ASSERT_EQUAL(m.waiters, 1);
    CU_ASSERT_EQUAL(m.keys, 2);
    CU_ASSERT_EQUAL(m.grants, 2);
    CU_ASSERT_EQUAL(m.waits, 1);
    CU_ASSERT_EQUAL(m.count[0], 0); /* not ended yet */

    /* The wait ends with a grant after about 300 ms. */
    itu_sleep_ms(300);
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT pgwarden_unlock('m:1')"), "t");
    char tok[32];
    pending_value(b, tok, sizeof(tok));
    CU_ASSERT(atoll(tok) > 0);
    CU_ASSERT_TRUE_FATAL(lock_metrics(port, &m));
    CU_ASSERT_EQUAL(m.count[0], 1);
    CU_ASSERT(m.sum[0] >= 0.3 && m.sum[0] < 10);
    CU_ASSERT_EQUAL(m.grants, 3);
    CU_ASSERT_EQUAL(m.held[1], 1); /* b's write */
    CU_ASSERT_EQUAL(m.held[2], 0);
    CU_ASSERT_EQUAL(m.waiters, 0);

    /* A timeout: c waits 200 ms for m:1, which b holds for writing. */
    int64_t t0 = itu_now_ms();
    CU_ASSERT_STRING_EQUAL(itu_exec_sqlstate(c, "SELECT pgwarden_lock('m:1','write', 200)"),
                           "55P03");
    int64_t took = itu_now_ms() - t0;
    CU_ASSERT(took >= 200 && took < 5000);
    CU_ASSERT_TRUE_FATAL(lock_metrics(port, &m));
    CU_ASSERT_EQUAL(m.timeouts, 1);
    CU_ASSERT_EQUAL(m.count[1], 1);
    CU_ASSERT(m.sum[1] >= 0.19 && m.sum[1] < 5); /* from the wait's start to the deadline */
    CU_ASSERT_EQUAL(m.waits, 2);
    CU_ASSERT_EQUAL(m.waiters, 0);

    /* A cancel: c waits for m:1 without a timeout and sends a CancelRequest. */
    CU_ASSERT_TRUE(send_query(c, "SELECT pgwarden_lock('m:1','exclusive')"));
    json_decref(locks_with_waiters(px, 1));
    CU_ASSERT_TRUE(itu_send_cancel(c));
    PGresult *r = itu_wait_result(c, 10000);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "57014");
    PQclear(r);
    CU_ASSERT_TRUE_FATAL(lock_metrics(port, &m));
    CU_ASSERT_EQUAL(m.cancels, 1);
    CU_ASSERT_EQUAL(m.count[3], 1);
    CU_ASSERT_EQUAL(m.waiters, 0);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'c serves'"), "c serves");

    /* A deadlock: a holds m:2 (read), b holds m:1 (write); a waits for m:1 exclusive,
     * then b asks for m:2 exclusive and closes the cycle: b is the victim at once (40P01). */
    CU_ASSERT_TRUE(send_query(a, "SELECT pgwarden_lock('m:1','exclusive')"));
    json_decref(locks_with_waiters(px, 1));
    CU_ASSERT_STRING_EQUAL(itu_exec_sqlstate(b, "SELECT pgwarden_lock('m:2','exclusive')"),
                           "40P01");
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SELECT pgwarden_unlock('m:1')"), "t");
    pending_value(a, tok, sizeof(tok)); /* a's exclusive of m:1 is granted */
    CU_ASSERT(atoll(tok) > 0);
    CU_ASSERT_TRUE_FATAL(lock_metrics(port, &m));
    CU_ASSERT_EQUAL(m.deadlocks, 1);
    CU_ASSERT_EQUAL(m.count[2], 0); /* the victim never waited */
    CU_ASSERT_EQUAL(m.count[0], 2);
    CU_ASSERT_EQUAL(m.waits, 5); /* b's write, c's two, a's, b's deadlocked request */
    CU_ASSERT_EQUAL(m.timeouts, 1);
    CU_ASSERT_EQUAL(m.cancels, 1);
    CU_ASSERT_EQUAL(m.count[4], 0);

    PQfinish(a);
    PQfinish(b);
    PQfinish(c);
    CU_ASSERT_TRUE(locks_empty(px));
    CU_ASSERT_TRUE_FATAL(lock_metrics(port, &m));
    CU_ASSERT_EQUAL(m.held[0] + m.held[1] + m.held[2] + m.waiters + m.keys, 0);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

static void register_suites(void)
{
    static const CU_TestInfo tests[] = {
        {"views_session", test_views_session},
        {"views_transaction", test_views_transaction},
        {"upgrade_and_scope", test_upgrade_and_scope},
        {"key_lookup", test_key_lookup},
        {"metrics", test_metrics},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("locks_admin", suite_init, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
