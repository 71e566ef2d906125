"""Every watch of an etcd v3 store on one gRPC stream (etcd multiplexes watchers by id).

One supervised thread per store reads the stream and hands each response to its watcher's
callbacks; opening or closing a watch sends a create or cancel request on the same stream, so
a thousand watches cost one stream and one thread, not a thousand. When the stream fails
(server restart, leader change, endpoint cut off) it is opened again on the client's current
endpoint with backoff, and every watcher is re-created from the revision after the last event
it saw. A watcher whose revision was compacted re-reads its state (``on_compacted``) and goes
on from there.

etcd numbers the watchers of a stream itself and confirms each create request, in the order
sent, with a ``created`` response carrying the number (the generated stubs here predate the
request field that would let the client choose it), so creations are matched to confirmations
in order, and a watch closed before its confirmation is cancelled when it comes.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from pyetcd import etcdrpc

from pykv import PermissionDeniedError, PyKVError, UnavailableError, Watch
from pykv.kit import Change, KeyFeed, TreeFeed

from ._v3client import _AUTH_TEXT, _MAX_BACKOFF, _Client, _Endpoint

log = logging.getLogger("pykv.etcd")


@dataclass(eq=False)
class Watcher:
    """One watch of ``[key, range_end)``: where it goes on from and whom it tells."""

    name: str
    key: bytes
    range_end: bytes | None
    next_revision: int
    on_events: Callable[[Sequence[Any]], None]
    #: re-read the state after a compaction; returns the revision it was read at
    on_compacted: Callable[[], int]
    on_error: Callable[[PyKVError], None]
    #: closes the watch it feeds (when the store closes)
    close: Callable[[], None] = lambda: None
    #: etcd's number for it on the current stream; -1 until confirmed
    id: int = -1

    def create_request(self) -> Any:
        create = etcdrpc.WatchCreateRequest(
            key=self.key, start_revision=self.next_revision, progress_notify=True
        )
        if self.range_end is not None:
            create.range_end = self.range_end
        return etcdrpc.WatchRequest(create_request=create)


class WatchMux:
    """The store's watch stream and its watchers (thread-safe)."""

    def __init__(self, name: str, timeout: float, client: Callable[[], _Client]) -> None:
        #: the store, as logs and errors name it
        self.store = name
        self._timeout = timeout
        self._client = client
        self._mutex = threading.Lock()
        #: every open watcher, in the order they were added (re-created in that order)
        self._open: dict[Watcher, None] = {}
        #: on the current stream: confirmed watchers by etcd's number, and those sent but not
        #: yet confirmed, in the order their create requests were sent
        self._confirmed: dict[int, Watcher] = {}
        self._unconfirmed: collections.deque[Watcher] = collections.deque()
        self._outbox: queue.SimpleQueue[Any] | None = None
        self._call: Any = None
        self._endpoint: _Endpoint | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def add(self, watcher: Watcher) -> None:
        """Start ``watcher``: its events reach its callbacks from the stream's thread."""
        with self._mutex:
            if self._stop.is_set():
                raise UnavailableError(f"{watcher.name}: the store {self.store} is closed")
            self._open[watcher] = None
            self._send_create(watcher)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"pykv-etcd watch(es) of {self.store}", daemon=True
                )
                self._thread.start()

    def open(
        self,
        watch: Watch[Any],
        what: str,
        key: bytes,
        range_end: bytes | None,
        revision: int,
        feed: KeyFeed | TreeFeed,
        reread: Callable[[], int],
    ) -> None:
        """Feed ``feed`` (of ``watch``) with the changes of ``[key, range_end)`` after
        ``revision``; ``reread`` re-reads the state after a compaction."""
        watcher = Watcher(
            what,
            key,
            range_end,
            revision + 1,
            lambda events: feed.apply(changes(events)),
            reread,
            watch._fail,
            watch.close,
        )
        watch._on_close = lambda: self.remove(watcher)
        self.add(watcher)

    def remove(self, watcher: Watcher) -> None:
        """Stop ``watcher``: no callback of it runs once this returns, except one already
        running on the stream's thread."""
        with self._mutex:
            if watcher not in self._open:
                return
            del self._open[watcher]
            if self._confirmed.pop(watcher.id, None) is watcher:
                self._send_cancel(watcher.id)
            # unconfirmed: cancelled when etcd confirms it (see _confirm)

    def _send_create(self, watcher: Watcher) -> None:
        """With ``_mutex`` held: ask the current stream (if any) for ``watcher``."""
        watcher.id = -1
        if self._outbox is not None:
            self._unconfirmed.append(watcher)
            self._outbox.put(watcher.create_request())

    def _send_cancel(self, watch_id: int) -> None:
        if self._outbox is not None:
            cancel = etcdrpc.WatchCancelRequest(watch_id=watch_id)
            self._outbox.put(etcdrpc.WatchRequest(cancel_request=cancel))

    @property
    def size(self) -> int:
        return len(self._open)

    def leave(self, failed: _Endpoint) -> None:
        """Restart on the client's current endpoint if the stream is on ``failed``: a member
        cut off from this client sends nothing, and the stream would only notice it after
        gRPC's keepalive timeout."""
        with self._mutex:
            call = self._call if self._endpoint is failed else None
        if call is not None:
            call.cancel()

    def stop(self) -> None:
        """Close every watch and end the stream."""
        with self._mutex:
            watchers = list(self._open)
        for watcher in watchers:
            watcher.close()
        self._stop.set()
        with self._mutex:
            call, thread = self._call, self._thread
            if self._outbox is not None:
                self._outbox.put(None)
        if call is not None:
            call.cancel()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._timeout)

    # -- the stream's thread ---------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                if self._stream():
                    backoff = 0.05
            except Exception as exc:  # a bug: end every watch with the error, never silently
                log.exception("the watch stream of %s failed", self.store)
                self._fail_all(UnavailableError(f"watching {self.store} failed: {exc!r}"))
                with self._mutex:
                    self._thread = None  # the next watch starts a new stream
                return
            self._stop.wait(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF * 2)

    def _stream(self) -> bool:
        """One stream on the current endpoint until it ends; True if it delivered anything."""
        client = self._client()
        ep = client.endpoint()
        outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self._mutex:
            self._outbox = outbox
            self._confirmed.clear()
            self._unconfirmed.clear()
            for watcher in self._open:
                self._send_create(watcher)

        def requests() -> Iterator[Any]:
            while (item := outbox.get()) is not None:
                yield item

        call: Any = None
        delivered = False
        try:
            # "hasleader": the server ends the stream when its member loses the leader, so
            # the watches move to a member that still sees updates.
            call = ep.watch.Watch(requests(), metadata=(*client.metadata, ("hasleader", "true")))
            with self._mutex:
                self._call, self._endpoint = call, ep
            if self._stop.is_set():
                return False
            for response in call:
                delivered |= self._dispatch(response)
        except _Restart:
            pass
        except grpc.RpcError as exc:
            if self._stop.is_set():
                return False
            mapped = client.error(exc, "watch", ep)
            if isinstance(mapped, PermissionDeniedError):
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED and client.metadata:
                    try:  # an expired token: log in again and go on
                        client._authenticate(time.monotonic() + client.timeout)
                        return True
                    except PyKVError:
                        pass
                self._fail_all(mapped)
                return False
            log.info("the watch stream of %s failed (%s); restarting", self.store, mapped)
            client.failover(ep)
        finally:
            with self._mutex:
                self._outbox = None
                self._call = None
                self._confirmed.clear()
                self._unconfirmed.clear()
            outbox.put(None)
            if call is not None:
                call.cancel()
        return delivered

    def _dispatch(self, response: Any) -> bool:
        if response.created:
            watcher = self._confirm(response)
        else:
            with self._mutex:
                watcher = self._confirmed.get(response.watch_id)
        if watcher is None:  # closed meanwhile
            return False
        if response.compact_revision:
            try:
                watcher.next_revision = watcher.on_compacted() + 1
            except PyKVError as exc:  # try again on a new stream
                log.info("%s: %s; retrying", watcher.name, exc)
                raise _Restart from exc
            self._recreate(watcher)
            return True
        if response.canceled:
            reason = response.cancel_reason
            if any(text in reason for text in _AUTH_TEXT):
                self._drop(watcher)
                watcher.on_error(PermissionDeniedError(f"{watcher.name} on {self.store}: {reason}"))
                return False
            log.info("%s: etcd cancelled the watch (%s); re-creating it", watcher.name, reason)
            self._recreate(watcher)
            if response.created:  # refused outright: ask again on a new stream, backing off
                raise _Restart
            return False
        if response.events:
            watcher.next_revision = response.events[-1].kv.mod_revision + 1
            watcher.on_events(response.events)
        elif not response.created:  # a progress notification
            watcher.next_revision = max(watcher.next_revision, response.header.revision + 1)
        return True

    def _confirm(self, response: Any) -> Watcher | None:
        """etcd confirmed the oldest create request still unconfirmed on this stream."""
        with self._mutex:
            if not self._unconfirmed:
                log.warning("%s: etcd confirmed a watch pykv did not ask for", self.store)
                return None
            watcher = self._unconfirmed.popleft()
            if watcher not in self._open:  # closed before its confirmation
                if not response.canceled:
                    self._send_cancel(response.watch_id)
                return None
            watcher.id = response.watch_id
            self._confirmed[watcher.id] = watcher
            return watcher

    def _recreate(self, watcher: Watcher) -> None:
        """Ask for ``watcher`` again (etcd ended it on this stream)."""
        with self._mutex:
            self._confirmed.pop(watcher.id, None)
            if watcher in self._open:
                self._send_create(watcher)

    def _drop(self, watcher: Watcher) -> None:
        with self._mutex:
            self._confirmed.pop(watcher.id, None)
            self._open.pop(watcher, None)

    def _fail_all(self, error: PyKVError) -> None:
        with self._mutex:
            watchers = list(self._open)
            self._open.clear()
            self._confirmed.clear()
        for watcher in watchers:
            watcher.on_error(error)


def changes(events: Sequence[Any]) -> list[Change]:
    """etcd's watch events as the core's changes (keys are the backend's paths)."""
    return [
        Change(
            ev.kv.mod_revision,
            ev.kv.key.decode("utf-8", "replace"),
            None if ev.type == ev.DELETE else ev.kv.value,
        )
        for ev in events
    ]


class _Restart(Exception):
    """End the current stream and open a new one."""
