/*
 * test_tokenstate.c: tests of proxy/path/tokenstate.c, the persisted fencing-token epoch.
 *
 * The line format and its CRC (known vectors, every bit flip and truncation rejected), the
 * claim sequence on real files in a fresh temporary directory (missing, created, corrupt,
 * exhausted, not a file, stale temporary files), concurrent claims by forked processes
 * (all epochs distinct), and the tokens of lockmgr configured from two successive claims.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "lockmgr/lockmgr.h"
#include "path/tokenstate.h"

void test_tokenstate_register(void);

static char dir[64];
static char path[128];

static int suite_init(void)
{
    strcpy(dir, "/tmp/pgw_tokenstate_XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof(path), "%s/tokens", dir);
    return 0;
}

/* Removes every file in dir (the tests create only plain files there). */
static void empty_dir(void)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[512];
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (unlink(p) < 0)
            rmdir(p);
    }
    if (d)
        closedir(d);
}

static int suite_cleanup(void)
{
    empty_dir();
    return rmdir(dir);
}

/* Number of entries in dir other than . and .. */
static int count_files(void)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d)
        closedir(d);
    return n;
}

static void write_raw(const char *content, size_t len)
{
    FILE *f = fopen(path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT_EQUAL(fwrite(content, 1, len, f), len);
    fclose(f);
}

/* The file's content into buf (size bytes); returns its length. */
static size_t read_raw(char *buf, size_t size)
{
    FILE *f = fopen(path, "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    size_t n = fread(buf, 1, size, f);
    fclose(f);
    return n;
}

static bool contains(const char *s, const char *sub)
{
    return s && strstr(s, sub);
}

/* ---- format and parse ------------------------------------------------------------------ */

static void test_crc32c(void)
{
    CU_ASSERT_EQUAL(px_crc32c(0, "123456789", 9), 0xe3069283u); /* the standard check value */
    CU_ASSERT_EQUAL(px_crc32c(0, "", 0), 0u);
    /* a running checksum equals the one-shot checksum */
    CU_ASSERT_EQUAL(px_crc32c(px_crc32c(0, "1234", 4), "56789", 5), 0xe3069283u);
}

static void test_format(void)
{
    char line[PX_TOKENSTATE_LINE_MAX];
    /* CRC values computed independently (a bitwise Python CRC-32C). */
    size_t n = px_tokenstate_format(42, line);
    CU_ASSERT_STRING_EQUAL(line, "pgwarden token state v1 epoch=42 crc32c=9b6af835\n");
    CU_ASSERT_EQUAL(n, strlen(line));
    px_tokenstate_format(0, line);
    CU_ASSERT_STRING_EQUAL(line, "pgwarden token state v1 epoch=0 crc32c=79ac6d87\n");
    n = px_tokenstate_format(PX_TOKENSTATE_EPOCH_MAX, line);
    CU_ASSERT_TRUE(n < PX_TOKENSTATE_LINE_MAX);
}

static void test_parse_roundtrip(void)
{
    static const uint64_t epochs[] = {0, 1, 2, 9, 10, 42, 1000000, PX_TOKENSTATE_EPOCH_MAX};
    for (size_t i = 0; i < sizeof(epochs) / sizeof(epochs[0]); i++) {
        char line[PX_TOKENSTATE_LINE_MAX];
        size_t n = px_tokenstate_format(epochs[i], line);
        uint64_t e = 12345;
        const char *why = NULL;
        CU_ASSERT_EQUAL(px_tokenstate_parse(line, n, &e, &why), 0);
        CU_ASSERT_EQUAL(e, epochs[i]);
    }
}

static void expect_bad(const char *buf, size_t len, const char *why_part)
{
    uint64_t e = 777;
    const char *why = NULL;
    CU_ASSERT_EQUAL(px_tokenstate_parse(buf, len, &e, &why), -1);
    CU_ASSERT_EQUAL(e, 777);
    CU_ASSERT_PTR_NOT_NULL(why);
    if (why_part && !contains(why, why_part))
        fprintf(stderr, "\n    [%.*s]: %s", (int)len, buf, why ? why : "NULL");
    if (why_part)
        CU_ASSERT_TRUE(contains(why, why_part));
}

static void test_parse_rejects(void)
{
    char line[PX_TOKENSTATE_LINE_MAX], buf[PX_TOKENSTATE_LINE_MAX + 8];
    size_t n = px_tokenstate_format(42, line);
    /* every single-bit flip */
    for (size_t i = 0; i < n; i++) {
        for (int b = 0; b < 8; b++) {
            memcpy(buf, line, n);
            buf[i] = (char)(buf[i] ^ (1 << b));
            expect_bad(buf, n, NULL);
        }
    }
    /* every truncation, and anything appended */
    for (size_t i = 0; i < n; i++)
        expect_bad(line, i, NULL);
    memcpy(buf, line, n);
    buf[n] = '\n';
    expect_bad(buf, n + 1, "checksum");
    expect_bad("", 0, "empty");
    expect_bad("pgwarden token state v2 epoch=42 crc32c=9b6af835\n", 49, "not a pgwarden");
    expect_bad("pgwarden token state v1 epoch=042 crc32c=9b6af835\n", 50, "checksum");
    expect_bad("pgwarden token state v1 epoch=42 crc32c=9B6AF835\n", 49, "checksum");
    expect_bad("pgwarden token state v1 epoch=42 crc32c=9b6af835\r\n", 50, "checksum");
    expect_bad("pgwarden token state v1 epoch=42 crc32c=9b6af835", 48, "checksum");
    expect_bad("pgwarden token state v1 epoch= crc32c=9b6af835\n", 47, "no epoch");
    expect_bad("pgwarden token state v1 epoch=8388608 crc32c=00000000\n", 54, "range");
    expect_bad("pgwarden token state v1 epoch=99999999999999999999999 crc32c=0\n", 63, "range");
}

/* ---- claims ---------------------------------------------------------------------------- */

static void test_range(void)
{
    struct px_tokenstate ts;
    px_tokenstate_range(1, &ts);
    CU_ASSERT_EQUAL(ts.epoch, 1);
    CU_ASSERT_EQUAL(ts.token_floor, UINT64_C(1) << 40);
    CU_ASSERT_EQUAL(ts.token_ceiling, (UINT64_C(2) << 40) - 1);
    px_tokenstate_range(PX_TOKENSTATE_EPOCH_MAX, &ts);
    CU_ASSERT_EQUAL(ts.token_ceiling, (uint64_t)INT64_MAX); /* tokens fit a signed bigint */
}

static void test_missing(void)
{
    struct px_tokenstate ts = {0};
    char *err = NULL;
    empty_dir();
    CU_ASSERT_EQUAL(px_tokenstate_claim(path, false, &ts, &err), -1);
    CU_ASSERT_TRUE(contains(err, "does not exist"));
    CU_ASSERT_TRUE(contains(err, path));
    free(err);
    CU_ASSERT_EQUAL(count_files(), 0); /* nothing created */
}

static void test_create_and_claim(void)
{
    struct px_tokenstate ts;
    char *err = NULL, buf[256], line[PX_TOKENSTATE_LINE_MAX];
    empty_dir();
    CU_ASSERT_EQUAL_FATAL(px_tokenstate_claim(path, true, &ts, &err), 0);
    CU_ASSERT_PTR_NULL(err);
    CU_ASSERT_EQUAL(ts.epoch, 1);
    CU_ASSERT_EQUAL(ts.token_floor, UINT64_C(1) << 40);
    CU_ASSERT_EQUAL(ts.token_ceiling, (UINT64_C(2) << 40) - 1);
    size_t n = read_raw(buf, sizeof(buf));
    CU_ASSERT_EQUAL(n, px_tokenstate_format(1, line));
    CU_ASSERT_EQUAL(memcmp(buf, line, n), 0);
    CU_ASSERT_EQUAL(count_files(), 1); /* no temporary file left behind */
    struct stat st;
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    /* later claims, with or without create_missing, go on from the file */
    for (uint64_t want = 2; want <= 5; want++) {
        CU_ASSERT_EQUAL(px_tokenstate_claim(path, want % 2 == 0, &ts, &err), 0);
        CU_ASSERT_EQUAL(ts.epoch, want);
        CU_ASSERT_EQUAL(ts.token_floor, want << 40);
    }
    CU_ASSERT_EQUAL(count_files(), 1);
}

/* A corrupt file is an error and stays exactly as it was. */
static void expect_claim_fails(const char *content, size_t len, const char *msg_part)
{
    struct px_tokenstate ts = {0};
    char *err = NULL, buf[1024];
    empty_dir();
    write_raw(content, len);
    CU_ASSERT_EQUAL(px_tokenstate_claim(path, true, &ts, &err), -1);
    if (!contains(err, msg_part))
        fprintf(stderr, "\n    claim error: %s", err ? err : "NULL");
    CU_ASSERT_TRUE(contains(err, msg_part));
    free(err);
    CU_ASSERT_EQUAL(read_raw(buf, sizeof(buf)), len);
    CU_ASSERT_EQUAL(memcmp(buf, content, len), 0);
    CU_ASSERT_EQUAL(count_files(), 1);
}

static void test_corrupt(void)
{
    char line[PX_TOKENSTATE_LINE_MAX], big[600];
    size_t n = px_tokenstate_format(7, line);
    line[n - 3] ^= 1; /* one bit of the CRC */
    expect_claim_fails(line, n, "corrupt: checksum mismatch");
    expect_claim_fails("", 0, "corrupt: empty file");
    expect_claim_fails("7\n", 2, "corrupt: not a pgwarden token state file");
    memset(big, 'x', sizeof(big));
    expect_claim_fails(big, sizeof(big), "corrupt: too long");
    n = px_tokenstate_format(PX_TOKENSTATE_EPOCH_MAX, line);
    expect_claim_fails(line, n, "every epoch is used");
}

static void test_not_a_file(void)
{
    struct px_tokenstate ts;
    char *err = NULL, sub[160];
    empty_dir();
    CU_ASSERT_EQUAL_FATAL(mkdir(path, 0700), 0);
    CU_ASSERT_EQUAL(px_tokenstate_claim(path, true, &ts, &err), -1);
    CU_ASSERT_TRUE(contains(err, "not a regular file"));
    free(err);
    rmdir(path);
    /* a directory that does not exist: creating fails with a message */
    snprintf(sub, sizeof(sub), "%s/no/such/dir/tokens", dir);
    err = NULL;
    CU_ASSERT_EQUAL(px_tokenstate_claim(sub, true, &ts, &err), -1);
    CU_ASSERT_TRUE(contains(err, "cannot create"));
    CU_ASSERT_TRUE(contains(err, "No such file or directory"));
    free(err);
    err = NULL;
    CU_ASSERT_EQUAL(px_tokenstate_claim(sub, false, &ts, &err), -1);
    CU_ASSERT_TRUE(contains(err, "does not exist"));
    free(err);
}

/* A temporary file left by a crash between write and rename changes nothing. */
static void test_stale_tmp(void)
{
    struct px_tokenstate ts;
    char *err = NULL, tmp[160], line[PX_TOKENSTATE_LINE_MAX];
    empty_dir();
    size_t n = px_tokenstate_format(3, line);
    write_raw(line, n);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("garbage from a crash", f);
    fclose(f);
    CU_ASSERT_EQUAL(px_tokenstate_claim(path, false, &ts, &err), 0);
    CU_ASSERT_EQUAL(ts.epoch, 4);
    CU_ASSERT_EQUAL(count_files(), 1); /* the stale file was reused and renamed */
}

/* Processes claiming from one file at the same time all get different epochs. */
static void test_concurrent(void)
{
    enum { PROCS = 6, EACH = 5 };
    int fds[2];
    char *err = NULL;
    struct px_tokenstate ts;
    empty_dir();
    CU_ASSERT_EQUAL_FATAL(pipe(fds), 0);
    for (int p = 0; p < PROCS; p++) {
        pid_t pid = fork();
        CU_ASSERT_TRUE_FATAL(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            for (int i = 0; i < EACH; i++) {
                uint64_t e = 0;
                char *cerr = NULL;
                if (px_tokenstate_claim(path, true, &ts, &cerr) == 0)
                    e = ts.epoch;
                if (write(fds[1], &e, sizeof(e)) != sizeof(e))
                    _exit(2);
            }
            _exit(0);
        }
    }
    close(fds[1]);
    bool seen[PROCS * EACH + 1] = {false};
    uint64_t e;
    int got = 0;
    while (read(fds[0], &e, sizeof(e)) == sizeof(e)) {
        CU_ASSERT_TRUE(e >= 1 && e <= PROCS * EACH);
        if (e >= 1 && e <= PROCS * EACH) {
            CU_ASSERT_FALSE(seen[e]);
            seen[e] = true;
        }
        got++;
    }
    close(fds[0]);
    for (int p = 0; p < PROCS; p++) {
        int status = 0;
        wait(&status);
        CU_ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    CU_ASSERT_EQUAL(got, PROCS * EACH);
    CU_ASSERT_EQUAL(px_tokenstate_claim(path, false, &ts, &err), 0);
    CU_ASSERT_EQUAL(ts.epoch, PROCS * EACH + 1);
    CU_ASSERT_EQUAL(count_files(), 1);
}

/* Two runs of lockmgr configured from successive claims: the second run's first token on
 * a key is greater than the first run's last one. */
static uint64_t run_tokens(const struct px_tokenstate *ts, int grants)
{
    struct lockmgr_config cfg = {.token_floor = ts->token_floor,
                                 .token_ceiling = ts->token_ceiling};
    struct lockmgr *lm = lockmgr_new(&cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(lm);
    struct lockmgr_owner *o = lockmgr_owner_new(lm, 1, NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    uint64_t token = 0, prev = 0;
    for (int i = 0; i < grants; i++) {
        CU_ASSERT_EQUAL(
            lockmgr_acquire(lm, o, "portfolio:1", 11, LOCKMGR_WRITE, LOCKMGR_SESSION, 0, 0, &token),
            LOCKMGR_OK);
        CU_ASSERT_TRUE(token > ts->token_floor && token <= ts->token_ceiling);
        CU_ASSERT_TRUE(token > prev);
        prev = token;
        CU_ASSERT_EQUAL(lockmgr_release(lm, o, "portfolio:1", 11, LOCKMGR_SESSION, 0), LOCKMGR_OK);
    }
    lockmgr_free(lm);
    return token;
}

static void test_lockmgr_runs(void)
{
    struct px_tokenstate a, b;
    char *err = NULL;
    empty_dir();
    CU_ASSERT_EQUAL_FATAL(px_tokenstate_claim(path, true, &a, &err), 0);
    uint64_t last_a = run_tokens(&a, 100);
    CU_ASSERT_EQUAL_FATAL(px_tokenstate_claim(path, false, &b, &err), 0);
    uint64_t last_b = run_tokens(&b, 1);
    CU_ASSERT_TRUE(last_b > last_a);
    CU_ASSERT_EQUAL(last_b, b.token_floor + 1);
}

void test_tokenstate_register(void)
{
    static CU_TestInfo tests[] = {
        {"crc32c", test_crc32c},
        {"format", test_format},
        {"parse_roundtrip", test_parse_roundtrip},
        {"parse_rejects", test_parse_rejects},
        {"range", test_range},
        {"missing", test_missing},
        {"create_and_claim", test_create_and_claim},
        {"corrupt", test_corrupt},
        {"not_a_file", test_not_a_file},
        {"stale_tmp", test_stale_tmp},
        {"concurrent", test_concurrent},
        {"lockmgr_runs", test_lockmgr_runs},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("tokenstate", suite_init, suite_cleanup, tests);
}
