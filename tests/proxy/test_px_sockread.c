/* test_px_sockread.c: tests of proxy/sockread.c (pgwarden reading plain sockets itself) and
 * of px_relay_direct's straight-to-socket write, over a real socketpair and event loop. */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "cunit_main.h"
#include "proto/relay.h"
#include "net/sockread.h"

void test_sockread_register(void);

struct seen {
    int reads;       /* read callbacks */
    size_t max_step; /* most bytes that one read added */
    size_t last_len; /* input length at the last callback */
    short events;    /* event callback flags, or'ed */
    int event_calls;
};

static void on_read(struct bufferevent *bev, void *arg)
{
    struct seen *s = arg;
    size_t len = evbuffer_get_length(bufferevent_get_input(bev));
    if (len - s->last_len > s->max_step)
        s->max_step = len - s->last_len;
    s->last_len = len;
    s->reads++;
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct seen *s = arg;
    s->events |= what;
    s->event_calls++;
}

struct rig {
    struct event_base *base;
    struct bufferevent *bev;
    struct px_reader rd;
    int fds[2]; /* fds[0]: the bufferevent's; fds[1]: the peer */
    struct seen seen;
};

static void rig_open(struct rig *r)
{
    memset(r, 0, sizeof(*r));
    CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, r->fds), 0);
    evutil_make_socket_nonblocking(r->fds[0]);
    r->base = event_base_new();
    r->bev = bufferevent_socket_new(r->base, r->fds[0], 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r->bev);
    bufferevent_setcb(r->bev, on_read, NULL, on_event, &r->seen);
    CU_ASSERT_EQUAL_FATAL(px_reader_bind(&r->rd, r->base, r->bev, r->fds[0]), 0);
    CU_ASSERT_FALSE(px_reader_enabled(&r->rd)); /* bound with reading off */
    CU_ASSERT_FALSE(bufferevent_get_enabled(r->bev) & EV_READ);
}

static void rig_close(struct rig *r)
{
    px_reader_unbind(&r->rd);
    px_reader_unbind(&r->rd); /* idempotent */
    bufferevent_free(r->bev);
    event_base_free(r->base);
    close(r->fds[0]);
    if (r->fds[1] >= 0)
        close(r->fds[1]);
}

/* Runs the loop until nothing is ready (bounded). */
static void spin(struct rig *r)
{
    for (int i = 0; i < 64; i++)
        event_base_loop(r->base, EVLOOP_NONBLOCK);
}

static void test_reads_into_bufferevent_input(void)
{
    struct rig r;
    rig_open(&r);
    px_reader_enable(&r.rd, true);
    CU_ASSERT_TRUE(px_reader_enabled(&r.rd));
    CU_ASSERT_EQUAL(write(r.fds[1], "hello", 5), 5);
    spin(&r);
    CU_ASSERT_EQUAL(r.seen.reads, 1);
    struct evbuffer *in = bufferevent_get_input(r.bev);
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(in), 5);
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(in, 5), "hello", 5), 0);
    /* The input stays the bufferevent's: appending from outside is still refused. */
    CU_ASSERT_EQUAL(evbuffer_add(in, "x", 1), -1);
    CU_ASSERT_EQUAL(r.seen.event_calls, 0);
    rig_close(&r);
}

static void test_disabled_reads_nothing(void)
{
    struct rig r;
    rig_open(&r);
    px_reader_enable(&r.rd, true);
    px_reader_enable(&r.rd, false);
    CU_ASSERT_EQUAL(write(r.fds[1], "abc", 3), 3);
    spin(&r);
    CU_ASSERT_EQUAL(r.seen.reads, 0);
    CU_ASSERT_EQUAL(evbuffer_get_length(bufferevent_get_input(r.bev)), 0);
    px_reader_enable(&r.rd, true);
    spin(&r);
    CU_ASSERT_EQUAL(r.seen.reads, 1);
    CU_ASSERT_EQUAL(evbuffer_get_length(bufferevent_get_input(r.bev)), 3);
    rig_close(&r);
}

static void test_eof_reported_once(void)
{
    struct rig r;
    rig_open(&r);
    px_reader_enable(&r.rd, true);
    CU_ASSERT_EQUAL(write(r.fds[1], "tail", 4), 4);
    close(r.fds[1]);
    r.fds[1] = -1;
    spin(&r);
    CU_ASSERT_EQUAL(r.seen.reads, 1); /* the bytes before the EOF are delivered first */
    CU_ASSERT_EQUAL(evbuffer_get_length(bufferevent_get_input(r.bev)), 4);
    CU_ASSERT_EQUAL(r.seen.event_calls, 1);
    CU_ASSERT_TRUE(r.seen.events & BEV_EVENT_EOF);
    CU_ASSERT_TRUE(r.seen.events & BEV_EVENT_READING);
    CU_ASSERT_FALSE(px_reader_enabled(&r.rd));
    rig_close(&r);
}

static void test_large_input_in_bounded_reads(void)
{
    struct rig r;
    rig_open(&r);
    px_reader_enable(&r.rd, true);
    size_t total = 100000;
    uint8_t *data = malloc(total);
    for (size_t i = 0; i < total; i++)
        data[i] = (uint8_t)(i * 7 + 3);
    CU_ASSERT_EQUAL_FATAL(write(r.fds[1], data, total), (ssize_t)total);
    spin(&r);
    struct evbuffer *in = bufferevent_get_input(r.bev);
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(in), total);
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(in, (ssize_t)total), data, total), 0);
    CU_ASSERT_TRUE(r.seen.reads >= 6);        /* at most 16 KiB per wake-up ... */
    CU_ASSERT_TRUE(r.seen.max_step <= 16384); /* ... so one peer cannot starve the others */
    CU_ASSERT_TRUE(r.seen.max_step > 8192);   /* and growing past libevent's 4 KiB */
    /* After the burst a small read starts small again: 1 KiB chains for small requests. */
    evbuffer_drain(in, total);
    CU_ASSERT_EQUAL(write(r.fds[1], data, 100), 100);
    spin(&r);
    evbuffer_drain(in, 100);
    r.seen.last_len = 0;
    r.seen.max_step = 0;
    CU_ASSERT_EQUAL(write(r.fds[1], data, 5000), 5000);
    spin(&r);
    CU_ASSERT_EQUAL(evbuffer_get_length(in), 5000);
    CU_ASSERT_TRUE(r.seen.max_step < 5000); /* not in one 16 KiB gulp */
    free(data);
    rig_close(&r);
}

static enum px_relay_action pass(void *ctx, struct evbuffer *out, char type, const uint8_t *body,
                                 uint32_t len)
{
    (void)ctx, (void)out, (void)type, (void)body, (void)len;
    return PX_RELAY_FORWARD;
}

static void test_relay_direct_writes_socket(void)
{
    struct rig r;
    rig_open(&r);
    static const uint8_t none[256];
    struct evbuffer *in = evbuffer_new(), *out = bufferevent_get_output(r.bev);
    struct px_stream st = {0};
    evbuffer_add(in,
                 "Q\0\0\0\x08"
                 "abcd",
                 9);
    size_t moved = 0;
    CU_ASSERT_EQUAL(px_relay_direct(&st, in, out, (struct px_direct){r.fds[0], NULL}, none, pass,
                                    NULL, 1000, &moved),
                    PX_RELAY_OK);
    CU_ASSERT_EQUAL(moved, 9);
    CU_ASSERT_EQUAL(evbuffer_get_length(out), 0); /* written straight to the socket */
    char got[16];
    CU_ASSERT_EQUAL_FATAL(read(r.fds[1], got, sizeof(got)), 9);
    CU_ASSERT_EQUAL(memcmp(got,
                           "Q\0\0\0\x08"
                           "abcd",
                           9),
                    0);
    /* Output already queued: the new bytes go behind it, not around it. */
    bufferevent_disable(r.bev, EV_WRITE);
    evbuffer_add(out, "first", 5);
    evbuffer_add(in,
                 "Q\0\0\0\x05"
                 "z",
                 6);
    CU_ASSERT_EQUAL(px_relay_direct(&st, in, out, (struct px_direct){r.fds[0], NULL}, none, pass,
                                    NULL, 1000, &moved),
                    PX_RELAY_OK);
    CU_ASSERT_EQUAL(moved, 6);
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(out), 11);
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(out, 11),
                           "firstQ\0\0\0\x05"
                           "z",
                           11),
                    0);
    evbuffer_free(in);
    px_relay_shutdown();
    rig_close(&r);
}

static const CU_TestInfo sockread_tests[] = {
    {"reads_into_bufferevent_input", test_reads_into_bufferevent_input},
    {"disabled_reads_nothing", test_disabled_reads_nothing},
    {"eof_reported_once", test_eof_reported_once},
    {"large_input_in_bounded_reads", test_large_input_in_bounded_reads},
    {"relay_direct_writes_socket", test_relay_direct_writes_socket},
    CU_TEST_INFO_NULL,
};

void test_sockread_register(void)
{
    cunit_add_suite("sockread", NULL, NULL, sockread_tests);
}
