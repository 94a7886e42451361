/*
 * wire.h: PostgreSQL protocol v3 framing and message builders.
 *
 * Everything here works on libevent evbuffers but needs no event loop, so it is unit-tested
 * alone (tests/proxy/test_wire.c).  Parsing functions never read past the length they are
 * given; builders append one complete, well-formed message.
 */
#ifndef PGW_PROXY_WIRE_H
#define PGW_PROXY_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

#define PX_PROTO_V3            196608u /* 3.0 */
#define PX_CANCEL_REQUEST_CODE 80877102u
#define PX_SSL_REQUEST_CODE    80877103u
#define PX_GSSENC_REQUEST_CODE 80877104u
#define PX_MAX_STARTUP_PACKET  10000u /* as PostgreSQL's MAX_STARTUP_PACKET_LENGTH */

/* Authentication request codes (AuthenticationXXX, message 'R'). */
enum px_auth_code {
    PX_AUTH_OK = 0,
    PX_AUTH_CLEARTEXT = 3,
    PX_AUTH_MD5_REQ = 5,
    PX_AUTH_SASL = 10,
    PX_AUTH_SASL_CONTINUE = 11,
    PX_AUTH_SASL_FINAL = 12,
};

/* SQLSTATEs pgwarden sends itself. */
#define PX_SQLSTATE_PROTOCOL_VIOLATION   "08P01"
#define PX_SQLSTATE_CONNECTION_FAILURE   "08006"
#define PX_SQLSTATE_CANNOT_CONNECT       "08001"
#define PX_SQLSTATE_INVALID_PASSWORD     "28P01"
#define PX_SQLSTATE_INVALID_AUTH_SPEC    "28000"
#define PX_SQLSTATE_INVALID_CATALOG      "3D000"
#define PX_SQLSTATE_TOO_MANY_CONNECTIONS "53300"
#define PX_SQLSTATE_CONFIG_LIMIT         "53400"
#define PX_SQLSTATE_FEATURE_NOT_SUPP     "0A000"
#define PX_SQLSTATE_ADMIN_SHUTDOWN       "57P01"
#define PX_SQLSTATE_CANNOT_CONNECT_NOW   "57P03"
#define PX_SQLSTATE_QUERY_CANCELED       "57014"
#define PX_SQLSTATE_INTERNAL             "XX000"

struct px_startup_param {
    const char *name; /* borrowed from the packet buffer */
    const char *value;
};

/*
 * A parsed startup packet.  Strings point into the caller's buffer.  As PostgreSQL, any
 * number of parameters is accepted within the packet limit (PX_MAX_STARTUP_PACKET): they
 * stay where they are in the packet and are walked with px_startup_next, so parsing
 * allocates nothing.
 */
struct px_startup {
    uint32_t code; /* protocol version or one of the *_CODE request codes */
    /* CancelRequest */
    uint32_t cancel_pid;
    uint32_t cancel_key;
    /* StartupMessage: nparams "name\0value\0" pairs (names non-empty) from params on */
    size_t nparams;
    const char *params;
};

/*
 * Parses the body of a startup-phase packet (everything after the 4-byte length).
 * Returns NULL on success or a static message naming what is malformed.
 */
const char *px_wire_parse_startup(const char *body, size_t len, struct px_startup *out);

/* The text of the 08P01 error for a message whose length field is len and was refused:
 * PostgreSQL's "invalid message length", saying so when len is above max_message_bytes. */
const char *px_wire_length_error(uint32_t len);

/* Walks the parameters of a parsed StartupMessage in packet order: *pos starts NULL; fills
 * *param and returns true, or returns false after the last one. */
bool px_startup_next(const struct px_startup *s, const char **pos, struct px_startup_param *param);

/* Looks up a startup parameter; NULL when absent. */
const char *px_startup_get(const struct px_startup *s, const char *name);

/* Reads a big-endian uint32 / uint16 from p. */
static inline uint32_t px_get_u32(const void *p)
{
    const uint8_t *b = p;
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}
static inline uint16_t px_get_u16(const void *p)
{
    const uint8_t *b = p;
    return (uint16_t)(((unsigned)b[0] << 8) | b[1]);
}
static inline void px_put_u32(void *p, uint32_t v)
{
    uint8_t *b = p;
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

/* Whether t is a message type a frontend may send once logged in (PostgreSQL answers
 * anything else with FATAL 08P01 "invalid frontend message type"). */
static inline bool px_wire_frontend_type(char t)
{
    switch (t) {
    case 'B':
    case 'C':
    case 'c':
    case 'd':
    case 'D':
    case 'E':
    case 'f':
    case 'F':
    case 'H':
    case 'P':
    case 'Q':
    case 'S':
    case 'X': return true;
    default: return false;
    }
}

/* ---- Builders: each appends one message to out.  Return 0, or -1 on allocation failure. */

enum px_severity { PX_SEV_ERROR, PX_SEV_FATAL, PX_SEV_NOTICE, PX_SEV_WARNING };

/* ErrorResponse / NoticeResponse with S, V, C, M and optional D (detail) fields. */
int px_wire_error(struct evbuffer *out, enum px_severity sev, const char *sqlstate,
                  const char *message, const char *detail);
int px_wire_ready(struct evbuffer *out, char status);
int px_wire_auth(struct evbuffer *out, uint32_t code, const void *data, size_t len);
int px_wire_param_status(struct evbuffer *out, const char *name, const char *value);
int px_wire_backend_key(struct evbuffer *out, uint32_t pid, uint32_t key);
/* NegotiateProtocolVersion: newest minor we support plus the unrecognised options. */
int px_wire_negotiate(struct evbuffer *out, uint32_t minor, const char *const *unsupported,
                      size_t n);
/* A simple Query message. */
int px_wire_query(struct evbuffer *out, const char *sql);
/* A simple Query of `prefix;` followed by the text of another Query's body (body, len:
 * NUL-terminated).  Room is made first, so a failure writes nothing. */
int px_wire_query_prefixed(struct evbuffer *out, const void *prefix, size_t prefix_len,
                           const uint8_t *body, uint32_t len);
/* A frontend message of type with a raw body. */
int px_wire_msg(struct evbuffer *out, char type, const void *body, size_t len);
/* Startup-phase packets (no type byte). */
int px_wire_startup(struct evbuffer *out, const struct px_startup_param *params, size_t n);
int px_wire_cancel(struct evbuffer *out, uint32_t pid, uint32_t key);
int px_wire_ssl_request(struct evbuffer *out);

/* ErrorResponse / NoticeResponse with every field PostgreSQL's clients show: S, V, C, M
 * and, when not NULL (or position not 0), D (detail), H (hint), P (position: 1-based
 * character offset in the query) and W (context). */
struct px_wire_errfields {
    enum px_severity sev;
    const char *sqlstate;
    const char *message;
    const char *detail;
    const char *hint;
    uint32_t position;
    const char *context;
};
int px_wire_error_fields(struct evbuffer *out, const struct px_wire_errfields *e);

/* One column of a RowDescription, as PostgreSQL describes it. */
struct px_wire_column {
    const char *name;
    uint32_t table_oid; /* 0 when the column is not a table's */
    int16_t attnum;     /* 0 likewise */
    uint32_t type_oid;
    int16_t typlen; /* pg_type.typlen: 8 int8, 4 int4, 1 bool, -1 varlena */
    int32_t typmod; /* -1 when none */
    int16_t format; /* 0 text, 1 binary (0 in the answer to Describe of a statement) */
};
int px_wire_row_description(struct evbuffer *out, const struct px_wire_column *cols, size_t n);

/* One field of a DataRow: len bytes at data, or NULL when len is -1. */
struct px_wire_field {
    const void *data;
    int32_t len;
};
int px_wire_data_row(struct evbuffer *out, const struct px_wire_field *fields, size_t n);

/* ParameterDescription: n type OIDs. */
int px_wire_param_description(struct evbuffer *out, const uint32_t *oids, size_t n);

/* CommandComplete with tag ("SELECT 1"). */
int px_wire_command_complete(struct evbuffer *out, const char *tag);

/*
 * The part of a Bind body after the portal and statement names: parameter format codes,
 * parameter values, result format codes.  Pointers into the caller's buffer.
 */
struct px_wire_bind {
    uint16_t nformats;
    const uint8_t *formats; /* nformats big-endian int16 */
    uint16_t nparams;
    const uint8_t *params; /* nparams x (int32 length or -1 for NULL, bytes) */
    uint16_t nresults;
    const uint8_t *results; /* nresults big-endian int16 */
};

/* Splits rest[0..len) into *out.  NULL on success, else PostgreSQL's message for the
 * malformed Bind (08P01): "insufficient data left in message" or "invalid message
 * format".  Never reads past len. */
const char *px_wire_bind_parse(const uint8_t *rest, size_t len, struct px_wire_bind *out);

/* The format code of item i of n given ncodes codes (Bind's rule: none = 0 (text), one =
 * for all, else one each; i < ncodes when ncodes > 1). */
int16_t px_wire_format_code(const uint8_t *codes, uint16_t ncodes, uint16_t i);

/* Value of parameter i (< b->nparams): *val and its length, or -1 for NULL.  O(i). */
int32_t px_wire_bind_param(const struct px_wire_bind *b, uint16_t i, const uint8_t **val);

/*
 * Finds field code (e.g. 'C' for SQLSTATE, 'S' for severity) in an ErrorResponse or
 * NoticeResponse body.  Returns a pointer into body (NUL-terminated inside it) or NULL.
 */
const char *px_wire_error_field(const char *body, size_t len, char code);

/* Writes the ErrorResponse or NoticeResponse (type, body of len bytes) to out with its
 * position field ('P', 1-based characters into the Query text) moved back by shift
 * characters: the Query PostgreSQL ran had shift characters in front of the client's text.
 * A position inside those characters (or not a number) is left out.  0, or -1 when the
 * body is malformed or out of memory (nothing written then). */
int px_wire_error_shift_position(struct evbuffer *out, char type, const uint8_t *body, uint32_t len,
                                 uint32_t shift);

#endif
