/*
 * main_metrics.c: the test_metrics runner (tests of proxy/metrics.c, library px_metrics).
 */
#include "cunit_main.h"

void test_metrics_register(void);

static void register_all(void)
{
    test_metrics_register();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
