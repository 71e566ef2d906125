"""The etcd v3 store (``etcd://``, ``etcd3://``, ``etcd+tls://``) on gRPC.

The gRPC messages and stubs come from etcd-sdk-python (``pyetcd.etcdrpc``, generated for current
protobuf); pykv issues the RPCs itself so that every call carries its deadline, fails over
between endpoints, and so that leases and watches are supervised (no etcd client keeps leases
alive in the background, and every gRPC client's watch dies for good when its server restarts).

Layout in etcd
    A key ``k`` of a store with prefix ``p`` lives at ``p/k`` (no leading ``/``) holding the raw
    value. Lock bookkeeping (one queue key per contender) lives under ``\\x00pykv-locks/``, a
    namespace no pykv key can reach: keys cannot contain control characters, and ``list("")``
    of a store without prefix starts at ``\\x01``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import grpc
from pyetcd import etcdrpc

from pykv import (
    Capability,
    ConfigurationError,
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
    KVPair,
    Lock,
    PermissionDeniedError,
    PyKVError,
    Store,
    StoreURL,
    UnavailableError,
    Watch,
)
from pykv.kit import Change, Created, KeyFeed, TreeFeed, TTLKeys

from ._v3client import (
    DEFAULT_PORT,
    KEYSPACE_START,
    LOCK_NAMESPACE,
    LOCK_WAIT_CHUNK,
    RANGE_ALL,
    EtcdOptions,
    _absent,
    _b,
    _Client,
    _Endpoint,
    _LeaseGoneError,
    _range_end,
    _unchanged,
)
from ._v3watch import Watcher, WatchMux

__all__ = ["EtcdOptions", "EtcdStore"]

log = logging.getLogger("pykv.etcd")
T = TypeVar("T")

# -- leases -----------------------------------------------------------------------------------


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
    locks: set[_EtcdLock] = field(default_factory=set)


class EtcdStore(Store):
    """The etcd v3 store. See the package documentation."""

    schemes: ClassVar[tuple[str, ...]] = ("etcd", "etcd3")
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    options_class = EtcdOptions
    distribution: ClassVar[str] = "pykvstore-etcd"
    #: Lease TTLs are whole seconds (rounded up; etcd's minimum is 2 s with default tuning) and
    #: etcd looks for expired leases every 0.5 s.
    ttl_slack: ClassVar[float] = 2.0
    since_exact: ClassVar[bool] = True
    options: EtcdOptions

    def __init__(self, url: StoreURL, options: EtcdOptions) -> None:
        super().__init__(url, options)
        if not url.hosts:
            raise ConfigurationError(f"{url}: an etcd URL needs at least one host[:port]")
        targets = [str(h.with_default_port(DEFAULT_PORT)) for h in url.hosts]
        # Watch streams, watches and lock waiters' calls, stopped on close; changed by user
        # threads, watch threads and close() at once, so only under this lock.
        self._registry = threading.Lock()
        self._mux = WatchMux(str(self), self.timeout, lambda: self._client)
        self._watches: set[Watch[Any]] = set()
        #: gRPC calls of lock waiters and their endpoints, cancelled on close or failover
        self._waits: dict[Any, _Endpoint] = {}
        #: leases of TTL keys, one per TTL
        self._leases: dict[int, _Lease] = {}
        #: one lease per lock acquisition (see _EtcdLock)
        self._lock_leases: set[_Lease] = set()
        #: leases given up while etcd could not be reached: lease ID -> when etcd surely
        #: expired it; the keeper revokes them until then, so their keys go sooner
        self._abandoned: dict[int, float] = {}
        self._lease_lock = threading.RLock()
        #: the TTL keys written, by lease (re-created when a lease expires anyway)
        self._ttl_keys: TTLKeys[bytes, _Lease] = TTLKeys(self._lease_lock)
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self._keeper_wake = threading.Event()
        self._client = _Client(str(self), self.timeout, options, targets, self._left)

    # -- helpers ---------------------------------------------------------------------------

    def _left(self, failed: _Endpoint) -> None:
        """The client failed over from ``failed``: move watch streams and lock waits off it."""
        with self._registry:
            waits = [call for call, ep in self._waits.items() if ep is failed]
        self._mux.leave(failed)
        for call in waits:
            call.cancel()  # the waiter re-reads the lock's state and waits on the new endpoint

    def _call(
        self,
        what: str,
        method: str,
        request: Any,
        stub: str = "kv",
        conditional: bool = False,
        deadline: float | None = None,
    ) -> Any:
        return self._client.call(
            what, stub, method, request, conditional=conditional, deadline=deadline
        )

    def _key(self, key: str) -> bytes:
        return _b(self._path(key))

    def _tree_range(self, prefix: str) -> tuple[bytes, bytes]:
        """The range of every key strictly below ``prefix`` (the whole store for "")."""
        base = self._path(prefix)
        if not base:
            return KEYSPACE_START, RANGE_ALL
        start = _b(base + "/")
        return start, _range_end(start)

    def _pair(self, kv: Any) -> KVPair:
        return KVPair(self._relative(kv.key.decode("utf-8", "replace")), kv.value, kv.mod_revision)

    def _forget(self, path: bytes, range_end: bytes | None = None) -> None:
        """Drop written TTL keys from memory after a plain write or a delete."""
        if range_end is None:
            self._ttl_keys.forget(path)
        else:
            self._ttl_keys.forget_where(
                lambda k: path <= k and (range_end == RANGE_ALL or k < range_end)
            )

    # -- keys and values -------------------------------------------------------------------

    def _get(self, key: str) -> KVPair:
        response = self._call(f"get {key!r}", "Range", etcdrpc.RangeRequest(key=self._key(key)))
        if not response.kvs:
            raise KeyNotFoundError(f"{key!r} not found in {self}")
        kv = response.kvs[0]
        return KVPair(key, kv.value, kv.mod_revision)

    def _exists(self, key: str) -> bool:
        request = etcdrpc.RangeRequest(key=self._key(key), count_only=True)
        return bool(self._call(f"exists {key!r}", "Range", request).count)

    def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        path = self._key(key)
        if ttl is None:
            self._call(f"put {key!r}", "Put", etcdrpc.PutRequest(key=path, value=value))
            self._forget(path)
            return
        lease = self._lease(ttl)
        self._with_lease(
            lease,
            lambda: self._call(
                f"put {key!r}", "Put", etcdrpc.PutRequest(key=path, value=value, lease=lease.id)
            ),
        )
        self._remember(lease, path, value)

    def _remember(self, lease: _Lease, path: bytes, value: bytes) -> None:
        self._ttl_keys.remember(lease, path, value)

    def _delete(self, key: str) -> None:
        path = self._key(key)
        # Forgotten before the delete is sent, so that a re-creation after a lease expiry
        # cannot outlive it (see _recreate).
        self._forget(path)
        self._call(f"delete {key!r}", "DeleteRange", etcdrpc.DeleteRangeRequest(key=path))

    def _list(self, prefix: str) -> list[KVPair]:
        start, end = self._tree_range(prefix)
        request = etcdrpc.RangeRequest(key=start, range_end=end)
        response = self._call(f"list {prefix!r}", "Range", request)
        return [self._pair(kv) for kv in response.kvs]

    def _delete_tree(self, prefix: str) -> None:
        start, end = self._tree_range(prefix)
        ops = [
            etcdrpc.RequestOp(
                request_delete_range=etcdrpc.DeleteRangeRequest(key=start, range_end=end)
            )
        ]
        if prefix:  # delete_tree("") spares the prefix's own key: it is outside the store
            base = _b(self._path(prefix))
            ops.append(etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=base)))
            self._forget(base)
        self._forget(start, end)  # before the delete, as in _delete
        self._call(f"delete_tree {prefix!r}", "Txn", etcdrpc.TxnRequest(success=ops))

    def _atomic_put(
        self, key: str, value: bytes, previous: KVPair | None, ttl: float | None
    ) -> KVPair:
        path = self._key(key)
        lease = self._lease(ttl) if ttl is not None else None
        compare = _absent(path) if previous is None else _unchanged(path, previous.revision)

        def txn() -> Any:
            put = etcdrpc.PutRequest(key=path, value=value, lease=lease.id if lease else 0)
            request = etcdrpc.TxnRequest(
                compare=[compare],
                success=[etcdrpc.RequestOp(request_put=put)],
                failure=[
                    etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=path, keys_only=True))
                ],
            )
            return self._call(f"atomic_put {key!r}", "Txn", request, conditional=True)

        response = txn() if lease is None else self._with_lease(lease, txn)
        if not response.succeeded:
            self._raise_conflict(key, previous, response)
        if lease is None:
            self._forget(path)
        else:
            self._remember(lease, path, value)
        return KVPair(key, value, response.header.revision)

    def _raise_conflict(self, key: str, previous: KVPair | None, response: Any) -> None:
        kvs = response.responses[0].response_range.kvs
        if previous is None:
            raise KeyExistsError(f"{key!r} already exists in {self}")
        if not kvs:
            raise KeyNotFoundError(f"{key!r} not found in {self}")
        raise KeyModifiedError(
            f"{key!r} is at revision {kvs[0].mod_revision}, not {previous.revision}, in {self}"
        )

    def _atomic_delete(self, key: str, previous: KVPair) -> None:
        path = self._key(key)
        # Forgotten before the delete is sent, as in _delete; remembered again if nothing
        # was deleted.
        tracked = self._ttl_keys.forget(path)
        try:
            self._delete_if_unchanged(key, path, previous)
        except BaseException:
            self._ttl_keys.restore(path, tracked)
            raise

    def _delete_if_unchanged(self, key: str, path: bytes, previous: KVPair) -> None:
        request = etcdrpc.TxnRequest(
            compare=[_unchanged(path, previous.revision)],
            success=[etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=path))],
            failure=[
                etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=path, keys_only=True))
            ],
        )
        response = self._call(f"atomic_delete {key!r}", "Txn", request, conditional=True)
        if not response.succeeded:
            self._raise_conflict(key, previous, response)

    # -- watches ---------------------------------------------------------------------------

    def _changed_since(self, key: str, since: int, *, tree: bool) -> bool | None:
        # Every key there now is unchanged since `since` (the core checked): compare the keys
        # at `since` with today's. A compacted `since` fails the historical read: resync.
        what = f"watch({key!r}, since={since})"
        start, end = self._tree_range(key) if tree else (self._key(key), b"")
        now = self._call(
            what, "Range", etcdrpc.RangeRequest(key=start, range_end=end, keys_only=True)
        )
        if since >= now.header.revision:
            return False
        then = self._call(
            what,
            "Range",
            # revision 0 would mean "now"; revision 1 is the empty store etcd starts from
            etcdrpc.RangeRequest(key=start, range_end=end, keys_only=True, revision=max(since, 1)),
        )
        return {kv.key for kv in then.kvs} != {kv.key for kv in now.kvs}

    def _changes(self, events: Sequence[Any]) -> list[Change]:
        return [
            Change(
                ev.kv.mod_revision,
                ev.kv.key.decode("utf-8", "replace"),
                None if ev.type == ev.DELETE else ev.kv.value,
            )
            for ev in events
        ]

    def _open_stream(
        self,
        watch: Watch[Any],
        what: str,
        key: bytes,
        range_end: bytes | None,
        revision: int,
        feed: KeyFeed | TreeFeed,
        reread: Callable[[], int],
    ) -> None:
        """Feed ``feed`` from the store's watch stream: ``[key, range_end)`` after ``revision``."""
        watcher = Watcher(
            what,
            key,
            range_end,
            revision + 1,
            lambda events: feed.apply(self._changes(events)),
            reread,
            watch._fail,
        )

        def closed() -> None:
            self._mux.remove(watcher)
            with self._registry:
                self._watches.discard(watch)

        watch._on_close = closed
        with self._registry:
            self._watches.add(watch)
        self._mux.add(watcher)

    def _watch(self, key: str) -> Watch[KVPair | None]:
        path = self._key(key)
        what = f"watch({key!r})"
        response = self._call(what, "Range", etcdrpc.RangeRequest(key=path))
        watch: Watch[KVPair | None] = Watch(f"{what} on {self}")
        current = self._pair(response.kvs[0]) if response.kvs else None
        feed = KeyFeed(watch, self._path(key), self._strip(), current, response.header.revision)

        def reread() -> int:  # after a compaction: the state now, flagged as a resync
            again = self._call(what, "Range", etcdrpc.RangeRequest(key=path))
            feed.reset(self._pair(again.kvs[0]) if again.kvs else None, again.header.revision)
            return int(again.header.revision)

        self._open_stream(watch, what, path, None, response.header.revision, feed, reread)
        return watch

    def _watch_tree(self, prefix: str) -> Watch[list[KVPair]]:
        start, end = self._tree_range(prefix)
        what = f"watch_tree({prefix!r})"
        read = etcdrpc.RangeRequest(key=start, range_end=end)
        response = self._call(what, "Range", read)
        watch: Watch[list[KVPair]] = Watch(f"{what} on {self}")
        current = [self._pair(kv) for kv in response.kvs]
        base = self._path(prefix)
        feed = TreeFeed(watch, base, self._strip(), current, response.header.revision)

        def reread() -> int:
            again = self._call(what, "Range", read)
            feed.reset_relative([self._pair(kv) for kv in again.kvs], again.header.revision)
            return int(again.header.revision)

        self._open_stream(watch, what, start, end, response.header.revision, feed, reread)
        return watch

    # -- leases ----------------------------------------------------------------------------

    def _ensure_keeper(self) -> None:
        """Start the keepalive thread (with ``_lease_lock`` held)."""
        if self._keeper is None:
            self._keeper = threading.Thread(
                target=self._keep_alive, name=f"pykv-etcd-leases-{self}", daemon=True
            )
            self._keeper.start()

    def _lease(self, ttl: float) -> _Lease:
        """The store's lease of TTL keys for ``ttl`` (whole seconds, rounded up), granted on
        first use."""
        seconds = max(1, math.ceil(ttl))
        with self._lease_lock:
            self._check_open()
            lease = self._leases.get(seconds)
            if lease is None:
                lease = _Lease(seconds)
                self._grant(lease)
                self._leases[seconds] = lease
                self._keeper_wake.set()
            self._ensure_keeper()
            return lease

    def _lock_lease(self, ttl: float, deadline: float) -> _Lease:
        """A new lease for one lock acquisition, kept alive until it is dropped.

        Locks never share a lease: a lease whose renewal is overdue may have expired in etcd
        already, so a lock must never be granted on it, and a lock whose release fails can
        let its lease go without taking other keys or locks with it."""
        self._check_open()
        lease = _Lease(max(1, math.ceil(ttl)), for_lock=True)
        self._grant(lease, deadline)
        with self._lease_lock:
            closing = self._stop.is_set()
            if not closing:
                self._lock_leases.add(lease)
                self._ensure_keeper()
        if closing:  # close() ran meanwhile and revoked every lease it knew of
            with contextlib.suppress(PyKVError):
                self._drop_lease(lease, time.monotonic() + min(self.timeout, 1.0))
            self._check_open()
        self._keeper_wake.set()
        return lease

    def _drop_lease(self, lease: _Lease, deadline: float) -> None:
        """Stop renewing a lock's lease and revoke it, which deletes its keys (the lock key and
        the queue key) at once. When etcd cannot be reached by ``deadline`` the error is
        raised, and the lease is abandoned: the keeper goes on revoking it until etcd has
        surely expired it, at the latest one TTL after its last renewal."""
        with self._lease_lock:
            self._lock_leases.discard(lease)
        try:
            self._call(
                "revoke a lease",
                "LeaseRevoke",
                etcdrpc.LeaseRevokeRequest(ID=lease.id),
                stub="lease",
                deadline=deadline,
            )
        except _LeaseGoneError:
            pass  # expired, or revoked by an earlier attempt whose answer was lost
        except PyKVError:
            self._abandon_lease(lease)
            raise

    def _abandon_lease(self, lease: _Lease) -> None:
        """Stop renewing a lock's lease; the keeper revokes it in the background."""
        with self._lease_lock:
            self._lock_leases.discard(lease)
            if not self._stop.is_set():
                # Renewals already sent may still land: give them one more TTL.
                until = max(lease.expires, time.monotonic()) + lease.granted + self.ttl_slack
                self._abandoned[lease.id] = until
        self._keeper_wake.set()

    def _with_lease(self, lease: _Lease, call: Callable[[], T]) -> T:
        """Run ``call`` (which writes with ``lease.id``); if etcd no longer knows the lease,
        replace it and run ``call`` once more."""
        seen = lease.id
        try:
            return call()
        except _LeaseGoneError:
            self._replace(lease, seen)
            return call()

    def _grant(self, lease: _Lease, deadline: float | None = None) -> None:
        sent = time.monotonic()
        request = etcdrpc.LeaseGrantRequest(TTL=lease.ttl, ID=0)
        response = self._call(
            f"grant a {lease.ttl} s lease", "LeaseGrant", request, stub="lease", deadline=deadline
        )
        if response.error:
            raise UnavailableError(f"etcd refused a lease on {self}: {response.error}")
        lease.id, lease.granted = response.ID, response.TTL
        lease.expires = sent + response.TTL
        lease.next_renewal = sent + response.TTL / 3

    @staticmethod
    def _lost_at(lease: _Lease) -> float:
        """When the locks on ``lease`` must count as lost if it was not renewed: a margin
        before the earliest moment etcd could expire it (the send time of the last request
        etcd confirmed, grant or renewal, plus the TTL)."""
        return lease.expires - max(0.5, lease.granted * 0.15)

    def _renew(self, lease: _Lease, cap: float | None) -> int:
        """One LeaseKeepAlive round trip; returns the TTL etcd gave (0: the lease is gone).
        Gives up at ``cap``, when the keeper must be back to tell some lock it is lost."""
        client = self._client
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
                raise UnavailableError(f"renew the lease on {self}: the stream ended")
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
            with self._lease_lock:
                leases = [*self._leases.values(), *self._lock_leases]
                abandoned = bool(self._abandoned)
            now = time.monotonic()
            # When some lock must be told it is lost; nothing may keep the keeper past it.
            tell = [self._lost_at(x) - 0.1 for x in leases if any(k.held for k in x.locks)]
            cap = min(tell) if tell else None
            due = [lease.next_renewal for lease in leases] + tell
            if abandoned:
                due.append(next_revoke)
            wait = min([t - now for t in due] + [1.0])
            if wait > 0:
                self._keeper_wake.wait(wait)
                self._keeper_wake.clear()
                continue
            if abandoned and now >= next_revoke:
                self._revoke_abandoned(cap)
                next_revoke = time.monotonic() + 0.25
            for lease in leases:
                if self._stop.is_set():
                    return
                if lease.for_lock and time.monotonic() >= self._lost_at(lease) - 0.1:
                    # Tell the holder before etcd can expire the lease and hand the lock on;
                    # the lease is presumed dead from now on, even if a renewal comes through.
                    for lock in list(lease.locks):
                        lock._mark_lost("etcd could not be reached for nearly the lease's TTL")
                    self._abandon_lease(lease)
                    continue
                if time.monotonic() < lease.next_renewal:
                    continue
                sent = time.monotonic()
                try:
                    ttl = self._renew(lease, cap)
                    if ttl > 0:
                        lease.expires = sent + ttl
                        lease.next_renewal = sent + max(0.2, lease.granted / 3)
                        self._check_locks(lease)
                        self._recreate(lease)  # what a replacement could not write yet
                    elif lease.for_lock:
                        for lock in list(lease.locks):
                            lock._mark_lost("its etcd lease expired")
                        with self._lease_lock:
                            self._lock_leases.discard(lease)
                    else:
                        self._replace(lease, lease.id)
                except PyKVError as exc:
                    log.warning("renewing the %d s lease of %s failed: %s", lease.ttl, self, exc)
                    lease.next_renewal = time.monotonic() + min(0.25, lease.granted / 10)
                except Exception:  # keep the thread alive: TTL keys depend on it
                    log.exception("lease keepalive of %s failed", self)
                    lease.next_renewal = time.monotonic() + 1.0

    def _revoke_abandoned(self, cap: float | None) -> None:
        """One attempt to revoke each abandoned lease, forgotten once etcd surely expired it."""
        with self._lease_lock:
            items = list(self._abandoned.items())
        for lease_id, until in items:
            now = time.monotonic()
            gone = now >= until
            if not gone and not self._stop.is_set():
                deadline = min(until, now + 0.5) if cap is None else min(until, now + 0.5, cap)
                try:
                    self._call(
                        "revoke an abandoned lease",
                        "LeaseRevoke",
                        etcdrpc.LeaseRevokeRequest(ID=lease_id),
                        stub="lease",
                        deadline=max(deadline, now + 0.05),
                    )
                    gone = True
                except _LeaseGoneError:
                    gone = True
                except PyKVError as exc:
                    log.debug("revoking abandoned lease %x of %s failed: %s", lease_id, self, exc)
            if gone:
                with self._lease_lock:
                    self._abandoned.pop(lease_id, None)

    def _check_locks(self, lease: _Lease) -> None:
        """With each renewal: a held lock whose key was deleted or overwritten is lost."""
        with self._lease_lock:
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

    def _replace(self, lease: _Lease, seen: int) -> None:
        """The TTL keys' lease ``seen`` expired while the store is open: a new one, and the TTL
        keys back. Does nothing if another thread replaced it already."""
        with self._lease_lock:
            if lease.id != seen:
                return
            self._grant(lease)
            missing = self._ttl_keys.lose(lease)
        log.warning("the %d s lease of %s expired; re-creating %d keys", lease.ttl, self, missing)
        try:
            self._recreate(lease)
        except PyKVError as exc:  # the rest is retried after the next renewal
            log.warning("re-creating the TTL keys of %s failed: %s; retrying", self, exc)

    def _recreate(self, lease: _Lease) -> None:
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

        self._ttl_keys.recreate(lease, create, delete_if_at)

    # -- locks -----------------------------------------------------------------------------

    def _lock(self, key: str, value: bytes, ttl: float) -> Lock:
        return _EtcdLock(self, key, value, ttl)

    def _wait_deleted(self, path: bytes, after: int, deadline: float | None) -> None:
        """Block until ``path`` is deleted at a revision > ``after``, the deadline, an error or
        :data:`LOCK_WAIT_CHUNK`; the caller re-checks the state either way."""
        client = self._client
        limit = (
            LOCK_WAIT_CHUNK
            if deadline is None
            else min(LOCK_WAIT_CHUNK, deadline - time.monotonic())
        )
        if limit <= 0:
            return
        create = etcdrpc.WatchCreateRequest(
            key=path, start_revision=after + 1, filters=[etcdrpc.WatchCreateRequest.NOPUT]
        )
        done = threading.Event()

        def requests() -> Iterator[Any]:
            yield etcdrpc.WatchRequest(create_request=create)
            done.wait()

        ep = client.endpoint()
        call: Any = None
        answered = threading.Event()
        silent = threading.Event()
        watchdog: threading.Timer | None = None
        try:
            call = ep.watch.Watch(
                requests(), timeout=limit, metadata=(*client.metadata, ("hasleader", "true"))
            )
            with self._registry:
                self._waits[call] = ep
            if self._stop.is_set():
                return

            def unanswered(call: Any = call) -> None:
                # A member cut off from this client never confirms the watch: give it up
                # instead of waiting out the whole chunk, and fail over.
                if not answered.is_set():
                    silent.set()
                    call.cancel()

            if limit > client.timeout:
                watchdog = threading.Timer(client.timeout, unanswered)
                watchdog.daemon = True
                watchdog.start()
            for response in call:
                answered.set()
                if response.events or response.compact_revision or response.canceled:
                    return
        except grpc.RpcError as exc:
            if silent.is_set() and not self._stop.is_set():
                log.info("wait for a lock: %s did not answer; failing over", ep.target)
                client.failover(ep)
                return
            if self._stop.is_set() or exc.code() in (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED,
            ):
                return
            mapped = client.error(exc, "wait for a lock", ep)
            if isinstance(mapped, PermissionDeniedError):
                raise mapped from exc
            client.failover(ep)
            time.sleep(0.1)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            done.set()
            if call is not None:
                call.cancel()
                with self._registry:
                    self._waits.pop(call, None)

    # -- closing ---------------------------------------------------------------------------

    def _close(self) -> None:
        # If etcd cannot be reached, give up on the first failure instead of waiting out one
        # timeout per lock and lease: etcd expires the leases (and so the keys) by itself.
        reachable = True
        with self._lease_lock:
            locks = [
                lock
                for lease in (*self._leases.values(), *self._lock_leases)
                for lock in lease.locks
            ]
        for lock in locks:
            if not reachable:
                lock._mark_lost("the store was closed while etcd could not be reached")
                continue
            try:
                lock._cleanup_lost() if lock.lost.is_set() else lock.release()
            except UnavailableError:
                reachable = False
            except PyKVError:
                pass
        self._stop.set()
        self._keeper_wake.set()
        with self._registry:
            waits, watches = list(self._waits), list(self._watches)
        for call in waits:
            call.cancel()
        for watch in watches:
            watch.close()
        self._mux.stop()
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(timeout=self.timeout)
        try:
            with self._lease_lock:
                leases = [*self._leases.values(), *self._lock_leases]
                self._leases.clear()
                self._lock_leases.clear()
                self._abandoned.clear()
            for lease in leases if reachable else ():  # revoking deletes the TTL keys at once
                with contextlib.suppress(PyKVError):
                    self._call(
                        "revoke a lease",
                        "LeaseRevoke",
                        etcdrpc.LeaseRevokeRequest(ID=lease.id),
                        stub="lease",
                    )
        finally:
            self._client.close()


class _EtcdLock(Lock):
    """A lock on ``key``: contenders queue as keys under the lock namespace, ordered by create
    revision; the head of the queue creates the lock key (holding the value) and its create
    revision is the fencing token. Each waiter watches only its predecessor.

    Each acquisition has a lease of its own for its queue key and lock key: revoking it is
    the release (and the cleanup after a timeout), and a release that cannot reach etcd lets
    the lease go, so that etcd deletes both keys within the TTL."""

    store: EtcdStore

    def __init__(self, store: EtcdStore, key: str, value: bytes, ttl: float) -> None:
        super().__init__(store, key, value, ttl)
        self._path = store._key(key)
        self._queue_prefix = LOCK_NAMESPACE + self._path + b"\x00"
        self._queue_key = b""
        self._lease: _Lease | None = None

    def _acquire(self, timeout: float | None) -> int | None:
        store = self.store
        deadline = None if timeout is None else time.monotonic() + timeout

        def call_deadline() -> float:
            # Calls end with the wait (but get half a second at least, so that a zero timeout
            # still tries once).
            now = time.monotonic()
            limit = now + store.timeout
            return limit if deadline is None else min(limit, max(deadline, now + 0.5))

        def expired() -> bool:
            return deadline is not None and time.monotonic() >= deadline

        acquired = False
        try:
            response: Any = None
            while True:
                if response is None:  # queue up on a new lease
                    response = self._enqueue(call_deadline())
                    if response is None:
                        if expired():
                            return None
                        continue
                    if response.succeeded:  # nobody queued, nobody held it: ours at once
                        token = self._granted(int(response.header.revision))
                        if token is not None:
                            acquired = True
                            return token
                        response = None
                        if expired():
                            return None
                        continue
                lease = self._lease
                assert lease is not None
                at = int(response.header.revision)
                queue = response.responses[-2].response_range.kvs
                holder = response.responses[-1].response_range.kvs
                mine = next((kv.create_revision for kv in queue if kv.key == self._queue_key), 0)
                earlier = [kv for kv in queue if kv.create_revision < mine]
                if not mine:  # our lease expired meanwhile: queue again
                    response = None
                    if expired():
                        return None
                    continue
                if earlier:
                    wait_for = max(earlier, key=lambda kv: kv.create_revision).key
                elif holder and holder[0].lease == lease.id and holder[0].create_revision >= mine:
                    # Our own claim, whose answer was lost and the call retried.
                    token = self._granted(int(holder[0].create_revision))
                    if token is not None:
                        acquired = True
                        return token
                    response = None
                    continue
                elif holder:  # a holder that lost its queue entry, or a plain value
                    wait_for = self._path
                else:
                    claimed = self._claim(mine, call_deadline())
                    if claimed is not None:
                        token = self._granted(claimed)
                        if token is not None:
                            acquired = True
                            return token
                        response = None
                        continue
                    response = self._read(call_deadline())
                    continue
                if expired():
                    return None
                store._wait_deleted(wait_for, at, deadline)
                store._check_open()
                response = self._read(call_deadline())
        finally:
            if not acquired:
                self._let_go(min(store.timeout, 1.0))

    def _queue_ops(self) -> list[Any]:
        """Read the queue (oldest first) and the lock key, in one transaction."""
        return [
            etcdrpc.RequestOp(
                request_range=etcdrpc.RangeRequest(
                    key=self._queue_prefix,
                    range_end=_range_end(self._queue_prefix),
                    sort_order=etcdrpc.RangeRequest.ASCEND,
                    sort_target=etcdrpc.RangeRequest.CREATE,
                    keys_only=True,
                )
            ),
            etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=self._path, keys_only=True)),
        ]

    def _enqueue(self, deadline: float) -> Any:
        """Queue up on a new lease (our queue key, attached to it) and, when the queue is
        empty and the lock key absent, create the lock key in the same transaction. None when
        the new lease was gone before the transaction (queue again)."""
        store = self.store
        self._let_go(min(store.timeout, 1.0))  # an earlier lease of this acquisition
        self._queue_key = self._queue_prefix + uuid.uuid4().hex.encode()
        lease = store._lock_lease(self.ttl, deadline)
        self._lease = lease
        queue_up = etcdrpc.RequestOp(
            request_put=etcdrpc.PutRequest(key=self._queue_key, lease=lease.id)
        )
        claim = etcdrpc.PutRequest(key=self._path, value=self.value, lease=lease.id)
        request = etcdrpc.TxnRequest(
            compare=[
                _absent(self._path),
                # Over a range: true when no key is in it (etcd compares with an empty key).
                _absent(self._queue_prefix, _range_end(self._queue_prefix)),
            ],
            success=[queue_up, etcdrpc.RequestOp(request_put=claim)],
            failure=[queue_up, *self._queue_ops()],
        )
        try:
            return store._call(f"lock {self.key!r}", "Txn", request, deadline=deadline)
        except _LeaseGoneError:
            return None

    def _read(self, deadline: float) -> Any:
        request = etcdrpc.TxnRequest(success=self._queue_ops())
        return self.store._call(f"lock {self.key!r}", "Txn", request, deadline=deadline)

    def _claim(self, mine: int, deadline: float) -> int | None:
        """Create the lock key if it is absent and we are still queued: the revision of the
        write on success."""
        lease = self._lease
        assert lease is not None
        request = etcdrpc.TxnRequest(
            compare=[
                _absent(self._path),
                etcdrpc.Compare(
                    key=self._queue_key,
                    target=etcdrpc.Compare.CREATE,
                    result=etcdrpc.Compare.EQUAL,
                    create_revision=mine,
                ),
            ],
            success=[
                etcdrpc.RequestOp(
                    request_put=etcdrpc.PutRequest(key=self._path, value=self.value, lease=lease.id)
                )
            ],
        )
        try:
            response = self.store._call(f"lock {self.key!r}", "Txn", request, deadline=deadline)
        except _LeaseGoneError:
            return None  # the next read finds our queue key gone and queues again
        return int(response.header.revision) if response.succeeded else None

    def _granted(self, token: int) -> int | None:
        """The lock key was created on our lease: the token, unless the lease may have expired
        in etcd meanwhile (its renewal is overdue, or the keeper let it go). Then the hold is
        not safe, even if the write went through: let that lease go and queue again."""
        store = self.store
        lease = self._lease
        assert lease is not None
        with store._lease_lock:
            # Headroom before the keeper's own deadline for telling the lock it is lost.
            fresh = lease in store._lock_leases and time.monotonic() < store._lost_at(lease) - 0.3
            if fresh:
                # Held from here on for _mark_lost, so that the keeper can tell the lock at
                # once, even before acquire() returns.
                self._held = True
                lease.locks.add(self)
        if not fresh:
            log.warning(
                "lock %r on %s: the lease went overdue while acquiring; queueing again",
                self.key,
                store,
            )
            self._let_go(min(store.timeout, 1.0))
            return None
        store._keeper_wake.set()  # its deadline now counts for the keeper
        return token

    def _let_go(self, budget: float) -> None:
        """Revoke this acquisition's lease (its queue key and any claim go with it), leaving
        it to the keeper if etcd does not answer within ``budget``."""
        lease, self._lease = self._lease, None
        if lease is None:
            return
        with contextlib.suppress(PyKVError):
            self.store._drop_lease(lease, time.monotonic() + budget)

    def _lose(self, reason: str) -> None:
        """Mark the lock lost, then let the next waiter in: the holder has been told."""
        self._mark_lost(reason)
        lease = self._lease
        if lease is not None:
            self.store._abandon_lease(lease)  # the keeper revokes it

    def _release(self) -> None:
        store = self.store
        lease, self._lease = self._lease, None
        if lease is None:
            return
        with store._lease_lock:
            lease.locks.discard(self)
        try:
            store._drop_lease(lease, time.monotonic() + store.timeout)
        except PyKVError as exc:
            raise type(exc)(
                f"{exc}; the lease was let go, so etcd deletes the lock key within "
                f"{lease.granted} s"
            ) from exc
