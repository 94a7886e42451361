/*
 * lockcall_int.h: what lockcall.c (recognition, parse analysis) and lockcall_exec.c (Bind,
 * execution, replies) share: values in flight, PostgreSQL's type conversions, UTF-8 and
 * error helpers.  Not for other modules: see lockcall.h.
 */
#ifndef PGW_PROXY_LOCKCALL_INT_H
#define PGW_PROXY_LOCKCALL_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "path/lockcall.h"

/* Bytes of a value kept for error messages that quote it (PostgreSQL quotes it whole). */
#define PX_LC_PREFIX 400

/* A text scanned as PostgreSQL's integer input functions would (pg_strtoint16/32/64):
 * [space...] [+|-] digit... [space...], built byte by byte. */
enum px_lc_scan_state {
    PX_LC_SCAN_LEAD,
    PX_LC_SCAN_SIGN,
    PX_LC_SCAN_DIGITS,
    PX_LC_SCAN_TRAIL,
    PX_LC_SCAN_BAD
};

struct px_lc_intscan {
    uint8_t state; /* enum px_lc_scan_state */
    bool neg;
    bool junk;    /* something other than white space after the digits */
    uint64_t mag; /* magnitude of the digits before any junk, saturated above 2^63 */
};

/* A value in flight: NULL, an integer, or text (len bytes: text[] holds the first
 * min(len, PX_LC_PREFIX), scan its integer reading, trail its trailing blanks). */
struct px_lc_val {
    bool isnull;
    uint8_t type; /* enum px_locktype */
    int64_t ival;
    size_t len;
    size_t trail;
    struct px_lc_intscan scan;
    char text[PX_LC_PREFIX];
};

/* Incremental UTF-8 validation (PostgreSQL's pg_utf8_islegal, NUL is invalid). */
struct px_lc_utf8 {
    uint8_t need;   /* continuation bytes still expected */
    uint8_t lo, hi; /* the range of the next continuation byte */
    bool bad;
};

void px_lc_utf8_feed(struct px_lc_utf8 *u, unsigned char c);
static inline bool px_lc_utf8_ok(const struct px_lc_utf8 *u)
{
    return !u->bad && u->need == 0;
}

/* Offset of the first invalid character in s[0..n), or n when all are valid. */
size_t px_lc_utf8_check(const char *s, size_t n);

/* Sets *err to PostgreSQL's 22021 for the invalid character at s[0..n). */
void px_lc_err_encoding(struct px_lockcall_error *err, const char *s, size_t n);

/* Starts an empty text value of type t; append bytes with px_lc_val_put. */
void px_lc_val_text(struct px_lc_val *v, uint8_t t);
void px_lc_val_put(struct px_lc_val *v, const char *s, size_t n);
void px_lc_val_int(struct px_lc_val *v, uint8_t t, int64_t i);

/*
 * Converts *v to type to as PostgreSQL would (explicit cast, or the implicit coercion to
 * a function's argument type, which is one of them).  position: the 1-based position for
 * errors of a string constant's input (0 for none).  0, -1 with *err set (22P02, 22003),
 * or -2 when pgwarden does not convert between these types (the caller says 0A000).
 */
int px_lc_convert(struct px_lc_val *v, uint8_t to, uint32_t position,
                  struct px_lockcall_error *err);

/* PostgreSQL's format_type name of t. */
const char *px_lc_type_name(uint8_t t);

/* Sets *err (sqlstate and printf-style message; other fields cleared). */
void px_lc_err(struct px_lockcall_error *err, const char *sqlstate, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies s[0..n) into dst (size bytes) NUL-terminated, cut at a UTF-8 boundary. */
void px_lc_copy_cut(char *dst, size_t size, const char *s, size_t n);

#endif
