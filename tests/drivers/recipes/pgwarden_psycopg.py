from contextlib import contextmanager


@contextmanager
def pgwarden_lock(conn, key, mode="write", timeout_ms=None):
    """Runs the block in a transaction holding pgwarden's lock on key; yields the
    fencing token.  The lock goes with the transaction: at the COMMIT that ends
    the block, or at the ROLLBACK when the block raises.  conn: psycopg.Connection."""
    with conn.transaction():
        if timeout_ms is None:  # never pass None: a NULL argument locks nothing
            cur = conn.execute("SELECT pgwarden_xact_lock(%s, %s)", (key, mode))
        else:
            cur = conn.execute("SELECT pgwarden_xact_lock(%s, %s, %s::int)",
                               (key, mode, timeout_ms))
        yield cur.fetchone()[0]


@contextmanager
def pgwarden_session_lock(conn, key, mode="write", timeout_ms=None):
    """Holds a session lock on key across transactions; yields the fencing token.
    Released by the block's end, or by closing the connection.  Use an autocommit
    connection, so that a failed transaction cannot block the unlock."""
    if timeout_ms is None:
        cur = conn.execute("SELECT pgwarden_lock(%s, %s)", (key, mode))
    else:
        cur = conn.execute("SELECT pgwarden_lock(%s, %s, %s::int)", (key, mode, timeout_ms))
    try:
        yield cur.fetchone()[0]
    finally:
        conn.execute("SELECT pgwarden_unlock(%s)", (key,))
