#!/usr/bin/env bash
# Builds Quarry (release; its web console needs npm), starts one node on
# 127.0.0.1:5433 (console at http://127.0.0.1:8433/) with its data in
# ./quarry-data, loads TPC-H at scale factor 1 into schema tpch (tables already
# loaded are kept), and keeps the node running until Ctrl-C.
#
#   SCALE_FACTOR=0.1 deploy/demo.sh     # a smaller data set
set -euo pipefail
cd "$(dirname "$0")/.."
scale_factor="${SCALE_FACTOR:-1}"
pg="127.0.0.1:5433"

# The web console is bundled by npm during the build (node/build.rs).
if ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
cargo build --release --bin quarry
# --insecure: a demo on loopback, no passwords (docs/SECURITY.md sets up TLS
# and logins).
./target/release/quarry start --insecure --data-dir quarry-data --pg-listen "$pg" --http-listen 127.0.0.1:8433 &
node=$!
trap 'kill -TERM $node 2>/dev/null; wait $node' INT TERM EXIT

for _ in $(seq 1 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/5433) 2>/dev/null; then break; fi
  sleep 0.1
done
./target/release/quarry load tpch --scale-factor "$scale_factor" --pg "$pg" --url http://127.0.0.1:8433
echo
echo "Quarry is running. Try:"
echo "  psql -h 127.0.0.1 -p 5433 -U quarry quarry -c 'select l_returnflag, count(*) from tpch.lineitem group by 1'"
echo "or open the web console: http://127.0.0.1:8433/"
echo "Ctrl-C stops the node."
wait $node
