#!/usr/bin/env python3
"""Runs sqllogictest files through a real PostgreSQL server and checks that it
gives the answers the files expect of Quarry: the expected results, errors and
SQLSTATEs are PostgreSQL's semantics, not just what Quarry happens to return.

    python3 tests/sql/crosscheck_postgres.py tests/sql/dml.slt tests/sql/merge.slt

The server is Debian's `postgresql` (installed by .ci/run), started here by
`initdb` and `pg_ctl` in a temporary directory, listening on a Unix socket in
that directory only (no TCP port); it is stopped and removed on exit. As root,
it runs as the `postgres` user, since PostgreSQL refuses to run as root.

Each file runs in a database of its own. Records that only Quarry has are
skipped: quarry_system tables, SHOW, and records after a `# quarry-only` comment
line (up to the next blank line). For `statement error <SQLSTATE>: ...`,
PostgreSQL must fail with that SQLSTATE (the message pattern is Quarry's and is
not checked). Exits non-zero on the first disagreement.
"""
import datetime
import decimal
import glob
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile

import psycopg


def records(path):
    """Yields (header, sql, expected rows, quarry_only) of each record."""
    lines = open(path).read().split("\n")
    i = 0
    quarry_only = False
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            quarry_only = False
            i += 1
            continue
        if line.startswith("#"):
            quarry_only = quarry_only or line.startswith("# quarry-only")
            i += 1
            continue
        header = line
        i += 1
        sql = []
        while i < len(lines) and lines[i].strip() and lines[i].strip() != "----":
            sql.append(lines[i])
            i += 1
        expected = []
        if i < len(lines) and lines[i].strip() == "----":
            i += 1
            while i < len(lines) and lines[i].strip():
                expected.append(lines[i].strip())
                i += 1
        yield header, "\n".join(sql), expected, quarry_only


def show(value):
    """A value as sqllogictest files write it (Quarry's text format)."""
    if value is None:
        return "NULL"
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ")
    return str(value)


class Server:
    """A throwaway PostgreSQL server on a Unix socket in a temporary directory."""

    def __init__(self):
        initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                         key=lambda p: int(p.split("/")[4]))
        if not initdbs:
            sys.exit("no PostgreSQL server: install Debian's postgresql (.ci/run does)")
        self.bin = os.path.dirname(initdbs[-1])
        self.dir = tempfile.mkdtemp(prefix="quarry-pg-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                 "-E", "UTF8", "--locale=C")
        self.run("pg_ctl", "-D", self.data, "-w", "-l", os.path.join(self.dir, "log"),
                 "-o", f"-k {self.dir} -c listen_addresses='' -c fsync=off", "start")

    def run(self, program, *args):
        command = [os.path.join(self.bin, program), *args]
        if self.user is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{program} failed: {done.stdout}{done.stderr}")

    def connect(self, dbname):
        return psycopg.connect(host=self.dir, user="postgres", dbname=dbname,
                               autocommit=True)

    def stop(self):
        try:
            self.run("pg_ctl", "-D", self.data, "-w", "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def check(server, index, path):
    dbname = f"crosscheck_{index}"
    with server.connect("postgres") as admin:
        admin.execute(f"CREATE DATABASE {dbname}")
    checked = 0
    with server.connect(dbname) as con:
        for header, sql, expected, quarry_only in records(path):
            if quarry_only or "quarry_system" in sql or sql.strip().upper().startswith("SHOW"):
                continue
            words = header.split()
            where = f"{path}: {sql!r}"
            if words[0] == "statement":
                try:
                    cursor = con.execute(sql)
                except psycopg.Error as e:
                    if words[1] != "error":
                        sys.exit(f"PostgreSQL failed where Quarry must succeed: {where}: {e}")
                    code = re.match(r"([0-9A-Z]{5}):", " ".join(words[2:]))
                    if code and e.sqlstate != code.group(1):
                        sys.exit(f"PostgreSQL fails with {e.sqlstate}, the file expects "
                                 f"{code.group(1)}: {where}: {e}")
                    checked += 1
                    continue
                if words[1] == "error":
                    sys.exit(f"PostgreSQL succeeded where Quarry must fail: {where}")
                if words[1] == "count" and cursor.rowcount != int(words[2]):
                    sys.exit(f"count {cursor.rowcount} != {words[2]}: {where}")
                checked += 1
            elif words[0] == "query":
                rows = [" ".join(show(v) for v in row) for row in con.execute(sql).fetchall()]
                if "rowsort" in words:
                    rows.sort()
                    expected = sorted(expected)
                if rows != expected:
                    sys.exit(f"PostgreSQL gives {rows}, the file expects {expected}: {where}")
                checked += 1
    version = server.connect(dbname).execute("SHOW server_version").fetchone()[0]
    print(f"{path}: {checked} records agree with PostgreSQL {version}")


def main():
    server = Server()
    try:
        for index, path in enumerate(sys.argv[1:]):
            check(server, index, path)
    finally:
        server.stop()


main()
