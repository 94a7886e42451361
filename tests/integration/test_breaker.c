/*
 * test_breaker.c: the circuit breaker of each database (SPEC section 6, docs/breaker.md)
 * against a real PostgreSQL 15: contention and application errors never open it; backends
 * terminated under a client (57P01) open it and its own probe closes it with the database
 * up; with PostgreSQL stopped it opens, new statements and logins fail with 57P03 within a
 * second (transaction and session pooling, simple and extended protocol, inside a block),
 * /health says 503, and it closes by its own probe once PostgreSQL is back, with no client
 * traffic; behind a TCP relay that blackholes new connections (connects time out) it opens,
 * fails fast where every client would otherwise wait for server_connect_timeout_ms, leaves
 * other databases and a client inside a transaction alone, and closes when the relay
 * forwards again; PostgreSQL restarted under pgbench load: no client hangs and new
 * transactions work within 5 s of the server being back.
 *
 * The program owns its cluster (harness), so it stops and starts it freely.  Every wait is
 * bounded; everything listens on 127.0.0.1.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_relay.h"
#include "itest_util.h"

extern char **environ;

static int suite_init(void)
{
    return itu_suite_init();
}

/* ---- admin port ------------------------------------------------------------------------ */

/* GET path: the status (0 on failure); the body (owned, free()) into *body. */
static int http_get(int port, const char *path, char **body)
{
    char req[256];
    int n =
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    *body = NULL;
    int fd = harness_raw_connect(port, 2000);
    if (fd < 0)
        return 0;
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    ssize_t got = -1;
    if (buf && harness_raw_send(fd, req, (size_t)n, 2000) == 0)
        got = harness_raw_recv(fd, buf, cap - 1, 3000, NULL);
    close(fd);
    if (got < 12) {
        free(buf);
        return 0;
    }
    buf[got] = '\0';
    const char *sep = strstr(buf, "\r\n\r\n");
    *body = strdup(sep ? sep + 4 : "");
    int status = atoi(buf + 9);
    free(buf);
    return status;
}

/* The "breaker" object of the first /pools entry of database (a new reference), or NULL. */
static json_t *pool_breaker(int port, const char *database)
{
    char *body = NULL;
    json_t *out = NULL;
    if (http_get(port, "/pools", &body) == 200) {
        json_t *arr = json_loads(body, 0, NULL);
        size_t i;
        json_t *p;
        json_array_foreach(arr, i, p)
        {
            const char *db = json_string_value(json_object_get(p, "database"));
            if (db && !strcmp(db, database)) {
                out = json_incref(json_object_get(p, "breaker"));
                break;
            }
        }
        json_decref(arr);
    }
    free(body);
    return out;
}

/* The breaker state of database in /pools ("" when not listed); static buffer. */
static const char *breaker_state(int port, const char *database)
{
    static char state[32];
    json_t *b = pool_breaker(port, database);
    snprintf(state, sizeof(state), "%s", b ? json_string_value(json_object_get(b, "state")) : "");
    json_decref(b);
    return state;
}

/* Polls /pools until database's breaker is in state; the time it was seen (ms, monotonic),
 * or -1 after timeout_ms. */
static int64_t wait_breaker(int port, const char *database, const char *state, int timeout_ms)
{
    int64_t end = itu_now_ms() + timeout_ms;
    do {
        if (!strcmp(breaker_state(port, database), state))
            return itu_now_ms();
        itu_sleep_ms(50);
    } while (itu_now_ms() < end);
    fprintf(stderr, "breaker of %s not %s within %d ms (is %s)\n", database, state, timeout_ms,
            breaker_state(port, database));
    return -1;
}

/* The value of the /metrics series whose line starts with series (name and labels); -1
 * when absent. */
static double metric(int port, const char *series)
{
    char *body = NULL;
    double v = -1;
    if (http_get(port, "/metrics", &body) == 200) {
        size_t n = strlen(series);
        for (const char *l = body; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
            if (!strncmp(l, series, n) && l[n] == ' ') {
                v = atof(l + n + 1);
                break;
            }
        }
    }
    free(body);
    return v;
}

static int health(int port)
{
    char *body = NULL;
    int st = http_get(port, "/health", &body);
    free(body);
    return st;
}

/* ---- PostgreSQL ------------------------------------------------------------------------ */

/* pg_ctl stop|start on the harness cluster (as its owner); 0 on success. */
static int pg_ctl(const char *action)
{
    const struct harness_cluster *c = harness_cluster();
    char pgctl[600], data[600], logf[600];
    snprintf(pgctl, sizeof(pgctl), "%s/pg_ctl", c->bindir);
    snprintf(data, sizeof(data), "%s/data", c->dir);
    snprintf(logf, sizeof(logf), "%s/postgres.log", c->dir);
    const char *argv[20];
    int i = 0;
    argv[i++] = "sh", argv[i++] = "-c", argv[i++] = "cd / && exec \"$@\"", argv[i++] = "pg_ctl";
    if (geteuid() == 0)
        argv[i++] = "runuser", argv[i++] = "-u", argv[i++] = "postgres", argv[i++] = "--";
    argv[i++] = pgctl, argv[i++] = "-D", argv[i++] = data, argv[i++] = "-w";
    argv[i++] = "-t", argv[i++] = "60";
    if (strcmp(action, "stop") == 0)
        argv[i++] = "-m", argv[i++] = "fast";
    else
        argv[i++] = "-l", argv[i++] = logf;
    argv[i++] = action;
    argv[i] = NULL;
    char *out = NULL;
    int rc = harness_run(argv, 90000, &out);
    if (rc != 0)
        fprintf(stderr, "pg_ctl %s exited %d:\n%s\n", action, rc, out ? out : "");
    free(out);
    return rc;
}

/* Runs sql on c: its SQLSTATE ("" on success) in a static buffer, the time it took in
 * *ms, the error message into msg (cap bytes, may be NULL). */
static const char *timed_exec(PGconn *c, const char *sql, int64_t *ms, char *msg, size_t cap)
{
    static char state[8];
    int64_t t0 = itu_now_ms();
    PGresult *r = PQexec(c, sql);
    *ms = itu_now_ms() - t0;
    ExecStatusType st = PQresultStatus(r);
    snprintf(state, sizeof(state), "%s",
             st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? "" : itu_sqlstate(r));
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && !state[0])
        snprintf(state, sizeof(state), "?");
    if (msg)
        snprintf(msg, cap, "%s", r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) ?: "" : "");
    PQclear(r);
    return state;
}

/* A [databases] line name = the cluster's PostgreSQL (host, port) with more parameters. */
static const char *db_line(char *buf, size_t cap, const char *name, int port, const char *more)
{
    snprintf(buf, cap, "%s = host=127.0.0.1 port=%d %s", name, port, more);
    return buf;
}

/* ---- contention and application errors never count ---------------------------------- */

static void test_contention_never_opens(void)
{
    char unused[300];
    struct harness_proxy_opts o = {
        .pool_mode = "transaction",
        .pool_size = 2,
        .admin = true,
        .databases_extra =
            db_line(unused, sizeof(unused), "unused", harness_cluster()->port, "dbname=postgres"),
        .tail_extra = "[breaker]\nconsecutive_failures = 3\nmin_requests = 5\n"
                      "failure_rate_pct = 10"};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    /* A configured database nobody has used has its breaker from the start. */
    CU_ASSERT_STRING_EQUAL(breaker_state(px->admin_port, "unused"), "closed");
    CU_ASSERT_EQUAL(metric(px->admin_port, "pgwarden_breaker_state{database=\"unused\"}"), 0);
    PGconn *c = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    static const char *const errors[] = {"40001", "40P01", "55P03", "22012",
                                         "23505", "42601", "57014", "XX000"};
    for (int round = 0; round < 5; round++) {
        for (size_t i = 0; i < sizeof(errors) / sizeof(errors[0]); i++) {
            char sql[200];
            snprintf(sql, sizeof(sql),
                     "DO $$BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = '%s'; END$$", errors[i]);
            CU_ASSERT_STRING_EQUAL(itu_exec_sqlstate(c, sql), errors[i]);
        }
        CU_ASSERT_STRING_EQUAL(itu_exec_sqlstate(c, "SELEC 1"), "42601");
    }
    /* 45 errors, none of the breaker's: closed, nothing counted. */
    CU_ASSERT_STRING_EQUAL(breaker_state(px->admin_port, "pgwarden_test"), "closed");
    CU_ASSERT_EQUAL(metric(px->admin_port, "pgwarden_breaker_failures_total{database="
                                           "\"pgwarden_test\"}"),
                    0);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
    PQfinish(c);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* ---- 57P01 from active servers opens it; the probe closes it with the database up ----- */

static void test_terminated_backends_open_probe_closes(void)
{
    struct harness_proxy_opts o = {.pool_mode = "transaction",
                                   .pool_size = 5,
                                   .admin = true,
                                   .tail_extra = "[breaker]\nopen_ms = 2000\nopen_max_ms = 4000"};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    /* Five clients inside transactions, each on its own server (five logins: successes). */
    PGconn *cs[5];
    for (int i = 0; i < 5; i++) {
        cs[i] = harness_connect(px, "sslmode=disable");
        CU_ASSERT_EQUAL_FATAL(PQstatus(cs[i]), CONNECTION_OK);
        CU_ASSERT_TRUE(itu_exec_ok(cs[i], "BEGIN"));
        CU_ASSERT_STRING_EQUAL(itu_value(cs[i], "SELECT 1"), "1");
    }
    /* Each backend terminates itself: FATAL 57P01 from an active server, then its
     * connection is lost (counted once).  Five in a row open the breaker. */
    for (int i = 0; i < 5; i++) {
        PGresult *r = PQexec(cs[i], "SELECT pg_terminate_backend(pg_backend_pid())");
        CU_ASSERT_NOT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
        PQclear(r);
        PQfinish(cs[i]);
    }
    CU_ASSERT_NOT_EQUAL(strcmp(breaker_state(px->admin_port, "pgwarden_test"), "closed"), 0);
    CU_ASSERT_EQUAL(metric(px->admin_port, "pgwarden_breaker_failures_total{database="
                                           "\"pgwarden_test\"}"),
                    5);
    PGconn *c = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK); /* the welcome is cached */
    int64_t ms;
    char msg[300];
    CU_ASSERT_STRING_EQUAL(timed_exec(c, "SELECT 1", &ms, msg, sizeof(msg)), "57P03");
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, "database \"pgwarden_test\" is unavailable (circuit "
                                       "breaker"));
    /* No client traffic: the probe (a server login) closes it. */
    CU_ASSERT(wait_breaker(px->admin_port, "pgwarden_test", "closed", 8000) > 0);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
    CU_ASSERT_EQUAL(metric(px->admin_port, "pgwarden_breaker_transitions_total{database="
                                           "\"pgwarden_test\",from=\"half-open\",to=\"closed\"}"),
                    1);
    PQfinish(c);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* ---- PostgreSQL stopped ---------------------------------------------------------------- */

/* Connects (dbname extra) and runs SELECT 1 until the statement or the login gets 57P03;
 * true when it did within timeout_ms. */
static bool drive_until_open(const struct harness_proxy *px, const char *extra, int timeout_ms)
{
    int64_t end = itu_now_ms() + timeout_ms;
    while (itu_now_ms() < end) {
        PGconn *c = harness_connect(px, extra);
        const char *st = "";
        if (PQstatus(c) != CONNECTION_OK) {
            st = harness_conn_sqlstate(c);
        } else {
            int64_t ms;
            st = timed_exec(c, "SELECT 1", &ms, NULL, 0);
        }
        bool open = !strcmp(st, "57P03");
        PQfinish(c);
        if (open)
            return true;
    }
    return false;
}

static void test_postgresql_stopped(void)
{
    const struct harness_cluster *cl = harness_cluster();
    char sess[300], dbs[400];
    snprintf(
        dbs, sizeof(dbs), "%s\n* = host=127.0.0.1 port=%d",
        db_line(sess, sizeof(sess), "sess", cl->port, "dbname=pgwarden_test pool_mode=session"),
        cl->port);
    struct harness_proxy_opts o = {
        .pool_mode = "transaction",
        .pool_size = 4,
        .admin = true,
        /* Every attempt reaches PostgreSQL (the pool's fast-fail would answer for it). */
        .pgwarden_extra = "server_login_retry_ms = 0",
        .databases_extra = dbs,
        .tail_extra = "[breaker]\nopen_ms = 1000\nopen_max_ms = 2000"};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *a = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 1"), "1");
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable dbname=sess"));
    CU_ASSERT_STRING_EQUAL(breaker_state(px->admin_port, "pgwarden_test"), "closed");
    CU_ASSERT_STRING_EQUAL(breaker_state(px->admin_port, "sess"), "closed");
    /* A typo in a database name served by *: PostgreSQL refuses the login (3D000).  That
     * pool is no sign of health, then or later (it kept /health at 200 below). */
    PGconn *typo = harness_connect(px, "sslmode=disable dbname=typo_health");
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(typo), "3D000");
    PQfinish(typo);
    CU_ASSERT_EQUAL(health(px->admin_port), 200);
    char *hbody = NULL;
    http_get(px->admin_port, "/health", &hbody);
    json_t *hj = hbody ? json_loads(hbody, 0, NULL) : NULL;
    free(hbody);
    json_t *tj = json_object_get(json_object_get(hj, "databases"), "typo_health/pgwarden_test");
    CU_ASSERT_TRUE(json_is_false(json_object_get(tj, "ok")));
    json_decref(hj);
    /* Another database of the same server, served by *, used once: its pool has no
     * failure of its own when PostgreSQL goes (it made no attempt), but the others' say
     * its server is down too. */
    PGconn *other = harness_connect(px, "sslmode=disable dbname=postgres");
    CU_ASSERT_STRING_EQUAL(itu_value(other, "SELECT 1"), "1");
    PQfinish(other);

    CU_ASSERT_EQUAL_FATAL(pg_ctl("stop"), 0);
    int64_t t_stop = itu_now_ms();
    CU_ASSERT_TRUE(drive_until_open(px, "sslmode=disable", 10000));
    int64_t t_open = itu_now_ms();
    fprintf(stderr, "\n  [breaker] PostgreSQL stopped -> first 57P03: %lld ms\n",
            (long long)(t_open - t_stop));
    hbody = NULL;
    http_get(px->admin_port, "/health", &hbody);
    hj = hbody ? json_loads(hbody, 0, NULL) : NULL;
    free(hbody);
    tj = json_object_get(json_object_get(hj, "databases"), "postgres/pgwarden_test");
    CU_ASSERT_TRUE(json_is_false(json_object_get(tj, "ok")));
    json_decref(hj);

    /* Transaction pooling: a statement fails at once, the client stays connected. */
    int64_t ms;
    char msg[300];
    CU_ASSERT_STRING_EQUAL(timed_exec(a, "SELECT 1", &ms, msg, sizeof(msg)), "57P03");
    fprintf(stderr, "  [breaker] refused statement: %lld ms: %s\n", (long long)ms, msg);
    CU_ASSERT(ms < 1000);
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, "database \"pgwarden_test\" is unavailable (circuit "
                                       "breaker open): next probe in "));
    CU_ASSERT_EQUAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_IDLE);
    /* Extended protocol: Parse/Bind/Describe/Execute/Sync get the error and ReadyForQuery. */
    const char *one[] = {"1"};
    PGresult *r = PQexecParams(a, "SELECT $1::int", 1, NULL, one, NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "57P03");
    PQclear(r);
    CU_ASSERT_EQUAL(PQstatus(a), CONNECTION_OK);
    /* Messages over 64 KiB are dropped as they arrive, never held whole: a 1 MiB Query, a
     * 1 MiB Bind parameter. */
    size_t big = 1 << 20;
    char *sql = malloc(big + 32), *param = malloc(big + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sql);
    CU_ASSERT_PTR_NOT_NULL_FATAL(param);
    memset(param, 'x', big);
    param[big] = '\0';
    snprintf(sql, big + 32, "SELECT length('%s')", param);
    CU_ASSERT_STRING_EQUAL(timed_exec(a, sql, &ms, NULL, 0), "57P03");
    const char *bigp[] = {param};
    r = PQexecParams(a, "SELECT length($1)", 1, NULL, bigp, NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "57P03");
    PQclear(r);
    free(sql);
    free(param);
    CU_ASSERT_STRING_EQUAL(timed_exec(a, "SELECT 1", &ms, NULL, 0), "57P03");
    /* A pipeline flushed before its Sync: the error comes at once, the rest of the group is
     * skipped up to the Sync, which gets ReadyForQuery. */
    CU_ASSERT_EQUAL_FATAL(PQenterPipelineMode(a), 1);
    CU_ASSERT_EQUAL(PQsendQueryParams(a, "SELECT $1::int", 1, NULL, one, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQsendQueryParams(a, "SELECT 2", 0, NULL, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQsendFlushRequest(a), 1);
    CU_ASSERT_EQUAL(PQflush(a), 0);
    int64_t t_pipe = itu_now_ms();
    r = itu_wait_result(a, 5000);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "57P03");
    CU_ASSERT(itu_now_ms() - t_pipe < 1000);
    PQclear(r);
    r = itu_wait_result(a, 5000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_PIPELINE_ABORTED);
    PQclear(r);
    CU_ASSERT_EQUAL(PQpipelineSync(a), 1);
    r = itu_wait_result(a, 5000);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_PIPELINE_SYNC);
    PQclear(r);
    CU_ASSERT_EQUAL(PQexitPipelineMode(a), 1);
    CU_ASSERT_STRING_EQUAL(timed_exec(a, "SELECT 1", &ms, NULL, 0), "57P03");
    CU_ASSERT_EQUAL(PQstatus(a), CONNECTION_OK);
    /* Inside a block: the block fails, later statements get 25P02 as in any failed block
     * (they got 57P03 again), COMMIT answers ROLLBACK. */
    CU_ASSERT_TRUE(itu_exec_ok(a, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(timed_exec(a, "SELECT 1", &ms, NULL, 0), "57P03");
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(timed_exec(a, "SELECT 2", &ms, NULL, 0), "25P02");
    /* PostgreSQL would run a chained end in the failed block: without a server, 57P03 */
    CU_ASSERT_STRING_EQUAL(timed_exec(a, "ROLLBACK AND CHAIN", &ms, NULL, 0), "57P03");
    r = PQexecParams(a, "SELECT $1::int", 1, NULL, one, NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "25P02");
    PQclear(r);
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INERROR);
    r = PQexec(a, "COMMIT");
    CU_ASSERT_STRING_EQUAL(PQcmdStatus(r), "ROLLBACK");
    PQclear(r);
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_IDLE);
    CU_ASSERT_TRUE(itu_exec_ok(a, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(timed_exec(a, "SELECT 1", &ms, NULL, 0), "57P03");
    CU_ASSERT_TRUE(itu_exec_ok(a, "ROLLBACK"));
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_IDLE);

    /* Session pooling: a login that needs a new server gets FATAL 57P03 at once. */
    CU_ASSERT_TRUE(drive_until_open(px, "sslmode=disable dbname=sess", 10000));
    int64_t t0 = itu_now_ms();
    PGconn *s = harness_connect(px, "sslmode=disable dbname=sess");
    int64_t login_ms = itu_now_ms() - t0;
    CU_ASSERT_EQUAL(PQstatus(s), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(s), "57P03");
    CU_ASSERT_PTR_NOT_NULL(strstr(PQerrorMessage(s), "database \"sess\" is unavailable"));
    fprintf(stderr, "  [breaker] refused session login: %lld ms\n", (long long)login_ms);
    CU_ASSERT(login_ms < 1000);
    PQfinish(s);

    CU_ASSERT_NOT_EQUAL(strcmp(breaker_state(px->admin_port, "pgwarden_test"), "closed"), 0);
    CU_ASSERT_EQUAL(health(px->admin_port), 503);
    CU_ASSERT(metric(px->admin_port,
                     "pgwarden_breaker_transitions_total{database=\"pgwarden_test\","
                     "from=\"closed\",to=\"open\"}") >= 1);
    CU_ASSERT(metric(px->admin_port, "pgwarden_breaker_refused_total{database="
                                     "\"pgwarden_test\"}") >= 4);
    CU_ASSERT(metric(px->admin_port, "pgwarden_breaker_state{database=\"pgwarden_test\"}") >= 1);
    /* Probes keep failing while PostgreSQL is down (open 1 s, then 2 s). */
    itu_sleep_ms(2500);
    CU_ASSERT(metric(px->admin_port,
                     "pgwarden_breaker_transitions_total{database=\"pgwarden_test\","
                     "from=\"half-open\",to=\"open\"}") >= 1);

    /* PostgreSQL back, no client traffic: the probes close both breakers. */
    CU_ASSERT_EQUAL_FATAL(pg_ctl("start"), 0);
    int64_t t_back = itu_now_ms();
    int64_t t_closed = wait_breaker(px->admin_port, "pgwarden_test", "closed", 15000);
    CU_ASSERT(t_closed > 0);
    CU_ASSERT(wait_breaker(px->admin_port, "sess", "closed", 15000) > 0);
    fprintf(stderr, "  [breaker] PostgreSQL back -> closed by its probe: %lld ms\n",
            (long long)(t_closed - t_back));
    CU_ASSERT(t_closed - t_back < 5000); /* open_max_ms 2000 + a janitor tick + the login */
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 1"), "1");
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable dbname=sess"));
    CU_ASSERT_EQUAL(health(px->admin_port), 200);
    CU_ASSERT(metric(px->admin_port,
                     "pgwarden_breaker_transitions_total{database=\"pgwarden_test\","
                     "from=\"half-open\",to=\"closed\"}") >= 1);
    CU_ASSERT_EQUAL(metric(px->admin_port, "pgwarden_breaker_state{database=\"pgwarden_test\"}"),
                    0);
    PQfinish(a);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

static void test_blackhole_relay(void)
{
    const struct harness_cluster *cl = harness_cluster();
    int rport = 0;
    pid_t relay = relay_start(cl->port, &rport);
    CU_ASSERT_FATAL(relay > 0);
    char dbs[600], relayed[300], pgdb[300];
    db_line(relayed, sizeof(relayed), "relayed", rport, "dbname=pgwarden_test pool_size=8");
    db_line(pgdb, sizeof(pgdb), "pgdb", cl->port, "dbname=postgres");
    snprintf(dbs, sizeof(dbs), "%s\n%s", relayed, pgdb);
    struct harness_proxy_opts o = {
        .pool_mode = "transaction",
        .pool_size = 4,
        .admin = true,
        .pgwarden_extra = "server_login_retry_ms = 0\nserver_connect_timeout_ms = 2000",
        .databases_extra = dbs,
        .tail_extra = "[breaker]\nopen_ms = 1000\nopen_max_ms = 2000\nprobe_timeout_ms = 500"};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);

    /* A client inside a transaction on a healthy server (through the relay). */
    PGconn *t = harness_connect(px, "sslmode=disable dbname=relayed");
    CU_ASSERT_EQUAL_FATAL(PQstatus(t), CONNECTION_OK);
    CU_ASSERT_TRUE(itu_exec_ok(t, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(itu_value(t, "SELECT 1"), "1");

    kill(relay, SIGUSR1); /* blackhole: new connections hang */
    itu_sleep_ms(100);
    /* Five clients (welcomed from the cache) need servers at once: five connects time out
     * after server_connect_timeout_ms (2 s). */
    PGconn *c[5];
    int64_t t0 = itu_now_ms();
    for (int i = 0; i < 5; i++) {
        c[i] = harness_connect(px, "sslmode=disable dbname=relayed");
        CU_ASSERT_EQUAL(PQstatus(c[i]), CONNECTION_OK);
        CU_ASSERT_EQUAL(PQsendQuery(c[i], "SELECT 1"), 1);
    }
    for (int i = 0; i < 5; i++) {
        PGresult *r = itu_wait_result(c[i], 10000);
        CU_ASSERT_NOT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
        PQclear(r);
        PQfinish(c[i]);
    }
    fprintf(stderr, "\n  [breaker] blackholed connects failed after %lld ms\n",
            (long long)(itu_now_ms() - t0));
    /* The first timeout fails every waiting client; the other connects time out within a
     * janitor tick or two of it (each is a failure): open. */
    bool opened = wait_breaker(px->admin_port, "relayed", "open", 5000) > 0;
    CU_ASSERT_TRUE(opened);
    if (!opened)
        harness_proxy_dump_log(px, 80);

    /* Open: a new statement fails at once instead of waiting 2 s for its connect. */
    PGconn *n = harness_connect(px, "sslmode=disable dbname=relayed");
    CU_ASSERT_EQUAL_FATAL(PQstatus(n), CONNECTION_OK);
    int64_t ms;
    char msg[300];
    CU_ASSERT_STRING_EQUAL(timed_exec(n, "SELECT 1", &ms, msg, sizeof(msg)), "57P03");
    fprintf(stderr, "  [breaker] refused statement behind the blackhole: %lld ms: %s\n",
            (long long)ms, msg);
    CU_ASSERT(ms < 1000);
    CU_ASSERT_PTR_NOT_NULL(strstr(msg, "database \"relayed\" is unavailable"));

    /* The client inside its transaction is not cut off: it finishes it. */
    CU_ASSERT_STRING_EQUAL(itu_value(t, "SELECT 2"), "2");
    CU_ASSERT_TRUE(itu_exec_ok(t, "COMMIT"));
    /* Its next transaction needs a server: refused, still connected. */
    CU_ASSERT_STRING_EQUAL(timed_exec(t, "SELECT 3", &ms, NULL, 0), "57P03");
    CU_ASSERT_EQUAL(PQstatus(t), CONNECTION_OK);

    /* Other databases are unaffected. */
    PGconn *other = harness_connect(px, "sslmode=disable dbname=pgdb");
    CU_ASSERT_EQUAL(PQstatus(other), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(other, "SELECT current_database()"), "postgres");
    PQfinish(other);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    CU_ASSERT_STRING_EQUAL(breaker_state(px->admin_port, "pgdb"), "closed");
    CU_ASSERT_STRING_EQUAL(breaker_state(px->admin_port, "pgwarden_test"), "closed");
    CU_ASSERT_EQUAL(health(px->admin_port), 200);

    /* Probes time out in the blackhole (probe_timeout_ms): it opens again. */
    itu_sleep_ms(2000);
    CU_ASSERT(metric(px->admin_port, "pgwarden_breaker_transitions_total{database=\"relayed\","
                                     "from=\"half-open\",to=\"open\"}") >= 1);
    CU_ASSERT_EQUAL(metric(px->admin_port, "pgwarden_breaker_transitions_total{database=\"pgdb\","
                                           "from=\"closed\",to=\"open\"}"),
                    0);

    kill(relay, SIGUSR2); /* forward again */
    int64_t t_back = itu_now_ms();
    int64_t t_closed = wait_breaker(px->admin_port, "relayed", "closed", 10000);
    CU_ASSERT(t_closed > 0);
    fprintf(stderr, "  [breaker] relay forwarding again -> closed by its probe: %lld ms\n",
            (long long)(t_closed - t_back));
    CU_ASSERT_STRING_EQUAL(itu_value(n, "SELECT 1"), "1");
    CU_ASSERT_STRING_EQUAL(itu_value(t, "SELECT 3"), "3");
    PQfinish(n);
    PQfinish(t);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
    relay_stop(relay);
}

/* ---- PostgreSQL restarted under pgbench ------------------------------------------------ */

/* Starts pgbench through px (its output into out_path); its pid or -1. */
static pid_t pgbench_start(const struct harness_proxy *px, const char *script, int clients,
                           int seconds, const char *out_path)
{
    const struct harness_cluster *cl = harness_cluster();
    char bin[600], port[16], c[16], t[16];
    snprintf(bin, sizeof(bin), "%s/pgbench", cl->bindir);
    snprintf(port, sizeof(port), "%d", px->port);
    snprintf(c, sizeof(c), "%d", clients);
    snprintf(t, sizeof(t), "%d", seconds);
    const char *argv[] = {bin, "-n", "-h", "127.0.0.1", "-p", port, "-U",   "pgwarden_test", "-c",
                          c,   "-j", "2",  "-T",        t,    "-f", script, "pgwarden_test", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    char pw[128];
    snprintf(pw, sizeof(pw), "PGPASSWORD=%s", cl->password);
    char *env[] = {pw, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10", NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, bin, &fa, NULL, (char *const *)argv, env);
    posix_spawn_file_actions_destroy(&fa);
    return rc == 0 ? pid : -1;
}

/* Waits up to timeout_ms for pid; its exit code (128 + signal), -1 on timeout (killed). */
static int wait_child(pid_t pid, int timeout_ms)
{
    int64_t end = itu_now_ms() + timeout_ms;
    for (;;) {
        int ws;
        pid_t r = waitpid(pid, &ws, WNOHANG);
        if (r == pid)
            return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
        if (itu_now_ms() >= end) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return -1;
        }
        itu_sleep_ms(50);
    }
}

static void print_file(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[512];
    while (f && fgets(line, sizeof(line), f))
        fprintf(stderr, "    %s", line);
    if (f)
        fclose(f);
}

static void test_restart_under_pgbench(void)
{
    /* More clients than servers: some wait in the pool's queue when PostgreSQL goes.  The
     * [breaker] defaults (open_ms 1000, open_max_ms 4000). */
    struct harness_proxy_opts o = {.pool_mode = "transaction", .pool_size = 4, .admin = true};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    char script[700], out[700];
    snprintf(script, sizeof(script), "%s/bench.sql", px->dir);
    snprintf(out, sizeof(out), "%s/pgbench.out", px->dir);
    FILE *f = fopen(script, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("BEGIN;\nSELECT count(*) FROM pg_class;\nSELECT pg_sleep(0.002);\nEND;\n", f);
    fclose(f);

    pid_t bench = pgbench_start(px, script, 16, 15, out);
    CU_ASSERT_FATAL(bench > 0);
    itu_sleep_ms(2500);
    int64_t t_stop = itu_now_ms();
    CU_ASSERT_EQUAL_FATAL(pg_ctl("stop"), 0);
    CU_ASSERT_EQUAL_FATAL(pg_ctl("start"), 0);
    int64_t t_back = itu_now_ms();
    /* New transactions work within 5 s of PostgreSQL being back. */
    int64_t t_ok = -1;
    while (t_ok < 0 && itu_now_ms() - t_back < 10000) {
        if (itu_proxy_serves(px, "sslmode=disable"))
            t_ok = itu_now_ms();
        else
            itu_sleep_ms(100);
    }
    CU_ASSERT(t_ok > 0);
    fprintf(stderr,
            "\n  [breaker] PostgreSQL restarted under pgbench: transactions again after "
            "%lld ms\n",
            (long long)(t_ok - t_back));
    CU_ASSERT(t_ok > 0 && t_ok - t_back <= 5000);
    /* No client hangs: pgbench ends (clients that lost their server abort) by its -T. */
    int rc = wait_child(bench, 30000);
    fprintf(stderr, "  [breaker] pgbench under the restart exited %d (by %lld ms after the stop)\n",
            rc, (long long)(itu_now_ms() - t_stop));
    CU_ASSERT(rc == 0 || rc == 2);
    if (rc != 0 && rc != 2)
        print_file(out);
    if (getenv("PGW_TEST_VERBOSE"))
        print_file(out);
    /* And a fresh pgbench runs cleanly. */
    bench = pgbench_start(px, script, 4, 2, out);
    CU_ASSERT_FATAL(bench > 0);
    rc = wait_child(bench, 20000);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc != 0)
        print_file(out);
    CU_ASSERT_STRING_EQUAL(breaker_state(px->admin_port, "pgwarden_test"), "closed");
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* ---- reload ------------------------------------------------------------------------- */

static void test_reload(void)
{
    struct harness_proxy_opts o = {.pool_mode = "transaction",
                                   .pool_size = 2,
                                   .admin = true,
                                   .tail_extra = "[breaker]\nopen_ms = 60000\nopen_max_ms = 60000"};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    CU_ASSERT_STRING_EQUAL(breaker_state(px->admin_port, "later"), "");
    char later[300];
    o.databases_extra =
        db_line(later, sizeof(later), "later", harness_cluster()->port, "dbname=postgres");
    o.tail_extra = "[breaker]\nopen_ms = 2000\nconsecutive_failures = 2";
    CU_ASSERT_EQUAL_FATAL(harness_proxy_rewrite_config(px, &o), 0);
    CU_ASSERT_EQUAL_FATAL(harness_proxy_signal(px, SIGHUP), 0);
    /* The new entry gets its breaker at once, before any client uses it. */
    CU_ASSERT(wait_breaker(px->admin_port, "later", "closed", 5000) > 0);
    CU_ASSERT_EQUAL(metric(px->admin_port, "pgwarden_breaker_state{database=\"later\"}"), 0);
    /* The new settings apply: two terminated backends open it, for 2 s. */
    PGconn *cs[2];
    for (int i = 0; i < 2; i++) {
        cs[i] = harness_connect(px, "sslmode=disable");
        CU_ASSERT_EQUAL_FATAL(PQstatus(cs[i]), CONNECTION_OK);
        CU_ASSERT_TRUE(itu_exec_ok(cs[i], "BEGIN"));
        CU_ASSERT_STRING_EQUAL(itu_value(cs[i], "SELECT 1"), "1");
    }
    for (int i = 0; i < 2; i++) {
        PGresult *r = PQexec(cs[i], "SELECT pg_terminate_backend(pg_backend_pid())");
        PQclear(r);
        PQfinish(cs[i]);
    }
    json_t *b = pool_breaker(px->admin_port, "pgwarden_test");
    CU_ASSERT_STRING_EQUAL(b ? json_string_value(json_object_get(b, "state")) : "", "open");
    json_int_t next = json_integer_value(json_object_get(b, "next_probe_ms"));
    CU_ASSERT(next > 1000 && next <= 2000);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(json_string_value(json_object_get(b, "last_failure")) ?: "", "57P01"));
    json_decref(b);
    CU_ASSERT(wait_breaker(px->admin_port, "pgwarden_test", "closed", 8000) > 0);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

static void register_suites(void)
{
    static const CU_TestInfo tests[] = {
        {"contention_never_opens", test_contention_never_opens},
        {"terminated_backends_open_probe_closes", test_terminated_backends_open_probe_closes},
        {"blackhole_relay", test_blackhole_relay},
        {"reload", test_reload},
        /* These stop and start the program's PostgreSQL. */
        {"postgresql_stopped", test_postgresql_stopped},
        {"restart_under_pgbench", test_restart_under_pgbench},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("breaker", suite_init, NULL, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
