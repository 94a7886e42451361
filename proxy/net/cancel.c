/*
 * cancel.c: cancel-key index and forwarding (see cancel.h).
 *
 * The index is a chained hash on (pid, key) that doubles when it gets full, so a cancel
 * costs O(1) however many clients there are (PgBouncer scans every client).  The outgoing
 * cancel connection is fire-and-forget: it connects, writes the 16-byte CancelRequest and
 * closes once written; PostgreSQL answers nothing.
 */
#include <stdlib.h>

#include <openssl/rand.h>

#include "base/log.h"
#include "net/cancel.h"
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
        if (RAND_bytes(r, sizeof(r)) != 1)
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

void px_cancel_destroy(void)
{
    free(px.cancel_buckets);
    px.cancel_buckets = NULL;
    px.cancel_nbuckets = px.cancel_count = 0;
}

static void cancel_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)arg;
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF))
        bufferevent_free(bev);
}

static void cancel_write_cb(struct bufferevent *bev, void *arg)
{
    (void)arg;
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bufferevent_free(bev);
}

void px_cancel_request(uint32_t pid, uint32_t key)
{
    struct px_client *c = lookup(pid, key);
    if (!c || !c->server || c->server->state != PX_SV_ACTIVE) {
        px_debug("cancel", 0, 0, "cancel request for no running query: dropped");
        return;
    }
    if (c->state == PX_CL_BATCHED) {
        /* Its server runs another client's query now: cancel once its own runs. */
        c->cancel_pending = true;
        px_info("cancel", 'C', c->id, "cancel held until its batched query runs");
        return;
    }
    px_cancel_forward(c);
}

void px_cancel_forward(struct px_client *c)
{
    struct px_server *s = c->server;
    struct sockaddr_storage ss;
    socklen_t sslen;
    if (px_server_address(s->pool, &ss, &sslen) < 0)
        return;
    struct bufferevent *bev = bufferevent_socket_new(px.base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (!bev)
        return;
    bufferevent_setcb(bev, NULL, cancel_write_cb, cancel_event_cb, NULL);
    px_wire_cancel(bufferevent_get_output(bev), s->backend_pid, s->backend_key);
    if (bufferevent_socket_connect(bev, (struct sockaddr *)&ss, (int)sslen) < 0) {
        bufferevent_free(bev);
        return;
    }
    bufferevent_enable(bev, EV_WRITE);
    px_info("cancel", 'C', c->id, "forwarding cancel to server S-%llu", (unsigned long long)s->id);
}
