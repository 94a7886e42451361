/*
 * fuzz_sqlscan.c: the simple-query classifier (path/sqlscan.c px_sql_classify,
 * px_sql_param_tracked) on any bytes, as a client's Query or Parse text.
 *
 * Properties (sqlscan.h): nothing past sql[len - 1] is read (the text is an exact-size
 * heap copy, not NUL-terminated); the result is consistent (a kind other than OTHER is
 * never multi and only for valid UTF-8 without NUL bytes, as PostgreSQL requires; a tag exactly for
 * BEGIN, COMMIT and ROLLBACK; a name only for DEALLOCATE, NUL-terminated, at most 63 bytes and cut
 * at a character boundary when the text is valid UTF-8; a data change is one statement); and the
 * classification does not change when a newline or a ';' is appended (a trailing ';' and white
 * space are dropped as PostgreSQL drops them, and text inside an unterminated literal or comment
 * stays there).
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "path/sqlscan.h"

static void check_info(const struct px_sql_info *info, bool utf8)
{
    FUZZ_CHECK(info->kind >= PX_SQL_OTHER && info->kind <= PX_SQL_DISCARD_ALL);
    if (info->kind != PX_SQL_OTHER)
        FUZZ_CHECK(!info->multi && utf8); /* PostgreSQL would reject the text otherwise */
    if (info->multi)
        FUZZ_CHECK(!info->dml);
    bool tagged =
        info->kind == PX_SQL_BEGIN || info->kind == PX_SQL_COMMIT || info->kind == PX_SQL_ROLLBACK;
    FUZZ_CHECK((info->tag != NULL) == tagged);
    size_t nl = strnlen(info->name, sizeof info->name);
    FUZZ_CHECK(nl < sizeof info->name);
    if (info->kind == PX_SQL_DEALLOCATE) {
        FUZZ_CHECK(nl > 0);
        if (utf8)
            FUZZ_CHECK(fuzz_utf8_ok(info->name, nl));
    } else {
        FUZZ_CHECK(nl == 0);
    }
    if (info->kind == PX_SQL_EMPTY)
        FUZZ_CHECK(!info->dml && !info->session_feature);
    if (info->dml)
        FUZZ_CHECK(info->kind == PX_SQL_OTHER);
    if (info->session_feature)
        FUZZ_CHECK(info->session_feature[0] != '\0');
}

static bool same(const struct px_sql_info *a, const struct px_sql_info *b)
{
    bool feature = a->session_feature == b->session_feature ||
                   (a->session_feature && b->session_feature &&
                    strcmp(a->session_feature, b->session_feature) == 0);
    return a->kind == b->kind && a->tag == b->tag && strcmp(a->name, b->name) == 0 && feature &&
           a->multi == b->multi && a->dml == b->dml;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *sql = fuzz_dup(data, size);
    bool utf8 = fuzz_utf8_ok((const char *)data, size);
    struct px_sql_info info, more;
    px_sql_classify((const char *)sql, size, &info);
    check_info(&info, utf8);

    uint8_t *plus = malloc(size + 1);
    if (!plus)
        abort();
    memcpy(plus, data, size);
    plus[size] = '\n';
    px_sql_classify((const char *)plus, size + 1, &more);
    FUZZ_CHECK(same(&info, &more));
    plus[size] = ';';
    px_sql_classify((const char *)plus, size + 1, &more);
    FUZZ_CHECK(same(&info, &more));

    /* A SET's parameter name as the classifier passes it. */
    (void)px_sql_param_tracked((const char *)sql, size < 64 ? size : 64);
    free(plus);
    free(sql);
    return 0;
}
