"""The fault suite (tests/faults) on the three-node clusters: the CI smoke and the long run.

Smoke (part of the integration tests): on each cluster, workloads run while each nemesis acts
once (see ``faults.runner.NEMESES``); etcd runs its v3 and v2 workloads at once on one cluster.
A failure prints one line per backend x nemesis and the path of the saved history.

Long run (``scripts/faults.sh``): collected only when ``PYKV_FAULTS_LONG=1``; it reads
``PYKV_FAULTS_BACKEND`` (consul, etcd, etcd2, zookeeper), ``PYKV_FAULTS_NEMESIS`` (one of the
nemeses, or ``all``) and ``PYKV_FAULTS_DURATION`` (seconds), and prints the table.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from faults.runner import NEMESES, Outcome, Target, run_faults, run_id, table

import pykv

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAULTS_DIR = Path(os.environ.get("PYKV_FAULTS_DIR", ".faults"))


def target(label: str, cluster: Any) -> Target:
    scheme = {"etcd": "etcd", "etcd2": "etcd2"}.get(label, cluster.backend)
    url = f"{scheme}://" + ",".join(cluster.address(n) for n in cluster.nodes)
    with pykv.open_store(url, timeout=10) as store:
        slack = type(store).ttl_slack
    return Target(label, url, slack)


def report(outcomes: list[Outcome], directory: Path, started: float) -> None:
    """Print the summary; fail with it when a checker found anything: safety (overlapping
    holds, token order, stale fenced writes, lost or duplicated acknowledged writes, watches
    going backwards, TTL bounds) and timeliness (a watch late or short of the final state, a
    lock gap, slow resumption) alike."""
    lines = [line for outcome in outcomes for line in outcome.summary()]
    lines.append(f"faults: {time.monotonic() - started:.0f} s; histories under {directory}")
    print("\n".join(lines))
    failed = [o for o in outcomes if o.violations]
    if failed:
        details = [
            f"{o.target.label}: {v.check}: {v.detail}" for o in failed for v in o.violations[:10]
        ]
        saved = [f"history of {o.target.label}: {o.history}" for o in failed]
        pytest.fail("\n".join([*lines, *saved, *details]), pytrace=False)


def smoke(cluster: Any, labels: list[str]) -> None:
    started = time.monotonic()
    directory = FAULTS_DIR / f"smoke-{run_id()}-{cluster.backend}"
    outcomes = run_faults(cluster, [target(label, cluster) for label in labels], NEMESES, directory)
    report(outcomes, directory, started)


@pytest.mark.timeout(360)
def test_faults_consul(consul_cluster: Any) -> None:
    smoke(consul_cluster, ["consul"])


@pytest.mark.timeout(360)
def test_faults_etcd(etcd_cluster: Any) -> None:
    smoke(etcd_cluster, ["etcd", "etcd2"])


@pytest.mark.timeout(360)
def test_faults_zookeeper(zookeeper_cluster: Any) -> None:
    smoke(zookeeper_cluster, ["zookeeper"])


if os.environ.get("PYKV_FAULTS_LONG") == "1":
    BACKEND = os.environ.get("PYKV_FAULTS_BACKEND", "etcd")
    NEMESIS = os.environ.get("PYKV_FAULTS_NEMESIS", "all")
    DURATION = float(os.environ.get("PYKV_FAULTS_DURATION", "300"))

    def long_run(cluster: Any) -> None:
        started = time.monotonic()
        nemeses = list(NEMESES) if NEMESIS == "all" else [NEMESIS]
        labels = BACKEND.split(",")
        directory = FAULTS_DIR / f"long-{run_id()}-{'-'.join(labels)}-{NEMESIS}"
        outcomes = run_faults(
            cluster,
            [target(label, cluster) for label in labels],
            nemeses,
            directory,
            duration=DURATION,
            fault_seconds=float(os.environ.get("PYKV_FAULTS_FAULT_SECONDS", "4")),
            interval=float(os.environ.get("PYKV_FAULTS_INTERVAL", "4")),
            writers=int(os.environ.get("PYKV_FAULTS_WRITERS", "2")),
            lock_workers=int(os.environ.get("PYKV_FAULTS_LOCK_WORKERS", "3")),
            meta=run_meta(labels),
        )
        print()
        print(table([(o.target.label, NEMESIS, o) for o in outcomes]))
        report(outcomes, directory, started)

    def run_meta(labels: list[str]) -> dict[str, Any]:
        """What reproduces the run: the command line and the commit (the tree may be dirty)."""
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
        fault = os.environ.get("PYKV_FAULTS_FAULT_SECONDS", "4")
        interval = os.environ.get("PYKV_FAULTS_INTERVAL", "4")
        writers = os.environ.get("PYKV_FAULTS_WRITERS", "2")
        workers = os.environ.get("PYKV_FAULTS_LOCK_WORKERS", "3")
        return {
            "command": f"scripts/faults.sh --backend {','.join(labels)} --nemesis {NEMESIS} "
            f"--duration {DURATION:g} --fault {fault} --interval {interval} "
            f"--writers {writers} --lock-workers {workers}",
            "commit": commit or None,
            "duration": DURATION,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    LONG_TIMEOUT = DURATION + 600

    @pytest.mark.timeout(LONG_TIMEOUT)
    def test_long_consul(consul_cluster: Any) -> None:
        long_run(consul_cluster)

    @pytest.mark.timeout(LONG_TIMEOUT)
    def test_long_etcd(etcd_cluster: Any) -> None:
        long_run(etcd_cluster)

    @pytest.mark.timeout(LONG_TIMEOUT)
    def test_long_zookeeper(zookeeper_cluster: Any) -> None:
        long_run(zookeeper_cluster)


@pytest.mark.etcd
def test_etcd_lease_renewal_fails_over_from_a_cut_off_endpoint(etcd_cluster: Any) -> None:
    """A lock and a TTL key survive the clients being cut off from the first listed member."""
    first = etcd_cluster.nodes[0]
    url = "etcd://" + ",".join(etcd_cluster.address(n) for n in etcd_cluster.nodes)
    prefix = f"pykv-faults/{uuid.uuid4().hex[:12]}"
    with pykv.open_store(url, prefix=prefix, timeout=3) as store:
        store.put("eph", "alive", ttl=3)
        lock = store.lock("lock", ttl=3)
        assert lock.acquire(timeout=10)
        etcd_cluster.cut_clients(first)
        try:
            time.sleep(8)  # more than twice the TTL: renewals must have gone elsewhere
        finally:
            etcd_cluster.heal_network(first)
        assert not lock.lost.is_set(), "the lock was lost while two members were healthy"
        assert store.get("eph").value == b"alive"
        lock.release()
        store.delete_tree("")
