/*
 * test_idle.c: what an idle client costs pgwarden (issue 19), and that a client which gave
 * up its buffers while idle (net/client.h, parking) is served as any other afterwards.
 *
 * 2,000 plain clients log in (trust) and stay idle, in transaction and in session pooling
 * (pool of 5: in session pooling 1,995 of them wait for a server).  pgwarden's RSS growth
 * per client must stay under a bound with a margin over what it is (1.0-1.35 kB measured
 * here, about 1 kB in bench/idle_memory.sh): 1,600 bytes in the Release build, where
 * clients that kept their bufferevents (no parking) measure about 1,800; under
 * AddressSanitizer every allocation carries redzones, so the bound there is only a guard
 * against gross growth.  Then:
 *   - transaction pooling: every client runs a query and gets its answer;
 *   - session pooling: all but the last 5 leave; the last 5, which waited parked, get the
 *     servers and run a query;
 *   - transaction pooling: a parked client gets the FATAL of a shutdown (57P01).
 * Retry is on (the default): its per-client state is made only at a client's first query.
 * Last, 300 TLS clients in each mode: RSS per client under 24,000 bytes (about 15 kB), all
 * idle ones parked (pgwarden_clients_parked), then served as the plain ones above.
 */
#include <poll.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <CUnit/CUnit.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_http.h"
#include "itest_util.h"

#define NIDLE  2000
#define WARMUP 4 /* fewer than POOL: in session pooling each holds a server */
#define POOL   5
#define NTLS   300 /* TLS logins are slow (ASan: much slower) */

#if defined(__SANITIZE_ADDRESS__)
#define MAX_BYTES_PER_CLIENT     8000 /* redzones and ASan's bookkeeping on every allocation */
#define MAX_TLS_BYTES_PER_CLIENT 80000
#else
/* 1,270-1,610 B measured (RSS moves in pages and with what malloc keeps from the logins in
 * flight); a client that kept its bufferevent while idle costs about 3,100 B. */
#define MAX_BYTES_PER_CLIENT     1900
/* About 16-17 kB (the TLS library's per-connection state); a client that kept OpenSSL's
 * two 16 kB+ record buffers while idle would cost far more. */
#define MAX_TLS_BYTES_PER_CLIENT 24000
#endif

static int suite_init(void)
{
    return itu_suite_init();
}

/* Opens n connections to px, at most 32 logins in flight; returns how many logged in (the
 * others are NULL in conns). */
static int open_idle(const struct harness_proxy *px, PGconn **conns, int n, bool tls)
{
    const char *info = harness_proxy_conninfo(px, tls ? "sslmode=require" : "sslmode=disable");
    PostgresPollingStatusType *want = calloc((size_t)n, sizeof(*want));
    struct pollfd *pfd = calloc((size_t)n, sizeof(*pfd));
    int *idx = calloc((size_t)n, sizeof(*idx));
    int opened = 0, ok = 0, done = 0;
    int64_t deadline = itu_now_ms() + 120000;
    while (want && pfd && idx && done < n && itu_now_ms() < deadline) {
        int inflight = 0;
        for (int i = 0; i < opened; i++)
            inflight += conns[i] && want[i] != PGRES_POLLING_OK && want[i] != PGRES_POLLING_FAILED;
        while (opened < n && inflight < 32) {
            conns[opened] = PQconnectStart(info);
            want[opened] = PGRES_POLLING_WRITING;
            if (!conns[opened] || PQstatus(conns[opened]) == CONNECTION_BAD) {
                want[opened] = PGRES_POLLING_FAILED;
                done++;
            } else {
                inflight++;
            }
            opened++;
        }
        int np = 0;
        for (int i = 0; i < opened; i++) {
            if (want[i] == PGRES_POLLING_READING || want[i] == PGRES_POLLING_WRITING) {
                pfd[np].fd = PQsocket(conns[i]);
                pfd[np].events = want[i] == PGRES_POLLING_READING ? POLLIN : POLLOUT;
                pfd[np].revents = 0;
                idx[np++] = i;
            }
        }
        if (np == 0)
            continue;
        if (poll(pfd, (nfds_t)np, 1000) < 0)
            break;
        for (int k = 0; k < np; k++) {
            if (!pfd[k].revents)
                continue;
            int i = idx[k];
            want[i] = PQconnectPoll(conns[i]);
            if (want[i] == PGRES_POLLING_OK) {
                ok++, done++;
            } else if (want[i] == PGRES_POLLING_FAILED) {
                if (done - ok < 3)
                    fprintf(stderr, "login failed: %s", PQerrorMessage(conns[i]));
                done++;
            }
        }
    }
    for (int i = 0; i < n; i++) {
        if (i >= opened || !want || want[i] != PGRES_POLLING_OK) {
            if (i < opened && conns[i])
                PQfinish(conns[i]);
            conns[i] = NULL;
        }
    }
    free(want);
    free(pfd);
    free(idx);
    return ok;
}

static void close_all(PGconn **conns, int n)
{
    for (int i = 0; i < n; i++) {
        if (conns[i])
            PQfinish(conns[i]);
        conns[i] = NULL;
    }
}

static struct harness_proxy *start(const char *mode, bool tls)
{
    struct harness_proxy_opts o = {.pool_mode = mode,
                                   .pool_size = POOL,
                                   .auth_type = "trust",
                                   .client_tls_mode = tls ? "allow" : "disable",
                                   .max_client_conn = NIDLE + WARMUP + 100, /* NTLS is smaller */
                                   .pgwarden_extra = "query_wait_timeout_ms = 0",
                                   .admin = true,
                                   .asan_quarantine_mb = 1};
    return harness_proxy_start(&o);
}

/* RSS growth per client for n idle clients, printed and bounded by max; conns stay open.
 * Returns the RSS before them (KiB). */
static long measure(struct harness_proxy *px, const char *what, PGconn **conns, int n, bool tls,
                    long max)
{
    PGconn *warm[WARMUP];
    CU_ASSERT_EQUAL(open_idle(px, warm, WARMUP, tls), WARMUP);
    close_all(warm, WARMUP);
    itu_sleep_ms(300);
    long rss0 = harness_proxy_rss_kb(px);
    CU_ASSERT_EQUAL_FATAL(open_idle(px, conns, n, tls), n);
    itu_sleep_ms(600); /* the janitor (every 250 ms) parks them */
    long rss1 = harness_proxy_rss_kb(px);
    long per = (rss1 - rss0) * 1024 / n;
    printf("\n    %s: RSS %ld -> %ld KiB, %ld bytes per idle client (bound %ld) ", what, rss0, rss1,
           per, max);
    CU_ASSERT(rss0 > 0 && rss1 > 0);
    CU_ASSERT(per < max);
    return rss0;
}

/* The query on c answers 42. */
static bool answers(PGconn *c)
{
    PGresult *r = PQexec(c, "SELECT 6 * 7");
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && !strcmp(PQgetvalue(r, 0, 0), "42");
    if (!ok)
        fprintf(stderr, "query failed: %s", PQerrorMessage(c));
    PQclear(r);
    return ok;
}

/* An idle connection's ErrorResponse reaches libpq's notice receiver: kept here. */
static void keep_notice(void *arg, const PGresult *r)
{
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (state)
        snprintf(arg, 6, "%s", state);
}

/* The idle client c gets 57P01 (a shutdown is under way) before its connection ends. */
static void gets_shutdown_error(PGconn *c)
{
    char sqlstate[6] = "";
    PQsetNoticeReceiver(c, keep_notice, sqlstate);
    int64_t deadline = itu_now_ms() + 10000;
    while (!sqlstate[0] && itu_now_ms() < deadline) {
        struct pollfd p = {.fd = PQsocket(c), .events = POLLIN};
        if (poll(&p, 1, 200) <= 0)
            continue;
        bool alive = PQconsumeInput(c);
        (void)PQisBusy(c); /* parses what came */
        if (!alive)
            break;
    }
    if (strcmp(sqlstate, "57P01") != 0)
        fprintf(stderr, "no 57P01 at shutdown (got \"%s\"): %s", sqlstate, PQerrorMessage(c));
    CU_ASSERT_STRING_EQUAL(sqlstate, "57P01");
}

/* SIGTERM: the idle client c gets 57P01 before its connection ends. */
static void shutdown_reaches(struct harness_proxy *px, PGconn *c)
{
    CU_ASSERT_EQUAL(harness_proxy_signal(px, SIGTERM), 0);
    gets_shutdown_error(c);
}

static void test_transaction(void)
{
    CU_ASSERT_TRUE_FATAL(itu_raise_nofile(2 * NIDLE + 200));
    struct harness_proxy *px = start("transaction", false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn **conns = calloc(NIDLE, sizeof(*conns));
    CU_ASSERT_PTR_NOT_NULL_FATAL(conns);
    long rss0 = measure(px, "transaction pooling", conns, NIDLE, false, MAX_BYTES_PER_CLIENT);
    /* Every client runs a query, in waves of 100 with the janitor's period between them:
     * a client idle after its query gives its retry state back and parks again, so the
     * waves reuse the same memory instead of each keeping ~3 kB per client. */
    int ok = 0;
    for (int i = 0; i < NIDLE; i++) {
        ok += conns[i] && answers(conns[i]);
        if (i % 100 == 99)
            itu_sleep_ms(300);
    }
    CU_ASSERT_EQUAL(ok, NIDLE);
    itu_sleep_ms(600); /* idle again: parked again */
    long rss2 = harness_proxy_rss_kb(px), per = (rss2 - rss0) * 1024 / NIDLE;
    printf("\n    after a query each: RSS %ld KiB, %ld bytes per client (bound %d) ", rss2, per,
           MAX_BYTES_PER_CLIENT);
    CU_ASSERT(per < MAX_BYTES_PER_CLIENT);
    if (conns[0])
        shutdown_reaches(px, conns[0]);
    close_all(conns, NIDLE);
    free(conns);
    CU_ASSERT(harness_proxy_wait_exit(px, 10000) == 0);
    harness_proxy_free(px);
}

static void test_session(void)
{
    CU_ASSERT_TRUE_FATAL(itu_raise_nofile(2 * NIDLE + 200));
    struct harness_proxy *px = start("session", false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn **conns = calloc(NIDLE, sizeof(*conns));
    CU_ASSERT_PTR_NOT_NULL_FATAL(conns);
    measure(px, "session pooling", conns, NIDLE, false, MAX_BYTES_PER_CLIENT);
    /* All but the last POOL clients leave (the first POOL to log in held the servers): the
     * servers go to the last ones, which waited parked, and serve their queries. */
    close_all(conns, NIDLE - POOL);
    int ok = 0;
    for (int i = NIDLE - POOL; i < NIDLE; i++)
        ok += conns[i] && answers(conns[i]);
    CU_ASSERT_EQUAL(ok, POOL);
    close_all(conns, NIDLE);
    free(conns);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* Shutdown with clients waiting for a server (session pooling, POOL servers, 4 * POOL
 * clients): every client, the waiting (parked) ones included, gets 57P01 and pgwarden
 * exits: no server is handed on while shutting down, so a waiting client left alone would
 * keep the process up for ever. */
static void test_shutdown_with_waiters(void)
{
    enum { N = 4 * POOL };
    struct harness_proxy *px = start("session", false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *warm[WARMUP], *conns[N];
    CU_ASSERT_EQUAL(open_idle(px, warm, WARMUP, false), WARMUP); /* the welcome is cached */
    close_all(warm, WARMUP);
    CU_ASSERT_EQUAL_FATAL(open_idle(px, conns, N, false), N);
    itu_sleep_ms(600); /* the waiting ones park */
    CU_ASSERT(metric_value(px->admin_port, "pgwarden_clients_parked") >= N - POOL);
    /* one SIGTERM (a second one could reach the process after its handlers are gone) */
    CU_ASSERT_EQUAL(harness_proxy_signal(px, SIGTERM), 0);
    for (int i = 0; i < N; i++)
        if (conns[i])
            gets_shutdown_error(conns[i]);
    int st = harness_proxy_wait_exit(px, 10000);
    if (st != 0) {
        fprintf(stderr, "pgwarden exit status %d\n", st);
        harness_proxy_dump_log(px, 40);
    }
    CU_ASSERT_EQUAL(st, 0);
    close_all(conns, N);
    harness_proxy_free(px);
}

/* A reply larger than a socket buffer: the length of repeat('x', BIG_REPLY), -1 on error. */
#define BIG_REPLY 3000000
static int big_reply_length(PGconn *c)
{
    PGresult *r = PQexec(c, "SELECT repeat('x', 3000000)");
    int len = PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetlength(r, 0, 0) : -1;
    if (len < 0)
        fprintf(stderr, "big reply failed: %s", PQerrorMessage(c));
    PQclear(r);
    return len;
}

/* TLS clients park too: the bufferevent goes, the TLS connection (OpenSSL's ~14 kB) stays
 * and is wrapped in a new bufferevent when the client sends something.  pgwarden_clients_parked
 * says they parked (RSS alone would not tell: parking saves ~1 kB of ~16 kB).  Transaction
 * pooling: each runs a query, parks again, and a parked one gets the shutdown's FATAL.
 * Session pooling: the last ones, which waited parked, get the servers. */
static void run_tls(const char *mode)
{
    CU_ASSERT_TRUE_FATAL(itu_raise_nofile(2 * NTLS + 200));
    bool txn = !strcmp(mode, "transaction");
    struct harness_proxy *px = start(mode, true);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *conns[NTLS] = {0};
    char what[64];
    snprintf(what, sizeof(what), "TLS, %s pooling", mode);
    measure(px, what, conns, NTLS, true, MAX_TLS_BYTES_PER_CLIENT);
    /* session pooling: the first POOL hold the servers (not idle) */
    double parked = metric_value(px->admin_port, "pgwarden_clients_parked");
    printf("%.0f parked ", parked);
    CU_ASSERT_EQUAL(parked, txn ? NTLS : NTLS - POOL);
    int ok = 0;
    if (txn) {
        for (int i = 0; i < NTLS; i++) {
            ok += conns[i] && answers(conns[i]);
            if (i % 100 == 99)
                itu_sleep_ms(300);
        }
        CU_ASSERT_EQUAL(ok, NTLS);
        itu_sleep_ms(600); /* idle again: parked again */
        CU_ASSERT_EQUAL(metric_value(px->admin_port, "pgwarden_clients_parked"), NTLS);
        /* Parked TLS clients get large replies through their new bufferevent (more than
         * the socket takes at once: the rest waits in it), and vanish without a word while
         * parked (their sockets shut down, no Terminate): each is noticed and closed. */
        for (int i = 1; i <= 3; i++)
            CU_ASSERT_EQUAL(conns[i] ? big_reply_length(conns[i]) : -1, BIG_REPLY);
        for (int i = 10; i < 20; i++) {
            if (conns[i])
                shutdown(PQsocket(conns[i]), SHUT_RDWR);
        }
        itu_sleep_ms(600);
        CU_ASSERT_EQUAL(metric_value(px->admin_port, "pgwarden_clients_parked"), NTLS - 10);
        CU_ASSERT(conns[4] && answers(conns[4]));
        if (conns[0])
            shutdown_reaches(px, conns[0]);
        close_all(conns, NTLS);
        CU_ASSERT(harness_proxy_wait_exit(px, 10000) == 0);
        harness_proxy_free(px);
        return;
    }
    close_all(conns, NTLS - POOL);
    for (int i = NTLS - POOL; i < NTLS; i++)
        ok += conns[i] && answers(conns[i]);
    CU_ASSERT_EQUAL(ok, POOL);
    close_all(conns, NTLS);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

static void test_tls_transaction(void)
{
    run_tls("transaction");
}

static void test_tls_session(void)
{
    run_tls("session");
}

static void register_suites(void)
{
    static CU_TestInfo tests[] = {
        {"transaction_idle_clients", test_transaction},
        {"session_idle_clients", test_session},
        {"tls_transaction_idle_clients", test_tls_transaction},
        {"tls_session_idle_clients", test_tls_session},
        {"shutdown_reaches_waiting_clients", test_shutdown_with_waiters},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("idle", suite_init, NULL, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
