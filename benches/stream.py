#!/usr/bin/env python3
"""Streaming ingestion: sustained rows/s through the streaming API with
several writers, each request's acknowledgement latency, and how long after
its acknowledgement a row is visible to a poller's SELECT, on one node or a
cluster.

    python3 benches/stream.py [--quarry target/release/quarry] [--seconds 60]
        [--writers 4] [--batch-rows 1000] [--nodes 1]

Starts Quarry nodes (--insecure, in a temporary directory; the second and
later join the first, and writer i sends to node i mod n), then, for each
body format (NDJSON, then Arrow IPC), a table of its own: `--writers`
threads, each with its own channel, send `--batch-rows` rows per request
with offsets for `--seconds`, as fast as the node acknowledges them
(requests' sessions kept alive, `requests`); a poller asks every 20 ms
`SELECT writer, max(seq) ... WHERE seq > S GROUP BY writer` over the
PostgreSQL wire (psycopg), S the least of the writers' newest rows it has
seen (so the data files' zone maps spare it the older rows), and notes for
each acknowledged request the start of the first query that saw its last
row (a SELECT sees what was committed when it started). Prints the
machine, the command, the commit and a Markdown table: rows/s,
acknowledgement p50/p99, acknowledgement-to-visible p50/p99 (which
includes the poller's period and the time one query takes), the same p99s over the first and the last
third of the run (flat when the cost of a request does not grow with the
table), and the most data files in stripes and files in the ingest buffer
the table had (sampled every second; the compactor moves the buffer into
data files every --compaction-interval-secs, 10 by default).
"""
import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psycopg
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine  # noqa: E402


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_quarry(quarry, workdir, name="n1", join=None):
    """A node: (process, PostgreSQL port, HTTP port, listen address)."""
    pg, http = free_port(), free_port()
    listen = f"127.0.0.1:{free_port()}"
    log = open(os.path.join(workdir, f"{name}.log"), "w")
    node = subprocess.Popen(
        [quarry, "start", "--insecure", "--data-dir", os.path.join(workdir, name),
         "--pg-listen", f"127.0.0.1:{pg}", "--http-listen", f"127.0.0.1:{http}",
         "--listen", listen] + (["--join", join] if join else []),
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(f"host=127.0.0.1 port={pg} user=quarry dbname=quarry", autocommit=True) as c:
                c.execute("SELECT 1")
            return node, pg, http, listen
        except psycopg.OperationalError:
            time.sleep(0.2)
    node.kill()
    raise SystemExit(f"node {name} did not start; see {name}.log")


def ndjson_body(writer, start, count):
    return "".join(
        json.dumps({"writer": writer, "seq": i, "name": f"event-{i}", "amount": i * 0.5}) + "\n"
        for i in range(start, start + count)
    ).encode(), "application/x-ndjson"


def arrow_body(writer, start, count):
    import pyarrow as pa

    seqs = list(range(start, start + count))
    table = pa.table({
        "writer": pa.array([writer] * count, pa.int32()),
        "seq": pa.array(seqs, pa.int64()),
        "name": pa.array([f"event-{i}" for i in seqs]),
        "amount": pa.array([i * 0.5 for i in seqs], pa.float64()),
    })
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as out:
        out.write_table(table)
    return sink.getvalue(), "application/vnd.apache.arrow.stream"


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def run(args, pg, https, table, encode):
    with psycopg.connect(f"host=127.0.0.1 port={pg} user=quarry dbname=quarry", autocommit=True) as c:
        c.execute(f"CREATE TABLE {table} (writer int, seq bigint, name text, amount double precision)")
    stop = time.monotonic() + args.seconds
    acks = []          # (writer, last seq, ack time) per request
    ack_ms = []
    lock = threading.Lock()
    rows_total = [0]

    def writer(number):
        session = requests.Session()
        http = https[number % len(https)]
        url = f"http://127.0.0.1:{http}/v1/tables/public.{table}/channels/w{number}/rows"
        offset = 0
        while time.monotonic() < stop:
            body, content_type = encode(number, offset, args.batch_rows)
            started = time.monotonic()
            answer = session.post(url, params={"offset": offset}, data=body,
                                  headers={"Content-Type": content_type}, timeout=60)
            done = time.monotonic()
            if answer.status_code not in (200, 409):
                raise SystemExit(f"writer {number}: {answer.status_code} {answer.text}")
            offset = answer.json()["next_offset"]
            with lock:
                acks.append((number, offset - 1, done, started))
                ack_ms.append((done - started) * 1000)
                rows_total[0] += args.batch_rows

    seen = {}          # writer -> [(max seq, first seen at)]
    def poller():
        with psycopg.connect(f"host=127.0.0.1 port={pg} user=quarry dbname=quarry", autocommit=True) as c:
            while time.monotonic() < stop + 1:
                floor = min((seen[n][-1][0] for n in range(args.writers) if n in seen), default=-1)
                if len(seen) < args.writers:
                    floor = -1
                now = time.monotonic()
                rows = c.execute(
                    f"SELECT writer, max(seq) FROM {table} WHERE seq > {floor} GROUP BY writer"
                ).fetchall()
                for number, top in rows:
                    history = seen.setdefault(number, [])
                    if not history or history[-1][0] < top:
                        history.append((top, now))
                time.sleep(0.02)

    most = {"data": 0, "buffered": 0}
    def counter():
        with psycopg.connect(f"host=127.0.0.1 port={pg} user=quarry dbname=quarry", autocommit=True) as c:
            while time.monotonic() < stop:
                data, buffered = c.execute(
                    "SELECT CAST(data_files AS BIGINT), CAST(buffered_files AS BIGINT) "
                    "FROM quarry_system.tables WHERE table_name = %s", (table,)).fetchone()
                most["data"] = max(most["data"], data)
                most["buffered"] = max(most["buffered"], buffered)
                time.sleep(1)

    started = time.monotonic()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(args.writers)]
    watchers = [threading.Thread(target=poller), threading.Thread(target=counter)]
    for t in threads + watchers:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    for t in watchers:
        t.join()
    third = args.seconds / 3
    visible_ms, first, last_third = [], {"ack": [], "vis": []}, {"ack": [], "vis": []}
    for (number, last, acked, sent), ms in zip(acks, ack_ms):
        part = first if sent - started < third else last_third if sent - started >= 2 * third else None
        if part is not None:
            part["ack"].append(ms)
        for top, at in seen.get(number, []):
            if top >= last:
                visible = max(0.0, (at - acked) * 1000)
                visible_ms.append(visible)
                if part is not None:
                    part["vis"].append(visible)
                break
    with psycopg.connect(f"host=127.0.0.1 port={pg} user=quarry dbname=quarry", autocommit=True) as c:
        files, = c.execute(
            "SELECT CAST(data_files AS BIGINT) FROM quarry_system.tables WHERE table_name = %s",
            (table,)).fetchone()
        count, = c.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert count == rows_total[0], (count, rows_total[0])
    return {
        "rows_per_s": rows_total[0] / elapsed,
        "requests": len(acks),
        "ack_p50": percentile(ack_ms, 50), "ack_p99": percentile(ack_ms, 99),
        "vis_p50": percentile(visible_ms, 50), "vis_p99": percentile(visible_ms, 99),
        "files": files, "rows": count,
        "most_data": most["data"], "most_buffered": most["buffered"],
        "first": {k: percentile(v, 99) for k, v in first.items()},
        "last": {k: percentile(v, 99) for k, v in last_third.items()},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quarry", default="target/release/quarry")
    parser.add_argument("--commit", help="the commit the binary was built at [default: HEAD]")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--batch-rows", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=1)
    args = parser.parse_args()
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as workdir:
        first = start_quarry(args.quarry, workdir)
        nodes = [first] + [start_quarry(args.quarry, workdir, f"n{i + 1}", join=first[3])
                           for i in range(1, args.nodes)]
        pg, https = first[1], [n[2] for n in nodes]
        try:
            results = [
                ("NDJSON", run(args, pg, https, "stream_ndjson", ndjson_body)),
                ("Arrow IPC", run(args, pg, https, "stream_arrow", arrow_body)),
            ]
        finally:
            for node in nodes:
                node[0].terminate()
            for node in nodes:
                node[0].wait(timeout=30)
    print(machine())
    print("command: python3 benches/stream.py " + " ".join(sys.argv[1:]))
    print(f"commit: {commit}; {args.nodes} node(s); {args.writers} writers, {args.batch_rows} rows "
          f"per request, {args.seconds:.0f} s per format")
    print()
    print("| body | rows/s | requests | ack p50 ms | ack p99 ms | ack→visible p50 ms | ack→visible p99 ms "
          "| ack p99 first/last third ms | ack→visible p99 first/last third ms | rows "
          "| most data files | most buffered files | data files at end |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results:
        print(f"| {name} | {r['rows_per_s']:.0f} | {r['requests']} | {r['ack_p50']:.1f} | {r['ack_p99']:.1f} | "
              f"{r['vis_p50']:.1f} | {r['vis_p99']:.1f} | "
              f"{r['first']['ack']:.1f} / {r['last']['ack']:.1f} | {r['first']['vis']:.1f} / {r['last']['vis']:.1f} | "
              f"{r['rows']} | {r['most_data']} | {r['most_buffered']} | {r['files']} |")


if __name__ == "__main__":
    main()
