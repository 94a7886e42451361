/*
 * waitgraph.h: deadlocks that span pgwarden instances ([locks] backend = postgresql;
 * docs/design/distributed-locks.md section 8).  Pure: no I/O, no clock, no libevent.
 *
 * Every instance with a long global wait publishes its *part* of the wait-for graph in
 * PostgreSQL (one row per instance, written and read by lockspace.c): its waiting clients
 * (nodes), the global holds of those clients, and the wait-for edges among them that
 * lockmgr knows (local edges).  An instance reads every part, adds the edges lockmgr
 * cannot see (a global wait of one instance for a key held in a conflicting mode on
 * another), and looks for a cycle through one of its own global waits.
 *
 * Parts are published at different moments.  A cycle counts only if all its waits were
 * in progress at one instant: every wait on it began before every part it uses was taken
 * (minus a margin for the time between taking a part and PostgreSQL stamping it).  A
 * client's holds do not change while it waits, so edges read from parts taken at
 * different times then held together at that instant.  Times are PostgreSQL's clock
 * (microseconds since 1970), the only clock all instances share.
 *
 * The victim of a cycle is its wait that began last (ties: the greater instance name,
 * then client id), so every instance that sees the cycle picks the same victim and only
 * its instance acts.
 */
#ifndef PGW_PROXY_WAITGRAPH_H
#define PGW_PROXY_WAITGRAPH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A waiting client.  since_us: when its wait began, on PostgreSQL's clock, or 0 when not
 * known yet; then age_us says how long it had waited when the part was taken (a reader
 * takes published - age, and the publisher keeps that value for its next parts, so
 * every instance derives the same start for the same wait). */
struct wg_node {
    uint64_t client;
    int64_t since_us;
    uint64_t age_us;
    bool global;       /* waits for PostgreSQL (a provisional local grant) */
    uint64_t key_hash; /* global: the key it waits for */
    uint8_t mode;      /* global: the mode it waits for (lockmgr_mode) */
};

/* A lock a waiting client holds in PostgreSQL (through its instance). */
struct wg_hold {
    uint64_t client;
    uint64_t key_hash;
    uint8_t mode;
};

/* A wait-for edge between two waiting clients of one instance (from lockmgr). */
struct wg_edge {
    uint64_t from, to;
};

/* One instance's part. */
struct wg_part {
    char instance[64];
    int64_t published_us; /* PostgreSQL's clock when the part was stored */
    struct wg_node *nodes;
    struct wg_hold *holds;
    struct wg_edge *edges;
    size_t nnodes, nholds, nedges;
};

/* Limits of one part (a larger graph is cut: cut parts miss cycles, never invent one). */
#define WG_MAX_NODES 2048
#define WG_MAX_HOLDS 8192
#define WG_MAX_EDGES 8192

/* Text form of a part's graph (lines "n client since age", "g client hash mode",
 * "h client hash mode", "e from to").  Returns a malloc'd NUL-terminated string, NULL on
 * allocation failure. */
char *wg_encode(const struct wg_part *p);

/* Parses text into p (instance and published_us set by the caller); nodes without a
 * start get published_us - age_us.  0, or -1 for text that is not a part (p left empty).
 * Free with wg_part_clear. */
int wg_decode(const char *text, struct wg_part *p);

void wg_part_clear(struct wg_part *p);

/* Read/write/exclusive: two modes conflict when either is exclusive or both are write. */
bool wg_conflict(uint8_t a, uint8_t b);

#define WG_CYCLE_MAX 32

struct wg_cycle {
    size_t len;
    struct {
        size_t part; /* index into the parts given to wg_find */
        uint64_t client;
        int64_t since_us;
    } at[WG_CYCLE_MAX];
    size_t victim; /* index into at[] */
};

/* Looks for a cycle whose victim (its wait that began last) is a wait of parts[own], that
 * passes through another part, and all of whose waits were in progress at one instant
 * (margin_us: the largest delay between taking a part and PostgreSQL stamping it).  True
 * with *out filled (out->at[out->victim] is in parts[own]).  Every instance looks only
 * for its own victims, so each cycle is broken by the one instance that owns its victim. */
bool wg_find(const struct wg_part *parts, size_t nparts, size_t own, int64_t margin_us,
             struct wg_cycle *out);

#endif
