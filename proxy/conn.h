/*
 * conn.h: the proxy's object model, shared by client.c, server.c, pool.c, relay.c, cancel.c
 * and main.c.  It is internal to proxy/: nothing outside proxy/ includes it.
 *
 *   px (one per process) ── pools (database, user, startup signature is per server)
 *        │                     ├── servers: login │ idle │ active │ resetting
 *        │                     ├── clients: idle │ waiting │ active
 *        │                     └── welcomes: what a fresh server reports, per signature
 *        └── clients in login, failing and closing lists, cancel-key map
 *
 * Every connection is on exactly one list, the one of its state; state changes go through
 * px_client_set_state() / px_server_set_state(), which check the transition and move the
 * object between lists.  Connections are never freed inside their own callbacks: closing
 * moves them to a closing list and the reaper event frees them at a safe point of the loop.
 */
#ifndef PGW_PROXY_CONN_H
#define PGW_PROXY_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include <event2/event.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/ssl.h>

#include "auth/scram.h"
#include "auth/userlist.h"
#include "base/config.h"
#include "base/list.h"
#include "base/log.h"
#include "net/sockread.h"
#include "path/prepared.h"
#include "proto/params.h"
#include "proto/relay.h"
#include "proto/wire.h"

struct px_metrics_set;
struct px_admin;
struct px_breaker;
struct px_client_fault;

/* Output above this many bytes stops reading the other side; below LOW it resumes. */
#define PX_BACKPRESSURE_HIGH (256 * 1024)
#define PX_BACKPRESSURE_LOW  (64 * 1024)

/*
 * What a server opened with one startup signature reports at login (ParameterStatus).
 * The pool caches it so that a client with that signature is welcomed without waiting for
 * a server; servers and clients keep a reference to the one they were welcomed with.
 */
struct px_welcome {
    struct px_list link; /* on the pool's cache, least recently used first; or unlinked */
    int refs;            /* the cache's reference counts as one */
    char *signature;
    size_t signature_len;
    struct px_params params;
};

static inline struct px_welcome *px_welcome_ref(struct px_welcome *w)
{
    if (w)
        w->refs++;
    return w;
}

/* Drops a reference; the last one frees w.  NULL is a no-op. */
static inline void px_welcome_unref(struct px_welcome *w)
{
    if (!w || --w->refs > 0)
        return;
    px_params_clear(&w->params);
    free(w->signature);
    free(w);
}

enum px_client_state {
    PX_CL_LOGIN,   /* startup packet, TLS, authentication */
    PX_CL_IDLE,    /* welcomed, no server, nothing outstanding (transaction pooling) */
    PX_CL_WAITING, /* authenticated, queued for a server */
    PX_CL_ACTIVE,  /* linked to a server (session mode: for the whole session) */
    PX_CL_BATCHED, /* its one query was sent to c->server behind other clients' queries
                      (server_query_batch, batch.h); active when its reply comes */
    PX_CL_FAILING, /* got its error: closes once that is written (at most 5 s later) */
    PX_CL_CLOSING, /* dead: waits for the reaper */
};

enum px_login_step {
    PX_LOGIN_STARTUP, /* waiting for SSLRequest / StartupMessage / CancelRequest */
    PX_LOGIN_TLS,     /* TLS handshake in progress */
    PX_LOGIN_MD5,     /* sent AuthenticationMD5Password */
    PX_LOGIN_SCRAM_INITIAL,
    PX_LOGIN_SCRAM_FINAL,
    PX_LOGIN_DONE,
};

/* A client's address in binary: 20 bytes instead of the 64 of its text, on every idle
 * client (issue 19's memory per idle client). */
struct px_peer_addr {
    uint8_t family; /* AF_INET, AF_INET6, AF_UNIX, 0: unknown */
    uint16_t port;
    uint8_t ip[16];
};

struct px_client {
    struct px_list link; /* on the list of its state */
    uint64_t id;
    enum px_client_state state;
    enum px_login_step login_step;
    struct bufferevent *bev; /* NULL while parked (net/client.h px_client_park) */
    /* TLS: owned by the client with fd, not by its bufferevent, which a parked client
     * gives up (its TLS connection stays).  NULL: a plain socket. */
    SSL *ssl;
    struct px_reader rd; /* reads fd into bev's input (sockread.h) */
    evutil_socket_t fd;
    bool reject_full; /* accepted past max_client_conn: answer 53300 after startup */
    bool tls;
    /* An SSLRequest / GSSENCRequest was answered (TLS up counts as both): each is answered
     * once per connection, as PostgreSQL does; a repeat is an unknown protocol version. */
    bool ssl_done, gss_done;
    bool welcomed;            /* got ReadyForQuery from us: the login is over for the client */
    bool read_paused;         /* reading stopped for backpressure */
    bool have_client_key;     /* SCRAM passthrough: ClientKey recovered from the login */
    struct px_peer_addr peer; /* its address (net/client.h px_client_addr formats it) */
    struct px_pool *pool;
    struct px_server *server;

    char *user;
    char *database; /* in user's allocation */
    char *application_name;
    /* The startup parameters forwarded to servers (everything but user/database), sorted,
     * as "name\0value\0" pairs: the client's signature.  Servers opened with the same
     * signature have exactly the session defaults this client would get on a direct
     * connection.  Then, in the same allocation, the hard signature: the signature without
     * the parameters transaction pooling re-syncs with SET (servers with the same hard
     * signature can serve this client in transaction mode). */
    char *signature;
    char *hard_signature;
    uint32_t signature_len, hard_signature_len;
    struct px_server *launching; /* a server being opened for this waiting client */

    /* Transaction pooling (txn.c). */
    struct px_welcome *welcome; /* what the client was told at login */
    /* Reported parameters changed since the welcome; NULL until the first change. */
    struct px_params *vars;
    uint8_t *held_begin; /* a BEGIN (whole Query message) not yet sent to a server */
    /* While it has no server: its unnamed statement and unnamed portal when they are
     * transaction control answered by pgwarden (local.c), referenced; else NULL. */
    struct px_stmt *local_unnamed, *local_portal;
    uint32_t held_begin_len;
    /* The Query at the head of the input, classified while idle: reused when that message
     * is relayed, so a query is scanned once (head_sql_len: its length; 0: none).  What
     * the relay needs of it (a DEALLOCATE, whose name is needed, is scanned again). */
    uint32_t head_sql_len;
    uint8_t head_sql_kind; /* enum px_sql_kind */
    bool head_sql_multi;
    bool head_sql_dml;
    bool head_sql_plain;       /* nothing but kind, multi and dml to know: no rescan needed */
    bool warned_session_state; /* logged the session-feature warning */
    bool unnamed_lost;         /* it sent a simple Query since its last Parse of the unnamed
                                  statement: that statement, on whichever server, is gone
                                  (txn.c px_txn_linked) */
    bool unnamed_parsed;       /* it sent a Parse of the unnamed statement to its server since
                                  it got it (rename.c) */
    bool held_failed;          /* the held block failed (a lock error): its server-side
                                  transaction must be aborted when it gets a server */
    const char *head_sql_feature;
    struct px_stmt_map stmts; /* named prepared statements */
    /* Session state that follows it to every server (session.c); NULL: none yet. */
    struct px_sstate *sstate;

    /* pgwarden locks (path/locks.h): NULL until the client's first lock call. */
    struct px_client_locks *locks;
    struct px_lockprobe_wait *lockprobe; /* its entry in path/lockprobe.c while it waits */
    /* Fault injection (path/fault.c): a statement delayed by a latency rule waits on
     * fault's timer; fault_passed lets it through once.  fault_unnamed_stmt: what the
     * unnamed statement is, fault_unnamed_portal: what the unnamed portal runs (enum
     * px_fault_stmt of path/fault.h: an Execute of it is a statement, a commit, or
     * never injected into); fault (NULL until needed, owned): the timer and, in session
     * pooling, its named statements that are transaction control. */
    struct px_client_fault *fault;
    /* Transparent retry (path/retry.h): what is kept to replay its transaction; NULL when
     * retry is off, and until the client first sends something or gets a server
     * (retry_wanted: retry was on when it logged in). */
    struct px_retry *retry;
    /* The answer to a COMMIT whose server was lost, being looked for (path/outcome.h). */
    struct px_outcome *outcome;
    /* pgwarden failed a statement it had no server for (the circuit breaker refused it):
     * the rest of its message is dropped as it arrives (skip_bytes) and, for an
     * extended-protocol group, every message up to its Sync (local.h). */
    uint32_t skip_bytes;
    bool skip_to_sync;
    /* The flags of the stages above, together (no padding between them). */
    bool lock_waiting; /* parked until its lock wait ends: its input waits */
    bool fault_waiting, fault_passed;
    uint8_t fault_unnamed_stmt, fault_unnamed_portal;
    bool fault_disconnect; /* close the server once this message is sent */
    /* Its relay stopped before a message pgwarden answers itself, until the server has
     * answered everything sent before it (path.c). */
    bool reply_hold;
    bool retry_wanted;
    bool cancel_pending; /* batched: cancel its query once it is the server's client */
    /* Linked, and the held BEGIN goes with the client's next message, in the same Query or
     * extended-protocol group (txn.h px_txn_begin_query, px_txn_begin_group), instead of
     * in a round trip of its own. */
    bool begin_merge;

    struct px_scram_server *scram;
    uint8_t md5_salt[4];
    uint8_t client_key[PX_SCRAM_KEY_LEN];

    uint32_t cancel_pid, cancel_key;
    struct px_client *cancel_next; /* cancel-key hash chain */
    /* A CancelRequest connection: the forwarded cancel it waits for (cancel.h), closed
     * when PostgreSQL has processed it. */
    struct px_cancel_req *cancel_wait;

    uint64_t connect_ms;
    union {
        uint64_t wait_start_ms;     /* waiting: since when */
        uint64_t close_deadline_ms; /* failing: closed then even if the error is not written */
    };
    struct px_stream c2s;
};

enum px_server_state {
    PX_SV_LOGIN,     /* connect, TLS, startup, authentication, initial parameters */
    PX_SV_IDLE,      /* ready, in the pool */
    PX_SV_ACTIVE,    /* linked to a client */
    PX_SV_RESETTING, /* running server_reset_query before going idle */
    PX_SV_CLOSING,
};

enum px_server_login_step {
    PX_SVL_CONNECT,
    PX_SVL_TLS_ANSWER, /* sent SSLRequest, waiting for 'S' / 'N' */
    PX_SVL_TLS,        /* TLS handshake */
    PX_SVL_AUTH,       /* sent StartupMessage; authentication and parameters */
};

struct px_server {
    struct px_list link;
    uint64_t id;
    enum px_server_state state;
    enum px_server_login_step login_step;
    struct bufferevent *bev;
    struct px_reader rd; /* reads fd into bev's input (sockread.h) */
    bool tls;
    struct px_pool *pool;
    struct px_client *client;
    char *signature; /* startup-parameter signature it was opened with (owned copy) */
    size_t signature_len;
    char *hard_signature; /* points into signature's allocation */
    size_t hard_signature_len;
    struct px_welcome *welcome; /* what it reported at login */
    evutil_socket_t fd;
    bool fd_in_tls_bev;       /* the TLS bufferevent owns fd (and closes it) */
    struct px_client *opener; /* the client it was opened for (for login errors), or NULL */
    /* SCRAM passthrough: the opener's ClientKey, copied at launch because the opener may
     * leave or take another server before this one logs in. */
    bool have_client_key;
    uint8_t client_key[PX_SCRAM_KEY_LEN];
    /* What it reported since its welcome (at login, until the welcome is stored: all of
     * it); the welcome has the rest, shared by every server of the signature. */
    struct px_params params;
    uint32_t backend_pid, backend_key;
    /* A CancelRequest on its way to this backend (cancel.c): until PostgreSQL has closed
     * that connection (the signal is sent) the server is not given to another client, so a
     * late cancel can only hit the query it was meant for, or nothing. */
    struct px_cancel_req *cancel;
    struct px_scram_client *scram;

    uint64_t created_ms, last_used_ms, login_deadline_ms;
    struct px_stream s2c;
    int pending_ready; /* ReadyForQuery replies still expected */
    bool unsynced;     /* extended-protocol messages sent since the last Sync */
    bool read_tags;    /* the client's Query ends its block: CommandComplete is read (locks.h) */
    char txn_status;   /* last ReadyForQuery status: 'I', 'T' or 'E' */
    int reset_pending; /* ReadyForQuery replies still expected while resetting */
    /* Draining after its client left mid-request (server.c): ReadyForQuery replies the
     * abandoned work still owes, bytes of a message already half relayed, and the time by
     * which it must be done. */
    int drain_ready;
    uint32_t drain_skip;
    uint64_t drain_deadline_ms;
    bool copy_in;         /* the server waits for COPY data (CopyInResponse seen) */
    bool stmts_uncertain; /* statements may exist on it that the set does not list:
                             every Parse is preceded by a Close (rename.c) */
    /* Whose session state it carries (session.c): the client id and that client's state
     * version; 0: the state of a fresh session; UINT64_MAX: unknown.  sstate_prepared: it
     * has SQL-level prepared statements of that client. */
    uint64_t sstate_owner;
    uint32_t sstate_version;
    bool sstate_prepared;
    bool close_needed;       /* never reuse: protocol error, lifetime, config change */
    bool ready_after_cancel; /* reset done, but a cancel of its last client's work is in
                                flight: ready once PostgreSQL has signalled the backend */
    bool cut_when_sent;      /* chaos: closed before its next reply is relayed (path.c) */
    /* The client whose Parse made its unnamed statement, with nothing since that destroys
     * it (a simple Query, a reset); 0: nobody's, or unknown (txn.c px_txn_linked). */
    uint64_t unnamed_owner;
    /* Circuit breaker (pool/breaker.h): nonzero when opened as the probe of that id; a
     * failure of this connection was counted already (a FATAL, then the lost connection,
     * count once); its login stopped because pgwarden has no credentials the server's
     * method accepts (the database answered: not its failure). */
    uint64_t probe_id;
    /* Counts the server's assignments to a client (pool.c, batch.c): path/lockprobe.c checks
     * that a backend served the same client throughout a deadlock check. */
    uint64_t client_gen;
    bool breaker_counted;
    bool login_no_credentials;

    /* Transaction pooling (txn.c). */
    int hidden_queries; /* replies of queries pgwarden injected, swallowed first */
    /* The prelude (hidden re-sync SETs and held BEGIN sent at link, see txn.h) got an
     * error: it is sent again once its last reply is in.  prelude_tries counts attempts,
     * prelude_error keeps the last error's message (owned) for the client if all fail. */
    bool prelude_failed;
    uint8_t prelude_tries;
    char *prelude_error;
    bool hidden_abort; /* the last hidden query is a deliberate failure (path/locks.c) */
    /* The outcome of a lost COMMIT (path/outcome.h): a client's COMMIT is in flight (until
     * the next ReadyForQuery); the transaction id learned before it (0: none assigned);
     * the hidden query whose first value is kept (PX_CAPTURE_*), and that value. */
    bool commit_inflight;
    bool xid_known;
    uint64_t xid;
    uint8_t capture;
    bool xid_prefix;   /* the replies of the transaction-id query sent in front of a simple
                          COMMIT (outcome.h) come first: they are swallowed */
    bool prefix_done;  /* ... and were (or the BEGIN's, below): the relay stopped to go on
                          with its usual table */
    bool begin_prefix; /* the CommandComplete (and BindComplete) of a held BEGIN sent in
                          front of the client's Query or group (txn.h) come first: they are
                          swallowed */
    bool begin_failed; /* ... that BEGIN failed: the Query's ReadyForQuery says 'E' */
    /* ... and until that Query's ReadyForQuery, error positions count this many characters
     * of BEGIN text in front of the client's (they are moved back) */
    uint32_t begin_shift;
    int capture_skip; /* hidden queries before the captured one, whose replies come first */
    bool captured_null;
    char captured[24];
    bool last_untracked;      /* the last message sent has no reply the FIFO tracks: only a
                                 barrier or a ReadyForQuery proves everything was answered */
    bool group_failed;        /* an error in the current extended-protocol group: the server
                                 skips everything until the client's next Sync */
    bool dirty;               /* a client left session state: reset before reuse */
    struct px_expect *expect; /* ring of sent Parse/Close/Sync awaiting their replies */
    uint32_t expect_head, expect_n, expect_cap;
    struct px_stmt_set stmts; /* named statements prepared on it */

    /* Query batching (batch.h): clients whose one query was sent after the current
     * client's, in order; a NULL entry is a client that left (its reply is discarded). */
    struct px_client *batched[PX_QUERY_BATCH_MAX];
    uint8_t batched_head, batched_n;
    bool orphan_client; /* the current client left: its reply is discarded */
};

/* What a hidden query's DataRow is (struct px_server capture). */
enum px_capture { PX_CAPTURE_NONE = 0, PX_CAPTURE_XID, PX_CAPTURE_STATUS };

/* A message sent to a server whose reply transaction pooling tracks (txn.c). */
struct px_expect {
    uint8_t kind;         /* PX_EXP_PARSE | PX_EXP_CLOSE | PX_EXP_SYNC */
    uint8_t hidden;       /* injected by pgwarden: swallow the reply */
    uint8_t abort;        /* hidden Parse that fails on purpose: its error is swallowed */
    uint8_t set_op;       /* what sending it did to the server's statement set: PX_SETOP_* */
    struct px_stmt *stmt; /* referenced when set_op or client_name is used */
    char *client_name;    /* a client Parse: the client's name, undone if it fails */
};

struct px_pool {
    struct px_list link;
    struct px_pool *hash_next; /* chain of its bucket in pool.c's index by (database, user) */
    uint64_t hash;
    char *database; /* as clients name it */
    char *user;     /* as clients name it */
    /* Lifetime: clients and servers whose ->pool is this one (px_pool_ref/unref).  A pool
     * made for the "*" entry (or whose entry is gone) is freed by the janitor once it has
     * had none for autodb_idle_timeout_ms; other pools live as long as the process. */
    int refs;
    bool auto_created;
    uint64_t unused_since_ms; /* when refs last dropped to 0 */
    /* Where and how servers connect: copied from the [databases] entry at creation and
     * refreshed on reload. */
    char *host;
    int port;
    char *dbname;
    char *server_user;
    char *server_password; /* NULL: from auth_file or the client's SCRAM keys */
    int pool_size;
    enum px_pool_mode mode; /* fixed when the pool is created */
    enum px_unmovable unmovable_state;
    struct px_breaker *breaker; /* its database's, shared by the pools of that name; a
                                   reference (NULL only when out of memory: admits all) */

    struct px_list servers_login, servers_idle, servers_active, servers_resetting;
    int n_login, n_idle, n_active, n_resetting;
    struct px_list clients_idle, clients_waiting, clients_active;
    int n_idle_clients, n_waiting, n_active_clients;
    int n_pinned;            /* clients whose state pins their server (session.c) */
    struct px_list welcomes; /* struct px_welcome, least recently used first */
    int n_welcomes;

    /* Fast-fail: the last server login failure, sent to new clients until it expires. */
    struct evbuffer *login_error;
    uint64_t login_error_until_ms;
    /* Health (px_pool_can_serve): the last server connect attempt failed in a way that says
     * the database is unreachable or refuses connections, at connect_failed_ms, with this
     * message; cleared by the next server that logs in. */
    bool connect_failed;
    uint64_t connect_failed_ms;
    char connect_error[160];
    bool logged_in_once;   /* a server of this pool has logged in (health: a name served by *
                              that nobody could log in to, a typo, is no sign of health) */
    bool maintain_pending; /* px_pool_maintain() runs at the next safe point */
    /* The server whose query batch may still grow (batch.h): its clients have exactly one
     * autocommit query each in flight, the last one not written yet. */
    struct px_server *batch_server;

    /* Metric series of this pool and pre-resolved hot counters (stats.c). */
    struct px_metrics_set *metrics;
    uint64_t *m_bytes_in, *m_bytes_out, *m_transactions, *m_queries;
};

struct px_proxy {
    struct event_base *base;
    struct px_config *cfg;
    struct px_userlist *users;
    SSL_CTX *client_tls; /* we are the TLS server for clients */
    SSL_CTX *server_tls; /* we are the TLS client of PostgreSQL */
    struct event *janitor, *reaper;
    struct event *sig_term, *sig_int, *sig_hup;

    struct px_list pools;
    struct px_list clients_login;
    struct px_list clients_failing; /* no pool serves them any more */
    struct px_list clients_closing, servers_closing;
    int n_clients; /* every client connection, any state */
    int n_parked;  /* clients without a bufferevent (net/client.c px_client_park) */
    int n_pools;
    uint64_t next_client_id, next_server_id;

    bool shutting_down;
    uint64_t shutdown_deadline_ms;

    struct px_stmt_registry *stmt_registry; /* prepared statements by content */

    struct px_client **cancel_buckets;
    size_t cancel_nbuckets, cancel_count;
    struct px_list cancels; /* struct px_cancel_req in flight (cancel.c) */

    struct px_admin *admin;
};

extern struct px_proxy px;

/* The monotonic clock, in milliseconds and microseconds. */
uint64_t px_now_ms(void);
uint64_t px_now_us(void);

/* How a relay may write to a connection past its bufferevent (proto/relay.h): the plain
 * socket, or the TLS object once its handshake is done (tls set). */
static inline struct px_direct px_client_direct(const struct px_client *c)
{
    if (c->ssl)
        return (struct px_direct){-1, c->tls ? c->ssl : NULL};
    return (struct px_direct){c->fd, NULL};
}

static inline struct px_direct px_server_direct(const struct px_server *s)
{
    if (s->fd_in_tls_bev)
        return (struct px_direct){-1, s->tls ? bufferevent_openssl_get_ssl(s->bev) : NULL};
    return (struct px_direct){s->fd, NULL};
}

/* A client or server points at pool from now on (c->pool / s->pool). */
static inline void px_pool_ref(struct px_pool *pool)
{
    pool->refs++;
}

/* ... and no longer: the last one gone starts the pool's unused time (pool.c frees unused
 * pools of the "*" entry). */
static inline void px_pool_unref(struct px_pool *pool)
{
    PX_ASSERT(pool->refs > 0);
    if (--pool->refs == 0)
        pool->unused_since_ms = px_now_ms();
}

#endif
