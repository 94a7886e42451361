/*
 * sockread.h: who reads a connection's socket into its bufferevent's input buffer.
 *
 * libevent 2.1's bufferevent asks the kernel how much is readable (ioctl FIONREAD) before
 * every read and then reads at most 4 KiB.  On the proxy's hot path, one small message per
 * wake-up, that ioctl is one system call in three; a large result costs one read per 4 KiB.
 * On a plain socket a px_reader therefore owns its own EV_READ event, reads 1 to 16 KiB
 * per wake-up (growing while reads fill it) straight into the bufferevent's input buffer
 * and calls the bufferevent's own read and event callbacks: the rest of the proxy sees a
 * bufferevent that got data, EOF or an error, whoever read it.  The bufferevent's own
 * reading stays off; it still does all the writing.  Under TLS the bufferevent reads
 * during the handshake; after it pgwarden reads through SSL_read the same way
 * (px_reader_own_tls).
 *
 * Every switch of reading on or off goes through px_reader_enable(): enabling EV_READ on
 * the bufferevent directly would make two readers of one socket.
 */
#ifndef PGW_PROXY_SOCKREAD_H
#define PGW_PROXY_SOCKREAD_H

#include <stdbool.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/ssl.h>

struct px_reader {
    struct bufferevent *bev; /* whose input buffer and callbacks are used; NULL: unbound,
                                or parked (ev set) */
    struct event *ev;        /* pgwarden's read event; NULL: bev reads */
    struct event *wev;       /* TLS: one-shot write event while OpenSSL must write before it can
                                read (want_write); made when first needed */
    void (*wake)(struct px_reader *r); /* parked: called before the next read */
    bool enabled;
    bool tls;        /* ev reads through the bufferevent's TLS object (px_reader_own_tls) */
    bool want_write; /* SSL_read wants the socket writable: wev, not ev, is added */
    bool blocked;    /* px_reader_block: off whatever px_reader_enable asks */
    bool wanted;     /* what px_reader_enable last asked (applied when unblocked) */
    uint32_t chunk;  /* bytes the next read asks for (0: the smallest) */
    /* TLS: an end or failure met after data in one wake-up, reported at the next turn
     * with reading on.  OpenSSL says why only once (a second SSL_read finds the connection
     * failed and queues no reason), and after a fatal alert no socket event may come. */
    short held;                /* BEV_EVENT_EOF or BEV_EVENT_ERROR; 0: none */
    int held_errno;            /* the socket error behind it, or 0 */
    unsigned long held_reason; /* OpenSSL's first error code for it, or 0 */
};

/*
 * Binds r to bev, reading off.  fd >= 0: pgwarden reads fd itself; fd < 0: bev reads
 * (TLS).  bev's callbacks must be set before data arrives.  Returns -1 on allocation
 * failure (r stays unbound).
 */
int px_reader_bind(struct px_reader *r, struct event_base *base, struct bufferevent *bev,
                   evutil_socket_t fd);

/*
 * A TLS bufferevent bound to r has finished its handshake: from now on pgwarden reads
 * through ssl itself (SSL_read straight into bev's input, OpenSSL's read-ahead on, so one
 * read system call per wake-up instead of libevent's header read, body read and a last
 * read that finds nothing).  The bufferevent keeps writing.  Reading stays as it was asked
 * (px_reader_enable).  0, or -1 on allocation failure (the bufferevent keeps reading).
 * bev's event callback gets BEV_EVENT_EOF for a close_notify and for a peer gone without
 * one (ssl's context has SSL_OP_IGNORE_UNEXPECTED_EOF: net/tls.c), else BEV_EVENT_ERROR
 * with the reason in OpenSSL's error queue, or errno for a socket error (what the callback
 * does not take is cleared after it).
 */
int px_reader_own_tls(struct px_reader *r, struct event_base *base, evutil_socket_t fd, SSL *ssl);

/* Stops reading and forgets bev; call before bev is freed or replaced.  Idempotent. */
void px_reader_unbind(struct px_reader *r);

/*
 * Switches a plain connection to TLS: *bev (bound to r) is freed and replaced by an
 * OpenSSL bufferevent on fd, in state (accepting or connecting), which keeps the old one's
 * callbacks and write watermark, writes, and reads (through r).  bev_owns: the new
 * bufferevent owns ssl and fd (frees and closes them); else the caller does, after freeing
 * it, and may wrap ssl in another bufferevent later (a parked client: state
 * BUFFEREVENT_SSL_OPEN).  0, or -1 with ssl freed and *bev NULL.
 */
int px_reader_switch_to_tls(struct px_reader *r, struct event_base *base, struct bufferevent **bev,
                            evutil_socket_t fd, SSL *ssl, enum bufferevent_ssl_state state,
                            bool bev_owns);

/*
 * Parking: an idle connection that pgwarden reads (a plain socket, or a TLS one after
 * px_reader_own_tls whose bufferevent does not own its TLS object) may give up its
 * bufferevent, the largest part of its memory besides OpenSSL's, while nothing is
 * buffered either way (OpenSSL's read-ahead included).  px_reader_park
 * forgets bev (the caller frees it) and keeps fd's read event as it is; when fd becomes
 * readable, wake(r) is called first and must give r a new bufferevent with
 * px_reader_unpark (or stop reading: then nothing is read).  Reading on or off works on a
 * parked reader as on any other.
 */
void px_reader_park(struct px_reader *r, void (*wake)(struct px_reader *r));
void px_reader_unpark(struct px_reader *r, struct bufferevent *bev);
bool px_reader_parked(const struct px_reader *r);

/* Reading on or off (backpressure, closing, a server parked in the pool ...). */
void px_reader_enable(struct px_reader *r, bool on);
/* Reads in this turn of the event loop, as if the socket were readable, when reading is
 * on and pgwarden reads the socket itself: for a socket whose first bytes are usually
 * there already (a client just accepted: its startup packet follows the TCP handshake at
 * once), so that its login does not begin with a wait in epoll and a wake-up.  Nothing
 * there: the read finds EAGAIN and the socket's event waits as before. */
void px_reader_read_soon(struct px_reader *r);
/* Blocks reading regardless of px_reader_enable (a transparent retry keeps the client's
 * next messages in its socket until the replay is verified); unblocking applies what
 * px_reader_enable asked meanwhile. */
void px_reader_block(struct px_reader *r, bool blocked);
bool px_reader_enabled(const struct px_reader *r);

#endif
