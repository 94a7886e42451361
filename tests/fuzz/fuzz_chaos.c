/*
 * fuzz_chaos.c: the fault-injection rule engine (chaos/chaos.c): rules from the admin API's
 * JSON (px_chaos_add_json) and from [chaos] parameters (px_chaos_add_config), whole [chaos]
 * sections of a config file (px_config_load, px_chaos_config_parse, _install), decisions,
 * removal and clearing, in any order.
 *
 * Oracle, after every operation: the list (px_chaos_list_json) is valid UTF-8 JSON, an
 * array of px_chaos_nrules objects with the 18 fields in order and increasing ids; a rule
 * is added exactly when no error comes back (and then with the next id), a refusal changes
 * nothing.  Both forms accept the same rules: every rule accepted from one form, written
 * back in the other from its listed fields, is accepted with the same fields.  A decision
 * agrees with a model walking the list as it was (filters, matched / injected counters,
 * max_count, every_n; a probability rule fires when the engine says so) and the counters
 * move exactly as the model says.  An install keeps the API rules and leaves one config
 * rule per [chaos] line.
 *
 * Input: operations until the input ends, each an opcode byte and its parts.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fuzz_common.h"
#include "base/config.h"
#include "base/log.h"
#include "chaos/chaos.h"
#include "metrics/metrics.h"

#define MAX_OPS 48

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char *err = NULL;
    px_log_set_level(PX_LOG_ERROR); /* adding a rule and an injection log at info */
    if (px_metrics_init(1, &err) < 0)
        abort();
    (void)argc;
    (void)argv;
    return 0;
}

static const char *const rule_keys[] = {
    "id",         "name", "source",           "inject",   "sqlstate", "message",
    "latency_ms", "when", "probability",      "seed",     "every_n",  "max_count",
    "database",   "user", "application_name", "lock_key", "matched",  "injected",
};
#define NKEYS (sizeof rule_keys / sizeof rule_keys[0])
/* The fields a rule is given with: rule_keys[FIRST_FIELD .. LAST_FIELD]. */
#define FIRST_FIELD 3
#define LAST_FIELD  15

static uint64_t next_id; /* the id the next rule gets */

/* The list, checked; a new reference.  After an install, which gives ids of its own, the
 * ids only have to be increasing, and next_id follows the largest. */
FUZZ_NO_COVERAGE static json_t *list_after(bool install)
{
    char *text = px_chaos_list_json();
    FUZZ_CHECK(text != NULL);
    FUZZ_CHECK(fuzz_utf8_ok(text, strlen(text)));
    json_error_t e;
    json_t *a = json_loads(text, JSON_REJECT_DUPLICATES, &e);
    free(text);
    FUZZ_CHECK(a && json_is_array(a) && json_array_size(a) == px_chaos_nrules);
    uint64_t last = 0;
    size_t i;
    json_t *r;
    json_array_foreach(a, i, r)
    {
        FUZZ_CHECK(json_is_object(r) && json_object_size(r) == NKEYS);
        void *it = json_object_iter(r);
        for (size_t k = 0; k < NKEYS; k++, it = json_object_iter_next(r, it))
            FUZZ_CHECK(it && strcmp(json_object_iter_key(it), rule_keys[k]) == 0);
        uint64_t id = (uint64_t)json_integer_value(json_object_get(r, "id"));
        FUZZ_CHECK(id > last && (install || id < next_id));
        last = id;
    }
    if (last >= next_id)
        next_id = last + 1;
    return a;
}

static json_t *list(void)
{
    return list_after(false);
}

FUZZ_NO_COVERAGE static json_t *find(json_t *rules, uint64_t id)
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

static json_t *last_rule(void)
{
    json_t *a = list();
    json_t *r = json_incref(json_array_get(a, json_array_size(a) - 1));
    json_decref(a);
    FUZZ_CHECK(r && (uint64_t)json_integer_value(json_object_get(r, "id")) == next_id - 1);
    return r;
}

FUZZ_NO_COVERAGE static bool same_fields(json_t *a, json_t *b)
{
    for (size_t k = FIRST_FIELD; k <= LAST_FIELD; k++)
        if (!json_equal(json_object_get(a, rule_keys[k]), json_object_get(b, rule_keys[k])))
            return false;
    return true;
}

/* rule's given fields as [chaos] parameters: key='value' ('' and \\ escaped). */
FUZZ_NO_COVERAGE static char *as_params(json_t *rule)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    FUZZ_CHECK(f != NULL);
    for (size_t k = FIRST_FIELD; k <= LAST_FIELD; k++) {
        json_t *v = json_object_get(rule, rule_keys[k]);
        if (json_is_integer(v)) {
            fprintf(f, "%s=%" JSON_INTEGER_FORMAT " ", rule_keys[k], json_integer_value(v));
        } else if (json_is_real(v)) {
            fprintf(f, "%s=%.17g ", rule_keys[k], json_real_value(v));
        } else if (json_is_string(v)) {
            fprintf(f, "%s='", rule_keys[k]);
            for (const char *s = json_string_value(v); *s; s++)
                fputs(*s == '\'' ? "''" : *s == '\\' ? "\\\\" : (char[]){*s, 0}, f);
            fputs("' ", f);
        }
    }
    fclose(f);
    return buf;
}

/* rule's given fields as a JSON object text. */
FUZZ_NO_COVERAGE static char *as_json(json_t *rule)
{
    json_t *o = json_object();
    for (size_t k = FIRST_FIELD; k <= LAST_FIELD; k++) {
        json_t *v = json_object_get(rule, rule_keys[k]);
        if (!json_is_null(v))
            json_object_set(o, rule_keys[k], v);
    }
    char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(o);
    FUZZ_CHECK(text != NULL);
    return text;
}

/* The rule just added (the last one), added again in the other form: accepted, the same
 * fields; then removed again. */
static void other_form(bool from_json)
{
    json_t *orig = last_rule();
    char *err = NULL;
    if (from_json) {
        json_t *all = list();
        size_t i;
        json_t *r;
        bool taken = false;
        json_array_foreach(all, i, r)
        {
            json_t *name = json_object_get(r, "name");
            taken |= json_is_string(name) && strcmp(json_string_value(name), "roundtrip") == 0;
        }
        json_decref(all);
        if (taken) { /* a config rule of the input has the name */
            json_decref(orig);
            return;
        }
        char *params = as_params(orig);
        int rc = px_chaos_add_config("roundtrip", params, &err);
        if (rc != 0)
            fprintf(stderr, "refused [chaos] form: %s\n  %s\n", params, err);
        FUZZ_CHECK(rc == 0 && !err);
        free(params);
    } else {
        char *json = as_json(orig);
        char *out = px_chaos_add_json(json, strlen(json), &err);
        if (!out)
            fprintf(stderr, "refused JSON form: %s\n  %s\n", json, err);
        FUZZ_CHECK(out && !err);
        free(out);
        free(json);
    }
    next_id++;
    json_t *again = last_rule();
    FUZZ_CHECK(same_fields(orig, again));
    FUZZ_CHECK(px_chaos_remove(next_id - 1));
    json_decref(again);
    json_decref(orig);
}

static void add_json(struct fuzz_in *in)
{
    size_t n;
    const uint8_t *p = fuzz_part(in, 2048, &n);
    char *json = fuzz_strdup(p, n);
    size_t before = px_chaos_nrules;
    char *err = NULL;
    char *out = px_chaos_add_json(json, n, &err);
    FUZZ_CHECK(!out != !err);
    if (out) {
        FUZZ_CHECK(px_chaos_nrules == before + 1);
        next_id++;
        json_t *r = json_loads(out, 0, NULL), *l = last_rule();
        FUZZ_CHECK(r && json_equal(r, l));
        json_decref(r);
        json_decref(l);
        other_form(true);
    } else {
        FUZZ_CHECK(px_chaos_nrules == before); /* err may quote the input: the API escapes it */
    }
    free(out);
    free(err);
    free(json);
}

static void add_config(struct fuzz_in *in)
{
    size_t nn, np;
    const uint8_t *name = fuzz_part(in, 64, &nn);
    const uint8_t *params = fuzz_part(in, 1024, &np);
    char *n = fuzz_strdup(name, nn), *p = fuzz_strdup(params, np);
    size_t before = px_chaos_nrules;
    char *err = NULL;
    int rc = px_chaos_add_config(n, p, &err);
    FUZZ_CHECK((rc == 0) == !err);
    if (rc == 0) {
        FUZZ_CHECK(px_chaos_nrules == before + 1);
        next_id++;
        json_t *l = last_rule();
        FUZZ_CHECK(json_is_string(json_object_get(l, "name")) &&
                   strcmp(json_string_value(json_object_get(l, "source")), "config") == 0);
        json_decref(l);
        other_form(false);
    } else {
        FUZZ_CHECK(px_chaos_nrules == before);
    }
    free(err);
    free(n);
    free(p);
}

static bool holds_lock(void *arg, const char *key, size_t keylen)
{
    uint8_t mask = *(const uint8_t *)arg;
    return mask >> ((keylen + (uint8_t)key[0]) % 8) & 1;
}

FUZZ_NO_COVERAGE static bool text_matches(json_t *want, const char *have)
{
    return json_is_null(want) || strcmp(json_string_value(want), have ? have : "") == 0;
}

FUZZ_NO_COVERAGE static uint64_t uint_of(json_t *r, const char *key)
{
    return (uint64_t)json_integer_value(json_object_get(r, key));
}

static void decide(struct fuzz_in *in)
{
    static const char *const whens[] = {"statement", "commit", "connect"};
    uint8_t flags = fuzz_u8(in), mask = fuzz_u8(in);
    size_t n[3];
    const uint8_t *p[3];
    for (int i = 0; i < 3; i++)
        p[i] = fuzz_part(in, 32, &n[i]);
    char *s[3];
    for (int i = 0; i < 3; i++)
        s[i] = flags & (8 << i) ? NULL : fuzz_strdup(p[i], n[i]);
    struct px_chaos_ctx ctx = {
        .when = (enum px_chaos_when)(flags % 3),
        .database = s[0],
        .user = s[1],
        .application_name = s[2],
        .client_id = 7,
        .holds_lock = flags & 64 ? NULL : holds_lock,
        .arg = &mask,
    };
    json_t *before = list();
    struct px_chaos_action act;
    bool got = px_chaos_decide(&ctx, &act);
    FUZZ_CHECK(got == (act.kind != PX_CHAOS_NONE));

    /* The model: the rules in id order, as listed before. */
    json_t *winner = NULL;
    size_t i;
    json_t *r;
    json_array_foreach(before, i, r)
    {
        json_t *key = json_object_get(r, "lock_key");
        bool match =
            strcmp(json_string_value(json_object_get(r, "when")), whens[ctx.when]) == 0 &&
            text_matches(json_object_get(r, "database"), ctx.database) &&
            text_matches(json_object_get(r, "user"), ctx.user) &&
            text_matches(json_object_get(r, "application_name"), ctx.application_name) &&
            (json_is_null(key) || (ctx.holds_lock && holds_lock(&mask, json_string_value(key),
                                                                json_string_length(key))));
        if (!match)
            continue;
        uint64_t matched = uint_of(r, "matched") + 1, injected = uint_of(r, "injected");
        json_object_set_new(r, "matched", json_integer((json_int_t)matched));
        uint64_t max = uint_of(r, "max_count"), every = uint_of(r, "every_n");
        bool fires;
        if (max && injected >= max)
            fires = false;
        else if (every)
            fires = matched % every == 0;
        else if (!json_is_null(json_object_get(r, "probability")))
            fires = got && act.rule_id == uint_of(r, "id");
        else
            fires = true;
        if (fires) {
            json_object_set_new(r, "injected", json_integer((json_int_t)injected + 1));
            winner = r;
            break;
        }
    }
    FUZZ_CHECK(got == (winner != NULL));
    if (winner) {
        static const char *const kinds[] = {"", "error", "latency", "disconnect"};
        FUZZ_CHECK(act.rule_id == uint_of(winner, "id"));
        FUZZ_CHECK(act.kind <= PX_CHAOS_DISCONNECT &&
                   strcmp(kinds[act.kind], json_string_value(json_object_get(winner, "inject"))) ==
                       0);
        if (act.kind == PX_CHAOS_ERROR) {
            FUZZ_CHECK(
                strcmp(act.sqlstate, json_string_value(json_object_get(winner, "sqlstate"))) == 0);
            FUZZ_CHECK(strcmp(act.message, json_string_value(json_object_get(winner, "message"))) ==
                       0);
        }
        if (act.kind == PX_CHAOS_LATENCY)
            FUZZ_CHECK(act.latency_ms == uint_of(winner, "latency_ms"));
    }
    json_t *after = list();
    FUZZ_CHECK(json_equal(before, after));
    json_decref(after);
    json_decref(before);
    for (int k = 0; k < 3; k++)
        free(s[k]);
}

static void config(struct fuzz_in *in)
{
    size_t n;
    const uint8_t *p = fuzz_part(in, 2048, &n);
    static const char head[] = "[pgwarden]\nauth_type = trust\n[chaos]\n";
    uint8_t *text = malloc(sizeof head - 1 + n + 1);
    FUZZ_CHECK(text != NULL);
    memcpy(text, head, sizeof head - 1);
    memcpy(text + sizeof head - 1, p, n);
    struct px_config *cfg = NULL;
    char *err = NULL;
    json_t *before = list();
    bool installed = false;
    if (px_config_load(fuzz_file(text, sizeof head - 1 + n), &cfg, &err) == 0) {
        struct px_chaos_rules *rules = px_chaos_config_parse(cfg, &err);
        FUZZ_CHECK(!rules != !err);
        if (rules) {
            px_chaos_config_install(rules);
            installed = true;
            json_t *after = list_after(true);
            size_t nconfig = 0, i;
            json_t *r;
            json_array_foreach(after, i, r)
            {
                json_t *name = json_object_get(r, "name");
                if (json_is_null(name))
                    continue;
                nconfig++;
                bool listed = false;
                for (size_t k = 0; k < cfg->nchaos; k++)
                    listed |= strcmp(cfg->chaos[k].name, json_string_value(name)) == 0;
                FUZZ_CHECK(listed);
            }
            FUZZ_CHECK(nconfig == cfg->nchaos);
            json_array_foreach(before, i, r)
            {
                if (json_is_null(json_object_get(r, "name")))
                    FUZZ_CHECK(json_equal(r, find(after, uint_of(r, "id"))));
            }
            json_decref(after);
        }
        px_config_free(cfg);
    }
    if (!installed) { /* a refused file changes nothing */
        json_t *after = list();
        FUZZ_CHECK(json_equal(before, after));
        json_decref(after);
    }
    if (getenv("FUZZ_CHAOS_DEBUG") && err)
        fprintf(stderr, "config refused: %s\n", err);
    json_decref(before);
    free(err);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size};
    next_id = 1;
    for (int op = 0; op < MAX_OPS && in.n > 0; op++) {
        switch (fuzz_u8(&in) % 7) {
        case 0: add_json(&in); break;
        case 1: add_config(&in); break;
        case 2:
        case 3: decide(&in); break;
        case 4: {
            uint64_t id = fuzz_u8(&in) % (next_id + 1);
            json_t *before = list();
            bool had = find(before, id) != NULL;
            FUZZ_CHECK(px_chaos_remove(id) == had);
            FUZZ_CHECK(px_chaos_nrules == json_array_size(before) - had);
            json_decref(before);
            break;
        }
        case 5: {
            size_t n = px_chaos_nrules;
            FUZZ_CHECK(px_chaos_clear() == n && px_chaos_nrules == 0);
            break;
        }
        default: config(&in); break;
        }
    }
    json_decref(list()); /* every operation but clear checked the list already */
    px_chaos_shutdown();
    return 0;
}
