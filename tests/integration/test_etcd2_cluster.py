"""The etcd v2 store on a three-node cluster whose leader is killed."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

import pykv
from pykv.testing import drain_until

pytestmark = [pytest.mark.integration, pytest.mark.etcd]

TTL = 8.0


def v2_url(cluster: Any) -> str:
    url: str = cluster.url
    return "etcd2://" + url.split("://", 1)[1]


def test_leader_kill(etcd_cluster: Any) -> None:
    cluster = etcd_cluster
    cluster.wait_healthy(60)
    url = v2_url(cluster)
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    leader = cluster.leader()
    # the holder talks to the leader first, so that killing it forces a failover
    first = cluster.address(leader)
    others = [cluster.address(n) for n in cluster.nodes if n != leader]
    holder_url = "etcd2://" + ",".join([first, *others])
    holder = pykv.open_store(holder_url, prefix=prefix, timeout=10)
    observer = pykv.open_store(url, prefix=prefix, timeout=10)
    try:
        holder.put("eph", b"alive", ttl=TTL)
        lock = holder.lock("leader", value=b"holder", ttl=TTL)
        assert lock.acquire(timeout=10)
        token = lock.token
        holder.put("w/a", b"0")
        with (
            observer.watch("w/a") as watch,
            observer.watch_tree("w") as tree,
            holder.watch("w/a") as holder_watch,
        ):
            assert watch.get(timeout=10) is not None
            assert holder_watch.get(timeout=10) is not None
            assert len(tree.get(timeout=10)) == 1

            cluster.kill(leader)
            killed = time.monotonic()
            holder.put("w/a", b"1")  # retried on the survivors within the timeout
            resumed = time.monotonic() - killed
            assert resumed < 10, f"operations resumed only after {resumed:.1f} s"
            for i in range(2, 100):
                holder.put("w/a", str(i))
            holder.put("w/b", b"new")
            final = holder.get("w/a")
            assert final.value == b"99"
            for w in (watch, holder_watch):
                event = drain_until(w, lambda e: e is not None and e.value == b"99", 20)
                assert event == final
            drain_until(
                tree,
                lambda s: [(p.key, p.value) for p in s] == [("w/a", b"99"), ("w/b", b"new")],
                20,
            )

            # the TTL key and the lock outlive their TTL across the election
            time.sleep(TTL * 1.5)
            assert observer.get("eph").value == b"alive"
            assert lock.held
            assert not lock.lost.is_set()
            assert lock.token == token
            assert observer.get("leader").value == b"holder"
            assert not observer.lock("leader", ttl=TTL).acquire(timeout=1)

            # compare-and-swap and a new lock work on the new leader
            pair = holder.get("w/b")
            assert holder.atomic_put("w/b", b"cas", pair).value == b"cas"
            lock.release()
            other = observer.lock("leader", value=b"observer", ttl=TTL)
            assert other.acquire(timeout=10)
            assert other.token is not None
            assert token is not None
            assert other.token > token
            other.release()
    finally:
        holder.close()
        observer.close()
        cluster.restore()
        with pykv.open_store(url, prefix=prefix, timeout=10) as cleaner:
            cleaner.delete_tree("")


def test_lock_granted_late_is_never_held_twice(etcd_cluster: Any) -> None:
    """A lock whose grant waited seconds for a quorum is renewed before acquire() returns.

    etcd v2 counts a node's TTL from when the member received the request. Here the grant waits
    at the leader while both followers are frozen, so its bookkeeping node expires moments after
    it is committed; before the fix acquire() returned True on it and a contender acquired the
    same lock while the first holder's ``lost`` was still clear (found by the fault suite,
    partition-leader).
    """
    cluster = etcd_cluster
    cluster.wait_healthy(60)
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    leader = cluster.leader()
    followers = [n for n in cluster.nodes if n != leader]
    late_url = "etcd2://" + ",".join(cluster.address(n) for n in [leader, *followers])
    other_url = "etcd2://" + ",".join(cluster.address(n) for n in [*followers, leader])
    late = pykv.open_store(late_url, prefix=prefix, timeout=8)
    other = pykv.open_store(other_url, prefix=prefix, timeout=8)
    late_lock = late.lock("l", ttl=3)
    other_lock = other.lock("l", ttl=3)
    events: list[tuple[str, bool]] = []  # (who acquired, whether the other one held it)
    errors: list[BaseException] = []
    mutex = threading.Lock()
    releasing: set[str] = set()  # a holder releasing may still say held after its delete

    def contend(mine: Any, theirs: Any, name: str) -> None:
        try:
            if mine.acquire(timeout=12):
                with mutex:
                    them = "other" if name == "late" else "late"
                    events.append((name, theirs.held and them not in releasing))
                time.sleep(1.5)  # hold it a while, as a worker would
                if mine.held:
                    with mutex:
                        releasing.add(name)
                    mine.release()
        except pykv.PyKVError as exc:
            with mutex:
                errors.append(exc)

    late_thread = threading.Thread(target=contend, args=(late_lock, other_lock, "late"))
    other_thread = threading.Thread(target=contend, args=(other_lock, late_lock, "other"))
    try:
        for node in followers:
            cluster.pause(node)
        try:
            late_thread.start()  # the grant waits at the leader, which cannot commit it
            time.sleep(2.7)
        finally:
            for node in followers:
                cluster.unpause(node)
        other_thread.start()
        late_thread.join(30)
        other_thread.join(30)
        assert not late_thread.is_alive()
        assert not other_thread.is_alive()
        assert [name for name, _ in events], f"nobody acquired the lock ({errors})"
        overlaps = [name for name, other_held in events if other_held]
        assert not overlaps, f"acquired while the other holder still held it: {events}"
    finally:
        cluster.restore()
        late.close()
        other.close()
