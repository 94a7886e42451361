/*
 * classify.c: one classification per simple query (see classify.h).
 */
#include "path/classify.h"

static size_t text_len(const uint8_t *body, uint32_t len)
{
    return len > 0 && body[len - 1] == '\0' ? len - 1 : len;
}

void px_classify_head(struct px_client *c, const uint8_t *body, uint32_t len,
                      struct px_sql_info *info)
{
    px_sql_classify((const char *)body, text_len(body, len), info);
    c->head_sql_len = len + 5; /* the whole message */
    c->head_sql_kind = (uint8_t)info->kind;
    c->head_sql_multi = info->multi;
    c->head_sql_dml = info->dml;
    c->head_sql_feature = info->session_feature;
    /* Only what an ordinary query needs is kept: a text that touches session state or
     * prepared statements is scanned again when relayed (rare, and the cache stays small). */
    c->head_sql_plain =
        !info->session_feature && !info->drops_prepared && info->state == PX_STATE_NONE &&
        !info->pins && !info->unpins && !info->rollback_to && info->kind != PX_SQL_DEALLOCATE &&
        !info->outside_effect && !info->proc && !info->ends_commit && !info->ends_rollback;
}

void px_classify_relayed(struct px_client *c, const uint8_t *body, uint32_t len,
                         struct px_sql_info *info)
{
    if (len > PX_CLASSIFY_MAX) {
        *info = (struct px_sql_info){.kind = PX_SQL_OTHER};
    } else if (c->head_sql_len == len + 5 && c->head_sql_plain) {
        /* classified while idle (the only Query before this one) */
        *info = (struct px_sql_info){.kind = (enum px_sql_kind)c->head_sql_kind,
                                     .multi = c->head_sql_multi,
                                     .dml = c->head_sql_dml};
    } else {
        px_sql_classify((const char *)body, text_len(body, len), info);
    }
    c->head_sql_len = 0;
}
