/*
 * wire.c: protocol v3 parsing and builders (see wire.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/wire.h"

static const char *cstr_in(const char *p, const char *end)
{
    const char *nul = memchr(p, '\0', (size_t)(end - p));
    return nul;
}

const char *px_wire_parse_startup(const char *body, size_t len, struct px_startup *out)
{
    memset(out, 0, sizeof(*out));
    if (len < 4)
        return "invalid length of startup packet";
    out->code = px_get_u32(body);
    if (out->code == PX_CANCEL_REQUEST_CODE) {
        if (len != 12)
            return "invalid length of cancel request";
        out->cancel_pid = px_get_u32(body + 4);
        out->cancel_key = px_get_u32(body + 8);
        return NULL;
    }
    if (out->code == PX_SSL_REQUEST_CODE || out->code == PX_GSSENC_REQUEST_CODE)
        return len == 4 ? NULL : "invalid length of encryption request";
    if ((out->code >> 16) != 3)
        return NULL; /* caller rejects the version with its own message */
    const char *p = body + 4, *end = body + len;
    out->params = p;
    while (p < end && *p) {
        const char *name_end = cstr_in(p, end);
        if (!name_end || name_end + 1 >= end)
            return "invalid startup packet layout: expected terminator as last byte";
        const char *value = name_end + 1;
        const char *value_end = cstr_in(value, end);
        if (!value_end)
            return "invalid startup packet layout: expected terminator as last byte";
        out->nparams++;
        p = value_end + 1;
    }
    if (p != end - 1)
        return "invalid startup packet layout: expected terminator as last byte";
    return NULL;
}

const char *px_wire_length_error(uint32_t len)
{
    return len < 4 ? "invalid message length"
                   : "invalid message length: message larger than max_message_bytes";
}

bool px_startup_next(const struct px_startup *s, const char **pos, struct px_startup_param *param)
{
    const char *p = *pos ? *pos : s->params;
    if (!s->nparams || !*p)
        return false;
    param->name = p;
    param->value = p + strlen(p) + 1;
    *pos = param->value + strlen(param->value) + 1;
    return true;
}

const char *px_startup_get(const struct px_startup *s, const char *name)
{
    const char *pos = NULL;
    struct px_startup_param prm;
    while (px_startup_next(s, &pos, &prm))
        if (strcmp(prm.name, name) == 0)
            return prm.value;
    return NULL;
}

static int add_header(struct evbuffer *out, char type, size_t body_len)
{
    uint8_t hdr[5];
    hdr[0] = (uint8_t)type;
    px_put_u32(hdr + 1, (uint32_t)(body_len + 4));
    return evbuffer_add(out, hdr, 5);
}

int px_wire_query_prefixed(struct evbuffer *out, const void *prefix, size_t prefix_len,
                           const uint8_t *body, uint32_t len)
{
    size_t blen = prefix_len + 1 + len;
    if (evbuffer_expand(out, 5 + blen) < 0 || add_header(out, 'Q', blen) < 0 ||
        evbuffer_add(out, prefix, prefix_len) < 0 || evbuffer_add(out, ";", 1) < 0 ||
        evbuffer_add(out, body, len) < 0)
        return -1;
    return 0;
}

int px_wire_msg(struct evbuffer *out, char type, const void *body, size_t len)
{
    if (add_header(out, type, len) < 0)
        return -1;
    return len ? evbuffer_add(out, body, len) : 0;
}

int px_wire_error(struct evbuffer *out, enum px_severity sev, const char *sqlstate,
                  const char *message, const char *detail)
{
    static const char *const names[] = {"ERROR", "FATAL", "NOTICE", "WARNING"};
    const char *s = names[sev];
    size_t len = 0;
    len += 1 + strlen(s) + 1;        /* S */
    len += 1 + strlen(s) + 1;        /* V */
    len += 1 + strlen(sqlstate) + 1; /* C */
    len += 1 + strlen(message) + 1;  /* M */
    if (detail)
        len += 1 + strlen(detail) + 1;
    len += 1; /* terminator */
    if (add_header(out, sev == PX_SEV_NOTICE || sev == PX_SEV_WARNING ? 'N' : 'E', len) < 0)
        return -1;
    int rc = 0;
    rc |= evbuffer_add(out, "S", 1) | evbuffer_add(out, s, strlen(s) + 1);
    rc |= evbuffer_add(out, "V", 1) | evbuffer_add(out, s, strlen(s) + 1);
    rc |= evbuffer_add(out, "C", 1) | evbuffer_add(out, sqlstate, strlen(sqlstate) + 1);
    rc |= evbuffer_add(out, "M", 1) | evbuffer_add(out, message, strlen(message) + 1);
    if (detail)
        rc |= evbuffer_add(out, "D", 1) | evbuffer_add(out, detail, strlen(detail) + 1);
    rc |= evbuffer_add(out, "", 1);
    return rc ? -1 : 0;
}

int px_wire_ready(struct evbuffer *out, char status)
{
    uint8_t msg[6] = {'Z', 0, 0, 0, 5, (uint8_t)status};
    return evbuffer_add(out, msg, sizeof(msg));
}

int px_wire_auth(struct evbuffer *out, uint32_t code, const void *data, size_t len)
{
    uint8_t c[4];
    px_put_u32(c, code);
    if (add_header(out, 'R', 4 + len) < 0 || evbuffer_add(out, c, 4) < 0)
        return -1;
    return len ? evbuffer_add(out, data, len) : 0;
}

int px_wire_param_status(struct evbuffer *out, const char *name, const char *value)
{
    size_t nl = strlen(name) + 1, vl = strlen(value) + 1;
    uint8_t msg[256]; /* a welcome has a dozen of these: one evbuffer_add each, not three */
    if (5 + nl + vl <= sizeof(msg)) {
        msg[0] = 'S';
        px_put_u32(msg + 1, (uint32_t)(4 + nl + vl));
        memcpy(msg + 5, name, nl);
        memcpy(msg + 5 + nl, value, vl);
        return evbuffer_add(out, msg, 5 + nl + vl);
    }
    if (add_header(out, 'S', nl + vl) < 0)
        return -1;
    return evbuffer_add(out, name, nl) | evbuffer_add(out, value, vl);
}

int px_wire_backend_key(struct evbuffer *out, uint32_t pid, uint32_t key)
{
    uint8_t msg[13] = {'K', 0, 0, 0, 12};
    px_put_u32(msg + 5, pid);
    px_put_u32(msg + 9, key);
    return evbuffer_add(out, msg, sizeof(msg));
}

int px_wire_negotiate(struct evbuffer *out, uint32_t minor, const char *const *unsupported,
                      size_t n)
{
    size_t len = 8;
    for (size_t i = 0; i < n; i++)
        len += strlen(unsupported[i]) + 1;
    uint8_t head[8];
    px_put_u32(head, PX_PROTO_V3 | minor);
    px_put_u32(head + 4, (uint32_t)n);
    if (add_header(out, 'v', len) < 0 || evbuffer_add(out, head, 8) < 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (evbuffer_add(out, unsupported[i], strlen(unsupported[i]) + 1) < 0)
            return -1;
    return 0;
}

int px_wire_query(struct evbuffer *out, const char *sql)
{
    return px_wire_msg(out, 'Q', sql, strlen(sql) + 1);
}

int px_wire_startup(struct evbuffer *out, const struct px_startup_param *params, size_t n)
{
    size_t len = 4 + 4 + 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(params[i].name) + 1 + strlen(params[i].value) + 1;
    uint8_t head[8];
    px_put_u32(head, (uint32_t)len);
    px_put_u32(head + 4, PX_PROTO_V3);
    if (evbuffer_add(out, head, 8) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (evbuffer_add(out, params[i].name, strlen(params[i].name) + 1) < 0 ||
            evbuffer_add(out, params[i].value, strlen(params[i].value) + 1) < 0)
            return -1;
    }
    return evbuffer_add(out, "", 1);
}

int px_wire_cancel(struct evbuffer *out, uint32_t pid, uint32_t key)
{
    uint8_t msg[16];
    px_put_u32(msg, 16);
    px_put_u32(msg + 4, PX_CANCEL_REQUEST_CODE);
    px_put_u32(msg + 8, pid);
    px_put_u32(msg + 12, key);
    return evbuffer_add(out, msg, sizeof(msg));
}

int px_wire_ssl_request(struct evbuffer *out)
{
    uint8_t msg[8];
    px_put_u32(msg, 8);
    px_put_u32(msg + 4, PX_SSL_REQUEST_CODE);
    return evbuffer_add(out, msg, sizeof(msg));
}

const char *px_wire_error_field(const char *body, size_t len, char code)
{
    const char *p = body, *end = body + len;
    while (p < end && *p) {
        char field = *p++;
        const char *nul = memchr(p, '\0', (size_t)(end - p));
        if (!nul)
            return NULL;
        if (field == code)
            return p;
        p = nul + 1;
    }
    return NULL;
}

int px_wire_error_shift_position(struct evbuffer *out, char type, const uint8_t *body, uint32_t len,
                                 uint32_t shift)
{
    uint8_t *copy = malloc((size_t)len + 1); /* the new body is no longer than the old */
    if (!copy)
        return -1;
    const char *p = (const char *)body, *end = p + len;
    size_t n = 0;
    while (p < end && *p) {
        char field = *p;
        const char *value = p + 1, *nul = memchr(value, '\0', (size_t)(end - value));
        if (!nul) {
            free(copy);
            return -1;
        }
        size_t vlen = (size_t)(nul - value);
        if (field != 'P') {
            memcpy(copy + n, p, vlen + 2);
            n += vlen + 2;
        } else {
            char *stop;
            unsigned long pos = strtoul(value, &stop, 10);
            if (stop == nul && pos > shift) {
                int w = snprintf((char *)copy + n + 1, vlen + 1, "%lu", pos - shift);
                copy[n] = 'P';
                n += (size_t)w + 2; /* fewer digits than before: it fits */
            }
        }
        p = nul + 1;
    }
    copy[n++] = '\0';
    uint8_t hdr[5] = {(uint8_t)type};
    px_put_u32(hdr + 1, (uint32_t)(n + 4));
    int rc = evbuffer_expand(out, 5 + n) < 0 || evbuffer_add(out, hdr, 5) < 0 ||
                     evbuffer_add(out, copy, n) < 0
                 ? -1
                 : 0;
    free(copy);
    return rc;
}

/* Appends field code and the NUL-terminated s; the length it adds to *len. */
static int add_field(struct evbuffer *out, char code, const char *s)
{
    return evbuffer_add(out, &code, 1) | evbuffer_add(out, s, strlen(s) + 1);
}

int px_wire_error_fields(struct evbuffer *out, const struct px_wire_errfields *e)
{
    static const char *const names[] = {"ERROR", "FATAL", "NOTICE", "WARNING"};
    const char *s = names[e->sev];
    char pos[16] = "";
    if (e->position)
        snprintf(pos, sizeof(pos), "%u", (unsigned)e->position);
    const char *opt[4] = {e->detail, e->hint, e->position ? pos : NULL, e->context};
    static const char codes[4] = {'D', 'H', 'P', 'W'};
    size_t len = 2 * (2 + strlen(s)) + 2 + strlen(e->sqlstate) + 2 + strlen(e->message) + 1;
    for (int i = 0; i < 4; i++)
        if (opt[i])
            len += 2 + strlen(opt[i]);
    if (add_header(out, e->sev == PX_SEV_NOTICE || e->sev == PX_SEV_WARNING ? 'N' : 'E', len) < 0)
        return -1;
    int rc = add_field(out, 'S', s) | add_field(out, 'V', s) | add_field(out, 'C', e->sqlstate) |
             add_field(out, 'M', e->message);
    for (int i = 0; i < 4; i++)
        if (opt[i])
            rc |= add_field(out, codes[i], opt[i]);
    rc |= evbuffer_add(out, "", 1);
    return rc ? -1 : 0;
}

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

int px_wire_row_description(struct evbuffer *out, const struct px_wire_column *cols, size_t n)
{
    size_t len = 2;
    for (size_t i = 0; i < n; i++)
        len += strlen(cols[i].name) + 1 + 18;
    uint8_t cnt[2];
    put_u16(cnt, (uint16_t)n);
    if (add_header(out, 'T', len) < 0 || evbuffer_add(out, cnt, 2) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        uint8_t f[18];
        px_put_u32(f, cols[i].table_oid);
        put_u16(f + 4, (uint16_t)cols[i].attnum);
        px_put_u32(f + 6, cols[i].type_oid);
        put_u16(f + 10, (uint16_t)cols[i].typlen);
        px_put_u32(f + 12, (uint32_t)cols[i].typmod);
        put_u16(f + 16, (uint16_t)cols[i].format);
        if (evbuffer_add(out, cols[i].name, strlen(cols[i].name) + 1) < 0 ||
            evbuffer_add(out, f, sizeof(f)) < 0)
            return -1;
    }
    return 0;
}

int px_wire_data_row(struct evbuffer *out, const struct px_wire_field *fields, size_t n)
{
    size_t len = 2;
    for (size_t i = 0; i < n; i++)
        len += 4 + (fields[i].len > 0 ? (size_t)fields[i].len : 0);
    uint8_t cnt[2];
    put_u16(cnt, (uint16_t)n);
    if (add_header(out, 'D', len) < 0 || evbuffer_add(out, cnt, 2) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        uint8_t l[4];
        px_put_u32(l, (uint32_t)fields[i].len);
        if (evbuffer_add(out, l, 4) < 0)
            return -1;
        if (fields[i].len > 0 && evbuffer_add(out, fields[i].data, (size_t)fields[i].len) < 0)
            return -1;
    }
    return 0;
}

int px_wire_param_description(struct evbuffer *out, const uint32_t *oids, size_t n)
{
    uint8_t cnt[2];
    put_u16(cnt, (uint16_t)n);
    if (add_header(out, 't', 2 + 4 * n) < 0 || evbuffer_add(out, cnt, 2) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        uint8_t o[4];
        px_put_u32(o, oids[i]);
        if (evbuffer_add(out, o, 4) < 0)
            return -1;
    }
    return 0;
}

int px_wire_command_complete(struct evbuffer *out, const char *tag)
{
    return px_wire_msg(out, 'C', tag, strlen(tag) + 1);
}

#define BIND_SHORT "insufficient data left in message"

const char *px_wire_bind_parse(const uint8_t *rest, size_t len, struct px_wire_bind *out)
{
    const uint8_t *p = rest, *end = rest + len;
    memset(out, 0, sizeof(*out));
    if (end - p < 2)
        return BIND_SHORT;
    out->nformats = px_get_u16(p);
    out->formats = p + 2;
    p += 2;
    if ((size_t)(end - p) < 2 * (size_t)out->nformats + 2)
        return BIND_SHORT;
    p += 2 * (size_t)out->nformats;
    out->nparams = px_get_u16(p);
    p += 2;
    out->params = p;
    for (uint16_t i = 0; i < out->nparams; i++) {
        if (end - p < 4)
            return BIND_SHORT;
        int32_t l = (int32_t)px_get_u32(p);
        p += 4;
        if (l == -1)
            continue;
        if (l < 0 || end - p < l)
            return BIND_SHORT;
        p += l;
    }
    if (end - p < 2)
        return BIND_SHORT;
    out->nresults = px_get_u16(p);
    out->results = p + 2;
    p += 2;
    if ((size_t)(end - p) < 2 * (size_t)out->nresults)
        return BIND_SHORT;
    p += 2 * (size_t)out->nresults;
    return p == end ? NULL : "invalid message format";
}

int16_t px_wire_format_code(const uint8_t *codes, uint16_t ncodes, uint16_t i)
{
    if (ncodes == 0)
        return 0;
    return (int16_t)px_get_u16(codes + 2 * (ncodes == 1 ? 0 : i));
}

int32_t px_wire_bind_param(const struct px_wire_bind *b, uint16_t i, const uint8_t **val)
{
    const uint8_t *p = b->params;
    for (uint16_t k = 0;; k++) {
        int32_t l = (int32_t)px_get_u32(p);
        p += 4;
        if (k == i) {
            *val = l >= 0 ? p : NULL;
            return l;
        }
        if (l > 0)
            p += l;
    }
}
