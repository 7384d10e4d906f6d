// node-postgres against one server: parameters, a result's types, and
// pg-cursor, which reads a query a few rows at a time (Execute with a row
// limit). Connects with PGHOST, PGPORT, PGUSER, PGDATABASE; exits non-zero on
// any mismatch. Run by tests/drivers/suite.py.
'use strict';
const assert = require('node:assert/strict');
const { Client } = require('pg');
const Cursor = require('pg-cursor');

async function main() {
  const client = new Client();
  await client.connect();
  try {
    await client.query('CREATE TABLE np (id BIGINT NOT NULL, name TEXT, price NUMERIC(10, 2))');
    await client.query('INSERT INTO np VALUES ($1, $2, $3), ($4, $5, $6), ($7, $8, $9)',
      [1, 'a', '1.50', 2, null, null, 3, 'c', '-0.25']);
    const all = await client.query('SELECT id, name, price FROM np ORDER BY id');
    // node-postgres gives int8 and numeric as strings, as PostgreSQL sends them.
    assert.deepEqual(all.rows, [
      { id: '1', name: 'a', price: '1.50' },
      { id: '2', name: null, price: null },
      { id: '3', name: 'c', price: '-0.25' },
    ]);
    const one = await client.query('SELECT 1 AS one');
    assert.deepEqual(one.rows, [{ one: 1 }]);
    await client.query('BEGIN');
    const cursor = client.query(new Cursor('SELECT id FROM np WHERE id > $1 ORDER BY id', [0]));
    assert.deepEqual(await cursor.read(2), [{ id: '1' }, { id: '2' }]);
    assert.deepEqual(await cursor.read(10), [{ id: '3' }]);
    assert.deepEqual(await cursor.read(10), []);
    await cursor.close();
    await client.query('COMMIT');
  } finally {
    await client.end();
  }
  console.log('node-postgres: ok');
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
