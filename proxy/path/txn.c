/*
 * txn.c: transaction pooling's client lifecycle and transaction state (see txn.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chaos/chaos.h"
#include "net/cancel.h"
#include "net/client.h"
#include "net/server.h"
#include "path/batch.h"
#include "path/classify.h"
#include "path/expect.h"
#include "path/local.h"
#include "path/path.h"
#include "path/locks.h"
#include "path/outcome.h"
#include "path/retry.h"
#include "path/session.h"
#include "path/txn.h"
#include "proto/wire.h"
#include "pool/breaker.h"
#include "pool/pool.h"

/* ---- the transaction state of a client without a server -------------------------------- */

bool px_txn_in_block(const struct px_client *c)
{
    return c->held_begin != NULL;
}

char px_txn_unlinked_status(const struct px_client *c)
{
    return c->held_begin ? (c->held_failed ? 'E' : 'T') : 'I';
}

void px_txn_fail_block(struct px_client *c)
{
    if (c->held_begin)
        c->held_failed = true;
}

bool px_txn_hold_begin(struct px_client *c, uint32_t total)
{
    c->held_begin = malloc(total);
    if (!c->held_begin)
        return false;
    evbuffer_remove(bufferevent_get_input(c->bev), c->held_begin, total);
    c->held_begin_len = total;
    return true;
}

bool px_txn_hold_begin_sql(struct px_client *c, const char *sql, size_t len)
{
    /* Sent as a simple Query, as a held simple BEGIN is: the same statement, and its
     * replies are swallowed the same way (expect.h, hidden queries). */
    uint32_t total = (uint32_t)(5 + len + 1);
    uint8_t *m = malloc(total);
    if (!m)
        return false;
    m[0] = 'Q';
    px_put_u32(m + 1, total - 1);
    memcpy(m + 5, sql, len);
    m[5 + len] = '\0';
    free(c->held_begin);
    c->held_begin = m;
    c->held_begin_len = total;
    return true;
}

bool px_txn_hold_failed_block(struct px_client *c)
{
    if (!px_txn_hold_begin_sql(c, "BEGIN", 5))
        return false;
    c->held_failed = true;
    return true;
}

void px_txn_drop_begin(struct px_client *c)
{
    free(c->held_begin);
    c->held_begin = NULL;
    c->held_begin_len = 0;
    c->held_failed = false;
    c->begin_merge = false;
}

/* ---- statements pgwarden fails ------------------------------------------------------- */

/* The text of the statement pgwarden sends to make a server's transaction fail on purpose
 * (its error is swallowed): a constant that is not an integer fails at parse analysis. */
#define ABORT_SQL "SELECT 'pgwarden: a statement failed in this transaction'::pg_catalog.int4"

/* A Parse that fails at parse analysis puts the server into skip-to-Sync: the client's
 * Sync then ends the group as PostgreSQL would after an error (an implicit transaction
 * rolls back, a block is failed). */
static void fail_group(struct px_server *s, struct evbuffer *out)
{
    uint8_t content[sizeof(ABORT_SQL) + 2] = {0}; /* query\0, int16 0 parameter types */
    memcpy(content, ABORT_SQL, sizeof(ABORT_SQL));
    struct px_expect *e = px_expect_push(s, PX_EXP_PARSE, true);
    if (!e || px_write_parse(out, "_pgw_abort", content, sizeof(content)) < 0) {
        px_server_close(s, "out of memory");
        return;
    }
    e->abort = 1;
    s->unsynced = true;
    s->group_failed = true;
    s->last_untracked = false;
}

void px_txn_statement_failed(struct px_client *c, bool simple)
{
    struct px_server *s = c->server;
    if (!s) {
        if (px_txn_in_block(c))
            px_txn_fail_block(c);
        return;
    }
    struct evbuffer *out = px_path_server_out(c);
    if (simple) {
        if (s->txn_status != 'T')
            return; /* outside a block nothing was begun; in a failed one nothing changes */
        px_wire_query(out, ABORT_SQL);
        s->hidden_queries++;
        s->hidden_abort = true;
        s->txn_status = 'E';
        return;
    }
    fail_group(s, out);
}

void px_txn_commit_failed(struct px_client *c, bool simple)
{
    struct px_server *s = c->server;
    if (!s) {
        px_txn_drop_begin(c);
        return;
    }
    s->commit_inflight = false; /* the COMMIT is not sent (outcome.h) */
    struct evbuffer *out = px_path_server_out(c);
    if (s->txn_status != 'I') {
        /* A COMMIT that fails ends the transaction: it is rolled back.  In an extended-
         * protocol group too, where a Query may come between the group's messages: what
         * came before it (the COMMIT's Parse and Bind) ran already, nothing else is owed. */
        px_wire_query(out, "ROLLBACK");
        s->hidden_queries++;
        s->txn_status = 'I';
    }
    if (!simple)
        fail_group(s, out); /* the rest of the group is skipped, as after any error */
}

/* ---- idle: answered, or a server is needed --------------------------------------------- */

/* The one place an idle client asks for a server (or a place in another client's batch),
 * if the circuit breaker admits it; else its statement fails with 57P03 (local.h), or in a
 * failed block with 25P02 unless it ends the block (ends_block: COMMIT / ROLLBACK AND
 * CHAIN, which PostgreSQL runs there).  True when its input is to be handled further (the
 * statement was answered). */
static bool need_server(struct px_client *c, bool ends_block)
{
    struct px_breaker_refusal why;
    if (!px_breaker_admit(c->pool->breaker, &why)) {
        if (c->held_failed && !ends_block) /* the failed block refuses it first */
            return px_local_fail_unlinked(c, "25P02",
                                          "current transaction is aborted, commands ignored "
                                          "until end of transaction block",
                                          NULL);
        return px_local_fail_unlinked(c, PX_SQLSTATE_CANNOT_CONNECT_NOW, why.message, why.detail);
    }
    if (!px_batch_join(c))
        px_pool_request_server(c->pool, c);
    return false;
}

/* Extended-protocol messages up to this size are read whole by an idle client (a lock call
 * or a transaction-control statement is a few hundred bytes); a longer one needs a server,
 * and is never buffered whole here. */
#define LOCAL_MESSAGE_MAX (64 * 1024)

enum unlinked_verdict { UL_ANSWERED, UL_NEED_SERVER, UL_FAILED };

/*
 * The whole extended-protocol message (len bytes after the type) at the head of c's input,
 * from a client without a server: answered by pgwarden (a lock call, transaction control,
 * a Sync or Flush), or a server is needed.
 *
 * Each message is answered as it comes, not only whole groups up to Sync: PostgreSQL too
 * answers each message when it runs, and a Flush (or Sync) only pushes out what is owed.
 * So Parse / Describe / Flush gets its ParameterDescription at once (asyncpg waits for it
 * before its Bind), and a lock call that waits holds no server even when a statement that
 * needs one follows it in the group: the server is taken at that statement, which goes to
 * it with the rest of the group (pgwarden's replies so far come first, in order).
 */
static enum unlinked_verdict answer_unlinked(struct px_client *c, uint32_t len)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    const uint8_t *msg = evbuffer_pullup(in, (ssize_t)len + 1);
    if (!msg) {
        px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
        return UL_FAILED;
    }
    char type = (char)msg[0];
    const uint8_t *body = msg + 5;
    uint32_t blen = len - 4;
    if (type == 'S') {
        px_local_note_unlinked(c, type, body, blen);
        px_locks_sync(c);     /* ReadyForQuery; the end of a skipped group */
    } else if (type != 'H') { /* a Flush: every reply owed is written already */
        px_local_note_unlinked(c, type, body, blen);
        enum px_locks_verdict v = px_locks_message(c, type, body, blen, true);
        if (v == PX_LOCKS_CLOSE) {
            px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
            return UL_FAILED;
        }
        if (v != PX_LOCKS_ANSWERED && !px_local_answer_unlinked_ext(c, type, body, blen))
            return UL_NEED_SERVER;
    }
    evbuffer_drain(in, (size_t)len + 1);
    return UL_ANSWERED;
}

void px_txn_idle_input(struct px_client *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    while (c->state == PX_CL_IDLE && !px_locks_waiting(c) && !px_retry_holds_input(c) &&
           !px_outcome_pending(c)) {
        if (px_local_skipping(c) && !px_local_skip(c))
            return; /* the rest of a statement pgwarden failed is not in yet */
        size_t avail = evbuffer_get_length(in);
        if (c->c2s.remaining) { /* the rest of a message being skipped (below) */
            size_t n = avail < c->c2s.remaining ? avail : c->c2s.remaining;
            evbuffer_drain(in, n);
            c->c2s.remaining -= (uint32_t)n;
            if (c->c2s.remaining)
                return;
            c->c2s.discard = false;
            continue;
        }
        if (avail < 5)
            return;
        uint8_t hdr[5];
        evbuffer_copyout(in, hdr, 5);
        uint32_t len = px_get_u32(hdr + 1);
        if (len < 4 || len > PX_WIRE_MAX_LEN ||
            (hdr[0] == 'P' && len > (uint32_t)px.cfg->max_message_bytes)) {
            px_client_fatal(c, PX_SQLSTATE_PROTOCOL_VIOLATION, px_wire_length_error(len));
            return;
        }
        if (hdr[0] == 'X') {
            px_client_close(c); /* Terminate while idle: nothing to clean up */
            return;
        }
        if (!px_wire_frontend_type((char)hdr[0])) {
            char msg[64];
            snprintf(msg, sizeof(msg), "invalid frontend message type %d", hdr[0]);
            px_client_fatal(c, PX_SQLSTATE_PROTOCOL_VIOLATION, msg);
            return;
        }
        if (hdr[0] == 'd' || hdr[0] == 'c' || hdr[0] == 'f') {
            /* COPY data outside COPY: PostgreSQL ignores it (the rest of a failed COPY) */
            if (avail < (size_t)len + 1)
                return;
            evbuffer_drain(in, (size_t)len + 1);
            continue;
        }
        if (hdr[0] != 'S' && px_locks_skipping(c)) {
            /* An error pgwarden answered earlier in this extended-protocol group: everything
             * up to Sync is skipped, as PostgreSQL does, a long message as it arrives (c's
             * stream state says that the rest of it is dropped). */
            size_t n = avail < (size_t)len + 1 ? avail : (size_t)len + 1;
            evbuffer_drain(in, n);
            c->c2s.remaining = (uint32_t)((size_t)len + 1 - n);
            c->c2s.discard = c->c2s.remaining > 0;
            continue;
        }
        bool ends_block = false;
        if (hdr[0] == 'Q' && len <= PX_CLASSIFY_MAX) {
            if (avail < (size_t)len + 1)
                return; /* wait for the whole query */
            const uint8_t *msg = evbuffer_pullup(in, (ssize_t)len + 1);
            if (msg) {
                px_local_note_unlinked(c, 'Q', msg + 5, len - 4);
                enum px_locks_verdict v = px_locks_message(c, 'Q', msg + 5, len - 4, true);
                if (v == PX_LOCKS_CLOSE) {
                    px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
                    return;
                }
                if (v == PX_LOCKS_ANSWERED) {
                    evbuffer_drain(in, (size_t)len + 1);
                    continue;
                }
                struct px_sql_info info;
                px_classify_head(c, msg + 5, len - 4, &info);
                ends_block = info.ends_commit || info.ends_rollback;
                /* of what may be answered here only a DEALLOCATE matters to the retry
                 * stage (noted before the answer, which may end the unit); the rest is
                 * noted when relayed */
                if (info.drops_prepared)
                    px_retry_note_sql(c, &info);
                if (px_local_answer_unlinked(c, &info, len + 1)) {
                    c->head_sql_len = 0;
                    continue;
                }
            }
        } else if (hdr[0] != 'Q') {
            /* Extended protocol: lock calls and transaction control need no server. */
            if (len <= LOCAL_MESSAGE_MAX) {
                if (avail < (size_t)len + 1)
                    return; /* wait for the whole message */
                enum unlinked_verdict v = answer_unlinked(c, len);
                if (v == UL_FAILED)
                    return;
                if (v == UL_ANSWERED)
                    continue;
            }
        }
        if (need_server(c, ends_block))
            continue;
        return;
    }
}

/* ---- linking and release --------------------------------------------------------------- */

/* The held BEGIN can go with the message at the head of c's input (txn.h), which is either
 * a whole simple Query that the relay takes as it is (not a big one), and then the BEGIN's
 * text must hold nothing that could swallow what follows it (a comment, a quote), or a
 * Parse, Bind or Describe that starts what c sends in extended-protocol messages, where the
 * BEGIN goes as messages of its own in front of it. */
static bool begin_mergeable(const struct px_client *c)
{
    const struct px_server *s = c->server;
    if (c->held_failed || s->prelude_tries != 1 || px_chaos_active())
        return false;
    const uint8_t *t = c->held_begin + 5;
    size_t n = c->held_begin_len - 5;
    if (n == 0 || memchr(t, '\0', n) != t + n - 1)
        return false; /* one text, terminated */
    uint8_t hdr[5];
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (evbuffer_copyout(in, hdr, 5) != 5)
        return false;
    if (hdr[0] == 'P' || hdr[0] == 'B' || hdr[0] == 'D')
        return true; /* px_txn_begin_group */
    if (hdr[0] != 'Q')
        return false;
    for (size_t i = 0; i + 1 < n; i++)
        if (strchr("-/'\"$\\", t[i]) || t[i] >= 0x80)
            return false; /* ASCII: error positions count characters (px_txn_begin_query) */
    uint32_t len = px_get_u32(hdr + 1);
    return len >= 5 && len - 4 <= PX_RELAY_HEAD_MAX && evbuffer_get_length(in) >= 1 + (size_t)len;
}

/* Sends the prelude: the re-sync SETs, and the held BEGIN unless the server is in a block
 * already (a second attempt after the SETs failed but the BEGIN did not) or it goes in
 * front of the client's Query. */
static bool send_prelude(struct px_client *c)
{
    struct px_server *s = c->server;
    c->begin_merge = false; /* a second attempt sends it alone (begin_mergeable) */
    if (!px_session_resync(c))
        return false;
    struct evbuffer *out = bufferevent_get_output(s->bev);
    if (c->held_begin && s->txn_status == 'I' && begin_mergeable(c)) {
        c->begin_merge = true;
    } else if (c->held_begin && s->txn_status == 'I') {
        if (evbuffer_add(out, c->held_begin, c->held_begin_len) < 0)
            return false;
        s->hidden_queries++;
    }
    if (c->held_begin && c->held_failed && s->txn_status != 'E') {
        /* The held block failed (a lock error): the server's must fail too, so that the
         * client's statements get 25P02 and its COMMIT rolls back, as on PostgreSQL. */
        if (px_wire_query(out, "SELECT 'pgwarden: a lock call failed in this transaction'"
                               "::pg_catalog.int4") < 0)
            return false;
        s->hidden_queries++;
        s->hidden_abort = true;
    }
    return true;
}

bool px_txn_linked(struct px_client *c)
{
    struct px_server *s = c->server;
    /* The server's unnamed statement is this client's only when it parsed it there last
     * and nothing destroyed it since (psql's \gdesc: Parse + Sync, then Describe + Sync);
     * else it is closed before the client's first use (rename.c). */
    bool own_unnamed = s->unnamed_owner == c->id && !c->local_unnamed && !c->unnamed_lost;
    int hidden_before = s->hidden_queries;
    c->begin_merge = false;
    px_local_forget(c);
    s->prelude_failed = false;
    s->prelude_tries = 1;
    if (!send_prelude(c))
        return false;
    c->unnamed_parsed = own_unnamed && s->hidden_queries == hidden_before; /* no hidden Query */
    if (s->hidden_queries == 0 && !c->begin_merge)
        px_txn_drop_begin(c); /* nothing to wait for */
    return true;
}

/* Attempts of a prelude before the client is told its session cannot be restored. */
#define PRELUDE_TRIES 3

bool px_txn_prelude_done(struct px_client *c)
{
    struct px_server *s = c->server;
    if (!s->prelude_failed) {
        if (!c->begin_merge)
            px_txn_drop_begin(c);
        return true;
    }
    s->prelude_failed = false;
    s->sstate_owner = UINT64_MAX; /* what of the state applied is unknown: reset, replay */
    if (s->prelude_tries < PRELUDE_TRIES) {
        s->prelude_tries++;
        if (!send_prelude(c)) {
            px_client_fatal(c, PX_SQLSTATE_INTERNAL, "out of memory");
            return false;
        }
        if (s->hidden_queries > 0)
            return false; /* wait for the new prelude's replies */
        px_txn_drop_begin(c);
        return true;
    }
    char text[300];
    snprintf(text, sizeof(text), "pgwarden could not restore the session: %s",
             s->prelude_error ? s->prelude_error : "error");
    px_client_fatal(c, PX_SQLSTATE_CONNECTION_FAILURE, text);
    return false;
}

void px_txn_maybe_release(struct px_server *s)
{
    struct px_client *c = s->client;
    if (!c || s->state != PX_SV_ACTIVE || c->state != PX_CL_ACTIVE)
        return;
    if (px_session_pinned(c))
        return; /* state that cannot move: the client keeps its server */
    if (s->txn_status != 'I' || s->hidden_queries > 0 || s->pending_ready > 0 || s->unsynced ||
        s->expect_n > 0 || s->s2c.remaining || c->c2s.remaining || px_server_cancel_busy(s) ||
        evbuffer_get_length(bufferevent_get_input(c->bev)) > 0 ||
        evbuffer_get_length(bufferevent_get_input(s->bev)) > 0)
        return;
    c->server = NULL;
    s->client = NULL;
    px_txn_detached(c);
    px_batch_close(s);
    px_server_release(s, false);
}

bool px_txn_begin_query(struct px_client *c, struct evbuffer *out, const uint8_t *body,
                        uint32_t len)
{
    struct px_server *s = c->server;
    size_t blen = c->held_begin_len - 6; /* its text, without the terminator */
    if (px_wire_query_prefixed(out, c->held_begin + 5, blen, body, len) < 0)
        return false;
    s->begin_prefix = true;
    s->begin_failed = false;
    s->begin_shift = (uint32_t)blen + 1;
    px_txn_drop_begin(c);
    return true;
}

bool px_txn_begin_group(struct px_client *c, struct evbuffer *out)
{
    struct px_server *s = c->server;
    const uint8_t *text = c->held_begin + 5;
    size_t tlen = c->held_begin_len - 5; /* with its terminator (begin_mergeable) */
    /* Parse "" (the text, no parameter types), Bind "" "" (no formats, no parameters: text
     * results), Execute "" (all rows), Close portal "": the server is left as a BEGIN sent
     * as a simple Query leaves it, with no unnamed portal, and an unnamed statement that is
     * not the client's (closed before its Bind or Describe of it, rename.c). */
    static const uint8_t zeros[8], close_portal[2] = {'P', '\0'};
    uint8_t parse_head[6] = {'P'};
    px_put_u32(parse_head + 1, (uint32_t)(4 + 1 + tlen + 2));
    struct px_expect *pe = px_expect_push(s, PX_EXP_PARSE, true);
    struct px_expect *ce = pe ? px_expect_push(s, PX_EXP_CLOSE, true) : NULL;
    if (!ce || evbuffer_expand(out, 6 + tlen + 2 + 5 + 8 + 5 + 5 + 5 + 2) < 0 ||
        evbuffer_add(out, parse_head, 6) < 0 || evbuffer_add(out, text, tlen) < 0 ||
        evbuffer_add(out, zeros, 2) < 0 || px_wire_msg(out, 'B', zeros, 8) < 0 ||
        px_wire_msg(out, 'E', zeros, 5) < 0 || px_wire_msg(out, 'C', close_portal, 2) < 0)
        return false;
    s->begin_prefix = true;
    s->begin_failed = false;
    s->unsynced = true;
    s->last_untracked = false;
    s->unnamed_owner = 0;
    c->unnamed_parsed = false;
    px_txn_drop_begin(c);
    return true;
}

bool px_txn_begin_alone(struct px_client *c, struct evbuffer *out)
{
    struct px_server *s = c->server;
    if (evbuffer_add(out, c->held_begin, c->held_begin_len) < 0)
        return false;
    c->begin_merge = false; /* dropped with the prelude's replies (px_txn_prelude_done) */
    s->hidden_queries++;
    c->reply_hold = true;
    return true;
}

bool px_txn_begin_reply(struct px_server *s, char type, enum px_relay_action *action)
{
    if (type == '2') { /* the BEGIN's BindComplete (px_txn_begin_group; its ParseComplete
                          and CloseComplete are hidden entries of the FIFO) */
        *action = PX_RELAY_DROP;
        return true;
    }
    if (type == 'C') {
        if (s->unsynced)
            s->txn_status = 'T'; /* in a group: its ReadyForQuery is not yet due */
        s->begin_prefix = false;
        s->prefix_done = true;
        *action = PX_RELAY_DROP_STOP;
        return true;
    }
    if (type == 'E') {
        /* PostgreSQL skips the rest of the Query, or of the group up to its Sync: the
         * client's statements never ran */
        s->begin_prefix = false;
        s->begin_failed = true;
    }
    return false; /* the error, a notice: the client's as always */
}

enum px_relay_action px_txn_begin_failed_ready(struct px_server *s, struct evbuffer *out)
{
    s->begin_failed = false;
    struct px_client *c = s->client;
    if (c) {
        if (!px_txn_hold_failed_block(c) || px_wire_ready(out, 'E') < 0)
            return PX_RELAY_CLOSE;
        px_session_ready(c, 'E');
    }
    return PX_RELAY_DROP;
}

void px_txn_detached(struct px_client *c)
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
        px_txn_idle_input(c); /* what it sent while its batched query ran */
}

void px_txn_client_free(struct px_client *c)
{
    px_txn_drop_begin(c);
    px_local_forget(c);
}
