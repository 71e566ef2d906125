"""The TTL keys a store wrote, and their re-creation after their session or lease was lost.

A TTL key lives on a session or lease of the store (a *group*: an etcd lease, a Consul session,
a ZooKeeper session). While the store is open its TTL keys must exist, so when a group is lost
anyway (a long partition, a server that expired it) the driver gets a new one and calls
:meth:`TTLKeys.recreate`, which writes each key again, but only where nobody wrote it meanwhile
(another client's write wins), through two driver hooks:

- ``create(path, value)``: write ``path`` if it is absent, on the group's new session or lease;
  return a :class:`Created` (created, or why not);
- ``delete_if_at(path, revision)``: delete ``path`` if it was not written since ``revision``.

The registry also closes a race every driver has: this store deletes (or rewrites without TTL) a
key while a re-creation of it is in flight. A delete *forgets* the key before it is sent; a
re-creation that finds, once its write succeeded, that the key was forgotten meanwhile undoes
its own write (``delete_if_at``), so that the delete always wins. Failed steps stay queued for
the next call (drivers call it after each renewal).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

__all__ = ["Created", "TTLKeys"]

P = TypeVar("P", bound=Hashable)  # a path: str or bytes, as the driver spells it
G = TypeVar("G", bound=Hashable)  # a group: the driver's lease or session object


class Created(NamedTuple):
    """What a re-creation write did: ``created`` at ``revision``, or not (the key exists),
    then ``ours`` tells whether what exists is this group's own write (keep tracking it)."""

    created: bool
    revision: int = 0
    ours: bool = False


@dataclass
class _Pending(Generic[P]):
    missing: set[P] = field(default_factory=set)
    #: keys re-created after this store deleted them: path -> revision of the re-creation
    undo: dict[P, int] = field(default_factory=dict)


class TTLKeys(Generic[P, G]):
    """Which TTL key lives on which group with which value (thread-safe, under ``lock``)."""

    def __init__(self, lock: threading.RLock | None = None) -> None:
        self.lock = lock if lock is not None else threading.RLock()
        self._keys: dict[P, tuple[G, bytes]] = {}
        self._pending: dict[G, _Pending[P]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def remember(self, group: G, path: P, value: bytes) -> None:
        """``path`` was written with ``value`` on ``group`` (and on no other group any more)."""
        with self.lock:
            self._keys[path] = (group, value)

    def forget(self, path: P) -> tuple[G, bytes] | None:
        """Stop tracking ``path`` (call it *before* sending a delete or a plain write); returns
        the entry, for :meth:`restore` if that write fails."""
        with self.lock:
            return self._keys.pop(path, None)

    def forget_where(self, contains: Callable[[P], bool]) -> None:
        """Stop tracking every path for which ``contains(path)`` (a tree being deleted)."""
        with self.lock:
            for path in [p for p in self._keys if contains(p)]:
                del self._keys[path]

    def restore(self, path: P, entry: tuple[G, bytes] | None) -> None:
        """Track ``path`` again after the write that forgot it failed, unless it was written
        again meanwhile."""
        if entry is not None:
            with self.lock:
                self._keys.setdefault(path, entry)

    def count(self, group: G) -> int:
        with self.lock:
            return sum(1 for g, _ in self._keys.values() if g == group)

    def lose(self, group: G) -> int:
        """``group`` was lost: every key on it must be written again; returns how many."""
        with self.lock:
            pending = self._pending.setdefault(group, _Pending())
            pending.missing = {p for p, (g, _) in self._keys.items() if g == group}
            return len(pending.missing)

    def drop_group(self, group: G) -> None:
        """Forget ``group`` and its keys (the store closes, or gives the keys up)."""
        with self.lock:
            self._pending.pop(group, None)
            for path in [p for p, (g, _) in self._keys.items() if g == group]:
                del self._keys[path]

    def group_of(self, path: P) -> G | None:
        """The group ``path`` is tracked on, or None."""
        with self.lock:
            entry = self._keys.get(path)
            return None if entry is None else entry[0]

    def clear(self) -> None:
        """Forget every key and group (the store closes)."""
        with self.lock:
            self._keys.clear()
            self._pending.clear()

    def lost_groups(self) -> list[G]:
        """The groups with keys still to write again (or re-creations to undo)."""
        with self.lock:
            return [g for g, p in self._pending.items() if p.missing or p.undo]

    def pending(self, group: G) -> bool:
        with self.lock:
            p = self._pending.get(group)
            return p is not None and bool(p.missing or p.undo)

    def recreate(
        self,
        group: G,
        create: Callable[[P, bytes], Created],
        delete_if_at: Callable[[P, int], None],
    ) -> None:
        """Write the lost keys of ``group`` again where nobody wrote them meanwhile, and undo
        re-creations that lost a race with this store's own delete. Raises the first error of
        a hook; what is left stays queued for the next call."""
        while (job := self._next(group)) is not None:
            path, undo, entry = job
            if entry is None:
                self._undo(group, path, undo, delete_if_at)
                continue
            try:
                result = create(path, entry[1])
            except BaseException:
                with self.lock:
                    if self._keys.get(path) is entry:
                        self._pending[group].missing.add(path)
                raise
            with self.lock:
                still_wanted = self._keys.get(path) is entry
                if not result.created and still_wanted and not result.ours:
                    del self._keys[path]  # someone else wrote the key meanwhile: theirs
            if result.created and not still_wanted:
                # This store deleted (or rewrote) the key while it was being re-created; its
                # delete forgot the key before it was sent, so either the delete came after
                # this write or the forgetting is seen here. Undo this write unless written
                # again since.
                self._undo(group, path, result.revision, delete_if_at)

    def _next(self, group: G) -> tuple[P, int, tuple[G, bytes] | None] | None:
        """The next job of ``group``: (path, revision, None) to undo, (path, 0, entry) to
        write again, or None when nothing is left."""
        with self.lock:
            pending = self._pending.get(group)
            while pending is not None:
                if pending.undo:
                    path, revision = pending.undo.popitem()
                    return path, revision, None
                if not pending.missing:
                    return None
                path = pending.missing.pop()
                entry = self._keys.get(path)
                if entry is not None and entry[0] == group:
                    return path, 0, entry
                # deleted, rewritten without TTL or moved to another group meanwhile
            return None

    def _undo(
        self, group: G, path: P, revision: int, delete_if_at: Callable[[P, int], None]
    ) -> None:
        try:
            delete_if_at(path, revision)
        except BaseException:
            with self.lock:
                self._pending.setdefault(group, _Pending()).undo[path] = revision
            raise
