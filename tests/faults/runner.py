"""The fault run: workloads in child processes, a nemesis acting on the cluster, the checkers.

:func:`run_faults` starts, for each target (a pykv URL on the cluster: etcd serves ``etcd://``
and ``etcd2://`` at once), a watcher, writers and lock workers (:mod:`workload`); then the
nemeses act one after another, each faulting a node for ``fault_seconds`` and healing it; then
everything is healed, a TTL owner comes up on the cluster that went through the faults and is
SIGKILLed, the workers stop, the final state is read, and the checkers run over the merged
history. Every fault
is healed in a ``finally``; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pykv

from .checkers import Checks, Event, Violation, nemesis_at, stats
from .workload import COUNTER, TTL_KEYS, TTL_LOCK_KEY

WORKLOAD = Path(__file__).with_name("workload.py")
NEMESES = ("kill-leader", "kill-random", "pause-leader", "partition-leader", "partition-client")
STORE_TIMEOUT = 3.0  # per call in the workloads: a stuck call gives way to failover in time


class ClusterLike(Protocol):
    """What the runner needs of tests/integration/_harness.Cluster."""

    nodes: tuple[str, ...]

    def leader(self, timeout: float = 30.0) -> str: ...
    def leader_among(self, nodes: Sequence[str]) -> str | None: ...
    def kill(self, node: str) -> None: ...
    def start(self, node: str) -> None: ...
    def pause(self, node: str) -> None: ...
    def unpause(self, node: str) -> None: ...
    def isolate(self, node: str) -> None: ...
    def cut_clients(self, node: str) -> None: ...
    def heal_network(self, node: str | None = None) -> None: ...
    def wait_healthy(self, timeout: float = 90.0) -> None: ...
    def restore(self, timeout: float = 90.0) -> None: ...
    def address(self, node: str) -> str: ...


@dataclass(frozen=True)
class Target:
    """One pykv URL the workloads run against."""

    label: str  # consul, etcd, etcd2, zookeeper
    url: str  # every node; the first is the node the clients talk to first
    slack: float  # the store class's ttl_slack
    overlap_bound: float = 0.0  # documented lost-detection bound (none: 0)


@dataclass
class Outcome:
    target: Target
    events: list[Event]
    violations: list[Violation]
    stats: dict[str, Any]
    history: Path | None = None  # where the history was saved (on failure)
    nemeses: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """One line per nemesis: what the checkers found in its window."""
        lines = []
        for nemesis in [*self.nemeses, "end"]:
            found = Counter(
                v.check for v in self.violations if nemesis_at(self.events, v.t) == nemesis
            )
            if nemesis == "end" and not found:
                continue
            verdict = ", ".join(f"{n} {check}" for check, n in sorted(found.items())) or "ok"
            lines.append(f"faults {self.target.label:<9} x {nemesis:<16} {verdict}")
        return lines


class Process:
    """A workload child; its stdout and stderr go to a file in the run's directory."""

    def __init__(
        self,
        target: Target,
        role: str,
        ident: str,
        directory: Path,
        prefix: str,
        *extra: str,
        ttl: float = 3.0,
    ) -> None:
        self.name = f"{role}-{ident}"
        self.output = directory / f"{self.name}.out"
        with self.output.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(WORKLOAD),
                    role,
                    "--url",
                    target.url,
                    "--prefix",
                    prefix,
                    "--dir",
                    str(directory),
                    "--id",
                    ident,
                    "--ttl",
                    str(ttl),
                    "--timeout",
                    str(STORE_TIMEOUT),
                    *extra,
                ],
                stdout=subprocess.PIPE if role == "ttl-owner" else out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                text=True,
            )

    def wait_ready(self, timeout: float) -> None:
        """For the TTL owner: wait for its ``ready`` line."""
        stdout = self.proc.stdout
        assert stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or result[0].strip() != "ready":
            self.kill()
            raise RuntimeError(
                f"{self.name} not ready within {timeout:.0f} s: {self.output.read_text()[-2000:]}"
            )

    def wait(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@dataclass
class Run:
    """The workloads of one target."""

    target: Target
    directory: Path
    prefix: str
    control: pykv.Store
    watcher: Process
    workers: list[Process]
    runner_log: Path
    owner: Process | None = None

    def record(self, kind: str, **fields: Any) -> None:
        fields.setdefault("t", time.monotonic())
        with self.runner_log.open("a", encoding="utf-8") as log:
            log.write(json.dumps({"type": kind, "proc": "runner", **fields}) + "\n")

    def all_processes(self) -> list[Process]:
        return [p for p in (self.owner, self.watcher, *self.workers) if p is not None]


def start_run(target: Target, directory: Path, lock_workers: int, writers: int, ttl: float) -> Run:
    directory.mkdir(parents=True, exist_ok=True)
    prefix = f"pykv-faults/{uuid.uuid4().hex[:12]}"
    control = pykv.open_store(target.url, prefix=prefix, timeout=10)
    control.put(COUNTER, "0")
    watcher = Process(target, "watcher", "0", directory, prefix, ttl=ttl)
    run = Run(target, directory, prefix, control, watcher, [], directory / "runner.jsonl")
    try:
        run.workers = [
            Process(target, "writer", str(i), directory, prefix, ttl=ttl) for i in range(writers)
        ]
        run.workers += [
            Process(target, "lock", str(i), directory, prefix, ttl=ttl) for i in range(lock_workers)
        ]
    except BaseException:
        for process in run.all_processes():
            process.kill()
        control.close()
        raise
    return run


READY_TIMEOUT = 60.0
#: The first event of each role that shows the process is at work.
WORKING = {"writer": ("put",), "lock": ("acquire",), "watcher": ("watch", "tree")}


def working(process: Process, directory: Path) -> bool:
    """Whether the process recorded the first answered operation(s) of its role."""
    role = process.name.rsplit("-", 1)[0]
    wanted = set(WORKING.get(role, ()))
    path = directory / f"{process.name}.jsonl"
    if not path.exists():
        return not wanted
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if event.get("ok", True):
                wanted.discard(event.get("type"))
    return not wanted


def wait_working(runs: Sequence[Run], timeout: float, log: Callable[[str], None]) -> None:
    """Wait (up to ``timeout``) until every workload process is at work, then a second more."""
    deadline = time.monotonic() + timeout
    pending = [(run, p) for run in runs for p in (run.watcher, *run.workers)]
    while pending and time.monotonic() < deadline:
        pending = [(run, p) for run, p in pending if not working(p, run.directory)]
        time.sleep(0.2)
    if pending:
        log(f"not yet at work after {timeout:.0f} s: {', '.join(p.name for _, p in pending)}")
    time.sleep(1.0)


# ------------------------------------------------------------------------------------------------
# Nemeses


def connected_ports(pid: int) -> list[int]:
    """The remote ports of the process's established TCP connections to 127.0.0.1 (from
    /proc: its socket descriptors, looked up in the host's TCP tables)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                remote, state, inode = fields[2], fields[3], fields[9]
                loopback = remote.startswith(("0100007F:", "0000000000000000FFFF00000100007F:"))
                if state == "01" and inode in inodes and loopback:
                    ports.append(int(remote.rsplit(":", 1)[1], 16))
    return ports


def watched_node(cluster: ClusterLike, runs: Sequence[Run]) -> str | None:
    """The node the watchers talk to now (the most connections), if any: partition-client
    cuts the clients off from it, so that every such fault breaks the watches."""
    by_port = {int(cluster.address(n).rsplit(":", 1)[1]): n for n in cluster.nodes}
    found = Counter(
        by_port[port]
        for run in runs
        for port in connected_ports(run.watcher.proc.pid)
        if port in by_port
    )
    return found.most_common(1)[0][0] if found else None


def pick_node(cluster: ClusterLike, nemesis: str, client_node: str) -> str:
    if nemesis == "kill-random":
        return random.choice(cluster.nodes)
    if nemesis == "partition-client":
        return client_node
    return cluster.leader(timeout=30)


def inject(cluster: ClusterLike, nemesis: str, node: str) -> None:
    if nemesis.startswith("kill-"):
        cluster.kill(node)
    elif nemesis == "pause-leader":
        cluster.pause(node)
    elif nemesis == "partition-leader":
        cluster.isolate(node)
    elif nemesis == "partition-client":
        cluster.cut_clients(node)
    else:
        raise ValueError(f"unknown nemesis {nemesis!r}; known: {', '.join(NEMESES)}")


def heal(cluster: ClusterLike, nemesis: str, node: str) -> None:
    if nemesis.startswith("kill-"):
        cluster.start(node)
    elif nemesis == "pause-leader":
        cluster.unpause(node)
    else:
        cluster.heal_network(node)


def fault(cluster: ClusterLike, nemesis: str, client_node: str, seconds: float) -> Event:
    """Fault one node for ``seconds``, heal it, wait until the cluster is whole again."""
    node = pick_node(cluster, nemesis, client_node)
    old_leader = cluster.leader(timeout=30)
    others = [n for n in cluster.nodes if n != node]
    start = time.monotonic()
    leader_at = None
    new_leader = None
    try:
        inject(cluster, nemesis, node)
        deadline = start + seconds
        while time.monotonic() < deadline:
            # When the leader was faulted: the instant the others agree on a new one, from
            # which operations must resume within 5 s.
            if node == old_leader and leader_at is None:
                new_leader = cluster.leader_among(others)
                if new_leader is not None:
                    leader_at = time.monotonic()
            time.sleep(max(0.0, min(0.2, deadline - time.monotonic())))
    finally:
        heal(cluster, nemesis, node)
    healed = time.monotonic()
    cluster.wait_healthy(90)
    return {
        "type": "fault",
        "t": start,
        "load": os.getloadavg()[0],  # the machine's 1-minute load average: timings under load
        "nemesis": nemesis,
        "node": node,
        "old_leader": old_leader,
        "new_leader": new_leader,
        "leader_at": leader_at,
        "heal": healed,
        "healthy": time.monotonic(),
    }


# ------------------------------------------------------------------------------------------------
# The run


def run_faults(
    cluster: ClusterLike,
    targets: Sequence[Target],
    nemeses: Sequence[str],
    directory: Path,
    *,
    duration: float | None = None,
    fault_seconds: float = 4.0,
    interval: float = 1.5,
    lock_workers: int = 3,
    writers: int = 2,
    ttl: float = 3.0,
    log: Callable[[str], None] = print,
    meta: dict[str, Any] | None = None,
) -> list[Outcome]:
    """Run the workloads on every target while ``nemeses`` act: each once, in order, or in
    turn until ``duration`` seconds have passed. Returns one outcome per target; each run's
    directory gets a ``summary.json`` (stats, violations, and ``meta``: the command, the
    commit)."""
    for nemesis in nemeses:
        if nemesis not in NEMESES:
            raise ValueError(f"unknown nemesis {nemesis!r}; known: {', '.join(NEMESES)}")
    cluster.wait_healthy(90)
    client_node = cluster.nodes[0]
    runs: list[Run] = []
    faults: list[Event] = []
    try:
        for target in targets:
            runs.append(start_run(target, directory / target.label, lock_workers, writers, ttl))
        # every workload working before the first fault: on a loaded machine, starting ten
        # interpreters can take longer than a fault, and a fault before the first operation
        # measures the start-up, not the driver (a "resume" of 19 s after a follower's kill)
        wait_working(runs, READY_TIMEOUT, log)
        began = time.monotonic()
        i = 0
        while True:
            if duration is None:
                if i >= len(nemeses):
                    break
            elif time.monotonic() - began >= duration:
                break
            nemesis = nemeses[i % len(nemeses)]
            if nemesis == "partition-client":
                client_node = watched_node(cluster, runs) or cluster.nodes[0]
            event = fault(cluster, nemesis, client_node, fault_seconds)
            faults.append(event)
            log(
                f"{nemesis} on {event['node']}: leader {event['old_leader']} -> "
                f"{event['new_leader']}, healthy again after "
                f"{event['healthy'] - event['t']:.1f} s"
            )
            for run in runs:
                run.record("fault", **{k: v for k, v in event.items() if k != "type"})
            i += 1
            time.sleep(interval)
    except BaseException:  # no workload may outlive the run (they retry forever)
        for run in runs:
            for process in run.all_processes():
                process.kill()
            run.control.close()
        raise
    finally:
        cluster.restore()
    healed = time.monotonic()
    outcomes = []
    try:
        owners = []
        for run in runs:
            run.owner = Process(run.target, "ttl-owner", "0", run.directory, run.prefix, ttl=ttl)
            owners.append(run.owner)
        for owner in owners:
            owner.wait_ready(60)
        time.sleep(1.0)  # a keepalive or two: the keys live on their renewals, not their start
        ttl_threads = [measure_ttl(run, ttl) for run in runs]
        for run in runs:
            run.record("healed", t=healed)
            (run.directory / "stop").touch()
            run.record("stop")
        for run in runs:
            for process in run.workers:
                if not process.wait(25):
                    run.record("straggler", name=process.name)
                    process.kill()
        quiet = time.monotonic()
        for run in runs:
            keys = {p.key: p.value.decode() for p in below(run.control, "w")}
            counter = int(run.control.get(COUNTER).value)
            run.record("final", counter=counter, keys=keys, t_ref=max(healed, quiet))
        time.sleep(6.0)  # the watch bound and a margin: the watcher reaches the final state
        for run in runs:
            (run.directory / "stop-watch").touch()
        for run in runs:
            if not run.watcher.wait(15):
                run.record("straggler", name=run.watcher.name)
                run.watcher.kill()
        for thread in ttl_threads:
            thread.join(60)
        for run in runs:
            outcomes.append(
                conclude(
                    run,
                    list(
                        nemeses if duration is None else dict.fromkeys(e["nemesis"] for e in faults)
                    ),
                    directory,
                    meta or {},
                )
            )
    finally:
        for run in runs:
            for process in run.all_processes():
                process.kill()
            with contextlib.suppress(pykv.PyKVError):
                run.control.delete_tree("")
            run.control.close()
    return outcomes


def below(store: pykv.Store, prefix: str) -> list[pykv.KVPair]:
    try:
        return store.list(prefix)
    except pykv.KeyNotFoundError:
        return []


def measure_ttl(run: Run, ttl: float) -> threading.Thread:
    """SIGKILL the TTL owner now; in a thread, time until its keys are gone and its lock can be
    taken, and record it."""
    assert run.owner is not None
    killed = time.monotonic()
    run.owner.kill()
    bound = ttl + run.target.slack

    def measure() -> None:
        keys_gone = lock_acquired = None
        deadline = killed + bound + 10
        with pykv.open_store(run.target.url, prefix=run.prefix, timeout=5) as observer:
            lock = observer.lock(TTL_LOCK_KEY, ttl=ttl)

            def take() -> None:
                nonlocal lock_acquired
                try:
                    if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                        lock_acquired = time.monotonic()
                        lock.release()
                except pykv.PyKVError as exc:
                    run.record("ttl-error", error=str(exc))

            taker = threading.Thread(target=take, daemon=True)
            taker.start()
            while time.monotonic() < deadline:
                try:
                    if not any(observer.exists(k) for k in TTL_KEYS):
                        keys_gone = time.monotonic()
                        break
                except pykv.PyKVError:
                    pass
                time.sleep(0.1)
            taker.join(max(0.0, deadline - time.monotonic()) + 5)
        run.record(
            "ttl",
            t=killed,
            killed=killed,
            keys_gone=keys_gone,
            lock_acquired=lock_acquired,
            ttl=ttl,
            slack=run.target.slack,
        )

    thread = threading.Thread(target=measure, daemon=True)
    thread.start()
    return thread


def load_events(directory: Path) -> list[Event]:
    events: list[Event] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by SIGKILL
                events.append(json.loads(line))
    return sorted(events, key=lambda e: e["t"] if isinstance(e["t"], float | int) else math.inf)


#: Driver log lines (in the watcher process's output, where only watches run) that say a watch's
#: connection, stream or long poll broke and is being reopened: Consul's blocking query failing
#: or timing out, etcd v3's watch stream failing, etcd v2's long poll breaking or failing over,
#: kazoo's connection dropping (its watches are re-registered on the new connection).
RECONNECT_LINE = re.compile(
    r"retrying in|did not answer|failed on|switching from Consul agent|watch stream failed"
    r"|cancelled the watch|; retrying|long poll on .* broke|\(retrying\)|failing over"
    r"|Connection dropped"
)


def watch_log(directory: Path) -> list[Event]:
    """The watcher's reconnect lines as ``watch-log`` events (their monotonic time first)."""
    events: list[Event] = []
    for path in sorted(directory.glob("watcher-*.out")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            stamp, _, rest = line.partition(" ")
            try:
                t = float(stamp)
            except ValueError:
                continue  # a traceback's continuation
            if RECONNECT_LINE.search(rest):
                events.append({"type": "watch-log", "proc": path.stem, "t": t, "line": rest[:200]})
    return events


def conclude(run: Run, nemeses: list[str], root: Path, meta: dict[str, Any]) -> Outcome:
    events = sorted(load_events(run.directory) + watch_log(run.directory), key=lambda e: e["t"])
    checks = Checks(overlap_bound=run.target.overlap_bound)
    violations = checks.run(events)
    outcome = Outcome(run.target, events, violations, stats(events), nemeses=nemeses)
    if violations:
        outcome.history = save_history(outcome, root)
    save_summary(outcome, run.directory, meta)
    return outcome


def save_summary(outcome: Outcome, directory: Path, meta: dict[str, Any]) -> Path:
    """The run's result, pass or fail: stats and violations (for docs/results/faults.json)."""
    faults = of_type_fault(outcome.events)
    path = directory / "summary.json"
    path.write_text(
        json.dumps(
            {
                **meta,
                "target": outcome.target.label,
                "nemeses": outcome.nemeses,
                "stats": {k: _finite(v) for k, v in outcome.stats.items()},
                "violations": [{**v.__dict__, "t": _finite(v.t)} for v in outcome.violations],
                "faulted nodes": dict(Counter(str(f["node"]) for f in faults)),
                "load average": [round(f["load"], 1) for f in faults if "load" in f],
                "fault seconds": (faults[-1]["healthy"] - faults[0]["t"]) if faults else 0.0,
            },
            indent=1,
            default=str,
        )
    )
    return path


def _finite(value: Any) -> Any:
    """Strict JSON has no infinity: an unbounded measurement (never happened) becomes null."""
    return None if isinstance(value, float) and math.isinf(value) else value


def of_type_fault(events: list[Event]) -> list[Event]:
    return [e for e in events if e["type"] == "fault"]


def save_history(outcome: Outcome, root: Path) -> Path:
    path = root / f"{outcome.target.label}-history.json"
    path.write_text(
        json.dumps(
            {
                "target": outcome.target.label,
                "url": outcome.target.url,
                "violations": [v.__dict__ for v in outcome.violations],
                "stats": outcome.stats,
                "events": outcome.events,
            },
            indent=1,
            default=str,
        )
    )
    return path


COLUMNS = (
    "acquisitions",
    "fenced writes",
    "acked writes",
    "indeterminate",
    "faults",
    "watch errors",
    "watch reconnects",
    "overlap",
    "stale",
    "lost writes",
    "dup CAS",
    "watch final",
    "watch silent",
    "ttl outlived",
    "max resume",
    "max lock gap",
)


def table(rows: Sequence[tuple[str, str, Outcome]]) -> str:
    """The long run's table: backend x nemesis."""
    head = ("backend", "nemesis", *COLUMNS)
    lines = [head]
    for backend, nemesis, outcome in rows:
        found = Counter(v.check for v in outcome.violations)
        s = outcome.stats
        ttl = s["ttl outlived"]
        lines.append(
            (
                backend,
                nemesis,
                str(s["acquisitions"]),
                str(s["fenced writes"]),
                str(s["acked writes"]),
                str(s["indeterminate"]),
                str(s["faults"]),
                str(s["watch errors"]),
                str(s["watch reconnects"]),
                str(found["overlap"]),
                str(found["stale-write"] + found["stale-accepted"]),
                str(found["lost-write"]),
                str(found["dup-cas"]),
                str(found["watch-final"]),
                str(found["watch-silent"]),
                "-" if ttl is None else f"{ttl:.1f}/{s['ttl bound']:g}" + "!" * found["ttl"],
                f"{s['max resume']:.1f}",
                f"{s['max lock gap']:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines
    )


def run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
