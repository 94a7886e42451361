/*
 * batch.c: query batching in transaction pooling (see batch.h).
 */
#include <string.h>

#include "base/log.h"
#include "chaos/chaos.h"
#include "metrics/stats.h"
#include "net/cancel.h"
#include "net/client.h"
#include "net/server.h"
#include "path/batch.h"
#include "path/local.h"
#include "path/path.h"
#include "path/rename.h"
#include "path/retry.h"
#include "path/session.h"
#include "path/txn.h"
#include "pool/pool.h"

static struct evbuffer *sink;

struct evbuffer *px_batch_sink(void)
{
    if (!sink)
        sink = evbuffer_new();
    return sink;
}

void px_batch_shutdown(void)
{
    if (sink)
        evbuffer_free(sink);
    sink = NULL;
}

/* A statement's text (query\0, int16 n, n type OIDs: a Parse's content) that may be batched:
 * one query or data change, with no session-only feature (sqlscan.h), as for a Query. */
static bool text_batchable(const uint8_t *content, uint32_t clen)
{
    struct px_sql_info info;
    size_t qlen = strnlen((const char *)content, clen);
    if (qlen == clen)
        return false; /* malformed: PostgreSQL says so, alone */
    px_sql_classify((const char *)content, qlen, &info);
    return info.dml && !info.multi && !info.session_feature;
}

/* px_stmt_note values: a named statement's text is classified once. */
enum { NOTE_UNKNOWN = 0, NOTE_BATCHABLE, NOTE_NOT_BATCHABLE };

static bool stmt_batchable(struct px_stmt *st)
{
    uint8_t note = px_stmt_note(st);
    if (note == NOTE_UNKNOWN) {
        uint32_t clen;
        const uint8_t *content = px_stmt_content(st, &clen);
        note = text_batchable(content, clen) ? NOTE_BATCHABLE : NOTE_NOT_BATCHABLE;
        px_stmt_set_note(st, note);
    }
    return note == NOTE_BATCHABLE;
}

/* An extended-protocol group is looked at when its messages take at most this many bytes
 * (they are made contiguous to be read); a bigger one is relayed as usual. */
#define GROUP_MAX (16 * 1024)

/* Where a group is in its fixed order (ext_batchable). */
enum group_step { G_START, G_PARSE, G_BIND, G_DESCRIBE, G_EXECUTE, G_SYNC };

/* A Parse, Bind, Describe or Execute of the group (body of len bytes) in its place; *stmt:
 * the statement the group runs (set by Parse, checked by Bind and Describe). */
static bool ext_message_ok(struct px_client *c, char type, const uint8_t *body, uint32_t len,
                           enum group_step step, const char **stmt)
{
    const char *name, *portal;
    const uint8_t *rest;
    uint32_t rlen;
    char kind;
    switch (type) {
    case 'P': /* optional, first */
        if (step != G_START || px_parse_split(body, len, &name, &rest, &rlen) < 0 ||
            (*name && !px_rename_client_may_add(c, name)))
            return false; /* (a FATAL of the renaming stage must not hit a batch) */
        *stmt = name;
        return text_batchable(rest, rlen);
    case 'B': /* of the unnamed portal; of the group's statement, or a named one prepared */
        if (step > G_PARSE || px_bind_split(body, len, &portal, &name, &rest, &rlen) < 0 || *portal)
            return false;
        if (step == G_PARSE)
            return strcmp(name, *stmt) == 0;
        *stmt = name; /* the unnamed statement of an earlier group: not batched */
        return *name && px_stmt_map_get(&c->stmts, name) &&
               stmt_batchable(px_stmt_map_get(&c->stmts, name));
    case 'D': /* optional: the portal, or the group's statement */
        if (step != G_BIND || px_target_split(body, len, &kind, &name) < 0)
            return false;
        return kind == 'P' ? !*name : strcmp(name, *stmt) == 0;
    case 'E': /* the unnamed portal, all rows */
        return (step == G_BIND || step == G_DESCRIBE) && len == 5 && body[0] == '\0' &&
               px_get_u32(body + 1) == 0;
    default: return false;
    }
}

/* c's input (avail bytes) is exactly one extended-protocol group that runs one statement
 * that may be batched: [Parse] Bind [Describe] Execute Sync, in that order, nothing else. */
static bool ext_batchable(struct px_client *c, struct evbuffer *in, size_t avail)
{
    if (avail > GROUP_MAX || c->locks)
        return false; /* a client with lock-call statements or portals: locks.h reads all */
    const uint8_t *p = evbuffer_pullup(in, (ssize_t)avail);
    if (!p)
        return false;
    enum group_step step = G_START;
    const char *stmt = "";
    size_t off = 0;
    while (off < avail) {
        if (avail - off < 5 || step == G_SYNC)
            return false;
        char type = (char)p[off];
        uint32_t len = px_get_u32(p + off + 1);
        if (len < 4 || len - 4 > avail - off - 5)
            return false;
        const uint8_t *body = p + off + 5;
        off += 1 + (size_t)len;
        if (type == 'S') {
            if (step != G_EXECUTE || len != 4)
                return false;
            step = G_SYNC;
            continue;
        }
        if (!ext_message_ok(c, type, body, len - 4, step, &stmt))
            return false;
        step = type == 'P' ? G_PARSE : type == 'B' ? G_BIND : type == 'D' ? G_DESCRIBE : G_EXECUTE;
    }
    return step == G_SYNC;
}

/* c's input is exactly one request that may share a server with other clients' requests:
 * a Query, or an extended-protocol group (batch.h). */
static bool batchable(struct px_client *c)
{
    if (px.cfg->server_query_batch <= 1 || c->pool->mode != PX_POOL_TRANSACTION || c->held_begin ||
        !c->welcome || !c->bev || px_chaos_active())
        return false; /* fault injection: a rule may hold or answer a message (fault.h) */
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t avail = evbuffer_get_length(in);
    uint8_t type;
    if (evbuffer_copyout(in, &type, 1) != 1)
        return false;
    if (type == 'Q')
        return c->head_sql_len > 0 && c->head_sql_dml && !c->head_sql_multi &&
               !c->head_sql_feature && avail == c->head_sql_len;
    return (type == 'P' || type == 'B') && ext_batchable(c, in, avail);
}

/* Moves c's one Query into s's output buffer (not written: the bufferevent writes it with
 * whatever joins it this loop turn). */
static bool queue_query(struct px_client *c, struct px_server *s)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t moved = 0;
    enum px_relay_result r = px_path_relay_into(c, bufferevent_get_output(s->bev), &moved);
    px_stats_bytes(c->pool, moved, 0);
    if (r != PX_RELAY_OK || evbuffer_get_length(in) != 0 || c->c2s.remaining) {
        /* Not the one Query batchable() saw: cannot happen; never route by a wrong order. */
        px_server_close(s, "batched query was not relayed whole");
        return false;
    }
    return true;
}

bool px_batch_open(struct px_client *c)
{
    struct px_server *s = c->server;
    if (!batchable(c) || s->hidden_queries > 0)
        return false; /* a prelude runs first: the query waits for it (txn.h) */
    if (queue_query(c, s))
        c->pool->batch_server = s;
    return true; /* on failure c got its error with the server's close */
}

bool px_batch_join(struct px_client *c)
{
    struct px_pool *pool = c->pool;
    struct px_server *s = pool->batch_server;
    if (!s)
        return false;
    if (!s->client || s->batched_n + 1 >= px.cfg->server_query_batch ||
        evbuffer_get_length(bufferevent_get_output(s->bev)) == 0) {
        pool->batch_server = NULL; /* written, full or over: the next one opens a batch */
        return false;
    }
    if (c->state == PX_CL_IDLE && !px_list_empty(&pool->clients_waiting))
        return false; /* no overtaking the queue */
    /* No prelude is sent for a batched client: the server must carry its session already. */
    if (!px_pool_server_fits(s, c) || !px_session_same_params(c, s->client) ||
        !px_session_state_fits(c, s) || !batchable(c))
        return false;
    uint8_t slot = (uint8_t)((s->batched_head + s->batched_n) % PX_QUERY_BATCH_MAX);
    s->batched[slot] = c;
    s->batched_n++;
    if (c->launching && c->launching->opener == c)
        c->launching->opener = NULL; /* it logs in and goes idle for someone else */
    c->launching = NULL;
    c->server = s;
    /* As px_txn_linked: the server's unnamed statement is not the client's (a group's
     * own Parse makes it so), and what pgwarden kept of its unnamed statement goes. */
    c->unnamed_parsed = false;
    px_local_forget(c);
    px_stats_pool_wait(pool, c->state == PX_CL_WAITING ? px_now_ms() - c->wait_start_ms : 0);
    px_client_set_state(c, PX_CL_BATCHED);
    uint8_t type = 0;
    evbuffer_copyout(bufferevent_get_input(c->bev), &type, 1);
    px_debug("client", 'C', c->id, "query batched behind C-%llu on S-%llu (%u queued%s)",
             (unsigned long long)s->client->id, (unsigned long long)s->id, s->batched_n,
             type == 'Q' ? "" : ", extended protocol");
    queue_query(c, s);
    return true;
}

void px_batch_take_waiting(struct px_server *s)
{
    struct px_pool *pool = s->pool;
    struct px_list *first;
    while (pool->batch_server == s && (first = px_list_first(&pool->clients_waiting)) != NULL &&
           px_batch_join(PX_CONTAINER_OF(first, struct px_client, link)))
        ;
}

bool px_batch_next(struct px_server *s)
{
    struct px_client *done = s->client;
    if (s->txn_status != 'I' || s->hidden_queries > 0 || s->s2c.remaining) {
        px_server_close(s, "a batched query did not end at ReadyForQuery 'I'");
        return false;
    }
    if (s->batched_n == 0) { /* the client that left was the last: s is free */
        s->orphan_client = false;
        px_batch_close(s);
        px_server_release(s, false);
        return false;
    }
    struct px_client *next = s->batched[s->batched_head];
    s->batched_head = (uint8_t)((s->batched_head + 1) % PX_QUERY_BATCH_MAX);
    s->batched_n--;
    s->client = next;
    s->client_gen++;
    s->orphan_client = next == NULL;
    /* Reading may have stopped for the previous client's backpressure; that is its own
     * buffer's business now. */
    px_reader_enable(&s->rd, true);
    if (next) {
        px_client_set_state(next, PX_CL_ACTIVE);
        if (next->cancel_pending) {
            next->cancel_pending = false;
            px_cancel_forward(next);
        }
    }
    if (done) {
        done->server = NULL;
        px_txn_detached(done); /* may take a server, even s again */
        /* Its reply is all in: a retryable error held back is decided now (retry.h), as
         * the relay does after an unbatched reply (else the client would wait for ever). */
        if (done->retry)
            px_retry_after_relay(done);
    }
    if (s->state != PX_SV_ACTIVE)
        return false;
    if (next && next->server == s && s->client == next && s->batched_n == 0) {
        /* The last batched client: its next messages may go now. */
        if (next->read_paused) {
            next->read_paused = false;
            px_reader_enable(&next->rd, true);
        }
        px_path_relay_client(next);
    }
    return s->state == PX_SV_ACTIVE;
}

bool px_batch_leave(struct px_client *c)
{
    struct px_server *s = c->server;
    if (c->state == PX_CL_BATCHED) {
        for (uint8_t i = 0; i < s->batched_n; i++) {
            uint8_t slot = (uint8_t)((s->batched_head + i) % PX_QUERY_BATCH_MAX);
            if (s->batched[slot] == c)
                s->batched[slot] = NULL;
        }
        c->server = NULL;
        return true;
    }
    if (s->client == c && s->batched_n > 0) {
        s->client = NULL;
        s->orphan_client = true;
        c->server = NULL;
        return true;
    }
    return false;
}

void px_batch_fail(struct px_server *s)
{
    while (s->batched_n > 0) {
        struct px_client *c = s->batched[s->batched_head];
        s->batched_head = (uint8_t)((s->batched_head + 1) % PX_QUERY_BATCH_MAX);
        s->batched_n--;
        if (c) {
            c->server = NULL;
            px_client_fatal(c, PX_SQLSTATE_CONNECTION_FAILURE,
                            "server closed the connection unexpectedly");
        }
    }
    s->orphan_client = false;
    px_batch_close(s);
}
