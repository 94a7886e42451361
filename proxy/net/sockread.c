/*
 * sockread.c: pgwarden's own reading of plain sockets (see sockread.h).
 */
#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <openssl/err.h>

#include "net/sockread.h"

/*
 * What one wake-up reads: PX_READ_MIN at first, doubled after every read that filled it,
 * up to PX_READ_MAX, and back to PX_READ_MIN after a read that did not.  Small requests
 * (and a queued client's pending query) then sit in a 1 KiB chain, which glibc serves
 * from its per-thread cache (2 KiB chains cost ~500 more instructions per transaction in
 * malloc/free, callgrind), while a large result is read 16 KiB at a time.  A larger
 * backlog is read on the next wake-up (epoll is level-triggered), which keeps one busy
 * peer from starving the others.  Each size is a bit under a power of two so that a fresh
 * chain, header included, is one allocation of that power of two.
 */
#define PX_READ_MIN (1024 - 128)
#define PX_READ_MAX (16384 - 128)

static uint32_t next_chunk(uint32_t chunk, bool filled)
{
    if (!filled)
        return PX_READ_MIN;
    uint32_t bigger = (chunk + 128) * 2 - 128; /* the next power of two, less the room */
    return bigger < PX_READ_MAX ? bigger : PX_READ_MAX;
}

/* Bytes one wake-up of a TLS reader takes at most: then the next wake-up (the socket, or
 * OpenSSL's buffer: see below) goes on, so one busy peer does not starve the others. */
#define PX_TLS_READ_BUDGET (64 * 1024)

static void on_readable(evutil_socket_t fd, short what, void *arg);

/* The socket took what OpenSSL had to write: reading goes on where it stopped. */
static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct px_reader *r = arg;
    r->want_write = false;
    if (!r->enabled)
        return; /* apply() deletes this event with the read event: not reached */
    event_add(r->ev, NULL);
    on_readable(fd, EV_READ, r);
}

/*
 * SSL_read wants to write first (SSL_ERROR_WANT_WRITE): OpenSSL is in the middle of a
 * post-handshake message of its own and the socket's send buffer is full.  This happens
 * with TLS 1.3: a peer's KeyUpdate asking for ours is answered by our next SSL_write
 * (OpenSSL 3 does not write it from SSL_read), and when that write finds the send buffer
 * full, OpenSSL stays in its handshake state, so every SSL_read first tries to finish the
 * KeyUpdate and fails again until the socket drains.  Waiting for the next readable event
 * instead would spin while the peer's bytes wait in the socket (the event stays ready)
 * and would stall while they wait in OpenSSL's read-ahead buffer (no event comes).  So
 * the read event gives way to a one-shot write event until the socket is writable.  (The
 * bufferevent's own write of the data that SSL_write could not send waits for the same
 * moment; whichever runs first finishes the KeyUpdate for both.)
 *
 * SSL_write never needs to read (SSL_ERROR_WANT_READ) once the handshake is done: with
 * SSL_OP_NO_RENEGOTIATION no second handshake starts (a peer's ClientHello or
 * HelloRequest is refused with a warning alert, queued like the KeyUpdate), and nothing
 * pgwarden sends after the handshake waits for an answer.  Were it to happen, libevent
 * would add its own read event to retry the write, but without reading any data (its
 * EV_READ stays disabled): it would not compete with this reader.
 *
 * false when the write event cannot be made (the reader then waits for the socket as
 * before).
 */
static bool wait_writable(struct px_reader *r)
{
    if (!r->wev) {
        r->wev = event_new(event_get_base(r->ev), event_get_fd(r->ev), EV_WRITE, on_writable, r);
        if (!r->wev)
            return false;
    }
    r->want_write = true;
    if (r->enabled) { /* else apply() adds wev when reading is switched on */
        event_del(r->ev);
        event_add(r->wev, NULL);
    }
    return true;
}

/*
 * SSL_read into bev's input until OpenSSL has nothing buffered and the socket nothing to
 * give.  OpenSSL reads ahead: what it holds beyond the record it returned is not in
 * SSL_pending (which counts only decrypted bytes), so the loop asks SSL_has_pending; a
 * reader that stopped while OpenSSL held bytes would wait for a socket event that never
 * comes.
 */
/* Reports a held end or failure once: reading goes off, the reason back in OpenSSL's
 * queue and errno, where the event callback reads them (px_tls_failure). */
static void report_held(struct px_reader *r, bufferevent_event_cb event_cb, void *cbarg)
{
    short what = r->held;
    int sys_err = r->held_errno;
    unsigned long reason = r->held_reason;
    r->held = 0;
    r->held_errno = 0;
    r->held_reason = 0;
    px_reader_enable(r, false); /* EOF and errors are reported once */
    ERR_clear_error();
    if (reason)
        ERR_raise(ERR_GET_LIB(reason), ERR_GET_REASON(reason));
    errno = sys_err;
    if (event_cb)
        event_cb(r->bev, (short)(BEV_EVENT_READING | what), cbarg);
    ERR_clear_error(); /* what the callback did not take */
}

static void on_readable_tls(struct px_reader *r)
{
    struct bufferevent *bev = r->bev;
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    bufferevent_data_cb read_cb;
    bufferevent_event_cb event_cb;
    void *cbarg;
    bufferevent_getcb(bev, &read_cb, NULL, &event_cb, &cbarg);
    if (r->held) {
        report_held(r, event_cb, cbarg);
        return;
    }
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_unfreeze(in, 0);
    size_t total = 0;
    short fail = 0;
    int sys_err = 0;
    while (total < PX_TLS_READ_BUDGET) {
        struct evbuffer_iovec v[1];
        if (evbuffer_reserve_space(in, PX_READ_MAX, v, 1) < 1) {
            fail = BEV_EVENT_ERROR;
            break;
        }
        ERR_clear_error();
        errno = 0;
        int got = SSL_read(ssl, v[0].iov_base, (int)v[0].iov_len);
        if (got > 0) {
            v[0].iov_len = (size_t)got;
            evbuffer_commit_space(in, v, 1);
            total += (size_t)got;
            if (!SSL_has_pending(ssl))
                break; /* the socket is read again at its next event */
            continue;
        }
        int err = SSL_get_error(ssl, got);
        sys_err = errno;
        evbuffer_commit_space(in, v, 0);
        if (err == SSL_ERROR_WANT_WRITE && wait_writable(r))
            break; /* on_writable reads on */
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
            break;
        /* close_notify, or the peer gone without one: both the end of the stream, as
         * pgwarden's contexts ask (SSL_OP_IGNORE_UNEXPECTED_EOF, net/tls.c); else a TLS
         * or socket error, whose reason stays in OpenSSL's queue (or errno) for the event
         * callback */
        fail = err == SSL_ERROR_ZERO_RETURN ? BEV_EVENT_EOF : BEV_EVENT_ERROR;
        break;
    }
    evbuffer_freeze(in, 0);
    if (fail) {
        r->held = fail;
        r->held_errno = sys_err;
        r->held_reason = ERR_peek_error();
    }
    if (total) {
        /* Data first, as a plain reader gives it; an end or error met after it (held),
         * and what is left past the budget, on the next loop iteration (read_cb may free
         * r: that frees its event, active or not; or switch reading off: apply() brings
         * the held failure back when it is on again). */
        if (!r->want_write && (fail || (total >= PX_TLS_READ_BUDGET && SSL_has_pending(ssl))))
            event_active(r->ev, EV_READ, 0);
        ERR_clear_error();
        if (read_cb)
            read_cb(bev, cbarg);
        return;
    }
    if (fail)
        report_held(r, event_cb, cbarg);
    ERR_clear_error(); /* what the callback did not take (px_tls_failure) */
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct px_reader *r = arg;
    if (!r->bev) { /* parked */
        r->wake(r);
        if (!r->bev)
            return; /* the owner could not make a bufferevent: it stopped reading */
    }
    if (r->tls) {
        on_readable_tls(r);
        return;
    }
    struct bufferevent *bev = r->bev;
    bufferevent_data_cb read_cb;
    bufferevent_event_cb event_cb;
    void *cbarg;
    bufferevent_getcb(bev, &read_cb, NULL, &event_cb, &cbarg);

    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer_iovec v[2];
    /* A bufferevent keeps the end of its input frozen so that only it adds data; we read
     * in its place, and unfreeze it for as long as bufferevent_readcb would. */
    evbuffer_unfreeze(in, 0);
    uint32_t chunk = r->chunk ? r->chunk : PX_READ_MIN;
    int n = evbuffer_reserve_space(in, chunk, v, 2);
    /* recv when one extent will do: the kernel's readv path costs a little more */
    ssize_t got = n == 1 ? recv(fd, v[0].iov_base, v[0].iov_len, 0) : n > 0 ? readv(fd, v, n) : -1;
    int err = n > 0 ? errno : ENOMEM;
    size_t left = got > 0 ? (size_t)got : 0, room = 0;
    for (int i = 0; i < n; i++)
        room += v[i].iov_len;
    if (got > 0)
        r->chunk = next_chunk(chunk, (size_t)got == room);
    int used = 0;
    while (left > 0 && used < n) {
        if (v[used].iov_len > left)
            v[used].iov_len = left;
        left -= v[used].iov_len;
        used++;
    }
    if (n > 0)
        evbuffer_commit_space(in, v, used);
    evbuffer_freeze(in, 0);
    if (got <= 0) {
        if (got < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == EINTR))
            return;
        px_reader_enable(r, false); /* EOF and errors are reported once */
        errno = err;
        if (event_cb)
            event_cb(bev, (short)(BEV_EVENT_READING | (got == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR)),
                     cbarg);
        return;
    }
    if (read_cb)
        read_cb(bev, cbarg);
}

int px_reader_bind(struct px_reader *r, struct event_base *base, struct bufferevent *bev,
                   evutil_socket_t fd)
{
    px_reader_unbind(r);
    if (fd >= 0) {
        r->ev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, r);
        if (!r->ev)
            return -1;
        bufferevent_disable(bev, EV_READ);
    }
    r->bev = bev;
    r->enabled = false;
    r->wanted = false;
    r->chunk = 0;
    return 0;
}

int px_reader_switch_to_tls(struct px_reader *r, struct event_base *base, struct bufferevent **bev,
                            evutil_socket_t fd, SSL *ssl, enum bufferevent_ssl_state state,
                            bool bev_owns)
{
    bufferevent_data_cb read_cb, write_cb;
    bufferevent_event_cb event_cb;
    void *arg;
    size_t low, high;
    bufferevent_getcb(*bev, &read_cb, &write_cb, &event_cb, &arg);
    bufferevent_getwatermark(*bev, EV_WRITE, &low, &high);
    px_reader_unbind(r);
    bufferevent_free(*bev);
    *bev =
        bufferevent_openssl_socket_new(base, fd, ssl, state, bev_owns ? BEV_OPT_CLOSE_ON_FREE : 0);
    if (!*bev) {
        if (!bev_owns) /* else libevent freed it */
            SSL_free(ssl);
        return -1;
    }
    px_reader_bind(r, base, *bev, -1); /* cannot fail without an fd */
    bufferevent_openssl_set_allow_dirty_shutdown(*bev, 1);
    bufferevent_setcb(*bev, read_cb, write_cb, event_cb, arg);
    bufferevent_setwatermark(*bev, EV_WRITE, low, high);
    bufferevent_enable(*bev, EV_WRITE);
    px_reader_enable(r, true);
    return 0;
}

static void apply(struct px_reader *r, bool on);

int px_reader_own_tls(struct px_reader *r, struct event_base *base, evutil_socket_t fd, SSL *ssl)
{
    if (!r->bev || r->ev || !ssl || fd < 0)
        return -1;
    struct event *ev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, r);
    if (!ev)
        return -1;
    bool on = r->wanted && !r->blocked;
    bufferevent_disable(r->bev, EV_READ);
    /* Read-ahead only now that pgwarden reads (libevent's reading, used for the handshake,
     * drains SSL_pending only and would leave read-ahead bytes waiting). */
    SSL_set_read_ahead(ssl, 1);
    r->ev = ev;
    r->tls = true;
    r->enabled = false;
    apply(r, on);
    /* what OpenSSL read ahead during the handshake: no socket event will announce it */
    if (on && SSL_has_pending(ssl))
        event_active(ev, EV_READ, 0);
    return 0;
}

void px_reader_unbind(struct px_reader *r)
{
    if (r->wev)
        event_free(r->wev);
    r->wev = NULL;
    r->want_write = false;
    if (r->ev)
        event_free(r->ev);
    else if (r->bev)
        bufferevent_disable(r->bev, EV_READ);
    r->ev = NULL;
    r->tls = false;
    r->bev = NULL;
    r->wake = NULL;
    r->enabled = false;
    r->held = 0;
    r->held_errno = 0;
    r->held_reason = 0;
}

void px_reader_park(struct px_reader *r, void (*wake)(struct px_reader *r))
{
    if (!r->ev || !r->bev)
        return; /* only a connection pgwarden reads parks */
    r->bev = NULL;
    r->wake = wake;
}

void px_reader_unpark(struct px_reader *r, struct bufferevent *bev)
{
    bufferevent_disable(bev, EV_READ); /* pgwarden reads: the event stayed as it was */
    r->bev = bev;
    r->wake = NULL;
}

bool px_reader_parked(const struct px_reader *r)
{
    return r->ev && !r->bev;
}

void px_reader_enable(struct px_reader *r, bool on)
{
    r->wanted = on;
    apply(r, on && !r->blocked);
}

void px_reader_read_soon(struct px_reader *r)
{
    if (r->ev && r->bev && r->enabled)
        event_active(r->ev, EV_READ, 0);
}

void px_reader_block(struct px_reader *r, bool blocked)
{
    r->blocked = blocked;
    apply(r, r->wanted && !blocked);
}

static void apply(struct px_reader *r, bool on)
{
    if (!r->bev && !r->ev)
        return;
    if (!r->ev) { /* the bufferevent may switch its reading off itself (EOF): always ask */
        if (on)
            bufferevent_enable(r->bev, EV_READ);
        else
            bufferevent_disable(r->bev, EV_READ);
        return;
    }
    if (r->enabled == on)
        return;
    r->enabled = on;
    if (on) {
        event_add(r->want_write ? r->wev : r->ev, NULL);
        if (r->held) /* no socket event may announce it */
            event_active(r->ev, EV_READ, 0);
    } else {
        event_del(r->ev);
        if (r->wev)
            event_del(r->wev);
    }
}

bool px_reader_enabled(const struct px_reader *r)
{
    if (r->ev)
        return r->enabled;
    return r->bev && (bufferevent_get_enabled(r->bev) & EV_READ) != 0;
}
