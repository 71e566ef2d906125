"""The store interface: :class:`Store`, :class:`KVPair`, :class:`Watch` and :class:`Lock`.

This module is the specification every backend implements; the semantics below are the pykv
contract and the shared conformance suite (:mod:`pykv.testing`) checks them on every backend.

Keys
    A key is a ``/``-separated path of one or more segments. Leading and trailing ``/`` are
    ignored, so ``a/b``, ``/a/b`` and ``a/b/`` are one key. Empty segments (``a//b``), ``.`` and
    ``..`` segments, unprintable characters and keys over 1024 UTF-8 bytes raise
    :class:`~pykv.InvalidKeyError` before any I/O; its message cuts long keys. A key is
    printable text (``str.isprintable``): no Unicode "Other" character (controls C0, DEL and
    C1, format characters such as the bidi controls U+202A-U+202E and U+2066-U+2069 and
    zero-width joiners, surrogates, private use, unassigned) and no "Separator" (U+2028,
    U+2029, no-break and other wide spaces) but the ASCII space: such keys display as other
    keys, and Consul's HTTP API cannot read them.
    Directories are implicit: only leaf keys exist, and a key may have both a value and
    children. Keys live at their natural path below the store's prefix and hold the raw value,
    so the backend's own tools read and write the same data; lock bookkeeping and pykv metadata
    live elsewhere.

Values
    Values are ``bytes``; a ``str`` is stored as its UTF-8 encoding. Empty values are allowed.
    Another type raises :class:`~pykv.InvalidTypeError` (a TypeError), a ``str`` that is not
    valid Unicode (a lone surrogate) :class:`~pykv.InvalidArgumentError` (a ValueError).

TTLs and timeouts
    A ``ttl`` is a finite number of seconds, > 0 and at most :data:`MAX_TTL` (one day: a TTL
    key lives as long as its store anyway; the TTL only bounds how long it outlives a dead
    owner). A wait's ``timeout`` (``Watch.get``, ``Lock.acquire``) is None (forever) or a
    number >= 0. Anything else raises :class:`~pykv.InvalidArgumentError` (a ValueError), or
    :class:`~pykv.InvalidTypeError` (a TypeError) for a non-number, before any I/O.

Revisions
    Every :class:`KVPair` carries a ``revision``: an int that changes on every write of the key
    and grows monotonically (Consul ModifyIndex, etcd mod revision / modifiedIndex, ZooKeeper
    mzxid). Compare-and-swap compares it.

Timeouts
    Every call is bounded by the store's ``timeout`` option (default 10 s). An unreachable
    backend raises :class:`~pykv.UnavailableError` or :class:`~pykv.OperationTimeoutError`
    naming the backend and its address; nothing hangs.
"""

from __future__ import annotations

import abc
import builtins
import collections
import enum
import logging
import threading
import time
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from ._errors import (
    InvalidArgumentError,
    InvalidRevisionError,
    InvalidTypeError,
    KeyNotFoundError,
    LockError,
    LockLostError,
    OperationTimeoutError,
    PyKVError,
    UnavailableError,
    WatchClosedError,
    WatchTimeoutError,
)
from ._keys import (
    _CACHED_MAX_CHARS,
    _normalize_key,
    join,
    normalize_key,
    normalize_prefix,
    to_bytes,
)
from ._options import StoreOptions
from ._url import StoreURL

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["MAX_TTL", "Capability", "KVPair", "Lock", "Store", "TreeChange", "Value", "Watch"]

log = logging.getLogger("pykv")

Value = bytes | bytearray | memoryview | str
T = TypeVar("T")

#: The largest TTL (seconds) a key or lock may have: one day. Every backend keeps a TTL key
#: alive while its store is open, so a TTL only bounds how long the key outlives a dead owner;
#: longer ones overflow timers (sqlite, threading) and exceed Consul's session limit.
MAX_TTL = 86400.0


@dataclass(frozen=True, slots=True)
class KVPair:
    """A key, its value and its revision.

    ``key`` is relative to the store's prefix, without leading or trailing ``/``.
    ``revision`` changes on every write of the key and grows monotonically.
    """

    key: str
    value: bytes
    revision: int


_new_object = object.__new__
_set_key = vars(KVPair)["key"].__set__
_set_value = vars(KVPair)["value"].__set__
_set_revision = vars(KVPair)["revision"].__set__


def new_pair(key: str, value: bytes, revision: int) -> KVPair:
    """``KVPair(key, value, revision)`` without the frozen dataclass's ``__init__`` (which
    sets each field through ``object.__setattr__``): a third faster, for drivers' hot paths."""
    pair: KVPair = _new_object(KVPair)
    _set_key(pair, key)
    _set_value(pair, value)
    _set_revision(pair, revision)
    return pair


@dataclass(frozen=True, slots=True)
class TreeChange:
    """One event of ``watch_tree(prefix, events=True)``: what changed below the prefix.

    ``added`` and ``modified`` hold the new pairs, ``removed`` the keys that are gone, each
    sorted by key. When ``reset`` is True (the first event, and a resync), ``added`` is the
    whole current state and the consumer drops every key it knew that is not in it;
    ``modified`` and ``removed`` are then empty.
    """

    added: tuple[KVPair, ...] = ()
    modified: tuple[KVPair, ...] = ()
    removed: tuple[str, ...] = ()
    reset: bool = False


class Capability(str, enum.Enum):
    """What a backend can do. Declared by each store class; checked by ``open_store(require=)``.

    A declared capability whose operation raises :class:`~pykv.NotSupportedError` is a bug,
    and the conformance suite fails it.
    """

    #: get/put/delete/exists/list/delete_tree.
    KV = "kv"
    #: atomic_put/atomic_delete (compare-and-swap on revisions).
    ATOMIC = "atomic"
    #: put(..., ttl=) ephemeral keys that live as long as the writing store.
    TTL = "ttl"
    #: watch(key).
    WATCH = "watch"
    #: watch_tree(prefix).
    WATCH_TREE = "watch_tree"
    #: lock(key) with fencing tokens.
    LOCK = "lock"
    #: data, TTL keys, watches and locks shared between processes (and hosts for servers).
    SHARED = "shared"
    #: data survives the close of every store and a restart of the process.
    PERSISTENT = "persistent"

    def __str__(self) -> str:
        return self.value


class Closing:
    """``with obj:`` calls ``obj.close()`` on the way out (Store, Watch and friends)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Watch(Closing, Generic[T]):
    """A stream of events: an iterator and a context manager.

    The first event is the current state: the :class:`KVPair`, or ``None`` when the key is
    absent (watching a key that does not exist yet is allowed); for ``watch_tree`` the full
    sorted list below the prefix, possibly empty. Then one event for each change seen. Rapid
    changes may be coalesced, but the last state is always delivered, and a deletion always
    produces ``None`` (or a snapshot without the key). Every ``watch_tree`` event is a full
    snapshot, never a delta. A watch survives reconnects of the backend. When it cannot go on,
    iteration raises the error; it never stops silently, and the error is never a
    :class:`TimeoutError` (which :meth:`get` raises only for "no event yet"), so a loop that
    retries on timeouts ends. :attr:`error` holds it. :meth:`close` ends the iteration.

    :attr:`resynced` tells whether the event last returned by :meth:`get` (or the iteration)
    is a resync: the current state delivered because the backend could not tell what changed
    since the ``since`` revision the watch was opened with (see :meth:`Store.watch`), or, on
    the backends that know it (etcd v3 compaction, sqlite), a re-read after the watch lost
    track of the backend's change history mid-stream.

    Drivers feed a watch with :meth:`_emit` and :meth:`_fail` from their own threads.
    """

    #: True when the event last returned is a resync (see :meth:`Store.watch`).
    resynced: bool = False

    def __init__(self, description: str, on_close: Callable[[], None] | None = None) -> None:
        self.description = description
        self._on_close = on_close
        self._events: collections.deque[tuple[T, bool]] = collections.deque()
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self._listener: Callable[[], None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Watch {self.description} {state}>"

    # -- consumer side -------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> T:
        """The next event.

        Raises :class:`~pykv.WatchTimeoutError` (a :class:`TimeoutError`) when none comes
        within ``timeout`` seconds (None: wait forever) and the watch goes on; the watch's
        error when it failed, never a :class:`TimeoutError` (a timeout that ended the watch is
        raised as :class:`~pykv.UnavailableError` caused by it), so ``except TimeoutError:
        continue`` loops end; and :class:`~pykv.WatchClosedError` once closed.
        """
        limit = check_wait(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        with self._cond:
            while not self._events:
                if self._closed:
                    raise WatchClosedError(f"{self.description} is closed")
                if self._error is not None:
                    raise self._error
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WatchTimeoutError(f"no event on {self.description} within {timeout} s")
                self._cond.wait(remaining)
            event, self.resynced = self._events.popleft()
            return event

    @property
    def error(self) -> BaseException | None:
        """The error that ended this watch, or None while it goes on (or was closed)."""
        return self._error

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            return self.get()
        except WatchClosedError:
            raise StopIteration from None

    def close(self) -> None:
        """End the watch and release its resources. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._events.clear()
            self._cond.notify_all()
        if self._on_close is not None:
            try:
                self._on_close()
            except Exception:  # closing must not fail the caller
                log.exception("error while closing %s", self.description)

    @property
    def closed(self) -> bool:
        return self._closed

    def _set_listener(self, listener: Callable[[], None] | None) -> None:
        """Call ``listener()`` after each event or failure (from the producer's thread) and
        once now, so a consumer can poll ``get(timeout=0)`` instead of parking a thread in
        :meth:`get` (pykv.aio, derived watches). It must be quick and never block."""
        self._listener = listener
        if listener is not None:
            listener()

    def _notify(self) -> None:
        listener = self._listener
        if listener is not None:
            try:
                listener()
            except Exception:  # a consumer's bug must not kill the driver's thread
                log.exception("watch listener of %s failed", self.description)

    # -- producer side (drivers) ---------------------------------------------------------

    def _emit(self, event: T, resynced: bool = False) -> None:
        with self._cond:
            if self._closed:
                return
            self._events.append((event, resynced))
            self._cond.notify_all()
        self._notify()

    def _take_first(self, timeout: float) -> T:
        """The first event, for :meth:`Store.watch`'s ``since`` rule (before any consumer)."""
        with self._cond:
            if not self._events:
                self._cond.wait_for(
                    lambda: bool(self._events) or self._closed or self._error is not None,
                    timeout,
                )
            if not self._events:
                if self._error is not None:
                    raise self._error
                raise OperationTimeoutError(f"no first event on {self.description} in {timeout} s")
            return self._events.popleft()[0]

    def _push_first(self, event: T, resynced: bool) -> None:
        with self._cond:
            if not self._closed:
                self._events.appendleft((event, resynced))
                self._cond.notify_all()

    def _fail(self, error: BaseException) -> None:
        """End the stream with ``error``: events already queued are delivered first.

        A :class:`TimeoutError` (such as :class:`~pykv.OperationTimeoutError`) is wrapped in
        :class:`~pykv.UnavailableError`: to a consumer, a TimeoutError from :meth:`get` means
        "no event yet, the watch goes on".
        """
        if isinstance(error, TimeoutError):
            wrapped = UnavailableError(f"{self.description} failed: {error}")
            wrapped.__cause__ = error
            error = wrapped
        with self._cond:
            if self._closed or self._error is not None:
                return
            self._error = error
            self._cond.notify_all()
        self._notify()


class Lock(abc.ABC):
    """A distributed lock on a key. Use it as a context manager::

        with store.lock("jobs/leader", ttl=10) as lock:
            do_work(fencing_token=lock.token)

    * Only one holder at a time per key, across processes and hosts.
    * While held, ``store.get(key)`` returns the lock's ``value``; bookkeeping keys never show
      in ``list()`` or ``watch_tree()``. The key disappears when the lock is released.
    * The lock is renewed in the background while held. When the holder can no longer be sure
      it holds it (session expired, key deleted, backend unreachable for longer than the TTL),
      :attr:`lost` is set before another client can acquire it.
    * If the holder dies, another client can acquire it within ``ttl`` plus the backend's slack.
    * :attr:`token` is a fencing token: an int that strictly increases with every acquisition of
      that key, by any client.
    * :meth:`release` of a lock not held, and :meth:`acquire` of a lock this object already
      holds, raise :class:`~pykv.LockError`. Leaving a ``with`` block after the lock was lost
      raises :class:`~pykv.LockLostError` (unless another exception is already in flight).
    """

    def __init__(self, store: Store, key: str, value: bytes, ttl: float) -> None:
        self.store = store
        self.key = key
        self.value = value
        self.ttl = ttl
        #: Set when the lock is lost while held; cleared by the next acquire.
        self.lost = threading.Event()
        self._token: int | None = None
        self._held = False
        self._mutex = threading.RLock()

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else "held" if self._held else "free"
        return f"<{type(self).__name__} {self.key!r} on {self.store} {state} token={self._token}>"

    @property
    def held(self) -> bool:
        """True while this object holds the lock and has not lost it."""
        return self._held and not self.lost.is_set()

    @property
    def token(self) -> int | None:
        """The fencing token of the current (or last) acquisition; None before the first."""
        return self._token

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (forever when None) for the lock. True if acquired."""
        timeout = check_wait(timeout)
        with self._mutex:
            if self._held and not self.lost.is_set():
                raise LockError(f"lock {self.key!r} is already held by this Lock object")
            if self._held:  # lost: drop what remains of the previous hold first
                self._cleanup_lost()
            self.store._check_open()
            self.lost.clear()
            token = self._acquire(timeout)
            if token is None:
                return False
            self._token = token
            self._held = True
            log.debug("acquired lock %r on %s (token %d)", self.key, self.store, token)
            return True

    def release(self) -> None:
        """Release the lock. Raises :class:`~pykv.LockError` when it is not held, and
        :class:`~pykv.LockLostError` when it was lost meanwhile (its remains are cleaned up)."""
        with self._mutex:
            if not self._held:
                raise LockError(f"lock {self.key!r} is not held")
            if self.lost.is_set():
                self._cleanup_lost()
                raise LockLostError(f"lock {self.key!r} was lost before it was released")
            try:
                self._release()
            finally:
                self._held = False
            log.debug("released lock %r on %s", self.key, self.store)

    def _cleanup_lost(self) -> None:
        self._held = False
        try:
            self._release()
        except PyKVError:
            log.debug("cleanup of lost lock %r failed", self.key, exc_info=True)

    def _mark_lost(self, reason: str) -> None:
        """Drivers call this from their renewal threads when the hold is no longer certain."""
        if self._held and not self.lost.is_set():
            log.warning("lock %r on %s lost: %s", self.key, self.store, reason)
            self.lost.set()

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._mutex:
            if not self._held:
                return
            if self.lost.is_set():
                self._cleanup_lost()
                if exc_type is None:
                    raise LockLostError(f"lock {self.key!r} was lost inside its with-block")
                return
            self.release()

    @abc.abstractmethod
    def _acquire(self, timeout: float | None) -> int | None:
        """Acquire, waiting up to ``timeout``; return the fencing token, or None on timeout."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Give the lock up and delete its key. Called with the lock held (or lost)."""


class Store(Closing, abc.ABC):
    """A key-value store: the one interface of every pykv backend.

    Open one with :func:`pykv.open_store`; it is a context manager, and :meth:`close` releases
    its locks and ephemeral keys. Methods are thread-safe. ``str(store)`` and
    ``repr(store.options)`` show secrets masked. A background task that fails (keeping TTL keys
    and locks alive, feeding watches) logs, sets ``lost`` on the locks it may cost, and is
    reported by :attr:`background_error`; none dies silently.

    Drivers implement the underscored methods; they receive keys already validated and
    normalised (relative to the prefix), values as bytes, and map their client library's errors
    to pykv's in one place.
    """

    #: URL schemes this class serves (the entry-point names it is registered under).
    schemes: ClassVar[tuple[str, ...]] = ()
    #: What this backend can do.
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: The dataclass of options this backend takes.
    options_class: ClassVar[type[StoreOptions]] = StoreOptions
    #: The distribution that provides this backend, shown in error messages.
    distribution: ClassVar[str] = "pykvstore"
    #: Seconds a TTL key or a dead holder's lock may outlive its TTL on this backend.
    ttl_slack: ClassVar[float] = 0.0
    #: Whether the URL's path is the key prefix (network stores); False where it names a file.
    url_path_is_prefix: ClassVar[bool] = True
    #: Whether ``watch(since=)`` and ``watch_tree(since=)`` always know if something changed
    #: after ``since`` (until the backend's history is compacted); False: absent keys and
    #: unchanged-looking trees start with a resync.
    since_exact: ClassVar[bool] = False

    def __init__(self, url: StoreURL, options: StoreOptions) -> None:
        self.url = url
        self.options = options
        self.prefix = normalize_prefix(options.prefix)
        self.timeout = options.timeout
        self._closed = False
        self._close_lock = threading.Lock()
        self._background_error: BaseException | None = None

    def __str__(self) -> str:
        return str(self.url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}{' closed' if self._closed else ''}>"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def background_error(self) -> BaseException | None:
        """The last failure of a background task of this store (keeping TTL keys and locks
        alive, feeding watches), or None if none failed. Such a failure was logged, the locks
        it may have cost have their ``lost`` set and the watches it ended raise it; the task
        goes on where it can. Health checks read this."""
        return self._background_error

    def _background_failed(self, what: str, error: BaseException) -> None:
        """Drivers call this when a background task fails: logged and kept for
        :attr:`background_error` (no background thread dies silently)."""
        log.error("%s of %s failed: %s", what, self, error, exc_info=error)
        self._background_error = error

    def _check_open(self) -> None:
        if self._closed:
            raise PyKVError(f"the store {self} is closed")

    def _release_for_close(self, locks: Iterable[Lock], server: str) -> bool:
        """Release ``locks`` as the store closes (drivers' ``_close``). On the first failure
        to reach the server the rest are only marked lost: the server frees them within
        their TTL, and close() never waits one timeout per lock. Returns whether the server
        could be reached."""
        reachable = True
        for lock in locks:
            with lock._mutex:
                if not lock._held:
                    continue
                if not reachable:
                    lock._mark_lost(f"the store was closed while {server} could not be reached")
                    lock._held = False
                    continue
                lock._held = False
                try:
                    lock._release()
                except UnavailableError as exc:
                    reachable = False
                    log.info("%s: close: releasing lock %r failed (%s)", self, lock.key, exc)
                except PyKVError as exc:
                    log.debug("%s: close: releasing lock %r failed (%s)", self, lock.key, exc)
        return reachable

    def _path(self, key: str) -> str:
        """The absolute backend path of a normalised key (prefix joined, no leading ``/``)."""
        return join(self.prefix, key)

    def _strip(self) -> int:
        """How many leading characters of an absolute path are the store's prefix and ``/``."""
        return len(self.prefix) + 1 if self.prefix else 0

    def _relative(self, path: str) -> str:
        """Inverse of :meth:`_path`."""
        path = path.strip("/")
        if not self.prefix:
            return path
        return path[len(self.prefix) + 1 :] if path != self.prefix else ""

    # -- the public interface -------------------------------------------------------------

    def get(self, key: str) -> KVPair:
        """The key's value and revision. Raises :class:`~pykv.KeyNotFoundError`."""
        if self._closed:  # _check_open(), inlined on the hottest path
            self._check_open()
        # normalize_key(key) with its cached fast path inlined (one call less per get/put)
        if type(key) is str and len(key) <= _CACHED_MAX_CHARS:
            return self._get(_normalize_key(key))
        return self._get(normalize_key(key))

    def put(self, key: str, value: Value, *, ttl: float | None = None) -> None:
        """Write ``value`` at ``key``.

        With ``ttl`` (seconds) the key is ephemeral: pykv keeps it alive in the background while
        this store is open, and the backend removes it no later than ``ttl`` (plus the backend's
        :attr:`ttl_slack`) after the store is closed, its process dies or it loses the backend.
        A later plain ``put`` makes the key persistent again.
        """
        if self._closed:
            self._check_open()
        k = (
            _normalize_key(key)
            if type(key) is str and len(key) <= _CACHED_MAX_CHARS
            else normalize_key(key)
        )
        v = value if type(value) is bytes else to_bytes(value)
        self._put(k, v, None if ttl is None else _check_ttl(ttl))

    def delete(self, key: str) -> None:
        """Delete ``key``. Deleting a missing key is a no-op."""
        self._check_open()
        self._delete(normalize_key(key))

    def exists(self, key: str) -> bool:
        """True when ``key`` has a value."""
        self._check_open()
        return self._exists(normalize_key(key))

    def list(self, prefix: str = "") -> builtins.list[KVPair]:
        """Every key strictly below ``prefix``, recursively, sorted by key.

        Never ``prefix`` itself and never string-prefix siblings (``prefixX``). The empty prefix
        means the whole store. Raises :class:`~pykv.KeyNotFoundError` when nothing is below the
        prefix and the prefix itself is absent.
        """
        self._check_open()
        p = normalize_prefix(prefix)
        pairs = self._list(p)
        if not pairs and p and not self._exists(p):
            raise KeyNotFoundError(f"nothing at or below {p!r} in {self}")
        return pairs

    def delete_tree(self, prefix: str) -> None:
        """Delete ``prefix`` and everything below it (the empty prefix: the whole store)."""
        self._check_open()
        self._delete_tree(normalize_prefix(prefix))

    def atomic_put(
        self, key: str, value: Value, previous: KVPair | None, *, ttl: float | None = None
    ) -> KVPair:
        """Compare-and-swap write; returns the new pair.

        ``previous=None`` creates only: :class:`~pykv.KeyExistsError` if the key exists.
        Otherwise :class:`~pykv.KeyModifiedError` if the key's revision is not
        ``previous.revision``, and :class:`~pykv.KeyNotFoundError` if the key is gone.
        """
        self._check_open()
        k, v = normalize_key(key), to_bytes(value)
        if previous is not None and not isinstance(previous, KVPair):
            raise InvalidTypeError(
                f"previous must be a KVPair or None, not {type(previous).__name__}"
            )
        return self._atomic_put(k, v, previous, _check_ttl(ttl))

    def atomic_delete(self, key: str, previous: KVPair) -> None:
        """Delete ``key`` if its revision is still ``previous.revision``.

        Raises :class:`~pykv.KeyModifiedError` on a mismatch, :class:`~pykv.KeyNotFoundError`
        when the key is absent.
        """
        self._check_open()
        if not isinstance(previous, KVPair):
            raise InvalidTypeError(f"previous must be a KVPair, not {type(previous).__name__}")
        self._atomic_delete(normalize_key(key), previous)

    def watch(self, key: str, *, since: int | None = None) -> Watch[KVPair | None]:
        """Watch one key: first its current state (or None), then every change.

        ``since`` resumes a watch: pass the last revision the consumer has seen (a
        :attr:`KVPair.revision`). The first event then comes only if the key changed after
        that revision; a key whose revision is not above ``since`` has not changed, so the
        watch stays silent until its next change. Where the backend cannot tell whether a key
        that is absent now was deleted after ``since`` (no history, or history compacted),
        the current state is delivered anyway with :attr:`Watch.resynced` set for that event,
        so a change is never skipped silently. ``Watch.resynced`` is False for every other
        event. States are compared, not write histories: a key created and deleted again
        after ``since`` counts as unchanged where the backend sees only the net state.
        Raises :class:`~pykv.InvalidRevisionError` unless ``since`` is an int >= 0.
        """
        self._check_open()
        k = normalize_key(key)
        start = _check_since(since)
        watch = self._watch(k)
        if start is not None:
            self._resume(watch, k, start, tree=False)
        return watch

    @typing.overload
    def watch_tree(
        self, prefix: str = "", *, since: int | None = None, events: typing.Literal[False] = False
    ) -> Watch[builtins.list[KVPair]]: ...

    @typing.overload
    def watch_tree(
        self, prefix: str = "", *, since: int | None = None, events: typing.Literal[True]
    ) -> Watch[TreeChange]: ...

    def watch_tree(
        self, prefix: str = "", *, since: int | None = None, events: bool = False
    ) -> Watch[builtins.list[KVPair]] | Watch[TreeChange]:
        """Watch everything below ``prefix``: full sorted snapshots, first the current one.

        ``since`` works as for :meth:`watch`: the first snapshot comes only if something
        below the prefix was written or deleted after that revision (a pair's revision above
        ``since`` proves it; a deletion needs the backend's history, and without it the
        snapshot is delivered with :attr:`Watch.resynced` set).

        ``events=True`` yields :class:`~pykv.TreeChange` events (added, modified and
        removed keys) instead of snapshots, derived from successive snapshots so rapid
        changes are still coalesced and the last state is always reached. The first event
        (and every resync) has ``reset=True`` and the whole state in ``added``. With
        ``since`` and nothing changed, the first event is the first change after ``since``,
        as a delta.
        """
        self._check_open()
        p = normalize_prefix(prefix)
        start = _check_since(since)
        watch = self._watch_tree(p)
        known = None
        if start is not None:
            known = self._resume(watch, p, start, tree=True)
        if not events:
            return watch
        return _ChangeWatch(watch, known)

    def _resume(self, watch: Watch[T], key: str, since: int, *, tree: bool) -> T | None:
        """Apply the ``since`` rule to a new watch's first event; return it when dropped."""
        try:
            first = watch._take_first(self.timeout)
        except BaseException:
            watch.close()
            raise
        changed: bool | None
        if tree:
            assert isinstance(first, builtins.list)
            changed = True if any(p.revision > since for p in first) else None
        else:
            assert first is None or isinstance(first, KVPair)
            changed = None if first is None else first.revision > since
        if changed is None:
            try:
                changed = self._changed_since(key, since, tree=tree)
            except PyKVError:  # only a refinement: without it the state is resynced
                log.debug("changed-since check of %r on %s failed", key, self, exc_info=True)
        if changed is False:
            return first
        watch._push_first(first, resynced=changed is None)
        return None

    def lock(self, key: str, *, value: Value = b"", ttl: float = 15) -> Lock:
        """A :class:`Lock` on ``key`` (not yet held). ``value`` is readable at ``key`` while
        the lock is held; ``ttl`` bounds how long a dead holder keeps it."""
        self._check_open()
        ttl_checked = _check_ttl(ttl)
        assert ttl_checked is not None
        return self._lock(normalize_key(key), to_bytes(value), ttl_checked)

    def close(self) -> None:
        """Release this store's locks and ephemeral keys and its connections. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._close()
        finally:
            log.debug("closed %s", self)

    # -- what drivers implement -----------------------------------------------------------

    @abc.abstractmethod
    def _get(self, key: str) -> KVPair: ...

    @abc.abstractmethod
    def _put(self, key: str, value: bytes, ttl: float | None) -> None: ...

    @abc.abstractmethod
    def _delete(self, key: str) -> None: ...

    def _exists(self, key: str) -> bool:
        try:
            self._get(key)
        except KeyNotFoundError:
            return False
        return True

    @abc.abstractmethod
    def _list(self, prefix: str) -> builtins.list[KVPair]: ...

    @abc.abstractmethod
    def _delete_tree(self, prefix: str) -> None: ...

    @abc.abstractmethod
    def _atomic_put(
        self, key: str, value: bytes, previous: KVPair | None, ttl: float | None
    ) -> KVPair: ...

    @abc.abstractmethod
    def _atomic_delete(self, key: str, previous: KVPair) -> None: ...

    @abc.abstractmethod
    def _watch(self, key: str) -> Watch[KVPair | None]: ...

    @abc.abstractmethod
    def _watch_tree(self, prefix: str) -> Watch[builtins.list[KVPair]]: ...

    def _changed_since(self, key: str, since: int, *, tree: bool) -> bool | None:
        """Whether ``key`` (or, with ``tree``, anything below the prefix ``key``) was written
        or deleted after revision ``since``, up to now; None when the backend cannot tell.

        The core asks this only after the watch's first event was read, and only when the
        first event cannot answer by itself (the key is absent, or no pair in the snapshot is
        newer than ``since``), so a deletion is the one thing left to detect. A backend with
        change history overrides it; the default makes such watches start with a resync.
        """
        return None

    @abc.abstractmethod
    def _lock(self, key: str, value: bytes, ttl: float) -> Lock: ...

    @abc.abstractmethod
    def _close(self) -> None: ...


class _ChangeWatch(Watch[TreeChange]):
    """``watch_tree(events=True)``: the deltas between successive snapshots of a tree watch."""

    def __init__(
        self, snapshots: Watch[builtins.list[KVPair]], known: builtins.list[KVPair] | None
    ) -> None:
        super().__init__(f"{snapshots.description} (events)", on_close=snapshots.close)
        self._snapshots = snapshots
        self._known: dict[str, KVPair] | None = None if known is None else {p.key: p for p in known}
        self._consumer = threading.Lock()

    def get(self, timeout: float | None = None) -> TreeChange:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._consumer:
            while True:
                if self._closed:
                    raise WatchClosedError(f"{self.description} is closed")
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                snapshot = self._snapshots.get(remaining)
                resynced = self._snapshots.resynced
                delta: TreeChange | None = getattr(snapshot, "delta", None)
                if delta is not None and self._known is not None and not resynced:
                    # a feed's snapshot says what changed since the one before it: no diff
                    # of the whole tree (``_known`` only marks that a first state was seen)
                    self.resynced = False
                    return delta
                current = {p.key: p for p in snapshot}
                known, self._known = self._known, current
                if known is None or resynced:
                    self.resynced = resynced
                    return TreeChange(added=tuple(snapshot), reset=True)
                change = TreeChange(
                    added=tuple(p for p in snapshot if p.key not in known),
                    modified=tuple(p for p in snapshot if p.key in known and known[p.key] != p),
                    removed=tuple(k for k in sorted(known) if k not in current),
                )
                if change.added or change.modified or change.removed:
                    self.resynced = False
                    return change
                # an identical snapshot (a write that changed nothing here): no event


def _check_since(since: int | None) -> int | None:
    if since is None:
        return None
    checked: object = since
    if isinstance(checked, bool) or not isinstance(checked, int):
        raise InvalidRevisionError(f"since must be an int revision, not {since!r}")
    if checked < 0:
        raise InvalidRevisionError(f"since must be a revision >= 0, not {since!r}")
    return checked


def _check_ttl(ttl: float | None) -> float | None:
    """``ttl`` as a float: None, or finite, > 0 and at most :data:`MAX_TTL` seconds."""
    if ttl is None:
        return None
    checked: object = ttl
    if isinstance(checked, bool) or not isinstance(checked, int | float):
        raise InvalidTypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    if not 0 < checked <= MAX_TTL:  # also refuses NaN
        raise InvalidArgumentError(
            f"ttl must be a number of seconds > 0 and <= {MAX_TTL:g} (a day), not {ttl!r}"
        )
    return float(checked)


def check_wait(timeout: float | None) -> float | None:
    """A wait's ``timeout``: None (or inf, or beyond what threads can wait) means forever;
    otherwise a number >= 0. Raises :class:`~pykv.InvalidArgumentError` for NaN or < 0."""
    if timeout is None:
        return None
    checked: object = timeout
    if isinstance(checked, bool) or not isinstance(checked, int | float):
        raise InvalidTypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not checked >= 0:  # also refuses NaN
        raise InvalidArgumentError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
    # Longer waits overflow the thread primitives; a wait of centuries is a wait forever.
    return None if checked >= threading.TIMEOUT_MAX else float(checked)
