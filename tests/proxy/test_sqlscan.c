/* test_sqlscan.c: proxy/sqlscan.c classifies what PostgreSQL would, and never reads past
 * the text. */
#include <stdlib.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "sqlscan.h"

void test_sqlscan_register(void);

struct expect_kind {
    const char *sql;
    enum px_sql_kind kind;
    const char *tag; /* BEGIN/COMMIT/ROLLBACK tag, or DEALLOCATE name */
    bool multi;
};

static const struct expect_kind kinds[] = {
    {"BEGIN", PX_SQL_BEGIN, "BEGIN", false},
    {"begin;", PX_SQL_BEGIN, "BEGIN", false},
    {"  Begin Work ; ;", PX_SQL_BEGIN, "BEGIN", false},
    {"/* c /* nested */ */ BEGIN -- x\n TRANSACTION", PX_SQL_BEGIN, "BEGIN", false},
    {"BEGIN ISOLATION LEVEL SERIALIZABLE", PX_SQL_BEGIN, "BEGIN", false},
    {"BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY, NOT DEFERRABLE", PX_SQL_BEGIN, "BEGIN",
     false},
    {"begin isolation level read committed read write deferrable", PX_SQL_BEGIN, "BEGIN", false},
    {"START TRANSACTION", PX_SQL_BEGIN, "START TRANSACTION", false},
    {"start transaction isolation level read uncommitted", PX_SQL_BEGIN, "START TRANSACTION",
     false},
    {"BEGIN ISOLATION LEVEL foo", PX_SQL_OTHER, NULL, false},
    {"BEGIN READ", PX_SQL_OTHER, NULL, false},
    {"BEGIN; SELECT 1", PX_SQL_OTHER, NULL, true},
    {"START", PX_SQL_OTHER, NULL, false},
    {"COMMIT", PX_SQL_COMMIT, "COMMIT", false},
    {"end work;", PX_SQL_COMMIT, "COMMIT", false},
    {"COMMIT PREPARED 'x'", PX_SQL_OTHER, NULL, false},
    {"COMMIT AND CHAIN", PX_SQL_OTHER, NULL, false},
    {"ROLLBACK", PX_SQL_ROLLBACK, "ROLLBACK", false},
    {"abort transaction", PX_SQL_ROLLBACK, "ROLLBACK", false},
    {"ROLLBACK TO SAVEPOINT a", PX_SQL_OTHER, NULL, false},
    {"ROLLBACK TO a", PX_SQL_OTHER, NULL, false},
    {"ROLLBACK PREPARED 'x'", PX_SQL_OTHER, NULL, false},
    {"DEALLOCATE s1", PX_SQL_DEALLOCATE, "s1", false},
    {"deallocate prepare MyStmt;", PX_SQL_DEALLOCATE, "mystmt", false},
    {"DEALLOCATE \"My\"\"Stmt\"", PX_SQL_DEALLOCATE, "My\"Stmt", false},
    {"DEALLOCATE ALL", PX_SQL_DEALLOCATE_ALL, NULL, false},
    {"DEALLOCATE PREPARE ALL", PX_SQL_DEALLOCATE_ALL, NULL, false},
    {"DEALLOCATE \"all\"", PX_SQL_DEALLOCATE, "all", false},
    {"DISCARD ALL", PX_SQL_DISCARD_ALL, NULL, false},
    {"DISCARD PLANS", PX_SQL_OTHER, NULL, false},
    {"", PX_SQL_EMPTY, NULL, false},
    {"  ;  ", PX_SQL_EMPTY, NULL, false},
    {"/* x */", PX_SQL_EMPTY, NULL, false},
    {"SELECT 'a;b'", PX_SQL_OTHER, NULL, false},
    {"SELECT $$ ; $$", PX_SQL_OTHER, NULL, false},
    {"SELECT $a$ ; $b$ ; $a$", PX_SQL_OTHER, NULL, false},
    {"SELECT E'\\'; BEGIN'", PX_SQL_OTHER, NULL, false},
    {"SELECT \"a;b\"", PX_SQL_OTHER, NULL, false},
    {"SELECT 1 -- ; BEGIN\n", PX_SQL_OTHER, NULL, false},
    {"SELECT $1; SELECT 2", PX_SQL_OTHER, NULL, true},
};

static void test_kinds(void)
{
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        const struct expect_kind *k = &kinds[i];
        struct px_sql_info info;
        px_sql_classify(k->sql, strlen(k->sql), &info);
        if (info.kind != k->kind || info.multi != k->multi)
            fprintf(stderr, "\n  %s: kind %d multi %d\n", k->sql, info.kind, info.multi);
        CU_ASSERT_EQUAL(info.kind, k->kind);
        CU_ASSERT_EQUAL(info.multi, k->multi);
        if (k->kind == PX_SQL_DEALLOCATE) {
            CU_ASSERT_STRING_EQUAL(info.name, k->tag);
        } else if (k->tag) {
            CU_ASSERT_STRING_EQUAL(info.tag ? info.tag : "(null)", k->tag);
        } else {
            CU_ASSERT_PTR_NULL(info.tag);
        }
    }
}

struct expect_feature {
    const char *sql;
    const char *feature; /* NULL: none */
};

static const struct expect_feature features[] = {
    {"LISTEN x", "LISTEN"},
    {"select 1; listen x", "LISTEN"},
    {"UNLISTEN *", NULL},
    {"SET search_path = foo", "SET search_path"},
    {"SET SESSION statement_timeout TO 5", "SET statement_timeout"},
    {"set Work_Mem to '1MB'", "SET work_mem"},
    {"RESET search_path", "RESET search_path"},
    {"RESET ALL", NULL},
    {"RESET TimeZone", NULL},
    {"SET LOCAL search_path = foo", NULL},
    {"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", NULL},
    {"SET CONSTRAINTS ALL DEFERRED", NULL},
    {"SET TimeZone = 'UTC'", NULL},
    {"SET TIME ZONE 'UTC'", NULL},
    {"SET NAMES 'UTF8'", NULL},
    {"SET application_name = 'x'", NULL},
    {"SET SESSION DateStyle TO ISO", NULL},
    {"SET ROLE admin", "SET ROLE"},
    {"SET SESSION AUTHORIZATION bob", "SET SESSION AUTHORIZATION"},
    {"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "SET SESSION CHARACTERISTICS"},
    {"PREPARE p AS SELECT 1", "PREPARE"},
    {"PREPARE TRANSACTION 'x'", NULL},
    {"DECLARE c CURSOR WITH HOLD FOR SELECT 1", "WITH HOLD cursor"},
    {"DECLARE c NO SCROLL CURSOR FOR SELECT 1", NULL},
    {"CREATE TEMP TABLE t (a int)", "temporary table"},
    {"create global temporary table t (a int)", "temporary table"},
    {"CREATE TABLE t (a int)", NULL},
    {"LOAD 'auto_explain'", "LOAD"},
    {"SELECT pg_advisory_lock(1)", "session advisory lock"},
    {"SELECT pg_catalog.pg_try_advisory_lock_shared (1, 2)", "session advisory lock"},
    {"SELECT pg_advisory_xact_lock(1)", NULL},
    {"SELECT pg_advisory_unlock(1)", NULL},
    {"SELECT 'pg_advisory_lock(1)'", NULL},
    {"SELECT $$ LISTEN x $$", NULL},
    {"-- LISTEN x\nSELECT 1", NULL},
    {"SELECT 1 /* ; LISTEN x */", NULL},
    {"SELECT $a$ ; LISTEN x $a$", NULL},
    {"SELECT \"pg_advisory_lock\"(1)", NULL},
};

static void test_features(void)
{
    for (size_t i = 0; i < sizeof(features) / sizeof(features[0]); i++) {
        struct px_sql_info info;
        px_sql_classify(features[i].sql, strlen(features[i].sql), &info);
        const char *want = features[i].feature;
        const char *got = info.session_feature;
        if ((want == NULL) != (got == NULL) || (want && strcmp(want, got)))
            fprintf(stderr, "\n  %s: feature %s\n", features[i].sql, got ? got : "(none)");
        if (want) {
            CU_ASSERT_STRING_EQUAL(got ? got : "(none)", want);
        } else {
            CU_ASSERT_PTR_NULL(got);
        }
    }
}

static void test_tracked_params(void)
{
    CU_ASSERT_TRUE(px_sql_param_tracked("TimeZone", 8));
    CU_ASSERT_TRUE(px_sql_param_tracked("timezone", 8));
    CU_ASSERT_TRUE(px_sql_param_tracked("APPLICATION_NAME", 16));
    CU_ASSERT_TRUE(px_sql_param_tracked("client_encodingX", 15));
    CU_ASSERT_FALSE(px_sql_param_tracked("search_path", 11));
    CU_ASSERT_FALSE(px_sql_param_tracked("server_version", 14));
    CU_ASSERT_FALSE(px_sql_param_tracked("TimeZon", 7));
}

/* Every prefix of every test string, in a buffer exactly that long (the sanitizer build
 * catches a read past it), and random bytes: no crash, a defined answer. */
static void test_never_reads_past_len(void)
{
    const char *all[sizeof(kinds) / sizeof(kinds[0]) + sizeof(features) / sizeof(features[0]) + 4];
    size_t n = 0;
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        all[n++] = kinds[i].sql;
    for (size_t i = 0; i < sizeof(features) / sizeof(features[0]); i++)
        all[n++] = features[i].sql;
    all[n++] = "SELECT 'unterminated";
    all[n++] = "SELECT $tag$ unterminated";
    all[n++] = "/* unterminated /* nested */";
    all[n++] = "SELECT E'\\";
    int checked = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(all[i]);
        for (size_t k = 0; k <= len; k++) {
            char *buf = malloc(k ? k : 1);
            memcpy(buf, all[i], k);
            struct px_sql_info info;
            px_sql_classify(buf, k, &info);
            CU_ASSERT(info.kind >= PX_SQL_OTHER && info.kind <= PX_SQL_DISCARD_ALL);
            free(buf);
            checked++;
        }
    }
    unsigned seed = 12345;
    static const char alphabet[] = "$'\"-/*;E (),abcBEGINLISTEN\\\n0";
    for (int r = 0; r < 100000; r++) {
        size_t len = (size_t)(rand_r(&seed) % 40);
        char *buf = malloc(len ? len : 1);
        for (size_t k = 0; k < len; k++)
            buf[k] = (r & 1) ? (char)rand_r(&seed)
                             : alphabet[(size_t)rand_r(&seed) % (sizeof(alphabet) - 1)];
        struct px_sql_info info;
        px_sql_classify(buf, len, &info);
        CU_ASSERT(info.kind >= PX_SQL_OTHER && info.kind <= PX_SQL_DISCARD_ALL);
        free(buf);
    }
    CU_ASSERT(checked > 1000);
}

void test_sqlscan_register(void)
{
    static CU_TestInfo tests[] = {
        {"statement_kinds_and_tags", test_kinds},
        {"session_features", test_features},
        {"tracked_parameters", test_tracked_params},
        {"never_reads_past_len", test_never_reads_past_len},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("sqlscan", NULL, NULL, tests);
}
