/*
 * log.c: the logger (see log.h).  Lines are written with one write(2) each so that they
 * never interleave, and the file can be rotated by renaming and sending SIGHUP.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"

enum px_log_level px_log_min_level = PX_LOG_INFO;
static int log_fd = STDERR_FILENO;

static const char *const level_names[] = {"DEBUG", "INFO", "WARNING", "ERROR"};

int px_log_open(const char *path)
{
    if (!path || !*path) {
        px_log_close();
        return 0;
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    px_log_close();
    log_fd = fd;
    return 0;
}

void px_log_set_level(enum px_log_level level)
{
    px_log_min_level = level;
}

void px_log_close(void)
{
    if (log_fd != STDERR_FILENO)
        close(log_fd);
    log_fd = STDERR_FILENO;
}

void px_log(enum px_log_level level, const char *subsystem, char kind, uint64_t id, const char *fmt,
            ...)
{
    if (level < px_log_min_level)
        return;
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    int n = (int)strftime(line, sizeof(line), "%Y-%m-%d %H:%M:%S", &tm);
    n += snprintf(line + n, sizeof(line) - (size_t)n, ".%03d %s %s", (int)(tv.tv_usec / 1000),
                  level_names[level], subsystem);
    if (id && kind)
        n += snprintf(line + n, sizeof(line) - (size_t)n, " %c-%llu", kind, (unsigned long long)id);
    n += snprintf(line + n, sizeof(line) - (size_t)n, ": ");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += m;
    if (n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    ssize_t w = write(log_fd, line, (size_t)n);
    (void)w;
}
