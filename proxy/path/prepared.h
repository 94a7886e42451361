/*
 * prepared.h: named prepared statements under transaction pooling.
 *
 * Why.  In transaction mode a client holds a server only for one transaction, but a
 * statement it prepares with a protocol-level Parse must keep working on whichever server
 * it gets next (asyncpg and JDBC prepare once and Bind for ever).  So the proxy, not the
 * server, owns the client's statement names, and tracks which server has which statement
 * prepared; a Bind or Describe on a server that lacks the statement is preceded by a
 * hidden Parse.  PgBouncer 1.21 does the same (its src/prepare.c, PGBOUNCER_<id> names).
 *
 * Three structures, all single-threaded (the event loop's thread), none doing I/O:
 *
 *   registry  one per process.  Statements are interned by *content*: the Parse body after
 *             the name (query\0, int16 n, n x int32 type OIDs, as the client sent them).
 *             Each distinct content is one refcounted px_stmt with a unique id and a
 *             server-side name "_pgw_<id>", so every client that prepares the same text
 *             shares one statement on each server.  Server names are pgwarden's own and
 *             client names never reach a server, so names cannot collide between clients.
 *   map       per client: the client's statement name -> px_stmt.
 *   set       per server connection: the statements prepared on it, in LRU order and
 *             bounded by max_prepared_statements; the evicted statement is the one the
 *             proxy must Close on that server.
 *
 * References: px_stmt_intern returns one reference; each map entry and each set member
 * holds one more.  A statement leaves the registry when its last reference goes, so the
 * registry holds exactly the statements some client or server still uses.
 *
 * A zero-initialized px_stmt_map or px_stmt_set is a valid empty one and owns no memory;
 * px_stmt_map_clear / px_stmt_set_clear return them to that state.  The message helpers at
 * the end split and build Parse, Bind, Describe and Close bodies without reading past the
 * length they are given.  Tests: tests/proxy/test_prepared.c.
 */
#ifndef PGW_PROXY_PREPARED_H
#define PGW_PROXY_PREPARED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

/* The prefix of pgwarden's server-side statement names ("_pgw_<id>"); "_pgw_" alone is
 * never a statement. */
#define PX_STMT_PREFIX "_pgw_"

/* PostgreSQL keeps NAMEDATALEN - 1 = 63 bytes of a statement name; so do we. */
#define PX_STMT_NAME_MAX 63

struct px_stmt;          /* one interned statement (opaque) */
struct px_stmt_registry; /* the process's statements by content (opaque) */
struct px_stmt_map_table;

/* A client's statements by name.  Embed it; zero-initialized means empty. */
struct px_stmt_map {
    struct px_stmt_map_table *tab; /* NULL while empty */
    uint32_t count;
};

struct px_stmt_set_slot;

/* The statements prepared on one server connection.  Embed it; zero means empty. */
struct px_stmt_set {
    struct px_stmt_set_slot *slots; /* NULL while empty; hash buckets follow the slots */
    uint32_t count;                 /* members */
    uint32_t alloc;                 /* slots allocated */
    uint32_t mru;                   /* most recently used slot; the LRU one is its prev */
    uint32_t bits;                  /* log2 of the number of hash buckets */
};

/* ---- registry ------------------------------------------------------------------------ */

/* A new, empty registry (hash keyed from getrandom so clients cannot flood one bucket).
 * NULL on allocation failure.  Free with px_stmt_registry_free. */
__attribute__((warn_unused_result)) struct px_stmt_registry *px_stmt_registry_new(void);

/* Frees the registry (NULL: no-op).  Statements still referenced stay valid until their
 * last px_stmt_unref; they are no longer found by px_stmt_intern. */
void px_stmt_registry_free(struct px_stmt_registry *reg);

/* Statements currently interned, and the bytes of their content (for stats). */
size_t px_stmt_registry_count(const struct px_stmt_registry *reg);
size_t px_stmt_registry_bytes(const struct px_stmt_registry *reg);

/* Finds or creates the statement with this content (copied) and returns a new reference
 * the caller releases with px_stmt_unref.  NULL on allocation failure or reg == NULL. */
__attribute__((warn_unused_result)) struct px_stmt *
px_stmt_intern(struct px_stmt_registry *reg, const uint8_t *content, uint32_t len);

/* Takes one more reference; returns stmt.  */
struct px_stmt *px_stmt_ref(struct px_stmt *stmt);
/* Drops one reference (NULL: no-op); the last one frees the statement. */
void px_stmt_unref(struct px_stmt *stmt);

/* Borrowed views of a statement, valid while a reference is held. */
const char *px_stmt_server_name(const struct px_stmt *stmt); /* "_pgw_<id>" */
const uint8_t *px_stmt_content(const struct px_stmt *stmt, uint32_t *len);
uint64_t px_stmt_id(const struct px_stmt *stmt); /* unique, never reused, from 1 */
uint32_t px_stmt_refcount(const struct px_stmt *stmt);

/* One byte the statement path may keep per statement, about its content (which never
 * changes): batch.c caches whether it may be batched, so the text is classified once.
 * 0 until set. */
uint8_t px_stmt_note(const struct px_stmt *stmt);
void px_stmt_set_note(struct px_stmt *stmt, uint8_t note);

/* ---- client map: name -> statement --------------------------------------------------- */

/* Maps name (truncated to PX_STMT_NAME_MAX bytes) to stmt, taking a reference of its own;
 * an existing mapping of that name is replaced and its reference dropped.  0, or -1 on
 * allocation failure (the map is unchanged). */
__attribute__((warn_unused_result)) int px_stmt_map_put(struct px_stmt_map *map, const char *name,
                                                        struct px_stmt *stmt);

/* The statement mapped to name (truncated as above), borrowed; NULL when none. */
struct px_stmt *px_stmt_map_get(const struct px_stmt_map *map, const char *name);

/* Removes name's mapping.  True when there was one. */
bool px_stmt_map_remove(struct px_stmt_map *map, const char *name);

/* Removes every mapping and frees the map's memory (it is empty and reusable after). */
void px_stmt_map_clear(struct px_stmt_map *map);

static inline uint32_t px_stmt_map_count(const struct px_stmt_map *map)
{
    return map->count;
}

/* ---- server set: statements prepared on one server, LRU-bounded ---------------------- */
/*
 * capacity is max_prepared_statements, passed on each call so that a reload applies to
 * connections already open; values below 1 count as 1.  Every operation is O(1) expected.
 */

/* Is stmt prepared on this server?  A hit makes it the most recently used. */
bool px_stmt_set_has(struct px_stmt_set *set, const struct px_stmt *stmt);

/*
 * The statement add would evict now (the least recently used, when count >= capacity),
 * borrowed; NULL when there is room.  After a reload lowered capacity, a caller that
 * wants the set back within it removes candidates in a loop.
 */
struct px_stmt *px_stmt_set_evict_candidate(const struct px_stmt_set *set, uint32_t capacity);

/*
 * Records stmt as prepared on the server (the set takes a reference) and makes it the most
 * recently used; if it is already a member it is only touched.  When the set holds
 * capacity or more statements the least recently used one is removed first and returned
 * in *evicted, with the set's reference: the caller Closes it on the server and then
 * px_stmt_unref()s it.  At most one is evicted per call.  *evicted is NULL otherwise.
 * Returns 0, or -1 on allocation failure (set unchanged, *evicted NULL).
 */
__attribute__((warn_unused_result)) int px_stmt_set_add(struct px_stmt_set *set,
                                                        struct px_stmt *stmt, uint32_t capacity,
                                                        struct px_stmt **evicted);

/* Removes stmt (the server closed it, or its Parse failed).  True when it was a member. */
bool px_stmt_set_remove(struct px_stmt_set *set, const struct px_stmt *stmt);

/* Forgets every statement (DISCARD ALL, DEALLOCATE ALL, server closed) and frees memory. */
void px_stmt_set_clear(struct px_stmt_set *set);

static inline uint32_t px_stmt_set_count(const struct px_stmt_set *set)
{
    return set->count;
}

/* ---- message bodies (after the type byte and length word) --------------------------- */
/*
 * Splitters return 0 and pointers into body, or -1 when the body is malformed (a missing
 * terminator, a negative count, a short or overlong body).  They never read body[len].
 */

/* Parse: name\0 query\0 int16 n, n x int32.  *content is the part after the name. */
int px_parse_split(const uint8_t *body, uint32_t len, const char **name, const uint8_t **content,
                   uint32_t *content_len);

/* Bind: portal\0 stmt\0 rest, where rest (formats, parameters, result formats) is checked
 * for a well-formed layout and returned as is. */
int px_bind_split(const uint8_t *body, uint32_t len, const char **portal, const char **stmt,
                  const uint8_t **rest, uint32_t *rest_len);

/* Describe or Close: kind ('S' statement or 'P' portal), name\0. */
int px_target_split(const uint8_t *body, uint32_t len, char *kind, const char **name);

/*
 * Writers append one complete message (type byte, big-endian length, body) to out.
 * Return 0, or -1 on allocation failure or a message longer than the protocol allows;
 * on failure nothing is appended.
 */
int px_write_parse(struct evbuffer *out, const char *server_name, const uint8_t *content,
                   uint32_t content_len);
int px_write_bind(struct evbuffer *out, const char *portal, const char *server_name,
                  const uint8_t *rest, uint32_t rest_len);
/* type 'D' (Describe) or 'C' (Close); kind 'S' or 'P'. */
int px_write_target(struct evbuffer *out, char type, char kind, const char *name);

#endif
