/*
 * itest_util.h: small helpers shared by the integration-test programs that drive pgwarden
 * (clock, rlimit, one-value queries, the watchdog that stops a stuck test program).
 * Header-only (static functions) because every test_*.c is its own program; the harness
 * itself is harness.h.
 */
#ifndef PGW_TESTS_INTEGRATION_ITEST_UTIL_H
#define PGW_TESTS_INTEGRATION_ITEST_UTIL_H

#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "harness.h"

/* Monotonic milliseconds. */
static inline int64_t itu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void itu_sleep_ms(int ms)
{
    poll(NULL, 0, ms);
}

/* Raises the soft limit on open files to want (or as far as the hard limit allows); true
 * when the limit is at least want. */
static inline bool itu_raise_nofile(rlim_t want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return false;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            perror("setrlimit");
    }
    return rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want;
}

/* Suite init: 0 when the cluster runs and the pgwarden binary exists. */
static inline int itu_suite_init(void)
{
    if (!harness_cluster())
        return 1;
    if (!harness_have_pgwarden()) {
        fprintf(stderr, "pgwarden binary not built (%s)\n", harness_pgwarden_path());
        return 1;
    }
    return 0;
}

/*
 * Runs sql and returns the first column of the first row in a static buffer ("" on error
 * or no row; the error is printed).  Two calls in one expression share the buffer: copy.
 */
static inline const char *itu_value(PGconn *conn, const char *sql)
{
    static char value[1024];
    value[0] = '\0';
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0)
        snprintf(value, sizeof(value), "%s", PQgetvalue(res, 0, 0));
    else
        fprintf(stderr, "query \"%s\" failed: %s", sql, PQerrorMessage(conn));
    PQclear(res);
    return value;
}

/* itu_value() copied into dst (cap bytes, cut if longer). */
static inline void itu_value_copy(char *dst, size_t cap, PGconn *conn, const char *sql)
{
    const char *v = itu_value(conn, sql);
    size_t n = strlen(v);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, v, n);
    dst[n] = '\0';
}

/* Runs sql; true when it returned COMMAND_OK or TUPLES_OK (the error is printed). */
static inline bool itu_exec_ok(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        fprintf(stderr, "query \"%s\" failed: %s", sql, PQerrorMessage(conn));
    PQclear(res);
    return ok;
}

/* Runs sql expecting an error; returns its SQLSTATE in a static buffer ("" if none). */
static inline const char *itu_exec_sqlstate(PGconn *conn, const char *sql)
{
    static char state[8];
    state[0] = '\0';
    PGresult *res = PQexec(conn, sql);
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (s)
        snprintf(state, sizeof(state), "%s", s);
    PQclear(res);
    return state;
}

/* Connects through px and checks the connection is usable with SELECT 1. */
static inline bool itu_proxy_serves(const struct harness_proxy *px, const char *extra)
{
    PGconn *c = harness_connect(px, extra);
    bool ok = c && PQstatus(c) == CONNECTION_OK && strcmp(itu_value(c, "SELECT 1"), "1") == 0;
    if (c && PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "connect through pgwarden failed: %s", PQerrorMessage(c));
    PQfinish(c);
    return ok;
}

/* True when PQerrorMessage(conn) contains needle (printed when it does not). */
static inline bool itu_error_contains(PGconn *conn, const char *needle)
{
    const char *msg = PQerrorMessage(conn);
    if (msg && strstr(msg, needle))
        return true;
    fprintf(stderr, "expected \"%s\" in error: %s\n", needle, msg ? msg : "(null)");
    return false;
}

/* Stops px (SIGTERM, bounded wait), prints the end of its log when it did not exit 0, and
 * frees it.  Returns the exit status (0 for a clean shutdown). */
static inline int itu_proxy_stop_free(struct harness_proxy *px)
{
    int rc = harness_proxy_stop(px, 0);
    if (rc != 0)
        harness_proxy_dump_log(px, 40);
    harness_proxy_free(px);
    return rc;
}

/* The first result of c's pending query (the others are consumed and freed); NULL (printed)
 * when none is complete within timeout_ms. */
static inline PGresult *itu_wait_result(PGconn *c, int timeout_ms)
{
    int64_t deadline = itu_now_ms() + timeout_ms;
    PGresult *first = NULL;
    for (;;) {
        while (PQisBusy(c)) {
            int64_t left = deadline - itu_now_ms();
            struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
            if (left <= 0 || poll(&pfd, 1, (int)left) < 0 || !PQconsumeInput(c)) {
                fprintf(stderr, "no result within %d ms: %s", timeout_ms, PQerrorMessage(c));
                PQclear(first);
                return NULL;
            }
        }
        PGresult *r = PQgetResult(c);
        if (!r)
            return first;
        if (!first)
            first = r;
        else
            PQclear(r);
    }
}

/* The SQLSTATE of r; "" for none. */
static inline const char *itu_sqlstate(const PGresult *r)
{
    const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

/* Sends a CancelRequest with c's key; true when it went out (else printed). */
static inline bool itu_send_cancel(PGconn *c)
{
    PGcancel *cn = PQgetCancel(c);
    char err[256] = "";
    bool ok = cn && PQcancel(cn, err, sizeof(err)) == 1;
    if (!ok)
        fprintf(stderr, "cancel failed: %s\n", err);
    PQfreeCancel(cn);
    return ok;
}

/* ---- the watchdog: a test that runs past its alarm() stops the program ----------------- */

static const char *itu_watchdog_suite;
static struct harness_proxy *const *itu_watchdog_px;
static int itu_watchdog_npx, itu_watchdog_lines;

static void itu_on_watchdog(int sig)
{
    (void)sig;
    static const char head[] = "\n", tail[] = ": a test ran too long: stopping\n";
    ssize_t w = write(STDERR_FILENO, head, sizeof(head) - 1);
    w = write(STDERR_FILENO, itu_watchdog_suite, strlen(itu_watchdog_suite));
    w = write(STDERR_FILENO, tail, sizeof(tail) - 1);
    (void)w;
    /* Not async-signal-safe, but the test is stuck (in libpq, mostly), and this is the end. */
    for (int i = 0; i < itu_watchdog_npx; i++)
        if (itu_watchdog_px[i])
            harness_proxy_dump_log(itu_watchdog_px[i], itu_watchdog_lines);
    _exit(3);
}

/* On SIGALRM (each test arms alarm()), prints that suite ran too long and the last lines
 * of the logs of the proxies px[0..npx) that are running then, and exits 3. */
static inline void itu_watchdog(const char *suite, struct harness_proxy *const *px, int npx,
                                int lines)
{
    itu_watchdog_suite = suite;
    itu_watchdog_px = px;
    itu_watchdog_npx = npx;
    itu_watchdog_lines = lines;
    struct sigaction sa = {.sa_handler = itu_on_watchdog};
    sigaction(SIGALRM, &sa, NULL);
}

/* r (freed here) as a short text: its first value ("NULL" for a null), else its command
 * tag, else "!SQLSTATE".  Static buffer: two calls in one expression share it. */
static inline const char *itu_result_text(PGresult *r)
{
    static char buf[512];
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0)
        snprintf(buf, sizeof(buf), "%s", PQgetisnull(r, 0, 0) ? "NULL" : PQgetvalue(r, 0, 0));
    else if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        snprintf(buf, sizeof(buf), "%s", PQcmdStatus(r));
    else
        snprintf(buf, sizeof(buf), "!%s", itu_sqlstate(r));
    PQclear(r);
    return buf;
}

/* sql's result as itu_result_text prints it. */
static inline const char *itu_q(PGconn *c, const char *sql)
{
    return itu_result_text(PQexec(c, sql));
}

/* The same through the extended protocol's unnamed statement (PQexecParams, no parameters:
 * how drivers with parameters send everything). */
static inline const char *itu_qx(PGconn *c, const char *sql)
{
    return itu_result_text(PQexecParams(c, sql, 0, NULL, NULL, NULL, NULL, 0));
}

/* Waits up to timeout_ms for a notification on c; returned owned (PQfreemem) or NULL. */
static inline PGnotify *itu_wait_notify(PGconn *c, int timeout_ms)
{
    int64_t deadline = itu_now_ms() + timeout_ms;
    for (;;) {
        if (!PQconsumeInput(c))
            return NULL;
        PGnotify *n = PQnotifies(c);
        if (n)
            return n;
        int64_t left = deadline - itu_now_ms();
        if (left <= 0)
            return NULL;
        struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
        if (poll(&pfd, 1, (int)left) < 0)
            return NULL;
    }
}

/* itu_q's value as a number (a fencing token, a count); 0, printed, when it is not one. */
static inline long long itu_tok(PGconn *c, const char *sql)
{
    const char *v = itu_q(c, sql);
    char *end;
    long long t = strtoll(v, &end, 10);
    if (*end || end == v) {
        fprintf(stderr, "%s -> %s\n", sql, v);
        return 0;
    }
    return t;
}

/* The next result in pipeline mode (a query's NULL end marker skipped), printed: the
 * command tag, "!SQLSTATE", "PIPELINE_SYNC", "PIPELINE_ABORTED", "ROWS n", or "!timeout". */
static inline const char *itu_pipeline_next(PGconn *c, int timeout_ms)
{
    static char buf[64];
    int64_t deadline = itu_now_ms() + timeout_ms;
    for (int nulls = 0; nulls < 2; nulls++) {
        while (PQisBusy(c)) {
            int64_t left = deadline - itu_now_ms();
            struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
            if (left <= 0 || poll(&pfd, 1, (int)left) < 0 || !PQconsumeInput(c))
                return "!timeout";
        }
        PGresult *r = PQgetResult(c);
        if (!r)
            continue; /* the end of the previous query's results */
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC)
            snprintf(buf, sizeof(buf), "PIPELINE_SYNC");
        else if (st == PGRES_PIPELINE_ABORTED)
            snprintf(buf, sizeof(buf), "PIPELINE_ABORTED");
        else if (st == PGRES_FATAL_ERROR)
            snprintf(buf, sizeof(buf), "!%s", itu_sqlstate(r));
        else if (st == PGRES_TUPLES_OK)
            snprintf(buf, sizeof(buf), "ROWS %d", PQntuples(r));
        else
            snprintf(buf, sizeof(buf), "%s", PQcmdStatus(r));
        PQclear(r);
        return buf;
    }
    return "!none";
}

#endif
