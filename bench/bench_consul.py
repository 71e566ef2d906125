"""pykv's Consul driver against raw HTTP on urllib3 (/v1/kv), on the same server, in one run.

    uv run --no-sync python bench/bench_consul.py consul://127.0.0.1:8500 [--n 200] [--rounds 15]
    bash bench/run-all.sh --only consul /tmp/bench    (the same, on a server of its own)

The raw side is what a careful urllib3 user would write: one keep-alive connection pool with
connect/read timeouts, ``PUT /v1/kv/<key>`` (status and ``true`` checked), ``GET /v1/kv/<key>``
(JSON parsed, value base64-decoded), compare-and-swap as a read then ``PUT ?cas=<index>``, a
blocking-query loop (``?index=&wait=``) for watches, and a lock cycle of session create,
``?acquire=`` and session destroy. pykv does the same through its API (its CAS is ``get`` then
``atomic_put``). Measured on 100-byte values: put, get and CAS sequentially and with 8 threads
(ops/s), the process's CPU per operation (``time.process_time``), watch latency from a put to
its event in the consuming thread (p50/p99; the raw loop hands events to it as pykv's Watch
does) and lock cycles. Each measurement alternates many short rounds (pykv, raw, raw, pykv,
...) so both see the same server and machine load (which drifts within seconds on a shared
machine); the table gives the median of each side and the median
of the per-round ratios (ops/s: pykv/raw; latency and CPU: raw/pykv, so 1.0 is "as fast as
raw" and higher is better everywhere). Progress goes to stderr, the table to stdout.

pykv's put is a transaction (a delete, then a set: see the driver's documentation), which costs
the server more than a bare PUT; the rows "..., raw as txn" compare it with the raw client
sending that same transaction, which leaves only the client's cost.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import urllib3
from _common import median, percentile, progress, save_json

import pykv
from pykv import StoreURL

VALUE = b"x" * 100
THREADS = 8


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


class Raw:
    """A careful urllib3 client of Consul's KV API: the requests pykv makes, without pykv."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.pool = urllib3.HTTPConnectionPool(
            host,
            port,
            maxsize=2 * THREADS,
            block=True,
            retries=False,
            timeout=urllib3.Timeout(connect=3.0, read=10.0),
        )
        self.prefix = prefix

    def _path(self, key: str) -> str:
        return "/v1/kv/" + quote(f"{self.prefix}/{key}")

    def put(self, key: str, value: bytes, query: str = "") -> bool:
        response = self.pool.request("PUT", self._path(key) + query, body=value)
        if response.status != 200:
            raise RuntimeError(f"put {key}: {response.status} {response.data!r}")
        return bool(json.loads(response.data))

    def get(self, key: str, query: str = "") -> tuple[int, tuple[bytes, int] | None]:
        """(X-Consul-Index, (value, ModifyIndex) or None)."""
        timeout = urllib3.Timeout(connect=3.0, read=10.0 + 2.0 * ("wait=" in query))
        response = self.pool.request("GET", self._path(key) + query, timeout=timeout)
        index = int(response.headers["X-Consul-Index"])
        if response.status == 404:
            return index, None
        if response.status != 200:
            raise RuntimeError(f"get {key}: {response.status} {response.data!r}")
        entry = json.loads(response.data)[0]
        return index, (base64.b64decode(entry["Value"] or ""), int(entry["ModifyIndex"]))

    def txn_put(self, key: str, value: bytes) -> None:
        """The transaction pykv's put is (a delete, then a set): the server's share of its cost."""
        path = f"{self.prefix}/{key}"
        ops = [{"Verb": "delete", "Key": path}, {"Verb": "set", "Key": path, "Value": b64(value)}]
        body = json.dumps([{"KV": op} for op in ops])
        response = self.pool.request("PUT", "/v1/txn", body=body)
        if response.status != 200:
            raise RuntimeError(f"txn put {key}: {response.status} {response.data!r}")

    def cas(self, key: str, value: bytes) -> None:
        found = self.get(key)[1]
        if not self.put(key, value, f"?cas={found[1] if found else 0}"):
            raise RuntimeError(f"cas {key}: conflict")

    def lock_cycle(self, key: str) -> None:
        body = json.dumps({"Behavior": "delete", "LockDelay": "0s", "TTL": "10s"})
        response = self.pool.request("PUT", "/v1/session/create", body=body)
        session = json.loads(response.data)["ID"]
        if not self.put(key, b"", f"?acquire={session}"):
            raise RuntimeError(f"lock {key}: not acquired")
        response = self.pool.request("PUT", f"/v1/session/destroy/{session}")
        if response.status != 200:
            raise RuntimeError(f"unlock {key}: {response.status}")

    def watch(self, key: str, seen: dict[bytes, float], cond: threading.Condition) -> None:
        """A blocking-query loop on ``key`` until its value is ``b"stop"``."""
        index, last = self.get(key)
        while True:
            index, found = self.get(key, f"?index={index}&wait=2s")
            if found is not None and found != last:
                last = found
                with cond:
                    seen[found[0]] = time.perf_counter()
                    cond.notify_all()
                if found[0] == b"stop":
                    return


@dataclass
class Result:
    rate: float  # ops/s
    cpu: float  # process CPU seconds per op


def run(fn: Callable[[int], object], count: int, threads: int) -> Result:
    """``count`` calls of ``fn(i)`` over ``threads`` threads (after a short warm-up)."""
    for i in range(min(20, count)):
        fn(i)
    per = count // threads
    if threads == 1:
        cpu, start = time.process_time(), time.perf_counter()
        for i in range(count):
            fn(i)
        return Result(count / (time.perf_counter() - start), (time.process_time() - cpu) / count)
    barrier = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(t * per, (t + 1) * per):
            fn(i)
        barrier.wait()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    cpu, start = time.process_time(), time.perf_counter()
    barrier.wait()
    elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    for worker in workers:
        worker.join()
    return Result(per * threads / elapsed, used / (per * threads))


@dataclass
class Row:
    name: str
    unit: str  # "ops/s", "s" or "s/op" (CPU)
    pykv: float
    raw: float
    ratio: float  # median of the per-round ratios, higher is better


def paired(
    name: str,
    mine: Callable[[int], object],
    theirs: Callable[[int], object],
    n: int,
    k: int,
    threads: int = 1,
) -> list[Row]:
    """Rounds alternating which side goes first: throughput and CPU per op rows."""
    ours: list[Result] = []
    raws: list[Result] = []
    for i in range(k):
        if i % 2:
            raws.append(run(theirs, n, threads))
            ours.append(run(mine, n, threads))
        else:
            ours.append(run(mine, n, threads))
            raws.append(run(theirs, n, threads))
    rate = Row(
        name,
        "ops/s",
        median([o.rate for o in ours]),
        median([r.rate for r in raws]),
        median([o.rate / r.rate for o, r in zip(ours, raws, strict=True)]),
    )
    cpu = Row(
        f"{name} CPU/op",
        "s/op",
        median([o.cpu for o in ours]),
        median([r.cpu for r in raws]),
        median([r.cpu / o.cpu for o, r in zip(ours, raws, strict=True)]),
    )
    progress(f"  {name}: pykv/raw {rate.ratio:.2f} ops/s, CPU per op raw/pykv {cpu.ratio:.2f}")
    return [rate, cpu]


def watch_pykv(store: pykv.Store, n: int) -> list[float]:
    out = []
    with store.watch("w") as watch:
        watch.get(timeout=10)
        for i in range(n):
            value = f"p{i}".encode()
            start = time.perf_counter()
            store.put("w", value)
            while True:
                event = watch.get(timeout=10)
                if event is not None and event.value == value:
                    break
            out.append(time.perf_counter() - start)
    return out


def watch_raw(raw: Raw, n: int, txn: bool = False) -> list[float]:
    seen: dict[bytes, float] = {}
    cond = threading.Condition()
    raw.put("rw", b"start")
    thread = threading.Thread(target=raw.watch, args=("rw", seen, cond), daemon=True)
    thread.start()
    time.sleep(0.2)
    out = []
    for i in range(n):
        value = f"r{i}".encode()
        start = time.perf_counter()
        if txn:
            raw.txn_put("rw", value)
        else:
            raw.put("rw", value)
        with cond:
            if not cond.wait_for(lambda v=value: v in seen, timeout=10):  # type: ignore[misc]
                raise RuntimeError("the raw watch missed a put")
            # Taken in the consuming thread, as pykv's Watch.get hands it over: the same hop.
            out.append(time.perf_counter() - start)
    raw.put("rw", b"stop")
    thread.join(timeout=5)
    return out


def watch_rows(store: pykv.Store, raw: Raw, m: int, k: int) -> list[Row]:
    """Watch latency against the raw loop written to by a bare PUT, and by pykv's txn."""
    ours: list[list[float]] = []
    raws: list[list[float]] = []
    txns: list[list[float]] = []
    for i in range(k):
        if i % 2:
            txns.append(watch_raw(raw, m, txn=True))
            raws.append(watch_raw(raw, m))
            ours.append(watch_pykv(store, m))
        else:
            ours.append(watch_pykv(store, m))
            raws.append(watch_raw(raw, m))
            txns.append(watch_raw(raw, m, txn=True))
    rows = []
    for name, pct, theirs in (
        ("watch p50", 50, raws),
        ("watch p99", 99, raws),
        ("watch p50, raw as txn", 50, txns),
    ):
        o = [percentile(s, pct) for s in ours]
        r = [percentile(s, pct) for s in theirs]
        ratio = median([b / a for a, b in zip(o, r, strict=True)])
        rows.append(Row(name, "s", median(o), median(r), ratio))
    progress(f"  watch: p50 raw/pykv {rows[0].ratio:.2f}, against the txn {rows[2].ratio:.2f}")
    return rows


def fmt(value: float, unit: str) -> str:
    if unit == "ops/s":
        return f"{value:,.0f} ops/s"
    if unit == "s/op":
        return f"{value * 1e6:,.0f} us"
    return f"{value * 1e3:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--n", type=int, default=200, help="operations per round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    n, k = args.n, args.rounds
    prefix = f"pykv-bench/{uuid.uuid4().hex[:8]}"
    host = StoreURL.parse(args.url).hosts[0]
    raw = Raw(host.host, host.port or 8500, prefix + "/raw")
    store = pykv.open_store(args.url, prefix=prefix + "/pykv")
    progress(f"Consul at {args.url}: {n} ops per round, {k} rounds")
    rows: list[Row] = []
    try:
        for i in range(n):  # CAS updates existing keys on both sides
            store.put(f"c{i}", VALUE)
            raw.put(f"c{i}", VALUE)
        for threads in (1, THREADS):
            tail = "" if threads == 1 else f" x{threads}"
            rows += paired(
                f"put{tail}",
                lambda i: store.put(f"k{i % 100}", VALUE),
                lambda i: raw.put(f"k{i % 100}", VALUE),
                n,
                k,
                threads,
            )
            rows += paired(
                f"get{tail}",
                lambda i: store.get(f"k{i % 100}"),
                lambda i: raw.get(f"k{i % 100}"),
                n,
                k,
                threads,
            )

            # One key per call of a round: the threads' ranges of i never share a key.
            def ours_cas(i: int) -> None:
                key = f"c{i % n}"
                store.atomic_put(key, VALUE, store.get(key))

            rows += paired(
                f"cas{tail}", ours_cas, lambda i: raw.cas(f"c{i % n}", VALUE), n, k, threads
            )
            rows += paired(
                f"put{tail}, raw as txn",
                lambda i: store.put(f"k{i % 100}", VALUE),
                lambda i: raw.txn_put(f"k{i % 100}", VALUE),
                n,
                k,
                threads,
            )
        rows += watch_rows(store, raw, max(50, n // 5), k)

        lock = store.lock("lock", ttl=10)

        def ours_lock(_: int) -> None:
            lock.acquire()
            lock.release()

        rows += paired("lock cycle", ours_lock, lambda _: raw.lock_cycle("lock"), n // 10, k)
    finally:
        store.delete_tree("")
        raw.pool.request("DELETE", "/v1/kv/" + quote(prefix) + "?recurse=true")
        store.close()

    save_json(
        f"pykv on Consul ({args.url})",
        "raw urllib3",
        [
            (r.name, "s" if r.unit == "s" else "ops/s", r.pykv, r.raw)
            for r in rows
            if r.unit != "s/op"
        ],
    )
    print(f"pykv on Consul ({args.url}) against raw urllib3 on /v1/kv: median of {k} rounds")
    print()
    print(f"| {'operation':<25} | {'pykv':>13} | {'raw urllib3':>13} | {'ratio':>5} |")
    print(f"|{'-' * 27}|{'-' * 15}|{'-' * 15}|{'-' * 7}|")
    for r in rows:
        print(
            f"| {r.name:<25} | {fmt(r.pykv, r.unit):>13} | {fmt(r.raw, r.unit):>13} | "
            f"{r.ratio:>5.2f} |"
        )
    print()
    print("ratio: ops/s pykv/raw; latency and CPU per op raw/pykv (1.00 = as fast as raw).")


if __name__ == "__main__":
    main()
