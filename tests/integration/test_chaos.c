/*
 * test_chaos.c: the fault-injection rules through a real pgwarden (docs/chaos.md,
 * docs/admin-api.md): a [chaos] rule from the config listed at start; POST, GET and
 * DELETE of /chaos and /chaos/<id> over HTTP (201 with the rule and its id, ids never
 * reused, 404 for unknown ids); the admin token required for every mutation (401 without
 * or with a wrong one, 403 when none is configured); 400 with {"error"} naming the field,
 * changing nothing; the metrics; a reload (SIGHUP and POST /reload) replacing the config
 * rules while rules added over HTTP stay, and a bad rule making the reload fail and keep
 * the running rules; a bad rule stopping start and --check with FILE:LINE; queries served
 * while rules are loaded.
 *
 * What an injection does to the client and the server is tested with the statement-path
 * stage (path/fault.c).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_http.h"
#include "itest_util.h"

#define TOKEN "chaos-admin-token"
#define AUTH  "Bearer " TOKEN

#define CONFIG_RULE                                                                                \
    "[chaos]\n"                                                                                    \
    "ser = inject=error sqlstate=40001 probability=0.3 seed=42 application_name=svc\n"

static struct harness_proxy *g_px;       /* admin_token = TOKEN, CONFIG_RULE */
static struct harness_proxy *g_px_plain; /* no admin_token */

static struct harness_proxy_opts opts(const char *pgwarden_extra, const char *tail)
{
    struct harness_proxy_opts o = {.pool_mode = "transaction",
                                   .pool_size = 3,
                                   .auth_type = "scram-sha-256",
                                   .query_wait_timeout_ms = 10000,
                                   .admin = true,
                                   .pgwarden_extra = pgwarden_extra,
                                   .tail_extra = tail};
    return o;
}

static int suite_init(void)
{
    if (itu_suite_init() != 0)
        return 1;
    struct harness_proxy_opts o = opts("admin_token = " TOKEN, CONFIG_RULE);
    g_px = harness_proxy_start(&o);
    o = opts(NULL, NULL);
    g_px_plain = harness_proxy_start(&o);
    return g_px && g_px_plain ? 0 : 1;
}

static int suite_cleanup(void)
{
    int rc = 0;
    struct harness_proxy *all[2] = {g_px, g_px_plain};
    for (int i = 0; i < 2; i++) {
        if (!all[i])
            continue;
        if (harness_proxy_stop(all[i], 0) != 0) {
            harness_proxy_dump_log(all[i], 40);
            rc = 1;
        }
        harness_proxy_free(all[i]);
    }
    g_px = g_px_plain = NULL;
    return rc;
}

/* ---- helpers ------------------------------------------------------------------------------ */

/* method path with a body (may be NULL) and an Authorization value (may be NULL). */
static struct http_reply http_body(int port, const char *method, const char *path, const char *auth,
                                   const char *body)
{
    static char req[16384];
    size_t blen = body ? strlen(body) : 0;
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n%s%s%s\r\n%s",
                     method, path, blen, auth ? "Authorization: " : "", auth ? auth : "",
                     auth ? "\r\n" : "", body ? body : "");
    return http_raw(port, req, (size_t)n);
}

/* The body of r as JSON (owned), or NULL (printed). */
static json_t *body_json(const struct http_reply *r)
{
    json_error_t err;
    json_t *j = r->body ? json_loadb(r->body, r->body_len, 0, &err) : NULL;
    if (!j)
        fprintf(stderr, "status %d, not JSON: %.300s\n", r->status, r->body ? r->body : "");
    if (!r->head || !strcasestr(r->head, "content-type: application/json"))
        fprintf(stderr, "not application/json:\n%s\n", r->head ? r->head : "");
    return j;
}

/* POST /chaos with body: expects status; returns the answer as JSON (owned). */
static json_t *post(int port, const char *body, int status)
{
    struct http_reply r = http_body(port, "POST", "/chaos", AUTH, body);
    if (r.status != status)
        fprintf(stderr, "POST /chaos %s: %d, expected %d: %s\n", body, r.status, status,
                r.body ? r.body : "");
    CU_ASSERT_EQUAL(r.status, status);
    json_t *j = body_json(&r);
    http_reply_free(&r);
    return j;
}

/* POST a rule that must be accepted; returns its id. */
static json_int_t post_ok(int port, const char *body)
{
    json_t *j = post(port, body, 201);
    json_int_t id = json_integer_value(json_object_get(j, "id"));
    CU_ASSERT(id > 0);
    json_decref(j);
    return id;
}

/* POST refused with 400 and an error starting with prefix. */
static void post_refused(int port, const char *body, const char *prefix)
{
    json_t *j = post(port, body, 400);
    const char *e = json_string_value(json_object_get(j, "error"));
    if (!e || strncmp(e, prefix, strlen(prefix)) != 0)
        fprintf(stderr, "POST /chaos %s: error \"%s\", expected \"%s...\"\n", body, e ? e : "",
                prefix);
    CU_ASSERT_PTR_NOT_NULL(e);
    CU_ASSERT_NSTRING_EQUAL(e ? e : "", prefix, strlen(prefix));
    CU_ASSERT_EQUAL(json_object_size(j), 1);
    json_decref(j);
}

/* GET /chaos: the rules array (a new reference). */
static json_t *rules(struct harness_proxy *px, const char *auth)
{
    json_t *j = get_json(px->admin_port, "/chaos", auth);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_FATAL(json_is_array(j));
    return j;
}

static json_t *by_id(json_t *arr, json_int_t id)
{
    size_t i;
    json_t *r;
    json_array_foreach(arr, i, r)
    {
        if (json_integer_value(json_object_get(r, "id")) == id)
            return r;
    }
    return NULL;
}

static const char *str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "(none)";
}

/* DELETE /chaos (every rule) on g_px; returns how many were removed. */
static json_int_t clear_all(void)
{
    struct http_reply r = http(g_px->admin_port, "DELETE", "/chaos", AUTH);
    CU_ASSERT_EQUAL(r.status, 200);
    json_t *j = body_json(&r);
    json_int_t n = json_integer_value(json_object_get(j, "removed"));
    json_decref(j);
    http_reply_free(&r);
    return n;
}

/* The line of the config file that starts with prefix (0 if none). */
static int config_line(const struct harness_proxy *px, const char *prefix)
{
    FILE *f = fopen(px->config_path, "r");
    if (!f)
        return 0;
    char buf[4096];
    int line = 0, found = 0;
    while (!found && fgets(buf, sizeof buf, f)) {
        line++;
        if (strncmp(buf, prefix, strlen(prefix)) == 0)
            found = line;
    }
    fclose(f);
    return found;
}

/* Waits up to 5 s for needle in px's log. */
static bool log_waits_for(struct harness_proxy *px, const char *needle)
{
    for (int i = 0; i < 100; i++) {
        if (harness_proxy_log_contains(px, needle))
            return true;
        itu_sleep_ms(50);
    }
    return false;
}

/* ---- tests -------------------------------------------------------------------------------- */

/* Runs first: the config rule is there from the start, with id 1. */
static void test_config_rule_listed_at_start(void)
{
    json_t *arr = rules(g_px, AUTH);
    CU_ASSERT_EQUAL_FATAL(json_array_size(arr), 1);
    json_t *r = json_array_get(arr, 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "id")), 1);
    CU_ASSERT_STRING_EQUAL(str(r, "name"), "ser");
    CU_ASSERT_STRING_EQUAL(str(r, "source"), "config");
    CU_ASSERT_STRING_EQUAL(str(r, "inject"), "error");
    CU_ASSERT_STRING_EQUAL(str(r, "sqlstate"), "40001");
    CU_ASSERT_STRING_EQUAL(str(r, "message"),
                           "could not serialize access due to concurrent update");
    CU_ASSERT_STRING_EQUAL(str(r, "when"), "statement");
    CU_ASSERT_STRING_EQUAL(str(r, "application_name"), "svc");
    CU_ASSERT_DOUBLE_EQUAL(json_real_value(json_object_get(r, "probability")), 0.3, 1e-12);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "seed")), 42);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "matched")), 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "injected")), 0);
    json_decref(arr);
    /* The plain instance has none. */
    arr = rules(g_px_plain, NULL);
    CU_ASSERT_EQUAL(json_array_size(arr), 0);
    json_decref(arr);
}

static void test_post_get_delete(void)
{
    int port = g_px->admin_port;
    json_t *j = post(port,
                     "{\"inject\":\"latency\",\"latency_ms\":25,\"every_n\":4,\"database\":"
                     "\"pgwarden_test\",\"when\":\"commit\"}",
                     201);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    json_int_t a = json_integer_value(json_object_get(j, "id"));
    CU_ASSERT(a > 1);
    CU_ASSERT_STRING_EQUAL(str(j, "source"), "api");
    CU_ASSERT_STRING_EQUAL(str(j, "inject"), "latency");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "latency_ms")), 25);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "every_n")), 4);
    CU_ASSERT_STRING_EQUAL(str(j, "when"), "commit");
    CU_ASSERT_TRUE(json_is_null(json_object_get(j, "name")));
    json_decref(j);
    json_int_t b =
        post_ok(port, "{\"inject\":\"error\",\"sqlstate\":\"40P01\",\"user\":\"nobody\"}");
    CU_ASSERT_EQUAL(b, a + 1);

    json_t *arr = rules(g_px, AUTH);
    CU_ASSERT_PTR_NOT_NULL(by_id(arr, 1));
    CU_ASSERT_PTR_NOT_NULL(by_id(arr, a));
    CU_ASSERT_STRING_EQUAL(str(by_id(arr, b), "message"), "deadlock detected");
    json_decref(arr);

    /* A query string on a request that changes something is refused, not ignored (DELETE
     * /chaos?id=N would have cleared every rule), and nothing is removed. */
    struct http_reply q = http(port, "DELETE", "/chaos?id=1", AUTH);
    CU_ASSERT_EQUAL(q.status, 400);
    http_reply_free(&q);
    arr = get_json(port, "/chaos", AUTH);
    CU_ASSERT_PTR_NOT_NULL(by_id(arr, a));
    json_decref(arr);

    /* One rule: GET and DELETE. */
    char path[64];
    snprintf(path, sizeof path, "/chaos/%lld", (long long)a);
    j = get_json(port, path, AUTH);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "id")), a);
    json_decref(j);
    struct http_reply r = http(port, "DELETE", path, AUTH);
    CU_ASSERT_EQUAL(r.status, 200);
    j = body_json(&r);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "removed")), 1);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "id")), a);
    json_decref(j);
    http_reply_free(&r);
    r = http(port, "DELETE", path, AUTH);
    CU_ASSERT_EQUAL(r.status, 404);
    CU_ASSERT_PTR_NOT_NULL(r.body ? strstr(r.body, "\"error\"") : NULL);
    http_reply_free(&r);
    r = http(port, "GET", path, AUTH);
    CU_ASSERT_EQUAL(r.status, 404);
    http_reply_free(&r);
    const char *bad_ids[] = {"/chaos/abc", "/chaos/0", "/chaos/-1", "/chaos/1x", "/chaos/"};
    for (size_t i = 0; i < sizeof bad_ids / sizeof *bad_ids; i++) {
        r = http(port, "DELETE", bad_ids[i], AUTH);
        CU_ASSERT_EQUAL(r.status, 400);
        http_reply_free(&r);
    }
    r = http(port, "DELETE", "/chaos/99999", AUTH);
    CU_ASSERT_EQUAL(r.status, 404);
    http_reply_free(&r);
    r = http(port, "PUT", "/chaos", AUTH);
    CU_ASSERT_EQUAL(r.status, 405);
    http_reply_free(&r);

    /* Ids are never reused. */
    json_int_t c = post_ok(port, "{\"inject\":\"disconnect\",\"database\":\"nowhere\"}");
    CU_ASSERT_EQUAL(c, b + 1);
    arr = rules(g_px, AUTH);
    CU_ASSERT_PTR_NULL(by_id(arr, a));
    CU_ASSERT_EQUAL(json_array_size(arr), 3);
    json_decref(arr);

    /* DELETE /chaos removes every rule, the config's too, and says how many. */
    CU_ASSERT_EQUAL(clear_all(), 3);
    arr = rules(g_px, AUTH);
    CU_ASSERT_EQUAL(json_array_size(arr), 0);
    json_decref(arr);
    CU_ASSERT_EQUAL(clear_all(), 0);
    CU_ASSERT_EQUAL(post_ok(port, "{\"inject\":\"disconnect\",\"database\":\"nowhere\"}"), c + 1);
    clear_all();
}

static void test_token_required(void)
{
    int port = g_px->admin_port;
    const char *rule = "{\"inject\":\"disconnect\",\"database\":\"nowhere\"}";
    const char *auths[] = {NULL, "Bearer wrong", "Basic " TOKEN};
    for (size_t i = 0; i < 3; i++) {
        struct http_reply r = http_body(port, "POST", "/chaos", auths[i], rule);
        CU_ASSERT_EQUAL(r.status, 401);
        http_reply_free(&r);
        r = http(port, "DELETE", "/chaos", auths[i]);
        CU_ASSERT_EQUAL(r.status, 401);
        http_reply_free(&r);
        r = http(port, "DELETE", "/chaos/1", auths[i]);
        CU_ASSERT_EQUAL(r.status, 401);
        http_reply_free(&r);
        r = http(port, "GET", "/chaos", auths[i]); /* a token is set: reads need it too */
        CU_ASSERT_EQUAL(r.status, 401);
        http_reply_free(&r);
    }
    json_t *arr = rules(g_px, AUTH);
    CU_ASSERT_EQUAL(json_array_size(arr), 0);
    json_decref(arr);

    /* No admin_token configured: reading works, mutations are refused with 403. */
    port = g_px_plain->admin_port;
    struct http_reply r = http_body(port, "POST", "/chaos", NULL, rule);
    CU_ASSERT_EQUAL(r.status, 403);
    http_reply_free(&r);
    r = http_body(port, "POST", "/chaos", "Bearer anything", rule);
    CU_ASSERT_EQUAL(r.status, 403);
    http_reply_free(&r);
    r = http(port, "DELETE", "/chaos", NULL);
    CU_ASSERT_EQUAL(r.status, 403);
    http_reply_free(&r);
    r = http(port, "DELETE", "/chaos/1", NULL);
    CU_ASSERT_EQUAL(r.status, 403);
    http_reply_free(&r);
    arr = rules(g_px_plain, NULL);
    CU_ASSERT_EQUAL(json_array_size(arr), 0);
    json_decref(arr);
}

static void test_bad_rules_refused(void)
{
    int port = g_px->admin_port;
    post_refused(port, "{\"inject\":\"error\",\"sqlstate\":\"40001\",\"probabilty\":0.5}",
                 "unknown field \"probabilty\"");
    post_refused(port, "{\"inject\":\"error\",\"sqlstate\":\"40001\",\"probability\":1.5}",
                 "probability: must be greater than 0 and at most 1");
    post_refused(port, "{\"inject\":\"error\",\"sqlstate\":\"4001\"}", "sqlstate: must be 5");
    post_refused(port, "{\"inject\":\"error\"}", "sqlstate: required with inject=error");
    post_refused(port, "{\"inject\":\"latency\"}", "latency_ms: required with inject=latency");
    post_refused(port, "{\"inject\":\"latency\",\"latency_ms\":-5}", "latency_ms: must be 0 to");
    post_refused(port, "{\"inject\":\"latency\",\"latency_ms\":5,\"when\":\"connect\"}",
                 "when: latency at connect is not supported");
    post_refused(port, "{\"inject\":\"disconnect\",\"probability\":0.5,\"every_n\":2}",
                 "every_n: give probability or every_n, not both");
    post_refused(port, "{\"inject\":\"disconnect\",\"every_n\":0}", "every_n: must be 1 to");
    post_refused(port, "{\"inject\":\"teleport\"}", "inject: must be error, latency or disconnect");
    post_refused(port, "{\"inject\":\"disconnect\",\"max_count\":\"3\"}",
                 "max_count: must be an integer");
    post_refused(port, "{}", "inject: required");
    post_refused(port, "[1,2]", "a rule is a JSON object");
    post_refused(port, "{\"inject\":", "invalid JSON");
    post_refused(port, "{\"inject\":\"disconnect\",\"inject\":\"disconnect\"}", "invalid JSON");
    post_refused(port, NULL, "a JSON request body is required");
    json_t *arr = rules(g_px, AUTH);
    CU_ASSERT_EQUAL(json_array_size(arr), 0); /* nothing half-applied */
    json_decref(arr);
}

static void test_metrics(void)
{
    json_int_t id = post_ok(g_px->admin_port,
                            "{\"inject\":\"error\",\"sqlstate\":\"40P01\",\"database\":\"none\"}");
    struct http_reply r = http(g_px->admin_port, "GET", "/metrics", AUTH);
    CU_ASSERT_EQUAL_FATAL(r.status, 200);
    struct series *s = NULL;
    int n = 0;
    CU_ASSERT_EQUAL(check_exposition(r.body, &s, &n), 0);
    char key[256];
    snprintf(key, sizeof key, "pgwarden_chaos_injected_total|rule=%lld,kind=error,sqlstate=40P01,|",
             (long long)id);
    CU_ASSERT_EQUAL(series_value(s, n, key), 0);
    CU_ASSERT_EQUAL(series_value(s, n, "pgwarden_chaos_rules||"), 1);
    free(s);
    http_reply_free(&r);
    clear_all();
    r = http(g_px->admin_port, "GET", "/metrics", AUTH);
    CU_ASSERT_EQUAL(check_exposition(r.body, &s, &n), 0);
    CU_ASSERT_EQUAL(series_value(s, n, "pgwarden_chaos_rules||"), 0);
    CU_ASSERT_EQUAL(series_value(s, n, key), -1); /* the removed rule's series is gone */
    free(s);
    http_reply_free(&r);
}

/* Queries go through with rules loaded that match nothing. */
static void test_traffic_with_rules(void)
{
    post_ok(g_px->admin_port, "{\"inject\":\"error\",\"sqlstate\":\"40001\",\"database\":\"x\"}");
    PGconn *c = harness_connect(g_px, "application_name=svc2");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    for (int i = 0; i < 20; i++)
        CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 41 + 1"), "42");
    PQfinish(c);
    clear_all();
}

/* A reload replaces the config rules; rules added over HTTP stay; an unchanged config rule
 * keeps its id and counters. */
static void test_reload_replaces_config_rules(void)
{
    struct harness_proxy_opts o =
        opts("admin_token = " TOKEN, "[chaos]\n"
                                     "keep = inject=disconnect database=nowhere\n"
                                     "change = inject=latency latency_ms=10 database=nowhere\n"
                                     "drop = inject=disconnect when=commit database=nowhere\n");
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    json_int_t api = post_ok(px->admin_port, "{\"inject\":\"disconnect\",\"user\":\"nobody\"}");
    CU_ASSERT_EQUAL(api, 4);

    o.tail_extra = "[chaos]\n"
                   "keep = inject=disconnect   database='nowhere'\n"
                   "change = inject=latency latency_ms=20 database=nowhere\n"
                   "new = inject=error sqlstate=57P01 when=commit database=nowhere\n";
    CU_ASSERT_EQUAL_FATAL(harness_proxy_rewrite_config(px, &o), 0);
    CU_ASSERT_EQUAL(harness_proxy_signal(px, SIGHUP), 0);
    CU_ASSERT_TRUE(log_waits_for(px, "configuration reloaded"));
    json_t *arr = rules(px, AUTH);
    CU_ASSERT_EQUAL_FATAL(json_array_size(arr), 4);
    static const json_int_t want_ids[] = {1, 4, 5, 6};
    static const char *const want_names[] = {"keep", "(none)", "change", "new"};
    for (size_t i = 0; i < 4; i++) {
        json_t *r = json_array_get(arr, i);
        CU_ASSERT_EQUAL(json_integer_value(json_object_get(r, "id")), want_ids[i]);
        CU_ASSERT_STRING_EQUAL(str(r, "name"), want_names[i]);
    }
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(by_id(arr, 5), "latency_ms")), 20);
    CU_ASSERT_STRING_EQUAL(str(by_id(arr, 6), "message"),
                           "terminating connection due to administrator command");
    json_decref(arr);

    /* A bad rule: POST /reload answers 400 with FILE:LINE, the rules stay as they are. */
    o.tail_extra = "[chaos]\n"
                   "keep = inject=disconnect database=nowhere\n"
                   "bad = inject=error sqlstate=40001 probability=2\n";
    CU_ASSERT_EQUAL_FATAL(harness_proxy_rewrite_config(px, &o), 0);
    int line = config_line(px, "bad = ");
    CU_ASSERT(line > 0);
    char want[700];
    snprintf(want, sizeof want,
             "%s:%d: [chaos] bad: probability: must be greater than 0 and at most 1 (got 2)",
             px->config_path, line);
    struct http_reply r = http(px->admin_port, "POST", "/reload", AUTH);
    CU_ASSERT_EQUAL(r.status, 400);
    json_t *j = body_json(&r);
    CU_ASSERT_STRING_EQUAL(str(j, "error"), want);
    json_decref(j);
    http_reply_free(&r);
    CU_ASSERT_TRUE(log_waits_for(px, "reload failed, keeping the running configuration"));
    arr = rules(px, AUTH);
    CU_ASSERT_EQUAL(json_array_size(arr), 4);
    json_decref(arr);

    /* No [chaos] section: only the HTTP rule stays (POST /reload this time). */
    o.tail_extra = NULL;
    CU_ASSERT_EQUAL_FATAL(harness_proxy_rewrite_config(px, &o), 0);
    r = http(px->admin_port, "POST", "/reload", AUTH);
    CU_ASSERT_EQUAL(r.status, 200);
    http_reply_free(&r);
    arr = rules(px, AUTH);
    CU_ASSERT_EQUAL_FATAL(json_array_size(arr), 1);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_array_get(arr, 0), "id")), api);
    json_decref(arr);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* A bad [chaos] line stops start and --check, naming the file and line. */
static void test_bad_rule_stops_start(void)
{
    struct harness_proxy_opts o = opts(NULL, "[chaos]\n"
                                             "ok = inject=disconnect\n"
                                             "typo = inject=error sqlstate=40001 evry_n=3\n");
    struct harness_proxy *px = harness_proxy_prepare(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    int line = config_line(px, "typo = ");
    CU_ASSERT(line > 0);
    char want[700];
    snprintf(want, sizeof want, "%s:%d: [chaos] typo: unknown field \"evry_n\"", px->config_path,
             line);
    const char *argv[] = {harness_pgwarden_path(), "-c", px->config_path, "--check", NULL};
    char *out = NULL;
    CU_ASSERT_EQUAL(harness_run(argv, 30000, &out), 1);
    CU_ASSERT_PTR_NOT_NULL(out ? strstr(out, want) : NULL);
    if (!out || !strstr(out, want))
        fprintf(stderr, "--check said:\n%s\nexpected: %s\n", out ? out : "", want);
    free(out);
    CU_ASSERT_NOT_EQUAL(harness_proxy_launch(px), 0);
    CU_ASSERT_FALSE(harness_proxy_alive(px));
    CU_ASSERT_EQUAL(px->exit_status, 1);
    CU_ASSERT_TRUE(harness_proxy_log_contains(px, want));
    harness_proxy_free(px);

    /* Two rules with one name. */
    o.tail_extra = "[chaos]\na = inject=disconnect\na = inject=disconnect\n";
    px = harness_proxy_prepare(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    out = NULL;
    const char *argv2[] = {harness_pgwarden_path(), "-c", px->config_path, "--check", NULL};
    CU_ASSERT_EQUAL(harness_run(argv2, 30000, &out), 1);
    CU_ASSERT_PTR_NOT_NULL(out ? strstr(out, "[chaos] a: duplicate rule name") : NULL);
    free(out);
    harness_proxy_free(px);

    /* A valid [chaos] section passes --check. */
    o.tail_extra = CONFIG_RULE;
    px = harness_proxy_prepare(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    const char *argv3[] = {harness_pgwarden_path(), "-c", px->config_path, "--check", NULL};
    CU_ASSERT_EQUAL(harness_run(argv3, 30000, NULL), 0);
    harness_proxy_free(px);
}

static void register_suites(void)
{
    static const CU_TestInfo tests[] = {
        {"config_rule_listed_at_start", test_config_rule_listed_at_start},
        {"post_get_delete", test_post_get_delete},
        {"token_required", test_token_required},
        {"bad_rules_refused", test_bad_rules_refused},
        {"metrics", test_metrics},
        {"traffic_with_rules", test_traffic_with_rules},
        {"reload_replaces_config_rules", test_reload_replaces_config_rules},
        {"bad_rule_stops_start", test_bad_rule_stops_start},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("chaos", suite_init, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
