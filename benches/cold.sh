#!/usr/bin/env bash
# Cold lookups (issue 16's "the first query of its kind, or after a restart, ≤ 50 ms"):
# one node with the defaults over DATA_DIR. When DATA_DIR holds no index yet, it is
# filled first by `weir-bench ingest` at the maximum rate for FILL_SECS (default 270 s,
# ~14 M lines here) and the node is given SETTLE_SECS (default 60) for merges. Then, ROUNDS
# times: the node is stopped, the page cache dropped (`sync; echo 3 >
# /proc/sys/vm/drop_caches`, so it needs root), the node started again, and
# `weir-bench query --iterations 1` run as soon as it answers, so every figure is one
# query, the first of its kind, from a cold disk.
# Usage: benches/cold.sh DATA_DIR [ROUNDS]
# (BIN=target/debug for the test-profile binaries; WEIR=path runs that `weir` binary, for
# an A/B of two builds over the same data; WAIT_SECS waits that long after the node
# answers before querying (default 0); EXTRA_ARGS are passed to `weir server`)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: benches/cold.sh DATA_DIR [ROUNDS]}
ROUNDS=${2:-3}
FILL_SECS=${FILL_SECS:-270}
SETTLE_SECS=${SETTLE_SECS:-60}
BIN=${BIN:-}
WAIT_SECS=${WAIT_SECS:-0}
if [ -z "$BIN" ]; then
  cargo build --release -p weir-server -p weir-bench
  BIN=target/release
fi
if [ ! -w /proc/sys/vm/drop_caches ]; then
  echo "cold.sh drops the page cache: run it as root" >&2
  exit 1
fi
mkdir -p "$DATA"
NODE=
start_node() {
  # shellcheck disable=SC2086
  "${WEIR:-$BIN/weir}" server --data-dir "$DATA" ${EXTRA_ARGS:-} >>"$DATA.log" 2>&1 &
  NODE=$!
  for _ in $(seq 1 600); do
    curl -sf http://127.0.0.1:4318/ready >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node not ready after 60 s; see $DATA.log" >&2
  exit 1
}
stop_node() {
  kill "$NODE"
  wait "$NODE" 2>/dev/null || true
}
trap '[ -n "$NODE" ] && kill "$NODE" 2>/dev/null || true' EXIT
if [ ! -d "$DATA/shard-0/index" ]; then
  start_node
  "$BIN/weir-bench" ingest --concurrency 8 --batch 1000 --duration-secs "$FILL_SECS"
  sleep "$SETTLE_SECS"
  stop_node
fi
echo "index: $(du -sh "$DATA" | cut -f1) in $(find "$DATA" -name meta.json | wc -l) partitions, $(find "$DATA" -name '*.idx' | wc -l) segments"
for r in $(seq 1 "$ROUNDS"); do
  sync
  echo 3 >/proc/sys/vm/drop_caches
  start_node
  sleep "$WAIT_SECS"
  echo "== round $r, cold, ${WAIT_SECS} s after the node answered"
  "$BIN/weir-bench" query --addr http://127.0.0.1:4318 --iterations 1
  stop_node
done
