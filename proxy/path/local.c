/*
 * local.c: statements pgwarden answers itself (see local.h).
 */
#include <stdlib.h>
#include <string.h>

#include "metrics/stats.h"
#include "net/client.h"
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

bool px_local_fail_unlinked(struct px_client *c, const char *sqlstate, const char *message,
                            const char *detail)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer *out = px_path_client_out(c);
    uint8_t hdr[5];
    if (evbuffer_copyout(in, hdr, 5) != 5)
        return false;
    bool simple = hdr[0] == 'Q' || hdr[0] == 'F';
    px_txn_fail_block(c); /* an error inside a block fails the block, as on PostgreSQL */
    struct px_wire_errfields e = {
        .sev = PX_SEV_ERROR, .sqlstate = sqlstate, .message = message, .detail = detail};
    if (px_wire_error_fields(out, &e) < 0 ||
        (simple && px_wire_ready(out, px_txn_unlinked_status(c)) < 0)) {
        px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
        return false;
    }
    px_stats_error_sent(c->pool, sqlstate);
    c->head_sql_len = 0; /* its classification goes with it */
    /* The message (and the rest of its group) is dropped as it arrives: answering before
     * it is all in changes nothing for the client, which reads after sending. */
    c->skip_bytes = px_get_u32(hdr + 1) + 1;
    c->skip_to_sync = !simple;
    return true;
}

bool px_local_skip(struct px_client *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    for (;;) {
        if (c->skip_bytes) {
            size_t n = evbuffer_get_length(in);
            if (n > c->skip_bytes)
                n = c->skip_bytes;
            evbuffer_drain(in, n);
            c->skip_bytes -= (uint32_t)n;
            if (c->skip_bytes)
                return false; /* the rest of the message is not in yet */
        }
        if (!c->skip_to_sync)
            return true;
        uint8_t hdr[5];
        if (evbuffer_copyout(in, hdr, 5) != 5)
            return false;
        uint32_t len = px_get_u32(hdr + 1);
        if (len < 4 || len > PX_WIRE_MAX_LEN) {
            px_client_fatal(c, PX_SQLSTATE_PROTOCOL_VIOLATION, px_wire_length_error(len));
            return false;
        }
        if (hdr[0] == 'X') {
            px_client_close(c);
            return false;
        }
        if (hdr[0] == 'S') {
            if (evbuffer_get_length(in) < (size_t)len + 1)
                return false;
            evbuffer_drain(in, (size_t)len + 1);
            c->skip_to_sync = false;
            px_wire_ready(px_path_client_out(c), px_txn_unlinked_status(c));
            return true;
        }
        c->skip_bytes = len + 1;
    }
}
