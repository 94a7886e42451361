/*
 * scram.h: SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, both sides, as pure
 * message transformations: no sockets, no libevent.  The proxy wraps these messages in
 * AuthenticationSASL* / SASLInitialResponse / SASLResponse packets.
 *
 * Cost model: PBKDF2 with 4096 iterations costs ~5 ms of CPU.  It is never run per login:
 *  - server side (we verify a client), a secret is derived once per user from a plaintext
 *    password (px_scram_secret_from_password, at the user's first login, cached in the
 *    user entry: px_userlist_scram) or
 *    parsed from a stored "SCRAM-SHA-256$iter:salt$StoredKey:ServerKey" verifier;
 *  - client side (we log in to PostgreSQL), the SaltedPassword for a (password, salt,
 *    iterations) triple is kept in a small bounded process-wide cache.
 * Channel binding is not offered (we advertise only SCRAM-SHA-256, and log in to servers
 * with gs2 header "n,,").
 *
 * All functions return 0 on success and -1 on failure; out strings are allocated with
 * malloc() and owned by the caller.
 */
#ifndef PGW_PROXY_SCRAM_H
#define PGW_PROXY_SCRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PX_SCRAM_KEY_LEN      32 /* SHA-256 */
#define PX_SCRAM_MAX_SALT     64
#define PX_SCRAM_DEFAULT_ITER 4096
/* Longest SASL message accepted from a client (its length field, which counts itself):
 * PostgreSQL's PG_MAX_SASL_MESSAGE_LENGTH; real client messages are about 100 bytes.  The
 * server functions below refuse SCRAM data longer than this too. */
#define PX_SCRAM_MAX_CLIENT_MESSAGE 1024

struct px_scram_secret {
    int iterations;
    uint8_t salt[PX_SCRAM_MAX_SALT];
    size_t salt_len;
    uint8_t stored_key[PX_SCRAM_KEY_LEN];
    uint8_t server_key[PX_SCRAM_KEY_LEN];
};

/* Derives a secret with a fresh random 16-byte salt.  Runs PBKDF2: call once per user. */
__attribute__((warn_unused_result)) int
px_scram_secret_from_password(const char *password, int iterations, struct px_scram_secret *out);

/* Parses PostgreSQL's verifier text "SCRAM-SHA-256$<iter>:<b64 salt>$<b64 stored>:<b64 server>". */
__attribute__((warn_unused_result)) int px_scram_secret_parse(const char *text,
                                                              struct px_scram_secret *out);

/* Fills a deterministic fake secret for an unknown user so that the exchange does the same
 * work and fails the same way as a wrong password (PostgreSQL's "mock" authentication). */
void px_scram_secret_mock(const char *user, struct px_scram_secret *out);

/* ---- Server side: verifying a client ------------------------------------------------ */
struct px_scram_server;

/* secret is copied. */
struct px_scram_server *px_scram_server_new(const struct px_scram_secret *secret);
void px_scram_server_free(struct px_scram_server *s);

/*
 * Takes the client-first-message (the SASLInitialResponse data, not NUL-terminated, at most
 * PX_SCRAM_MAX_CLIENT_MESSAGE bytes) and produces the server-first-message.  Returns -1 on
 * a malformed message or one asking for what we do not support (an authorization
 * identity, a mandatory extension, channel binding): px_scram_server_error says which.
 */
__attribute__((warn_unused_result)) int
px_scram_server_first(struct px_scram_server *s, const char *msg, size_t len, char **server_first);

/*
 * Takes the client-final-message.  Returns 0 when the message was well formed; *ok tells
 * whether the proof was right, and when it was, *server_final is the server-final-message
 * ("v=...").  Returns -1 on a malformed message.  When the proof is right, the recovered
 * ClientKey is kept and can be read with px_scram_server_client_key (for logging in to
 * PostgreSQL with the same secret without knowing the password).
 */
__attribute__((warn_unused_result)) int px_scram_server_final(struct px_scram_server *s,
                                                              const char *msg, size_t len, bool *ok,
                                                              char **server_final);
/* Why the last call on s failed, worded as PostgreSQL's auth-scram.c (a static string);
 * *unsupported tells a feature we do not support (SQLSTATE 0A000) from a malformed message
 * (08P01). */
const char *px_scram_server_error(const struct px_scram_server *s, bool *unsupported);

/* After a successful exchange: copies ClientKey into out and returns true. */
bool px_scram_server_client_key(const struct px_scram_server *s, uint8_t out[PX_SCRAM_KEY_LEN]);

/* ---- Client side: logging in to PostgreSQL ------------------------------------------ */
struct px_scram_client;

/* Authenticate with a plaintext password (copied). */
struct px_scram_client *px_scram_client_new(const char *password);
/* Authenticate with keys recovered from a client's SCRAM login (no password known); works
 * only when the server's verifier has the same salt and iterations as secret. */
struct px_scram_client *px_scram_client_new_keys(const uint8_t client_key[PX_SCRAM_KEY_LEN],
                                                 const struct px_scram_secret *secret);
void px_scram_client_free(struct px_scram_client *c);

/* The client-first-message ("n,,n=,r=<nonce>"). */
__attribute__((warn_unused_result)) int px_scram_client_first(struct px_scram_client *c,
                                                              char **client_first);
/* Takes the server-first-message, produces the client-final-message. */
__attribute__((warn_unused_result)) int
px_scram_client_final(struct px_scram_client *c, const char *msg, size_t len, char **client_final);
/* Checks the server-final-message's signature.  Returns 0 only when it verifies. */
__attribute__((warn_unused_result)) int px_scram_client_verify(struct px_scram_client *c,
                                                               const char *msg, size_t len);

/* Drops the process-wide SaltedPassword cache (tests, and reload). */
void px_scram_cache_clear(void);

#endif
