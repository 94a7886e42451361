/*
 * tokenstate.c: the persisted fencing-token epoch (see tokenstate.h for the guarantees).
 *
 *   format/parse   the one-line file content and its CRC-32C
 *   claim          open, flock, check that the locked file is still the one at path
 *                  (a concurrent claim may have renamed a new one over it), read, parse,
 *                  write E + 1 durably, unlock
 *   create         a missing file: written under a private name, fsync'ed, then link()ed
 *                  to path, which fails harmlessly when another process created it first
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "path/tokenstate.h"

#define MAGIC     "pgwarden token state v1 epoch="
#define CRC_FIELD " crc32c="
/* More than any valid file: a bigger one is corrupt and is not read further. */
#define READ_MAX 256
/* A claim that keeps finding a renamed file gives up after this many tries. */
#define CLAIM_TRIES 100

/* ---- CRC-32C ------------------------------------------------------------------------- */

/* Bit by bit: the file is one short line, read once per start. */
uint32_t px_crc32c(uint32_t crc, const void *data, size_t len)
{
    const unsigned char *p = data;
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++)
            crc = crc & 1 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1; /* reflected Castagnoli */
    }
    return ~crc;
}

/* ---- the line ------------------------------------------------------------------------ */

void px_tokenstate_range(uint64_t epoch, struct px_tokenstate *out)
{
    out->epoch = epoch;
    out->token_floor = epoch << PX_TOKENSTATE_EPOCH_SHIFT;
    out->token_ceiling = ((epoch + 1) << PX_TOKENSTATE_EPOCH_SHIFT) - 1;
}

size_t px_tokenstate_format(uint64_t epoch, char *buf)
{
    int n = snprintf(buf, PX_TOKENSTATE_LINE_MAX, MAGIC "%" PRIu64, epoch);
    uint32_t crc = px_crc32c(0, buf, (size_t)n);
    n += snprintf(buf + n, PX_TOKENSTATE_LINE_MAX - (size_t)n, CRC_FIELD "%08" PRIx32 "\n", crc);
    return (size_t)n;
}

int px_tokenstate_parse(const char *buf, size_t len, uint64_t *epoch, const char **why)
{
    size_t magic = sizeof(MAGIC) - 1;
    if (len < magic || memcmp(buf, MAGIC, magic) != 0) {
        *why = len == 0 ? "empty file" : "not a pgwarden token state file (v1)";
        return -1;
    }
    uint64_t e = 0;
    size_t i = magic;
    for (; i < len && buf[i] >= '0' && buf[i] <= '9'; i++) {
        e = e * 10 + (uint64_t)(buf[i] - '0');
        if (e > PX_TOKENSTATE_EPOCH_MAX) {
            *why = "epoch out of range";
            return -1;
        }
    }
    if (i == magic) {
        *why = "no epoch";
        return -1;
    }
    /* The only valid content is the line pgwarden writes for e: compare it whole. */
    char line[PX_TOKENSTATE_LINE_MAX];
    size_t n = px_tokenstate_format(e, line);
    if (len != n || memcmp(buf, line, n) != 0) {
        *why = "checksum mismatch or malformed line";
        return -1;
    }
    *epoch = e;
    return 0;
}

/* ---- files --------------------------------------------------------------------------- */

static int fail(char **errmsg, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char **errmsg, const char *path, const char *fmt, ...)
{
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    if (asprintf(errmsg, "token state file \"%s\": %s", path, reason) < 0)
        *errmsg = NULL;
    return -1;
}

/* The directory holding path, as a new string (NULL on allocation failure). */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static int fsync_dir(const char *path, char **errmsg)
{
    char *dir = dir_of(path);
    if (!dir)
        return fail(errmsg, path, "out of memory");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;
    if (fd < 0)
        rc = fail(errmsg, path, "cannot open directory \"%s\": %s", dir, strerror(errno));
    else if (fsync(fd) < 0)
        rc = fail(errmsg, path, "fsync of directory \"%s\": %s", dir, strerror(errno));
    if (fd >= 0)
        close(fd);
    free(dir);
    return rc;
}

/* Creates file name holding the line for epoch, fsync'ed.  excl: fail if it exists. */
static int write_file(const char *path, const char *name, uint64_t epoch, bool excl, char **errmsg)
{
    char line[PX_TOKENSTATE_LINE_MAX];
    size_t n = px_tokenstate_format(epoch, line), done = 0;
    int fd = open(name, O_WRONLY | O_CREAT | O_CLOEXEC | (excl ? O_EXCL : O_TRUNC), 0600);
    if (fd < 0)
        return fail(errmsg, path, "cannot create \"%s\": %s", name, strerror(errno));
    while (done < n) {
        ssize_t w = write(fd, line + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fail(errmsg, path, "write to \"%s\": %s", name, w < 0 ? strerror(errno) : "no space");
            goto fail;
        }
        done += (size_t)w;
    }
    if (fsync(fd) < 0) {
        fail(errmsg, path, "fsync of \"%s\": %s", name, strerror(errno));
        goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        fail(errmsg, path, "close of \"%s\": %s", name, strerror(errno));
        goto fail;
    }
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    unlink(name);
    return -1;
}

/* path is missing: creates it holding epoch 0.  Another process creating it at the same
 * time is not an error (both then claim from the one file). */
static int create_file(const char *path, char **errmsg)
{
    char *tmp = NULL;
    int rc = -1;
    if (asprintf(&tmp, "%s.init.%ld", path, (long)getpid()) < 0)
        return fail(errmsg, path, "out of memory");
    unlink(tmp); /* left over by a crashed process that had our pid */
    if (write_file(path, tmp, 0, true, errmsg) < 0)
        goto out;
    if (link(tmp, path) < 0 && errno != EEXIST) {
        fail(errmsg, path, "cannot create it: link from \"%s\": %s", tmp, strerror(errno));
        unlink(tmp);
        goto out;
    }
    unlink(tmp);
    rc = fsync_dir(path, errmsg);
out:
    free(tmp);
    return rc;
}

/* Reads at most READ_MAX bytes of fd into buf; returns the length or -1 (errno). */
static ssize_t read_all(int fd, char *buf)
{
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, READ_MAX + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0 || (n += (size_t)r) > READ_MAX)
            return (ssize_t)n;
    }
}

/* Locks the file at path, open as fd.  1: locked and still the file at path; 0: a
 * concurrent claim replaced it (or it vanished), try again; -1: error. */
static int lock_current(const char *path, int fd, char **errmsg)
{
    struct stat a, b;
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR)
            return fail(errmsg, path, "flock: %s", strerror(errno));
    }
    if (fstat(fd, &a) < 0)
        return fail(errmsg, path, "fstat: %s", strerror(errno));
    if (!S_ISREG(a.st_mode))
        return fail(errmsg, path, "not a regular file");
    if (stat(path, &b) < 0)
        return errno == ENOENT ? 0 : fail(errmsg, path, "stat: %s", strerror(errno));
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* One attempt on the file open as fd: 1 claimed, 0 try again, -1 error. */
static int claim_locked(const char *path, int fd, struct px_tokenstate *out, char **errmsg)
{
    char buf[READ_MAX + 1];
    const char *why;
    uint64_t epoch;
    int rc = lock_current(path, fd, errmsg);
    if (rc <= 0)
        return rc;
    ssize_t n = read_all(fd, buf);
    if (n < 0)
        return fail(errmsg, path, "read: %s", strerror(errno));
    if (n > READ_MAX)
        return fail(errmsg, path, "corrupt: too long; refusing to start (tokens could repeat)");
    if (px_tokenstate_parse(buf, (size_t)n, &epoch, &why) < 0)
        return fail(errmsg, path, "corrupt: %s; refusing to start (tokens could repeat)", why);
    if (epoch >= PX_TOKENSTATE_EPOCH_MAX)
        return fail(errmsg, path, "every epoch is used (last %" PRIu64 ")", epoch);

    char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp", path) < 0)
        return fail(errmsg, path, "out of memory");
    rc = write_file(path, tmp, epoch + 1, false, errmsg);
    if (rc == 0 && rename(tmp, path) < 0) {
        rc = fail(errmsg, path, "rename from \"%s\": %s", tmp, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    if (rc == 0)
        rc = fsync_dir(path, errmsg);
    if (rc < 0)
        return -1;
    px_tokenstate_range(epoch + 1, out);
    return 1;
}

int px_tokenstate_claim(const char *path, bool create_missing, struct px_tokenstate *out,
                        char **errmsg)
{
    *errmsg = NULL;
    for (int tries = 0; tries < CLAIM_TRIES; tries++) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) {
            if (!create_missing)
                return fail(errmsg, path,
                            "does not exist; create it only for a new installation (a lost "
                            "file would let fencing tokens repeat)");
            if (create_file(path, errmsg) < 0)
                return -1;
            continue;
        }
        if (fd < 0)
            return fail(errmsg, path, "cannot open: %s", strerror(errno));
        int rc = claim_locked(path, fd, out, errmsg);
        close(fd); /* releases the lock */
        if (rc != 0)
            return rc > 0 ? 0 : -1;
    }
    return fail(errmsg, path, "replaced by other processes %d times in a row", CLAIM_TRIES);
}
