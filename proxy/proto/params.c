/* params.c: parameter sets (see params.h). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/params.h"

const char *const px_tracked_params[PX_TRACKED_PARAMS] = {
    "client_encoding", "application_name",
    "DateStyle",       "default_transaction_read_only",
    "IntervalStyle",   "standard_conforming_strings",
    "TimeZone",
};

int px_tracked_index(const char *name, size_t len)
{
    if (!name)
        return -1;
    for (int i = 0; i < PX_TRACKED_PARAMS; i++)
        if (strlen(px_tracked_params[i]) == len && !strncasecmp(name, px_tracked_params[i], len))
            return i;
    return -1;
}

/* Points name's slot (if it has one) at value. */
static void track(struct px_params *ps, const char *name, const char *value)
{
    int i = px_tracked_index(name, strlen(name));
    if (i >= 0)
        ps->tracked[i] = value;
}

int px_params_set(struct px_params *ps, const char *name, const char *value)
{
    for (size_t i = 0; i < ps->n; i++) {
        if (!strcmp(ps->items[i].name, name)) {
            if (!strcmp(ps->items[i].value, value))
                return 0;
            char *v = strdup(value);
            if (!v)
                return -1;
            free(ps->items[i].value);
            ps->items[i].value = v;
            track(ps, name, v);
            return 0;
        }
    }
    if (ps->n == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 16;
        struct px_param *items = realloc(ps->items, cap * sizeof(*items));
        if (!items)
            return -1;
        ps->items = items;
        ps->cap = cap;
    }
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v) {
        free(n);
        free(v);
        return -1;
    }
    ps->items[ps->n].name = n;
    ps->items[ps->n].value = v;
    ps->n++;
    track(ps, n, v);
    return 0;
}

const char *px_params_get(const struct px_params *ps, const char *name)
{
    for (size_t i = 0; i < ps->n; i++)
        if (!strcmp(ps->items[i].name, name))
            return ps->items[i].value;
    return NULL;
}

bool px_params_equal(const struct px_params *a, const struct px_params *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        const char *v = px_params_get(b, a->items[i].name);
        if (!v || strcmp(v, a->items[i].value) != 0)
            return false;
    }
    return true;
}

void px_params_clear(struct px_params *ps)
{
    for (size_t i = 0; i < ps->n; i++) {
        free(ps->items[i].name);
        free(ps->items[i].value);
    }
    free(ps->items);
    ps->items = NULL;
    ps->n = ps->cap = 0;
    memset(ps->tracked, 0, sizeof(ps->tracked));
}

int px_params_parse_status(const uint8_t *body, uint32_t len, const char **name, const char **value)
{
    const char *nul = memchr(body, '\0', len);
    if (!nul || (size_t)(nul - (const char *)body) + 1 >= len || body[len - 1] != '\0')
        return -1;
    /* exactly two strings */
    if (memchr(nul + 1, '\0', len - (size_t)(nul - (const char *)body) - 1) !=
        (const char *)body + len - 1)
        return -1;
    *name = (const char *)body;
    *value = nul + 1;
    return 0;
}
