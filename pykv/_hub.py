"""Watch fan-out for stores that see their changes as an ordered stream (the embedded ones).

A :class:`WatchHub` holds the open watches of a store. The store feeds it every change in
revision order with :meth:`WatchHub.apply`; the hub turns them into ``watch`` events (one per
change) and ``watch_tree`` events (one full snapshot per batch that touched the tree).
Paths here are absolute backend paths; each watch strips its store's prefix when emitting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ._store import KVPair, Watch

__all__ = ["Change", "WatchHub", "below"]


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
    return prefix == "" or path.startswith(prefix + "/")


@dataclass
class _KeyWatch:
    watch: Watch[KVPair | None]
    path: str
    strip: int
    after: int
    #: the revision of the last delivered pair, None after a deletion (for resync)
    delivered: int | None = None


@dataclass
class _TreeWatch:
    watch: Watch[list[KVPair]]
    prefix: str
    strip: int
    after: int
    snapshot: dict[str, KVPair] = field(default_factory=dict)

    def emit(self, resynced: bool = False) -> None:
        self.watch._emit([self.snapshot[k] for k in sorted(self.snapshot)], resynced)


class WatchHub:
    """The open watches of one store (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: list[_KeyWatch] = []
        self._trees: list[_TreeWatch] = []

    @property
    def active(self) -> bool:
        return bool(self._keys or self._trees)

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
        entry: _KeyWatch

        def closed() -> None:
            with self._lock:
                if entry in self._keys:
                    self._keys.remove(entry)
            if on_close is not None:
                on_close()

        watch: Watch[KVPair | None] = Watch(description, on_close=closed)
        entry = _KeyWatch(
            watch, path, strip, revision, None if current is None else current.revision
        )
        watch._emit(current)
        with self._lock:
            self._keys.append(entry)
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
        entry: _TreeWatch

        def closed() -> None:
            with self._lock:
                if entry in self._trees:
                    self._trees.remove(entry)
            if on_close is not None:
                on_close()

        watch: Watch[list[KVPair]] = Watch(description, on_close=closed)
        entry = _TreeWatch(watch, prefix, strip, revision, {p.key: p for p in current})
        entry.emit()
        with self._lock:
            self._trees.append(entry)
        return watch

    def apply(self, changes: Iterable[Change]) -> None:
        """Deliver a batch of changes, in revision order."""
        batch = list(changes)
        if not batch:
            return
        with self._lock:
            keys, trees = list(self._keys), list(self._trees)
        for kw in keys:
            for ch in batch:
                if ch.path == kw.path and ch.position > kw.after:
                    kw.after = ch.position
                    kw.delivered = None if ch.value is None else ch.revision
                    kw.watch._emit(
                        None
                        if ch.value is None
                        else KVPair(ch.path[kw.strip :], ch.value, ch.revision)
                    )
        for tw in trees:
            touched = False
            seen_up_to = tw.after  # one write may change several keys at one position
            for ch in batch:
                if ch.position <= seen_up_to or not below(ch.path, tw.prefix):
                    continue
                tw.after = max(tw.after, ch.position)
                rel = ch.path[tw.strip :]
                if ch.value is None:
                    touched |= tw.snapshot.pop(rel, None) is not None
                else:
                    tw.snapshot[rel] = KVPair(rel, ch.value, ch.revision)
                    touched = True
            if touched:
                tw.emit()

    def resync(
        self,
        read_key: Callable[[str], KVPair | None],
        read_tree: Callable[[str], list[KVPair]],
        revision: int,
    ) -> None:
        """Re-read every watched state at ``revision`` (a position in the change stream, after
        changes were lost to it) and deliver what differs from what each watch last delivered."""
        with self._lock:
            keys, trees = list(self._keys), list(self._trees)
        for kw in keys:
            pair = read_key(kw.path)
            kw.after = revision
            seen = None if pair is None else pair.revision
            if seen == kw.delivered:
                continue
            kw.delivered = seen
            kw.watch._emit(
                None if pair is None else KVPair(kw.path[kw.strip :], pair.value, pair.revision),
                resynced=True,
            )
        for tw in trees:
            snap = {p.key[tw.strip :]: p for p in read_tree(tw.prefix)}
            fresh = {k: KVPair(k, p.value, p.revision) for k, p in snap.items()}
            tw.after = revision
            if fresh != tw.snapshot:
                tw.snapshot = fresh
                tw.emit(resynced=True)

    def fail_all(self, error: BaseException) -> None:
        with self._lock:
            watches = [kw.watch for kw in self._keys] + [tw.watch for tw in self._trees]
        for w in watches:
            w._fail(error)

    def close_all(self) -> None:
        with self._lock:
            watches = [kw.watch for kw in self._keys] + [tw.watch for tw in self._trees]
        for w in watches:
            w.close()
