/*
 * expect.c: the replies a server owes (see expect.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "net/client.h"
#include "net/server.h"
#include "path/expect.h"

struct px_expect *px_expect_push(struct px_server *s, enum px_expect_kind kind, bool hidden)
{
    if (s->expect_n == s->expect_cap) {
        uint32_t cap = s->expect_cap ? s->expect_cap * 2 : 8;
        struct px_expect *e = malloc(cap * sizeof(*e));
        if (!e)
            return NULL;
        for (uint32_t i = 0; i < s->expect_n; i++)
            e[i] = s->expect[(s->expect_head + i) % s->expect_cap];
        free(s->expect);
        s->expect = e;
        s->expect_cap = cap;
        s->expect_head = 0;
    }
    struct px_expect *e = &s->expect[(s->expect_head + s->expect_n++) % s->expect_cap];
    *e = (struct px_expect){.kind = (uint8_t)kind, .hidden = hidden};
    return e;
}

struct px_expect *px_expect_head(struct px_server *s)
{
    return s->expect_n ? &s->expect[s->expect_head] : NULL;
}

void px_expect_pop(struct px_server *s)
{
    struct px_expect *e = &s->expect[s->expect_head];
    px_stmt_unref(e->stmt);
    free(e->client_name);
    s->expect_head = (s->expect_head + 1) % s->expect_cap;
    s->expect_n--;
}

void px_expect_skip_to_sync(struct px_server *s)
{
    uint32_t n = 0;
    while (n < s->expect_n && s->expect[(s->expect_head + n) % s->expect_cap].kind != PX_EXP_SYNC)
        n++;
    for (uint32_t i = n; i-- > 0;) {
        struct px_expect *e = &s->expect[(s->expect_head + i) % s->expect_cap];
        if (e->set_op == PX_SETOP_ADD) {
            px_stmt_set_remove(&s->stmts, e->stmt);
        } else if (e->set_op == PX_SETOP_REMOVE) {
            struct px_stmt *evicted = NULL;
            if (px_stmt_set_add(&s->stmts, e->stmt, px.cfg->max_prepared_statements, &evicted) <
                    0 ||
                evicted) {
                /* The set cannot say the truth any more: never reuse this server. */
                px_stmt_unref(evicted);
                s->close_needed = true;
            }
        }
        if (e->client_name && s->client &&
            px_stmt_map_get(&s->client->stmts, e->client_name) == e->stmt)
            px_stmt_map_remove(&s->client->stmts, e->client_name);
    }
    while (n-- > 0)
        px_expect_pop(s);
}

/* An ErrorResponse to a hidden query.  Returns false when s was closed. */
static bool hidden_error(struct px_server *s, const uint8_t *body, uint32_t len)
{
    const char *sev = px_wire_error_field((const char *)body, len, 'V');
    const char *msg = px_wire_error_field((const char *)body, len, 'M');
    if (sev && (!strcmp(sev, "FATAL") || !strcmp(sev, "PANIC"))) {
        /* The backend is going away: that is the client's answer, in PostgreSQL's words. */
        struct px_client *c = s->client;
        struct evbuffer *err = c ? evbuffer_new() : NULL;
        if (c) {
            s->client = NULL;
            c->server = NULL;
            if (err && px_wire_msg(err, 'E', body, len) == 0)
                px_client_fatal_buffer(c, err);
            else
                px_client_fatal(c, PX_SQLSTATE_CONNECTION_FAILURE,
                                "server closed the connection unexpectedly");
        }
        if (err)
            evbuffer_free(err);
        px_server_close(s, "terminated while restoring a client's session");
        return false;
    }
    px_info("server", 'S', s->id, "restoring a client's session failed, trying again: %s",
            msg ? msg : "?");
    s->prelude_failed = true;
    free(s->prelude_error);
    s->prelude_error = strdup(msg ? msg : "error");
    return true;
}

/* DataRow: int16 columns, then int32 length (-1: NULL) and the text. */
void px_expect_capture_value(struct px_server *s, const uint8_t *body, uint32_t len)
{
    s->captured_null = true;
    s->captured[0] = '\0';
    if (len < 6 || px_get_u16(body) < 1)
        return;
    int32_t n = (int32_t)px_get_u32(body + 2);
    if (n < 0 || (uint32_t)n > len - 6 || (size_t)n >= sizeof(s->captured))
        return;
    memcpy(s->captured, body + 6, (size_t)n);
    s->captured[n] = '\0';
    s->captured_null = false;
}

enum px_hidden_result px_expect_read_hidden(struct px_server *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    while (s->hidden_queries > 0) {
        char type;
        uint8_t *body;
        uint32_t len;
        int r = px_take_message(in, 1u << 20, &type, &body, &len);
        if (r == 0)
            return PX_HIDDEN_MORE;
        if (r < 0) {
            px_server_close(s, "invalid message from server");
            return PX_HIDDEN_CLOSED;
        }
        bool ok = true;
        switch (type) {
        case 'Z':
            s->txn_status = len ? (char)body[0] : 'I';
            if (s->capture_skip > 0) {
                s->capture_skip--; /* the end of a hidden query before the captured one */
            } else {
                if (s->capture == PX_CAPTURE_XID) { /* path/outcome.h */
                    s->xid_known = true;
                    s->xid = s->captured_null ? 0 : strtoull(s->captured, NULL, 10);
                }
                s->capture = PX_CAPTURE_NONE;
            }
            if (--s->hidden_queries == 0)
                s->hidden_abort = false;
            break;
        case 'T': break;
        case 'D':
            if (s->capture && s->capture_skip == 0)
                px_expect_capture_value(s, body, len);
            break;
        case 'S': {
            const char *name, *value;
            ok = px_server_param_status(s, body, len, &name, &value) == 0;
            break;
        }
        case 'E':
            if (s->hidden_abort && s->hidden_queries == 1)
                break; /* the statement that fails on purpose (txn.h) did */
            if (!hidden_error(s, body, len)) {
                free(body);
                return PX_HIDDEN_CLOSED;
            }
            break;
        case 'C':
        case 'N': break;
        default: ok = false; break;
        }
        free(body);
        if (!ok) {
            px_server_close(s, "unexpected reply to a query pgwarden sent");
            return PX_HIDDEN_CLOSED;
        }
    }
    return PX_HIDDEN_DONE;
}

void px_expect_free(struct px_server *s)
{
    while (s->expect_n)
        px_expect_pop(s);
    free(s->expect);
    s->expect = NULL;
    s->expect_cap = 0;
    free(s->prelude_error);
    s->prelude_error = NULL;
}
