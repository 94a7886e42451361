/*
 * batch.c: query batching in transaction pooling (see batch.h).
 */
#include "base/log.h"
#include "metrics/stats.h"
#include "net/cancel.h"
#include "net/client.h"
#include "net/server.h"
#include "path/batch.h"
#include "path/path.h"
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

/* c's input is exactly one Query that may share a server with other clients' queries. */
static bool batchable(const struct px_client *c)
{
    if (px.cfg->server_query_batch <= 1 || c->pool->mode != PX_POOL_TRANSACTION)
        return false;
    return c->head_sql_len > 0 && c->head_sql_dml && !c->head_sql_multi && !c->head_sql_feature &&
           !c->held_begin && c->welcome &&
           evbuffer_get_length(bufferevent_get_input(c->bev)) == c->head_sql_len;
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
    if (!s || !batchable(c))
        return false;
    if (!s->client || s->batched_n + 1 >= px.cfg->server_query_batch ||
        evbuffer_get_length(bufferevent_get_output(s->bev)) == 0) {
        pool->batch_server = NULL; /* written, full or over: the next one opens a batch */
        return false;
    }
    if (c->state == PX_CL_IDLE && !px_list_empty(&pool->clients_waiting))
        return false; /* no overtaking the queue */
    if (!px_pool_server_fits(s, c) || !px_session_same_params(c, s->client))
        return false;
    uint8_t slot = (uint8_t)((s->batched_head + s->batched_n) % PX_QUERY_BATCH_MAX);
    s->batched[slot] = c;
    s->batched_n++;
    if (c->launching && c->launching->opener == c)
        c->launching->opener = NULL; /* it logs in and goes idle for someone else */
    c->launching = NULL;
    c->server = s;
    px_stats_pool_wait(pool, c->state == PX_CL_WAITING ? px_now_ms() - c->wait_start_ms : 0);
    px_client_set_state(c, PX_CL_BATCHED);
    px_debug("client", 'C', c->id, "query batched behind C-%llu on S-%llu (%u queued)",
             (unsigned long long)s->client->id, (unsigned long long)s->id, s->batched_n);
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
