/*
 * list.h: intrusive circular doubly linked lists (header-only).
 *
 * Connections sit on exactly one list per state (PgBouncer's "state = list" rule), so moving
 * between states is O(1) and never allocates.
 */
#ifndef PGW_PROXY_LIST_H
#define PGW_PROXY_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct px_list {
    struct px_list *next;
    struct px_list *prev;
};

#define PX_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static inline void px_list_init(struct px_list *l)
{
    l->next = l->prev = l;
}

static inline bool px_list_empty(const struct px_list *l)
{
    return l->next == l;
}

static inline void px_list_append(struct px_list *head, struct px_list *item)
{
    item->prev = head->prev;
    item->next = head;
    head->prev->next = item;
    head->prev = item;
}

static inline void px_list_remove(struct px_list *item)
{
    item->prev->next = item->next;
    item->next->prev = item->prev;
    item->next = item->prev = item;
}

static inline struct px_list *px_list_first(const struct px_list *head)
{
    return px_list_empty(head) ? NULL : head->next;
}

/* Newest first: iterates from the tail (no removal while iterating). */
#define px_list_for_each_reverse(pos, head)                                                        \
    for ((pos) = (head)->prev; (pos) != (head); (pos) = (pos)->prev)

/* Iterates safely against removal of the current item. */
#define px_list_for_each_safe(pos, tmp, head)                                                      \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head);                               \
         (pos) = (tmp), (tmp) = (pos)->next)

#endif
