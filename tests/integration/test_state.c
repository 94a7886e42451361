/*
 * test_state.c: session state follows the client in transaction pooling (issue 17), with
 * libpq on a real PostgreSQL: SET / RESET / RESET ALL, SET ROLE, SET SESSION AUTHORIZATION,
 * SET SESSION CHARACTERISTICS (by the extended protocol, as pgJDBC sends it), SET inside a
 * block that commits or rolls back, SQL PREPARE / EXECUTE / DEALLOCATE; state that cannot
 * move (LISTEN, temporary tables) pins the server until it is gone; no client ever sees
 * another's state; pooling stays real.
 *
 * Each client runs its transactions among others on a pool of 2, so that they land on both
 * servers (checked with pg_backend_pid()).
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_http.h"
#include "itest_util.h"

#define TEST_LIMIT_S 120

static struct harness_proxy *g_px;

static int suite_init(void)
{
    itu_watchdog("test_state", &g_px, 1, 40);
    if (itu_suite_init() != 0)
        return 1;
    /* a role the test user may SET ROLE to */
    harness_cluster_exec("DROP ROLE IF EXISTS state_reader");
    return harness_cluster_exec("CREATE ROLE state_reader NOLOGIN") == 0 &&
                   harness_cluster_exec("GRANT state_reader TO pgwarden_test") == 0
               ? 0
               : 1;
}

static int suite_cleanup(void)
{
    alarm(0);
    if (g_px)
        harness_proxy_free(g_px);
    g_px = NULL;
    return 0;
}

static struct harness_proxy *start(int pool_size, const char *extra)
{
    alarm(TEST_LIMIT_S);
    struct harness_proxy_opts o = {.pool_mode = "transaction",
                                   .pool_size = pool_size,
                                   .auth_type = "scram-sha-256",
                                   .client_tls_mode = "disable",
                                   .log_level = "info",
                                   .admin = true,
                                   .pgwarden_extra = extra};
    g_px = harness_proxy_start(&o);
    return g_px;
}

static void stop(void)
{
    CU_ASSERT_TRUE(harness_proxy_alive(g_px));
    CU_ASSERT_EQUAL(itu_proxy_stop_free(g_px), 0);
    g_px = NULL;
    alarm(0);
}

static PGconn *conn(const char *extra)
{
    char ci[1024];
    snprintf(ci, sizeof(ci),
             "host=127.0.0.1 port=%d dbname=pgwarden_test user=pgwarden_test "
             "password=test-password sslmode=disable connect_timeout=10 %s",
             g_px->port, extra ? extra : "");
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "connect: %s", PQerrorMessage(c));
    return c;
}

/* The first value of sql ("!SQLSTATE" on error); static buffer. */
static const char *v(PGconn *c, const char *sql)
{
    static char buf[512];
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(buf, sizeof(buf), "%s", PQgetvalue(r, 0, 0));
    else if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        snprintf(buf, sizeof(buf), "%s", PQcmdStatus(r));
    else
        snprintf(buf, sizeof(buf), "!%s", itu_sqlstate(r));
    PQclear(r);
    return buf;
}

/* Runs a query on each of the "others" so that the servers change hands between the
 * checked client's transactions. */
static void churn(PGconn **others, int n)
{
    for (int i = 0; i < n; i++)
        PQclear(PQexec(others[i], "SELECT 1"));
}

/* Keeps one server busy in a transaction while fn's check runs, so the checked client
 * gets the other one: returns the backend pid the check ran on. */
static int on_other_server(PGconn *blocker, PGconn *c, const char *sql, char *out, size_t cap)
{
    PQclear(PQexec(blocker, "BEGIN"));
    PQclear(PQexec(blocker, "SELECT 1"));
    int pid = atoi(v(c, "SELECT pg_backend_pid()"));
    snprintf(out, cap, "%s", v(c, sql));
    PQclear(PQexec(blocker, "COMMIT"));
    return pid;
}

/* ---- SET and friends follow the client ------------------------------------------------- */

static void test_sets_follow(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2, NULL));
    PGconn *a = conn(NULL), *b = conn(NULL), *x = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(x), CONNECTION_OK);
    PGconn *others[] = {b, x};

    CU_ASSERT_STRING_EQUAL(v(a, "SET search_path TO pg_catalog, public"), "SET");
    CU_ASSERT_STRING_EQUAL(v(a, "SET statement_timeout = '2s'"), "SET");
    CU_ASSERT_STRING_EQUAL(v(a, "SET myapp.tenant = 'acme'"), "SET");
    CU_ASSERT_STRING_EQUAL(v(a, "SET ROLE state_reader"), "SET");
    int pids[2] = {0, 0};
    for (int i = 0; i < 6; i++) {
        churn(others, 2);
        char val[128];
        /* every other round a second server is busy: a gets the one it did not have */
        int pid;
        if (i % 2) {
            pid = atoi(v(a, "SELECT pg_backend_pid()"));
            snprintf(val, sizeof(val), "%s", v(a, "SHOW search_path"));
        } else {
            pid = on_other_server(x, a, "SHOW search_path", val, sizeof(val));
        }
        pids[i % 2] = pid;
        CU_ASSERT_STRING_EQUAL(val, "pg_catalog, public");
        CU_ASSERT_STRING_EQUAL(v(a, "SHOW statement_timeout"), "2s");
        CU_ASSERT_STRING_EQUAL(v(a, "SELECT current_setting('myapp.tenant')"), "acme");
        CU_ASSERT_STRING_EQUAL(v(a, "SELECT current_user"), "state_reader");
        /* the others never see it */
        CU_ASSERT_STRING_EQUAL(v(b, "SHOW search_path"), "\"$user\", public");
        CU_ASSERT_STRING_EQUAL(v(b, "SHOW statement_timeout"), "0");
        CU_ASSERT_STRING_EQUAL(v(b, "SELECT current_user"), "pgwarden_test");
        CU_ASSERT_STRING_EQUAL(v(x, "SELECT current_setting('myapp.tenant', true)"), "");
    }
    printf("\n    a ran on backends %d and %d ", pids[0], pids[1]);
    CU_ASSERT(pids[0] != pids[1]); /* it really moved */
    /* RESET and RESET ROLE follow too */
    CU_ASSERT_STRING_EQUAL(v(a, "RESET statement_timeout"), "RESET");
    CU_ASSERT_STRING_EQUAL(v(a, "RESET ROLE"), "RESET");
    churn(others, 2);
    char val[128];
    on_other_server(b, a, "SHOW statement_timeout", val, sizeof(val));
    CU_ASSERT_STRING_EQUAL(val, "0");
    CU_ASSERT_STRING_EQUAL(v(a, "SELECT current_user"), "pgwarden_test");
    CU_ASSERT_STRING_EQUAL(v(a, "SHOW search_path"), "pg_catalog, public");
    /* RESET ALL */
    CU_ASSERT_STRING_EQUAL(v(a, "RESET ALL"), "RESET");
    on_other_server(x, a, "SHOW search_path", val, sizeof(val));
    CU_ASSERT_STRING_EQUAL(val, "\"$user\", public");
    CU_ASSERT_STRING_EQUAL(v(a, "SELECT current_setting('myapp.tenant', true)"), "");
    /* RESET SESSION AUTHORIZATION drops the role too, as in PostgreSQL (found by its
     * regression suite, test privileges) */
    CU_ASSERT_STRING_EQUAL(v(a, "SET ROLE state_reader"), "SET");
    CU_ASSERT_STRING_EQUAL(v(a, "RESET SESSION AUTHORIZATION"), "RESET");
    CU_ASSERT_STRING_EQUAL(v(a, "SELECT current_user"), "pgwarden_test");
    churn(others, 2);
    on_other_server(b, a, "SELECT current_user", val, sizeof(val));
    CU_ASSERT_STRING_EQUAL(val, "pgwarden_test");
    CU_ASSERT_STRING_EQUAL(v(a, "SHOW role"), "none");
    PQfinish(a);
    PQfinish(b);
    PQfinish(x);
    stop();
}

/* SET in a block: kept when it commits, gone when it rolls back or fails; SET LOCAL never. */
static void test_sets_in_blocks(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2, NULL));
    PGconn *a = conn(NULL), *b = conn(NULL), *x = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    PGconn *others[] = {b, x};
    char val[128];

    CU_ASSERT_STRING_EQUAL(v(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(v(a, "SET work_mem = '5MB'"), "SET");
    CU_ASSERT_STRING_EQUAL(v(a, "ROLLBACK"), "ROLLBACK");
    churn(others, 2);
    on_other_server(b, a, "SHOW work_mem", val, sizeof(val));
    CU_ASSERT_STRING_EQUAL(val, "4MB");

    CU_ASSERT_STRING_EQUAL(v(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(v(a, "SET work_mem = '6MB'"), "SET");
    CU_ASSERT_STRING_EQUAL(v(a, "SELECT 1/0"), "!22012");
    CU_ASSERT_STRING_EQUAL(v(a, "COMMIT"), "ROLLBACK");
    on_other_server(x, a, "SHOW work_mem", val, sizeof(val));
    CU_ASSERT_STRING_EQUAL(val, "4MB");

    CU_ASSERT_STRING_EQUAL(v(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(v(a, "SET LOCAL work_mem = '7MB'"), "SET");
    CU_ASSERT_STRING_EQUAL(v(a, "SET work_mem = '8MB'"), "SET");
    CU_ASSERT_STRING_EQUAL(v(a, "COMMIT"), "COMMIT");
    churn(others, 2);
    on_other_server(b, a, "SHOW work_mem", val, sizeof(val));
    CU_ASSERT_STRING_EQUAL(val, "8MB");
    /* a SET that fails changes nothing */
    CU_ASSERT_STRING_EQUAL(v(a, "SET work_mem = 'lots'"), "!22023");
    on_other_server(x, a, "SHOW work_mem", val, sizeof(val));
    CU_ASSERT_STRING_EQUAL(val, "8MB");
    CU_ASSERT_STRING_EQUAL(v(b, "SHOW work_mem"), "4MB");
    PQfinish(a);
    PQfinish(b);
    PQfinish(x);
    stop();
}

/* pgJDBC's setTransactionIsolation: SET SESSION CHARACTERISTICS by the extended protocol, in
 * its own transaction; the next transactions run at that isolation, on any server. */
static void test_session_characteristics_extended(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2, NULL));
    PGconn *a = conn(NULL), *b = conn(NULL), *x = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    PGconn *others[] = {b, x};
    PGresult *r = PQexecParams(a,
                               "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL "
                               "SERIALIZABLE",
                               0, NULL, NULL, NULL, NULL, 0);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    for (int i = 0; i < 4; i++) {
        churn(others, 2);
        char val[128];
        on_other_server(i % 2 ? b : x, a, "SHOW transaction_isolation", val, sizeof(val));
        CU_ASSERT_STRING_EQUAL(val, "serializable");
        CU_ASSERT_STRING_EQUAL(v(b, "SHOW transaction_isolation"), "read committed");
    }
    PQfinish(a);
    PQfinish(b);
    PQfinish(x);
    stop();
}

/* SQL PREPARE / EXECUTE / DEALLOCATE follow the client; another client's PREPARE of the same
 * name is its own. */
static void test_sql_prepare_follows(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2, NULL));
    PGconn *a = conn(NULL), *b = conn(NULL), *x = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    PGconn *others[] = {b, x};
    CU_ASSERT_STRING_EQUAL(v(a, "PREPARE q1(int) AS SELECT $1 * 10"), "PREPARE");
    CU_ASSERT_STRING_EQUAL(v(b, "PREPARE q1(int) AS SELECT $1 + 1000"), "PREPARE");
    for (int i = 0; i < 4; i++) {
        churn(others, 2);
        char val[128];
        on_other_server(i % 2 ? b : x, a, "EXECUTE q1(4)", val, sizeof(val));
        CU_ASSERT_STRING_EQUAL(val, "40");
        CU_ASSERT_STRING_EQUAL(v(b, "EXECUTE q1(4)"), "1004");
        CU_ASSERT_STRING_EQUAL(v(x, "EXECUTE q1(4)"), "!26000");
    }
    CU_ASSERT_STRING_EQUAL(v(a, "DEALLOCATE q1"), "DEALLOCATE");
    churn(others, 2);
    CU_ASSERT_STRING_EQUAL(v(a, "EXECUTE q1(4)"), "!26000");
    CU_ASSERT_STRING_EQUAL(v(b, "EXECUTE q1(5)"), "1005");
    PQfinish(a);
    PQfinish(b);
    PQfinish(x);
    stop();
}

/* DEALLOCATE and DEALLOCATE ALL by the extended protocol (the unnamed statement), as
 * psycopg 3 sends DEALLOCATE ALL after a ROLLBACK when it has prepared statements: the
 * statements go, as on a direct connection, and pgwarden goes on (it used to crash on the
 * statement's text it does not keep). */
static void test_deallocate_extended(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2, NULL));
    PGconn *a = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(v(a, "PREPARE q1 AS SELECT 1"), "PREPARE");
    CU_ASSERT_STRING_EQUAL(v(a, "PREPARE q2 AS SELECT 2"), "PREPARE");
    static const char *const sql[] = {"DEALLOCATE q1", "DEALLOCATE ALL"};
    for (int i = 0; i < 2; i++) {
        PGresult *r = PQexecParams(a, sql[i], 0, NULL, NULL, NULL, NULL, 0);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
        PQclear(r);
        CU_ASSERT_STRING_EQUAL(v(a, "EXECUTE q1"), "!26000");
        CU_ASSERT_STRING_EQUAL(v(a, "EXECUTE q2"), i == 0 ? "2" : "!26000");
    }
    PQfinish(a);
    stop();
}

/* ---- state that cannot move pins the server ------------------------------------------- */

static bool notified(PGconn *c, int ms)
{
    int64_t until = itu_now_ms() + ms;
    for (;;) {
        PQconsumeInput(c);
        PGnotify *n = PQnotifies(c);
        if (n) {
            PQfreemem(n);
            return true;
        }
        if (itu_now_ms() >= until)
            return false;
        struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
        poll(&pfd, 1, 50);
    }
}

static long long pinned_clients(void)
{
    json_t *pools = get_json(g_px->admin_port, "/pools", NULL);
    long long n = json_integer_value(json_object_get(json_array_get(pools, 0), "clients_pinned"));
    json_decref(pools);
    return n;
}

/*
 * What pins by the extended protocol's unnamed statement (pgJDBC and node-postgres with
 * parameters send everything so) also unpins so: UNLISTEN *, pg_advisory_unlock_all() and
 * DISCARD TEMP.  Only their simple-protocol form used to unpin, so such a client kept its
 * server until it left.
 */
static void test_pins_extended(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2, NULL));
    PGconn *a = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    static const char *const pairs[][3] = {
        {"LISTEN st_x", "UNLISTEN *", "UNLISTEN"},
        {"SELECT pg_advisory_lock(77)", "SELECT pg_advisory_unlock_all()", ""},
        {"CREATE TEMP TABLE st_x(v int)", "DISCARD TEMP", "DISCARD TEMP"},
    };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        CU_ASSERT_NOT_EQUAL(itu_qx(a, pairs[i][0])[0], '!');
        CU_ASSERT_EQUAL(pinned_clients(), 1);
        CU_ASSERT_STRING_EQUAL(itu_qx(a, pairs[i][1]), pairs[i][2]);
        long long left = pinned_clients();
        if (left != 0)
            fprintf(stderr, "\n    still pinned after %s", pairs[i][1]);
        CU_ASSERT_EQUAL(left, 0);
    }
    /* a temporary table dropped at COMMIT leaves nothing behind: no pin */
    CU_ASSERT_STRING_EQUAL(v(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(v(a, "CREATE TEMP TABLE st_y(v int) ON COMMIT DROP"), "CREATE TABLE");
    CU_ASSERT_STRING_EQUAL(v(a, "INSERT INTO st_y VALUES (1)"), "INSERT 0 1");
    CU_ASSERT_STRING_EQUAL(v(a, "COMMIT"), "COMMIT");
    CU_ASSERT_EQUAL(pinned_clients(), 0);
    PQfinish(a);
    stop();
}

/*
 * set_config(name, value, true) is transaction-local, like SET LOCAL (PostgREST, Hasura and
 * row-level-security setups set their per-request settings so in every transaction): it
 * leaves nothing behind and pins nothing; the session form still pins.
 */
static void test_set_config_local(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2, NULL));
    PGconn *a = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(v(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(v(a, "SELECT set_config('request.claims', 'anon', true)"), "anon");
    CU_ASSERT_STRING_EQUAL(itu_qx(a, "SELECT current_setting('request.claims', true)"), "anon");
    CU_ASSERT_STRING_EQUAL(v(a, "COMMIT"), "COMMIT");
    CU_ASSERT_EQUAL(pinned_clients(), 0);
    CU_ASSERT_STRING_EQUAL(itu_qx(a, "SELECT set_config('request.claims', 'x', 'on')"), "x");
    CU_ASSERT_EQUAL(pinned_clients(), 0);
    CU_ASSERT_STRING_EQUAL(v(a, "SELECT set_config('request.claims', 'kept', false)"), "kept");
    CU_ASSERT_EQUAL(pinned_clients(), 1);
    PQfinish(a);
    stop();
}

/*
 * A statement that ends pinned state unpins only when it took effect: a DISCARD TEMP or
 * UNLISTEN * rolled back, or refused in a failed block (25P02), leaves the state on the
 * server, which must not go to another client (a new client read the first one's temporary
 * table through pg_temp).  pg_advisory_unlock_all() releases at once, rollback or not.
 */
static void test_unpin_only_when_done(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2, NULL));
    PGconn *a = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(v(a, "CREATE TEMP TABLE st_secret AS SELECT 'a-private' AS s"),
                           "SELECT 1");
    CU_ASSERT_EQUAL(pinned_clients(), 1);
    for (int ext = 0; ext < 2; ext++) {
        const char *(*run)(PGconn *, const char *) = ext ? itu_qx : v;
        CU_ASSERT_STRING_EQUAL(v(a, "BEGIN"), "BEGIN");
        CU_ASSERT_STRING_EQUAL(run(a, "DISCARD TEMP"), "DISCARD TEMP");
        CU_ASSERT_STRING_EQUAL(v(a, "ROLLBACK"), "ROLLBACK");
        CU_ASSERT_EQUAL(pinned_clients(), 1);
        CU_ASSERT_STRING_EQUAL(v(a, "BEGIN"), "BEGIN");
        CU_ASSERT_STRING_EQUAL(v(a, "SELECT 1/0"), "!22012");
        CU_ASSERT_STRING_EQUAL(run(a, "DISCARD TEMP"), "!25P02");
        CU_ASSERT_STRING_EQUAL(v(a, "ROLLBACK"), "ROLLBACK");
        CU_ASSERT_EQUAL(pinned_clients(), 1);
    }
    CU_ASSERT_STRING_EQUAL(v(a, "SELECT s FROM pg_temp.st_secret"), "a-private");
    CU_ASSERT_STRING_EQUAL(itu_qx(a, "DISCARD TEMP"), "DISCARD TEMP");
    CU_ASSERT_EQUAL(pinned_clients(), 0);

    CU_ASSERT_STRING_EQUAL(v(a, "LISTEN st_z"), "LISTEN");
    CU_ASSERT_STRING_EQUAL(v(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(v(a, "UNLISTEN *"), "UNLISTEN");
    CU_ASSERT_STRING_EQUAL(v(a, "ROLLBACK"), "ROLLBACK");
    CU_ASSERT_EQUAL(pinned_clients(), 1);
    CU_ASSERT_STRING_EQUAL(v(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_qx(a, "UNLISTEN *"), "UNLISTEN");
    CU_ASSERT_STRING_EQUAL(v(a, "COMMIT"), "COMMIT");
    CU_ASSERT_EQUAL(pinned_clients(), 0);

    CU_ASSERT_STRING_EQUAL(v(a, "SELECT pg_advisory_lock(78)"), "");
    CU_ASSERT_EQUAL(pinned_clients(), 1);
    CU_ASSERT_STRING_EQUAL(v(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(v(a, "SELECT pg_advisory_unlock_all()"), "");
    CU_ASSERT_STRING_EQUAL(v(a, "ROLLBACK"), "ROLLBACK");
    CU_ASSERT_EQUAL(pinned_clients(), 0); /* released all the same */
    PQfinish(a);
    stop();
}

static void test_pins(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2, NULL));
    PGconn *a = conn(NULL), *b = conn(NULL), *x = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    /* LISTEN: a keeps its server, and gets notifications between its transactions */
    CU_ASSERT_STRING_EQUAL(v(a, "LISTEN state_chan"), "LISTEN");
    int pid = atoi(v(a, "SELECT pg_backend_pid()"));
    /* the admin port shows it */
    json_t *pools = get_json(g_px->admin_port, "/pools", NULL);
    json_t *pool = pools ? json_array_get(pools, 0) : NULL;
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(pool, "clients_pinned")), 1);
    json_decref(pools);
    json_t *clients = get_json(g_px->admin_port, "/clients", NULL);
    int pinned = 0;
    for (size_t i = 0; clients && i < json_array_size(clients); i++) {
        const char *why = json_string_value(json_object_get(json_array_get(clients, i), "pinned"));
        if (why && !strcmp(why, "LISTEN"))
            pinned++;
    }
    CU_ASSERT_EQUAL(pinned, 1);
    json_decref(clients);
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_STRING_EQUAL(v(b, "NOTIFY state_chan"), "NOTIFY");
        CU_ASSERT_TRUE(notified(a, 2000));
        CU_ASSERT_EQUAL(atoi(v(a, "SELECT pg_backend_pid()")), pid);
        CU_ASSERT_STRING_EQUAL(v(x, "SELECT 'x runs'"), "x runs"); /* on the other server */
    }
    /* UNLISTEN * ends the pin: a's server goes back to the pool */
    CU_ASSERT_STRING_EQUAL(v(a, "UNLISTEN *"), "UNLISTEN");
    pools = get_json(g_px->admin_port, "/pools", NULL);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(pools, 0), "clients_pinned")),
                    0);
    json_decref(pools);
    PQclear(PQexec(b, "BEGIN"));
    PQclear(PQexec(x, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(v(b, "SELECT 1"), "1");
    CU_ASSERT_STRING_EQUAL(v(x, "SELECT 1"), "1"); /* both servers in use by b and x */
    PQclear(PQexec(b, "COMMIT"));
    PQclear(PQexec(x, "COMMIT"));

    /* a temporary table survives a's transactions; DISCARD TEMP ends the pin */
    CU_ASSERT_STRING_EQUAL(v(a, "CREATE TEMP TABLE st_tmp(v int)"), "CREATE TABLE");
    CU_ASSERT_STRING_EQUAL(v(a, "INSERT INTO st_tmp VALUES (1)"), "INSERT 0 1");
    CU_ASSERT_STRING_EQUAL(v(b, "SELECT 1"), "1");
    CU_ASSERT_STRING_EQUAL(v(a, "SELECT count(*) FROM st_tmp"), "1");
    CU_ASSERT_STRING_EQUAL(v(b, "SELECT count(*) FROM st_tmp"), "!42P01");
    CU_ASSERT_STRING_EQUAL(v(a, "DISCARD TEMP"), "DISCARD TEMP");
    PQclear(PQexec(b, "BEGIN"));
    PQclear(PQexec(x, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(v(b, "SELECT 1"), "1");
    CU_ASSERT_STRING_EQUAL(v(x, "SELECT 1"), "1");
    PQclear(PQexec(b, "COMMIT"));
    PQclear(PQexec(x, "COMMIT"));

    /* a table created in pg_temp by name is temporary too (found by PostgreSQL's
     * regression suite): it pins, and its rows never reach the next clients of the server */
    CU_ASSERT_STRING_EQUAL(v(a, "CREATE TABLE pg_temp.st_leak(s text)"), "CREATE TABLE");
    CU_ASSERT_STRING_EQUAL(v(a, "INSERT INTO pg_temp.st_leak VALUES ('secret')"), "INSERT 0 1");
    CU_ASSERT_STRING_EQUAL(v(b, "SELECT 1"), "1");
    CU_ASSERT_STRING_EQUAL(v(a, "SELECT s FROM pg_temp.st_leak"), "secret");
    PQfinish(a); /* its server is reset: the table is gone from every backend */
    PGconn *d = harness_connect_info(harness_cluster_conninfo(NULL));
    const char *left = "?";
    for (int i = 0; i < 50; i++) {
        left = v(d, "SELECT count(*) FROM pg_class WHERE relname = 'st_leak'");
        if (!strcmp(left, "0"))
            break;
        itu_sleep_ms(20);
    }
    CU_ASSERT_STRING_EQUAL(left, "0");
    PQfinish(d);
    PQfinish(b);
    PQfinish(x);
    stop();
}

/* The pool clients' connection reset (asyncpg's "SELECT pg_advisory_unlock_all(); CLOSE
 * ALL; UNLISTEN *; RESET ALL;" when a connection goes back to its pool) removes state: it
 * neither pins the client nor leaves its settings on the next server. */
static void test_pool_reset_text(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2, NULL));
    PGconn *a = conn(NULL), *b = conn(NULL), *x = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(x), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(v(a, "SET statement_timeout = '3s'"), "SET");
    CU_ASSERT_STRING_EQUAL(v(a, "LISTEN reset_chan"), "LISTEN"); /* pins a */
    CU_ASSERT_STRING_EQUAL(v(a, "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\n"
                                "RESET ALL;"),
                           "RESET");
    json_t *pools = get_json(g_px->admin_port, "/pools", NULL);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(pools, 0), "clients_pinned")),
                    0);
    json_decref(pools);
    /* b and x have both servers (x would wait for a's if a kept it) */
    PQclear(PQexec(b, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(v(b, "SELECT 1"), "1");
    CU_ASSERT_EQUAL_FATAL(PQsendQuery(x, "BEGIN; SELECT 2"), 1);
    PGresult *r = itu_wait_result(x, 3000); /* BEGIN's (SELECT 2's is consumed) */
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    PQclear(PQexec(b, "COMMIT"));
    PQclear(PQexec(x, "COMMIT"));
    /* a's setting is gone, on either server */
    char val[128];
    on_other_server(b, a, "SHOW statement_timeout", val, sizeof(val));
    CU_ASSERT_STRING_EQUAL(val, "0");
    on_other_server(x, a, "SHOW statement_timeout", val, sizeof(val));
    CU_ASSERT_STRING_EQUAL(val, "0");
    /* two changes of state in one text still pin: pgwarden cannot tell them apart */
    CU_ASSERT_STRING_EQUAL(v(a, "SET statement_timeout = '3s'; SET work_mem = '2MB'"), "SET");
    pools = get_json(g_px->admin_port, "/pools", NULL);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(pools, 0), "clients_pinned")),
                    1);
    json_decref(pools);
    PQfinish(a);
    PQfinish(b);
    PQfinish(x);
    stop();
}

/* Clients without such state share two servers: pooling is real. */
static void test_pooling_stays_real(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2, NULL));
    PGconn *cs[6];
    for (int i = 0; i < 6; i++) {
        cs[i] = conn(NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(cs[i]), CONNECTION_OK);
        CU_ASSERT_STRING_EQUAL(
            v(cs[i], i % 2 ? "SET search_path = pg_catalog" : "SET work_mem = '8MB'"), "SET");
    }
    int pids[64], npids = 0;
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 6; i++) {
            int pid = atoi(v(cs[i], "SELECT pg_backend_pid()"));
            bool seen = false;
            for (int k = 0; k < npids; k++)
                seen |= pids[k] == pid;
            if (!seen && npids < 64)
                pids[npids++] = pid;
            CU_ASSERT_STRING_EQUAL(v(cs[i], i % 2 ? "SHOW search_path" : "SHOW work_mem"),
                                   i % 2 ? "pg_catalog" : "8MB");
        }
    }
    printf("\n    6 clients with their own settings used %d backends ", npids);
    CU_ASSERT(npids <= 2);
    for (int i = 0; i < 6; i++)
        PQfinish(cs[i]);
    stop();
}

static void register_suites(void)
{
    static CU_TestInfo tests[] = {
        {"sets_follow", test_sets_follow},
        {"sets_in_blocks", test_sets_in_blocks},
        {"session_characteristics_extended", test_session_characteristics_extended},
        {"sql_prepare_follows", test_sql_prepare_follows},
        {"deallocate_extended", test_deallocate_extended},
        {"pins", test_pins},
        {"pins_extended", test_pins_extended},
        {"set_config_local", test_set_config_local},
        {"unpin_only_when_done", test_unpin_only_when_done},
        {"pool_reset_text", test_pool_reset_text},
        {"pooling_stays_real", test_pooling_stays_real},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("state", suite_init, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
