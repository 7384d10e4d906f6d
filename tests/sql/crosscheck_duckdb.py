#!/usr/bin/env python3
"""Runs sqllogictest files through DuckDB, an independent engine, and checks that
it gives the answers the files expect of Quarry: the expected results are
PostgreSQL's semantics, not just what Quarry happens to return.

    python3 tests/sql/crosscheck_duckdb.py tests/sql/dml.slt tests/sql/merge.slt

Records that only Quarry has (quarry_system tables, SHOW) are skipped. For
`statement error`, DuckDB must fail too (any error). Exits non-zero on the first
disagreement.
"""
import sys

import duckdb


def records(path):
    lines = open(path).read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line or line.startswith("#"):
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
        yield header, "\n".join(sql), expected


def show(value):
    if value is None:
        return "NULL"
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def main():
    for path in sys.argv[1:]:
        con = duckdb.connect()
        checked = 0
        for header, sql, expected in records(path):
            if "quarry_system" in sql or sql.strip().upper().startswith("SHOW"):
                continue
            words = header.split()
            where = f"{path}: {sql!r}"
            if words[0] == "statement":
                try:
                    result = con.execute(sql)
                except duckdb.Error as e:
                    if words[1] != "error":
                        sys.exit(f"DuckDB failed where Quarry must succeed: {where}: {e}")
                    checked += 1
                    continue
                if words[1] == "error":
                    sys.exit(f"DuckDB succeeded where Quarry must fail: {where}")
                if words[1] == "count":
                    row = result.fetchone()
                    got = row[0] if row else 0
                    if got != int(words[2]):
                        sys.exit(f"count {got} != {words[2]}: {where}")
                checked += 1
            elif words[0] == "query":
                rows = [" ".join(show(v) for v in row) for row in con.execute(sql).fetchall()]
                if "rowsort" in words:
                    rows.sort()
                    expected = sorted(expected)
                if rows != expected:
                    sys.exit(f"DuckDB gives {rows}, the file expects {expected}: {where}")
                checked += 1
        print(f"{path}: {checked} records agree with DuckDB {duckdb.__version__}")


main()
