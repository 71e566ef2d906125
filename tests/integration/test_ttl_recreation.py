"""TTL keys that the server dropped while their store stayed open are written again — and a
delete by that same store always wins over a re-creation in flight.

Consul invalidates a TTL key's session, etcd lets its lease expire, ZooKeeper expires the
session of an ephemeral node when the store loses the server for a while. Every driver writes
such keys again once it can (the registrar's entries must come back after a store outage).
The race these tests pin down: the store's user deletes the key while the driver is writing
it again; without care the key would come back as a ghost and live for as long as the store.
The deletes are injected at the precise moment by wrapping the driver's own call (white box);
everything else is the real server.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import consul
import pyetcd
import pytest
from kazoo.client import KazooClient

import pykv
from pykv import StoreURL
from pykv.testing import wait_until

pytestmark = [pytest.mark.integration]


def _prefix() -> str:
    return f"pykv-test-{uuid.uuid4().hex[:12]}"


def _consul_raw(url: str) -> Any:
    host = StoreURL.parse(url).hosts[0]
    return consul.Consul(host=host.host, port=host.port, connections_timeout=10)


@pytest.mark.consul
def test_consul_ttl_key_is_written_again_after_its_session_is_invalidated(
    consul_url: str,
) -> None:
    prefix = _prefix()
    raw = _consul_raw(consul_url)
    with pykv.open_store(consul_url, prefix=prefix) as store:
        store.put("eph", b"alive", ttl=2)
        store.put("gone", b"x", ttl=2)
        _, entry = raw.kv.get(f"{prefix}/eph")
        raw.session.destroy(entry["Session"])  # as Consul does when the agent loses the store
        assert not store.exists("eph")
        store.delete("gone")
        wait_until(lambda: store.exists("eph"), 10, "eph written again")
        assert store.get("eph").value == b"alive"
        _, again = raw.kv.get(f"{prefix}/eph")
        assert again["Session"] != entry["Session"]
        time.sleep(3)  # longer than the TTL: kept alive by the new session
        assert store.exists("eph")
        assert not store.exists("gone")
        store.delete_tree("")
    time.sleep(0.5)
    _, left = raw.kv.get(f"{prefix}/eph")
    assert left is None  # and gone with the store


@pytest.mark.consul
def test_consul_delete_during_a_re_creation_wins(consul_url: str) -> None:
    prefix = _prefix()
    raw = _consul_raw(consul_url)
    with pykv.open_store(consul_url, prefix=prefix) as store:
        store.put("eph", b"alive", ttl=2)
        transport = store._transport  # type: ignore[attr-defined]
        real = transport.txn
        hits: list[str] = []

        def txn(what: str, ops: Any, **kw: Any) -> Any:
            if what.startswith("re-create") and not hits:
                hits.append(what)
                store.delete("eph")  # the user's delete lands just before the re-creation
            return real(what, ops, **kw)

        transport.txn = txn
        _, entry = raw.kv.get(f"{prefix}/eph")
        raw.session.destroy(entry["Session"])
        wait_until(lambda: bool(hits), 10, "a re-creation")
        time.sleep(3)
        assert not store.exists("eph")


@pytest.mark.etcd
def test_etcd_delete_during_a_re_creation_wins(etcd_url: str) -> None:
    prefix = _prefix()
    host = StoreURL.parse(etcd_url).hosts[0]
    raw = pyetcd.client(host=host.host, port=host.port, timeout=10)
    try:
        with pykv.open_store(etcd_url, prefix=prefix) as store:
            store.put("eph", b"alive", ttl=2)
            store.put("keep", b"k", ttl=2)
            real = store._call  # type: ignore[attr-defined]
            hits: list[str] = []

            def call(what: str, *args: Any, **kw: Any) -> Any:
                if what == "re-create a TTL key" and b"eph" in args[1].compare[0].key and not hits:
                    hits.append(what)
                    store.delete("eph")
                return real(what, *args, **kw)

            store._call = call  # type: ignore[attr-defined]
            raw.revoke_lease(raw.get(f"{prefix}/eph")[1].lease_id)  # as if the lease expired
            wait_until(lambda: bool(hits), 10, "a re-creation")
            wait_until(lambda: store.exists("keep"), 10, "keep written again")
            time.sleep(3)
            assert not store.exists("eph")
            assert store.exists("keep")
    finally:
        raw.close()


@pytest.mark.zookeeper
def test_zookeeper_delete_during_a_re_creation_wins(zookeeper_url: str) -> None:
    with pykv.open_store(zookeeper_url, prefix=_prefix(), session_timeout=2) as store:
        store.put("eph", b"alive", ttl=2)
        store.put("keep", b"k", ttl=2)
        real = store._create_again  # type: ignore[attr-defined]
        hits: list[str] = []

        def create_again(session: Any, path: str, value: bytes) -> Any:
            if path.endswith("/eph") and not hits:
                hits.append(path)
                store.delete("eph")  # the user's delete lands just before the re-creation
            return real(session, path, value)

        store._create_again = create_again  # type: ignore[attr-defined]
        # The server ends the TTL keys' session (as when the store was cut off for longer
        # than its timeout): another client takes the session over and closes it.
        session_id, password = store._session_for(2).client.client_id  # type: ignore[attr-defined]
        hosts = ",".join(f"{h.host}:{h.port}" for h in StoreURL.parse(zookeeper_url).hosts)
        thief = KazooClient(hosts=hosts, client_id=(session_id, password))
        thief.start(timeout=10)
        thief.stop()
        thief.close()
        wait_until(lambda: bool(hits), 15, "a re-creation")
        wait_until(lambda: store.exists("keep"), 15, "keep written again")
        time.sleep(3)
        assert not store.exists("eph")
        assert store.get("keep").value == b"k"
        store.delete_tree("")
