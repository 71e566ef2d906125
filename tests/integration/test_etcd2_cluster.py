"""The etcd v2 store on a three-node cluster whose leader is killed."""

from __future__ import annotations

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
