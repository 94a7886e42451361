/* test_sqllex: unit tests of PostgreSQL 15's lexical rules (proxy/path/sqllex.c). */
#include "cunit_main.h"

void test_sqllex_register(void);

static void register_all(void)
{
    test_sqllex_register();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
