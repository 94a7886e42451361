/*
 * rename.c: the statement-renaming stage (see rename.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/client.h"
#include "net/server.h"
#include "path/expect.h"
#include "path/rename.h"
#include "path/session.h"
#include "path/sqlscan.h"

struct px_stmt_registry *px_rename_registry(void)
{
    if (!px.stmt_registry)
        px.stmt_registry = px_stmt_registry_new();
    return px.stmt_registry;
}

/* Closes (hidden) the server's statement of stmt's name, which may or may not exist (a
 * Close of a name that does not exist is no error). */
static bool close_hidden(struct px_server *s, struct px_stmt *stmt, struct evbuffer *out)
{
    struct px_expect *e = px_expect_push(s, PX_EXP_CLOSE, true);
    return e && px_write_target(out, 'C', 'S', px_stmt_server_name(stmt)) == 0;
}

/* Makes room in the server's statement set, closing (hidden) the least recently used
 * (more than one after a reload lowered max_prepared_statements). */
static int make_room(struct px_server *s, struct evbuffer *out)
{
    struct px_stmt *victim;
    uint32_t cap = (uint32_t)px.cfg->max_prepared_statements;
    while ((victim = px_stmt_set_evict_candidate(&s->stmts, cap)) != NULL) {
        struct px_expect *e = px_expect_push(s, PX_EXP_CLOSE, true);
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
    if (s->stmts_uncertain && !close_hidden(s, stmt, out))
        return -1;
    struct px_expect *e = px_expect_push(s, PX_EXP_PARSE, hidden);
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

/* pgwarden's server-side names ("_pgw_<id>") are not the client's to use: a name in that
 * namespace the client did not prepare is sent as "_pgw_", which never exists, so the
 * server answers as for any unknown name and no other client's statement is touched. */
static const char *foreign_name(const char *name)
{
    return strncmp(name, PX_STMT_PREFIX, strlen(PX_STMT_PREFIX)) == 0 ? PX_STMT_PREFIX : name;
}

/* The unnamed statement on the server is another client's unless this client parsed it
 * since it got the server: it is closed first, so that a Bind or Describe of it gets
 * PostgreSQL's 26000 instead of someone else's statement. */
static bool unnamed_check(struct px_client *c, struct evbuffer *out)
{
    if (c->unnamed_parsed)
        return true;
    struct px_expect *e = px_expect_push(c->server, PX_EXP_CLOSE, true);
    if (!e || px_write_target(out, 'C', 'S', "") < 0)
        return false;
    c->unnamed_parsed = true; /* closed: the client's own view from now on */
    return true;
}

bool px_rename_client_may_add(const struct px_client *c, const char *name)
{
    return px_stmt_map_count(&c->stmts) < (uint32_t)px.cfg->max_client_prepared_statements ||
           px_stmt_map_get(&c->stmts, name) != NULL;
}

/* The throwaway statement a client's DEALLOCATE names on the server (a server name, never a
 * registry statement's: those end in digits). */
#define DEALLOC_STAND_IN PX_STMT_PREFIX "dealloc"

bool px_rename_client_dealloc(const struct px_client *c, const uint8_t *content, uint32_t clen,
                              char name[PX_SQL_NAME_SIZE])
{
    /* the cheap test first, before the text is scanned for its end: every unnamed Parse
     * comes here (blanks or a comment may come first) */
    const uint8_t *p = content, *end = content + clen;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    if (p == end || ((*p | 0x20) != 'd' && *p != '-' && *p != '/'))
        return false;
    const uint8_t *nul = memchr(p, '\0', (size_t)(end - p));
    if (!nul || nul - p < 12 || (size_t)(nul - content) + 3 > clen || px_get_u16(nul + 1) != 0 ||
        c->server->txn_status == 'E')
        return false;
    struct px_sql_info info;
    px_sql_classify((const char *)content, (size_t)(nul - content), &info);
    if (info.kind != PX_SQL_DEALLOCATE || !px_stmt_map_get(&c->stmts, info.name))
        return false; /* not the client's: PostgreSQL answers (26000, or an SQL PREPARE's) */
    memcpy(name, info.name, PX_SQL_NAME_SIZE);
    return true;
}

/*
 * An unnamed Parse of DEALLOCATE name, name a statement of the client's: how drivers send it
 * by the extended protocol (psycopg 3 evicts its prepared statements so).  The server knows
 * the statement by pgwarden's name, or not at all, and keeps it for other clients too; the
 * text PostgreSQL gets is DEALLOCATE of a throwaway statement prepared (hidden) just before,
 * so that the client gets PostgreSQL's very replies (ParseComplete ... CommandComplete
 * "DEALLOCATE", or the error of a failed block).  The statement leaves the client's map
 * when an Execute of it succeeded (session.h px_session_note_dealloc).  True when handled
 * (*act set).
 */
static bool dealloc_parse(struct px_client *c, struct evbuffer *out, const uint8_t *content,
                          uint32_t clen, enum px_relay_action *act)
{
    struct px_server *s = c->server;
    char name[PX_SQL_NAME_SIZE];
    if (!px_rename_client_dealloc(c, content, clen, name))
        return false;
    /* contents: the text, its NUL, no parameter types */
    static const uint8_t stand_in[] = "SELECT\0\0";
    static const uint8_t text[] = "DEALLOCATE " DEALLOC_STAND_IN "\0\0";
    *act = PX_RELAY_CLOSE;
    if (!px_expect_push(s, PX_EXP_CLOSE, true) ||
        px_write_target(out, 'C', 'S', DEALLOC_STAND_IN) < 0 ||
        !px_expect_push(s, PX_EXP_PARSE, true) ||
        px_write_parse(out, DEALLOC_STAND_IN, stand_in, sizeof(stand_in)) < 0 ||
        !px_expect_push(s, PX_EXP_PARSE, false) || px_write_parse(out, "", text, sizeof(text)) < 0)
        return true;
    px_session_note_dealloc(c, name);
    *act = PX_RELAY_DROP;
    return true;
}

enum px_relay_action px_rename_parse(struct px_client *c, struct evbuffer *out, const uint8_t *body,
                                     uint32_t len)
{
    struct px_server *s = c->server;
    const char *name;
    const uint8_t *content;
    uint32_t clen;
    if (px_parse_split(body, len, &name, &content, &clen) < 0)
        return PX_RELAY_FORWARD; /* malformed: PostgreSQL says so */
    if (!*name) {
        enum px_relay_action act = PX_RELAY_FORWARD;
        if (!dealloc_parse(c, out, content, clen, &act) && !px_expect_push(s, PX_EXP_PARSE, false))
            return PX_RELAY_CLOSE;
        if (act == PX_RELAY_CLOSE)
            return act;
        c->unnamed_parsed = true;
        c->unnamed_lost = false; /* its unnamed statement is this one from now on */
        s->unnamed_owner = c->id;
        return act; /* the unnamed statement lives only until the next Parse */
    }
    if (!px_rename_client_may_add(c, name)) {
        /* FATAL, not ERROR: the group is on its way to the server, and a leak of names
         * this large is a bug of the client's, not a condition it handles */
        char msg[160];
        snprintf(msg, sizeof(msg),
                 "too many prepared statements in this connection (max_client_prepared_"
                 "statements = %d)",
                 px.cfg->max_client_prepared_statements);
        px_client_fatal(c, PX_SQLSTATE_CONFIG_LIMIT, msg);
        return PX_RELAY_CLOSE;
    }
    struct px_stmt *stmt = px_stmt_intern(px_rename_registry(), content, clen);
    if (!stmt || px_stmt_map_put(&c->stmts, name, stmt) < 0) {
        px_stmt_unref(stmt);
        return PX_RELAY_CLOSE;
    }
    if (px_stmt_set_has(&s->stmts, stmt)) {
        /* The server has it (another client's): drop and re-prepare it so that the client
         * gets the ParseComplete (or error) of its own Parse, in order. */
        struct px_expect *e = px_expect_push(s, PX_EXP_CLOSE, true);
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

enum px_relay_action px_rename_bind(struct px_client *c, struct evbuffer *out, const uint8_t *body,
                                    uint32_t len)
{
    const char *portal, *name;
    const uint8_t *rest;
    uint32_t rlen;
    if (px_bind_split(body, len, &portal, &name, &rest, &rlen) < 0)
        return PX_RELAY_FORWARD;
    if (!*name)
        return unnamed_check(c, out) ? PX_RELAY_FORWARD : PX_RELAY_CLOSE;
    struct px_stmt *stmt = px_stmt_map_get(&c->stmts, name);
    if (!stmt) {
        /* unknown to pgwarden: PostgreSQL answers 26000 */
        if (foreign_name(name) == name)
            return PX_RELAY_FORWARD;
        return px_write_bind(out, portal, foreign_name(name), rest, rlen) < 0 ? PX_RELAY_CLOSE
                                                                              : PX_RELAY_DROP;
    }
    if (ensure_prepared(c->server, stmt, out) < 0 ||
        px_write_bind(out, portal, px_stmt_server_name(stmt), rest, rlen) < 0)
        return PX_RELAY_CLOSE;
    return PX_RELAY_DROP;
}

enum px_relay_action px_rename_bind_head(struct px_client *c, struct evbuffer *out,
                                         const uint8_t *head, uint32_t len)
{
    uint32_t visible = len > PX_RELAY_HEAD_MAX ? PX_RELAY_HEAD_MAX : len;
    const uint8_t *p1 = memchr(head, '\0', visible);
    const uint8_t *p2 = p1 ? memchr(p1 + 1, '\0', visible - (uint32_t)(p1 + 1 - head)) : NULL;
    if (!p2)
        return PX_RELAY_FORWARD; /* malformed (names do not fit the head): PostgreSQL says so */
    const char *portal = (const char *)head, *name = (const char *)p1 + 1;
    if (!*name)
        return unnamed_check(c, out) ? PX_RELAY_FORWARD : PX_RELAY_CLOSE;
    struct px_stmt *stmt = px_stmt_map_get(&c->stmts, name);
    const char *server_name = stmt ? px_stmt_server_name(stmt) : foreign_name(name);
    if (server_name == name)
        return PX_RELAY_FORWARD; /* unknown to pgwarden: PostgreSQL answers 26000 */
    if (stmt && ensure_prepared(c->server, stmt, out) < 0)
        return PX_RELAY_CLOSE;
    /* 'B', the new length, the portal and the server name replace the old head */
    size_t old_names = strlen(portal) + 1 + strlen(name) + 1;
    size_t plen = strlen(portal) + 1, slen = strlen(server_name) + 1;
    uint8_t hdr[5];
    hdr[0] = 'B';
    px_put_u32(hdr + 1, (uint32_t)(len + 4 - old_names + plen + slen));
    if (evbuffer_add(out, hdr, 5) < 0 || evbuffer_add(out, portal, plen) < 0 ||
        evbuffer_add(out, server_name, slen) < 0)
        return PX_RELAY_CLOSE;
    c->c2s.skip = (uint32_t)(5 + old_names);
    return PX_RELAY_REPLACE_HEAD;
}

enum px_relay_action px_rename_target(struct px_client *c, struct evbuffer *out, char type,
                                      const uint8_t *body, uint32_t len)
{
    struct px_server *s = c->server;
    char kind;
    const char *name;
    bool named = px_target_split(body, len, &kind, &name) == 0 && kind == 'S' && *name;
    if (type == 'C') {
        /* Close is forwarded (a name the server does not have is no error, and it still
         * answers CloseComplete in order): the client's own names are pgwarden's to drop,
         * a name of pgwarden's namespace is made one that does not exist. */
        if (!px_expect_push(s, PX_EXP_CLOSE, false))
            return PX_RELAY_CLOSE;
        if (named && !px_stmt_map_remove(&c->stmts, name) && foreign_name(name) != name)
            return px_write_target(out, 'C', 'S', foreign_name(name)) < 0 ? PX_RELAY_CLOSE
                                                                          : PX_RELAY_DROP;
        return PX_RELAY_FORWARD;
    }
    if (kind == 'S' && !*name && !unnamed_check(c, out))
        return PX_RELAY_CLOSE;
    struct px_stmt *stmt = named ? px_stmt_map_get(&c->stmts, name) : NULL;
    if (!stmt) {
        if (!named || foreign_name(name) == name)
            return PX_RELAY_FORWARD;
        return px_write_target(out, 'D', 'S', foreign_name(name)) < 0 ? PX_RELAY_CLOSE
                                                                      : PX_RELAY_DROP;
    }
    if (ensure_prepared(s, stmt, out) < 0 ||
        px_write_target(out, 'D', 'S', px_stmt_server_name(stmt)) < 0)
        return PX_RELAY_CLOSE;
    return PX_RELAY_DROP;
}
