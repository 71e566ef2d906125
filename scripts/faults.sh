#!/usr/bin/env bash
# The fault suite's long run on a real three-node cluster; prints the table backend x nemesis.
#   scripts/faults.sh --backend etcd --nemesis partition-leader --duration 300
#   --backend   consul, etcd, etcd2, zookeeper, or etcd,etcd2 (both APIs on one cluster)
#   --nemesis   kill-leader, kill-random, pause-leader, partition-leader, partition-client, all
#   --duration  seconds of faults (default 300); --fault SECONDS each fault lasts (default 4),
#   --interval  seconds between faults (default 4); --writers N writer processes (default 2),
#   --lock-workers N lock workers (default 3)
# Needs the servers of scripts/provision.sh; histories go to .faults/ (PYKV_FAULTS_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
backend=etcd nemesis=all duration=300 fault=4 interval=4 writers=2 lock_workers=3
while [[ $# -gt 0 ]]; do
    case $1 in
        --backend) backend=$2; shift 2 ;;
        --nemesis) nemesis=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --fault) fault=$2; shift 2 ;;
        --interval) interval=$2; shift 2 ;;
        --writers) writers=$2; shift 2 ;;
        --lock-workers) lock_workers=$2; shift 2 ;;
        *) echo "usage: $0 [--backend B] [--nemesis N] [--duration S] [--fault S] [--interval S]" \
               "[--writers N] [--lock-workers N]" >&2
           exit 2 ;;
    esac
done
case $backend in
    consul) cluster=consul ;;
    zookeeper) cluster=zookeeper ;;
    etcd | etcd2 | etcd,etcd2 | etcd2,etcd) cluster=etcd ;;
    *) echo "unknown backend $backend (consul, etcd, etcd2, zookeeper)" >&2; exit 2 ;;
esac
export UV_PYTHON_DOWNLOADS=never PYKV_FAULTS_LONG=1 PYKV_FAULTS_BACKEND=$backend
export PYKV_FAULTS_NEMESIS=$nemesis PYKV_FAULTS_DURATION=$duration
export PYKV_FAULTS_FAULT_SECONDS=$fault PYKV_FAULTS_INTERVAL=$interval
export PYKV_FAULTS_WRITERS=$writers PYKV_FAULTS_LOCK_WORKERS=$lock_workers
exec uv run --no-sync pytest -p no:cacheprovider -s -q tests/integration/test_faults.py \
    --backends="$cluster" -k "test_long_$cluster"
