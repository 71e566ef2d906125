"""What one change costs an open ``watch_tree``, by the size of the watched tree.

    uv run --no-sync python bench/bench_treewatch.py URL [--sizes 1000,10000,50000] [--n 20]

For each size: fill a prefix with that many keys (8 writer threads), open ``watch_tree`` on it
in this process, then N times let a child process change one key and wait for the snapshot
that has it. Reports the latency from the child's put (sent) to the snapshot (p50/p99 ms),
this process's CPU per event (the watcher's whole cost: the driver's stream, the feed, the
snapshot), and what opening the watch took. The writer is another process so that its CPU does
not count. ``watch_tree(events=True)`` is measured the same way (the delta, no snapshot diff).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import percentile, progress

import pykv


def writer(url: str, prefix: str, conn: Connection) -> None:
    with pykv.open_store(url, prefix=prefix, timeout=30) as store:
        while (i := conn.recv()) is not None:
            sent = time.perf_counter()  # one clock for both processes (CLOCK_MONOTONIC)
            store.put("k/00000", f"change-{i}")
            conn.send(sent)


def fill(url: str, prefix: str, size: int) -> None:
    with pykv.open_store(url, prefix=prefix, timeout=30) as store:

        def put(i: int) -> None:
            store.put(f"k/{i:05d}", b"x" * 100)

        with ThreadPoolExecutor(8) as pool:
            for done, _ in enumerate(pool.map(put, range(size)), start=1):
                if done % 5000 == 0:
                    progress(f"  filled {done}/{size}")


def measure(url: str, prefix: str, n: int, *, events: bool) -> tuple[list[float], float, float]:
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=writer, args=(url, prefix, child), daemon=True)
    proc.start()
    latencies: list[float] = []
    cpu = 0.0
    with pykv.open_store(url, prefix=prefix, timeout=30) as store:
        opened = time.perf_counter()
        watch = store.watch_tree("k", events=True) if events else store.watch_tree("k")
        with watch:
            watch.get(timeout=120)
            open_s = time.perf_counter() - opened
            for i in range(n):
                want = f"change-{i}".encode()
                cpu_start = time.process_time()
                parent.send(i)
                while True:
                    event = watch.get(timeout=60)
                    if isinstance(event, pykv.TreeChange):
                        pairs = event.added + event.modified
                    else:
                        pairs = tuple(event[:1])  # "k/00000" sorts first: no scan here
                    if any(p.key == "k/00000" and p.value == want for p in pairs):
                        break
                seen = time.perf_counter()
                cpu += time.process_time() - cpu_start
                latencies.append(seen - parent.recv())
    parent.send(None)
    proc.join(10)
    return latencies, cpu / n, open_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--n", type=int, default=20)
    args = ap.parse_args()
    scheme = pykv.StoreURL.parse(args.url).scheme
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        prefix = f"bench-tree/{uuid.uuid4().hex[:8]}"
        progress(f"{scheme}: {size} keys")
        fill(args.url, prefix, size)
        try:
            for events in (False, True):
                lat, cpu, open_s = measure(args.url, prefix, args.n, events=events)
                mode = "events" if events else "snapshots"
                rows.append((size, mode, percentile(lat, 50), percentile(lat, 99), cpu, open_s))
                progress(f"  {mode}: p50 {percentile(lat, 50) * 1e3:.1f} ms")
        finally:
            with pykv.open_store(args.url, prefix=prefix, timeout=120) as store:
                store.delete_tree("")
    print(f"\nwatch_tree cost per one-key change on {scheme} ({args.n} changes per size)\n")
    print("| keys | mode | latency p50 ms | p99 ms | watcher CPU ms/event | open s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size, mode, p50, p99, cpu, open_s in rows:
        print(
            f"| {size:,} | {mode} | {p50 * 1e3:.1f} | {p99 * 1e3:.1f} | {cpu * 1e3:.1f} "
            f"| {open_s:.2f} |"
        )


if __name__ == "__main__":
    main()
