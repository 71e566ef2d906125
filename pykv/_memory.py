"""``memory://NAME`` — an in-process store for tests and embedding.

URL form
    ``memory://NAME[/PREFIX]``. Stores opened with the same ``NAME`` in one process share their
    data, which lives until the process ends. ``memory://`` alone is the anonymous name ``""``.

Options
    ``timeout`` (seconds, default 10; bounds lock waits only, nothing else can block),
    ``prefix`` (overrides the URL path).

Capabilities
    kv, atomic, ttl, watch, watch_tree, lock. Not shared between processes, not persistent.
    TTL keys live exactly as long as the store that wrote them; TTL slack is 0. Watch events
    are delivered synchronously by the writing thread, so they arrive within microseconds.
    ``watch(since=)`` is exact: the last 1000 deletions of each name are remembered; a
    ``since`` older than them resyncs.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from ._errors import KeyExistsError, KeyModifiedError, KeyNotFoundError
from ._feeds import Change, WatchHub, below
from ._options import StoreOptions
from ._store import Capability, KVPair, Lock, Store, Watch
from ._url import StoreURL

__all__ = ["MemoryStore"]

#: Deletions remembered per memory:// name for ``watch(since=)``; older ones are "compacted".
HISTORY = 1000


@dataclass(slots=True)
class _Item:
    value: bytes
    revision: int
    owner: object | None  # the store (TTL key) or lock that keeps it alive; None: persistent


class _Space:
    """The data of one ``memory://NAME``."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.revision = 0
        self.items: dict[str, _Item] = {}
        self.lock_tokens: dict[str, int] = {}
        self.lock_holders: dict[str, _MemoryLock] = {}
        self.hubs: list[WatchHub] = []
        #: (revision, path) of recent deletions, and the newest revision no longer in it
        self.deletions: collections.deque[tuple[int, str]] = collections.deque()
        self.forgotten = 0

    def next_revision(self) -> int:
        self.revision += 1
        return self.revision

    def publish(self, changes: list[Change]) -> None:
        """Called with ``cond`` held, so every hub sees changes in revision order."""
        for hub in self.hubs:
            hub.apply(changes)
        self.cond.notify_all()

    def remove(self, paths: Iterable[str]) -> None:
        rev = self.next_revision()
        changes = []
        for path in paths:
            if self.items.pop(path, None) is not None:
                changes.append(Change(rev, path, None))
                if len(self.deletions) >= HISTORY:
                    self.forgotten = self.deletions.popleft()[0]
                self.deletions.append((rev, path))
                holder = self.lock_holders.get(path)
                if holder is not None:
                    del self.lock_holders[path]
                    holder._mark_lost("its key was deleted")
        self.publish(changes)


_SPACES: dict[str, _Space] = {}
_SPACES_LOCK = threading.Lock()


def _space(name: str) -> _Space:
    with _SPACES_LOCK:
        return _SPACES.setdefault(name, _Space())


class MemoryStore(Store):
    """The in-process store. See the module documentation."""

    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.KV,
            Capability.ATOMIC,
            Capability.TTL,
            Capability.WATCH,
            Capability.WATCH_TREE,
            Capability.LOCK,
        }
    )
    options_class: ClassVar[type[StoreOptions]] = StoreOptions
    since_exact: ClassVar[bool] = True

    def __init__(self, url: StoreURL, options: StoreOptions) -> None:
        super().__init__(url, options)
        self.name = url.netloc
        self._space = _space(self.name)
        self._hub = WatchHub()
        self._locks: set[_MemoryLock] = set()
        with self._space.cond:
            self._space.hubs.append(self._hub)

    def _pair(self, path: str, item: _Item) -> KVPair:
        return KVPair(self._relative(path), item.value, item.revision)

    def _get(self, key: str) -> KVPair:
        path = self._path(key)
        with self._space.cond:
            item = self._space.items.get(path)
            if item is None:
                raise KeyNotFoundError(f"{key!r} not found in {self}")
            return self._pair(path, item)

    def _write(self, path: str, value: bytes, owner: object | None) -> KVPair:
        sp = self._space
        rev = sp.next_revision()
        item = _Item(value, rev, owner)
        sp.items[path] = item
        sp.publish([Change(rev, path, value)])
        return self._pair(path, item)

    def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        with self._space.cond:
            self._write(self._path(key), value, self if ttl is not None else None)

    def _delete(self, key: str) -> None:
        with self._space.cond:
            self._space.remove([self._path(key)])

    def _list(self, prefix: str) -> list[KVPair]:
        base = self._path(prefix)
        with self._space.cond:
            return sorted(
                (
                    self._pair(p, it)
                    for p, it in self._space.items.items()
                    if base == "" or p.startswith(base + "/")
                ),
                key=lambda pair: pair.key,
            )

    def _delete_tree(self, prefix: str) -> None:
        base = self._path(prefix)
        with self._space.cond:
            # delete_tree("") spares the prefix's own key: it lies outside the store
            doomed = [
                p
                for p in self._space.items
                if base == "" or (prefix and p == base) or p.startswith(base + "/")
            ]
            self._space.remove(sorted(doomed))

    def _atomic_put(
        self, key: str, value: bytes, previous: KVPair | None, ttl: float | None
    ) -> KVPair:
        path = self._path(key)
        with self._space.cond:
            item = self._space.items.get(path)
            if previous is None:
                if item is not None:
                    raise KeyExistsError(f"{key!r} already exists in {self}")
            elif item is None:
                raise KeyNotFoundError(f"{key!r} not found in {self}")
            elif item.revision != previous.revision:
                raise KeyModifiedError(
                    f"{key!r} is at revision {item.revision}, not {previous.revision}"
                )
            return self._write(path, value, self if ttl is not None else None)

    def _atomic_delete(self, key: str, previous: KVPair) -> None:
        path = self._path(key)
        with self._space.cond:
            item = self._space.items.get(path)
            if item is None:
                raise KeyNotFoundError(f"{key!r} not found in {self}")
            if item.revision != previous.revision:
                raise KeyModifiedError(
                    f"{key!r} is at revision {item.revision}, not {previous.revision}"
                )
            self._space.remove([path])

    def _watch(self, key: str) -> Watch[KVPair | None]:
        path = self._path(key)
        strip = self._strip()
        with self._space.cond:
            item = self._space.items.get(path)
            current = None if item is None else self._pair(path, item)
            return self._hub.add_key(
                f"watch({key!r}) on {self}", path, strip, current, self._space.revision
            )

    def _watch_tree(self, prefix: str) -> Watch[list[KVPair]]:
        base = self._path(prefix)
        strip = self._strip()
        with self._space.cond:
            current = [
                KVPair(p[strip:], it.value, it.revision)
                for p, it in sorted(self._space.items.items())
                if base == "" or p.startswith(base + "/")
            ]
            return self._hub.add_tree(
                f"watch_tree({prefix!r}) on {self}", base, strip, current, self._space.revision
            )

    def _changed_since(self, key: str, since: int, *, tree: bool) -> bool | None:
        base = self._path(key)
        with self._space.cond:
            if since < self._space.forgotten:
                return None
            return any(
                rev > since and (path == base if not tree else below(path, base))
                for rev, path in self._space.deletions
            )

    def _lock(self, key: str, value: bytes, ttl: float) -> Lock:
        return _MemoryLock(self, key, value, ttl)

    def _close(self) -> None:
        sp = self._space
        for lock in list(self._locks):
            lock._cleanup_lost() if lock.lost.is_set() else lock.release()
        with sp.cond:
            sp.remove(sorted(p for p, it in sp.items.items() if it.owner is self))
            if self._hub in sp.hubs:
                sp.hubs.remove(self._hub)
        self._hub.close_all()


class _MemoryLock(Lock):
    store: MemoryStore

    def _acquire(self, timeout: float | None) -> int | None:
        store = self.store
        sp = store._space
        path = store._path(self.key)
        deadline = None if timeout is None else time.monotonic() + timeout
        with sp.cond:
            while path in sp.lock_holders:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                sp.cond.wait(remaining)
                store._check_open()
            token = sp.lock_tokens.get(path, 0) + 1
            sp.lock_tokens[path] = token
            sp.lock_holders[path] = self
            store._write(path, self.value, self)
            store._locks.add(self)
            return token

    def _release(self) -> None:
        store = self.store
        sp = store._space
        path = store._path(self.key)
        with sp.cond:
            store._locks.discard(self)
            if sp.lock_holders.get(path) is self:
                del sp.lock_holders[path]
                item = sp.items.get(path)
                if item is not None and item.owner is self:
                    sp.remove([path])
            sp.cond.notify_all()
