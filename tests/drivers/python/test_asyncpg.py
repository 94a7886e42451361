"""pgwarden's lock functions through asyncpg (Debian python3-asyncpg), both pool modes, and
the SQLAlchemy (asyncio) recipe on top of it (Debian python3-sqlalchemy).

Run by drivers_launch (tests/drivers/README.md).  asyncpg is the strict extended-protocol
client: every query with arguments is a named statement (Parse, Describe statement, Sync;
then Bind with binary parameters encoded by the types pgwarden's ParameterDescription
gave, Execute, Sync), and results come back in binary.  What a user of asyncpg checks:
tokens are positive integers that only increase; PreparedStatement.get_attributes() and
get_parameters() match PostgreSQL's types; try_lock gives None when taken; the errors are
asyncpg's exception classes with the right SQLSTATE; a failed lock call fails the
transaction; transaction locks go at COMMIT; waiting holds no server in transaction mode;
the recipes (tests/drivers/recipes/pgwarden_asyncpg.py, pgwarden_sqlalchemy.py) serialise
read-modify-write from several connections with fencing tokens and no lost update.
"""

import asyncio
import sys
import time

import asyncpg
from asyncpg import exceptions as E

from drivers_common import (BOOL, CASE_TIMEOUT_S, INT4, INT8, TEXT, Runner, check,
                            check_token, conninfo, modes, now, unique, url)
from pgwarden_asyncpg import pgwarden_lock

try:  # the SQLAlchemy recipe; its case fails (it is not skipped) when SQLAlchemy is missing
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.orm import sessionmaker
    from sqlalchemy import text
    import pgwarden_sqlalchemy
    SQLALCHEMY_ERROR = None
except ImportError as e:
    SQLALCHEMY_ERROR = e


async def connect(mode, **kw):
    return await asyncpg.connect(**conninfo(mode), ssl=False, timeout=10, **kw)


async def expect_error(exc_class, sqlstate, coro):
    try:
        await coro
    except exc_class as e:
        check(e.sqlstate == sqlstate, "wrong SQLSTATE", e.sqlstate, sqlstate, str(e))
        return e
    except asyncpg.PostgresError as e:
        raise AssertionError("expected %s (%s), got %s %s: %s" %
                             (exc_class.__name__, sqlstate, type(e).__name__, e.sqlstate, e))
    raise AssertionError("expected %s (%s), got no error" % (exc_class.__name__, sqlstate))


def types_of(seq):
    return [(t.oid, t.name) for t in seq]


async def answered(coro, what, seconds=5):
    """coro's result; an AssertionError naming what when no answer comes within seconds."""
    try:
        return await asyncio.wait_for(coro, seconds)
    except asyncio.TimeoutError:
        raise AssertionError("no answer within %d s to %s" % (seconds, what)) from None


async def waits(task, seconds=0.3):
    """True when task is still running after seconds (it waits for a lock)."""
    await asyncio.sleep(seconds)
    return not task.done()


# ---- cases ---------------------------------------------------------------------------------

async def case_tokens_and_types(mode):
    k1, k2, k3 = unique("acct"), unique("acct"), unique("job")
    a = await connect(mode)
    try:
        # Describe of a named statement: parameter and result types as PostgreSQL's
        st = await a.prepare("SELECT pgwarden_lock($1, $2, $3)")
        params = types_of(st.get_parameters())
        check(params == [(TEXT, "text"), (TEXT, "text"), (INT4, "int4")], "parameters", params)
        attrs = st.get_attributes()
        check([a_.name for a_ in attrs] == ["pgwarden_lock"], "column", attrs)
        check(types_of(a_.type for a_ in attrs) == [(INT8, "int8")], "column type", attrs)
        t1 = check_token(await st.fetchval(k1, "write", 1000))
        # the same statement again (Bind/Execute only), another key
        t2 = check_token(await st.fetchval(k2, "read", 0), t1)
        check(await st.fetchval(k1, "read", 0) == t1, "re-request: same token")
        # fetchval: asyncpg's statement cache (named statements), binary results
        t3 = check_token(await a.fetchval("SELECT pgwarden_try_lock($1, 'exclusive')", k3), t2)
        st = await a.prepare("SELECT pgwarden_try_lock($1, $2)")
        check(types_of(a_.type for a_ in st.get_attributes()) == [(INT8, "int8")], "try type")
        st = await a.prepare("SELECT * FROM pgwarden_locks()")
        attrs = st.get_attributes()
        check([(a_.name, a_.type.name) for a_ in attrs] ==
              [("key", "text"), ("mode", "text"), ("scope", "text"), ("token", "int8")],
              "pgwarden_locks columns", attrs)
        rows = sorted(tuple(r) for r in await st.fetch())
        want = sorted([(k1, "write", "session", t1), (k2, "read", "session", t2),
                       (k3, "exclusive", "session", t3)])
        check(rows == want, "pgwarden_locks rows", rows, want)
        # a cursor fetches in parts (Execute with a row limit, PortalSuspended): each row once
        async with a.transaction():
            cur = await st.cursor()
            part = await cur.fetch(2)
            rest = await cur.fetch(5)
        got = sorted(tuple(r) for r in part + rest)
        check(len(part) == 2 and got == want, "pgwarden_locks through a cursor", part, rest)
        st = await a.prepare("SELECT pgwarden_unlock($1)")
        check(types_of(a_.type for a_ in st.get_attributes()) == [(BOOL, "bool")], "unlock type")
        check(await st.fetchval(k1) is True, "unlock of a held key")
        check(await st.fetchval(k1) is False, "second unlock")
        st = await a.prepare("SELECT pgwarden_unlock_all()")
        check(types_of(a_.type for a_ in st.get_attributes()) == [(INT4, "int4")], "unlock_all")
        check(await st.fetchval() == 2, "unlock_all count")
        # the simple query protocol: conn.execute() without arguments
        check(await a.execute("SELECT pgwarden_lock('%s', 'read')" % k1) == "SELECT 1", "simple")
        check(await a.fetchval("SELECT pgwarden_unlock_all()") == 1, "simple lock held")
        t4 = check_token(await a.fetchval("SELECT pgwarden_lock($1, 'write')", k1), t3)
        check(await a.fetchval("SELECT pgwarden_unlock($1)", k1) is True, "unlock", t4)
    finally:
        a.terminate()


async def case_no_statement_cache(mode):
    """statement_cache_size=0 (what PgBouncer users set): unnamed statements."""
    k = unique("nocache")
    a = await connect(mode, statement_cache_size=0)
    b = await connect(mode, statement_cache_size=0)
    try:
        last = 0
        for i in range(3):
            last = check_token(await answered(
                a.fetchval("SELECT pgwarden_lock($1, $2)", k + str(i), "write"),
                "pgwarden_lock as an unnamed statement (Parse, Describe, Flush)"), last)
        check(await b.fetchval("SELECT pgwarden_try_lock($1, $2)", k + "0", "read") is not None,
              "read with write")
        check(await b.fetchval("SELECT pgwarden_try_lock($1, $2)", k + "0", "write") is None,
              "write with write")
        rows = await a.fetch("SELECT * FROM pgwarden_locks()")
        check(len(rows) == 3 and all(r["token"] > 0 for r in rows), "locks", rows)
        check(await a.fetchval("SELECT pgwarden_unlock_all()") == 3, "unlock_all")
    finally:
        a.terminate()
        b.terminate()


async def case_try_lock_taken(mode):
    k = unique("taken")
    a, b = await connect(mode), await connect(mode)
    try:
        t = check_token(await a.fetchval("SELECT pgwarden_lock($1, 'write')", k))
        check(await b.fetchval("SELECT pgwarden_try_lock($1, 'write')", k) is None, "write")
        check(await b.fetchval("SELECT pgwarden_try_lock($1, 'exclusive')", k) is None, "excl")
        check_token(await b.fetchval("SELECT pgwarden_try_lock($1, 'read')", k), t)
        async with b.transaction():
            check(await b.fetchval("SELECT pgwarden_try_xact_lock($1, 'write')", k) is None,
                  "try_xact_lock")
    finally:
        a.terminate()
        b.terminate()


async def case_errors(mode):
    k = unique("err")
    a, b = await connect(mode), await connect(mode)
    try:
        check_token(await a.fetchval("SELECT pgwarden_lock($1, 'write')", k))
        t0 = now()
        e = await expect_error(E.LockNotAvailableError, "55P03",
                               b.fetchval("SELECT pgwarden_lock($1, 'write', $2)", k, 100))
        check(0.09 <= now() - t0 < 5, "55P03 after", now() - t0)
        check(k in str(e), "the message does not name the key", str(e))
        await expect_error(E.InvalidParameterValueError, "22023",
                           b.fetchval("SELECT pgwarden_lock($1, $2)", k, "sideways"))
        await expect_error(E.InvalidParameterValueError, "22023",
                           b.fetchval("SELECT pgwarden_lock($1, 'read', $2)", k, -1))
        await expect_error(E.NoActiveSQLTransactionError, "25P01",
                           b.fetchval("SELECT pgwarden_xact_lock($1, 'read')", k))
        # the simple protocol too
        await expect_error(E.InvalidParameterValueError, "22023",
                           b.execute("SELECT pgwarden_lock('x', 'sideways')"))
        # a timeout_ms that does not fit int4: asyncpg's own error, before sending
        check(not b.is_in_transaction(), "in a transaction after errors")
        check(await b.fetchval("SELECT 1") == 1, "unusable after errors")
    finally:
        a.terminate()
        b.terminate()


async def case_failed_transaction(mode):
    k, table = unique("busy"), unique("drv_t")
    d, a, b = await connect("direct"), await connect(mode), await connect(mode)
    try:
        await d.execute("CREATE TABLE %s (v int)" % table)
        check_token(await b.fetchval("SELECT pgwarden_lock($1, 'exclusive')", k))
        # 1. first statement of the block
        await a.execute("BEGIN")
        await expect_error(E.LockNotAvailableError, "55P03",
                           a.fetchval("SELECT pgwarden_xact_lock($1, 'write', 100)", k))
        await expect_error(E.InFailedSQLTransactionError, "25P02", a.fetchval("SELECT 1"))
        await a.execute("ROLLBACK")
        check(not a.is_in_transaction(), "still in a transaction after ROLLBACK")
        # 2. after real work, by asyncpg's transaction(): rolled back, nothing commits
        try:
            async with a.transaction():
                await a.execute("INSERT INTO %s VALUES (1)" % table)
                await a.fetchval("SELECT pgwarden_xact_lock($1, 'sideways')", k)
            raise AssertionError("no error in the transaction block")
        except E.InvalidParameterValueError as e:
            check(e.sqlstate == "22023", "sqlstate", e.sqlstate)
        check(not a.is_in_transaction(), "in a transaction after the block")
        check(await d.fetchval("SELECT count(*) FROM %s" % table) == 0, "failed block committed")
        # 3. the extended protocol after work, explicit statements
        await a.execute("BEGIN")
        await a.execute("INSERT INTO %s VALUES (2)" % table)
        await expect_error(E.LockNotAvailableError, "55P03",
                           a.fetchval("SELECT pgwarden_xact_lock($1, 'read', 50)", k))
        await expect_error(E.InFailedSQLTransactionError, "25P02",
                           a.execute("INSERT INTO %s VALUES (3)" % table))
        check(await a.execute("COMMIT") == "ROLLBACK", "COMMIT of a failed block")
        check(await d.fetchval("SELECT count(*) FROM %s" % table) == 0, "failed block committed")
        check(await a.fetchval("SELECT 5") == 5, "unusable")
        await d.execute("DROP TABLE %s" % table)
    finally:
        for c in (a, b, d):
            c.terminate()


async def case_xact_lock_released_at_commit(mode):
    k = unique("xact")
    a, b = await connect(mode), await connect(mode)
    try:
        tr = a.transaction()
        await tr.start()
        t = check_token(await a.fetchval("SELECT pgwarden_xact_lock($1, 'write')", k))
        rows = [tuple(r) for r in await a.fetch("SELECT * FROM pgwarden_locks()")]
        check(rows == [(k, "write", "transaction", t)], "locks in the block", rows)
        check(await b.fetchval("SELECT pgwarden_try_lock($1, 'write')", k) is None, "held")
        await tr.commit()
        t2 = check_token(await b.fetchval("SELECT pgwarden_try_lock($1, 'write')", k), t)
        check(await b.fetchval("SELECT pgwarden_unlock($1)", k) is True, "unlock")
        tr = a.transaction()
        await tr.start()
        check_token(await a.fetchval("SELECT pgwarden_xact_lock($1, 'write')", k), t2)
        await tr.rollback()
        check_token(await b.fetchval("SELECT pgwarden_try_lock($1, 'write')", k), t2)
    finally:
        a.terminate()
        b.terminate()


async def case_deadlock(mode):
    x, y = unique("x"), unique("y")
    a = await connect(mode, server_settings={"application_name": "alice"})
    b = await connect(mode, server_settings={"application_name": "bob"})
    try:
        check_token(await a.fetchval("SELECT pgwarden_lock($1, 'exclusive')", x))
        check_token(await b.fetchval("SELECT pgwarden_lock($1, 'exclusive')", y))
        wait_a = asyncio.ensure_future(a.fetchval("SELECT pgwarden_lock($1, 'exclusive')", y))
        check(await waits(wait_a), "a did not wait")
        t0 = now()
        e = await expect_error(E.DeadlockDetectedError, "40P01",
                               b.fetchval("SELECT pgwarden_lock($1, 'exclusive')", x))
        check(now() - t0 < 1.5, "found late", now() - t0)
        check("alice" in (e.detail or ""), "DETAIL", e.detail)
        check(not wait_a.done(), "a was a victim too")
        check(await b.fetchval("SELECT pgwarden_unlock_all()") == 1, "victim's unlock_all")
        check_token(await asyncio.wait_for(wait_a, 10))
        # transaction locks: the victim's block fails, ROLLBACK lets the other go on
        await a.execute("BEGIN")
        await b.execute("BEGIN")
        check_token(await a.fetchval("SELECT pgwarden_xact_lock($1, 'write')", x + "t"))
        check_token(await b.fetchval("SELECT pgwarden_xact_lock($1, 'write')", y + "t"))
        wait_a = asyncio.ensure_future(
            a.fetchval("SELECT pgwarden_xact_lock($1, 'write')", y + "t"))
        check(await waits(wait_a), "a did not wait")
        await expect_error(E.DeadlockDetectedError, "40P01",
                           b.fetchval("SELECT pgwarden_xact_lock($1, 'write')", x + "t"))
        await expect_error(E.InFailedSQLTransactionError, "25P02", b.fetchval("SELECT 1"))
        await b.execute("ROLLBACK")
        check_token(await asyncio.wait_for(wait_a, 10))
        check(await a.execute("COMMIT") == "COMMIT", "a commits")
    finally:
        a.terminate()
        b.terminate()


WAITERS = 8  # more than the transaction pool's 4 servers


async def case_waiters_hold_no_server(mode):
    """Transaction mode: clients whose transaction sent only BEGIN and the lock call wait
    with no server, so a pool of 4 serves others while 8 wait.  (Session mode: each client
    has its own server, nothing to check.)"""
    if mode != "transaction":
        return
    k = unique("hot")
    holder = await connect(mode)
    other = await connect(mode)
    conns = [await connect(mode) for _ in range(WAITERS)]
    tasks = []
    try:
        check_token(await holder.fetchval("SELECT pgwarden_lock($1, 'exclusive')", k))
        got = []

        async def waiter(c):
            async with pgwarden_lock(c, k, "write") as token:
                got.append(token)
        tasks += [asyncio.ensure_future(waiter(c)) for c in conns]
        gathered = asyncio.gather(*tasks, return_exceptions=True)
        check(await waits(gathered, 0.5), "waiters did not wait")

        async def others():
            for _ in range(10):
                await other.fetchval("SELECT 1")
        busy = None
        try:
            await answered(others(), "10 queries of another client while %d clients waited "
                           "for a lock: the pool was busy, waiters hold servers" % WAITERS)
        except AssertionError as e:
            busy = e
        try:
            unlocked = await answered(holder.fetchval("SELECT pgwarden_unlock($1)", k),
                                      "pgwarden_unlock")
        except AssertionError:
            if busy:
                raise busy from None
            raise
        if busy:
            raise busy
        check(unlocked is True, "unlock")
        results = await asyncio.wait_for(gathered, 10)
        check(not [r for r in results if r is not None], "waiter errors", results)
        check(len(got) == WAITERS and got == sorted(got), "tokens in grant order", got)
    finally:
        for t in tasks:
            t.cancel()
        for c in [holder, other] + conns:
            c.terminate()


RMW_CONNS = 6
RMW_ROUNDS = 15


async def make_account(table):
    d = await connect("direct")
    await d.execute("CREATE TABLE %s (id int PRIMARY KEY, balance int NOT NULL, "
                    "token bigint NOT NULL DEFAULT 0)" % table)
    await d.execute("INSERT INTO %s VALUES (1, 0)" % table)
    d.terminate()


async def final_balance(table):
    d = await connect("direct")
    balance = await d.fetchval("SELECT balance FROM %s WHERE id = 1" % table)
    await d.execute("DROP TABLE %s" % table)
    d.terminate()
    return balance


async def case_recipe_read_modify_write(mode):
    """The docs recipe with an asyncpg pool: concurrent increments under one key, each
    write fenced by its token; no lost update."""
    table = unique("drv_acct")
    key = "acct:" + table
    await make_account(table)
    pool = await asyncpg.create_pool(**conninfo(mode), ssl=False, min_size=RMW_CONNS,
                                     max_size=RMW_CONNS)
    try:
        async def worker():
            for _ in range(RMW_ROUNDS):
                async with pool.acquire() as conn:
                    async with pgwarden_lock(conn, key, "write", timeout_ms=30000) as token:
                        balance = await conn.fetchval(
                            "SELECT balance FROM %s WHERE id = 1" % table)
                        await asyncio.sleep(0.001)  # a lost update would show here
                        status = await conn.execute(
                            "UPDATE %s SET balance = $1, token = $2 "
                            "WHERE id = 1 AND token < $2" % table, balance + 1, token)
                        check(status == "UPDATE 1", "fenced write refused", token)
        await asyncio.gather(*[worker() for _ in range(RMW_CONNS)])
    finally:
        pool.terminate()
    balance = await final_balance(table)
    check(balance == RMW_CONNS * RMW_ROUNDS, "lost updates", balance)


async def case_recipe_sqlalchemy(mode):
    """The SQLAlchemy (asyncio, asyncpg dialect) recipe: the same read-modify-write."""
    if SQLALCHEMY_ERROR:
        raise AssertionError("SQLAlchemy missing (Debian python3-sqlalchemy): %s"
                             % SQLALCHEMY_ERROR)
    table = unique("drv_acct")
    key = "acct:" + table
    await make_account(table)
    engine = create_async_engine(url(mode).replace("postgresql://", "postgresql+asyncpg://")
                                 .replace("?sslmode=disable", "?ssl=disable"),
                                 pool_size=4, max_overflow=0)
    Session = sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
    tokens = []
    try:
        async def worker():
            for _ in range(10):
                async with Session() as session:
                    async with pgwarden_sqlalchemy.pgwarden_lock(session, key) as token:
                        tokens.append(token)
                        balance = (await session.execute(
                            text("SELECT balance FROM %s WHERE id = 1" % table))).scalar_one()
                        await asyncio.sleep(0.001)
                        result = await session.execute(
                            text("UPDATE %s SET balance = :b, token = :t "
                                 "WHERE id = 1 AND token < :t" % table),
                            {"b": balance + 1, "t": token})
                        check(result.rowcount == 1, "fenced write refused", token)
        await asyncio.gather(*[worker() for _ in range(4)])
        async with Session() as session:  # a failed lock call: the block raises, rolls back
            async with pgwarden_sqlalchemy.pgwarden_lock(session, key + "x", "read") as t:
                check_token(t)
                try:
                    async with Session() as s2:
                        async with pgwarden_sqlalchemy.pgwarden_lock(s2, key + "x",
                                                                     "exclusive", 50):
                            raise AssertionError("granted while held")
                except Exception as e:  # SQLAlchemy wraps asyncpg's error
                    check(getattr(e.orig, "sqlstate", None) == "55P03", "not 55P03", e)
    finally:
        await engine.dispose()
    check(all(t > 0 for t in tokens) and len(set(tokens)) == len(tokens), "tokens", tokens)
    balance = await final_balance(table)
    check(balance == 40, "lost updates", balance)


CASES = [
    case_tokens_and_types,
    case_no_statement_cache,
    case_try_lock_taken,
    case_errors,
    case_failed_transaction,
    case_xact_lock_released_at_commit,
    case_deadlock,
    case_waiters_hold_no_server,
    case_recipe_read_modify_write,
    case_recipe_sqlalchemy,
]


async def main():
    runner = Runner("drivers_asyncpg")
    print("asyncpg %s%s" % (asyncpg.__version__, "" if SQLALCHEMY_ERROR else
                            ", SQLAlchemy " + __import__("sqlalchemy").__version__), flush=True)
    only = sys.argv[1:]
    for mode in modes():
        for case in CASES:
            name = case.__name__[len("case_"):]
            if only and name not in only:
                continue
            t0 = time.monotonic()
            task = asyncio.ensure_future(case(mode))
            done, _ = await asyncio.wait({task}, timeout=CASE_TIMEOUT_S)
            try:
                if not done:
                    task.cancel()  # not awaited: a stuck case must not stop the others
                    raise AssertionError("case ran longer than %d s" % CASE_TIMEOUT_S)
                task.result()
                runner.ok(mode, name, time.monotonic() - t0)
            except Exception as e:  # every failure is reported
                runner.fail(mode, name, e)
    return runner.finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
