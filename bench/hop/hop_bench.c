/*
 * hop_bench.c: what one cross-thread hop costs between two libevent loops (issue 19,
 * docs/design/multicore.md "What a hop costs").
 *
 *   hop_bench [-n round_trips] [-w window] [-p pool_ops] [-u] [mode ...]
 *
 * -u: without libevent's thread support (no evthread_use_pthreads(): bases take no locks),
 * which every mode but evactive can do, since our own queues and doorbells carry the
 * messages; compare `local` with and without it for what libevent's locking costs.
 *
 * A "worker" (the main thread, its own event_base) sends requests of 32 bytes to an
 * "owner" thread (its own event_base), which answers each one through a second queue:
 * the shape of a worker asking a lock-manager thread, or a shared-pool thread, for
 * something and being answered.  With -w 1 (the default) one request is in flight: every
 * round trip puts both loops to sleep and wakes them again, the latency a lone client
 * sees.  With -w 64 up to 64 are in flight: each wake-up finds several messages, the
 * throughput a loaded owner reaches.
 *
 * Modes (each queue is a 1,024-slot ring; the receiver drains it in its callback):
 *   local     both ends on one thread and one base: event_active() on a queue's event,
 *             no thread boundary (what a deferred call costs without threads)
 *   evactive  mutex-protected ring; the sender calls event_active() on the receiver's
 *             event from its own thread (libevent's thread support: the receiving base is
 *             woken through its internal notify eventfd)
 *   eventfd   mutex-protected ring + our own eventfd as doorbell, rung only when the ring
 *             was empty (the receiver drains it to empty)
 *   pipe      the same with a pipe as doorbell
 *   spsc      lock-free single-producer single-consumer ring + eventfd doorbell, rung only
 *             when the receiver has announced it may sleep (a seq_cst flag, Dekker style)
 *   spin      spsc ring, no event loop: the owner polls (sched_yield between empty polls);
 *             the cache-to-cache lower bound, which needs a core of its own
 *   pool      not a hop: T threads take and give back a "server" from one mutex-protected
 *             LIFO of 20 (a shared pool's checkout + checkin), T = 1 and 2, and 2 threads
 *             with a pool each; -p operations per thread
 *   migrate   not a hop: a connected socket's read event moved from one event_base to
 *             another and back (event_del + event_assign + event_add: an epoll_ctl DEL and
 *             ADD each time), what moving a server's socket to another worker costs at the
 *             least (a real move also rebuilds its bufferevent); -n moves
 *   syscall   the CPU of one trivial system call (getppid), the unit both a hop and the
 *             proxy's own work per transaction are mostly made of on Linux; -n calls
 *
 * Reported per mode: round trips per second, latency p50/p99/mean (µs, window 1: the
 * round trip; window > 1: from send to answer, queueing included), process CPU per round
 * trip (both threads, CLOCK_PROCESS_CPUTIME_ID) and the owner thread's CPU per round trip
 * (CLOCK_THREAD_CPUTIME_ID): what a single owner thread would spend per request.
 *
 * Build and run: bench/hop/run.sh (nice'd, a few seconds).  Compare the figures with the
 * proxy's CPU per transaction in bench/README.md, not across machines.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/thread.h>

#define RING      1024u /* slots per queue (a power of two) */
#define STOP_SEQ  UINT64_MAX
#define POOL_SIZE 20

enum mode {
    M_LOCAL,
    M_EVACTIVE,
    M_EVENTFD,
    M_PIPE,
    M_SPSC,
    M_SPIN,
    M_POOL,
    M_MIGRATE,
    M_SYSCALL,
    M__COUNT
};
static const char *const mode_names[M__COUNT] = {"local", "evactive", "eventfd", "pipe",   "spsc",
                                                 "spin",  "pool",     "migrate", "syscall"};

/* One request or answer: 32 bytes, as a small lock request or pool hand-off would be. */
struct msg {
    uint64_t seq;
    uint64_t sent_ns;
    uint64_t arg;
    void *ptr;
};

/* One direction: producer thread -> consumer thread.  Fields written by the producer,
 * by the consumer and by both sit on separate cache lines. */
struct chan {
    enum mode mode;
    struct event_base *base; /* the consumer's */
    struct event *ev;        /* on base: the doorbell fd, or activated by event_active() */
    int fd_r, fd_w;          /* doorbell: eventfd (fd_r == fd_w) or pipe; -1 otherwise */
    void (*deliver)(struct chan *ch, const struct msg *m); /* consumer side, per message */
    void *ctx;

    pthread_mutex_t mu __attribute__((aligned(64)));
    unsigned mhead, mtail; /* mutex-protected ring: indexes under mu */

    _Atomic uint64_t tail __attribute__((aligned(64))); /* spsc: written by the producer */
    _Atomic uint64_t head __attribute__((aligned(64))); /* spsc: written by the consumer */
    _Atomic int armed __attribute__((aligned(64)));     /* spsc: the consumer may sleep */

    struct msg ring[RING] __attribute__((aligned(64)));
    uint64_t bells; /* doorbells rung (producer side) */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "hop_bench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void ring_bell(struct chan *ch)
{
    ch->bells++;
    if (ch->mode == M_LOCAL || ch->mode == M_EVACTIVE) {
        event_active(ch->ev, EV_READ, 0);
        return;
    }
    if (ch->mode == M_SPIN)
        return;
    ssize_t n;
    if (ch->mode == M_PIPE) {
        char b = 1;
        n = write(ch->fd_w, &b, 1);
    } else {
        uint64_t one = 1;
        n = write(ch->fd_w, &one, sizeof(one));
    }
    if (n < 0 && errno != EAGAIN)
        die("doorbell write");
}

static void clear_bell(struct chan *ch)
{
    if (ch->fd_r < 0)
        return;
    char buf[256];
    if (read(ch->fd_r, buf, ch->mode == M_PIPE ? sizeof(buf) : sizeof(uint64_t)) < 0 &&
        errno != EAGAIN)
        die("doorbell read");
}

/* Producer side: queue m; ring when the consumer may be asleep.  The ring never fills:
 * at most `window` requests and answers are in flight, and window <= RING / 2. */
static void chan_send(struct chan *ch, const struct msg *m)
{
    if (ch->mode == M_SPSC || ch->mode == M_SPIN) {
        uint64_t t = atomic_load_explicit(&ch->tail, memory_order_relaxed);
        ch->ring[t & (RING - 1)] = *m;
        atomic_store_explicit(&ch->tail, t + 1, memory_order_release);
        if (ch->mode == M_SPIN)
            return;
        /* Pairs with the consumer's store of armed and its fence before re-reading tail:
         * either it sees the new tail or we see armed == 1. */
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load_explicit(&ch->armed, memory_order_relaxed) &&
            atomic_exchange(&ch->armed, 0))
            ring_bell(ch);
        return;
    }
    pthread_mutex_lock(&ch->mu);
    bool was_empty = ch->mhead == ch->mtail;
    ch->ring[ch->mtail++ & (RING - 1)] = *m;
    pthread_mutex_unlock(&ch->mu);
    if (was_empty)
        ring_bell(ch);
}

/* Consumer side: deliver everything queued; returns how many. */
static size_t chan_drain(struct chan *ch)
{
    size_t n = 0;
    if (ch->mode == M_SPSC || ch->mode == M_SPIN) {
        for (;;) {
            uint64_t h = atomic_load_explicit(&ch->head, memory_order_relaxed);
            uint64_t t = atomic_load_explicit(&ch->tail, memory_order_acquire);
            for (; h != t; h++, n++) {
                struct msg m = ch->ring[h & (RING - 1)];
                atomic_store_explicit(&ch->head, h + 1, memory_order_release);
                ch->deliver(ch, &m);
            }
            if (ch->mode == M_SPIN)
                return n;
            atomic_store(&ch->armed, 1);
            atomic_thread_fence(memory_order_seq_cst);
            if (atomic_load_explicit(&ch->tail, memory_order_acquire) == h)
                return n; /* empty with armed set: the producer rings for the next one */
            atomic_store(&ch->armed, 0);
        }
    }
    struct msg batch[64];
    for (;;) {
        size_t k = 0;
        pthread_mutex_lock(&ch->mu);
        while (ch->mhead != ch->mtail && k < 64)
            batch[k++] = ch->ring[ch->mhead++ & (RING - 1)];
        pthread_mutex_unlock(&ch->mu);
        if (!k)
            return n;
        for (size_t i = 0; i < k; i++)
            ch->deliver(ch, &batch[i]);
        n += k;
    }
}

static void chan_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct chan *ch = arg;
    clear_bell(ch);
    chan_drain(ch);
}

static struct chan *chan_new(enum mode mode, struct event_base *base)
{
    struct chan *ch = aligned_alloc(64, sizeof(*ch));
    if (!ch)
        die("aligned_alloc");
    memset(ch, 0, sizeof(*ch));
    ch->mode = mode;
    ch->base = base;
    ch->fd_r = ch->fd_w = -1;
    pthread_mutex_init(&ch->mu, NULL);
    atomic_init(&ch->tail, 0);
    atomic_init(&ch->head, 0);
    atomic_init(&ch->armed, 1);
    if (mode == M_EVENTFD || mode == M_SPSC) {
        ch->fd_r = ch->fd_w = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (ch->fd_r < 0)
            die("eventfd");
    } else if (mode == M_PIPE) {
        int p[2];
        if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0)
            die("pipe2");
        ch->fd_r = p[0];
        ch->fd_w = p[1];
    }
    if (mode != M_SPIN) {
        ch->ev = event_new(base, ch->fd_r, EV_READ | EV_PERSIST, chan_cb, ch);
        if (!ch->ev || (ch->fd_r >= 0 && event_add(ch->ev, NULL) < 0))
            die("event_new/event_add");
    }
    return ch;
}

static void chan_free(struct chan *ch)
{
    if (ch->ev)
        event_free(ch->ev);
    if (ch->fd_r >= 0)
        close(ch->fd_r);
    if (ch->fd_w >= 0 && ch->fd_w != ch->fd_r)
        close(ch->fd_w);
    pthread_mutex_destroy(&ch->mu);
    free(ch);
}

/* ---- one run: worker (main thread) <-> owner (second thread, or the same one) ---- */

struct run {
    enum mode mode;
    size_t n, window;
    struct event_base *wbase, *obase;
    struct chan *req, *ans; /* worker -> owner, owner -> worker */
    size_t sent, done;
    uint64_t *lat;           /* per round trip, ns */
    uint64_t owner_cpu_ns;   /* owner thread's CPU over its run */
    _Atomic bool owner_stop; /* spin mode */
    pthread_barrier_t go;
};

static void send_next(struct run *r)
{
    struct msg m = {.seq = r->sent++, .sent_ns = now_ns(), .arg = 42, .ptr = r};
    chan_send(r->req, &m);
}

/* Owner: answer each request (what a lock manager would do with it is not measured). */
static void owner_deliver(struct chan *ch, const struct msg *m)
{
    struct run *r = ch->ctx;
    if (m->seq == STOP_SEQ) {
        if (r->mode == M_SPIN)
            atomic_store(&r->owner_stop, true);
        else
            event_base_loopbreak(r->obase);
        return;
    }
    struct msg a = *m;
    a.arg = m->arg + 1;
    chan_send(r->ans, &a);
}

/* Worker: an answer completes a round trip; keep `window` in flight. */
static void worker_deliver(struct chan *ch, const struct msg *m)
{
    struct run *r = ch->ctx;
    r->lat[m->seq] = now_ns() - m->sent_ns;
    if (++r->done == r->n) {
        if (r->mode != M_SPIN)
            event_base_loopbreak(r->wbase);
        return;
    }
    if (r->sent < r->n)
        send_next(r);
}

static void *owner_main(void *arg)
{
    struct run *r = arg;
    pthread_barrier_wait(&r->go);
    uint64_t c0 = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
    if (r->mode == M_SPIN) {
        unsigned idle = 0;
        while (!atomic_load_explicit(&r->owner_stop, memory_order_relaxed)) {
            if (chan_drain(r->req))
                idle = 0;
            else if (++idle > 64)
                sched_yield();
        }
    } else {
        event_base_loop(r->obase, EVLOOP_NO_EXIT_ON_EMPTY);
    }
    r->owner_cpu_ns = cpu_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void run_hop(enum mode mode, size_t n, size_t window)
{
    struct run r = {.mode = mode, .n = n, .window = window};
    r.lat = calloc(n, sizeof(*r.lat));
    r.wbase = event_base_new();
    r.obase = mode == M_LOCAL ? r.wbase : event_base_new();
    if (!r.lat || !r.wbase || !r.obase)
        die("setup");
    r.req = chan_new(mode, r.obase);
    r.ans = chan_new(mode, r.wbase);
    r.req->deliver = owner_deliver;
    r.ans->deliver = worker_deliver;
    r.req->ctx = r.ans->ctx = &r;
    atomic_init(&r.owner_stop, false);
    pthread_barrier_init(&r.go, NULL, mode == M_LOCAL ? 1 : 2);

    pthread_t owner;
    if (mode != M_LOCAL && pthread_create(&owner, NULL, owner_main, &r) != 0)
        die("pthread_create");
    pthread_barrier_wait(&r.go);

    uint64_t p0 = cpu_ns(CLOCK_PROCESS_CPUTIME_ID), t0 = now_ns();
    for (size_t i = 0; i < window && r.sent < n; i++)
        send_next(&r);
    if (mode == M_SPIN) {
        unsigned idle = 0;
        while (r.done < n) {
            if (chan_drain(r.ans))
                idle = 0;
            else if (++idle > 64)
                sched_yield();
        }
    } else {
        event_base_loop(r.wbase, EVLOOP_NO_EXIT_ON_EMPTY);
    }
    uint64_t wall = now_ns() - t0;
    uint64_t proc_cpu = cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - p0;

    if (mode == M_LOCAL) {
        r.owner_cpu_ns = proc_cpu; /* one thread does both sides */
    } else {
        struct msg stop = {.seq = STOP_SEQ};
        chan_send(r.req, &stop);
        pthread_join(owner, NULL);
    }

    qsort(r.lat, n, sizeof(*r.lat), cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (double)r.lat[i];
    printf("%-9s %6zu %9zu %12.0f %8.2f %8.2f %8.2f %10.2f %10.2f %8.2f\n", mode_names[mode],
           window, n, (double)n * 1e9 / (double)wall, (double)r.lat[n / 2] / 1e3,
           (double)r.lat[n * 99 / 100] / 1e3, sum / (double)n / 1e3,
           (double)proc_cpu / (double)n / 1e3, (double)r.owner_cpu_ns / (double)n / 1e3,
           (double)(r.req->bells + r.ans->bells) / (double)n);

    pthread_barrier_destroy(&r.go);
    chan_free(r.req);
    chan_free(r.ans);
    if (r.obase != r.wbase)
        event_base_free(r.obase);
    event_base_free(r.wbase);
    free(r.lat);
}

/* ---- pool: a shared pool's checkout + checkin under one mutex ---- */

struct pool {
    pthread_mutex_t mu;
    int idle[POOL_SIZE];
    int n_idle;
} __attribute__((aligned(64)));

struct pool_arg {
    struct pool *pool;
    size_t ops;
    pthread_barrier_t *go;
};

static void *pool_main(void *arg)
{
    struct pool_arg *a = arg;
    struct pool *p = a->pool;
    volatile int sink = 0;
    pthread_barrier_wait(a->go);
    for (size_t i = 0; i < a->ops; i++) {
        pthread_mutex_lock(&p->mu);
        int s = p->n_idle ? p->idle[--p->n_idle] : -1; /* LIFO: most recently used */
        pthread_mutex_unlock(&p->mu);
        sink += s; /* the transaction would run here, on the worker's own loop */
        pthread_mutex_lock(&p->mu);
        if (s >= 0)
            p->idle[p->n_idle++] = s;
        pthread_mutex_unlock(&p->mu);
    }
    (void)sink;
    return NULL;
}

static void run_pool_case(const char *label, size_t threads, bool shared, size_t ops)
{
    struct pool *pools = aligned_alloc(64, sizeof(*pools) * threads);
    if (!pools)
        die("aligned_alloc");
    for (size_t i = 0; i < threads; i++) {
        pthread_mutex_init(&pools[i].mu, NULL);
        for (int s = 0; s < POOL_SIZE; s++)
            pools[i].idle[s] = s;
        pools[i].n_idle = POOL_SIZE;
    }
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)threads + 1);
    pthread_t tid[8];
    struct pool_arg args[8];
    for (size_t i = 0; i < threads; i++) {
        args[i] = (struct pool_arg){.pool = &pools[shared ? 0 : i], .ops = ops, .go = &go};
        if (pthread_create(&tid[i], NULL, pool_main, &args[i]) != 0)
            die("pthread_create");
    }
    uint64_t p0 = cpu_ns(CLOCK_PROCESS_CPUTIME_ID), t0 = now_ns();
    pthread_barrier_wait(&go);
    for (size_t i = 0; i < threads; i++)
        pthread_join(tid[i], NULL);
    uint64_t wall = now_ns() - t0;
    uint64_t cpu = cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - p0;
    double total = (double)ops * (double)threads;
    /* cpu/wall says how much the threads really ran at the same time on this machine:
     * contention shows only where it is near the number of threads. */
    printf("pool      %-26s %11.0f pairs/s %7.1f ns CPU/pair  cpu/wall %.2f\n", label,
           total * 1e9 / (double)wall, (double)cpu / total, (double)cpu / (double)wall);
    pthread_barrier_destroy(&go);
    for (size_t i = 0; i < threads; i++)
        pthread_mutex_destroy(&pools[i].mu);
    free(pools);
}

static void run_pool(size_t ops)
{
    run_pool_case("1 thread, 1 pool", 1, true, ops);
    run_pool_case("2 threads, 1 shared pool", 2, true, ops);
    run_pool_case("2 threads, 1 pool each", 2, false, ops);
}

/* ---- migrate: a socket's event moved between two bases ---- */

static void noop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

static void run_migrate(size_t n)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair");
    struct event_base *b[2] = {event_base_new(), event_base_new()};
    if (!b[0] || !b[1])
        die("event_base_new");
    struct event ev;
    if (event_assign(&ev, b[0], sv[0], EV_READ | EV_PERSIST, noop_cb, NULL) < 0 ||
        event_add(&ev, NULL) < 0)
        die("event_assign");
    uint64_t c0 = cpu_ns(CLOCK_PROCESS_CPUTIME_ID), t0 = now_ns();
    for (size_t i = 1; i <= n; i++) {
        event_del(&ev);
        if (event_assign(&ev, b[i & 1], sv[0], EV_READ | EV_PERSIST, noop_cb, NULL) < 0 ||
            event_add(&ev, NULL) < 0)
            die("event_assign");
    }
    uint64_t wall = now_ns() - t0, cpu = cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - c0;
    printf("migrate   %zu moves (%s): %.2f us CPU per move, %.2f us wall\n", n,
           event_base_get_method(b[0]), (double)cpu / (double)n / 1e3,
           (double)wall / (double)n / 1e3);
    event_del(&ev);
    event_base_free(b[0]);
    event_base_free(b[1]);
    close(sv[0]);
    close(sv[1]);
}

/* ---- syscall: what one round trip into the kernel costs here ---- */

static void run_syscall(size_t n)
{
    uint64_t c0 = cpu_ns(CLOCK_PROCESS_CPUTIME_ID);
    for (size_t i = 0; i < n; i++)
        (void)syscall(SYS_getppid);
    uint64_t cpu = cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - c0;
    printf("syscall   %zu getppid: %.3f us CPU per call\n", n, (double)cpu / (double)n / 1e3);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: hop_bench [-n round_trips] [-w window (1..%u)] [-p pool_ops] [-u] "
            "[local|evactive|eventfd|pipe|spsc|spin|pool|migrate|syscall ...]\n",
            RING / 2);
    exit(2);
}

int main(int argc, char **argv)
{
    size_t n = 20000, window = 1, pool_ops = 2000000;
    int opt;
    bool unlocked = false;
    while ((opt = getopt(argc, argv, "n:w:p:u")) != -1) {
        switch (opt) {
        case 'n': n = strtoul(optarg, NULL, 10); break;
        case 'w': window = strtoul(optarg, NULL, 10); break;
        case 'p': pool_ops = strtoul(optarg, NULL, 10); break;
        case 'u': unlocked = true; break;
        default: usage();
        }
    }
    if (n < 100 || window < 1 || window > RING / 2 || pool_ops < 1)
        usage();
    if (!unlocked && evthread_use_pthreads() < 0) {
        fprintf(stderr, "hop_bench: evthread_use_pthreads failed\n");
        return 1;
    }

    bool want[M__COUNT] = {false};
    bool any = false;
    for (int i = optind; i < argc; i++) {
        int m = 0;
        while (m < M__COUNT && strcmp(argv[i], mode_names[m]) != 0)
            m++;
        if (m == M__COUNT)
            usage();
        want[m] = any = true;
    }
    if (!any)
        for (int m = 0; m < M__COUNT; m++)
            want[m] = m != M_SPIN; /* spin needs a core of its own: ask for it */
    if (unlocked)
        want[M_EVACTIVE] = false; /* needs libevent's thread support */

    bool header = false;
    for (int m = 0; m < M_POOL; m++) {
        if (!want[m])
            continue;
        if (!header) {
            printf("%-9s %6s %9s %12s %8s %8s %8s %10s %10s %8s\n", "mode", "window", "trips",
                   "trips/s", "p50_us", "p99_us", "mean_us", "cpu_us/rt", "owner_us", "bells/rt");
            header = true;
        }
        run_hop((enum mode)m, n, window);
    }
    if (want[M_POOL])
        run_pool(pool_ops);
    if (want[M_MIGRATE])
        run_migrate(n);
    if (want[M_SYSCALL])
        run_syscall(n);
    return 0;
}
