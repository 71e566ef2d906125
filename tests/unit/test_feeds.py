"""The core's watch feeds (pykv/_feeds.py): pure logic, no store."""

from __future__ import annotations

import random
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from pykv import KVPair, TreeChange, Watch
from pykv._feeds import Change, KeyFeed, Snapshot, SortedTree, TreeFeed, WatchHub, diff

T = TypeVar("T")


def drain(watch: Watch[T]) -> list[tuple[T, bool]]:
    out: list[tuple[T, bool]] = []
    while True:
        try:
            event = watch.get(timeout=0)
        except TimeoutError:
            return out
        out.append((event, watch.resynced))


def test_sorted_tree_keeps_order_and_reports_what_it_replaced() -> None:
    tree = SortedTree([KVPair("b", b"1", 1), KVPair("a", b"1", 2)])
    assert [p.key for p in tree.pairs()] == ["a", "b"]
    assert tree.put(KVPair("c", b"1", 3)) is None
    assert tree.put(KVPair("a", b"2", 4)) == KVPair("a", b"1", 2)
    assert tree.remove("b") == KVPair("b", b"1", 1)
    assert tree.remove("b") is None
    assert tree.get("a") == KVPair("a", b"2", 4)
    assert tree.get("zz") is None
    assert tree.pairs() == [KVPair("a", b"2", 4), KVPair("c", b"1", 3)]
    copy = tree.pairs()
    copy.clear()
    assert len(tree) == 2  # a snapshot is a copy


def test_diff_merges_two_sorted_lists() -> None:
    old = [KVPair("a", b"1", 1), KVPair("b", b"1", 2), KVPair("d", b"1", 3)]
    new = [KVPair("b", b"2", 5), KVPair("c", b"1", 6), KVPair("d", b"1", 3), KVPair("e", b"", 7)]
    assert diff(old, new) == TreeChange(
        added=(KVPair("c", b"1", 6), KVPair("e", b"", 7)),
        modified=(KVPair("b", b"2", 5),),
        removed=("a",),
    )
    assert diff(new, new) == TreeChange()


def test_key_feed_drops_stale_and_repeated_changes() -> None:
    watch: Watch[KVPair | None] = Watch("k")
    feed = KeyFeed(watch, "/p/k", 3, None, 10)
    feed.apply([Change(9, "/p/k", b"old"), Change(11, "/p/other", b"x")])
    feed.apply([Change(12, "/p/k", b"v1"), Change(12, "/p/k", b"v1")])
    feed.apply([Change(13, "/p/k", None), Change(14, "/p/k", None)])
    assert drain(watch) == [(None, False), (KVPair("k", b"v1", 12), False), (None, False)]
    feed.reset(None, 15)  # nothing new: no event
    feed.reset(KVPair("ignored", b"v2", 16), 16)
    assert drain(watch) == [(KVPair("k", b"v2", 16), True)]
    feed.apply([Change(16, "/p/k", b"v2")])  # already delivered by the re-read
    assert drain(watch) == []


def test_tree_feed_emits_one_snapshot_per_batch_with_its_delta() -> None:
    watch: Watch[list[KVPair]] = Watch("t")
    feed = TreeFeed(watch, "/p/t", 3, [KVPair("t/a", b"1", 1), KVPair("t/b", b"1", 2)], 2)
    first = watch.get(timeout=0)
    assert first == [KVPair("t/a", b"1", 1), KVPair("t/b", b"1", 2)]
    assert isinstance(first, Snapshot)
    assert first.delta is None
    feed.apply(
        [
            Change(3, "/p/t/c", b"1"),
            Change(3, "/p/t/a", None),  # one write, two keys at one position
            Change(4, "/p/tx", b"outside"),
            Change(5, "/p/t/c", None),  # added and removed in one batch: no trace
            Change(6, "/p/t/b", None),
            Change(7, "/p/t/b", b"2"),  # removed and written again: modified
        ]
    )
    snap = watch.get(timeout=0)
    assert snap == [KVPair("t/b", b"2", 7)]
    assert isinstance(snap, Snapshot)
    assert snap.delta == TreeChange(modified=(KVPair("t/b", b"2", 7),), removed=("t/a",))
    feed.apply([Change(7, "/p/t/b", b"2", seq=9)])  # a re-read of the same state
    feed.apply([Change(7, "/p/t/z", b"late")])  # not past the last position
    feed.apply([Change(8, "/p/t/gone", None)])  # deleting what is not there changes nothing
    assert drain(watch) == []


def test_tree_feed_reset_delivers_only_a_different_state() -> None:
    watch: Watch[list[KVPair]] = Watch("t")
    feed = TreeFeed(watch, "", 0, [KVPair("a", b"1", 1)], 1)
    drain(watch)
    feed.reset([KVPair("a", b"1", 1)], 5)
    assert drain(watch) == []
    feed.reset_relative([KVPair("b", b"1", 6)], 6, resynced=False)
    snap = watch.get(timeout=0)
    assert snap == [KVPair("b", b"1", 6)]
    assert not watch.resynced
    assert isinstance(snap, Snapshot)
    assert snap.delta == TreeChange(added=(KVPair("b", b"1", 6),), removed=("a",))
    feed.reset([], 7)
    assert drain(watch) == [([], True)]


def test_hub_fans_out_and_forgets_closed_watches() -> None:
    hub = WatchHub()
    key = hub.add_key("k", "/k", 1, None, 0)
    tree = hub.add_tree("t", "", 0, [], 0)
    assert hub.active
    hub.apply([Change(1, "/k", b"v")])
    assert drain(key) == [(None, False), (KVPair("k", b"v", 1), False)]
    assert [e for e, _ in drain(tree)] == [[], [KVPair("/k", b"v", 1)]]
    key.close()
    tree.close()
    assert not hub.active


changes = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d", "x/y"]), st.one_of(st.none(), st.binary())),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(changes, st.integers(min_value=1, max_value=5), st.randoms())
def test_tree_feed_matches_a_naive_model(ops: list[tuple[str, bytes | None]], batch: int,
                                         rnd: random.Random) -> None:  # fmt: skip
    """Whatever the batching, the snapshots equal a dict model's sorted state and each delta
    turns the previous snapshot into the next one."""
    watch: Watch[list[KVPair]] = Watch("t")
    feed = TreeFeed(watch, "", 0, [], 0)
    model: dict[str, KVPair] = {}
    pending: list[Change] = []
    for rev, (key, value) in enumerate(ops, start=1):
        pending.append(Change(rev, key, value))
        if value is None:
            model.pop(key, None)
        else:
            model[key] = KVPair(key, value, rev)
        if len(pending) >= batch or rnd.random() < 0.3:
            feed.apply(pending)
            pending = []
    feed.apply(pending)
    previous: dict[str, KVPair] = {}
    for event, _ in drain(watch):
        assert isinstance(event, Snapshot)
        if event.delta is not None:
            expect = dict(previous)
            for k in event.delta.removed:
                del expect[k]
            for p in (*event.delta.added, *event.delta.modified):
                expect[p.key] = p
            assert {p.key for p in event.delta.added}.isdisjoint(previous)
            assert set(event.delta.removed) <= set(previous)
            assert expect == {p.key: p for p in event}
        previous = {p.key: p for p in event}
        assert list(event) == sorted(event, key=lambda p: p.key)
    assert previous == model


def test_tree_feed_reset_with_values_only_ignores_revision_changes() -> None:
    watch: Watch[list[KVPair]] = Watch("t")
    feed = TreeFeed(watch, "", 0, [KVPair("a", b"1", 1)], 1)
    drain(watch)
    feed.reset_relative([KVPair("a", b"1", 7)], 2, resynced=False, values_only=True)
    assert drain(watch) == []  # a refresh: same value, new revision
    assert feed.tree.get("a") == KVPair("a", b"1", 7)
    feed.reset_relative([KVPair("a", b"2", 8)], 3, resynced=False, values_only=True)
    assert [e for e, _ in drain(watch)] == [[KVPair("a", b"2", 8)]]
