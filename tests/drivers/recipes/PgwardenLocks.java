import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;

/** pgwarden's named locks from JDBC: a transaction that holds a lock. */
public final class PgwardenLocks {
    private PgwardenLocks() {
    }

    /** The work done under the lock; token is the lock's fencing token. */
    @FunctionalInterface
    public interface Work<T> {
        T run(Connection conn, long token) throws SQLException;
    }

    /**
     * Runs work in a transaction on conn that holds pgwarden's lock on key (mode "read",
     * "write" or "exclusive"; timeoutMs 0 waits without a limit).  Commits when work
     * returns, rolls back when it throws: either releases the lock.  A lock that is not
     * granted throws SQLException with SQLState 55P03 (timeout) or 40P01 (deadlock).
     */
    public static <T> T withLock(Connection conn, String key, String mode, int timeoutMs,
                                 Work<T> work) throws SQLException {
        boolean autoCommit = conn.getAutoCommit();
        conn.setAutoCommit(false);
        try {
            long token;
            try (PreparedStatement ps =
                     conn.prepareStatement("SELECT pgwarden_xact_lock(?, ?, ?)")) {
                ps.setString(1, key);
                ps.setString(2, mode);
                ps.setInt(3, timeoutMs);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    token = rs.getLong(1);
                }
            }
            T result = work.run(conn, token);
            conn.commit();
            return result;
        } catch (SQLException | RuntimeException e) {
            conn.rollback();
            throw e;
        } finally {
            conn.setAutoCommit(autoCommit);
        }
    }
}
