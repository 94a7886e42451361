/*
 * main_config.c: test runner for proxy/config*.c (library px_config).
 *     test_config [SUITE [TEST]] | --list
 */
#include "cunit_main.h"

void test_config_register(void);
void test_config_docs_register(void);

static void register_all(void)
{
    test_config_register();
    test_config_docs_register();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
