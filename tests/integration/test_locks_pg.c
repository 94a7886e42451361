/*
 * test_locks_pg.c: one lock space across pgwarden instances ([locks] backend = postgresql,
 * docs/design/distributed-locks.md): two and three pgwarden processes in front of one
 * PostgreSQL.  The compatibility matrix across instances, tokens strictly increasing
 * across instances, no starvation of an exclusive request by another instance's readers
 * (the gates), timeouts and try across instances, release at disconnect, SIGKILL of an
 * instance holding a lock, a lost lock connection reported to the holder (at its next lock
 * call, or at its next statement inside a transaction block, which then cannot commit), and 100
 * clients over 3 instances doing read-modify-write under one key with no lost update.
 *
 * Each test starts its own instances and stops them (by PID, through the harness).
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

#define TEST_LIMIT_S 240
#define MAXPX        3
#define LEASE_MS     2000

static struct harness_proxy *g_px[MAXPX];
static bool g_killed[MAXPX];                 /* stopped by the test itself (SIGKILL) */
static const char *g_backend = "postgresql"; /* [locks] backend of the next start_n */
static const char *g_lock_conninfo; /* backend_conninfo of the next start_n (NULL: the cluster) */

static int suite_init(void)
{
    itu_watchdog("test_locks_pg", g_px, MAXPX, 40);
    return itu_suite_init();
}

static void stop_all(void)
{
    for (int i = 0; i < MAXPX; i++) {
        if (!g_px[i])
            continue;
        if (getenv("ITEST_DEBUG"))
            harness_proxy_dump_log(g_px[i], 200);
        /* a clean exit on SIGTERM (no hang, no sanitizer report), unless a test killed it */
        int code = harness_proxy_stop(g_px[i], 0);
        if (!g_killed[i])
            CU_ASSERT_EQUAL(code, 0);
        g_killed[i] = false;
        harness_proxy_free(g_px[i]);
        g_px[i] = NULL;
    }
    alarm(0);
}

static int suite_cleanup(void)
{
    stop_all();
    return 0;
}

/* Starts n instances sharing the cluster's lock space (pool_mode, pool size each). */
static bool start_n(int n, const char *pool_mode, int pool_size, int lock_timeout_ms)
{
    alarm(TEST_LIMIT_S);
    static char tail[2048];
    snprintf(tail, sizeof(tail),
             "[locks]\nbackend = %s\nbackend_conninfo = %s\nbackend_connections = 2\n"
             "lease_ms = %d\nlock_timeout_ms = %d\n",
             g_backend,
             g_lock_conninfo ? g_lock_conninfo : harness_cluster_conninfo("sslmode=disable"),
             LEASE_MS, lock_timeout_ms);
    for (int i = 0; i < n; i++) {
        struct harness_proxy_opts o = {.pool_mode = pool_mode,
                                       .pool_size = pool_size,
                                       .auth_type = "scram-sha-256",
                                       .client_tls_mode = "disable",
                                       .log_level = getenv("ITEST_DEBUG") ? "debug" : "info",
                                       .max_client_conn = 400,
                                       .query_wait_timeout_ms = 60000,
                                       .admin = true,
                                       .tail_extra = tail};
        g_px[i] = harness_proxy_start(&o);
        if (!g_px[i])
            return false;
    }
    return true;
}

static PGconn *conn(int i, const char *extra)
{
    char ci[1024];
    snprintf(ci, sizeof(ci),
             "host=127.0.0.1 port=%d dbname=pgwarden_test user=pgwarden_test "
             "password=test-password sslmode=disable connect_timeout=10 %s",
             g_px[i]->port, extra ? extra : "");
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s", PQerrorMessage(c));
        harness_proxy_dump_log(g_px[i], 20);
    }
    return c;
}

static PGconn *direct(void)
{
    PGconn *c = PQconnectdb(harness_cluster_conninfo("sslmode=disable"));
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "direct: %s", PQerrorMessage(c));
    return c;
}

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

/* The value of an async query's result once ready ("NULL", "!SQLSTATE"); drains it. */
static const char *async_value(PGconn *c)
{
    static char buf[512];
    PGresult *r = itu_wait_result(c, 5000);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(buf, sizeof(buf), "%s", PQgetisnull(r, 0, 0) ? "NULL" : PQgetvalue(r, 0, 0));
    else
        snprintf(buf, sizeof(buf), "!%s", r ? itu_sqlstate(r) : "none");
    PQclear(r);
    PGresult *more;
    while ((more = PQgetResult(c)) != NULL)
        PQclear(more);
    return buf;
}

/* ---- 1. the matrix across two instances ------------------------------------------------- */

static void test_matrix(void)
{
    CU_ASSERT_FATAL(start_n(2, "session", 2, 0));
    PGconn *a = conn(0, NULL), *b = conn(1, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    static const char *modes[] = {"read", "write", "exclusive"};
    /* yes = may be held at the same time (SPEC section 2) */
    static const bool compat[3][3] = {
        {true, true, false}, {true, false, false}, {false, false, false}};
    long long last = 0;
    for (int h = 0; h < 3; h++) {
        for (int r = 0; r < 3; r++) {
            char sql[256];
            snprintf(sql, sizeof(sql), "SELECT pgwarden_lock('m:%d%d', '%s')", h, r, modes[h]);
            long long t = itu_tok(a, sql);
            CU_ASSERT(t > last);
            last = t;
            snprintf(sql, sizeof(sql), "SELECT pgwarden_try_lock('m:%d%d', '%s')", h, r, modes[r]);
            const char *v = itu_q(b, sql);
            if (compat[h][r]) {
                long long t2 = atoll(v);
                if (!(t2 > last))
                    fprintf(stderr, "held %s, try %s on the other instance: %s\n", modes[h],
                            modes[r], v);
                CU_ASSERT(t2 > last);
                last = t2 > last ? t2 : last;
            } else {
                if (strcmp(v, "NULL") != 0)
                    fprintf(stderr, "held %s, try %s on the other instance: %s (want NULL)\n",
                            modes[h], modes[r], v);
                CU_ASSERT_STRING_EQUAL(v, "NULL");
            }
            /* and the same pair in the other order of instances */
            CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock_all()"), "1");
            itu_q(b, "SELECT pgwarden_unlock_all()");
        }
    }
    /* pgwarden_locks() shows the global token */
    long long t = itu_tok(b, "SELECT pgwarden_lock('m:tok', 'write')");
    CU_ASSERT(t > last);
    PGresult *res = PQexec(b, "SELECT * FROM pgwarden_locks()");
    CU_ASSERT(PQntuples(res) == 1 && PQnfields(res) == 4 && atoll(PQgetvalue(res, 0, 3)) == t);
    PQclear(res);
    /* GET /locks: this instance's view, the holder marked held in PostgreSQL, with the
     * global token */
    json_t *j = get_json(g_px[1]->admin_port, "/locks", NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "view")), "this instance only");
    json_t *hd = json_array_get(
        json_object_get(json_array_get(json_object_get(j, "keys"), 0), "holders"), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(hd, "global")), "held");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(hd, "token")), t);
    json_decref(j);
    /* GET /clients shows the same global token */
    j = get_json(g_px[1]->admin_port, "/clients", NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    long long ctok = 0;
    for (size_t i = 0; i < json_array_size(j); i++) {
        json_t *l = json_array_get(json_object_get(json_array_get(j, i), "locks"), 0);
        if (l)
            ctok = json_integer_value(json_object_get(l, "token"));
    }
    CU_ASSERT_EQUAL(ctok, t);
    json_decref(j);
    /* a re-request gets the same token, an upgrade a new one */
    CU_ASSERT_EQUAL(itu_tok(b, "SELECT pgwarden_lock('m:tok', 'read')"), t);
    long long tx = itu_tok(b, "SELECT pgwarden_lock('m:tok', 'exclusive')");
    CU_ASSERT(tx > t);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_try_lock('m:tok', 'read')"), "NULL");
    /* release at disconnect: the other instance gets it */
    PQfinish(b);
    int64_t t0 = itu_now_ms();
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_lock('m:tok', 'exclusive', 5000)") > tx);
    CU_ASSERT(itu_now_ms() - t0 < 1000);
    /* the advisory locks are visible in pg_locks, held by the lock connections */
    PGconn *d = direct();
    CU_ASSERT_STRING_EQUAL(itu_q(d, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a "
                                    "USING (pid) WHERE l.locktype = 'advisory' AND "
                                    "a.application_name LIKE 'pgwarden-locks %' AND l.granted"),
                           "2"); /* exclusive: A and B */
    PQfinish(d);
    PQfinish(a);
    stop_all();
}

/* ---- 2. waits, FIFO and tokens across three instances ------------------------------------- */

static void test_waits_and_tokens(void)
{
    CU_ASSERT_FATAL(start_n(3, "transaction", 2, 0));
    PGconn *a = conn(0, NULL), *b = conn(1, NULL), *c = conn(2, NULL), *a2 = conn(0, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a2), CONNECTION_OK);
    long long t1 = itu_tok(a, "SELECT pgwarden_lock('w:1', 'write')");
    CU_ASSERT(t1 > 0);
    /* b (instance 2) waits; a2 (instance 1) queues locally behind nobody but conflicts
     * with a: lockmgr queues it; c (instance 3) waits too */
    CU_ASSERT_FATAL(PQsendQuery(b, "SELECT pgwarden_lock('w:1', 'write', 10000)"));
    itu_sleep_ms(50);
    CU_ASSERT_FATAL(PQsendQuery(a2, "SELECT pgwarden_lock('w:1', 'write', 10000)"));
    CU_ASSERT_FATAL(PQsendQuery(c, "SELECT pgwarden_lock('w:1', 'write', 10000)"));
    CU_ASSERT_FALSE(ready_within(b, 200));
    CU_ASSERT_FALSE(ready_within(a2, 0));
    CU_ASSERT_FALSE(ready_within(c, 0));
    /* a reader on instance 3 is not blocked by the writers (read/write compatible) */
    PGconn *r = conn(2, NULL);
    CU_ASSERT(itu_tok(r, "SELECT pgwarden_lock('w:1', 'read', 2000)") > t1);
    PQfinish(r);
    /* hand the write lock over three times: every token is larger than the last */
    long long last = t1;
    PGconn *waiting[3] = {b, a2, c};
    bool got[3] = {false, false, false};
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock('w:1')"), "t");
    for (int round = 0; round < 3; round++) {
        int who = -1;
        int64_t until = itu_now_ms() + 5000;
        while (who < 0 && itu_now_ms() < until) {
            for (int i = 0; i < 3 && who < 0; i++)
                if (!got[i] && ready_within(waiting[i], 0))
                    who = i;
            if (who < 0)
                itu_sleep_ms(2);
        }
        CU_ASSERT_FATAL(who >= 0);
        got[who] = true;
        long long t = atoll(async_value(waiting[who]));
        CU_ASSERT(t > last);
        last = t;
        /* only one writer at a time: the others still wait */
        for (int i = 0; i < 3; i++)
            if (!got[i])
                CU_ASSERT_FALSE(ready_within(waiting[i], 0));
        CU_ASSERT_STRING_EQUAL(itu_q(waiting[who], "SELECT pgwarden_unlock('w:1')"), "t");
    }
    /* timeouts and try across instances */
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_lock('w:2', 'exclusive')") > last);
    int64_t t0 = itu_now_ms();
    CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT pgwarden_lock('w:2', 'read', 300)"), "!55P03");
    int64_t waited = itu_now_ms() - t0;
    CU_ASSERT(waited >= 280 && waited < 1500);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT pgwarden_try_lock('w:2', 'read')"), "NULL");
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT * FROM pgwarden_locks()"), "SELECT 0");
    /* a transaction lock goes at COMMIT, also for the other instances */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock('w:2')"), "t");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "BEGIN"), "BEGIN");
    CU_ASSERT(itu_tok(b, "SELECT pgwarden_xact_lock('w:2', 'exclusive')") > last);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT pgwarden_try_lock('w:2', 'read')"), "NULL");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "COMMIT"), "COMMIT");
    t0 = itu_now_ms();
    CU_ASSERT(itu_tok(c, "SELECT pgwarden_lock('w:2', 'read', 3000)") > last);
    CU_ASSERT(itu_now_ms() - t0 < 1000);
    PQfinish(a), PQfinish(a2), PQfinish(b), PQfinish(c);
    stop_all();
}

/* ---- 2b. FIFO within an instance, while another instance holds the key ------------------- */

static void test_fifo_within_instance(void)
{
    CU_ASSERT_FATAL(start_n(2, "session", 8, 0));
    enum { NW = 4 };
    PGconn *h = conn(0, NULL), *w[NW];
    CU_ASSERT_EQUAL_FATAL(PQstatus(h), CONNECTION_OK);
    long long last = itu_tok(h, "SELECT pgwarden_lock('f:1', 'write')");
    CU_ASSERT(last > 0);
    /* NW writers on instance 2 queue in this order */
    for (int i = 0; i < NW; i++) {
        w[i] = conn(1, NULL);
        CU_ASSERT_EQUAL_FATAL(PQstatus(w[i]), CONNECTION_OK);
        CU_ASSERT_FATAL(PQsendQuery(w[i], "SELECT pgwarden_lock('f:1', 'write', 10000)"));
        itu_sleep_ms(30);
    }
    for (int i = 0; i < NW; i++)
        CU_ASSERT_FALSE(ready_within(w[i], 0));
    CU_ASSERT_STRING_EQUAL(itu_q(h, "SELECT pgwarden_unlock('f:1')"), "t");
    /* they are granted one at a time, in arrival order, with growing tokens */
    for (int i = 0; i < NW; i++) {
        CU_ASSERT_FATAL(ready_within(w[i], 3000));
        for (int j = i + 1; j < NW; j++)
            if (ready_within(w[j], 0)) {
                fprintf(stderr, "writer %d granted before writer %d\n", j, i);
                CU_FAIL("not FIFO within the instance");
            }
        long long t = atoll(async_value(w[i]));
        CU_ASSERT(t > last);
        last = t;
        CU_ASSERT_STRING_EQUAL(itu_q(w[i], "SELECT pgwarden_unlock('f:1')"), "t");
    }
    PQfinish(h);
    for (int i = 0; i < NW; i++)
        PQfinish(w[i]);
    stop_all();
}

/* ---- 3. no starvation: another instance's stream of readers ------------------------------ */

static void test_no_starvation(void)
{
    CU_ASSERT_FATAL(start_n(2, "session", 2, 0));
    PGconn *r1 = conn(0, NULL), *r2 = conn(0, NULL), *x = conn(1, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(r2), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(x), CONNECTION_OK);
    /* readers on instance 1 overlap: one always holds the key */
    CU_ASSERT(itu_tok(r1, "SELECT pgwarden_lock('s:1', 'read')") > 0);
    CU_ASSERT_FATAL(PQsendQuery(x, "SELECT pgwarden_lock('s:1', 'exclusive', 20000)"));
    PGconn *holder = r1, *next = r2;
    int64_t t0 = itu_now_ms(), granted_ms = -1;
    int handovers = 0;
    bool stream_stopped = false;
    while (itu_now_ms() - t0 < 4000) {
        if (ready_within(x, 0)) {
            granted_ms = itu_now_ms() - t0;
            break;
        }
        /* the next reader comes while the current one still holds the key */
        const char *v = itu_q(next, "SELECT pgwarden_try_lock('s:1', 'read')");
        if (strcmp(v, "NULL") == 0) {
            /* refused: the exclusive request is first in line; the stream drains */
            stream_stopped = true;
            itu_q(holder, "SELECT pgwarden_unlock('s:1')");
            holder = NULL;
            CU_ASSERT(ready_within(x, 3000));
            granted_ms = itu_now_ms() - t0;
            break;
        }
        itu_q(holder, "SELECT pgwarden_unlock('s:1')");
        PGconn *t = holder;
        holder = next;
        next = t;
        handovers++;
        itu_sleep_ms(5);
    }
    printf("\n    exclusive granted after %lld ms, %d reader hand-overs before the gate ",
           (long long)granted_ms, handovers);
    CU_ASSERT(stream_stopped);
    CU_ASSERT(granted_ms >= 0 && granted_ms < 3000);
    if (granted_ms >= 0) {
        CU_ASSERT(atoll(async_value(x)) > 0);
    }
    PQfinish(r1), PQfinish(r2), PQfinish(x);
    stop_all();
}

/* ---- 3a. no starvation by waiting readers ------------------------------------------------ */

/* As no_starvation, but the readers on instance 0 wait (pgwarden_lock with a timeout, not
 * try) and each holds the key until the next one has it: a reader stopped by instance 1's
 * exclusive gate must not take a read gate of its own and pass on its next attempt. */
static void test_no_starvation_waiting_readers(void)
{
    CU_ASSERT_FATAL(start_n(2, "session", 2, 0));
    PGconn *r[2] = {conn(0, NULL), conn(0, NULL)}, *x = conn(1, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(r[0]), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(r[1]), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(x), CONNECTION_OK);
    CU_ASSERT(itu_tok(r[0], "SELECT pgwarden_lock('sw:1', 'read')") > 0);
    CU_ASSERT_FATAL(PQsendQuery(x, "SELECT pgwarden_lock('sw:1', 'exclusive', 6000)"));
    CU_ASSERT_FALSE(ready_within(x, 200)); /* it waits, first in line */
    int holder = 0, handovers = 0;
    bool waiting = false; /* r[1 - holder] has asked for the key and waits */
    int64_t t0 = itu_now_ms(), granted_ms = -1;
    while (itu_now_ms() - t0 < 4000) {
        if (ready_within(x, 0)) {
            granted_ms = itu_now_ms() - t0;
            break;
        }
        int next = 1 - holder;
        if (!waiting) {
            CU_ASSERT_FATAL(PQsendQuery(r[next], "SELECT pgwarden_lock('sw:1', 'read', 10000)"));
            waiting = true;
        }
        /* the holder goes once the next reader has the key, or, when the next one still
         * waits after 50 ms, goes all the same: then nobody here holds it */
        if (ready_within(r[next], 50)) {
            CU_ASSERT(atoll(async_value(r[next])) > 0);
            waiting = false;
            handovers++;
            CU_ASSERT_STRING_EQUAL(itu_q(r[holder], "SELECT pgwarden_unlock('sw:1')"), "t");
            holder = next;
            continue;
        }
        CU_ASSERT_STRING_EQUAL(itu_q(r[holder], "SELECT pgwarden_unlock('sw:1')"), "t");
        /* the stream drained: the exclusive request goes, then the waiting reader */
        if (ready_within(x, 3000))
            granted_ms = itu_now_ms() - t0;
        if (granted_ms >= 0) {
            long long tx = atoll(async_value(x));
            CU_ASSERT(tx > 0);
            CU_ASSERT_FALSE(ready_within(r[next], 100));
            CU_ASSERT_STRING_EQUAL(itu_q(x, "SELECT pgwarden_unlock('sw:1')"), "t");
            CU_ASSERT(ready_within(r[next], 3000));
            CU_ASSERT(atoll(async_value(r[next])) > tx);
        }
        break;
    }
    printf("\n    exclusive granted after %lld ms, %d waiting-reader hand-overs ",
           (long long)granted_ms, handovers);
    CU_ASSERT(granted_ms >= 0 && granted_ms < 3000);
    PQfinish(r[0]), PQfinish(r[1]), PQfinish(x);
    stop_all();
}

/* ---- 3b. a waiting reader behind another instance's gate, its mode already held here ------ */

static void test_reader_behind_gate(void)
{
    CU_ASSERT_FATAL(start_n(2, "session", 4, 0));
    PGconn *r1 = conn(0, NULL), *r2 = conn(0, NULL), *x = conn(1, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(r2), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(x), CONNECTION_OK);
    long long t1 = itu_tok(r1, "SELECT pgwarden_lock('g:1', 'read')");
    CU_ASSERT(t1 > 0);
    /* instance 2 waits for exclusive: it takes the exclusive gate */
    CU_ASSERT_FATAL(PQsendQuery(x, "SELECT pgwarden_lock('g:1', 'exclusive', 10000)"));
    CU_ASSERT_FALSE(ready_within(x, 200));
    /* a waiting reader on instance 1 stops at that gate (takes no gate of its own: it is
     * not first in line) and polls with the read mode already held by its instance */
    CU_ASSERT_FATAL(PQsendQuery(r2, "SELECT pgwarden_lock('g:1', 'read', 400)"));
    CU_ASSERT(ready_within(r2, 3000));
    const char *v = async_value(r2);
    CU_ASSERT(strcmp(v, "!55P03") == 0 || atoll(v) > t1);
    /* nothing was lost on instance 1: r1 still holds its lock, no 55000 */
    CU_ASSERT_FALSE(harness_proxy_log_contains(g_px[0], "lost"));
    PGresult *res = PQexec(r1, "SELECT * FROM pgwarden_locks()");
    CU_ASSERT_EQUAL(PQresultStatus(res), PGRES_TUPLES_OK);
    CU_ASSERT(PQntuples(res) == 1 && atoll(PQgetvalue(res, 0, 3)) == t1);
    PQclear(res);
    CU_ASSERT_FALSE(ready_within(x, 0));
    /* the readers go: the exclusive request gets the key */
    itu_q(r2, "SELECT pgwarden_unlock_all()");
    CU_ASSERT_STRING_EQUAL(itu_q(r1, "SELECT pgwarden_unlock('g:1')"), "t");
    CU_ASSERT(ready_within(x, 3000));
    CU_ASSERT(atoll(async_value(x)) > t1);
    PQfinish(r1), PQfinish(r2), PQfinish(x);
    stop_all();
}

/* ---- 4. SIGKILL of an instance holding a lock --------------------------------------------- */

static void test_sigkill(void)
{
    CU_ASSERT_FATAL(start_n(2, "session", 2, 0));
    PGconn *a = conn(0, NULL), *b = conn(1, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    long long t = itu_tok(a, "SELECT pgwarden_lock('k:1', 'exclusive')");
    CU_ASSERT(t > 0);
    CU_ASSERT_FATAL(PQsendQuery(b, "SELECT pgwarden_lock('k:1', 'write', 20000)"));
    CU_ASSERT_FALSE(ready_within(b, 300));
    int64_t t0 = itu_now_ms();
    g_killed[0] = true;
    CU_ASSERT_EQUAL(harness_proxy_signal(g_px[0], SIGKILL), 0);
    CU_ASSERT(ready_within(b, LEASE_MS + 1000));
    int64_t took = itu_now_ms() - t0;
    long long t2 = atoll(async_value(b));
    printf("\n    the other instance got the lock %lld ms after the SIGKILL ", (long long)took);
    CU_ASSERT(t2 > t);
    CU_ASSERT(took < LEASE_MS + 1000);
    CU_ASSERT_EQUAL(harness_proxy_wait_exit(g_px[0], 5000), 128 + SIGKILL);
    PQfinish(a), PQfinish(b);
    stop_all();
}

/* ---- 5. a lost lock connection is reported, not silent ------------------------------------ */

static void test_lost_connection(void)
{
    CU_ASSERT_FATAL(start_n(2, "session", 2, 0));
    PGconn *a = conn(0, NULL), *b = conn(1, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    long long t = itu_tok(a, "SELECT pgwarden_lock('l:1', 'write')");
    CU_ASSERT(t > 0);
    /* kill instance 1's lock connections from PostgreSQL's side */
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name "
             "LIKE 'pgwarden-locks %%:%d'",
             (int)g_px[0]->pid);
    CU_ASSERT_EQUAL(harness_cluster_exec(sql), 0);
    /* the other instance may take it now */
    int64_t t0 = itu_now_ms();
    long long t2 = itu_tok(b, "SELECT pgwarden_lock('l:1', 'write', 5000)");
    CU_ASSERT(t2 > t);
    CU_ASSERT(itu_now_ms() - t0 < 3000);
    /* once instance 1 has seen the loss (the same moment PostgreSQL dropped the locks,
     * here), the holder is told at its next lock call, once, and no longer reports it */
    int64_t seen = itu_now_ms() + 3000;
    while (!(harness_proxy_log_contains(g_px[0], "lock connection 0 lost") &&
             harness_proxy_log_contains(g_px[0], "lock connection 1 lost")) &&
           itu_now_ms() < seen)
        itu_sleep_ms(10);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT * FROM pgwarden_locks()"), "!55000");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT * FROM pgwarden_locks()"), "SELECT 0");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT pgwarden_unlock('l:1')"), "t");
    /* after the reconnection, locks work again on instance 1 */
    t0 = itu_now_ms();
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_lock('l:1', 'write', 5000)") > t2);
    CU_ASSERT(itu_now_ms() - t0 < 4000);
    CU_ASSERT(harness_proxy_log_contains(g_px[0], "lock connection"));
    PQfinish(a), PQfinish(b);
    stop_all();
}

/* ---- 5a. PostgreSQL unreachable: new calls wait for it, never a 55000 ------------------- */

/* The instance's lock space is a port where nothing listens: every (re)connect of its lock
 * connections fails.  A new lock call waits for the reconnect within its timeout and ends
 * with 55P03 at the timeout (not 55000 at the next failed reconnect: nothing was held); a
 * try call fails at once with 55P03. */
static void test_new_call_while_down(void)
{
    char ci[256];
    snprintf(ci, sizeof(ci),
             "host=127.0.0.1 port=%d dbname=pgwarden_test user=pgwarden_test connect_timeout=2",
             harness_free_port());
    g_lock_conninfo = ci;
    bool started = start_n(1, "session", 2, 0);
    g_lock_conninfo = NULL;
    CU_ASSERT_FATAL(started);
    PGconn *c = conn(0, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    int64_t until = itu_now_ms() + 3000;
    while (!harness_proxy_log_contains(g_px[0], "lock connection 0 lost") && itu_now_ms() < until)
        itu_sleep_ms(10);
    /* reconnects fail at 0.1, 0.3, 0.7 and 1.5 s after the first: inside this wait */
    int64_t t0 = itu_now_ms();
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT pgwarden_lock('pd:1', 'read', 2000)"), "!55P03");
    int64_t waited = itu_now_ms() - t0;
    CU_ASSERT(waited >= 1900 && waited < 3500);
    t0 = itu_now_ms();
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT pgwarden_try_lock('pd:1', 'write')"), "!55P03");
    CU_ASSERT(itu_now_ms() - t0 < 1000);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT * FROM pgwarden_locks()"), "SELECT 0");
    CU_ASSERT_FALSE(harness_proxy_log_contains(g_px[0], "lost the global lock"));
    PQfinish(c);
    stop_all();
}

/* ---- 5b. a lost lock fails the holder's transaction: its writes are not committed -------- */

/* Terminates instance i's lock connections and waits until it has told that the global
 * lock on key was lost (a key per case: the log keeps earlier losses). */
static bool lose_lock_conns(int i, const char *key)
{
    char sql[512], needle[128];
    snprintf(sql, sizeof(sql),
             "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name "
             "LIKE 'pgwarden-locks %%:%d'",
             (int)g_px[i]->pid);
    if (harness_cluster_exec(sql) != 0)
        return false;
    snprintf(needle, sizeof(needle), "lost the global lock on \"%s\"", key);
    int64_t until = itu_now_ms() + 5000;
    while (!harness_proxy_log_contains(g_px[i], needle) && itu_now_ms() < until)
        itu_sleep_ms(10);
    return harness_proxy_log_contains(g_px[i], needle);
}

/* The row the cases write (from outside pgwarden). */
static const char *row_value(void)
{
    static char buf[512];
    PGconn *d = direct();
    snprintf(buf, sizeof(buf), "%s", itu_q(d, "SELECT v FROM lost_t WHERE id = 1"));
    PQfinish(d);
    return buf;
}

static void lost_in_transaction(const char *mode)
{
    CU_ASSERT_FATAL(start_n(1, mode, 2, 0));
    PGconn *d = direct();
    CU_ASSERT_STRING_EQUAL(itu_q(d, "DROP TABLE IF EXISTS lost_t"), "DROP TABLE");
    CU_ASSERT_STRING_EQUAL(itu_q(d, "CREATE TABLE lost_t (id int PRIMARY KEY, v int)"),
                           "CREATE TABLE");
    CU_ASSERT_STRING_EQUAL(itu_q(d, "INSERT INTO lost_t VALUES (1, 0)"), "INSERT 0 1");
    PQfinish(d);
    PGconn *a = conn(0, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    char key[64], sql[256];

    /* 1. pgwarden_xact_lock, an UPDATE, the loss: the next UPDATE does not run, the block
     * is failed, its COMMIT rolls back, and the loss is reported once */
    snprintf(key, sizeof(key), "lx:%s", mode);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    snprintf(sql, sizeof(sql), "SELECT pgwarden_xact_lock('%s', 'write', 5000)", key);
    CU_ASSERT(itu_tok(a, sql) > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "UPDATE lost_t SET v = v + 1 WHERE id = 1"), "UPDATE 1");
    CU_ASSERT_FATAL(lose_lock_conns(0, key));
    CU_ASSERT_STRING_EQUAL(itu_q(a, "UPDATE lost_t SET v = v + 10 WHERE id = 1"), "!55000");
    CU_ASSERT(itu_error_contains(a, "pgwarden lost the global lock on"));
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "UPDATE lost_t SET v = v + 100 WHERE id = 1"), "!25P02");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "ROLLBACK");
    CU_ASSERT_STRING_EQUAL(row_value(), "0");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT * FROM pgwarden_locks()"), "SELECT 0");

    /* 2. pgwarden_lock (session), a block, the loss: the COMMIT is the next statement */
    snprintf(key, sizeof(key), "ls:%s", mode);
    snprintf(sql, sizeof(sql), "SELECT pgwarden_lock('%s', 'write', 5000)", key);
    CU_ASSERT(itu_tok(a, sql) > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "UPDATE lost_t SET v = v + 1 WHERE id = 1"), "UPDATE 1");
    CU_ASSERT_FATAL(lose_lock_conns(0, key));
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "!55000");
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "ROLLBACK");
    CU_ASSERT_STRING_EQUAL(row_value(), "0");
    snprintf(sql, sizeof(sql), "SELECT pgwarden_unlock('%s')", key);
    CU_ASSERT_STRING_EQUAL(itu_q(a, sql), "f"); /* reported once: no second 55000 */

    /* 3. the extended protocol, and in transaction mode a block without a server yet (the
     * lock call was answered by pgwarden, the BEGIN is held): the group gets the error */
    snprintf(key, sizeof(key), "le:%s", mode);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    snprintf(sql, sizeof(sql), "SELECT pgwarden_xact_lock('%s', 'write', 5000)", key);
    CU_ASSERT(itu_tok(a, sql) > 0);
    CU_ASSERT_FATAL(lose_lock_conns(0, key));
    const char *vals[1] = {"1000"};
    PGresult *r = PQexecParams(a, "UPDATE lost_t SET v = v + $1::int WHERE id = 1", 1, NULL, vals,
                               NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(itu_sqlstate(r), "55000");
    PQclear(r);
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "ROLLBACK");
    CU_ASSERT_STRING_EQUAL(row_value(), "0");

    /* 4. a pipeline: BEGIN, UPDATE, COMMIT in one group sent after the loss of a session
     * lock; the UPDATE waits for the BEGIN's answer, gets the error, nothing commits */
    snprintf(key, sizeof(key), "lp:%s", mode);
    snprintf(sql, sizeof(sql), "SELECT pgwarden_lock('%s', 'write', 5000)", key);
    CU_ASSERT(itu_tok(a, sql) > 0);
    CU_ASSERT_FATAL(lose_lock_conns(0, key));
    CU_ASSERT_FATAL(PQenterPipelineMode(a));
    CU_ASSERT(PQsendQueryParams(a, "BEGIN", 0, NULL, NULL, NULL, NULL, 0));
    CU_ASSERT(PQsendQueryParams(a, "UPDATE lost_t SET v = v + 7 WHERE id = 1", 0, NULL, NULL, NULL,
                                NULL, 0));
    CU_ASSERT(PQsendQueryParams(a, "COMMIT", 0, NULL, NULL, NULL, NULL, 0));
    CU_ASSERT(PQpipelineSync(a));
    int seen_55000 = 0, syncs = 0;
    while (syncs < 1) {
        PGresult *pr = PQgetResult(a);
        if (!pr)
            continue;
        ExecStatusType st = PQresultStatus(pr);
        if (st == PGRES_PIPELINE_SYNC)
            syncs++;
        else if (st == PGRES_FATAL_ERROR && !strcmp(itu_sqlstate(pr), "55000"))
            seen_55000++;
        PQclear(pr);
    }
    CU_ASSERT(PQexitPipelineMode(a));
    CU_ASSERT_EQUAL(seen_55000, 1);
    CU_ASSERT_EQUAL(PQtransactionStatus(a), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "ROLLBACK"), "ROLLBACK");
    CU_ASSERT_STRING_EQUAL(row_value(), "0");

    /* 5. a ROLLBACK runs (it writes nothing) and leaves the report to the next lock call */
    snprintf(key, sizeof(key), "lr:%s", mode);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    snprintf(sql, sizeof(sql), "SELECT pgwarden_xact_lock('%s', 'write', 5000)", key);
    CU_ASSERT(itu_tok(a, sql) > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "UPDATE lost_t SET v = v + 1 WHERE id = 1"), "UPDATE 1");
    CU_ASSERT_FATAL(lose_lock_conns(0, key));
    CU_ASSERT_STRING_EQUAL(itu_q(a, "ROLLBACK"), "ROLLBACK");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT * FROM pgwarden_locks()"), "!55000");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT * FROM pgwarden_locks()"), "SELECT 0");
    CU_ASSERT_STRING_EQUAL(row_value(), "0");

    /* 6. outside a block nothing changes: statements run, the next lock call gets 55000
     * once */
    snprintf(key, sizeof(key), "lo:%s", mode);
    snprintf(sql, sizeof(sql), "SELECT pgwarden_lock('%s', 'write', 5000)", key);
    CU_ASSERT(itu_tok(a, sql) > 0);
    CU_ASSERT_FATAL(lose_lock_conns(0, key));
    CU_ASSERT_STRING_EQUAL(itu_q(a, "UPDATE lost_t SET v = v + 1 WHERE id = 1"), "UPDATE 1");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT * FROM pgwarden_locks()"), "!55000");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT * FROM pgwarden_locks()"), "SELECT 0");
    CU_ASSERT_STRING_EQUAL(row_value(), "1");

    PQfinish(a);
    d = direct();
    itu_q(d, "DROP TABLE lost_t");
    PQfinish(d);
    stop_all();
}

static void test_lost_in_transaction_session(void)
{
    lost_in_transaction("session");
}

static void test_lost_in_transaction_transaction(void)
{
    lost_in_transaction("transaction");
}

/* ---- 6. 100 clients over 3 instances: read-modify-write, no lost update ------------------- */

#define RMW_CLIENTS 100
#define RMW_ROUNDS  3

static void test_read_modify_write(void)
{
    CU_ASSERT_FATAL(start_n(3, "transaction", 5, 0));
    PGconn *d = direct();
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    itu_q(d, "DROP TABLE IF EXISTS lkpg_acct");
    CU_ASSERT_STRING_EQUAL(
        itu_q(d, "CREATE TABLE lkpg_acct(id int primary key, balance int, token bigint)"),
        "CREATE TABLE");
    CU_ASSERT_STRING_EQUAL(itu_q(d, "INSERT INTO lkpg_acct VALUES (1, 0, 0)"), "INSERT 0 1");
    static PGconn *cs[RMW_CLIENTS];
    for (int i = 0; i < RMW_CLIENTS; i++)
        cs[i] = conn(i % 3, NULL);
    enum { S_BEGIN, S_LOCK, S_READ, S_WRITE, S_COMMIT, S_DONE } st[RMW_CLIENTS] = {0};
    int value[RMW_CLIENTS] = {0}, rounds[RMW_CLIENTS] = {0};
    long long token[RMW_CLIENTS] = {0};
    int ok = 0, stale = 0, failed = 0, done = 0;
    int64_t until = itu_now_ms() + 120000;
    for (int i = 0; i < RMW_CLIENTS; i++)
        if (PQstatus(cs[i]) != CONNECTION_OK || !PQsendQuery(cs[i], "BEGIN"))
            st[i] = S_DONE, done++, failed++;
    while (done < RMW_CLIENTS && itu_now_ms() < until) {
        for (int i = 0; i < RMW_CLIENTS; i++) {
            if (st[i] == S_DONE || !ready_within(cs[i], 0))
                continue;
            PGresult *r = itu_wait_result(cs[i], 1000);
            ExecStatusType rs = PQresultStatus(r);
            bool good = rs == PGRES_COMMAND_OK || rs == PGRES_TUPLES_OK;
            if (st[i] == S_LOCK && good)
                token[i] = atoll(PQgetvalue(r, 0, 0));
            if (st[i] == S_READ && good)
                value[i] = atoi(PQgetvalue(r, 0, 0));
            if (st[i] == S_WRITE && good && strcmp(PQcmdTuples(r), "1") != 0)
                stale++; /* the fencing token was refused */
            PQclear(r);
            if (!good) {
                fprintf(stderr, "client %d step %d: %s", i, st[i], PQerrorMessage(cs[i]));
                st[i] = S_DONE;
                done++, failed++;
                continue;
            }
            char sql[200];
            switch (st[i]) {
            case S_BEGIN: PQsendQuery(cs[i], "SELECT pgwarden_xact_lock('acct:1', 'write')"); break;
            case S_LOCK: PQsendQuery(cs[i], "SELECT balance FROM lkpg_acct WHERE id = 1"); break;
            case S_READ:
                snprintf(sql, sizeof(sql),
                         "UPDATE lkpg_acct SET balance = %d, token = %lld WHERE id = 1 AND "
                         "token < %lld",
                         value[i] + 1, token[i], token[i]);
                PQsendQuery(cs[i], sql);
                break;
            case S_WRITE: PQsendQuery(cs[i], "COMMIT"); break;
            case S_COMMIT:
                ok++;
                if (++rounds[i] < RMW_ROUNDS) {
                    PQsendQuery(cs[i], "BEGIN");
                    st[i] = S_BEGIN;
                    continue;
                }
                done++;
                break;
            default: break;
            }
            st[i]++;
        }
        itu_sleep_ms(1);
    }
    const char *bal = itu_q(d, "SELECT balance FROM lkpg_acct WHERE id = 1");
    printf("\n    %d read-modify-writes over 3 instances, balance %s, stale tokens %d ", ok, bal,
           stale);
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT_EQUAL(stale, 0);
    CU_ASSERT_EQUAL(ok, RMW_CLIENTS * RMW_ROUNDS);
    CU_ASSERT_EQUAL(atoi(bal), ok);
    /* lock connections: backend_connections per instance, whatever the waiters were */
    CU_ASSERT(atoi(itu_q(d, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                            "'pgwarden-locks %'")) <= 6);
    for (int i = 0; i < RMW_CLIENTS; i++)
        PQfinish(cs[i]);
    itu_q(d, "DROP TABLE lkpg_acct");
    PQfinish(d);
    stop_all();
}

/* ---- 7. deadlocks across instances: 40P01 to the wait that began last ------------------ */

/* pgwarden_<name>_total of instance i. */
static long long metric(int i, const char *name)
{
    char series[128];
    snprintf(series, sizeof(series), "pgwarden_%s_total", name);
    return (long long)metric_value(g_px[i]->admin_port, series);
}

/* The sqlstate of an async query's result once ready, its DETAIL copied to detail. */
static const char *async_error(PGconn *c, int ms, char *detail, size_t cap)
{
    static char buf[64];
    detail[0] = '\0';
    if (!ready_within(c, ms))
        return "still waiting";
    PGresult *r = PQgetResult(c);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(buf, sizeof(buf), "%s", PQgetisnull(r, 0, 0) ? "NULL" : PQgetvalue(r, 0, 0));
    else
        snprintf(buf, sizeof(buf), "!%s", r ? itu_sqlstate(r) : "none");
    const char *d = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL) : NULL;
    snprintf(detail, cap, "%s", d ? d : "");
    PQclear(r);
    PGresult *more;
    while ((more = PQgetResult(c)) != NULL)
        PQclear(more);
    return buf;
}

/* Without a lock timeout, only the detector can end the cycle: b's wait began last, so b
 * gets 40P01 (once, from its own instance) within deadlock_timeout_ms; a keeps waiting
 * until b lets go of what it holds, as after a lockmgr deadlock. */
static void test_cross_instance_deadlock(void)
{
    CU_ASSERT_FATAL(start_n(2, "session", 2, 0));
    PGconn *a = conn(0, NULL), *b = conn(1, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_lock('d:1', 'exclusive')") > 0);
    CU_ASSERT(itu_tok(b, "SELECT pgwarden_lock('d:2', 'exclusive')") > 0);
    CU_ASSERT_FATAL(PQsendQuery(a, "SELECT pgwarden_lock('d:2', 'exclusive')"));
    itu_sleep_ms(100);
    int64_t t0 = itu_now_ms();
    CU_ASSERT_FATAL(PQsendQuery(b, "SELECT pgwarden_lock('d:1', 'exclusive')"));
    char detail[1024];
    const char *v = async_error(b, 4000, detail, sizeof(detail));
    int64_t took = itu_now_ms() - t0;
    CU_ASSERT_STRING_EQUAL(v, "!40P01");
    CU_ASSERT_PTR_NOT_NULL(strstr(detail, "across pgwarden instances"));
    CU_ASSERT(took < 3000); /* deadlock_timeout_ms = 1000, slack for sanitizers */
    printf("\n    deadlock across 2 instances broken after %lld ms ", (long long)took);
    if (strcmp(v, "!40P01") != 0) { /* still deadlocked: end it by stopping the instances */
        PQfinish(a), PQfinish(b);
        stop_all();
        return;
    }
    CU_ASSERT_FALSE(ready_within(a, 300)); /* no second victim: a waits for d:2 */
    CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT pgwarden_unlock('d:2')"), "t");
    CU_ASSERT(ready_within(a, 3000));
    CU_ASSERT(atoll(async_value(a)) > 0);
    CU_ASSERT_EQUAL(metric(1, "lock_instance_deadlocks"), 1);
    CU_ASSERT_EQUAL(metric(0, "lock_instance_deadlocks"), 0);
    PQfinish(a), PQfinish(b);
    stop_all();
}

/* Three instances in a ring of transaction locks: x (instance 0) holds r:1 and waits for
 * r:2, y (1) holds r:2 and waits for r:3, z (2) holds r:3 and waits for r:1.  The victim is
 * the wait that began last (z's); its ROLLBACK frees r:3 and the rest completes. */
static void test_three_instance_ring(void)
{
    CU_ASSERT_FATAL(start_n(3, "transaction", 2, 0));
    PGconn *x = conn(0, NULL), *y = conn(1, NULL), *z = conn(2, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(x), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(y), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(z), CONNECTION_OK);
    const char *lk[3] = {"r:1", "r:2", "r:3"};
    PGconn *c[3] = {x, y, z};
    char sql[128];
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_STRING_EQUAL(itu_q(c[i], "BEGIN"), "BEGIN");
        snprintf(sql, sizeof(sql), "SELECT pgwarden_xact_lock('%s', 'write')", lk[i]);
        CU_ASSERT(itu_tok(c[i], sql) > 0);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(sql, sizeof(sql), "SELECT pgwarden_xact_lock('%s', 'exclusive')", lk[(i + 1) % 3]);
        CU_ASSERT_FATAL(PQsendQuery(c[i], sql));
        itu_sleep_ms(100);
    }
    char detail[1024];
    const char *v = async_error(z, 4000, detail, sizeof(detail));
    CU_ASSERT_STRING_EQUAL(v, "!40P01");
    if (strcmp(v, "!40P01") != 0) {
        PQfinish(x), PQfinish(y), PQfinish(z);
        stop_all();
        return;
    }
    CU_ASSERT_PTR_NOT_NULL(strstr(detail, "a cycle of 3 lock waits"));
    CU_ASSERT_FALSE(ready_within(x, 200));
    CU_ASSERT_FALSE(ready_within(y, 1));
    CU_ASSERT_STRING_EQUAL(itu_q(z, "ROLLBACK"), "ROLLBACK");
    CU_ASSERT(ready_within(y, 3000));
    CU_ASSERT(atoll(async_value(y)) > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(y, "COMMIT"), "COMMIT");
    CU_ASSERT(ready_within(x, 3000));
    CU_ASSERT(atoll(async_value(x)) > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(x, "COMMIT"), "COMMIT");
    long long victims = 0;
    for (int i = 0; i < 3; i++)
        victims += metric(i, "lock_instance_deadlocks");
    CU_ASSERT_EQUAL(victims, 1);
    PQfinish(x), PQfinish(y), PQfinish(z);
    stop_all();
}

/* Long waits on both instances that form a chain, not a cycle: b (1) waits for d:1 held
 * by a (0); a waits for d:2 held by c (1), which waits for nothing.  Nobody gets 40P01,
 * though both instances exchange their parts; when c lets go, everything is granted. */
static void test_long_chain_not_deadlock(void)
{
    CU_ASSERT_FATAL(start_n(2, "session", 2, 0));
    PGconn *a = conn(0, NULL), *b = conn(1, NULL), *c = conn(1, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_lock('d:1', 'write')") > 0);
    CU_ASSERT(itu_tok(c, "SELECT pgwarden_lock('d:2', 'exclusive')") > 0);
    CU_ASSERT_FATAL(PQsendQuery(a, "SELECT pgwarden_lock('d:2', 'read')"));
    CU_ASSERT_FATAL(PQsendQuery(b, "SELECT pgwarden_lock('d:1', 'write')"));
    CU_ASSERT_FALSE(ready_within(a, 2500));
    CU_ASSERT_FALSE(ready_within(b, 1));
    CU_ASSERT(metric(0, "lock_graph_rounds") > 0);
    CU_ASSERT(metric(1, "lock_graph_rounds") > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT pgwarden_unlock('d:2')"), "t");
    CU_ASSERT(ready_within(a, 3000));
    CU_ASSERT(atoll(async_value(a)) > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock('d:1')"), "t");
    CU_ASSERT(ready_within(b, 3000));
    CU_ASSERT(atoll(async_value(b)) > 0);
    CU_ASSERT_EQUAL(metric(0, "lock_instance_deadlocks"), 0);
    CU_ASSERT_EQUAL(metric(1, "lock_instance_deadlocks"), 0);
    PQfinish(a), PQfinish(b), PQfinish(c);
    stop_all();
}

/* A hand-over within instance 0 from an exclusive holder to a reader keeps only what the
 * reader needs in PostgreSQL: instance 1 can then take the key for writing and reading
 * (a leak of the exclusive advisory locks would make both NULL for as long as the reader
 * holds it). */
static void test_handover_keeps_only_needed(void)
{
    CU_ASSERT_FATAL(start_n(2, "session", 2, 0));
    PGconn *a = conn(0, NULL), *b = conn(0, NULL), *c = conn(1, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    long long ta = itu_tok(a, "SELECT pgwarden_lock('h:1', 'exclusive')");
    CU_ASSERT(ta > 0);
    CU_ASSERT_FATAL(PQsendQuery(b, "SELECT pgwarden_lock('h:1', 'read')"));
    CU_ASSERT_FALSE(ready_within(b, 200));
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock('h:1')"), "t");
    CU_ASSERT(ready_within(b, 3000));
    long long tb = atoll(async_value(b));
    CU_ASSERT(tb > ta);
    /* the release of what the reader does not need follows the grant by a round trip */
    const char *w = "NULL";
    for (int i = 0; i < 50 && strcmp(w, "NULL") == 0; i++) {
        w = itu_q(c, "SELECT pgwarden_try_lock('h:1', 'write')");
        if (strcmp(w, "NULL") == 0)
            itu_sleep_ms(20);
    }
    CU_ASSERT(atoll(w) > tb);
    CU_ASSERT(itu_tok(c, "SELECT pgwarden_try_lock('h:1', 'read')") > tb);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT pgwarden_try_lock('h:1', 'exclusive')"), "NULL");
    PQfinish(a), PQfinish(b), PQfinish(c);
    stop_all();
}

/* ---- 7a. a failed upgrade keeps what was held ------------------------------------------ */

/* What c holds of its one lock, as pgwarden_locks() shows it: "mode token", or the
 * command tag / error when it holds no lock. */
static const char *held(PGconn *c)
{
    static char buf[600];
    PGresult *r = PQexec(c, "SELECT * FROM pgwarden_locks()"); /* key, mode, scope, token */
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) != 4)
        return itu_result_text(r); /* frees r */
    snprintf(buf, sizeof(buf), "%s %s", PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 3));
    PQclear(r);
    return buf;
}

/* u holds read on instance 1, w holds write on instance 0 (compatible).  u's upgrade to
 * write cannot be granted (w is a writer on another instance): whether it is a try (NULL),
 * a wait that times out (55P03) or a wait cancelled (57014), u keeps its read lock, with
 * its token, in both scopes; another client still cannot take the key exclusively. */
static void test_failed_upgrade_keeps_read(void)
{
    CU_ASSERT_FATAL(start_n(2, "session", 4, 0));
    PGconn *u = conn(1, NULL), *w = conn(0, NULL), *x = conn(0, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(u), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(w), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(x), CONNECTION_OK);
    long long tr = itu_tok(u, "SELECT pgwarden_lock('up:1', 'read')");
    CU_ASSERT_FATAL(tr > 0);
    CU_ASSERT(itu_tok(w, "SELECT pgwarden_lock('up:1', 'write')") > tr);
    char want[64];
    snprintf(want, sizeof(want), "read %lld", tr);

    CU_ASSERT_STRING_EQUAL(itu_q(u, "SELECT pgwarden_try_lock('up:1', 'write')"), "NULL");
    CU_ASSERT_STRING_EQUAL(held(u), want);
    CU_ASSERT_STRING_EQUAL(itu_q(u, "SELECT pgwarden_lock('up:1', 'write', 200)"), "!55P03");
    CU_ASSERT_STRING_EQUAL(held(u), want);
    CU_ASSERT_FATAL(PQsendQuery(u, "SELECT pgwarden_lock('up:1', 'write', 10000)"));
    CU_ASSERT_FALSE(ready_within(u, 200));
    CU_ASSERT(itu_send_cancel(u));
    CU_ASSERT(ready_within(u, 3000));
    CU_ASSERT_STRING_EQUAL(async_value(u), "!57014");
    CU_ASSERT_STRING_EQUAL(held(u), want);

    /* the read lock is still held in PostgreSQL: once the writer goes, another client
     * (on the writer's instance) still cannot take the key exclusively */
    CU_ASSERT_STRING_EQUAL(itu_q(w, "SELECT pgwarden_unlock('up:1')"), "t");
    itu_sleep_ms(100); /* the writer's release reaches PostgreSQL */
    CU_ASSERT_STRING_EQUAL(itu_q(x, "SELECT pgwarden_try_lock('up:1', 'exclusive')"), "NULL");
    /* and the upgrade goes through now */
    CU_ASSERT(itu_tok(u, "SELECT pgwarden_lock('up:1', 'write', 3000)") > tr);
    CU_ASSERT_STRING_EQUAL(itu_q(u, "SELECT pgwarden_unlock('up:1')"), "t");

    /* transaction scope: the same */
    CU_ASSERT(itu_tok(w, "SELECT pgwarden_lock('up:2', 'write')") > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(u, "BEGIN"), "BEGIN");
    long long tx = itu_tok(u, "SELECT pgwarden_xact_lock('up:2', 'read')");
    CU_ASSERT(tx > 0);
    snprintf(want, sizeof(want), "read %lld", tx);
    CU_ASSERT_STRING_EQUAL(itu_q(u, "SELECT pgwarden_try_xact_lock('up:2', 'write')"), "NULL");
    CU_ASSERT_STRING_EQUAL(held(u), want);
    CU_ASSERT_STRING_EQUAL(itu_q(w, "SELECT pgwarden_unlock('up:2')"), "t");
    itu_sleep_ms(100);
    CU_ASSERT_STRING_EQUAL(itu_q(x, "SELECT pgwarden_try_lock('up:2', 'exclusive')"), "NULL");
    CU_ASSERT_STRING_EQUAL(itu_q(u, "COMMIT"), "COMMIT");
    CU_ASSERT_STRING_EQUAL(held(u), "SELECT 0");
    PQfinish(u), PQfinish(w), PQfinish(x);
    stop_all();
}

/* ---- 7b. other instances' holders in GET /locks ----------------------------------------- */

/* The key's object in GET /locks of instance i (a new reference), or NULL. */
static json_t *locks_key(int i, const char *key)
{
    json_t *j = get_json(g_px[i]->admin_port, "/locks", NULL), *found = NULL;
    json_t *keys = j ? json_object_get(j, "keys") : NULL;
    for (size_t n = 0; n < json_array_size(keys); n++) {
        json_t *k = json_array_get(keys, n);
        if (strcmp(json_string_value(json_object_get(k, "key")), key) == 0)
            found = json_incref(k);
    }
    json_decref(j);
    return found;
}

/* b on instance 1 waits for a key a holds for writing on instance 0: instance 1's /locks
 * shows instance 0 (host:pid) holding it for writing, learned from its failed attempt;
 * instance 0, which never failed, shows no "remote". */
static void test_remote_holders(void)
{
    CU_ASSERT_FATAL(start_n(2, "session", 2, 0));
    PGconn *a = conn(0, NULL), *b = conn(1, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT(itu_tok(a, "SELECT pgwarden_lock('v:1', 'write')") > 0);
    CU_ASSERT_FATAL(PQsendQuery(b, "SELECT pgwarden_lock('v:1', 'exclusive')"));
    CU_ASSERT_FALSE(ready_within(b, 300));
    json_t *k = locks_key(1, "v:1");
    json_t *remote = json_object_get(k, "remote");
    CU_ASSERT_PTR_NOT_NULL(remote);
    json_t *inst = json_array_get(json_object_get(remote, "instances"), 0);
    char pid[32];
    snprintf(pid, sizeof(pid), ":%d", (int)g_px[0]->pid);
    const char *name = json_string_value(json_object_get(inst, "instance"));
    CU_ASSERT(name && strlen(name) > strlen(pid) &&
              strcmp(name + strlen(name) - strlen(pid), pid) == 0);
    json_t *holds = json_object_get(inst, "holds");
    CU_ASSERT_EQUAL(json_array_size(holds), 1);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(holds, 0)), "write");
    CU_ASSERT_EQUAL(json_array_size(json_object_get(remote, "instances")), 1);
    CU_ASSERT(json_integer_value(json_object_get(remote, "as_of_ms")) < 2000);
    json_decref(k);
    k = locks_key(0, "v:1");
    CU_ASSERT_PTR_NOT_NULL(k);
    CU_ASSERT_PTR_NULL(json_object_get(k, "remote"));
    json_decref(k);
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT pgwarden_unlock('v:1')"), "t");
    CU_ASSERT(ready_within(b, 3000));
    CU_ASSERT(atoll(async_value(b)) > 0);
    PQfinish(a), PQfinish(b);
    stop_all();
}

/* ---- 8. measurement: one grant's round trip, postgresql against local -------------------- */

#define RT_PAIRS 500

/* Microseconds per lock + unlock pair on an uncontended key, through instance 0. */
static double pair_us(void)
{
    PGconn *c = conn(0, NULL);
    if (PQstatus(c) != CONNECTION_OK)
        return -1;
    itu_q(c, "SELECT pgwarden_lock('rt:warm', 'write')");
    int64_t t0 = itu_now_ms();
    bool ok = true;
    for (int i = 0; i < RT_PAIRS && ok; i++) {
        ok = atoll(itu_q(c, "SELECT pgwarden_lock('rt:1', 'write')")) > 0 &&
             strcmp(itu_q(c, "SELECT pgwarden_unlock('rt:1')"), "t") == 0;
    }
    int64_t ms = itu_now_ms() - t0;
    PQfinish(c);
    return ok ? (double)ms * 1000.0 / RT_PAIRS : -1;
}

static void test_grant_round_trip(void)
{
    g_backend = "local";
    CU_ASSERT_FATAL(start_n(1, "session", 2, 0));
    double local = pair_us();
    stop_all();
    g_backend = "postgresql";
    CU_ASSERT_FATAL(start_n(1, "session", 2, 0));
    double pg = pair_us();
    stop_all();
    printf(
        "\n    lock+unlock pair (client round trips included): local %.0f us, postgresql %.0f us ",
        local, pg);
    CU_ASSERT(local > 0 && pg > 0);
}

static void register_suites(void)
{
    static CU_TestInfo tests[] = {
        {"matrix", test_matrix},
        {"waits_and_tokens", test_waits_and_tokens},
        {"fifo_within_instance", test_fifo_within_instance},
        {"no_starvation", test_no_starvation},
        {"no_starvation_waiting_readers", test_no_starvation_waiting_readers},
        {"reader_behind_gate", test_reader_behind_gate},
        {"sigkill", test_sigkill},
        {"lost_connection", test_lost_connection},
        {"new_call_while_down", test_new_call_while_down},
        {"lost_in_transaction_session", test_lost_in_transaction_session},
        {"lost_in_transaction_transaction", test_lost_in_transaction_transaction},
        {"read_modify_write", test_read_modify_write},
        {"cross_instance_deadlock", test_cross_instance_deadlock},
        {"three_instance_ring", test_three_instance_ring},
        {"long_chain_not_deadlock", test_long_chain_not_deadlock},
        {"remote_holders", test_remote_holders},
        {"handover_keeps_only_needed", test_handover_keeps_only_needed},
        {"failed_upgrade_keeps_read", test_failed_upgrade_keeps_read},
        {"grant_round_trip", test_grant_round_trip},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("locks_pg", suite_init, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
