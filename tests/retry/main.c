/*
 * main.c: test_retry, the unit tests of the retry library (virtual clock, seeded
 * generators).  Usage: test_retry [SUITE [TEST]] | --list.
 */
#include "cunit_main.h"
#include "test_retry.h"

static void register_all(void)
{
    register_config_suite();
    register_window_suite();
    register_classify_suite();
    register_backoff_suite();
    register_budget_suite();
    register_breaker_suite();
    register_replay_suite();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
