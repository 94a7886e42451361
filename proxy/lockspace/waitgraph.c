/*
 * waitgraph.c: the wait-for graph across instances (see waitgraph.h).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lockspace/waitgraph.h"

bool wg_conflict(uint8_t a, uint8_t b)
{
    return a == 2 || b == 2 || (a == 1 && b == 1);
}

void wg_part_clear(struct wg_part *p)
{
    free(p->nodes);
    free(p->holds);
    free(p->edges);
    p->nodes = NULL;
    p->holds = NULL;
    p->edges = NULL;
    p->nnodes = p->nholds = p->nedges = 0;
}

/* ---- text ------------------------------------------------------------------------------ */

struct buf {
    char *s;
    size_t len, cap;
    bool failed;
};

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#include <stdarg.h>
static void buf_printf(struct buf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->failed = true;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
}

char *wg_encode(const struct wg_part *p)
{
    struct buf b = {malloc(256), 0, 256, false};
    if (!b.s)
        return NULL;
    b.s[0] = '\0';
    for (size_t i = 0; i < p->nnodes; i++) {
        const struct wg_node *n = &p->nodes[i];
        buf_printf(&b, "n %" PRIu64 " %" PRId64 " %" PRIu64 "\n", n->client, n->since_us,
                   n->age_us);
        if (n->global)
            buf_printf(&b, "g %" PRIu64 " %" PRIu64 " %u\n", n->client, n->key_hash,
                       (unsigned)n->mode);
    }
    for (size_t i = 0; i < p->nholds; i++)
        buf_printf(&b, "h %" PRIu64 " %" PRIu64 " %u\n", p->holds[i].client, p->holds[i].key_hash,
                   (unsigned)p->holds[i].mode);
    for (size_t i = 0; i < p->nedges; i++)
        buf_printf(&b, "e %" PRIu64 " %" PRIu64 "\n", p->edges[i].from, p->edges[i].to);
    if (b.failed) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

/* Reads an unsigned (or, with neg, a signed) decimal field followed by ' ' or '\n'. */
static bool field(const char **s, bool neg, uint64_t *u, int64_t *i)
{
    const char *p = *s;
    bool minus = false;
    if (neg && *p == '-') {
        minus = true;
        p++;
    }
    if (*p < '0' || *p > '9')
        return false;
    uint64_t v = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
            return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (*p == ' ')
        p++;
    else if (*p != '\n' && *p != '\0')
        return false;
    *s = p;
    if (u)
        *u = v;
    if (i) {
        if (v > (uint64_t)INT64_MAX)
            return false;
        *i = minus ? -(int64_t)v : (int64_t)v;
    }
    return true;
}

static struct wg_node *node_of(struct wg_part *p, uint64_t client)
{
    for (size_t i = p->nnodes; i-- > 0;) /* "g" follows its "n" */
        if (p->nodes[i].client == client)
            return &p->nodes[i];
    return NULL;
}

int wg_decode(const char *text, struct wg_part *p)
{
    size_t lines[3] = {0, 0, 0}; /* n, h, e: allocate what the text needs, capped */
    for (const char *l = text; *l; l++)
        if (l == text || l[-1] == '\n')
            lines[*l == 'n' ? 0 : *l == 'h' ? 1 : 2] += *l == 'n' || *l == 'h' || *l == 'e';
    p->nodes = calloc(lines[0] < WG_MAX_NODES ? lines[0] + 1 : WG_MAX_NODES, sizeof(*p->nodes));
    p->holds = calloc(lines[1] < WG_MAX_HOLDS ? lines[1] + 1 : WG_MAX_HOLDS, sizeof(*p->holds));
    p->edges = calloc(lines[2] < WG_MAX_EDGES ? lines[2] + 1 : WG_MAX_EDGES, sizeof(*p->edges));
    p->nnodes = p->nholds = p->nedges = 0;
    if (!p->nodes || !p->holds || !p->edges)
        goto bad;
    const char *s = text;
    while (*s) {
        char kind = *s;
        if (s[1] != ' ')
            goto bad;
        s += 2;
        uint64_t a = 0, b = 0, c = 0;
        int64_t since = 0;
        switch (kind) {
        case 'n':
            if (!field(&s, false, &a, NULL) || !field(&s, true, NULL, &since) ||
                !field(&s, false, &c, NULL) || c > (1ull << 48)) /* ages beyond 8 years */
                goto bad;
            if (p->nnodes < lines[0] && p->nnodes < WG_MAX_NODES) {
                struct wg_node *n = &p->nodes[p->nnodes++];
                n->client = a;
                n->age_us = c;
                n->since_us = since ? since : p->published_us - (int64_t)(c & INT64_MAX);
            }
            break;
        case 'g':
        case 'h':
            if (!field(&s, false, &a, NULL) || !field(&s, false, &b, NULL) ||
                !field(&s, false, &c, NULL) || c > 2)
                goto bad;
            if (kind == 'g') {
                struct wg_node *n = node_of(p, a);
                if (n) {
                    n->global = true;
                    n->key_hash = b;
                    n->mode = (uint8_t)c;
                }
            } else if (p->nholds < lines[1] && p->nholds < WG_MAX_HOLDS) {
                p->holds[p->nholds++] = (struct wg_hold){a, b, (uint8_t)c};
            }
            break;
        case 'e':
            if (!field(&s, false, &a, NULL) || !field(&s, false, &b, NULL))
                goto bad;
            if (p->nedges < lines[2] && p->nedges < WG_MAX_EDGES)
                p->edges[p->nedges++] = (struct wg_edge){a, b};
            break;
        default: goto bad;
        }
        if (*s == '\n')
            s++;
    }
    return 0;
bad:
    wg_part_clear(p);
    return -1;
}

/* ---- the search ------------------------------------------------------------------------- */

struct gnode {
    size_t part;
    const struct wg_node *n;
    size_t first, nout; /* out-edges: adj[first .. first + nout) */
};

struct hold_ix {
    uint64_t key_hash;
    size_t part;
    uint64_t client;
    uint8_t mode;
};

static int cmp_hold(const void *a, const void *b)
{
    const struct hold_ix *x = a, *y = b;
    return x->key_hash < y->key_hash ? -1 : x->key_hash > y->key_hash;
}

struct graph {
    const struct wg_part *parts;
    size_t nparts;
    struct gnode *g;
    size_t ng;
    size_t *part_base; /* first gnode of each part (nodes in part order) */
    size_t *adj;
    size_t nadj;
    size_t *slots; /* (part, client) -> gnode + 1, open addressing; 0: empty */
    size_t nslots;
};

static size_t slot_of(const struct graph *G, size_t part, uint64_t client)
{
    uint64_t h = (client ^ ((uint64_t)part << 48)) * 0x9e3779b97f4a7c15ull;
    size_t i = (size_t)(h >> 20) & (G->nslots - 1);
    for (;;) {
        size_t v = G->slots[i];
        if (!v || (G->g[v - 1].part == part && G->g[v - 1].n->client == client))
            return i;
        i = (i + 1) & (G->nslots - 1);
    }
}

/* The gnode of (part, client), or SIZE_MAX. */
static size_t gnode_find(const struct graph *G, size_t part, uint64_t client)
{
    size_t v = G->slots[slot_of(G, part, client)];
    return v ? v - 1 : SIZE_MAX;
}

/* Calls visit(G, u, v, ctx) for every edge u -> v: the local edges each instance's lockmgr
 * sees, and a global wait for a key held in a conflicting mode by another instance. */
static void each_edge(struct graph *G, const struct hold_ix *hx, size_t nholds,
                      void (*visit)(struct graph *, size_t, size_t, void *), void *ctx)
{
    for (size_t p = 0; p < G->nparts; p++)
        for (size_t e = 0; e < G->parts[p].nedges; e++) {
            size_t u = gnode_find(G, p, G->parts[p].edges[e].from);
            size_t v = gnode_find(G, p, G->parts[p].edges[e].to);
            if (u != SIZE_MAX && v != SIZE_MAX && u != v)
                visit(G, u, v, ctx);
        }
    for (size_t u = 0; u < G->ng; u++) {
        const struct gnode *gn = &G->g[u];
        if (!gn->n->global)
            continue;
        size_t lo = 0, hi = nholds;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (hx[mid].key_hash < gn->n->key_hash)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (size_t i = lo; i < nholds && hx[i].key_hash == gn->n->key_hash; i++) {
            if (hx[i].part == gn->part || !wg_conflict(gn->n->mode, hx[i].mode))
                continue;
            size_t v = gnode_find(G, hx[i].part, hx[i].client);
            if (v != SIZE_MAX)
                visit(G, u, v, ctx);
        }
    }
}

static void count_edge(struct graph *G, size_t u, size_t v, void *ctx)
{
    (void)v, (void)ctx;
    G->g[u].nout++;
}

static void put_edge(struct graph *G, size_t u, size_t v, void *ctx)
{
    size_t *fill = ctx; /* edges placed so far per node */
    G->adj[G->g[u].first + fill[u]++] = v;
}

static bool graph_build(struct graph *G)
{
    size_t nholds = 0;
    G->ng = 0;
    for (size_t p = 0; p < G->nparts; p++) {
        G->part_base[p] = G->ng;
        G->ng += G->parts[p].nnodes;
        nholds += G->parts[p].nholds;
    }
    G->nslots = 16;
    while (G->nslots < 2 * G->ng)
        G->nslots *= 2;
    G->g = calloc(G->ng ? G->ng : 1, sizeof(*G->g));
    G->slots = calloc(G->nslots, sizeof(*G->slots));
    struct hold_ix *hx = calloc(nholds ? nholds : 1, sizeof(*hx));
    size_t *fill = calloc(G->ng ? G->ng : 1, sizeof(*fill));
    bool ok = false;
    if (!G->g || !G->slots || !hx || !fill)
        goto out;
    size_t h = 0;
    for (size_t p = 0; p < G->nparts; p++) {
        for (size_t i = 0; i < G->parts[p].nnodes; i++) {
            size_t u = G->part_base[p] + i;
            G->g[u] = (struct gnode){p, &G->parts[p].nodes[i], 0, 0};
            size_t sl = slot_of(G, p, G->parts[p].nodes[i].client);
            if (!G->slots[sl]) /* a client listed twice keeps its first node */
                G->slots[sl] = u + 1;
        }
        for (size_t i = 0; i < G->parts[p].nholds; i++) {
            const struct wg_hold *w = &G->parts[p].holds[i];
            hx[h++] = (struct hold_ix){w->key_hash, p, w->client, w->mode};
        }
    }
    qsort(hx, nholds, sizeof(*hx), cmp_hold);
    each_edge(G, hx, nholds, count_edge, NULL);
    for (size_t u = 0; u < G->ng; u++) {
        G->g[u].first = G->nadj;
        G->nadj += G->g[u].nout;
    }
    G->adj = calloc(G->nadj ? G->nadj : 1, sizeof(*G->adj));
    if (!G->adj)
        goto out;
    each_edge(G, hx, nholds, put_edge, fill);
    ok = true;
out:
    free(hx);
    free(fill);
    return ok;
}

/* Later start wins; ties by instance name, then client id: the same on every instance. */
static bool later(const struct graph *G, size_t a, size_t b)
{
    const struct gnode *x = &G->g[a], *y = &G->g[b];
    if (x->n->since_us != y->n->since_us)
        return x->n->since_us > y->n->since_us;
    int c = strcmp(G->parts[x->part].instance, G->parts[y->part].instance);
    if (c)
        return c > 0;
    return x->n->client > y->n->client;
}

/* All waits of the cycle were in progress together: each began before every part it is
 * read from was taken. */
static bool simultaneous(const struct graph *G, const size_t *path, size_t len, int64_t margin_us)
{
    int64_t last_start = INT64_MIN, first_part = INT64_MAX;
    for (size_t i = 0; i < len; i++) {
        const struct gnode *gn = &G->g[path[i]];
        if (gn->n->since_us > last_start)
            last_start = gn->n->since_us;
        if (G->parts[gn->part].published_us < first_part)
            first_part = G->parts[gn->part].published_us;
    }
    return last_start <= first_part - margin_us;
}

/* The cycle passes through another instance (a cycle within one is lockmgr's to break). */
static bool crosses(const struct graph *G, const size_t *path, size_t len)
{
    for (size_t i = 1; i < len; i++)
        if (G->g[path[i]].part != G->g[path[0]].part)
            return true;
    return false;
}

bool wg_find(const struct wg_part *parts, size_t nparts, size_t own, int64_t margin_us,
             struct wg_cycle *out)
{
    struct graph G = {.parts = parts, .nparts = nparts};
    G.part_base = calloc(nparts ? nparts : 1, sizeof(*G.part_base));
    bool found = false;
    uint8_t *state = NULL; /* 0 new, 1 on the path, 2 done (for this start) */
    size_t *path = NULL, *next = NULL;
    if (!G.part_base || own >= nparts || !graph_build(&G))
        goto out;
    state = calloc(G.ng ? G.ng : 1, 1);
    path = calloc(WG_CYCLE_MAX, sizeof(*path));
    next = calloc(WG_CYCLE_MAX, sizeof(*next));
    if (!state || !path || !next)
        goto out;
    /* One search per wait of this instance, as the victim: through waits that began
     * before it only, so that a cycle found is one this instance must break (a search
     * that stopped at the first cycle could find one whose victim is elsewhere while that
     * instance finds another one of ours: neither would act). */
    for (size_t i = 0; i < parts[own].nnodes && !found; i++) {
        size_t s = G.part_base[own] + i;
        memset(state, 0, G.ng);
        size_t depth = 1;
        path[0] = s;
        next[0] = 0;
        state[s] = 1;
        while (depth && !found) {
            size_t u = path[depth - 1];
            if (next[depth - 1] == G.g[u].nout) {
                state[u] = 2;
                depth--;
                continue;
            }
            size_t v = G.adj[G.g[u].first + next[depth - 1]++];
            if (v != s && !later(&G, s, v))
                continue; /* began after s: s would not be this cycle's victim */
            if (v == s && depth > 1 && crosses(&G, path, depth) &&
                simultaneous(&G, path, depth, margin_us)) {
                out->len = depth;
                out->victim = 0;
                for (size_t k = 0; k < depth; k++) {
                    out->at[k].part = G.g[path[k]].part;
                    out->at[k].client = G.g[path[k]].n->client;
                    out->at[k].since_us = G.g[path[k]].n->since_us;
                    if (later(&G, path[k], path[out->victim]))
                        out->victim = k;
                }
                found = true;
            } else if (state[v] == 0 && depth < WG_CYCLE_MAX) {
                state[v] = 1;
                path[depth] = v;
                next[depth] = 0;
                depth++;
            }
        }
    }
out:
    free(state);
    free(path);
    free(next);
    free(G.g);
    free(G.adj);
    free(G.slots);
    free(G.part_base);
    return found;
}
