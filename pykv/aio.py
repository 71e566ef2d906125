"""pykv for asyncio: every store operation awaitable, watches as async iterators, locks and
recipes as async context managers, on every backend.

    import pykv.aio

    async with pykv.aio.open_store("etcd://127.0.0.1:2379/app") as store:
        await store.put("config/mode", "fast")
        async with store.lock("jobs/nightly", ttl=10) as lock:
            await run_job(fencing_token=lock.token)
        async for pair in store.watch("config/mode"):
            print(pair)

It wraps the sync drivers: each call runs in a bounded thread pool of the store
(``max_workers``, default 8). Watches park no thread: the driver's producer wakes the event
loop through ``loop.call_soon_threadsafe``.

Cancellation
    A cancelled (or timed-out, under ``asyncio.timeout()``) :meth:`AsyncLock.acquire`,
    :meth:`Election.campaign` or :meth:`Semaphore.acquire` leaves nothing behind: the call
    waits for the attempt under way in the pool (at most about a second) and gives back what it
    may have won before raising :class:`asyncio.CancelledError`. A cancelled ``async for`` over
    a watch closes the watch. Other operations are not interrupted in the pool: a cancelled
    ``put`` may still happen, as with any request already sent.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import recipes as _recipes
from ._errors import WatchClosedError
from ._registry import open_store as _open_sync
from ._store import Capability, KVPair, Lock, Store, Value, Watch

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "AsyncLock",
    "AsyncStore",
    "AsyncWatch",
    "Barrier",
    "Counter",
    "Election",
    "Group",
    "Partitioner",
    "Semaphore",
    "open_store",
]

T = TypeVar("T")

#: Threads of a store's pool when ``max_workers`` is not given.
DEFAULT_MAX_WORKERS = 8
#: Longest single blocking attempt of a cancellable acquire: bounds how long a cancellation
#: waits for the attempt under way in the pool.
_ATTEMPT = 1.0


class _Opening:
    """What :func:`open_store` returns: ``await`` it, or ``async with`` it."""

    def __init__(self, url: str, max_workers: int, options: dict[str, Any]) -> None:
        self._url = url
        self._max_workers = max_workers
        self._options = options
        self._store: AsyncStore | None = None

    async def _open(self) -> AsyncStore:
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._max_workers, thread_name_prefix="pykv-aio"
        )
        try:
            loop = asyncio.get_running_loop()
            sync = await loop.run_in_executor(
                executor, functools.partial(_open_sync, self._url, **self._options)
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return AsyncStore(sync, executor)

    def __await__(self) -> Generator[Any, None, AsyncStore]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncStore:
        self._store = await self._open()
        return self._store

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._store is not None:
            await self._store.close()


def open_store(url: str, *, max_workers: int = DEFAULT_MAX_WORKERS, **options: Any) -> _Opening:
    """Open a store for asyncio: ``async with pykv.aio.open_store(url) as store`` (closed on
    the way out) or ``store = await pykv.aio.open_store(url)``. URL and options are those of
    :func:`pykv.open_store`; ``max_workers`` bounds the threads running its calls."""
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers must be an int >= 1, not {max_workers!r}")
    return _Opening(url, max_workers, options)


class AsyncStore:
    """A :class:`~pykv.Store` for asyncio. Same operations and errors, awaitable.

    ``sync`` is the wrapped store (for code that must stay synchronous).
    """

    def __init__(self, store: Store, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        self.sync = store
        self._executor = executor

    def __str__(self) -> str:
        return str(self.sync)

    def __repr__(self) -> str:
        return f"<AsyncStore {self.sync!r}>"

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.sync.capabilities

    @property
    def ttl_slack(self) -> float:
        return self.sync.ttl_slack

    @property
    def closed(self) -> bool:
        return self.sync.closed

    def _submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        return self._executor.submit(fn, *args)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def get(self, key: str) -> KVPair:
        """See :meth:`pykv.Store.get`."""
        return await self._run(self.sync.get, key)

    async def put(self, key: str, value: Value, *, ttl: float | None = None) -> None:
        """See :meth:`pykv.Store.put`."""
        await self._run(self.sync.put, key, value, ttl=ttl)

    async def delete(self, key: str) -> None:
        """See :meth:`pykv.Store.delete`."""
        await self._run(self.sync.delete, key)

    async def exists(self, key: str) -> bool:
        """See :meth:`pykv.Store.exists`."""
        return await self._run(self.sync.exists, key)

    async def list(self, prefix: str = "") -> builtins.list[KVPair]:
        """See :meth:`pykv.Store.list`."""
        return await self._run(self.sync.list, prefix)

    async def delete_tree(self, prefix: str) -> None:
        """See :meth:`pykv.Store.delete_tree`."""
        await self._run(self.sync.delete_tree, prefix)

    async def atomic_put(
        self, key: str, value: Value, previous: KVPair | None, *, ttl: float | None = None
    ) -> KVPair:
        """See :meth:`pykv.Store.atomic_put`."""
        return await self._run(self.sync.atomic_put, key, value, previous, ttl=ttl)

    async def atomic_delete(self, key: str, previous: KVPair) -> None:
        """See :meth:`pykv.Store.atomic_delete`."""
        await self._run(self.sync.atomic_delete, key, previous)

    def watch(self, key: str) -> AsyncWatch[KVPair | None]:
        """An async iterator of the key's states (see :meth:`pykv.Store.watch`); it opens on
        first use. Use ``async with`` (or :meth:`AsyncWatch.close`) to close it."""
        return AsyncWatch(self, functools.partial(self.sync.watch, key), f"watch of {key!r}")

    def watch_tree(self, prefix: str = "") -> AsyncWatch[builtins.list[KVPair]]:
        """An async iterator of snapshots below ``prefix`` (see :meth:`pykv.Store.watch_tree`)."""
        return AsyncWatch(
            self, functools.partial(self.sync.watch_tree, prefix), f"watch of {prefix!r}/"
        )

    def lock(self, key: str, *, value: Value = b"", ttl: float = 15) -> AsyncLock:
        """An :class:`AsyncLock` on ``key`` (not yet held); see :meth:`pykv.Store.lock`."""
        return AsyncLock(self, self.sync.lock(key, value=value, ttl=ttl))

    async def close(self) -> None:
        """Close the store (releasing its locks and ephemeral keys) and its thread pool."""
        try:
            await self._run(self.sync.close)
        finally:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _acquire(
        self,
        attempt: Callable[[float | None], bool],
        undo: Callable[[], None],
        timeout: float | None,
        *,
        abort: threading.Event | None = None,
    ) -> bool:
        """Run blocking ``attempt(seconds)`` calls in the pool until one succeeds or ``timeout``
        passes. On cancellation, wait for the attempt under way and ``undo()`` it if it won.

        Without ``abort``, attempts last at most :data:`_ATTEMPT` seconds each (the call cannot
        be interrupted). With it, one attempt runs for the whole timeout and returns promptly
        once ``abort`` is set, which cancellation does.
        """
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be a number >= 0 or None, not {timeout!r}")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            seconds = remaining
            if abort is None:
                seconds = _ATTEMPT if remaining is None else min(_ATTEMPT, remaining)
            future = self._submit(attempt, seconds)
            try:
                # shield: the attempt always runs to its end, so its outcome is known.
                won = await asyncio.shield(asyncio.wrap_future(future))
            except asyncio.CancelledError:
                if abort is not None:
                    abort.set()
                cleanup = loop.run_in_executor(self._executor, _undo_when_done, future, undo)
                # Cancelled again: the cleanup still runs in the pool.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(cleanup)
                raise
            if won:
                return True
            if deadline is not None and (abort is not None or loop.time() >= deadline):
                return False


def _undo_when_done(future: concurrent.futures.Future[bool], undo: Callable[[], None]) -> None:
    try:
        won = future.result()
    except BaseException:  # noqa: BLE001 - the attempt failed: it holds nothing
        return
    if won:
        undo()


class AsyncWatch(Generic[T]):
    """An async iterator of a watch's events (and an async context manager closing it).

    No thread waits for it: the driver's producer schedules a wake-up on the event loop. A
    cancelled ``async for`` (or ``__anext__``) closes the watch; :meth:`get` with a timeout
    does not.
    """

    def __init__(self, store: AsyncStore, opener: Callable[[], Watch[T]], description: str) -> None:
        self._store = store
        self._opener = opener
        self.description = description
        self._watch: Watch[T] | None = None
        self._opening: asyncio.Future[Watch[T]] | None = None
        self._ready = asyncio.Event()
        self._closed = False

    def __repr__(self) -> str:
        return f"<AsyncWatch {self.description} {'closed' if self._closed else 'open'}>"

    @property
    def closed(self) -> bool:
        return self._closed

    async def _open(self) -> Watch[T]:
        if self._watch is not None:
            return self._watch
        if self._closed:
            raise WatchClosedError(f"{self.description} is closed")
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._store._run(self._opener))
        watch = await asyncio.shield(self._opening)
        if self._watch is None:
            self._watch = watch
            loop = asyncio.get_running_loop()
            ready = self._ready

            def wake() -> None:  # from the driver's thread
                # RuntimeError: the loop is closed, nobody is waiting any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(ready.set)

            watch._set_listener(wake)
            if self.closed:  # closed while opening
                await self._store._run(watch.close)
                raise WatchClosedError(f"{self.description} is closed")
        return watch

    async def get(self, timeout: float | None = None) -> T:
        """The next event; :class:`TimeoutError` when none comes within ``timeout`` seconds,
        the watch's error when it failed, :class:`~pykv.WatchClosedError` once closed."""
        watch = await self._open()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            self._ready.clear()
            try:
                return watch.get(timeout=0)
            except TimeoutError:
                pass
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"no event on {self.description} within {timeout} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready.wait(), remaining)

    def __aiter__(self) -> AsyncWatch[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except WatchClosedError:
            raise StopAsyncIteration from None
        except asyncio.CancelledError:
            self._close_soon()
            raise

    def _close_soon(self) -> None:
        self._closed = True
        watch = self._watch
        if watch is not None:
            self._close_in_pool(watch)
        elif self._opening is not None:
            self._opening.add_done_callback(self._close_opened)

    def _close_opened(self, opening: asyncio.Future[Watch[T]]) -> None:
        if not opening.cancelled() and opening.exception() is None:
            self._close_in_pool(opening.result())

    def _close_in_pool(self, watch: Watch[T]) -> None:
        try:
            self._store._submit(watch.close)
        except RuntimeError:  # the pool is shut down (the store is closing): close it here
            watch.close()

    async def close(self) -> None:
        """End the watch and release its resources. Idempotent."""
        self._closed = True
        watch = self._watch
        if watch is None and self._opening is not None:
            try:
                watch = await asyncio.shield(self._opening)
            except Exception:  # noqa: BLE001 - it never opened: nothing to close
                return
        if watch is not None and not watch.closed:
            await self._store._run(watch.close)

    aclose = close

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncLock:
    """A :class:`~pykv.Lock` for asyncio: ``async with store.lock(key) as lock``.

    ``held``, ``token`` and ``lost`` (a :class:`threading.Event`; :meth:`wait_lost` awaits it)
    are those of the wrapped lock, ``sync``.
    """

    def __init__(self, store: AsyncStore, lock: Lock) -> None:
        self._store = store
        self.sync = lock

    def __repr__(self) -> str:
        return f"<AsyncLock {self.sync!r}>"

    @property
    def key(self) -> str:
        return self.sync.key

    @property
    def held(self) -> bool:
        return self.sync.held

    @property
    def token(self) -> int | None:
        return self.sync.token

    @property
    def lost(self) -> threading.Event:
        return self.sync.lost

    async def wait_lost(self) -> None:
        """Return once the lock is lost (see :attr:`pykv.Lock.lost`)."""
        await _wait_event(self.sync.lost)

    async def acquire(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (forever when None); True if acquired. Cancellation
        leaves the lock free (see the module's notes)."""
        return await self._store._acquire(self.sync.acquire, self.sync.release, timeout)

    async def release(self) -> None:
        """See :meth:`pykv.Lock.release`."""
        await self._store._run(self.sync.release)

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._store._run(self.sync.__exit__, exc_type, exc, tb)


async def _wait_event(event: threading.Event, poll: float = 0.05) -> None:
    # A threading.Event has no hook to wake a loop; polling it costs no thread.
    while not event.is_set():
        await asyncio.sleep(poll)


# -- recipes ---------------------------------------------------------------------------------


class Election:
    """:class:`pykv.recipes.Election` for asyncio (``sync`` is the wrapped one)."""

    def __init__(self, store: AsyncStore, name: str, *, ttl: float = _recipes.DEFAULT_TTL):
        self._store = store
        self.sync = _recipes.Election(store.sync, name, ttl=ttl)

    async def campaign(self, value: Value = b"", timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds to become the leader. A cancelled campaign leaves no
        leadership behind."""
        election = self.sync
        return await self._store._acquire(
            lambda seconds: election.campaign(value, seconds), election.resign, timeout
        )

    async def resign(self) -> None:
        await self._store._run(self.sync.resign)

    async def leader(self) -> bytes | None:
        return await self._store._run(self.sync.leader)

    def observe(self) -> AsyncWatch[bytes | None]:
        """An async iterator of the leader's value (None: no leader)."""
        return AsyncWatch(self._store, self.sync.observe, f"leader of {self.sync.name!r}")

    @property
    def is_leader(self) -> bool:
        return self.sync.is_leader

    @property
    def token(self) -> int | None:
        return self.sync.token

    @property
    def lost(self) -> threading.Event:
        return self.sync.lost

    async def wait_lost(self) -> None:
        """Return once leadership is lost."""
        await _wait_event(self.sync.lost)

    async def __aenter__(self) -> Self:
        await self.campaign()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.resign()


class Group:
    """:class:`pykv.recipes.Group` for asyncio."""

    def __init__(self, store: AsyncStore, name: str) -> None:
        self._store = store
        self.sync = _recipes.Group(store.sync, name)

    async def join(
        self, member_id: str, metadata: Value = b"", *, ttl: float = _recipes.DEFAULT_TTL
    ) -> None:
        await self._store._run(self.sync.join, member_id, metadata, ttl=ttl)

    async def leave(self, member_id: str | None = None) -> None:
        await self._store._run(self.sync.leave, member_id)

    async def members(self) -> dict[str, bytes]:
        return await self._store._run(self.sync.members)

    def watch(self) -> AsyncWatch[dict[str, bytes]]:
        return AsyncWatch(self._store, self.sync.watch, f"members of {self.sync.name!r}")


class Partitioner:
    """:class:`pykv.recipes.Partitioner` for asyncio."""

    def __init__(self, group: Group, *, member_id: str | None = None, vnodes: int = 64) -> None:
        self._store = group._store
        self.sync = _recipes.Partitioner(group.sync, member_id=member_id, vnodes=vnodes)

    async def ring(self) -> _recipes.HashRing:
        return await self._store._run(self.sync.ring)

    async def owner(self, item: Value) -> str:
        return await self._store._run(self.sync.owner, item)

    async def owns(self, item: Value) -> bool:
        return await self._store._run(self.sync.owns, item)


class Semaphore:
    """:class:`pykv.recipes.Semaphore` for asyncio: ``async with Semaphore(store, n, 3):``."""

    def __init__(
        self,
        store: AsyncStore,
        name: str,
        limit: int,
        *,
        value: Value = b"",
        ttl: float = _recipes.DEFAULT_TTL,
    ) -> None:
        self._store = store
        self.sync = _recipes.Semaphore(store.sync, name, limit, value=value, ttl=ttl)

    @property
    def held(self) -> bool:
        return self.sync.held

    async def holders(self) -> list[bytes]:
        return await self._store._run(self.sync.holders)

    async def acquire(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for a slot. A cancelled acquire holds no slot."""
        abort = threading.Event()
        semaphore = self.sync
        return await self._store._acquire(
            lambda seconds: semaphore._acquire(seconds, abort),
            semaphore.release,
            timeout,
            abort=abort,
        )

    async def release(self) -> None:
        await self._store._run(self.sync.release)

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.sync.held:
            await self.release()


class Barrier:
    """:class:`pykv.recipes.Barrier` for asyncio."""

    def __init__(
        self, store: AsyncStore, name: str, count: int, *, ttl: float = _recipes.DEFAULT_TTL
    ) -> None:
        self._store = store
        self.sync = _recipes.Barrier(store.sync, name, count, ttl=ttl)

    async def wait(self, timeout: float | None = None) -> bool:
        """Arrive and wait; a cancelled wait withdraws this arrival."""
        abort = threading.Event()
        future = self._store._submit(self.sync._wait, timeout, abort)
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            abort.set()
            await asyncio.shield(asyncio.wrap_future(future))  # the withdrawal, then cancel
            raise

    async def reset(self) -> None:
        await self._store._run(self.sync.reset)

    async def arrived(self) -> int:
        return await self._store._run(self.sync.arrived)


class Counter:
    """:class:`pykv.recipes.Counter` for asyncio."""

    def __init__(self, store: AsyncStore, name: str) -> None:
        self._store = store
        self.sync = _recipes.Counter(store.sync, name)

    async def value(self) -> int:
        return await self._store._run(self.sync.value)

    async def add(self, delta: int = 1, *, timeout: float | None = None) -> int:
        return await self._store._run(self.sync.add, delta, timeout=timeout)

    async def set(self, value: int) -> None:
        await self._store._run(self.sync.set, value)
