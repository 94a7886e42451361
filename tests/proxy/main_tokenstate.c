/* test_tokenstate: unit tests of the persisted fencing-token epoch (proxy/path/tokenstate.c). */
#include "cunit_main.h"

void test_tokenstate_register(void);

static void register_all(void)
{
    test_tokenstate_register();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
