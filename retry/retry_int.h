/*
 * retry_int.h: internals shared by the retry library's files; not visible to other
 * modules (CMake makes this directory PRIVATE).  See retry/README.md.
 */
#ifndef PGW_RETRY_INT_H
#define PGW_RETRY_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef PGW_ASSERTS
#define RETRY_ASSERT(cond) ((cond) ? (void)0 : abort())
#else
#define RETRY_ASSERT(cond) ((void)0)
#endif

#define RETRY_WINDOW_MAX_BUCKETS 20

/*
 * A sliding window of nbuckets time buckets, each holding two counters (a, b), with
 * running sums.  Invariant: sum_a/sum_b equal the sums over all buckets, and the
 * bucket at head covers [head_start_us, head_start_us + bucket_us).  Buckets older than
 * the window are zeroed lazily by retry_window_advance().
 */
struct retry_window {
    uint64_t bucket_us;
    unsigned nbuckets;
    unsigned head;
    bool started;
    uint64_t head_start_us;
    uint64_t sum_a, sum_b;
    uint32_t a[RETRY_WINDOW_MAX_BUCKETS];
    uint32_t b[RETRY_WINDOW_MAX_BUCKETS];
};

/* window_us is split into nbuckets (1..RETRY_WINDOW_MAX_BUCKETS) equal buckets. */
void retry_window_init(struct retry_window *w, uint64_t window_us, unsigned nbuckets);
void retry_window_clear(struct retry_window *w);
/* Moves the window to now_us (earlier times count as the current bucket). */
void retry_window_advance(struct retry_window *w, uint64_t now_us);
/* Advances to now_us and adds da, db to the current bucket. */
void retry_window_add(struct retry_window *w, uint64_t now_us, uint32_t da, uint32_t db);

/* The streamed keyed digest of digest.c (SipHash-1-3, 128-bit output). */
struct replay_hash {
    uint64_t v0, v1, v2, v3;
    uint64_t tail; /* the last len % 8 bytes, little-endian */
    uint64_t len;
};
void replay_hash_init(struct replay_hash *h);
void replay_hash_update(struct replay_hash *h, const void *data, size_t n);
/* The digest of everything absorbed so far; h goes on unchanged. */
void replay_hash_final(const struct replay_hash *h, unsigned char out[16]);

#endif
