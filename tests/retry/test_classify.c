/*
 * test_classify.c: tests of retry/classify.c, one case per listed SQLSTATE.
 */
#include <stddef.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "retry/retry.h"
#include "test_retry.h"

struct expect {
    const char *sqlstate;
    unsigned cls;
};

#define R RETRY_CLASS_RETRY
#define B RETRY_CLASS_BREAKER
#define N RETRY_CLASS_NONE

static const struct expect default_table[] = {
    {"40001", R}, /* serialization_failure */
    {"40P01", R}, /* deadlock_detected */
    {"40002", N}, /* integrity_constraint_violation (class 40, not listed) */
    {"40003", N}, /* statement_completion_unknown */
    {"55P03", N}, /* lock_not_available */
    {"55000", N}, /* object_not_in_prerequisite_state */
    {"08000", B}, {"08003", B}, {"08006", B}, {"08001", B}, {"08004", B},
    {"08P01", B}, {"53000", B}, {"53100", B}, {"53200", B}, {"53300", B},
    {"53400", B}, {"57P01", B}, /* admin_shutdown */
    {"57P02", B},               /* crash_shutdown */
    {"57P03", B},               /* cannot_connect_now */
    {"57P04", N},               /* database_dropped: not in the list */
    {"57014", N},               /* query_canceled */
    {"57000", N},               /* operator_intervention */
    {"22000", N}, {"22001", N}, {"22003", N}, {"22012", N}, {"22P02", N},
    {"23000", N}, {"23502", N}, {"23503", N}, {"23505", N}, {"23514", N},
    {"23P01", N}, {"42000", N}, {"42501", N}, {"42601", N}, {"42703", N},
    {"42P01", N}, {"25P02", N}, /* in_failed_sql_transaction */
    {"28P01", N}, /* invalid_password from a client's own login is not a breaker failure */
    {"XX000", N}, /* internal_error */
    {"P0001", N}, /* raise_exception */
    {"00000", N},
};

static void test_default_table(void)
{
    for (size_t i = 0; i < sizeof(default_table) / sizeof(default_table[0]); i++) {
        unsigned got = retry_classify(NULL, default_table[i].sqlstate);
        CU_ASSERT_EQUAL(got, default_table[i].cls);
        if (got != default_table[i].cls)
            CU_FAIL(default_table[i].sqlstate);
    }
}

static void test_default_list_equals_null(void)
{
    struct retry_sqlstates list;
    retry_sqlstates_defaults(&list);
    CU_ASSERT_EQUAL(list.n, 2);
    for (size_t i = 0; i < sizeof(default_table) / sizeof(default_table[0]); i++)
        CU_ASSERT_EQUAL(retry_classify(&list, default_table[i].sqlstate), default_table[i].cls);
}

static void test_invalid_codes(void)
{
    CU_ASSERT_EQUAL(retry_classify(NULL, NULL), N);
    CU_ASSERT_EQUAL(retry_classify(NULL, ""), N);
    CU_ASSERT_EQUAL(retry_classify(NULL, "4000"), N);
    CU_ASSERT_EQUAL(retry_classify(NULL, "400011"), N);
    CU_ASSERT_EQUAL(retry_classify(NULL, "40p01"), N);
    CU_ASSERT_EQUAL(retry_classify(NULL, "08"), N);
}

static void test_configured_list(void)
{
    struct retry_sqlstates list;
    CU_ASSERT_EQUAL(retry_sqlstates_parse(&list, "40001, 55P03,23"), RETRY_OK);
    CU_ASSERT_EQUAL(list.n, 3);
    CU_ASSERT_EQUAL(retry_classify(&list, "40001"), R);
    CU_ASSERT_EQUAL(retry_classify(&list, "40P01"), N); /* dropped from the list */
    CU_ASSERT_EQUAL(retry_classify(&list, "55P03"), R);
    CU_ASSERT_EQUAL(retry_classify(&list, "23505"), R); /* class entry */
    CU_ASSERT_EQUAL(retry_classify(&list, "08006"), B);

    CU_ASSERT_EQUAL(retry_sqlstates_parse(&list, "57P01"), RETRY_OK);
    CU_ASSERT_EQUAL(retry_classify(&list, "57P01"), R | B); /* still a breaker failure */

    CU_ASSERT_EQUAL(retry_sqlstates_parse(&list, ""), RETRY_OK);
    CU_ASSERT_EQUAL(list.n, 0);
    CU_ASSERT_EQUAL(retry_classify(&list, "40001"), N);
}

static void test_parse_errors(void)
{
    struct retry_sqlstates list;
    retry_sqlstates_defaults(&list);
    CU_ASSERT_EQUAL(retry_sqlstates_parse(&list, "4000"), RETRY_EINVAL);
    CU_ASSERT_EQUAL(retry_sqlstates_parse(&list, "40001;40P01"), RETRY_EINVAL);
    CU_ASSERT_EQUAL(retry_sqlstates_parse(&list, "40p01"), RETRY_EINVAL);
    CU_ASSERT_EQUAL(retry_sqlstates_parse(&list, "4"), RETRY_EINVAL);
    CU_ASSERT_EQUAL(retry_sqlstates_parse(&list, "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17"),
                    RETRY_EINVAL);
    CU_ASSERT_EQUAL(
        retry_sqlstates_parse(&list, "01 02 03 04 05 06 07 08 09 10 11 12 13 14 15 16 17"),
        RETRY_EINVAL);
    CU_ASSERT_EQUAL(list.n, 2); /* unchanged */
    CU_ASSERT_STRING_EQUAL(list.codes[0], "40001");
    CU_ASSERT_STRING_EQUAL(list.codes[1], "40P01");
}

static void test_events(void)
{
    CU_ASSERT_EQUAL(retry_classify_event(RETRY_EVENT_CONNECT_FAILED), B);
    CU_ASSERT_EQUAL(retry_classify_event(RETRY_EVENT_LOGIN_FAILED), B);
    CU_ASSERT_EQUAL(retry_classify_event(RETRY_EVENT_CONNECT_TIMEOUT), B);
    CU_ASSERT_EQUAL(retry_classify_event(RETRY_EVENT_QUERY_TIMEOUT), B);
}

/* One named test per code the issue lists, so a regression names its code. */
#define CODE_TESTS(X)                                                                              \
    X(c40001, "40001", R)                                                                          \
    X(c40P01, "40P01", R)                                                                          \
    X(c08000, "08000", B)                                                                          \
    X(c08006, "08006", B)                                                                          \
    X(c53300, "53300", B)                                                                          \
    X(c53100, "53100", B)                                                                          \
    X(c57P01, "57P01", B)                                                                          \
    X(c57P02, "57P02", B)                                                                          \
    X(c57P03, "57P03", B)                                                                          \
    X(c22012, "22012", N)                                                                          \
    X(c23505, "23505", N)                                                                          \
    X(c42P01, "42P01", N)                                                                          \
    X(c55P03, "55P03", N)

#define DEFINE_CODE_TEST(name, code, cls)                                                          \
    static void test_##name(void)                                                                  \
    {                                                                                              \
        CU_ASSERT_EQUAL(retry_classify(NULL, code), cls);                                          \
    }
CODE_TESTS(DEFINE_CODE_TEST)

#define CODE_TEST_INFO(name, code, cls) {"code_" code, test_##name},

static const CU_TestInfo tests[] = {
    CODE_TESTS(CODE_TEST_INFO){"default_table", test_default_table},
    {"default_list_equals_null", test_default_list_equals_null},
    {"invalid_codes", test_invalid_codes},
    {"configured_list", test_configured_list},
    {"parse_errors", test_parse_errors},
    {"events", test_events},
    CU_TEST_INFO_NULL,
};

void register_classify_suite(void)
{
    cunit_add_suite("classify", NULL, NULL, tests);
}
