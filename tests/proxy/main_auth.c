/*
 * main_auth.c: the test_auth runner: px_auth's suites (SCRAM, auth_file and md5, random
 * bytes).
 * Usage: test_auth [SUITE [TEST]] | --list  (see tests/common/cunit_main.h)
 */
#include "cunit_main.h"

void test_scram_register(void);
void test_userlist_register(void);
void test_random_register(void);

static void register_suites(void)
{
    test_scram_register();
    test_userlist_register();
    test_random_register();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
