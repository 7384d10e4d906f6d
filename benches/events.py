#!/usr/bin/env python3
"""Nested data: a GitHub-events-like NDJSON data set loaded into Quarry and
into DuckDB, then queried by a nested field, through UNNEST and through a
JSON path, side by side in one run.

    python3 benches/events.py [--rows 10000000] [--files 8]
        [--quarry target/release/quarry] [--threads 2] [--workdir DIR]

The data (generated here, by DuckDB, deterministically from the row
number): one event per line, as GitHub's event API shapes them,

    {"id": 17, "type": "PushEvent", "created_at": "2026-...Z",
     "actor": {"id": 4, "login": "user4"},
     "repo": {"id": 311, "name": "org11/repo311"},
     "commits": [{"sha": "...", "author": {"name": "dev12", "email": "..."},
                  "message": "...", "is_distinct": true}, ...],
     "payload": {"action": "opened", "pull_request": {"number": 9,
                 "additions": 120, "deletions": 4, "merged": false}}}

where actors are skewed (a few very active), a PushEvent has one to four
commits and other events none, and `payload`'s keys depend on the event
type. `--files` NDJSON files of `--rows` rows in all.

Loading: Quarry's table is created first (`actor`, `repo` STRUCT,
`commits` ARRAY<STRUCT<...>>, `payload` JSON), then `quarry load` sends the
files (parsed on the client by arrow-json, two at once, one commit);
DuckDB reads the same files with `read_json` into a table of its own
database file (`payload` as its JSON type), checkpointed. Both are timed
from start to the rows committed.

Queries, each run three times per engine (the median is printed), their
answers compared row by row (the run fails if they differ):

Quarry's result cache is off for them (`SET use_query_cache = off`).

- Q1, top-N by a nested field: events per `actor.login`, top 10.
- Q2, UNNEST of an array: commits per `author.name` of PushEvents' commits.
- Q3, a JSON path filter: PullRequestEvents whose `payload->>'action'` is
  `opened`, summing `payload->'pull_request'->>'additions'` per repo.

Prints the machine, the command, the commit and a Markdown table.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine  # noqa: E402
from stream import start_quarry  # noqa: E402

EVENT_TYPES = ["PushEvent", "PullRequestEvent", "IssuesEvent", "WatchEvent", "ForkEvent",
               "IssueCommentEvent"]

# One event per row number i, as DuckDB SQL over range(); hash(i, k) is
# DuckDB's (deterministic) hash of the tuple.
GENERATE = """
SELECT
  i AS id,
  list_element({types}, 1 + (hash(i, 1) % 6)::INTEGER) AS type,
  strftime(TIMESTAMP '2026-01-01' + to_seconds((hash(i, 2) % 31536000)::BIGINT),
           '%Y-%m-%dT%H:%M:%SZ') AS created_at,
  {{'id': a, 'login': 'user' || a}} AS actor,
  {{'id': r, 'name': 'org' || (r % 1000) || '/repo' || r}} AS repo,
  CASE WHEN hash(i, 1) % 6 = 0 THEN
    list_transform(range(1 + (hash(i, 3) % 4)::BIGINT), lambda k: {{
      'sha': md5(i::VARCHAR || '/' || k),
      'author': {{'name': 'dev' || (hash(i, k, 4) % 5000),
                 'email': 'dev' || (hash(i, k, 4) % 5000) || '@example.com'}},
      'message': 'change ' || k || ' of event ' || i,
      'is_distinct': hash(i, k, 5) % 3 <> 0}})
  ELSE [] END AS commits,
  CASE hash(i, 1) % 6
    WHEN 0 THEN to_json({{'push_id': i, 'ref': 'refs/heads/main',
                         'size': 1 + hash(i, 3) % 4}})
    WHEN 1 THEN to_json({{'action': list_element(['opened', 'closed', 'reopened'],
                                                1 + (hash(i, 6) % 3)::INTEGER),
                         'number': hash(i, 7) % 10000,
                         'pull_request': {{'number': hash(i, 7) % 10000,
                                          'additions': hash(i, 8) % 500,
                                          'deletions': hash(i, 9) % 200,
                                          'merged': hash(i, 10) % 2 = 0}}}})
    WHEN 2 THEN to_json({{'action': list_element(['opened', 'closed'],
                                                1 + (hash(i, 6) % 2)::INTEGER),
                         'issue': {{'number': hash(i, 7) % 10000,
                                   'comments': hash(i, 8) % 30}}}})
    WHEN 5 THEN to_json({{'action': 'created',
                         'comment': {{'id': i, 'body_length': hash(i, 8) % 2000}}}})
    ELSE to_json({{'action': 'started'}})
  END AS payload
FROM (
  SELECT i,
         (200000 * pow((hash(i, 11) % 1000000) / 1000000.0, 3))::BIGINT AS a,
         (hash(i, 12) % 50000)::BIGINT AS r
  FROM range({start}, {end}) AS t(i)
)
"""

QUARRY_TABLE = """CREATE TABLE events (
  id bigint, type text, created_at timestamptz,
  actor STRUCT<id INT64, login STRING>,
  repo STRUCT<id INT64, name STRING>,
  commits ARRAY<STRUCT<sha STRING, author STRUCT<name STRING, email STRING>, message STRING,
                       is_distinct BOOL>>,
  payload JSON)"""

DUCKDB_COLUMNS = """{
  'id': 'BIGINT', 'type': 'VARCHAR', 'created_at': 'TIMESTAMPTZ',
  'actor': 'STRUCT(id BIGINT, login VARCHAR)',
  'repo': 'STRUCT(id BIGINT, name VARCHAR)',
  'commits': 'STRUCT(sha VARCHAR, author STRUCT(name VARCHAR, email VARCHAR), message VARCHAR, is_distinct BOOLEAN)[]',
  'payload': 'JSON'}"""

# (name, Quarry's SQL, DuckDB's SQL): the same question in each one's
# spelling where they differ (UNNEST in FROM).
QUERIES = [
    ("Q1 top-N by actor.login",
     "SELECT actor.login AS login, count(*) AS events FROM events "
     "GROUP BY actor.login ORDER BY events DESC, login LIMIT 10",
     "SELECT actor.login AS login, count(*) AS events FROM events "
     "GROUP BY actor.login ORDER BY events DESC, login LIMIT 10"),
    ("Q2 UNNEST(commits) by author",
     "SELECT c.author.name AS author, count(*) AS commits "
     "FROM events AS e, UNNEST(e.commits) AS c WHERE e.type = 'PushEvent' "
     "GROUP BY c.author.name ORDER BY commits DESC, author LIMIT 10",
     "SELECT c.author.name AS author, count(*) AS commits "
     "FROM (SELECT unnest(commits) AS c FROM events WHERE type = 'PushEvent') AS u "
     "GROUP BY c.author.name ORDER BY commits DESC, author LIMIT 10"),
    ("Q3 JSON path filter",
     "SELECT repo.name AS repo, sum(CAST(payload->'pull_request'->>'additions' AS BIGINT)) "
     "AS additions FROM events "
     "WHERE type = 'PullRequestEvent' AND payload->>'action' = 'opened' "
     "GROUP BY repo.name ORDER BY additions DESC, repo LIMIT 10",
     "SELECT repo.name AS repo, sum(CAST(payload->'pull_request'->>'additions' AS BIGINT)) "
     "AS additions FROM events "
     "WHERE type = 'PullRequestEvent' AND payload->>'action' = 'opened' "
     "GROUP BY repo.name ORDER BY additions DESC, repo LIMIT 10"),
]

RUNS = 3


def generate(duck, directory, rows, files):
    """Writes `files` NDJSON files of `rows` events in all under
    `directory`; their paths and total size."""
    types = "[" + ", ".join(f"'{t}'" for t in EVENT_TYPES) + "]"
    paths = []
    for k in range(files):
        start, end = rows * k // files, rows * (k + 1) // files
        path = os.path.join(directory, f"events-{k:02}.json")
        duck.execute(f"COPY ({GENERATE.format(types=types, start=start, end=end)}) "
                     f"TO '{path}' (FORMAT JSON)")
        paths.append(path)
    return paths, sum(os.path.getsize(p) for p in paths)


def timed(run):
    """The median seconds of RUNS runs of `run`, and its last answer."""
    seconds, answer = [], None
    for _ in range(RUNS):
        started = time.monotonic()
        answer = run()
        seconds.append(time.monotonic() - started)
    return statistics.median(seconds), answer


def normal(rows):
    return [tuple(str(v) for v in row) for row in rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--quarry", default="target/release/quarry")
    parser.add_argument("--commit", help="the commit the binary was built at [default: HEAD]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where the files and databases go")
    args = parser.parse_args()
    import duckdb

    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True).stdout.strip()
    loads, results = [], []
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        duck = duckdb.connect(os.path.join(workdir, "duck.db"))
        duck.execute(f"SET threads = {args.threads}")
        started = time.monotonic()
        paths, size = generate(duck, workdir, args.rows, args.files)
        print(f"generated {args.rows} events in {len(paths)} files, {size / 2**30:.2f} GiB, "
              f"in {time.monotonic() - started:.0f} s", file=sys.stderr)

        node, pg, http, _ = start_quarry(args.quarry, workdir)
        try:
            conninfo = f"host=127.0.0.1 port={pg} user=quarry dbname=quarry"
            with psycopg.connect(conninfo, autocommit=True) as c:
                c.execute(QUARRY_TABLE)
            started = time.monotonic()
            subprocess.run([args.quarry, "load", *paths, "--table", "public.events",
                            "--url", f"http://127.0.0.1:{http}", "--pg", f"127.0.0.1:{pg}"],
                           check=True, stdout=subprocess.DEVNULL)
            quarry_load = time.monotonic() - started
            with psycopg.connect(conninfo, autocommit=True) as c:
                quarry_rows = c.execute("SELECT count(*) FROM events").fetchone()[0]
                stored = c.execute(
                    "SELECT size_bytes FROM quarry_system.tables "
                    "WHERE table_schema = 'public' AND table_name = 'events'").fetchone()[0]
                # Every run computes its answer (BigQuery's use_query_cache).
                c.execute("SET use_query_cache = off")
                quarry_answers = {}
                for name, sql, _ in QUERIES:
                    quarry_answers[name] = timed(lambda: c.execute(sql).fetchall())
        finally:
            node.terminate()
            node.wait(timeout=60)

        started = time.monotonic()
        duck.execute("CREATE TABLE events AS SELECT * FROM read_json("
                     f"{[p for p in paths]}, format = 'newline_delimited', "
                     f"columns = {DUCKDB_COLUMNS})")
        duck.execute("CHECKPOINT")
        duck_load = time.monotonic() - started
        duck_rows = duck.execute("SELECT count(*) FROM events").fetchone()[0]
        duck_size = os.path.getsize(os.path.join(workdir, "duck.db"))
        loads.append(("Quarry (quarry load, 1 node)", quarry_rows, quarry_load,
                      f"{stored / 2**30:.2f} GiB of data files"))
        loads.append((f"DuckDB {duckdb.__version__} (CTAS read_json, {args.threads} threads)",
                       duck_rows, duck_load, f"database file {duck_size / 2**30:.2f} GiB"))
        differ = []
        for name, _, sql in QUERIES:
            duck_seconds, duck_answer = timed(lambda: duck.execute(sql).fetchall())
            quarry_seconds, quarry_answer = quarry_answers[name]
            if normal(quarry_answer) != normal(duck_answer):
                differ.append((name, quarry_answer, duck_answer))
            results.append((name, len(quarry_answer), quarry_seconds, duck_seconds))
        duck.close()

    print(machine())
    print("command: python3 benches/events.py " + " ".join(sys.argv[1:]))
    print(f"commit: {commit}; {args.rows} events in {len(paths)} NDJSON files, "
          f"{size / 2**30:.2f} GiB")
    print()
    print("| load | rows | seconds | rows/s | stored |")
    print("|---|---:|---:|---:|---|")
    for name, rows, seconds, stored in loads:
        print(f"| {name} | {rows} | {seconds:.1f} | {rows / seconds:,.0f} | {stored} |")
    print()
    print(f"| query (median of {RUNS}) | rows | Quarry s | DuckDB s | Quarry / DuckDB |")
    print("|---|---:|---:|---:|---:|")
    for name, rows, quarry_seconds, duck_seconds in results:
        print(f"| {name} | {rows} | {quarry_seconds:.3f} | {duck_seconds:.3f} | "
              f"{quarry_seconds / duck_seconds:.2f} |")
    if quarry_rows != duck_rows or differ:
        for name, quarry_answer, duck_answer in differ:
            print(f"{name}: answers differ\n  Quarry: {quarry_answer}\n  DuckDB: {duck_answer}",
                  file=sys.stderr)
        raise SystemExit(f"rows loaded: Quarry {quarry_rows}, DuckDB {duck_rows}; "
                         f"{len(differ)} answers differ")


if __name__ == "__main__":
    main()
