/*
 * test_retry.h: the suites of test_retry, one per retry/ source file, and shared helpers.
 */
#ifndef PGW_TEST_RETRY_H
#define PGW_TEST_RETRY_H

#include <stdint.h>

#define MS  1000ULL    /* microseconds per millisecond: tests run on a virtual clock */
#define SEC 1000000ULL /* microseconds per second */

void register_classify_suite(void);
void register_backoff_suite(void);
void register_budget_suite(void);
void register_breaker_suite(void);
void register_replay_suite(void);
void register_config_suite(void);
void register_window_suite(void);

#endif
