"""Helpers of the conformance suite: bounded waiting and child processes."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .._store import Watch

__all__ = ["ChildProcess", "drain_until", "wait_until"]

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll ``predicate`` until true; return the seconds it took, or fail after ``timeout``."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def drain_until(watch: Watch[T], predicate: Callable[[T], bool], timeout: float) -> T:
    """Read events until one satisfies ``predicate``; return it. Fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    seen: list[T] = []
    while True:
        remaining = deadline - time.monotonic()
        try:
            event = watch.get(timeout=max(0.0, remaining))
        except TimeoutError:
            raise AssertionError(
                f"no matching event on {watch.description} within {timeout} s; saw {seen[-5:]!r}"
            ) from None
        if predicate(event):
            return event
        seen.append(event)


class ChildProcess:
    """A Python child that opens a store and does one thing (see ``pykv.testing._child``).

    It prints one JSON line when ready; :meth:`kill` sends SIGKILL, as a crash would.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        action: str,
        *args: str,
        options: dict[str, Any] | None = None,
        ready_timeout: float = 30.0,
        module: str = "pykv.testing._child",
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            module,
            url,
            prefix,
            json.dumps(options or {}),
            action,
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready = self.read(ready_timeout)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the child printed."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise AssertionError(
                f"child {self.proc.args!r} printed nothing in {timeout} s"
            ) from None
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"child exited ({self.proc.wait()}) before answering: {err}")
        result: dict[str, Any] = json.loads(line)
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
