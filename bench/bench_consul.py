"""pykv's Consul driver against py-consul used directly, on the same server, in one run.

    uv run --no-sync python bench/bench_consul.py consul://127.0.0.1:18500 [--n 1000]

Sequential put, get and atomic_put (ops/s), watch latency from put to event (p50/p99 ms) and
lock acquire+release cycles per second; each measured in alternating rounds (pykv, raw, pykv,
raw, ...) and the median round kept, with the ratio pykv/raw (higher is better for ops/s,
lower for latencies). The raw side does what a careful py-consul user would: kv.put/kv.get,
a txn ``cas``, a blocking-query loop, and session create + acquire + destroy.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import threading
import time
import uuid
from typing import Any

import consul

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import paired, percentile, save_json

import pykv
from pykv import StoreURL

VALUE = b"x" * 64


def watch_latency_pykv(store: pykv.Store, n: int) -> list[float]:
    out = []
    with store.watch("w") as watch:
        watch.get(timeout=10)
        for i in range(n):
            start = time.perf_counter()
            store.put("w", str(i))
            while True:
                event = watch.get(timeout=10)
                if event is not None and event.value == str(i).encode():
                    break
            out.append(time.perf_counter() - start)
    return out


def watch_latency_raw(client: Any, key: str, n: int) -> list[float]:
    seen: dict[bytes, float] = {}
    cond = threading.Condition()
    stop = threading.Event()

    def loop() -> None:
        index, _ = client.kv.get(key)
        while not stop.is_set():
            index, entry = client.kv.get(key, index=index, wait="2s")
            if entry is not None:
                with cond:
                    seen[entry["Value"]] = time.perf_counter()
                    cond.notify_all()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(0.2)
    out = []
    for i in range(n):
        value = f"r{i}".encode()
        start = time.perf_counter()
        client.kv.put(key, value)
        with cond:
            cond.wait_for(lambda v=value: v in seen, timeout=10)  # type: ignore[misc]
            out.append(seen[value] - start)
    stop.set()
    client.kv.put(key, b"end")
    thread.join(timeout=5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--n", type=int, default=1000, help="operations per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n, k = args.n, args.rounds
    prefix = f"pykv-bench/{uuid.uuid4().hex[:8]}"
    host = StoreURL.parse(args.url).hosts[0]
    raw = consul.Consul(host=host.host, port=host.port or 8500, connections_timeout=10)
    store = pykv.open_store(args.url, prefix=prefix)
    rows: list[tuple[str, str, float, float, bool]] = []
    try:
        p, r = paired(
            lambda i: store.put(f"p/{i % 100}", VALUE),
            lambda i: raw.kv.put(f"{prefix}/r/{i % 100}", VALUE),
            n,
            k,
        )[:2]
        rows.append(("put", "ops/s", p, r, True))
        p, r = paired(
            lambda i: store.get(f"p/{i % 100}"),
            lambda i: raw.kv.get(f"{prefix}/r/{i % 100}"),
            n,
            k,
        )[:2]
        rows.append(("get", "ops/s", p, r, True))

        pair = store.atomic_put("cas", VALUE, None)
        box = [pair]

        def ours_cas(_: int) -> None:
            box[0] = store.atomic_put("cas", VALUE, box[0])

        raw.kv.put(f"{prefix}/rcas", VALUE)
        index = [raw.kv.get(f"{prefix}/rcas")[1]["ModifyIndex"]]
        encoded = base64.b64encode(VALUE).decode()

        def raw_cas(_: int) -> None:
            op = {"Verb": "cas", "Key": f"{prefix}/rcas", "Value": encoded, "Index": index[0]}
            result = raw.txn.put([{"KV": op}])
            index[0] = result["Results"][0]["KV"]["ModifyIndex"]

        p, r = paired(ours_cas, raw_cas, n, k)[:2]
        rows.append(("atomic_put", "ops/s", p, r, True))

        m = max(50, n // 5)
        ours_lat = watch_latency_pykv(store, m)
        raw_lat = watch_latency_raw(raw, f"{prefix}/rw", m)
        rows.append(
            (
                "watch p50",
                "ms",
                percentile(ours_lat, 50) * 1e3,
                percentile(raw_lat, 50) * 1e3,
                False,
            )
        )
        rows.append(
            (
                "watch p99",
                "ms",
                percentile(ours_lat, 99) * 1e3,
                percentile(raw_lat, 99) * 1e3,
                False,
            )
        )

        def ours_lock(_: int) -> None:
            with store.lock("lock", ttl=10):
                pass

        def raw_lock(_: int) -> None:
            sid = raw.session.create(behavior="delete", lock_delay=0, ttl=10)
            assert raw.kv.put(f"{prefix}/rlock", b"", acquire=sid)
            raw.session.destroy(sid)

        c = max(20, n // 10)
        p, r = paired(ours_lock, raw_lock, c, k)[:2]
        rows.append(("lock cycle", "ops/s", p, r, True))
    finally:
        store.delete_tree("")
        raw.kv.delete(prefix + "/", recurse=True)
        store.close()

    rows_json = [
        (x, u, o, t) if u == "ops/s" else (x, "s", o / 1e3, t / 1e3) for x, u, o, t, _ in rows
    ]
    save_json(f"pykv on Consul ({args.url})", "py-consul", rows_json)
    print(f"Consul at {args.url}: {n} ops per round, median of {k} rounds")
    print(f"{'operation':<12} {'unit':<6} {'pykv':>10} {'py-consul':>10} {'pykv/raw':>9}")
    for name, unit, ours, theirs, _higher_better in rows:
        print(f"{name:<12} {unit:<6} {ours:>10.1f} {theirs:>10.1f} {ours / theirs:>9.2f}")


if __name__ == "__main__":
    main()
