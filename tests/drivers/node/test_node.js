'use strict';
/*
 * test_node.js: pgwarden's lock functions through node-postgres (pg from the npm registry,
 * installed into the build tree by run.sh), both pool modes.  Run by drivers_launch
 * (tests/drivers/README.md).
 *
 * node-postgres sends a query without values by the simple protocol; with values by the
 * extended protocol (Parse of the unnamed statement, Bind, Describe portal, Execute, Sync);
 * with a name, Parse of a named statement once per connection and Bind/Describe/Execute
 * after; binary: true asks for binary results.  int8 arrives as a string.  What a user
 * checks: tokens are positive and only increase; result.fields names and types the column
 * as PostgreSQL would (int8 20, bool 16, int4 23, text 25); try_lock gives null when taken;
 * errors reject with err.code the SQLSTATE (55P03, 22023, 25P01, 40P01, 25P02); a failed
 * lock call fails the transaction until ROLLBACK; transaction locks go at COMMIT; waiting
 * holds no server in transaction mode; the recipe (tests/drivers/recipes/pgwarden_pg.js)
 * serialises a read-modify-write from several connections with fencing tokens.
 */
const path = require('path');
const crypto = require('crypto');
const pg = require('pg');
const { withLock } = require(path.join(__dirname, '..', 'recipes', 'pgwarden_pg.js'));

const CASE_TIMEOUT_MS = 20000;
const INT8 = 20, BOOL = 16, INT4 = 23, TEXT = 25;

function config(mode, extra) {
  const port = process.env[mode === 'direct' ? 'PGW_DIRECT_PORT' : 'PGW_PORT_' + mode.toUpperCase()];
  return Object.assign({
    host: process.env.PGW_HOST, port: Number(port), user: process.env.PGW_USER,
    password: process.env.PGW_PASSWORD, database: process.env.PGW_DB, ssl: false,
    connectionTimeoutMillis: 10000,
  }, extra || {});
}

let mode; // the pool mode of the running cases
const opened = []; // clients of the running case, ended after it

async function connect(m, extra) {
  const c = new pg.Client(config(m || mode, extra));
  c.on('error', () => {}); // a failed case may leave one behind
  opened.push(c);
  await c.connect();
  return c;
}

function unique(prefix) {
  return prefix + '_' + crypto.randomBytes(5).toString('hex');
}

function check(cond, what, ...values) {
  if (!cond) throw new Error(what + (values.length ? ': ' + values.map((v) => JSON.stringify(v, (k, x) => typeof x === 'bigint' ? x.toString() : x)).join(' ') : ''));
}

function token(v, after = 0n) {
  check(typeof v === 'string' && /^[0-9]+$/.test(v), 'token is not an integer', v);
  const t = BigInt(v);
  check(t > 0n, 'token is not positive', v);
  check(t > after, 'token did not increase', after, t);
  return t;
}

async function one(c, q, values) {
  const r = await c.query(q, values);
  return r.rows[0][r.fields[0].name];
}

async function expectError(code, promise) {
  try {
    await promise;
  } catch (e) {
    check(e.code === code, 'wrong SQLSTATE', e.code, code, e.message);
    return e;
  }
  throw new Error('expected SQLSTATE ' + code + ', got no error');
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function pending(promise, ms) {
  let done = false;
  promise.then(() => { done = true; }, () => { done = true; });
  await sleep(ms);
  return !done;
}

// ---- cases -----------------------------------------------------------------------------

async function caseTokensAndTypes() {
  const k1 = unique('acct'), k2 = unique('acct'), k3 = unique('job');
  const a = await connect();
  let r = await a.query('SELECT pgwarden_lock($1, $2)', [k1, 'write']); // unnamed statement
  check(r.fields.length === 1 && r.fields[0].name === 'pgwarden_lock', 'column', r.fields);
  check(r.fields[0].dataTypeID === INT8, 'type', r.fields[0].dataTypeID);
  const t1 = token(r.rows[0].pgwarden_lock);
  const t2 = token(await one(a, 'SELECT pgwarden_lock($1, $2, $3)', [k2, 'read', 1000]), t1);
  r = await a.query("SELECT pgwarden_try_lock($1, 'exclusive') AS t", [k3]);
  check(r.fields[0].name === 't' && r.fields[0].dataTypeID === INT8, 'alias', r.fields);
  const t3 = token(r.rows[0].t, t2);
  check(token(await one(a, "SELECT pgwarden_lock($1, 'read')", [k1])) === t1, 're-request token');
  // the simple protocol (no values)
  r = await a.query(`SELECT pgwarden_lock('${k2}', 'read')`);
  check(r.fields[0].dataTypeID === INT8 && token(r.rows[0].pgwarden_lock) === t2, 'simple');
  r = await a.query('SELECT * FROM pgwarden_locks()');
  check(JSON.stringify(r.fields.map((f) => [f.name, f.dataTypeID])) ===
        JSON.stringify([['key', TEXT], ['mode', TEXT], ['scope', TEXT], ['token', INT8]]),
        'pgwarden_locks columns', r.fields.map((f) => [f.name, f.dataTypeID]));
  const rows = r.rows.map((x) => `${x.key}/${x.mode}/${x.scope}/${x.token}`).sort();
  const want = [`${k1}/write/session/${t1}`, `${k2}/read/session/${t2}`,
                `${k3}/exclusive/session/${t3}`].sort();
  check(JSON.stringify(rows) === JSON.stringify(want), 'pgwarden_locks rows', rows, want);
  r = await a.query('SELECT pgwarden_unlock($1)', [k1]);
  check(r.fields[0].dataTypeID === BOOL && r.rows[0].pgwarden_unlock === true, 'unlock', r.rows);
  check(await one(a, 'SELECT pgwarden_unlock($1)', [k1]) === false, 'second unlock');
  r = await a.query('SELECT pgwarden_unlock_all()');
  check(r.fields[0].dataTypeID === INT4 && r.rows[0].pgwarden_unlock_all === 2, 'unlock_all', r.rows);
}

async function caseNamedStatements() {
  const a = await connect(), b = await connect();
  const lock = (k, m) => ({ name: 'lk', text: 'SELECT pgwarden_lock($1, $2)', values: [k, m] });
  const tryLock = (k, m) => ({ name: 'try', text: 'SELECT pgwarden_try_lock($1, $2)', values: [k, m] });
  let last = 0n;
  const keys = [];
  for (let i = 0; i < 4; i++) { // Parse once, then Bind/Describe/Execute of "lk"
    keys.push(unique('named'));
    last = token(await one(a, lock(keys[i], 'write')), last);
  }
  for (const k of keys)
    check(await one(b, tryLock(k, 'write')) === null, 'try_lock of a taken key is not null');
  const r = await a.query({ name: 'locks', text: 'SELECT * FROM pgwarden_locks()' });
  check(r.rows.length === 4 && r.fields[3].dataTypeID === INT8, 'named pgwarden_locks', r.rows);
  check(await one(a, { name: 'ua', text: 'SELECT pgwarden_unlock_all()' }) === 4, 'unlock_all');
  check(token(await one(b, tryLock(keys[0], 'write')), last) > 0n, 'try_lock after release');
  // an ordinary named statement on the same connection still reaches PostgreSQL
  check(await one(a, { name: 'plus', text: 'SELECT $1::int + 1 AS v', values: [41] }) === 42, 'SQL');
}

// node-postgres decodes every DataRow field as UTF-8 text, also with binary: true, so a
// binary int8 arrives mangled (bytes >= 0x80 become U+FFFD).  What can be checked: pgwarden's
// binary value reads exactly as PostgreSQL's binary value of the same number does.
async function caseBinary() {
  const k = unique('bin');
  const a = await connect(), b = await connect(), d = await connect('direct');
  let r = await a.query({ text: 'SELECT pgwarden_lock($1, $2)', values: [k, 'write'], binary: true });
  check(r.fields[0].format === 'binary' && r.fields[0].dataTypeID === INT8, 'binary field', r.fields);
  const asRead = r.rows[0].pgwarden_lock;
  const t = token(await one(a, "SELECT pgwarden_lock($1, 'read')", [k])); // same token, text
  const pgRead = await d.query({ text: 'SELECT $1::int8 AS v', values: [String(t)], binary: true });
  check(asRead === pgRead.rows[0].v, 'binary int8 differs from PostgreSQL', asRead, pgRead.rows[0].v);
  r = await b.query({ text: 'SELECT pgwarden_try_lock($1, $2)', values: [k, 'write'], binary: true });
  check(r.rows[0].pgwarden_try_lock === null, 'binary NULL', r.rows);
  r = await a.query({ text: 'SELECT pgwarden_unlock($1)', values: [k], binary: true });
  check(r.fields[0].dataTypeID === BOOL && r.rows[0].pgwarden_unlock === true, 'binary bool', r.rows);
  r = await b.query({ name: 'ua', text: 'SELECT pgwarden_unlock_all()', binary: true });
  check(r.fields[0].dataTypeID === INT4 && r.rows[0].pgwarden_unlock_all === 0, 'binary int4', r.rows);
}

async function caseTryLockTaken() {
  const k = unique('taken');
  const a = await connect(), b = await connect();
  const t = token(await one(a, "SELECT pgwarden_lock($1, 'write')", [k]));
  check(await one(b, "SELECT pgwarden_try_lock($1, 'write')", [k]) === null, 'write');
  check(await one(b, "SELECT pgwarden_try_lock($1, 'exclusive')", [k]) === null, 'exclusive');
  token(await one(b, "SELECT pgwarden_try_lock($1, 'read')", [k]), t);
  await b.query('BEGIN');
  check(await one(b, "SELECT pgwarden_try_xact_lock($1, 'write')", [k]) === null, 'xact');
  await b.query('ROLLBACK');
}

async function caseErrors() {
  const k = unique('err');
  const a = await connect(), b = await connect();
  token(await one(a, "SELECT pgwarden_lock($1, 'write')", [k]));
  const t0 = Date.now();
  const e = await expectError('55P03', b.query("SELECT pgwarden_lock($1, 'write', 100)", [k]));
  check(Date.now() - t0 >= 90 && Date.now() - t0 < 5000, '55P03 after', Date.now() - t0);
  check(e.message.includes(k), 'the message does not name the key', e.message);
  await expectError('22023', b.query('SELECT pgwarden_lock($1, $2)', [k, 'sideways']));
  await expectError('22023', b.query("SELECT pgwarden_lock('x', 'sideways')"));
  await expectError('25P01', b.query("SELECT pgwarden_xact_lock($1, 'read')", [k]));
  await expectError('42883', b.query("SELECT pgwarden_lock($1, 'read'), 1", [k]));
  check(await one(b, 'SELECT 1 AS v') === 1, 'unusable after errors');
}

async function caseFailedTransaction() {
  const k = unique('busy'), table = unique('drv_t');
  const d = await connect('direct'), a = await connect(), b = await connect();
  await d.query(`CREATE TABLE ${table} (v int)`);
  token(await one(b, "SELECT pgwarden_lock($1, 'exclusive')", [k]));
  await a.query('BEGIN'); // 1. first statement of the block
  await expectError('55P03', a.query("SELECT pgwarden_xact_lock($1, 'write', 100)", [k]));
  await expectError('25P02', a.query('SELECT 1'));
  await a.query('ROLLBACK');
  await a.query('BEGIN'); // 2. after real work
  await a.query(`INSERT INTO ${table} VALUES (1)`);
  await expectError('22023', a.query("SELECT pgwarden_xact_lock($1, 'sideways')", [k]));
  await expectError('25P02', a.query(`INSERT INTO ${table} VALUES ($1)`, [2]));
  const r = await a.query('COMMIT');
  check(r.command === 'ROLLBACK', 'COMMIT of a failed block', r.command);
  check(await one(d, `SELECT count(*)::int AS n FROM ${table}`) === 0, 'a failed block committed');
  check(await one(a, 'SELECT 5 AS v') === 5, 'unusable');
  await d.query(`DROP TABLE ${table}`);
}

async function caseXactLockReleasedAtCommit() {
  const k = unique('xact');
  const a = await connect(), b = await connect();
  await a.query('BEGIN');
  const t = token(await one(a, "SELECT pgwarden_xact_lock($1, 'write')", [k]));
  const r = await a.query('SELECT * FROM pgwarden_locks()');
  check(r.rows.length === 1 && r.rows[0].scope === 'transaction' && r.rows[0].token === String(t),
        'locks in the block', r.rows);
  check(await one(b, "SELECT pgwarden_try_lock($1, 'write')", [k]) === null, 'held in the block');
  await a.query('COMMIT');
  const t2 = token(await one(b, "SELECT pgwarden_try_lock($1, 'write')", [k]), t);
  check(await one(b, 'SELECT pgwarden_unlock($1)', [k]) === true, 'unlock');
  await a.query('BEGIN');
  token(await one(a, "SELECT pgwarden_xact_lock($1, 'write')", [k]), t2);
  check(await one(b, "SELECT pgwarden_try_lock($1, 'write')", [k]) === null, 'held in the block');
  await a.query('ROLLBACK');
  token(await one(b, "SELECT pgwarden_try_lock($1, 'write')", [k]), t2);
}

async function caseDeadlock() {
  const x = unique('x'), y = unique('y');
  const a = await connect(null, { application_name: 'alice' });
  const b = await connect(null, { application_name: 'bob' });
  token(await one(a, "SELECT pgwarden_lock($1, 'exclusive')", [x]));
  token(await one(b, "SELECT pgwarden_lock($1, 'exclusive')", [y]));
  let aWaits = one(a, "SELECT pgwarden_lock($1, 'exclusive')", [y]);
  check(await pending(aWaits, 300), 'a did not wait');
  const t0 = Date.now();
  const e = await expectError('40P01', b.query("SELECT pgwarden_lock($1, 'exclusive')", [x]));
  check(Date.now() - t0 < 1500, 'deadlock found late', Date.now() - t0);
  check((e.detail || '').includes('alice'), 'DETAIL', e.detail);
  check(await pending(aWaits, 100), 'a was a victim too');
  check(await one(b, 'SELECT pgwarden_unlock_all()') === 1, "victim's unlock_all");
  token(await aWaits);
  // transaction locks: the victim's block fails, ROLLBACK lets the other go on
  await a.query('BEGIN');
  await b.query('BEGIN');
  token(await one(a, "SELECT pgwarden_xact_lock($1, 'write')", [x + 't']));
  token(await one(b, "SELECT pgwarden_xact_lock($1, 'write')", [y + 't']));
  aWaits = one(a, "SELECT pgwarden_xact_lock($1, 'write')", [y + 't']);
  check(await pending(aWaits, 300), 'a did not wait');
  await expectError('40P01', b.query("SELECT pgwarden_xact_lock($1, 'write')", [x + 't']));
  await expectError('25P02', b.query('SELECT 1'));
  await b.query('ROLLBACK');
  token(await aWaits);
  await a.query('COMMIT');
}

const WAITERS = 8; // more than the transaction pool's 4 servers

async function caseWaitersHoldNoServer() {
  if (mode !== 'transaction')
    return; // session mode: each client has its own server
  const k = unique('hot');
  const holder = await connect(), other = await connect();
  const pool = new pg.Pool(Object.assign(config(mode), { max: WAITERS }));
  try {
    const clients = [];
    for (let i = 0; i < WAITERS; i++)
      clients.push(await pool.connect()); // connected first, then released: all idle
    clients.forEach((c) => c.release());
    token(await one(holder, "SELECT pgwarden_lock($1, 'exclusive')", [k]));
    const waits = [];
    for (let i = 0; i < WAITERS; i++)
      waits.push(withLock(pool, k, 'write', 0, async (c, t) => t));
    check(await pending(Promise.all(waits), 500), 'waiters did not wait');
    try {
      const others = (async () => { for (let i = 0; i < 10; i++) await other.query('SELECT 1'); })();
      check(!(await pending(others, 5000)),
            `the pool was busy for 5 s while ${WAITERS} clients waited for a lock: waiters hold servers`);
    } finally {
      check(await one(holder, 'SELECT pgwarden_unlock($1)', [k]) === true, 'unlock');
    }
    const tokens = await Promise.all(waits);
    check(tokens.length === WAITERS && tokens.every((t) => t > 0n), 'tokens', tokens);
  } finally {
    await pool.end();
  }
}

const RMW_CONNS = 6, RMW_ROUNDS = 15;

async function caseRecipeReadModifyWrite() {
  const table = unique('drv_acct'), key = 'acct:' + table;
  const d = await connect('direct');
  await d.query(`CREATE TABLE ${table} (id int PRIMARY KEY, balance int NOT NULL,
                 token bigint NOT NULL DEFAULT 0)`);
  await d.query(`INSERT INTO ${table} VALUES (1, 0)`);
  const pool = new pg.Pool(Object.assign(config(mode), { max: RMW_CONNS }));
  try {
    const worker = async () => {
      for (let i = 0; i < RMW_ROUNDS; i++) {
        await withLock(pool, key, 'write', 30000, async (c, tok) => {
          const { rows } = await c.query(`SELECT balance FROM ${table} WHERE id = 1`);
          await sleep(1); // a lost update would show here
          const r = await c.query(
            `UPDATE ${table} SET balance = $1, token = $2 WHERE id = 1 AND token < $2`,
            [rows[0].balance + 1, tok]);
          check(r.rowCount === 1, 'fenced write refused', tok);
        });
      }
    };
    await Promise.all(Array.from({ length: RMW_CONNS }, worker));
  } finally {
    await pool.end();
  }
  const balance = await one(d, `SELECT balance FROM ${table} WHERE id = 1`);
  await d.query(`DROP TABLE ${table}`);
  check(balance === RMW_CONNS * RMW_ROUNDS, 'lost updates', balance);
}

const CASES = [
  ['tokens_and_types', caseTokensAndTypes],
  ['named_statements', caseNamedStatements],
  ['binary', caseBinary],
  ['try_lock_taken', caseTryLockTaken],
  ['errors', caseErrors],
  ['failed_transaction', caseFailedTransaction],
  ['xact_lock_released_at_commit', caseXactLockReleasedAtCommit],
  ['deadlock', caseDeadlock],
  ['waiters_hold_no_server', caseWaitersHoldNoServer],
  ['recipe_read_modify_write', caseRecipeReadModifyWrite],
];

async function main() {
  console.log(`node-postgres ${require('pg/package.json').version}, Node.js ${process.version}`);
  const only = process.argv.slice(2);
  let passed = 0;
  const failed = [];
  for (mode of (process.env.PGW_MODES || 'session transaction').split(' ')) {
    for (const [name, fn] of CASES) {
      if (only.length && !only.includes(name))
        continue;
      const t0 = Date.now();
      let timer;
      try {
        await Promise.race([fn(), new Promise((resolve, reject) => {
          timer = setTimeout(() => reject(new Error(`case ran longer than ${CASE_TIMEOUT_MS} ms`)),
                             CASE_TIMEOUT_MS);
        })]);
        passed++;
        console.log(`ok   ${mode.padEnd(11)} ${name} (${((Date.now() - t0) / 1000).toFixed(2)} s)`);
      } catch (e) {
        failed.push(`${mode} ${name}`);
        console.log(`FAIL ${mode.padEnd(11)} ${name}: ${e.stack || e}`);
      } finally {
        clearTimeout(timer);
        await Promise.all(opened.splice(0).map((c) => c.end().catch(() => {})));
      }
    }
  }
  for (const f of failed)
    console.log('failed: ' + f);
  console.log(`drivers_node: ${passed} passed, ${failed.length} failed`);
  process.exit(failed.length === 0 && passed > 0 ? 0 : 1);
}

main();
