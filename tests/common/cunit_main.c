/*
 * cunit_main.c: shared CUnit runner (see cunit_main.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CUnit/Basic.h>

#include "cunit_main.h"

void cunit_add_suite(const char *name, CU_InitializeFunc init, CU_CleanupFunc cleanup,
                     const CU_TestInfo *tests)
{
    CU_pSuite suite = CU_add_suite(name, init, cleanup);
    if (!suite) {
        fprintf(stderr, "cannot add suite %s: %s\n", name, CU_get_error_msg());
        exit(2);
    }
    for (const CU_TestInfo *t = tests; t->pName; t++) {
        if (!CU_add_test(suite, t->pName, t->pTestFunc)) {
            fprintf(stderr, "cannot add test %s: %s\n", t->pName, CU_get_error_msg());
            exit(2);
        }
    }
}

static void list_tests(void)
{
    for (CU_pSuite s = CU_get_registry()->pSuite; s; s = s->pNext) {
        printf("%s\n", s->pName);
        for (CU_pTest t = s->pTest; t; t = t->pNext)
            printf("  %s\n", t->pName);
    }
}

int cunit_main(int argc, char **argv, void (*register_fn)(void))
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    register_fn();
    CU_basic_set_mode(CU_BRM_VERBOSE);

    int rc;
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        list_tests();
        CU_cleanup_registry();
        return 0;
    } else if (argc > 1) {
        CU_pSuite suite = CU_get_suite(argv[1]);
        if (!suite) {
            fprintf(stderr, "no suite named %s (try --list)\n", argv[1]);
            CU_cleanup_registry();
            return 2;
        }
        if (argc > 2) {
            CU_pTest test = CU_get_test(suite, argv[2]);
            if (!test) {
                fprintf(stderr, "no test %s in suite %s\n", argv[2], argv[1]);
                CU_cleanup_registry();
                return 2;
            }
            rc = CU_basic_run_test(suite, test);
        } else {
            rc = CU_basic_run_suite(suite);
        }
    } else {
        rc = CU_basic_run_tests();
    }
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_suites_failed() +
                      CU_get_number_of_tests_failed();
    unsigned ran = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    if (rc != CUE_SUCCESS)
        return 2;
    if (ran == 0) {
        fprintf(stderr, "no test ran\n");
        return 1;
    }
    return failed ? 1 : 0;
}
