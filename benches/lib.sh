# Shared by the cluster benches: sourced, not run.

# wait_healthy WEIR_BIN HTTP_PORT TRIES: waits (0.5 s per try) until the node on
# HTTP_PORT says the cluster's health is ok; fails after TRIES tries.
wait_healthy() {
  local bin=$1 port=$2 tries=$3
  for _ in $(seq 1 "$tries"); do
    if "$bin" cluster status --addr "http://127.0.0.1:$port" 2>/dev/null | grep -q "health: ok"; then
      return 0
    fi
    sleep 0.5
  done
  echo "cluster not healthy after $tries tries" >&2
  return 1
}

# use_dev_key DIR: waits for the admin key `weir dev-cluster` writes to DIR (keys are on
# in the dev cluster) and exports it as WEIR_KEY, which weir and weir-bench present.
use_dev_key() {
  local dir=$1
  for _ in $(seq 1 100); do [ -s "$dir/admin.key" ] && break; sleep 0.1; done
  WEIR_KEY=$(cat "$dir/admin.key")
  export WEIR_KEY
}
