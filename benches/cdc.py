#!/usr/bin/env python3
"""Change data capture: a PostgreSQL source replicated into Quarry by
CREATE SUBSCRIPTION, and into a second PostgreSQL by PostgreSQL's own
logical replication (the comparison), side by side in one run.

    python3 benches/cdc.py [--rows 1000000] [--rate 100] [--seconds 30]
        [--burst 100000] [--large 1000000] [--quarry target/release/quarry]
        [--commit SHA]

The source (Debian's PostgreSQL, started in a temporary directory, as is
the subscriber) has pgbench's tables: `accounts` of `--rows` rows and
`history`. Both subscribers subscribe to one publication of both, each
with its own slot, at the same time.

- Copy: from CREATE SUBSCRIPTION until the subscriber holds every row of
  `accounts` (Quarry: its state is `streaming`; PostgreSQL: every table's
  `srsubstate` is `r`, ready), in rows per second.
- Lag under a steady load: writers run pgbench's transaction (UPDATE of
  an account's balance, INSERT into history) at `--rate` transactions per
  second for `--seconds`. Each history row's lag is from its transaction's
  commit returning on the source to the row first seen on the subscriber
  (polled every 20 ms: a lag is up to 20 ms longer than it was); p50 and
  p99 are printed.
- Throughput: `--burst` history rows in transactions of 1,000 rows,
  written as fast as the source takes them; from the first commit to the
  last row seen on the subscriber, in rows per second.
- A large transaction: `--large` history rows in one source transaction;
  from its commit returning to its last row seen on the subscriber, in
  rows per second, and Quarry's resident memory (VmRSS, sampled every
  50 ms) before it and at its peak while it is applied.

Both subscribers stream transactions in progress (pgoutput protocol 2:
Quarry always does against PostgreSQL 14 and later; PostgreSQL's
subscription is made `WITH (streaming = on)`), so a transaction larger than
the source's `logical_decoding_work_mem` (64 MB) reaches them before its
commit.

At the end the subscribers' tables are compared with the source's
(count and sum of balances); the run fails if they differ.

Prints the machine, the command, the commit and a Markdown table.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "support"))
from machine import machine  # noqa: E402
from pg_server import Server  # noqa: E402
from stream import start_quarry  # noqa: E402

SCHEMA = """
CREATE TABLE accounts (aid bigint PRIMARY KEY, bid integer, abalance integer, filler text);
CREATE TABLE history (hid bigint PRIMARY KEY, aid bigint, delta integer, mtime timestamp);
"""


def wait(what, check, limit=1800):
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Resident(threading.Thread):
    """Samples a process's resident memory (VmRSS) every 50 ms and keeps
    the largest, in bytes."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = self.now()
        self.stop = False

    def now(self):
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, self.now())
            time.sleep(0.05)


class Watcher(threading.Thread):
    """Polls a subscriber for the largest history id it holds and records
    when each id was first seen."""

    def __init__(self, connect):
        super().__init__(daemon=True)
        self.connect = connect
        self.seen = {}
        self.top = 0
        self.stop = False

    def run(self):
        with self.connect() as c:
            while not self.stop:
                try:
                    top = c.execute("SELECT coalesce(max(hid), 0) FROM history").fetchone()[0]
                except psycopg.Error:
                    top = self.top
                now = time.monotonic()
                for hid in range(self.top + 1, top + 1):
                    self.seen[hid] = now
                self.top = max(self.top, top)
                time.sleep(0.02)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--burst", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--quarry", default="target/release/quarry")
    parser.add_argument("--commit")
    args = parser.parse_args()
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True).stdout.strip()
    workdir = tempfile.mkdtemp(prefix="quarry-cdc-")
    source = Server(tcp=True, settings=["wal_level=logical", "max_wal_senders=10",
                                        "max_replication_slots=10"])
    replica = Server(tcp=True)
    node, pg_port, _, _ = start_quarry(args.quarry, workdir)
    results = {}
    try:
        src = psycopg.connect(host="127.0.0.1", port=source.port, user="postgres",
                              dbname="postgres", autocommit=True)
        src.execute(SCHEMA)
        src.execute(f"INSERT INTO accounts SELECT i, (i - 1) / 100000 + 1, 0, repeat(' ', 84) "
                    f"FROM generate_series(1, {args.rows}) i")
        src.execute("CREATE PUBLICATION bench FOR TABLE accounts, history")
        conninfo = f"host=127.0.0.1 port={source.port} user=postgres dbname=postgres"

        def quarry():
            return psycopg.connect(f"host=127.0.0.1 port={pg_port} user=quarry dbname=quarry",
                                   autocommit=True)

        def postgres():
            return psycopg.connect(host="127.0.0.1", port=replica.port, user="postgres",
                                   dbname="postgres", autocommit=True)

        rep = postgres()
        rep.execute(SCHEMA)
        q = quarry()
        # Both copies at once, as the subscriptions start together.
        started = time.monotonic()
        q.execute(f"CREATE SUBSCRIPTION bench_quarry CONNECTION '{conninfo}' PUBLICATION bench")
        # Streaming in-progress transactions, as Quarry's subscription does
        # (pgoutput protocol 2; PostgreSQL's default is off).
        rep.execute(f"CREATE SUBSCRIPTION bench_postgres CONNECTION '{conninfo}' "
                    f"PUBLICATION bench WITH (streaming = on)")
        copied = {}

        def quarry_copied():
            state = q.execute("SELECT state FROM quarry_system.subscriptions").fetchone()
            return state is not None and state[0] == "streaming"

        def postgres_copied():
            return rep.execute("SELECT bool_and(srsubstate = 'r') FROM pg_subscription_rel"
                               ).fetchone()[0] is True

        pending = {"Quarry": quarry_copied, "PostgreSQL": postgres_copied}
        while pending:
            for name, check in list(pending.items()):
                if check():
                    copied[name] = time.monotonic() - started
                    del pending[name]
            if time.monotonic() - started > 3600:
                raise SystemExit(f"copy timed out: {list(pending)}")
            time.sleep(0.05)
        for name in copied:
            results.setdefault(name, {})["copy"] = copied[name]

        watchers = {"Quarry": Watcher(quarry), "PostgreSQL": Watcher(postgres)}
        for w in watchers.values():
            w.start()

        # Steady load: pgbench's transaction at --rate per second.
        committed = {}
        hid = 0
        interval = 1 / args.rate
        next_at = time.monotonic()
        end = next_at + args.seconds
        while time.monotonic() < end:
            hid += 1
            aid = hid * 7919 % args.rows + 1
            with src.transaction():
                src.execute("UPDATE accounts SET abalance = abalance + %s WHERE aid = %s",
                            (hid % 100 - 50, aid))
                src.execute("INSERT INTO history VALUES (%s, %s, %s, clock_timestamp())",
                            (hid, aid, hid % 100 - 50))
            committed[hid] = time.monotonic()
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        steady_last = hid
        for name, w in watchers.items():
            wait(f"{name} to catch up", lambda w=w: w.top >= steady_last, limit=600)
            lags = [w.seen[i] - committed[i] for i in range(1, steady_last + 1)]
            results[name]["p50"] = statistics.median(lags)
            results[name]["p99"] = percentile(lags, 99)
        results["load"] = steady_last / args.seconds

        # Burst: --burst rows in transactions of 1,000.
        first = time.monotonic()
        batch = 1000
        for start in range(steady_last + 1, steady_last + args.burst + 1, batch):
            src.execute(f"INSERT INTO history SELECT i, i % {args.rows} + 1, 1, clock_timestamp() "
                        f"FROM generate_series({start}, {start + batch - 1}) i")
        last = steady_last + args.burst
        for name, w in watchers.items():
            wait(f"{name} to apply the burst", lambda w=w: w.top >= last, limit=3600)
            results[name]["burst"] = args.burst / (w.seen[last] - first)

        # One transaction of --large rows.
        resident = Resident(node.pid)
        results["rss_before"] = resident.peak
        resident.start()
        src.execute(f"INSERT INTO history SELECT i, i % {args.rows} + 1, 1, clock_timestamp() "
                    f"FROM generate_series({last + 1}, {last + args.large}) i")
        committed_at = time.monotonic()
        large_last = last + args.large
        for name, w in watchers.items():
            wait(f"{name} to apply the large transaction", lambda w=w: w.top >= large_last,
                 limit=3600)
            results[name]["large"] = args.large / max(w.seen[large_last] - committed_at, 1e-3)
        resident.stop = True
        results["rss_peak"] = resident.peak
        for w in watchers.values():
            w.stop = True

        # Same rows on every side.
        check = "SELECT count(*), sum(abalance) FROM accounts"
        expected = src.execute(check).fetchone()
        for name, connect in (("Quarry", quarry), ("PostgreSQL", postgres)):
            with connect() as c:
                found = tuple(c.execute(check).fetchone())
            if tuple(int(v) for v in found) != tuple(int(v) for v in expected):
                raise SystemExit(f"{name} has {found}, the source {expected}")
        q.execute("DROP SUBSCRIPTION bench_quarry")
        rep.execute("DROP SUBSCRIPTION bench_postgres")
    finally:
        node.kill()
        node.wait()
        source.stop()
        replica.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    version = subprocess.run([os.path.join(source.bin, "postgres"), "--version"],
                             capture_output=True, text=True).stdout.strip()
    print(machine())
    print(f"command: python3 benches/cdc.py --rows {args.rows} --rate {args.rate} "
          f"--seconds {args.seconds} --burst {args.burst} --large {args.large} "
          f"--quarry {args.quarry}")
    print(f"commit: {commit}; comparison: {version} logical replication subscriber")
    print(f"source load: {results['load']:.1f} transactions/s (pgbench's UPDATE + INSERT)")
    print()
    print("| subscriber | copy of accounts, s | copy, rows/s | lag p50, s | lag p99, s "
          "| burst apply, rows/s | large transaction apply, rows/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("Quarry", "PostgreSQL"):
        r = results[name]
        print(f"| {name} | {r['copy']:.1f} | {args.rows / r['copy']:,.0f} | {r['p50']:.3f} "
              f"| {r['p99']:.3f} | {r['burst']:,.0f} | {r['large']:,.0f} |")
    mib = 1024 * 1024
    print()
    print(f"Quarry's resident memory: {results['rss_before'] / mib:,.0f} MiB before the "
          f"large transaction, {results['rss_peak'] / mib:,.0f} MiB at most while it was "
          f"applied")


if __name__ == "__main__":
    main()
