/*
 * pool.c: pools, server assignment, the waiting queue and the janitor (see pool.h).
 *
 * Assignment rule (session mode): a client gets an idle server opened with exactly its
 * startup signature, so SHOW and RESET behave as on a direct connection.  When none is
 * idle and the pool has room, a server is opened for it; when the pool is full of idle
 * servers of other signatures, the oldest idle one is closed to make room.  Waiting
 * clients are served strictly first come, first served among those a server fits.
 *
 * Pools are found by (database, user) in a chained hash table keyed with SipHash (names are
 * chosen by clients).  With the "*" entry every name a client tries makes a pool, so such
 * pools are counted references (clients and servers pointing at them) and the janitor frees
 * one that has had none for autodb_idle_timeout_ms.
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "net/client.h"
#include "base/hash.h"
#include "base/log.h"
#include "chaos/chaos.h"
#include "pool/breaker.h"
#include "pool/pool.h"
#include "net/server.h"
#include "metrics/stats.h"

/* ---- index by (database, user) ------------------------------------------------------ */

#define POOL_INDEX_MIN 64

static struct {
    struct px_pool **buckets;
    size_t nbuckets; /* a power of two, or 0 before the first pool */
    struct px_hash_key key;
} pool_index;

/* The user is hashed under a key that the database's hash changes, so the pair is hashed
 * as a whole without copying the names together. */
static uint64_t pool_hash(const char *database, const char *user)
{
    struct px_hash_key k = pool_index.key;
    k.k0 ^= px_siphash13(&pool_index.key, database, strlen(database));
    return px_siphash13(&k, user, strlen(user));
}

/* Doubles the table when it holds more pools than buckets.  Returns -1 when out of memory
 * (the table keeps working, with longer chains). */
static int pool_index_grow(void)
{
    if (pool_index.nbuckets && (size_t)px.n_pools <= pool_index.nbuckets)
        return 0;
    if (!pool_index.nbuckets)
        px_hash_key_init(&pool_index.key);
    size_t n = pool_index.nbuckets ? pool_index.nbuckets * 2 : POOL_INDEX_MIN;
    struct px_pool **b = calloc(n, sizeof(*b));
    if (!b)
        return pool_index.nbuckets ? 0 : -1;
    for (size_t i = 0; i < pool_index.nbuckets; i++) {
        struct px_pool *p = pool_index.buckets[i], *next;
        for (; p; p = next) {
            next = p->hash_next;
            p->hash_next = b[p->hash & (n - 1)];
            b[p->hash & (n - 1)] = p;
        }
    }
    free(pool_index.buckets);
    pool_index.buckets = b;
    pool_index.nbuckets = n;
    return 0;
}

static void pool_index_remove(struct px_pool *pool)
{
    if (!pool_index.nbuckets)
        return;
    struct px_pool **pp = &pool_index.buckets[pool->hash & (pool_index.nbuckets - 1)];
    while (*pp && *pp != pool)
        pp = &(*pp)->hash_next;
    if (*pp)
        *pp = pool->hash_next;
    pool->hash_next = NULL;
}

static struct px_pool *pool_index_find(const char *database, const char *user, uint64_t h)
{
    if (!pool_index.nbuckets)
        return NULL;
    struct px_pool *p = pool_index.buckets[h & (pool_index.nbuckets - 1)];
    for (; p; p = p->hash_next)
        if (p->hash == h && !strcmp(p->database, database) && !strcmp(p->user, user))
            return p;
    return NULL;
}

/* Whether pool was made for the "*" entry (or its entry is gone): freed when unused. */
static bool auto_entry(const struct px_db_config *db)
{
    return !db || strcmp(db->name, "*") == 0;
}

static int pool_total_servers(const struct px_pool *p)
{
    return p->n_login + p->n_idle + p->n_active + p->n_resetting;
}

static bool same_signature(const struct px_server *s, const struct px_client *c)
{
    return s->signature_len == c->signature_len &&
           memcmp(s->signature, c->signature, c->signature_len) == 0;
}

/* Session mode, and a transaction-mode client not yet welcomed (its welcome is what a
 * server of its exact signature reports): the same startup signature.  A welcomed
 * transaction-mode client: the same hard signature, the reported parameters being
 * re-synced with SET when it is linked. */
bool px_pool_server_fits(const struct px_server *s, const struct px_client *c)
{
    if (s->pool->mode == PX_POOL_SESSION || !c->welcome)
        return same_signature(s, c);
    return s->hard_signature_len == c->hard_signature_len &&
           memcmp(s->hard_signature, c->hard_signature, c->hard_signature_len) == 0;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Copies the connection settings of db into pool.  Returns true when where or as whom the
 * pool connects changed (existing servers must then not be reused). */
static bool pool_configure(struct px_pool *pool, const struct px_db_config *db, bool *oom)
{
    const char *host = db->host ? db->host : "127.0.0.1";
    const char *dbname = db->dbname ? db->dbname : pool->database;
    const char *server_user = db->user ? db->user : pool->user;
    bool first = !pool->host;
    bool changed = first || strcmp(pool->host, host) || pool->port != db->port ||
                   strcmp(pool->dbname ? pool->dbname : "", dbname) ||
                   strcmp(pool->server_user ? pool->server_user : "", server_user) ||
                   (pool->server_password == NULL) != (db->password == NULL) ||
                   (db->password && strcmp(pool->server_password, db->password));
    if (changed) {
        char *h = strdup(host), *d = strdup(dbname), *u = strdup(server_user);
        char *pw = dup_or_null(db->password);
        if (!h || !d || !u || (db->password && !pw)) {
            free(h), free(d), free(u), free(pw);
            *oom = true;
            return false;
        }
        free(pool->host), free(pool->dbname), free(pool->server_user);
        free(pool->server_password);
        pool->host = h, pool->dbname = d, pool->server_user = u, pool->server_password = pw;
        pool->port = db->port;
    }
    pool->pool_size = db->pool_size >= 0 ? db->pool_size : px.cfg->default_pool_size;
    pool->unmovable_state =
        db->unmovable_state >= 0 ? (enum px_unmovable)db->unmovable_state : px.cfg->unmovable_state;
    /* The mode is fixed for the pool's life: a session-mode client cannot be switched to
     * transaction pooling mid-session (a changed pool_mode applies after a restart). */
    enum px_pool_mode mode =
        db->pool_mode >= 0 ? (enum px_pool_mode)db->pool_mode : px.cfg->pool_mode;
    if (first)
        pool->mode = mode;
    else if (mode != pool->mode)
        px_warning("pool", 0, 0,
                   "pool %s/%s: pool_mode %s takes effect after a restart (the pool stays in "
                   "%s mode)",
                   pool->database, pool->user, mode == PX_POOL_SESSION ? "session" : "transaction",
                   pool->mode == PX_POOL_SESSION ? "session" : "transaction");
    return changed;
}

/* ---- welcome cache --------------------------------------------------------------------- */

/* Bound of the cache per pool: distinct startup signatures seen recently. */
#define WELCOME_CACHE_MAX 32

static void welcome_drop(struct px_pool *pool, struct px_welcome *w)
{
    px_list_remove(&w->link);
    px_list_init(&w->link);
    pool->n_welcomes--;
    px_welcome_unref(w);
}

static void welcome_drop_oldest(struct px_pool *pool)
{
    welcome_drop(pool, PX_CONTAINER_OF(px_list_first(&pool->welcomes), struct px_welcome, link));
}

struct px_welcome *px_pool_welcome_find(struct px_pool *pool, const char *sig, size_t len)
{
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &pool->welcomes)
    {
        struct px_welcome *w = PX_CONTAINER_OF(it, struct px_welcome, link);
        if (w->signature_len == len && !memcmp(w->signature, sig, len)) {
            px_list_remove(&w->link);
            px_list_append(&pool->welcomes, &w->link); /* most recently used last */
            return w;
        }
    }
    return NULL;
}

void px_pool_welcome_store(struct px_server *s)
{
    struct px_pool *pool = s->pool;
    struct px_welcome *w = px_pool_welcome_find(pool, s->signature, s->signature_len);
    if (w && px_params_equal(&w->params, &s->params)) {
        px_welcome_unref(s->welcome);
        s->welcome = px_welcome_ref(w);
        px_params_clear(&s->params); /* the welcome has them */
        return;
    }
    if (w) {
        /* A newer login of the same signature is the better answer (settings may have
         * changed with ALTER DATABASE / ROLE ... SET). */
        welcome_drop(pool, w);
    }
    w = calloc(1, sizeof(*w));
    if (!w)
        return; /* s keeps its own full set */
    w->signature = malloc(s->signature_len + 1);
    if (!w->signature) {
        free(w);
        return;
    }
    w->params = s->params; /* moved: from now on s->params holds only what changed */
    memset(&s->params, 0, sizeof(s->params));
    memcpy(w->signature, s->signature, s->signature_len + 1);
    w->signature_len = s->signature_len;
    w->refs = 1;
    px_list_append(&pool->welcomes, &w->link);
    pool->n_welcomes++;
    while (pool->n_welcomes > WELCOME_CACHE_MAX)
        welcome_drop_oldest(pool);
    px_welcome_unref(s->welcome);
    s->welcome = px_welcome_ref(w);
}

static void pool_free(struct px_pool *pool)
{
    while (!px_list_empty(&pool->welcomes))
        welcome_drop_oldest(pool);
    pool_index_remove(pool);
    px_list_remove(&pool->link);
    px_stats_pool_destroy(pool);
    px_breaker_put(pool->breaker);
    if (pool->login_error)
        evbuffer_free(pool->login_error);
    free(pool->database), free(pool->user), free(pool->host), free(pool->dbname);
    free(pool->server_user), free(pool->server_password);
    free(pool);
    px.n_pools--;
}

struct px_pool *px_pool_get(const char *database, const char *user, const struct px_db_config *db)
{
    if (pool_index_grow() < 0)
        return NULL;
    uint64_t h = pool_hash(database, user);
    struct px_pool *p = pool_index_find(database, user, h);
    if (p)
        return p;
    p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    px_list_init(&p->link);
    px_list_append(&px.pools, &p->link);
    px.n_pools++;
    p->hash = h;
    p->hash_next = pool_index.buckets[h & (pool_index.nbuckets - 1)];
    pool_index.buckets[h & (pool_index.nbuckets - 1)] = p;
    p->auto_created = auto_entry(db);
    p->unused_since_ms = px_now_ms();
    px_list_init(&p->servers_login), px_list_init(&p->servers_idle);
    px_list_init(&p->servers_active), px_list_init(&p->servers_resetting);
    px_list_init(&p->clients_idle), px_list_init(&p->clients_waiting);
    px_list_init(&p->clients_active), px_list_init(&p->welcomes);
    p->database = strdup(database);
    p->user = strdup(user);
    p->breaker = px_breaker_get(database); /* NULL when out of memory: admits everything */
    bool oom = false;
    if (!p->database || !p->user || (pool_configure(p, db, &oom), oom) ||
        px_stats_pool_init(p) < 0) {
        pool_free(p);
        return NULL;
    }
    px_info("pool", 0, 0, "new pool %s/%s -> %s:%d/%s (%s mode, size %d)%s", database, user,
            p->host, p->port, p->dbname, p->mode == PX_POOL_SESSION ? "session" : "transaction",
            p->pool_size, p->auto_created ? ", freed when unused" : "");
    return p;
}

/* ---- linking -------------------------------------------------------------------------- */

/* Links s to c and tells the statement path.  queued: s was freed for c, the first
 * waiting client (the path may let the clients behind it share s: path/batch.h). */
static void link_pair(struct px_server *s, struct px_client *c, bool queued)
{
    if (c->launching && c->launching->opener == c)
        c->launching->opener = NULL;
    c->launching = NULL;
    if (s->opener && s->opener != c && s->opener->launching == s)
        s->opener->launching = NULL; /* its opener will get another one */
    s->opener = NULL;
    px_server_set_state(s, PX_SV_ACTIVE);
    s->client = c;
    s->client_gen++;
    c->server = s;
    s->last_used_ms = px_now_ms();
    /* Every assignment is observed, waits of zero included, so that the quantiles describe
     * what clients experience and not only the clients that queued. */
    px_stats_pool_wait(c->pool, c->state == PX_CL_WAITING ? s->last_used_ms - c->wait_start_ms : 0);
    px_client_set_state(c, PX_CL_ACTIVE);
    px_reader_enable(&s->rd, true);
    px_path_client_linked(c, queued);
}

/* An idle server for c: one of its exact signature if any (nothing to re-sync, and RESET
 * returns to c's own startup values), else any that fits. */
static struct px_server *find_idle(struct px_pool *pool, const struct px_client *c)
{
    struct px_server *fit = NULL;
    struct px_list *it;
    /* Most recently used first (LIFO, as PgBouncer): a few busy backends keep their caches
     * and the scheduler's favour, the rest idle out after server_idle_timeout_ms.  Taking
     * the oldest instead spread 16 clients over all 20 backends and cost PostgreSQL ~15%
     * more CPU per transaction in the pgbench -S benchmark. */
    px_list_for_each_reverse(it, &pool->servers_idle)
    {
        struct px_server *s = PX_CONTAINER_OF(it, struct px_server, link);
        if (same_signature(s, c))
            return s;
        if (!fit && px_pool_server_fits(s, c))
            fit = s;
    }
    return fit;
}

void px_pool_request_server(struct px_pool *pool, struct px_client *c)
{
    if (pool->login_error && px_now_ms() < pool->login_error_until_ms &&
        pool_total_servers(pool) == 0) {
        px_client_fatal_buffer(c, pool->login_error);
        return;
    }
    struct px_server *s = find_idle(pool, c);
    if (s && px_list_empty(&pool->clients_waiting)) {
        link_pair(s, c, false);
        return;
    }
    px_client_set_state(c, PX_CL_WAITING);
    px_pool_maintain(pool);
}

/* Closes the least recently used idle server whose signature no waiting client wants. */
static bool evict_idle(struct px_pool *pool)
{
    struct px_list *first = px_list_first(&pool->servers_idle);
    if (!first)
        return false;
    px_server_close(PX_CONTAINER_OF(first, struct px_server, link),
                    "making room for a client with other startup parameters");
    return true;
}

/* A [chaos] rule with when = connect fails the connection attempt for c: c gets the error a
 * failed server login gives (FATAL with the rule's SQLSTATE). */
static bool chaos_connect_fails(struct px_pool *pool, struct px_client *c)
{
    struct px_chaos_ctx ctx = {.when = PX_CHAOS_CONNECT,
                               .database = pool->database,
                               .user = pool->user,
                               .application_name = c->application_name,
                               .client_id = c->id};
    struct px_chaos_action a;
    /* decide logs the injection; latency at connect is refused when a rule is added */
    if (!px_chaos_decide(&ctx, &a) || a.kind == PX_CHAOS_LATENCY)
        return false;
    if (a.kind == PX_CHAOS_DISCONNECT)
        px_client_fatal(c, PX_SQLSTATE_CONNECTION_FAILURE,
                        "server closed the connection unexpectedly");
    else
        px_client_fatal(c, a.sqlstate, a.message);
    return true;
}

/* The first waiting client with no server being opened for it, or NULL. */
static struct px_client *first_unserved(struct px_pool *pool)
{
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &pool->clients_waiting)
    {
        struct px_client *c = PX_CONTAINER_OF(it, struct px_client, link);
        if (!c->launching)
            return c;
    }
    return NULL;
}

void px_pool_maintain(struct px_pool *pool)
{
    /* Linking runs the client's callbacks, which may close connections and edit these
     * lists: so rescan from the head after every action instead of holding an iterator. */
    struct px_client *c;
    while ((c = first_unserved(pool)) != NULL) {
        struct px_server *s = find_idle(pool, c);
        if (s) {
            link_pair(s, c, false);
            continue;
        }
        if (px.shutting_down)
            return;
        if (pool_total_servers(pool) >= pool->pool_size && !evict_idle(pool))
            return; /* full: the next server to come free goes to the queue */
        if (px_chaos_active() && chaos_connect_fails(pool, c))
            continue; /* an injected connection failure: c got its error */
        s = px_server_launch(pool, c);
        if (!s) {
            px_client_fatal(c, PX_SQLSTATE_CANNOT_CONNECT, "cannot connect to server");
            continue;
        }
        c->launching = s;
    }
}

static void server_up(const struct px_pool *pool);

void px_pool_server_ready(struct px_server *s)
{
    struct px_pool *pool = s->pool;
    if (s->state == PX_SV_LOGIN) {
        pool->connect_failed = false; /* the database takes connections again */
        server_up(pool);
    }
    if (pool_total_servers(pool) > pool->pool_size) {
        /* A reload made the pool smaller: the surplus goes as it is freed (the waiting
         * clients get the servers the new size keeps). */
        if (s->opener && s->opener->launching == s)
            s->opener->launching = NULL;
        s->opener = NULL;
        px_server_close(s, "pool_size lowered");
        return;
    }
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &pool->clients_waiting)
    {
        struct px_client *c = PX_CONTAINER_OF(it, struct px_client, link);
        if (px_pool_server_fits(s, c)) {
            link_pair(s, c, true);
            return;
        }
    }
    if (s->opener && s->opener->launching == s)
        s->opener->launching = NULL;
    s->opener = NULL;
    px_server_set_state(s, PX_SV_IDLE);
    s->last_used_ms = px_now_ms();
    px_reader_enable(&s->rd, true);
    if (px.shutting_down) {
        px_server_close(s, "shutting down");
        return;
    }
    /* Waiting clients of other signatures: trade this idle server for one of theirs. */
    if (!px_list_empty(&pool->clients_waiting))
        px_pool_schedule_maintain(pool);
}

void px_pool_server_logged_in(struct px_server *s)
{
    s->pool->logged_in_once = true;
    px_breaker_login_ok(s); /* first: a probe's success closes the breaker */
    px_pool_welcome_store(s);
    px_pool_server_ready(s);
}

void px_pool_server_closed(struct px_server *s)
{
    px_pool_schedule_maintain(s->pool);
}

void px_pool_schedule_maintain(struct px_pool *pool)
{
    pool->maintain_pending = true;
    event_active(px.reaper, EV_TIMEOUT, 0);
}

void px_pool_run_pending(void)
{
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &px.pools)
    {
        struct px_pool *pool = PX_CONTAINER_OF(it, struct px_pool, link);
        if (pool->maintain_pending) {
            pool->maintain_pending = false;
            px_pool_maintain(pool);
        }
    }
}

/* ---- health ---------------------------------------------------------------------------- */

/* How long a failed server connect attempt makes a database count as unable to serve,
 * unless a server logs in meanwhile (at least server_login_retry_ms, the fast-fail window,
 * during which new clients do not even try). */
#define HEALTH_FAILURE_MS 30000

/* Login errors from PostgreSQL that say the database takes no connections (the breaker's
 * classes, SPEC section 6), as opposed to one client's problem (password, database name):
 * SQLSTATE prefixes. */
static const char *const unavailable_sqlstates[] = {"08", "53", "57P01", "57P02", "57P03"};

/* Whether a failed login says the database is unavailable.  error: the server's
 * ErrorResponse message (type byte and length included), or NULL when the connection never
 * got that far (refused, unreachable, TLS, timeout): unavailable. */
static bool login_failure_unavailable(struct evbuffer *error)
{
    if (!error)
        return true;
    size_t n = evbuffer_get_length(error);
    const char *m = (const char *)evbuffer_pullup(error, (ssize_t)n);
    const char *code = m && n > 5 ? px_wire_error_field(m + 5, n - 5, 'C') : NULL;
    for (size_t i = 0; code && i < sizeof(unavailable_sqlstates) / sizeof(*unavailable_sqlstates);
         i++)
        if (!strncmp(code, unavailable_sqlstates[i], strlen(unavailable_sqlstates[i])))
            return true;
    return false;
}

/* Recent failures that say a whole server is down (no connection at all, or shutting
 * down / starting up: not one role's or database's connection limit), by address: a pool
 * that made no attempt of its own then cannot serve either (px_pool_can_serve).  A few
 * addresses are plenty; the oldest makes room. */
#define DOWN_SERVERS 8
static struct {
    uint64_t ms; /* 0: free */
    int port;
    char host[256];
} down_servers[DOWN_SERVERS];

/* The slot of pool's server address, or -1. */
static int down_slot(const struct px_pool *pool)
{
    for (int i = 0; i < DOWN_SERVERS; i++)
        if (down_servers[i].ms && down_servers[i].port == pool->port &&
            !strcmp(down_servers[i].host, pool->host))
            return i;
    return -1;
}

static void server_down(const struct px_pool *pool, uint64_t now)
{
    int slot = down_slot(pool);
    if (slot < 0) { /* the oldest, or a free one */
        slot = 0;
        for (int i = 1; i < DOWN_SERVERS; i++)
            if (down_servers[i].ms < down_servers[slot].ms)
                slot = i;
    }
    down_servers[slot].ms = now;
    down_servers[slot].port = pool->port;
    snprintf(down_servers[slot].host, sizeof(down_servers[slot].host), "%s", pool->host);
}

static void server_up(const struct px_pool *pool)
{
    int slot = down_slot(pool);
    if (slot >= 0)
        down_servers[slot].ms = 0;
}

static bool server_down_since(const struct px_pool *pool, uint64_t now, uint64_t window)
{
    int slot = down_slot(pool);
    return slot >= 0 && now - down_servers[slot].ms < window;
}

static void note_connect_failure(struct px_server *s, struct evbuffer *error, const char *msg)
{
    struct px_pool *pool = s->pool;
    if (s->login_no_credentials || !login_failure_unavailable(error))
        return;
    const char *code = NULL;
    if (error) {
        size_t n = evbuffer_get_length(error);
        const char *m = (const char *)evbuffer_pullup(error, (ssize_t)n);
        msg = m && n > 5 ? px_wire_error_field(m + 5, n - 5, 'M') : NULL;
        code = m && n > 5 ? px_wire_error_field(m + 5, n - 5, 'C') : NULL;
    }
    pool->connect_failed = true;
    pool->connect_failed_ms = px_now_ms();
    if (!error || (code && !strncmp(code, "57P0", 4)))
        server_down(pool, pool->connect_failed_ms);
    snprintf(pool->connect_error, sizeof(pool->connect_error), "%s",
             msg ? msg : "server login failed");
}

/*
 * A database can serve when its circuit breaker is closed (open or half-open: new
 * transactions are refused, whatever servers the pool has) and, before the breaker has
 * seen enough failures to open, when its pool has a logged-in server (idle, active or
 * resetting) or its last server connect attempt did not fail within HEALTH_FAILURE_MS: it
 * succeeded, none was made yet, or the failure is old enough that the next client makes a
 * new attempt.  Only failures that say the database is unavailable count (connection
 * refused or timed out, TLS, FATAL of class 08 or 53, 57P01-57P03), never one user's wrong
 * password.  Once the breaker has opened, its own probes decide (without client traffic):
 * a successful probe logs a server in, which clears the failure too.
 */
static bool has_servers(const struct px_pool *p)
{
    return p->n_idle + p->n_active + p->n_resetting > 0;
}

bool px_pool_can_serve(const struct px_pool *pool, uint64_t now)
{
    if (!px_breaker_closed(pool->breaker))
        return false;
    if (has_servers(pool))
        return true;
    if (pool->auto_created && !pool->logged_in_once)
        return false; /* a name served by * that no login has reached yet (a typo: 3D000) */
    uint64_t window = HEALTH_FAILURE_MS;
    if ((uint64_t)px.cfg->server_login_retry_ms > window)
        window = (uint64_t)px.cfg->server_login_retry_ms;
    if (pool->connect_failed)
        return now - pool->connect_failed_ms >= window;
    /* No failure of its own (no recent attempt): one of another pool that says the whole
     * server is down says as much for this one. */
    return !server_down_since(pool, now, window);
}

void px_pool_server_login_failed(struct px_server *s, struct evbuffer *error, const char *msg)
{
    struct px_pool *pool = s->pool;
    struct evbuffer *err = error;
    struct evbuffer *own = NULL;
    note_connect_failure(s, error, msg);
    px_breaker_login_failed(s, error, msg);
    if (!err) {
        own = err = evbuffer_new();
        if (own)
            px_wire_error(own, PX_SEV_FATAL, PX_SQLSTATE_CANNOT_CONNECT, msg, NULL);
        px_warning("server", 'S', s->id, "login failed: %s", msg);
        px_stats_server_connect_failed(pool);
        if (own) {
            if (!pool->login_error)
                pool->login_error = evbuffer_new();
            if (pool->login_error) {
                evbuffer_drain(pool->login_error, evbuffer_get_length(pool->login_error));
                size_t n = evbuffer_get_length(own);
                evbuffer_add(pool->login_error, evbuffer_pullup(own, (ssize_t)n), n);
                pool->login_error_until_ms = px_now_ms() + (uint64_t)px.cfg->server_login_retry_ms;
            }
        }
    }
    /* Fail the waiting clients that would get the same answer. */
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &pool->clients_waiting)
    {
        struct px_client *c = PX_CONTAINER_OF(it, struct px_client, link);
        if (!error || same_signature(s, c)) {
            c->launching = NULL;
            if (err) {
                px_client_fatal_buffer(c, err);
            } else {
                px_client_fatal(c, PX_SQLSTATE_CANNOT_CONNECT, "cannot connect to server");
            }
        }
    }
    if (own)
        evbuffer_free(own);
    s->opener = NULL;
    px_server_close(s, "login failed");
}

/* ---- janitor -------------------------------------------------------------------------- */

static void janitor_pool(struct px_pool *pool, uint64_t now)
{
    const struct px_config *cfg = px.cfg;
    struct px_list *it, *tmp;
    if (cfg->query_wait_timeout_ms > 0) {
        px_list_for_each_safe(it, tmp, &pool->clients_waiting)
        {
            struct px_client *c = PX_CONTAINER_OF(it, struct px_client, link);
            if (now - c->wait_start_ms >= (uint64_t)cfg->query_wait_timeout_ms) {
                char msg[160];
                snprintf(msg, sizeof(msg),
                         "no server connection available within query_wait_timeout_ms (%d ms)",
                         cfg->query_wait_timeout_ms);
                px_client_fatal(c, PX_SQLSTATE_QUERY_CANCELED, msg);
            }
        }
    }
    px_list_for_each_safe(it, tmp, &pool->servers_login)
    {
        struct px_server *s = PX_CONTAINER_OF(it, struct px_server, link);
        if (now >= s->login_deadline_ms)
            px_pool_server_login_failed(s, NULL, "timeout connecting to server");
    }
    px_list_for_each_safe(it, tmp, &pool->servers_resetting)
    {
        struct px_server *s = PX_CONTAINER_OF(it, struct px_server, link);
        if (s->drain_ready > 0 && now >= s->drain_deadline_ms)
            px_server_close(s, "did not finish the work its client left in time");
    }
    px_list_for_each_safe(it, tmp, &pool->servers_idle)
    {
        struct px_server *s = PX_CONTAINER_OF(it, struct px_server, link);
        if (s->close_needed)
            px_server_close(s, "configuration changed");
        else if (cfg->server_idle_timeout_ms > 0 &&
                 now - s->last_used_ms >= (uint64_t)cfg->server_idle_timeout_ms)
            px_server_close(s, "server_idle_timeout_ms reached");
        else if (cfg->server_lifetime_ms > 0 &&
                 now - s->created_ms >= (uint64_t)cfg->server_lifetime_ms)
            px_server_close(s, "server_lifetime_ms reached");
    }
    /* Idle and waiting clients with nothing buffered give up their bufferevents (client.h). */
    struct px_list *parkable[] = {&pool->clients_idle, &pool->clients_waiting};
    for (size_t i = 0; i < 2; i++) {
        px_list_for_each_safe(it, tmp, parkable[i])
        {
            px_client_park(PX_CONTAINER_OF(it, struct px_client, link));
        }
    }
    if (px.shutting_down) {
        /* Waiting clients too: no server is handed on while shutting down (each freed one
         * closes), so they would wait, and keep the process up, for ever. */
        struct px_list *lists[] = {&pool->clients_idle, &pool->clients_waiting,
                                   &pool->clients_active};
        for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
            px_list_for_each_safe(it, tmp, lists[i])
            {
                struct px_client *c = PX_CONTAINER_OF(it, struct px_client, link);
                if (px_client_is_idle(c) || now >= px.shutdown_deadline_ms)
                    px_client_fatal(c, PX_SQLSTATE_ADMIN_SHUTDOWN,
                                    "terminating connection due to administrator command");
            }
        }
    }
}

/* Frees pool when it is one that goes when unused and has been unused long enough. */
static void reap_unused(struct px_pool *pool, uint64_t now)
{
    if (!pool->auto_created || pool->refs > 0 || px.shutting_down ||
        now - pool->unused_since_ms < (uint64_t)px.cfg->autodb_idle_timeout_ms)
        return;
    PX_ASSERT(pool_total_servers(pool) == 0 && px_list_empty(&pool->clients_idle) &&
              px_list_empty(&pool->clients_waiting) && px_list_empty(&pool->clients_active));
    px_debug("pool", 0, 0, "freeing pool %s/%s: unused for autodb_idle_timeout_ms", pool->database,
             pool->user);
    pool_free(pool);
}

void px_pool_janitor(uint64_t now)
{
    struct px_list *it, *tmp;
    px_breaker_janitor(); /* first: a probe it starts is timed with the pools below */
    px_list_for_each_safe(it, tmp, &px.clients_failing)
    {
        struct px_client *c = PX_CONTAINER_OF(it, struct px_client, link);
        if (px_client_close_overdue(c, now))
            px_client_close(c);
    }
    px_list_for_each_safe(it, tmp, &px.clients_login)
    {
        struct px_client *c = PX_CONTAINER_OF(it, struct px_client, link);
        if (px.cfg->client_login_timeout_ms > 0 &&
            now - c->connect_ms >= (uint64_t)px.cfg->client_login_timeout_ms)
            px_client_fatal(c, PX_SQLSTATE_QUERY_CANCELED,
                            "canceling authentication due to timeout");
    }
    px_list_for_each_safe(it, tmp, &px.pools)
    {
        struct px_pool *pool = PX_CONTAINER_OF(it, struct px_pool, link);
        janitor_pool(pool, now);
        reap_unused(pool, now);
    }
    if (px.shutting_down)
        px_pool_check_shutdown();
}

/* Calls fn on every server of pool that is not closing; fn may move, close or free it
 * (each list is walked safely and a moved server is not visited twice, because closing and
 * freeing take it off the pool's lists). */
static void pool_foreach_server(struct px_pool *pool, void (*fn)(struct px_server *))
{
    struct px_list *lists[] = {&pool->servers_login, &pool->servers_idle, &pool->servers_active,
                               &pool->servers_resetting};
    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
        struct px_list *it, *tmp;
        px_list_for_each_safe(it, tmp, lists[i])
        {
            fn(PX_CONTAINER_OF(it, struct px_server, link));
        }
    }
}

static void mark_close_needed(struct px_server *s)
{
    s->close_needed = true;
}

static void close_for_shutdown(struct px_server *s)
{
    /* A server still answering its reset is closed once it has answered (it goes idle:
     * px_pool_server_ready), until shutdown_timeout_ms: closed with that answer unread, the
     * kernel would reset the connection, and PostgreSQL could lose the Terminate and log
     * "could not receive data from client". */
    if (s->state == PX_SV_RESETTING && px_now_ms() < px.shutdown_deadline_ms)
        return;
    px_server_close(s, "shutting down");
}

void px_pool_reconfigure(void)
{
    struct px_list *it, *tmp;
    if (px_breaker_configure() < 0)
        px_error("pool", 0, 0, "out of memory setting up circuit breakers");
    px_list_for_each_safe(it, tmp, &px.pools)
    {
        struct px_pool *pool = PX_CONTAINER_OF(it, struct px_pool, link);
        const struct px_db_config *db = px_config_find_db(px.cfg, pool->database);
        bool oom = false, changed = true;
        pool->auto_created = auto_entry(db);
        if (db)
            changed = pool_configure(pool, db, &oom);
        /* A smaller pool: idle servers beyond the size go now, busy ones as they are freed
         * (px_pool_server_ready). */
        struct px_list *sit, *stmp;
        px_list_for_each_safe(sit, stmp, &pool->servers_idle)
        {
            if (pool_total_servers(pool) <= pool->pool_size)
                break;
            px_server_close(PX_CONTAINER_OF(sit, struct px_server, link), "pool_size lowered");
        }
        if (!changed)
            continue;
        /* Servers connected to the old place: finish their sessions, never reuse. */
        pool_foreach_server(pool, mark_close_needed);
    }
}

void px_pool_check_shutdown(void)
{
    if (!px.shutting_down)
        return;
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &px.clients_login)
    {
        px_client_fatal(PX_CONTAINER_OF(it, struct px_client, link), PX_SQLSTATE_ADMIN_SHUTDOWN,
                        "terminating connection due to administrator command");
    }
    if (px.n_clients > 0)
        return;
    bool resetting = false;
    px_list_for_each_safe(it, tmp, &px.pools)
    {
        struct px_pool *pool = PX_CONTAINER_OF(it, struct px_pool, link);
        pool_foreach_server(pool, close_for_shutdown);
        resetting = resetting || !px_list_empty(&pool->servers_resetting);
    }
    if (!resetting) /* else the janitor looks again (each closes when its reset is done) */
        event_base_loopexit(px.base, NULL);
}

void px_pool_free_all(void)
{
    struct px_list *it, *tmp;
    px_list_for_each_safe(it, tmp, &px.pools)
    {
        struct px_pool *pool = PX_CONTAINER_OF(it, struct px_pool, link);
        pool_foreach_server(pool, px_server_free);
        struct px_list *lists[] = {&pool->clients_idle, &pool->clients_waiting,
                                   &pool->clients_active};
        for (size_t i = 0; i < 3; i++) {
            struct px_list *cit, *ctmp;
            px_list_for_each_safe(cit, ctmp, lists[i])
            {
                px_client_free(PX_CONTAINER_OF(cit, struct px_client, link));
            }
        }
        pool_free(pool);
    }
    free(pool_index.buckets);
    pool_index.buckets = NULL;
    pool_index.nbuckets = 0;
}
