/*
 * sqltext.h: texts for the tests of the statement path's SQL readers (test_sqllex.c,
 * test_sqlscan.c): seeded random texts and large repeated ones, each in a buffer of
 * exactly its length where the sanitizer build can see a read past it.
 */
#ifndef PGW_TESTS_PROXY_SQLTEXT_H
#define PGW_TESTS_PROXY_SQLTEXT_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>

/* xorshift64: the next pseudo-random number of *seed (not 0). */
static inline uint64_t sqltext_next(uint64_t *seed)
{
    uint64_t x = *seed;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *seed = x;
}

/* A random text in text[0..size) (size >= 64); returns its length.  Odd rounds: up to 64
 * bytes of anything; even rounds: up to 15 of the nfrags fragments, which pick the texts
 * that switch a lexer's states. */
static inline size_t sqltext_random(uint64_t *seed, int round, const char *const *frags,
                                    size_t nfrags, char *text, size_t size)
{
    size_t len = 0;
    if (round & 1) {
        len = (size_t)(sqltext_next(seed) % 65);
        for (size_t k = 0; k < len; k++)
            text[k] = (char)(sqltext_next(seed) & 0xff);
        return len;
    }
    size_t n = (size_t)(sqltext_next(seed) % 16);
    for (size_t k = 0; k < n; k++) {
        const char *f = frags[sqltext_next(seed) % nfrags];
        size_t fl = strlen(f);
        if (len + fl > size)
            break;
        memcpy(text + len, f, fl);
        len += fl;
    }
    return len;
}

/* prefix + n x piece + suffix in a heap buffer of exactly that size (*len); free() it. */
static inline char *sqltext_repeat(const char *prefix, const char *piece, size_t n,
                                   const char *suffix, size_t *len)
{
    size_t pl = strlen(prefix), il = strlen(piece), sl = strlen(suffix);
    *len = pl + n * il + sl;
    char *buf = malloc(*len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    memcpy(buf, prefix, pl);
    for (size_t i = 0; i < n; i++)
        memcpy(buf + pl + i * il, piece, il);
    memcpy(buf + pl + n * il, suffix, sl);
    return buf;
}

#endif
