"""Plot the fault suite's long runs (docs/results/faults.json) as PNG files for the docs.

    uv run --no-sync python tests/faults/summarize.py .faults/long-* > docs/results/faults.json
    uv run --no-sync python bench/plot_faults.py docs/results/faults.json docs/results

Writes ``faults-volume.png`` (per backend x nemesis: fenced acquisitions, acknowledged writes
and watch reconnects against the issue's targets) and ``faults-timeliness.png`` (the longest
gap between acquisitions, the longest time to resume and the longest a dead owner's TTL keys
or lock lived, against their bounds), and prints the files' names.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # after choosing the backend

COLOURS = {"consul": "#e91e63", "etcd": "#3f51b5", "etcd2": "#009688", "zookeeper": "#ff9800"}


def load(path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if not doc["runs"]:
            raise ValueError("no runs")
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"plot_faults.py: {path}: not a faults summary: {exc}") from exc
    return doc


def panels(
    runs: list[dict[str, Any]],
    columns: list[tuple[str, str, Any]],
    title: str,
    out: Path,
) -> None:
    """One horizontal bar panel per column (stat, axis label, limit: a number, a function of
    the run, or None), one bar per run, a dashed line at the limit."""
    labels = [f"{r['backend']} x {r['nemesis']}" for r in runs]
    colours = [COLOURS.get(r["backend"], "#607d8b") for r in runs]
    fig, axes = plt.subplots(
        1, len(columns), figsize=(4 * len(columns), 0.3 * len(runs) + 1.8), dpi=110, sharey=True
    )
    ys = list(range(len(runs)))
    for ax, (stat, label, limit) in zip(axes, columns, strict=True):
        values = [r["stats"].get(stat) for r in runs]
        ax.barh(ys, [v or 0.0 for v in values], 0.7, color=colours)
        for y, value in zip(ys, values, strict=True):
            if value is None:
                ax.text(0, y, " none", va="center", fontsize=7)
        limits = [limit(r) if callable(limit) else limit for r in runs]
        if any(v is not None for v in limits):
            for y, v in zip(ys, limits, strict=True):
                if v is not None:
                    ax.plot([v, v], [y - 0.45, y + 0.45], color="black", ls="--", lw=1)
        ax.set_xlabel(label, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(ys, labels)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", type=Path, help="docs/results/faults.json")
    parser.add_argument("outdir", type=Path, help="where the PNG files go")
    args = parser.parse_args()
    doc = load(args.summary)
    runs, targets, bounds = doc["runs"], doc["targets"], doc["bounds"]
    args.outdir.mkdir(parents=True, exist_ok=True)
    out = args.outdir / "faults-volume.png"
    panels(
        runs,
        [
            ("acquisitions", "fenced acquisitions (target: dashed)", targets["acquisitions"]),
            ("acked writes", "acknowledged writes", targets["acked writes"]),
            ("watch reconnects", "watch reconnects", targets["watch reconnects"]),
        ],
        "Fault suite, long runs: work done under faults (higher is better)",
        out,
    )
    print(out)
    out = args.outdir / "faults-timeliness.png"
    panels(
        runs,
        [
            (
                "max lock gap",
                "longest acquisition gap, s (bound: dashed)",
                bounds["lock gap"],
            ),
            ("max resume", "longest time to resume after a fault, s", bounds["resume"]),
            ("ttl outlived", "dead owner's keys and lock lived, s (ttl + slack)", _ttl_bound),
        ],
        "Fault suite, long runs: worst delays (lower is better)",
        out,
    )
    print(out)
    return 0


def _ttl_bound(run: dict[str, Any]) -> float | None:
    bound = run["stats"].get("ttl bound")
    return float(bound) if bound else None


if __name__ == "__main__":
    sys.exit(main())
