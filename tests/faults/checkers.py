"""Checkers: pure functions over a recorded history, each returning the violations it finds.

A history is a list of events (dicts with at least ``type`` and ``t``, a ``time.monotonic()``
value shared by every process on the host), as written by :mod:`workload` and the runner:

- lock workers: ``acquire`` (``token``, ``t`` taken after ``acquire`` returned), ``release``
  (``t`` taken before ``release`` was called), ``lost`` (``t`` when ``lock.lost`` woke the
  holder), ``exit``; the fenced register: ``register`` (``token``, ``highest``, ``accepted``);
- writers: ``put`` (``key``, ``value``, ``ok``) and ``cas`` (``value``, ``ok``, ``definite``);
- the watcher: ``watch`` (``value``, ``revision``), ``tree`` (``count``, ``revision``) and
  ``watch-error``/``tree-error``;
- the runner: ``fault`` (``nemesis``, ``node``, ``heal``, ``leader_at``), ``stop`` (workers
  told to stop), ``final`` (``counter``, ``keys``, ``t_ref``: healed and quiet) and ``ttl``
  (``killed``, ``keys_gone``, ``lock_acquired``, ``ttl``, ``slack``).

Measured times carry scheduling noise on a loaded machine; ``TOLERANCE`` absorbs it where a
bound is compared with two measured instants.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Event = dict[str, Any]

TOLERANCE = 0.25  # seconds of measurement noise allowed when comparing two measured instants
WATCH_BOUND = 5.0  # a watch delivers a change, and the final state, within this
RESUME_BOUND = 5.0  # operations resume within this of a new leader
LOCK_GAP_BOUND = 15.0  # longest time without an acquisition while workers contend


@dataclass(frozen=True)
class Violation:
    check: str
    t: float
    detail: str


@dataclass(frozen=True)
class Hold:
    proc: str
    token: int
    start: float
    end: float


def of_type(events: Iterable[Event], *types: str) -> list[Event]:
    return sorted((e for e in events if e["type"] in types), key=lambda e: e["t"])


def holds(events: list[Event]) -> list[Hold]:
    """Each acquisition as the interval in which its holder believed it held the lock: from
    ``acquire`` to its ``release`` call or ``lost`` (or the process's last event)."""
    by_proc: dict[str, list[Event]] = defaultdict(list)
    for event in of_type(events, "acquire", "release", "lost", "exit", "crash"):
        by_proc[event["proc"]].append(event)
    result = []
    for proc, seq in by_proc.items():
        current: Event | None = None
        for event in seq:
            if event["type"] == "acquire":
                if current is not None:  # a new acquisition ends the previous belief
                    result.append(Hold(proc, current["token"], current["t"], event["t"]))
                current = event
            elif current is not None:
                result.append(Hold(proc, current["token"], current["t"], event["t"]))
                current = None
        if current is not None:  # no end recorded: the belief lasted to the end of the run
            result.append(Hold(proc, current["token"], current["t"], math.inf))
    return sorted(result, key=lambda h: h.start)


def check_overlaps(events: list[Event], bound: float = 0.0) -> list[Violation]:
    """Two holders who both believed they held the lock at the same time, for longer than
    ``bound`` (the backend's documented lost-detection bound) plus the measurement tolerance."""
    found = []
    active: list[Hold] = []
    for hold in holds(events):
        active = [h for h in active if h.end > hold.start]
        for other in active:
            if other.proc == hold.proc:
                continue
            overlap = min(other.end, hold.end) - hold.start
            if overlap > bound + TOLERANCE:
                found.append(
                    Violation(
                        "overlap",
                        hold.start,
                        f"{other.proc} (token {other.token}) and {hold.proc} (token {hold.token}) "
                        f"both held the lock for {overlap:.3f} s",
                    )
                )
        active.append(hold)
    return found


def check_tokens(events: list[Event]) -> list[Violation]:
    """Fencing tokens strictly increase with every acquisition, in acquisition order."""
    found = []
    previous: Event | None = None
    for event in of_type(events, "acquire"):
        if previous is not None and event["token"] <= previous["token"]:
            found.append(
                Violation(
                    "token-order",
                    event["t"],
                    f"{event['proc']} got token {event['token']} after {previous['proc']} "
                    f"got {previous['token']}",
                )
            )
        previous = event
    return found


def check_register(events: list[Event]) -> list[Violation]:
    """Stale fenced writes: a holder writing a token lower than one the register has seen
    (refused: the holder acted on a lock someone newer held), and worse, such a write accepted."""
    found = []
    for event in of_type(events, "register"):
        if event["token"] < event["highest"]:
            check = "stale-accepted" if event["accepted"] else "stale-write"
            found.append(
                Violation(
                    check,
                    event["t"],
                    f"{event['proc']} wrote token {event['token']} after token "
                    f"{event['highest']}; {'accepted' if event['accepted'] else 'refused'}",
                )
            )
    return found


def check_lock_gaps(events: list[Event], bound: float = LOCK_GAP_BOUND) -> list[Violation]:
    """Lock liveness: no stretch longer than ``bound`` without an acquisition while the
    workers contend (from the first worker's store being open, or its start in histories
    without ``open`` events, until they are told to stop)."""
    starts = [e["t"] for e in of_type(events, "open") if str(e["proc"]).startswith("lock-")] or [
        e["t"] for e in of_type(events, "start") if str(e["proc"]).startswith("lock-")
    ]
    stops = [e["t"] for e in of_type(events, "stop")]
    if not starts:
        return []
    end = stops[0] if stops else max(e["t"] for e in events)
    times = [min(starts), *(e["t"] for e in of_type(events, "acquire") if e["t"] <= end), end]
    found = []
    for before, after in itertools.pairwise(times):
        if after - before > bound:
            # attributed to the nemesis window that holds the middle of the gap
            found.append(
                Violation(
                    "lock-gap",
                    (before + after) / 2,
                    f"no acquisition for {after - before:.1f} s (t={before:.1f} to t={after:.1f})",
                )
            )
    return found


def max_lock_gap(events: list[Event]) -> float:
    acquired = [e["t"] for e in of_type(events, "acquire")]
    return max((b - a for a, b in itertools.pairwise(acquired)), default=0.0)


def final_of(events: list[Event]) -> Event | None:
    finals = of_type(events, "final")
    return finals[-1] if finals else None


def check_writes(events: list[Event]) -> list[Violation]:
    """Every acknowledged put is there after healing, with its value; the counter is at least
    every value a compare-and-swap acknowledged."""
    final = final_of(events)
    if final is None:
        return [Violation("no-final", math.inf, "the history has no final state")]
    keys: dict[str, str] = final["keys"]
    found = []
    for event in of_type(events, "put"):
        if event["ok"] and keys.get(event["key"]) != event["value"]:
            found.append(
                Violation(
                    "lost-write",
                    event["t"],
                    f"acknowledged put {event['key']}={event['value']!r} reads "
                    f"{keys.get(event['key'])!r} after healing",
                )
            )
    acked = [e for e in of_type(events, "cas") if e["ok"]]
    for event in acked:
        if event["value"] > final["counter"]:
            found.append(
                Violation(
                    "lost-write",
                    event["t"],
                    f"acknowledged counter value {event['value']} but the counter ends at "
                    f"{final['counter']}",
                )
            )
    return found


def check_cas(events: list[Event]) -> list[Violation]:
    """No compare-and-swap value acknowledged twice."""
    first: dict[int, Event] = {}
    found = []
    for event in of_type(events, "cas"):
        if not event["ok"]:
            continue
        if event["value"] in first:
            other = first[event["value"]]
            found.append(
                Violation(
                    "dup-cas",
                    event["t"],
                    f"counter value {event['value']} acknowledged to {other['proc']} and "
                    f"{event['proc']}",
                )
            )
        else:
            first[event["value"]] = event
    return found


def check_watch(events: list[Event], bound: float = WATCH_BOUND) -> list[Violation]:
    """Watches never go backwards, see each acknowledged change within ``bound`` and end in the
    final state within ``bound`` of the cluster being healed and quiet."""
    found = []
    watch = [e for e in of_type(events, "watch") if e["value"] is not None]
    tree = of_type(events, "tree")
    for seq, field_name in ((watch, "value"), (watch, "revision"), (tree, "revision")):
        for before, after in itertools.pairwise(seq):
            if after[field_name] < before[field_name]:
                found.append(
                    Violation(
                        "watch-backwards",
                        after["t"],
                        f"{after['type']} {field_name} went from {before[field_name]} to "
                        f"{after[field_name]}",
                    )
                )
    # each acknowledged counter value is seen (or superseded) within the bound
    lags: list[tuple[float, Event]] = []
    times = [w["t"] for w in watch]
    for ack in (e for e in of_type(events, "cas") if e["ok"]):
        start = bisect.bisect_left(times, ack["t0"])
        seen = next((w["t"] for w in watch[start:] if w["value"] >= ack["value"]), None)
        lag = math.inf if seen is None else seen - ack["t"]
        if lag > bound:
            lags.append((lag, ack))
    if lags:
        worst, ack = max(lags, key=lambda x: x[0])
        found.append(
            Violation(
                "watch-silent",
                ack["t"],
                f"{len(lags)} acknowledged counter values seen by the watch only after more than "
                f"{bound:.0f} s (worst: {ack['value']} after {worst:.1f} s)",
            )
        )
    final = final_of(events)
    if final is not None:
        for seq, want, what in (
            (watch, final["counter"], "value"),
            (tree, sum(1 for k in final["keys"] if k.startswith("w/")), "count"),
        ):
            last_reached = _reached(seq, what, want)
            if last_reached is None:
                got = seq[-1][what] if seq else None
                found.append(
                    Violation(
                        "watch-final",
                        math.inf,  # the end of the run, not the last nemesis's window
                        f"the {'watch' if what == 'value' else 'tree watch'} ended at {what} "
                        f"{got}, the final state is {want}",
                    )
                )
            elif last_reached > final["t_ref"] + bound + TOLERANCE:
                found.append(
                    Violation(
                        "watch-final",
                        math.inf,
                        f"the watch reached the final {what} {want} "
                        f"{last_reached - final['t_ref']:.1f} s after healing",
                    )
                )
    return found


def _reached(seq: list[Event], what: str, want: object) -> float | None:
    """When the stream last arrived at ``want`` and stayed there; None if it does not end
    there."""
    if not seq or seq[-1][what] != want:
        return None
    t = seq[-1]["t"]
    for event in reversed(seq):
        if event[what] != want:
            break
        t = event["t"]
    return float(t)


def check_ttl(events: list[Event]) -> list[Violation]:
    """TTL keys and a dead holder's lock are gone within TTL + the backend's ``ttl_slack``."""
    found = []
    for event in of_type(events, "ttl"):
        bound = event["ttl"] + event["slack"]
        for what in ("keys_gone", "lock_acquired"):
            at = event[what]
            outlived = math.inf if at is None else at - event["killed"]
            if outlived > bound + TOLERANCE:
                found.append(
                    Violation(
                        "ttl",
                        math.inf,  # measured once the cluster is healed: the end of the run
                        f"{what.replace('_', ' ')} {outlived:.1f} s after the owner was killed "
                        f"(bound: ttl {event['ttl']:g} + slack {event['slack']:g} s)",
                    )
                )
    return found


def ttl_outlived(events: list[Event]) -> float | None:
    values = [
        e[w] - e["killed"]
        for e in of_type(events, "ttl")
        for w in ("keys_gone", "lock_acquired")
        if e[w] is not None
    ]
    return max(values) if values else None


def resume_times(events: list[Event]) -> list[tuple[Event, float]]:
    """For each fault: seconds from its reference instant to the first operation the cluster
    answered (``inf`` when none did). The reference is the new leader's election when the
    leader was faulted (``leader_at``; when none was elected during the fault, the instant the
    healed cluster agreed on a leader again, ``healthy``), else the fault's start."""
    answered = sorted(e["t"] for e in of_type(events, "put", "cas") if e["ok"] or e.get("definite"))
    result = []
    for fault in of_type(events, "fault"):
        if fault.get("leader_at"):
            ref = fault["leader_at"]
        elif fault.get("node") is not None and fault.get("node") == fault.get("old_leader"):
            ref = fault["healthy"]
        else:
            ref = fault["t"]
        first = next((t for t in answered if t > ref), None)
        result.append((fault, math.inf if first is None else first - ref))
    return result


def check_resume(events: list[Event], bound: float = RESUME_BOUND) -> list[Violation]:
    """Operations resume within ``bound`` of a new leader (or of a fault that elects none)."""
    return [
        Violation(
            "resume",
            fault["t"],
            f"operations resumed {took:.1f} s after {fault['nemesis']} on {fault['node']} "
            f"{'elected a new leader' if fault.get('leader_at') else 'began'}",
        )
        for fault, took in resume_times(events)
        if took > bound + TOLERANCE
    ]


@dataclass
class Checks:
    """Which checkers apply, with the backend's lost-detection bound for overlaps."""

    overlap_bound: float = 0.0
    lock: bool = True
    writes: bool = True
    watch: bool = True
    ttl: bool = True
    resume: bool = True
    extra: list[Callable[[list[Event]], list[Violation]]] = field(default_factory=list)

    def run(self, events: list[Event]) -> list[Violation]:
        found: list[Violation] = []
        if self.lock:
            found += check_overlaps(events, self.overlap_bound)
            found += check_tokens(events)
            found += check_register(events)
            found += check_lock_gaps(events)
        if self.writes:
            found += check_writes(events)
            found += check_cas(events)
        if self.watch:
            found += check_watch(events)
        if self.ttl:
            found += check_ttl(events)
        if self.resume:
            found += check_resume(events)
        for checker in self.extra:
            found += checker(events)
        return sorted(found, key=lambda v: v.t)


def nemesis_at(events: list[Event], t: float) -> str:
    """The nemesis whose window (from its fault to the next fault) holds ``t``."""
    name = "before faults"
    for fault in of_type(events, "fault"):
        if fault["t"] <= t:
            name = fault["nemesis"]
    if math.isinf(t):
        return "end"
    return name


RECONNECT_GAP = 3.0  # driver lines closer than this belong to one outage of the watcher


def watch_reconnects(events: list[Event], gap: float = RECONNECT_GAP) -> int:
    """How many times the watcher's watches were broken and reopened: episodes of ``watch-log``
    events (a driver's line saying a watch connection or long poll broke, from the watcher
    process's log) and ``watch-error``/``tree-error`` events (a watch that failed and was
    reopened), lines less than ``gap`` apart counting as one episode. The counter and tree
    watches broken by the same fault count once."""
    times = [e["t"] for e in of_type(events, "watch-log", "watch-error", "tree-error")]
    return sum(1 for i, t in enumerate(times) if i == 0 or t - times[i - 1] >= gap)


def stats(events: list[Event]) -> dict[str, Any]:
    """The long run's table row: counts and worst measurements."""
    register = of_type(events, "register")
    ack_put = sum(1 for e in of_type(events, "put") if e["ok"])
    ack_cas = sum(1 for e in of_type(events, "cas") if e["ok"])
    indeterminate = sum(
        1 for e in of_type(events, "put", "cas") if not e["ok"] and not e.get("definite")
    )
    resumes = [took for _, took in resume_times(events)]
    return {
        "acquisitions": len(of_type(events, "acquire")),
        "fenced writes": sum(1 for e in register if e["accepted"]),
        "acked writes": ack_put + ack_cas,
        "indeterminate": indeterminate,
        "faults": len(of_type(events, "fault")),
        "watch errors": len(of_type(events, "watch-error", "tree-error")),
        "watch reconnects": watch_reconnects(events),
        "max lock gap": max_lock_gap(events),
        "max resume": max(resumes, default=0.0),
        "ttl outlived": ttl_outlived(events),
        "ttl bound": max((e["ttl"] + e["slack"] for e in of_type(events, "ttl")), default=0.0),
    }
