#!/usr/bin/env bash
# Run every store benchmark against servers started here, then plot the results for the docs:
#
#   bash bench/run-all.sh [OUT_DIR]        (default docs/results; as root)
#   bash bench/run-all.sh --only NAME [OUT_DIR]
#
# --only NAME runs one part, appends its tables to OUT_DIR/bench.jsonl and draws no plots:
# consul, etcd (v3 and v2) or zookeeper (that server and its benchmark), store (the embedded
# stores), scale (minutes: the ZooKeeper 50,000-key listing and the etcd v2 TTL keepalive of
# bench/bench_scale.py) or treewatch (minutes: bench/bench_treewatch.py, what one change
# costs an open watch_tree of 1,000 to 50,000 keys, on every store).
#
# The servers are processes in a private network namespace (`unshare -n`, its own loopback),
# so their fixed ports cannot collide with anything else on the machine, and no traffic leaves
# it: etcd 3.4 (with the v2 API), Consul 1.8 in dev mode (session_ttl_min 1 s), ZooKeeper 3.8,
# as scripts/provision.sh installs them. Tables go to stdout, JSON lines to OUT_DIR/bench.jsonl
# (replaced), PNG plots to OUT_DIR.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
only=
if [[ ${1:-} == --only ]]; then
  only=${2:?--only needs consul, etcd, zookeeper, store, scale or treewatch}
  [[ $only =~ ^(consul|etcd|zookeeper|store|scale|treewatch)$ ]] ||
    { echo "run-all.sh: unknown --only $only" >&2; exit 2; }
  shift 2
fi
out=$(realpath -m "${1:-docs/results}")
wants() { # wants SERVER: whether this run needs that server
  [[ -z $only || $only == "$1" || $only == treewatch ||
     ($only == scale && ($1 == etcd || $1 == zookeeper)) ]]
}

if [[ -z ${PYKV_BENCH_NETNS:-} ]]; then
  exec unshare -n env PYKV_BENCH_NETNS=1 bash "$0" ${only:+--only "$only"} "$out"
fi
ip link set lo up

work=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

urls=()
if wants etcd; then
  urls+=(etcd://127.0.0.1:2379 etcd2://127.0.0.1:2379)
  etcd --name bench --data-dir "$work/etcd" --enable-v2=true \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster bench=http://127.0.0.1:2380 >"$work/etcd.log" 2>&1 &
  pids+=($!)
fi
if wants consul; then
  urls+=(consul://127.0.0.1:8500)
  consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 -hcl 'session_ttl_min = "1s"' \
    -hcl 'disable_update_check = true' >"$work/consul.log" 2>&1 &
  pids+=($!)
fi
if wants zookeeper; then
  urls+=(zk://127.0.0.1:2181)
  mkdir -p "$work/zk"
  printf 'tickTime=1000\ndataDir=%s\nclientPort=2181\nminSessionTimeout=1000\nadmin.enableServer=false\n4lw.commands.whitelist=srvr,ruok\n' \
    "$work/zk" >"$work/zoo.cfg"
  java -cp "$work:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$work/zoo.cfg" >"$work/zk.log" 2>&1 &
  pids+=($!)
fi

# Ready when pykv can write to each (30 s each at most).
uv run --no-sync python - "${urls[@]}" <<'PY'
import sys
import time

import pykv

for url in sys.argv[1:]:
    deadline = time.monotonic() + 30
    while True:
        try:
            with pykv.open_store(url, timeout=2) as store:
                store.put("bench-ready", "1")
                store.delete("bench-ready")
            break
        except pykv.PyKVError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
PY

mkdir -p "$out"
export PYKV_BENCH_JSON=$out/bench.jsonl
[[ -n $only ]] || rm -f "$PYKV_BENCH_JSON"
run() { echo "+ $*" >&2; uv run --no-sync python "$@"; echo; }
case $only in
  scale)
    run bench/bench_scale.py zk zk://127.0.0.1:2181
    run bench/bench_scale.py etcd2 etcd2://127.0.0.1:2379
    exit 0 ;;
  treewatch)
    for url in sqlite:///"$work"/tree.db etcd://127.0.0.1:2379 etcd2://127.0.0.1:2379 \
        consul://127.0.0.1:8500 zk://127.0.0.1:2181; do
      run bench/bench_treewatch.py "$url"
    done
    exit 0 ;;
esac
[[ -z $only || $only == store ]] && run bench/bench_store.py
if [[ $only != store ]] && wants etcd; then
    run bench/bench_etcd.py etcd://127.0.0.1:2379
    run bench/bench_etcd2.py etcd2://127.0.0.1:2379
fi
[[ $only != store ]] && wants consul && run bench/bench_consul.py consul://127.0.0.1:8500
[[ $only != store ]] && wants zookeeper && run bench/bench_zookeeper.py zk://127.0.0.1:2181
[[ -n $only ]] && exit 0
uv run --no-sync python bench/plot.py "$PYKV_BENCH_JSON" "$out" >&2
