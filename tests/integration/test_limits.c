/*
 * test_limits.c: pgwarden under load and hostile input: 100 clients on a pool of 10 all
 * served (session and transaction mode), max_client_conn
 * (53300), a client vanishing in the middle of a message, an oversized message (08P01 and
 * disconnect), a message length below 4 ("invalid message length"), 100 startup parameters,
 * garbage startup packets, client bytes that would forge log lines, and
 * pgbench -S with no failed transaction.  After each
 * fault the process must be alive and other clients served.
 */
#include <poll.h>
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
#include "itest_wire.h"

#define NCLIENTS 100
#define POOL     10

static int suite_init(void)
{
    return itu_suite_init();
}

static void stop(struct harness_proxy *px)
{
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* ---- 100 clients on a pool of 10 --------------------------------------------------- */

enum cl_phase { CL_CONNECTING, CL_QUERYING, CL_DONE, CL_FAILED };

struct cl {
    PGconn *conn;
    enum cl_phase phase;
    PostgresPollingStatusType want; /* while connecting */
    int pid;                        /* backend pid the query returned */
};

/* Advances one client after its socket was ready (or at start). */
static void cl_step(struct cl *k, bool session_mode)
{
    if (k->phase == CL_CONNECTING) {
        k->want = PQconnectPoll(k->conn);
        if (k->want == PGRES_POLLING_FAILED) {
            fprintf(stderr, "client connect failed: %s", PQerrorMessage(k->conn));
            k->phase = CL_FAILED;
        } else if (k->want == PGRES_POLLING_OK) {
            if (PQsendQuery(k->conn, "SELECT pg_backend_pid(), 6 * 7") != 1) {
                fprintf(stderr, "send failed: %s", PQerrorMessage(k->conn));
                k->phase = CL_FAILED;
            } else
                k->phase = CL_QUERYING;
        }
        return;
    }
    if (k->phase != CL_QUERYING)
        return;
    if (!PQconsumeInput(k->conn)) {
        fprintf(stderr, "client read failed: %s", PQerrorMessage(k->conn));
        k->phase = CL_FAILED;
        return;
    }
    if (PQisBusy(k->conn))
        return;
    PGresult *r;
    bool ok = false;
    while ((r = PQgetResult(k->conn)) != NULL) {
        if (PQresultStatus(r) == PGRES_TUPLES_OK && strcmp(PQgetvalue(r, 0, 1), "42") == 0) {
            ok = true;
            k->pid = atoi(PQgetvalue(r, 0, 0));
        } else
            fprintf(stderr, "client query failed: %s", PQresultErrorMessage(r));
        PQclear(r);
    }
    k->phase = ok ? CL_DONE : CL_FAILED;
    /* Session mode: the server is released only when the client leaves. */
    if (session_mode) {
        PQfinish(k->conn);
        k->conn = NULL;
    }
}

static void check_many_clients(const char *mode)
{
    bool session = strcmp(mode, "session") == 0;
    struct harness_proxy_opts o = {.pool_mode = mode,
                                   .pool_size = POOL,
                                   .auth_type = "scram-sha-256",
                                   .max_client_conn = 2 * NCLIENTS,
                                   .query_wait_timeout_ms = 60000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    static struct cl cls[NCLIENTS];
    memset(cls, 0, sizeof(cls));
    const char *ci = harness_proxy_conninfo(px, "sslmode=disable");
    for (int i = 0; i < NCLIENTS; i++) {
        cls[i].conn = PQconnectStart(ci);
        cls[i].phase =
            cls[i].conn && PQstatus(cls[i].conn) != CONNECTION_BAD ? CL_CONNECTING : CL_FAILED;
        cls[i].want = PGRES_POLLING_WRITING;
    }
    int64_t deadline = itu_now_ms() + 60000;
    struct pollfd pfds[NCLIENTS];
    int map[NCLIENTS];
    for (;;) {
        int n = 0;
        for (int i = 0; i < NCLIENTS; i++) {
            struct cl *k = &cls[i];
            if (k->phase != CL_CONNECTING && k->phase != CL_QUERYING)
                continue;
            short ev = POLLIN;
            if (k->phase == CL_CONNECTING && k->want == PGRES_POLLING_WRITING)
                ev = POLLOUT;
            pfds[n] = (struct pollfd){.fd = PQsocket(k->conn), .events = ev};
            map[n++] = i;
        }
        int64_t left = deadline - itu_now_ms();
        if (n == 0 || left <= 0)
            break;
        if (poll(pfds, (nfds_t)n, (int)(left < 1000 ? left : 1000)) < 0)
            break;
        for (int j = 0; j < n; j++)
            if (pfds[j].revents)
                cl_step(&cls[map[j]], session);
    }
    int done = 0, failed = 0, unfinished = 0, distinct = 0;
    int pids[NCLIENTS];
    for (int i = 0; i < NCLIENTS; i++) {
        done += cls[i].phase == CL_DONE;
        failed += cls[i].phase == CL_FAILED;
        unfinished += cls[i].phase == CL_CONNECTING || cls[i].phase == CL_QUERYING;
        bool seen = false;
        for (int j = 0; j < distinct && cls[i].phase == CL_DONE; j++)
            seen = seen || pids[j] == cls[i].pid;
        if (cls[i].phase == CL_DONE && !seen)
            pids[distinct++] = cls[i].pid;
        PQfinish(cls[i].conn);
        cls[i].conn = NULL;
    }
    printf("\n    %s: %d served, %d failed, %d unfinished, %d backends ", mode, done, failed,
           unfinished, distinct);
    CU_ASSERT_EQUAL(done, NCLIENTS);
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT(distinct >= 1 && distinct <= POOL);
    if (done != NCLIENTS)
        harness_proxy_dump_log(px, 40);
    stop(px);
}

static void test_100_clients_session(void)
{
    check_many_clients("session");
}

static void test_100_clients_transaction(void)
{
    check_many_clients("transaction");
}

/* ---- max_client_conn --------------------------------------------------------------- */

static void test_max_client_conn(void)
{
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 4,
                                   .auth_type = "scram-sha-256",
                                   .max_client_conn = 3,
                                   .query_wait_timeout_ms = 10000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = harness_connect(px, "sslmode=disable");
        CU_ASSERT_EQUAL(PQstatus(c[i]), CONNECTION_OK);
    }
    PGconn *extra = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL(PQstatus(extra), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(extra), "53300");
    CU_ASSERT_TRUE(itu_error_contains(extra, "too many clients"));
    PQfinish(extra);

    /* The ones inside are unaffected. */
    for (int i = 0; i < 3; i++)
        CU_ASSERT_STRING_EQUAL(itu_value(c[i], "SELECT 1"), "1");

    /* One leaves: soon there is room again (bounded retry while pgwarden notices). */
    PQfinish(c[0]);
    bool served = false;
    for (int i = 0; i < 50 && !served; i++) {
        PGconn *n = harness_connect(px, "sslmode=disable");
        served = PQstatus(n) == CONNECTION_OK && strcmp(itu_value(n, "SELECT 5"), "5") == 0;
        PQfinish(n);
        if (!served)
            poll(NULL, 0, 50);
    }
    CU_ASSERT_TRUE(served);
    PQfinish(c[1]);
    PQfinish(c[2]);
    stop(px);
}

/* ---- a client vanishing mid-message ------------------------------------------------ */

static void test_client_vanishes_mid_message(void)
{
    /* Pool of 1: the vanished client's server must come back (or be replaced). */
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 1,
                                   .auth_type = "scram-sha-256",
                                   .client_login_timeout_ms = 2000,
                                   .query_wait_timeout_ms = 15000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);

    for (int round = 0; round < 3; round++) {
        PGconn *c = harness_connect(px, "sslmode=disable");
        CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
        CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
        /* Query message announcing 100 bytes of body; only "SELE" follows. */
        static const unsigned char half[] = {'Q', 0, 0, 0, 104, 'S', 'E', 'L', 'E'};
        int fd = PQsocket(c);
        CU_ASSERT_EQUAL(harness_raw_send(fd, half, sizeof(half), 2000), 0);
        /* Gone without a Terminate: the socket is shut before PQfinish writes one. */
        shutdown(fd, SHUT_RDWR);
        PQfinish(c);
        CU_ASSERT_TRUE(harness_proxy_alive(px));
    }

    /* Half a startup packet, then gone. */
    int fd = harness_raw_connect(px->port, 2000);
    CU_ASSERT_FATAL(fd >= 0);
    uint8_t buf[512];
    size_t n = harness_build_startup(buf, sizeof(buf), "pgwarden_test", "pgwarden_test");
    CU_ASSERT_EQUAL(harness_raw_send(fd, buf, n / 2, 2000), 0);
    close(fd);

    CU_ASSERT_TRUE(harness_proxy_alive(px));
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    stop(px);
}

/* ---- a server that cannot be reached ---------------------------------------------- */

/*
 * A database whose server's Unix socket does not exist: connect() fails at once, inside
 * the launch.  Each client gets 08001 (not a hang), pgwarden keeps serving the other
 * database and stops on SIGTERM.  (It used to relaunch for the already failed client in
 * a loop that never returned to the event loop.)
 */
static void test_unreachable_server(void)
{
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 2,
                                   .auth_type = "scram-sha-256",
                                   .query_wait_timeout_ms = 5000,
                                   .databases_extra =
                                       "nowhere = host=/nonexistent/pgwarden-itest port=5432 "
                                       "dbname=pgwarden_test"};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    for (int round = 0; round < 3; round++) {
        PGconn *c = harness_connect(px, "sslmode=disable dbname=nowhere");
        CU_ASSERT_NOT_EQUAL(PQstatus(c), CONNECTION_OK);
        CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "08001");
        PQfinish(c);
        CU_ASSERT_TRUE(harness_proxy_alive(px));
    }
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    stop(px);
}

/* ---- big messages ------------------------------------------------------------------ */

/*
 * max_message_bytes bounds the messages pgwarden must hold whole (a Parse: transaction mode
 * keeps its text); a Query or a Bind of any size streams through, as PostgreSQL takes them
 * up to 1 GB.
 */
static void test_oversized_message(void)
{
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 4,
                                   .auth_type = "scram-sha-256",
                                   .max_message_bytes = 8192,
                                   .query_wait_timeout_ms = 10000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *other = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(other), CONNECTION_OK);
    CU_ASSERT_TRUE(itu_exec_ok(other, "BEGIN"));

    static char sql[20100];
    PGconn *c = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    /* A query longer than max_message_bytes streams: served. */
    int len = snprintf(sql, sizeof(sql), "SELECT length('");
    memset(sql + len, 'b', 20000);
    snprintf(sql + len + 20000, sizeof(sql) - (size_t)len - 20000, "')");
    CU_ASSERT_STRING_EQUAL(itu_value(c, sql), "20000");
    /* So does a Bind with a long parameter. */
    const char *param[1] = {sql + len};
    PGresult *r = PQexecParams(c, "SELECT length($1)", 1, NULL, param, NULL, NULL, 0);
    CU_ASSERT_STRING_EQUAL(PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : "?",
                           "20002");
    PQclear(r);

    /* A Parse over the limit: ErrorResponse 08P01, then the connection is closed.  pgwarden
     * hangs up right after the error, so libpq may report it as a lost connection whose
     * result has no fields: the verbose message keeps the SQLSTATE. */
    PQsetErrorVerbosity(c, PQERRORS_VERBOSE);
    r = PQprepare(c, "big", sql, 0, NULL);
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_FATAL_ERROR);
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    CU_ASSERT_STRING_EQUAL(st ? st : harness_conn_sqlstate(c), "08P01");
    CU_ASSERT_TRUE(itu_error_contains(c, "max_message_bytes"));
    PQclear(r);
    r = PQexec(c, "SELECT 1");
    CU_ASSERT_NOT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    PQfinish(c);

    /* The other client carries on, inside its transaction. */
    CU_ASSERT_STRING_EQUAL(itu_value(other, "SELECT 'carry on'"), "carry on");
    CU_ASSERT_TRUE(itu_exec_ok(other, "COMMIT"));
    PQfinish(other);
    CU_ASSERT_TRUE(harness_proxy_alive(px));
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    stop(px);
}

/*
 * A 16 MiB query, a 16 MiB Bind parameter and a 16 MiB COPY row through both pool modes
 * with the default configuration (psycopg2 inserting a big bytea sends such a query), with
 * pgwarden's memory staying far below the message size (nothing is held whole).
 *
 * Both the peak RSS while they pass and the RSS afterwards are bounded: a message held
 * whole and freed afterwards may leave no trace in the RSS afterwards (glibc gives a
 * 16 MiB block back to the system at once), only in the peak.  In the sanitizer build the
 * child runs with a 1 MB ASan quarantine: with the default 256 MB, every freed evbuffer
 * chain stays resident and the RSS grows with the bytes relayed (47 MiB per 16 MiB message
 * with retry on, whose recorder mirrors the client's input through an evbuffer; 24 MiB with
 * retry off) although live memory peaks at about 3 MiB, as with quarantine_size_mb=0.
 */
static void test_16mib_messages(void)
{
    static const char *const modes[] = {"session", "transaction"};
    const size_t n = 16u << 20;
    char *big = malloc(n + 64);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    for (int m = 0; m < 2; m++) {
        struct harness_proxy_opts o = {.pool_mode = modes[m],
                                       .pool_size = 2,
                                       .auth_type = "scram-sha-256",
                                       .query_wait_timeout_ms = 30000,
                                       .asan_quarantine_mb = 1};
        struct harness_proxy *px = harness_proxy_start(&o);
        CU_ASSERT_PTR_NOT_NULL_FATAL(px);
        PGconn *c = harness_connect(px, "sslmode=disable");
        CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
        long rss0 = harness_proxy_rss_kb(px);
        /* the peak since now; when the kernel refuses, the peak since pgwarden started */
        long base = harness_proxy_reset_peak(px) == 0 ? rss0 : harness_proxy_peak_kb(px);
        int len = snprintf(big, 64, "SELECT length('");
        memset(big + len, 'q', n);
        snprintf(big + len + n, 64, "')");
        CU_ASSERT_STRING_EQUAL(itu_value(c, big), "16777216");
        const char *param[1] = {big + len};
        big[len + n] = '\0';
        PGresult *r = PQexecParams(c, "SELECT length($1)", 1, NULL, param, NULL, NULL, 0);
        CU_ASSERT_STRING_EQUAL(PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : "?",
                               "16777216");
        PQclear(r);
        CU_ASSERT_TRUE(itu_exec_ok(c, "DROP TABLE IF EXISTS big_copy"));
        CU_ASSERT_TRUE(itu_exec_ok(c, "CREATE TABLE big_copy(t text)"));
        r = PQexec(c, "COPY big_copy FROM STDIN");
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COPY_IN);
        PQclear(r);
        big[len + n] = '\n';
        CU_ASSERT_EQUAL(PQputCopyData(c, big + len, (int)n + 1), 1);
        CU_ASSERT_EQUAL(PQputCopyEnd(c, NULL), 1);
        r = PQgetResult(c);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
        PQclear(r);
        PQclear(PQgetResult(c));
        CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT length(t) FROM big_copy"), "16777216");
        CU_ASSERT_TRUE(itu_exec_ok(c, "DROP TABLE big_copy"));
        long rss1 = harness_proxy_rss_kb(px);
        long peak = harness_proxy_peak_kb(px);
        printf("\n    %s mode: pgwarden grew %ld KiB (peak %+ld KiB) for 3 x 16 MiB ", modes[m],
               rss1 - rss0, peak - base);
        CU_ASSERT(rss0 > 0 && base > 0 && rss1 > 0 && peak > 0);
        CU_ASSERT(rss1 - rss0 < 8 * 1024);
        CU_ASSERT(peak - base < 8 * 1024);
        PQfinish(c);
        stop(px);
    }
    free(big);
}

/* ---- a message length below 4 ------------------------------------------------------ */

/* Sends a Query header whose length (3) cannot even hold itself on c's socket: the answer is
 * PostgreSQL's "invalid message length", not a complaint about max_message_bytes. */
static void check_length_below_4(PGconn *c, const char *where)
{
    static const uint8_t bad[] = {'Q', 0, 0, 0, 3};
    uint8_t reply[2048];
    int fd = PQsocket(c);
    CU_ASSERT_EQUAL_FATAL(harness_raw_send(fd, bad, sizeof(bad), 2000), 0);
    ssize_t n = itw_recv_until(fd, reply, sizeof(reply), "E", 5000);
    char state[8], msg[256];
    itw_error_field(reply, n > 0 ? (size_t)n : 0, 'C', state, sizeof(state));
    itw_error_field(reply, n > 0 ? (size_t)n : 0, 'M', msg, sizeof(msg));
    if (strcmp(msg, "invalid message length") != 0)
        fprintf(stderr, "%s: got %s \"%s\"\n", where, state, msg);
    CU_ASSERT_STRING_EQUAL(state, "08P01");
    CU_ASSERT_STRING_EQUAL(msg, "invalid message length");
}

static void test_message_length_below_4(void)
{
    static const char *const modes[] = {"session", "transaction"};
    for (int m = 0; m < 2; m++) {
        struct harness_proxy_opts o = {.pool_mode = modes[m],
                                       .pool_size = 2,
                                       .auth_type = "scram-sha-256",
                                       .query_wait_timeout_ms = 10000};
        struct harness_proxy *px = harness_proxy_start(&o);
        CU_ASSERT_PTR_NOT_NULL_FATAL(px);
        PGconn *c = harness_connect(px, "sslmode=disable");
        CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
        CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
        check_length_below_4(c, modes[m]); /* linked (session) or idle (transaction) */
        PQfinish(c);
        if (m == 1) { /* transaction mode, inside a transaction block: linked */
            c = harness_connect(px, "sslmode=disable");
            CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
            CU_ASSERT_TRUE(itu_exec_ok(c, "BEGIN"));
            CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 2"), "2");
            check_length_below_4(c, "transaction block");
            PQfinish(c);
        }
        CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
        stop(px);
    }
}

/* ---- many startup parameters ------------------------------------------------------- */

/*
 * PostgreSQL takes any number of startup parameters up to its 10000-byte packet limit; 100
 * custom settings must reach the server (SHOW reports the last one).  A protocol option
 * among them is named in NegotiateProtocolVersion and not sent on.
 */
static void test_many_startup_params(void)
{
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 2,
                                   .auth_type = "trust",
                                   .query_wait_timeout_ms = 10000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    static uint8_t pkt[10000], reply[16384];
    size_t off = 8;
    off += (size_t)sprintf((char *)pkt + off, "user") + 1;
    off += (size_t)sprintf((char *)pkt + off, "pgwarden_test") + 1;
    off += (size_t)sprintf((char *)pkt + off, "database") + 1;
    off += (size_t)sprintf((char *)pkt + off, "pgwarden_test") + 1;
    for (int i = 0; i < 100; i++) {
        off += (size_t)sprintf((char *)pkt + off, "pgw.p%d", i) + 1;
        off += (size_t)sprintf((char *)pkt + off, "v%d", i) + 1;
    }
    off += (size_t)sprintf((char *)pkt + off, "_pq_.pgw_unknown") + 1; /* a protocol option */
    off += (size_t)sprintf((char *)pkt + off, "1") + 1;
    pkt[off++] = 0;
    itw_put32(pkt, (uint32_t)off);
    itw_put32(pkt + 4, 196608);
    int fd = harness_raw_connect(px->port, 2000);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(harness_raw_send(fd, pkt, off, 2000), 0);
    ssize_t n = itw_recv_until(fd, reply, sizeof(reply), "ZE", 10000);
    char msg[256];
    itw_error_field(reply, n > 0 ? (size_t)n : 0, 'M', msg, sizeof(msg));
    if (msg[0])
        fprintf(stderr, "startup refused: %s\n", msg);
    size_t blen = 0;
    CU_ASSERT_PTR_NOT_NULL(itw_find(reply, n > 0 ? (size_t)n : 0, 'Z', &blen));
    /* NegotiateProtocolVersion: minor 0, one unrecognised option, named */
    const uint8_t *v = itw_find(reply, n > 0 ? (size_t)n : 0, 'v', &blen);
    CU_ASSERT(v != NULL && blen == 8 + 17 && itw_get32(v + 4) == 1 &&
              memcmp(v + 8, "_pq_.pgw_unknown", 17) == 0);
    size_t qlen = 0;
    CU_ASSERT_FATAL(itw_msg(pkt, sizeof(pkt), &qlen, 'Q', "SHOW pgw.p99", 13));
    CU_ASSERT_EQUAL(harness_raw_send(fd, pkt, qlen, 2000), 0);
    n = itw_recv_until(fd, reply, sizeof(reply), "ZE", 10000);
    const uint8_t *row = itw_find(reply, n > 0 ? (size_t)n : 0, 'D', &blen);
    /* DataRow: int16 columns, int32 length, value */
    CU_ASSERT_FATAL(row != NULL && blen == 2 + 4 + 3);
    CU_ASSERT_EQUAL(memcmp(row + 6, "v99", 3), 0);
    close(fd);
    stop(px);
}

/* ---- garbage startup packets ------------------------------------------------------- */

struct garbage {
    const char *name;
    uint8_t bytes[64];
    size_t len;
};

static void test_garbage_startup(void)
{
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 2,
                                   .auth_type = "scram-sha-256",
                                   .client_tls_mode = "allow",
                                   .client_login_timeout_ms = 2000,
                                   .query_wait_timeout_ms = 10000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    static const struct garbage cases[] = {
        {"http request", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27},
        {"length 4", {0, 0, 0, 4}, 4},
        {"length 0", {0, 0, 0, 0, 0, 3, 0, 0}, 8},
        {"length 2^31-1", {0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0}, 8},
        {"negative length", {0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0}, 8},
        {"protocol 9.0", {0, 0, 0, 17, 0, 9, 0, 0, 'u', 's', 'e', 'r', 0, 'x', 0, 0, 0}, 17},
        {"unterminated params",
         {0, 0, 0, 16, 0, 3, 0, 0, 'u', 's', 'e', 'r', 'x', 'y', 'z', 'w'},
         16},
        {"no user", {0, 0, 0, 9, 0, 3, 0, 0, 0}, 9},
        {"bad cancel", {0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2e, 1, 2, 3, 4}, 12},
        {"ssl then junk", {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f, 0x16, 0x03, 0x01, 0, 1, 0}, 14},
    };
    uint8_t reply[4096];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int fd = harness_raw_connect(px->port, 2000);
        CU_ASSERT_FATAL(fd >= 0);
        CU_ASSERT_EQUAL(harness_raw_send(fd, cases[i].bytes, cases[i].len, 2000), 0);
        bool closed = false;
        ssize_t got = harness_raw_recv(fd, reply, sizeof(reply), 5000, &closed);
        char state[6] = "";
        bool err = got > 0 && harness_reply_sqlstate(reply, (size_t)got, state);
        if (!closed)
            fprintf(stderr, "garbage \"%s\": still open after 5 s (%zd bytes back)\n",
                    cases[i].name, got);
        CU_ASSERT_TRUE(closed);
        CU_ASSERT_TRUE(harness_proxy_alive(px));
        close(fd);
        if (err)
            printf("\n    %s: %s ", cases[i].name, state);
    }

    /* 64 KiB of pseudo-random bytes (fixed seed). */
    static uint8_t junk[65536];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof(junk); i++) {
        x = x * 1103515245u + 12345u;
        junk[i] = (uint8_t)(x >> 16);
    }
    int fd = harness_raw_connect(px->port, 2000);
    CU_ASSERT_FATAL(fd >= 0);
    (void)harness_raw_send(fd, junk, sizeof(junk), 2000); /* may be cut short */
    bool closed = false;
    (void)harness_raw_recv(fd, reply, sizeof(reply), 5000, &closed);
    CU_ASSERT_TRUE(closed);
    close(fd);

    CU_ASSERT_TRUE(harness_proxy_alive(px));
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=require"));
    stop(px);
}

/* ---- log injection ----------------------------------------------------------------- */

/*
 * A database name with a newline, sent before any authentication, is logged with the
 * refusal: it must stay one escaped line, never a second line the client wrote.
 */
static void test_log_injection(void)
{
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 2,
                                   .auth_type = "scram-sha-256",
                                   .query_wait_timeout_ms = 10000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    uint8_t buf[512], reply[1024];
    size_t n = harness_build_startup(buf, sizeof(buf), "pgwarden_test",
                                     "nodb\n2030-01-01 00:00:00.000 ERROR main: FORGED\x1b[2J");
    int fd = harness_raw_connect(px->port, 2000);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(harness_raw_send(fd, buf, n, 2000), 0);
    bool closed = false;
    ssize_t got = harness_raw_recv(fd, reply, sizeof(reply), 5000, &closed);
    char state[6] = "";
    CU_ASSERT_TRUE(got > 0 && harness_reply_sqlstate(reply, (size_t)got, state));
    CU_ASSERT_STRING_EQUAL(state, "3D000");
    close(fd);
    CU_ASSERT_TRUE(harness_proxy_log_contains(px, "nodb\\n2030-01-01 00:00:00.000 ERROR main: "
                                                  "FORGED\\x1b[2J"));
    CU_ASSERT_FALSE(harness_proxy_log_contains(px, "\n2030-01-01 00:00:00.000 ERROR main: FORGED"));
    CU_ASSERT_FALSE(harness_proxy_log_contains(px, "\x1b"));
    stop(px);
}

/* ---- pgbench ----------------------------------------------------------------------- */

static void test_pgbench_select_only(void)
{
    const struct harness_cluster *cl = harness_cluster();
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 4,
                                   .auth_type = "scram-sha-256",
                                   .query_wait_timeout_ms = 30000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    char pgbench[600];
    snprintf(pgbench, sizeof(pgbench), "%s/pgbench", cl->bindir);
    char direct[1024];
    snprintf(direct, sizeof(direct), "%s", harness_cluster_conninfo("sslmode=disable"));
    const char *init[] = {pgbench, "-i", "-q", "-s", "1", direct, NULL};
    char *out = NULL;
    int rc = harness_run(init, 120000, &out);
    if (rc != 0)
        fprintf(stderr, "pgbench -i exited %d:\n%s\n", rc, out ? out : "");
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    free(out);
    out = NULL;

    char via[1024];
    snprintf(via, sizeof(via), "%s", harness_proxy_conninfo(px, "sslmode=disable"));
    const char *run[] = {pgbench, "-S", "-n", "-T", "3", "-c", "4", "-j", "2", via, NULL};
    rc = harness_run(run, 60000, &out);
    if (rc != 0)
        fprintf(stderr, "pgbench -S exited %d:\n%s\n", rc, out ? out : "");
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "number of failed transactions: 0 "));
    const char *p = strstr(out, "number of transactions actually processed: ");
    long processed = p ? atol(p + strlen("number of transactions actually processed: ")) : 0;
    const char *tps = strstr(out, "tps = ");
    printf("\n    pgbench -S through pgwarden: %ld transactions, %.40s ", processed,
           tps ? tps : "?");
    CU_ASSERT(processed > 0);
    if (!strstr(out, "number of failed transactions: 0 "))
        fprintf(stderr, "%s\n", out);
    free(out);
    CU_ASSERT_TRUE(harness_proxy_alive(px));
    stop(px);
}

/* ---- named statements per client (transaction pooling) ----------------------------- */

/* A client that never closes its named statements is stopped at
 * max_client_prepared_statements with FATAL 53400 (pgwarden keeps each client's names, so
 * without a limit its memory grows with them); re-preparing a name it has, and a client
 * that closes what it prepares, never hit it; others are not affected. */
static void test_client_prepared_limit(void)
{
    struct harness_proxy_opts o = {.pool_mode = "transaction",
                                   .pool_size = 2,
                                   .auth_type = "trust",
                                   .query_wait_timeout_ms = 10000,
                                   .pgwarden_extra = "max_client_prepared_statements = 50"};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *tidy = harness_connect(px, NULL), *leaky = harness_connect(px, NULL);
    CU_ASSERT_EQUAL_FATAL(PQstatus(tidy), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(leaky), CONNECTION_OK);
    char name[32], sql[64];
    for (int i = 0; i < 200; i++) { /* 200 names over time, never more than one at once */
        snprintf(name, sizeof name, "t%d", i);
        snprintf(sql, sizeof sql, "SELECT %d", i);
        PGresult *r = PQprepare(tidy, name, sql, 0, NULL);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
        PQclear(r);
        snprintf(sql, sizeof sql, "DEALLOCATE t%d", i);
        CU_ASSERT_TRUE(itu_exec_ok(tidy, sql));
    }
    for (int i = 0; i < 50; i++) {
        snprintf(name, sizeof name, "s%d", i);
        snprintf(sql, sizeof sql, "SELECT %d", i);
        PGresult *r = PQprepare(leaky, name, sql, 0, NULL);
        CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
        PQclear(r);
    }
    PGresult *r = PQprepare(leaky, "s7", "SELECT 7", 0, NULL); /* a name it has: fine */
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = PQprepare(leaky, "s50", "SELECT 50", 0, NULL); /* one more: refused */
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_FATAL_ERROR);
    PQclear(r);
    /* libpq keeps the FATAL in the connection's message (its result is the lost connection) */
    CU_ASSERT_PTR_NOT_NULL(strstr(PQerrorMessage(leaky), "FATAL:  too many prepared statements"));
    CU_ASSERT_EQUAL(PQstatus(leaky), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(itu_value(tidy, "SELECT 42"), "42");
    PQfinish(tidy);
    PQfinish(leaky);
    CU_ASSERT_TRUE(itu_proxy_serves(px, NULL));
    stop(px);
}

static void register_suites(void)
{
    static const CU_TestInfo tests[] = {
        {"100_clients_pool_10_session", test_100_clients_session},
        {"100_clients_pool_10_transaction", test_100_clients_transaction},
        {"max_client_conn_53300", test_max_client_conn},
        {"client_vanishes_mid_message", test_client_vanishes_mid_message},
        {"unreachable_server_08001", test_unreachable_server},
        {"oversized_parse_08p01_big_query_streams", test_oversized_message},
        {"messages_of_16mib", test_16mib_messages},
        {"message_length_below_4", test_message_length_below_4},
        {"startup_params_beyond_64", test_many_startup_params},
        {"garbage_startup", test_garbage_startup},
        {"log_injection_escaped", test_log_injection},
        {"pgbench_select_only", test_pgbench_select_only},
        {"client_prepared_statements_limit", test_client_prepared_limit},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("limits", suite_init, NULL, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
