/*
 * params.h: parameter sets (name -> value), as PostgreSQL reports them with
 * ParameterStatus.  Small (a dozen entries) and linear on purpose.
 *
 * Used for what a server reports (its current settings), for the welcome a pool caches per
 * startup signature (what a fresh server reports at login), and for what a client in
 * transaction pooling has changed since its welcome.
 *
 * Transaction pooling compares the re-synced ("tracked") parameters of a client and a
 * server at every link, so each set also keeps them in fixed slots: a comparison is seven
 * pointer loads, not seven searches.
 */
#ifndef PGW_PROXY_PARAMS_H
#define PGW_PROXY_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The reported parameters transaction pooling re-syncs per client (SPEC section 3).
 * client_encoding is slot 0: the other values are text in the client's encoding, so it is
 * set first. */
enum { PX_TRACKED_PARAMS = 7 };
extern const char *const px_tracked_params[PX_TRACKED_PARAMS];

/* The slot of name[0..len) (ASCII case-insensitive, as PostgreSQL matches GUC names), or
 * -1 when it is not tracked. */
int px_tracked_index(const char *name, size_t len);

struct px_params {
    size_t n, cap;
    struct px_param {
        char *name;
        char *value;
    } * items;
    const char *tracked[PX_TRACKED_PARAMS]; /* values of the tracked names, or NULL */
};

/* Sets name to value (copies both).  0, or -1 when out of memory (the set is unchanged). */
int px_params_set(struct px_params *ps, const char *name, const char *value);
/* The value of name, or NULL. */
const char *px_params_get(const struct px_params *ps, const char *name);
/* a and b hold the same names with the same values. */
bool px_params_equal(const struct px_params *a, const struct px_params *b);
/* Frees the entries; ps is empty afterwards. */
void px_params_clear(struct px_params *ps);

/* Parses a ParameterStatus body (name\0value\0, exactly len bytes).  0 or -1. */
int px_params_parse_status(const uint8_t *body, uint32_t len, const char **name,
                           const char **value);

#endif
