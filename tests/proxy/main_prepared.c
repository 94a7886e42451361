/* test_prepared: unit tests of the prepared-statement tracker (proxy/prepared.c). */
#include "cunit_main.h"

void test_prepared_register(void);

static void register_all(void)
{
    test_prepared_register();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
