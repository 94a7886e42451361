/* test_waitgraph: unit tests of the wait-for graph across instances
 * (proxy/lockspace/waitgraph.c). */
#include "cunit_main.h"

void test_waitgraph_register(void);

static void register_all(void)
{
    test_waitgraph_register();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
