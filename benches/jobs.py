#!/usr/bin/env python3
"""What recording every statement as a job costs, and how fast the HTTP query
API pages a large result.

    python3 benches/jobs.py --quarry target/release/quarry [--baseline OLD/quarry] [--seconds 15]

1. Statement rate: pgbench (simple protocol, 4 clients, 2 threads) runs
   `SELECT 1` for `--seconds`, twice, against a fresh Quarry node of
   `--quarry`, of `--baseline` (a build from before job history, if given),
   and against PostgreSQL (Debian's, started by tests/support/pg_server.py).
2. Query API: a 1,000,000-row query (three columns) through `POST
   /v1/queries`, then every page of 100,000 rows as JSON and as Arrow IPC.

Prints the machine, the command and Markdown tables.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "support"))
from pg_server import Server  # noqa: E402
from machine import machine  # noqa: E402

PG, HTTP, RPC = 17201, 17202, 17200


def start_quarry(binary, directory):
    node = subprocess.Popen(
        [binary, "start", "--insecure", "--data-dir", os.path.join(directory, "data"),
         "--listen", f"127.0.0.1:{RPC}", "--pg-listen", f"127.0.0.1:{PG}",
         "--http-listen", f"127.0.0.1:{HTTP}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{HTTP}/ready", timeout=1)
            return node
        except OSError:
            time.sleep(0.1)
    node.kill()
    sys.exit(f"{binary} did not start")


def pgbench(args, seconds, directory):
    script = os.path.join(directory, "select1.sql")
    with open(script, "w") as f:
        f.write("SELECT 1;\n")
    rates = []
    for _ in range(2):
        out = subprocess.run(
            ["pgbench", "-n", "-M", "simple", "-f", script, "-c", "4", "-j", "2", "-T", str(seconds)] + args,
            capture_output=True, text=True, check=True).stdout
        rates.append(float(re.search(r"tps = ([0-9.]+)", out).group(1)))
    return rates


def api(path, body=None, accept=None):
    headers = {"Content-Type": "application/json"}
    if accept:
        headers["Accept"] = accept
    request = urllib.request.Request(
        f"http://127.0.0.1:{HTTP}{path}", data=None if body is None else json.dumps(body).encode(),
        headers=headers, method="POST" if body is not None else "GET")
    return urllib.request.urlopen(request, timeout=600)


def pages(job, accept):
    token, rows, size, started = "0", 0, 0, time.monotonic()
    while token is not None:
        response = api(f"/v1/jobs/{job}/results?page_token={token}&max_rows=100000", accept=accept)
        data = response.read()
        size += len(data)
        if accept:
            token = response.headers.get("x-next-page-token")
        else:
            token = json.loads(data)["next_page_token"]
    return time.monotonic() - started, size


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quarry", default="target/release/quarry")
    parser.add_argument("--baseline")
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    commit = subprocess.run([args.quarry, "--version"], capture_output=True, text=True).stdout.strip()
    print(machine())
    print("command: python3 benches/jobs.py " + " ".join(sys.argv[1:]))
    print(f"build: {commit}")
    rows = []
    builds = [("Quarry", args.quarry)] + ([("Quarry baseline", args.baseline)] if args.baseline else [])
    for label, binary in builds:
        with tempfile.TemporaryDirectory() as directory:
            node = start_quarry(binary, directory)
            try:
                version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
                rates = pgbench(["-h", "127.0.0.1", "-p", str(PG), "-U", "quarry", "quarry"], args.seconds, directory)
                rows.append((f"{label} ({version})", rates))
                if label == "Quarry":
                    started = time.monotonic()
                    job = json.load(api("/v1/queries", {
                        "sql": "SELECT v, v * 2 AS w, md5(v::text) AS h FROM generate_series(1, 1000000) AS g(v)",
                        "timeout_ms": 600000, "max_rows": 1}))
                    ran = time.monotonic() - started
                    json_time, json_size = pages(job["job_id"], None)
                    arrow_time, arrow_size = pages(job["job_id"], "application/vnd.apache.arrow.stream")
            finally:
                node.terminate()
                node.wait()
    server = Server()
    try:
        with tempfile.TemporaryDirectory() as directory:
            os.chmod(directory, 0o755)
            rates = pgbench(["-h", server.dir, "-p", str(server.port), "-U", "postgres", "postgres"],
                            args.seconds, directory)
            rows.append(("PostgreSQL", rates))
    finally:
        server.stop()
    print()
    print("| server | SELECT 1/s, run 1 | run 2 |")
    print("|---|---:|---:|")
    for label, rates in rows:
        print(f"| {label} | {rates[0]:,.0f} | {rates[1]:,.0f} |")
    print()
    print("| 1,000,000 rows through the query API | seconds | MB |")
    print("|---|---:|---:|")
    print(f"| POST /v1/queries (run, write the result file) | {ran:.2f} | |")
    print(f"| 10 pages of 100,000 as JSON | {json_time:.2f} | {json_size / 1e6:.1f} |")
    print(f"| 10 pages of 100,000 as Arrow IPC | {arrow_time:.2f} | {arrow_size / 1e6:.1f} |")


main()
