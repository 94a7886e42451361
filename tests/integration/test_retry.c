/*
 * test_retry.c: transparent retry (issue 16, docs/retry.md) with libpq on a real
 * PostgreSQL, in both pool modes, with real contention:
 *   - an autocommit statement (simple and extended protocol) that meets a concurrent
 *     update under REPEATABLE READ (PostgreSQL's 40001) is replayed: the client sees its
 *     result, the update is applied once;
 *   - two transactions that update two rows in opposite order (PostgreSQL's 40P01): both
 *     commit, each update applied once, pg_stat_database counts the deadlock;
 *   - SERIALIZABLE transfers among 4 accounts from 8 clients: every transfer commits
 *     exactly once, money is conserved, no client sees an error;
 *   - a replay whose responses differ (the row the client read changed) gives the client
 *     the original error, and nothing commits twice;
 *   - a transaction holding a pgwarden xact lock is replayed with its lock and token;
 *   - retry off (max_attempts = 1) gives the error unchanged; max_attempts bounds attempts
 *     (counted with a sequence, which a rollback does not undo); the retry budget stops a
 *     storm of failures;
 *   - a COMMIT whose server connection is cut (a TCP relay between pgwarden and
 *     PostgreSQL) is answered with its real outcome: committed, aborted (40000), nothing
 *     written, or 40003 when the transaction id was never learned; nothing commits twice;
 * and the retry metrics say what happened.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <pthread.h>
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
#include "itest_wire.h"

#define TEST_LIMIT_S 180

static struct harness_proxy *g_px;

static int suite_init(void)
{
    itu_watchdog("test_retry", &g_px, 1, getenv("PGW_TEST_DEBUG") ? 5000 : 60);
    if (itu_suite_init() != 0)
        return 1;
    /* deadlocks found quickly; the test user owns its tables */
    return harness_cluster_exec("ALTER SYSTEM SET deadlock_timeout = '100ms'") == 0 &&
                   harness_cluster_exec("SELECT pg_reload_conf()") == 0
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

/* pgwarden in mode with [retry] retry_conf (NULL: generous settings for the tests). */
static struct harness_proxy *start(const char *mode, int pool_size, const char *retry_conf)
{
    alarm(TEST_LIMIT_S);
    static char tail[512];
    snprintf(tail, sizeof(tail), "[retry]\n%s\n",
             retry_conf
                 ? retry_conf
                 : "max_attempts = 30\nbase_ms = 1\ncap_ms = 50\nbudget_min_retries = 100000");
    struct harness_proxy_opts o = {.pool_mode = mode,
                                   .pool_size = pool_size,
                                   .auth_type = "scram-sha-256",
                                   .client_tls_mode = "disable",
                                   .log_level = getenv("PGW_TEST_DEBUG") ? "debug" : "info",
                                   .admin = true,
                                   .tail_extra = tail};
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

static PGconn *conn(void)
{
    PGconn *c = harness_connect(g_px, "sslmode=disable");
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "connect: %s", PQerrorMessage(c));
    return c;
}

/* A connection straight to PostgreSQL (the concurrent writer). */
static PGconn *direct(void)
{
    PGconn *c = harness_connect_info(harness_cluster_conninfo("sslmode=disable"));
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "connect: %s", PQerrorMessage(c));
    return c;
}

/* The same for the result of a query sent earlier (bounded wait). */
static const char *result_of(PGconn *c, int timeout_ms)
{
    PGresult *r = itu_wait_result(c, timeout_ms);
    return r ? itu_result_text(r) : "!timeout";
}

static long num(PGconn *c, const char *sql)
{
    return atol(itu_q(c, sql));
}

/* Sum of every series of /metrics whose key starts with name and contains each of the
 * label texts given (NULL-terminated). */
static double metric(const char *name, ...)
{
    struct series *s = NULL;
    int n = 0;
    if (!scrape(g_px->admin_port, &s, &n))
        return -1;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        if (strncmp(s[i].key, name, strlen(name)) != 0 || s[i].key[strlen(name)] != '|')
            continue;
        va_list ap;
        va_start(ap, name);
        bool all = true;
        for (const char *l; (l = va_arg(ap, const char *));)
            all = all && strstr(s[i].key, l);
        va_end(ap);
        if (all)
            sum += s[i].value;
    }
    free(s);
    return sum;
}

static void setup_table(const char *ddl)
{
    PGconn *d = direct();
    CU_ASSERT_TRUE(itu_exec_ok(d, ddl));
    PQfinish(d);
}

/* Waits until PostgreSQL shows n sessions waiting for a lock (bounded). */
static bool wait_lock_waiters(PGconn *d, int n)
{
    for (int i = 0; i < 200; i++) {
        if (num(d, "SELECT count(*) FROM pg_locks WHERE NOT granted") >= n)
            return true;
        itu_sleep_ms(10);
    }
    fprintf(stderr, "no session waits for a lock\n");
    return false;
}

/* ---- an autocommit statement -------------------------------------------------------- */

static void autocommit(const char *mode)
{
    setup_table("DROP TABLE IF EXISTS rt_auto; CREATE TABLE rt_auto (id int PRIMARY KEY, v int);"
                "INSERT INTO rt_auto VALUES (1, 0)");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(mode, 2, NULL));
    PGconn *c = conn(), *d = direct();
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SET default_transaction_isolation = 'repeatable read'"),
                           "SET");
    for (int extended = 0; extended < 2; extended++) {
        /* d updates the row and keeps it locked; c's statement waits for it, then meets
         * the committed update: 40001 inside PostgreSQL, replayed by pgwarden */
        CU_ASSERT_TRUE(itu_exec_ok(d, "BEGIN"));
        CU_ASSERT_TRUE(itu_exec_ok(d, "UPDATE rt_auto SET v = v + 1 WHERE id = 1"));
        if (extended) {
            const char *p[1] = {"10"};
            CU_ASSERT_EQUAL(PQsendQueryParams(c,
                                              "UPDATE rt_auto SET v = v + $1 WHERE id = 1 "
                                              "RETURNING v",
                                              1, NULL, p, NULL, NULL, 0),
                            1);
        } else {
            CU_ASSERT_EQUAL(PQsendQuery(c, "UPDATE rt_auto SET v = v + 10 WHERE id = 1 "
                                           "RETURNING v"),
                            1);
        }
        CU_ASSERT_TRUE(wait_lock_waiters(d, 1));
        CU_ASSERT_TRUE(itu_exec_ok(d, "COMMIT"));
        const char *got = result_of(c, 10000);
        /* the client sees its own update applied once on top of d's */
        CU_ASSERT_STRING_EQUAL(got, extended ? "22" : "11");
    }
    CU_ASSERT_EQUAL(num(d, "SELECT v FROM rt_auto WHERE id = 1"), 22);
    CU_ASSERT_EQUAL(metric("pgwarden_retries_total", "sqlstate=40001", "outcome=succeeded", NULL),
                    2);
    CU_ASSERT(metric("pgwarden_retry_attempts_total", "sqlstate=40001", NULL) >= 2);
    CU_ASSERT_TRUE(harness_proxy_log_contains(g_px, "replaying the transaction"));
    PQfinish(c);
    PQfinish(d);
    stop();
}

static void test_autocommit_session(void)
{
    autocommit("session");
}
static void test_autocommit_transaction(void)
{
    autocommit("transaction");
}

/* A transaction whose first statement is of the extended protocol, so that the held BEGIN
 * goes in that statement's group (docs/transaction-pooling.md): its replay begins the
 * transaction again, with its isolation level, in front of the replayed group. */
static void test_held_begin_in_group_replayed(void)
{
    setup_table("DROP TABLE IF EXISTS rt_grp; CREATE TABLE rt_grp (id int PRIMARY KEY, v int);"
                "INSERT INTO rt_grp VALUES (1, 0)");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 2, NULL));
    PGconn *c = conn(), *d = direct();
    CU_ASSERT_TRUE(itu_exec_ok(d, "BEGIN"));
    CU_ASSERT_TRUE(itu_exec_ok(d, "UPDATE rt_grp SET v = v + 1 WHERE id = 1"));
    CU_ASSERT_STRING_EQUAL(itu_q(c, "BEGIN ISOLATION LEVEL REPEATABLE READ"), "BEGIN");
    const char *p[1] = {"10"};
    CU_ASSERT_EQUAL(PQsendQueryParams(c, "UPDATE rt_grp SET v = v + $1 WHERE id = 1 RETURNING v", 1,
                                      NULL, p, NULL, NULL, 0),
                    1);
    CU_ASSERT_TRUE(wait_lock_waiters(d, 1));
    CU_ASSERT_TRUE(itu_exec_ok(d, "COMMIT")); /* 40001 for c's snapshot: replayed */
    CU_ASSERT_STRING_EQUAL(result_of(c, 10000), "11");
    /* the replay is inside a block again: uncommitted, with the BEGIN's isolation level */
    CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_INTRANS);
    CU_ASSERT_EQUAL(num(d, "SELECT v FROM rt_grp WHERE id = 1"), 1);
    PGresult *r = PQexecParams(c, "SHOW transaction_isolation", 0, NULL, NULL, NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "", "repeatable read");
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "COMMIT"), "COMMIT");
    CU_ASSERT_EQUAL(num(d, "SELECT v FROM rt_grp WHERE id = 1"), 11);
    CU_ASSERT_EQUAL(metric("pgwarden_retries_total", "sqlstate=40001", "outcome=succeeded", NULL),
                    1);
    PQfinish(c);
    PQfinish(d);
    stop();
}

/* ---- PostgreSQL's deadlock ------------------------------------------------------------ */

/* Lines of PostgreSQL's log that contain needle. */
static long pg_log_count(const char *needle)
{
    char path[600], line[4096];
    snprintf(path, sizeof(path), "%s/postgres.log", harness_cluster()->dir);
    FILE *f = fopen(path, "r");
    long n = 0;
    if (!f) {
        fprintf(stderr, "cannot read %s\n", path);
        return -1;
    }
    while (fgets(line, sizeof(line), f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

static void deadlock(const char *mode)
{
    setup_table("DROP TABLE IF EXISTS rt_dl; CREATE TABLE rt_dl (id int PRIMARY KEY, v int);"
                "INSERT INTO rt_dl VALUES (1, 0), (2, 0)");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(mode, 4, NULL));
    PGconn *a = conn(), *b = conn(), *d = direct();
    long before = pg_log_count("deadlock detected");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "UPDATE rt_dl SET v = v + 1 WHERE id = 1"), "UPDATE 1");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "UPDATE rt_dl SET v = v + 1 WHERE id = 2"), "UPDATE 1");
    CU_ASSERT_EQUAL(PQsendQuery(a, "UPDATE rt_dl SET v = v + 1 WHERE id = 2"), 1);
    CU_ASSERT_TRUE(wait_lock_waiters(d, 1));
    CU_ASSERT_EQUAL(PQsendQuery(b, "UPDATE rt_dl SET v = v + 1 WHERE id = 1"), 1);
    /* one of them is PostgreSQL's victim and is replayed; the other goes on and commits,
     * then the replay finishes: whichever answers first commits first */
    PGconn *conns[2] = {a, b};
    bool done[2] = {false, false};
    int64_t deadline = itu_now_ms() + 15000;
    while ((!done[0] || !done[1]) && itu_now_ms() < deadline) {
        for (int i = 0; i < 2; i++) {
            if (done[i])
                continue;
            PQconsumeInput(conns[i]);
            if (PQisBusy(conns[i]))
                continue;
            CU_ASSERT_STRING_EQUAL(result_of(conns[i], 1000), "UPDATE 1");
            CU_ASSERT_STRING_EQUAL(itu_q(conns[i], "COMMIT"), "COMMIT");
            done[i] = true;
        }
        itu_sleep_ms(5);
    }
    CU_ASSERT_TRUE(done[0] && done[1]);
    CU_ASSERT_EQUAL(num(d, "SELECT v FROM rt_dl WHERE id = 1"), 2);
    CU_ASSERT_EQUAL(num(d, "SELECT v FROM rt_dl WHERE id = 2"), 2);
    /* PostgreSQL found it (its log may be written a moment after the error was sent) */
    for (int64_t until = itu_now_ms() + 5000;
         pg_log_count("deadlock detected") < before + 1 && itu_now_ms() < until;)
        itu_sleep_ms(20);
    CU_ASSERT_EQUAL(pg_log_count("deadlock detected"), before + 1);
    CU_ASSERT_EQUAL(metric("pgwarden_retries_total", "sqlstate=40P01", "outcome=succeeded", NULL),
                    1);
    PQfinish(a);
    PQfinish(b);
    PQfinish(d);
    stop();
}

static void test_deadlock_session(void)
{
    deadlock("session");
}
static void test_deadlock_transaction(void)
{
    deadlock("transaction");
}

/* ---- SERIALIZABLE bank ------------------------------------------------------------------ */

#define BANK_CLIENTS   8
#define BANK_TRANSFERS 25
#define BANK_ACCOUNTS  4

struct bank_worker {
    int id;
    int errors;
    char first_error[128];
};

static void *bank_run(void *arg)
{
    struct bank_worker *w = arg;
    PGconn *c = harness_connect(g_px, "sslmode=disable");
    if (PQstatus(c) != CONNECTION_OK) {
        w->errors = BANK_TRANSFERS;
        snprintf(w->first_error, sizeof(w->first_error), "connect failed");
        PQfinish(c);
        return NULL;
    }
    unsigned seed = (unsigned)w->id * 7919u + 1;
    for (int i = 0; i < BANK_TRANSFERS; i++) {
        int from = (int)(rand_r(&seed) % BANK_ACCOUNTS) + 1;
        int to = from % BANK_ACCOUNTS + 1;
        char sql[512];
        snprintf(sql, sizeof(sql),
                 "UPDATE rt_acct SET balance = balance - 7 WHERE id = %d;"
                 "UPDATE rt_acct SET balance = balance + 7 WHERE id = %d;"
                 "INSERT INTO rt_log VALUES (%d, %d)",
                 from, to, w->id, i);
        const char *steps[3] = {"BEGIN ISOLATION LEVEL SERIALIZABLE", sql, "COMMIT"};
        for (int k = 0; k < 3; k++) {
            PGresult *r = PQexec(c, steps[k]);
            if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                if (w->errors++ == 0)
                    snprintf(w->first_error, sizeof(w->first_error), "%s: %s", steps[k],
                             itu_sqlstate(r));
                PQclear(r);
                PQclear(PQexec(c, "ROLLBACK"));
                break;
            }
            PQclear(r);
        }
    }
    PQfinish(c);
    return NULL;
}

static void bank(const char *mode)
{
    setup_table("DROP TABLE IF EXISTS rt_acct, rt_log;"
                "CREATE TABLE rt_acct (id int PRIMARY KEY, balance int);"
                "INSERT INTO rt_acct SELECT g, 1000 FROM generate_series(1, 4) g;"
                "CREATE TABLE rt_log (client int, n int, PRIMARY KEY (client, n))");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(mode, 4, NULL));
    pthread_t t[BANK_CLIENTS];
    struct bank_worker w[BANK_CLIENTS];
    for (int i = 0; i < BANK_CLIENTS; i++) {
        w[i] = (struct bank_worker){.id = i};
        CU_ASSERT_EQUAL(pthread_create(&t[i], NULL, bank_run, &w[i]), 0);
    }
    int errors = 0;
    for (int i = 0; i < BANK_CLIENTS; i++) {
        pthread_join(t[i], NULL);
        errors += w[i].errors;
        if (w[i].errors)
            fprintf(stderr, "client %d: %d errors, first %s\n", i, w[i].errors, w[i].first_error);
    }
    CU_ASSERT_EQUAL(errors, 0);
    PGconn *d = direct();
    CU_ASSERT_EQUAL(num(d, "SELECT count(*) FROM rt_log"), BANK_CLIENTS * BANK_TRANSFERS);
    CU_ASSERT_EQUAL(num(d, "SELECT sum(balance) FROM rt_acct"), 4000);
    PQfinish(d);
    double retried = metric("pgwarden_retry_attempts_total", "sqlstate=40001", NULL);
    fprintf(stderr, "bank (%s): %d transfers, %.0f replays\n", mode, BANK_CLIENTS * BANK_TRANSFERS,
            retried);
    CU_ASSERT(retried > 0); /* the contention was real */
    stop();
}

static void test_bank_session(void)
{
    bank("session");
}
static void test_bank_transaction(void)
{
    bank("transaction");
}

/* ---- a replay that differs -------------------------------------------------------------- */

static void diverged(const char *mode)
{
    setup_table("DROP TABLE IF EXISTS rt_div; CREATE TABLE rt_div (id int PRIMARY KEY, v int);"
                "INSERT INTO rt_div VALUES (1, 5)");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(mode, 2, NULL));
    PGconn *c = conn(), *d = direct();
    CU_ASSERT_STRING_EQUAL(itu_q(c, "BEGIN ISOLATION LEVEL REPEATABLE READ"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT v FROM rt_div WHERE id = 1"), "5"); /* seen */
    CU_ASSERT_STRING_EQUAL(itu_q(d, "UPDATE rt_div SET v = 100 WHERE id = 1"), "UPDATE 1");
    /* 40001; a replay would read 100 where the client saw 5: the client gets the error */
    CU_ASSERT_STRING_EQUAL(itu_q(c, "UPDATE rt_div SET v = v + 1 WHERE id = 1"), "!40001");
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT 1"), "!25P02"); /* the block failed, as on PostgreSQL */
    CU_ASSERT_STRING_EQUAL(itu_q(c, "ROLLBACK"), "ROLLBACK");
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT v FROM rt_div WHERE id = 1"), "100");
    CU_ASSERT_EQUAL(num(d, "SELECT v FROM rt_div WHERE id = 1"), 100); /* nothing twice */
    CU_ASSERT_EQUAL(metric("pgwarden_retries_total", "sqlstate=40001", "outcome=diverged", NULL),
                    1);
    PQfinish(c);
    PQfinish(d);
    stop();
}

static void test_diverged_session(void)
{
    diverged("session");
}
static void test_diverged_transaction(void)
{
    diverged("transaction");
}

/* A replay whose responses are shorter than what the client saw (the rows it read are gone)
 * ends before it reaches the last digest: that is a difference too, not a wait for more. */
static void test_shorter_replay(void)
{
    setup_table("DROP TABLE IF EXISTS rt_short; CREATE TABLE rt_short (id int PRIMARY KEY, t text);"
                "INSERT INTO rt_short SELECT g, repeat('x', 300) FROM generate_series(1, 3) g");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 2, NULL));
    PGconn *c = conn(), *d = direct();
    CU_ASSERT_STRING_EQUAL(itu_q(c, "BEGIN ISOLATION LEVEL REPEATABLE READ"), "BEGIN");
    PGresult *seen = PQexec(c, "SELECT t FROM rt_short ORDER BY id"); /* ~900 bytes seen */
    CU_ASSERT_EQUAL(PQntuples(seen), 3);
    PQclear(seen);
    CU_ASSERT_STRING_EQUAL(itu_q(d, "DELETE FROM rt_short"), "DELETE 3");
    /* 40001; the replay reads no rows and updates none: a few dozen bytes in all */
    CU_ASSERT_FATAL(PQsendQuery(c, "UPDATE rt_short SET t = 'y' WHERE id = 1"));
    PGresult *r = itu_wait_result(c, 5000);
    CU_ASSERT_PTR_NOT_NULL(r);
    CU_ASSERT_STRING_EQUAL(r ? itu_sqlstate(r) : "(no answer)", "40001");
    PQclear(r);
    if (r) {
        CU_ASSERT_STRING_EQUAL(itu_q(c, "ROLLBACK"), "ROLLBACK");
        CU_ASSERT_EQUAL(
            metric("pgwarden_retries_total", "sqlstate=40001", "outcome=diverged", NULL), 1);
    }
    PQfinish(c);
    PQfinish(d);
    stop();
}

/* ---- pgwarden locks are kept across a replay ------------------------------------------- */

static void test_xact_lock_kept(void)
{
    setup_table("DROP TABLE IF EXISTS rt_lk; CREATE TABLE rt_lk (id int PRIMARY KEY, v int);"
                "INSERT INTO rt_lk VALUES (1, 0)");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 2, NULL));
    PGconn *c = conn(), *other = conn(), *d = direct();
    CU_ASSERT_STRING_EQUAL(itu_q(c, "BEGIN ISOLATION LEVEL REPEATABLE READ"), "BEGIN");
    char token[512];
    snprintf(token, sizeof(token), "%s", itu_q(c, "SELECT pgwarden_xact_lock('rt:1', 'write')"));
    CU_ASSERT(atoll(token) > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT count(*) FROM rt_lk"), "1"); /* the snapshot */
    CU_ASSERT_STRING_EQUAL(itu_q(d, "UPDATE rt_lk SET v = 1 WHERE id = 1"), "UPDATE 1");
    /* 40001; the replay takes the lock again (same token: it is still held) and reads
     * the same count: the client sees nothing */
    CU_ASSERT_STRING_EQUAL(itu_q(c, "UPDATE rt_lk SET v = v + 10 WHERE id = 1"), "UPDATE 1");
    CU_ASSERT_STRING_EQUAL(itu_q(other, "SELECT pgwarden_try_lock('rt:1', 'write')"), "NULL");
    PGresult *r = PQexec(c, "SELECT * FROM pgwarden_locks()");
    CU_ASSERT_EQUAL(PQntuples(r), 1);
    if (PQntuples(r) == 1 && PQnfields(r) == 4) /* key, mode, scope, token */
        CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 3), token);
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "COMMIT"), "COMMIT");
    CU_ASSERT_NOT_EQUAL(strcmp(itu_q(other, "SELECT pgwarden_try_lock('rt:1', 'write')"), "NULL"),
                        0);
    CU_ASSERT_EQUAL(num(d, "SELECT v FROM rt_lk WHERE id = 1"), 11);
    CU_ASSERT_EQUAL(metric("pgwarden_retries_total", "outcome=succeeded", NULL), 1);
    PQfinish(c);
    PQfinish(other);
    PQfinish(d);
    stop();
}

/*
 * A session-scoped lock call makes its unit not replayable: a replay could take the lock
 * that the client was told it did not get (pgwarden_try_lock returned NULL, then the
 * holder left), and the client, given its original 40001, would never release it.
 */
static void test_session_lock_call_not_replayed(void)
{
    setup_table("DROP TABLE IF EXISTS rt_sl; CREATE TABLE rt_sl (id int PRIMARY KEY, v int);"
                "INSERT INTO rt_sl VALUES (1, 0)");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 2, NULL));
    PGconn *c = conn(), *other = conn(), *d = direct();
    CU_ASSERT(atoll(itu_q(other, "SELECT pgwarden_lock('rt:leak', 'write')")) > 0);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "BEGIN ISOLATION LEVEL REPEATABLE READ"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT pgwarden_try_lock('rt:leak', 'write')"), "NULL");
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT count(*) FROM rt_sl"), "1"); /* the snapshot */
    CU_ASSERT_STRING_EQUAL(itu_q(d, "UPDATE rt_sl SET v = 1 WHERE id = 1"), "UPDATE 1");
    CU_ASSERT_STRING_EQUAL(itu_q(other, "SELECT pgwarden_unlock('rt:leak')"), "t");
    CU_ASSERT_STRING_EQUAL(itu_q(c, "UPDATE rt_sl SET v = v + 10 WHERE id = 1"), "!40001");
    CU_ASSERT_STRING_EQUAL(itu_q(c, "ROLLBACK"), "ROLLBACK");
    PGresult *r = PQexec(c, "SELECT * FROM pgwarden_locks()");
    CU_ASSERT_EQUAL(PQntuples(r), 0); /* c holds nothing */
    PQclear(r);
    CU_ASSERT(atoll(itu_q(other, "SELECT pgwarden_try_lock('rt:leak', 'write')")) > 0);
    CU_ASSERT_EQUAL(metric("pgwarden_retry_attempts_total", NULL), 0);
    PQfinish(c);
    PQfinish(other);
    PQfinish(d);
    stop();
}

static void count_notice(void *arg, const PGresult *r)
{
    (void)r;
    (*(int *)arg)++;
}

/*
 * A notice the client had before the error (a trigger's, sent before the statement met
 * the conflict) is not sent a second time by a replay that succeeds: autocommit (the
 * client saw nothing else) and in a block (after the replay matched).
 */
static void test_replay_notice_once(void)
{
    setup_table("DROP TABLE IF EXISTS rt_nt; CREATE TABLE rt_nt (id int PRIMARY KEY, v int);"
                "INSERT INTO rt_nt VALUES (1, 0);"
                "CREATE FUNCTION rt_nt_hello() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE NOTICE 'hello from trigger'; RETURN NULL; END $$;"
                "CREATE TRIGGER rt_nt_t BEFORE UPDATE ON rt_nt FOR EACH STATEMENT "
                "EXECUTE FUNCTION rt_nt_hello()");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 2, NULL));
    PGconn *c = conn(), *d = direct();
    int notices = 0;
    PQsetNoticeReceiver(c, count_notice, &notices);
    for (int block = 0; block < 2; block++) {
        notices = 0;
        CU_ASSERT_STRING_EQUAL(itu_q(c, block ? "BEGIN ISOLATION LEVEL REPEATABLE READ"
                                              : "SET default_transaction_isolation = "
                                                "'repeatable read'"),
                               block ? "BEGIN" : "SET");
        if (block)
            CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT count(*) FROM rt_nt"), "1");
        CU_ASSERT_TRUE(itu_exec_ok(d, "BEGIN"));
        CU_ASSERT_TRUE(itu_exec_ok(d, "UPDATE rt_nt SET v = v + 1 WHERE id = 1"));
        CU_ASSERT_EQUAL(PQsendQuery(c, "UPDATE rt_nt SET v = v + 10 WHERE id = 1"), 1);
        CU_ASSERT_TRUE(wait_lock_waiters(d, 1));
        CU_ASSERT_TRUE(itu_exec_ok(d, "COMMIT"));
        const char *got = result_of(c, 10000);
        if (block) {
            /* the block read before d's update: its replay reads 1 row as well, matches,
             * and the UPDATE then sees d's committed row: 40001 again, given up */
            CU_ASSERT_TRUE(!strcmp(got, "UPDATE 1") || !strcmp(got, "!40001"));
            PQclear(PQexec(c, "ROLLBACK"));
        } else {
            CU_ASSERT_STRING_EQUAL(got, "UPDATE 1");
        }
        if (notices != 1)
            fprintf(stderr, "\n    %s: %d notices\n", block ? "block" : "autocommit", notices);
        CU_ASSERT_EQUAL(notices, 1);
    }
    CU_ASSERT(metric("pgwarden_retry_attempts_total", NULL) >= 1);
    PQfinish(c);
    PQfinish(d);
    stop();
}

/* A chained COMMIT ends the block: its transaction-scoped pgwarden locks are released
 * then, not when the chained transaction ends. */
static void test_xact_lock_released_at_chained_commit(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 2, NULL));
    PGconn *c = conn(), *other = conn();
    static const char *const ends[] = {"COMMIT AND CHAIN", "COMMIT; BEGIN"};
    for (int i = 0; i < 2; i++) {
        CU_ASSERT_STRING_EQUAL(itu_q(c, "BEGIN"), "BEGIN");
        CU_ASSERT(atoll(itu_q(c, "SELECT pgwarden_xact_lock('rt:chain', 'write')")) > 0);
        CU_ASSERT_STRING_EQUAL(itu_q(other, "SELECT pgwarden_try_lock('rt:chain', 'write')"),
                               "NULL");
        CU_ASSERT_TRUE(itu_exec_ok(c, ends[i]));
        CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_INTRANS); /* a new block */
        const char *got = itu_q(other, "SELECT pgwarden_try_lock('rt:chain', 'write')");
        if (atoll(got) <= 0)
            fprintf(stderr, "\n    after %s: %s\n", ends[i], got);
        CU_ASSERT(atoll(got) > 0);
        CU_ASSERT_STRING_EQUAL(itu_q(other, "SELECT pgwarden_unlock('rt:chain')"), "t");
        CU_ASSERT_STRING_EQUAL(itu_q(c, "ROLLBACK"), "ROLLBACK");
    }
    PQfinish(c);
    PQfinish(other);
    stop();
}

/* ---- limits: off, max_attempts, budget --------------------------------------------------- */

static void make_failing_function(void)
{
    setup_table("DROP SEQUENCE IF EXISTS rt_attempts; CREATE SEQUENCE rt_attempts;"
                "CREATE OR REPLACE FUNCTION rt_always_40001() RETURNS int LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM nextval('rt_attempts'); "
                "RAISE EXCEPTION 'pretend conflict' USING ERRCODE = '40001'; END $$");
}

/* Attempts so far: a sequence keeps its increments when the transaction rolls back. */
static long attempts(PGconn *d)
{
    return num(d, "SELECT last_value - CASE WHEN is_called THEN 0 ELSE 1 END FROM rt_attempts");
}

static void test_retry_off(void)
{
    make_failing_function();
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 2, "max_attempts = 1"));
    PGconn *c = conn(), *d = direct();
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT rt_always_40001()"), "!40001");
    CU_ASSERT_EQUAL(attempts(d), 1);
    CU_ASSERT_EQUAL(metric("pgwarden_retry_attempts_total", NULL), 0);
    PQfinish(c);
    PQfinish(d);
    stop();
}

static void test_max_attempts(void)
{
    make_failing_function();
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(
        "session", 2, "max_attempts = 3\nbase_ms = 1\ncap_ms = 2\nbudget_min_retries = 1000"));
    PGconn *c = conn(), *d = direct();
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT rt_always_40001()"), "!40001");
    CU_ASSERT_EQUAL(attempts(d), 3);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT 42"), "42"); /* the session goes on */
    CU_ASSERT_EQUAL(metric("pgwarden_retries_total", "outcome=exhausted", NULL), 1);
    PQfinish(c);
    PQfinish(d);
    stop();
}

static void test_budget_stops_storm(void)
{
    make_failing_function();
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 2,
                                       "max_attempts = 5\nbase_ms = 1\ncap_ms = 2\n"
                                       "budget_pct = 10\nbudget_min_retries = 0"));
    PGconn *c = conn(), *d = direct();
    const int n = 100;
    for (int i = 0; i < n; i++)
        CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT rt_always_40001()"), "!40001");
    long made = attempts(d);
    fprintf(stderr, "storm: %d statements, %ld attempts\n", n, made);
    CU_ASSERT(made >= n);
    CU_ASSERT(made <= n + n / 10 + 1); /* without the budget: 5 per statement */
    CU_ASSERT(metric("pgwarden_retries_total", "outcome=over_budget", NULL) >= n - n / 10 - 1);
    PQfinish(c);
    PQfinish(d);
    stop();
}

/* ---- a COMMIT whose server connection is lost ------------------------------------------ */

/* ---- what must not be replayed, and what a held error must not do ----------------- */

/* rt_fail_once(): 40001 at its first call after rt_once_arm(), then 1 (a sequence's
 * parity: nextval is not rolled back). */
static void make_fail_once_function(void)
{
    setup_table("DROP TABLE IF EXISTS rt_pipe; CREATE TABLE rt_pipe (v int);"
                "DROP SEQUENCE IF EXISTS rt_once; CREATE SEQUENCE rt_once;"
                "CREATE OR REPLACE FUNCTION rt_fail_once() RETURNS int LANGUAGE plpgsql AS "
                "$$ BEGIN IF nextval('rt_once') % 2 = 1 THEN "
                "RAISE EXCEPTION 'pretend conflict' USING ERRCODE = '40001'; END IF; "
                "RETURN 1; END $$");
}

static void rt_once_arm(PGconn *d)
{
    CU_ASSERT_STRING_EQUAL(itu_q(d, "SELECT setval('rt_once', 2)"), "2");
}

/* Writes Query messages on a logged-in libpq connection's socket, below libpq, and reads
 * the replies until n ReadyForQuery (or the peer closed, or timeout_ms): the bytes read. */
static size_t raw_queries(PGconn *c, const char *const *sqls, int nq, int n, uint8_t *buf,
                          size_t cap, int timeout_ms)
{
    uint8_t out[1024];
    size_t len = 0;
    for (int i = 0; i < nq; i++)
        CU_ASSERT_FATAL(itw_msg(out, sizeof(out), &len, 'Q', sqls[i], strlen(sqls[i]) + 1));
    int fd = PQsocket(c);
    CU_ASSERT_EQUAL_FATAL(send(fd, out, len, MSG_NOSIGNAL), (ssize_t)len);
    size_t got = 0;
    int64_t deadline = itu_now_ms() + timeout_ms;
    for (;;) {
        int zs = 0;
        size_t off = 0;
        while (off + 5 <= got && off + 1 + itw_get32(buf + off + 1) <= got) {
            zs += buf[off] == 'Z';
            off += 1 + itw_get32(buf + off + 1);
        }
        int64_t left = deadline - itu_now_ms();
        if (zs >= n || left <= 0 || got == cap)
            return got;
        bool closed = false;
        ssize_t r = harness_raw_recv(fd, buf + got, cap - got, (int)left, &closed);
        if (r > 0)
            got += (size_t)r;
        if (r < 0 || closed)
            return got;
    }
}

/* Count of the messages of a type in buf[0..len). */
static int raw_count(const uint8_t *buf, size_t len, char type)
{
    int k = 0;
    for (size_t off = 0; off + 5 <= len && off + 1 + itw_get32(buf + off + 1) <= len;
         off += 1 + itw_get32(buf + off + 1))
        k += buf[off] == (uint8_t)type;
    return k;
}

/*
 * Requests sent behind the one that fails are transactions of their own: the INSERT
 * behind a failed autocommit statement commits, and a replay of both would insert twice.
 * The client must get the original error and the INSERT's answer, once.  Simple protocol
 * (two Queries in one write) and extended (libpq's pipeline mode, a Sync per statement).
 */
static void pipelined(const char *mode)
{
    make_fail_once_function();
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(mode, 2, NULL));
    PGconn *d = direct(), *c = conn();
    rt_once_arm(d);
    static const char *const two[] = {"SELECT rt_fail_once()", "INSERT INTO rt_pipe VALUES (1)"};
    uint8_t buf[4096];
    size_t n = raw_queries(c, two, 2, 2, buf, sizeof(buf), 5000);
    char code[8];
    itw_error_field(buf, n, 'C', code, sizeof(code));
    CU_ASSERT_STRING_EQUAL(code, "40001");
    CU_ASSERT_EQUAL(raw_count(buf, n, 'Z'), 2);
    CU_ASSERT_EQUAL(raw_count(buf, n, 'C'), 1); /* the INSERT's, once */
    CU_ASSERT_EQUAL(num(d, "SELECT count(*) FROM rt_pipe WHERE v = 1"), 1);
    PQfinish(c);

    c = conn();
    rt_once_arm(d);
    CU_ASSERT_EQUAL_FATAL(PQenterPipelineMode(c), 1);
    /* libpq writes each PQpipelineSync's group at once: the sleep makes sure the INSERT's
     * is in pgwarden before the error (a busy machine may delay the second write, and the
     * failed statement alone, complete, is replayable) */
    CU_ASSERT_EQUAL(
        PQsendQueryParams(c, "SELECT pg_sleep(0.3), rt_fail_once()", 0, NULL, NULL, NULL, NULL, 0),
        1);
    CU_ASSERT_EQUAL(PQpipelineSync(c), 1);
    CU_ASSERT_EQUAL(
        PQsendQueryParams(c, "INSERT INTO rt_pipe VALUES (2)", 0, NULL, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQpipelineSync(c), 1);
    const char *want[] = {"!40001", "PIPELINE_SYNC", "INSERT 0 1", "PIPELINE_SYNC"};
    for (int i = 0; i < 4; i++) {
        const char *got = itu_pipeline_next(c, 5000);
        if (strcmp(got, want[i]) != 0)
            fprintf(stderr, "\n    pipeline result %d: %s, want %s\n", i, got, want[i]);
        CU_ASSERT_STRING_EQUAL(got, want[i]);
    }
    CU_ASSERT_EQUAL(num(d, "SELECT count(*) FROM rt_pipe WHERE v = 2"), 1);
    CU_ASSERT_EQUAL(metric("pgwarden_retry_attempts_total", NULL), 0);
    PQfinish(c);
    PQfinish(d);
    stop();
}

static void test_pipelined_session(void)
{
    pipelined("session");
}

static void test_pipelined_transaction(void)
{
    pipelined("transaction");
}

/*
 * A transaction that committed earlier in the same Query string is never replayed, also
 * when the failure follows its COMMIT at once (no reply in between) or after a
 * RowDescription: the client gets the original error, and the row is there once.  With
 * retry refused (no budget) the same: the error is not lost.
 */
static void test_commit_then_failure(void)
{
    make_fail_once_function();
    for (int budget = 1; budget >= 0; budget--) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(start(
            "transaction", 2,
            budget ? NULL
                   : "max_attempts = 5\nbase_ms = 1\nbudget_pct = 0\nbudget_min_retries = 0"));
        PGconn *d = direct(), *c = conn();
        static const char *const tails[] = {"SELECT rt_fail_once()",
                                            "DO $$BEGIN PERFORM rt_fail_once(); END$$"};
        for (int i = 0; i < 2; i++) {
            int v = 10 + budget * 2 + i;
            rt_once_arm(d);
            char sql[200];
            snprintf(sql, sizeof(sql), "BEGIN; INSERT INTO rt_pipe VALUES (%d); COMMIT; %s", v,
                     tails[i]);
            const char *got = itu_q(c, sql);
            if (strcmp(got, "!40001") != 0)
                fprintf(stderr, "\n    %s -> %s\n", sql, got);
            CU_ASSERT_STRING_EQUAL(got, "!40001");
            snprintf(sql, sizeof(sql), "SELECT count(*) FROM rt_pipe WHERE v = %d", v);
            CU_ASSERT_EQUAL(num(d, sql), 1);
            CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT 5"), "5"); /* in step */
        }
        CU_ASSERT_EQUAL(metric("pgwarden_retry_attempts_total", NULL), 0);
        PQfinish(c);
        PQfinish(d);
        stop();
    }
}

/* q through PQexecParams (extended protocol) or PQexec (simple), printed as itu_q does. */
static const char *q_proto(PGconn *c, const char *sql, bool extended)
{
    return extended ? itu_result_text(PQexecParams(c, sql, 0, NULL, NULL, NULL, NULL, 0))
                    : itu_q(c, sql);
}

/*
 * SERIALIZABLE write skew: A and B both count the doctors on call (2), each takes a
 * different one off call, A commits and B's COMMIT fails with 40001.  A replay of B's
 * block reads 1, not the 2 B saw: it differs, and B gets its 40001.  B's UPDATE and COMMIT
 * behind that read must not have run: the second doctor is still on call.
 */
static void test_diverged_replay_commits_nothing(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 4, NULL));
    PGconn *d = direct();
    for (int extended = 0; extended < 2; extended++) {
        CU_ASSERT_TRUE(itu_exec_ok(d, "DROP TABLE IF EXISTS rt_oncall;"
                                      "CREATE TABLE rt_oncall (id int PRIMARY KEY, on_call bool);"
                                      "INSERT INTO rt_oncall VALUES (1, true), (2, true)"));
        PGconn *a = conn(), *b = conn();
        PGconn *both[2] = {a, b};
        for (int i = 0; i < 2; i++)
            CU_ASSERT_STRING_EQUAL(q_proto(both[i], "BEGIN ISOLATION LEVEL SERIALIZABLE", extended),
                                   "BEGIN");
        for (int i = 0; i < 2; i++)
            CU_ASSERT_STRING_EQUAL(
                q_proto(both[i], "SELECT count(*) FROM rt_oncall WHERE on_call", extended), "2");
        CU_ASSERT_STRING_EQUAL(
            q_proto(a, "UPDATE rt_oncall SET on_call = false WHERE id = 1", extended), "UPDATE 1");
        CU_ASSERT_STRING_EQUAL(
            q_proto(b, "UPDATE rt_oncall SET on_call = false WHERE id = 2", extended), "UPDATE 1");
        CU_ASSERT_STRING_EQUAL(q_proto(a, "COMMIT", extended), "COMMIT");
        CU_ASSERT_STRING_EQUAL(q_proto(b, "COMMIT", extended), "!40001");
        CU_ASSERT_STRING_EQUAL(itu_q(d, "SELECT on_call FROM rt_oncall WHERE id = 2"), "t");
        CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT 3"), "3"); /* B goes on */
        PQfinish(a);
        PQfinish(b);
    }
    /* B's read, update and COMMIT in one Query: the replay could not stop between them,
     * so there is none (B read in it, and B's reads differ in any replay) */
    CU_ASSERT_TRUE(itu_exec_ok(d, "UPDATE rt_oncall SET on_call = true"));
    PGconn *a = conn(), *b = conn();
    CU_ASSERT_STRING_EQUAL(itu_q(b, "BEGIN ISOLATION LEVEL SERIALIZABLE"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT 1"), "1"); /* B's snapshot */
    CU_ASSERT_STRING_EQUAL(itu_q(a, "BEGIN ISOLATION LEVEL SERIALIZABLE"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "SELECT count(*) FROM rt_oncall WHERE on_call"), "2");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "UPDATE rt_oncall SET on_call = false WHERE id = 1"),
                           "UPDATE 1");
    CU_ASSERT_STRING_EQUAL(itu_q(a, "COMMIT"), "COMMIT");
    double refused = metric("pgwarden_retries_total", "outcome=not_replayable", NULL);
    CU_ASSERT_STRING_EQUAL(itu_q(b, "SELECT count(*) FROM rt_oncall WHERE on_call; "
                                    "UPDATE rt_oncall SET on_call = false WHERE id = 2; COMMIT"),
                           "!40001");
    CU_ASSERT_STRING_EQUAL(itu_q(d, "SELECT on_call FROM rt_oncall WHERE id = 2"), "t");
    CU_ASSERT_EQUAL(metric("pgwarden_retries_total", "outcome=not_replayable", NULL), refused + 1);
    PQfinish(a);
    PQfinish(b);
    CU_ASSERT(metric("pgwarden_retries_total", "outcome=diverged", NULL) >= 1);
    PQfinish(d);
    stop();
}

/* pgwarden's peak resident memory so far (VmHWM), in kB: what a buffer that filled and
 * was freed again between two looks leaves. */
static long peak_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmHWM:", 6))
            kb = atol(line + 6);
    if (f)
        fclose(f);
    return kb;
}

/* A unit that signalled another backend (an effect no rollback undoes) is not replayed. */
static void test_outside_effect_not_replayed(void)
{
    make_fail_once_function();
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 2, NULL));
    PGconn *c = conn(), *d = direct();
    rt_once_arm(d);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT pg_cancel_backend(0), rt_fail_once()"), "!40001");
    rt_once_arm(d);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT rt_fail_once()"), "1"); /* control: replayed */
    CU_ASSERT_EQUAL(metric("pgwarden_retry_attempts_total", NULL), 1);
    PQfinish(c);
    PQfinish(d);
    stop();
}

/*
 * A transaction that deallocates a prepared statement is not replayed: a rollback gives the
 * statement back to nobody, so the replay's DEALLOCATE would fail (26000: "differs") and
 * the client get its error after a useless replay.  By either protocol (psycopg 3 evicts
 * its statements with an extended-protocol DEALLOCATE inside transactions).
 */
static void test_dealloc_not_replayed(void)
{
    make_fail_once_function();
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 2, NULL));
    PGconn *c = conn(), *d = direct();
    for (int ext = 0; ext < 2; ext++) {
        PGresult *r = PQprepare(c, "s1", "SELECT 1", 0, NULL);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
        PQclear(r);
        CU_ASSERT_STRING_EQUAL(itu_q(c, "BEGIN"), "BEGIN");
        r = ext ? PQexecParams(c, "DEALLOCATE s1", 0, NULL, NULL, NULL, NULL, 0)
                : PQexec(c, "DEALLOCATE s1");
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
        PQclear(r);
        rt_once_arm(d);
        CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT rt_fail_once()"), "!40001");
        CU_ASSERT_STRING_EQUAL(itu_q(c, "ROLLBACK"), "ROLLBACK");
        if (getenv("PGW_TEST_DEBUG"))
            harness_proxy_dump_log(g_px, 60);
    }
    CU_ASSERT_EQUAL(metric("pgwarden_retry_attempts_total", NULL), 0);
    PQfinish(c);
    PQfinish(d);
    stop();
}

/*
 * A held error and a large result pipelined behind it (both in one write, as a pipelining
 * client sends them), which the client does not read yet: pgwarden keeps at most about
 * retry_buffer_bytes of it (then the client gets the error and the rest flows with the
 * usual backpressure), not the whole result.
 */
static void test_held_replies_bounded(void)
{
    make_fail_once_function();
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 2, NULL));
    PGconn *d = direct(), *c = conn();
    rt_once_arm(d);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT 1"), "1");
    long before = peak_rss_kb(g_px->pid);
    static const char *const two[] = {
        "DO $$BEGIN PERFORM pg_sleep(0.3); PERFORM rt_fail_once(); END$$",
        "SELECT repeat('x', 1000) FROM generate_series(1, 40000)"};
    uint8_t out[256];
    size_t len = 0;
    for (int i = 0; i < 2; i++)
        CU_ASSERT_FATAL(itw_msg(out, sizeof(out), &len, 'Q', two[i], strlen(two[i]) + 1));
    int fd = PQsocket(c);
    CU_ASSERT_EQUAL_FATAL(send(fd, out, len, MSG_NOSIGNAL), (ssize_t)len);
    itu_sleep_ms(2000); /* PostgreSQL has sent its 40 MB by now, or waits for pgwarden */
    long grown = peak_rss_kb(g_px->pid) - before;
    if (grown >= 16384 || getenv("PGW_TEST_DEBUG"))
        fprintf(stderr, "\n    pgwarden grew by %ld kB while holding\n", grown);
    CU_ASSERT_TRUE(before > 0 && grown < 16384);
    /* then everything arrives, in order: the error, once, and all the rows */
    static uint8_t buf[1 << 16];
    size_t have = 0;
    int zs = 0, rows = 0, errors = 0;
    char first = 0, code[8] = "";
    int64_t deadline = itu_now_ms() + 30000;
    while (zs < 2 && itu_now_ms() < deadline) {
        bool closed = false;
        ssize_t r = harness_raw_recv(fd, buf + have, sizeof(buf) - have, 1000, &closed);
        if (r < 0 || closed)
            break;
        have += (size_t)r;
        size_t off = 0;
        while (off + 5 <= have && off + 1 + itw_get32(buf + off + 1) <= have) {
            size_t mlen = 1 + itw_get32(buf + off + 1);
            if (!first && buf[off] != 'Z')
                first = (char)buf[off];
            if (buf[off] == 'E' && errors++ == 0)
                itw_error_field(buf + off, mlen, 'C', code, sizeof(code));
            rows += buf[off] == 'D';
            zs += buf[off] == 'Z';
            off += mlen;
        }
        memmove(buf, buf + off, have - off);
        have -= off;
    }
    CU_ASSERT_EQUAL(zs, 2);
    CU_ASSERT_EQUAL(first, 'E'); /* the DO's error, then the rows */
    CU_ASSERT_EQUAL(errors, 1);
    CU_ASSERT_STRING_EQUAL(code, "40001");
    CU_ASSERT_EQUAL(rows, 40000);
    PQfinish(c);
    PQfinish(d);
    stop();
}

/*
 * A TCP relay in a child process between pgwarden and PostgreSQL.  Commands on a pipe arm
 * it for the next client->server chunk that holds the Query pgwarden sends for a COMMIT,
 * "SELECT pg_catalog.pg_current_xact_id_if_assigned();COMMIT" (path/outcome.h):
 *   'c' forward the chunk, then the server's replies up to the first CommandComplete (the
 *       transaction-id query's), and cut: PostgreSQL commits, pgwarden never hears;
 *   'a' forward what comes before that Query and the Query cut after its first ';' (the
 *       transaction-id query alone), the replies up to the first CommandComplete, and cut:
 *       PostgreSQL never runs the COMMIT and rolls back;
 *   'u' cut at once, forwarding nothing of the chunk.
 * Other connections, and this one before the COMMIT, are relayed as they are.
 */
#define RELAY_MAX 32

#define XID_QUERY "SELECT pg_catalog.pg_current_xact_id_if_assigned();"

/* Offset of the Query message XID_QUERY "COMMIT" in buf, or -1. */
static ssize_t find_commit(const uint8_t *buf, ssize_t n)
{
    static const char want[] = XID_QUERY "COMMIT";
    for (ssize_t off = 0; off + 5 <= n;) {
        uint32_t len = (uint32_t)buf[off + 1] << 24 | (uint32_t)buf[off + 2] << 16 |
                       (uint32_t)buf[off + 3] << 8 | buf[off + 4];
        if (len < 4)
            return -1;
        if (buf[off] == 'Q' && off + 5 + (ssize_t)sizeof(want) - 1 <= n &&
            !memcmp(buf + off + 5, want, sizeof(want) - 1))
            return off;
        off += (ssize_t)len + 1;
    }
    return -1;
}

static void send_all(int fd, const uint8_t *buf, ssize_t n)
{
    for (ssize_t off = 0; off < n;) {
        ssize_t w = send(fd, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w <= 0)
            return;
        off += w;
    }
}

static void cut_relay_run(int lfd, int ctl, int target)
{
    int a[RELAY_MAX], b[RELAY_MAX];
    bool cutting[RELAY_MAX];
    uint32_t skip[RELAY_MAX]; /* bytes of the server message under way when cutting */
    int npairs = 0;
    char armed = 0;
    for (;;) {
        struct pollfd p[2 + 2 * RELAY_MAX];
        p[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
        p[1] = (struct pollfd){.fd = ctl, .events = POLLIN};
        for (int i = 0; i < npairs; i++) {
            p[2 + 2 * i] = (struct pollfd){.fd = a[i], .events = POLLIN};
            p[3 + 2 * i] = (struct pollfd){.fd = b[i], .events = POLLIN};
        }
        if (poll(p, (nfds_t)(2 + 2 * npairs), 100) < 0)
            continue;
        if (p[1].revents & POLLIN) {
            char cmd;
            if (read(ctl, &cmd, 1) != 1)
                _exit(0); /* the test program is gone */
            armed = cmd;
        }
        for (int i = npairs - 1; i >= 0; i--) {
            bool drop = false;
            for (int k = 0; k < 2 && !drop; k++) {
                struct pollfd *q = &p[2 + 2 * i + k];
                if (!(q->revents & (POLLIN | POLLHUP | POLLERR)))
                    continue;
                uint8_t buf[65536];
                ssize_t n = read(q->fd, buf, sizeof(buf));
                if (n <= 0) {
                    drop = true;
                    break;
                }
                if (k == 0) { /* pgwarden -> PostgreSQL */
                    ssize_t at = armed && !cutting[i] ? find_commit(buf, n) : -1;
                    if (at < 0) {
                        send_all(b[i], buf, n);
                    } else if (armed == 'u') {
                        armed = 0;
                        drop = true;
                    } else {
                        send_all(b[i], buf, armed == 'c' ? n : at);
                        if (armed == 'a') { /* the transaction-id query alone */
                            static const uint8_t qh[] = {'Q', 0, 0, 0, 4 + sizeof(XID_QUERY)};
                            send_all(b[i], qh, sizeof(qh));
                            send_all(b[i], (const uint8_t *)XID_QUERY, sizeof(XID_QUERY));
                        }
                        armed = 0;
                        cutting[i] = true;
                        skip[i] = 0;
                    }
                    continue;
                }
                if (!cutting[i]) { /* PostgreSQL -> pgwarden */
                    send_all(a[i], buf, n);
                    continue;
                }
                /* forward up to the end of the first CommandComplete, then cut */
                ssize_t off = 0;
                while (off < n) {
                    if (skip[i]) {
                        ssize_t take = (ssize_t)skip[i] < n - off ? (ssize_t)skip[i] : n - off;
                        off += take;
                        skip[i] -= (uint32_t)take;
                        continue;
                    }
                    if (off + 5 > n)
                        break;
                    uint32_t len = (uint32_t)buf[off + 1] << 24 | (uint32_t)buf[off + 2] << 16 |
                                   (uint32_t)buf[off + 3] << 8 | buf[off + 4];
                    char type = (char)buf[off];
                    skip[i] = len + 1;
                    if (type == 'C') {
                        off += (ssize_t)skip[i];
                        skip[i] = 0;
                        drop = true;
                        break;
                    }
                }
                send_all(a[i], buf, off < n ? off : n);
            }
            if (drop) {
                close(a[i]), close(b[i]);
                a[i] = a[npairs - 1], b[i] = b[npairs - 1], cutting[i] = cutting[npairs - 1];
                skip[i] = skip[npairs - 1];
                npairs--;
            }
        }
        if (!(p[0].revents & POLLIN))
            continue;
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)target)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int up = socket(AF_INET, SOCK_STREAM, 0);
        if (npairs == RELAY_MAX || up < 0 || connect(up, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            close(fd);
            if (up >= 0)
                close(up);
            continue;
        }
        a[npairs] = fd, b[npairs] = up, cutting[npairs] = false, skip[npairs] = 0, npairs++;
    }
}

static pid_t relay_pid;
static int relay_ctl = -1;

/* Starts the relay in front of the cluster; its port, or -1. */
static int relay_start(void)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0), pfd[2];
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 64) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &len) < 0 || pipe(pfd) < 0) {
        perror("relay");
        if (lfd >= 0)
            close(lfd);
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(pfd[1]);
        cut_relay_run(lfd, pfd[0], harness_cluster()->port);
        _exit(0);
    }
    close(lfd);
    close(pfd[0]);
    relay_pid = pid;
    relay_ctl = pfd[1];
    return ntohs(sa.sin_port);
}

static void relay_stop(void)
{
    if (relay_pid > 0) {
        kill(relay_pid, SIGKILL);
        waitpid(relay_pid, NULL, 0);
    }
    if (relay_ctl >= 0)
        close(relay_ctl);
    relay_pid = 0;
    relay_ctl = -1;
}

static void relay_arm(char cmd)
{
    CU_ASSERT_EQUAL(write(relay_ctl, &cmd, 1), 1);
    itu_sleep_ms(50); /* the relay reads its pipe within its poll */
}

/* pgwarden in mode whose database "relayed" goes through the relay. */
static bool start_relayed(const char *mode)
{
    int port = relay_start();
    if (port < 0)
        return false;
    alarm(TEST_LIMIT_S);
    static char dbs[300];
    snprintf(dbs, sizeof(dbs), "relayed = host=127.0.0.1 port=%d dbname=pgwarden_test pool_size=4",
             port);
    struct harness_proxy_opts o = {.pool_mode = mode,
                                   .pool_size = 4,
                                   .auth_type = "scram-sha-256",
                                   .client_tls_mode = "disable",
                                   .server_tls_mode = "disable", /* the relay reads it */
                                   .log_level = getenv("PGW_TEST_DEBUG") ? "debug" : "info",
                                   .admin = true,
                                   .databases_extra = dbs};
    g_px = harness_proxy_start(&o);
    return g_px != NULL;
}

static PGconn *relayed_conn(void)
{
    PGconn *c = harness_connect(g_px, "sslmode=disable dbname=relayed");
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "connect: %s", PQerrorMessage(c));
    return c;
}

static void commit_lost(const char *mode)
{
    setup_table("DROP TABLE IF EXISTS rt_amb; CREATE TABLE rt_amb (id int PRIMARY KEY)");
    CU_ASSERT_FATAL(start_relayed(mode));
    bool session = !strcmp(mode, "session");
    PGconn *d = direct();
    static const struct {
        char cut;
        const char *want;    /* what the client gets for its COMMIT */
        bool committed;      /* the row is there afterwards */
        bool writes;         /* the transaction inserts a row */
        const char *outcome; /* pgwarden_commit_outcomes_total label */
    } cases[] = {
        {'c', "COMMIT", true, true, "outcome=committed"},
        {'a', "!40000", false, true, "outcome=aborted"},
        {'c', "COMMIT", false, false, "outcome=read_only"},
        {'u', "!40003", false, true, "outcome=unknown"},
    };
    for (int i = 0; i < 4; i++) {
        PGconn *c = relayed_conn();
        CU_ASSERT_STRING_EQUAL(itu_q(c, "BEGIN"), "BEGIN");
        char sql[100];
        snprintf(sql, sizeof(sql), cases[i].writes ? "INSERT INTO rt_amb VALUES (%d)" : "SELECT %d",
                 i + 1);
        CU_ASSERT_TRUE(itu_exec_ok(c, sql));
        relay_arm(cases[i].cut);
        const char *got = itu_q(c, "COMMIT");
        if (strcmp(got, cases[i].want) != 0)
            fprintf(stderr, "case %d: COMMIT gave %s (%s)\n", i, got, PQerrorMessage(c));
        CU_ASSERT_STRING_EQUAL(got, cases[i].want);
        if (cases[i].cut == 'a') /* PostgreSQL saw no COMMIT: its backend rolled back */
            itu_sleep_ms(10);
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM rt_amb WHERE id = %d", i + 1);
        CU_ASSERT_EQUAL(num(d, sql), cases[i].committed ? 1 : 0);
        if (session) {
            /* its session went with the server: the connection ends after the answer */
            CU_ASSERT_STRING_NOT_EQUAL(itu_q(c, "SELECT 1"), "1");
        } else {
            /* the client goes on, on another server */
            CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT 7"), "7");
            CU_ASSERT_STRING_EQUAL(itu_q(c, sql), cases[i].committed ? "1" : "0");
        }
        CU_ASSERT_EQUAL(metric("pgwarden_commit_outcomes_total", cases[i].outcome, NULL), 1);
        PQfinish(c);
    }
    PQfinish(d);
    if (getenv("PGW_TEST_DEBUG"))
        harness_proxy_dump_log(g_px, 400);
    stop();
    relay_stop();
}

/*
 * A COMMIT lost with its server while a request pipelined behind it was unanswered: one
 * answer cannot stand for both (the SELECT's reply would never come), so the client gets
 * a lost connection at once, not a 40003 and a hang.
 */
static void test_commit_lost_pipelined(void)
{
    CU_ASSERT_FATAL(start_relayed("transaction"));
    PGconn *c = relayed_conn();
    CU_ASSERT_STRING_EQUAL(itu_q(c, "BEGIN"), "BEGIN");
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SELECT 1"), "1");
    relay_arm('u');
    static const char *const two[] = {"COMMIT", "SELECT 2"};
    uint8_t buf[4096];
    int64_t t0 = itu_now_ms();
    size_t n = raw_queries(c, two, 2, 2, buf, sizeof(buf), 5000);
    int64_t took = itu_now_ms() - t0;
    char code[8];
    itw_error_field(buf, n, 'C', code, sizeof(code));
    if (took >= 4000 || strcmp(code, "08006") != 0)
        fprintf(stderr, "\n    after %lld ms: %d ReadyForQuery, error %s\n", (long long)took,
                raw_count(buf, n, 'Z'), code);
    CU_ASSERT_TRUE(took < 4000);
    CU_ASSERT_STRING_EQUAL(code, "08006");
    PQfinish(c);
    stop();
    relay_stop();
}

static void test_commit_lost_transaction(void)
{
    commit_lost("transaction");
}
static void test_commit_lost_session(void)
{
    commit_lost("session");
}

/* COPY FROM STDIN in a replayed block: the replay sends the COPY with its data. */
static const char *copy_step(PGconn *c, const char *data)
{
    if (PQputCopyData(c, data, (int)strlen(data)) != 1 || PQputCopyEnd(c, NULL) != 1)
        return "!copyput";
    return result_of(c, 5000);
}

static void copy_in_replayed(const char *mode)
{
    make_fail_once_function();
    setup_table("DROP TABLE IF EXISTS rt_cp; CREATE TABLE rt_cp (v int)");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(mode, 2, NULL));
    PGconn *d = direct(), *c = conn();
    CU_ASSERT_STRING_EQUAL(itu_q(c, "BEGIN"), "BEGIN");
    PGresult *r = PQexec(c, "COPY rt_cp FROM STDIN");
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COPY_IN);
    PQclear(r);
    CU_ASSERT_STRING_EQUAL(copy_step(c, "1\n2\n"), "COPY 2");
    rt_once_arm(d);
    CU_ASSERT_EQUAL(PQsendQuery(c, "SELECT rt_fail_once()"), 1);
    CU_ASSERT_STRING_EQUAL(result_of(c, 5000), "1"); /* replayed, COPY included */
    CU_ASSERT_STRING_EQUAL(itu_q(c, "COMMIT"), "COMMIT");
    CU_ASSERT_EQUAL(num(d, "SELECT count(*) FROM rt_cp"), 2);
    PQfinish(c);
    PQfinish(d);
    stop();
}

static void test_copy_in_replayed_transaction(void)
{
    copy_in_replayed("transaction");
}

static void test_copy_in_replayed_session(void)
{
    copy_in_replayed("session");
}

/* pgJDBC's first request of a block: BEGIN and the first statement in one group.  The
 * client had BEGIN's replies when the statement failed: replayed all the same. */
static void begin_group_replayed(const char *mode)
{
    make_fail_once_function();
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(mode, 2, NULL));
    PGconn *d = direct(), *c = conn();
    rt_once_arm(d);
    CU_ASSERT_EQUAL_FATAL(PQenterPipelineMode(c), 1);
    CU_ASSERT_EQUAL(PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQsendQueryParams(c, "SELECT rt_fail_once()", 0, NULL, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQpipelineSync(c), 1);
    const char *want[] = {"BEGIN", "ROWS 1", "PIPELINE_SYNC"};
    for (int i = 0; i < 3; i++)
        CU_ASSERT_STRING_EQUAL(itu_pipeline_next(c, 5000), want[i]);
    CU_ASSERT_EQUAL(metric("pgwarden_retry_attempts_total", NULL), 1);
    PQfinish(c);
    PQfinish(d);
    stop();
}

static void test_begin_group_replayed_transaction(void)
{
    begin_group_replayed("transaction");
}

static void test_begin_group_replayed_session(void)
{
    begin_group_replayed("session");
}

/* A procedure that commits inside, called outside a block, then fails: not replayed (the
 * row it committed would be inserted twice). */
static void test_call_committing_not_replayed(void)
{
    make_fail_once_function();
    setup_table("CREATE OR REPLACE PROCEDURE rt_proc() LANGUAGE plpgsql AS "
                "$$ BEGIN INSERT INTO rt_pipe VALUES (77); COMMIT; PERFORM rt_fail_once(); END $$");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("transaction", 2, NULL));
    PGconn *d = direct(), *c = conn();
    rt_once_arm(d);
    CU_ASSERT_STRING_EQUAL(itu_q(c, "CALL rt_proc()"), "!40001");
    CU_ASSERT_EQUAL(num(d, "SELECT count(*) FROM rt_pipe WHERE v = 77"), 1);
    PQfinish(c);
    PQfinish(d);
    stop();
}

/* The 10 s bound on a lost COMMIT's outcome holds while no server is free to ask. */
static void test_commit_lost_outcome_bound(void)
{
    setup_table("DROP TABLE IF EXISTS rt_amb; CREATE TABLE rt_amb (id int PRIMARY KEY)");
    CU_ASSERT_FATAL(start_relayed("transaction"));
    PGconn *c = relayed_conn(), *h[3], *w = relayed_conn();
    CU_ASSERT_STRING_EQUAL(itu_q(c, "BEGIN"), "BEGIN");
    CU_ASSERT_TRUE(itu_exec_ok(c, "INSERT INTO rt_amb VALUES (1)"));
    for (int i = 0; i < 3; i++) { /* the other servers of the pool (4) stay busy */
        h[i] = relayed_conn();
        CU_ASSERT_STRING_EQUAL(itu_q(h[i], "BEGIN"), "BEGIN");
        CU_ASSERT_STRING_EQUAL(itu_q(h[i], "SELECT 1"), "1");
    }
    CU_ASSERT_EQUAL(PQsendQuery(w, "SELECT pg_sleep(15)"), 1); /* queued: the pool is full */
    itu_sleep_ms(100);
    relay_arm('c');
    int64_t t0 = itu_now_ms();
    CU_ASSERT_EQUAL(PQsendQuery(c, "COMMIT"), 1);
    const char *got = result_of(c, 15000); /* the FATAL's result, before the close's */
    int64_t took = itu_now_ms() - t0;
    /* a FATAL and the close at once: libpq may keep only the message */
    bool unknown = !strcmp(got, "!40003") ||
                   strstr(PQerrorMessage(c), "whether the transaction committed is unknown");
    if (took >= 12000 || !unknown)
        fprintf(stderr, "\n    COMMIT gave %s after %lld ms: %s\n", got, (long long)took,
                PQerrorMessage(c));
    CU_ASSERT_TRUE(took < 12000);
    CU_ASSERT_TRUE(unknown);
    for (int i = 0; i < 3; i++)
        PQfinish(h[i]);
    PQfinish(w);
    PQfinish(c);
    stop();
    relay_stop();
}

/* ---- found by the second review: notifications, prepared statements, BEGIN texts ---- */

/* A notification PostgreSQL sends between the 40001 and its ReadyForQuery (the backend is
 * idle again) must reach the client whether or not the statement is replayed. */
static void test_notify_in_hold(void)
{
    setup_table("DROP TABLE IF EXISTS rt_rvn; CREATE TABLE rt_rvn (id int PRIMARY KEY, v int);"
                "INSERT INTO rt_rvn VALUES (1, 0)");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start("session", 2, NULL));
    PGconn *c = conn(), *d = direct();
    CU_ASSERT_STRING_EQUAL(itu_q(c, "LISTEN rv_chan"), "LISTEN");
    CU_ASSERT_STRING_EQUAL(itu_q(c, "SET default_transaction_isolation = 'repeatable read'"),
                           "SET");
    CU_ASSERT_TRUE(itu_exec_ok(d, "BEGIN"));
    CU_ASSERT_TRUE(itu_exec_ok(d, "UPDATE rt_rvn SET v = v + 1 WHERE id = 1"));
    CU_ASSERT_EQUAL(PQsendQuery(c, "UPDATE rt_rvn SET v = v + 10 WHERE id = 1 RETURNING v"), 1);
    CU_ASSERT_TRUE(wait_lock_waiters(d, 1));
    CU_ASSERT_TRUE(itu_exec_ok(d, "NOTIFY rv_chan, 'hello'"));
    CU_ASSERT_TRUE(itu_exec_ok(d, "COMMIT"));
    CU_ASSERT_STRING_EQUAL(result_of(c, 10000), "11"); /* replayed */
    PGnotify *n = itu_wait_notify(c, 2000);
    CU_ASSERT_PTR_NOT_NULL(n);
    if (n) {
        CU_ASSERT_STRING_EQUAL(n->extra, "hello");
        PQfreemem(n);
    }
    CU_ASSERT_EQUAL(metric("pgwarden_retries_total", "outcome=succeeded", NULL), 1);
    PQfinish(c);
    PQfinish(d);
    stop();
}

/* A statement the block prepares (named) is prepared again by the replay. */
static void named_parse(const char *mode)
{
    setup_table("DROP TABLE IF EXISTS rt_rvp; CREATE TABLE rt_rvp (id int PRIMARY KEY, v int);"
                "INSERT INTO rt_rvp VALUES (1, 0)");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(mode, 2, NULL));
    PGconn *c = conn(), *d = direct();
    CU_ASSERT_STRING_EQUAL(itu_q(c, "BEGIN ISOLATION LEVEL REPEATABLE READ"), "BEGIN");
    PGresult *r = PQprepare(c, "rv_s1", "UPDATE rt_rvp SET v = v + 10 WHERE id = 1", 0, NULL);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    CU_ASSERT_TRUE(itu_exec_ok(d, "BEGIN"));
    CU_ASSERT_TRUE(itu_exec_ok(d, "UPDATE rt_rvp SET v = v + 1 WHERE id = 1"));
    CU_ASSERT_EQUAL(PQsendQueryPrepared(c, "rv_s1", 0, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_TRUE(wait_lock_waiters(d, 1));
    CU_ASSERT_TRUE(itu_exec_ok(d, "COMMIT"));
    /* transaction pooling renames it on the server and prepares it again where needed: the
     * block is replayed; in session pooling the replay's Parse would find the name taken
     * (a ROLLBACK keeps prepared statements): the client gets its 40001 */
    bool session = !strcmp(mode, "session");
    CU_ASSERT_STRING_EQUAL(result_of(c, 10000), session ? "!40001" : "UPDATE 1");
    PQclear(PQexec(c, "ROLLBACK"));
    CU_ASSERT_EQUAL(metric("pgwarden_retries_total", "outcome=diverged", NULL), 0);
    CU_ASSERT_EQUAL(metric("pgwarden_retries_total", "outcome=succeeded", NULL), session ? 0 : 1);
    PQfinish(c);
    PQfinish(d);
    stop();
}
static void test_named_parse_session(void)
{
    named_parse("session");
}
static void test_named_parse_transaction(void)
{
    named_parse("transaction");
}

/* A procedure that commits inside, prepared in an earlier unit, executed outside a block
 * (Bind/Execute only): it must not be replayed either. */
static void prepared_call(const char *mode)
{
    make_fail_once_function();
    setup_table("CREATE OR REPLACE PROCEDURE rt_proc() LANGUAGE plpgsql AS "
                "$$ BEGIN INSERT INTO rt_pipe VALUES (77); COMMIT; PERFORM rt_fail_once(); END $$");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(mode, 2, NULL));
    PGconn *d = direct(), *c = conn();
    PGresult *r = PQprepare(c, "rv_call", "CALL rt_proc()", 0, NULL);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    rt_once_arm(d);
    CU_ASSERT_EQUAL(PQsendQueryPrepared(c, "rv_call", 0, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_STRING_EQUAL(result_of(c, 10000), "!40001");
    CU_ASSERT_EQUAL(num(d, "SELECT count(*) FROM rt_pipe WHERE v = 77"), 1);
    PQfinish(c);
    PQfinish(d);
    stop();
}
static void test_prepared_call_transaction(void)
{
    prepared_call("transaction");
}
static void test_prepared_call_session(void)
{
    prepared_call("session");
}

/* An autocommit group whose first Parse is a BEGIN that is never executed (the unnamed
 * statement is replaced before the Bind): the client saw rows of the one statement run,
 * so a replay may not run it whole (it commits at Sync). */
static void begin_text_trick(const char *mode)
{
    make_fail_once_function();
    setup_table("DROP SEQUENCE IF EXISTS rv_seq; CREATE SEQUENCE rv_seq;"
                "CREATE OR REPLACE FUNCTION rv_g(i int) RETURNS bigint LANGUAGE plpgsql AS "
                "$$ BEGIN INSERT INTO rt_pipe VALUES (88); IF i = 3 THEN PERFORM rt_fail_once(); "
                "END IF; RETURN nextval('rv_seq'); END $$");
    CU_ASSERT_PTR_NOT_NULL_FATAL(start(mode, 2, NULL));
    PGconn *d = direct(), *c = conn();
    rt_once_arm(d);
    uint8_t out[1024], body[256];
    size_t len = 0, bl;
    static const char q1[] = "BEGIN", q2[] = "SELECT rv_g(i) FROM generate_series(1, 3) i";
    bl = 0;
    body[bl++] = 0;
    memcpy(body + bl, q1, sizeof(q1)), bl += sizeof(q1);
    body[bl++] = 0, body[bl++] = 0;
    CU_ASSERT_FATAL(itw_msg(out, sizeof(out), &len, 'P', body, bl));
    bl = 0;
    body[bl++] = 0;
    memcpy(body + bl, q2, sizeof(q2)), bl += sizeof(q2);
    body[bl++] = 0, body[bl++] = 0;
    CU_ASSERT_FATAL(itw_msg(out, sizeof(out), &len, 'P', body, bl));
    static const uint8_t bind[] = {0, 0, 0, 0, 0, 0, 0, 0};
    CU_ASSERT_FATAL(itw_msg(out, sizeof(out), &len, 'B', bind, sizeof(bind)));
    static const uint8_t exec[] = {0, 0, 0, 0, 0};
    CU_ASSERT_FATAL(itw_msg(out, sizeof(out), &len, 'E', exec, sizeof(exec)));
    CU_ASSERT_FATAL(itw_msg(out, sizeof(out), &len, 'S', body, 0));
    int fd = PQsocket(c);
    CU_ASSERT_EQUAL_FATAL(send(fd, out, len, MSG_NOSIGNAL), (ssize_t)len);
    uint8_t buf[8192];
    size_t got = 0;
    int64_t deadline = itu_now_ms() + 10000;
    while (raw_count(buf, got, 'Z') < 1 && itu_now_ms() < deadline) {
        bool closed = false;
        ssize_t r = harness_raw_recv(fd, buf + got, sizeof(buf) - got, 1000, &closed);
        if (r > 0)
            got += (size_t)r;
        if (r < 0 || closed)
            break;
    }
    char code[8] = "";
    itw_error_field(buf, got, 'C', code, sizeof(code));
    long rows = num(d, "SELECT count(*) FROM rt_pipe WHERE v = 88");
    /* the client had two rows of a statement that commits by itself: not replayed */
    CU_ASSERT_STRING_EQUAL(code, "40001");
    CU_ASSERT_EQUAL(raw_count(buf, got, 'D'), 2);
    CU_ASSERT_EQUAL(rows, 0); /* told it failed: nothing may be committed */
    PQfinish(c);
    PQfinish(d);
    stop();
}
static void test_begin_text_trick(void)
{
    begin_text_trick("session");
}

static void register_suites(void)
{
    static CU_TestInfo tests[] = {
        {"autocommit_session", test_autocommit_session},
        {"autocommit_transaction", test_autocommit_transaction},
        {"held_begin_in_group_replayed", test_held_begin_in_group_replayed},
        {"deadlock_session", test_deadlock_session},
        {"deadlock_transaction", test_deadlock_transaction},
        {"bank_session", test_bank_session},
        {"bank_transaction", test_bank_transaction},
        {"diverged_session", test_diverged_session},
        {"diverged_transaction", test_diverged_transaction},
        {"shorter_replay", test_shorter_replay},
        {"xact_lock_kept", test_xact_lock_kept},
        {"retry_off", test_retry_off},
        {"max_attempts", test_max_attempts},
        {"budget_stops_storm", test_budget_stops_storm},
        {"commit_lost_transaction", test_commit_lost_transaction},
        {"commit_lost_session", test_commit_lost_session},
        {"commit_lost_pipelined", test_commit_lost_pipelined},
        {"commit_lost_outcome_bound", test_commit_lost_outcome_bound},
        {"copy_in_replayed_transaction", test_copy_in_replayed_transaction},
        {"copy_in_replayed_session", test_copy_in_replayed_session},
        {"begin_group_replayed_transaction", test_begin_group_replayed_transaction},
        {"begin_group_replayed_session", test_begin_group_replayed_session},
        {"call_committing_not_replayed", test_call_committing_not_replayed},
        {"pipelined_session", test_pipelined_session},
        {"pipelined_transaction", test_pipelined_transaction},
        {"commit_then_failure", test_commit_then_failure},
        {"held_replies_bounded", test_held_replies_bounded},
        {"diverged_replay_commits_nothing", test_diverged_replay_commits_nothing},
        {"session_lock_call_not_replayed", test_session_lock_call_not_replayed},
        {"replay_notice_once", test_replay_notice_once},
        {"xact_lock_released_at_chained_commit", test_xact_lock_released_at_chained_commit},
        {"outside_effect_not_replayed", test_outside_effect_not_replayed},
        {"dealloc_not_replayed", test_dealloc_not_replayed},
        {"notify_in_hold", test_notify_in_hold},
        {"named_parse_session", test_named_parse_session},
        {"named_parse_transaction", test_named_parse_transaction},
        {"prepared_call_transaction", test_prepared_call_transaction},
        {"prepared_call_session", test_prepared_call_session},
        {"begin_text_trick", test_begin_text_trick},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("retry", suite_init, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
