"""Coordination recipes built only on the :class:`~pykv.Store` contract, so every backend has them.

    from pykv.recipes import Counter, Election, Group, Partitioner, Semaphore

    election = Election(store, "jobs/scheduler")
    if election.campaign(b"host-1", timeout=30):      # blocks until leader (or timeout)
        run_scheduler(fencing_token=election.token)

Each recipe uses plain keys below its ``name`` (so the backend's own tools show them), TTL keys
for liveness and pykv's :class:`~pykv.Lock` for mutual exclusion:

============  =========================================================================
Election      the lock at ``name``; its value is the leader's value
Group         TTL key ``name/MEMBER`` holding the member's metadata
Semaphore     TTL keys ``name/holders/ID``, counted under the lock ``name/mutex``
Barrier       TTL keys ``name/arrived/ID``, the key ``name/ready`` once ``count`` arrived
Counter       the key ``name`` holding a decimal integer, changed by compare-and-swap
============  =========================================================================

The async forms are in :mod:`pykv.aio`.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import (
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
    LockError,
    LockLostError,
    OperationTimeoutError,
    PyKVError,
    WatchClosedError,
)
from ._keys import join, normalize_key, to_bytes
from ._store import KVPair, Lock, Store, Value, Watch

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "Barrier",
    "Counter",
    "Election",
    "Group",
    "HashRing",
    "Partitioner",
    "Semaphore",
    "derive_watch",
]

log = logging.getLogger("pykv.recipes")

S = TypeVar("S")
T = TypeVar("T")

#: Default TTL (seconds) of the keys and locks recipes hold: how long a dead holder lingers.
DEFAULT_TTL = 15.0
#: Longest single wait inside a recipe loop, so a change missed by a watch is re-read anyway
#: and an abort request is noticed promptly.
_POLL = 0.5
_NEVER = threading.Event()  # never set: the abort signal of plain sync calls


def _deadline(timeout: float | None) -> float | None:
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be a number >= 0 or None, not {timeout!r}")
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _wait_slice(deadline: float | None) -> float:
    remaining = _remaining(deadline)
    return _POLL if remaining is None else min(_POLL, remaining)


def _segment(name: str, what: str) -> str:
    """A single key segment (member ids): validated like a key, and without ``/``."""
    segment = normalize_key(name)
    if "/" in segment:
        raise ValueError(f"{what} must be one key segment without '/', not {name!r}")
    return segment


def derive_watch(
    source: Watch[S], fn: Callable[[S], T], description: str, *, dedupe: bool = False
) -> Watch[T]:
    """A watch whose events are ``fn(event)`` of ``source``'s, fed from ``source``'s producer
    thread (no thread of its own). Closing it closes ``source``; a failure of either (or of
    ``fn``) ends it with that error. With ``dedupe``, an event equal to the previous is dropped.
    """
    out: Watch[T] = Watch(description, on_close=source.close)
    mutex = threading.Lock()  # one pump at a time keeps events in order
    last: list[T] = []

    def pump() -> None:
        with mutex:
            while True:
                try:
                    event = source.get(timeout=0)
                except TimeoutError:
                    return
                except WatchClosedError:
                    out.close()
                    return
                except BaseException as exc:  # noqa: BLE001 - the source failed, so does this watch
                    out._fail(exc)
                    return
                try:
                    mapped = fn(event)
                except Exception as exc:  # noqa: BLE001 - reported to the consumer
                    out._fail(exc)
                    source.close()
                    return
                if dedupe and last and last[0] == mapped:
                    continue
                last[:] = [mapped]
                out._emit(mapped)

    source._set_listener(pump)
    return out


class _Waiting:
    """A watch used only to wake a waiting loop early; the loop re-reads the state anyway."""

    def __init__(self, watch: Watch[Any]) -> None:
        self.watch = watch

    def wait(self, deadline: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            self.watch.get(timeout=_wait_slice(deadline))


# -- Election --------------------------------------------------------------------------------


class Election:
    """Leader election on ``name``: at most one leader at a time, across processes and hosts.

    Built on :class:`~pykv.Lock`: the leader holds the lock at ``name``, whose value (readable
    by anyone with :meth:`leader`) is the leader's ``value``. A leader that dies is replaced
    within ``ttl`` plus the backend's slack. :attr:`token` is the lock's fencing token, which
    strictly increases with every new leadership; pass it to whatever the leader writes to.
    """

    def __init__(self, store: Store, name: str, *, ttl: float = DEFAULT_TTL) -> None:
        self.store = store
        self.name = normalize_key(name)
        self.ttl = ttl
        self._lock: Lock | None = None
        self._mutex = threading.RLock()

    def __repr__(self) -> str:
        return f"<Election {self.name!r} on {self.store} leader={self.is_leader}>"

    def campaign(self, value: Value = b"", timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (forever when None) to become the leader with
        ``value``. True once leader; False on timeout. Raises :class:`~pykv.LockError` when
        already leader."""
        data = to_bytes(value)
        with self._mutex:
            if self._lock is not None and self._lock.held:
                raise LockError(f"already the leader of {self.name!r}")
            if self._lock is None or self._lock.value != data:
                self._lock = self.store.lock(self.name, value=data, ttl=self.ttl)
            lock = self._lock
        return lock.acquire(timeout=timeout)

    def resign(self) -> None:
        """Give leadership up (a no-op when not leader, or when leadership was lost)."""
        with self._mutex:
            lock = self._lock
            if lock is None:
                return
            try:
                lock.release()
            except LockLostError:
                log.debug("resigned from %r after losing it", self.name)
            except LockError:
                pass  # not held: nothing to give up

    @property
    def is_leader(self) -> bool:
        """True while this object is the leader and has not lost it."""
        lock = self._lock
        return lock is not None and lock.held

    @property
    def lost(self) -> threading.Event:
        """Set when leadership is lost while held (session expired, key deleted, backend
        unreachable for longer than the TTL); cleared by the next successful campaign."""
        lock = self._lock
        return lock.lost if lock is not None else threading.Event()

    @property
    def token(self) -> int | None:
        """The fencing token of the current (or last) leadership; None before the first."""
        lock = self._lock
        return None if lock is None else lock.token

    def leader(self) -> bytes | None:
        """The current leader's value, or None when there is no leader."""
        try:
            return self.store.get(self.name).value
        except KeyNotFoundError:
            return None

    def observe(self) -> Watch[bytes | None]:
        """A watch of the leader's value: first the current one (None: no leader), then each
        change."""
        return derive_watch(
            self.store.watch(self.name),
            lambda pair: None if pair is None else pair.value,
            f"leader of {self.name!r} on {self.store}",
            dedupe=True,
        )

    def __enter__(self) -> Self:
        if not self.campaign():
            raise LockError(f"campaign for {self.name!r} ended without leadership")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.resign()


# -- Group -----------------------------------------------------------------------------------


class Group:
    """Group membership: members are TTL keys ``name/MEMBER`` holding their metadata.

    A member lives as long as the store that joined it; one whose process dies disappears
    within its ``ttl`` plus the backend's slack.
    """

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = normalize_key(name)
        self._joined: set[str] = set()
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"<Group {self.name!r} on {self.store} joined={sorted(self._joined)}>"

    def _key(self, member_id: str) -> str:
        return join(self.name, member_id)

    def join(self, member_id: str, metadata: Value = b"", *, ttl: float = DEFAULT_TTL) -> None:
        """Join as ``member_id`` (one key segment). Joining again through the same object
        updates the metadata; an id held by another live member raises
        :class:`~pykv.KeyExistsError`."""
        member = _segment(member_id, "a member id")
        data = to_bytes(metadata)
        with self._mutex:
            if member in self._joined:
                self.store.put(self._key(member), data, ttl=ttl)
                return
            try:
                self.store.atomic_put(self._key(member), data, None, ttl=ttl)
            except KeyExistsError as exc:
                raise KeyExistsError(
                    f"member {member!r} of group {self.name!r} is already taken on {self.store}"
                ) from exc
            self._joined.add(member)

    def leave(self, member_id: str | None = None) -> None:
        """Leave as ``member_id``, or as every member this object joined."""
        with self._mutex:
            members = [_segment(member_id, "a member id")] if member_id else list(self._joined)
            for member in members:
                self.store.delete(self._key(member))
                self._joined.discard(member)

    @property
    def joined(self) -> frozenset[str]:
        """The member ids this object joined as."""
        return frozenset(self._joined)

    def _members(self, pairs: Iterable[KVPair]) -> dict[str, bytes]:
        base = len(self.name) + 1
        return {p.key[base:]: p.value for p in pairs if "/" not in p.key[base:]}

    def members(self) -> dict[str, bytes]:
        """The live members: id to metadata, sorted by id."""
        try:
            return self._members(self.store.list(self.name))
        except KeyNotFoundError:
            return {}

    def watch(self) -> Watch[dict[str, bytes]]:
        """A watch of :meth:`members`: first the current members, then each change."""
        return derive_watch(
            self.store.watch_tree(self.name),
            self._members,
            f"members of {self.name!r} on {self.store}",
            dedupe=True,
        )


# -- Partitioner -----------------------------------------------------------------------------


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing of items over members, with ``vnodes`` points per member.

    When a member joins or leaves, only about 1/N of the items change owner.
    """

    def __init__(self, members: Iterable[str], *, vnodes: int = 64) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, not {vnodes!r}")
        self.members = tuple(sorted(set(members)))
        points = sorted(
            (_hash(f"{m}#{i}".encode()), m) for m in self.members for i in range(vnodes)
        )
        self._points = [p for p, _ in points]
        self._owners = [m for _, m in points]

    def __repr__(self) -> str:
        return f"<HashRing {len(self.members)} members>"

    def owner(self, item: Value) -> str:
        """The member that owns ``item``. Raises :class:`LookupError` when there are none."""
        if not self._points:
            raise LookupError("the ring has no members")
        index = bisect.bisect(self._points, _hash(to_bytes(item))) % len(self._points)
        return self._owners[index]


class Partitioner:
    """Items spread over the live members of a :class:`Group` by consistent hashing.

    ``member_id`` is who "me" is in :meth:`owns` (default: the one member the group object
    joined as). Each call reads the live members once; take :meth:`ring` to place many items.
    """

    def __init__(self, group: Group, *, member_id: str | None = None, vnodes: int = 64) -> None:
        self.group = group
        self.member_id = member_id
        self.vnodes = vnodes

    def ring(self) -> HashRing:
        """A ring over the members alive now."""
        return HashRing(self.group.members(), vnodes=self.vnodes)

    def owner(self, item: Value) -> str:
        """The live member that owns ``item``."""
        return self.ring().owner(item)

    def owns(self, item: Value) -> bool:
        """True when ``item`` belongs to this member."""
        me = self.member_id
        if me is None:
            joined = self.group.joined
            if len(joined) != 1:
                raise ValueError("pass member_id: the group object did not join as one member")
            (me,) = joined
        return self.owner(item) == me


# -- Semaphore -------------------------------------------------------------------------------


class Semaphore:
    """At most ``limit`` holders at a time across processes and hosts.

    Holders are TTL keys ``name/holders/ID``; a newcomer counts them and adds its own under the
    lock ``name/mutex``, so two can never both take the last slot. A holder that dies frees its
    slot within ``ttl`` plus the backend's slack.
    """

    def __init__(
        self, store: Store, name: str, limit: int, *, value: Value = b"", ttl: float = DEFAULT_TTL
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, not {limit!r}")
        self.store = store
        self.name = normalize_key(name)
        self.limit = limit
        self.value = to_bytes(value)
        self.ttl = ttl
        self._holders = join(self.name, "holders")
        self._held: str | None = None
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"<Semaphore {self.name!r} limit={self.limit} held={self.held}>"

    @property
    def held(self) -> bool:
        """True while this object holds a slot."""
        return self._held is not None

    def holders(self) -> list[bytes]:
        """The values of the current holders."""
        try:
            return [p.value for p in self.store.list(self._holders)]
        except KeyNotFoundError:
            return []

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (forever when None) for a slot. True if acquired."""
        return self._acquire(timeout, _NEVER)

    def _acquire(self, timeout: float | None, abort: threading.Event) -> bool:
        deadline = _deadline(timeout)
        with self._mutex:
            if self._held is not None:
                raise LockError(f"semaphore {self.name!r} is already held by this object")
            key = join(self._holders, uuid.uuid4().hex)
            mutex = self.store.lock(join(self.name, "mutex"), ttl=self.ttl)
            # Opened first, so a slot freed while we count is still seen.
            with self.store.watch_tree(self._holders) as changes:
                waiting = _Waiting(changes)
                while not abort.is_set():
                    if mutex.acquire(timeout=_wait_slice(deadline)):
                        try:
                            if len(self.holders()) < self.limit:
                                self.store.put(key, self.value, ttl=self.ttl)
                                self._held = key
                        finally:
                            try:
                                mutex.release()
                            except LockLostError:  # the count may be stale: do not trust it
                                if self._held is not None:
                                    self.store.delete(key)
                                    self._held = None
                        if self._held is not None:
                            return True
                        waiting.wait(deadline)
                    if deadline is not None and time.monotonic() >= deadline:
                        return False
            return False

    def release(self) -> None:
        """Free the slot. Raises :class:`~pykv.LockError` when not held."""
        with self._mutex:
            if self._held is None:
                raise LockError(f"semaphore {self.name!r} is not held by this object")
            try:
                self.store.delete(self._held)
            finally:
                self._held = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._held is not None:
            self.release()


# -- Barrier ---------------------------------------------------------------------------------


class Barrier:
    """``count`` parties wait until all have arrived, across processes and hosts.

    Arrivals are TTL keys ``name/arrived/ID``, added and counted under the lock ``name/mutex``;
    the arrival that makes ``count`` writes ``name/ready``, which releases everyone. A barrier
    is used once: :meth:`reset` clears it for another round. A party that dies before the
    barrier opens stops counting within ``ttl`` plus the backend's slack.
    """

    def __init__(self, store: Store, name: str, count: int, *, ttl: float = DEFAULT_TTL) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an int >= 1, not {count!r}")
        self.store = store
        self.name = normalize_key(name)
        self.count = count
        self.ttl = ttl
        self._arrived = join(self.name, "arrived")
        self._ready = join(self.name, "ready")

    def __repr__(self) -> str:
        return f"<Barrier {self.name!r} count={self.count}>"

    def arrived(self) -> int:
        """How many live parties are waiting now."""
        try:
            return len(self.store.list(self._arrived))
        except KeyNotFoundError:
            return 0

    @property
    def is_open(self) -> bool:
        """True once ``count`` parties have arrived (until :meth:`reset`)."""
        return self.store.exists(self._ready)

    def wait(self, timeout: float | None = None) -> bool:
        """Arrive and wait up to ``timeout`` seconds (forever when None) for the others.
        True when the barrier opened; False on timeout, after withdrawing this arrival."""
        return self._wait(timeout, _NEVER)

    def _wait(self, timeout: float | None, abort: threading.Event) -> bool:
        deadline = _deadline(timeout)
        me = join(self._arrived, uuid.uuid4().hex)
        mutex = self.store.lock(join(self.name, "mutex"), ttl=self.ttl)
        with self.store.watch(self._ready) as ready:
            if not mutex.acquire(timeout=_remaining(deadline)):
                return False
            try:
                self.store.put(me, b"", ttl=self.ttl)
                if self.arrived() >= self.count:
                    self.store.put(self._ready, b"")
            finally:
                mutex.release()
            while not abort.is_set():
                try:
                    if ready.get(timeout=_wait_slice(deadline)) is not None:
                        self.store.delete(me)
                        return True
                except TimeoutError:
                    pass
                if deadline is not None and time.monotonic() >= deadline:
                    break
        # Withdraw under the mutex, so the barrier cannot open on an arrival being withdrawn.
        with mutex:
            self.store.delete(me)
            return self.store.exists(self._ready)

    def reset(self) -> None:
        """Clear the barrier for another round (parties still waiting are dropped)."""
        self.store.delete_tree(self.name)


# -- Counter ---------------------------------------------------------------------------------


class Counter:
    """An integer at key ``name`` (decimal text), changed atomically by compare-and-swap.

    No increment is lost under any number of concurrent writers in any number of processes.
    """

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = normalize_key(name)

    def __repr__(self) -> str:
        return f"<Counter {self.name!r} on {self.store}>"

    def _parse(self, pair: KVPair) -> int:
        try:
            return int(pair.value.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise PyKVError(
                f"counter {self.name!r} on {self.store} holds {pair.value[:40]!r}, not an integer"
            ) from None

    def value(self) -> int:
        """The current value (0 when the key is absent)."""
        try:
            return self._parse(self.store.get(self.name))
        except KeyNotFoundError:
            return 0

    def add(self, delta: int = 1, *, timeout: float | None = None) -> int:
        """Add ``delta`` and return the new value. Retries lost compare-and-swap races with
        jittered backoff for up to ``timeout`` seconds (default: 6 times the store timeout),
        then raises :class:`~pykv.OperationTimeoutError`."""
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"delta must be an int, not {delta!r}")
        deadline = _deadline(self.store.timeout * 6 if timeout is None else timeout)
        attempt = 0
        while True:
            try:
                try:
                    pair = self.store.get(self.name)
                except KeyNotFoundError:
                    self.store.atomic_put(self.name, str(delta), None)
                    return delta
                new = self._parse(pair) + delta
                self.store.atomic_put(self.name, str(new), pair)
                return new
            except (KeyModifiedError, KeyExistsError, KeyNotFoundError):
                attempt += 1
                if deadline is not None and time.monotonic() >= deadline:
                    raise OperationTimeoutError(
                        f"counter {self.name!r} on {self.store}: {attempt} compare-and-swap "
                        "attempts lost to other writers"
                    ) from None
                # Randomised backoff breaks the lock-step of writers that keep colliding.
                time.sleep(random.uniform(0, min(0.2, 0.002 * 2 ** min(attempt, 7))))  # noqa: S311

    def set(self, value: int) -> None:
        """Overwrite the value."""
        self.store.put(self.name, str(int(value)))
