"""The ZooKeeper driver against a real single-node ZooKeeper: the whole conformance suite plus
what is particular to ZooKeeper (directory nodes, ephemeral keys with children, session
expiry, digest ACLs, an unreachable ensemble).

The server comes from the harness fixture ``zookeeper_url``; set PYKV_ZOOKEEPER_URL to point
the tests at another server instead.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

import pykv
from pykv import KVPair, Store
from pykv.testing import AsyncTests, ConformanceTests, FuzzTests, RecipeTests
from pykv.testing._support import drain_until, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.zookeeper]


def _hosts(url: str) -> str:
    return pykv.StoreURL.parse(url).netloc


@pytest.fixture
def raw(zk_url: str) -> Iterator[KazooClient]:
    """A plain kazoo client on the same server, to check what other ZooKeeper clients see."""
    client = KazooClient(hosts=_hosts(zk_url))
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


class TestZooKeeperStore(ConformanceTests):
    @pytest.fixture
    def store_url(self, zk_url: str) -> str:
        return zk_url

    @pytest.fixture
    def store_options(self) -> dict[str, Any]:
        # the default: a session per TTL, so the dead-process tests check the declared slack
        return {}


class TestZooKeeperRecipesAndAsync(RecipeTests, AsyncTests):
    @pytest.fixture
    def store_url(self, zk_url: str) -> str:
        return zk_url

    @pytest.fixture
    def store_options(self) -> dict[str, Any]:
        return {"session_timeout": 4}


class TestZooKeeperFuzz(FuzzTests):  # the fuzz suite, with fewer examples over the network
    fuzz_examples = 25
    store_url = TestZooKeeperStore.store_url
    store_options = TestZooKeeperStore.store_options

    def test_astral_and_specials_keys_are_refused_before_any_io(self, store: Store) -> None:
        # ZooKeeper itself refuses them (BadArguments); the key rule refuses them everywhere.
        for key in ("emoji/\U0001f600", "x/\ufffd", "\U0002f800"):
            with pytest.raises(pykv.InvalidKeyError, match="Basic Multilingual Plane"):
                store.put(key, b"x")


@pytest.fixture
def prefix() -> str:
    return f"pykv-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(zk_url: str, prefix: str) -> Iterator[Store]:
    with pykv.open_store(zk_url, prefix=prefix, session_timeout=4) as s:
        yield s
        s.delete_tree("")


def test_both_schemes_and_url_path_as_prefix(zk_url: str, prefix: str) -> None:
    url = pykv.StoreURL.parse(zk_url)
    for scheme in ("zookeeper", "zk"):
        with pykv.open_store(f"{scheme}://{url.netloc}/{prefix}/{scheme}") as s:
            assert type(s).__name__ == "ZooKeeperStore"
            s.put("k", scheme)
    with pykv.open_store(zk_url, prefix=prefix) as outer:
        assert outer.get("zk/k").value == b"zk"
        assert outer.get("zookeeper/k").value == b"zookeeper"
        outer.delete_tree("")


def test_keys_are_at_their_natural_path(store: Store, raw: KazooClient, prefix: str) -> None:
    store.put("a/b/c", b"v")
    data, stat = raw.get(f"/{prefix}/a/b/c")
    assert data == b"v"
    assert store.get("a/b/c").revision == stat.mzxid
    # the parents pykv created are directory nodes: null data, not keys
    assert raw.get(f"/{prefix}/a/b")[0] is None
    assert not store.exists("a/b")
    assert [p.key for p in store.list("")] == ["a/b/c"]
    # what other clients write is seen, and empty data is a key
    raw.create(f"/{prefix}/a/empty", b"")
    raw.create(f"/{prefix}/dir", None)
    assert store.get("a/empty").value == b""
    assert [p.key for p in store.list("")] == ["a/b/c", "a/empty"]
    with pytest.raises(pykv.KeyNotFoundError):
        store.get("dir")


def test_deleting_a_leaf_removes_empty_directory_nodes(
    store: Store, raw: KazooClient, prefix: str
) -> None:
    store.put("x/y/z", b"1")
    store.put("x/keep", b"2")
    store.delete("x/y/z")
    assert raw.exists(f"/{prefix}/x/y") is None
    assert raw.exists(f"/{prefix}/x") is not None
    store.delete("x/keep")
    assert raw.exists(f"/{prefix}/x") is None


def test_deleting_a_key_with_children_keeps_a_directory(
    store: Store, raw: KazooClient, prefix: str
) -> None:
    store.put("p", b"parent")
    store.put("p/c", b"child")
    store.delete("p")
    assert raw.get(f"/{prefix}/p")[0] is None
    assert not store.exists("p")
    assert [p.key for p in store.list("")] == ["p/c"]
    # and a directory node can become a key again, create-only included
    pair = store.atomic_put("p", b"again", None)
    assert store.get("p") == pair


def test_revision_is_mzxid_not_version(store: Store, raw: KazooClient, prefix: str) -> None:
    store.put("r", b"1")
    first = store.get("r")
    raw.set(f"/{prefix}/r", b"2")
    second = store.get("r")
    assert second.revision == raw.get(f"/{prefix}/r")[1].mzxid
    assert second.revision > first.revision > 1
    with pytest.raises(pykv.KeyModifiedError):
        store.atomic_put("r", b"3", first)


def test_ttl_key_is_an_ephemeral_node(store: Store, raw: KazooClient, prefix: str) -> None:
    store.put("eph", b"x", ttl=5)
    stat = raw.exists(f"/{prefix}/eph")
    assert stat.ephemeralOwner == store._client.client_id[0]  # type: ignore[attr-defined]
    store.put("eph", b"y")
    stat = raw.exists(f"/{prefix}/eph")
    assert stat.ephemeralOwner == 0
    assert store.get("eph").value == b"y"


def test_ttl_keys_cannot_have_children(store: Store) -> None:
    store.put("eph", b"x", ttl=5)
    with pytest.raises(pykv.NotSupportedError, match="cannot have children"):
        store.put("eph/child", b"y")
    with pytest.raises(pykv.NotSupportedError, match="cannot have children"):
        store.put("eph/child", b"y", ttl=5)
    store.put("dir/child", b"c")
    store.put("dir", b"d")
    with pytest.raises(pykv.NotSupportedError, match="cannot have children"):
        store.put("dir", b"d2", ttl=5)
    assert store.get("dir").value == b"d"  # unchanged
    with pytest.raises(pykv.NotSupportedError, match="children"):
        store.lock("dir", ttl=5).acquire(timeout=5)
    # a plain key may still get children; the TTL key stays what it was
    assert store.get("eph").value == b"x"


def test_ttl_keys_come_back_after_session_expiry(
    zk_url: str, prefix: str, raw: KazooClient
) -> None:
    with pykv.open_store(zk_url, prefix=prefix, session_timeout=2) as owner:
        owner.put("svc/a", b"alive", ttl=2)
        lock = owner.lock("leader", value=b"me", ttl=2)
        assert lock.acquire(timeout=5)
        with owner.watch("svc/a") as watch:
            assert watch.get(timeout=5) is not None
            old = owner._client.client_id  # type: ignore[attr-defined]
            # expire the session from the server side: a second client with the same id
            # and password takes it over and closes it
            thief = KazooClient(hosts=_hosts(zk_url), client_id=old)
            thief.start(timeout=10)
            thief.stop()
            thief.close()
            assert lock.lost.wait(10), "the holder was not told its session expired"
            wait_until(
                lambda: owner._client.client_id not in (None, old),  # type: ignore[attr-defined]
                15,
                "a new session",
            )
            wait_until(lambda: raw.exists(f"/{prefix}/svc/a") is not None, 10, "re-creation")
            assert raw.get(f"/{prefix}/svc/a")[0] == b"alive"
            # the watch went on: it saw the key vanish or (coalesced) its new revision
            new = owner.get("svc/a")
            drain_until(watch, lambda e: e == new, 10)
            owner.put("svc/a", b"changed", ttl=2)
            drain_until(watch, lambda e: e is not None and e.value == b"changed", 5)
        with pytest.raises(pykv.LockLostError):
            lock.release()
        relock = owner.lock("leader", value=b"me", ttl=2)
        assert relock.acquire(timeout=5)
        assert relock.token is not None
        assert lock.token is not None
        assert relock.token > lock.token
        relock.release()
        owner.delete_tree("")


def test_lock_bookkeeping_lives_outside_the_prefix(
    store: Store, raw: KazooClient, prefix: str
) -> None:
    lock = store.lock("jobs/leader", value=b"me", ttl=5)
    assert lock.acquire(timeout=5)
    queue = raw.get_children(f"/_pykv_locks/{prefix}/jobs/leader")
    assert len(queue) == 1
    assert lock.token == raw.exists(f"/{prefix}/jobs/leader").czxid
    assert [p.key for p in store.list("")] == ["jobs/leader"]
    lock.release()
    assert raw.exists(f"/{prefix}/jobs/leader") is None


def test_watch_tree_ignores_directory_nodes(store: Store) -> None:
    with store.watch_tree("t") as watch:
        assert watch.get(timeout=5) == []
        store.put("t/a/b/c", b"1")
        snap = drain_until(watch, bool, 5)
        assert [p.key for p in snap] == ["t/a/b/c"]
        store.put("t/a", b"2")
        snap = drain_until(watch, lambda s: len(s) == 2, 5)
        assert snap == store.list("t")
        store.delete("t/a")
        snap = drain_until(watch, lambda s: len(s) == 1, 5)
        assert [p.key for p in snap] == ["t/a/b/c"]


def test_unreachable_ensemble_raises_unavailable_within_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(pykv.UnavailableError, match=r"127\.0\.0\.1:1"):
        pykv.open_store("zk://127.0.0.1:1,127.0.0.1:2/x", timeout=1)
    assert time.monotonic() - start < 3


def test_black_holed_server_raises_unavailable_within_timeout() -> None:
    """A server that accepts connections and never answers (a frozen or partitioned one)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(pykv.UnavailableError, match="within 1"):
            pykv.open_store(f"zk://127.0.0.1:{port}/x", timeout=1, session_timeout=20)
        assert time.monotonic() - start < 2.5


def test_store_without_prefix_hides_system_nodes(zk_url: str, prefix: str) -> None:
    url = pykv.StoreURL.parse(zk_url)
    with pykv.open_store(f"zk://{url.netloc}") as top:
        keys = [p.key for p in top.list("")]
        assert not any(k.startswith(("zookeeper/", "_pykv_locks/")) for k in keys)
        with top.lock(f"{prefix}/l", ttl=5):
            assert not any(p.key.startswith("_pykv_locks") for p in top.list(prefix))
        top.delete_tree(prefix)


def test_every_call_is_bounded_when_the_server_is_gone(zk_url: str, prefix: str) -> None:
    """Other tests cannot stop the shared server; a store whose client is stopped stands in."""
    store = pykv.open_store(zk_url, prefix=prefix, timeout=1)
    store._client.stop()  # type: ignore[attr-defined]
    for call in (
        lambda: store.get("k"),
        lambda: store.put("k", b"v"),
        lambda: store.list(""),
        lambda: store.atomic_put("k", b"v", KVPair("k", b"", 1)),
    ):
        start = time.monotonic()
        with pytest.raises(pykv.UnavailableError):
            call()
        assert time.monotonic() - start < 2
    store.close()


def test_digest_auth_and_acls(zk_url: str, prefix: str, raw: KazooClient) -> None:
    url = pykv.StoreURL.parse(zk_url)
    secured = f"zk://alice:s3cret@{url.netloc}/{prefix}"
    with pykv.open_store(secured) as alice:
        try:
            _check_acls(alice, url.netloc, zk_url, prefix, raw)
        finally:
            alice.delete_tree("")
    assert raw.exists(f"/{prefix}") is None


def _check_acls(alice: Store, netloc: str, zk_url: str, prefix: str, raw: KazooClient) -> None:
    assert "s3cret" not in str(alice)
    alice.put("k", b"private")
    alice.put("eph", b"e", ttl=5)
    with alice.lock("l", value=b"held", ttl=5):
        # the nodes pykv made at and below the prefix are creator-all: digest alice only
        for path in (f"/{prefix}", f"/{prefix}/k", f"/{prefix}/eph", f"/{prefix}/l"):
            acls, _ = alice._client.get_acls(path)  # type: ignore[attr-defined]
            assert [(a.id.scheme, a.perms) for a in acls] == [("digest", 31)], path
        with pytest.raises(NoAuthError):
            raw.get(f"/{prefix}/k")
    # the same identity from options instead of the URL
    with pykv.open_store(
        f"zk://{netloc}", prefix=prefix, username="alice", password="s3cret"
    ) as again:
        assert again.get("k").value == b"private"
    # a wrong password and no credentials are refused when the store opens
    with pytest.raises(pykv.PermissionDeniedError, match="alice"):
        pykv.open_store(f"zk://alice:wrong@{netloc}/{prefix}")
    with pytest.raises(pykv.PermissionDeniedError, match="unauthenticated"):
        pykv.open_store(zk_url, prefix=prefix)
    # keys below the prefix are protected too, also when opened as a sub-prefix
    with pytest.raises(pykv.PermissionDeniedError):
        pykv.open_store(f"zk://mallory:x@{netloc}/{prefix}/k")
