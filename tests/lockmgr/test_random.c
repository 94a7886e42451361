#include "cunit_main.h"
#include "lmtest.h"
void lmt_register_random(void)
{
}
