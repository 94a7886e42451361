/*
 * fuzz_common.h: what the libFuzzer targets of tests/fuzz/ share: the entry points, a check
 * that aborts (so libFuzzer records the input), a reader that splits one fuzz input into
 * the parts a target needs, a check that a buffer holds well-formed protocol messages, and
 * a file whose content is the input (for the parsers that only read files).
 *
 * See docs/fuzzing.md for the targets and how to run them.
 */
#ifndef PGW_TESTS_FUZZ_COMMON_H
#define PGW_TESTS_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

/* libFuzzer's entry points (each target defines the first, some the second). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* For the harness's own checking code: not instrumented for coverage, which would only
 * slow it down (libFuzzer needs the coverage of the code under test). */
#define FUZZ_NO_COVERAGE __attribute__((no_sanitize("coverage")))

/* A property of the code under test that does not hold: prints what and aborts, so that
 * libFuzzer saves the input as a crash. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fuzz_fail(__FILE__, __LINE__, #cond);                                                  \
    } while (0)

__attribute__((noreturn)) void fuzz_fail(const char *file, int line, const char *what);

/* Reads an input front to back; past the end every read gives zeros / empty parts. */
struct fuzz_in {
    const uint8_t *p;
    size_t n;
};

uint8_t fuzz_u8(struct fuzz_in *in);
uint16_t fuzz_u16(struct fuzz_in *in);
uint32_t fuzz_u32(struct fuzz_in *in);
/* Up to max bytes: a length byte pair first, then that many bytes (fewer at the end). */
const uint8_t *fuzz_part(struct fuzz_in *in, size_t max, size_t *len);
/* Everything left. */
const uint8_t *fuzz_rest(struct fuzz_in *in, size_t *len);

/* A malloc'd copy of p[0..n) with no byte after it (ASan then reports any read past the
 * end); free() it. */
uint8_t *fuzz_dup(const uint8_t *p, size_t n);

/* A malloc'd NUL-terminated copy of p[0..n); free() it. */
char *fuzz_strdup(const uint8_t *p, size_t n);

/*
 * Checks that b (not drained) holds only complete backend messages: a type byte that is a
 * letter, a length of at least 4 that fits, and for ErrorResponse/NoticeResponse fields
 * each ending in a NUL and a final NUL.  Returns the number of messages.
 */
size_t fuzz_check_messages(struct evbuffer *b);

/* A path whose file holds exactly data[0..size) (one memfd, reused by every call of the
 * process); valid until the next call.  Aborts if the file cannot be written. */
const char *fuzz_file(const uint8_t *data, size_t size);

/* True when s[0..n) is valid UTF-8 with no NUL. */
bool fuzz_utf8_ok(const char *s, size_t n);

#endif
