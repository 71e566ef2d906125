"""Consul watches on shared blocking queries: a store's watches cost a few threads, not one each.

Consul has no watch stream: a watch is a loop of blocking queries (``GET /v1/kv/...?index=N``),
each holding a thread and a connection for up to its ``wait``. Pollers share them:

- every watch on the same key, or every tree watch on the same prefix, shares one poller;
- the first :data:`SOLO_LIMIT` distinct keys get a poller each (a single-key query);
- further keys share one *overflow* poller whose query is a recursive one on the common prefix
  of its keys; each answer is handed to the keys it covers. If the token may not list that
  prefix (HTTP 403), its keys fall back to a poller each.

A watch opened while its poller's query is in flight may get that query's answer, which can be
older than the watch's own first read. Consul's indexes order them: the watch's first read
returned the index of the whole KV store (a key) or of the prefix (a tree), and an answer read
before it carries an index no higher, so such answers are dropped (``Sub.floor``). A poller
whose query changes (a key joined or left the overflow poller) starts with a read that does not
block, so no change between two plans goes unseen.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pykv import KVPair, PermissionDeniedError, PyKVError, UnavailableError, Watch
from pykv.kit import TreeFeed

from ._transport import Transport

__all__ = ["SOLO_LIMIT", "KeySub", "Poller", "Sub", "TreeSub", "WatchMux"]

log = logging.getLogger("pykv.consul")

#: Distinct keys that get a blocking query (thread and connection) of their own; beyond, keys
#: share one recursive query on their common prefix.
SOLO_LIMIT = 8

#: The longest pause between failed queries: short, so that a watch sees the first change
#: soon after a new leader is elected (each retry fails fast while there is none).
MAX_BACKOFF = 0.5

StartThread = Callable[[str, Callable[[], None]], threading.Thread]


def common_prefix(paths: list[str]) -> str:
    """The longest string every path starts with (characters, not path components: the
    narrowest recursive query)."""
    first, last = min(paths), max(paths)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


class Sub:
    """One watch's subscription: its path and what it last delivered."""

    __slots__ = ("floor", "joined", "path", "watch")

    def __init__(self, watch: Watch[Any], path: str, floor: int) -> None:
        self.watch = watch
        self.path = path
        #: the index of the watch's first read: answers of queries begun before the watch
        #: joined are dropped unless newer
        self.floor = floor
        #: the poller's query count when the watch joined
        self.joined = 0

    def offer(self, data: Any, at: int, query: int) -> None:
        if query <= self.joined and at <= self.floor:
            return  # an answer possibly older than the watch's first read
        self.deliver(data, at)

    def deliver(self, data: Any, at: int) -> None:
        raise NotImplementedError


class KeySub(Sub):
    """A ``watch(key)``: delivers the key's pair when it differs from the last one."""

    __slots__ = ("key", "last")

    def __init__(
        self, watch: Watch[KVPair | None], key: str, path: str, current: KVPair | None, floor: int
    ) -> None:
        super().__init__(watch, path, floor)
        self.key = key
        self.last = current
        watch._emit(current)

    def deliver(self, data: Any, at: int) -> None:
        entry: dict[str, Any] | None = data
        pair = None
        if entry is not None:
            pair = KVPair(self.key, entry.get("Value") or b"", entry["ModifyIndex"])
        if pair != self.last:  # writes to other keys wake a query too: compare
            self.last = pair
            self.watch._emit(pair)


class TreeSub(Sub):
    """A ``watch_tree(prefix)``: every answer is the whole tree; its feed delivers a snapshot
    (with the delta) when it differs."""

    __slots__ = ("answers", "feed", "to_pairs")

    def __init__(
        self,
        watch: Watch[list[KVPair]],
        path: str,
        current: list[KVPair],
        floor: int,
        to_pairs: Callable[[list[dict[str, Any]] | None], list[KVPair]],
    ) -> None:
        super().__init__(watch, path, floor)
        self.feed = TreeFeed(watch, "", 0, current, 0)
        self.to_pairs = to_pairs
        self.answers = 0

    def deliver(self, data: Any, at: int) -> None:
        self.answers += 1
        self.feed.reset_relative(self.to_pairs(data), self.answers, resynced=False)


class Poller:
    """One thread of blocking queries serving the subscriptions of one or more paths."""

    def __init__(self, mux: WatchMux, tree: bool, overflow: bool = False) -> None:
        self.mux = mux
        self.tree = tree
        self.overflow = overflow
        self.subs: dict[str, list[Sub]] = {}
        #: queries begun so far (a subscription's ``joined`` is compared with it)
        self.queries = 0
        self.retired = False

    def name(self) -> str:
        paths = sorted(self.subs)
        what = "watch_tree" if self.tree else "watch"
        if len(paths) == 1:
            return f"{what} {paths[0]!r}"
        return f"{what} of {len(paths)} keys below {common_prefix(paths)!r}"

    def plan(self) -> tuple[str, bool]:
        """The query that covers every path: (path, recurse)."""
        paths = list(self.subs)
        if self.tree:
            return paths[0], True
        if len(paths) == 1:
            return paths[0], False
        return common_prefix(paths), True

    def run(self) -> None:
        mux = self.mux
        transport = mux.transport.clone(f"{self.name()} on {mux.owner}")
        plan: tuple[str, bool] | None = None
        index = 0
        failing_since: float | None = None
        backoff = 0.05
        try:
            while not mux.stop.is_set():
                with mux.lock:
                    if not self.subs:
                        self.retire()
                        return
                    current = self.plan()
                    self.queries += 1
                    query = self.queries
                    what = self.name()
                if current != plan:
                    plan, index = current, 0  # a new query: read once without blocking
                path, recurse = plan
                try:
                    at, data = transport.kv_get(
                        what, path, recurse=recurse, index=index, wait=mux.wait
                    )
                except PermissionDeniedError as exc:
                    if self.overflow and recurse:
                        mux.split(self, exc)
                        return
                    self.fail(exc)
                    return
                except PyKVError as exc:
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > mux.give_up:
                        self.fail(exc)
                        return
                    log.info("%s: %s (retrying in %.2f s)", mux.owner, exc, backoff)
                    mux.stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                    # Read once without blocking next: that call fails over from agent to
                    # agent within a share of the timeout each, where a blocking query would
                    # wait out its whole wait on a next agent that is cut off too.
                    index = 0
                    continue
                failing_since, backoff = None, 0.05
                # Consul's rules: an index that goes backwards (a snapshot restore, a new
                # leader with a different view) restarts from the answer's index; never < 1.
                index = max(1, at)
                with mux.lock:
                    self.dispatch(plan, at, data, query)
        except Exception as exc:  # never end silently: the watches get the error
            log.exception("%s: %s failed", mux.owner, self.name())
            self.fail(UnavailableError(f"{self.name()} on {mux.owner} failed: {exc!r}"))
        finally:
            transport.close()

    def dispatch(self, plan: tuple[str, bool], at: int, data: Any, query: int) -> None:
        path, recurse = plan
        if self.tree:
            for sub in self.subs.get(path, ()):
                sub.offer(data, at, query)
            return
        if not recurse:
            for sub in self.subs.get(path, ()):
                sub.offer(data, at, query)
            return
        entries = {entry["Key"]: entry for entry in data or ()}
        for key_path, subs in self.subs.items():
            if key_path.startswith(path):  # joined after the query began: not in it
                entry = entries.get(key_path)
                for sub in subs:
                    sub.offer(entry, at, query)

    def retire(self) -> None:
        """Called with the mux's lock held."""
        self.retired = True
        self.mux.forget(self)

    def fail(self, exc: PyKVError) -> None:
        with self.mux.lock:
            subs = [sub for group in self.subs.values() for sub in group]
            self.subs.clear()
            self.retire()
        for sub in subs:
            sub.watch._fail(exc)


class WatchMux:
    """The pollers of one store."""

    def __init__(
        self,
        owner: str,
        transport: Transport,
        *,
        wait: float,
        give_up: float,
        stop: threading.Event,
        start_thread: StartThread,
    ) -> None:
        self.owner = owner
        self.transport = transport
        self.wait = wait
        self.give_up = give_up
        self.stop = stop
        self.start_thread = start_thread
        self.lock = threading.RLock()
        self.pollers: dict[tuple[bool, str], Poller] = {}  # (tree, path) -> its poller
        self.solo = 0  # key pollers serving one path by design (not the overflow one)
        self.overflow: Poller | None = None
        self.listing_denied = False

    def threads(self) -> int:
        """Pollers running (each is a thread and a connection)."""
        with self.lock:
            return len({id(p) for p in self.pollers.values()})

    def join(self, sub: Sub, *, tree: bool) -> None:
        """Serve ``sub`` from a poller (starting one if needed)."""
        with self.lock:
            poller = self.pollers.get((tree, sub.path))
            start = False
            if poller is None:
                if tree or self.solo < SOLO_LIMIT or self.listing_denied:
                    poller, start = Poller(self, tree), True
                    self.solo += not tree
                elif self.overflow is None:
                    poller = self.overflow = Poller(self, tree=False, overflow=True)
                    start = True
                else:
                    poller = self.overflow
                self.pollers[(tree, sub.path)] = poller
            sub.joined = poller.queries
            poller.subs.setdefault(sub.path, []).append(sub)
            if start:
                self._start(poller)

    def leave(self, sub: Sub, *, tree: bool) -> None:
        """Stop serving ``sub``; its poller ends after its query when nothing is left."""
        with self.lock:
            poller = self.pollers.get((tree, sub.path))
            if poller is None:
                return
            subs = poller.subs.get(sub.path, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                poller.subs.pop(sub.path, None)
                del self.pollers[(tree, sub.path)]

    def forget(self, poller: Poller) -> None:
        """A poller ends (lock held): no path points to it any more."""
        for key in [k for k, p in self.pollers.items() if p is poller]:
            del self.pollers[key]
        if poller is self.overflow:
            self.overflow = None
        elif not poller.tree:
            self.solo -= 1

    def split(self, poller: Poller, exc: PyKVError) -> None:
        """The overflow poller may not list its prefix: a poller per key from now on."""
        log.warning(
            "%s: %s (%s); watching each of these keys with a query of its own",
            self.owner,
            poller.name(),
            exc,
        )
        with self.lock:
            self.listing_denied = True
            subs = [sub for group in poller.subs.values() for sub in group]
            poller.subs.clear()
            poller.retire()
            for sub in subs:
                self.join(sub, tree=False)

    def _start(self, poller: Poller) -> None:
        try:
            self.start_thread(f"pykv-consul-{poller.name()}", poller.run)
        except BaseException:
            poller.subs.clear()
            poller.retire()
            raise
