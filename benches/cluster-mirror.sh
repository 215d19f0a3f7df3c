#!/usr/bin/env bash
# Mirror lag on the three-node cluster (issue 4's "a healthy sink's lag stays under 2 s at
# the cluster's sustained ingest rate"): the Elasticsearch and Loki test servers
# (weir-testkit), `weir dev-cluster` with both sinks, the load generator at RATE lines/s
# (default 20000) for DURATION seconds, and every node's mirror lag sampled each second
# (each node reports the workers of the shards it leads; the sample is the largest).
# Usage: benches/cluster-mirror.sh [DURATION_SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-30}
RATE=${RATE:-20000}
BASE=16317
cargo build --release -p weir-server -p weir-bench -p weir-testkit
DIR=$(mktemp -d "${TMPDIR:-/tmp}/weir-bench-mirror.XXXXXX")
target/release/weir-testkit elasticsearch --addr 127.0.0.1:19200 >"$DIR/es.log" 2>&1 &
ES=$!
target/release/weir-testkit loki --addr 127.0.0.1:13100 >"$DIR/loki.log" 2>&1 &
LOKI=$!
cat >"$DIR/sinks.toml" <<'TOML'

[[mirror.sinks]]
name = "es"
type = "elasticsearch"
url = "http://127.0.0.1:19200"

[[mirror.sinks]]
name = "loki"
type = "loki"
url = "http://127.0.0.1:13100"
org_id = "bench"
TOML
target/release/weir dev-cluster --dir "$DIR" --base-port $BASE --extra-config "$DIR/sinks.toml" >"$DIR/dev-cluster.out" 2>&1 &
CLUSTER=$!
trap 'kill $CLUSTER $ES $LOKI 2>/dev/null; wait $CLUSTER 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 1 120); do
  target/release/weir cluster status --addr "http://127.0.0.1:$((BASE + 1))" 2>/dev/null | grep -q "health: ok" && break
  sleep 0.5
done
ADDRS="http://127.0.0.1:$BASE,http://127.0.0.1:$((BASE + 10)),http://127.0.0.1:$((BASE + 20))"
target/release/weir-bench ingest --addr "$ADDRS" --concurrency 12 --batch 250 --rate "$RATE" --duration-secs "$DURATION" &
BENCH=$!
: >"$DIR/lag"
while kill -0 $BENCH 2>/dev/null; do
  max=0
  for n in 0 1 2; do
    for v in $(curl -s "http://127.0.0.1:$((BASE + 1 + 10 * n))/api/v1/cluster" | grep -o '"lag_seconds":[0-9.e+-]*' | cut -d: -f2); do
      max=$(awk -v a="$max" -v b="$v" 'BEGIN { print (b > a) ? b : a }')
    done
  done
  echo "$max" >>"$DIR/lag"
  sleep 1
done
wait $BENCH
echo "lag samples (s, one a second): $(tr "\n" " " < "$DIR/lag")"
sort -g "$DIR/lag" | awk '{ v[NR] = $1 } END { i = int(NR * 0.99) + 1; if (i > NR) i = NR; printf "mirror lag over %d samples: p50 %.2f s, p99 %.2f s, max %.2f s\n", NR, v[int(NR * 0.5) + 1], v[i], v[NR] }'
