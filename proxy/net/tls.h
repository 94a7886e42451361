/*
 * tls.h: OpenSSL contexts for both sides.  pgwarden is the TLS server for clients
 * (client_tls_mode) and a TLS client of PostgreSQL (server_tls_mode, libpq's sslmode
 * semantics).  Connections get their SSL objects from here and hand them to libevent's
 * OpenSSL bufferevents, which own them afterwards (BEV_OPT_CLOSE_ON_FREE).
 */
#ifndef PGW_PROXY_TLS_H
#define PGW_PROXY_TLS_H

#include <event2/bufferevent.h>
#include <openssl/ssl.h>

#include "base/config.h"

/* Builds the context for client connections; NULL (and *errmsg, free()) on failure.
 * Returns NULL with *errmsg == NULL when client TLS is disabled. */
SSL_CTX *px_tls_client_side_new(const struct px_config *cfg, char **errmsg);
/* Builds the context for server connections (verification per server_tls_mode). */
SSL_CTX *px_tls_server_side_new(const struct px_config *cfg, char **errmsg);

/* A new SSL for a server connection to host: SNI and, for verify-full, host-name checks. */
SSL *px_tls_server_ssl_new(SSL_CTX *ctx, enum px_server_tls_mode mode, const char *host);

/* The last OpenSSL error as text (static buffer). */
const char *px_tls_error(void);

/*
 * Why bev reported BEV_EVENT_ERROR, for the log (static buffer): the TLS reason when one is
 * known (px_reader leaves it in OpenSSL's queue; libevent keeps the ones it met while it
 * read or wrote itself), else errno's socket error.  Call first thing in the event
 * callback: errno is only good until the next system call.  bev may be plain.  sys_err
 * (may be NULL): that errno when it is the reason, else 0.
 */
const char *px_tls_failure(struct bufferevent *bev, int *sys_err);

/*
 * Sends ssl's peer a close_notify, as PostgreSQL and libpq do when they close a TLS
 * connection: once, without blocking (an alert that does not fit the socket is dropped),
 * and only on an established connection (never after a fatal error, which OpenSSL
 * forbids).  Leaves OpenSSL's error queue empty.
 */
void px_tls_close_notify(SSL *ssl);

#endif
