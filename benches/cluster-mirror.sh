#!/usr/bin/env bash
# Mirror lag on the three-node cluster (the target "a healthy sink's lag stays under 2 s at
# the cluster's sustained ingest rate", benches/RESULTS.md): the Elasticsearch and Loki
# test servers (weir-testkit), `weir dev-cluster` with both sinks, the load generator at
# RATE lines/s (default 20000) for DURATION seconds, and every node's mirror lag sampled
# each second (each node reports the workers of the shards it leads; the sample is the
# largest).
# With OUTAGE=<secs>, both test servers then go down (connections reset) for that long
# while ingest goes on, and the script reports how long each takes to catch up (every
# node's lag under 2 s) and the lines/s it received meanwhile (DRAIN_MAX, default 900 s,
# bounds the wait). The test servers only count what they accept (--count-only), so a
# long run does not fill the memory.
# SHARDS (default 4) sets the cluster's shard count. TESTKIT (default the one built here)
# names another weir-testkit binary, to tell the test servers' share of a change apart.
# ES_LATENCY_MS (default 0) makes the fake Elasticsearch answer every request that much
# later, as a remote or busy cluster does.
# Usage: [RATE=20000] [OUTAGE=0] [SHARDS=4] [TESTKIT=path] [ES_LATENCY_MS=0] benches/cluster-mirror.sh [DURATION_SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-30}
RATE=${RATE:-20000}
OUTAGE=${OUTAGE:-0}
DRAIN_MAX=${DRAIN_MAX:-900}
SHARDS=${SHARDS:-4}
TESTKIT=${TESTKIT:-target/release/weir-testkit}
ES_LATENCY_MS=${ES_LATENCY_MS:-0}
BASE=16317
cargo build --release -p weir-server -p weir-bench -p weir-testkit
DIR=$(mktemp -d "${TMPDIR:-/tmp}/weir-bench-mirror.XXXXXX")
"$TESTKIT" elasticsearch --count-only --addr 127.0.0.1:19200 >"$DIR/es.log" 2>&1 &
ES=$!
"$TESTKIT" loki --count-only --addr 127.0.0.1:13100 >"$DIR/loki.log" 2>&1 &
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
target/release/weir dev-cluster --dir "$DIR" --base-port $BASE --shards "$SHARDS" --extra-config "$DIR/sinks.toml" >"$DIR/dev-cluster.out" 2>&1 &
CLUSTER=$!
BENCH=""
trap 'kill ${BENCH:-} $CLUSTER $ES $LOKI 2>/dev/null; wait $CLUSTER 2>/dev/null; rm -rf "$DIR"' EXIT
. benches/lib.sh
use_dev_key "$DIR"
for _ in $(seq 1 120); do
  target/release/weir cluster status --addr "http://127.0.0.1:$((BASE + 1))" 2>/dev/null | grep -q "health: ok" && break
  sleep 0.5
done
if [ "$ES_LATENCY_MS" -gt 0 ]; then
  curl -sf -XPOST "http://127.0.0.1:19200/_testkit/latency" -d "{\"ms\": $ES_LATENCY_MS}" >/dev/null
  echo "the fake Elasticsearch answers $ES_LATENCY_MS ms late"
fi
ADDRS="http://127.0.0.1:$BASE,http://127.0.0.1:$((BASE + 10)),http://127.0.0.1:$((BASE + 20))"
INGEST_SECS=$DURATION
[ "$OUTAGE" -gt 0 ] && INGEST_SECS=$((DURATION + OUTAGE + DRAIN_MAX))
target/release/weir-bench ingest --addr "$ADDRS" --concurrency 12 --batch 250 --rate "$RATE" --duration-secs "$INGEST_SECS" &
BENCH=$!
# lags: "<es> <loki>", each sink's lag in seconds: the larger of its largest lag_seconds
# over the three nodes and its lag_records summed over them divided by the ingest rate
# (each node reports the shards it leads; lag_seconds alone can miss a shard whose new
# leader has not read yet). A node that does not answer counts as 1e9, so it cannot pass
# for caught up.
lags() {
  python3 - "$BASE" "$RATE" <<'PY'
import json, sys, urllib.request
base, rate = int(sys.argv[1]), float(sys.argv[2])
secs, records = {"es": 0.0, "loki": 0.0}, {"es": 0, "loki": 0}
try:
    for n in range(3):
        with urllib.request.urlopen(f"http://127.0.0.1:{base + 1 + 10 * n}/api/v1/cluster", timeout=5) as r:
            for m in json.load(r).get("mirrors", []):
                secs[m["name"]] = max(secs[m["name"]], m["lag_seconds"])
                records[m["name"]] += m["lag_records"]
    worst = {k: max(secs[k], records[k] / rate) for k in secs}
except Exception:
    worst = {k: 1e9 for k in secs}
print(worst["es"], worst["loki"])
PY
}
max_lag() {
  case $1 in es) lags | cut -d' ' -f1 ;; *) lags | cut -d' ' -f2 ;; esac
}
# count PORT FIELD: what the test server on PORT holds.
count() {
  curl -s "http://127.0.0.1:$1/_testkit/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$2"
}
: >"$DIR/lag"
START=$(date +%s)
while kill -0 $BENCH 2>/dev/null && [ $(($(date +%s) - START)) -lt "$DURATION" ]; do
  lags | awk '{ print ($2 > $1) ? $2 : $1 }' >>"$DIR/lag"
  sleep 1
done
echo "lag samples (s, one a second): $(tr "\n" " " < "$DIR/lag")"
# Whether indexing kept up on every replica: entries each replica's index is behind the
# shard's commit, worst shard, at the end of the healthy phase.
curl -s "http://127.0.0.1:$((BASE + 1))/api/v1/cluster" | python3 -c '
import json, sys
c = json.load(sys.stdin)
worst = {}
for s in c["shards"]:
    for r in s["replicas"]:
        worst[r["node"]] = max(worst.get(r["node"], 0), s["commit"] - r["indexed"])
print("index behind commit at the end (entries, worst shard per node):", dict(sorted(worst.items())))'
sort -g "$DIR/lag" | awk '{ v[NR] = $1 } END { i = int(NR * 0.99) + 1; if (i > NR) i = NR; printf "mirror lag over %d samples: p50 %.2f s, p99 %.2f s, max %.2f s\n", NR, v[int(NR * 0.5) + 1], v[i], v[NR] }'
if [ "$OUTAGE" -gt 0 ]; then
  for port in 19200 13100; do
    curl -s -XPOST "http://127.0.0.1:$port/_testkit/down" -d "{\"down\": true, \"for_ms\": $((OUTAGE * 1000))}" >/dev/null
  done
  echo "outage: both test servers down for $OUTAGE s"
  sleep "$OUTAGE"
  # The servers come back by themselves; wait (at most 30 s) until both answer.
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:19200/_testkit/stats" >/dev/null && curl -sf "http://127.0.0.1:13100/_testkit/stats" >/dev/null && break
    sleep 0.1
  done
  UP=$(date +%s.%N)
  ES0=$(count 19200 doc_count)
  LOKI0=$(count 13100 entry_count)
  echo "back up: elasticsearch holds $ES0, loki $LOKI0; lag at recovery: es $(max_lag es) s, loki $(max_lag loki) s"
  es_done="" loki_done=""
  while [ -z "$es_done" ] || [ -z "$loki_done" ]; do
    sleep 1
    now=$(date +%s.%N)
    el=$(awk -v a="$now" -v b="$UP" 'BEGIN { printf "%.1f", a - b }')
    if awk -v e="$el" -v m="$DRAIN_MAX" 'BEGIN { exit !(e > m) }'; then
      echo "did NOT drain within $DRAIN_MAX s (es done: ${es_done:-no}, loki done: ${loki_done:-no})"
      break
    fi
    if [ -z "$es_done" ] && awk -v l="$(max_lag es)" -v e="$el" 'BEGIN { exit !(l != "" && l + 0 < 2 && e > 2) }'; then
      n=$(count 19200 doc_count)
      es_done=$el
      echo "elasticsearch caught up in $el s: $((n - ES0)) lines received, $(awk -v n=$((n - ES0)) -v e="$el" -v r="$RATE" 'BEGIN { printf "%.0f lines/s = %.1fx the ingest rate", n / e, n / e / r }')"
    fi
    if [ -z "$loki_done" ] && awk -v l="$(max_lag loki)" -v e="$el" 'BEGIN { exit !(l != "" && l + 0 < 2 && e > 2) }'; then
      n=$(count 13100 entry_count)
      loki_done=$el
      echo "loki caught up in $el s: $((n - LOKI0)) lines received, $(awk -v n=$((n - LOKI0)) -v e="$el" -v r="$RATE" 'BEGIN { printf "%.0f lines/s = %.1fx the ingest rate", n / e, n / e / r }')"
    fi
    if [ $((${el%.*} % 30)) -eq 0 ]; then
      echo "  ${el} s after recovery: lag es $(max_lag es) s, loki $(max_lag loki) s"
    fi
  done
  kill $BENCH 2>/dev/null || true
fi
wait $BENCH 2>/dev/null || true
