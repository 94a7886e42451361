/*
 * lockmgr_bench.c: micro-benchmarks of the lock manager (issue 4 targets).
 *
 *   lockmgr_bench [scale]      scale 1 (default) = full size; e.g. 0.1 for a quick run
 *
 * 1. uncontended acquire + release, ns per pair (target <= 200 ns): a new key each time
 *    (key created and freed) and the same key again and again;
 * 2. memory per held lock with 10^6 locks held (target <= 256 bytes), measured with
 *    mallinfo2() so malloc overhead and the hash table are included;
 * 3. time of an acquire that has to run the deadlock check with 10^4 waiters queued,
 *    p50/p99 (target p99 <= 100 us): a 10^4-owner chain (closing it, or a new waiter at
 *    its end that closes nothing), and one key with 10^4 queued exclusives (a new
 *    waiter that closes nothing, or the holder closing a cycle through the whole queue).
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lockmgr/lockmgr.h"

#define X    LOCKMGR_EXCLUSIVE
#define SESS LOCKMGR_SESSION

static double scale = 1.0;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static size_t scaled(size_t n)
{
    size_t v = (size_t)((double)n * scale);
    return v ? v : 1;
}

static void check(enum lockmgr_status got, enum lockmgr_status want, const char *what)
{
    if (got != want) {
        fprintf(stderr, "%s: %s, expected %s\n", what, lockmgr_strerror(got),
                lockmgr_strerror(want));
        exit(1);
    }
}

static int keyfmt(char *buf, size_t i)
{
    return snprintf(buf, 32, "bench:%zu", i);
}

static void bench_uncontended(void)
{
    struct lockmgr *lm = lockmgr_new(NULL);
    struct lockmgr_owner *o = lockmgr_owner_new(lm, 1, NULL, NULL);
    size_t n = scaled(2000000);
    char key[32];
    uint64_t tok;
    int len = keyfmt(key, 42);
    for (int pass = 0; pass < 2; pass++) {
        uint64_t t0 = now_ns();
        for (size_t i = 0; i < n; i++) {
            if (pass == 0)
                len = keyfmt(key, i & 1023);
            check(lockmgr_acquire(lm, o, key, (size_t)len, X, SESS, 0, i, &tok), LOCKMGR_OK,
                  "acquire");
            check(lockmgr_release(lm, o, key, (size_t)len, SESS, i), LOCKMGR_OK, "release");
        }
        double ns = (double)(now_ns() - t0) / (double)n;
        printf("uncontended acquire+release (%s key): %.1f ns/op  [target <= 200]\n",
               pass ? "same" : "varying", ns);
    }
    lockmgr_free(lm);
}

static void bench_memory(void)
{
    size_t nlocks = scaled(1000000), per_owner = 1000;
    size_t nowners = (nlocks + per_owner - 1) / per_owner;
    struct mallinfo2 before = mallinfo2();
    struct lockmgr *lm = lockmgr_new(NULL);
    struct lockmgr_owner **o = malloc(nowners * sizeof(*o));
    size_t owner_array = nowners * sizeof(*o);
    char key[32];
    uint64_t tok;
    for (size_t i = 0; i < nowners; i++)
        o[i] = lockmgr_owner_new(lm, i, NULL, NULL);
    for (size_t i = 0; i < nlocks; i++) {
        int len = keyfmt(key, i);
        check(
            lockmgr_acquire(lm, o[i / per_owner], key, (size_t)len, LOCKMGR_READ, SESS, 0, 1, &tok),
            LOCKMGR_OK, "acquire");
    }
    struct mallinfo2 after = mallinfo2();
    double per = (double)(after.uordblks - before.uordblks - owner_array) / (double)nlocks;
    printf("memory with %zu locks held (%zu owners, keys ~12 bytes): %.1f bytes/lock  "
           "[target <= 256]\n",
           nlocks, nowners, per);
    uint64_t t0 = now_ns();
    lockmgr_free(lm);
    printf("  (freeing them all: %.1f ms)\n", (double)(now_ns() - t0) / 1e6);
    free(o);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void report(const char *what, uint64_t *s, size_t n)
{
    qsort(s, n, sizeof(*s), cmp_u64);
    printf("deadlock check, %s: p50 %.1f us, p99 %.1f us, max %.1f us (%zu samples)  "
           "[target p99 <= 100]\n",
           what, (double)s[n / 2] / 1e3, (double)s[n * 99 / 100] / 1e3, (double)s[n - 1] / 1e3, n);
}

/* Owner i holds c<i> and waits for c<i+1>: n-1 waiters in one chain. */
static void bench_chain(size_t n, size_t samples)
{
    struct lockmgr *lm = lockmgr_new(NULL);
    struct lockmgr_owner **o = malloc((n + 2) * sizeof(*o));
    char key[32];
    uint64_t tok;
    for (size_t i = 0; i <= n + 1; i++)
        o[i] = lockmgr_owner_new(lm, i, NULL, NULL);
    for (size_t i = 0; i < n; i++) {
        int len = snprintf(key, sizeof(key), "c%zu", i);
        check(lockmgr_acquire(lm, o[i], key, (size_t)len, X, SESS, 0, 1, &tok), LOCKMGR_OK, "");
    }
    for (size_t i = 0; i + 1 < n; i++) {
        int len = snprintf(key, sizeof(key), "c%zu", i + 1);
        check(lockmgr_acquire(lm, o[i], key, (size_t)len, X, SESS, 0, 1, &tok), LOCKMGR_WAITING,
              "chain");
    }
    uint64_t *s = malloc(samples * sizeof(*s));
    for (size_t i = 0; i < samples; i++) { /* the tail closes the ring: refused */
        uint64_t t0 = now_ns();
        check(lockmgr_acquire(lm, o[n - 1], "c0", 2, X, SESS, 0, 2, &tok), LOCKMGR_DEADLOCK,
              "close");
        s[i] = now_ns() - t0;
    }
    report("closing a 10^4-owner cycle", s, samples);
    for (size_t i = 0; i < samples; i++) { /* a newcomer waits at the head: no cycle */
        uint64_t t0 = now_ns();
        check(lockmgr_acquire(lm, o[n], "c0", 2, X, SESS, 0, 2, &tok), LOCKMGR_WAITING, "wait");
        s[i] = now_ns() - t0;
        check(lockmgr_cancel_wait(lm, o[n], 2), LOCKMGR_OK, "cancel");
    }
    report("waiting behind a 10^4-owner chain (nobody waits for the newcomer)", s, samples);
    /* the newcomer holds x and o[n+1] waits for it: the search must walk the whole chain */
    check(lockmgr_acquire(lm, o[n], "x", 1, X, SESS, 0, 1, &tok), LOCKMGR_OK, "x");
    check(lockmgr_acquire(lm, o[n + 1], "x", 1, X, SESS, 0, 1, &tok), LOCKMGR_WAITING, "x");
    for (size_t i = 0; i < samples; i++) {
        uint64_t t0 = now_ns();
        check(lockmgr_acquire(lm, o[n], "c0", 2, X, SESS, 0, 2, &tok), LOCKMGR_WAITING, "wait");
        s[i] = now_ns() - t0;
        check(lockmgr_cancel_wait(lm, o[n], 2), LOCKMGR_OK, "cancel");
    }
    report("waiting behind a 10^4-owner chain (full search, no cycle)", s, samples);
    free(s);
    free(o);
    lockmgr_free(lm);
}

/* o[0] holds q exclusive, o[1..n] queue for it; o[n] also holds "tail". */
static void bench_queue(size_t n, size_t samples)
{
    struct lockmgr *lm = lockmgr_new(NULL);
    struct lockmgr_owner **o = malloc((n + 3) * sizeof(*o));
    uint64_t tok;
    for (size_t i = 0; i <= n + 2; i++)
        o[i] = lockmgr_owner_new(lm, i, NULL, NULL);
    check(lockmgr_acquire(lm, o[0], "q", 1, X, SESS, 0, 1, &tok), LOCKMGR_OK, "");
    check(lockmgr_acquire(lm, o[n], "tail", 4, X, SESS, 0, 1, &tok), LOCKMGR_OK, "");
    for (size_t i = 1; i <= n; i++)
        check(lockmgr_acquire(lm, o[i], "q", 1, X, SESS, 0, 1, &tok), LOCKMGR_WAITING, "queue");
    uint64_t *s = malloc(samples * sizeof(*s));
    for (size_t i = 0; i < samples; i++) {
        uint64_t t0 = now_ns();
        check(lockmgr_acquire(lm, o[n + 1], "q", 1, X, SESS, 0, 2, &tok), LOCKMGR_WAITING, "wait");
        s[i] = now_ns() - t0;
        check(lockmgr_cancel_wait(lm, o[n + 1], 2), LOCKMGR_OK, "cancel");
    }
    report("joining one queue of 10^4 exclusives (nobody waits for the newcomer)", s, samples);
    check(lockmgr_acquire(lm, o[n + 1], "y", 1, X, SESS, 0, 1, &tok), LOCKMGR_OK, "y");
    check(lockmgr_acquire(lm, o[n + 2], "y", 1, X, SESS, 0, 1, &tok), LOCKMGR_WAITING, "y");
    for (size_t i = 0; i < samples; i++) {
        uint64_t t0 = now_ns();
        check(lockmgr_acquire(lm, o[n + 1], "q", 1, X, SESS, 0, 2, &tok), LOCKMGR_WAITING, "wait");
        s[i] = now_ns() - t0;
        check(lockmgr_cancel_wait(lm, o[n + 1], 2), LOCKMGR_OK, "cancel");
    }
    report("joining one queue of 10^4 exclusives (full search, no cycle)", s, samples);
    for (size_t i = 0; i < samples; i++) { /* holder -> tail -> soft edges -> holder */
        uint64_t t0 = now_ns();
        check(lockmgr_acquire(lm, o[0], "tail", 4, X, SESS, 0, 2, &tok), LOCKMGR_DEADLOCK, "close");
        s[i] = now_ns() - t0;
    }
    report("closing a cycle through a 10^4 queue", s, samples);
    free(s);
    free(o);
    lockmgr_free(lm);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        scale = atof(argv[1]);
    if (scale <= 0)
        scale = 1;
    bench_uncontended();
    bench_memory();
    size_t n = scaled(10000), samples = scaled(20000);
    bench_chain(n, samples);
    bench_queue(n, samples);
    return 0;
}
