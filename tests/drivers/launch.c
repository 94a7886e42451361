/*
 * launch.c: drivers_launch, the launcher of the driver tests (tests/drivers/README.md).
 *
 *     drivers_launch PROGRAM [ARGS...]
 *
 * Starts a throwaway PostgreSQL 15 (the integration harness, tests/integration/harness.h)
 * and one pgwarden per pool mode in front of it, runs PROGRAM with their addresses in the
 * environment, then stops every pgwarden and checks that each was still running and shut
 * down cleanly.  The exit status is PROGRAM's (77, "skipped", passes through), or 1 when
 * pgwarden died, did not stop cleanly or could not start.
 *
 * Environment given to PROGRAM:
 *   PGW_MODES                  "session transaction" (or DRIVERS_MODES, when set)
 *   PGW_HOST, PGW_USER, PGW_PASSWORD, PGW_DB
 *   PGW_PORT_SESSION, PGW_PORT_TRANSACTION          pgwarden's port per pool mode
 *   DATABASE_URL_SESSION, DATABASE_URL_TRANSACTION  postgresql:// URLs of the same
 *   PGW_DIRECT_PORT, DATABASE_URL_DIRECT            PostgreSQL itself (set-up, checks)
 *   PGW_ADMIN_PORT_SESSION, PGW_ADMIN_PORT_TRANSACTION  each pgwarden's admin port (chaos
 *                              rules), with the bearer token PGW_ADMIN_TOKEN
 * Read here: DRIVERS_MODES, DRIVERS_DEBUG=1 (pgwarden logs at debug level, and its log is
 * printed at the end: the lock stage logs "locks C-n: 'X' answered|held"),
 * DRIVERS_TIMEOUT_S (PROGRAM is killed after it, default 300).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

extern char **environ;

#define MAX_MODES             2
#define POOL_SIZE_SESSION     40 /* session mode: one server per client connection */
#define POOL_SIZE_TRANSACTION 4  /* small on purpose: servers are shared */
#define DEFAULT_TIMEOUT_S     300
#define ADMIN_TOKEN           "drivers-admin-token"

struct target {
    const char *mode;
    struct harness_proxy *px;
};

static void setenv_int(const char *name, int value)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%d", value);
    setenv(name, buf, 1);
}

/* DATABASE_URL_<SUFFIX> for port. */
static void setenv_url(const char *suffix, const struct harness_cluster *c, int port)
{
    char name[64], url[512];
    snprintf(name, sizeof(name), "DATABASE_URL_%s", suffix);
    snprintf(url, sizeof(url), "postgresql://%s:%s@127.0.0.1:%d/%s?sslmode=disable", c->user,
             c->password, port, c->dbname);
    setenv(name, url, 1);
}

static struct harness_proxy *start_proxy(const char *mode, bool debug)
{
    bool session = strcmp(mode, "session") == 0;
    struct harness_proxy_opts o = {
        .pool_mode = mode,
        .pool_size = session ? POOL_SIZE_SESSION : POOL_SIZE_TRANSACTION,
        .auth_type = "scram-sha-256",
        .client_tls_mode = "disable",
        .max_client_conn = 200,
        .query_wait_timeout_ms = 30000,
        .log_level = debug ? "debug" : "info",
        .admin = true,
        .pgwarden_extra = "admin_token = " ADMIN_TOKEN,
    };
    return harness_proxy_start(&o);
}

static int64_t now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

/* Runs argv with stdin from /dev/null and our stdout/stderr; its exit status (128 + signal
 * when killed), or -1 when it could not start or ran past timeout_s (then killed). */
static int run_program(char *const argv[], int timeout_s)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    pid_t pid;
    int err = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (err != 0) {
        fprintf(stderr, "drivers_launch: cannot run %s: %s\n", argv[0], strerror(err));
        return -1;
    }
    int64_t deadline = now_s() + timeout_s;
    for (;;) {
        int ws;
        pid_t r = waitpid(pid, &ws, WNOHANG);
        if (r == pid)
            return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
        if (r < 0 && errno != EINTR)
            return -1;
        if (now_s() >= deadline) {
            fprintf(stderr, "drivers_launch: %s ran longer than %d s: killed\n", argv[0],
                    timeout_s);
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return -1;
        }
        usleep(20000);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: drivers_launch PROGRAM [ARGS...]\n");
        return 2;
    }
    bool debug = getenv("DRIVERS_DEBUG") && strcmp(getenv("DRIVERS_DEBUG"), "1") == 0;
    const char *modes_env = getenv("DRIVERS_MODES");
    char modes[64];
    snprintf(modes, sizeof(modes), "%s",
             modes_env && *modes_env ? modes_env : "session transaction");
    int timeout_s = getenv("DRIVERS_TIMEOUT_S") ? atoi(getenv("DRIVERS_TIMEOUT_S")) : 0;
    if (timeout_s <= 0)
        timeout_s = DEFAULT_TIMEOUT_S;

    const struct harness_cluster *c = harness_cluster();
    if (!c)
        return 1; /* the reason is printed */
    if (!harness_have_pgwarden()) {
        fprintf(stderr, "drivers_launch: pgwarden binary not built (%s)\n",
                harness_pgwarden_path());
        return 1;
    }

    struct target t[MAX_MODES];
    int nt = 0;
    char modes_copy[64], *save = NULL;
    snprintf(modes_copy, sizeof(modes_copy), "%s", modes);
    for (char *m = strtok_r(modes_copy, " ,", &save); m && nt < MAX_MODES;
         m = strtok_r(NULL, " ,", &save)) {
        if (strcmp(m, "session") != 0 && strcmp(m, "transaction") != 0) {
            fprintf(stderr, "drivers_launch: unknown pool mode in DRIVERS_MODES: %s\n", m);
            return 2;
        }
        t[nt].mode = strcmp(m, "session") == 0 ? "session" : "transaction";
        t[nt].px = start_proxy(t[nt].mode, debug);
        if (!t[nt].px) {
            fprintf(stderr, "drivers_launch: pgwarden (%s mode) did not start\n", m);
            return 1;
        }
        setenv_int(strcmp(m, "session") == 0 ? "PGW_PORT_SESSION" : "PGW_PORT_TRANSACTION",
                   t[nt].px->port);
        setenv_url(strcmp(m, "session") == 0 ? "SESSION" : "TRANSACTION", c, t[nt].px->port);
        setenv_int(strcmp(m, "session") == 0 ? "PGW_ADMIN_PORT_SESSION"
                                             : "PGW_ADMIN_PORT_TRANSACTION",
                   t[nt].px->admin_port);
        nt++;
    }
    setenv("PGW_MODES", modes, 1);
    setenv("PGW_HOST", "127.0.0.1", 1);
    setenv("PGW_ADMIN_TOKEN", ADMIN_TOKEN, 1);
    setenv("PGW_USER", c->user, 1);
    setenv("PGW_PASSWORD", c->password, 1);
    setenv("PGW_DB", c->dbname, 1);
    setenv_int("PGW_DIRECT_PORT", c->port);
    setenv_url("DIRECT", c, c->port);
    fflush(stdout);

    int rc = run_program(argv + 1, timeout_s);
    if (rc < 0)
        rc = 1;
    for (int i = 0; i < nt; i++) {
        if (!harness_proxy_alive(t[i].px)) {
            fprintf(stderr,
                    "drivers_launch: FAIL: pgwarden (%s mode) exited during the test, status "
                    "%d; end of its log:\n",
                    t[i].mode, t[i].px->exit_status);
            harness_proxy_dump_log(t[i].px, 60);
            rc = 1;
            continue;
        }
        if (rc != 0 && rc != 77 && !debug) {
            fprintf(stderr, "drivers_launch: end of pgwarden's log (%s mode):\n", t[i].mode);
            harness_proxy_dump_log(t[i].px, 40);
        }
        int st = harness_proxy_stop(t[i].px, 0);
        if (debug) {
            fprintf(stderr, "drivers_launch: pgwarden's log (%s mode):\n", t[i].mode);
            harness_proxy_dump_log(t[i].px, 100000);
        }
        if (st != 0) {
            fprintf(stderr, "drivers_launch: FAIL: pgwarden (%s mode) exit status %d at stop\n",
                    t[i].mode, st);
            rc = 1;
        }
        harness_proxy_free(t[i].px);
    }
    return rc;
}
