"""The conformance test classes. See :mod:`pykv.testing`."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

import pykv
from pykv import (
    Capability,
    InvalidKeyError,
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
    KVPair,
    LockError,
    Store,
    TreeChange,
    Watch,
)

from ._support import ChildProcess, drain_until, wait_until

__all__ = [
    "AtomicTests",
    "BaseStoreTests",
    "ConformanceTests",
    "KeyValueTests",
    "ListTests",
    "LockTests",
    "MultiClientTests",
    "ResumeWatchTests",
    "TTLTests",
    "WatchTests",
    "WatchTreeTests",
]

OpenStore = Callable[..., Store]

INVALID_KEYS = [
    "",
    "/",
    "a//b",
    "a/./b",
    "a/../b",
    "..",
    "a/\x00",
    "a\nb",
    "\x7f",
    "k" * 1025,
    "é" * 513,
]


class BaseStoreTests:
    """Fixtures shared by every conformance class.

    Subclasses provide the ``store_url`` fixture; they may override ``store_options`` (extra
    keyword options for ``open_store``) and the class attributes below.
    """

    #: TTL (seconds) used for ephemeral keys and locks in the tests.
    ttl: ClassVar[float] = 2.0
    #: Seconds added to the backend's declared ``ttl_slack`` when waiting for expiry.
    extra_slack: ClassVar[float] = 2.0
    #: Seconds within which a change must reach a watch.
    event_timeout: ClassVar[float] = 10.0

    @pytest.fixture
    def store_options(self) -> dict[str, Any]:
        return {}

    @pytest.fixture
    def prefix(self) -> str:
        return f"pykv-test/{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def open_store(
        self, store_url: str, prefix: str, store_options: dict[str, Any]
    ) -> Iterator[OpenStore]:
        """Opens stores on the test's prefix; all are closed and the prefix wiped afterwards."""
        opened: list[Store] = []

        def opener(**overrides: Any) -> Store:
            store = pykv.open_store(store_url, **{"prefix": prefix, **store_options, **overrides})
            opened.append(store)
            return store

        yield opener
        for store in opened:
            store.close()
        with pykv.open_store(store_url, **{**store_options, "prefix": prefix}) as cleaner:
            cleaner.delete_tree("")

    @pytest.fixture
    def store(self, open_store: OpenStore) -> Store:
        return open_store()

    @staticmethod
    def require(store: Store, *capabilities: Capability) -> None:
        missing = [c for c in capabilities if c not in store.capabilities]
        if missing:
            pytest.skip(f"{type(store).__name__} does not declare {', '.join(map(str, missing))}")

    def expiry_timeout(self, store: Store) -> float:
        """How long a TTL key or a dead holder's lock may live after its owner is gone."""
        return self.ttl + store.ttl_slack + self.extra_slack


class KeyValueTests(BaseStoreTests):
    """get, put, delete, exists: the key and value rules."""

    def test_put_get_bytes_and_str(self, store: Store) -> None:
        store.put("k/bytes", b"\x00\xffbinary")
        store.put("k/text", "grüße ✓")
        store.put("k/empty", b"")
        assert store.get("k/bytes").value == b"\x00\xffbinary"
        assert store.get("k/text").value == "grüße ✓".encode()
        assert store.get("k/empty").value == b""

    def test_every_byte_value_round_trips(self, store: Store) -> None:
        value = bytes(range(256)) * 4
        store.put("bin", value)
        assert store.get("bin").value == value
        store.put("invalid-utf8", b"\xc3\x28\xa0\xa1")
        assert store.get("invalid-utf8").value == b"\xc3\x28\xa0\xa1"

    def test_large_value(self, store: Store) -> None:
        value = bytes(range(256)) * 256  # 64 KiB
        store.put("large", value)
        assert store.get("large").value == value

    def test_get_returns_kvpair(self, store: Store) -> None:
        store.put("a/b", b"v")
        pair = store.get("a/b")
        assert isinstance(pair, KVPair)
        assert pair.key == "a/b"
        assert pair.value == b"v"
        assert isinstance(pair.revision, int)

    def test_missing_key_raises(self, store: Store) -> None:
        with pytest.raises(KeyNotFoundError):
            store.get("does/not/exist")

    def test_leading_and_trailing_slashes_are_ignored(self, store: Store) -> None:
        store.put("/s/k/", b"1")
        assert store.get("s/k").value == b"1"
        assert store.get("/s/k").key == "s/k"
        assert store.exists("s/k/")
        store.delete("/s/k")
        assert not store.exists("s/k")

    def test_unicode_keys(self, store: Store) -> None:
        store.put("ключ/値/ü", b"x")
        assert store.get("ключ/値/ü").value == b"x"
        assert [p.key for p in store.list("ключ")] == ["ключ/値/ü"]

    @pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
    def test_invalid_keys_raise_before_io(self, store: Store, key: str) -> None:
        for call in (
            lambda: store.get(key),
            lambda: store.put(key, b"x"),
            lambda: store.delete(key),
            lambda: store.exists(key),
            lambda: store.atomic_put(key, b"x", None),
            lambda: store.watch(key),
            lambda: store.lock(key),
        ):
            with pytest.raises(InvalidKeyError):
                call()

    def test_invalid_prefixes_raise(self, store: Store) -> None:
        for prefix in ("a//b", "..", "a/./b"):
            with pytest.raises(InvalidKeyError):
                store.list(prefix)
            with pytest.raises(InvalidKeyError):
                store.delete_tree(prefix)
            with pytest.raises(InvalidKeyError):
                store.watch_tree(prefix)

    def test_put_overwrites_and_revision_grows(self, store: Store) -> None:
        store.put("r", b"1")
        first = store.get("r")
        store.put("r", b"2")
        second = store.get("r")
        store.put("r", b"2")
        third = store.get("r")
        assert second.value == b"2"
        assert first.revision < second.revision < third.revision

    def test_revisions_grow_across_keys(self, store: Store) -> None:
        store.put("x", b"1")
        store.put("y", b"1")
        assert store.get("x").revision < store.get("y").revision

    def test_delete(self, store: Store) -> None:
        store.put("d", b"1")
        store.delete("d")
        with pytest.raises(KeyNotFoundError):
            store.get("d")
        store.delete("d")  # a missing key: no-op
        store.delete("never/existed")

    def test_exists(self, store: Store) -> None:
        assert store.exists("e") is False
        store.put("e", b"")
        assert store.exists("e") is True

    def test_key_with_value_and_children(self, store: Store) -> None:
        store.put("parent", b"p")
        store.put("parent/child", b"c")
        store.put("parent/child/grandchild", b"g")
        assert store.get("parent").value == b"p"
        assert store.get("parent/child").value == b"c"
        store.delete("parent/child")
        assert store.get("parent").value == b"p"
        assert store.get("parent/child/grandchild").value == b"g"
        assert not store.exists("parent/child")

    def test_prefix_scopes_every_key(self, open_store: OpenStore, prefix: str) -> None:
        outer = open_store(prefix=prefix)
        inner = open_store(prefix=prefix + "/inner")
        inner.put("k", b"in")
        assert outer.get("inner/k").value == b"in"
        assert inner.get("k").key == "k"
        outer.put("k", b"out")
        assert inner.get("k").value == b"in"
        assert [p.key for p in inner.list("")] == ["k"]

    def test_str_masks_nothing_secret_and_names_scheme(self, store: Store) -> None:
        assert str(store).startswith(store.url.scheme)
        assert "***" not in str(store) or store.url.password or store.url.query

    def test_context_manager_and_idempotent_close(self, open_store: OpenStore) -> None:
        with open_store() as s:
            s.put("cm", b"1")
        assert s.closed
        s.close()
        with pytest.raises(pykv.PyKVError):
            s.get("cm")


class ListTests(BaseStoreTests):
    """list and delete_tree."""

    def test_list_is_recursive_sorted_and_excludes_prefix(self, store: Store) -> None:
        for key in ("t/b", "t/a", "t/c/d", "t/c", "t", "tX", "t-sibling/x", "u"):
            store.put(key, key.encode())
        pairs = store.list("t")
        assert [p.key for p in pairs] == ["t/a", "t/b", "t/c", "t/c/d"]
        assert [p.value for p in pairs] == [b"t/a", b"t/b", b"t/c", b"t/c/d"]
        assert all(isinstance(p.revision, int) for p in pairs)
        assert [p.key for p in store.list("/t/")] == ["t/a", "t/b", "t/c", "t/c/d"]

    def test_list_whole_store(self, store: Store) -> None:
        store.put("b", b"")
        store.put("a/x", b"")
        assert [p.key for p in store.list("")] == ["a/x", "b"]
        assert [p.key for p in store.list()] == ["a/x", "b"]

    def test_list_missing_prefix_raises(self, store: Store) -> None:
        with pytest.raises(KeyNotFoundError):
            store.list("nothing/here")

    def test_list_of_a_leaf_is_empty(self, store: Store) -> None:
        store.put("leaf", b"1")
        assert store.list("leaf") == []

    def test_list_of_empty_store_is_empty(self, store: Store) -> None:
        assert store.list("") == []

    def test_delete_tree(self, store: Store) -> None:
        for key in ("dt", "dt/a", "dt/b/c", "dtX", "dt-x/y", "other"):
            store.put(key, b"1")
        store.delete_tree("dt")
        assert not store.exists("dt")
        assert not store.exists("dt/a")
        assert not store.exists("dt/b/c")
        assert store.exists("dtX")
        assert store.exists("dt-x/y")
        assert store.exists("other")
        store.delete_tree("dt")  # nothing left: no-op

    def test_delete_tree_of_whole_store(self, open_store: OpenStore, prefix: str) -> None:
        store = open_store()
        neighbour = open_store(prefix=prefix + "X")
        neighbour.put("keep", b"1")
        store.put("a", b"1")
        store.put("b/c", b"1")
        store.delete_tree("")
        assert store.list("") == []
        assert neighbour.get("keep").value == b"1"
        neighbour.delete("keep")

    def test_whole_store_spares_the_key_its_prefix_names(
        self, open_store: OpenStore, prefix: str
    ) -> None:
        # The key "p" is outside the store on prefix "p": list(""), watch_tree("") and
        # delete_tree("") there never show or touch it.
        outer = open_store()
        inner = open_store(prefix=prefix + "/in")
        outer.put("in", b"outside")
        inner.delete_tree("")
        assert outer.get("in").value == b"outside"
        inner.put("k", b"1")
        assert [p.key for p in inner.list("")] == ["k"]
        if Capability.WATCH_TREE in inner.capabilities:
            with inner.watch_tree("") as watch:
                assert [p.key for p in watch.get(timeout=self.event_timeout)] == ["k"]
                outer.put("in", b"changed")
                inner.put("k2", b"2")
                last = drain_until(watch, lambda s: len(s) == 2, self.event_timeout)
                assert [p.key for p in last] == ["k", "k2"]
        inner.delete_tree("")
        assert inner.list("") == []
        assert outer.exists("in")
        assert [p.key for p in outer.list("")] == ["in"]


class AtomicTests(BaseStoreTests):
    """atomic_put and atomic_delete: compare-and-swap on revisions."""

    def test_create_only(self, store: Store) -> None:
        self.require(store, Capability.ATOMIC)
        pair = store.atomic_put("c", b"1", None)
        assert pair == store.get("c")
        assert pair.key == "c"
        assert pair.value == b"1"
        with pytest.raises(KeyExistsError):
            store.atomic_put("c", b"2", None)
        assert store.get("c").value == b"1"

    def test_swap(self, store: Store) -> None:
        self.require(store, Capability.ATOMIC)
        store.put("s", b"1")
        old = store.get("s")
        new = store.atomic_put("/s/", b"2", old)
        assert new.value == b"2"
        assert new.revision > old.revision
        assert store.get("s") == new
        with pytest.raises(KeyModifiedError):
            store.atomic_put("s", b"3", old)
        assert store.get("s").value == b"2"

    def test_swap_of_deleted_key_raises_not_found(self, store: Store) -> None:
        self.require(store, Capability.ATOMIC)
        store.put("g", b"1")
        old = store.get("g")
        store.delete("g")
        with pytest.raises(KeyNotFoundError):
            store.atomic_put("g", b"2", old)
        assert not store.exists("g")

    def test_atomic_delete(self, store: Store) -> None:
        self.require(store, Capability.ATOMIC)
        store.put("ad", b"1")
        old = store.get("ad")
        store.put("ad", b"2")
        with pytest.raises(KeyModifiedError):
            store.atomic_delete("ad", old)
        assert store.exists("ad")
        store.atomic_delete("ad", store.get("ad"))
        assert not store.exists("ad")
        with pytest.raises(KeyNotFoundError):
            store.atomic_delete("ad", old)

    def test_cas_race_loses_no_increment(self, open_store: OpenStore) -> None:
        clients = [open_store() for _ in range(4)]
        self.require(clients[0], Capability.ATOMIC)
        rounds = 15
        clients[0].atomic_put("counter", b"0", None)
        errors: list[BaseException] = []
        conflicts = [0]

        def worker(store: Store) -> None:
            try:
                for _ in range(rounds):
                    while True:
                        pair = store.get("counter")
                        try:
                            store.atomic_put("counter", str(int(pair.value) + 1), pair)
                            break
                        except KeyModifiedError:
                            conflicts[0] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert int(clients[0].get("counter").value) == 4 * rounds


class WatchTests(BaseStoreTests):
    """watch(key): first the current state, then every change, deletions as None."""

    def test_first_event_is_current_state(self, store: Store) -> None:
        self.require(store, Capability.WATCH)
        store.put("w", b"now")
        with store.watch("w") as watch:
            first = watch.get(timeout=self.event_timeout)
            assert first is not None
            assert (first.key, first.value) == ("w", b"now")
            assert first == store.get("w")

    def test_watching_a_missing_key_starts_with_none(self, store: Store) -> None:
        self.require(store, Capability.WATCH)
        with store.watch("later") as watch:
            assert watch.get(timeout=self.event_timeout) is None
            store.put("later", b"here")
            event = watch.get(timeout=self.event_timeout)
            assert event is not None
            assert event.value == b"here"

    def test_changes_and_deletion(self, store: Store) -> None:
        self.require(store, Capability.WATCH)
        store.put("wc", b"0")
        with store.watch("wc") as watch:
            assert watch.get(timeout=self.event_timeout) is not None
            store.put("wc", b"1")
            event = drain_until(
                watch, lambda e: e is not None and e.value == b"1", self.event_timeout
            )
            assert event is not None
            assert event.revision == store.get("wc").revision
            store.delete("wc")
            assert drain_until(watch, lambda e: e is None, self.event_timeout) is None
            store.put("wc", b"again")
            drain_until(watch, lambda e: e is not None and e.value == b"again", self.event_timeout)

    def test_delete_tree_reaches_key_watch(self, store: Store) -> None:
        self.require(store, Capability.WATCH)
        store.put("dir/k", b"1")
        with store.watch("dir/k") as watch:
            watch.get(timeout=self.event_timeout)
            store.delete_tree("dir")
            assert drain_until(watch, lambda e: e is None, self.event_timeout) is None

    def test_unrelated_writes_make_no_events(self, store: Store) -> None:
        self.require(store, Capability.WATCH)
        store.put("quiet", b"1")
        with store.watch("quiet") as watch:
            watch.get(timeout=self.event_timeout)
            for key in ("quieter", "quiet/child", "qu", "other"):
                store.put(key, b"x")
            with pytest.raises(TimeoutError):
                watch.get(timeout=1.0)

    def test_rapid_changes_end_in_last_state(self, store: Store) -> None:
        self.require(store, Capability.WATCH)
        with store.watch("rapid") as watch:
            watch.get(timeout=self.event_timeout)
            for i in range(100):
                store.put("rapid", str(i))
            drain_until(watch, lambda e: e is not None and e.value == b"99", self.event_timeout)

    def test_writes_of_other_clients_are_seen(self, open_store: OpenStore) -> None:
        watcher, writer = open_store(), open_store()
        self.require(watcher, Capability.WATCH)
        with watcher.watch("shared") as watch:
            assert watch.get(timeout=self.event_timeout) is None
            writer.put("shared", b"from-writer")
            drain_until(
                watch, lambda e: e is not None and e.value == b"from-writer", self.event_timeout
            )

    def test_close_ends_iteration(self, store: Store) -> None:
        self.require(store, Capability.WATCH)
        watch = store.watch("it")
        seen: list[KVPair | None] = []
        done = threading.Event()

        def consume() -> None:
            seen.extend(watch)  # ends when the watch is closed
            done.set()

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        wait_until(lambda: len(seen) >= 1, self.event_timeout, "the first event")
        watch.close()
        assert done.wait(self.event_timeout), "iteration did not end after close()"
        with pytest.raises(pykv.WatchClosedError):
            watch.get(timeout=0.1)

    def test_get_times_out(self, store: Store) -> None:
        self.require(store, Capability.WATCH)
        with store.watch("idle") as watch:
            watch.get(timeout=self.event_timeout)
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                watch.get(timeout=0.3)
            assert time.monotonic() - start < 5


class WatchTreeTests(BaseStoreTests):
    """watch_tree(prefix): full sorted snapshots."""

    @staticmethod
    def keys(snapshot: list[KVPair]) -> list[str]:
        return [p.key for p in snapshot]

    def test_first_snapshot(self, store: Store) -> None:
        self.require(store, Capability.WATCH_TREE)
        store.put("tree/b", b"2")
        store.put("tree/a/x", b"1")
        store.put("treeX", b"no")
        with store.watch_tree("tree") as watch:
            first = watch.get(timeout=self.event_timeout)
            assert self.keys(first) == ["tree/a/x", "tree/b"]
            assert first == store.list("tree")

    def test_empty_first_snapshot(self, store: Store) -> None:
        self.require(store, Capability.WATCH_TREE)
        with store.watch_tree("nothing") as watch:
            assert watch.get(timeout=self.event_timeout) == []

    def test_snapshots_are_full(self, store: Store) -> None:
        self.require(store, Capability.WATCH_TREE)
        store.put("t/a", b"1")
        with store.watch_tree("t") as watch:
            watch.get(timeout=self.event_timeout)
            store.put("t/b", b"2")
            snap = drain_until(watch, lambda s: self.keys(s) == ["t/a", "t/b"], self.event_timeout)
            assert [p.value for p in snap] == [b"1", b"2"]
            store.put("t/a", b"1b")
            drain_until(watch, lambda s: [p.value for p in s] == [b"1b", b"2"], self.event_timeout)
            store.delete("t/a")
            snap = drain_until(watch, lambda s: self.keys(s) == ["t/b"], self.event_timeout)
            assert snap == store.list("t")

    def test_siblings_are_not_in_the_tree(self, store: Store) -> None:
        self.require(store, Capability.WATCH_TREE)
        with store.watch_tree("sib") as watch:
            watch.get(timeout=self.event_timeout)
            store.put("sibX", b"1")
            store.put("sib-other/k", b"1")
            store.put("sib/in", b"1")
            snap = drain_until(watch, bool, self.event_timeout)
            assert self.keys(snap) == ["sib/in"]

    def test_delete_tree_empties_the_snapshot(self, store: Store) -> None:
        self.require(store, Capability.WATCH_TREE)
        for key in ("gone/a", "gone/b/c"):
            store.put(key, b"1")
        with store.watch_tree("gone") as watch:
            assert len(watch.get(timeout=self.event_timeout)) == 2
            store.delete_tree("gone")
            drain_until(watch, lambda s: s == [], self.event_timeout)

    def test_whole_store_tree(self, store: Store) -> None:
        self.require(store, Capability.WATCH_TREE)
        with store.watch_tree("") as watch:
            assert watch.get(timeout=self.event_timeout) == []
            store.put("top", b"1")
            store.put("deep/er/key", b"2")
            drain_until(watch, lambda s: self.keys(s) == ["deep/er/key", "top"], self.event_timeout)

    def test_burst_ends_in_final_state(self, store: Store) -> None:
        self.require(store, Capability.WATCH_TREE)
        with store.watch_tree("burst") as watch:
            watch.get(timeout=self.event_timeout)
            for i in range(200):
                store.put(f"burst/k{i % 10}", str(i))
            expected = {f"burst/k{j}": str(190 + j).encode() for j in range(10)}
            drain_until(
                watch, lambda s: {p.key: p.value for p in s} == expected, self.event_timeout * 2
            )


class ResumeWatchTests(BaseStoreTests):
    """watch(since=), watch_tree(since=) and watch_tree(events=True)."""

    #: Seconds a watch must stay silent to count as "no event".
    quiet_time: ClassVar[float] = 1.0

    def force_compaction(self, store: Store) -> None:
        """Make the backend forget its change history up to now; skip where it cannot."""
        pytest.skip(f"{type(store).__name__}: compaction cannot be forced in this suite")

    def assert_quiet_or_resync(self, watch: Watch[Any], current: Any, store: Store) -> None:
        """No first event, or (where the backend cannot tell) the current state, resynced."""
        try:
            event = watch.get(timeout=self.quiet_time)
        except TimeoutError:
            return
        assert not store.since_exact, f"unexpected first event {event!r}"
        assert watch.resynced, f"{event!r} is not the state since, and not marked resynced"
        assert event == current

    @pytest.mark.parametrize("since", [-1, 1.5, "3", True])
    def test_since_must_be_a_revision(self, store: Store, since: Any) -> None:
        self.require(store, Capability.WATCH, Capability.WATCH_TREE)
        for call in (store.watch, store.watch_tree):
            with pytest.raises(pykv.InvalidRevisionError) as info:
                call("k", since=since)
            assert isinstance(info.value, ValueError | TypeError)

    def test_since_current_revision_waits_for_a_change(self, store: Store) -> None:
        self.require(store, Capability.WATCH)
        store.put("since/k", b"seen")
        pair = store.get("since/k")
        with store.watch("since/k", since=pair.revision) as watch:
            with pytest.raises(TimeoutError):
                watch.get(timeout=self.quiet_time)
            store.put("since/k", b"new")
            event = watch.get(timeout=self.event_timeout)
            assert event is not None
            assert event.value == b"new"
            assert not watch.resynced

    def test_since_older_revision_starts_with_current_state(self, store: Store) -> None:
        self.require(store, Capability.WATCH)
        store.put("since/k", b"old")
        old = store.get("since/k")
        store.put("since/k", b"newer")
        with store.watch("since/k", since=old.revision) as watch:
            assert watch.get(timeout=self.event_timeout) == store.get("since/k")
            assert not watch.resynced

    def test_since_then_deleted_starts_with_none(self, store: Store) -> None:
        self.require(store, Capability.WATCH)
        store.put("since/gone", b"1")
        old = store.get("since/gone")
        store.delete("since/gone")
        with store.watch("since/gone", since=old.revision) as watch:
            assert watch.get(timeout=self.event_timeout) is None
            if store.since_exact:  # others may know (history) or resync (none, compacted)
                assert not watch.resynced
            store.put("since/gone", b"back")
            event = drain_until(watch, lambda e: e is not None, self.event_timeout)
            assert event is not None
            assert event.value == b"back"
            assert not watch.resynced

    def test_since_on_a_key_never_written(self, store: Store) -> None:
        self.require(store, Capability.WATCH)
        store.put("since/other", b"1")
        since = store.get("since/other").revision
        with store.watch("since/never", since=since) as watch:
            self.assert_quiet_or_resync(watch, None, store)
            store.put("since/never", b"now")
            event = drain_until(watch, lambda e: e is not None, self.event_timeout)
            assert event is not None
            assert event.value == b"now"

    def test_tree_since_current_revision_waits_for_a_change(self, store: Store) -> None:
        self.require(store, Capability.WATCH_TREE)
        store.put("st/a", b"1")
        store.put("st/b/c", b"2")
        since = max(p.revision for p in store.list("st"))
        with store.watch_tree("st", since=since) as watch:
            self.assert_quiet_or_resync(watch, store.list("st"), store)
            store.put("st/d", b"3")
            snap = drain_until(watch, lambda s: len(s) == 3, self.event_timeout)
            assert snap == store.list("st")
            assert not watch.resynced

    def test_tree_since_older_revision_starts_with_current_state(self, store: Store) -> None:
        self.require(store, Capability.WATCH_TREE)
        store.put("st/a", b"1")
        since = store.get("st/a").revision
        store.put("st/b", b"2")
        with store.watch_tree("st", since=since) as watch:
            assert watch.get(timeout=self.event_timeout) == store.list("st")
            assert not watch.resynced

    def test_tree_deletion_after_since_is_not_skipped(self, store: Store) -> None:
        self.require(store, Capability.WATCH_TREE)
        store.put("st/a", b"1")
        store.put("st/b", b"2")
        since = max(p.revision for p in store.list("st"))
        store.delete("st/a")
        with store.watch_tree("st", since=since) as watch:
            snap = watch.get(timeout=self.event_timeout)
            assert [p.key for p in snap] == ["st/b"]
            if store.since_exact:  # others may know (history) or resync (none, compacted)
                assert not watch.resynced

    def test_compacted_history_resyncs(self, store: Store) -> None:
        self.require(store, Capability.WATCH, Capability.WATCH_TREE)
        store.put("sc/a", b"1")
        store.put("sc/b", b"2")
        since = max(p.revision for p in store.list("sc"))
        store.delete("sc/a")
        self.force_compaction(store)
        with store.watch("sc/a", since=since) as watch:
            assert watch.get(timeout=self.event_timeout) is None
            assert watch.resynced
        with store.watch_tree("sc", since=since) as tree:
            assert tree.get(timeout=self.event_timeout) == store.list("sc")
            assert tree.resynced

    def test_events_mode_added_modified_removed(self, store: Store) -> None:
        self.require(store, Capability.WATCH_TREE)
        store.put("ev/a", b"1")
        state: dict[str, bytes] = {}

        def apply(change: TreeChange) -> dict[str, bytes]:
            if change.reset:
                state.clear()
            for pair in change.added + change.modified:
                state[pair.key] = pair.value
            for key in change.removed:
                del state[key]
            return state

        with store.watch_tree("ev", events=True) as watch:
            first = watch.get(timeout=self.event_timeout)
            assert first.reset
            assert [p.key for p in first.added] == ["ev/a"]
            apply(first)
            store.put("ev/b/c", b"2")
            change = drain_until(
                watch, lambda c: apply(c) is not None and bool(c.added), self.event_timeout
            )
            assert [p.key for p in change.added] == ["ev/b/c"]
            assert not change.reset
            store.put("ev/a", b"1b")
            change = drain_until(
                watch, lambda c: apply(c) is not None and bool(c.modified), self.event_timeout
            )
            assert [(p.key, p.value) for p in change.modified] == [("ev/a", b"1b")]
            store.delete("ev/b/c")
            change = drain_until(
                watch, lambda c: apply(c) is not None and bool(c.removed), self.event_timeout
            )
            assert change.removed == ("ev/b/c",)
            assert not change.added
            for i in range(50):
                store.put(f"ev/n{i % 5}", str(i))
            expected = {p.key: p.value for p in store.list("ev")}
            drain_until(watch, lambda c: apply(c) == expected, self.event_timeout * 2)

    def test_events_mode_since_resumes_with_a_delta(self, store: Store) -> None:
        self.require(store, Capability.WATCH_TREE)
        store.put("es/a", b"1")
        since = store.get("es/a").revision
        with store.watch_tree("es", since=since, events=True) as watch:
            store.put("es/b", b"2")
            change = watch.get(timeout=self.event_timeout)
            if watch.resynced:  # the backend could not tell: the whole state, marked
                assert not store.since_exact
                assert change.reset
                change = drain_until(watch, lambda c: bool(c.added), self.event_timeout)
            assert not change.reset
            assert [p.key for p in change.added] == ["es/b"]


class TTLTests(BaseStoreTests):
    """Ephemeral keys: alive while their store is open, gone after it closes or dies."""

    def test_ttl_key_outlives_its_ttl_while_open(self, store: Store) -> None:
        self.require(store, Capability.TTL)
        store.put("eph", b"alive", ttl=self.ttl)
        time.sleep(self.ttl * 2 + store.ttl_slack)
        assert store.get("eph").value == b"alive"

    def test_ttl_key_vanishes_after_close(self, open_store: OpenStore) -> None:
        owner, observer = open_store(), open_store()
        self.require(owner, Capability.TTL)
        owner.put("eph", b"x", ttl=self.ttl)
        owner.put("persistent", b"y")
        assert observer.get("eph").value == b"x"
        owner.close()
        wait_until(
            lambda: not observer.exists("eph"),
            self.expiry_timeout(observer),
            "the TTL key to vanish after close",
        )
        assert observer.get("persistent").value == b"y"

    def test_watch_sees_ttl_key_vanish(self, open_store: OpenStore) -> None:
        owner, observer = open_store(), open_store()
        self.require(owner, Capability.TTL, Capability.WATCH)
        owner.put("ephw", b"x", ttl=self.ttl)
        with observer.watch("ephw") as watch:
            assert watch.get(timeout=self.event_timeout) is not None
            owner.close()
            drain_until(watch, lambda e: e is None, self.expiry_timeout(observer))

    def test_plain_put_makes_key_persistent(self, open_store: OpenStore) -> None:
        owner, observer = open_store(), open_store()
        self.require(owner, Capability.TTL)
        owner.put("flip", b"1", ttl=self.ttl)
        owner.put("flip", b"2")
        owner.close()
        time.sleep(self.ttl + observer.ttl_slack + 0.5)
        assert observer.get("flip").value == b"2"

    def test_atomic_put_with_ttl(self, open_store: OpenStore) -> None:
        owner, observer = open_store(), open_store()
        self.require(owner, Capability.TTL, Capability.ATOMIC)
        pair = owner.atomic_put("aeph", b"1", None, ttl=self.ttl)
        pair = owner.atomic_put("aeph", b"2", pair, ttl=self.ttl)
        assert observer.get("aeph") == pair
        owner.close()
        wait_until(
            lambda: not observer.exists("aeph"),
            self.expiry_timeout(observer),
            "the atomic TTL key to vanish",
        )

    def test_several_ttl_keys_of_one_store(self, open_store: OpenStore) -> None:
        owner, observer = open_store(), open_store()
        self.require(owner, Capability.TTL)
        for i in range(5):
            owner.put(f"many/{i}", b"x", ttl=self.ttl)
        time.sleep(self.ttl * 1.5)
        assert len(observer.list("many")) == 5
        owner.close()
        wait_until(
            lambda: not observer.exists("many/4") and not observer.exists("many/0"),
            self.expiry_timeout(observer),
            "all TTL keys to vanish",
        )

    def test_ttl_key_vanishes_after_sigkill(
        self, store: Store, store_url: str, prefix: str, store_options: dict[str, Any]
    ) -> None:
        self.require(store, Capability.TTL, Capability.SHARED)
        with ChildProcess(
            store_url, prefix, "ttl-put", "killed", "v", str(self.ttl), options=store_options
        ) as child:
            assert store.get("killed").value == b"v"
            time.sleep(self.ttl * 1.5)
            assert store.exists("killed"), "the TTL key died while its process was alive"
            child.kill()
            wait_until(
                lambda: not store.exists("killed"),
                self.expiry_timeout(store),
                "the killed process's TTL key to vanish",
            )


class LockTests(BaseStoreTests):
    """Locks: exclusion, renewal, values, fencing tokens, lost signals, dead holders."""

    def test_acquire_release(self, store: Store) -> None:
        self.require(store, Capability.LOCK)
        lock = store.lock("lk", value=b"holder-1", ttl=self.ttl)
        assert not lock.held
        assert lock.acquire(timeout=self.event_timeout)
        assert lock.held
        assert isinstance(lock.token, int)
        assert store.get("lk").value == b"holder-1"
        lock.release()
        assert not lock.held
        assert not store.exists("lk")

    def test_context_manager(self, store: Store) -> None:
        self.require(store, Capability.LOCK)
        with store.lock("cm", value="v", ttl=self.ttl) as lock:
            assert lock.held
            assert store.get("cm").value == b"v"
        assert not lock.held

    def test_misuse_raises_lock_error(self, store: Store) -> None:
        self.require(store, Capability.LOCK)
        lock = store.lock("mis", ttl=self.ttl)
        with pytest.raises(LockError):
            lock.release()
        assert lock.acquire(timeout=self.event_timeout)
        with pytest.raises(LockError):
            lock.acquire(timeout=0)
        lock.release()
        with pytest.raises(LockError):
            lock.release()

    def test_exclusion_between_clients(self, open_store: OpenStore) -> None:
        a, b = open_store(), open_store()
        self.require(a, Capability.LOCK)
        la, lb = a.lock("ex", value=b"a", ttl=self.ttl), b.lock("ex", value=b"b", ttl=self.ttl)
        assert la.acquire(timeout=self.event_timeout)
        start = time.monotonic()
        assert not lb.acquire(timeout=0.5)
        assert time.monotonic() - start < 5
        assert b.get("ex").value == b"a"
        la.release()
        assert lb.acquire(timeout=self.event_timeout)
        assert a.get("ex").value == b"b"
        assert lb.token is not None
        assert la.token is not None
        assert lb.token > la.token
        lb.release()

    def test_waiter_gets_lock_on_release(self, open_store: OpenStore) -> None:
        a, b = open_store(), open_store()
        self.require(a, Capability.LOCK)
        la, lb = a.lock("wait", ttl=self.ttl), b.lock("wait", ttl=self.ttl)
        assert la.acquire(timeout=self.event_timeout)
        got: list[bool] = []
        thread = threading.Thread(target=lambda: got.append(lb.acquire(timeout=30)))
        thread.start()
        time.sleep(0.3)
        assert not got
        la.release()
        thread.join(timeout=35)
        assert got == [True]
        lb.release()

    def test_lock_is_renewed_past_its_ttl(self, open_store: OpenStore) -> None:
        a, b = open_store(), open_store()
        self.require(a, Capability.LOCK)
        la = a.lock("renew", ttl=self.ttl)
        assert la.acquire(timeout=self.event_timeout)
        time.sleep(self.ttl * 2 + a.ttl_slack)
        assert la.held
        assert not la.lost.is_set()
        assert not b.lock("renew", ttl=self.ttl).acquire(timeout=0.2)
        la.release()

    def test_fencing_tokens_strictly_increase(self, open_store: OpenStore) -> None:
        clients = [open_store() for _ in range(3)]
        self.require(clients[0], Capability.LOCK)
        tokens: list[int] = []
        for i in range(6):
            lock = clients[i % 3].lock("fence", ttl=self.ttl)
            assert lock.acquire(timeout=self.event_timeout)
            assert lock.token is not None
            tokens.append(lock.token)
            lock.release()
        assert tokens == sorted(tokens)
        assert len(set(tokens)) == len(tokens)

    def test_contention_keeps_critical_sections_apart(self, open_store: OpenStore) -> None:
        clients = [open_store() for _ in range(4)]
        self.require(clients[0], Capability.LOCK)
        clients[0].put("guarded", b"0")
        tokens: list[int] = []
        errors: list[BaseException] = []

        def worker(store: Store) -> None:
            try:
                for _ in range(4):
                    with store.lock("mutex", ttl=self.ttl) as lock:
                        assert lock.token is not None
                        tokens.append(lock.token)
                        value = int(store.get("guarded").value)
                        time.sleep(0.01)
                        store.put("guarded", str(value + 1))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert clients[0].get("guarded").value == b"16"
        assert tokens == sorted(tokens)
        assert len(set(tokens)) == 16

    def test_bookkeeping_is_invisible(self, open_store: OpenStore) -> None:
        a, b = open_store(), open_store()
        self.require(a, Capability.LOCK)
        a.put("app/config", b"c")
        la = a.lock("app/leader", value=b"me", ttl=self.ttl)
        lb = b.lock("app/leader", value=b"you", ttl=self.ttl)
        assert la.acquire(timeout=self.event_timeout)
        waiter = threading.Thread(target=lambda: lb.acquire(timeout=1.0))
        waiter.start()
        time.sleep(0.3)
        listed = {p.key: p.value for p in a.list("")}
        assert listed == {"app/config": b"c", "app/leader": b"me"}
        if Capability.WATCH_TREE in a.capabilities:
            with b.watch_tree("") as tree:
                snap = tree.get(timeout=self.event_timeout)
                assert {p.key: p.value for p in snap} == listed
        waiter.join(timeout=10)
        la.release()
        assert {p.key for p in a.list("")} == {"app/config"}

    def test_lost_when_key_deleted(self, open_store: OpenStore) -> None:
        a, b = open_store(), open_store()
        self.require(a, Capability.LOCK)
        la = a.lock("del", ttl=self.ttl)
        assert la.acquire(timeout=self.event_timeout)
        b.delete("del")
        assert la.lost.wait(self.expiry_timeout(a)), "lost was not set after the key was deleted"
        assert not la.held
        with pytest.raises(pykv.LockLostError):
            la.release()
        assert b.lock("del", ttl=self.ttl).acquire(timeout=self.expiry_timeout(b))

    def test_close_releases_locks(self, open_store: OpenStore) -> None:
        a, b = open_store(), open_store()
        self.require(a, Capability.LOCK)
        assert a.lock("cl", ttl=self.ttl).acquire(timeout=self.event_timeout)
        a.close()
        lb = b.lock("cl", ttl=self.ttl)
        assert lb.acquire(timeout=self.ttl + b.ttl_slack + 1)
        lb.release()

    def test_exclusion_between_processes_and_dead_holder(
        self, store: Store, store_url: str, prefix: str, store_options: dict[str, Any]
    ) -> None:
        self.require(store, Capability.LOCK, Capability.SHARED)
        with ChildProcess(
            store_url, prefix, "lock", "proc", "child", str(self.ttl), options=store_options
        ) as child:
            child_token = child.ready["token"]
            assert store.get("proc").value == b"child"
            lock = store.lock("proc", value=b"parent", ttl=self.ttl)
            assert not lock.acquire(timeout=self.ttl * 1.5)  # renewed by the live child
            child.kill()
            start = time.monotonic()
            assert lock.acquire(timeout=self.expiry_timeout(store)), (
                "the killed holder's lock did not become free"
            )
            took = time.monotonic() - start
            assert took <= self.expiry_timeout(store)
            assert lock.token is not None
            assert lock.token > child_token
            assert store.get("proc").value == b"parent"
            lock.release()


class MultiClientTests(BaseStoreTests):
    """Several clients of one store see one another's writes."""

    def test_writes_are_shared(self, open_store: OpenStore) -> None:
        a, b = open_store(), open_store()
        a.put("mc", b"1")
        assert b.get("mc").value == b"1"
        b.delete("mc")
        assert not a.exists("mc")

    def test_revisions_agree_between_clients(self, open_store: OpenStore) -> None:
        a, b = open_store(), open_store()
        a.put("rev", b"1")
        assert a.get("rev") == b.get("rev")

    def test_other_process_writes_are_seen(
        self, store: Store, store_url: str, prefix: str, store_options: dict[str, Any]
    ) -> None:
        self.require(store, Capability.SHARED)
        with ChildProcess(store_url, prefix, "put", "from-child", "hello", options=store_options):
            pass
        assert store.get("from-child").value == b"hello"

    def test_other_process_writes_reach_watches(
        self, store: Store, store_url: str, prefix: str, store_options: dict[str, Any]
    ) -> None:
        self.require(store, Capability.SHARED, Capability.WATCH)
        with store.watch("xproc") as watch:
            assert watch.get(timeout=self.event_timeout) is None
            with ChildProcess(store_url, prefix, "put", "xproc", "hi", options=store_options):
                pass
            drain_until(watch, lambda e: e is not None and e.value == b"hi", self.event_timeout)


class ConformanceTests(
    KeyValueTests,
    ListTests,
    AtomicTests,
    WatchTests,
    WatchTreeTests,
    ResumeWatchTests,
    TTLTests,
    LockTests,
    MultiClientTests,
):
    """The whole contract. Subclass it with a ``store_url`` fixture."""
