#!/usr/bin/env bash
# The thousand-host scale simulation (issue 13, target 4): simulated hosts publish endpoints
# through pykv.discovery onto a 3-node cluster of each backend while discovery watchers follow
# the whole prefix; reports publish time, keepalive traffic per host (from the servers' own
# metrics), change-to-all-watchers convergence, watcher and server CPU/RSS. As root:
#
#   bash scripts/scale-sim.sh [--backend consul|etcd|etcd2|zookeeper|all] [--hosts 1000]
#        [--endpoints 20] [--watchers 50] [--ttl 30] [--duration S] [--changes 100]
#        [--out docs/results]
#
# Not part of CI (minutes per backend, all the machine's cores). The clusters are processes in
# a private network namespace (`unshare -n`, loopback only, as bench/run-all.sh): three etcd
# 3.4 members (with the v2 API), three Consul 1.8 server agents, three ZooKeeper 3.8 servers,
# one backend at a time, started fresh and stopped after its run. --duration is the quiet
# window (seconds, default 3 x TTL/3) over which keepalive traffic is counted. Writes
# OUT/scale-sim.json (results of every backend run so far, by backend) and OUT/scale-*.png,
# and prints the table. How hosts are simulated: see bench/scale_sim.py.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

backend=all hosts=1000 endpoints=20 watchers=50 ttl=30 duration="" changes=100 out=docs/results
args=("$@")
while (($#)); do
  case $1 in
    --backend) backend=$2 ;;
    --hosts) hosts=$2 ;;
    --endpoints) endpoints=$2 ;;
    --watchers) watchers=$2 ;;
    --ttl) ttl=$2 ;;
    --duration) duration=$2 ;;
    --changes) changes=$2 ;;
    --out) out=$2 ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "scale-sim: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift 2
done
case $backend in
  all) backends=(etcd etcd2 consul zookeeper) ;;
  consul | etcd | etcd2 | zookeeper) backends=("$backend") ;;
  *) echo "scale-sim: --backend must be consul, etcd, etcd2, zookeeper or all" >&2; exit 2 ;;
esac
out=$(realpath -m "$out")

if [[ -z ${PYKV_SCALE_NETNS:-} ]]; then
  exec unshare -n env PYKV_SCALE_NETNS=1 bash "$0" "${args[@]}"
fi
ip link set lo up
ulimit -n 65536 2>/dev/null || true # a thousand stores hold a few thousand sockets

work=$(mktemp -d)
pids=()
stop_cluster() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_cluster
  rm -rf "$work"
}
trap cleanup EXIT

# Node n (0, 1, 2) of each cluster listens on the base ports + 10 n.
start_etcd() {
  local n cluster=""
  for n in 0 1 2; do cluster+="${cluster:+,}e$n=http://127.0.0.1:$((2380 + 10 * n))"; done
  for n in 0 1 2; do
    etcd --name "e$n" --data-dir "$work/etcd$n" --enable-v2=true \
      --listen-client-urls "http://127.0.0.1:$((2379 + 10 * n))" \
      --advertise-client-urls "http://127.0.0.1:$((2379 + 10 * n))" \
      --listen-peer-urls "http://127.0.0.1:$((2380 + 10 * n))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((2380 + 10 * n))" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --quota-backend-bytes $((4 * 1024 * 1024 * 1024)) >"$work/etcd$n.log" 2>&1 &
    pids+=($!)
  done
  urls="127.0.0.1:2379,127.0.0.1:2389,127.0.0.1:2399"
}

start_consul() {
  local n
  for n in 0 1 2; do
    # All simulated hosts connect from 127.0.0.1: lift the per-client connection limit (200)
    # that would otherwise refuse them as one client.
    consul agent -server -bootstrap-expect 3 -node "c$n" -data-dir "$work/consul$n" \
      -bind 127.0.0.1 -client 127.0.0.1 -retry-join 127.0.0.1:8301 \
      -hcl "ports { server = $((8300 + 10 * n)), serf_lan = $((8301 + 10 * n)), serf_wan = $((8302 + 10 * n)), http = $((8500 + 10 * n)), dns = $((8600 + 10 * n)), grpc = -1 }" \
      -hcl 'limits { http_max_conns_per_client = 10000 }' \
      -hcl 'telemetry { prometheus_retention_time = "10m", disable_hostname = true }' \
      -hcl 'disable_update_check = true' -hcl 'session_ttl_min = "1s"' \
      >"$work/consul$n.log" 2>&1 &
    pids+=($!)
  done
  urls="127.0.0.1:8500,127.0.0.1:8510,127.0.0.1:8520"
}

start_zookeeper() {
  local n
  for n in 0 1 2; do
    mkdir -p "$work/zk$n"
    echo $((n + 1)) >"$work/zk$n/myid"
    # maxClientCnxns=0: every simulated host connects from 127.0.0.1 (default limit 60 per IP).
    {
      printf 'tickTime=2000\ninitLimit=10\nsyncLimit=5\ndataDir=%s\nclientPort=%s\n' \
        "$work/zk$n" $((2181 + 10 * n))
      printf 'maxClientCnxns=0\nadmin.enableServer=false\n4lw.commands.whitelist=mntr,srvr,ruok,cons\n'
      printf 'server.1=127.0.0.1:2888:3888\nserver.2=127.0.0.1:2889:3889\nserver.3=127.0.0.1:2890:3890\n'
    } >"$work/zoo$n.cfg"
    java -Xmx2g -cp "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar" \
      org.apache.zookeeper.server.quorum.QuorumPeerMain "$work/zoo$n.cfg" >"$work/zk$n.log" 2>&1 &
    pids+=($!)
  done
  urls="127.0.0.1:2181,127.0.0.1:2191,127.0.0.1:2201"
}

mkdir -p "$out"
for b in "${backends[@]}"; do
  echo "== $b: starting a 3-node cluster" >&2
  case $b in
    etcd | etcd2) start_etcd ;;
    consul) start_consul ;;
    zookeeper) start_zookeeper ;;
  esac
  status=0
  uv run --no-sync python bench/scale_sim.py --backend "$b" --urls "$urls" \
    --server-pids "$(IFS=,; echo "${pids[*]}")" --hosts "$hosts" --endpoints "$endpoints" \
    --watchers "$watchers" --ttl "$ttl" ${duration:+--duration "$duration"} \
    --changes "$changes" --out "$out" || status=$?
  stop_cluster
  if ((status)); then
    echo "== $b: the simulation failed (exit $status); server logs:" >&2
    tail -n 20 "$work"/*.log >&2 || true
  fi
  rm -rf "${work:?}"/*
done
uv run --no-sync python bench/plot_scale.py "$out/scale-sim.json" "$out"
