#!/usr/bin/env bash
# The compose cluster's smoke test, the same checks as the local one: build the image,
# start three containers, wait for health "ok", push through node 2, find every record by
# searching each node, check the io backend is the fallback (io_uring is blocked in
# containers), SIGKILL the leader of shard 0 and push again through a surviving node,
# then tear everything down. Keys are on: every command presents the admin key, and a
# search without one must be refused. Exits non-zero on any failure. Needs a Docker engine and
# docker-compose (or the compose plugin).
set -euo pipefail
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
PROJECT=weir-smoke-$$
DC=("${COMPOSE[@]}" -p "$PROJECT" -f docker/docker-compose.yml)
WEIR=${WEIR:-target/debug/weir}
# Keys are on in the compose cluster: one admin key for every node and for our commands.
WEIR_ADMIN_KEY=${WEIR_ADMIN_KEY:-$("$WEIR" keys generate)}
export WEIR_ADMIN_KEY WEIR_KEY=$WEIR_ADMIN_KEY
PROFILE=${PROFILE:-test} docker/build.sh
cleanup() { "${DC[@]}" logs --no-color > "${TMPDIR:-/tmp}/$PROJECT.log" 2>&1 || true; "${DC[@]}" down -v >/dev/null 2>&1 || true; }
trap cleanup EXIT
"${DC[@]}" up -d
for _ in $(seq 1 120); do
  if "$WEIR" cluster status --addr http://127.0.0.1:24318 2>/dev/null | grep -q "health: ok"; then break; fi
  sleep 0.5
done
"$WEIR" cluster status --addr http://127.0.0.1:24318
"$WEIR" cluster status --addr http://127.0.0.1:24318 --json | grep -q '"io_backend": "std"' || { echo "expected the std I/O backend in a container" >&2; exit 1; }
seq 1 500 | sed 's/^/compose smoke line /' | "$WEIR" push --addr http://127.0.0.1:24327 --label app=smoke --producer-id smoke
count() { "$WEIR" query --addr "$1" --json --limit 1000 "$2" | grep -c '"body"' || true; }
for port in 24318 24328 24338; do
  for _ in $(seq 1 40); do [ "$(count http://127.0.0.1:$port smoke)" = 500 ] && break; sleep 0.25; done
  n=$(count http://127.0.0.1:$port smoke)
  [ "$n" = 500 ] || { echo "node on $port finds $n of 500 records" >&2; exit 1; }
done
LEADER=$("$WEIR" cluster status --addr http://127.0.0.1:24318 | awk '$1 == "0" { print $2 }')
echo "killing weir$LEADER, leader of shard 0"
"${DC[@]}" kill -s SIGKILL "weir$LEADER"
SURVIVOR=$(( LEADER % 3 + 1 ))
PORT=$(( 24307 + 10 * SURVIVOR ))
seq 1 100 | sed 's/^/after failover /' | "$WEIR" push --addr "http://127.0.0.1:$PORT" --label app=failover --producer-id failover
HTTP=$(( PORT + 1 ))
for _ in $(seq 1 40); do [ "$(count http://127.0.0.1:$HTTP failover)" = 100 ] && break; sleep 0.25; done
n=$(count http://127.0.0.1:$HTTP failover)
[ "$n" = 100 ] || { echo "after failover node weir$SURVIVOR finds $n of 100 records" >&2; exit 1; }
# Asked of a node still running (node 1 may be the one killed above).
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP/api/v1/search" || true)
[ "$code" = 401 ] || { echo "a search without a key answered $code, expected 401" >&2; exit 1; }
echo "compose smoke test passed"
