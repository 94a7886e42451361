/*
 * sqlscan.h: a small classifier of simple-query SQL text, for transaction pooling.
 *
 * Why it exists.  In transaction mode pgwarden answers or holds back a few statements
 * itself (a BEGIN while the client has no server, the COMMIT/ROLLBACK of such an empty
 * transaction, DEALLOCATE of statements it renamed), and it must notice statements that
 * create session state a later transaction on another server would not see (LISTEN, SET of
 * a parameter it does not re-sync, session advisory locks, WITH HOLD cursors, ...): it
 * warns once per client and resets that server afterwards.  It looks at every simple query
 * (and Parse) of a client in transaction mode, so it is cheap: one pass, no allocation.
 *
 * What it guarantees.  It is a lexer, not a parser.  It splits the text into tokens as
 * PostgreSQL's scanner does (sqllex.h): white space, -- line comments and nested block
 * comments are skipped; 'strings' ('' escapes, continued after a newline), E'strings'
 * (backslash escapes), "quoted identifiers" and $tag$ dollar quotes $tag$ are single
 * tokens, so a keyword or ';' inside them never matches or splits ($1 is a parameter, not
 * a dollar quote).  Keywords are ASCII case-insensitive.  A statement gets a kind other
 * than PX_SQL_OTHER only when its whole token sequence is one of the forms listed below,
 * exactly as PostgreSQL 15's grammar accepts it; anything else, including text PostgreSQL
 * would reject (an unterminated comment, BEGIN ISOLATION LEVEL foo, trailing junk after a
 * number such as 1abc, invalid UTF-8 or a NUL byte anywhere in the text), is
 * PX_SQL_OTHER, which means "let the server answer".  The session-feature check looks only
 * at the statement forms named below and at direct calls of the advisory lock functions:
 * exotic SQL can create session state unnoticed (a function that runs SET or takes a lock,
 * SQL inside a string), a missed warning but never a wrong answer.  The text may hold any
 * bytes and need not be NUL-terminated: nothing past sql[len - 1] is ever read, and the
 * time taken is linear in len.  Strings are lexed as with standard_conforming_strings = on
 * (the default since PostgreSQL 9.1): with it off, a backslash before a quote in a plain
 * 'string' would end the string elsewhere.
 *
 * Pure functions, no state: safe from any thread.  Tests: tests/proxy/test_sqlscan.c.
 */
#ifndef PGW_PROXY_SQLSCAN_H
#define PGW_PROXY_SQLSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A statement name as PostgreSQL keeps it: NAMEDATALEN - 1 bytes, plus the NUL. */
#define PX_SQL_NAME_SIZE 64

enum px_sql_kind {
    PX_SQL_OTHER = 0,
    PX_SQL_EMPTY,          /* only white space, comments and semicolons */
    PX_SQL_BEGIN,          /* BEGIN [WORK | TRANSACTION] [modes] or START TRANSACTION [modes];
                              modes: ISOLATION LEVEL {SERIALIZABLE | REPEATABLE READ |
                              READ COMMITTED | READ UNCOMMITTED}, READ WRITE, READ ONLY,
                              [NOT] DEFERRABLE, separated by commas or white space */
    PX_SQL_COMMIT,         /* COMMIT / END [WORK | TRANSACTION] [AND NO CHAIN] */
    PX_SQL_ROLLBACK,       /* ROLLBACK / ABORT [WORK | TRANSACTION] [AND NO CHAIN] */
    PX_SQL_DEALLOCATE,     /* DEALLOCATE [PREPARE] name */
    PX_SQL_DEALLOCATE_ALL, /* DEALLOCATE [PREPARE] ALL */
    PX_SQL_DISCARD_ALL,    /* DISCARD ALL */
};

/* Session state that cannot follow a client to another server (session.h pins the server
 * to the client while any is left), by what creates it and what clears it. */
#define PX_SQL_PIN_LISTEN   0x01 /* LISTEN; cleared by UNLISTEN * */
#define PX_SQL_PIN_TEMP     0x02 /* temporary tables, views, sequences; DISCARD TEMP */
#define PX_SQL_PIN_CURSOR   0x04 /* DECLARE ... WITH HOLD; CLOSE ALL */
#define PX_SQL_PIN_ADVISORY 0x08 /* session advisory locks; pg_advisory_unlock_all() */
#define PX_SQL_PIN_OTHER    0x10 /* LOAD, set_config(), ...; DISCARD ALL clears them all */

/* A change of session state the one statement of the text makes (session.h follows it). */
enum px_sql_state {
    PX_STATE_NONE = 0,
    PX_STATE_SET,             /* SET [SESSION] name ..., RESET name: state_key = name */
    PX_STATE_RESET_ALL,       /* RESET ALL */
    PX_STATE_ROLE,            /* SET ROLE ..., RESET ROLE */
    PX_STATE_SESSION_AUTH,    /* SET SESSION AUTHORIZATION ..., RESET SESSION AUTHORIZATION */
    PX_STATE_CHARACTERISTICS, /* SET SESSION CHARACTERISTICS AS TRANSACTION ... */
    PX_STATE_PREPARE,         /* PREPARE name ...: state_key = name */
    PX_STATE_UNTRACKED,       /* a text of several statements changes session state */
};

struct px_sql_info {
    /* The kind of the one statement the text holds (a trailing ';' and empty statements
     * are allowed, as PostgreSQL drops them); PX_SQL_OTHER when multi. */
    enum px_sql_kind kind;
    /* BEGIN/COMMIT/ROLLBACK: the CommandComplete tag PostgreSQL 15 sends on success:
     * "BEGIN", "START TRANSACTION", "COMMIT" (also for END; PostgreSQL answers ROLLBACK to
     * the COMMIT of a failed transaction) or "ROLLBACK" (also for ABORT).  Else NULL.
     * Static string. */
    const char *tag;
    /* DEALLOCATE: the name as PostgreSQL reads it: unquoted folded to lower case (ASCII
     * only), "quoted" with "" unescaped; cut to 63 bytes at a UTF-8 character boundary (as
     * PostgreSQL's truncate_identifier in a UTF-8 database).  Else "". */
    char name[PX_SQL_NAME_SIZE];
    /* NULL, or a short static string naming the first session-only feature found in any
     * statement: "LISTEN", "PREPARE", "LOAD", "WITH HOLD cursor", "session advisory lock",
     * "temporary table" (also "temporary view", "temporary sequence"), "SET ROLE",
     * "SET SESSION AUTHORIZATION", "SET SESSION CHARACTERISTICS", "SET search_path" (and
     * "SET <name>" for a few common parameters), else "SET of a parameter that is not
     * re-synced".  RESET of a parameter counts as its SET. */
    const char *session_feature;
    bool multi; /* more than one (non-empty) statement */
    /* NULL, or a short static string naming an effect of the text that a rollback does not
     * undo: a call of dblink, dblink_exec, dblink_send_query, lo_export,
     * pg_background_launch, pg_cancel_backend, pg_file_write or pg_terminate_backend (as
     * the advisory lock functions are found), or COPY ... PROGRAM. */
    const char *outside_effect;
    /* Some statement of the text starts with CALL or DO (outside a transaction block, a
     * procedure or DO block may COMMIT inside). */
    bool proc;
    /* Some statement of the text starts with BEGIN, START, COMMIT, END, ROLLBACK, ABORT,
     * SAVEPOINT, RELEASE or PREPARE: it may control a transaction (also when multi). */
    bool txn_control;
    /* Some statement of the text starts with DEALLOCATE or DISCARD: prepared statements
     * of the session may go. */
    bool drops_prepared;
    /* A ROLLBACK TO SAVEPOINT (what it undoes cannot be followed). */
    bool rollback_to;
    /* Some statement of the text ends the transaction block: COMMIT / END (ends_commit) or
     * ROLLBACK / ABORT (ends_rollback) [WORK | TRANSACTION] [AND [NO] CHAIN]; not TO
     * SAVEPOINT, not PREPARED.  With AND CHAIN (or a BEGIN behind it) a new block follows
     * at once, and the ReadyForQuery says 'T'. */
    bool ends_commit, ends_rollback;
    /* PX_SQL_PIN_* the text creates, and those it clears (DISCARD ALL: all of them). */
    uint8_t pins, unpins;
    /* The session state the one statement changes (PX_STATE_UNTRACKED: several statements,
     * one of which does; but one RESET among statements that change no state and control
     * no transaction is reported as that RESET); session_feature names it too. */
    enum px_sql_state state;
    bool state_reset; /* the statement is RESET ... (SET ... TO DEFAULT is a SET) */
    /* SET/RESET: the parameter's name folded to lower case (a custom a.b name whole);
     * PREPARE: the statement's name as DEALLOCATE's name.  Else "". */
    char state_key[PX_SQL_NAME_SIZE];
    /* The one statement is a query or a data change: its first keyword is SELECT, VALUES,
     * TABLE, WITH, INSERT, UPDATE, DELETE or MERGE (so it is never transaction control,
     * COPY, or a utility statement).  False when multi. */
    bool dml;
};

/*
 * Classifies sql[0..len) (borrowed, read only, any bytes; sql may be NULL when len is 0)
 * into *out, which is overwritten entirely.  Session-only features, as PostgreSQL
 * statements at the start of any statement of the text:
 *   SET [SESSION] name {TO | =} ... and RESET name, name not px_sql_param_tracked()
 *     (SET TIME ZONE is TimeZone, SET NAMES is client_encoding, SET SCHEMA is search_path;
 *     SET LOCAL, SET TRANSACTION, SET CONSTRAINTS, RESET ALL are not flagged);
 *   SET ROLE, SET SESSION AUTHORIZATION, SET SESSION CHARACTERISTICS AS TRANSACTION;
 *   LISTEN; PREPARE (not PREPARE TRANSACTION); DECLARE ... CURSOR WITH HOLD; LOAD;
 *   CREATE [OR REPLACE] [GLOBAL | LOCAL] {TEMP | TEMPORARY} ...; SELECT ... INTO TEMP;
 * and anywhere in a statement, a call of pg_advisory_lock, pg_advisory_lock_shared,
 * pg_try_advisory_lock or pg_try_advisory_lock_shared (an identifier, optionally
 * schema-qualified or "quoted", followed by '(').
 */
void px_sql_classify(const char *sql, size_t len, struct px_sql_info *out);

/* px_tracked_index(name, len) >= 0 (params.h): a reported parameter pgwarden re-syncs. */
bool px_sql_param_tracked(const char *name, size_t len);

#endif
