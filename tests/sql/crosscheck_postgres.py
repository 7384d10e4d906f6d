#!/usr/bin/env python3
"""Runs sqllogictest files through a real PostgreSQL server and checks that it
gives the answers the files expect of Quarry: the expected results, errors and
SQLSTATEs are PostgreSQL's semantics, not just what Quarry happens to return.

    python3 tests/sql/crosscheck_postgres.py tests/sql/dml.slt tests/sql/merge.slt

The server is Debian's `postgresql`, started in a temporary directory and
removed on exit (tests/support/pg_server.py).

Each file runs in a database of its own (a `connection NAME` line switches to
another session on it, as sqllogictest has it). Records that only Quarry has are
skipped: quarry_system tables, SHOW, and records after a `# quarry-only` comment
line (up to the next blank line). For `statement error <SQLSTATE>: ...`,
PostgreSQL must fail with that SQLSTATE (the message pattern is Quarry's and is
not checked). Exits non-zero on the first disagreement.
"""
import datetime
import decimal
import os
import re
import sys

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from pg_server import Server  # noqa: E402


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
        if header.split()[0] == "connection":
            yield header, "", [], quarry_only
            continue
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


def as_text(con):
    """`con` loading arrays and JSON as PostgreSQL's text forms (`{a,b}`,
    the document's text), as the files write them, not as Python lists and
    dicts."""
    from psycopg.types.string import TextLoader

    for info in psycopg.postgres.types:
        if info.name in ("json", "jsonb"):
            con.adapters.register_loader(info.oid, TextLoader)
        if info.array_oid:
            con.adapters.register_loader(info.array_oid, TextLoader)
    return con


def check(server, index, path):
    dbname = f"crosscheck_{index}"
    with server.connect("postgres") as admin:
        admin.execute(f"CREATE DATABASE {dbname}")
    checked = 0
    connections = {"default": as_text(server.connect(dbname))}
    try:
        con = connections["default"]
        for header, sql, expected, quarry_only in records(path):
            words = header.split()
            if words[0] == "connection":
                if words[1] not in connections:
                    connections[words[1]] = as_text(server.connect(dbname))
                con = connections[words[1]]
                continue
            if quarry_only or "quarry_system" in sql or sql.strip().upper().startswith("SHOW"):
                continue
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
        version = con.execute("SHOW server_version").fetchone()[0]
    finally:
        for each in connections.values():
            each.close()
    print(f"{path}: {checked} records agree with PostgreSQL {version}")


def main():
    server = Server()
    try:
        for index, path in enumerate(sys.argv[1:]):
            check(server, index, path)
    finally:
        server.stop()


main()
