"""Locks on Consul: the lock key itself, acquired by a session of its own."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

from pykv import Lock, PyKVError

from ._transport import TxnFailed, b64

if TYPE_CHECKING:
    from ._store import ConsulStore, _Session

__all__ = ["ConsulLock"]


class ConsulLock(Lock):
    """A lock whose key holds its value and belongs to a session made for this lock.

    Acquiring is a transaction ``lock`` of the key with the session, so the key, its value and
    the hold appear at once; the fencing token is the key's ModifyIndex at that moment (a raft
    index: it grows with every acquisition by anyone, even after the key was deleted). While
    held, a blocking query on the key sets ``lost`` when the key is deleted or another session
    takes it, and the store's renewer sets it when the session is invalidated or cannot be
    renewed for 1.5 session TTLs (Consul drops it after 2). Releasing destroys the session,
    and ``Behavior=delete`` makes Consul delete the key in the same raft entry.
    """

    store: ConsulStore

    def __init__(self, store: ConsulStore, key: str, value: bytes, ttl: float) -> None:
        super().__init__(store, key, value, ttl)
        self._session: _Session | None = None
        self._watching = threading.Event()

    def _on_session_lost(self, reason: str) -> None:
        self._mark_lost(reason)

    def _try(self, path: str, session: _Session) -> int | None:
        op = {"Verb": "lock", "Key": path, "Value": b64(self.value), "Session": session.id}
        try:
            # Idempotent: locking again with the same session succeeds.
            results = self.store._transport.txn(f"lock {self.key!r}", [op], idempotent=True)
        except TxnFailed as exc:
            if "already held" not in str(exc):
                session.lost = True  # invalidated meanwhile: a new session is needed
            return None
        return int(results[0]["KV"]["ModifyIndex"])

    def _acquire(self, timeout: float | None) -> int | None:
        store = self.store
        path = store._path(self.key)
        deadline = None if timeout is None else time.monotonic() + timeout
        session: _Session | None = None
        try:
            while True:
                store._check_open()
                if session is None or session.lost:
                    if session is not None:
                        self._drop(session)
                    session = store._create_session(
                        f"lock {self.key!r} of {store}",
                        self.ttl,
                        self._on_session_lost,
                        gives_up=True,
                    )
                token = self._try(path, session)
                if token is not None:
                    self._session = session
                    self._monitor(path, session, token)
                    with store._mutex:
                        store._locks.add(self)
                    return token
                if session.lost:
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._drop(session)
                    return None
                # Wait for the holder to go: a blocking query on the key, at most `remaining`.
                index, entry = store._transport.kv_get(f"lock {self.key!r}", path)
                if entry is None or not entry.get("Session"):
                    continue
                wait = store._wait if remaining is None else max(0.01, min(store._wait, remaining))
                store._transport.kv_get(f"wait for lock {self.key!r}", path, index=index, wait=wait)
        except BaseException:
            if session is not None:
                self._drop(session)
            raise

    def _drop(self, session: _Session) -> None:
        with contextlib.suppress(PyKVError):  # else it expires on its own within the TTL
            self.store._destroy(session)

    def _monitor(self, path: str, session: _Session, token: int) -> None:
        """Watch the held key: deleted, or held by another session, means lost."""
        stop = threading.Event()
        self._watching = stop

        def check(entry: dict[str, Any] | None) -> bool:
            if stop.is_set():
                return False
            if entry is None:
                self._mark_lost("its key was deleted")
                return False
            if entry.get("Session") != session.id:
                self._mark_lost("another session took its key")
                return False
            return True

        self.store._start_thread(
            f"pykv-consul-lock {self.key}",
            lambda: self.store._poll(
                f"hold lock {self.key!r}",
                path,
                token,
                check,
                stop,
                lambda exc: self._mark_lost(f"watching its key failed: {exc}"),
            ),
        )

    def _release(self) -> None:
        self._watching.set()
        session, self._session = self._session, None
        with self.store._mutex:
            self.store._locks.discard(self)
        if session is not None:
            # Destroying the session deletes the key (Behavior=delete) in the same raft entry;
            # the monitor's blocking query returns on that deletion and sees `stop`.
            self.store._destroy(session)
