/*
 * test_batch.c: query batching in transaction pooling (server_query_batch, proxy/batch.h)
 * with libpq clients on a real PostgreSQL.
 *
 * The batches are made deterministic with a pool of one server: a blocker holds it while
 * the other clients send their queries in a fixed order and wait; when the blocker's query
 * ends, the first waiting client gets the server and the ones behind it join its batch.
 * What is checked is what the clients see: every client gets its own reply (rows, errors,
 * settings), a client that vanishes mid-batch costs the others nothing, a cancel reaches
 * the batched client's own query and not the one running before it, and many clients on
 * a small pool all get correct answers.  pgwarden runs with log_level = debug so that each
 * test can also check that batching happened at all ("query batched behind").
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_util.h"

#define TEST_LIMIT_S 120
#define BATCH        4

static struct harness_proxy *g_px;

static void on_watchdog(int sig)
{
    (void)sig;
    static const char msg[] = "\ntest_batch: a test ran too long: stopping\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)w;
    if (g_px)
        harness_proxy_dump_log(g_px, 40);
    _exit(3);
}

static int suite_init(void)
{
    struct sigaction sa = {.sa_handler = on_watchdog};
    sigaction(SIGALRM, &sa, NULL);
    return itu_suite_init();
}

static int suite_cleanup(void)
{
    alarm(0);
    harness_proxy_free(g_px);
    g_px = NULL;
    return 0;
}

static bool start_with(int pool_size, int max_client_conn, const char *more)
{
    harness_proxy_free(g_px);
    alarm(TEST_LIMIT_S);
    static char extra[256];
    snprintf(extra, sizeof(extra), "server_query_batch = %d\n%s", BATCH, more ? more : "");
    struct harness_proxy_opts o = {.pool_mode = "transaction",
                                   .pool_size = pool_size,
                                   .auth_type = "scram-sha-256",
                                   .max_client_conn = max_client_conn,
                                   .query_wait_timeout_ms = 30000,
                                   .log_level = "debug",
                                   .pgwarden_extra = extra};
    g_px = harness_proxy_start(&o);
    return g_px != NULL;
}

static bool start(int pool_size, int max_client_conn)
{
    return start_with(pool_size, max_client_conn, NULL);
}

static void stop(void)
{
    CU_ASSERT_EQUAL(itu_proxy_stop_free(g_px), 0);
    g_px = NULL;
    alarm(0);
}

static PGconn *conn(const char *extra)
{
    char ci[256];
    snprintf(ci, sizeof(ci), "sslmode=disable %s", extra ? extra : "");
    PGconn *c = harness_connect(g_px, ci);
    if (c && PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "connect failed: %s", PQerrorMessage(c));
    return c;
}

/* True when r is a one-row result whose column col is want. */
static bool value_is(const PGresult *r, int col, const char *want)
{
    if (!r || PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) <= col) {
        fprintf(stderr, "unexpected result: %s %s", r ? PQresStatus(PQresultStatus(r)) : "none",
                r ? PQresultErrorMessage(r) : "\n");
        return false;
    }
    if (strcmp(PQgetvalue(r, 0, col), want) != 0) {
        fprintf(stderr, "got \"%s\", want \"%s\"\n", PQgetvalue(r, 0, col), want);
        return false;
    }
    return true;
}

/* Sends sql on c and lets it reach pgwarden before the next client's (queue order). */
static void send_in_order(PGconn *c, const char *sql)
{
    CU_ASSERT_EQUAL_FATAL(PQsendQuery(c, sql), 1);
    itu_sleep_ms(30);
}

/* ---- 1. every batched client gets its own reply ----------------------------------------- */

static void test_own_replies(void)
{
    CU_ASSERT_TRUE_FATAL(start(1, 50));
    PGconn *blocker = conn(NULL), *c[6];
    CU_ASSERT_EQUAL_FATAL(PQstatus(blocker), CONNECTION_OK);
    for (int i = 0; i < 6; i++) {
        c[i] = conn(i == 3 ? "options='-c TimeZone=Asia/Tokyo'" : NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(c[i]), CONNECTION_OK);
    }
    char tz[64];
    itu_value_copy(tz, sizeof(tz), c[0], "SHOW TimeZone");
    CU_ASSERT_STRING_NOT_EQUAL(tz, "Asia/Tokyo");
    CU_ASSERT_TRUE(itu_exec_ok(c[5], "SET TimeZone = 'America/Lima'"));

    /* The blocker holds the one server; the others queue in this order.  c[0] gets the
     * server next and c[1], c[2] join its batch; c[3] (another TimeZone) does not, and c[4]
     * waits behind it; c[5] changed its TimeZone with SET. */
    send_in_order(blocker, "SELECT pg_sleep(0.5)");
    send_in_order(c[0], "SELECT 0, current_setting('TimeZone')");
    send_in_order(c[1], "SELECT 1/0");
    send_in_order(c[2], "SELECT g FROM generate_series(1, 5000) g");
    send_in_order(c[3], "SELECT 3, current_setting('TimeZone')");
    send_in_order(c[4], "SELECT 4, current_setting('TimeZone')");
    send_in_order(c[5], "SELECT 5, current_setting('TimeZone')");

    PGresult *r = itu_wait_result(blocker, 10000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    r = itu_wait_result(c[0], 10000);
    CU_ASSERT_TRUE(value_is(r, 0, "0") && value_is(r, 1, tz));
    PQclear(r);
    r = itu_wait_result(c[1], 10000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_FATAL_ERROR);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "22012");
    PQclear(r);
    r = itu_wait_result(c[2], 10000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT_EQUAL(PQntuples(r), 5000);
    if (PQntuples(r) == 5000)
        CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 4999, 0), "5000");
    PQclear(r);
    r = itu_wait_result(c[3], 10000);
    CU_ASSERT_TRUE(value_is(r, 0, "3") && value_is(r, 1, "Asia/Tokyo"));
    PQclear(r);
    r = itu_wait_result(c[4], 10000);
    CU_ASSERT_TRUE(value_is(r, 0, "4") && value_is(r, 1, tz));
    PQclear(r);
    r = itu_wait_result(c[5], 10000);
    CU_ASSERT_TRUE(value_is(r, 0, "5") && value_is(r, 1, "America/Lima"));
    PQclear(r);

    /* Each goes on as usual: the failed one is not in a failed transaction. */
    for (int i = 0; i < 6; i++)
        CU_ASSERT_EQUAL(PQtransactionStatus(c[i]), PQTRANS_IDLE);
    CU_ASSERT_STRING_EQUAL(itu_value(c[1], "SELECT 'after the error'"), "after the error");
    CU_ASSERT_STRING_EQUAL(itu_value(c[3], "SHOW TimeZone"), "Asia/Tokyo");
    CU_ASSERT_STRING_EQUAL(itu_value(c[0], "SHOW TimeZone"), tz);
    CU_ASSERT_TRUE(harness_proxy_log_contains(g_px, "query batched behind"));

    PQfinish(blocker);
    for (int i = 0; i < 6; i++)
        PQfinish(c[i]);
    stop();
}

/* ---- 2. clients that vanish from a batch ------------------------------------------------ */

static void vanish(PGconn *c)
{
    shutdown(PQsocket(c), SHUT_RDWR);
    PQfinish(c);
}

static void test_clients_vanish(void)
{
    CU_ASSERT_TRUE_FATAL(start(1, 50));
    PGconn *blocker = conn(NULL), *head = conn(NULL), *r[3];
    CU_ASSERT_EQUAL_FATAL(PQstatus(blocker), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(head), CONNECTION_OK);
    for (int i = 0; i < 3; i++) {
        r[i] = conn(NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(r[i]), CONNECTION_OK);
    }
    send_in_order(blocker, "SELECT pg_sleep(0.4)");
    send_in_order(head, "SELECT pg_sleep(0.8), 'head'");
    send_in_order(r[0], "SELECT 'r0'");
    send_in_order(r[1], "SELECT 'r1'");
    send_in_order(r[2], "SELECT 'r2'");
    PGresult *res = itu_wait_result(blocker, 10000);
    CU_ASSERT_EQUAL(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    /* head's query runs now, r0..r2 are batched behind it: head and r1 vanish. */
    itu_sleep_ms(200);
    vanish(head);
    vanish(r[1]);
    int64_t t0 = itu_now_ms();
    res = itu_wait_result(r[0], 10000);
    CU_ASSERT_TRUE(value_is(res, 0, "r0"));
    PQclear(res);
    res = itu_wait_result(r[2], 10000);
    CU_ASSERT_TRUE(value_is(res, 0, "r2"));
    PQclear(res);
    printf("\n    the batch's other clients answered %lld ms after two left ",
           (long long)(itu_now_ms() - t0));
    CU_ASSERT_TRUE(harness_proxy_log_contains(g_px, "query batched behind"));

    /* The server is clean and serves the next clients; still one server connection. */
    CU_ASSERT_EQUAL(PQtransactionStatus(r[0]), PQTRANS_IDLE);
    CU_ASSERT_STRING_EQUAL(itu_value(r[0], "SELECT txid_current_if_assigned() IS NULL"), "t");
    PGconn *late = conn(NULL);
    CU_ASSERT_STRING_EQUAL(itu_value(late, "SELECT 'late'"), "late");
    PGconn *mon = harness_connect_info(harness_cluster_conninfo("sslmode=disable"));
    CU_ASSERT_STRING_EQUAL(
        itu_value(mon, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                       "current_database() AND backend_type = 'client backend' AND pid <> "
                       "pg_backend_pid()"),
        "1");
    PQfinish(mon);
    PQfinish(late);
    PQfinish(blocker);
    PQfinish(r[0]);
    PQfinish(r[2]);
    stop();
}

/* ---- 3. a batched client's cancel hits its own query ------------------------------------ */

static void test_cancel_batched(void)
{
    CU_ASSERT_TRUE_FATAL(start(1, 50));
    PGconn *blocker = conn(NULL), *head = conn(NULL), *c = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(blocker), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(head), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    send_in_order(blocker, "SELECT pg_sleep(0.3)");
    send_in_order(head, "SELECT pg_sleep(1), 'head not canceled'");
    send_in_order(c, "SELECT pg_sleep(20)");
    PGresult *r = itu_wait_result(blocker, 10000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    /* head's query runs, c's is batched behind it: c cancels. */
    itu_sleep_ms(200);
    int64_t t0 = itu_now_ms();
    CU_ASSERT_TRUE(itu_send_cancel(c));
    r = itu_wait_result(head, 10000);
    CU_ASSERT_TRUE(value_is(r, 1, "head not canceled"));
    PQclear(r);
    r = itu_wait_result(c, 10000);
    int64_t took = itu_now_ms() - t0;
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_FATAL_ERROR);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "57014");
    PQclear(r);
    printf("\n    batched query canceled %lld ms after the cancel request ", (long long)took);
    CU_ASSERT(took < 5000);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'c again'"), "c again");
    CU_ASSERT_TRUE(harness_proxy_log_contains(g_px, "query batched behind"));
    PQfinish(blocker);
    PQfinish(head);
    PQfinish(c);
    stop();
}

/* ---- 4. many clients, a small pool ------------------------------------------------------ */

#define MANY      200
#define MANY_POOL 4
#define MANY_Q    20

struct mc {
    PGconn *conn;
    int id, done;
    bool busy, failed;
};

/* Runs MANY_Q queries on each of the n clients k, each client's next query once the
 * previous one is answered, all of them at once: send(m) sends client m's query number
 * m->done, right(m, r) says whether r is its answer.  Returns the clients that failed
 * (stopped at their first wrong answer or lost connection); 60 s at most. */
static int drive_many(struct mc *k, int n, bool (*send)(const struct mc *m),
                      bool (*right)(const struct mc *m, const PGresult *r))
{
    int64_t deadline = itu_now_ms() + 60000;
    int finished = 0, failures = 0;
    struct pollfd *pfd = calloc((size_t)n, sizeof(*pfd));
    while (pfd && finished < n && itu_now_ms() < deadline) {
        for (int i = 0; i < n; i++) {
            struct mc *m = &k[i];
            if (m->busy || m->failed || m->done == MANY_Q)
                continue;
            if (!send(m)) {
                m->failed = true;
                failures++;
                finished++;
                continue;
            }
            m->busy = true;
        }
        for (int i = 0; i < n; i++)
            pfd[i] = (struct pollfd){.fd = k[i].busy ? PQsocket(k[i].conn) : -1, .events = POLLIN};
        if (poll(pfd, (nfds_t)n, 100) < 0)
            break;
        for (int i = 0; i < n; i++) {
            struct mc *m = &k[i];
            if (!m->busy || !(pfd[i].revents & (POLLIN | POLLERR | POLLHUP)))
                continue;
            if (!PQconsumeInput(m->conn)) {
                m->busy = false;
                m->failed = true;
                failures++;
                finished++;
                continue;
            }
            if (PQisBusy(m->conn))
                continue;
            PGresult *r;
            bool ok = false;
            while ((r = PQgetResult(m->conn)) != NULL) {
                ok = ok || right(m, r);
                PQclear(r);
            }
            m->busy = false;
            if (!ok) {
                m->failed = true;
                failures++;
                finished++;
            } else if (++m->done == MANY_Q) {
                finished++;
            }
        }
    }
    free(pfd);
    return failures;
}

/* SELECT id * 1000 + done, by a simple Query. */
static bool send_simple(const struct mc *m)
{
    char sql[64];
    snprintf(sql, sizeof(sql), "SELECT %d * 1000 + %d", m->id, m->done);
    return PQsendQuery(m->conn, sql);
}

static bool right_simple(const struct mc *m, const PGresult *r)
{
    char want[32];
    snprintf(want, sizeof(want), "%d", m->id * 1000 + m->done);
    return PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
           !strcmp(PQgetvalue(r, 0, 0), want);
}

static void test_many_clients(void)
{
    (void)itu_raise_nofile(2 * MANY + 100);
    CU_ASSERT_TRUE_FATAL(start(MANY_POOL, MANY + 20));
    static struct mc k[MANY];
    int connected = 0;
    for (int i = 0; i < MANY; i++) {
        k[i] = (struct mc){.conn = conn(NULL), .id = i + 1};
        connected += PQstatus(k[i].conn) == CONNECTION_OK;
    }
    CU_ASSERT_EQUAL_FATAL(connected, MANY);
    int failures = drive_many(k, MANY, send_simple, right_simple);
    int queries = 0;
    for (int i = 0; i < MANY; i++) {
        queries += k[i].done;
        PQfinish(k[i].conn);
    }
    printf("\n    %d clients x %d queries on a pool of %d: %d answered right, %d failed ", MANY,
           MANY_Q, MANY_POOL, queries, failures);
    CU_ASSERT_EQUAL(failures, 0);
    CU_ASSERT_EQUAL(queries, MANY * MANY_Q);
    CU_ASSERT_TRUE(harness_proxy_log_contains(g_px, "query batched behind"));
    stop();
}

/* ---- 5. extended-protocol groups ------------------------------------------------------- */

/* pgwarden's log line of a batched extended-protocol group (batch.c). */
#define EXT_BATCHED "queued, extended protocol)"

/* Sends sql with one text parameter by the extended protocol (Parse/Bind/Describe/Execute/
 * Sync of the unnamed statement), in queue order as send_in_order. */
static void send_params_in_order(PGconn *c, const char *sql, const char *param)
{
    const char *values[1] = {param};
    CU_ASSERT_EQUAL_FATAL(PQsendQueryParams(c, sql, param ? 1 : 0, NULL, values, NULL, NULL, 0), 1);
    itu_sleep_ms(30);
}

/* Bind/Describe/Execute/Sync of c's prepared statement name, in queue order. */
static void send_prepared_in_order(PGconn *c, const char *name, const char *param)
{
    const char *values[1] = {param};
    CU_ASSERT_EQUAL_FATAL(PQsendQueryPrepared(c, name, 1, values, NULL, NULL, 0), 1);
    itu_sleep_ms(30);
}

static void expect_error(PGconn *c, const char *sqlstate)
{
    PGresult *r = itu_wait_result(c, 10000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_FATAL_ERROR);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), sqlstate);
    PQclear(r);
}

static void expect_value(PGconn *c, int col, const char *want)
{
    PGresult *r = itu_wait_result(c, 10000);
    CU_ASSERT_TRUE(value_is(r, col, want));
    PQclear(r);
}

/* One autocommit group per client, batched: each gets its own rows, an error (at Execute,
 * at Bind) ends its own group only, and the failing clients go on. */
static void test_ext_own_replies(void)
{
    CU_ASSERT_TRUE_FATAL(start(1, 50));
    PGconn *blocker = conn(NULL), *c[6];
    CU_ASSERT_EQUAL_FATAL(PQstatus(blocker), CONNECTION_OK);
    for (int i = 0; i < 6; i++) {
        c[i] = conn(NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(c[i]), CONNECTION_OK);
    }
    PGresult *r = PQprepare(c[4], "q", "SELECT $1::int * 10, 'prepared'", 0, NULL);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);

    /* c[0] gets the server after the blocker, c[1..3] join its batch (BATCH = 4); c[4]
     * opens the next one and c[5] joins it. */
    send_in_order(blocker, "SELECT pg_sleep(0.5)");
    send_params_in_order(c[0], "SELECT $1::int, 'c0'", "0");
    send_params_in_order(c[1], "SELECT 10 / $1::int", "0");
    send_params_in_order(c[2], "SELECT g FROM generate_series(1, $1::int) g", "3000");
    send_params_in_order(c[3], "SELECT $1::int", "not a number");
    send_prepared_in_order(c[4], "q", "4");
    send_params_in_order(c[5], "SELECT $1::text || '!'", "c5");

    r = itu_wait_result(blocker, 10000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    expect_value(c[0], 1, "c0");
    expect_error(c[1], "22012"); /* at Execute */
    r = itu_wait_result(c[2], 10000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT_EQUAL(PQntuples(r), 3000);
    if (PQntuples(r) == 3000)
        CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 2999, 0), "3000");
    PQclear(r);
    expect_error(c[3], "22P02"); /* at Bind */
    expect_value(c[4], 0, "40");
    expect_value(c[5], 0, "c5!");

    for (int i = 0; i < 6; i++)
        CU_ASSERT_EQUAL(PQtransactionStatus(c[i]), PQTRANS_IDLE);
    const char *values[1] = {"7"};
    r = PQexecParams(c[1], "SELECT 14 / $1::int", 1, NULL, values, NULL, NULL, 0);
    CU_ASSERT_TRUE(value_is(r, 0, "2"));
    PQclear(r);
    r = PQexecPrepared(c[4], "q", 1, values, NULL, NULL, 0);
    CU_ASSERT_TRUE(value_is(r, 0, "70"));
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_value(c[3], "SELECT 'after the error'"), "after the error");
    CU_ASSERT_TRUE(harness_proxy_log_contains(g_px, EXT_BATCHED));

    PQfinish(blocker);
    for (int i = 0; i < 6; i++)
        PQfinish(c[i]);
    stop();
}

/* Named statements prepared earlier, on a server that no longer has them (at most 2 per
 * server connection): pgwarden prepares them again (hidden) inside the batch. */
static void test_ext_prepared_reprepared(void)
{
    CU_ASSERT_TRUE_FATAL(start_with(1, 50, "max_prepared_statements = 2\n"));
    PGconn *blocker = conn(NULL), *c[6];
    CU_ASSERT_EQUAL_FATAL(PQstatus(blocker), CONNECTION_OK);
    for (int i = 0; i < 6; i++) {
        c[i] = conn(NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(c[i]), CONNECTION_OK);
        char sql[80];
        snprintf(sql, sizeof(sql), "SELECT $1::int + %d, 'k%d'", 100 * i, i);
        PGresult *r = PQprepare(c[i], "st", sql, 0, NULL);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
        PQclear(r);
    }
    for (int round = 0; round < 3; round++) {
        send_in_order(blocker, "SELECT pg_sleep(0.3)");
        for (int i = 0; i < 6; i++) {
            char p[16];
            snprintf(p, sizeof(p), "%d", round);
            send_prepared_in_order(c[i], "st", p);
        }
        PGresult *r = itu_wait_result(blocker, 10000);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
        PQclear(r);
        for (int i = 0; i < 6; i++) {
            char want0[16], want1[16];
            snprintf(want0, sizeof(want0), "%d", 100 * i + round);
            snprintf(want1, sizeof(want1), "k%d", i);
            r = itu_wait_result(c[i], 10000);
            CU_ASSERT_TRUE(value_is(r, 0, want0) && value_is(r, 1, want1));
            PQclear(r);
        }
    }
    CU_ASSERT_TRUE(harness_proxy_log_contains(g_px, EXT_BATCHED));
    PQfinish(blocker);
    for (int i = 0; i < 6; i++)
        PQfinish(c[i]);
    stop();
}

/* Groups that are not batched (inside a block, two Executes in one group, a utility
 * statement, a Describe alone) wait for a server of their own and work as usual. */
static void test_ext_not_batched(void)
{
    CU_ASSERT_TRUE_FATAL(start(1, 50));
    PGconn *blocker = conn(NULL), *c[5];
    CU_ASSERT_EQUAL_FATAL(PQstatus(blocker), CONNECTION_OK);
    for (int i = 0; i < 5; i++) {
        c[i] = conn(NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(c[i]), CONNECTION_OK);
    }
    PGresult *r = PQprepare(c[4], "d", "SELECT $1::int AS col", 0, NULL);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    CU_ASSERT_TRUE(itu_exec_ok(c[1], "BEGIN"));

    send_in_order(blocker, "SELECT pg_sleep(0.5)");
    send_in_order(c[0], "SELECT 'c0'"); /* a batch opens behind the blocker */
    send_params_in_order(c[1], "SELECT $1::text, txid_current() > 0", "c1 in a block");
    CU_ASSERT_EQUAL_FATAL(PQenterPipelineMode(c[2]), 1);
    const char *v1[1] = {"1"}, *v2[1] = {"2"};
    CU_ASSERT_EQUAL(PQsendQueryParams(c[2], "SELECT $1::int", 1, NULL, v1, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQsendQueryParams(c[2], "SELECT $1::int", 1, NULL, v2, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQpipelineSync(c[2]), 1);
    itu_sleep_ms(30);
    send_params_in_order(c[3], "SHOW TimeZone", NULL);
    CU_ASSERT_EQUAL_FATAL(PQsendDescribePrepared(c[4], "d"), 1);
    itu_sleep_ms(30);

    r = itu_wait_result(blocker, 10000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    expect_value(c[0], 0, "c0");
    expect_value(c[1], 0, "c1 in a block");
    CU_ASSERT_EQUAL(PQtransactionStatus(c[1]), PQTRANS_INTRANS);
    CU_ASSERT_TRUE(itu_exec_ok(c[1], "COMMIT"));
    /* the pipeline: two results, then the Sync */
    for (int i = 1; i <= 2; i++) {
        char want[16];
        snprintf(want, sizeof(want), "%d", i);
        r = itu_wait_result(c[2], 10000); /* this query's result and its NULL */
        CU_ASSERT_TRUE(value_is(r, 0, want));
        PQclear(r);
    }
    r = PQgetResult(c[2]);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_PIPELINE_SYNC);
    PQclear(r);
    CU_ASSERT_EQUAL(PQexitPipelineMode(c[2]), 1);
    r = itu_wait_result(c[3], 10000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    r = itu_wait_result(c[4], 10000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    CU_ASSERT_EQUAL(PQnfields(r), 1);
    if (PQnfields(r) == 1)
        CU_ASSERT_STRING_EQUAL(PQfname(r, 0), "col");
    PQclear(r);
    CU_ASSERT_FALSE(harness_proxy_log_contains(g_px, EXT_BATCHED));
    PQfinish(blocker);
    for (int i = 0; i < 5; i++)
        PQfinish(c[i]);
    stop();
}

/* Many clients on a small pool, each a mix of unnamed (PQexecParams) and named
 * (PQexecPrepared) groups with values of its own. */
#define EXT_MANY 100

/* id * 1000 + done as the parameter of an unnamed (PQexecParams) or, every other query,
 * the named statement "p" (PQexecPrepared): SELECT $1::int * 2, $1::text. */
static bool send_ext(const struct mc *m)
{
    char val[32];
    snprintf(val, sizeof(val), "%d", m->id * 1000 + m->done);
    const char *values[1] = {val};
    return m->done % 2 ? PQsendQueryPrepared(m->conn, "p", 1, values, NULL, NULL, 0)
                       : PQsendQueryParams(m->conn, "SELECT $1::int * 2, $1::text", 1, NULL, values,
                                           NULL, NULL, 0);
}

static bool right_ext(const struct mc *m, const PGresult *r)
{
    char want0[32], want1[32];
    snprintf(want0, sizeof(want0), "%d", 2 * (m->id * 1000 + m->done));
    snprintf(want1, sizeof(want1), "%d", m->id * 1000 + m->done);
    return PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
           !strcmp(PQgetvalue(r, 0, 0), want0) && !strcmp(PQgetvalue(r, 0, 1), want1);
}

static void test_ext_many_clients(void)
{
    (void)itu_raise_nofile(2 * EXT_MANY + 100);
    CU_ASSERT_TRUE_FATAL(start(MANY_POOL, EXT_MANY + 20));
    static struct mc k[EXT_MANY];
    int connected = 0;
    for (int i = 0; i < EXT_MANY; i++) {
        k[i] = (struct mc){.conn = conn(NULL), .id = i + 1};
        connected += PQstatus(k[i].conn) == CONNECTION_OK;
        PGresult *r = PQprepare(k[i].conn, "p", "SELECT $1::int * 2, $1::text", 0, NULL);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
        PQclear(r);
    }
    CU_ASSERT_EQUAL_FATAL(connected, EXT_MANY);
    int failures = drive_many(k, EXT_MANY, send_ext, right_ext);
    int queries = 0;
    for (int i = 0; i < EXT_MANY; i++) {
        queries += k[i].done;
        PQfinish(k[i].conn);
    }
    printf("\n    %d clients x %d extended-protocol queries on a pool of %d: %d right, %d failed ",
           EXT_MANY, MANY_Q, MANY_POOL, queries, failures);
    CU_ASSERT_EQUAL(failures, 0);
    CU_ASSERT_EQUAL(queries, EXT_MANY * MANY_Q);
    CU_ASSERT_TRUE(harness_proxy_log_contains(g_px, EXT_BATCHED));
    stop();
}

/* ---- 6. session state that is not a reported parameter ------------------------------------ */

/* Whether px's log says client C-id's query was batched behind C-leader. */
static bool batched_behind(int id, int leader)
{
    char needle[64];
    snprintf(needle, sizeof(needle), "client C-%d: query batched behind C-%d ", id, leader);
    return harness_proxy_log_contains(g_px, needle);
}

/* Whether px's log says client C-id's query was batched at all. */
static bool batched(int id)
{
    char needle[64];
    snprintf(needle, sizeof(needle), "client C-%d: query batched behind", id);
    return harness_proxy_log_contains(g_px, needle);
}

/* pgwarden's id of the i-th client a test connects (0: its first): C-1 is the harness
 * waiting for the port. */
#define CLIENT_ID(i) ((i) + 2)

/* The state letter of /proc/<pid>/stat: 'T' once the process is stopped; '?' unreadable. */
static char proc_state(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')'); /* the command name may hold spaces */
    return paren && paren[1] == ' ' && paren[2] ? paren[2] : '?';
}

/* Stops pgwarden (SIGSTOP) and waits (2 s at most) until the kernel has it stopped: what
 * clients send from then on waits in its sockets, all of it read when it goes on.  False
 * (and pgwarden continued) when it did not stop. */
static bool proxy_pause(void)
{
    if (harness_proxy_signal(g_px, SIGSTOP) != 0)
        return false;
    for (int64_t until = itu_now_ms() + 2000; proc_state(g_px->pid) != 'T';) {
        if (itu_now_ms() > until) {
            harness_proxy_signal(g_px, SIGCONT);
            return false;
        }
        itu_sleep_ms(1);
    }
    return true;
}

/* What part 2 of test_session_state_not_mixed asks: the setting the query saw, the backend
 * it ran on, and when it ran there (clock_timestamp() in microseconds: the order in which
 * the one server ran the clients' queries). */
#define RAN_SQL                                                                                    \
    "SELECT current_setting('work_mem'), pg_backend_pid(), "                                       \
    "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"

struct ran {
    char setting[32];
    long long pid, at;
};

static struct ran ran_of(PGresult *r)
{
    struct ran out = {"", -1, -1};
    if (r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQnfields(r) == 3) {
        snprintf(out.setting, sizeof(out.setting), "%s", PQgetvalue(r, 0, 0));
        out.pid = atoll(PQgetvalue(r, 0, 1));
        out.at = atoll(PQgetvalue(r, 0, 2));
    } else {
        fprintf(stderr, "unexpected result: %s %s", r ? PQresStatus(PQresultStatus(r)) : "none",
                r ? PQresultErrorMessage(r) : "\n");
    }
    PQclear(r);
    return out;
}

/* A batched query runs on its batch's server with no re-sync of its own: a client whose
 * session state (here work_mem, which PostgreSQL does not report) differs from the
 * server's is not batched there, in either direction.
 *
 * 1. A client with state set must not join a server without it (it would see the
 *    default).  The queue behind the blocker: d0 d1 s0 (d: default state, s: work_mem
 *    set).  d0 takes the server and d1 joins its batch (so batching is on); s0 does not,
 *    and runs next with its state restored first; the server keeps it (nobody else used
 *    it since).
 * 2. A default client must not join a server carrying another client's state (it would
 *    see s0's work_mem).  Only a leader whose state the server already carries opens a
 *    batch (a restore runs alone): s0 on that idle server.  s0 runs a query alone first,
 *    so that the one server carries its state.  Then pgwarden is stopped (SIGSTOP, and
 *    /proc must say so) while s0 and then d2 send their queries, so that it reads both in
 *    one loop turn, s0's first: s0 takes the server and opens a batch, d2 must not join
 *    it.  Nothing can join s0's batch (a server's state is one client's), so whether it
 *    formed is checked by its conditions: pgwarden was stopped before s0 sent and still
 *    stopped after d2 sent, s0 ran on the backend it had just used, and before d2 did.
 *    Otherwise the round proved nothing, and is run again (3 rounds at most).  A last
 *    round with two default clients shows that this set-up does batch when the states
 *    agree (d1 joins d2's batch). */
static void test_session_state_not_mixed(void)
{
    CU_ASSERT_TRUE_FATAL(start(1, 50));
    PGconn *blocker = conn(NULL), *c[4];
    CU_ASSERT_EQUAL_FATAL(PQstatus(blocker), CONNECTION_OK);
    static const bool set[4] = {false, false, true, false}; /* d0 d1 s0 d2 */
    char dflt[32];
    for (int i = 0; i < 4; i++) {
        c[i] = conn(NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(c[i]), CONNECTION_OK);
        if (set[i])
            CU_ASSERT_TRUE(itu_exec_ok(c[i], "SET work_mem = '7MB'"));
    }
    itu_value_copy(dflt, sizeof(dflt), c[0], "SHOW work_mem");
    CU_ASSERT_STRING_NOT_EQUAL(dflt, "7MB");
    int id[4];
    for (int i = 0; i < 4; i++)
        id[i] = CLIENT_ID(i + 1); /* the blocker connected first */

    /* 1 */
    send_in_order(blocker, "SELECT pg_sleep(0.5)");
    send_in_order(c[0], "SELECT current_setting('work_mem')");
    send_in_order(c[1], "SELECT current_setting('work_mem')");
    send_params_in_order(c[2], "SELECT current_setting($1)", "work_mem");
    PGresult *r = itu_wait_result(blocker, 10000);
    PQclear(r);
    for (int i = 0; i < 3; i++)
        expect_value(c[i], 0, set[i] ? "7MB" : dflt);
    CU_ASSERT_TRUE(batched_behind(id[1], id[0])); /* same (default) state: batched */
    CU_ASSERT_FALSE(batched(id[2]));              /* its state on a server without it */

    /* 2 */
    bool formed = false;
    for (int round = 1; round <= 3 && !formed; round++) {
        char backend[32];
        itu_value_copy(backend, sizeof(backend), c[2], "SELECT pg_backend_pid()"); /* alone */
        bool stopped = proxy_pause();
        CU_ASSERT_EQUAL(PQsendQuery(c[2], RAN_SQL), 1);
        CU_ASSERT_EQUAL(PQsendQuery(c[3], RAN_SQL), 1);
        stopped = stopped && proc_state(g_px->pid) == 'T';
        CU_ASSERT_EQUAL_FATAL(harness_proxy_signal(g_px, SIGCONT), 0);
        struct ran s0 = ran_of(itu_wait_result(c[2], 10000));
        struct ran d2 = ran_of(itu_wait_result(c[3], 10000));
        CU_ASSERT_STRING_EQUAL(s0.setting, "7MB");
        CU_ASSERT_STRING_EQUAL(d2.setting, dflt);
        CU_ASSERT_FALSE(batched(id[3])); /* default state on a server with s0's */
        formed = stopped && s0.pid == atoll(backend) && s0.at > 0 && s0.at < d2.at;
        if (!formed)
            printf("\n    round %d did not set up s0's batch (stopped: %d, s0 on backend %lld "
                   "after %s, s0 at %lld, d2 at %lld): again ",
                   round, stopped, s0.pid, backend, s0.at, d2.at);
    }
    CU_ASSERT_TRUE(formed); /* else part 2 checked nothing */

    /* The control: d2 (now on a server without s0's state) and then d1, in one turn. */
    bool stopped = proxy_pause();
    CU_ASSERT_TRUE(stopped);
    CU_ASSERT_EQUAL(PQsendQuery(c[3], RAN_SQL), 1);
    CU_ASSERT_EQUAL(PQsendQuery(c[1], RAN_SQL), 1);
    CU_ASSERT_EQUAL_FATAL(harness_proxy_signal(g_px, SIGCONT), 0);
    CU_ASSERT_STRING_EQUAL(ran_of(itu_wait_result(c[3], 10000)).setting, dflt);
    CU_ASSERT_STRING_EQUAL(ran_of(itu_wait_result(c[1], 10000)).setting, dflt);
    CU_ASSERT_TRUE(batched_behind(id[1], id[3]));
    PQfinish(blocker);
    for (int i = 0; i < 4; i++)
        PQfinish(c[i]);
    stop();
}

/* ---- 7. a retryable error in a batched statement ------------------------------------------- */

/* Each client's first call fails with 40001 (a sequence per client counts the calls): the
 * retry stage replays it (retry is on by default), batched or not.  The three clients
 * behind the first are batched behind it (the log line only a batch join writes), and
 * their errors, held back as any retryable one, are decided when the batch moves on to
 * the next client (px_batch_next), not by the relay: each is replayed and verified. */
static void test_retry_in_batch(void)
{
    CU_ASSERT_TRUE_FATAL(start(1, 50));
    PGconn *d = harness_connect_info(harness_cluster_conninfo("sslmode=disable"));
    CU_ASSERT_TRUE(itu_exec_ok(d, "SET client_min_messages = warning"));
    CU_ASSERT_TRUE(itu_exec_ok(
        d, "CREATE OR REPLACE FUNCTION bt_flaky(k int) RETURNS int LANGUAGE plpgsql AS $$ "
           "BEGIN IF nextval('bt_seq_' || k) = 1 THEN "
           "RAISE EXCEPTION 'pretend conflict' USING ERRCODE = '40001'; END IF; "
           "RETURN k; END $$"));
    for (int i = 0; i < 4; i++) {
        char sql[96];
        snprintf(sql, sizeof(sql), "DROP SEQUENCE IF EXISTS bt_seq_%d; CREATE SEQUENCE bt_seq_%d",
                 i, i);
        CU_ASSERT_TRUE(itu_exec_ok(d, sql));
    }
    PGconn *blocker = conn(NULL), *c[4];
    CU_ASSERT_EQUAL_FATAL(PQstatus(blocker), CONNECTION_OK);
    for (int i = 0; i < 4; i++) {
        c[i] = conn(NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(c[i]), CONNECTION_OK);
    }
    send_in_order(blocker, "SELECT pg_sleep(0.5)");
    send_in_order(c[0], "SELECT bt_flaky(0)");
    send_params_in_order(c[1], "SELECT bt_flaky($1::int)", "1");
    send_in_order(c[2], "SELECT bt_flaky(2)");
    send_params_in_order(c[3], "SELECT bt_flaky($1::int)", "3");
    PGresult *r = itu_wait_result(blocker, 10000);
    PQclear(r);
    for (int i = 0; i < 4; i++) {
        char want[16];
        snprintf(want, sizeof(want), "%d", i);
        expect_value(c[i], 0, want);
    }
    int lead = CLIENT_ID(1); /* c[0]: the blocker connected first */
    for (int i = 1; i < 4; i++) {
        int id = CLIENT_ID(1 + i);
        char held[64], matched[64];
        snprintf(held, sizeof(held), "retry C-%d: 40001: holding it back", id);
        snprintf(matched, sizeof(matched), "retry C-%d: the replay matched", id);
        CU_ASSERT_TRUE(batched_behind(id, lead));
        CU_ASSERT_TRUE(harness_proxy_log_contains(g_px, held));
        CU_ASSERT_TRUE(harness_proxy_log_contains(g_px, matched));
    }
    CU_ASSERT_STRING_EQUAL(itu_value(c[1], "SELECT bt_flaky(1)"), "1");
    PQfinish(blocker);
    for (int i = 0; i < 4; i++)
        PQfinish(c[i]);
    PQfinish(d);
    stop();
}

static void register_suites(void)
{
    static const CU_TestInfo tests[] = {
        {"batched_clients_get_their_own_replies", test_own_replies},
        {"clients_vanish_from_a_batch", test_clients_vanish},
        {"cancel_of_a_batched_client", test_cancel_batched},
        {"many_clients_small_pool_batched", test_many_clients},
        {"extended_groups_get_their_own_replies", test_ext_own_replies},
        {"extended_prepared_statements_prepared_again", test_ext_prepared_reprepared},
        {"extended_groups_not_batched", test_ext_not_batched},
        {"extended_many_clients_small_pool", test_ext_many_clients},
        {"session_state_not_mixed_in_a_batch", test_session_state_not_mixed},
        {"retryable_error_in_a_batch", test_retry_in_batch},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("batch", suite_init, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
