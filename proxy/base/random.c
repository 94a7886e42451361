/*
 * random.c: random bytes through a per-thread pool (see random.h).
 */
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "base/random.h"

#define POOL_SIZE 512

static _Thread_local unsigned char pool[POOL_SIZE];
static _Thread_local size_t pool_left; /* the unused bytes are the last pool_left */

int px_random_bytes(void *buf, size_t n)
{
    unsigned char *out = buf;
    while (n > 0) {
        if (pool_left == 0) {
            if (n >= POOL_SIZE) /* a large request goes straight through */
                return RAND_bytes(out, (int)n) == 1 ? 0 : -1;
            if (RAND_bytes(pool, POOL_SIZE) != 1)
                return -1;
            pool_left = POOL_SIZE;
        }
        size_t take = n < pool_left ? n : pool_left;
        unsigned char *from = pool + POOL_SIZE - pool_left;
        memcpy(out, from, take);
        OPENSSL_cleanse(from, take);
        pool_left -= take;
        out += take;
        n -= take;
    }
    return 0;
}
