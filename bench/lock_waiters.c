/*
 * lock_waiters.c: N clients queued on one pgwarden lock key (issue 14 benchmark).
 *
 *   lock_waiters -d CONNINFO -n N [-m exclusive|read] [-s session|xact] [-k KEY]
 *                [-p PROXY_PID] [-a ADMIN_PORT] [-b BATCH] [-D DIRECT_CONNINFO]
 *                [-c CONNECTS_IN_FLIGHT] [-t TIMEOUT_S] [-w PAUSE_MS]
 *                [-H] [-r READY_FILE] [-g GO_FILE] [-o TOKENS_FILE]
 *
 * One process, libpq in non-blocking mode, every connection on one epoll set:
 *
 * 1. opens N + 1 connections to pgwarden (at most -c logins in flight);
 * 2. the first one, the holder, takes KEY in exclusive mode;
 * 3. the N waiters ask for KEY in mode -m, one after the other: with -a (pgwarden's admin
 *    port) the program waits after every -b requests until pgwarden's
 *    pgwarden_lock_waiters gauge counts them all, so pgwarden has queued request i before
 *    request i + 1 is sent and the request order is known (batches of 1: exactly);
 * 4. reads pgwarden's VmRSS (-p) before the connections, with all of them connected and
 *    idle, and with all waiters queued; with -D counts the benchmark user's backends on
 *    PostgreSQL while they wait (in transaction pooling a waiter holds no server);
 * 5. the holder releases KEY; the time from the holder's release to the last grant is
 *    measured, and pgwarden's CPU (utime + stime of /proc/PID/stat) from the release until
 *    every waiter has released.  write and exclusive waiters release as soon as they are
 *    granted, so the grants are a chain (each release grants the next waiter); read
 *    waiters are all granted at once and release only after the last grant;
 * 6. checks FIFO: in request order the fencing tokens must strictly increase (with
 *    batches > 1 only between batches, as the order inside a batch is unknown).
 *
 * -s session uses pgwarden_lock / pgwarden_unlock; -s xact sends BEGIN on every connection
 * first and uses pgwarden_xact_lock, released by COMMIT.  -w pauses PAUSE_MS before the
 * release (to attach a profiler).  Prints key=value lines.
 *
 * Several instances sharing one lock space ([locks] backend = postgresql, bench/locks_pg.sh)
 * run one copy per instance: one copy with the holder, the others with -H (no holder of
 * their own: the key is held through another instance; with -a the first waiter, granted
 * provisionally in its instance and waiting for PostgreSQL, counts as queued by
 * pgwarden_locks_held).  -r creates READY_FILE once every waiter is queued and the
 * figures while waiting are taken; -g then waits until GO_FILE exists before the holder
 * releases (with -H: before timing the grants); -o writes one line per waiter in request
 * order: "index token grant_ns" (CLOCK_MONOTONIC, comparable across processes;
 * token -1: not granted).  release_mono_ns and last_grant_mono_ns are printed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

enum state {
    ST_CONNECTING,
    ST_IDLE,      /* connected, nothing in flight */
    ST_BEGINNING, /* BEGIN sent (-s xact) */
    ST_HOLDING,   /* holder: granted, nothing in flight */
    ST_WAITING,   /* lock request sent, not answered yet */
    ST_RELEASING, /* granted; unlock / COMMIT sent */
    ST_DONE,      /* released */
    ST_FAILED,
};

struct client {
    PGconn *conn;
    int fd; /* the socket registered with epoll, -1 if none */
    enum state state;
    bool got_value;
    int64_t value; /* first column of the last row received */
    int64_t token; /* fencing token of the grant */
    uint64_t t_grant;
};

static const char *conninfo, *direct_conninfo;
static const char *key = "bench:waiters";
static const char *mode = "exclusive";
static bool xact;
static bool release_when_granted; /* exclusive, write: each grant releases for the next */
static long nwaiters = 100, batch = 1, max_inflight = 128;
static int proxy_pid, admin_port, timeout_s = 600, pause_ms;
static bool no_holder; /* -H: the key is held by a client of another instance */
static const char *ready_file, *go_file, *tokens_file;

static struct client *clients; /* [0] holder, [1..nwaiters] waiters */
static long nclients;
static int ep = -1;
static long granted, released, failures, connecting;
static uint64_t t_last_grant, deadline_ns;
static char lock_sql[400], unlock_sql[400], hold_sql[400];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lock_waiters: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void check_deadline(const char *what)
{
    if (now_ns() > deadline_ns)
        die("timed out (-t %d s) while %s (granted %ld, released %ld, failures %ld)", timeout_s,
            what, granted, released, failures);
}

/* ---- /proc ------------------------------------------------------------------------------ */

static long proc_rss_kb(void)
{
    char path[64], line[256];
    long kb = -1;
    if (proxy_pid <= 0)
        return -1;
    snprintf(path, sizeof(path), "/proc/%d/status", proxy_pid);
    FILE *f = fopen(path, "r");
    if (!f)
        die("cannot read %s: %s", path, strerror(errno));
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static long proc_cpu_ticks(void)
{
    char path[64], buf[2048];
    if (proxy_pid <= 0)
        return -1;
    snprintf(path, sizeof(path), "/proc/%d/stat", proxy_pid);
    FILE *f = fopen(path, "r");
    if (!f)
        die("cannot read %s: %s", path, strerror(errno));
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    if (!p)
        return -1;
    unsigned long utime = 0, stime = 0;
    /* after ") ": state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
       cmajflt utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return -1;
    return (long)(utime + stime);
}

/* This program's own CPU time (user + system), seconds. */
static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* ---- admin port: pgwarden_lock_waiters from GET /metrics, on a kept-alive connection ---- */

static int admin_fd = -1;
static char *admin_buf;
static size_t admin_cap;

static int admin_connect(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)admin_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* One GET /metrics; the body in admin_buf (NUL-terminated). 0 on success. */
static int admin_get_metrics(void)
{
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    if (admin_fd < 0 && (admin_fd = admin_connect()) < 0)
        return -1;
    if (send(admin_fd, req, sizeof(req) - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof(req) - 1))
        goto fail;
    size_t len = 0, body = 0; /* body: offset of the body, 0 until the headers are in */
    long clen = -1;
    for (;;) {
        if (body && (long)(len - body) >= clen)
            break;
        if (admin_cap - len < 65536) {
            admin_cap = admin_cap ? admin_cap * 2 : 262144;
            admin_buf = realloc(admin_buf, admin_cap);
            if (!admin_buf)
                die("out of memory");
        }
        /* pgwarden before 1049ece left Nagle on on its admin port: without a quick ACK
           every /metrics answer after the first on a kept-alive connection waited ~40 ms
           for our delayed ACK */
        int one = 1;
        setsockopt(admin_fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
        ssize_t n = recv(admin_fd, admin_buf + len, admin_cap - len - 1, 0);
        if (n <= 0)
            goto fail;
        len += (size_t)n;
        admin_buf[len] = '\0';
        if (!body) {
            char *end = strstr(admin_buf, "\r\n\r\n");
            if (!end)
                continue;
            body = (size_t)(end + 4 - admin_buf);
            for (char *h = strstr(admin_buf, "\r\n"); h && h < end; h = strstr(h + 2, "\r\n"))
                if (strncasecmp(h + 2, "content-length:", 15) == 0)
                    clen = strtol(h + 17, NULL, 10);
            if (clen < 0 || strncmp(admin_buf, "HTTP/1.1 200", 12) != 0)
                goto fail;
        }
    }
    memmove(admin_buf, admin_buf + body, (size_t)clen);
    admin_buf[clen] = '\0';
    return 0;
fail:
    close(admin_fd);
    admin_fd = -1;
    return -1;
}

/* Sum of the samples of metric name whose labels contain filter ("" for all); -1 if the
 * scrape failed. */
static long metric_sum(const char *name, const char *filter)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        if (admin_get_metrics() != 0)
            continue;
        size_t len = strlen(name);
        long sum = 0;
        for (char *p = admin_buf; *p;) {
            char *eol = strchr(p, '\n');
            if (eol)
                *eol = '\0';
            if (strncmp(p, name, len) == 0 && (p[len] == ' ' || p[len] == '{') &&
                strstr(p + len, filter)) {
                char *v = strrchr(p, ' ');
                sum += v ? strtol(v + 1, NULL, 10) : 0;
            }
            if (!eol)
                break;
            p = eol + 1;
        }
        return sum;
    }
    return -1;
}

static long admin_waiters(void)
{
    long n = metric_sum("pgwarden_lock_waiters", "");
    if (n < 0)
        die("GET /metrics on admin port %d failed", admin_port);
    if (no_holder) { /* the first waiter is a (provisional) holder in its instance */
        long held = metric_sum("pgwarden_locks_held", "");
        if (held < 0)
            die("GET /metrics on admin port %d failed", admin_port);
        n += held;
    }
    return n;
}

/* ---- libpq plumbing ----------------------------------------------------------------------- */

static void notice_ignore(void *arg, const char *msg)
{
}

static void watch(struct client *c, uint32_t events)
{
    int fd = PQsocket(c->conn);
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)(c - clients)};
    if (fd < 0)
        return;
    if (fd == c->fd) {
        if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) == 0)
            return;
        if (errno != ENOENT)
            die("epoll_ctl MOD: %s", strerror(errno));
    }
    /* a new socket (libpq may replace it while connecting) */
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        if (errno != EEXIST || epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) != 0)
            die("epoll_ctl ADD: %s", strerror(errno));
    }
    c->fd = fd;
}

static void unwatch(struct client *c)
{
    if (c->fd >= 0)
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    c->fd = -1;
}

static void fail(struct client *c, const char *what, const char *msg)
{
    if (failures < 5)
        fprintf(stderr, "lock_waiters: client %ld: %s: %s", (long)(c - clients), what,
                msg && *msg ? msg : "(no message)\n");
    failures++;
    if (c->state == ST_CONNECTING)
        connecting--;
    c->state = ST_FAILED;
    unwatch(c);
}

static void send_query(struct client *c, const char *sql, enum state next)
{
    c->got_value = false;
    if (!PQsendQuery(c->conn, sql)) {
        fail(c, "send", PQerrorMessage(c->conn));
        return;
    }
    int r;
    while ((r = PQflush(c->conn)) == 1) {
        struct pollfd pfd = {.fd = PQsocket(c->conn), .events = POLLOUT};
        poll(&pfd, 1, 1000);
        check_deadline("sending");
    }
    if (r < 0) {
        fail(c, "flush", PQerrorMessage(c->conn));
        return;
    }
    c->state = next;
}

/* A query of c has completed (its last PGresult was read). */
static void on_done(struct client *c)
{
    bool holder = c == clients;
    switch (c->state) {
    case ST_BEGINNING: c->state = ST_IDLE; break;
    case ST_WAITING:
        if (!c->got_value) {
            fail(c, "lock", "no token in the answer\n");
            return;
        }
        c->token = c->value;
        c->t_grant = now_ns();
        if (holder) {
            c->state = ST_HOLDING;
            return;
        }
        granted++;
        t_last_grant = c->t_grant;
        if (release_when_granted)
            send_query(c, unlock_sql, ST_RELEASING);
        else
            c->state = ST_HOLDING;
        break;
    case ST_RELEASING:
        c->state = ST_DONE;
        if (!holder)
            released++;
        break;
    default: fail(c, "protocol", "an answer nobody asked for\n");
    }
}

static void on_input(struct client *c)
{
    if (!PQconsumeInput(c->conn)) {
        fail(c, "read", PQerrorMessage(c->conn));
        return;
    }
    while (!PQisBusy(c->conn)) {
        PGresult *res = PQgetResult(c->conn);
        if (!res) {
            on_done(c);
            return;
        }
        switch (PQresultStatus(res)) {
        case PGRES_TUPLES_OK:
            c->got_value = PQntuples(res) > 0 && !PQgetisnull(res, 0, 0);
            if (c->got_value)
                c->value = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
            break;
        case PGRES_COMMAND_OK: break;
        default:
            fail(c, PQresStatus(PQresultStatus(res)), PQresultErrorMessage(res));
            PQclear(res);
            return;
        }
        PQclear(res);
    }
}

/* Runs the event loop for up to timeout_ms (0: only what is ready now). */
static void pump(int timeout_ms)
{
    struct epoll_event evs[1024];
    int n = epoll_wait(ep, evs, 1024, timeout_ms);
    if (n < 0 && errno != EINTR)
        die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
        struct client *c = &clients[evs[i].data.u64];
        if (c->state == ST_FAILED)
            continue;
        if (c->state == ST_CONNECTING) {
            switch (PQconnectPoll(c->conn)) {
            case PGRES_POLLING_READING: watch(c, EPOLLIN); break;
            case PGRES_POLLING_WRITING: watch(c, EPOLLOUT); break;
            case PGRES_POLLING_OK:
                c->state = ST_IDLE;
                connecting--;
                PQsetnonblocking(c->conn, 1);
                PQsetNoticeProcessor(c->conn, notice_ignore, NULL);
                watch(c, EPOLLIN);
                break;
            default: fail(c, "connect", PQerrorMessage(c->conn));
            }
            continue;
        }
        on_input(c);
    }
}

static long count_state(enum state s)
{
    long n = 0;
    for (long i = 0; i < nclients; i++)
        n += clients[i].state == s;
    return n;
}

static void connect_all(void)
{
    long next = no_holder ? 1 : 0;
    while (next < nclients || connecting > 0) {
        while (next < nclients && connecting < max_inflight) {
            struct client *c = &clients[next++];
            c->fd = -1;
            c->conn = PQconnectStart(conninfo);
            if (!c->conn)
                die("out of memory");
            c->state = ST_CONNECTING;
            connecting++;
            if (PQstatus(c->conn) == CONNECTION_BAD) {
                fail(c, "connect", PQerrorMessage(c->conn));
                continue;
            }
            watch(c, EPOLLOUT);
        }
        pump(100);
        check_deadline("connecting");
    }
}

/* Serial query on the holder (nothing else in flight on it). */
static void holder_query(const char *sql, enum state next, enum state want)
{
    struct client *h = &clients[0];
    send_query(h, sql, next);
    while (h->state == next) {
        pump(100);
        check_deadline("waiting for the holder");
    }
    if (h->state != want)
        die("the holder's \"%s\" failed", sql);
}

static long direct_backends(const char *user)
{
    PGconn *d = PQconnectdb(direct_conninfo);
    long n = -1;
    if (PQstatus(d) != CONNECTION_OK) {
        fprintf(stderr, "lock_waiters: -D connection failed: %s", PQerrorMessage(d));
        PQfinish(d);
        return -1;
    }
    const char *params[1] = {user};
    PGresult *r = PQexecParams(d,
                               "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND "
                               "backend_type = 'client backend' AND pid <> pg_backend_pid()",
                               1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    PQfinish(d);
    return n;
}

static void usage(void)
{
    fprintf(stderr, "usage: lock_waiters -d CONNINFO -n N [-m exclusive|read] [-s session|xact] "
                    "[-k KEY] [-p PROXY_PID] [-a ADMIN_PORT] [-b BATCH] [-D DIRECT_CONNINFO] "
                    "[-c CONNECTS_IN_FLIGHT] [-t TIMEOUT_S] [-w PAUSE_MS] [-H] [-r READY_FILE] "
                    "[-g GO_FILE] [-o TOKENS_FILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "d:n:m:s:k:p:a:b:D:c:t:w:Hr:g:o:")) != -1) {
        switch (opt) {
        case 'd': conninfo = optarg; break;
        case 'n': nwaiters = strtol(optarg, NULL, 10); break;
        case 'm': mode = optarg; break;
        case 's': xact = strcmp(optarg, "xact") == 0; break;
        case 'k': key = optarg; break;
        case 'p': proxy_pid = atoi(optarg); break;
        case 'a': admin_port = atoi(optarg); break;
        case 'b': batch = strtol(optarg, NULL, 10); break;
        case 'D': direct_conninfo = optarg; break;
        case 'c': max_inflight = strtol(optarg, NULL, 10); break;
        case 't': timeout_s = atoi(optarg); break;
        case 'w': pause_ms = atoi(optarg); break;
        case 'H': no_holder = true; break;
        case 'r': ready_file = optarg; break;
        case 'g': go_file = optarg; break;
        case 'o': tokens_file = optarg; break;
        default: usage();
        }
    }
    if (!conninfo || nwaiters < 1 || batch < 1 || max_inflight < 1 || timeout_s < 1 ||
        strchr(key, '\'') || strlen(key) > 256 || strchr(mode, '\''))
        usage();
    release_when_granted = strcasecmp(mode, "read") != 0;
    deadline_ns = now_ns() + (uint64_t)timeout_s * 1000000000u;
    nclients = nwaiters + 1;

    /* One descriptor per connection, plus a few. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)nclients + 64) {
        rlim_t want = (rlim_t)nclients + 64;
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= want ? want : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want)
            fprintf(stderr, "lock_waiters: open files limit %llu < %llu: connections will fail\n",
                    (unsigned long long)rl.rlim_cur, (unsigned long long)want);
    }

    const char *fn = xact ? "pgwarden_xact_lock" : "pgwarden_lock";
    snprintf(lock_sql, sizeof(lock_sql), "SELECT %s('%s', '%s')", fn, key, mode);
    snprintf(hold_sql, sizeof(hold_sql), "SELECT %s('%s', 'exclusive')", fn, key);
    if (xact)
        snprintf(unlock_sql, sizeof(unlock_sql), "COMMIT");
    else
        snprintf(unlock_sql, sizeof(unlock_sql), "SELECT pgwarden_unlock('%s')", key);

    clients = calloc((size_t)nclients, sizeof(*clients));
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!clients || ep < 0)
        die("setup: %s", strerror(errno));

    if (no_holder)
        clients[0].state = ST_DONE, clients[0].fd = -1; /* the holder is elsewhere */
    long rss_before = proc_rss_kb();
    uint64_t t0 = now_ns();
    connect_all();
    uint64_t t_connected = now_ns();
    long connected = count_state(ST_IDLE);
    printf("clients_requested=%ld\nclients_connected=%ld\nconnect_s=%.2f\n", nclients, connected,
           (double)(t_connected - t0) / 1e9);
    if ((!no_holder && clients[0].state != ST_IDLE) || connected < 2)
        die("too few connections (%ld of %ld)", connected, nclients);
    long nw = connected - (no_holder ? 0 : 1); /* waiters that take part */
    long rss_connected = proc_rss_kb();

    if (xact) { /* BEGIN everywhere, then wait for every answer */
        for (long i = 0; i < nclients; i++)
            if (clients[i].state == ST_IDLE)
                send_query(&clients[i], "BEGIN", ST_BEGINNING);
        while (count_state(ST_BEGINNING) > 0) {
            pump(100);
            check_deadline("running BEGIN");
        }
    }

    if (!no_holder)
        holder_query(hold_sql, ST_WAITING, ST_HOLDING);

    /* The waiters, in order; with the admin port, each batch is seen queued first. */
    long base = admin_port ? admin_waiters() : 0, sent = 0, polls = 0;
    uint64_t tq = now_ns();
    for (long i = 1; i < nclients; i++) {
        if (clients[i].state != ST_IDLE)
            continue;
        send_query(&clients[i], lock_sql, ST_WAITING);
        sent++;
        if (admin_port && (sent % batch == 0 || i == nclients - 1)) {
            for (;;) {
                pump(0);
                polls++;
                if (admin_waiters() - base >= sent - failures)
                    break;
                check_deadline("queueing the waiters");
            }
        }
    }
    pump(0);
    uint64_t t_queued = now_ns();
    long rss_waiting = proc_rss_kb();
    long servers = direct_conninfo ? direct_backends(PQuser(clients[1].conn)) : -1;
    long queued = admin_port ? admin_waiters() - base : -1;
    long active = admin_port ? metric_sum("pgwarden_servers", "state=\"active\"") : -1;
    long opened = admin_port ? metric_sum("pgwarden_servers", "") : -1;
    if (granted > 0)
        fprintf(stderr, "lock_waiters: %ld waiters were granted while the holder held the lock\n",
                granted);

    if (pause_ms > 0) { /* e.g. to attach a profiler to pgwarden for the grant phase */
        fprintf(stderr, "lock_waiters: %ld waiting; releasing in %d ms\n", nw, pause_ms);
        usleep((useconds_t)pause_ms * 1000);
    }

    if (ready_file) {
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof(tmp), "%s.tmp", ready_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "queued=%ld\n", nw) < 0 || fclose(f) != 0 || rename(tmp, ready_file))
            die("cannot write %s: %s", ready_file, strerror(errno));
    }
    if (go_file) { /* keep reading the sockets while waiting for the signal */
        while (access(go_file, F_OK) != 0) {
            pump(20);
            check_deadline("waiting for the go file");
        }
    }

    /* The holder releases (with -H: the holder elsewhere releases about now). */
    long cpu0 = proc_cpu_ticks();
    double self0 = self_cpu_s();
    uint64_t t_release = now_ns();
    if (!no_holder)
        send_query(&clients[0], unlock_sql, ST_RELEASING);
    long expect = count_state(ST_WAITING), failures0 = failures;
    while (granted + (failures - failures0) < expect) {
        pump(100);
        check_deadline("granting");
    }
    uint64_t t_all_granted = t_last_grant;
    long cpu_granted = proc_cpu_ticks();
    double self_granted = self_cpu_s();
    if (!release_when_granted) /* read: all were granted together; now release them */
        for (long i = 1; i < nclients; i++)
            if (clients[i].state == ST_HOLDING)
                send_query(&clients[i], unlock_sql, ST_RELEASING);
    while (released + (failures - failures0) < granted || clients[0].state == ST_RELEASING) {
        pump(100);
        check_deadline("releasing");
    }
    long cpu1 = proc_cpu_ticks();

    /* FIFO: tokens in request order (clients[1..] are in request order). */
    long violations = 0, order_mismatch = 0, prev_batch = -1, k = 0;
    int64_t batch_max = INT64_MIN, prev_batch_max = INT64_MIN, prev_token = INT64_MIN;
    for (long i = 1; i < nclients; i++) {
        struct client *c = &clients[i];
        if (c->state != ST_DONE)
            continue;
        long b = k / batch;
        if (b != prev_batch) {
            prev_batch_max = prev_batch < 0 ? INT64_MIN : batch_max;
            batch_max = INT64_MIN;
            prev_batch = b;
        }
        if (c->token <= prev_batch_max)
            violations++;
        if (c->token <= prev_token)
            order_mismatch++;
        if (c->token > batch_max)
            batch_max = c->token;
        prev_token = c->token;
        k++;
    }
    long hz = sysconf(_SC_CLK_TCK);
    double grant_ms = (double)(t_all_granted - t_release) / 1e6;
    printf("mode=%s\nscope=%s\nwaiters=%ld\nqueued_seen_by_pgwarden=%ld\nbatch=%ld\n"
           "metrics_polls=%ld\nqueue_s=%.2f\n",
           mode, xact ? "xact" : "session", nw, queued, batch, polls,
           (double)(t_queued - tq) / 1e9);
    printf("rss_kb_before=%ld\nrss_kb_connected=%ld\nrss_kb_waiting=%ld\n", rss_before,
           rss_connected, rss_waiting);
    if (rss_before >= 0)
        printf("kb_per_client_connected=%.2f\nkb_per_waiter_lock=%.2f\nkb_per_waiter_total=%.2f\n",
               (double)(rss_connected - rss_before) / (double)connected,
               (double)(rss_waiting - rss_connected) / (double)nw,
               (double)(rss_waiting - rss_before) / (double)connected);
    printf("server_backends_while_waiting=%ld\npgwarden_servers_while_waiting=%ld\n"
           "pgwarden_servers_active_while_waiting=%ld\n",
           servers, opened, active);
    printf("granted=%ld\nreleased=%ld\nfailures=%ld\ngrant_all_ms=%.3f\ngrant_per_waiter_us=%.2f\n",
           granted, released, failures, grant_ms, granted ? grant_ms * 1000.0 / granted : 0.0);
    printf("own_cpu_s_until_all_granted=%.2f\n", self_granted - self0);
    if (cpu0 >= 0 && cpu1 >= 0 && !release_when_granted)
        printf("proxy_cpu_s_until_all_granted=%.2f\nproxy_cpu_s_releases=%.2f\n",
               (double)(cpu_granted - cpu0) / (double)hz,
               (double)(cpu1 - cpu_granted) / (double)hz);
    if (cpu0 >= 0 && cpu1 >= 0)
        printf("proxy_cpu_s_grant_phase=%.2f\nproxy_cpu_us_per_waiter=%.1f\n",
               (double)(cpu1 - cpu0) / (double)hz,
               granted ? (double)(cpu1 - cpu0) * 1e6 / (double)hz / (double)granted : 0.0);
    printf("fifo_violations=%ld\ntoken_order_inversions=%ld\n", violations, order_mismatch);
    printf("holder_token=%" PRId64 "\n", clients[0].token);
    printf("release_mono_ns=%" PRIu64 "\nlast_grant_mono_ns=%" PRIu64 "\n", t_release,
           t_all_granted);
    if (tokens_file) {
        FILE *f = fopen(tokens_file, "w");
        if (!f)
            die("cannot write %s: %s", tokens_file, strerror(errno));
        for (long i = 1; i < nclients; i++) {
            const struct client *c = &clients[i];
            bool ok = c->state == ST_DONE && c->t_grant;
            fprintf(f, "%ld %" PRId64 " %" PRIu64 "\n", i, ok ? c->token : (int64_t)-1,
                    ok ? c->t_grant : (uint64_t)0);
        }
        if (fclose(f) != 0)
            die("cannot write %s: %s", tokens_file, strerror(errno));
    }

    for (long i = 0; i < nclients; i++)
        PQfinish(clients[i].conn);
    free(clients);
    free(admin_buf);
    close(ep);
    if (admin_fd >= 0)
        close(admin_fd);
    return failures || granted != nw || violations ? 1 : 0;
}
