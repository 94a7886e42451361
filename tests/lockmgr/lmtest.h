/*
 * lmtest.h: helpers shared by the lockmgr test files: an event recorder for the owners'
 * callbacks and the suite registration functions.
 */
#ifndef PGW_TESTS_LMTEST_H
#define PGW_TESTS_LMTEST_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "lockmgr/lockmgr.h"

struct lmt_event {
    uint64_t owner_id;
    enum lockmgr_status status;
    uint64_t token;
    size_t cycle_n;
};

#define LMT_MAX_EVENTS 4096
extern struct lmt_event lmt_events[LMT_MAX_EVENTS];
extern size_t lmt_nevents;

/* Callback recording every result in lmt_events (udata unused). */
void lmt_record(struct lockmgr_owner *o, void *udata, const struct lockmgr_result *res);
void lmt_reset(void);
/* Index of owner id's event in lmt_events, or -1. */
int lmt_find(uint64_t owner_id);

#define LMT_KEY(s) (s), strlen(s)

void lmt_register_locks(void);
void lmt_register_waits(void);
void lmt_register_deadlock(void);
void lmt_register_snapshot(void);
void lmt_register_random(void);
void lmt_register_edges(void);

/* schedule.c: runs one spec file; returns 0 or -1 with a message in err. */
int lmt_schedule_run(const char *path, char *err, size_t errlen);

#endif
