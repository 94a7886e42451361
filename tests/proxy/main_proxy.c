/* test_proxy: unit tests of the proxy's protocol pieces (wire framing, streaming relay,
 * socket reading), the logger and keyed hashing. */
#include "cunit_main.h"

void test_wire_register(void);
void test_relay_register(void);
void test_sockread_register(void);
void test_params_register(void);
void test_log_register(void);
void test_hash_register(void);

static void register_all(void)
{
    test_wire_register();
    test_relay_register();
    test_sockread_register();
    test_params_register();
    test_log_register();
    test_hash_register();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
