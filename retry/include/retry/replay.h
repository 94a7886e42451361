/*
 * retry/replay.h: recording a transaction so that it can be replayed, and verifying that
 * a replay shows the client exactly what it already saw.
 *
 * The recorder keeps the client's bytes of the transaction (up to retry_buffer_bytes,
 * beyond which the transaction is no longer replayable) and a keyed 128-bit digest
 * (SipHash-1-3, retry/README.md) of the response bytes forwarded to the client, with a
 * checkpoint at every boundary between client bytes taken after responses and every
 * retry_checkpoint_bytes of responses.  The verifier, fed the responses of a replay,
 * re-digests them and compares at each checkpoint, so a divergence is reported at the
 * first checkpoint at or after the first differing byte, and the verdict MATCH comes
 * exactly at the last byte the client had seen.
 *
 * Client bytes arrive in two steps, as in a proxy: replay_rec_input() as they are read
 * (pending: not part of the transaction yet, readable with replay_rec_pending() to find
 * message boundaries without a copy of their own), then replay_rec_consume() once they were
 * sent on (part of the transaction) or replay_rec_drop() when they are not the
 * transaction's.
 * See retry/README.md, "Replay verification".
 *
 * Not thread-safe: a recorder belongs to one client connection.
 */
#ifndef PGW_RETRY_REPLAY_H
#define PGW_RETRY_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "retry/base.h"

struct retry_config;

#define REPLAY_DIGEST_BYTES 16

/* The digest's key, once per process before any recorder (16 random bytes; all zero
 * until set).  The library's only global state. */
void replay_digest_key(const unsigned char key[16]);

struct replay_rec;

/* Returns an empty, replayable recorder (free with replay_rec_free) or NULL when out of
 * memory.  cfg is read now (retry_buffer_bytes, retry_checkpoint_bytes) and not kept. */
struct replay_rec *replay_rec_new(const struct retry_config *cfg);
void replay_rec_free(struct replay_rec *rec);

/* Starts a new transaction: forgets its bytes and digests (pending bytes stay), keeps
 * the memory up to 64 KiB, replayable again. */
void replay_rec_reset(struct replay_rec *rec);

/* Client bytes as they arrive (borrowed; copied), pending.  RETRY_NOMEM when out of memory
 * (the recorder is then useless: pending bytes are missing). */
RETRY_WUR enum retry_status replay_rec_input(struct replay_rec *rec, const void *data, size_t len);
/* The pending bytes, oldest first; the pointer is valid until the next call that changes
 * the recorder. */
const unsigned char *replay_rec_pending(const struct replay_rec *rec, size_t *len);
/*
 * The first n pending bytes (at most all of them) are the transaction's next bytes.
 * RETRY_OK, or RETRY_OVER_BUFFER / RETRY_NOMEM after which the transaction is not
 * replayable (the recorder then keeps nothing until replay_rec_reset: consumed bytes are
 * dropped, but its pending bytes stay right).
 */
RETRY_WUR enum retry_status replay_rec_consume(struct replay_rec *rec, size_t n);
/* The first n pending bytes (at most all of them) are dropped: taken by the proxy itself,
 * or sent again in a replay (the transaction has them already). */
void replay_rec_drop(struct replay_rec *rec, size_t n);
/* replay_rec_input + replay_rec_consume of one message, for a recorder without
 * pending bytes (RETRY_EINVAL otherwise). */
RETRY_WUR enum retry_status replay_rec_message(struct replay_rec *rec, const void *msg, size_t len);
/* Digests response bytes (borrowed) as they are forwarded to the client.  Same results as
 * replay_rec_consume(). */
RETRY_WUR enum retry_status replay_rec_response(struct replay_rec *rec, const void *data,
                                                size_t len);

bool replay_rec_replayable(const struct replay_rec *rec);
/* The transaction's client bytes, in order, for the replay; the pointer is valid until the
 * next call that changes the recorder. */
const unsigned char *replay_rec_bytes(const struct replay_rec *rec, size_t *len);
/* Response bytes forwarded so far; bytes kept (client bytes and checkpoints). */
uint64_t replay_rec_response_bytes(const struct replay_rec *rec);
size_t replay_rec_kept_bytes(const struct replay_rec *rec);

enum replay_verdict {
    REPLAY_MORE = 0,     /* consistent so far: feed more */
    REPLAY_MATCH,        /* everything the client saw has been reproduced exactly */
    REPLAY_MISMATCH,     /* the replay differs: give the client the original error */
    REPLAY_VERIFY_ERROR, /* nothing to verify (replay_verify_begin refused): a mismatch */
};

struct replay_verifier;

struct replay_verifier *replay_verifier_new(void);
void replay_verifier_free(struct replay_verifier *v);

/*
 * Starts verifying a replay against rec (borrowed; must stay unchanged until the verdict,
 * though it may keep recording after MATCH).  RETRY_NOT_REPLAYABLE when rec went over its
 * buffer (or failed): the client must get the original error.  Also closes the recording's
 * last checkpoint, which is why rec is not const.
 */
RETRY_WUR enum retry_status replay_verify_begin(struct replay_verifier *v, struct replay_rec *rec);
/*
 * Feeds response bytes of the replay, in order.  *consumed is how many of them belong to
 * what the client already saw: on MATCH the remaining len - *consumed bytes are new and
 * go to the client (and to replay_rec_response).  On MISMATCH, replay_verify_diverged()
 * bounds where.  Once a verdict other than MORE is given, further calls repeat it.
 */
enum replay_verdict replay_verify_feed(struct replay_verifier *v, const void *data, size_t len,
                                       size_t *consumed);
/* After MISMATCH: the response byte range [*from, *to) that holds the first difference. */
void replay_verify_diverged(const struct replay_verifier *v, uint64_t *from, uint64_t *to);

#endif
