#!/usr/bin/env python3
"""Connection setup: how long a client waits from connect() to a session
ready for queries, on Quarry and on PostgreSQL, with the same client and the
same certificate, in one run.

    python3 benches/connect.py [--quarry target/release/quarry] [--connections 500]

Both servers authenticate with SCRAM-SHA-256 (4096 iterations, PostgreSQL's
default): a Quarry node started with --initial-password-file and its TLS
certificate, and a PostgreSQL server (Debian's, started in a temporary
directory by tests/support/pg_server.py) with `scram-sha-256` in pg_hba.conf
and the same certificate. The client is psycopg (libpq); each connection is
opened, asked `SELECT 1`, and closed, one after another, in two modes:

- `plain + SCRAM`: TCP, no TLS (sslmode=disable);
- `TLS + SCRAM-PLUS`: TLS verified against the CA (sslmode=verify-full) and
  SCRAM-SHA-256-PLUS (channel_binding=require).

The time of one connection includes the client's PBKDF2 (the same for both
servers). Prints the machine, the command, and a Markdown table of p50, p99
and mean in milliseconds.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "support"))
from pg_server import Server  # noqa: E402
from machine import machine  # noqa: E402  (benches/, the script's directory)

PASSWORD = "bench-Password-1"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def quarry_cert(quarry, certs, *args):
    subprocess.run([quarry, "cert", *args, "--certs-dir", certs], check=True, capture_output=True)


def start_quarry(quarry, workdir, certs):
    password_file = os.path.join(workdir, "password")
    with open(password_file, "w") as out:
        out.write(PASSWORD + "\n")
    port = free_port()
    log = open(os.path.join(workdir, "quarry.log"), "w")
    node = subprocess.Popen(
        [quarry, "start", "--data-dir", os.path.join(workdir, "data"),
         "--pg-listen", f"127.0.0.1:{port}", "--http-listen", f"127.0.0.1:{free_port()}",
         "--listen", f"127.0.0.1:{free_port()}",
         "--tls-cert", os.path.join(certs, "node.crt"), "--tls-key", os.path.join(certs, "node.key"),
         "--initial-password-file", password_file],
        stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 60
    while True:
        try:
            psycopg.connect(host="127.0.0.1", port=port, user="quarry", password=PASSWORD,
                            dbname="quarry", sslmode="disable").close()
            return node, port
        except psycopg.OperationalError:
            if time.time() > deadline or node.poll() is not None:
                sys.exit(f"quarry did not start: {open(log.name).read()}")
            time.sleep(0.1)


def measure(count, **params):
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with psycopg.connect(**params) as conn:
            conn.execute("SELECT 1").fetchone()
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quarry", default="target/release/quarry")
    parser.add_argument("--connections", type=int, default=500)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="quarry-connect-")
    certs = os.path.join(workdir, "certs")
    quarry_cert(args.quarry, certs, "create-ca")
    quarry_cert(args.quarry, certs, "create-node", "--host", "localhost", "--host", "127.0.0.1")
    node, quarry_port = start_quarry(args.quarry, workdir, certs)
    server = Server(
        tcp=True,
        settings=["ssl=on", "ssl_cert_file=server.crt", "ssl_key_file=server.key",
                  "password_encryption=scram-sha-256"],
        hba=["local all all trust",
             "host all all 127.0.0.1/32 scram-sha-256"],
        files=[(os.path.join(certs, "node.crt"), "server.crt"),
               (os.path.join(certs, "node.key"), "server.key")],
    )
    try:
        with server.connect("postgres") as admin:
            admin.execute(f"ALTER ROLE postgres PASSWORD '{PASSWORD}'")
        servers = [
            ("Quarry", dict(port=quarry_port, user="quarry", dbname="quarry")),
            ("PostgreSQL", dict(port=server.port, user="postgres", dbname="postgres")),
        ]
        modes = [
            ("plain + SCRAM", dict(sslmode="disable")),
            ("TLS + SCRAM-PLUS", dict(sslmode="verify-full", sslrootcert=os.path.join(certs, "ca.crt"),
                                      channel_binding="require")),
        ]
        rows = []
        for mode, mode_params in modes:
            for name, server_params in servers:
                params = dict(host="localhost", password=PASSWORD, **server_params, **mode_params)
                measure(20, **params)  # warm-up
                times = measure(args.connections, **params)
                p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
                rows.append((mode, name, statistics.median(times), p99, statistics.mean(times)))
    finally:
        server.stop()
        node.terminate()
        node.wait()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(machine())
    print(f"command: python3 benches/connect.py --quarry {args.quarry} --connections {args.connections}")
    print(f"commit: {commit}; PostgreSQL: {os.path.basename(os.path.dirname(server.bin))}")
    print()
    print(f"| mode | server | p50 ms | p99 ms | mean ms |")
    print("|---|---|---:|---:|---:|")
    for mode, name, p50, p99, mean in rows:
        print(f"| {mode} | {name} | {p50:.2f} | {p99:.2f} | {mean:.2f} |")


if __name__ == "__main__":
    main()
