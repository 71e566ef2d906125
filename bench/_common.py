"""Shared helpers of the benchmarks: timing loops, percentiles and the result table."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Row:
    name: str
    pykv: float | None = None
    raw: float | None = None
    unit: str = "ops/s"
    note: str = ""
    #: a ratio measured otherwise (e.g. the median of interleaved rounds) to show instead
    ratio_value: float | None = None

    @property
    def ratio(self) -> str:
        if self.ratio_value is not None:
            return f"{self.ratio_value:.2f}x"
        if self.pykv is None or self.raw is None or self.raw == 0:
            return ""
        if self.unit == "ops/s":
            return f"{self.pykv / self.raw:.2f}x"
        return f"{self.raw / self.pykv:.2f}x" if self.pykv else ""


@dataclass
class Table:
    title: str
    raw_label: str = "raw"
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        progress(
            f"  {row.name}: pykv {fmt(row.pykv, row.unit)}  {self.raw_label} "
            f"{fmt(row.raw, row.unit)}"
        )

    def render(self) -> str:
        save_json(self.title, self.raw_label, [(r.name, r.unit, r.pykv, r.raw) for r in self.rows])
        header = ["operation", "pykv", self.raw_label, "pykv/raw", "note"]
        body = [
            [r.name, fmt(r.pykv, r.unit), fmt(r.raw, r.unit), r.ratio, r.note] for r in self.rows
        ]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
        lines = [self.title, ""]
        lines.append(
            "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
        )
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for b in body:
            lines.append(
                "| " + " | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) + " |"
            )
        lines.append("")
        lines.append(
            "ratios: ops/s rows are pykv/raw (higher is better); latency rows are "
            "raw/pykv (1.0 = as fast as raw)."
        )
        return "\n".join(lines)


def save_json(
    title: str, raw_label: str, rows: Sequence[tuple[str, str, float | None, float | None]]
) -> None:
    """Append one table as a JSON line to ``$PYKV_BENCH_JSON`` when set (for bench/plot.py).

    Rows are (operation, unit, pykv, raw); unit is "ops/s" or "s" (a latency)."""
    path = os.environ.get("PYKV_BENCH_JSON")
    if not path:
        return
    record = {
        "title": title,
        "raw_label": raw_label,
        "rows": [{"name": n, "unit": u, "pykv": p, "raw": r} for n, u, p, r in rows],
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ops/s":
        return f"{value:,.0f} ops/s"
    return f"{value * 1000:.2f} ms"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rate(fn: Callable[[int], object], count: int) -> float:
    """Operations per second of ``fn(i)`` for i in range(count) (after a short warm-up)."""
    for i in range(min(20, count)):
        fn(i)
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    return count / (time.perf_counter() - start)


def paired(
    mine: Callable[[int], object],
    theirs: Callable[[int], object],
    count: int,
    rounds: int,
) -> tuple[float, float, float]:
    """``rounds`` rounds of ``count`` calls of each side, alternating which goes first (the
    server and the shared CPUs drift, so only rounds run side by side compare fairly).
    Returns the median ops/s of each side and the median of the per-round ratios mine/theirs."""
    a: list[float] = []
    b: list[float] = []
    ratios: list[float] = []
    for i in range(rounds):
        if i % 2:
            y, x = rate(theirs, count), rate(mine, count)
        else:
            x, y = rate(mine, count), rate(theirs, count)
        a.append(x)
        b.append(y)
        ratios.append(x / y)
    return median(a), median(b), median(ratios)


def best_rate(fn: Callable[[int], object], count: int, repeats: int = 3) -> float:
    """The best of several runs: the least disturbed by other work on the machine."""
    return max(rate(fn, count) for _ in range(repeats))


def percentile(samples: list[float], pct: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))
    return ordered[index]


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def measure_pykv(url: str, count: int, watch_count: int) -> dict[str, float]:
    """The pykv side of every backend's benchmark, on a scratch prefix of ``url``.

    Keys: put, get, atomic_put (ops/s), watch_p50/watch_p99 (seconds from a put to its event),
    lock (acquire+release cycles per second).
    """
    import uuid

    import pykv

    value = b"x" * 100
    out: dict[str, float] = {}
    with pykv.open_store(url, prefix=f"bench-{uuid.uuid4().hex[:8]}") as store:
        out["put"] = best_rate(lambda i: store.put(f"k{i % 100}", value), count)
        out["get"] = best_rate(lambda i: store.get(f"k{i % 100}"), count)
        pair = [store.get("k0")]

        def cas(_: int) -> None:
            pair[0] = store.atomic_put("k0", value, pair[0])

        out["atomic_put"] = best_rate(cas, count)
        if pykv.Capability.WATCH in store.capabilities:
            samples: list[float] = []
            with store.watch("watched") as watch:
                watch.get(timeout=10)
                for i in range(watch_count):
                    start = time.perf_counter()
                    store.put("watched", str(i))
                    while True:
                        event = watch.get(timeout=10)
                        if event is not None and event.value == str(i).encode():
                            break
                    samples.append(time.perf_counter() - start)
            out["watch_p50"], out["watch_p99"] = median(samples), percentile(samples, 99)
        if pykv.Capability.LOCK in store.capabilities:
            lock = store.lock("lock", ttl=10)

            def cycle(_: int) -> None:
                lock.acquire()
                lock.release()

            out["lock"] = best_rate(cycle, max(50, count // 10))
        store.delete_tree("")
    return out


def compare_interleaved(
    table: Table,
    run_pykv: Callable[[], dict[str, float]],
    run_raw: Callable[[], dict[str, float]],
    notes: dict[str, str] | None = None,
) -> str:
    """Run raw, pykv, raw, pykv (so both see the same server state and machine load), add the
    best of each side to ``table`` (highest ops/s, lowest latency) and render it."""
    raw, ours, raw2, ours2 = run_raw(), run_pykv(), run_raw(), run_pykv()
    notes = notes or {}
    for name in ("put", "get", "atomic_put", "lock"):
        r, o = max(raw[name], raw2[name]), max(ours[name], ours2[name])
        label = name if name != "lock" else "lock acquire+release"
        table.add(Row(label, o, r, note=notes.get(name, "")))
    for name, label in (("watch_p50", "p50"), ("watch_p99", "p99")):
        r, o = min(raw[name], raw2[name]), min(ours[name], ours2[name])
        table.add(Row(f"watch latency {label} (put -> event)", o, r, unit="s"))
    return table.render()
