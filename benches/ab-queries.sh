#!/usr/bin/env bash
# A/B of single TPC-H queries between two builds on one loaded cluster.
#
# Usage: benches/ab-queries.sh BIN_A BIN_B DATA_DIR FIRST_ADDRESS NODES "q03 q05 …" RUNS
#
# BIN_A and BIN_B are directories holding a `quarry` binary each; DATA_DIR is
# a cluster's data directory that `quarry-bench tpch --dir` left loaded. For
# two rounds, each build in turn starts the cluster on DATA_DIR, runs every
# query RUNS times with psql `\timing` and stops it. Prints, per build, round
# and query, the times in ms of all runs but the first (a warm-up), sorted.
set -euo pipefail
bin_a=$1 bin_b=$2 dir=$3 addr=$4 nodes=$5 queries=$6 runs=$7
here=$(cd "$(dirname "$0")/.." && pwd)
for bin in "$bin_a" "$bin_b"; do
  [ -x "$bin/quarry" ] || { echo "no quarry binary in $bin" >&2; exit 2; }
done
pid=
stop() { if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi; }
trap stop EXIT
for round in 1 2; do
  for build in A B; do
    bin=$bin_a; [ "$build" = B ] && bin=$bin_b
    "$bin/quarry" cluster local --nodes "$nodes" --data-dir "$dir" --first-address "$addr" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 120); do
      psql -h "$addr" -p 5433 -U quarry -c "SELECT count(*) FROM tpch.nation" >/dev/null 2>&1 && break
      sleep 1
    done
    for q in $queries; do
      times=$( (echo 'SET search_path = tpch;'; echo '\timing on'
                for _ in $(seq "$runs"); do cat "$here/tests/tpch/queries/$q.sql"; echo; done) |
               psql -h "$addr" -p 5433 -U quarry -q | awk '/^Time/ {print $2}' | tail -n +2 | sort -n | tr '\n' ' ')
      echo "$build $round $q $times"
    done
    stop
  done
done
