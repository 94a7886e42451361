/*
 * test_px_log.c: tests of proxy/base/log.c (suite "log"): every event is one line, whatever
 * the bytes a client put into the message (user names, database names, application_name,
 * error text): control characters, backslashes, invalid UTF-8 and C1 controls are escaped,
 * so that no client can forge a log line or send escape sequences to a terminal.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "cunit_main.h"
#include "base/log.h"

void test_log_register(void);

static char log_path[64];

/* Logs one line with fmt/arg into a fresh file and returns the file's content (owned). */
static char *log_one(const char *fmt, const char *arg)
{
    snprintf(log_path, sizeof log_path, "/tmp/pgw_log_XXXXXX");
    int fd = mkstemp(log_path);
    CU_ASSERT_FATAL(fd >= 0);
    close(fd);
    CU_ASSERT_FATAL(px_log_open(log_path) == 0);
    px_log(PX_LOG_INFO, "client", 'C', 7, fmt, arg);
    px_log_close();
    FILE *f = fopen(log_path, "rb");
    CU_ASSERT_FATAL(f != NULL);
    static char buf[16384];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    unlink(log_path);
    buf[n] = '\0';
    char *out = malloc(n + 1);
    CU_ASSERT_FATAL(out != NULL);
    memcpy(out, buf, n + 1);
    return out;
}

static size_t count_char(const char *s, char ch)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == ch;
    return n;
}

/* The message part of a line: what follows "C-7: ". */
static const char *message_of(const char *line)
{
    const char *m = strstr(line, "C-7: ");
    CU_ASSERT_FATAL(m != NULL);
    return m + 5;
}

static void test_newline_cannot_forge_a_line(void)
{
    char *out = log_one("database \"%s\" does not exist",
                        "x\n2030-01-01 00:00:00.000 ERROR main: forged\r\n");
    CU_ASSERT_EQUAL(count_char(out, '\n'), 1); /* one line, its own terminator */
    CU_ASSERT_PTR_NULL(strchr(out, '\r'));
    CU_ASSERT_STRING_EQUAL(message_of(out),
                           "database \"x\\n2030-01-01 00:00:00.000 ERROR main: forged\\r\\n\" "
                           "does not exist\n");
    free(out);
}

static void test_controls_and_backslash_escaped(void)
{
    char *out = log_one("user %s", "a\tb\x1b[31mc\x7f\\d\x01");
    CU_ASSERT_STRING_EQUAL(message_of(out), "user a\\tb\\x1b[31mc\\x7f\\\\d\\x01\n");
    free(out);
}

static void test_utf8_kept_invalid_and_c1_escaped(void)
{
    /* é (valid, kept), a lone continuation byte, a truncated sequence, an overlong '/',
     * U+009B (CSI as a C1 control), and a 4-byte emoji (kept). */
    char *out = log_one("app %s", "\xc3\xa9|\x80|\xe2\x82|\xc0\xaf|\xc2\x9b|\xf0\x9f\x98\x80");
    CU_ASSERT_STRING_EQUAL(
        message_of(out), "app \xc3\xa9|\\x80|\\xe2\\x82|\\xc0\\xaf|\\xc2\\x9b|\xf0\x9f\x98\x80\n");
    free(out);
}

static void test_long_message_stays_one_line(void)
{
    static char big[6000];
    for (size_t i = 0; i < sizeof big - 1; i++)
        big[i] = i % 2 ? '\n' : 'a';
    big[sizeof big - 1] = '\0';
    char *out = log_one("%s", big);
    CU_ASSERT_EQUAL(count_char(out, '\n'), 1);
    CU_ASSERT(out[strlen(out) - 1] == '\n');
    free(out);
}

void test_log_register(void)
{
    static const CU_TestInfo tests[] = {
        {"newline_cannot_forge_a_line", test_newline_cannot_forge_a_line},
        {"controls_and_backslash_escaped", test_controls_and_backslash_escaped},
        {"utf8_kept_invalid_and_c1_escaped", test_utf8_kept_invalid_and_c1_escaped},
        {"long_message_stays_one_line", test_long_message_stays_one_line},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("log", NULL, NULL, tests);
}
