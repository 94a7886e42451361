/*
 * fuzz_common.c: helpers shared by the fuzz targets (see fuzz_common.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "base/json_util.h"
#include "proto/wire.h"

void fuzz_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "\nFUZZ CHECK FAILED: %s:%d: %s\n", file, line, what);
    abort();
}

uint8_t fuzz_u8(struct fuzz_in *in)
{
    if (in->n == 0)
        return 0;
    in->n--;
    return *in->p++;
}

uint16_t fuzz_u16(struct fuzz_in *in)
{
    uint16_t hi = fuzz_u8(in);
    return (uint16_t)(hi << 8 | fuzz_u8(in));
}

uint32_t fuzz_u32(struct fuzz_in *in)
{
    uint32_t hi = fuzz_u16(in);
    return hi << 16 | fuzz_u16(in);
}

const uint8_t *fuzz_part(struct fuzz_in *in, size_t max, size_t *len)
{
    size_t want = fuzz_u16(in);
    if (want > max)
        want %= max + 1;
    if (want > in->n)
        want = in->n;
    const uint8_t *p = in->p;
    in->p += want;
    in->n -= want;
    *len = want;
    return p;
}

const uint8_t *fuzz_rest(struct fuzz_in *in, size_t *len)
{
    const uint8_t *p = in->p;
    *len = in->n;
    in->p += in->n;
    in->n = 0;
    return p;
}

uint8_t *fuzz_dup(const uint8_t *p, size_t n)
{
    uint8_t *d = malloc(n ? n : 1);
    if (!d)
        abort();
    if (n)
        memcpy(d, p, n);
    return d;
}

char *fuzz_strdup(const uint8_t *p, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        abort();
    if (n)
        memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

FUZZ_NO_COVERAGE size_t fuzz_check_messages(struct evbuffer *b)
{
    size_t len = evbuffer_get_length(b), off = 0, count = 0;
    const uint8_t *m = len ? evbuffer_pullup(b, -1) : NULL;
    while (off < len) {
        FUZZ_CHECK(len - off >= 5);
        uint8_t type = m[off];
        uint32_t l = px_get_u32(m + off + 1);
        FUZZ_CHECK((type >= 'A' && type <= 'Z') || (type >= 'a' && type <= 'z'));
        FUZZ_CHECK(l >= 4 && l <= len - off - 1);
        const uint8_t *body = m + off + 5;
        size_t blen = l - 4;
        if (type == 'E' || type == 'N') {
            FUZZ_CHECK(blen >= 1);
            size_t i = 0;
            while (i < blen && body[i]) {
                const uint8_t *nul = memchr(body + i + 1, 0, blen - i - 1);
                FUZZ_CHECK(nul != NULL);
                i = (size_t)(nul - body) + 1;
            }
            FUZZ_CHECK(i == blen - 1);
        }
        off += 1 + (size_t)l;
        count++;
    }
    return count;
}

const char *fuzz_file(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("pgwarden-fuzz", MFD_CLOEXEC);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) < 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size)) {
        perror("fuzz_file");
        abort();
    }
    return path;
}

FUZZ_NO_COVERAGE bool fuzz_utf8_ok(const char *s, size_t n)
{
    return !memchr(s, '\0', n) && px_utf8_valid(s, n);
}
