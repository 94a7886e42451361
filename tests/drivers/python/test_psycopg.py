"""pgwarden's lock functions through psycopg 3 (Debian python3-psycopg), both pool modes.

Run by drivers_launch (tests/drivers/README.md).  What a user of psycopg checks: tokens
are positive integers that only increase; cursor.description names and types the column as
PostgreSQL would (int8, bool, int4, text); try_lock gives None when the key is taken; the
errors are psycopg's exception classes with the right SQLSTATE (55P03, 22023, 25P01,
40P01, 25P02); a failed lock call fails the transaction until ROLLBACK; transaction locks go
at COMMIT; the extended protocol: parameters, prepare=True (a named server-side statement,
answered by pgwarden), prepare_threshold reached, binary results and parameters, pipeline
mode; and the docs recipe (tests/drivers/recipes/pgwarden_psycopg.py) serialises a
read-modify-write from several connections with fencing tokens and no lost update.
"""

import signal
import sys
import threading
import time

import psycopg
from psycopg import errors
from psycopg.pq import TransactionStatus

from drivers_common import (BOOL, CASE_TIMEOUT_S, INT4, INT8, TEXT, Runner, admin, check,
                            check_token, modes, now, unique, url)
from pgwarden_psycopg import pgwarden_lock, pgwarden_session_lock


def connect(mode, autocommit=True, **kw):
    return psycopg.connect(url(mode), autocommit=autocommit, connect_timeout=10, **kw)


def expect_error(exc_class, sqlstate, fn, *args):
    """Runs fn(*args); it must raise exc_class with sqlstate.  Returns the exception."""
    try:
        fn(*args)
    except exc_class as e:
        check(e.sqlstate == sqlstate, "wrong SQLSTATE", e.sqlstate, sqlstate, str(e))
        return e
    except psycopg.Error as e:
        raise AssertionError("expected %s (%s), got %s %s: %s" %
                             (exc_class.__name__, sqlstate, type(e).__name__, e.sqlstate, e))
    raise AssertionError("expected %s (%s), got no error" % (exc_class.__name__, sqlstate))


def one(conn, sql, params=None, **kw):
    return conn.execute(sql, params, **kw).fetchone()[0]


# ---- cases ---------------------------------------------------------------------------------

def case_tokens_and_types(mode):
    k1, k2, k3 = unique("acct"), unique("acct"), unique("job")
    with connect(mode) as a:
        cur = a.execute("SELECT pgwarden_lock(%s, %s)", (k1, "write"))
        d = cur.description
        check(len(d) == 1 and d[0].name == "pgwarden_lock", "column", d)
        check(d[0].type_code == INT8, "type of pgwarden_lock is not int8", d[0].type_code)
        t1 = check_token(cur.fetchone()[0])
        t2 = check_token(one(a, "SELECT pgwarden_lock(%s, %s)", (k2, "read")), t1)
        cur = a.execute("SELECT pgwarden_try_lock(%s, 'exclusive')", (k3,))
        check(cur.description[0].name == "pgwarden_try_lock", "column", cur.description)
        check(cur.description[0].type_code == INT8, "type", cur.description[0].type_code)
        t3 = check_token(cur.fetchone()[0], t2)
        # re-request of a held key: the same token (no stacking)
        check(one(a, "SELECT pgwarden_lock(%s, 'read')", (k1,)) == t1, "re-request token")
        # the simple query protocol (no parameters): same answers
        cur = a.execute("SELECT pgwarden_lock('%s', 'read')" % k2)
        check(cur.description[0].type_code == INT8, "simple: type", cur.description[0].type_code)
        check(cur.fetchone()[0] == t2, "simple: re-request token")
        # pgwarden_locks(): (key text, mode text, scope text, token bigint)
        cur = a.execute("SELECT * FROM pgwarden_locks()")
        names = [c.name for c in cur.description]
        types = [c.type_code for c in cur.description]
        check(names == ["key", "mode", "scope", "token"], "pgwarden_locks columns", names)
        check(types == [TEXT, TEXT, TEXT, INT8], "pgwarden_locks types", types)
        rows = sorted(cur.fetchall())
        want = sorted([(k1, "write", "session", t1), (k2, "read", "session", t2),
                       (k3, "exclusive", "session", t3)])
        check(rows == want, "pgwarden_locks rows", rows, want)
        # unlock: boolean; unlock_all: integer
        cur = a.execute("SELECT pgwarden_unlock(%s)", (k1,))
        check(cur.description[0].type_code == BOOL, "unlock type", cur.description[0].type_code)
        check(cur.fetchone()[0] is True, "unlock of a held key is not True")
        check(one(a, "SELECT pgwarden_unlock(%s)", (k1,)) is False, "second unlock not False")
        cur = a.execute("SELECT pgwarden_unlock_all()")
        check(cur.description[0].type_code == INT4, "unlock_all type", cur.description[0].type_code)
        check(cur.fetchone()[0] == 2, "unlock_all count")
        # a new grant of a released key: a larger token
        check_token(one(a, "SELECT pgwarden_lock(%s, 'write')", (k1,)), t3)
        # ClientCursor: arguments bound client-side, simple protocol
        cc = psycopg.ClientCursor(a)
        cc.execute("SELECT pgwarden_unlock(%s)", (k1,))
        check(cc.fetchone()[0] is True, "client-side binding: unlock")


def case_prepared(mode):
    """prepare=True: psycopg sends Parse of a named statement (_pg3_N), then Bind/Execute of
    it for each call: every message answered by pgwarden, none reaching PostgreSQL."""
    keys = [unique("prep") for _ in range(4)]
    with connect(mode) as a, connect(mode) as b:
        last = 0
        for k in keys:
            cur = a.execute("SELECT pgwarden_lock(%s, %s, %s)", (k, "write", 1000), prepare=True)
            check(cur.description[0].type_code == INT8, "type", cur.description[0].type_code)
            last = check_token(cur.fetchone()[0], last)
        # the other connection: the same statement text prepared there too; taken keys
        for k in keys:
            check(one(b, "SELECT pgwarden_try_lock(%s, %s)", (k, "write"), prepare=True) is None,
                  "try_lock of a taken key is not None")
        # automatic preparation: prepare_threshold executions, then a named statement
        b.prepare_threshold = 2
        for i in range(5):
            k = unique("auto")
            t = one(b, "SELECT pgwarden_try_lock(%s, %s)", (k, "read"))
            last = check_token(t, last)
            check(one(b, "SELECT pgwarden_unlock(%s)", (k,)) is True, "unlock", i)
        for k in keys:
            check(one(a, "SELECT pgwarden_unlock(%s)", (k,), prepare=True) is True, "unlock")
        check(one(a, "SELECT pgwarden_unlock_all()", prepare=True) == 0, "unlock_all")
        # an ordinary prepared statement on the same connection still reaches PostgreSQL
        check(one(a, "SELECT %s::int + 1", (41,), prepare=True) == 42, "ordinary prepared")


def case_binary(mode):
    """Binary results (cursor(binary=True)) and binary parameters (%b)."""
    k = unique("bin")
    with connect(mode) as a, connect(mode) as b:
        cur = a.cursor(binary=True)
        cur.execute("SELECT pgwarden_lock(%s, %s)", (k, "write"))
        check(cur.pgresult.fformat(0) == 1, "result not binary")
        check(cur.description[0].type_code == INT8, "type", cur.description[0].type_code)
        t = check_token(cur.fetchone()[0])
        cur.execute("SELECT pgwarden_unlock(%b)", (k,))
        check(cur.fetchone()[0] is True, "binary bool")
        cur.execute("SELECT pgwarden_unlock_all()")
        check(cur.fetchone()[0] == 0, "binary int4")
        cur = b.cursor(binary=True)
        cur.execute("SELECT pgwarden_lock(%b, %b, %b)", (k, "exclusive", 2000))
        t2 = check_token(cur.fetchone()[0], t)
        cur.execute("SELECT * FROM pgwarden_locks()")
        rows = cur.fetchall()
        check(rows == [(k, "exclusive", "session", t2)], "binary pgwarden_locks", rows)


def case_int_timeout_param(mode):
    """A Python int is sent typed by its size (int2 here): PostgreSQL resolves
    pgwarden_lock(text, text, smallint) to the integer argument, so must pgwarden."""
    k = unique("t")
    with connect(mode) as a, connect(mode) as b:
        check_token(one(a, "SELECT pgwarden_lock(%s, %s, %s)", (k, "write", 100)))
        t0 = now()
        expect_error(errors.LockNotAvailable, "55P03", b.execute,
                     "SELECT pgwarden_lock(%s, %s, %s)", (k, "write", 100))
        check(now() - t0 >= 0.09, "timed out too early", now() - t0)
        check_token(one(b, "SELECT pgwarden_lock(%s, %s, %s)", (unique("t"), "write", 40000)))


def case_try_lock_taken(mode):
    k = unique("taken")
    with connect(mode) as a, connect(mode) as b:
        t = check_token(one(a, "SELECT pgwarden_lock(%s, 'write')", (k,)))
        check(one(b, "SELECT pgwarden_try_lock(%s, 'write')", (k,)) is None, "write/write")
        check(one(b, "SELECT pgwarden_try_lock(%s, 'exclusive')", (k,)) is None, "exclusive")
        check_token(one(b, "SELECT pgwarden_try_lock(%s, 'read')", (k,)), t)  # read + write
        with b.transaction():
            check(one(b, "SELECT pgwarden_try_xact_lock(%s, 'write')", (k,)) is None, "xact")


def case_errors(mode):
    k = unique("err")
    with connect(mode) as a, connect(mode) as b:
        check_token(one(a, "SELECT pgwarden_lock(%s, 'write')", (k,)))
        t0 = now()
        e = expect_error(errors.LockNotAvailable, "55P03", b.execute,
                         "SELECT pgwarden_lock(%s, 'write', 100)", (k,))
        waited = now() - t0
        check(0.09 <= waited < 5, "55P03 after", waited)
        check(k in str(e), "the 55P03 message does not name the key", str(e))
        expect_error(errors.InvalidParameterValue, "22023", b.execute,
                     "SELECT pgwarden_lock(%s, %s)", (k, "sideways"))
        expect_error(errors.InvalidParameterValue, "22023", b.execute,
                     "SELECT pgwarden_lock('', 'read')")
        expect_error(errors.NoActiveSqlTransaction, "25P01", b.execute,
                     "SELECT pgwarden_xact_lock(%s, 'read')", (k,))
        check(b.info.transaction_status == TransactionStatus.IDLE, "status after errors")
        check(one(b, "SELECT 1") == 1, "connection unusable after errors")
        # a call inside a larger statement is not a lock call: PostgreSQL answers 42883
        expect_error(errors.UndefinedFunction, "42883", b.execute,
                     "SELECT pgwarden_lock(%s, 'read'), 1", (k,))


def case_failed_transaction(mode):
    k, table = unique("busy"), unique("drv_t")
    with connect("direct") as d, connect(mode) as a, connect(mode) as b:
        d.execute("CREATE TABLE %s (v int)" % table)
        check_token(one(b, "SELECT pgwarden_lock(%s, 'exclusive')", (k,)))
        # 1. the lock call is the first statement of the block
        a.execute("BEGIN")
        expect_error(errors.LockNotAvailable, "55P03", a.execute,
                     "SELECT pgwarden_xact_lock(%s, 'write', 100)", (k,))
        check(a.info.transaction_status == TransactionStatus.INERROR, "not INERROR",
              a.info.transaction_status)
        expect_error(errors.InFailedSqlTransaction, "25P02", a.execute, "SELECT 1")
        a.execute("ROLLBACK")
        check(a.info.transaction_status == TransactionStatus.IDLE, "not IDLE after ROLLBACK")
        # 2. after real work: nothing of the block commits
        a.execute("BEGIN")
        a.execute("INSERT INTO %s VALUES (1)" % table)
        expect_error(errors.InvalidParameterValue, "22023", a.execute,
                     "SELECT pgwarden_xact_lock(%s, 'sideways')", (k,))
        expect_error(errors.InFailedSqlTransaction, "25P02", a.execute,
                     "INSERT INTO %s VALUES (2)" % table)
        a.execute("COMMIT")  # answered ROLLBACK, as PostgreSQL does
        check(one(d, "SELECT count(*) FROM %s" % table) == 0, "a failed block committed")
        # 3. psycopg's own transactions (autocommit off): rollback() recovers
        with connect(mode, autocommit=False) as c:
            c.execute("INSERT INTO %s VALUES (3)" % table)
            expect_error(errors.LockNotAvailable, "55P03", c.execute,
                         "SELECT pgwarden_xact_lock(%s, 'read', 50)", (k,))
            expect_error(errors.InFailedSqlTransaction, "25P02", c.execute, "SELECT 1")
            c.rollback()
            check(one(c, "SELECT 7") == 7, "unusable after rollback")
            c.commit()
        # 4. conn.transaction(): the block raises, psycopg rolls back, the connection goes on
        try:
            with a.transaction():
                a.execute("INSERT INTO %s VALUES (4)" % table)
                a.execute("SELECT pgwarden_xact_lock(%s, 'write', 50)", (k,))
            raise AssertionError("no error in the transaction block")
        except errors.LockNotAvailable:
            pass
        check(a.info.transaction_status == TransactionStatus.IDLE, "not IDLE")
        check(one(d, "SELECT count(*) FROM %s" % table) == 0, "a failed block committed")
        d.execute("DROP TABLE %s" % table)


def case_xact_lock_released_at_commit(mode):
    k = unique("xact")
    with connect(mode, autocommit=False) as a, connect(mode) as b:
        # autocommit off: psycopg sends BEGIN before the first statement
        t = check_token(one(a, "SELECT pgwarden_xact_lock(%s, 'write')", (k,)))
        check(a.info.transaction_status == TransactionStatus.INTRANS, "not in a transaction")
        rows = a.execute("SELECT * FROM pgwarden_locks()").fetchall()
        check(rows == [(k, "write", "transaction", t)], "pgwarden_locks in the block", rows)
        check(one(b, "SELECT pgwarden_try_lock(%s, 'write')", (k,)) is None, "held in block")
        a.commit()
        t2 = check_token(one(b, "SELECT pgwarden_try_lock(%s, 'write')", (k,)), t)
        check(one(b, "SELECT pgwarden_unlock(%s)", (k,)) is True, "unlock")
        # ROLLBACK releases too
        check_token(one(a, "SELECT pgwarden_xact_lock(%s, 'write')", (k,)), t2)
        check(one(b, "SELECT pgwarden_try_lock(%s, 'write')", (k,)) is None, "held in block")
        a.rollback()
        check_token(one(b, "SELECT pgwarden_try_lock(%s, 'write')", (k,)), t2)


def case_deadlock(mode):
    """Two connections lock x and y in opposite orders: the one whose wait closes the
    cycle gets DeadlockDetected (40P01) at once; the other gets its lock when the victim
    lets go."""
    x, y = unique("x"), unique("y")
    with connect(mode, application_name="alice") as a, connect(mode, application_name="bob") as b:
        check_token(one(a, "SELECT pgwarden_lock(%s, 'exclusive')", (x,)))
        check_token(one(b, "SELECT pgwarden_lock(%s, 'exclusive')", (y,)))
        result = {}

        def a_waits():
            try:
                result["a"] = one(a, "SELECT pgwarden_lock(%s, 'exclusive')", (y,))
            except Exception as e:  # reported below
                result["a"] = e
        th = threading.Thread(target=a_waits)
        th.start()
        time.sleep(0.3)
        check("a" not in result, "a did not wait", result.get("a"))
        t0 = now()
        e = expect_error(errors.DeadlockDetected, "40P01", b.execute,
                         "SELECT pgwarden_lock(%s, 'exclusive')", (x,))
        check(now() - t0 < 1.5, "deadlock found late", now() - t0)
        check("alice" in (e.diag.message_detail or ""), "DETAIL", e.diag.message_detail)
        check("a" not in result, "a was also a victim", result.get("a"))
        check(one(b, "SELECT pgwarden_unlock_all()") == 1, "victim's unlock_all")
        th.join(10)
        check(not th.is_alive(), "a still waits after the victim let go")
        check_token(result["a"])
        # the same with transaction locks: the victim's block fails, the other commits
        with a.transaction():
            check_token(one(a, "SELECT pgwarden_xact_lock(%s, 'write')", (x + "t",)))
            b.execute("BEGIN")
            check_token(one(b, "SELECT pgwarden_xact_lock(%s, 'write')", (y + "t",)))
            th = threading.Thread(target=lambda: result.__setitem__(
                "a2", one(a, "SELECT pgwarden_xact_lock(%s, 'write')", (y + "t",))))
            th.start()
            time.sleep(0.3)
            expect_error(errors.DeadlockDetected, "40P01", b.execute,
                         "SELECT pgwarden_xact_lock(%s, 'write')", (x + "t",))
            check(b.info.transaction_status == TransactionStatus.INERROR, "victim's block")
            b.execute("ROLLBACK")  # releases y: a goes on
            th.join(10)
            check(not th.is_alive(), "a still waits after the victim's ROLLBACK")
            check_token(result.get("a2"))


def case_pipeline(mode):
    """psycopg's pipeline mode: lock calls and SQL in one round trip, answered in order."""
    k = unique("pipe")
    with connect(mode) as a:
        with a.pipeline():
            c1 = a.execute("SELECT 11")
            c2 = a.execute("SELECT pgwarden_lock(%s, 'write')", (k,))
            c3 = a.execute("SELECT 22")
            c4 = a.execute("SELECT * FROM pgwarden_locks()")
        check(c1.fetchone()[0] == 11 and c3.fetchone()[0] == 22, "ordinary results")
        t = check_token(c2.fetchone()[0])
        check(c4.fetchall() == [(k, "write", "session", t)], "pgwarden_locks in pipeline")
        check(one(a, "SELECT pgwarden_unlock(%s)", (k,)) is True, "unlock")


# ---- chaos rules (docs/chaos.md) with prepared statements ----------------------------------

def chaos_rule(mode, **rule):
    """Adds a chaos rule; returns its id."""
    return admin(mode, "POST", "/chaos", rule)["id"]


def chaos_counters(mode, rule_id):
    """Removes the rule; returns (matched, injected)."""
    r = next(r for r in admin(mode, "GET", "/chaos") if r["id"] == rule_id)
    admin(mode, "DELETE", "/chaos/%d" % rule_id)
    return r["matched"], r["injected"]


def case_chaos_prepared(mode):
    """40001 injected into 30% of the statements of a client whose statements psycopg
    prepares (prepare_threshold 2): its BEGIN, ROLLBACK and COMMIT run by cursor.execute()
    become named statements, which are never hit (a ROLLBACK that failed left the block
    failed: 25P02 at the next BEGIN); psycopg's conn.transaction() sends DEALLOCATE ALL
    after a ROLLBACK once it has prepared statements, which is not hit either (psycopg
    swallows its error: the injection was lost).  The client sees exactly the injections
    as SerializationFailure, nothing else; what it was told committed is what committed."""
    app, table = unique("chaos_psy"), unique("drv_chaos")
    with connect("direct") as d:
        d.execute("CREATE TABLE %s (id int PRIMARY KEY)" % table)
    rid = chaos_rule(mode, inject="error", sqlstate="40001", probability=0.3, seed=11,
                     application_name=app)
    done, seen = set(), {}
    try:
        with connect(mode, application_name=app) as c:
            c.prepare_threshold = 2
            for i in range(120):
                try:
                    if i % 2:  # transaction control by cursor.execute(): prepared too
                        try:
                            c.execute("BEGIN")
                            c.execute("SELECT %s::int", (i,))
                            c.execute("INSERT INTO %s VALUES (%%s)" % table, (i,))
                            c.execute("COMMIT")
                        except errors.SerializationFailure:
                            c.execute("ROLLBACK")
                            raise
                    else:
                        with c.transaction():
                            c.execute("SELECT %s::int", (i,))
                            c.execute("INSERT INTO %s VALUES (%%s)" % table, (i,))
                    done.add(i)
                except errors.SerializationFailure as e:
                    seen[e.sqlstate] = seen.get(e.sqlstate, 0) + 1
                check(c.info.transaction_status == TransactionStatus.IDLE, "not idle", i,
                      c.info.transaction_status)
            check(one(c, "SELECT 5") == 5, "unusable")
    finally:
        matched, injected = chaos_counters(mode, rid)
    with connect("direct") as d:
        committed = {r[0] for r in d.execute("SELECT id FROM %s" % table)}
        d.execute("DROP TABLE %s" % table)
    check(committed == done, "committed differs from what the client was told",
          sorted(committed ^ done))
    check(injected > 10 and seen == {"40001": injected}, "injections seen", seen, injected,
          matched)


def case_chaos_commit(mode):
    """40001 injected at every 3rd COMMIT psycopg sends (the unnamed statement, and a
    prepared COMMIT): the with-block raises SerializationFailure, the transaction is rolled
    back (nothing of it committed) and the connection is idle, not in a failed block."""
    app, table = unique("chaos_psc"), unique("drv_chaosc")
    with connect("direct") as d:
        d.execute("CREATE TABLE %s (id int PRIMARY KEY)" % table)
    rid = chaos_rule(mode, inject="error", sqlstate="40001", when="commit", every_n=3,
                     application_name=app)
    done, failed = set(), 0
    try:
        with connect(mode, application_name=app) as c:
            c.prepare_threshold = 2
            for i in range(30):
                try:
                    if i % 2:
                        c.execute("BEGIN")
                        c.execute("INSERT INTO %s VALUES (%%s)" % table, (i,))
                        c.execute("COMMIT")
                    else:
                        with c.transaction():
                            c.execute("INSERT INTO %s VALUES (%%s)" % table, (i,))
                    done.add(i)
                except errors.SerializationFailure:
                    failed += 1
                check(c.info.transaction_status == TransactionStatus.IDLE, "not idle", i,
                      c.info.transaction_status)
    finally:
        matched, injected = chaos_counters(mode, rid)
    with connect("direct") as d:
        committed = {r[0] for r in d.execute("SELECT id FROM %s" % table)}
        d.execute("DROP TABLE %s" % table)
    check(committed == done, "committed differs from what the client was told",
          sorted(committed ^ done))
    check((matched, injected, failed) == (30, 10, 10), "commits matched, injected, failed",
          matched, injected, failed)


WAITERS = 8  # more than the transaction pool's 4 servers


def case_waiters_hold_no_server(mode):
    """Transaction mode: clients waiting for a lock in a transaction that sent nothing else
    (psycopg: BEGIN, then the lock call) hold no server, so a pool of 4 serves others while
    8 wait.  Session mode: each client has its own server, nothing to check."""
    if mode != "transaction":
        return
    k = unique("hot")
    conns = [connect(mode, autocommit=(i % 2 == 0)) for i in range(WAITERS)]
    got, errs = [], []
    try:
        with connect(mode) as holder, connect(mode) as other:
            check_token(one(holder, "SELECT pgwarden_lock(%s, 'exclusive')", (k,)))

            def waiter(c):
                try:
                    with pgwarden_lock(c, k) as token:
                        got.append(token)
                except Exception as e:
                    errs.append(e)
            threads = [threading.Thread(target=waiter, args=(c,)) for c in conns]
            for th in threads:
                th.start()
            time.sleep(0.5)
            try:
                check(not got and not errs, "waiters did not wait", got, errs)
                done = []

                def others():
                    try:
                        done.extend(one(other, "SELECT 1") for _ in range(10))
                    except psycopg.Error:
                        pass  # closed below when the pool stayed busy
                th = threading.Thread(target=others)
                th.start()
                th.join(5)
                check(len(done) == 10, "the pool was busy for 5 s while %d clients waited for "
                      "a lock: waiters hold servers" % WAITERS)
            finally:
                check(one(holder, "SELECT pgwarden_unlock(%s)", (k,)) is True, "unlock")
            for th in threads:
                th.join(20)
            check(not errs, "waiter errors", errs)
            check(len(got) == WAITERS, "not every waiter was granted", got)
    finally:
        for c in conns:
            c.close()


RMW_CONNS = 6
RMW_ROUNDS = 15


def case_recipe_read_modify_write(mode):
    """The docs recipe: several connections increment one balance under
    pgwarden_lock(conn, 'acct:<id>'), each write fenced with its token.  No lost update."""
    table = unique("drv_acct")
    key = "acct:" + table
    with connect("direct") as d:
        d.execute("CREATE TABLE %s (id int PRIMARY KEY, balance int NOT NULL, "
                  "token bigint NOT NULL DEFAULT 0)" % table)
        d.execute("INSERT INTO %s VALUES (1, 0)" % table)
    errors_seen = []

    def worker(autocommit):
        try:
            with connect(mode, autocommit=autocommit) as conn:
                for _ in range(RMW_ROUNDS):
                    with pgwarden_lock(conn, key, "write", timeout_ms=30000) as token:
                        (balance,) = conn.execute(
                            "SELECT balance FROM %s WHERE id = 1" % table).fetchone()
                        time.sleep(0.001)  # a lost update would show here
                        cur = conn.execute(
                            "UPDATE %s SET balance = %%s, token = %%s "
                            "WHERE id = 1 AND token < %%s" % table,
                            (balance + 1, token, token))
                        if cur.rowcount != 1:
                            raise AssertionError("fenced write refused: token %d" % token)
        except Exception as e:
            errors_seen.append(e)

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(RMW_CONNS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(CASE_TIMEOUT_S)
    check(not errors_seen, "worker errors", errors_seen)
    check(not any(th.is_alive() for th in threads), "workers still running")
    with connect("direct") as d:
        balance = one(d, "SELECT balance FROM %s WHERE id = 1" % table)
        d.execute("DROP TABLE %s" % table)
    check(balance == RMW_CONNS * RMW_ROUNDS, "lost updates", balance, RMW_CONNS * RMW_ROUNDS)


def case_recipe_session_lock(mode):
    k = unique("sess")
    with connect(mode) as a, connect(mode) as b:
        with pgwarden_session_lock(a, k, "exclusive") as t:
            check_token(t)
            a.execute("SELECT 1")  # transactions come and go; the lock stays
            check(one(b, "SELECT pgwarden_try_lock(%s, 'read')", (k,)) is None, "held")
            try:
                with pgwarden_session_lock(b, k, "read", timeout_ms=50):
                    raise AssertionError("granted while held")
            except errors.LockNotAvailable:
                pass
        check_token(one(b, "SELECT pgwarden_try_lock(%s, 'read')", (k,)), t)


def case_prepared_eviction(mode):
    """psycopg's own cache of prepared statements: past prepared_max it evicts the oldest
    with DEALLOCATE through the extended protocol.  Through transaction pooling that
    DEALLOCATE used to reach PostgreSQL under psycopg's name (26000 on later, unrelated
    queries, and nothing deallocated)."""
    with connect(mode) as c:
        c.prepared_max = 4  # prepared at the 5th execution (prepare_threshold 5)
        for j in range(10):
            for rnd in range(6):
                check(one(c, "SELECT %%s::int + %d" % j, (rnd,)) == rnd + j, "query", j, rnd)


CASES = [
    case_tokens_and_types,
    case_prepared,
    case_binary,
    case_int_timeout_param,
    case_try_lock_taken,
    case_errors,
    case_failed_transaction,
    case_xact_lock_released_at_commit,
    case_deadlock,
    case_pipeline,
    case_waiters_hold_no_server,
    case_recipe_read_modify_write,
    case_recipe_session_lock,
    case_prepared_eviction,
    case_chaos_prepared,
    case_chaos_commit,
]


class CaseTimeout(Exception):
    pass


def on_alarm(signum, frame):
    raise CaseTimeout("case ran longer than %d s" % CASE_TIMEOUT_S)


def main():
    runner = Runner("drivers_psycopg")
    print("psycopg %s (libpq %s, %s implementation)" %
          (psycopg.__version__, psycopg.pq.version(), psycopg.pq.__impl__), flush=True)
    signal.signal(signal.SIGALRM, on_alarm)
    only = sys.argv[1:]
    for mode in modes():
        for case in CASES:
            name = case.__name__[len("case_"):]
            if only and name not in only:
                continue
            t0 = now()
            signal.alarm(CASE_TIMEOUT_S)
            try:
                case(mode)
                signal.alarm(0)
                runner.ok(mode, name, now() - t0)
            except BaseException as e:  # noqa: B902 - every failure is reported
                signal.alarm(0)
                if isinstance(e, KeyboardInterrupt):
                    raise
                runner.fail(mode, name, e)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(main())
