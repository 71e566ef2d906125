"""Scale benchmarks: recursive reads of a big ZooKeeper tree, and etcd v2 TTL keys kept alive.

    uv run --no-sync python bench/bench_scale.py zk zk://127.0.0.1:2181 [--keys 50000]
    uv run --no-sync python bench/bench_scale.py etcd2 etcd2://127.0.0.1:2379 [--keys 20000]

``zk``: writes KEYS keys (100-byte values) in directories of 100 (nodes holding b"", so keys
too) below a scratch prefix with kazoo, then times pykv's ``list`` of the prefix against kazoo
reading the same tree pipelined (a level at a time, 256 calls in flight) and, with
--sequential, node by node; then pykv's ``delete_tree``. It reports seconds and how many lists
exceeded the store's timeout.

``etcd2``: one store puts KEYS TTL keys and keeps them alive for a while; reports the refresh
writes per second it needed and sustained, its CPU, the keepalive's sustainable figure (the
``ttl_keys_limit`` the driver computes) and whether any key expired (read back through a
second store). With more keys than the limit, ``put(ttl=...)`` must refuse them.

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Row, Table, progress

import pykv


def populate_zk(client: Any, root: str, keys: int, per_dir: int = 100) -> None:
    value = b"x" * 100
    client.ensure_path(root)
    dirs = (keys + per_dir - 1) // per_dir
    for ops in _chunks([client.create_async(f"{root}/d{d:05d}", b"") for d in range(dirs)]):
        for op in ops:
            op.get(timeout=60)
    pending = []
    for i in range(keys):
        pending.append(client.create_async(f"{root}/d{i // per_dir:05d}/k{i:06d}", value))
        if len(pending) >= 1000:
            for op in pending:
                op.get(timeout=60)
            pending = []
    for op in pending:
        op.get(timeout=60)


def _chunks(items: list[Any], size: int = 1000) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def kazoo_sequential(client: Any, root: str) -> int:
    count, stack = 0, [root]
    while stack:
        path = stack.pop()
        for name in client.get_children(path):
            child = f"{path}/{name}"
            _, stat = client.get(child)
            count += 1
            if stat.numChildren:
                stack.append(child)
    return count


def kazoo_pipelined(client: Any, root: str, window: int = 256) -> int:
    """Level by level, up to ``window`` calls in flight (kazoo slows down with more)."""
    count, level = 0, [root]

    def windowed(call: Any, paths: list[str]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        pending: collections.deque[tuple[str, Any]] = collections.deque()
        for path in paths:
            if len(pending) >= window:
                p, op = pending.popleft()
                out.append((p, op.get(timeout=60)))
            pending.append((path, call(path)))
        out.extend((p, op.get(timeout=60)) for p, op in pending)
        return out

    while level:
        listings = windowed(client.get_children_async, level)
        children = [f"{p}/{n}" for p, names in listings for n in names]
        level = []
        for child, (_, stat) in windowed(client.get_async, children):
            count += 1
            if stat.numChildren:
                level.append(child)
    return count


def timed(fn: Any) -> tuple[float, float, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


def bench_zk(url: str, keys: int, rounds: int, sequential: bool) -> str:
    from kazoo.client import KazooClient

    parsed = pykv.StoreURL.parse(url)
    hosts = ",".join(str(h.with_default_port(2181)) for h in parsed.hosts)
    prefix = f"pykv-scale-{uuid.uuid4().hex[:8]}"
    client = KazooClient(hosts=hosts, timeout=10)
    client.start(timeout=10)
    table = Table(f"pykv list of {keys:,} ZooKeeper keys", raw_label="kazoo")
    try:
        progress(f"writing {keys} keys below /{prefix}/tree")
        took, _, _ = timed(lambda: populate_zk(client, f"/{prefix}/tree", keys))
        dirs = (keys + 99) // 100
        progress(f"  written in {took:.1f} s")
        with pykv.open_store(url, prefix=prefix) as store:
            failures = 0
            ours: list[tuple[float, float]] = []
            seq: list[float] = []
            pipe: list[float] = []
            for _ in range(rounds):
                try:
                    wall, cpu, pairs = timed(lambda: store.list("tree"))
                    assert len(pairs) == keys + dirs, len(pairs)  # directories hold b""
                    ours.append((wall, cpu))
                except pykv.OperationTimeoutError as exc:
                    failures += 1
                    progress(f"  pykv list failed: {exc}")
                wall, _, _ = timed(lambda: kazoo_pipelined(client, f"/{prefix}/tree"))
                pipe.append(wall)
                progress(f"  pykv {ours[-1][0] if ours else float('nan'):.2f} s, kazoo "
                         f"pipelined {wall:.2f} s")  # fmt: skip
            if sequential:
                wall, _, _ = timed(lambda: kazoo_sequential(client, f"/{prefix}/tree"))
                seq.append(wall)
            best = min(ours) if ours else (float("nan"), float("nan"))
            table.add(Row("list (best wall)", best[0], min(pipe), unit="s",
                          note=f"kazoo pipelined; {failures} of {rounds} pykv lists timed out"
                          f" ({store.timeout:g} s); pykv CPU {best[1]:.2f} s"))  # fmt: skip
            if seq:
                table.add(Row("list vs kazoo node by node", best[0], seq[0], unit="s",
                              note="kazoo get_children/get, sequential"))  # fmt: skip
            try:
                wall, _, _ = timed(lambda: store.delete_tree("tree"))
                table.add(Row("delete_tree", wall, None, unit="s"))
            except pykv.OperationTimeoutError as exc:
                table.add(Row("delete_tree", None, None, unit="s", note=f"failed: {exc}"))
    finally:
        with pykv.open_store(url, prefix=prefix, timeout=120) as store:
            store.delete_tree("")  # what is left, with time enough
        client.stop()
        client.close()
    return table.render()


def etcd_stats(base: str) -> dict[str, int]:
    """etcd's own v2 store counters (compareAndSwapSuccess counts refreshes, expireCount
    the keys that expired)."""
    import json
    import urllib.request

    with urllib.request.urlopen(base + "/v2/stats/store", timeout=10) as resp:
        return {k: int(v) for k, v in json.loads(resp.read()).items()}


def fill(store: pykv.Store, keys: int, ttl: int, threads: int = 8) -> None:
    from concurrent.futures import ThreadPoolExecutor

    value = b"x" * 100
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: store.put(f"k/{i:06d}", value, ttl=ttl), range(keys)))


def keep_alive(url: str, keys: int, ttl: int, seconds: float) -> dict[str, float]:
    """KEYS TTL keys kept alive for SECONDS by one store with no refresh limit: the refresh
    writes per second etcd counted, the store's CPU, the keys that expired."""
    parsed = pykv.StoreURL.parse(url)
    base = "http://" + str(parsed.hosts[0].with_default_port(2379))
    prefix = f"pykv-scale-{uuid.uuid4().hex[:8]}"
    with pykv.open_store(url, prefix=prefix, max_refresh_rate=1e9) as store:
        progress(f"writing {keys} TTL keys (ttl={ttl} s)")
        took, _, _ = timed(lambda: fill(store, keys, ttl))
        progress(f"  written in {took:.1f} s; keeping them alive for {seconds:g} s")
        before, cpu, start = etcd_stats(base), time.process_time(), time.monotonic()
        time.sleep(seconds)
        after, cpu, wall = etcd_stats(base), time.process_time() - cpu, time.monotonic() - start
        with pykv.open_store(url, prefix=prefix) as reader:
            try:
                alive = len(reader.list("k"))
            except pykv.KeyNotFoundError:
                alive = 0
        store.delete_tree("")
    return {
        "keys": keys,
        "ttl": ttl,
        "needed": 3 * keys / ttl,
        "rate": (after["compareAndSwapSuccess"] - before["compareAndSwapSuccess"]) / wall,
        "cpu": cpu / wall,
        "expired": after["expireCount"] - before["expireCount"],
        "alive": alive,
    }


def capacity(url: str, keys: int, seconds: float, refreshers: int) -> dict[str, float]:
    """The keepalive's refresh throughput over ``refreshers`` connections: KEYS keys with a
    long TTL, all made due again as soon as they were refreshed (the bench sets their private
    due times), for SECONDS."""
    from pykv_etcd import _v2

    _v2.REFRESHERS = refreshers  # read when the store's keepalive makes its pool
    parsed = pykv.StoreURL.parse(url)
    base = "http://" + str(parsed.hosts[0].with_default_port(2379))
    prefix = f"pykv-scale-{uuid.uuid4().hex[:8]}"
    with pykv.open_store(url, prefix=prefix, max_refresh_rate=1e9) as store:
        progress(f"writing {keys} TTL keys for the capacity run")
        fill(store, keys, 300)
        items = list(store._ttl_keys.values())  # type: ignore[attr-defined]
        before, cpu, start = etcd_stats(base), time.process_time(), time.monotonic()
        while time.monotonic() - start < seconds:
            now = time.monotonic()
            for item in items:
                if item.due > now:
                    item.due = 0.0
            store._wake.set()  # type: ignore[attr-defined]
            time.sleep(0.05)
        after, cpu, wall = etcd_stats(base), time.process_time() - cpu, time.monotonic() - start
        store.delete_tree("")
    return {
        "rate": (after["compareAndSwapSuccess"] - before["compareAndSwapSuccess"]) / wall,
        "failed": after["compareAndSwapFail"] - before["compareAndSwapFail"],
        "cpu": cpu / wall,
    }


def bench_etcd2(url: str, keys: int, ttl: int, seconds: float) -> str:
    table = Table("etcd v2: TTL keys kept alive by one store", raw_label="needed")
    # one connection (as before the pool) and the keepalive's pool, alternating
    runs: dict[int, list[dict[str, float]]] = {1: [], 4: []}
    for n in (1, 4, 4, 1):
        runs[n].append(capacity(url, min(keys, 2000), min(seconds, 10.0), n))
    for n, label in ((1, "1 connection"), (4, "4 connections (the default)")):
        best = max(runs[n], key=lambda r: r["rate"])
        table.add(Row(f"refresh writes/s at capacity, {label}", best["rate"], None,
                      note=f"CPU {best['cpu']:.0%} of a core; {best['failed']:,.0f} "
                      "refreshes failed"))  # fmt: skip
    sustainable = max(r["rate"] for r in runs[4])
    run = keep_alive(url, keys, ttl, seconds)
    table.add(Row(f"refresh writes/s, {keys:,} keys, ttl {ttl} s", run["rate"], run["needed"],
                  note=f"CPU {run['cpu']:.0%} of a core; {run['expired']:,} expired, "
                  f"{run['alive']:,} alive after {seconds:g} s"))  # fmt: skip
    # the limit: a store refuses what it could not keep alive
    limit = 100.0
    with pykv.open_store(url, prefix=f"pykv-scale-{uuid.uuid4().hex[:8]}",
                         max_refresh_rate=limit) as store:  # fmt: skip
        refused = ""
        try:
            for i in range(int(limit) + 1):
                store.put(f"k/{i}", b"x", ttl=3)
        except pykv.InvalidArgumentError as exc:
            refused = str(exc)
        store.delete_tree("")
    rendered = table.render()
    return (
        f"{rendered}\n\nsustainable: {sustainable:,.0f} refresh writes/s, i.e. "
        f"{sustainable * 10 / 3:,.0f} keys at ttl 10 s, {sustainable * 60 / 3:,.0f} at ttl 60 s"
        f"\nrefused past max_refresh_rate={limit:g}: {refused or 'NOT REFUSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["zk", "etcd2"])
    parser.add_argument("url")
    parser.add_argument("--keys", type=int)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--ttl", type=int, default=60)
    parser.add_argument(
        "--sequential", action="store_true", help="zk: also time kazoo node by node (minutes)"
    )
    args = parser.parse_args()
    if args.what == "zk":
        print(bench_zk(args.url, args.keys or 50_000, args.rounds, args.sequential))
    else:
        print(bench_etcd2(args.url, args.keys or 20_000, args.ttl, args.seconds))


if __name__ == "__main__":
    main()
