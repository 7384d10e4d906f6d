#!/usr/bin/env python3
"""File loading: `quarry load` of the TPC-H lineitem table's Parquet files
into a fresh node, against DuckDB loading the same files into a table of its
own database file (`CREATE TABLE lineitem AS SELECT * FROM
read_parquet(...)`), side by side in one run.

    python3 benches/load.py --parquet DIR [--quarry target/release/quarry]
        [--threads 2]
    # the files, once (lineitem of TPC-H at scale factor SF, in 8 files):
    python3 benches/load.py --make-parquet DIR --scale-factor 10
    # `quarry load tpch` through COPY against the streaming API:
    python3 benches/load.py --tpch 1 [--quarry target/release/quarry]

`--make-parquet` writes lineitem with `tpchgen-cli` (benches/requirements.txt;
the generator `quarry load tpch` uses) as 8 Parquet files (its defaults:
Snappy pages).

The run starts one Quarry node (--insecure, a temporary data directory on
the same disk as DuckDB's database file), times `quarry load DIR --table
tpch.lineitem --create` from start to its summary (reading the files,
sending Arrow IPC batches through the streaming API's pending channels, two
files at once, and committing them all in one snapshot at the end),
checks the row count with SELECT count(*), then times DuckDB's CTAS with
`--threads` threads into a new database file (checkpointed, so the rows are
on disk as Quarry's are). Prints the machine, the command, the commit and a
Markdown table: rows, seconds, rows/s, and Quarry's data files and bytes
stored (stripes, parity included in neither).

`--tpch SF` times `quarry load tpch --scale-factor SF` (the eight tables,
generated on the client) into a fresh node once per path: `--via copy`
(CSV through COPY FROM STDIN, one statement per table) and `--via stream`
(Arrow batches through the streaming API's pending channels, two at once,
one commit per table). Prints the same kind of table, with the rows of all
eight tables.
"""
import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine  # noqa: E402
from stream import start_quarry  # noqa: E402


def make_parquet(args):
    out = pathlib.Path(args.make_parquet)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tpchgen-cli", "parquet", "--scale-factor", str(args.scale_factor),
                    "--tables", "lineitem", "--parts", "8", "--output-dir", str(out)], check=True)
    for f in sorted((out / "lineitem").glob("*.parquet")):
        f.rename(out / f.name)
    (out / "lineitem").rmdir()
    print(f"lineitem at scale factor {args.scale_factor} in 8 files under {out}")


def run(args):
    import duckdb

    files = sorted(pathlib.Path(args.parquet).glob("*.parquet"))
    if not files:
        raise SystemExit(f"no Parquet files in {args.parquet}")
    size = sum(f.stat().st_size for f in files)
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True).stdout.strip()
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        node, pg, http, _ = start_quarry(args.quarry, workdir)
        try:
            with psycopg.connect(f"host=127.0.0.1 port={pg} user=quarry dbname=quarry",
                                 autocommit=True) as c:
                c.execute("CREATE SCHEMA tpch")
            started = time.monotonic()
            subprocess.run([args.quarry, "load", args.parquet, "--table", "tpch.lineitem", "--create",
                            "--url", f"http://127.0.0.1:{http}", "--pg", f"127.0.0.1:{pg}"],
                           check=True, stdout=subprocess.DEVNULL)
            seconds = time.monotonic() - started
            with psycopg.connect(f"host=127.0.0.1 port={pg} user=quarry dbname=quarry",
                                 autocommit=True) as c:
                rows = c.execute("SELECT count(*) FROM tpch.lineitem").fetchone()[0]
                data_files, stored = c.execute(
                    "SELECT data_files, size_bytes FROM quarry_system.tables "
                    "WHERE table_schema = 'tpch' AND table_name = 'lineitem'").fetchone()
            results.append(("Quarry (quarry load, 1 node)", rows, seconds,
                            f"{data_files} data files, {stored / 2**30:.2f} GiB"))
        finally:
            node.terminate()
            node.wait(timeout=60)
        db = os.path.join(workdir, "duck.db")
        con = duckdb.connect(db)
        con.execute(f"SET threads = {args.threads}")
        started = time.monotonic()
        con.execute(f"CREATE TABLE lineitem AS SELECT * FROM read_parquet('{args.parquet}/*.parquet')")
        con.execute("CHECKPOINT")
        seconds = time.monotonic() - started
        rows = con.execute("SELECT count(*) FROM lineitem").fetchone()[0]
        con.close()
        results.append((f"DuckDB {duckdb.__version__} (CTAS read_parquet, {args.threads} threads)",
                        rows, seconds, f"database file {os.path.getsize(db) / 2**30:.2f} GiB"))
    report(f"commit: {commit}; {len(files)} Parquet files, {size / 2**30:.2f} GiB", "engine",
           results)


TPCH_TABLES = ["region", "nation", "supplier", "customer", "part", "partsupp", "orders",
               "lineitem"]


def run_tpch(args):
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True).stdout.strip()
    results = []
    for via in ["copy", "stream"]:
        with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
            node, pg, http, _ = start_quarry(args.quarry, workdir)
            try:
                started = time.monotonic()
                subprocess.run([args.quarry, "load", "tpch", "--scale-factor", str(args.tpch),
                                "--via", via, "--pg", f"127.0.0.1:{pg}",
                                "--url", f"http://127.0.0.1:{http}"],
                               check=True, stdout=subprocess.DEVNULL)
                seconds = time.monotonic() - started
                with psycopg.connect(f"host=127.0.0.1 port={pg} user=quarry dbname=quarry",
                                     autocommit=True) as c:
                    rows = sum(c.execute(f"SELECT count(*) FROM tpch.{t}").fetchone()[0]
                               for t in TPCH_TABLES)
                    data_files, buffered, stored = c.execute(
                        "SELECT sum(data_files), sum(buffered_files), sum(size_bytes) "
                        "FROM quarry_system.tables WHERE table_schema = 'tpch'").fetchone()
                results.append((f"quarry load tpch --via {via} (1 node)", rows, seconds,
                                f"{data_files} data files + {buffered} buffered, "
                                f"{stored / 2**30:.2f} GiB"))
            finally:
                node.terminate()
                node.wait(timeout=60)
    report(f"commit: {commit}; TPC-H scale factor {args.tpch}, generated by the client", "path",
           results)


def report(header, first_column, results):
    """Prints the machine, the command, `header` and the table of `results`
    (name, rows, seconds, stored)."""
    print(machine())
    print("command: python3 benches/load.py " + " ".join(sys.argv[1:]))
    print(header)
    print()
    print(f"| {first_column} | rows | seconds | rows/s | stored |")
    print("|---|---:|---:|---:|---|")
    for name, rows, seconds, stored in results:
        print(f"| {name} | {rows} | {seconds:.1f} | {rows / seconds:,.0f} | {stored} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parquet", help="the directory of lineitem's Parquet files")
    parser.add_argument("--make-parquet", help="write lineitem's Parquet files here")
    parser.add_argument("--scale-factor", type=float, default=10)
    parser.add_argument("--tpch", type=float, help="time quarry load tpch at this scale factor")
    parser.add_argument("--quarry", default="target/release/quarry")
    parser.add_argument("--commit", help="the commit the binary was built at [default: HEAD]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where the data directories go")
    args = parser.parse_args()
    if args.tpch:
        run_tpch(args)
    elif args.make_parquet:
        make_parquet(args)
    elif args.parquet:
        run(args)
    else:
        parser.error("give --parquet DIR or --make-parquet DIR")


if __name__ == "__main__":
    main()
