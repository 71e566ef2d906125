"""The registrar's threads: supervision, the per-container worker pool, back-off.

No background thread dies silently. :class:`Supervisor` runs each thread's loop; an
unexpected exception is logged with its traceback, counted (``errors_total{kind="thread"}``),
shown by :meth:`Supervisor.down` (``/healthz`` answers 503 while a thread is down), and the
loop is restarted after a back-off, followed by the ``on_restart`` hook (the registrar asks for
a full reconciliation: whatever the thread was doing is redone).

:class:`WorkerPool` gives each container one worker, so that its events are handled in order;
a failure handling one container is logged and the worker goes on with the next.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import tenacity

from .observe import Metrics

__all__ = ["Supervisor", "WorkerPool", "backoff_seconds", "exponential_backoff"]

log = logging.getLogger("pykv.registrar")

Loop = Callable[[], None]


def exponential_backoff(initial: float, maximum: float) -> Any:
    """tenacity's exponential wait with jitter, from ``initial`` up to ``maximum`` seconds."""
    try:
        return tenacity.wait_exponential_jitter(multiplier=initial, max=maximum)
    except TypeError:  # tenacity before 9.1 calls it ``initial``
        return tenacity.wait_exponential_jitter(initial=initial, max=maximum)


def backoff_seconds(wait: Any, attempt: int) -> float:
    """A tenacity wait strategy's delay for the ``attempt``-th consecutive failure."""
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt
    return float(wait(state))


class Supervisor:
    """Runs named loops in daemon threads and restarts the ones that crash."""

    def __init__(
        self, stop: threading.Event, metrics: Metrics, max_backoff: float, on_restart: Loop
    ) -> None:
        self._stop = stop
        self._metrics = metrics
        self._max_backoff = max_backoff
        self._on_restart = on_restart
        self._lock = threading.Lock()
        self._down: dict[str, str] = {}  # thread name -> the error it is restarting after
        self._threads: list[threading.Thread] = []
        self.restarts = 0

    def start(self, name: str, target: Loop) -> None:
        """Run ``target`` supervised in a thread of its own, named ``pykv-registrar-<name>``."""
        thread = threading.Thread(
            target=self.run, args=(name, target), name=f"pykv-registrar-{name}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def run(self, name: str, target: Loop) -> None:
        """Run ``target`` until it returns (it does when stopping); restart it after a crash."""
        backoff = exponential_backoff(0.5, self._max_backoff)
        failures = 0
        while not self._stop.is_set():
            try:
                target()
                return
            except Exception as exc:
                failures += 1
                self._metrics.errors.labels("thread").inc()
                with self._lock:
                    self._down[name] = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("thread %s failed; restarting it", name)
            self._stop.wait(backoff_seconds(backoff, failures))
            with self._lock:
                self._down.pop(name, None)
                self.restarts += 1
            self._on_restart()

    def down(self) -> dict[str, str]:
        """The threads down now (name -> the error), waiting for their restart."""
        with self._lock:
            return dict(self._down)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))


class _Barrier:
    def __init__(self, count: int) -> None:
        self._left = count
        self._cond = threading.Condition()

    def done(self) -> None:
        with self._cond:
            self._left -= 1
            self._cond.notify_all()

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._left > 0 and not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
            return self._left <= 0


class WorkerPool:
    """``count`` queues, each drained by one loop calling ``handle(container_id)``."""

    def __init__(self, count: int, handle: Callable[[str], None], stop: threading.Event) -> None:
        self._handle = handle
        self._stop = stop
        self._queues: list[queue.SimpleQueue[tuple[str, Any]]] = [
            queue.SimpleQueue() for _ in range(count)
        ]

    def loops(self) -> list[tuple[str, Loop]]:
        """(name, loop) of every worker, for a :class:`Supervisor`."""
        return [(f"worker-{n}", lambda q=q: self._loop(q)) for n, q in enumerate(self._queues)]  # type: ignore[misc]

    def submit(self, cid: str) -> None:
        """Queue a sync of the container, behind its earlier ones."""
        self._queue_of(cid).put(("sync", cid))

    def drain(self, timeout: float) -> bool:
        """Wait until everything queued before now is handled; False on time-out or stop."""
        barrier = _Barrier(len(self._queues))
        for q in self._queues:
            q.put(("barrier", barrier))
        return barrier.wait(self._stop, timeout=timeout)

    def close(self) -> None:
        """End every loop once it gets to the end of its queue."""
        for q in self._queues:
            q.put(("", None))

    def _queue_of(self, cid: str) -> queue.SimpleQueue[tuple[str, Any]]:
        return self._queues[int(cid[:8], 16) % len(self._queues) if _is_hex(cid[:8]) else 0]

    def _loop(self, q: queue.SimpleQueue[tuple[str, Any]]) -> None:
        while not self._stop.is_set():
            kind, arg = q.get()
            if kind == "sync":
                try:
                    self._handle(arg)
                except Exception:  # a bug must not kill the worker
                    log.exception("handling container %s failed", arg[:12])
            elif kind == "barrier":
                arg.done()
            else:
                return


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True
