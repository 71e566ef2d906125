"""Benchmark the etcd v2 store against raw HTTP on urllib3 (what it is built on), on the same
server in one run.

    uv run --no-sync python bench/bench_etcd2.py [etcd2://127.0.0.1:2379] [--count N]

Both sides do the same v2 requests on 100-byte text values over one keep-alive urllib3 pool:
sequential put (PUT, status and JSON checked), get (GET, JSON parsed), compare-and-swap
(``prevIndex``), watch latency from a put to its event (a long poll ``wait=true&waitIndex=``
on a background thread, p50/p99), and lock acquire+release cycles per second (the raw side:
create a node with ``prevExist=false`` and a TTL, then delete it). Progress goes to stderr,
the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
import uuid
from typing import Any
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import urllib3
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

VALUE = "x" * 100


def bench_pykv(url: str, count: int, watch_count: int) -> dict[str, float]:
    return measure_pykv(url, count, watch_count)


class Raw:
    """A minimal v2 client: the requests pykv makes, without pykv."""

    def __init__(self, url: str) -> None:
        parsed = StoreURL.parse(url)
        host = parsed.hosts[0].with_default_port(2379)
        self.base = f"http://{host}/v2/keys"
        self.http = urllib3.PoolManager(maxsize=4, retries=False)
        self.timeout = urllib3.Timeout(connect=3, read=10)
        self.form = {"Content-Type": "application/x-www-form-urlencoded"}

    def call(self, method: str, path: str, query: str = "", value: str | None = None) -> Any:
        body = None if value is None else "value=" + quote(value, safe="")
        resp = self.http.request(
            method,
            self.base + quote(path, safe="/") + query,
            body=body,
            headers=self.form if body is not None else None,
            timeout=self.timeout,
        )
        data = json.loads(resp.data)
        if resp.status >= 300:
            raise RuntimeError(data)
        return data

    def watch(self, path: str, index: int, events: queue.Queue[Any], stop: threading.Event) -> None:
        timeout = urllib3.Timeout(connect=3, read=10)
        while not stop.is_set():
            resp = self.http.request(
                "GET",
                f"{self.base}{path}?wait=true&waitIndex={index}",
                timeout=timeout,
            )
            event = json.loads(resp.data)
            index = event["node"]["modifiedIndex"] + 1
            events.put(event)


def bench_raw(url: str, count: int, watch_count: int) -> dict[str, float]:
    raw = Raw(url)
    prefix = f"/bench-raw-{uuid.uuid4().hex[:8]}"
    out: dict[str, float] = {}
    out["put"] = best_rate(lambda i: raw.call("PUT", f"{prefix}/k{i % 100}", value=VALUE), count)
    out["get"] = best_rate(lambda i: raw.call("GET", f"{prefix}/k{i % 100}"), count)
    index = [raw.call("GET", f"{prefix}/k0")["node"]["modifiedIndex"]]

    def cas(_: int) -> None:
        node = raw.call("PUT", f"{prefix}/k0", f"?prevIndex={index[0]}", VALUE)["node"]
        index[0] = node["modifiedIndex"]

    out["atomic_put"] = best_rate(cas, count)
    events: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()
    start_index = raw.call("PUT", f"{prefix}/watched", value="start")["node"]["modifiedIndex"]
    thread = threading.Thread(
        target=raw.watch, args=(f"{prefix}/watched", start_index + 1, events, stop), daemon=True
    )
    thread.start()
    samples: list[float] = []
    for i in range(watch_count):
        start = time.perf_counter()
        raw.call("PUT", f"{prefix}/watched", value=str(i))
        while events.get(timeout=10)["node"].get("value") != str(i):
            pass
        samples.append(time.perf_counter() - start)
    stop.set()
    raw.call("PUT", f"{prefix}/watched", value="stop")  # wakes the poll so the thread ends
    thread.join(timeout=10)
    out["watch_p50"], out["watch_p99"] = median(samples), percentile(samples, 99)

    def cycle(_: int) -> None:
        raw.call("PUT", f"{prefix}/lock", "?prevExist=false&ttl=10", uuid.uuid4().hex)
        raw.call("DELETE", f"{prefix}/lock")

    out["lock"] = best_rate(cycle, max(50, count // 10))
    raw.call("DELETE", prefix, "?recursive=true")
    return out


def report(url: str, count: int, watch_count: int) -> str:
    progress(f"benchmarking {url} ({count} ops per measurement)")
    table = Table(f"pykv etcd v2 store on {url}", raw_label="raw urllib3 HTTP")
    return compare_interleaved(
        table,
        lambda: bench_pykv(url, count, watch_count),
        lambda: bench_raw(url, count, watch_count),
        {"lock": "pykv: bookkeeping node + value key (4 requests); raw: 2 requests"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="etcd2://127.0.0.1:2379")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--watch-count", type=int, default=500)
    args = parser.parse_args()
    print(report(args.url, args.count, args.watch_count))


if __name__ == "__main__":
    main()
