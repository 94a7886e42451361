/*
 * lockcall_exec.c: the lock call after parse analysis (see lockcall.h): Bind (parameter
 * values, casts of typed values, result formats), execution (STRICT, key, mode and
 * timeout checks) and the replies (ErrorResponse, ParameterDescription, RowDescription,
 * DataRow, CommandComplete).  Also the value conversions and UTF-8 checks lockcall.c
 * shares (lockcall_int.h).
 *
 * Conversions follow PostgreSQL 15: integer input as pg_strtoint16/32/64 (white space
 * around, a sign, decimal digits; "out of range" is decided digit by digit, so it wins
 * over trailing junk), integer casts with int84/i4toi2 range checks, integer output in
 * decimal, bpchar to text or varchar through rtrim (text(character)), anything else
 * through the types' text forms.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "path/lockcall_int.h"

/* ---- errors --------------------------------------------------------------------------- */

void px_lc_err(struct px_lockcall_error *err, const char *sqlstate, const char *fmt, ...)
{
    va_list ap;
    memset(err, 0, sizeof(*err));
    memcpy(err->sqlstate, sqlstate, 5);
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
}

void px_lc_copy_cut(char *dst, size_t size, const char *s, size_t n)
{
    if (n >= size) {
        n = size - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--; /* s[n] is the first byte left out: back up to its character's start */
    }
    memcpy(dst, s, n);
    dst[n] = '\0';
}

/* ---- UTF-8 ---------------------------------------------------------------------------- */

void px_lc_utf8_feed(struct px_lc_utf8 *u, unsigned char c)
{
    if (u->need) {
        if (c < u->lo || c > u->hi)
            u->bad = true;
        u->lo = 0x80;
        u->hi = 0xBF;
        u->need--;
        return;
    }
    u->lo = 0x80;
    u->hi = 0xBF;
    if (c == 0 || (c >= 0x80 && c < 0xC2) || c > 0xF4) {
        u->bad = true;
    } else if (c >= 0xE0) {
        u->need = c >= 0xF0 ? 3 : 2;
        if (c == 0xE0)
            u->lo = 0xA0; /* no overlong forms */
        else if (c == 0xED)
            u->hi = 0x9F; /* no surrogates */
        else if (c == 0xF0)
            u->lo = 0x90;
        else if (c == 0xF4)
            u->hi = 0x8F; /* nothing above U+10FFFF */
    } else if (c >= 0xC2) {
        u->need = 1;
    }
}

size_t px_lc_utf8_check(const char *s, size_t n)
{
    size_t start = 0;
    struct px_lc_utf8 u = {0};
    for (size_t i = 0; i < n; i++) {
        if (u.need == 0)
            start = i;
        px_lc_utf8_feed(&u, (unsigned char)s[i]);
        if (u.bad)
            return start;
    }
    return u.need ? start : n;
}

/* PostgreSQL's pg_utf_mblen: the length the first byte announces. */
static size_t utf8_mblen(unsigned char c)
{
    if ((c & 0x80) == 0)
        return 1;
    if ((c & 0xE0) == 0xC0)
        return 2;
    if ((c & 0xF0) == 0xE0)
        return 3;
    if ((c & 0xF8) == 0xF0)
        return 4;
    return 1;
}

/* report_invalid_encoding(): the announced bytes, as far as the value goes. */
void px_lc_err_encoding(struct px_lockcall_error *err, const char *s, size_t n)
{
    char hex[5 * 4 + 1] = "";
    size_t l = utf8_mblen((unsigned char)s[0]), at = 0;
    for (size_t j = 0; j < l && j < n; j++)
        at += (size_t)snprintf(hex + at, sizeof(hex) - at, "%s0x%02x", j ? " " : "",
                               (unsigned char)s[j]);
    px_lc_err(err, "22021", "invalid byte sequence for encoding \"UTF8\": %s", hex);
}

/* ---- values --------------------------------------------------------------------------- */

static bool is_c_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r'); /* isspace() in the C locale */
}

static void scan_feed(struct px_lc_intscan *s, unsigned char c)
{
    bool digit = c >= '0' && c <= '9';
    switch (s->state) {
    case PX_LC_SCAN_LEAD:
        if (is_c_space(c))
            break;
        if (c == '-' || c == '+') {
            s->neg = c == '-';
            s->state = PX_LC_SCAN_SIGN;
            break;
        }
        /* fall through */
    case PX_LC_SCAN_SIGN:
        s->state = digit ? PX_LC_SCAN_DIGITS : PX_LC_SCAN_BAD;
        s->mag = digit ? (uint64_t)(c - '0') : 0;
        break;
    case PX_LC_SCAN_DIGITS:
        if (digit && !s->junk) {
            if (s->mag <= (UINT64_C(1) << 63))
                s->mag = s->mag * 10 + (uint64_t)(c - '0'); /* stays above 2^63 once there */
            break;
        }
        s->state = PX_LC_SCAN_TRAIL;
        /* fall through */
    case PX_LC_SCAN_TRAIL:
        if (!is_c_space(c))
            s->junk = true;
        break;
    default: break;
    }
}

void px_lc_val_text(struct px_lc_val *v, uint8_t t)
{
    v->isnull = false;
    v->type = t;
    v->ival = 0;
    v->len = 0;
    v->trail = 0;
    v->scan = (struct px_lc_intscan){0};
}

void px_lc_val_put(struct px_lc_val *v, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (v->len < PX_LC_PREFIX)
            v->text[v->len] = (char)c;
        v->len++;
        v->trail = c == ' ' ? v->trail + 1 : 0;
        scan_feed(&v->scan, c);
    }
}

void px_lc_val_int(struct px_lc_val *v, uint8_t t, int64_t i)
{
    v->isnull = false;
    v->type = t;
    v->ival = i;
}

static bool is_textish(uint8_t t)
{
    return t == PX_LT_TEXT || t == PX_LT_VARCHAR || t == PX_LT_BPCHAR;
}

static bool is_int(uint8_t t)
{
    return t == PX_LT_INT2 || t == PX_LT_INT4 || t == PX_LT_INT8;
}

const char *px_lc_type_name(uint8_t t)
{
    static const char *const names[] = {
        [PX_LT_UNKNOWN] = "unknown",
        [PX_LT_TEXT] = "text",
        [PX_LT_VARCHAR] = "character varying",
        [PX_LT_BPCHAR] = "character",
        [PX_LT_INT2] = "smallint",
        [PX_LT_INT4] = "integer",
        [PX_LT_INT8] = "bigint",
        [PX_LT_NUMERIC] = "numeric",
        [PX_LT_BOOL] = "boolean",
        [PX_LT_OTHER] = "?",
    };
    return t <= PX_LT_OTHER ? names[t] : "?";
}

uint32_t px_locktype_oid(enum px_locktype t)
{
    static const uint32_t oids[] = {
        [PX_LT_UNKNOWN] = 705, [PX_LT_TEXT] = 25, [PX_LT_VARCHAR] = 1043, [PX_LT_BPCHAR] = 1042,
        [PX_LT_INT2] = 21,     [PX_LT_INT4] = 23, [PX_LT_INT8] = 20,      [PX_LT_NUMERIC] = 1700,
        [PX_LT_BOOL] = 16,     [PX_LT_OTHER] = 0,
    };
    return (unsigned)t <= PX_LT_OTHER ? oids[t] : 0;
}

/* The value's text for a message: its first bytes, cut at a character boundary. */
static void quoted_value(const struct px_lc_val *v, char *buf, size_t size)
{
    px_lc_copy_cut(buf, size, v->text, v->len < PX_LC_PREFIX ? v->len : PX_LC_PREFIX);
}

/* Text to integer type to (the type's input function). */
static int text_to_int(struct px_lc_val *v, uint8_t to, uint32_t position,
                       struct px_lockcall_error *err)
{
    const char *name = px_lc_type_name(to);
    uint64_t limit = to == PX_LT_INT2   ? UINT64_C(1) << 15
                     : to == PX_LT_INT4 ? UINT64_C(1) << 31
                                        : UINT64_C(1) << 63; /* |minimum| */
    const struct px_lc_intscan *s = &v->scan;
    char shown[PX_LC_PREFIX + 1];
    quoted_value(v, shown, sizeof(shown));
    if (s->state == PX_LC_SCAN_LEAD || s->state == PX_LC_SCAN_SIGN || s->state == PX_LC_SCAN_BAD) {
        px_lc_err(err, "22P02", "invalid input syntax for type %s: \"%s\"", name, shown);
    } else if (s->mag > limit) {
        px_lc_err(err, "22003", "value \"%s\" is out of range for type %s", shown, name);
    } else if (s->junk) {
        px_lc_err(err, "22P02", "invalid input syntax for type %s: \"%s\"", name, shown);
    } else if (!s->neg && s->mag == limit) {
        px_lc_err(err, "22003", "value \"%s\" is out of range for type %s", shown, name);
    } else {
        px_lc_val_int(v, to, s->neg ? (int64_t)(0 - s->mag) : (int64_t)s->mag);
        return 0;
    }
    err->position = position;
    return -1;
}

int px_lc_convert(struct px_lc_val *v, uint8_t to, uint32_t position, struct px_lockcall_error *err)
{
    uint8_t from = v->type;
    if (from == to)
        return 0;
    bool from_text = from == PX_LT_UNKNOWN || is_textish(from);
    if (!(from_text || is_int(from)) || !(is_textish(to) || is_int(to)))
        return -2;
    if (v->isnull) {
        v->type = to;
        return 0;
    }
    if (from_text && is_textish(to)) {
        if (from == PX_LT_BPCHAR) { /* rtrim; the integer reading ignores trailing blanks */
            v->len -= v->trail;
            v->trail = 0;
        }
        v->type = to;
        return 0;
    }
    if (from_text)
        return text_to_int(v, to, from == PX_LT_UNKNOWN ? position : 0, err);
    if (is_textish(to)) {
        char buf[24];
        int n = snprintf(buf, sizeof(buf), "%" PRId64, v->ival);
        px_lc_val_text(v, to);
        px_lc_val_put(v, buf, (size_t)n);
        return 0;
    }
    if ((to == PX_LT_INT2 && (v->ival < INT16_MIN || v->ival > INT16_MAX)) ||
        (to == PX_LT_INT4 && (v->ival < INT32_MIN || v->ival > INT32_MAX))) {
        px_lc_err(err, "22003", "%s out of range", to == PX_LT_INT2 ? "smallint" : "integer");
        return -1;
    }
    v->type = to;
    return 0;
}

/* ---- Bind ----------------------------------------------------------------------------- */

/* PostgreSQL's errcontext for parameter n (1-based) of a Bind; with_value: a text-format
 * value's input failed (its value shown as '...', log_parameter_max_length_on_error = 0). */
static void bind_context(struct px_lockcall_error *err, const char *portal, unsigned n,
                         bool with_value)
{
    const char *val = with_value ? " = '...'" : "";
    if (portal && *portal) {
        char name[PX_LOCKCALL_NAME_SIZE];
        px_lc_copy_cut(name, sizeof(name), portal, strlen(portal));
        snprintf(err->context, sizeof(err->context), "portal \"%s\" parameter $%u%s", name, n, val);
    } else {
        snprintf(err->context, sizeof(err->context), "unnamed portal parameter $%u%s", n, val);
    }
}

/* Decodes parameter i's value (format fmt, type t) into *v, as exec_bind_message does. */
static int decode_param(const struct px_wire_bind *b, uint16_t i, uint8_t t, const char *portal,
                        struct px_lc_val *v, struct px_lockcall_error *err)
{
    const uint8_t *p;
    int32_t len = px_wire_bind_param(b, i, &p);
    int16_t fmt = px_wire_format_code(b->formats, b->nformats, i);
    const char *s = (const char *)p;
    v->isnull = len < 0;
    v->type = t;
    if (fmt != 0 && fmt != 1) {
        px_lc_err(err, "22023", "unsupported format code: %d", fmt);
        bind_context(err, portal, i + 1u, false);
        return -1;
    }
    if (len < 0)
        return 0;
    size_t n = (size_t)len, bad;
    if ((fmt == 0 || is_textish(t)) && (bad = px_lc_utf8_check(s, n)) < n) {
        px_lc_err_encoding(err, s + bad, n - bad);
        bind_context(err, portal, i + 1u, false);
        return -1;
    }
    if (fmt == 0 || is_textish(t)) {
        px_lc_val_text(v, PX_LT_TEXT);
        px_lc_val_put(v, s, n);
        if (is_textish(t)) {
            v->type = t;
            return 0;
        }
        if (text_to_int(v, t, 0, err) < 0) {
            bind_context(err, portal, i + 1u, true);
            return -1;
        }
        return 0;
    }
    size_t want = t == PX_LT_INT2 ? 2 : t == PX_LT_INT4 ? 4 : 8;
    if (n < want) {
        px_lc_err(err, "08P01", "insufficient data left in message");
    } else if (n > want) {
        px_lc_err(err, "22P03", "incorrect binary data format in bind parameter %u", i + 1u);
    } else {
        uint64_t u = 0;
        for (size_t k = 0; k < n; k++)
            u = u << 8 | p[k];
        int64_t x = want == 2 ? (int16_t)u : want == 4 ? (int32_t)u : (int64_t)u;
        px_lc_val_int(v, t, x);
        return 0;
    }
    bind_context(err, portal, i + 1u, false);
    return -1;
}

/* Stores the final value of argument k. */
static void store_value(struct px_lockcall_values *out, int k, const struct px_lc_val *v)
{
    out->isnull[k] = v->isnull;
    out->ival[k] = v->ival;
    out->len[k] = v->isnull || !is_textish(v->type) ? 0 : v->len;
    size_t keep = out->len[k] < PX_LOCKCALL_TEXT_MAX ? out->len[k] : PX_LOCKCALL_TEXT_MAX;
    memcpy(out->text[k], v->text, keep);
}

/* Argument k: its constant, or its parameter's value (params[]) through its casts. */
static int eval_arg(const struct px_lockcall *call, int k, const struct px_lc_val *params,
                    struct px_lockcall_values *out, struct px_lockcall_error *err)
{
    const struct px_lockarg *a = &call->args[k];
    struct px_lc_val v;
    switch (a->kind) {
    case PX_LOCKARG_TEXT:
        px_lc_val_text(&v, PX_LT_TEXT);
        memcpy(v.text, a->text, a->len < PX_LOCKCALL_TEXT_MAX ? a->len : PX_LOCKCALL_TEXT_MAX);
        v.len = a->len;
        break;
    case PX_LOCKARG_INT: px_lc_val_int(&v, PX_LT_INT4, a->ival); break;
    case PX_LOCKARG_NULL: v.isnull = true; break;
    case PX_LOCKARG_ERROR: *err = call->deferred; return -1;
    case PX_LOCKARG_PARAM:
        v = params[a->param - 1];
        for (int c = 1; c < a->nconv; c++) {
            int rc = px_lc_convert(&v, a->conv[c], 0, err);
            if (rc == -2) /* analysis admits only conversions we make */
                px_lc_err(err, "XX000", "pgwarden: unexpected conversion");
            if (rc < 0)
                return -1;
        }
        break;
    }
    store_value(out, k, &v);
    return 0;
}

int px_lockcall_bind(const struct px_lockcall *call, const struct px_wire_bind *bind,
                     const char *stmt, const char *portal, struct px_lockcall_values *out,
                     struct px_lockcall_error *err)
{
    static const struct px_wire_bind none = {0};
    struct px_lc_val params[PX_LOCKCALL_MAX_PARAMS];
    char name[PX_LOCKCALL_NAME_SIZE];
    if (!bind)
        bind = &none;
    memset(out, 0, sizeof(*out));
    memset(err, 0, sizeof(*err));
    if (bind->nformats > 1 && bind->nformats != bind->nparams) {
        px_lc_err(err, "08P01", "bind message has %u parameter formats but %u parameters",
                  bind->nformats, bind->nparams);
        return -1;
    }
    if (bind->nparams != call->nparams) {
        px_lc_copy_cut(name, sizeof(name), stmt ? stmt : "", stmt ? strlen(stmt) : 0);
        px_lc_err(err, "08P01",
                  "bind message supplies %u parameters, but prepared statement \"%s\" requires %u",
                  bind->nparams, name, call->nparams);
        return -1;
    }
    for (uint16_t i = 0; i < call->nparams; i++) {
        uint8_t t = call->param_lt[i];
        if (!is_textish(t) && !is_int(t)) {
            params[i].isnull = true; /* a declared type no argument uses: not decoded */
            continue;
        }
        if (decode_param(bind, i, call->param_lt[i], portal, &params[i], err) < 0)
            return -1;
    }
    for (int k = 0; k < call->nargs; k++)
        if (eval_arg(call, k, params, out, err) < 0)
            return -1;
    out->ncolumns = px_lockcall_ncolumns(call);
    if (bind->nresults > 1 && bind->nresults != out->ncolumns) {
        px_lc_err(err, "08P01", "bind message has %u result formats but query has %u columns",
                  bind->nresults, out->ncolumns);
        return -1;
    }
    for (uint16_t c = 0; c < out->ncolumns; c++)
        out->formats[c] = px_wire_format_code(bind->results, bind->nresults, c);
    return 0;
}

/* ---- execution ------------------------------------------------------------------------ */

int px_lockcall_check_key(const char *s, size_t len, struct px_lockcall_error *err)
{
    (void)s;
    if (len == 0) {
        px_lc_err(err, "22023", "lock key must not be empty");
        snprintf(err->hint, sizeof(err->hint), "A lock key is 1 to %d bytes of text.",
                 LOCKMGR_KEY_MAX);
        return -1;
    }
    if (len > LOCKMGR_KEY_MAX) {
        px_lc_err(err, "22023", "lock key is too long");
        snprintf(err->detail, sizeof(err->detail), "The key has %zu bytes; the limit is %d.", len,
                 LOCKMGR_KEY_MAX);
        return -1;
    }
    return 0;
}

int px_lockcall_check_mode(const char *s, size_t len, enum lockmgr_mode *mode,
                           struct px_lockcall_error *err)
{
    if (len <= PX_LOCKCALL_TEXT_MAX && lockmgr_mode_parse(s, len, mode))
        return 0;
    char shown[65];
    size_t keep = len < PX_LOCKCALL_TEXT_MAX ? len : PX_LOCKCALL_TEXT_MAX;
    px_lc_copy_cut(shown, sizeof(shown), s, keep);
    px_lc_err(err, "22023", "invalid lock mode: \"%s%s\"", shown,
              keep >= sizeof(shown) ? "..." : "");
    snprintf(err->hint, sizeof(err->hint), "Valid modes are read, write and exclusive.");
    return -1;
}

int px_lockcall_check_timeout(int64_t ms, struct px_lockcall_error *err)
{
    if (ms >= 0)
        return 0;
    px_lc_err(err, "22023", "timeout_ms must not be negative: %" PRId64, ms);
    snprintf(err->hint, sizeof(err->hint), "Use 0 to wait without a time limit.");
    return -1;
}

int px_lockcall_request(const struct px_lockcall *call, const struct px_lockcall_values *v,
                        struct px_lockreq *req, struct px_lockcall_error *err)
{
    memset(req, 0, sizeof(*req));
    memset(err, 0, sizeof(*err));
    req->fn = call->fn;
    req->scope = call->fn == PX_LOCKFN_XACT_LOCK || call->fn == PX_LOCKFN_TRY_XACT_LOCK
                     ? LOCKMGR_XACT
                     : LOCKMGR_SESSION;
    for (uint16_t c = 0; c < v->ncolumns; c++) {
        if (v->formats[c] != 0 && v->formats[c] != 1) {
            px_lc_err(err, "22023", "unsupported format code: %d", v->formats[c]);
            return -1;
        }
    }
    for (int k = 0; k < call->nargs; k++) {
        if (v->isnull[k]) {
            req->null_result = true; /* STRICT: the function is not called */
            return 0;
        }
    }
    if (call->nargs >= 1) {
        if (px_lockcall_check_key(v->text[0], v->len[0], err) < 0)
            return -1;
        req->keylen = v->len[0];
        memcpy(req->key, v->text[0], v->len[0]);
    }
    if (call->nargs >= 2 && px_lockcall_check_mode(v->text[1], v->len[1], &req->mode, err) < 0)
        return -1;
    if (call->nargs >= 3) {
        if (px_lockcall_check_timeout(v->ival[2], err) < 0)
            return -1;
        req->has_timeout = true;
        req->timeout_ms = (uint32_t)v->ival[2];
    }
    return 0;
}

/* ---- replies -------------------------------------------------------------------------- */

int px_lockcall_write_error(struct evbuffer *out, const struct px_lockcall_error *err)
{
    struct px_wire_errfields e = {
        .sev = PX_SEV_ERROR,
        .sqlstate = err->sqlstate,
        .message = err->message,
        .detail = err->detail[0] ? err->detail : NULL,
        .hint = err->hint[0] ? err->hint : NULL,
        .position = err->position,
        .context = err->context[0] ? err->context : NULL,
    };
    return px_wire_error_fields(out, &e);
}

int px_lockcall_write_param_description(struct evbuffer *out, const struct px_lockcall *call)
{
    return px_wire_param_description(out, call->param_types, call->nparams);
}

uint16_t px_lockcall_ncolumns(const struct px_lockcall *call)
{
    return call->fn == PX_LOCKFN_LOCKS && call->from_clause ? 4 : 1;
}

/* The result type of a one-column call: OID and typlen. */
static void result_type(enum px_lockfn fn, uint32_t *oid, int16_t *typlen)
{
    switch (fn) {
    case PX_LOCKFN_UNLOCK: *oid = 16, *typlen = 1; break;     /* boolean */
    case PX_LOCKFN_UNLOCK_ALL: *oid = 23, *typlen = 4; break; /* integer */
    case PX_LOCKFN_LOCKS: *oid = 2249, *typlen = -1; break;   /* record */
    default: *oid = 20, *typlen = 8; break;                   /* bigint */
    }
}

int px_lockcall_write_row_description(struct evbuffer *out, const struct px_lockcall *call,
                                      const int16_t *formats)
{
    struct px_wire_column cols[4] = {
        {.name = "key", .type_oid = 25, .typlen = -1, .typmod = -1},
        {.name = "mode", .type_oid = 25, .typlen = -1, .typmod = -1},
        {.name = "scope", .type_oid = 25, .typlen = -1, .typmod = -1},
        {.name = "token", .type_oid = 20, .typlen = 8, .typmod = -1},
    };
    uint16_t n = px_lockcall_ncolumns(call);
    if (n == 1) {
        cols[0].name = call->column;
        result_type(call->fn, &cols[0].type_oid, &cols[0].typlen);
    }
    for (uint16_t c = 0; c < n; c++)
        cols[c].format = formats ? formats[c] : 0;
    return px_wire_row_description(out, cols, n);
}

/* int64 in PostgreSQL's binary (big-endian) or text form into buf; returns the length. */
static int32_t put_int(char *buf, int64_t x, int bytes, int16_t format)
{
    if (format != 1)
        return (int32_t)snprintf(buf, 24, "%" PRId64, x);
    for (int k = 0; k < bytes; k++)
        buf[k] = (char)((uint64_t)x >> (8 * (bytes - 1 - k)));
    return bytes;
}

int px_lockcall_write_value(struct evbuffer *out, const struct px_lockcall *call, int16_t format,
                            bool is_null, int64_t value)
{
    char buf[24];
    struct px_wire_field f = {.data = buf, .len = -1};
    if (!is_null) {
        if (call->fn == PX_LOCKFN_UNLOCK) {
            buf[0] = format == 1 ? (char)(value != 0) : value ? 't' : 'f';
            f.len = 1;
        } else {
            f.len = put_int(buf, value, call->fn == PX_LOCKFN_UNLOCK_ALL ? 4 : 8, format);
        }
    }
    return px_wire_data_row(out, &f, 1);
}

/* record_out's quoting of one column: none unless empty or holding '"', '\\', '(', ')',
 * ',' or white space; then in double quotes with '"' and '\\' doubled. */
static int record_text_col(struct evbuffer *b, const char *s, size_t n)
{
    bool quote = n == 0;
    for (size_t i = 0; i < n && !quote; i++)
        quote = strchr("\"\\(),", s[i]) != NULL || s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r');
    if (!quote)
        return evbuffer_add(b, s, n);
    int rc = evbuffer_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\')
            rc |= evbuffer_add(b, &s[i], 1);
        rc |= evbuffer_add(b, &s[i], 1);
    }
    return rc | evbuffer_add(b, "\"", 1);
}

/* The one record column of SELECT pgwarden_locks(), in format fmt, into b. */
static int record_value(struct evbuffer *b, int16_t fmt, const char *const *s, const size_t *n,
                        const char *token, int32_t toklen)
{
    int rc = 0;
    if (fmt == 1) { /* record_send: count, then (type OID, length, bytes) per column */
        char head[4];
        put_int(head, 4, 4, 1);
        rc |= evbuffer_add(b, head, 4);
        for (int c = 0; c < 4; c++) {
            char col[8];
            put_int(col, c < 3 ? 25 : 20, 4, 1);
            put_int(col + 4, c < 3 ? (int64_t)n[c] : toklen, 4, 1);
            rc |= evbuffer_add(b, col, 8);
            rc |= evbuffer_add(b, c < 3 ? s[c] : token, c < 3 ? n[c] : (size_t)toklen);
        }
        return rc;
    }
    rc |= evbuffer_add(b, "(", 1);
    for (int c = 0; c < 3; c++)
        rc |= record_text_col(b, s[c], n[c]) | evbuffer_add(b, ",", 1);
    return rc | evbuffer_add(b, token, (size_t)toklen) | evbuffer_add(b, ")", 1);
}

int px_lockcall_write_locks_row(struct evbuffer *out, const struct px_lockcall *call,
                                const int16_t *formats, const char *key, size_t keylen,
                                enum lockmgr_mode mode, enum lockmgr_scope scope, uint64_t token)
{
    const char *s[3] = {key, lockmgr_mode_name(mode), lockmgr_scope_name(scope)};
    size_t n[3] = {keylen, strlen(s[1]), strlen(s[2])};
    char tok[24];
    int16_t f0 = formats ? formats[0] : 0;
    if (call->from_clause) {
        int16_t ft = formats ? formats[3] : 0;
        struct px_wire_field f[4] = {
            {s[0], (int32_t)n[0]},
            {s[1], (int32_t)n[1]},
            {s[2], (int32_t)n[2]},
            {tok, put_int(tok, (int64_t)token, 8, ft)},
        };
        return px_wire_data_row(out, f, 4);
    }
    /* a token in a binary record is binary; in a text record, text */
    int32_t toklen = put_int(tok, (int64_t)token, 8, f0 == 1 ? 1 : 0);
    struct evbuffer *b = evbuffer_new();
    if (!b)
        return -1;
    int rc = record_value(b, f0, s, n, tok, toklen);
    size_t len = evbuffer_get_length(b);
    struct px_wire_field f = {evbuffer_pullup(b, -1), (int32_t)len};
    if (rc == 0 && (len == 0 || f.data))
        rc = px_wire_data_row(out, &f, 1);
    else
        rc = -1;
    evbuffer_free(b);
    return rc;
}

int px_lockcall_write_complete(struct evbuffer *out, uint64_t rows)
{
    char tag[32];
    snprintf(tag, sizeof(tag), "SELECT %" PRIu64, rows);
    return px_wire_command_complete(out, tag);
}
