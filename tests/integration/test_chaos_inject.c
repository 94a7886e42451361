/*
 * test_chaos_inject.c: what clients see and what the server commits when chaos rules
 * inject faults (docs/chaos.md), with rules added and removed over HTTP while the clients
 * stay connected, checked on direct connections to PostgreSQL: an error at a statement
 * (autocommit, inside a block: 25P02 then ROLLBACK at COMMIT, nothing committed; the
 * extended protocol), at COMMIT (rolled back); latency; a disconnect before a statement
 * and just after COMMIT (ambiguous); a failed server connection (when=connect);
 * every_n, max_count, a seeded probability giving the same injections twice, filters by
 * application_name, the counters of GET /chaos, the metrics and the log line.  Drivers'
 * shapes: transaction control as named prepared statements (never hit; a named COMMIT is a
 * commit), more of them than session pooling remembers, the named BEGIN in one group with
 * the first statement (pgJDBC), COMMIT through the unnamed statement (psycopg 3), each in
 * both pool modes, with no reply out of step in pgwarden's log.
 *
 * Every test uses its own application_name and removes its rules, so the tests are
 * independent of each other.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <CUnit/CUnit.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "cunit_main.h"
#include "harness.h"
#include "itest_http.h"
#include "itest_util.h"

#define TOKEN "chaos-inject-token"
#define AUTH  "Bearer " TOKEN

static struct harness_proxy *g_txn;  /* transaction pooling */
static struct harness_proxy *g_sess; /* session pooling */
static PGconn *g_direct;             /* straight to PostgreSQL, for checks */

static struct harness_proxy_opts opts(const char *mode)
{
    struct harness_proxy_opts o = {.pool_mode = mode,
                                   .pool_size = 4,
                                   .auth_type = "scram-sha-256",
                                   .query_wait_timeout_ms = 10000,
                                   .admin = true,
                                   .pgwarden_extra = "admin_token = " TOKEN};
    return o;
}

static int suite_init(void)
{
    if (itu_suite_init() != 0)
        return 1;
    struct harness_proxy_opts o = opts("transaction");
    g_txn = harness_proxy_start(&o);
    o = opts("session");
    g_sess = harness_proxy_start(&o);
    g_direct = harness_connect_info(harness_cluster_conninfo(NULL));
    if (!g_txn || !g_sess || !g_direct || PQstatus(g_direct) != CONNECTION_OK)
        return 1;
    return itu_exec_ok(g_direct, "DROP TABLE IF EXISTS chaos_t") &&
                   itu_exec_ok(g_direct, "CREATE TABLE chaos_t (id int PRIMARY KEY, note text)")
               ? 0
               : 1;
}

static int suite_cleanup(void)
{
    int rc = 0;
    PQfinish(g_direct);
    struct harness_proxy *all[2] = {g_txn, g_sess};
    for (int i = 0; i < 2; i++)
        if (all[i] && itu_proxy_stop_free(all[i]) != 0)
            rc = 1;
    g_txn = g_sess = NULL;
    g_direct = NULL;
    return rc;
}

/* ---- helpers ------------------------------------------------------------------------------ */

static struct http_reply http_body(int port, const char *method, const char *path, const char *body)
{
    static char req[8192];
    size_t blen = body ? strlen(body) : 0;
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     "Authorization: " AUTH "\r\nContent-Length: %zu\r\n\r\n%s",
                     method, path, blen, body ? body : "");
    return http_raw(port, req, (size_t)n);
}

/* POSTs a rule to px; returns its id (0 on failure, printed). */
static long long add_rule(struct harness_proxy *px, const char *json)
{
    struct http_reply r = http_body(px->admin_port, "POST", "/chaos", json);
    long long id = 0;
    if (r.status == 201 && r.body) {
        json_t *j = json_loads(r.body, 0, NULL);
        id = (long long)json_integer_value(json_object_get(j, "id"));
        json_decref(j);
    } else {
        fprintf(stderr, "POST /chaos %s: %d %s\n", json, r.status, r.body ? r.body : "");
    }
    CU_ASSERT_EQUAL(r.status, 201);
    http_reply_free(&r);
    return id;
}

/* Adds the rule {fields, "application_name": app} to px; its id (0 on failure, printed). */
static long long add_app_rule(struct harness_proxy *px, const char *fields, const char *app)
{
    char rule[512];
    snprintf(rule, sizeof rule, "{%s,\"application_name\":\"%s\"}", fields, app);
    return add_rule(px, rule);
}

static void remove_rule(struct harness_proxy *px, long long id)
{
    char path[64];
    snprintf(path, sizeof path, "/chaos/%lld", id);
    struct http_reply r = http_body(px->admin_port, "DELETE", path, NULL);
    CU_ASSERT_EQUAL(r.status, 200);
    http_reply_free(&r);
}

/* A counter ("matched", "injected") of rule id on px; -1 when there is no such rule. */
static long long rule_counter(struct harness_proxy *px, long long id, const char *which)
{
    json_t *arr = get_json(px->admin_port, "/chaos", AUTH);
    size_t i;
    json_t *r;
    long long v = -1;
    json_array_foreach(arr, i, r)
    {
        if (json_integer_value(json_object_get(r, "id")) == id)
            v = (long long)json_integer_value(json_object_get(r, which));
    }
    json_decref(arr);
    return v;
}

static PGconn *client(struct harness_proxy *px, const char *app)
{
    char extra[128];
    snprintf(extra, sizeof extra, "application_name=%s", app);
    PGconn *c = harness_connect(px, extra);
    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    return c;
}

/* Runs sql; returns its SQLSTATE ("" on success) and the message in msg (may be NULL). */
static const char *run(PGconn *c, const char *sql, char *msg, size_t msglen)
{
    static char state[8];
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(res);
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    snprintf(state, sizeof state, "%s",
             st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? ""
             : s                                             ? s
                                                             : "?");
    if (msg)
        snprintf(msg, msglen, "%s", m ? m : "");
    PQclear(res);
    return state;
}

/* The SQLSTATE of res ("" on success, "?" for an error without one); static buffer. */
static const char *state_of(const PGresult *res)
{
    static char state[8];
    ExecStatusType st = PQresultStatus(res);
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    snprintf(state, sizeof state, "%s",
             st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? ""
             : s                                             ? s
                                                             : "?");
    return state;
}

/* Prepares name as sql by the protocol (Parse of a named statement). */
static void prepare(PGconn *c, const char *name, const char *sql)
{
    PGresult *res = PQprepare(c, name, sql, 0, NULL);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        fprintf(stderr, "prepare %s: %s", name, PQerrorMessage(c));
    CU_ASSERT_EQUAL(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
}

/* Runs the named statement (Bind / Describe / Execute / Sync) with at most one parameter;
 * its SQLSTATE ("" on success) and, when tag is not NULL, its command tag. */
static const char *run_prepared(PGconn *c, const char *name, const char *param, char *tag,
                                size_t taglen)
{
    const char *v[1] = {param};
    PGresult *res = PQexecPrepared(c, name, param ? 1 : 0, param ? v : NULL, NULL, NULL, 0);
    const char *st = state_of(res);
    if (tag)
        snprintf(tag, taglen, "%s", PQcmdStatus(res));
    PQclear(res);
    return st;
}

/* Runs sql by the extended protocol (the unnamed statement), as psycopg 3 sends its
 * transaction control; its SQLSTATE ("" on success). */
static const char *run_extended(PGconn *c, const char *sql)
{
    PGresult *res = PQexecParams(c, sql, 0, NULL, NULL, NULL, NULL, 0);
    const char *st = state_of(res);
    PQclear(res);
    return st;
}

/* Nothing went out of step between pgwarden and its servers. */
static void no_desync(struct harness_proxy *px)
{
    CU_ASSERT_FALSE(harness_proxy_log_contains(px, "does not match"));
    CU_ASSERT_FALSE(harness_proxy_log_contains(px, "unexpected reply"));
    CU_ASSERT_TRUE(harness_proxy_alive(px));
}

/* Rows of chaos_t with this note, on the direct connection. */
static int rows(const char *note)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM chaos_t WHERE note = '%s'", note);
    return atoi(itu_value(g_direct, sql));
}

/* ---- error ------------------------------------------------------------------------------- */

/* Inside a transaction block: the statement fails with the rule's SQLSTATE and message,
 * later statements get 25P02, COMMIT answers ROLLBACK, nothing is committed; the next
 * transaction works (max_count 1). */
static void error_in_block(struct harness_proxy *px, const char *app)
{
    char msg[256];
    long long id =
        add_app_rule(px, "\"inject\":\"error\",\"sqlstate\":\"40001\",\"max_count\":1", app);
    PGconn *c = client(px, app);
    CU_ASSERT_STRING_EQUAL(run(c, "BEGIN", NULL, 0), "");
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO chaos_t VALUES (%d, '%s')", px == g_txn ? 1 : 2, app);
    CU_ASSERT_STRING_EQUAL(run(c, sql, msg, sizeof msg), "40001");
    CU_ASSERT_STRING_EQUAL(msg, "could not serialize access due to concurrent update");
    CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(run(c, "SELECT 1", NULL, 0), "25P02");
    PGresult *res = PQexec(c, "COMMIT");
    CU_ASSERT_EQUAL(PQresultStatus(res), PGRES_COMMAND_OK);
    CU_ASSERT_STRING_EQUAL(PQcmdStatus(res), "ROLLBACK");
    PQclear(res);
    CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_IDLE);
    CU_ASSERT_EQUAL(rows(app), 0);
    /* The retry commits (the rule is used up). */
    CU_ASSERT_STRING_EQUAL(run(c, "BEGIN", NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run(c, sql, NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run(c, "COMMIT", NULL, 0), "");
    CU_ASSERT_EQUAL(rows(app), 1);
    CU_ASSERT_EQUAL(rule_counter(px, id, "injected"), 1);
    remove_rule(px, id);
    PQfinish(c);
}

static void test_error_in_block(void)
{
    error_in_block(g_txn, "e2e_block_txn");
    error_in_block(g_sess, "e2e_block_sess");
}

/* Autocommit: the statement is not run; the connection goes on. */
static void test_error_autocommit(void)
{
    long long id = add_rule(g_txn, "{\"inject\":\"error\",\"sqlstate\":\"40P01\",\"every_n\":2,"
                                   "\"application_name\":\"e2e_auto\"}");
    PGconn *c = client(g_txn, "e2e_auto");
    char msg[256];
    CU_ASSERT_STRING_EQUAL(run(c, "INSERT INTO chaos_t VALUES (10, 'e2e_auto')", NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run(c, "INSERT INTO chaos_t VALUES (11, 'e2e_auto')", msg, sizeof msg),
                           "40P01");
    CU_ASSERT_STRING_EQUAL(msg, "deadlock detected");
    CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_IDLE);
    CU_ASSERT_STRING_EQUAL(run(c, "SELECT 1", NULL, 0), "");
    CU_ASSERT_EQUAL(rows("e2e_auto"), 1);
    /* Another application's statements are not touched. */
    PGconn *other = client(g_txn, "e2e_other");
    for (int i = 0; i < 6; i++)
        CU_ASSERT_STRING_EQUAL(run(other, "SELECT 1", NULL, 0), "");
    PQfinish(other);
    CU_ASSERT_EQUAL(rule_counter(g_txn, id, "matched"), 3);
    CU_ASSERT_EQUAL(rule_counter(g_txn, id, "injected"), 1);
    remove_rule(g_txn, id);
    PQfinish(c);
}

/* The extended protocol: the Execute fails, the rest of the group is skipped, Sync ends it. */
static void test_error_extended(void)
{
    long long id = add_rule(g_txn, "{\"inject\":\"error\",\"sqlstate\":\"57014\",\"max_count\":1,"
                                   "\"message\":\"injected cancel\",\"application_name\":"
                                   "\"e2e_ext\"}");
    PGconn *c = client(g_txn, "e2e_ext");
    const char *v[1] = {"20"};
    PGresult *res = PQexecParams(c, "INSERT INTO chaos_t VALUES ($1::int, 'e2e_ext')", 1, NULL, v,
                                 NULL, NULL, 0);
    CU_ASSERT_EQUAL(PQresultStatus(res), PGRES_FATAL_ERROR);
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    CU_ASSERT_STRING_EQUAL(st ? st : "", "57014");
    const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    CU_ASSERT_STRING_EQUAL(m ? m : "", "injected cancel");
    PQclear(res);
    CU_ASSERT_EQUAL(rows("e2e_ext"), 0);
    res = PQexecParams(c, "INSERT INTO chaos_t VALUES ($1::int, 'e2e_ext')", 1, NULL, v, NULL, NULL,
                       0);
    CU_ASSERT_EQUAL(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    CU_ASSERT_EQUAL(rows("e2e_ext"), 1);
    remove_rule(g_txn, id);
    PQfinish(c);
}

/* Transaction control through the extended protocol (as psycopg 3 sends it) is never hit;
 * the statements between are. */
static void test_extended_txn_control(void)
{
    long long id = add_rule(g_txn, "{\"inject\":\"error\",\"sqlstate\":\"40001\","
                                   "\"application_name\":\"e2e_xtc\"}");
    PGconn *c = client(g_txn, "e2e_xtc");
    static const char *const sql[] = {"BEGIN", "SELECT 1", "ROLLBACK", "BEGIN", "ROLLBACK"};
    static const ExecStatusType want[] = {PGRES_COMMAND_OK, PGRES_FATAL_ERROR, PGRES_COMMAND_OK,
                                          PGRES_COMMAND_OK, PGRES_COMMAND_OK};
    for (size_t i = 0; i < sizeof sql / sizeof *sql; i++) {
        PGresult *res = PQexecParams(c, sql[i], 0, NULL, NULL, NULL, NULL, 0);
        if (PQresultStatus(res) != want[i])
            fprintf(stderr, "%s: %s", sql[i], PQerrorMessage(c));
        CU_ASSERT_EQUAL(PQresultStatus(res), want[i]);
        PQclear(res);
    }
    CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_IDLE);
    CU_ASSERT_EQUAL(rule_counter(g_txn, id, "injected"), 1);
    remove_rule(g_txn, id);
    PQfinish(c);
}

/* A rule: 40001 at app's next commit, once; its id. */
static long long commit_rule(struct harness_proxy *px, const char *app)
{
    return add_app_rule(
        px, "\"inject\":\"error\",\"sqlstate\":\"40001\",\"when\":\"commit\",\"max_count\":1", app);
}

/* when=commit: the client gets the error at COMMIT; the server rolled back. */
static void commit_error(struct harness_proxy *px, const char *app, int key)
{
    char sql[256];
    long long id = commit_rule(px, app);
    PGconn *c = client(px, app);
    snprintf(sql, sizeof sql, "INSERT INTO chaos_t VALUES (%d, '%s')", key, app);
    /* a COMMIT outside a block (drivers send them defensively) has nothing to fail:
     * PostgreSQL only warns, and the rule leaves it alone, by either protocol */
    CU_ASSERT_STRING_EQUAL(run(c, "COMMIT", NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run_extended(c, "COMMIT"), "");
    CU_ASSERT_EQUAL(rule_counter(px, id, "injected"), 0);
    CU_ASSERT_STRING_EQUAL(run(c, "BEGIN", NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run(c, sql, NULL, 0), ""); /* statements are not commits */
    CU_ASSERT_STRING_EQUAL(run(c, "COMMIT", NULL, 0), "40001");
    CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_IDLE);
    CU_ASSERT_EQUAL(rows(app), 0);
    CU_ASSERT_STRING_EQUAL(run(c, "BEGIN", NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run(c, sql, NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run(c, "COMMIT", NULL, 0), "");
    CU_ASSERT_EQUAL(rows(app), 1);
    remove_rule(px, id);
    PQfinish(c);
}

static void test_error_at_commit(void)
{
    commit_error(g_txn, "e2e_commit_txn", 30);
    commit_error(g_sess, "e2e_commit_sess", 31);
}

/* A COMMIT pipelined behind its BEGIN (libpq pipeline mode, one Sync): a commit rule hits
 * it (deciding "outside a block" before the BEGIN's reply was in let it through). */
static void commit_pipelined(struct harness_proxy *px, const char *app, int key)
{
    char sql[128];
    long long id = commit_rule(px, app);
    PGconn *c = client(px, app);
    snprintf(sql, sizeof sql, "INSERT INTO chaos_t VALUES (%d, '%s')", key, app);
    CU_ASSERT_EQUAL_FATAL(PQenterPipelineMode(c), 1);
    const char *stmts[] = {"BEGIN", sql, "COMMIT"};
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(PQsendQueryParams(c, stmts[i], 0, NULL, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQpipelineSync(c), 1);
    const char *want[] = {"BEGIN", "INSERT 0 1", "!40001", "PIPELINE_SYNC"};
    for (int i = 0; i < 4; i++)
        CU_ASSERT_STRING_EQUAL(itu_pipeline_next(c, 5000), want[i]);
    PQfinish(c);
    CU_ASSERT_EQUAL(rows(app), 0);
    CU_ASSERT_EQUAL(rule_counter(px, id, "injected"), 1);
    remove_rule(px, id);
}

static void test_commit_pipelined(void)
{
    commit_pipelined(g_txn, "e2e_cpipe_txn", 70);
    commit_pipelined(g_sess, "e2e_cpipe_sess", 71);
}

/* ---- named statements (drivers prepare their statements after a few uses) ------------------ */

/*
 * Transaction control run as named prepared statements (pgJDBC Binds a named BEGIN after
 * prepareThreshold uses; psycopg 3 prepares any query run prepare_threshold times, BEGIN and
 * ROLLBACK included) is never hit, whatever the rule; a named COMMIT is a commit, not a
 * statement.  The statements are prepared before the rule exists (a pooled connection
 * outlives the start of a chaos test).  The statement between them is hit; the block fails
 * as after a real error; the named ROLLBACK ends it and the next named BEGIN works (no
 * 25P02).  Extended-protocol DEALLOCATE ALL, which psycopg sends after such a ROLLBACK, is
 * not hit either.
 */
static void named_txn_control(struct harness_proxy *px, const char *app, int key)
{
    PGconn *c = client(px, app);
    char ins[160], k[16], tag[64];
    snprintf(ins, sizeof ins, "INSERT INTO chaos_t VALUES ($1::int, '%s')", app);
    snprintf(k, sizeof k, "%d", key);
    prepare(c, "b", "BEGIN");
    prepare(c, "r", "ROLLBACK");
    prepare(c, "k", "COMMIT");
    prepare(c, "ins", ins);
    long long id = add_app_rule(px, "\"inject\":\"error\",\"sqlstate\":\"40001\"", app);
    for (int round = 0; round < 2; round++) {
        CU_ASSERT_STRING_EQUAL(run_prepared(c, "b", NULL, NULL, 0), "");
        CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_INTRANS);
        CU_ASSERT_STRING_EQUAL(run_prepared(c, "ins", k, NULL, 0), "40001");
        CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_INERROR);
        CU_ASSERT_STRING_EQUAL(run_prepared(c, "ins", k, NULL, 0), "25P02");
        if (round == 0) {
            CU_ASSERT_STRING_EQUAL(run_prepared(c, "r", NULL, tag, sizeof tag), "");
            CU_ASSERT_STRING_EQUAL(tag, "ROLLBACK");
        } else { /* a when=statement rule does not see the named COMMIT */
            CU_ASSERT_STRING_EQUAL(run_prepared(c, "k", NULL, tag, sizeof tag), "");
            CU_ASSERT_STRING_EQUAL(tag, "ROLLBACK"); /* the COMMIT of a failed block */
        }
        CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_IDLE);
    }
    CU_ASSERT_STRING_EQUAL(run_extended(c, "DEALLOCATE ALL"), "");
    CU_ASSERT_EQUAL(rule_counter(px, id, "injected"), 2);
    CU_ASSERT_EQUAL(rows(app), 0);
    remove_rule(px, id);
    CU_ASSERT_STRING_EQUAL(run(c, "SELECT 1", NULL, 0), "");
    no_desync(px);
    PQfinish(c);
}

static void test_named_txn_control(void)
{
    named_txn_control(g_txn, "e2e_ntc_txn", 60);
    named_txn_control(g_sess, "e2e_ntc_sess", 61);
}

/* More named transaction-control statements than pgwarden remembers per client in session
 * pooling (16): a driver that prepares its BEGIN again under new names (psycopg does after
 * each DEALLOCATE ALL) leaves names behind; those not bound lately are forgotten first, so
 * the BEGIN and ROLLBACK the client keeps using are never hit. */
static void named_txn_control_many(struct harness_proxy *px, const char *app)
{
    PGconn *c = client(px, app);
    prepare(c, "b", "BEGIN");
    prepare(c, "r", "ROLLBACK");
    long long id = add_app_rule(px, "\"inject\":\"error\",\"sqlstate\":\"40001\"", app);
    for (int i = 0; i < 40; i++) {
        char name[16];
        snprintf(name, sizeof name, "old%d", i);
        prepare(c, name, i % 2 ? "BEGIN" : "COMMIT");
        CU_ASSERT_STRING_EQUAL(run_prepared(c, "b", NULL, NULL, 0), "");
        CU_ASSERT_STRING_EQUAL(run(c, "SELECT 1", NULL, 0), "40001");
        CU_ASSERT_STRING_EQUAL(run_prepared(c, "r", NULL, NULL, 0), "");
        CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_IDLE);
    }
    CU_ASSERT_EQUAL(rule_counter(px, id, "injected"), 40);
    remove_rule(px, id);
    no_desync(px);
    PQfinish(c);
}

static void test_named_txn_control_many(void)
{
    named_txn_control_many(g_sess, "e2e_ntcm_sess");
    named_txn_control_many(g_txn, "e2e_ntcm_txn");
}

/* when=commit through a named COMMIT statement: the client gets the error, the transaction
 * is rolled back (the client is idle, not in a failed block), nothing is committed, and the
 * next named BEGIN works. */
static void named_commit(struct harness_proxy *px, const char *app, int key)
{
    PGconn *c = client(px, app);
    char ins[160], k[16];
    snprintf(ins, sizeof ins, "INSERT INTO chaos_t VALUES ($1::int, '%s')", app);
    snprintf(k, sizeof k, "%d", key);
    prepare(c, "b", "BEGIN");
    prepare(c, "k", "COMMIT");
    prepare(c, "ins", ins);
    long long id = add_app_rule(
        px, "\"inject\":\"error\",\"sqlstate\":\"40001\",\"when\":\"commit\",\"max_count\":1", app);
    CU_ASSERT_STRING_EQUAL(run_prepared(c, "b", NULL, NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run_prepared(c, "ins", k, NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run_prepared(c, "k", NULL, NULL, 0), "40001");
    CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_IDLE);
    CU_ASSERT_EQUAL(rows(app), 0);
    CU_ASSERT_STRING_EQUAL(run_prepared(c, "b", NULL, NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run_prepared(c, "ins", k, NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run_prepared(c, "k", NULL, NULL, 0), "");
    CU_ASSERT_EQUAL(rows(app), 1);
    CU_ASSERT_EQUAL(rule_counter(px, id, "matched"), 2); /* the two COMMITs, nothing else */
    CU_ASSERT_EQUAL(rule_counter(px, id, "injected"), 1);
    remove_rule(px, id);
    no_desync(px);
    PQfinish(c);
}

static void test_named_commit(void)
{
    named_commit(g_txn, "e2e_nc_txn", 62);
    named_commit(g_sess, "e2e_nc_sess", 63);
}

/* when=commit through the unnamed statement (psycopg 3's conn.commit() and the end of its
 * conn.transaction() block): as through a simple Query, the transaction is rolled back and
 * the client is idle afterwards; its next BEGIN works. */
static void commit_extended(struct harness_proxy *px, const char *app, int key)
{
    char sql[160];
    long long id = add_app_rule(
        px, "\"inject\":\"error\",\"sqlstate\":\"40001\",\"when\":\"commit\",\"max_count\":1", app);
    PGconn *c = client(px, app);
    snprintf(sql, sizeof sql, "INSERT INTO chaos_t VALUES (%d, '%s')", key, app);
    for (int i = 0; i < 2; i++) {
        CU_ASSERT_STRING_EQUAL(run_extended(c, "BEGIN"), "");
        CU_ASSERT_STRING_EQUAL(run_extended(c, sql), "");
        CU_ASSERT_STRING_EQUAL(run_extended(c, "COMMIT"), i == 0 ? "40001" : "");
        CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_IDLE);
        CU_ASSERT_EQUAL(rows(app), i);
    }
    CU_ASSERT_EQUAL(rule_counter(px, id, "injected"), 1);
    remove_rule(px, id);
    no_desync(px);
    PQfinish(c);
}

static void test_commit_extended(void)
{
    commit_extended(g_txn, "e2e_ce_txn", 64);
    commit_extended(g_sess, "e2e_ce_sess", 65);
}

/* pgJDBC's shape: the named BEGIN and the first statement in one group (one Sync).  The
 * BEGIN runs, the statement is hit, the block is failed as after a real error. */
static void named_begin_in_group(struct harness_proxy *px, const char *app, int key)
{
    PGconn *c = client(px, app);
    char ins[160], k[16];
    snprintf(ins, sizeof ins, "INSERT INTO chaos_t VALUES ($1::int, '%s')", app);
    snprintf(k, sizeof k, "%d", key);
    prepare(c, "b", "BEGIN");
    prepare(c, "ins", ins);
    long long id =
        add_app_rule(px, "\"inject\":\"error\",\"sqlstate\":\"40P01\",\"max_count\":1", app);
    const char *v[1] = {k};
    CU_ASSERT_EQUAL_FATAL(PQenterPipelineMode(c), 1);
    CU_ASSERT_EQUAL(PQsendQueryPrepared(c, "b", 0, NULL, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQsendQueryPrepared(c, "ins", 1, v, NULL, NULL, 0), 1);
    CU_ASSERT_EQUAL(PQpipelineSync(c), 1);
    static const char *const want[] = {"", "40P01"};
    for (int i = 0; i < 2; i++) {
        PGresult *res = PQgetResult(c);
        CU_ASSERT_STRING_EQUAL(state_of(res), want[i]);
        PQclear(res);
        res = PQgetResult(c); /* the NULL that ends each query's results */
        CU_ASSERT_PTR_NULL(res);
        PQclear(res);
    }
    PGresult *res = PQgetResult(c);
    CU_ASSERT_EQUAL(PQresultStatus(res), PGRES_PIPELINE_SYNC);
    PQclear(res);
    CU_ASSERT_EQUAL(PQexitPipelineMode(c), 1);
    CU_ASSERT_EQUAL(PQtransactionStatus(c), PQTRANS_INERROR);
    CU_ASSERT_STRING_EQUAL(run(c, "ROLLBACK", NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run_prepared(c, "b", NULL, NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run_prepared(c, "ins", k, NULL, 0), "");
    CU_ASSERT_STRING_EQUAL(run(c, "COMMIT", NULL, 0), "");
    CU_ASSERT_EQUAL(rows(app), 1);
    CU_ASSERT_EQUAL(rule_counter(px, id, "injected"), 1);
    remove_rule(px, id);
    no_desync(px);
    PQfinish(c);
}

static void test_named_begin_in_group(void)
{
    named_begin_in_group(g_txn, "e2e_nbg_txn", 66);
    named_begin_in_group(g_sess, "e2e_nbg_sess", 67);
}

/* ---- latency, disconnect, connect ---------------------------------------------------------- */

static void test_latency(void)
{
    long long id = add_rule(g_txn, "{\"inject\":\"latency\",\"latency_ms\":300,"
                                   "\"application_name\":\"e2e_slow\"}");
    PGconn *slow = client(g_txn, "e2e_slow"), *fast = client(g_txn, "e2e_fast");
    int64_t t0 = itu_now_ms();
    CU_ASSERT_STRING_EQUAL(itu_value(slow, "SELECT 7"), "7");
    int64_t t1 = itu_now_ms();
    CU_ASSERT_STRING_EQUAL(itu_value(fast, "SELECT 8"), "8");
    int64_t t2 = itu_now_ms();
    CU_ASSERT(t1 - t0 >= 290);
    CU_ASSERT(t2 - t1 < 250);
    remove_rule(g_txn, id);
    t0 = itu_now_ms();
    CU_ASSERT_STRING_EQUAL(itu_value(slow, "SELECT 9"), "9");
    CU_ASSERT(itu_now_ms() - t0 < 250);
    PQfinish(slow);
    PQfinish(fast);
}

/* A disconnect before a statement: the client sees its connection lost (08006), the open
 * transaction is not committed, and a new connection works. */
/*
 * An injected SQLSTATE that PostgreSQL only sends as FATAL (57P01 here: an administrator's
 * pg_terminate_backend) ends the connection as the real one does: FATAL, the connection
 * closed, the open transaction rolled back; the next connection works.  It came as a plain
 * ERROR on a connection that went on working.
 */
static void fatal_ends_connection(struct harness_proxy *px, const char *app, int id0)
{
    char ci[64], ins[128];
    long long id =
        add_app_rule(px, "\"inject\":\"error\",\"sqlstate\":\"57P01\",\"max_count\":1", app);
    PGconn *c = client(px, app);
    CU_ASSERT_STRING_EQUAL(run(c, "BEGIN", NULL, 0), "");
    snprintf(ins, sizeof ins, "INSERT INTO chaos_t VALUES (%d, '%s')", id0, app);
    PGresult *r = PQexec(c, ins);
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    /* libpq may report the FATAL and the close as one error without its fields */
    if (sev)
        CU_ASSERT_STRING_EQUAL(sev, "FATAL");
    if (st)
        CU_ASSERT_STRING_EQUAL(st, "57P01");
    CU_ASSERT_PTR_NOT_NULL(strstr(PQerrorMessage(c), "terminating connection"));
    PQclear(r);
    PQclear(PQexec(c, "SELECT 1"));
    CU_ASSERT_EQUAL(PQstatus(c), CONNECTION_BAD);
    PQfinish(c);
    CU_ASSERT_EQUAL(rows(app), 0);
    CU_ASSERT_EQUAL(rule_counter(px, id, "injected"), 1);
    snprintf(ci, sizeof ci, "application_name=%s", app);
    CU_ASSERT_TRUE(itu_proxy_serves(px, ci));
    remove_rule(px, id);
}

static void test_fatal_ends_connection(void)
{
    fatal_ends_connection(g_txn, "e2e_fatal_txn", 60);
    fatal_ends_connection(g_sess, "e2e_fatal_sess", 61);
}

/*
 * pgwarden's own replay of a transaction (a real 40001, retried) is no statement of the
 * client's: rules leave it alone.  A rule that matched the replay made it differ from
 * what the client saw, so the client got the original error after all, and the rule
 * counted an injection nobody saw (chaos.md's example failed its own check).
 */
static void replay_not_injected(struct harness_proxy *px, const char *app)
{
    CU_ASSERT_TRUE(itu_exec_ok(g_direct, "SELECT setval('chaos_once', 2)"));
    long long id =
        add_app_rule(px, "\"inject\":\"error\",\"sqlstate\":\"40001\",\"every_n\":2", app);
    PGconn *c = client(px, app);
    /* fails for real once (40001), replayed by pgwarden: the client sees the replay's 1 */
    CU_ASSERT_STRING_EQUAL(run(c, "SELECT chaos_fail_once()", NULL, 0), "");
    CU_ASSERT_EQUAL(rule_counter(px, id, "matched"), 1);
    CU_ASSERT_EQUAL(rule_counter(px, id, "injected"), 0);
    /* the client's next statement is the rule's second match */
    CU_ASSERT_STRING_EQUAL(run(c, "SELECT 1", NULL, 0), "40001");
    CU_ASSERT_EQUAL(rule_counter(px, id, "injected"), 1);
    PQfinish(c);
    remove_rule(px, id);
}

static void test_replay_not_injected(void)
{
    CU_ASSERT_TRUE_FATAL(itu_exec_ok(
        g_direct, "DROP SEQUENCE IF EXISTS chaos_once; CREATE SEQUENCE chaos_once;"
                  "CREATE OR REPLACE FUNCTION chaos_fail_once() RETURNS int LANGUAGE plpgsql AS "
                  "$$ BEGIN IF nextval('chaos_once') % 2 = 1 THEN "
                  "RAISE EXCEPTION 'pretend conflict' USING ERRCODE = '40001'; END IF; "
                  "RETURN 1; END $$"));
    replay_not_injected(g_txn, "e2e_replay_txn");
    replay_not_injected(g_sess, "e2e_replay_sess");
}

static void test_disconnect_statement(void)
{
    long long id = add_rule(g_sess, "{\"inject\":\"disconnect\",\"max_count\":1,"
                                    "\"application_name\":\"e2e_drop\"}");
    PGconn *c = client(g_sess, "e2e_drop");
    CU_ASSERT_STRING_EQUAL(run(c, "BEGIN", NULL, 0), "");
    const char *st = run(c, "INSERT INTO chaos_t VALUES (40, 'e2e_drop')", NULL, 0);
    CU_ASSERT_STRING_NOT_EQUAL(st, "");
    if (strcmp(st, "?") != 0) /* a result with a SQLSTATE, or just the connection lost */
        CU_ASSERT_STRING_EQUAL(st, "08006");
    PQfinish(c);
    CU_ASSERT_EQUAL(rows("e2e_drop"), 0);
    CU_ASSERT_EQUAL(rule_counter(g_sess, id, "injected"), 1);
    CU_ASSERT_TRUE(itu_proxy_serves(g_sess, "application_name=e2e_drop"));
    remove_rule(g_sess, id);
}

/* COMMITs of px whose server was lost after they were sent (pgwarden_commit_outcomes_total,
 * every outcome). */
static double lost_commits(struct harness_proxy *px)
{
    struct series *s = NULL;
    int n = 0;
    struct http_reply r = http(px->admin_port, "GET", "/metrics", AUTH);
    CU_ASSERT_EQUAL(check_exposition(r.body ? r.body : "", &s, &n), 0);
    double sum = 0;
    static const char name[] = "pgwarden_commit_outcomes_total|";
    for (int i = 0; i < n; i++)
        if (!strncmp(s[i].key, name, sizeof name - 1))
            sum += s[i].value;
    free(s);
    http_reply_free(&r);
    return sum;
}

/* A disconnect just after COMMIT is sent: the COMMIT reaches PostgreSQL, the server
 * connection is closed before its answer is read.  The client is told the truth as for any
 * lost server (docs/retry.md): COMMIT when it committed, 40000 when it did not (40003,
 * nobody can tell, only when PostgreSQL cannot answer); never a success for a transaction
 * that is not there.  In session mode
 * the session is gone with its server (08006 after the answer). */
/* How the test sends BEGIN and COMMIT. */
enum how { SIMPLE, NAMED, UNNAMED };

static void disconnect_commit(struct harness_proxy *px, const char *app, int key, enum how how)
{
    long long id =
        add_app_rule(px, "\"inject\":\"disconnect\",\"when\":\"commit\",\"max_count\":1", app);
    double lost_before = lost_commits(px);
    PGconn *c = client(px, app);
    if (how == NAMED) { /* a driver's prepared BEGIN and COMMIT (pgJDBC, psycopg) */
        prepare(c, "b", "BEGIN");
        prepare(c, "k", "COMMIT");
    }
    char insert[128];
    snprintf(insert, sizeof insert, "INSERT INTO chaos_t VALUES (%d, '%s')", key, app);
    CU_ASSERT_STRING_EQUAL(how == NAMED     ? run_prepared(c, "b", NULL, NULL, 0)
                           : how == UNNAMED ? run_extended(c, "BEGIN")
                                            : run(c, "BEGIN", NULL, 0),
                           "");
    CU_ASSERT_STRING_EQUAL(run(c, insert, NULL, 0), "");
    char st[8];
    snprintf(st, sizeof st, "%s",
             how == NAMED     ? run_prepared(c, "k", NULL, NULL, 0)
             : how == UNNAMED ? run_extended(c, "COMMIT")
                              : run(c, "COMMIT", NULL, 0));
    int n = rows(app);
    printf("\n    %s%s: COMMIT answered \"%s\", %d row(s) ",
           px == g_sess ? "session" : "transaction",
           how == NAMED     ? " (named)"
           : how == UNNAMED ? " (extended)"
                            : "",
           st, n);
    if (!strcmp(st, ""))
        CU_ASSERT_EQUAL(n, 1); /* told it committed: it did */
    if (!strcmp(st, "40000"))
        CU_ASSERT_EQUAL(n, 0); /* told it rolled back: nothing is there */
    /* PostgreSQL is up and the transaction id was learned before the cut: decidable */
    CU_ASSERT(!strcmp(st, "") || !strcmp(st, "40000"));
    /* the server was really cut before its answer (the outcome was found another way) */
    CU_ASSERT_EQUAL(lost_commits(px) - lost_before, 1);
    CU_ASSERT_EQUAL(rule_counter(px, id, "injected"), 1);
    /* transaction pooling: the client goes on; session pooling: its session is gone */
    if (px == g_txn) {
        CU_ASSERT_STRING_EQUAL(run(c, "SELECT 1", NULL, 0), "");
    } else {
        CU_ASSERT_STRING_NOT_EQUAL(run(c, "SELECT 1", NULL, 0), "");
    }
    PQfinish(c);
    remove_rule(px, id);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "application_name=after_cut"));
}

static void test_disconnect_commit_session(void)
{
    disconnect_commit(g_sess, "e2e_amb_s", 50, SIMPLE);
}

static void test_disconnect_commit_transaction(void)
{
    disconnect_commit(g_txn, "e2e_amb_t", 51, SIMPLE);
}

/* The same through a named COMMIT statement (it is a commit too), and through the unnamed
 * statement (psycopg 3's commit): the Sync that follows the Execute gets ReadyForQuery once
 * the answer is in, and the client goes on in step (transaction pooling). */
static void test_disconnect_commit_extended(void)
{
    disconnect_commit(g_txn, "e2e_amb_nt", 52, NAMED);
    disconnect_commit(g_sess, "e2e_amb_ns", 53, NAMED);
    disconnect_commit(g_txn, "e2e_amb_ut", 54, UNNAMED);
    disconnect_commit(g_sess, "e2e_amb_us", 55, UNNAMED);
}

/* when=connect: the attempt to open a server connection for a client fails with the rule's
 * error; the next attempt works (max_count 1).  A fresh pgwarden, so that no idle server
 * connection can be reused. */
static void test_connect_error(void)
{
    struct harness_proxy_opts o = opts("session");
    struct harness_proxy *px = harness_proxy_start(&o);
    CU_ASSERT_PTR_NOT_NULL_FATAL(px);
    long long id = add_rule(px, "{\"inject\":\"error\",\"sqlstate\":\"53300\",\"when\":"
                                "\"connect\",\"max_count\":1}");
    PGconn *c = harness_connect(px, "application_name=e2e_conn");
    bool failed = PQstatus(c) != CONNECTION_OK;
    if (!failed) /* a login that does not need the server yet: the first query does */
        failed = strcmp(run(c, "SELECT 1", NULL, 0), "") != 0;
    CU_ASSERT_TRUE(failed);
    CU_ASSERT_PTR_NOT_NULL(strstr(PQerrorMessage(c), "sorry, too many clients already"));
    PQfinish(c);
    CU_ASSERT_TRUE(itu_proxy_serves(px, "application_name=e2e_conn"));
    CU_ASSERT_EQUAL(rule_counter(px, id, "injected"), 1);
    CU_ASSERT_EQUAL(itu_proxy_stop_free(px), 0);
}

/* ---- how often ------------------------------------------------------------------------------- */

/* The injections of n SELECTs on c as 'X' (failed) and '.' (succeeded). */
static void pattern(PGconn *c, char *out, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = strcmp(run(c, "SELECT 1", NULL, 0), "") ? 'X' : '.';
    out[n] = '\0';
}

static void test_every_n_and_max_count(void)
{
    long long id = add_rule(g_txn, "{\"inject\":\"error\",\"sqlstate\":\"40001\",\"every_n\":3,"
                                   "\"max_count\":2,\"application_name\":\"e2e_n\"}");
    PGconn *c = client(g_txn, "e2e_n");
    char p[16];
    pattern(c, p, 12);
    CU_ASSERT_STRING_EQUAL(p, "..X..X......");
    CU_ASSERT_EQUAL(rule_counter(g_txn, id, "matched"), 12);
    CU_ASSERT_EQUAL(rule_counter(g_txn, id, "injected"), 2);
    remove_rule(g_txn, id);
    PQfinish(c);
}

static void test_seeded_probability(void)
{
    const char *rule = "{\"inject\":\"error\",\"sqlstate\":\"40001\",\"probability\":0.5,"
                       "\"seed\":7,\"application_name\":\"e2e_p\"}";
    char p1[64], p2[64], p3[64];
    PGconn *c = client(g_txn, "e2e_p");
    long long id = add_rule(g_txn, rule);
    pattern(c, p1, 60);
    long long injected = rule_counter(g_txn, id, "injected");
    remove_rule(g_txn, id);
    int x = 0;
    for (int i = 0; i < 60; i++)
        x += p1[i] == 'X';
    CU_ASSERT_EQUAL(injected, x);
    CU_ASSERT(x > 10 && x < 50);
    /* The same rule again (a new id): the same injections, on another connection and with
     * other clients' statements in between. */
    PGconn *other = client(g_txn, "e2e_p_other");
    id = add_rule(g_txn, rule);
    PQfinish(c);
    c = client(g_txn, "e2e_p");
    for (int i = 0; i < 60; i++) {
        CU_ASSERT_STRING_EQUAL(run(other, "SELECT 2", NULL, 0), "");
        p2[i] = strcmp(run(c, "SELECT 1", NULL, 0), "") ? 'X' : '.';
    }
    p2[60] = '\0';
    CU_ASSERT_STRING_EQUAL(p1, p2);
    remove_rule(g_txn, id);
    /* Another seed: other injections. */
    id = add_rule(g_txn, "{\"inject\":\"error\",\"sqlstate\":\"40001\",\"probability\":0.5,"
                         "\"seed\":8,\"application_name\":\"e2e_p\"}");
    pattern(c, p3, 60);
    CU_ASSERT_STRING_NOT_EQUAL(p1, p3);
    remove_rule(g_txn, id);
    PQfinish(other);
    PQfinish(c);
}

/* A rule added and removed while a client keeps its connection and runs statements; the
 * metrics and the log follow. */
static void test_rule_while_connected(void)
{
    PGconn *c = client(g_txn, "e2e_live");
    for (int i = 0; i < 3; i++)
        CU_ASSERT_STRING_EQUAL(run(c, "SELECT 1", NULL, 0), "");
    long long id = add_rule(g_txn, "{\"inject\":\"error\",\"sqlstate\":\"55P03\","
                                   "\"application_name\":\"e2e_live\"}");
    char msg[256];
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_STRING_EQUAL(run(c, "SELECT 1", msg, sizeof msg), "55P03");
        CU_ASSERT_STRING_EQUAL(msg, "canceling statement due to lock timeout");
    }
    struct series *s = NULL;
    int n = 0;
    struct http_reply r = http(g_txn->admin_port, "GET", "/metrics", AUTH);
    CU_ASSERT_EQUAL(check_exposition(r.body ? r.body : "", &s, &n), 0);
    char key[256];
    snprintf(key, sizeof key, "pgwarden_chaos_injected_total|rule=%lld,kind=error,sqlstate=55P03,|",
             id);
    CU_ASSERT_EQUAL(series_value(s, n, key), 4);
    free(s);
    http_reply_free(&r);
    char line[128];
    snprintf(line, sizeof line, ": chaos rule %lld injects 55P03 (statement)", id);
    CU_ASSERT_TRUE(harness_proxy_log_contains(g_txn, line));
    remove_rule(g_txn, id);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_STRING_EQUAL(run(c, "SELECT 1", NULL, 0), "");
    PQfinish(c);
}

static void register_suites(void)
{
    static const CU_TestInfo tests[] = {
        {"error_in_block", test_error_in_block},
        {"error_autocommit", test_error_autocommit},
        {"error_extended", test_error_extended},
        {"extended_txn_control", test_extended_txn_control},
        {"error_at_commit", test_error_at_commit},
        {"named_txn_control", test_named_txn_control},
        {"named_txn_control_many", test_named_txn_control_many},
        {"named_commit", test_named_commit},
        {"commit_extended", test_commit_extended},
        {"named_begin_in_group", test_named_begin_in_group},
        {"latency", test_latency},
        {"disconnect_statement", test_disconnect_statement},
        {"fatal_ends_connection", test_fatal_ends_connection},
        {"replay_not_injected", test_replay_not_injected},
        {"commit_pipelined", test_commit_pipelined},
        {"disconnect_commit_session", test_disconnect_commit_session},
        {"disconnect_commit_transaction", test_disconnect_commit_transaction},
        {"disconnect_commit_extended", test_disconnect_commit_extended},
        {"connect_error", test_connect_error},
        {"every_n_and_max_count", test_every_n_and_max_count},
        {"seeded_probability", test_seeded_probability},
        {"rule_while_connected", test_rule_while_connected},
        CU_TEST_INFO_NULL,
    };
    cunit_add_suite("chaos_inject", suite_init, suite_cleanup, tests);
}

int main(int argc, char **argv)
{
    return cunit_main(argc, argv, register_suites);
}
