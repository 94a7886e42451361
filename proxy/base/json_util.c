/*
 * json_util.c: jansson helpers for strings that came from clients (json_util.h).
 *
 * jansson refuses invalid UTF-8 in json_string(); client input (application_name, user,
 * database, lock keys) may contain anything, so it is sanitized first (U+FFFD for bad
 * bytes) and handed over with the _nocheck variant.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/json_util.h"

json_t *px_json_stringn(const char *s, size_t len)
{
    if (!s)
        return json_null();
    if (px_utf8_valid(s, len))
        return json_stringn_nocheck(s, len);
    size_t n;
    char *clean = px_utf8_sanitize(s, len, &n);
    if (!clean)
        return NULL;
    json_t *j = json_stringn_nocheck(clean, n);
    free(clean);
    return j;
}

json_t *px_json_string(const char *s)
{
    return px_json_stringn(s, s ? strlen(s) : 0);
}
