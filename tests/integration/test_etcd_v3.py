"""etcd v3 store beyond the conformance suite: auth, unreachable servers, bursts, compaction and
reconnects (through a TCP proxy the test controls, in front of the real server)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyetcd
import pytest
from _proxy import TcpProxy as _Proxy
from _watches import check_many_watches_share_threads

import pykv
from pykv import KVPair, StoreURL
from pykv.testing import drain_until

pytestmark = [pytest.mark.integration, pytest.mark.etcd]


def _address(url: str) -> tuple[str, int]:
    host = StoreURL.parse(url).hosts[0]
    return host.host, host.port or 2379


def _auth_parts(etcd_auth: Any) -> tuple[str, str, str]:
    """(url without credentials, username, password) from the harness fixture, whichever
    shape it has: a URL with ``user:password@``, or an object with url/username/password."""
    if isinstance(etcd_auth, str):
        url = StoreURL.parse(etcd_auth)
        user, password = url.username, url.password
        bare = url.replace(username=None, password=None)
    else:
        url = StoreURL.parse(etcd_auth.url)
        user = getattr(etcd_auth, "username", None) or getattr(etcd_auth, "user", None)
        password = getattr(etcd_auth, "password", None)
        user, password = user or url.username, password or url.password
        bare = url.replace(username=None, password=None)
    assert user, f"cannot find the username in {etcd_auth!r}"
    assert password, f"cannot find the password in {etcd_auth!r}"
    return bare.render(mask=False), user, password


@pytest.fixture
def prefix() -> str:
    return f"pykv-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(etcd_url: str, prefix: str) -> Iterator[pykv.Store]:
    with pykv.open_store(etcd_url, prefix=prefix) as s:
        yield s
        s.delete_tree("")


@pytest.fixture
def proxy(etcd_url: str) -> Iterator[_Proxy]:
    p = _Proxy(_address(etcd_url))
    yield p
    p.close()


@pytest.fixture
def raw(etcd_url: str) -> Iterator[Any]:
    host, port = _address(etcd_url)
    client = pyetcd.client(host=host, port=port, timeout=10)
    yield client
    client.close()


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["etcd://127.0.0.1:1", "etcd://127.0.0.1:1,127.0.0.1:2"])
def test_unreachable_raises_unavailable_within_the_timeout(url: str) -> None:
    with pykv.open_store(url, timeout=1) as store:
        for call in (lambda: store.get("k"), lambda: store.put("k", b"v"), store.list):
            start = time.monotonic()
            with pytest.raises(pykv.UnavailableError) as info:
                call()
            assert time.monotonic() - start < 2.0
            assert "127.0.0.1:1" in str(info.value)


def test_wrong_password_is_a_clear_permission_error(etcd_auth: Any) -> None:
    url, user, password = _auth_parts(etcd_auth)
    start = time.monotonic()
    with pytest.raises(pykv.PermissionDeniedError) as info:  # raised when opening the store
        pykv.open_store(url, username=user, password=password + "-wrong", timeout=5)
    assert time.monotonic() - start < 5
    assert "authentication failed" in str(info.value)
    assert password not in str(info.value)


def test_missing_credentials_are_a_permission_error(etcd_auth: Any) -> None:
    url, _, _ = _auth_parts(etcd_auth)
    with pykv.open_store(url, timeout=5) as store, pytest.raises(pykv.PermissionDeniedError):
        store.put("k", b"v")


def test_right_credentials_work(etcd_auth: Any, prefix: str) -> None:
    url, user, password = _auth_parts(etcd_auth)
    with pykv.open_store(url, username=user, password=password, prefix=prefix) as store:
        assert password not in str(store)
        store.put("k", b"v", ttl=2)
        assert store.get("k").value == b"v"
        with store.watch("k") as watch:
            assert watch.get(timeout=5) is not None
            store.put("k", b"w")
            drain_until(watch, lambda e: e is not None and e.value == b"w", 5)
        with store.lock("l", value=b"me", ttl=2) as lock:
            assert lock.token is not None
            assert store.get("l").value == b"me"
        store.delete_tree("")
    # credentials in the URL work as well
    parsed = StoreURL.parse(url).replace(username=user, password=password)
    with pykv.open_store(parsed.render(mask=False), prefix=prefix) as store:
        assert "***" in str(store)
        assert store.list("") == []


# -- watches -----------------------------------------------------------------------------------


def test_burst_of_1000_writes_ends_in_final_state(store: pykv.Store) -> None:
    with store.watch_tree("burst") as tree, store.watch("burst/k7") as key:
        assert tree.get(timeout=10) == []
        assert key.get(timeout=10) is None
        for i in range(1000):
            store.put(f"burst/k{i % 20}", str(i))
        expected = {f"burst/k{j}": str(980 + j).encode() for j in range(20)}
        final = drain_until(tree, lambda s: {p.key: p.value for p in s} == expected, 30)
        assert final == store.list("burst")
        drain_until(key, lambda e: e is not None and e.value == b"987", 30)
        with pytest.raises(TimeoutError):
            tree.get(timeout=0.5)


def test_watch_resumes_after_reconnect(etcd_url: str, prefix: str, proxy: _Proxy) -> None:
    writer = pykv.open_store(etcd_url, prefix=prefix)
    watcher = pykv.open_store(f"etcd://127.0.0.1:{proxy.port}", prefix=prefix, timeout=5)
    try:
        with watcher.watch("r") as watch, watcher.watch_tree("") as tree:
            assert watch.get(timeout=10) is None
            assert tree.get(timeout=10) == []
            writer.put("r", b"1")
            drain_until(watch, lambda e: e is not None and e.value == b"1", 10)
            proxy.cut()
            for i in range(2, 30):  # written while the watcher is cut off
                writer.put("r", str(i))
            writer.put("other", b"x")
            proxy.restore()
            last = writer.get("r")
            event = drain_until(watch, lambda e: e is not None and e.value == b"29", 15)
            assert event == last
            drain_until(tree, lambda s: {p.key for p in s} == {"other", "r"}, 15)
    finally:
        watcher.close()
        writer.delete_tree("")
        writer.close()


def test_watch_survives_compaction_while_behind(
    etcd_url: str, prefix: str, proxy: _Proxy, raw: Any
) -> None:
    writer = pykv.open_store(etcd_url, prefix=prefix)
    watcher = pykv.open_store(f"etcd://127.0.0.1:{proxy.port}", prefix=prefix, timeout=5)
    try:
        writer.put("c/a", b"0")
        writer.put("c/gone", b"0")
        with watcher.watch("c/a") as watch, watcher.watch_tree("c") as tree:
            assert watch.get(timeout=10) is not None
            assert len(tree.get(timeout=10)) == 2
            proxy.cut()  # the watches fall behind
            for i in range(1, 50):
                writer.put("c/a", str(i))
            writer.delete("c/gone")
            writer.put("c/new", b"n")
            top = writer.get("c/new").revision
            raw.compact(top, physical=True)  # the revisions the watches need are gone
            proxy.restore()
            event = drain_until(watch, lambda e: e is not None and e.value == b"49", 15)
            assert event == writer.get("c/a")
            snap = drain_until(tree, lambda s: {p.key for p in s} == {"c/a", "c/new"}, 15)
            assert snap == writer.list("c")
            # and it goes on after the re-read
            writer.put("c/a", b"after")
            drain_until(watch, lambda e: e is not None and e.value == b"after", 10)
            drain_until(tree, lambda s: [p.value for p in s] == [b"after", b"n"], 10)
    finally:
        watcher.close()
        writer.delete_tree("")
        writer.close()


def test_watch_starts_without_a_gap(store: pykv.Store, etcd_url: str, prefix: str) -> None:
    """Writes racing with the start of a watch are never lost."""
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        with pykv.open_store(etcd_url, prefix=prefix) as w:
            i = 0
            while not stop.is_set() and i < 2000:
                w.put("gap", str(i))
                written.append(i)
                i += 1

    thread = threading.Thread(target=write)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not written:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(10):
            with store.watch("gap") as watch:
                first = watch.get(timeout=10)
                assert first is not None
                seen = [int(first.value)]
                target = seen[0] + 20
                while seen[-1] < target and not stop.is_set():
                    event = watch.get(timeout=10)
                    assert event is not None
                    seen.append(int(event.value))
                assert seen == list(range(seen[0], seen[0] + len(seen))), seen
    finally:
        stop.set()
        thread.join(timeout=30)


# -- TTL keys and locks ------------------------------------------------------------------------


def test_ttl_key_is_recreated_after_its_lease_is_revoked(store: pykv.Store, raw: Any) -> None:
    store.put("eph", b"alive", ttl=2)
    lease_id = raw.get("/".join([store.prefix, "eph"]))[1].lease_id
    assert lease_id
    raw.revoke_lease(lease_id)  # as if etcd had expired it
    assert not store.exists("eph")
    deadline = time.monotonic() + 10
    while not store.exists("eph"):
        assert time.monotonic() < deadline, "the TTL key was not re-created"
        time.sleep(0.1)
    assert store.get("eph").value == b"alive"


def test_lock_is_lost_when_its_lease_is_revoked(store: pykv.Store, raw: Any) -> None:
    lock = store.lock("held", value=b"v", ttl=2)
    assert lock.acquire(timeout=10)
    lease_id = raw.get("/".join([store.prefix, "held"]))[1].lease_id
    raw.revoke_lease(lease_id)
    assert lock.lost.wait(10)
    with pytest.raises(pykv.LockLostError):
        lock.release()
    other = store.lock("held", ttl=2)
    assert other.acquire(timeout=10)
    assert other.token is not None
    assert other.token > (lock.token or 0)
    other.release()


def test_lock_bookkeeping_is_outside_the_store(store: pykv.Store, raw: Any) -> None:
    lock = store.lock("lk", value=b"holder", ttl=5)
    assert lock.acquire(timeout=10)
    value, meta = raw.get("/".join([store.prefix, "lk"]))
    assert value == b"holder"
    assert meta.create_revision == lock.token
    queued = list(raw.get_prefix(b"\x00pykv-locks/" + store.prefix.encode()))
    assert len(queued) == 1
    assert [p.key for p in store.list("")] == ["lk"]
    lock.release()
    assert list(raw.get_prefix(b"\x00pykv-locks/" + store.prefix.encode())) == []


def test_watch_is_fed_and_stopped_on_close(etcd_url: str, prefix: str) -> None:
    store = pykv.open_store(etcd_url, prefix=prefix)
    watch = store.watch("x")
    assert watch.get(timeout=10) is None
    store.put("x", b"1")
    assert drain_until(watch, lambda e: e is not None, 10) == KVPair(
        "x", b"1", store.get("x").revision
    )
    before = {t.name for t in threading.enumerate()}
    assert any("watch(" in n for n in before)
    store.delete("x")
    store.close()
    assert watch.closed
    assert not any("watch(" in t.name for t in threading.enumerate() if t.is_alive())


def test_cut_off_holder_is_told_before_anyone_else_acquires(
    etcd_url: str, prefix: str, proxy: _Proxy
) -> None:
    """A holder cut off from etcd marks its lock lost before etcd expires the lease and hands
    the lock on; when it is back, its TTL keys are written again on a new lease."""
    holder = pykv.open_store(f"etcd://127.0.0.1:{proxy.port}", prefix=prefix, timeout=2)
    other = pykv.open_store(etcd_url, prefix=prefix)
    try:
        holder.put("eph", b"mine", ttl=3)
        lock = holder.lock("cut", value=b"holder", ttl=3)
        assert lock.acquire(timeout=10)
        proxy.cut()
        contender = other.lock("cut", value=b"other", ttl=3)
        assert contender.acquire(timeout=20)
        assert lock.lost.is_set(), "another client acquired before the holder was told"
        assert other.get("cut").value == b"other"
        assert not other.exists("eph")  # the lease expired
        proxy.restore()
        deadline = time.monotonic() + 15
        while not other.exists("eph"):
            assert time.monotonic() < deadline, "the TTL key was not written again"
            time.sleep(0.1)
        assert other.get("eph").value == b"mine"
        with pytest.raises(pykv.LockLostError):
            lock.release()
        assert other.get("cut").value == b"other"  # the lost holder's cleanup spared it
        contender.release()
    finally:
        proxy.restore()
        holder.close()
        other.delete_tree("")
        other.close()


def test_close_while_cut_off_is_bounded(etcd_url: str, prefix: str, proxy: _Proxy) -> None:
    store = pykv.open_store(f"etcd://127.0.0.1:{proxy.port}", prefix=prefix, timeout=1)
    store.put("eph", b"x", ttl=2)
    locks = [store.lock(f"l{i}", ttl=2) for i in range(3)]
    for lock in locks:
        assert lock.acquire(timeout=10)
    with store.watch_tree("") as tree:
        tree.get(timeout=10)
        proxy.cut()
        start = time.monotonic()
        store.close()
        took = time.monotonic() - start
    assert took < 3, f"close() took {took:.1f} s with etcd out of reach"
    assert not any(lock.held for lock in locks)
    assert not [t for t in threading.enumerate() if t.name.startswith("pykv-etcd")]
    with pykv.open_store(etcd_url, prefix=prefix) as other:
        deadline = time.monotonic() + 10
        while other.list(""):  # the leases expire by themselves
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_a_thousand_watches_share_one_stream(store: pykv.Store) -> None:
    """Every watch of a store rides one gRPC stream and one thread (issue: 1,000 watches must
    not cost 1,000 threads); each still gets its own key's events, and closing frees them."""
    watches = check_many_watches_share_threads(store)
    with store.watch_tree("many") as tree:
        assert len(tree.get(timeout=10)) == 50
    store.put("many/0", b"after")  # closed watches are cancelled on the stream, not fed
    assert all(w.closed for w in watches)
