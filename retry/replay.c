/*
 * replay.c: the transaction recorder and the replay verifier.
 *
 * Interface (retry/replay.h): replay_rec_new, _free, _reset, _message, _response,
 * _replayable, _count, _msg, _response_bytes, _kept_bytes; replay_verifier_new, _free,
 * replay_verify_begin, _feed, _diverged.
 *
 * The response stream is cut into segments at checkpoints; segment i's digest is
 * SHA-256(digest(i-1) || bytes of segment i), digest(-1) = 32 zero bytes, so each
 * checkpoint commits to the whole prefix before it.  The verifier recomputes the same
 * chain over the replay's bytes and compares at the recorded offsets.  See retry/README.md,
 * "Replay verification".
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "retry/retry.h"
#include "retry_int.h"

struct rec_msg {
    size_t off, len; /* in buf */
};

struct replay_ckpt {
    uint64_t offset; /* response bytes before this checkpoint */
    unsigned char digest[REPLAY_DIGEST_BYTES];
};

struct replay_rec {
    size_t limit;      /* retry_buffer_bytes */
    size_t ckpt_bytes; /* retry_checkpoint_bytes */
    bool replayable;

    unsigned char *buf; /* client messages, back to back */
    size_t len, cap;
    struct rec_msg *msgs;
    size_t nmsgs, msgs_cap;
    struct replay_ckpt *ckpts;
    size_t nckpts, ckpts_cap;

    EVP_MD *md;
    EVP_MD_CTX *ctx; /* digest of the open segment */
    unsigned char chain[REPLAY_DIGEST_BYTES];
    uint64_t resp_bytes; /* response bytes digested */
    uint64_t seg_start;  /* offset of the open segment = last checkpoint's offset */
};

struct replay_verifier {
    EVP_MD *md;
    EVP_MD_CTX *ctx;
    const struct replay_rec *rec;
    size_t end;  /* checkpoints to match (rec->nckpts at begin) */
    size_t next; /* next checkpoint to reach */
    uint64_t off;
    uint64_t seg_start;
    unsigned char chain[REPLAY_DIGEST_BYTES];
    enum replay_verdict verdict;
};

/* Opens a segment chained to the previous digest. */
static bool seg_begin(EVP_MD_CTX *ctx, const EVP_MD *md, const unsigned char *chain)
{
    return EVP_DigestInit_ex(ctx, md, NULL) == 1 &&
           EVP_DigestUpdate(ctx, chain, REPLAY_DIGEST_BYTES) == 1;
}

static bool seg_end(EVP_MD_CTX *ctx, unsigned char *out)
{
    return EVP_DigestFinal_ex(ctx, out, NULL) == 1;
}

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
    return rec->len + rec->nmsgs * sizeof(struct rec_msg) +
           rec->nckpts * sizeof(struct replay_ckpt);
}

struct replay_rec *replay_rec_new(const struct retry_config *cfg)
{
    struct replay_rec *rec = calloc(1, sizeof(*rec));
    if (!rec)
        return NULL;
    rec->limit = cfg->retry_buffer_bytes;
    rec->ckpt_bytes = cfg->retry_checkpoint_bytes ? cfg->retry_checkpoint_bytes : 1;
    rec->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    rec->ctx = EVP_MD_CTX_new();
    if (!rec->md || !rec->ctx) {
        replay_rec_free(rec);
        return NULL;
    }
    replay_rec_reset(rec);
    return rec;
}

void replay_rec_free(struct replay_rec *rec)
{
    if (!rec)
        return;
    EVP_MD_CTX_free(rec->ctx);
    EVP_MD_free(rec->md);
    free(rec->buf);
    free(rec->msgs);
    free(rec->ckpts);
    free(rec);
}

void replay_rec_reset(struct replay_rec *rec)
{
    rec->len = rec->nmsgs = rec->nckpts = 0;
    rec->resp_bytes = rec->seg_start = 0;
    memset(rec->chain, 0, sizeof(rec->chain));
    rec->replayable = seg_begin(rec->ctx, rec->md, rec->chain);
}

/* Closes the open segment, if it holds any byte, as a checkpoint. */
static enum retry_status rec_checkpoint(struct replay_rec *rec)
{
    if (rec->resp_bytes == rec->seg_start)
        return RETRY_OK;
    if (replay_rec_kept_bytes(rec) + sizeof(struct replay_ckpt) > rec->limit)
        return rec_fail(rec, RETRY_OVER_BUFFER);
    if (!grow((void **)&rec->ckpts, &rec->ckpts_cap, rec->nckpts + 1, sizeof(*rec->ckpts)))
        return rec_fail(rec, RETRY_NOMEM);
    if (!seg_end(rec->ctx, rec->chain) || !seg_begin(rec->ctx, rec->md, rec->chain))
        return rec_fail(rec, RETRY_DIGEST_ERROR);
    struct replay_ckpt *c = &rec->ckpts[rec->nckpts++];
    c->offset = rec->resp_bytes;
    memcpy(c->digest, rec->chain, sizeof(c->digest));
    rec->seg_start = rec->resp_bytes;
    return RETRY_OK;
}

enum retry_status replay_rec_message(struct replay_rec *rec, const void *msg, size_t len)
{
    if (!rec->replayable)
        return RETRY_OVER_BUFFER;
    enum retry_status st = rec_checkpoint(rec);
    if (st != RETRY_OK)
        return st;
    if (replay_rec_kept_bytes(rec) + len + sizeof(struct rec_msg) > rec->limit)
        return rec_fail(rec, RETRY_OVER_BUFFER);
    if (!grow((void **)&rec->buf, &rec->cap, rec->len + len, 1) ||
        !grow((void **)&rec->msgs, &rec->msgs_cap, rec->nmsgs + 1, sizeof(*rec->msgs)))
        return rec_fail(rec, RETRY_NOMEM);
    if (len)
        memcpy(rec->buf + rec->len, msg, len);
    rec->msgs[rec->nmsgs++] = (struct rec_msg){.off = rec->len, .len = len};
    rec->len += len;
    return RETRY_OK;
}

enum retry_status replay_rec_response(struct replay_rec *rec, const void *data, size_t len)
{
    const unsigned char *p = data;

    if (!rec->replayable)
        return RETRY_OVER_BUFFER;
    while (len > 0) {
        uint64_t room = rec->ckpt_bytes - (rec->resp_bytes - rec->seg_start);
        size_t n = len < room ? len : (size_t)room;
        if (EVP_DigestUpdate(rec->ctx, p, n) != 1)
            return rec_fail(rec, RETRY_DIGEST_ERROR);
        rec->resp_bytes += n;
        p += n;
        len -= n;
        if (rec->resp_bytes - rec->seg_start == rec->ckpt_bytes) {
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

size_t replay_rec_count(const struct replay_rec *rec)
{
    return rec->nmsgs;
}

const void *replay_rec_msg(const struct replay_rec *rec, size_t i, size_t *len)
{
    if (i >= rec->nmsgs) {
        *len = 0;
        return NULL;
    }
    *len = rec->msgs[i].len;
    return rec->buf ? rec->buf + rec->msgs[i].off : (const void *)"";
}

uint64_t replay_rec_response_bytes(const struct replay_rec *rec)
{
    return rec->resp_bytes;
}

struct replay_verifier *replay_verifier_new(void)
{
    struct replay_verifier *v = calloc(1, sizeof(*v));
    if (!v)
        return NULL;
    v->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    v->ctx = EVP_MD_CTX_new();
    if (!v->md || !v->ctx) {
        replay_verifier_free(v);
        return NULL;
    }
    v->verdict = REPLAY_VERIFY_ERROR;
    return v;
}

void replay_verifier_free(struct replay_verifier *v)
{
    if (!v)
        return;
    EVP_MD_CTX_free(v->ctx);
    EVP_MD_free(v->md);
    free(v);
}

enum retry_status replay_verify_begin(struct replay_verifier *v, struct replay_rec *rec)
{
    v->rec = NULL;
    v->verdict = REPLAY_VERIFY_ERROR;
    if (!rec->replayable || rec_checkpoint(rec) != RETRY_OK)
        return RETRY_NOT_REPLAYABLE;
    memset(v->chain, 0, sizeof(v->chain));
    if (!seg_begin(v->ctx, v->md, v->chain))
        return RETRY_DIGEST_ERROR;
    v->rec = rec;
    v->end = rec->nckpts;
    v->next = 0;
    v->off = v->seg_start = 0;
    v->verdict = v->end == 0 ? REPLAY_MATCH : REPLAY_MORE;
    return RETRY_OK;
}

/* The open segment has reached checkpoint v->next: compare, then open the next one. */
static enum replay_verdict verify_checkpoint(struct replay_verifier *v)
{
    const struct replay_ckpt *c = &v->rec->ckpts[v->next];

    if (!seg_end(v->ctx, v->chain))
        return REPLAY_VERIFY_ERROR;
    if (memcmp(v->chain, c->digest, REPLAY_DIGEST_BYTES) != 0)
        return REPLAY_MISMATCH;
    v->next++;
    v->seg_start = v->off;
    if (v->next == v->end)
        return REPLAY_MATCH;
    return seg_begin(v->ctx, v->md, v->chain) ? REPLAY_MORE : REPLAY_VERIFY_ERROR;
}

enum replay_verdict replay_verify_feed(struct replay_verifier *v, const void *data, size_t len,
                                       size_t *consumed)
{
    const unsigned char *p = data;

    *consumed = 0;
    while (v->verdict == REPLAY_MORE && len > 0) {
        uint64_t room = v->rec->ckpts[v->next].offset - v->off;
        size_t n = len < room ? len : (size_t)room;
        if (EVP_DigestUpdate(v->ctx, p, n) != 1) {
            v->verdict = REPLAY_VERIFY_ERROR;
            break;
        }
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
