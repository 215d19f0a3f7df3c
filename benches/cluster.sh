#!/usr/bin/env bash
# The three-node benchmark of benches/RESULTS.md: all three nodes and the load generator on
# this one machine. Builds release binaries, starts `weir dev-cluster` on loopback ports,
# then runs:
#   1. ingest as fast as acknowledgements allow, clients spread over the three nodes;
#   2. ingest at a fixed rate (RATE lines/s, default 30000) for latency;
#   3. the same rate while the leader of shard 0 is SIGKILLed 10 s in: the load generator
#      reports the longest time no acknowledgement completed (the failover interruption).
# Usage: benches/cluster.sh [DURATION_SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-30}
RATE=${RATE:-30000}
BASE=15317
cargo build --release -p weir-server -p weir-bench
DIR=$(mktemp -d "${TMPDIR:-/tmp}/weir-bench-cluster.XXXXXX")
ADDRS="http://127.0.0.1:$BASE,http://127.0.0.1:$((BASE + 10)),http://127.0.0.1:$((BASE + 20))"
target/release/weir dev-cluster --dir "$DIR" --base-port $BASE >"$DIR/dev-cluster.out" 2>&1 &
CLUSTER=$!
trap 'kill $CLUSTER 2>/dev/null; wait $CLUSTER 2>/dev/null; rm -rf "$DIR"' EXIT
. benches/lib.sh
use_dev_key "$DIR"
healthy() { wait_healthy target/release/weir $((BASE + 1)) 120; }
healthy
echo "== max rate"
target/release/weir-bench ingest --addr "$ADDRS" --concurrency 12 --batch 1000 --duration-secs "$DURATION"
echo "== $RATE lines/s"
target/release/weir-bench ingest --addr "$ADDRS" --concurrency 12 --batch 250 --rate "$RATE" --duration-secs "$DURATION"
echo "== $RATE lines/s, leader of shard 0 killed 10 s in"
target/release/weir-bench ingest --addr "$ADDRS" --concurrency 12 --batch 250 --rate "$RATE" --duration-secs "$DURATION" &
BENCH=$!
sleep 10
LEADER=$(target/release/weir cluster status --addr "http://127.0.0.1:$((BASE + 1))" | awk '$1 == "0" { print $2 }')
PID=$(pgrep -f "$DIR/node$LEADER.toml")
echo "killing node $LEADER (pid $PID), leader of shard 0"
kill -9 "$PID"
wait $BENCH
