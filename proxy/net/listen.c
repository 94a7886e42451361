/*
 * listen.c: the listening sockets of listen_addr, their --check, and the back-off when
 * accept() fails (see listen.h).
 *
 * Interface: px_listen_open, px_listen_close, px_listen_check, px_listen_guard,
 * px_listen_unguard.  Every listener this module serves, its own and guarded ones, is in
 * one small registry; the error callback finds its entry by the evconnlistener pointer,
 * because a guarded listener's callback argument belongs to its owner.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/listener.h>

#include "base/log.h"
#include "conn.h"
#include "net/listen.h"

#define MAX_ADDRS      32   /* addresses of one listen_addr list */
#define MAX_LISTENERS  64   /* registry: own listeners and guarded ones */
#define LISTEN_BACKLOG 4096 /* listen(2) backlog; the kernel caps it at net.core.somaxconn */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 1000
#define LOG_EVERY_MS   10000
#define ENTRY_MAX      128 /* one address or host name of the list, with its NUL */

struct px_listener {
    struct evconnlistener *lev;
    bool owned;              /* made by px_listen_open: freed by px_listen_close */
    char name[96];           /* for the log: "127.0.0.1:6432", "admin 127.0.0.1:6480" */
    struct event *resume;    /* re-enables lev when the back-off is over */
    int backoff_ms;          /* the last back-off */
    uint64_t resumed_ms;     /* when lev was last re-enabled; 0: never disabled */
    uint64_t failures;       /* accept failures since the last log line */
    uint64_t burst;          /* accept failures since accepting last worked */
    uint64_t last_log_ms;    /* last failure line; 0: none yet */
    uint64_t last_ok_log_ms; /* last "accepting again" line; 0: none yet */
    uint64_t burst_start_ms;
};

static struct px_listener *registry[MAX_LISTENERS];
static size_t nregistry;
static px_listen_accept_cb accept_cb;

/* ---- addresses ------------------------------------------------------------------------- */

struct listen_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    bool wildcard; /* from "*": a family this machine lacks is skipped, not an error */
    char entry[ENTRY_MAX];
    char name[INET6_ADDRSTRLEN + 16];
};

static void format_name(const struct sockaddr *sa, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(out, cap, "[%s]:%d", host, ntohs(in6->sin6_port));
    } else {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(out, cap, "%s:%d", host, ntohs(in->sin_port));
    }
}

/* Adds the addresses of one list entry to addrs (skipping duplicates).  Returns 0 or -1
 * with *errmsg. */
static int resolve_entry(const char *what, const char *entry, int port, struct listen_addr *addrs,
                         size_t *n, char **errmsg)
{
    char host[ENTRY_MAX];
    size_t len = strlen(entry);
    if (len >= sizeof(host)) {
        if (asprintf(errmsg, "%s: address too long: \"%.40s...\"", what, entry) < 0)
            *errmsg = NULL;
        return -1;
    }
    memcpy(host, entry, len + 1);
    if (host[0] == '[' && len > 2 && host[len - 1] == ']') { /* [::1] */
        memmove(host, host + 1, len - 2);
        host[len - 2] = '\0';
    }
    bool wildcard = !strcmp(host, "*");
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    int rc = getaddrinfo(wildcard ? NULL : host, portstr, &hints, &res);
    if (rc != 0 || !res) {
        if (asprintf(errmsg, "%s: cannot resolve \"%s\": %s", what, host,
                     rc ? gai_strerror(rc) : "no address") < 0)
            *errmsg = NULL;
        return -1;
    }
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof(struct sockaddr_storage))
            continue;
        bool dup = false;
        for (size_t i = 0; i < *n && !dup; i++)
            dup =
                addrs[i].len == ai->ai_addrlen && !memcmp(&addrs[i].ss, ai->ai_addr, addrs[i].len);
        if (dup)
            continue;
        if (*n == MAX_ADDRS) {
            freeaddrinfo(res);
            if (asprintf(errmsg, "%s: more than %d addresses", what, MAX_ADDRS) < 0)
                *errmsg = NULL;
            return -1;
        }
        struct listen_addr *a = &addrs[(*n)++];
        memset(a, 0, sizeof(*a));
        memcpy(&a->ss, ai->ai_addr, ai->ai_addrlen);
        a->len = ai->ai_addrlen;
        a->wildcard = wildcard;
        memcpy(a->entry, entry, len + 1); /* len < ENTRY_MAX, checked above */
        format_name(ai->ai_addr, a->name, sizeof(a->name));
    }
    freeaddrinfo(res);
    return 0;
}

/* Splits the comma-separated list and resolves every entry.  Returns the number of
 * addresses (>= 1), or -1 with *errmsg. */
static int resolve_list(const char *what, const char *list, int port, struct listen_addr *addrs,
                        char **errmsg)
{
    size_t n = 0;
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *last = end;
        while (last > p && (last[-1] == ' ' || last[-1] == '\t'))
            last--;
        if (last == p) {
            if (asprintf(errmsg, "%s: empty address in \"%s\"", what, list) < 0)
                *errmsg = NULL;
            return -1;
        }
        char entry[256];
        snprintf(entry, sizeof(entry), "%.*s", (int)(last - p), p);
        if (resolve_entry(what, entry, port, addrs, &n, errmsg) < 0)
            return -1;
        if (!comma)
            break;
        p = comma + 1;
    }
    return (int)n;
}

/* ---- registry and back-off ------------------------------------------------------------ */

static struct px_listener *find(const struct evconnlistener *lev)
{
    for (size_t i = 0; i < nregistry; i++)
        if (registry[i]->lev == lev)
            return registry[i];
    return NULL;
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct px_listener *pl = arg;
    pl->resumed_ms = px_now_ms();
    evconnlistener_enable(pl->lev);
}

static unsigned long long nofile_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return 0;
    return (unsigned long long)rl.rlim_cur;
}

static void log_failure(struct px_listener *pl, int err, uint64_t now)
{
    char hint[160] = "";
    if (err == EMFILE || err == ENFILE)
        snprintf(hint, sizeof(hint),
                 " (open files limit %llu: raise it, e.g. LimitNOFILE= under systemd, or lower "
                 "max_client_conn)",
                 nofile_limit());
    if (pl->burst == 1)
        px_error("main", 0, 0, "accept() on %s failed: %s%s; not accepting for %d ms", pl->name,
                 strerror(err), hint, pl->backoff_ms);
    else
        px_error("main", 0, 0,
                 "accept() on %s still failing: %s%s; failing for %llu s, %llu failures since "
                 "the last message; retrying every %d ms",
                 pl->name, strerror(err), hint,
                 (unsigned long long)((now - pl->burst_start_ms) / 1000),
                 (unsigned long long)pl->failures, pl->backoff_ms);
}

/*
 * accept() failed with an error libevent does not retry itself (EMFILE, ENFILE, ENOBUFS,
 * ENOMEM, ...).  The connection is still pending, so the socket stays readable: stop
 * watching it for a while instead of spinning.  Logged at most every LOG_EVERY_MS.
 */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    (void)arg; /* a guarded listener's argument is its owner's */
    int err = EVUTIL_SOCKET_ERROR();
    struct px_listener *pl = find(lev);
    if (!pl)
        return;
    uint64_t now = px_now_ms();
    /* Failing right after resuming: the shortage lasts, wait longer. */
    if (pl->resumed_ms && now - pl->resumed_ms < BACKOFF_MAX_MS && pl->backoff_ms > 0)
        pl->backoff_ms = pl->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : pl->backoff_ms * 2;
    else
        pl->backoff_ms = BACKOFF_MIN_MS;
    evconnlistener_disable(lev);
    struct timeval tv = {pl->backoff_ms / 1000, (pl->backoff_ms % 1000) * 1000};
    evtimer_add(pl->resume, &tv);
    if (pl->burst++ == 0)
        pl->burst_start_ms = now;
    pl->failures++;
    if (pl->last_log_ms == 0 || now - pl->last_log_ms >= LOG_EVERY_MS) {
        log_failure(pl, err, now);
        pl->failures = 0;
        pl->last_log_ms = now;
    }
}

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg)
{
    (void)lev;
    struct px_listener *pl = arg;
    if (pl->burst) {
        /* Limited too: on the edge of the limit accepting may work every other time. */
        uint64_t now = px_now_ms();
        if (pl->last_ok_log_ms == 0 || now - pl->last_ok_log_ms >= LOG_EVERY_MS) {
            px_info("main", 0, 0, "accepting again on %s after %llu failed accept() calls",
                    pl->name, (unsigned long long)pl->burst);
            pl->last_ok_log_ms = now;
        }
        pl->burst = 0;
    }
    accept_cb(fd, sa, socklen);
}

/* A registry entry for lev (not yet set up); NULL when full or out of memory. */
static struct px_listener *entry_new(struct event_base *base, const char *name)
{
    if (nregistry == MAX_LISTENERS)
        return NULL;
    struct px_listener *pl = calloc(1, sizeof(*pl));
    if (!pl)
        return NULL;
    pl->resume = evtimer_new(base, on_resume, pl);
    if (!pl->resume) {
        free(pl);
        return NULL;
    }
    snprintf(pl->name, sizeof(pl->name), "%s", name);
    registry[nregistry++] = pl;
    return pl;
}

/* Removes registry[i] (and frees lev when owned). */
static void entry_free(size_t i)
{
    struct px_listener *pl = registry[i];
    registry[i] = registry[--nregistry];
    event_free(pl->resume);
    if (pl->owned && pl->lev)
        evconnlistener_free(pl->lev);
    free(pl);
}

/* ---- interface ------------------------------------------------------------------------- */

int px_listen_open(struct event_base *base, const char *addrs, int port, px_listen_accept_cb cb,
                   char **errmsg)
{
    struct listen_addr list[MAX_ADDRS];
    *errmsg = NULL;
    accept_cb = cb;
    int n = resolve_list("listen_addr", addrs, port, list, errmsg);
    if (n < 0)
        return -1;
    int opened = 0;
    for (int i = 0; i < n; i++) {
        const struct listen_addr *a = &list[i];
        struct px_listener *pl = entry_new(base, a->name);
        if (!pl) {
            *errmsg = strdup("listen_addr: too many listeners or out of memory");
            goto fail;
        }
        pl->owned = true;
        /* Deferred accept (Linux TCP_DEFER_ACCEPT, as PgBouncer sets it): a PostgreSQL
         * client speaks first, so the kernel wakes pgwarden once its first packet is
         * there instead of once at the handshake and again for the packet: one wake-up
         * fewer per connection.  A client that stays silent is accepted after about a
         * second (libevent's value) and then meets client_login_timeout as before. */
        unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC |
                         LEV_OPT_DEFERRED_ACCEPT;
        if (a->ss.ss_family == AF_INET6)
            flags |= LEV_OPT_BIND_IPV6ONLY; /* "0.0.0.0" and "::" side by side */
        pl->lev = evconnlistener_new_bind(base, on_accept, pl, flags, LISTEN_BACKLOG,
                                          (const struct sockaddr *)&a->ss, (int)a->len);
        if (!pl->lev) {
            int err = errno;
            entry_free(nregistry - 1);
            if (a->wildcard && err == EAFNOSUPPORT) {
                px_info("main", 0, 0, "listen_addr *: %s skipped: %s", a->name, strerror(err));
                continue;
            }
            if (asprintf(errmsg, "cannot listen on %s (listen_addr \"%s\"): %s", a->name, a->entry,
                         strerror(err)) < 0)
                *errmsg = NULL;
            goto fail;
        }
        evconnlistener_set_error_cb(pl->lev, on_accept_error);
        px_info("main", 0, 0, "listening on %s", a->name);
        opened++;
    }
    if (opened == 0) {
        if (asprintf(errmsg, "listen_addr \"%s\": no address could be used", addrs) < 0)
            *errmsg = NULL;
        goto fail;
    }
    return 0;
fail:
    px_listen_close();
    return -1;
}

void px_listen_close(void)
{
    for (size_t i = nregistry; i-- > 0;)
        if (registry[i]->owned)
            entry_free(i);
}

int px_listen_guard(struct evconnlistener *lev, const char *name)
{
    if (!lev || find(lev))
        return 0;
    struct px_listener *pl = entry_new(evconnlistener_get_base(lev), name);
    if (!pl)
        return -1;
    pl->lev = lev;
    evconnlistener_set_error_cb(lev, on_accept_error);
    return 0;
}

void px_listen_unguard(struct evconnlistener *lev)
{
    for (size_t i = 0; lev && i < nregistry; i++)
        if (registry[i]->lev == lev && !registry[i]->owned) {
            evconnlistener_set_error_cb(lev, NULL);
            entry_free(i);
            return;
        }
}

/* Test-binds a; 0 when it could be bound, else errno. */
static int try_bind(const struct listen_addr *a)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    int one = 1, err = 0;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)); /* as at start */
    if (a->ss.ss_family == AF_INET6)
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0)
        err = errno;
    close(fd);
    return err;
}

int px_listen_check(const char *what, const char *addrs, int port, char **errmsg, char **warning)
{
    struct listen_addr list[MAX_ADDRS];
    *errmsg = *warning = NULL;
    int n = resolve_list(what, addrs, port, list, errmsg);
    if (n < 0)
        return -1;
    int usable = 0;
    for (int i = 0; i < n; i++) {
        const struct listen_addr *a = &list[i];
        int err = try_bind(a);
        if (err == 0) {
            usable++;
        } else if (err == EADDRINUSE) {
            usable++;
            char *prev = *warning, *w = NULL;
            if (asprintf(&w,
                         "%s%s%s is in use now: start fails unless this is the running "
                         "pgwarden's own port",
                         prev ? prev : "", prev ? "\n" : "", a->name) < 0)
                w = NULL;
            free(prev);
            *warning = w;
        } else if (!(a->wildcard && err == EAFNOSUPPORT)) {
            if (asprintf(errmsg, "%s: cannot listen on %s (\"%s\"): %s", what, a->name, a->entry,
                         strerror(err)) < 0)
                *errmsg = NULL;
            return -1;
        }
    }
    if (usable == 0) {
        if (asprintf(errmsg, "%s \"%s\": no address could be used", what, addrs) < 0)
            *errmsg = NULL;
        return -1;
    }
    return 0;
}
