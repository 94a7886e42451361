/*
 * chaos.h: fault-injection rules (SPEC section 7): the rule table and its decisions.  No
 * I/O and no knowledge of connections: the statement path (path/fault.c) and the pool
 * (connect rules) describe the traffic in a struct px_chaos_ctx and apply what
 * px_chaos_decide() returns; the admin port adds, lists and removes rules as JSON.
 *
 * A rule (the same names as JSON fields and as [chaos] parameters):
 *   inject       error | latency | disconnect
 *   sqlstate     error: the SQLSTATE the client gets (5 characters, [0-9A-Z]; required)
 *   message      error: its message (default: PostgreSQL's text for that SQLSTATE where
 *                pgwarden knows one, else "injected fault")
 *   latency_ms   latency: added before the statement goes to the server (required)
 *   when         statement (default) | commit | connect
 *   probability  0 < p <= 1 with seed (a run is reproducible: the same sequence of
 *                matching statements gets the same injections), or
 *   every_n      every n-th matching statement (n >= 1); neither: every matching one
 *   seed         the PRNG seed (default 1)
 *   max_count    stop injecting after this many (0 / absent: no limit)
 *   database, user, application_name   exact matches; absent: any
 *   lock_key     only statements of clients that hold this pgwarden lock
 * Unknown fields, wrong types and bad values are refused with a message naming the field
 * (HTTP 400); nothing is half-applied.  Each rule gets an id (1, 2, ... never reused).
 *
 * Cost: with no rules px_chaos_decide() is one load and one branch (px_chaos_active()).
 * Event loop thread only.
 */
#ifndef PGW_PROXY_CHAOS_H
#define PGW_PROXY_CHAOS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum px_chaos_when { PX_CHAOS_STATEMENT = 0, PX_CHAOS_COMMIT = 1, PX_CHAOS_CONNECT = 2 };
enum px_chaos_kind { PX_CHAOS_NONE = 0, PX_CHAOS_ERROR, PX_CHAOS_LATENCY, PX_CHAOS_DISCONNECT };

/* What the traffic is: borrowed strings, valid for the call (NULL reads as ""). */
struct px_chaos_ctx {
    enum px_chaos_when when;
    const char *database, *user, *application_name;
    /* The client's id, for the log line of an injection ("C-17"); 0: none. */
    uint64_t client_id;
    /* Whether the client holds the pgwarden lock key (rules with lock_key); NULL: holds
     * none. */
    bool (*holds_lock)(void *arg, const char *key, size_t keylen);
    void *arg;
};

/* What to inject.  message points into the rule table: valid until the next change of the
 * rules (copy it before returning to the event loop). */
struct px_chaos_action {
    enum px_chaos_kind kind;
    uint64_t rule_id;
    char sqlstate[6];
    const char *message;
    uint32_t latency_ms;
};

/* Number of rules (0: nothing can match). */
extern size_t px_chaos_nrules;
static inline bool px_chaos_active(void)
{
    return px_chaos_nrules != 0;
}

/*
 * Rules are looked at in id order.  The first rule that matches ctx and fires (its
 * probability / every_n / max_count say so) decides; that rule's counters move and the
 * injection is counted in the metrics and logged at info.  A rule that matches counts the
 * statement in "matched" whether or not it fires; rules after the one that decides do not
 * see the statement.  Returns false (out->kind NONE) when nothing is injected.
 */
bool px_chaos_decide(const struct px_chaos_ctx *ctx, struct px_chaos_action *out);

/*
 * Whether some rule matches ctx (its filters and when), without counting, drawing or
 * logging anything: when none does, px_chaos_decide would inject nothing either.  The path
 * asks it before it waits to be able to answer (fault.h), so that rules for other traffic
 * cost no wait.
 */
bool px_chaos_matches(const struct px_chaos_ctx *ctx);

/* ---- the rule table (admin port, config) ---------------------------------------------- */

/*
 * Adds a rule from a JSON object text (POST /chaos).  Returns the new rule as JSON text
 * (owned, free()) with its id and counters, or NULL with *errmsg (owned): why it was
 * refused, naming the field.
 */
char *px_chaos_add_json(const char *json, size_t len, char **errmsg);
/* Adds a rule from the parameters of a [chaos] line: name = inject=error sqlstate=40001 ...
 * (libpq-style key=value, values may be single-quoted).  0, or -1 with *errmsg (owned). */
int px_chaos_add_config(const char *name, const char *params, char **errmsg);
/* GET /chaos: an array of every rule in id order, each with its id, name (config rules),
 * source ("config" | "api"), every field (null where not given or not applying), and the
 * counters "matched" (statements the rule looked at) and "injected".  Owned JSON text;
 * NULL when out of memory. */
char *px_chaos_list_json(void);
/* DELETE /chaos/<id>: true when there was such a rule. */
bool px_chaos_remove(uint64_t id);
/* DELETE /chaos: removes every rule; returns how many. */
size_t px_chaos_clear(void);
/* Frees everything (exit; tests): the next rule gets id 1 again.  Call before
 * px_metrics_shutdown(). */
void px_chaos_shutdown(void);

/* At most this many rules at once: POST /chaos and px_chaos_add_* refuse more. */
#define PX_CHAOS_MAX_RULES 1000

/* ---- [chaos] rules of the config file (main.c: start, --check, reload) ---------------- */

struct px_config;
/* A parsed, validated set of [chaos] lines, not in effect yet. */
struct px_chaos_rules;

/*
 * Parses and validates every [chaos] line of cfg (borrowed), touching no rule in effect.
 * Returns the set (owned: px_chaos_config_install or px_chaos_rules_free; empty when cfg
 * has no [chaos] line), or NULL with *errmsg (owned) "FILE:LINE: [chaos] NAME: why".
 */
struct px_chaos_rules *px_chaos_config_parse(const struct px_config *cfg, char **errmsg);
/*
 * Makes rules (taken over) the config rules; cannot fail.  A config rule whose name and
 * fields are unchanged keeps its id, counters and PRNG state; the other config rules in
 * effect are removed and the new ones appended with new ids.  Rules added over the admin
 * port stay.
 */
void px_chaos_config_install(struct px_chaos_rules *rules);
/* NULL is a no-op. */
void px_chaos_rules_free(struct px_chaos_rules *rules);

#endif
