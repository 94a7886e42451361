/*
 * main_chaos.c: the test_chaos runner (tests of proxy/chaos/chaos.c, library px_chaos).
 */
#include "cunit_main.h"

void test_chaos_register(void);

static void register_all(void)
{
    test_chaos_register();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
