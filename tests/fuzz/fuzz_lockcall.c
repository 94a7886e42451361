/*
 * fuzz_lockcall.c: recognising, analysing, binding and answering calls of the lock
 * functions (path/lockcall.c, lockcall_exec.c) as the statement path does (path/locks.c):
 * px_lockcall_maybe, px_lockcall_parse (simple query) and px_lockcall_parse_prepared
 * (Parse with parameter type OIDs), then Bind (px_wire_bind_parse and px_lockcall_bind
 * with statement and portal names), execution (px_lockcall_request) and every reply writer
 * (error, ParameterDescription, RowDescription with and without the bound formats,
 * DataRow of a value or of a pgwarden_locks() row, CommandComplete).
 *
 * Properties: nothing outside the text, the type OIDs or the Bind body is read (each is
 * an exact-size heap copy); a lock call passes the pre-check; the simple and the prepared
 * reading agree on what is a lock call; errors have a five-character SQLSTATE, a
 * message and NUL-terminated fields, in valid UTF-8 when the client's text and names
 * were; analysis results are within their documented bounds; every reply is a sequence of
 * well-formed protocol messages.
 *
 * Input: flags, ntypes, a value and a token for the DataRow writers, the text (length
 * first), the type OIDs, the statement and portal names (length first), the Bind body
 * after the names (the rest).
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "path/lockcall.h"

enum { F_PREPARED = 1, F_NULL_VALUE = 2 };

static bool field_ok(const char *f, size_t size, bool utf8)
{
    size_t n = strnlen(f, size);
    return n < size && (!utf8 || fuzz_utf8_ok(f, n));
}

static void check_error(const struct px_lockcall_error *e, bool utf8)
{
    FUZZ_CHECK(strnlen(e->sqlstate, sizeof e->sqlstate) == 5);
    for (int i = 0; i < 5; i++)
        FUZZ_CHECK((e->sqlstate[i] >= '0' && e->sqlstate[i] <= '9') ||
                   (e->sqlstate[i] >= 'A' && e->sqlstate[i] <= 'Z'));
    FUZZ_CHECK(e->message[0] != '\0');
    FUZZ_CHECK(field_ok(e->message, sizeof e->message, utf8));
    FUZZ_CHECK(field_ok(e->detail, sizeof e->detail, utf8));
    FUZZ_CHECK(field_ok(e->hint, sizeof e->hint, utf8));
    FUZZ_CHECK(field_ok(e->context, sizeof e->context, utf8));
}

static void write_error(struct evbuffer *out, const struct px_lockcall_error *e, bool utf8)
{
    check_error(e, utf8);
    FUZZ_CHECK(px_lockcall_write_error(out, e) == 0);
}

static void check_call(const struct px_lockcall *call, size_t sqllen)
{
    FUZZ_CHECK((unsigned)call->fn < PX_LOCKFN_COUNT);
    FUZZ_CHECK(px_lockfn_name(call->fn) != NULL);
    if (call->error.sqlstate[0]) {
        FUZZ_CHECK(call->error.position <= sqllen + 1);
        return;
    }
    FUZZ_CHECK(call->nargs <= 3);
    FUZZ_CHECK(call->nparams <= PX_LOCKCALL_MAX_PARAMS);
    FUZZ_CHECK(strnlen(call->column, sizeof call->column) < sizeof call->column);
    FUZZ_CHECK(call->column[0] != '\0');
    uint16_t nc = px_lockcall_ncolumns(call);
    FUZZ_CHECK(nc == 1 || (nc == 4 && call->fn == PX_LOCKFN_LOCKS && call->from_clause));
    for (int i = 0; i < call->nargs; i++) {
        const struct px_lockarg *a = &call->args[i];
        FUZZ_CHECK(a->kind <= PX_LOCKARG_ERROR);
        if (a->kind == PX_LOCKARG_PARAM) {
            FUZZ_CHECK(a->param >= 1 && a->param <= call->nparams);
            FUZZ_CHECK(a->nconv >= 1 && a->nconv <= PX_LOCKCALL_MAX_CASTS + 2);
        }
        if (a->kind == PX_LOCKARG_ERROR)
            FUZZ_CHECK(call->deferred.sqlstate[0] != '\0');
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size};
    uint8_t flags = fuzz_u8(&in);
    uint16_t ntypes = fuzz_u8(&in) % 24;
    int64_t value = (int64_t)((uint64_t)fuzz_u32(&in) << 32 | fuzz_u32(&in));
    uint8_t modebyte = fuzz_u8(&in);
    size_t sqllen, tlen, slen, plen, rlen;
    const uint8_t *sqlp = fuzz_part(&in, 1 << 16, &sqllen);
    const uint8_t *tp = fuzz_part(&in, 4u * ntypes, &tlen);
    const uint8_t *sp = fuzz_part(&in, 80, &slen);
    const uint8_t *pp = fuzz_part(&in, 80, &plen);
    const uint8_t *rp = fuzz_rest(&in, &rlen);
    ntypes = (uint16_t)(tlen / 4);

    char *sql = (char *)fuzz_dup(sqlp, sqllen);
    uint8_t *types = fuzz_dup(tp, 4u * ntypes);
    char *stmt = fuzz_strdup(sp, strnlen((const char *)sp, slen));
    char *portal = fuzz_strdup(pp, strnlen((const char *)pp, plen));
    uint8_t *rest = fuzz_dup(rp, rlen);
    bool utf8 = fuzz_utf8_ok(sql, sqllen) && fuzz_utf8_ok(stmt, strlen(stmt)) &&
                fuzz_utf8_ok(portal, strlen(portal));
    bool prepared = flags & F_PREPARED;
    struct evbuffer *out = evbuffer_new();
    static struct px_lockcall call, other;

    bool maybe = px_lockcall_maybe(sql, sqllen);
    bool lock = prepared ? px_lockcall_parse_prepared(sql, sqllen, types, ntypes, &call)
                         : px_lockcall_parse(sql, sqllen, &call);
    bool lock2 = prepared ? px_lockcall_parse(sql, sqllen, &other)
                          : px_lockcall_parse_prepared(sql, sqllen, types, ntypes, &other);
    FUZZ_CHECK(lock == lock2);
    if (lock)
        FUZZ_CHECK(maybe);
    if (!lock)
        goto done;
    check_call(&call, sqllen);
    if (call.error.sqlstate[0]) {
        write_error(out, &call.error, utf8);
        goto done;
    }
    if (prepared) {
        FUZZ_CHECK(px_lockcall_write_param_description(out, &call) == 0);
        FUZZ_CHECK(px_lockcall_write_row_description(out, &call, NULL) == 0);
    }

    struct px_wire_bind bind;
    const char *why = prepared ? px_wire_bind_parse(rest, rlen, &bind) : NULL;
    if (why) {
        FUZZ_CHECK(why[0] != '\0');
        goto done;
    }
    static struct px_lockcall_values v;
    struct px_lockcall_error err;
    if (px_lockcall_bind(&call, prepared ? &bind : NULL, stmt, portal, &v, &err) < 0) {
        write_error(out, &err, utf8);
        goto done;
    }
    uint16_t ncol = px_lockcall_ncolumns(&call);
    FUZZ_CHECK(v.ncolumns == ncol);
    FUZZ_CHECK(px_lockcall_write_row_description(out, &call, v.formats) == 0);

    static struct px_lockreq req;
    if (px_lockcall_request(&call, &v, &req, &err) < 0) {
        write_error(out, &err, utf8);
        goto done;
    }
    FUZZ_CHECK(req.fn == call.fn);
    for (int i = 0; i < ncol; i++)
        FUZZ_CHECK(v.formats[i] == 0 || v.formats[i] == 1);
    bool keyed = call.fn != PX_LOCKFN_UNLOCK_ALL && call.fn != PX_LOCKFN_LOCKS;
    if (keyed && !req.null_result)
        FUZZ_CHECK(req.keylen >= 1 && req.keylen <= LOCKMGR_KEY_MAX);
    if (call.fn == PX_LOCKFN_LOCKS) {
        /* A key as a lock request has it: 1..LOCKMGR_KEY_MAX bytes. */
        const char *key = sqllen ? sql : "k";
        size_t keylen = sqllen == 0 ? 1 : sqllen < LOCKMGR_KEY_MAX ? sqllen : LOCKMGR_KEY_MAX;
        FUZZ_CHECK(px_lockcall_write_locks_row(
                       out, &call, v.formats, key, keylen, (enum lockmgr_mode)(modebyte % 3),
                       (enum lockmgr_scope)((modebyte >> 2) & 1), (uint64_t)value) == 0);
    } else {
        FUZZ_CHECK(px_lockcall_write_value(out, &call, v.formats[0],
                                           req.null_result || (flags & F_NULL_VALUE), value) == 0);
    }
    FUZZ_CHECK(px_lockcall_write_complete(out, (uint64_t)value) == 0);

done:
    fuzz_check_messages(out);
    evbuffer_free(out);
    free(sql);
    free(types);
    free(stmt);
    free(portal);
    free(rest);
    return 0;
}
