/*
 * fuzz_tokenstate.c: the token state file's content (path/tokenstate.c px_tokenstate_parse,
 * px_tokenstate_format, px_crc32c).
 *
 * Properties: nothing past the content is read (an exact-size heap copy); content that
 * parses is exactly the line pgwarden writes for its epoch, and the epoch is within
 * 0..PX_TOKENSTATE_EPOCH_MAX; content that does not parse has a reason; the line written
 * for an epoch taken from the input parses back to that epoch, and any one changed byte
 * makes it fail; px_crc32c continued over two pieces equals it over the whole.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "path/tokenstate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = (char *)fuzz_dup(data, size);
    uint64_t epoch = UINT64_MAX;
    const char *why = NULL;
    char line[PX_TOKENSTATE_LINE_MAX];
    if (px_tokenstate_parse(buf, size, &epoch, &why) == 0) {
        FUZZ_CHECK(epoch <= PX_TOKENSTATE_EPOCH_MAX);
        size_t n = px_tokenstate_format(epoch, line);
        FUZZ_CHECK(n == size && memcmp(line, data, n) == 0);
    } else {
        FUZZ_CHECK(why && why[0]);
    }

    /* The line for an epoch from the input, and one byte of it changed. */
    uint64_t e = 0;
    for (size_t i = 0; i < size && i < 8; i++)
        e = e << 8 | data[i];
    e %= PX_TOKENSTATE_EPOCH_MAX + 1;
    size_t n = px_tokenstate_format(e, line);
    FUZZ_CHECK(n < PX_TOKENSTATE_LINE_MAX && line[n - 1] == '\n' && strlen(line) == n);
    uint64_t back = UINT64_MAX;
    FUZZ_CHECK(px_tokenstate_parse(line, n, &back, &why) == 0 && back == e);
    if (size > 8) {
        size_t at = data[8] % n;
        uint8_t x = size > 9 ? data[9] : 1;
        if (x) {
            line[at] = (char)(line[at] ^ x);
            FUZZ_CHECK(px_tokenstate_parse(line, n, &back, &why) < 0);
        }
    }

    size_t cut = size ? data[0] % (size + 1) : 0;
    FUZZ_CHECK(px_crc32c(px_crc32c(0, data, cut), data + cut, size - cut) ==
               px_crc32c(0, data, size));
    free(buf);
    return 0;
}
