/*
 * harness.h: the integration-test harness: a throwaway PostgreSQL 15 cluster per test
 * program (tests/fixture/pgcluster.sh), pgwarden started as a child process with a
 * generated config and auth_file, libpq conninfo strings, and raw-socket helpers for
 * malformed-input tests.
 *
 * Every wait is bounded.  Cleanup runs at exit (atexit) and, should the test program die
 * by a signal or a sanitizer abort, from a small guardian process that notices the test
 * program is gone: it kills the pgwarden children it was told about, stops the cluster
 * and removes the temporary directory.
 *
 * Typical use in a test:
 *
 *     struct harness_proxy_opts o = {.pool_mode = "session", .pool_size = 2,
 *                                    .client_tls_mode = "allow"};
 *     struct harness_proxy *px = harness_proxy_start(&o);
 *     CU_ASSERT_PTR_NOT_NULL_FATAL(px);
 *     PGconn *c = harness_connect(px, "sslmode=require");
 *     ... PQexec(c, "SELECT 1") ...
 *     PQfinish(c);
 *     CU_ASSERT_EQUAL(harness_proxy_stop(px, 0), 0);   (SIGTERM; exit status 0 expected)
 *     harness_proxy_free(px);
 *
 * Not thread-safe: call from the test program's main thread.
 */
#ifndef PGW_TESTS_INTEGRATION_HARNESS_H
#define PGW_TESTS_INTEGRATION_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <libpq-fe.h>

/* ---- the PostgreSQL cluster -------------------------------------------------------- */

/* Paths and credentials of the running cluster; all strings are NUL-terminated. */
struct harness_cluster {
    char dir[512];       /* the cluster's directory (socket directory too) */
    char host[64];       /* "127.0.0.1" */
    int port;            /* TCP port on 127.0.0.1 */
    char ca_file[512];   /* CA that signed the server certificate */
    char cert_file[512]; /* server certificate: CN=127.0.0.1, SAN IP:127.0.0.1,DNS:localhost */
    char key_file[512];  /* its key (pgwarden reuses both for client-side TLS) */
    char client_cert_file[512]; /* a client certificate (CN=pgwarden_test) from the same CA */
    char client_key_file[512];
    char superuser[64];    /* "postgres": trust over the Unix socket only */
    char user[64];         /* "pgwarden_test", password stored as SCRAM */
    char password[64];     /* "test-password" */
    char dbname[64];       /* "pgwarden_test", owned by user */
    char md5_user[64];     /* "md5user", password stored as md5, md5 in pg_hba */
    char md5_password[64]; /* "md5-password" */
    char bindir[512];      /* PostgreSQL binaries (psql, pgbench, ...) */
};

/*
 * Starts the program's cluster on the first call (a few seconds), then returns the same
 * one.  Borrowed pointer, valid until exit.  NULL when the cluster cannot start (the
 * reason is printed on stderr); later calls return NULL at once.
 */
const struct harness_cluster *harness_cluster(void);

/*
 * conninfo for a DIRECT connection to the cluster over TCP as the test user:
 * "host=127.0.0.1 port=P dbname=pgwarden_test user=pgwarden_test password=...
 *  sslrootcert=CA connect_timeout=10 <extra>".  Later keys in extra override earlier ones.
 * Returns a pointer into a static ring of 8 buffers: copy it to keep it.  NULL without a
 * cluster.
 */
const char *harness_cluster_conninfo(const char *extra);

/* Runs sql as the superuser over the Unix socket; 0 on success, -1 (error printed). */
int harness_cluster_exec(const char *sql);
/* pg_ctl stop | start | restart of the cluster (fast mode, as its owner, waiting for it);
 * 0 on success, else the exit status (output printed). */
int harness_cluster_ctl(const char *action);

/* ---- pgwarden ---------------------------------------------------------------------- */

/* True when the pgwarden binary was built (path given by CMake, or $PGWARDEN_BIN). */
bool harness_have_pgwarden(void);
/* Its path ("" when it was not built). */
const char *harness_pgwarden_path(void);

/*
 * What goes into the generated pgwarden config.  A zero field means "do not write this
 * key" (pgwarden's default applies), except where noted.  Strings are borrowed.
 */
struct harness_proxy_opts {
    const char *listen_addr;     /* NULL: "127.0.0.1" (the harness waits on 127.0.0.1) */
    const char *pool_mode;       /* "session" | "transaction" */
    int pool_size;               /* pool_size= of the [databases] entry */
    const char *auth_type;       /* "scram-sha-256" | "md5" | "trust" */
    const char *client_tls_mode; /* "disable" | "allow" | "require" */
    const char *server_tls_mode; /* "disable" | "prefer" | "require" | "verify-ca" | ... */
    int max_client_conn;
    int max_message_bytes;
    int query_wait_timeout_ms; /* 0 is not written; pass "query_wait_timeout_ms = 0"
                                  in pgwarden_extra to wait forever */
    int client_login_timeout_ms;
    int shutdown_timeout_ms;     /* 0: the harness writes 3000 so that stops are quick */
    const char *log_level;       /* "debug" | "info" | ... */
    bool admin;                  /* give the admin port a free port (else admin_port = 0) */
    const char *db_extra;        /* appended to the [databases] entry line, e.g.
                                    "user=pgwarden_test password=test-password" */
    const char *pgwarden_extra;  /* lines appended to [pgwarden] */
    const char *databases_extra; /* lines appended to [databases] */
    const char *tail_extra;      /* text appended after [databases] (other sections) */
    const char *auth_file;       /* whole auth_file content; NULL: both test users with
                                    plaintext passwords */
    int start_timeout_ms;        /* wait for the port to accept; 0: 30000 */
    int asan_quarantine_mb;      /* > 0: the child runs with ASAN_OPTIONS
                                    quarantine_size_mb=N added (see harness_proxy_peak_kb) */
};

/* A pgwarden child process and its files.  Fields are read-only for tests. */
struct harness_proxy {
    pid_t pid;       /* 0 when not running (never started or reaped) */
    int port;        /* listen_port on 127.0.0.1 */
    int admin_port;  /* 0 unless opts.admin */
    int exit_status; /* valid once reaped: exit code, or 128 + signal number */
    char dir[512];   /* temporary directory holding the files below */
    char config_path[600];
    char auth_file_path[600];
    char log_path[600];             /* pgwarden's stdout and stderr */
    struct harness_proxy_opts opts; /* copy; its strings stay borrowed */
};

/*
 * Writes the config and auth_file for opts (NULL: all defaults) into a new temporary
 * directory and picks free ports, but starts nothing (for --check tests and for tests
 * that expect pgwarden to refuse a config).  Starts the cluster if needed.  Returned
 * owned: free with harness_proxy_free().  NULL on failure (printed).
 */
struct harness_proxy *harness_proxy_prepare(const struct harness_proxy_opts *opts);

/*
 * Starts pgwarden -c config_path as a child (posix_spawn) and waits until its port
 * accepts TCP connections.  0 on success; -1 when it exited or did not accept in time
 * (the end of its log is printed; a child that is still running is killed).
 */
int harness_proxy_launch(struct harness_proxy *px);

/* prepare + launch; NULL on failure. */
struct harness_proxy *harness_proxy_start(const struct harness_proxy_opts *opts);

/* Rewrites the config file (atomically) from new opts, keeping the same ports; send
 * SIGHUP afterwards to reload.  0 or -1. */
int harness_proxy_rewrite_config(struct harness_proxy *px, const struct harness_proxy_opts *opts);

/* Sends sig to the child; 0 or -1 (not running). */
int harness_proxy_signal(struct harness_proxy *px, int sig);

/* True while the child has not exited (reaps it when it has). */
bool harness_proxy_alive(struct harness_proxy *px);

/*
 * Waits up to timeout_ms for the child to exit.  Returns its exit status (exit code, or
 * 128 + signal), or -1 on timeout (the child keeps running) or when there is no child.
 */
int harness_proxy_wait_exit(struct harness_proxy *px, int timeout_ms);

/*
 * SIGTERM, then waits up to timeout_ms (0: shutdown_timeout + 5 s); SIGKILL after that.
 * Returns the exit status (0 for a clean shutdown), 137 after a SIGKILL, -1 if not
 * running.
 */
int harness_proxy_stop(struct harness_proxy *px, int timeout_ms);

/* Stops the child if still running (SIGTERM, then SIGKILL), removes its files, frees px.
 * NULL is a no-op. */
void harness_proxy_free(struct harness_proxy *px);

/* Resident set size of the child in KiB (VmRSS of /proc/PID/status); -1 on error. */
long harness_proxy_rss_kb(const struct harness_proxy *px);

/*
 * Peak resident set size of the child in KiB (VmHWM) since it started or since the last
 * harness_proxy_reset_peak (which makes the peak the current RSS; 0, or -1 when the kernel
 * refuses); -1 on error.  The peak, not the RSS afterwards, shows a buffer that held a big
 * message for a while: freed, it may well have gone back to the system already.
 *
 * Under AddressSanitizer both measure ASan's allocator more than pgwarden: freed chunks sit
 * in a quarantine (256 MB by default) before they can be reused, so the RSS grows with the
 * bytes that went through evbuffer chains, however little is ever held.  A test that bounds
 * pgwarden's memory sets opts.asan_quarantine_mb to a few MB (ignored by a Release build).
 */
long harness_proxy_peak_kb(const struct harness_proxy *px);
int harness_proxy_reset_peak(const struct harness_proxy *px);

/* Prints the last max_lines lines of the child's log on stderr (for failure diagnosis). */
void harness_proxy_dump_log(const struct harness_proxy *px, int max_lines);

/* True when the log contains needle. */
bool harness_proxy_log_contains(const struct harness_proxy *px, const char *needle);

/*
 * conninfo for a connection THROUGH pgwarden as the test user:
 * "host=127.0.0.1 port=P dbname=pgwarden_test user=pgwarden_test password=...
 *  sslrootcert=CA connect_timeout=10 <extra>".  Same static ring as
 * harness_cluster_conninfo().
 */
const char *harness_proxy_conninfo(const struct harness_proxy *px, const char *extra);

/*
 * Connects to conninfo with a bounded wait (15 s), keeping the SQLSTATE of a failed
 * connection readable with harness_conn_sqlstate().  Returned owned (PQfinish); it may be
 * in CONNECTION_BAD state: check PQstatus.  NULL only when out of memory.
 */
PGconn *harness_connect_info(const char *conninfo);

/* harness_connect_info(harness_proxy_conninfo(px, extra)). */
PGconn *harness_connect(const struct harness_proxy *px, const char *extra);

/* SQLSTATE of a connection made by harness_connect*() that failed, e.g. "28P01"; "" when
 * the message carries none.  Borrowed from a static buffer. */
const char *harness_conn_sqlstate(PGconn *conn);

/* ---- processes and ports ----------------------------------------------------------- */

/* A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0); -1 on error. */
int harness_free_port(void);

/* Waits until 127.0.0.1:port accepts a TCP connection; 0, or -1 after timeout_ms. */
int harness_wait_port(int port, int timeout_ms);

/*
 * Runs argv (argv[0] a path or a name looked up in PATH) with stdin from /dev/null,
 * collecting stdout and stderr together into *output (owned, free(); may be NULL) when
 * output is not NULL.  Killed after timeout_ms.  Returns the exit status (exit code, or
 * 128 + signal), or -1 when it could not start or timed out.
 */
int harness_run(const char *const argv[], int timeout_ms, char **output);

/* ---- raw sockets (malformed input) ------------------------------------------------- */

/* Connects to 127.0.0.1:port; returns the fd (close() it), -1 on failure. */
int harness_raw_connect(int port, int timeout_ms);

/* Writes all len bytes (MSG_NOSIGNAL); 0, or -1 when the peer is gone or on timeout. */
int harness_raw_send(int fd, const void *buf, size_t len, int timeout_ms);

/*
 * Reads until cap bytes, end of stream, or timeout_ms with no more data.  Returns the
 * number of bytes read (>= 0) and sets *closed (may be NULL) when the peer closed the
 * connection (end of stream or reset); -1 on other errors.
 */
ssize_t harness_raw_recv(int fd, void *buf, size_t cap, int timeout_ms, bool *closed);

/* Builds a protocol 3.0 StartupMessage for user and dbname into buf; returns its length,
 * or 0 when cap is too small. */
size_t harness_build_startup(uint8_t *buf, size_t cap, const char *user, const char *dbname);

/*
 * Scans a server reply for the first ErrorResponse ('E') and copies its SQLSTATE ('C'
 * field) into sqlstate.  Returns true when one was found.  A reply to an SSLRequest ('S'
 * or 'N') at the start is skipped.
 */
bool harness_reply_sqlstate(const uint8_t *buf, size_t len, char sqlstate[6]);

#endif
