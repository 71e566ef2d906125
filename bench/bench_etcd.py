"""Benchmark the etcd v3 store against etcd-sdk-python (pyetcd), its underlying client, on the
same server in one run.

    uv run --no-sync python bench/bench_etcd.py [etcd://127.0.0.1:2379] [--count N]

Both sides do the same operations on 100-byte values: sequential put, get and compare-and-swap
(ops/s), watch latency from a put to its event (p50/p99, in one process), and lock
acquire+release cycles per second (pyetcd's own lock recipe for the raw side). Progress goes to
stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyetcd
from _common import (
    Table,
    best_rate,
    compare_interleaved,
    measure_pykv,
    median,
    percentile,
    progress,
)

from pykv import StoreURL

VALUE = b"x" * 100


def bench_pykv(url: str, count: int, watch_count: int) -> dict[str, float]:
    return measure_pykv(url, count, watch_count)


def bench_raw(url: str, count: int, watch_count: int) -> dict[str, float]:
    parsed = StoreURL.parse(url)
    host = parsed.hosts[0]
    client = pyetcd.client(
        host=host.host,
        port=host.port or 2379,
        timeout=10,
        user=parsed.username,
        password=parsed.password,
    )
    prefix = f"bench-raw-{uuid.uuid4().hex[:8]}/"
    out: dict[str, float] = {}
    try:
        out["put"] = best_rate(lambda i: client.put(f"{prefix}k{i % 100}", VALUE), count)
        out["get"] = best_rate(lambda i: client.get(f"{prefix}k{i % 100}"), count)
        key = f"{prefix}k0"
        rev = [client.get(key)[1].mod_revision]
        tx = client.transactions

        def cas(_: int) -> None:
            ok, responses = client.transaction(
                compare=[tx.mod(key) == rev[0]], success=[tx.put(key, VALUE)], failure=[]
            )
            assert ok
            rev[0] = responses[0].response_put.header.revision

        out["atomic_put"] = best_rate(cas, count)
        events: queue.Queue[Any] = queue.Queue()
        watched = f"{prefix}watched"
        watch_id = client.add_watch_callback(watched, events.put)
        samples: list[float] = []
        try:
            for i in range(watch_count):
                start = time.perf_counter()
                client.put(watched, str(i))
                done = False
                while not done:
                    response = events.get(timeout=10)
                    done = any(e.value == str(i).encode() for e in response.events)
                samples.append(time.perf_counter() - start)
        finally:
            client.cancel_watch(watch_id)
        out["watch_p50"], out["watch_p99"] = median(samples), percentile(samples, 99)

        def cycle(_: int) -> None:
            lock = client.lock(f"{prefix}lock", ttl=10)
            lock.acquire()
            lock.release()

        out["lock"] = best_rate(cycle, max(50, count // 10))
        client.delete_prefix(prefix)
    finally:
        client.close()
    return out


def report(url: str, count: int, watch_count: int) -> str:
    progress(f"benchmarking {url} ({count} ops per measurement)")
    table = Table(f"pykv etcd v3 store on {url}", raw_label="etcd-sdk-python")
    return compare_interleaved(
        table,
        lambda: bench_pykv(url, count, watch_count),
        lambda: bench_raw(url, count, watch_count),
        {"lock": "raw: pyetcd's lock recipe"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="etcd://127.0.0.1:2379")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--watch-count", type=int, default=500)
    args = parser.parse_args()
    print(report(args.url, args.count, args.watch_count))


if __name__ == "__main__":
    main()
