/*
 * base.c: status strings and the seedable generator (xoshiro256** seeded by splitmix64,
 * both by Blackman and Vigna, public domain algorithms).
 *
 * Interface (retry/base.h): retry_strerror, retry_rng_seed, retry_rng_next,
 * retry_rng_between.  See retry/README.md.
 */
#include "retry/base.h"
#include "retry_int.h"

const char *retry_strerror(enum retry_status st)
{
    switch (st) {
    case RETRY_OK: return "ok";
    case RETRY_EXHAUSTED: return "maximum attempts reached";
    case RETRY_NO_BUDGET: return "retry budget exhausted";
    case RETRY_BREAKER_OPEN: return "circuit breaker is not closed";
    case RETRY_OVER_BUFFER: return "transaction exceeds retry_buffer_bytes";
    case RETRY_NOT_REPLAYABLE: return "transaction is not replayable";
    case RETRY_NOMEM: return "out of memory";
    case RETRY_EINVAL: return "invalid argument";
    }
    return "unknown retry status";
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void retry_rng_seed(struct retry_rng *rng, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t retry_rng_next(struct retry_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Lemire's multiply-and-reject: unbiased, one multiplication in the common case. */
uint64_t retry_rng_between(struct retry_rng *rng, uint64_t lo, uint64_t hi)
{
    if (hi <= lo)
        return lo;
    uint64_t range = hi - lo;
    if (range == UINT64_MAX)
        return retry_rng_next(rng);
    uint64_t n = range + 1;
    unsigned __int128 m = (unsigned __int128)retry_rng_next(rng) * n;
    uint64_t low = (uint64_t)m;
    if (low < n) {
        uint64_t threshold = -n % n;
        while (low < threshold) {
            m = (unsigned __int128)retry_rng_next(rng) * n;
            low = (uint64_t)m;
        }
    }
    return lo + (uint64_t)(m >> 64);
}
