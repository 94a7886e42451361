/*
 * test_metrics.c: tests of proxy/metrics.c (the metrics registry) and the UTF-8 helpers of
 * proxy/json_util.h.
 *
 * Suites:
 *   metrics_render    exact Prometheus text for a small test table: counters, gauges,
 *                     histograms, escaping, bucket edges, sparse families
 *   metrics_sets      label sets: sharing, release, cardinality cap and overflow set
 *   metrics_builtin   the built-in table under a strict exposition-format parser
 *   utf8              px_utf8_valid / px_utf8_sanitize / px_utf8_truncate
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "base/json_util.h"
#include "metrics/metrics.h"

void test_metrics_register(void);

/* ---- a small table for exact rendering ---- */

enum { T_REQUESTS, T_CONNS, T_WAIT, T_ERRORS, T_OVERFLOW, T__COUNT };
enum { TK_GLOBAL, TK_POOL, TK__COUNT };

static const char *const t_pool_labels[] = {"database", "user"};
static const char *const t_state_label[] = {"state"};
static const char *const t_states[] = {"idle", "busy"};
static const char *const t_class_label[] = {"class"};
static const char *const t_classes[] = {"08", "40", "other"};
static const char *const t_kind_label[] = {"kind"};
static const char *const t_kinds[] = {"global", "pool"};
static const double t_buckets[] = {0.1, 0.5, 1};

static const struct px_metrics_kind_def t_kind_defs[TK__COUNT] = {
    {"global", NULL, 0, 1},
    {"pool", t_pool_labels, 2, 3},
};

static const struct px_metric_def t_defs[T__COUNT] = {
    [T_REQUESTS] = {"requests", PX_METRIC_COUNTER, "Requests served.\nSecond \\ line.", TK_GLOBAL},
    [T_CONNS] = {"conns", PX_METRIC_GAUGE, "Connections.", TK_POOL, t_state_label, 1, t_states, 2},
    [T_WAIT] = {"wait_seconds", PX_METRIC_HISTOGRAM, "Wait.", TK_POOL, .buckets = t_buckets,
                .nbuckets = 3},
    [T_ERRORS] = {"errors", PX_METRIC_COUNTER, "Errors.", TK_GLOBAL, t_class_label, 1, t_classes, 3,
                  .flags = PX_MF_SPARSE},
    [T_OVERFLOW] = {"overflow", PX_METRIC_COUNTER, "Overflows.", TK_GLOBAL, t_kind_label, 1,
                    t_kinds, 2},
};

static const struct px_metrics_tables t_tables = {t_defs, T__COUNT, t_kind_defs, TK__COUNT,
                                                  T_OVERFLOW};

static int setup_test_tables(void)
{
    char *err = NULL;
    int rc = px_metrics_init_tables(&t_tables, &err);
    if (rc != 0) {
        fprintf(stderr, "init: %s\n", err ? err : "?");
        free(err);
    }
    return rc;
}

static int teardown(void)
{
    px_metrics_shutdown();
    return 0;
}

static char *render(void)
{
    struct px_metrics_buf b = {0};
    CU_ASSERT_EQUAL(px_metrics_render_buf(&b), 0);
    return b.data ? b.data : strdup("");
}

static void assert_render(const char *want)
{
    char *got = render();
    CU_ASSERT_STRING_EQUAL(got, want);
    if (strcmp(got, want) != 0)
        fprintf(stderr, "\n--- want:\n%s--- got:\n%s---\n", want, got);
    free(got);
}

#define HDR_REQUESTS                                                                               \
    "# HELP pgwarden_requests_total Requests served.\\nSecond \\\\ line.\n"                        \
    "# TYPE pgwarden_requests_total counter\n"
#define HDR_CONNS  "# HELP pgwarden_conns Connections.\n# TYPE pgwarden_conns gauge\n"
#define HDR_WAIT   "# HELP pgwarden_wait_seconds Wait.\n# TYPE pgwarden_wait_seconds histogram\n"
#define HDR_ERRORS "# HELP pgwarden_errors_total Errors.\n# TYPE pgwarden_errors_total counter\n"
#define HDR_OVERFLOW                                                                               \
    "# HELP pgwarden_overflow_total Overflows.\n# TYPE pgwarden_overflow_total counter\n"
#define OVERFLOW_ZERO                                                                              \
    "pgwarden_overflow_total{kind=\"global\"} 0\npgwarden_overflow_total{kind=\"pool\"} 0\n"

static void test_render_empty(void)
{
    CU_ASSERT_EQUAL_FATAL(setup_test_tables(), 0);
    assert_render(
        HDR_REQUESTS
        "pgwarden_requests_total 0\n" HDR_CONNS HDR_WAIT HDR_ERRORS HDR_OVERFLOW OVERFLOW_ZERO);
    teardown();
}

static void test_render_all_types(void)
{
    CU_ASSERT_EQUAL_FATAL(setup_test_tables(), 0);
    const char *v[] = {"db1", "alice"};
    struct px_metrics_set *p = px_metrics_set_get(TK_POOL, v);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    px_metrics_inc(NULL, T_REQUESTS, 0);
    px_metrics_add(NULL, T_REQUESTS, 0, 41);
    px_metrics_gauge_set(p, T_CONNS, 0, 3);
    px_metrics_gauge_add(p, T_CONNS, 1, 2.5);
    px_metrics_gauge_add(p, T_CONNS, 1, -1);
    px_metrics_observe(p, T_WAIT, 0, 0.05);
    px_metrics_observe(p, T_WAIT, 0, 0.7);
    px_metrics_observe(p, T_WAIT, 0, 5);
    px_metrics_inc(NULL, T_ERRORS, 1);
    assert_render(HDR_REQUESTS
                  "pgwarden_requests_total 42\n" HDR_CONNS
                  "pgwarden_conns{database=\"db1\",user=\"alice\",state=\"idle\"} 3\n"
                  "pgwarden_conns{database=\"db1\",user=\"alice\",state=\"busy\"} "
                  "1.5\n" HDR_WAIT "pgwarden_wait_seconds_bucket{database=\"db1\",user=\"alice\","
                  "le=\"0.1\"} 1\n"
                  "pgwarden_wait_seconds_bucket{database=\"db1\",user=\"alice\","
                  "le=\"0.5\"} 1\n"
                  "pgwarden_wait_seconds_bucket{database=\"db1\",user=\"alice\","
                  "le=\"1\"} 2\n"
                  "pgwarden_wait_seconds_bucket{database=\"db1\",user=\"alice\","
                  "le=\"+Inf\"} 3\n"
                  "pgwarden_wait_seconds_sum{database=\"db1\",user=\"alice\"} 5.75\n"
                  "pgwarden_wait_seconds_count{database=\"db1\",user=\"alice\"} 3\n" HDR_ERRORS
                  "pgwarden_errors_total{class=\"40\"} 1\n" HDR_OVERFLOW OVERFLOW_ZERO);
    CU_ASSERT_EQUAL(px_metrics_counter_get(NULL, T_REQUESTS, 0), 42);
    CU_ASSERT_EQUAL(px_metrics_histogram_count(p, T_WAIT, 0), 3);
    CU_ASSERT_DOUBLE_EQUAL(px_metrics_histogram_sum(p, T_WAIT, 0), 5.75, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(px_metrics_gauge_get(p, T_CONNS, 1), 1.5, 1e-12);
    px_metrics_set_release(p);
    teardown();
}

/* A value equal to a bucket's upper bound counts in that bucket (le is inclusive). */
static void test_bucket_edges(void)
{
    CU_ASSERT_EQUAL_FATAL(setup_test_tables(), 0);
    const char *v[] = {"d", "u"};
    struct px_metrics_set *p = px_metrics_set_get(TK_POOL, v);
    double xs[] = {-1, 0, 0.1, 0.10000000000000002, 0.5, 1, 1.0000001, INFINITY, NAN};
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++)
        px_metrics_observe(p, T_WAIT, 0, xs[i]);
    char *out = render();
    /* -1, 0, 0.1 in le=0.1; 0.1+ulp and 0.5 in le=0.5; 1 in le=1; the rest in +Inf; NaN
     * ignored. */
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "{database=\"d\",user=\"u\",le=\"0.1\"} 3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "{database=\"d\",user=\"u\",le=\"0.5\"} 5\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "{database=\"d\",user=\"u\",le=\"1\"} 6\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "{database=\"d\",user=\"u\",le=\"+Inf\"} 8\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "_count{database=\"d\",user=\"u\"} 8\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "_sum{database=\"d\",user=\"u\"} +Inf\n"));
    free(out);
    px_metrics_set_release(p);
    teardown();
}

static void test_escaping(void)
{
    CU_ASSERT_EQUAL_FATAL(setup_test_tables(), 0);
    const char *v[] = {"a\"b\\c\nd", "caf\xc3\xa9 \xff\xfe"};
    struct px_metrics_set *p = px_metrics_set_get(TK_POOL, v);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    px_metrics_gauge_set(p, T_CONNS, 0, 1);
    char *out = render();
    CU_ASSERT_PTR_NOT_NULL(strstr(out,
                                  "pgwarden_conns{database=\"a\\\"b\\\\c\\nd\",user=\"caf\xc3\xa9 "
                                  "\xef\xbf\xbd\xef\xbf\xbd\",state=\"idle\"} 1\n"));
    CU_ASSERT_TRUE(px_utf8_valid(out, strlen(out)));
    free(out);
    px_metrics_set_release(p);
    teardown();
}

static void test_number_format(void)
{
    CU_ASSERT_EQUAL_FATAL(setup_test_tables(), 0);
    const char *v[] = {"d", "u"};
    struct px_metrics_set *p = px_metrics_set_get(TK_POOL, v);
    struct {
        double x;
        const char *s;
    } cases[] = {
        {0.1, "0.1"},       {1e20, "1e+20"},     {-2, "-2"},   {1.0 / 3, "0.333333333333333315"},
        {INFINITY, "+Inf"}, {-INFINITY, "-Inf"}, {NAN, "NaN"}, {123456789, "123456789"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        px_metrics_gauge_set(p, T_CONNS, 0, cases[i].x);
        char *out = render();
        char want[128];
        snprintf(want, sizeof want, "state=\"idle\"} %s\n", cases[i].s);
        if (i == 3) /* shortest round trip of 1/3 has 16 or 17 digits */
            snprintf(want, sizeof want, "state=\"idle\"} 0.3333333333333333");
        CU_ASSERT_PTR_NOT_NULL(strstr(out, want));
        if (!strstr(out, want))
            fprintf(stderr, "missing %s in\n%s", want, out);
        free(out);
    }
    px_metrics_set_release(p);
    teardown();
}

static int failing_sink(void *arg, const char *data, size_t len)
{
    int *calls = arg;
    (*calls)++;
    return -1;
}

static int collected;
static void collector(void *arg)
{
    collected++;
    px_metrics_gauge_set((struct px_metrics_set *)arg, T_CONNS, 1, 7);
}

static void test_collector_and_sink_failure(void)
{
    CU_ASSERT_EQUAL_FATAL(setup_test_tables(), 0);
    const char *v[] = {"d", "u"};
    struct px_metrics_set *p = px_metrics_set_get(TK_POOL, v);
    collected = 0;
    CU_ASSERT_EQUAL(px_metrics_add_collector(collector, p), 0);
    char *out = render();
    CU_ASSERT_EQUAL(collected, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "state=\"busy\"} 7\n"));
    free(out);
    px_metrics_remove_collector(collector, p);
    free(render());
    CU_ASSERT_EQUAL(collected, 1);
    int calls = 0;
    CU_ASSERT_EQUAL(px_metrics_render(failing_sink, &calls), -1);
    CU_ASSERT_EQUAL(calls, 1);
    px_metrics_set_release(p);
    teardown();
}

/* ---- label sets ---- */

static void test_sets_shared_and_released(void)
{
    CU_ASSERT_EQUAL_FATAL(setup_test_tables(), 0);
    const char *v[] = {"db", "u"};
    struct px_metrics_set *a = px_metrics_set_get(TK_POOL, v);
    struct px_metrics_set *b = px_metrics_set_get(TK_POOL, v);
    CU_ASSERT_PTR_EQUAL(a, b);
    px_metrics_gauge_set(a, T_CONNS, 0, 5);
    px_metrics_set_release(a);
    char *out = render();
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "database=\"db\""));
    free(out);
    px_metrics_set_release(b);
    out = render();
    CU_ASSERT_PTR_NULL(strstr(out, "database=\"db\""));
    free(out);
    /* NULL is a no-op everywhere; wrong kinds and out-of-range labels do not crash. */
    px_metrics_gauge_set(NULL, T_CONNS, 0, 1);
    px_metrics_observe(NULL, T_WAIT, 0, 1);
    px_metrics_set_release(NULL);
    uint64_t *slot = px_metrics_counter_slot(NULL, T_REQUESTS, 0);
    ++*slot;
    *slot += 2;
    CU_ASSERT_EQUAL(px_metrics_counter_get(NULL, T_REQUESTS, 0), 3);
    teardown();
}

static void test_cardinality_cap(void)
{
    CU_ASSERT_EQUAL_FATAL(setup_test_tables(), 0); /* pool kind capped at 3 */
    struct px_metrics_set *s[6];
    char names[6][16];
    for (int i = 0; i < 6; i++) {
        snprintf(names[i], sizeof names[i], "db%d", i);
        const char *v[] = {names[i], "u"};
        s[i] = px_metrics_set_get(TK_POOL, v);
        CU_ASSERT_PTR_NOT_NULL_FATAL(s[i]);
        px_metrics_gauge_add(s[i], T_CONNS, 0, 1);
    }
    CU_ASSERT_FALSE(px_metrics_set_is_overflow(s[2]));
    CU_ASSERT_TRUE(px_metrics_set_is_overflow(s[3]));
    CU_ASSERT_PTR_EQUAL(s[3], s[4]);
    CU_ASSERT_PTR_EQUAL(s[3], s[5]);
    CU_ASSERT_DOUBLE_EQUAL(px_metrics_gauge_get(s[5], T_CONNS, 0), 3, 1e-12);
    CU_ASSERT_EQUAL(px_metrics_counter_get(NULL, T_OVERFLOW, TK_POOL), 3);
    char *out = render();
    CU_ASSERT_PTR_NOT_NULL(
        strstr(out, "pgwarden_conns{database=\"other\",user=\"other\",state=\"idle\"} 3\n"));
    CU_ASSERT_PTR_NULL(strstr(out, "db3"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "pgwarden_overflow_total{kind=\"pool\"} 3\n"));
    free(out);
    /* A slot freed below the cap is usable again. */
    px_metrics_set_release(s[0]);
    const char *v[] = {"db9", "u"};
    struct px_metrics_set *n = px_metrics_set_get(TK_POOL, v);
    CU_ASSERT_FALSE(px_metrics_set_is_overflow(n));
    px_metrics_set_release(n);
    for (int i = 1; i < 6; i++)
        px_metrics_set_release(s[i]);
    out = render();
    CU_ASSERT_PTR_NULL(strstr(out, "database="));
    free(out);
    teardown();
}

static void test_long_label_truncated(void)
{
    CU_ASSERT_EQUAL_FATAL(setup_test_tables(), 0);
    char big[PX_METRICS_MAX_LABEL_BYTES + 10];
    memset(big, 'x', sizeof big);
    memcpy(big + PX_METRICS_MAX_LABEL_BYTES - 1, "\xc3\xa9", 2); /* straddles the limit */
    big[sizeof big - 1] = '\0';
    const char *v[] = {big, "u"};
    struct px_metrics_set *p = px_metrics_set_get(TK_POOL, v);
    px_metrics_gauge_set(p, T_CONNS, 0, 1);
    char *out = render();
    char want[PX_METRICS_MAX_LABEL_BYTES + 32];
    snprintf(want, sizeof want, "database=\"%.*s\",", PX_METRICS_MAX_LABEL_BYTES - 1, big);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, want));
    CU_ASSERT_TRUE(px_utf8_valid(out, strlen(out)));
    free(out);
    px_metrics_set_release(p);
    teardown();
}

static void test_bad_tables(void)
{
    static const double bad_buckets[] = {1, 1};
    static const char *const le_label[] = {"le"};
    static const char *const one[] = {"x"};
    struct px_metric_def d[2] = {
        {.name = "ok", .type = PX_METRIC_COUNTER, .help = "h"},
        {.name = "bad",
         .type = PX_METRIC_HISTOGRAM,
         .help = "h",
         .buckets = bad_buckets,
         .nbuckets = 2},
    };
    struct px_metrics_tables t = {d, 2, t_kind_defs, TK__COUNT, -1};
    char *err = NULL;
    CU_ASSERT_EQUAL(px_metrics_init_tables(&t, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(err);
    free(err);
    d[1] = (struct px_metric_def){.name = "bad",
                                  .type = PX_METRIC_HISTOGRAM,
                                  .help = "h",
                                  .enum_labels = le_label,
                                  .n_enum_labels = 1,
                                  .enum_values = one,
                                  .n_enum_values = 1,
                                  .buckets = t_buckets,
                                  .nbuckets = 3};
    CU_ASSERT_EQUAL(px_metrics_init_tables(&t, &err), -1);
    free(err);
    d[1] = (struct px_metric_def){.name = "bad-name", .type = PX_METRIC_COUNTER, .help = "h"};
    CU_ASSERT_EQUAL(px_metrics_init_tables(&t, &err), -1);
    free(err);
    d[1] = (struct px_metric_def){.name = "ok", .type = PX_METRIC_COUNTER, .help = "h"};
    CU_ASSERT_EQUAL(px_metrics_init_tables(&t, &err), -1); /* duplicate */
    free(err);
    d[1] = (struct px_metric_def){.name = "ok2", .type = PX_METRIC_COUNTER, .help = "h", .kind = 5};
    CU_ASSERT_EQUAL(px_metrics_init_tables(&t, &err), -1); /* no such kind */
    free(err);
    d[1] = (struct px_metric_def){.name = "ok2", .type = PX_METRIC_GAUGE, .help = "h", .kind = 1};
    CU_ASSERT_EQUAL(px_metrics_init_tables(&t, &err), 0);
    CU_ASSERT_PTR_NULL(err);
    px_metrics_shutdown();
}

/* ---- a strict parser of the text exposition format 0.0.4 ---- */

struct parsed {
    char **keys; /* "name{labels}" of every sample, to find duplicates */
    size_t nkeys;
    char family[160];
    char type[16];
    char done[64][160]; /* families already closed */
    size_t ndone;
    /* histogram series under way */
    char hseries[512];
    double last_le;
    double last_bucket;
    bool saw_inf;
    double inf_count;
    size_t samples;
    char err[256];
};

static bool is_name_char(char c, bool first, bool metric)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (metric && c == ':') ||
           (!first && c >= '0' && c <= '9');
}

static size_t scan_name(const char *s, bool metric)
{
    size_t n = 0;
    while (s[n] && is_name_char(s[n], n == 0, metric))
        n++;
    return n;
}

static bool parse_float(const char *s, double *out)
{
    if (strcmp(s, "+Inf") == 0 || strcmp(s, "Inf") == 0) {
        *out = INFINITY;
        return true;
    }
    if (strcmp(s, "-Inf") == 0) {
        *out = -INFINITY;
        return true;
    }
    if (strcmp(s, "NaN") == 0) {
        *out = NAN;
        return true;
    }
    char *end;
    if (!*s || strchr("+-.0123456789", *s) == NULL)
        return false;
    *out = strtod(s, &end);
    return *end == '\0';
}

static int perr(struct parsed *p, const char *line, const char *what)
{
    snprintf(p->err, sizeof p->err, "%s: %.200s", what, line);
    return -1;
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool ends_with(const char *s, size_t n, const char *suffix)
{
    size_t m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

static int close_histogram_series(struct parsed *p, const char *line)
{
    if (p->hseries[0] && !p->saw_inf)
        return perr(p, line, "histogram series without +Inf bucket");
    p->hseries[0] = '\0';
    p->saw_inf = false;
    p->last_le = -INFINITY;
    p->last_bucket = 0;
    return 0;
}

static int parse_comment(struct parsed *p, const char *line)
{
    bool help = starts_with(line, "# HELP ");
    if (!help && !starts_with(line, "# TYPE "))
        return perr(p, line, "unexpected comment");
    const char *s = line + 7;
    size_t n = scan_name(s, true);
    if (n == 0 || n >= sizeof p->family || (s[n] != ' ' && !(help && s[n] == '\0')))
        return perr(p, line, "bad name in comment");
    if (!starts_with(s, "pgwarden_"))
        return perr(p, line, "name without pgwarden_ prefix");
    char name[160];
    memcpy(name, s, n);
    name[n] = '\0';
    if (strcmp(name, p->family) != 0) {
        if (close_histogram_series(p, line) < 0)
            return -1;
        for (size_t i = 0; i < p->ndone; i++)
            if (strcmp(p->done[i], name) == 0)
                return perr(p, line, "family declared twice");
        if (p->family[0] && p->ndone < 64)
            snprintf(p->done[p->ndone++], sizeof p->done[0], "%s", p->family);
        snprintf(p->family, sizeof p->family, "%s", name);
        p->type[0] = '\0';
    }
    const char *rest = s[n] ? s + n + 1 : s + n;
    if (help) {
        for (const char *c = rest; *c; c++)
            if (*c == '\\' && c[1] != '\\' && c[1] != 'n')
                return perr(p, line, "bad escape in HELP");
            else if (*c == '\\')
                c++;
        return 0;
    }
    if (p->type[0])
        return perr(p, line, "TYPE twice");
    if (strcmp(rest, "counter") && strcmp(rest, "gauge") && strcmp(rest, "histogram"))
        return perr(p, line, "unknown TYPE");
    if (strcmp(rest, "counter") == 0 && !ends_with(name, strlen(name), "_total"))
        return perr(p, line, "counter without _total");
    snprintf(p->type, sizeof p->type, "%s", rest);
    return 0;
}

/* Parses {a="x",b="y"} at s; writes the labels without le to canon and le's value to le. */
static int parse_labels(struct parsed *p, const char *line, const char **sp, char *canon,
                        size_t canon_size, char *le, size_t le_size)
{
    const char *s = *sp;
    size_t o = 0;
    char seen[8][64];
    int nseen = 0;
    le[0] = '\0';
    canon[0] = '\0';
    if (*s != '{')
        return 0;
    s++;
    while (*s != '}') {
        size_t n = scan_name(s, false);
        if (n == 0 || n >= 64 || s[n] != '=' || s[n + 1] != '"')
            return perr(p, line, "bad label");
        char lname[64];
        memcpy(lname, s, n);
        lname[n] = '\0';
        if (starts_with(lname, "__"))
            return perr(p, line, "reserved label name");
        for (int i = 0; i < nseen; i++)
            if (strcmp(seen[i], lname) == 0)
                return perr(p, line, "duplicate label");
        if (nseen < 8)
            snprintf(seen[nseen++], 64, "%s", lname);
        s += n + 2;
        char val[1024];
        size_t vn = 0;
        while (*s != '"') {
            if (*s == '\0' || *s == '\n')
                return perr(p, line, "unterminated label value");
            if (*s == '\\') {
                if (s[1] != '\\' && s[1] != '"' && s[1] != 'n')
                    return perr(p, line, "bad escape in label value");
                if (vn < sizeof val - 1)
                    val[vn++] = s[1] == 'n' ? '\n' : s[1];
                s += 2;
                continue;
            }
            if (vn < sizeof val - 1)
                val[vn++] = *s;
            s++;
        }
        val[vn] = '\0';
        s++;
        if (strcmp(lname, "le") == 0)
            snprintf(le, le_size, "%.*s", (int)le_size - 1, val);
        else
            o += (size_t)snprintf(canon + o, o < canon_size ? canon_size - o : 0, "%s=%s,", lname,
                                  val);
        if (*s == ',')
            s++;
        else if (*s != '}')
            return perr(p, line, "expected , or }");
        if (*s == '}' && s[-1] == ',')
            return perr(p, line, "trailing comma");
    }
    *sp = s + 1;
    return 0;
}

static int check_histogram_sample(struct parsed *p, const char *line, const char *suffix,
                                  const char *canon, const char *le, double v)
{
    if (strcmp(suffix, "_bucket") == 0) {
        if (!le[0])
            return perr(p, line, "bucket without le");
        if (strcmp(p->hseries, canon) != 0) {
            if (close_histogram_series(p, line) < 0)
                return -1;
            snprintf(p->hseries, sizeof p->hseries, "%.511s", canon);
        }
        double lev;
        if (!parse_float(le, &lev) || !(lev > p->last_le) || p->saw_inf)
            return perr(p, line, "le not increasing");
        if (v < p->last_bucket)
            return perr(p, line, "buckets not cumulative");
        p->last_le = lev;
        p->last_bucket = v;
        if (isinf(lev)) {
            p->saw_inf = true;
            p->inf_count = v;
        }
        return 0;
    }
    if (le[0])
        return perr(p, line, "le outside a bucket");
    if (strcmp(p->hseries, canon) != 0 || !p->saw_inf)
        return perr(p, line, "_sum/_count before the buckets of its series");
    if (strcmp(suffix, "_count") == 0) {
        if (v != p->inf_count)
            return perr(p, line, "_count differs from the +Inf bucket");
        p->hseries[0] = '\0'; /* series complete */
        p->saw_inf = false;
        p->last_le = -INFINITY;
        p->last_bucket = 0;
    }
    return 0;
}

static int parse_sample(struct parsed *p, const char *line)
{
    size_t n = scan_name(line, true);
    if (n == 0 || n >= 160)
        return perr(p, line, "bad sample name");
    if (!p->type[0])
        return perr(p, line, "sample before TYPE");
    size_t fl = strlen(p->family);
    const char *suffix = line + fl;
    if (strncmp(line, p->family, fl) != 0)
        return perr(p, line, "sample outside its family");
    bool hist = strcmp(p->type, "histogram") == 0;
    size_t sl = n - fl;
    if (hist ? !(sl == 7 && starts_with(suffix, "_bucket")) &&
                   !(sl == 4 && starts_with(suffix, "_sum")) &&
                   !(sl == 6 && starts_with(suffix, "_count"))
             : sl != 0)
        return perr(p, line, "sample name does not match its family");
    char sfx[8] = "";
    memcpy(sfx, suffix, sl);
    sfx[sl] = '\0';
    const char *s = line + n;
    char canon[1024], le[64];
    if (parse_labels(p, line, &s, canon, sizeof canon, le, sizeof le) < 0)
        return -1;
    if (*s != ' ')
        return perr(p, line, "expected a space before the value");
    s++;
    double v;
    char val[64];
    size_t vn = strcspn(s, " ");
    if (vn == 0 || vn >= sizeof val || s[vn] != '\0') /* we never emit timestamps */
        return perr(p, line, "bad value field");
    memcpy(val, s, vn);
    val[vn] = '\0';
    if (!parse_float(val, &v))
        return perr(p, line, "bad value");
    if (strcmp(p->type, "counter") == 0 && !(v >= 0))
        return perr(p, line, "negative counter");
    if (!hist && le[0])
        return perr(p, line, "le outside a histogram");
    if (hist && check_histogram_sample(p, line, sfx, canon, le, v) < 0)
        return -1;
    char key[1300];
    snprintf(key, sizeof key, "%.*s{%s%s%s}", (int)n, line, canon, le[0] ? "le=" : "", le);
    for (size_t i = 0; i < p->nkeys; i++)
        if (strcmp(p->keys[i], key) == 0)
            return perr(p, line, "duplicate series");
    char **k = realloc(p->keys, (p->nkeys + 1) * sizeof *k);
    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    p->keys = k;
    p->keys[p->nkeys++] = strdup(key);
    p->samples++;
    return 0;
}

/* Returns the number of samples, or -1 with p->err set. */
static long parse_exposition(struct parsed *p, const char *text)
{
    memset(p, 0, sizeof *p);
    p->last_le = -INFINITY;
    size_t len = strlen(text);
    if (!px_utf8_valid(text, len))
        return perr(p, "", "invalid UTF-8");
    if (len == 0 || text[len - 1] != '\n')
        return perr(p, "", "missing final newline");
    const char *s = text;
    int rc = 0;
    while (*s && rc == 0) {
        const char *e = strchr(s, '\n');
        size_t n = (size_t)(e - s);
        char *line = strndup(s, n);
        CU_ASSERT_PTR_NOT_NULL_FATAL(line);
        if (n == 0)
            rc = perr(p, line, "empty line");
        else if (line[0] == '#')
            rc = parse_comment(p, line);
        else
            rc = parse_sample(p, line);
        free(line);
        s = e + 1;
    }
    if (rc == 0)
        rc = close_histogram_series(p, "end");
    for (size_t i = 0; i < p->nkeys; i++)
        free(p->keys[i]);
    free(p->keys);
    return rc < 0 ? -1 : (long)p->samples;
}

static void test_parser_rejects(void)
{
    const char *bad[] = {
        "pgwarden_x 1\n",                                         /* no TYPE */
        "# TYPE pgwarden_x gauge\npgwarden_x 1\npgwarden_x 2\n",  /* duplicate */
        "# TYPE pgwarden_x gauge\npgwarden_x{a=\"\\q\"} 1\n",     /* bad escape */
        "# TYPE pgwarden_x_total counter\npgwarden_x_total -1\n", /* negative counter */
        "# TYPE pgwarden_x counter\npgwarden_x 1\n",              /* no _total */
        "# TYPE pgwarden_h histogram\npgwarden_h_bucket{le=\"1\"} 2\n"
        "pgwarden_h_bucket{le=\"+Inf\"} 1\npgwarden_h_sum 1\npgwarden_h_count 1\n",
        "# TYPE pgwarden_h histogram\npgwarden_h_bucket{le=\"1\"} 2\npgwarden_h_sum 1\n",
        "# TYPE pgwarden_x gauge\npgwarden_x 1",             /* no final newline */
        "# TYPE pgwarden_x gauge\npgwarden_x{a=\"1\",} 1\n", /* trailing comma */
        "# TYPE pgwarden_x gauge\n# TYPE pgwarden_y gauge\n# TYPE pgwarden_x gauge\n",
        "# TYPE pgwarden_x gauge\npgwarden_x \xff\n",
    };
    struct parsed p;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CU_ASSERT_EQUAL(parse_exposition(&p, bad[i]), -1);
        if (parse_exposition(&p, bad[i]) != -1)
            fprintf(stderr, "parser accepted case %zu\n", i);
    }
    CU_ASSERT_EQUAL(parse_exposition(&p, "# HELP pgwarden_x X.\n# TYPE pgwarden_x gauge\n"
                                         "pgwarden_x{a=\"\\\"\"} NaN\n"),
                    1);
}

/* ---- the built-in table ---- */

static void test_builtin_render_parses(void)
{
    char *err = NULL;
    CU_ASSERT_EQUAL_FATAL(px_metrics_init(2, &err), 0);
    struct px_metrics_set *p1 = px_metrics_pool_new("app", "alice");
    struct px_metrics_set *p2 = px_metrics_pool_new("we\"ird\\db\n", "b\xc3\xb6\xff");
    struct px_metrics_set *p3 = px_metrics_pool_new("third", "x"); /* overflow */
    CU_ASSERT_TRUE(px_metrics_set_is_overflow(p3));
    px_metrics_gauge_set(p1, PX_M_CLIENTS, PX_MCS_ACTIVE, 3);
    px_metrics_gauge_set(p1, PX_M_SERVERS, PX_MSS_IDLE, 2);
    px_metrics_observe_us(p1, PX_M_POOL_WAIT_SECONDS, 0, 1500);
    px_metrics_observe(p2, PX_M_SERVER_CONNECT_SECONDS, 0, 0.004);
    px_metrics_inc(p1, PX_M_TRANSACTIONS, 0);
    px_metrics_add(p1, PX_M_QUERIES, 0, 10);
    px_metrics_add(p2, PX_M_BYTES_RECEIVED, 0, 1000);
    px_metrics_add(p3, PX_M_BYTES_SENT, 0, 2000);
    px_metrics_inc(NULL, PX_M_CLIENT_CONNECTIONS, 0);
    px_metrics_inc(NULL, PX_M_TLS_HANDSHAKES, PX_METRICS_TLS(PX_MTLS_SERVER, PX_MTLS_ERROR));
    px_metrics_inc(NULL, PX_M_AUTH_FAILURES, PX_MAR_PASSWORD);
    px_metrics_inc(NULL, PX_M_CLIENT_ERRORS, px_metrics_sqlstate_class("40001"));
    px_metrics_inc(NULL, PX_M_CLIENT_ERRORS, px_metrics_sqlstate_class("ZZ000"));
    px_metrics_gauge_set(NULL, PX_M_LOCKS_HELD, PX_MLM_EXCLUSIVE, 2);
    px_metrics_observe_us(NULL, PX_M_LOCK_WAIT_SECONDS, PX_MLO_TIMEOUT, 200000);
    ++*px_metrics_counter_slot(NULL, PX_M_LOCK_DEADLOCKS, 0);
    char *out = render();
    struct parsed p;
    long n = parse_exposition(&p, out);
    CU_ASSERT(n > 0);
    if (n < 0)
        fprintf(stderr, "parse error: %s\n", p.err);
    CU_ASSERT_PTR_NOT_NULL(
        strstr(out, "pgwarden_tls_handshakes_total{side=\"server\",outcome=\"error\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "pgwarden_client_errors_total{sqlstate_class=\"40\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(out, "pgwarden_client_errors_total{sqlstate_class=\"other\"} 1\n"));
    CU_ASSERT_PTR_NULL(strstr(out, "sqlstate_class=\"42\"")); /* sparse */
    CU_ASSERT_PTR_NOT_NULL(
        strstr(out, "pgwarden_queries_total{database=\"app\",user=\"alice\"} 10\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(out, "pgwarden_bytes_sent_total{database=\"other\",user=\"other\"} 2000\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "pgwarden_metrics_overflow_total{kind=\"pool\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(out, "pgwarden_clients{database=\"app\",user=\"alice\",state=\"active\"} 3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "pgwarden_pool_wait_seconds_sum{database=\"app\","
                                       "user=\"alice\"} 0.0015\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "pgwarden_locks_held{mode=\"exclusive\"} 2\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(out, "pgwarden_lock_wait_seconds_bucket{outcome=\"timeout\",le=\"0.25\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(out, "pgwarden_lock_wait_seconds_bucket{outcome=\"timeout\",le=\"0.1\"} 0\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(out, "pgwarden_lock_wait_seconds_count{outcome=\"timeout\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "pgwarden_lock_deadlocks_total 1\n"));
    /* Every built-in family has its HELP and TYPE lines. */
    for (unsigned i = 0; i < PX_M__COUNT; i++) {
        const struct px_metric_def *d = &px_metrics_builtin_tables.defs[i];
        char want[160];
        snprintf(want, sizeof want, "# TYPE pgwarden_%s%s ", d->name,
                 d->type == PX_METRIC_COUNTER ? "_total" : "");
        CU_ASSERT_PTR_NOT_NULL(strstr(out, want));
    }
    free(out);
    px_metrics_pool_free(p1);
    px_metrics_pool_free(p2);
    px_metrics_pool_free(p3);
    px_metrics_shutdown();
}

static void test_sqlstate_class(void)
{
    CU_ASSERT_EQUAL(px_metrics_sqlstate_class("40001"), px_metrics_sqlstate_class("40P01"));
    CU_ASSERT_NOT_EQUAL(px_metrics_sqlstate_class("40001"), px_metrics_sqlstate_class("08006"));
    unsigned other = px_metrics_sqlstate_class(NULL);
    CU_ASSERT_EQUAL(px_metrics_sqlstate_class(""), other);
    CU_ASSERT_EQUAL(px_metrics_sqlstate_class("4"), other);
    CU_ASSERT_EQUAL(px_metrics_sqlstate_class("ZZ000"), other);
    CU_ASSERT_NOT_EQUAL(px_metrics_sqlstate_class("XX000"), other);
    CU_ASSERT_EQUAL(other + 1, px_metrics_builtin_tables.defs[PX_M_CLIENT_ERRORS].n_enum_values);
}

/* Every enumeration in the built-in table matches its index enum. */
static void test_builtin_enums(void)
{
    const struct px_metric_def *d = px_metrics_builtin_tables.defs;
    CU_ASSERT_EQUAL(d[PX_M_CLIENTS].n_enum_values, PX_MCS__COUNT);
    CU_ASSERT_EQUAL(d[PX_M_SERVERS].n_enum_values, PX_MSS__COUNT);
    CU_ASSERT_EQUAL(d[PX_M_AUTH_FAILURES].n_enum_values, PX_MAR__COUNT);
    CU_ASSERT_EQUAL(d[PX_M_TLS_HANDSHAKES].n_enum_values,
                    PX_METRICS_TLS(PX_MTLS_SERVER, PX_MTLS_ERROR) + 1);
    CU_ASSERT_STRING_EQUAL(
        d[PX_M_TLS_HANDSHAKES].enum_values[2 * PX_METRICS_TLS(PX_MTLS_SERVER, PX_MTLS_OK)],
        "server");
    CU_ASSERT_EQUAL(d[PX_M_LOCKS_HELD].n_enum_values, PX_MLM__COUNT);
    CU_ASSERT_STRING_EQUAL(d[PX_M_LOCKS_HELD].enum_values[PX_MLM_EXCLUSIVE], "exclusive");
    CU_ASSERT_EQUAL(d[PX_M_LOCK_WAIT_SECONDS].n_enum_values, PX_MLO__COUNT);
    CU_ASSERT_STRING_EQUAL(d[PX_M_LOCK_WAIT_SECONDS].enum_values[PX_MLO_CANCELED], "canceled");
    CU_ASSERT_EQUAL(px_metrics_builtin_tables.ndefs, PX_M__COUNT);
}

/* ---- UTF-8 helpers ---- */

static void test_utf8(void)
{
    CU_ASSERT_TRUE(px_utf8_valid("", 0));
    CU_ASSERT_TRUE(px_utf8_valid("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10));
    const char *bad[] = {
        "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xf8\x88\x80\x80\x80",
        "\xc3",     "\x80",         "\xe2\x82"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CU_ASSERT_FALSE(px_utf8_valid(bad[i], strlen(bad[i])));
    size_t n;
    char *s = px_utf8_sanitize("a\xffz\xe2\x82", 5, &n);
    CU_ASSERT_STRING_EQUAL(s, "a\xef\xbf\xbdz\xef\xbf\xbd\xef\xbf\xbd");
    CU_ASSERT_EQUAL(n, 11);
    free(s);
    s = px_utf8_sanitize("ok\xc3\xa9", 4, NULL);
    CU_ASSERT_STRING_EQUAL(s, "ok\xc3\xa9");
    free(s);
    CU_ASSERT_EQUAL(px_utf8_truncate("ab\xc3\xa9", 4, 3), 2);
    CU_ASSERT_EQUAL(px_utf8_truncate("ab\xc3\xa9", 4, 4), 4);
    CU_ASSERT_EQUAL(px_utf8_truncate("abc", 3, 2), 2);
}

void test_metrics_register(void)
{
    static const CU_TestInfo render_tests[] = {
        {"empty", test_render_empty},
        {"all_types", test_render_all_types},
        {"bucket_edges", test_bucket_edges},
        {"escaping", test_escaping},
        {"number_format", test_number_format},
        {"collector_and_sink_failure", test_collector_and_sink_failure},
        {"bad_tables", test_bad_tables},
        CU_TEST_INFO_NULL,
    };
    static const CU_TestInfo set_tests[] = {
        {"shared_and_released", test_sets_shared_and_released},
        {"cardinality_cap", test_cardinality_cap},
        {"long_label_truncated", test_long_label_truncated},
        CU_TEST_INFO_NULL,
    };
    static const CU_TestInfo builtin_tests[] = {
        {"parser_rejects", test_parser_rejects},
        {"render_parses", test_builtin_render_parses},
        {"sqlstate_class", test_sqlstate_class},
        {"enums", test_builtin_enums},
        CU_TEST_INFO_NULL,
    };
    static const CU_TestInfo utf8_tests[] = {
        {"utf8", test_utf8},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("metrics_render", NULL, NULL, render_tests);
    cunit_add_suite("metrics_sets", NULL, NULL, set_tests);
    cunit_add_suite("metrics_builtin", NULL, NULL, builtin_tests);
    cunit_add_suite("utf8", NULL, NULL, utf8_tests);
}
