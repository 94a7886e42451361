/*
 * userlist.c: the auth_file (PgBouncer's userlist.txt format) and PostgreSQL's md5 helpers.
 *
 * Interface: userlist.h.  Format and cost model: docs/authentication.md.
 * Loading reads the whole file, parses every line strictly (errors are "FILE:LINE: what"),
 * sorts the users by name for bsearch lookups and rejects duplicates, and computes the md5
 * form of plaintext passwords (cheap).  SCRAM secrets of plaintext passwords cost a PBKDF2
 * each (~1-5 ms), so they are derived only when the user first logs in
 * (px_userlist_scram): a reload of a file with thousands of users must not stall the event
 * loop for seconds.  On reload, a user whose plaintext password is unchanged takes a secret
 * already derived from the previous list.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "auth/scram.h"
#include "auth/scram_int.h"
#include "auth/userlist.h"

#define UL_MAX_FILE  (64L * 1024 * 1024)
#define UL_MAX_FIELD 4096
#define MD5_LEN      35 /* "md5" + 32 hex digits */

struct ul_entry {
    struct px_user user;
    int line;
    enum { PW_PLAIN, PW_MD5, PW_SCRAM } kind;
};

struct px_userlist {
    struct ul_entry *entries; /* sorted by user.name */
    size_t n;
};

/* ---- md5 ---------------------------------------------------------------------------- */

static pthread_once_t md5_once = PTHREAD_ONCE_INIT;
static EVP_MD *md_md5;

static void md5_init(void)
{
    md_md5 = EVP_MD_fetch(NULL, "MD5", NULL);
}

/* out = "md5" + hex(md5(a || b)), or "" on failure (which never equals an md5 string). */
static void md5_hex2(const void *a, size_t alen, const void *b, size_t blen, char out[36])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t d[16];
    unsigned int dl = 0;
    EVP_MD_CTX *ctx = NULL;
    out[0] = '\0';
    if (pthread_once(&md5_once, md5_init) != 0 || !md_md5 || !(ctx = EVP_MD_CTX_new()))
        return;
    if (EVP_DigestInit_ex(ctx, md_md5, NULL) == 1 && EVP_DigestUpdate(ctx, a, alen) == 1 &&
        EVP_DigestUpdate(ctx, b, blen) == 1 && EVP_DigestFinal_ex(ctx, d, &dl) == 1 &&
        dl == sizeof d) {
        memcpy(out, "md5", 3);
        for (int i = 0; i < 16; i++) {
            out[3 + 2 * i] = hex[d[i] >> 4];
            out[4 + 2 * i] = hex[d[i] & 15];
        }
        out[MD5_LEN] = '\0';
    }
    EVP_MD_CTX_free(ctx);
}

void px_md5_encrypt(const char *password, const char *user, char out[36])
{
    md5_hex2(password, strlen(password), user, strlen(user), out);
}

/* As PostgreSQL's check: "md5" + 32 lowercase hex digits. */
static bool is_md5_hash(const char *s)
{
    return strlen(s) == MD5_LEN && strncmp(s, "md5", 3) == 0 &&
           strspn(s + 3, "0123456789abcdef") == MD5_LEN - 3;
}

void px_md5_salted(const char *md5_stored, const uint8_t salt[4], char out[36])
{
    if (!md5_stored || !is_md5_hash(md5_stored)) {
        out[0] = '\0';
        return;
    }
    md5_hex2(md5_stored + 3, MD5_LEN - 3, salt, 4, out);
}

/* ---- Parsing ------------------------------------------------------------------------ */

struct ul_parse {
    const char *path;
    int line;
    char **errmsg;
};

__attribute__((format(printf, 2, 3))) static int parse_error(struct ul_parse *ps, const char *fmt,
                                                             ...)
{
    char *what = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&what, fmt, ap);
    va_end(ap);
    if (n < 0)
        what = NULL;
    if (ps->errmsg && !*ps->errmsg) {
        if (ps->line > 0)
            n = asprintf(ps->errmsg, "%s:%d: %s", ps->path, ps->line, what ? what : "error");
        else
            n = asprintf(ps->errmsg, "%s: %s", ps->path, what ? what : "error");
        if (n < 0)
            *ps->errmsg = NULL;
    }
    free(what);
    return -1;
}

/* Reads a "quoted" field at *p (before end) with "" standing for one quote; returns a
 * malloc'ed copy in *out and advances *p past the closing quote. */
static int parse_field(struct ul_parse *ps, const char **p, const char *end, const char *name,
                       char **out)
{
    const char *s = *p;
    if (s >= end || *s != '"')
        return parse_error(ps, "expected a double-quoted %s", name);
    s++;
    char *buf = malloc((size_t)(end - s) + 1);
    size_t n = 0;
    if (!buf)
        return parse_error(ps, "out of memory");
    for (;;) {
        if (s >= end) {
            free(buf);
            return parse_error(ps, "unterminated %s (missing closing quote)", name);
        }
        if (*s == '"') {
            if (s + 1 < end && s[1] == '"') {
                buf[n++] = '"';
                s += 2;
                continue;
            }
            s++;
            break;
        }
        buf[n++] = *s++;
    }
    buf[n] = '\0';
    if (n == 0 || n > UL_MAX_FIELD) {
        free(buf);
        if (n == 0)
            return parse_error(ps, "empty %s", name);
        return parse_error(ps, "%s longer than %d bytes", name, UL_MAX_FIELD);
    }
    *p = s;
    *out = buf;
    return 0;
}

static const char *skip_blanks(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

static void entry_destroy(struct ul_entry *e)
{
    if (e->user.password) {
        OPENSSL_cleanse(e->user.password, strlen(e->user.password));
        free(e->user.password);
    }
    free(e->user.name);
    free(e->user.md5);
    OPENSSL_cleanse(e, sizeof *e);
}

/* Classifies the password field as PostgreSQL does, except that anything starting with
 * "SCRAM-SHA-256$" must be a valid verifier (PostgreSQL would take it as plaintext). */
static int entry_set_password(struct ul_parse *ps, struct ul_entry *e, char *pw)
{
    if (strncmp(pw, "SCRAM-SHA-256$", 14) == 0) {
        int rc = px_scram_secret_parse(pw, &e->user.scram);
        free(pw);
        if (rc < 0)
            return parse_error(ps, "malformed SCRAM-SHA-256 verifier for user \"%s\"",
                               e->user.name);
        e->kind = PW_SCRAM;
        e->user.has_scram = true;
        e->user.scram_ready = true;
    } else if (is_md5_hash(pw)) {
        e->kind = PW_MD5;
        e->user.md5 = pw;
    } else {
        e->kind = PW_PLAIN;
        e->user.password = pw;
        e->user.has_scram = true; /* the secret is derived on first use */
    }
    return 0;
}

/* Parses one non-comment line: "user" "password". */
static int parse_line(struct ul_parse *ps, const char *p, const char *end, struct ul_entry *e)
{
    char *pw = NULL;
    memset(e, 0, sizeof *e);
    e->line = ps->line;
    if (memchr(p, '\0', (size_t)(end - p)))
        return parse_error(ps, "NUL byte in line");
    if (parse_field(ps, &p, end, "user name", &e->user.name) < 0)
        return -1;
    const char *q = skip_blanks(p, end);
    if (q == p && q < end)
        return parse_error(ps, "expected blanks between user name and password");
    if (q >= end)
        return parse_error(ps, "missing password for user \"%s\"", e->user.name);
    if (parse_field(ps, &q, end, "password", &pw) < 0)
        return -1;
    if (skip_blanks(q, end) != end) {
        free(pw);
        return parse_error(ps, "unexpected text after the password of user \"%s\"", e->user.name);
    }
    return entry_set_password(ps, e, pw);
}

static int read_file(struct ul_parse *ps, char **data, size_t *len)
{
    FILE *f = fopen(ps->path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    if (!f)
        return parse_error(ps, "cannot open: %s", strerror(errno));
    for (;;) {
        if (cap - n < 4096) {
            cap = cap ? cap * 2 : 8192;
            char *nb = cap <= (size_t)UL_MAX_FILE * 2 ? realloc(buf, cap) : NULL;
            if (!nb) {
                free(buf);
                fclose(f);
                return parse_error(ps, cap > (size_t)UL_MAX_FILE * 2 ? "file too large"
                                                                     : "out of memory");
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n > (size_t)UL_MAX_FILE) {
            free(buf);
            fclose(f);
            return parse_error(ps, "file too large (more than %ld bytes)", UL_MAX_FILE);
        }
        if (got == 0)
            break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return parse_error(ps, "read error");
    }
    *data = buf;
    *len = n;
    return 0;
}

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct ul_entry *)a)->user.name, ((const struct ul_entry *)b)->user.name);
}

/* Parses every line of data into ul (entries unsorted). */
static int parse_lines(struct ul_parse *ps, const char *data, size_t len, struct px_userlist *ul)
{
    const char *p = data, *end = data + len;
    size_t cap = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *lend = nl ? nl : end;
        ps->line++;
        if (lend > p && lend[-1] == '\r')
            lend--;
        const char *s = skip_blanks(p, lend);
        p = nl ? nl + 1 : end;
        if (s == lend || *s == ';' || *s == '#')
            continue;
        if (ul->n == cap) {
            cap = cap ? cap * 2 : 16;
            struct ul_entry *ne = realloc(ul->entries, cap * sizeof *ne);
            if (!ne)
                return parse_error(ps, "out of memory");
            ul->entries = ne;
        }
        if (parse_line(ps, s, lend, &ul->entries[ul->n]) < 0) {
            entry_destroy(&ul->entries[ul->n]);
            return -1;
        }
        ul->n++;
    }
    return 0;
}

/* Derives what plaintext entries need now: md5 always; the SCRAM secret only when previous
 * has it derived for the same user and plaintext password (else px_userlist_scram derives
 * it on first use). */
static int derive_secrets(struct ul_parse *ps, struct px_userlist *ul,
                          const struct px_userlist *previous)
{
    for (size_t i = 0; i < ul->n; i++) {
        struct ul_entry *e = &ul->entries[i];
        if (e->kind != PW_PLAIN)
            continue;
        ps->line = e->line;
        char md5[36];
        px_md5_encrypt(e->user.password, e->user.name, md5);
        if (md5[0] == '\0' || !(e->user.md5 = strdup(md5)))
            return parse_error(ps, "cannot compute the md5 hash of user \"%s\"", e->user.name);
        const struct px_user *old = previous ? px_userlist_find(previous, e->user.name) : NULL;
        if (old && old->password && old->scram_ready &&
            strcmp(old->password, e->user.password) == 0) {
            e->user.scram = old->scram;
            e->user.scram_ready = true;
        }
    }
    return 0;
}

int px_userlist_load(const char *path, const struct px_userlist *previous, struct px_userlist **out,
                     char **errmsg)
{
    struct ul_parse ps = {path ? path : "(null)", 0, errmsg};
    char *data = NULL;
    size_t len = 0;
    *out = NULL;
    if (errmsg)
        *errmsg = NULL;
    struct px_userlist *ul = calloc(1, sizeof *ul);
    if (!ul)
        return parse_error(&ps, "out of memory");
    if (!path || read_file(&ps, &data, &len) < 0 || parse_lines(&ps, data, len, ul) < 0)
        goto fail;
    if (ul->n > 1)
        qsort(ul->entries, ul->n, sizeof *ul->entries, entry_cmp);
    for (size_t i = 1; i < ul->n; i++) {
        const struct ul_entry *a = &ul->entries[i - 1], *b = &ul->entries[i];
        if (strcmp(a->user.name, b->user.name) == 0) {
            ps.line = a->line > b->line ? a->line : b->line;
            parse_error(&ps, "duplicate user \"%s\" (also at line %d)", a->user.name,
                        a->line < b->line ? a->line : b->line);
            goto fail;
        }
    }
    if (derive_secrets(&ps, ul, previous) < 0)
        goto fail;
    if (data)
        OPENSSL_cleanse(data, len);
    free(data);
    *out = ul;
    return 0;
fail:
    if (data)
        OPENSSL_cleanse(data, len);
    free(data);
    px_userlist_free(ul);
    return -1;
}

void px_userlist_free(struct px_userlist *ul)
{
    if (!ul)
        return;
    for (size_t i = 0; i < ul->n; i++)
        entry_destroy(&ul->entries[i]);
    free(ul->entries);
    free(ul);
}

static struct ul_entry *find_entry(const struct px_userlist *ul, const char *name)
{
    if (!ul || !name || ul->n == 0)
        return NULL;
    struct ul_entry key;
    key.user.name = (char *)name;
    return bsearch(&key, ul->entries, ul->n, sizeof *ul->entries, entry_cmp);
}

const struct px_user *px_userlist_find(const struct px_userlist *ul, const char *name)
{
    const struct ul_entry *e = find_entry(ul, name);
    return e ? &e->user : NULL;
}

const struct px_scram_secret *px_userlist_scram(struct px_userlist *ul, const char *name)
{
    struct ul_entry *e = find_entry(ul, name);
    if (!e || !e->user.has_scram)
        return NULL;
    if (!e->user.scram_ready) {
        if (px_scram_secret_from_password(e->user.password, PX_SCRAM_DEFAULT_ITER, &e->user.scram) <
            0)
            return NULL; /* tried again at the next login */
        e->user.scram_ready = true;
    }
    return &e->user.scram;
}
