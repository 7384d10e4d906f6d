#!/usr/bin/env python3
"""TPC-DS on one Quarry node against DuckDB, side by side in one run: the
99 query templates of the TPC-DS specification, over the same rows.

    python3 benches/tpcds.py --kit PATH [--scale-factor 1] [--data DIR]
        [--runs 3] [--threads 2] [--timeout 300] [--queries 1,2,...]
        [--plan] [--duckdb-integer-division] [--set NAME=VALUE ...]
        [--quarry target/release/quarry] [--commit SHA]

`--kit` is a checkout of the TPC's TPC-DS kit (its tools built: `make -C
tools OS=LINUX`). Its material is under the TPC's license and is not part of
Quarry's repository; this script runs its tools:

- `dsdgen -SCALE N -TERMINATE N` writes the tables' rows (`.dat` files,
  `|`-separated, UTF-8) into `--data` unless they are there already;
- `dsqgen -DIALECT netezza -QUALIFY Y` writes each query of the templates
  with the specification's qualification parameters (query 14, 23, 24 and
  39 are two statements each, run one after the other and timed together).
  Two rewrites make them standard SQL that both engines parse: the
  dialect's `date + 30 days` becomes `date + interval '30' day`, and query
  90's alias `at` (a word DuckDB reserves) becomes `at_`;
- `tools/tpcds.sql` is the schema (its primary key clauses left out).

DuckDB reads the rows into its own storage in memory; Quarry's node (a
fresh data directory) loads them through COPY over the PostgreSQL wire, its
result cache off. Neither load is timed. Each query runs once to warm up
and `--runs` times; the median is printed, in ms, with the rows each engine
returned. A query that fails (or runs past `--timeout` seconds on Quarry)
is shown with its error and left out of the geomean, which is over the
queries both engines ran.

`--plan` also times Quarry's `EXPLAIN` of each query (parsing, planning,
optimizing and printing the plans; the same warm-up and median), an upper
bound on its planning time. `--duckdb-integer-division` runs DuckDB with
`SET integer_division = true`, so that `/` of two integers truncates as in
PostgreSQL and Quarry (queries 34 and 73 divide integer columns).
`--set NAME=VALUE` (repeatable) makes a session setting for Quarry's
queries, e.g. `share_subplans=on`.

Prints the machine, the command, the commit and a Markdown table.
"""
import argparse
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import duckdb
import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from machine import machine  # noqa: E402
from stream import start_quarry  # noqa: E402


def tables_of(kit):
    """(name, CREATE TABLE statement) of the kit's schema, without primary keys."""
    text = open(os.path.join(kit, "tools", "tpcds.sql")).read()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    tables = []
    for match in re.finditer(r"create table (\w+)\s*\((.*?)\);", text, re.S | re.I):
        name, body = match.group(1), match.group(2)
        if name == "dbgen_version":
            continue
        columns = [c.strip().rstrip(",") for c in body.splitlines()]
        columns = [c for c in columns if c and not c.lower().startswith("primary key")]
        tables.append((name, f"CREATE TABLE {name} (\n  " + ",\n  ".join(columns) + "\n)"))
    return tables


def generate_data(kit, scale, data):
    if os.path.exists(os.path.join(data, "store_sales.dat")):
        return
    os.makedirs(data, exist_ok=True)
    subprocess.run(["./dsdgen", "-SCALE", str(scale), "-DIR", os.path.abspath(data),
                    "-TERMINATE", "N", "-QUIET", "Y", "-FORCE", "Y"],
                   cwd=os.path.join(kit, "tools"), check=True)


def generate_queries(kit, scale, out):
    """{number: [statement, ...]} of the 99 templates."""
    queries = {}
    for number in range(1, 100):
        subprocess.run(["./dsqgen", "-DIRECTORY", "../query_templates",
                        "-TEMPLATE", f"query{number}.tpl", "-DIALECT", "netezza",
                        "-SCALE", str(scale), "-QUALIFY", "Y", "-QUIET", "Y",
                        "-OUTPUT_DIR", out],
                       cwd=os.path.join(kit, "tools"), check=True,
                       stdout=subprocess.DEVNULL)
        text = open(os.path.join(out, "query_0.sql")).read()
        text = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
        # The dialect's date arithmetic, `date + 30 days`, as standard SQL.
        text = re.sub(r"([+-])\s*(\d+)\s+days\b", r"\1 interval '\2' day", text)
        # Query 90's alias `at`, which DuckDB reserves.
        text = text.replace(") at,", ") at_,")
        queries[number] = [s.strip() for s in text.split(";") if s.strip()]
    return queries


def load_duckdb(tables, data, threads, integer_division=False):
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET enable_progress_bar = false")
    if integer_division:
        con.execute("SET integer_division = true")
    for name, ddl in tables:
        con.execute(ddl)
        con.execute(f"COPY {name} FROM '{os.path.join(data, name + '.dat')}' "
                    "(DELIMITER '|', HEADER false, NULL '', QUOTE '', ESCAPE '')")
    return con


def load_quarry(tables, data, port):
    with psycopg.connect(host="127.0.0.1", port=port, user="quarry", dbname="quarry",
                         autocommit=True) as c:
        for name, ddl in tables:
            c.execute(ddl)
            with open(os.path.join(data, name + ".dat"), "rb") as f, \
                    c.cursor().copy(f"COPY {name} FROM STDIN WITH (DELIMITER '|', NULL '')") as copy:
                while chunk := f.read(4 << 20):
                    copy.write(chunk)


def timed(run, statements, runs):
    """(median ms, rows of the last statement) over `runs` after a warm-up."""
    times, rows = [], 0
    for i in range(runs + 1):
        started = time.perf_counter()
        for statement in statements:
            rows = len(run(statement))
        if i > 0:
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kit", required=True)
    parser.add_argument("--scale-factor", type=int, default=1)
    parser.add_argument("--data")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=300)
    parser.add_argument("--queries")
    parser.add_argument("--plan", action="store_true")
    parser.add_argument("--duckdb-integer-division", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--quarry", default="target/release/quarry")
    parser.add_argument("--commit")
    args = parser.parse_args()
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True,
                                           cwd=HERE).stdout.strip()
    data = args.data or f"/tmp/tpcds-sf{args.scale_factor}"
    workdir = tempfile.mkdtemp(prefix="quarry-tpcds-")
    wanted = (sorted(int(q) for q in args.queries.split(",")) if args.queries
              else list(range(1, 100)))
    generate_data(args.kit, args.scale_factor, data)
    queries = generate_queries(args.kit, args.scale_factor, workdir)
    tables = tables_of(args.kit)

    started = time.monotonic()
    duck = load_duckdb(tables, data, args.threads, args.duckdb_integer_division)
    duck_load = time.monotonic() - started
    node, port, _, _ = start_quarry(args.quarry, workdir)
    results = {}
    try:
        started = time.monotonic()
        load_quarry(tables, data, port)
        quarry_load = time.monotonic() - started
        q = psycopg.connect(host="127.0.0.1", port=port, user="quarry", dbname="quarry",
                            autocommit=True)
        q.execute("SET use_query_cache = off")
        q.execute(f"SET statement_timeout = '{args.timeout}s'")
        for setting in args.set:
            name, _, value = setting.partition("=")
            q.execute(f"SET {name} = '{value}'")

        def on_quarry(sql):
            return q.execute(sql).fetchall()

        def on_duckdb(sql):
            return duck.execute(sql).fetchall()

        for number in wanted:
            result = {}
            for engine, run in (("DuckDB", on_duckdb), ("Quarry", on_quarry)):
                try:
                    result[engine] = timed(run, queries[number], args.runs)
                except Exception as e:  # noqa: BLE001 - reported in the table
                    result[engine] = str(e).strip().splitlines()[0][:120]
                    if engine == "Quarry" and q.closed:
                        raise
            if args.plan:
                try:
                    result["plan"] = timed(lambda sql: on_quarry("EXPLAIN " + sql),
                                           queries[number], args.runs)[0]
                except Exception as e:  # noqa: BLE001 - reported in the table
                    result["plan"] = str(e).strip().splitlines()[0][:120]
            results[number] = result
            print(f"q{number}: {result}", file=sys.stderr, flush=True)
    finally:
        node.kill()
        node.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    print(machine())
    print(f"command: python3 benches/tpcds.py --kit {args.kit} --scale-factor "
          f"{args.scale_factor} --runs {args.runs} --threads {args.threads} "
          f"--timeout {args.timeout} --quarry {args.quarry}"
          + (f" --queries {args.queries}" if args.queries else "")
          + (" --plan" if args.plan else "")
          + (" --duckdb-integer-division" if args.duckdb_integer_division else "")
          + "".join(f" --set {setting}" for setting in args.set))
    print(f"commit: {commit}; comparison: DuckDB {duckdb.__version__} ({args.threads} threads, "
          "its own storage, in memory)")
    print(f"load (not timed in the queries): DuckDB {duck_load:.1f} s, Quarry {quarry_load:.1f} s "
          "(COPY over the PostgreSQL wire)")
    print()
    plan = (lambda r: "") if not args.plan else (
        lambda r: f" {r['plan']:,.1f} |" if isinstance(r["plan"], float) else f" error: {r['plan']} |")
    print("| query | Quarry ms | DuckDB ms | Quarry / DuckDB | rows Quarry | rows DuckDB |"
          + (" Quarry EXPLAIN ms |" if args.plan else ""))
    print("|---|---:|---:|---:|---:|---:|" + ("---:|" if args.plan else ""))
    logs = []
    for number, result in results.items():
        quarry, duck_result = result["Quarry"], result["DuckDB"]
        if isinstance(quarry, tuple) and isinstance(duck_result, tuple):
            ratio = quarry[0] / duck_result[0]
            logs.append((math.log(quarry[0]), math.log(duck_result[0])))
            print(f"| q{number} | {quarry[0]:,.1f} | {duck_result[0]:,.1f} | {ratio:.2f} "
                  f"| {quarry[1]} | {duck_result[1]} |" + plan(result))
        else:
            show = lambda r: f"{r[0]:,.1f}" if isinstance(r, tuple) else f"error: {r}"  # noqa: E731
            print(f"| q{number} | {show(quarry)} | {show(duck_result)} | | | |" + plan(result))
    if logs:
        quarry_geo = math.exp(sum(a for a, _ in logs) / len(logs))
        duck_geo = math.exp(sum(b for _, b in logs) / len(logs))
        print(f"| **geomean of {len(logs)}** | **{quarry_geo:,.1f}** | **{duck_geo:,.1f}** "
              f"| **{quarry_geo / duck_geo:.2f}** | | |")
    failed = [n for n, r in results.items() if not isinstance(r["Quarry"], tuple)]
    print()
    print(f"Quarry ran {len(results) - len(failed)} of {len(results)} queries"
          + (f"; failed: {', '.join(f'q{n}' for n in failed)}" if failed else ""))


if __name__ == "__main__":
    main()
