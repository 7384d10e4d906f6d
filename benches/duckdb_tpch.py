#!/usr/bin/env python3
"""Times the 22 TPC-H queries in DuckDB on the rows `quarry load tpch` loads, for
comparison with `quarry-bench tpch`. DuckDB reads the tables into its own storage
(in memory) first; the load is not timed.

    cargo run --release -p quarry-bench -- tpch-csv --scale-factor 1 --out /tmp/tpch-sf1
    python3 benches/duckdb_tpch.py /tmp/tpch-sf1 [--runs 3] [--threads 2]
"""
import argparse
import pathlib
import statistics
import time

import duckdb

parser = argparse.ArgumentParser()
parser.add_argument("data")
parser.add_argument("--runs", type=int, default=3)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument(
    "--parquet",
    action="store_true",
    help="query Parquet files (written once next to the CSV) instead of DuckDB's own storage",
)
args = parser.parse_args()
data = pathlib.Path(args.data)
queries = pathlib.Path(__file__).resolve().parent.parent / "tests" / "tpch" / "queries"

con = duckdb.connect()
con.execute(f"SET threads = {args.threads}")
for statement in (data / "schema.sql").read_text().split(";"):
    if statement.strip():
        con.execute(statement)
tables = ["region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem"]
for table in tables:
    con.execute(f"COPY {table} FROM '{data / (table + '.csv')}' (FORMAT csv, HEADER false)")
if args.parquet:
    for table in tables:
        path = data / f"{table}.parquet"
        if not path.exists():
            con.execute(f"COPY {table} TO '{path}' (FORMAT parquet, COMPRESSION zstd)")
        con.execute(f"DROP TABLE {table}")
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{path}')")

storage = "Parquet files" if args.parquet else "its own storage"
print(f"TPC-H on DuckDB {duckdb.__version__} ({args.threads} threads, {storage}): median of {args.runs} runs after one warm-up")
print(f"{'query':>5} {'median_ms':>10} {'rows':>6}")
total = 0.0
for q in range(1, 23):
    sql = (queries / f"q{q:02}.sql").read_text()
    times = []
    for run in range(args.runs + 1):
        started = time.perf_counter()
        rows = con.execute(sql).fetchall()
        elapsed = time.perf_counter() - started
        if run > 0:
            times.append(elapsed)
    median = statistics.median(times)
    total += median
    print(f"{'q%02d' % q:>5} {median * 1000:>10.1f} {len(rows):>6}")
print(f"{'total':>5} {total * 1000:>10.1f}")
