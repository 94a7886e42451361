/*
 * local.c: statements pgwarden answers itself (see local.h).
 */
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "metrics/stats.h"
#include "net/client.h"
#include "path/local.h"
#include "path/path.h"
#include "path/locks.h"
#include "path/rename.h"
#include "path/txn.h"

void px_local_complete(struct px_client *c, const char *tag, char status)
{
    static struct evbuffer *reply; /* always empty between calls */
    if (!reply && !(reply = evbuffer_new())) {
        struct evbuffer *out = px_path_client_out(c);
        px_wire_msg(out, 'C', tag, strlen(tag) + 1);
        px_wire_ready(out, status);
        return;
    }
    px_wire_msg(reply, 'C', tag, strlen(tag) + 1);
    px_wire_ready(reply, status);
    px_path_client_send(c, reply);
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

/* ---- the extended protocol, while the client has no server ----------------------------- */

/* A Parse's content (query\0, int16 n, n type OIDs) that is one BEGIN, COMMIT or ROLLBACK
 * declaring no parameter types: true, classified as *info. */
static bool txn_control(const uint8_t *content, uint32_t clen, struct px_sql_info *info)
{
    const uint8_t *nul = memchr(content, '\0', clen);
    if (!nul || (size_t)(nul - content) + 3 > clen || px_get_u16(nul + 1) != 0)
        return false;
    px_sql_classify((const char *)content, (size_t)(nul - content), info);
    return !info->multi && (info->kind == PX_SQL_BEGIN || info->kind == PX_SQL_COMMIT ||
                            info->kind == PX_SQL_ROLLBACK);
}

static bool stmt_control(const struct px_stmt *st, struct px_sql_info *info)
{
    uint32_t clen;
    const uint8_t *content = px_stmt_content(st, &clen);
    return txn_control(content, clen, info);
}

/* The statement a Bind or Describe names: a named one of the client's map, or the unnamed
 * one pgwarden keeps. */
static struct px_stmt *statement(struct px_client *c, const char *name)
{
    return *name ? px_stmt_map_get(&c->stmts, name) : c->local_unnamed;
}

static void set_ref(struct px_stmt **slot, struct px_stmt *st)
{
    struct px_stmt *old = *slot;
    *slot = st ? px_stmt_ref(st) : NULL;
    px_stmt_unref(old);
}

void px_local_forget(struct px_client *c)
{
    set_ref(&c->local_unnamed, NULL);
    set_ref(&c->local_portal, NULL);
}

void px_local_note_unlinked(struct px_client *c, char type, const uint8_t *body, uint32_t len)
{
    switch (type) {
    case 'Q':
        px_local_forget(c);     /* a simple query drops both, as in PostgreSQL */
        c->unnamed_lost = true; /* and the one it left on its last server */
        return;
    case 'P':
        if (len > 0 && body[0] == '\0')
            set_ref(&c->local_unnamed, NULL);
        return;
    case 'B':
        if (len > 0 && body[0] == '\0')
            set_ref(&c->local_portal, NULL);
        return;
    case 'S':
        /* The portal of a held statement serves its own group only: nobody runs a BEGIN or
         * COMMIT portal twice (a later Execute of it goes to a server, which answers 34000
         * as PostgreSQL would once the transaction that had the portal is over). */
        set_ref(&c->local_portal, NULL);
        return;
    default: return;
    }
}

static bool on_parse(struct px_client *c, const uint8_t *body, uint32_t len)
{
    const char *name;
    const uint8_t *content;
    uint32_t clen;
    struct px_sql_info info;
    if (px_parse_split(body, len, &name, &content, &clen) < 0 || !txn_control(content, clen, &info))
        return false;
    if (info.kind == PX_SQL_BEGIN && c->held_failed)
        return false; /* 25P02 at Parse: the server's aborted transaction says it */
    struct px_stmt *st = px_stmt_intern(px_rename_registry(), content, clen);
    if (!st)
        return false; /* out of memory: left to a server */
    int rc = 0;
    if (*name && !px_rename_client_may_add(c, name))
        rc = -1; /* left to a server: the renaming stage refuses it */
    else if (*name)
        rc = px_stmt_map_put(&c->stmts, name, st); /* as rename.c records a relayed Parse */
    else
        set_ref(&c->local_unnamed, st);
    px_stmt_unref(st);
    if (rc < 0)
        return false;
    px_wire_msg(px_path_client_out(c), '1', NULL, 0);
    return true;
}

static bool on_bind(struct px_client *c, const uint8_t *body, uint32_t len)
{
    const char *portal, *name;
    const uint8_t *rest;
    uint32_t rlen;
    struct px_wire_bind bind;
    struct px_sql_info info;
    if (px_bind_split(body, len, &portal, &name, &rest, &rlen) < 0 || *portal)
        return false; /* named portals are left to a server */
    struct px_stmt *st = statement(c, name);
    /* A Bind with parameter values gets PostgreSQL's 08P01 from a server. */
    if (!st || !stmt_control(st, &info) || px_wire_bind_parse(rest, rlen, &bind) ||
        bind.nparams != 0)
        return false;
    if (info.kind == PX_SQL_BEGIN && c->held_failed)
        return false; /* 25P02 at Bind, as above */
    set_ref(&c->local_portal, st);
    px_wire_msg(px_path_client_out(c), '2', NULL, 0);
    return true;
}

static bool on_describe(struct px_client *c, const uint8_t *body, uint32_t len)
{
    char kind;
    const char *name;
    struct px_sql_info info;
    if (px_target_split(body, len, &kind, &name) < 0)
        return false;
    struct evbuffer *out = px_path_client_out(c);
    if (kind == 'P') {
        if (*name || !c->local_portal)
            return false;
    } else {
        struct px_stmt *st = statement(c, name);
        if (!st || !stmt_control(st, &info))
            return false;
        px_wire_param_description(out, NULL, 0);
    }
    px_wire_msg(out, 'n', NULL, 0); /* NoData: transaction control returns no rows */
    return true;
}

static bool on_execute(struct px_client *c, const uint8_t *body, uint32_t len)
{
    struct px_sql_info info;
    if (!memchr(body, '\0', len) || body[0] != '\0' || !c->local_portal ||
        !stmt_control(c->local_portal, &info))
        return false;
    struct evbuffer *out = px_path_client_out(c);
    if (info.kind == PX_SQL_BEGIN) {
        if (c->held_failed)
            return false; /* cannot happen: its Bind was left to a server */
        if (px_txn_in_block(c)) {
            px_wire_error(out, PX_SEV_WARNING, "25001",
                          "there is already a transaction in progress", NULL);
        } else {
            uint32_t clen;
            const char *sql = (const char *)px_stmt_content(c->local_portal, &clen);
            if (!px_txn_hold_begin_sql(c, sql, strlen(sql)))
                return false; /* out of memory: left to a server */
        }
        px_wire_command_complete(out, info.tag);
    } else if (px_txn_in_block(c)) {
        /* COMMIT of a failed block answers ROLLBACK, as PostgreSQL does */
        const char *tag = c->held_failed ? "ROLLBACK" : info.tag;
        px_txn_drop_begin(c);
        px_locks_txn_end(c); /* the block never reached a server: it ends here */
        px_wire_command_complete(out, tag);
        px_stats_transaction(c->pool);
    } else {
        px_wire_error(out, PX_SEV_WARNING, "25P01", "there is no transaction in progress", NULL);
        px_wire_command_complete(out, info.tag);
    }
    px_stats_query(c->pool);
    return true;
}

/* A client without a server has no statement or portal on any server: its named
 * statements are entries of its map (pgwarden's to drop, as rename.c does), its portals
 * ended with its last transaction or are pgwarden's, and PostgreSQL answers CloseComplete
 * for a name that does not exist.  (Lock-call statements and portals are locks.h's, which
 * saw the message first.) */
static bool on_close(struct px_client *c, const uint8_t *body, uint32_t len)
{
    char kind;
    const char *name;
    if (px_target_split(body, len, &kind, &name) < 0)
        return false;
    if (kind == 'S') {
        if (*name)
            px_stmt_map_remove(&c->stmts, name);
        else
            set_ref(&c->local_unnamed, NULL);
    } else if (!*name) {
        set_ref(&c->local_portal, NULL);
    }
    px_wire_msg(px_path_client_out(c), '3', NULL, 0);
    return true;
}

bool px_local_answer_unlinked_ext(struct px_client *c, char type, const uint8_t *body, uint32_t len)
{
    bool answered;
    switch (type) {
    case 'P': answered = on_parse(c, body, len); break;
    case 'B': answered = on_bind(c, body, len); break;
    case 'D': answered = on_describe(c, body, len); break;
    case 'E': answered = on_execute(c, body, len); break;
    case 'C': answered = on_close(c, body, len); break;
    default: answered = false; break;
    }
    if (answered)
        px_debug("local", 'C', c->id, "'%c' answered", type);
    return answered;
}
