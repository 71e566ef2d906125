"""Consul watches on shared blocking queries (pykv_consul._watch), on the single server and on
the ACL server: many watches cost a few threads, and sharing never costs an event."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import urllib3
from _harness import ConsulACL
from _watches import check_many_watches_share_threads
from pykv_consul._watch import SOLO_LIMIT

import pykv
from pykv import KVPair, StoreURL, Watch
from pykv.testing import drain_until, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.consul]


@pytest.fixture
def store(consul_url: str) -> Iterator[pykv.Store]:
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    with pykv.open_store(consul_url, prefix=prefix) as store:
        yield store
        store.delete_tree("")


def _consul_threads(store: pykv.Store) -> int:
    """The threads of ``store``'s pollers (named after the paths they watch, which start with
    the store's own prefix): other stores' threads winding down do not count."""
    return sum(
        1
        for t in threading.enumerate()
        if t.name.startswith("pykv-consul") and f"{store.prefix}/" in t.name
    )


def _latest(watch: Watch[Any], timeout: float = 0.3) -> Any:
    """Every event queued now, the last one (the watch's current view)."""
    event: Any = None
    while True:
        try:
            event = watch.get(timeout=timeout)
        except TimeoutError:
            return event


def test_a_thousand_watches_over_fifty_keys_share_a_few_threads(store: pykv.Store) -> None:
    check_many_watches_share_threads(store)


def test_a_thousand_watches_of_one_key_cost_one_thread(store: pykv.Store) -> None:
    before = _consul_threads(store)
    watches = [store.watch("one") for _ in range(1000)]
    try:
        assert _consul_threads(store) - before == 1
        store.put("one", b"v")
        for watch in watches:
            pair = drain_until(watch, lambda e: e is not None, 10)
            assert pair is not None
            assert pair.value == b"v"
    finally:
        for watch in watches:
            watch.close()
    wait_until(lambda: _consul_threads(store) == before, 10, "the poller to end")


def test_keys_beyond_the_solo_limit_share_one_query_and_keep_their_own_events(
    store: pykv.Store,
) -> None:
    solo = [store.watch(f"solo/{i}") for i in range(SOLO_LIMIT)]
    # Overflow keys far apart: their common prefix is the store's whole prefix.
    names = ["a/x", "b/y", "c/z/deep", "solo-not/1"]
    store.put("b/y", b"before")
    watches = {name: store.watch(name) for name in names}
    try:
        assert watches["b/y"].get(timeout=5) == store.get("b/y")
        for name in names:
            if name != "b/y":
                assert watches[name].get(timeout=5) is None
        assert _consul_threads(store) <= SOLO_LIMIT + 1
        for round_ in range(3):
            for name in names:
                store.put(name, f"{name} {round_}")
            for name in names:
                pair = drain_until(watches[name], partial(_is, value=f"{name} {round_}"), 10)
                assert pair is not None
        for i in range(20):  # writes to other keys below the prefix wake the query
            store.put(f"noise/{i}", b"x")
        for name in names:
            with pytest.raises(TimeoutError):
                watches[name].get(timeout=0.3)
        store.delete("c/z/deep")
        assert drain_until(watches["c/z/deep"], lambda e: e is None, 10) is None
        assert _latest(watches["a/x"]) is None  # nothing new for the others
        # A key that leaves narrows the query; the others go on.
        watches.pop("solo-not/1").close()
        store.put("a/x", b"after")
        assert drain_until(watches["a/x"], lambda e: _is(e, "after"), 10) is not None
    finally:
        for watch in [*solo, *watches.values()]:
            watch.close()


def _is(event: KVPair | None, value: str) -> bool:
    return event is not None and event.value == value.encode()


def test_a_watch_joining_a_busy_query_never_goes_backwards(store: pykv.Store) -> None:
    """Watches open while a writer changes their key and the shared query is in flight: the
    first event is the state at the open, later ones only newer, the last the final value."""
    store.put("busy", "0")
    keep = store.watch("busy")  # keeps the poller (and its query) alive throughout
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        while not stop.is_set():
            written[0] += 1
            store.put("busy", str(written[0]))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    opened: list[Watch[KVPair | None]] = []
    try:
        for _ in range(150):
            opened.append(store.watch("busy"))
    finally:
        stop.set()
        thread.join(10)
    final = store.get("busy")
    try:
        for watch in opened:
            seen: list[int] = []
            while True:
                try:
                    pair = watch.get(timeout=0.05 if seen and seen[-1] == final.revision else 5)
                except TimeoutError:
                    break
                assert pair is not None
                seen.append(pair.revision)
            assert seen == sorted(seen), f"{watch} went backwards: {seen}"
            assert seen[-1] == final.revision
    finally:
        for watch in [keep, *opened]:
            watch.close()


def test_tree_watches_of_one_prefix_share_a_thread(store: pykv.Store) -> None:
    before = _consul_threads(store)
    trees = [store.watch_tree("t") for _ in range(50)]
    other = store.watch_tree("u")
    try:
        assert _consul_threads(store) - before == 2
        for tree in [*trees, other]:
            assert tree.get(timeout=5) == []
        store.put("t/1", b"1")
        store.put("u/1", b"2")
        for tree in trees:
            snapshot = drain_until(tree, lambda s: len(s) == 1, 10)
            assert [(p.key, p.value) for p in snapshot] == [("t/1", b"1")]
        snapshot = drain_until(other, lambda s: len(s) == 1, 10)
        assert [(p.key, p.value) for p in snapshot] == [("u/1", b"2")]
    finally:
        for tree in [*trees, other]:
            tree.close()


# -- a token that may read each watched key but not list their common prefix ---------------


def _acl_request(base: str, token: str, method: str, path: str, body: Any) -> Any:
    reply = urllib3.request(
        method,
        base + path,
        body=json.dumps(body).encode(),
        headers={"X-Consul-Token": token},
        timeout=10,
    )
    assert reply.status == 200, reply.data
    return reply.json()


def test_keys_the_token_may_not_list_together_get_a_query_each(consul_acl: ConsulACL) -> None:
    url, root = consul_acl.url, consul_acl.token
    host = StoreURL.parse(url).hosts[0]
    base = f"http://{host.host}:{host.port}"
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    keys = [f"k{i}" for i in range(SOLO_LIMIT + 3)]
    name = f"pykv-watch-{uuid.uuid4().hex[:8]}"
    rules = "\n".join(f'key "{prefix}/{key}" {{ policy = "read" }}' for key in keys)
    _acl_request(base, root, "PUT", "/v1/acl/policy", {"Name": name, "Rules": rules})
    token = _acl_request(base, root, "PUT", "/v1/acl/token", {"Policies": [{"Name": name}]})
    with (
        pykv.open_store(url, token=root, prefix=prefix) as writer,
        pykv.open_store(url, token=token["SecretID"], prefix=prefix) as reader,
    ):
        with pytest.raises(pykv.PermissionDeniedError):
            reader.list("")  # the server enforces list permissions (enable_key_list_policy)
        watches = [reader.watch(key) for key in keys]
        try:
            for watch in watches:
                assert watch.get(timeout=5) is None
            for key in keys:
                writer.put(key, key)
            for key, watch in zip(keys, watches, strict=True):
                assert drain_until(watch, partial(_is, value=key), 15) is not None
                assert watch.error is None
        finally:
            for watch in watches:
                watch.close()
            writer.delete_tree("")
        _acl_request(base, root, "DELETE", f"/v1/acl/token/{token['AccessorID']}", None)
