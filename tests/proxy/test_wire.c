/* test_wire.c: tests of proxy/proto/wire.c: startup-packet parsing, message builders and the
 * Bind splitter. */
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <event2/buffer.h>

#include "cunit_main.h"
#include "proto/wire.h"

void test_wire_register(void);

/* Builds a startup packet body (after the length word) from NUL-separated pairs. */
static size_t startup_body(char *buf, uint32_t code, const char *pairs, size_t pairs_len)
{
    px_put_u32(buf, code);
    memcpy(buf + 4, pairs, pairs_len);
    return 4 + pairs_len;
}

static void test_parse_startup_params(void)
{
    char buf[256];
    static const char pairs[] = "user\0alice\0database\0db1\0options\0-c TimeZone=UTC\0";
    size_t len = startup_body(buf, PX_PROTO_V3, pairs, sizeof(pairs)); /* incl. final NUL */
    struct px_startup st;
    CU_ASSERT_PTR_NULL(px_wire_parse_startup(buf, len, &st));
    CU_ASSERT_EQUAL(st.code, PX_PROTO_V3);
    CU_ASSERT_EQUAL(st.nparams, 3);
    CU_ASSERT_STRING_EQUAL(px_startup_get(&st, "user"), "alice");
    CU_ASSERT_STRING_EQUAL(px_startup_get(&st, "database"), "db1");
    CU_ASSERT_STRING_EQUAL(px_startup_get(&st, "options"), "-c TimeZone=UTC");
    CU_ASSERT_PTR_NULL(px_startup_get(&st, "application_name"));
}

static void test_parse_startup_malformed(void)
{
    char buf[256];
    struct px_startup st;
    /* No final terminator. */
    static const char a[] = "user\0alice";
    size_t len = startup_body(buf, PX_PROTO_V3, a, sizeof(a)); /* ends "alice\0" only */
    CU_ASSERT_PTR_NOT_NULL(px_wire_parse_startup(buf, len, &st));
    /* Name without value. */
    static const char b[] = "user";
    len = startup_body(buf, PX_PROTO_V3, b, sizeof(b));
    CU_ASSERT_PTR_NOT_NULL(px_wire_parse_startup(buf, len, &st));
    /* Value without terminator. */
    len = startup_body(buf, PX_PROTO_V3, "user\0bob", 8);
    CU_ASSERT_PTR_NOT_NULL(px_wire_parse_startup(buf, len, &st));
    /* Too short for a code. */
    CU_ASSERT_PTR_NOT_NULL(px_wire_parse_startup(buf, 3, &st));
    /* Cancel request of the wrong size. */
    len = startup_body(buf, PX_CANCEL_REQUEST_CODE, "12345678", 6);
    CU_ASSERT_PTR_NOT_NULL(px_wire_parse_startup(buf, len, &st));
    /* SSLRequest with a trailing byte. */
    len = startup_body(buf, PX_SSL_REQUEST_CODE, "x", 1);
    CU_ASSERT_PTR_NOT_NULL(px_wire_parse_startup(buf, len, &st));
}

/* As PostgreSQL: any number of parameters within the packet limit (here 1200 in 8499
 * bytes), walked in packet order. */
static void test_parse_startup_many_params(void)
{
    char *buf = malloc(PX_MAX_STARTUP_PACKET);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    px_put_u32(buf, PX_PROTO_V3);
    size_t off = 4;
    for (int i = 0; i < 1200; i++) {
        off += (size_t)sprintf(buf + off, "k%d", i) + 1;
        off += (size_t)sprintf(buf + off, "v") + 1;
    }
    buf[off++] = '\0';
    CU_ASSERT_EQUAL(off + 4, 8499);
    struct px_startup st;
    CU_ASSERT_PTR_NULL(px_wire_parse_startup(buf, off, &st));
    CU_ASSERT_EQUAL(st.nparams, 1200);
    CU_ASSERT_STRING_EQUAL(px_startup_get(&st, "k1199"), "v");
    const char *pos = NULL;
    struct px_startup_param prm;
    int n = 0;
    while (px_startup_next(&st, &pos, &prm)) {
        char want[16];
        snprintf(want, sizeof want, "k%d", n++);
        CU_ASSERT_STRING_EQUAL(prm.name, want);
    }
    CU_ASSERT_EQUAL(n, 1200);
    free(buf);
}

static void test_parse_special_requests(void)
{
    char buf[16];
    struct px_startup st;
    size_t len = startup_body(buf, PX_SSL_REQUEST_CODE, "", 0);
    CU_ASSERT_PTR_NULL(px_wire_parse_startup(buf, len, &st));
    CU_ASSERT_EQUAL(st.code, PX_SSL_REQUEST_CODE);
    px_put_u32(buf, PX_CANCEL_REQUEST_CODE);
    px_put_u32(buf + 4, 1234);
    px_put_u32(buf + 8, 0xdeadbeef);
    CU_ASSERT_PTR_NULL(px_wire_parse_startup(buf, 12, &st));
    CU_ASSERT_EQUAL(st.cancel_pid, 1234);
    CU_ASSERT_EQUAL(st.cancel_key, 0xdeadbeefu);
}

static void test_error_bytes(void)
{
    struct evbuffer *b = evbuffer_new();
    CU_ASSERT_EQUAL(px_wire_error(b, PX_SEV_FATAL, "28P01", "bad", "why"), 0);
    static const char expected[] = "E\0\0\0\x24"
                                   "SFATAL\0VFATAL\0C28P01\0Mbad\0Dwhy\0";
    size_t n = evbuffer_get_length(b);
    CU_ASSERT_EQUAL(n, sizeof(expected)); /* sizeof counts the final terminator */
    const char *p = (const char *)evbuffer_pullup(b, -1);
    CU_ASSERT_EQUAL(memcmp(p, expected, sizeof(expected)), 0);
    CU_ASSERT_EQUAL(px_get_u32(p + 1), n - 1);
    CU_ASSERT_STRING_EQUAL(px_wire_error_field(p + 5, n - 5, 'C'), "28P01");
    CU_ASSERT_STRING_EQUAL(px_wire_error_field(p + 5, n - 5, 'D'), "why");
    CU_ASSERT_PTR_NULL(px_wire_error_field(p + 5, n - 5, 'H'));
    /* A truncated body never reads past its end. */
    CU_ASSERT_PTR_NULL(px_wire_error_field(p + 5, 8, 'C'));
    evbuffer_free(b);
}

static void test_small_builders(void)
{
    struct evbuffer *b = evbuffer_new();
    px_wire_ready(b, 'T');
    px_wire_backend_key(b, 7, 9);
    px_wire_param_status(b, "TimeZone", "UTC");
    px_wire_auth(b, PX_AUTH_OK, NULL, 0);
    static const uint8_t expected[] = {
        'Z', 0,   0,   0, 5,   'T',                                  /* ReadyForQuery */
        'K', 0,   0,   0, 12,  0,   0,   0,   7,   0,   0,   0,   9, /* BackendKeyData */
        'S', 0,   0,   0, 17,  'T', 'i', 'm', 'e', 'Z', 'o', 'n', 'e', 0,
        'U', 'T', 'C', 0, 'R', 0,   0,   0,   8,   0,   0,   0,   0, /* AuthenticationOk */
    };
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(b), sizeof(expected));
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(b, -1), expected, sizeof(expected)), 0);
    evbuffer_free(b);
    /* A ParameterStatus too long for the builder's stack buffer (a long application_name,
     * search_path) comes out the same way. */
    b = evbuffer_new();
    char value[400];
    memset(value, 'v', sizeof(value) - 1);
    value[sizeof(value) - 1] = 0;
    px_wire_param_status(b, "search_path", value);
    const uint8_t *p = evbuffer_pullup(b, -1);
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(b), 5 + 12 + sizeof(value));
    CU_ASSERT_EQUAL(p[0], 'S');
    CU_ASSERT_EQUAL(px_get_u32(p + 1), 4 + 12 + sizeof(value));
    CU_ASSERT_STRING_EQUAL((const char *)p + 5, "search_path");
    CU_ASSERT_STRING_EQUAL((const char *)p + 5 + 12, value);
    evbuffer_free(b);
}

static void test_negotiate(void)
{
    struct evbuffer *b = evbuffer_new();
    const char *opts[] = {"_pq_.foo"};
    px_wire_negotiate(b, 0, opts, 1);
    const uint8_t *p = evbuffer_pullup(b, -1);
    CU_ASSERT_EQUAL(p[0], 'v');
    CU_ASSERT_EQUAL(px_get_u32(p + 1), 4 + 8 + 9);
    CU_ASSERT_EQUAL(px_get_u32(p + 5), PX_PROTO_V3);
    CU_ASSERT_EQUAL(px_get_u32(p + 9), 1);
    CU_ASSERT_STRING_EQUAL((const char *)p + 13, "_pq_.foo");
    evbuffer_free(b);
}

static void test_startup_round_trip(void)
{
    struct evbuffer *b = evbuffer_new();
    struct px_startup_param in[] = {{"user", "u"}, {"database", "d"}, {"TimeZone", "UTC"}};
    px_wire_startup(b, in, 3);
    size_t n = evbuffer_get_length(b);
    const char *p = (const char *)evbuffer_pullup(b, -1);
    CU_ASSERT_EQUAL(px_get_u32(p), n);
    struct px_startup st;
    CU_ASSERT_PTR_NULL(px_wire_parse_startup(p + 4, n - 4, &st));
    CU_ASSERT_EQUAL(st.nparams, 3);
    CU_ASSERT_STRING_EQUAL(px_startup_get(&st, "TimeZone"), "UTC");
    evbuffer_free(b);
}

/* ErrorResponse with every field, in PostgreSQL's order S V C M D H P W. */
static void test_error_fields(void)
{
    struct evbuffer *b = evbuffer_new();
    struct px_wire_errfields e = {.sev = PX_SEV_ERROR,
                                  .sqlstate = "42883",
                                  .message = "m",
                                  .detail = "d",
                                  .hint = "h",
                                  .position = 12,
                                  .context = "w"};
    CU_ASSERT_EQUAL(px_wire_error_fields(b, &e), 0);
    static const char expected[] = "E\0\0\0\x2a"
                                   "SERROR\0VERROR\0C42883\0Mm\0Dd\0Hh\0P12\0Ww\0";
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(b), sizeof(expected));
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(b, -1), expected, sizeof(expected)), 0);
    evbuffer_drain(b, sizeof(expected));
    struct px_wire_errfields n = {.sev = PX_SEV_NOTICE, .sqlstate = "00000", .message = "x"};
    CU_ASSERT_EQUAL(px_wire_error_fields(b, &n), 0); /* absent fields are left out */
    static const char notice[] = "N\0\0\0\x1f"
                                 "SNOTICE\0VNOTICE\0C00000\0Mx\0";
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(b), sizeof(notice));
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(b, -1), notice, sizeof(notice)), 0);
    evbuffer_free(b);
}

/* RowDescription, DataRow, ParameterDescription, CommandComplete: bytes PostgreSQL 15
 * sends for SELECT 1::int8 AS pgwarden_lock (captured with a raw protocol client). */
static void test_result_builders(void)
{
    struct evbuffer *b = evbuffer_new();
    struct px_wire_column col = {
        .name = "pgwarden_lock", .type_oid = 20, .typlen = 8, .typmod = -1, .format = 1};
    static const uint8_t rd[] = {'T',  0,   0,   0,    0x26, 0,    1,    'p', 'g', 'w',
                                 'a',  'r', 'd', 'e',  'n',  '_',  'l',  'o', 'c', 'k',
                                 0,    0,   0,   0,    0,    0,    0,    0,   0,   0,
                                 0x14, 0,   8,   0xff, 0xff, 0xff, 0xff, 0,   1};
    CU_ASSERT_EQUAL(px_wire_row_description(b, &col, 1), 0);
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(b), sizeof(rd));
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(b, -1), rd, sizeof(rd)), 0);
    evbuffer_drain(b, sizeof(rd));
    struct px_wire_field f[3] = {{"1", 1}, {NULL, -1}, {"", 0}};
    static const uint8_t dr[] = {'D', 0,   0,    0,    0x13, 0,    3, 0, 0, 0,
                                 1,   '1', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0};
    CU_ASSERT_EQUAL(px_wire_data_row(b, f, 3), 0);
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(b), sizeof(dr));
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(b, -1), dr, sizeof(dr)), 0);
    evbuffer_drain(b, sizeof(dr));
    static const uint32_t oids[] = {25, 25, 23};
    static const uint8_t pd[] = {'t',  0, 0, 0, 0x12, 0, 3, 0, 0,   0,
                                 0x19, 0, 0, 0, 0x19, 0, 0, 0, 0x17};
    CU_ASSERT_EQUAL(px_wire_param_description(b, oids, 3), 0);
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(b), sizeof(pd));
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(b, -1), pd, sizeof(pd)), 0);
    evbuffer_drain(b, sizeof(pd));
    CU_ASSERT_EQUAL(px_wire_command_complete(b, "SELECT 1"), 0);
    static const char cc[] = "C\0\0\0\x0dSELECT 1";
    CU_ASSERT_EQUAL_FATAL(evbuffer_get_length(b), sizeof(cc));
    CU_ASSERT_EQUAL(memcmp(evbuffer_pullup(b, -1), cc, sizeof(cc)), 0);
    evbuffer_free(b);
}

/* Bind bodies after the names: well formed, and every way of being malformed. */
static void test_bind_parse(void)
{
    /* formats [0, 1]; params "ab", NULL, ""; results [1] */
    static const uint8_t ok[] = {0,   2,    0,    0,    0,    1, 0, 3, 0, 0, 0, 2, 'a',
                                 'b', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1, 0, 1};
    struct px_wire_bind b;
    const uint8_t *v;
    CU_ASSERT_PTR_NULL_FATAL(px_wire_bind_parse(ok, sizeof(ok), &b));
    CU_ASSERT_EQUAL(b.nformats, 2);
    CU_ASSERT_EQUAL(b.nparams, 3);
    CU_ASSERT_EQUAL(b.nresults, 1);
    CU_ASSERT_EQUAL(px_wire_format_code(b.formats, b.nformats, 0), 0);
    CU_ASSERT_EQUAL(px_wire_format_code(b.formats, b.nformats, 1), 1);
    CU_ASSERT_EQUAL(px_wire_format_code(b.results, b.nresults, 5), 1); /* one for all */
    CU_ASSERT_EQUAL(px_wire_format_code(NULL, 0, 3), 0);               /* none: text */
    CU_ASSERT_EQUAL(px_wire_bind_param(&b, 0, &v), 2);
    CU_ASSERT_EQUAL(memcmp(v, "ab", 2), 0);
    CU_ASSERT_EQUAL(px_wire_bind_param(&b, 1, &v), -1);
    CU_ASSERT_PTR_NULL(v);
    CU_ASSERT_EQUAL(px_wire_bind_param(&b, 2, &v), 0);
    /* every truncation is short; a byte more is "invalid message format" */
    for (size_t n = 0; n < sizeof(ok); n++) {
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, ok, n);
        CU_ASSERT_STRING_EQUAL(px_wire_bind_parse(cut, n, &b), "insufficient data left in message");
        free(cut);
    }
    uint8_t more[sizeof(ok) + 1];
    memcpy(more, ok, sizeof(ok));
    more[sizeof(ok)] = 0;
    CU_ASSERT_STRING_EQUAL(px_wire_bind_parse(more, sizeof(more), &b), "invalid message format");
    /* a negative length other than -1, and a length past the end */
    static const uint8_t neg[] = {0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe, 0, 0};
    CU_ASSERT_STRING_EQUAL(px_wire_bind_parse(neg, sizeof(neg), &b),
                           "insufficient data left in message");
    static const uint8_t past[] = {0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff, 0, 0};
    CU_ASSERT_STRING_EQUAL(px_wire_bind_parse(past, sizeof(past), &b),
                           "insufficient data left in message");
    static const uint8_t empty[] = {0, 0, 0, 0, 0, 0};
    CU_ASSERT_PTR_NULL(px_wire_bind_parse(empty, sizeof(empty), &b));
    CU_ASSERT_EQUAL(b.nparams, 0);
}

static const CU_TestInfo wire_tests[] = {
    {"parse_startup_params", test_parse_startup_params},
    {"parse_startup_malformed", test_parse_startup_malformed},
    {"parse_startup_many_params", test_parse_startup_many_params},
    {"parse_special_requests", test_parse_special_requests},
    {"error_bytes", test_error_bytes},
    {"small_builders", test_small_builders},
    {"negotiate", test_negotiate},
    {"startup_round_trip", test_startup_round_trip},
    {"error_fields", test_error_fields},
    {"result_builders", test_result_builders},
    {"bind_parse", test_bind_parse},
    CU_TEST_INFO_NULL,
};

void test_wire_register(void)
{
    cunit_add_suite("wire", NULL, NULL, wire_tests);
}
