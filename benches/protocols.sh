#!/usr/bin/env bash
# Ingest rate of each protocol on the same lines: one single node (release build, fsync on),
# `weir-bench ingest --protocol P` for each path in turn, twice, alternating, so that the
# ratios come from one run on one machine. Prints lines/s, ack latency and the node's CPU
# per record (utime+stime from /proc over the run), and the load generator's (it shares the
# machine: on 2 cores its encoding competes with the node).
#
# usage: benches/protocols.sh [SECONDS_PER_RUN] [ROUNDS]   (defaults 15 and 2)
# env:   CONCURRENCY (8), BATCH (1000), PROTOCOLS ("grpc otlp-http loki es-bulk")
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
ROUNDS=${2:-2}
CONCURRENCY=${CONCURRENCY:-8}
BATCH=${BATCH:-1000}
PROTOCOLS=${PROTOCOLS:-"grpc otlp-http loki es-bulk"}
WEIR=${WEIR:-target/release/weir}
BENCH=target/release/weir-bench
[ -x "$WEIR" ] && [ -x "$BENCH" ] || { echo "build first: cargo build --release -p weir-server --bin weir && cargo build --release -p weir-bench --bin weir-bench" >&2; exit 2; }
DIR=$(mktemp -d "${TMPDIR:-/tmp}/weir-protocols.XXXXXX")
trap 'kill "$PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"' EXIT
"$WEIR" server --data-dir "$DIR/data" --grpc-addr 127.0.0.1:34317 --http-addr 127.0.0.1:34318 >"$DIR/node.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:34318/readyz >/dev/null && break; sleep 0.2; done
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
HZ=$(getconf CLK_TCK)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores; $(date -u +%F)"
for round in $(seq 1 "$ROUNDS"); do
  for p in $PROTOCOLS; do
    t0=$(ticks)
    out=$(/usr/bin/time -f '%U %S' -o "$DIR/time" "$BENCH" ingest --protocol "$p" --addr http://127.0.0.1:34317 --http-addr http://127.0.0.1:34318 \
      --concurrency "$CONCURRENCY" --batch "$BATCH" --duration-secs "$SECS")
    t1=$(ticks)
    rate=$(echo "$out" | awk '/lines\/s/ {print $2}')
    lat=$(echo "$out" | awk '/ack latency/ {print $4, $7}')
    errs=$(echo "$out" | awk '/errors/ {print $2}')
    cpu_us=$(awk -v t="$((t1 - t0))" -v hz="$HZ" -v r="$rate" -v s="$SECS" 'BEGIN { printf "%.1f", (t / hz) * 1e6 / (r * s) }')
    client_us=$(awk -v r="$rate" -v s="$SECS" '{ printf "%.1f", ($1 + $2) * 1e6 / (r * s) }' "$DIR/time")
    printf 'round %s  %-9s %8s lines/s  ack p50/p99 %s ms  errors %s  CPU us/record: node %s, load generator %s\n' "$round" "$p" "$rate" "$lat" "$errs" "$cpu_us" "$client_us"
  done
done
