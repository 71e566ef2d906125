"""etcd v3 leases of a store: TTL keys' shared leases and one lease per lock acquisition.

:class:`Leases` grants them, renews each at a third of its TTL on one keeper thread, tells the
locks on a lease that may have expired that they are lost (before etcd could hand the lock on),
writes the TTL keys of an expired lease again (the core's :class:`~pykv.kit.TTLKeys`), and
revokes leases given up while etcd could not be reached. It knows the store only through the
calls it is given, so that it can be read (and tested) on its own.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc
from pyetcd import etcdrpc

from pykv import PyKVError, UnavailableError
from pykv.kit import Created, TTLKeys

from ._v3client import _absent, _Client, _LeaseGoneError, _unchanged

log = logging.getLogger("pykv.etcd")
T = TypeVar("T")


class LeaseHolder(Protocol):
    """What the keeper needs of a lock held on a lease."""

    _path: bytes

    @property
    def held(self) -> bool: ...

    @property
    def token(self) -> int | None: ...

    def _mark_lost(self, reason: str) -> None: ...

    def _lose(self, reason: str) -> None: ...


@dataclass(eq=False)
class _Lease:
    """A lease of the store: shared by its TTL keys of one TTL (whole seconds), or the lease
    of one lock acquisition (``for_lock``)."""

    ttl: int
    for_lock: bool = False
    id: int = 0
    granted: int = 0
    #: monotonic time after which the server may have expired the lease
    expires: float = 0.0
    next_renewal: float = 0.0
    locks: set[LeaseHolder] = field(default_factory=set)


Call = Callable[..., Any]


class Leases:
    """The leases of one store and their keeper thread (thread-safe under ``mutex``)."""

    def __init__(
        self,
        name: str,
        timeout: float,
        ttl_slack: float,
        call: Call,
        client: Callable[[], _Client],
        check_open: Callable[[], None],
    ) -> None:
        #: the store, as logs and errors name it
        self.name = name
        self.timeout = timeout
        self._ttl_slack = ttl_slack
        #: the store's unary call: (what, method, request, stub=, deadline=, conditional=)
        self._call = call
        self._client = client
        self._check_open = check_open
        self.mutex = threading.RLock()
        #: leases of TTL keys, one per TTL
        self._ttl_leases: dict[int, _Lease] = {}
        #: one lease per lock acquisition
        self.lock_leases: set[_Lease] = set()
        #: leases given up while etcd could not be reached: lease ID -> when etcd surely
        #: expired it; the keeper revokes them until then, so their keys go sooner
        self._abandoned: dict[int, float] = {}
        #: the TTL keys written, by lease (re-created when a lease expires anyway)
        self.ttl_keys: TTLKeys[bytes, _Lease] = TTLKeys(self.mutex)
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self.wake = threading.Event()

    def held_locks(self) -> list[LeaseHolder]:
        with self.mutex:
            return [
                lock for x in (*self._ttl_leases.values(), *self.lock_leases) for lock in x.locks
            ]

    def stop(self) -> None:
        """Stop the keeper (no new lock lease from now on) and wait for it."""
        self._stop.set()
        self.wake.set()
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(timeout=self.timeout)

    def revoke_all(self) -> None:
        """Revoke every lease (which deletes their keys at once) and forget them."""
        with self.mutex:
            leases = [*self._ttl_leases.values(), *self.lock_leases]
            self._ttl_leases.clear()
            self.lock_leases.clear()
            self._abandoned.clear()
        for lease in leases:
            with contextlib.suppress(PyKVError):
                self._revoke(lease.id, "revoke a lease")

    def _revoke(self, lease_id: int, what: str, deadline: float | None = None) -> None:
        """Revoke a lease, which deletes its keys at once (``_LeaseGoneError``: etcd no longer
        knows it)."""
        request = etcdrpc.LeaseRevokeRequest(ID=lease_id)
        self._call(what, "LeaseRevoke", request, stub="lease", deadline=deadline)

    def _ensure_keeper(self) -> None:
        """Start the keepalive thread (with ``mutex`` held)."""
        if self._keeper is None:
            self._keeper = threading.Thread(
                target=self._keep_alive, name=f"pykv-etcd-leases-{self.name}", daemon=True
            )
            self._keeper.start()

    def for_ttl(self, ttl: float) -> _Lease:
        """The store's lease of TTL keys for ``ttl`` (whole seconds, rounded up), granted on
        first use."""
        seconds = max(1, math.ceil(ttl))
        with self.mutex:
            self._check_open()
            lease = self._ttl_leases.get(seconds)
            if lease is None:
                lease = _Lease(seconds)
                self.grant(lease)
                self._ttl_leases[seconds] = lease
                self.wake.set()
            self._ensure_keeper()
            return lease

    def for_lock(self, ttl: float, deadline: float) -> _Lease:
        """A new lease for one lock acquisition, kept alive until it is dropped.

        Locks never share a lease: a lease whose renewal is overdue may have expired in etcd
        already, so a lock must never be granted on it, and a lock whose release fails can
        let its lease go without taking other keys or locks with it."""
        self._check_open()
        lease = _Lease(max(1, math.ceil(ttl)), for_lock=True)
        self.grant(lease, deadline)
        with self.mutex:
            closing = self._stop.is_set()
            if not closing:
                self.lock_leases.add(lease)
                self._ensure_keeper()
        if closing:  # close() ran meanwhile and revoked every lease it knew of
            with contextlib.suppress(PyKVError):
                self.drop(lease, time.monotonic() + min(self.timeout, 1.0))
            self._check_open()
        self.wake.set()
        return lease

    def drop(self, lease: _Lease, deadline: float) -> None:
        """Stop renewing a lock's lease and revoke it, which deletes its keys (the lock key and
        the queue key) at once. When etcd cannot be reached by ``deadline`` the error is
        raised, and the lease is abandoned: the keeper goes on revoking it until etcd has
        surely expired it, at the latest one TTL after its last renewal."""
        with self.mutex:
            self.lock_leases.discard(lease)
        try:
            self._revoke(lease.id, "revoke a lease", deadline)
        except _LeaseGoneError:
            pass  # expired, or revoked by an earlier attempt whose answer was lost
        except PyKVError:
            self.abandon(lease)
            raise

    def abandon(self, lease: _Lease) -> None:
        """Stop renewing a lock's lease; the keeper revokes it in the background."""
        with self.mutex:
            self.lock_leases.discard(lease)
            if not self._stop.is_set():
                # Renewals already sent may still land: give them one more TTL.
                until = max(lease.expires, time.monotonic()) + lease.granted + self._ttl_slack
                self._abandoned[lease.id] = until
        self.wake.set()

    def with_lease(self, lease: _Lease, call: Callable[[], T]) -> T:
        """Run ``call`` (which writes with ``lease.id``); if etcd no longer knows the lease,
        replace it and run ``call`` once more."""
        seen = lease.id
        try:
            return call()
        except _LeaseGoneError:
            self.replace(lease, seen)
            return call()

    def grant(self, lease: _Lease, deadline: float | None = None) -> None:
        sent = time.monotonic()
        request = etcdrpc.LeaseGrantRequest(TTL=lease.ttl, ID=0)
        response = self._call(
            f"grant a {lease.ttl} s lease", "LeaseGrant", request, stub="lease", deadline=deadline
        )
        if response.error:
            raise UnavailableError(f"etcd refused a lease on {self.name}: {response.error}")
        lease.id, lease.granted = response.ID, response.TTL
        lease.expires = sent + response.TTL
        lease.next_renewal = sent + response.TTL / 3

    @staticmethod
    def lost_at(lease: _Lease) -> float:
        """When the locks on ``lease`` must count as lost if it was not renewed: a margin
        before the earliest moment etcd could expire it (the send time of the last request
        etcd confirmed, grant or renewal, plus the TTL)."""
        return lease.expires - max(0.5, lease.granted * 0.15)

    def _renew(self, lease: _Lease, cap: float | None) -> int:
        """One LeaseKeepAlive round trip; returns the TTL etcd gave (0: the lease is gone).
        Gives up at ``cap``, when the keeper must be back to tell some lock it is lost."""
        client = self._client()
        now = time.monotonic()
        deadline = now + min(self.timeout, max(0.5, lease.granted / 3))
        if cap is not None:
            deadline = max(min(deadline, cap), now + 0.05)
        # Split the budget so that a member that does not answer leaves time for another
        # (a keepalive is idempotent, so sending it again elsewhere is safe).
        attempt = max(0.25, (deadline - now) / 2) if len(client._endpoints) > 1 else math.inf
        backoff = 0.02
        while True:
            ep = client.endpoint()
            call: Any = None
            try:
                call = ep.lease.LeaseKeepAlive(
                    iter([etcdrpc.LeaseKeepAliveRequest(ID=lease.id)]),
                    timeout=max(0.001, min(attempt, deadline - time.monotonic())),
                    metadata=client.metadata,
                )
                for response in call:
                    return int(response.TTL)
                raise UnavailableError(f"renew the lease on {self.name}: the stream ended")
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return 0
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED and client.metadata:
                    client._authenticate(deadline)
                    continue
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    # Also when no time is left: the next renewal must go to another member.
                    client.failover(ep)
                    if time.monotonic() + backoff < deadline:
                        time.sleep(backoff)
                        backoff *= 2
                        continue
                raise client.error(exc, "renew the lease", ep) from exc
            finally:
                if call is not None:
                    call.cancel()

    def _keep_alive(self) -> None:
        """The keepalive thread: renews every lease at a third of its TTL; re-creates the TTL
        keys of a lease that expired anyway; marks the locks on a lease that may have expired
        lost, in time, and lets that lease go; revokes abandoned leases."""
        next_revoke = 0.0
        while not self._stop.is_set():
            with self.mutex:
                leases = [*self._ttl_leases.values(), *self.lock_leases]
                abandoned = bool(self._abandoned)
            now = time.monotonic()
            # When some lock must be told it is lost; nothing may keep the keeper past it.
            tell = [self.lost_at(x) - 0.1 for x in leases if any(k.held for k in x.locks)]
            cap = min(tell) if tell else None
            due = [lease.next_renewal for lease in leases] + tell
            if abandoned:
                due.append(next_revoke)
            wait = min([t - now for t in due] + [1.0])
            if wait > 0:
                self.wake.wait(wait)
                self.wake.clear()
                continue
            if abandoned and now >= next_revoke:
                self._revoke_abandoned(cap)
                next_revoke = time.monotonic() + 0.25
            for lease in leases:
                if self._stop.is_set():
                    return
                self._tend(lease, cap)

    def _tend(self, lease: _Lease, cap: float | None) -> None:
        """One lease's turn in the keeper: tell its locks they are lost if it may have expired,
        else renew it when due (never past ``cap``, when some lock must be told)."""
        if lease.for_lock and time.monotonic() >= self.lost_at(lease) - 0.1:
            # Tell the holder before etcd can expire the lease and hand the lock on; the
            # lease is presumed dead from now on, even if a renewal comes through.
            for lock in list(lease.locks):
                lock._mark_lost("etcd could not be reached for nearly the lease's TTL")
            self.abandon(lease)
            return
        if time.monotonic() < lease.next_renewal:
            return
        sent = time.monotonic()
        try:
            ttl = self._renew(lease, cap)
            if ttl > 0:
                lease.expires = sent + ttl
                lease.next_renewal = sent + max(0.2, lease.granted / 3)
                self._check_locks(lease)
                self.recreate(lease)  # what a replacement could not write yet
            elif lease.for_lock:
                for lock in list(lease.locks):
                    lock._mark_lost("its etcd lease expired")
                with self.mutex:
                    self.lock_leases.discard(lease)
            else:
                self.replace(lease, lease.id)
        except PyKVError as exc:
            log.warning("renewing the %d s lease of %s failed: %s", lease.ttl, self.name, exc)
            lease.next_renewal = time.monotonic() + min(0.25, lease.granted / 10)
        except Exception:  # keep the thread alive: TTL keys depend on it
            log.exception("lease keepalive of %s failed", self.name)
            lease.next_renewal = time.monotonic() + 1.0

    def _revoke_abandoned(self, cap: float | None) -> None:
        """One attempt to revoke each abandoned lease, forgotten once etcd surely expired it."""
        with self.mutex:
            items = list(self._abandoned.items())
        for lease_id, until in items:
            now = time.monotonic()
            gone = now >= until
            if not gone and not self._stop.is_set():
                deadline = min(until, now + 0.5) if cap is None else min(until, now + 0.5, cap)
                try:
                    self._revoke(lease_id, "revoke an abandoned lease", max(deadline, now + 0.05))
                    gone = True
                except _LeaseGoneError:
                    gone = True
                except PyKVError as exc:
                    log.debug(
                        "revoking abandoned lease %x of %s failed: %s", lease_id, self.name, exc
                    )
            if gone:
                with self.mutex:
                    self._abandoned.pop(lease_id, None)

    def _check_locks(self, lease: _Lease) -> None:
        """With each renewal: a held lock whose key was deleted or overwritten is lost."""
        with self.mutex:
            locks = [lock for lock in lease.locks if lock.held]
        if not locks:
            return
        ranges = [
            etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=lock._path, keys_only=True))
            for lock in locks
        ]
        response = self._call("check held locks", "Txn", etcdrpc.TxnRequest(success=ranges))
        for lock, result in zip(locks, response.responses, strict=True):
            kvs = result.response_range.kvs
            if not kvs:
                lock._lose("its key was deleted")
            elif kvs[0].create_revision != lock.token or kvs[0].lease != lease.id:
                lock._lose("its key was overwritten")

    def replace(self, lease: _Lease, seen: int) -> None:
        """The TTL keys' lease ``seen`` expired while the store is open: a new one, and the TTL
        keys back. Does nothing if another thread replaced it already."""
        with self.mutex:
            if lease.id != seen:
                return
            self.grant(lease)
            missing = self.ttl_keys.lose(lease)
        log.warning(
            "the %d s lease of %s expired; re-creating %d keys", lease.ttl, self.name, missing
        )
        try:
            self.recreate(lease)
        except PyKVError as exc:  # the rest is retried after the next renewal
            log.warning("re-creating the TTL keys of %s failed: %s; retrying", self.name, exc)

    def recreate(self, lease: _Lease) -> None:
        """Write the TTL keys of ``lease`` that are missing since it was replaced, only where
        nobody wrote them meanwhile. A failure leaves the rest for the next renewal."""
        lease_id = lease.id

        def create(path: bytes, value: bytes) -> Created:
            request = etcdrpc.TxnRequest(
                compare=[_absent(path)],
                success=[
                    etcdrpc.RequestOp(
                        request_put=etcdrpc.PutRequest(key=path, value=value, lease=lease_id)
                    )
                ],
                failure=[
                    etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=path, keys_only=True))
                ],
            )
            response = self._call("re-create a TTL key", "Txn", request)
            if response.succeeded:
                return Created(True, int(response.header.revision))
            kvs = response.responses[0].response_range.kvs
            return Created(False, ours=bool(kvs) and kvs[0].lease == lease_id)

        def delete_if_at(path: bytes, revision: int) -> None:
            request = etcdrpc.TxnRequest(
                compare=[_unchanged(path, revision)],
                success=[
                    etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=path))
                ],
            )
            self._call("undo the re-creation of a TTL key", "Txn", request)

        self.ttl_keys.recreate(lease, create, delete_if_at)
