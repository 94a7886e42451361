/*
 * digest.c: the keyed digest of a response stream (retry_int.h, retry/README.md "Replay
 * verification").
 *
 * SipHash-1-3 with 128-bit output, streamed: the state absorbs 8-byte words as bytes
 * arrive, and a digest of everything so far is the finalisation of a copy of the state,
 * so a checkpoint costs four SipRounds, not a restart.  The key is random per process and
 * never leaves it, and no digest is ever shown to anyone: making a different response
 * stream digest the same means guessing a 128-bit PRF output blind.
 */
#include <string.h>

#include "retry/replay.h"
#include "retry_int.h"

static uint64_t key0, key1; /* replay_digest_key() */

void replay_digest_key(const unsigned char key[16])
{
    uint64_t k[2] = {0, 0};
    for (int i = 0; i < 16; i++)
        k[i / 8] |= (uint64_t)key[i] << (8 * (i % 8));
    key0 = k[0];
    key1 = k[1];
}

static inline uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

#define SIPROUND(v0, v1, v2, v3)                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = rotl(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = rotl(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = rotl(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = rotl(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = rotl(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = rotl(v2, 32);                                                                         \
    } while (0)

void replay_hash_init(struct replay_hash *h)
{
    h->v0 = key0 ^ 0x736f6d6570736575ull;
    h->v1 = key1 ^ 0x646f72616e646f6dull ^ 0xee;
    h->v2 = key0 ^ 0x6c7967656e657261ull;
    h->v3 = key1 ^ 0x7465646279746573ull;
    h->tail = 0;
    h->len = 0;
}

static inline void absorb(struct replay_hash *h, uint64_t m)
{
    uint64_t v0 = h->v0, v1 = h->v1, v2 = h->v2, v3 = h->v3;
    v3 ^= m;
    SIPROUND(v0, v1, v2, v3);
    v0 ^= m;
    h->v0 = v0, h->v1 = v1, h->v2 = v2, h->v3 = v3;
}

static inline uint64_t load_le64(const unsigned char *p)
{
    uint64_t m = 0;
    for (int i = 0; i < 8; i++)
        m |= (uint64_t)p[i] << (8 * i);
    return m;
}

void replay_hash_update(struct replay_hash *h, const void *data, size_t n)
{
    const unsigned char *p = data;
    unsigned have = (unsigned)(h->len & 7);
    h->len += n;
    if (have) {
        while (have < 8 && n > 0) {
            h->tail |= (uint64_t)*p++ << (8 * have++);
            n--;
        }
        if (have < 8)
            return;
        absorb(h, h->tail);
        h->tail = 0;
    }
    for (; n >= 8; p += 8, n -= 8)
        absorb(h, load_le64(p));
    for (unsigned i = 0; i < n; i++)
        h->tail |= (uint64_t)p[i] << (8 * i);
}

void replay_hash_final(const struct replay_hash *h, unsigned char out[REPLAY_DIGEST_BYTES])
{
    uint64_t v0 = h->v0, v1 = h->v1, v2 = h->v2, v3 = h->v3;
    uint64_t b = (h->len << 56) | h->tail;
    v3 ^= b;
    SIPROUND(v0, v1, v2, v3);
    v0 ^= b;
    v2 ^= 0xee;
    SIPROUND(v0, v1, v2, v3);
    SIPROUND(v0, v1, v2, v3);
    SIPROUND(v0, v1, v2, v3);
    uint64_t o[2];
    o[0] = v0 ^ v1 ^ v2 ^ v3;
    v1 ^= 0xdd;
    SIPROUND(v0, v1, v2, v3);
    SIPROUND(v0, v1, v2, v3);
    SIPROUND(v0, v1, v2, v3);
    o[1] = v0 ^ v1 ^ v2 ^ v3;
    for (int i = 0; i < 16; i++)
        out[i] = (unsigned char)(o[i / 8] >> (8 * (i % 8)));
}
