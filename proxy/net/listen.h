/*
 * listen.h: the listening sockets: one per address of listen_addr, and what happens when
 * accept() fails.
 *
 * listen_addr is a comma-separated list, as in PgBouncer: "127.0.0.1", "127.0.0.1,::1",
 * "*" (every address: 0.0.0.0 and ::), or host names (every address they resolve to).
 * Each distinct address gets its own listener; an IPv6 listener is IPv6-only, so that
 * "0.0.0.0" and "::" can be listed together.
 *
 * When accept() fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM)
 * the pending connection stays in the kernel's backlog and the socket stays readable: a
 * listener left armed would spin on the event loop.  So a failing listener is disabled for
 * a back-off (100 ms, doubling while failures follow each resumption, at most 1 s, as
 * PgBouncer pauses accepting), and the failure is logged at most once per 10 s per listener
 * with the number of failures in between.  px_listen_guard() gives the same treatment to a
 * listener another module owns (the admin port's).
 *
 * Accepting is deferred (TCP_DEFER_ACCEPT, as PgBouncer's tcp_defer_accept): a PostgreSQL
 * client speaks first, so the kernel hands a connection over with its first packet, and a
 * client that stays silent is accepted after about a second.
 *
 * Everything runs on the event loop thread.
 */
#ifndef PGW_PROXY_LISTEN_H
#define PGW_PROXY_LISTEN_H

#include <sys/socket.h>

#include <event2/event.h>

struct evconnlistener;

/* Called for every accepted connection; fd is taken over by the callee. */
typedef void (*px_listen_accept_cb)(evutil_socket_t fd, const struct sockaddr *sa, int socklen);

/*
 * Opens a listener on port for every address of addrs (see above), accepting with cb.
 * Returns 0, or -1 with *errmsg (free with free()) naming the address that failed; then
 * nothing is left open.  Logs one line per listener.
 */
__attribute__((warn_unused_result)) int px_listen_open(struct event_base *base, const char *addrs,
                                                       int port, px_listen_accept_cb cb,
                                                       char **errmsg);

/* Closes every listener px_listen_open() opened (shutdown; again: no-op). */
void px_listen_close(void);

/*
 * For --check: resolves every address of addrs and test-binds it on port, keeping nothing
 * open.  Returns 0, or -1 with *errmsg (free()) for what start would refuse (no such host,
 * not an address of this machine, a port below 1024 without privilege, a bad list).  An
 * address that is in use now is not an error, because a running pgwarden holds its own
 * port while the next version of its file is checked: *warning (free(); NULL when none)
 * says so.  what names the key for messages ("listen_addr", "admin_addr").
 */
__attribute__((warn_unused_result)) int px_listen_check(const char *what, const char *addrs,
                                                        int port, char **errmsg, char **warning);

/*
 * Gives lev, a listener another module created and frees, the back-off and log limits
 * above; name is for the log ("admin 127.0.0.1:6480").  Call px_listen_unguard(lev)
 * before freeing lev.  Returns 0, or -1 when out of memory (lev then stays as it was).
 */
int px_listen_guard(struct evconnlistener *lev, const char *name);
void px_listen_unguard(struct evconnlistener *lev); /* unknown or NULL: no-op */

#endif
