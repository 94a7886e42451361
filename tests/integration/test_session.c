/*
 * test_session.c: session-mode pooling through pgwarden with libpq clients: simple and
 * extended protocol queries, NOTICE forwarding, LISTEN/NOTIFY between two clients,
 * startup parameters as session defaults (SHOW, SET/RESET, no leak to the next client of
 * a reused server), SIGHUP reload, and SIGTERM exiting 0.
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_http.h"
#include "itest_util.h"

/* The suite's pgwarden: session mode, pool of 4, client TLS allowed. */
static struct harness_proxy *g_px;

static int suite_init(void)
{
    if (itu_suite_init() != 0)
        return 1;
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 4,
                                   .client_tls_mode = "allow",
                                   .server_tls_mode = "prefer",
                                   .auth_type = "scram-sha-256",
                                   .query_wait_timeout_ms = 20000};
    g_px = harness_proxy_start(&o);
    return g_px ? 0 : 1;
}

static int suite_cleanup(void)
{
    int rc = g_px ? itu_proxy_stop_free(g_px) : 0;
    g_px = NULL;
    return rc == 0 ? 0 : 1;
}

static PGconn *connect_ok(const char *extra)
{
    PGconn *c = harness_connect(g_px, extra);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "connect through pgwarden failed: %s", PQerrorMessage(c));
        harness_proxy_dump_log(g_px, 30);
    }
    return c;
}

/* ---- queries ----------------------------------------------------------------------- */

static void test_simple_protocol(void)
{
    PGconn *c = connect_ok("sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 40 + 2"), "42");
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT current_user"), "pgwarden_test");
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT current_database()"), "pgwarden_test");

    /* Several statements in one Query: libpq returns the last result. */
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1; SELECT 2; SELECT 'three'"), "three");

    /* A table, a transaction, an error inside it, and recovery. */
    CU_ASSERT_TRUE(itu_exec_ok(c, "CREATE TEMP TABLE s(a int, b text)"));
    CU_ASSERT_TRUE(itu_exec_ok(c, "BEGIN"));
    CU_ASSERT_TRUE(itu_exec_ok(c, "INSERT INTO s SELECT g, 'v' || g FROM generate_series(1, "
                                  "1000) g"));
    CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_INTRANS);
    CU_ASSERT_STRING_EQUAL(itu_exec_sqlstate(c, "SELECT 1/0"), "22012");
    CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(itu_exec_sqlstate(c, "SELECT 1"), "25P02");
    CU_ASSERT_TRUE(itu_exec_ok(c, "ROLLBACK"));
    CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_IDLE);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT count(*) FROM s"), "0");
    CU_ASSERT_TRUE(itu_exec_ok(c, "INSERT INTO s SELECT g, 'v' || g FROM generate_series(1, "
                                  "1000) g"));
    PGresult *r = PQexec(c, "SELECT a, b FROM s ORDER BY a");
    CU_ASSERT_EQUAL_FATAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT_EQUAL(PQntuples(r), 1000);
    if (PQntuples(r) == 1000) {
        CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 999, 0), "1000");
        CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 999, 1), "v1000");
    }
    PQclear(r);

    /* An empty query and a syntax error keep the connection usable. */
    r = PQexec(c, "");
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_EMPTY_QUERY);
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_exec_sqlstate(c, "SELEC 1"), "42601");
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'still here'"), "still here");
    PQfinish(c);
}

static void test_extended_protocol(void)
{
    PGconn *c = connect_ok("sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);

    const char *params[2] = {"40", "2"};
    PGresult *r = PQexecParams(c, "SELECT $1::int + $2::int", 2, NULL, params, NULL, NULL, 0);
    CU_ASSERT_EQUAL_FATAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "42");
    PQclear(r);

    /* Binary result format: int4 42 in network byte order. */
    r = PQexecParams(c, "SELECT $1::int4", 1, NULL, params, NULL, NULL, 1);
    CU_ASSERT_EQUAL_FATAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT_EQUAL(PQgetlength(r, 0, 0), 4);
    const unsigned char *v = (const unsigned char *)PQgetvalue(r, 0, 0);
    CU_ASSERT(v[0] == 0 && v[1] == 0 && v[2] == 0 && v[3] == 40);
    PQclear(r);

    /* A NULL parameter and a non-ASCII text one. */
    const char *p2[2] = {NULL, "h\xc3\xa9llo"};
    r = PQexecParams(c, "SELECT $1::text IS NULL, length($2::text)", 2, NULL, p2, NULL, NULL, 0);
    CU_ASSERT_EQUAL_FATAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "t");
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 1), "5");
    PQclear(r);

    /* Named prepared statement, executed several times, then described. */
    r = PQprepare(c, "itest_stmt", "SELECT $1::text || '-' || $2::int * 2", 2, NULL);
    CU_ASSERT_EQUAL_FATAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    for (int i = 0; i < 5; i++) {
        char num[16], want[32];
        snprintf(num, sizeof(num), "%d", i);
        snprintf(want, sizeof(want), "k-%d", i * 2);
        const char *pp[2] = {"k", num};
        r = PQexecPrepared(c, "itest_stmt", 2, pp, NULL, NULL, 0);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
        if (PQresultStatus(r) == PGRES_TUPLES_OK)
            CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), want);
        PQclear(r);
    }
    r = PQdescribePrepared(c, "itest_stmt");
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    CU_ASSERT_EQUAL(PQnparams(r), 2);
    CU_ASSERT_EQUAL(PQnfields(r), 1);
    PQclear(r);

    /* An error in the extended protocol (division by zero at Execute) and recovery. */
    const char *zero[1] = {"0"};
    r = PQexecParams(c, "SELECT 1 / $1::int", 1, NULL, zero, NULL, NULL, 0);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_FATAL_ERROR);
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "22012");
    PQclear(r);
    /* Unknown prepared statement: 26000. */
    r = PQexecPrepared(c, "no_such_stmt", 0, NULL, NULL, NULL, 0);
    st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "26000");
    PQclear(r);
    const char *pp[2] = {"z", "21"};
    r = PQexecPrepared(c, "itest_stmt", 2, pp, NULL, NULL, 0);
    CU_ASSERT_EQUAL_FATAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "z-42");
    PQclear(r);
    PQfinish(c);
}

/* ---- NOTICE ------------------------------------------------------------------------ */

struct notices {
    int count;
    char message[256];
    char severity[32];
};

static void notice_cb(void *arg, const PGresult *res)
{
    struct notices *n = arg;
    n->count++;
    const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *s = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    snprintf(n->message, sizeof(n->message), "%s", m ? m : "");
    snprintf(n->severity, sizeof(n->severity), "%s", s ? s : "");
}

static void test_notice_forwarding(void)
{
    PGconn *c = connect_ok("sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    struct notices n = {0};
    PQsetNoticeReceiver(c, notice_cb, &n);
    CU_ASSERT_TRUE(itu_exec_ok(c, "DO $$BEGIN RAISE NOTICE 'hello from %', 'pgwarden'; END$$"));
    CU_ASSERT_EQUAL(n.count, 1);
    CU_ASSERT_STRING_EQUAL(n.message, "hello from pgwarden");
    CU_ASSERT_STRING_EQUAL(n.severity, "NOTICE");

    /* A WARNING in the middle of an extended-protocol query arrives too. */
    CU_ASSERT_TRUE(itu_exec_ok(c, "CREATE FUNCTION pg_temp.warn(t text) RETURNS int "
                                  "LANGUAGE plpgsql AS $$BEGIN RAISE WARNING 'w:%', t; "
                                  "RETURN 7; END$$"));
    const char *p[1] = {"abc"};
    PGresult *r = PQexecParams(c, "SELECT pg_temp.warn($1)", 1, NULL, p, NULL, NULL, 0);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "7");
    PQclear(r);
    CU_ASSERT_EQUAL(n.count, 2);
    CU_ASSERT_STRING_EQUAL(n.message, "w:abc");
    CU_ASSERT_STRING_EQUAL(n.severity, "WARNING");
    PQfinish(c);
}

/* ---- LISTEN / NOTIFY --------------------------------------------------------------- */

static void test_listen_notify(void)
{
    PGconn *listener = connect_ok("sslmode=disable application_name=listener");
    PGconn *sender = connect_ok("sslmode=require application_name=sender");
    CU_ASSERT_EQUAL_FATAL(PQstatus(listener), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(sender), CONNECTION_OK);
    CU_ASSERT_TRUE(itu_exec_ok(listener, "LISTEN itest_chan"));
    char sender_pid[32];
    itu_value_copy(sender_pid, sizeof(sender_pid), sender, "SELECT pg_backend_pid()");

    CU_ASSERT_TRUE(itu_exec_ok(sender, "NOTIFY itest_chan, 'payload-1'"));
    PGnotify *n = itu_wait_notify(listener, 5000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(n);
    CU_ASSERT_STRING_EQUAL(n->relname, "itest_chan");
    CU_ASSERT_STRING_EQUAL(n->extra, "payload-1");
    CU_ASSERT_EQUAL(n->be_pid, atoi(sender_pid));
    PQfreemem(n);

    /* Committed in a transaction; delivered once, in order, after COMMIT. */
    CU_ASSERT_TRUE(itu_exec_ok(sender, "BEGIN; SELECT pg_notify('itest_chan', 'a'); "
                                       "SELECT pg_notify('itest_chan', 'b'); COMMIT"));
    n = itu_wait_notify(listener, 5000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(n);
    CU_ASSERT_STRING_EQUAL(n->extra, "a");
    PQfreemem(n);
    n = itu_wait_notify(listener, 5000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(n);
    CU_ASSERT_STRING_EQUAL(n->extra, "b");
    PQfreemem(n);

    /* UNLISTEN: nothing more arrives. */
    CU_ASSERT_TRUE(itu_exec_ok(listener, "UNLISTEN itest_chan"));
    CU_ASSERT_TRUE(itu_exec_ok(sender, "NOTIFY itest_chan, 'late'"));
    n = itu_wait_notify(listener, 300);
    CU_ASSERT_PTR_NULL(n);
    PQfreemem(n);
    PQfinish(listener);
    PQfinish(sender);
}

/* ---- startup parameters as session defaults ------------------------------------------ */

static void test_startup_params_defaults(void)
{
    /* A pool of 1 so that the second client reuses the first client's server. */
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 1,
                                   .auth_type = "scram-sha-256",
                                   .query_wait_timeout_ms = 20000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);

    /* What the server itself defaults to, from a direct connection. */
    PGconn *d = harness_connect_info(harness_cluster_conninfo("sslmode=disable"));
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    char server_tz[128], server_ds[128];
    itu_value_copy(server_tz, sizeof(server_tz), d, "SHOW TimeZone");
    itu_value_copy(server_ds, sizeof(server_ds), d, "SHOW DateStyle");
    PQfinish(d);
    CU_ASSERT_STRING_NOT_EQUAL(server_tz, "Asia/Tokyo");

    PGconn *a = harness_connect(
        px, "sslmode=disable application_name=itest_tokyo "
            "options='-c TimeZone=Asia/Tokyo -c DateStyle=SQL,DMY -c extra_float_digits=1'");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    const char *ps = PQparameterStatus(a, "TimeZone");
    CU_ASSERT_STRING_EQUAL(ps ? ps : "", "Asia/Tokyo");
    ps = PQparameterStatus(a, "application_name");
    CU_ASSERT_STRING_EQUAL(ps ? ps : "", "itest_tokyo");
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SHOW TimeZone"), "Asia/Tokyo");
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SHOW DateStyle"), "SQL, DMY");
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SHOW extra_float_digits"), "1");
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SHOW application_name"), "itest_tokyo");
    char pid_a[32];
    itu_value_copy(pid_a, sizeof(pid_a), a, "SELECT pg_backend_pid()");

    /* SET changes it (and ParameterStatus follows), RESET returns to the startup value. */
    CU_ASSERT_TRUE(itu_exec_ok(a, "SET TimeZone = 'UTC'"));
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SHOW TimeZone"), "UTC");
    ps = PQparameterStatus(a, "TimeZone");
    CU_ASSERT_STRING_EQUAL(ps ? ps : "", "UTC");
    CU_ASSERT_TRUE(itu_exec_ok(a, "RESET TimeZone"));
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SHOW TimeZone"), "Asia/Tokyo");
    ps = PQparameterStatus(a, "TimeZone");
    CU_ASSERT_STRING_EQUAL(ps ? ps : "", "Asia/Tokyo");
    CU_ASSERT_TRUE(itu_exec_ok(a, "SET application_name = 'changed'; SET DateStyle = ISO"));
    CU_ASSERT_TRUE(itu_exec_ok(a, "RESET ALL"));
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SHOW application_name"), "itest_tokyo");
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SHOW DateStyle"), "SQL, DMY");
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SHOW TimeZone"), "Asia/Tokyo");
    /* Leave session state behind for the next client to (not) see. */
    CU_ASSERT_TRUE(itu_exec_ok(a, "SET TimeZone = 'America/Lima'; CREATE TEMP TABLE leak_t(a "
                                  "int); PREPARE leak_p AS SELECT 1"));
    PQfinish(a);

    /* Same startup parameters: pgwarden reuses that server (pool of 1), reset to the
     * startup values, without the temp table or prepared statement. */
    PGconn *a2 = harness_connect(
        px, "sslmode=disable application_name=itest_tokyo "
            "options='-c TimeZone=Asia/Tokyo -c DateStyle=SQL,DMY -c extra_float_digits=1'");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a2), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(a2, "SELECT pg_backend_pid()"), pid_a);
    CU_ASSERT_STRING_EQUAL(itu_value(a2, "SHOW TimeZone"), "Asia/Tokyo");
    CU_ASSERT_STRING_EQUAL(itu_value(a2, "SHOW DateStyle"), "SQL, DMY");
    CU_ASSERT_STRING_EQUAL(itu_value(a2, "SHOW application_name"), "itest_tokyo");
    CU_ASSERT_STRING_EQUAL(itu_value(a2, "SELECT to_regclass('leak_t') IS NULL"), "t");
    CU_ASSERT_STRING_EQUAL(itu_value(a2, "SELECT count(*) FROM pg_prepared_statements"), "0");
    ps = PQparameterStatus(a2, "TimeZone");
    CU_ASSERT_STRING_EQUAL(ps ? ps : "", "Asia/Tokyo");
    PQfinish(a2);

    /* Second client, other options, same (only) server: sees none of the above. */
    PGconn *b = harness_connect(px, "sslmode=disable application_name=itest_second "
                                    "options='-c extra_float_digits=2'");
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SHOW TimeZone"), server_tz);
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SHOW DateStyle"), server_ds);
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SHOW extra_float_digits"), "2");
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SHOW application_name"), "itest_second");
    ps = PQparameterStatus(b, "TimeZone");
    CU_ASSERT_STRING_EQUAL(ps ? ps : "", server_tz);
    ps = PQparameterStatus(b, "application_name");
    CU_ASSERT_STRING_EQUAL(ps ? ps : "", "itest_second");
    CU_ASSERT_TRUE(itu_exec_ok(b, "RESET ALL"));
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SHOW TimeZone"), server_tz);
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SHOW application_name"), "itest_second");
    PQfinish(b);

    CU_ASSERT_EQUAL(harness_proxy_stop(px, 0), 0);
    harness_proxy_free(px);
}

/* ---- reload and shutdown ----------------------------------------------------------- */

static void test_sighup_reload(void)
{
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 1,
                                   .auth_type = "scram-sha-256",
                                   .log_level = "info",
                                   .query_wait_timeout_ms = 500};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);

    /* Pool of 1: a second client times out waiting while the first holds the server. */
    PGconn *a = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 1"), "1");
    PGconn *b = harness_connect(px, "sslmode=disable");
    bool b_served = PQstatus(b) == CONNECTION_OK && itu_value(b, "SELECT 2")[0] == '2';
    CU_ASSERT_FALSE(b_served);
    PQfinish(b);

    /* Reload with a pool of 2 and log_level debug: the second client is now served. */
    struct harness_proxy_opts o2 = o;
    o2.pool_size = 2;
    o2.log_level = "debug";
    o2.query_wait_timeout_ms = 10000;
    CU_ASSERT_EQUAL_FATAL(harness_proxy_rewrite_config(px, &o2), 0);
    CU_ASSERT_EQUAL_FATAL(harness_proxy_signal(px, SIGHUP), 0);
    bool reloaded = false;
    for (int i = 0; i < 100 && !reloaded; i++) {
        reloaded = harness_proxy_log_contains(px, "configuration reloaded");
        if (!reloaded)
            poll(NULL, 0, 50);
    }
    CU_ASSERT_TRUE(reloaded);
    CU_ASSERT_TRUE(harness_proxy_alive(px));
    b = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SELECT 2"), "2");
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 3"), "3");
    PQfinish(b);

    /* A broken file is refused on reload; the running config keeps serving. */
    struct harness_proxy_opts bad = o2;
    bad.pgwarden_extra = "no_such_key = 1";
    CU_ASSERT_EQUAL_FATAL(harness_proxy_rewrite_config(px, &bad), 0);
    CU_ASSERT_EQUAL_FATAL(harness_proxy_signal(px, SIGHUP), 0);
    bool refused = false;
    for (int i = 0; i < 100 && !refused; i++) {
        refused = harness_proxy_log_contains(px, "reload failed");
        if (!refused)
            poll(NULL, 0, 50);
    }
    CU_ASSERT_TRUE(refused);
    CU_ASSERT_TRUE(harness_proxy_alive(px));
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    PQfinish(a);
    if (!reloaded || !refused)
        harness_proxy_dump_log(px, 30);
    CU_ASSERT_EQUAL(harness_proxy_stop(px, 0), 0);
    harness_proxy_free(px);
}

/* The server connections of px's one pool (GET /pools), whatever their state. */
static long long servers(const struct harness_proxy *px)
{
    json_t *pools = get_json(px->admin_port, "/pools", NULL);
    json_t *p = json_array_get(pools, 0);
    long long n = json_integer_value(json_object_get(p, "servers_active")) +
                  json_integer_value(json_object_get(p, "servers_idle")) +
                  json_integer_value(json_object_get(p, "servers_connecting"));
    json_decref(pools);
    return n;
}

/*
 * A reload that lowers pool_size takes effect: idle servers beyond the size go at once,
 * busy ones as they are freed (the pool kept all of them, and used them, until a
 * restart).  A changed pool_mode cannot apply to a running pool: the reload says so.
 */
static void test_reload_shrinks_pool(void)
{
    struct harness_proxy_opts o = {.pool_mode = "transaction",
                                   .pool_size = 3,
                                   .auth_type = "scram-sha-256",
                                   .log_level = "info",
                                   .admin = true,
                                   .query_wait_timeout_ms = 10000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *c[3];
    for (int i = 0; i < 3; i++) { /* three blocks at once: three servers */
        c[i] = harness_connect(px, "sslmode=disable");
        CU_ASSERT_EQUAL_FATAL(PQstatus(c[i]), CONNECTION_OK);
        CU_ASSERT_TRUE(itu_exec_ok(c[i], "BEGIN"));
        CU_ASSERT_STRING_EQUAL(itu_value(c[i], "SELECT 1"), "1");
    }
    CU_ASSERT_EQUAL(servers(px), 3);
    CU_ASSERT_TRUE(itu_exec_ok(c[0], "COMMIT")); /* one idle server */
    struct harness_proxy_opts o2 = o;
    o2.pool_size = 1;
    CU_ASSERT_EQUAL_FATAL(harness_proxy_rewrite_config(px, &o2), 0);
    CU_ASSERT_EQUAL_FATAL(harness_proxy_signal(px, SIGHUP), 0);
    int left = -1;
    for (int i = 0; i < 100 && left != 2; i++) { /* the idle one goes at once */
        poll(NULL, 0, 30);
        left = (int)servers(px);
    }
    CU_ASSERT_EQUAL(left, 2);
    CU_ASSERT_TRUE(itu_exec_ok(c[1], "COMMIT"));
    CU_ASSERT_TRUE(itu_exec_ok(c[2], "COMMIT"));
    for (int i = 0; i < 100 && left != 1; i++) { /* and one of the two freed */
        poll(NULL, 0, 30);
        left = (int)servers(px);
    }
    CU_ASSERT_EQUAL(left, 1);
    for (int i = 0; i < 3; i++) /* every client still served, by the one server */
        CU_ASSERT_STRING_EQUAL(itu_value(c[i], "SELECT 2"), "2");
    CU_ASSERT_EQUAL(servers(px), 1);

    /* the entry's own pool_mode (the [pgwarden] one is a restart key anyway) */
    o2.db_extra = "pool_mode=session";
    CU_ASSERT_EQUAL_FATAL(harness_proxy_rewrite_config(px, &o2), 0);
    CU_ASSERT_EQUAL_FATAL(harness_proxy_signal(px, SIGHUP), 0);
    bool warned = false;
    for (int i = 0; i < 100 && !warned; i++) {
        warned = harness_proxy_log_contains(px, "pool_mode session takes effect after a restart");
        if (!warned)
            poll(NULL, 0, 50);
    }
    CU_ASSERT_TRUE(warned);
    for (int i = 0; i < 3; i++)
        PQfinish(c[i]);
    CU_ASSERT_EQUAL(harness_proxy_stop(px, 0), 0);
    harness_proxy_free(px);
}

/*
 * A reload of an auth_file with 3000 plaintext passwords must not stall traffic: deriving
 * their SCRAM secrets (PBKDF2, ~1 ms each) waits for each user's first login.  A client
 * runs queries from the SIGHUP until the reload is logged; none may wait long.
 */
static void test_reload_many_users_no_stall(void)
{
    const struct harness_cluster *cl = harness_cluster();
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 2,
                                   .auth_type = "scram-sha-256",
                                   .log_level = "info",
                                   .query_wait_timeout_ms = 10000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *a = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 1"), "1");
    FILE *f = fopen(px->auth_file_path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fprintf(f, "\"%s\" \"%s\"\n", cl->user, cl->password);
    for (int i = 0; i < 3000; i++)
        fprintf(f, "\"user%d\" \"password-%d\"\n", i, i);
    fclose(f);
    int64_t t0 = itu_now_ms(), worst = 0;
    CU_ASSERT_EQUAL_FATAL(harness_proxy_signal(px, SIGHUP), 0);
    bool reloaded = false;
    while (!reloaded && itu_now_ms() - t0 < 30000) {
        int64_t q0 = itu_now_ms();
        CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 1"), "1");
        if (itu_now_ms() - q0 > worst)
            worst = itu_now_ms() - q0;
        reloaded = harness_proxy_log_contains(px, "configuration reloaded");
    }
    printf("\n    reload of 3000 users: %lld ms, slowest query meanwhile %lld ms ",
           (long long)(itu_now_ms() - t0), (long long)worst);
    CU_ASSERT_TRUE(reloaded);
    CU_ASSERT(worst < 500);
    /* The test user's secret was derived at its first login and is kept: logins work. */
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    PQfinish(a);
    CU_ASSERT_EQUAL(harness_proxy_stop(px, 0), 0);
    harness_proxy_free(px);
}

static void test_sigterm_exits_zero(void)
{
    struct harness_proxy_opts o = {
        .pool_mode = "session", .pool_size = 2, .auth_type = "scram-sha-256"};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    /* An idle client connected at the time of SIGTERM does not keep it from exiting 0. */
    PGconn *c = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
    int64_t t0 = itu_now_ms();
    int rc = harness_proxy_stop(px, 10000);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT(itu_now_ms() - t0 < 9000);
    CU_ASSERT_FALSE(harness_proxy_alive(px));
    PQfinish(c);
    harness_proxy_free(px);
}

static void register_suites(void)
{
    static const CU_TestInfo tests[] = {
        {"simple_protocol", test_simple_protocol},
        {"extended_protocol", test_extended_protocol},
        {"notice_forwarding", test_notice_forwarding},
        {"listen_notify", test_listen_notify},
        {"startup_params_session_defaults", test_startup_params_defaults},
        {"sighup_reload", test_sighup_reload},
        {"reload_shrinks_pool", test_reload_shrinks_pool},
        {"reload_many_users_no_stall", test_reload_many_users_no_stall},
        {"sigterm_exits_zero", test_sigterm_exits_zero},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("session", suite_init, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
