/*
 * config.h: pgwarden's configuration: the INI file, its declarative key tables, validation
 * and reload.
 *
 * The file has sections [pgwarden], [locks], [retry], [breaker], [databases] and [chaos]
 * ([chaos] lines are kept as written for chaos/chaos.c).  Each setting is one row of a
 * declarative table (section, key, type, struct offset, default, range, reloadable, help);
 * the parser is generic and knows nothing about individual keys.  See
 * docs/configuration.md for the user-facing reference; a unit test checks that every key in
 * the tables appears there and in conf/pgwarden.ini.
 *
 * Errors are reported as "FILE:LINE: [section] key: what is wrong" in an allocated string
 * the caller frees with free().
 */
#ifndef PGW_PROXY_CONFIG_H
#define PGW_PROXY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "retry/retry.h"

/*
 * One [chaos] line:  name = inject=error sqlstate=40001 probability=0.3 seed=42 ...
 * The parameters are kept as written: the rule engine (chaos/chaos.h) parses and validates
 * them when pgwarden applies the config (at start, --check and reload), naming file and
 * line from here.  This library only checks that names are unique.
 */
struct px_chaos_line {
    char *name;   /* the rule's name */
    char *params; /* the text after '=' (double quotes of the INI value removed) */
    int line;     /* line number in the file */
};

/* Upper bound of server_query_batch (the per-server queue of batched clients is this big). */
#define PX_QUERY_BATCH_MAX 8

enum px_pool_mode { PX_POOL_SESSION = 0, PX_POOL_TRANSACTION = 1 };
enum px_auth_type { PX_AUTH_TRUST = 0, PX_AUTH_MD5 = 1, PX_AUTH_SCRAM = 2 };
enum px_client_tls_mode { PX_CTLS_DISABLE = 0, PX_CTLS_ALLOW = 1, PX_CTLS_REQUIRE = 2 };
enum px_server_tls_mode {
    PX_STLS_DISABLE = 0,
    PX_STLS_PREFER = 1,
    PX_STLS_REQUIRE = 2,
    PX_STLS_VERIFY_CA = 3,
    PX_STLS_VERIFY_FULL = 4,
};
/* The config word of a server_tls_mode, which is libpq's sslmode of the same name. */
const char *px_config_server_tls_name(enum px_server_tls_mode mode);
/* Transaction pooling: session state that cannot follow a client to another server. */
enum px_unmovable { PX_UNMOVABLE_PIN = 0, PX_UNMOVABLE_RESET = 1 };
/* [locks] backend: where the lock space lives (docs/design/distributed-locks.md). */
enum px_locks_backend { PX_LOCKS_LOCAL = 0, PX_LOCKS_POSTGRESQL = 1 };
enum px_log_level { PX_LOG_DEBUG = 0, PX_LOG_INFO = 1, PX_LOG_WARNING = 2, PX_LOG_ERROR = 3 };

/*
 * One [databases] entry:  name = host=... port=... dbname=... user=... password=...
 *                                pool_size=... pool_mode=...
 * Values may be single-quoted as in libpq connection strings ('it''s' or 'it\'s').
 * The entry named "*" serves every database name not listed (as PgBouncer's).
 */
struct px_db_config {
    char *name;          /* the database name clients ask for; "*" for the fallback entry */
    char *host;          /* default "127.0.0.1"; a path starting with '/' is a Unix socket dir */
    int port;            /* default 5432 */
    char *dbname;        /* default: the name clients asked for */
    char *user;          /* NULL: connect as the client's user */
    char *password;      /* NULL: take the password from auth_file */
    int pool_size;       /* -1: use default_pool_size */
    int pool_mode;       /* -1: use [pgwarden] pool_mode, else enum px_pool_mode */
    int unmovable_state; /* -1: use [pgwarden] unmovable_state, else enum px_unmovable */
};

struct px_config {
    char *path; /* the file this was loaded from */

    /* [pgwarden] */
    char *listen_addr; /* default "127.0.0.1" */
    int listen_port;   /* default 6432 */
    char *admin_addr;  /* default "127.0.0.1" */
    int admin_port;    /* default 6480; 0 disables the admin port */
    char *admin_token; /* NULL or "": no token */
    char *admin_tls_cert_file;
    char *admin_tls_key_file;
    int admin_max_connections;               /* default 64: more are closed at once */
    int admin_request_timeout_ms;            /* default 10000: a request must be in by then */
    enum px_pool_mode pool_mode;             /* default session */
    int default_pool_size;                   /* default 20 */
    int max_client_conn;                     /* default 100 */
    enum px_auth_type auth_type;             /* default scram-sha-256 */
    char *auth_file;                         /* path; NULL: none (only trust works then) */
    enum px_client_tls_mode client_tls_mode; /* default disable */
    char *client_tls_cert_file;
    char *client_tls_key_file;
    char *client_tls_ca_file;
    enum px_server_tls_mode server_tls_mode; /* default prefer */
    char *server_tls_ca_file;
    char *server_reset_query;           /* default "DISCARD ALL"; "" disables */
    int max_prepared_statements;        /* default 100, per server, transaction pooling */
    int max_client_prepared_statements; /* default 10000, per client, transaction pooling */
    int server_query_batch;             /* default 1 (off): autocommit queries per server write */
    enum px_unmovable unmovable_state;  /* default pin */
    int query_wait_timeout_ms;          /* default 120000; 0 = wait forever */
    int server_connect_timeout_ms;      /* default 15000 */
    int server_login_retry_ms;          /* default 1000: fast-fail window after a failed login */
    int server_idle_timeout_ms;         /* default 600000; 0 = never */
    int server_lifetime_ms;             /* default 3600000; 0 = unlimited */
    int autodb_idle_timeout_ms;         /* default 3600000: free unused pools of the "*" entry */
    int client_login_timeout_ms;        /* default 60000 */
    int max_message_bytes;              /* default 1 MiB; range 8 KiB .. 1 GiB */
    int shutdown_timeout_ms;            /* default 30000 */
    enum px_log_level log_level;        /* default info */
    char *logfile;                      /* NULL: stderr */
    char *pidfile;                      /* NULL: none */

    /* [locks] */
    int lock_timeout_ms;           /* default 0: wait without a limit */
    int deadlock_timeout_ms;       /* default 1000: bound on finding a deadlock */
    int max_locks;                 /* default 100000; 0: no limit */
    char *state_file;              /* NULL: fencing tokens from the clock (see docs/locks.md) */
    enum px_locks_backend backend; /* default local */
    char *backend_conninfo;        /* libpq conninfo of the lock connections (postgresql) */
    int backend_connections;       /* default 2: lock connections to PostgreSQL */
    int lease_ms;                  /* default 10000: a lost instance's locks go within it */
    int hybrid_probe_ms;           /* default 200: probe for hybrid deadlocks; 0: never */

    /* [retry] (docs/retry.md): the keys as read; validation fills retry below */
    char *retryable_sqlstates;  /* default "40001, 40P01" */
    int max_attempts;           /* default 5; 1: no retry */
    int base_ms;                /* default 5 */
    int cap_ms;                 /* default 1000 */
    char *multiplier;           /* default "2" */
    enum backoff_jitter jitter; /* default full */
    int budget_pct;             /* default 10 */
    int budget_window_ms;       /* default 10000 */
    int budget_min_retries;     /* default 10 */
    int retry_buffer_bytes;     /* default 1 MiB */
    int retry_checkpoint_bytes; /* default 8192 */
    struct retry_config retry;  /* the section in retry/'s form (parsed, checked) */

    /* [breaker]: the circuit breaker of each database (pool/breaker.h, docs/breaker.md) */
    int failure_rate_pct;     /* default 50: share of failures in the window that opens it */
    int min_requests;         /* default 20: calls in the window before the rate counts */
    int window_ms;            /* default 10000: sliding window, 10 buckets */
    int consecutive_failures; /* default 5; 0: only the rate opens it */
    int open_ms;              /* default 1000: first open period */
    int open_max_ms;          /* default 4000: cap of the doubling open period */
    int probe_timeout_ms;     /* default 1000: a probe not done by then failed */

    /* [databases] */
    struct px_db_config *dbs;
    size_t ndbs;

    /* [chaos]: fault-injection rules, in file order */
    struct px_chaos_line *chaos;
    size_t nchaos;
};

/*
 * Reads and validates path.  On success returns 0 and *out (free with px_config_free).
 * On failure returns -1 and *errmsg (free with free()), naming file, line and key.
 * Unknown sections and keys, bad values, values out of range and duplicate keys are errors.
 */
__attribute__((warn_unused_result)) int px_config_load(const char *path, struct px_config **out,
                                                       char **errmsg);
void px_config_free(struct px_config *cfg);

/* Finds the [databases] entry for name: exact match first, then "*"; NULL if none. */
const struct px_db_config *px_config_find_db(const struct px_config *cfg, const char *name);

/*
 * Reload support: calls cb once for every [pgwarden] key whose value differs between old
 * and new, telling whether the key can change without a restart.  Returns the number of
 * changed keys that are not reloadable.
 */
typedef void (*px_config_change_cb)(const char *section, const char *key, bool reloadable,
                                    void *arg);
int px_config_diff(const struct px_config *old, const struct px_config *new_cfg,
                   px_config_change_cb cb, void *arg);

/*
 * Reload support: copies the value of every key that needs a restart from running into
 * new_cfg, so that after a reload new_cfg describes what is in effect (such keys keep their
 * running value).  running is borrowed.  Returns 0, or -1 when out of memory (new_cfg is
 * then partly updated: free it and keep running).
 */
__attribute__((warn_unused_result)) int
px_config_keep_restart_keys(struct px_config *new_cfg, const struct px_config *running);

/*
 * Takes the next `key=value` pair off a libpq-style parameter string (as in [databases]
 * and [chaos] lines), in place: *sp advances, *key and *value point into the string.
 * Values may be single-quoted ('it''s', 'it\'s'); outside quotes a backslash escapes the
 * next character.  Returns 1 with *key and *value set, 0 at the end, -1 with why set.
 */
int px_config_next_param(char **sp, char **key, char **value, char *why, size_t whylen);

/* The key tables, for documentation checks: calls cb(section, key, help) for every key. */
typedef void (*px_config_key_cb)(const char *section, const char *key, const char *help, void *arg);
void px_config_foreach_key(px_config_key_cb cb, void *arg);

#endif
