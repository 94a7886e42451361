/*
 * chaos_stub.c: TEMPORARY stand-in for chaos.c (the rule engine lands from branch chaos):
 * no rules, nothing injected.  Removed when chaos.c is merged.
 */
#include <stdlib.h>

#include "chaos/chaos.h"

size_t px_chaos_nrules;

bool px_chaos_decide(const struct px_chaos_ctx *ctx, struct px_chaos_action *out)
{
    (void)ctx;
    out->kind = PX_CHAOS_NONE;
    return false;
}

char *px_chaos_add_json(const char *json, size_t len, char **errmsg)
{
    (void)json, (void)len;
    *errmsg = NULL;
    return NULL;
}

int px_chaos_add_config(const char *name, const char *params, char **errmsg)
{
    (void)name, (void)params;
    *errmsg = NULL;
    return -1;
}

char *px_chaos_list_json(void)
{
    return NULL;
}

bool px_chaos_remove(uint64_t id)
{
    (void)id;
    return false;
}

size_t px_chaos_clear(void)
{
    return 0;
}

void px_chaos_shutdown(void)
{
}
