/*
 * log.c: the logger (see log.h).  Lines are written with one write(2) each so that they
 * never interleave, and the file can be rotated by renaming and sending SIGHUP.
 *
 * Messages quote what clients send (user and database names, application_name, addresses,
 * error text), so the message part of every line is escaped here, once, rather than at
 * each call: a newline in a user name could otherwise forge a whole log line before
 * authentication, and raw escape sequences would reach whoever reads the log on a terminal.
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

/* Length of the valid UTF-8 sequence at p (n bytes available) that is printable: 0 for an
 * invalid, truncated or overlong sequence, a surrogate, or a C1 control (U+0080-U+009F,
 * which some terminals obey as escape sequences). */
static size_t utf8_printable_len(const unsigned char *p, size_t n)
{
    unsigned char b = p[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
    if (b >= 0xc2 && b <= 0xdf) {
        len = 2;
        if (b == 0xc2)
            lo = 0xa0; /* C1 controls */
    } else if (b >= 0xe0 && b <= 0xef) {
        len = 3;
        if (b == 0xe0)
            lo = 0xa0; /* overlong */
        else if (b == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (b >= 0xf0 && b <= 0xf4) {
        len = 4;
        if (b == 0xf0)
            lo = 0x90; /* overlong */
        else if (b == 0xf4)
            hi = 0x8f; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return len;
}

/*
 * Appends src[0..len) to out (at *o, capacity cap) with everything that is not printable
 * escaped: \n \r \t, \\ for a backslash (so that escapes are unambiguous), \xHH for
 * other control bytes and for bytes that are not printable UTF-8.  Stops before a
 * character that does not fit whole.
 */
static void escape_into(char *out, size_t cap, size_t *o, const char *src, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)src;
    for (size_t i = 0; i < len;) {
        unsigned char b = s[i];
        size_t keep = b >= 0x80 ? utf8_printable_len(s + i, len - i) : b >= 0x20 && b != 0x7f;
        char esc[4] = {'\\', 'x', hex[b >> 4], hex[b & 15]};
        size_t elen = keep ? 0 : 4;
        if (b == '\\' || b == '\n' || b == '\r' || b == '\t') {
            esc[1] = b == '\\' ? '\\' : b == '\n' ? 'n' : b == '\r' ? 'r' : 't';
            elen = 2;
        }
        size_t w = elen ? elen : keep;
        if (*o + w > cap)
            return;
        memcpy(out + *o, elen ? esc : (const char *)s + i, w);
        *o += w;
        i += elen ? 1 : keep;
    }
}

void px_log(enum px_log_level level, const char *subsystem, char kind, uint64_t id, const char *fmt,
            ...)
{
    if (level < px_log_min_level)
        return;
    char line[4096]; /* the message escaped: up to 4 bytes per byte, cut at the end */
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
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    if (m > (int)sizeof(msg) - 1)
        m = (int)sizeof(msg) - 1;
    size_t o = (size_t)n;
    escape_into(line, sizeof(line) - 1, &o, msg, (size_t)m);
    line[o++] = '\n';
    ssize_t w = write(log_fd, line, o);
    (void)w;
}
