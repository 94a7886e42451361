/*
 * test_locks_hybrid.c: hybrid deadlocks (SPEC section 9, docs/locks.md "Hybrid deadlocks"),
 * cycles through pgwarden's locks and PostgreSQL's own row locks, with libpq through
 * pgwarden on a real PostgreSQL, in both pool modes:
 *
 *   ab_cycle         A holds pgwarden lock K and its UPDATE waits for a row B locked; B
 *                    waits for K.  B gets 40P01 within deadlock_timeout_ms, A's UPDATE goes
 *                    through once B's transaction is aborted.
 *   three_party      A holds K, A's UPDATE waits for B's row, B's UPDATE waits for C's row,
 *                    C waits for K (two PostgreSQL edges in a row).  C gets 40P01, then B and
 *                    A finish.
 *   slow_not_cycle   A holds K, A's UPDATE waits for a row held by D, which sleeps in its
 *                    transaction (no cycle); B waits for K for seconds.  Never reported: B
 *                    gets the lock once D commits and A commits.
 *   probe_refused    the A/B cycle while PostgreSQL refuses pgwarden's probe connection
 *                    (the role's CONNECTION LIMIT reached): nothing hangs, the failure is
 *                    logged, B's lock call ends by its own timeout (55P03), A goes on.
 *   short_waits      many lock waits shorter than hybrid_probe_ms (the default, 200), each
 *                    behind a holder busy in a statement: PostgreSQL is never asked
 *                    (lock_hybrid_probes stays 0).
 *
 * hybrid_probe_ms is 100 except in short_waits; PostgreSQL's own deadlock_timeout (1 s)
 * never sees these cycles.
 * ITEST_DEBUG=1 dumps pgwarden's log.  The time from the cycle forming to the 40P01 is
 * printed ("hybrid: ... ms").
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
#define DEADLOCK_MS  1000 /* deadlock_timeout_ms, the default */

static struct harness_proxy *g_px;
static const char *g_mode = "session";

static int suite_init_session(void)
{
    itu_watchdog("test_locks_hybrid", &g_px, 1, 80);
    g_mode = "session";
    return itu_suite_init();
}

static int suite_init_txn(void)
{
    int rc = suite_init_session();
    g_mode = "transaction";
    return rc;
}

static int suite_cleanup(void)
{
    alarm(0);
    if (g_px)
        harness_proxy_free(g_px);
    g_px = NULL;
    return 0;
}

static struct harness_proxy *start_probe(const char *tail)
{
    alarm(TEST_LIMIT_S);
    struct harness_proxy_opts o = {.pool_mode = g_mode,
                                   .pool_size = 6,
                                   .auth_type = "scram-sha-256",
                                   .client_tls_mode = "disable",
                                   .log_level = getenv("ITEST_DEBUG") ? "debug" : "info",
                                   .query_wait_timeout_ms = 60000,
                                   .admin = true,
                                   .tail_extra = tail};
    g_px = harness_proxy_start(&o);
    return g_px;
}

static struct harness_proxy *start(void)
{
    return start_probe("[locks]\nhybrid_probe_ms = 100\n");
}

static void stop(void)
{
    if (getenv("ITEST_DEBUG"))
        harness_proxy_dump_log(g_px, 200);
    CU_ASSERT_TRUE(harness_proxy_alive(g_px));
    CU_ASSERT_EQUAL(itu_proxy_stop_free(g_px), 0);
    g_px = NULL;
    alarm(0);
}

static PGconn *conn(const char *app)
{
    char ci[1024];
    snprintf(ci, sizeof(ci),
             "host=127.0.0.1 port=%d dbname=pgwarden_test user=pgwarden_test "
             "password=test-password sslmode=disable connect_timeout=10 application_name=%s",
             g_px->port, app);
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "connect: %s", PQerrorMessage(c));
    return c;
}

/* True when c has a complete result within ms (it is not waiting any more). */
static bool ready_within(PGconn *c, int ms)
{
    int64_t deadline = itu_now_ms() + ms;
    while (PQisBusy(c)) {
        int64_t left = deadline - itu_now_ms();
        struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
        if (poll(&pfd, 1, left > 0 ? (int)left : 0) <= 0)
            return !PQisBusy(c);
        if (!PQconsumeInput(c))
            return true;
    }
    return true;
}

/* A global counter of /metrics ("pgwarden_<name>_total"), -1 when not found. */
/* pgwarden_<name>_total. */
static long long metric(const char *name)
{
    char series[128];
    snprintf(series, sizeof(series), "pgwarden_%s_total", name);
    return (long long)metric_value(g_px->admin_port, series);
}

static bool exec_ok(PGconn *c, const char *sql)
{
    const char *r = itu_q(c, sql);
    if (r[0] == '!')
        fprintf(stderr, "%s -> %s\n", sql, r);
    return r[0] != '!';
}

/* ---- A/B: one pgwarden edge, one PostgreSQL edge -------------------------------------- */

static void test_ab_cycle(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start());
    PGconn *a = conn("alice"), *b = conn("bob");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_TRUE(
        exec_ok(a, "CREATE TABLE IF NOT EXISTS hybrid_rows (id int PRIMARY KEY, v int)"));
    CU_ASSERT_TRUE(exec_ok(a, "INSERT INTO hybrid_rows SELECT g, 0 FROM generate_series(1, 3) g "
                              "ON CONFLICT DO NOTHING"));

    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT(atoll(itu_q(a, "SELECT pgwarden_xact_lock('hy:k', 'exclusive')")) > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(b, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "UPDATE hybrid_rows SET v = v + 1 WHERE id = 1"), "UPDATE 1");
    CU_ASSERT(PQsendQuery(b, "SELECT pgwarden_xact_lock('hy:k', 'exclusive')") == 1);
    CU_ASSERT_FALSE(ready_within(b, 300)); /* B waits for K: no cycle yet, nothing reported */
    int64_t t0 = itu_now_ms();
    CU_ASSERT(PQsendQuery(a, "UPDATE hybrid_rows SET v = v + 10 WHERE id = 1") == 1);
    /* A waits in PostgreSQL for B's row: the cycle is closed */
    PGresult *r = itu_wait_result(b, 5000);
    int64_t took = itu_now_ms() - t0;
    printf("\n    hybrid: A/B cycle (%s pooling) broken after %lld ms\n", g_mode, (long long)took);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "40P01");
    CU_ASSERT(took < DEADLOCK_MS);
    const char *detail = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL) : NULL;
    CU_ASSERT_PTR_NOT_NULL(detail);
    if (detail) {
        CU_ASSERT_PTR_NOT_NULL(strstr(detail, "\"alice\""));
        CU_ASSERT_PTR_NOT_NULL(strstr(detail, "\"bob\""));
        CU_ASSERT_PTR_NOT_NULL(strstr(detail, "waits in PostgreSQL"));
        CU_ASSERT_PTR_NOT_NULL(strstr(detail, "\"hy:k\""));
    }
    PQclear(r);
    /* B's transaction is aborted on the server too: its row lock is gone, A goes on */
    r = itu_wait_result(a, 3000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    CU_ASSERT_EQUAL(PQtransactionStatus(b), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(itu_q(b, "ROLLBACK"), "ROLLBACK");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "COMMIT");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT v FROM hybrid_rows WHERE id = 1"), "10");
    CU_ASSERT_TRUE(harness_proxy_log_contains(g_px, "deadlock through PostgreSQL's locks"));
    CU_ASSERT_EQUAL(metric("lock_hybrid_deadlocks"), 1);
    CU_ASSERT(metric("lock_hybrid_probes") >= 2); /* the first look and the re-check */
    CU_ASSERT_TRUE(exec_ok(a, "UPDATE hybrid_rows SET v = 0"));
    PQfinish(a);
    PQfinish(b);
    stop();
}

/* ---- three parties: two PostgreSQL edges in a row ---------------------------------------- */

static void test_three_party(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start());
    PGconn *a = conn("alice"), *b = conn("bob"), *c = conn("carol");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_TRUE(
        exec_ok(a, "CREATE TABLE IF NOT EXISTS hybrid_rows (id int PRIMARY KEY, v int)"));
    CU_ASSERT_TRUE(exec_ok(a, "INSERT INTO hybrid_rows SELECT g, 0 FROM generate_series(1, 3) g "
                              "ON CONFLICT DO NOTHING"));

    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT(atoll(itu_q(a, "SELECT pgwarden_xact_lock('hy:k3', 'write')")) > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(b, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "UPDATE hybrid_rows SET v = v + 1 WHERE id = 1"), "UPDATE 1");
    CU_ASSERT_STRING_EQUAL(itu_q(c, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(c, "UPDATE hybrid_rows SET v = v + 1 WHERE id = 2"), "UPDATE 1");
    CU_ASSERT(PQsendQuery(c, "SELECT pgwarden_xact_lock('hy:k3', 'write')") == 1);
    CU_ASSERT_FALSE(ready_within(c, 200));
    CU_ASSERT(PQsendQuery(a, "UPDATE hybrid_rows SET v = v + 10 WHERE id = 1") == 1);
    CU_ASSERT_FALSE(ready_within(a, 200)); /* a chain, not a cycle yet: nothing reported */
    CU_ASSERT_FALSE(ready_within(c, 0));
    int64_t t0 = itu_now_ms();
    CU_ASSERT(PQsendQuery(b, "UPDATE hybrid_rows SET v = v + 100 WHERE id = 2") == 1);
    /* c -> a (pgwarden), a -> b, b -> c (PostgreSQL): c is the one pgwarden waiter */
    PGresult *r = itu_wait_result(c, 5000);
    int64_t took = itu_now_ms() - t0;
    printf("\n    hybrid: three-party cycle (%s pooling) broken after %lld ms\n", g_mode,
           (long long)took);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "40P01");
    CU_ASSERT(took < DEADLOCK_MS);
    const char *detail = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL) : NULL;
    CU_ASSERT(detail && strstr(detail, "\"carol\"") && strstr(detail, "\"bob\"") &&
              strstr(detail, "\"alice\""));
    PQclear(r);
    r = itu_wait_result(b, 3000); /* c's row lock went with its aborted transaction */
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "ROLLBACK"), "ROLLBACK");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "COMMIT"), "COMMIT");
    r = itu_wait_result(a, 3000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "COMMIT");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT sum(v) FROM hybrid_rows"), "111");
    CU_ASSERT_TRUE(exec_ok(a, "UPDATE hybrid_rows SET v = 0"));
    PQfinish(a);
    PQfinish(b);
    PQfinish(c);
    stop();
}

/* ---- a long wait behind a slow row lock: no cycle, never reported ------------------------ */

static void test_slow_not_cycle(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start());
    PGconn *a = conn("alice"), *b = conn("bob"), *d = conn("dave");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    CU_ASSERT_TRUE(
        exec_ok(a, "CREATE TABLE IF NOT EXISTS hybrid_rows (id int PRIMARY KEY, v int)"));
    CU_ASSERT_TRUE(exec_ok(a, "INSERT INTO hybrid_rows SELECT g, 0 FROM generate_series(1, 3) g "
                              "ON CONFLICT DO NOTHING"));

    CU_ASSERT_STRING_EQUAL(itu_q(d, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(d, "UPDATE hybrid_rows SET v = v + 1 WHERE id = 1"), "UPDATE 1");
    /* d keeps the row for 2.5 s: first busy in pg_sleep, then it commits */
    CU_ASSERT(PQsendQuery(d, "SELECT pg_sleep(2.5); COMMIT") == 1);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT(atoll(itu_q(a, "SELECT pgwarden_xact_lock('hy:slow', 'exclusive')")) > 0);
    CU_ASSERT(PQsendQuery(a, "UPDATE hybrid_rows SET v = v + 10 WHERE id = 1") == 1);
    CU_ASSERT_STRING_EQUAL(itu_q(b, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "UPDATE hybrid_rows SET v = v + 1 WHERE id = 3"), "UPDATE 1");
    int64_t t0 = itu_now_ms();
    CU_ASSERT(PQsendQuery(b, "SELECT pgwarden_xact_lock('hy:slow', 'exclusive')") == 1);
    /* b -> a (pgwarden), a -> d (PostgreSQL), d waits for nothing: probed, never a cycle */
    CU_ASSERT_FALSE(ready_within(b, 1500));
    PGresult *r = itu_wait_result(a, 5000); /* d committed */
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = itu_wait_result(d, 1000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    CU_ASSERT_FALSE(ready_within(b, 300)); /* still waits: a holds K until it commits */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "COMMIT");
    r = itu_wait_result(b, 3000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT(r && PQntuples(r) == 1 && atoll(PQgetvalue(r, 0, 0)) > 0);
    PQclear(r);
    CU_ASSERT(itu_now_ms() - t0 > 2000); /* it really was a long wait */
    CU_ASSERT_STRING_EQUAL(itu_q(b, "COMMIT"), "COMMIT");
    CU_ASSERT_FALSE(harness_proxy_log_contains(g_px, "deadlock through PostgreSQL's locks"));
    CU_ASSERT_EQUAL(metric("lock_hybrid_deadlocks"), 0);
    CU_ASSERT(metric("lock_hybrid_probes") >= 3); /* it was looked at, again and again */
    CU_ASSERT_TRUE(exec_ok(a, "UPDATE hybrid_rows SET v = 0"));
    PQfinish(a);
    PQfinish(b);
    PQfinish(d);
    stop();
}

/* ---- the probe connection refused ------------------------------------------------------------ */

static void test_probe_refused(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start());
    PGconn *a = conn("alice"), *b = conn("bob");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_TRUE(
        exec_ok(a, "CREATE TABLE IF NOT EXISTS hybrid_rows (id int PRIMARY KEY, v int)"));
    CU_ASSERT_TRUE(exec_ok(a, "INSERT INTO hybrid_rows SELECT g, 0 FROM generate_series(1, 3) g "
                              "ON CONFLICT DO NOTHING"));
    /* both clients get their servers first (a real statement in each transaction) */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT 1"), "1");
    CU_ASSERT(atoll(itu_q(a, "SELECT pgwarden_xact_lock('hy:kr', 'exclusive')")) > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(b, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "UPDATE hybrid_rows SET v = v + 1 WHERE id = 1"), "UPDATE 1");
    /* no new connection of the test role from now on: the probe's is refused */
    CU_ASSERT_EQUAL_FATAL(harness_cluster_exec("ALTER ROLE pgwarden_test CONNECTION LIMIT 0"), 0);
    int64_t t0 = itu_now_ms();
    CU_ASSERT(PQsendQuery(b, "SELECT pgwarden_xact_lock('hy:kr', 'exclusive', 2000)") == 1);
    CU_ASSERT(PQsendQuery(a, "UPDATE hybrid_rows SET v = v + 10 WHERE id = 1") == 1);
    PGresult *r = itu_wait_result(b, 6000);
    int64_t took = itu_now_ms() - t0;
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "55P03"); /* its own timeout, not a hang */
    CU_ASSERT(took >= 1900 && took < 4000);
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(b, "ROLLBACK"), "ROLLBACK");
    r = itu_wait_result(a, 3000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "ROLLBACK"), "ROLLBACK");
    CU_ASSERT_EQUAL(harness_cluster_exec("ALTER ROLE pgwarden_test CONNECTION LIMIT -1"), 0);
    CU_ASSERT_TRUE(harness_proxy_log_contains(g_px, "cannot ask PostgreSQL at"));
    CU_ASSERT_EQUAL(metric("lock_hybrid_probes"), 0); /* no connection: no query sent */
    CU_ASSERT_EQUAL(metric("lock_hybrid_deadlocks"), 0);
    PQfinish(a);
    PQfinish(b);
    stop();
}

/* ---- short waits: nothing asked ------------------------------------------------------------ */

static void test_short_waits(void)
{
    /* the default hybrid_probe_ms (200); each wait lasts about 20 ms plus round trips */
    CU_ASSERT_PTR_NOT_NULL_FATAL(start_probe(""));
    PGconn *a = conn("alice"), *b = conn("bob");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    for (int i = 0; i < 20; i++) {
        CU_ASSERT(atoll(itu_q(a, "SELECT pgwarden_lock('hy:short', 'exclusive')")) > 0);
        CU_ASSERT(PQsendQuery(b, "SELECT pgwarden_lock('hy:short', 'exclusive')") == 1);
        CU_ASSERT_FALSE(ready_within(b, 0));
        /* the holder busy in a statement, as a holder on a hybrid cycle would be */
        CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pg_sleep(0.02)"), "");
        CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock('hy:short')"), "t");
        PGresult *r = itu_wait_result(b, 2000);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
        PQclear(r);
        CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT pgwarden_unlock('hy:short')"), "t");
    }
    itu_sleep_ms(300);
    CU_ASSERT_EQUAL(metric("lock_hybrid_probes"), 0);
    CU_ASSERT_EQUAL(metric("lock_hybrid_deadlocks"), 0);
    PQfinish(a);
    PQfinish(b);
    stop();
}

static void register_suites(void)
{
    static CU_TestInfo tests[] = {
        {"ab_cycle", test_ab_cycle},
        {"three_party", test_three_party},
        {"slow_not_cycle", test_slow_not_cycle},
        {"probe_refused", test_probe_refused},
        {"short_waits", test_short_waits},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("locks_hybrid_session", suite_init_session, suite_cleanup, tests);
    cunit_add_suite("locks_hybrid_transaction", suite_init_txn, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
