/*
 * itest_wire.h: raw protocol v3 for integration tests that must send what libpq never
 * sends (test_limits.c, test_tls_auth.c): reading backend messages up to a chosen type,
 * finding a message, and the fields of an ErrorResponse.  Header-only (static functions),
 * like itest_util.h; the socket helpers are harness.h's.
 */
#ifndef PGW_TESTS_INTEGRATION_ITEST_WIRE_H
#define PGW_TESTS_INTEGRATION_ITEST_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "harness.h"
#include "itest_util.h"

static inline uint32_t itw_get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void itw_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/*
 * Finds the first complete message of a type in stop (e.g. "ZE") among the messages in
 * buf[0..len); *end gets the offset just past it.  False when none is complete yet.
 */
static inline bool itw_complete(const uint8_t *buf, size_t len, const char *stop, size_t *end)
{
    size_t off = 0;
    while (off + 5 <= len) {
        uint32_t mlen = itw_get32(buf + off + 1);
        if (mlen < 4 || off + 1 + mlen > len)
            return false;
        off += 1 + mlen;
        if (strchr(stop, (char)buf[off - 1 - mlen])) {
            *end = off;
            return true;
        }
    }
    return false;
}

/*
 * Reads backend messages from fd into buf until one of a type in stop has arrived whole,
 * the peer closed, or timeout_ms passed.  Returns the bytes read (>= 0), -1 on errors.
 */
static inline ssize_t itw_recv_until(int fd, uint8_t *buf, size_t cap, const char *stop,
                                     int timeout_ms)
{
    size_t len = 0, end;
    int64_t deadline = itu_now_ms() + timeout_ms;
    while (len < cap && !itw_complete(buf, len, stop, &end)) {
        int64_t left = deadline - itu_now_ms();
        if (left <= 0)
            break;
        bool closed = false;
        ssize_t n = harness_raw_recv(fd, buf + len, 1, (int)left, &closed);
        if (n < 0)
            return -1;
        len += (size_t)n;
        if (closed || n == 0)
            break;
        /* then whatever else is already there, without waiting */
        n = harness_raw_recv(fd, buf + len, cap - len, 0, &closed);
        if (n > 0)
            len += (size_t)n;
        if (closed)
            break;
    }
    return (ssize_t)len;
}

/* The body of the first message of type in buf[0..len), or NULL; *blen its length (blen
 * may be NULL). */
static inline const uint8_t *itw_find(const uint8_t *buf, size_t len, char type, size_t *blen)
{
    size_t off = 0;
    while (off + 5 <= len) {
        uint32_t mlen = itw_get32(buf + off + 1);
        if (mlen < 4 || off + 1 + mlen > len)
            return NULL;
        if (buf[off] == (uint8_t)type) {
            if (blen)
                *blen = mlen - 4;
            return buf + off + 5;
        }
        off += 1 + mlen;
    }
    return NULL;
}

/* Field code ('C', 'M', 'S', ...) of the first ErrorResponse in buf, copied into out
 * ("" when there is none). */
static inline void itw_error_field(const uint8_t *buf, size_t len, char code, char *out, size_t cap)
{
    size_t blen = 0;
    const uint8_t *b = itw_find(buf, len, 'E', &blen);
    out[0] = '\0';
    for (size_t i = 0; b && i < blen && b[i];) {
        const uint8_t *nul = memchr(b + i + 1, '\0', blen - i - 1);
        if (!nul)
            return;
        if (b[i] == (uint8_t)code) {
            size_t n = (size_t)(nul - (b + i + 1));
            if (n >= cap)
                n = cap - 1;
            memcpy(out, b + i + 1, n);
            out[n] = '\0';
            return;
        }
        i = (size_t)(nul - b) + 1;
    }
}

/* Appends a frontend message (type, body) to buf at *len; false when it does not fit. */
static inline bool itw_msg(uint8_t *buf, size_t cap, size_t *len, char type, const void *body,
                           size_t blen)
{
    if (*len + 5 + blen > cap)
        return false;
    buf[*len] = (uint8_t)type;
    itw_put32(buf + *len + 1, (uint32_t)(blen + 4));
    if (blen) /* body may be NULL for an empty message (Sync, Flush) */
        memcpy(buf + *len + 5, body, blen);
    *len += 5 + blen;
    return true;
}

#endif
