/*
 * DriverTest.java: pgwarden's lock functions through pgJDBC (Debian libpostgresql-jdbc-java),
 * both pool modes, all cases in one JVM.  Run by drivers_launch (tests/drivers/README.md).
 *
 * pgJDBC always uses the extended protocol (preferQueryMode=extended): unnamed statements
 * until a PreparedStatement has run prepareThreshold times (default 5), then a named
 * server-side statement (S_n) with binary results for int8/int4/bool.  With
 * autoCommit=false it sends BEGIN in the same message group as the first statement.
 * What a JDBC user checks: tokens are positive and only increase; ResultSetMetaData and
 * ParameterMetaData name the types as PostgreSQL would (int8, bool, int4, text);
 * try_lock gives SQL NULL when taken; errors are SQLExceptions with the right SQLState
 * (55P03, 22023, 25P01, 40P01, 25P02); a failed lock call fails the transaction until
 * rollback; transaction locks go at commit; the recipe (tests/drivers/recipes/
 * PgwardenLocks.java) serialises a read-modify-write from several connections with
 * fencing tokens and no lost update.
 */
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ParameterMetaData;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

public final class DriverTest {
    static final int CASE_TIMEOUT_S = 20;
    static String mode; // the pool mode of the running cases

    interface Case {
        void run() throws Exception;
    }

    // ---- helpers ---------------------------------------------------------------------------

    static String url(String m, String extra) {
        String port = System.getenv(m.equals("direct") ? "PGW_DIRECT_PORT"
                                                         : "PGW_PORT_" + m.toUpperCase());
        return "jdbc:postgresql://" + System.getenv("PGW_HOST") + ":" + port + "/"
            + System.getenv("PGW_DB") + "?sslmode=disable&connectTimeout=10"
            + (extra.isEmpty() ? "" : "&" + extra);
    }

    static Connection connect(String m, String extra) throws SQLException {
        return DriverManager.getConnection(url(m, extra), System.getenv("PGW_USER"),
                                           System.getenv("PGW_PASSWORD"));
    }

    static Connection connect(String extra) throws SQLException {
        return connect(mode, extra);
    }

    static String unique(String prefix) {
        return prefix + "_" + UUID.randomUUID().toString().replace("-", "").substring(0, 10);
    }

    static void check(boolean cond, String what, Object... values) {
        if (!cond) {
            StringBuilder b = new StringBuilder(what);
            for (Object v : values)
                b.append(' ').append(v);
            throw new AssertionError(b.toString());
        }
    }

    static long checkToken(long t, long after) {
        check(t > 0, "token not positive:", t);
        check(t > after, "token did not increase:", after, t);
        return t;
    }

    /** The first column of the first row of ps (which has its parameters set); null for NULL. */
    static Object one(PreparedStatement ps) throws SQLException {
        try (ResultSet rs = ps.executeQuery()) {
            check(rs.next(), "no row");
            return rs.getObject(1);
        }
    }

    /** Runs sql with the given parameters (a PreparedStatement per call). */
    static Object one(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++)
                ps.setObject(i + 1, params[i]);
            return one(ps);
        }
    }

    static long token(Connection c, String sql, Object... params) throws SQLException {
        Object v = one(c, sql, params);
        check(v instanceof Long, "token is not a Long:", v);
        return (Long) v;
    }

    interface Sql {
        void run() throws SQLException;
    }

    static SQLException expectError(String sqlstate, Sql sql) {
        try {
            sql.run();
        } catch (SQLException e) {
            check(sqlstate.equals(e.getSQLState()), "wrong SQLState:", e.getSQLState(),
                  "wanted", sqlstate, e.getMessage());
            return e;
        }
        throw new AssertionError("expected SQLState " + sqlstate + ", got no error");
    }

    static void exec(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement()) {
            s.execute(sql);
        }
    }

    // ---- cases ------------------------------------------------------------------------------

    static void caseTokensAndTypes() throws Exception {
        String k1 = unique("acct"), k2 = unique("acct"), k3 = unique("job");
        try (Connection a = connect("prepareThreshold=1")) {
            // a named server-side statement from the first execution; Describe before it
            try (PreparedStatement ps = a.prepareStatement("SELECT pgwarden_lock(?, ?, ?)")) {
                ParameterMetaData pm = ps.getParameterMetaData();
                check(pm.getParameterCount() == 3, "parameter count", pm.getParameterCount());
                check(pm.getParameterTypeName(1).equals("text"), "p1", pm.getParameterTypeName(1));
                check(pm.getParameterTypeName(2).equals("text"), "p2", pm.getParameterTypeName(2));
                check(pm.getParameterTypeName(3).equals("int4"), "p3", pm.getParameterTypeName(3));
                ResultSetMetaData md = ps.getMetaData();
                check(md.getColumnCount() == 1, "columns", md.getColumnCount());
                check(md.getColumnName(1).equals("pgwarden_lock"), "name", md.getColumnName(1));
                check(md.getColumnTypeName(1).equals("int8"), "type", md.getColumnTypeName(1));
                check(md.getColumnType(1) == Types.BIGINT, "sql type", md.getColumnType(1));
                ps.setString(1, k1);
                ps.setString(2, "write");
                ps.setInt(3, 1000);
                long t1;
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "no row");
                    t1 = checkToken(rs.getLong(1), 0);
                    check(rs.getMetaData().getColumnTypeName(1).equals("int8"), "rs type");
                    check(!rs.next(), "two rows");
                }
                ps.setString(1, k2);
                ps.setString(2, "read");
                ps.setInt(3, 0);
                long t2 = checkToken((Long) one(ps), t1);
                ps.setString(1, k1); // re-request: the same token
                check(((Long) one(ps)) == t1, "re-request token");
                long t3 = checkToken(token(a, "SELECT pgwarden_try_lock(?, 'exclusive')", k3), t2);
                try (PreparedStatement l = a.prepareStatement("SELECT * FROM pgwarden_locks()");
                     ResultSet rs = l.executeQuery()) {
                    ResultSetMetaData m = rs.getMetaData();
                    String cols = "";
                    for (int i = 1; i <= m.getColumnCount(); i++)
                        cols += m.getColumnName(i) + ":" + m.getColumnTypeName(i) + " ";
                    check(cols.equals("key:text mode:text scope:text token:int8 "), "locks()", cols);
                    List<String> rows = new ArrayList<>();
                    while (rs.next())
                        rows.add(rs.getString(1) + "/" + rs.getString(2) + "/" + rs.getString(3)
                                 + "/" + rs.getLong(4));
                    Collections.sort(rows);
                    List<String> want = new ArrayList<>(List.of(k1 + "/write/session/" + t1,
                        k2 + "/read/session/" + t2, k3 + "/exclusive/session/" + t3));
                    Collections.sort(want);
                    check(rows.equals(want), "locks() rows", rows, want);
                }
                try (PreparedStatement u = a.prepareStatement("SELECT pgwarden_unlock(?)")) {
                    u.setString(1, k1);
                    try (ResultSet rs = u.executeQuery()) {
                        rs.next();
                        check(rs.getMetaData().getColumnTypeName(1).equals("bool"), "unlock type",
                              rs.getMetaData().getColumnTypeName(1));
                        check(rs.getBoolean(1), "unlock of a held key");
                    }
                    check(Boolean.FALSE.equals(one(u)), "second unlock");
                }
                try (PreparedStatement u = a.prepareStatement("SELECT pgwarden_unlock_all()");
                     ResultSet rs = u.executeQuery()) {
                    rs.next();
                    check(rs.getMetaData().getColumnTypeName(1).equals("int4"), "unlock_all type");
                    check(rs.getMetaData().getColumnType(1) == Types.INTEGER, "unlock_all sql type");
                    check(rs.getInt(1) == 2, "unlock_all count", rs.getInt(1));
                }
            }
        }
    }

    /** A PreparedStatement run past prepareThreshold (5 by default): unnamed statements, then
     * a named one with binary results; tokens keep increasing across the switch. */
    static void casePrepareThreshold() throws Exception {
        try (Connection a = connect(""); Connection b = connect("prepareThreshold=3")) {
            long last = 0;
            try (PreparedStatement ps = a.prepareStatement("SELECT pgwarden_lock(?, ?)");
                 PreparedStatement un = a.prepareStatement("SELECT pgwarden_unlock(?)")) {
                for (int i = 0; i < 8; i++) {
                    String k = unique("thr");
                    ps.setString(1, k);
                    ps.setString(2, i % 2 == 0 ? "write" : "read");
                    last = checkToken((Long) one(ps), last);
                    un.setString(1, k);
                    check(Boolean.TRUE.equals(one(un)), "unlock", i);
                }
            }
            try (PreparedStatement ps = b.prepareStatement("SELECT pgwarden_try_lock(?, ?)")) {
                for (int i = 0; i < 6; i++) {
                    ps.setString(1, unique("thr"));
                    ps.setString(2, "exclusive");
                    last = checkToken((Long) one(ps), last);
                }
            }
            check(((Integer) one(b, "SELECT pgwarden_unlock_all()")) == 6, "unlock_all");
            // plain Statements (unnamed, no parameters) and the simple query protocol
            try (Statement s = a.createStatement();
                 ResultSet rs = s.executeQuery("SELECT pgwarden_lock('" + unique("st") + "', 'read')")) {
                rs.next();
                last = checkToken(rs.getLong(1), last);
            }
            try (Connection c = connect("preferQueryMode=simple");
                 Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("SELECT pgwarden_lock('" + unique("simple") + "', 'read')")) {
                rs.next();
                check(rs.getMetaData().getColumnTypeName(1).equals("int8"), "simple type");
                checkToken(rs.getLong(1), last);
            }
        }
    }

    static void caseTryLockTaken() throws Exception {
        String k = unique("taken");
        try (Connection a = connect(""); Connection b = connect("prepareThreshold=1")) {
            long t = token(a, "SELECT pgwarden_lock(?, 'write')", k);
            try (PreparedStatement ps = b.prepareStatement("SELECT pgwarden_try_lock(?, ?)")) {
                ps.setString(1, k);
                ps.setString(2, "write");
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    check(rs.getLong(1) == 0 && rs.wasNull(), "try_lock of a taken key not NULL");
                }
                ps.setString(2, "exclusive");
                check(one(ps) == null, "exclusive");
                ps.setString(2, "read");
                checkToken((Long) one(ps), t);
            }
        }
    }

    static void caseErrors() throws Exception {
        String k = unique("err");
        try (Connection a = connect(""); Connection b = connect("prepareThreshold=1")) {
            checkToken(token(a, "SELECT pgwarden_lock(?, 'write')", k), 0);
            long t0 = System.nanoTime();
            SQLException e = expectError("55P03",
                () -> one(b, "SELECT pgwarden_lock(?, 'write', 100)", k));
            double waited = (System.nanoTime() - t0) / 1e9;
            check(waited >= 0.09 && waited < 5, "55P03 after", waited);
            check(e.getMessage().contains(k), "message does not name the key", e.getMessage());
            expectError("22023", () -> one(b, "SELECT pgwarden_lock(?, ?)", k, "sideways"));
            expectError("22023", () -> one(b, "SELECT pgwarden_lock(?, 'read', ?)", k, -5));
            expectError("25P01", () -> one(b, "SELECT pgwarden_xact_lock(?, 'read')", k));
            check(Integer.valueOf(1).equals(one(b, "SELECT 1")), "unusable after errors");
            expectError("42883", () -> one(b, "SELECT pgwarden_lock(?, 'read'), 1", k));
        }
    }

    static void caseFailedTransaction() throws Exception {
        String k = unique("busy"), table = unique("drv_t");
        try (Connection d = connect("direct", ""); Connection a = connect("");
             Connection b = connect("")) {
            exec(d, "CREATE TABLE " + table + " (v int)");
            checkToken(token(b, "SELECT pgwarden_lock(?, 'exclusive')", k), 0);
            a.setAutoCommit(false);
            // 1. the first statement of the transaction (pgJDBC sends BEGIN with it)
            expectError("55P03", () -> one(a, "SELECT pgwarden_xact_lock(?, 'write', 100)", k));
            expectError("25P02", () -> one(a, "SELECT 1"));
            a.rollback();
            check(Integer.valueOf(1).equals(one(a, "SELECT 1")), "unusable after rollback");
            a.commit();
            // 2. after real work: nothing commits
            exec(a, "INSERT INTO " + table + " VALUES (1)");
            expectError("22023", () -> one(a, "SELECT pgwarden_xact_lock(?, 'sideways')", k));
            expectError("25P02", () -> exec(a, "INSERT INTO " + table + " VALUES (2)"));
            a.rollback();
            check(Long.valueOf(0).equals(one(d, "SELECT count(*) FROM " + table)),
                  "a failed transaction committed");
            // 3. commit() of a failed transaction: pgJDBC reports the rollback
            exec(a, "INSERT INTO " + table + " VALUES (3)");
            expectError("55P03", () -> one(a, "SELECT pgwarden_xact_lock(?, 'read', 50)", k));
            try {
                a.commit();
            } catch (SQLException e) {
                // pgJDBC 42.5 may throw on COMMIT answered ROLLBACK; either way nothing commits
            }
            check(Long.valueOf(0).equals(one(d, "SELECT count(*) FROM " + table)),
                  "a failed transaction committed");
            a.setAutoCommit(true);
            exec(d, "DROP TABLE " + table);
        }
    }

    static void caseXactLockReleasedAtCommit() throws Exception {
        String k = unique("xact");
        try (Connection a = connect("prepareThreshold=1"); Connection b = connect("")) {
            a.setAutoCommit(false);
            long t = token(a, "SELECT pgwarden_xact_lock(?, 'write')", k);
            try (PreparedStatement ps = a.prepareStatement("SELECT * FROM pgwarden_locks()");
                 ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "no lock listed");
                check(rs.getString(3).equals("transaction") && rs.getLong(4) == t, "scope/token",
                      rs.getString(3), rs.getLong(4));
            }
            check(one(b, "SELECT pgwarden_try_lock(?, 'write')", k) == null, "held in the block");
            a.commit();
            long t2 = checkToken(token(b, "SELECT pgwarden_try_lock(?, 'write')", k), t);
            check(Boolean.TRUE.equals(one(b, "SELECT pgwarden_unlock(?)", k)), "unlock");
            checkToken(token(a, "SELECT pgwarden_xact_lock(?, 'write')", k), t2);
            check(one(b, "SELECT pgwarden_try_lock(?, 'write')", k) == null, "held in the block");
            a.rollback();
            checkToken(token(b, "SELECT pgwarden_try_lock(?, 'write')", k), t2);
        }
    }

    static void caseDeadlock() throws Exception {
        String x = unique("x"), y = unique("y");
        ExecutorService ex = Executors.newSingleThreadExecutor(DriverTest::daemon);
        try (Connection a = connect("ApplicationName=alice&prepareThreshold=1");
             Connection b = connect("ApplicationName=bob")) {
            checkToken(token(a, "SELECT pgwarden_lock(?, 'exclusive')", x), 0);
            checkToken(token(b, "SELECT pgwarden_lock(?, 'exclusive')", y), 0);
            Future<Long> aWaits = ex.submit(() -> token(a, "SELECT pgwarden_lock(?, 'exclusive')", y));
            Thread.sleep(300);
            check(!aWaits.isDone(), "a did not wait");
            long t0 = System.nanoTime();
            SQLException e = expectError("40P01",
                () -> one(b, "SELECT pgwarden_lock(?, 'exclusive')", x));
            check((System.nanoTime() - t0) / 1e9 < 1.5, "deadlock found late");
            check(e.getMessage().contains("alice") || String.valueOf(
                      ((org.postgresql.util.PSQLException) e).getServerErrorMessage().getDetail())
                      .contains("alice"), "DETAIL does not name alice", e.getMessage());
            check(!aWaits.isDone(), "a was a victim too");
            check(Integer.valueOf(1).equals(one(b, "SELECT pgwarden_unlock_all()")), "unlock_all");
            checkToken(aWaits.get(10, TimeUnit.SECONDS), 0);
            // transaction locks: the victim's transaction fails, its rollback lets a go on
            a.setAutoCommit(false);
            b.setAutoCommit(false);
            checkToken(token(a, "SELECT pgwarden_xact_lock(?, 'write')", x + "t"), 0);
            checkToken(token(b, "SELECT pgwarden_xact_lock(?, 'write')", y + "t"), 0);
            aWaits = ex.submit(() -> token(a, "SELECT pgwarden_xact_lock(?, 'write')", y + "t"));
            Thread.sleep(300);
            check(!aWaits.isDone(), "a did not wait");
            expectError("40P01", () -> one(b, "SELECT pgwarden_xact_lock(?, 'write')", x + "t"));
            expectError("25P02", () -> one(b, "SELECT 1"));
            b.rollback();
            checkToken(aWaits.get(10, TimeUnit.SECONDS), 0);
            a.commit();
        } finally {
            ex.shutdownNow();
        }
    }

    static final int WAITERS = 8; // more than the transaction pool's 4 servers

    /** Transaction mode: clients waiting for a lock in a transaction that did nothing else
     * hold no server, so a pool of 4 serves others while 8 wait. */
    static void caseWaitersHoldNoServer() throws Exception {
        if (!mode.equals("transaction"))
            return;
        String k = unique("hot");
        ExecutorService ex = Executors.newFixedThreadPool(WAITERS + 1, DriverTest::daemon);
        List<Connection> conns = new ArrayList<>();
        try (Connection holder = connect(""); Connection other = connect("")) {
            for (int i = 0; i < WAITERS; i++) // connected before: pgJDBC's login SETs need a server
                conns.add(connect(""));
            checkToken(token(holder, "SELECT pgwarden_lock(?, 'exclusive')", k), 0);
            List<Future<Long>> waits = new ArrayList<>();
            for (Connection c : conns)
                waits.add(ex.submit(() -> PgwardenLocks.withLock(c, k, "write", 0,
                                                                 (conn, token) -> token)));
            Thread.sleep(500);
            try {
                for (Future<Long> f : waits)
                    check(!f.isDone(), "a waiter did not wait");
                Future<Integer> others = ex.submit(() -> {
                    for (int i = 0; i < 10; i++)
                        one(other, "SELECT 1");
                    return 10;
                });
                try {
                    others.get(5, TimeUnit.SECONDS);
                } catch (TimeoutException e) {
                    throw new AssertionError("the pool was busy for 5 s while " + WAITERS
                        + " clients waited for a lock: waiters hold servers");
                }
            } finally {
                check(Boolean.TRUE.equals(one(holder, "SELECT pgwarden_unlock(?)", k)), "unlock");
            }
            for (Future<Long> f : waits)
                checkToken(f.get(20, TimeUnit.SECONDS), 0);
        } finally {
            ex.shutdownNow();
            for (Connection c : conns)
                c.close();
        }
    }

    static final int RMW_CONNS = 6, RMW_ROUNDS = 15;

    static void caseRecipeReadModifyWrite() throws Exception {
        String table = unique("drv_acct"), key = "acct:" + table;
        try (Connection d = connect("direct", "")) {
            exec(d, "CREATE TABLE " + table + " (id int PRIMARY KEY, balance int NOT NULL, "
                    + "token bigint NOT NULL DEFAULT 0)");
            exec(d, "INSERT INTO " + table + " VALUES (1, 0)");
        }
        ExecutorService ex = Executors.newFixedThreadPool(RMW_CONNS, DriverTest::daemon);
        List<Future<Integer>> workers = new ArrayList<>();
        try {
            for (int w = 0; w < RMW_CONNS; w++) {
                String extra = w % 2 == 0 ? "" : "prepareThreshold=1";
                workers.add(ex.submit(() -> {
                    try (Connection conn = connect(extra)) {
                        for (int i = 0; i < RMW_ROUNDS; i++) {
                            PgwardenLocks.withLock(conn, key, "write", 30000, (c, token) -> {
                                int balance = ((Number) one(c, "SELECT balance FROM " + table
                                                                   + " WHERE id = 1")).intValue();
                                try (PreparedStatement up = c.prepareStatement(
                                         "UPDATE " + table + " SET balance = ?, token = ? "
                                         + "WHERE id = 1 AND token < ?")) {
                                    up.setInt(1, balance + 1);
                                    up.setLong(2, token);
                                    up.setLong(3, token);
                                    check(up.executeUpdate() == 1, "fenced write refused", token);
                                }
                                return null;
                            });
                        }
                    }
                    return RMW_ROUNDS;
                }));
            }
            for (Future<Integer> f : workers)
                f.get(CASE_TIMEOUT_S, TimeUnit.SECONDS);
        } finally {
            ex.shutdownNow();
        }
        try (Connection d = connect("direct", "")) {
            Object balance = one(d, "SELECT balance FROM " + table + " WHERE id = 1");
            exec(d, "DROP TABLE " + table);
            check(Integer.valueOf(RMW_CONNS * RMW_ROUNDS).equals(balance), "lost updates", balance);
        }
    }

    // ---- runner ------------------------------------------------------------------------------

    static Thread daemon(Runnable r) {
        Thread t = new Thread(r);
        t.setDaemon(true);
        return t;
    }

    public static void main(String[] args) throws Exception {
        String[][] names = {
            {"tokens_and_types"}, {"prepare_threshold"}, {"try_lock_taken"}, {"errors"},
            {"failed_transaction"}, {"xact_lock_released_at_commit"}, {"deadlock"},
            {"waiters_hold_no_server"}, {"recipe_read_modify_write"},
        };
        Case[] cases = {
            DriverTest::caseTokensAndTypes, DriverTest::casePrepareThreshold,
            DriverTest::caseTryLockTaken, DriverTest::caseErrors,
            DriverTest::caseFailedTransaction, DriverTest::caseXactLockReleasedAtCommit,
            DriverTest::caseDeadlock, DriverTest::caseWaitersHoldNoServer,
            DriverTest::caseRecipeReadModifyWrite,
        };
        System.out.println("pgJDBC " + org.postgresql.util.DriverInfo.DRIVER_VERSION + ", Java "
                           + System.getProperty("java.version"));
        List<String> only = List.of(args);
        String modes = System.getenv().getOrDefault("PGW_MODES", "session transaction");
        int passed = 0;
        List<String> failed = new ArrayList<>();
        for (String m : modes.split(" ")) {
            mode = m;
            for (int i = 0; i < cases.length; i++) {
                String name = names[i][0];
                if (!only.isEmpty() && !only.contains(name))
                    continue;
                ExecutorService ex = Executors.newSingleThreadExecutor(DriverTest::daemon);
                long t0 = System.nanoTime();
                Case c = cases[i];
                Future<?> f = ex.submit(() -> {
                    c.run();
                    return null;
                });
                try {
                    f.get(CASE_TIMEOUT_S, TimeUnit.SECONDS);
                    passed++;
                    System.out.printf("ok   %-11s %s (%.2f s)%n", m, name,
                                      (System.nanoTime() - t0) / 1e9);
                } catch (Exception e) {
                    Throwable cause = e instanceof java.util.concurrent.ExecutionException
                        ? e.getCause() : e;
                    failed.add(m + " " + name);
                    System.out.printf("FAIL %-11s %s: %s%n", m, name, cause);
                    cause.printStackTrace(System.out);
                    f.cancel(true);
                } finally {
                    ex.shutdownNow();
                }
                System.out.flush();
            }
        }
        for (String f : failed)
            System.out.println("failed: " + f);
        System.out.printf("drivers_jdbc: %d passed, %d failed%n", passed, failed.size());
        System.out.flush();
        System.exit(failed.isEmpty() && passed > 0 ? 0 : 1);
    }
}
