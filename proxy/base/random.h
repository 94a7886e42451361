/*
 * random.h: cryptographically strong random bytes for what every login draws (the SCRAM
 * nonce, the cancel key, the md5 salt), from OpenSSL's DRBG through a small pool.
 *
 * A RAND_bytes call costs about 6,000 instructions whatever its size (locking, fork and
 * reseed checks, one AES-CTR DRBG step): two per login were a tenth of a plain SCRAM
 * login's CPU in pgwarden (callgrind).  One call now fills 512 bytes, which serve about
 * 20 logins.  Bytes handed out are wiped from the pool at once, so nothing drawn stays
 * in memory after it is used; the pool is per thread and is not for use across fork().
 */
#ifndef PGW_PROXY_BASE_RANDOM_H
#define PGW_PROXY_BASE_RANDOM_H

#include <stddef.h>

/* Fills buf with n random bytes; 0, or -1 when OpenSSL's DRBG fails (buf is then not
 * to be used). */
int px_random_bytes(void *buf, size_t n);

#endif
