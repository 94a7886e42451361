/*
 * test_replay.c: tests of retry/replay.c: the recorder keeps messages and refuses
 * over-budget transactions; the verifier accepts an identical replay however it is
 * chunked, and rejects a replay that differs in any single byte (mutation over every
 * byte position), no later than the next checkpoint.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "retry/retry.h"
#include "retry_int.h"
#include "test_retry.h"

#define RESP_LEN 3000
#define NMSGS    7

/* A transaction: NMSGS client messages, RESP_LEN response bytes split unevenly after
 * each of them. */
struct txn {
    unsigned char resp[RESP_LEN];
    char msgs[NMSGS][32];
    size_t cut[NMSGS + 1]; /* responses to message i: resp[cut[i] .. cut[i+1]) */
};

static void make_txn(struct txn *t, uint64_t seed)
{
    struct retry_rng rng;
    retry_rng_seed(&rng, seed);
    for (size_t i = 0; i < RESP_LEN; i++)
        t->resp[i] = (unsigned char)retry_rng_next(&rng);
    const size_t cuts[NMSGS + 1] = {0, 5, 5, 400, 401, 1999, 2950, RESP_LEN};
    memcpy(t->cut, cuts, sizeof(cuts));
    for (int i = 0; i < NMSGS; i++)
        snprintf(t->msgs[i], sizeof(t->msgs[i]), "Q....SELECT %d;", i);
}

static struct retry_config rec_cfg(size_t buffer, size_t ckpt)
{
    struct retry_config cfg;
    retry_config_defaults(&cfg);
    cfg.retry_buffer_bytes = buffer;
    cfg.retry_checkpoint_bytes = ckpt;
    return cfg;
}

static void record(struct replay_rec *rec, const struct txn *t)
{
    for (int i = 0; i < NMSGS; i++) {
        CU_ASSERT_EQUAL(replay_rec_message(rec, t->msgs[i], strlen(t->msgs[i]) + 1), RETRY_OK);
        size_t n = t->cut[i + 1] - t->cut[i];
        /* forwarded in two pieces, as reads from a socket would be */
        CU_ASSERT_EQUAL(replay_rec_response(rec, t->resp + t->cut[i], n / 3), RETRY_OK);
        CU_ASSERT_EQUAL(replay_rec_response(rec, t->resp + t->cut[i] + n / 3, n - n / 3), RETRY_OK);
    }
}

/* Feeds data in chunks of chunk bytes (0: random sizes); returns the final verdict and
 * the bytes consumed in all. */
static enum replay_verdict feed_chunks(struct replay_verifier *v, const unsigned char *data,
                                       size_t len, size_t chunk, size_t *consumed_total)
{
    struct retry_rng rng;
    enum replay_verdict vd = REPLAY_MORE;
    size_t off = 0, consumed;

    retry_rng_seed(&rng, len);
    *consumed_total = 0;
    while (off < len && vd == REPLAY_MORE) {
        size_t n = chunk ? chunk : 1 + retry_rng_between(&rng, 0, 700);
        n = n < len - off ? n : len - off;
        vd = replay_verify_feed(v, data + off, n, &consumed);
        *consumed_total += consumed;
        off += n;
    }
    return vd;
}

static void test_recorder_keeps_messages(void)
{
    struct retry_config cfg = rec_cfg(1 << 20, 64);
    struct replay_rec *rec = replay_rec_new(&cfg);
    struct txn t;
    size_t len;

    make_txn(&t, 1);
    record(rec, &t);
    CU_ASSERT_TRUE(replay_rec_replayable(rec));
    CU_ASSERT_EQUAL(replay_rec_response_bytes(rec), RESP_LEN);
    const unsigned char *b = replay_rec_bytes(rec, &len);
    size_t off = 0;
    for (int i = 0; i < NMSGS; i++) {
        size_t n = strlen(t.msgs[i]) + 1;
        CU_ASSERT_FATAL(off + n <= len);
        CU_ASSERT_EQUAL(memcmp(b + off, t.msgs[i], n), 0);
        off += n;
    }
    CU_ASSERT_EQUAL(off, len);
    replay_rec_reset(rec);
    replay_rec_bytes(rec, &len);
    CU_ASSERT_EQUAL(len, 0);
    CU_ASSERT_EQUAL(replay_rec_response_bytes(rec), 0);
    replay_rec_free(rec);
    replay_rec_free(NULL);
}

/* Bytes arrive (pending), some are kept, some dropped (taken by the proxy itself), and the
 * transaction is exactly the kept ones, in order; pending bytes survive a reset. */
static void test_pending_kept_and_dropped(void)
{
    struct retry_config cfg = rec_cfg(1 << 20, 64);
    struct replay_rec *rec = replay_rec_new(&cfg);
    size_t len;
    const unsigned char *p;

    CU_ASSERT_EQUAL(replay_rec_input(rec, "aaaBBBcc", 8), RETRY_OK);
    p = replay_rec_pending(rec, &len);
    CU_ASSERT_EQUAL(len, 8);
    CU_ASSERT_EQUAL(memcmp(p, "aaaBBBcc", 8), 0);
    CU_ASSERT_EQUAL(replay_rec_consume(rec, 3), RETRY_OK);
    CU_ASSERT_EQUAL(replay_rec_response(rec, "r1", 2), RETRY_OK);
    replay_rec_drop(rec, 3);                                        /* BBB: not the client's */
    CU_ASSERT_EQUAL(replay_rec_message(rec, "x", 1), RETRY_EINVAL); /* pending in line */
    CU_ASSERT_EQUAL(replay_rec_input(rec, "dd", 2), RETRY_OK);
    p = replay_rec_pending(rec, &len);
    CU_ASSERT_EQUAL(len, 4);
    CU_ASSERT_EQUAL(memcmp(p, "ccdd", 4), 0);
    CU_ASSERT_EQUAL(replay_rec_consume(rec, 3), RETRY_OK);
    p = replay_rec_bytes(rec, &len);
    CU_ASSERT_EQUAL(len, 6);
    CU_ASSERT_EQUAL(memcmp(p, "aaaccd", 6), 0);
    CU_ASSERT_EQUAL(replay_rec_kept_bytes(rec) > 6, true); /* and a checkpoint after "r1" */
    /* a big transaction: its memory goes back at the reset, the pending byte stays */
    unsigned char big[4096];
    memset(big, 'z', sizeof(big));
    for (int i = 0; i < 40; i++) {
        CU_ASSERT_EQUAL(replay_rec_consume(rec, 0), RETRY_OK);
        CU_ASSERT_EQUAL(replay_rec_input(rec, big, sizeof(big)), RETRY_OK);
        p = replay_rec_pending(rec, &len);
        CU_ASSERT_EQUAL(replay_rec_consume(rec, len - 1), RETRY_OK);
        CU_ASSERT_EQUAL(replay_rec_input(rec, "e", 1), RETRY_OK);
        CU_ASSERT_EQUAL(replay_rec_consume(rec, 1), RETRY_OK);
    }
    replay_rec_bytes(rec, &len);
    CU_ASSERT_EQUAL(len, 6 + 40 * (sizeof(big) + 1)); /* one pending byte joins each time */
    replay_rec_reset(rec);
    p = replay_rec_pending(rec, &len);
    CU_ASSERT_EQUAL(len, 1);
    CU_ASSERT_EQUAL(p[0], 'e');
    replay_rec_bytes(rec, &len);
    CU_ASSERT_EQUAL(len, 0);
    CU_ASSERT_EQUAL(replay_rec_kept_bytes(rec), 0);
    CU_ASSERT_EQUAL(replay_rec_consume(rec, 1), RETRY_OK);
    replay_rec_free(rec);
    /* over the buffer: kept bytes are dropped from then on, pending ones stay right */
    cfg.retry_buffer_bytes = 4;
    rec = replay_rec_new(&cfg);
    CU_ASSERT_EQUAL(replay_rec_input(rec, "0123456789", 10), RETRY_OK);
    CU_ASSERT_EQUAL(replay_rec_consume(rec, 3), RETRY_OK);
    CU_ASSERT_EQUAL(replay_rec_consume(rec, 3), RETRY_OVER_BUFFER);
    CU_ASSERT_FALSE(replay_rec_replayable(rec));
    p = replay_rec_pending(rec, &len);
    CU_ASSERT_EQUAL(len, 4);
    CU_ASSERT_EQUAL(memcmp(p, "6789", 4), 0);
    replay_rec_drop(rec, 10);
    replay_rec_pending(rec, &len);
    CU_ASSERT_EQUAL(len, 0);
    replay_rec_free(rec);
}

/* The streamed digest: the same bytes give the same digest however they are split, any
 * other bytes (or another key) a different one. */
static void test_digest_streams(void)
{
    unsigned char data[100], d1[16], d2[16], d3[16];
    for (int i = 0; i < 100; i++)
        data[i] = (unsigned char)(i * 37 + 11);
    struct replay_hash h;
    replay_hash_init(&h);
    replay_hash_update(&h, data, sizeof(data));
    replay_hash_final(&h, d1);
    for (size_t a = 0; a <= sizeof(data); a++) {
        for (size_t b = a; b <= sizeof(data); b += 7) {
            replay_hash_init(&h);
            replay_hash_update(&h, data, a);
            replay_hash_final(&h, d3); /* a checkpoint on the way changes nothing */
            replay_hash_update(&h, data + a, b - a);
            replay_hash_update(&h, data + b, sizeof(data) - b);
            replay_hash_final(&h, d2);
            CU_ASSERT_EQUAL(memcmp(d1, d2, 16), 0);
        }
    }
    /* every prefix length has its own digest (the length is absorbed) */
    unsigned char zeros[16] = {0}, prev[16];
    memset(prev, 0, sizeof(prev));
    for (size_t n = 0; n <= 24; n++) {
        replay_hash_init(&h);
        replay_hash_update(&h, zeros, n < 16 ? n : 16);
        if (n > 16)
            replay_hash_update(&h, zeros, n - 16);
        replay_hash_final(&h, d2);
        CU_ASSERT_NOT_EQUAL(memcmp(d2, prev, 16), 0);
        memcpy(prev, d2, 16);
    }
    /* another key, another digest */
    unsigned char key[16] = {1};
    replay_digest_key(key);
    replay_hash_init(&h);
    replay_hash_update(&h, data, sizeof(data));
    replay_hash_final(&h, d2);
    CU_ASSERT_NOT_EQUAL(memcmp(d1, d2, 16), 0);
    memset(key, 0, sizeof(key));
    replay_digest_key(key);
}

static void test_identical_replay_matches(void)
{
    const size_t ckpts[] = {64, 100, 8192};
    const size_t chunks[] = {RESP_LEN, 1, 0, 64, 999};
    struct txn t;

    make_txn(&t, 2);
    for (unsigned c = 0; c < 3; c++) {
        struct retry_config cfg = rec_cfg(1 << 20, ckpts[c]);
        struct replay_rec *rec = replay_rec_new(&cfg);
        struct replay_verifier *v = replay_verifier_new();
        record(rec, &t);
        for (unsigned k = 0; k < 5; k++) {
            size_t consumed;
            CU_ASSERT_EQUAL_FATAL(replay_verify_begin(v, rec), RETRY_OK);
            CU_ASSERT_EQUAL(feed_chunks(v, t.resp, RESP_LEN, chunks[k], &consumed), REPLAY_MATCH);
            CU_ASSERT_EQUAL(consumed, RESP_LEN);
        }
        replay_verifier_free(v);
        replay_rec_free(rec);
    }
}

static void test_match_reports_new_bytes(void)
{
    struct retry_config cfg = rec_cfg(1 << 20, 64);
    struct replay_rec *rec = replay_rec_new(&cfg);
    struct replay_verifier *v = replay_verifier_new();
    unsigned char longer[RESP_LEN + 50];
    struct txn t;
    size_t consumed;

    make_txn(&t, 3);
    record(rec, &t);
    memcpy(longer, t.resp, RESP_LEN);
    memset(longer + RESP_LEN, 'N', 50);
    CU_ASSERT_EQUAL(replay_verify_begin(v, rec), RETRY_OK);
    CU_ASSERT_EQUAL(replay_verify_feed(v, longer, sizeof(longer), &consumed), REPLAY_MATCH);
    CU_ASSERT_EQUAL(consumed, RESP_LEN); /* the 50 new bytes go to the client */
    CU_ASSERT_EQUAL(replay_verify_feed(v, longer, 10, &consumed), REPLAY_MATCH);
    CU_ASSERT_EQUAL(consumed, 0);

    /* the transaction goes on after a good replay, and can be replayed again */
    CU_ASSERT_EQUAL(replay_rec_response(rec, longer + RESP_LEN, 50), RETRY_OK);
    CU_ASSERT_EQUAL(replay_rec_message(rec, "COMMIT", 7), RETRY_OK);
    CU_ASSERT_EQUAL(replay_verify_begin(v, rec), RETRY_OK);
    CU_ASSERT_EQUAL(feed_chunks(v, longer, sizeof(longer), 0, &consumed), REPLAY_MATCH);
    CU_ASSERT_EQUAL(consumed, sizeof(longer));
    replay_verifier_free(v);
    replay_rec_free(rec);
}

static void test_short_replay_never_matches(void)
{
    struct retry_config cfg = rec_cfg(1 << 20, 64);
    struct replay_rec *rec = replay_rec_new(&cfg);
    struct replay_verifier *v = replay_verifier_new();
    struct txn t;
    size_t consumed;

    make_txn(&t, 4);
    record(rec, &t);
    CU_ASSERT_EQUAL(replay_verify_begin(v, rec), RETRY_OK);
    CU_ASSERT_EQUAL(replay_verify_feed(v, t.resp, RESP_LEN - 1, &consumed), REPLAY_MORE);
    replay_verifier_free(v);
    replay_rec_free(rec);
}

/* For every byte position and two kinds of change, the replay is rejected, the range
 * reported holds the position, and the verdict came no later than the next checkpoint. */
static void mutate_every_byte(size_t ckpt)
{
    struct retry_config cfg = rec_cfg(1 << 20, ckpt);
    struct replay_rec *rec = replay_rec_new(&cfg);
    struct replay_verifier *v = replay_verifier_new();
    unsigned char bad[RESP_LEN];
    unsigned accepted = 0, late = 0, misplaced = 0;
    struct txn t;

    make_txn(&t, 5);
    record(rec, &t);
    for (size_t pos = 0; pos < RESP_LEN; pos++) {
        for (int kind = 0; kind < 2; kind++) {
            size_t consumed;
            uint64_t from, to;
            memcpy(bad, t.resp, RESP_LEN);
            bad[pos] ^= kind ? 0x80 : 0x01;
            CU_ASSERT_EQUAL_FATAL(replay_verify_begin(v, rec), RETRY_OK);
            enum replay_verdict vd = replay_verify_feed(v, bad, RESP_LEN, &consumed);
            accepted += vd != REPLAY_MISMATCH;
            replay_verify_diverged(v, &from, &to);
            misplaced += !(from <= pos && pos < to) || to != consumed;
            late += to - pos > ckpt;
        }
    }
    CU_ASSERT_EQUAL(accepted, 0);
    CU_ASSERT_EQUAL(misplaced, 0);
    CU_ASSERT_EQUAL(late, 0);
    replay_verifier_free(v);
    replay_rec_free(rec);
}

static void test_mutation_every_byte_small_checkpoints(void)
{
    mutate_every_byte(64);
}

static void test_mutation_every_byte_default_checkpoints(void)
{
    mutate_every_byte(8192);
}

static void test_inserted_or_dropped_byte_rejected(void)
{
    struct retry_config cfg = rec_cfg(1 << 20, 64);
    struct replay_rec *rec = replay_rec_new(&cfg);
    struct replay_verifier *v = replay_verifier_new();
    unsigned char bad[RESP_LEN + 1];
    struct txn t;
    size_t consumed;

    make_txn(&t, 6);
    record(rec, &t);
    for (size_t pos = 0; pos < RESP_LEN; pos += 37) {
        memcpy(bad, t.resp, pos);
        bad[pos] = 0x5a;
        memcpy(bad + pos + 1, t.resp + pos, RESP_LEN - pos);
        CU_ASSERT_EQUAL(replay_verify_begin(v, rec), RETRY_OK);
        CU_ASSERT_EQUAL(replay_verify_feed(v, bad, RESP_LEN + 1, &consumed), REPLAY_MISMATCH);
        memcpy(bad, t.resp, pos);
        memcpy(bad + pos, t.resp + pos + 1, RESP_LEN - pos - 1);
        memset(bad + RESP_LEN - 1, 0, 2);
        CU_ASSERT_EQUAL(replay_verify_begin(v, rec), RETRY_OK);
        CU_ASSERT_EQUAL(replay_verify_feed(v, bad, RESP_LEN + 1, &consumed), REPLAY_MISMATCH);
    }
    replay_verifier_free(v);
    replay_rec_free(rec);
}

static void test_over_budget_refused(void)
{
    struct retry_config cfg = rec_cfg(300, 64);
    struct replay_rec *rec = replay_rec_new(&cfg);
    struct replay_verifier *v = replay_verifier_new();
    unsigned char big[400] = {0};

    CU_ASSERT_EQUAL(replay_rec_message(rec, big, 100), RETRY_OK);
    CU_ASSERT_EQUAL(replay_rec_message(rec, big, 400), RETRY_OVER_BUFFER);
    CU_ASSERT_FALSE(replay_rec_replayable(rec));
    CU_ASSERT_EQUAL(replay_rec_message(rec, big, 1), RETRY_OVER_BUFFER); /* stays refused */
    CU_ASSERT_EQUAL(replay_rec_response(rec, big, 1), RETRY_OVER_BUFFER);
    CU_ASSERT_EQUAL(replay_verify_begin(v, rec), RETRY_NOT_REPLAYABLE);
    size_t consumed;
    CU_ASSERT_NOT_EQUAL(replay_verify_feed(v, big, 1, &consumed), REPLAY_MATCH);

    replay_rec_reset(rec); /* next transaction */
    CU_ASSERT_TRUE(replay_rec_replayable(rec));
    CU_ASSERT_EQUAL(replay_rec_message(rec, big, 100), RETRY_OK);
    /* checkpoints count too: a long result set exhausts the buffer */
    enum retry_status st = RETRY_OK;
    for (int i = 0; i < 100 && st == RETRY_OK; i++)
        st = replay_rec_response(rec, big, sizeof(big));
    CU_ASSERT_EQUAL(st, RETRY_OVER_BUFFER);
    CU_ASSERT(replay_rec_kept_bytes(rec) <= 300);
    CU_ASSERT_EQUAL(replay_verify_begin(v, rec), RETRY_NOT_REPLAYABLE);

    replay_rec_reset(rec); /* a zero buffer: nothing is replayable */
    replay_rec_free(rec);
    cfg.retry_buffer_bytes = 0;
    rec = replay_rec_new(&cfg);
    CU_ASSERT_EQUAL(replay_rec_message(rec, "Q", 1), RETRY_OVER_BUFFER);
    replay_rec_free(rec);
    replay_verifier_free(v);
}

static void test_empty_transaction(void)
{
    struct retry_config cfg = rec_cfg(1 << 20, 64);
    struct replay_rec *rec = replay_rec_new(&cfg);
    struct replay_verifier *v = replay_verifier_new();
    size_t consumed;

    CU_ASSERT_EQUAL(replay_rec_message(rec, "Q", 1), RETRY_OK);
    CU_ASSERT_EQUAL(replay_verify_begin(v, rec), RETRY_OK);
    CU_ASSERT_EQUAL(replay_verify_feed(v, "abc", 3, &consumed), REPLAY_MATCH);
    CU_ASSERT_EQUAL(consumed, 0);
    replay_verifier_free(v);
    replay_verifier_free(NULL);
    replay_rec_free(rec);
}

static const CU_TestInfo tests[] = {
    {"recorder_keeps_messages", test_recorder_keeps_messages},
    {"pending_kept_and_dropped", test_pending_kept_and_dropped},
    {"digest_streams", test_digest_streams},
    {"identical_replay_matches", test_identical_replay_matches},
    {"match_reports_new_bytes", test_match_reports_new_bytes},
    {"short_replay_never_matches", test_short_replay_never_matches},
    {"mutation_every_byte_small_checkpoints", test_mutation_every_byte_small_checkpoints},
    {"mutation_every_byte_default_checkpoints", test_mutation_every_byte_default_checkpoints},
    {"inserted_or_dropped_byte_rejected", test_inserted_or_dropped_byte_rejected},
    {"over_budget_refused", test_over_budget_refused},
    {"empty_transaction", test_empty_transaction},
    CU_TEST_INFO_NULL,
};

void register_replay_suite(void)
{
    cunit_add_suite("replay", NULL, NULL, tests);
}
