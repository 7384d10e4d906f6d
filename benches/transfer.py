#!/usr/bin/env python3
"""Result transfer: how fast PostgreSQL drivers receive a large result from
Quarry and from PostgreSQL, the same rows on both, in one run.

    python3 benches/transfer.py --quarry-port 5433 [--rows 10000000]

A PostgreSQL server (Debian's, started in a temporary directory by
tests/support/pg_server.py, fsync off) and the running Quarry node each get
table `xfer` (id BIGINT, name TEXT, price NUMERIC(12,2), day DATE) with the
same generated rows, loaded by COPY. Each client then reads
`SELECT * FROM xfer` to the end, streaming rather than holding the result:

- psycopg, text results (`Cursor.stream`);
- psycopg, binary results (`Cursor(binary=True).stream`);
- asyncpg (a cursor in a transaction, 10,000 rows per fetch; binary);
- JDBC (PostgreSQL's driver, fetch size 10,000, autocommit off).

Each is timed twice and the faster run is reported. MB/s counts the rows'
size in PostgreSQL's text COPY format (the same bytes for both servers), so
the column compares engines, not encodings. Prints the machine, the command
and a Markdown table.
"""
import argparse
import asyncio
import io
import os
import subprocess
import sys
import time

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "support"))
from pg_server import Server  # noqa: E402
from machine import machine  # noqa: E402  (benches/, the script's directory)

JDBC_JAR = "/usr/share/java/postgresql.jar"
JAVA_READER = r"""
import java.sql.*;
import java.util.Properties;
public class Reader {
    public static void main(String[] a) throws Exception {
        Properties p = new Properties();
        p.setProperty("user", a[1]);
        try (Connection c = DriverManager.getConnection(a[0], p)) {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.setFetchSize(10000);
                long rows = 0;
                long started = System.nanoTime();
                try (ResultSet r = s.executeQuery("SELECT * FROM xfer")) {
                    while (r.next()) {
                        r.getLong(1); r.getString(2); r.getBigDecimal(3); r.getDate(4);
                        rows++;
                    }
                }
                System.out.println(rows + " " + (System.nanoTime() - started));
            }
            c.commit();
        }
    }
}
"""


def rows_text(count):
    """The rows in COPY text format, generated in pieces."""
    day0 = 19358  # 2023-01-01 as days since 1970-01-01
    import datetime
    epoch = datetime.date(1970, 1, 1)
    out = io.StringIO()
    for i in range(1, count + 1):
        day = epoch + datetime.timedelta(days=day0 + i % 1000)
        out.write(f"{i}\tname-{i % 100000}\t{i % 1000000}.{i % 100:02d}\t{day}\n")
        if i % 200000 == 0:
            yield out.getvalue()
            out = io.StringIO()
    if out.tell():
        yield out.getvalue()


def load(conn, count):
    conn.execute("DROP TABLE IF EXISTS xfer")
    conn.execute("CREATE TABLE xfer (id BIGINT NOT NULL, name TEXT, price NUMERIC(12, 2), day DATE)")
    size = 0
    with conn.cursor().copy("COPY xfer FROM STDIN") as copy:
        for piece in rows_text(count):
            size += len(piece.encode())
            copy.write(piece)
    return size


def time_psycopg(dsn, binary):
    with psycopg.connect(**dsn) as conn:
        cur = conn.cursor(binary=binary)
        started = time.perf_counter()
        rows = sum(1 for _ in cur.stream("SELECT * FROM xfer"))
        return rows, time.perf_counter() - started


def time_asyncpg(dsn):
    import asyncpg

    async def main():
        conn = await asyncpg.connect(host=dsn["host"], port=dsn["port"], user=dsn["user"],
                                     database=dsn["dbname"])
        try:
            started = time.perf_counter()
            rows = 0
            async with conn.transaction():
                async for _ in conn.cursor("SELECT * FROM xfer", prefetch=10000):
                    rows += 1
            return rows, time.perf_counter() - started
        finally:
            await conn.close()

    return asyncio.run(main())


def time_jdbc(dsn, workdir):
    source = os.path.join(workdir, "Reader.java")
    with open(source, "w") as f:
        f.write(JAVA_READER)
    host = "127.0.0.1" if dsn["host"].startswith("/") else dsn["host"]
    url = f"jdbc:postgresql://{host}:{dsn['port']}/{dsn['dbname']}"
    done = subprocess.run(["java", "-cp", JDBC_JAR, source, url, dsn["user"]],
                          capture_output=True, text=True, check=True)
    rows, nanos = done.stdout.split()
    return int(rows), int(nanos) / 1e9


def best(measure, runs=2):
    results = [measure() for _ in range(runs)]
    return min(results, key=lambda r: r[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quarry-port", type=int, required=True)
    parser.add_argument("--quarry-host", default="127.0.0.1")
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    print(machine())
    print("command: python3 benches/transfer.py " + " ".join(sys.argv[1:]))
    server = Server(tcp=True)
    try:
        with server.connect("postgres") as admin:
            admin.execute("CREATE DATABASE xfer")
        engines = {
            "PostgreSQL": dict(host=server.dir, port=server.port, user="postgres", dbname="xfer"),
            "Quarry": dict(host=args.quarry_host, port=args.quarry_port, user="bench",
                           dbname="quarry"),
        }
        size = 0
        for name, dsn in engines.items():
            with psycopg.connect(**dsn, autocommit=True) as conn:
                size = load(conn, args.rows)
            version = psycopg.connect(**dsn).execute("SELECT version()").fetchone()[0]
            print(f"{name}: {version}; {args.rows:,} rows loaded ({size / 1e6:.0f} MB as COPY text)")
        clients = {
            "psycopg 3, text": lambda dsn: time_psycopg(dsn, binary=False),
            "psycopg 3, binary": lambda dsn: time_psycopg(dsn, binary=True),
            "asyncpg": time_asyncpg,
            "JDBC": lambda dsn: time_jdbc(dsn, server.dir),
        }
        print()
        print("| client | Quarry rows/s | Quarry MB/s | PostgreSQL rows/s | PostgreSQL MB/s | Quarry / PostgreSQL time |")
        print("|---|---:|---:|---:|---:|---:|")
        for client, measure in clients.items():
            timed = {}
            for name, dsn in engines.items():
                rows, seconds = best(lambda: measure(dsn))
                if rows != args.rows:
                    sys.exit(f"{client} on {name} read {rows} rows, not {args.rows}")
                timed[name] = seconds
            q, p = timed["Quarry"], timed["PostgreSQL"]
            print(f"| {client} | {args.rows / q:,.0f} | {size / q / 1e6:.1f} | "
                  f"{args.rows / p:,.0f} | {size / p / 1e6:.1f} | {q / p:.2f} |", flush=True)
    finally:
        server.stop()


main()
