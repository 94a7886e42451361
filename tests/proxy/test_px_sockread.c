/* test_px_sockread.c: tests of proxy/sockread.c (pgwarden reading plain sockets itself, and
 * TLS ones through SSL_read) and of px_relay_direct's straight-to-socket write, over a real
 * socketpair and event loop. */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

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

/* ---- TLS: SSL_read that must write first ------------------------------------------- */

/* A TLS server context with a throwaway self-signed P-256 certificate, as pgwarden's
 * (no renegotiation, no tickets). */
static SSL_CTX *tls_server_ctx(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    CU_ASSERT_FATAL(key && x && ctx);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"test", -1, -1, 0);
    X509_set_issuer_name(x, name);
    CU_ASSERT_FATAL(X509_sign(x, key, EVP_sha256()) > 0);
    CU_ASSERT_FATAL(SSL_CTX_use_certificate(ctx, x) == 1 && SSL_CTX_use_PrivateKey(ctx, key) == 1);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_num_tickets(ctx, 0);
    X509_free(x);
    EVP_PKEY_free(key);
    return ctx;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void run_for_ms(struct event_base *base, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

/* A TLS 1.3 connection over a socketpair, handshake done: r->fds[0] and *s are pgwarden's
 * side, read by r->rd through an OpenSSL bufferevent (not owning s) with callbacks rd and
 * ev; r->fds[1] and *c the peer's. */
struct tls_pair {
    SSL_CTX *sctx, *cctx;
    SSL *s, *c;
};

static void tls_rig_open(struct rig *r, struct tls_pair *t, bufferevent_data_cb rd,
                         bufferevent_event_cb ev, void *arg)
{
    CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, r->fds), 0);
    evutil_make_socket_nonblocking(r->fds[0]);
    evutil_make_socket_nonblocking(r->fds[1]);
    t->sctx = tls_server_ctx();
    t->cctx = SSL_CTX_new(TLS_client_method());
    SSL *s = t->s = SSL_new(t->sctx), *c = t->c = SSL_new(t->cctx);
    CU_ASSERT_FATAL(s && c && SSL_set_fd(s, r->fds[0]) == 1 && SSL_set_fd(c, r->fds[1]) == 1);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    for (int i = 0; i < 100 && !(SSL_is_init_finished(s) && SSL_is_init_finished(c)); i++) {
        SSL_do_handshake(c);
        SSL_do_handshake(s);
    }
    CU_ASSERT_FATAL(SSL_is_init_finished(s) && SSL_is_init_finished(c));
    r->base = event_base_new();
    r->bev = bufferevent_openssl_socket_new(r->base, r->fds[0], s, BUFFEREVENT_SSL_OPEN, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r->bev);
    bufferevent_setcb(r->bev, rd, NULL, ev, arg);
    bufferevent_enable(r->bev, EV_WRITE);
    CU_ASSERT_EQUAL_FATAL(px_reader_bind(&r->rd, r->base, r->bev, -1), 0);
    CU_ASSERT_EQUAL_FATAL(px_reader_own_tls(&r->rd, r->base, r->fds[0], s), 0);
}

static void tls_rig_close(struct rig *r, struct tls_pair *t)
{
    px_reader_unbind(&r->rd);
    bufferevent_free(r->bev);
    SSL_free(t->s);
    SSL_free(t->c);
    SSL_CTX_free(t->sctx);
    SSL_CTX_free(t->cctx);
    event_base_free(r->base);
    close(r->fds[0]);
    close(r->fds[1]);
    ERR_clear_error();
}

/*
 * TLS 1.3: the peer's KeyUpdate asks for ours; our next write (px_relay_write's SSL_write)
 * finds the send buffer full, so OpenSSL stays in the middle of the KeyUpdate and every
 * SSL_read returns SSL_ERROR_WANT_WRITE until the socket drains.  The reader must wait for
 * the socket to become writable: waiting for it to be readable spins as long as the peer's
 * next bytes wait in it, and the reader must read them once the KeyUpdate is out.  The
 * full send buffer is made by writing raw bytes below the TLS stream; the peer reads them
 * raw before it reads TLS again.
 */
static void test_tls_read_waits_until_writable(void)
{
    struct rig r;
    memset(&r, 0, sizeof(r));
    struct tls_pair t;
    tls_rig_open(&r, &t, on_read, on_event, &r.seen);
    SSL *s = t.s, *c = t.c;
    CU_ASSERT_EQUAL_FATAL(SSL_version(s), TLS1_3_VERSION);
    px_reader_enable(&r.rd, true);
    struct evbuffer *in = bufferevent_get_input(r.bev), *out = bufferevent_get_output(r.bev);

    /* the peer asks for a KeyUpdate; read: ours is due with our next write */
    CU_ASSERT_EQUAL(SSL_key_update(c, SSL_KEY_UPDATE_REQUESTED), 1);
    CU_ASSERT_EQUAL(SSL_write(c, "hello", 5), 5);
    spin(&r);
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(in), 5);

    /* our send buffer full, then a reply: SSL_write starts the KeyUpdate and cannot finish */
    static char junk[65536];
    size_t filled = 0;
    for (ssize_t w; (w = send(r.fds[0], junk, sizeof(junk), MSG_NOSIGNAL)) > 0;)
        filled += (size_t)w;
    CU_ASSERT_FATAL(filled > 0);
    struct evbuffer *reply = evbuffer_new();
    evbuffer_add(reply, "abc", 3);
    px_relay_write(reply, out, (struct px_direct){r.fds[0], s});
    CU_ASSERT_EQUAL(evbuffer_get_length(out), 3); /* left to the bufferevent */
    CU_ASSERT_TRUE(SSL_in_init(s));

    /* the peer sends more without reading: no busy loop while the socket stays full */
    CU_ASSERT_EQUAL(SSL_write(c, "late", 4), 4);
    double t0 = cpu_seconds();
    run_for_ms(r.base, 300);
    double used = cpu_seconds() - t0;
    if (used >= 0.1)
        fprintf(stderr, "\n    %.0f ms of CPU in 300 ms of waiting: busy loop\n", used * 1e3);
    CU_ASSERT_TRUE(used < 0.1);
    CU_ASSERT_EQUAL(r.seen.event_calls, 0);

    /* the peer drains the socket: the KeyUpdate and the reply go out, "late" is read */
    static char sink[65536];
    for (size_t got = 0; got < filled;) {
        ssize_t n =
            recv(r.fds[1], sink, filled - got < sizeof(sink) ? filled - got : sizeof(sink), 0);
        if (n > 0)
            got += (size_t)n;
        else
            event_base_loop(r.base, EVLOOP_NONBLOCK);
    }
    for (int i = 0; i < 50 && evbuffer_get_length(in) < 9; i++)
        run_for_ms(r.base, 10);
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(in), 9);
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(in, 9), "hellolate", 9), 0);
    CU_ASSERT_EQUAL(evbuffer_get_length(out), 0);
    char got[8] = {0};
    int n = -1;
    for (int i = 0; i < 100 && n <= 0; i++) {
        n = SSL_read(c, got, sizeof(got)); /* our KeyUpdate first, then "abc" */
        if (n <= 0)
            run_for_ms(r.base, 5);
    }
    CU_ASSERT_EQUAL(n, 3);
    CU_ASSERT_EQUAL(memcmp(got, "abc", 3), 0);
    CU_ASSERT_FALSE(SSL_in_init(s));
    CU_ASSERT_EQUAL(r.seen.event_calls, 0);

    evbuffer_free(reply);
    px_relay_shutdown();
    tls_rig_close(&r, &t);
}

/* What the event callback saw of OpenSSL's error queue and errno (as px_tls_failure reads
 * them) when it was called. */
struct seen_failure {
    struct seen seen;
    struct px_reader *rd;
    bool pause; /* the read callback switches reading off */
    unsigned long ssl_err;
    int sys_err;
};

static void on_event_failure(struct bufferevent *bev, short what, void *arg)
{
    struct seen_failure *f = arg;
    f->ssl_err = ERR_peek_error();
    f->sys_err = errno;
    on_event(bev, what, &f->seen);
}

/* Like on_read, but the callback stops reading, as a client waiting for a server does:
 * the failure behind the data must wait until reading is on again. */
static void on_read_pause(struct bufferevent *bev, void *arg)
{
    struct seen_failure *f = arg;
    on_read(bev, &f->seen);
    if (f->pause)
        px_reader_enable(f->rd, false);
    ERR_clear_error(); /* as pgwarden's own TLS writes in a read callback do */
}

/*
 * The peer's data and a record that fails (here a forged application-data record, so a
 * bad record MAC) arrive in one wake-up: the reader hands the data on first and reports
 * the failure on its next turn.  OpenSSL does not say why a second time (the next
 * SSL_read finds the connection failed and queues no reason), so the reader must keep
 * the first failure's reason for the event callback: the log must not say "unknown
 * error".  Reading switched off and on in between must not lose it either.
 */
static void tls_failure_after_data(bool pause)
{
    struct rig r;
    memset(&r, 0, sizeof(r));
    struct seen_failure f;
    memset(&f, 0, sizeof(f));
    f.rd = &r.rd;
    f.pause = pause;
    struct tls_pair t;
    tls_rig_open(&r, &t, on_read_pause, on_event_failure, &f);
    SSL *c = t.c;

    /* "hello", then a forged record: header (application data, TLS 1.2 on the wire, 32
     * bytes) and 32 bytes that are no AEAD output of this connection */
    CU_ASSERT_EQUAL(SSL_write(c, "hello", 5), 5);
    uint8_t forged[5 + 32] = {0x17, 0x03, 0x03, 0x00, 32};
    memset(forged + 5, 0xA5, 32);
    CU_ASSERT_EQUAL_FATAL(send(r.fds[1], forged, sizeof(forged), MSG_NOSIGNAL),
                          (ssize_t)sizeof(forged));

    px_reader_enable(&r.rd, true);
    event_base_loop(r.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    struct evbuffer *in = bufferevent_get_input(r.bev);
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(in), 5); /* the data first */
    CU_ASSERT_EQUAL(f.seen.reads, 1);

    if (pause) {
        /* the read callback switched reading off (a client waiting for a server): nothing
         * is reported until it is on again, then the failure with its reason */
        for (int i = 0; i < 5; i++)
            event_base_loop(r.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        CU_ASSERT_EQUAL(f.seen.event_calls, 0);
        ERR_clear_error();
        px_reader_enable(&r.rd, true);
    }
    for (int i = 0; i < 50 && f.seen.event_calls == 0; i++)
        run_for_ms(r.base, 5);
    CU_ASSERT_EQUAL(f.seen.event_calls, 1);
    CU_ASSERT_TRUE(f.seen.events & BEV_EVENT_ERROR);
    CU_ASSERT_EQUAL(ERR_GET_REASON(f.ssl_err), SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC);
    if (ERR_GET_REASON(f.ssl_err) != SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC) {
        char why[256] = "none";
        if (f.ssl_err)
            ERR_error_string_n(f.ssl_err, why, sizeof(why));
        fprintf(stderr, "\n    reason at the event callback: %s, errno %d\n", why, f.sys_err);
    }
    CU_ASSERT_EQUAL(evbuffer_get_length(in), 5);

    tls_rig_close(&r, &t);
}

static void test_tls_failure_after_data_keeps_its_reason(void)
{
    tls_failure_after_data(false);
    tls_failure_after_data(true);
}

static const CU_TestInfo sockread_tests[] = {
    {"reads_into_bufferevent_input", test_reads_into_bufferevent_input},
    {"disabled_reads_nothing", test_disabled_reads_nothing},
    {"eof_reported_once", test_eof_reported_once},
    {"large_input_in_bounded_reads", test_large_input_in_bounded_reads},
    {"relay_direct_writes_socket", test_relay_direct_writes_socket},
    {"tls_read_waits_until_writable", test_tls_read_waits_until_writable},
    {"tls_failure_after_data_keeps_its_reason", test_tls_failure_after_data_keeps_its_reason},
    CU_TEST_INFO_NULL,
};

void test_sockread_register(void)
{
    cunit_add_suite("sockread", NULL, NULL, sockread_tests);
}
