/*
 * session.c: session state that follows a client (see session.h).
 */
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "path/session.h"
#include "pool/pool.h"

/* The client's value of a reported parameter: what it changed since its welcome, else what
 * the welcome said. */
static const char *client_value(const struct px_client *c, const char *name)
{
    const char *v = px_params_get(&c->vars, name);
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
    return px_params_set(&c->vars, name, value);
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

bool px_session_same_params(const struct px_client *a, const struct px_client *b)
{
    for (int i = 0; i < PX_TRACKED_PARAMS; i++) {
        const char *va = client_tracked(a, i), *vb = client_tracked(b, i);
        if (va != vb && (!va || !vb || strcmp(va, vb) != 0))
            return false;
    }
    return true;
}

bool px_session_resync(struct px_client *c)
{
    struct px_server *s = c->server;
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
    if (!sql)
        return true;
    const char *text = evbuffer_add(sql, "", 1) == 0 ? (char *)evbuffer_pullup(sql, -1) : NULL;
    if (text) {
        px_wire_query(bufferevent_get_output(s->bev), text);
        s->hidden_queries++;
    }
    evbuffer_free(sql);
    return text != NULL;
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

void px_session_note_sql(struct px_client *c, const struct px_sql_info *info)
{
    struct px_server *s = c->server;
    if (info->session_feature) {
        warn_session_state(c, info->session_feature);
        s->dirty = true;
    }
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

void px_session_client_free(struct px_client *c)
{
    px_params_clear(&c->vars);
    px_welcome_unref(c->welcome);
}
