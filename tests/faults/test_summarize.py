"""summarize.py: new long runs replace the published row of their backend x nemesis and keep
the others."""

from __future__ import annotations

from typing import Any

from faults.summarize import merge


def _run(backend: str, nemesis: str, history: str) -> dict[str, Any]:
    return {"backend": backend, "nemesis": nemesis, "history": history}


def test_merge_replaces_rerun_combinations_and_keeps_the_rest() -> None:
    earlier = {
        "runs": [_run("consul", "kill-leader", "old-1"), _run("etcd", "pause-leader", "old-2")],
        "superseded": ["older"],
    }
    new = {"runs": [_run("consul", "kill-leader", "new-1")], "superseded": []}
    merged = merge(new, earlier)
    assert [(r["backend"], r["nemesis"], r["history"]) for r in merged["runs"]] == [
        ("consul", "kill-leader", "new-1"),
        ("etcd", "pause-leader", "old-2"),
    ]
    assert merged["superseded"] == ["old-1", "older"]
