"""pykv.aio on one store: threads and memory of many async watches, async vs sync throughput.

    uv run --no-sync python bench/bench_aio.py sqlite:////tmp/aio.db [--watches 1000] [--n 2000]

1. Opens ``--watches`` async watches on one key of one store, reads their first event, then
   writes the key once and waits until every watch has seen it. Reports the process's threads
   (all, and those of pykv.aio's pool) and RSS before and after, and the time from the write
   to the last watch's event.
2. ``--n`` puts then gets: sync in a loop; async one at a time (``await`` each); async with 8
   in flight (``asyncio.gather`` in batches). Reports ops/s for each.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid

import pykv
import pykv.aio


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def threads() -> tuple[int, int]:
    alive = threading.enumerate()
    return len(alive), sum(t.name.startswith("pykv-aio") for t in alive)


async def watches(url: str, count: int, prefix: str) -> None:
    before_threads, before_rss = threads(), rss_mib()
    async with pykv.aio.open_store(url, prefix=prefix) as store:
        opened = [store.watch("hot") for _ in range(count)]
        start = time.perf_counter()
        await asyncio.gather(*(w.get(timeout=120) for w in opened))
        open_s = time.perf_counter() - start
        after_threads, after_rss = threads(), rss_mib()
        start = time.perf_counter()
        await store.put("hot", b"v")

        async def changed(w: pykv.aio.AsyncWatch[pykv.KVPair | None]) -> None:
            while (await w.get(timeout=120)) is None:
                pass

        await asyncio.gather(*(changed(w) for w in opened))
        fanout_s = time.perf_counter() - start
        print(f"{count} async watches on {store}:")
        print(f"  threads      {before_threads[0]} before, {after_threads[0]} with them open")
        print(f"  aio pool     {after_threads[1]} threads (max_workers)")
        print(f"  RSS          {before_rss:.1f} MiB before, {after_rss:.1f} MiB after")
        print(f"               ({(after_rss - before_rss) * 1024 / count:.1f} KiB per watch)")
        print(f"  open         {open_s:.2f} s for all, first event included")
        print(f"  fan-out      {fanout_s * 1000:.0f} ms from one put to the last watch's event")
        await asyncio.gather(*(w.close() for w in opened))
        await store.delete_tree("")


def sync_ops(url: str, n: int, prefix: str) -> tuple[float, float]:
    with pykv.open_store(url, prefix=prefix) as store:
        start = time.perf_counter()
        for i in range(n):
            store.put(f"k{i % 100}", b"x" * 64)
        put = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(n):
            store.get(f"k{i % 100}")
        get = n / (time.perf_counter() - start)
        store.delete_tree("")
    return put, get


async def async_ops(url: str, n: int, prefix: str, in_flight: int) -> tuple[float, float]:
    async with pykv.aio.open_store(url, prefix=prefix) as store:
        start = time.perf_counter()
        for base in range(0, n, in_flight):
            await asyncio.gather(
                *(store.put(f"k{i % 100}", b"x" * 64) for i in range(base, base + in_flight))
            )
        put = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for base in range(0, n, in_flight):
            await asyncio.gather(*(store.get(f"k{i % 100}") for i in range(base, base + in_flight)))
        get = n / (time.perf_counter() - start)
        await store.delete_tree("")
    return put, get


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--watches", type=int, default=1000)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    prefix = f"pykv-bench/{uuid.uuid4().hex[:8]}"
    if args.watches:
        asyncio.run(watches(args.url, args.watches, prefix))
    if args.n:
        rows = [("sync, sequential", sync_ops(args.url, args.n, prefix))]
        for in_flight in (1, 8):
            result = asyncio.run(async_ops(args.url, args.n, prefix, in_flight))
            rows.append((f"async, {in_flight} in flight", result))
        print(f"throughput on {args.url.split('?')[0]} ({args.n} ops each, ops/s):")
        for name, (put, get) in rows:
            print(f"  {name:20} put {put:8.0f}   get {get:8.0f}")


if __name__ == "__main__":
    main()
