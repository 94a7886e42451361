/*
 * harness.c: the integration-test harness (see harness.h for the interface and a usage
 * example).
 *
 * Owns: the program's temporary directory (/tmp/pgwarden-itest-XXXXXX, mode 0711 so that
 * the postgres user can reach the cluster inside it when tests run as root), the cluster
 * in it (DIR/pg, started and stopped with tests/fixture/pgcluster.sh), the pgwarden
 * children and their files (DIR/proxy-N), and a guardian process.
 *
 * The guardian is forked (and re-parented to init by a double fork, in its own session)
 * when the harness starts.  It reads a pipe on which the test program announces every
 * pgwarden pid it spawns ("P pid") and reaps ("R pid").  At the end of the stream it
 * does nothing when the program said "D" (clean exit, atexit already cleaned up), and
 * otherwise kills the announced pgwarden pids, stops the cluster and removes the
 * directory: so a crash, a sanitizer abort or a ctest timeout leaves nothing behind.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "harness.h"

#ifndef PGW_PGCLUSTER_SH
#error "PGW_PGCLUSTER_SH (path of tests/fixture/pgcluster.sh) must be defined by CMake"
#endif
#ifndef PGW_PGWARDEN_BIN
#define PGW_PGWARDEN_BIN ""
#endif
#ifndef PGW_PG_BINDIR
#define PGW_PG_BINDIR "/usr/lib/postgresql/15/bin"
#endif

extern char **environ;

#define CLUSTER_START_TIMEOUT_MS 180000
#define CLUSTER_STOP_TIMEOUT_MS  60000
#define DEFAULT_START_TIMEOUT_MS 30000
#define CONNECT_TIMEOUT_MS       15000
#define HARNESS_SHUTDOWN_MS      3000
#define RUN_OUTPUT_MAX           (4u << 20)

static struct {
    bool inited;
    pid_t owner;   /* the test program; atexit cleanup runs only there */
    char base[64]; /* /tmp/pgwarden-itest-XXXXXX */
    char cluster_dir[128];
    bool cluster_tried, cluster_ok;
    struct harness_cluster cluster;
    int guardian_fd; /* write end of the guardian's pipe; -1 when none */
    struct harness_proxy **proxies;
    size_t nproxies, capproxies;
    int next_proxy_id;
} H = {.guardian_fd = -1};

/* ---- small utilities ------------------------------------------------------------- */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int status_code(int wstatus)
{
    if (WIFEXITED(wstatus))
        return WEXITSTATUS(wstatus);
    if (WIFSIGNALED(wstatus))
        return 128 + WTERMSIG(wstatus);
    return -1;
}

/* Waits for pid up to timeout_ms; returns the status code, or -1 on timeout. */
static int wait_pid(pid_t pid, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        int ws;
        pid_t r = waitpid(pid, &ws, WNOHANG);
        if (r == pid)
            return status_code(ws);
        if (r < 0 && errno != EINTR)
            return -1;
        if (now_ms() >= deadline)
            return -1;
        sleep_ms(5);
    }
}

static int write_file(const char *path, const char *content, mode_t mode)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        goto fail;
    size_t len = strlen(content), off = 0;
    while (off < len) {
        ssize_t n = write(fd, content + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(fd);
            goto fail;
        }
        off += (size_t)n;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0)
        goto fail;
    return 0;
fail:
    fprintf(stderr, "harness: cannot write %s: %s\n", path, strerror(errno));
    unlink(tmp);
    return -1;
}

/* A growing string buffer; on allocation failure it stays truncated (tests only). */
struct strbuf {
    char *s;
    size_t len, cap;
};

static void sb_add(struct strbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 1024) + (size_t)n;
        char *s = realloc(b->s, cap);
        if (!s)
            return;
        b->s = s;
        b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* ---- running programs ------------------------------------------------------------ */

int harness_run(const char *const argv[], int timeout_ms, char **output)
{
    int pfd[2] = {-1, -1}, rc = -1;
    pid_t pid = 0;
    struct strbuf out = {0};
    posix_spawn_file_actions_t fa;

    if (output)
        *output = NULL;
    if (pipe2(pfd, O_CLOEXEC) != 0)
        return -1;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 2);
    int err = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(pfd[1]);
    if (err != 0) {
        fprintf(stderr, "harness: cannot run %s: %s\n", argv[0], strerror(err));
        close(pfd[0]);
        return -1;
    }

    /* Read until the child exits (not until EOF: a daemon it started may hold the pipe). */
    long long deadline = now_ms() + timeout_ms;
    bool eof = false;
    for (;;) {
        int ws;
        pid_t r = waitpid(pid, &ws, WNOHANG);
        if (r == pid)
            rc = status_code(ws);
        struct pollfd p = {pfd[0], POLLIN, 0};
        while (!eof && poll(&p, 1, r == pid ? 0 : 20) > 0) {
            char chunk[4096];
            ssize_t n = read(pfd[0], chunk, sizeof(chunk));
            if (n <= 0) {
                eof = n == 0 || errno != EINTR;
                break;
            }
            if (out.len < RUN_OUTPUT_MAX)
                sb_add(&out, "%.*s", (int)n, chunk);
        }
        if (r == pid)
            break;
        if (now_ms() >= deadline) {
            fprintf(stderr, "harness: %s timed out after %d ms: killed\n", argv[0], timeout_ms);
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            rc = -1;
            break;
        }
        if (eof)
            sleep_ms(5);
    }
    close(pfd[0]);
    if (output)
        *output = out.s ? out.s : strdup("");
    else
        free(out.s);
    return rc;
}

/* ---- the guardian ---------------------------------------------------------------- */

static void guardian_tell(const char *what, pid_t pid)
{
    if (H.guardian_fd < 0)
        return;
    char line[32];
    int n = snprintf(line, sizeof(line), "%s %ld\n", what, (long)pid);
    ssize_t w = write(H.guardian_fd, line, (size_t)n);
    (void)w;
}

/* True when pid still runs the pgwarden binary (so a reused pid is never killed). */
static bool runs_pgwarden(pid_t pid)
{
    char link[64], exe[PATH_MAX], want[PATH_MAX];
    snprintf(link, sizeof(link), "/proc/%ld/exe", (long)pid);
    ssize_t n = readlink(link, exe, sizeof(exe) - 1);
    if (n <= 0 || !realpath(harness_pgwarden_path(), want))
        return false;
    exe[n] = '\0';
    return strcmp(exe, want) == 0;
}

static void cleanup_files(void)
{
    if (H.cluster_dir[0] && access(H.cluster_dir, F_OK) == 0) {
        const char *argv[] = {"bash", PGW_PGCLUSTER_SH, "stop", H.cluster_dir, NULL};
        char *out = NULL;
        if (harness_run(argv, CLUSTER_STOP_TIMEOUT_MS, &out) != 0)
            fprintf(stderr, "harness: stopping the cluster failed:\n%s\n", out ? out : "");
        free(out);
    }
    const char *rm[] = {"rm", "-rf", "--", H.base, NULL};
    harness_run(rm, 30000, NULL);
}

static void guardian_main(int rfd)
{
    pid_t pids[256];
    size_t npids = 0;
    bool done = false;
    char buf[4096];
    size_t have = 0;

    for (;;) {
        ssize_t n = read(rfd, buf + have, sizeof(buf) - 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        buf[have] = '\0';
        char *line = buf, *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = '\0';
            long v = strtol(line + 1, NULL, 10);
            if (line[0] == 'D') {
                done = true;
            } else if (line[0] == 'P' && npids < 256) {
                pids[npids++] = (pid_t)v;
            } else if (line[0] == 'R') {
                for (size_t i = 0; i < npids; i++)
                    if (pids[i] == (pid_t)v)
                        pids[i--] = pids[--npids];
            }
            line = nl + 1;
        }
        have = strlen(line);
        memmove(buf, line, have);
    }
    if (done)
        _exit(0);
    fprintf(stderr, "harness guardian: test program %ld ended without cleanup: cleaning up\n",
            (long)H.owner);
    for (size_t i = 0; i < npids; i++)
        if (runs_pgwarden(pids[i]))
            kill(pids[i], SIGKILL);
    cleanup_files();
    _exit(0);
}

static void guardian_start(void)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0)
        return;
    pid_t mid = fork();
    if (mid == 0) {
        if (fork() != 0)
            _exit(0);
        setsid();
        close(pfd[1]);
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
            close(devnull);
        }
        guardian_main(pfd[0]);
    }
    close(pfd[0]);
    if (mid > 0) {
        waitpid(mid, NULL, 0);
        H.guardian_fd = pfd[1];
    } else {
        close(pfd[1]);
    }
}

/* ---- set-up and teardown ----------------------------------------------------------- */

static void harness_atexit(void)
{
    if (getpid() != H.owner)
        return;
    while (H.nproxies > 0)
        harness_proxy_free(H.proxies[H.nproxies - 1]);
    free(H.proxies);
    H.proxies = NULL;
    H.capproxies = 0;
    cleanup_files();
    if (H.guardian_fd >= 0) {
        ssize_t w = write(H.guardian_fd, "D 0\n", 4);
        (void)w;
        close(H.guardian_fd);
        H.guardian_fd = -1;
    }
}

/* The libpq environment of whoever runs the tests must not change what tests connect to. */
static void clear_libpq_env(void)
{
    static const char *const vars[] = {
        "PGHOST",
        "PGHOSTADDR",
        "PGPORT",
        "PGDATABASE",
        "PGUSER",
        "PGPASSWORD",
        "PGPASSFILE",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGSSLMODE",
        "PGREQUIRESSL",
        "PGSSLCERT",
        "PGSSLKEY",
        "PGSSLROOTCERT",
        "PGSSLCRL",
        "PGOPTIONS",
        "PGAPPNAME",
        "PGCONNECT_TIMEOUT",
        "PGTZ",
        "PGDATESTYLE",
        "PGCLIENTENCODING",
        "PGTARGETSESSIONATTRS",
        "PGGSSENCMODE",
        "PGSSLMINPROTOCOLVERSION",
        "PGSSLMAXPROTOCOLVERSION",
        "PGCHANNELBINDING",
        "PGDATA",
    };
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
}

static int harness_init(void)
{
    if (H.inited)
        return H.base[0] ? 0 : -1;
    H.inited = true;
    H.owner = getpid();
    signal(SIGPIPE, SIG_IGN);
    clear_libpq_env();
    /* Fixed under /tmp, not $TMPDIR: the postgres user must be able to reach it. */
    char tmpl[] = "/tmp/pgwarden-itest-XXXXXX";
    if (!mkdtemp(tmpl) || chmod(tmpl, 0711) != 0) {
        fprintf(stderr, "harness: cannot create a directory in /tmp: %s\n", strerror(errno));
        return -1;
    }
    snprintf(H.base, sizeof(H.base), "%s", tmpl);
    snprintf(H.cluster_dir, sizeof(H.cluster_dir), "%s/pg", H.base);
    guardian_start();
    atexit(harness_atexit);
    return 0;
}

/* ---- the cluster ----------------------------------------------------------------- */

static void env_value(const char *env, const char *key, char *out, size_t cap)
{
    size_t klen = strlen(key);
    for (const char *p = env; p && *p;) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        if (len > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
            snprintf(out, cap, "%.*s", (int)(len - klen - 1), p + klen + 1);
            return;
        }
        p = eol ? eol + 1 : NULL;
    }
    out[0] = '\0';
}

static int read_cluster_env(struct harness_cluster *c)
{
    char path[PATH_MAX], port[16];
    snprintf(path, sizeof(path), "%s/env", H.cluster_dir);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    char env[8192];
    size_t n = fread(env, 1, sizeof(env) - 1, f);
    fclose(f);
    env[n] = '\0';
    snprintf(c->dir, sizeof(c->dir), "%s", H.cluster_dir);
    env_value(env, "PGHOST", c->host, sizeof(c->host));
    env_value(env, "PGPORT", port, sizeof(port));
    c->port = atoi(port);
    env_value(env, "PGCLUSTER_CA_FILE", c->ca_file, sizeof(c->ca_file));
    env_value(env, "PGCLUSTER_CERT_FILE", c->cert_file, sizeof(c->cert_file));
    env_value(env, "PGCLUSTER_KEY_FILE", c->key_file, sizeof(c->key_file));
    env_value(env, "PGCLUSTER_CLIENT_CERT_FILE", c->client_cert_file, sizeof(c->client_cert_file));
    env_value(env, "PGCLUSTER_CLIENT_KEY_FILE", c->client_key_file, sizeof(c->client_key_file));
    env_value(env, "PGCLUSTER_SUPERUSER", c->superuser, sizeof(c->superuser));
    env_value(env, "PGCLUSTER_USER", c->user, sizeof(c->user));
    env_value(env, "PGCLUSTER_PASSWORD", c->password, sizeof(c->password));
    env_value(env, "PGCLUSTER_DB", c->dbname, sizeof(c->dbname));
    env_value(env, "PGCLUSTER_MD5_USER", c->md5_user, sizeof(c->md5_user));
    env_value(env, "PGCLUSTER_MD5_PASSWORD", c->md5_password, sizeof(c->md5_password));
    env_value(env, "PGCLUSTER_BINDIR", c->bindir, sizeof(c->bindir));
    return c->port > 0 && c->user[0] && c->ca_file[0] ? 0 : -1;
}

const struct harness_cluster *harness_cluster(void)
{
    if (H.cluster_tried)
        return H.cluster_ok ? &H.cluster : NULL;
    if (harness_init() != 0)
        return NULL;
    H.cluster_tried = true;
    const char *argv[] = {"bash", PGW_PGCLUSTER_SH, "start", H.cluster_dir, NULL};
    char *out = NULL;
    int rc = harness_run(argv, CLUSTER_START_TIMEOUT_MS, &out);
    if (rc != 0 || read_cluster_env(&H.cluster) != 0) {
        fprintf(stderr, "harness: the PostgreSQL cluster did not start (status %d):\n%s\n", rc,
                out ? out : "");
        free(out);
        return NULL;
    }
    free(out);
    if (!H.cluster.bindir[0])
        snprintf(H.cluster.bindir, sizeof(H.cluster.bindir), "%s", PGW_PG_BINDIR);
    H.cluster_ok = true;
    return &H.cluster;
}

static char *conninfo_slot(void)
{
    static char ring[8][2048];
    static unsigned next;
    return ring[next++ % 8];
}

static const char *conninfo_for(int port, const char *extra)
{
    const struct harness_cluster *c = harness_cluster();
    if (!c)
        return NULL;
    char *s = conninfo_slot();
    snprintf(s, 2048,
             "host=127.0.0.1 port=%d dbname=%s user=%s password=%s sslrootcert=%s "
             "connect_timeout=10 %s",
             port, c->dbname, c->user, c->password, c->ca_file, extra ? extra : "");
    return s;
}

const char *harness_cluster_conninfo(const char *extra)
{
    const struct harness_cluster *c = harness_cluster();
    return c ? conninfo_for(c->port, extra) : NULL;
}

int harness_cluster_exec(const char *sql)
{
    const struct harness_cluster *c = harness_cluster();
    if (!c)
        return -1;
    char ci[1024];
    snprintf(ci, sizeof(ci), "host=%s port=%d user=%s dbname=%s connect_timeout=10", c->dir,
             c->port, c->superuser, c->dbname);
    PGconn *conn = harness_connect_info(ci);
    int rc = -1;
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "harness: superuser connection failed: %s",
                conn ? PQerrorMessage(conn) : "out of memory\n");
        goto done;
    }
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        rc = 0;
    else
        fprintf(stderr, "harness: %s: %s", sql, PQerrorMessage(conn));
    PQclear(res);
done:
    PQfinish(conn);
    return rc;
}

int harness_cluster_ctl(const char *action)
{
    const struct harness_cluster *c = harness_cluster();
    if (!c)
        return -1;
    char pgctl[600], data[600], logf[600];
    snprintf(pgctl, sizeof(pgctl), "%s/pg_ctl", c->bindir);
    snprintf(data, sizeof(data), "%s/data", c->dir);
    snprintf(logf, sizeof(logf), "%s/postgres.log", c->dir);
    const char *argv[24];
    int i = 0;
    /* From /, which the postgres user can enter. */
    argv[i++] = "sh", argv[i++] = "-c", argv[i++] = "cd / && exec \"$@\"", argv[i++] = "pg_ctl";
    if (geteuid() == 0)
        argv[i++] = "runuser", argv[i++] = "-u", argv[i++] = "postgres", argv[i++] = "--";
    argv[i++] = pgctl, argv[i++] = "-D", argv[i++] = data, argv[i++] = "-w";
    argv[i++] = "-t", argv[i++] = "60";
    if (strcmp(action, "start") != 0)
        argv[i++] = "-m", argv[i++] = "fast";
    if (strcmp(action, "stop") != 0)
        argv[i++] = "-l", argv[i++] = logf;
    argv[i++] = action;
    argv[i] = NULL;
    char *out = NULL;
    int rc = harness_run(argv, 90000, &out);
    if (rc != 0)
        fprintf(stderr, "harness: pg_ctl %s exited %d:\n%s\n", action, rc, out ? out : "");
    free(out);
    return rc;
}

/* ---- libpq helpers --------------------------------------------------------------- */

PGconn *harness_connect_info(const char *conninfo)
{
    if (!conninfo)
        return NULL;
    PGconn *conn = PQconnectStart(conninfo);
    if (!conn)
        return NULL;
    /* Verbose: the error message then carries the SQLSTATE (harness_conn_sqlstate). */
    PQsetErrorVerbosity(conn, PQERRORS_VERBOSE);
    if (PQstatus(conn) == CONNECTION_BAD)
        return conn;
    long long deadline = now_ms() + CONNECT_TIMEOUT_MS;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            fprintf(stderr, "harness: connection not established within %d ms\n",
                    CONNECT_TIMEOUT_MS);
            break;
        }
        struct pollfd p = {PQsocket(conn), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, 0};
        if (poll(&p, 1, (int)left) < 0 && errno != EINTR)
            break;
        st = PQconnectPoll(conn);
    }
    if (PQstatus(conn) == CONNECTION_OK)
        PQsetErrorVerbosity(conn, PQERRORS_DEFAULT);
    return conn;
}

PGconn *harness_connect(const struct harness_proxy *px, const char *extra)
{
    return harness_connect_info(harness_proxy_conninfo(px, extra));
}

const char *harness_conn_sqlstate(PGconn *conn)
{
    static char state[6];
    state[0] = '\0';
    const char *msg = conn ? PQerrorMessage(conn) : "";
    /* Verbose messages read "...FATAL:  28P01: password authentication failed ...". */
    for (const char *p = strstr(msg, ":  "); p; p = strstr(p + 1, ":  ")) {
        const char *s = p + 3;
        bool ok = true;
        for (int i = 0; i < 5 && ok; i++)
            ok = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'Z');
        if (ok && s[5] == ':') {
            memcpy(state, s, 5);
            state[5] = '\0';
            break;
        }
    }
    return state;
}

/* ---- ports and raw sockets ------------------------------------------------------- */

int harness_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

int harness_raw_connect(int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        struct pollfd p = {fd, POLLOUT, 0};
        int err = 0;
        socklen_t elen = sizeof(err);
        if (errno != EINPROGRESS || poll(&p, 1, timeout_ms) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

int harness_wait_port(int port, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    do {
        int fd = harness_raw_connect(port, 200);
        if (fd >= 0) {
            close(fd);
            return 0;
        }
        sleep_ms(20);
    } while (now_ms() < deadline);
    return -1;
}

int harness_raw_send(int fd, const void *buf, size_t len, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        long long left = deadline - now_ms();
        struct pollfd pf = {fd, POLLOUT, 0};
        if (left <= 0 || poll(&pf, 1, (int)left) < 0)
            return -1;
    }
    return 0;
}

ssize_t harness_raw_recv(int fd, void *buf, size_t cap, int timeout_ms, bool *closed)
{
    size_t got = 0;
    if (closed)
        *closed = false;
    while (got < cap) {
        struct pollfd pf = {fd, POLLIN, 0};
        int r = poll(&pf, 1, timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break; /* quiet for timeout_ms */
        ssize_t n = recv(fd, (char *)buf + got, cap - got, 0);
        if (n > 0) {
            got += (size_t)n;
        } else if (n == 0 || errno == ECONNRESET || errno == EPIPE) {
            if (closed)
                *closed = true;
            break;
        } else if (errno != EAGAIN && errno != EINTR) {
            return -1;
        }
    }
    return (ssize_t)got;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

size_t harness_build_startup(uint8_t *buf, size_t cap, const char *user, const char *dbname)
{
    size_t need =
        8 + strlen("user") + 1 + strlen(user) + 1 + strlen("database") + 1 + strlen(dbname) + 1 + 1;
    if (need > cap)
        return 0;
    put32(buf, (uint32_t)need);
    put32(buf + 4, 196608); /* protocol 3.0 */
    size_t off = 8;
    const char *kv[] = {"user", user, "database", dbname};
    for (int i = 0; i < 4; i++) {
        size_t l = strlen(kv[i]) + 1;
        memcpy(buf + off, kv[i], l);
        off += l;
    }
    buf[off++] = '\0';
    return off;
}

bool harness_reply_sqlstate(const uint8_t *buf, size_t len, char sqlstate[6])
{
    size_t off = 0;
    /* A lone 'S'/'N' answering an SSLRequest: not followed by a plausible length. */
    if (len > 0 && (buf[0] == 'S' || buf[0] == 'N') &&
        (len < 5 || get32(buf + 1) < 4 || get32(buf + 1) > (1u << 24)))
        off = 1;
    while (off + 5 <= len) {
        uint8_t type = buf[off];
        uint32_t mlen = get32(buf + off + 1);
        if (mlen < 4 || off + 1 + mlen > len)
            return false;
        if (type == 'E') {
            size_t p = off + 5, end = off + 1 + mlen;
            while (p < end && buf[p] != 0) {
                uint8_t field = buf[p++];
                const uint8_t *v = buf + p;
                size_t vlen = strnlen((const char *)v, end - p);
                if (field == 'C' && vlen == 5) {
                    memcpy(sqlstate, v, 5);
                    sqlstate[5] = '\0';
                    return true;
                }
                p += vlen + 1;
            }
            return false;
        }
        off += 1 + mlen;
    }
    return false;
}

/* ---- pgwarden ---------------------------------------------------------------------- */

const char *harness_pgwarden_path(void)
{
    const char *env = getenv("PGWARDEN_BIN");
    return env && *env ? env : PGW_PGWARDEN_BIN;
}

bool harness_have_pgwarden(void)
{
    const char *p = harness_pgwarden_path();
    return p[0] && access(p, X_OK) == 0;
}

static char *render_config(const struct harness_proxy *px, const struct harness_cluster *c)
{
    const struct harness_proxy_opts *o = &px->opts;
    struct strbuf b = {0};
    sb_add(&b, "[pgwarden]\nlisten_addr = %s\nlisten_port = %d\n",
           o->listen_addr ? o->listen_addr : "127.0.0.1", px->port);
    sb_add(&b, "admin_addr = 127.0.0.1\nadmin_port = %d\n", px->admin_port);
    if (o->pool_mode)
        sb_add(&b, "pool_mode = %s\n", o->pool_mode);
    if (o->auth_type)
        sb_add(&b, "auth_type = %s\n", o->auth_type);
    sb_add(&b, "auth_file = %s\n", px->auth_file_path);
    if (o->client_tls_mode) {
        sb_add(&b, "client_tls_mode = %s\n", o->client_tls_mode);
        if (strcmp(o->client_tls_mode, "disable") != 0)
            sb_add(&b, "client_tls_cert_file = %s\nclient_tls_key_file = %s\n", c->cert_file,
                   c->key_file);
    }
    if (o->server_tls_mode) {
        sb_add(&b, "server_tls_mode = %s\n", o->server_tls_mode);
        if (strncmp(o->server_tls_mode, "verify", 6) == 0)
            sb_add(&b, "server_tls_ca_file = %s\n", c->ca_file);
    }
    if (o->max_client_conn > 0)
        sb_add(&b, "max_client_conn = %d\n", o->max_client_conn);
    if (o->max_message_bytes > 0)
        sb_add(&b, "max_message_bytes = %d\n", o->max_message_bytes);
    if (o->query_wait_timeout_ms > 0)
        sb_add(&b, "query_wait_timeout_ms = %d\n", o->query_wait_timeout_ms);
    if (o->client_login_timeout_ms > 0)
        sb_add(&b, "client_login_timeout_ms = %d\n", o->client_login_timeout_ms);
    sb_add(&b, "shutdown_timeout_ms = %d\n",
           o->shutdown_timeout_ms > 0 ? o->shutdown_timeout_ms : HARNESS_SHUTDOWN_MS);
    if (o->log_level)
        sb_add(&b, "log_level = %s\n", o->log_level);
    if (o->pgwarden_extra)
        sb_add(&b, "%s\n", o->pgwarden_extra);
    sb_add(&b, "\n[databases]\n%s = host=127.0.0.1 port=%d dbname=%s", c->dbname, c->port,
           c->dbname);
    if (o->pool_size > 0)
        sb_add(&b, " pool_size=%d", o->pool_size);
    if (o->db_extra)
        sb_add(&b, " %s", o->db_extra);
    sb_add(&b, "\n");
    if (o->databases_extra)
        sb_add(&b, "%s\n", o->databases_extra);
    if (o->tail_extra)
        sb_add(&b, "\n%s\n", o->tail_extra);
    return b.s;
}

static int write_proxy_files(struct harness_proxy *px, const struct harness_cluster *c)
{
    char *cfg = render_config(px, c);
    if (!cfg)
        return -1;
    int rc = write_file(px->config_path, cfg, 0600);
    free(cfg);
    if (rc != 0)
        return -1;
    char users[512];
    snprintf(users, sizeof(users), "\"%s\" \"%s\"\n\"%s\" \"%s\"\n", c->user, c->password,
             c->md5_user, c->md5_password);
    return write_file(px->auth_file_path, px->opts.auth_file ? px->opts.auth_file : users, 0600);
}

static int proxies_add(struct harness_proxy *px)
{
    if (H.nproxies == H.capproxies) {
        size_t cap = H.capproxies ? H.capproxies * 2 : 8;
        struct harness_proxy **p = realloc(H.proxies, cap * sizeof(*p));
        if (!p)
            return -1;
        H.proxies = p;
        H.capproxies = cap;
    }
    H.proxies[H.nproxies++] = px;
    return 0;
}

static void proxies_remove(struct harness_proxy *px)
{
    for (size_t i = 0; i < H.nproxies; i++)
        if (H.proxies[i] == px) {
            H.proxies[i] = H.proxies[--H.nproxies];
            return;
        }
}

struct harness_proxy *harness_proxy_prepare(const struct harness_proxy_opts *opts)
{
    static const struct harness_proxy_opts defaults;
    const struct harness_cluster *c = harness_cluster();
    if (!c)
        return NULL;
    struct harness_proxy *px = calloc(1, sizeof(*px));
    if (!px || proxies_add(px) != 0) {
        free(px);
        return NULL;
    }
    px->opts = opts ? *opts : defaults;
    px->exit_status = -1;
    px->port = harness_free_port();
    px->admin_port = 0;
    /* two probes in a row may get the same free port (pgwarden then refuses to start) */
    for (int i = 0; px->opts.admin && i < 10 && (!px->admin_port || px->admin_port == px->port);
         i++)
        px->admin_port = harness_free_port();
    snprintf(px->dir, sizeof(px->dir), "%s/proxy-%d", H.base, ++H.next_proxy_id);
    snprintf(px->config_path, sizeof(px->config_path), "%s/pgwarden.ini", px->dir);
    snprintf(px->auth_file_path, sizeof(px->auth_file_path), "%s/userlist.txt", px->dir);
    snprintf(px->log_path, sizeof(px->log_path), "%s/pgwarden.log", px->dir);
    if (px->port <= 0 || px->admin_port < 0 || mkdir(px->dir, 0700) != 0 ||
        write_proxy_files(px, c) != 0) {
        fprintf(stderr, "harness: cannot prepare a pgwarden config in %s\n", px->dir);
        harness_proxy_free(px);
        return NULL;
    }
    return px;
}

int harness_proxy_rewrite_config(struct harness_proxy *px, const struct harness_proxy_opts *opts)
{
    const struct harness_cluster *c = harness_cluster();
    if (!c || !opts)
        return -1;
    px->opts = *opts;
    return write_proxy_files(px, c);
}

static void reaped(struct harness_proxy *px, int code)
{
    guardian_tell("R", px->pid);
    px->pid = 0;
    px->exit_status = code;
}

/* The environment for a pgwarden child: ours, with the ASAN_OPTIONS that opts asks for.
 * Free with free_child_environ; NULL when out of memory. */
static char **child_environ(const struct harness_proxy_opts *o)
{
    if (o->asan_quarantine_mb <= 0)
        return environ;
    size_t n = 0;
    while (environ[n])
        n++;
    char **envp = calloc(n + 2, sizeof(*envp));
    if (!envp)
        return NULL;
    const char *cur = getenv("ASAN_OPTIONS");
    /* ASan takes the last of repeated options: ours wins over a quarantine set outside. */
    if (asprintf(&envp[0], "ASAN_OPTIONS=%s%squarantine_size_mb=%d", cur ? cur : "",
                 cur && *cur ? ":" : "", o->asan_quarantine_mb) < 0) {
        free(envp);
        return NULL;
    }
    for (size_t i = 0, k = 1; i < n; i++)
        if (strncmp(environ[i], "ASAN_OPTIONS=", 13) != 0)
            envp[k++] = environ[i];
    return envp;
}

static void free_child_environ(char **envp)
{
    if (envp && envp != environ) {
        free(envp[0]);
        free(envp);
    }
}

int harness_proxy_launch(struct harness_proxy *px)
{
    if (!harness_have_pgwarden()) {
        fprintf(stderr, "harness: pgwarden binary not found (%s)\n", harness_pgwarden_path());
        return -1;
    }
    if (px->pid > 0)
        return 0;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, px->log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    const char *argv[] = {harness_pgwarden_path(), "-c", px->config_path, NULL};
    char **envp = child_environ(&px->opts);
    pid_t pid;
    int err = envp ? posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, envp) : ENOMEM;
    posix_spawn_file_actions_destroy(&fa);
    free_child_environ(envp);
    if (err != 0) {
        fprintf(stderr, "harness: cannot start %s: %s\n", argv[0], strerror(err));
        return -1;
    }
    px->pid = pid;
    px->exit_status = -1;
    guardian_tell("P", pid);

    int timeout =
        px->opts.start_timeout_ms > 0 ? px->opts.start_timeout_ms : DEFAULT_START_TIMEOUT_MS;
    long long deadline = now_ms() + timeout;
    while (now_ms() < deadline) {
        if (!harness_proxy_alive(px)) {
            fprintf(stderr, "harness: pgwarden exited with status %d before accepting\n",
                    px->exit_status);
            harness_proxy_dump_log(px, 40);
            return -1;
        }
        if (harness_wait_port(px->port, 100) == 0)
            return 0;
    }
    fprintf(stderr, "harness: pgwarden did not accept on port %d within %d ms\n", px->port,
            timeout);
    harness_proxy_dump_log(px, 40);
    harness_proxy_stop(px, 2000);
    return -1;
}

struct harness_proxy *harness_proxy_start(const struct harness_proxy_opts *opts)
{
    struct harness_proxy *px = harness_proxy_prepare(opts);
    if (px && harness_proxy_launch(px) != 0) {
        harness_proxy_free(px);
        return NULL;
    }
    return px;
}

int harness_proxy_signal(struct harness_proxy *px, int sig)
{
    if (!px || px->pid <= 0)
        return -1;
    return kill(px->pid, sig);
}

bool harness_proxy_alive(struct harness_proxy *px)
{
    if (!px || px->pid <= 0)
        return false;
    int ws;
    pid_t r = waitpid(px->pid, &ws, WNOHANG);
    if (r == px->pid) {
        reaped(px, status_code(ws));
        return false;
    }
    return true;
}

int harness_proxy_wait_exit(struct harness_proxy *px, int timeout_ms)
{
    if (!px || px->pid <= 0)
        return -1;
    int code = wait_pid(px->pid, timeout_ms);
    if (code < 0)
        return -1;
    reaped(px, code);
    return code;
}

int harness_proxy_stop(struct harness_proxy *px, int timeout_ms)
{
    if (!px || px->pid <= 0)
        return px ? px->exit_status : -1;
    if (timeout_ms <= 0)
        timeout_ms = (px->opts.shutdown_timeout_ms > 0 ? px->opts.shutdown_timeout_ms
                                                       : HARNESS_SHUTDOWN_MS) +
                     5000;
    kill(px->pid, SIGTERM);
    int code = harness_proxy_wait_exit(px, timeout_ms);
    if (code < 0) {
        fprintf(stderr, "harness: pgwarden %ld ignored SIGTERM for %d ms: SIGKILL\n", (long)px->pid,
                timeout_ms);
        kill(px->pid, SIGKILL);
        code = harness_proxy_wait_exit(px, 10000);
    }
    if (code != 0) {
        fprintf(stderr, "harness: pgwarden exit status %d; end of its log:\n", code);
        harness_proxy_dump_log(px, 40);
    }
    return code;
}

void harness_proxy_free(struct harness_proxy *px)
{
    if (!px)
        return;
    if (px->pid > 0)
        harness_proxy_stop(px, 0);
    const char *rm[] = {"rm", "-rf", "--", px->dir, NULL};
    if (px->dir[0])
        harness_run(rm, 30000, NULL);
    proxies_remove(px);
    free(px);
}

/* A "Vm...:" line of the child's /proc/PID/status, in KiB; -1 on error. */
static long proc_status_kb(const struct harness_proxy *px, const char *key)
{
    if (!px || px->pid <= 0)
        return -1;
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%ld/status", (long)px->pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    long kb = -1;
    size_t klen = strlen(key);
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, key, klen) == 0) {
            kb = strtol(line + klen, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

long harness_proxy_rss_kb(const struct harness_proxy *px)
{
    return proc_status_kb(px, "VmRSS:");
}

long harness_proxy_peak_kb(const struct harness_proxy *px)
{
    return proc_status_kb(px, "VmHWM:");
}

int harness_proxy_reset_peak(const struct harness_proxy *px)
{
    if (!px || px->pid <= 0)
        return -1;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%ld/clear_refs", (long)px->pid);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t w = write(fd, "5", 1); /* 5: reset the peak RSS to the current RSS */
    close(fd);
    return w == 1 ? 0 : -1;
}

static char *read_log(const struct harness_proxy *px)
{
    FILE *f = fopen(px->log_path, "re");
    if (!f)
        return NULL;
    struct strbuf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        sb_add(&b, "%.*s", (int)n, chunk);
    fclose(f);
    return b.s;
}

void harness_proxy_dump_log(const struct harness_proxy *px, int max_lines)
{
    char *log = px ? read_log(px) : NULL;
    if (!log) {
        fprintf(stderr, "  (no pgwarden log)\n");
        return;
    }
    const char *start = log + strlen(log);
    int lines = 0;
    while (start > log && lines <= max_lines)
        if (*--start == '\n')
            lines++;
    if (*start == '\n')
        start++;
    fprintf(stderr, "---- %s ----\n%s---- end ----\n", px->log_path, start);
    free(log);
}

bool harness_proxy_log_contains(const struct harness_proxy *px, const char *needle)
{
    char *log = px ? read_log(px) : NULL;
    bool found = log && strstr(log, needle);
    free(log);
    return found;
}

const char *harness_proxy_conninfo(const struct harness_proxy *px, const char *extra)
{
    return px ? conninfo_for(px->port, extra) : NULL;
}
