/*
 * json_util.h: UTF-8 hygiene for strings that came from clients (application_name, user,
 * database, lock keys) before they go into JSON or metric labels, and jansson helpers.
 *
 * The UTF-8 functions are header-only (static inline, libc only) so that px_metrics, which
 * is built alone without jansson, can use them too.  px_json_* are implemented in
 * base/json_util.c (library pxcore) and need jansson; this header only forward-declares
 * jansson's json_t so that it compiles on its own without jansson's headers.
 */
#ifndef PGW_PROXY_JSON_UTIL_H
#define PGW_PROXY_JSON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/*
 * Length of the valid UTF-8 sequence starting at s (at most len bytes), or 0 when the bytes
 * there are not a valid sequence (RFC 3629: no overlong forms, no surrogates, nothing above
 * U+10FFFF, no truncated sequence).
 */
static inline size_t px_utf8_seq_len(const unsigned char *s, size_t len)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (len < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return n;
}

/* True when s[0..len) is entirely valid UTF-8. */
static inline bool px_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        size_t n = px_utf8_seq_len(p + i, len - i);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

/*
 * Returns a NUL-terminated copy of s[0..len) where every byte that does not start a valid
 * UTF-8 sequence is replaced by U+FFFD (EF BF BD), and stores its length in *out_len (may
 * be NULL).  Embedded NUL bytes are kept (they are valid UTF-8).  Returns NULL on
 * allocation failure.  The result is owned by the caller (free()).
 */
static inline char *px_utf8_sanitize(const char *s, size_t len, size_t *out_len)
{
    const unsigned char *p = (const unsigned char *)s;
    if (len > (((size_t)-1) - 1) / 3)
        return NULL;
    char *out = (char *)malloc(px_utf8_valid(s, len) ? len + 1 : len * 3 + 1);
    if (!out)
        return NULL;
    size_t i = 0, o = 0;
    while (i < len) {
        size_t n = px_utf8_seq_len(p + i, len - i);
        if (n == 0) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += 1;
        } else {
            memcpy(out + o, p + i, n);
            o += n;
            i += n;
        }
    }
    out[o] = '\0';
    if (out_len)
        *out_len = o;
    return out;
}

/*
 * Length of the longest prefix of the valid UTF-8 string s[0..len) that has at most max
 * bytes and does not cut a character in two.
 */
static inline size_t px_utf8_truncate(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && (((unsigned char)s[n]) & 0xC0) == 0x80)
        n--;
    return n;
}

/* ---- jansson helpers (json_util.c, library pxcore) ---- */

struct json_t;

/*
 * A JSON string from client input: sanitized to valid UTF-8 (U+FFFD for bad bytes) then
 * handed to jansson.  NULL s gives JSON null.  Returns a new reference, or NULL on
 * allocation failure.
 */
struct json_t *px_json_string(const char *s);
/* Same for s[0..len), which may contain NUL bytes. */
struct json_t *px_json_stringn(const char *s, size_t len);

#endif
