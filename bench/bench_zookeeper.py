"""pykv's ZooKeeper driver against kazoo used directly, same server, same operations, one run.

    uv run --no-sync python bench/bench_zookeeper.py zk://127.0.0.1:12181 [--ops 2000]

Prints ops/s of sequential put, get and atomic_put (compare-and-swap), watch latency from a
write to the event (p50/p99), and lock acquire+release per second, with the ratio pykv/kazoo.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid

from kazoo.client import KazooClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import paired, percentile, save_json

import pykv

ROUNDS = 20


def watch_latency_pykv(store: pykv.Store, writer: pykv.Store, n: int) -> list[float]:
    samples = []
    writer.put("watched", b"start")
    with store.watch("watched") as watch:
        watch.get(timeout=10)
        for i in range(n):
            value = f"v{i}".encode()
            start = time.perf_counter()
            writer.put("watched", value)
            while True:
                event = watch.get(timeout=10)
                if event is not None and event.value == value:
                    break
            samples.append(time.perf_counter() - start)
    return samples


def watch_latency_kazoo(client: KazooClient, writer: KazooClient, path: str, n: int) -> list[float]:
    samples = []
    writer.ensure_path(path)
    seen: dict[bytes, float] = {}
    cond = threading.Condition()

    def on_change(data: bytes | None, stat: object) -> None:
        with cond:
            if data is not None:
                seen[data] = time.perf_counter()
                cond.notify_all()

    client.DataWatch(path, on_change)
    for i in range(n):
        value = f"v{i}".encode()
        start = time.perf_counter()
        writer.set(path, value)
        with cond:
            deadline = time.monotonic() + 10
            while value not in seen:
                if not cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("no watch event")
            samples.append(seen[value] - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--ops", type=int, default=2000)
    args = parser.parse_args()
    n = args.ops
    prefix = f"pykv-bench/{uuid.uuid4().hex[:8]}"
    url = pykv.StoreURL.parse(args.url)
    hosts = ",".join(str(h.with_default_port(2181)) for h in url.hosts)

    store = pykv.open_store(args.url, prefix=prefix + "/pykv")
    writer = pykv.open_store(args.url, prefix=prefix + "/pykv")
    client = KazooClient(hosts=hosts)
    client.start(timeout=10)
    kwriter = KazooClient(hosts=hosts)
    kwriter.start(timeout=10)
    # `srvr`, not kazoo's server_version(): servers often whitelist only srvr/ruok/stat/mntr
    first = client.command(b"srvr").splitlines()[0]
    version = first.split(":", 1)[1].strip().split("-")[0] if ":" in first else "?"
    base = f"/{prefix}/kazoo"
    client.ensure_path(base)
    rows: list[tuple[str, float, float, str, float]] = []
    try:
        # sequential put of one existing key (both paths are a single setData)
        store.put("k", b"0")
        client.create(f"{base}/k", b"0")
        put = paired(
            lambda i: store.put("k", b"value-%d" % i),
            lambda i: client.set(f"{base}/k", b"value-%d" % i),
            max(1, n // ROUNDS),
            ROUNDS,
        )
        rows.append(("put", put[0], put[1], "ops/s", put[2]))
        get = paired(
            lambda i: store.get("k"), lambda i: client.get(f"{base}/k"), max(1, n // ROUNDS), ROUNDS
        )
        rows.append(("get", get[0], get[1], "ops/s", get[2]))

        def pykv_cas(i: int) -> None:
            store.atomic_put("k", b"cas-%d" % i, store.get("k"))

        def kazoo_cas(i: int) -> None:
            _, stat = client.get(f"{base}/k")
            client.set(f"{base}/k", b"cas-%d" % i, version=stat.version)

        cas = paired(pykv_cas, kazoo_cas, max(1, n // 2 // ROUNDS), ROUNDS)
        rows.append(("get + atomic_put", cas[0], cas[1], "ops/s", cas[2]))

        lat_n = max(100, n // 4)
        pk = watch_latency_pykv(store, writer, lat_n)
        kz = watch_latency_kazoo(client, kwriter, f"{base}/watched", lat_n)
        for name, q in (("watch latency p50", 50), ("watch latency p99", 99)):
            mine, theirs = percentile(pk, q) * 1000, percentile(kz, q) * 1000
            rows.append((name, mine, theirs, "ms", mine / theirs))
        mean_mine, mean_theirs = statistics.mean(pk) * 1000, statistics.mean(kz) * 1000
        rows.append(("watch latency mean", mean_mine, mean_theirs, "ms", mean_mine / mean_theirs))

        lock_n = max(50, n // 10)

        def pykv_lock(i: int) -> None:
            lock = store.lock("lock", ttl=10)
            lock.acquire(timeout=10)
            lock.release()

        def kazoo_lock(i: int) -> None:
            lock = client.Lock(f"{base}/lock")
            lock.acquire(timeout=10)
            lock.release()

        locks = paired(pykv_lock, kazoo_lock, max(1, lock_n // ROUNDS), ROUNDS)
        rows.append(("lock acquire+release", locks[0], locks[1], "ops/s", locks[2]))
    finally:
        store.delete_tree("")
        store.close()
        writer.close()
        client.delete(f"/{prefix}", recursive=True)
        client.stop()
        kwriter.stop()
        client.close()
        kwriter.close()

    rows_json = [
        (x, u, m, t) if u == "ops/s" else (x, "s", m / 1e3, t / 1e3) for x, m, t, u, _ in rows
    ]
    save_json(f"pykv on ZooKeeper {version}", "kazoo", rows_json)
    print(
        f"ZooKeeper {version} at {hosts}: {n} sequential ops each (locks {lock_n}, "
        f"watch events {lat_n}); ops/s are medians of {ROUNDS} alternating rounds"
    )
    print(f"{'operation':<24}{'pykv':>12}{'kazoo':>12}  {'unit':<6}{'pykv/kazoo':>11}")
    for name, mine, theirs, unit, ratio in rows:
        print(f"{name:<24}{mine:>12.2f}{theirs:>12.2f}  {unit:<6}{ratio:>11.2f}")
    print("ratios of ops/s: median of paired rounds (> 1: pykv faster); of latencies: pykv/kazoo")


if __name__ == "__main__":
    main()
