/*
 * test_tls_auth.c: TLS on each side of pgwarden and client authentication.
 *   client side: TLS used or not as the client asks (client_tls_mode=allow), verify-full
 *   against the cluster CA, client_tls_mode=require refusing a plain client;
 *   server side: server_tls_mode disable / require / verify-full, checked in pg_stat_ssl
 *   for the backend that served the client;
 *   auth: SCRAM right and wrong password (28P01), unknown user (same answer), md5
 *   auth_type, trust, unknown database (3D000).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_util.h"

static int suite_init(void)
{
    return itu_suite_init();
}

static struct harness_proxy *start(const char *client_tls, const char *server_tls,
                                   const char *auth_type)
{
    struct harness_proxy_opts o = {.pool_mode = "session",
                                   .pool_size = 4,
                                   .client_tls_mode = client_tls,
                                   .server_tls_mode = server_tls,
                                   .auth_type = auth_type,
                                   .query_wait_timeout_ms = 20000};
    return harness_proxy_start(&o);
}

static void stop(struct harness_proxy *px)
{
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* Whether the backend with this pid uses TLS, from a direct connection: "t", "f" or "". */
static const char *backend_ssl(const char *pid)
{
    static char v[8];
    v[0] = '\0';
    PGconn *d = harness_connect_info(harness_cluster_conninfo("sslmode=disable"));
    if (PQstatus(d) == CONNECTION_OK) {
        char sql[128];
        snprintf(sql, sizeof(sql), "SELECT ssl FROM pg_stat_ssl WHERE pid = %d", atoi(pid));
        itu_value_copy(v, sizeof(v), d, sql);
    }
    PQfinish(d);
    return v;
}

/* ---- client side ------------------------------------------------------------------- */

static void test_client_tls_allow(void)
{
    struct harness_proxy *px = start("allow", "disable", "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);

    PGconn *c = harness_connect(px, "sslmode=require");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_TRUE(PQsslInUse(c));
    const char *proto = PQsslAttribute(c, "protocol");
    CU_ASSERT_PTR_NOT_NULL(proto);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'over tls'"), "over tls");
    PQfinish(c);

    c = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_FALSE(PQsslInUse(c));
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 'plain'"), "plain");
    PQfinish(c);

    /* verify-full with the cluster CA: pgwarden presents the server certificate
     * (CN and SAN 127.0.0.1, SAN DNS localhost). */
    c = harness_connect(px, "sslmode=verify-full");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "verify-full: %s", PQerrorMessage(c));
    CU_ASSERT_TRUE(PQsslInUse(c));
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
    PQfinish(c);
    c = harness_connect(px, "host=localhost sslmode=verify-full");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    PQfinish(c);

    stop(px);
}

static void test_client_tls_disable(void)
{
    struct harness_proxy *px = start("disable", "disable", "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    /* pgwarden answers 'N' to SSLRequest: prefer falls back, require fails. */
    PGconn *c = harness_connect(px, "sslmode=prefer");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_FALSE(PQsslInUse(c));
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
    PQfinish(c);
    c = harness_connect(px, "sslmode=require");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    PQfinish(c);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    stop(px);
}

static void test_client_tls_require_refuses_plain(void)
{
    struct harness_proxy *px = start("require", "disable", "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *c = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    /* An error answer (not just a closed socket), class 28. */
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "28000");
    CU_ASSERT_TRUE(itu_error_contains(c, "TLS"));
    PQfinish(c);

    c = harness_connect(px, "sslmode=require");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_TRUE(PQsslInUse(c));
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT 1"), "1");
    PQfinish(c);
    stop(px);
}

/* ---- server side ------------------------------------------------------------------- */

static void check_server_tls(const char *server_tls, const char *want_ssl)
{
    struct harness_proxy *px = start("allow", server_tls, "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *c = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    char pid[32];
    itu_value_copy(pid, sizeof(pid), c, "SELECT pg_backend_pid()");
    CU_ASSERT(atoi(pid) > 0);
    CU_ASSERT_STRING_EQUAL(backend_ssl(pid), want_ssl);
    /* Some traffic over that link. */
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT count(*) FROM generate_series(1, 50000)"), "50000");
    PQfinish(c);
    stop(px);
}

static void test_server_tls_disable(void)
{
    check_server_tls("disable", "f");
}

static void test_server_tls_require(void)
{
    check_server_tls("require", "t");
}

static void test_server_tls_verify_full(void)
{
    check_server_tls("verify-full", "t");
}

/* ---- authentication ---------------------------------------------------------------- */

static void test_scram_right_and_wrong(void)
{
    struct harness_proxy *px = start("allow", "prefer", "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *c = harness_connect(px, "sslmode=disable");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT current_user"), "pgwarden_test");
    PQfinish(c);

    c = harness_connect(px, "sslmode=disable password=wrong-password");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "28P01");
    CU_ASSERT_TRUE(itu_error_contains(c, "password authentication failed"));
    PQfinish(c);

    /* Over TLS too (with channel binding not required). */
    c = harness_connect(px, "sslmode=require password=wrong-password");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "28P01");
    PQfinish(c);

    /* Unknown user: the same answer as a wrong password. */
    c = harness_connect(px, "sslmode=disable user=nobody_here password=whatever");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "28P01");
    CU_ASSERT_TRUE(itu_error_contains(c, "password authentication failed for user "
                                         "\"nobody_here\""));
    PQfinish(c);

    /* Still serving after the failures. */
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=require"));
    stop(px);
}

static void test_md5_auth(void)
{
    struct harness_proxy *px = start("disable", "prefer", "md5");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    const struct harness_cluster *cl = harness_cluster();
    char extra[256];
    snprintf(extra, sizeof(extra), "sslmode=disable user=%s password=%s", cl->md5_user,
             cl->md5_password);
    PGconn *c = harness_connect(px, extra);
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "md5 login: %s", PQerrorMessage(c));
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT current_user"), "md5user");
    PQfinish(c);

    /* The SCRAM-stored test user can log in with md5 to pgwarden as well. */
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));

    snprintf(extra, sizeof(extra), "sslmode=disable user=%s password=nope", cl->md5_user);
    c = harness_connect(px, extra);
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "28P01");
    CU_ASSERT_TRUE(itu_error_contains(c, "password authentication failed"));
    PQfinish(c);
    stop(px);
}

static void test_trust_auth(void)
{
    struct harness_proxy *px = start("disable", "prefer", "trust");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    /* No password asked: a wrong one in the conninfo is never sent. */
    PGconn *c = harness_connect(px, "sslmode=disable password=not-asked");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_OK);
    if (PQstatus(c) != CONNECTION_OK)
        fprintf(stderr, "trust login: %s", PQerrorMessage(c));
    CU_ASSERT_FALSE(PQconnectionUsedPassword(c));
    CU_ASSERT_STRING_EQUAL(itu_value(c, "SELECT current_user"), "pgwarden_test");
    PQfinish(c);
    stop(px);
}

static void test_unknown_database(void)
{
    struct harness_proxy *px = start("disable", "prefer", "scram-sha-256");
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    PGconn *c = harness_connect(px, "sslmode=disable dbname=no_such_db");
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    CU_ASSERT_STRING_EQUAL(harness_conn_sqlstate(c), "3D000");
    CU_ASSERT_TRUE(itu_error_contains(c, "does not exist"));
    PQfinish(c);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "sslmode=disable"));
    stop(px);
}

static void register_suites(void)
{
    static const CU_TestInfo tls_tests[] = {
        {"client_tls_allow_on_off_verify_full", test_client_tls_allow},
        {"client_tls_disable", test_client_tls_disable},
        {"client_tls_require_refuses_plain", test_client_tls_require_refuses_plain},
        {"server_tls_disable", test_server_tls_disable},
        {"server_tls_require", test_server_tls_require},
        {"server_tls_verify_full", test_server_tls_verify_full},
        CU_TEST_INFO_NULL,
    };
    static const CU_TestInfo auth_tests[] = {
        {"scram_right_wrong_unknown_user", test_scram_right_and_wrong},
        {"md5_auth", test_md5_auth},
        {"trust_auth", test_trust_auth},
        {"unknown_database_3D000", test_unknown_database},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("tls", suite_init, NULL, tls_tests);
    cunit_add_suite("auth", suite_init, NULL, auth_tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
