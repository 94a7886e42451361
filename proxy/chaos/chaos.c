/*
 * chaos.c: the fault-injection rule engine (interface and contracts in chaos.h, user guide
 * in docs/chaos.md).
 *
 * Owns:
 *   - the field table: every field of a rule (the same names in JSON and in [chaos] lines),
 *     its type and range.  A rule is read from either form into a struct def by the same
 *     per-field checks (field_check) and cross-field checks (def_check), so the two forms
 *     accept exactly the same rules and word errors the same way;
 *   - the rule table: a list in id order (ids 1, 2, ... never reused while the process
 *     runs), px_chaos_nrules, the per-rule PRNG and counters, and the rules' metric
 *     series (pgwarden_chaos_injected_total{rule,kind,sqlstate}, pgwarden_chaos_rules);
 *   - px_chaos_decide: the first rule (in id order) whose filters match and that fires.
 *
 * Reproducibility: a probability rule draws once per statement it matches (never for
 * statements it does not match, nor once max_count is reached) from its own splitmix64
 * generator seeded with `seed`, so the same sequence of matching statements gets the same
 * injections whatever other traffic and other rules do, as long as no earlier rule takes
 * the statement first.
 *
 * No I/O besides the log line of an injection.  Event loop thread only.  Requires the
 * metrics registry (px_metrics_init) before the first rule is added.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/config.h"
#include "base/json_util.h"
#include "base/log.h"
#include "chaos/chaos.h"
#include "lockmgr/lockmgr.h"
#include "metrics/metrics.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#define MAX_LATENCY_MS 600000u /* 10 minutes */
#define MAX_MESSAGE    1000    /* bytes */
#define MAX_NAME       256     /* database, user, application_name */
#define MAX_COUNT      ((uint64_t)INT64_MAX)
#define ERRLEN         512

/* ---- fields ------------------------------------------------------------------------------ */

enum fid {
    F_INJECT = 0,
    F_SQLSTATE,
    F_MESSAGE,
    F_LATENCY_MS,
    F_WHEN,
    F_PROBABILITY,
    F_SEED,
    F_EVERY_N,
    F_MAX_COUNT,
    F_DATABASE,
    F_USER,
    F_APPLICATION_NAME,
    F_LOCK_KEY,
    F__COUNT
};

enum ftype {
    FT_ENUM,     /* a string among names[] */
    FT_SQLSTATE, /* 5 characters [0-9A-Z] */
    FT_TEXT,     /* a string of min..max bytes, valid UTF-8 */
    FT_UINT,     /* an integer in min..max */
    FT_PROB,     /* a number, 0 < p <= 1 */
};

struct field {
    const char *name;
    enum ftype type;
    uint64_t min, max;        /* UINT: range; TEXT: length in bytes */
    const char *const *names; /* ENUM: NULL-terminated, index = value */
};

static const char *const inject_names[] = {"", "error", "latency", "disconnect", NULL};
static const char *const when_names[] = {"statement", "commit", "connect", NULL};

_Static_assert(PX_CHAOS_ERROR == 1 && PX_CHAOS_LATENCY == 2 && PX_CHAOS_DISCONNECT == 3,
               "inject_names follow enum px_chaos_kind");
_Static_assert(PX_CHAOS_STATEMENT == 0 && PX_CHAOS_COMMIT == 1 && PX_CHAOS_CONNECT == 2,
               "when_names follow enum px_chaos_when");

static const struct field fields[F__COUNT] = {
    [F_INJECT] = {"inject", FT_ENUM, 0, 0, inject_names},
    [F_SQLSTATE] = {"sqlstate", FT_SQLSTATE, 5, 5, NULL},
    [F_MESSAGE] = {"message", FT_TEXT, 1, MAX_MESSAGE, NULL},
    [F_LATENCY_MS] = {"latency_ms", FT_UINT, 0, MAX_LATENCY_MS, NULL},
    [F_WHEN] = {"when", FT_ENUM, 0, 0, when_names},
    [F_PROBABILITY] = {"probability", FT_PROB, 0, 0, NULL},
    [F_SEED] = {"seed", FT_UINT, 0, MAX_COUNT, NULL},
    [F_EVERY_N] = {"every_n", FT_UINT, 1, MAX_COUNT, NULL},
    [F_MAX_COUNT] = {"max_count", FT_UINT, 0, MAX_COUNT, NULL},
    [F_DATABASE] = {"database", FT_TEXT, 1, MAX_NAME, NULL},
    [F_USER] = {"user", FT_TEXT, 1, MAX_NAME, NULL},
    [F_APPLICATION_NAME] = {"application_name", FT_TEXT, 0, MAX_NAME, NULL},
    [F_LOCK_KEY] = {"lock_key", FT_TEXT, 1, LOCKMGR_KEY_MAX, NULL},
};

#define BIT(f) (1u << (f))

/* The fields of a rule as given (set: which ones), defaults applied by def_check. */
struct def {
    uint32_t set;
    enum px_chaos_kind kind;
    enum px_chaos_when when;
    char sqlstate[6];
    char *message; /* owned; the default text when none was given */
    uint32_t latency_ms;
    double probability;
    uint64_t seed, every_n, max_count;
    char *text[4]; /* owned: database, user, application_name, lock_key (F_DATABASE + i) */
};

/* A parsed value of one field. */
struct fval {
    const char *s; /* ENUM, SQLSTATE, TEXT: borrowed */
    size_t len;
    uint64_t u; /* ENUM: the index; UINT */
    double d;   /* PROB */
};

/* Formats "why" into buf and returns -1, for `return err(...)`. */
static int err(char *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int err(char *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, ERRLEN, fmt, ap);
    va_end(ap);
    return -1;
}

static const struct field *field_find(const char *name, size_t len)
{
    for (size_t i = 0; i < F__COUNT; i++)
        if (strlen(fields[i].name) == len && memcmp(fields[i].name, name, len) == 0)
            return &fields[i];
    return NULL;
}

static int unknown_field(char *why, const char *name)
{
    char shown[64];
    size_t n = strlen(name);
    n = px_utf8_valid(name, n) ? px_utf8_truncate(name, n, 40) : 0;
    snprintf(shown, sizeof shown, "%.*s%s", (int)n, name, n < strlen(name) ? "..." : "");
    return err(why,
               "unknown field \"%s\" (a rule has inject, sqlstate, message, latency_ms, when, "
               "probability, seed, every_n, max_count, database, user, application_name, "
               "lock_key)",
               shown);
}

/* Checks a value's content (the type is already right); fills v->u for ENUM. */
static int field_check(const struct field *f, struct fval *v, char *why)
{
    switch (f->type) {
    case FT_ENUM:
        for (unsigned i = 0; f->names[i]; i++) {
            if (f->names[i][0] && strlen(f->names[i]) == v->len &&
                memcmp(f->names[i], v->s, v->len) == 0) {
                v->u = i;
                return 0;
            }
        }
        if (f->names == inject_names)
            return err(why, "inject: must be error, latency or disconnect");
        return err(why, "when: must be statement, commit or connect");
    case FT_SQLSTATE:
        if (v->len != 5)
            return err(why, "sqlstate: must be 5 characters [0-9A-Z], like 40001");
        for (size_t i = 0; i < 5; i++) {
            char c = v->s[i];
            if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')))
                return err(why, "sqlstate: must be 5 characters [0-9A-Z], like 40001");
        }
        if (v->s[0] == '0' && (v->s[1] == '0' || v->s[1] == '1' || v->s[1] == '2'))
            return err(why,
                       "sqlstate: %.5s is not an error (classes 00, 01 and 02 are success, "
                       "warning and no data)",
                       v->s);
        return 0;
    case FT_TEXT:
        if (!px_utf8_valid(v->s, v->len) || memchr(v->s, '\0', v->len))
            return err(why, "%s: must be valid UTF-8 without NUL", f->name);
        if (v->len < f->min || v->len > f->max)
            return err(why, "%s: must be %" PRIu64 " to %" PRIu64 " bytes long (got %zu)", f->name,
                       f->min, f->max, v->len);
        return 0;
    case FT_UINT:
        if (v->u < f->min || v->u > f->max)
            return err(why, "%s: must be %" PRIu64 " to %" PRIu64 " (got %" PRIu64 ")", f->name,
                       f->min, f->max, v->u);
        return 0;
    case FT_PROB:
        if (!(v->d > 0 && v->d <= 1))
            return err(why, "probability: must be greater than 0 and at most 1 (got %g)", v->d);
        return 0;
    }
    return -1;
}

/* Stores a checked value into d. */
static int def_store(struct def *d, const struct field *f, const struct fval *v, char *why)
{
    enum fid id = (enum fid)(f - fields);
    if (d->set & BIT(id))
        return err(why, "%s: given twice", f->name);
    d->set |= BIT(id);
    switch (id) {
    case F_INJECT: d->kind = (enum px_chaos_kind)v->u; break;
    case F_WHEN: d->when = (enum px_chaos_when)v->u; break;
    case F_SQLSTATE: memcpy(d->sqlstate, v->s, 5); break;
    case F_LATENCY_MS: d->latency_ms = (uint32_t)v->u; break;
    case F_PROBABILITY: d->probability = v->d; break;
    case F_SEED: d->seed = v->u; break;
    case F_EVERY_N: d->every_n = v->u; break;
    case F_MAX_COUNT: d->max_count = v->u; break;
    case F_MESSAGE:
        if (!(d->message = strndup(v->s, v->len)))
            return err(why, "out of memory");
        break;
    default: /* F_DATABASE .. F_LOCK_KEY */
        if (!(d->text[id - F_DATABASE] = strndup(v->s, v->len)))
            return err(why, "out of memory");
        break;
    }
    return 0;
}

static void def_destroy(struct def *d)
{
    free(d->message);
    for (size_t i = 0; i < ARRAY_LEN(d->text); i++)
        free(d->text[i]);
    memset(d, 0, sizeof *d);
}

/* PostgreSQL's own wording for the SQLSTATEs chaos tests inject most. */
static const struct {
    const char *sqlstate, *message;
} default_messages[] = {
    {"40001", "could not serialize access due to concurrent update"},
    {"40P01", "deadlock detected"},
    {"57P01", "terminating connection due to administrator command"},
    {"57P02", "terminating connection due to crash of another server process"},
    {"57P03", "the database system is starting up"},
    {"57P05", "terminating connection due to idle-session timeout"},
    {"57014", "canceling statement due to user request"},
    {"55P03", "canceling statement due to lock timeout"},
    {"53300", "sorry, too many clients already"},
    {"53200", "out of memory"},
    {"25P02", "current transaction is aborted, commands ignored until end of transaction block"},
    {"25P03", "terminating connection due to idle-in-transaction timeout"},
    {"08006", "connection to server was lost"},
    {"08P01", "protocol violation"},
    {"XX000", "internal error"},
};

static const char *default_message(const char *sqlstate)
{
    for (size_t i = 0; i < ARRAY_LEN(default_messages); i++)
        if (strcmp(default_messages[i].sqlstate, sqlstate) == 0)
            return default_messages[i].message;
    return "injected fault";
}

/* Cross-field checks and defaults; why names the field. */
static int def_check(struct def *d, char *why)
{
    uint32_t s = d->set;
    if (!(s & BIT(F_INJECT)))
        return err(why, "inject: required (error, latency or disconnect)");
    if (d->kind == PX_CHAOS_ERROR && !(s & BIT(F_SQLSTATE)))
        return err(why, "sqlstate: required with inject=error");
    if (d->kind != PX_CHAOS_ERROR && (s & BIT(F_SQLSTATE)))
        return err(why, "sqlstate: only with inject=error");
    if (d->kind != PX_CHAOS_ERROR && (s & BIT(F_MESSAGE)))
        return err(why, "message: only with inject=error");
    if (d->kind == PX_CHAOS_LATENCY && !(s & BIT(F_LATENCY_MS)))
        return err(why, "latency_ms: required with inject=latency");
    if (d->kind != PX_CHAOS_LATENCY && (s & BIT(F_LATENCY_MS)))
        return err(why, "latency_ms: only with inject=latency");
    if ((s & BIT(F_PROBABILITY)) && (s & BIT(F_EVERY_N)))
        return err(why, "every_n: give probability or every_n, not both");
    if ((s & BIT(F_SEED)) && !(s & BIT(F_PROBABILITY)))
        return err(why, "seed: only with probability");
    if (d->when == PX_CHAOS_CONNECT && d->kind == PX_CHAOS_LATENCY)
        return err(why, "when: latency at connect is not supported");
    if (d->when == PX_CHAOS_CONNECT && (s & BIT(F_LOCK_KEY)))
        return err(why, "lock_key: cannot match at connect (a connecting client holds no lock)");
    if ((s & BIT(F_PROBABILITY)) && !(s & BIT(F_SEED)))
        d->seed = 1;
    if (d->kind == PX_CHAOS_ERROR && !d->message &&
        !(d->message = strdup(default_message(d->sqlstate))))
        return err(why, "out of memory");
    return 0;
}

/* ---- reading a rule ------------------------------------------------------------------------ */

/* One JSON member: type check, then the common checks. */
static int json_field(struct def *d, const char *key, json_t *val, char *why)
{
    const struct field *f = field_find(key, strlen(key));
    if (!f)
        return unknown_field(why, key);
    struct fval v = {0};
    switch (f->type) {
    case FT_ENUM:
    case FT_SQLSTATE:
    case FT_TEXT:
        if (!json_is_string(val))
            return err(why, "%s: must be a string", f->name);
        v.s = json_string_value(val);
        v.len = json_string_length(val);
        break;
    case FT_UINT:
        if (!json_is_integer(val))
            return err(why, "%s: must be an integer", f->name);
        if (json_integer_value(val) < 0)
            return err(why, "%s: must be %" PRIu64 " to %" PRIu64 " (got %" JSON_INTEGER_FORMAT ")",
                       f->name, f->min, f->max, json_integer_value(val));
        v.u = (uint64_t)json_integer_value(val);
        break;
    case FT_PROB:
        if (!json_is_number(val))
            return err(why, "%s: must be a number", f->name);
        v.d = json_number_value(val);
        break;
    }
    if (field_check(f, &v, why) < 0)
        return -1;
    return def_store(d, f, &v, why);
}

static int def_from_json(struct def *d, const char *json, size_t len, char *why)
{
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root)
        return err(why, "invalid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = err(why, "a rule is a JSON object, like {\"inject\": \"error\", \"sqlstate\": "
                      "\"40001\", \"probability\": 0.1}");
    } else {
        const char *key;
        json_t *val;
        json_object_foreach(root, key, val)
        {
            if ((rc = json_field(d, key, val, why)) < 0)
                break;
        }
    }
    json_decref(root);
    return rc < 0 ? -1 : def_check(d, why);
}

/* One key=value of a [chaos] line: the text parsed for the field's type. */
static int text_field(struct def *d, const char *key, const char *text, char *why)
{
    const struct field *f = field_find(key, strlen(key));
    if (!f)
        return unknown_field(why, key);
    struct fval v = {.s = text, .len = strlen(text)};
    char *end;
    if (f->type == FT_UINT) {
        const char *digits = text[0] == '-' ? text + 1 : text;
        errno = 0;
        v.u = strtoull(digits, &end, 10);
        if (digits[0] < '0' || digits[0] > '9' || *end != '\0' || errno == ERANGE)
            return err(why, "%s: must be an integer (got \"%.40s\")", f->name, text);
        if (digits != text) /* negative: out of every range */
            return err(why, "%s: must be %" PRIu64 " to %" PRIu64 " (got %.40s)", f->name, f->min,
                       f->max, text);
    } else if (f->type == FT_PROB) {
        /* Not errno: strtod's ERANGE on underflow would refuse 1e-320, which JSON accepts
         * (a result of 0 is refused below, as in JSON); overflow gives an infinity. */
        v.d = strtod(text, &end);
        if (end == text || *end != '\0' || !isfinite(v.d))
            return err(why, "%s: must be a number (got \"%.40s\")", f->name, text);
    }
    if (field_check(f, &v, why) < 0)
        return -1;
    return def_store(d, f, &v, why);
}

static int def_from_params(struct def *d, const char *params, char *why)
{
    char *copy = strdup(params), *s = copy, *key, *value;
    if (!copy)
        return err(why, "out of memory");
    int rc;
    while ((rc = px_config_next_param(&s, &key, &value, why, ERRLEN)) > 0) {
        if (text_field(d, key, value, why) < 0) {
            rc = -1;
            break;
        }
    }
    free(copy);
    return rc < 0 ? -1 : def_check(d, why);
}

/* ---- the rule table ------------------------------------------------------------------------ */

struct rule {
    struct rule *next; /* id order */
    uint64_t id;
    char *name; /* config rules; NULL: added over the admin port */
    struct def d;
    uint64_t rng; /* splitmix64 state */
    uint64_t matched, injected;
    struct px_metrics_set *metrics;
    uint64_t *m_injected;
    struct rule *keep; /* install: the rule in effect that this parsed one equals */
};

struct px_chaos_rules {
    struct rule *head;
};

size_t px_chaos_nrules;
static struct rule *rules_head;
static uint64_t next_id = 1;

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static void rule_free(struct rule *r)
{
    if (!r)
        return;
    px_metrics_set_release(r->metrics);
    def_destroy(&r->d);
    free(r->name);
    free(r);
}

/* A new rule (not in the table) from d (taken over). */
static struct rule *rule_new(struct def *d, const char *name, char *why)
{
    struct rule *r = calloc(1, sizeof *r);
    if (!r || (name && !(r->name = strdup(name)))) {
        free(r);
        def_destroy(d);
        err(why, "out of memory");
        return NULL;
    }
    r->d = *d;
    memset(d, 0, sizeof *d);
    return r;
}

/* Gives r its id, PRNG and metric series, and appends it to the table. */
static void rule_insert(struct rule *r)
{
    r->id = next_id++;
    r->rng = r->d.seed;
    r->matched = r->injected = 0;
    char id[24];
    snprintf(id, sizeof id, "%" PRIu64, r->id);
    const char *labels[3] = {id, inject_names[r->d.kind],
                             r->d.kind == PX_CHAOS_ERROR ? r->d.sqlstate : ""};
    r->metrics = px_metrics_set_get(PX_MK_CHAOS_RULE, labels);
    r->m_injected = px_metrics_counter_slot(r->metrics, PX_M_CHAOS_INJECTED, 0);
    struct rule **p = &rules_head;
    while (*p)
        p = &(*p)->next;
    r->next = NULL;
    *p = r;
    px_chaos_nrules++;
    px_metrics_gauge_set(NULL, PX_M_CHAOS_RULES, 0, (double)px_chaos_nrules);
}

/* Unlinks *p and frees it. */
static void rule_unlink(struct rule **p)
{
    struct rule *r = *p;
    *p = r->next;
    px_chaos_nrules--;
    px_metrics_gauge_set(NULL, PX_M_CHAOS_RULES, 0, (double)px_chaos_nrules);
    rule_free(r);
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static bool def_equal(const struct def *a, const struct def *b)
{
    if (a->set != b->set || a->kind != b->kind || a->when != b->when ||
        strcmp(a->sqlstate, b->sqlstate) != 0 || !str_eq(a->message, b->message) ||
        a->latency_ms != b->latency_ms || a->probability != b->probability || a->seed != b->seed ||
        a->every_n != b->every_n || a->max_count != b->max_count)
        return false;
    for (size_t i = 0; i < ARRAY_LEN(a->text); i++)
        if (!str_eq(a->text[i], b->text[i]))
            return false;
    return true;
}

/* ---- JSON of a rule ------------------------------------------------------------------------ */

/* Sets key to s, or to null when s is NULL. */
static int set_str(json_t *o, const char *key, const char *s)
{
    return json_object_set_new(o, key, s ? json_string(s) : json_null());
}

/* Sets key to v, or to null when !given. */
static int set_uint(json_t *o, const char *key, bool given, uint64_t v)
{
    return json_object_set_new(o, key, given ? json_integer((json_int_t)v) : json_null());
}

/*
 * Every field of a rule, always in this order, null where it does not apply or was not
 * given (the admin API's convention): id, name (config rules), source, inject, sqlstate,
 * message, latency_ms, when, probability, seed, every_n, max_count, database, user,
 * application_name, lock_key, matched, injected.  A new reference, NULL when out of memory.
 */
static json_t *rule_json(const struct rule *r)
{
    const struct def *d = &r->d;
    bool error = d->kind == PX_CHAOS_ERROR, prob = d->set & BIT(F_PROBABILITY);
    json_t *o = json_object();
    if (!o)
        return NULL;
    int rc = set_uint(o, "id", true, r->id);
    rc |= set_str(o, "name", r->name);
    rc |= set_str(o, "source", r->name ? "config" : "api");
    rc |= set_str(o, "inject", inject_names[d->kind]);
    rc |= set_str(o, "sqlstate", error ? d->sqlstate : NULL);
    rc |= set_str(o, "message", error ? d->message : NULL);
    rc |= set_uint(o, "latency_ms", d->kind == PX_CHAOS_LATENCY, d->latency_ms);
    rc |= set_str(o, "when", when_names[d->when]);
    rc |= json_object_set_new(o, "probability", prob ? json_real(d->probability) : json_null());
    rc |= set_uint(o, "seed", prob, d->seed);
    rc |= set_uint(o, "every_n", d->set & BIT(F_EVERY_N), d->every_n);
    rc |= set_uint(o, "max_count", d->set & BIT(F_MAX_COUNT), d->max_count);
    for (size_t i = 0; i < ARRAY_LEN(d->text); i++)
        rc |= set_str(o, fields[F_DATABASE + i].name, d->text[i]);
    rc |= set_uint(o, "matched", true, r->matched);
    rc |= set_uint(o, "injected", true, r->injected);
    if (rc) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Compact JSON text of j (reference stolen), numbers like 0.3 written as such. */
static char *dump(json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(j);
    return s;
}

/* ---- interface ----------------------------------------------------------------------------- */

static char *errdup(const char *why)
{
    return strdup(why);
}

char *px_chaos_add_json(const char *json, size_t len, char **errmsg)
{
    char why[ERRLEN] = "";
    struct def d = {0};
    *errmsg = NULL;
    if (px_chaos_nrules >= PX_CHAOS_MAX_RULES) {
        err(why, "too many rules (at most %d): remove some first", PX_CHAOS_MAX_RULES);
        goto fail;
    }
    if (def_from_json(&d, json, len, why) < 0)
        goto fail;
    struct rule *r = rule_new(&d, NULL, why);
    if (!r)
        goto fail;
    rule_insert(r);
    char *out = dump(rule_json(r));
    if (!out) {
        px_chaos_remove(r->id); /* nothing half-applied; the id is not reused */
        err(why, "out of memory");
        goto fail;
    }
    px_info("chaos", 0, 0, "rule %" PRIu64 " added: %s", r->id, out);
    return out;
fail:
    def_destroy(&d);
    *errmsg = errdup(why);
    return NULL;
}

static bool config_name_taken(const char *name)
{
    for (struct rule *r = rules_head; r; r = r->next)
        if (r->name && strcmp(r->name, name) == 0)
            return true;
    return false;
}

/* A config rule's name is listed as a JSON string (GET /chaos): it must be valid UTF-8,
 * or the whole list could not be written. */
static int name_check(const char *name, char *why)
{
    if (!name || !*name)
        return err(why, "a config rule needs a name");
    if (!px_utf8_valid(name, strlen(name)))
        return err(why, "a rule name must be valid UTF-8");
    return 0;
}

int px_chaos_add_config(const char *name, const char *params, char **errmsg)
{
    char why[ERRLEN] = "";
    struct def d = {0};
    *errmsg = NULL;
    if (px_chaos_nrules >= PX_CHAOS_MAX_RULES)
        err(why, "too many rules (at most %d)", PX_CHAOS_MAX_RULES);
    else if (name_check(name, why) < 0)
        ;
    else if (config_name_taken(name))
        err(why, "a rule named \"%s\" exists", name);
    else if (def_from_params(&d, params, why) == 0) {
        struct rule *r = rule_new(&d, name, why);
        if (r) {
            rule_insert(r);
            px_info("chaos", 0, 0, "rule %" PRIu64 " (%s) added", r->id, name);
            return 0;
        }
    }
    def_destroy(&d);
    *errmsg = errdup(why);
    return -1;
}

char *px_chaos_list_json(void)
{
    json_t *arr = json_array();
    for (struct rule *r = rules_head; arr && r; r = r->next) {
        json_t *o = rule_json(r);
        if (!o || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return dump(arr);
}

bool px_chaos_remove(uint64_t id)
{
    for (struct rule **p = &rules_head; *p; p = &(*p)->next) {
        if ((*p)->id == id) {
            rule_unlink(p);
            px_info("chaos", 0, 0, "rule %" PRIu64 " removed", id);
            return true;
        }
    }
    return false;
}

size_t px_chaos_clear(void)
{
    size_t n = 0;
    while (rules_head) {
        rule_unlink(&rules_head);
        n++;
    }
    if (n)
        px_info("chaos", 0, 0, "every rule removed (%zu)", n);
    return n;
}

void px_chaos_shutdown(void)
{
    while (rules_head) {
        struct rule *r = rules_head;
        rules_head = r->next;
        rule_free(r);
    }
    px_chaos_nrules = 0;
    next_id = 1;
}

/* ---- config rules ---------------------------------------------------------------------------- */

void px_chaos_rules_free(struct px_chaos_rules *set)
{
    if (!set)
        return;
    while (set->head) {
        struct rule *r = set->head;
        set->head = r->next;
        rule_free(r);
    }
    free(set);
}

struct px_chaos_rules *px_chaos_config_parse(const struct px_config *cfg, char **errmsg)
{
    char why[ERRLEN] = "";
    *errmsg = NULL;
    struct px_chaos_rules *set = calloc(1, sizeof *set);
    struct rule **tail = set ? &set->head : NULL;
    const struct px_chaos_line *l = NULL;
    if (!set) {
        err(why, "out of memory");
        goto fail;
    }
    if (cfg->nchaos > PX_CHAOS_MAX_RULES) {
        l = &cfg->chaos[PX_CHAOS_MAX_RULES];
        err(why, "too many rules (at most %d)", PX_CHAOS_MAX_RULES);
        goto fail;
    }
    for (size_t i = 0; i < cfg->nchaos; i++) {
        l = &cfg->chaos[i];
        if (name_check(l->name, why) < 0)
            goto fail;
        struct def d = {0};
        if (def_from_params(&d, l->params, why) < 0) {
            def_destroy(&d);
            goto fail;
        }
        struct rule *r = rule_new(&d, l->name, why);
        if (!r)
            goto fail;
        *tail = r;
        tail = &r->next;
    }
    return set;
fail:
    px_chaos_rules_free(set);
    int n = l ? asprintf(errmsg, "%s:%d: [chaos] %s: %s", cfg->path ? cfg->path : "", l->line,
                         l->name, why)
              : asprintf(errmsg, "%s: [chaos]: %s", cfg->path ? cfg->path : "", why);
    if (n < 0)
        *errmsg = NULL;
    return NULL;
}

void px_chaos_config_install(struct px_chaos_rules *set)
{
    size_t kept = 0, added = 0, removed = 0;
    /* Pair each parsed rule with an unchanged config rule in effect. */
    for (struct rule *s = set->head; s; s = s->next) {
        for (struct rule *r = rules_head; r; r = r->next) {
            if (r->name && !r->keep && strcmp(r->name, s->name) == 0 && def_equal(&r->d, &s->d)) {
                r->keep = s;
                s->keep = r;
                break;
            }
        }
    }
    for (struct rule **p = &rules_head; *p;) {
        if ((*p)->name && !(*p)->keep) {
            rule_unlink(p);
            removed++;
        } else {
            (*p)->keep = NULL;
            p = &(*p)->next;
        }
    }
    while (set->head) {
        struct rule *s = set->head;
        set->head = s->next;
        if (s->keep) {
            rule_free(s);
            kept++;
        } else {
            rule_insert(s);
            added++;
        }
    }
    free(set);
    if (kept + added + removed)
        px_info("chaos", 0, 0,
                "[chaos] rules from the config: %zu unchanged, %zu added, %zu removed", kept, added,
                removed);
}

/* ---- decisions ------------------------------------------------------------------------------- */

static bool text_matches(const char *want, const char *have)
{
    return !want || strcmp(want, have ? have : "") == 0;
}

static bool rule_matches(const struct rule *r, const struct px_chaos_ctx *ctx)
{
    const struct def *d = &r->d;
    if (d->when != ctx->when || !text_matches(d->text[0], ctx->database) ||
        !text_matches(d->text[1], ctx->user) || !text_matches(d->text[2], ctx->application_name))
        return false;
    const char *key = d->text[F_LOCK_KEY - F_DATABASE];
    return !key || (ctx->holds_lock && ctx->holds_lock(ctx->arg, key, strlen(key)));
}

/* Counts the match; whether r fires for it (one PRNG draw for probability rules). */
static bool rule_fires(struct rule *r)
{
    r->matched++;
    if (r->d.max_count && r->injected >= r->d.max_count)
        return false;
    if (r->d.every_n)
        return r->matched % r->d.every_n == 0;
    if (r->d.set & BIT(F_PROBABILITY)) {
        double u = (double)(splitmix64(&r->rng) >> 11) * 0x1.0p-53; /* [0, 1) */
        return u < r->d.probability;
    }
    return true;
}

static void log_injection(const struct rule *r, const struct px_chaos_ctx *ctx)
{
    char what[64], name[80] = "";
    if (r->d.kind == PX_CHAOS_ERROR)
        snprintf(what, sizeof what, "%s", r->d.sqlstate);
    else if (r->d.kind == PX_CHAOS_LATENCY)
        snprintf(what, sizeof what, "%" PRIu32 " ms latency", r->d.latency_ms);
    else
        snprintf(what, sizeof what, "a disconnect");
    if (r->name)
        snprintf(name, sizeof name, " (%.64s)", r->name);
    px_info("chaos", 'C', ctx->client_id, "chaos rule %" PRIu64 "%s injects %s (%s)", r->id, name,
            what, when_names[ctx->when]);
}

bool px_chaos_matches(const struct px_chaos_ctx *ctx)
{
    for (const struct rule *r = rules_head; r; r = r->next)
        if (rule_matches(r, ctx))
            return true;
    return false;
}

bool px_chaos_decide(const struct px_chaos_ctx *ctx, struct px_chaos_action *out)
{
    out->kind = PX_CHAOS_NONE;
    if (!px_chaos_active())
        return false;
    for (struct rule *r = rules_head; r; r = r->next) {
        if (!rule_matches(r, ctx) || !rule_fires(r))
            continue;
        r->injected++;
        ++*r->m_injected;
        out->kind = r->d.kind;
        out->rule_id = r->id;
        memcpy(out->sqlstate, r->d.sqlstate, sizeof out->sqlstate);
        out->message = r->d.message;
        out->latency_ms = r->d.latency_ms;
        log_injection(r, ctx);
        return true;
    }
    return false;
}
