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
import time
import uuid
from typing import Any, ClassVar, TypeVar

from pyetcd import etcdrpc

from pykv import (
    Capability,
    ConfigurationError,
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
    KVPair,
    Lock,
    PyKVError,
    Store,
    StoreURL,
    Watch,
)
from pykv.kit import KeyFeed, TreeFeed

from ._v3client import (
    DEFAULT_PORT,
    KEYSPACE_START,
    LOCK_NAMESPACE,
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
from ._v3lease import Leases, _Lease
from ._v3watch import WatchMux

__all__ = ["EtcdOptions", "EtcdStore"]

log = logging.getLogger("pykv.etcd")
T = TypeVar("T")


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
        self._mux = WatchMux(str(self), self.timeout, lambda: self._client)
        self._client = _Client(str(self), self.timeout, options, targets, self._left)
        self._leases = Leases(
            str(self),
            self.timeout,
            self.ttl_slack,
            lambda *args, **kw: self._call(*args, **kw),  # noqa: PLW0108 (looked up per call)
            lambda: self._client,
            self._check_open,
        )

    # -- helpers ---------------------------------------------------------------------------

    def _left(self, failed: _Endpoint) -> None:
        """The client failed over from ``failed``: move the watch stream off it (the client
        moves its lock waits itself)."""
        self._mux.leave(failed)

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
            self._leases.ttl_keys.forget(path)
        else:
            self._leases.ttl_keys.forget_where(
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
        lease = self._leases.for_ttl(ttl)
        self._leases.with_lease(
            lease,
            lambda: self._call(
                f"put {key!r}", "Put", etcdrpc.PutRequest(key=path, value=value, lease=lease.id)
            ),
        )
        self._remember(lease, path, value)

    def _remember(self, lease: _Lease, path: bytes, value: bytes) -> None:
        self._leases.ttl_keys.remember(lease, path, value)

    def _delete(self, key: str) -> None:
        path = self._key(key)
        # Forgotten before the delete is sent, so that a re-creation after a lease expiry
        # cannot outlive it (see Leases.recreate).
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
        lease = self._leases.for_ttl(ttl) if ttl is not None else None
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

        response = txn() if lease is None else self._leases.with_lease(lease, txn)
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
        tracked = self._leases.ttl_keys.forget(path)
        try:
            self._delete_if_unchanged(key, path, previous)
        except BaseException:
            self._leases.ttl_keys.restore(path, tracked)
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

        self._mux.open(watch, what, path, None, response.header.revision, feed, reread)
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

        self._mux.open(watch, what, start, end, response.header.revision, feed, reread)
        return watch

    # -- locks -----------------------------------------------------------------------------

    def _lock(self, key: str, value: bytes, ttl: float) -> Lock:
        return _EtcdLock(self, key, value, ttl)

    # -- closing ---------------------------------------------------------------------------

    def _close(self) -> None:
        # If etcd cannot be reached, give up on the first failure instead of waiting out one
        # timeout per lock and lease: etcd expires the leases (and so the keys) by itself.
        locks = [lock for lock in self._leases.held_locks() if isinstance(lock, _EtcdLock)]
        reachable = self._release_for_close(locks, "etcd")
        self._leases.stop()
        self._client.cancel_waits()
        self._mux.stop()  # closes the watches
        try:
            if reachable:  # revoking deletes the TTL keys at once
                self._leases.revoke_all()
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
                store._client.wait_deleted(wait_for, at, deadline)
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
        lease = store._leases.for_lock(self.ttl, deadline)
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
        leases = store._leases
        with leases.mutex:
            # Headroom before the keeper's own deadline for telling the lock it is lost.
            fresh = lease in leases.lock_leases and time.monotonic() < leases.lost_at(lease) - 0.3
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
        leases.wake.set()  # its deadline now counts for the keeper
        return token

    def _let_go(self, budget: float) -> None:
        """Revoke this acquisition's lease (its queue key and any claim go with it), leaving
        it to the keeper if etcd does not answer within ``budget``."""
        lease, self._lease = self._lease, None
        if lease is None:
            return
        with contextlib.suppress(PyKVError):
            self.store._leases.drop(lease, time.monotonic() + budget)

    def _lose(self, reason: str) -> None:
        """Mark the lock lost, then let the next waiter in: the holder has been told."""
        self._mark_lost(reason)
        lease = self._lease
        if lease is not None:
            self.store._leases.abandon(lease)  # the keeper revokes it

    def _release(self) -> None:
        store = self.store
        lease, self._lease = self._lease, None
        if lease is None:
            return
        with store._leases.mutex:
            lease.locks.discard(self)
        try:
            store._leases.drop(lease, time.monotonic() + store.timeout)
        except PyKVError as exc:
            raise type(exc)(
                f"{exc}; the lease was let go, so etcd deletes the lock key within "
                f"{lease.granted} s"
            ) from exc
