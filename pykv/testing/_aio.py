"""Conformance tests of :mod:`pykv.aio`: the contract through the async API, cancellation
safety and watches that park no thread, on the backend under test.

Subclass :class:`AsyncTests` with the same ``store_url`` fixture as the backend's
:class:`~pykv.testing.ConformanceTests`. Each test runs its own event loop (no pytest plugin).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

import pykv.aio
import pykv.recipes
from pykv import (
    Capability,
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
    KVPair,
    Store,
)
from pykv.aio import AsyncStore

from ._suite import BaseStoreTests

__all__ = ["AsyncTests"]

T = TypeVar("T")


async def _until(
    awaitable: Callable[[], Awaitable[T]], predicate: Callable[[T], bool], timeout: float
) -> T:
    """Await ``awaitable()`` until its result satisfies ``predicate``; fail after ``timeout``."""
    seen: list[T] = []
    try:
        async with _timeout(timeout):
            while True:
                value = await awaitable()
                if predicate(value):
                    return value
                seen.append(value)
    except (TimeoutError, asyncio.TimeoutError):
        raise AssertionError(f"nothing matched within {timeout} s; saw {seen[-5:]!r}") from None


@contextlib.asynccontextmanager
async def _timeout(seconds: float) -> Any:
    """asyncio.timeout() where it exists (3.11+), else a cancelling timer."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            yield
        return
    task = asyncio.current_task()
    assert task is not None
    handle = asyncio.get_running_loop().call_later(seconds, task.cancel)
    try:
        yield
    except asyncio.CancelledError:
        raise TimeoutError from None
    finally:
        handle.cancel()


def _rss_mib() -> float:
    """This process's resident memory (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class AsyncTests(BaseStoreTests):
    """The async API: operations, watches, locks, recipes; cancellation leaves nothing behind."""

    #: Watches opened at once in :meth:`test_many_watches_park_no_thread` (the environment
    #: variable PYKV_AIO_WATCHES overrides it, e.g. to measure 1,000).
    many_watches: int = int(os.environ.get("PYKV_AIO_WATCHES", "100"))

    def run(
        self,
        store_url: str,
        prefix: str,
        store_options: dict[str, Any],
        test: Callable[[AsyncStore], Coroutine[Any, Any, None]],
        timeout: float = 90,
    ) -> None:
        async def main() -> None:
            opening = pykv.aio.open_store(store_url, prefix=prefix, **store_options)
            async with opening as store, _timeout(timeout):
                await test(store)

        asyncio.run(main())

    @pytest.fixture
    def arun(
        self, store: Store, store_url: str, prefix: str, store_options: dict[str, Any]
    ) -> Callable[[Callable[[AsyncStore], Coroutine[Any, Any, None]]], None]:
        """Runs an async test on an async store of the test's prefix (``store`` cleans up)."""
        return lambda test: self.run(store_url, prefix, store_options, test)

    def test_operations(self, arun: Any) -> None:
        async def test(store: AsyncStore) -> None:
            await store.put("a/x", b"1")
            await store.put("a/y", "2")
            pair = await store.get("a/x")
            assert pair == KVPair("a/x", b"1", pair.revision)
            assert await store.exists("a/y")
            assert [p.key for p in await store.list("a")] == ["a/x", "a/y"]
            with pytest.raises(KeyNotFoundError):
                await store.get("missing")
            if Capability.ATOMIC in store.capabilities:
                new = await store.atomic_put("a/x", b"3", pair)
                with pytest.raises(KeyModifiedError):
                    await store.atomic_put("a/x", b"4", pair)
                with pytest.raises(KeyExistsError):
                    await store.atomic_put("a/x", b"4", None)
                await store.atomic_delete("a/x", new)
                assert not await store.exists("a/x")
            await store.delete("a/y")
            await store.put("t/1", b"")
            await store.delete_tree("t")
            with pytest.raises(KeyNotFoundError):
                await store.list("t")

        arun(test)

    def test_watch_is_an_async_iterator(self, arun: Any) -> None:
        async def test(store: AsyncStore) -> None:
            if Capability.WATCH not in store.capabilities:
                pytest.skip("no WATCH")
            seen: list[bytes | None] = []
            async with store.watch("w") as watch:
                async for pair in watch:
                    seen.append(None if pair is None else pair.value)
                    if pair is None and len(seen) == 1:
                        await store.put("w", b"1")
                    elif pair is not None and pair.value == b"1":
                        await store.delete("w")
                    elif pair is None:
                        break
            assert seen[0] is None
            assert seen[-1] is None
            assert b"1" in seen
            assert watch.closed

        arun(test)

    def test_watch_tree_and_get_timeout(self, arun: Any) -> None:
        async def test(store: AsyncStore) -> None:
            if Capability.WATCH_TREE not in store.capabilities:
                pytest.skip("no WATCH_TREE")
            async with store.watch_tree("tree") as tree:
                assert await tree.get(timeout=self.event_timeout) == []
                with pytest.raises(TimeoutError):
                    await tree.get(timeout=0.2)
                await store.put("tree/a", b"1")
                await store.put("tree/b", b"2")
                snap = await _until(
                    lambda: tree.get(timeout=self.event_timeout),
                    lambda s: len(s) == 2,
                    self.event_timeout,
                )
                assert [p.key for p in snap] == ["tree/a", "tree/b"]

        arun(test)

    def test_cancelled_iteration_closes_the_watch(self, arun: Any) -> None:
        async def test(store: AsyncStore) -> None:
            if Capability.WATCH not in store.capabilities:
                pytest.skip("no WATCH")
            watch = store.watch("cw")

            async def consume() -> None:
                async for _ in watch:
                    pass

            task = asyncio.create_task(consume())
            # cancelled once the watch is open and the iteration waits for events (opening
            # takes a round trip: a fixed sleep was too short on a loaded machine)
            await _until(lambda: asyncio.sleep(0.05, watch._watch), lambda w: w is not None, 30)
            await asyncio.sleep(0.1)
            await _cancel(task)
            assert watch.closed
            inner = watch._watch
            assert inner is not None
            await _until(lambda: asyncio.sleep(0.05, inner.closed), bool, self.event_timeout)

        arun(test)

    def test_lock_async_context_manager(self, arun: Any, open_store: Any) -> None:
        other: Store = open_store()

        async def test(store: AsyncStore) -> None:
            if Capability.LOCK not in store.capabilities:
                pytest.skip("no LOCK")
            async with store.lock("lk", value=b"async", ttl=self.ttl) as lock:
                assert lock.held
                assert isinstance(lock.token, int)
                assert other.get("lk").value == b"async"
                assert not other.lock("lk", ttl=self.ttl).acquire(timeout=0.3)
            assert not lock.held
            assert not other.exists("lk")

        arun(test)

    def _assert_free(self, other: Store, key: str) -> None:
        """Nothing holds ``key``: it is absent, no bookkeeping shows, and a lock is taken
        at once."""
        assert not other.exists(key)
        lock = other.lock(key, ttl=self.ttl)
        assert lock.acquire(timeout=self.event_timeout), f"{key} is still held"
        lock.release()

    def test_cancelled_acquire_leaves_no_holder(self, arun: Any, open_store: Any) -> None:
        holder: Store = open_store()
        other: Store = open_store()

        async def test(store: AsyncStore) -> None:
            if Capability.LOCK not in store.capabilities:
                pytest.skip("no LOCK")
            for delay in (0.0, 0.3):
                held = holder.lock("cx", ttl=self.ttl)
                assert held.acquire(timeout=self.event_timeout)
                lock = store.lock("cx", ttl=self.ttl)
                task = asyncio.create_task(lock.acquire())
                await asyncio.sleep(0.3)
                # Free the lock just before cancelling: the attempt under way may win it.
                held.release()
                await asyncio.sleep(delay)
                await _cancel(task)
                if task.cancelled():
                    assert not lock.held
                else:
                    assert task.result()
                    await lock.release()
                assert other.list("") == []
                self._assert_free(other, "cx")

        arun(test)

    def test_acquire_under_asyncio_timeout(self, arun: Any, open_store: Any) -> None:
        holder: Store = open_store()
        other: Store = open_store()

        async def test(store: AsyncStore) -> None:
            if Capability.LOCK not in store.capabilities:
                pytest.skip("no LOCK")
            held = holder.lock("tx", ttl=self.ttl)
            assert held.acquire(timeout=self.event_timeout)
            lock = store.lock("tx", ttl=self.ttl)
            with pytest.raises((TimeoutError, asyncio.TimeoutError)):
                async with _timeout(0.5):
                    await lock.acquire()
            assert not lock.held
            held.release()
            self._assert_free(other, "tx")
            assert await lock.acquire(timeout=self.event_timeout)
            await lock.release()

        arun(test)

    def test_cancelled_campaign_leaves_no_leader(self, arun: Any, open_store: Any) -> None:
        holder: Store = open_store()
        other: Store = open_store()

        async def test(store: AsyncStore) -> None:
            if Capability.LOCK not in store.capabilities:
                pytest.skip("no LOCK")
            leader = pykv.recipes.Election(holder, "ce", ttl=self.ttl)
            assert leader.campaign(b"holder", timeout=self.event_timeout)
            election = pykv.aio.Election(store, "ce", ttl=self.ttl)
            task = asyncio.create_task(election.campaign(b"cancelled"))
            await asyncio.sleep(0.3)
            leader.resign()
            await _cancel(task)
            if not task.cancelled():
                await election.resign()
            assert not election.is_leader
            assert await election.leader() is None
            self._assert_free(other, "ce")

        arun(test)

    def test_cancelled_semaphore_acquire_holds_no_slot(self, arun: Any, open_store: Any) -> None:
        holder: Store = open_store()

        async def test(store: AsyncStore) -> None:
            if (
                Capability.LOCK not in store.capabilities
                or Capability.TTL not in store.capabilities
            ):
                pytest.skip("no LOCK or TTL")
            taken = pykv.recipes.Semaphore(holder, "cs", 1, ttl=self.ttl)
            assert taken.acquire(timeout=self.event_timeout)
            semaphore = pykv.aio.Semaphore(store, "cs", 1, value=b"cancelled", ttl=self.ttl)
            task = asyncio.create_task(semaphore.acquire())
            await asyncio.sleep(0.3)
            taken.release()
            await _cancel(task)
            if not task.cancelled():
                await semaphore.release()
            assert not semaphore.held
            assert await semaphore.holders() == []

        arun(test)

    def test_recipes(self, arun: Any) -> None:
        async def test(store: AsyncStore) -> None:
            needed = {Capability.LOCK, Capability.TTL, Capability.WATCH, Capability.WATCH_TREE}
            if not needed <= store.capabilities:
                pytest.skip("needs LOCK, TTL and watches")
            counter = pykv.aio.Counter(store, "ac")
            values = await asyncio.gather(*(counter.add() for _ in range(5)))
            assert sorted(values) == [1, 2, 3, 4, 5]
            assert await counter.value() == 5

            group = pykv.aio.Group(store, "ag")
            async with group.watch() as members:
                assert await members.get(timeout=self.event_timeout) == {}
                await group.join("me", b"meta", ttl=self.ttl)
                await _until(
                    lambda: members.get(timeout=self.event_timeout),
                    lambda m: m == {"me": b"meta"},
                    self.event_timeout,
                )
            assert await pykv.aio.Partitioner(group).owner("item") == "me"
            await group.leave()

            election = pykv.aio.Election(store, "ae", ttl=self.ttl)
            async with election.observe() as leaders:
                assert await leaders.get(timeout=self.event_timeout) is None
                async with election:
                    assert election.is_leader
                    await _until(
                        lambda: leaders.get(timeout=self.event_timeout),
                        lambda v: v == b"",
                        self.event_timeout,
                    )
                assert await election.leader() is None

            async with pykv.aio.Semaphore(store, "as", 1, ttl=self.ttl) as semaphore:
                assert semaphore.held

            barrier = [pykv.aio.Barrier(store, "ab", 2, ttl=self.ttl) for _ in range(2)]
            assert await asyncio.gather(*(b.wait(timeout=30) for b in barrier)) == [True, True]

        arun(test)

    def test_many_watches_park_no_thread(self, arun: Any) -> None:
        async def test(store: AsyncStore) -> None:
            if Capability.WATCH not in store.capabilities:
                pytest.skip("no WATCH")
            threads_before, rss_before = threading.active_count(), _rss_mib()
            watches = [store.watch("many") for _ in range(self.many_watches)]
            try:
                firsts = await asyncio.gather(*(w.get(timeout=60) for w in watches))
                assert firsts == [None] * self.many_watches
                aio_threads = [t for t in threading.enumerate() if t.name.startswith("pykv-aio")]
                assert len(aio_threads) <= pykv.aio.DEFAULT_MAX_WORKERS
                sys.stderr.write(
                    f"[pykv aio] {self.many_watches} async watches on {type(store.sync).__name__}"
                    f": threads {threads_before} -> {threading.active_count()} "
                    f"({len(aio_threads)} in the aio pool), "
                    f"RSS {rss_before:.1f} -> {_rss_mib():.1f} MiB\n"
                )
                await store.put("many", b"v")

                async def changed(watch: pykv.aio.AsyncWatch[KVPair | None]) -> KVPair | None:
                    return await _until(
                        lambda: watch.get(timeout=self.event_timeout),
                        lambda p: p is not None,
                        self.event_timeout,
                    )

                events = await asyncio.gather(*(changed(w) for w in watches))
                assert {e.value for e in events if e is not None} == {b"v"}
            finally:
                await asyncio.gather(*(w.close() for w in watches))

        arun(test)
