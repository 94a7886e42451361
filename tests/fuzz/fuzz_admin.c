/*
 * fuzz_admin.c: what the admin port renders from strings clients choose (database, user,
 * application_name): JSON strings (base/json_util.c px_json_stringn, px_utf8_sanitize,
 * px_utf8_truncate, as introspect.c and the error replies use them) and Prometheus label
 * values (metrics/metrics.c: pool label sets, sharing, the overflow set, rendering).
 *
 * The HTTP routing and request handling of admin.c are not fuzzed here: they run only on
 * an evhttp_request, which libevent makes only from a connection (see docs/fuzzing.md).
 *
 * Properties: every client string becomes a JSON string that jansson dumps and reads
 * back unchanged, in valid UTF-8 (bad bytes replaced); the exposition is well formed
 * line by line (comments, or name{label="escaped value",...} value) with label values that
 * decode to valid UTF-8 of at most PX_METRICS_MAX_LABEL_BYTES bytes, among them the pool's
 * database and user; equal label values share one set; past the cap on live pool sets
 * (1 here) a different pool gets the overflow set; once every set is released no pool
 * series is rendered.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fuzz_common.h"
#include "base/json_util.h"
#include "metrics/metrics.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char *err = NULL;
    if (px_metrics_init(1, &err) < 0)
        abort();
    (void)argc;
    (void)argv;
    return 0;
}

static void check_json(const uint8_t *p, size_t n)
{
    json_t *j = px_json_stringn((const char *)p, n);
    FUZZ_CHECK(j && json_is_string(j));
    size_t want_len;
    char *want = px_utf8_sanitize((const char *)p, n, &want_len);
    FUZZ_CHECK(want && px_utf8_valid(want, want_len));
    if (px_utf8_valid((const char *)p, n))
        FUZZ_CHECK(want_len == n && memcmp(want, p, n) == 0);
    FUZZ_CHECK(json_string_length(j) == want_len &&
               memcmp(json_string_value(j), want, want_len) == 0);
    json_t *obj = json_pack("{s:O}", "error", j);
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    FUZZ_CHECK(text && fuzz_utf8_ok(text, strlen(text)));
    json_error_t e;
    json_t *back = json_loads(text, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    FUZZ_CHECK(back && json_equal(back, obj));
    for (size_t max = 0; max <= want_len && max < 8; max++) {
        size_t t = px_utf8_truncate(want, want_len, max);
        FUZZ_CHECK(t <= max && px_utf8_valid(want, t));
    }
    json_decref(back);
    free(text);
    json_decref(obj);
    json_decref(j);
    free(want);
}

/* The label value as px_metrics keeps it: sanitized, cut to PX_METRICS_MAX_LABEL_BYTES. */
static char *label_of(const char *s, size_t *len)
{
    char *v = px_utf8_sanitize(s, strlen(s), len);
    FUZZ_CHECK(v != NULL);
    *len = px_utf8_truncate(v, *len, PX_METRICS_MAX_LABEL_BYTES);
    v[*len] = '\0';
    return v;
}

static int sink(void *arg, const char *data, size_t len)
{
    return evbuffer_add(arg, data, len);
}

FUZZ_NO_COVERAGE static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == ':';
}

/* One sample line (no newline).  Sets *seen_db / *seen_user when a database / user label
 * decodes to db / user. */
FUZZ_NO_COVERAGE static void check_sample(const char *p, const char *end, const char *db,
                                          const char *user, bool *seen_db, bool *seen_user)
{
    const char *s = p;
    while (p < end && name_char(*p))
        p++;
    FUZZ_CHECK(p > s && p < end);
    static char value[4 * PX_METRICS_MAX_LABEL_BYTES + 8];
    if (*p == '{') {
        p++;
        for (;;) {
            const char *ln = p;
            while (p < end && name_char(*p))
                p++;
            FUZZ_CHECK(p > ln && end - p >= 2 && p[0] == '=' && p[1] == '"');
            size_t lnl = (size_t)(p - ln), n = 0;
            p += 2;
            while (p < end && *p != '"') {
                char c = *p++;
                if (c == '\\') {
                    FUZZ_CHECK(p < end && (*p == '\\' || *p == '"' || *p == 'n'));
                    c = *p == 'n' ? '\n' : *p;
                    p++;
                }
                FUZZ_CHECK(n < sizeof value - 1);
                value[n++] = c;
            }
            FUZZ_CHECK(p < end);
            p++;
            value[n] = '\0';
            FUZZ_CHECK(n <= PX_METRICS_MAX_LABEL_BYTES && fuzz_utf8_ok(value, n));
            if (lnl == 8 && memcmp(ln, "database", 8) == 0 && strcmp(value, db) == 0)
                *seen_db = true;
            if (lnl == 4 && memcmp(ln, "user", 4) == 0 && strcmp(value, user) == 0)
                *seen_user = true;
            FUZZ_CHECK(p < end);
            if (*p == '}')
                break;
            FUZZ_CHECK(*p == ',');
            p++;
        }
        p++;
    }
    FUZZ_CHECK(p < end && *p == ' ');
    p++;
    FUZZ_CHECK(p < end && !memchr(p, ' ', (size_t)(end - p)));
}

/* Renders and checks every line; returns whether any line has a database label. */
FUZZ_NO_COVERAGE static bool check_render(const char *db, const char *user, bool want)
{
    struct evbuffer *b = evbuffer_new();
    FUZZ_CHECK(px_metrics_render(sink, b) == 0);
    size_t len = evbuffer_get_length(b);
    evbuffer_add(b, "", 1);
    const char *text = (const char *)evbuffer_pullup(b, -1);
    FUZZ_CHECK(fuzz_utf8_ok(text, len));
    bool seen_db = false, seen_user = false, any_db = strstr(text, "database=\"") != NULL;
    for (const char *p = text; p < text + len;) {
        const char *nl = memchr(p, '\n', (size_t)(text + len - p));
        FUZZ_CHECK(nl != NULL);
        if (strncmp(p, "# HELP ", 7) != 0 && strncmp(p, "# TYPE ", 7) != 0)
            check_sample(p, nl, db, user, &seen_db, &seen_user);
        p = nl + 1;
    }
    if (want)
        FUZZ_CHECK(seen_db && seen_user);
    evbuffer_free(b);
    return any_db;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size};
    uint8_t flags = fuzz_u8(&in);
    uint32_t n = fuzz_u32(&in);
    double v;
    uint64_t bits = (uint64_t)fuzz_u32(&in) << 32 | fuzz_u32(&in);
    memcpy(&v, &bits, sizeof v);
    size_t dl, ul, al;
    const uint8_t *dp = fuzz_part(&in, 1024, &dl);
    const uint8_t *up = fuzz_part(&in, 1024, &ul);
    const uint8_t *ap = fuzz_rest(&in, &al);

    check_json(dp, dl);
    check_json(ap, al);

    char *db = fuzz_strdup(dp, dl), *user = fuzz_strdup(up, ul);
    size_t lbl, lul;
    char *ldb = label_of(db, &lbl), *luser = label_of(user, &lul);
    struct px_metrics_set *a = px_metrics_pool_new(db, user);
    struct px_metrics_set *b = px_metrics_pool_new(db, user);
    struct px_metrics_set *c = px_metrics_pool_new(user, db);
    FUZZ_CHECK(a && a == b && c && !px_metrics_set_is_overflow(a));
    bool same = strcmp(ldb, luser) == 0;
    FUZZ_CHECK(same ? c == a : px_metrics_set_is_overflow(c));
    px_metrics_add(a, PX_M_QUERIES, 0, n);
    px_metrics_inc(c, PX_M_TRANSACTIONS, 0);
    px_metrics_gauge_set(a, PX_M_CLIENTS, flags % PX_MCS__COUNT, v);
    px_metrics_observe(a, PX_M_POOL_WAIT_SECONDS, 0, v);
    px_metrics_inc(NULL, PX_M_CLIENT_ERRORS, px_metrics_sqlstate_class(db));
    check_render(ldb, luser, true);
    px_metrics_set_release(c);
    px_metrics_set_release(b);
    px_metrics_set_release(a);
    if (flags & 8) /* every other input: rendering is most of the cost */
        FUZZ_CHECK(!check_render(ldb, luser, false));
    free(ldb);
    free(luser);
    free(db);
    free(user);
    return 0;
}
