/*
 * fault.c: the fault-injection stage (see fault.h).
 */
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

static void on_latency_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct px_client *c = arg;
    c->fault_waiting = false;
    c->fault_passed = true; /* the delayed message goes on without another draw */
    px_path_client_input(c);
}

/* What the statement is to the rules: commit, statement, or nothing (other transaction
 * control is never injected into). */
static bool query_when(const uint8_t *body, uint32_t len, enum px_chaos_when *when)
{
    struct px_sql_info info;
    size_t n = len > 0 && body[len - 1] == '\0' ? len - 1 : len;
    px_sql_classify((const char *)body, n, &info);
    if (info.kind == PX_SQL_COMMIT) {
        *when = PX_CHAOS_COMMIT;
        return true;
    }
    if (info.kind == PX_SQL_BEGIN || info.kind == PX_SQL_ROLLBACK || info.kind == PX_SQL_EMPTY)
        return false;
    *when = PX_CHAOS_STATEMENT;
    return true;
}

/* Writes the injected error as the answer to the current message and fails the statement
 * on both sides. */
static void inject_error(struct px_client *c, const struct px_chaos_action *a, bool simple,
                         bool commit)
{
    struct evbuffer *out = px_path_client_out(c);
    px_wire_error(out, PX_SEV_ERROR, a->sqlstate, a->message, NULL);
    if (commit && simple) {
        px_txn_commit_failed(c);
        px_locks_txn_end(c); /* the transaction ended */
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
        if (c->fault_unnamed_portal == PX_FAULT_STMT_TXN_CONTROL)
            return PX_FAULT_NONE; /* BEGIN, ROLLBACK through the extended protocol */
        if (c->fault_unnamed_portal == PX_FAULT_STMT_COMMIT)
            when = PX_CHAOS_COMMIT;
    }
    struct px_chaos_ctx ctx = {.when = when,
                               .database = c->database,
                               .user = c->user,
                               .application_name = c->application_name,
                               .client_id = c->id,
                               .holds_lock = holds_lock,
                               .arg = c};
    struct px_chaos_action a;
    if (!may_answer) {
        /* An error must follow the server's replies to what was sent before: decide once
         * everything is answered (the draw is made then, once). */
        return PX_FAULT_HOLD;
    }
    if (!px_chaos_decide(&ctx, &a)) /* logs the injection */
        return PX_FAULT_NONE;
    switch (a.kind) {
    case PX_CHAOS_ERROR:
        inject_error(c, &a, type == 'Q', when == PX_CHAOS_COMMIT);
        return PX_FAULT_ANSWERED;
    case PX_CHAOS_LATENCY: {
        if (!c->fault_timer && !(c->fault_timer = evtimer_new(px.base, on_latency_done, c)))
            return PX_FAULT_NONE;
        struct timeval tv = {(time_t)(a.latency_ms / 1000),
                             (suseconds_t)(a.latency_ms % 1000) * 1000};
        c->fault_waiting = true;
        evtimer_add(c->fault_timer, &tv);
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

void px_fault_note_parse(struct px_client *c, const uint8_t *body, uint32_t len)
{
    const char *name;
    const uint8_t *content;
    uint32_t clen;
    if (px_parse_split(body, len, &name, &content, &clen) < 0 || *name)
        return;
    struct px_sql_info info;
    const char *q = (const char *)content;
    px_sql_classify(q, strnlen(q, clen), &info);
    c->fault_unnamed_stmt =
        info.kind == PX_SQL_COMMIT ? PX_FAULT_STMT_COMMIT
        : info.kind == PX_SQL_BEGIN || info.kind == PX_SQL_ROLLBACK || info.kind == PX_SQL_EMPTY
            ? PX_FAULT_STMT_TXN_CONTROL
            : PX_FAULT_STMT_OTHER;
}

void px_fault_note_bind(struct px_client *c, const uint8_t *body, uint32_t len)
{
    /* Bind: portal name, statement name, ... */
    const char *portal = (const char *)body;
    size_t n = strnlen(portal, len);
    if (n != 0 || len < 2)
        return; /* a named portal (its Executes are statements), or malformed */
    size_t m = strnlen(portal + 1, len - 1);
    c->fault_unnamed_portal = m == 0 ? c->fault_unnamed_stmt : PX_FAULT_STMT_OTHER;
}

void px_fault_client_free(struct px_client *c)
{
    if (c->fault_timer)
        event_free(c->fault_timer);
    c->fault_timer = NULL;
}
