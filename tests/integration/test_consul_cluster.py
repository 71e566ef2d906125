"""A three-server Consul cluster losing its leader (fixture: consul_cluster)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import consul
import pytest

import pykv
from pykv import StoreURL
from pykv.testing import drain_until

pytestmark = [pytest.mark.integration, pytest.mark.consul, pytest.mark.slow]


def _until_it_works(call: Any, limit: float, errors: list[BaseException]) -> float:
    """Retry ``call`` until it succeeds; return the seconds it took. Only pykv's typed
    errors are allowed meanwhile (anything else fails the test at once)."""
    start = time.monotonic()
    while True:
        try:
            call()
            return time.monotonic() - start
        except pykv.PyKVError as exc:
            errors.append(exc)
            if time.monotonic() - start > limit:
                raise AssertionError(f"still failing after {limit} s: {errors[-3:]}") from exc
            time.sleep(0.1)


def _leader_first(url: str) -> str:
    """The cluster URL with the leader's agent first, so the store loses its own agent too."""
    parsed = StoreURL.parse(url)
    names = {}
    for host in parsed.hosts:
        client = consul.Consul(host=host.host, port=host.port, connections_timeout=5)
        names[client.agent.self()["Config"]["NodeName"]] = host
    servers = client.operator.raft_config()["Servers"]
    leader = next(s["Node"] for s in servers if s["Leader"])
    hosts = [names[leader], *(h for h in parsed.hosts if h != names[leader])]
    return parsed.replace(hosts=tuple(hosts)).render(mask=False)


def test_leader_loss(consul_cluster: Any) -> None:
    cluster = consul_cluster
    cluster.wait_healthy(60)
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    store = pykv.open_store(_leader_first(cluster.url), prefix=prefix, timeout=2)
    observer = pykv.open_store(cluster.url, prefix=prefix, timeout=2)
    leader = cluster.leader()
    try:
        store.put("k", b"before")
        store.put("eph", b"alive", ttl=10)
        lock = store.lock("leader-lock", value=b"me", ttl=15)
        assert lock.acquire(timeout=10)
        token = lock.token
        watch = observer.watch("k")
        tree = observer.watch_tree("")
        assert watch.get(timeout=10) is not None
        tree.get(timeout=10)

        cluster.kill(leader)
        errors: list[BaseException] = []
        took = _until_it_works(lambda: store.put("after", b"1"), 30, errors)
        took_read = _until_it_works(lambda: observer.get("after"), 30, errors)
        assert all(isinstance(e, pykv.UnavailableError) for e in errors), errors
        print(
            f"leader {leader} killed: writes resumed after {took:.2f} s, {len(errors)} typed errors"
        )
        assert took < 15, f"writes resumed only after {took:.1f} s"
        assert took_read < 15

        store.put("k", b"final")
        event = drain_until(watch, lambda e: e is not None and e.value == b"final", 15)
        assert event is not None
        assert event.revision == observer.get("k").revision
        drain_until(tree, lambda s: {p.key: p.value for p in s}.get("k") == b"final", 15)

        # TTL key and lock survived the election (their sessions have no node health checks
        # and the store renews them through the agents still alive).
        time.sleep(3)
        assert observer.get("eph").value == b"alive"
        assert lock.held
        assert not lock.lost.is_set()
        assert observer.get("leader-lock").value == b"me"
        assert not observer.lock("leader-lock", ttl=5).acquire(timeout=1)
        lock.release()
        other = observer.lock("leader-lock", ttl=5)
        assert other.acquire(timeout=10)
        assert token is not None
        assert other.token is not None
        assert other.token > token
        other.release()
        watch.close()
        tree.close()
    finally:
        store.close()
        observer.close()
        cluster.start(leader)
        cluster.wait_healthy(60)
    with pykv.open_store(cluster.url, prefix=prefix, timeout=5) as cleaner:
        assert not cleaner.exists("eph")  # closing the store deleted its TTL key
        cleaner.delete_tree("")


def test_isolated_leader_watch_and_calls_fail_over(consul_cluster: Any) -> None:
    """The store's first agent is the leader, cut off from its peers (clients still reach it):
    an isolated ex-leader holds every non-stale request for its RPC hold time (~7 s) before a
    500 "No cluster leader", and a blocking query begun while it led runs its whole wait with
    the old data. The watch must still see each change made through the majority within 5 s,
    and the store's reads and writes must resume within 5 s of the majority's."""
    cluster = consul_cluster
    cluster.wait_healthy(60)
    leader = cluster.leader()
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    other = next(n for n in cluster.nodes if n != leader)
    store = pykv.open_store(_leader_first(cluster.url), prefix=prefix)  # the default timeout
    writer = pykv.open_store(cluster.url_for(other), prefix=prefix, timeout=3)
    seen: list[tuple[float, int]] = []  # (when, value) of every watch event
    acked: list[tuple[float, int]] = []  # (when, value) of every acknowledged write
    stop = threading.Event()
    try:
        writer.put("counter", b"0")
        watch = store.watch("counter")
        assert watch.get(timeout=10) is not None

        def consume() -> None:
            for pair in watch:
                if pair is not None:
                    seen.append((time.monotonic(), int(pair.value)))

        def write() -> None:
            value = 0
            while not stop.is_set():
                value += 1
                try:
                    writer.put("counter", str(value).encode())
                    acked.append((time.monotonic(), value))
                except pykv.PyKVError:
                    pass  # the election: indeterminate, not counted
                stop.wait(0.3)

        threads = [threading.Thread(target=f, daemon=True) for f in (consume, write)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        cluster.isolate(leader)
        isolated = time.monotonic()
        errors: list[BaseException] = []
        took_write = _until_it_works(lambda: store.put("rw", b"1"), 30, errors)
        took_read = _until_it_works(lambda: store.get("rw"), 30, errors)
        while time.monotonic() - isolated < 15:  # changes made while the partition lasts
            time.sleep(0.5)
        stop.set()
        threads[1].join(10)
        time.sleep(5.5)  # the last change's bound
        watch.close()
        threads[0].join(10)

        majority_at = next(t for t, _ in acked if t > isolated)  # the majority serves again
        print(
            f"isolated {leader}: majority serving after {majority_at - isolated:.2f} s, store "
            f"writes after {took_write:.2f} s, reads {took_read:.2f} s later; errors {errors}"
        )
        assert all(isinstance(e, pykv.UnavailableError) for e in errors), errors
        assert isolated + took_write - majority_at < 5, "writes did not resume within 5 s"
        assert took_read < 5, "reads did not resume within 5 s"
        late = []
        for when, value in acked:
            if when <= isolated:
                continue
            shown = next((t for t, v in seen if v >= value and t >= when - 0.5), None)
            if shown is None or shown - when > 5:
                late.append((value, None if shown is None else round(shown - when, 2)))
        assert not late, f"watch silent > 5 s after these changes (value, delay): {late}"
        assert seen[-1][1] == acked[-1][1]
    finally:
        stop.set()
        store.close()
        writer.close()
        cluster.heal_network()
        cluster.wait_healthy(60)
    with pykv.open_store(cluster.url, prefix=prefix, timeout=5) as cleaner:
        cleaner.delete_tree("")
