from contextlib import asynccontextmanager


@asynccontextmanager
async def pgwarden_lock(conn, key, mode="write", timeout_ms=None):
    """Runs the block in a transaction holding pgwarden's lock on key; yields the
    fencing token.  The lock goes with the transaction: at the COMMIT that ends
    the block, or at the ROLLBACK when the block raises.  conn: asyncpg.Connection
    (or a connection acquired from an asyncpg pool)."""
    async with conn.transaction():
        if timeout_ms is None:  # never pass None: a NULL argument locks nothing
            token = await conn.fetchval("SELECT pgwarden_xact_lock($1, $2)", key, mode)
        else:
            token = await conn.fetchval("SELECT pgwarden_xact_lock($1, $2, $3)",
                                        key, mode, timeout_ms)
        yield token
