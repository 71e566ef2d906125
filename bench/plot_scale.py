"""Plot the scale simulation's results (``scale-sim.json`` from bench/scale_sim.py) as PNGs.

    uv run --no-sync python bench/plot_scale.py docs/results/scale-sim.json docs/results

Writes ``scale-convergence.png`` (change-to-all-watchers time, sorted, per backend),
``scale-keepalive.png`` (keepalive requests per host per TTL/3 against the goal of one),
``scale-cpu.png`` (server and watcher CPU over the run, phases marked) and
``scale-watchers.png`` (watcher RSS and CPU per change), and prints their names. Also prints
the results table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # after choosing the backend
from scale_sim import table

ORDER = ("etcd", "etcd2", "consul", "zookeeper")
LABELS = {"etcd": "etcd v3", "etcd2": "etcd v2", "consul": "Consul", "zookeeper": "ZooKeeper"}


def subtitle(results: dict[str, Any]) -> str:
    sizes = sorted({f"{r['hosts']} hosts x {r['endpoints']} endpoints" for r in results.values()})
    if len(sizes) > 1:
        sizes = [
            ", ".join(f"{LABELS[n]} {r['hosts']}x{r['endpoints']}" for n, r in results.items())
        ]
    r = next(iter(results.values()))
    return f"{sizes[0]}, {r['watchers']} watchers, TTL {r['ttl']:g} s, 3-node clusters"


def convergence(results: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in results.items():
        values = sorted(v * 1000 for v in r["convergence_s"])
        if not values:
            continue
        changes = len(values) + r["changes_missed"]  # the missed ones never reach 100 %
        fractions = [(i + 1) / changes * 100 for i in range(len(values))]
        label = (
            f"{LABELS[name]}: p50 {r['convergence_p50_s'] * 1000:.0f} ms, "
            f"p99 {r['convergence_p99_s'] * 1000:.0f} ms"
        )
        if r["changes_missed"]:
            label += f", {r['changes_missed']} missed"
        ax.step(values, fractions, where="post", label=label)
    ax.axvline(1000, color="grey", linestyle="--", linewidth=1, label="goal: 1 s")
    ax.set_xscale("log")
    ax.set_xlabel("change to all watchers (ms, log scale)")
    ax.set_ylabel("changes seen by every watcher (%)")
    ax.set_title(f"Convergence\n{subtitle(results)}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return finish(fig, out / "scale-convergence.png")


def keepalive(results: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = list(results)
    values = [results[n]["keepalive_per_host_per_interval"] for n in names]
    bars = ax.bar([LABELS[n] for n in names], values, color="tab:blue")
    for bar, name, value in zip(bars, names, values, strict=True):
        held = results[name]["sessions_per_store"]
        note = "no leases" if held is None else f"{held:.2f} sessions/store"
        ax.annotate(
            f"{value:.2f}\n{note}\n({results[name]['keepalive_metric']})",
            (bar.get_x() + bar.get_width() / 2, value),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.axhline(1, color="grey", linestyle="--", linewidth=1, label="goal: 1 per host per TTL/3")
    ax.set_yscale("log")
    ax.set_ylim(0.1, max([*values, 1]) * 10)
    ax.set_ylabel("requests per host per TTL/3 (log)")
    ax.set_title(f"Keepalive traffic, from the servers' metrics\n{subtitle(results)}", fontsize=9)
    ax.legend(fontsize=8)
    return finish(fig, out / "scale-keepalive.png")


def cpu(results: dict[str, Any], out: Path) -> Path:
    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.2 * len(results) + 0.6), squeeze=False)
    for ax, (name, r) in zip(axes[:, 0], results.items(), strict=True):
        samples = r["timeline"]["samples"]
        for group, color in (
            ("servers", "tab:red"),
            ("watchers", "tab:green"),
            ("hosts", "tab:blue"),
        ):
            times, cores = [], []
            for before, after in itertools.pairwise(samples):
                if (
                    group in before
                    and group in after
                    and after[group]["cpu"] >= before[group]["cpu"]
                    and after["t"] - before["t"] >= 1.0  # a late sample after a short one
                    and after[group].get("n") == before[group].get("n")
                    # a process of the group ended or was reaped between the samples (older
                    # files have no "n"): its ticks jump
                    and (after[group]["cpu"] - before[group]["cpu"]) / (after["t"] - before["t"])
                    < 16
                ):
                    times.append(after["t"])
                    cores.append(
                        (after[group]["cpu"] - before[group]["cpu"]) / (after["t"] - before["t"])
                    )
            ax.plot(
                times,
                cores,
                color=color,
                linewidth=1,
                label=f"{group} (3 nodes)" if group == "servers" else group,
            )
        for phase, t in r["timeline"]["phases"]:
            ax.axvline(t, color="grey", linewidth=0.8, linestyle=":")
            ax.annotate(
                phase,
                (t, 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=6,
                rotation=90,
                va="top",
                ha="right",
            )
        ax.set_ylabel(f"{LABELS[name]}\nCPU (cores)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds since the cluster was ready")
    axes[0, 0].set_title(f"CPU over the run\n{subtitle(results)}", fontsize=9)
    return finish(fig, out / "scale-cpu.png")


def watchers(results: dict[str, Any], out: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    labels = [LABELS[n] for n in results]
    rss = [r["watcher_rss_per_watcher_bytes"] / 2**20 for r in results.values()]
    per_change = [r["watcher_cpu_per_watcher_per_change_s"] * 1000 for r in results.values()]
    left.bar(labels, rss, color="tab:green")
    left.set_ylabel("MiB per watcher holding every endpoint")
    right.bar(labels, per_change, color="tab:orange")
    right.set_ylabel("CPU ms per watcher per change")
    for ax, values in ((left, rss), (right, per_change)):
        for i, v in enumerate(values):
            ax.annotate(f"{v:.1f}", (i, v), ha="center", va="bottom", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"Watchers\n{subtitle(results)}", fontsize=9)
    return finish(fig, out / "scale-watchers.png")


def finish(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Plot the scale simulation's results.")
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    loaded: dict[str, Any] = json.loads(args.results.read_text(encoding="utf-8"))
    results = {name: loaded[name] for name in ORDER if name in loaded}
    if not results:
        sys.exit(f"{args.results}: no results")
    args.out.mkdir(parents=True, exist_ok=True)
    for plot in (convergence, keepalive, cpu, watchers):
        print(plot(results, args.out))
    print(table(results))


if __name__ == "__main__":
    main()
