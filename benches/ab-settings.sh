#!/usr/bin/env bash
# A/B of one session setting over the 22 TPC-H queries on a running node.
#
# Usage: benches/ab-settings.sh HOST "SETTING = A" "SETTING = B"
#
# The node at HOST:5433 holds TPC-H in schema tpch (`quarry load tpch`). For
# each query, three rounds alternate A and B; in each round a fresh psql
# session makes the setting (result cache off, distsql off), runs the query
# once to warm up and three times with `\timing`, and keeps the median. Prints
# per query the median over the rounds for A and for B, and B/A; then the
# geomeans.
set -euo pipefail
host=$1 a=$2 b=$3
here=$(cd "$(dirname "$0")/.." && pwd)
one() {
  { echo "SET search_path = tpch; SET use_query_cache = off; SET distsql = off; SET $1;"
    echo '\o /dev/null'; echo '\timing on'
    for _ in 1 2 3 4; do cat "$2"; echo; done
  } | psql -h "$host" -p 5433 -U quarry -d quarry -X -q 2>&1 \
    | awk '/^Time:/ {print $2}' | tail -3 | sort -n | sed -n 2p
}
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
echo "| query | $a ms | $b ms | B/A |"
echo "|---|---:|---:|---:|"
for f in "$here"/tests/tpch/queries/q*.sql; do
  ta=() tb=()
  for _ in 1 2 3; do ta+=("$(one "$a" "$f")"); tb+=("$(one "$b" "$f")"); done
  echo "$(basename "$f" .sql) $(median "${ta[@]}") $(median "${tb[@]}")"
done | awk '{r = $3 / $2; la += log($2); lb += log($3); n++
             printf "| %s | %.1f | %.1f | %.2f |\n", $1, $2, $3, r}
            END {printf "| **geomean** | **%.1f** | **%.1f** | **%.3f** |\n", exp(la/n), exp(lb/n), exp((lb-la)/n)}'
