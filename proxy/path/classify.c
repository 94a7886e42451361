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
    c->head_sql_drops = info->drops_prepared;
}

void px_classify_relayed(struct px_client *c, const uint8_t *body, uint32_t len,
                         struct px_sql_info *info)
{
    if (len > PX_CLASSIFY_MAX) {
        *info = (struct px_sql_info){.kind = PX_SQL_OTHER};
    } else if (c->head_sql_len == len + 5 && c->head_sql_kind != PX_SQL_DEALLOCATE) {
        /* classified while idle (the only Query before this one) */
        *info = (struct px_sql_info){.kind = (enum px_sql_kind)c->head_sql_kind,
                                     .multi = c->head_sql_multi,
                                     .drops_prepared = c->head_sql_drops,
                                     .session_feature = c->head_sql_feature};
    } else {
        px_sql_classify((const char *)body, text_len(body, len), info);
    }
    c->head_sql_len = 0;
}
