/*
 * tls.c: OpenSSL contexts (see tls.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "net/tls.h"

/*
 * Both sides' TLS options.  SSL_OP_IGNORE_UNEXPECTED_EOF: a peer that closes its TCP
 * connection without a TLS close_notify (a client process killed, a libpq client that
 * exits, PostgreSQL restarting, a health check that hangs up mid-handshake) is an end of
 * stream (SSL_ERROR_ZERO_RETURN, libevent's BEV_EVENT_EOF), as OpenSSL 1.1 reported it,
 * not an "unexpected eof while reading" protocol error (OpenSSL 3), which would count as
 * a failed TLS handshake, be logged as a connection error and make OpenSSL send a fatal
 * alert to a peer that is gone.  This gives up TLS's own detection of a truncation
 * attack (an attacker cutting the TCP stream): PostgreSQL's protocol frames every
 * message with its length and ends every exchange with ReadyForQuery (or the client's
 * Terminate), so a truncated stream is seen there, as PostgreSQL and libpq see it: a
 * cut message is never complete, and a stream cut between messages is a connection lost
 * in the middle of an exchange, never a normal end of one (a transaction without its
 * COMMIT is rolled back).
 */
#define PX_TLS_OPTIONS                                                                             \
    (SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF)

const char *px_tls_error(void)
{
    static char buf[256];
    unsigned long e = ERR_get_error();
    if (!e)
        return "unknown TLS error";
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return buf;
}

void px_tls_close_notify(SSL *ssl)
{
    /* After a fatal error OpenSSL is back "in init", so the check below covers it. */
    if (!ssl || !SSL_is_init_finished(ssl) || (SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN))
        return;
    ERR_clear_error();
    int rc = SSL_shutdown(ssl);
    (void)rc; /* 0: sent, the peer's own not awaited; < 0: the socket is full or gone */
    ERR_clear_error();
}

const char *px_tls_failure(struct bufferevent *bev, int *sys_err)
{
    static char buf[256];
    int err = errno;
    unsigned long e = ERR_get_error();
    if (!e && bev)
        e = bufferevent_get_openssl_error(bev); /* 0 for a plain bufferevent */
    ERR_clear_error();
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    else
        snprintf(buf, sizeof(buf), "%s", err ? strerror(err) : "unknown error");
    if (sys_err)
        *sys_err = e ? 0 : err;
    return buf;
}

static char *errf(const char *what, const char *file)
{
    char *msg = NULL;
    if (asprintf(&msg, "%s %s: %s", what, file ? file : "", px_tls_error()) < 0)
        return NULL;
    return msg;
}

SSL_CTX *px_tls_client_side_new(const struct px_config *cfg, char **errmsg)
{
    *errmsg = NULL;
    if (cfg->client_tls_mode == PX_CTLS_DISABLE)
        return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        *errmsg = errf("cannot create TLS context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, PX_TLS_OPTIONS);
    /* An idle connection keeps no record buffers (~34 kB each otherwise): OpenSSL frees
     * them once a record is read or written in full and allocates them again when the
     * next one comes, at the cost of a malloc and free per record. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    /* PostgreSQL clients do not resume sessions; tickets would only cost CPU. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->client_tls_cert_file) != 1) {
        *errmsg = errf("cannot load client_tls_cert_file", cfg->client_tls_cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->client_tls_key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        *errmsg = errf("cannot load client_tls_key_file", cfg->client_tls_key_file);
        goto fail;
    }
    if (cfg->client_tls_ca_file && *cfg->client_tls_ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, cfg->client_tls_ca_file, NULL) != 1) {
            *errmsg = errf("cannot load client_tls_ca_file", cfg->client_tls_ca_file);
            goto fail;
        }
        /* Ask for a client certificate and verify it when one is sent. */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *px_tls_server_side_new(const struct px_config *cfg, char **errmsg)
{
    *errmsg = NULL;
    if (cfg->server_tls_mode == PX_STLS_DISABLE)
        return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        *errmsg = errf("cannot create TLS context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, PX_TLS_OPTIONS);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* as for clients: an idle server too */
    if (cfg->server_tls_ca_file && *cfg->server_tls_ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, cfg->server_tls_ca_file, NULL) != 1) {
            *errmsg = errf("cannot load server_tls_ca_file", cfg->server_tls_ca_file);
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    if (cfg->server_tls_mode >= PX_STLS_VERIFY_CA)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    else
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    return ctx;
}

SSL *px_tls_server_ssl_new(SSL_CTX *ctx, enum px_server_tls_mode mode, const char *host)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl)
        return NULL;
    unsigned char addr[16];
    bool is_ip = inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
    if (!is_ip)
        SSL_set_tlsext_host_name(ssl, host);
    if (mode == PX_STLS_VERIFY_FULL) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host)
                       : X509_VERIFY_PARAM_set1_host(param, host, 0);
        if (ok != 1) {
            SSL_free(ssl);
            return NULL;
        }
    }
    return ssl;
}
