/* test_sqlscan: unit tests of the simple-query classifier (proxy/sqlscan.c). */
#include "cunit_main.h"

void test_sqlscan_register(void);

static void register_all(void)
{
    test_sqlscan_register();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
