/*
 * session.c: session state that follows a client (see session.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "net/client.h"
#include "path/prepared.h"
#include "path/session.h"
#include "pool/pool.h"

/* The client's value of a reported parameter: what it changed since its welcome, else what
 * the welcome said. */
static const char *client_value(const struct px_client *c, const char *name)
{
    const char *v = c->vars ? px_params_get(c->vars, name) : NULL;
    if (!v && c->welcome)
        v = px_params_get(&c->welcome->params, name);
    return v;
}

int px_session_reported(struct px_client *c, const char *name, const char *value)
{
    if (!strcmp(name, "application_name")) {
        char *v = strdup(value);
        if (v) {
            free(c->application_name);
            c->application_name = v;
        }
    }
    if (c->pool->mode != PX_POOL_TRANSACTION)
        return 0;
    const char *v = client_value(c, name);
    if (v && !strcmp(v, value))
        return 0;
    if (!c->vars && !(c->vars = calloc(1, sizeof(*c->vars))))
        return -1;
    return px_params_set(c->vars, name, value);
}

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

/* The client's value of tracked slot i. */
static const char *client_tracked(const struct px_client *c, int i)
{
    const char *v = c->vars ? c->vars->tracked[i] : NULL;
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

bool px_session_same_params(const struct px_client *a, const struct px_client *b)
{
    for (int i = 0; i < PX_TRACKED_PARAMS; i++) {
        const char *va = client_tracked(a, i), *vb = client_tracked(b, i);
        if (va != vb && (!va || !vb || strcmp(va, vb) != 0))
            return false;
    }
    return true;
}

static bool state_prelude(struct px_client *c, struct px_server *s, struct evbuffer *sql, int *rc);

bool px_session_resync(struct px_client *c)
{
    struct px_server *s = c->server;
    struct evbuffer *sql = NULL;
    int rc = 0;
    if (s->pool->mode == PX_POOL_TRANSACTION && (c->sstate || s->sstate_owner)) {
        if (!(sql = evbuffer_new()))
            return false;
        state_prelude(c, s, sql, &rc);
        if (rc) {
            evbuffer_free(sql);
            return false;
        }
    }
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
    if (!sql)
        return true;
    if (evbuffer_get_length(sql) == 0) {
        evbuffer_free(sql);
        return true;
    }
    const char *text = evbuffer_add(sql, "", 1) == 0 ? (char *)evbuffer_pullup(sql, -1) : NULL;
    if (text) {
        px_wire_query(bufferevent_get_output(s->bev), text);
        s->hidden_queries++;
    }
    evbuffer_free(sql);
    return text != NULL;
}

/* ---- session state that follows the client ------------------------------------------- */

/* One change of session state: while pending, waiting for its statement's ReadyForQuery
 * (remaining of them still to come) or for the end of its transaction block; once applied,
 * an entry of the client's state, replayed on every server the client gets. */
struct px_sstate_change {
    struct px_sstate_change *next;
    uint8_t kind;   /* enum px_sql_state, or CH_DEALLOCATE / CH_DEALLOCATE_ALL / CH_DISCARD */
    bool reset;     /* RESET (the entry goes) rather than SET */
    bool failed;    /* its statement got an error */
    uint8_t unpins; /* CH_UNPIN: the PX_SQL_PIN_* its statement ends */
    uint32_t remaining;
    char key[PX_SQL_NAME_SIZE];
    char *sql; /* the statement's text (owned), replayed as it is */
};

enum { CH_DEALLOCATE = 100, CH_DEALLOCATE_ALL, CH_DISCARD, CH_UNPIN, CH_DROP_STMT };

struct px_sstate {
    struct px_sstate_change *entries; /* applied, oldest change first */
    struct px_sstate_change *pending; /* waiting for their ReadyForQuery */
    struct px_sstate_change *block;   /* done inside the open transaction block */
    uint32_t version;                 /* bumped at every change of entries */
    uint8_t pins;                     /* PX_SQL_PIN_*: state that cannot move */
    const char *pin_reason;           /* static: what pinned it first */
    bool block_failed;                /* the open block had an error */
    uint8_t last_end;                 /* the last COMMIT / ROLLBACK it sent (px_sql_kind) */
    struct px_sstate_change *unnamed; /* the change its unnamed statement would make */
    bool unnamed_end;                 /* ... or the COMMIT/ROLLBACK it is */
    uint8_t unnamed_end_kind;
    uint8_t unnamed_unpins; /* PX_SQL_PIN_* its unnamed statement clears (UNLISTEN *, ...) */
    char unnamed_dealloc[PX_SQL_NAME_SIZE]; /* ... or the statement it deallocates ("") */
    bool bound_unnamed;                     /* its last Bind was of the unnamed statement */
};

static struct px_sstate *sstate_of(struct px_client *c)
{
    if (!c->sstate)
        c->sstate = calloc(1, sizeof(*c->sstate));
    return c->sstate;
}

static void change_free(struct px_sstate_change *ch)
{
    if (ch)
        free(ch->sql);
    free(ch);
}

static void list_free(struct px_sstate_change **l)
{
    while (*l) {
        struct px_sstate_change *ch = *l;
        *l = ch->next;
        change_free(ch);
    }
}

static void append(struct px_sstate_change **l, struct px_sstate_change *ch)
{
    while (*l)
        l = &(*l)->next;
    ch->next = NULL;
    *l = ch;
}

/* A change for the statement text[0..len) of kind and key; NULL when out of memory. */
static struct px_sstate_change *change_new(uint8_t kind, bool reset, const char *key,
                                           const char *text, size_t len)
{
    struct px_sstate_change *ch = calloc(1, sizeof(*ch));
    if (!ch)
        return NULL;
    ch->kind = kind;
    ch->reset = reset;
    snprintf(ch->key, sizeof(ch->key), "%s", key ? key : "");
    if (text) {
        while (len > 0 && (text[len - 1] == '\0' || text[len - 1] == ';' || text[len - 1] == ' ' ||
                           text[len - 1] == '\n' || text[len - 1] == '\t' || text[len - 1] == '\r'))
            len--;
        ch->sql = strndup(text, len);
        if (!ch->sql) {
            free(ch);
            return NULL;
        }
    }
    return ch;
}

/* c's pins become pins: the pool's count of pinned clients follows. */
static void set_pins(struct px_client *c, uint8_t pins)
{
    struct px_sstate *st = c->sstate;
    if (!st->pins != !pins && c->pool)
        c->pool->n_pinned += pins ? 1 : -1;
    st->pins = pins;
}

/* Whether applied entry e is one that change ch replaces or removes. */
static bool same_slot(const struct px_sstate_change *e, const struct px_sstate_change *ch)
{
    switch (ch->kind) {
    case PX_STATE_RESET_ALL: return e->kind == PX_STATE_SET || e->kind == PX_STATE_CHARACTERISTICS;
    case CH_DEALLOCATE: return e->kind == PX_STATE_PREPARE && !strcmp(e->key, ch->key);
    case CH_DEALLOCATE_ALL: return e->kind == PX_STATE_PREPARE;
    case CH_DISCARD: return true;
    case PX_STATE_SESSION_AUTH: /* a change of session user drops SET ROLE, as PostgreSQL does */
        return e->kind == PX_STATE_SESSION_AUTH || e->kind == PX_STATE_ROLE;
    default: return e->kind == ch->kind && !strcmp(e->key, ch->key);
    }
}

/* ch took effect on c's server: c's state follows (ch is taken over). */
static void apply(struct px_client *c, struct px_sstate_change *ch)
{
    struct px_sstate *st = c->sstate;
    if (ch->kind == CH_UNPIN) { /* the state it ended is gone: nothing else changes */
        set_pins(c, (uint8_t)(st->pins & ~ch->unpins));
        change_free(ch);
        return;
    }
    if (ch->kind == CH_DROP_STMT) { /* a protocol-level statement, not session state */
        px_stmt_map_remove(&c->stmts, ch->key);
        change_free(ch);
        return;
    }
    for (struct px_sstate_change **pp = &st->entries; *pp;) {
        if (same_slot(*pp, ch)) {
            struct px_sstate_change *e = *pp;
            *pp = e->next;
            change_free(e);
        } else {
            pp = &(*pp)->next;
        }
    }
    if (ch->kind == CH_DISCARD)
        set_pins(c, 0);
    bool keep = ch->sql && !ch->reset && ch->kind != PX_STATE_RESET_ALL && ch->kind < CH_DEALLOCATE;
    if (keep)
        append(&st->entries, ch);
    else
        change_free(ch);
    st->version++;
    struct px_server *s = c->server;
    if (s) { /* the server has exactly the client's state now */
        s->sstate_owner = st->entries ? c->id : 0;
        s->sstate_version = st->version;
        for (struct px_sstate_change *e = st->entries; e; e = e->next)
            s->sstate_prepared |= e->kind == PX_STATE_PREPARE;
    }
}

/* Non-transactional changes (prepared statements) count once their statement succeeded;
 * the others when their transaction commits. */
static bool transactional(const struct px_sstate_change *ch)
{
    if (ch->kind == CH_UNPIN) /* session advisory locks go at once, rollback or not */
        return ch->unpins != PX_SQL_PIN_ADVISORY;
    if (ch->kind == CH_DROP_STMT) /* DEALLOCATE: a rollback gives nothing back */
        return false;
    return ch->kind != PX_STATE_PREPARE && ch->kind != CH_DEALLOCATE &&
           ch->kind != CH_DEALLOCATE_ALL && ch->kind != CH_DISCARD;
}

static void pin(struct px_client *c, uint8_t bits, const char *why)
{
    struct px_sstate *st = sstate_of(c);
    if (!st)
        return;
    if (!st->pins && bits) {
        st->pin_reason = why;
        char addr[PX_CLIENT_ADDR_LEN];
        px_info("client", 'C', c->id,
                "%s (application_name \"%.64s\") uses %s, which cannot move to another server: "
                "it keeps its server until that is gone",
                px_client_addr(c, addr), c->application_name ? c->application_name : "", why);
    }
    set_pins(c, st->pins | bits);
}

/* A state change of c's statement goes to its server: it counts once the statement's
 * ReadyForQuery says it succeeded (and, if transactional, its transaction committed). */
static void queue_change(struct px_client *c, struct px_sstate_change *ch)
{
    struct px_sstate *st = sstate_of(c);
    if (!st || !ch) {
        change_free(ch);
        pin(c, PX_SQL_PIN_OTHER, "session state pgwarden could not record");
        return;
    }
    ch->remaining = (uint32_t)c->server->pending_ready + 1;
    append(&st->pending, ch);
}

/* A statement that ends pinned state (UNLISTEN *, DISCARD TEMP, CLOSE ALL,
 * pg_advisory_unlock_all()) unpins c once it took effect: when it succeeded, and for the
 * transactional ones when its block committed (a DISCARD TEMP rolled back leaves the
 * tables: the server must not go to another client). */
static void queue_unpins(struct px_client *c, uint8_t unpins)
{
    if (!c->sstate || !(c->sstate->pins & unpins))
        return;
    const uint8_t parts[2] = {(uint8_t)(unpins & PX_SQL_PIN_ADVISORY),
                              (uint8_t)(unpins & ~PX_SQL_PIN_ADVISORY)};
    for (int i = 0; i < 2; i++) {
        if (!parts[i])
            continue;
        struct px_sstate_change *ch = change_new(CH_UNPIN, false, NULL, NULL, 0);
        if (ch)
            ch->unpins = parts[i];
        queue_change(c, ch); /* out of memory: it stays pinned */
    }
}

static struct px_sstate_change *change_of(const struct px_sql_info *info, const char *text,
                                          size_t len)
{
    switch (info->kind) {
    case PX_SQL_DEALLOCATE: return change_new(CH_DEALLOCATE, false, info->name, NULL, 0);
    case PX_SQL_DEALLOCATE_ALL: return change_new(CH_DEALLOCATE_ALL, false, NULL, NULL, 0);
    case PX_SQL_DISCARD_ALL: return change_new(CH_DISCARD, false, NULL, NULL, 0);
    default: break;
    }
    if (info->state == PX_STATE_NONE || info->state == PX_STATE_UNTRACKED)
        return NULL;
    return change_new((uint8_t)info->state, info->state_reset, info->state_key, text, len);
}

bool px_session_pinned(const struct px_client *c)
{
    return c->sstate && c->sstate->pins;
}

const char *px_session_pin_reason(const struct px_client *c)
{
    return px_session_pinned(c) ? c->sstate->pin_reason : NULL;
}

void px_session_error(struct px_client *c)
{
    struct px_sstate *st = c->sstate;
    if (!st)
        return;
    for (struct px_sstate_change *ch = st->pending; ch; ch = ch->next)
        if (ch->remaining == 1) /* the statement whose ReadyForQuery comes next */
            ch->failed = true;
}

void px_session_ready(struct px_client *c, char status)
{
    struct px_sstate *st = c->sstate;
    if (!st)
        return;
    for (struct px_sstate_change **pp = &st->pending; *pp;) {
        struct px_sstate_change *ch = *pp;
        if (--ch->remaining > 0) {
            pp = &ch->next;
            continue;
        }
        *pp = ch->next;
        if (ch->failed)
            change_free(ch);
        else if (status == 'I' || !transactional(ch))
            apply(c, ch);
        else
            append(&st->block, ch); /* counts if the block commits */
    }
    if (status == 'E')
        st->block_failed = true;
    if (status == 'I') {
        bool committed = !st->block_failed && st->last_end == PX_SQL_COMMIT;
        while (st->block) {
            struct px_sstate_change *ch = st->block;
            st->block = ch->next;
            if (committed)
                apply(c, ch);
            else
                change_free(ch);
        }
        st->block_failed = false;
        st->last_end = 0;
    }
}

/* ---- the state text a server needs before the client's first byte ------------------- */

bool px_session_state_fits(const struct px_client *c, const struct px_server *s)
{
    const struct px_sstate *st = c->sstate;
    bool mine = st && st->entries;
    return s->sstate_owner == (mine ? c->id : 0) && (!mine || s->sstate_version == st->version);
}

/* Appends to sql what makes s's session state c's: a reset when s carries another state,
 * then c's entries.  True when s's tracked parameters were reset (RESET ALL). */
static bool state_prelude(struct px_client *c, struct px_server *s, struct evbuffer *sql, int *rc)
{
    if (px_session_state_fits(c, s))
        return false;
    const struct px_sstate *st = c->sstate;
    bool mine = st && st->entries;
    bool reset = s->sstate_owner != 0;
    if (reset) {
        *rc |= evbuffer_add_printf(sql, "SET SESSION AUTHORIZATION DEFAULT;RESET ALL;") < 0;
        if (s->sstate_prepared) {
            *rc |= evbuffer_add_printf(sql, "DEALLOCATE ALL;") < 0;
            px_stmt_set_clear(&s->stmts); /* pgwarden's statements went too */
            s->stmts_uncertain = false;
        }
        px_params_clear(&s->params); /* RESET ALL: its reported values are its welcome's */
    }
    s->sstate_prepared = false;
    for (const struct px_sstate_change *e = mine ? st->entries : NULL; e; e = e->next) {
        *rc |= evbuffer_add(sql, e->sql, strlen(e->sql)) < 0 || evbuffer_add(sql, ";", 1) < 0;
        s->sstate_prepared |= e->kind == PX_STATE_PREPARE;
    }
    s->sstate_owner = mine ? c->id : 0;
    s->sstate_version = mine ? st->version : 0;
    return reset;
}

static void warn_session_state(struct px_client *c, const char *feature)
{
    if (c->warned_session_state)
        return;
    c->warned_session_state = true;
    char addr[PX_CLIENT_ADDR_LEN];
    px_warning("client", 'C', c->id,
               "%s (application_name \"%.64s\") uses %s, which does not survive transaction "
               "pooling: the server is reset after this transaction",
               px_client_addr(c, addr), c->application_name ? c->application_name : "", feature);
}

void px_session_note_sql(struct px_client *c, const struct px_sql_info *info, const char *text,
                         size_t len)
{
    struct px_server *s = c->server;
    if (info->kind == PX_SQL_COMMIT || info->kind == PX_SQL_ROLLBACK) {
        if (c->sstate)
            c->sstate->last_end = (uint8_t)info->kind;
        return;
    }
    struct px_sstate_change *ch = change_of(info, text, len);
    if (ch)
        queue_change(c, ch);
    uint8_t pins = info->pins;
    if (info->state == PX_STATE_UNTRACKED)
        pins |= PX_SQL_PIN_OTHER;
    if (info->rollback_to && c->sstate && c->sstate->block)
        pins |= PX_SQL_PIN_OTHER; /* what it undoes of the block's changes is unknown */
    if (pins) {
        if (s->pool->unmovable_state == PX_UNMOVABLE_RESET) {
            warn_session_state(c, info->session_feature ? info->session_feature : "session state");
            s->dirty = true;
        } else {
            pin(c, pins, info->session_feature ? info->session_feature : "session state");
        }
    }
    if (info->unpins) /* e.g. UNLISTEN *, DISCARD TEMP */
        queue_unpins(c, info->unpins);
    if (info->kind == PX_SQL_DISCARD_ALL || info->kind == PX_SQL_DEALLOCATE_ALL) {
        /* Every statement of the server goes, and the client's too (as on a direct
         * connection).  Parse/Close still in flight keep their FIFO entries. */
        px_stmt_set_clear(&s->stmts);
        px_stmt_map_clear(&c->stmts);
    } else if (info->drops_prepared) {
        /* A DEALLOCATE or DISCARD pgwarden cannot follow (inside a longer text, or of a
         * name that is not the client's: pgwarden's own names are visible in
         * pg_prepared_statements): statements may be gone from the server.  From now on
         * every Parse sent to it is preceded by a Close, so none is ever missing. */
        px_stmt_set_clear(&s->stmts);
        s->stmts_uncertain = true;
    }
}

void px_session_note_parse(struct px_client *c, const char *name, const struct px_sql_info *info,
                           const char *text, size_t len)
{
    struct px_sstate *st = c->sstate;
    bool ends = info->kind == PX_SQL_COMMIT || info->kind == PX_SQL_ROLLBACK;
    struct px_sstate_change *ch = ends ? NULL : change_of(info, text, len);
    if (!*name) {
        if (st) {
            change_free(st->unnamed);
            st->unnamed = NULL;
            st->unnamed_end = false;
        }
        if ((ch || ends) && (st = sstate_of(c)) != NULL) {
            st->unnamed = ch;
            st->unnamed_end = ends;
            st->unnamed_end_kind = (uint8_t)info->kind;
            ch = NULL;
        }
        /* what it ends counts when it has run (px_session_note_execute, queue_unpins) */
        if (st) {
            st->unnamed_unpins = info->unpins;
            st->unnamed_dealloc[0] = '\0'; /* px_session_note_dealloc comes after this */
        }
    }
    uint8_t pins = info->pins;
    if (ch || info->state == PX_STATE_UNTRACKED)
        pins |= PX_SQL_PIN_OTHER; /* a named statement that changes state: cannot follow it */
    change_free(ch);
    if (pins) {
        if (c->pool->unmovable_state == PX_UNMOVABLE_RESET) {
            warn_session_state(c, info->session_feature ? info->session_feature : "session state");
            c->server->dirty = true;
        } else {
            pin(c, pins, info->session_feature ? info->session_feature : "session state");
        }
    }
}

void px_session_note_bind(struct px_client *c, const char *statement)
{
    if (c->sstate)
        c->sstate->bound_unnamed = !*statement;
}

void px_session_note_execute(struct px_client *c)
{
    struct px_sstate *st = c->sstate;
    if (!st || !st->bound_unnamed)
        return;
    if (st->unnamed_unpins)
        queue_unpins(c, st->unnamed_unpins);
    if (st->unnamed_dealloc[0]) {
        /* the client's statement goes when the DEALLOCATE succeeded (never run: it stays) */
        struct px_sstate_change *ch = change_new(CH_DROP_STMT, false, st->unnamed_dealloc, NULL, 0);
        if (ch) { /* out of memory: the name stays known, as if the Execute had failed */
            ch->remaining = (uint32_t)c->server->pending_ready + 1;
            append(&st->pending, ch);
        }
    }
    if (st->unnamed_end) {
        st->last_end = st->unnamed_end_kind;
        return;
    }
    if (!st->unnamed)
        return;
    const struct px_sstate_change *u = st->unnamed;
    /* a DEALLOCATE or DISCARD keeps no text (change_of) */
    queue_change(c, change_new(u->kind, u->reset, u->key, u->sql, u->sql ? strlen(u->sql) : 0));
}

void px_session_note_dealloc(struct px_client *c, const char *name)
{
    struct px_sstate *st = sstate_of(c);
    if (st) /* out of memory: the name stays known (a Bind of it gets a re-prepared one) */
        snprintf(st->unnamed_dealloc, sizeof(st->unnamed_dealloc), "%s", name);
}

void px_session_client_free(struct px_client *c)
{
    if (c->sstate) {
        set_pins(c, 0);
        list_free(&c->sstate->entries);
        list_free(&c->sstate->pending);
        list_free(&c->sstate->block);
        change_free(c->sstate->unnamed);
        free(c->sstate);
        c->sstate = NULL;
    }
    if (c->vars) {
        px_params_clear(c->vars);
        free(c->vars);
        c->vars = NULL;
    }
    px_welcome_unref(c->welcome);
}
