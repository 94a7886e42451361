/*
 * fuzz_userlist.c: the auth_file parser (auth/userlist.c px_userlist_load), fed the input
 * as the file's content (a memfd), with and without a previous list that donates derived
 * secrets; then lookups (px_userlist_find) of the users the file names and of names it
 * does not, and the md5 helpers on what was found.
 *
 * Properties: a file either loads or fails with "PATH:LINE: what" (or "PATH: what"); every
 * user found has a non-empty name equal to the one looked up, an md5 hash unless it is a
 * SCRAM-only entry, a SCRAM secret unless it is an md5-only entry, and a secret ready only
 * when the file held a verifier or the previous list donated the secret it derived for
 * the same password (plaintext secrets are derived at first login, never at load).
 *
 * PBKDF2 runs once, at start-up (the donated secret of "alice"), never per input.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "auth/userlist.h"

static struct px_userlist *previous;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char file[] = "\"alice\" \"secret\"\n"
                               "\"bob\" \"md5d2d2c8d8ca4a7cf7a3b2ee5e57e1e4b1\"\n";
    char *err = NULL;
    if (px_userlist_load(fuzz_file((const uint8_t *)file, sizeof file - 1), NULL, &previous, &err) <
        0)
        abort();
    if (!px_userlist_scram(previous, "alice"))
        abort();
    (void)argc;
    (void)argv;
    return 0;
}

static void check_user(const struct px_user *u, const char *name)
{
    FUZZ_CHECK(u->name && strcmp(u->name, name) == 0 && u->name[0]);
    if (u->md5) {
        FUZZ_CHECK(strlen(u->md5) == 35 && strncmp(u->md5, "md5", 3) == 0);
        char salted[36];
        px_md5_salted(u->md5, (const uint8_t *)"salt", salted);
        FUZZ_CHECK(strlen(salted) == 35);
    }
    if (u->password)
        FUZZ_CHECK(u->md5 && u->has_scram);
    if (u->scram_ready)
        FUZZ_CHECK(u->has_scram && u->scram.iterations >= 1 && u->scram.salt_len >= 1 &&
                   u->scram.salt_len <= PX_SCRAM_MAX_SALT);
    if (!u->has_scram)
        FUZZ_CHECK(u->md5 && !u->password);
    if (u->password && strcmp(name, "alice") != 0)
        FUZZ_CHECK(!u->scram_ready);
}

/* The first "quoted" field of the input, unescaped: a user name the file may hold. */
static char *first_name(const uint8_t *data, size_t size)
{
    const uint8_t *q = memchr(data, '"', size);
    if (!q)
        return NULL;
    char *name = malloc(size + 1);
    if (!name)
        abort();
    size_t n = 0;
    for (const uint8_t *p = q + 1; p < data + size; p++) {
        if (*p == '"') {
            if (p + 1 < data + size && p[1] == '"') {
                name[n++] = '"';
                p++;
                continue;
            }
            break;
        }
        name[n++] = (char)*p;
    }
    name[n] = '\0';
    return name;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file(data, size);
    struct px_userlist *ul = NULL;
    char *err = NULL;
    bool donate = size > 0 && data[size - 1] == '\n';
    if (px_userlist_load(path, donate ? previous : NULL, &ul, &err) < 0) {
        FUZZ_CHECK(ul == NULL);
        FUZZ_CHECK(err && strncmp(err, path, strlen(path)) == 0 && err[strlen(path)] == ':');
        free(err);
        return 0;
    }
    FUZZ_CHECK(ul != NULL && err == NULL);
    char *name = first_name(data, size);
    static const char *const others[] = {"alice", "bob", "", "postgres"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        const struct px_user *u = px_userlist_find(ul, others[i]);
        if (u)
            check_user(u, others[i]);
    }
    if (name) {
        const struct px_user *u = px_userlist_find(ul, name);
        if (u)
            check_user(u, name);
        free(name);
    }
    FUZZ_CHECK(px_userlist_find(ul, NULL) == NULL);
    px_userlist_free(ul);
    return 0;
}
