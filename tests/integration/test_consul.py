"""Consul-specific behaviour beyond the conformance suite, on the single server (consul_url)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import consul
import pytest

import pykv
from pykv import StoreURL
from pykv.testing import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.consul]


@pytest.fixture
def prefix(consul_url: str) -> Iterator[str]:
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    yield prefix
    with pykv.open_store(consul_url, prefix=prefix) as cleaner:
        cleaner.delete_tree("")


def _raw(url: str) -> Any:
    host = StoreURL.parse(url).hosts[0]
    return consul.Consul(host=host.host, port=host.port)


def _sessions_named(url: str, text: str) -> list[dict[str, Any]]:
    _, sessions = _raw(url).session.list()
    return [s for s in sessions if text in s.get("Name", "")]


def test_unreachable_agent_raises_unavailable_within_timeout() -> None:
    store = pykv.open_store("consul://127.0.0.1:1/x", timeout=1)
    start = time.monotonic()
    with pytest.raises(pykv.UnavailableError) as info:
        store.get("k")
    assert time.monotonic() - start < 1.5
    assert "127.0.0.1:1" in str(info.value)
    assert isinstance(info.value.__cause__, Exception)
    store.close()


def test_a_silent_agent_times_out(consul_url: str) -> None:
    with socket.socket() as server:  # accepts connections and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        with pykv.open_store(f"consul://127.0.0.1:{port}", timeout=0.5) as store:
            start = time.monotonic()
            with pytest.raises(pykv.OperationTimeoutError):
                store.put("k", b"v")
            assert time.monotonic() - start < 1.5


def test_failover_to_the_next_agent(consul_url: str, prefix: str) -> None:
    host = StoreURL.parse(consul_url).netloc
    with pykv.open_store(f"consul://127.0.0.1:1,{host}/{prefix}", timeout=2) as store:
        store.put("k", b"v")
        assert store.get("k").value == b"v"
        with store.watch("k") as watch:
            assert watch.get(timeout=5) is not None


def test_url_path_is_the_prefix_and_str_masks_the_token(consul_url: str, prefix: str) -> None:
    with pykv.open_store(f"{consul_url}/{prefix}?token=s3cret") as store:
        assert "s3cret" not in str(store)
        assert "s3cret" not in repr(store)
        store.put("a", b"1")
    with pykv.open_store(consul_url) as root:
        assert root.get(f"{prefix}/a").value == b"1"


def test_unknown_option_and_userinfo_are_configuration_errors(consul_url: str) -> None:
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(consul_url, colour="red")
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store("consul://user:pw@127.0.0.1:8500")


def test_consistent_reads(consul_url: str, prefix: str) -> None:
    with pykv.open_store(consul_url, prefix=prefix, consistent=True) as store:
        store.put("c", b"1")
        assert store.get("c").value == b"1"
        assert [p.key for p in store.list("")] == ["c"]


def test_keys_are_at_their_natural_path_for_other_clients(consul_url: str, prefix: str) -> None:
    raw = _raw(consul_url)
    with pykv.open_store(consul_url, prefix=prefix) as store:
        store.put("app/config", b"\x00bin")
        _, entry = raw.kv.get(f"{prefix}/app/config")
        assert entry["Value"] == b"\x00bin"
        assert entry["ModifyIndex"] == store.get("app/config").revision
        raw.kv.put(f"{prefix}/app/other", "from-raw")
        raw.kv.put(f"{prefix}/app/folder/", None)  # a UI folder marker is not a key
        assert [p.key for p in store.list("app")] == ["app/config", "app/other"]


def test_atomic_put_makes_a_ttl_key_persistent(consul_url: str, prefix: str) -> None:
    owner = pykv.open_store(consul_url, prefix=prefix)
    observer = pykv.open_store(consul_url, prefix=prefix)
    try:
        pair = owner.atomic_put("flip", b"1", None, ttl=2)
        owner.atomic_put("flip", b"2", pair)
        _, entry = _raw(consul_url).kv.get(f"{prefix}/flip")
        assert not entry.get("Session")
        owner.close()
        time.sleep(2 + owner.ttl_slack + 0.5)
        assert observer.get("flip").value == b"2"
    finally:
        owner.close()
        observer.close()


def test_plain_put_frees_a_key_another_store_holds(consul_url: str, prefix: str) -> None:
    owner = pykv.open_store(consul_url, prefix=prefix)
    other = pykv.open_store(consul_url, prefix=prefix)
    try:
        owner.put("shared", b"ephemeral", ttl=2)
        other.put("shared", b"persistent")
        owner.close()
        time.sleep(2 + owner.ttl_slack + 0.5)
        assert other.get("shared").value == b"persistent"
    finally:
        owner.close()
        other.close()


def test_rewriting_the_same_value_changes_the_revision(consul_url: str, prefix: str) -> None:
    with pykv.open_store(consul_url, prefix=prefix) as store:
        store.put("same", b"v")
        first = store.get("same")
        store.put("same", b"v")
        second = store.atomic_put("same", b"v", store.get("same"))
        assert first.revision < store.get("same").revision
        assert second == store.get("same")
        with pytest.raises(pykv.KeyModifiedError):
            store.atomic_put("same", b"v", first)


def test_ttl_put_takes_over_a_key_another_session_holds(consul_url: str, prefix: str) -> None:
    first = pykv.open_store(consul_url, prefix=prefix)
    second = pykv.open_store(consul_url, prefix=prefix)
    observer = pykv.open_store(consul_url, prefix=prefix)
    try:
        first.put("eph", b"1", ttl=2)
        second.put("eph", b"2", ttl=2)
        first.close()
        time.sleep(2 + first.ttl_slack + 0.5)
        assert observer.get("eph").value == b"2"  # now held by second's session
        second.close()
        wait_until(lambda: not observer.exists("eph"), 2 + second.ttl_slack + 1, "eph to go")
    finally:
        for store in (first, second, observer):
            store.close()


def test_one_session_per_ttl_value_and_close_destroys_them(consul_url: str, prefix: str) -> None:
    store = pykv.open_store(consul_url, prefix=prefix)
    name = f"[{prefix} "
    for i in range(5):
        store.put(f"t/{i}", b"x", ttl=2)
    store.put("t/long", b"x", ttl=30)
    sessions = _sessions_named(consul_url, name)
    ttl_sessions = sorted(s["TTL"] for s in sessions if "TTL keys" in s["Name"])
    assert ttl_sessions == ["1000ms", "15000ms"]  # half the TTL: Consul keeps a session 2 x its TTL
    for s in sessions:
        assert s["Behavior"] == "delete"
        assert s["LockDelay"] == 0
        assert not s.get("NodeChecks")
        assert not s.get("Checks")
    with store.lock("l", ttl=4):
        assert any("lock" in s["Name"] for s in _sessions_named(consul_url, name))
    store.close()
    assert _sessions_named(consul_url, name) == []
    with pykv.open_store(consul_url, prefix=prefix) as observer:
        assert not observer.exists("t/long")  # deleted at once, not after its TTL


def test_ttl_below_the_server_minimum_uses_the_minimum(consul_url: str, prefix: str) -> None:
    # The test server's session_ttl_min is 1 s: a 0.5 s TTL asks for a 0.25 s session.
    with pykv.open_store(consul_url, prefix=prefix) as store:
        store.put("short", b"x", ttl=0.5)
        time.sleep(2.5)
        assert store.get("short").value == b"x"
        sessions = _sessions_named(consul_url, f"[{prefix} ")
        assert [s["TTL"] for s in sessions] == ["1000ms"]


def test_lock_fencing_token_is_modify_index_and_two_locks_of_one_store_exclude(
    consul_url: str, prefix: str
) -> None:
    raw = _raw(consul_url)
    with pykv.open_store(consul_url, prefix=prefix) as store:
        first, second = store.lock("l", ttl=4), store.lock("l", ttl=4)
        assert first.acquire(timeout=5)
        _, entry = raw.kv.get(f"{prefix}/l")
        assert entry["ModifyIndex"] == first.token
        assert not second.acquire(timeout=0.3)
        first.release()
        assert second.acquire(timeout=5)
        assert second.token is not None
        assert first.token is not None
        assert second.token > first.token
        second.release()


def test_lock_lost_when_another_client_takes_the_key(consul_url: str, prefix: str) -> None:
    raw = _raw(consul_url)
    with pykv.open_store(consul_url, prefix=prefix) as store:
        lock = store.lock("taken", ttl=4)
        assert lock.acquire(timeout=5)
        _, entry = raw.kv.get(f"{prefix}/taken")
        raw.session.destroy(entry["Session"])  # as if Consul invalidated it
        assert lock.lost.wait(5)
        with pytest.raises(pykv.LockLostError):
            lock.release()


def test_lock_lost_when_another_session_takes_the_key(consul_url: str, prefix: str) -> None:
    holder = pykv.open_store(consul_url, prefix=prefix)
    thief = pykv.open_store(consul_url, prefix=prefix)
    try:
        lock = holder.lock("stolen", value=b"mine", ttl=4)
        assert lock.acquire(timeout=5)
        thief.put("stolen", b"theirs", ttl=4)  # delete + lock by the thief's TTL session
        assert lock.lost.wait(5)
        assert not lock.held
        with pytest.raises(pykv.LockLostError):
            lock.release()
        assert thief.get("stolen").value == b"theirs"  # cleaning up did not delete their key
    finally:
        holder.close()
        thief.close()


def test_dead_holder_is_free_without_lock_delay(consul_url: str, prefix: str) -> None:
    holder = pykv.open_store(consul_url, prefix=prefix)
    waiter = pykv.open_store(consul_url, prefix=prefix)
    try:
        lock = holder.lock("ld", ttl=2)
        assert lock.acquire(timeout=5)
        _, entry = _raw(consul_url).kv.get(f"{prefix}/ld")
        _raw(consul_url).session.destroy(entry["Session"])
        start = time.monotonic()
        other = waiter.lock("ld", ttl=2)
        assert other.acquire(timeout=5)
        assert time.monotonic() - start < 1.0  # Consul's default lock-delay would be 15 s
        other.release()
    finally:
        holder.close()
        waiter.close()


def test_watch_ignores_unrelated_writes_and_reports_deletion(consul_url: str, prefix: str) -> None:
    with pykv.open_store(consul_url, prefix=prefix) as store:
        store.put("w", b"1")
        with store.watch("w") as watch:
            assert watch.get(timeout=5) is not None
            for i in range(20):
                store.put(f"noise/{i}", b"x")
            with pytest.raises(TimeoutError):
                watch.get(timeout=0.5)
            store.delete("w")
            assert watch.get(timeout=5) is None


def test_close_stops_background_threads(consul_url: str, prefix: str) -> None:
    before = {t.ident for t in threading.enumerate()}
    store = pykv.open_store(consul_url, prefix=prefix)
    store.put("t", b"x", ttl=2)
    watches: list[pykv.Watch[Any]] = [store.watch("t"), store.watch_tree("")]
    lock = store.lock("l", ttl=2)
    assert lock.acquire(timeout=5)
    store.put("t", b"y")  # wakes the watches' blocking queries
    store.close()
    assert all(w.closed for w in watches)  # a consumer's iteration ends

    def ours() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t.ident not in before and t.name.startswith("pykv-consul")
        ]

    wait_until(lambda: not ours(), 7, "the store's threads to end")


class _CuttableProxy:
    """A TCP forwarder to the agent whose connections can all be cut at once (a partition)."""

    def __init__(self, target: tuple[str, int], delay: tuple[bytes, float] | None = None) -> None:
        self.target = target
        #: (text, seconds): a request containing the text is held that long before it is sent
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.cut_event = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut_event.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            self.sockets += [client, upstream]
            for a, b, delay in ((client, upstream, self.delay), (upstream, client, None)):
                threading.Thread(target=self._pump, args=(a, b, delay), daemon=True).start()

    @staticmethod
    def _pump(src: Any, dst: Any, delay: tuple[bytes, float] | None) -> None:
        try:
            while data := src.recv(65536):
                if delay is not None and delay[0] in data:
                    time.sleep(delay[1])
                dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        """Close every connection and refuse new ones."""
        self.cut_event.set()
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def test_a_ttl_session_being_created_does_not_hold_up_other_calls(
    consul_url: str, prefix: str
) -> None:
    """A TTL put whose session Consul is slow to create (here: held 3 s on the way) must not
    make the store's other calls wait: the store's mutex is not held across the request."""
    host = StoreURL.parse(consul_url).hosts[0]
    proxy = _CuttableProxy((host.host, host.port or 8500), delay=(b"/v1/session/create", 3.0))
    with pykv.open_store(f"consul://127.0.0.1:{proxy.port}", prefix=prefix, timeout=10) as store:
        store.put("warm", b"x")  # the connection pool is open
        ttl_put = threading.Thread(target=store.put, args=("t", b"v"), kwargs={"ttl": 5})
        ttl_put.start()
        time.sleep(0.5)  # the session request is on its way (held by the proxy)
        start = time.monotonic()
        store.put("plain", b"v")
        with store.watch("plain") as watch:
            assert watch.get(timeout=5) is not None
        took = time.monotonic() - start
        assert ttl_put.is_alive(), "the TTL put was not held up: the test proves nothing"
        assert took < 1.5, f"a plain put and a watch waited {took:.1f} s for a TTL session"
        ttl_put.join(15)
        assert store.get("t").value == b"v"
    proxy.cut()


def test_lost_is_set_before_another_client_can_acquire(consul_url: str, prefix: str) -> None:
    host = StoreURL.parse(consul_url).hosts[0]
    proxy = _CuttableProxy((host.host, host.port or 8500))
    holder = pykv.open_store(f"consul://127.0.0.1:{proxy.port}", prefix=prefix, timeout=1)
    other = pykv.open_store(consul_url, prefix=prefix)
    try:
        lock = holder.lock("cut", value=b"holder", ttl=3)
        assert lock.acquire(timeout=5)
        lost_at: list[float] = []

        def note_lost() -> None:
            if lock.lost.wait(20):
                lost_at.append(time.monotonic())

        threading.Thread(target=note_lost, daemon=True).start()
        cut_at = time.monotonic()
        proxy.cut()
        contender = other.lock("cut", value=b"other", ttl=3)
        assert contender.acquire(timeout=15), "the unreachable holder's lock never expired"
        acquired_at = time.monotonic()
        assert lost_at, "lost was not set although the holder could not renew"
        assert lost_at[0] < acquired_at
        assert acquired_at - cut_at <= 3 + other.ttl_slack + 1
        assert other.get("cut").value == b"other"
        contender.release()
    finally:
        holder.close()
        other.close()
