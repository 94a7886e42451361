/*
 * hash.h: keyed hashing for tables whose keys clients choose (database and user names,
 * statement texts and names):
 * SipHash-1-3 with a per-process random key, so that nobody can pick names that all land in
 * one bucket and turn each lookup into a list walk.
 */
#ifndef PGW_PROXY_HASH_H
#define PGW_PROXY_HASH_H

#include <stddef.h>
#include <stdint.h>

/* A 128-bit hash key: k0, k1. */
struct px_hash_key {
    uint64_t k0, k1;
};

/* Draws a random key (getrandom; without entropy yet, a weaker key from the clock and
 * addresses, which still hashes correctly). */
void px_hash_key_init(struct px_hash_key *key);

/* SipHash-1-3 of len bytes at p under key. */
uint64_t px_siphash13(const struct px_hash_key *key, const void *p, size_t len);

#endif
