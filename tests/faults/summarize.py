"""Gather the long runs' results into one JSON document (docs/results/faults.json).

    uv run --no-sync python tests/faults/summarize.py .faults/long-* > docs/results/faults.json
    uv run --no-sync python tests/faults/summarize.py --markdown docs/results/faults.json
    # add new runs to the published ones (each new backend x nemesis replaces the old row)
    uv run --no-sync python tests/faults/summarize.py --keep docs/results/faults.json .faults/long-*

Each long run (``scripts/faults.sh``) leaves, per target, ``<run>/<target>/summary.json``
(:func:`runner.save_summary`): the command and commit, the statistics, the violations. This
keeps one run per backend x nemesis (the latest, by the run directory's name, which starts
with its time; earlier ones are listed under ``superseded``) and prints the document:
``{"targets": ..., "bounds": ..., "runs": [...]}``, one run per backend x nemesis with the
count of each violation kind. Only the standard library: it runs without pykv.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

#: The issue's targets per backend x nemesis.
TARGETS = {"acquisitions": 300, "acked writes": 10_000, "watch reconnects": 20}
#: The checkers' bounds (checkers.py), in seconds; the TTL bound is per backend (ttl + slack).
BOUNDS = {"watch": 5.0, "resume": 5.0, "lock gap": 15.0}
CHECKS = (
    "overlap",
    "token-order",
    "stale-write",
    "stale-accepted",
    "lock-gap",
    "lost-write",
    "dup-cas",
    "watch-backwards",
    "watch-silent",
    "watch-final",
    "ttl",
    "resume",
)


def load(directories: list[Path]) -> list[dict[str, Any]]:
    found = []
    for directory in sorted(directories, key=lambda d: d.name):
        for path in sorted(directory.glob("*/summary.json")):
            summary = json.loads(path.read_text(encoding="utf-8"))
            summary["history"] = str(directory)
            found.append(summary)
    return found


def document(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    superseded: list[str] = []
    for summary in summaries:
        nemeses = summary["nemeses"]
        nemesis = nemeses[0] if len(nemeses) == 1 else "all"
        key = (summary["target"], nemesis)
        if key in latest:
            superseded.append(latest[key]["history"])
        counts = Counter(v["check"] for v in summary["violations"])
        latest[key] = {
            "backend": summary["target"],
            "nemesis": nemesis,
            "command": summary.get("command"),
            "commit": summary.get("commit"),
            "finished": summary.get("finished"),
            "duration": summary.get("duration"),
            "history": summary["history"],
            "faulted nodes": summary.get("faulted nodes", {}),
            "load average": summary.get("load average", []),
            "note": summary.get("note"),
            "stats": summary["stats"],
            "violations": {check: counts.get(check, 0) for check in CHECKS},
            "details": [v["detail"] for v in summary["violations"]],
        }
    runs = sorted(latest.values(), key=lambda r: (r["backend"], r["nemesis"]))
    return {"targets": TARGETS, "bounds": BOUNDS, "runs": runs, "superseded": superseded}


def merge(doc: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
    """``doc`` plus the runs of ``earlier`` for every backend x nemesis ``doc`` has not run
    again (those it has are listed under ``superseded``)."""
    have = {(r["backend"], r["nemesis"]) for r in doc["runs"]}
    runs, superseded = list(doc["runs"]), list(doc["superseded"])
    for run in earlier.get("runs", []):
        if (run["backend"], run["nemesis"]) in have:
            superseded.append(run["history"])
        else:
            runs.append(run)
    superseded += [h for h in earlier.get("superseded", []) if h not in superseded]
    runs.sort(key=lambda r: (r["backend"], r["nemesis"]))
    return {**doc, "runs": runs, "superseded": superseded}


def markdown(doc: dict[str, Any]) -> str:
    """The table of docs/results.md: one row per backend x nemesis."""
    head = (
        "| backend | nemesis | s | acquisitions | acked writes | watch reconnects | overlaps "
        "| stale writes | lost writes | dup CAS | wrong final watches | late watches "
        "| max lock gap | max resume | TTL outlived / bound | faults | load |"
    )
    lines = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
    for run in doc["runs"]:
        s, v = run["stats"], run["violations"]
        ttl = s["ttl outlived"]
        resume = s["max resume"]
        cells = [
            run["backend"],
            run["nemesis"],
            f"{run['duration']:g}" if run.get("duration") else "?",
            str(s["acquisitions"]),
            str(s["acked writes"]),
            str(s["watch reconnects"]),
            str(v["overlap"]),
            str(v["stale-write"] + v["stale-accepted"]),
            str(v["lost-write"]),
            str(v["dup-cas"]),
            str(v["watch-final"]),
            str(v["watch-silent"]),
            f"{s['max lock gap']:.1f} s",
            "never" if resume is None else f"{resume:.1f} s",
            "-" if ttl is None else f"{ttl:.1f} / {s['ttl bound']:g} s",
            str(s["faults"]),
            _load(run.get("load average") or []),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load(samples: list[float]) -> str:
    """The machine's 1-minute load average over the run's faults: median (max)."""
    if not samples:
        return "?"
    ordered = sorted(samples)
    return f"{ordered[len(ordered) // 2]:.0f} ({ordered[-1]:.0f})"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="long-run directories under .faults/")
    parser.add_argument(
        "--markdown", type=Path, metavar="JSON", help="print the docs' table of a faults.json"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="JSON",
        help="a faults.json whose runs are kept where the new runs do not replace them",
    )
    args = parser.parse_args(argv)
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text(encoding="utf-8"))))
        return 0
    summaries = load(args.runs)
    if not summaries:
        raise SystemExit("summarize.py: no summary.json under the directories given")
    doc = document(summaries)
    if args.keep is not None:
        doc = merge(doc, json.loads(args.keep.read_text(encoding="utf-8")))
    json.dump(doc, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
