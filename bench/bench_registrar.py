"""Benchmark pykv-registrar against the real Docker engine.

    uv run --no-sync python bench/bench_registrar.py [STORE_URL] [--n 100] [--burst 200]

STORE_URL defaults to a temporary sqlite file. Measures, with the registrar running as a
subprocess (``python -m pykv.registrar``):

1. latency: time from ``docker start`` returning (an API call) to the endpoint being readable
   from the store, p50/p99 over N containers started one by one, with the plain start time;
2. burst: B containers started together (8 parallel API calls): how long after the last start
   returned every endpoint is readable (the goal: within 10 s);
3. idle: the registrar's CPU use over 20 s without events (B endpoints kept alive) and its RSS.

Containers use the locally built busybox image, carry the label ``pykv.test=1``, publish on
127.0.0.1 only, and are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import percentile

import pykv

IMAGE = os.environ.get("PYKV_BUSYBOX_IMAGE", "pykv-busybox:1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_key(store: pykv.Store, key: str, timeout: float) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if store.exists(key):
            return True
        time.sleep(0.001)
    return False


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds used, RSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", nargs="?", default="")
    parser.add_argument("--n", type=int, default=100, help="containers for the latency run")
    parser.add_argument("--burst", type=int, default=200, help="containers started together")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measurement")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="pykv-bench-registrar-")
    url = args.store or f"sqlite:///{tmp}/registry.db"
    tag = uuid.uuid4().hex[:6]
    node, prefix = f"bench-{tag}", f"bench-{tag}"
    client = docker.from_env(timeout=60)
    api = client.api
    created: list[str] = []

    def create(name: str) -> str:
        cid: str = api.create_container(
            IMAGE,
            ["httpd", "-f", "-p", "80", "-h", "/www"],
            name=name,
            labels={"pykv.test": "1"},
            ports=[80],
            host_config=api.create_host_config(port_bindings={80: ("127.0.0.1", None)}),
        )["Id"]
        created.append(cid)
        return cid

    def key(name: str) -> str:
        return f"{prefix}/pykv-busybox/{node}:{name}:80"

    port = free_port()
    log = open(f"{tmp}/registrar.log", "wb")  # noqa: SIM115
    reg = subprocess.Popen(
        [sys.executable, "-m", "pykv.registrar", "--store", url, "--node", node,
         "--prefix", prefix, "--ttl", "10", "--metrics-addr", f"127.0.0.1:{port}",
         "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    store = pykv.open_store(url)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r,
            ):
                if r.status == 200:
                    break
            time.sleep(0.1)
        else:
            raise SystemExit("registrar did not become ready")

        # 1. one by one
        names = [f"pt-bench-{tag}-l{i}" for i in range(args.n)]
        ids = [create(n) for n in names]
        start_times, publish_times = [], []
        for name, cid in zip(names, ids, strict=True):
            t0 = time.perf_counter()
            api.start(cid)
            t1 = time.perf_counter()
            if not wait_key(store, key(name), 10):
                raise SystemExit(f"{name} not published within 10 s")
            t2 = time.perf_counter()
            start_times.append(t1 - t0)
            publish_times.append(t2 - t1)
        for cid in ids:
            api.remove_container(cid, force=True)
        created.clear()

        # 2. burst
        burst = [f"pt-bench-{tag}-b{i}" for i in range(args.burst)]
        with ThreadPoolExecutor(8) as pool:
            burst_ids = list(pool.map(create, burst))
            t_first = time.perf_counter()
            list(pool.map(api.start, burst_ids))
        t_last_start = time.perf_counter()
        pending = {key(n) for n in burst}
        deadline = time.perf_counter() + 60
        while pending and time.perf_counter() < deadline:
            pending = {k for k in pending if not store.exists(k)}
            time.sleep(0.01)
        t_all = time.perf_counter()

        # 3. idle
        time.sleep(2)
        cpu0, _ = proc_stats(reg.pid)
        w0 = time.perf_counter()
        time.sleep(args.idle)
        cpu1, rss = proc_stats(reg.pid)
        idle_cpu = (cpu1 - cpu0) / (time.perf_counter() - w0) * 100
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda c: api.remove_container(c, force=True), created))
        reg.terminate()
        reg.wait(15)
        store.close()
        log.close()

    ms = 1000
    print(f"pykv-registrar on {url} (node {node}), Docker {client.version()['Version']}")
    print()
    print(f"| measure ({args.n} containers, one by one) | p50 | p99 | max |")
    print("| --- | --- | --- | --- |")
    for label, values in (
        ("`docker start` API call", start_times),
        ("start returned -> endpoint readable", publish_times),
    ):
        print(
            f"| {label} | {percentile(values, 50) * ms:.1f} ms "
            f"| {percentile(values, 99) * ms:.1f} ms "
            f"| {max(values) * ms:.1f} ms |"
        )
    print()
    published = args.burst - len(pending)
    after = t_all - t_last_start
    verdict = "OK" if not pending and after <= 10 else "FAIL"
    print(
        f"burst: {args.burst} containers started in {t_last_start - t_first:.1f} s; "
        f"{published}/{args.burst} published {after:.2f} s after the last start "
        f"({verdict}: goal 10 s)"
    )
    print(
        f"idle ({args.idle:.0f} s, {args.burst} endpoints kept alive): CPU {idle_cpu:.2f} % "
        f"of one core, RSS {rss / 2**20:.1f} MB (goals: < 1 %, < 80 MB)"
    )
    return 0 if not pending else 1


if __name__ == "__main__":
    raise SystemExit(main())
