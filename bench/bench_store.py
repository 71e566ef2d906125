"""Benchmark any pykv store; for sqlite:// also raw sqlite3 with the same settings, as ratios.

    uv run --no-sync python bench/bench_store.py [URL] [--count N]

Measures sequential put, get and atomic_put (ops/s; on sqlite against raw sqlite3 in
interleaved rounds, reporting the median per-round ratio), watch latency from a put to the event
(p50/p99, in one process and across two processes), and lock acquire+release cycles per second.
With no URL it benchmarks a fresh sqlite file and memory://. Progress goes to stderr, the table
to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Row, Table, measure_pykv, median, paired, percentile, progress

import pykv
from pykv import Capability

ROUNDS = 7

WRITER = """
import sys, time, pykv
store = pykv.open_store(sys.argv[1], prefix=sys.argv[2])
count, key = int(sys.argv[3]), sys.argv[4]
time.sleep(0.5)
for i in range(count):
    store.put(key, repr(time.time()))
    time.sleep(0.01)
store.close()
"""


def watch_latency_cross_process(
    url: str, prefix: str, store: pykv.Store, count: int
) -> list[float]:
    samples: list[float] = []
    with store.watch("bench/xproc") as watch:
        watch.get(timeout=10)
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, url, prefix, str(count), "bench/xproc"]
        )
        try:
            while len(samples) < count:
                event = watch.get(timeout=30)
                if event is not None:
                    samples.append(time.time() - float(event.value))
        finally:
            proc.wait(timeout=60)
    return samples


def bench_pykv(url: str, count: int) -> dict[str, float]:
    out = measure_pykv(url, count, min(count, 500))
    with pykv.open_store(url) as store:
        shared = {Capability.WATCH, Capability.SHARED} <= store.capabilities
    if shared:
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        with pykv.open_store(url, prefix=prefix) as store:
            cross = watch_latency_cross_process(url, prefix, store, 200)
            out["xwatch_p50"], out["xwatch_p99"] = median(cross), percentile(cross, 99)
            store.delete_tree("")
    return out


def raw_sqlite_ops(path: str) -> tuple[sqlite3.Connection, dict[str, Callable[[int], object]]]:
    """The same writes and reads as raw sqlite3 statements, with the same settings (WAL,
    synchronous=normal, autocommit): a plain (key, value, revision) table, the cheapest
    possible baseline (its revision is a counter in this process)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = normal")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB, "
        "revision INTEGER) WITHOUT ROWID"
    )
    value = b"x" * 100
    counter = [0]
    conn.execute("INSERT OR IGNORE INTO kv VALUES ('cas', ?, 0)", (value,))

    def put(i: int) -> None:
        counter[0] += 1
        conn.execute(
            "INSERT INTO kv VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
            "value = excluded.value, revision = excluded.revision",
            (f"k{i % 100}", value, counter[0]),
        )

    def get(i: int) -> object:
        return conn.execute(
            "SELECT value, revision FROM kv WHERE key = ?", (f"k{i % 100}",)
        ).fetchone()

    def cas(_: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        rev = conn.execute("SELECT revision FROM kv WHERE key = 'cas'").fetchone()[0]
        conn.execute(
            "UPDATE kv SET value = ?, revision = ? WHERE key = 'cas' AND revision = ?",
            (value, rev + 1, rev),
        )
        conn.execute("COMMIT")

    return conn, {"put": put, "get": get, "atomic_put": cas}


def pykv_ops(store: pykv.Store) -> dict[str, Callable[[int], object]]:
    value = b"x" * 100
    store.put("cas", value)
    pair = [store.get("cas")]

    def cas(_: int) -> None:
        pair[0] = store.atomic_put("cas", value, pair[0])

    return {
        "put": lambda i: store.put(f"k{i % 100}", value),
        "get": lambda i: store.get(f"k{i % 100}"),
        "atomic_put": cas,
    }


def compare_sqlite(
    url: str, count: int, rounds: int = ROUNDS
) -> dict[str, tuple[float, float, float]]:
    """pykv against raw sqlite3 in interleaved rounds (see ``paired``). Per operation: median
    pykv ops/s, median raw ops/s, median of the per-round ratios pykv/raw; and, as
    "NAME cpu", the CPU per operation raw/pykv (1.0: pykv costs no more CPU)."""
    path = url[len("sqlite:///") :]
    conn, raw = raw_sqlite_ops(path + ".raw")
    with pykv.open_store(url, prefix=f"bench-{uuid.uuid4().hex[:8]}") as store:
        ours = pykv_ops(store)
        out = {name: paired(ours[name], raw[name], count, rounds) for name in raw}
        for name in ("put", "get"):
            ratio = cpu_ratio(ours[name], raw[name], count, rounds)
            out[f"{name} cpu"] = (float("nan"), float("nan"), ratio)
        store.delete_tree("")
    conn.close()
    return out


def cpu_ratio(
    mine: Callable[[int], object], theirs: Callable[[int], object], count: int, rounds: int
) -> float:
    """The median over interleaved rounds of CPU per call, theirs/mine (1.0: as cheap)."""
    ratios = []
    for r in range(rounds):
        spent = {}
        for side, fn in ((1, theirs), (0, mine)) if r % 2 else ((0, mine), (1, theirs)):
            start = time.process_time()
            for i in range(count):
                fn(i)
            spent[side] = time.process_time() - start
        ratios.append(spent[1] / spent[0])
    return median(ratios)


THREADS = 8


def compare_threads(url: str, count: int, rounds: int = 5) -> dict[str, tuple[float, float]]:
    """8 threads doing put (or get) at once, pykv against raw sqlite3 with a connection per
    thread (sqlite3's default: a connection stays in its thread), alternating which goes first.
    Per operation: median pykv ops/s, median raw ops/s."""
    import threading

    path = url[len("sqlite:///") :] + ".raw8"
    local = threading.local()
    value = b"x" * 100

    def raw_conn() -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = sqlite3.connect(path, isolation_level=None, timeout=10)
            conn.execute("PRAGMA synchronous = normal")
        return conn

    setup, _ = raw_sqlite_ops(path)
    for i in range(100):
        setup.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, 0)", (f"k{i}", value))
    raw: dict[str, Callable[[int], object]] = {
        "put": lambda i: raw_conn().execute(
            "INSERT INTO kv VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
            "value = excluded.value, revision = excluded.revision",
            (f"k{i % 100}", value, i),
        ),
        "get": lambda i: (
            raw_conn()
            .execute("SELECT value, revision FROM kv WHERE key = ?", (f"k{i % 100}",))
            .fetchone()
        ),
    }

    def threaded(fn: Callable[[int], object]) -> float:
        per = max(1, count // THREADS)
        workers = [
            threading.Thread(target=lambda: [fn(i) for i in range(per)]) for _ in range(THREADS)
        ]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return per * THREADS / (time.perf_counter() - start)

    out = {}
    with pykv.open_store(url, prefix=f"bench-{uuid.uuid4().hex[:8]}") as store:
        ours = pykv_ops(store)
        for i in range(100):
            store.put(f"k{i}", value)
        for name in ("put", "get"):
            a: list[float] = []
            b: list[float] = []
            for r in range(rounds):
                if r % 2:
                    b.append(threaded(raw[name]))
                    a.append(threaded(ours[name]))
                else:
                    a.append(threaded(ours[name]))
                    b.append(threaded(raw[name]))
            out[name] = (median(a), median(b))
        store.delete_tree("")
    setup.close()
    return out


def report(url: str, count: int) -> str:
    shown = url
    progress(f"benchmarking {shown} ({count} ops per measurement)")
    table = Table(
        f"pykv on {shown}", raw_label="raw sqlite3" if url.startswith("sqlite") else "raw"
    )
    ours = bench_pykv(url, count)
    if url.startswith("sqlite:///"):
        for name, (o, r, ratio) in compare_sqlite(url, count).items():
            if name.endswith(" cpu"):
                table.add(Row(f"{name[:-4]}: CPU per op, raw/pykv", ratio_value=ratio,
                              note=f"medians of {ROUNDS} interleaved rounds"))  # fmt: skip
                continue
            table.add(
                Row(name, o, r, ratio_value=ratio,
                    note=f"medians of {ROUNDS} interleaved rounds")
            )  # fmt: skip
        for name, (o, r) in compare_threads(url, count).items():
            table.add(Row(f"{name}, {THREADS} threads", o, r,
                          note="raw: a connection per thread"))  # fmt: skip
    else:
        for name in ("put", "get", "atomic_put"):
            table.add(Row(name, ours.get(name)))
    if "watch_p50" in ours:
        table.add(Row("watch latency p50 (same process)", ours["watch_p50"], unit="s"))
        table.add(Row("watch latency p99 (same process)", ours["watch_p99"], unit="s"))
    if "xwatch_p50" in ours:
        table.add(Row("watch latency p50 (two processes)", ours["xwatch_p50"], unit="s"))
        table.add(Row("watch latency p99 (two processes)", ours["xwatch_p99"], unit="s"))
    if "lock" in ours:
        table.add(Row("lock acquire+release", ours["lock"]))
    return table.render()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="*", help="store URLs (default: sqlite and memory)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print raw figures as JSON")
    args = parser.parse_args()
    urls = args.urls
    tmp = None
    if not urls:
        tmp = tempfile.mkdtemp(prefix="pykv-bench-")
        urls = [f"sqlite:///{tmp}/bench.db", f"memory://bench-{uuid.uuid4().hex}"]
    for url in urls:
        print(report(url, args.count))
        print()
    if args.json:
        print(json.dumps({"urls": urls}))


if __name__ == "__main__":
    main()
