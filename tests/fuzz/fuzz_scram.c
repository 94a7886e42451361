/*
 * fuzz_scram.c: SCRAM-SHA-256 message parsing, both roles (auth/scram.c).
 *
 *   mode 0, server side: the client-first-message and the client-final-message from the
 *     input (px_scram_server_first, px_scram_server_final), with a secret parsed from the
 *     input (px_scram_secret_parse) when it is a valid verifier, else a real or a mock
 *     one.  The final message may be prefixed with the right channel binding and the
 *     combined nonce, so that the fuzzer reaches the proof check without guessing them.
 *   mode 1, client side: our client-first-message, then the server-first-message and the
 *     server-final-message from the input (px_scram_client_final, px_scram_client_verify),
 *     the first optionally prefixed with "r=" and our nonce.
 *   mode 2, both: an honest exchange between our client and our server in which the input
 *     may truncate, change or extend each of the four messages in flight.
 *
 * Properties: nothing past a message's length is read (exact-size heap copies, no NUL);
 * a refused client message has a reason; what the functions produce is printable,
 * NUL-terminated and shaped as RFC 5802 says; an exchange nobody tampered with succeeds,
 * and its ClientKey is the one the secret was made from.
 *
 * PBKDF2 is never run with iterations from the input (4096 per run would make each input
 * cost milliseconds, 2^24 seconds): the client logs in with keys, or with a password only
 * when the server-first-message asks for at most 16 iterations.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "auth/scram.h"
#include "auth/scram_int.h"

#define NONCE    "fyko+d2lbbFgONRv9qkxdawL"
#define PASSWORD "pencil"

enum { F_ALT = 4, F_PREFIX = 8 }; /* F_ALT: mock secret, or password client */

static struct px_scram_secret secret;
static uint8_t client_key[PX_SCRAM_KEY_LEN];

/* A real exchange, once: the secret and the ClientKey a successful login recovers. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const uint8_t salt[] = "QSXCR+Q6sek8bf92";
    char *cf, *sf, *cfin, *sfin;
    bool ok = false;
    px_scram_test_set_nonce(NONCE);
    if (px_scram_secret_derive(PASSWORD, salt, 16, 4096, &secret) < 0)
        abort();
    struct px_scram_server *s = px_scram_server_new(&secret);
    struct px_scram_client *c = px_scram_client_new(PASSWORD);
    if (!s || !c || px_scram_client_first(c, &cf) < 0 ||
        px_scram_server_first(s, cf, strlen(cf), &sf) < 0 ||
        px_scram_client_final(c, sf, strlen(sf), &cfin) < 0 ||
        px_scram_server_final(s, cfin, strlen(cfin), &ok, &sfin) < 0 || !ok ||
        px_scram_client_verify(c, sfin, strlen(sfin)) < 0 ||
        !px_scram_server_client_key(s, client_key))
        abort();
    free(cf);
    free(sf);
    free(cfin);
    free(sfin);
    px_scram_server_free(s);
    px_scram_client_free(c);
    (void)argc;
    (void)argv;
    return 0;
}

/* Printable ASCII, NUL-terminated. */
static void check_text(const char *s)
{
    FUZZ_CHECK(s != NULL);
    for (const char *p = s; *p; p++)
        FUZZ_CHECK(*p >= 0x20 && *p <= 0x7e);
}

/* The iteration count a server-first-message asks for, or -1. */
static long iterations_of(const uint8_t *m, size_t n)
{
    for (size_t i = 0; i + 3 <= n; i++) {
        if (m[i] == ',' && m[i + 1] == 'i' && m[i + 2] == '=') {
            long v = 0;
            for (size_t k = i + 3; k < n && m[k] >= '0' && m[k] <= '9' && v < 1000000; k++)
                v = v * 10 + (m[k] - '0');
            return v;
        }
    }
    return -1;
}

/* prefix followed by p[0..n), in an exact-size heap buffer. */
static char *join(const char *prefix, const uint8_t *p, size_t n, size_t *len)
{
    size_t pl = strlen(prefix);
    char *m = malloc(pl + n ? pl + n : 1);
    if (!m)
        abort();
    memcpy(m, prefix, pl);
    if (n)
        memcpy(m + pl, p, n);
    *len = pl + n;
    return m;
}

static void server_side(struct fuzz_in *in, uint8_t flags)
{
    size_t vlen, flen, xlen;
    const uint8_t *vp = fuzz_part(in, 300, &vlen);
    const uint8_t *fp = fuzz_part(in, 2048, &flen);
    const uint8_t *xp = fuzz_rest(in, &xlen);
    struct px_scram_secret sec = secret;
    char *verifier = fuzz_strdup(vp, vlen);
    if (px_scram_secret_parse(verifier, &sec) == 0) {
        FUZZ_CHECK(sec.iterations >= 1 && sec.salt_len >= 1 && sec.salt_len <= PX_SCRAM_MAX_SALT);
    } else if (flags & F_ALT) {
        px_scram_secret_mock(verifier, &sec);
    }
    free(verifier);
    struct px_scram_server *s = px_scram_server_new(&sec);
    FUZZ_CHECK(s != NULL);
    char *first = (char *)fuzz_dup(fp, flen), *sf = NULL, *sfin = NULL;
    bool unsupported;
    if (px_scram_server_first(s, first, flen, &sf) < 0) {
        FUZZ_CHECK(sf == NULL);
        const char *why = px_scram_server_error(s, &unsupported);
        FUZZ_CHECK(why && why[0]);
        goto out;
    }
    check_text(sf);
    FUZZ_CHECK(strncmp(sf, "r=", 2) == 0 && strstr(sf, ",s=") && strstr(sf, ",i="));
    /* The combined nonce: between "r=" and ",s=". */
    const char *end = strstr(sf, ",s=");
    char nonce[2100];
    FUZZ_CHECK((size_t)(end - sf - 2) < sizeof nonce);
    snprintf(nonce, sizeof nonce, "%.*s", (int)(end - sf - 2), sf + 2);
    FUZZ_CHECK(strlen(nonce) > strlen(NONCE) &&
               strcmp(nonce + strlen(nonce) - strlen(NONCE), NONCE) == 0);
    char prefix[2200] = "";
    if (flags & F_PREFIX)
        snprintf(prefix, sizeof prefix, "c=%s,r=%s", first[0] == 'y' ? "eSws" : "biws", nonce);
    size_t len;
    char *fin = join(prefix, xp, xlen, &len);
    bool ok = true;
    int rc = px_scram_server_final(s, fin, len, &ok, &sfin);
    if (rc < 0 || !ok) {
        FUZZ_CHECK(!ok && sfin == NULL);
        FUZZ_CHECK(!px_scram_server_client_key(s, (uint8_t[PX_SCRAM_KEY_LEN]){0}));
    } else {
        check_text(sfin);
        FUZZ_CHECK(strncmp(sfin, "v=", 2) == 0 && strlen(sfin) == 2 + 44);
    }
    /* Every call after the exchange fails. */
    char *again = NULL;
    FUZZ_CHECK(px_scram_server_first(s, first, flen, &again) < 0 && again == NULL);
    free(fin);
out:
    free(first);
    free(sf);
    free(sfin);
    px_scram_server_free(s);
}

static void client_side(struct fuzz_in *in, uint8_t flags)
{
    size_t flen, vlen;
    const uint8_t *fp = fuzz_part(in, 2048, &flen);
    const uint8_t *vp = fuzz_rest(in, &vlen);
    size_t len;
    char *sfirst = join(flags & F_PREFIX ? "r=" NONCE : "", fp, flen, &len);
    long iter = iterations_of((const uint8_t *)sfirst, len);
    bool password = (flags & F_ALT) && iter >= 0 && iter <= 16;
    struct px_scram_client *c =
        password ? px_scram_client_new(PASSWORD) : px_scram_client_new_keys(client_key, &secret);
    FUZZ_CHECK(c != NULL);
    char *cf = NULL, *cfin = NULL;
    FUZZ_CHECK(px_scram_client_first(c, &cf) == 0);
    check_text(cf);
    FUZZ_CHECK(strncmp(cf, "n,,n=", 5) == 0);
    if (px_scram_client_final(c, sfirst, len, &cfin) == 0) {
        check_text(cfin);
        FUZZ_CHECK(strncmp(cfin, "c=biws,r=" NONCE, 9 + strlen(NONCE)) == 0);
        FUZZ_CHECK(strstr(cfin, ",p=") != NULL);
        char *sfin = (char *)fuzz_dup(vp, vlen);
        (void)px_scram_client_verify(c, sfin, vlen);
        free(sfin);
    } else {
        FUZZ_CHECK(cfin == NULL);
        FUZZ_CHECK(px_scram_client_verify(c, "v=", 2) < 0);
    }
    free(sfirst);
    free(cf);
    free(cfin);
    px_scram_client_free(c);
}

/* Applies the input's edit to a message in flight: nothing, truncate, change a byte,
 * insert a byte, or append input bytes.  Returns an exact-size heap copy; *changed says
 * whether the content differs. */
static char *tamper(struct fuzz_in *in, const char *msg, size_t *len, bool *changed)
{
    size_t n = strlen(msg);
    uint8_t op = fuzz_u8(in) % 8;
    size_t at = n ? fuzz_u8(in) % n : 0;
    uint8_t b = fuzz_u8(in);
    size_t xl = 0;
    const uint8_t *x = op == 4 ? fuzz_part(in, 64, &xl) : NULL;
    char *m = malloc(n + 1 + xl);
    if (!m)
        abort();
    memcpy(m, msg, n);
    *len = n;
    switch (op) {
    case 1: *len = at; break;
    case 2: m[at] = (char)b; break;
    case 3:
        memmove(m + at + 1, m + at, n - at);
        m[at] = (char)b;
        *len = n + 1;
        break;
    case 4:
        if (xl)
            memcpy(m + n, x, xl);
        *len = n + xl;
        break;
    default: break;
    }
    *changed = *len != n || memcmp(m, msg, n) != 0;
    char *exact = (char *)fuzz_dup((const uint8_t *)m, *len);
    free(m);
    return exact;
}

static void round_trip(struct fuzz_in *in, uint8_t flags)
{
    struct px_scram_server *s = px_scram_server_new(&secret);
    bool honest = true, changed, ok = false;
    size_t len;
    char *cf = NULL, *sf = NULL, *cfin = NULL, *sfin = NULL, *m = NULL;
    struct px_scram_client *c = px_scram_client_new_keys(client_key, &secret);
    FUZZ_CHECK(s && c);
    FUZZ_CHECK(px_scram_client_first(c, &cf) == 0);
    m = tamper(in, cf, &len, &changed);
    honest &= !changed;
    int rc = px_scram_server_first(s, m, len, &sf);
    free(m);
    if (rc < 0)
        goto out;
    m = tamper(in, sf, &len, &changed);
    honest &= !changed;
    if (honest && (flags & F_ALT)) { /* the password, now that the server asks for 4096 */
        px_scram_client_free(c);
        c = px_scram_client_new(PASSWORD);
        free(cf);
        FUZZ_CHECK(c && px_scram_client_first(c, &cf) == 0);
    }
    rc = px_scram_client_final(c, m, len, &cfin);
    free(m);
    if (rc < 0)
        goto out;
    m = tamper(in, cfin, &len, &changed);
    honest &= !changed;
    rc = px_scram_server_final(s, m, len, &ok, &sfin);
    free(m);
    if (rc < 0 || !ok)
        goto out;
    uint8_t key[PX_SCRAM_KEY_LEN];
    FUZZ_CHECK(px_scram_server_client_key(s, key));
    FUZZ_CHECK(memcmp(key, client_key, sizeof key) == 0);
    m = tamper(in, sfin, &len, &changed);
    honest &= !changed;
    rc = px_scram_client_verify(c, m, len);
    free(m);
    if (honest)
        FUZZ_CHECK(rc == 0);
out:
    if (honest)
        FUZZ_CHECK(ok);
    free(cf);
    free(sf);
    free(cfin);
    free(sfin);
    px_scram_server_free(s);
    px_scram_client_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size};
    uint8_t flags = fuzz_u8(&in);
    switch (flags & 3) {
    case 0: server_side(&in, flags); break;
    case 1: client_side(&in, flags); break;
    default: round_trip(&in, flags); break;
    }
    return 0;
}
