/*
 * path.c: the statement path: stages composed in order, the relays in both directions, and
 * the events reported by the transport and the pool (see path.h).
 */
#include <stdio.h>
#include <string.h>

#include "base/log.h"
#include "metrics/stats.h"
#include "net/cancel.h"
#include "net/client.h"
#include "net/server.h"
#include "path/batch.h"
#include "path/classify.h"
#include "path/expect.h"
#include "path/fault.h"
#include "path/local.h"
#include "path/locks.h"
#include "path/outcome.h"
#include "path/path.h"
#include "path/rename.h"
#include "path/retry.h"
#include "path/session.h"
#include "path/txn.h"
#include "pool/breaker.h"
#include "pool/pool.h"

#define SERVER_MAX_MESSAGE 0x3fffffffu

/* ==== ordering of pgwarden's own replies ============================================== */

/* Everything sent to s has been answered: a reply pgwarden writes to the client now comes
 * after the server's replies to everything the client sent before. */
static bool server_quiescent(const struct px_server *s)
{
    return s->pending_ready == 0 && s->expect_n == 0 && s->hidden_queries == 0 &&
           !s->last_untracked && s->s2c.remaining == 0;
}

/* The client's relay stops before a message pgwarden answers itself until s has answered
 * what was sent before it.  When the last message sent has no tracked reply (Bind,
 * Execute, ...), a barrier makes the server say when it is done: a Close of a statement
 * name that cannot exist (answered CloseComplete, which the FIFO swallows, or skipped after
 * an error) and a Flush; after a Parse or Close of an unsynced group, a Flush. */
static bool hold_for_reply(struct px_client *c, struct evbuffer *out)
{
    struct px_server *s = c->server;
    c->reply_hold = true;
    static const uint8_t flush[5] = {'H', 0, 0, 0, 4};
    if (!s->last_untracked) {
        /* a Parse or Close of the group under way is answered at a Flush (or Sync) only */
        if (s->unsynced && s->expect_n > 0 && evbuffer_add(out, flush, 5) < 0)
            return false;
        return true;
    }
    struct px_expect *e = px_expect_push(s, PX_EXP_CLOSE, true);
    if (!e || px_write_target(out, 'C', 'S', "_pgw_") < 0 || evbuffer_add(out, flush, 5) < 0)
        return false;
    s->last_untracked = false;
    return true;
}

/* ==== client -> server ================================================================== */

/* The bookkeeping every relayed client message gets, in both pool modes: ReadyForQuery
 * replies expected, unsynced extended-protocol messages, what the FIFO tracks, query
 * counts; CLOSE for Terminate (the server stays for the next client). */
static enum px_relay_action c2s_bookkeeping(struct px_client *c, char type)
{
    struct px_server *s = c->server;
    switch (type) {
    case 'Q':
        px_stats_query(c->pool);
        s->pending_ready++;
        s->last_untracked = false;
        return PX_RELAY_FORWARD;
    case 'F':
        s->pending_ready++;
        s->last_untracked = false;
        return PX_RELAY_FORWARD;
    case 'S':
        if (s->unsynced)
            px_stats_query(c->pool);
        s->pending_ready++;
        s->unsynced = false;
        s->group_failed = false;
        s->last_untracked = false;
        if (c->locks)
            px_locks_sync(c);
        return PX_RELAY_FORWARD;
    case 'X': return PX_RELAY_CLOSE;
    case 'P':
    case 'C': s->unsynced = true; return PX_RELAY_FORWARD; /* tracked by the FIFO */
    default:
        s->unsynced = true;
        s->last_untracked = true;
        return PX_RELAY_FORWARD;
    }
}

/* Message types each relay table shows to c2s (proto/relay.h).  Query and Parse are read
 * in both modes (lock calls); transaction mode reads Bind, Describe and Close (statement
 * renaming); a client with lock-call statements or portals has them all read.  Types a
 * frontend may not send are shown too, to be refused. */
static uint8_t c2s_session_see[256], c2s_txn_see[256], c2s_locks_see[256];

static void build_tables(void)
{
    for (int t = 0; t < 256; t++) {
        uint8_t see = px_wire_frontend_type((char)t) ? PX_SEE_NONE : PX_SEE_TYPE;
        c2s_session_see[t] = c2s_txn_see[t] = c2s_locks_see[t] = see;
    }
    /* Parse is assembled (transaction mode keeps a statement's text to prepare it again);
     * the other messages read are looked at by their head: a big Query or Bind streams. */
    static const char typed[] = "SFBDECH", read_session[] = "QX", read_txn[] = "QBDCX",
                      read_locks[] = "QBDCEX";
    for (const char *p = typed; *p; p++)
        c2s_session_see[(uint8_t)*p] = c2s_txn_see[(uint8_t)*p] = c2s_locks_see[(uint8_t)*p] =
            PX_SEE_TYPE;
    for (const char *p = read_session; *p; p++)
        c2s_session_see[(uint8_t)*p] = PX_SEE_HEAD;
    for (const char *p = read_txn; *p; p++)
        c2s_txn_see[(uint8_t)*p] = PX_SEE_HEAD;
    for (const char *p = read_locks; *p; p++)
        c2s_locks_see[(uint8_t)*p] = PX_SEE_HEAD;
    c2s_session_see['P'] = c2s_txn_see['P'] = c2s_locks_see['P'] = PX_SEE_BODY;
}

static const uint8_t *c2s_table(const struct px_client *c)
{
    if (!c2s_session_see['Q'])
        build_tables();
    /* Execute is read too; Bind also for a client that prepared statements the retry
     * stage must see run (retry.h px_retry_note_bind) */
    if (c->locks || px_chaos_active() || px_retry_watches_binds(c))
        return c2s_locks_see;
    return c->pool->mode == PX_POOL_TRANSACTION ? c2s_txn_see : c2s_session_see;
}

/* The relay running now (one at a time: the loop is single-threaded): its client and the
 * buffer it relays into (see px_path_server_out). */
static struct px_client *relaying_client;
static struct evbuffer *relaying_out;

struct evbuffer *px_path_client_out(struct px_client *c)
{
    return px_retry_client_out(c);
}

void px_path_client_send(struct px_client *c, struct evbuffer *reply)
{
    if (c->retry) { /* through the retry stage, which writes it on (retry.c sink_cb) */
        evbuffer_add_buffer(px_retry_client_out(c), reply);
        return;
    }
    px_relay_write(reply, bufferevent_get_output(c->bev), px_client_direct(c));
}

struct evbuffer *px_path_server_out(struct px_client *c)
{
    if (c == relaying_client && relaying_out)
        return relaying_out;
    return bufferevent_get_output(c->server->bev);
}

/* The table of the relay running now (one relay at a time: the loop is single-threaded).
 * A client whose first lock call creates its lock state needs the locks table from the
 * next message on: c2s then stops the relay, which restarts with it. */
static const uint8_t *relaying_table;

/* A Query or Parse of c's whose text ends its block: the lock stage wants its
 * CommandComplete tags (locks.h); for a Parse, those of the group its Sync ends. */
static void note_block_end(struct px_client *c, const struct px_sql_info *info)
{
    struct px_server *s = c->server;
    if (c->locks && px_locks_note_query(c, info, (uint32_t)s->pending_ready + 1))
        s->read_tags = true;
}

/* A Parse's statement text, classified for the session and retry stages; its kind. */
static enum px_sql_kind note_parse(struct px_client *c, const uint8_t *body, uint32_t len)
{
    const char *name;
    const uint8_t *content;
    uint32_t clen;
    if (px_parse_split(body, len, &name, &content, &clen) < 0)
        return PX_SQL_OTHER; /* malformed: PostgreSQL says so */
    struct px_sql_info info;
    const char *q = (const char *)content;
    size_t qlen = strnlen(q, clen);
    px_sql_classify(q, qlen, &info);
    px_retry_note_sql(c, &info);
    px_retry_note_parse(c, name, &info);
    note_block_end(c, &info);
    if (c->pool->mode != PX_POOL_TRANSACTION)
        return info.kind; /* the rest follows state for transaction pooling */
    px_session_note_parse(c, name, &info, q, qlen);
    char dealloc[PX_SQL_NAME_SIZE];
    if ((info.drops_prepared || info.kind == PX_SQL_DISCARD_ALL) &&
        !(!*name && px_rename_client_dealloc(c, content, clen, dealloc))) {
        /* see px_session_note_sql; not for a client's DEALLOCATE, which pgwarden runs on
         * a stand-in (rename.h): the server's statements stay */
        px_stmt_set_clear(&c->server->stmts);
        c->server->stmts_uncertain = true;
    }
    return info.kind;
}

/* A Bind's statement name (the session stage follows changes made through the unnamed
 * statement). */
static void note_bind(struct px_client *c, const uint8_t *body, uint32_t len)
{
    const uint8_t *p = memchr(body, '\0', len);
    if (p && memchr(p + 1, '\0', len - (uint32_t)(p + 1 - body))) {
        px_session_note_bind(c, (const char *)p + 1);
        px_retry_note_bind(c, (const char *)p + 1);
    }
}

/* FATAL for a message type a frontend may not send (never forwarded: PostgreSQL would end
 * the backend, and with it the next client's session). */
static enum px_relay_action refuse_type(struct px_client *c, char type)
{
    char msg[64];
    snprintf(msg, sizeof(msg), "invalid frontend message type %d", (int)(unsigned char)type);
    px_client_fatal(c, PX_SQLSTATE_PROTOCOL_VIOLATION, msg);
    return PX_RELAY_CLOSE;
}

/* A message too big to be held whole (a query or Bind over PX_RELAY_HEAD_MAX): only its
 * head was read.  It is no lock call, no fault is injected into it and its text is not
 * classified; the bookkeeping and, in transaction mode, the statement renaming apply. */
static enum px_relay_action c2s_big(struct px_client *c, struct evbuffer *out, char type,
                                    const uint8_t *head, uint32_t len)
{
    struct px_server *s = c->server;
    uint32_t visible = len > PX_RELAY_HEAD_MAX ? PX_RELAY_HEAD_MAX : len;
    px_retry_note_streamed(c);
    px_locks_big_message(c, type, head, visible);
    if (type == 'P' && px_chaos_active())
        px_fault_note_long_parse(c, head, visible);
    else if (type == 'B' && px_chaos_active())
        px_fault_note_bind(c, head, visible); /* the names are in the head */
    if (c2s_bookkeeping(c, type) == PX_RELAY_CLOSE)
        return PX_RELAY_CLOSE;
    if (type == 'Q') {
        c->head_sql_len = 0;
        return px_expect_push(s, PX_EXP_SYNC, false) ? PX_RELAY_FORWARD : PX_RELAY_CLOSE;
    }
    if (type == 'B' && s->pool->mode == PX_POOL_TRANSACTION)
        return px_rename_bind_head(c, out, head, len);
    return PX_RELAY_FORWARD;
}

static enum px_relay_action c2s_forward(struct px_client *c, struct px_server *s,
                                        struct evbuffer *out, char type, const uint8_t *body,
                                        uint32_t len, bool txn);

static enum px_relay_action c2s(void *ctx, struct evbuffer *out, char type, const uint8_t *body,
                                uint32_t len)
{
    struct px_client *c = ctx;
    struct px_server *s = c->server;
    bool txn = s->pool->mode == PX_POOL_TRANSACTION;
    bool replaced = false; /* the Query went out with a prefix: the transaction-id query
                              before a COMMIT (outcome.h), a held BEGIN (txn.h) */
    relaying_out = out;    /* the relay's destination: scratch or the server's output */
    if (!px_wire_frontend_type(type))
        return refuse_type(c, type);
    if (type == 'Q') {
        s->unnamed_owner = 0;   /* a simple Query destroys the unnamed statement, */
        c->unnamed_lost = true; /* the client's on any server (txn.c px_txn_linked) */
    }
    if (s->group_failed && type != 'S' && type != 'X') {
        /* An error earlier in this extended-protocol group: the server skips everything
         * until Sync, so the message is neither answered nor tracked (dropped when its body
         * was read, else passed on for the server to skip). */
        return body ? PX_RELAY_DROP : PX_RELAY_FORWARD;
    }
    if (c->begin_merge && body) {
        /* The held BEGIN goes with this message (txn.h): in the same Query (below), or in
         * front of it in the same extended-protocol group; else alone first. */
        bool ext = type == 'P' || type == 'B' || type == 'D';
        if (px_chaos_active() || (type == 'Q' ? len > PX_RELAY_HEAD_MAX : !ext))
            return px_txn_begin_alone(c, out) ? PX_RELAY_HOLD : PX_RELAY_CLOSE;
        if (ext && !px_txn_begin_group(c, out))
            return PX_RELAY_CLOSE;
    }
    if (body && len > PX_RELAY_HEAD_MAX)
        return c2s_big(c, out, type, body, len);
    /* answered by pgwarden: lock calls, in order behind the server's replies */
    if (body && type != 'X') {
        switch (px_locks_message(c, type, body, len, server_quiescent(s))) {
        case PX_LOCKS_ANSWERED:
            if (c->begin_merge && !px_txn_begin_alone(c, out))
                return PX_RELAY_CLOSE;
            return c->lock_waiting || c->reply_hold || relaying_table != c2s_table(c)
                       ? PX_RELAY_DROP_STOP
                       : PX_RELAY_DROP;
        case PX_LOCKS_HOLD:
            if (c->begin_merge) /* a lost lock's error needs the block begun (locks.c) */
                return px_txn_begin_alone(c, out) ? PX_RELAY_HOLD : PX_RELAY_CLOSE;
            return hold_for_reply(c, out) ? PX_RELAY_HOLD : PX_RELAY_CLOSE;
        case PX_LOCKS_CLOSE: return PX_RELAY_CLOSE;
        case PX_LOCKS_NOT_MINE: break;
        }
    }
    /* fault injection, for what reaches the server (not pgwarden's replays: a fault there
     * would make a retry the client never sees fail, and count an injection nobody saw) */
    if (px_chaos_active() && body && (type == 'Q' || type == 'E') && !px_retry_replaying(c)) {
        switch (px_fault_message(c, type, body, len, server_quiescent(s))) {
        case PX_FAULT_ANSWERED: return PX_RELAY_DROP_STOP;
        case PX_FAULT_HOLD:
            if (c->fault_waiting)
                return PX_RELAY_HOLD; /* latency: its timer resumes the relay */
            return hold_for_reply(c, out) ? PX_RELAY_HOLD : PX_RELAY_CLOSE;
        case PX_FAULT_CLOSED: return PX_RELAY_CLOSE;
        case PX_FAULT_DISCONNECT: c->fault_disconnect = true; break;
        case PX_FAULT_NONE: break;
        }
    }
    if (type == 'P' && body) {
        px_fault_note_parse(c, body, len);
    } else if (type == 'B' && px_chaos_active() && body && px_fault_note_bind(c, body, len) &&
               (txn || c->retry)) {
        /* a named COMMIT statement: the COMMIT starts with its Bind (outcome.h) */
        px_outcome_commit_sent(c, out, server_quiescent(s));
    }
    if (txn) {
        /* classify, then statements answered by pgwarden, then session state */
        if (type == 'Q') {
            struct px_sql_info info;
            px_classify_relayed(c, body, len, &info);
            px_retry_note_sql(c, &info);
            note_block_end(c, &info);
            if (px_local_answer_linked(c, &info)) {
                if (!c->begin_merge)
                    return PX_RELAY_DROP;
                return px_txn_begin_alone(c, out) ? PX_RELAY_DROP_STOP : PX_RELAY_CLOSE;
            }
            px_session_note_sql(c, &info, (const char *)body, len);
            if (c->begin_merge) {
                if (!px_txn_begin_query(c, out, body, len))
                    return PX_RELAY_CLOSE;
                replaced = true;
            } else if (info.kind == PX_SQL_COMMIT) {
                replaced = px_outcome_commit_query(c, out, server_quiescent(s), body, len);
            }
        } else if (type == 'P') {
            if (note_parse(c, body, len) == PX_SQL_COMMIT)
                px_outcome_commit_parse(c, out, server_quiescent(s), body, len);
        } else if (type == 'B') {
            note_bind(c, body, len);
        } else if (type == 'E') {
            px_session_note_execute(c);
        }
    } else if (c->retry && body && type == 'B') {
        const uint8_t *p = memchr(body, '\0', len);
        if (p && memchr(p + 1, '\0', len - (uint32_t)(p + 1 - body)))
            px_retry_note_bind(c, (const char *)p + 1);
    } else if ((c->retry || c->locks) && body && (type == 'Q' || type == 'P')) {
        /* session state a replay would create twice makes a transaction not replayable;
         * a block ended by a chained COMMIT/ROLLBACK ends its pgwarden locks (both note
         * nothing for a client without the retry stage, or without locks) */
        if (type == 'Q') {
            struct px_sql_info info;
            px_sql_classify((const char *)body, strnlen((const char *)body, len), &info);
            px_retry_note_sql(c, &info);
            note_block_end(c, &info);
            if (info.kind == PX_SQL_COMMIT)
                replaced = px_outcome_commit_query(c, out, server_quiescent(s), body, len);
        } else if (note_parse(c, body, len) == PX_SQL_COMMIT) {
            px_outcome_commit_parse(c, out, server_quiescent(s), body, len);
        }
    }
    if (c2s_bookkeeping(c, type) == PX_RELAY_CLOSE)
        return PX_RELAY_CLOSE;
    enum px_relay_action act = c2s_forward(c, s, out, type, body, len, txn);
    if (replaced && act == PX_RELAY_FORWARD)
        act = PX_RELAY_DROP; /* its text went in the Query written to out */
    if (c->fault_disconnect && (act == PX_RELAY_FORWARD || replaced))
        return replaced ? PX_RELAY_DROP_STOP : PX_RELAY_STOP; /* sent; then the server is cut
                                                                 (px_path_relay_client) */
    return act;
}

/* Statement renaming (transaction mode), and the replies the server will owe. */
static enum px_relay_action c2s_forward(struct px_client *c, struct px_server *s,
                                        struct evbuffer *out, char type, const uint8_t *body,
                                        uint32_t len, bool txn)
{
    switch (type) {
    case 'P':
        if (txn)
            return px_rename_parse(c, out, body, len);
        return px_expect_push(s, PX_EXP_PARSE, false) ? PX_RELAY_FORWARD : PX_RELAY_CLOSE;
    case 'B': return txn ? px_rename_bind(c, out, body, len) : PX_RELAY_FORWARD;
    case 'D': return txn ? px_rename_target(c, out, type, body, len) : PX_RELAY_FORWARD;
    case 'C':
        if (txn)
            return px_rename_target(c, out, type, body, len);
        return px_expect_push(s, PX_EXP_CLOSE, false) ? PX_RELAY_FORWARD : PX_RELAY_CLOSE;
    case 'Q':
    case 'S':
    case 'F': return px_expect_push(s, PX_EXP_SYNC, false) ? PX_RELAY_FORWARD : PX_RELAY_CLOSE;
    default: return PX_RELAY_FORWARD;
    }
}

/* Keeps what c sent until it may be relayed, but keeps reading (a bounded amount) so that
 * a client that goes away is noticed at once. */
static void hold_input(struct px_client *c)
{
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > PX_BACKPRESSURE_HIGH) {
        px_reader_enable(&c->rd, false);
        c->read_paused = true;
    }
}

void px_path_relay_client(struct px_client *c)
{
    struct px_server *s = c->server;
    if (c->state != PX_CL_ACTIVE || !s || s->state != PX_SV_ACTIVE)
        return;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (evbuffer_get_length(in) == 0)
        return;
    /* Other clients' queries follow its one on s, the prelude's replies are not all in
     * (txn.h), it waits for a lock, or for the server's replies before pgwarden's own:
     * the rest waits. */
    if (px_batch_holds(c) || s->hidden_queries > 0 || c->lock_waiting || c->reply_hold ||
        c->fault_waiting || px_retry_holds_input(c) || px_outcome_pending(c)) {
        hold_input(c);
        return;
    }
    px_batch_close(s); /* more than one query of this client: no one may join */
    struct evbuffer *out = bufferevent_get_output(s->bev);
    uint32_t max = (uint32_t)px.cfg->max_message_bytes;
    struct px_direct d = px_server_direct(s);
    enum px_relay_result r;
    do { /* again when the table changed (see relaying_table) */
        size_t moved = 0;
        relaying_table = c2s_table(c);
        relaying_client = c;
        r = px_relay_direct(&c->c2s, in, out, d, relaying_table, c2s, c, max, &moved);
        relaying_client = NULL;
        relaying_out = NULL;
        px_stats_bytes(c->pool, moved, 0);
    } while (r == PX_RELAY_STOPPED && !c->lock_waiting && !c->reply_hold && !c->fault_waiting &&
             !c->fault_disconnect && c->server == s && s->state == PX_SV_ACTIVE &&
             c->state == PX_CL_ACTIVE && evbuffer_get_length(in) > 0);
    if (c->fault_disconnect) {
        /* A disconnect injected at COMMIT (path/fault.h): the COMMIT is sent, and the
         * server is cut before its answer is relayed (px_path_relay_server), as when the
         * network fails at that moment. */
        c->fault_disconnect = false;
        s->cut_when_sent = true;
        /* An Execute's reply waits in the server for a Sync or Flush: the Flush makes it
         * answer once the COMMIT ran, and that answer is the cue to cut. */
        static const uint8_t flush[5] = {'H', 0, 0, 0, 4};
        if (evbuffer_add(out, flush, sizeof(flush)) < 0)
            px_server_close(s, "out of memory");
        return;
    }
    if (r == PX_RELAY_CLOSED) {
        if (c->state != PX_CL_FAILING && c->state != PX_CL_CLOSING)
            px_client_close(c); /* Terminate (an invalid message has failed it already) */
        return;
    }
    if (r == PX_RELAY_TOO_LARGE) {
        px_client_fatal(c, PX_SQLSTATE_PROTOCOL_VIOLATION, px_wire_length_error(c->c2s.bad_len));
        return;
    }
    if (evbuffer_get_length(out) > PX_BACKPRESSURE_HIGH) {
        px_reader_enable(&c->rd, false);
        c->read_paused = true;
    }
    if (c->server == s && s->pool->mode == PX_POOL_TRANSACTION)
        px_txn_maybe_release(s); /* a lock call answered here may have ended its work */
}

enum px_relay_result px_path_relay_into(struct px_client *c, struct evbuffer *out, size_t *moved)
{
    size_t before = evbuffer_get_length(out);
    relaying_table = c2s_table(c);
    relaying_client = c;
    relaying_out = out;
    enum px_relay_result r = px_relay(&c->c2s, bufferevent_get_input(c->bev), out, relaying_table,
                                      c2s, c, (uint32_t)px.cfg->max_message_bytes);
    relaying_client = NULL;
    relaying_out = NULL;
    *moved = evbuffer_get_length(out) - before;
    return r;
}

/* ==== server -> client ================================================================== */

/* What a ReadyForQuery with status means for s itself (its client's side is the
 * caller's). */
static void server_ready(struct px_server *s, char status)
{
    if (s->pending_ready > 0)
        s->pending_ready--;
    s->txn_status = status;
    s->commit_inflight = false;
    s->begin_shift = 0;
    s->group_failed = false;
    s->copy_in = false;
}

/* The bookkeeping every relayed server reply gets, in both pool modes. */
static enum px_relay_action s2c_bookkeeping(struct px_server *s, char type, const uint8_t *body,
                                            uint32_t len)
{
    switch (type) {
    case 'Z':
        server_ready(s, len ? (char)body[0] : 'I');
        if (s->client)
            px_session_ready(s->client, s->txn_status);
        s->read_tags = s->client && s->client->locks && px_locks_ready(s->client);
        if (s->txn_status == 'I') {
            px_stats_transaction(s->pool);
            px_breaker_txn_done(s->pool);
            if (s->client && s->client->locks && !px_retry_owns_txn_end(s->client))
                px_locks_txn_end(s->client); /* the transaction really ended */
        }
        return PX_RELAY_FORWARD;
    case 'S': {
        const char *name, *value;
        if (px_server_param_status(s, body, len, &name, &value) < 0)
            return PX_RELAY_CLOSE;
        if (s->client && px_session_reported(s->client, name, value) < 0)
            return PX_RELAY_CLOSE;
        return PX_RELAY_FORWARD;
    }
    case 'E': {
        const char *sev = px_wire_error_field((const char *)body, len, 'V');
        const char *code = px_wire_error_field((const char *)body, len, 'C');
        px_stats_error_sent(s->pool, code);
        px_breaker_server_error(s, code);
        if (sev && (!strcmp(sev, "FATAL") || !strcmp(sev, "PANIC")))
            s->close_needed = true;
        return PX_RELAY_FORWARD;
    }
    default: return PX_RELAY_FORWARD;
    }
}

/* Replies s2c reads.  Inside an extended-protocol group (s->unsynced) CommandComplete is
 * read too: a BEGIN or COMMIT executed in the group changes the transaction state before
 * the ReadyForQuery that would report it. */
static const uint8_t s2c_see[256] = {
    ['Z'] = PX_SEE_BODY, ['S'] = PX_SEE_BODY, ['E'] = PX_SEE_BODY,
    ['1'] = PX_SEE_BODY, ['3'] = PX_SEE_BODY, ['G'] = PX_SEE_TYPE,
};
static const uint8_t s2c_group_see[256] = {
    ['Z'] = PX_SEE_BODY, ['S'] = PX_SEE_BODY, ['E'] = PX_SEE_BODY, ['1'] = PX_SEE_BODY,
    ['3'] = PX_SEE_BODY, ['C'] = PX_SEE_BODY, ['G'] = PX_SEE_TYPE,
};
/* While the replies of a prefix are due, the transaction-id query in front of a COMMIT
 * (outcome.h) or a held BEGIN in front of a Query (txn.h): until its CommandComplete, which
 * stops the relay. */
static const uint8_t s2c_prefix_see[256] = {
    ['Z'] = PX_SEE_BODY, ['S'] = PX_SEE_BODY, ['E'] = PX_SEE_BODY, ['1'] = PX_SEE_BODY,
    ['3'] = PX_SEE_BODY, ['G'] = PX_SEE_TYPE, ['T'] = PX_SEE_BODY, ['D'] = PX_SEE_BODY,
    ['C'] = PX_SEE_BODY, ['2'] = PX_SEE_BODY,
};

/* A CommandComplete inside an extended-protocol group. */
static void note_complete(struct px_server *s, const uint8_t *body, uint32_t len)
{
    const char *tag = (const char *)body;
    if (!len || !memchr(body, '\0', len))
        return;
    if (!strcmp(tag, "BEGIN") || !strcmp(tag, "START TRANSACTION"))
        s->txn_status = 'T';
    else if (!strcmp(tag, "COMMIT") || !strcmp(tag, "ROLLBACK"))
        s->txn_status = 'I';
}

static enum px_relay_action s2c(void *ctx, struct evbuffer *out, char type, const uint8_t *body,
                                uint32_t len)
{
    struct px_server *s = ctx;
    struct px_expect *head = px_expect_head(s);
    enum px_relay_action prefix_action;
    if (s->xid_prefix && px_outcome_prefix_reply(s, type, body, len, &prefix_action))
        return prefix_action;
    if (s->begin_prefix && px_txn_begin_reply(s, type, &prefix_action))
        return prefix_action;
    switch (type) {
    case '1':
    case '3': {
        uint8_t want = type == '1' ? PX_EXP_PARSE : PX_EXP_CLOSE;
        if (!head || head->kind != want) {
            px_error("server", 'S', s->id, "reply '%c' does not match what was sent", type);
            return PX_RELAY_CLOSE;
        }
        bool hidden = head->hidden;
        px_expect_pop(s);
        return hidden ? PX_RELAY_DROP : PX_RELAY_FORWARD;
    }
    case 'C':
        if (s->unsynced)
            note_complete(s, body, len);
        if (s->read_tags && s->client && s->client->locks && len && memchr(body, '\0', len))
            px_locks_complete(s->client, (const char *)body);
        return PX_RELAY_FORWARD;
    case 'G': s->copy_in = true; return PX_RELAY_FORWARD; /* until ReadyForQuery */
    case 'E': {
        bool mine = head && head->abort; /* the failure pgwarden asked for */
        if (!mine && s->client)
            px_session_error(s->client);
        /* In the current extended-protocol group (no Sync owed before it), the server now
         * skips everything until the client's Sync. */
        if (mine || (s->pending_ready == 0 && s->unsynced))
            s->group_failed = true;
        if (head && head->kind != PX_EXP_SYNC)
            px_expect_skip_to_sync(s);
        if (mine)
            return PX_RELAY_DROP;
        if (s->client && s->client->retry && px_retry_server_error(s->client, out, body, len))
            return PX_RELAY_DROP; /* held back: the transaction may be replayed */
        if (s->commit_inflight && s->client && s->client->retry) {
            const char *sev = px_wire_error_field((const char *)body, len, 'V');
            if (sev && (!strcmp(sev, "FATAL") || !strcmp(sev, "PANIC"))) {
                /* the backend goes away with the COMMIT's outcome unsaid: it is asked for
                 * once the connection is gone (outcome.h) */
                s->close_needed = true;
                return PX_RELAY_DROP;
            }
        }
        enum px_relay_action act = s2c_bookkeeping(s, type, body, len);
        if (act == PX_RELAY_FORWARD && s->begin_shift) {
            /* its position counts in the held BEGIN sent in front of the Query (txn.h) */
            if (px_wire_error_shift_position(out, type, body, len, s->begin_shift) < 0)
                return PX_RELAY_CLOSE;
            return PX_RELAY_DROP;
        }
        return act;
    }
    case 'Z':
        if (!head || head->kind != PX_EXP_SYNC) {
            px_error("server", 'S', s->id, "ReadyForQuery does not match what was sent");
            return PX_RELAY_CLOSE;
        }
        px_expect_pop(s);
        if (s->begin_failed) { /* the server is outside any block; its client is not */
            server_ready(s, 'I');
            return px_txn_begin_failed_ready(s, out);
        }
        if (s2c_bookkeeping(s, type, body, len) != PX_RELAY_FORWARD)
            return PX_RELAY_CLOSE;
        /* A batch on s: the next bytes are another client's reply. */
        return px_batch_stops(s) ? PX_RELAY_STOP : PX_RELAY_FORWARD;
    default: return s2c_bookkeeping(s, type, body, len);
    }
}

/* The client's relay waited for the server's replies before one of pgwarden's own: they
 * are all in, so it goes on. */
static void resume_held(struct px_server *s)
{
    struct px_client *c = s->client;
    if (c && c->reply_hold && s->state == PX_SV_ACTIVE && server_quiescent(s)) {
        c->reply_hold = false;
        px_path_relay_client(c);
    }
}

/* Relays the server's replies to its client, and with a batch on s (batch.h) to each
 * batched client in turn. */
void px_path_relay_server(struct px_server *s)
{
    bool txn = s->pool->mode == PX_POOL_TRANSACTION;
    for (;;) {
        struct px_client *c = s->client;
        if (s->state != PX_SV_ACTIVE || (!c && !s->orphan_client))
            return;
        if (s->hidden_queries > 0) {
            if (px_expect_read_hidden(s) != PX_HIDDEN_DONE || !c || !px_txn_prelude_done(c))
                return;
            if (!px_outcome_hidden_done(c))
                return;              /* c was failed */
            px_path_relay_client(c); /* what it sent behind the prelude */
            if (s->client != c || s->state != PX_SV_ACTIVE)
                return;
        }
        if (s->cut_when_sent && !s->xid_prefix) {
            /* After the hidden transaction-id query's answer (path/outcome.h), so whether
             * the COMMIT committed can be learned: the client is answered as for any
             * COMMIT whose server was lost. */
            px_server_close(s, "chaos: disconnect injected after COMMIT was sent");
            return;
        }
        struct evbuffer *in = bufferevent_get_input(s->bev);
        struct evbuffer *out = c ? bufferevent_get_output(c->bev) : px_batch_sink();
        struct px_direct d = c ? px_client_direct(c) : PX_DIRECT_NONE;
        /* a client whose transaction may be replayed: through the retry stage */
        struct evbuffer *target = c ? px_retry_relay_target(c) : NULL;
        size_t moved = 0;
        enum px_relay_result r =
            px_relay_direct(&s->s2c, in, target ? target : out, target ? PX_DIRECT_NONE : d,
                            s->xid_prefix || s->begin_prefix ? s2c_prefix_see
                            : s->unsynced || s->read_tags    ? s2c_group_see
                                                             : s2c_see,
                            s2c, s, SERVER_MAX_MESSAGE, &moved);
        if (target)
            px_retry_relayed(c, d);
        if (c)
            px_stats_bytes(s->pool, 0, moved);
        else
            evbuffer_drain(out, evbuffer_get_length(out)); /* the client left */
        if (r == PX_RELAY_CLOSED || r == PX_RELAY_TOO_LARGE) {
            px_server_close(s, "protocol error from server");
            return;
        }
        if (r == PX_RELAY_STOPPED && s->prefix_done) {
            s->prefix_done = false;
            continue; /* the rest with the usual table, or the chaos cut (above) */
        }
        if (r == PX_RELAY_STOPPED) { /* a batched query's reply is complete */
            if (!px_batch_next(s))
                return;
            continue;
        }
        if (evbuffer_get_length(out) > PX_BACKPRESSURE_HIGH)
            px_reader_enable(&s->rd, false);
        if (c)
            px_retry_after_relay(c); /* a held attempt may be over: retry or not */
        if (s->state != PX_SV_ACTIVE || s->client != c || !c)
            return;
        resume_held(s);
        if (s->state != PX_SV_ACTIVE || s->client != c || !c)
            return;
        if (txn) {
            px_txn_maybe_release(s); /* last: the server may go to another client */
        } else if (px.shutting_down && px_client_is_idle(c)) {
            px_client_fatal(c, PX_SQLSTATE_ADMIN_SHUTDOWN,
                            "terminating connection due to administrator command");
        }
        return;
    }
}

/* ==== events reported by the transport (net/client.h, net/server.h) ===================== */

void px_path_client_authenticated(struct px_client *c)
{
    const struct px_db_config *db = px_config_find_db(px.cfg, c->database);
    struct px_pool *pool = db ? px_pool_get(c->database, c->user, db) : NULL;
    if (!pool) {
        px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
        return;
    }
    c->pool = pool;
    px_pool_ref(pool);
    c->retry_wanted = px_retry_enabled(); /* started when it is needed (retry.h) */
    /* With a cached welcome the login completes now; a server is linked when the client
     * needs one (transaction pooling) or as soon as one is free (session pooling). */
    struct px_welcome *w = px_pool_welcome_find(pool, c->signature, c->signature_len);
    bool welcome = w && !(pool->login_error && px_now_ms() < pool->login_error_until_ms);
    /* Admission of a client that needs a server now (session pooling, or no cached welcome);
     * a welcomed transaction-pooling client is admitted per transaction (txn.c). */
    struct px_breaker_refusal why;
    if ((!welcome || pool->mode != PX_POOL_TRANSACTION) && !px_breaker_admit(pool->breaker, &why)) {
        px_client_fatal(c, PX_SQLSTATE_CANNOT_CONNECT_NOW, why.message);
        return;
    }
    if (welcome) {
        px_client_welcome(c, &w->params, w);
        if (pool->mode == PX_POOL_TRANSACTION) {
            px_client_set_state(c, PX_CL_IDLE);
            px_txn_idle_input(c);
            return;
        }
    }
    px_pool_request_server(pool, c);
}

void px_path_cancel_request(struct px_client *c)
{
    if (px_locks_cancel(c))
        return; /* it waited for a lock: that wait ends with 57014 */
    if (px_retry_cancel(c))
        return; /* it waited for a replay: it gets the original error */
    struct px_server *s = c->server;
    if (!s || s->state != PX_SV_ACTIVE) {
        px_debug("cancel", 'C', c->id, "cancel request for no running query: dropped");
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

void px_path_client_input(struct px_client *c)
{
    /* Retry starts at a client's first input (at a transaction boundary: it has no server)
     * or when it gets a server (px_path_client_linked). */
    if (c->retry_wanted && !c->retry && !c->server && !px_retry_client_start(c)) {
        px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
        return;
    }
    if (px_retry_holds_input(c))
        return; /* the retry stage resumes it */
    if (px_outcome_pending(c)) {
        hold_input(c); /* the answer to its COMMIT comes first */
        return;
    }
    if (c->lock_waiting || (c->fault_waiting && c->state != PX_CL_ACTIVE)) {
        hold_input(c);
        return;
    }
    switch (c->state) {
    case PX_CL_ACTIVE: px_path_relay_client(c); break;
    case PX_CL_IDLE: px_txn_idle_input(c); break;
    case PX_CL_WAITING:
    case PX_CL_BATCHED: hold_input(c); break;
    default: break;
    }
}

void px_path_client_drained(struct px_client *c)
{
    struct px_server *s = c->server;
    if (s && s->state == PX_SV_ACTIVE && !px_reader_enabled(&s->rd)) {
        px_reader_enable(&s->rd, true);
        px_path_relay_server(s);
    }
}

void px_path_client_leaving(struct px_client *c)
{
    px_retry_client_free(c); /* what it gets from now on (an error) goes straight out */
    px_locks_client_free(c); /* its locks go at once, the next waiters are granted */
    struct px_server *s = c->server;
    if (!s || px_batch_leave(c))
        return;
    c->server = NULL;
    s->client = NULL;
    px_batch_close(s);
    if (px_session_pinned(c))
        s->dirty = true; /* its state that could not move goes with a reset */
    if (s->expect_n > 0) {
        /* Nobody waits for these replies; what the Parse/Close in flight did is unknown, so
         * the server's statement set is rebuilt with a Close before every Parse. */
        px_expect_free(s);
        px_stmt_set_clear(&s->stmts);
        s->stmts_uncertain = true;
    }
    px_server_release(s, c->c2s.remaining != 0);
}

void px_path_client_parking(struct px_client *c)
{
    px_retry_client_release_idle(c); /* made again at its next query (px_path_client_input) */
}

void px_path_client_free(struct px_client *c)
{
    px_retry_client_free(c);
    px_outcome_client_free(c);
    px_locks_client_free(c);
    px_fault_client_free(c);
    px_txn_client_free(c);
    px_session_client_free(c);
    px_stmt_map_clear(&c->stmts);
}

void px_path_server_input(struct px_server *s)
{
    px_path_relay_server(s);
}

void px_path_server_drained(struct px_server *s)
{
    struct px_client *c = s->client;
    if (c && c->read_paused && c->state == PX_CL_ACTIVE) {
        c->read_paused = false;
        px_reader_enable(&c->rd, true);
        px_path_relay_client(c);
    }
}

void px_path_server_cancel_done(struct px_server *s)
{
    if (s->state == PX_SV_ACTIVE && s->pool->mode == PX_POOL_TRANSACTION)
        px_txn_maybe_release(s); /* it waited for the cancel */
    else
        px_server_cancel_finished(s); /* a drained server whose reset waited for it */
}

bool px_path_server_lost(struct px_client *c, struct px_server *s)
{
    return px_outcome_server_lost(c, s);
}

void px_path_server_closing(struct px_server *s)
{
    px_batch_fail(s);
}

void px_path_server_free(struct px_server *s)
{
    if (s->pool)
        px_batch_close(s);
    px_expect_free(s);
    px_stmt_set_clear(&s->stmts);
}

/* ==== events reported by the pool (pool/pool.h) ========================================= */

void px_path_client_linked(struct px_client *c, bool queued)
{
    struct px_server *s = c->server;
    /* A waiting client may have parked; retry may not have started yet (it is started
     * before anything is relayed either way). */
    if (!px_client_unpark(c) || (c->retry_wanted && !c->retry && !px_retry_client_start(c))) {
        px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
        return;
    }
    if (!c->welcomed) /* s->welcome is NULL only when caching it ran out of memory */
        px_client_welcome(c, s->welcome ? &s->welcome->params : &s->params, s->welcome);
    c->read_paused = false; /* a waiting client may have stopped reading */
    px_reader_enable(&c->rd, true);
    if (s->pool->mode != PX_POOL_TRANSACTION) {
        px_outcome_linked(c); /* a server to ask what became of a lost COMMIT */
        px_path_relay_client(c);
        return;
    }
    if (!px_txn_linked(c)) {
        px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
        return;
    }
    px_outcome_linked(c);
    if (!px_batch_open(c))
        px_path_relay_client(c);
    if (c->server == s)
        px_txn_maybe_release(s);
    if (queued) /* a freed server takes the clients waiting behind c along (batch.h) */
        px_batch_take_waiting(s);
}
