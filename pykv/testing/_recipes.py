"""Conformance tests of :mod:`pykv.recipes`: the recipes on the backend under test.

Subclass :class:`RecipeTests` with the same ``store_url`` fixture as the backend's
:class:`~pykv.testing.ConformanceTests`. Figures worth reporting (failover time, items moved)
are written to stderr (seen with ``pytest -s``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from pykv import Capability, KeyExistsError, Store
from pykv.recipes import Barrier, Counter, Election, Group, Partitioner, Semaphore

from ._suite import BaseStoreTests
from ._support import ChildProcess, drain_until, wait_until

__all__ = ["RecipeTests"]

OpenStore = Callable[..., Store]
CHILD = "pykv.testing._recipe_child"


def _report(what: str, store: Store, value: str) -> None:
    sys.stderr.write(f"[pykv recipes] {what} on {type(store).__name__}: {value}\n")


def _run_all(targets: list[Callable[[], None]], timeout: float) -> None:
    """Run each target in a thread; re-raise the first failure."""
    errors: list[BaseException] = []

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a worker thread did not finish"
    if errors:
        raise errors[0]


class ElectionTests(BaseStoreTests):
    """Election: one leader, leader value, observe, lost, fencing, failover after SIGKILL."""

    def test_campaign_leader_resign(self, store: Store) -> None:
        self.require(store, Capability.LOCK)
        election = Election(store, "el/basic", ttl=self.ttl)
        assert election.leader() is None
        assert not election.is_leader
        assert election.campaign(b"node-1", timeout=self.event_timeout)
        assert election.is_leader
        assert election.leader() == b"node-1"
        assert isinstance(election.token, int)
        election.resign()
        assert not election.is_leader
        assert election.leader() is None
        election.resign()  # a no-op when not leader

    def test_one_leader_between_clients(self, open_store: OpenStore) -> None:
        a, b, c = open_store(), open_store(), open_store()
        self.require(a, Capability.LOCK)
        ea, eb = Election(a, "el/two", ttl=self.ttl), Election(b, "el/two", ttl=self.ttl)
        assert ea.campaign(b"a", timeout=self.event_timeout)
        assert not eb.campaign(b"b", timeout=0.5)
        assert Election(c, "el/two").leader() == b"a"
        ea.resign()
        assert eb.campaign(b"b", timeout=self.event_timeout)
        assert Election(c, "el/two").leader() == b"b"
        assert ea.token is not None
        assert eb.token is not None
        assert eb.token > ea.token
        eb.resign()

    def test_observe_follows_the_leader(self, open_store: OpenStore) -> None:
        a, b, watcher = open_store(), open_store(), open_store()
        self.require(a, Capability.LOCK, Capability.WATCH)
        with Election(watcher, "el/obs").observe() as leaders:
            assert leaders.get(timeout=self.event_timeout) is None
            ea, eb = Election(a, "el/obs", ttl=self.ttl), Election(b, "el/obs", ttl=self.ttl)
            assert ea.campaign(b"first", timeout=self.event_timeout)
            drain_until(leaders, lambda v: v == b"first", self.event_timeout)
            ea.resign()
            drain_until(leaders, lambda v: v is None, self.event_timeout)
            assert eb.campaign(b"second", timeout=self.event_timeout)
            drain_until(leaders, lambda v: v == b"second", self.event_timeout)
            eb.resign()

    def test_lost_when_the_key_is_deleted(self, open_store: OpenStore) -> None:
        a, b = open_store(), open_store()
        self.require(a, Capability.LOCK)
        election = Election(a, "el/lost", ttl=self.ttl)
        assert election.campaign(b"x", timeout=self.event_timeout)
        assert not election.lost.is_set()
        b.delete("el/lost")
        assert election.lost.wait(self.expiry_timeout(a)), "lost was not set"
        assert not election.is_leader
        election.resign()  # cleans up what is left, without raising
        other = Election(b, "el/lost", ttl=self.ttl)
        assert other.campaign(b"y", timeout=self.expiry_timeout(b))
        other.resign()

    def test_failover_after_the_leader_is_killed(
        self, store: Store, store_url: str, prefix: str, store_options: dict[str, Any]
    ) -> None:
        self.require(store, Capability.LOCK, Capability.SHARED)
        args = ("elect", "el/kill", "child", str(self.ttl))
        with ChildProcess(store_url, prefix, *args, options=store_options, module=CHILD) as child:
            election = Election(store, "el/kill", ttl=self.ttl)
            assert election.leader() == b"child"
            assert not election.campaign(b"parent", timeout=self.ttl * 1.5)  # child renews
            child.kill()
            start = time.monotonic()
            assert election.campaign(b"parent", timeout=self.expiry_timeout(store))
            took = time.monotonic() - start
            _report("election failover (leader SIGKILLed -> new leader)", store, f"{took:.2f} s")
            assert election.token is not None
            assert election.token > child.ready["token"]
            assert election.leader() == b"parent"
            election.resign()


class GroupTests(BaseStoreTests):
    """Group membership and the partitioner over it."""

    def test_join_members_leave(self, open_store: OpenStore) -> None:
        a, b = open_store(), open_store()
        self.require(a, Capability.TTL)
        ga, gb = Group(a, "grp"), Group(b, "grp")
        assert ga.members() == {}
        ga.join("m1", b"meta-1", ttl=self.ttl)
        gb.join("m2", "meta-2", ttl=self.ttl)
        assert ga.members() == {"m1": b"meta-1", "m2": b"meta-2"}
        ga.join("m1", b"meta-1b", ttl=self.ttl)  # same object: updates the metadata
        assert gb.members()["m1"] == b"meta-1b"
        assert ga.joined == {"m1"}
        ga.leave()
        assert gb.members() == {"m2": b"meta-2"}
        gb.leave("m2")
        assert ga.members() == {}

    def test_member_id_is_taken_once(self, open_store: OpenStore) -> None:
        a, b = open_store(), open_store()
        self.require(a, Capability.TTL, Capability.ATOMIC)
        Group(a, "dup").join("same", ttl=self.ttl)
        with pytest.raises(KeyExistsError):
            Group(b, "dup").join("same", ttl=self.ttl)
        with pytest.raises(ValueError, match="one key segment"):
            Group(b, "dup").join("a/b", ttl=self.ttl)

    def test_watch_sees_joins_and_leaves(self, open_store: OpenStore) -> None:
        a, watcher = open_store(), open_store()
        self.require(a, Capability.TTL, Capability.WATCH_TREE)
        with Group(watcher, "gw").watch() as members:
            assert members.get(timeout=self.event_timeout) == {}
            group = Group(a, "gw")
            group.join("x", b"1", ttl=self.ttl)
            drain_until(members, lambda m: m == {"x": b"1"}, self.event_timeout)
            group.join("y", b"2", ttl=self.ttl)
            drain_until(members, lambda m: set(m) == {"x", "y"}, self.event_timeout)
            group.leave("x")
            drain_until(members, lambda m: set(m) == {"y"}, self.event_timeout)

    def test_dead_member_disappears(
        self, store: Store, store_url: str, prefix: str, store_options: dict[str, Any]
    ) -> None:
        self.require(store, Capability.TTL, Capability.SHARED)
        group = Group(store, "gdead")
        args = ("join", "gdead", "child", str(self.ttl))
        with ChildProcess(store_url, prefix, *args, options=store_options, module=CHILD) as child:
            assert group.members() == {"child": b"child"}
            time.sleep(self.ttl * 1.5)
            assert "child" in group.members(), "the member died while its process lived"
            child.kill()
            took = wait_until(
                lambda: "child" not in group.members(),
                self.expiry_timeout(store),
                "the killed member to leave the group",
            )
            _report("dead group member gone after SIGKILL", store, f"{took:.2f} s")

    def test_partitioner_over_live_members(self, open_store: OpenStore) -> None:
        stores = [open_store() for _ in range(4)]
        self.require(stores[0], Capability.TTL)
        groups = [Group(s, "part") for s in stores]
        for i, group in enumerate(groups):
            group.join(f"w{i}", ttl=self.ttl)
        items = [f"item-{n}" for n in range(400)]
        before = {item: Partitioner(groups[0]).owner(item) for item in items[:20]}
        ring = Partitioner(groups[0]).ring()
        owners = {item: ring.owner(item) for item in items}
        assert set(owners.values()) == {"w0", "w1", "w2", "w3"}
        assert all(before[i] == owners[i] for i in before)  # every client agrees
        for i, group in enumerate(groups):
            mine = [item for item in items if Partitioner(group).owns(item)]
            assert mine == [item for item in items if owners[item] == f"w{i}"]
        groups[3].leave()
        after = Partitioner(groups[0]).ring()
        moved = [item for item in items if after.owner(item) != owners[item]]
        # Only the leaver's items move, and each to a live member.
        assert {owners[item] for item in moved} == {"w3"}
        assert set(after.members) == {"w0", "w1", "w2"}


class SemaphoreTests(BaseStoreTests):
    """Semaphore: the limit between clients, threads and processes; dead holders."""

    def test_limit_between_clients(self, open_store: OpenStore) -> None:
        a, b, c = open_store(), open_store(), open_store()
        self.require(a, Capability.LOCK, Capability.TTL)
        sa = Semaphore(a, "sem", 2, value=b"a", ttl=self.ttl)
        sb = Semaphore(b, "sem", 2, value=b"b", ttl=self.ttl)
        sc = Semaphore(c, "sem", 2, value=b"c", ttl=self.ttl)
        assert sa.acquire(timeout=self.event_timeout)
        assert sb.acquire(timeout=self.event_timeout)
        assert sorted(sc.holders()) == [b"a", b"b"]
        assert not sc.acquire(timeout=0.5)
        got: list[bool] = []
        waiter = threading.Thread(target=lambda: got.append(sc.acquire(timeout=30)))
        waiter.start()
        time.sleep(0.3)
        sa.release()
        waiter.join(timeout=35)
        assert got == [True]
        assert sorted(sa.holders()) == [b"b", b"c"]
        sb.release()
        sc.release()
        assert sa.holders() == []

    def test_never_more_than_limit_holders(self, open_store: OpenStore) -> None:
        stores = [open_store() for _ in range(4)]
        self.require(stores[0], Capability.LOCK, Capability.TTL)
        inside: list[int] = [0]
        peak: list[int] = [0]
        guard = threading.Lock()

        def worker(store: Store) -> None:
            semaphore = Semaphore(store, "semx", 2, ttl=self.ttl)
            for _ in range(3):
                assert semaphore.acquire(timeout=60)
                with guard:
                    inside[0] += 1
                    peak[0] = max(peak[0], inside[0])
                time.sleep(0.05)
                with guard:
                    inside[0] -= 1
                semaphore.release()

        _run_all([lambda s=s: worker(s) for s in stores], timeout=120)  # type: ignore[misc]
        assert 1 <= peak[0] <= 2

    def test_dead_holder_frees_its_slot(
        self, store: Store, store_url: str, prefix: str, store_options: dict[str, Any]
    ) -> None:
        self.require(store, Capability.LOCK, Capability.TTL, Capability.SHARED)
        args = ("semaphore", "semk", "2", str(self.ttl))
        with (
            ChildProcess(store_url, prefix, *args, options=store_options, module=CHILD) as one,
            ChildProcess(store_url, prefix, *args, options=store_options, module=CHILD),
        ):
            semaphore = Semaphore(store, "semk", 2, value=b"parent", ttl=self.ttl)
            assert semaphore.holders() == [b"child", b"child"]
            assert not semaphore.acquire(timeout=self.ttl * 1.5)  # both slots are renewed
            one.kill()
            assert semaphore.acquire(timeout=self.expiry_timeout(store)), "no slot freed"
            assert sorted(semaphore.holders()) == [b"child", b"parent"]
            semaphore.release()


class BarrierTests(BaseStoreTests):
    """Barrier: opens for count parties, withdraws on timeout."""

    def test_opens_when_all_arrive(self, open_store: OpenStore) -> None:
        stores = [open_store() for _ in range(3)]
        self.require(stores[0], Capability.LOCK, Capability.TTL, Capability.WATCH)
        results: list[bool] = []
        times: list[float] = []

        def party(store: Store, delay: float) -> None:
            time.sleep(delay)
            results.append(Barrier(store, "bar", 3, ttl=self.ttl).wait(timeout=60))
            times.append(time.monotonic())

        start = time.monotonic()
        _run_all(
            [lambda s=s, d=d: party(s, d) for s, d in zip(stores, (0, 0.3, 0.6), strict=True)],  # type: ignore[misc]
            timeout=90,
        )
        assert results == [True, True, True]
        assert min(times) - start >= 0.6  # nobody passed before the last arrived
        assert Barrier(stores[0], "bar", 3).is_open

    def test_timeout_withdraws_the_arrival(self, open_store: OpenStore) -> None:
        a, b = open_store(), open_store()
        self.require(a, Capability.LOCK, Capability.TTL, Capability.WATCH)
        barrier = Barrier(a, "bt", 2, ttl=self.ttl)
        assert not barrier.wait(timeout=0.5)
        assert barrier.arrived() == 0
        assert not barrier.is_open
        results: list[bool] = []
        _run_all(
            [lambda s=s: results.append(Barrier(s, "bt", 2).wait(timeout=60)) for s in (a, b)],  # type: ignore[misc]
            timeout=90,
        )
        assert results == [True, True]
        barrier.reset()
        assert not barrier.is_open


class CounterTests(BaseStoreTests):
    """Counter: atomic add, no lost increments between threads and processes."""

    def test_add_and_value(self, store: Store) -> None:
        self.require(store, Capability.ATOMIC)
        counter = Counter(store, "cnt")
        assert counter.value() == 0
        assert counter.add() == 1
        assert counter.add(5) == 6
        assert counter.add(-2) == 4
        assert store.get("cnt").value == b"4"  # plain text other tools can read
        counter.set(10)
        assert counter.value() == 10
        store.put("cnt", b"not a number")
        with pytest.raises(Exception, match="not an integer"):
            counter.add()

    def test_no_lost_increments_between_clients(self, open_store: OpenStore) -> None:
        stores = [open_store() for _ in range(4)]
        self.require(stores[0], Capability.ATOMIC)
        seen: list[int] = []

        def worker(store: Store) -> None:
            counter = Counter(store, "cnt4")
            seen.extend(counter.add() for _ in range(15))

        _run_all([lambda s=s: worker(s) for s in stores], timeout=120)  # type: ignore[misc]
        assert Counter(stores[0], "cnt4").value() == 60
        assert sorted(seen) == list(range(1, 61))

    def test_no_lost_increments_between_8_processes(
        self, store: Store, store_url: str, prefix: str, store_options: dict[str, Any]
    ) -> None:
        self.require(store, Capability.ATOMIC, Capability.SHARED)
        children = []
        try:
            for _ in range(8):
                children.append(
                    ChildProcess(
                        store_url,
                        prefix,
                        "count",
                        "cnt8",
                        "10",
                        "go",
                        options=store_options,
                        module=CHILD,
                    )
                )
            start = time.monotonic()
            store.put("go", b"")
            values: list[int] = []
            for child in children:
                values.extend(child.read(timeout=150)["values"])
            took = time.monotonic() - start
        finally:
            for child in children:
                child.__exit__()
        assert Counter(store, "cnt8").value() == 80
        assert sorted(values) == list(range(1, 81))  # each add got its own value
        _report("80 contended increments by 8 processes", store, f"{took:.2f} s")


class RecipeTests(ElectionTests, GroupTests, SemaphoreTests, BarrierTests, CounterTests):
    """Every recipe of :mod:`pykv.recipes`. Subclass it with a ``store_url`` fixture."""
