/*
 * outcome.c: the outcome of a COMMIT whose server connection was lost (see outcome.h).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "metrics/metrics.h"
#include "net/client.h"
#include "path/outcome.h"
#include "path/expect.h"
#include "path/path.h"
#include "path/retry.h"
#include "path/session.h"
#include "pool/pool.h"

/* How long an answer is looked for, and how often an "in progress" is asked again. */
#define OUTCOME_WAIT_MS 10000
#define OUTCOME_POLL_MS 100

#define XID_SQL "SELECT pg_catalog.pg_current_xact_id_if_assigned()"

struct px_outcome {
    struct px_client *c;
    uint64_t xid;
    uint64_t deadline_ms;
    struct event *timer;
    bool asked; /* the status query was sent and its reply is not in */
    bool ready; /* the answer ends with ReadyForQuery (see answer) */
};

void px_outcome_commit_sent(struct px_client *c, struct evbuffer *out, bool quiescent)
{
    struct px_server *s = c->server;
    s->commit_inflight = true;
    s->xid_known = false;
    if (!c->retry || !quiescent || s->txn_status != 'T')
        return; /* outside a live block there is nothing to learn (or no safe place) */
    if (px_wire_query(out, XID_SQL) < 0)
        return;
    s->capture_skip = s->hidden_queries; /* the replies of hidden queries before it */
    s->hidden_queries++;
    s->capture = PX_CAPTURE_XID;
}

bool px_outcome_commit_query(struct px_client *c, struct evbuffer *out, bool quiescent,
                             const uint8_t *body, uint32_t len)
{
    struct px_server *s = c->server;
    s->commit_inflight = true;
    s->xid_known = false;
    if (!c->retry || !quiescent || s->txn_status != 'T' || len == 0 || body[len - 1] != '\0')
        return false;
    if (px_wire_query_prefixed(out, XID_SQL, sizeof(XID_SQL) - 1, body, len) < 0)
        return false;
    s->xid_prefix = true;
    s->prefix_done = false;
    s->captured_null = true;
    return true;
}

void px_outcome_commit_parse(struct px_client *c, struct evbuffer *out, bool quiescent,
                             const uint8_t *body, uint32_t len)
{
    struct px_server *s = c->server;
    if (len == 0 || body[0] != '\0') {
        px_outcome_commit_sent(c, out, quiescent);
        return;
    }
    s->commit_inflight = true;
    s->xid_known = false;
    if (!c->retry || !quiescent || s->txn_status != 'T')
        return;
    /* Parse "" XID_SQL with no parameter types (the literal's own terminator is the second
     * byte of the count), Bind "" "" with no formats, parameters or result formats (text),
     * Execute "" for all rows; room first, so that nothing is written on a failure */
    static const char parse[] = "\0" XID_SQL "\0\0";
    static const uint8_t zeros[8];
    if (evbuffer_expand(out, 3 * 5 + sizeof(parse) + 8 + 5) < 0 ||
        px_wire_msg(out, 'P', parse, sizeof(parse)) < 0 || px_wire_msg(out, 'B', zeros, 8) < 0 ||
        px_wire_msg(out, 'E', zeros, 5) < 0)
        return;
    s->xid_prefix = true;
    s->prefix_done = false;
    s->captured_null = true;
}

bool px_outcome_prefix_reply(struct px_server *s, char type, const uint8_t *body, uint32_t len,
                             enum px_relay_action *action)
{
    switch (type) {
    case '1': /* ParseComplete, BindComplete: the extended form's */
    case '2':
    case 'T': *action = PX_RELAY_DROP; return true;
    case 'D':
        px_expect_capture_value(s, body, len);
        *action = PX_RELAY_DROP;
        return true;
    case 'C':
        s->xid_prefix = false;
        s->xid_known = true;
        s->xid = s->captured_null ? 0 : strtoull(s->captured, NULL, 10);
        s->prefix_done = true;
        *action = PX_RELAY_DROP_STOP;
        return true;
    case 'E':
        /* The SELECT failed (a cancel, or the backend terminated: FATAL): PostgreSQL never
         * ran the COMMIT, since a backend sends its replies in order and the SELECT's
         * CommandComplete would be before it.  The outcome is known (nothing committed),
         * and the error is the client's answer, as for any other statement. */
        s->xid_prefix = false;
        s->commit_inflight = false;
        return false;
    default: return false; /* a notice, a parameter: the client's as always */
    }
}

bool px_outcome_pending(const struct px_client *c)
{
    return c->outcome != NULL;
}

void px_outcome_client_free(struct px_client *c)
{
    struct px_outcome *o = c->outcome;
    if (!o)
        return;
    c->outcome = NULL;
    if (o->timer)
        event_free(o->timer);
    free(o);
}

enum answer { ANSWER_COMMITTED, ANSWER_NOTHING_WRITTEN, ANSWER_ABORTED, ANSWER_UNKNOWN };

/* The client's COMMIT gets its answer; in session pooling its session is gone after it.
 * ready: ReadyForQuery follows, as for a simple Query, or an extended-protocol group whose
 * Sync went to the lost server; without it, the client's Sync, still to be relayed, gets
 * it.  False when the client was failed. */
static bool answer(struct px_client *c, enum answer a, bool ready)
{
    static const unsigned label[] = {
        [ANSWER_COMMITTED] = PX_MCO_COMMITTED,
        [ANSWER_NOTHING_WRITTEN] = PX_MCO_READ_ONLY,
        [ANSWER_ABORTED] = PX_MCO_ABORTED,
        [ANSWER_UNKNOWN] = PX_MCO_UNKNOWN,
    };
    px_metrics_inc(NULL, PX_M_COMMIT_OUTCOMES, label[a]);
    px_outcome_client_free(c);
    struct evbuffer *out = px_path_client_out(c);
    switch (a) {
    case ANSWER_COMMITTED:
    case ANSWER_NOTHING_WRITTEN:
        px_info("outcome", 'C', c->id, "the COMMIT whose server was lost %s",
                a == ANSWER_COMMITTED ? "committed" : "wrote nothing: answered COMMIT");
        px_session_ready(c, 'I');
        px_wire_msg(out, 'C', "COMMIT", sizeof("COMMIT"));
        break;
    case ANSWER_ABORTED:
        px_info("outcome", 'C', c->id, "the COMMIT whose server was lost did not commit");
        px_session_error(c);
        px_session_ready(c, 'I');
        px_wire_error(out, PX_SEV_ERROR, "40000",
                      "the transaction was rolled back: its server connection was lost "
                      "before COMMIT completed",
                      NULL);
        break;
    case ANSWER_UNKNOWN:
        px_info("outcome", 'C', c->id, "the outcome of a COMMIT whose server was lost is unknown");
        px_session_error(c);
        px_session_ready(c, 'I');
        px_wire_error(out, PX_SEV_ERROR, "40003",
                      "the server connection was lost after COMMIT was sent: whether the "
                      "transaction committed is unknown",
                      NULL);
        break;
    }
    if (ready)
        px_wire_ready(out, 'I');
    if (c->pool->mode == PX_POOL_SESSION) {
        /* its session went with the server: after the answer it cannot go on */
        px_client_fatal(c, PX_SQLSTATE_CONNECTION_FAILURE,
                        "server connection lost: the session cannot continue");
        return false;
    }
    return true;
}

/* Asks c's server (hidden) for the status of the transaction. */
static void ask(struct px_client *c)
{
    struct px_outcome *o = c->outcome;
    struct px_server *s = c->server;
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT pg_catalog.pg_xact_status('%" PRIu64 "'::pg_catalog.xid8)",
             o->xid);
    if (px_wire_query(bufferevent_get_output(s->bev), sql) < 0) {
        answer(c, ANSWER_UNKNOWN, o->ready);
        return;
    }
    s->capture_skip = s->hidden_queries; /* a re-sync prelude may be before it */
    s->hidden_queries++;
    s->capture = PX_CAPTURE_STATUS;
    s->captured_null = true;
    s->captured[0] = '\0';
    o->asked = true;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct px_client *c = arg;
    struct px_outcome *o = c->outcome;
    if (!o)
        return;
    if (px_now_ms() >= o->deadline_ms) {
        if (c->state == PX_CL_WAITING) {
            px_metrics_inc(NULL, PX_M_COMMIT_OUTCOMES, PX_MCO_UNKNOWN);
            px_outcome_client_free(c);
            px_client_fatal(c, "40003",
                            "the server connection was lost after COMMIT was sent: whether the "
                            "transaction committed is unknown (no server to ask in time)");
            return;
        }
        answer(c, ANSWER_UNKNOWN, o->ready);
        return;
    }
    if (c->server && c->server->state == PX_SV_ACTIVE) {
        ask(c); /* still in progress a moment ago */
        return;
    }
    if (c->state == PX_CL_IDLE)
        px_pool_request_server(c->pool, c); /* linked: px_outcome_linked */
    if (c->outcome == o && c->state == PX_CL_WAITING) {
        /* No server for the question yet: the bound holds while the client waits for one
         * (out of the queue it can only go as a failed client). */
        uint64_t left = o->deadline_ms - px_now_ms();
        struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
        evtimer_add(o->timer, &tv);
    }
}

bool px_outcome_server_lost(struct px_client *c, struct px_server *s)
{
    if (!s->commit_inflight || !c->retry || c->outcome || c->state != PX_CL_ACTIVE)
        return false;
    /* One answer stands for the COMMIT alone: requests pipelined with it went down with
     * the server unanswered (they may have run), a retryable error at the COMMIT held back
     * by the retry stage is an answer the client has not had, and a replay's answer would
     * be compared with what the client saw and dropped.  Both are a lost
     * connection, as without pgwarden. */
    if (s->pending_ready > 1 || px_retry_holding(c) || px_retry_replaying(c))
        return false;
    px_info("outcome", 'C', c->id, "server lost after COMMIT was sent (transaction id %s)",
            !s->xid_known ? "unknown"
            : s->xid      ? "known"
                          : "none: nothing written");
    px_client_set_state(c, PX_CL_IDLE);
    /* An extended-protocol COMMIT whose Sync was not sent yet (a disconnect injected at the
     * Execute, path/fault.h): that Sync, relayed later, gets the ReadyForQuery.  In session
     * pooling the client is ended right after the answer: ReadyForQuery at once. */
    bool ready = s->pending_ready > 0 || c->pool->mode == PX_POOL_SESSION;
    if (!s->xid_known) {
        answer(c, ANSWER_UNKNOWN, ready);
        return true;
    }
    if (s->xid == 0) {
        answer(c, ANSWER_NOTHING_WRITTEN, ready);
        return true;
    }
    struct px_outcome *o = calloc(1, sizeof(*o));
    if (!o || !(o->timer = evtimer_new(px.base, on_timer, c))) {
        free(o);
        answer(c, ANSWER_UNKNOWN, ready);
        return true;
    }
    o->c = c;
    o->ready = ready;
    o->xid = s->xid;
    o->deadline_ms = px_now_ms() + OUTCOME_WAIT_MS;
    c->outcome = o;
    /* Not from inside the closing of s: a server is asked for at the next turn. */
    struct timeval now = {0, 0};
    evtimer_add(o->timer, &now);
    return true;
}

void px_outcome_linked(struct px_client *c)
{
    if (c->outcome && !c->outcome->asked)
        ask(c);
}

bool px_outcome_hidden_done(struct px_client *c)
{
    struct px_outcome *o = c->outcome;
    if (!o || !o->asked)
        return true;
    struct px_server *s = c->server;
    o->asked = false;
    if (!s->captured_null && !strcmp(s->captured, "committed"))
        return answer(c, ANSWER_COMMITTED, o->ready);
    if (!s->captured_null && !strcmp(s->captured, "aborted"))
        return answer(c, ANSWER_ABORTED, o->ready);
    if (!s->captured_null && !strcmp(s->captured, "in progress") &&
        px_now_ms() + OUTCOME_POLL_MS < o->deadline_ms) {
        struct timeval tv = {0, OUTCOME_POLL_MS * 1000};
        evtimer_add(o->timer, &tv);
        return true;
    }
    return answer(c, ANSWER_UNKNOWN, o->ready);
}
