"""The checkers on synthetic histories and on real workloads over the embedded SQLite store.

Each checker has a negative control: a history it must flag (an unlocked or unfenced workload,
a lost write, a duplicated CAS value, a watch going backwards...), and a correct history it must
pass. No server is needed: the workloads run in child processes against ``sqlite://``.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from faults.checkers import (
    Checks,
    Event,
    check_cas,
    check_lock_gaps,
    check_overlaps,
    check_register,
    check_resume,
    check_tokens,
    check_ttl,
    check_watch,
    check_writes,
    holds,
    nemesis_at,
    watch_reconnects,
)
from faults.runner import WORKLOAD, Process, load_events, watch_log, working


def ev(kind: str, t: float, proc: str = "p", **fields: Any) -> Event:
    return {"type": kind, "t": t, "proc": proc, **fields}


def checks_of(violations: list[Any]) -> set[str]:
    return {v.check for v in violations}


# ------------------------------------------------------------------------------------------------
# Locks


def test_holds_end_at_release_lost_or_exit() -> None:
    events = [
        ev("acquire", 1.0, "a", token=1),
        ev("release", 2.0, "a", token=1),
        ev("acquire", 2.5, "b", token=2),
        ev("lost", 3.0, "b", token=2),
        ev("acquire", 4.0, "c", token=3),
        ev("exit", 5.0, "c"),
        ev("acquire", 6.0, "a", token=4),
    ]
    assert [(h.proc, h.start, h.end) for h in holds(events)] == [
        ("a", 1.0, 2.0),
        ("b", 2.5, 3.0),
        ("c", 4.0, 5.0),
        ("a", 6.0, math.inf),
    ]


def test_overlap_flagged_beyond_the_bound_only() -> None:
    events = [
        ev("acquire", 1.0, "a", token=1),
        ev("acquire", 1.5, "b", token=2),
        ev("release", 2.0, "a", token=1),
        ev("release", 3.0, "b", token=2),
    ]
    assert checks_of(check_overlaps(events)) == {"overlap"}
    assert check_overlaps(events, bound=1.0) == []  # a documented 1 s lost-detection bound
    sequential = [
        ev("acquire", 1.0, "a", token=1),
        ev("release", 2.0, "a", token=1),
        ev("acquire", 2.1, "b", token=2),
        ev("release", 3.0, "b", token=2),
    ]
    assert check_overlaps(sequential) == []


def test_tokens_must_strictly_increase() -> None:
    good = [ev("acquire", 1.0, "a", token=5), ev("acquire", 2.0, "b", token=9)]
    assert check_tokens(good) == []
    repeated = [ev("acquire", 1.0, "a", token=5), ev("acquire", 2.0, "b", token=5)]
    assert checks_of(check_tokens(repeated)) == {"token-order"}


def test_stale_register_writes() -> None:
    refused = [ev("register", 1.0, "a", token=3, highest=4, accepted=False)]
    assert checks_of(check_register(refused)) == {"stale-write"}
    accepted = [ev("register", 1.0, "a", token=3, highest=4, accepted=True)]
    assert checks_of(check_register(accepted)) == {"stale-accepted"}
    same_holder = [ev("register", 1.0, "a", token=4, highest=4, accepted=True)]
    assert check_register(same_holder) == []


def test_lock_gap() -> None:
    events = [
        ev("start", 0.0, "lock-0"),
        ev("acquire", 1.0, "lock-0", token=1),
        ev("acquire", 20.0, "lock-0", token=2),
        ev("stop", 21.0, "runner"),
    ]
    assert checks_of(check_lock_gaps(events)) == {"lock-gap"}
    events[2]["t"] = 10.0
    assert check_lock_gaps(events) == []
    starved = [ev("start", 0.0, "lock-0"), ev("stop", 30.0, "runner")]
    assert checks_of(check_lock_gaps(starved)) == {"lock-gap"}
    # measured from the first store open: a slow start-up (importing the driver) is no gap...
    slow_start = [ev("start", 0.0, "lock-0"), ev("open", 25.0, "lock-0"), *events[1:]]
    slow_start[2] = ev("acquire", 26.0, "lock-0", token=1)
    slow_start[3] = ev("acquire", 30.0, "lock-0", token=2)
    slow_start[4] = ev("stop", 31.0, "runner")
    assert check_lock_gaps(slow_start) == []
    # ...but a lock nobody gets once the stores are open is
    starved_open = [ev("start", 0.0, "lock-0"), ev("open", 1.0, "lock-0"), ev("stop", 30.0)]
    assert checks_of(check_lock_gaps(starved_open)) == {"lock-gap"}


# ------------------------------------------------------------------------------------------------
# Writes


def final(t: float, counter: int, keys: dict[str, str], t_ref: float | None = None) -> Event:
    return ev("final", t, "runner", counter=counter, keys=keys, t_ref=t_ref or t)


def test_lost_and_wrong_writes() -> None:
    events = [
        ev("put", 1.0, "w", key="w/1", value="a", ok=True),
        ev("put", 2.0, "w", key="w/2", value="b", ok=False),  # indeterminate: may be absent
        ev("cas", 3.0, "w", value=1, ok=True),
        final(10.0, 1, {"w/1": "a"}),
    ]
    assert check_writes(events) == []
    lost = [*events[:-1], final(10.0, 1, {})]
    assert checks_of(check_writes(lost)) == {"lost-write"}
    wrong = [*events[:-1], final(10.0, 1, {"w/1": "x"})]
    assert checks_of(check_writes(wrong)) == {"lost-write"}
    counter_behind = [*events[:-1], final(10.0, 0, {"w/1": "a"})]
    assert checks_of(check_writes(counter_behind)) == {"lost-write"}
    assert checks_of(check_writes(events[:-1])) == {"no-final"}


def test_cas_value_acknowledged_twice() -> None:
    events = [ev("cas", 1.0, "w0", value=1, ok=True), ev("cas", 2.0, "w1", value=2, ok=True)]
    assert check_cas(events) == []
    events.append(ev("cas", 3.0, "w1", value=2, ok=True))
    assert checks_of(check_cas(events)) == {"dup-cas"}


# ------------------------------------------------------------------------------------------------
# Watches


def watch_history(values: list[tuple[float, int]], acks: list[tuple[float, int]]) -> list[Event]:
    events = [ev("watch", t, "watcher", value=v, revision=v) for t, v in values]
    events += [ev("cas", t, "w", t0=t - 0.01, value=v, ok=True) for t, v in acks]
    events += [ev("tree", 0.5, "watcher", count=0, revision=0)]
    return events


def test_watch_correct() -> None:
    events = watch_history([(1.1, 1), (2.1, 2)], [(1.0, 1), (2.0, 2)])
    assert check_watch([*events, final(3.0, 2, {}, t_ref=3.0)]) == []


def test_watch_backwards() -> None:
    events = watch_history([(1.1, 2), (2.1, 1)], [])
    assert "watch-backwards" in checks_of(check_watch(events))


def test_watch_silent_while_its_key_changes() -> None:
    events = watch_history([(1.1, 1), (9.0, 2)], [(1.0, 1), (2.0, 2)])
    assert checks_of(check_watch([*events, final(10.0, 2, {}, t_ref=3.0)])) == {
        "watch-silent",
        "watch-final",  # the final value came 6 s after healing
    }


def test_watch_wrong_final_state() -> None:
    events = watch_history([(1.1, 1)], [(1.0, 1)])
    assert checks_of(check_watch([*events, final(3.0, 2, {}, t_ref=3.0)])) == {"watch-final"}
    tree_behind = [*events, final(3.0, 1, {"w/a": "1"}, t_ref=3.0)]
    assert checks_of(check_watch(tree_behind)) == {"watch-final"}


# ------------------------------------------------------------------------------------------------
# TTL and resumption


def test_ttl_bound() -> None:
    ok = ev("ttl", 1.0, "runner", killed=1.0, keys_gone=4.5, lock_acquired=5.0, ttl=3, slack=2)
    assert check_ttl([ok]) == []
    late = dict(ok, lock_acquired=9.0)
    assert checks_of(check_ttl([late])) == {"ttl"}
    never = dict(ok, keys_gone=None)
    assert checks_of(check_ttl([never])) == {"ttl"}


def test_watch_reconnects_from_the_watchers_log(tmp_path: Path) -> None:
    (tmp_path / "watcher-0.out").write_text(
        "10.000 pykv.etcd2 s: watch('counter'): long poll on http://a broke: reset\n"
        "10.100 pykv.etcd2 s: watch_tree('w'): long poll on http://a broke: reset\n"
        "  a traceback line\n"
        "11.000 pykv.etcd2 s: failing over to http://b\n"
        "20.000 pykv.zookeeper.kazoo Connection dropped: socket connection broken\n"
        "25.000 pykv.etcd2 s: watch('counter'): event index cleared, re-reading\n"
    )
    events = watch_log(tmp_path)
    assert [e["t"] for e in events] == [10.0, 10.1, 11.0, 20.0]  # not the index clearing
    # one outage breaking both watches counts once; a later one, or a reopened watch, again
    assert watch_reconnects(events) == 2
    assert watch_reconnects([*events, ev("tree-error", 30.0, "watcher-0")]) == 3
    assert watch_reconnects([]) == 0


def test_workloads_count_as_working_after_their_first_answered_operation(tmp_path: Path) -> None:
    def proc(name: str) -> Process:
        process = Process.__new__(Process)  # no child: only its name matters here
        process.name = name
        return process

    writer, watcher = proc("writer-0"), proc("watcher-0")
    assert not working(writer, tmp_path)  # no history yet
    (tmp_path / "writer-0.jsonl").write_text(
        '{"type": "start", "t": 1}\n{"type": "put", "t": 2, "ok": false}\n'
    )
    assert not working(writer, tmp_path)  # an operation that failed does not count
    with (tmp_path / "writer-0.jsonl").open("a") as f:
        f.write('{"type": "put", "t": 3, "ok": true}\n')
    assert working(writer, tmp_path)
    (tmp_path / "watcher-0.jsonl").write_text('{"type": "watch", "t": 1}\n')
    assert not working(watcher, tmp_path)  # its tree watch has not answered yet
    with (tmp_path / "watcher-0.jsonl").open("a") as f:
        f.write('{"type": "tree", "t": 2}\n')
    assert working(watcher, tmp_path)


def test_resume_after_a_new_leader() -> None:
    fault = ev("fault", 10.0, "runner", nemesis="kill-leader", node="n1", leader_at=12.0)
    assert check_resume([fault, ev("put", 13.0, "w", key="k", value="v", ok=True)]) == []
    late = [fault, ev("put", 18.0, "w", key="k", value="v", ok=True)]
    assert checks_of(check_resume(late)) == {"resume"}
    assert checks_of(check_resume([fault])) == {"resume"}
    # no leader elected while the leader was frozen: measured from the healed cluster's leader
    slow = ev(
        "fault",
        10.0,
        "runner",
        nemesis="pause-leader",
        node="n1",
        old_leader="n1",
        leader_at=None,
        healthy=17.0,
    )
    assert check_resume([slow, ev("put", 18.0, "w", key="k", value="v", ok=True)]) == []
    # a follower's fault: measured from its start
    follower = dict(slow, node="n2")
    assert checks_of(check_resume([follower, ev("put", 18.0, "w", ok=True)])) == {"resume"}
    assert nemesis_at([fault], 11.0) == "kill-leader"
    assert nemesis_at([fault], 9.0) == "before faults"


# ------------------------------------------------------------------------------------------------
# Real workloads on the embedded SQLite store (no server)


def run_workers(
    tmp_path: Path, role: str, count: int, seconds: float, *extra: str, want: str = "acquire"
) -> list[Event]:
    """Run ``count`` workers for ``seconds`` once they all record ``want`` events (interpreters
    start slowly on a loaded machine), within a bounded wait."""
    url = f"sqlite:///{tmp_path / 'kv.db'}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKLOAD),
                role,
                "--url",
                url,
                "--prefix",
                "t",
                "--dir",
                str(tmp_path),
                "--id",
                str(i),
                "--ttl",
                "2",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
        )
        for i in range(count)
    ]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            working = {e["proc"] for e in load_events(tmp_path) if e["type"] == want}
            if len(working) == count:
                break
            time.sleep(0.2)
        time.sleep(seconds)
        (tmp_path / "stop").touch()
        for proc in procs:
            assert proc.wait(30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return load_events(tmp_path)


LOCK_CHECKS = Checks(writes=False, watch=False, ttl=False, resume=False)


def test_locked_workload_passes(tmp_path: Path) -> None:
    events = run_workers(tmp_path, "lock", 3, 4.0)
    assert len([e for e in events if e["type"] == "acquire"]) >= 3
    assert LOCK_CHECKS.run(events) == []


def test_unlocked_workload_is_flagged(tmp_path: Path) -> None:
    """Negative control: workers that do not take the lock overlap and reuse tokens, and the
    fenced register refuses their stale writes."""
    events = run_workers(tmp_path, "lock", 3, 3.0, "--unlocked")
    assert {"overlap", "token-order", "stale-write"} <= checks_of(LOCK_CHECKS.run(events))


def test_unfenced_register_is_flagged(tmp_path: Path) -> None:
    """Negative control: a register that does not fence accepts the stale writes."""
    events = run_workers(tmp_path, "lock", 3, 3.0, "--unlocked", "--unfenced")
    assert "stale-accepted" in checks_of(check_register(events))


def test_writer_workload(tmp_path: Path) -> None:
    """Two writers' acknowledged writes all survive; dropping one is flagged."""
    import pykv

    url = f"sqlite:///{tmp_path / 'kv.db'}"
    with pykv.open_store(url, prefix="t") as store:
        store.put("counter", "0")
        events = run_workers(tmp_path, "writer", 2, 2.0, want="put")
        keys = {p.key: p.value.decode() for p in store.list("w")}
        counter = int(store.get("counter").value)
    acks = [e for e in events if e["type"] in {"put", "cas"} and e["ok"]]
    assert len(acks) > 10
    events.append(final(time.monotonic(), counter, keys))
    assert check_writes(events) == []
    assert check_cas(events) == []
    dropped = next(e["key"] for e in events if e["type"] == "put" and e["ok"])
    del keys[dropped]
    assert checks_of(check_writes(events)) == {"lost-write"}
