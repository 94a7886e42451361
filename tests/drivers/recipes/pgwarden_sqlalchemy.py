from contextlib import asynccontextmanager

from sqlalchemy import text


@asynccontextmanager
async def pgwarden_lock(session, key, mode="write", timeout_ms=None):
    """Runs the block in a transaction of session (an AsyncSession on
    postgresql+asyncpg://... pointing at pgwarden) holding pgwarden's lock on key;
    yields the fencing token.  session.begin() commits at the end of the block and
    rolls back when it raises: either releases the lock."""
    async with session.begin():
        if timeout_ms is None:  # never pass None: a NULL argument locks nothing
            result = await session.execute(
                text("SELECT pgwarden_xact_lock(:key, :mode)"),
                {"key": key, "mode": mode})
        else:
            result = await session.execute(
                text("SELECT pgwarden_xact_lock(:key, :mode, :timeout_ms)"),
                {"key": key, "mode": mode, "timeout_ms": timeout_ms})
        yield result.scalar_one()
