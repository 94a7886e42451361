/*
 * prepared.c: named prepared statements under transaction pooling (see prepared.h for
 * why).  Owns the statement registry, the per-client name map, the per-server LRU set and
 * the Parse/Bind/Describe/Close splitters and writers.  No I/O beyond appending to an
 * evbuffer; runs on the event loop's thread only.
 *
 * Data structures and their invariants:
 *
 *   registry  chained hash table of px_stmt by content, keyed SipHash-1-3 (random key, so
 *             a client cannot pick contents that share a bucket).  A statement is in the
 *             table iff refcount > 0 and the registry still exists.  Grows at load 1.
 *   map       chained hash table of malloc'd entries {name, stmt}, SipHash of the name
 *             with the registry's key (copied into the table when it is allocated).  The
 *             table exists iff count > 0.  Grows at load 1.
 *   set       one block: `alloc` slots, then 2^bits uint32 bucket heads.  Slots
 *             [0, count) are members, dense: removing one moves the last slot into its
 *             place.  Members form a circular doubly linked list by slot index, most
 *             recently used first (set->mru), so the LRU one is slots[mru].prev.  Buckets
 *             chain slots by statement id (ids are sequential, so a multiplicative hash
 *             spreads them).  The block exists iff count > 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/hash.h"
#include "base/log.h"
#include "path/prepared.h"
#include "proto/wire.h"

#define NIL                 UINT32_MAX
#define SERVER_NAME_SIZE    32 /* "_pgw_" + up to 20 digits + NUL */
#define REG_INITIAL_BUCKETS 64
#define MAP_INITIAL_BUCKETS 8
#define SET_INITIAL_SLOTS   8
#define MSG_MAX_BODY        (0x7fffffffu - 4u) /* int32 length word counts itself */

struct px_stmt {
    struct px_stmt *hnext;        /* registry bucket chain */
    struct px_stmt_registry *reg; /* NULL once the registry is freed */
    uint64_t hash;
    uint64_t id;
    uint32_t refcount;
    uint32_t len;
    uint8_t note; /* px_stmt_note: the statement path's cached verdict, 0 until set */
    char server_name[SERVER_NAME_SIZE];
    uint8_t content[];
};

struct px_stmt_registry {
    struct px_hash_key key; /* SipHash key */
    struct px_stmt **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
    size_t bytes;
    uint64_t next_id;
};

/* ---- registry ------------------------------------------------------------------------ */

struct px_stmt_registry *px_stmt_registry_new(void)
{
    struct px_stmt_registry *reg = calloc(1, sizeof(*reg));
    if (!reg)
        return NULL;
    reg->nbuckets = REG_INITIAL_BUCKETS;
    reg->buckets = calloc(reg->nbuckets, sizeof(*reg->buckets));
    if (!reg->buckets) {
        free(reg);
        return NULL;
    }
    px_hash_key_init(&reg->key);
    reg->next_id = 1;
    return reg;
}

void px_stmt_registry_free(struct px_stmt_registry *reg)
{
    if (!reg)
        return;
    for (size_t b = 0; b < reg->nbuckets; b++)
        for (struct px_stmt *s = reg->buckets[b]; s; s = s->hnext)
            s->reg = NULL;
    free(reg->buckets);
    free(reg);
}

size_t px_stmt_registry_count(const struct px_stmt_registry *reg)
{
    return reg ? reg->count : 0;
}

size_t px_stmt_registry_bytes(const struct px_stmt_registry *reg)
{
    return reg ? reg->bytes : 0;
}

/* Doubles the bucket array; on allocation failure chains just get longer. */
static void registry_grow(struct px_stmt_registry *reg)
{
    size_t n = reg->nbuckets * 2;
    struct px_stmt **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return;
    for (size_t b = 0; b < reg->nbuckets; b++) {
        struct px_stmt *s = reg->buckets[b];
        while (s) {
            struct px_stmt *next = s->hnext;
            size_t i = s->hash & (n - 1);
            s->hnext = nb[i];
            nb[i] = s;
            s = next;
        }
    }
    free(reg->buckets);
    reg->buckets = nb;
    reg->nbuckets = n;
}

struct px_stmt *px_stmt_intern(struct px_stmt_registry *reg, const uint8_t *content, uint32_t len)
{
    if (!reg || (len && !content))
        return NULL;
    uint64_t h = px_siphash13(&reg->key, content, len);
    struct px_stmt **head = &reg->buckets[h & (reg->nbuckets - 1)];
    for (struct px_stmt *s = *head; s; s = s->hnext) {
        if (s->hash == h && s->len == len && memcmp(s->content, content, len) == 0) {
            s->refcount++;
            return s;
        }
    }
    struct px_stmt *s = malloc(sizeof(*s) + len);
    if (!s)
        return NULL;
    s->reg = reg;
    s->hash = h;
    s->id = reg->next_id++;
    s->refcount = 1;
    s->len = len;
    s->note = 0;
    snprintf(s->server_name, sizeof(s->server_name), PX_STMT_PREFIX "%llu",
             (unsigned long long)s->id);
    if (len)
        memcpy(s->content, content, len);
    s->hnext = *head;
    *head = s;
    reg->count++;
    reg->bytes += len;
    if (reg->count > reg->nbuckets)
        registry_grow(reg);
    return s;
}

struct px_stmt *px_stmt_ref(struct px_stmt *stmt)
{
    PX_ASSERT(stmt->refcount > 0);
    stmt->refcount++;
    return stmt;
}

void px_stmt_unref(struct px_stmt *stmt)
{
    if (!stmt)
        return;
    PX_ASSERT(stmt->refcount > 0);
    if (--stmt->refcount > 0)
        return;
    struct px_stmt_registry *reg = stmt->reg;
    if (reg) {
        struct px_stmt **p = &reg->buckets[stmt->hash & (reg->nbuckets - 1)];
        while (*p != stmt)
            p = &(*p)->hnext;
        *p = stmt->hnext;
        reg->count--;
        reg->bytes -= stmt->len;
    }
    free(stmt);
}

const char *px_stmt_server_name(const struct px_stmt *stmt)
{
    return stmt->server_name;
}

const uint8_t *px_stmt_content(const struct px_stmt *stmt, uint32_t *len)
{
    *len = stmt->len;
    return stmt->content;
}

uint64_t px_stmt_id(const struct px_stmt *stmt)
{
    return stmt->id;
}

uint32_t px_stmt_refcount(const struct px_stmt *stmt)
{
    return stmt->refcount;
}

uint8_t px_stmt_note(const struct px_stmt *stmt)
{
    return stmt->note;
}

void px_stmt_set_note(struct px_stmt *stmt, uint8_t note)
{
    stmt->note = note;
}

/* ---- client map ---------------------------------------------------------------------- */

struct px_stmt_map_entry {
    struct px_stmt_map_entry *next;
    struct px_stmt *stmt; /* referenced */
    uint32_t hash;
    uint8_t len;
    char name[]; /* len bytes + NUL */
};

struct px_stmt_map_table {
    struct px_hash_key key; /* the registry's */
    uint32_t nbuckets;
    struct px_stmt_map_entry *buckets[];
};

static struct px_stmt_map_table *map_table_new(const struct px_hash_key *key, uint32_t nbuckets)
{
    struct px_stmt_map_table *t =
        calloc(1, sizeof(*t) + (size_t)nbuckets * sizeof(struct px_stmt_map_entry *));
    if (!t)
        return NULL;
    t->key = *key;
    t->nbuckets = nbuckets;
    return t;
}

static uint32_t map_hash(const struct px_stmt_map_table *t, const char *name, size_t len)
{
    return (uint32_t)px_siphash13(&t->key, name, len);
}

/* The slot pointing at name's entry (*slot is NULL when absent). */
static struct px_stmt_map_entry **map_find(struct px_stmt_map_table *t, const char *name,
                                           size_t len, uint32_t h)
{
    struct px_stmt_map_entry **p = &t->buckets[h & (t->nbuckets - 1)];
    for (; *p; p = &(*p)->next)
        if ((*p)->hash == h && (*p)->len == len && memcmp((*p)->name, name, len) == 0)
            break;
    return p;
}

/* Doubles the table; on allocation failure chains just get longer. */
static void map_grow(struct px_stmt_map *map)
{
    struct px_stmt_map_table *old = map->tab;
    struct px_stmt_map_table *t = map_table_new(&old->key, old->nbuckets * 2);
    if (!t)
        return;
    for (uint32_t b = 0; b < old->nbuckets; b++) {
        struct px_stmt_map_entry *e = old->buckets[b];
        while (e) {
            struct px_stmt_map_entry *next = e->next;
            struct px_stmt_map_entry **head = &t->buckets[e->hash & (t->nbuckets - 1)];
            e->next = *head;
            *head = e;
            e = next;
        }
    }
    free(old);
    map->tab = t;
}

int px_stmt_map_put(struct px_stmt_map *map, const char *name, struct px_stmt *stmt)
{
    size_t len = strnlen(name, PX_STMT_NAME_MAX);
    bool fresh = !map->tab;
    if (fresh) {
        static const struct px_hash_key no_key;
        const struct px_stmt_registry *reg = stmt->reg;
        map->tab = map_table_new(reg ? &reg->key : &no_key, MAP_INITIAL_BUCKETS);
        if (!map->tab)
            return -1;
    }
    uint32_t h = map_hash(map->tab, name, len);
    struct px_stmt_map_entry **p = map_find(map->tab, name, len, h);
    if (*p) {
        px_stmt_ref(stmt);
        px_stmt_unref((*p)->stmt);
        (*p)->stmt = stmt;
        return 0;
    }
    struct px_stmt_map_entry *e = malloc(sizeof(*e) + len + 1);
    if (!e) {
        if (fresh) {
            free(map->tab);
            map->tab = NULL;
        }
        return -1;
    }
    e->stmt = px_stmt_ref(stmt);
    e->hash = h;
    e->len = (uint8_t)len;
    memcpy(e->name, name, len);
    e->name[len] = '\0';
    e->next = *p;
    *p = e;
    map->count++;
    if (map->count > map->tab->nbuckets)
        map_grow(map);
    return 0;
}

struct px_stmt *px_stmt_map_get(const struct px_stmt_map *map, const char *name)
{
    if (!map->tab)
        return NULL;
    size_t len = strnlen(name, PX_STMT_NAME_MAX);
    struct px_stmt_map_entry *e = *map_find(map->tab, name, len, map_hash(map->tab, name, len));
    return e ? e->stmt : NULL;
}

bool px_stmt_map_remove(struct px_stmt_map *map, const char *name)
{
    if (!map->tab)
        return false;
    size_t len = strnlen(name, PX_STMT_NAME_MAX);
    struct px_stmt_map_entry **p = map_find(map->tab, name, len, map_hash(map->tab, name, len));
    struct px_stmt_map_entry *e = *p;
    if (!e)
        return false;
    *p = e->next;
    px_stmt_unref(e->stmt);
    free(e);
    if (--map->count == 0) {
        free(map->tab);
        map->tab = NULL;
    }
    return true;
}

void px_stmt_map_clear(struct px_stmt_map *map)
{
    struct px_stmt_map_table *t = map->tab;
    if (!t)
        return;
    for (uint32_t b = 0; b < t->nbuckets; b++) {
        struct px_stmt_map_entry *e = t->buckets[b];
        while (e) {
            struct px_stmt_map_entry *next = e->next;
            px_stmt_unref(e->stmt);
            free(e);
            e = next;
        }
    }
    free(t);
    map->tab = NULL;
    map->count = 0;
}

/* ---- server set ---------------------------------------------------------------------- */

struct px_stmt_set_slot {
    struct px_stmt *stmt; /* referenced */
    uint32_t prev, next;  /* LRU ring: next is less recently used */
    uint32_t hnext;       /* bucket chain */
};

static inline uint32_t *set_buckets(const struct px_stmt_set *set)
{
    return (uint32_t *)(set->slots + set->alloc);
}

static inline uint32_t set_bucket(const struct px_stmt_set *set, const struct px_stmt *stmt)
{
    return (uint32_t)((stmt->id * 0x9E3779B97F4A7C15ULL) >> (64 - set->bits));
}

static uint32_t set_find(const struct px_stmt_set *set, const struct px_stmt *stmt)
{
    if (!set->slots)
        return NIL;
    const struct px_stmt_set_slot *sl = set->slots;
    uint32_t i = set_buckets(set)[set_bucket(set, stmt)];
    while (i != NIL && sl[i].stmt != stmt)
        i = sl[i].hnext;
    return i;
}

static void lru_unlink(struct px_stmt_set *set, uint32_t i)
{
    struct px_stmt_set_slot *sl = set->slots;
    uint32_t p = sl[i].prev, n = sl[i].next;
    if (n == i) {
        set->mru = NIL;
        return;
    }
    sl[p].next = n;
    sl[n].prev = p;
    if (set->mru == i)
        set->mru = n;
}

static void lru_push_front(struct px_stmt_set *set, uint32_t i)
{
    struct px_stmt_set_slot *sl = set->slots;
    if (set->mru == NIL) {
        sl[i].prev = sl[i].next = i;
    } else {
        uint32_t head = set->mru, tail = sl[head].prev;
        sl[i].next = head;
        sl[i].prev = tail;
        sl[tail].next = i;
        sl[head].prev = i;
    }
    set->mru = i;
}

static void lru_touch(struct px_stmt_set *set, uint32_t i)
{
    if (set->mru == i)
        return;
    if (set->slots[set->mru].prev == i) {
        /* The LRU one: rotating the ring makes it first and keeps everything else. */
        set->mru = i;
        return;
    }
    lru_unlink(set, i);
    lru_push_front(set, i);
}

/* The bucket-chain link that points at slot i. */
static uint32_t *chain_link(struct px_stmt_set *set, uint32_t i)
{
    uint32_t *p = &set_buckets(set)[set_bucket(set, set->slots[i].stmt)];
    while (*p != i)
        p = &set->slots[*p].hnext;
    return p;
}

/* Takes slot i out of the set and returns its statement with the set's reference.  The
 * block stays allocated even when the set becomes empty (the caller decides). */
static struct px_stmt *set_delete(struct px_stmt_set *set, uint32_t i)
{
    struct px_stmt_set_slot *sl = set->slots;
    struct px_stmt *stmt = sl[i].stmt;
    *chain_link(set, i) = sl[i].hnext;
    lru_unlink(set, i);
    uint32_t last = --set->count;
    if (i != last) {
        /* Keep slots dense: move the last one into the hole and repoint its links. */
        *chain_link(set, last) = i;
        sl[i] = sl[last];
        if (sl[i].next == last) {
            sl[i].prev = sl[i].next = i;
        } else {
            sl[sl[i].prev].next = i;
            sl[sl[i].next].prev = i;
        }
        if (set->mru == last)
            set->mru = i;
    }
    return stmt;
}

/* Room for at least one more slot (count < want_max); -1 with the set unchanged. */
static int set_grow(struct px_stmt_set *set, uint32_t want_max)
{
    uint32_t n = set->alloc ? set->alloc * 2 : SET_INITIAL_SLOTS;
    if (set->alloc > UINT32_MAX / 2 || n > want_max)
        n = want_max;
    uint32_t bits = 1;
    while (bits < 32 && (1u << bits) < n)
        bits++;
    size_t size = (size_t)n * sizeof(struct px_stmt_set_slot) + ((size_t)1 << bits) * 4;
    struct px_stmt_set_slot *sl = realloc(set->slots, size);
    if (!sl)
        return -1;
    if (!set->slots)
        set->mru = NIL;
    set->slots = sl;
    set->alloc = n;
    set->bits = bits;
    uint32_t *bk = set_buckets(set);
    memset(bk, 0xff, ((size_t)1 << bits) * 4);
    for (uint32_t i = 0; i < set->count; i++) {
        uint32_t b = set_bucket(set, sl[i].stmt);
        sl[i].hnext = bk[b];
        bk[b] = i;
    }
    return 0;
}

bool px_stmt_set_has(struct px_stmt_set *set, const struct px_stmt *stmt)
{
    uint32_t i = set_find(set, stmt);
    if (i == NIL)
        return false;
    lru_touch(set, i);
    return true;
}

struct px_stmt *px_stmt_set_evict_candidate(const struct px_stmt_set *set, uint32_t capacity)
{
    if (capacity < 1)
        capacity = 1;
    if (set->count == 0 || set->count < capacity)
        return NULL;
    return set->slots[set->slots[set->mru].prev].stmt;
}

int px_stmt_set_add(struct px_stmt_set *set, struct px_stmt *stmt, uint32_t capacity,
                    struct px_stmt **evicted)
{
    *evicted = NULL;
    if (capacity < 1)
        capacity = 1;
    uint32_t i = set_find(set, stmt);
    if (i != NIL) {
        lru_touch(set, i);
        return 0;
    }
    if (set->count >= capacity) {
        *evicted = set_delete(set, set->slots[set->mru].prev);
    } else if (set->count == set->alloc && set_grow(set, capacity) < 0) {
        return -1;
    }
    i = set->count++;
    struct px_stmt_set_slot *sl = set->slots;
    uint32_t *bk = set_buckets(set);
    uint32_t b = set_bucket(set, stmt);
    sl[i].stmt = px_stmt_ref(stmt);
    sl[i].hnext = bk[b];
    bk[b] = i;
    lru_push_front(set, i);
    return 0;
}

bool px_stmt_set_remove(struct px_stmt_set *set, const struct px_stmt *stmt)
{
    uint32_t i = set_find(set, stmt);
    if (i == NIL)
        return false;
    px_stmt_unref(set_delete(set, i));
    if (set->count == 0)
        px_stmt_set_clear(set);
    return true;
}

void px_stmt_set_clear(struct px_stmt_set *set)
{
    for (uint32_t i = 0; i < set->count; i++)
        px_stmt_unref(set->slots[i].stmt);
    free(set->slots);
    memset(set, 0, sizeof(*set));
}

/* ---- message bodies ------------------------------------------------------------------ */

/* Offset just past the NUL that ends the string at body[off], or 0 when there is none. */
static uint32_t cstr_end(const uint8_t *body, uint32_t len, uint32_t off)
{
    if (off >= len)
        return 0;
    const uint8_t *nul = memchr(body + off, 0, len - off);
    return nul ? (uint32_t)(nul - body) + 1 : 0;
}

/* Reads a non-negative int16 count at *off; -1 when short or negative. */
static int32_t take_count(const uint8_t *body, uint32_t len, uint32_t *off)
{
    if (len - *off < 2)
        return -1;
    uint16_t v = px_get_u16(body + *off);
    *off += 2;
    return v & 0x8000u ? -1 : (int32_t)v;
}

int px_parse_split(const uint8_t *body, uint32_t len, const char **name, const uint8_t **content,
                   uint32_t *content_len)
{
    uint32_t q = cstr_end(body, len, 0);
    uint32_t off = q ? cstr_end(body, len, q) : 0;
    if (!off)
        return -1;
    int32_t n = take_count(body, len, &off);
    if (n < 0 || len - off != (uint32_t)n * 4)
        return -1;
    *name = (const char *)body;
    *content = body + q;
    *content_len = len - q;
    return 0;
}

/* Checks formats, parameters and result formats of a Bind from off to exactly len. */
static int bind_rest_valid(const uint8_t *body, uint32_t len, uint32_t off)
{
    int32_t nfmt = take_count(body, len, &off);
    if (nfmt < 0 || len - off < (uint32_t)nfmt * 2)
        return -1;
    off += (uint32_t)nfmt * 2;
    int32_t nparams = take_count(body, len, &off);
    if (nparams < 0)
        return -1;
    for (int32_t i = 0; i < nparams; i++) {
        if (len - off < 4)
            return -1;
        uint32_t plen = px_get_u32(body + off);
        off += 4;
        if (plen == UINT32_MAX) /* -1: NULL */
            continue;
        if (plen > INT32_MAX || len - off < plen)
            return -1;
        off += plen;
    }
    int32_t nres = take_count(body, len, &off);
    if (nres < 0 || len - off != (uint32_t)nres * 2)
        return -1;
    return 0;
}

int px_bind_split(const uint8_t *body, uint32_t len, const char **portal, const char **stmt,
                  const uint8_t **rest, uint32_t *rest_len)
{
    uint32_t s = cstr_end(body, len, 0);
    uint32_t off = s ? cstr_end(body, len, s) : 0;
    if (!off || bind_rest_valid(body, len, off) < 0)
        return -1;
    *portal = (const char *)body;
    *stmt = (const char *)body + s;
    *rest = body + off;
    *rest_len = len - off;
    return 0;
}

int px_target_split(const uint8_t *body, uint32_t len, char *kind, const char **name)
{
    if (len < 2 || (body[0] != 'S' && body[0] != 'P') || cstr_end(body, len, 1) != len)
        return -1;
    *kind = (char)body[0];
    *name = (const char *)body + 1;
    return 0;
}

struct piece {
    const void *p;
    size_t n;
};

/* Appends type, length and the pieces as one contiguous, all-or-nothing write. */
static int write_msg(struct evbuffer *out, char type, const struct piece *pc, int npieces)
{
    size_t body = 0;
    for (int i = 0; i < npieces; i++)
        body += pc[i].n;
    if (body > MSG_MAX_BODY)
        return -1;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)(5 + body), &v, 1) != 1 || v.iov_len < 5 + body)
        return -1;
    uint8_t *w = v.iov_base;
    w[0] = (uint8_t)type;
    px_put_u32(w + 1, (uint32_t)(body + 4));
    w += 5;
    for (int i = 0; i < npieces; i++) {
        if (pc[i].n)
            memcpy(w, pc[i].p, pc[i].n);
        w += pc[i].n;
    }
    v.iov_len = 5 + body;
    return evbuffer_commit_space(out, &v, 1) == 0 ? 0 : -1;
}

int px_write_parse(struct evbuffer *out, const char *server_name, const uint8_t *content,
                   uint32_t content_len)
{
    struct piece pc[] = {{server_name, strlen(server_name) + 1}, {content, content_len}};
    return write_msg(out, 'P', pc, 2);
}

int px_write_bind(struct evbuffer *out, const char *portal, const char *server_name,
                  const uint8_t *rest, uint32_t rest_len)
{
    struct piece pc[] = {
        {portal, strlen(portal) + 1}, {server_name, strlen(server_name) + 1}, {rest, rest_len}};
    return write_msg(out, 'B', pc, 3);
}

int px_write_target(struct evbuffer *out, char type, char kind, const char *name)
{
    struct piece pc[] = {{&kind, 1}, {name, strlen(name) + 1}};
    return write_msg(out, type, pc, 2);
}
