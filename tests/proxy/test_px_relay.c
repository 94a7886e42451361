/* test_px_relay.c: tests of proxy/relay.c, the streaming forwarder. */
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <event2/buffer.h>

#include "cunit_main.h"
#include "proto/relay.h"
#include "proto/wire.h"

void test_relay_register(void);

struct seen {
    int count;
    char types[32];
    uint32_t lens[32];
    char last_body[64];
    enum px_relay_action answer; /* what the callback answers for 'Z' */
};

static enum px_relay_action record(void *ctx, struct evbuffer *out, char type, const uint8_t *body,
                                   uint32_t len)
{
    (void)out;
    struct seen *s = ctx;
    if (s->count < 32) {
        s->types[s->count] = type;
        s->lens[s->count] = len;
    }
    s->count++;
    if (body && len < sizeof(s->last_body)) {
        memcpy(s->last_body, body, len);
        s->last_body[len] = '\0';
    }
    return type == 'Z' ? s->answer : PX_RELAY_FORWARD;
}

static void add_msg(struct evbuffer *b, char type, const char *body, size_t len)
{
    uint8_t hdr[5] = {(uint8_t)type};
    px_put_u32(hdr + 1, (uint32_t)(len + 4));
    evbuffer_add(b, hdr, 5);
    evbuffer_add(b, body, len);
}

static const uint8_t see_z_body[256] = {['Z'] = PX_SEE_BODY, ['Q'] = PX_SEE_TYPE};

static void test_passthrough_in_order(void)
{
    struct evbuffer *in = evbuffer_new(), *out = evbuffer_new(), *expect = evbuffer_new();
    add_msg(in, 'T', "abc", 3);
    add_msg(in, 'D', "row1", 4);
    add_msg(in, 'Z', "I", 1);
    add_msg(in, 'D', "row2", 4);
    evbuffer_add(expect, evbuffer_pullup(in, -1), evbuffer_get_length(in));
    struct px_stream st = {0};
    struct seen s = {.answer = PX_RELAY_FORWARD};
    CU_ASSERT_EQUAL(px_relay(&st, in, out, see_z_body, record, &s, 1000), PX_RELAY_OK);
    CU_ASSERT_EQUAL(evbuffer_get_length(in), 0);
    CU_ASSERT_EQUAL(evbuffer_get_length(out), evbuffer_get_length(expect));
    CU_ASSERT_EQUAL(
        memcmp(evbuffer_pullup(out, -1), evbuffer_pullup(expect, -1), evbuffer_get_length(out)), 0);
    CU_ASSERT_EQUAL(s.count, 1);
    CU_ASSERT_EQUAL(s.types[0], 'Z');
    CU_ASSERT_STRING_EQUAL(s.last_body, "I");
    evbuffer_free(in), evbuffer_free(out), evbuffer_free(expect);
}

/* A large pass-through message is forwarded as it arrives, byte by byte if need be. */
static void test_streaming_partial(void)
{
    struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
    char big[5000];
    memset(big, 'x', sizeof(big));
    struct evbuffer *whole = evbuffer_new();
    add_msg(whole, 'd', big, sizeof(big));
    add_msg(whole, 'Z', "T", 1);
    size_t total = evbuffer_get_length(whole);
    const uint8_t *bytes = evbuffer_pullup(whole, -1);
    struct px_stream st = {0};
    struct seen s = {.answer = PX_RELAY_FORWARD};
    size_t fed = 0, chunk = 7;
    while (fed < total) {
        size_t n = total - fed < chunk ? total - fed : chunk;
        evbuffer_add(in, bytes + fed, n);
        fed += n;
        CU_ASSERT_EQUAL(px_relay(&st, in, out, see_z_body, record, &s, 100000), PX_RELAY_OK);
        /* Nothing of the pass-through message is held back once its header is known. */
        if (fed >= 5 && fed <= 5 + sizeof(big))
            CU_ASSERT_EQUAL(evbuffer_get_length(out), fed);
    }
    CU_ASSERT_EQUAL(evbuffer_get_length(out), total);
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(out, -1), bytes, total), 0);
    CU_ASSERT_EQUAL(s.count, 1);
    CU_ASSERT_EQUAL(st.remaining, 0);
    evbuffer_free(in), evbuffer_free(out), evbuffer_free(whole);
}

static void test_body_waits_for_whole_message(void)
{
    struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
    struct px_stream st = {0};
    struct seen s = {.answer = PX_RELAY_FORWARD};
    evbuffer_add(in, "Z\0\0\0\x05", 5);
    CU_ASSERT_EQUAL(px_relay(&st, in, out, see_z_body, record, &s, 1000), PX_RELAY_OK);
    CU_ASSERT_EQUAL(s.count, 0);
    CU_ASSERT_EQUAL(evbuffer_get_length(out), 0);
    evbuffer_add(in, "E", 1);
    CU_ASSERT_EQUAL(px_relay(&st, in, out, see_z_body, record, &s, 1000), PX_RELAY_OK);
    CU_ASSERT_EQUAL(s.count, 1);
    CU_ASSERT_STRING_EQUAL(s.last_body, "E");
    CU_ASSERT_EQUAL(evbuffer_get_length(out), 6);
    evbuffer_free(in), evbuffer_free(out);
}

static void test_drop_and_stop(void)
{
    struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
    struct px_stream st = {0};
    struct seen s = {.answer = PX_RELAY_DROP};
    add_msg(in, 'C', "SELECT 1", 9);
    add_msg(in, 'Z', "I", 1);
    add_msg(in, 'N', "n", 1);
    CU_ASSERT_EQUAL(px_relay(&st, in, out, see_z_body, record, &s, 1000), PX_RELAY_OK);
    CU_ASSERT_EQUAL(evbuffer_get_length(out), 14 + 6); /* C and N, not Z */
    evbuffer_drain(out, evbuffer_get_length(out));
    s.answer = PX_RELAY_STOP;
    add_msg(in, 'Z', "I", 1);
    add_msg(in, 'D', "after", 5);
    CU_ASSERT_EQUAL(px_relay(&st, in, out, see_z_body, record, &s, 1000), PX_RELAY_STOPPED);
    CU_ASSERT_EQUAL(evbuffer_get_length(out), 6); /* the Z itself went on */
    CU_ASSERT_EQUAL(evbuffer_get_length(in), 10); /* what follows is untouched */
    evbuffer_free(in), evbuffer_free(out);
}

static void test_type_callback_and_limits(void)
{
    struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
    struct px_stream st = {0};
    struct seen s = {.answer = PX_RELAY_FORWARD};
    add_msg(in, 'Q', "SELECT 1", 9);
    add_msg(in, 'Q', "SELECT 2", 9);
    CU_ASSERT_EQUAL(px_relay(&st, in, out, see_z_body, record, &s, 1000), PX_RELAY_OK);
    CU_ASSERT_EQUAL(s.count, 2);
    CU_ASSERT_EQUAL(s.lens[1], 9);
    size_t forwarded = evbuffer_get_length(out);
    /* An assembled message over max_len: nothing of it is forwarded, earlier messages are.
     * (max_len bounds only what is assembled: a type-only message of that size streams.) */
    add_msg(in, 'Q', "x", 1);
    char big[200];
    memset(big, 'y', sizeof(big));
    add_msg(in, 'Z', big, sizeof(big));
    CU_ASSERT_EQUAL(px_relay(&st, in, out, see_z_body, record, &s, 100), PX_RELAY_TOO_LARGE);
    CU_ASSERT_EQUAL(evbuffer_get_length(out), forwarded + 6);
    CU_ASSERT_EQUAL(st.bad_len, 204);
    CU_ASSERT_STRING_EQUAL(px_wire_length_error(st.bad_len),
                           "invalid message length: message larger than max_message_bytes");
    /* A length below 4 is malformed too, and said to be (as PostgreSQL words it). */
    struct evbuffer *bad = evbuffer_new();
    evbuffer_add(bad, "Q\0\0\0\x02", 5);
    CU_ASSERT_EQUAL(px_relay(&st, bad, out, see_z_body, record, &s, 100), PX_RELAY_TOO_LARGE);
    CU_ASSERT_EQUAL(st.bad_len, 2);
    CU_ASSERT_STRING_EQUAL(px_wire_length_error(st.bad_len), "invalid message length");
    evbuffer_free(in), evbuffer_free(out), evbuffer_free(bad);
}

static void test_read_message(void)
{
    struct evbuffer *in = evbuffer_new();
    char type;
    const uint8_t *body;
    uint32_t len;
    evbuffer_add(in, "R\0\0\0\x08\0\0", 7);
    CU_ASSERT_EQUAL(px_read_message(in, 100, &type, &body, &len), 0);
    evbuffer_add(in, "\0\0", 2);
    CU_ASSERT_EQUAL(px_read_message(in, 100, &type, &body, &len), 1);
    CU_ASSERT_EQUAL(type, 'R');
    CU_ASSERT_EQUAL(len, 4);
    evbuffer_drain(in, 9);
    evbuffer_add(in, "R\0\0\x10\0", 5);
    CU_ASSERT_EQUAL(px_read_message(in, 100, &type, &body, &len), -1);
    evbuffer_free(in);
}

/* px_take_message consumes the message and hands over a copy that outlives the buffer. */
static void test_take_message(void)
{
    struct evbuffer *in = evbuffer_new();
    char type;
    uint8_t *body = NULL;
    uint32_t len;
    evbuffer_add(in,
                 "p\0\0\0\x07"
                 "ab",
                 7); /* one byte of the body is missing */
    CU_ASSERT_EQUAL(px_take_message(in, 100, &type, &body, &len), 0);
    CU_ASSERT_EQUAL(evbuffer_get_length(in), 7);
    evbuffer_add(in, "cZ\0\0\0\x05I", 7);
    CU_ASSERT_EQUAL_FATAL(px_take_message(in, 100, &type, &body, &len), 1);
    CU_ASSERT_EQUAL(type, 'p');
    CU_ASSERT_EQUAL(len, 3);
    CU_ASSERT_EQUAL(evbuffer_get_length(in), 6); /* only the next message is left */
    evbuffer_drain(in, 6);                       /* the copy survives the buffer moving on */
    CU_ASSERT_EQUAL(memcmp(body, "abc", 3), 0);
    free(body);
    evbuffer_add(in, "E\0\0\0\x04", 5); /* empty body */
    CU_ASSERT_EQUAL_FATAL(px_take_message(in, 100, &type, &body, &len), 1);
    CU_ASSERT_EQUAL(len, 0);
    CU_ASSERT_PTR_NOT_NULL(body);
    CU_ASSERT_EQUAL(evbuffer_get_length(in), 0);
    free(body);
    evbuffer_add(in, "E\0\1\0\0", 5); /* longer than max_len */
    CU_ASSERT_EQUAL(px_take_message(in, 100, &type, &body, &len), -1);
    evbuffer_free(in);
}

/* PX_SEE_HEAD: a small message is shown whole; a big one by its head, the rest streams,
 * is dropped as it arrives, or has its head replaced. */
struct head_seen {
    int calls;
    uint32_t len;
    enum px_relay_action answer;
    struct px_stream *st;
};

static enum px_relay_action head_cb(void *ctx, struct evbuffer *out, char type, const uint8_t *body,
                                    uint32_t len)
{
    struct head_seen *h = ctx;
    (void)type;
    h->calls++;
    h->len = len;
    CU_ASSERT_EQUAL(body[0], 'h'); /* the head is readable */
    if (len <= PX_RELAY_HEAD_MAX)
        return PX_RELAY_FORWARD; /* small messages pass */
    if (h->answer == PX_RELAY_REPLACE_HEAD) {
        evbuffer_add(out, "Q\0\0\0\x09NEW!", 9); /* a new header and 4 bytes of body */
        h->st->skip = 5 + 4;                     /* replace the old header and "hhhh" */
    }
    return h->answer;
}

static void test_head_mode(void)
{
    static const uint8_t see_head[256] = {['Q'] = PX_SEE_HEAD};
    const size_t n = PX_RELAY_HEAD_MAX + 1000;
    char *body = malloc(n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(body);
    memset(body, 'h', n);
    const enum px_relay_action answers[] = {PX_RELAY_FORWARD, PX_RELAY_DROP, PX_RELAY_REPLACE_HEAD,
                                            PX_RELAY_HOLD};
    for (size_t a = 0; a < 4; a++) {
        struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
        struct px_stream st = {0};
        struct head_seen h = {.answer = answers[a], .st = &st};
        /* small: shown whole (len as given); over max_len too, which binds only BODY */
        add_msg(in, 'Q', "hi", 2);
        h.answer = PX_RELAY_FORWARD;
        CU_ASSERT_EQUAL(px_relay(&st, in, out, see_head, head_cb, &h, 1), PX_RELAY_OK);
        CU_ASSERT_EQUAL(h.calls, 1);
        CU_ASSERT_EQUAL(evbuffer_get_length(out), 7);
        evbuffer_drain(out, 7);
        h.answer = answers[a];
        /* big: the header and the first bytes arrive, then the rest in two pieces */
        uint8_t hdr[5] = {'Q'};
        px_put_u32(hdr + 1, (uint32_t)(n + 4));
        evbuffer_add(in, hdr, 5);
        evbuffer_add(in, body, PX_RELAY_HEAD_MAX);
        enum px_relay_result r = px_relay(&st, in, out, see_head, head_cb, &h, 1);
        CU_ASSERT_EQUAL(h.calls, 2);
        CU_ASSERT_EQUAL(h.len, n);
        if (answers[a] == PX_RELAY_HOLD) {
            CU_ASSERT_EQUAL(r, PX_RELAY_STOPPED);
            CU_ASSERT_EQUAL(evbuffer_get_length(in), 5 + PX_RELAY_HEAD_MAX); /* untouched */
            evbuffer_free(in), evbuffer_free(out);
            continue;
        }
        CU_ASSERT_EQUAL(r, PX_RELAY_OK);
        evbuffer_add(in, body, 500);
        CU_ASSERT_EQUAL(px_relay(&st, in, out, see_head, head_cb, &h, 1), PX_RELAY_OK);
        evbuffer_add(in, body, 500);
        add_msg(in, 'Q', "hh", 2); /* the next message is framed correctly */
        CU_ASSERT_EQUAL(px_relay(&st, in, out, see_head, head_cb, &h, 1), PX_RELAY_OK);
        CU_ASSERT_EQUAL(h.calls, 3);
        CU_ASSERT_EQUAL(h.len, 2);
        size_t want = answers[a] == PX_RELAY_DROP ? 7 : 5 + n + 7;
        CU_ASSERT_EQUAL(evbuffer_get_length(out), want);
        if (answers[a] == PX_RELAY_REPLACE_HEAD) {
            uint8_t first[9];
            evbuffer_copyout(out, first, 9);
            CU_ASSERT_EQUAL(memcmp(first, "Q\0\0\0\x09NEW!", 9), 0);
        }
        CU_ASSERT_EQUAL(evbuffer_get_length(in), 0);
        evbuffer_free(in), evbuffer_free(out);
    }
    free(body);
}

static const CU_TestInfo relay_tests[] = {
    {"head_mode", test_head_mode},
    {"passthrough_in_order", test_passthrough_in_order},
    {"streaming_partial", test_streaming_partial},
    {"body_waits_for_whole_message", test_body_waits_for_whole_message},
    {"drop_and_stop", test_drop_and_stop},
    {"type_callback_and_limits", test_type_callback_and_limits},
    {"read_message", test_read_message},
    {"take_message", test_take_message},
    CU_TEST_INFO_NULL,
};

void test_relay_register(void)
{
    cunit_add_suite("relay", NULL, NULL, relay_tests);
}
