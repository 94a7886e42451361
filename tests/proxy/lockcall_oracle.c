/*
 * lockcall_oracle.c: px_lockcall_* driven by JSON lines, so that lockcall_oracle.py can put
 * the same statements to a real PostgreSQL and to pgwarden's module and compare what each
 * answers (the expected values in test_lockcall.c were recorded and checked this way).
 *
 * Input, one JSON object per line:
 *   {"sql_hex": "...", "ext": true, "oids": [25, 0], "fmts": [0], "vals": ["6b", null],
 *    "rfmts": [1], "stmt": "", "portal": ""}
 * Output, one JSON object per line:
 *   {"lock": false}  or
 *   {"lock": true, "err": {"stage": "parse"|"bind"|"exec", "C":..., "M":..., "D":...,
 *    "H":..., "P": n, "W":...}, "t": hex, "T": hex, "args": [null | {"text": hex of the
 *    first bytes kept, "len": n} | {"int": n}], "null_result": bool}
 * where t and T are the ParameterDescription and RowDescription messages (the portal's
 * after Bind, with its result formats), as hex.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <jansson.h>

#include "path/lockcall.h"

static size_t unhex(const char *h, uint8_t *out)
{
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

static json_t *hex_of(const void *p, size_t n)
{
    char *h = malloc(2 * n + 1);
    for (size_t i = 0; i < n; i++)
        sprintf(h + 2 * i, "%02x", ((const uint8_t *)p)[i]);
    h[2 * n] = '\0';
    json_t *j = json_string(h);
    free(h);
    return j;
}

static json_t *drain(struct evbuffer *b)
{
    size_t n = evbuffer_get_length(b);
    json_t *j = hex_of(evbuffer_pullup(b, -1), n);
    evbuffer_drain(b, n);
    return j;
}

static json_t *err_json(const char *stage, const struct px_lockcall_error *e)
{
    json_t *j = json_object();
    json_object_set_new(j, "stage", json_string(stage));
    json_object_set_new(j, "C", json_string(e->sqlstate));
    json_object_set_new(j, "M", json_string(e->message));
    if (e->detail[0])
        json_object_set_new(j, "D", json_string(e->detail));
    if (e->hint[0])
        json_object_set_new(j, "H", json_string(e->hint));
    if (e->position)
        json_object_set_new(j, "P", json_integer(e->position));
    if (e->context[0])
        json_object_set_new(j, "W", json_string(e->context));
    return j;
}

/* Appends a big-endian int16 / int32. */
static size_t put16(uint8_t *p, int v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
    return 2;
}

static size_t put32(uint8_t *p, int64_t v)
{
    px_put_u32(p, (uint32_t)v);
    return 4;
}

/* The Bind body after the names, from the case's fmts, vals and rfmts. */
static size_t bind_rest(json_t *c, uint8_t *buf)
{
    size_t n = 0, i;
    json_t *x, *fmts = json_object_get(c, "fmts"), *vals = json_object_get(c, "vals"),
               *rfmts = json_object_get(c, "rfmts");
    n += put16(buf + n, (int)json_array_size(fmts));
    json_array_foreach(fmts, i, x) n += put16(buf + n, (int)json_integer_value(x));
    n += put16(buf + n, (int)json_array_size(vals));
    json_array_foreach(vals, i, x)
    {
        if (json_is_null(x)) {
            n += put32(buf + n, -1);
        } else {
            size_t l = unhex(json_string_value(x), buf + n + 4);
            n += put32(buf + n, (int64_t)l) + l;
        }
    }
    n += put16(buf + n, (int)json_array_size(rfmts));
    json_array_foreach(rfmts, i, x) n += put16(buf + n, (int)json_integer_value(x));
    return n;
}

static json_t *run(json_t *c)
{
    static uint8_t sql[1 << 20], types[4 * 100], rest[1 << 20];
    struct px_lockcall call;
    struct px_lockcall_values v;
    struct px_lockcall_error err;
    struct px_lockreq req;
    json_t *out = json_object(), *x;
    struct evbuffer *b = evbuffer_new();
    size_t len = unhex(json_string_value(json_object_get(c, "sql_hex")), sql), i;
    bool ext = json_is_true(json_object_get(c, "ext"));
    json_t *oids = json_object_get(c, "oids");
    json_array_foreach(oids, i, x) px_put_u32(types + 4 * i, (uint32_t)json_integer_value(x));
    bool lock = ext ? px_lockcall_parse_prepared((char *)sql, len, types,
                                                 (uint16_t)json_array_size(oids), &call)
                    : px_lockcall_parse((char *)sql, len, &call);
    json_object_set_new(out, "lock", json_boolean(lock));
    json_object_set_new(out, "maybe", json_boolean(px_lockcall_maybe((char *)sql, len)));
    if (!lock)
        goto done;
    if (call.error.sqlstate[0]) {
        json_object_set_new(out, "err", err_json("parse", &call.error));
        goto done;
    }
    if (ext) {
        px_lockcall_write_param_description(b, &call);
        json_object_set_new(out, "t", drain(b));
    }
    struct px_wire_bind bind;
    size_t rl = bind_rest(c, rest);
    const char *bad = px_wire_bind_parse(rest, rl, &bind);
    if (bad) {
        fprintf(stderr, "bad bind: %s\n", bad);
        exit(1);
    }
    const char *stmt = json_string_value(json_object_get(c, "stmt"));
    const char *portal = json_string_value(json_object_get(c, "portal"));
    if (px_lockcall_bind(&call, ext ? &bind : NULL, stmt, portal, &v, &err) < 0) {
        json_object_set_new(out, "err", err_json("bind", &err));
        goto done;
    }
    px_lockcall_write_row_description(b, &call, v.formats);
    json_object_set_new(out, "T", drain(b));
    json_t *args = json_array();
    for (int k = 0; k < call.nargs; k++) {
        json_t *a = v.isnull[k] ? json_null() : json_object();
        if (!v.isnull[k] && k == 2) {
            json_object_set_new(a, "int", json_integer(v.ival[k]));
        } else if (!v.isnull[k]) {
            size_t keep = v.len[k] < PX_LOCKCALL_TEXT_MAX ? v.len[k] : PX_LOCKCALL_TEXT_MAX;
            json_object_set_new(a, "text", hex_of(v.text[k], keep));
            json_object_set_new(a, "len", json_integer((json_int_t)v.len[k]));
        }
        json_array_append_new(args, a);
    }
    json_object_set_new(out, "args", args);
    if (px_lockcall_request(&call, &v, &req, &err) < 0) {
        json_object_set_new(out, "err", err_json("exec", &err));
        goto done;
    }
    json_object_set_new(out, "null_result", json_boolean(req.null_result));
done:
    evbuffer_free(b);
    return out;
}

int main(void)
{
    static char line[1 << 22];
    while (fgets(line, sizeof(line), stdin)) {
        json_error_t je;
        json_t *c = json_loads(line, 0, &je);
        if (!c) {
            fprintf(stderr, "bad input: %s\n", je.text);
            return 1;
        }
        json_t *r = run(c);
        char *s = json_dumps(r, JSON_COMPACT);
        puts(s);
        fflush(stdout);
        free(s);
        json_decref(r);
        json_decref(c);
    }
    return 0;
}
