"""close() on a server that stopped answering (a stalled TCP proxy in front of the real one):
held locks, TTL keys of several TTLs and a watch cost a couple of timeouts in all (one failed
release, then the threads' joins), not one per lock, session or key (before: 21-24 s with the
timeout below); what close() could not release expires within its TTL."""

from __future__ import annotations

import time
import uuid

import pytest
from _proxy import TcpProxy

import pykv
from pykv import StoreURL

pytestmark = [pytest.mark.integration]

TIMEOUT = 2.0


@pytest.mark.parametrize(
    ("fixture", "scheme"),
    [
        pytest.param("consul_url", "consul", marks=pytest.mark.consul),
        pytest.param("etcd_url", "etcd", marks=pytest.mark.etcd),
        pytest.param("etcd2_url", "etcd2", marks=pytest.mark.etcd),
        pytest.param("zookeeper_url", "zk", marks=pytest.mark.zookeeper),
    ],
)
def test_close_on_a_hung_server_takes_a_couple_of_timeouts(
    request: pytest.FixtureRequest, fixture: str, scheme: str
) -> None:
    url = request.getfixturevalue(fixture)
    host = StoreURL.parse(url).hosts[0]
    assert host.port is not None
    proxy = TcpProxy((host.host, host.port))
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    try:
        store = pykv.open_store(
            f"{scheme}://127.0.0.1:{proxy.port}", prefix=prefix, timeout=TIMEOUT
        )
        for i in range(5):
            store.put(f"ttl/{i}", b"v", ttl=3 + i)
        locks = [store.lock(f"lock/{i}", ttl=5) for i in range(5)]
        for lock in locks:
            assert lock.acquire(timeout=10)
        watch = store.watch("ttl/0")
        proxy.stall()
        started = time.monotonic()
        store.close()
        took = time.monotonic() - started
        assert took < 4 * TIMEOUT, f"close() took {took:.1f} s with 5 locks and 5 TTLs"
        assert not any(lock.held for lock in locks)
        assert watch.closed
    finally:
        proxy.close()
    with pykv.open_store(url, prefix=prefix) as other:
        # whatever close() could not release goes within the TTL (+ slack)
        other_lock = other.lock("lock/0", ttl=5)
        assert other_lock.acquire(timeout=5 + 2 * other.ttl_slack + 5)
        other_lock.release()
        other.delete_tree("")
