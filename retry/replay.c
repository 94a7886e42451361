/*
 * replay.c: the transaction recorder and the replay verifier.
 *
 * Interface (retry/replay.h): replay_rec_new, _free, _reset, _input, _pending, _consume,
 * _drop, _message, _response, _replayable, _bytes, _response_bytes, _kept_bytes;
 * replay_verifier_new, _free, replay_verify_begin, _feed, _diverged.
 *
 * One buffer holds the transaction's client bytes at [0, unit) and the pending bytes at
 * [pend_off, pend_off + pend_len), pend_off >= unit: bytes consumed with keep right after
 * the transaction's end become part of it where they are, without a copy; bytes dropped
 * leave a gap that the next append closes.  The response stream runs through one keyed
 * digest state; checkpoint i is the digest of every response byte before its offset, so
 * each checkpoint commits to the whole prefix.  The verifier recomputes the same over the
 * replay's bytes and compares at the recorded offsets.  See retry/README.md, "Replay
 * verification".
 */
#include <stdlib.h>
#include <string.h>

#include "retry/retry.h"
#include "retry_int.h"

/* What reset keeps of the buffer: a big transaction gives its memory back. */
#define REC_KEEP_BYTES (64 * 1024)

struct replay_ckpt {
    uint64_t offset; /* response bytes before this checkpoint */
    unsigned char digest[REPLAY_DIGEST_BYTES];
};

struct replay_rec {
    size_t limit;      /* retry_buffer_bytes */
    size_t ckpt_bytes; /* retry_checkpoint_bytes */
    bool replayable;

    unsigned char *buf;
    size_t cap;
    size_t unit;               /* the transaction's bytes: [0, unit) */
    size_t pend_off, pend_len; /* pending bytes */
    struct replay_ckpt *ckpts;
    size_t nckpts, ckpts_cap;

    struct replay_hash hash; /* every response byte digested */
    uint64_t seg_start;      /* offset of the last checkpoint */
};

struct replay_verifier {
    struct replay_hash hash;
    const struct replay_rec *rec;
    size_t end;  /* checkpoints to match (rec->nckpts at begin) */
    size_t next; /* next checkpoint to reach */
    uint64_t off;
    uint64_t seg_start;
    enum replay_verdict verdict;
};

/* Grows an array to hold need elements, doubling. */
static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (!q)
        return false;
    *p = q;
    *cap = n;
    return true;
}

static enum retry_status rec_fail(struct replay_rec *rec, enum retry_status st)
{
    rec->replayable = false;
    return st;
}

size_t replay_rec_kept_bytes(const struct replay_rec *rec)
{
    return rec->unit + rec->nckpts * sizeof(struct replay_ckpt);
}

struct replay_rec *replay_rec_new(const struct retry_config *cfg)
{
    struct replay_rec *rec = calloc(1, sizeof(*rec));
    if (!rec)
        return NULL;
    rec->limit = cfg->retry_buffer_bytes;
    rec->ckpt_bytes = cfg->retry_checkpoint_bytes ? cfg->retry_checkpoint_bytes : 1;
    replay_rec_reset(rec);
    return rec;
}

void replay_rec_free(struct replay_rec *rec)
{
    if (!rec)
        return;
    free(rec->buf);
    free(rec->ckpts);
    free(rec);
}

/* Moves the pending bytes right after the transaction's. */
static void compact(struct replay_rec *rec)
{
    if (rec->pend_off > rec->unit && rec->pend_len)
        memmove(rec->buf + rec->unit, rec->buf + rec->pend_off, rec->pend_len);
    rec->pend_off = rec->unit;
}

void replay_rec_reset(struct replay_rec *rec)
{
    rec->unit = 0;
    compact(rec);
    if (rec->cap > REC_KEEP_BYTES && rec->pend_len <= REC_KEEP_BYTES) {
        unsigned char *b = realloc(rec->buf, REC_KEEP_BYTES);
        if (b) {
            rec->buf = b;
            rec->cap = REC_KEEP_BYTES;
        }
    }
    if (rec->ckpts_cap > 64) {
        free(rec->ckpts);
        rec->ckpts = NULL;
        rec->ckpts_cap = 0;
    }
    rec->nckpts = 0;
    rec->seg_start = 0;
    replay_hash_init(&rec->hash);
    rec->replayable = true;
}

enum retry_status replay_rec_input(struct replay_rec *rec, const void *data, size_t len)
{
    if (len == 0)
        return RETRY_OK;
    if (rec->pend_off + rec->pend_len + len > rec->cap) {
        compact(rec);
        if (!grow((void **)&rec->buf, &rec->cap, rec->unit + rec->pend_len + len, 1))
            return rec_fail(rec, RETRY_NOMEM);
    }
    memcpy(rec->buf + rec->pend_off + rec->pend_len, data, len);
    rec->pend_len += len;
    return RETRY_OK;
}

const unsigned char *replay_rec_pending(const struct replay_rec *rec, size_t *len)
{
    *len = rec->pend_len;
    return rec->buf ? rec->buf + rec->pend_off : (const unsigned char *)"";
}

/* Closes the open segment, if it holds any byte, as a checkpoint. */
static enum retry_status rec_checkpoint(struct replay_rec *rec)
{
    if (rec->hash.len == rec->seg_start)
        return RETRY_OK;
    if (replay_rec_kept_bytes(rec) + sizeof(struct replay_ckpt) > rec->limit)
        return rec_fail(rec, RETRY_OVER_BUFFER);
    if (!grow((void **)&rec->ckpts, &rec->ckpts_cap, rec->nckpts + 1, sizeof(*rec->ckpts)))
        return rec_fail(rec, RETRY_NOMEM);
    struct replay_ckpt *c = &rec->ckpts[rec->nckpts++];
    c->offset = rec->hash.len;
    replay_hash_final(&rec->hash, c->digest);
    rec->seg_start = rec->hash.len;
    return RETRY_OK;
}

void replay_rec_drop(struct replay_rec *rec, size_t n)
{
    if (n > rec->pend_len)
        n = rec->pend_len;
    rec->pend_off += n;
    rec->pend_len -= n;
    if (rec->pend_len == 0)
        rec->pend_off = rec->unit;
}

enum retry_status replay_rec_consume(struct replay_rec *rec, size_t n)
{
    if (n > rec->pend_len)
        n = rec->pend_len;
    if (!rec->replayable) {
        replay_rec_drop(rec, n);
        return RETRY_OVER_BUFFER;
    }
    if (n == 0)
        return RETRY_OK;
    enum retry_status st = rec_checkpoint(rec);
    if (st == RETRY_OK && replay_rec_kept_bytes(rec) + n > rec->limit)
        st = rec_fail(rec, RETRY_OVER_BUFFER);
    if (st != RETRY_OK) {
        replay_rec_drop(rec, n);
        return st;
    }
    if (rec->pend_off != rec->unit)
        memmove(rec->buf + rec->unit, rec->buf + rec->pend_off, n);
    rec->unit += n;
    replay_rec_drop(rec, n);
    return RETRY_OK;
}

enum retry_status replay_rec_message(struct replay_rec *rec, const void *msg, size_t len)
{
    if (rec->pend_len)
        return RETRY_EINVAL; /* it would join the pending bytes' place in line */
    if (!rec->replayable)
        return RETRY_OVER_BUFFER;
    enum retry_status st = replay_rec_input(rec, msg, len);
    return st == RETRY_OK ? replay_rec_consume(rec, len) : st;
}

enum retry_status replay_rec_response(struct replay_rec *rec, const void *data, size_t len)
{
    const unsigned char *p = data;

    if (!rec->replayable)
        return RETRY_OVER_BUFFER;
    while (len > 0) {
        uint64_t room = rec->ckpt_bytes - (rec->hash.len - rec->seg_start);
        size_t n = len < room ? len : (size_t)room;
        replay_hash_update(&rec->hash, p, n);
        p += n;
        len -= n;
        if (rec->hash.len - rec->seg_start == rec->ckpt_bytes) {
            enum retry_status st = rec_checkpoint(rec);
            if (st != RETRY_OK)
                return st;
        }
    }
    return RETRY_OK;
}

bool replay_rec_replayable(const struct replay_rec *rec)
{
    return rec->replayable;
}

const unsigned char *replay_rec_bytes(const struct replay_rec *rec, size_t *len)
{
    *len = rec->unit;
    return rec->buf ? rec->buf : (const unsigned char *)"";
}

uint64_t replay_rec_response_bytes(const struct replay_rec *rec)
{
    return rec->hash.len;
}

struct replay_verifier *replay_verifier_new(void)
{
    struct replay_verifier *v = calloc(1, sizeof(*v));
    if (v)
        v->verdict = REPLAY_VERIFY_ERROR;
    return v;
}

void replay_verifier_free(struct replay_verifier *v)
{
    free(v);
}

enum retry_status replay_verify_begin(struct replay_verifier *v, struct replay_rec *rec)
{
    v->rec = NULL;
    v->verdict = REPLAY_VERIFY_ERROR;
    if (!rec->replayable || rec_checkpoint(rec) != RETRY_OK)
        return RETRY_NOT_REPLAYABLE;
    replay_hash_init(&v->hash);
    v->rec = rec;
    v->end = rec->nckpts;
    v->next = 0;
    v->off = v->seg_start = 0;
    v->verdict = v->end == 0 ? REPLAY_MATCH : REPLAY_MORE;
    return RETRY_OK;
}

/* The replay has reached checkpoint v->next: compare. */
static enum replay_verdict verify_checkpoint(struct replay_verifier *v)
{
    const struct replay_ckpt *c = &v->rec->ckpts[v->next];
    unsigned char d[REPLAY_DIGEST_BYTES];

    replay_hash_final(&v->hash, d);
    if (memcmp(d, c->digest, REPLAY_DIGEST_BYTES) != 0)
        return REPLAY_MISMATCH;
    v->next++;
    v->seg_start = v->off;
    return v->next == v->end ? REPLAY_MATCH : REPLAY_MORE;
}

enum replay_verdict replay_verify_feed(struct replay_verifier *v, const void *data, size_t len,
                                       size_t *consumed)
{
    const unsigned char *p = data;

    *consumed = 0;
    while (v->verdict == REPLAY_MORE && len > 0) {
        uint64_t room = v->rec->ckpts[v->next].offset - v->off;
        size_t n = len < room ? len : (size_t)room;
        replay_hash_update(&v->hash, p, n);
        v->off += n;
        p += n;
        len -= n;
        *consumed += n;
        if (v->off == v->rec->ckpts[v->next].offset)
            v->verdict = verify_checkpoint(v);
    }
    return v->verdict;
}

void replay_verify_diverged(const struct replay_verifier *v, uint64_t *from, uint64_t *to)
{
    *from = v->seg_start;
    *to = v->off;
}
