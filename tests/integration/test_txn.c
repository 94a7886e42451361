/*
 * test_txn.c: transaction pooling through pgwarden (SPEC sections 2 and 3) with libpq
 * clients on a real PostgreSQL: reported parameters and named prepared statements follow
 * their client across shared servers, pipelines (a failing one too), 500 clients on a pool
 * of 10, a client killed inside a transaction, cancel, the held-back BEGIN compared step by
 * step with a direct connection and sent in the first extended-protocol group (its exact
 * replies, PostgreSQL's statement log), session-only features (one warning, nothing leaks
 * to the next client), the wait timeout, and RESET back to startup values.
 *
 * Every test starts its own pgwarden (pool_mode = transaction) and stops it at the end;
 * connections and a pgwarden left behind by a test that stopped at a fatal assertion are
 * cleaned up when the next test starts.
 *
 * ITEST_TXN_DIRECT=1 runs the same test bodies against PostgreSQL directly, without
 * pgwarden, to show that what they expect is what PostgreSQL itself does.  Checks that only
 * mean something through pgwarden (servers shared or counted, the wait queue, its log) are
 * skipped then, and test 5 uses fewer clients.
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_util.h"
#include "itest_wire.h"

/* ---- this file's pgwarden and connections --------------------------------------------- */

static bool g_direct;                      /* ITEST_TXN_DIRECT: no pgwarden at all */
static struct harness_proxy g_direct_stub; /* what txn_start() returns then */
static struct harness_proxy *g_px;         /* the running test's pgwarden, or the stub */
static unsigned g_failures_at_start;       /* to dump pgwarden's log when a test failed */

#define MAX_TRACKED 16
static PGconn *g_conns[MAX_TRACKED]; /* open connections of the running test */

/* No test takes longer than this: a hang (a statement pgwarden never answers) ends the
 * program, whose harness guardian then stops pgwarden and the cluster, instead of lasting
 * until ctest's timeout. */
#define TEST_LIMIT_S 180
#define STR_(x)      #x
#define STR(x)       STR_(x)

static void on_watchdog(int sig)
{
    (void)sig;
    static const char msg[] =
        "\ntest_txn: a test ran longer than " STR(TEST_LIMIT_S) " s: stopping\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)w;
    /* Not async-signal-safe, but the test is stuck in libpq, and this is the end. */
    if (g_px && g_px != &g_direct_stub)
        harness_proxy_dump_log(g_px, 40);
    _exit(3);
}

static int suite_init(void)
{
    struct sigaction sa = {.sa_handler = on_watchdog};
    sigaction(SIGALRM, &sa, NULL);
    const char *env = getenv("ITEST_TXN_DIRECT");
    g_direct = env && *env && strcmp(env, "0") != 0;
    if (g_direct) {
        printf("\n    ITEST_TXN_DIRECT: test bodies run against PostgreSQL directly ");
        return harness_cluster() ? 0 : 1;
    }
    return itu_suite_init();
}

static void track(PGconn *c)
{
    for (int i = 0; i < MAX_TRACKED && c; i++) {
        if (!g_conns[i]) {
            g_conns[i] = c;
            return;
        }
    }
}

/* PQfinish that also forgets c. */
static void conn_close(PGconn *c)
{
    for (int i = 0; i < MAX_TRACKED && c; i++)
        if (g_conns[i] == c)
            g_conns[i] = NULL;
    PQfinish(c);
}

static void close_tracked(void)
{
    for (int i = 0; i < MAX_TRACKED; i++) {
        PQfinish(g_conns[i]);
        g_conns[i] = NULL;
    }
}

/* Closes what a test that ended at a fatal assertion left open. */
static void cleanup_leftovers(void)
{
    close_tracked();
    if (g_px && g_px != &g_direct_stub) {
        harness_proxy_dump_log(g_px, 30);
        harness_proxy_free(g_px);
    }
    g_px = NULL;
}

static int suite_cleanup(void)
{
    alarm(0);
    cleanup_leftovers();
    return 0;
}

/* The options every test starts from: transaction pooling, SCRAM, a pool of pool_size. */
static struct harness_proxy_opts txn_opts(int pool_size)
{
    return (struct harness_proxy_opts){.pool_mode = "transaction",
                                       .pool_size = pool_size,
                                       .auth_type = "scram-sha-256",
                                       .query_wait_timeout_ms = 20000};
}

/* Starts this test's pgwarden (the stub in direct mode); NULL when it does not start. */
static struct harness_proxy *txn_start(const struct harness_proxy_opts *o)
{
    cleanup_leftovers();
    g_failures_at_start = CU_get_number_of_failures();
    alarm(TEST_LIMIT_S);
    g_px = g_direct ? &g_direct_stub : harness_proxy_start(o);
    return g_px;
}

/* Stops this test's pgwarden: SIGTERM must end it with exit status 0. */
static void txn_stop(void)
{
    close_tracked();
    if (g_px && g_px != &g_direct_stub) {
        if (CU_get_number_of_failures() != g_failures_at_start)
            harness_proxy_dump_log(g_px, 40);
        CU_ASSERT_EQUAL(itu_proxy_stop_free(g_px), 0);
    }
    g_px = NULL;
    alarm(0);
}

/* A client of this test's pgwarden (of PostgreSQL in direct mode); check PQstatus. */
static PGconn *px_conn(const char *extra)
{
    char ci_extra[512];
    snprintf(ci_extra, sizeof(ci_extra), "sslmode=disable %s", extra ? extra : "");
    PGconn *c = g_direct ? harness_connect_info(harness_cluster_conninfo(ci_extra))
                         : harness_connect(g_px, ci_extra);
    if (c && PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "connect failed: %s", PQerrorMessage(c));
    track(c);
    return c;
}

static void ignore_notice(void *arg, const PGresult *res)
{
    (void)arg;
    (void)res;
}

/* A direct connection to PostgreSQL as the test user, for setup and for looking on;
 * notices (DROP TABLE IF EXISTS ...) are not printed, and a lock left behind by a
 * transaction pgwarden failed to end makes its statements fail instead of wait. */
static PGconn *direct_conn(void)
{
    PGconn *c = harness_connect_info(
        harness_cluster_conninfo("sslmode=disable options='-c lock_timeout=5s'"));
    if (c && PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "direct connect failed: %s", PQerrorMessage(c));
    PQsetNoticeReceiver(c, ignore_notice, NULL);
    track(c);
    return c;
}

/* The command tag of r; "" for none. */
static const char *cmd_tag(PGresult *r)
{
    const char *t = r ? PQcmdStatus(r) : NULL;
    return t ? t : "";
}

/*
 * True when r is one row of nfields columns whose first (and second, when v1 is not NULL)
 * values are v0 (and v1); a mismatch is printed.  Does not clear r.
 */
static bool result_is(const PGresult *r, int nfields, const char *v0, const char *v1)
{
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
              PQnfields(r) == nfields && strcmp(PQgetvalue(r, 0, 0), v0) == 0 &&
              (!v1 || (nfields > 1 && strcmp(PQgetvalue(r, 0, 1), v1) == 0));
    if (!ok)
        fprintf(stderr, "expected (%s, %s) in %d columns, got %s %d rows %d columns: %s %s\n", v0,
                v1 ? v1 : "-", nfields, PQresStatus(PQresultStatus(r)), PQntuples(r), PQnfields(r),
                PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "", PQresultErrorMessage(r));
    return ok;
}

/* PQexecPrepared of name with one text parameter (none when param is NULL); owned. */
static PGresult *exec_prep(PGconn *c, const char *name, const char *param)
{
    const char *p[1] = {param};
    return PQexecPrepared(c, name, param ? 1 : 0, p, NULL, NULL, 0);
}

/* PQprepare (parameter types inferred); true on success (the error is printed). */
static bool prep_ok(PGconn *c, const char *name, const char *sql)
{
    PGresult *r = PQprepare(c, name, sql, 0, NULL);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "prepare %s failed: %s", name, PQerrorMessage(c));
    PQclear(r);
    return ok;
}

/* PQparameterStatus, "" when not reported. */
static const char *param_status(PGconn *c, const char *name)
{
    const char *v = PQparameterStatus(c, name);
    return v ? v : "";
}

/* Server connections of the test user to the test database, seen from a direct connection
 * (not counting that one itself). */
#define SERVER_COUNT_SQL                                                                           \
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename "        \
    "= current_user AND backend_type = 'client backend' AND pid <> pg_backend_pid()"

static int server_count(PGconn *mon)
{
    const char *v = itu_value(mon, SERVER_COUNT_SQL);
    return v[0] ? atoi(v) : -1;
}

/* Waits up to timeout_ms until sql returns want on c; true when it did. */
static bool wait_value(PGconn *c, const char *sql, const char *want, int timeout_ms)
{
    int64_t deadline = itu_now_ms() + timeout_ms;
    bool ok = strcmp(itu_value(c, sql), want) == 0;
    while (!ok && itu_now_ms() < deadline) {
        itu_sleep_ms(50);
        ok = strcmp(itu_value(c, sql), want) == 0;
    }
    if (!ok)
        fprintf(stderr, "\"%s\" did not return %s within %d ms\n", sql, want, timeout_ms);
    return ok;
}

/* Adds pid to the set pids[*n] (capacity cap) unless already there. */
static void pid_add(int *pids, int *n, int cap, int pid)
{
    for (int i = 0; i < *n; i++)
        if (pids[i] == pid)
            return;
    if (*n < cap)
        pids[(*n)++] = pid;
}

/* ---- pipelines ---------------------------------------------------------------------- */

#define PIPE_MAX_RESULTS 32
#define PIPE_MAX_CLIENTS 8

/* One client's pipeline up to and including its PQpipelineSync. */
struct pipe {
    PGconn *conn;
    PGresult *res[PIPE_MAX_RESULTS]; /* the first result of each query, in order (owned) */
    int nres;
    bool have_current; /* a result of the current query is in res[] already */
    bool synced;       /* PGRES_PIPELINE_SYNC arrived */
    bool broken;       /* the connection failed */
};

/* Takes what has arrived for p, up to the sync result. */
static void pipe_read(struct pipe *p)
{
    if (!PQconsumeInput(p->conn)) {
        fprintf(stderr, "pipeline read failed: %s", PQerrorMessage(p->conn));
        p->broken = true;
        return;
    }
    int nulls = 0; /* a NULL ends one query's results; two in a row: nothing more yet */
    while (!p->synced && !PQisBusy(p->conn) && nulls < 2) {
        PGresult *r = PQgetResult(p->conn);
        if (!r) {
            p->have_current = false;
            nulls++;
            continue;
        }
        nulls = 0;
        if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
            p->synced = true;
            PQclear(r);
        } else if (!p->have_current && p->nres < PIPE_MAX_RESULTS) {
            p->res[p->nres++] = r;
            p->have_current = true;
        } else {
            PQclear(r);
        }
    }
}

/* Reads the n pipelines together until each has its sync result; false on timeout. */
static bool pipes_wait(struct pipe *p, int n, int timeout_ms)
{
    int64_t deadline = itu_now_ms() + timeout_ms;
    for (int i = 0; i < n; i++)
        pipe_read(&p[i]);
    for (;;) {
        struct pollfd pfds[PIPE_MAX_CLIENTS];
        int map[PIPE_MAX_CLIENTS], k = 0;
        for (int i = 0; i < n && i < PIPE_MAX_CLIENTS; i++) {
            if (p[i].synced || p[i].broken)
                continue;
            pfds[k] = (struct pollfd){.fd = PQsocket(p[i].conn), .events = POLLIN};
            map[k++] = i;
        }
        if (k == 0)
            break;
        int64_t left = deadline - itu_now_ms();
        if (left <= 0) {
            fprintf(stderr, "pipelines not done within %d ms\n", timeout_ms);
            return false;
        }
        if (poll(pfds, (nfds_t)k, (int)left) < 0)
            continue;
        for (int j = 0; j < k; j++)
            if (pfds[j].revents)
                pipe_read(&p[map[j]]);
    }
    bool ok = true;
    for (int i = 0; i < n; i++)
        ok = ok && p[i].synced;
    return ok;
}

static void pipe_clear(struct pipe *p)
{
    for (int i = 0; i < p->nres; i++)
        PQclear(p->res[i]);
    *p = (struct pipe){.conn = p->conn};
}

/* Extended-protocol query without parameters, for pipeline mode; true when queued. */
static bool pipe_send(PGconn *c, const char *sql)
{
    bool ok = PQsendQueryParams(c, sql, 0, NULL, NULL, NULL, NULL, 0) == 1;
    if (!ok)
        fprintf(stderr, "pipeline send failed: %s", PQerrorMessage(c));
    return ok;
}

/* ---- 1. two clients, one server, each keeps its settings ------------------------------ */

/* What one client set for itself, and the hour UTC midnight on 2024-01-01 shows there. */
struct own_settings {
    const char *tz;
    const char *app;
    const char *hour;
};

/*
 * One transaction (a BEGIN ... COMMIT block, or two single statements) in which c checks
 * that the server runs with c's own settings; the backend pid is stored in *pid.
 */
static void check_own_settings(PGconn *c, const struct own_settings *w, bool block, int *pid)
{
    if (block)
        CU_ASSERT_TRUE(itu_exec_ok(c, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SHOW TimeZone"), w->tz);
    PGresult *r = PQexec(c, "SELECT current_setting('application_name'), "
                            "to_char(TIMESTAMPTZ '2024-01-01 00:00:00+00', 'HH24'), "
                            "pg_backend_pid()");
    CU_ASSERT_TRUE(result_is(r, 3, w->app, w->hour));
    *pid = PQresultStatus(r) == PGRES_TUPLES_OK ? atoi(PQgetvalue(r, 0, 2)) : 0;
    PQclear(r);
    if (block)
        CU_ASSERT_TRUE(itu_exec_ok(c, "COMMIT"));
    CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_IDLE);
    CU_ASSERT_STRING_EQUAL(param_status(c, "TimeZone"), w->tz);
    CU_ASSERT_STRING_EQUAL(param_status(c, "application_name"), w->app);
}

/*
 * A free server goes to the next transaction most recently used first, as with PgBouncer:
 * a lone client keeps getting the backend it just used instead of rotating through the
 * pool, so a few backends stay warm and the rest can idle out.
 */
static void test_idle_servers_reused_newest_first(void)
{
    if (g_direct)
        return; /* no pool without pgwarden */
    struct harness_proxy_opts o = txn_opts(3);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    PGconn *c[3];
    char pid[3][32];
    for (int i = 0; i < 3; i++) { /* three transactions at once: three servers */
        c[i] = px_conn(NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(c[i]), CONNECTION_OK);
        CU_ASSERT_TRUE(itu_exec_ok(c[i], "BEGIN"));
        itu_value_copy(pid[i], sizeof(pid[i]), c[i], "SELECT pg_backend_pid()");
    }
    CU_ASSERT_STRING_NOT_EQUAL(pid[0], pid[1]);
    CU_ASSERT_STRING_NOT_EQUAL(pid[1], pid[2]);
    CU_ASSERT_STRING_NOT_EQUAL(pid[0], pid[2]);
    for (int i = 0; i < 3; i++) /* released in this order: c[2]'s server last */
        CU_ASSERT_TRUE(itu_exec_ok(c[i], "COMMIT"));
    PGconn *d = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    for (int i = 0; i < 5; i++) {
        char got[32];
        itu_value_copy(got, sizeof(got), d, "SELECT pg_backend_pid()");
        CU_ASSERT_STRING_EQUAL(got, pid[2]);
    }
    txn_stop();
}

/*
 * The unnamed statement across groups, as psql's \gdesc uses it (Parse + Sync, then
 * Describe + Sync): the client gets its own statement back while nothing else ran on the
 * server, and 26000, as PostgreSQL answers, once another client's Parse replaced it there.
 */
static void test_unnamed_across_groups(void)
{
    struct harness_proxy_opts o = txn_opts(1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    PGconn *a = px_conn(NULL), *b = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    PGresult *r = PQprepare(a, "", "SELECT 1 AS one, 'x'::text AS two", 0, NULL);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = PQdescribePrepared(a, "");
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    CU_ASSERT_EQUAL(PQnfields(r), 2);
    CU_ASSERT_STRING_EQUAL(PQnfields(r) == 2 ? PQfname(r, 1) : "", "two");
    PQclear(r);
    /* another client's unnamed statement on the one server: a's is gone, never b's seen */
    r = PQprepare(b, "", "SELECT 2 AS other", 0, NULL);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = PQdescribePrepared(a, "");
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "26000");
    PQclear(r);
    /* and a simple Query of a's own destroys it, as in PostgreSQL */
    r = PQprepare(a, "", "SELECT 3 AS three", 0, NULL);
    PQclear(r);
    CU_ASSERT_TRUE(itu_exec_ok(a, "SELECT 1"));
    r = PQdescribePrepared(a, "");
    st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "26000");
    PQclear(r);
    txn_stop();
}

/*
 * A simple Query destroys the client's unnamed statement wherever that statement is: a
 * client that parsed it on one server, then ran a Query on another, gets 26000 for it back
 * on the first server (as from PostgreSQL), not the statement the Query should have
 * destroyed.  Pool of 2, servers chosen most recently used first: h holds X while a parses
 * on Y; h leaves X, a's Query takes X; h takes X again, a's Describe gets Y.
 */
static void test_unnamed_gone_after_query_elsewhere(void)
{
    struct harness_proxy_opts o = txn_opts(2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    PGconn *a = px_conn(NULL), *h = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(h), CONNECTION_OK);
    char x[32], got[32];
    CU_ASSERT_TRUE(itu_exec_ok(h, "BEGIN"));
    itu_value_copy(x, sizeof(x), h, "SELECT pg_backend_pid()");
    PGresult *r = PQprepare(a, "", "SELECT 1 AS one", 0, NULL); /* on Y */
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    CU_ASSERT_TRUE(itu_exec_ok(h, "COMMIT"));
    itu_value_copy(got, sizeof(got), a, "SELECT pg_backend_pid()"); /* a simple Query, on X */
    if (!g_direct)
        CU_ASSERT_STRING_EQUAL(got, x);
    CU_ASSERT_TRUE(itu_exec_ok(h, "BEGIN"));
    itu_value_copy(got, sizeof(got), h, "SELECT pg_backend_pid()");
    if (!g_direct)
        CU_ASSERT_STRING_EQUAL(got, x);
    r = PQdescribePrepared(a, ""); /* on Y, where a's Parse was */
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "26000");
    PQclear(r);
    CU_ASSERT_TRUE(itu_exec_ok(h, "COMMIT"));
    txn_stop();
}

static void test_two_clients_one_server(void)
{
    struct harness_proxy_opts o = txn_opts(1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    PGconn *d = direct_conn();
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    char server_tz[128];
    itu_value_copy(server_tz, sizeof(server_tz), d, "SHOW TimeZone");

    PGconn *a = px_conn(NULL), *b = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_TRUE(itu_exec_ok(a, "SET TimeZone = 'Asia/Tokyo'"));
    CU_ASSERT_TRUE(itu_exec_ok(a, "SET application_name = 'alpha'"));
    CU_ASSERT_TRUE(itu_exec_ok(b, "SET TimeZone = 'America/New_York'"));
    CU_ASSERT_TRUE(itu_exec_ok(b, "SET application_name = 'beta'"));
    static const struct own_settings wa = {"Asia/Tokyo", "alpha", "09"};
    static const struct own_settings wb = {"America/New_York", "beta", "19"};
    int pids[8], npids = 0;
    for (int i = 0; i < 10; i++) {
        int pa = 0, pb = 0;
        check_own_settings(a, &wa, i % 2 == 0, &pa);
        check_own_settings(b, &wb, i % 2 == 0, &pb);
        pid_add(pids, &npids, 8, pa);
        pid_add(pids, &npids, 8, pb);
    }
    if (!g_direct) {
        /* Both ran on the one server of the pool, and PostgreSQL saw only that one. */
        CU_ASSERT_EQUAL(npids, 1);
        (void)wait_value(d, SERVER_COUNT_SQL, "1", 3000);
        int n = server_count(d);
        printf("\n    %d backend(s) served both clients; %d server connection(s) ", npids, n);
        CU_ASSERT_EQUAL(n, 1);
    }

    /* A new client sees none of it. */
    PGconn *c = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SHOW TimeZone"), server_tz);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SHOW application_name"), "");
    CU_ASSERT_STRING_EQUAL(param_status(c, "TimeZone"), server_tz);
    CU_ASSERT_STRING_EQUAL(param_status(c, "application_name"), "");
    conn_close(c);
    conn_close(a);
    conn_close(b);
    conn_close(d);
    txn_stop();
}

/* ---- 2. prepared statements follow their client ---------------------------------------- */

/* A and B both prepared "s1" with different text; each always gets its own. */
static void check_same_name_apart(PGconn *a, PGconn *b)
{
    for (int i = 0; i < 20; i++) {
        char num[16], want_a[32], want_b[32];
        snprintf(num, sizeof(num), "%d", i);
        snprintf(want_a, sizeof(want_a), "a%d", i);
        snprintf(want_b, sizeof(want_b), "b%d", i);
        bool block_a = i % 4 == 1, block_b = i % 4 == 3;
        if (block_a)
            CU_ASSERT_TRUE(itu_exec_ok(a, "BEGIN"));
        PGresult *r = exec_prep(a, "s1", num);
        CU_ASSERT_TRUE(result_is(r, 1, want_a, NULL));
        PQclear(r);
        if (block_a)
            CU_ASSERT_TRUE(itu_exec_ok(a, "COMMIT"));
        if (block_b)
            CU_ASSERT_TRUE(itu_exec_ok(b, "BEGIN"));
        r = exec_prep(b, "s1", num);
        CU_ASSERT_TRUE(result_is(r, 2, want_b, "2"));
        PQclear(r);
        if (block_b)
            CU_ASSERT_TRUE(itu_exec_ok(b, "COMMIT"));
    }
    PGresult *r = PQdescribePrepared(a, "s1");
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    CU_ASSERT_EQUAL(PQnparams(r), 1);
    CU_ASSERT_EQUAL(PQnfields(r), 1);
    PQclear(r);
    r = PQdescribePrepared(b, "s1");
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    CU_ASSERT_EQUAL(PQnparams(r), 1);
    CU_ASSERT_EQUAL(PQnfields(r), 2);
    PQclear(r);
}

/* A's DISCARD ALL drops A's statements only, and so does the server reset pgwarden runs
 * after A's LISTEN: B's statement works on that server afterwards. */
static void check_discard_all(PGconn *a, PGconn *b)
{
    CU_ASSERT_TRUE(prep_ok(b, "s2", "SELECT 'b2' || $1::text"));
    CU_ASSERT_TRUE(itu_exec_ok(a, "DISCARD ALL"));
    PGresult *r = exec_prep(a, "s1", "x");
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "26000");
    PQclear(r);
    r = exec_prep(b, "s2", "x");
    CU_ASSERT_TRUE(result_is(r, 1, "b2x", NULL));
    PQclear(r);
    CU_ASSERT_TRUE(prep_ok(a, "s1", "SELECT 'a3' || $1::text"));
    CU_ASSERT_TRUE(itu_exec_ok(a, "LISTEN txn_reset"));
    r = exec_prep(b, "s2", "y");
    CU_ASSERT_TRUE(result_is(r, 1, "b2y", NULL));
    PQclear(r);
    r = exec_prep(a, "s1", "y");
    CU_ASSERT_TRUE(result_is(r, 1, "a3y", NULL));
    PQclear(r);
}

static void test_prepared_follow_client(void)
{
    struct harness_proxy_opts o = txn_opts(1);
    o.pgwarden_extra = "unmovable_state = reset"; /* A's LISTEN resets the one server */
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    PGconn *a = px_conn(NULL), *b = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_TRUE_FATAL(prep_ok(a, "s1", "SELECT 'a' || $1::text"));
    CU_ASSERT_TRUE_FATAL(prep_ok(b, "s1", "SELECT 'b' || $1::text, 2"));
    check_same_name_apart(a, b);

    /* DEALLOCATE drops A's s1 only. */
    CU_ASSERT_TRUE(itu_exec_ok(a, "DEALLOCATE s1"));
    PGresult *r = exec_prep(a, "s1", "x");
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "26000");
    PQclear(r);
    r = exec_prep(b, "s1", "x");
    CU_ASSERT_TRUE(result_is(r, 2, "bx", "2"));
    PQclear(r);
    CU_ASSERT_TRUE(prep_ok(a, "s1", "SELECT 'a2' || $1::text"));
    r = exec_prep(a, "s1", "y");
    CU_ASSERT_TRUE(result_is(r, 1, "a2y", NULL));
    PQclear(r);

    /* A statement of A's on the server B gets next: B does not see it. */
    CU_ASSERT_TRUE(prep_ok(a, "only_a", "SELECT 'only a'"));
    r = exec_prep(a, "only_a", NULL);
    CU_ASSERT_TRUE(result_is(r, 1, "only a", NULL));
    PQclear(r);
    r = exec_prep(b, "only_a", NULL);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "26000");
    PQclear(r);
    r = PQdescribePrepared(b, "only_a");
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "26000");
    PQclear(r);
    /* Also inside a transaction block, which the error then aborts. */
    CU_ASSERT_TRUE(itu_exec_ok(b, "BEGIN"));
    r = exec_prep(b, "only_a", NULL);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "26000");
    PQclear(r);
    CU_ASSERT_EQUAL(PQtransactionStatus(b), PQTRANS_INERROR);
    CU_ASSERT_TRUE(itu_exec_ok(b, "ROLLBACK"));
    r = exec_prep(a, "only_a", NULL);
    CU_ASSERT_TRUE(result_is(r, 1, "only a", NULL));
    PQclear(r);

    /* DEALLOCATE ALL on B leaves A's statements alone. */
    CU_ASSERT_TRUE(itu_exec_ok(b, "DEALLOCATE ALL"));
    r = exec_prep(b, "s1", "z");
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "26000");
    PQclear(r);
    r = exec_prep(a, "s1", "z");
    CU_ASSERT_TRUE(result_is(r, 1, "a2z", NULL));
    PQclear(r);
    check_discard_all(a, b);
    conn_close(a);
    conn_close(b);
    txn_stop();
}

/*
 * DEALLOCATE name by the extended protocol (how psycopg 3 evicts statements, and any
 * driver that sends everything with parameters): it drops the client's statement, and only
 * it, as the simple-protocol DEALLOCATE does.  It went to the server under the client's
 * name, which the server does not know (26000, and nothing dropped: psycopg 3 with more
 * than 100 prepared statements got 26000 errors on unrelated queries).
 */
static void test_dealloc_extended(void)
{
    struct harness_proxy_opts o = txn_opts(1); /* both clients on the one server */
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    PGconn *a = px_conn(NULL), *b = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_TRUE_FATAL(prep_ok(a, "s1", "SELECT 'a' || $1::text"));
    CU_ASSERT_TRUE_FATAL(prep_ok(b, "s1", "SELECT 'b' || $1::text, 2"));
    /* the same text under one name in both: one statement on the server, shared */
    CU_ASSERT_TRUE_FATAL(prep_ok(a, "same", "SELECT 'same'"));
    CU_ASSERT_TRUE_FATAL(prep_ok(b, "same", "SELECT 'same'"));

    CU_ASSERT_STRING_EQUAL(itu_qx(a, "DEALLOCATE s1"), "DEALLOCATE");
    PGresult *r = exec_prep(a, "s1", "x");
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "26000");
    PQclear(r);
    r = exec_prep(b, "s1", "x");
    CU_ASSERT_TRUE(result_is(r, 2, "bx", "2"));
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_qx(a, "DEALLOCATE s1"), "!26000"); /* gone already */
    CU_ASSERT_STRING_EQUAL(itu_qx(a, "deallocate prepare \"same\""), "DEALLOCATE");
    r = exec_prep(b, "same", NULL);
    CU_ASSERT_TRUE(result_is(r, 1, "same", NULL));
    PQclear(r);
    r = exec_prep(a, "same", NULL);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "26000");
    PQclear(r);

    /* parsed (and described) but never executed: nothing is dropped, as in PostgreSQL */
    CU_ASSERT_TRUE(prep_ok(a, "s4", "SELECT 'a4'"));
    PGresult *pr = PQprepare(a, "", "DEALLOCATE s4", 0, NULL);
    CU_ASSERT_EQUAL(PQresultStatus(pr), PGRES_COMMAND_OK);
    PQclear(pr);
    r = exec_prep(a, "s4", NULL);
    CU_ASSERT_TRUE(result_is(r, 1, "a4", NULL));
    PQclear(r);
    /* skipped behind an error in the same group: nothing dropped either */
    CU_ASSERT_EQUAL_FATAL(PQenterPipelineMode(a), 1);
    CU_ASSERT_EQUAL(PQsendQueryParams(a, "SELECT 1/0", 0, NULL, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQsendQueryParams(a, "DEALLOCATE s4", 0, NULL, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQpipelineSync(a), 1);
    CU_ASSERT_STRING_EQUAL(itu_pipeline_next(a, 5000), "!22012");
    CU_ASSERT_STRING_EQUAL(itu_pipeline_next(a, 5000), "PIPELINE_ABORTED");
    CU_ASSERT_STRING_EQUAL(itu_pipeline_next(a, 5000), "PIPELINE_SYNC");
    CU_ASSERT_EQUAL(PQexitPipelineMode(a), 1);
    r = exec_prep(a, "s4", NULL);
    CU_ASSERT_TRUE(result_is(r, 1, "a4", NULL));
    PQclear(r);
    /* a comment first, as ORMs write them */
    CU_ASSERT_STRING_EQUAL(itu_qx(a, "/* evict */ DEALLOCATE s4"), "DEALLOCATE");
    r = exec_prep(a, "s4", NULL);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "26000");
    PQclear(r);

    /* inside a block, and in a failed one (25P02 there, nothing dropped) */
    CU_ASSERT_TRUE(prep_ok(a, "s2", "SELECT 'a2'"));
    CU_ASSERT_TRUE(itu_exec_ok(a, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(itu_qx(a, "DEALLOCATE s2"), "DEALLOCATE");
    CU_ASSERT_TRUE(itu_exec_ok(a, "COMMIT"));
    r = exec_prep(a, "s2", NULL);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "26000");
    PQclear(r);
    CU_ASSERT_TRUE(prep_ok(a, "s3", "SELECT 'a3'"));
    CU_ASSERT_TRUE(itu_exec_ok(a, "BEGIN"));
    PQclear(PQexec(a, "SELECT 1/0"));
    CU_ASSERT_STRING_EQUAL(itu_qx(a, "DEALLOCATE s3"), "!25P02");
    CU_ASSERT_TRUE(itu_exec_ok(a, "ROLLBACK"));
    r = exec_prep(a, "s3", NULL);
    CU_ASSERT_TRUE(result_is(r, 1, "a3", NULL));
    PQclear(r);
    conn_close(a);
    conn_close(b);
    txn_stop();
}

/* ---- 3. prepared statements across servers, also pipelined ---------------------------- */

#define ACROSS_CLIENTS 4
#define ACROSS_POOL    2
#define ACROSS_QUERIES 9 /* per pipeline, three of each statement */

/* One client of test 3 and the backends it ran on. */
struct across {
    PGconn *conn;
    int who;
    char echo_name[32]; /* its own statement name; q_id and q_sum are in every client */
    int pids[8];
    int npids;
};

/* Prepares k's three statements once: q_id (its own text), q_sum (the same text in every
 * client) and q_echo_<who>. */
static bool across_prepare(struct across *k)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT %d::int, $1::int, pg_backend_pid()", k->who);
    bool ok = prep_ok(k->conn, "q_id", sql);
    ok = prep_ok(k->conn, "q_sum", "SELECT $1::int + $2::int") && ok;
    snprintf(k->echo_name, sizeof(k->echo_name), "q_echo_%d", k->who);
    snprintf(sql, sizeof(sql), "SELECT $1::text || '@%d'", k->who);
    return prep_ok(k->conn, k->echo_name, sql) && ok;
}

/* Checks the result of statement q % 3 of client k run with number n. */
static bool across_result_ok(struct across *k, int q, int n, const PGresult *r)
{
    char num[16], who[16], want[48];
    snprintf(num, sizeof(num), "%d", n);
    snprintf(who, sizeof(who), "%d", k->who);
    switch (q % 3) {
    case 0:
        if (!result_is(r, 3, who, num))
            return false;
        pid_add(k->pids, &k->npids, 8, atoi(PQgetvalue(r, 0, 2)));
        return true;
    case 1: snprintf(want, sizeof(want), "%d", n + k->who); return result_is(r, 1, want, NULL);
    default: snprintf(want, sizeof(want), "%d@%d", n, k->who); return result_is(r, 1, want, NULL);
    }
}

/* Sends statement q % 3 of client k with number n (PQsendQueryPrepared). */
static bool across_send(struct across *k, int q, int n)
{
    char num[16], who[16];
    snprintf(num, sizeof(num), "%d", n);
    snprintf(who, sizeof(who), "%d", k->who);
    const char *p[2] = {num, who};
    const char *name = q % 3 == 0 ? "q_id" : q % 3 == 1 ? "q_sum" : k->echo_name;
    return PQsendQueryPrepared(k->conn, name, q % 3 == 1 ? 2 : 1, p, NULL, NULL, 0) == 1;
}

/* Runs k's three statements once, one round trip each. */
static void across_run_sync(struct across *k, int n)
{
    for (int q = 0; q < 3; q++) {
        CU_ASSERT_TRUE_FATAL(across_send(k, q, n));
        PGresult *r = itu_wait_result(k->conn, 20000);
        CU_ASSERT_TRUE(across_result_ok(k, q, n, r));
        PQclear(r);
    }
}

/* Sends one pipeline of ACROSS_QUERIES prepared statements (in a BEGIN ... COMMIT block
 * when block) and its sync. */
static bool across_pipe_send(struct across *k, int round, bool block)
{
    bool ok = PQenterPipelineMode(k->conn) == 1;
    if (ok && block)
        ok = pipe_send(k->conn, "BEGIN");
    for (int q = 0; q < ACROSS_QUERIES && ok; q++)
        ok = across_send(k, q, round * 100 + q);
    if (ok && block)
        ok = pipe_send(k->conn, "COMMIT");
    return ok && PQpipelineSync(k->conn) == 1;
}

static void across_pipe_check(struct across *k, struct pipe *p, int round, bool block)
{
    int first = block ? 1 : 0;
    CU_ASSERT_EQUAL(p->nres, ACROSS_QUERIES + 2 * first);
    if (p->nres != ACROSS_QUERIES + 2 * first)
        return;
    if (block) {
        CU_ASSERT_EQUAL(PQresultStatus(p->res[0]), PGRES_COMMAND_OK);
        CU_ASSERT_EQUAL(PQresultStatus(p->res[p->nres - 1]), PGRES_COMMAND_OK);
    }
    for (int q = 0; q < ACROSS_QUERIES; q++)
        CU_ASSERT_TRUE(across_result_ok(k, q, round * 100 + q, p->res[first + q]));
    CU_ASSERT_EQUAL(PQexitPipelineMode(k->conn), 1);
}

/* Servers change hands: each round one client holds a server in a transaction while the
 * others share the other one; then everyone pipelines at once. */
static void across_rotate_holder(struct across *ks)
{
    for (int round = 0; round < 2 * ACROSS_CLIENTS; round++) {
        struct across *h = &ks[round % ACROSS_CLIENTS];
        CU_ASSERT_TRUE(itu_exec_ok(h->conn, "BEGIN"));
        across_run_sync(h, round);
        for (int j = 0; j < ACROSS_CLIENTS; j++)
            if (&ks[j] != h)
                across_run_sync(&ks[j], round * 10 + j);
        across_run_sync(h, round + 1000);
        CU_ASSERT_TRUE(itu_exec_ok(h->conn, "COMMIT"));
    }
}

static void across_pipeline_rounds(struct across *ks)
{
    static struct pipe ps[ACROSS_CLIENTS];
    for (int round = 0; round < 6; round++) {
        bool block = round % 2 == 1;
        for (int i = 0; i < ACROSS_CLIENTS; i++) {
            ps[i] = (struct pipe){.conn = ks[i].conn};
            CU_ASSERT_TRUE_FATAL(across_pipe_send(&ks[i], round, block));
        }
        CU_ASSERT_TRUE(pipes_wait(ps, ACROSS_CLIENTS, 20000));
        for (int i = 0; i < ACROSS_CLIENTS; i++) {
            if (ps[i].synced)
                across_pipe_check(&ks[i], &ps[i], round, block);
            pipe_clear(&ps[i]);
        }
    }
}

static void test_prepared_across_servers(void)
{
    struct harness_proxy_opts o = txn_opts(ACROSS_POOL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    static struct across ks[ACROSS_CLIENTS];
    memset(ks, 0, sizeof(ks));
    for (int i = 0; i < ACROSS_CLIENTS; i++) {
        ks[i].who = i + 1;
        ks[i].conn = px_conn(NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(ks[i].conn), CONNECTION_OK);
        CU_ASSERT_TRUE_FATAL(across_prepare(&ks[i]));
    }
    across_rotate_holder(ks);
    across_pipeline_rounds(ks);

    int all[16], nall = 0;
    for (int i = 0; i < ACROSS_CLIENTS; i++) {
        PGresult *r = PQdescribePrepared(ks[i].conn, "q_id");
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
        CU_ASSERT_EQUAL(PQnparams(r), 1);
        CU_ASSERT_EQUAL(PQnfields(r), 3);
        PQclear(r);
        across_run_sync(&ks[i], 7);
        for (int j = 0; j < ks[i].npids; j++)
            pid_add(all, &nall, 16, ks[i].pids[j]);
        /* Every client ran on both servers: as the holder on one, else on the other. */
        if (!g_direct)
            CU_ASSERT(ks[i].npids >= 2);
        conn_close(ks[i].conn);
    }
    printf("\n    %d clients ran on %d backend(s) ", ACROSS_CLIENTS, nall);
    if (!g_direct)
        CU_ASSERT(nall >= 2 && nall <= ACROSS_POOL);
    txn_stop();
}

/* ---- 4. a failing pipeline, then business as usual ------------------------------------- */

static void test_pipeline_error_recovers(void)
{
    struct harness_proxy_opts o = txn_opts(1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    PGconn *d = direct_conn();
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    CU_ASSERT_TRUE_FATAL(
        itu_exec_ok(d, "DROP TABLE IF EXISTS txn_pipe; CREATE TABLE txn_pipe(a int)"));
    PGconn *a = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);

    /* The statements before a Sync are one implicit transaction: the error undoes the
     * INSERT before it, and the statement after it is skipped. */
    struct pipe p = {.conn = a};
    CU_ASSERT_EQUAL_FATAL(PQenterPipelineMode(a), 1);
    CU_ASSERT_TRUE(pipe_send(a, "INSERT INTO txn_pipe VALUES (1)"));
    CU_ASSERT_TRUE(pipe_send(a, "SELECT 1/0"));
    CU_ASSERT_TRUE(pipe_send(a, "INSERT INTO txn_pipe VALUES (3)"));
    CU_ASSERT_EQUAL(PQpipelineSync(a), 1);
    CU_ASSERT_TRUE(pipes_wait(&p, 1, 10000));
    CU_ASSERT_EQUAL_FATAL(p.nres, 3);
    CU_ASSERT_EQUAL(PQresultStatus(p.res[0]), PGRES_COMMAND_OK);
    CU_ASSERT_EQUAL(PQresultStatus(p.res[1]), PGRES_FATAL_ERROR);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(p.res[1]), "22012");
    CU_ASSERT_EQUAL(PQresultStatus(p.res[2]), PGRES_PIPELINE_ABORTED);
    pipe_clear(&p);

    /* After the sync the same pipeline goes on, and this time it commits. */
    CU_ASSERT_TRUE(pipe_send(a, "INSERT INTO txn_pipe VALUES (4)"));
    CU_ASSERT_TRUE(pipe_send(a, "SELECT count(*) FROM txn_pipe"));
    CU_ASSERT_EQUAL(PQpipelineSync(a), 1);
    CU_ASSERT_TRUE(pipes_wait(&p, 1, 10000));
    CU_ASSERT_EQUAL_FATAL(p.nres, 2);
    CU_ASSERT_EQUAL(PQresultStatus(p.res[0]), PGRES_COMMAND_OK);
    CU_ASSERT_TRUE(result_is(p.res[1], 1, "1", NULL));
    pipe_clear(&p);
    CU_ASSERT_EQUAL(PQexitPipelineMode(a), 1);

    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 42"), "42");
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_IDLE);

    /* Another client on the pool of one is served, and sees only the committed row. */
    PGconn *b = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SELECT 'b'"), "b");
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SELECT string_agg(a::text, ',') FROM txn_pipe"), "4");
    CU_ASSERT_EQUAL(PQtransactionStatus(b), PQTRANS_IDLE);
    CU_ASSERT_STRING_EQUAL(itu_value(d, "SELECT count(*) FROM txn_pipe"), "1");
    conn_close(b);
    conn_close(a);
    CU_ASSERT_TRUE(itu_exec_ok(d, "DROP TABLE txn_pipe"));
    conn_close(d);
    txn_stop();
}

/* ---- 5. 500 clients on a pool of 10 ------------------------------------------------------ */

#define MANY_CLIENTS        500
#define MANY_CLIENTS_DIRECT 50 /* PostgreSQL itself is not a pooler */
#define MANY_POOL           10
#define MANY_TXNS           20
#define MANY_TIMEOUT_MS     120000

enum mc_phase { MC_CONNECTING, MC_RUNNING, MC_DONE, MC_FAILED };

/*
 * One of the many clients.  Its transactions alternate between one Query "BEGIN; SELECT
 * id, n; COMMIT" and three round trips BEGIN / SELECT id, n / COMMIT (every other one with
 * the SELECT in the extended protocol), so servers are held across round trips.
 */
struct mc {
    PGconn *conn;
    enum mc_phase phase;
    PostgresPollingStatusType want; /* while connecting */
    int id;
    int txn;      /* transactions finished */
    int step;     /* statement of the current transaction */
    bool checked; /* its SELECT returned (id, txn) */
};

static int mc_steps(const struct mc *k)
{
    return k->txn % 2 == 0 ? 1 : 3;
}

static bool mc_send(struct mc *k)
{
    char sql[96], id[16], n[16];
    snprintf(id, sizeof(id), "%d", k->id);
    snprintf(n, sizeof(n), "%d", k->txn);
    int ok;
    if (k->txn % 2 == 0) {
        snprintf(sql, sizeof(sql), "BEGIN; SELECT %d, %d; COMMIT", k->id, k->txn);
        ok = PQsendQuery(k->conn, sql);
    } else if (k->step != 1) {
        ok = PQsendQuery(k->conn, k->step == 0 ? "BEGIN" : "COMMIT");
    } else if (k->txn % 4 == 3) {
        const char *p[2] = {id, n};
        ok = PQsendQueryParams(k->conn, "SELECT $1::int, $2::int", 2, NULL, p, NULL, NULL, 0);
    } else {
        snprintf(sql, sizeof(sql), "SELECT %d, %d", k->id, k->txn);
        ok = PQsendQuery(k->conn, sql);
    }
    if (!ok) {
        fprintf(stderr, "client %d: send failed: %s", k->id, PQerrorMessage(k->conn));
        k->phase = MC_FAILED;
    }
    return ok;
}

static void mc_result(struct mc *k, PGresult *r)
{
    ExecStatusType st = PQresultStatus(r);
    char id[16], n[16];
    snprintf(id, sizeof(id), "%d", k->id);
    snprintf(n, sizeof(n), "%d", k->txn);
    if (st == PGRES_TUPLES_OK && PQntuples(r) == 1 && PQnfields(r) == 2 &&
        strcmp(PQgetvalue(r, 0, 0), id) == 0 && strcmp(PQgetvalue(r, 0, 1), n) == 0) {
        k->checked = true;
    } else if (st != PGRES_COMMAND_OK) {
        fprintf(stderr, "client %d transaction %d: %s %s", k->id, k->txn, PQresStatus(st),
                PQresultErrorMessage(r));
        k->phase = MC_FAILED;
    }
}

/* The current statement is done: next statement, next transaction, or done. */
static void mc_advance(struct mc *k)
{
    if (++k->step < mc_steps(k)) {
        mc_send(k);
        return;
    }
    if (!k->checked) {
        fprintf(stderr, "client %d transaction %d: no result of its SELECT\n", k->id, k->txn);
        k->phase = MC_FAILED;
        return;
    }
    k->step = 0;
    k->checked = false;
    if (++k->txn == MANY_TXNS)
        k->phase = MC_DONE;
    else
        mc_send(k);
}

/* Advances k after its socket was ready. */
static void mc_io(struct mc *k)
{
    if (k->phase == MC_CONNECTING) {
        k->want = PQconnectPoll(k->conn);
        if (k->want == PGRES_POLLING_FAILED) {
            fprintf(stderr, "client %d: connect failed: %s", k->id, PQerrorMessage(k->conn));
            k->phase = MC_FAILED;
        } else if (k->want == PGRES_POLLING_OK) {
            k->phase = MC_RUNNING;
            mc_send(k);
        }
        return;
    }
    if (!PQconsumeInput(k->conn)) {
        fprintf(stderr, "client %d: read failed: %s", k->id, PQerrorMessage(k->conn));
        k->phase = MC_FAILED;
        return;
    }
    while (k->phase == MC_RUNNING && !PQisBusy(k->conn)) {
        PGresult *r = PQgetResult(k->conn);
        if (!r) {
            mc_advance(k);
            continue;
        }
        mc_result(k, r);
        PQclear(r);
    }
}

/* Polls every unfinished client once (up to wait_ms); false when none is left. */
static bool mc_poll(struct mc *ks, int n, struct pollfd *pfds, int *map, int wait_ms)
{
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (ks[i].phase != MC_CONNECTING && ks[i].phase != MC_RUNNING)
            continue;
        short ev = POLLIN;
        if (ks[i].phase == MC_CONNECTING && ks[i].want == PGRES_POLLING_WRITING)
            ev = POLLOUT;
        pfds[k] = (struct pollfd){.fd = PQsocket(ks[i].conn), .events = ev};
        map[k++] = i;
    }
    if (k == 0)
        return false;
    if (poll(pfds, (nfds_t)k, wait_ms) > 0)
        for (int j = 0; j < k; j++)
            if (pfds[j].revents)
                mc_io(&ks[map[j]]);
    return true;
}

/* Raises the soft limit on open files to at least want (this process and pgwarden, which
 * inherits it); true when it is high enough. */
static void test_many_clients_small_pool(void)
{
    int n = g_direct ? MANY_CLIENTS_DIRECT : MANY_CLIENTS;
    CU_ASSERT_TRUE_FATAL(itu_raise_nofile(2 * MANY_CLIENTS + 200));
    struct harness_proxy_opts o = txn_opts(MANY_POOL);
    o.max_client_conn = 2 * MANY_CLIENTS;
    o.query_wait_timeout_ms = MANY_TIMEOUT_MS;
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    PGconn *mon = direct_conn();
    CU_ASSERT_EQUAL_FATAL(PQstatus(mon), CONNECTION_OK);
    (void)wait_value(mon, SERVER_COUNT_SQL, "0", 10000); /* earlier tests' servers gone */
    int baseline = server_count(mon);

    static struct mc ks[MANY_CLIENTS];
    static struct pollfd pfds[MANY_CLIENTS];
    static int map[MANY_CLIENTS];
    memset(ks, 0, sizeof(ks));
    const char *ci = g_direct ? harness_cluster_conninfo("sslmode=disable")
                              : harness_proxy_conninfo(g_px, "sslmode=disable");
    int64_t t0 = itu_now_ms(), deadline = t0 + MANY_TIMEOUT_MS, next_sample = t0;
    for (int i = 0; i < n; i++) {
        ks[i] = (struct mc){.id = i + 1, .want = PGRES_POLLING_WRITING};
        ks[i].conn = PQconnectStart(ci);
        bool started = ks[i].conn && PQstatus(ks[i].conn) != CONNECTION_BAD;
        ks[i].phase = started ? MC_CONNECTING : MC_FAILED;
    }
    int max_servers = 0, samples = 0;
    while (itu_now_ms() < deadline) {
        if (itu_now_ms() >= next_sample) {
            int s = server_count(mon) - baseline;
            max_servers = s > max_servers ? s : max_servers;
            samples++;
            next_sample = itu_now_ms() + 100;
        }
        int64_t left = deadline - itu_now_ms();
        if (!mc_poll(ks, n, pfds, map, left < 100 ? (int)left : 100))
            break;
    }
    int64_t elapsed = itu_now_ms() - t0;
    int done = 0, failed = 0, unfinished = 0, txns = 0;
    for (int i = 0; i < n; i++) {
        done += ks[i].phase == MC_DONE;
        failed += ks[i].phase == MC_FAILED;
        unfinished += ks[i].phase == MC_CONNECTING || ks[i].phase == MC_RUNNING;
        txns += ks[i].txn;
        PQfinish(ks[i].conn);
        ks[i].conn = NULL;
    }
    printf("\n    %d clients x %d transactions: %d done, %d failed, %d unfinished, %d "
           "transactions in %lld ms; at most %d server connection(s) in %d samples ",
           n, MANY_TXNS, done, failed, unfinished, txns, (long long)elapsed, max_servers, samples);
    CU_ASSERT_EQUAL(done, n);
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT_EQUAL(txns, n * MANY_TXNS);
    if (!g_direct) {
        CU_ASSERT(max_servers >= 1 && max_servers <= MANY_POOL);
        CU_ASSERT(server_count(mon) - baseline <= MANY_POOL);
    }
    conn_close(mon);
    txn_stop();
}

/* ---- 6. a client killed inside its transaction ----------------------------------------- */

/* Closes c's socket under libpq so that pgwarden sees the client vanish (no Terminate). */
static void kill_client(PGconn *c)
{
    shutdown(PQsocket(c), SHUT_RDWR);
    conn_close(c);
}

/* What B sees on the pool of one after A vanished: no trace of A's transaction. */
static void check_clean_server(PGconn *b, const char *count_sql, int64_t within_ms)
{
    int64_t t0 = itu_now_ms();
    CU_ASSERT_STRING_EQUAL(itu_value(b, count_sql), "0");
    int64_t waited = itu_now_ms() - t0;
    printf("\n    next client served after %lld ms ", (long long)waited);
    CU_ASSERT(waited < within_ms);
    CU_ASSERT_EQUAL(PQtransactionStatus(b), PQTRANS_IDLE);
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SELECT current_setting('transaction_isolation')"),
                           "read committed");
    /* Not inside A's transaction: that one had an xid (its INSERT). */
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SELECT txid_current_if_assigned() IS NULL"), "t");
    CU_ASSERT_EQUAL(PQtransactionStatus(b), PQTRANS_IDLE);
}

static void test_killed_client_mid_transaction(void)
{
    struct harness_proxy_opts o = txn_opts(1);
    o.query_wait_timeout_ms = 10000;
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    PGconn *d = direct_conn();
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    CU_ASSERT_TRUE_FATAL(
        itu_exec_ok(d, "DROP TABLE IF EXISTS txn_killed; CREATE TABLE txn_killed(a int)"));

    /* A: an open transaction holding the only server, then gone. */
    PGconn *a = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_TRUE(itu_exec_ok(a, "BEGIN ISOLATION LEVEL SERIALIZABLE"));
    CU_ASSERT_TRUE(itu_exec_ok(a, "INSERT INTO txn_killed VALUES (1)"));
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INTRANS);
    kill_client(a);

    PGconn *b = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    check_clean_server(b, "SELECT count(*) FROM txn_killed", 5000);
    CU_ASSERT_TRUE(itu_exec_ok(b, "INSERT INTO txn_killed VALUES (2)"));
    CU_ASSERT_STRING_EQUAL(itu_value(d, "SELECT string_agg(a::text, ',') FROM txn_killed"), "2");

    /* A2: gone while a statement of its transaction is still running. */
    PGconn *a2 = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a2), CONNECTION_OK);
    CU_ASSERT_TRUE(itu_exec_ok(a2, "BEGIN"));
    CU_ASSERT_TRUE(itu_exec_ok(a2, "INSERT INTO txn_killed VALUES (3)"));
    CU_ASSERT_EQUAL(PQsendQuery(a2, "SELECT pg_sleep(3)"), 1);
    itu_sleep_ms(200);
    kill_client(a2);
    check_clean_server(b, "SELECT count(*) FROM txn_killed WHERE a = 3", 5000);
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SELECT string_agg(a::text, ',') FROM txn_killed"), "2");

    /* Nothing of either transaction ever commits, also once A2's statement has ended. */
    CU_ASSERT_TRUE(wait_value(d,
                              "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                              "AND query = 'SELECT pg_sleep(3)'",
                              "0", 8000));
    CU_ASSERT_STRING_EQUAL(itu_value(d, "SELECT string_agg(a::text, ',') FROM txn_killed"), "2");
    conn_close(b);
    CU_ASSERT_TRUE(itu_exec_ok(d, "DROP TABLE txn_killed"));
    conn_close(d);
    txn_stop();
}

/* ---- 7. cancel --------------------------------------------------------------------------- */

/* c runs a long statement and cancels it 300 ms later: 57014 within 2 s of the cancel.
 * Ends the test (closing c) when the statement keeps running. */
static void check_cancel(PGconn *c)
{
    CU_ASSERT_EQUAL_FATAL(PQsendQuery(c, "SELECT pg_sleep(30)"), 1);
    itu_sleep_ms(300);
    int64_t t0 = itu_now_ms();
    CU_ASSERT_TRUE(itu_send_cancel(c));
    PGresult *r = itu_wait_result(c, 2000);
    int64_t took = itu_now_ms() - t0;
    if (!r) {
        conn_close(c);
        CU_FAIL_FATAL("the cancel did not end the statement within 2 s");
    }
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_FATAL_ERROR);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "57014");
    PQclear(r);
    printf("\n    canceled %lld ms after the cancel request ", (long long)took);
}

/* C, which holds no server, cancels while A runs on the server C used before, and while C
 * itself waits for that server: neither statement is canceled. */
static void check_cancel_without_server(PGconn *a, PGconn *c)
{
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'c'"), "c");
    CU_ASSERT_EQUAL_FATAL(PQsendQuery(a, "SELECT pg_sleep(1), 'not canceled'"), 1);
    itu_sleep_ms(200);
    CU_ASSERT_TRUE(itu_send_cancel(c));
    PGresult *r = itu_wait_result(a, 5000);
    CU_ASSERT_TRUE(result_is(r, 2, "", "not canceled"));
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");

    CU_ASSERT_TRUE(itu_exec_ok(a, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 'a holds the server'"), "a holds the server");
    CU_ASSERT_EQUAL_FATAL(PQsendQuery(c, "SELECT 'queued'"), 1);
    itu_sleep_ms(200);
    CU_ASSERT_TRUE(itu_send_cancel(c));
    itu_sleep_ms(200);
    CU_ASSERT_TRUE(itu_exec_ok(a, "COMMIT"));
    r = itu_wait_result(c, 5000);
    CU_ASSERT_TRUE(result_is(r, 1, "queued", NULL));
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 2"), "2");
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 3"), "3");
}

static void test_cancel(void)
{
    struct harness_proxy_opts o = txn_opts(1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    PGconn *a = px_conn(NULL), *c = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);

    /* A statement on its own, then one inside a transaction block. */
    check_cancel(a);
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 1"), "1");
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_IDLE);
    CU_ASSERT_TRUE(itu_exec_ok(a, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 2"), "2");
    check_cancel(a);
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(itu_exec_sqlstate(a, "SELECT 3"), "25P02");
    CU_ASSERT_TRUE(itu_exec_ok(a, "ROLLBACK"));
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 4"), "4");

    check_cancel_without_server(a, c);
    conn_close(c);
    conn_close(a);
    txn_stop();
}

/* ---- 8. the held-back BEGIN answers as PostgreSQL does ---------------------------------- */

/*
 * One statement of a script and what it must give: want is the command tag of a command,
 * the first value of a query, or "!SQLSTATE" of an error; txn the transaction status after
 * it ('I', 'T' or 'E').  A statement starting with '~' goes by the extended protocol.
 */
struct step {
    const char *sql;
    const char *want;
    char txn;
};

#define MAX_STEPS 7

static const struct step begin_scripts[][MAX_STEPS] = {
    {{"BEGIN", "BEGIN", 'T'}, {"SELECT 1", "1", 'T'}, {"COMMIT", "COMMIT", 'I'}},
    {{"BEGIN", "BEGIN", 'T'}, {"COMMIT", "COMMIT", 'I'}},
    {{"BEGIN", "BEGIN", 'T'}, {"ROLLBACK", "ROLLBACK", 'I'}},
    {{"begin;", "BEGIN", 'T'}, {"select 2;", "2", 'T'}, {"end;", "COMMIT", 'I'}},
    {{"/* c */ BEGIN WORK", "BEGIN", 'T'}, {"SELECT 3", "3", 'T'}, {"ABORT", "ROLLBACK", 'I'}},
    {{"BEGIN ISOLATION LEVEL SERIALIZABLE", "BEGIN", 'T'},
     {"SHOW transaction_isolation", "serializable", 'T'},
     {"COMMIT", "COMMIT", 'I'}},
    {{"BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", "BEGIN", 'T'},
     {"SHOW transaction_isolation", "repeatable read", 'T'},
     {"SHOW transaction_read_only", "on", 'T'},
     {"COMMIT", "COMMIT", 'I'}},
    {{"START TRANSACTION", "START TRANSACTION", 'T'},
     {"SELECT 4", "4", 'T'},
     {"COMMIT", "COMMIT", 'I'}},
    {{"START TRANSACTION READ ONLY", "START TRANSACTION", 'T'},
     {"CREATE TABLE txn_ro(a int)", "!25006", 'E'},
     {"ROLLBACK", "ROLLBACK", 'I'}},
    {{"BEGIN", "BEGIN", 'T'},
     {"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET", 'T'},
     {"SHOW transaction_isolation", "serializable", 'T'},
     {"COMMIT", "COMMIT", 'I'}},
    {{"BEGIN", "BEGIN", 'T'},
     {"SELECT 1", "1", 'T'},
     {"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "!25001", 'E'},
     {"ROLLBACK", "ROLLBACK", 'I'}},
    {{"BEGIN", "BEGIN", 'T'},
     {"SELECT 1/0", "!22012", 'E'},
     {"SELECT 1", "!25P02", 'E'},
     {"ROLLBACK", "ROLLBACK", 'I'}},
    {{"BEGIN", "BEGIN", 'T'}, {"SELECT 1/0", "!22012", 'E'}, {"COMMIT", "ROLLBACK", 'I'}},
    {{"BEGIN", "BEGIN", 'T'}, {"BEGIN", "BEGIN", 'T'}, {"COMMIT", "COMMIT", 'I'}},
    {{"COMMIT", "COMMIT", 'I'}},
    {{"ROLLBACK", "ROLLBACK", 'I'}},
    {{"BEGIN ISOLATION LEVEL BOGUS", "!42601", 'I'}},
    {{"BEGIN", "BEGIN", 'T'},
     {"SAVEPOINT sp", "SAVEPOINT", 'T'},
     {"SELECT 1/0", "!22012", 'E'},
     {"ROLLBACK TO SAVEPOINT sp", "ROLLBACK", 'T'},
     {"SELECT 5", "5", 'T'},
     {"COMMIT", "COMMIT", 'I'}},
    {{"BEGIN; SELECT 6; COMMIT", "COMMIT", 'I'}},
    {{"BEGIN; COMMIT", "COMMIT", 'I'}},
    {{"~BEGIN", "BEGIN", 'T'}, {"~SELECT 7", "7", 'T'}, {"~COMMIT", "COMMIT", 'I'}},
    {{"BEGIN", "BEGIN", 'T'}, {"~SELECT 8", "8", 'T'}, {"COMMIT", "COMMIT", 'I'}},
    /* the held BEGIN goes in front of the first Query (txn.h): a syntax error anywhere in
     * that Query fails the BEGIN too, yet the client sees its block fail, as directly */
    {{"BEGIN", "BEGIN", 'T'},
     {"SELEC 1", "!42601", 'E'},
     {"SELECT 1", "!25P02", 'E'},
     {"ROLLBACK", "ROLLBACK", 'I'}},
    {{"BEGIN ISOLATION LEVEL SERIALIZABLE", "BEGIN", 'T'},
     {"SELECT nocol FROM pg_class", "!42703", 'E'},
     {"COMMIT", "ROLLBACK", 'I'}},
    {{"BEGIN", "BEGIN", 'T'},
     {"SELECT 9; SELECT 10", "10", 'T'},
     {"SELECT 'a' || ", "!42601", 'E'},
     {"ROLLBACK", "ROLLBACK", 'I'}},
    /* the held BEGIN in the first extended-protocol group (txn.h px_txn_begin_group):
     * its modes apply, an error there fails the block, its text may have comments */
    {{"BEGIN ISOLATION LEVEL SERIALIZABLE", "BEGIN", 'T'},
     {"~SHOW transaction_isolation", "serializable", 'T'},
     {"~SHOW transaction_read_only", "off", 'T'},
     {"COMMIT", "COMMIT", 'I'}},
    {{"~START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", "START TRANSACTION", 'T'},
     {"~SHOW transaction_isolation", "repeatable read", 'T'},
     {"~CREATE TABLE txn_ro(a int)", "!25006", 'E'},
     {"~COMMIT", "ROLLBACK", 'I'}},
    {{"BEGIN", "BEGIN", 'T'},
     {"~SELECT 1/0", "!22012", 'E'},
     {"~SELECT 1", "!25P02", 'E'},
     {"COMMIT", "ROLLBACK", 'I'}},
    {{"BEGIN /* a comment */ ISOLATION LEVEL SERIALIZABLE", "BEGIN", 'T'},
     {"~SELEC 1", "!42601", 'E'},
     {"~SHOW transaction_isolation", "!25P02", 'E'},
     {"ROLLBACK", "ROLLBACK", 'I'}},
    /* the unnamed statement of before the BEGIN is gone (a simple Query dropped it): the
     * group's first message binds it; so is the one of a Parse inside the block */
    {{"~SELECT 11", "11", 'I'},
     {"BEGIN", "BEGIN", 'T'},
     {"@", "!26000", 'E'},
     {"ROLLBACK", "ROLLBACK", 'I'}},
    {{"~SELECT 12", "12", 'I'},
     {"~BEGIN", "BEGIN", 'T'},
     {"~SELECT 13", "13", 'T'},
     {"@", "13", 'T'},
     {"COMMIT", "COMMIT", 'I'}},
};

/* What a client sees of one statement. */
struct seen {
    ExecStatusType status;
    char got[64]; /* as step.want */
    char txn;
    int notices;
    char position[12]; /* of an error: where psql puts its caret */
};

static void count_notice(void *arg, const PGresult *res)
{
    (void)res;
    (*(int *)arg)++;
}

static void run_step(PGconn *c, const int *notices, const char *sql, struct seen *s)
{
    int before = *notices;
    /* "~...": by the extended protocol; "@": Bind/Execute of the unnamed statement */
    PGresult *r = sql[0] == '~'   ? PQexecParams(c, sql + 1, 0, NULL, NULL, NULL, NULL, 0)
                  : sql[0] == '@' ? PQexecPrepared(c, "", 0, NULL, NULL, NULL, 0)
                                  : PQexec(c, sql);
    s->status = PQresultStatus(r);
    if (s->status == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(s->got, sizeof(s->got), "%s", PQgetvalue(r, 0, 0));
    else if (s->status == PGRES_COMMAND_OK)
        snprintf(s->got, sizeof(s->got), "%s", cmd_tag(r));
    else
        snprintf(s->got, sizeof(s->got), "!%s", itu_sqlstate(r));
    const char *pos = PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION);
    snprintf(s->position, sizeof(s->position), "%s", pos ? pos : "");
    PQclear(r);
    static const char codes[] = {[PQTRANS_IDLE] = 'I',
                                 [PQTRANS_ACTIVE] = 'A',
                                 [PQTRANS_INTRANS] = 'T',
                                 [PQTRANS_INERROR] = 'E',
                                 [PQTRANS_UNKNOWN] = '?'};
    s->txn = codes[PQtransactionStatus(c)];
    s->notices = *notices - before;
}

/* Runs one script on a direct connection and through pgwarden, statement by statement. */
static void compare_script(PGconn *direct, const int *dn, PGconn *via, const int *vn,
                           const struct step *script)
{
    for (int i = 0; i < MAX_STEPS && script[i].sql; i++) {
        const struct step *st = &script[i];
        struct seen want, got;
        run_step(direct, dn, st->sql, &want);
        run_step(via, vn, st->sql, &got);
        bool same = want.status == got.status && strcmp(want.got, got.got) == 0 &&
                    want.txn == got.txn && want.notices == got.notices &&
                    strcmp(want.position, got.position) == 0;
        bool as_written = strcmp(got.got, st->want) == 0 && got.txn == st->txn &&
                          strcmp(want.got, st->want) == 0 && want.txn == st->txn;
        if (!same || !as_written)
            fprintf(stderr,
                    "\"%s\": expected %s %c; PostgreSQL: %s %s %c %d notice(s) position '%s'; "
                    "through pgwarden: %s %s %c %d notice(s) position '%s'\n",
                    st->sql, st->want, st->txn, PQresStatus(want.status), want.got, want.txn,
                    want.notices, want.position, PQresStatus(got.status), got.got, got.txn,
                    got.notices, got.position);
        CU_ASSERT_TRUE(same);
        CU_ASSERT_TRUE(as_written);
    }
}

/* An empty BEGIN ... COMMIT takes no server: it is answered while another client holds
 * the only one (the wait for a server would last query_wait_timeout_ms). */
static void check_begin_takes_no_server(PGconn *p)
{
    PGconn *h = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(h), CONNECTION_OK);
    CU_ASSERT_TRUE(itu_exec_ok(h, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(itu_value(h, "SELECT 'h holds the server'"), "h holds the server");
    int64_t t0 = itu_now_ms();
    PGresult *r = PQexec(p, "BEGIN ISOLATION LEVEL SERIALIZABLE");
    CU_ASSERT_STRING_EQUAL(cmd_tag(r), "BEGIN");
    CU_ASSERT_EQUAL(PQtransactionStatus(p), PQTRANS_INTRANS);
    PQclear(r);
    r = PQexec(p, "COMMIT");
    CU_ASSERT_STRING_EQUAL(cmd_tag(r), "COMMIT");
    CU_ASSERT_EQUAL(PQtransactionStatus(p), PQTRANS_IDLE);
    PQclear(r);
    int64_t took = itu_now_ms() - t0;
    printf("\n    BEGIN + COMMIT answered in %lld ms while the server was busy ", (long long)took);
    CU_ASSERT(took < 1000);
    CU_ASSERT_TRUE(itu_exec_ok(h, "COMMIT"));
    conn_close(h);
}

/* The held BEGIN costs no round trip of its own: PostgreSQL received it in front of the
 * first statement, in one Query (what pg_stat_activity shows); a BEGIN with a comment goes
 * alone, as before. */
static void check_begin_merged(PGconn *p)
{
#define ACTIVITY "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    CU_ASSERT_TRUE(itu_exec_ok(p, "BEGIN ISOLATION LEVEL REPEATABLE READ"));
    CU_ASSERT_STRING_EQUAL(itu_value(p, ACTIVITY),
                           "BEGIN ISOLATION LEVEL REPEATABLE READ;" ACTIVITY);
    CU_ASSERT_STRING_EQUAL(itu_value(p, "SHOW transaction_isolation"), "repeatable read");
    CU_ASSERT_TRUE(itu_exec_ok(p, "COMMIT"));
    CU_ASSERT_TRUE(itu_exec_ok(p, "BEGIN /* alone */"));
    CU_ASSERT_STRING_EQUAL(itu_value(p, ACTIVITY), ACTIVITY);
    CU_ASSERT_TRUE(itu_exec_ok(p, "COMMIT"));
#undef ACTIVITY
}

static void test_held_back_begin(void)
{
    struct harness_proxy_opts o = txn_opts(1);
    o.query_wait_timeout_ms = 3000;
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    PGconn *d = direct_conn(), *p = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(p), CONNECTION_OK);
    static int dn, pn;
    dn = pn = 0;
    PQsetNoticeReceiver(d, count_notice, &dn);
    PQsetNoticeReceiver(p, count_notice, &pn);
    for (size_t i = 0; i < sizeof(begin_scripts) / sizeof(begin_scripts[0]); i++)
        compare_script(d, &dn, p, &pn, begin_scripts[i]);
    if (!g_direct) {
        check_begin_takes_no_server(p);
        check_begin_merged(p);
    }
    conn_close(p);
    conn_close(d);
    txn_stop();
}

/* ---- 8b. the held BEGIN in the first extended-protocol group ---------------------------- */

/* The rows of xbegin_t that d sees: committed ones only. */
static const char *committed_rows(PGconn *d)
{
    return itu_value(d, "SELECT count(*) FROM xbegin_t");
}

/* PQexecParams of sql with one text parameter; the command tag or first value (or
 * "!SQLSTATE") copied into buf. */
static const char *ext_value(PGconn *c, const char *sql, const char *param, char *buf, size_t cap)
{
    const char *p[1] = {param};
    PGresult *r = PQexecParams(c, sql, param ? 1 : 0, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(buf, cap, "%s", PQgetvalue(r, 0, 0));
    else if (PQresultStatus(r) == PGRES_COMMAND_OK)
        snprintf(buf, cap, "%s", cmd_tag(r));
    else
        snprintf(buf, cap, "!%s", itu_sqlstate(r));
    PQclear(r);
    return buf;
}

/* The same for PQexecPrepared of name. */
static const char *prep_value(PGconn *c, const char *name, const char *param, char *buf, size_t cap)
{
    PGresult *r = exec_prep(c, name, param);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(buf, cap, "%s", PQgetvalue(r, 0, 0));
    else if (PQresultStatus(r) == PGRES_COMMAND_OK)
        snprintf(buf, cap, "%s", cmd_tag(r));
    else
        snprintf(buf, cap, "!%s", itu_sqlstate(r));
    PQclear(r);
    return buf;
}

/* Lines of PostgreSQL's log (the cluster's postgres.log) that contain needle; -1 when it
 * cannot be read. */
static int pg_log_lines(const char *needle)
{
    char path[600], line[4096];
    snprintf(path, sizeof(path), "%s/postgres.log", harness_cluster()->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int n = 0;
    while (fgets(line, sizeof(line), f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

/* Waits up to 3 s for a line with needle (the log is written by another process). */
static int wait_pg_log_lines(const char *needle)
{
    int n = pg_log_lines(needle);
    for (int64_t until = itu_now_ms() + 3000; n < 1 && itu_now_ms() < until;) {
        itu_sleep_ms(20);
        n = pg_log_lines(needle);
    }
    return n;
}

/* The first statement is PQexecParams, PQprepare, PQdescribePrepared or PQexecPrepared
 * (a Parse, Bind or Describe starts its group): the block is real (d sees nothing until
 * COMMIT, ROLLBACK undoes it) and its modes apply. */
static void check_group_begins_block(PGconn *p, PGconn *d)
{
    char b[64];
    CU_ASSERT_TRUE(itu_exec_ok(p, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(ext_value(p, "INSERT INTO xbegin_t VALUES ($1::int)", "1", b, 64),
                           "INSERT 0 1");
    CU_ASSERT_EQUAL(PQtransactionStatus(p), PQTRANS_INTRANS);
    CU_ASSERT_STRING_EQUAL(committed_rows(d), "0");
    CU_ASSERT_TRUE(itu_exec_ok(p, "ROLLBACK"));
    CU_ASSERT_STRING_EQUAL(committed_rows(d), "0");
    /* a Parse of a named statement first (its group: Parse, Sync) */
    CU_ASSERT_TRUE(itu_exec_ok(p, "BEGIN"));
    CU_ASSERT_TRUE(prep_ok(p, "ins", "INSERT INTO xbegin_t VALUES ($1::int)"));
    CU_ASSERT_EQUAL(PQtransactionStatus(p), PQTRANS_INTRANS);
    CU_ASSERT_STRING_EQUAL(prep_value(p, "ins", "2", b, 64), "INSERT 0 1");
    CU_ASSERT_STRING_EQUAL(committed_rows(d), "0");
    CU_ASSERT_TRUE(itu_exec_ok(p, "ROLLBACK"));
    /* a Bind of it first (pgbench -M prepared) */
    CU_ASSERT_TRUE(itu_exec_ok(p, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(prep_value(p, "ins", "3", b, 64), "INSERT 0 1");
    CU_ASSERT_STRING_EQUAL(committed_rows(d), "0");
    CU_ASSERT_TRUE(itu_exec_ok(p, "COMMIT"));
    CU_ASSERT_STRING_EQUAL(committed_rows(d), "1");
    /* a Describe first */
    CU_ASSERT_TRUE(itu_exec_ok(p, "BEGIN ISOLATION LEVEL REPEATABLE READ"));
    PGresult *r = PQdescribePrepared(p, "ins");
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    CU_ASSERT_EQUAL(PQnparams(r), 1);
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(ext_value(p, "SHOW transaction_isolation", NULL, b, 64),
                           "repeatable read");
    CU_ASSERT_TRUE(itu_exec_ok(p, "ROLLBACK"));
    /* a Bind too big to be held whole (its head is renamed, the rest streams) */
    CU_ASSERT_TRUE(prep_ok(p, "len",
                           "SELECT length($1::text) || ' ' || "
                           "current_setting('transaction_isolation')"));
    static char big[100001];
    memset(big, 'x', sizeof(big) - 1);
    CU_ASSERT_TRUE(itu_exec_ok(p, "BEGIN ISOLATION LEVEL SERIALIZABLE"));
    CU_ASSERT_STRING_EQUAL(prep_value(p, "len", big, b, 64), "100000 serializable");
    CU_ASSERT_EQUAL(PQtransactionStatus(p), PQTRANS_INTRANS);
    CU_ASSERT_TRUE(itu_exec_ok(p, "COMMIT"));
    /* a READ ONLY block refuses the first statement's write, and stays failed */
    CU_ASSERT_TRUE(itu_exec_ok(p, "BEGIN READ ONLY"));
    CU_ASSERT_STRING_EQUAL(prep_value(p, "ins", "4", b, 64), "!25006");
    CU_ASSERT_EQUAL(PQtransactionStatus(p), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(ext_value(p, "SELECT 1", NULL, b, 64), "!25P02");
    r = PQexec(p, "COMMIT");
    CU_ASSERT_STRING_EQUAL(cmd_tag(r), "ROLLBACK");
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(committed_rows(d), "1");
}

/* What PostgreSQL's statement log shows (log_statement = all): the BEGIN was executed as
 * part of the client's extended-protocol group ("execute <unnamed>: BEGIN ..."), not as a
 * Query of its own ("statement: BEGIN ...", which a BEGIN with a comment before a simple
 * Query still is). */
static void check_group_begin_logged(PGconn *p)
{
    char b[64];
    CU_ASSERT_TRUE(itu_exec_ok(p, "BEGIN /* xbegin-params */"));
    CU_ASSERT_STRING_EQUAL(ext_value(p, "SELECT 'params'", NULL, b, 64), "params");
    CU_ASSERT_TRUE(itu_exec_ok(p, "COMMIT"));
    CU_ASSERT_TRUE(itu_exec_ok(p, "BEGIN /* xbegin-bind */"));
    CU_ASSERT_STRING_EQUAL(prep_value(p, "ins", "5", b, 64), "INSERT 0 1");
    CU_ASSERT_TRUE(itu_exec_ok(p, "COMMIT"));
    CU_ASSERT_TRUE(itu_exec_ok(p, "BEGIN /* xbegin-alone */"));
    CU_ASSERT_STRING_EQUAL(itu_value(p, "SELECT 'simple'"), "simple");
    CU_ASSERT_TRUE(itu_exec_ok(p, "COMMIT"));
    CU_ASSERT_EQUAL(wait_pg_log_lines("statement: BEGIN /* xbegin-alone */"), 1);
    CU_ASSERT_EQUAL(wait_pg_log_lines("execute <unnamed>: BEGIN /* xbegin-params */"), 1);
    CU_ASSERT_EQUAL(wait_pg_log_lines("execute <unnamed>: BEGIN /* xbegin-bind */"), 1);
    CU_ASSERT_EQUAL(pg_log_lines("statement: BEGIN /* xbegin-params */"), 0);
    CU_ASSERT_EQUAL(pg_log_lines("statement: BEGIN /* xbegin-bind */"), 0);
}

/* The types of the messages in buf[0..len), NoticeResponse and ParameterStatus left out,
 * with the status of a ReadyForQuery after its 'Z' (e.g. "12TDCZT"), into out. */
static void reply_types(const uint8_t *buf, size_t len, char *out, size_t cap)
{
    size_t off = 0, k = 0;
    while (off + 5 <= len && k + 3 < cap) {
        uint32_t mlen = itw_get32(buf + off + 1);
        if (mlen < 4 || off + 1 + mlen > len)
            break;
        char t = (char)buf[off];
        if (t != 'N' && t != 'S') {
            out[k++] = t;
            if (t == 'Z' && mlen == 5)
                out[k++] = (char)buf[off + 5];
        }
        off += 1 + mlen;
    }
    out[k] = '\0';
}

/* Sends one extended-protocol group on c's socket, past libpq (which has nothing
 * outstanding): Parse "" sql, Bind, Describe portal, Execute, Sync; the replies' types
 * (reply_types) into out. */
static void raw_group(PGconn *c, const char *sql, char *out, size_t cap)
{
    uint8_t msg[512], reply[4096], body[300];
    size_t len = 0, n = strlen(sql) + 1;
    body[0] = '\0';
    memcpy(body + 1, sql, n);
    memset(body + 1 + n, 0, 2); /* no parameter types */
    static const uint8_t bind[8], exec[5], describe[2] = {'P', '\0'};
    bool ok = itw_msg(msg, sizeof(msg), &len, 'P', body, 1 + n + 2) &&
              itw_msg(msg, sizeof(msg), &len, 'B', bind, sizeof(bind)) &&
              itw_msg(msg, sizeof(msg), &len, 'D', describe, sizeof(describe)) &&
              itw_msg(msg, sizeof(msg), &len, 'E', exec, sizeof(exec)) &&
              itw_msg(msg, sizeof(msg), &len, 'S', "", 0);
    out[0] = '\0';
    CU_ASSERT_TRUE_FATAL(ok);
    CU_ASSERT_EQUAL_FATAL(harness_raw_send(PQsocket(c), msg, len, 2000), 0);
    ssize_t got = itw_recv_until(PQsocket(c), reply, sizeof(reply), "Z", 5000);
    reply_types(reply, got > 0 ? (size_t)got : 0, out, cap);
}

/* The exact replies (libpq would not notice an extra ParseComplete or BindComplete, a
 * driver such as asyncpg or pgJDBC would): the BEGIN's own are not among them. */
static void check_group_replies(PGconn *p)
{
    char types[64];
    CU_ASSERT_TRUE(itu_exec_ok(p, "BEGIN"));
    raw_group(p, "SELECT 1", types, sizeof(types));
    CU_ASSERT_STRING_EQUAL(types, "12TDCZT");
    raw_group(p, "SELECT 2", types, sizeof(types));
    CU_ASSERT_STRING_EQUAL(types, "12TDCZT");
    CU_ASSERT_TRUE(itu_exec_ok(p, "COMMIT"));
    CU_ASSERT_TRUE(itu_exec_ok(p, "BEGIN"));
    raw_group(p, "SELEC 1", types, sizeof(types));
    CU_ASSERT_STRING_EQUAL(types, "EZE");
    raw_group(p, "SELECT 3", types, sizeof(types));
    CU_ASSERT_STRING_EQUAL(types, "EZE");
    PGresult *r = PQexec(p, "COMMIT");
    CU_ASSERT_STRING_EQUAL(cmd_tag(r), "ROLLBACK");
    PQclear(r);
}

/* A BEGIN of a named statement (pgbench -M prepared) leaves the unnamed statement of before
 * it alone on PostgreSQL; through pgwarden the held BEGIN, sent as the unnamed statement
 * (or, before, as a Query), destroys it: a Bind of it gets 26000, never the BEGIN. */
static void check_named_begin_unnamed(PGconn *p)
{
    char b[64];
    CU_ASSERT_STRING_EQUAL(ext_value(p, "SELECT 14", NULL, b, 64), "14");
    CU_ASSERT_TRUE(prep_ok(p, "named_begin", "BEGIN"));
    CU_ASSERT_STRING_EQUAL(prep_value(p, "named_begin", NULL, b, 64), "BEGIN");
    CU_ASSERT_STRING_EQUAL(prep_value(p, "", NULL, b, 64), g_direct ? "14" : "!26000");
    CU_ASSERT_TRUE(itu_exec_ok(p, "ROLLBACK"));
}

static void test_begin_in_first_group(void)
{
    char sql[200];
    snprintf(sql, sizeof(sql), "ALTER ROLE %s SET log_statement = 'all'", harness_cluster()->user);
    bool logging = !g_direct && harness_cluster_exec(sql) == 0; /* for the servers it opens */
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&(struct harness_proxy_opts){
        .pool_mode = "transaction", .pool_size = 1, .auth_type = "scram-sha-256"}));
    PGconn *d = direct_conn(), *p = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(p), CONNECTION_OK);
    CU_ASSERT_TRUE(itu_exec_ok(d, "DROP TABLE IF EXISTS xbegin_t; CREATE TABLE xbegin_t (a int)"));
    check_group_begins_block(p, d);
    check_group_replies(p);
    check_named_begin_unnamed(p);
    if (logging)
        check_group_begin_logged(p);
    conn_close(p);
    CU_ASSERT_TRUE(itu_exec_ok(d, "DROP TABLE xbegin_t"));
    conn_close(d);
    snprintf(sql, sizeof(sql), "ALTER ROLE %s RESET log_statement", harness_cluster()->user);
    if (logging)
        CU_ASSERT_EQUAL(harness_cluster_exec(sql), 0);
    txn_stop();
}

/* ---- 9. session-only features: one warning, nothing leaks -------------------------------- */

/* Lines of pgwarden's log that contain a, b and c; -1 when the log cannot be read. */
static int log_lines_with(const char *a, const char *b, const char *c)
{
    FILE *f = fopen(g_px->log_path, "r");
    if (!f)
        return -1;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        n += strstr(line, a) && strstr(line, b) && strstr(line, c);
    fclose(f);
    return n;
}

/* Waits up to timeout_ms for at least one such line; returns the count. */
static int wait_log_lines_with(const char *a, const char *b, const char *c, int timeout_ms)
{
    int64_t deadline = itu_now_ms() + timeout_ms;
    int n = log_lines_with(a, b, c);
    while (n < 1 && itu_now_ms() < deadline) {
        itu_sleep_ms(50);
        n = log_lines_with(a, b, c);
    }
    return n;
}

/* A sets what would outlive its transaction on a plain connection; B, next on the same
 * (only) server, sees none of it. */
static void check_no_leak(PGconn *a, PGconn *b, PGconn *d)
{
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SHOW search_path"), "\"$user\", public");
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SET search_path = foo; SHOW search_path"), "foo");
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SHOW search_path"), "\"$user\", public");
    CU_ASSERT_TRUE(itu_exec_ok(a, "SET statement_timeout = '10ms'"));
    PGresult *r = PQexec(b, "SELECT pg_sleep(0.1), 'b slept'");
    CU_ASSERT_TRUE(result_is(r, 2, "", "b slept"));
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT pg_advisory_lock(4242)"), "");
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SELECT 'b after the lock'"), "b after the lock");
    if (!g_direct) { /* through pgwarden the server was reset, releasing the lock */
        CU_ASSERT_STRING_EQUAL(itu_value(d, "SELECT pg_try_advisory_lock(4242)"), "t");
        CU_ASSERT_STRING_EQUAL(itu_value(d, "SELECT pg_advisory_unlock(4242)"), "t");
    }
}

static void test_session_feature_warning(void)
{
    struct harness_proxy_opts o = txn_opts(1);
    o.log_level = "info";
    /* the behaviour before state followed clients: reset after the transaction, warned */
    o.pgwarden_extra = "unmovable_state = reset";
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    PGconn *d = direct_conn();
    PGconn *a = px_conn("application_name=itest_listener");
    PGconn *b = px_conn("application_name=itest_other");
    PGconn *l = px_conn("application_name=itest_setlocal");
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(l), CONNECTION_OK);

    /* LISTEN works, and pgwarden warns about it once for this client. */
    CU_ASSERT_TRUE(itu_exec_ok(a, "LISTEN txn_chan"));
    CU_ASSERT_TRUE(itu_exec_ok(a, "LISTEN txn_chan"));
    CU_ASSERT_TRUE(itu_exec_ok(a, "LISTEN txn_other"));
    if (!g_direct) {
        (void)wait_log_lines_with("WARNING", "itest_listener", "LISTEN", 2000);
        itu_sleep_ms(200);
        int n = log_lines_with("WARNING", "itest_listener", "LISTEN");
        printf("\n    %d warning(s) about LISTEN ", n);
        CU_ASSERT_EQUAL(n, 1);
    }

    check_no_leak(a, b, d);

    /* SET LOCAL, the way to set such things in transaction pooling, needs no warning. */
    CU_ASSERT_TRUE(itu_exec_ok(l, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(itu_value(l, "SET LOCAL search_path = foo; SHOW search_path"), "foo");
    CU_ASSERT_TRUE(itu_exec_ok(l, "COMMIT"));
    CU_ASSERT_STRING_EQUAL(itu_value(l, "SHOW search_path"), "\"$user\", public");
    if (!g_direct) {
        itu_sleep_ms(200);
        CU_ASSERT_EQUAL(log_lines_with("WARNING", "itest_setlocal", ""), 0);
        CU_ASSERT_EQUAL(log_lines_with("WARNING", "itest_other", ""), 0);
    }
    conn_close(l);
    conn_close(b);
    conn_close(a);
    conn_close(d);
    txn_stop();
}

/* ---- 10. waiting for a server ends with an error ------------------------------------------ */

static void test_client_waits_then_gets_error(void)
{
    struct harness_proxy_opts o = txn_opts(1);
    o.query_wait_timeout_ms = 500;
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    PGconn *a = px_conn(NULL), *b = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_TRUE(itu_exec_ok(a, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 1"), "1");

    if (!g_direct) {
        /* pgwarden may hang up right after the error: the verbose message keeps the
         * SQLSTATE when the result has none. */
        PQsetErrorVerbosity(b, PQERRORS_VERBOSE);
        int64_t t0 = itu_now_ms();
        PGresult *r = PQexec(b, "SELECT 'b'");
        int64_t waited = itu_now_ms() - t0;
        printf("\n    waiting client got an error after %lld ms ", (long long)waited);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_FATAL_ERROR);
        const char *st = itu_sqlstate(r);
        CU_ASSERT_STRING_EQUAL(st[0] ? st : harness_conn_sqlstate(b), "57014");
        CU_ASSERT(waited >= 400 && waited < 3000);
        PQclear(r);
    }

    /* A never noticed, and commits. */
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 2"), "2");
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INTRANS);
    CU_ASSERT_TRUE(itu_exec_ok(a, "COMMIT"));

    /* The server is free again: a new client is served (within the 500 ms it may wait),
     * and B too if pgwarden kept it connected. */
    PGconn *c = px_conn(NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 3"), "3");
    if (PQstatus(b) == CONNECTION_OK)
        CU_ASSERT_STRING_EQUAL(itu_value(b, "SELECT 4"), "4");
    conn_close(c);
    conn_close(b);
    conn_close(a);
    txn_stop();
}

/* ---- 11. RESET returns to the startup value ----------------------------------------------- */

/* SHOW DateStyle and the DateStyle ParameterStatus are both want. */
static void check_datestyle(PGconn *c, const char *want)
{
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SHOW DateStyle"), want);
    CU_ASSERT_STRING_EQUAL(param_status(c, "DateStyle"), want);
}

static void test_reset_to_startup_value(void)
{
    struct harness_proxy_opts o = txn_opts(1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(txn_start(&o));
    static const char opts[] = "options='-c DateStyle=SQL,DMY'";
    PGconn *a = px_conn(opts), *b = px_conn(opts);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    check_datestyle(a, "SQL, DMY");
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT DATE '2024-03-01'::text"), "01/03/2024");
    CU_ASSERT_TRUE(itu_exec_ok(a, "SET DateStyle = ISO"));
    check_datestyle(a, "ISO, DMY");
    CU_ASSERT_TRUE(itu_exec_ok(a, "RESET DateStyle"));
    check_datestyle(a, "SQL, DMY");

    /* Two clients of the same startup options take turns on the one server. */
    CU_ASSERT_TRUE(itu_exec_ok(b, "SET DateStyle = German"));
    check_datestyle(b, "German, DMY");
    check_datestyle(a, "SQL, DMY");
    CU_ASSERT_TRUE(itu_exec_ok(a, "SET DateStyle = ISO"));
    CU_ASSERT_TRUE(itu_exec_ok(b, "RESET DateStyle"));
    check_datestyle(b, "SQL, DMY");
    check_datestyle(a, "ISO, DMY");
    CU_ASSERT_TRUE(itu_exec_ok(a, "RESET ALL"));
    check_datestyle(a, "SQL, DMY");

    /* A SET rolled back, and a SET LOCAL, end with their transaction. */
    CU_ASSERT_TRUE(itu_exec_ok(a, "BEGIN"));
    CU_ASSERT_TRUE(itu_exec_ok(a, "SET DateStyle = Postgres"));
    check_datestyle(a, "Postgres, DMY");
    CU_ASSERT_TRUE(itu_exec_ok(a, "ROLLBACK"));
    check_datestyle(a, "SQL, DMY");
    CU_ASSERT_TRUE(itu_exec_ok(b, "BEGIN"));
    CU_ASSERT_TRUE(itu_exec_ok(b, "SET LOCAL DateStyle = ISO"));
    check_datestyle(b, "ISO, DMY");
    CU_ASSERT_TRUE(itu_exec_ok(b, "COMMIT"));
    check_datestyle(b, "SQL, DMY");
    CU_ASSERT_STRING_EQUAL(itu_value(b, "SELECT DATE '2024-03-01'::text"), "01/03/2024");
    conn_close(b);
    conn_close(a);
    txn_stop();
}

static void register_suites(void)
{
    static const CU_TestInfo tests[] = {
        {"two_clients_one_server_keep_their_settings", test_two_clients_one_server},
        {"prepared_statements_follow_client", test_prepared_follow_client},
        {"dealloc_extended", test_dealloc_extended},
        {"unnamed_statement_across_groups", test_unnamed_across_groups},
        {"unnamed_statement_gone_after_query_elsewhere", test_unnamed_gone_after_query_elsewhere},
        {"prepared_across_servers", test_prepared_across_servers},
        {"pipeline_error_recovers", test_pipeline_error_recovers},
        {"many_clients_small_pool", test_many_clients_small_pool},
        {"killed_client_mid_transaction", test_killed_client_mid_transaction},
        {"cancel_in_transaction_mode", test_cancel},
        {"held_back_begin_answers_as_postgresql", test_held_back_begin},
        {"held_begin_in_first_extended_group", test_begin_in_first_group},
        {"session_feature_warning", test_session_feature_warning},
        {"client_waits_then_gets_error", test_client_waits_then_gets_error},
        {"reset_returns_to_startup_value", test_reset_to_startup_value},
        {"idle_servers_reused_newest_first", test_idle_servers_reused_newest_first},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("txn", suite_init, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
