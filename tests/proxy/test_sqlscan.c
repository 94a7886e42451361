/*
 * test_sqlscan.c: tests of proxy/sqlscan.c, the simple-query classifier.
 *
 * Tables of statements with the exact answer expected (kind, tag, DEALLOCATE name, session
 * feature, multi), grouped by what they exercise, and robustness tests: every prefix of
 * every table string and 100k seeded random strings, each classified from a heap buffer
 * exactly as long as the text (the sanitizer build proves nothing past it is read), plus
 * large pathological inputs that would take minutes if any part were quadratic.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "path/sqlscan.h"
#include "sqltext.h"

void test_sqlscan_register(void);

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* Feature strings as sqlscan.c spells them. */
#define F_ADV     "session advisory lock"
#define F_SPATH   "SET search_path"
#define F_GENERIC "SET of a parameter that is not re-synced"

struct sq_case {
    const char *sql;
    enum px_sql_kind kind;
    const char *tag;     /* expected tag, NULL for none */
    const char *name;    /* expected DEALLOCATE name, NULL for "" */
    const char *feature; /* expected session feature, NULL for none */
    bool multi;
};

/* Classifies text[0..len) from a heap copy of exactly len bytes. */
static void classify_exact(const char *text, size_t len, struct px_sql_info *out)
{
    char *buf = malloc(len ? len : 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    if (len)
        memcpy(buf, text, len);
    px_sql_classify(buf, len, out);
    free(buf);
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

static void check_case(const struct sq_case *c)
{
    struct px_sql_info info;
    classify_exact(c->sql, strlen(c->sql), &info);
    const char *name = c->name ? c->name : "";
    bool ok = info.kind == c->kind && str_eq(info.tag, c->tag) && !strcmp(info.name, name) &&
              str_eq(info.session_feature, c->feature) && info.multi == c->multi;
    if (!ok)
        fprintf(stderr, "\n    [%s]: kind %d tag %s name \"%s\" feature %s multi %d", c->sql,
                (int)info.kind, info.tag ? info.tag : "NULL", info.name,
                info.session_feature ? info.session_feature : "NULL", (int)info.multi);
    CU_ASSERT_EQUAL(info.kind, c->kind);
    CU_ASSERT_TRUE(str_eq(info.tag, c->tag));
    CU_ASSERT_STRING_EQUAL(info.name, name);
    CU_ASSERT_TRUE(str_eq(info.session_feature, c->feature));
    CU_ASSERT_EQUAL(info.multi, c->multi);
}

static void check_cases(const struct sq_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++)
        check_case(&cases[i]);
}

/* ---- transaction control ---------------------------------------------------------------- */

#define BEGIN_OK(sql)                                                                              \
    {                                                                                              \
        sql, PX_SQL_BEGIN, "BEGIN", NULL, NULL, false                                              \
    }
#define START_OK(sql)                                                                              \
    {                                                                                              \
        sql, PX_SQL_BEGIN, "START TRANSACTION", NULL, NULL, false                                  \
    }
#define OTHER(sql)                                                                                 \
    {                                                                                              \
        sql, PX_SQL_OTHER, NULL, NULL, NULL, false                                                 \
    }

static const struct sq_case begin_cases[] = {
    BEGIN_OK("BEGIN"),
    BEGIN_OK("begin"),
    BEGIN_OK("BEGIN;"),
    BEGIN_OK("begin;;"),
    BEGIN_OK(";begin"),
    BEGIN_OK("  Begin Work ; ;"),
    BEGIN_OK("BEGIN TRANSACTION"),
    BEGIN_OK("BEGIN/**/WORK"),
    BEGIN_OK("/* c /* nested */ */ BEGIN -- x\n TRANSACTION"),
    BEGIN_OK("BEGIN -- a comment to the end"),
    BEGIN_OK("BEGIN\tISOLATION\nLEVEL\rSERIALIZABLE\f"),
    BEGIN_OK("BEGIN ISOLATION LEVEL REPEATABLE READ"),
    BEGIN_OK("BEGIN ISOLATION LEVEL READ COMMITTED"),
    BEGIN_OK("BEGIN ISOLATION LEVEL READ UNCOMMITTED"),
    BEGIN_OK("BEGIN READ ONLY"),
    BEGIN_OK("BEGIN READ WRITE"),
    BEGIN_OK("BEGIN DEFERRABLE"),
    BEGIN_OK("BEGIN NOT DEFERRABLE"),
    BEGIN_OK("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY, NOT DEFERRABLE"),
    BEGIN_OK("begin transaction isolation level read committed read write deferrable"),
    BEGIN_OK("BEGIN WORK READ ONLY,READ WRITE;"),
    START_OK("START TRANSACTION"),
    START_OK("start transaction isolation level read uncommitted;"),
    START_OK("START /* x */ TRANSACTION READ ONLY, DEFERRABLE"),
};

/* Forms PostgreSQL rejects, or that are more than a BEGIN: the server must answer. */
static const struct sq_case begin_rejected[] = {
    OTHER("BEGIN ISOLATION LEVEL foo"),
    OTHER("BEGIN ISOLATION LEVEL"),
    OTHER("BEGIN ISOLATION LEVEL REPEATABLE"),
    OTHER("BEGIN ISOLATION LEVEL 'serializable'"),
    OTHER("BEGIN ISOLATION SERIALIZABLE"),
    OTHER("BEGIN READ"),
    OTHER("BEGIN READ COMMITTED"),
    OTHER("BEGIN NOT"),
    OTHER("BEGIN WORK WORK"),
    OTHER("BEGIN , READ ONLY"),
    OTHER("BEGIN READ ONLY,"),
    OTHER("BEGIN READ ONLY,, READ WRITE"),
    OTHER("BEGIN foo"),
    OTHER("BEGIN \"WORK\""),
    OTHER("BEGIN ATOMIC"),
    OTHER("BEGINX"),
    OTHER("BEGIN /* unterminated"),
    OTHER("BEGIN\v"), /* not white space for PostgreSQL 15 */
    OTHER("START"),
    OTHER("START WORK"),
    OTHER("START TRANSACTION WORK"),
    {"SELECT 1; BEGIN", PX_SQL_OTHER, NULL, NULL, NULL, true},
    {"BEGIN; SELECT 1", PX_SQL_OTHER, NULL, NULL, NULL, true},
    {"BEGIN; BEGIN", PX_SQL_OTHER, NULL, NULL, NULL, true},
};

#define COMMIT_OK(sql)                                                                             \
    {                                                                                              \
        sql, PX_SQL_COMMIT, "COMMIT", NULL, NULL, false                                            \
    }
#define ROLLBACK_OK(sql)                                                                           \
    {                                                                                              \
        sql, PX_SQL_ROLLBACK, "ROLLBACK", NULL, NULL, false                                        \
    }

static const struct sq_case end_cases[] = {
    COMMIT_OK("COMMIT"),
    COMMIT_OK("commit;"),
    COMMIT_OK("COMMIT WORK"),
    COMMIT_OK("Commit Transaction ;"),
    COMMIT_OK("END"),
    COMMIT_OK("end work;"),
    COMMIT_OK("END TRANSACTION"),
    COMMIT_OK("COMMIT AND NO CHAIN"),
    COMMIT_OK("-- done\nCOMMIT/* ok */;"),
    ROLLBACK_OK("ROLLBACK"),
    ROLLBACK_OK("rollback work"),
    ROLLBACK_OK("ROLLBACK TRANSACTION;"),
    ROLLBACK_OK("ABORT"),
    ROLLBACK_OK("abort transaction;"),
    ROLLBACK_OK("ROLLBACK AND NO CHAIN"),
    OTHER("COMMIT PREPARED 'x'"),
    OTHER("COMMIT AND CHAIN"),
    OTHER("COMMIT WORK AND CHAIN"),
    OTHER("END AND CHAIN"),
    OTHER("COMMIT AND"),
    OTHER("COMMIT AND NO"),
    OTHER("COMMIT WORK TRANSACTION"),
    OTHER("ROLLBACK TO SAVEPOINT a"),
    OTHER("ROLLBACK TO a"),
    OTHER("ROLLBACK WORK TO SAVEPOINT a"),
    OTHER("ROLLBACK PREPARED 'x'"),
    OTHER("ROLLBACK AND CHAIN"),
    OTHER("ABORT AND CHAIN"),
    OTHER("ENDX"),
    OTHER("SAVEPOINT a"),
    OTHER("RELEASE SAVEPOINT a"),
    {"COMMIT; COMMIT", PX_SQL_OTHER, NULL, NULL, NULL, true},
    {"ROLLBACK; BEGIN", PX_SQL_OTHER, NULL, NULL, NULL, true},
};

static void test_begin(void)
{
    check_cases(begin_cases, NELEM(begin_cases));
}

static void test_begin_rejected(void)
{
    check_cases(begin_rejected, NELEM(begin_rejected));
}

static void test_commit_rollback(void)
{
    check_cases(end_cases, NELEM(end_cases));
}

/* ---- DEALLOCATE, DISCARD, empty ------------------------------------------------------- */

#define DEALLOC(sql, name)                                                                         \
    {                                                                                              \
        sql, PX_SQL_DEALLOCATE, NULL, name, NULL, false                                            \
    }
#define DEALLOC_ALL(sql)                                                                           \
    {                                                                                              \
        sql, PX_SQL_DEALLOCATE_ALL, NULL, NULL, NULL, false                                        \
    }

static const struct sq_case dealloc_cases[] = {
    DEALLOC("DEALLOCATE s1", "s1"),
    DEALLOC("deallocate prepare MyStmt;", "mystmt"),
    DEALLOC("DEALLOCATE \"My\"\"Stmt\"", "My\"Stmt"),
    DEALLOC("DEALLOCATE \"MixedCase\"", "MixedCase"),
    DEALLOC("DEALLOCATE PREPARE \"a b;c -- d\"", "a b;c -- d"),
    DEALLOC("DEALLOCATE \"all\"", "all"),
    DEALLOC("DEALLOCATE \"ALL\"", "ALL"),
    DEALLOC("DEALLOCATE PREPARE", "prepare"),
    DEALLOC("DEALLOCATE PREPARE prepare", "prepare"),
    DEALLOC("DEALLOCATE s$1_X", "s$1_x"),
    DEALLOC("DEALLOCATE _pgw_12", "_pgw_12"),
    DEALLOC("DEALLOCATE \xc3\x84"
            "BC",
            "\xc3\x84"
            "bc"), /* only ASCII folds */
    DEALLOC("DEALLOCATE /* c */ S1 -- x", "s1"),
    DEALLOC("DEALLOCATE begin", "begin"), /* unreserved keywords are names */
    DEALLOC_ALL("DEALLOCATE ALL"),
    DEALLOC_ALL("DEALLOCATE PREPARE ALL"),
    DEALLOC_ALL("deallocate all;"),
    OTHER("DEALLOCATE"),
    OTHER("DEALLOCATE select"),
    OTHER("DEALLOCATE PREPARE table"),
    OTHER("DEALLOCATE \"\""),
    OTHER("DEALLOCATE a b"),
    OTHER("DEALLOCATE 'a'"),
    OTHER("DEALLOCATE 1"),
    OTHER("DEALLOCATE a.b"),
    OTHER("DEALLOCATE \"unterminated"),
    OTHER("DEALLOCATE ALL x"),
    OTHER("DEALLOCATE U&\"a\""),
    {"DEALLOCATE s1; DEALLOCATE s2", PX_SQL_OTHER, NULL, NULL, NULL, true},
};

static const struct sq_case discard_empty_cases[] = {
    {"DISCARD ALL", PX_SQL_DISCARD_ALL, NULL, NULL, NULL, false},
    {"discard all;", PX_SQL_DISCARD_ALL, NULL, NULL, NULL, false},
    OTHER("DISCARD PLANS"),
    OTHER("DISCARD SEQUENCES"),
    OTHER("DISCARD TEMP"),
    OTHER("DISCARD ALL x"),
    OTHER("DISCARD"),
    {"", PX_SQL_EMPTY, NULL, NULL, NULL, false},
    {"  ;  ", PX_SQL_EMPTY, NULL, NULL, NULL, false},
    {"/* x */", PX_SQL_EMPTY, NULL, NULL, NULL, false},
    {";;;", PX_SQL_EMPTY, NULL, NULL, NULL, false},
    {"-- only a comment", PX_SQL_EMPTY, NULL, NULL, NULL, false},
    {"\n\t\r\f", PX_SQL_EMPTY, NULL, NULL, NULL, false},
    {"/* a /* b */ c */;", PX_SQL_EMPTY, NULL, NULL, NULL, false},
    OTHER("/* x"), /* unterminated comment: PostgreSQL says so */
    OTHER("/* a /* b */"),
    OTHER("'"),
    OTHER("\v"),
};

static void test_deallocate(void)
{
    check_cases(dealloc_cases, NELEM(dealloc_cases));
}

static void test_deallocate_long_names(void)
{
    char sql[256], want[128];
    struct px_sql_info info;

    /* 70 ASCII letters: the first 63, folded. */
    snprintf(sql, sizeof(sql), "DEALLOCATE %s",
             "ABCDEFGHIJABCDEFGHIJABCDEFGHIJABCDEFGHIJABCDEFGHIJ"
             "ABCDEFGHIJABCDEFGHIJ");
    classify_exact(sql, strlen(sql), &info);
    CU_ASSERT_EQUAL(info.kind, PX_SQL_DEALLOCATE);
    CU_ASSERT_EQUAL(strlen(info.name), 63);
    CU_ASSERT_NSTRING_EQUAL(info.name, "abcdefghijabcdefghij", 20);
    CU_ASSERT_EQUAL(info.name[62], 'c');

    /* 62 letters and a 2-byte character: byte 63 would split it, so 62 bytes remain. */
    memset(want, 'a', 62);
    want[62] = '\0';
    snprintf(sql, sizeof(sql), "DEALLOCATE \"%s\xc3\xa9\"", want);
    classify_exact(sql, strlen(sql), &info);
    CU_ASSERT_EQUAL(info.kind, PX_SQL_DEALLOCATE);
    CU_ASSERT_STRING_EQUAL(info.name, want);

    /* 61 letters and the 2-byte character: exactly 63 bytes, kept whole. */
    want[61] = '\0';
    snprintf(sql, sizeof(sql), "DEALLOCATE %s\xc3\xa9xyz", want);
    classify_exact(sql, strlen(sql), &info);
    CU_ASSERT_EQUAL(strlen(info.name), 63);
    CU_ASSERT_NSTRING_EQUAL(info.name + 61, "\xc3\xa9", 2);

    /* 60 letters and a 4-byte character: bytes 61..64 would be split, 60 remain. */
    want[60] = '\0';
    snprintf(sql, sizeof(sql), "DEALLOCATE %s\xf0\x9f\x98\x80", want);
    classify_exact(sql, strlen(sql), &info);
    CU_ASSERT_STRING_EQUAL(info.name, want);

    /* Quoted names truncate after unescaping "": 62 letters, then "" = one quote. */
    memset(want, 'q', 62);
    want[62] = '\0';
    snprintf(sql, sizeof(sql), "DEALLOCATE \"%s\"\"zzz\"", want);
    classify_exact(sql, strlen(sql), &info);
    CU_ASSERT_EQUAL(strlen(info.name), 63);
    CU_ASSERT_EQUAL(info.name[62], '"');
}

static void test_discard_and_empty(void)
{
    check_cases(discard_empty_cases, NELEM(discard_empty_cases));
}

/* ---- session features ----------------------------------------------------------------- */

#define FEAT(sql, f)                                                                               \
    {                                                                                              \
        sql, PX_SQL_OTHER, NULL, NULL, f, false                                                    \
    }

static const struct sq_case feature_cases[] = {
    FEAT("LISTEN x", "LISTEN"),
    FEAT("listen \"Chan\";", "LISTEN"),
    {"select 1; listen x", PX_SQL_OTHER, NULL, NULL, "LISTEN", true},
    {"BEGIN; LISTEN x; COMMIT", PX_SQL_OTHER, NULL, NULL, "LISTEN", true},
    FEAT("SET search_path = foo", F_SPATH),
    FEAT("SET search_path TO foo, public", F_SPATH),
    FEAT("set Search_Path to DEFAULT", F_SPATH),
    FEAT("SET SESSION search_path = foo", F_SPATH),
    FEAT("SET \"search_path\" = foo", F_SPATH),
    FEAT("SET SCHEMA 'foo'", F_SPATH),
    FEAT("SET /* c */ search_path -- c\n = foo", F_SPATH),
    FEAT("SET statement_timeout = 5", "SET statement_timeout"),
    FEAT("SET SESSION statement_timeout TO 5", "SET statement_timeout"),
    FEAT("set Work_Mem to '1MB'", "SET work_mem"),
    FEAT("SET lock_timeout = 1", "SET lock_timeout"),
    FEAT("SET idle_in_transaction_session_timeout = 1", "SET idle_in_transaction_session_timeout"),
    FEAT("SET default_transaction_isolation = 'serializable'", "SET default_transaction_isolation"),
    FEAT("SET enable_seqscan = off", F_GENERIC),
    FEAT("SET myext.setting = 1", F_GENERIC),
    FEAT("SET TimeZone.x = 1", F_GENERIC),
    FEAT("SET XML OPTION DOCUMENT", F_GENERIC),
    FEAT("SET datestyle FROM CURRENT", NULL),
    FEAT("SET work_mem FROM CURRENT", "SET work_mem"),
    FEAT("RESET search_path", F_SPATH),
    FEAT("RESET statement_timeout", "SET statement_timeout"),
    FEAT("reset role", "SET ROLE"),
    FEAT("RESET SESSION AUTHORIZATION", "SET SESSION AUTHORIZATION"),
    FEAT("SET ROLE admin", "SET ROLE"),
    FEAT("SET role TO admin", "SET ROLE"),
    FEAT("SET SESSION ROLE admin", "SET ROLE"),
    FEAT("SET ROLE NONE", "SET ROLE"),
    FEAT("SET SESSION AUTHORIZATION bob", "SET SESSION AUTHORIZATION"),
    FEAT("SET SESSION AUTHORIZATION DEFAULT", "SET SESSION AUTHORIZATION"),
    FEAT("SET SESSION SESSION AUTHORIZATION bob", "SET SESSION AUTHORIZATION"),
    FEAT("SET session_authorization = bob", "SET SESSION AUTHORIZATION"),
    FEAT("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "SET SESSION CHARACTERISTICS"),
    FEAT("PREPARE p AS SELECT 1", "PREPARE"),
    FEAT("prepare p(int) as select $1", "PREPARE"),
    FEAT("PREPARE transaction AS SELECT 1", "PREPARE"),
    FEAT("PREPARE \"Q\" (text) AS SELECT $1", "PREPARE"),
    FEAT("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "WITH HOLD cursor"),
    FEAT("DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1", "WITH HOLD cursor"),
    FEAT("declare \"C\" binary insensitive scroll cursor with hold for select 1",
         "WITH HOLD cursor"),
    FEAT("DECLARE cursor CURSOR WITH /* x */ HOLD FOR SELECT 1", "WITH HOLD cursor"),
    FEAT("CREATE TEMP TABLE t (a int)", "temporary table"),
    FEAT("CREATE TEMPORARY TABLE t AS SELECT 1", "temporary table"),
    FEAT("create global temporary table t (a int)", "temporary table"),
    FEAT("CREATE LOCAL TEMP TABLE t ()", "temporary table"),
    FEAT("CREATE TEMP TABLE IF NOT EXISTS t (a int) ON COMMIT PRESERVE ROWS", "temporary table"),
    FEAT("CREATE TEMP VIEW v AS SELECT 1", "temporary view"),
    FEAT("CREATE TABLE pg_temp.t (a int)", "temporary object"),
    FEAT("create function PG_TEMP.f() returns int language sql as 'select 1'", "temporary object"),
    FEAT("CREATE STATISTICS pg_temp.s ON a, b FROM t", "temporary object"),
    FEAT("SELECT * FROM pg_temp_3.t", "temporary object"),
    FEAT("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", "temporary view"),
    FEAT("CREATE TEMP RECURSIVE VIEW v (n) AS SELECT 1", "temporary view"),
    FEAT("CREATE TEMPORARY SEQUENCE s", "temporary sequence"),
    FEAT("SELECT * INTO TEMP t FROM x", "temporary table"),
    FEAT("SELECT 1 AS a INTO TEMPORARY TABLE t", "temporary table"),
    FEAT("LOAD 'auto_explain'", "LOAD"),
    FEAT("SELECT pg_advisory_lock(1)", F_ADV),
    FEAT("SELECT 1_000, pg_advisory_lock(1)", F_ADV), /* a PostgreSQL 16 number before it */
    {"SELECT 0o17; SET search_path = foo", PX_SQL_OTHER, NULL, NULL, F_SPATH, true},
    FEAT("select PG_ADVISORY_LOCK (1)", F_ADV),
    FEAT("SELECT pg_advisory_lock/* c */(1)", F_ADV),
    FEAT("SELECT pg_advisory_lock\n(1)", F_ADV),
    FEAT("SELECT pg_advisory_lock_shared(1)", F_ADV),
    FEAT("SELECT pg_try_advisory_lock(1, 2)", F_ADV),
    FEAT("SELECT pg_try_advisory_lock_shared(1)", F_ADV),
    FEAT("SELECT pg_catalog.pg_try_advisory_lock_shared (1, 2)", F_ADV),
    FEAT("SELECT \"pg_advisory_lock\"(1)", F_ADV),
    FEAT("SELECT x FROM t WHERE pg_try_advisory_lock(id)", F_ADV),
    FEAT("WITH a AS (SELECT pg_advisory_lock(1)) SELECT 1", F_ADV),
    FEAT("DECLARE c CURSOR FOR SELECT pg_advisory_lock(1)", F_ADV),
    FEAT("EXPLAIN ANALYZE SELECT pg_advisory_lock(1)", F_ADV),
    {"BEGIN; SELECT pg_advisory_lock(1); COMMIT", PX_SQL_OTHER, NULL, NULL, F_ADV, true},
    /* The first feature in the text is the one named. */
    {"LISTEN a; SET search_path = x", PX_SQL_OTHER, NULL, NULL, "LISTEN", true},
    {"SET search_path = x; LISTEN a", PX_SQL_OTHER, NULL, NULL, F_SPATH, true},
    {"SELECT pg_advisory_lock(1); LISTEN a", PX_SQL_OTHER, NULL, NULL, F_ADV, true},
};

/* Look-alikes that create no session state (or none pgwarden does not re-sync). */
static const struct sq_case near_misses[] = {
    FEAT("UNLISTEN *", NULL), FEAT("UNLISTEN x", NULL), FEAT("NOTIFY c, 'LISTEN'", NULL),
    FEAT("SET LOCAL search_path = foo", NULL), FEAT("set local statement_timeout = 5", NULL),
    FEAT("SET LOCAL ROLE admin", NULL), FEAT("SET LOCAL SESSION AUTHORIZATION bob", NULL),
    FEAT("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", NULL),
    FEAT("SET SESSION TRANSACTION READ ONLY", NULL),
    FEAT("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", NULL),
    FEAT("SET CONSTRAINTS ALL DEFERRED", NULL), FEAT("SET TimeZone = 'UTC'", NULL),
    FEAT("SET timezone TO 'UTC'", NULL), FEAT("SET \"TimeZone\" = 'UTC'", NULL),
    FEAT("SET TIME ZONE 'UTC'", NULL), FEAT("SET TIME ZONE LOCAL", NULL),
    FEAT("SET SESSION TIME ZONE DEFAULT", NULL), FEAT("SET NAMES 'UTF8'", NULL),
    FEAT("SET client_encoding = 'UTF8'", NULL), FEAT("SET application_name = 'x'", NULL),
    FEAT("SET SESSION DateStyle TO ISO", NULL), FEAT("SET intervalstyle = postgres", NULL),
    FEAT("SET standard_conforming_strings = on", NULL),
    FEAT("SET default_transaction_read_only = on", NULL), FEAT("RESET ALL", NULL),
    FEAT("RESET TimeZone", NULL), FEAT("RESET TIME ZONE", NULL),
    FEAT("RESET application_name", NULL), FEAT("RESET TRANSACTION ISOLATION LEVEL", NULL),
    FEAT("SELECT pg_advisory_xact_lock(1)", NULL),
    FEAT("SELECT pg_advisory_xact_lock_shared(1)", NULL),
    FEAT("SELECT pg_try_advisory_xact_lock(1)", NULL), FEAT("SELECT pg_advisory_unlock(1)", NULL),
    FEAT("SELECT pg_advisory_unlock_shared(1)", NULL),
    FEAT("SELECT pg_advisory_unlock_all()", NULL), FEAT("SELECT pg_advisory_lock", NULL),
    FEAT("SELECT pg_advisory_lock + (1)", NULL), FEAT("SELECT my_pg_advisory_lock(1)", NULL),
    FEAT("SELECT pg_advisory_locks(1)", NULL), FEAT("SELECT pg_advisory_lock$x(1)", NULL),
    FEAT("SELECT \"PG_ADVISORY_LOCK\"(1)", NULL), /* quoted: another function */
    FEAT("SELECT 'pg_advisory_lock(1)'", NULL), FEAT("SELECT E'\\' pg_advisory_lock(1)'", NULL),
    FEAT("SELECT $$pg_advisory_lock(1)$$", NULL), FEAT("SELECT 1 -- pg_advisory_lock(1)", NULL),
    FEAT("SELECT \"pg_advisory_lock(1)\"", NULL), FEAT("SELECT 'LISTEN x'", NULL),
    FEAT("-- LISTEN x\nSELECT 1", NULL), FEAT("SELECT $$ LISTEN $$", NULL),
    FEAT("SELECT $a$ ; LISTEN x $a$", NULL), FEAT("SELECT 1 /* ; LISTEN x */", NULL),
    FEAT("SELECT 1 /* /* ; */ LISTEN x */", NULL), FEAT("DECLARE c CURSOR FOR SELECT 1", NULL),
    FEAT("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", NULL),
    FEAT("DECLARE c NO SCROLL CURSOR FOR SELECT 'WITH HOLD'", NULL),
    FEAT("PREPARE TRANSACTION 'x'", NULL), FEAT("prepare transaction 'gid-1';", NULL),
    FEAT("CREATE TABLE t (a int)", NULL),
    /* a temporary table dropped at commit outlives nothing */
    FEAT("CREATE TEMP TABLE t (a int) ON COMMIT DROP", NULL),
    FEAT("create temporary table if not exists pt (a int, b text default 'on commit drop') "
         "on commit drop;",
         NULL),
    FEAT("CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", NULL),
    FEAT("CREATE TEMP TABLE t (a int) ON COMMIT DELETE ROWS", "temporary table"),
    FEAT("CREATE TEMP TABLE t (check (a > 0), a int) ON COMMIT PRESERVE ROWS", "temporary table"),
    FEAT("CREATE TEMP TABLE t AS SELECT 'on', 'commit', 'drop'", "temporary table"),
    FEAT("CREATE UNLOGGED TABLE t ()", NULL), FEAT("CREATE TABLE temp (a int)", NULL),
    FEAT("INSERT INTO temp VALUES (1)", NULL), FEAT("SELECT * FROM temp", NULL),
    FEAT("SELECT 1 INTO t", NULL), FEAT("CREATE VIEW v AS SELECT * FROM temp", NULL),
    FEAT("EXECUTE p", NULL), FEAT("SHOW search_path", NULL),
    FEAT("ALTER ROLE x SET search_path = y", NULL),
    FEAT("CREATE FUNCTION f() RETURNS int SET search_path = x AS $$ SELECT 1 $$ LANGUAGE sql",
         NULL),
    /* set_config() of the session is noticed (the server is pinned); is_local true is
     * SET LOCAL's (PostgREST's per-transaction settings): only a constant true counts */
    FEAT("SELECT set_config('search_path', 'x', false)", "set_config()"),
    FEAT("SELECT set_config('request.jwt.claims', '{\"role\":\"anon\"}', true)", NULL),
    FEAT("select SET_CONFIG('a.b', $1, 'on')", NULL),
    FEAT("SELECT set_config('a.b', f(1, (2)), TRUE), 1", NULL),
    FEAT("SELECT set_config('a.b', 'x', $3)", "set_config()"),
    FEAT("SELECT set_config('a.b', 'x', true::bool)", "set_config()"),
    FEAT("SELECT set_config('a.b', 'x', 'off')", "set_config()"),
    FEAT("SELECT set_config('a.b', 'x', true), set_config('c.d', 'y', false)", "set_config()"),
    FEAT("SELECT set_config('a.b', 'x', true", "set_config()"), /* unterminated */
};

static void test_session_features(void)
{
    check_cases(feature_cases, NELEM(feature_cases));
}

static void test_near_misses(void)
{
    check_cases(near_misses, NELEM(near_misses));
}

/* ---- lexing and statement splitting --------------------------------------------------- */

#define MULTI(sql)                                                                                 \
    {                                                                                              \
        sql, PX_SQL_OTHER, NULL, NULL, NULL, true                                                  \
    }

static const struct sq_case lexing_cases[] = {
    MULTI("SELECT 1; SELECT 2"),
    MULTI("SELECT 1;;SELECT 2"),
    OTHER("SELECT 1 ;"),
    OTHER("SELECT 1 /* ; */ ; ; "),
    OTHER("SELECT 'a;b'"),
    OTHER("SELECT 'it''s; here'"),
    MULTI("SELECT 'a\\'; SELECT 2"), /* standard strings: a backslash is just a byte */
    OTHER("SELECT E'\\'; BEGIN'"),
    OTHER("SELECT e'\\\\\\'; x'"),
    MULTI("SELECT e'\\\\'; SELECT 2"),
    OTHER("SELECT E'a''; b'"),
    MULTI("SELECT fooe'x\\'; SELECT 2"), /* fooe is an identifier: a standard string */
    OTHER("SELECT N'a;b', B'01', X'ff;'"),
    OTHER("SELECT U&'d\\0061t;a'"),
    OTHER("SELECT \"a;b\""),
    OTHER("SELECT \"a\"\";b\""),
    OTHER("SELECT $$ ; $$"),
    OTHER("SELECT $$$$; "),
    OTHER("SELECT $a$ ; $b$ ; $a$"),
    OTHER("SELECT $a$ $A$ ; $a$"), /* tags are case-sensitive */
    OTHER("SELECT $_1$ ; $_1$"),
    OTHER("SELECT $a$ $a ; a$ $a$"),
    OTHER("SELECT $a$ $$ ; $a$"),
    OTHER("SELECT $abc$ $ab$ $abc ; $abc$"),
    MULTI("SELECT $a$ x $a$; SELECT 2"),
    MULTI("SELECT $1; SELECT 2"),
    MULTI("SELECT $1$ ; $1$"),        /* $1 is a parameter, not a dollar quote */
    MULTI("SELECT a$b$c ; SELECT 2"), /* $ inside an identifier starts nothing */
    OTHER("SELECT 1$$;$$"),           /* a number, then a dollar quote */
    OTHER("SELECT 1 -- ; BEGIN\n"),
    MULTI("SELECT 1 -- x\r; SELECT 2"),
    MULTI("SELECT 1-- x\n;SELECT 2"),
    OTHER("SELECT 1 /* a /* b */ ; */"),
    MULTI("SELECT 1 /* a */ ; SELECT 2"),
    OTHER("SELECT 1 +/* ; */ 2"),
    OTHER("SELECT 1 */ 2"),
    /* An unterminated literal or comment runs to the end: one (bad) statement. */
    OTHER("SELECT 'unterminated; SELECT 2"),
    OTHER("SELECT $q$ unterminated ; SELECT 2"),
    OTHER("SELECT \"unterminated ; SELECT 2"),
    OTHER("SELECT E'\\"),
    OTHER("SELECT E'\\'"),
    OTHER("SELECT 1 /* unterminated ; SELECT 2"),
    OTHER("SELECT 1 /* /* */ ; SELECT 2"),
    {"BEGIN; /* unterminated", PX_SQL_OTHER, NULL, NULL, NULL, true},
    /* A string continues after white space holding a newline (scan.l quotecontinue) in
     * the kind it started as: below, \' is an escape of the E'' string, not its end.
     * sqlscan.c's own lexer did not continue strings and saw LISTEN, BEGIN, two
     * statements (found when the lexer was shared with lockcall.c: sqllex.c). */
    OTHER("SELECT E'a'\n'\\'; LISTEN x; --'"),
    OTHER("SELECT E'a' -- c\n'\\'; BEGIN; --'"),
    MULTI("SELECT 'a'\n'\\'; SELECT 2"), /* standard: the backslash is a byte */
    {"SELECT 'a' 'b'; LISTEN x", PX_SQL_OTHER, NULL, NULL, "LISTEN", true},
    /* Junk after a number or parameter: PostgreSQL 15 rejects the text, but 16 accepts
     * 0x1F, 0o17, 0b1 and 1_000 and 14 reads 1abc as "1 AS abc", and pgwarden does not ask
     * the server's version: the classifier goes on past them (fails closed), so what comes
     * after is seen (a reviewer found the strict lexer missed these pins and SETs). */
    {"SELECT 1abc; LISTEN x", PX_SQL_OTHER, NULL, NULL, "LISTEN", true},
    {"SELECT $1abc; LISTEN x", PX_SQL_OTHER, NULL, NULL, "LISTEN", true},
    {"SELECT 0x1F; LISTEN x", PX_SQL_OTHER, NULL, NULL, "LISTEN", true},
    {"SELECT 1.5e; LISTEN x", PX_SQL_OTHER, NULL, NULL, "LISTEN", true},
    {"SELECT 1.x; LISTEN x", PX_SQL_OTHER, NULL, NULL, "LISTEN", true},
    {"SELECT 0o17; LISTEN x", PX_SQL_OTHER, NULL, NULL, "LISTEN", true},
    {"SELECT 1_000; LISTEN x", PX_SQL_OTHER, NULL, NULL, "LISTEN", true},
    {"SELECT 1e-5, .5, 1., 1..2, $1.a; LISTEN x", PX_SQL_OTHER, NULL, NULL, "LISTEN", true},
};

static void test_lexing(void)
{
    check_cases(lexing_cases, NELEM(lexing_cases));
}

/* Texts with NUL bytes, a NULL pointer, and a dirty output struct. */
static void test_odd_inputs(void)
{
    struct px_sql_info info;

#define LIT(s) s, sizeof(s) - 1
    classify_exact(LIT("BEGIN\0"), &info);
    CU_ASSERT_EQUAL(info.kind, PX_SQL_OTHER);
    classify_exact("BEGIN\0", 5, &info);
    CU_ASSERT_EQUAL(info.kind, PX_SQL_BEGIN);
    classify_exact(LIT("DEALLOCATE \"a\0b\""), &info);
    CU_ASSERT_EQUAL(info.kind, PX_SQL_OTHER);
    CU_ASSERT_STRING_EQUAL(info.name, "");
    classify_exact(LIT("SELECT '\0;'; LISTEN x"), &info);
    CU_ASSERT_STRING_EQUAL(info.session_feature ? info.session_feature : "", "LISTEN");
    CU_ASSERT_TRUE(info.multi);

    px_sql_classify(NULL, 0, &info);
    CU_ASSERT_EQUAL(info.kind, PX_SQL_EMPTY);
    CU_ASSERT_PTR_NULL(info.tag);

    memset(&info, 0xAA, sizeof(info));
    classify_exact("SELECT 1", 8, &info);
    CU_ASSERT_EQUAL(info.kind, PX_SQL_OTHER);
    CU_ASSERT_PTR_NULL(info.tag);
    CU_ASSERT_STRING_EQUAL(info.name, "");
    CU_ASSERT_PTR_NULL(info.session_feature);
    CU_ASSERT_FALSE(info.multi);

    /* The sql pointer may point into a larger buffer: only len bytes count. */
    px_sql_classify("COMMIT PREPARED 'x'", 6, &info);
    CU_ASSERT_EQUAL(info.kind, PX_SQL_COMMIT);
    px_sql_classify("LISTEN x", 5, &info);
    CU_ASSERT_PTR_NULL(info.session_feature);
}

/* Text PostgreSQL rejects before parsing it (client_encoding UTF8: any invalid UTF-8 or a
 * NUL byte is 22021 or 08P01) is never answered by pgwarden: OTHER, whatever it spells.
 * Found by fuzz_sqlscan: 64 continuation bytes after DEALLOCATE were cut back to an empty
 * name, and "BEGIN -- \xff" was held as a BEGIN. */
static void test_invalid_text(void)
{
    struct px_sql_info info;
    char sql[128];
    memcpy(sql, "DEALLOCATE ", 11);
    memset(sql + 11, 0xa9, 70);
    classify_exact(sql, 81, &info);
    CU_ASSERT_EQUAL(info.kind, PX_SQL_OTHER);
    CU_ASSERT_STRING_EQUAL(info.name, "");

    static const char *const texts[] = {
        "BEGIN -- \xff",
        "BEGIN /* \xc3 */",
        "COMMIT; -- \xed\xa0\x80",
        "ROLLBACK \xc0\xaf",
        "DEALLOCATE \xff",
        "DEALLOCATE \"a\xc3\"",
        "DEALLOCATE ALL -- \xf8",
        "DISCARD ALL /* \xf4\x90\x80\x80 */",
        "; -- \xff",
    };
    for (size_t i = 0; i < NELEM(texts); i++) {
        classify_exact(texts[i], strlen(texts[i]), &info);
        if (info.kind != PX_SQL_OTHER)
            fprintf(stderr, "\n    [%s]: kind %d", texts[i], (int)info.kind);
        CU_ASSERT_EQUAL(info.kind, PX_SQL_OTHER);
        CU_ASSERT_PTR_NULL(info.tag);
    }
    classify_exact(LIT("COMMIT -- \0 x"), &info);
    CU_ASSERT_EQUAL(info.kind, PX_SQL_OTHER);
    /* Valid UTF-8 everywhere still counts. */
    classify_exact(LIT("BEGIN -- d\xc3\xa9j\xc3\xa0 \xf0\x9f\x98\x80"), &info);
    CU_ASSERT_EQUAL(info.kind, PX_SQL_BEGIN);
    classify_exact(LIT("DEALLOCATE \xc3\xa9t\xc3\xa9"), &info);
    CU_ASSERT_EQUAL(info.kind, PX_SQL_DEALLOCATE);
    CU_ASSERT_STRING_EQUAL(info.name, "\xc3\xa9t\xc3\xa9");
}

static void test_param_tracked(void)
{
    static const char *const yes[] = {
        "application_name", "client_encoding",
        "DateStyle",        "datestyle",
        "DATESTYLE",        "default_transaction_read_only",
        "IntervalStyle",    "standard_conforming_strings",
        "TimeZone",         "timezone",
        "TIMEZONE",         "Application_Name",
    };
    static const char *const no[] = {
        "search_path",
        "statement_timeout",
        "server_version",
        "is_superuser",
        "role",
        "session_authorization",
        "timezon",
        "timezone ",
        "",
        "time zone",
        "names",
        "in_hot_standby",
    };
    for (size_t i = 0; i < NELEM(yes); i++)
        CU_ASSERT_TRUE(px_sql_param_tracked(yes[i], strlen(yes[i])));
    for (size_t i = 0; i < NELEM(no); i++)
        CU_ASSERT_FALSE(px_sql_param_tracked(no[i], strlen(no[i])));
    CU_ASSERT_TRUE(px_sql_param_tracked("TimeZoneX", 8)); /* length, not NUL, ends it */
    CU_ASSERT_FALSE(px_sql_param_tracked("TimeZone", 7));
    CU_ASSERT_FALSE(px_sql_param_tracked(NULL, 0));
}

/* ---- robustness ----------------------------------------------------------------------- */

static const char *const known_features[] = {
    "LISTEN",
    "set_config()",
    "PREPARE",
    "LOAD",
    "WITH HOLD cursor",
    F_ADV,
    "temporary object",
    "temporary table",
    "temporary view",
    "temporary sequence",
    "SET ROLE",
    "SET SESSION AUTHORIZATION",
    "SET SESSION CHARACTERISTICS",
    F_SPATH,
    "SET statement_timeout",
    "SET lock_timeout",
    "SET idle_in_transaction_session_timeout",
    "SET work_mem",
    "SET default_transaction_isolation",
    F_GENERIC,
};

/* The answer is self-consistent.  Returns false (after failing assertions) if not. */
static bool check_invariants(const struct px_sql_info *info)
{
    bool ok = true;
    bool txn =
        info->kind == PX_SQL_BEGIN || info->kind == PX_SQL_COMMIT || info->kind == PX_SQL_ROLLBACK;
    ok &= info->kind >= PX_SQL_OTHER && info->kind <= PX_SQL_DISCARD_ALL;
    ok &= txn == (info->tag != NULL);
    ok &= !info->tag || !strcmp(info->tag, "BEGIN") || !strcmp(info->tag, "START TRANSACTION") ||
          !strcmp(info->tag, "COMMIT") || !strcmp(info->tag, "ROLLBACK");
    ok &= memchr(info->name, '\0', sizeof(info->name)) != NULL;
    ok &= (info->kind == PX_SQL_DEALLOCATE) == (info->name[0] != '\0');
    ok &= !info->multi || info->kind == PX_SQL_OTHER;
    ok &= !(info->kind == PX_SQL_EMPTY && info->session_feature);
    if (info->session_feature) {
        bool known = false;
        for (size_t i = 0; i < NELEM(known_features); i++)
            known |= !strcmp(info->session_feature, known_features[i]);
        ok &= known;
    }
    CU_ASSERT_TRUE(ok);
    return ok;
}

static bool same_info(const struct px_sql_info *a, const struct px_sql_info *b)
{
    return a->kind == b->kind && str_eq(a->tag, b->tag) && !strcmp(a->name, b->name) &&
           str_eq(a->session_feature, b->session_feature) && a->multi == b->multi;
}

/*
 * Classifies text[0..len) and checks an oracle-free property on top of the invariants:
 * appending ';' or a newline never changes the answer (each only ends the last statement,
 * or lands inside an unterminated literal or comment).
 */
static void check_text(const char *text, size_t len)
{
    struct px_sql_info info, more;
    char *buf = malloc(len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    classify_exact(text, len, &info);
    bool ok = check_invariants(&info);
    if (len)
        memcpy(buf, text, len);
    buf[len] = ';';
    px_sql_classify(buf, len + 1, &more);
    ok &= same_info(&info, &more);
    buf[len] = '\n';
    px_sql_classify(buf, len + 1, &more);
    ok &= same_info(&info, &more);
    if (!ok)
        fprintf(stderr, "\n    inconsistent for [%.*s] (%zu bytes)", (int)len, text, len);
    CU_ASSERT_TRUE(ok);
    free(buf);
}

static const char *const extra_texts[] = {
    "SELECT 'unterminated",          "SELECT $tag$ unterminated $ta",
    "/* unterminated /* nested */",  "SELECT E'\\",
    "SET SESSION SESSION",           "DECLARE c NO SCROLL CURSOR WITH",
    "CREATE OR REPLACE GLOBAL TEMP", "SELECT * INTO TEMPORARY",
    "DEALLOCATE PREPARE \"x\"\"",    "BEGIN ISOLATION LEVEL READ UNCOMMITTED, NOT DEFERRABLE;;",
};

static size_t prefixes_of(const struct sq_case *cases, size_t n)
{
    size_t checked = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(cases[i].sql);
        for (size_t k = 0; k <= len; k++, checked++)
            check_text(cases[i].sql, k);
    }
    return checked;
}

static void test_every_prefix(void)
{
    size_t checked = 0;
    checked += prefixes_of(begin_cases, NELEM(begin_cases));
    checked += prefixes_of(begin_rejected, NELEM(begin_rejected));
    checked += prefixes_of(end_cases, NELEM(end_cases));
    checked += prefixes_of(dealloc_cases, NELEM(dealloc_cases));
    checked += prefixes_of(discard_empty_cases, NELEM(discard_empty_cases));
    checked += prefixes_of(feature_cases, NELEM(feature_cases));
    checked += prefixes_of(near_misses, NELEM(near_misses));
    checked += prefixes_of(lexing_cases, NELEM(lexing_cases));
    for (size_t i = 0; i < NELEM(extra_texts); i++)
        for (size_t k = 0; k <= strlen(extra_texts[i]); k++, checked++)
            check_text(extra_texts[i], k);
    printf("(%zu texts) ", checked);
    CU_ASSERT(checked > 5000);
}

/* Pieces of SQL that switch the lexer's states, for random texts that go somewhere. */
/* clang-format off */
static const char *const fragments[] = {
    "BEGIN", "begin", "START", "TRANSACTION", "ISOLATION", "LEVEL", "READ", "ONLY", "NOT",
    "COMMIT", "ROLLBACK", "END", "AND", "NO", "CHAIN", "DEALLOCATE", "PREPARE", "ALL", "DISCARD",
    "SET", "RESET", "LOCAL", "SESSION", "TIME", "ZONE", "search_path", "TimeZone", "LISTEN",
    "pg_advisory_lock", "DECLARE", "CURSOR", "WITH", "HOLD", "CREATE", "TEMP", "INTO", "SELECT",
    "(", ")", ",", ".", ";", " ", "\n", "\r", "--", "/*", "*/", "*", "/", "'", "''", "E'", "e",
    "\\", "\"", "$$", "$a$", "$a", "$1", "$", "x", "1", "\xc3\xa9", "\xff",
};
/* clang-format on */

static void test_random_texts(void)
{
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    char text[256];
    for (int r = 0; r < 100000; r++) {
        size_t len = sqltext_random(&seed, r, fragments, NELEM(fragments), text, sizeof(text));
        check_text(text, len);
    }
}

static void expect_large(const char *prefix, const char *piece, size_t n, const char *suffix,
                         enum px_sql_kind kind, const char *feature, bool multi)
{
    size_t len;
    char *buf = sqltext_repeat(prefix, piece, n, suffix, &len);
    struct px_sql_info info;
    px_sql_classify(buf, len, &info);
    CU_ASSERT_EQUAL(info.kind, kind);
    CU_ASSERT_TRUE(str_eq(info.session_feature, feature));
    CU_ASSERT_EQUAL(info.multi, multi);
    free(buf);
}

/* Inputs that are slow for a quadratic scanner (about 1 MB each): all must be quick. */
static void test_large_inputs(void)
{
    clock_t start = clock();
    expect_large("SELECT ", "x, ", 350000, "pg_advisory_lock(1)", PX_SQL_OTHER, F_ADV, false);
    expect_large("", "/*", 250000, "", PX_SQL_OTHER, NULL, false);
    size_t len;
    char *open = sqltext_repeat("", "/*", 200000, "", &len);
    char *both = malloc(2 * len + 16);
    CU_ASSERT_PTR_NOT_NULL_FATAL(both);
    memcpy(both, open, len);
    for (size_t i = 0; i < len; i += 2)
        memcpy(both + len + i, "*/", 2);
    memcpy(both + 2 * len, " LISTEN x", 9);
    struct px_sql_info info;
    px_sql_classify(both, 2 * len + 9, &info);
    CU_ASSERT_TRUE(str_eq(info.session_feature, "LISTEN"));
    free(both);
    free(open);
    expect_large("SELECT $abc$", "$ab", 300000, "$abc$; LISTEN x", PX_SQL_OTHER, "LISTEN", true);
    expect_large("SELECT $abc$", "$", 1000000, "$abc$; LISTEN x", PX_SQL_OTHER, "LISTEN", true);
    expect_large("SELECT E'", "\\'", 400000, "'; LISTEN x", PX_SQL_OTHER, "LISTEN", true);
    expect_large("SELECT '", "''", 400000, "'; LISTEN x", PX_SQL_OTHER, "LISTEN", true);
    expect_large("SELECT \"", "\"\"", 400000, "\"; LISTEN x", PX_SQL_OTHER, "LISTEN", true);
    expect_large("BEGIN", " READ ONLY,", 100000, " READ WRITE", PX_SQL_BEGIN, NULL, false);
    expect_large("", ";", 1000000, "", PX_SQL_EMPTY, NULL, false);
    expect_large("--", "x", 1000000, "", PX_SQL_EMPTY, NULL, false);
    expect_large("", "SELECT 1;", 100000, "LISTEN x", PX_SQL_OTHER, "LISTEN", true);
    double secs = (double)(clock() - start) / CLOCKS_PER_SEC;
    CU_ASSERT(secs < 5.0); /* linear: tens of ms; quadratic: hours */
}

/* dml: the one statement is a query or data change (what query batching may send). */
static void test_dml(void)
{
    static const char *const yes[] = {
        "SELECT 1",
        "select abalance from pgbench_accounts where aid = 7;",
        "  /* c */ -- x\n VALUES (1)",
        "TABLE t",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "INSERT INTO t VALUES (1) RETURNING a",
        "UPDATE t SET a = 1",
        "DELETE FROM t",
        "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
        "SELECT 1;;",
        "SELECT pg_sleep(1)",
    };
    static const char *const no[] = {
        "",
        ";",
        "BEGIN",
        "COMMIT",
        "SET TimeZone = 'UTC'",
        "SHOW TimeZone",
        "COPY t FROM STDIN",
        "COPY (SELECT 1) TO STDOUT",
        "VACUUM",
        "CREATE TABLE t (a int)",
        "DO $$ BEGIN END $$",
        "CALL p()",
        "EXPLAIN SELECT 1",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "FETCH 1 FROM c",
        "LISTEN x",
        "DISCARD ALL",
        "SELECT 1; SELECT 2",
        "BEGIN; SELECT 1; COMMIT",
        "selectx 1",
        "\"select\" 1",
        "'select'",
        "(SELECT 1)",
    };
    struct px_sql_info info;
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        classify_exact(yes[i], strlen(yes[i]), &info);
        if (!info.dml || info.multi)
            fprintf(stderr, "\n  not dml: \"%s\"", yes[i]);
        CU_ASSERT_TRUE(info.dml && !info.multi);
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        classify_exact(no[i], strlen(no[i]), &info);
        if (info.dml)
            fprintf(stderr, "\n  dml: \"%s\"", no[i]);
        CU_ASSERT_FALSE(info.dml);
    }
}

/* Session state in a text of several statements: untracked (the session stage pins), but
 * one RESET among statements that change nothing else and control no transaction counts
 * as that RESET (asyncpg's pool reset query). */
static void test_multi_state(void)
{
    static const struct {
        const char *sql;
        enum px_sql_state state;
        const char *key;
    } cases[] = {
        {"SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;",
         PX_STATE_RESET_ALL, ""},
        {"SELECT 1; RESET work_mem", PX_STATE_SET, "work_mem"},
        {"RESET ROLE; SELECT 1", PX_STATE_ROLE, ""},
        {"RESET ALL; SET work_mem = '1MB'", PX_STATE_UNTRACKED, ""},
        {"SET work_mem = '1MB'; SELECT 1", PX_STATE_UNTRACKED, ""},
        {"RESET work_mem; RESET search_path", PX_STATE_UNTRACKED, ""},
        {"BEGIN; RESET ALL; COMMIT", PX_STATE_UNTRACKED, ""},
        {"SAVEPOINT a; RESET ALL; ROLLBACK TO a", PX_STATE_UNTRACKED, ""},
        {"RESET ALL; COMMIT", PX_STATE_UNTRACKED, ""},
        {"SELECT 1; SELECT 2", PX_STATE_NONE, ""},
        {"RESET ALL", PX_STATE_RESET_ALL, ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct px_sql_info info;
        classify_exact(cases[i].sql, strlen(cases[i].sql), &info);
        bool ok =
            info.state == cases[i].state && !strcmp(info.state_key, cases[i].key) &&
            (info.state == PX_STATE_NONE || info.state == PX_STATE_UNTRACKED || info.state_reset);
        if (!ok)
            fprintf(stderr, "\n    [%s]: state %d key \"%s\" reset %d", cases[i].sql,
                    (int)info.state, info.state_key, (int)info.state_reset);
        CU_ASSERT_TRUE(ok);
    }
}

/* Effects a rollback does not undo (retry: never replayed) and transaction control. */
static void test_outside_effects_and_txn_control(void)
{
    static const struct {
        const char *sql;
        bool outside;
        bool control;
    } cases[] = {
        {"SELECT dblink_exec('dbname=x', 'INSERT INTO t VALUES (1)')", true, false},
        {"select * from DBLINK('c', 'select 1') as t(a int)", true, false},
        {"SELECT public.dblink_send_query('c', 'x')", true, false},
        {"SELECT \"pg_terminate_backend\"(123)", true, false},
        {"SELECT lo_export(1, '/tmp/x'); COMMIT", true, true},
        {"COPY t TO PROGRAM 'gzip > /tmp/t.gz'", true, false},
        {"copy t from program 'cat /tmp/x'", true, false},
        {"SELECT * FROM program", false, false},   /* a table named program */
        {"SELECT dblink FROM t", false, false},    /* a column, not a call */
        {"SELECT 'dblink_exec(1)'", false, false}, /* in a string */
        {"COPY t TO STDOUT; SELECT program FROM p", false, false},
        {"UPDATE t SET v = 1; COMMIT", false, true},
        {"SELECT 1; END", false, true},
        {"SAVEPOINT a; SELECT 1", false, true},
        {"SELECT 1; SELECT 2", false, false},
        {"BEGIN", false, true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct px_sql_info info;
        px_sql_classify(cases[i].sql, strlen(cases[i].sql), &info);
        bool ok = (info.outside_effect != NULL) == cases[i].outside &&
                  info.txn_control == cases[i].control;
        if (!ok)
            fprintf(stderr, "\n    [%s]: outside %s, control %d", cases[i].sql,
                    info.outside_effect ? info.outside_effect : "-", (int)info.txn_control);
        CU_ASSERT_TRUE(ok);
    }
}

/* Which texts end the transaction block (locks.c releases transaction locks at their
 * reply), with or without a new block chained behind; savepoints and two-phase commit do
 * not end it. */
static void test_block_ends(void)
{
    static const struct {
        const char *sql;
        bool commit, rollback;
    } cases[] = {
        {"COMMIT", true, false},
        {"end work and no chain", true, false},
        {"COMMIT AND CHAIN", true, false},
        {"COMMIT TRANSACTION AND CHAIN;", true, false},
        {"ROLLBACK AND CHAIN", false, true},
        {"abort and chain", false, true},
        {"COMMIT; BEGIN", true, false},
        {"ROLLBACK; BEGIN ISOLATION LEVEL SERIALIZABLE", false, true},
        {"ROLLBACK TO SAVEPOINT a", false, false},
        {"ROLLBACK WORK TO a", false, false},
        {"COMMIT PREPARED 'x'", false, false},
        {"ROLLBACK PREPARED 'x'", false, false},
        {"COMMIT AND", false, false}, /* a syntax error: nothing ends */
        {"SELECT 'COMMIT AND CHAIN'", false, false},
        {"RELEASE SAVEPOINT a", false, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct px_sql_info info;
        px_sql_classify(cases[i].sql, strlen(cases[i].sql), &info);
        bool ok = info.ends_commit == cases[i].commit && info.ends_rollback == cases[i].rollback;
        if (!ok)
            fprintf(stderr, "\n    [%s]: ends_commit %d, ends_rollback %d", cases[i].sql,
                    (int)info.ends_commit, (int)info.ends_rollback);
        CU_ASSERT_TRUE(ok);
    }
    struct px_sql_info info; /* a chained end is not pgwarden's to answer */
    px_sql_classify("COMMIT AND CHAIN", 16, &info);
    CU_ASSERT_EQUAL(info.kind, PX_SQL_OTHER);
}

void test_sqlscan_register(void)
{
    static CU_TestInfo tests[] = {
        {"begin", test_begin},
        {"block_ends", test_block_ends},
        {"begin_rejected", test_begin_rejected},
        {"commit_rollback", test_commit_rollback},
        {"deallocate", test_deallocate},
        {"deallocate_long_names", test_deallocate_long_names},
        {"discard_and_empty", test_discard_and_empty},
        {"session_features", test_session_features},
        {"near_misses", test_near_misses},
        {"lexing", test_lexing},
        {"odd_inputs", test_odd_inputs},
        {"invalid_text", test_invalid_text},
        {"param_tracked", test_param_tracked},
        {"every_prefix", test_every_prefix},
        {"random_texts", test_random_texts},
        {"large_inputs", test_large_inputs},
        {"dml", test_dml},
        {"multi_state", test_multi_state},
        {"outside_effects_and_txn_control", test_outside_effects_and_txn_control},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("sqlscan", NULL, NULL, tests);
}
