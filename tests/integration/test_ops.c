/*
 * test_ops.c: what an operator meets when running pgwarden: --check catching what start
 * would fail on (logfile or pidfile in a missing directory, listen addresses that cannot be
 * resolved or bound, a port another program holds), several listen addresses served at
 * once, the log file reopened on SIGHUP (rotation), running out of file descriptors
 * (pgwarden backs off instead of spinning and flooding its log, and serves again once
 * descriptors are free), and /health answering 503 while PostgreSQL is stopped and 200
 * again once it is back.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_util.h"

static int suite_init(void)
{
    return itu_suite_init();
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* pgwarden -c px's config --check; returns its exit status, output in *out (owned). */
static int run_check(const struct harness_proxy *px, char **out)
{
    const char *argv[] = {harness_pgwarden_path(), "-c", px->config_path, "--check", NULL};
    return harness_run(argv, 30000, out);
}

/* --check must refuse opts, naming what is wrong (needle). */
static void expect_check_refuses(const struct harness_proxy_opts *o, const char *needle)
{
    struct harness_proxy *px = harness_proxy_prepare(o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    char *out = NULL;
    int rc = run_check(px, &out);
    CU_ASSERT_NOT_EQUAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL(out ? strstr(out, needle) : NULL);
    if (rc == 0 || !out || !strstr(out, needle))
        fprintf(stderr, "--check exited %d, expected a refusal naming \"%s\":\n%s\n", rc, needle,
                out ? out : "");
    free(out);
    harness_proxy_free(px);
}

/* ---- --check ------------------------------------------------------------------------- */

static void test_check_logfile_in_missing_directory(void)
{
    struct harness_proxy_opts o = {.pgwarden_extra = "logfile = no-such-dir/pgwarden.log"};
    expect_check_refuses(&o, "logfile");

    /* A logfile that can be opened passes, and --check leaves no file behind. */
    o.pgwarden_extra = "logfile = pgwarden-check.log";
    struct harness_proxy *px = harness_proxy_prepare(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    char *out = NULL;
    int rc = run_check(px, &out);
    if (rc != 0)
        fprintf(stderr, "--check exited %d:\n%s\n", rc, out ? out : "");
    CU_ASSERT_EQUAL(rc, 0);
    free(out);
    char path[700];
    snprintf(path, sizeof(path), "%s/pgwarden-check.log", px->dir);
    CU_ASSERT_NOT_EQUAL(access(path, F_OK), 0);
    harness_proxy_free(px);
}

static void test_check_pidfile_in_missing_directory(void)
{
    struct harness_proxy_opts o = {.pgwarden_extra = "pidfile = no-such-dir/pgwarden.pid"};
    expect_check_refuses(&o, "pidfile");
}

static void test_check_listen_addr_unresolvable(void)
{
    struct harness_proxy_opts o = {.listen_addr = "no-such-host.invalid"};
    expect_check_refuses(&o, "listen_addr");
    o.listen_addr = "127.0.0.1,no-such-host.invalid";
    expect_check_refuses(&o, "no-such-host.invalid");
}

static void test_check_listen_addr_not_local(void)
{
    /* 192.0.2.1 (TEST-NET-1) is no address of this machine: bind fails at start. */
    struct harness_proxy_opts o = {.listen_addr = "192.0.2.1"};
    expect_check_refuses(&o, "192.0.2.1");
}

/* A port another program listens on: --check warns (a running pgwarden holds its own port
 * when --check is used before a reload), and start fails with a clear message. */
static void test_check_port_in_use_warns(void)
{
    struct harness_proxy *px = harness_proxy_prepare(NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    int holder = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)px->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CU_ASSERT_FATAL(holder >= 0 && bind(holder, (struct sockaddr *)&a, sizeof(a)) == 0 &&
                    listen(holder, 4) == 0);
    char *out = NULL;
    int rc = run_check(px, &out);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL(out ? strstr(out, "in use") : NULL);
    if (rc != 0 || !out || !strstr(out, "in use"))
        fprintf(stderr, "--check exited %d:\n%s\n", rc, out ? out : "");
    free(out);

    const char *argv[] = {harness_pgwarden_path(), "-c", px->config_path, NULL};
    rc = harness_run(argv, 30000, &out);
    CU_ASSERT_NOT_EQUAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL(out ? strstr(out, "cannot listen") : NULL);
    free(out);
    close(holder);
    harness_proxy_free(px);
}

/* ---- several listen addresses ------------------------------------------------------- */

/* True when ::1 can be bound here (IPv6 loopback configured). */
static bool have_ipv6_loopback(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static void test_several_listen_addresses(void)
{
    bool v6 = have_ipv6_loopback();
    const char *second = v6 ? "::1" : "127.0.0.2";
    if (!v6)
        printf("\n    no IPv6 loopback here: using 127.0.0.2 as the second address ");
    char addrs[64], host[64];
    snprintf(addrs, sizeof(addrs), "127.0.0.1, %s", second);
    snprintf(host, sizeof(host), "host=%s sslmode=disable", second);
    struct harness_proxy_opts o = {.listen_addr = addrs, .pool_size = 2};
    struct harness_proxy *px = harness_proxy_prepare(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    char *out = NULL;
    int rc = run_check(px, &out);
    if (rc != 0)
        fprintf(stderr, "--check exited %d:\n%s\n", rc, out ? out : "");
    CU_ASSERT_EQUAL(rc, 0);
    free(out);
    CU_ASSERT_EQUAL_FATAL(harness_proxy_launch(px), 0);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    CU_ASSERT_TRUE(itu_proxy_serves(px, host));
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* ---- log rotation -------------------------------------------------------------------- */

/* logrotate's default way: rename the file, then SIGHUP; pgwarden must write to a new file
 * at the old path (docs/operations.md). */
static void test_sighup_reopens_logfile(void)
{
    struct harness_proxy_opts o = {.pgwarden_extra = "logfile = pgwarden-file.log"};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    char path[700], rotated[710];
    snprintf(path, sizeof(path), "%s/pgwarden-file.log", px->dir);
    snprintf(rotated, sizeof(rotated), "%s.1", path);
    CU_ASSERT_TRUE(file_size(path) > 0);
    CU_ASSERT_EQUAL_FATAL(rename(path, rotated), 0);
    long rotated_size = file_size(rotated);
    CU_ASSERT_EQUAL(harness_proxy_signal(px, SIGHUP), 0);
    bool reopened = false;
    for (int64_t end = itu_now_ms() + 5000; !reopened && itu_now_ms() < end;) {
        reopened = file_size(path) > 0;
        if (!reopened)
            itu_sleep_ms(50);
    }
    CU_ASSERT_TRUE(reopened);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    CU_ASSERT_EQUAL(file_size(rotated), rotated_size); /* nothing more went to the old file */
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* ---- out of file descriptors -------------------------------------------------------- */

/* Open descriptors of pid, or -1. */
static int count_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%ld/fd", (long)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* User + system CPU time of pid in seconds, or -1. */
static double cpu_seconds(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    unsigned long long ut = 0, st = 0;
    /* After ")": state, then fields 4..13, then utime (14) and stime (15). */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

#define EXTRA_CONNS 40

static void test_out_of_fds_backs_off(void)
{
    struct harness_proxy_opts o = {.pool_size = 2, .client_login_timeout_ms = 600000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));

    /* Leave pgwarden 8 descriptors beyond those it has open now. */
    int nfd = count_fds(px->pid);
    CU_ASSERT_FATAL(nfd > 0);
    struct rlimit rl;
    CU_ASSERT_EQUAL_FATAL(prlimit(px->pid, RLIMIT_NOFILE, NULL, &rl), 0);
    rl.rlim_cur = (rlim_t)nfd + 8;
    CU_ASSERT_EQUAL_FATAL(prlimit(px->pid, RLIMIT_NOFILE, &rl, NULL), 0);

    /* More connections than it can accept: the rest wait in the listen backlog. */
    int fds[EXTRA_CONNS];
    int opened = 0;
    for (int i = 0; i < EXTRA_CONNS; i++) {
        fds[i] = harness_raw_connect(px->port, 2000);
        if (fds[i] >= 0)
            opened++;
    }
    CU_ASSERT_EQUAL(opened, EXTRA_CONNS);
    itu_sleep_ms(300);

    double cpu0 = cpu_seconds(px->pid);
    long log0 = file_size(px->log_path);
    int64_t t0 = itu_now_ms();
    itu_sleep_ms(2000);
    double cpu1 = cpu_seconds(px->pid);
    long log1 = file_size(px->log_path);
    double elapsed = (double)(itu_now_ms() - t0) / 1000.0;
    double share = (cpu1 - cpu0) / elapsed;
    printf("\n    out of descriptors: %.1f%% of a core, %ld log bytes in %.1f s ", share * 100,
           log1 - log0, elapsed);
    CU_ASSERT(cpu0 >= 0 && cpu1 >= 0);
    CU_ASSERT(share < 0.20);
    CU_ASSERT(log1 - log0 < 2000); /* a few lines at most, not one per failed accept */
    CU_ASSERT_TRUE(harness_proxy_log_contains(px, "accept"));
    CU_ASSERT_TRUE(harness_proxy_alive(px));

    /* Descriptors free again: new clients are served (the back-off ends within ~1 s). */
    for (int i = 0; i < EXTRA_CONNS; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    bool served = false;
    for (int64_t end = itu_now_ms() + 10000; !served && itu_now_ms() < end;) {
        served = itu_proxy_serves(px, "sslmode=disable");
        if (!served)
            itu_sleep_ms(200);
    }
    CU_ASSERT_TRUE(served);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* Out of descriptors for a new server connection: the log says why (it said only "cannot
 * connect to HOST:PORT", a database problem to an operator) and the client gets 08001. */
static void test_out_of_fds_for_server(void)
{
    struct harness_proxy_opts o = {
        .pool_mode = "transaction", .pool_size = 2, .client_login_timeout_ms = 600000};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *a = harness_connect(px, "sslmode=disable"), *b = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(a), CONNECTION_OK);
    CU_ASSERT_EQUAL_FATAL(PQstatus(b), CONNECTION_OK);
    CU_ASSERT_TRUE(itu_exec_ok(a, "BEGIN"));
    CU_ASSERT_STRING_EQUAL(itu_value(a, "SELECT 1"), "1"); /* a holds the one server */
    struct rlimit rl;
    CU_ASSERT_EQUAL_FATAL(prlimit(px->pid, RLIMIT_NOFILE, NULL, &rl), 0);
    rl.rlim_cur = 0; /* no new descriptor at all (a free low number would still do) */
    CU_ASSERT_EQUAL_FATAL(prlimit(px->pid, RLIMIT_NOFILE, &rl, NULL), 0);
    PGresult *r = PQexec(b, "SELECT 2"); /* needs a second server: no descriptor left */
    CU_ASSERT_NOT_EQUAL(PQresultStatus(r), PGRES_TUPLES_OK);
    PQclear(r);
    CU_ASSERT_TRUE(harness_proxy_log_contains(px, "Too many open files (pgwarden's own limit"));
    rl.rlim_cur = rl.rlim_max;
    CU_ASSERT_EQUAL(prlimit(px->pid, RLIMIT_NOFILE, &rl, NULL), 0);
    CU_ASSERT_TRUE(itu_exec_ok(a, "COMMIT"));
    PQfinish(a);
    PQfinish(b);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* ---- /health with PostgreSQL stopped ------------------------------------------------- */

/* GET path on the admin port: the status (0 on failure); the body into body (cut). */
static int http_get(int port, const char *path, char *body, size_t cap)
{
    char req[256];
    int n =
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    body[0] = '\0';
    int fd = harness_raw_connect(port, 2000);
    if (fd < 0)
        return 0;
    char buf[16384];
    ssize_t got = -1;
    if (harness_raw_send(fd, req, (size_t)n, 2000) == 0)
        got = harness_raw_recv(fd, buf, sizeof(buf) - 1, 3000, NULL);
    close(fd);
    if (got < 12)
        return 0;
    buf[got] = '\0';
    const char *sep = strstr(buf, "\r\n\r\n");
    snprintf(body, cap, "%s", sep ? sep + 4 : "");
    return atoi(buf + 9);
}

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
    /* From /, which the postgres user can enter. */
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

static void test_health_503_when_postgresql_stopped(void)
{
    struct harness_proxy_opts o = {.pool_size = 2, .admin = true};
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    char body[4096];
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    CU_ASSERT_EQUAL(http_get(px->admin_port, "/health", body, sizeof(body)), 200);

    CU_ASSERT_EQUAL_FATAL(pg_ctl("stop"), 0);
    /* Clients now fail (a first one may still get a server PostgreSQL is closing). */
    bool failed = false;
    for (int i = 0; i < 5 && !failed; i++) {
        PGconn *c = harness_connect(px, "sslmode=disable");
        failed = PQstatus(c) != CONNECTION_OK || !itu_exec_ok(c, "SELECT 1");
        PQfinish(c);
        if (!failed)
            itu_sleep_ms(200);
    }
    CU_ASSERT_TRUE(failed);
    /* Past the fast-fail window (server_login_retry_ms, 1 s): still unavailable. */
    itu_sleep_ms(1500);
    int st = http_get(px->admin_port, "/health", body, sizeof(body));
    if (st != 503)
        fprintf(stderr, "/health with PostgreSQL stopped: %d %s\n", st, body);
    CU_ASSERT_EQUAL(st, 503);
    CU_ASSERT_PTR_NOT_NULL(strstr(body, "unavailable"));

    /* PostgreSQL back: clients are served and /health says ok. */
    CU_ASSERT_EQUAL_FATAL(pg_ctl("start"), 0);
    bool served = false;
    for (int64_t end = itu_now_ms() + 15000; !served && itu_now_ms() < end;) {
        served = itu_proxy_serves(px, "sslmode=disable");
        if (!served)
            itu_sleep_ms(300);
    }
    CU_ASSERT_TRUE(served);
    st = http_get(px->admin_port, "/health", body, sizeof(body));
    if (st != 200)
        fprintf(stderr, "/health with PostgreSQL back: %d %s\n", st, body);
    CU_ASSERT_EQUAL(st, 200);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

static void register_suites(void)
{
    static const CU_TestInfo check_tests[] = {
        {"logfile_in_missing_directory", test_check_logfile_in_missing_directory},
        {"pidfile_in_missing_directory", test_check_pidfile_in_missing_directory},
        {"listen_addr_unresolvable", test_check_listen_addr_unresolvable},
        {"listen_addr_not_local", test_check_listen_addr_not_local},
        {"port_in_use_warns", test_check_port_in_use_warns},
        CU_TEST_INFO_NULL,
    };
    static const CU_TestInfo run_tests[] = {
        {"several_listen_addresses", test_several_listen_addresses},
        {"sighup_reopens_logfile", test_sighup_reopens_logfile},
        {"out_of_fds_backs_off", test_out_of_fds_backs_off},
        {"out_of_fds_for_server", test_out_of_fds_for_server},
        /* Last: it stops and restarts the program's PostgreSQL. */
        {"health_503_when_postgresql_stopped", test_health_503_when_postgresql_stopped},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("check", suite_init, NULL, check_tests);
    cunit_add_suite("ops", suite_init, NULL, run_tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
