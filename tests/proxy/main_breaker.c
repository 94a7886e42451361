/* test_breaker: unit tests of the proxy's circuit breakers (proxy/pool/breaker.c). */
#include "cunit_main.h"

void test_breaker_register(void);

static void register_all(void)
{
    test_breaker_register();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
