/*
 * itest_relay.h: a TCP relay between pgwarden and PostgreSQL, in a child process, for the
 * integration tests that make the path to PostgreSQL fail: SIGUSR1 blackholes it, SIGUSR2
 * lets it forward again, relay_stop (SIGKILL) takes every connection with it (TCP FINs, no
 * TLS close_notify: PostgreSQL's host gone).  Header-only, as itest_util.h.
 */
#ifndef PGW_TESTS_INTEGRATION_ITEST_RELAY_H
#define PGW_TESTS_INTEGRATION_ITEST_RELAY_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/*
 * A TCP relay in a child process: listens on 127.0.0.1:port and forwards each connection to
 * 127.0.0.1:target.  SIGUSR1: blackhole, new connections are accepted and never answered
 * (the established ones keep forwarding); SIGUSR2: forward again (held connections are
 * closed).  Dies with the test program (PR_SET_PDEATHSIG).
 */
#define RELAY_MAX 64

static volatile sig_atomic_t relay_blackhole;

static inline void relay_on_signal(int sig)
{
    relay_blackhole = sig == SIGUSR1;
}

static inline void relay_run(int lfd, int target)
{
    int a[RELAY_MAX], b[RELAY_MAX], held[RELAY_MAX];
    int npairs = 0, nheld = 0;
    bool was_blackhole = false;
    for (;;) {
        if (was_blackhole && !relay_blackhole) {
            for (int i = 0; i < nheld; i++)
                close(held[i]);
            nheld = 0;
        }
        was_blackhole = relay_blackhole;
        struct pollfd p[1 + 2 * RELAY_MAX];
        p[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (int i = 0; i < npairs; i++) {
            p[1 + 2 * i] = (struct pollfd){.fd = a[i], .events = POLLIN};
            p[2 + 2 * i] = (struct pollfd){.fd = b[i], .events = POLLIN};
        }
        if (poll(p, (nfds_t)(1 + 2 * npairs), 50) < 0)
            continue; /* EINTR: a mode change */
        for (int i = npairs - 1; i >= 0; i--) {
            bool drop = false;
            for (int k = 0; k < 2 && !drop; k++) {
                struct pollfd *q = &p[1 + 2 * i + k];
                if (!(q->revents & (POLLIN | POLLHUP | POLLERR)))
                    continue;
                char buf[65536];
                ssize_t n = read(q->fd, buf, sizeof(buf));
                int to = k ? a[i] : b[i];
                for (ssize_t off = 0; n > 0 && off < n;) {
                    ssize_t w = send(to, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
                    if (w <= 0) {
                        n = -1;
                        break;
                    }
                    off += w;
                }
                drop = n <= 0;
            }
            if (drop) {
                close(a[i]), close(b[i]);
                a[i] = a[npairs - 1], b[i] = b[npairs - 1];
                npairs--;
            }
        }
        if (!(p[0].revents & POLLIN))
            continue;
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        if (relay_blackhole) {
            if (nheld < RELAY_MAX)
                held[nheld++] = fd;
            else
                close(fd);
            continue;
        }
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)target)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int up = socket(AF_INET, SOCK_STREAM, 0);
        if (npairs == RELAY_MAX || up < 0 || connect(up, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            close(fd);
            if (up >= 0)
                close(up);
            continue;
        }
        a[npairs] = fd, b[npairs] = up, npairs++;
    }
}

/* Starts the relay; its pid, the port in *port; -1 on failure. */
static inline pid_t relay_start(int target, int *port)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 64) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &len) < 0) {
        perror("relay");
        if (lfd >= 0)
            close(lfd);
        return -1;
    }
    *port = ntohs(sa.sin_port);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        struct sigaction act = {.sa_handler = relay_on_signal};
        sigaction(SIGUSR1, &act, NULL);
        sigaction(SIGUSR2, &act, NULL);
        relay_run(lfd, target);
        _exit(0);
    }
    close(lfd);
    return pid;
}

static inline void relay_stop(pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

#endif
