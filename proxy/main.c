/*
 * main.c: the pgwarden process: command line, configuration, the listeners, signals, the
 * janitor and reaper events, reload, and orderly shutdown.  Everything runs on one
 * libevent loop; see docs/architecture.md.
 *
 *   pgwarden -c FILE           run in the foreground
 *   pgwarden -c FILE --check   validate FILE, the files it names, the log and pid files and
 *                              the listen addresses (test-bound, nothing kept), and exit
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "admin/admin.h"
#include "chaos/chaos.h"
#include "path/batch.h"
#include "lockspace/lockspace.h"
#include "path/locks.h"
#include "path/retry.h"
#include "net/cancel.h"
#include "net/client.h"
#include "net/listen.h"
#include "base/log.h"
#include "main.h"
#include "metrics/metrics.h"
#include "pool/breaker.h"
#include "pool/pool.h"
#include "path/prepared.h"
#include "proto/relay.h"
#include "net/server.h"
#include "metrics/stats.h"
#include "net/tls.h"

#define JANITOR_PERIOD_MS 250

struct px_proxy px;

uint64_t px_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t px_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: pgwarden -c FILE [--check | --init-lock-state]\n"
                 "  -c, --config FILE  configuration file (see docs/configuration.md)\n"
                 "      --check        validate the configuration and exit\n"
                 "      --init-lock-state  create the [locks] state_file and exit\n"
                 "  -V, --version      print the version and exit\n");
}

/* Loads the files a config names (auth_file, TLS material) into the given slots. */
static int load_dependents(const struct px_config *cfg, const struct px_userlist *previous,
                           struct px_userlist **users, SSL_CTX **client_tls, SSL_CTX **server_tls,
                           char **errmsg)
{
    *users = NULL;
    *client_tls = *server_tls = NULL;
    if (cfg->auth_file && px_userlist_load(cfg->auth_file, previous, users, errmsg) < 0)
        return -1;
    *client_tls = px_tls_client_side_new(cfg, errmsg);
    if (!*client_tls && *errmsg)
        goto fail;
    *server_tls = px_tls_server_side_new(cfg, errmsg);
    if (!*server_tls && *errmsg)
        goto fail;
    return 0;
fail:
    px_userlist_free(*users);
    SSL_CTX_free(*client_tls);
    *users = NULL;
    *client_tls = NULL;
    return -1;
}

static void log_restart_key(const char *section, const char *key, bool reloadable, void *arg)
{
    (void)arg;
    if (!reloadable)
        px_warning("main", 0, 0, "[%s] %s changed: it takes effect after a restart", section, key);
}

int px_main_reload(char **errmsg)
{
    struct px_config *cfg = NULL;
    struct px_chaos_rules *chaos = NULL;
    *errmsg = NULL;
    /* Log rotation (rename, then SIGHUP): a new file at the running path (logfile needs a
     * restart to change), whether or not the new config is valid.  On failure the old
     * file stays in use. */
    if (px.cfg->logfile && px.cfg->logfile[0] && px_log_open(px.cfg->logfile) < 0)
        px_error("main", 0, 0, "cannot reopen logfile %s: %s; still writing to the old file",
                 px.cfg->logfile, strerror(errno));
    if (px_config_load(px.cfg->path, &cfg, errmsg) < 0 ||
        !(chaos = px_chaos_config_parse(cfg, errmsg)))
        goto fail;
    px_config_diff(px.cfg, cfg, log_restart_key, NULL);
    if (px_config_keep_restart_keys(cfg, px.cfg) < 0) {
        *errmsg = strdup("out of memory");
        goto fail;
    }
    struct px_userlist *users = NULL;
    if (cfg->auth_file && px_userlist_load(cfg->auth_file, px.users, &users, errmsg) < 0)
        goto fail;
    if (px.admin && px_admin_reconfigure(px.admin, cfg, errmsg) < 0) {
        px_userlist_free(users);
        goto fail;
    }
    px_userlist_free(px.users);
    px.users = users;
    px_config_free(px.cfg);
    px.cfg = cfg;
    px_log_set_level(cfg->log_level);
    px_pool_reconfigure();
    px_retry_configure();
    px_chaos_config_install(chaos); /* config rules replaced, those added over HTTP stay */
    px_info("main", 0, 0, "configuration reloaded from %s", cfg->path);
    return 0;
fail:
    px_error("main", 0, 0, "reload failed, keeping the running configuration: %s",
             *errmsg ? *errmsg : "out of memory");
    px_chaos_rules_free(chaos);
    px_config_free(cfg);
    return -1;
}

static void begin_shutdown(void)
{
    if (px.shutting_down)
        return;
    px.shutting_down = true;
    px.shutdown_deadline_ms = px_now_ms() + (uint64_t)px.cfg->shutdown_timeout_ms;
    px_info("main", 0, 0, "shutting down: no new connections, waiting up to %d ms for clients",
            px.cfg->shutdown_timeout_ms);
    px_listen_close();
    px_pool_janitor(px_now_ms());
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    (void)arg;
    if (sig == SIGHUP) {
        char *err = NULL;
        px_main_reload(&err);
        free(err);
    } else {
        begin_shutdown();
    }
}

static void on_janitor(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    px_pool_janitor(px_now_ms());
}

static void reap(void)
{
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &px.clients_closing)
    {
        px_client_free(PX_CONTAINER_OF(it, struct px_client, link));
    }
    px_list_for_each_safe(it, tmp, &px.servers_closing)
    {
        px_server_free(PX_CONTAINER_OF(it, struct px_server, link));
    }
}

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    px_pool_run_pending();
    reap();
    if (px.shutting_down)
        px_pool_check_shutdown(); /* the last client may just have gone */
}

static int write_pidfile(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "%d\n", (int)getpid());
    return fclose(f);
}

static int setup(char **errmsg)
{
    if (px_log_open(px.cfg->logfile) < 0) {
        if (asprintf(errmsg, "cannot open logfile %s: %s", px.cfg->logfile, strerror(errno)) < 0)
            *errmsg = NULL;
        return -1;
    }
    px_log_set_level(px.cfg->log_level);
    if (load_dependents(px.cfg, NULL, &px.users, &px.client_tls, &px.server_tls, errmsg) < 0)
        return -1;
    if (px_metrics_init(0, errmsg) < 0 || px_stats_init() < 0 || px_breaker_configure() < 0)
        return -1;
    struct px_chaos_rules *chaos = px_chaos_config_parse(px.cfg, errmsg);
    if (!chaos)
        return -1;
    px_chaos_config_install(chaos);
    px.base = event_base_new();
    if (!px.base)
        return -1;
    if (px_locks_init(px.cfg, errmsg) < 0 || px_stats_locks_init(px_locks_manager()) < 0 ||
        px_lockspace_init(px.cfg, px_locks_manager(), errmsg) < 0)
        return -1;
    px_retry_configure();
    px.janitor = event_new(px.base, -1, EV_PERSIST, on_janitor, NULL);
    px.reaper = event_new(px.base, -1, 0, on_reap, NULL);
    px.sig_term = evsignal_new(px.base, SIGTERM, on_signal, NULL);
    px.sig_int = evsignal_new(px.base, SIGINT, on_signal, NULL);
    px.sig_hup = evsignal_new(px.base, SIGHUP, on_signal, NULL);
    if (!px.janitor || !px.reaper || !px.sig_term || !px.sig_int || !px.sig_hup)
        return -1;
    struct timeval period = {0, JANITOR_PERIOD_MS * 1000};
    event_add(px.janitor, &period);
    event_add(px.sig_term, NULL);
    event_add(px.sig_int, NULL);
    event_add(px.sig_hup, NULL);
    /* The admin port first: whoever sees the client port accept (an orchestrator's
     * readiness check, the test harness) can use the admin port at once. */
    px.admin = px_admin_new(px.base, px.cfg, errmsg);
    if (!px.admin)
        return -1;
    if (px_listen_open(px.base, px.cfg->listen_addr, px.cfg->listen_port, px_client_accept,
                       errmsg) < 0)
        return -1;
    if (px.cfg->pidfile && write_pidfile(px.cfg->pidfile) < 0) {
        if (asprintf(errmsg, "cannot write pidfile %s: %s", px.cfg->pidfile, strerror(errno)) < 0)
            *errmsg = NULL;
        return -1;
    }
    return 0;
}

static void teardown(void)
{
    px_listen_close();
    px_admin_free(px.admin);
    struct px_list *it, *tmp;
    struct px_list *lists[] = {&px.clients_login, &px.clients_failing};
    for (size_t i = 0; i < 2; i++) {
        px_list_for_each_safe(it, tmp, lists[i])
        {
            px_client_free(PX_CONTAINER_OF(it, struct px_client, link));
        }
    }
    px_pool_free_all();
    reap();
    px_breaker_free_all();
    px_lockspace_shutdown();
    px_locks_shutdown();
    px_retry_shutdown();
    px_cancel_destroy();
    px_stmt_registry_free(px.stmt_registry);
    px_relay_shutdown();
    px_client_shutdown_buffers();
    px_batch_shutdown();
    px.stmt_registry = NULL;
    struct event *events[] = {px.janitor, px.reaper, px.sig_term, px.sig_int, px.sig_hup};
    for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++)
        if (events[i])
            event_free(events[i]);
    if (px.base) {
        /* Every connection is freed, but libevent may still hold some of their bufferevents:
         * a callback it deferred holds a reference until it runs (an OpenSSL bufferevent
         * defers its write callback after every write), and the loop stopped at the end of
         * the turn that scheduled it.  event_base_free would drop such callbacks unrun, and
         * with them the last reference: the bufferevent and its SSL would leak.  So run
         * what is pending first (nothing of pgwarden's is left to be called back). */
        event_base_loop(px.base, EVLOOP_NONBLOCK);
        event_base_free(px.base);
    }
    if (px.cfg && px.cfg->pidfile)
        unlink(px.cfg->pidfile);
    SSL_CTX_free(px.client_tls);
    SSL_CTX_free(px.server_tls);
    px_userlist_free(px.users);
    px_chaos_shutdown(); /* releases its metric series */
    px_metrics_shutdown();
    px_config_free(px.cfg);
    px_log_close();
}

/*
 * --check: can path be opened for appending (logfile), or written (pidfile)?  Nothing is
 * truncated, and a file that did not exist is removed again.  Returns 0, or -1 with
 * *errmsg naming key.
 */
static int check_writable(const char *key, const char *path, char **errmsg)
{
    if (!path || !*path)
        return 0;
    int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    bool created = false;
    if (fd < 0 && errno == ENOENT) {
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
        created = fd >= 0;
    }
    if (fd < 0) {
        if (asprintf(errmsg, "%s: cannot open %s: %s", key, path, strerror(errno)) < 0)
            *errmsg = NULL;
        return -1;
    }
    close(fd);
    if (created)
        unlink(path);
    return 0;
}

/* --check: what setup() would open or bind, tried without keeping anything. */
static int check_startup(const struct px_config *cfg, char **errmsg)
{
    char *warning = NULL;
    if (check_writable("logfile", cfg->logfile, errmsg) < 0 ||
        check_writable("pidfile", cfg->pidfile, errmsg) < 0 ||
        px_listen_check("listen_addr", cfg->listen_addr, cfg->listen_port, errmsg, &warning) < 0)
        return -1;
    if (warning)
        fprintf(stderr, "pgwarden: warning: %s\n", warning);
    free(warning);
    warning = NULL;
    if (cfg->admin_port == 0)
        return 0;
    if (strchr(cfg->admin_addr, ',') || !strcmp(cfg->admin_addr, "*")) {
        *errmsg = strdup("admin_addr: one address (not a list, not *: use 0.0.0.0 or ::)");
        return -1;
    }
    if (px_listen_check("admin_addr", cfg->admin_addr, cfg->admin_port, errmsg, &warning) < 0 ||
        px_admin_check(cfg, errmsg) < 0)
        return -1;
    if (warning)
        fprintf(stderr, "pgwarden: warning: %s\n", warning);
    free(warning);
    return 0;
}

/* --check: the file and everything start would load, open or bind.  Exit status. */
static int check_config(const char *path)
{
    struct px_config *cfg = NULL;
    char *err = NULL;
    if (px_config_load(path, &cfg, &err) < 0) {
        fprintf(stderr, "pgwarden: %s\n", err ? err : "out of memory");
        free(err);
        return 1;
    }
    struct px_userlist *users;
    SSL_CTX *ctls, *stls;
    if (load_dependents(cfg, NULL, &users, &ctls, &stls, &err) < 0) {
        fprintf(stderr, "pgwarden: %s\n", err ? err : "out of memory");
        free(err);
        px_config_free(cfg);
        return 1;
    }
    px_userlist_free(users);
    SSL_CTX_free(ctls);
    SSL_CTX_free(stls);
    struct px_chaos_rules *chaos = px_chaos_config_parse(cfg, &err);
    if (!chaos) {
        fprintf(stderr, "pgwarden: %s\n", err ? err : "out of memory");
        free(err);
        px_config_free(cfg);
        return 1;
    }
    px_chaos_rules_free(chaos);
    if (check_startup(cfg, &err) < 0 ||
        (cfg->state_file && px_locks_check_state_file(cfg->state_file, &err) < 0)) {
        fprintf(stderr, "pgwarden: %s: %s\n", path, err ? err : "out of memory");
        free(err);
        px_config_free(cfg);
        return 1;
    }
    px_config_free(cfg);
    printf("pgwarden: configuration file %s is valid\n", path);
    return 0;
}

/* --init-lock-state: creates the [locks] state_file the configuration names. */
static int init_lock_state(const char *path)
{
    struct px_config *cfg = NULL;
    char *err = NULL;
    if (px_config_load(path, &cfg, &err) < 0 ||
        (!cfg->state_file && !(err = strdup("[locks] state_file is not set"))) ||
        px_locks_init_state_file(cfg->state_file, &err) < 0) {
        fprintf(stderr, "pgwarden: %s\n", err ? err : "out of memory");
        free(err);
        px_config_free(cfg);
        return 1;
    }
    printf("pgwarden: created %s\n", cfg->state_file);
    px_config_free(cfg);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"check", no_argument, NULL, 'k'},
                                         {"init-lock-state", no_argument, NULL, 'L'},
                                         {"version", no_argument, NULL, 'V'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *path = NULL;
    bool check = false, init_state = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 'k': check = true; break;
        case 'L': init_state = true; break;
        case 'V': printf("pgwarden %s\n", PGW_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!path || optind != argc) {
        usage(stderr);
        return 2;
    }
    if (check)
        return check_config(path);
    if (init_state)
        return init_lock_state(path);

    signal(SIGPIPE, SIG_IGN);
    px_list_init(&px.pools);
    px_list_init(&px.clients_login);
    px_list_init(&px.clients_failing);
    px_list_init(&px.clients_closing);
    px_list_init(&px.servers_closing);
    px_list_init(&px.cancels);
    char *err = NULL;
    if (px_config_load(path, &px.cfg, &err) < 0) {
        fprintf(stderr, "pgwarden: %s\n", err ? err : "out of memory");
        free(err);
        return 1;
    }
    if (setup(&err) < 0) {
        px_error("main", 0, 0, "cannot start: %s", err ? err : "out of memory");
        free(err);
        teardown();
        return 1;
    }
    px_info("main", 0, 0, "pgwarden %s started (pid %d)", PGW_VERSION, (int)getpid());
    event_base_dispatch(px.base);
    px_info("main", 0, 0, "stopped");
    teardown();
    return 0;
}
