/*
 * cancel.c: cancel-key index and forwarding (see cancel.h).
 *
 * The index is a chained hash on (pid, key) that doubles when it gets full, so a cancel
 * costs O(1) however many clients there are (PgBouncer scans every client).  The outgoing
 * cancel connection is fire-and-forget: it connects, writes the 16-byte CancelRequest and
 * closes once written; PostgreSQL answers nothing.
 */
#include <stdlib.h>

#include "base/log.h"
#include "base/random.h"
#include "net/cancel.h"
#include "net/client.h"
#include "net/server.h"

static size_t bucket_of(uint32_t pid, uint32_t key, size_t nbuckets)
{
    uint64_t h = ((uint64_t)pid << 32 | key) * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 32) & (nbuckets - 1);
}

static struct px_client *lookup(uint32_t pid, uint32_t key)
{
    if (!px.cancel_nbuckets)
        return NULL;
    for (struct px_client *c = px.cancel_buckets[bucket_of(pid, key, px.cancel_nbuckets)]; c;
         c = c->cancel_next)
        if (c->cancel_pid == pid && c->cancel_key == key)
            return c;
    return NULL;
}

static int grow(void)
{
    size_t n = px.cancel_nbuckets ? px.cancel_nbuckets * 2 : 1024;
    struct px_client **b = calloc(n, sizeof(*b));
    if (!b)
        return -1;
    for (size_t i = 0; i < px.cancel_nbuckets; i++) {
        struct px_client *c = px.cancel_buckets[i];
        while (c) {
            struct px_client *next = c->cancel_next;
            size_t k = bucket_of(c->cancel_pid, c->cancel_key, n);
            c->cancel_next = b[k];
            b[k] = c;
            c = next;
        }
    }
    free(px.cancel_buckets);
    px.cancel_buckets = b;
    px.cancel_nbuckets = n;
    return 0;
}

int px_cancel_register(struct px_client *c)
{
    if (px.cancel_count >= px.cancel_nbuckets && grow() < 0)
        return -1;
    do {
        uint8_t r[8];
        if (px_random_bytes(r, sizeof(r)) < 0)
            return -1;
        /* Positive pid: some tools (pg_basebackup) choke on negative ones. */
        c->cancel_pid = px_get_u32(r) & 0x7fffffffu;
        c->cancel_key = px_get_u32(r + 4);
    } while (c->cancel_pid == 0 || lookup(c->cancel_pid, c->cancel_key));
    size_t k = bucket_of(c->cancel_pid, c->cancel_key, px.cancel_nbuckets);
    c->cancel_next = px.cancel_buckets[k];
    px.cancel_buckets[k] = c;
    px.cancel_count++;
    return 0;
}

void px_cancel_forget(struct px_client *c)
{
    if (!c->cancel_pid || !px.cancel_nbuckets)
        return;
    struct px_client **pp =
        &px.cancel_buckets[bucket_of(c->cancel_pid, c->cancel_key, px.cancel_nbuckets)];
    for (; *pp; pp = &(*pp)->cancel_next) {
        if (*pp == c) {
            *pp = c->cancel_next;
            px.cancel_count--;
            break;
        }
    }
    c->cancel_pid = 0;
    c->cancel_next = NULL;
}

/* One forwarded CancelRequest: its connection to PostgreSQL and the server it is for
 * (NULL once that server is gone). */
struct px_cancel_req {
    struct px_list link; /* on px.cancels */
    struct bufferevent *bev;
    struct px_server *server;
    struct px_client *waiter; /* the client's CancelRequest connection, closed at the end */
};

/* PostgreSQL closes a cancel connection once it has signalled the backend; a connection
 * that does not end within this time is given up. */
#define CANCEL_TIMEOUT_S 10

static void cancel_finish(struct px_cancel_req *req)
{
    struct px_server *s = req->server;
    if (req->waiter) {
        struct px_client *w = req->waiter;
        w->cancel_wait = NULL;
        req->waiter = NULL;
        px_client_close(w);
    }
    px_list_remove(&req->link);
    bufferevent_free(req->bev);
    free(req);
    if (s) {
        s->cancel = NULL;
        px_path_server_cancel_done(s);
    }
}

static void cancel_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF | BEV_EVENT_TIMEOUT))
        cancel_finish(arg);
}

static void cancel_read_cb(struct bufferevent *bev, void *arg)
{
    (void)arg;
    /* PostgreSQL answers nothing; anything else is ignored until the end. */
    evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
}

bool px_cancel_request(uint32_t pid, uint32_t key, struct px_client *from)
{
    struct px_client *c = lookup(pid, key);
    if (!c || c->state == PX_CL_FAILING || c->state == PX_CL_CLOSING) {
        px_debug("cancel", 0, 0, "cancel request for no client: dropped");
        return false;
    }
    px_path_cancel_request(c);
    /* forwarded now, or one already on its way to c's server: from waits for its end */
    struct px_cancel_req *req = c->server ? c->server->cancel : NULL;
    if (!req || req->waiter)
        return false;
    req->waiter = from;
    from->cancel_wait = req;
    return true;
}

void px_cancel_waiter_gone(struct px_client *from)
{
    if (from->cancel_wait)
        from->cancel_wait->waiter = NULL;
    from->cancel_wait = NULL;
}

void px_cancel_forward(struct px_client *c)
{
    struct px_server *s = c->server;
    if (s->cancel) {
        px_debug("cancel", 'C', c->id, "a cancel is already on its way to S-%llu: dropped",
                 (unsigned long long)s->id);
        return;
    }
    if (s->batched_n > 0) {
        /* Other clients' queries are queued behind c's on s (query batching): the signal
         * could land on one of them.  A lost cancel is better than a wrong one. */
        px_info("cancel", 'C', c->id,
                "cancel dropped: other clients' queries are batched behind it on S-%llu",
                (unsigned long long)s->id);
        return;
    }
    if (px_cancel_server(s))
        px_info("cancel", 'C', c->id, "forwarding cancel to server S-%llu",
                (unsigned long long)s->id);
}

bool px_cancel_server(struct px_server *s)
{
    if (s->cancel)
        return false;
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (px_server_address(s->pool, &ss, &sslen) < 0)
        return false;
    struct px_cancel_req *req = calloc(1, sizeof(*req));
    if (!req)
        return false;
    /* Deferred callbacks: a connect() that fails at once reports later, never from inside
     * bufferevent_socket_connect(). */
    req->bev = bufferevent_socket_new(px.base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!req->bev) {
        free(req);
        return false;
    }
    req->server = s;
    px_list_init(&req->link);
    px_list_append(&px.cancels, &req->link);
    bufferevent_setcb(req->bev, cancel_read_cb, NULL, cancel_event_cb, req);
    struct timeval tv = {CANCEL_TIMEOUT_S, 0};
    bufferevent_set_timeouts(req->bev, &tv, &tv);
    px_wire_cancel(bufferevent_get_output(req->bev), s->backend_pid, s->backend_key);
    if (bufferevent_socket_connect(req->bev, (struct sockaddr *)&ss, (int)sslen) < 0) {
        px_list_remove(&req->link);
        bufferevent_free(req->bev);
        free(req);
        return false;
    }
    s->cancel = req;
    bufferevent_enable(req->bev, EV_READ | EV_WRITE);
    return true;
}

void px_cancel_server_gone(struct px_server *s)
{
    if (s->cancel) {
        s->cancel->server = NULL;
        s->cancel = NULL;
    }
}

void px_cancel_destroy(void)
{
    free(px.cancel_buckets);
    px.cancel_buckets = NULL;
    px.cancel_nbuckets = px.cancel_count = 0;
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &px.cancels)
    {
        struct px_cancel_req *req = PX_CONTAINER_OF(it, struct px_cancel_req, link);
        if (req->server)
            req->server->cancel = NULL;
        if (req->waiter)
            req->waiter->cancel_wait = NULL;
        px_list_remove(&req->link);
        bufferevent_free(req->bev);
        free(req);
    }
}
