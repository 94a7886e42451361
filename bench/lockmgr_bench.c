/*
 * lockmgr_bench.c: micro-benchmarks of the lock manager (issue 4 targets).
 *
 *   lockmgr_bench [scale [group]]   scale 1 (default) = full size; e.g. 0.1 for a quick run;
 *                                   group: run only uncontended, memory, chain, queue,
 *                                   random (the random-layout chain) or fan
 *
 * 1. uncontended acquire + release, ns per pair (target <= 200 ns): a new key each time
 *    (key created and freed) and the same key again and again;
 * 2. memory per held lock with 10^6 locks held (target <= 256 bytes), measured with
 *    mallinfo2() so malloc overhead and the hash table are included;
 * 3. time of an acquire that has to run the deadlock check with 10^4 waiters queued,
 *    p50/p99 (target p99 <= 100 us): a 10^4-owner chain (closing it, or a new waiter at
 *    its end that closes nothing), and one key with 10^4 queued exclusives (a new
 *    waiter that closes nothing, or the holder closing a cycle through the whole queue).
 *    Two harder shapes follow: the same chain with owners and keys created in random
 *    order (in chain order the allocator lays the chain out sequentially, which flatters
 *    any pointer walk), and one key read by 10^4 owners that each wait for another key
 *    (the search walks a holder list instead of using the one-holder record).
 */
#include <malloc.h>
#include <stdbool.h>
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

/* The p-th percentile of s[0..n) (sorts s). */
static uint64_t percentile(uint64_t *s, size_t n, int p)
{
    qsort(s, n, sizeof(*s), cmp_u64);
    return s[n * (size_t)p / 100];
}

static void report(const char *what, uint64_t *s, size_t n)
{
    qsort(s, n, sizeof(*s), cmp_u64);
    printf("deadlock check, %s: p50 %.1f us, p99 %.1f us, max %.1f us (%zu samples)  "
           "[target p99 <= 100]\n",
           what, (double)s[n / 2] / 1e3, (double)s[n * 99 / 100] / 1e3, (double)s[n - 1] / 1e3, n);
}

/* A fixed-seed shuffle of p[0..n-1] (reproducible runs). */
static void shuffle(size_t *p, size_t n, uint64_t *rng)
{
    for (size_t i = n; i > 1; i--) {
        *rng = *rng * 6364136223846793005u + 1442695040888963407u;
        size_t j = (size_t)(*rng >> 33) % i, t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
}

/* Owner i holds c<i> and waits for c<i+1>: n-1 waiters in one chain.  shuffled: the
 * chain's owners and keys are created, and its waits begin, in random order. */
static void bench_chain(size_t n, size_t samples, bool shuffled)
{
    struct lockmgr *lm = lockmgr_new(NULL);
    struct lockmgr_owner **o = malloc((n + 2) * sizeof(*o));
    size_t *perm = malloc(n * sizeof(*perm)), *order = malloc(n * sizeof(*order));
    char key[32];
    uint64_t tok, rng = 42;
    for (size_t i = 0; i < n; i++)
        perm[i] = order[i] = i;
    if (shuffled) {
        shuffle(perm, n, &rng);
        shuffle(order, n, &rng);
    }
    for (size_t i = 0; i < n; i++) /* o[perm[i]] is the i-th owner created */
        o[perm[i]] = lockmgr_owner_new(lm, perm[i], NULL, NULL);
    o[n] = lockmgr_owner_new(lm, n, NULL, NULL);
    o[n + 1] = lockmgr_owner_new(lm, n + 1, NULL, NULL);
    for (size_t j = 0; j < n; j++) {
        size_t i = order[j];
        int len = snprintf(key, sizeof(key), "c%zu", i);
        check(lockmgr_acquire(lm, o[i], key, (size_t)len, X, SESS, 0, 1, &tok), LOCKMGR_OK, "");
    }
    for (size_t j = 0; j < n; j++) {
        size_t i = order[j];
        if (i + 1 == n)
            continue;
        int len = snprintf(key, sizeof(key), "c%zu", i + 1);
        check(lockmgr_acquire(lm, o[i], key, (size_t)len, X, SESS, 0, 1, &tok), LOCKMGR_WAITING,
              "chain");
    }
    free(perm);
    free(order);
    const char *tag = shuffled ? ", random layout" : "";
    char what[160];
    uint64_t *s = malloc(samples * sizeof(*s)), *d = malloc(samples * sizeof(*d));
    for (size_t i = 0; i < samples; i++) { /* the tail closes the ring: refused */
        uint64_t t0 = now_ns();
        check(lockmgr_acquire(lm, o[n - 1], "c0", 2, X, SESS, 0, 2, &tok), LOCKMGR_DEADLOCK,
              "close");
        uint64_t t1 = now_ns();
        /* what a bounded error DETAIL reads: the first 16 edges */
        const struct lockmgr_cycle *cy = lockmgr_last_cycle_head(lm, 16);
        d[i] = now_ns() - t1;
        s[i] = t1 - t0;
        if (cy->n != n || cy->described < 16 || cy->edges[0].blocker_id != 0) {
            fprintf(stderr, "close: wrong cycle (%zu edges)\n", cy->n);
            exit(1);
        }
    }
    snprintf(what, sizeof(what), "closing a 10^4-owner cycle%s", tag);
    report(what, s, samples);
    printf("  then describing its first 16 edges (lockmgr_last_cycle_head): p50 %.2f us, "
           "p99 %.2f us\n",
           (double)percentile(d, samples, 50) / 1e3, (double)percentile(d, samples, 99) / 1e3);
    /* A caller that describes all 10^4 edges pays for it, and the next search finds the
     * owners it read, not its own records, in the cache. */
    size_t few = samples / 10 ? samples / 10 : 1;
    for (size_t i = 0; i < few; i++) {
        uint64_t t0 = now_ns();
        check(lockmgr_acquire(lm, o[n - 1], "c0", 2, X, SESS, 0, 2, &tok), LOCKMGR_DEADLOCK,
              "close");
        uint64_t t1 = now_ns();
        const struct lockmgr_cycle *cy = lockmgr_last_cycle(lm);
        d[i] = now_ns() - t1;
        s[i] = t1 - t0;
        if (cy->described != n || cy->edges[n - 1].blocker_id != (uint64_t)(n - 1)) {
            fprintf(stderr, "close: wrong cycle (%zu edges)\n", cy->n);
            exit(1);
        }
    }
    printf("  describing all of them (lockmgr_last_cycle) after each: describe p50 %.1f us, "
           "p99 %.1f us; the check itself then p50 %.1f us, p99 %.1f us\n",
           (double)percentile(d, few, 50) / 1e3, (double)percentile(d, few, 99) / 1e3,
           (double)percentile(s, few, 50) / 1e3, (double)percentile(s, few, 99) / 1e3);
    free(d);
    for (size_t i = 0; i < samples; i++) { /* a newcomer waits at the head: no cycle */
        uint64_t t0 = now_ns();
        check(lockmgr_acquire(lm, o[n], "c0", 2, X, SESS, 0, 2, &tok), LOCKMGR_WAITING, "wait");
        s[i] = now_ns() - t0;
        check(lockmgr_cancel_wait(lm, o[n], 2), LOCKMGR_OK, "cancel");
    }
    snprintf(what, sizeof(what),
             "waiting behind a 10^4-owner chain (nobody waits for the newcomer)%s", tag);
    report(what, s, samples);
    /* the newcomer holds x and o[n+1] waits for it: the search must walk the whole chain */
    check(lockmgr_acquire(lm, o[n], "x", 1, X, SESS, 0, 1, &tok), LOCKMGR_OK, "x");
    check(lockmgr_acquire(lm, o[n + 1], "x", 1, X, SESS, 0, 1, &tok), LOCKMGR_WAITING, "x");
    for (size_t i = 0; i < samples; i++) {
        uint64_t t0 = now_ns();
        check(lockmgr_acquire(lm, o[n], "c0", 2, X, SESS, 0, 2, &tok), LOCKMGR_WAITING, "wait");
        s[i] = now_ns() - t0;
        check(lockmgr_cancel_wait(lm, o[n], 2), LOCKMGR_OK, "cancel");
    }
    snprintf(what, sizeof(what), "waiting behind a 10^4-owner chain (full search, no cycle)%s",
             tag);
    report(what, s, samples);
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

/*
 * r[i] (i < n) holds "fan" in read mode and waits for f<i>, held by h[i].  A newcomer x
 * that holds z (y waits for it) asks for "fan" exclusive: the search walks the n readers,
 * each waiting, and finds no cycle.  Then h[0] also waits for z, and x's request closes
 * x -> r[0] -> h[0] -> x; r[0]'s hold is the oldest, so it is walked last.
 */
static void bench_fan(size_t n, size_t samples)
{
    struct lockmgr *lm = lockmgr_new(NULL);
    struct lockmgr_owner **r = malloc(n * sizeof(*r)), **h = malloc(n * sizeof(*h));
    struct lockmgr_owner *x = lockmgr_owner_new(lm, 2 * n, NULL, NULL);
    struct lockmgr_owner *y = lockmgr_owner_new(lm, 2 * n + 1, NULL, NULL);
    char key[32];
    uint64_t tok;
    for (size_t i = 0; i < n; i++) {
        r[i] = lockmgr_owner_new(lm, i, NULL, NULL);
        h[i] = lockmgr_owner_new(lm, n + i, NULL, NULL);
        int len = snprintf(key, sizeof(key), "f%zu", i);
        check(lockmgr_acquire(lm, h[i], key, (size_t)len, X, SESS, 0, 1, &tok), LOCKMGR_OK, "");
        check(lockmgr_acquire(lm, r[i], "fan", 3, LOCKMGR_READ, SESS, 0, 1, &tok), LOCKMGR_OK,
              "fan");
        check(lockmgr_acquire(lm, r[i], key, (size_t)len, X, SESS, 0, 1, &tok), LOCKMGR_WAITING,
              "fan wait");
    }
    check(lockmgr_acquire(lm, x, "z", 1, X, SESS, 0, 1, &tok), LOCKMGR_OK, "z");
    check(lockmgr_acquire(lm, y, "z", 1, X, SESS, 0, 1, &tok), LOCKMGR_WAITING, "z");
    uint64_t *s = malloc(samples * sizeof(*s));
    for (size_t i = 0; i < samples; i++) {
        uint64_t t0 = now_ns();
        check(lockmgr_acquire(lm, x, "fan", 3, X, SESS, 0, 2, &tok), LOCKMGR_WAITING, "wait");
        s[i] = now_ns() - t0;
        check(lockmgr_cancel_wait(lm, x, 2), LOCKMGR_OK, "cancel");
    }
    report("one key read by 10^4 owners that each wait elsewhere (full search, no cycle)", s,
           samples);
    check(lockmgr_acquire(lm, h[0], "z", 1, X, SESS, 0, 1, &tok), LOCKMGR_WAITING, "h0");
    for (size_t i = 0; i < samples; i++) {
        uint64_t t0 = now_ns();
        check(lockmgr_acquire(lm, x, "fan", 3, X, SESS, 0, 2, &tok), LOCKMGR_DEADLOCK, "close");
        s[i] = now_ns() - t0;
    }
    report("one key read by 10^4 owners that each wait elsewhere (closing a cycle)", s, samples);
    free(s);
    free(r);
    free(h);
    lockmgr_free(lm);
}

static const char *only; /* run one group (for perf and cachegrind), NULL: all */

static bool run(const char *group)
{
    return !only || strcmp(only, group) == 0;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        scale = atof(argv[1]);
    if (scale <= 0)
        scale = 1;
    if (argc > 2)
        only = argv[2];
    size_t n = scaled(10000), samples = scaled(20000);
    if (run("uncontended"))
        bench_uncontended();
    if (run("memory"))
        bench_memory();
    if (run("chain"))
        bench_chain(n, samples, false);
    if (run("queue"))
        bench_queue(n, samples);
    if (run("random"))
        bench_chain(n, samples, true);
    if (run("fan"))
        bench_fan(n, samples);
    return 0;
}
