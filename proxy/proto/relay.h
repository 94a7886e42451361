/*
 * relay.h: streaming message forwarder, the proxy's hot path.
 *
 * Moves protocol messages from one evbuffer to another as they arrive, without assembling
 * them: a 1 GB DataRow or COPY stream passes through in pieces.  A per-direction table says
 * which message types the caller wants to see:
 *   PX_SEE_NONE   forwarded blindly (the common case: DataRow, CopyData, ...);
 *   PX_SEE_TYPE   the callback is told the type and length before the message is forwarded
 *                 (body NULL), e.g. counting Query/Sync for outstanding replies;
 *   PX_SEE_BODY   the whole message is buffered (bounded by max_len) and the callback reads
 *                 its body and decides what happens to it.
 * Bytes are moved with evbuffer_remove_buffer, which relinks whole chains instead of
 * copying them where it can.
 */
#ifndef PGW_PROXY_RELAY_H
#define PGW_PROXY_RELAY_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <event2/util.h>

/* Parse state of one direction of a relayed stream. */
struct px_stream {
    uint32_t remaining; /* bytes of a pass-through message not yet received */
    bool discard;       /* ... to be dropped rather than passed on (a dropped big message) */
    uint32_t skip;      /* set by a PX_SEE_HEAD callback returning PX_RELAY_REPLACE_HEAD */
    uint32_t bad_len;   /* the length px_relay refused with PX_RELAY_TOO_LARGE */
};

/*
 * PX_SEE_HEAD: like PX_SEE_BODY for a message of at most PX_RELAY_HEAD_MAX body bytes; a
 * longer one is never assembled: the callback sees its first PX_RELAY_HEAD_MAX bytes (len
 * is still the whole body's length) and the rest streams through (FORWARD, STOP), is
 * dropped as it arrives (DROP, DROP_STOP), or stays (HOLD); REPLACE_HEAD passes on what the
 * callback wrote to out instead of the message's first st->skip bytes (header included),
 * then the rest.  Messages up to PX_WIRE_MAX_LEN (PostgreSQL's own limit) are taken this
 * way; max_len bounds only the messages that are assembled (PX_SEE_BODY).
 */
#define PX_RELAY_HEAD_MAX (64 * 1024)
#define PX_WIRE_MAX_LEN   0x3fffffffu

enum px_see { PX_SEE_NONE = 0, PX_SEE_TYPE = 1, PX_SEE_BODY = 2, PX_SEE_HEAD = 3 };

enum px_relay_action {
    PX_RELAY_FORWARD,   /* pass the message on */
    PX_RELAY_DROP,      /* swallow it */
    PX_RELAY_STOP,      /* pass it on, then stop relaying (state changed) */
    PX_RELAY_HOLD,      /* stop before it: it stays at the head of the input (PX_SEE_BODY only) */
    PX_RELAY_DROP_STOP, /* swallow it, then stop relaying (PX_SEE_BODY only) */
    PX_RELAY_REPLACE_HEAD, /* PX_SEE_HEAD: out has the new head, st->skip bytes go (above) */
    PX_RELAY_CLOSE,        /* fatal: stop, the caller closes the connection */
};

/* body is NULL for PX_SEE_TYPE messages; len is the body length (message length - 4).
 * A callback that injects messages appends them to out (everything relayed before the
 * current message is already there) and returns DROP to replace the current one. */
typedef enum px_relay_action (*px_relay_cb)(void *ctx, struct evbuffer *out, char type,
                                            const uint8_t *body, uint32_t len);

enum px_relay_result {
    PX_RELAY_OK,        /* everything complete was handled; wait for more input */
    PX_RELAY_STOPPED,   /* a callback returned STOP or HOLD; input may remain */
    PX_RELAY_CLOSED,    /* a callback returned CLOSE */
    PX_RELAY_TOO_LARGE, /* a message longer than max_len (or shorter than its header):
                           st->bad_len says which; px_wire_length_error() words it */
};

enum px_relay_result px_relay(struct px_stream *st, struct evbuffer *in, struct evbuffer *out,
                              const uint8_t see[256], px_relay_cb cb, void *ctx, uint32_t max_len);

/*
 * What a bufferevent can be written through directly, past its output buffer: its plain
 * socket (fd >= 0), or the OpenSSL object of a TLS bufferevent that owns its socket (ssl,
 * an SSL *).  Neither (PX_DIRECT_NONE): through the output buffer only.
 */
struct px_direct {
    evutil_socket_t fd;
    void *ssl;
};
#define PX_DIRECT_NONE ((struct px_direct){-1, NULL})

/*
 * px_relay towards a bufferevent whose output buffer is out and which can be written
 * through d.  When out is empty the relayed bytes are written straight through d (send or
 * writev on the socket, SSL_write on the TLS object), and only what is not taken is left in
 * out: the bufferevent then never schedules a write event for the common case (one write
 * per relay instead of an epoll_ctl pair and a loop iteration).  *moved: bytes relayed.
 */
enum px_relay_result px_relay_direct(struct px_stream *st, struct evbuffer *in,
                                     struct evbuffer *out, struct px_direct d,
                                     const uint8_t see[256], px_relay_cb cb, void *ctx,
                                     uint32_t max_len, size_t *moved);

/* Moves everything in from to a bufferevent whose output buffer is out: written straight
 * through d when out is empty (as px_relay_direct does), the rest appended to out. */
void px_relay_write(struct evbuffer *from, struct evbuffer *out, struct px_direct d);

/* Frees the relay's scratch buffer (at exit). */
void px_relay_shutdown(void);

/*
 * Reads one complete message (login phases, where everything is small).  Returns 1 with
 * *type, *body (contiguous, valid until the caller drains 5 + *len bytes) and *len; 0 when
 * incomplete; -1 when the length is invalid or above max_len.
 */
int px_read_message(struct evbuffer *in, uint32_t max_len, char *type, const uint8_t **body,
                    uint32_t *len);

/*
 * Like px_read_message, but consumes the message: on 1, *body is a malloc'd copy of the
 * body (free() it; never NULL, even for an empty body).  Acting on a message may link a
 * connection and start relaying whatever follows in the buffer, so login-phase code takes
 * each message out of the buffer before it acts.  Returns -1 also on allocation failure.
 */
int px_take_message(struct evbuffer *in, uint32_t max_len, char *type, uint8_t **body,
                    uint32_t *len);

#endif
