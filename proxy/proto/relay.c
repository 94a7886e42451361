/*
 * relay.c: streaming message forwarder (see relay.h).
 *
 * Invariant: st->remaining > 0 means the head of `in` is the continuation of a pass-through
 * message; otherwise the head of `in` is the start of a message.  `run` counts bytes at the
 * head of `in` already decided to be forwarded; they are moved in one call before any
 * callback that may write to `out` itself, so the order of bytes is always preserved.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "proto/relay.h"
#include "proto/wire.h"

static int peek_header(struct evbuffer *in, size_t offset, char *type, uint32_t *len)
{
    uint8_t copy[5];
    const uint8_t *hdr = copy;
    struct evbuffer_iovec first;
    /* Once per message: read the header in place when it lies in the first chain (small
     * messages, the hot path); otherwise search for it and copy it out. */
    if (evbuffer_peek(in, -1, NULL, &first, 1) == 1 && offset + 5 <= first.iov_len) {
        hdr = (const uint8_t *)first.iov_base + offset;
    } else {
        struct evbuffer_ptr ptr;
        if (evbuffer_ptr_set(in, &ptr, offset, EVBUFFER_PTR_SET) < 0 ||
            evbuffer_copyout_from(in, &ptr, copy, 5) != 5)
            return -1;
    }
    *type = (char)hdr[0];
    *len = px_get_u32(hdr + 1);
    return 0;
}

static void flush_run(struct evbuffer *in, struct evbuffer *out, size_t *run)
{
    if (*run) {
        evbuffer_remove_buffer(in, out, *run);
        *run = 0;
    }
}

enum px_relay_result px_relay(struct px_stream *st, struct evbuffer *in, struct evbuffer *out,
                              const uint8_t see[256], px_relay_cb cb, void *ctx, uint32_t max_len)
{
    size_t run = 0;
    size_t avail = evbuffer_get_length(in);
    enum px_relay_result result = PX_RELAY_OK;

    if (st->remaining) {
        size_t n = avail < st->remaining ? avail : st->remaining;
        if (st->discard)
            evbuffer_drain(in, n);
        else
            run = n;
        st->remaining -= (uint32_t)n;
        if (st->remaining)
            goto out;
        st->discard = false;
    }
    for (;;) {
        avail = evbuffer_get_length(in) - run;
        if (avail < 5)
            break;
        char type;
        uint32_t len;
        if (peek_header(in, run, &type, &len) < 0)
            break;
        uint8_t mode = see[(uint8_t)type];
        if (len < 4 || len > PX_WIRE_MAX_LEN || (mode == PX_SEE_BODY && len > max_len)) {
            st->bad_len = len;
            result = PX_RELAY_TOO_LARGE;
            break;
        }
        size_t total = (size_t)len + 1;
        if (mode == PX_SEE_HEAD && len - 4 > PX_RELAY_HEAD_MAX) {
            /* A big message: its head is shown, the rest is never held whole. */
            size_t head = 5 + PX_RELAY_HEAD_MAX;
            if (avail < head)
                break;
            flush_run(in, out, &run);
            const uint8_t *msg = evbuffer_pullup(in, (ssize_t)head);
            if (!msg) {
                result = PX_RELAY_CLOSED;
                break;
            }
            enum px_relay_action act = cb(ctx, out, type, msg + 5, len - 4);
            if (act == PX_RELAY_CLOSE) {
                result = PX_RELAY_CLOSED;
                break;
            }
            if (act == PX_RELAY_HOLD) {
                result = PX_RELAY_STOPPED;
                break;
            }
            size_t have = evbuffer_get_length(in) < total ? evbuffer_get_length(in) : total;
            if (act == PX_RELAY_DROP || act == PX_RELAY_DROP_STOP) {
                evbuffer_drain(in, have);
                st->remaining = (uint32_t)(total - have);
                st->discard = st->remaining > 0;
                if (act == PX_RELAY_DROP_STOP || st->remaining) {
                    result = act == PX_RELAY_DROP_STOP ? PX_RELAY_STOPPED : PX_RELAY_OK;
                    break;
                }
                continue;
            }
            size_t from = 0;
            if (act == PX_RELAY_REPLACE_HEAD) {
                from = st->skip;
                st->skip = 0;
                evbuffer_drain(in, from);
                have -= from;
            }
            run = have;
            st->remaining = (uint32_t)(total - from - have);
            if (st->remaining || act == PX_RELAY_STOP) {
                result = act == PX_RELAY_STOP ? PX_RELAY_STOPPED : PX_RELAY_OK;
                break;
            }
            continue;
        }
        if (mode == PX_SEE_BODY || mode == PX_SEE_HEAD) {
            if (avail < total)
                break;
            flush_run(in, out, &run);
            const uint8_t *msg = evbuffer_pullup(in, (ssize_t)total);
            if (!msg) {
                result = PX_RELAY_CLOSED;
                break;
            }
            enum px_relay_action act = cb(ctx, out, type, msg + 5, len - 4);
            if (act == PX_RELAY_CLOSE) {
                result = PX_RELAY_CLOSED;
                break;
            }
            if (act == PX_RELAY_DROP) {
                evbuffer_drain(in, total);
                continue;
            }
            if (act == PX_RELAY_HOLD) {
                result = PX_RELAY_STOPPED;
                break;
            }
            if (act == PX_RELAY_DROP_STOP) {
                evbuffer_drain(in, total);
                result = PX_RELAY_STOPPED;
                break;
            }
            run = total;
            if (act == PX_RELAY_STOP) {
                result = PX_RELAY_STOPPED;
                break;
            }
            continue;
        }
        if (mode == PX_SEE_TYPE) {
            enum px_relay_action act = cb(ctx, out, type, NULL, len - 4);
            if (act == PX_RELAY_CLOSE) {
                result = PX_RELAY_CLOSED;
                break;
            }
            /* DROP and STOP make no sense without the body; treat as FORWARD. */
        }
        if (avail >= total) {
            run += total;
        } else {
            run += avail;
            st->remaining = (uint32_t)(total - avail);
            break;
        }
    }
out:
    flush_run(in, out, &run);
    return result;
}

/* Where px_relay_direct assembles what it then writes to the socket in one go.  The proxy
 * is single-threaded; the buffer is always empty between calls. */
static struct evbuffer *scratch;

/* Extents written per direct write; a longer buffer's rest goes through the bufferevent. */
#define PX_RELAY_WRITE_IOV 16

/* The most plaintext one TLS record carries. */
#define PX_TLS_RECORD_MAX 16384

enum px_relay_result px_relay_direct(struct px_stream *st, struct evbuffer *in,
                                     struct evbuffer *out, struct px_direct d,
                                     const uint8_t see[256], px_relay_cb cb, void *ctx,
                                     uint32_t max_len, size_t *moved)
{
    bool direct = d.fd >= 0 || d.ssl;
    if (direct && !scratch)
        scratch = evbuffer_new();
    if (!direct || !scratch || evbuffer_get_length(out) > 0) {
        size_t before = evbuffer_get_length(out);
        enum px_relay_result r = px_relay(st, in, out, see, cb, ctx, max_len);
        *moved = evbuffer_get_length(out) - before;
        return r;
    }
    enum px_relay_result r = px_relay(st, in, scratch, see, cb, ctx, max_len);
    *moved = evbuffer_get_length(scratch);
    if (*moved)
        px_relay_write(scratch, out, d);
    return r;
}

/*
 * SSL_write of from's extents, in order, while each is written whole.  Safe past the
 * bufferevent because out is empty (libevent has no write of its own in progress), and
 * because what is not written moves to out unchanged: an SSL_write that wants to be
 * retried (SSL_ERROR_WANT_WRITE/READ, with part of a record possibly sent) must be retried
 * with the same buffer and length, and the bufferevent's next write passes exactly that:
 * the first extent of out is the same chain (evbuffer_add_buffer into an empty buffer
 * relinks chains, it does not copy) and libevent writes whole extents (evbuffer_peek never
 * cuts a chain short; bytes added later only lengthen it, which OpenSSL accepts, while a
 * shorter retry fails with "bad length").  Errors are left for the bufferevent, which meets
 * them again on its own write and reports them.
 */
static void ssl_write_direct(SSL *ssl, struct evbuffer *from)
{
    /* Each SSL_write is a TLS record and a write(2) of its own: a reply in several extents
     * (the relay moves the messages before the one a stage reads apart from that one) is
     * made one extent first while it fits in one record.  Copying it is far cheaper than a
     * second record and system call. */
    if (evbuffer_get_length(from) <= PX_TLS_RECORD_MAX &&
        evbuffer_peek(from, -1, NULL, NULL, 0) > 1)
        evbuffer_pullup(from, -1); /* on failure the extents are written one by one */
    struct evbuffer_iovec v[PX_RELAY_WRITE_IOV];
    int n = evbuffer_peek(from, -1, NULL, v, PX_RELAY_WRITE_IOV);
    size_t done = 0;
    for (int i = 0; i < n && i < PX_RELAY_WRITE_IOV; i++) {
        if (v[i].iov_len == 0 || v[i].iov_len > INT_MAX)
            break;
        ERR_clear_error();
        int w = SSL_write(ssl, v[i].iov_base, (int)v[i].iov_len);
        if (w <= 0 || (size_t)w != v[i].iov_len) {
            ERR_clear_error(); /* the bufferevent's retry reports what is fatal */
            break;
        }
        done += (size_t)w;
    }
    if (done)
        evbuffer_drain(from, done);
}

void px_relay_write(struct evbuffer *from, struct evbuffer *out, struct px_direct d)
{
    if (evbuffer_get_length(from) == 0)
        return;
    evutil_socket_t fd = d.fd;
    if (d.ssl && evbuffer_get_length(out) == 0)
        ssl_write_direct(d.ssl, from);
    else if (fd >= 0 && evbuffer_get_length(out) == 0) {
        /* Errors (peer gone) are left to the bufferevent, which meets them on its own
         * write of whatever remains.  One extent (the usual case) goes out with send(),
         * which the kernel serves a little faster than writev(). */
        struct evbuffer_iovec v[PX_RELAY_WRITE_IOV];
        int n = evbuffer_peek(from, -1, NULL, v, PX_RELAY_WRITE_IOV);
        ssize_t w = n == 1 ? send(fd, v[0].iov_base, v[0].iov_len, MSG_NOSIGNAL)
                           : writev(fd, v, n < PX_RELAY_WRITE_IOV ? n : PX_RELAY_WRITE_IOV);
        if (w > 0)
            evbuffer_drain(from, (size_t)w);
    }
    if (evbuffer_get_length(from) > 0)
        evbuffer_add_buffer(out, from);
}

void px_relay_shutdown(void)
{
    if (scratch)
        evbuffer_free(scratch);
    scratch = NULL;
}

int px_read_message(struct evbuffer *in, uint32_t max_len, char *type, const uint8_t **body,
                    uint32_t *len)
{
    size_t avail = evbuffer_get_length(in);
    if (avail < 5)
        return 0;
    uint8_t hdr[5];
    evbuffer_copyout(in, hdr, 5);
    uint32_t l = px_get_u32(hdr + 1);
    if (l < 4 || l > max_len)
        return -1;
    if (avail < (size_t)l + 1)
        return 0;
    const uint8_t *msg = evbuffer_pullup(in, (ssize_t)l + 1);
    if (!msg)
        return -1;
    *type = (char)msg[0];
    *body = msg + 5;
    *len = l - 4;
    return 1;
}

int px_take_message(struct evbuffer *in, uint32_t max_len, char *type, uint8_t **body,
                    uint32_t *len)
{
    const uint8_t *peek;
    int r = px_read_message(in, max_len, type, &peek, len);
    if (r <= 0)
        return r;
    *body = malloc(*len ? *len : 1);
    if (!*body)
        return -1;
    memcpy(*body, peek, *len);
    evbuffer_drain(in, (size_t)*len + 5);
    return 1;
}
