/*
 * fault.c: the fault-injection stage (see fault.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "base/log.h"
#include "net/client.h"
#include "net/server.h"
#include "path/fault.h"
#include "path/locks.h"
#include "path/path.h"
#include "path/prepared.h"
#include "path/sqlscan.h"
#include "path/txn.h"

#define FAULT_NAMES_MAX 16

/* What fault injection keeps per client, allocated when first needed (a latency rule's
 * timer, a named statement to remember): an idle client carries one pointer.
 *
 * names: the client's named statements that are not plain statements (transaction
 * control, housekeeping; session pooling), by name as PostgreSQL keeps it
 * (PX_STMT_NAME_MAX bytes).  A name whose statement went away (Close, DEALLOCATE) may
 * stay: it can only be bound again after a new Parse of it, which replaces the entry; the
 * least recently bound entry makes room. */
struct px_client_fault {
    struct event *timer; /* a statement delayed by a latency rule waits on it */
    uint32_t clock;      /* bumped at every put or hit */
    uint8_t n;
    struct {
        uint32_t used;
        uint8_t kind; /* enum px_fault_stmt, never PX_FAULT_STMT_OTHER */
        char name[PX_STMT_NAME_MAX + 1];
    } e[FAULT_NAMES_MAX];
};

static struct px_client_fault *fault_of(struct px_client *c)
{
    if (!c->fault)
        c->fault = calloc(1, sizeof(*c->fault));
    return c->fault;
}

/* Whether c holds the pgwarden lock key (rules with lock_key). */
static bool holds_lock(void *arg, const char *key, size_t keylen)
{
    struct px_client *c = arg;
    struct lockmgr *lm = px_locks_manager();
    struct lockmgr_owner *o = px_locks_owner(c);
    if (!lm || !o)
        return false;
    struct lockmgr_snapshot *snap = lockmgr_snapshot(lm, o, key, keylen);
    bool held = snap && snap->nholders > 0;
    lockmgr_snapshot_free(snap);
    return held;
}

/* What the rules see of c's statement. */
static struct px_chaos_ctx ctx_of(struct px_client *c, enum px_chaos_when when)
{
    struct px_chaos_ctx ctx = {.when = when,
                               .database = c->database,
                               .user = c->user,
                               .application_name = c->application_name,
                               .client_id = c->id,
                               .holds_lock = holds_lock,
                               .arg = c};
    return ctx;
}

static void on_latency_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct px_client *c = arg;
    c->fault_waiting = false;
    c->fault_passed = true; /* the delayed message goes on without another draw */
    px_path_client_input(c);
}

/* What a statement of this kind is to the rules. */
static enum px_fault_stmt kind_of(enum px_sql_kind kind)
{
    switch (kind) {
    case PX_SQL_COMMIT: return PX_FAULT_STMT_COMMIT;
    case PX_SQL_BEGIN:
    case PX_SQL_ROLLBACK:
    case PX_SQL_EMPTY:
    /* a driver's housekeeping: psycopg 3 sends DEALLOCATE ALL after a ROLLBACK and ignores
     * its errors, so an injection there would be counted and never seen */
    case PX_SQL_DEALLOCATE:
    case PX_SQL_DEALLOCATE_ALL:
    case PX_SQL_DISCARD_ALL: return PX_FAULT_STMT_NEVER;
    case PX_SQL_OTHER: break;
    }
    return PX_FAULT_STMT_OTHER;
}

/* Transaction control is short: a longer statement text is not scanned (a long query
 * bound again and again costs no scan per Execute). */
#define CONTROL_TEXT_MAX 256

/* What the statement text (content of a Parse: query\0 ...; clen bytes) is to the rules. */
static enum px_fault_stmt text_kind(const uint8_t *content, uint32_t clen)
{
    const char *q = (const char *)content;
    size_t n = strnlen(q, clen);
    if (n > CONTROL_TEXT_MAX)
        return PX_FAULT_STMT_OTHER;
    struct px_sql_info info;
    px_sql_classify(q, n, &info);
    return kind_of(info.kind);
}

/* What the statement is to the rules: commit, statement, or nothing (other transaction
 * control is never injected into). */
static bool query_when(const uint8_t *body, uint32_t len, enum px_chaos_when *when)
{
    struct px_sql_info info;
    size_t n = len > 0 && body[len - 1] == '\0' ? len - 1 : len;
    px_sql_classify((const char *)body, n, &info);
    switch (kind_of(info.kind)) {
    case PX_FAULT_STMT_COMMIT: *when = PX_CHAOS_COMMIT; return true;
    case PX_FAULT_STMT_NEVER: return false;
    case PX_FAULT_STMT_OTHER: break;
    }
    *when = PX_CHAOS_STATEMENT;
    return true;
}

/* SQLSTATEs that end the connection: PostgreSQL sends these only as FATAL (or, 57P02,
 * just before it drops the connection), and pgwarden sends 08006 so when a server is lost.
 * An injected one ends the client's connection too, so that a chaos test exercises the
 * reconnect a driver and its pool really do, not a connection that goes on working. */
static bool ends_connection(const char *sqlstate)
{
    static const char *const codes[] = {"57P01", "57P02", "57P03", "57P05", "25P03", "08006"};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (!strcmp(sqlstate, codes[i]))
            return true;
    return false;
}

/* Writes the injected error as the answer to the current message and fails the statement
 * on both sides. */
static void inject_error(struct px_client *c, const struct px_chaos_action *a, bool simple,
                         bool commit)
{
    struct evbuffer *out = px_path_client_out(c);
    px_wire_error(out, PX_SEV_ERROR, a->sqlstate, a->message, NULL);
    if (commit) {
        px_txn_commit_failed(c, simple);
        if (simple)
            px_locks_txn_end(c); /* ended (extended: at the ReadyForQuery of its Sync) */
    } else {
        px_txn_statement_failed(c, simple);
    }
    if (simple)
        px_wire_ready(out, c->server ? c->server->txn_status : px_txn_unlinked_status(c));
}

enum px_fault_verdict px_fault_message(struct px_client *c, char type, const uint8_t *body,
                                       uint32_t len, bool may_answer)
{
    if (c->fault_passed) { /* delayed already: it goes on */
        c->fault_passed = false;
        return PX_FAULT_NONE;
    }
    if (c->fault_waiting)
        return PX_FAULT_HOLD;
    enum px_chaos_when when = PX_CHAOS_STATEMENT;
    if (type == 'Q' && !query_when(body, len, &when))
        return PX_FAULT_NONE;
    if (type == 'E' && len > 0 && body[0] == '\0') { /* the unnamed portal */
        if (c->fault_unnamed_portal == PX_FAULT_STMT_NEVER)
            return PX_FAULT_NONE; /* BEGIN, ROLLBACK through the extended protocol */
        if (c->fault_unnamed_portal == PX_FAULT_STMT_COMMIT)
            when = PX_CHAOS_COMMIT;
    }
    struct px_chaos_ctx ctx = ctx_of(c, when);
    struct px_chaos_action a;
    if (!may_answer) {
        /* An error must follow the server's replies to what was sent before: decide once
         * everything is answered (the draw is made then, once).  Not when no rule is for
         * this statement: the wait costs a round trip to the server. */
        return px_chaos_matches(&ctx) ? PX_FAULT_HOLD : PX_FAULT_NONE;
    }
    /* A COMMIT outside a transaction block only gets a warning from PostgreSQL: it has
     * nothing to fail or to lose, so commit rules leave it alone.  (Known only now, with
     * every reply before it in: a BEGIN pipelined ahead of it sets the status.) */
    if (when == PX_CHAOS_COMMIT && !px_txn_in_block(c) &&
        (!c->server || c->server->txn_status != 'T'))
        return PX_FAULT_NONE;
    if (!px_chaos_decide(&ctx, &a)) /* logs the injection */
        return PX_FAULT_NONE;
    switch (a.kind) {
    case PX_CHAOS_ERROR:
        if (ends_connection(a.sqlstate)) {
            /* after the replies owed before it, as everything pgwarden answers */
            px_wire_error(px_path_client_out(c), PX_SEV_FATAL, a.sqlstate, a.message, NULL);
            px_client_fatal(c, NULL, NULL); /* closed once written; the server is reset */
            return PX_FAULT_CLOSED;
        }
        inject_error(c, &a, type == 'Q', when == PX_CHAOS_COMMIT);
        return PX_FAULT_ANSWERED;
    case PX_CHAOS_LATENCY: {
        struct px_client_fault *f = fault_of(c);
        if (!f || (!f->timer && !(f->timer = evtimer_new(px.base, on_latency_done, c))))
            return PX_FAULT_NONE;
        struct timeval tv = {(time_t)(a.latency_ms / 1000),
                             (suseconds_t)(a.latency_ms % 1000) * 1000};
        c->fault_waiting = true;
        evtimer_add(f->timer, &tv);
        return PX_FAULT_HOLD;
    }
    case PX_CHAOS_DISCONNECT:
        if (when == PX_CHAOS_COMMIT)
            return PX_FAULT_DISCONNECT;
        px_server_close(c->server, "chaos: disconnect injected");
        return PX_FAULT_CLOSED;
    case PX_CHAOS_NONE: break;
    }
    return PX_FAULT_NONE;
}

/* ---- named statements in session pooling ---------------------------------------------- */

static int names_find(const struct px_client_fault *fn, const char *name)
{
    for (int i = 0; fn && i < fn->n; i++)
        if (strncmp(fn->e[i].name, name, PX_STMT_NAME_MAX) == 0)
            return i;
    return -1;
}

static void names_put(struct px_client *c, const char *name, enum px_fault_stmt kind)
{
    struct px_client_fault *fn = fault_of(c);
    if (!fn) {
        px_warning("chaos", 'C', c->id, "out of memory: named statement \"%s\" not recorded", name);
        return;
    }
    int i = names_find(fn, name);
    if (i < 0 && fn->n < FAULT_NAMES_MAX)
        i = fn->n++;
    if (i < 0) { /* full: the least recently bound goes */
        i = 0;
        for (int j = 1; j < fn->n; j++)
            if (fn->e[j].used < fn->e[i].used)
                i = j;
    }
    snprintf(fn->e[i].name, sizeof(fn->e[i].name), "%s", name);
    fn->e[i].kind = (uint8_t)kind;
    fn->e[i].used = ++fn->clock;
}

static void names_drop(struct px_client_fault *fn, const char *name)
{
    int i = names_find(fn, name);
    if (i >= 0)
        fn->e[i] = fn->e[--fn->n];
}

/* What the named statement name of c is to the rules. */
static enum px_fault_stmt named_kind(struct px_client *c, const char *name)
{
    if (c->pool->mode == PX_POOL_TRANSACTION) {
        struct px_stmt *stmt = px_stmt_map_get(&c->stmts, name);
        if (!stmt)
            return PX_FAULT_STMT_OTHER; /* not the client's: PostgreSQL answers 26000 */
        uint32_t clen;
        const uint8_t *content = px_stmt_content(stmt, &clen);
        return text_kind(content, clen);
    }
    struct px_client_fault *fn = c->fault;
    int i = names_find(fn, name);
    if (i < 0)
        return PX_FAULT_STMT_OTHER;
    fn->e[i].used = ++fn->clock;
    return (enum px_fault_stmt)fn->e[i].kind;
}

void px_fault_note_parse(struct px_client *c, const uint8_t *body, uint32_t len)
{
    bool unnamed = len > 0 && body[0] == '\0';
    if (unnamed ? !px_chaos_active() : c->pool->mode == PX_POOL_TRANSACTION)
        return; /* (transaction pooling: the statement map has the text) */
    const char *name;
    const uint8_t *content;
    uint32_t clen;
    if (px_parse_split(body, len, &name, &content, &clen) < 0)
        return; /* malformed: PostgreSQL says so */
    enum px_fault_stmt kind = text_kind(content, clen);
    if (unnamed)
        c->fault_unnamed_stmt = (uint8_t)kind;
    else if (kind != PX_FAULT_STMT_OTHER)
        names_put(c, name, kind);
    else
        names_drop(c->fault, name);
}

void px_fault_note_long_parse(struct px_client *c, const uint8_t *head, uint32_t len)
{
    const char *name = (const char *)head;
    if (!memchr(head, '\0', len))
        return; /* malformed (or a name longer than the head): PostgreSQL says so */
    if (!*name)
        c->fault_unnamed_stmt = PX_FAULT_STMT_OTHER;
    else if (c->pool->mode != PX_POOL_TRANSACTION)
        names_drop(c->fault, name);
}

bool px_fault_note_bind(struct px_client *c, const uint8_t *body, uint32_t len)
{
    /* Bind: portal name, statement name, ... */
    const char *portal = (const char *)body;
    size_t n = strnlen(portal, len);
    if (n + 1 >= len || !memchr(body + n + 1, '\0', len - n - 1))
        return false; /* malformed (PostgreSQL says so), or names longer than the head */
    const char *stmt = portal + n + 1;
    enum px_fault_stmt kind =
        *stmt ? named_kind(c, stmt) : (enum px_fault_stmt)c->fault_unnamed_stmt;
    if (n == 0)
        c->fault_unnamed_portal = (uint8_t)kind; /* a named portal's Executes are statements */
    if (!*stmt || kind != PX_FAULT_STMT_COMMIT)
        return false;
    struct px_chaos_ctx ctx = ctx_of(c, PX_CHAOS_COMMIT);
    return px_chaos_matches(&ctx);
}

void px_fault_client_free(struct px_client *c)
{
    if (c->fault && c->fault->timer)
        event_free(c->fault->timer);
    free(c->fault);
    c->fault = NULL;
}
