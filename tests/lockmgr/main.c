/*
 * main.c: the lockmgr test runner; one suite per lockmgr/ concern.
 *     test_lockmgr [SUITE [TEST]] | --list
 * LOCKMGR_RANDOM_OPS sets the operation count of the randomized test (default 10^6).
 */
#include <stdio.h>

#include "cunit_main.h"
#include "lmtest.h"

struct lmt_event lmt_events[LMT_MAX_EVENTS];
size_t lmt_nevents;

void lmt_record(struct lockmgr_owner *o, void *udata, const struct lockmgr_result *res)
{
    if (lmt_nevents >= LMT_MAX_EVENTS)
        return;
    struct lmt_event *e = &lmt_events[lmt_nevents++];
    e->owner_id = lockmgr_owner_id(o);
    e->status = res->status;
    e->token = res->token;
    e->cycle_n = res->cycle ? res->cycle->n : 0;
}

void lmt_reset(void)
{
    lmt_nevents = 0;
}

int lmt_find(uint64_t owner_id)
{
    for (size_t i = 0; i < lmt_nevents; i++)
        if (lmt_events[i].owner_id == owner_id)
            return (int)i;
    return -1;
}

static void register_all(void)
{
    lmt_register_locks();
    lmt_register_waits();
    lmt_register_deadlock();
    lmt_register_snapshot();
    lmt_register_random();
    lmt_register_edges();
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_all);
}
