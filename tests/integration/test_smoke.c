/*
 * test_smoke.c: proves the test fixture and the harness on their own: the throwaway
 * cluster accepts SCRAM, md5 and TLS with verify-full DIRECTLY (no pgwarden), rejects a
 * wrong password with 28P01, and the raw-socket helpers parse its replies.  When the
 * pgwarden binary exists, also checks that it accepts the harness-generated config with
 * --check, starts, and stops cleanly on SIGTERM.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"

static int cluster_init(void)
{
    return harness_cluster() ? 0 : 1;
}

/* Runs sql on conn and returns the first value, or "" (static buffer). */
static const char *query_value(PGconn *conn, const char *sql)
{
    static char value[256];
    value[0] = '\0';
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0)
        snprintf(value, sizeof(value), "%s", PQgetvalue(res, 0, 0));
    else
        fprintf(stderr, "query %s failed: %s", sql, PQerrorMessage(conn));
    PQclear(res);
    return value;
}

static void test_select1_tls_verify_full(void)
{
    PGconn *c = harness_connect_info(harness_cluster_conninfo("sslmode=verify-full"));
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_TRUE(PQsslInUse(c));
    CU_ASSERT_STRING_EQUAL(query_value(c, "SELECT 1"), "1");
    CU_ASSERT_STRING_EQUAL(query_value(c, "SELECT current_user"), "pgwarden_test");
    PQfinish(c);
}

static void test_verify_full_localhost(void)
{
    /* The certificate names localhost too (subjectAltName DNS:localhost). */
    PGconn *c =
        harness_connect_info(harness_cluster_conninfo("host=localhost sslmode=verify-full"));
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_TRUE(PQsslInUse(c));
    PQfinish(c);
}

static void test_plain_scram_creates_table(void)
{
    PGconn *c = harness_connect_info(harness_cluster_conninfo("sslmode=disable"));
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_FALSE(PQsslInUse(c));
    PGresult *r = PQexec(c, "CREATE TEMP TABLE smoke(a int); INSERT INTO smoke VALUES (1)");
    CU_ASSERT_EQUAL(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    PQfinish(c);
}

static void test_md5_user(void)
{
    const struct harness_cluster *cl = harness_cluster();
    char extra[256];
    snprintf(extra, sizeof(extra), "user=%s password=%s sslmode=disable", cl->md5_user,
             cl->md5_password);
    PGconn *c = harness_connect_info(harness_cluster_conninfo(extra));
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(query_value(c, "SELECT current_user"), "md5user");
    PQfinish(c);
    /* Stored as md5, so pg_hba's md5 line really does md5, not SCRAM. */
    CU_ASSERT_EQUAL(harness_cluster_exec("DO $$BEGIN IF (SELECT rolpassword NOT LIKE 'md5%' "
                                         "FROM pg_authid WHERE rolname = 'md5user') THEN "
                                         "RAISE EXCEPTION 'md5user not md5'; END IF; END$$"),
                    0);
}

static void test_wrong_password(void)
{
    PGconn *c = harness_connect_info(harness_cluster_conninfo("password=wrong sslmode=prefer"));
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "28P01");
    PQfinish(c);
}

static void test_raw_startup(void)
{
    const struct harness_cluster *cl = harness_cluster();
    uint8_t buf[512], reply[4096];
    size_t n = harness_build_startup(buf, sizeof(buf), cl->user, cl->dbname);
    CU_ASSERT_FATAL(n > 8);

    /* A good startup: PostgreSQL asks for SASL ('R', code 10). */
    int fd = harness_raw_connect(cl->port, 2000);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(harness_raw_send(fd, buf, n, 2000), 0);
    bool closed = false;
    ssize_t got = harness_raw_recv(fd, reply, sizeof(reply), 500, &closed);
    CU_ASSERT(got >= 9 && reply[0] == 'R' && reply[8] == 10);
    close(fd);

    /* Protocol 9.0: ErrorResponse 0A000, then the server hangs up. */
    buf[4] = 0;
    buf[5] = 9;
    fd = harness_raw_connect(cl->port, 2000);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(harness_raw_send(fd, buf, n, 2000), 0);
    got = harness_raw_recv(fd, reply, sizeof(reply), 5000, &closed);
    char state[6] = "";
    CU_ASSERT_TRUE(got > 0 && harness_reply_sqlstate(reply, (size_t)got, state));
    CU_ASSERT_STRING_EQUAL(state, "0A000");
    CU_ASSERT_TRUE(closed);
    close(fd);
}

static void test_run_psql(void)
{
    const struct harness_cluster *cl = harness_cluster();
    char psql[600];
    snprintf(psql, sizeof(psql), "%s/psql", cl->bindir);
    const char *argv[] = {
        psql, "-X", "-At", "-c", "SELECT 40 + 2", harness_cluster_conninfo("sslmode=require"),
        NULL};
    char *out = NULL;
    CU_ASSERT_EQUAL(harness_run(argv, 30000, &out), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    CU_ASSERT_STRING_EQUAL(out, "42\n");
    free(out);
}

static void test_free_port(void)
{
    int p = harness_free_port();
    CU_ASSERT(p > 0 && p < 65536);
    CU_ASSERT_EQUAL(harness_wait_port(p, 100), -1);
}

/* ---- pgwarden ---------------------------------------------------------------------- */

static bool skip_without_pgwarden(void)
{
    if (harness_have_pgwarden())
        return false;
    printf("\n    skipped: the pgwarden binary is not built yet (%s) ",
           harness_pgwarden_path()[0] ? harness_pgwarden_path() : "no target");
    return true;
}

static void test_pgwarden_check(void)
{
    if (skip_without_pgwarden())
        return;
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 4,
                                   .client_tls_mode = "allow",
                                   .server_tls_mode = "verify-full",
                                   .auth_type = "scram-sha-256",
                                   .max_client_conn = 50,
                                   .max_message_bytes = 1 << 20,
                                   .query_wait_timeout_ms = 5000};
    struct harness_proxy *px = harness_proxy_prepare(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    const char *argv[] = {harness_pgwarden_path(), "-c", px->config_path, "--check", NULL};
    char *out = NULL;
    int rc = harness_run(argv, 30000, &out);
    if (rc != 0)
        fprintf(stderr, "pgwarden --check exited %d:\n%s\n", rc, out ? out : "");
    CU_ASSERT_EQUAL(rc, 0);
    free(out);

    /* And a broken config is refused. */
    struct harness_proxy_opts bad = o;
    bad.pgwarden_extra = "no_such_key = 1";
    CU_ASSERT_EQUAL_FATAL(harness_proxy_rewrite_config(px, &bad), 0);
    rc = harness_run(argv, 30000, &out);
    CU_ASSERT_NOT_EQUAL(rc, 0);
    free(out);
    harness_proxy_free(px);
}

static void test_pgwarden_starts_and_stops(void)
{
    if (skip_without_pgwarden())
        return;
    struct harness_proxy *px = harness_proxy_start(NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    CU_ASSERT_TRUE(harness_proxy_alive(px));
    CU_ASSERT(harness_proxy_rss_kb(px) > 0);
    CU_ASSERT_EQUAL(harness_proxy_stop(px, 0), 0);
    CU_ASSERT_FALSE(harness_proxy_alive(px));
    harness_proxy_free(px);
}

static void register_suites(void)
{
    static const CU_TestInfo fixture_tests[] = {
        {"select1_tls_verify_full", test_select1_tls_verify_full},
        {"verify_full_localhost", test_verify_full_localhost},
        {"plain_scram_creates_table", test_plain_scram_creates_table},
        {"md5_user", test_md5_user},
        {"wrong_password_28P01", test_wrong_password},
        {"raw_startup", test_raw_startup},
        {"run_psql", test_run_psql},
        {"free_port", test_free_port},
        CU_TEST_INFO_NULL,
    };
    static const CU_TestInfo pgwarden_tests[] = {
        {"check_accepts_harness_config", test_pgwarden_check},
        {"starts_and_stops", test_pgwarden_starts_and_stops},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("fixture", cluster_init, NULL, fixture_tests);
    cunit_add_suite("pgwarden", cluster_init, NULL, pgwarden_tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
