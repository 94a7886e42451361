'use strict';

/**
 * Runs fn(client, token) in a transaction holding pgwarden's lock on key, on a
 * client of pool (a pg.Pool pointing at pgwarden); returns what fn returns.
 * mode: 'read', 'write' or 'exclusive'; timeoutMs: 0 waits without a limit.
 * token is the fencing token as a BigInt (int8 does not fit a JS number).
 * COMMIT when fn resolves, ROLLBACK when it throws: either releases the lock.
 * A lock not granted rejects with err.code '55P03' (timeout) or '40P01' (deadlock).
 */
async function withLock(pool, key, mode, timeoutMs, fn) {
  const client = await pool.connect();
  let broken;
  try {
    await client.query('BEGIN');
    try {
      const { rows } = await client.query({
        name: 'pgwarden_xact_lock',
        text: 'SELECT pgwarden_xact_lock($1, $2, $3) AS token',
        values: [key, mode, timeoutMs],
      });
      const result = await fn(client, BigInt(rows[0].token));
      await client.query('COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch((e) => { broken = e; });
      throw err;
    }
  } finally {
    client.release(broken); // a client whose ROLLBACK failed is discarded
  }
}

module.exports = { withLock };
