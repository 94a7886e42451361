/*
 * lockcall.h: recognising and decoding calls of pgwarden's lock functions (SPEC section 2).
 *
 * Why it exists.  Applications take pgwarden's locks with SQL calls such as
 * SELECT pgwarden_lock('portfolio:42', 'write') that pgwarden answers itself: they never
 * reach PostgreSQL, which does not have these functions.  The statement path asks this
 * module, for each simple query and each Parse, whether the text is such a call; if it is,
 * what PostgreSQL would have answered had the functions been defined there as
 *
 *   pgwarden_lock(key text, mode text [, timeout_ms integer]) RETURNS bigint      STRICT
 *   pgwarden_xact_lock(key text, mode text [, timeout_ms integer]) RETURNS bigint STRICT
 *   pgwarden_try_lock(key text, mode text) RETURNS bigint                         STRICT
 *   pgwarden_try_xact_lock(key text, mode text) RETURNS bigint                    STRICT
 *   pgwarden_unlock(key text) RETURNS boolean                                     STRICT
 *   pgwarden_unlock_all() RETURNS integer
 *   pgwarden_locks() RETURNS TABLE(key text, mode text, scope text, token bigint)
 *
 * (the timeout is a default argument or an overload, PostgreSQL answers the same): the
 * argument values, the errors of parse analysis, Bind and execution (SQLSTATE, message,
 * detail, hint, position, context), ParameterDescription, RowDescription and DataRow.
 * px_lockcall_maybe() is the cheap filter to run first on every statement.
 *
 * Which texts are lock calls.  The whole text, any case, with white space, -- and nested
 * block comments anywhere and empty statements (';') before and after, must be exactly
 *     SELECT fn(args) [[AS] alias]        one column named alias, or fn
 *     SELECT * FROM fn(args)              one column named fn; pgwarden_locks(): four
 * where fn is one of the seven names above, unqualified (pgwarden's functions live in no
 * schema, so a qualified name such as public.pgwarden_lock names a function of the
 * database and goes there), unquoted or "quoted" exactly in lower case, and the
 * parentheses hold any well-formed tokens.  The alias follows PostgreSQL: AS then any word
 * or "quoted identifier", or without AS any word but the 39 keywords PostgreSQL 15 does
 * not accept as a bare label (FROM, WHERE, ORDER, ...).  Anything else is not a lock call
 * (false: the text goes to PostgreSQL), in particular a call inside a larger statement
 * (SELECT pgwarden_lock('a', 'read'), 1; ... FROM t; ... WHERE; SELECT (fn(...));
 * SELECT x FROM pgwarden_locks()), two statements, names that merely start alike
 * (pgwarden_lockx), texts PostgreSQL rejects before looking at functions (an unterminated
 * literal or comment, invalid UTF-8, a ';' inside the parentheses), an alias longer than
 * 63 bytes and calls with more than PX_LOCKCALL_MAX_ARGS arguments (PostgreSQL's answer
 * to those, 42883, is the same as it would be for the real functions).
 *
 * Arguments.  Each argument is a constant or a parameter, optionally cast:
 *   'string' ('' for a quote; standard_conforming_strings = on, the default since 9.1),
 *   E'string' (backslash escapes, \u and \U included), N'string' (bpchar),
 *   $tag$dollar quoted$tag$, strings continued across a newline, integers (with an
 *   optional sign: int4, else int8, else numeric, as PostgreSQL types them), NULL, TRUE,
 *   FALSE, $n; casts x::type and CAST(x AS type) to text, varchar (character varying),
 *   bpchar, integer (int, int4), smallint (int2) and bigint (int8), up to
 *   PX_LOCKCALL_MAX_CASTS of them.
 * Other argument forms (expressions, function calls, named arguments, other types,
 * U&'' and B'' strings, numeric constants that are cast, typmods such as varchar(10),
 * qualified type names) are a lock call with error 0A000: pgwarden cannot evaluate them,
 * and sending them to PostgreSQL would only produce a misleading "function does not
 * exist".  So does a parameter of a type pgwarden does not convert (name, "char"), or a
 * statement with more than PX_LOCKCALL_MAX_PARAMS parameters.  (Two constants in a row,
 * 'a' 'b', are a syntax error: not a lock call, PostgreSQL answers it.)
 *
 * Types and errors, as PostgreSQL 15 resolves the call: explicit casts of string
 * constants run at parse analysis (22P02, 22003 with the constant's position); a call
 * whose argument count or types match no function is 42883 "function
 * pgwarden_lock(integer, unknown) does not exist" with PostgreSQL's HINT and the
 * function's position (an int8 or numeric timeout does not match integer, varchar and
 * bpchar keys do); string constants then become the argument type (22P02 for 'abc' as a
 * timeout); parameters without a type in Parse take their type from their first use
 * (text for key and mode, integer for timeout_ms), 42P08 when two uses disagree, 42P18
 * for an unused one; $n in a simple query is 42P02.  Casts of typed values (int8 to
 * integer, text to integer) run later, at Bind (22003, 22P02 without a position), as do
 * parameter values (08P01, 22P03, 22021, 22P02, 22023 with PostgreSQL's context line,
 * assuming log_parameter_max_length_on_error = 0).  At execution, STRICT: a NULL argument
 * gives a NULL result and locks nothing; then key 1..256 bytes, mode read, write or
 * exclusive in any case, timeout_ms >= 0 (all 22023).  Messages quoting a value longer
 * than about 400 bytes quote its beginning only.  Text is assumed to be UTF-8 (the
 * client_encoding of every current driver).
 *
 * Use.  Simple query: px_lockcall_maybe, px_lockcall_parse; error set: send it; else
 * px_lockcall_bind(call, NULL, ...) and px_lockcall_request, then (after lockmgr)
 * RowDescription, the DataRow(s) and CommandComplete.  Extended protocol: at Parse,
 * px_lockcall_maybe and px_lockcall_parse_prepared (error set: the reply to Parse) and
 * keep the call with the statement; Describe S: px_lockcall_write_param_description and
 * px_lockcall_write_row_description(..., NULL); Bind: px_wire_bind_parse and
 * px_lockcall_bind, keeping the values with the portal; Describe P: the row description
 * with the values' formats; Execute: px_lockcall_request and the rows (a row limit and
 * PortalSuspended for pgwarden_locks() are the caller's).
 *
 * What it is not: a SQL parser.  It never evaluates expressions, and pgwarden_locks()
 * cannot be filtered or ordered in SQL (WHERE, ORDER BY, a column list: not lock calls).
 *
 * The text may hold any bytes and need not be NUL-terminated: nothing past sql[len - 1] is
 * read and the time is linear in len.  No state: safe from any thread.  Recognition,
 * analysis, Bind and execution allocate nothing (the structs are the caller's); the
 * writers append to the caller's evbuffer.  Tests: tests/proxy/test_lockcall.c, whose
 * expected answers were recorded from PostgreSQL 15 by tests/proxy/lockcall_oracle.py.
 */
#ifndef PGW_PROXY_LOCKCALL_H
#define PGW_PROXY_LOCKCALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#include "lockmgr/lockmgr.h"
#include "proto/wire.h"

enum px_lockfn {
    PX_LOCKFN_LOCK = 0,      /* pgwarden_lock(key, mode [, timeout_ms]) -> bigint */
    PX_LOCKFN_XACT_LOCK,     /* pgwarden_xact_lock(key, mode [, timeout_ms]) -> bigint */
    PX_LOCKFN_TRY_LOCK,      /* pgwarden_try_lock(key, mode) -> bigint or NULL */
    PX_LOCKFN_TRY_XACT_LOCK, /* pgwarden_try_xact_lock(key, mode) -> bigint or NULL */
    PX_LOCKFN_UNLOCK,        /* pgwarden_unlock(key) -> boolean */
    PX_LOCKFN_UNLOCK_ALL,    /* pgwarden_unlock_all() -> integer */
    PX_LOCKFN_LOCKS,         /* pgwarden_locks() -> (key, mode, scope, token) rows */
};
#define PX_LOCKFN_COUNT 7

/* Types pgwarden converts (PostgreSQL's OIDs in px_locktype_oid). */
enum px_locktype {
    PX_LT_UNKNOWN = 0, /* a string constant, NULL or parameter not yet typed (OID 705) */
    PX_LT_TEXT,
    PX_LT_VARCHAR,
    PX_LT_BPCHAR,
    PX_LT_INT2,
    PX_LT_INT4,
    PX_LT_INT8,
    PX_LT_NUMERIC, /* only as the type of a constant or parameter that matches nothing */
    PX_LT_BOOL,    /* likewise */
    PX_LT_OTHER,   /* a parameter type given by OID in Parse; never converted */
};

#define PX_LOCKCALL_MAX_ARGS   16              /* arguments looked at; more: not a lock call */
#define PX_LOCKCALL_MAX_PARAMS 16              /* $n parameters of a lock call; more: 0A000 */
#define PX_LOCKCALL_MAX_CASTS  4               /* casts of one argument; more: 0A000 */
#define PX_LOCKCALL_TEXT_MAX   LOCKMGR_KEY_MAX /* bytes of a text argument kept */
#define PX_LOCKCALL_NAME_SIZE  64              /* a column name: NAMEDATALEN - 1 bytes and a NUL */

/*
 * An error as PostgreSQL would send it.  sqlstate[0] == '\0' means none.  Strings are
 * NUL-terminated ("" = field absent); position is the 1-based character offset in the
 * statement text (PostgreSQL's P field), 0 = absent.  Send with px_lockcall_write_error.
 */
struct px_lockcall_error {
    char sqlstate[6];
    char message[512];
    char detail[128];
    char hint[128];
    char context[128];
    uint32_t position;
};

enum px_lockarg_kind {
    PX_LOCKARG_TEXT = 0, /* constant text: len bytes, text[] holds the first ones */
    PX_LOCKARG_INT,      /* constant integer: ival */
    PX_LOCKARG_NULL,     /* constant NULL */
    PX_LOCKARG_PARAM,    /* parameter $param, converted at Bind through conv[] */
    PX_LOCKARG_ERROR,    /* evaluating the constant fails at Bind with the call's
                            deferred error (e.g. 99999999999::int8::int) */
};

/* One argument of a matched call, already of the function's argument type (text for key
 * and mode, integer for timeout_ms). */
struct px_lockarg {
    enum px_lockarg_kind kind;
    uint16_t param; /* PARAM: n of $n, 1-based */
    /* PARAM: the types the value passes through at Bind: conv[0] is the parameter's type,
     * conv[nconv - 1] the argument's. */
    uint8_t nconv;
    uint8_t conv[PX_LOCKCALL_MAX_CASTS + 2]; /* enum px_locktype */
    int64_t ival;
    size_t len;                      /* TEXT: the whole value's length */
    char text[PX_LOCKCALL_TEXT_MAX]; /* TEXT: its first min(len, PX_LOCKCALL_TEXT_MAX) bytes */
};

/* A recognised lock call: filled by px_lockcall_parse / px_lockcall_parse_prepared. */
struct px_lockcall {
    enum px_lockfn fn;
    bool from_clause; /* SELECT * FROM fn(...) rather than SELECT fn(...) */
    /* Set: PostgreSQL would reject the statement at parse analysis (the simple query's
     * reply, or the Parse's).  The fields below are then meaningless. */
    struct px_lockcall_error error;
    char column[PX_LOCKCALL_NAME_SIZE];           /* the result column (one-column results) */
    uint16_t nargs;                               /* 0..3: the function's arguments */
    struct px_lockarg args[3];                    /* key, mode, timeout_ms (as the function has) */
    uint16_t nparams;                             /* the statement's parameters */
    uint32_t param_types[PX_LOCKCALL_MAX_PARAMS]; /* their type OIDs (ParameterDescription) */
    uint8_t param_lt[PX_LOCKCALL_MAX_PARAMS];     /* the same as enum px_locktype */
    struct px_lockcall_error deferred;            /* for PX_LOCKARG_ERROR */
};

/*
 * The cheap pre-check for every simple query and Parse: false when sql[0..len) cannot be
 * a lock call (it starts with a word other than SELECT, or holds no "pgwarden_" in any
 * case).  A memchr-speed scan; true only means "ask px_lockcall_parse".
 */
bool px_lockcall_maybe(const char *sql, size_t len);

/*
 * Is the simple query sql[0..len) (borrowed, any bytes) a lock call?  True: *out is filled
 * (overwritten entirely), with out->error set when PostgreSQL would reject it at parse
 * analysis.  False: *out is unspecified and the text goes to PostgreSQL.
 */
bool px_lockcall_parse(const char *sql, size_t len, struct px_lockcall *out);

/*
 * The same for the query of a Parse message, whose parameter types are ntypes big-endian
 * int32 OIDs at types_be (the message's layout; 0 = unspecified).  out->nparams and
 * out->param_types are then the ParameterDescription PostgreSQL would send.
 */
bool px_lockcall_parse_prepared(const char *sql, size_t len, const uint8_t *types_be,
                                uint16_t ntypes, struct px_lockcall *out);

/* ---- Bind and execution ------------------------------------------------------------- */

/* The argument values of one execution, owned (no pointer into any message). */
struct px_lockcall_values {
    bool isnull[3];
    int64_t ival[3];
    size_t len[3];
    char text[3][PX_LOCKCALL_TEXT_MAX]; /* first min(len, PX_LOCKCALL_TEXT_MAX) bytes */
    uint16_t ncolumns;
    int16_t formats[4]; /* result column formats as the Bind asked (0 text, 1 binary) */
};

/*
 * Evaluates the arguments of call (not in error) as PostgreSQL's Bind would: bind is the
 * Bind message's formats, values and result formats (px_wire_bind_parse), or NULL for a
 * simple query (no parameters, text results).  stmt and portal are the client's names
 * ("" unnamed; for messages; NULL counts as "").  Returns 0 with *out filled, or -1 with
 * *err set (count mismatches 08P01, value errors 22P02 22003 22P03 22021 08P01 22023).
 */
__attribute__((warn_unused_result)) int
px_lockcall_bind(const struct px_lockcall *call, const struct px_wire_bind *bind, const char *stmt,
                 const char *portal, struct px_lockcall_values *out, struct px_lockcall_error *err);

/* What an execution asks pgwarden to do. */
struct px_lockreq {
    enum px_lockfn fn;
    bool null_result;         /* a NULL argument of a STRICT function: reply one NULL, do nothing */
    enum lockmgr_scope scope; /* LOCK, TRY_LOCK, UNLOCK: SESSION; the XACT ones: XACT */
    enum lockmgr_mode mode;   /* the lock functions */
    bool has_timeout;         /* pgwarden_lock / pgwarden_xact_lock with timeout_ms */
    uint32_t timeout_ms;      /* 0 = wait without a limit */
    size_t keylen;            /* 1..LOCKMGR_KEY_MAX; 0 for functions without a key */
    char key[LOCKMGR_KEY_MAX];
};

/*
 * Execution: checks the result formats (22023 "unsupported format code"), applies STRICT
 * (NULL argument: null_result) and validates key, mode and timeout (22023).  0 with *req
 * filled, or -1 with *err set.
 */
__attribute__((warn_unused_result)) int px_lockcall_request(const struct px_lockcall *call,
                                                            const struct px_lockcall_values *v,
                                                            struct px_lockreq *req,
                                                            struct px_lockcall_error *err);

/* Validation helpers (22023, PostgreSQL style messages), also used by px_lockcall_request:
 * 0, or -1 with *err set.  len is the value's full length; s holds at least its first
 * min(len, PX_LOCKCALL_TEXT_MAX) bytes. */
__attribute__((warn_unused_result)) int px_lockcall_check_key(const char *s, size_t len,
                                                              struct px_lockcall_error *err);
__attribute__((warn_unused_result)) int px_lockcall_check_mode(const char *s, size_t len,
                                                               enum lockmgr_mode *mode,
                                                               struct px_lockcall_error *err);
__attribute__((warn_unused_result)) int px_lockcall_check_timeout(int64_t ms,
                                                                  struct px_lockcall_error *err);

/* ---- Replies: each appends one message.  0, or -1 on allocation failure. ----------- */

/* ErrorResponse (S, V, C, M, D, H, P, W as set). */
int px_lockcall_write_error(struct evbuffer *out, const struct px_lockcall_error *err);

/* ParameterDescription of the statement (Describe of a prepared statement). */
int px_lockcall_write_param_description(struct evbuffer *out, const struct px_lockcall *call);

/* RowDescription.  formats: per column as bound (px_lockcall_values.formats), or NULL for
 * all text (Describe of a statement, simple query). */
int px_lockcall_write_row_description(struct evbuffer *out, const struct px_lockcall *call,
                                      const int16_t *formats);

/* Number of result columns: 4 for SELECT * FROM pgwarden_locks(), else 1. */
uint16_t px_lockcall_ncolumns(const struct px_lockcall *call);

/*
 * DataRow of a one-row function: is_null, else value (the token of the lock functions, 0
 * or 1 for pgwarden_unlock, the count for pgwarden_unlock_all), in format (0 text, 1
 * binary) as PostgreSQL encodes int8, boolean and int4.
 */
int px_lockcall_write_value(struct evbuffer *out, const struct px_lockcall *call, int16_t format,
                            bool is_null, int64_t value);

/* DataRow of one pgwarden_locks() row: four columns, or one record column for
 * SELECT pgwarden_locks() (text "(k,read,session,5)" with record_out's quoting, or the
 * binary record).  key is borrowed. */
int px_lockcall_write_locks_row(struct evbuffer *out, const struct px_lockcall *call,
                                const int16_t *formats, const char *key, size_t keylen,
                                enum lockmgr_mode mode, enum lockmgr_scope scope, uint64_t token);

/* CommandComplete "SELECT <rows>". */
int px_lockcall_write_complete(struct evbuffer *out, uint64_t rows);

/* "pgwarden_lock", ... (static). */
const char *px_lockfn_name(enum px_lockfn fn);
/* PostgreSQL's OID of t (0 for PX_LT_OTHER: see param_types). */
uint32_t px_locktype_oid(enum px_locktype t);

#endif
