"""The etcd v2 store (``etcd2://``) on a real etcd 3.4 with ``--enable-v2``.

The conformance suite, the layout other v2 clients see, failover and unreachable endpoints,
a 1,000-write burst on a watched prefix, and watches that recover from "event index cleared".
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from _tls import stop
from _watches import check_many_watches_share_threads

import pykv
from pykv import KVPair, Store
from pykv.testing import AsyncTests, ConformanceTests, FuzzTests, RecipeTests, drain_until

pytestmark = [pytest.mark.integration, pytest.mark.etcd]


class TestEtcd2Conformance(ConformanceTests):
    @pytest.fixture
    def store_url(self, etcd2_url: str) -> str:
        return etcd2_url

    def force_compaction(self, store: Store) -> None:
        # the v2 event history keeps the last 1000 events: push the test's out of it
        for i in range(1001):
            store.put("churn", str(i))


class TestEtcd2RecipesAndAsync(RecipeTests, AsyncTests):
    @pytest.fixture
    def store_url(self, etcd2_url: str) -> str:
        return etcd2_url


class TestEtcd2Fuzz(FuzzTests):  # the fuzz suite, with fewer examples over the network
    fuzz_examples = 25
    store_url = TestEtcd2Conformance.store_url


def http_base(url: str) -> str:
    """http://host:port of the first endpoint of an etcd2:// URL."""
    return "http://" + url.split("://", 1)[1].split("/", 1)[0].split(",", 1)[0]


def raw(
    url: str, method: str, path: str, value: str | None = None, query: str = ""
) -> dict[str, Any]:
    """One v2 request as another client (etcdctl, confd) would make it."""
    data = None if value is None else ("value=" + quote(value, safe="")).encode()
    request = urllib.request.Request(
        http_base(url) + "/v2/keys" + quote(path, safe="/") + query, data=data, method=method
    )
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    return body


@pytest.fixture
def prefix() -> str:
    return f"pykv-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(etcd2_url: str, prefix: str) -> Iterator[Store]:
    with pykv.open_store(etcd2_url, prefix=prefix, timeout=5) as s:
        yield s
        s.delete_tree("")


# -- what other v2 clients see ---------------------------------------------------------------


def test_text_values_are_plain_nodes(store: Store, etcd2_url: str, prefix: str) -> None:
    store.put("app/config/mode", "fast ✓")
    node = raw(etcd2_url, "GET", f"/{prefix}/app/config/mode")["node"]
    assert node["value"] == "fast ✓"
    assert node["modifiedIndex"] == store.get("app/config/mode").revision
    raw(etcd2_url, "PUT", f"/{prefix}/app/config/other", "from etcdctl")
    assert store.get("app/config/other").value == b"from etcdctl"


def test_binary_and_reserved_values_are_base64(store: Store, etcd2_url: str, prefix: str) -> None:
    store.put("bin", b"\xff\x00")
    store.put("marker", b"pykv:b64:AAAA")
    assert raw(etcd2_url, "GET", f"/{prefix}/bin")["node"]["value"] == "pykv:b64:/wA="
    assert raw(etcd2_url, "GET", f"/{prefix}/marker")["node"]["value"].startswith("pykv:b64:")
    assert store.get("bin").value == b"\xff\x00"
    assert store.get("marker").value == b"pykv:b64:AAAA"


def test_key_with_children_keeps_value_in_leaf(store: Store, etcd2_url: str, prefix: str) -> None:
    store.put("p", b"parent")
    store.put("p/c", b"child")
    assert raw(etcd2_url, "GET", f"/{prefix}/p/%value")["node"]["value"] == "parent"
    assert raw(etcd2_url, "GET", f"/{prefix}/p/c")["node"]["value"] == "child"
    assert [(k.key, k.value) for k in store.list("")] == [("p", b"parent"), ("p/c", b"child")]
    store.put("p", b"parent-2")
    assert raw(etcd2_url, "GET", f"/{prefix}/p/%value")["node"]["value"] == "parent-2"
    store.delete("p")
    assert not store.exists("p")
    assert store.get("p/c").value == b"child"


def test_underscore_segments_are_listed(store: Store, etcd2_url: str, prefix: str) -> None:
    # etcd v2 hides nodes whose name starts with '_': pykv stores them as %5F...
    store.put("_hidden/_x", b"1")
    store.put("%pct", b"2")
    assert [p.key for p in store.list("")] == ["%pct", "_hidden/_x"]
    assert raw(etcd2_url, "GET", f"/{prefix}/%5Fhidden/%5Fx")["node"]["value"] == "1"
    assert raw(etcd2_url, "GET", f"/{prefix}/%25pct")["node"]["value"] == "2"


def test_lock_bookkeeping_is_hidden_from_v2_listings(
    store: Store, etcd2_url: str, prefix: str
) -> None:
    with store.lock("job", value=b"me", ttl=5):
        top = raw(etcd2_url, "GET", "/", query="?recursive=true")["node"].get("nodes", [])
        assert not any(n["key"].startswith("/_pykv") for n in top)
        listing = raw(etcd2_url, "GET", f"/{prefix}", query="?recursive=true")["node"]["nodes"]
        assert [(n["key"], n["value"]) for n in listing] == [(f"/{prefix}/job", "me")]


# -- endpoints and errors --------------------------------------------------------------------


def test_unreachable_endpoint_raises_unavailable_within_timeout() -> None:
    with pykv.open_store("etcd2://127.0.0.1:1,127.0.0.1:2/x", timeout=1.5) as dead:
        start = time.monotonic()
        with pytest.raises(pykv.UnavailableError) as info:
            dead.get("k")
        assert time.monotonic() - start < 1.5 + 1.0
        assert "127.0.0.1:1" in str(info.value) or "127.0.0.1:2" in str(info.value)
        with pytest.raises(pykv.UnavailableError):
            dead.put("k", b"v")


def test_fails_over_from_a_dead_endpoint(etcd2_url: str, prefix: str) -> None:
    live = etcd2_url.split("://", 1)[1]
    with pykv.open_store(f"etcd2://127.0.0.1:1,{live}", prefix=prefix, timeout=5) as s:
        s.put("k", b"v")
        assert s.get("k").value == b"v"
        s.delete_tree("")


def test_options_are_typed_and_secrets_masked(etcd2_url: str) -> None:
    url = etcd2_url.replace("etcd2://", "etcd2://user:s3cret@") + "/p?timeout=2"
    with pykv.open_store(url) as s:
        assert "s3cret" not in str(s)
        assert "s3cret" not in repr(s)
        assert s.timeout == 2.0
        assert s.prefix == "p"
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(etcd2_url + "?bogus=1")


# -- watches under load and after the event history moved on ---------------------------------


def test_burst_of_1000_writes_ends_in_final_state(store: Store) -> None:
    with store.watch_tree("burst") as tree, store.watch("burst/k7") as key:
        assert tree.get(timeout=10) == []
        assert key.get(timeout=10) is None
        for i in range(1000):
            store.put(f"burst/k{i % 20}", str(i))
        expected = {f"burst/k{j}": str(980 + j).encode() for j in range(20)}
        final = drain_until(tree, lambda s: {p.key: p.value for p in s} == expected, 60)
        assert final == store.list("burst")
        drain_until(key, lambda e: e is not None and e.value == b"987", 60)


class Gate:
    """Holds a watch thread before its next long poll, and counts "index cleared" answers."""

    def __init__(self, store: Store) -> None:
        self.open = threading.Event()
        self.open.set()
        self.waiting = threading.Event()
        self.cleared = 0
        real = store._wait  # type: ignore[attr-defined]

        def gated(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread().name.startswith("pykv-etcd2 watch"):
                self.waiting.set()
                self.open.wait(60)
            try:
                return real(*args, **kwargs)
            except Exception as exc:
                if type(exc).__name__ == "_IndexCleared":
                    self.cleared += 1
                raise

        store._wait = gated  # type: ignore[attr-defined]


def test_watch_recovers_from_event_index_cleared(store: Store, etcd2_url: str) -> None:
    gate = Gate(store)
    with (
        pykv.open_store(etcd2_url, prefix=store.prefix, timeout=5) as writer,
        store.watch("k") as watch,
        store.watch_tree("t") as tree,
    ):
        assert watch.get(timeout=10) is None
        assert tree.get(timeout=10) == []
        writer.put("k", b"first")
        drain_until(watch, lambda e: e is not None and e.value == b"first", 10)
        # hold both watch threads, then push the key's events out of the v2 history
        gate.open.clear()
        gate.waiting.clear()
        writer.put("t/a", b"1")
        assert gate.waiting.wait(10)
        writer.put("k", b"missed")
        for i in range(1100):
            writer.put("filler", str(i))
        writer.put("k", b"final")
        writer.put("t/b", b"2")
        gate.open.set()
        event = drain_until(watch, lambda e: e is not None and e.value == b"final", 20)
        assert event == writer.get("k")
        drain_until(
            tree, lambda s: [(p.key, p.value) for p in s] == [("t/a", b"1"), ("t/b", b"2")], 20
        )
    # one poll serves every watch of a store: it saw "event index cleared" once for both
    assert gate.cleared >= 1, "the watches never saw 'event index cleared'"


def test_idle_watch_outlives_its_poll_timeout(etcd2_url: str, prefix: str) -> None:
    with pykv.open_store(etcd2_url, prefix=prefix, timeout=1) as s:
        with s.watch("idle") as watch:
            assert watch.get(timeout=5) is None
            with pytest.raises(TimeoutError):
                watch.get(timeout=2.5)  # two polls timed out and were re-issued
            s.put("idle", b"now")
            pair = watch.get(timeout=5)
            assert isinstance(pair, KVPair)
            assert pair.value == b"now"
        s.delete_tree("")


def test_cas_on_a_refreshed_ttl_key(store: Store, etcd2_url: str, prefix: str) -> None:
    pair = store.atomic_put("eph", b"1", None, ttl=1)
    time.sleep(1.5)  # refreshed (each refresh raises modifiedIndex) but not rewritten
    assert raw(etcd2_url, "GET", f"/{prefix}/eph")["node"]["modifiedIndex"] > pair.revision
    new = store.atomic_put("eph", b"2", pair, ttl=1)  # the owner knows its own refreshes
    assert new.value == b"2"
    with pykv.open_store(etcd2_url, prefix=prefix, timeout=5) as other:
        seen = other.get("eph")
        time.sleep(1.2)
        assert raw(etcd2_url, "GET", f"/{prefix}/eph")["node"]["modifiedIndex"] > seen.revision
        # another client: etcd's event history shows that only refreshes happened
        assert other.atomic_put("eph", b"3", seen).value == b"3"
        assert "ttl" not in raw(etcd2_url, "GET", f"/{prefix}/eph")["node"]
        latest = other.get("eph")
        raw(etcd2_url, "PUT", f"/{prefix}/eph", "someone else")
        with pytest.raises(pykv.KeyModifiedError):
            other.atomic_put("eph", b"4", latest)
        with pytest.raises(pykv.KeyModifiedError):
            other.atomic_delete("eph", latest)


# -- v2 auth: etcd-auth has v3 auth only (v2 auth is separate and needs the v2 API), so these
# tests start their own etcd with --enable-v2 and turn v2 auth on through /v2/auth.

V2_AUTH_PORT = 23479


def _v2_auth_call(base: str, method: str, path: str, body: object, auth: str | None) -> None:
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode() if body else None, method=method
    )
    request.add_header("Content-Type", "application/json")
    if auth:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=5) as resp:
        resp.read()


@pytest.fixture(scope="module")
def etcd2_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An etcd 3.4 with the v2 API and v2 auth on (root:pykv-root-pass, guest revoked)."""
    import subprocess

    data = tmp_path_factory.mktemp("etcd2-auth")
    base = f"http://127.0.0.1:{V2_AUTH_PORT}"
    peer = f"http://127.0.0.1:{V2_AUTH_PORT + 1}"
    log = open(data / "etcd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            "/usr/bin/etcd",
            "--name=v2auth",
            f"--data-dir={data / 'data'}",
            "--enable-v2=true",
            f"--listen-client-urls={base}",
            f"--advertise-client-urls={base}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=v2auth={peer}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/v2/keys/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError((data / "etcd.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        _v2_auth_call(
            base, "PUT", "/v2/auth/users/root", {"user": "root", "password": "pykv-root-pass"}, None
        )
        _v2_auth_call(base, "PUT", "/v2/auth/enable", None, None)
        revoke = {"role": "guest", "revoke": {"kv": {"read": ["/*"], "write": ["/*"]}}}
        _v2_auth_call(base, "PUT", "/v2/auth/roles/guest", revoke, "root:pykv-root-pass")
        yield f"etcd2://127.0.0.1:{V2_AUTH_PORT}"
    finally:
        stop(proc)
        log.close()


def test_wrong_credentials_raise_permission_denied(etcd2_auth: str) -> None:
    wrong = etcd2_auth.replace("etcd2://", "etcd2://root:wrong@") + "/auth"
    with pykv.open_store(wrong, timeout=3) as store:
        with pytest.raises(pykv.PermissionDeniedError) as info:
            store.put("k", b"v")
        assert "wrong" not in str(info.value)
        with pytest.raises(pykv.PermissionDeniedError):
            store.get("k")
        with pytest.raises(pykv.PermissionDeniedError):
            store.watch("k")
    with (
        pykv.open_store(etcd2_auth + "/auth", timeout=3) as anonymous,
        pytest.raises(pykv.PermissionDeniedError),
    ):
        anonymous.get("k")


def test_right_credentials_work(etcd2_auth: str) -> None:
    with pykv.open_store(
        etcd2_auth + "/auth", username="root", password="pykv-root-pass", timeout=3
    ) as store:
        store.put("k", b"v")
        assert store.get("k").value == b"v"
        with store.watch("k") as watch:
            assert watch.get(timeout=5) == store.get("k")
            store.put("k", b"w")
            drain_until(watch, lambda e: e is not None and e.value == b"w", 10)
        with store.lock("l", ttl=2) as lock:
            assert lock.held
        store.delete_tree("")


def test_keys_below_a_plain_value(store: Store) -> None:
    store.put("leaf", b"1")
    assert not store.exists("leaf/x")
    with pytest.raises(pykv.KeyNotFoundError):
        store.get("leaf/x")
    stale = KVPair("leaf/x", b"", 1)
    with pytest.raises(pykv.KeyNotFoundError):
        store.atomic_put("leaf/x", b"2", stale)
    with pytest.raises(pykv.KeyNotFoundError):
        store.atomic_delete("leaf/x", stale)
    store.delete("leaf/x")
    with store.watch("leaf/x") as watch:
        assert watch.get(timeout=10) is None
        store.put("leaf/x", b"child")  # moves leaf's value into leaf/%value
        drain_until(watch, lambda e: e is not None and e.value == b"child", 10)
    assert store.get("leaf").value == b"1"
    assert store.atomic_put("leaf/y", b"3", None).value == b"3"
    assert [p.key for p in store.list("leaf")] == ["leaf/x", "leaf/y"]


def test_a_thousand_watches_share_one_poll(store: Store) -> None:
    """Every watch of a store rides one long poll and one thread (1,000 watches must not cost
    1,000 threads or connections); each still gets its own key's events."""
    check_many_watches_share_threads(store)
