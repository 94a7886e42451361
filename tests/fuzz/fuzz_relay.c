/*
 * fuzz_relay.c: the client message framer (proto/relay.c): px_take_message for the first
 * messages (the login phase), then px_relay or px_relay_direct for the rest, with an
 * arbitrary see-table (NONE, TYPE, BODY, HEAD), a callback that answers from a script of
 * actions (FORWARD, DROP, STOP, HOLD, DROP_STOP, REPLACE_HEAD, CLOSE; a DROP may inject a
 * message of its own, a REPLACE_HEAD writes a new head and sets st->skip), an arbitrary
 * max_len, and the input arriving in chunks of arbitrary sizes.  px_relay_direct writes
 * to one end of a socketpair with a small send buffer (partial writes), as the proxy
 * writes to a server socket; what the socket does not take goes to the output buffer,
 * which the harness flushes to the socket as the bufferevent would.
 *
 * Oracle: a reference model reads the whole stream at once and says which callbacks must
 * happen (type, length, body or head), what comes out, byte for byte (what reached the
 * socket, then what is left in the output buffer), how the relay ends (OK, CLOSED,
 * TOO_LARGE with which length) and which messages px_take_message returns.  The relay
 * must agree whatever the chunking.
 *
 * Input: flags, take count, max_len selector, chunking seed, 6 (type, mode) pairs for the
 * see-table, 8 actions, then the byte stream.  With F_EXPAND, 0xFE k in the stream stands
 * for (k + 1) KiB of filler, so that messages longer than PX_RELAY_HEAD_MAX (a PX_SEE_HEAD
 * message shown by its head and streamed) fit in a small input.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "proto/relay.h"
#include "proto/wire.h"

#define NSEE  6
#define NACTS 8
/* The stream after F_EXPAND: at most this much filler in all. */
#define EXPAND_MAX (512 * 1024)

enum { F_DIRECT = 1, F_INJECT = 2, F_LAZY_READ = 4, F_EXPAND = 8 };

struct script {
    uint8_t acts[NACTS];
    unsigned k;
    bool last_hold;
};

/* The action for the next callback; a second HOLD in a row is a FORWARD (the path never
 * holds the same message twice without something changing), and so is a REPLACE_HEAD but
 * for a message shown by its head only (relay.h: the only place it has a meaning). */
static enum px_relay_action next_action(struct script *s, bool big)
{
    enum px_relay_action a = (enum px_relay_action)(s->acts[s->k++ % NACTS] % 7);
    if (a == PX_RELAY_HOLD && s->last_hold)
        a = PX_RELAY_FORWARD;
    if (a == PX_RELAY_REPLACE_HEAD && !big)
        a = PX_RELAY_FORWARD;
    s->last_hold = a == PX_RELAY_HOLD;
    return a;
}

/* The st->skip of the index-th callback's REPLACE_HEAD: up to the whole head. */
static uint32_t skip_of(size_t index)
{
    return (uint32_t)((index * 7919u) % (5 + PX_RELAY_HEAD_MAX + 1));
}

struct event {
    char type;
    uint32_t len; /* body length */
    size_t pos;   /* offset of the message in the stream */
    bool body;    /* PX_SEE_BODY or PX_SEE_HEAD */
    bool big;     /* PX_SEE_HEAD, longer than PX_RELAY_HEAD_MAX: only the head is shown */
    enum px_relay_action act;
};

/* What the model expects. */
struct model {
    size_t ntaken;        /* messages px_take_message returns */
    size_t taken_pos[4];  /* their offsets */
    bool take_bad;        /* then it returns -1 (else 0: incomplete) */
    bool relay_reached;   /* the take phase ended with all its messages taken */
    size_t nevents;       /* callbacks */
    struct event *events; /* room for two per message (a HOLD, then something else) */
    enum px_relay_result end;
    uint32_t bad_len;
    struct evbuffer *out; /* the relayed bytes */
};

/* What a DROP injects ('I') or a REPLACE_HEAD writes as the new head ('R'). */
static void inject(struct evbuffer *out, char type, size_t index)
{
    uint8_t m[9] = {(uint8_t)type, 0, 0, 0, 8};
    px_put_u32(m + 5, (uint32_t)index);
    evbuffer_add(out, m, sizeof m);
}

FUZZ_NO_COVERAGE static void model_run(struct model *m, const uint8_t *s, size_t n, size_t ntake,
                                       uint32_t max_len, const uint8_t see[256], struct script *sc,
                                       bool do_inject)
{
    size_t pos = 0;
    m->end = PX_RELAY_OK;
    for (size_t t = 0; t < ntake; t++) {
        if (n - pos < 5)
            return;
        uint32_t len = px_get_u32(s + pos + 1);
        if (len < 4 || len > max_len) {
            m->take_bad = true;
            return;
        }
        if (n - pos < (size_t)len + 1)
            return;
        m->taken_pos[m->ntaken++] = pos;
        pos += (size_t)len + 1;
    }
    m->relay_reached = true;
    while (n - pos >= 5) {
        char type = (char)s[pos];
        uint32_t len = px_get_u32(s + pos + 1);
        uint8_t mode = see[(uint8_t)type];
        /* max_len bounds the assembled messages only; any other is PostgreSQL's limit */
        if (len < 4 || len > PX_WIRE_MAX_LEN || (mode == PX_SEE_BODY && len > max_len)) {
            m->end = PX_RELAY_TOO_LARGE;
            m->bad_len = len;
            return;
        }
        size_t total = (size_t)len + 1;
        if (mode == PX_SEE_BODY || mode == PX_SEE_HEAD) {
            bool big = mode == PX_SEE_HEAD && len - 4 > PX_RELAY_HEAD_MAX;
            /* shown once all of it (or its head) is there */
            if (n - pos < (big ? 5 + PX_RELAY_HEAD_MAX : total))
                return;
            enum px_relay_action a;
            do {
                a = next_action(sc, big);
                m->events[m->nevents++] = (struct event){type, len - 4, pos, true, big, a};
                if (a == PX_RELAY_CLOSE) {
                    m->end = PX_RELAY_CLOSED;
                    return;
                }
            } while (a == PX_RELAY_HOLD);
            /* a big message streams: what of it the input holds */
            size_t have = n - pos < total ? n - pos : total;
            if (a == PX_RELAY_DROP || a == PX_RELAY_DROP_STOP) {
                if (do_inject && a == PX_RELAY_DROP)
                    inject(m->out, 'I', m->nevents - 1);
            } else if (a == PX_RELAY_REPLACE_HEAD) {
                size_t skip = skip_of(m->nevents - 1);
                inject(m->out, 'R', m->nevents - 1);
                evbuffer_add(m->out, s + pos + skip, have - skip);
            } else {
                evbuffer_add(m->out, s + pos, have);
            }
            pos += have;
            continue;
        }
        if (mode == PX_SEE_TYPE) {
            enum px_relay_action a = next_action(sc, false);
            m->events[m->nevents++] = (struct event){type, len - 4, pos, false, false, a};
            if (a == PX_RELAY_CLOSE) {
                m->end = PX_RELAY_CLOSED;
                return;
            }
        }
        size_t take = n - pos < total ? n - pos : total;
        evbuffer_add(m->out, s + pos, take);
        pos += take;
    }
}

/* ---- the harness's side ---------------------------------------------------------------- */

struct harness {
    const uint8_t *stream;
    struct model *m;
    struct script sc;
    size_t nevents;
    bool do_inject;
    struct px_stream *st;
};

static enum px_relay_action callback(void *ctx, struct evbuffer *out, char type,
                                     const uint8_t *body, uint32_t len)
{
    struct harness *h = ctx;
    FUZZ_CHECK(h->nevents < h->m->nevents);
    const struct event *e = &h->m->events[h->nevents++];
    FUZZ_CHECK(type == e->type && len == e->len);
    FUZZ_CHECK((body != NULL) == e->body);
    if (body)
        FUZZ_CHECK(memcmp(body, h->stream + e->pos + 5, e->big ? PX_RELAY_HEAD_MAX : len) == 0);
    enum px_relay_action a = next_action(&h->sc, e->big);
    FUZZ_CHECK(a == e->act);
    if (h->do_inject && body && a == PX_RELAY_DROP)
        inject(out, 'I', h->nevents - 1);
    if (a == PX_RELAY_REPLACE_HEAD) {
        inject(out, 'R', h->nevents - 1);
        h->st->skip = skip_of(h->nevents - 1);
    }
    return a;
}

static int sock[2] = {-1, -1};

static void sock_init(void)
{
    if (sock[0] >= 0)
        return;
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sock) < 0)
        abort();
    int small = 4096;
    setsockopt(sock[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    fcntl(sock[0], F_SETFL, O_NONBLOCK);
    fcntl(sock[1], F_SETFL, O_NONBLOCK);
}

/* Moves what the peer received into got. */
static void sock_read(struct evbuffer *got)
{
    uint8_t buf[65536];
    for (;;) {
        ssize_t r = read(sock[1], buf, sizeof buf);
        if (r <= 0) {
            FUZZ_CHECK(r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
            return;
        }
        evbuffer_add(got, buf, (size_t)r);
    }
}

/* What the bufferevent does with its output buffer: writes what the socket takes. */
static void sock_flush(struct evbuffer *out)
{
    while (evbuffer_get_length(out) > 0) {
        int w = evbuffer_write(out, sock[0]);
        if (w <= 0)
            return;
    }
}

/* The next chunk size: 1..limit from a small generator, or everything.  An expanded
 * stream (up to EXPAND_MAX longer) also gets, every other time, chunks up to 64 times
 * larger: byte-sized pieces of a 500 KiB stream would cost a second per input. */
static size_t chunk(uint32_t *seed, unsigned mode, bool expanded)
{
    *seed = *seed * 1103515245u + 12345u;
    uint32_t r = *seed >> 8;
    uint32_t scale = expanded && (r & 1) ? 64 : 1;
    r >>= 1;
    switch (mode) {
    case 0: return (size_t)-1;
    case 1: return 1 + r % (7 * scale);
    case 2: return 1 + r % (64 * scale);
    default: return 1 + r % (4096 * scale);
    }
}

/* The stream with each 0xFE k replaced by (k + 1) KiB of filler that differs from byte to
 * byte (a misplaced piece shows), up to EXPAND_MAX of filler in all; malloc'd. */
FUZZ_NO_COVERAGE static size_t expand_to(uint8_t *s, const uint8_t *raw, size_t n)
{
    size_t o = 0, filler = 0;
    for (size_t i = 0; i < n; i++) {
        if (raw[i] != 0xfe || i + 1 == n) {
            if (s)
                s[o] = raw[i];
            o++;
            continue;
        }
        size_t k = ((size_t)raw[++i] + 1) * 1024;
        if (k > EXPAND_MAX - filler)
            k = EXPAND_MAX - filler;
        for (size_t j = 0; s && j < k; j++)
            s[o + j] = (uint8_t)(((o + j) * 131u) >> 3);
        o += k;
        filler += k;
    }
    return o;
}

static uint8_t *expand(const uint8_t *raw, size_t n, size_t *out_len)
{
    *out_len = expand_to(NULL, raw, n);
    uint8_t *s = malloc(*out_len ? *out_len : 1);
    if (!s)
        abort();
    expand_to(s, raw, n);
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size};
    uint8_t flags = fuzz_u8(&in);
    size_t ntake = fuzz_u8(&in) % 4;
    uint8_t maxsel = fuzz_u8(&in);
    uint32_t max_len = maxsel < 200 ? 4u + maxsel : maxsel < 250 ? 8192u : 1u << 20;
    uint32_t seed = fuzz_u32(&in);
    unsigned chunk_mode = (flags >> 4) & 3;
    uint8_t see[256] = {0};
    for (int i = 0; i < NSEE; i++) {
        uint8_t type = fuzz_u8(&in);
        see[type] = fuzz_u8(&in) % 4;
    }
    struct script sc = {{0}, 0, false};
    for (int i = 0; i < NACTS; i++)
        sc.acts[i] = fuzz_u8(&in);
    size_t n;
    const uint8_t *raw = fuzz_rest(&in, &n);
    uint8_t *expanded = NULL;
    const uint8_t *stream = raw;
    if (flags & F_EXPAND) {
        expanded = expand(raw, n, &n);
        stream = expanded;
    }
    bool direct = flags & F_DIRECT;
    if (direct)
        sock_init();

    struct event *events = malloc((n / 5 + 1) * 2 * sizeof *events);
    if (!events)
        abort();
    struct model m = {.events = events, .out = evbuffer_new()};
    struct script msc = sc;
    model_run(&m, stream, n, ntake, max_len, see, &msc, flags & F_INJECT);

    struct px_stream st = {0};
    struct harness h = {stream, &m, sc, 0, flags & F_INJECT, &st};
    struct evbuffer *ib = evbuffer_new(), *out = evbuffer_new(), *got = evbuffer_new();
    size_t fed = 0, t = 0, moved_total = 0;
    enum px_relay_result end = PX_RELAY_OK;
    bool relaying = ntake == 0, stopped_in_take = false;
    for (size_t iter = 0;; iter++) {
        FUZZ_CHECK(iter < 4 * n + 64);
        if (!relaying) {
            char type;
            uint8_t *body;
            uint32_t len;
            int r = px_take_message(ib, max_len, &type, &body, &len);
            if (r == 1) {
                FUZZ_CHECK(t < m.ntaken);
                const uint8_t *want = stream + m.taken_pos[t];
                FUZZ_CHECK(type == (char)want[0] && len == px_get_u32(want + 1) - 4);
                FUZZ_CHECK(memcmp(body, want + 5, len) == 0);
                free(body);
                if (++t == ntake)
                    relaying = true;
                continue;
            }
            if (r < 0) {
                FUZZ_CHECK(m.take_bad && t == m.ntaken);
                stopped_in_take = true;
                break;
            }
        } else {
            size_t moved = 0;
            enum px_relay_result r =
                direct ? px_relay_direct(&st, ib, out, (struct px_direct){sock[0], NULL}, see,
                                         callback, &h, max_len, &moved)
                       : px_relay(&st, ib, out, see, callback, &h, max_len);
            moved_total += moved;
            if (direct && !(flags & F_LAZY_READ && iter % 2))
                sock_read(got);
            if (direct)
                sock_flush(out);
            if (r == PX_RELAY_STOPPED)
                continue;
            if (r != PX_RELAY_OK) {
                end = r;
                break;
            }
        }
        if (fed == n) {
            stopped_in_take = !relaying;
            break;
        }
        size_t c = chunk(&seed, chunk_mode, expanded != NULL);
        if (c > n - fed)
            c = n - fed;
        evbuffer_add(ib, stream + fed, c);
        fed += c;
    }

    if (stopped_in_take) {
        FUZZ_CHECK(!m.relay_reached && t == m.ntaken);
    } else {
        FUZZ_CHECK(m.relay_reached);
        FUZZ_CHECK(h.nevents == m.nevents);
        FUZZ_CHECK(end == m.end);
        if (end == PX_RELAY_TOO_LARGE)
            FUZZ_CHECK(st.bad_len == m.bad_len);
        if (direct) {
            sock_flush(out);
            sock_read(got);
            FUZZ_CHECK(moved_total == evbuffer_get_length(m.out));
        }
        evbuffer_add_buffer(got, out);
        size_t gl = evbuffer_get_length(got);
        FUZZ_CHECK(gl == evbuffer_get_length(m.out));
        FUZZ_CHECK(gl == 0 ||
                   memcmp(evbuffer_pullup(got, -1), evbuffer_pullup(m.out, -1), gl) == 0);
    }
    if (direct) /* leave the socket empty for the next input */
        sock_read(got);
    evbuffer_free(ib);
    evbuffer_free(out);
    evbuffer_free(got);
    evbuffer_free(m.out);
    free(events);
    free(expanded);
    return 0;
}
