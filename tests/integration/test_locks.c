/*
 * test_locks.c: pgwarden's lock functions (SPEC section 2) through pgwarden with libpq, on
 * a real PostgreSQL, in both pool modes: every function by the simple and the extended
 * protocol, Describe, pipelines mixed with ordinary SQL, the errors (22023, 55P03, 40P01
 * with its DETAIL, 25P01, 25P02 after an error inside a block, 53200), cancel of a wait,
 * release at COMMIT / ROLLBACK / unlock / disconnect, deadlock shapes with exactly one
 * victim, waiting without a server, fencing tokens across a restart, and read-modify-write
 * under a lock by many clients with no lost update.
 *
 * Every test starts its own pgwarden and stops it at the end.  A lock call that reached
 * PostgreSQL would fail with 42883 (the functions do not exist there): every call here
 * checks its result.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_util.h"
#include "itest_wire.h"

#define TEST_LIMIT_S 180

static struct harness_proxy *g_px;
static const char *g_mode = "session"; /* the pool mode of the running suite */

static int suite_init_session(void)
{
    itu_watchdog("test_locks", &g_px, 1, 60);
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

static struct harness_proxy *start_opts(int pool_size, const char *tail)
{
    alarm(TEST_LIMIT_S);
    struct harness_proxy_opts o = {.pool_mode = g_mode,
                                   .pool_size = pool_size,
                                   .auth_type = "scram-sha-256",
                                   .client_tls_mode = "disable",
                                   .log_level = getenv("ITEST_DEBUG") ? "debug" : "info",
                                   .max_client_conn = 400,
                                   .query_wait_timeout_ms = 60000,
                                   .tail_extra = tail};
    g_px = harness_proxy_start(&o);
    return g_px;
}

static struct harness_proxy *start(int pool_size)
{
    return start_opts(pool_size, NULL);
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

static PGconn *conn(const char *extra)
{
    char ci[1024];
    snprintf(ci, sizeof(ci),
             "host=127.0.0.1 port=%d dbname=pgwarden_test user=pgwarden_test "
             "password=test-password sslmode=disable connect_timeout=10 %s",
             g_px->port, extra ? extra : "");
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s", PQerrorMessage(c));
        harness_proxy_dump_log(g_px, 20);
    }
    return c;
}

/* ---- 1. every function, simple protocol ------------------------------------------------- */

static void test_functions_simple(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2));
    PGconn *a = conn("application_name=alpha"), *b = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);

    long long t1 = itu_tok(a, "SELECT pgwarden_lock('portfolio:1', 'exclusive')");
    CU_ASSERT(t1 > 0);
    /* re-request of a weaker mode: the same token, no stacking */
    CU_ASSERT_EQUAL(itu_tok(a, "select PGWARDEN_LOCK( 'portfolio:1' , 'READ' ) ;"), t1);
    /* another client cannot have it */
    CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT pgwarden_try_lock('portfolio:1', 'read')"), "NULL");
    /* pgwarden_locks(): one row per lock held, (key, mode, scope, token) */
    PGresult *r = PQexec(a, "SELECT * FROM pgwarden_locks()");
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT_EQUAL(PQntuples(r), 1);
    CU_ASSERT_EQUAL(PQnfields(r), 4);
    if (PQntuples(r) == 1 && PQnfields(r) == 4) {
        CU_ASSERT_STRING_EQUAL(PQfname(r, 0), "key");
        CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "portfolio:1");
        CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 1), "exclusive");
        CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 2), "session");
        CU_ASSERT_EQUAL(atoll(PQgetvalue(r, 0, 3)), t1);
    }
    PQclear(r);
    /* column name and type as PostgreSQL would send them */
    r = PQexec(a, "SELECT pgwarden_try_lock('symbol:AAPL', 'write')");
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT_STRING_EQUAL(PQfname(r, 0), "pgwarden_try_lock");
    CU_ASSERT_EQUAL(PQftype(r, 0), 20); /* int8 */
    long long t2 = atoll(PQgetvalue(r, 0, 0));
    CU_ASSERT(t2 > t1); /* tokens only increase */
    PQclear(r);
    /* unlock: true once, then false; unlock_all counts */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock('symbol:AAPL')"), "t");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock('symbol:AAPL')"), "f");
    long long k2 = itu_tok(a, "SELECT pgwarden_lock('k2', 'read') AS t");
    CU_ASSERT(k2 > 0);
    CU_ASSERT_EQUAL(itu_tok(a, "SELECT pgwarden_lock('k2', 'read') AS t"), k2);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock_all()"), "2");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT * FROM pgwarden_locks()"), "SELECT 0");
    /* the other client may now take it */
    long long t3 = itu_tok(b, "/* c */ SELECT pgwarden_try_lock('portfolio:1', 'write')");
    CU_ASSERT(t3 > t2);
    /* read and write go together; write and write do not */
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_lock('portfolio:1', 'read')") > t3);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_try_lock('portfolio:1', 'write')"), "NULL");
    /* errors of the arguments */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_lock('k', 'shared')"), "!22023");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_lock('', 'read')"), "!22023");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_lock('k', 'read', -1)"), "!22023");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_xact_lock('k', 'read')"), "!25P01");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_lock(NULL, 'read')"), "NULL");
    /* a call inside a larger statement is not a lock call: it reaches PostgreSQL */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_lock('k', 'read'), 1"), "!42883");
    CU_ASSERT_STRING_EQUAL(PQtransactionStatus(a) == PQTRANS_IDLE ? "idle" : "?", "idle");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT 42"), "42");
    PQfinish(a);
    PQfinish(b);
    stop();
}

/* ---- 2. the extended protocol ---------------------------------------------------------- */

static void test_functions_extended(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2));
    PGconn *a = conn(NULL), *b = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);

    /* a named statement with $n parameters, described as PostgreSQL would */
    PGresult *r = PQprepare(a, "lk", "SELECT pgwarden_lock($1, $2, $3)", 0, NULL);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = PQdescribePrepared(a, "lk");
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    CU_ASSERT_EQUAL(PQnparams(r), 3);
    if (PQnparams(r) == 3) {
        CU_ASSERT_EQUAL(PQparamtype(r, 0), 25); /* text */
        CU_ASSERT_EQUAL(PQparamtype(r, 1), 25);
        CU_ASSERT_EQUAL(PQparamtype(r, 2), 23); /* integer */
    }
    CU_ASSERT_EQUAL(PQnfields(r), 1);
    CU_ASSERT_STRING_EQUAL(PQfname(r, 0), "pgwarden_lock");
    CU_ASSERT_EQUAL(PQftype(r, 0), 20);
    PQclear(r);
    const char *vals[3] = {"acct:7", "write", "1000"};
    r = PQexecPrepared(a, "lk", 3, vals, NULL, NULL, 0);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    long long t1 = PQntuples(r) == 1 ? atoll(PQgetvalue(r, 0, 0)) : 0;
    CU_ASSERT(t1 > 0);
    PQclear(r);
    /* unnamed statement, binary parameters and a binary result */
    uint32_t be_timeout = htonl(100);
    const char *bvals[3] = {"acct:7", "write", (const char *)&be_timeout};
    int lens[3] = {6, 5, 4}, fmts[3] = {0, 0, 1};
    r = PQexecParams(b, "SELECT pgwarden_lock($1, $2, $3::int4)", 3, NULL, bvals, lens, fmts, 1);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_FATAL_ERROR); /* a holds it: 55P03 in 100 ms */
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "55P03");
    CU_ASSERT_PTR_NOT_NULL(strstr(PQresultErrorMessage(r), "acct:7"));
    PQclear(r);
    r = PQexecParams(b, "SELECT pgwarden_try_lock($1, 'read')", 1, NULL, vals, NULL, NULL, 1);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT_EQUAL(PQfformat(r, 0), 1);
    CU_ASSERT_EQUAL(PQgetlength(r, 0, 0), 8);
    if (PQgetlength(r, 0, 0) == 8) {
        const unsigned char *p = (const unsigned char *)PQgetvalue(r, 0, 0);
        long long v = 0;
        for (int i = 0; i < 8; i++)
            v = v << 8 | p[i];
        CU_ASSERT(v > t1);
    }
    PQclear(r);
    /* unlock by the extended protocol, then by a prepared statement Close */
    r = PQexecParams(a, "SELECT pgwarden_unlock($1)", 1, NULL, vals, NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(PQntuples(r) ? PQgetvalue(r, 0, 0) : "?", "t");
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "DEALLOCATE lk"), "DEALLOCATE");
    r = PQexecPrepared(a, "lk", 3, vals, NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "26000"); /* gone, as in PostgreSQL */
    PQclear(r);
    /* errors in the arguments come from pgwarden, as PostgreSQL's would */
    const char *bad[2] = {"k", "sideways"};
    r = PQexecParams(a, "SELECT pgwarden_lock($1, $2)", 2, NULL, bad, NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "22023");
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT 1"), "1");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT pgwarden_unlock_all()"), "1");
    PQfinish(a);
    PQfinish(b);
    stop();
}

/* A pipeline that mixes ordinary statements and lock calls is answered in order. */
static void test_pipeline_mixed(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2));
    PGconn *a = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQenterPipelineMode(a), 1);
    const char *v1[1] = {"pipe:1"};
    CU_ASSERT_EQUAL(PQsendQueryParams(a, "SELECT 11", 0, NULL, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(
        PQsendQueryParams(a, "SELECT pgwarden_lock($1, 'write')", 1, NULL, v1, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQsendQueryParams(a, "SELECT 22", 0, NULL, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(
        PQsendQueryParams(a, "SELECT * FROM pgwarden_locks()", 0, NULL, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQpipelineSync(a), 1);
    const char *want[] = {"11", "#", "22", "pipe:1"};
    for (int i = 0; i < 4; i++) {
        PGresult *r = itu_wait_result(a, 10000);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
            if (want[i][0] == '#') {
                CU_ASSERT(atoll(PQgetvalue(r, 0, 0)) > 0);
            } else {
                CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), want[i]);
            }
        } else {
            fprintf(stderr, "pipeline result %d: %s %s\n", i, PQresStatus(PQresultStatus(r)),
                    PQresultErrorMessage(r));
        }
        PQclear(r);
    }
    PGresult *r = itu_wait_result(a, 10000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_PIPELINE_SYNC);
    PQclear(r);
    /* an error before a lock call in the same pipeline: the lock call is skipped */
    CU_ASSERT_EQUAL(PQsendQueryParams(a, "SELECT 1/0", 0, NULL, NULL, NULL, NULL, 0), 1);
    const char *v2[1] = {"pipe:2"};
    CU_ASSERT_EQUAL(
        PQsendQueryParams(a, "SELECT pgwarden_lock($1, 'write')", 1, NULL, v2, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQpipelineSync(a), 1);
    r = itu_wait_result(a, 10000);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "22012");
    PQclear(r);
    r = itu_wait_result(a, 10000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_PIPELINE_ABORTED);
    PQclear(r);
    r = itu_wait_result(a, 10000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_PIPELINE_SYNC);
    PQclear(r);
    CU_ASSERT_EQUAL(PQexitPipelineMode(a), 1);
    /* pipe:2 was never taken */
    PGresult *rr = PQexec(a, "SELECT * FROM pgwarden_locks()");
    CU_ASSERT_EQUAL(PQntuples(rr), 1);
    PQclear(rr);
    PQfinish(a);
    stop();
}

/* ---- 3. inside transaction blocks ----------------------------------------------------- */

/* A direct connection to PostgreSQL (not through pgwarden), to check what was committed. */
static PGconn *direct(void)
{
    PGconn *c = PQconnectdb(harness_cluster_conninfo("sslmode=disable"));
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "direct: %s", PQerrorMessage(c));
    return c;
}

static void test_errors_in_blocks(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2));
    PGconn *a = conn(NULL), *b = conn(NULL), *d = direct();
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_q(d, "DROP TABLE IF EXISTS lk_t"), "DROP TABLE");
    CU_ASSERT_STRING_EQUAL(itu_q(d, "CREATE TABLE lk_t(v int)"), "CREATE TABLE");
    CU_ASSERT(itu_tok(b, "SELECT pgwarden_lock('busy', 'exclusive')") > 0);

    /* 1. the failing lock call is the first statement after BEGIN */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_xact_lock('busy', 'read', 50)"), "!55P03");
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "INSERT INTO lk_t VALUES (1)"), "!25P02");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_try_lock('free', 'read')"), "!25P02");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "ROLLBACK");
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_IDLE);

    /* 2. after real work: the server's transaction is aborted too, nothing commits */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "INSERT INTO lk_t VALUES (2)"), "INSERT 0 1");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_xact_lock('busy', 'sideways')"), "!22023");
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "INSERT INTO lk_t VALUES (3)"), "!25P02");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "ROLLBACK");
    CU_ASSERT_STRING_EQUAL(itu_q(d, "SELECT count(*) FROM lk_t"), "0");

    /* 3. the same by the extended protocol */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "INSERT INTO lk_t VALUES (4)"), "INSERT 0 1");
    const char *v[1] = {"busy"};
    PGresult *r =
        PQexecParams(a, "SELECT pgwarden_xact_lock($1, 'write', 50)", 1, NULL, v, NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "55P03");
    PQclear(r);
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INERROR);
    r = PQexecParams(a, "INSERT INTO lk_t VALUES (5)", 0, NULL, NULL, NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "25P02");
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "ROLLBACK");
    CU_ASSERT_STRING_EQUAL(itu_q(d, "SELECT count(*) FROM lk_t"), "0");

    /* 3b. the failing call by the extended protocol as the block's first statement, and
     * the block's statements by the extended protocol too (BEGIN held back) */
    r = PQexecParams(a, "BEGIN", 0, NULL, NULL, NULL, NULL, 0);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = PQexecParams(a, "SELECT pgwarden_xact_lock($1, 'write', 50)", 1, NULL, v, NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "55P03");
    PQclear(r);
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INERROR);
    r = PQexecParams(a, "INSERT INTO lk_t VALUES (5)", 0, NULL, NULL, NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "25P02");
    PQclear(r);
    r = PQexecParams(a, "COMMIT", 0, NULL, NULL, NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(PQcmdStatus(r), "ROLLBACK");
    PQclear(r);
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_IDLE);
    CU_ASSERT_STRING_EQUAL(itu_q(d, "SELECT count(*) FROM lk_t"), "0");

    /* 4. outside a block, an error changes nothing */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_lock('busy', 'read', 10)"), "!55P03");
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_IDLE);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "INSERT INTO lk_t VALUES (6)"), "INSERT 0 1");
    CU_ASSERT_STRING_EQUAL(itu_q(d, "SELECT count(*) FROM lk_t"), "1");

    /* 5. transaction locks go with the block; a successful block commits */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_xact_lock('acct:1', 'write')") > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "INSERT INTO lk_t VALUES (7)"), "INSERT 0 1");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT pgwarden_try_lock('acct:1', 'write')"), "NULL");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "COMMIT");
    CU_ASSERT(itu_tok(b, "SELECT pgwarden_try_lock('acct:1', 'write')") > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(d, "SELECT count(*) FROM lk_t"), "2");
    /* ROLLBACK releases too, and a block with only lock calls never needs a server */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_xact_lock('acct:2', 'write')") > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "ROLLBACK"), "ROLLBACK");
    CU_ASSERT(itu_tok(b, "SELECT pgwarden_try_lock('acct:2', 'write')") > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(d, "DROP TABLE lk_t"), "DROP TABLE");
    /* the server's transaction of a failed block is aborted on purpose: no retry, no noise */
    CU_ASSERT_FALSE(harness_proxy_log_contains(g_px, "restoring a client's session failed"));
    PQfinish(a);
    PQfinish(b);
    PQfinish(d);
    stop();
}

/* ---- 4. waiting: granted at release, canceled, timed out -------------------------------- */

/* Sends sql without waiting; true when sent. */
static bool qsend(PGconn *c, const char *sql)
{
    return PQsendQuery(c, sql) == 1;
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

static void test_wait_release_cancel(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(3)); /* session mode: one server per client */
    PGconn *a = conn(NULL), *b = conn(NULL), *c = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);

    long long ta = itu_tok(a, "SELECT pgwarden_lock('w', 'exclusive')");
    CU_ASSERT(ta > 0);
    CU_ASSERT(qsend(b, "SELECT pgwarden_lock('w', 'write')"));
    CU_ASSERT_FALSE(ready_within(b, 300)); /* it waits */
    /* b's next statement waits behind its lock call */
    int64_t t0 = itu_now_ms();
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock('w')"), "t");
    PGresult *r = itu_wait_result(b, 5000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT(PQntuples(r) == 1 && atoll(PQgetvalue(r, 0, 0)) > ta);
    CU_ASSERT(itu_now_ms() - t0 < 1000); /* granted at once */
    PQclear(r);

    /* cancel of a waiting client: 57014, as Ctrl-C in psql on pg_advisory_lock */
    CU_ASSERT(qsend(c, "SELECT pgwarden_lock('w', 'exclusive')"));
    CU_ASSERT_FALSE(ready_within(c, 200));
    CU_ASSERT_TRUE(itu_send_cancel(c));
    r = itu_wait_result(c, 5000);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "57014");
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT 5"), "5");
    /* a canceled wait does not hold the key */
    CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT pgwarden_unlock('w')"), "t");
    CU_ASSERT(itu_tok(c, "SELECT pgwarden_try_lock('w', 'exclusive')") > 0);

    /* release at disconnect: the waiter is granted at once */
    CU_ASSERT(qsend(b, "SELECT pgwarden_lock('w', 'read')"));
    CU_ASSERT_FALSE(ready_within(b, 200));
    t0 = itu_now_ms();
    PQfinish(c); /* holder gone */
    CU_ASSERT_TRUE(ready_within(b, 2000));
    CU_ASSERT(itu_now_ms() - t0 < 1000);
    r = itu_wait_result(b, 1000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    /* a holder whose connection just vanishes (no Terminate) releases too */
    int fd = PQsocket(b);
    CU_ASSERT(qsend(a, "SELECT pgwarden_lock('w', 'exclusive', 5000)"));
    CU_ASSERT_FALSE(ready_within(a, 200));
    shutdown(fd, SHUT_RDWR);
    CU_ASSERT_TRUE(ready_within(a, 2000));
    r = itu_wait_result(a, 1000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    PQfinish(b);
    PQfinish(a);
    stop();
}

/* ---- 5. deadlocks: exactly one victim, with a DETAIL ------------------------------------ */

static void test_deadlocks(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(3));
    PGconn *a = conn("application_name=alice"), *b = conn("application_name=bob"),
           *c = conn("application_name=carol");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);

    /* two session locks in opposite order */
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_lock('x', 'exclusive')") > 0);
    CU_ASSERT(itu_tok(b, "SELECT pgwarden_lock('y', 'exclusive')") > 0);
    CU_ASSERT(qsend(a, "SELECT pgwarden_lock('y', 'exclusive')"));
    CU_ASSERT_FALSE(ready_within(a, 200));
    int64_t t0 = itu_now_ms();
    PGresult *r = PQexec(b, "SELECT pgwarden_lock('x', 'exclusive')"); /* closes the cycle */
    CU_ASSERT(itu_now_ms() - t0 < 1000);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "40P01");
    const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
    CU_ASSERT_PTR_NOT_NULL(detail);
    if (detail) {
        CU_ASSERT_PTR_NOT_NULL(strstr(detail, "\"alice\""));
        CU_ASSERT_PTR_NOT_NULL(strstr(detail, "\"bob\""));
        CU_ASSERT_PTR_NOT_NULL(strstr(detail, "\"x\""));
        CU_ASSERT_PTR_NOT_NULL(strstr(detail, "\"y\""));
    }
    PQclear(r);
    CU_ASSERT_FALSE(ready_within(a, 200)); /* one victim only: a still waits */
    CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT pgwarden_unlock_all()"), "1");
    r = itu_wait_result(a, 5000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock_all()"), "2");

    /* two transaction locks: the victim's block fails, the other commits */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "BEGIN"), "BEGIN");
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_xact_lock('x', 'write')") > 0);
    CU_ASSERT(itu_tok(b, "SELECT pgwarden_xact_lock('y', 'write')") > 0);
    CU_ASSERT(qsend(a, "SELECT pgwarden_xact_lock('y', 'write')"));
    CU_ASSERT_FALSE(ready_within(a, 200));
    CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT pgwarden_xact_lock('x', 'write')"), "!40P01");
    CU_ASSERT_EQUAL(PQtransactionStatus(b), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(itu_q(b, "ROLLBACK"), "ROLLBACK");
    r = itu_wait_result(a, 5000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "COMMIT");

    /* two upgrades of a shared key */
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_lock('u', 'read')") > 0);
    CU_ASSERT(itu_tok(b, "SELECT pgwarden_lock('u', 'read')") > 0);
    CU_ASSERT(qsend(a, "SELECT pgwarden_lock('u', 'exclusive')"));
    CU_ASSERT_FALSE(ready_within(a, 200));
    CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT pgwarden_lock('u', 'exclusive')"), "!40P01");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT pgwarden_unlock('u')"), "t");
    r = itu_wait_result(a, 5000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock_all()"), "1");

    /* a cycle of three through a queued exclusive request (a soft edge) */
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_lock('p', 'read')") > 0);
    CU_ASSERT(itu_tok(b, "SELECT pgwarden_lock('q', 'exclusive')") > 0);
    CU_ASSERT(qsend(c, "SELECT pgwarden_lock('p', 'exclusive')")); /* waits for a */
    CU_ASSERT_FALSE(ready_within(c, 200));
    CU_ASSERT(qsend(b, "SELECT pgwarden_lock('p', 'read')")); /* queued behind c: soft edge */
    CU_ASSERT_FALSE(ready_within(b, 200));
    r = PQexec(a, "SELECT pgwarden_lock('q', 'read')"); /* a -> b -> c -> a */
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "40P01");
    PQclear(r);
    CU_ASSERT_FALSE(ready_within(b, 200));
    CU_ASSERT_FALSE(ready_within(c, 100));
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock_all()"), "1"); /* c goes, then b */
    r = itu_wait_result(c, 5000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT pgwarden_unlock_all()"), "1");
    r = itu_wait_result(b, 5000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    PQfinish(a);
    PQfinish(b);
    PQfinish(c);
    stop();
}

/* ---- 6. waiting holds no server (transaction mode) ------------------------------------- */

/* The pool's servers in use, from pg_stat_activity on a direct connection. */
static int backends(PGconn *d)
{
    return atoi(itu_q(d, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'pgwarden_test' "
                         "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
                         "AND application_name <> 'direct'"));
}

#define WAITERS 50

static void test_waiters_hold_no_server(void)
{
    if (strcmp(g_mode, "transaction") != 0)
        return; /* session mode: a client keeps its own server, as expected */
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(5));
    PGconn *holder = conn(NULL),
           *d = PQconnectdb(harness_cluster_conninfo("sslmode=disable application_name=direct"));
    CU_ASSERT_EQUAL_FATAL(PQstatus(holder), CONNECTION_OK);
    CU_ASSERT(itu_tok(holder, "SELECT pgwarden_lock('hot', 'exclusive')") > 0);
    static PGconn *w[WAITERS];
    int sent = 0;
    for (int i = 0; i < WAITERS; i++) {
        w[i] = conn(NULL);
        if (PQstatus(w[i]) != CONNECTION_OK)
            continue;
        /* a transaction: BEGIN (held back), then the lock call, by both protocols */
        if (strcmp(itu_q(w[i], "BEGIN"), "BEGIN") != 0)
            continue;
        const char *v[1] = {"hot"};
        if (i % 2 ? PQsendQuery(w[i], "SELECT pgwarden_xact_lock('hot', 'write')")
                  : PQsendQueryParams(w[i], "SELECT pgwarden_xact_lock($1, 'write')", 1, NULL, v,
                                      NULL, NULL, 0))
            sent++;
    }
    CU_ASSERT_EQUAL(sent, WAITERS);
    itu_sleep_ms(300);
    /* everybody else still gets servers: the pool of 5 is free */
    PGconn *other = conn(NULL);
    int64_t t0 = itu_now_ms();
    for (int i = 0; i < 20; i++)
        CU_ASSERT_STRING_EQUAL(itu_q(other, "SELECT 1"), "1");
    CU_ASSERT(itu_now_ms() - t0 < 3000);
    int busy = backends(d);
    printf("\n    %d waiters, %d backends in use ", sent, busy);
    CU_ASSERT(busy <= 5);
    /* release: the waiters are granted one after another (write excludes write) and each
     * commits its empty block */
    CU_ASSERT_STRING_EQUAL(itu_q(holder, "SELECT pgwarden_unlock('hot')"), "t");
    int granted = 0;
    for (int round = 0; round < WAITERS && granted < WAITERS; round++) {
        for (int i = 0; i < WAITERS; i++) {
            if (!w[i] || !ready_within(w[i], 0))
                continue;
            PGresult *r = itu_wait_result(w[i], 1000);
            if (PQresultStatus(r) == PGRES_TUPLES_OK)
                granted++;
            PQclear(r);
            CU_ASSERT_STRING_EQUAL(itu_q(w[i], "COMMIT"), "COMMIT");
            PQfinish(w[i]);
            w[i] = NULL;
        }
        itu_sleep_ms(10);
    }
    CU_ASSERT_EQUAL(granted, WAITERS);
    for (int i = 0; i < WAITERS; i++)
        PQfinish(w[i]);
    PQfinish(other);
    PQfinish(holder);
    PQfinish(d);
    stop();
}

/* ---- 6b. the extended protocol: answered at once; waiting without a server ------------- */

/* The next result of c (pipeline mode: one query's), as "status:value" in a static buffer:
 * "T:<first value>" for rows, "C:<command tag>", "E:<SQLSTATE>", "S" for a pipeline sync,
 * "A" for a query skipped after an error, "timeout" when none is complete within ms. */
static const char *next_result(PGconn *c, int ms)
{
    static char buf[256];
    PGresult *r = itu_wait_result(c, ms);
    if (!r)
        return "timeout";
    switch (PQresultStatus(r)) {
    case PGRES_TUPLES_OK:
        snprintf(buf, sizeof(buf), "T:%s", PQntuples(r) ? PQgetvalue(r, 0, 0) : "");
        break;
    case PGRES_COMMAND_OK: snprintf(buf, sizeof(buf), "C:%s", PQcmdStatus(r)); break;
    case PGRES_PIPELINE_SYNC: snprintf(buf, sizeof(buf), "S"); break;
    case PGRES_PIPELINE_ABORTED: snprintf(buf, sizeof(buf), "A"); break;
    default: snprintf(buf, sizeof(buf), "E:%s", itu_sqlstate(r)); break;
    }
    PQclear(r);
    return buf;
}

/* True when s is a token result ("T:<positive number>"). */
static bool is_token(const char *s)
{
    return strncmp(s, "T:", 2) == 0 && atoll(s + 2) > 0;
}

/*
 * Parse / Describe / Flush of a lock call, without Sync, is answered at once (asyncpg
 * waits for the ParameterDescription before it sends its Bind), unnamed and named, and so
 * is Bind / Execute / Flush; a client without a server skips what follows an error in its
 * group, long messages included, and gets the rest of its answers in order.
 */
static void test_extended_answered_at_once(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(2));
    PGconn *a = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQenterPipelineMode(a), 1);
    const char *names[2] = {"", "lk_flush"};
    for (int i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL(PQsendPrepare(a, names[i], "SELECT pgwarden_lock($1, $2)", 0, NULL), 1);
        CU_ASSERT_EQUAL(PQsendDescribePrepared(a, names[i]), 1);
        CU_ASSERT_EQUAL(PQsendFlushRequest(a), 1);
        CU_ASSERT_EQUAL(PQflush(a), 0);
        /* no Sync: the answers come at the Flush */
        CU_ASSERT_STRING_EQUAL(next_result(a, 3000), "C:");
        PGresult *r = itu_wait_result(a, 3000);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
        CU_ASSERT_EQUAL(PQnparams(r), 2);
        CU_ASSERT_EQUAL(PQnfields(r), 1);
        PQclear(r);
        const char *v[2] = {"flush:1", "read"};
        CU_ASSERT_EQUAL(PQsendQueryPrepared(a, names[i], 2, v, NULL, NULL, 0), 1);
        CU_ASSERT_EQUAL(PQsendFlushRequest(a), 1);
        CU_ASSERT_EQUAL(PQflush(a), 0);
        CU_ASSERT(is_token(next_result(a, 3000)));
        CU_ASSERT_EQUAL(PQpipelineSync(a), 1);
        CU_ASSERT_STRING_EQUAL(next_result(a, 3000), "S");
    }
    /* an error in the group: the rest is skipped up to Sync (a long Bind too) */
    static char big[100 * 1000];
    memset(big, 'x', sizeof(big) - 1);
    const char *bad[2] = {"flush:2", "sideways"}, *bigv[1] = {big};
    CU_ASSERT_EQUAL(
        PQsendQueryParams(a, "SELECT pgwarden_lock($1, $2)", 2, NULL, bad, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQsendQueryParams(a, "SELECT 1", 0, NULL, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQsendQueryParams(a, "SELECT length($1)", 1, NULL, bigv, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQsendQueryParams(a, "SELECT pgwarden_lock('flush:3', 'read')", 0, NULL, NULL,
                                      NULL, NULL, 0),
                    1);
    CU_ASSERT_EQUAL(PQpipelineSync(a), 1);
    CU_ASSERT_STRING_EQUAL(next_result(a, 3000), "E:22023");
    CU_ASSERT_STRING_EQUAL(next_result(a, 3000), "A");
    CU_ASSERT_STRING_EQUAL(next_result(a, 3000), "A");
    CU_ASSERT_STRING_EQUAL(next_result(a, 3000), "A");
    CU_ASSERT_STRING_EQUAL(next_result(a, 3000), "S");
    /* and then everything goes on: ordinary SQL and the lock calls */
    CU_ASSERT_EQUAL(PQsendQueryParams(a, "SELECT length($1)", 1, NULL, bigv, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(
        PQsendQueryParams(a, "SELECT * FROM pgwarden_locks()", 0, NULL, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQpipelineSync(a), 1);
    CU_ASSERT_STRING_EQUAL(next_result(a, 3000), "T:99999");
    CU_ASSERT_STRING_EQUAL(next_result(a, 3000), "T:flush:1"); /* flush:3 never ran */
    CU_ASSERT_STRING_EQUAL(next_result(a, 3000), "S");
    CU_ASSERT_EQUAL(PQexitPipelineMode(a), 1);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock_all()"), "1");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT 5"), "5");
    PQfinish(a);
    stop();
}

/*
 * How drivers begin a transaction and call the lock function, as libpq can send it:
 *   EXT_BEGIN     BEGIN by the extended protocol, its own group (psycopg 3), then the call
 *   BEGIN_GROUP   BEGIN and the call in one group, one Sync (pgJDBC, autoCommit off)
 *   NAMED_BEGIN   BEGIN as a named statement prepared and executed (pgJDBC after
 *                 prepareThreshold uses), then the call
 *   NAMED_GROUP   BEGIN, then the call as a named statement parsed in the group that
 *                 executes it (node-postgres {name: ...})
 *   NAMED_NOBLOCK the same with a session lock, no transaction block
 *   NAMED_FLUSH   BEGIN, then Parse / Describe / Flush of a named call, then Bind /
 *                 Execute / Sync (asyncpg's prepared statements)
 */
enum begin_style {
    EXT_BEGIN,
    BEGIN_GROUP,
    NAMED_BEGIN,
    NAMED_GROUP,
    NAMED_NOBLOCK,
    NAMED_FLUSH,
    STYLES
};
static const char *const style_names[STYLES] = {"EXT_BEGIN",   "BEGIN_GROUP",   "NAMED_BEGIN",
                                                "NAMED_GROUP", "NAMED_NOBLOCK", "NAMED_FLUSH"};

#define LOCK_SQL(fn) "SELECT " fn "($1, 'read')"

/* Starts w's lock call on key in the given style and reads the answers that come before
 * its result (the call waits: the key is taken).  True when all went as expected. */
static bool start_waiter(PGconn *w, enum begin_style st, const char *key)
{
    const char *v[1] = {key};
    const char *sql =
        st == NAMED_NOBLOCK ? LOCK_SQL("pgwarden_lock") : LOCK_SQL("pgwarden_xact_lock");
    PGresult *r;
    bool ok = true;
    switch (st) {
    case EXT_BEGIN:
        r = PQexecParams(w, "BEGIN", 0, NULL, NULL, NULL, NULL, 0);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK && PQtransactionStatus(w) == PQTRANS_INTRANS;
        PQclear(r);
        return ok && PQsendQueryParams(w, sql, 1, NULL, v, NULL, NULL, 0) == 1;
    case BEGIN_GROUP:
        return PQenterPipelineMode(w) == 1 &&
               PQsendQueryParams(w, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1 &&
               PQsendQueryParams(w, sql, 1, NULL, v, NULL, NULL, 0) == 1 &&
               PQpipelineSync(w) == 1 && strcmp(next_result(w, 3000), "C:BEGIN") == 0;
    case NAMED_BEGIN:
        r = PQprepare(w, "lk_begin", "BEGIN", 0, NULL);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        r = PQexecPrepared(w, "lk_begin", 0, NULL, NULL, NULL, 0);
        ok = ok && PQresultStatus(r) == PGRES_COMMAND_OK &&
             PQtransactionStatus(w) == PQTRANS_INTRANS;
        PQclear(r);
        return ok && PQsendQueryParams(w, sql, 1, NULL, v, NULL, NULL, 0) == 1;
    case NAMED_GROUP:
    case NAMED_NOBLOCK:
        if (st == NAMED_GROUP && strcmp(itu_q(w, "BEGIN"), "BEGIN") != 0)
            return false;
        return PQenterPipelineMode(w) == 1 && PQsendPrepare(w, "lk_call", sql, 0, NULL) == 1 &&
               PQsendQueryPrepared(w, "lk_call", 1, v, NULL, NULL, 0) == 1 &&
               PQpipelineSync(w) == 1 && strcmp(next_result(w, 3000), "C:") == 0;
    case NAMED_FLUSH:
        /* no Sync: Parse and Describe are answered at the Flush */
        if (strcmp(itu_q(w, "BEGIN"), "BEGIN") != 0 || PQenterPipelineMode(w) != 1 ||
            PQsendPrepare(w, "lk_call", sql, 0, NULL) != 1 ||
            PQsendDescribePrepared(w, "lk_call") != 1 || PQsendFlushRequest(w) != 1 ||
            PQflush(w) != 0)
            return false;
        ok = strcmp(next_result(w, 3000), "C:") == 0;
        r = itu_wait_result(w, 3000);
        ok = ok && PQresultStatus(r) == PGRES_COMMAND_OK && PQnparams(r) == 1;
        PQclear(r);
        return ok && PQsendQueryPrepared(w, "lk_call", 1, v, NULL, NULL, 0) == 1 &&
               PQpipelineSync(w) == 1;
    default: return false;
    }
}

/* Collects w's grant (the key was released) and ends its transaction.  True when all went
 * as PostgreSQL would answer. */
static bool finish_waiter(PGconn *w, enum begin_style st, const char *key)
{
    bool ok = is_token(next_result(w, 5000));
    if (st != EXT_BEGIN && st != NAMED_BEGIN) { /* pipeline mode */
        ok = strcmp(next_result(w, 5000), "S") == 0 && ok;
        ok = PQexitPipelineMode(w) == 1 && ok;
    }
    if (st == NAMED_NOBLOCK) {
        char sql[128];
        snprintf(sql, sizeof(sql), "SELECT pgwarden_unlock('%s')", key);
        return strcmp(itu_q(w, sql), "t") == 0 && ok;
    }
    ok = strcmp(itu_q(w, "COMMIT"), "COMMIT") == 0 && ok;
    if (st == NAMED_BEGIN) {
        /* the named BEGIN, answered by pgwarden, exists on the server that gets a Bind of
         * it: in one group with real work, on a server */
        ok = PQenterPipelineMode(w) == 1 && ok;
        ok = PQsendQueryParams(w, "SELECT 1", 0, NULL, NULL, NULL, NULL, 0) == 1 && ok;
        ok = PQsendQueryPrepared(w, "lk_begin", 0, NULL, NULL, NULL, 0) == 1 && ok;
        ok = PQsendQueryParams(w, "SELECT 2", 0, NULL, NULL, NULL, NULL, 0) == 1 && ok;
        ok = PQpipelineSync(w) == 1 && ok;
        ok = strcmp(next_result(w, 5000), "T:1") == 0 && ok;
        ok = strcmp(next_result(w, 5000), "C:BEGIN") == 0 && ok;
        ok = strcmp(next_result(w, 5000), "T:2") == 0 && ok;
        ok = strcmp(next_result(w, 5000), "S") == 0 && ok;
        ok = PQexitPipelineMode(w) == 1 && ok;
        ok = PQtransactionStatus(w) == PQTRANS_INTRANS && ok;
        ok = strcmp(itu_q(w, "COMMIT"), "COMMIT") == 0 && ok;
    }
    return ok;
}

#define STYLE_WAITERS 3

/* Every style, each on a pgwarden of its own: STYLE_WAITERS clients wait for a key; in
 * transaction pooling, with a pool of 2, another client still gets its answers at once
 * (the waiters hold no server), and the waiters are granted and finish their transactions
 * when the key is released. */
static void test_waiters_extended_hold_no_server(void)
{
    bool txn = strcmp(g_mode, "transaction") == 0;
    for (int st = 0; st < STYLES; st++) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(start(txn ? 2 : 3 * STYLE_WAITERS));
        PGconn *holder = conn(NULL), *other = conn(NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(holder), CONNECTION_OK);
        CU_ASSERT_EQUAL_FATAL(PQstatus(other), CONNECTION_OK);
        const char *key = style_names[st];
        char sql[128];
        snprintf(sql, sizeof(sql), "SELECT pgwarden_lock('%s', 'exclusive')", key);
        CU_ASSERT(itu_tok(holder, sql) > 0);
        PGconn *w[STYLE_WAITERS];
        int waiting = 0;
        for (int i = 0; i < STYLE_WAITERS; i++) {
            w[i] = conn(NULL);
            if (PQstatus(w[i]) == CONNECTION_OK && start_waiter(w[i], (enum begin_style)st, key) &&
                !ready_within(w[i], 0))
                waiting++;
        }
        CU_ASSERT_EQUAL(waiting, STYLE_WAITERS);
        itu_sleep_ms(100);
        for (int i = 0; i < STYLE_WAITERS; i++)
            CU_ASSERT_FALSE(ready_within(w[i], 0)); /* still waiting */
        if (txn) {
            /* the pool of 2 serves another client while they wait */
            bool served = true;
            for (int i = 0; i < 10 && served; i++)
                served = qsend(other, "SELECT 1") && ready_within(other, 3000) &&
                         strcmp(next_result(other, 100), "T:1") == 0;
            if (!served)
                fprintf(stderr, "\n    %s: waiters hold servers\n", style_names[st]);
            CU_ASSERT_TRUE(served);
        }
        snprintf(sql, sizeof(sql), "SELECT pgwarden_unlock('%s')", key);
        CU_ASSERT_STRING_EQUAL(itu_q(holder, sql), "t");
        for (int i = 0; i < STYLE_WAITERS; i++) {
            bool ok = finish_waiter(w[i], (enum begin_style)st, key);
            if (!ok)
                fprintf(stderr, "\n    %s: waiter %d did not finish as expected\n", style_names[st],
                        i);
            CU_ASSERT_TRUE(ok);
            PQfinish(w[i]);
        }
        PQfinish(other);
        PQfinish(holder);
        stop();
    }
}

/* ---- 7. read-modify-write under a lock: no lost update ---------------------------------- */

#define RMW_CLIENTS 100

static void test_read_modify_write(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(strcmp(g_mode, "transaction") ? RMW_CLIENTS + 2 : 5));
    PGconn *d = direct();
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_q(d, "DROP TABLE IF EXISTS lk_acct"), "DROP TABLE");
    CU_ASSERT_STRING_EQUAL(itu_q(d, "CREATE TABLE lk_acct(id int primary key, balance int)"),
                           "CREATE TABLE");
    CU_ASSERT_STRING_EQUAL(itu_q(d, "INSERT INTO lk_acct VALUES (1, 0)"), "INSERT 0 1");
    static PGconn *cs[RMW_CLIENTS];
    int ok = 0;
    for (int i = 0; i < RMW_CLIENTS; i++)
        cs[i] = conn(NULL);
    /* each client: BEGIN; lock; read; write read+1; COMMIT -- all at once, interleaved
     * step by step (the lock serialises them) */
    enum { S_BEGIN, S_LOCK, S_READ, S_WRITE, S_COMMIT, S_DONE } st[RMW_CLIENTS] = {0};
    int value[RMW_CLIENTS] = {0};
    int64_t until = itu_now_ms() + 60000;
    int done = 0;
    for (int i = 0; i < RMW_CLIENTS; i++)
        if (PQstatus(cs[i]) != CONNECTION_OK || !qsend(cs[i], "BEGIN"))
            st[i] = S_DONE, done++;
    while (done < RMW_CLIENTS && itu_now_ms() < until) {
        for (int i = 0; i < RMW_CLIENTS; i++) {
            if (st[i] == S_DONE || !ready_within(cs[i], 0))
                continue;
            PGresult *r = itu_wait_result(cs[i], 1000);
            ExecStatusType rs = PQresultStatus(r);
            bool good = rs == PGRES_COMMAND_OK || rs == PGRES_TUPLES_OK;
            if (st[i] == S_READ && good)
                value[i] = atoi(PQgetvalue(r, 0, 0));
            PQclear(r);
            if (!good) {
                fprintf(stderr, "client %d step %d: %s", i, st[i], PQerrorMessage(cs[i]));
                st[i] = S_DONE;
                done++;
                continue;
            }
            char sql[128];
            switch (st[i]) {
            case S_BEGIN: qsend(cs[i], "SELECT pgwarden_xact_lock('acct:1', 'write')"); break;
            case S_LOCK: qsend(cs[i], "SELECT balance FROM lk_acct WHERE id = 1"); break;
            case S_READ:
                snprintf(sql, sizeof(sql), "UPDATE lk_acct SET balance = %d WHERE id = 1",
                         value[i] + 1);
                qsend(cs[i], sql);
                break;
            case S_WRITE: qsend(cs[i], "COMMIT"); break;
            case S_COMMIT: ok++, done++; break;
            default: break;
            }
            st[i]++;
        }
        itu_sleep_ms(1);
    }
    CU_ASSERT_EQUAL(ok, RMW_CLIENTS);
    CU_ASSERT_EQUAL(atoi(itu_q(d, "SELECT balance FROM lk_acct WHERE id = 1")), ok);
    printf("\n    %d read-modify-writes, balance %s ", ok,
           itu_q(d, "SELECT balance FROM lk_acct WHERE id = 1"));
    itu_q(d, "DROP TABLE lk_acct");
    for (int i = 0; i < RMW_CLIENTS; i++)
        PQfinish(cs[i]);
    PQfinish(d);
    stop();
}

/* ---- 8. fencing tokens across a restart, and the lock table's limit ---------------------- */

static void test_tokens_across_restart(void)
{
    char dir[] = "/tmp/pgw-lockstate-XXXXXX", path[256], tail[400];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/lockstate", dir);
    snprintf(tail, sizeof(tail), "[locks]\nstate_file = %s\nmax_locks = 3\n", path);
    /* a missing state file is an error at start, never silently new tokens */
    alarm(TEST_LIMIT_S);
    struct harness_proxy_opts o = {
        .pool_mode = g_mode, .pool_size = 2, .client_tls_mode = "disable", .tail_extra = tail};
    struct harness_proxy *px = harness_proxy_prepare(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    CU_ASSERT_NOT_EQUAL(harness_proxy_launch(px), 0);
    const char *init[] = {harness_pgwarden_path(), "-c", px->config_path, "--init-lock-state",
                          NULL};
    CU_ASSERT_EQUAL(harness_run(init, 10000, NULL), 0);
    harness_proxy_free(px);
    long long last = 0;
    for (int run = 0; run < 2; run++) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(start_opts(2, tail));
        PGconn *a = conn(NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
        long long t = itu_tok(a, "SELECT pgwarden_lock('fence', 'write')");
        CU_ASSERT(t > last);
        last = t;
        /* max_locks = 3: the fourth lock is refused with 53200 */
        CU_ASSERT(itu_tok(a, "SELECT pgwarden_lock('k2', 'read')") > t);
        CU_ASSERT(itu_tok(a, "SELECT pgwarden_lock('k3', 'read')") > t);
        CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_lock('k4', 'read')"), "!53200");
        PQfinish(a);
        stop();
    }
    unlink(path);
    rmdir(dir);
}

/* ---- lock-call portals end with their transaction ------------------------------------- */

/* Appends Parse(unnamed, sql) Bind(portal) Execute(portal) Sync, or only Execute + Sync
 * when sql is NULL, to buf. */
static bool raw_group(uint8_t *buf, size_t cap, size_t *len, const char *sql, const char *portal)
{
    uint8_t body[512];
    size_t n;
    if (sql) {
        n = (size_t)snprintf((char *)body, sizeof(body), "%c%s", '\0', sql) + 1;
        body[n++] = 0, body[n++] = 0; /* no parameter types */
        if (!itw_msg(buf, cap, len, 'P', body, n))
            return false;
        n = (size_t)snprintf((char *)body, sizeof(body), "%s", portal) + 1;
        body[n++] = '\0';       /* the unnamed statement */
        memset(body + n, 0, 6); /* no formats, no parameters, no result formats */
        if (!itw_msg(buf, cap, len, 'B', body, n + 6))
            return false;
    }
    n = (size_t)snprintf((char *)body, sizeof(body), "%s", portal) + 1;
    memset(body + n, 0, 4); /* all rows */
    return itw_msg(buf, cap, len, 'E', body, n + 4) && itw_msg(buf, cap, len, 'S', NULL, 0);
}

/* Sends what buf holds and reads up to ReadyForQuery: its status, or '?'.  sqlstate gets
 * the first error's code ("" when none); *rows the DataRows. */
static char raw_round(int fd, const uint8_t *msgs, size_t len, char sqlstate[6], int *rows)
{
    uint8_t in[8192];
    sqlstate[0] = '\0';
    *rows = 0;
    if (harness_raw_send(fd, msgs, len, 5000) < 0)
        return '?';
    ssize_t got = itw_recv_until(fd, in, sizeof(in), "Z", 10000);
    size_t blen, off = 0;
    const uint8_t *z = got > 0 ? itw_find(in, (size_t)got, 'Z', &blen) : NULL;
    if (!z || blen < 1)
        return '?';
    if (itw_find(in, (size_t)got, 'E', NULL))
        itw_error_field(in, (size_t)got, 'C', sqlstate, 6);
    while (off + 5 <= (size_t)got) {
        *rows += in[off] == 'D';
        off += 1 + itw_get32(in + off + 1);
    }
    return (char)z[0];
}

/*
 * A portal of a lock call ends with its transaction, as PostgreSQL's portals do: an Execute
 * of it afterwards gets 34000 from PostgreSQL, never the call again nor a silent "SELECT 0"
 * (it used to live until the client bound another portal of that name).  Inside the block
 * it lives on: a second Execute is PostgreSQL's "no more rows" (CommandComplete, no row).
 */
static void test_portals_end_with_transaction(void)
{
    alarm(TEST_LIMIT_S);
    struct harness_proxy_opts o = {.pool_mode = g_mode,
                                   .pool_size = 2,
                                   .auth_type = "trust",
                                   .client_tls_mode = "disable",
                                   .log_level = getenv("ITEST_DEBUG") ? "debug" : "info"};
    g_px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g_px);
    int fd = harness_raw_connect(g_px->port, 5000);
    CU_ASSERT_FATAL(fd >= 0);
    uint8_t buf[2048];
    size_t len = harness_build_startup(buf, sizeof(buf), "pgwarden_test", "pgwarden_test");
    CU_ASSERT_FATAL(harness_raw_send(fd, buf, len, 5000) == 0);
    ssize_t got = itw_recv_until(fd, buf, sizeof(buf), "ZE", 10000);
    CU_ASSERT_FATAL(got > 0 && itw_find(buf, (size_t)got, 'Z', NULL));
    char state[6];
    int rows;

    /* an implicit transaction: it ends at the group's Sync */
    len = 0;
    CU_ASSERT_FATAL(
        raw_group(buf, sizeof(buf), &len, "SELECT pgwarden_try_lock('portal:a', 'write')", ""));
    CU_ASSERT_EQUAL(raw_round(fd, buf, len, state, &rows), 'I');
    CU_ASSERT_STRING_EQUAL(state, "");
    CU_ASSERT_EQUAL(rows, 1);
    len = 0;
    CU_ASSERT_FATAL(raw_group(buf, sizeof(buf), &len, NULL, ""));
    CU_ASSERT_EQUAL(raw_round(fd, buf, len, state, &rows), 'I');
    CU_ASSERT_STRING_EQUAL(state, "34000");
    CU_ASSERT_EQUAL(rows, 0);

    /* a block: the named portal lives until COMMIT */
    len = 0;
    CU_ASSERT_FATAL(itw_msg(buf, sizeof(buf), &len, 'Q', "BEGIN", 6));
    CU_ASSERT_EQUAL(raw_round(fd, buf, len, state, &rows), 'T');
    len = 0;
    CU_ASSERT_FATAL(raw_group(buf, sizeof(buf), &len,
                              "SELECT pgwarden_try_xact_lock('portal:b', 'write')", "p1"));
    CU_ASSERT_EQUAL(raw_round(fd, buf, len, state, &rows), 'T');
    CU_ASSERT_STRING_EQUAL(state, "");
    CU_ASSERT_EQUAL(rows, 1);
    len = 0;
    CU_ASSERT_FATAL(raw_group(buf, sizeof(buf), &len, NULL, "p1"));
    CU_ASSERT_EQUAL(raw_round(fd, buf, len, state, &rows), 'T');
    CU_ASSERT_STRING_EQUAL(state, "");
    CU_ASSERT_EQUAL(rows, 0);
    len = 0;
    CU_ASSERT_FATAL(itw_msg(buf, sizeof(buf), &len, 'Q', "COMMIT", 7));
    CU_ASSERT_EQUAL(raw_round(fd, buf, len, state, &rows), 'I');
    len = 0;
    CU_ASSERT_FATAL(raw_group(buf, sizeof(buf), &len, NULL, "p1"));
    CU_ASSERT_EQUAL(raw_round(fd, buf, len, state, &rows), 'I');
    CU_ASSERT_STRING_EQUAL(state, "34000");
    CU_ASSERT_EQUAL(rows, 0);
    close(fd);
    stop();
}

/* ---- a block ended with a new one chained behind ----------------------------------------- */

/* Whether b can take key now (a try lock, given back at once). */
static bool free_for(PGconn *b, const char *key)
{
    char sql[200];
    snprintf(sql, sizeof(sql), "SELECT pgwarden_try_lock('%s', 'write')", key);
    const char *got = itu_q(b, sql);
    if (!strcmp(got, "NULL"))
        return false;
    snprintf(sql, sizeof(sql), "SELECT pgwarden_unlock('%s')", key);
    CU_ASSERT_STRING_EQUAL(itu_q(b, sql), "t");
    return true;
}

/*
 * A block's transaction locks go when the block ends, also when a new block starts in the
 * same reply: COMMIT / ROLLBACK AND CHAIN, and COMMIT; BEGIN in one Query (they stayed
 * until the chained block ended: with retry off for COMMIT, always for ROLLBACK).  A
 * ROLLBACK TO SAVEPOINT ends no block: the lock stays until COMMIT.
 */
static void chained_end(const char *tail)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start_opts(2, tail));
    PGconn *a = conn(NULL), *b = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    static const char *const ends[] = {"COMMIT AND CHAIN", "ROLLBACK AND CHAIN", "COMMIT; BEGIN",
                                       "ROLLBACK; BEGIN"};
    for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++) {
        CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
        CU_ASSERT(itu_tok(a, "SELECT pgwarden_xact_lock('chain:k', 'write')") > 0);
        CU_ASSERT_FALSE(free_for(b, "chain:k"));
        PQclear(PQexec(a, ends[i]));
        CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INTRANS);
        bool released = free_for(b, "chain:k");
        if (!released)
            fprintf(stderr, "\n    still held after %s", ends[i]);
        CU_ASSERT_TRUE(released);
        CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "COMMIT");
    }
    /* the new block fails at once: the old one was committed all the same */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_xact_lock('chain:k', 'write')") > 0);
    PQclear(PQexec(a, "COMMIT; BEGIN; SELECT 1/0"));
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INERROR);
    CU_ASSERT_TRUE(free_for(b, "chain:k"));
    CU_ASSERT_STRING_EQUAL(itu_q(a, "ROLLBACK"), "ROLLBACK");
    /* the extended protocol's COMMIT AND CHAIN (with retry on, the retry stage sees it) */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_xact_lock('chain:k', 'write')") > 0);
    PQclear(PQexecParams(a, "COMMIT AND CHAIN", 0, NULL, NULL, NULL, NULL, 0));
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INTRANS);
    CU_ASSERT_TRUE(free_for(b, "chain:k"));
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "COMMIT");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SAVEPOINT s"), "SAVEPOINT");
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_xact_lock('chain:k', 'write')") > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "ROLLBACK TO SAVEPOINT s"), "ROLLBACK");
    CU_ASSERT_FALSE(free_for(b, "chain:k"));
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "COMMIT");
    CU_ASSERT_TRUE(free_for(b, "chain:k"));
    PQfinish(a);
    PQfinish(b);
    stop();
}

static void test_chained_end_releases(void)
{
    chained_end(NULL);                          /* retry on, the default */
    chained_end("[retry]\nmax_attempts = 1\n"); /* retry off */
}

static void register_suites(void)
{
    static CU_TestInfo tests[] = {
        {"functions_simple", test_functions_simple},
        {"functions_extended", test_functions_extended},
        {"pipeline_mixed", test_pipeline_mixed},
        {"errors_in_blocks", test_errors_in_blocks},
        {"wait_release_cancel", test_wait_release_cancel},
        {"deadlocks", test_deadlocks},
        {"waiters_hold_no_server", test_waiters_hold_no_server},
        {"extended_answered_at_once", test_extended_answered_at_once},
        {"waiters_extended_hold_no_server", test_waiters_extended_hold_no_server},
        {"read_modify_write", test_read_modify_write},
        {"tokens_across_restart", test_tokens_across_restart},
        {"portals_end_with_transaction", test_portals_end_with_transaction},
        {"chained_end_releases", test_chained_end_releases},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("locks_session", suite_init_session, suite_cleanup, tests);
    cunit_add_suite("locks_transaction", suite_init_txn, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
