/*
 * fuzz_config.c: the INI configuration parser (base/config.c px_config_load), fed the
 * input as the file's content (a memfd), then the lookups and reload helpers on what it
 * loaded: px_config_find_db, px_config_diff, px_config_keep_restart_keys.
 *
 * Properties: a file either loads or fails with "PATH[:LINE][: [section] key]: what"; a
 * loaded configuration has every value within the range of its key (defaults included);
 * each [databases] entry is found by its name, with a host, a port, an inherited or valid
 * pool size and mode, and a dbname unless it is "*"; a name not listed finds the "*" entry
 * or nothing; a configuration differs from itself in no key; and after
 * px_config_keep_restart_keys no key that needs a restart differs from the running one.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "base/config.h"

static struct px_config *running;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char ini[] = "[pgwarden]\n"
                              "listen_port = 7432\n"
                              "pool_mode = transaction\n"
                              "auth_type = trust\n"
                              "logfile = /var/log/pgwarden.log\n"
                              "[locks]\n"
                              "state_file = tokens\n"
                              "[databases]\n"
                              "app = host=db1 port=5433 pool_size=5\n";
    char *err = NULL;
    if (px_config_load(fuzz_file((const uint8_t *)ini, sizeof ini - 1), &running, &err) < 0)
        abort();
    (void)argc;
    (void)argv;
    return 0;
}

static void check_config(const struct px_config *c)
{
    FUZZ_CHECK(c->listen_addr && c->listen_addr[0] && c->admin_addr && c->admin_addr[0]);
    FUZZ_CHECK(c->listen_port >= 1 && c->listen_port <= 65535);
    FUZZ_CHECK(c->admin_port >= 0 && c->admin_port <= 65535);
    FUZZ_CHECK(c->pool_mode == PX_POOL_SESSION || c->pool_mode == PX_POOL_TRANSACTION);
    FUZZ_CHECK(c->auth_type >= PX_AUTH_TRUST && c->auth_type <= PX_AUTH_SCRAM);
    FUZZ_CHECK(c->client_tls_mode >= PX_CTLS_DISABLE && c->client_tls_mode <= PX_CTLS_REQUIRE);
    FUZZ_CHECK(c->server_tls_mode >= PX_STLS_DISABLE && c->server_tls_mode <= PX_STLS_VERIFY_FULL);
    FUZZ_CHECK(c->log_level >= PX_LOG_DEBUG && c->log_level <= PX_LOG_ERROR);
    FUZZ_CHECK(c->default_pool_size >= 1 && c->max_client_conn >= 1);
    FUZZ_CHECK(c->server_query_batch >= 1 && c->server_query_batch <= PX_QUERY_BATCH_MAX);
    FUZZ_CHECK(c->max_message_bytes >= 8192 && c->max_message_bytes <= 1073741824);
    FUZZ_CHECK(c->admin_request_timeout_ms >= 100 && c->deadlock_timeout_ms >= 1);
    FUZZ_CHECK(c->server_reset_query != NULL);
    if (c->auth_type != PX_AUTH_TRUST)
        FUZZ_CHECK(c->auth_file != NULL);
    for (size_t i = 0; i < c->ndbs; i++) {
        const struct px_db_config *db = &c->dbs[i];
        FUZZ_CHECK(db->name && db->host && db->host[0]);
        FUZZ_CHECK(db->port >= 1 && db->port <= 65535);
        FUZZ_CHECK(db->pool_size == -1 || (db->pool_size >= 1 && db->pool_size <= 100000));
        FUZZ_CHECK(db->pool_mode >= -1 && db->pool_mode <= PX_POOL_TRANSACTION);
        FUZZ_CHECK(db->dbname || strcmp(db->name, "*") == 0);
        FUZZ_CHECK(px_config_find_db(c, db->name) == db);
    }
    const struct px_db_config *any = px_config_find_db(c, "\x01 not a database name");
    FUZZ_CHECK(!any || strcmp(any->name, "*") == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file(data, size);
    struct px_config *cfg = NULL;
    char *err = NULL;
    if (px_config_load(path, &cfg, &err) < 0) {
        FUZZ_CHECK(cfg == NULL);
        FUZZ_CHECK(err && strncmp(err, path, strlen(path)) == 0 && err[strlen(path)] == ':');
        free(err);
        return 0;
    }
    FUZZ_CHECK(cfg != NULL && err == NULL);
    check_config(cfg);
    FUZZ_CHECK(px_config_diff(cfg, cfg, NULL, NULL) == 0);
    (void)px_config_diff(running, cfg, NULL, NULL);
    FUZZ_CHECK(px_config_keep_restart_keys(cfg, running) == 0);
    FUZZ_CHECK(px_config_diff(running, cfg, NULL, NULL) == 0);
    check_config(cfg);
    px_config_free(cfg);
    return 0;
}
