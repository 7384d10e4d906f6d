#!/usr/bin/env python3
"""psycopg 3 against a running Quarry node: parameters typed by the driver,
executemany, COPY, NUMERIC and DATE round trips. Exits non-zero on any mismatch.

    python3 tests/drivers/psycopg_smoke.py PORT
"""
import datetime
import decimal
import sys

import psycopg

port = sys.argv[1]
dsn = f"host=127.0.0.1 port={port} user=psycopg dbname=quarry"
with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute("CREATE TABLE py (id INT NOT NULL, name TEXT, price NUMERIC(10,2), day DATE)")
    cur = conn.cursor()
    cur.executemany(
        "INSERT INTO py VALUES (%s, %s, %s, %s)",
        [(1, "one", decimal.Decimal("1.50"), datetime.date(2026, 1, 1)),
         (2, "two", decimal.Decimal("2.25"), datetime.date(2026, 1, 2))],
    )
    with cur.copy("COPY py (id, name) FROM STDIN") as copy:
        copy.write_row((3, "three"))
    # An int parameter compared with a NUMERIC column, a date parameter.
    rows = conn.execute(
        "SELECT id, name, price, day FROM py WHERE price > %s AND day >= %s ORDER BY id",
        (1, datetime.date(2026, 1, 1)),
    ).fetchall()
    assert rows == [
        (1, "one", decimal.Decimal("1.50"), datetime.date(2026, 1, 1)),
        (2, "two", decimal.Decimal("2.25"), datetime.date(2026, 1, 2)),
    ], rows
    count = conn.execute("SELECT count(*) FROM py").fetchone()
    assert count == (3,), count
    names = [d.name for d in conn.execute("SELECT count(*), max(price) FROM py").description]
    assert names == ["count", "max"], names
    try:
        conn.execute("SELECT * FROM nope")
        raise AssertionError("no error for a missing table")
    except psycopg.errors.UndefinedTable:
        pass
print("psycopg: ok")
