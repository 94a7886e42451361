/* test_px_params.c: tests of proxy/params.c (ParameterStatus sets and their tracked slots). */
#include <stdio.h>
#include <string.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "proto/params.h"

void test_params_register(void);

static void test_set_get_replace(void)
{
    struct px_params p = {0};
    CU_ASSERT_PTR_NULL(px_params_get(&p, "TimeZone"));
    CU_ASSERT_EQUAL(px_params_set(&p, "TimeZone", "UTC"), 0);
    CU_ASSERT_EQUAL(px_params_set(&p, "server_version", "15.18"), 0);
    CU_ASSERT_STRING_EQUAL(px_params_get(&p, "TimeZone"), "UTC");
    CU_ASSERT_EQUAL(px_params_set(&p, "TimeZone", "Europe/Paris"), 0);
    CU_ASSERT_STRING_EQUAL(px_params_get(&p, "TimeZone"), "Europe/Paris");
    CU_ASSERT_EQUAL(p.n, 2);                           /* replaced, not added */
    CU_ASSERT_PTR_NULL(px_params_get(&p, "timezone")); /* names as reported: exact */
    for (int i = 0; i < 40; i++) {                     /* grows past the first allocation */
        char name[16];
        snprintf(name, sizeof(name), "p%d", i);
        CU_ASSERT_EQUAL(px_params_set(&p, name, name), 0);
    }
    CU_ASSERT_EQUAL(p.n, 42);
    CU_ASSERT_STRING_EQUAL(px_params_get(&p, "p39"), "p39");
    CU_ASSERT_STRING_EQUAL(px_params_get(&p, "TimeZone"), "Europe/Paris");
    px_params_clear(&p);
    CU_ASSERT_EQUAL(p.n, 0);
    CU_ASSERT_PTR_NULL(px_params_get(&p, "TimeZone"));
}

static void test_tracked_slots_follow_values(void)
{
    struct px_params p = {0};
    int tz = px_tracked_index("TimeZone", 8);
    int enc = px_tracked_index("client_encoding", 15);
    CU_ASSERT_EQUAL(enc, 0); /* client_encoding is re-synced first */
    CU_ASSERT_TRUE(tz > 0);
    CU_ASSERT_EQUAL(px_tracked_index("timezone", 8), tz); /* GUC names: any case */
    CU_ASSERT_EQUAL(px_tracked_index("TIMEZONE", 8), tz);
    CU_ASSERT_EQUAL(px_tracked_index("TimeZoneX", 8), tz); /* the length ends the name */
    CU_ASSERT_EQUAL(px_tracked_index("TimeZone", 7), -1);
    CU_ASSERT_EQUAL(px_tracked_index("search_path", 11), -1);
    CU_ASSERT_EQUAL(px_tracked_index(NULL, 0), -1);
    for (int i = 0; i < PX_TRACKED_PARAMS; i++)
        CU_ASSERT_EQUAL(px_tracked_index(px_tracked_params[i], strlen(px_tracked_params[i])), i);

    CU_ASSERT_EQUAL(px_params_set(&p, "server_version", "15.18"), 0);
    for (int i = 0; i < PX_TRACKED_PARAMS; i++)
        CU_ASSERT_PTR_NULL(p.tracked[i]);
    CU_ASSERT_EQUAL(px_params_set(&p, "TimeZone", "UTC"), 0);
    CU_ASSERT_STRING_EQUAL(p.tracked[tz], "UTC");
    CU_ASSERT_EQUAL(px_params_set(&p, "TimeZone", "Asia/Tokyo"), 0);
    CU_ASSERT_STRING_EQUAL(p.tracked[tz], "Asia/Tokyo");
    CU_ASSERT_PTR_EQUAL(p.tracked[tz], px_params_get(&p, "TimeZone"));
    CU_ASSERT_EQUAL(px_params_set(&p, "client_encoding", "UTF8"), 0);
    CU_ASSERT_STRING_EQUAL(p.tracked[enc], "UTF8");
    px_params_clear(&p);
    for (int i = 0; i < PX_TRACKED_PARAMS; i++)
        CU_ASSERT_PTR_NULL(p.tracked[i]);
}

static void test_equal(void)
{
    struct px_params a = {0}, b = {0};
    CU_ASSERT_TRUE(px_params_equal(&a, &b));
    px_params_set(&a, "TimeZone", "UTC");
    px_params_set(&a, "DateStyle", "ISO, MDY");
    CU_ASSERT_FALSE(px_params_equal(&a, &b));
    px_params_set(&b, "DateStyle", "ISO, MDY"); /* other order */
    px_params_set(&b, "TimeZone", "UTC");
    CU_ASSERT_TRUE(px_params_equal(&a, &b));
    CU_ASSERT_TRUE(px_params_equal(&b, &a));
    px_params_set(&b, "TimeZone", "GMT");
    CU_ASSERT_FALSE(px_params_equal(&a, &b));
    px_params_set(&b, "TimeZone", "UTC");
    px_params_set(&b, "extra", "1");
    CU_ASSERT_FALSE(px_params_equal(&a, &b));
    CU_ASSERT_FALSE(px_params_equal(&b, &a));
    px_params_clear(&a);
    px_params_clear(&b);
}

static void test_parse_status(void)
{
    const char *name, *value;
    static const uint8_t ok[] = "TimeZone\0UTC"; /* sizeof includes the final NUL */
    CU_ASSERT_EQUAL(px_params_parse_status(ok, sizeof(ok), &name, &value), 0);
    CU_ASSERT_STRING_EQUAL(name, "TimeZone");
    CU_ASSERT_STRING_EQUAL(value, "UTC");
    static const uint8_t empty_value[] = "application_name\0";
    CU_ASSERT_EQUAL(px_params_parse_status(empty_value, sizeof(empty_value), &name, &value), 0);
    CU_ASSERT_STRING_EQUAL(value, "");
    static const uint8_t one[] = "TimeZone"; /* no value */
    CU_ASSERT_EQUAL(px_params_parse_status(one, sizeof(one), &name, &value), -1);
    static const uint8_t three[] = "a\0b\0c";
    CU_ASSERT_EQUAL(px_params_parse_status(three, sizeof(three), &name, &value), -1);
    static const uint8_t unterminated[] = {'a', 0, 'b'};
    CU_ASSERT_EQUAL(px_params_parse_status(unterminated, 3, &name, &value), -1);
    CU_ASSERT_EQUAL(px_params_parse_status(ok, 0, &name, &value), -1);
}

static const CU_TestInfo params_tests[] = {
    {"set_get_replace", test_set_get_replace},
    {"tracked_slots_follow_values", test_tracked_slots_follow_values},
    {"equal", test_equal},
    {"parse_status", test_parse_status},
    CU_TEST_INFO_NULL,
};

void test_params_register(void)
{
    cunit_add_suite("params", NULL, NULL, params_tests);
}
