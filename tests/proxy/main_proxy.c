/* test_proxy: unit tests of the proxy's protocol pieces (wire framing, streaming relay,
 * socket reading) and the logger. */
#include "cunit_main.h"

void test_wire_register(void);
void test_relay_register(void);
void test_sockread_register(void);
void test_params_register(void);
void test_log_register(void);

static void register_all(void)
{
    test_wire_register();
    test_relay_register();
    test_sockread_register();
    test_params_register();
    test_log_register();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
