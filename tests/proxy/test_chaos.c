/*
 * test_chaos.c: tests of proxy/chaos/chaos.c (library px_chaos) through chaos.h: the
 * validation of every field in both forms (JSON and [chaos] parameters) with its message,
 * matching, every_n, max_count, seeded probabilities (the same injections twice, about p
 * of 10^4 draws), removal, clear, ids never reused, the list's JSON shape, [chaos] config
 * rules (parse errors with FILE:LINE, install keeping unchanged rules) and the metrics.
 *
 * Every test starts from an empty table (px_chaos_shutdown: ids from 1 again) and a fresh
 * metrics registry.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <jansson.h>

#include "cunit_main.h"
#include "base/config.h"
#include "base/log.h"
#include "chaos/chaos.h"
#include "metrics/metrics.h"

static void fresh(void)
{
    char *err = NULL;
    px_chaos_shutdown();
    px_metrics_shutdown();
    CU_ASSERT_EQUAL_FATAL(px_metrics_init(0, &err), 0);
}

static int suite_init(void)
{
    px_log_set_level(PX_LOG_WARNING); /* an injection logs at info */
    char *err = NULL;
    return px_metrics_init(0, &err);
}

static int suite_cleanup(void)
{
    px_chaos_shutdown();
    px_metrics_shutdown();
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */

/* Adds a rule from JSON that must be accepted; returns its id. */
static uint64_t add_ok(const char *json)
{
    char *err = NULL;
    char *out = px_chaos_add_json(json, strlen(json), &err);
    if (!out)
        fprintf(stderr, "\n  refused %s: %s\n", json, err ? err : "(null)");
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    CU_ASSERT_PTR_NULL(err);
    json_t *j = json_loads(out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    uint64_t id = (uint64_t)json_integer_value(json_object_get(j, "id"));
    CU_ASSERT(id > 0);
    json_decref(j);
    free(out);
    return id;
}

/* JSON that must be refused with exactly this message, changing nothing. */
static void json_refused(const char *json, const char *want)
{
    size_t before = px_chaos_nrules;
    char *err = NULL;
    char *out = px_chaos_add_json(json, strlen(json), &err);
    CU_ASSERT_PTR_NULL(out);
    free(out);
    CU_ASSERT_PTR_NOT_NULL_FATAL(err);
    if (strcmp(err, want) != 0)
        fprintf(stderr, "\n  %s\n   got: %s\n  want: %s\n", json, err, want);
    CU_ASSERT_STRING_EQUAL(err, want);
    CU_ASSERT_EQUAL(px_chaos_nrules, before);
    free(err);
}

/* JSON refused with a message starting with prefix. */
static void json_refused_prefix(const char *json, const char *prefix)
{
    size_t before = px_chaos_nrules;
    char *err = NULL;
    char *out = px_chaos_add_json(json, strlen(json), &err);
    CU_ASSERT_PTR_NULL(out);
    free(out);
    CU_ASSERT_PTR_NOT_NULL_FATAL(err);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fprintf(stderr, "\n  %s\n   got: %s\n  want: %s...\n", json, err, prefix);
    CU_ASSERT_NSTRING_EQUAL(err, prefix, strlen(prefix));
    CU_ASSERT_EQUAL(px_chaos_nrules, before);
    free(err);
}

/* [chaos] parameters refused with exactly this message. */
static void params_refused(const char *params, const char *want)
{
    size_t before = px_chaos_nrules;
    char *err = NULL;
    CU_ASSERT_EQUAL(px_chaos_add_config("r", params, &err), -1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(err);
    if (strcmp(err, want) != 0)
        fprintf(stderr, "\n  %s\n   got: %s\n  want: %s\n", params, err, want);
    CU_ASSERT_STRING_EQUAL(err, want);
    CU_ASSERT_EQUAL(px_chaos_nrules, before);
    free(err);
}

static void params_ok(const char *name, const char *params)
{
    char *err = NULL;
    int rc = px_chaos_add_config(name, params, &err);
    if (rc != 0)
        fprintf(stderr, "\n  refused %s: %s\n", params, err ? err : "(null)");
    CU_ASSERT_EQUAL(rc, 0);
    free(err);
}

/* The list as JSON (owned) and its rules array (borrowed from it). */
static json_t *list(json_t **rules)
{
    char *text = px_chaos_list_json();
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    *rules = j;
    CU_ASSERT_FATAL(json_is_array(*rules));
    return j;
}

static json_t *rule_by_id(json_t *rules, uint64_t id)
{
    size_t i;
    json_t *r;
    json_array_foreach(rules, i, r)
    {
        if ((uint64_t)json_integer_value(json_object_get(r, "id")) == id)
            return r;
    }
    return NULL;
}

static uint64_t counter(uint64_t id, const char *which)
{
    json_t *rules, *j = list(&rules);
    json_t *r = rule_by_id(rules, id);
    uint64_t v = r ? (uint64_t)json_integer_value(json_object_get(r, which)) : UINT64_MAX;
    json_decref(j);
    return v;
}

static struct px_chaos_ctx stmt(const char *db, const char *user, const char *app)
{
    struct px_chaos_ctx c = {.when = PX_CHAOS_STATEMENT,
                             .database = db,
                             .user = user,
                             .application_name = app,
                             .client_id = 7};
    return c;
}

static bool fires(const struct px_chaos_ctx *ctx)
{
    struct px_chaos_action a;
    return px_chaos_decide(ctx, &a);
}

static char *render(void)
{
    struct px_metrics_buf b = {0};
    CU_ASSERT_EQUAL_FATAL(px_metrics_render_buf(&b), 0);
    return b.data;
}

/* ---- validation ----------------------------------------------------------------------------- */

static void test_json_shape_errors(void)
{
    fresh();
    json_refused_prefix("{", "invalid JSON: ");
    json_refused_prefix("", "invalid JSON: ");
    json_refused_prefix("{\"inject\":\"error\",\"inject\":\"latency\"}", "invalid JSON: ");
    json_refused_prefix("{\"inject\":\"error\",\"message\":\"a\\u0000b\",\"sqlstate\":\"40001\"}",
                        "invalid JSON: ");
    json_refused("[]", "a rule is a JSON object, like {\"inject\": \"error\", \"sqlstate\": "
                       "\"40001\", \"probability\": 0.1}");
    json_refused("\"error\"", "a rule is a JSON object, like {\"inject\": \"error\", "
                              "\"sqlstate\": \"40001\", \"probability\": 0.1}");
    json_refused("{}", "inject: required (error, latency or disconnect)");
    json_refused("{\"inject\":\"error\",\"sqlstate\":\"40001\",\"probabilty\":0.5}",
                 "unknown field \"probabilty\" (a rule has inject, sqlstate, message, latency_ms, "
                 "when, probability, seed, every_n, max_count, database, user, application_name, "
                 "lock_key)");
    json_refused_prefix("{\"id\":3,\"inject\":\"error\",\"sqlstate\":\"40001\"}",
                        "unknown field \"id\"");
    json_refused_prefix("{\"name\":\"x\",\"inject\":\"error\",\"sqlstate\":\"40001\"}",
                        "unknown field \"name\"");
    json_refused_prefix("{\"Inject\":\"error\"}", "unknown field \"Inject\"");
    /* A long unknown name is cut in the message. */
    json_refused_prefix("{\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\":1}",
                        "unknown field \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\" (");
    CU_ASSERT_EQUAL(px_chaos_nrules, 0);
}

static void test_json_field_errors(void)
{
    fresh();
    /* inject */
    json_refused("{\"inject\":1}", "inject: must be a string");
    json_refused("{\"inject\":null}", "inject: must be a string");
    json_refused("{\"inject\":\"boom\"}", "inject: must be error, latency or disconnect");
    json_refused("{\"inject\":\"\"}", "inject: must be error, latency or disconnect");
    json_refused("{\"inject\":\"ERROR\"}", "inject: must be error, latency or disconnect");
    /* sqlstate */
    json_refused("{\"inject\":\"error\"}", "sqlstate: required with inject=error");
    json_refused("{\"inject\":\"error\",\"sqlstate\":40001}", "sqlstate: must be a string");
    const char *bad_states[] = {"4000", "400011", "4000a", "40 01", "", "4000\u00e9"};
    for (size_t i = 0; i < sizeof bad_states / sizeof *bad_states; i++) {
        char json[128];
        snprintf(json, sizeof json, "{\"inject\":\"error\",\"sqlstate\":\"%s\"}", bad_states[i]);
        json_refused(json, "sqlstate: must be 5 characters [0-9A-Z], like 40001");
    }
    json_refused("{\"inject\":\"error\",\"sqlstate\":\"00000\"}",
                 "sqlstate: 00000 is not an error (classes 00, 01 and 02 are success, warning "
                 "and no data)");
    json_refused_prefix("{\"inject\":\"error\",\"sqlstate\":\"01000\"}",
                        "sqlstate: 01000 is not an error");
    json_refused_prefix("{\"inject\":\"error\",\"sqlstate\":\"02000\"}",
                        "sqlstate: 02000 is not an error");
    json_refused("{\"inject\":\"latency\",\"latency_ms\":5,\"sqlstate\":\"40001\"}",
                 "sqlstate: only with inject=error");
    json_refused("{\"inject\":\"disconnect\",\"sqlstate\":\"40001\"}",
                 "sqlstate: only with inject=error");
    /* message */
    json_refused("{\"inject\":\"error\",\"sqlstate\":\"40001\",\"message\":5}",
                 "message: must be a string");
    json_refused("{\"inject\":\"error\",\"sqlstate\":\"40001\",\"message\":\"\"}",
                 "message: must be 1 to 1000 bytes long (got 0)");
    char big[1200];
    int n =
        snprintf(big, sizeof big, "{\"inject\":\"error\",\"sqlstate\":\"40001\",\"message\":\"");
    memset(big + n, 'm', 1001);
    snprintf(big + n + 1001, sizeof big - (size_t)n - 1001, "\"}");
    json_refused(big, "message: must be 1 to 1000 bytes long (got 1001)");
    json_refused("{\"inject\":\"disconnect\",\"message\":\"m\"}",
                 "message: only with inject=error");
    /* latency_ms */
    json_refused("{\"inject\":\"latency\"}", "latency_ms: required with inject=latency");
    json_refused("{\"inject\":\"latency\",\"latency_ms\":-1}",
                 "latency_ms: must be 0 to 600000 (got -1)");
    json_refused("{\"inject\":\"latency\",\"latency_ms\":600001}",
                 "latency_ms: must be 0 to 600000 (got 600001)");
    json_refused("{\"inject\":\"latency\",\"latency_ms\":1.5}", "latency_ms: must be an integer");
    json_refused("{\"inject\":\"latency\",\"latency_ms\":\"5\"}", "latency_ms: must be an integer");
    json_refused("{\"inject\":\"latency\",\"latency_ms\":true}", "latency_ms: must be an integer");
    json_refused("{\"inject\":\"error\",\"sqlstate\":\"40001\",\"latency_ms\":5}",
                 "latency_ms: only with inject=latency");
    json_refused("{\"inject\":\"disconnect\",\"latency_ms\":5}",
                 "latency_ms: only with inject=latency");
    /* when */
    json_refused("{\"inject\":\"disconnect\",\"when\":\"sometimes\"}",
                 "when: must be statement, commit or connect");
    json_refused("{\"inject\":\"disconnect\",\"when\":2}", "when: must be a string");
    json_refused("{\"inject\":\"latency\",\"latency_ms\":5,\"when\":\"connect\"}",
                 "when: latency at connect is not supported");
    json_refused("{\"inject\":\"disconnect\",\"when\":\"connect\",\"lock_key\":\"k\"}",
                 "lock_key: cannot match at connect (a connecting client holds no lock)");
    /* probability */
    const char *bad_p[] = {"0", "0.0", "-0.1", "1.0000001", "2", "1e308"};
    for (size_t i = 0; i < sizeof bad_p / sizeof *bad_p; i++) {
        char json[128];
        snprintf(json, sizeof json, "{\"inject\":\"disconnect\",\"probability\":%s}", bad_p[i]);
        json_refused_prefix(json, "probability: must be greater than 0 and at most 1 (got ");
    }
    json_refused("{\"inject\":\"disconnect\",\"probability\":\"0.5\"}",
                 "probability: must be a number");
    json_refused("{\"inject\":\"disconnect\",\"probability\":false}",
                 "probability: must be a number");
    json_refused("{\"inject\":\"disconnect\",\"probability\":0.5,\"every_n\":2}",
                 "every_n: give probability or every_n, not both");
    /* seed */
    json_refused("{\"inject\":\"disconnect\",\"seed\":5}", "seed: only with probability");
    json_refused("{\"inject\":\"disconnect\",\"probability\":0.5,\"seed\":-1}",
                 "seed: must be 0 to 9223372036854775807 (got -1)");
    json_refused("{\"inject\":\"disconnect\",\"probability\":0.5,\"seed\":1.0}",
                 "seed: must be an integer");
    /* every_n, max_count */
    json_refused("{\"inject\":\"disconnect\",\"every_n\":0}",
                 "every_n: must be 1 to 9223372036854775807 (got 0)");
    json_refused("{\"inject\":\"disconnect\",\"every_n\":-2}",
                 "every_n: must be 1 to 9223372036854775807 (got -2)");
    json_refused("{\"inject\":\"disconnect\",\"every_n\":\"2\"}", "every_n: must be an integer");
    json_refused("{\"inject\":\"disconnect\",\"max_count\":-1}",
                 "max_count: must be 0 to 9223372036854775807 (got -1)");
    json_refused("{\"inject\":\"disconnect\",\"max_count\":[1]}", "max_count: must be an integer");
    /* the filters */
    const char *names[] = {"database", "user", "lock_key"};
    for (size_t i = 0; i < 3; i++) {
        char json[512], want[128];
        snprintf(json, sizeof json, "{\"inject\":\"disconnect\",\"%s\":\"\"}", names[i]);
        snprintf(want, sizeof want, "%s: must be 1 to 256 bytes long (got 0)", names[i]);
        json_refused(json, want);
        snprintf(json, sizeof json, "{\"inject\":\"disconnect\",\"%s\":7}", names[i]);
        snprintf(want, sizeof want, "%s: must be a string", names[i]);
        json_refused(json, want);
        int k = snprintf(json, sizeof json, "{\"inject\":\"disconnect\",\"%s\":\"", names[i]);
        memset(json + k, 'x', 257);
        snprintf(json + k + 257, sizeof json - (size_t)k - 257, "\"}");
        snprintf(want, sizeof want, "%s: must be 1 to 256 bytes long (got 257)", names[i]);
        json_refused(json, want);
    }
    json_refused("{\"inject\":\"disconnect\",\"application_name\":null}",
                 "application_name: must be a string");
    char json[512];
    int k = snprintf(json, sizeof json, "{\"inject\":\"disconnect\",\"application_name\":\"");
    memset(json + k, 'x', 257);
    snprintf(json + k + 257, sizeof json - (size_t)k - 257, "\"}");
    json_refused(json, "application_name: must be 0 to 256 bytes long (got 257)");
    CU_ASSERT_EQUAL(px_chaos_nrules, 0);
}

static void test_json_accepted(void)
{
    fresh();
    add_ok("{\"inject\":\"error\",\"sqlstate\":\"40001\"}");
    add_ok("{\"inject\":\"error\",\"sqlstate\":\"40P01\",\"message\":\"custom \u00e9\","
           "\"when\":\"commit\",\"probability\":1,\"seed\":0,\"max_count\":0,"
           "\"database\":\"db\",\"user\":\"u\",\"application_name\":\"\",\"lock_key\":\"k\"}");
    add_ok("{\"inject\":\"latency\",\"latency_ms\":0}");
    add_ok("{\"inject\":\"latency\",\"latency_ms\":600000,\"every_n\":9223372036854775807}");
    add_ok("{\"inject\":\"disconnect\",\"when\":\"connect\",\"probability\":1e-9,"
           "\"seed\":9223372036854775807}");
    add_ok("{\"inject\":\"error\",\"sqlstate\":\"XX000\",\"when\":\"connect\"}");
    add_ok("{\"inject\":\"error\",\"sqlstate\":\"57P01\",\"when\":\"statement\"}");
    CU_ASSERT_EQUAL(px_chaos_nrules, 7);
}

/* A probability below DBL_MIN (subnormal) is a number above 0 in both forms; one that
 * rounds to 0 is refused by both with the same message.  Found by fuzz_chaos: the
 * [chaos] form refused 1e-320 ("must be a number", strtod's ERANGE on underflow) while
 * POST /chaos took it. */
static void test_probability_tiny(void)
{
    fresh();
    static const char *const tiny[] = {"1e-320", "4.9e-324", "2.2250738585072e-308"};
    for (size_t i = 0; i < sizeof tiny / sizeof *tiny; i++) {
        char json[128], params[128], name[8];
        snprintf(json, sizeof json, "{\"inject\":\"disconnect\",\"probability\":%s}", tiny[i]);
        add_ok(json);
        snprintf(params, sizeof params, "inject=disconnect probability=%s", tiny[i]);
        snprintf(name, sizeof name, "t%zu", i);
        params_ok(name, params);
    }
    CU_ASSERT_EQUAL(px_chaos_nrules, 6);
    json_refused("{\"inject\":\"disconnect\",\"probability\":1e-400}",
                 "probability: must be greater than 0 and at most 1 (got 0)");
    params_refused("inject=disconnect probability=1e-400",
                   "probability: must be greater than 0 and at most 1 (got 0)");
    params_refused("inject=disconnect probability=1e400",
                   "probability: must be a number (got \"1e400\")");
}

static void test_params_errors(void)
{
    fresh();
    params_refused("", "inject: required (error, latency or disconnect)");
    params_refused("garbage", "expected name=value, found \"garbage\"");
    params_refused("inject=error sqlstate='40001", "unterminated quoted value of \"sqlstate\"");
    params_refused("inject=error sqlstate=40001 prob=0.5",
                   "unknown field \"prob\" (a rule has inject, sqlstate, message, latency_ms, "
                   "when, probability, seed, every_n, max_count, database, user, "
                   "application_name, lock_key)");
    params_refused("inject=error inject=latency", "inject: given twice");
    params_refused("inject=boom", "inject: must be error, latency or disconnect");
    params_refused("inject=error sqlstate=4000", "sqlstate: must be 5 characters [0-9A-Z], like "
                                                 "40001");
    params_refused("inject=error", "sqlstate: required with inject=error");
    params_refused("inject=latency latency_ms=abc", "latency_ms: must be an integer (got \"abc\")");
    params_refused("inject=latency latency_ms=-5", "latency_ms: must be 0 to 600000 (got -5)");
    params_refused("inject=latency latency_ms=+5", "latency_ms: must be an integer (got \"+5\")");
    params_refused("inject=latency latency_ms=5ms", "latency_ms: must be an integer (got \"5ms\")");
    params_refused("inject=latency latency_ms=", "latency_ms: must be an integer (got \"\")");
    params_refused("inject=latency latency_ms=99999999999999999999999",
                   "latency_ms: must be an integer (got \"99999999999999999999999\")");
    params_refused("inject=latency latency_ms=700000",
                   "latency_ms: must be 0 to 600000 (got 700000)");
    params_refused("inject=disconnect probability=abc",
                   "probability: must be a number (got \"abc\")");
    params_refused("inject=disconnect probability=nan",
                   "probability: must be a number (got \"nan\")");
    params_refused("inject=disconnect probability=inf",
                   "probability: must be a number (got \"inf\")");
    params_refused("inject=disconnect probability=0",
                   "probability: must be greater than 0 and at most 1 (got 0)");
    params_refused("inject=disconnect probability=1.5",
                   "probability: must be greater than 0 and at most 1 (got 1.5)");
    params_refused("inject=disconnect probability=0.5 every_n=3",
                   "every_n: give probability or every_n, not both");
    params_refused("inject=disconnect seed=3", "seed: only with probability");
    params_refused("inject=disconnect every_n=0",
                   "every_n: must be 1 to 9223372036854775807 (got 0)");
    params_refused("inject=disconnect max_count=-1",
                   "max_count: must be 0 to 9223372036854775807 (got -1)");
    params_refused("inject=disconnect database=", "database: must be 1 to 256 bytes long (got 0)");
    params_refused("inject=disconnect user=''", "user: must be 1 to 256 bytes long (got 0)");
    params_refused("inject=error sqlstate=40001 message=\xff\xfe",
                   "message: must be valid UTF-8 without NUL");
    params_refused("inject=latency latency_ms=5 when=connect",
                   "when: latency at connect is not supported");
    params_refused("inject=disconnect when=later", "when: must be statement, commit or connect");
    char *err = NULL;
    CU_ASSERT_EQUAL(px_chaos_add_config("", "inject=disconnect", &err), -1);
    CU_ASSERT_STRING_EQUAL(err, "a config rule needs a name");
    free(err);
    CU_ASSERT_EQUAL(px_chaos_nrules, 0);
}

static void test_params_accepted(void)
{
    fresh();
    params_ok("ser", "inject=error sqlstate=40001 probability=0.3 seed=42 application_name=svc");
    params_ok("msg", "inject=error sqlstate=40001 message='it''s a \\'test\\'' "
                     "database='my db' user=u lock_key=k when=commit");
    params_ok("lat", "  inject = latency   latency_ms = 250 every_n=3 max_count=10  ");
    params_ok("app", "inject=disconnect application_name=''");
    char *err = NULL;
    CU_ASSERT_EQUAL(px_chaos_add_config("ser", "inject=disconnect", &err), -1);
    CU_ASSERT_STRING_EQUAL(err, "a rule named \"ser\" exists");
    free(err);
    json_t *rules, *j = list(&rules);
    json_t *r = rule_by_id(rules, 2);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "message")), "it's a 'test'");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "database")), "my db");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "when")), "commit");
    r = rule_by_id(rules, 3);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "latency_ms")), 250);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "every_n")), 3);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "max_count")), 10);
    r = rule_by_id(rules, 4);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "application_name")), "");
    json_decref(j);
}

/* ---- decisions ------------------------------------------------------------------------------ */

static void test_no_rules(void)
{
    fresh();
    CU_ASSERT_FALSE(px_chaos_active());
    struct px_chaos_ctx c = stmt("db", "u", "app");
    struct px_chaos_action a;
    memset(&a, 0x5a, sizeof a);
    CU_ASSERT_FALSE(px_chaos_decide(&c, &a));
    CU_ASSERT_EQUAL(a.kind, PX_CHAOS_NONE);
}

static void test_actions(void)
{
    fresh();
    uint64_t e = add_ok("{\"inject\":\"error\",\"sqlstate\":\"40001\",\"when\":\"commit\"}");
    uint64_t l = add_ok("{\"inject\":\"latency\",\"latency_ms\":250,\"database\":\"slow\"}");
    uint64_t d = add_ok("{\"inject\":\"disconnect\",\"when\":\"connect\"}");
    CU_ASSERT_TRUE(px_chaos_active());
    struct px_chaos_action a;
    struct px_chaos_ctx c = stmt("db", "u", NULL);
    c.when = PX_CHAOS_COMMIT;
    CU_ASSERT_TRUE(px_chaos_decide(&c, &a));
    CU_ASSERT_EQUAL(a.kind, PX_CHAOS_ERROR);
    CU_ASSERT_EQUAL(a.rule_id, e);
    CU_ASSERT_STRING_EQUAL(a.sqlstate, "40001");
    CU_ASSERT_STRING_EQUAL(a.message, "could not serialize access due to concurrent update");
    c = stmt("slow", "u", NULL);
    CU_ASSERT_TRUE(px_chaos_decide(&c, &a));
    CU_ASSERT_EQUAL(a.kind, PX_CHAOS_LATENCY);
    CU_ASSERT_EQUAL(a.rule_id, l);
    CU_ASSERT_EQUAL(a.latency_ms, 250);
    CU_ASSERT_STRING_EQUAL(a.sqlstate, "");
    c = stmt("fast", "u", NULL);
    CU_ASSERT_FALSE(px_chaos_decide(&c, &a));
    CU_ASSERT_EQUAL(a.kind, PX_CHAOS_NONE);
    c.when = PX_CHAOS_CONNECT;
    CU_ASSERT_TRUE(px_chaos_decide(&c, &a));
    CU_ASSERT_EQUAL(a.kind, PX_CHAOS_DISCONNECT);
    CU_ASSERT_EQUAL(a.rule_id, d);
}

static void test_default_messages(void)
{
    static const char *const cases[][2] = {
        {"40001", "could not serialize access due to concurrent update"},
        {"40P01", "deadlock detected"},
        {"57P01", "terminating connection due to administrator command"},
        {"53300", "sorry, too many clients already"},
        {"08006", "connection to server was lost"},
        {"55P03", "canceling statement due to lock timeout"},
        {"23505", "injected fault"},
        {"P0001", "injected fault"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        fresh();
        char json[128];
        snprintf(json, sizeof json, "{\"inject\":\"error\",\"sqlstate\":\"%s\"}", cases[i][0]);
        add_ok(json);
        struct px_chaos_ctx c = stmt(NULL, NULL, NULL);
        struct px_chaos_action a;
        CU_ASSERT_TRUE(px_chaos_decide(&c, &a));
        CU_ASSERT_STRING_EQUAL(a.message, cases[i][1]);
    }
    fresh();
    add_ok("{\"inject\":\"error\",\"sqlstate\":\"40001\",\"message\":\"mine\"}");
    struct px_chaos_ctx c = stmt(NULL, NULL, NULL);
    struct px_chaos_action a;
    CU_ASSERT_TRUE(px_chaos_decide(&c, &a));
    CU_ASSERT_STRING_EQUAL(a.message, "mine");
}

static const char *held_key;
static size_t held_calls;

static bool holds(void *arg, const char *key, size_t keylen)
{
    CU_ASSERT_PTR_EQUAL(arg, &held_key);
    held_calls++;
    return held_key && strlen(held_key) == keylen && memcmp(held_key, key, keylen) == 0;
}

static void test_matching(void)
{
    fresh();
    add_ok("{\"inject\":\"disconnect\",\"database\":\"db1\",\"user\":\"alice\","
           "\"application_name\":\"svc\"}");
    struct px_chaos_ctx c = stmt("db1", "alice", "svc");
    CU_ASSERT_TRUE(fires(&c));
    c = stmt("db2", "alice", "svc");
    CU_ASSERT_FALSE(fires(&c));
    c = stmt("db1", "bob", "svc");
    CU_ASSERT_FALSE(fires(&c));
    c = stmt("db1", "alice", "svc2");
    CU_ASSERT_FALSE(fires(&c));
    c = stmt("db1", "alice", NULL);
    CU_ASSERT_FALSE(fires(&c));
    c = stmt(NULL, NULL, NULL);
    CU_ASSERT_FALSE(fires(&c));
    c = stmt("DB1", "alice", "svc"); /* exact, case-sensitive */
    CU_ASSERT_FALSE(fires(&c));
    c = stmt("db1", "alice", "svc");
    c.when = PX_CHAOS_COMMIT;
    CU_ASSERT_FALSE(fires(&c));
    CU_ASSERT_EQUAL(counter(1, "matched"), 1);
    CU_ASSERT_EQUAL(counter(1, "injected"), 1);

    /* application_name "" matches clients that set none. */
    fresh();
    add_ok("{\"inject\":\"disconnect\",\"application_name\":\"\"}");
    c = stmt("db", "u", NULL);
    CU_ASSERT_TRUE(fires(&c));
    c = stmt("db", "u", "");
    CU_ASSERT_TRUE(fires(&c));
    c = stmt("db", "u", "x");
    CU_ASSERT_FALSE(fires(&c));

    /* lock_key: asked through holds_lock with the key and its length. */
    fresh();
    add_ok("{\"inject\":\"disconnect\",\"lock_key\":\"acct:42\"}");
    c = stmt("db", "u", NULL);
    CU_ASSERT_FALSE(fires(&c)); /* no holds_lock: holds none */
    c.holds_lock = holds;
    c.arg = &held_key;
    held_key = NULL;
    held_calls = 0;
    CU_ASSERT_FALSE(fires(&c));
    held_key = "acct:4";
    CU_ASSERT_FALSE(fires(&c));
    held_key = "acct:42";
    CU_ASSERT_TRUE(fires(&c));
    CU_ASSERT_EQUAL(held_calls, 3);
    CU_ASSERT_EQUAL(counter(1, "matched"), 1);

    /* A rule without filters matches everything of its `when`. */
    fresh();
    add_ok("{\"inject\":\"disconnect\"}");
    c = stmt(NULL, NULL, NULL);
    CU_ASSERT_TRUE(fires(&c));
    c.holds_lock = holds;
    held_calls = 0;
    CU_ASSERT_TRUE(fires(&c));
    CU_ASSERT_EQUAL(held_calls, 0); /* not asked when the rule names no key */
}

/* The first rule (id order) that matches and fires decides; later ones do not see it. */
static void test_first_rule_decides(void)
{
    fresh();
    uint64_t a = add_ok("{\"inject\":\"error\",\"sqlstate\":\"40001\",\"every_n\":2}");
    uint64_t b = add_ok("{\"inject\":\"error\",\"sqlstate\":\"40P01\"}");
    struct px_chaos_ctx c = stmt("db", "u", NULL);
    struct px_chaos_action act;
    for (int i = 1; i <= 10; i++) {
        CU_ASSERT_TRUE(px_chaos_decide(&c, &act));
        CU_ASSERT_EQUAL(act.rule_id, i % 2 == 0 ? a : b);
    }
    CU_ASSERT_EQUAL(counter(a, "matched"), 10);
    CU_ASSERT_EQUAL(counter(a, "injected"), 5);
    CU_ASSERT_EQUAL(counter(b, "matched"), 5);
    CU_ASSERT_EQUAL(counter(b, "injected"), 5);
}

static void test_every_n(void)
{
    fresh();
    uint64_t id = add_ok("{\"inject\":\"disconnect\",\"every_n\":3,\"application_name\":\"a\"}");
    struct px_chaos_ctx hit = stmt("db", "u", "a"), other = stmt("db", "u", "b");
    char pattern[10] = "";
    for (int i = 0; i < 9; i++) {
        CU_ASSERT_FALSE(fires(&other)); /* other traffic does not advance the count */
        pattern[i] = fires(&hit) ? 'X' : '.';
    }
    CU_ASSERT_STRING_EQUAL(pattern, "..X..X..X");
    CU_ASSERT_EQUAL(counter(id, "matched"), 9);
    CU_ASSERT_EQUAL(counter(id, "injected"), 3);

    fresh();
    add_ok("{\"inject\":\"disconnect\",\"every_n\":1}");
    struct px_chaos_ctx c = stmt(NULL, NULL, NULL);
    for (int i = 0; i < 5; i++)
        CU_ASSERT_TRUE(fires(&c));
}

static void test_max_count(void)
{
    fresh();
    uint64_t id = add_ok("{\"inject\":\"disconnect\",\"max_count\":2}");
    struct px_chaos_ctx c = stmt(NULL, NULL, NULL);
    CU_ASSERT_TRUE(fires(&c));
    CU_ASSERT_TRUE(fires(&c));
    for (int i = 0; i < 5; i++)
        CU_ASSERT_FALSE(fires(&c));
    CU_ASSERT_EQUAL(counter(id, "matched"), 7);
    CU_ASSERT_EQUAL(counter(id, "injected"), 2);
    /* An exhausted rule lets the next one decide. */
    uint64_t next = add_ok("{\"inject\":\"error\",\"sqlstate\":\"40P01\"}");
    struct px_chaos_action a;
    CU_ASSERT_TRUE(px_chaos_decide(&c, &a));
    CU_ASSERT_EQUAL(a.rule_id, next);

    /* With every_n: the 2nd, 4th and 6th match would fire; only two do. */
    fresh();
    id = add_ok("{\"inject\":\"disconnect\",\"every_n\":2,\"max_count\":2}");
    char pattern[9] = "";
    for (int i = 0; i < 8; i++)
        pattern[i] = fires(&c) ? 'X' : '.';
    CU_ASSERT_STRING_EQUAL(pattern, ".X.X....");
    /* max_count 0: no limit. */
    fresh();
    add_ok("{\"inject\":\"disconnect\",\"max_count\":0}");
    for (int i = 0; i < 100; i++)
        CU_ASSERT_TRUE(fires(&c));
}

/* px_chaos_matches: whether a rule is for the statement, with nothing counted or drawn. */
static void test_matches(void)
{
    fresh();
    struct px_chaos_ctx a = stmt("db", "u", "a"), b = stmt("db", "u", "b");
    CU_ASSERT_FALSE(px_chaos_matches(&a)); /* no rules */
    uint64_t id = add_ok("{\"inject\":\"error\",\"sqlstate\":\"40001\",\"every_n\":2,"
                         "\"application_name\":\"a\"}");
    add_ok("{\"inject\":\"latency\",\"latency_ms\":5,\"when\":\"commit\"}");
    CU_ASSERT_FALSE(px_chaos_matches(&b));
    for (int i = 0; i < 3; i++)
        CU_ASSERT_TRUE(px_chaos_matches(&a));
    CU_ASSERT_EQUAL(counter(id, "matched"), 0);
    CU_ASSERT_FALSE(fires(&a)); /* the first match of every_n 2: not moved by the checks */
    CU_ASSERT_TRUE(fires(&a));
    struct px_chaos_ctx commit = b;
    commit.when = PX_CHAOS_COMMIT;
    CU_ASSERT_TRUE(px_chaos_matches(&commit));
}

/* The injections of n matching statements as a string of 'X' and '.'. */
static void draw_pattern(const struct px_chaos_ctx *c, char *out, size_t n, bool interleave)
{
    struct px_chaos_ctx other = stmt("elsewhere", "u", NULL);
    for (size_t i = 0; i < n; i++) {
        if (interleave && i % 3 == 0)
            CU_ASSERT_FALSE(fires(&other));
        out[i] = fires(c) ? 'X' : '.';
    }
    out[n] = '\0';
}

static void test_probability_reproducible(void)
{
    enum { N = 2000 };
    static char p1[N + 1], p2[N + 1], p3[N + 1], p4[N + 1];
    struct px_chaos_ctx c = stmt("db", "u", "svc");
    const char *rule = "{\"inject\":\"error\",\"sqlstate\":\"40001\",\"probability\":0.3,"
                       "\"seed\":42,\"database\":\"db\"}";
    fresh();
    add_ok(rule);
    draw_pattern(&c, p1, N, false);
    /* Same rule again (a new id, the same seed): the same injections, even with other
     * traffic in between. */
    CU_ASSERT_EQUAL(px_chaos_clear(), 1);
    add_ok(rule);
    draw_pattern(&c, p2, N, true);
    CU_ASSERT_STRING_EQUAL(p1, p2);
    /* The same rule from a [chaos] line. */
    px_chaos_clear();
    params_ok("cfg", "inject=error sqlstate=40001 probability=0.3 seed=42 database=db");
    draw_pattern(&c, p3, N, false);
    CU_ASSERT_STRING_EQUAL(p1, p3);
    /* Another seed: other injections. */
    px_chaos_clear();
    add_ok("{\"inject\":\"error\",\"sqlstate\":\"40001\",\"probability\":0.3,\"seed\":43}");
    draw_pattern(&c, p4, N, false);
    CU_ASSERT_STRING_NOT_EQUAL(p1, p4);
    /* Without a seed: seed 1. */
    px_chaos_clear();
    add_ok("{\"inject\":\"disconnect\",\"probability\":0.3}");
    draw_pattern(&c, p3, N, false);
    px_chaos_clear();
    add_ok("{\"inject\":\"disconnect\",\"probability\":0.3,\"seed\":1}");
    draw_pattern(&c, p4, N, false);
    CU_ASSERT_STRING_EQUAL(p3, p4);
}

static void test_probability_rate(void)
{
    static const double ps[] = {0.01, 0.3, 0.5, 0.9};
    for (size_t k = 0; k < sizeof ps / sizeof *ps; k++) {
        fresh();
        char json[160];
        snprintf(json, sizeof json, "{\"inject\":\"disconnect\",\"probability\":%g,\"seed\":%zu}",
                 ps[k], 1000 + k);
        uint64_t id = add_ok(json);
        struct px_chaos_ctx c = stmt(NULL, NULL, NULL);
        int hits = 0;
        for (int i = 0; i < 10000; i++)
            hits += fires(&c);
        /* 5 standard deviations of a binomial(10^4, p). */
        double sd = sqrt(10000 * ps[k] * (1 - ps[k]));
        CU_ASSERT(fabs(hits - 10000 * ps[k]) < 5 * sd);
        CU_ASSERT_EQUAL(counter(id, "matched"), 10000);
        CU_ASSERT_EQUAL(counter(id, "injected"), (uint64_t)hits);
    }
    fresh();
    add_ok("{\"inject\":\"disconnect\",\"probability\":1}");
    struct px_chaos_ctx c = stmt(NULL, NULL, NULL);
    for (int i = 0; i < 1000; i++)
        CU_ASSERT_TRUE(fires(&c));
}

/* ---- the table ------------------------------------------------------------------------------ */

static void test_remove_clear_ids(void)
{
    fresh();
    uint64_t a = add_ok("{\"inject\":\"disconnect\"}");
    uint64_t b = add_ok("{\"inject\":\"disconnect\",\"when\":\"commit\"}");
    uint64_t c = add_ok("{\"inject\":\"disconnect\",\"when\":\"connect\"}");
    CU_ASSERT_EQUAL(a, 1);
    CU_ASSERT_EQUAL(b, 2);
    CU_ASSERT_EQUAL(c, 3);
    CU_ASSERT_EQUAL(px_chaos_nrules, 3);
    CU_ASSERT_TRUE(px_chaos_remove(b));
    CU_ASSERT_FALSE(px_chaos_remove(b));
    CU_ASSERT_FALSE(px_chaos_remove(0));
    CU_ASSERT_FALSE(px_chaos_remove(99));
    CU_ASSERT_EQUAL(px_chaos_nrules, 2);
    struct px_chaos_ctx ctx = stmt(NULL, NULL, NULL);
    ctx.when = PX_CHAOS_COMMIT;
    CU_ASSERT_FALSE(fires(&ctx));                              /* rule b is gone */
    CU_ASSERT_EQUAL(add_ok("{\"inject\":\"disconnect\"}"), 4); /* 2 is not reused */
    CU_ASSERT_EQUAL(px_chaos_clear(), 3);
    CU_ASSERT_EQUAL(px_chaos_nrules, 0);
    CU_ASSERT_FALSE(px_chaos_active());
    CU_ASSERT_EQUAL(px_chaos_clear(), 0);
    ctx.when = PX_CHAOS_STATEMENT;
    CU_ASSERT_FALSE(fires(&ctx));
    CU_ASSERT_EQUAL(add_ok("{\"inject\":\"disconnect\"}"), 5);
    params_ok("c", "inject=disconnect");
    CU_ASSERT_EQUAL(counter(6, "matched"), 0);
}

static void test_max_rules(void)
{
    fresh();
    for (int i = 0; i < PX_CHAOS_MAX_RULES; i++)
        add_ok("{\"inject\":\"disconnect\",\"database\":\"none\"}");
    json_refused("{\"inject\":\"disconnect\"}", "too many rules (at most 1000): remove some first");
    params_refused("inject=disconnect", "too many rules (at most 1000)");
    CU_ASSERT_TRUE(px_chaos_remove(500));
    add_ok("{\"inject\":\"disconnect\"}");
    CU_ASSERT_EQUAL(px_chaos_clear(), PX_CHAOS_MAX_RULES);
}

static void test_list_shape(void)
{
    fresh();
    json_t *rules, *j = list(&rules);
    CU_ASSERT_EQUAL(json_array_size(rules), 0);
    json_decref(j);

    params_ok("ser", "inject=error sqlstate=40001 probability=0.3 application_name=svc");
    add_ok("{\"inject\":\"latency\",\"latency_ms\":250,\"every_n\":4,\"max_count\":9,"
           "\"when\":\"commit\",\"database\":\"d\",\"user\":\"u\",\"lock_key\":\"k\"}");
    char *text = px_chaos_list_json();
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    /* Numbers as written, not 0.29999999999999999; a top-level array. */
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\"probability\":0.3,"));
    CU_ASSERT_EQUAL(text[0], '[');
    CU_ASSERT_EQUAL(text[strlen(text) - 1], ']');
    free(text);

    /* Every rule has every key, in this order, null where it does not apply. */
    static const char *const keys[] = {
        "id",         "name", "source",           "inject",   "sqlstate", "message",
        "latency_ms", "when", "probability",      "seed",     "every_n",  "max_count",
        "database",   "user", "application_name", "lock_key", "matched",  "injected"};
    enum { NKEYS = sizeof keys / sizeof *keys };
    j = list(&rules);
    CU_ASSERT_EQUAL_FATAL(json_array_size(rules), 2);
    for (size_t k = 0; k < 2; k++) {
        json_t *r = json_array_get(rules, k);
        CU_ASSERT_EQUAL(json_object_size(r), NKEYS);
        size_t i = 0;
        const char *key;
        json_t *v;
        json_object_foreach(r, key, v)
        {
            CU_ASSERT_STRING_EQUAL(key, i < NKEYS ? keys[i] : "");
            i++;
        }
    }
    json_t *r = json_array_get(rules, 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "id")), 1);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "name")), "ser");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "source")), "config");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "inject")), "error");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "sqlstate")), "40001");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "message")),
                           "could not serialize access due to concurrent update");
    CU_ASSERT_TRUE(json_is_null(json_object_get(r, "latency_ms")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "when")), "statement");
    CU_ASSERT_DOUBLE_EQUAL(json_real_value(json_object_get(r, "probability")), 0.3, 1e-12);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "seed")), 1); /* the default */
    CU_ASSERT_TRUE(json_is_null(json_object_get(r, "every_n")));
    CU_ASSERT_TRUE(json_is_null(json_object_get(r, "max_count")));
    CU_ASSERT_TRUE(json_is_null(json_object_get(r, "database")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "application_name")), "svc");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "matched")), 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "injected")), 0);

    r = json_array_get(rules, 1);
    CU_ASSERT_TRUE(json_is_null(json_object_get(r, "name")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "source")), "api");
    CU_ASSERT_TRUE(json_is_null(json_object_get(r, "sqlstate")));
    CU_ASSERT_TRUE(json_is_null(json_object_get(r, "message")));
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "latency_ms")), 250);
    CU_ASSERT_TRUE(json_is_null(json_object_get(r, "probability")));
    CU_ASSERT_TRUE(json_is_null(json_object_get(r, "seed")));
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "every_n")), 4);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "max_count")), 9);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(r, "lock_key")), "k");
    json_decref(j);

    /* The answer to an add is the rule, as listed. */
    char *err = NULL;
    const char *in = "{\"inject\":\"disconnect\",\"when\":\"connect\",\"user\":\"x\"}";
    char *out = px_chaos_add_json(in, strlen(in), &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    CU_ASSERT_STRING_EQUAL(out, "{\"id\":3,\"name\":null,\"source\":\"api\",\"inject\":"
                                "\"disconnect\",\"sqlstate\":null,\"message\":null,"
                                "\"latency_ms\":null,\"when\":\"connect\",\"probability\":null,"
                                "\"seed\":null,\"every_n\":null,\"max_count\":null,"
                                "\"database\":null,\"user\":\"x\",\"application_name\":null,"
                                "\"lock_key\":null,\"matched\":0,\"injected\":0}");
    free(out);
}

/* ---- [chaos] config rules ------------------------------------------------------------------- */

/* A config with these [chaos] lines (name, params pairs; NULL-terminated), lines 10, 11... */
static struct px_config *cfg_with(const char *const *lines)
{
    struct px_config *cfg = calloc(1, sizeof *cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    cfg->path = strdup("/etc/pgwarden.ini");
    size_t n = 0;
    while (lines[2 * n])
        n++;
    cfg->chaos = calloc(n ? n : 1, sizeof *cfg->chaos);
    for (size_t i = 0; i < n; i++) {
        cfg->chaos[i].name = strdup(lines[2 * i]);
        cfg->chaos[i].params = strdup(lines[2 * i + 1]);
        cfg->chaos[i].line = 10 + (int)i;
    }
    cfg->nchaos = n;
    return cfg;
}

static void install(const char *const *lines)
{
    struct px_config *cfg = cfg_with(lines);
    char *err = NULL;
    struct px_chaos_rules *set = px_chaos_config_parse(cfg, &err);
    if (!set)
        fprintf(stderr, "\n  %s\n", err ? err : "(null)");
    CU_ASSERT_PTR_NOT_NULL_FATAL(set);
    px_chaos_config_install(set);
    px_config_free(cfg);
}

/* A config rule's name must be valid UTF-8, in both ways in.  Found by fuzz_chaos: a
 * [chaos] line whose name was not (a Latin-1 file) was taken, and from then on
 * px_chaos_list_json returned NULL: GET /chaos answered 500 "out of memory". */
static void test_params_name_utf8(void)
{
    fresh();
    char *err = NULL;
    CU_ASSERT_EQUAL(px_chaos_add_config("caf\xe9", "inject=disconnect", &err), -1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(err);
    CU_ASSERT_STRING_EQUAL(err, "a rule name must be valid UTF-8");
    free(err);
    CU_ASSERT_EQUAL(px_chaos_nrules, 0);

    const char *lines[] = {"caf\xe9", "inject=disconnect", NULL};
    struct px_config *cfg = cfg_with(lines);
    err = NULL;
    struct px_chaos_rules *set = px_chaos_config_parse(cfg, &err);
    CU_ASSERT_PTR_NULL(set);
    px_chaos_rules_free(set);
    CU_ASSERT_PTR_NOT_NULL_FATAL(err);
    CU_ASSERT_STRING_EQUAL(err, "/etc/pgwarden.ini:10: [chaos] caf\xe9: a rule name must be "
                                "valid UTF-8");
    free(err);
    px_config_free(cfg);

    params_ok("caf\xc3\xa9", "inject=disconnect");
    char *text = px_chaos_list_json();
    CU_ASSERT_PTR_NOT_NULL(text);
    CU_ASSERT_PTR_NOT_NULL(text ? strstr(text, "\"name\":\"caf\xc3\xa9\"") : NULL);
    free(text);
}

static void test_config_parse_errors(void)
{
    fresh();
    params_ok("keep", "inject=disconnect");
    const char *lines[] = {"good",  "inject=disconnect", "bad", "inject=error sqlstate=4001",
                           "never", "inject=disconnect", NULL};
    struct px_config *cfg = cfg_with(lines);
    char *err = NULL;
    CU_ASSERT_PTR_NULL(px_chaos_config_parse(cfg, &err));
    CU_ASSERT_STRING_EQUAL(err, "/etc/pgwarden.ini:11: [chaos] bad: sqlstate: must be 5 "
                                "characters [0-9A-Z], like 40001");
    free(err);
    px_config_free(cfg);
    CU_ASSERT_EQUAL(px_chaos_nrules, 1); /* nothing touched */

    const char *unknown[] = {"r", "inject=disconnect every=2", NULL};
    cfg = cfg_with(unknown);
    CU_ASSERT_PTR_NULL(px_chaos_config_parse(cfg, &err));
    const char *want = "/etc/pgwarden.ini:10: [chaos] r: unknown field \"every\" (";
    CU_ASSERT_NSTRING_EQUAL(err, want, strlen(want));
    free(err);
    px_config_free(cfg);

    const char *none[] = {NULL};
    cfg = cfg_with(none);
    struct px_chaos_rules *set = px_chaos_config_parse(cfg, &err);
    CU_ASSERT_PTR_NOT_NULL(set);
    px_chaos_rules_free(set);
    px_chaos_rules_free(NULL);
    px_config_free(cfg);

    cfg = cfg_with(none);
    cfg->nchaos = PX_CHAOS_MAX_RULES + 1;
    cfg->chaos = realloc(cfg->chaos, cfg->nchaos * sizeof *cfg->chaos);
    for (size_t i = 0; i < cfg->nchaos; i++) {
        char name[32];
        snprintf(name, sizeof name, "r%zu", i);
        cfg->chaos[i].name = strdup(name);
        cfg->chaos[i].params = strdup("inject=disconnect");
        cfg->chaos[i].line = (int)i + 1;
    }
    CU_ASSERT_PTR_NULL(px_chaos_config_parse(cfg, &err));
    CU_ASSERT_STRING_EQUAL(err, "/etc/pgwarden.ini:1001: [chaos] r1000: too many rules (at most "
                                "1000)");
    free(err);
    px_config_free(cfg);
}

static void test_config_install(void)
{
    fresh();
    const char *v1[] = {
        "a",    "inject=error sqlstate=40001 every_n=2", "b", "inject=latency latency_ms=10",
        "gone", "inject=disconnect when=commit",         NULL};
    install(v1);
    CU_ASSERT_EQUAL(px_chaos_nrules, 3);
    uint64_t api = add_ok("{\"inject\":\"disconnect\",\"when\":\"connect\"}");
    CU_ASSERT_EQUAL(api, 4);
    struct px_chaos_ctx c = stmt(NULL, NULL, NULL);
    for (int i = 0; i < 3; i++)
        fires(&c); /* a: matched 3, injected 1; b takes the other two */
    CU_ASSERT_EQUAL(counter(1, "matched"), 3);
    CU_ASSERT_EQUAL(counter(1, "injected"), 1);

    /* Reload: a unchanged (written differently), b changed, gone removed, c new. */
    const char *v2[] = {"a", "  inject=error   every_n=2 sqlstate='40001'",
                        "b", "inject=latency latency_ms=20",
                        "c", "inject=disconnect",
                        NULL};
    install(v2);
    json_t *rules, *j = list(&rules);
    CU_ASSERT_EQUAL_FATAL(json_array_size(rules), 4);
    static const uint64_t want_ids[] = {1, 4, 5, 6};
    static const char *const want_names[] = {"a", NULL, "b", "c"};
    for (size_t i = 0; i < 4; i++) {
        json_t *r = json_array_get(rules, i);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "id")), want_ids[i]);
        const char *name = json_string_value(json_object_get(r, "name"));
        if (want_names[i]) {
            CU_ASSERT_STRING_EQUAL(name ? name : "", want_names[i]);
        } else {
            CU_ASSERT_PTR_NULL(name);
        }
    }
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(rules, 2), "latency_ms")),
                    20);
    json_decref(j);
    /* a kept its counters and its every_n position: the 4th match fires. */
    CU_ASSERT_EQUAL(counter(1, "matched"), 3);
    struct px_chaos_action act;
    CU_ASSERT_TRUE(px_chaos_decide(&c, &act));
    CU_ASSERT_EQUAL(act.rule_id, 1);

    /* A config rule removed over HTTP comes back (a new id) with the next reload. */
    CU_ASSERT_TRUE(px_chaos_remove(6));
    install(v2);
    CU_ASSERT_EQUAL(px_chaos_nrules, 4);
    CU_ASSERT_EQUAL(counter(7, "matched"), 0);

    /* No [chaos] lines: only the rule added over HTTP stays. */
    const char *none[] = {NULL};
    install(none);
    j = list(&rules);
    CU_ASSERT_EQUAL_FATAL(json_array_size(rules), 1);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(rules, 0), "id")), api);
    json_decref(j);
}

/* A probability rule kept by a reload continues its sequence. */
static void test_config_install_keeps_prng(void)
{
    enum { N = 400 };
    static char whole[N + 1], split[N + 1];
    const char *v[] = {"p", "inject=disconnect probability=0.5 seed=7", NULL};
    struct px_chaos_ctx c = stmt(NULL, NULL, NULL);
    fresh();
    install(v);
    draw_pattern(&c, whole, N, false);
    fresh();
    install(v);
    draw_pattern(&c, split, N / 2, false);
    install(v);
    draw_pattern(&c, split + N / 2, N / 2, false);
    CU_ASSERT_STRING_EQUAL(whole, split);
}

/* ---- metrics -------------------------------------------------------------------------------- */

static void test_metrics(void)
{
    fresh();
    char *m = render();
    CU_ASSERT_PTR_NOT_NULL(strstr(m, "\npgwarden_chaos_rules 0\n"));
    free(m);
    uint64_t e = add_ok("{\"inject\":\"error\",\"sqlstate\":\"40P01\",\"every_n\":2}");
    uint64_t l = add_ok("{\"inject\":\"latency\",\"latency_ms\":1}");
    struct px_chaos_ctx c = stmt(NULL, NULL, NULL);
    for (int i = 0; i < 6; i++)
        fires(&c);
    m = render();
    CU_ASSERT_PTR_NOT_NULL(strstr(m, "\npgwarden_chaos_rules 2\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(m, "\npgwarden_chaos_injected_total{rule=\"1\",kind=\"error\",sqlstate=\"40P01\"} "
                  "3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(
        m, "\npgwarden_chaos_injected_total{rule=\"2\",kind=\"latency\",sqlstate=\"\"} 3\n"));
    free(m);
    CU_ASSERT_TRUE(px_chaos_remove(e));
    m = render();
    CU_ASSERT_PTR_NOT_NULL(strstr(m, "\npgwarden_chaos_rules 1\n"));
    CU_ASSERT_PTR_NULL(strstr(m, "rule=\"1\""));
    free(m);
    px_chaos_remove(l);
    add_ok("{\"inject\":\"disconnect\",\"when\":\"commit\"}");
    m = render();
    CU_ASSERT_PTR_NOT_NULL(
        strstr(m, "\npgwarden_chaos_injected_total{rule=\"3\",kind=\"disconnect\",sqlstate=\"\"} "
                  "0\n"));
    free(m);
}

void test_chaos_register(void);
void test_chaos_register(void)
{
    static const CU_TestInfo validation[] = {
        {"json_shape_errors", test_json_shape_errors},
        {"json_field_errors", test_json_field_errors},
        {"json_accepted", test_json_accepted},
        {"params_errors", test_params_errors},
        {"params_accepted", test_params_accepted},
        {"probability_tiny", test_probability_tiny},
        {"params_name_utf8", test_params_name_utf8},
        CU_TEST_INFO_NULL,
    };
    static const CU_TestInfo decide[] = {
        {"no_rules", test_no_rules},
        {"actions", test_actions},
        {"default_messages", test_default_messages},
        {"matching", test_matching},
        {"first_rule_decides", test_first_rule_decides},
        {"every_n", test_every_n},
        {"max_count", test_max_count},
        {"matches", test_matches},
        {"probability_reproducible", test_probability_reproducible},
        {"probability_rate", test_probability_rate},
        CU_TEST_INFO_NULL,
    };
    static const CU_TestInfo table[] = {
        {"remove_clear_ids", test_remove_clear_ids},
        {"max_rules", test_max_rules},
        {"list_shape", test_list_shape},
        {"config_parse_errors", test_config_parse_errors},
        {"config_install", test_config_install},
        {"config_install_keeps_prng", test_config_install_keeps_prng},
        {"metrics", test_metrics},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("chaos_validation", suite_init, suite_cleanup, validation);
    cunit_add_suite("chaos_decide", suite_init, suite_cleanup, decide);
    cunit_add_suite("chaos_table", suite_init, suite_cleanup, table);
}
