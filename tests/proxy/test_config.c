/*
 * test_config.c: tests of proxy/config.c through its public interface (config.h): defaults,
 * every value type, INI syntax, every error class with its exact "FILE:LINE: [section] key:"
 * message, [databases] entries, px_config_find_db, px_config_diff and the key iterator.
 *
 * Each test writes its configuration into t.ini in a private temporary directory.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "base/config.h"

static char tmpdir[PATH_MAX];         /* realpath of the private directory */
static char conf_path[PATH_MAX + 16]; /* tmpdir/t.ini */

static int suite_init(void)
{
    char templ[] = "/tmp/pgw_config_XXXXXX";
    if (!mkdtemp(templ) || !realpath(templ, tmpdir))
        return -1;
    snprintf(conf_path, sizeof(conf_path), "%s/t.ini", tmpdir);
    return 0;
}

static int suite_cleanup(void)
{
    unlink(conf_path);
    return rmdir(tmpdir);
}

static void write_file(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    CU_ASSERT_FATAL(f != NULL);
    CU_ASSERT_FATAL(fwrite(text, 1, len, f) == len);
    CU_ASSERT_FATAL(fclose(f) == 0);
}

/* Loads text as a config file; on success returns the config, else NULL and *err. */
static struct px_config *load_text(const char *text, char **err)
{
    struct px_config *cfg = NULL;
    write_file(conf_path, text, strlen(text));
    if (px_config_load(conf_path, &cfg, err) < 0) {
        CU_ASSERT(cfg == NULL);
        return NULL;
    }
    CU_ASSERT(*err == NULL);
    return cfg;
}

/* Loads text that must be valid. */
static struct px_config *load_ok(const char *text)
{
    char *err = NULL;
    struct px_config *cfg = load_text(text, &err);
    if (!cfg)
        fprintf(stderr, "\nunexpected error: %s\n", err ? err : "(null)");
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    return cfg;
}

/* Loads text that must fail with the message conf_path + expected. */
static void expect_error(const char *text, const char *expected)
{
    char *err = NULL, want[PATH_MAX + 512];
    struct px_config *cfg = load_text(text, &err);
    CU_ASSERT_PTR_NULL(cfg);
    px_config_free(cfg);
    snprintf(want, sizeof(want), "%s%s", conf_path, expected);
    CU_ASSERT_PTR_NOT_NULL_FATAL(err);
    if (strcmp(err, want) != 0)
        fprintf(stderr, "\n   got: %s\n  want: %s\n", err, want);
    CU_ASSERT_STRING_EQUAL(err, want);
    free(err);
}

#define TRUST "[pgwarden]\nauth_type = trust\n" /* lines 1-2 of many tests */

/* ---- defaults, types, syntax ------------------------------------------------------------ */

static void test_defaults(void)
{
    struct px_config *c = load_ok("[pgwarden]\nauth_file = users.txt\n");
    char users[PATH_MAX + 16];
    snprintf(users, sizeof(users), "%s/users.txt", tmpdir);
    CU_ASSERT_STRING_EQUAL(c->path, conf_path);
    CU_ASSERT_STRING_EQUAL(c->listen_addr, "127.0.0.1");
    CU_ASSERT_EQUAL(c->listen_port, 6432);
    CU_ASSERT_STRING_EQUAL(c->admin_addr, "127.0.0.1");
    CU_ASSERT_EQUAL(c->admin_port, 6480);
    CU_ASSERT_PTR_NULL(c->admin_token);
    CU_ASSERT_PTR_NULL(c->admin_tls_cert_file);
    CU_ASSERT_PTR_NULL(c->admin_tls_key_file);
    CU_ASSERT_EQUAL(c->pool_mode, PX_POOL_SESSION);
    CU_ASSERT_EQUAL(c->default_pool_size, 20);
    CU_ASSERT_EQUAL(c->max_client_conn, 100);
    CU_ASSERT_EQUAL(c->auth_type, PX_AUTH_SCRAM);
    CU_ASSERT_STRING_EQUAL(c->auth_file, users);
    CU_ASSERT_EQUAL(c->client_tls_mode, PX_CTLS_DISABLE);
    CU_ASSERT_PTR_NULL(c->client_tls_cert_file);
    CU_ASSERT_PTR_NULL(c->client_tls_key_file);
    CU_ASSERT_PTR_NULL(c->client_tls_ca_file);
    CU_ASSERT_EQUAL(c->server_tls_mode, PX_STLS_PREFER);
    CU_ASSERT_PTR_NULL(c->server_tls_ca_file);
    CU_ASSERT_STRING_EQUAL(c->server_reset_query, "DISCARD ALL");
    CU_ASSERT_EQUAL(c->query_wait_timeout_ms, 120000);
    CU_ASSERT_EQUAL(c->server_connect_timeout_ms, 15000);
    CU_ASSERT_EQUAL(c->server_login_retry_ms, 1000);
    CU_ASSERT_EQUAL(c->server_idle_timeout_ms, 600000);
    CU_ASSERT_EQUAL(c->server_lifetime_ms, 3600000);
    CU_ASSERT_EQUAL(c->client_login_timeout_ms, 60000);
    CU_ASSERT_EQUAL(c->max_message_bytes, 1024 * 1024);
    CU_ASSERT_EQUAL(c->shutdown_timeout_ms, 30000);
    CU_ASSERT_EQUAL(c->log_level, PX_LOG_INFO);
    CU_ASSERT_PTR_NULL(c->logfile);
    CU_ASSERT_PTR_NULL(c->pidfile);
    CU_ASSERT_PTR_NULL(c->dbs);
    CU_ASSERT_EQUAL(c->ndbs, 0);
    px_config_free(c);
}

static void test_every_key_set(void)
{
    struct px_config *c = load_ok("[pgwarden]\n"
                                  "listen_addr = 0.0.0.0\n"
                                  "listen_port = 7000\n"
                                  "admin_addr = ::1\n"
                                  "admin_port = 0\n"
                                  "admin_token = \"s3cr;et #x\"\n"
                                  "admin_tls_cert_file = /etc/a.crt\n"
                                  "admin_tls_key_file = a.key\n"
                                  "pool_mode = transaction\n"
                                  "default_pool_size = 1\n"
                                  "max_client_conn = 1000000\n"
                                  "auth_type = md5\n"
                                  "auth_file = sub/users.txt\n"
                                  "client_tls_mode = require\n"
                                  "client_tls_cert_file = c.crt\n"
                                  "client_tls_key_file = c.key\n"
                                  "client_tls_ca_file = ca.crt\n"
                                  "server_tls_mode = verify-full\n"
                                  "server_tls_ca_file = /ca.crt\n"
                                  "server_reset_query = \"\"\n"
                                  "query_wait_timeout_ms = 0\n"
                                  "server_connect_timeout_ms = 1\n"
                                  "server_login_retry_ms = 0\n"
                                  "server_idle_timeout_ms = 0\n"
                                  "server_lifetime_ms = 2147483647\n"
                                  "client_login_timeout_ms = 5\n"
                                  "max_message_bytes = 8192\n"
                                  "shutdown_timeout_ms = 0\n"
                                  "log_level = debug\n"
                                  "logfile = log/pgwarden.log\n"
                                  "pidfile = /run/pgwarden.pid\n");
    char p[PATH_MAX + 32];
    CU_ASSERT_STRING_EQUAL(c->listen_addr, "0.0.0.0");
    CU_ASSERT_EQUAL(c->listen_port, 7000);
    CU_ASSERT_STRING_EQUAL(c->admin_addr, "::1");
    CU_ASSERT_EQUAL(c->admin_port, 0);
    CU_ASSERT_STRING_EQUAL(c->admin_token, "s3cr;et #x");
    CU_ASSERT_STRING_EQUAL(c->admin_tls_cert_file, "/etc/a.crt");
    snprintf(p, sizeof(p), "%s/a.key", tmpdir);
    CU_ASSERT_STRING_EQUAL(c->admin_tls_key_file, p);
    CU_ASSERT_EQUAL(c->pool_mode, PX_POOL_TRANSACTION);
    CU_ASSERT_EQUAL(c->default_pool_size, 1);
    CU_ASSERT_EQUAL(c->max_client_conn, 1000000);
    CU_ASSERT_EQUAL(c->auth_type, PX_AUTH_MD5);
    snprintf(p, sizeof(p), "%s/sub/users.txt", tmpdir);
    CU_ASSERT_STRING_EQUAL(c->auth_file, p);
    CU_ASSERT_EQUAL(c->client_tls_mode, PX_CTLS_REQUIRE);
    snprintf(p, sizeof(p), "%s/c.crt", tmpdir);
    CU_ASSERT_STRING_EQUAL(c->client_tls_cert_file, p);
    snprintf(p, sizeof(p), "%s/c.key", tmpdir);
    CU_ASSERT_STRING_EQUAL(c->client_tls_key_file, p);
    snprintf(p, sizeof(p), "%s/ca.crt", tmpdir);
    CU_ASSERT_STRING_EQUAL(c->client_tls_ca_file, p);
    CU_ASSERT_EQUAL(c->server_tls_mode, PX_STLS_VERIFY_FULL);
    CU_ASSERT_STRING_EQUAL(c->server_tls_ca_file, "/ca.crt");
    CU_ASSERT_STRING_EQUAL(c->server_reset_query, "");
    CU_ASSERT_EQUAL(c->query_wait_timeout_ms, 0);
    CU_ASSERT_EQUAL(c->server_connect_timeout_ms, 1);
    CU_ASSERT_EQUAL(c->server_login_retry_ms, 0);
    CU_ASSERT_EQUAL(c->server_idle_timeout_ms, 0);
    CU_ASSERT_EQUAL(c->server_lifetime_ms, 2147483647);
    CU_ASSERT_EQUAL(c->client_login_timeout_ms, 5);
    CU_ASSERT_EQUAL(c->max_message_bytes, 8192);
    CU_ASSERT_EQUAL(c->shutdown_timeout_ms, 0);
    CU_ASSERT_EQUAL(c->log_level, PX_LOG_DEBUG);
    snprintf(p, sizeof(p), "%s/log/pgwarden.log", tmpdir);
    CU_ASSERT_STRING_EQUAL(c->logfile, p);
    CU_ASSERT_STRING_EQUAL(c->pidfile, "/run/pgwarden.pid");
    px_config_free(c);
}

/* Loads "key = value" after TRUST and returns the int stored at the field. */
static int enum_value(const char *key, const char *value, size_t offset)
{
    char text[256];
    snprintf(text, sizeof(text),
             TRUST "server_tls_ca_file = ca\nclient_tls_cert_file = c\n"
                   "client_tls_key_file = k\n%s = %s\n",
             key, value);
    struct px_config *c = load_ok(text);
    int v = *(const int *)((const char *)c + offset);
    px_config_free(c);
    return v;
}

static void test_enum_spellings(void)
{
    const size_t pm = offsetof(struct px_config, pool_mode);
    const size_t ct = offsetof(struct px_config, client_tls_mode);
    const size_t st = offsetof(struct px_config, server_tls_mode);
    const size_t ll = offsetof(struct px_config, log_level);
    CU_ASSERT_EQUAL(enum_value("pool_mode", "session", pm), PX_POOL_SESSION);
    CU_ASSERT_EQUAL(enum_value("pool_mode", "transaction", pm), PX_POOL_TRANSACTION);
    CU_ASSERT_EQUAL(enum_value("client_tls_mode", "disable", ct), PX_CTLS_DISABLE);
    CU_ASSERT_EQUAL(enum_value("client_tls_mode", "allow", ct), PX_CTLS_ALLOW);
    CU_ASSERT_EQUAL(enum_value("client_tls_mode", "require", ct), PX_CTLS_REQUIRE);
    CU_ASSERT_EQUAL(enum_value("server_tls_mode", "disable", st), PX_STLS_DISABLE);
    CU_ASSERT_EQUAL(enum_value("server_tls_mode", "prefer", st), PX_STLS_PREFER);
    CU_ASSERT_EQUAL(enum_value("server_tls_mode", "require", st), PX_STLS_REQUIRE);
    CU_ASSERT_EQUAL(enum_value("server_tls_mode", "verify-ca", st), PX_STLS_VERIFY_CA);
    CU_ASSERT_EQUAL(enum_value("server_tls_mode", "verify-full", st), PX_STLS_VERIFY_FULL);
    CU_ASSERT_EQUAL(enum_value("log_level", "debug", ll), PX_LOG_DEBUG);
    CU_ASSERT_EQUAL(enum_value("log_level", "info", ll), PX_LOG_INFO);
    CU_ASSERT_EQUAL(enum_value("log_level", "warning", ll), PX_LOG_WARNING);
    CU_ASSERT_EQUAL(enum_value("log_level", "error", ll), PX_LOG_ERROR);

    struct px_config *c = load_ok("[pgwarden]\nauth_type = scram-sha-256\nauth_file = u\n");
    CU_ASSERT_EQUAL(c->auth_type, PX_AUTH_SCRAM);
    px_config_free(c);
    c = load_ok("[pgwarden]\nauth_type = trust\n");
    CU_ASSERT_EQUAL(c->auth_type, PX_AUTH_TRUST);
    px_config_free(c);
}

static void test_syntax(void)
{
    static const char text[] = "\xEF\xBB\xBF; comment\r\n"
                               "   # indented comment\n"
                               "\n"
                               "\t[ pgwarden ]  \n"
                               "auth_type=trust\r\n"
                               "  listen_port\t=\t7001  \n"
                               "admin_token =\n"
                               "[databases]\n"
                               "[pgwarden]\n"
                               "server_reset_query = \"RESET ALL; \\\"x\\\" \\\\ y\"\n"
                               "logfile =\n"
                               "listen_addr = a ; not a comment";
    struct px_config *c = load_ok(text);
    CU_ASSERT_EQUAL(c->auth_type, PX_AUTH_TRUST);
    CU_ASSERT_EQUAL(c->listen_port, 7001);
    CU_ASSERT_STRING_EQUAL(c->admin_token, "");
    CU_ASSERT_STRING_EQUAL(c->server_reset_query, "RESET ALL; \"x\" \\ y");
    CU_ASSERT_PTR_NULL(c->logfile); /* "logfile =" unsets it again */
    CU_ASSERT_STRING_EQUAL(c->listen_addr, "a ; not a comment");
    px_config_free(c);
}

/* ---- errors ----------------------------------------------------------------------------- */

static void test_error_unknown_section_and_key(void)
{
    expect_error(TRUST "\n[pools]\n", ":4: [pools]: unknown section");
    expect_error(TRUST "; c\nlisten_prot = 1\n", ":4: [pgwarden] listen_prot: unknown key");
    expect_error(TRUST "[databases]\n[pgwarden]\nhost = x\n", ":5: [pgwarden] host: unknown key");
}

static void test_error_duplicate_key(void)
{
    expect_error("[pgwarden]\nlisten_port = 1\nauth_type = trust\n\nlisten_port = 2\n",
                 ":5: [pgwarden] listen_port: duplicate key (first set on line 2)");
    expect_error("[pgwarden]\nauth_type = trust\n[databases]\n[pgwarden]\nauth_type = md5\n",
                 ":5: [pgwarden] auth_type: duplicate key (first set on line 2)");
}

static void test_error_bad_integer(void)
{
    expect_error(TRUST "listen_port = 64x\n", ":3: [pgwarden] listen_port: bad integer \"64x\"");
    expect_error(TRUST "listen_port =\n", ":3: [pgwarden] listen_port: bad integer \"\"");
    expect_error(TRUST "listen_port = 1.5\n", ":3: [pgwarden] listen_port: bad integer \"1.5\"");
    expect_error(TRUST "server_lifetime_ms = 99999999999999999999\n",
                 ":3: [pgwarden] server_lifetime_ms: bad integer \"99999999999999999999\"");
}

static void test_error_out_of_range(void)
{
    expect_error(TRUST "listen_port = 70000\n",
                 ":3: [pgwarden] listen_port: 70000 out of range 1..65535");
    expect_error(TRUST "listen_port = 0\n", ":3: [pgwarden] listen_port: 0 out of range 1..65535");
    expect_error(TRUST "max_message_bytes = 100\n",
                 ":3: [pgwarden] max_message_bytes: 100 out of range 8192..1073741824");
    expect_error(TRUST "query_wait_timeout_ms = -1\n",
                 ":3: [pgwarden] query_wait_timeout_ms: -1 out of range 0..2147483647");
    expect_error(TRUST "server_lifetime_ms = 2147483648\n",
                 ":3: [pgwarden] server_lifetime_ms: 2147483648 out of range 0..2147483647");
    expect_error(TRUST "listen_addr =\n", ":3: [pgwarden] listen_addr: must not be empty");
}

static void test_error_bad_enum(void)
{
    expect_error(TRUST "pool_mode = statement\n",
                 ":3: [pgwarden] pool_mode: bad value \"statement\" "
                 "(expected session | transaction)");
    expect_error("[pgwarden]\nauth_type = password\n",
                 ":2: [pgwarden] auth_type: bad value \"password\" "
                 "(expected trust | md5 | scram-sha-256)");
    expect_error(TRUST "server_tls_mode = Require\n",
                 ":3: [pgwarden] server_tls_mode: bad value \"Require\" "
                 "(expected disable | prefer | require | verify-ca | verify-full)");
    expect_error(TRUST "log_level = warn\n", ":3: [pgwarden] log_level: bad value \"warn\" "
                                             "(expected debug | info | warning | error)");
}

/* [retry]: defaults in retry/'s form, values parsed, and the section's own checks named by
 * key and line. */
static void test_retry_section(void)
{
    struct px_config *cfg = load_ok(TRUST);
    CU_ASSERT_EQUAL(cfg->retry.max_attempts, 5);
    CU_ASSERT_EQUAL(cfg->retry.retryable_sqlstates.n, 2);
    CU_ASSERT_STRING_EQUAL(cfg->retry.retryable_sqlstates.codes[1], "40P01");
    CU_ASSERT_DOUBLE_EQUAL(cfg->retry.multiplier, 2.0, 1e-9);
    CU_ASSERT_EQUAL(cfg->retry.jitter, BACKOFF_JITTER_FULL);
    CU_ASSERT_EQUAL(cfg->retry.retry_buffer_bytes, 1048576);
    px_config_free(cfg);
    cfg = load_ok(TRUST "[retry]\nretryable_sqlstates = 40001 55P03, 08\nmultiplier = 1.5\n"
                        "jitter = decorrelated\nmax_attempts = 1\n");
    CU_ASSERT_EQUAL(cfg->retry.retryable_sqlstates.n, 3);
    CU_ASSERT_STRING_EQUAL(cfg->retry.retryable_sqlstates.codes[2], "08");
    CU_ASSERT_DOUBLE_EQUAL(cfg->retry.multiplier, 1.5, 1e-9);
    CU_ASSERT_EQUAL(cfg->retry.jitter, BACKOFF_JITTER_DECORRELATED);
    CU_ASSERT_EQUAL(cfg->retry.max_attempts, 1);
    px_config_free(cfg);
    cfg = load_ok(TRUST "[retry]\nretryable_sqlstates =\n");
    CU_ASSERT_EQUAL(cfg->retry.retryable_sqlstates.n, 0);
    px_config_free(cfg);
    expect_error(TRUST "[retry]\nretryable_sqlstates = 4000\n",
                 ":4: [retry] retryable_sqlstates: bad list \"4000\" (5-character SQLSTATEs or "
                 "2-character classes of 0-9 and A-Z, separated by commas, at most 16)");
    expect_error(TRUST "[retry]\n\nmultiplier = two\n",
                 ":5: [retry] multiplier: bad number \"two\"");
    expect_error(TRUST "[retry]\nmultiplier = 0.5\n", ":4: [retry] multiplier: must be 1..100");
    expect_error(TRUST "[retry]\nbase_ms = 50\ncap_ms = 10\n",
                 ":5: [retry] cap_ms: must be base_ms..3600000");
    expect_error(TRUST "[retry]\nmax_attempts = 0\n",
                 ":4: [retry] max_attempts: 0 out of range 1..100");
    expect_error(TRUST "[retry]\njitter = random\n",
                 ":4: [retry] jitter: bad value \"random\" (expected full | equal | "
                 "decorrelated | none)");
}

static void test_error_syntax(void)
{
    expect_error(TRUST "listen_port 6432\n",
                 ":3: [pgwarden] listen_port 6432: missing '=' (expected key = value)");
    expect_error(TRUST " = 5\n", ":3: [pgwarden]: missing key before '='");
    expect_error("; c\nauth_type = trust\n", ":2: auth_type: key outside any section");
    expect_error("[pgwarden\n", ":1: missing ']' in section header");
    expect_error("[pgwarden] x\n", ":1: text after ']' in section header");
    expect_error(TRUST "server_reset_query = \"DISCARD ALL\n",
                 ":3: [pgwarden] server_reset_query: unterminated double quote");
    expect_error(TRUST "server_reset_query = \"DISCARD\" ALL\n",
                 ":3: [pgwarden] server_reset_query: text after the closing double quote");
    static const char nul[] = "[pgwarden]\nauth_type = trust\nlisten_port = 1\0002\n";
    char *err = NULL, want[PATH_MAX + 64];
    struct px_config *cfg = NULL;
    write_file(conf_path, nul, sizeof(nul) - 1);
    CU_ASSERT_EQUAL(px_config_load(conf_path, &cfg, &err), -1);
    snprintf(want, sizeof(want), "%s:3: NUL byte in line", conf_path);
    CU_ASSERT_STRING_EQUAL(err, want);
    free(err);
}

static void test_error_cross_field(void)
{
    expect_error("[pgwarden]\nlisten_port = 1\n",
                 ": [pgwarden] auth_type: scram-sha-256 needs auth_file");
    expect_error("[pgwarden]\n\nauth_type = md5\n",
                 ":3: [pgwarden] auth_type: md5 needs auth_file");
    expect_error(TRUST "client_tls_mode = require\nclient_tls_cert_file = c.crt\n",
                 ":3: [pgwarden] client_tls_mode: require needs client_tls_cert_file and "
                 "client_tls_key_file");
    expect_error(TRUST "client_tls_key_file = c.key\nclient_tls_mode = allow\n",
                 ":4: [pgwarden] client_tls_mode: allow needs client_tls_cert_file and "
                 "client_tls_key_file");
    expect_error(TRUST "server_tls_mode = verify-ca\n",
                 ":3: [pgwarden] server_tls_mode: verify-ca needs server_tls_ca_file");
    expect_error(TRUST "server_tls_mode = verify-full\n",
                 ":3: [pgwarden] server_tls_mode: verify-full needs server_tls_ca_file");
    expect_error(TRUST "admin_tls_key_file = a.key\n",
                 ":3: [pgwarden] admin_tls_key_file: admin_tls_cert_file and "
                 "admin_tls_key_file go together");
    expect_error(TRUST "admin_port = 6432\n", ":3: [pgwarden] admin_port: same address and port as "
                                              "listen_addr:listen_port");
}

/* [locks] backend: default local, postgresql with its keys, postgresql needs a conninfo. */
static void test_locks_backend(void)
{
    struct px_config *c = load_ok(TRUST);
    CU_ASSERT_EQUAL(c->backend, PX_LOCKS_LOCAL);
    CU_ASSERT_PTR_NULL(c->backend_conninfo);
    CU_ASSERT_EQUAL(c->backend_connections, 2);
    CU_ASSERT_EQUAL(c->lease_ms, 10000);
    px_config_free(c);
    c = load_ok(TRUST "[locks]\nbackend = postgresql\nbackend_conninfo = host=db dbname=app\n"
                      "backend_connections = 4\nlease_ms = 3000\n");
    CU_ASSERT_EQUAL(c->backend, PX_LOCKS_POSTGRESQL);
    CU_ASSERT_STRING_EQUAL(c->backend_conninfo, "host=db dbname=app");
    CU_ASSERT_EQUAL(c->backend_connections, 4);
    CU_ASSERT_EQUAL(c->lease_ms, 3000);
    px_config_free(c);
    expect_error(TRUST "[locks]\nbackend = postgresql\n",
                 ":4: [locks] backend: postgresql needs backend_conninfo");
    char *err = NULL;
    CU_ASSERT_PTR_NULL(load_text(TRUST "[locks]\nbackend = etcd\n", &err));
    CU_ASSERT_PTR_NOT_NULL(err);
    free(err);
    err = NULL;
    CU_ASSERT_PTR_NULL(load_text(TRUST "[locks]\nlease_ms = 999\n", &err));
    free(err);
    err = NULL;
    CU_ASSERT_PTR_NULL(load_text(TRUST "[locks]\nbackend_connections = 65\n", &err));
    free(err);
}

/* [breaker]: defaults, every key, ranges, open_max_ms >= open_ms (with its line), reload. */
static void test_breaker_section(void)
{
    struct px_config *c = load_ok(TRUST);
    CU_ASSERT_EQUAL(c->failure_rate_pct, 50);
    CU_ASSERT_EQUAL(c->min_requests, 20);
    CU_ASSERT_EQUAL(c->window_ms, 10000);
    CU_ASSERT_EQUAL(c->consecutive_failures, 5);
    CU_ASSERT_EQUAL(c->open_ms, 1000);
    CU_ASSERT_EQUAL(c->open_max_ms, 4000);
    CU_ASSERT_EQUAL(c->probe_timeout_ms, 1000);
    px_config_free(c);
    c = load_ok(TRUST "[breaker]\nfailure_rate_pct = 100\nmin_requests = 1\nwindow_ms = 100\n"
                      "consecutive_failures = 0\nopen_ms = 1\nopen_max_ms = 1\n"
                      "probe_timeout_ms = 3600000\n");
    CU_ASSERT_EQUAL(c->failure_rate_pct, 100);
    CU_ASSERT_EQUAL(c->min_requests, 1);
    CU_ASSERT_EQUAL(c->window_ms, 100);
    CU_ASSERT_EQUAL(c->consecutive_failures, 0);
    CU_ASSERT_EQUAL(c->open_ms, 1);
    CU_ASSERT_EQUAL(c->open_max_ms, 1);
    CU_ASSERT_EQUAL(c->probe_timeout_ms, 3600000);
    px_config_free(c);
    expect_error(TRUST "[breaker]\nfailure_rate_pct = 0\n",
                 ":4: [breaker] failure_rate_pct: 0 out of range 1..100");
    expect_error(TRUST "[breaker]\nwindow_ms = 99\n",
                 ":4: [breaker] window_ms: 99 out of range 100..3600000");
    expect_error(TRUST "[breaker]\nopen_ms = 0\n",
                 ":4: [breaker] open_ms: 0 out of range 1..3600000");
    expect_error(TRUST "[breaker]\nopen_ms = 5000\nopen_max_ms = 4000\n",
                 ":5: [breaker] open_max_ms: 4000 is less than open_ms (5000)");
    expect_error(TRUST "[breaker]\nopen_ms = 70000\n",
                 ": [breaker] open_max_ms: 4000 is less than open_ms (70000)");
    expect_error(TRUST "[breaker]\nprobe_timeout = 1\n",
                 ":4: [breaker] probe_timeout: unknown key");
    /* Every key reloads. */
    struct px_config *run = load_ok(TRUST);
    struct px_config *next = load_ok(TRUST "[breaker]\nopen_ms = 100\nmin_requests = 7\n");
    CU_ASSERT_EQUAL(px_config_diff(run, next, NULL, NULL), 0);
    px_config_free(run);
    px_config_free(next);
}

static void test_error_cannot_open(void)
{
    char *err = NULL, path[PATH_MAX + 16], want[PATH_MAX + 64];
    struct px_config *cfg = (struct px_config *)&cfg; /* must be reset to NULL */
    snprintf(path, sizeof(path), "%s/missing.ini", tmpdir);
    CU_ASSERT_EQUAL(px_config_load(path, &cfg, &err), -1);
    CU_ASSERT_PTR_NULL(cfg);
    snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
    CU_ASSERT_STRING_EQUAL(err, want);
    free(err);

    err = NULL;
    CU_ASSERT_EQUAL(px_config_load(tmpdir, &cfg, &err), -1); /* a directory */
    snprintf(want, sizeof(want), "%s:1: cannot read: Is a directory", tmpdir);
    CU_ASSERT_STRING_EQUAL(err, want);
    free(err);
}

/* ---- [databases] ------------------------------------------------------------------------ */

static void test_db_entries(void)
{
    struct px_config *c = load_ok(TRUST "[databases]\n"
                                        "; name = conninfo\n"
                                        "app = host=db1 port=5433 dbname=appdb user=u "
                                        "password='it''s a secret' pool_size=5 "
                                        "pool_mode=transaction\n"
                                        "quoted=host = '/run/pg'  password='it\\'s' "
                                        "user=a\\ b dbname='my db'\n"
                                        "plain =\n"
                                        "* = host=fallback\n");
    CU_ASSERT_EQUAL_FATAL(c->ndbs, 4);
    const struct px_db_config *d = &c->dbs[0];
    CU_ASSERT_STRING_EQUAL(d->name, "app");
    CU_ASSERT_STRING_EQUAL(d->host, "db1");
    CU_ASSERT_EQUAL(d->port, 5433);
    CU_ASSERT_STRING_EQUAL(d->dbname, "appdb");
    CU_ASSERT_STRING_EQUAL(d->user, "u");
    CU_ASSERT_STRING_EQUAL(d->password, "it's a secret");
    CU_ASSERT_EQUAL(d->pool_size, 5);
    CU_ASSERT_EQUAL(d->pool_mode, PX_POOL_TRANSACTION);

    d = &c->dbs[1];
    CU_ASSERT_STRING_EQUAL(d->name, "quoted");
    CU_ASSERT_STRING_EQUAL(d->host, "/run/pg");
    CU_ASSERT_STRING_EQUAL(d->password, "it's");
    CU_ASSERT_STRING_EQUAL(d->user, "a b");
    CU_ASSERT_STRING_EQUAL(d->dbname, "my db");

    d = &c->dbs[2]; /* every parameter at its default */
    CU_ASSERT_STRING_EQUAL(d->name, "plain");
    CU_ASSERT_STRING_EQUAL(d->host, "127.0.0.1");
    CU_ASSERT_EQUAL(d->port, 5432);
    CU_ASSERT_STRING_EQUAL(d->dbname, "plain");
    CU_ASSERT_PTR_NULL(d->user);
    CU_ASSERT_PTR_NULL(d->password);
    CU_ASSERT_EQUAL(d->pool_size, -1);
    CU_ASSERT_EQUAL(d->pool_mode, -1);

    d = &c->dbs[3];
    CU_ASSERT_STRING_EQUAL(d->name, "*");
    CU_ASSERT_STRING_EQUAL(d->host, "fallback");
    CU_ASSERT_PTR_NULL(d->dbname); /* the name the client asked for */
    px_config_free(c);
}

static void test_find_db(void)
{
    struct px_config *c = load_ok(TRUST "[databases]\n* = host=any\nexact = host=one\n");
    const struct px_db_config *d = px_config_find_db(c, "exact");
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    CU_ASSERT_STRING_EQUAL(d->host, "one");
    d = px_config_find_db(c, "other");
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    CU_ASSERT_STRING_EQUAL(d->name, "*");
    CU_ASSERT_STRING_EQUAL(d->host, "any");
    CU_ASSERT_PTR_EQUAL(px_config_find_db(c, NULL), d);
    px_config_free(c);

    c = load_ok(TRUST "[databases]\nexact = host=one\n");
    CU_ASSERT_PTR_NOT_NULL(px_config_find_db(c, "exact"));
    CU_ASSERT_PTR_NULL(px_config_find_db(c, "other"));
    CU_ASSERT_PTR_NULL(px_config_find_db(c, "exac"));
    px_config_free(c);
    c = load_ok(TRUST);
    CU_ASSERT_PTR_NULL(px_config_find_db(c, "x"));
    px_config_free(c);
}

static void test_db_errors(void)
{
#define DBS TRUST "[databases]\n" /* entries start on line 4 */
    expect_error(DBS "a = host=x sslmode=require\n",
                 ":4: [databases] a: unknown parameter \"sslmode\"");
    expect_error(DBS "a = host=x\nb = port=99999\n",
                 ":5: [databases] b: port: 99999 out of range 1..65535");
    expect_error(DBS "a = port=54x\n", ":4: [databases] a: port: bad integer \"54x\"");
    expect_error(DBS "a = pool_size=0\n", ":4: [databases] a: pool_size: 0 out of range 1..100000");
    expect_error(DBS "a = pool_mode=statement\n",
                 ":4: [databases] a: pool_mode: bad value \"statement\" "
                 "(expected session | transaction)");
    expect_error(DBS "a = host=x host=y\n", ":4: [databases] a: parameter \"host\" given twice");
    expect_error(DBS "a = host=x\n\na = host=y\n", ":6: [databases] a: duplicate database entry");
    expect_error(DBS "a = password='abc\n",
                 ":4: [databases] a: unterminated quoted value of \"password\"");
    expect_error(DBS "a = password='abc'x\n",
                 ":4: [databases] a: text after the quoted value of \"password\"");
    expect_error(DBS "a = host\n", ":4: [databases] a: expected name=value, found \"host\"");
    expect_error(DBS "a = host=x =y\n", ":4: [databases] a: expected name=value, found \"\"");
    expect_error(DBS "a = host=\n", ":4: [databases] a: host: must not be empty");
    expect_error(DBS "a\n", ":4: [databases] a: missing '=' (expected key = value)");
#undef DBS
}

/* ---- reload diff ------------------------------------------------------------------------ */

struct changes {
    int n;
    char keys[16][40];
    bool reloadable[16];
};

static void record_change(const char *section, const char *key, bool reloadable, void *arg)
{
    struct changes *ch = arg;
    CU_ASSERT_STRING_EQUAL(section, "pgwarden");
    if (ch->n < 16) {
        snprintf(ch->keys[ch->n], sizeof(ch->keys[0]), "%s", key);
        ch->reloadable[ch->n] = reloadable;
    }
    ch->n++;
}

/* Diffs two configs; returns the diff's result, changes in *ch. */
static int diff_texts(const char *a, const char *b, struct changes *ch)
{
    struct px_config *old = load_ok(a), *new_cfg = load_ok(b);
    memset(ch, 0, sizeof(*ch));
    int rc = px_config_diff(old, new_cfg, record_change, ch);
    CU_ASSERT_EQUAL(px_config_diff(old, new_cfg, NULL, NULL), rc);
    px_config_free(old);
    px_config_free(new_cfg);
    return rc;
}

/* [chaos] lines are kept as written, with their line; only duplicate names are refused
 * here (the rule engine validates the parameters: tests/proxy/test_chaos.c). */
static void test_chaos_lines(void)
{
    struct px_config *cfg = load_ok(TRUST "[chaos]\n"
                                          "; a comment\n"
                                          "ser = inject=error sqlstate=40001 message='it''s'\n"
                                          "[databases]\n"
                                          "app = port=5433\n"
                                          "[chaos]\n"
                                          "  slow  =   inject=latency latency_ms=5  \n"
                                          "quoted = \"inject=disconnect \"\n"
                                          "bogus = anything at all\n");
    CU_ASSERT_EQUAL_FATAL(cfg->nchaos, 4);
    CU_ASSERT_STRING_EQUAL(cfg->chaos[0].name, "ser");
    CU_ASSERT_STRING_EQUAL(cfg->chaos[0].params, "inject=error sqlstate=40001 message='it''s'");
    CU_ASSERT_EQUAL(cfg->chaos[0].line, 5);
    CU_ASSERT_STRING_EQUAL(cfg->chaos[1].name, "slow");
    CU_ASSERT_STRING_EQUAL(cfg->chaos[1].params, "inject=latency latency_ms=5");
    CU_ASSERT_EQUAL(cfg->chaos[1].line, 9);
    CU_ASSERT_STRING_EQUAL(cfg->chaos[2].params, "inject=disconnect ");
    CU_ASSERT_STRING_EQUAL(cfg->chaos[3].params, "anything at all");
    CU_ASSERT_EQUAL(cfg->ndbs, 1);
    px_config_free(cfg);

    cfg = load_ok(TRUST "[chaos]\n");
    CU_ASSERT_EQUAL(cfg->nchaos, 0);
    CU_ASSERT_PTR_NULL(cfg->chaos);
    px_config_free(cfg);

    expect_error(TRUST "[chaos]\na = inject=error\n\na = inject=latency\n",
                 ":6: [chaos] a: duplicate rule name (first on line 4)");
    expect_error(TRUST "[chaos]\n= inject=error\n", ":4: [chaos]: missing key before '='");
    expect_error(TRUST "[chaos]\nnoequals\n",
                 ":4: [chaos] noequals: missing '=' (expected key = value)");
}

/* The libpq-style parameter reader shared with the rule engine. */
static void test_next_param(void)
{
    char text[] = " a=1  b = 'x y' c=it\\'s d='q''q' e=";
    char *s = text, *k, *v, why[128];
    const char *want[][2] = {{"a", "1"}, {"b", "x y"}, {"c", "it's"}, {"d", "q'q"}, {"e", ""}};
    for (size_t i = 0; i < 5; i++) {
        CU_ASSERT_EQUAL_FATAL(px_config_next_param(&s, &k, &v, why, sizeof why), 1);
        CU_ASSERT_STRING_EQUAL(k, want[i][0]);
        CU_ASSERT_STRING_EQUAL(v, want[i][1]);
    }
    CU_ASSERT_EQUAL(px_config_next_param(&s, &k, &v, why, sizeof why), 0);
    char bad[] = "a='open";
    s = bad;
    CU_ASSERT_EQUAL(px_config_next_param(&s, &k, &v, why, sizeof why), -1);
    CU_ASSERT_STRING_EQUAL(why, "unterminated quoted value of \"a\"");
    char noeq[] = "lonely";
    s = noeq;
    CU_ASSERT_EQUAL(px_config_next_param(&s, &k, &v, why, sizeof why), -1);
    CU_ASSERT_STRING_EQUAL(why, "expected name=value, found \"lonely\"");
}

static void test_diff(void)
{
    struct changes ch;
    CU_ASSERT_EQUAL(diff_texts(TRUST "[databases]\na=\n", TRUST "[databases]\nb=\n", &ch), 0);
    CU_ASSERT_EQUAL(ch.n, 0);

    CU_ASSERT_EQUAL(diff_texts(TRUST,
                               TRUST "default_pool_size = 3\nlog_level = debug\n"
                                     "admin_token = t\nquery_wait_timeout_ms = 5\n",
                               &ch),
                    0);
    CU_ASSERT_EQUAL_FATAL(ch.n, 4);
    CU_ASSERT_STRING_EQUAL(ch.keys[0], "admin_token");
    CU_ASSERT_STRING_EQUAL(ch.keys[1], "default_pool_size");
    CU_ASSERT_STRING_EQUAL(ch.keys[2], "query_wait_timeout_ms");
    CU_ASSERT_STRING_EQUAL(ch.keys[3], "log_level");
    for (int i = 0; i < 4; i++)
        CU_ASSERT_TRUE(ch.reloadable[i]);

    CU_ASSERT_EQUAL(diff_texts(TRUST "admin_token = \"\"\n", TRUST, &ch), 0);
    CU_ASSERT_EQUAL(ch.n, 1); /* "" and unset differ as text */

    CU_ASSERT_EQUAL(diff_texts("[pgwarden]\nauth_file = u\n",
                               TRUST "listen_port = 7000\nmax_message_bytes = 9000\n"
                                     "server_reset_query = \n",
                               &ch),
                    2);
    CU_ASSERT_EQUAL_FATAL(ch.n, 5);
    CU_ASSERT_STRING_EQUAL(ch.keys[0], "listen_port");
    CU_ASSERT_FALSE(ch.reloadable[0]);
    CU_ASSERT_STRING_EQUAL(ch.keys[1], "auth_type");
    CU_ASSERT_TRUE(ch.reloadable[1]);
    CU_ASSERT_STRING_EQUAL(ch.keys[2], "auth_file");
    CU_ASSERT_TRUE(ch.reloadable[2]);
    CU_ASSERT_STRING_EQUAL(ch.keys[3], "server_reset_query");
    CU_ASSERT_TRUE(ch.reloadable[3]);
    CU_ASSERT_STRING_EQUAL(ch.keys[4], "max_message_bytes");
    CU_ASSERT_FALSE(ch.reloadable[4]);
}

/* Every key that needs a restart, and only those, is reported as such. */
static void test_diff_restart_keys(void)
{
    struct changes ch;
    int rc = diff_texts(TRUST,
                        TRUST "listen_addr = ::\nlisten_port = 1\nadmin_addr = ::\n"
                              "admin_port = 2\nadmin_tls_cert_file = c\n"
                              "admin_tls_key_file = k\npool_mode = transaction\n"
                              "client_tls_mode = allow\nclient_tls_cert_file = c\n"
                              "client_tls_key_file = k\nclient_tls_ca_file = a\n"
                              "server_tls_mode = disable\nserver_tls_ca_file = a\n"
                              "max_message_bytes = 8192\nlogfile = l\npidfile = p\n",
                        &ch);
    CU_ASSERT_EQUAL(rc, 16);
    CU_ASSERT_EQUAL(ch.n, 16);
    for (int i = 0; i < ch.n && i < 16; i++)
        CU_ASSERT_FALSE(ch.reloadable[i]);

    rc = diff_texts(TRUST,
                    "[pgwarden]\nadmin_token = x\ndefault_pool_size = 1\n"
                    "max_client_conn = 1\nauth_type = md5\nauth_file = f\n"
                    "server_reset_query = x\nquery_wait_timeout_ms = 1\n"
                    "server_connect_timeout_ms = 2\nserver_login_retry_ms = 3\n"
                    "server_idle_timeout_ms = 4\nserver_lifetime_ms = 5\n"
                    "client_login_timeout_ms = 6\nshutdown_timeout_ms = 7\n"
                    "log_level = error\n",
                    &ch);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(ch.n, 14);
    for (int i = 0; i < ch.n && i < 16; i++)
        CU_ASSERT_TRUE(ch.reloadable[i]);
}

/* After keep_restart_keys, only reloadable keys differ from the running config. */
static void test_keep_restart_keys(void)
{
    struct px_config *run = load_ok(TRUST "listen_port = 7000\nlogfile = a.log\n"
                                          "admin_tls_cert_file = c\nadmin_tls_key_file = k\n");
    struct px_config *next = load_ok(TRUST "pidfile = p\nmax_message_bytes = 9000\n"
                                           "default_pool_size = 3\nadmin_token = t\n");
    struct changes ch;
    memset(&ch, 0, sizeof(ch));
    CU_ASSERT_EQUAL(px_config_diff(run, next, NULL, NULL), 6);
    CU_ASSERT_EQUAL(px_config_keep_restart_keys(next, run), 0);
    CU_ASSERT_EQUAL(px_config_diff(run, next, record_change, &ch), 0);
    CU_ASSERT_EQUAL_FATAL(ch.n, 2);
    CU_ASSERT_STRING_EQUAL(ch.keys[0], "admin_token");
    CU_ASSERT_STRING_EQUAL(ch.keys[1], "default_pool_size");
    CU_ASSERT_EQUAL(next->listen_port, 7000);
    CU_ASSERT_EQUAL(next->max_message_bytes, 1048576);
    CU_ASSERT_PTR_NULL(next->pidfile);
    CU_ASSERT_STRING_EQUAL(next->logfile, run->logfile);
    CU_ASSERT_PTR_NOT_EQUAL(next->logfile, run->logfile); /* a copy, owned by next */
    CU_ASSERT_EQUAL(next->default_pool_size, 3);
    px_config_free(run);
    px_config_free(next);
}

/* ---- key tables ------------------------------------------------------------------------- */

struct key_list {
    int npgwarden, ndatabases, bad;
    char names[128][40];
};

static void collect_key(const char *section, const char *key, const char *help, void *arg)
{
    struct key_list *l = arg;
    if (!help || !*help || strlen(key) >= sizeof(l->names[0]))
        l->bad++;
    if (strcmp(section, "pgwarden") == 0)
        l->npgwarden++;
    else if (strcmp(section, "databases") == 0)
        l->ndatabases++; /* later sections ([locks], ...) are not counted here */
    int n = l->npgwarden + l->ndatabases;
    if (strcmp(section, "pgwarden") == 0 && n <= 128)
        snprintf(l->names[n - 1], sizeof(l->names[0]), "%s", key);
}

/* Every [pgwarden] key in the table is accepted by the parser under its own name. */
static void test_foreach_key(void)
{
    static struct key_list l;
    memset(&l, 0, sizeof(l));
    px_config_foreach_key(collect_key, &l);
    CU_ASSERT_EQUAL(l.bad, 0);
    CU_ASSERT_EQUAL(l.npgwarden, 37);
    CU_ASSERT_EQUAL(l.ndatabases, 8);
    for (int i = 0; i < l.npgwarden && i < 128; i++) {
        char text[256], *err = NULL, unknown[128];
        snprintf(text, sizeof(text), "[pgwarden]\n%s = @@\n", l.names[i]);
        snprintf(unknown, sizeof(unknown), "%s: unknown key", l.names[i]);
        struct px_config *c = load_text(text, &err);
        CU_ASSERT(err == NULL || strstr(err, unknown) == NULL);
        for (int j = 0; j < i; j++)
            CU_ASSERT(strcmp(l.names[i], l.names[j]) != 0);
        px_config_free(c);
        free(err);
    }
}

void test_config_register(void);
void test_config_register(void)
{
    static const CU_TestInfo parse[] = {
        {"defaults", test_defaults},
        {"every_key_set", test_every_key_set},
        {"enum_spellings", test_enum_spellings},
        {"syntax", test_syntax},
        CU_TEST_INFO_NULL,
    };
    static const CU_TestInfo errors[] = {
        {"unknown_section_and_key", test_error_unknown_section_and_key},
        {"duplicate_key", test_error_duplicate_key},
        {"bad_integer", test_error_bad_integer},
        {"out_of_range", test_error_out_of_range},
        {"bad_enum", test_error_bad_enum},
        {"syntax", test_error_syntax},
        {"cross_field", test_error_cross_field},
        {"retry_section", test_retry_section},
        {"locks_backend", test_locks_backend},
        {"breaker_section", test_breaker_section},
        {"cannot_open", test_error_cannot_open},
        CU_TEST_INFO_NULL,
    };
    static const CU_TestInfo dbs[] = {
        {"entries", test_db_entries},    {"find_db", test_find_db},
        {"errors", test_db_errors},      {"chaos_lines", test_chaos_lines},
        {"next_param", test_next_param}, CU_TEST_INFO_NULL,
    };
    static const CU_TestInfo reload[] = {
        {"diff", test_diff},
        {"diff_restart_keys", test_diff_restart_keys},
        {"keep_restart_keys", test_keep_restart_keys},
        {"foreach_key", test_foreach_key},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("config_parse", suite_init, suite_cleanup, parse);
    cunit_add_suite("config_errors", suite_init, suite_cleanup, errors);
    cunit_add_suite("config_databases", suite_init, suite_cleanup, dbs);
    cunit_add_suite("config_reload", suite_init, suite_cleanup, reload);
}
