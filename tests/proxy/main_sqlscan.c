/* test_sqlscan: unit tests of proxy/sqlscan.c, the simple-query classifier. */
#include "cunit_main.h"

void test_sqlscan_register(void);

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, test_sqlscan_register);
}
