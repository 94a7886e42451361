/*
 * test_hardening.c: what one client must not be able to do to pgwarden or to other clients
 * (issue 12), on the statement path, with libpq and raw-protocol clients on a real
 * PostgreSQL:
 *   1. a cancel that hits a hidden re-sync query: 57014 for that one statement, the session
 *      intact, pgwarden alive;
 *   2. an invalid message type: one FATAL 08P01 for that client, nothing for the others;
 *   3. another client's DEALLOCATE / Close of pgwarden's server-side statement names, and
 *      Bind "" without one's own Parse, break nobody's prepared statements;
 *   4. a late cancel never cancels the query of the server's next client;
 *   5. a client that vanishes mid-query leaves no backend running;
 *   6. PostgreSQL restarted and backends terminated under pgbench;
 *   7. a pipeline whose early statement fails;
 *   8. clients that vanish right at accept time (before, with or in the middle of their
 *      startup packet, by FIN or by RST) cost an ordinary client nothing and leak nothing.
 *
 * Every test starts its own pgwarden and stops it at the end.
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_http.h"
#include "itest_util.h"
#include "itest_wire.h"

#define TEST_LIMIT_S 120

static struct harness_proxy *g_px;

static int suite_init(void)
{
    itu_watchdog("test_hardening", &g_px, 1, 40);
    return itu_suite_init();
}

static int suite_cleanup(void)
{
    alarm(0);
    if (g_px)
        harness_proxy_free(g_px);
    g_px = NULL;
    return 0;
}

static struct harness_proxy *start_auth(const char *mode, int pool_size, const char *extra,
                                        const char *auth)
{
    alarm(TEST_LIMIT_S);
    struct harness_proxy_opts o = {.pool_mode = mode,
                                   .pool_size = pool_size,
                                   .auth_type = auth,
                                   .client_tls_mode = "disable",
                                   .log_level = "info",
                                   .admin = true,
                                   .pgwarden_extra = extra};
    g_px = harness_proxy_start(&o);
    return g_px;
}

static struct harness_proxy *start(const char *mode, int pool_size, const char *extra)
{
    return start_auth(mode, pool_size, extra, "scram-sha-256");
}

/* How many lines of this test's pgwarden log contain needle. */
static int log_count(const char *needle)
{
    FILE *f = fopen(g_px->log_path, "r");
    if (!f)
        return -1;
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

/* Stops this test's pgwarden: it must still be alive and exit cleanly. */
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
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s", PQerrorMessage(c));
        harness_proxy_dump_log(g_px, 20);
        char cmd[700];
        snprintf(cmd, sizeof(cmd), "tail -n 15 %s/postgres.log >&2", harness_cluster()->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "no postgres.log\n");
    }
    return c;
}

/* ---- 1. a cancel that hits a hidden re-sync query ------------------------------------- */

/*
 * Two clients with different application_name share one server, so every link re-syncs
 * it with a hidden SET; each sends a query and at once a cancel.  Whatever the cancel
 * hits, the client sees its query's result or 57014 for that query, never a lost
 * connection, and its session is its own afterwards.
 */
static void test_cancel_hits_resync(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 1, NULL));
    PGconn *a = conn("application_name=alpha"), *b = conn("application_name=beta");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    int ok = 0, canceled = 0, other = 0;
    int64_t until = itu_now_ms() + 8000;
    for (int round = 0; itu_now_ms() < until && !other; round++) {
        PGconn *cs[2] = {a, b};
        for (int i = 0; i < 2; i++)
            CU_ASSERT_EQUAL(PQsendQuery(cs[i], "SELECT 1"), 1);
        for (int i = 0; i < 2; i++)
            itu_send_cancel(cs[i]);
        for (int i = 0; i < 2; i++) {
            PGresult *r = itu_wait_result(cs[i], 10000);
            if (r && PQresultStatus(r) == PGRES_TUPLES_OK)
                ok++;
            else if (r && !strcmp(itu_sqlstate(r), "57014"))
                canceled++;
            else {
                other++;
                fprintf(stderr, "round %d client %d: %s / %s", round, i,
                        r ? itu_sqlstate(r) : "no result", PQerrorMessage(cs[i]));
            }
            PQclear(r);
        }
    }
    printf("\n    %d answered, %d canceled, %d hidden re-syncs hit ", ok, canceled,
           log_count("restoring a client's session failed"));
    CU_ASSERT_EQUAL(other, 0);
    CU_ASSERT_EQUAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SHOW application_name"), "alpha");
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SHOW application_name"), "beta");
    PQfinish(a);
    PQfinish(b);
    stop();
}

/*
 * The backend is terminated while pgwarden restores a client's session on it: the client
 * gets PostgreSQL's own FATAL 57P01, not a made-up error, and the other client carries on.
 * The backend is stopped (SIGSTOP) so that the termination lands exactly on the hidden
 * re-sync.
 */
static void test_terminated_during_resync(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 1, NULL));
    PGconn *a = conn("application_name=alpha"), *b = conn("application_name=beta");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    int pid = atoi(itu_value(a, "SELECT pg_backend_pid()"));
    CU_ASSERT_FATAL(pid > 0);
    CU_ASSERT_EQUAL_FATAL(kill(pid, SIGSTOP), 0);
    CU_ASSERT_EQUAL(PQsendQuery(b, "SELECT 2"), 1); /* re-sync SET application_name first */
    itu_sleep_ms(300);
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%d)", pid);
    CU_ASSERT_EQUAL(harness_cluster_exec(sql), 0);
    CU_ASSERT_EQUAL(kill(pid, SIGCONT), 0);
    PGresult *r = itu_wait_result(b, 10000);
    /* libpq hands a FATAL followed by the end of the connection over as its error message */
    if (r)
        CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "57P01");
    CU_ASSERT_PTR_NOT_NULL(strstr(PQerrorMessage(b), "FATAL:  terminating connection due to "
                                                     "administrator command"));
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 3"), "3");
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SHOW application_name"), "alpha");
    PQfinish(a);
    PQfinish(b);
    stop();
}

/* ---- 4. a late cancel never cancels the next client's query ---------------------------- */

/*
 * A client pipelines four long queries and leaves: pgwarden cancels each abandoned query in
 * turn while it drains the server (it cancelled only the one running when the client left,
 * and the pool's only server then ran the other three, about 12 s, for nobody).
 */
static void test_abandoned_pipeline_cancelled(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 1, "query_wait_timeout_ms = 30000"));
    PGconn *a = harness_connect(g_px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQenterPipelineMode(a), 1);
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(PQsendQueryParams(a, "SELECT pg_sleep(4)", 0, NULL, NULL, NULL, NULL, 0),
                        1);
        CU_ASSERT_EQUAL(PQpipelineSync(a), 1);
    }
    CU_ASSERT_EQUAL(PQflush(a), 0);
    itu_sleep_ms(300);
    PQfinish(a);
    int64_t t0 = itu_now_ms();
    PGconn *b = harness_connect(g_px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SELECT 'served'"), "served");
    int64_t waited = itu_now_ms() - t0;
    printf("\n    next client served after %lld ms ", (long long)waited);
    CU_ASSERT(waited < 3000);
    PQfinish(b);
    stop();
}

/*
 * Client a runs short queries and sends a cancel just after each answer (too late: its
 * query is done); client b keeps a query running on the same single server.  Forwarded
 * late, a's cancel would hit b's query whenever the server went to b in between.
 */
static void test_late_cancel_spares_next_client(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 1, NULL));
    PGconn *a = conn(NULL), *b = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    int a_done = 0, b_done = 0, b_canceled = 0, errors = 0;
    bool b_busy = false;
    int64_t until = itu_now_ms() + 5000;
    unsigned seed = 42;
    while (itu_now_ms() < until && !errors) {
        /* b always has a query queued or running */
        if (!PQconsumeInput(b)) {
            errors++;
            break;
        }
        while (b_busy && !PQisBusy(b)) {
            PGresult *rb = PQgetResult(b);
            if (!rb) {
                b_busy = false;
                break;
            }
            if (PQresultStatus(rb) == PGRES_TUPLES_OK)
                b_done++;
            else if (!strcmp(itu_sqlstate(rb), "57014"))
                b_canceled++;
            else
                errors++;
            PQclear(rb);
        }
        if (!b_busy) {
            CU_ASSERT_EQUAL(PQsendQuery(b, "SELECT pg_sleep(0.002)"), 1);
            b_busy = true;
        }
        /* a's cancel races with the end of its query: it lands during it, or after it */
        CU_ASSERT_EQUAL(PQsendQuery(a, "SELECT pg_sleep(0.002)"), 1);
        itu_sleep_ms(2 + (int)(rand_r(&seed) % 4));
        itu_send_cancel(a);
        PGresult *r = itu_wait_result(a, 10000);
        if (r && PQresultStatus(r) == PGRES_TUPLES_OK)
            a_done++;
        else if (!r || strcmp(itu_sqlstate(r), "57014") != 0)
            errors++;
        PQclear(r);
    }
    PQclear(itu_wait_result(b, 10000));
    printf("\n    a: %d answered, b: %d answered, %d of b's canceled ", a_done, b_done, b_canceled);
    CU_ASSERT_EQUAL(errors, 0);
    CU_ASSERT_EQUAL(b_canceled, 0);
    CU_ASSERT(b_done > 20);
    PQfinish(a);
    PQfinish(b);
    stop();
}

/* ---- raw clients ------------------------------------------------------------------------- */

/* Logs in (trust) and reads up to ReadyForQuery; the socket, or -1. */
static int raw_login(void)
{
    int fd = harness_raw_connect(g_px->port, 5000);
    if (fd < 0)
        return -1;
    uint8_t buf[4096];
    size_t n = harness_build_startup(buf, sizeof(buf), "pgwarden_test", "pgwarden_test");
    ssize_t got;
    if (harness_raw_send(fd, buf, n, 5000) < 0 ||
        (got = itw_recv_until(fd, buf, sizeof(buf), "ZE", 10000)) <= 0 ||
        !itw_find(buf, (size_t)got, 'Z', NULL)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends the messages in buf and reads the answer up to a message of a type in stop; returns
 * its length (answer in out), or -1.  *closed: the connection ended. */
static ssize_t raw_exchange(int fd, const uint8_t *msgs, size_t len, uint8_t *out, size_t cap,
                            const char *stop, bool *closed)
{
    if (harness_raw_send(fd, msgs, len, 5000) < 0)
        return -1;
    ssize_t got = itw_recv_until(fd, out, cap, stop, 5000);
    uint8_t more[64];
    *closed = harness_raw_recv(fd, more, sizeof(more), 300, NULL) == 0;
    return got;
}

/* ---- 2. an invalid message type ---------------------------------------------------------- */

/*
 * A client sends a message type that does not exist ('z'), or a PasswordMessage after its
 * login: pgwarden answers one FATAL 08P01 "invalid frontend message type" and closes that
 * connection, and no other client notices (a forwarded invalid message used to make
 * PostgreSQL end the backend the next client got).
 */
static void check_invalid_type(const char *mode)
{
    /* session mode: b keeps a server, the raw clients get the other */
    CU_ASSERT_PTR_NOT_NULL_FATAL(start_auth(mode, strcmp(mode, "session") ? 1 : 2, NULL, "trust"));
    PGconn *b = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    int bad = 0;
    for (int round = 0; round < 10; round++) {
        int fd = raw_login();
        CU_ASSERT_FATAL(fd >= 0);
        uint8_t msg[64], out[2048];
        size_t len = 0;
        itw_msg(msg, sizeof(msg), &len, round % 2 ? 'p' : 'z', "x", 1);
        bool closed = false;
        ssize_t got = raw_exchange(fd, msg, len, out, sizeof(out), "E", &closed);
        char code[8] = "", text[256] = "", sev[16] = "";
        if (got > 0) {
            itw_error_field(out, (size_t)got, 'C', code, sizeof(code));
            itw_error_field(out, (size_t)got, 'M', text, sizeof(text));
            itw_error_field(out, (size_t)got, 'V', sev, sizeof(sev));
        }
        CU_ASSERT_STRING_EQUAL(code, "08P01");
        CU_ASSERT_STRING_EQUAL(sev, "FATAL");
        CU_ASSERT_PTR_NOT_NULL(strstr(text, "invalid frontend message type"));
        /* exactly one error */
        size_t end = 0;
        CU_ASSERT_TRUE(got > 0 && itw_complete(out, (size_t)got, "E", &end) &&
                       !itw_find(out + end, (size_t)got - end, 'E', NULL));
        CU_ASSERT_TRUE(closed);
        close(fd);
        if (strcmp(itu_value(b, "SELECT 1"), "1") != 0)
            bad++;
    }
    CU_ASSERT_EQUAL(bad, 0);
    PQfinish(b);
    stop();
}

static void test_invalid_type_transaction(void)
{
    check_invalid_type("transaction");
}

static void test_invalid_type_session(void)
{
    check_invalid_type("session");
}

/* ---- 3. other clients' statements --------------------------------------------------------- */

/*
 * Transaction mode, one server: another client deallocates pgwarden's server-side name of
 * a's statement (found in pg_prepared_statements), closes it by the protocol, or runs
 * DEALLOCATE ALL inside a longer query: a's prepared statement still works.  And a client
 * that binds the unnamed statement without parsing it gets 26000, not another client's
 * statement.
 */
static void test_other_clients_statements(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start_auth("transaction", 1, NULL, "trust"));
    PGconn *a = conn(NULL), *b = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    PGresult *r = PQprepare(a, "s1", "SELECT 42", 0, NULL);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    const char *attacks[] = {"DEALLOCATE-NAME", "CLOSE-NAME", "SELECT 1; DEALLOCATE ALL",
                             "SELECT 1; DISCARD ALL"};
    for (size_t i = 0; i < sizeof(attacks) / sizeof(attacks[0]); i++) {
        r = PQexecPrepared(a, "s1", 0, NULL, NULL, NULL, 0);
        CU_ASSERT_STRING_EQUAL(PQntuples(r) ? PQgetvalue(r, 0, 0) : itu_sqlstate(r), "42");
        PQclear(r);
        char name[64];
        itu_value_copy(name, sizeof(name), b,
                       "SELECT name FROM pg_prepared_statements WHERE statement = 'SELECT 42'");
        CU_ASSERT_NOT_EQUAL(name[0], '\0');
        if (!strcmp(attacks[i], "DEALLOCATE-NAME")) {
            char sql[128];
            snprintf(sql, sizeof(sql), "DEALLOCATE \"%s\"", name);
            PQclear(PQexec(b, sql));
        } else if (!strcmp(attacks[i], "CLOSE-NAME")) {
            int fd = raw_login();
            CU_ASSERT_FATAL(fd >= 0);
            uint8_t msg[256], out[2048], body[128];
            size_t len = 0,
                   bl = (size_t)snprintf((char *)body + 1, sizeof(body) - 1, "%s", name) + 2;
            body[0] = 'S';
            itw_msg(msg, sizeof(msg), &len, 'C', body, bl);
            itw_msg(msg, sizeof(msg), &len, 'S', "", 0);
            bool closed;
            CU_ASSERT(raw_exchange(fd, msg, len, out, sizeof(out), "Z", &closed) > 0);
            close(fd);
        } else {
            PQclear(PQexec(b, attacks[i]));
        }
        r = PQexecPrepared(a, "s1", 0, NULL, NULL, NULL, 0);
        CU_ASSERT_STRING_EQUAL(PQntuples(r) ? PQgetvalue(r, 0, 0) : itu_sqlstate(r), "42");
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            fprintf(stderr, "after %s: %s", attacks[i], PQresultErrorMessage(r));
        PQclear(r);
    }
    /* Bind "" without one's own Parse: PostgreSQL's 26000, never a's unnamed statement */
    r = PQexecParams(a, "SELECT 'secret of a'", 0, NULL, NULL, NULL, NULL, 0);
    PQclear(r);
    int fd = raw_login();
    CU_ASSERT_FATAL(fd >= 0);
    uint8_t msg[256], out[4096];
    size_t len = 0;
    static const uint8_t bind[] = {0, 0, 0, 0, 0, 0, 0, 0}; /* portal "", stmt "", 0,0,0 */
    itw_msg(msg, sizeof(msg), &len, 'B', bind, sizeof(bind));
    itw_msg(msg, sizeof(msg), &len, 'E', "\0\0\0\0", 5);
    itw_msg(msg, sizeof(msg), &len, 'S', "", 0);
    bool closed;
    ssize_t got = raw_exchange(fd, msg, len, out, sizeof(out), "Z", &closed);
    char code[8] = "";
    if (got > 0)
        itw_error_field(out, (size_t)got, 'C', code, sizeof(code));
    CU_ASSERT_STRING_EQUAL(code, "26000");
    CU_ASSERT_PTR_NULL(got > 0 ? itw_find(out, (size_t)got, 'D', NULL) : NULL);
    close(fd);
    PQfinish(a);
    PQfinish(b);
    stop();
}

/* ---- 5. a client that vanishes mid-query ------------------------------------------------- */

/* Backends of the test user running (or holding) anything, seen directly. */
static int busy_backends(PGconn *d, const char *query)
{
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM pg_stat_activity WHERE usename = 'pgwarden_test' AND "
             "pid <> pg_backend_pid()%s%s%s",
             query ? " AND state = 'active' AND query = '" : "", query ? query : "",
             query ? "'" : "");
    return atoi(itu_value(d, sql));
}

/*
 * Clients on a pool of one start a long query and vanish (no Terminate).  pgwarden cancels
 * the query and keeps the server (drained, then reset): no backend goes on running, and
 * the pool never has more backends than pool_size.
 */
static void check_vanishing_clients(const char *mode)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(mode, 1, NULL));
    PGconn *d = PQconnectdb(harness_cluster_conninfo("sslmode=disable"));
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    int most = 0;
    for (int round = 0; round < 5; round++) {
        PGconn *c = conn(NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
        CU_ASSERT_EQUAL(PQsendQuery(c, "SELECT pg_sleep(30)"), 1);
        itu_sleep_ms(300);
        shutdown(PQsocket(c), SHUT_RDWR);
        PQfinish(c);
        /* the cancel takes a few ms; 10 s leaves room for a loaded CI machine and is still
         * far below the 30 s the query would run uncanceled */
        int64_t until = itu_now_ms() + 10000;
        while (busy_backends(d, "SELECT pg_sleep(30)") > 0 && itu_now_ms() < until)
            itu_sleep_ms(50);
        CU_ASSERT_EQUAL(busy_backends(d, "SELECT pg_sleep(30)"), 0);
        int n = busy_backends(d, NULL);
        if (n > most)
            most = n;
    }
    PGconn *c = conn(NULL);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 7"), "7");
    PQfinish(c);
    printf("\n    at most %d backends for a pool of 1 ", most);
    CU_ASSERT(most <= 1);
    PQfinish(d);
    stop();
}

static void test_vanishing_clients_transaction(void)
{
    check_vanishing_clients("transaction");
}

static void test_vanishing_clients_session(void)
{
    check_vanishing_clients("session");
}

/* ---- 6. PostgreSQL restarted and backends terminated under pgbench ---------------------- */

/* Lines of pgbench output that are neither progress nor a PostgreSQL-like error. */
static int strange_lines(const char *out)
{
    int n = 0;
    for (const char *p = out; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char line[512];
        snprintf(line, sizeof(line), "%.*s", (int)(len < 511 ? len : 511), p);
        bool ok = !strstr(line, "ERROR") && !strstr(line, "FATAL") && !strstr(line, "PANIC") &&
                  !strstr(line, "server closed the connection unexpectedly");
        /* A PostgreSQL-like error names the reason as PostgreSQL words it. */
        if (strstr(line, "terminating connection due to administrator command") ||
            strstr(line, "server closed the connection unexpectedly") ||
            strstr(line, "the database system is") || strstr(line, "cannot connect") ||
            strstr(line, "could not connect") || strstr(line, "connection to server") ||
            strstr(line, "Connection refused") || strstr(line, "no server connection") ||
            strstr(line, "is unavailable") ||
            /* session pooling: a COMMIT whose server was lost got its outcome (retry.md),
             * then the session ends with 08006 */
            strstr(line, "server connection lost: the session cannot continue"))
            ok = true;
        if (!ok) {
            fprintf(stderr, "pgbench: %s\n", line);
            n++;
        }
        p = nl ? nl + 1 : NULL;
    }
    return n;
}

/* pgbench through pgwarden while every backend is terminated, then PostgreSQL restarted:
 * pgwarden stays up, clients see PostgreSQL-like errors only, and new transactions work
 * within 2 s of PostgreSQL being back. */
static void check_restart_under_load(const char *mode)
{
    /* The terminated backends and the restart open the circuit breaker (docs/breaker.md);
     * short open periods keep its probe well within the 2 s asked here (the breaker's own
     * recovery is itest_breaker's subject).  The extra lines end [pgwarden] and open
     * [breaker]. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(mode, 10, "[breaker]\nopen_ms = 200\nopen_max_ms = 1000"));
    char dir[] = "/tmp/pgw-fault-XXXXXX", script[300];
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(script, sizeof(script), "%s/load.sql", dir);
    FILE *f = fopen(script, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("BEGIN;\nSELECT count(*) FROM pg_class;\nSELECT pg_sleep(0.001);\nCOMMIT;\n", f);
    fclose(f);
    char pgbench[600], port[16];
    snprintf(pgbench, sizeof(pgbench), "%s/pgbench", harness_cluster()->bindir);
    snprintf(port, sizeof(port), "%d", g_px->port);
    setenv("PGPASSWORD", "test-password", 1);
    setenv("PGSSLMODE", "disable", 1);
    pid_t pid = fork();
    if (pid == 0) {
        const char *argv[] = {
            pgbench, "-n", "-h", "127.0.0.1", "-p", port, "-U",   "pgwarden_test", "-c",
            "8",     "-j", "2",  "-T",        "8",  "-f", script, "pgwarden_test", NULL};
        char out[300];
        snprintf(out, sizeof(out), "%s/pgbench.out", dir);
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(pgbench, (char *const *)argv);
        _exit(127);
    }
    CU_ASSERT_FATAL(pid > 0);
    itu_sleep_ms(2000);
    CU_ASSERT_EQUAL(harness_cluster_exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                         "WHERE usename = 'pgwarden_test'"),
                    0);
    itu_sleep_ms(1500);
    CU_ASSERT_EQUAL(harness_cluster_ctl("restart"), 0);
    int64_t back = itu_now_ms();
    /* new transactions work within 2 s of PostgreSQL being back */
    int64_t served = -1;
    while (itu_now_ms() - back < 10000) {
        PGconn *c = conn("connect_timeout=2");
        if (PQstatus(c) == CONNECTION_OK && !strcmp(itu_value(c, "SELECT 1"), "1")) {
            served = itu_now_ms() - back;
            PQfinish(c);
            break;
        }
        PQfinish(c);
        itu_sleep_ms(100);
    }
    printf("\n    %s mode: first transaction %lld ms after PostgreSQL was back ", mode,
           (long long)served);
    CU_ASSERT(served >= 0 && served <= 2000);
    int status = 0;
    waitpid(pid, &status, 0);
    char path[300];
    snprintf(path, sizeof(path), "%s/pgbench.out", dir);
    char *out = NULL;
    FILE *o = fopen(path, "r");
    if (o) {
        out = calloc(1, 1 << 20);
        if (out)
            (void)fread(out, 1, (1 << 20) - 1, o);
        fclose(o);
    }
    CU_ASSERT_PTR_NOT_NULL(out);
    CU_ASSERT_EQUAL(out ? strange_lines(out) : -1, 0);
    free(out);
    unlink(path);
    unlink(script);
    rmdir(dir);
    stop(); /* alive, and it shuts down cleanly */
}

static void test_restart_under_load_transaction(void)
{
    check_restart_under_load("transaction");
}

static void test_restart_under_load_session(void)
{
    check_restart_under_load("session");
}

/* ---- 7. a pipeline whose early statement fails (issue 17) -------------------------------- */

/*
 * The client sends a failing statement with a Flush, reads its error, and only then sends
 * more of the same pipeline and the Sync: PostgreSQL skips those, and so must pgwarden's
 * bookkeeping (it used to expect replies to them and close the client at the
 * ReadyForQuery: "ReadyForQuery does not match what was sent").
 */
static void check_pipeline_error_then_more(const char *mode)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(mode, 1, NULL));
    PGconn *c = conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    for (int round = 0; round < 3; round++) {
        CU_ASSERT_EQUAL_FATAL(PQenterPipelineMode(c), 1);
        CU_ASSERT_EQUAL(PQsendQueryParams(c, "SELECT 1/0", 0, NULL, NULL, NULL, NULL, 0), 1);
        CU_ASSERT_EQUAL(PQsendFlushRequest(c), 1);
        CU_ASSERT_EQUAL(PQflush(c), 0);
        PGresult *r = itu_wait_result(c, 5000);
        CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "22012");
        PQclear(r);
        /* more of the same pipeline, after the error came back */
        CU_ASSERT_EQUAL(PQsendPrepare(c, "p_after", "SELECT 2", 0, NULL), 1);
        CU_ASSERT_EQUAL(PQsendQueryParams(c, "SELECT 3", 0, NULL, NULL, NULL, NULL, 0), 1);
        CU_ASSERT_EQUAL(PQpipelineSync(c), 1);
        r = itu_wait_result(c, 5000);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_PIPELINE_ABORTED);
        PQclear(r);
        r = itu_wait_result(c, 5000);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_PIPELINE_ABORTED);
        PQclear(r);
        r = itu_wait_result(c, 5000);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_PIPELINE_SYNC);
        PQclear(r);
        CU_ASSERT_EQUAL(PQexitPipelineMode(c), 1);
        CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 4"), "4");
        /* the skipped Parse did not create the statement */
        r = PQexecPrepared(c, "p_after", 0, NULL, NULL, NULL, 0);
        CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "26000");
        PQclear(r);
    }
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    PQfinish(c);
    stop();
}

static void test_pipeline_error_then_more_transaction(void)
{
    check_pipeline_error_then_more("transaction");
}

static void test_pipeline_error_then_more_session(void)
{
    check_pipeline_error_then_more("session");
}

/* ---- 8. clients that vanish at accept time ---------------------------------------------- */

/*
 * pgwarden reads a new client in the same loop turn that accepted it (px_reader_read_soon),
 * and accepts as many as are queued in one turn.  These clients are gone by then, or go
 * while pgwarden answers them: the read finds EOF or a reset, the answer (an
 * authentication request, 'S' and a TLS handshake, a 53300 past max_client_conn) meets a
 * closed socket.
 */
enum rogue {
    RG_CLOSE,         /* connects and closes, nothing sent */
    RG_STARTUP_CLOSE, /* a whole StartupMessage, then close */
    RG_HALF_CLOSE,    /* half a StartupMessage, then close */
    RG_RESET,         /* connects and resets (SO_LINGER 0), nothing sent */
    RG_SSL_CLOSE,     /* an SSLRequest (client_tls_mode = allow: pgwarden says 'S'), close */
    RG_STARTUP_RESET, /* a whole StartupMessage, then a reset */
    RG_KINDS
};

#define ROGUES_PER_KIND 150
#define ROGUE_TIME_MS   20000 /* the whole storm, at most */

/* One client of kind k on port; false when it could not even connect. */
static bool rogue(int port, enum rogue k)
{
    static const uint8_t ssl_request[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
    uint8_t startup[128];
    size_t len = harness_build_startup(startup, sizeof(startup), "pgwarden_test", "pgwarden_test");
    int fd = harness_raw_connect(port, 2000);
    if (fd < 0)
        return false;
    /* Small: a fresh socket's send buffer takes them whole. */
    ssize_t sent = 0;
    if (k == RG_STARTUP_CLOSE || k == RG_STARTUP_RESET)
        sent = send(fd, startup, len, MSG_NOSIGNAL);
    else if (k == RG_HALF_CLOSE)
        sent = send(fd, startup, len / 2, MSG_NOSIGNAL);
    else if (k == RG_SSL_CLOSE)
        sent = send(fd, ssl_request, sizeof(ssl_request), MSG_NOSIGNAL);
    (void)sent;
    if (k == RG_RESET || k == RG_STARTUP_RESET) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(fd);
    return true;
}

/* An ordinary libpq client running one query after another, without blocking: "SELECT n"
 * must answer n. */
struct steady {
    PGconn *conn;
    long long n, answered, failed;
    bool busy;
};

/* Takes s's answer if it is complete (waiting up to wait_ms for it) and, if next, sends
 * the next query; after a failure it stops. */
static void steady_step(struct steady *s, int wait_ms, bool next)
{
    if (s->failed)
        return;
    if (s->busy) {
        struct pollfd p = {.fd = PQsocket(s->conn), .events = POLLIN};
        for (int64_t until = itu_now_ms() + wait_ms;;) {
            if (!PQconsumeInput(s->conn)) {
                fprintf(stderr, "steady client: %s", PQerrorMessage(s->conn));
                s->failed++;
                return;
            }
            int64_t left = until - itu_now_ms();
            if (!PQisBusy(s->conn) || left <= 0)
                break;
            poll(&p, 1, (int)left);
        }
        if (PQisBusy(s->conn))
            return;
        char want[32];
        snprintf(want, sizeof(want), "%lld", s->n);
        bool ok = false;
        PGresult *r;
        while ((r = PQgetResult(s->conn)) != NULL) {
            ok = ok || (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
                        !strcmp(PQgetvalue(r, 0, 0), want));
            if (PQresultStatus(r) != PGRES_TUPLES_OK)
                fprintf(stderr, "steady client: %s", PQresultErrorMessage(r));
            PQclear(r);
        }
        s->busy = false;
        if (!ok) {
            s->failed++;
            return;
        }
        s->answered++;
    }
    if (!next)
        return;
    char sql[64];
    snprintf(sql, sizeof(sql), "SELECT %lld", ++s->n);
    if (!PQsendQuery(s->conn, sql)) {
        fprintf(stderr, "steady client: %s", PQerrorMessage(s->conn));
        s->failed++;
        return;
    }
    s->busy = true;
}

/* Clients pgwarden's admin port lists (logging in, failing, and in the pools); -1 when it
 * does not answer. */
static int admin_clients(void)
{
    json_t *j = get_json(g_px->admin_port, "/clients", NULL);
    int n = json_is_array(j) ? (int)json_array_size(j) : -1;
    json_decref(j);
    return n;
}

/*
 * ROGUES_PER_KIND clients of each kind, interleaved, as fast as they connect, while an
 * ordinary client runs queries through pgwarden: that client never fails, pgwarden stays
 * up and serves a new connection afterwards, every rogue reached it (its accept counter),
 * and its clients go back to what they were before (no client kept, none counted twice:
 * with max_client_conn = 2 the new connection is refused with 53300 when the count leaked).
 * Under ASan a use of a freed client stops pgwarden, and a leak fails its exit at stop().
 */
static void check_vanish_at_accept(int max_client_conn)
{
    (void)itu_raise_nofile(4096);
    alarm(TEST_LIMIT_S);
    struct harness_proxy_opts o = {.pool_mode = "transaction",
                                   .pool_size = 2,
                                   .auth_type = "scram-sha-256",
                                   .client_tls_mode = "allow",
                                   .max_client_conn = max_client_conn,
                                   .client_login_timeout_ms = 60000, /* leaks stay visible */
                                   .log_level = "info",
                                   .admin = true};
    g_px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g_px);
    struct steady s = {.conn = conn(NULL)};
    CU_ASSERT_EQUAL_FATAL(PQstatus(s.conn), CONNECTION_OK);
    CU_ASSERT_EQUAL(PQsetnonblocking(s.conn, 1), 0);
    int before = admin_clients();
    double accepted0 = metric_value(g_px->admin_port, "pgwarden_client_connections_total");
    CU_ASSERT_EQUAL(before, 1);

    int made[RG_KINDS] = {0}, total = 0, unconnected = 0;
    int64_t t0 = itu_now_ms();
    /* Rounds of one rogue of each kind, in an order that shifts each round, while one of
     * the ordinary client's queries is in flight; then its answer (1 s at most) and its
     * next query. */
    for (int round = 0; round < ROGUES_PER_KIND && itu_now_ms() - t0 < ROGUE_TIME_MS; round++) {
        steady_step(&s, 1000, true);
        for (int i = 0; i < RG_KINDS; i++) {
            enum rogue k = (enum rogue)((i + round) % RG_KINDS);
            if (rogue(g_px->port, k)) {
                made[k]++;
                total++;
            } else {
                unconnected++;
            }
        }
    }
    int64_t storm_ms = itu_now_ms() - t0;
    steady_step(&s, 10000, false);
    long long during = s.answered;

    /* Every rogue is gone: pgwarden's clients are back to the ordinary one (5 s at most). */
    int after = -1;
    for (int64_t until = itu_now_ms() + 5000; itu_now_ms() < until; itu_sleep_ms(50))
        if ((after = admin_clients()) == before)
            break;
    double accepted = metric_value(g_px->admin_port, "pgwarden_client_connections_total");
    printf("\n    max_client_conn %d: %d rogue clients in %lld ms (%d failed to connect), "
           "%.0f accepted; the ordinary client: %lld answered, %lld failed; clients %d -> %d ",
           max_client_conn, total, (long long)storm_ms, unconnected, accepted - accepted0, during,
           s.failed, before, after);
    for (int k = 0; k < RG_KINDS; k++)
        CU_ASSERT_EQUAL(made[k], ROGUES_PER_KIND);
    CU_ASSERT_EQUAL(s.failed, 0);
    CU_ASSERT(during >= ROGUES_PER_KIND - 1); /* one answer per round, about */
    CU_ASSERT_EQUAL(after, before);
    /* Each rogue reached pgwarden, but a reset may beat the accept (the kernel drops it). */
    CU_ASSERT(accepted - accepted0 >= total - made[RG_RESET] - made[RG_STARTUP_RESET]);
    CU_ASSERT_TRUE(harness_proxy_alive(g_px));

    /* pgwarden serves a new client, and the ordinary one goes on. */
    PGconn *c = conn(NULL);
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'after'"), "after");
    PQfinish(c);
    steady_step(&s, 0, true);
    steady_step(&s, 10000, false);
    CU_ASSERT_EQUAL(s.answered, during + 1);
    CU_ASSERT_EQUAL(s.failed, 0);
    CU_ASSERT_EQUAL(log_count(" ERROR "), 0);
    PQfinish(s.conn);
    stop(); /* alive, and a clean exit (under ASan: no leak) */
}

static void test_vanish_at_accept(void)
{
    check_vanish_at_accept(1000);
}

/* Past max_client_conn pgwarden still reads the startup packet, to answer 53300. */
static void test_vanish_at_accept_over_limit(void)
{
    check_vanish_at_accept(2);
}

static void register_suites(void)
{
    static CU_TestInfo tests[] = {
        {"cancel_hits_resync", test_cancel_hits_resync},
        {"terminated_during_resync", test_terminated_during_resync},
        {"late_cancel_spares_next_client", test_late_cancel_spares_next_client},
        {"abandoned_pipeline_cancelled", test_abandoned_pipeline_cancelled},
        {"invalid_type_transaction", test_invalid_type_transaction},
        {"invalid_type_session", test_invalid_type_session},
        {"other_clients_statements", test_other_clients_statements},
        {"vanishing_clients_transaction", test_vanishing_clients_transaction},
        {"vanishing_clients_session", test_vanishing_clients_session},
        {"pipeline_error_then_more_transaction", test_pipeline_error_then_more_transaction},
        {"pipeline_error_then_more_session", test_pipeline_error_then_more_session},
        {"restart_under_load_transaction", test_restart_under_load_transaction},
        {"restart_under_load_session", test_restart_under_load_session},
        {"clients_vanish_at_accept", test_vanish_at_accept},
        {"clients_vanish_at_accept_over_limit", test_vanish_at_accept_over_limit},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("hardening", suite_init, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
