/*
 * scram_int.h: internals of px_auth shared by scram.c, userlist.c and their unit tests.
 * Nothing outside px_auth and tests/proxy/test_{scram,userlist}.c includes this header.
 */
#ifndef PGW_PROXY_SCRAM_INT_H
#define PGW_PROXY_SCRAM_INT_H

#include <stddef.h>
#include <stdint.h>

#include "auth/scram.h"

/* Derives a secret from password with a given salt (px_scram_secret_from_password draws the
 * salt at random).  Runs PBKDF2.  Deterministic: used by the tests for the RFC vectors. */
__attribute__((warn_unused_result)) int px_scram_secret_derive(const char *password,
                                                               const uint8_t *salt, size_t salt_len,
                                                               int iterations,
                                                               struct px_scram_secret *out);

/* Number of PBKDF2 runs in this process so far (a cost counter; the tests assert that logins
 * do not derive keys). */
unsigned long px_scram_pbkdf2_runs(void);

/* ---- Test hooks: never called by the proxy --------------------------------------------- */

/* Every nonce generated from now on (client and server) is this string instead of random
 * base64 (NULL restores random nonces).  The string is copied; at most 127 characters. */
void px_scram_test_set_nonce(const char *nonce);

/* The "n=" value our client sends in its client-first-message (NULL: empty, as libpq).
 * The string is copied; at most 127 characters. */
void px_scram_test_set_client_user(const char *user);

#endif
