/*
 * test_streaming.c: data volume and query control through pgwarden: COPY FROM STDIN and
 * COPY TO STDOUT of 100k rows compared byte for byte, a 100 MB result streamed while
 * pgwarden's resident memory stays bounded (also while the client stops reading), and
 * PQcancel of a running pg_sleep(30) answered with 57014 within 2 s.
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_util.h"

#define COPY_ROWS     100000
#define STREAM_ROWS   100000
#define STREAM_WIDTH  1000
#define RSS_GROWTH_KB (64 * 1024)

static struct harness_proxy *g_px;

/* Under AddressSanitizer freed memory sits in a quarantine (256 MB by default) before it is
 * reused, so RSS grows with any churn however small pgwarden's buffers are.  A small
 * quarantine for the pgwarden child keeps the RSS bound meaningful in the sanitizer build
 * too (the variable is read only by ASan-built programs). */
static void small_asan_quarantine_for_children(void)
{
    const char *cur = getenv("ASAN_OPTIONS");
    char buf[512];
    snprintf(buf, sizeof(buf), "%s%squarantine_size_mb=4", cur ? cur : "", cur && *cur ? ":" : "");
    setenv("ASAN_OPTIONS", buf, 1);
}

static int suite_init(void)
{
    if (itu_suite_init() != 0)
        return 1;
    small_asan_quarantine_for_children();
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

/*
 * Waits (bounded) until c has a complete result ready, reading input meanwhile.  True
 * when PQgetResult will not block.
 */
static bool wait_result(PGconn *c, int timeout_ms)
{
    int64_t deadline = itu_now_ms() + timeout_ms;
    while (PQisBusy(c)) {
        int64_t left = deadline - itu_now_ms();
        if (left <= 0)
            return false;
        struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
        if (poll(&pfd, 1, (int)left) < 0 || !PQconsumeInput(c))
            return false;
    }
    return true;
}

/* ---- COPY -------------------------------------------------------------------------- */

/*
 * The COPY text of row i, in the canonical form COPY TO prints (so that what comes back
 * is byte-identical): an escaped tab and backslash, UTF-8, a NULL, varying lengths.
 */
static int copy_row(char *buf, size_t cap, int i)
{
    static const char *const words[] = {
        "alpha", "b\\tc", "d\\\\e", "gr\xc3\xbc\xc3\x9f", "\xe6\x97\xa5\xe6\x9c\xac", ""};
    if (i % 97 == 0)
        return snprintf(buf, cap, "%d\t\\N\t%d\n", i, i * 3);
    return snprintf(buf, cap, "%d\t%s-%0*d\t%d\n", i, words[i % 6], 1 + i % 40, i, i * 3);
}

static char *build_copy_data(size_t *len)
{
    size_t cap = (size_t)COPY_ROWS * 96, n = 0;
    char *data = malloc(cap);
    if (!data)
        return NULL;
    for (int i = 1; i <= COPY_ROWS; i++)
        n += (size_t)copy_row(data + n, cap - n, i);
    *len = n;
    return data;
}

static void test_copy_in_out_100k(void)
{
    size_t len = 0;
    char *data = build_copy_data(&len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(data);
    PGconn *c = harness_connect(g_px, "sslmode=require");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_TRUE(
        itu_exec_ok(c, "SET client_min_messages = warning; DROP TABLE IF EXISTS itest_copy; "
                       "CREATE TABLE itest_copy"
                       "(id int PRIMARY KEY, t text, n int)"));

    /* COPY FROM STDIN, sent in odd-sized chunks that split rows across CopyData. */
    PGresult *r = PQexec(c, "COPY itest_copy FROM STDIN");
    CU_ASSERT_EQUAL_FATAL(PQresultStatus(r), PGRES_COPY_IN);
    PQclear(r);
    bool sent = true;
    for (size_t off = 0, chunk = 7919; off < len && sent; off += chunk) {
        size_t n = len - off < chunk ? len - off : chunk;
        sent = PQputCopyData(c, data + off, (int)n) == 1;
    }
    CU_ASSERT_TRUE(sent);
    CU_ASSERT_EQUAL(PQputCopyEnd(c, NULL), 1);
    r = PQgetResult(c);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    CU_ASSERT_STRING_EQUAL(PQcmdTuples(r), "100000");
    PQclear(r);
    while ((r = PQgetResult(c)) != NULL)
        PQclear(r);

    /* The server has exactly these rows (checked on a direct connection). */
    PGconn *d = harness_connect_info(harness_cluster_conninfo("sslmode=disable"));
    CU_ASSERT_EQUAL_FATAL(PQstatus(d), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(d, "SELECT count(*) FROM itest_copy"), "100000");
    CU_ASSERT_STRING_EQUAL(itu_value(d, "SELECT t FROM itest_copy WHERE id = 1"), "b\tc-01");
    PQfinish(d);

    /* COPY TO STDOUT: byte-identical to what was sent. */
    r = PQexec(c, "COPY (SELECT * FROM itest_copy ORDER BY id) TO STDOUT");
    CU_ASSERT_EQUAL_FATAL(PQresultStatus(r), PGRES_COPY_OUT);
    PQclear(r);
    char *back = malloc(len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(back);
    size_t got = 0;
    bool overflow = false;
    long rows = 0;
    for (;;) {
        char *buf = NULL;
        int n = PQgetCopyData(c, &buf, 0);
        if (n < 0)
            break;
        rows++;
        if (got + (size_t)n <= len)
            memcpy(back + got, buf, (size_t)n);
        else
            overflow = true;
        got += (size_t)n;
        PQfreemem(buf);
    }
    r = PQgetResult(c);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    while ((r = PQgetResult(c)) != NULL)
        PQclear(r);
    CU_ASSERT_FALSE(overflow);
    CU_ASSERT_EQUAL(rows, COPY_ROWS);
    CU_ASSERT_EQUAL(got, len);
    CU_ASSERT_TRUE(got == len && memcmp(back, data, len) == 0);

    /* A COPY FROM STDIN the client aborts: error 57014, connection still usable. */
    r = PQexec(c, "COPY itest_copy FROM STDIN");
    CU_ASSERT_EQUAL_FATAL(PQresultStatus(r), PGRES_COPY_IN);
    PQclear(r);
    CU_ASSERT_EQUAL(PQputCopyData(c, "999999\tx\t1\n", 11), 1);
    CU_ASSERT_EQUAL(PQputCopyEnd(c, "client changed its mind"), 1);
    r = PQgetResult(c);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_FATAL_ERROR);
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "57014");
    PQclear(r);
    while ((r = PQgetResult(c)) != NULL)
        PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT count(*) FROM itest_copy"), "100000");
    CU_ASSERT_TRUE(itu_exec_ok(c, "DROP TABLE itest_copy"));
    PQfinish(c);
    free(back);
    free(data);
}

/* ---- a 100 MB result ----------------------------------------------------------------- */

static void test_stream_100mb_bounded_rss(void)
{
    PGconn *c = harness_connect(g_px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
    long base = harness_proxy_rss_kb(g_px);
    CU_ASSERT_FATAL(base > 0);
    long peak = base;

    char sql[160];
    snprintf(sql, sizeof(sql), "SELECT repeat('x', %d) FROM generate_series(1, %d)", STREAM_WIDTH,
             STREAM_ROWS);
    CU_ASSERT_EQUAL_FATAL(PQsendQuery(c, sql), 1);
    CU_ASSERT_EQUAL_FATAL(PQsetSingleRowMode(c), 1);

    /* First the client does not read for a while: pgwarden must stop reading from the
     * server rather than buffer the result.  Sample its RSS meanwhile. */
    for (int i = 0; i < 30; i++) {
        poll(NULL, 0, 50);
        long rss = harness_proxy_rss_kb(g_px);
        if (rss > peak)
            peak = rss;
    }

    long rows = 0, bad = 0;
    unsigned long long bytes = 0;
    bool done = false;
    int64_t deadline = itu_now_ms() + 240000;
    while (!done && itu_now_ms() < deadline) {
        if (!wait_result(c, 30000))
            break;
        PGresult *r = PQgetResult(c);
        if (!r) {
            done = true;
            break;
        }
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_SINGLE_TUPLE) {
            rows++;
            int n = PQgetlength(r, 0, 0);
            bytes += (unsigned long long)n;
            const char *v = PQgetvalue(r, 0, 0);
            if (n != STREAM_WIDTH || v[0] != 'x' || v[n - 1] != 'x')
                bad++;
            if (rows % 2000 == 0) {
                long rss = harness_proxy_rss_kb(g_px);
                if (rss > peak)
                    peak = rss;
            }
        } else if (st != PGRES_TUPLES_OK) {
            fprintf(stderr, "stream: %s", PQresultErrorMessage(r));
            bad++;
        }
        PQclear(r);
    }
    CU_ASSERT_TRUE(done);
    CU_ASSERT_EQUAL(rows, STREAM_ROWS);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(bytes, (unsigned long long)STREAM_ROWS * STREAM_WIDTH);
    printf("\n    pgwarden RSS: %ld KiB before, %ld KiB peak ", base, peak);
    CU_ASSERT(peak - base < RSS_GROWTH_KB);

    /* The same volume as COPY TO STDOUT. */
    snprintf(sql, sizeof(sql),
             "COPY (SELECT repeat('y', %d) FROM generate_series(1, %d)) TO "
             "STDOUT",
             STREAM_WIDTH, STREAM_ROWS);
    PGresult *r = PQexec(c, sql);
    CU_ASSERT_EQUAL_FATAL(PQresultStatus(r), PGRES_COPY_OUT);
    PQclear(r);
    rows = 0;
    bytes = 0;
    for (;;) {
        char *buf = NULL;
        int n = PQgetCopyData(c, &buf, 0);
        if (n < 0)
            break;
        rows++;
        bytes += (unsigned long long)n;
        PQfreemem(buf);
        if (rows % 2000 == 0) {
            long rss = harness_proxy_rss_kb(g_px);
            if (rss > peak)
                peak = rss;
        }
    }
    r = PQgetResult(c);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    while ((r = PQgetResult(c)) != NULL)
        PQclear(r);
    CU_ASSERT_EQUAL(rows, STREAM_ROWS);
    CU_ASSERT_EQUAL(bytes, (unsigned long long)STREAM_ROWS * (STREAM_WIDTH + 1));
    CU_ASSERT(peak - base < RSS_GROWTH_KB);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'after'"), "after");
    PQfinish(c);
}

/* ---- cancel ------------------------------------------------------------------------ */

/* Waits (bounded) until the backend pid runs a query containing pattern. */
static bool wait_backend_active(const char *pid, int timeout_ms)
{
    PGconn *d = harness_connect_info(harness_cluster_conninfo("sslmode=disable"));
    if (PQstatus(d) != CONNECTION_OK) {
        PQfinish(d);
        return false;
    }
    char sql[200];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND state = 'active' "
             "AND query LIKE '%%pg_sleep%%'",
             atoi(pid));
    bool active = false;
    int64_t deadline = itu_now_ms() + timeout_ms;
    while (!active && itu_now_ms() < deadline) {
        active = strcmp(itu_value(d, sql), "1") == 0;
        if (!active)
            poll(NULL, 0, 20);
    }
    PQfinish(d);
    return active;
}

static void check_cancel(const char *extra)
{
    PGconn *c = harness_connect(g_px, extra);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    char pid[32];
    itu_value_copy(pid, sizeof(pid), c, "SELECT pg_backend_pid()");

    PGcancel *cancel = PQgetCancel(c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cancel);
    char errbuf[256];
    CU_ASSERT_EQUAL_FATAL(PQsendQuery(c, "SELECT pg_sleep(30)"), 1);
    CU_ASSERT_TRUE(wait_backend_active(pid, 5000));
    int64_t t0 = itu_now_ms();
    int ok = PQcancel(cancel, errbuf, sizeof(errbuf));
    if (!ok)
        fprintf(stderr, "PQcancel: %s\n", errbuf);
    CU_ASSERT_EQUAL(ok, 1);
    CU_ASSERT_TRUE(wait_result(c, 5000));
    int64_t elapsed = itu_now_ms() - t0;
    PGresult *r = PQgetResult(c);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_FATAL_ERROR);
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    CU_ASSERT_STRING_EQUAL(st ? st : "", "57014");
    PQclear(r);
    while (wait_result(c, 5000) && (r = PQgetResult(c)) != NULL)
        PQclear(r);
    CU_ASSERT(elapsed < 2000);
    if (elapsed >= 2000)
        fprintf(stderr, "cancel took %lld ms\n", (long long)elapsed);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'after cancel'"), "after cancel");
    PQfreeCancel(cancel);
    PQfinish(c);
}

static void test_cancel_plain(void)
{
    check_cancel("sslmode=disable");
}

static void test_cancel_tls(void)
{
    check_cancel("sslmode=require");
}

/* The cluster's postmaster pid (data/postmaster.pid), or -1. */
static pid_t postmaster_pid(void)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/data/postmaster.pid", harness_cluster()->dir);
    FILE *f = fopen(path, "re");
    long pid = -1;
    if (f) {
        if (fscanf(f, "%ld", &pid) != 1)
            pid = -1;
        fclose(f);
    }
    return (pid_t)pid;
}

/*
 * libpq's PQcancel (and asyncpg) waits for the cancel connection to close before the next
 * command: PostgreSQL closes it once it has signalled the backend.  pgwarden closed the
 * client's cancel connection as soon as it had read it, before PostgreSQL had even the
 * forwarded one, so a late signal could land on the client's next statement (about one in
 * ten under load).  With PostgreSQL's postmaster stopped for 400 ms, PQcancel through
 * pgwarden must wait for it, as it would directly.
 */
static void test_cancel_waits_for_postgresql(void)
{
    PGconn *c = harness_connect(g_px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    PGcancel *cancel = PQgetCancel(c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cancel);
    pid_t pm = postmaster_pid();
    CU_ASSERT_FATAL(pm > 0);
    CU_ASSERT_EQUAL_FATAL(PQsendQuery(c, "SELECT pg_sleep(5)"), 1);
    poll(NULL, 0, 100);
    pid_t waker = fork();
    CU_ASSERT_FATAL(waker >= 0);
    if (waker == 0) { /* resumes the postmaster whatever happens to the test */
        poll(NULL, 0, 400);
        kill(pm, SIGCONT);
        _exit(0);
    }
    CU_ASSERT_EQUAL(kill(pm, SIGSTOP), 0);
    char errbuf[256];
    int64_t t0 = itu_now_ms();
    CU_ASSERT_EQUAL(PQcancel(cancel, errbuf, sizeof(errbuf)), 1);
    int64_t waited = itu_now_ms() - t0;
    waitpid(waker, NULL, 0);
    kill(pm, SIGCONT);
    printf("\n    PQcancel returned after %lld ms (postmaster stopped for 400 ms) ",
           (long long)waited);
    CU_ASSERT(waited >= 250);
    PGresult *r;
    int canceled = 0;
    while (wait_result(c, 5000) && (r = PQgetResult(c)) != NULL) {
        const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        canceled += st && !strcmp(st, "57014");
        PQclear(r);
    }
    CU_ASSERT_EQUAL(canceled, 1);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'next'"), "next");
    PQfreeCancel(cancel);
    PQfinish(c);
}

/* 300 queries sent at once in libpq's pipeline mode over TLS: they reach pgwarden as
 * several TLS records in one socket read, and the answers come back the same way from
 * PostgreSQL.  pgwarden reads with OpenSSL's read-ahead: a record read ahead but not yet
 * decrypted must be read on at once (SSL_has_pending), or the pipeline stalls. */
static void test_tls_pipeline_burst(void)
{
    PGconn *c = harness_connect(g_px, "sslmode=require");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_FATAL(PQenterPipelineMode(c) == 1);
    enum { N = 300 };
    bool sent = true;
    for (int i = 0; i < N && sent; i++) {
        char v[16];
        snprintf(v, sizeof(v), "%d", i);
        const char *params[1] = {v};
        sent = PQsendQueryParams(c, "SELECT $1::int + 1000000, repeat('p', 200)", 1, NULL, params,
                                 NULL, NULL, 0) == 1;
    }
    CU_ASSERT_TRUE(sent);
    CU_ASSERT_FATAL(PQpipelineSync(c) == 1);
    /* PQgetResult blocks: a stall ends by SIGALRM (the test fails, as it should) */
    alarm(30);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        PGresult *r = PQgetResult(c);
        if (r && PQresultStatus(r) == PGRES_TUPLES_OK && atoi(PQgetvalue(r, 0, 0)) == 1000000 + i)
            ok++;
        PQclear(r);
        r = PQgetResult(c);
        CU_ASSERT_PTR_NULL(r);
        PQclear(r);
    }
    CU_ASSERT_EQUAL(ok, N);
    PGresult *r = PQgetResult(c);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_PIPELINE_SYNC);
    PQclear(r);
    r = PQgetResult(c);
    PQclear(r);
    alarm(0);
    CU_ASSERT_FATAL(PQexitPipelineMode(c) == 1);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 41 + 1"), "42");
    PQfinish(c);
}

/* A TLS client that does not read while a large answer streams: pgwarden's direct
 * SSL_write to it stops when the socket is full (SSL_ERROR_WANT_WRITE, part of a record
 * possibly sent) and the rest goes through the bufferevent, whose retry must present the
 * same bytes; the client then reads every byte intact (one 24 MB value and 200,000 rows). */
static void test_tls_slow_reader_byte_exact(void)
{
    PGconn *c = harness_connect(g_px, "sslmode=require");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_FATAL(PQsendQuery(c, "SELECT repeat('0123456789abcdef', 1500000)"));
    itu_sleep_ms(1500); /* pgwarden fills the client's socket meanwhile */
    PGresult *r = PQgetResult(c);
    CU_ASSERT_EQUAL_FATAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT_EQUAL(PQgetlength(r, 0, 0), 24000000);
    const char *v = PQgetvalue(r, 0, 0);
    bool same = PQgetlength(r, 0, 0) == 24000000;
    for (int i = 0; same && i < 24000000; i += 16)
        same = memcmp(v + i, "0123456789abcdef", 16) == 0;
    CU_ASSERT_TRUE(same);
    PQclear(r);
    while ((r = PQgetResult(c)) != NULL)
        PQclear(r);
    CU_ASSERT_FATAL(PQsendQuery(c, "SELECT g, md5(g::text) FROM generate_series(1, 200000) g"));
    itu_sleep_ms(1000);
    r = PQgetResult(c);
    CU_ASSERT_EQUAL_FATAL(PQresultStatus(r), PGRES_TUPLES_OK);
    CU_ASSERT_EQUAL(PQntuples(r), 200000);
    long long sum = 0;
    int bad = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        sum += atoll(PQgetvalue(r, i, 0));
        bad += PQgetlength(r, i, 1) != 32;
    }
    CU_ASSERT_EQUAL(sum, 200000LL * 200001LL / 2);
    CU_ASSERT_EQUAL(bad, 0);
    PQclear(r);
    while ((r = PQgetResult(c)) != NULL)
        PQclear(r);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT md5('pgwarden')"),
                           "0f2d8130aec07a1d8af9044152dd7569");
    PQfinish(c);
}

static void register_suites(void)
{
    static const CU_TestInfo tests[] = {
        {"copy_in_out_100k_byte_exact", test_copy_in_out_100k},
        {"tls_slow_reader_byte_exact", test_tls_slow_reader_byte_exact},
        {"tls_pipeline_burst", test_tls_pipeline_burst},
        {"stream_100mb_bounded_rss", test_stream_100mb_bounded_rss},
        {"cancel_pg_sleep_plain", test_cancel_plain},
        {"cancel_pg_sleep_tls", test_cancel_tls},
        {"cancel_waits_for_postgresql", test_cancel_waits_for_postgresql},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("streaming", suite_init, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
