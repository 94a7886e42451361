/*
 * txn.c: transaction pooling (see txn.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "path/batch.h"
#include "net/client.h"
#include "base/log.h"
#include "pool/pool.h"
#include "path/prepared.h"
#include "net/server.h"
#include "path/sqlscan.h"
#include "metrics/stats.h"
#include "path/txn.h"

/* Simple queries up to this size are looked at while the client is idle or linked (BEGIN,
 * DEALLOCATE, session-state statements); larger ones go through unread. */
#define SCAN_MAX (64 * 1024)

/* A DEALLOCATE's name (sqlscan) is looked up in the client's statement map (prepared):
 * both cut names at PostgreSQL's NAMEDATALEN. */
_Static_assert(PX_SQL_NAME_SIZE == PX_STMT_NAME_MAX + 1, "one NAMEDATALEN");

enum { PX_EXP_PARSE = 1, PX_EXP_CLOSE, PX_EXP_SYNC };
enum { PX_SETOP_NONE = 0, PX_SETOP_ADD, PX_SETOP_REMOVE };

struct px_stmt_registry *px_txn_registry(void)
{
    if (!px.stmt_registry)
        px.stmt_registry = px_stmt_registry_new();
    return px.stmt_registry;
}

/* ---- the client's view of reported parameters ---------------------------------------- */

static const char *client_value(const struct px_client *c, const char *name)
{
    const char *v = px_params_get(&c->vars, name);
    if (!v && c->welcome)
        v = px_params_get(&c->welcome->params, name);
    return v;
}

int px_txn_client_param(struct px_client *c, const char *name, const char *value)
{
    const char *v = client_value(c, name);
    if (v && !strcmp(v, value))
        return 0;
    return px_params_set(&c->vars, name, value);
}

/* ---- small replies pgwarden sends itself ---------------------------------------------- */

static void send_complete(struct px_client *c, const char *tag, char status)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);
    px_wire_msg(out, 'C', tag, strlen(tag) + 1);
    px_wire_ready(out, status);
}

static void warn_session_state(struct px_client *c, const char *feature)
{
    if (c->warned_session_state)
        return;
    c->warned_session_state = true;
    px_warning("client", 'C', c->id,
               "%s (application_name \"%.64s\") uses %s, which does not survive transaction "
               "pooling: the server is reset after this transaction",
               c->addr, c->application_name ? c->application_name : "", feature);
}

/* ---- idle client ---------------------------------------------------------------------- */

/* What the client was last told while it has no server: in a (held-back) transaction or not. */
static char idle_status(const struct px_client *c)
{
    return c->held_begin ? 'T' : 'I';
}

/*
 * Answers a whole simple query (msg: the complete message) without a server when it can.
 * Returns true when the message was consumed.
 */
static bool answer_idle(struct px_client *c, const uint8_t *msg, uint32_t total)
{
    const char *sql = (const char *)msg + 5;
    size_t len = total - 5;
    if (len > 0 && sql[len - 1] == '\0')
        len--;
    struct px_sql_info info;
    px_sql_classify(sql, len, &info);
    c->head_sql_len = total; /* for c2s_query_answered, unless answered here */
    c->head_sql_kind = (uint8_t)info.kind;
    c->head_sql_multi = info.multi;
    c->head_sql_dml = info.dml;
    c->head_sql_feature = info.session_feature;
    if (info.multi)
        return false;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    switch (info.kind) {
    case PX_SQL_BEGIN:
        if (c->held_begin)
            return false; /* PostgreSQL warns "already a transaction in progress" */
        c->held_begin = malloc(total);
        if (!c->held_begin)
            return false;
        evbuffer_remove(in, c->held_begin, total);
        c->held_begin_len = total;
        send_complete(c, info.tag, 'T');
        px_stats_query(c->pool);
        return true;
    case PX_SQL_COMMIT:
    case PX_SQL_ROLLBACK:
        if (!c->held_begin)
            return false; /* outside a transaction PostgreSQL warns; let it */
        free(c->held_begin);
        c->held_begin = NULL;
        c->held_begin_len = 0;
        evbuffer_drain(in, total);
        send_complete(c, info.tag, 'I');
        px_stats_query(c->pool);
        px_stats_transaction(c->pool);
        return true;
    case PX_SQL_DEALLOCATE:
        if (!px_stmt_map_remove(&c->stmts, info.name))
            return false; /* not ours: PostgreSQL answers (SQL-level PREPARE, or 26000) */
        evbuffer_drain(in, total);
        send_complete(c, "DEALLOCATE", idle_status(c));
        return true;
    case PX_SQL_DEALLOCATE_ALL:
        px_stmt_map_clear(&c->stmts);
        evbuffer_drain(in, total);
        send_complete(c, "DEALLOCATE ALL", idle_status(c));
        return true;
    default: return false;
    }
}

void px_txn_client_idle_read(struct px_client *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    while (c->state == PX_CL_IDLE) {
        size_t avail = evbuffer_get_length(in);
        if (avail < 5)
            return;
        uint8_t hdr[5];
        evbuffer_copyout(in, hdr, 5);
        uint32_t len = px_get_u32(hdr + 1);
        if (len < 4 || len > (uint32_t)px.cfg->max_message_bytes) {
            px_client_fatal(c, PX_SQLSTATE_PROTOCOL_VIOLATION, px_wire_length_error(len));
            return;
        }
        if (hdr[0] == 'X') {
            px_client_close(c); /* Terminate while idle: nothing to clean up */
            return;
        }
        if (hdr[0] == 'Q' && len <= SCAN_MAX) {
            if (avail < (size_t)len + 1)
                return; /* wait for the whole query */
            const uint8_t *msg = evbuffer_pullup(in, (ssize_t)len + 1);
            if (msg && answer_idle(c, msg, len + 1)) {
                c->head_sql_len = 0;
                continue;
            }
        }
        /* Real work: the client needs a server (or a place in a batch). */
        if (!px_batch_join(c))
            px_pool_request_server(c->pool, c);
        return;
    }
}

/* ---- linking: re-sync and the held BEGIN ---------------------------------------------- */

/* Appends "SET name TO E'value';" (an E'' literal is valid whatever
 * standard_conforming_strings says).  0, or -1 when out of memory. */
static int append_set(struct evbuffer *b, const char *name, const char *s)
{
    int rc = evbuffer_add_printf(b, "SET %s TO E'", name) < 0 ? -1 : 0;
    for (; *s && rc == 0; s++) {
        if (*s == '\'' || *s == '\\')
            rc |= evbuffer_add(b, s, 1);
        rc |= evbuffer_add(b, s, 1);
    }
    return rc == 0 && evbuffer_add(b, "';", 2) == 0 ? 0 : -1;
}

/* The client's value of tracked slot i: what it changed since its welcome, else what the
 * welcome said. */
static const char *client_tracked(const struct px_client *c, int i)
{
    const char *v = c->vars.tracked[i];
    if (!v && c->welcome)
        v = c->welcome->params.tracked[i];
    return v;
}

/* The server's current value of tracked slot i. */
static const char *server_tracked(const struct px_server *s, int i)
{
    const char *v = s->params.tracked[i];
    if (!v && s->welcome)
        v = s->welcome->params.tracked[i];
    return v;
}

bool px_txn_same_params(const struct px_client *a, const struct px_client *b)
{
    for (int i = 0; i < PX_TRACKED_PARAMS; i++) {
        const char *va = client_tracked(a, i), *vb = client_tracked(b, i);
        if (va != vb && (!va || !vb || strcmp(va, vb) != 0))
            return false;
    }
    return true;
}

/* Called at every link: the common case, nothing differs, allocates nothing. */
bool px_txn_client_linked(struct px_client *c)
{
    struct px_server *s = c->server;
    struct evbuffer *out = bufferevent_get_output(s->bev);
    struct evbuffer *sql = NULL;
    for (int i = 0; i < PX_TRACKED_PARAMS; i++) { /* slot order: client_encoding first */
        const char *want = client_tracked(c, i), *have = server_tracked(s, i);
        if (!want || (have && !strcmp(want, have)))
            continue;
        if (!sql && !(sql = evbuffer_new()))
            return false;
        if (append_set(sql, px_tracked_params[i], want) < 0) {
            evbuffer_free(sql); /* a partial re-sync would show the client wrong settings */
            return false;
        }
    }
    if (sql) {
        const char *text = evbuffer_add(sql, "", 1) == 0 ? (char *)evbuffer_pullup(sql, -1) : NULL;
        if (text) {
            px_wire_query(out, text);
            s->hidden_queries++;
        }
        evbuffer_free(sql);
        if (!text)
            return false;
    }
    if (c->held_begin) {
        evbuffer_add(out, c->held_begin, c->held_begin_len);
        s->hidden_queries++;
        free(c->held_begin);
        c->held_begin = NULL;
        c->held_begin_len = 0;
    }
    return true;
}

bool px_txn_read_hidden(struct px_server *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    while (s->hidden_queries > 0) {
        char type;
        uint8_t *body;
        uint32_t len;
        int r = px_take_message(in, 1u << 20, &type, &body, &len);
        if (r == 0)
            return false;
        if (r < 0) {
            px_server_close(s, "invalid message from server");
            return false;
        }
        bool ok = true;
        switch (type) {
        case 'Z':
            s->txn_status = len ? (char)body[0] : 'I';
            s->hidden_queries--;
            break;
        case 'S': {
            const char *name, *value;
            ok = px_params_parse_status(body, len, &name, &value) == 0 &&
                 px_params_set(&s->params, name, value) == 0;
            break;
        }
        case 'E': {
            const char *msg = px_wire_error_field((const char *)body, len, 'M');
            px_warning("server", 'S', s->id, "restoring a client's session failed: %s",
                       msg ? msg : "?");
            struct px_client *c = s->client;
            free(body);
            if (c) {
                char text[300];
                snprintf(text, sizeof(text), "pgwarden could not restore the session: %s",
                         msg ? msg : "error");
                px_client_fatal(c, PX_SQLSTATE_CONNECTION_FAILURE, text);
            }
            return false;
        }
        case 'C':
        case 'N': break;
        default: ok = false; break;
        }
        free(body);
        if (!ok) {
            px_server_close(s, "unexpected reply to a query pgwarden sent");
            return false;
        }
    }
    return true;
}

/* ---- the expected-reply FIFO ---------------------------------------------------------- */

static struct px_expect *expect_push(struct px_server *s, uint8_t kind, bool hidden)
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
    *e = (struct px_expect){.kind = kind, .hidden = hidden};
    return e;
}

static struct px_expect *expect_head(struct px_server *s)
{
    return s->expect_n ? &s->expect[s->expect_head] : NULL;
}

static void expect_pop(struct px_server *s)
{
    struct px_expect *e = &s->expect[s->expect_head];
    px_stmt_unref(e->stmt);
    free(e->client_name);
    s->expect_head = (s->expect_head + 1) % s->expect_cap;
    s->expect_n--;
}

/* An error made the server skip everything up to the next Sync: undo, newest first, what
 * the skipped Parse/Close messages were expected to do. */
static void expect_skip_to_sync(struct px_server *s)
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
        expect_pop(s);
}

/* Makes room in the server's statement set, closing (hidden) the least recently used
 * (more than one after a reload lowered max_prepared_statements). */
static int make_room(struct px_server *s, struct evbuffer *out)
{
    struct px_stmt *victim;
    uint32_t cap = (uint32_t)px.cfg->max_prepared_statements;
    while ((victim = px_stmt_set_evict_candidate(&s->stmts, cap)) != NULL) {
        struct px_expect *e = expect_push(s, PX_EXP_CLOSE, true);
        if (!e)
            return -1;
        e->set_op = PX_SETOP_REMOVE;
        e->stmt = px_stmt_ref(victim);
        px_stmt_set_remove(&s->stmts, victim);
        if (px_write_target(out, 'C', 'S', px_stmt_server_name(e->stmt)) < 0)
            return -1;
    }
    return 0;
}

/* Sends a Parse of stmt under its server name.  hidden: pgwarden's own (reply swallowed);
 * otherwise the client's, client_name is undone if it fails. */
static int send_parse(struct px_server *s, struct px_stmt *stmt, bool hidden,
                      const char *client_name, struct evbuffer *out)
{
    if (make_room(s, out) < 0)
        return -1;
    struct px_expect *e = expect_push(s, PX_EXP_PARSE, hidden);
    if (!e)
        return -1;
    e->set_op = PX_SETOP_ADD;
    e->stmt = px_stmt_ref(stmt);
    if (client_name && !(e->client_name = strdup(client_name)))
        return -1;
    struct px_stmt *evicted = NULL;
    if (px_stmt_set_add(&s->stmts, stmt, px.cfg->max_prepared_statements, &evicted) < 0)
        return -1;
    px_stmt_unref(evicted); /* make_room left space: nothing is evicted here */
    uint32_t clen;
    const uint8_t *content = px_stmt_content(stmt, &clen);
    return px_write_parse(out, px_stmt_server_name(stmt), content, clen);
}

/* The server must have stmt before a Bind or Describe uses it. */
static int ensure_prepared(struct px_server *s, struct px_stmt *stmt, struct evbuffer *out)
{
    if (px_stmt_set_has(&s->stmts, stmt))
        return 0;
    return send_parse(s, stmt, true, NULL, out);
}

/* ---- client -> server ----------------------------------------------------------------- */

const uint8_t px_txn_c2s_see[256] = {
    ['Q'] = PX_SEE_BODY, ['P'] = PX_SEE_BODY, ['B'] = PX_SEE_BODY, ['D'] = PX_SEE_BODY,
    ['C'] = PX_SEE_BODY, ['S'] = PX_SEE_TYPE, ['F'] = PX_SEE_TYPE, ['E'] = PX_SEE_TYPE,
    ['H'] = PX_SEE_TYPE, ['X'] = PX_SEE_BODY,
};

/* Session state in sql: warn once, and reset the server after this transaction. */
static void note_sql(struct px_client *c, struct px_server *s, const struct px_sql_info *info)
{
    if (info->session_feature) {
        warn_session_state(c, info->session_feature);
        s->dirty = true;
    }
    if (info->kind == PX_SQL_DISCARD_ALL || info->kind == PX_SQL_DEALLOCATE_ALL) {
        /* Every statement of the server goes, and the client's too (as on a direct
         * connection).  Parse/Close still in flight keep their FIFO entries. */
        px_stmt_set_clear(&s->stmts);
        px_stmt_map_clear(&c->stmts);
    }
}

/* A simple query: note session state; answer DEALLOCATE of a renamed statement.  True when
 * answered here (the message is dropped). */
static bool c2s_query_answered(struct px_client *c, struct px_server *s, const uint8_t *body,
                               uint32_t len)
{
    size_t n = len;
    if (n > 0 && body[n - 1] == '\0')
        n--;
    if (len <= SCAN_MAX) {
        struct px_sql_info info;
        if (c->head_sql_len == len + 5 && c->head_sql_kind != PX_SQL_DEALLOCATE) {
            /* classified while idle (the only Query before this one) */
            info = (struct px_sql_info){.kind = (enum px_sql_kind)c->head_sql_kind,
                                        .multi = c->head_sql_multi,
                                        .session_feature = c->head_sql_feature};
        } else {
            px_sql_classify((const char *)body, n, &info);
        }
        c->head_sql_len = 0;
        note_sql(c, s, &info);
        /* DEALLOCATE of a statement pgwarden renamed: the server does not know the name,
         * so answer it here when nothing is in flight to keep the replies in order. */
        if (!info.multi && info.kind == PX_SQL_DEALLOCATE && s->txn_status != 'E' &&
            s->pending_ready == 0 && !s->unsynced && s->expect_n == 0 &&
            px_stmt_map_remove(&c->stmts, info.name)) {
            px_stats_query(c->pool);
            send_complete(c, "DEALLOCATE", s->txn_status);
            return true;
        }
    }
    return false;
}

static enum px_relay_action c2s_parse(struct px_client *c, struct px_server *s,
                                      struct evbuffer *out, const uint8_t *body, uint32_t len)
{
    const char *name;
    const uint8_t *content;
    uint32_t clen;
    if (px_parse_split(body, len, &name, &content, &clen) < 0)
        return PX_RELAY_FORWARD; /* malformed: PostgreSQL says so */
    struct px_sql_info info;
    const char *q = (const char *)content;
    px_sql_classify(q, strnlen(q, clen), &info);
    note_sql(c, s, &info);
    if (!*name) {
        if (!expect_push(s, PX_EXP_PARSE, false))
            return PX_RELAY_CLOSE;
        return PX_RELAY_FORWARD; /* the unnamed statement lives only until the next Parse */
    }
    struct px_stmt *stmt = px_stmt_intern(px_txn_registry(), content, clen);
    if (!stmt || px_stmt_map_put(&c->stmts, name, stmt) < 0) {
        px_stmt_unref(stmt);
        return PX_RELAY_CLOSE;
    }
    if (px_stmt_set_has(&s->stmts, stmt)) {
        /* The server has it (another client's): drop and re-prepare it so that the client
         * gets the ParseComplete (or error) of its own Parse, in order. */
        struct px_expect *e = expect_push(s, PX_EXP_CLOSE, true);
        if (!e) {
            px_stmt_unref(stmt);
            return PX_RELAY_CLOSE;
        }
        e->set_op = PX_SETOP_REMOVE;
        e->stmt = px_stmt_ref(stmt);
        px_stmt_set_remove(&s->stmts, stmt);
        px_write_target(out, 'C', 'S', px_stmt_server_name(stmt));
    }
    int rc = send_parse(s, stmt, false, name, out);
    px_stmt_unref(stmt);
    return rc < 0 ? PX_RELAY_CLOSE : PX_RELAY_DROP;
}

static enum px_relay_action c2s_bind(struct px_client *c, struct px_server *s, struct evbuffer *out,
                                     const uint8_t *body, uint32_t len)
{
    const char *portal, *name;
    const uint8_t *rest;
    uint32_t rlen;
    if (px_bind_split(body, len, &portal, &name, &rest, &rlen) < 0 || !*name)
        return PX_RELAY_FORWARD;
    struct px_stmt *stmt = px_stmt_map_get(&c->stmts, name);
    if (!stmt)
        return PX_RELAY_FORWARD; /* unknown to pgwarden: PostgreSQL answers 26000 */
    if (ensure_prepared(s, stmt, out) < 0 ||
        px_write_bind(out, portal, px_stmt_server_name(stmt), rest, rlen) < 0)
        return PX_RELAY_CLOSE;
    return PX_RELAY_DROP;
}

static enum px_relay_action c2s_target(struct px_client *c, struct px_server *s,
                                       struct evbuffer *out, char type, const uint8_t *body,
                                       uint32_t len)
{
    char kind;
    const char *name;
    bool named = px_target_split(body, len, &kind, &name) == 0 && kind == 'S' && *name;
    if (type == 'C') {
        /* Close is forwarded as it is: closing a name the server does not have is not an
         * error, and it still answers CloseComplete in order. */
        if (named)
            px_stmt_map_remove(&c->stmts, name);
        if (!expect_push(s, PX_EXP_CLOSE, false))
            return PX_RELAY_CLOSE;
        return PX_RELAY_FORWARD;
    }
    struct px_stmt *stmt = named ? px_stmt_map_get(&c->stmts, name) : NULL;
    if (!stmt)
        return PX_RELAY_FORWARD;
    if (ensure_prepared(s, stmt, out) < 0 ||
        px_write_target(out, 'D', 'S', px_stmt_server_name(stmt)) < 0)
        return PX_RELAY_CLOSE;
    return PX_RELAY_DROP;
}

enum px_relay_action px_txn_c2s(void *ctx, struct evbuffer *out, char type, const uint8_t *body,
                                uint32_t len)
{
    struct px_client *c = ctx;
    struct px_server *s = c->server;
    if (type == 'Q' && body && c2s_query_answered(c, s, body, len))
        return PX_RELAY_DROP;
    /* The session relay's bookkeeping first (pending replies, unsynced, stats, Terminate). */
    if (px_client_on_request(c, out, type, body, len) == PX_RELAY_CLOSE)
        return PX_RELAY_CLOSE;
    switch (type) {
    case 'P': return c2s_parse(c, s, out, body, len);
    case 'B': return c2s_bind(c, s, out, body, len);
    case 'D':
    case 'C': return c2s_target(c, s, out, type, body, len);
    case 'Q':
    case 'S':
    case 'F': return expect_push(s, PX_EXP_SYNC, false) ? PX_RELAY_FORWARD : PX_RELAY_CLOSE;
    default: return PX_RELAY_FORWARD;
    }
}

/* ---- server -> client ----------------------------------------------------------------- */

const uint8_t px_txn_s2c_see[256] = {
    ['Z'] = PX_SEE_BODY, ['S'] = PX_SEE_BODY, ['E'] = PX_SEE_BODY,
    ['1'] = PX_SEE_BODY, ['3'] = PX_SEE_BODY,
};

enum px_relay_action px_txn_s2c(void *ctx, struct evbuffer *out, char type, const uint8_t *body,
                                uint32_t len)
{
    struct px_server *s = ctx;
    (void)out;
    struct px_expect *head = expect_head(s);
    switch (type) {
    case '1':
    case '3': {
        uint8_t want = type == '1' ? PX_EXP_PARSE : PX_EXP_CLOSE;
        if (!head || head->kind != want) {
            px_error("server", 'S', s->id, "reply '%c' does not match what was sent", type);
            return PX_RELAY_CLOSE;
        }
        bool hidden = head->hidden;
        expect_pop(s);
        return hidden ? PX_RELAY_DROP : PX_RELAY_FORWARD;
    }
    case 'E':
        if (head && head->kind != PX_EXP_SYNC)
            expect_skip_to_sync(s);
        return px_server_on_reply(s, type, body, len);
    case 'Z':
        if (!head || head->kind != PX_EXP_SYNC) {
            px_error("server", 'S', s->id, "ReadyForQuery does not match what was sent");
            return PX_RELAY_CLOSE;
        }
        expect_pop(s);
        if (px_server_on_reply(s, type, body, len) != PX_RELAY_FORWARD)
            return PX_RELAY_CLOSE;
        /* A batch on s: the next bytes are another client's reply. */
        return px_batch_stops(s) ? PX_RELAY_STOP : PX_RELAY_FORWARD;
    default: return px_server_on_reply(s, type, body, len);
    }
}

/* ---- release -------------------------------------------------------------------------- */

void px_txn_maybe_release(struct px_server *s)
{
    struct px_client *c = s->client;
    if (!c || s->state != PX_SV_ACTIVE || c->state != PX_CL_ACTIVE)
        return;
    if (s->txn_status != 'I' || s->hidden_queries > 0 || s->pending_ready > 0 || s->unsynced ||
        s->expect_n > 0 || s->s2c.remaining || c->c2s.remaining ||
        evbuffer_get_length(bufferevent_get_input(c->bev)) > 0 ||
        evbuffer_get_length(bufferevent_get_input(s->bev)) > 0)
        return;
    c->server = NULL;
    s->client = NULL;
    px_txn_client_detached(c);
    px_server_release(s, false);
}

void px_txn_client_detached(struct px_client *c)
{
    px_client_set_state(c, PX_CL_IDLE);
    if (px.shutting_down) {
        px_client_fatal(c, PX_SQLSTATE_ADMIN_SHUTDOWN,
                        "terminating connection due to administrator command");
        return;
    }
    if (c->read_paused) {
        c->read_paused = false;
        px_reader_enable(&c->rd, true);
    }
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        px_txn_client_idle_read(c); /* what it sent while its batched query ran */
}

/* ---- freeing -------------------------------------------------------------------------- */

void px_txn_server_forget_statements(struct px_server *s)
{
    px_stmt_set_clear(&s->stmts);
}

void px_txn_client_free(struct px_client *c)
{
    free(c->held_begin);
    px_params_clear(&c->vars);
    px_stmt_map_clear(&c->stmts);
    px_welcome_unref(c->welcome);
}

void px_txn_server_free(struct px_server *s)
{
    while (s->expect_n)
        expect_pop(s);
    free(s->expect);
    px_stmt_set_clear(&s->stmts);
}
