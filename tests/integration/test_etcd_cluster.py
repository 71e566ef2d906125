"""The etcd v3 store on a three-node cluster whose leader is killed."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

import pykv
from pykv.testing import drain_until

pytestmark = [pytest.mark.integration, pytest.mark.etcd]

TTL = 8.0


def test_leader_kill(etcd_cluster: Any) -> None:
    cluster = etcd_cluster
    cluster.wait_healthy(60)
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    holder = pykv.open_store(cluster.url, prefix=prefix, timeout=10)
    observer = pykv.open_store(cluster.url, prefix=prefix, timeout=10)
    leader = cluster.leader()
    try:
        holder.put("eph", b"alive", ttl=TTL)
        lock = holder.lock("leader", value=b"holder", ttl=TTL)
        assert lock.acquire(timeout=10)
        token = lock.token
        holder.put("w/a", b"0")
        with observer.watch("w/a") as watch, observer.watch_tree("w") as tree:
            assert watch.get(timeout=10) is not None
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
            assert drain_until(watch, lambda e: e is not None and e.value == b"99", 20) == final
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

            # the watch still follows new writes
            holder.put("w/a", b"later")
            drain_until(watch, lambda e: e is not None and e.value == b"later", 10)
        lock.release()
        assert not observer.exists("leader")
        print(f"operations resumed {resumed:.2f} s after the leader was killed")
    finally:
        holder.close()
        with pykv.open_store(cluster.url, prefix=prefix) as cleaner:
            cleaner.delete_tree("")
        observer.close()
        # the fixture restarts the killed member after the test


def test_every_endpoint_in_the_url_is_tried(etcd_cluster: Any) -> None:
    """A dead first endpoint does not stop a store whose other endpoints live."""
    first = etcd_cluster.url.split("://", 1)[1].split(",")[0]
    url = etcd_cluster.url.replace(first, "127.0.0.1:1," + first, 1)
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    with pykv.open_store(url, prefix=prefix, timeout=5) as store:
        for i in range(5):
            store.put("k", str(i))
            assert store.get("k").value == str(i).encode()
        store.delete_tree("")
