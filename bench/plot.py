"""Plot benchmark results (JSON lines written by the bench scripts) as PNG files for the docs.

    PYKV_BENCH_JSON=docs/results/bench.jsonl uv run --no-sync python bench/bench_store.py
    uv run --no-sync python bench/plot.py docs/results/bench.jsonl docs/results

Every bench script appends one JSON object per table to ``$PYKV_BENCH_JSON`` (see
``_common.save_json``): ``{"title", "raw_label", "rows": [{"name", "unit", "pykv", "raw"}]}``,
with unit ``ops/s`` or ``s`` (a latency). For each table this writes ``<slug>-throughput.png``
(ops/s, pykv beside the raw client where there is one) and ``<slug>-latency.png`` (ms), and
prints the files' names. A later table with the same title replaces an earlier one.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # after choosing the backend


def slug(title: str) -> str:
    """A file name from a table's title: "pykv on sqlite:///tmp/x/bench.db" -> "pykv-on-sqlite"."""
    title = re.sub(r"[:(]\S*", "", title)  # drop URLs and their paths
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "bench"


def load(path: Path) -> dict[str, dict[str, Any]]:
    """Tables by title, the last one of each title winning."""
    tables: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            tables[str(record["title"])] = record
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"plot.py: {path}:{number}: not a bench table: {exc}") from exc
    if not tables:
        raise SystemExit(f"plot.py: {path} holds no tables")
    return tables


def bar_chart(rows: list[dict[str, Any]], raw_label: str, title: str, unit: str, out: Path) -> None:
    scale = 1000.0 if unit == "s" else 1.0
    names = [str(r["name"]) for r in rows]
    ours = [(r["pykv"] or 0.0) * scale for r in rows]
    theirs = [(r["raw"] or 0.0) * scale for r in rows]
    has_raw = any(r["raw"] is not None for r in rows)
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.6), dpi=110)
    ys = range(len(rows))
    height = 0.38 if has_raw else 0.6
    offset = height / 2 if has_raw else 0.0
    ax.barh([y - offset for y in ys], ours, height, label="pykv", color="#3f51b5")
    if has_raw:
        ax.barh([y + offset for y in ys], theirs, height, label=raw_label, color="#ff9800")
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel(
        "operations per second (higher is better)" if unit == "ops/s" else "ms (lower is better)"
    )
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="JSON lines written by the bench scripts")
    parser.add_argument("outdir", type=Path, help="where the PNG files go")
    args = parser.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    for title, table in load(args.results).items():
        for unit, suffix in (("ops/s", "throughput"), ("s", "latency")):
            rows = [r for r in table["rows"] if r["unit"] == unit and r["pykv"] is not None]
            if not rows:
                continue
            out = args.outdir / f"{slug(title)}-{suffix}.png"
            bar_chart(rows, str(table.get("raw_label", "raw")), title, unit, out)
            print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
