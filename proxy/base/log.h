/*
 * log.h: the proxy's one logger.  Each line: time, level, subsystem, object id, message.
 * Never pass a password or a secret.  Libraries (lockmgr, retry) never log; the proxy logs
 * on their behalf.
 */
#ifndef PGW_PROXY_LOG_H
#define PGW_PROXY_LOG_H

#include <stdint.h>

#include "base/config.h"

/* Opens path for appending (NULL: stderr), replacing the file in use (reload reopens the
 * same path, for rotation).  Returns 0, or -1 with errno and the previous file kept. */
int px_log_open(const char *path);
void px_log_set_level(enum px_log_level level);
void px_log_close(void);

/* subsystem: short tag ("client", "server", "pool", "main", "admin").  id: the client 'C'
 * or server 'S' number, or 0 for none. */
void px_log(enum px_log_level level, const char *subsystem, char kind, uint64_t id, const char *fmt,
            ...) __attribute__((format(printf, 5, 6)));

extern enum px_log_level px_log_min_level;

#define px_log_enabled(level) ((level) >= px_log_min_level)

#define px_debug(sub, kind, id, ...)                                                               \
    do {                                                                                           \
        if (px_log_enabled(PX_LOG_DEBUG))                                                          \
            px_log(PX_LOG_DEBUG, sub, kind, id, __VA_ARGS__);                                      \
    } while (0)
#define px_info(sub, kind, id, ...)    px_log(PX_LOG_INFO, sub, kind, id, __VA_ARGS__)
#define px_warning(sub, kind, id, ...) px_log(PX_LOG_WARNING, sub, kind, id, __VA_ARGS__)
#define px_error(sub, kind, id, ...)   px_log(PX_LOG_ERROR, sub, kind, id, __VA_ARGS__)

#ifdef PGW_ASSERTS
#include <assert.h>
#define PX_ASSERT(x) assert(x)
#else
#define PX_ASSERT(x) ((void)0)
#endif

#endif
