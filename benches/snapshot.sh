#!/usr/bin/env bash
# Catch-up of a wiped node by raft snapshot (benches/RESULTS.md): a three-node
# `weir dev-cluster` on loopback takes RATE lines/s for DURATION seconds and a trickle
# while every node compacts its log; then node 3 is SIGKILLed, its data directory removed,
# and it is started again empty. Reports how long until every shard of node 3 has applied
# and indexed everything its leader committed (lag 0, cluster health ok), and how many
# bytes of snapshot packages it fetched.
# Needs curl and python3. Usage: benches/snapshot.sh [DURATION_SECS]
# (BIN=target/debug to use the test-profile binaries instead of a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-60}
RATE=${RATE:-20000}
BASE=16317
BIN=${BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release -p weir-server -p weir-bench
  BIN=target/release
fi
DIR=$(mktemp -d "${TMPDIR:-/tmp}/weir-bench-snapshot.XXXXXX")
ADDRS="http://127.0.0.1:$BASE,http://127.0.0.1:$((BASE + 10)),http://127.0.0.1:$((BASE + 20))"
HTTP3="http://127.0.0.1:$((BASE + 21))"
# dev-cluster writes the configs; the nodes then run with 8 MiB WAL segments, so the
# logs compact within the run.
"$BIN/weir" dev-cluster --dir "$DIR" --base-port $BASE >"$DIR/dev-cluster.out" 2>&1 &
CLUSTER=$!
for _ in $(seq 1 100); do [ -f "$DIR/node3.toml" ] && break; sleep 0.1; done
sleep 1
kill $CLUSTER; wait $CLUSTER 2>/dev/null || true
rm -rf "$DIR"/node1 "$DIR"/node2 "$DIR"/node3
# Keys are on in dev-cluster configs: every node registers the same first admin key.
WEIR_ADMIN_KEY=$(cat "$DIR/admin.key")
export WEIR_ADMIN_KEY WEIR_KEY=$WEIR_ADMIN_KEY
PIDS=
for n in 1 2 3; do
  sed -i 's/^\[storage\]$/[storage]\nsegment_size_bytes = 8388608/' "$DIR/node$n.toml"
  "$BIN/weir" server --config "$DIR/node$n.toml" >"$DIR/node$n.log" 2>&1 &
  PIDS="$PIDS $!"
done
NODE3=
trap 'kill $PIDS $NODE3 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
. benches/lib.sh
healthy() { wait_healthy "$BIN/weir" $((BASE + 1)) 600; }
healthy
echo "== $RATE lines/s for $DURATION s"
"$BIN/weir-bench" ingest --addr "$ADDRS" --concurrency 8 --batch 500 --rate "$RATE" --duration-secs "$DURATION"
echo "== trickle while the logs compact (a follower compacts when its indexer commits)"
"$BIN/weir-bench" ingest --addr "$ADDRS" --concurrency 2 --batch 50 --rate 500 --duration-secs 25 >/dev/null
du -sh "$DIR"/node1/shard-*/wal "$DIR"/node1/shard-*/index | sed 's/^/node1 /'
PID=$(echo $PIDS | awk '{ print $3 }')
echo "== node 3 (pid $PID) killed, data directory removed, started empty"
kill -9 "$PID"
sleep 1
rm -rf "$DIR/node3"
START=$(date +%s.%N)
"$BIN/weir" server --config "$DIR/node3.toml" >>"$DIR/node3.log" 2>&1 &
NODE3=$!
caught_up() {
  curl -s "$HTTP3/api/v1/cluster" | python3 -c '
import json, sys
try:
    c = json.load(sys.stdin)
except ValueError:
    sys.exit(1)
ok = c.get("health") == "ok"
for s in c.get("shards", []):
    reps = {r["node"]: r for r in s.get("replicas", [])}
    if 3 not in reps:
        ok = False
        continue
    best = max(r["indexed"] for r in reps.values())
    ok &= reps[3]["lag"] == 0 and reps[3]["indexed"] >= best
sys.exit(0 if ok else 1)'
}
for _ in $(seq 1 2400); do
  if caught_up; then
    END=$(date +%s.%N)
    echo "node 3 caught up (applied and indexed as far as the others) in $(awk "BEGIN { printf \"%.1f\", $END - $START }") s"
    curl -s "$HTTP3/metrics" | grep -E "^weir_snapshot" || true
    du -sh "$DIR"/node3/shard-*/wal "$DIR"/node3/shard-*/index | sed 's/^/node3 /'
    exit 0
  fi
  sleep 0.25
done
echo "node 3 did not catch up within 600 s" >&2
tail -20 "$DIR/node3.log" >&2
exit 1
