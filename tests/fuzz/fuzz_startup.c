/*
 * fuzz_startup.c: the startup phase of a client connection, fed the bytes a client sends
 * before authentication and read packet after packet as net/client.c reads them
 * (handle_startup_packet, startup_packet_dispatch): SSLRequest and GSSENCRequest (each
 * answered once; a second one falls through to the version check and is refused),
 * CancelRequest, StartupMessage.  Code under test: proto/wire.c px_wire_parse_startup,
 * px_startup_next, px_startup_get.
 *
 * Properties: nothing is read outside the packet (each packet is its own exact-size heap
 * copy); a StartupMessage is accepted exactly when an independent reading of its layout
 * accepts it; it then has nparams parameters, walked in packet order, each a non-empty name
 * and a value inside the packet, and px_startup_get finds the first value of a name; request
 * packets have exactly the length PostgreSQL requires.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "proto/wire.h"

/* The parameters of a StartupMessage body as an independent reading finds them: -1 when
 * the layout is invalid, else the count; names[i] / values[i] are offsets in body. */
#define REF_MAX 5000
static size_t ref_names[REF_MAX], ref_values[REF_MAX];

static long ref_params(const char *body, size_t len)
{
    size_t p = 4;
    long n = 0;
    for (;;) {
        if (p >= len)
            return -1;
        if (body[p] == '\0')
            return p == len - 1 ? n : -1;
        const char *ne = memchr(body + p, '\0', len - p);
        if (!ne || (size_t)(ne - body) + 1 >= len)
            return -1;
        size_t v = (size_t)(ne - body) + 1;
        const char *ve = memchr(body + v, '\0', len - v);
        if (!ve)
            return -1;
        ref_names[n] = p;
        ref_values[n] = v;
        n++;
        p = (size_t)(ve - body) + 1;
    }
}

static void check_params(const char *body, size_t len, const struct px_startup *st, long n)
{
    FUZZ_CHECK(st->nparams == (size_t)n);
    const char *pos = NULL;
    struct px_startup_param prm;
    long i = 0;
    while (px_startup_next(st, &pos, &prm)) {
        FUZZ_CHECK(i < n);
        FUZZ_CHECK(prm.name == body + ref_names[i] && prm.value == body + ref_values[i]);
        FUZZ_CHECK(prm.name[0] != '\0');
        i++;
    }
    FUZZ_CHECK(i == n);
    /* px_startup_get: the first value of each name, NULL for an absent one. */
    static const char *const names[] = {"user",    "database",        "application_name",
                                        "options", "client_encoding", "replication",
                                        "_pq_.x"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const char *want = NULL;
        for (long j = 0; j < n && !want; j++)
            if (strcmp(body + ref_names[j], names[k]) == 0)
                want = body + ref_values[j];
        FUZZ_CHECK(px_startup_get(st, names[k]) == want);
    }
    if (n > 0)
        FUZZ_CHECK(px_startup_get(st, body + ref_names[n - 1]) != NULL);
    (void)len;
}

struct conn {
    bool ssl_done, gss_done;
};

/* One packet's body (after its length word).  Returns true when the connection goes on
 * reading startup packets, as net/client.c would. */
static bool packet(struct conn *c, const char *body, size_t len)
{
    struct px_startup st;
    const char *err = px_wire_parse_startup(body, len, &st);
    uint32_t code = px_get_u32(body); /* len >= 4: the caller checked the packet length */
    if (err) {
        FUZZ_CHECK(err[0] != '\0');
        if (code >> 16 == 3 && code != PX_CANCEL_REQUEST_CODE)
            FUZZ_CHECK(ref_params(body, len) < 0);
        return false;
    }
    FUZZ_CHECK(st.code == code);
    if (code == PX_CANCEL_REQUEST_CODE) {
        FUZZ_CHECK(len == 12);
        FUZZ_CHECK(st.cancel_pid == px_get_u32(body + 4) && st.cancel_key == px_get_u32(body + 8));
        return false;
    }
    if ((code == PX_SSL_REQUEST_CODE && !c->ssl_done) ||
        (code == PX_GSSENC_REQUEST_CODE && !c->gss_done)) {
        FUZZ_CHECK(len == 4);
        if (code == PX_SSL_REQUEST_CODE)
            c->ssl_done = true;
        else
            c->gss_done = true;
        return true; /* answered 'N': the client goes on in plain text */
    }
    if (code >> 16 != 3)
        return false; /* FATAL 0A000: unsupported frontend protocol */
    long n = ref_params(body, len);
    FUZZ_CHECK(n >= 0);
    check_params(body, len, &st, n);
    return false; /* authentication follows */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct conn c = {false, false};
    size_t off = 0;
    for (;;) {
        if (size - off < 4)
            return 0;
        uint32_t len = px_get_u32(data + off);
        if (len < 8 || len > PX_MAX_STARTUP_PACKET || size - off < len)
            return 0;
        /* The body alone, in a buffer of its exact size. */
        char *body = (char *)fuzz_dup(data + off + 4, len - 4);
        off += len;
        bool more = packet(&c, body, len - 4);
        free(body);
        if (!more)
            return 0;
    }
}
