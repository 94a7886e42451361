/*
 * test_px_hash.c: tests of proxy/base/hash.c (suite "hash"): SipHash-1-3 is a function of
 * key and bytes only, every length takes the tail path right, and another key moves
 * everything (what makes bucket collisions unpredictable to clients).
 */
#include <stdint.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "base/hash.h"

void test_hash_register(void);

static void test_siphash_deterministic_and_keyed(void)
{
    struct px_hash_key k1 = {1, 2}, k2 = {1, 3};
    uint8_t buf[40];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)i;
    uint64_t seen[41];
    for (size_t len = 0; len <= sizeof buf; len++) {
        uint64_t h = px_siphash13(&k1, buf, len);
        CU_ASSERT_EQUAL(h, px_siphash13(&k1, buf, len));
        CU_ASSERT_NOT_EQUAL(h, px_siphash13(&k2, buf, len));
        for (size_t j = 0; j < len; j++)
            CU_ASSERT_NOT_EQUAL(h, seen[j]); /* a longer prefix is another input */
        seen[len] = h;
    }
    /* one bit anywhere changes the hash */
    uint64_t h = px_siphash13(&k1, buf, sizeof buf);
    for (size_t i = 0; i < sizeof buf; i++) {
        buf[i] ^= 0x10;
        CU_ASSERT_NOT_EQUAL(h, px_siphash13(&k1, buf, sizeof buf));
        buf[i] ^= 0x10;
    }
}

static void test_random_keys_differ(void)
{
    struct px_hash_key a, b;
    px_hash_key_init(&a);
    px_hash_key_init(&b);
    CU_ASSERT(a.k0 != b.k0 || a.k1 != b.k1);
    CU_ASSERT_NOT_EQUAL(px_siphash13(&a, "app", 3), px_siphash13(&b, "app", 3));
}

void test_hash_register(void)
{
    static const CU_TestInfo tests[] = {
        {"siphash_deterministic_and_keyed", test_siphash_deterministic_and_keyed},
        {"random_keys_differ", test_random_keys_differ},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("hash", NULL, NULL, tests);
}
