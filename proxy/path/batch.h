/*
 * batch.h: query batching in transaction pooling (server_query_batch > 1).
 *
 * Why.  Behind a pooler every query costs two network round trips; on a busy machine the
 * second one (pooler <-> PostgreSQL: a send, a backend wake-up, a recv, for every query)
 * is a large part of the cost of a short query.  When several clients' single-statement
 * autocommit queries arrive in the same turn of the event loop, pgwarden sends them to
 * one server in one write; PostgreSQL reads them in one go and answers them in order,
 * each with its own ReadyForQuery, and pgwarden routes each answer to its client by that
 * order.
 *
 * Which requests.  The client's buffered input must be exactly one request, from a client
 * outside a transaction (no held BEGIN) whose reported parameters equal those of the
 * server's current client and whose other session state (session.h) the server carries
 * already (a batched client gets no prelude), and it must be one of:
 *   - a simple-protocol Query holding one statement that starts with SELECT, VALUES,
 *     TABLE, WITH, INSERT, UPDATE, DELETE or MERGE and uses no session-only feature
 *     (sqlscan.h);
 *   - an extended-protocol group [Parse] Bind [Describe] Execute Sync, in that order and
 *     nothing else (no Close, Flush, second Execute ...), at most 16 KiB: the Bind of the
 *     unnamed portal, of the group's own Parse (unnamed or named) or of a named statement
 *     the client prepared earlier (its text from the client's statement map, prepared.h;
 *     the verdict is cached in the statement, so each text is classified once), the
 *     Describe of that portal or statement, the Execute of the unnamed portal with no row
 *     limit, and the statement of the same kinds as a Query's.  What pgbench -M extended
 *     / -M prepared, PQexecParams / PQexecPrepared send for an autocommit statement.
 * Such a request always ends at ReadyForQuery 'I' (the group runs in an implicit
 * transaction that ends at its Sync), and its reply is the same whoever runs before it: an
 * error in one (at Parse, Bind or Execute) makes the server skip to that request's own
 * Sync, and the next client's request is untouched.
 *
 * Every stage of the path still applies: the request goes to the server through
 * px_path_relay_into, as any relayed message (statement renaming, a hidden Parse of a
 * named statement the server lacks, the FIFO of expected replies, retry recording and its
 * replay of a retryable error, which is decided once the client's reply is in).  Not
 * batched, because some stage may stop the relay in the middle or needs a round trip of
 * its own first: any request while fault-injection rules exist (a rule may hold or answer
 * a message, fault.h), an extended-protocol group of a client with pgwarden lock state
 * (locks.h reads its Bind / Execute), a group whose named Parse would exceed
 * max_client_prepared_statements (a FATAL), a first client whose prelude (re-sync SETs,
 * txn.h) must run first.
 *
 * How a batch forms.  A client linked to a server with such a query (the batch's first)
 * has it queued in the server's output buffer, not written at once; until the bufferevent
 * writes it (the next loop turn), other clients with such queries join: they become
 * batched (state PX_CL_BATCHED, c->server set, in the server's FIFO) and their query is
 * appended.  A freed server that goes to a waiting client takes the following waiting
 * clients along the same way, in queue order.  New clients do not join while others wait
 * (no overtaking).  At most server_query_batch queries are in one batch.
 *
 * While a server holds a batch each of its clients has exactly one request in flight: the
 * current client's next messages wait in its input buffer until its reply is complete.
 * At each ReadyForQuery the relay stops, the current client becomes idle (its waiting
 * input is handled as any idle client's) and the next batched client becomes the
 * server's client.  A client that leaves (or is cancelled by its driver closing) leaves
 * a hole: its reply is read and discarded, and the others carry on.  A CancelRequest of a
 * batched client is held until its query is the one running (a cancel sent at once would
 * hit another client's query), then sent only if no query is queued behind it (else
 * dropped: px_cancel_forward).
 *
 * The price: a query waits for the ones batched before it (head-of-line blocking), which
 * is why the feature is off by default.  See docs/transaction-pooling.md.
 */
#ifndef PGW_PROXY_BATCH_H
#define PGW_PROXY_BATCH_H

#include <stdbool.h>

#include "conn.h"

/* c (idle or waiting, transaction mode) has a query that may be batched: appends it to
 * the pool's forming batch.  True when c is now batched. */
bool px_batch_join(struct px_client *c);

/* c was just linked to c->server (and re-synced): when its input is one query that may be
 * batched, queues it without writing it and lets others join.  False: relay as usual. */
bool px_batch_open(struct px_client *c);

/* A waiting client was just linked to s and may have opened a batch: the clients that
 * wait behind it join while they can, in order. */
void px_batch_take_waiting(struct px_server *s);

/* The relay stopped after a ReadyForQuery on s, which holds a batch (px_batch_stops):
 * gives s to the next batched client, or back to the pool after the last.  True when
 * relaying s may go on. */
bool px_batch_next(struct px_server *s);

/* No query may join s's batch any more (its server is released, closed, or its client
 * sent more than its one query).  The pool's batch_server is the one open batch. */
static inline void px_batch_close(struct px_server *s)
{
    if (s->pool->batch_server == s)
        s->pool->batch_server = NULL;
}

/* Whether the relay must stop after the ReadyForQuery it is forwarding on s. */
static inline bool px_batch_stops(const struct px_server *s)
{
    return s->batched_n > 0 || s->orphan_client;
}

/* Whether c's further messages must wait (clients' queries follow its own on its server). */
static inline bool px_batch_holds(const struct px_client *c)
{
    return c->server && c->server->batched_n > 0;
}

/* c leaves (closing) while a batch is on its server: its reply will be discarded.  True
 * when handled; false when c is not part of a batch (unlink it as usual). */
bool px_batch_leave(struct px_client *c);

/* s is closing: every batched client gets 08006. */
void px_batch_fail(struct px_server *s);

/* Where the reply of a client that left goes (drained by the caller). */
struct evbuffer *px_batch_sink(void);
/* Frees the sink (at exit). */
void px_batch_shutdown(void);

#endif
