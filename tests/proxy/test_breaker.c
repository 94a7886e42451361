/*
 * test_breaker.c: tests of proxy/pool/breaker.c, the proxy's side of the circuit breaker
 * (the state machine itself is retry/'s, tested in tests/retry/test_breaker.c).
 *
 * What this file owns and these tests check, on a virtual clock: which of the proxy's
 * events count (SQLSTATE classes from active servers, login failures by their error, a
 * lost connection counted once after its FATAL, pgwarden's own missing credentials never),
 * that successes credited late still break a run of failures (the hot path only counts
 * them), the failure rate over successes and failures, the 57P03 text (database, time to
 * the next probe rounded up, half-open, detail), the janitor closing a breaker that has
 * no pool to probe through, the set of breakers (configured names, references, removal on
 * reload), new [breaker] settings on reload (a closed breaker at once, an open one once it
 * closes), and the metrics.  Probes through real server logins are tested against
 * PostgreSQL in tests/integration/test_breaker.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <event2/buffer.h>

#include "cunit_main.h"
#include "base/log.h"
#include "conn.h"
#include "metrics/metrics.h"
#include "net/server.h"
#include "pool/breaker.h"
#include "proto/wire.h"

void test_breaker_register(void);

/* What main.c defines for the binary. */
struct px_proxy px;
uint64_t px_now_ms(void)
{
    return 0;
}
uint64_t px_now_us(void)
{
    return 0;
}

static uint64_t fake_us;
static uint64_t fake_clock(void)
{
    return fake_us;
}

static char dir[64];

/* Loads a config with these [breaker] lines and [databases] lines as px.cfg and applies
 * it to the breakers (as a start or a reload does). */
static void configure(const char *breaker, const char *databases)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/pgwarden.ini", dir);
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fprintf(f, "[pgwarden]\nauth_type = trust\n[breaker]\n%s\n[databases]\n%s\n", breaker,
            databases);
    fclose(f);
    struct px_config *cfg = NULL;
    char *err = NULL;
    if (px_config_load(path, &cfg, &err) < 0)
        fprintf(stderr, "config: %s\n", err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    px_config_free(px.cfg);
    px.cfg = cfg;
    CU_ASSERT_EQUAL(px_breaker_configure(), 0);
}

/* Defaults but a 100 000-call minimum, so that only consecutive failures open it. */
#define ONLY_CONSECUTIVE "min_requests = 1000000"

static int suite_init(void)
{
    strcpy(dir, "/tmp/pgw_breaker_XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    char *err = NULL;
    if (px_metrics_init(0, &err) < 0)
        return -1;
    px_list_init(&px.pools);
    px_breaker_set_clock(fake_clock);
    px_log_set_level(PX_LOG_ERROR); /* transitions are logged at warning and info */
    return 0;
}

static int suite_cleanup(void)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/pgwarden.ini", dir);
    unlink(path);
    rmdir(dir);
    px_breaker_free_all();
    px_config_free(px.cfg);
    px.cfg = NULL;
    px_metrics_shutdown();
    return 0;
}

/* A pool of database "app" and a server of it, not on any list. */
struct fixture {
    struct px_pool pool;
    struct px_server s;
};

static void fixture_init(struct fixture *fx, const char *breaker)
{
    px_breaker_free_all(); /* every test starts from no breaker */
    configure(breaker, "app = dbname=app");
    memset(fx, 0, sizeof(*fx));
    fx->pool.database = "app";
    fx->pool.breaker = px_breaker_get("app");
    fx->pool.pool_size = 1;
    fx->s.pool = &fx->pool;
    fx->s.id = 1;
    fake_us = 1000000000ULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(fx->pool.breaker);
}

static void fixture_done(struct fixture *fx)
{
    px_breaker_put(fx->pool.breaker);
}

static const char *state(const struct fixture *fx)
{
    struct px_breaker_info i;
    px_breaker_info(fx->pool.breaker, &i);
    return i.state;
}

static uint64_t failures(const struct fixture *fx)
{
    struct px_breaker_info i;
    px_breaker_info(fx->pool.breaker, &i);
    return i.failures;
}

/* A fresh server of the fixture's pool (its flags cleared). */
static struct px_server *server(struct fixture *fx)
{
    memset(&fx->s, 0, sizeof(fx->s));
    fx->s.pool = &fx->pool;
    fx->s.id = 1;
    return &fx->s;
}

/* ---- what counts ------------------------------------------------------------------------ */

static void test_contention_never_counts(void)
{
    struct fixture fx;
    fixture_init(&fx, "consecutive_failures = 1\nmin_requests = 1\nfailure_rate_pct = 1");
    static const char *const none[] = {"40001", "40P01", "55P03", "22012", "23505",
                                       "42601", "42P01", "57014", "XX000", "25P02",
                                       "0A000", "",      "0800",  "5"};
    for (int round = 0; round < 100; round++) {
        for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++)
            px_breaker_server_error(server(&fx), none[i]);
        px_breaker_server_error(server(&fx), NULL);
    }
    CU_ASSERT_STRING_EQUAL(state(&fx), "closed");
    CU_ASSERT_EQUAL(failures(&fx), 0);
    fixture_done(&fx);
}

/* 08P01 from a server in use answers the client's own malformed message. */
static void test_breaker_client_protocol_errors(void)
{
    struct fixture fx;
    fixture_init(&fx, "consecutive_failures = 3\n" ONLY_CONSECUTIVE);
    for (int i = 0; i < 10; i++)
        px_breaker_server_error(server(&fx), "08P01");
    CU_ASSERT_STRING_EQUAL(state(&fx), "closed");
    CU_ASSERT_EQUAL(failures(&fx), 0);
    fixture_done(&fx);
}

static void test_breaker_classes_count(void)
{
    static const char *const codes[] = {"08006", "08001", "53300", "53100",
                                        "57P01", "57P02", "57P03"};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        struct fixture fx;
        fixture_init(&fx, "consecutive_failures = 3\n" ONLY_CONSECUTIVE);
        px_breaker_server_error(server(&fx), codes[i]);
        px_breaker_server_error(server(&fx), codes[i]);
        CU_ASSERT_STRING_EQUAL(state(&fx), "closed");
        CU_ASSERT_EQUAL(failures(&fx), 2);
        px_breaker_server_error(server(&fx), codes[i]);
        CU_ASSERT_STRING_EQUAL(state(&fx), "open");
        fixture_done(&fx);
    }
}

/* Successes are only counted on the hot path; credited before the next failure they still
 * break the run, as if they had been recorded when they happened. */
static void test_success_breaks_run(void)
{
    struct fixture fx;
    fixture_init(&fx, "consecutive_failures = 5\n" ONLY_CONSECUTIVE);
    for (int i = 0; i < 4; i++)
        px_breaker_server_error(server(&fx), "08006");
    px_breaker_txn_done(&fx.pool);
    for (int i = 0; i < 4; i++)
        px_breaker_server_error(server(&fx), "08006");
    CU_ASSERT_STRING_EQUAL(state(&fx), "closed");
    /* A login is a success too. */
    px_breaker_login_ok(server(&fx));
    for (int i = 0; i < 4; i++)
        px_breaker_server_error(server(&fx), "57P01");
    CU_ASSERT_STRING_EQUAL(state(&fx), "closed");
    px_breaker_server_error(server(&fx), "57P01");
    CU_ASSERT_STRING_EQUAL(state(&fx), "open");
    fixture_done(&fx);
}

static void test_failure_rate(void)
{
    struct fixture fx;
    fixture_init(&fx, "consecutive_failures = 0\nmin_requests = 10\nfailure_rate_pct = 50");
    for (int i = 0; i < 4; i++) {
        px_breaker_txn_done(&fx.pool);
        px_breaker_server_error(server(&fx), "53300");
        fake_us += 100000;
    }
    px_breaker_txn_done(&fx.pool);
    px_breaker_txn_done(&fx.pool);
    px_breaker_server_error(server(&fx), "53300"); /* 5 of 11 */
    CU_ASSERT_STRING_EQUAL(state(&fx), "closed");
    px_breaker_server_error(server(&fx), "53300"); /* 6 of 12: 50% */
    CU_ASSERT_STRING_EQUAL(state(&fx), "open");
    fixture_done(&fx);

    /* Outside the window (10 s) old failures are forgotten. */
    fixture_init(&fx, "consecutive_failures = 0\nmin_requests = 4\nfailure_rate_pct = 50");
    px_breaker_server_error(server(&fx), "08006");
    px_breaker_server_error(server(&fx), "08006");
    px_breaker_server_error(server(&fx), "08006");
    fake_us += 11000000;
    px_breaker_txn_done(&fx.pool);
    px_breaker_txn_done(&fx.pool);
    px_breaker_txn_done(&fx.pool);
    px_breaker_server_error(server(&fx), "08006"); /* 1 of 4 in the window */
    CU_ASSERT_STRING_EQUAL(state(&fx), "closed");
    fixture_done(&fx);
}

static void test_lost_after_fatal_counts_once(void)
{
    struct fixture fx;
    fixture_init(&fx, "consecutive_failures = 0\n" ONLY_CONSECUTIVE);
    struct px_server *s = server(&fx);
    px_breaker_server_error(s, "57P01"); /* FATAL terminating connection */
    px_pool_server_lost(s);              /* then the connection goes */
    CU_ASSERT_EQUAL(failures(&fx), 1);
    px_pool_server_lost(server(&fx)); /* lost without a word */
    CU_ASSERT_EQUAL(failures(&fx), 2);
    struct px_breaker_info i;
    px_breaker_info(fx.pool.breaker, &i);
    CU_ASSERT_STRING_EQUAL(i.last_failure, "server connection lost while in use");
    fixture_done(&fx);
}

/* A login error as the transport hands it over: the whole ErrorResponse message. */
static struct evbuffer *login_error(const char *sqlstate)
{
    struct evbuffer *b = evbuffer_new();
    px_wire_error(b, PX_SEV_FATAL, sqlstate, "no", NULL);
    return b;
}

static void test_login_failures(void)
{
    struct fixture fx;
    fixture_init(&fx, "consecutive_failures = 0\n" ONLY_CONSECUTIVE);
    static const struct {
        const char *code;
        bool counts;
    } cases[] = {
        {"28P01", false}, /* one user's wrong password */
        {"28000", false}, /* no pg_hba.conf entry */
        {"3D000", false}, /* no such database */
        {"42501", false}, /* no CONNECT privilege */
        {"53300", true},  /* too many connections */
        {"57P03", true},  /* the database system is starting up / shutting down */
        {"08P01", true},
    };
    uint64_t want = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct evbuffer *e = login_error(cases[i].code);
        px_breaker_login_failed(server(&fx), e, NULL);
        evbuffer_free(e);
        want += cases[i].counts;
        CU_ASSERT_EQUAL(failures(&fx), want);
    }
    /* Without an ErrorResponse: refused, timed out, TLS: the database's failure... */
    px_breaker_login_failed(server(&fx), NULL, "could not connect to server 127.0.0.1:1");
    CU_ASSERT_EQUAL(failures(&fx), want + 1);
    struct px_breaker_info i;
    px_breaker_info(fx.pool.breaker, &i);
    CU_ASSERT_STRING_EQUAL(i.last_failure, "could not connect to server 127.0.0.1:1");
    /* ...unless pgwarden had no credentials the server's method accepts. */
    struct px_server *s = server(&fx);
    s->login_no_credentials = true;
    px_breaker_login_failed(s, NULL, "pgwarden cannot authenticate to the server");
    CU_ASSERT_EQUAL(failures(&fx), want + 1);
    fixture_done(&fx);
}

/* ---- what clients see ----------------------------------------------------------------- */

static void trip(struct fixture *fx)
{
    for (int i = 0; i < 5; i++)
        px_breaker_login_failed(server(fx), NULL, "timeout connecting to server");
    CU_ASSERT_STRING_EQUAL(state(fx), "open");
}

static void test_refusal_message(void)
{
    struct fixture fx;
    fixture_init(&fx, "open_ms = 5000\nopen_max_ms = 60000\n" ONLY_CONSECUTIVE);
    struct px_breaker_refusal why;
    CU_ASSERT_TRUE(px_breaker_admit(fx.pool.breaker, &why));
    CU_ASSERT_TRUE(px_breaker_admit(NULL, &why)); /* no breaker (out of memory): admitted */
    trip(&fx);
    fake_us += 3200000;
    CU_ASSERT_FALSE(px_breaker_admit(fx.pool.breaker, &why));
    CU_ASSERT_STRING_EQUAL(why.message, "database \"app\" is unavailable (circuit breaker "
                                        "open): next probe in 1.8 s");
    CU_ASSERT_STRING_EQUAL(why.detail, "Last failure counted: timeout connecting to server.");
    fake_us += 1; /* 1.799999 s: never promise earlier than the probe */
    CU_ASSERT_FALSE(px_breaker_admit(fx.pool.breaker, &why));
    CU_ASSERT_PTR_NOT_NULL(strstr(why.message, "next probe in 1.8 s"));
    struct px_breaker_info i;
    px_breaker_info(fx.pool.breaker, &i);
    CU_ASSERT(i.next_probe_ms >= 1799 && i.next_probe_ms <= 1800);
    fake_us += 1800000;
    CU_ASSERT_FALSE(px_breaker_admit(fx.pool.breaker, &why)); /* now half-open */
    CU_ASSERT_STRING_EQUAL(why.message, "database \"app\" is unavailable (circuit breaker "
                                        "half-open): a probe is running");
    CU_ASSERT_STRING_EQUAL(state(&fx), "half-open");
    px_breaker_info(fx.pool.breaker, &i);
    CU_ASSERT_EQUAL(i.next_probe_ms, 0);
    fixture_done(&fx);
}

/* Outcomes while open do not count (only probes decide); the janitor probes when the open
 * period is over, and with no pool of the name left to log in through it closes. */
static void test_janitor_without_pool_closes(void)
{
    struct fixture fx;
    fixture_init(&fx, "open_ms = 1000\n" ONLY_CONSECUTIVE);
    trip(&fx);
    for (int i = 0; i < 100; i++)
        px_breaker_txn_done(&fx.pool);
    px_breaker_janitor();
    CU_ASSERT_STRING_EQUAL(state(&fx), "open");
    fake_us += 999000;
    px_breaker_janitor();
    CU_ASSERT_STRING_EQUAL(state(&fx), "open");
    fake_us += 1000;
    px_breaker_janitor(); /* px.pools is empty: no pool to probe through */
    CU_ASSERT_STRING_EQUAL(state(&fx), "closed");
    struct px_breaker_refusal why;
    CU_ASSERT_TRUE(px_breaker_admit(fx.pool.breaker, &why));
    fixture_done(&fx);
}

/* ---- the set of breakers and reloads ----------------------------------------------- */

static void test_registry(void)
{
    px_breaker_free_all();
    configure("", "app = dbname=app\nreports = dbname=r\n* = host=127.0.0.1");
    CU_ASSERT_PTR_NOT_NULL(px_breaker_find("app"));
    CU_ASSERT_PTR_NOT_NULL(px_breaker_find("reports"));
    CU_ASSERT_PTR_NULL(px_breaker_find("*"));
    CU_ASSERT_PTR_NULL(px_breaker_find("other"));
    /* A name of the "*" entry: made by its first pool, shared, freed with the last. */
    struct px_breaker *a = px_breaker_get("other"), *b = px_breaker_get("other");
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_EQUAL(a, b);
    CU_ASSERT_PTR_EQUAL(px_breaker_find("other"), a);
    px_breaker_put(a);
    CU_ASSERT_PTR_EQUAL(px_breaker_find("other"), a);
    px_breaker_put(b);
    CU_ASSERT_PTR_NULL(px_breaker_find("other"));
    /* A configured one stays without pools. */
    struct px_breaker *r = px_breaker_get("reports");
    CU_ASSERT_PTR_EQUAL(r, px_breaker_find("reports"));
    px_breaker_put(r);
    CU_ASSERT_PTR_EQUAL(px_breaker_find("reports"), r);
    /* Many names: the table grows. */
    char name[32];
    struct px_breaker *many[300];
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof(name), "db%d", i);
        many[i] = px_breaker_get(name);
        CU_ASSERT_PTR_NOT_NULL(many[i]);
    }
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof(name), "db%d", i);
        CU_ASSERT_PTR_EQUAL(px_breaker_find(name), many[i]);
        px_breaker_put(many[i]);
        CU_ASSERT_PTR_NULL(px_breaker_find(name));
    }
    /* Reload without "reports": its breaker goes with its last pool. */
    r = px_breaker_get("reports");
    configure("", "app = dbname=app");
    CU_ASSERT_PTR_EQUAL(px_breaker_find("reports"), r);
    px_breaker_put(r);
    CU_ASSERT_PTR_NULL(px_breaker_find("reports"));
    CU_ASSERT_PTR_NOT_NULL(px_breaker_find("app"));
    /* Reload adding it back. */
    configure("", "app = dbname=app\nreports = dbname=r");
    CU_ASSERT_PTR_NOT_NULL(px_breaker_find("reports"));
}

/* The next-probe time of a refusal right after the breaker opened, in tenths of s. */
static int open_tenths(struct fixture *fx)
{
    struct px_breaker_refusal why;
    CU_ASSERT_FALSE(px_breaker_admit(fx->pool.breaker, &why));
    const char *p = strstr(why.message, "next probe in ");
    int s = 0, t = 0;
    if (p)
        sscanf(p, "next probe in %d.%d s", &s, &t);
    return s * 10 + t;
}

static void test_reload_settings(void)
{
    struct fixture fx;
    fixture_init(&fx, "open_ms = 1000\nopen_max_ms = 60000\n" ONLY_CONSECUTIVE);
    /* Closed: the new settings apply at once. */
    configure("open_ms = 3000\nopen_max_ms = 60000\n" ONLY_CONSECUTIVE, "app = dbname=app");
    trip(&fx);
    CU_ASSERT_EQUAL(open_tenths(&fx), 30);
    /* Open: it keeps its settings until it closes. */
    configure("open_ms = 7000\nopen_max_ms = 60000\n" ONLY_CONSECUTIVE, "app = dbname=app");
    fake_us += 3000000;
    px_breaker_janitor(); /* half-open, and closed (no pool to probe through) */
    CU_ASSERT_STRING_EQUAL(state(&fx), "closed");
    px_breaker_janitor(); /* renewed with open_ms 7000 */
    trip(&fx);
    CU_ASSERT_EQUAL(open_tenths(&fx), 70);
    fixture_done(&fx);
}

/* A second trip soon after closing doubles the open period, up to open_max_ms. */
static void test_open_period_grows(void)
{
    struct fixture fx;
    fixture_init(&fx, "open_ms = 1000\nopen_max_ms = 3000\n" ONLY_CONSECUTIVE);
    int want[] = {10, 20, 30, 30};
    for (int i = 0; i < 4; i++) {
        trip(&fx);
        CU_ASSERT_EQUAL(open_tenths(&fx), want[i]);
        fake_us += (uint64_t)want[i] * 100000;
        px_breaker_janitor(); /* closes: no pool */
        CU_ASSERT_STRING_EQUAL(state(&fx), "closed");
    }
    fixture_done(&fx);
}

/* ---- metrics ------------------------------------------------------------------------ */

static bool rendered(const char *needle)
{
    struct px_metrics_buf buf = {0};
    bool found = px_metrics_render_buf(&buf) == 0 && strstr(buf.data, needle);
    if (!found)
        fprintf(stderr, "not in /metrics: %s\n", needle);
    free(buf.data);
    return found;
}

static void test_metrics(void)
{
    struct fixture fx;
    fixture_init(&fx, "open_ms = 1000\n" ONLY_CONSECUTIVE);
    CU_ASSERT_TRUE(rendered("pgwarden_breaker_state{database=\"app\"} 0\n"));
    trip(&fx);
    CU_ASSERT_TRUE(rendered("pgwarden_breaker_state{database=\"app\"} 1\n"));
    CU_ASSERT_TRUE(rendered("pgwarden_breaker_failures_total{database=\"app\"} 5\n"));
    CU_ASSERT_TRUE(
        rendered("pgwarden_breaker_transitions_total{database=\"app\",from=\"closed\",to=\"open\"} "
                 "1\n"));
    struct px_breaker_refusal why;
    CU_ASSERT_FALSE(px_breaker_admit(fx.pool.breaker, &why));
    CU_ASSERT_FALSE(px_breaker_admit(fx.pool.breaker, &why));
    CU_ASSERT_TRUE(rendered("pgwarden_breaker_refused_total{database=\"app\"} 2\n"));
    fake_us += 1000000;
    px_breaker_janitor();
    CU_ASSERT_TRUE(rendered("pgwarden_breaker_transitions_total{database=\"app\",from=\"open\","
                            "to=\"half-open\"} 1\n"));
    CU_ASSERT_TRUE(rendered("pgwarden_breaker_transitions_total{database=\"app\",from=\"half-"
                            "open\",to=\"closed\"} 1\n"));
    CU_ASSERT_TRUE(rendered("pgwarden_breaker_state{database=\"app\"} 0\n"));
    fixture_done(&fx);
}

void test_breaker_register(void)
{
    static const CU_TestInfo tests[] = {
        {"contention_never_counts", test_contention_never_counts},
        {"breaker_classes_count", test_breaker_classes_count},
        {"breaker_client_protocol_errors", test_breaker_client_protocol_errors},
        {"success_breaks_run", test_success_breaks_run},
        {"failure_rate", test_failure_rate},
        {"lost_after_fatal_counts_once", test_lost_after_fatal_counts_once},
        {"login_failures", test_login_failures},
        {"refusal_message", test_refusal_message},
        {"janitor_without_pool_closes", test_janitor_without_pool_closes},
        {"registry", test_registry},
        {"reload_settings", test_reload_settings},
        {"open_period_grows", test_open_period_grows},
        {"metrics", test_metrics},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("breaker", suite_init, suite_cleanup, tests);
}
