/*
 * breaker.h: the circuit breaker of each database (SPEC section 6, docs/breaker.md), on
 * top of retry/'s breaker (a pure state machine: retry/include/retry/breaker.h).
 *
 * One breaker per database name clients ask for (a [databases] entry, or a name the "*"
 * entry serves); every pool of that name (one per user) points at it and feeds it:
 *
 *   failures   server connect and login failures and timeouts (px_breaker_login_failed),
 *              ErrorResponses of classes 08 and 53 and 57P01-57P03 relayed from an active
 *              server (px_breaker_server_error), an active server's connection lost
 *              (px_pool_server_lost, an event of the transport);
 *   successes  server logins (px_breaker_login_ok) and transactions that end
 *              (px_breaker_txn_done: one increment, credited to the window by the janitor
 *              or before the next failure, so that the order of outcomes is kept).
 *
 * Contention and the application's errors (40001, 40P01, 55P03, classes 22, 23, 42, and
 * anything retry_classify() does not mark as a breaker failure) never count.
 *
 * Admission (px_breaker_admit) is asked where a client without a server needs one: the
 * statement path's need_server (transaction pooling) and login (session pooling, or no
 * cached welcome).  While the breaker is not closed it refuses with a 57P03 message naming
 * the database and the time until the next probe.
 *
 * Probes: the pool's janitor calls px_breaker_janitor(), which drives time; when the open
 * period is over the breaker is half-open and a probe runs: a server login (net/server.c)
 * in one of the database's pools, with its login deadline at probe_timeout_ms.  It
 * succeeds when the login completes (the server then serves the pool like any other) or
 * when PostgreSQL answers with something that is not the database's failure (pgwarden has
 * no usable credentials, a wrong password); it fails on a breaker failure or timeout, and
 * the breaker reopens for a longer period (open_ms doubling up to open_max_ms).  Without
 * user traffic too: a breaker can never stay half-open.
 *
 * Event loop thread only.
 */
#ifndef PGW_PROXY_POOL_BREAKER_H
#define PGW_PROXY_POOL_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "conn.h"

/* Why a transaction was refused: message and detail of the 57P03 error. */
struct px_breaker_refusal {
    char message[256]; /* database "app" is unavailable (circuit breaker open): next probe in 1.8 s
                        */
    char detail[256];  /* what opened it */
};

/* ---- the set of breakers ------------------------------------------------------------ */

/*
 * From px.cfg (at start and after every reload): a breaker for every [databases] entry but
 * "*" (kept while configured, so that /pools and the metrics show every configured
 * database), and the [breaker] settings: a closed breaker takes changed settings at once
 * (its window starts empty), an open or half-open one when it next closes.  -1 when out of
 * memory (what could be made is kept; pools made later retry).
 */
int px_breaker_configure(void);

/* The breaker of database (found or made), with a reference for a pool; NULL when out of
 * memory.  Release with px_breaker_put. */
struct px_breaker *px_breaker_get(const char *database);
/* Drops a reference; the last one frees the breaker.  NULL is a no-op. */
void px_breaker_put(struct px_breaker *b);
/* The breaker of database if there is one (borrowed), for the admin views. */
struct px_breaker *px_breaker_find(const char *database);

/* Frees every breaker (after the pools, at exit). */
void px_breaker_free_all(void);

/* ---- admission and outcomes ------------------------------------------------------------ */

/* May a client of b's database start a transaction (or a session) now?  True when closed
 * (or b is NULL); false with why filled while open or half-open.  Counts refusals. */
bool px_breaker_admit(struct px_breaker *b, struct px_breaker_refusal *why);

/* A transaction ended on a server of pool (ReadyForQuery 'I'): a success.  O(1), no clock
 * read, no allocation: the hot path. */
void px_breaker_txn_done(struct px_pool *pool);

/* s relayed an ErrorResponse with this SQLSTATE (may be NULL) to its client: a failure when
 * it is of the breaker's classes. */
void px_breaker_server_error(struct px_server *s, const char *sqlstate);

/* s logged in: a success, or the success of the probe s runs. */
void px_breaker_login_ok(struct px_server *s);

/* s failed to log in.  error: PostgreSQL's ErrorResponse (whole message, may be NULL when
 * the connection failed, timed out, or pgwarden gave up); msg: the failure's text when
 * error is NULL. */
void px_breaker_login_failed(struct px_server *s, struct evbuffer *error, const char *msg);

/* ---- probes ------------------------------------------------------------------------------ */

/* Periodic work (from the pool's janitor): credits pending successes, moves time (open ->
 * half-open, probe timeouts), starts the probes that are due. */
void px_breaker_janitor(void);

/* ---- views ---------------------------------------------------------------------------------- */

struct px_breaker_info {
    const char *state;        /* "closed", "open", "half-open" */
    int64_t next_probe_ms;    /* open: until the probe; half-open: 0; closed: -1 */
    const char *last_failure; /* text of the last failure counted, "" when none (borrowed) */
    uint64_t failures;        /* failures counted since the breaker was made */
};

/* b may be NULL: a database with no breaker is closed. */
void px_breaker_info(const struct px_breaker *b, struct px_breaker_info *out);
/* Whether b (may be NULL) admits new transactions now (closed). */
bool px_breaker_closed(const struct px_breaker *b);

/* Tests: the clock the breakers run on (microseconds, monotonic); NULL restores
 * CLOCK_MONOTONIC. */
void px_breaker_set_clock(uint64_t (*now_us)(void));

#endif
