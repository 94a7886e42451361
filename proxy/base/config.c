/*
 * config.c: pgwarden's configuration file (interface and contracts in config.h, user
 * reference in docs/configuration.md, every key commented in conf/pgwarden.ini).
 *
 * Owns:
 *   - the declarative key tables: [pgwarden] (pgwarden_keys[]), [locks] (locks_keys[]) and
 *     the connection parameters of a [databases] entry (db_keys[]);
 *   - the [chaos] lines, kept as written (name, parameters, line) for the rule engine,
 *     which validates them when pgwarden applies the config (chaos/chaos.h): this library
 *     stays free of it;  One row per key: name (always the
 *     struct field's name), type, offset, default as text, range, reloadable, help;
 *   - the generic INI reader and value parser, which know nothing about individual keys;
 *   - cross-field checks (validate()), reload diffing and the key iterator.
 * Interface: px_config_load, px_config_free, px_config_find_db, px_config_diff,
 * px_config_keep_restart_keys, px_config_foreach_key, px_config_next_param.
 *
 * Defaults are applied by parsing each row's default text with the same code that parses
 * file values, so a default can never be something the file could not say.  Adding a key
 * to a section is one struct field plus one row here plus its line in the docs and the
 * example file (test_config's documentation test fails otherwise).  A later section
 * ([locks], [retry], ...) is one more table in key_sections[].
 *
 * Pure library: no logging, no I/O besides reading the file.  Not thread-safe per object;
 * px_config_load may run on any thread.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/config.h"
#include "retry/retry.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Value types of the key tables. */
enum px_cfg_type {
    PX_CFG_INT,    /* int: decimal, within [min, max] */
    PX_CFG_STRING, /* char * (owned): any text, at least min bytes long */
    PX_CFG_PATH,   /* char * (owned): a file; relative to the config file's directory, "" = NULL */
    PX_CFG_ENUM,   /* an int-sized enum: the index of the value in names[] */
};

struct px_cfg_key {
    const char *key;          /* the key, and the name of the struct field */
    enum px_cfg_type type;    /* how the value is parsed and stored */
    size_t offset;            /* offsetof the field in the section's struct */
    const char *defval;       /* default as file text; NULL: NULL string or -1 number */
    long long min, max;       /* INT: inclusive range; STRING: min is the minimum length */
    const char *const *names; /* ENUM: value spellings, NULL-terminated, index = value */
    bool reloadable;          /* true: SIGHUP applies a change; false: needs a restart */
    const char *help;         /* one line for docs and --help output */
};

struct px_cfg_section {
    const char *name;
    const struct px_cfg_key *keys;
    size_t nkeys;
};

/* Enum tables: index == enum value (checked below). */
static const char *const pool_mode_names[] = {"session", "transaction", NULL};
static const char *const auth_type_names[] = {"trust", "md5", "scram-sha-256", NULL};
static const char *const client_tls_names[] = {"disable", "allow", "require", NULL};
static const char *const server_tls_names[] = {"disable",   "prefer",      "require",
                                               "verify-ca", "verify-full", NULL};
static const char *const log_level_names[] = {"debug", "info", "warning", "error", NULL};
static const char *const unmovable_names[] = {"pin", "reset", NULL};
static const char *const locks_backend_names[] = {"local", "postgresql", NULL};
/* Index == enum backoff_jitter (retry/backoff.h). */
static const char *const jitter_names[] = {"full", "equal", "decorrelated", "none", NULL};

const char *px_config_server_tls_name(enum px_server_tls_mode mode)
{
    return server_tls_names[mode];
}

_Static_assert(PX_POOL_TRANSACTION == 1, "pool_mode_names order");
_Static_assert(PX_AUTH_TRUST == 0 && PX_AUTH_MD5 == 1 && PX_AUTH_SCRAM == 2,
               "auth_type_names order");
_Static_assert(PX_CTLS_REQUIRE == 2, "client_tls_names order");
_Static_assert(PX_STLS_PREFER == 1 && PX_STLS_VERIFY_FULL == 4, "server_tls_names order");
_Static_assert(PX_LOG_ERROR == 3, "log_level_names order");
_Static_assert(PX_UNMOVABLE_RESET == 1, "unmovable_names order");
_Static_assert(PX_LOCKS_POSTGRESQL == 1, "locks_backend_names order");
_Static_assert(BACKOFF_JITTER_FULL == 0 && BACKOFF_JITTER_EQUAL == 1 &&
                   BACKOFF_JITTER_DECORRELATED == 2 && BACKOFF_JITTER_NONE == 3,
               "jitter_names order");
_Static_assert(sizeof(enum px_pool_mode) == sizeof(int) &&
                   sizeof(enum px_auth_type) == sizeof(int) &&
                   sizeof(enum px_client_tls_mode) == sizeof(int) &&
                   sizeof(enum px_server_tls_mode) == sizeof(int) &&
                   sizeof(enum px_log_level) == sizeof(int) &&
                   sizeof(enum px_unmovable) == sizeof(int) &&
                   sizeof(enum px_locks_backend) == sizeof(int) &&
                   sizeof(enum backoff_jitter) == sizeof(int),
               "enum fields are stored through int *");

/* Row builders: #f makes the key name and the field name the same by construction. */
#define PG_INT(f, def, lo, hi, rel, help)                                                          \
    {                                                                                              \
#f, PX_CFG_INT, offsetof(struct px_config, f), def, lo, hi, NULL, rel, help                \
    }
#define PG_STR(f, def, minlen, rel, help)                                                          \
    {                                                                                              \
#f, PX_CFG_STRING, offsetof(struct px_config, f), def, minlen, 0, NULL, rel, help          \
    }
#define PG_PATH(f, rel, help)                                                                      \
    {                                                                                              \
#f, PX_CFG_PATH, offsetof(struct px_config, f), NULL, 0, 0, NULL, rel, help                \
    }
#define PG_ENUM(f, def, names, rel, help)                                                          \
    {                                                                                              \
#f, PX_CFG_ENUM, offsetof(struct px_config, f), def, 0, 0, names, rel, help                \
    }

#define RELOAD  true
#define RESTART false

/*
 * [pgwarden].  What reloads: everything the proxy consults per connection or per event
 * (pool sizes, limits on clients, timeouts, reset query, authentication, log level, the
 * admin token).  What needs a restart: what is bound or opened once at start (listening
 * sockets, TLS contexts and their files, log and pid files), the pool mode (a client paired
 * with a server cannot change mode mid-session), and max_message_bytes (buffers are sized
 * from it when a connection is created).
 */
static const struct px_cfg_key pgwarden_keys[] = {
    PG_STR(listen_addr, "127.0.0.1", 1, RESTART, "address clients connect to"),
    PG_INT(listen_port, "6432", 1, 65535, RESTART, "TCP port clients connect to"),
    PG_STR(admin_addr, "127.0.0.1", 1, RESTART, "address of the admin HTTP port"),
    PG_INT(admin_port, "6480", 0, 65535, RESTART, "admin HTTP port; 0 disables it"),
    PG_STR(admin_token, NULL, 0, RELOAD, "bearer token the admin port requires; empty: none"),
    PG_PATH(admin_tls_cert_file, RESTART, "certificate for HTTPS on the admin port"),
    PG_PATH(admin_tls_key_file, RESTART, "private key for HTTPS on the admin port"),
    PG_INT(admin_max_connections, "64", 1, 100000, RELOAD,
           "admin connections open at once; more are closed as soon as they are accepted"),
    PG_INT(admin_request_timeout_ms, "10000", 100, INT_MAX, RELOAD,
           "an admin request (headers and body) must arrive within this time of the "
           "connection or of the previous request, however slowly its bytes come"),
    PG_ENUM(pool_mode, "session", pool_mode_names, RESTART,
            "when a server is returned to the pool: session | transaction"),
    PG_INT(default_pool_size, "20", 1, 100000, RELOAD,
           "server connections per (database, user) pool"),
    PG_INT(max_client_conn, "100", 1, 1000000, RELOAD,
           "client connections accepted; beyond it clients get 53300"),
    PG_ENUM(auth_type, "scram-sha-256", auth_type_names, RELOAD,
            "client authentication: scram-sha-256 | md5 | trust"),
    PG_PATH(auth_file, RELOAD, "user list (\"user\" \"password\" per line) for authentication"),
    PG_ENUM(client_tls_mode, "disable", client_tls_names, RESTART,
            "TLS towards clients: disable | allow | require"),
    PG_PATH(client_tls_cert_file, RESTART, "certificate pgwarden shows to clients"),
    PG_PATH(client_tls_key_file, RESTART, "private key of client_tls_cert_file"),
    PG_PATH(client_tls_ca_file, RESTART, "CA bundle to verify client certificates with"),
    PG_ENUM(server_tls_mode, "prefer", server_tls_names, RESTART,
            "TLS towards PostgreSQL: disable | prefer | require | verify-ca | verify-full"),
    PG_PATH(server_tls_ca_file, RESTART, "CA bundle to verify PostgreSQL's certificate with"),
    PG_STR(server_reset_query, "DISCARD ALL", 0, RELOAD,
           "query run before a server is reused by another client; empty: none"),
    PG_INT(max_prepared_statements, "100", 1, 100000, RELOAD,
           "transaction pooling: named statements kept prepared per server connection"),
    PG_INT(max_client_prepared_statements, "10000", 1, 1000000, RELOAD,
           "transaction pooling: named statements one client may have at once"),
    PG_INT(server_query_batch, "1", 1, PX_QUERY_BATCH_MAX, RELOAD,
           "transaction pooling: single-statement autocommit queries of different clients "
           "sent to one server in one write; 1: off"),
    PG_ENUM(unmovable_state, "pin", unmovable_names, RELOAD,
            "transaction pooling: session state that cannot move to another server (LISTEN, "
            "temporary tables, ...): pin (the client keeps its server) | reset"),
    PG_INT(query_wait_timeout_ms, "120000", 0, INT_MAX, RELOAD,
           "how long a client waits for a free server; 0: forever"),
    PG_INT(server_connect_timeout_ms, "15000", 1, INT_MAX, RELOAD,
           "limit on connecting and logging in to PostgreSQL"),
    PG_INT(server_login_retry_ms, "1000", 0, INT_MAX, RELOAD,
           "after a failed server login, fail new clients fast for this long"),
    PG_INT(server_idle_timeout_ms, "600000", 0, INT_MAX, RELOAD,
           "close servers idle in the pool this long; 0: never"),
    PG_INT(server_lifetime_ms, "3600000", 0, INT_MAX, RELOAD,
           "close servers this old when they are next idle; 0: unlimited"),
    PG_INT(autodb_idle_timeout_ms, "3600000", 0, INT_MAX, RELOAD,
           "free a pool made for the \"*\" database entry once it has had no client and no "
           "server this long"),
    PG_INT(client_login_timeout_ms, "60000", 1, INT_MAX, RELOAD,
           "limit on a client's startup and authentication"),
    PG_INT(max_message_bytes, "1048576", 8192, 1073741824, RESTART,
           "largest Parse message accepted from a client (other messages stream)"),
    PG_INT(shutdown_timeout_ms, "30000", 0, INT_MAX, RELOAD,
           "on SIGTERM, how long clients may finish before being closed"),
    PG_ENUM(log_level, "info", log_level_names, RELOAD,
            "least severe level logged: debug | info | warning | error"),
    PG_PATH(logfile, RESTART, "file to log to; unset: stderr"),
    PG_PATH(pidfile, RESTART, "file to write the process id to; unset: none"),
};

/*
 * [locks]: pgwarden's named locks (docs/locks.md).  The timeouts apply to waits that begin
 * after a reload; the lock table's limit and the token state are set up once at start.
 */
static const struct px_cfg_key locks_keys[] = {
    PG_INT(lock_timeout_ms, "0", 0, INT_MAX, RELOAD,
           "how long a lock call waits when it names no timeout_ms; 0: without a limit"),
    PG_INT(deadlock_timeout_ms, "1000", 1, INT_MAX, RELOAD,
           "a deadlock is reported no later than this after it forms"),
    PG_INT(max_locks, "100000", 0, INT_MAX, RESTART,
           "held locks and queued requests, all clients together; beyond it 53200; 0: no "
           "limit"),
    PG_PATH(state_file, RESTART,
            "file keeping the fencing-token epoch across restarts; unset: tokens from the clock"),
    PG_ENUM(backend, "local", locks_backend_names, RESTART,
            "where the lock space lives: local (this process) | postgresql (shared by every "
            "instance using the same PostgreSQL, docs/design/distributed-locks.md)"),
    PG_STR(backend_conninfo, NULL, 1, RESTART,
           "backend = postgresql: libpq conninfo of the lock connections"),
    PG_INT(backend_connections, "2", 1, 64, RESTART,
           "backend = postgresql: connections to PostgreSQL used for locks, whatever the "
           "number of waiters"),
    PG_INT(lease_ms, "10000", 1000, 3600000, RESTART,
           "backend = postgresql: an instance cut off from PostgreSQL loses its locks within "
           "this time, and stops reporting them before that"),
    PG_INT(hybrid_probe_ms, "200", 0, INT_MAX, RELOAD,
           "a lock wait this long asks PostgreSQL for cycles through its own locks; 0: never"),
};

/*
 * [breaker]: the circuit breaker of each database (docs/breaker.md, SPEC section 6).  All
 * reloadable: a closed breaker takes new settings at once (its window starts empty), an
 * open or half-open one when it next closes.  Ranges are those of retry/'s
 * breaker_config_check(); open_max_ms >= open_ms is checked in validate().  open_ms and
 * open_max_ms default lower than retry/'s 5 s and 60 s: a probe is one server login, so
 * probing often costs PostgreSQL nothing, and a database that comes back is served within
 * open_max_ms (docs/breaker.md, "Tuning").
 */
static const struct px_cfg_key breaker_keys[] = {
    PG_INT(failure_rate_pct, "50", 1, 100, RELOAD,
           "open when failures reach this share of calls in the window (with min_requests)"),
    PG_INT(min_requests, "20", 1, 1000000, RELOAD,
           "calls in the window before failure_rate_pct is considered"),
    PG_INT(window_ms, "10000", 100, 3600000, RELOAD,
           "sliding window of the failure rate (10 buckets)"),
    PG_INT(consecutive_failures, "5", 0, 1000000, RELOAD,
           "open after this many failures in a row; 0: only the rate opens it"),
    PG_INT(open_ms, "1000", 1, 3600000, RELOAD,
           "first open period before a probe; doubles with each trip in a series"),
    PG_INT(open_max_ms, "4000", 1, 86400000, RELOAD,
           "cap of the growing open period: the longest a database that is back waits for "
           "its probe"),
    PG_INT(probe_timeout_ms, "1000", 1, 3600000, RELOAD,
           "a probe (a server login) not done by then has failed"),
};

/*
 * [retry]: transparent retry of serialization failures and deadlocks (docs/retry.md, SPEC
 * section 5).  Ranges are those of retry/'s retry_config_check(), which validate() runs on
 * the whole section (cap_ms >= base_ms); retryable_sqlstates and multiplier are parsed
 * there too.  All reloadable: a transaction takes the settings in effect when it starts.
 */
static const struct px_cfg_key retry_keys[] = {
    PG_STR(retryable_sqlstates, "40001, 40P01", 0, RELOAD,
           "SQLSTATEs (5 characters) or classes (2) replayed transparently; empty: none"),
    PG_INT(max_attempts, "5", 1, 100, RELOAD,
           "attempts of a transaction in all, the first included; 1: never retry"),
    PG_INT(base_ms, "5", 1, 3600000, RELOAD, "backoff ceiling before the first retry"),
    PG_INT(cap_ms, "1000", 1, 3600000, RELOAD, "largest backoff ceiling"),
    PG_STR(multiplier, "2", 1, RELOAD, "growth of the backoff ceiling per retry (1..100)"),
    PG_ENUM(jitter, "full", jitter_names, RELOAD,
            "full | equal | decorrelated | none: how the delay is drawn under the ceiling"),
    PG_INT(budget_pct, "10", 0, 100, RELOAD,
           "retries allowed per 100 first attempts of the database over budget_window_ms"),
    PG_INT(budget_window_ms, "10000", 100, 3600000, RELOAD, "window of the retry budget"),
    PG_INT(budget_min_retries, "10", 0, 1000000, RELOAD,
           "retries per window always allowed (a quiet database can still retry)"),
    PG_INT(retry_buffer_bytes, "1048576", 0, 1073741824, RELOAD,
           "client messages and response digests kept per transaction; beyond: not replayed"),
    PG_INT(retry_checkpoint_bytes, "8192", 64, 1073741824, RELOAD,
           "response bytes between digest checkpoints (a replay's divergence is found "
           "within this)"),
};

/* Sections with fixed keys; [databases] is parsed apart (its keys are database names). */
static const struct px_cfg_section key_sections[] = {
    {"pgwarden", pgwarden_keys, ARRAY_LEN(pgwarden_keys)},
    {"locks", locks_keys, ARRAY_LEN(locks_keys)},
    {"retry", retry_keys, ARRAY_LEN(retry_keys)},
    {"breaker", breaker_keys, ARRAY_LEN(breaker_keys)},
};

#define DB_SECTION    "databases"
#define CHAOS_SECTION "chaos"
static const char db_section[] = DB_SECTION, chaos_section[] = CHAOS_SECTION;
#define MAX_KEYS 64 /* per section, for duplicate detection */
_Static_assert(ARRAY_LEN(pgwarden_keys) <= MAX_KEYS, "raise MAX_KEYS");

#define DB_INT(f, def, lo, hi, help)                                                               \
    {                                                                                              \
#f, PX_CFG_INT, offsetof(struct px_db_config, f), def, lo, hi, NULL, RELOAD, help          \
    }
#define DB_STR(f, def, minlen, help)                                                               \
    {                                                                                              \
#f, PX_CFG_STRING, offsetof(struct px_db_config, f), def, minlen, 0, NULL, RELOAD, help    \
    }

/* Connection parameters of a [databases] entry.  Rows without a default leave -1 / NULL,
 * meaning "inherit" as documented in config.h. */
static const struct px_cfg_key db_keys[] = {
    DB_STR(host, "127.0.0.1", 1, "PostgreSQL host; a path starting with '/' is a socket dir"),
    DB_INT(port, "5432", 1, 65535, "PostgreSQL port"),
    DB_STR(dbname, NULL, 1, "database on the server; default: the entry's name"),
    DB_STR(user, NULL, 1, "user to log in as; default: the client's user"),
    DB_STR(password, NULL, 0, "password for user; default: from auth_file"),
    DB_INT(pool_size, NULL, 1, 100000, "pool size; default: default_pool_size"),
    {"pool_mode", PX_CFG_ENUM, offsetof(struct px_db_config, pool_mode), NULL, 0, 0,
     pool_mode_names, RELOAD, "session | transaction; default: [pgwarden] pool_mode"},
    {"unmovable_state", PX_CFG_ENUM, offsetof(struct px_db_config, unmovable_state), NULL, 0, 0,
     unmovable_names, RELOAD, "pin | reset; default: [pgwarden] unmovable_state"},
};
_Static_assert(ARRAY_LEN(db_keys) <= 32, "db entries track seen keys in a 32-bit mask");

/* ---- parser state and errors ---------------------------------------------------------- */

struct parser {
    const char *file;                            /* path as given, for messages */
    char *dir;                                   /* absolute directory of file */
    int line;                                    /* current line, 1-based; 0: not at a line */
    const char *section;                         /* current section name, NULL before any */
    const struct px_cfg_section *table;          /* its key table; NULL: [databases], [chaos] */
    int seen[ARRAY_LEN(key_sections)][MAX_KEYS]; /* line each key was set on, 0: unset */
    struct px_config *cfg;                       /* being built, owned */
    size_t dbcap;                                /* allocated entries of cfg->dbs */
    size_t chaoscap;                             /* allocated entries of cfg->chaos */
    char **errmsg;                               /* where the one error goes */
};

/*
 * Formats "FILE:LINE: [section] key: what" into *errmsg (":LINE" left out when line is 0,
 * "[section] " and "key" when NULL).  Always returns -1 so callers can `return fail(...)`.
 * On out of memory *errmsg stays NULL.
 */
static int fail_at(struct parser *p, int line, const char *section, const char *key,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static int fail_at(struct parser *p, int line, const char *section, const char *key,
                   const char *fmt, ...)
{
    char what[512], loc[24] = "", ctx[300] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (line > 0)
        snprintf(loc, sizeof(loc), ":%d", line);
    if (section && key)
        snprintf(ctx, sizeof(ctx), ": [%.60s] %.200s", section, key);
    else if (section)
        snprintf(ctx, sizeof(ctx), ": [%.60s]", section);
    else if (key)
        snprintf(ctx, sizeof(ctx), ": %.200s", key);
    free(*p->errmsg);
    if (asprintf(p->errmsg, "%s%s%s: %s", p->file, loc, ctx, what) < 0)
        *p->errmsg = NULL;
    return -1;
}

/* fail_at() at the current line and section. */
#define fail(p, key, ...) fail_at((p), (p)->line, (p)->section, (key), __VA_ARGS__)

/* ---- value parsing (shared by file values and defaults) ------------------------------- */

static int *int_field(void *base, const struct px_cfg_key *k)
{
    return (int *)((char *)base + k->offset);
}

static char **str_field(void *base, const struct px_cfg_key *k)
{
    return (char **)((char *)base + k->offset);
}

static const int *int_field_c(const void *base, const struct px_cfg_key *k)
{
    return (const int *)((const char *)base + k->offset);
}

static char *const *str_field_c(const void *base, const struct px_cfg_key *k)
{
    return (char *const *)((const char *)base + k->offset);
}

static int parse_int(const struct px_cfg_key *k, const char *text, int *out, char *why,
                     size_t whylen)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end != '\0' || errno == ERANGE) {
        snprintf(why, whylen, "bad integer \"%.64s\"", text);
        return -1;
    }
    if (v < k->min || v > k->max) {
        snprintf(why, whylen, "%lld out of range %lld..%lld", v, k->min, k->max);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_enum(const struct px_cfg_key *k, const char *text, int *out, char *why,
                      size_t whylen)
{
    for (int i = 0; k->names[i]; i++) {
        if (strcmp(k->names[i], text) == 0) {
            *out = i;
            return 0;
        }
    }
    int n = snprintf(why, whylen, "bad value \"%.64s\" (expected ", text);
    for (int i = 0; k->names[i] && n > 0 && (size_t)n < whylen; i++)
        n += snprintf(why + n, whylen - (size_t)n, "%s%s", i ? " | " : "", k->names[i]);
    if (n > 0 && (size_t)n < whylen)
        snprintf(why + n, whylen - (size_t)n, ")");
    return -1;
}

/* Returns an allocated copy of text, resolved against dir when it is a relative path. */
static char *resolve_path(const char *dir, const char *text)
{
    char *out;
    if (text[0] == '/' || !dir)
        return strdup(text);
    if (asprintf(&out, "%s/%s", dir, text) < 0)
        return NULL;
    return out;
}

/* Replaces an owned string field with copy (which may be NULL). */
static void set_str(void *base, const struct px_cfg_key *k, char *copy)
{
    char **field = str_field(base, k);
    free(*field);
    *field = copy;
}

/*
 * Parses text as key k's value and stores it in the struct at base.  dir resolves relative
 * paths.  Returns 0, or -1 with the reason in why (no allocation: why is the caller's).
 */
static int set_value(const struct px_cfg_key *k, void *base, const char *text, const char *dir,
                     char *why, size_t whylen)
{
    char *copy = NULL;
    switch (k->type) {
    case PX_CFG_INT: return parse_int(k, text, int_field(base, k), why, whylen);
    case PX_CFG_ENUM: return parse_enum(k, text, int_field(base, k), why, whylen);
    case PX_CFG_STRING:
        if (strlen(text) < (size_t)k->min) {
            snprintf(why, whylen, "must not be empty");
            return -1;
        }
        copy = strdup(text);
        break;
    case PX_CFG_PATH:
        if (text[0] == '\0') { /* "key =" unsets a file */
            set_str(base, k, NULL);
            return 0;
        }
        copy = resolve_path(dir, text);
        break;
    }
    if (!copy) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    set_str(base, k, copy);
    return 0;
}

/* Applies every default of a table to the struct at base. */
static int apply_defaults(struct parser *p, const char *section, const struct px_cfg_key *keys,
                          size_t nkeys, void *base)
{
    char why[256];
    for (size_t i = 0; i < nkeys; i++) {
        const struct px_cfg_key *k = &keys[i];
        if (k->defval) {
            if (set_value(k, base, k->defval, NULL, why, sizeof(why)) < 0)
                return fail_at(p, 0, section, k->key, "default: %s", why);
        } else if (k->type == PX_CFG_INT || k->type == PX_CFG_ENUM) {
            *int_field(base, k) = -1;
        }
    }
    return 0;
}

static void free_fields(const struct px_cfg_key *keys, size_t nkeys, void *base)
{
    for (size_t i = 0; i < nkeys; i++) {
        if (keys[i].type == PX_CFG_STRING || keys[i].type == PX_CFG_PATH)
            set_str(base, &keys[i], NULL);
    }
}

static const struct px_cfg_key *find_key(const struct px_cfg_key *keys, size_t nkeys,
                                         const char *key)
{
    for (size_t i = 0; i < nkeys; i++) {
        if (strcmp(keys[i].key, key) == 0)
            return &keys[i];
    }
    return NULL;
}

/* ---- the INI reader -------------------------------------------------------------------- */

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

/* Trims white space in place; returns the first non-space character. */
static char *trim(char *s)
{
    while (is_space(*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && is_space(s[n - 1]))
        s[--n] = '\0';
    return s;
}

/*
 * Removes one level of double quotes from an INI value in place: "a \"b\" \\c" -> a "b" \c.
 * A value not starting with '"' is left alone.  Returns NULL with why set on bad quoting.
 */
static char *unquote(char *v, char *why, size_t whylen)
{
    if (v[0] != '"')
        return v;
    char *in = v + 1, *out = v;
    for (;;) {
        if (*in == '\0') {
            snprintf(why, whylen, "unterminated double quote");
            return NULL;
        }
        if (*in == '"')
            break;
        if (*in == '\\' && (in[1] == '"' || in[1] == '\\'))
            in++;
        *out++ = *in++;
    }
    if (in[1] != '\0') { /* the value is trimmed: anything here is not white space */
        snprintf(why, whylen, "text after the closing double quote");
        return NULL;
    }
    *out = '\0';
    return v;
}

static int parse_section(struct parser *p, char *s)
{
    char *close = strchr(s, ']');
    if (!close)
        return fail_at(p, p->line, NULL, NULL, "missing ']' in section header");
    if (*trim(close + 1) != '\0')
        return fail_at(p, p->line, NULL, NULL, "text after ']' in section header");
    *close = '\0';
    char *name = trim(s + 1);
    if (strcmp(name, DB_SECTION) == 0 || strcmp(name, CHAOS_SECTION) == 0) {
        p->section = name[0] == 'd' ? db_section : chaos_section;
        p->table = NULL;
        return 0;
    }
    for (size_t i = 0; i < ARRAY_LEN(key_sections); i++) {
        if (strcmp(name, key_sections[i].name) == 0) {
            p->section = key_sections[i].name;
            p->table = &key_sections[i];
            return 0;
        }
    }
    p->section = NULL; /* so that the message reads "[name]: unknown section" */
    return fail_at(p, p->line, name, NULL, "unknown section");
}

/* One `key = value` line of a section with a key table. */
static int parse_key(struct parser *p, const char *key, const char *value)
{
    const struct px_cfg_section *t = p->table;
    const struct px_cfg_key *k = find_key(t->keys, t->nkeys, key);
    if (!k)
        return fail(p, key, "unknown key");
    int *seen = &p->seen[t - key_sections][k - t->keys];
    if (*seen)
        return fail(p, key, "duplicate key (first set on line %d)", *seen);
    *seen = p->line;
    char why[256];
    if (set_value(k, p->cfg, value, p->dir, why, sizeof(why)) < 0)
        return fail(p, key, "%s", why);
    return 0;
}

static int parse_db_entry(struct parser *p, const char *name, char *conninfo);
static int parse_chaos_line(struct parser *p, const char *name, const char *params);

/* One line of the file, without its newline. */
static int parse_line(struct parser *p, char *line)
{
    char *s = trim(line);
    if (*s == '\0' || *s == ';' || *s == '#')
        return 0;
    if (*s == '[')
        return parse_section(p, s);
    char *eq = strchr(s, '=');
    if (!eq)
        return fail(p, s, "missing '=' (expected key = value)");
    *eq = '\0';
    char *key = trim(s);
    if (*key == '\0')
        return fail(p, NULL, "missing key before '='");
    if (!p->section)
        return fail(p, key, "key outside any section");
    char why[128];
    char *value = unquote(trim(eq + 1), why, sizeof(why));
    if (!value)
        return fail(p, key, "%s", why);
    if (!p->table && p->section == chaos_section)
        return parse_chaos_line(p, key, value);
    if (!p->table)
        return parse_db_entry(p, key, value);
    return parse_key(p, key, value);
}

/* ---- [databases] entries --------------------------------------------------------------- */

/*
 * Unescapes a single-quoted value in place: *sp at the opening quote, *outp where the text
 * goes.  On return *sp is after the closing quote.  Returns 0, or -1 with why set.
 */
static int read_quoted(char **sp, char **outp, const char *key, char *why, size_t whylen)
{
    char *s = *sp + 1, *out = *outp;
    for (;;) {
        if (*s == '\0') {
            snprintf(why, whylen, "unterminated quoted value of \"%s\"", key);
            return -1;
        }
        if (*s == '\'' && s[1] != '\'') {
            s++;
            break;
        }
        if (*s == '\\' || *s == '\'') /* \x or '' */
            s++;
        if (*s != '\0')
            *out++ = *s++;
    }
    if (*s != '\0' && !is_space(*s)) {
        snprintf(why, whylen, "text after the quoted value of \"%s\"", key);
        return -1;
    }
    *sp = s;
    *outp = out;
    return 0;
}

/* Unescapes an unquoted value (up to white space) in place, like read_quoted(). */
static void read_plain(char **sp, char **outp)
{
    char *s = *sp, *out = *outp;
    while (*s && !is_space(*s)) {
        if (*s == '\\' && s[1])
            s++;
        *out++ = *s++;
    }
    *sp = s;
    *outp = out;
}

/*
 * Takes the next `key=value` pair off a libpq-style connection string, in place.  Values
 * may be single-quoted ('it''s', 'it\'s'); outside quotes a backslash escapes the next
 * character.  Returns 1 with *key and *value set, 0 at the end, -1 with why set.
 */
static int next_param(char **sp, char **key, char **value, char *why, size_t whylen)
{
    char *s = *sp;
    while (is_space(*s))
        s++;
    if (*s == '\0')
        return 0;
    *key = s;
    while (*s && !is_space(*s) && *s != '=')
        s++;
    char *key_end = s;
    while (is_space(*s))
        s++;
    if (*s != '=' || key_end == *key) {
        *key_end = '\0';
        snprintf(why, whylen, "expected name=value, found \"%.40s\"", *key);
        return -1;
    }
    s++;
    *key_end = '\0'; /* after the '=' was consumed: key_end may point at it */
    while (is_space(*s))
        s++;
    *value = s;
    char *out = s;
    if (*s != '\'')
        read_plain(&s, &out);
    else if (read_quoted(&s, &out, *key, why, whylen) < 0)
        return -1;
    bool more = *s != '\0';
    *out = '\0'; /* may overwrite *s, whose value was saved in more */
    *sp = more ? s + 1 : s;
    return 1;
}

/* Appends a zeroed entry with its defaults; returns NULL (error set) on failure. */
static struct px_db_config *add_db(struct parser *p, const char *name)
{
    struct px_config *cfg = p->cfg;
    if (cfg->ndbs == p->dbcap) {
        size_t cap = p->dbcap ? 2 * p->dbcap : 8;
        struct px_db_config *dbs = realloc(cfg->dbs, cap * sizeof(*dbs));
        if (!dbs) {
            fail(p, name, "out of memory");
            return NULL;
        }
        cfg->dbs = dbs;
        p->dbcap = cap;
    }
    struct px_db_config *db = &cfg->dbs[cfg->ndbs++];
    memset(db, 0, sizeof(*db));
    if (!(db->name = strdup(name))) {
        fail(p, name, "out of memory");
        return NULL;
    }
    if (apply_defaults(p, DB_SECTION, db_keys, ARRAY_LEN(db_keys), db) < 0)
        return NULL;
    return db;
}

/* One line of [databases]: name = key=value ... */
static int parse_db_entry(struct parser *p, const char *name, char *conninfo)
{
    for (size_t i = 0; i < p->cfg->ndbs; i++) {
        if (strcmp(p->cfg->dbs[i].name, name) == 0)
            return fail(p, name, "duplicate database entry");
    }
    struct px_db_config *db = add_db(p, name);
    if (!db)
        return -1;
    uint32_t seen = 0;
    char why[256], *key, *value;
    int rc;
    while ((rc = next_param(&conninfo, &key, &value, why, sizeof(why))) > 0) {
        const struct px_cfg_key *k = find_key(db_keys, ARRAY_LEN(db_keys), key);
        if (!k)
            return fail(p, name, "unknown parameter \"%.40s\"", key);
        uint32_t bit = 1u << (k - db_keys);
        if (seen & bit)
            return fail(p, name, "parameter \"%s\" given twice", key);
        seen |= bit;
        if (set_value(k, db, value, p->dir, why, sizeof(why)) < 0)
            return fail(p, name, "%s: %s", key, why);
    }
    if (rc < 0)
        return fail(p, name, "%s", why);
    if (!db->dbname && strcmp(name, "*") != 0 && !(db->dbname = strdup(name)))
        return fail(p, name, "out of memory");
    return 0;
}

int px_config_next_param(char **sp, char **key, char **value, char *why, size_t whylen)
{
    return next_param(sp, key, value, why, whylen);
}

/* ---- [chaos] lines --------------------------------------------------------------------- */

/* One line of [chaos]: name = inject=... (kept as written; see struct px_chaos_line). */
static int parse_chaos_line(struct parser *p, const char *name, const char *params)
{
    struct px_config *cfg = p->cfg;
    for (size_t i = 0; i < cfg->nchaos; i++) {
        if (strcmp(cfg->chaos[i].name, name) == 0)
            return fail(p, name, "duplicate rule name (first on line %d)", cfg->chaos[i].line);
    }
    if (cfg->nchaos == p->chaoscap) {
        size_t cap = p->chaoscap ? 2 * p->chaoscap : 8;
        struct px_chaos_line *lines = realloc(cfg->chaos, cap * sizeof(*lines));
        if (!lines)
            return fail(p, name, "out of memory");
        cfg->chaos = lines;
        p->chaoscap = cap;
    }
    struct px_chaos_line *l = &cfg->chaos[cfg->nchaos];
    l->name = strdup(name);
    l->params = strdup(params);
    l->line = p->line;
    if (!l->name || !l->params) {
        free(l->name);
        free(l->params);
        return fail(p, name, "out of memory");
    }
    cfg->nchaos++;
    return 0;
}

/* ---- cross-field checks ---------------------------------------------------------------- */

/* Line on which key of section was set; 0 when it has its default. */
static int line_in(const struct parser *p, const char *section, const char *key)
{
    for (size_t i = 0; i < ARRAY_LEN(key_sections); i++) {
        const struct px_cfg_section *t = &key_sections[i];
        const struct px_cfg_key *k =
            strcmp(t->name, section) ? NULL : find_key(t->keys, t->nkeys, key);
        if (k)
            return p->seen[i][k - t->keys];
    }
    return 0;
}

#define fail_key(p, key, ...)                                                                      \
    fail_at((p), line_in((p), "pgwarden", (key)), "pgwarden", (key), __VA_ARGS__)

/* Line on which a [retry] key was set; 0 when it has its default. */
static int retry_line(const struct parser *p, const char *key)
{
    return line_in(p, "retry", key);
}

#define fail_retry(p, key, ...) fail_at((p), retry_line((p), (key)), "retry", (key), __VA_ARGS__)

/* [retry] as a whole: the two values with a syntax of their own, then retry/'s checks;
 * fills cfg->retry, the form the retry stage uses. */
static int validate_retry(struct parser *p)
{
    struct px_config *c = p->cfg;
    struct retry_config *r = &c->retry;
    retry_config_defaults(r);
    if (retry_sqlstates_parse(&r->retryable_sqlstates, c->retryable_sqlstates) != RETRY_OK)
        return fail_retry(p, "retryable_sqlstates",
                          "bad list \"%.100s\" (5-character SQLSTATEs or 2-character classes "
                          "of 0-9 and A-Z, separated by commas, at most %d)",
                          c->retryable_sqlstates, RETRY_SQLSTATES_MAX);
    char *end;
    errno = 0;
    r->multiplier = strtod(c->multiplier, &end);
    if (end == c->multiplier || *end != '\0' || errno == ERANGE)
        return fail_retry(p, "multiplier", "bad number \"%.64s\"", c->multiplier);
    r->max_attempts = (unsigned)c->max_attempts;
    r->base_ms = (unsigned)c->base_ms;
    r->cap_ms = (unsigned)c->cap_ms;
    r->jitter = c->jitter;
    r->budget_pct = (unsigned)c->budget_pct;
    r->budget_window_ms = (unsigned)c->budget_window_ms;
    r->budget_min_retries = (unsigned)c->budget_min_retries;
    r->retry_buffer_bytes = (size_t)c->retry_buffer_bytes;
    r->retry_checkpoint_bytes = (size_t)c->retry_checkpoint_bytes;
    const char *why = NULL;
    if (retry_config_check(r, &why) != RETRY_OK) {
        /* why is "key: what" */
        char key[40] = "";
        const char *colon = why ? strchr(why, ':') : NULL;
        if (colon && (size_t)(colon - why) < sizeof(key))
            memcpy(key, why, (size_t)(colon - why));
        return fail_retry(p, key[0] ? key : NULL, "%s", colon ? colon + 2 : "invalid");
    }
    return 0;
}

static int validate(struct parser *p)
{
    const struct px_config *c = p->cfg;
    if (c->client_tls_mode != PX_CTLS_DISABLE &&
        (!c->client_tls_cert_file || !c->client_tls_key_file))
        return fail_key(p, "client_tls_mode",
                        "%s needs client_tls_cert_file and "
                        "client_tls_key_file",
                        client_tls_names[c->client_tls_mode]);
    if (c->server_tls_mode >= PX_STLS_VERIFY_CA && !c->server_tls_ca_file)
        return fail_key(p, "server_tls_mode", "%s needs server_tls_ca_file",
                        server_tls_names[c->server_tls_mode]);
    if (c->auth_type != PX_AUTH_TRUST && !c->auth_file)
        return fail_key(p, "auth_type", "%s needs auth_file", auth_type_names[c->auth_type]);
    if (!c->admin_tls_cert_file != !c->admin_tls_key_file) {
        const char *set = c->admin_tls_cert_file ? "admin_tls_cert_file" : "admin_tls_key_file";
        return fail_key(p, set, "admin_tls_cert_file and admin_tls_key_file go together");
    }
    if (c->admin_port != 0 && c->admin_port == c->listen_port &&
        strcmp(c->admin_addr, c->listen_addr) == 0)
        return fail_key(p, "admin_port", "same address and port as listen_addr:listen_port");
    if (c->backend == PX_LOCKS_POSTGRESQL && !c->backend_conninfo)
        return fail_at(p, line_in(p, "locks", "backend"), "locks", "backend",
                       "postgresql needs backend_conninfo");
    if (c->open_max_ms < c->open_ms)
        return fail_at(p, line_in(p, "breaker", "open_max_ms"), "breaker", "open_max_ms",
                       "%d is less than open_ms (%d)", c->open_max_ms, c->open_ms);
    return validate_retry(p);
}

/* ---- loading --------------------------------------------------------------------------- */

/* Absolute directory of path (allocated), or NULL. */
static char *config_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir)
        return NULL;
    char *abs = realpath(dir, NULL);
    free(dir);
    return abs;
}

/* Reads f line by line into p; returns 0 or -1 with the error set. */
static int read_lines(struct parser *p, FILE *f)
{
    char *buf = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0;
    while (rc == 0 && (n = getline(&buf, &cap, f)) >= 0) {
        p->line++;
        if (strlen(buf) != (size_t)n)
            rc = fail_at(p, p->line, NULL, NULL, "NUL byte in line");
        else if (p->line == 1 && strncmp(buf, "\xEF\xBB\xBF", 3) == 0) /* UTF-8 BOM */
            rc = parse_line(p, buf + 3);
        else
            rc = parse_line(p, buf);
    }
    if (rc == 0 && !feof(f)) /* getline failed: a read error or out of memory */
        rc = fail_at(p, p->line + 1, NULL, NULL, "cannot read: %s", strerror(errno));
    free(buf);
    return rc;
}

int px_config_load(const char *path, struct px_config **out, char **errmsg)
{
    struct parser p = {.file = path, .errmsg = errmsg};
    FILE *f = NULL;
    int rc = -1;

    *out = NULL;
    *errmsg = NULL;
    p.cfg = calloc(1, sizeof(*p.cfg));
    if (!p.cfg || !(p.cfg->path = strdup(path))) {
        fail_at(&p, 0, NULL, NULL, "out of memory");
        goto done;
    }
    if (!(f = fopen(path, "r"))) {
        fail_at(&p, 0, NULL, NULL, "cannot open: %s", strerror(errno));
        goto done;
    }
    if (!(p.dir = config_dir(path))) {
        fail_at(&p, 0, NULL, NULL, "cannot resolve its directory: %s", strerror(errno));
        goto done;
    }
    for (size_t i = 0; i < ARRAY_LEN(key_sections); i++) {
        const struct px_cfg_section *s = &key_sections[i];
        if (apply_defaults(&p, s->name, s->keys, s->nkeys, p.cfg) < 0)
            goto done;
    }
    if (read_lines(&p, f) < 0 || validate(&p) < 0)
        goto done;
    *out = p.cfg;
    p.cfg = NULL;
    rc = 0;
done:
    if (f)
        fclose(f);
    free(p.dir);
    px_config_free(p.cfg);
    return rc;
}

void px_config_free(struct px_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < ARRAY_LEN(key_sections); i++)
        free_fields(key_sections[i].keys, key_sections[i].nkeys, cfg);
    for (size_t i = 0; i < cfg->ndbs; i++) {
        free(cfg->dbs[i].name);
        free_fields(db_keys, ARRAY_LEN(db_keys), &cfg->dbs[i]);
    }
    free(cfg->dbs);
    for (size_t i = 0; i < cfg->nchaos; i++) {
        free(cfg->chaos[i].name);
        free(cfg->chaos[i].params);
    }
    free(cfg->chaos);
    free(cfg->path);
    free(cfg);
}

/* ---- lookups, reload, iteration -------------------------------------------------------- */

const struct px_db_config *px_config_find_db(const struct px_config *cfg, const char *name)
{
    const struct px_db_config *fallback = NULL;
    for (size_t i = 0; i < cfg->ndbs; i++) {
        if (name && strcmp(cfg->dbs[i].name, name) == 0)
            return &cfg->dbs[i];
        if (strcmp(cfg->dbs[i].name, "*") == 0)
            fallback = &cfg->dbs[i];
    }
    return fallback;
}

static bool value_equal(const struct px_cfg_key *k, const void *a, const void *b)
{
    if (k->type == PX_CFG_INT || k->type == PX_CFG_ENUM)
        return *int_field_c(a, k) == *int_field_c(b, k);
    const char *x = *str_field_c(a, k), *y = *str_field_c(b, k);
    return x == y || (x && y && strcmp(x, y) == 0);
}

int px_config_diff(const struct px_config *old, const struct px_config *new_cfg,
                   px_config_change_cb cb, void *arg)
{
    int restart = 0;
    for (size_t s = 0; s < ARRAY_LEN(key_sections); s++) {
        const struct px_cfg_section *sec = &key_sections[s];
        for (size_t i = 0; i < sec->nkeys; i++) {
            const struct px_cfg_key *k = &sec->keys[i];
            if (value_equal(k, old, new_cfg))
                continue;
            if (cb)
                cb(sec->name, k->key, k->reloadable, arg);
            if (!k->reloadable)
                restart++;
        }
    }
    return restart;
}

int px_config_keep_restart_keys(struct px_config *new_cfg, const struct px_config *running)
{
    for (size_t s = 0; s < ARRAY_LEN(key_sections); s++) {
        const struct px_cfg_section *sec = &key_sections[s];
        for (size_t i = 0; i < sec->nkeys; i++) {
            const struct px_cfg_key *k = &sec->keys[i];
            if (k->reloadable || value_equal(k, running, new_cfg))
                continue;
            if (k->type == PX_CFG_INT || k->type == PX_CFG_ENUM) {
                *int_field(new_cfg, k) = *int_field_c(running, k);
                continue;
            }
            const char *v = *str_field_c(running, k);
            char *copy = v ? strdup(v) : NULL;
            if (v && !copy)
                return -1;
            set_str(new_cfg, k, copy);
        }
    }
    return 0;
}

void px_config_foreach_key(px_config_key_cb cb, void *arg)
{
    for (size_t s = 0; s < ARRAY_LEN(key_sections); s++) {
        for (size_t i = 0; i < key_sections[s].nkeys; i++)
            cb(key_sections[s].name, key_sections[s].keys[i].key, key_sections[s].keys[i].help,
               arg);
    }
    for (size_t i = 0; i < ARRAY_LEN(db_keys); i++)
        cb(DB_SECTION, db_keys[i].key, db_keys[i].help, arg);
}
