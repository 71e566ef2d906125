"""Watch feeds: the state behind every ``watch`` and ``watch_tree``, written once for all stores.

A driver turns what its backend reports into :class:`Change` records (the state of one path
after the write at a revision) and hands them to a feed; the feed decides what a consumer sees:

- :class:`KeyFeed` (one ``watch``): one event per change, repeats and stale positions dropped,
  and on a re-read (:meth:`KeyFeed.reset`) an event only when the state differs from the last
  one delivered.
- :class:`TreeFeed` (one ``watch_tree``): a :class:`SortedTree` kept up to date change by
  change, so an event costs what changed (a binary search and a list copy), never a re-sort
  of the tree; one :class:`Snapshot` per batch that touched the tree, carrying the delta
  since the previous snapshot (what ``watch_tree(events=True)`` yields without re-diffing);
  and a full re-read (:meth:`TreeFeed.reset`) diffed against the state, delivered only if
  it differs.
- :class:`WatchHub`: the feeds of a store whose changes arrive as one ordered stream (the
  embedded stores), fanning each batch out to every feed it concerns.

Paths here are absolute backend paths; each feed strips its store's prefix when emitting.
Feeds are fed from one thread at a time per feed (the driver's stream thread or a hub
holding its lock); consumers read the watch from any thread.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

from ._store import KVPair, TreeChange, Watch, new_pair

__all__ = [
    "Change",
    "KeyFeed",
    "Snapshot",
    "SortedTree",
    "TreeFeed",
    "WatchHub",
    "below",
    "diff",
]

_by_key = attrgetter("key")


@dataclass(frozen=True, slots=True)
class Change:
    """The state of ``path`` after the write at ``revision``; ``value`` None means deleted.

    ``seq`` is the change's position in the store's change stream when that is not the
    revision itself (sqlite: revisions come from a clock, the stream is a log in commit order).
    """

    revision: int
    path: str
    value: bytes | None
    seq: int = 0

    @property
    def position(self) -> int:
        return self.seq or self.revision


def below(path: str, prefix: str) -> bool:
    """Whether ``path`` is inside the tree ``prefix`` ("" is the whole store)."""
    return prefix == "" or path.startswith(prefix + "/")


class Snapshot(list[KVPair]):
    """A ``watch_tree`` event: the sorted pairs below the prefix (a plain list to consumers).

    ``delta`` is what changed since the previous snapshot of the same watch, or None for the
    first snapshot and for re-reads after the watch lost track (which consumers of deltas
    must treat as a reset)."""

    __slots__ = ("delta",)

    def __init__(self, pairs: Iterable[KVPair] = (), delta: TreeChange | None = None) -> None:
        super().__init__(pairs)
        self.delta = delta


class SortedTree:
    """The pairs of one tree sorted by key: lookups by binary search, a change costs a search
    and a memmove, and a snapshot is one list copy."""

    __slots__ = ("_keys", "_pairs")

    def __init__(self, pairs: Iterable[KVPair] = ()) -> None:
        ordered = sorted(pairs, key=_by_key)  # linear on sorted input (the usual case)
        self._pairs = ordered
        self._keys = [p.key for p in ordered]

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key: str) -> KVPair | None:
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            return self._pairs[i]
        return None

    def put(self, pair: KVPair) -> KVPair | None:
        """Insert or replace ``pair``; return the pair it replaced (None: it was added)."""
        keys = self._keys
        i = bisect.bisect_left(keys, pair.key)
        if i < len(keys) and keys[i] == pair.key:
            old = self._pairs[i]
            self._pairs[i] = pair
            return old
        keys.insert(i, pair.key)
        self._pairs.insert(i, pair)
        return None

    def remove(self, key: str) -> KVPair | None:
        """Remove ``key``; return its pair, or None when it was not there."""
        keys = self._keys
        i = bisect.bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            del keys[i]
            return self._pairs.pop(i)
        return None

    def pairs(self) -> list[KVPair]:
        """The pairs in key order (a copy)."""
        return self._pairs.copy()


def _same(a: KVPair, b: KVPair) -> bool:
    return a.revision == b.revision and a.value == b.value


def diff(old: Sequence[KVPair], new: Sequence[KVPair]) -> TreeChange:
    """What changed from ``old`` to ``new`` (both sorted by key): one merge pass."""
    added: list[KVPair] = []
    modified: list[KVPair] = []
    removed: list[str] = []
    i = j = 0
    while i < len(old) and j < len(new):
        a, b = old[i], new[j]
        if a.key == b.key:
            if not _same(a, b):
                modified.append(b)
            i += 1
            j += 1
        elif a.key < b.key:
            removed.append(a.key)
            i += 1
        else:
            added.append(b)
            j += 1
    removed.extend(p.key for p in old[i:])
    added.extend(new[j:])
    return TreeChange(added=tuple(added), modified=tuple(modified), removed=tuple(removed))


def _value_of(tree: SortedTree, key: str) -> bytes | None:
    pair = tree.get(key)
    return None if pair is None else pair.value


def _empty(change: TreeChange) -> bool:
    return not (change.added or change.modified or change.removed)


class KeyFeed:
    """The state of one ``watch``: its last position and the revision it last delivered."""

    __slots__ = ("after", "delivered", "path", "strip", "watch")

    def __init__(
        self, watch: Watch[KVPair | None], path: str, strip: int, current: KVPair | None, after: int
    ) -> None:
        self.watch = watch
        self.path = path
        self.strip = strip
        #: the stream position of the last change applied
        self.after = after
        #: the revision of the last delivered pair, None after a deletion (for re-reads)
        self.delivered = None if current is None else current.revision
        watch._emit(current)

    def apply(self, batch: Iterable[Change]) -> None:
        """Deliver the changes of this key in ``batch`` that are newer than the last one."""
        for ch in batch:
            if ch.path == self.path and ch.position > self.after:
                self.after = ch.position
                if ch.value is None:
                    if self.delivered is None:
                        continue  # a deletion of what is already gone
                    self.delivered = None
                    self.watch._emit(None)
                else:
                    self.delivered = ch.revision
                    self.watch._emit(new_pair(ch.path[self.strip :], ch.value, ch.revision))

    def reset(self, pair: KVPair | None, after: int, *, resynced: bool = True) -> None:
        """The key re-read at stream position ``after`` (``pair.key`` is ignored): delivered
        when it is not what the watch delivered last."""
        self.after = max(self.after, after)
        seen = None if pair is None else pair.revision
        if seen == self.delivered:
            return
        self.delivered = seen
        self.watch._emit(
            None if pair is None else new_pair(self.path[self.strip :], pair.value, pair.revision),
            resynced,
        )


class TreeFeed:
    """The state of one ``watch_tree``: a :class:`SortedTree` of the pairs below ``prefix``."""

    __slots__ = ("after", "prefix", "strip", "tree", "watch")

    def __init__(
        self,
        watch: Watch[list[KVPair]],
        prefix: str,
        strip: int,
        current: Iterable[KVPair],
        after: int,
    ) -> None:
        self.watch = watch
        self.prefix = prefix
        self.strip = strip
        self.after = after
        self.tree = SortedTree(current)
        watch._emit(Snapshot(self.tree.pairs()))

    def apply(self, batch: Iterable[Change]) -> None:
        """Apply the changes below the prefix that are past the last position, and deliver
        one snapshot (with its delta) if they changed anything. One write may change several
        keys at one position, so the position filter is the one before the batch."""
        seen_up_to = self.after
        added: dict[str, KVPair] = {}
        modified: dict[str, KVPair] = {}
        removed: dict[str, None] = {}
        for ch in batch:
            if ch.position <= seen_up_to or not below(ch.path, self.prefix):
                continue
            self.after = max(self.after, ch.position)
            rel = ch.path[self.strip :]
            if ch.value is None:
                if self.tree.remove(rel) is None:
                    continue
                if added.pop(rel, None) is None:
                    modified.pop(rel, None)
                    removed[rel] = None
            else:
                pair = new_pair(rel, ch.value, ch.revision)
                old = self.tree.put(pair)
                if old is not None and _same(old, pair):
                    continue  # a re-read of what the tree holds: nothing changed
                if old is not None or rel in added:
                    (added if rel in added else modified)[rel] = pair
                elif rel in removed:  # removed earlier in this batch and written again
                    del removed[rel]
                    modified[rel] = pair
                else:
                    added[rel] = pair
        if added or modified or removed:
            delta = TreeChange(
                added=tuple(added[k] for k in sorted(added)),
                modified=tuple(modified[k] for k in sorted(modified)),
                removed=tuple(sorted(removed)),
            )
            self.watch._emit(Snapshot(self.tree.pairs(), delta))

    def reset(self, pairs: Iterable[KVPair], after: int, *, resynced: bool = True) -> None:
        """The tree re-read at stream position ``after``, keys as absolute backend paths."""
        self.reset_relative(
            (new_pair(p.key[self.strip :], p.value, p.revision) for p in pairs),
            after,
            resynced=resynced,
        )

    def reset_relative(
        self,
        pairs: Iterable[KVPair],
        after: int,
        *,
        resynced: bool = True,
        values_only: bool = False,
    ) -> None:
        """The tree re-read at ``after``, keys already relative to the store's prefix:
        delivered (flagged ``resynced``) when it differs from the state. ``values_only``: a
        change of revisions alone is taken in silently (etcd v2 refreshes of TTL keys)."""
        self.after = max(self.after, after)
        fresh = SortedTree(pairs)
        before, self.tree = self.tree, fresh
        change = diff(before._pairs, fresh._pairs)
        if (
            values_only
            and not (change.added or change.removed)
            and all(_value_of(before, p.key) == p.value for p in change.modified)
        ):
            return
        if not _empty(change):
            self.watch._emit(Snapshot(fresh.pairs(), None if resynced else change), resynced)


class WatchHub:
    """The feeds of one store whose changes arrive as one ordered stream (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: list[KeyFeed] = []
        self._trees: list[TreeFeed] = []

    @property
    def active(self) -> bool:
        return bool(self._keys or self._trees)

    def _closer(
        self, feed: KeyFeed | TreeFeed, on_close: Callable[[], None] | None
    ) -> Callable[[], None]:
        def closed() -> None:
            with self._lock:
                for feeds in (self._keys, self._trees):
                    if feed in feeds:
                        feeds.remove(feed)  # type: ignore[arg-type]
            if on_close is not None:
                on_close()

        return closed

    def add_key(
        self,
        description: str,
        path: str,
        strip: int,
        current: KVPair | None,
        revision: int,
        on_close: Callable[[], None] | None = None,
    ) -> Watch[KVPair | None]:
        """Register a key watch whose first event is ``current``, read at ``revision``."""
        watch: Watch[KVPair | None] = Watch(description)
        feed = KeyFeed(watch, path, strip, current, revision)
        watch._on_close = self._closer(feed, on_close)
        with self._lock:
            self._keys.append(feed)
        return watch

    def add_tree(
        self,
        description: str,
        prefix: str,
        strip: int,
        current: list[KVPair],
        revision: int,
        on_close: Callable[[], None] | None = None,
    ) -> Watch[list[KVPair]]:
        """Register a tree watch whose first snapshot is ``current``, read at ``revision``."""
        watch: Watch[list[KVPair]] = Watch(description)
        feed = TreeFeed(watch, prefix, strip, current, revision)
        watch._on_close = self._closer(feed, on_close)
        with self._lock:
            self._trees.append(feed)
        return watch

    def apply(self, changes: Iterable[Change]) -> None:
        """Deliver a batch of changes, in stream order."""
        batch = list(changes)
        if not batch:
            return
        with self._lock:
            keys, trees = list(self._keys), list(self._trees)
        for kf in keys:
            kf.apply(batch)
        for tf in trees:
            tf.apply(batch)

    def resync(
        self,
        read_key: Callable[[str], KVPair | None],
        read_tree: Callable[[str], list[KVPair]],
        revision: int,
    ) -> None:
        """Re-read every watched state at ``revision`` (a position in the change stream, after
        changes were lost to it) and deliver what differs from what each watch last delivered.
        ``read_tree`` returns pairs keyed by absolute path."""
        with self._lock:
            keys, trees = list(self._keys), list(self._trees)
        for kf in keys:
            kf.reset(read_key(kf.path), revision)
        for tf in trees:
            tf.reset(read_tree(tf.prefix), revision)

    def fail_all(self, error: BaseException) -> None:
        with self._lock:
            watches = [kf.watch for kf in self._keys] + [tf.watch for tf in self._trees]
        for w in watches:
            w._fail(error)

    def close_all(self) -> None:
        with self._lock:
            watches = [kf.watch for kf in self._keys] + [tf.watch for tf in self._trees]
        for w in watches:
            w.close()
