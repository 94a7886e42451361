/*
 * cunit_main.h: the one CUnit runner shared by every test program.
 *
 * Each test program (tests/<module>/main.c) registers its suites and calls
 * cunit_main().  Usage of any test program:
 *     test_<module> [SUITE [TEST]]      run everything, one suite, or one test
 *     test_<module> --list              list suites and tests
 * Exit status is 0 only when every selected test ran and passed.
 */
#ifndef PGW_TESTS_CUNIT_MAIN_H
#define PGW_TESTS_CUNIT_MAIN_H

#include <CUnit/CUnit.h>

/* Adds one suite with its tests; tests is terminated by CU_TEST_INFO_NULL. */
void cunit_add_suite(const char *name, CU_InitializeFunc init, CU_CleanupFunc cleanup,
                     const CU_TestInfo *tests);

/* register_fn adds the program's suites with cunit_add_suite(). */
int cunit_main(int argc, char **argv, void (*register_fn)(void));

#endif
