/*
 * userlist.h: the auth_file (PgBouncer's userlist.txt format) and md5 password helpers.
 *
 * File format, one user per line:   "username" "password"
 * Double quotes inside a field are doubled (""); blank lines and lines starting with ';' or
 * '#' are ignored.  The password is one of:
 *   - a plaintext password;
 *   - "md5" followed by 32 hex digits: md5(password || username), as PostgreSQL stores it;
 *   - a SCRAM verifier "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>".
 * For a plaintext password the SCRAM secret is derived on the first login of that user
 * (px_userlist_scram: PBKDF2 once per user and password, never per login, and never for
 * users who do not log in), so loading and reloading cost no PBKDF2; on reload, users
 * whose password did not change keep a secret already derived.
 */
#ifndef PGW_PROXY_USERLIST_H
#define PGW_PROXY_USERLIST_H

#include <stdbool.h>
#include <stdint.h>

#include "auth/scram.h"

struct px_user {
    char *name;
    char *password; /* plaintext, or NULL when the file holds only a hash */
    char *md5;      /* "md5<32 hex>", or NULL when not available (SCRAM-only entries) */
    bool has_scram; /* always true except for md5-only entries */
    /* The secret: stored, or derived from password on first use.  Read it with
     * px_userlist_scram(), which derives it; scram_ready says whether it is there yet. */
    bool scram_ready;
    struct px_scram_secret scram;
};

struct px_userlist;

/* Loads path.  previous (may be NULL) donates derived secrets of unchanged users.  On error
 * returns -1 and *errmsg "FILE:LINE: what" (free with free()). */
__attribute__((warn_unused_result)) int px_userlist_load(const char *path,
                                                         const struct px_userlist *previous,
                                                         struct px_userlist **out, char **errmsg);
void px_userlist_free(struct px_userlist *ul);
/* Borrowed pointer valid until the list is freed; NULL when unknown. */
const struct px_user *px_userlist_find(const struct px_userlist *ul, const char *name);
/*
 * The SCRAM secret of user name: NULL when the user is unknown or has only an md5 hash (or
 * when deriving failed: out of memory).  A plaintext password's secret is derived by the
 * first call for that user (PBKDF2, ~1-5 ms on the caller's thread) and kept in ul.
 * Borrowed, valid until ul is freed.
 */
const struct px_scram_secret *px_userlist_scram(struct px_userlist *ul, const char *name);

/* out = "md5" + hex(md5(password || user)); out has room for 36 bytes incl. NUL. */
void px_md5_encrypt(const char *password, const char *user, char out[36]);
/* out = "md5" + hex(md5(hex_part(md5_stored) || salt)): what a client sends in
 * PasswordMessage for md5 auth, given the stored "md5..." hash. */
void px_md5_salted(const char *md5_stored, const uint8_t salt[4], char out[36]);

#endif
