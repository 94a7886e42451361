/*
 * params.h: parameter sets (name -> value), as PostgreSQL reports them with
 * ParameterStatus.  Small (a dozen entries) and linear on purpose.
 *
 * Used for what a server reports (its current settings), for the welcome a pool caches per
 * startup signature (what a fresh server reports at login), and for what a client in
 * transaction pooling has changed since its welcome.
 */
#ifndef PGW_PROXY_PARAMS_H
#define PGW_PROXY_PARAMS_H

#include <stddef.h>
#include <stdint.h>

struct px_params {
    size_t n, cap;
    struct px_param {
        char *name;
        char *value;
    } * items;
};

/* Sets name to value (copies both).  0, or -1 when out of memory (the set is unchanged). */
int px_params_set(struct px_params *ps, const char *name, const char *value);
/* The value of name, or NULL. */
const char *px_params_get(const struct px_params *ps, const char *name);
/* Copies src into an empty dst.  0 or -1 (dst left empty). */
int px_params_copy(struct px_params *dst, const struct px_params *src);
/* Frees the entries; ps is empty afterwards. */
void px_params_clear(struct px_params *ps);

/* Parses a ParameterStatus body (name\0value\0, exactly len bytes).  0 or -1. */
int px_params_parse_status(const uint8_t *body, uint32_t len, const char **name,
                           const char **value);

#endif
