/*
 * fuzz_prepared.c: the message bodies the statement path takes apart: Parse, Bind,
 * Describe/Close (path/prepared.c px_parse_split, px_bind_split, px_target_split), the
 * Bind parameters (proto/wire.c px_wire_bind_parse, px_wire_bind_param,
 * px_wire_format_code) and the fields of an ErrorResponse (px_wire_error_field), all on
 * the same body; then the writers that rebuild what was split (px_write_parse,
 * px_write_bind, px_write_target), and the statement registry, client map and server set
 * on the statement the body names.
 *
 * Properties: nothing past the body is read (an exact-size heap copy); what a splitter
 * returns lies inside the body and, written back with the same names, gives the body
 * again; the two Bind readers agree (px_bind_split accepts exactly what
 * px_wire_bind_parse accepts with counts below 32768, as PostgreSQL reads them as int16);
 * each parameter value lies inside the body; a statement interned twice is one statement,
 * found by its name in the map and in the set until removed.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "path/prepared.h"
#include "proto/wire.h"

static struct px_stmt_registry *registry;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    registry = px_stmt_registry_new();
    if (!registry)
        abort();
    (void)argc;
    (void)argv;
    return 0;
}

static bool inside(const void *p, const uint8_t *body, uint32_t len)
{
    return (const uint8_t *)p >= body && (const uint8_t *)p <= body + len;
}

/* Rebuilds a message with a writer and checks that its body is body[0..len). */
static void same_body(struct evbuffer *b, char type, const uint8_t *body, uint32_t len)
{
    FUZZ_CHECK(evbuffer_get_length(b) == (size_t)len + 5);
    const uint8_t *m = evbuffer_pullup(b, -1);
    FUZZ_CHECK(m[0] == (uint8_t)type && px_get_u32(m + 1) == len + 4);
    FUZZ_CHECK(memcmp(m + 5, body, len) == 0);
    evbuffer_drain(b, evbuffer_get_length(b));
}

static void statements(const char *name, const uint8_t *content, uint32_t clen, uint32_t cap)
{
    struct px_stmt *a = px_stmt_intern(registry, content, clen);
    struct px_stmt *b = px_stmt_intern(registry, content, clen);
    FUZZ_CHECK(a && a == b);
    uint32_t got;
    FUZZ_CHECK(px_stmt_content(a, &got) && got == clen);
    struct px_stmt_map map = {0};
    struct px_stmt_set set = {0};
    struct px_stmt *evicted = NULL;
    FUZZ_CHECK(px_stmt_map_put(&map, name, a) == 0);
    FUZZ_CHECK(px_stmt_map_get(&map, name) == a);
    FUZZ_CHECK(px_stmt_set_add(&set, a, cap, &evicted) == 0 && evicted == NULL);
    FUZZ_CHECK(px_stmt_set_has(&set, a));
    FUZZ_CHECK(strncmp(px_stmt_server_name(a), "_pgw_", 5) == 0);
    FUZZ_CHECK(px_stmt_map_remove(&map, name) && !px_stmt_map_get(&map, name));
    FUZZ_CHECK(px_stmt_set_remove(&set, a) && !px_stmt_set_has(&set, a));
    px_stmt_map_clear(&map);
    px_stmt_set_clear(&set);
    px_stmt_unref(a);
    px_stmt_unref(b);
}

static void parse_body(const uint8_t *body, uint32_t len, struct evbuffer *b)
{
    const char *name;
    const uint8_t *content;
    uint32_t clen;
    if (px_parse_split(body, len, &name, &content, &clen) < 0)
        return;
    FUZZ_CHECK(inside(name, body, len) && inside(content, body, len));
    FUZZ_CHECK(content == body + strlen(name) + 1 && clen == len - (strlen(name) + 1));
    /* content: query\0 int16 n, n x int32 */
    const uint8_t *nul = memchr(content, 0, clen);
    FUZZ_CHECK(nul && (size_t)(content + clen - nul) >= 3);
    uint16_t n = px_get_u16(nul + 1);
    FUZZ_CHECK(n < 0x8000 && (size_t)(content + clen - nul) == 3 + 4 * (size_t)n);
    FUZZ_CHECK(px_write_parse(b, name, content, clen) == 0);
    same_body(b, 'P', body, len);
    statements(name, content, clen, 1 + len % 4);
}

static void bind_body(const uint8_t *body, uint32_t len, struct evbuffer *b)
{
    /* Both readers on the part after the two names, when there are two names. */
    const uint8_t *n1 = memchr(body, 0, len);
    const uint8_t *n2 = n1 ? memchr(n1 + 1, 0, len - (size_t)(n1 + 1 - body)) : NULL;
    const char *portal, *stmt;
    const uint8_t *rest;
    uint32_t rlen;
    int split = px_bind_split(body, len, &portal, &stmt, &rest, &rlen);
    if (!n2) {
        FUZZ_CHECK(split < 0);
        return;
    }
    const uint8_t *r = n2 + 1;
    size_t rl = len - (size_t)(r - body);
    struct px_wire_bind wb;
    const char *why = px_wire_bind_parse(r, rl, &wb);
    bool wire_ok = !why && wb.nformats < 0x8000 && wb.nparams < 0x8000 && wb.nresults < 0x8000;
    FUZZ_CHECK((split == 0) == wire_ok);
    if (why) {
        FUZZ_CHECK(strcmp(why, "insufficient data left in message") == 0 ||
                   strcmp(why, "invalid message format") == 0);
        return;
    }
    for (uint16_t i = 0; i < wb.nparams; i++) {
        const uint8_t *val;
        int32_t l = px_wire_bind_param(&wb, i, &val);
        FUZZ_CHECK(l >= -1);
        if (l >= 0)
            FUZZ_CHECK(inside(val, body, len) && inside(val + l, body, len));
        else
            FUZZ_CHECK(val == NULL);
        if (wb.nformats <= 1 || i < wb.nformats)
            (void)px_wire_format_code(wb.formats, wb.nformats, i);
    }
    if (split < 0)
        return;
    FUZZ_CHECK(portal == (const char *)body && stmt == (const char *)n1 + 1);
    FUZZ_CHECK(rest == r && rlen == rl);
    FUZZ_CHECK(px_write_bind(b, portal, stmt, rest, rlen) == 0);
    same_body(b, 'B', body, len);
}

static void target_body(const uint8_t *body, uint32_t len, struct evbuffer *b)
{
    char kind;
    const char *name;
    if (px_target_split(body, len, &kind, &name) < 0)
        return;
    FUZZ_CHECK((kind == 'S' || kind == 'P') && name == (const char *)body + 1);
    FUZZ_CHECK(strlen(name) + 2 == len);
    FUZZ_CHECK(px_write_target(b, 'D', kind, name) == 0);
    same_body(b, 'D', body, len);
}

static void error_body(const uint8_t *body, uint32_t len)
{
    static const char codes[] = "SVCMDHPWp";
    for (const char *c = codes; *c; c++) {
        const char *f = px_wire_error_field((const char *)body, len, *c);
        if (f)
            FUZZ_CHECK(inside(f, body, len) &&
                       memchr(f, 0, (size_t)(body + len - (const uint8_t *)f)));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1u << 20)
        return 0;
    uint8_t *body = fuzz_dup(data, size);
    uint32_t len = (uint32_t)size;
    struct evbuffer *b = evbuffer_new();
    parse_body(body, len, b);
    bind_body(body, len, b);
    target_body(body, len, b);
    error_body(body, len);
    evbuffer_free(b);
    free(body);
    return 0;
}
