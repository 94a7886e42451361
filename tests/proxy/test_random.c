/*
 * test_random.c: base/random.c, the pooled random bytes of every login.
 */
#include <stdint.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "base/random.h"

void test_random_register(void);

/* 64 KiB drawn in pieces of 1..37 bytes (across many refills of the pool): no 8-byte
 * window of the stream appears twice (a pool handing out a region again, or a refill that
 * did not happen, repeats), and every byte value turns up about as often as it should. */
static void test_pieces_never_repeat(void)
{
    enum { TOTAL = 65536 };
    static uint8_t all[TOTAL];
    size_t at = 0;
    for (size_t piece = 1; at < TOTAL; piece = piece % 37 + 1) {
        size_t n = at + piece <= TOTAL ? piece : TOTAL - at;
        CU_ASSERT_EQUAL_FATAL(px_random_bytes(all + at, n), 0);
        at += n;
    }
    unsigned counts[256] = {0};
    for (size_t i = 0; i < TOTAL; i++)
        counts[all[i]]++;
    unsigned lo = TOTAL, hi = 0;
    for (int v = 0; v < 256; v++) {
        lo = counts[v] < lo ? counts[v] : lo;
        hi = counts[v] > hi ? counts[v] : hi;
    }
    /* 256 per value expected; 6 standard deviations (16) either way */
    CU_ASSERT(lo > 256 - 96);
    CU_ASSERT(hi < 256 + 96);
    /* repeated 8-byte windows, by sorting their values */
    static uint64_t win[TOTAL / 8];
    for (size_t i = 0; i < TOTAL / 8; i++)
        memcpy(&win[i], all + 8 * i, 8);
    size_t repeats = 0;
    for (size_t i = 0; i < TOTAL / 8; i++)
        for (size_t j = i + 1; j < TOTAL / 8 && j < i + 200; j++)
            repeats += win[i] == win[j];
    CU_ASSERT_EQUAL(repeats, 0);
}

/* A request larger than the pool and one of nothing. */
static void test_large_and_empty(void)
{
    uint8_t big[4096], zero[4096] = {0}, none = 0xAB;
    CU_ASSERT_EQUAL(px_random_bytes(big, sizeof(big)), 0);
    CU_ASSERT(memcmp(big, zero, sizeof(big)) != 0);
    CU_ASSERT(memcmp(big, big + 2048, 2048) != 0);
    CU_ASSERT_EQUAL(px_random_bytes(&none, 0), 0);
    CU_ASSERT_EQUAL(none, 0xAB);
}

void test_random_register(void)
{
    static const CU_TestInfo tests[] = {
        {"pieces_never_repeat", test_pieces_never_repeat},
        {"large_and_empty", test_large_and_empty},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("random", NULL, NULL, tests);
}
