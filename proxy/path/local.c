/*
 * local.c: statements pgwarden answers itself (see local.h).
 */
#include <stdlib.h>
#include <string.h>

#include "metrics/stats.h"
#include "path/local.h"
#include "path/path.h"
#include "path/locks.h"
#include "path/txn.h"

void px_local_complete(struct px_client *c, const char *tag, char status)
{
    struct evbuffer *out = px_path_client_out(c);
    px_wire_msg(out, 'C', tag, strlen(tag) + 1);
    px_wire_ready(out, status);
}

bool px_local_answer_unlinked(struct px_client *c, const struct px_sql_info *info, uint32_t total)
{
    if (info->multi)
        return false;
    if (c->held_failed && info->kind != PX_SQL_COMMIT && info->kind != PX_SQL_ROLLBACK)
        return false; /* the server's aborted transaction answers 25P02 */
    struct evbuffer *in = bufferevent_get_input(c->bev);
    switch (info->kind) {
    case PX_SQL_BEGIN:
        if (px_txn_in_block(c) || !px_txn_hold_begin(c, total))
            return false; /* PostgreSQL warns "already a transaction in progress" */
        px_local_complete(c, info->tag, 'T');
        px_stats_query(c->pool);
        return true;
    case PX_SQL_COMMIT:
    case PX_SQL_ROLLBACK: {
        if (!px_txn_in_block(c))
            return false; /* outside a transaction PostgreSQL warns; let it */
        /* COMMIT of a failed block answers ROLLBACK, as PostgreSQL does */
        const char *tag = c->held_failed ? "ROLLBACK" : info->tag;
        px_txn_drop_begin(c);
        evbuffer_drain(in, total);
        px_locks_txn_end(c); /* the block never reached a server: it ends here */
        px_local_complete(c, tag, 'I');
        px_stats_query(c->pool);
        px_stats_transaction(c->pool);
        return true;
    }
    case PX_SQL_DEALLOCATE:
        if (!px_stmt_map_remove(&c->stmts, info->name))
            return false; /* not ours: PostgreSQL answers (SQL-level PREPARE, or 26000) */
        evbuffer_drain(in, total);
        px_local_complete(c, "DEALLOCATE", px_txn_unlinked_status(c));
        return true;
    case PX_SQL_DEALLOCATE_ALL:
        px_stmt_map_clear(&c->stmts);
        evbuffer_drain(in, total);
        px_local_complete(c, "DEALLOCATE ALL", px_txn_unlinked_status(c));
        return true;
    default: return false;
    }
}

bool px_local_answer_linked(struct px_client *c, const struct px_sql_info *info)
{
    struct px_server *s = c->server;
    /* DEALLOCATE of a statement pgwarden renamed: the server does not know the name, so
     * answer it here when nothing is in flight to keep the replies in order. */
    if (!info->multi && info->kind == PX_SQL_DEALLOCATE && s->txn_status != 'E' &&
        s->pending_ready == 0 && !s->unsynced && s->expect_n == 0 &&
        px_stmt_map_remove(&c->stmts, info->name)) {
        px_stats_query(c->pool);
        px_local_complete(c, "DEALLOCATE", s->txn_status);
        return true;
    }
    return false;
}
