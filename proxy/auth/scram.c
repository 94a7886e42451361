/*
 * scram.c: SCRAM-SHA-256 (RFC 5802 / RFC 7677) for both roles, as PostgreSQL speaks it
 * (src/backend/libpq/auth-scram.c and src/interfaces/libpq/fe-auth-scram.c).
 *
 * Interface: scram.h (secrets, server role, client role, SaltedPassword cache) and the
 * internal scram_int.h (deterministic derivation, PBKDF2 counter, test hooks).  The cost
 * model and the auth_file are described in docs/authentication.md.
 *
 * Every primitive comes from OpenSSL 3: PBKDF2 (PKCS5_PBKDF2_HMAC), HMAC (EVP_MAC), SHA-256
 * (EVP_Digest), RAND_bytes and CRYPTO_memcmp.  Base64 is ours because SCRAM needs a strict
 * decoder (no whitespace, canonical padding) over length-bounded input.
 *
 * Messages are parsed from (pointer, length) without relying on a terminating NUL; an
 * embedded NUL, a missing attribute, trailing garbage or an oversized message is malformed.
 * Thread safety: the process-wide state (fetched algorithms, mock key, SaltedPassword cache)
 * is initialised once and locked; exchange objects belong to one thread at a time.
 */
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "auth/scram.h"
#include "auth/scram_int.h"
#include "base/random.h"

#define SCRAM_RAW_NONCE_LEN 18    /* as PostgreSQL: 24 printable base64 characters */
#define SCRAM_SALT_LEN      16    /* as PostgreSQL's SCRAM_DEFAULT_SALT_LEN */
#define SCRAM_MAX_MSG       16384 /* far above any real SCRAM message */
#define SCRAM_MAX_ITER      (1 << 24)
#define SP_CACHE_SIZE       64
#define TEST_STR_MAX        128

/* ---- OpenSSL algorithms, fetched once ----------------------------------------------- */

static pthread_once_t algs_once = PTHREAD_ONCE_INIT;
static EVP_MD *md_sha256;
static EVP_MAC *mac_hmac;

static void algs_init(void)
{
    md_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    mac_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

static bool algs_ready(void)
{
    return pthread_once(&algs_once, algs_init) == 0 && md_sha256 && mac_hmac;
}

/*
 * One digest context and one HMAC context per thread, made once and reused: a fresh
 * EVP_MAC_CTX with its digest named per call looked the digest up by name every time,
 * and that (with the context's allocation) cost more than the hashing itself: 21,500
 * instructions per HMAC of a SCRAM login, of ~128,000 for the whole login and its first
 * query (callgrind).  Re-keying an HMAC context (EVP_MAC_init with a key and no
 * parameters) keeps its digest.
 */
static _Thread_local EVP_MD_CTX *sha_ctx;
static _Thread_local EVP_MAC_CTX *hmac_ctx;

static int sha256(const void *data, size_t len, uint8_t out[PX_SCRAM_KEY_LEN])
{
    unsigned int outl = 0;
    if (!algs_ready() || (!sha_ctx && !(sha_ctx = EVP_MD_CTX_new())))
        return -1;
    if (EVP_DigestInit_ex2(sha_ctx, md_sha256, NULL) != 1 ||
        EVP_DigestUpdate(sha_ctx, data, len) != 1 || EVP_DigestFinal_ex(sha_ctx, out, &outl) != 1 ||
        outl != PX_SCRAM_KEY_LEN)
        return -1;
    return 0;
}

static EVP_MAC_CTX *hmac_sha256_ctx(void)
{
    if (hmac_ctx || !algs_ready())
        return hmac_ctx;
    static char digest[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(mac_hmac);
    if (ctx && EVP_MAC_CTX_set_params(ctx, params) != 1) {
        EVP_MAC_CTX_free(ctx);
        ctx = NULL;
    }
    return hmac_ctx = ctx;
}

/* HMAC-SHA-256 over the concatenation of up to two buffers (b may be NULL). */
static int hmac_sha256(const uint8_t *key, size_t keylen, const void *a, size_t alen, const void *b,
                       size_t blen, uint8_t out[PX_SCRAM_KEY_LEN])
{
    EVP_MAC_CTX *ctx = hmac_sha256_ctx();
    size_t outl = 0;
    if (ctx && EVP_MAC_init(ctx, key, keylen, NULL) == 1 && EVP_MAC_update(ctx, a, alen) == 1 &&
        (!b || EVP_MAC_update(ctx, b, blen) == 1) &&
        EVP_MAC_final(ctx, out, &outl, PX_SCRAM_KEY_LEN) == 1 && outl == PX_SCRAM_KEY_LEN)
        return 0;
    return -1;
}

static unsigned long pbkdf2_runs;

static int salted_password(const char *password, const uint8_t *salt, size_t salt_len,
                           int iterations, uint8_t out[PX_SCRAM_KEY_LEN])
{
    size_t pwlen = strlen(password);
    if (!algs_ready() || pwlen > INT_MAX || iterations < 1)
        return -1;
    __atomic_fetch_add(&pbkdf2_runs, 1, __ATOMIC_RELAXED);
    if (PKCS5_PBKDF2_HMAC(password, (int)pwlen, salt, (int)salt_len, iterations, md_sha256,
                          PX_SCRAM_KEY_LEN, out) != 1)
        return -1;
    return 0;
}

unsigned long px_scram_pbkdf2_runs(void)
{
    return __atomic_load_n(&pbkdf2_runs, __ATOMIC_RELAXED);
}

/* ClientKey and ServerKey from SaltedPassword (RFC 5802 section 3). */
static int keys_from_salted(const uint8_t sp[PX_SCRAM_KEY_LEN], uint8_t client_key[],
                            uint8_t server_key[])
{
    if (hmac_sha256(sp, PX_SCRAM_KEY_LEN, "Client Key", 10, NULL, 0, client_key) < 0 ||
        hmac_sha256(sp, PX_SCRAM_KEY_LEN, "Server Key", 10, NULL, 0, server_key) < 0)
        return -1;
    return 0;
}

/* ---- Base64 (RFC 4648 with padding), strict decoder -------------------------------- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t b64_enc_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

/* Writes b64_enc_len(n) characters and a NUL. */
static void b64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t i = 0, o = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64_alphabet[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/*
 * Decodes exactly n characters into out (capacity cap).  Strict: the length is a multiple
 * of 4, '=' appears only as the final one or two characters, no whitespace, and the unused
 * bits before the padding are zero (only canonical encodings are accepted).
 */
static int b64_decode(const char *in, size_t n, uint8_t *out, size_t cap, size_t *outlen)
{
    size_t o = 0;
    if (n % 4 != 0)
        return -1;
    for (size_t i = 0; i < n; i += 4) {
        bool last = i + 4 == n;
        int pad = 0;
        if (last && in[i + 3] == '=')
            pad = in[i + 2] == '=' ? 2 : 1;
        int v[4] = {0, 0, 0, 0};
        for (int k = 0; k < 4 - pad; k++)
            if ((v[k] = b64_value(in[i + k])) < 0)
                return -1;
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        if ((pad == 2 && (w & 0xffff)) || (pad == 1 && (w & 0xff)))
            return -1;
        if (o + 3 - (size_t)pad > cap)
            return -1;
        out[o++] = (uint8_t)(w >> 16);
        if (pad < 2)
            out[o++] = (uint8_t)(w >> 8);
        if (pad < 1)
            out[o++] = (uint8_t)w;
    }
    *outlen = o;
    return 0;
}

/* ---- Attribute parsing over a bounded buffer ---------------------------------------- */

struct cursor {
    const char *p, *end;
};

static bool cur_at_end(const struct cursor *c)
{
    return c->p >= c->end;
}

/* Consumes the ',' between two attributes; a trailing ',' (nothing after it) is malformed. */
static int cur_comma(struct cursor *c)
{
    if (c->end - c->p < 2 || *c->p != ',')
        return -1;
    c->p++;
    return 0;
}

/* Reads "<letter>=<value>" where value runs up to the next ',' or the end.  *attr gets the
 * letter; when want is not 0 the letter must be want. */
static int cur_attr(struct cursor *c, char want, char *attr, const char **val, size_t *vlen)
{
    if (c->end - c->p < 2 || c->p[1] != '=')
        return -1;
    char a = c->p[0];
    if (!((a >= 'a' && a <= 'z') || (a >= 'A' && a <= 'Z')) || (want && a != want))
        return -1;
    const char *v = c->p + 2;
    const char *comma = memchr(v, ',', (size_t)(c->end - v));
    const char *vend = comma ? comma : c->end;
    if (attr)
        *attr = a;
    *val = v;
    *vlen = (size_t)(vend - v);
    c->p = vend;
    return 0;
}

/* RFC 5802 "printable": 0x21-0x7E except ','. */
static bool nonce_printable(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x21 || s[i] > 0x7e || s[i] == ',')
            return false;
    return true;
}

/* Sanity limits shared by every incoming message. */
static bool msg_acceptable(const char *msg, size_t len)
{
    return msg && len > 0 && len <= SCRAM_MAX_MSG && !memchr(msg, '\0', len);
}

static char *dup_mem(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* Parses a decimal iteration count in [1, max] (digits only). */
static int parse_iterations(const char *s, size_t n, int max, int *out)
{
    long v = 0;
    if (n == 0 || n > 10)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < 1 || v > max)
        return -1;
    *out = (int)v;
    return 0;
}

/* ---- Nonces and test hooks ---------------------------------------------------------- */

static char test_nonce[TEST_STR_MAX];
static bool test_nonce_set;
static char test_client_user[TEST_STR_MAX];

void px_scram_test_set_nonce(const char *nonce)
{
    test_nonce_set = nonce != NULL;
    snprintf(test_nonce, sizeof test_nonce, "%s", nonce ? nonce : "");
}

void px_scram_test_set_client_user(const char *user)
{
    snprintf(test_client_user, sizeof test_client_user, "%s", user ? user : "");
}

/* Returns a malloc'ed nonce: base64 of 18 random bytes (or the test nonce). */
static char *nonce_new(void)
{
    if (test_nonce_set)
        return strdup(test_nonce);
    uint8_t raw[SCRAM_RAW_NONCE_LEN];
    char *s = malloc(b64_enc_len(sizeof raw) + 1);
    if (!s || px_random_bytes(raw, sizeof raw) < 0) {
        free(s);
        return NULL;
    }
    b64_encode(raw, sizeof raw, s);
    return s;
}

/* ---- Secrets ------------------------------------------------------------------------ */

int px_scram_secret_derive(const char *password, const uint8_t *salt, size_t salt_len,
                           int iterations, struct px_scram_secret *out)
{
    uint8_t sp[PX_SCRAM_KEY_LEN], client_key[PX_SCRAM_KEY_LEN];
    int rc = -1;
    if (!password || !salt || salt_len == 0 || salt_len > PX_SCRAM_MAX_SALT || iterations < 1 ||
        iterations > SCRAM_MAX_ITER)
        return -1;
    memset(out, 0, sizeof *out);
    out->iterations = iterations;
    memcpy(out->salt, salt, salt_len);
    out->salt_len = salt_len;
    if (salted_password(password, salt, salt_len, iterations, sp) < 0 ||
        keys_from_salted(sp, client_key, out->server_key) < 0 ||
        sha256(client_key, sizeof client_key, out->stored_key) < 0)
        goto out;
    rc = 0;
out:
    OPENSSL_cleanse(sp, sizeof sp);
    OPENSSL_cleanse(client_key, sizeof client_key);
    if (rc < 0)
        OPENSSL_cleanse(out, sizeof *out);
    return rc;
}

int px_scram_secret_from_password(const char *password, int iterations, struct px_scram_secret *out)
{
    uint8_t salt[SCRAM_SALT_LEN];
    if (RAND_bytes(salt, sizeof salt) != 1)
        return -1;
    return px_scram_secret_derive(password, salt, sizeof salt, iterations, out);
}

/* Decodes one base64 field of a verifier into exactly want bytes (or 1..want if !exact). */
static int decode_field(const char *s, size_t n, uint8_t *out, size_t want, bool exact, size_t *got)
{
    size_t len = 0;
    if (b64_decode(s, n, out, want, &len) < 0 || len == 0 || (exact && len != want))
        return -1;
    if (got)
        *got = len;
    return 0;
}

int px_scram_secret_parse(const char *text, struct px_scram_secret *out)
{
    static const char prefix[] = "SCRAM-SHA-256$";
    struct px_scram_secret s;
    if (!text || strncmp(text, prefix, sizeof prefix - 1) != 0)
        return -1;
    const char *p = text + sizeof prefix - 1;
    const char *colon1 = strchr(p, ':');
    const char *dollar = colon1 ? strchr(colon1 + 1, '$') : NULL;
    const char *colon2 = dollar ? strchr(dollar + 1, ':') : NULL;
    if (!colon2 || strchr(colon2 + 1, ':') || strchr(colon2 + 1, '$'))
        return -1;
    memset(&s, 0, sizeof s);
    if (parse_iterations(p, (size_t)(colon1 - p), INT_MAX, &s.iterations) < 0 ||
        decode_field(colon1 + 1, (size_t)(dollar - colon1 - 1), s.salt, PX_SCRAM_MAX_SALT, false,
                     &s.salt_len) < 0 ||
        decode_field(dollar + 1, (size_t)(colon2 - dollar - 1), s.stored_key, PX_SCRAM_KEY_LEN,
                     true, NULL) < 0 ||
        decode_field(colon2 + 1, strlen(colon2 + 1), s.server_key, PX_SCRAM_KEY_LEN, true, NULL) <
            0)
        return -1;
    *out = s;
    OPENSSL_cleanse(&s, sizeof s);
    return 0;
}

static pthread_once_t mock_once = PTHREAD_ONCE_INIT;
static uint8_t mock_key[PX_SCRAM_KEY_LEN];

static void mock_init(void)
{
    /* Without randomness the key stays zero: mock secrets are then predictable (an
     * observer could tell unknown users apart) but logins still fail. */
    if (RAND_bytes(mock_key, sizeof mock_key) != 1)
        memset(mock_key, 0, sizeof mock_key);
}

/* The mock secret looks like a real one: default iterations, a 16-byte salt, and keys that
 * no password produces (finding one would need a SHA-256 preimage of stored_key). */
void px_scram_secret_mock(const char *user, struct px_scram_secret *out)
{
    uint8_t salt[PX_SCRAM_KEY_LEN];
    const char *u = user ? user : "";
    size_t ulen = strlen(u);
    (void)pthread_once(&mock_once, mock_init);
    memset(out, 0, sizeof *out);
    out->iterations = PX_SCRAM_DEFAULT_ITER;
    out->salt_len = SCRAM_SALT_LEN;
    if (hmac_sha256(mock_key, sizeof mock_key, "salt:", 5, u, ulen, salt) == 0)
        memcpy(out->salt, salt, SCRAM_SALT_LEN);
    if (hmac_sha256(mock_key, sizeof mock_key, "stored:", 7, u, ulen, out->stored_key) < 0 ||
        hmac_sha256(mock_key, sizeof mock_key, "server:", 7, u, ulen, out->server_key) < 0)
        memset(out->stored_key, 0xff, PX_SCRAM_KEY_LEN);
}

/* ---- Shared exchange helpers -------------------------------------------------------- */

/* AuthMessage = client-first-message-bare "," server-first-message ","
 * client-final-message-without-proof.  Returns a malloc'ed buffer of *len bytes. */
static char *auth_message(const char *bare, const char *server_first, size_t sflen,
                          const char *final_wo_proof, size_t fwlen, size_t *len)
{
    size_t blen = strlen(bare);
    size_t n = blen + 1 + sflen + 1 + fwlen;
    char *m = malloc(n + 1);
    if (!m)
        return NULL;
    memcpy(m, bare, blen);
    m[blen] = ',';
    memcpy(m + blen + 1, server_first, sflen);
    m[blen + 1 + sflen] = ',';
    memcpy(m + blen + 2 + sflen, final_wo_proof, fwlen);
    m[n] = '\0';
    *len = n;
    return m;
}

/* "v=" + base64(ServerSignature) */
static char *server_final_message(const uint8_t sig[PX_SCRAM_KEY_LEN])
{
    char *out = malloc(2 + b64_enc_len(PX_SCRAM_KEY_LEN) + 1);
    if (out) {
        memcpy(out, "v=", 2);
        b64_encode(sig, PX_SCRAM_KEY_LEN, out + 2);
    }
    return out;
}

/* ---- Server side -------------------------------------------------------------------- */

enum scram_state {
    SCRAM_INIT = 0, /* nothing exchanged */
    SCRAM_FIRST,    /* first messages exchanged */
    SCRAM_DONE,     /* final message handled (server: proof checked; client: sent) */
    SCRAM_VERIFIED, /* client: server signature verified */
    SCRAM_FAILED,   /* a malformed message or an error: every further call fails */
};

struct px_scram_server {
    enum scram_state state;
    const char *error;      /* why the last call failed (static), NULL: malformed */
    bool error_unsupported; /* ... because of a feature we do not support */
    struct px_scram_secret secret;
    char cbind_flag;         /* 'n' or 'y' */
    char *client_first_bare; /* "n=...,r=..." */
    char *nonce;             /* client nonce + server nonce */
    size_t client_nonce_len;
    char *server_first;
    bool proof_ok;
    uint8_t client_key[PX_SCRAM_KEY_LEN];
};

struct px_scram_server *px_scram_server_new(const struct px_scram_secret *secret)
{
    if (!secret || secret->salt_len == 0 || secret->salt_len > PX_SCRAM_MAX_SALT ||
        secret->iterations < 1)
        return NULL;
    struct px_scram_server *s = calloc(1, sizeof *s);
    if (s)
        s->secret = *secret;
    return s;
}

void px_scram_server_free(struct px_scram_server *s)
{
    if (!s)
        return;
    free(s->client_first_bare);
    free(s->nonce);
    free(s->server_first);
    OPENSSL_cleanse(s, sizeof *s);
    free(s);
}

/* Records why s refuses a message (PostgreSQL's wording) and returns -1. */
static int refuse(struct px_scram_server *s, const char *why, bool unsupported)
{
    s->error = why;
    s->error_unsupported = unsupported;
    return -1;
}

/*
 * client-first-message = gs2-header client-first-message-bare
 *   gs2-header = ("n" | "y") "," "," (an authzid "a=" is refused, as PostgreSQL does;
 *   "p=" asks for channel binding, which we never advertise)
 *   client-first-message-bare = ["m=" ...: refused] "n=" user "," "r=" nonce *("," ext)
 * On success fills cbind_flag, client_first_bare and the client-nonce part of s->nonce.
 */
static int parse_client_first(struct px_scram_server *s, const char *msg, size_t len,
                              const char **cnonce, size_t *cnonce_len)
{
    struct cursor c = {msg, msg + len};
    const char *v;
    size_t vlen;
    char attr;
    if (len < 3 || (msg[0] != 'n' && msg[0] != 'y') || msg[1] != ',')
        return -1;
    if (msg[2] == 'a')
        return refuse(s, "client uses authorization identity, but it is not supported", true);
    if (msg[2] != ',')
        return -1;
    c.p += 3;
    const char *bare = c.p;
    if (c.p < c.end && *c.p == 'm')
        return refuse(s, "client requires an unsupported SCRAM extension", true);
    if (cur_attr(&c, 'n', NULL, &v, &vlen) < 0 || cur_comma(&c) < 0 ||
        cur_attr(&c, 'r', NULL, cnonce, cnonce_len) < 0)
        return -1;
    if (!nonce_printable(*cnonce, *cnonce_len))
        return refuse(s, "non-printable characters in SCRAM nonce", false);
    while (!cur_at_end(&c))
        if (cur_comma(&c) < 0 || cur_attr(&c, 0, &attr, &v, &vlen) < 0)
            return -1;
    s->cbind_flag = msg[0];
    s->client_first_bare = dup_mem(bare, (size_t)(c.end - bare));
    return s->client_first_bare ? 0 : -1;
}

int px_scram_server_first(struct px_scram_server *s, const char *msg, size_t len,
                          char **server_first)
{
    const char *cnonce;
    size_t cnlen;
    char *snonce = NULL, *salt64 = NULL;
    *server_first = NULL;
    if (!s || s->state != SCRAM_INIT || !msg_acceptable(msg, len) ||
        len > PX_SCRAM_MAX_CLIENT_MESSAGE)
        goto fail;
    if (parse_client_first(s, msg, len, &cnonce, &cnlen) < 0)
        goto fail;
    snonce = nonce_new();
    salt64 = malloc(b64_enc_len(s->secret.salt_len) + 1);
    if (!snonce || !salt64)
        goto fail;
    b64_encode(s->secret.salt, s->secret.salt_len, salt64);
    s->client_nonce_len = cnlen;
    if (asprintf(&s->nonce, "%.*s%s", (int)cnlen, cnonce, snonce) < 0) {
        s->nonce = NULL;
        goto fail;
    }
    if (asprintf(&s->server_first, "r=%s,s=%s,i=%d", s->nonce, salt64, s->secret.iterations) < 0) {
        s->server_first = NULL;
        goto fail;
    }
    *server_first = strdup(s->server_first);
    if (!*server_first)
        goto fail;
    free(snonce);
    free(salt64);
    s->state = SCRAM_FIRST;
    return 0;
fail:
    free(snonce);
    free(salt64);
    if (s)
        s->state = SCRAM_FAILED;
    return -1;
}

/*
 * client-final-message = "c=" cbind "," "r=" nonce *("," ext) "," "p=" proof
 * cbind must be base64 of our gs2 header ("biws" for "n,,", "eSws" for "y,,"), the nonce
 * exactly the combined one, the proof 32 bytes and the last attribute.  *wo_proof_len is
 * the length of client-final-message-without-proof.
 */
static int parse_client_final(const struct px_scram_server *s, const char *msg, size_t len,
                              uint8_t proof[PX_SCRAM_KEY_LEN], size_t *wo_proof_len)
{
    struct cursor c = {msg, msg + len};
    const char *v, *attr_start;
    size_t vlen, plen;
    char attr;
    const char *cbind = s->cbind_flag == 'y' ? "eSws" : "biws";
    if (cur_attr(&c, 'c', NULL, &v, &vlen) < 0 || vlen != 4 || memcmp(v, cbind, 4) != 0)
        return -1;
    if (cur_comma(&c) < 0 || cur_attr(&c, 'r', NULL, &v, &vlen) < 0 || vlen != strlen(s->nonce) ||
        memcmp(v, s->nonce, vlen) != 0)
        return -1;
    do {
        attr_start = c.p;
        if (cur_comma(&c) < 0 || cur_attr(&c, 0, &attr, &v, &vlen) < 0)
            return -1;
    } while (attr != 'p');
    if (!cur_at_end(&c) || b64_decode(v, vlen, proof, PX_SCRAM_KEY_LEN, &plen) < 0 ||
        plen != PX_SCRAM_KEY_LEN)
        return -1;
    *wo_proof_len = (size_t)(attr_start - msg);
    return 0;
}

int px_scram_server_final(struct px_scram_server *s, const char *msg, size_t len, bool *ok,
                          char **server_final)
{
    uint8_t proof[PX_SCRAM_KEY_LEN], sig[PX_SCRAM_KEY_LEN], client_key[PX_SCRAM_KEY_LEN];
    uint8_t stored[PX_SCRAM_KEY_LEN];
    size_t wo_len, am_len = 0;
    char *am = NULL;
    int rc = -1;
    *ok = false;
    *server_final = NULL;
    if (!s || s->state != SCRAM_FIRST || !msg_acceptable(msg, len) ||
        len > PX_SCRAM_MAX_CLIENT_MESSAGE || parse_client_final(s, msg, len, proof, &wo_len) < 0)
        goto out;
    am = auth_message(s->client_first_bare, s->server_first, strlen(s->server_first), msg, wo_len,
                      &am_len);
    if (!am || hmac_sha256(s->secret.stored_key, PX_SCRAM_KEY_LEN, am, am_len, NULL, 0, sig) < 0)
        goto out;
    /* ClientKey = ClientProof XOR ClientSignature; the proof is right when
     * H(ClientKey) = StoredKey.  A mock secret does the same work and fails here. */
    for (int i = 0; i < PX_SCRAM_KEY_LEN; i++)
        client_key[i] = proof[i] ^ sig[i];
    if (sha256(client_key, PX_SCRAM_KEY_LEN, stored) < 0)
        goto out;
    s->proof_ok = CRYPTO_memcmp(stored, s->secret.stored_key, PX_SCRAM_KEY_LEN) == 0;
    if (s->proof_ok) {
        if (hmac_sha256(s->secret.server_key, PX_SCRAM_KEY_LEN, am, am_len, NULL, 0, sig) < 0 ||
            !(*server_final = server_final_message(sig))) {
            s->proof_ok = false;
            goto out;
        }
        memcpy(s->client_key, client_key, PX_SCRAM_KEY_LEN);
    }
    *ok = s->proof_ok;
    s->state = SCRAM_DONE;
    rc = 0;
out:
    if (rc < 0 && s)
        s->state = SCRAM_FAILED;
    free(am);
    OPENSSL_cleanse(client_key, sizeof client_key);
    OPENSSL_cleanse(sig, sizeof sig);
    return rc;
}

const char *px_scram_server_error(const struct px_scram_server *s, bool *unsupported)
{
    *unsupported = s && s->error && s->error_unsupported;
    return s && s->error ? s->error : "malformed SCRAM message";
}

bool px_scram_server_client_key(const struct px_scram_server *s, uint8_t out[PX_SCRAM_KEY_LEN])
{
    if (!s || s->state != SCRAM_DONE || !s->proof_ok)
        return false;
    memcpy(out, s->client_key, PX_SCRAM_KEY_LEN);
    return true;
}

/* ---- Client-side SaltedPassword cache ----------------------------------------------- */

/*
 * A small process-wide table: id = SHA-256(iterations, salt, password) -> the keys derived
 * from SaltedPassword (ClientKey, ServerKey: they are all a login needs).  64 entries, the
 * least recently used one is replaced; a lookup is a linear scan of 64 constant-time
 * compares, far below a microsecond.
 */
struct sp_entry {
    bool used;
    uint64_t last_use;
    uint8_t id[PX_SCRAM_KEY_LEN];
    uint8_t client_key[PX_SCRAM_KEY_LEN];
    uint8_t server_key[PX_SCRAM_KEY_LEN];
};

static pthread_mutex_t sp_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sp_entry sp_cache[SP_CACHE_SIZE];
static uint64_t sp_clock;

static int sp_cache_id(const char *password, const uint8_t *salt, size_t salt_len, int iterations,
                       uint8_t id[PX_SCRAM_KEY_LEN])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint8_t head[5] = {(uint8_t)(iterations >> 24), (uint8_t)(iterations >> 16),
                       (uint8_t)(iterations >> 8), (uint8_t)iterations, (uint8_t)salt_len};
    unsigned int outl = 0;
    int rc = -1;
    if (ctx && algs_ready() && EVP_DigestInit_ex(ctx, md_sha256, NULL) == 1 &&
        EVP_DigestUpdate(ctx, head, sizeof head) == 1 &&
        EVP_DigestUpdate(ctx, salt, salt_len) == 1 &&
        EVP_DigestUpdate(ctx, password, strlen(password)) == 1 &&
        EVP_DigestFinal_ex(ctx, id, &outl) == 1 && outl == PX_SCRAM_KEY_LEN)
        rc = 0;
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* Fills the keys for (password, salt, iterations), from the cache or by running PBKDF2. */
static int client_keys(const char *password, const uint8_t *salt, size_t salt_len, int iterations,
                       uint8_t client_key[], uint8_t server_key[])
{
    uint8_t id[PX_SCRAM_KEY_LEN], sp[PX_SCRAM_KEY_LEN];
    if (sp_cache_id(password, salt, salt_len, iterations, id) < 0)
        return -1;
    pthread_mutex_lock(&sp_lock);
    for (int i = 0; i < SP_CACHE_SIZE; i++) {
        struct sp_entry *e = &sp_cache[i];
        if (e->used && CRYPTO_memcmp(e->id, id, sizeof id) == 0) {
            e->last_use = ++sp_clock;
            memcpy(client_key, e->client_key, PX_SCRAM_KEY_LEN);
            memcpy(server_key, e->server_key, PX_SCRAM_KEY_LEN);
            pthread_mutex_unlock(&sp_lock);
            return 0;
        }
    }
    pthread_mutex_unlock(&sp_lock);

    /* PBKDF2 runs unlocked: two racing logins may both derive, which is harmless. */
    int rc = salted_password(password, salt, salt_len, iterations, sp);
    if (rc == 0)
        rc = keys_from_salted(sp, client_key, server_key);
    OPENSSL_cleanse(sp, sizeof sp);
    if (rc < 0)
        return -1;

    pthread_mutex_lock(&sp_lock);
    struct sp_entry *victim = &sp_cache[0];
    for (int i = 0; i < SP_CACHE_SIZE; i++) {
        if (!sp_cache[i].used) {
            victim = &sp_cache[i];
            break;
        }
        if (sp_cache[i].last_use < victim->last_use)
            victim = &sp_cache[i];
    }
    victim->used = true;
    victim->last_use = ++sp_clock;
    memcpy(victim->id, id, sizeof id);
    memcpy(victim->client_key, client_key, PX_SCRAM_KEY_LEN);
    memcpy(victim->server_key, server_key, PX_SCRAM_KEY_LEN);
    pthread_mutex_unlock(&sp_lock);
    return 0;
}

void px_scram_cache_clear(void)
{
    pthread_mutex_lock(&sp_lock);
    OPENSSL_cleanse(sp_cache, sizeof sp_cache);
    sp_clock = 0;
    pthread_mutex_unlock(&sp_lock);
}

/* ---- Client side -------------------------------------------------------------------- */

struct px_scram_client {
    enum scram_state state;
    char *password;              /* NULL when authenticating with keys */
    struct px_scram_secret keys; /* with keys: salt, iterations, server_key */
    uint8_t client_key[PX_SCRAM_KEY_LEN];
    char *nonce;             /* our client nonce */
    char *client_first_bare; /* "n=,r=..." */
    uint8_t server_signature[PX_SCRAM_KEY_LEN];
};

struct px_scram_client *px_scram_client_new(const char *password)
{
    if (!password)
        return NULL;
    struct px_scram_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->password = strdup(password);
    if (!c->password) {
        free(c);
        return NULL;
    }
    return c;
}

struct px_scram_client *px_scram_client_new_keys(const uint8_t client_key[PX_SCRAM_KEY_LEN],
                                                 const struct px_scram_secret *secret)
{
    uint8_t stored[PX_SCRAM_KEY_LEN];
    /* A ClientKey that does not belong to this secret is a caller bug: refuse it now
     * rather than fail obscurely at the server. */
    if (!client_key || !secret || secret->salt_len == 0 || secret->salt_len > PX_SCRAM_MAX_SALT ||
        sha256(client_key, PX_SCRAM_KEY_LEN, stored) < 0 ||
        CRYPTO_memcmp(stored, secret->stored_key, PX_SCRAM_KEY_LEN) != 0)
        return NULL;
    struct px_scram_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->keys = *secret;
    memcpy(c->client_key, client_key, PX_SCRAM_KEY_LEN);
    return c;
}

void px_scram_client_free(struct px_scram_client *c)
{
    if (!c)
        return;
    if (c->password) {
        OPENSSL_cleanse(c->password, strlen(c->password));
        free(c->password);
    }
    free(c->nonce);
    free(c->client_first_bare);
    OPENSSL_cleanse(c, sizeof *c);
    free(c);
}

int px_scram_client_first(struct px_scram_client *c, char **client_first)
{
    *client_first = NULL;
    if (!c || c->state != SCRAM_INIT)
        goto fail;
    c->nonce = nonce_new();
    if (!c->nonce)
        goto fail;
    if (asprintf(&c->client_first_bare, "n=%s,r=%s", test_client_user, c->nonce) < 0) {
        c->client_first_bare = NULL;
        goto fail;
    }
    if (asprintf(client_first, "n,,%s", c->client_first_bare) < 0) {
        *client_first = NULL;
        goto fail;
    }
    c->state = SCRAM_FIRST;
    return 0;
fail:
    if (c)
        c->state = SCRAM_FAILED;
    return -1;
}

/* server-first-message = "r=" nonce "," "s=" salt "," "i=" iterations, nothing after (as
 * libpq); the nonce must extend ours. */
static int parse_server_first(const struct px_scram_client *c, const char *msg, size_t len,
                              const char **nonce, size_t *nonce_len, uint8_t *salt,
                              size_t *salt_len, int *iterations)
{
    struct cursor cur = {msg, msg + len};
    const char *v;
    size_t vlen, ourlen = strlen(c->nonce);
    if (cur_attr(&cur, 'r', NULL, nonce, nonce_len) < 0 || *nonce_len <= ourlen ||
        memcmp(*nonce, c->nonce, ourlen) != 0 || !nonce_printable(*nonce, *nonce_len))
        return -1;
    if (cur_comma(&cur) < 0 || cur_attr(&cur, 's', NULL, &v, &vlen) < 0 ||
        b64_decode(v, vlen, salt, PX_SCRAM_MAX_SALT, salt_len) < 0 || *salt_len == 0)
        return -1;
    if (cur_comma(&cur) < 0 || cur_attr(&cur, 'i', NULL, &v, &vlen) < 0 ||
        parse_iterations(v, vlen, SCRAM_MAX_ITER, iterations) < 0 || !cur_at_end(&cur))
        return -1;
    return 0;
}

int px_scram_client_final(struct px_scram_client *c, const char *msg, size_t len,
                          char **client_final)
{
    uint8_t salt[PX_SCRAM_MAX_SALT], client_key[PX_SCRAM_KEY_LEN], server_key[PX_SCRAM_KEY_LEN];
    uint8_t stored[PX_SCRAM_KEY_LEN], sig[PX_SCRAM_KEY_LEN], proof[PX_SCRAM_KEY_LEN];
    char proof64[64];
    const char *nonce;
    size_t nonce_len, salt_len, am_len = 0;
    int iterations, rc = -1;
    char *wo_proof = NULL, *am = NULL;
    *client_final = NULL;
    if (!c || c->state != SCRAM_FIRST || !msg_acceptable(msg, len) ||
        parse_server_first(c, msg, len, &nonce, &nonce_len, salt, &salt_len, &iterations) < 0)
        goto out;
    if (c->password) {
        if (client_keys(c->password, salt, salt_len, iterations, client_key, server_key) < 0)
            goto out;
    } else {
        /* Passthrough: the server must hold the very verifier our keys came from. */
        if (salt_len != c->keys.salt_len || memcmp(salt, c->keys.salt, salt_len) != 0 ||
            iterations != c->keys.iterations)
            goto out;
        memcpy(client_key, c->client_key, PX_SCRAM_KEY_LEN);
        memcpy(server_key, c->keys.server_key, PX_SCRAM_KEY_LEN);
    }
    if (asprintf(&wo_proof, "c=biws,r=%.*s", (int)nonce_len, nonce) < 0) {
        wo_proof = NULL;
        goto out;
    }
    am = auth_message(c->client_first_bare, msg, len, wo_proof, strlen(wo_proof), &am_len);
    if (!am || sha256(client_key, PX_SCRAM_KEY_LEN, stored) < 0 ||
        hmac_sha256(stored, PX_SCRAM_KEY_LEN, am, am_len, NULL, 0, sig) < 0 ||
        hmac_sha256(server_key, PX_SCRAM_KEY_LEN, am, am_len, NULL, 0, c->server_signature) < 0)
        goto out;
    for (int i = 0; i < PX_SCRAM_KEY_LEN; i++)
        proof[i] = client_key[i] ^ sig[i];
    b64_encode(proof, PX_SCRAM_KEY_LEN, proof64);
    if (asprintf(client_final, "%s,p=%s", wo_proof, proof64) < 0) {
        *client_final = NULL;
        goto out;
    }
    c->state = SCRAM_DONE;
    rc = 0;
out:
    if (rc < 0 && c)
        c->state = SCRAM_FAILED;
    free(wo_proof);
    free(am);
    OPENSSL_cleanse(client_key, sizeof client_key);
    OPENSSL_cleanse(server_key, sizeof server_key);
    OPENSSL_cleanse(proof, sizeof proof);
    return rc;
}

int px_scram_client_verify(struct px_scram_client *c, const char *msg, size_t len)
{
    struct cursor cur = {msg, msg + len};
    uint8_t sig[PX_SCRAM_KEY_LEN];
    const char *v;
    size_t vlen, siglen;
    /* "e=..." (server-error) fails here too: 'v' is required. */
    if (!c || c->state != SCRAM_DONE || !msg_acceptable(msg, len) ||
        cur_attr(&cur, 'v', NULL, &v, &vlen) < 0 || !cur_at_end(&cur) ||
        b64_decode(v, vlen, sig, sizeof sig, &siglen) < 0 || siglen != PX_SCRAM_KEY_LEN ||
        CRYPTO_memcmp(sig, c->server_signature, PX_SCRAM_KEY_LEN) != 0) {
        if (c)
            c->state = SCRAM_FAILED;
        return -1;
    }
    c->state = SCRAM_VERIFIED;
    return 0;
}
