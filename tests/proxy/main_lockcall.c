/* test_lockcall: unit tests of the lock-call recogniser (proxy/path/lockcall.c, lockcall_exec.c).
 */
#include "cunit_main.h"

void test_lockcall_register(void);

static void register_all(void)
{
    test_lockcall_register();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
