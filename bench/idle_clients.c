/*
 * idle_clients.c: opens many client connections to a proxy and keeps them idle, in steps,
 * so that the proxy's memory can be read at each step (bench/idle_memory.sh).
 *
 *   idle_clients -d CONNINFO -n N1[,N2,...] [-c CONNECTS_IN_FLIGHT] [-t TIMEOUT_S]
 *
 * One process, libpq in non-blocking mode, every connection on one epoll set.  For each
 * step the program opens connections (at most -c logins in flight) until N of them are
 * logged in (CONNECTION_OK: the proxy sent ReadyForQuery), prints one line
 *
 *   connected=N failed=F seconds=S
 *
 * and waits for a line (or end of file) on standard input before the next step; the line
 * after the last step closes every connection and the program exits.  Idle means idle: no query is
 * sent, nothing is read once a login is done. A failed login is counted and not replaced; exit
 * status 1 if any failed. The open-files limit is raised to its hard limit first.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

struct conn {
    PGconn *pg;
    int fd;    /* registered with epoll, -1 if none */
    bool done; /* logged in or failed */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int epfd;

/* Registers c's socket for what PQconnectPoll asked (re-registers if it changed). */
static int watch(struct conn *c, PostgresPollingStatusType st)
{
    struct epoll_event ev = {.events = st == PGRES_POLLING_READING ? EPOLLIN : EPOLLOUT,
                             .data.ptr = c};
    int fd = PQsocket(c->pg);
    if (fd < 0)
        return -1;
    if (c->fd >= 0 && c->fd != fd) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        c->fd = -1;
    }
    if (epoll_ctl(epfd, c->fd >= 0 ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) < 0)
        return -1;
    c->fd = fd;
    return 0;
}

static void unwatch(struct conn *c)
{
    if (c->fd >= 0)
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    c->fd = -1;
}

/* Advances c's login; returns 1 when it is over (ok or failed), 0 while in progress. */
static int advance(struct conn *c, int *failed)
{
    PostgresPollingStatusType st = PQconnectPoll(c->pg);
    if (st == PGRES_POLLING_OK || st == PGRES_POLLING_FAILED || watch(c, st) < 0) {
        unwatch(c);
        c->done = true;
        if (st != PGRES_POLLING_OK) {
            if (*failed < 5)
                fprintf(stderr, "idle_clients: login failed: %s", PQerrorMessage(c->pg));
            (*failed)++;
        }
        return 1;
    }
    return 0;
}

static void wait_line(void)
{
    char line[64];
    if (!fgets(line, sizeof(line), stdin))
        return;
}

int main(int argc, char **argv)
{
    const char *conninfo = NULL, *steps = NULL;
    int in_flight_max = 64, timeout_s = 600, opt;
    while ((opt = getopt(argc, argv, "d:n:c:t:")) != -1) {
        switch (opt) {
        case 'd': conninfo = optarg; break;
        case 'n': steps = optarg; break;
        case 'c': in_flight_max = atoi(optarg); break;
        case 't': timeout_s = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: idle_clients -d CONNINFO -n N1[,N2...] [-c N] [-t S]\n");
            return 2;
        }
    }
    if (!conninfo || !steps || in_flight_max < 1) {
        fprintf(stderr, "idle_clients: -d and -n are required\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int max = 0;
    for (const char *p = steps; *p;) {
        int n = atoi(p);
        if (n > max)
            max = n;
        p = strchr(p, ',');
        if (!p)
            break;
        p++;
    }
    struct conn *conns = calloc((size_t)max + 1, sizeof(*conns));
    epfd = epoll_create1(0);
    if (!conns || epfd < 0) {
        perror("idle_clients");
        return 2;
    }
    struct epoll_event evs[256];
    int opened = 0, ok = 0, failed = 0, in_flight = 0;
    double deadline = now_s() + timeout_s;
    for (const char *p = steps; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL) {
        int target = atoi(p);
        double t0 = now_s();
        while (ok + failed < target || in_flight > 0) {
            while (opened < target && in_flight < in_flight_max) {
                struct conn *c = &conns[opened++];
                c->fd = -1;
                c->pg = PQconnectStart(conninfo);
                if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
                    c->done = true;
                    failed++;
                    continue;
                }
                in_flight++;
                if (advance(c, &failed)) {
                    in_flight--;
                    ok += PQstatus(c->pg) == CONNECTION_OK;
                }
            }
            if (in_flight == 0)
                break;
            if (now_s() > deadline) {
                fprintf(stderr, "idle_clients: timed out with %d logins in flight\n", in_flight);
                return 1;
            }
            int n = epoll_wait(epfd, evs, 256, 1000);
            if (n < 0 && errno != EINTR) {
                perror("idle_clients: epoll_wait");
                return 1;
            }
            for (int i = 0; i < n; i++) {
                struct conn *c = evs[i].data.ptr;
                if (!c->done && advance(c, &failed)) {
                    in_flight--;
                    ok += PQstatus(c->pg) == CONNECTION_OK;
                }
            }
        }
        printf("connected=%d failed=%d seconds=%.2f\n", ok, failed, now_s() - t0);
        fflush(stdout);
        wait_line();
    }
    for (int i = 0; i < opened; i++)
        PQfinish(conns[i].pg);
    free(conns);
    return failed ? 1 : 0;
}
