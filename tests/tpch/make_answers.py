#!/usr/bin/env python3
"""Writes the expected answers of the 22 TPC-H queries at scale factor 0.01.

The answers come from DuckDB, an engine independent of Quarry, run on exactly the
rows `quarry load tpch` loads: quarry-bench writes them as CSV with the same DDL.
Run from the repository root (needs `pip install duckdb`):

    cargo run -p quarry-bench -- tpch-csv --scale-factor 0.01 --out /tmp/tpch-sf0.01
    python3 tests/tpch/make_answers.py /tmp/tpch-sf0.01

Each answer is tests/tpch/answers/qNN.csv: a header, then one line per row, values
as DuckDB prints them (floats with repr precision, NULL as an empty field).
"""
import csv
import pathlib
import sys

import duckdb

here = pathlib.Path(__file__).resolve().parent
data = pathlib.Path(sys.argv[1])
con = duckdb.connect()
for statement in (data / "schema.sql").read_text().split(";"):
    if statement.strip():
        con.execute(statement)
for table in ["region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem"]:
    con.execute(f"COPY {table} FROM '{data / (table + '.csv')}' (FORMAT csv, HEADER false)")

out = here / "answers"
out.mkdir(exist_ok=True)
for q in range(1, 23):
    sql = (here / "queries" / f"q{q:02}.sql").read_text()
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    with open(out / f"q{q:02}.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(names)
        for row in rows:
            writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else str(v)) for v in row])
    print(f"q{q:02}: {len(rows)} rows")
