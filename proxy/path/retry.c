/*
 * retry.c: the retry stage (see retry.h; the design is in docs/retry.md).
 *
 * A client's retry state moves through these modes:
 *
 *   RECORD --retryable error--> HOLD --replies all in, retry allowed--> BACKOFF
 *     ^  \                       |                                        | timer
 *     |   \--not replayable-->   |--refused--> (original error) TAINTED   v
 *     |        TAINTED           |                                      VERIFY
 *     |                          ^--retryable error before the match------/  |  \
 *     +------------------------------------- everything matched -----------+   |
 *                                                         differs --> DISCARD -+--> TAINTED
 *
 * and back to RECORD at the next transaction boundary.  Two byte streams are followed:
 *   - the client's input: an evbuffer callback copies what arrives into the recorder
 *     (pending bytes) and, when bytes are taken from the head of the input by any stage,
 *     counts the requests among them (Query, Sync, FunctionCall: each owes a
 *     ReadyForQuery), reading their headers in the recorder's copy, and tells the
 *     recorder that they are the transaction's (consumed) or not (replayed, or the stage's
 *     own moves);
 *   - the responses: everything for the client goes through sink and is walked in place,
 *     span by span of each message (digested, held, verified or dropped, by mode), before
 *     it reaches the client; while everything goes on to the client (recording, or not
 *     replayable) the whole walked run moves at once.
 * A unit ends when a ReadyForQuery 'I' has answered every request consumed: the recorder
 * starts over and the bytes still in the input belong to the next unit.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "base/log.h"
#include "metrics/metrics.h"
#include "net/client.h"
#include "path/locks.h"
#include "path/path.h"
#include "path/prepared.h"
#include "path/retry.h"
#include "path/sqlscan.h"
#include "path/txn.h"
#include "pool/breaker.h"
#include "proto/relay.h"
#include "retry/retry.h"

enum rt_mode {
    RT_RECORD,  /* recording a replayable unit */
    RT_TAINTED, /* this unit cannot be replayed: bytes pass, nothing is kept */
    RT_HOLD,    /* a retryable error is held back until the attempt's replies are in */
    RT_BACKOFF, /* rolled back; the timer starts the replay */
    RT_VERIFY,  /* replaying: responses are checked against the digests */
    RT_DISCARD, /* the replay differed: its replies are dropped until it is wound up */
};

/* The retry budget of one database (every pool of that name shares it). */
struct rt_db {
    struct rt_db *next;
    char *name;
    struct budget *budget;
};

/* What a prepared statement's text does that a replay must not do again (px_retry_note_sql's
 * reasons), remembered for the Binds that run it. */
#define RT_RISK_PROC   0x01 /* CALL or DO: may commit inside, outside a block */
#define RT_RISK_REPLAY 0x02 /* session state, or an effect a rollback does not undo */

struct rt_risky {
    struct rt_risky *next;
    uint8_t risk;
    char name[]; /* "" for the unnamed statement */
};

struct px_retry {
    struct px_client *c;
    struct rt_risky *risky; /* the client's prepared statements with a risk (few) */
    enum rt_mode mode;
    struct rt_db *db;
    struct replay_rec *rec;
    struct replay_verifier *ver; /* made at the first replay that needs one */
    struct backoff bo;
    struct evbuffer *sink;  /* bytes for the client, walked before they go on */
    struct evbuffer *fwd;   /* walked bytes on their way to the client */
    struct evbuffer *held;  /* the original error and what followed it */
    struct evbuffer *later; /* the client's unconsumed input, set aside during a retry */
    struct evbuffer *unfed; /* a verifying replay's requests not yet put in the input */
    struct evbuffer_cb_entry *in_cb, *sink_cb;
    struct event *ev; /* the backoff timer, and deferred steps */
    bool in_relay;    /* the server relay fills sink: walked by px_retry_relayed */
    bool broken;      /* out of memory once: never replays again */
    bool quiet;       /* the stage itself changes the input: nothing is consumed */
    bool kick;        /* the deferred step resumes the client's input */
    bool wind;        /* the deferred step looks whether a held or discarded attempt is over */
    bool feed;        /* the deferred step feeds a verifying replay its next request */
    bool held_done;   /* held has the whole tail of the original attempt */
    bool orig_known;  /* orig_end is set (the original attempt ended) */
    bool after_commit;
    bool held_txn_end;     /* held has a ReadyForQuery 'I' (the client's transaction ended) */
    bool ended_inside;     /* a transaction ended while more requests were outstanding */
    bool retried;          /* this unit was replayed at least once */
    char orig_end;         /* transaction status the original error left */
    char last_z;           /* status of the last ReadyForQuery of this attempt */
    uint8_t sqlstate;      /* enum px_metrics_retry_sqlstate of the original error */
    bool open_group;       /* extended-protocol messages consumed since the last request */
    uint32_t reqs;         /* requests consumed in this attempt */
    uint32_t zs;           /* ReadyForQuery messages of this attempt */
    uint32_t match_req;    /* while recording: the request (1 = the unit's first) whose reply
                              had the last response byte the client got */
    bool match_rows;       /* ... and the client got more of that reply than its shape */
    bool out_drop;         /* the message under way is a notice the client already had */
    uint32_t notices_tail; /* notices delivered since the last response byte recorded */
    uint32_t notices_had;  /* notices_tail when the original error came */
    uint32_t notices_skip; /* a replay's notices still to drop (the client had them) */
    uint32_t zs_seen;      /* replies the client had whole when the error came */
    uint64_t replay_left;  /* replayed bytes not consumed again yet */
    size_t kept;           /* bytes last reported to the buffer gauge */
    /* response walker: the message under way (out_hdr_n < 5: its header is) */
    uint32_t out_left, out_pos;
    uint8_t out_hdr[5], out_hdr_n;
    char out_type;
    bool out_digest;
    uint8_t out_cap[24]; /* first body bytes of ReadyForQuery / CommandComplete */
    /* input walker: bytes of the consumed message under way */
    uint32_t in_left;
};

static struct retry_config cfg; /* in effect; backoffs borrow it */
static bool cfg_set;
static struct retry_rng rng;
static struct rt_db *dbs;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void px_retry_configure(void)
{
    cfg = px.cfg->retry;
    if (!cfg_set) {
        retry_rng_seed(&rng, now_us() ^ (uint64_t)getpid() << 32);
        /* The response digests' key: unknown outside this process (retry/README.md). */
        unsigned char key[16];
        if (RAND_bytes(key, sizeof(key)) != 1) {
            px_error("retry", 0, 0, "no random bytes for the replay digest key: using the clock");
            uint64_t t = now_us() ^ (uint64_t)getpid() << 40;
            memcpy(key, &t, sizeof(t));
            memset(key + sizeof(t), 0x5a, sizeof(key) - sizeof(t));
        }
        replay_digest_key(key);
    }
    cfg_set = true;
    /* Budgets read their settings when made: make them again (their history goes). */
    for (struct rt_db *d = dbs; d; d = d->next) {
        struct budget *b = budget_new(&cfg);
        if (b) {
            budget_free(d->budget);
            d->budget = b;
        }
    }
}

void px_retry_shutdown(void)
{
    while (dbs) {
        struct rt_db *d = dbs;
        dbs = d->next;
        budget_free(d->budget);
        free(d->name);
        free(d);
    }
}

static struct rt_db *db_get(const char *name)
{
    for (struct rt_db *d = dbs; d; d = d->next)
        if (!strcmp(d->name, name))
            return d;
    struct rt_db *d = calloc(1, sizeof(*d));
    if (!d || !(d->name = strdup(name)) || !(d->budget = budget_new(&cfg))) {
        if (d)
            free(d->name);
        free(d);
        return NULL;
    }
    d->next = dbs;
    dbs = d;
    return d;
}

static bool enabled(void)
{
    return cfg_set && cfg.max_attempts > 1 && cfg.retryable_sqlstates.n > 0;
}

bool px_retry_enabled(void)
{
    return enabled();
}

/* ==== accounting ======================================================================== */

static void gauge_update(struct px_retry *rt)
{
    size_t k = rt->rec ? replay_rec_kept_bytes(rt->rec) : 0;
    if (k != rt->kept) {
        px_metrics_gauge_add(NULL, PX_M_RETRY_BUFFER_BYTES, 0, (double)k - (double)rt->kept);
        rt->kept = k;
    }
}

static void count_outcome(struct px_retry *rt, unsigned outcome)
{
    px_metrics_inc(rt->c->pool ? rt->c->pool->metrics : NULL, PX_M_RETRIES,
                   PX_METRICS_RETRY(rt->sqlstate, outcome));
}

static uint8_t sqlstate_label(const char *code)
{
    if (code && !strcmp(code, "40001"))
        return PX_MRS_40001;
    if (code && !strcmp(code, "40P01"))
        return PX_MRS_40P01;
    return PX_MRS_OTHER;
}

/* The unit cannot be replayed any more (it goes on, unrecorded, to its end). */
static void taint(struct px_retry *rt, const char *why)
{
    if (rt->mode != RT_RECORD)
        return;
    px_debug("retry", 'C', rt->c->id, "transaction not replayable: %s", why);
    rt->mode = RT_TAINTED;
}

/* A transaction boundary: everything consumed has been answered, the last answer said
 * 'I'.  What is still in the input belongs to the next unit. */
static void unit_end(struct px_retry *rt)
{
    if (rt->retried && rt->mode == RT_RECORD)
        count_outcome(rt, PX_MRO_SUCCEEDED);
    budget_record_first(rt->db->budget, now_us());
    replay_rec_reset(rt->rec); /* a big transaction's memory goes back */
    gauge_update(rt);
    backoff_init(&rt->bo, &cfg);
    rt->mode = !rt->broken ? RT_RECORD : RT_TAINTED;
    rt->reqs = rt->zs = rt->match_req = rt->zs_seen = 0;
    rt->notices_tail = rt->notices_had = rt->notices_skip = 0;
    rt->match_rows = false;
    rt->after_commit = rt->retried = rt->held_done = rt->orig_known = false;
    rt->held_txn_end = rt->ended_inside = false;
    if (rt->held)
        evbuffer_drain(rt->held, evbuffer_get_length(rt->held));
    if (rt->c->c2s.remaining)
        taint(rt, "a message is under way"); /* the next unit starts mid-message */
}

/* Nothing the client sent is unanswered and the last answer ended its transaction. */
static void maybe_unit_end(struct px_retry *rt)
{
    struct px_client *c = rt->c;
    if ((rt->mode != RT_RECORD && rt->mode != RT_TAINTED) || rt->last_z != 'I' ||
        rt->zs != rt->reqs || rt->open_group || c->c2s.remaining || c->lock_waiting)
        return;
    unit_end(rt);
}

static void schedule(struct px_retry *rt, uint64_t delay_us, bool kick, bool wind);

/* A verifying replay's request was consumed and answered whole (verified to its end; a
 * request pgwarden answers itself may be answered before it is consumed): the next. */
static void maybe_feed(struct px_retry *rt)
{
    if (rt->mode != RT_VERIFY || rt->zs != rt->reqs || rt->replay_left ||
        !evbuffer_get_length(rt->unfed) || rt->feed)
        return;
    rt->feed = true;
    schedule(rt, 0, false, false);
}

/* ==== the client's input ================================================================ */

/* n bytes were taken from the head of the input: consumed (recorded, requests counted)
 * unless the stage moved them itself. */
static void consumed(struct px_retry *rt, size_t n)
{
    if (rt->quiet || rt->broken) {
        replay_rec_drop(rt->rec, n);
        return;
    }
    size_t plen;
    while (n > 0 && replay_rec_pending(rt->rec, &plen) && plen > 0) {
        if (rt->in_left == 0) {
            const uint8_t *hdr = replay_rec_pending(rt->rec, &plen);
            if (plen < 5) {
                taint(rt, "a message header was split");
                replay_rec_drop(rt->rec, n);
                break;
            }
            uint32_t len = px_get_u32(hdr + 1);
            if (len < 4 || len > PX_WIRE_MAX_LEN) { /* every stage refuses it: never here */
                taint(rt, "a malformed message");
                replay_rec_drop(rt->rec, n);
                break;
            }
            rt->in_left = len + 1;
            /* Whatever the relay makes of it (a CopyData, a Bind in session mode are not
             * read), a message over PX_RELAY_HEAD_MAX is not copied in part up to
             * retry_buffer_bytes only to be thrown away. */
            if (rt->in_left - 5 > PX_RELAY_HEAD_MAX)
                taint(rt, "a message too big to keep");
            switch (hdr[0]) {
            case 'Q':
            case 'S':
            case 'F':
                rt->reqs++;
                rt->open_group = false;
                break;
            case 'P':
            case 'B':
            case 'D':
            case 'E':
            case 'C': rt->open_group = true; break;
            default: break;
            }
        }
        size_t take = n < rt->in_left ? n : rt->in_left;
        /* replayed bytes are the transaction's already; new ones are while recording */
        size_t replayed = take < rt->replay_left ? take : (size_t)rt->replay_left;
        rt->replay_left -= replayed;
        replay_rec_drop(rt->rec, replayed);
        if (rt->mode != RT_RECORD)
            replay_rec_drop(rt->rec, take - replayed);
        else if (replay_rec_consume(rt->rec, take - replayed) != RETRY_OK)
            taint(rt, "retry_buffer_bytes exceeded");
        rt->in_left -= (uint32_t)take;
        n -= take;
    }
    gauge_update(rt);
    maybe_feed(rt);
    /* a reply pgwarden gave itself may have come before its request was consumed: the
     * differing replay may be over now */
    if (rt->mode == RT_DISCARD && rt->replay_left == 0)
        schedule(rt, 0, false, true);
    maybe_unit_end(rt);
}

/* Gives the recorder the last n bytes of src (they just arrived).  False when out of
 * memory. */
static bool input_tail(struct px_retry *rt, struct evbuffer *src, size_t n)
{
    struct evbuffer_ptr at;
    if (evbuffer_ptr_set(src, &at, evbuffer_get_length(src) - n, EVBUFFER_PTR_SET) < 0)
        return false;
    while (n > 0) {
        struct evbuffer_iovec v[8];
        int nv = evbuffer_peek(src, (ev_ssize_t)n, &at, v, 8);
        if (nv <= 0)
            return false;
        for (int i = 0; i < nv && i < 8 && n > 0; i++) {
            size_t k = v[i].iov_len < n ? v[i].iov_len : n;
            if (replay_rec_input(rt->rec, v[i].iov_base, k) != RETRY_OK)
                return false;
            n -= k;
            evbuffer_ptr_set(src, &at, k, EVBUFFER_PTR_ADD);
        }
    }
    return true;
}

static void input_cb(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg)
{
    struct px_retry *rt = arg;
    if (info->n_added && !rt->broken && !input_tail(rt, in, info->n_added)) {
        /* The pending bytes are wrong from here on: nothing can be replayed until the
         * client leaves (its input is then consumed without being recorded). */
        taint(rt, "out of memory");
        rt->broken = true;
    }
    if (info->n_deleted)
        consumed(rt, info->n_deleted);
}

/* Moves the client's unconsumed input aside (it is not consumed). */
static void stash_input(struct px_retry *rt)
{
    struct evbuffer *in = bufferevent_get_input(rt->c->bev);
    rt->quiet = true;
    evbuffer_remove_buffer(in, rt->later, evbuffer_get_length(in));
    rt->quiet = false;
}

/* Puts bytes at the end of the client's input (a bufferevent keeps that end frozen). */
static void input_append(struct px_retry *rt, struct evbuffer *from)
{
    struct evbuffer *in = bufferevent_get_input(rt->c->bev);
    evbuffer_unfreeze(in, 0);
    evbuffer_add_buffer(in, from);
    evbuffer_freeze(in, 0);
}

/* ==== the responses ===================================================================== */

/* The bytes of a message that was delivered (or verified) ended: transaction accounting. */
static void give_up_now(struct px_retry *rt, unsigned outcome, const char *why);

static void out_message_end(struct px_retry *rt)
{
    char t = rt->out_type;
    if (t == 'Z') {
        rt->last_z = rt->out_pos > 5 ? (char)rt->out_cap[0] : 'I';
        rt->zs++;
        rt->after_commit = false;
        bool delivered = rt->mode == RT_RECORD || rt->mode == RT_TAINTED;
        if (delivered && rt->last_z == 'I') {
            if (rt->c->locks)
                px_locks_txn_end(rt->c); /* the client's transaction really ended */
            if (rt->zs < rt->reqs)
                taint(rt, "a transaction ended while more was sent");
        } else if (rt->mode == RT_HOLD && rt->last_z == 'I' && !rt->held_done) {
            rt->held_txn_end = true;
            /* The failed transaction ended and requests sent behind it are transactions of
             * their own, which may commit: replaying them would run them twice. */
            if (rt->zs < rt->reqs)
                give_up_now(rt, PX_MRO_NOT_REPLAYABLE, "a transaction ended while more was sent");
        } else if (rt->last_z == 'I' && rt->zs < rt->reqs) {
            rt->ended_inside = true; /* a replay's tail, dropped: decide gives up */
        }
        maybe_feed(rt);
        maybe_unit_end(rt);
    } else if (t == 'C' && rt->mode == RT_RECORD) {
        const char *tag = (const char *)rt->out_cap;
        size_t n = rt->out_pos > 5 ? rt->out_pos - 5 : 0;
        if (n > sizeof(rt->out_cap))
            n = sizeof(rt->out_cap);
        if (n >= 7 && !memcmp(tag, "COMMIT", 7))
            rt->after_commit = true;
        else if (n >= 7 && !memcmp(tag, "PREPARE", 7))
            taint(rt, "PREPARE TRANSACTION");
    }
}

static void matched(struct px_retry *rt);
static void replay_differs(struct px_retry *rt);

/* Where a span of a response goes. */
enum span_to { TO_CLIENT, TO_HELD, TO_NOWHERE };

/* Bytes held back after a retryable error (the error and the replies behind it, until the
 * attempt is over): bounded like the recorder, since a client may pipeline a large result
 * behind a statement that fails (and can raise 40001 itself). */
static size_t held_limit(void)
{
    return cfg.retry_buffer_bytes > 65536 ? cfg.retry_buffer_bytes : 65536;
}

/* Decides the fate of the span p[0..n) of the message under way, by mode (digesting or
 * verifying it on the way).  *n may shrink: a verification that matched inside the span
 * covers only its first *n bytes (the rest is new, handled with the new mode). */
static enum span_to span_fate(struct px_retry *rt, const uint8_t *p, size_t *n)
{
    switch (rt->mode) {
    case RT_RECORD:
        if (rt->out_drop)
            return TO_NOWHERE;
        if (rt->out_digest) {
            if (replay_rec_response(rt->rec, p, *n) != RETRY_OK)
                taint(rt, "retry_buffer_bytes exceeded");
            if (rt->match_req != rt->zs + 1) { /* replies come in request order */
                rt->match_req = rt->zs + 1;
                rt->match_rows = false;
            }
            /* ParseComplete, BindComplete, CloseComplete, the descriptions: fixed when the
             * statement is planned, before it runs */
            if (!strchr("123tTn", rt->out_type))
                rt->match_rows = true;
        }
        return TO_CLIENT;
    case RT_TAINTED:
    case RT_BACKOFF: return TO_CLIENT;
    case RT_HOLD:
        if (rt->out_type == 'A')
            return TO_CLIENT; /* a notification is never replayed: it goes on at once */
        if (rt->held_done)
            return TO_NOWHERE; /* a replay's tail: the client gets the original one */
        if (evbuffer_get_length(rt->held) + *n > held_limit()) {
            give_up_now(rt, PX_MRO_BUFFER_EXCEEDED,
                        "the replies after the error exceed "
                        "retry_buffer_bytes");
            return TO_CLIENT;
        }
        return TO_HELD;
    case RT_DISCARD: return rt->out_type == 'A' ? TO_CLIENT : TO_NOWHERE;
    case RT_VERIFY: {
        if (rt->out_type == 'A') /* a notification is never replayed: it goes on */
            return TO_CLIENT;
        if (!rt->out_digest)
            return TO_NOWHERE; /* the client had this notice or parameter */
        size_t used = 0;
        enum replay_verdict v = replay_verify_feed(rt->ver, p, *n, &used);
        if (v == REPLAY_MATCH) {
            *n = used;
            matched(rt);
        } else if (v != REPLAY_MORE) {
            replay_differs(rt);
        }
        return TO_NOWHERE; /* the client saw these bytes already */
    }
    }
    return TO_NOWHERE;
}

/* Walks what buf holds for the client, in place, and disposes of it span by span: onto fwd
 * (to the client), into held, or away.  The messages are followed across calls (a reply
 * may arrive in pieces). */
static void walk(struct px_retry *rt, struct evbuffer *buf)
{
    for (;;) {
        struct evbuffer_iovec v[16];
        int nv = evbuffer_peek(buf, -1, NULL, v, 16);
        if (nv <= 0)
            return;
        if (nv > 16)
            nv = 16;
        size_t run = 0; /* bytes at the head of buf walked and bound for the client */
        bool repeek = false;
        for (int i = 0; i < nv && !repeek; i++) {
            const uint8_t *p = v[i].iov_base;
            size_t left = v[i].iov_len;
            while (left > 0 && !repeek) {
                size_t n;
                if (rt->out_hdr_n < 5) { /* the header */
                    if (rt->out_hdr_n == 0) {
                        rt->out_type = (char)p[0];
                        rt->out_pos = 0;
                        rt->out_digest = p[0] != 'N' && p[0] != 'S' && p[0] != 'A';
                        rt->out_drop = false;
                        if (rt->mode == RT_RECORD && p[0] == 'N') {
                            /* the notices the client had after the last byte verified
                             * come again once the replay went past it */
                            if (rt->notices_skip > 0) {
                                rt->notices_skip--;
                                rt->out_drop = true;
                            }
                            rt->notices_tail++; /* had by the client, now or before */
                        } else if (rt->mode == RT_RECORD && rt->out_digest) {
                            rt->notices_tail = rt->notices_skip = 0;
                        }
                        if (rt->mode == RT_RECORD && rt->after_commit && p[0] != 'Z' &&
                            rt->out_digest)
                            taint(rt, "statements after a COMMIT");
                    }
                    n = 5u - rt->out_hdr_n;
                    n = n < left ? n : left;
                    memcpy(rt->out_hdr + rt->out_hdr_n, p, n);
                } else {
                    n = rt->out_left < left ? rt->out_left : left;
                    if ((rt->out_type == 'Z' || rt->out_type == 'C') &&
                        rt->out_pos < 5 + sizeof(rt->out_cap)) {
                        size_t at = rt->out_pos - 5, k = sizeof(rt->out_cap) - at;
                        memcpy(rt->out_cap + at, p, k < n ? k : n);
                    }
                }
                enum span_to to = span_fate(rt, p, &n);
                if (to == TO_CLIENT) {
                    run += n;
                } else {
                    /* what went before goes on first; buf changes: read it again */
                    if (run)
                        evbuffer_remove_buffer(buf, rt->fwd, run);
                    run = 0;
                    if (to == TO_HELD)
                        evbuffer_remove_buffer(buf, rt->held, n);
                    else
                        evbuffer_drain(buf, n);
                    repeek = true;
                }
                p += n;
                left -= n;
                rt->out_pos += (uint32_t)n;
                if (rt->out_hdr_n < 5) {
                    rt->out_hdr_n = (uint8_t)(rt->out_hdr_n + n);
                    if (rt->out_hdr_n < 5)
                        continue;
                    uint32_t len = px_get_u32(rt->out_hdr + 1); /* checked by the relay */
                    rt->out_left = len >= 4 ? len - 4 : 0;
                } else {
                    rt->out_left -= (uint32_t)n;
                }
                if (rt->out_left == 0) {
                    rt->out_hdr_n = 0;
                    out_message_end(rt);
                }
            }
        }
        if (run)
            evbuffer_remove_buffer(buf, rt->fwd, run);
        if (!repeek)
            return;
    }
}

/* pgwarden's own replies arrive here (px_retry_client_out): walked at once, and written to
 * the client's socket directly when nothing is queued before them (px_relay_write: the
 * bufferevent would add its write event, wake the loop and remove it, per reply). */
static void sink_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct px_retry *rt = arg;
    if (!info->n_added || rt->in_relay)
        return;
    walk(rt, buf);
    px_relay_write(rt->fwd, bufferevent_get_output(rt->c->bev), px_client_direct(rt->c));
    if (rt->mode == RT_DISCARD && rt->replay_left == 0)
        schedule(rt, 0, false, true); /* a replay answered by pgwarden alone may be over */
}

struct evbuffer *px_retry_client_out(struct px_client *c)
{
    return c->retry ? c->retry->sink : bufferevent_get_output(c->bev);
}

struct evbuffer *px_retry_relay_target(struct px_client *c)
{
    if (!c->retry)
        return NULL;
    c->retry->in_relay = true;
    return c->retry->sink;
}

void px_retry_relayed(struct px_client *c, struct px_direct d)
{
    struct px_retry *rt = c->retry;
    if (!rt)
        return;
    rt->in_relay = false;
    walk(rt, rt->sink);
    px_relay_write(rt->fwd, bufferevent_get_output(c->bev), d);
}

/* ==== deciding, replaying, giving up ==================================================== */

/* Runs on_timer after delay_us (the backoff) or, with kick or wind, at the next turn of the
 * loop (a step that must not run inside the writer or relay that triggered it). */
static void schedule(struct px_retry *rt, uint64_t delay_us, bool kick, bool wind)
{
    rt->kick |= kick;
    rt->wind |= wind;
    if ((kick || wind) && evtimer_pending(rt->ev, NULL) && rt->mode == RT_BACKOFF)
        return; /* never cut a backoff short */
    struct timeval tv = {(time_t)(delay_us / 1000000u), (suseconds_t)(delay_us % 1000000u)};
    evtimer_add(rt->ev, &tv);
}

/* Bytes of recorded messages from the start of buf up to and including the next request
 * (Query, Sync, FunctionCall) with the COPY data that follows a Query (CopyData, CopyDone,
 * CopyFail: PostgreSQL waits for them before it answers), or all of buf when none is
 * complete. */
static size_t next_request_len(const uint8_t *b, size_t len)
{
    size_t off = 0;
    bool ended = false;
    while (off + 5 <= len) {
        uint32_t mlen = px_get_u32(b + off + 1);
        if (mlen < 4 || off + 1 + mlen > len)
            return len;
        char t = (char)b[off];
        if (ended && t != 'd' && t != 'c' && t != 'f')
            return off;
        off += 1 + mlen;
        ended |= t == 'Q' || t == 'S' || t == 'F';
    }
    return len;
}

/* The text of a statement c prepared before (transaction pooling keeps it), or NULL. */
static const char *prepared_text(const struct px_client *c, const char *name, uint32_t *len)
{
    const struct px_stmt *st = *name ? px_stmt_map_get(&c->stmts, name) : NULL;
    return st ? (const char *)px_stmt_content(st, len) : NULL;
}

/*
 * Can the replay stop before it commits anything, should it differ?  A replay that must
 * reproduce what the client saw is fed one request at a time, each only once the one
 * before was verified to its end (feed_next), so no request behind the one that holds the
 * last byte the client got (match_req) runs before that byte is matched: not the COMMIT
 * that failed, nor anything after.  That request itself runs whole, whatever its reply:
 *   - if the client had all of its reply, it ran whole in the original attempt without
 *     ending the transaction (a COMMIT's tag taints the unit, a ReadyForQuery 'I' ends
 *     it), and the replay runs the same statements: safe;
 *   - else the error came inside it, and what followed the failed statement in the same
 *     request was skipped then but runs in a replay.  A request after the first runs in
 *     the block the unit opened (one before it that ended the block would have ended the
 *     unit): safe unless a statement of it may control the transaction (or its text is
 *     not in the unit: a statement prepared earlier).  The first request commits by
 *     itself unless it is a BEGIN (autocommit): safe only as one statement of which the
 *     client saw no more than the shape of the reply (RowDescription and the like, fixed
 *     when it is planned), so that rows it returned are never the part to verify.
 */
static bool match_request_safe(const struct px_retry *rt)
{
    if (rt->zs_seen >= rt->match_req)
        return true;
    size_t len = 0, off = 0;
    const uint8_t *b = replay_rec_bytes(rt->rec, &len);
    for (uint32_t req = 1; off < len; req++) {
        size_t n = next_request_len(b + off, len - off);
        if (req < rt->match_req) {
            off += n;
            continue;
        }
        /* the statements it executes; a lone BEGIN first (pgJDBC sends it in the group of
         * the block's first statement) opens the block the others run in */
        int statements = 0;
        bool first_begin = false, control = false, unknown = false;
        const char *parsed[8]; /* statement names parsed in this request, and their texts' */
        bool parsed_begin[8], parsed_control[8];
        int nparsed = 0;
        bool bound = false, bound_begin = false, bound_control = false; /* the last Bind's */
        for (size_t at = off; at + 5 <= off + n; at += 1 + px_get_u32(b + at + 1)) {
            const uint8_t *body = b + at + 5;
            uint32_t blen = px_get_u32(b + at + 1) - 4;
            struct px_sql_info info;
            switch (b[at]) {
            case 'Q':
                px_sql_classify((const char *)body, strnlen((const char *)body, blen), &info);
                if (statements == 0 && info.kind == PX_SQL_BEGIN && !info.multi)
                    first_begin = true;
                else
                    control |= info.txn_control;
                statements += info.multi ? 2 : 1;
                break;
            case 'P': {
                const char *name;
                const uint8_t *content;
                uint32_t tlen;
                if (px_parse_split(body, blen, &name, &content, &tlen) < 0 || nparsed == 8) {
                    unknown = true;
                    break;
                }
                px_sql_classify((const char *)content, strnlen((const char *)content, tlen), &info);
                parsed[nparsed] = name;
                parsed_begin[nparsed] = info.kind == PX_SQL_BEGIN && !info.multi;
                parsed_control[nparsed++] = info.txn_control;
                break;
            }
            case 'B': { /* the statement it binds: parsed in this request, or before */
                const char *portal, *stmt;
                const uint8_t *rest;
                uint32_t rest_len;
                bound = true;
                bound_begin = false;
                bound_control = true;
                if (px_bind_split(body, blen, &portal, &stmt, &rest, &rest_len) < 0) {
                    unknown = true;
                    break;
                }
                int i = nparsed - 1; /* the latest Parse of that name */
                while (i >= 0 && strcmp(parsed[i], stmt) != 0)
                    i--;
                if (i >= 0) {
                    bound_begin = parsed_begin[i];
                    bound_control = parsed_control[i];
                    break;
                }
                uint32_t plen;
                const char *ptext = prepared_text(rt->c, stmt, &plen);
                if (!ptext) {
                    unknown = true;
                    break;
                }
                px_sql_classify(ptext, strnlen(ptext, plen), &info);
                bound_begin = info.kind == PX_SQL_BEGIN && !info.multi;
                bound_control = info.txn_control;
                break;
            }
            case 'E':
                if (!bound)
                    unknown = true; /* a portal bound in an earlier request */
                if (statements++ == 0 && bound_begin)
                    first_begin = true;
                else
                    control |= bound_control;
                break;
            case 'F': statements += 2, unknown = true; break; /* a function call */
            default: break;
            }
        }
        if (rt->match_req > 1 || first_begin)
            return statements <= 1 || (!control && !unknown);
        return statements == 1 && !rt->match_rows;
    }
    return false;
}

/* Puts the next recorded request of a verifying replay in the client's input. */
static void feed_next(struct px_retry *rt)
{
    size_t len = evbuffer_get_length(rt->unfed);
    const uint8_t *b = evbuffer_pullup(rt->unfed, (ev_ssize_t)len);
    size_t n = b ? next_request_len(b, len) : len;
    struct evbuffer *one = evbuffer_new();
    if (!one || evbuffer_remove_buffer(rt->unfed, one, n) != (int)n) {
        if (one)
            evbuffer_free(one);
        /* out of memory: what is left is not sent; the replay ends as one that differs */
        evbuffer_drain(rt->unfed, evbuffer_get_length(rt->unfed));
        replay_differs(rt);
        schedule(rt, 0, false, true);
        return;
    }
    rt->replay_left += n;
    px_debug("retry", 'C', rt->c->id, "replay: the next request (%zu bytes)", n);
    input_append(rt, one);
    evbuffer_free(one);
    px_path_client_input(rt->c);
}

/* Brings the client's server (or its held block) to the transaction status the client was
 * told: 'I' (rolled back) or 'E' (a failed block), with hidden statements. */
static void set_server_status(struct px_client *c, char want)
{
    struct px_server *s = c->server;
    if (!s) {
        if (want == 'E' && !px_txn_hold_failed_block(c))
            px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
        return;
    }
    char have = s->txn_status;
    if (want == have || (want == 'T' && have == 'E'))
        return;
    struct evbuffer *out = px_path_server_out(c);
    if (have != 'I') {
        px_wire_query(out, "ROLLBACK");
        s->hidden_queries++;
        s->txn_status = 'I';
    }
    if (want == 'E') {
        px_wire_query(out, "BEGIN");
        s->hidden_queries++;
        s->txn_status = 'T';
        px_txn_statement_failed(c, true);
    }
}

/* The client gets the original error and what followed it, unchanged; the unit goes on
 * unrecorded. */
static void give_up(struct px_retry *rt, unsigned outcome)
{
    struct px_client *c = rt->c;
    count_outcome(rt, outcome);
    px_info("retry", 'C', c->id, "the client gets the original error (%s)",
            outcome == PX_MRO_EXHAUSTED      ? "max_attempts reached"
            : outcome == PX_MRO_OVER_BUDGET  ? "retry budget used up"
            : outcome == PX_MRO_BREAKER_OPEN ? "circuit breaker not closed"
            : outcome == PX_MRO_DIVERGED     ? "the replay differed"
            : outcome == PX_MRO_CANCELED     ? "canceled"
                                             : "not replayable");
    evtimer_del(rt->ev);
    rt->feed = false;
    set_server_status(c, rt->orig_end);
    rt->mode = RT_TAINTED;
    rt->replay_left = 0;
    evbuffer_drain(rt->unfed, evbuffer_get_length(rt->unfed)); /* never sent */
    /* held ends with the original attempt's last ReadyForQuery: everything the client sent
     * is answered once it is delivered */
    rt->reqs = rt->zs = 0;
    rt->last_z = rt->orig_end;
    rt->open_group = false;
    if (rt->held) {
        evbuffer_add_buffer(rt->fwd, rt->held);
        px_relay_write(rt->fwd, bufferevent_get_output(c->bev), px_client_direct(c));
    }
    if (rt->orig_end == 'I' && c->locks)
        px_locks_txn_end(c);
    if (rt->later)
        input_append(rt, rt->later);
    px_reader_block(&c->rd, false);
    maybe_unit_end(rt);
    schedule(rt, 0, true, false); /* its next messages */
}

/*
 * The retry is refused while the original attempt is still being answered (called from
 * walk, in RT_HOLD before held_done): what was held goes on first, the rest of the attempt
 * flows to the client unrecorded, and the client's next messages are read again.  The
 * server's state is the one the client is told about: nothing is rolled back.
 */
static void give_up_now(struct px_retry *rt, unsigned outcome, const char *why)
{
    struct px_client *c = rt->c;
    count_outcome(rt, outcome);
    px_info("retry", 'C', c->id, "the client gets the original error (%s)", why);
    rt->mode = RT_TAINTED;
    /* walk's run holds only notifications in RT_HOLD (asynchronous: they may go first) */
    evbuffer_add_buffer(rt->fwd, rt->held);
    if (rt->held_txn_end && c->locks)
        px_locks_txn_end(c);
    rt->held_txn_end = false;
    px_reader_block(&c->rd, false);
    schedule(rt, 0, true, false); /* its next messages, outside the walk */
}

/* The original attempt (or a replay) failed and all its replies are in: retry or not. */
static void decide(struct px_retry *rt)
{
    struct px_client *c = rt->c;
    struct px_server *s = c->server;
    char status = s ? s->txn_status : 'I';
    if (!rt->orig_known) {
        rt->orig_known = true;
        rt->orig_end = status;
    }
    rt->held_done = true;
    uint64_t delay = 0;
    if (status == 'T' || c->c2s.remaining || rt->ended_inside) {
        give_up(rt, PX_MRO_NOT_REPLAYABLE);
        return;
    }
    if (!replay_rec_replayable(rt->rec)) {
        give_up(rt, PX_MRO_BUFFER_EXCEEDED);
        return;
    }
    if (replay_rec_response_bytes(rt->rec) > 0 && !match_request_safe(rt)) {
        px_debug("retry", 'C', c->id,
                 "request %u, whose reply the client saw in part, could commit in a replay",
                 rt->match_req);
        give_up(rt, PX_MRO_NOT_REPLAYABLE);
        return;
    }
    if (backoff_next(&rt->bo, &rng, &delay) != RETRY_OK) {
        give_up(rt, PX_MRO_EXHAUSTED);
        return;
    }
    if (!px_breaker_closed(c->pool->breaker)) {
        give_up(rt, PX_MRO_BREAKER_OPEN); /* no retries while the database is unwell */
        return;
    }
    switch (budget_try_retry(rt->db->budget, NULL, now_us())) {
    case RETRY_OK: break;
    case RETRY_BREAKER_OPEN: give_up(rt, PX_MRO_BREAKER_OPEN); return;
    default: give_up(rt, PX_MRO_OVER_BUDGET); return;
    }
    px_metrics_inc(c->pool->metrics, PX_M_RETRY_ATTEMPTS, rt->sqlstate);
    px_info("retry", 'C', c->id, "replaying the transaction in %.1f ms (attempt %u)",
            (double)delay / 1000.0, backoff_attempts(&rt->bo));
    rt->retried = true;
    stash_input(rt);
    set_server_status(c, 'I');
    rt->mode = RT_BACKOFF;
    schedule(rt, delay, false, false);
}

/* The backoff is over: the recorded bytes go back in front of the client's input, and
 * every stage handles them again. */
static void replay(struct px_retry *rt)
{
    struct px_client *c = rt->c;
    struct evbuffer *p = evbuffer_new();
    size_t total = 0;
    const unsigned char *bytes = replay_rec_bytes(rt->rec, &total);
    if (p && evbuffer_add(p, bytes, total) < 0) {
        evbuffer_free(p);
        p = NULL;
    }
    if (!p) {
        give_up(rt, PX_MRO_NOT_REPLAYABLE);
        return;
    }
    rt->reqs = rt->zs = 0;
    rt->last_z = 0;
    rt->open_group = false;
    rt->in_left = 0;
    rt->replay_left = total;
    evbuffer_drain(rt->unfed, evbuffer_get_length(rt->unfed));
    if (replay_rec_response_bytes(rt->rec) == 0) {
        /* The client saw nothing of it: the replay simply goes on. */
        rt->mode = RT_RECORD;
        if (rt->held)
            evbuffer_drain(rt->held, evbuffer_get_length(rt->held));
        rt->held_done = rt->orig_known = rt->held_txn_end = false;
        rt->notices_skip = rt->notices_had;
        rt->notices_tail = 0;
        evbuffer_add_buffer(p, rt->later);
        px_reader_block(&c->rd, false);
    } else {
        if (!rt->ver)
            rt->ver = replay_verifier_new();
        if (!rt->ver || replay_verify_begin(rt->ver, rt->rec) != RETRY_OK) {
            evbuffer_free(p);
            rt->replay_left = 0;
            give_up(rt, PX_MRO_BUFFER_EXCEEDED);
            return;
        }
        rt->mode = RT_VERIFY;
        /* one request at a time (match_request_safe): the first now, the rest later */
        size_t first = next_request_len(evbuffer_pullup(p, -1), total);
        evbuffer_add_buffer(rt->unfed, p);
        evbuffer_remove_buffer(rt->unfed, p, first);
        rt->replay_left = first;
    }
    px_debug("retry", 'C', c->id, "replay of %zu bytes starts (%s, client state %d, server %s)",
             total, rt->mode == RT_VERIFY ? "verifying" : "nothing seen", (int)c->state,
             c->server ? "linked" : "none");
    input_append(rt, p);
    evbuffer_free(p);
    px_path_client_input(c);
}

/* Everything the client had seen was reproduced: the rest is new. */
static void matched(struct px_retry *rt)
{
    px_debug("retry", 'C', rt->c->id, "the replay matched what the client saw");
    rt->mode = RT_RECORD;
    if (rt->held)
        evbuffer_drain(rt->held, evbuffer_get_length(rt->held));
    rt->held_done = rt->orig_known = rt->held_txn_end = false;
    rt->notices_skip = rt->notices_had;
    rt->notices_tail = 0;
    rt->feed = false;
    rt->replay_left += evbuffer_get_length(rt->unfed); /* the rest of the replay goes on */
    input_append(rt, rt->unfed);
    if (rt->later)
        input_append(rt, rt->later);
    px_reader_block(&rt->c->rd, false);
    schedule(rt, 0, true, false);
}

static void replay_differs(struct px_retry *rt)
{
    px_info("retry", 'C', rt->c->id, "the replay differs from what the client saw");
    rt->mode = RT_DISCARD;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct px_retry *rt = arg;
    struct px_client *c = rt->c;
    if (rt->mode == RT_BACKOFF) { /* the backoff is over (a step scheduled before it is moot) */
        rt->kick = rt->wind = false;
        replay(rt);
        return;
    }
    if (rt->feed) {
        rt->feed = false;
        if (rt->mode == RT_VERIFY && evbuffer_get_length(rt->unfed)) {
            rt->kick = false; /* feed_next reads the input */
            if (rt->wind)
                schedule(rt, 0, false, true);
            feed_next(rt); /* last: c may be gone after it */
            return;
        }
    }
    if (rt->wind) {
        rt->wind = false;
        px_retry_after_relay(c);
        if (c->retry != rt || rt->mode == RT_BACKOFF)
            return;
    }
    if (rt->kick) {
        rt->kick = false;
        px_path_client_input(c); /* last: c may be gone after it */
    }
}

/* ==== the stage's entry points ========================================================== */

bool px_retry_client_start(struct px_client *c)
{
    if (!enabled() || c->retry)
        return true;
    struct px_retry *rt = calloc(1, sizeof(*rt));
    if (!rt)
        return false;
    rt->c = c;
    rt->db = db_get(c->pool->database);
    rt->rec = replay_rec_new(&cfg);
    rt->sink = evbuffer_new();
    rt->fwd = evbuffer_new();
    rt->held = evbuffer_new();
    rt->later = evbuffer_new();
    rt->unfed = evbuffer_new();
    rt->ev = evtimer_new(px.base, on_timer, rt);
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (!rt->db || !rt->rec || !rt->sink || !rt->fwd || !rt->held || !rt->later || !rt->unfed ||
        !rt->ev || !(rt->sink_cb = evbuffer_add_cb(rt->sink, sink_cb, rt)) ||
        !input_tail(rt, in, evbuffer_get_length(in)) ||
        !(rt->in_cb = evbuffer_add_cb(in, input_cb, rt))) {
        c->retry = rt;
        px_retry_client_free(c);
        return false;
    }
    backoff_init(&rt->bo, &cfg);
    rt->mode = RT_RECORD;
    c->retry = rt;
    return true;
}

void px_retry_client_free(struct px_client *c)
{
    struct px_retry *rt = c->retry;
    if (!rt)
        return;
    c->retry = NULL;
    if (rt->in_cb && c->bev)
        evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), rt->in_cb);
    if (rt->c->rd.blocked)
        px_reader_block(&c->rd, false);
    if (rt->ev)
        event_free(rt->ev);
    if (rt->rec) {
        rt->mode = RT_TAINTED;
        replay_rec_free(rt->rec);
        rt->rec = NULL;
        gauge_update(rt);
    }
    replay_verifier_free(rt->ver);
    if (rt->sink) {
        if (rt->sink_cb)
            evbuffer_remove_cb_entry(rt->sink, rt->sink_cb);
        evbuffer_free(rt->sink);
    }
    if (rt->fwd)
        evbuffer_free(rt->fwd);
    if (rt->held)
        evbuffer_free(rt->held);
    if (rt->later)
        evbuffer_free(rt->later);
    if (rt->unfed)
        evbuffer_free(rt->unfed);
    while (rt->risky) {
        struct rt_risky *r = rt->risky;
        rt->risky = r->next;
        free(r);
    }
    free(rt);
}

bool px_retry_client_release_idle(struct px_client *c)
{
    struct px_retry *rt = c->retry;
    if (!rt)
        return true;
    if (c->server || rt->mode != RT_RECORD || rt->ver || rt->in_relay || rt->quiet || rt->kick ||
        rt->wind || rt->feed || rt->replay_left || rt->open_group || rt->reqs || rt->out_hdr_n ||
        rt->out_left || rt->in_left || c->held_begin || evtimer_pending(rt->ev, NULL))
        return false;
    size_t kept = 0, pending = 0;
    replay_rec_bytes(rt->rec, &kept);
    replay_rec_pending(rt->rec, &pending);
    if (kept || pending || evbuffer_get_length(rt->sink) || evbuffer_get_length(rt->fwd) ||
        evbuffer_get_length(rt->held) || evbuffer_get_length(rt->later) ||
        evbuffer_get_length(rt->unfed) || rt->risky)
        return false;
    px_retry_client_free(c);
    return true;
}

bool px_retry_server_error(struct px_client *c, struct evbuffer *out, const uint8_t *body,
                           uint32_t len)
{
    struct px_retry *rt = c->retry;
    if (!rt || (rt->mode != RT_RECORD && rt->mode != RT_VERIFY))
        return false;
    const char *sev = px_wire_error_field((const char *)body, len, 'V');
    const char *code = px_wire_error_field((const char *)body, len, 'C');
    if (!sev || strcmp(sev, "ERROR") != 0 || !code ||
        !(retry_classify(&cfg.retryable_sqlstates, code) & RETRY_CLASS_RETRY))
        return false;
    bool was_recording = rt->mode == RT_RECORD;
    rt->sqlstate = sqlstate_label(code);
    walk(rt, out); /* what came before the error, in the mode it came in */
    /* That walk may have ended the recording (a COMMIT's tag, a RowDescription after it,
     * retry_buffer_bytes) or the verification (the replay differed): the error then takes
     * the way of what came before it, to the client or away. */
    if (rt->mode == RT_RECORD && rt->after_commit)
        taint(rt, "statements after a COMMIT");
    if (rt->mode != RT_RECORD && rt->mode != RT_VERIFY) {
        if (was_recording)
            count_outcome(rt, PX_MRO_NOT_REPLAYABLE);
        return false;
    }
    struct px_server *s = c->server;
    if (rt->mode == RT_RECORD) {
        /* The attempt must end without more from the client: its Sync or Query is sent. */
        if (!s || s->pending_ready == 0 || s->unsynced || c->c2s.remaining) {
            count_outcome(rt, PX_MRO_NOT_REPLAYABLE);
            taint(rt, "the error's message group is not complete");
            return false;
        }
        if (!replay_rec_replayable(rt->rec)) {
            count_outcome(rt, PX_MRO_BUFFER_EXCEEDED);
            taint(rt, "retry_buffer_bytes exceeded");
            return false;
        }
        /* the original error: what the client gets if the retry does not happen */
        evbuffer_drain(rt->held, evbuffer_get_length(rt->held));
        uint8_t hdr[5] = {'E'};
        px_put_u32(hdr + 1, len + 4);
        evbuffer_add(rt->held, hdr, 5);
        evbuffer_add(rt->held, body, len);
        rt->held_done = false;
        rt->orig_known = false;
        rt->held_txn_end = rt->ended_inside = false;
        rt->zs_seen = rt->zs;
        rt->notices_had = rt->notices_tail;
    }
    /* A replay that fails again before it matched keeps the original error (held_done). */
    px_debug("retry", 'C', c->id, "%s: holding it back (%s)", code,
             rt->mode == RT_VERIFY ? "the replay failed before it matched" : "first attempt");
    rt->mode = RT_HOLD;
    px_reader_block(&c->rd, true);
    return true;
}

/* Everything sent to c's server has been answered. */
static bool attempt_over(const struct px_client *c)
{
    const struct px_server *s = c->server;
    if (!s)
        return !c->lock_waiting && c->state == PX_CL_IDLE;
    return s->pending_ready == 0 && s->expect_n == 0 && s->hidden_queries == 0 &&
           s->s2c.remaining == 0 && !c->lock_waiting && !c->reply_hold;
}

void px_retry_after_relay(struct px_client *c)
{
    struct px_retry *rt = c->retry;
    if (!rt || rt->replay_left > 0 || !attempt_over(c))
        return;
    if (rt->mode == RT_HOLD) {
        decide(rt);
    } else if (rt->mode == RT_VERIFY) {
        if (evbuffer_get_length(rt->unfed))
            return; /* the next request is fed at the next turn (maybe_feed) */
        /* every reply of the replay is in and the last digest was not reached: the replay
         * said less than the client saw (the rows it read are gone, say) */
        replay_differs(rt);
        give_up(rt, PX_MRO_DIVERGED);
    } else if (rt->mode == RT_DISCARD) {
        give_up(rt, PX_MRO_DIVERGED);
    }
}

bool px_retry_holds_input(const struct px_client *c)
{
    const struct px_retry *rt = c->retry;
    if (!rt)
        return false;
    switch (rt->mode) {
    case RT_HOLD:
    case RT_DISCARD: return rt->replay_left == 0;
    case RT_BACKOFF: return true;
    default: return false;
    }
}

bool px_retry_owns_txn_end(const struct px_client *c)
{
    return c->retry != NULL;
}

/* c's transaction status as its next statement runs in it (a held BEGIN goes first). */
static char client_status(const struct px_client *c)
{
    return c->held_begin || !c->server ? px_txn_unlinked_status(c) : c->server->txn_status;
}

void px_retry_note_sql(struct px_client *c, const struct px_sql_info *info)
{
    /* CALL and DO outside a block may commit inside (no COMMIT tag says so) */
    if (c->retry && info->proc && client_status(c) == 'I')
        taint(c->retry, "CALL or DO outside a transaction block");
    if (c->retry && info->pins)
        taint(c->retry, info->session_feature ? info->session_feature : "session state");
    if (c->retry && info->outside_effect)
        taint(c->retry, info->outside_effect); /* a replay would do it twice */
    /* a rollback gives no statement back: the replay's DEALLOCATE would find it gone */
    if (c->retry && info->drops_prepared)
        taint(c->retry, "DEALLOCATE or DISCARD");
}

static uint8_t risk_of(const struct px_sql_info *info)
{
    return (uint8_t)((info->proc ? RT_RISK_PROC : 0) |
                     (info->pins || info->outside_effect ? RT_RISK_REPLAY : 0));
}

void px_retry_note_parse(struct px_client *c, const char *name, const struct px_sql_info *info)
{
    struct px_retry *rt = c->retry;
    if (!rt)
        return;
    if (*name && c->pool->mode == PX_POOL_SESSION)
        taint(rt, "a named statement prepared in the transaction (session pooling)");
    struct rt_risky **pp = &rt->risky;
    while (*pp && strcmp((*pp)->name, name) != 0)
        pp = &(*pp)->next;
    uint8_t risk = risk_of(info);
    if (*pp && !risk) { /* the name now holds a harmless text */
        struct rt_risky *r = *pp;
        *pp = r->next;
        free(r);
    } else if (*pp) {
        (*pp)->risk = risk;
    } else if (risk) {
        size_t n = strlen(name) + 1;
        struct rt_risky *r = malloc(sizeof(*r) + n);
        if (!r) {
            taint(rt, "out of memory");
            rt->broken = true;
            return;
        }
        r->risk = risk;
        memcpy(r->name, name, n);
        r->next = rt->risky;
        rt->risky = r;
    }
}

bool px_retry_watches_binds(const struct px_client *c)
{
    return c->retry && c->retry->risky;
}

void px_retry_note_bind(struct px_client *c, const char *name)
{
    struct px_retry *rt = c->retry;
    if (!rt)
        return;
    for (const struct rt_risky *r = rt->risky; r; r = r->next) {
        if (strcmp(r->name, name) != 0)
            continue;
        if (r->risk & RT_RISK_REPLAY)
            taint(rt, "a prepared statement with session state or outside effects");
        if ((r->risk & RT_RISK_PROC) && client_status(c) == 'I')
            taint(rt, "a prepared CALL or DO outside a transaction block");
        return;
    }
}

void px_retry_note_session_lock(struct px_client *c)
{
    if (c->retry)
        taint(c->retry, "a session-scoped pgwarden lock call");
}

void px_retry_note_streamed(struct px_client *c)
{
    if (c->retry)
        taint(c->retry, "a message too big to keep");
}

bool px_retry_cancel(struct px_client *c)
{
    struct px_retry *rt = c->retry;
    if (!rt || rt->mode != RT_BACKOFF)
        return false;
    give_up(rt, PX_MRO_CANCELED);
    return true;
}

bool px_retry_holding(const struct px_client *c)
{
    return c->retry && c->retry->mode == RT_HOLD;
}

bool px_retry_replaying(const struct px_client *c)
{
    const struct px_retry *rt = c->retry;
    return rt && (rt->mode == RT_VERIFY || rt->mode == RT_DISCARD);
}

unsigned px_retry_attempt(const struct px_client *c)
{
    const struct px_retry *rt = c->retry;
    if (!rt || rt->mode == RT_RECORD || rt->mode == RT_TAINTED)
        return 0;
    return backoff_attempts(&rt->bo);
}
