#!/usr/bin/env bash
# A 3-node kvtier cluster on loopback, one data directory per node.
#
#   deploy/local-cluster.sh start    build, start node 1, then join nodes 2 and 3 to it
#   deploy/local-cluster.sh status   kvtierctl status of the running cluster
#   deploy/local-cluster.sh stop     SIGTERM every node and wait for it to exit
#
# Node n serves KvCache on 127.0.0.1:5005n, the cluster service on 127.0.0.1:5006n and
# metrics on 127.0.0.1:909n; its data directory and log are under $KVTIER_CLUSTER_DIR
# (default .kvtier-cluster/noden). A stopped cluster restarts from its data directories
# with the same membership and partition table; delete the directory to start afresh.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${KVTIER_CLUSTER_DIR:-.kvtier-cluster}"
NODES=3
TARGET="${CARGO_TARGET_DIR:-target}"
KVTIERD="$TARGET/debug/kvtierd"
KVTIERCTL="$TARGET/debug/kvtierctl"

start_node() {
  local n=$1
  shift
  mkdir -p "$DIR/node$n"
  "$KVTIERD" --node-id "$n" --data-dir "$DIR/node$n" \
    --listen "127.0.0.1:5005$n" --cluster-listen "127.0.0.1:5006$n" \
    --metrics-listen "127.0.0.1:909$n" --dram-capacity 512MiB --ssd-capacity 4GiB \
    "$@" >>"$DIR/node$n/kvtierd.log" 2>&1 &
  echo $! >"$DIR/node$n/pid"
}

wait_members() {
  local want=$1
  for _ in $(seq 1 100); do
    if "$KVTIERCTL" --cluster 127.0.0.1:50061 --json status 2>/dev/null \
      | grep -c '"node_id"' | grep -qx "$want"; then
      return 0
    fi
    sleep 0.2
  done
  echo "local-cluster: the cluster did not reach $want members; see $DIR/node*/kvtierd.log" >&2
  return 1
}

running_nodes() {
  for n in $(seq 1 "$NODES"); do
    local pidfile="$DIR/node$n/pid"
    if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "$n"
    fi
  done
}

start() {
  local running
  running=$(running_nodes)
  if [[ -n $running ]]; then
    echo "local-cluster: node(s) $(echo $running) of $DIR already running; run '$0 stop' first" >&2
    exit 1
  fi
  cargo build -q -p kvtier-store --bin kvtierd -p kvtier-client --bin kvtierctl
  if [[ -f "$DIR/node1/node_id" ]]; then
    # A restart: the members find each other from their logs; a quorum elects a leader.
    for n in $(seq 1 "$NODES"); do
      start_node "$n"
    done
  else
    start_node 1
    wait_members 1 || give_up
    for n in $(seq 2 "$NODES"); do
      start_node "$n" --join 127.0.0.1:50061
    done
  fi
  wait_members "$NODES" || give_up
  sleep 0.5
  for n in $(seq 1 "$NODES"); do
    if ! kill -0 "$(cat "$DIR/node$n/pid")" 2>/dev/null; then
      echo "local-cluster: node $n exited; see $DIR/node$n/kvtierd.log" >&2
      give_up
    fi
  done
  "$KVTIERCTL" --cluster 127.0.0.1:50061 status
}

# A start that failed: say what the nodes said about it, and stop the ones that run.
give_up() {
  grep -h "kvtierd:" "$DIR"/node*/kvtierd.log 2>/dev/null | tail -n 3 >&2 || true
  stop >/dev/null
  echo "local-cluster: start failed; the nodes it started are stopped" >&2
  exit 1
}

stop() {
  for n in $(seq 1 "$NODES"); do
    local pidfile="$DIR/node$n/pid"
    [[ -f $pidfile ]] || continue
    local pid
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    rm -f "$pidfile"
  done
  echo "local-cluster: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) "$KVTIERCTL" --cluster 127.0.0.1:50061 status ;;
  *)
    echo "usage: $0 start|status|stop" >&2
    exit 2
    ;;
esac
