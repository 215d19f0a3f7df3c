#!/usr/bin/env bash
# Index once per shard (benches/RESULTS.md, "Three nodes: index once per shard"): all three
# nodes and the load generator on this one machine, SHARDS shards (4), replication factor 3. For
# each value of cluster.segment_replication in MODES ("true false" by default) it starts a
# fresh cluster, ingests as fast as acknowledgements allow for DURATION s (12 clients x
# 1000-line batches spread over the nodes, a search probe on node 3 every 250 ms), then
# waits until every replica's index holds what its shard's leader indexed, and reports the
# time that took, lines/s searchable on every node (lines / (ingest + catch-up)), and each
# node's CPU seconds (utime + stime from /proc) and records indexed.
# Usage: benches/segments.sh [DURATION_SECS]      (BIN=target/release by default)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-60}
MODES=${MODES:-"true false"}
SHARDS=${SHARDS:-4}
BIN=${BIN:-target/release}
BASE=15417
. benches/lib.sh
[ -x "$BIN/weir" ] && [ -x "$BIN/weir-bench" ] || cargo build --release -p weir-server -p weir-bench

cpu_secs() { awk '{ printf "%.1f", ($14 + $15) / 100 }' "/proc/$1/stat"; }

# caught_up HTTP_PORT: true when, for every shard, every replica has indexed as far as
# the furthest one.
caught_up() {
  curl -sf "http://127.0.0.1:$1/api/v1/cluster" | python3 -c '
import json, sys
s = json.load(sys.stdin)
ok = all(len({r["indexed"] for r in sh["replicas"]}) == 1 and len(sh["replicas"]) == 3 for sh in s["shards"])
print(" ".join(str(max(r["indexed"] for r in sh["replicas"])) for sh in s["shards"]))
sys.exit(0 if ok else 1)'
}

for MODE in $MODES; do
  DIR=$(mktemp -d "${TMPDIR:-/tmp}/weir-bench-segments.XXXXXX")
  PIDS=()
  for i in 1 2 3; do
    read -r G H P < <(echo $((BASE + 10 * (i - 1))) $((BASE + 10 * (i - 1) + 1)) $((BASE + 10 * (i - 1) + 2)))
    {
      echo "data_dir = \"$DIR/node$i\""
      echo "grpc_addr = \"127.0.0.1:$G\""
      echo "http_addr = \"127.0.0.1:$H\""
      printf '\n[storage]\nshards = %s\n\n[cluster]\nnode_id = %s\npeer_addr = "127.0.0.1:%s"\n' "$SHARDS" "$i" "$P"
      echo "segment_replication = $MODE"
      for m in 1 2 3; do
        printf '\n[[cluster.nodes]]\nid = %s\npeer = "127.0.0.1:%s"\ngrpc = "127.0.0.1:%s"\nhttp = "127.0.0.1:%s"\n' \
          "$m" $((BASE + 10 * (m - 1) + 2)) $((BASE + 10 * (m - 1))) $((BASE + 10 * (m - 1) + 1))
      done
    } >"$DIR/node$i.toml"
    "$BIN/weir" server --config "$DIR/node$i.toml" >"$DIR/node$i.log" 2>&1 &
    PIDS+=($!)
  done
  trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
  wait_healthy "$BIN/weir" $((BASE + 1)) 120
  echo "== cluster.segment_replication = $MODE: ${DURATION} s at the maximum rate"
  for i in 0 1 2; do CPU0[i]=$(cpu_secs "${PIDS[i]}"); done
  START=$(date +%s.%N)
  "$BIN/weir-bench" ingest --concurrency 12 --batch 1000 --duration-secs "$DURATION" --probe-ms 250 \
    --addr "http://127.0.0.1:$BASE,http://127.0.0.1:$((BASE + 10)),http://127.0.0.1:$((BASE + 20))" \
    --http-addr "http://127.0.0.1:$((BASE + 21))"
  INGESTED=$(date +%s.%N)
  until caught_up $((BASE + 1)) >/dev/null; do sleep 0.5; done
  DONE=$(date +%s.%N)
  echo "  indexed per shard: $(caught_up $((BASE + 1)))"
  echo "  every replica caught up $(echo "$DONE - $INGESTED" | bc) s after ingest ended ($(echo "$DONE - $START" | bc) s after it began)"
  for i in 0 1 2; do
    INDEXED=$(curl -sf "http://127.0.0.1:$((BASE + 10 * i + 1))/metrics" | awk '$1 == "weir_index_records_total" { print $2 }')
    COPIES=$(curl -sf "http://127.0.0.1:$((BASE + 10 * i + 1))/metrics" | awk '$1 == "weir_segment_copies_installed_total" { print $2 }')
    FETCHED=$(curl -sf "http://127.0.0.1:$((BASE + 10 * i + 1))/metrics" | awk '$1 == "weir_segment_bytes_fetched_total" { print $2 }')
    echo "  node $((i + 1)): CPU $(echo "$(cpu_secs "${PIDS[i]}") - ${CPU0[i]}" | bc) s, records indexed $INDEXED, copies installed $COPIES, segment bytes fetched $FETCHED"
  done
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DIR"
  trap - EXIT
done
