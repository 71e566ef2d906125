"""The ZooKeeper store. See the package documentation for the data layout and semantics."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError,
    BadVersionError,
    ConnectionLoss,
    InvalidACLError,
    KazooException,
    NoAuthError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RolledBackError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.serialization import Create2
from kazoo.protocol.states import EventType, KazooState, KeeperState
from kazoo.retry import KazooRetry
from kazoo.security import CREATOR_ALL_ACL, OPEN_ACL_UNSAFE

from pykv import (
    Capability,
    ConfigurationError,
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
    KVPair,
    Lock,
    NotSupportedError,
    OperationTimeoutError,
    PermissionDeniedError,
    Store,
    StoreURL,
    TLSOptions,
    UnavailableError,
    Watch,
)

__all__ = ["ZooKeeperOptions", "ZooKeeperStore"]

log = logging.getLogger("pykv.zookeeper")

T = TypeVar("T")

DEFAULT_PORT = 2181
#: Top-level node holding lock queues, outside every store prefix.
LOCK_ROOT = "_pykv_locks"
#: Top-level nodes that are not keys of a store without prefix.
_HIDDEN_TOP = frozenset({"zookeeper", LOCK_ROOT})
#: Bounded retries of optimistic loops (create-parents races, conversions).
_RETRIES = 20
_JOIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class ZooKeeperOptions(TLSOptions):
    """Options of ``zookeeper://`` stores (see the module documentation)."""

    session_timeout: float = 10.0
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.session_timeout > 0:
            raise ConfigurationError("option 'session_timeout' must be a positive number")


class _CreateContainer(Create2):  # type: ignore[misc]
    type = 19  # ZooKeeper's OpCode.createContainer (flags 4 = CONTAINER)


def _is_ephemeral(stat: Any) -> bool:
    # Containers and TTL nodes carry negative marker owners; real sessions are positive.
    return bool(stat.ephemeralOwner > 0)


class ZooKeeperStore(Store):
    """A store on a ZooKeeper ensemble. See the module documentation."""

    schemes: ClassVar[tuple[str, ...]] = ("zookeeper", "zk")
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    options_class = ZooKeeperOptions
    distribution: ClassVar[str] = "pykv-zookeeper"
    ttl_slack: ClassVar[float] = 10.0
    options: ZooKeeperOptions

    def __init__(self, url: StoreURL, options: ZooKeeperOptions) -> None:
        super().__init__(url, options)
        if not url.hosts:
            raise ConfigurationError(f"{url}: a zookeeper URL needs at least one host")
        self._hosts = ",".join(str(h.with_default_port(DEFAULT_PORT)) for h in url.hosts)
        self._root = "/" + self.prefix if self.prefix else "/"
        self._lock_base = f"/{LOCK_ROOT}/{self.prefix}" if self.prefix else f"/{LOCK_ROOT}"
        username, password = options.username, options.password
        self._user = username
        auth = None
        if username is not None:
            auth = [("digest", f"{username}:{password or ''}")]
        self._acl = CREATOR_ALL_ACL if auth else OPEN_ACL_UNSAFE
        self._mutex = threading.Lock()
        # values of this store's TTL keys, re-created after a new session
        self._ephemeral: dict[str, bytes] = {}
        self._locks: set[_ZooKeeperLock] = set()
        self._watchers: set[_Watcher] = set()
        self._waiters: set[threading.Event] = set()
        self._session_id: int | None = None
        self._suspended_since: float | None = None
        self._connected = threading.Event()
        self._resync = threading.Event()
        self._stop = threading.Event()
        tls: dict[str, Any] = {}
        if options.tls:
            tls = {
                "use_ssl": True,
                "ca": options.ca,
                "certfile": options.cert,
                "keyfile": options.key,
                "verify_certs": options.verify,
            }
        self._client = KazooClient(
            hosts=self._hosts,
            timeout=options.session_timeout,
            auth_data=auth,
            # reconnect quickly during failover; the session timeout bounds how long we try
            connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_delay=1.0),
            logger=logging.getLogger("pykv.zookeeper.kazoo"),
            **tls,
        )
        # listen before connecting, so that no state change is missed
        self._client.add_listener(self._on_state)
        # kazoo's start(timeout) stops the client on a time-out, which waits out a connection
        # attempt of up to the session timeout; wait ourselves and stop it in the background.
        started = self._client.start_async()
        started.wait(self.timeout)
        if not self._client.connected:
            self._shutdown_client(wait=False)
            if self._client.client_state == KeeperState.AUTH_FAILED:
                raise PermissionDeniedError(f"{self}: authentication failed")
            raise UnavailableError(
                f"cannot connect to ZooKeeper at {self._hosts} for {self} within {self.timeout} s"
            )
        self._connected.set()
        self._session_id = self._current_session()
        self._worker = threading.Thread(
            target=self._session_worker, name=f"pykv-zk-session {self}", daemon=True
        )
        self._worker.start()
        try:
            self._check_access()
        except BaseException:
            self._close()
            raise

    # -- plumbing ----------------------------------------------------------------------------

    def _check_access(self) -> None:
        """Fail at open, not later, when the credentials cannot read the prefix."""
        if self._root == "/":
            return
        with self._errors("open"):
            try:
                self._wait(self._client.get_async(self._root), self._deadline())
            except NoNodeError:
                pass
            except NoAuthError as exc:
                who = f"user {self._user!r}" if self._user else "an unauthenticated client"
                raise PermissionDeniedError(
                    f"{self}: {who} may not read {self._root} (wrong or missing credentials)"
                ) from exc

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Map kazoo's exceptions to pykv's (see :meth:`_mapped`)."""
        try:
            yield
        except (KazooException, KazooTimeoutError) as exc:
            raise self._mapped(exc, what) from exc

    def _mapped(self, exc: Exception, what: str) -> Exception:
        """The pykv error for a kazoo exception: the one place that maps them."""
        if isinstance(exc, NoNodeError):
            return KeyNotFoundError(f"{what} on {self}: no such node")
        if isinstance(exc, NodeExistsError):
            return KeyExistsError(f"{what} on {self}: the key exists")
        if isinstance(exc, BadVersionError):
            return KeyModifiedError(f"{what} on {self}: the key was modified")
        if isinstance(exc, NoChildrenForEphemeralsError):
            return NotSupportedError(
                f"{what} on {self}: a TTL key (a ZooKeeper ephemeral node) cannot have "
                "children; write the parent without ttl"
            )
        if isinstance(exc, NoAuthError | AuthFailedError | InvalidACLError):
            who = f"user {self._user!r}" if self._user else "an unauthenticated client"
            return PermissionDeniedError(
                f"{what} on {self}: permission denied for {who} ({type(exc).__name__})"
            )
        if isinstance(exc, KazooTimeoutError):
            return OperationTimeoutError(
                f"{what} on {self}: no answer from ZooKeeper at {self._hosts} within "
                f"{self.timeout} s"
            )
        if isinstance(exc, ConnectionLoss | SessionExpiredError):
            return UnavailableError(
                f"{what} on {self}: lost the connection to {self._hosts} ({type(exc).__name__})"
            )
        return UnavailableError(f"{what} on {self}: {type(exc).__name__} {exc}")

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

    @staticmethod
    def _wait(result: Any, deadline: float) -> Any:
        """The result of an async kazoo call, waiting no later than ``deadline``."""
        return result.get(timeout=max(0.001, deadline - time.monotonic()))

    def _retrying(
        self,
        what: Callable[[], str],
        call: Callable[[float], T],
        deadline: float | None = None,
        lost: Exception | None = None,
    ) -> T:
        """Run an idempotent ``call(deadline)``, again after a connection loss (a failover)
        once reconnected, until the store's timeout; map errors on the way out. ``lost``: the
        connection loss that a first attempt already met."""
        if deadline is None:
            deadline = self._deadline()
        while True:
            if lost is not None:
                remaining = deadline - time.monotonic()
                if self._stop.is_set() or not self._connected.wait(max(0.0, remaining)):
                    raise self._mapped(lost, what()) from lost
            try:
                return call(deadline)
            except (ConnectionLoss, SessionExpiredError) as exc:
                lost = exc
            except (KazooException, KazooTimeoutError) as exc:
                raise self._mapped(exc, what()) from exc

    def _abs(self, key: str) -> str:
        return "/" + self._path(key) if key else self._root

    def _rel(self, path: str) -> str:
        return self._relative(path)

    def _current_session(self) -> int | None:
        cid = self._client.client_id
        return int(cid[0]) if cid else None

    def _acl_for(self, path: str) -> Any:
        """Creator-all inside the store's prefix and lock space; open above them."""
        if self._acl is OPEN_ACL_UNSAFE:
            return OPEN_ACL_UNSAFE
        for base in (self._root, self._lock_base):
            if base in ("/", path) or path.startswith(base + "/"):
                return self._acl
        return OPEN_ACL_UNSAFE

    def _ensure_parents(self, path: str, deadline: float, *, container: bool = False) -> None:
        """Create the missing ancestors of ``path`` as directory nodes (null data).

        All creates are pipelined in one round trip; ZooKeeper runs a session's requests in
        order, so each parent exists before its child is created.
        """
        parts = path.strip("/").split("/")[:-1]
        results = []
        current = ""
        for part in parts:
            current += "/" + part
            if container and current.startswith(f"/{LOCK_ROOT}/"):
                op = self._create_container(current)
            else:
                op = self._client.create_async(current, None, acl=self._acl_for(current))
            results.append(op)
        for op in results:
            with contextlib.suppress(NodeExistsError):
                self._wait(op, deadline)

    def _create_container(self, path: str) -> Any:
        """Create a container node: the server deletes it once its last child is gone.

        kazoo has no API for containers; this sends ZooKeeper's createContainer request.
        """
        result = self._client.handler.async_result()
        self._client._call(_CreateContainer(path, b"", self._acl_for(path), 4), result)
        return result

    def _create(
        self,
        path: str,
        value: bytes | None,
        deadline: float,
        *,
        ephemeral: bool = False,
        sequence: bool = False,
        container_parents: bool = False,
    ) -> tuple[str, Any]:
        """Create ``path`` (and its parents); return (path, stat)."""
        for _ in range(_RETRIES):
            try:
                created: tuple[str, Any] = self._wait(
                    self._client.create_async(
                        path,
                        value,
                        acl=self._acl_for(path),
                        ephemeral=ephemeral,
                        sequence=sequence,
                        include_data=True,
                    ),
                    deadline,
                )
                return created
            except NoNodeError:
                # a parent is missing (or was removed as empty by a concurrent delete)
                self._ensure_parents(path, deadline, container=container_parents)
        raise UnavailableError(f"could not create {path} on {self}: its parents kept vanishing")

    def _read(self, path: str, deadline: float) -> tuple[bytes | None, Any] | None:
        """(data, stat) of a node, or None when it does not exist."""
        try:
            data, stat = self._wait(self._client.get_async(path), deadline)
        except NoNodeError:
            return None
        return data, stat

    def _replace(
        self, path: str, value: bytes, version: int, *, ephemeral: bool, deadline: float
    ) -> Any:
        """Re-create an existing node as persistent or ephemeral in one transaction.

        The trailing set_data returns the new stat (all ops of a multi share one zxid).
        """
        tx = self._client.transaction()
        tx.delete(path, version)
        tx.create(path, value, acl=self._acl_for(path), ephemeral=ephemeral)
        tx.set_data(path, value)
        results = self._wait(tx.commit_async(), deadline)
        for res in results:
            if isinstance(res, NotEmptyError):
                raise NotSupportedError(
                    f"{self._rel(path)!r} on {self}: a key with children cannot become a TTL "
                    "key (ZooKeeper ephemeral nodes cannot have children)"
                )
            if isinstance(res, Exception) and not isinstance(res, RolledBackError):
                raise res
        return results[2]

    def _track(self, path: str, value: bytes | None) -> None:
        with self._mutex:
            if value is None:
                self._ephemeral.pop(path, None)
            else:
                self._ephemeral[path] = value

    def _owned(self, path: str) -> bool:
        with self._mutex:
            return path in self._ephemeral

    # -- keys and values ---------------------------------------------------------------------

    # get and put are the hot paths: plain try/except, messages formatted only on error

    def _get(self, key: str) -> KVPair:
        path = self._abs(key)
        deadline = self._deadline()
        try:  # the hot path: plain try/except, messages formatted only on error
            data, stat = self._client.get_async(path).get(timeout=self.timeout)
        except NoNodeError:
            data = None
        except (ConnectionLoss, SessionExpiredError) as exc:
            found = self._retrying(
                lambda: f"get {key!r}", lambda d: self._read(path, d), deadline, exc
            )
            data, stat = found if found is not None else (None, None)
        except (KazooException, KazooTimeoutError) as exc:
            raise self._mapped(exc, f"get {key!r}") from exc
        if data is None:
            raise KeyNotFoundError(f"{key!r} not found in {self}")
        return KVPair(key, data, stat.mzxid)

    def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        path = self._abs(key)
        self._retrying(
            lambda: f"put {key!r}", lambda d: self._write(path, value, ttl is not None, d)
        )

    def _write(self, path: str, value: bytes, ephemeral: bool, deadline: float) -> Any:
        """Write a key as persistent or ephemeral; return its new stat."""
        for _ in range(_RETRIES):
            if ephemeral:
                if self._owned(path):
                    try:
                        stat = self._wait(self._client.set_async(path, value), deadline)
                    except NoNodeError:
                        self._track(path, None)
                        continue
                    if stat.ephemeralOwner == self._session_id:
                        self._track(path, value)
                        return stat
                    self._track(path, None)
                    continue
                try:
                    _, stat = self._create(path, value, deadline, ephemeral=True)
                except NodeExistsError:
                    found = self._read(path, deadline)
                    if found is None:
                        continue
                    try:
                        stat = self._replace(
                            path, value, found[1].version, ephemeral=True, deadline=deadline
                        )
                    except (BadVersionError, NoNodeError):
                        continue
                self._track(path, value)
                return stat
            # persistent
            try:
                stat = self._wait(self._client.set_async(path, value), deadline)
            except NoNodeError:
                try:
                    _, stat = self._create(path, value, deadline)
                except NodeExistsError:
                    continue
                return stat
            if not _is_ephemeral(stat):
                return stat
            # someone's (maybe our) TTL key: a plain put makes it persistent again
            try:
                stat = self._replace(path, value, stat.version, ephemeral=False, deadline=deadline)
            except (BadVersionError, NoNodeError):
                continue
            self._track(path, None)
            return stat
        raise OperationTimeoutError(f"write {self._rel(path)!r} on {self}: too much contention")

    def _delete(self, key: str) -> None:
        path = self._abs(key)
        self._track(path, None)

        def delete(deadline: float) -> None:
            try:
                self._wait(self._client.delete_async(path), deadline)
            except NoNodeError:
                return
            except NotEmptyError:
                self._make_directory(path, -1, deadline)
                return
            self._prune_parents(path, deadline)

        self._retrying(lambda: f"delete {key!r}", delete)

    def _make_directory(self, path: str, version: int, deadline: float) -> None:
        """Turn a key that has children into a directory node (null data)."""
        found = self._read(path, deadline)
        if found is None or found[0] is None:
            return
        if version != -1 and found[1].version != version:
            raise BadVersionError()
        self._wait(self._client.set_async(path, None, found[1].version), deadline)

    def _prune_parents(self, path: str, deadline: float) -> None:
        """Remove the directory nodes above ``path`` that became empty (best effort)."""
        parent = path.rsplit("/", 1)[0]
        while parent and parent != self._root and parent.startswith(self._root):
            found = self._read(parent, deadline)
            if found is None:
                parent = parent.rsplit("/", 1)[0]
                continue
            data, stat = found
            if data is not None or stat.numChildren:
                return
            try:
                self._wait(self._client.delete_async(parent, stat.version), deadline)
            except (NotEmptyError, BadVersionError):
                return
            except NoNodeError:
                pass
            parent = parent.rsplit("/", 1)[0]

    def _walk(self, base: str, deadline: float) -> list[tuple[str, bytes | None, Any]]:
        """Every node strictly below ``base``: (path, data, stat), level by level, pipelined."""
        out: list[tuple[str, bytes | None, Any]] = []
        parents = [base]
        while parents:
            listings = [(p, self._client.get_children_async(p)) for p in parents]
            children: list[str] = []
            for parent, op in listings:
                try:
                    names = self._wait(op, deadline)
                except NoNodeError:
                    continue
                if parent == "/":
                    names = [n for n in names if n not in _HIDDEN_TOP]
                prefix = parent.rstrip("/")
                children.extend(f"{prefix}/{n}" for n in names)
            reads = [(c, self._client.get_async(c)) for c in children]
            parents = []
            for child, op in reads:
                try:
                    data, stat = self._wait(op, deadline)
                except NoNodeError:
                    continue
                out.append((child, data, stat))
                if stat.numChildren:
                    parents.append(child)
        return out

    def _list(self, prefix: str) -> list[KVPair]:
        base = self._abs(prefix)
        nodes = self._retrying(lambda: f"list {prefix!r}", lambda d: self._walk(base, d))
        pairs = [KVPair(self._rel(p), d, s.mzxid) for p, d, s in nodes if d is not None]
        pairs.sort(key=lambda pair: pair.key)
        return pairs

    def _delete_tree(self, prefix: str) -> None:
        base = self._abs(prefix)
        self._retrying(lambda: f"delete_tree {prefix!r}", lambda d: self._remove_tree(base, d))

    def _remove_tree(self, base: str, deadline: float) -> None:
        for _ in range(_RETRIES):
            nodes = [p for p, _, _ in self._walk(base, deadline)]
            if base != "/":
                nodes.insert(0, base)
            # deepest first; each depth level in one pipelined round trip
            by_depth: dict[int, list[str]] = {}
            for node in nodes:
                by_depth.setdefault(node.count("/"), []).append(node)
            busy = False
            for depth in sorted(by_depth, reverse=True):
                ops = [(n, self._client.delete_async(n)) for n in by_depth[depth]]
                for node, op in ops:
                    self._track(node, None)
                    try:
                        self._wait(op, deadline)
                    except NoNodeError:
                        pass
                    except NotEmptyError:
                        busy = True  # written to concurrently: walk again
            if not busy:
                break
        with self._mutex:
            for path in [p for p in self._ephemeral if p.startswith(base.rstrip("/") + "/")]:
                del self._ephemeral[path]
        if base != self._root:
            self._prune_parents(base, deadline)

    def _atomic_put(
        self, key: str, value: bytes, previous: KVPair | None, ttl: float | None
    ) -> KVPair:
        path = self._abs(key)
        ephemeral = ttl is not None
        with self._errors(f"atomic_put {key!r}"):
            deadline = self._deadline()
            if previous is None:
                stat = self._create_only(key, path, value, ephemeral, deadline)
            else:
                stat = self._swap(key, path, value, previous, ephemeral, deadline)
            self._track(path, value if ephemeral else None)
        return KVPair(key, value, stat.mzxid)

    def _create_only(
        self, key: str, path: str, value: bytes, ephemeral: bool, deadline: float
    ) -> Any:
        for _ in range(_RETRIES):
            try:
                _, stat = self._create(path, value, deadline, ephemeral=ephemeral)
                return stat
            except NodeExistsError:
                found = self._read(path, deadline)
                if found is None:
                    continue
                data, stat = found
                if data is not None:
                    raise KeyExistsError(f"{key!r} already exists in {self}") from None
                # a directory node, not a key: claim it if it is still unchanged
                try:
                    if ephemeral:
                        return self._replace(
                            path, value, stat.version, ephemeral=True, deadline=deadline
                        )
                    return self._wait(self._client.set_async(path, value, stat.version), deadline)
                except (BadVersionError, NoNodeError):
                    continue
        raise OperationTimeoutError(f"atomic_put {key!r} on {self}: too much contention")

    def _check(self, key: str, path: str, previous: KVPair, deadline: float) -> Any:
        found = self._read(path, deadline)
        if found is None or found[0] is None:
            raise KeyNotFoundError(f"{key!r} not found in {self}")
        stat = found[1]
        if stat.mzxid != previous.revision:
            raise KeyModifiedError(
                f"{key!r} is at revision {stat.mzxid}, not {previous.revision}, in {self}"
            )
        return stat

    def _swap(
        self, key: str, path: str, value: bytes, previous: KVPair, ephemeral: bool, deadline: float
    ) -> Any:
        stat = self._check(key, path, previous, deadline)
        try:
            owned = stat.ephemeralOwner == self._session_id
            if ephemeral and not owned:
                return self._replace(path, value, stat.version, ephemeral=True, deadline=deadline)
            if not ephemeral and _is_ephemeral(stat):
                return self._replace(path, value, stat.version, ephemeral=False, deadline=deadline)
            return self._wait(self._client.set_async(path, value, stat.version), deadline)
        except BadVersionError:
            if self._read(path, deadline) is None:
                raise KeyNotFoundError(f"{key!r} not found in {self}") from None
            raise KeyModifiedError(f"{key!r} was modified concurrently in {self}") from None

    def _atomic_delete(self, key: str, previous: KVPair) -> None:
        path = self._abs(key)
        # Untracked before the delete is sent, like in _delete, so that a re-creation after a
        # new session cannot outlive it (see _recreate); tracked again if nothing was deleted.
        with self._mutex:
            tracked = self._ephemeral.pop(path, None)
        with self._errors(f"atomic_delete {key!r}"):
            deadline = self._deadline()
            try:
                stat = self._check(key, path, previous, deadline)
                try:
                    self._wait(self._client.delete_async(path, stat.version), deadline)
                except NotEmptyError:
                    self._make_directory(path, stat.version, deadline)
                except BadVersionError:
                    raise KeyModifiedError(f"{key!r} was modified concurrently in {self}") from None
                except NoNodeError:
                    raise KeyNotFoundError(f"{key!r} not found in {self}") from None
            except BaseException:
                if tracked is not None:
                    with self._mutex:
                        self._ephemeral.setdefault(path, tracked)
                raise
            self._prune_parents(path, deadline)

    # -- sessions ----------------------------------------------------------------------------

    def _on_state(self, state: str) -> None:
        """kazoo's connection listener: runs on its connection thread, so it must not block."""
        if state == KazooState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        if state == KazooState.SUSPENDED:
            # the session may still live: the worker marks locks lost if this lasts too long
            self._suspended_since = time.monotonic()
        elif state == KazooState.LOST:
            self._suspended_since = None
            self._mark_locks_lost("the ZooKeeper session expired")
        elif state == KazooState.CONNECTED:
            self._suspended_since = None
            session = self._current_session()
            if self._session_id is None:  # the first connection
                self._session_id = session
            elif session != self._session_id:
                log.warning("%s: new ZooKeeper session; re-creating TTL keys", self)
                self._session_id = session
                self._resync.set()
            with self._mutex:
                watchers = list(self._watchers)
            for watcher in watchers:
                watcher.refresh()
        with self._mutex:
            waiters = list(self._waiters)
        for event in waiters:
            event.set()

    def _mark_locks_lost(self, reason: str) -> None:
        with self._mutex:
            locks = list(self._locks)
        for lock in locks:
            lock._mark_lost(reason)

    def _suspension_grace(self) -> float:
        """How long a suspended connection may last before held locks count as lost.

        kazoo pings every S/3 of the session timeout S and suspends when a ping stays
        unanswered for another S/3, so at most 2/3 S after the server last heard from it; a
        follower reports its clients' activity to the leader up to half a tickTime late. The
        session can thus expire S/3 minus that after SUSPENDED, and S/6 stays ahead of it
        whenever S >= 3 tickTime. A leader election or a reconnect to another server ends a
        suspension sooner (the session survives them: the new leader renews every session), so
        locks outlive both. kazoo does not expose the timeout the server negotiated, so this
        uses the one asked for: keep ``session_timeout`` within the server's
        [minSessionTimeout, maxSessionTimeout].
        """
        return self.options.session_timeout / 6.0

    def _session_worker(self) -> None:
        """Marks locks lost when a suspension lasts too long, and re-creates this store's TTL
        keys after its session expired (when a new session began)."""
        while not self._stop.is_set():
            since = self._suspended_since
            if since is not None and time.monotonic() - since >= self._suspension_grace():
                self._suspended_since = None
                self._mark_locks_lost(
                    f"the connection to ZooKeeper was suspended for more than "
                    f"{self._suspension_grace():.1f} s"
                )
            if not self._resync.wait(0.05):
                continue
            self._resync.clear()
            with self._mutex:
                todo = dict(self._ephemeral)
            for path, value in todo.items():
                if self._stop.is_set():
                    return
                try:
                    with self._errors(f"re-create TTL key {self._rel(path)!r}"):
                        self._recreate(path, value)
                except Exception:  # retried later
                    log.warning("%s: could not re-create %s", self, path, exc_info=True)
                    if not self._stop.wait(0.5):
                        self._resync.set()
                    break

    def _recreate(self, path: str, value: bytes) -> None:
        deadline = self._deadline()
        try:
            _, stat = self._create(path, value, deadline, ephemeral=True)
        except NodeExistsError:
            found = self._read(path, deadline)
            if found is not None and found[1].ephemeralOwner != self._session_id:
                # someone else wrote the key meanwhile: theirs wins
                with self._mutex:
                    if self._ephemeral.get(path) is value:
                        del self._ephemeral[path]
            return
        with self._mutex:
            still_wanted = self._ephemeral.get(path) is value
        if not still_wanted:
            # This store deleted (or rewrote) the key while it was being re-created: the
            # delete untracks before it is sent and a session runs its requests in order, so
            # either the delete came after the create, or the untracking is seen here. Undo
            # the create unless the key was written again since.
            with contextlib.suppress(NoNodeError, BadVersionError, NotEmptyError):
                self._wait(self._client.delete_async(path, stat.version), deadline)

    # -- watches -----------------------------------------------------------------------------

    def _watch(self, key: str) -> Watch[KVPair | None]:
        watcher = _KeyWatcher(self, key, self._abs(key))
        self._start_watcher(watcher)
        return watcher.watch

    def _watch_tree(self, prefix: str) -> Watch[list[KVPair]]:
        watcher = _TreeWatcher(self, prefix, self._abs(prefix))
        self._start_watcher(watcher)
        return watcher.watch

    def _changed_since(self, key: str, since: int, *, tree: bool) -> bool | None:
        # No history, but a node's pzxid is the zxid of the last creation or deletion of one
        # of its children: a subtree (or, for an absent key, its nearest existing ancestor)
        # whose nodes were all created, written (a value removed from a node that keeps
        # children is a write) and last changed children at or before `since` lost nothing
        # after it. Otherwise something below moved: resync.
        path = self._abs(key)

        def stats(deadline: float) -> list[Any]:
            node = path
            found = self._read(node, deadline)
            if found is not None:
                below = self._walk(path, deadline) if tree else []
                return [found[1]] + [stat for _, _, stat in below]
            while found is None and node != "/":  # the nearest existing ancestor decides
                node = node.rsplit("/", 1)[0] or "/"
                found = self._read(node, deadline)
            return [] if found is None else [found[1]]

        nodes = self._retrying(lambda: f"watch({key!r}, since={since})", stats)
        if nodes and all(max(s.czxid, s.mzxid, s.pzxid) <= since for s in nodes):
            return False
        return None

    def _start_watcher(self, watcher: _Watcher) -> None:
        with self._mutex:
            self._watchers.add(watcher)
        watcher.refresh()

    def _forget_watcher(self, watcher: _Watcher) -> None:
        with self._mutex:
            self._watchers.discard(watcher)

    # -- locks -------------------------------------------------------------------------------

    def _lock(self, key: str, value: bytes, ttl: float) -> Lock:
        return _ZooKeeperLock(self, key, value, ttl)

    # -- closing -----------------------------------------------------------------------------

    def _close(self) -> None:
        self._stop.set()
        with self._mutex:
            watchers = list(self._watchers)
            locks = list(self._locks)
            waiters = list(self._waiters)
            self._ephemeral.clear()
        for watcher in watchers:
            watcher.watch.close()
        for event in waiters:
            event.set()
        for lock in locks:
            # closing the session below releases them: the locks are no longer held
            lock._releasing = True
            lock._held = False
        with contextlib.suppress(Exception):
            self._client.remove_listener(self._on_state)
        # closing the session deletes its ephemeral nodes (TTL keys, held locks) at once
        self._shutdown_client()
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.join(_JOIN_TIMEOUT)

    def _shutdown_client(self, *, wait: bool = True) -> None:
        closer = threading.Thread(target=self._stop_client, daemon=True)
        closer.start()
        if wait:
            closer.join(self.timeout)

    def _stop_client(self) -> None:
        try:
            self._client.stop()
            self._client.close()
        except Exception:
            log.debug("error while stopping the kazoo client of %s", self, exc_info=True)


class _Watcher:
    """Common part of key and tree watchers; kazoo calls them from its callback threads."""

    watch: Watch[Any]

    def __init__(self, store: ZooKeeperStore, description: str) -> None:
        self.store = store
        self.client = store._client
        self.lock = threading.RLock()
        self.watch = Watch(description, on_close=self._closed)

    def _closed(self) -> None:
        self.store._forget_watcher(self)

    def refresh(self) -> None:
        raise NotImplementedError

    def _fail(self, exc: BaseException) -> None:
        """Non-connection errors end the watch; connection errors wait for the reconnect."""
        if isinstance(exc, ConnectionLoss | SessionExpiredError | KazooTimeoutError):
            return
        try:
            with self.store._errors(self.watch.description):
                raise exc
        except Exception as mapped:  # noqa: BLE001 - whatever it is, the watch must end with it
            self.watch._fail(mapped)
            self.store._forget_watcher(self)


class _KeyWatcher(_Watcher):
    """get-with-watch on the key; exists-with-watch while it is absent. Every event re-reads,
    and the read re-arms the watch in the same request."""

    _UNSET: ClassVar[object] = object()

    def __init__(self, store: ZooKeeperStore, key: str, path: str) -> None:
        super().__init__(store, f"watch {key!r} on {store}")
        self.key = key
        self.path = path
        self.last: object = self._UNSET

    def refresh(self) -> None:
        if self.watch.closed:
            return
        try:
            self.client.get_async(self.path, watch=self._on_event).rawlink(self._on_get)
        except KazooException as exc:
            self._fail(exc)

    def _on_event(self, event: Any) -> None:
        self.refresh()

    def _on_get(self, result: Any) -> None:
        if self.watch.closed:
            return
        try:
            data, stat = result.get_nowait()
        except NoNodeError:
            try:
                self.client.exists_async(self.path, watch=self._on_event).rawlink(self._on_exists)
            except KazooException as exc:
                self._fail(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a callback must hand every error to the watch
            self._fail(exc)
            return
        self._publish(None if data is None else KVPair(self.key, data, stat.mzxid))

    def _on_exists(self, result: Any) -> None:
        try:
            stat = result.get_nowait()
        except Exception as exc:  # noqa: BLE001 - a callback must hand every error to the watch
            self._fail(exc)
            return
        if stat is not None:  # created between the get and the exists
            self.refresh()
        else:
            self._publish(None)

    def _publish(self, pair: KVPair | None) -> None:
        with self.lock:
            if pair == self.last:
                return
            if (
                isinstance(self.last, KVPair)
                and pair is not None
                and pair.revision < self.last.revision
            ):
                return  # an older read answered after a newer one
            self.last = pair
            self.watch._emit(pair)


class _TreeWatcher(_Watcher):
    """A watched copy of a subtree: a data and a child watch on every node below the root,
    an exists watch on the root while it is absent. A snapshot is emitted whenever no read is
    outstanding and the keys differ from the last snapshot."""

    def __init__(self, store: ZooKeeperStore, prefix: str, path: str) -> None:
        super().__init__(store, f"watch_tree {prefix!r} on {store}")
        self.root = path
        self.data: dict[str, tuple[bytes | None, int]] = {}
        self.children: dict[str, set[str]] = {}
        self.outstanding = 0
        self.last: list[KVPair] | None = None

    def refresh(self) -> None:
        with self.lock:
            if self.watch.closed:
                return
            paths = [self.root, *self.data]
        self._call("exists", self.root)
        for path in paths:
            self._read(path)

    def _read(self, path: str) -> None:
        if path != self.root:
            self._call("get", path)
        self._call("get_children", path)

    def _call(self, method: str, path: str) -> None:
        if self.watch.closed:
            return
        with self.lock:
            self.outstanding += 1
        call: Callable[..., Any] = getattr(self.client, method + "_async")
        try:
            call(path, watch=self._on_event).rawlink(
                lambda result: self._on_result(method, path, result)
            )
        except KazooException as exc:
            with self.lock:
                self.outstanding -= 1
            self._fail(exc)

    def _on_event(self, event: Any) -> None:
        path = event.path
        if event.type == EventType.DELETED:
            with self.lock:
                self._remove(path)
            if path == self.root:
                self._call("exists", path)
            self._settle()
        elif event.type == EventType.CREATED:
            self._read(path)
        elif event.type == EventType.CHANGED:
            self._call("get", path)
        elif event.type == EventType.CHILD:
            self._call("get_children", path)

    def _remove(self, path: str) -> None:
        below = path.rstrip("/") + "/"
        for known in [p for p in self.data if p == path or p.startswith(below)]:
            del self.data[known]
        for known in [p for p in self.children if p == path or p.startswith(below)]:
            del self.children[known]

    def _on_result(self, method: str, path: str, result: Any) -> None:
        try:
            value = result.get_nowait()
        except NoNodeError:
            with self.lock:
                self._remove(path)
                self.outstanding -= 1
            self._settle()
            return
        except Exception as exc:  # noqa: BLE001 - a callback must hand every error to the watch
            with self.lock:
                self.outstanding -= 1
            self._fail(exc)
            return
        new: list[str] = []
        with self.lock:
            self.outstanding -= 1
            if method == "exists":
                if value is not None and self.root not in self.children:
                    new.append(self.root)
                    self.children[self.root] = set()
            elif method == "get":
                data, stat = value
                old = self.data.get(path)
                if old is None or stat.mzxid >= old[1]:
                    self.data[path] = (data, stat.mzxid)
            else:
                names = set(value)
                if path == "/":
                    names -= _HIDDEN_TOP
                prefix = path.rstrip("/")
                old_names = self.children.get(path, set())
                for gone in old_names - names:
                    self._remove(f"{prefix}/{gone}")
                self.children[path] = names
                new.extend(f"{prefix}/{n}" for n in names - old_names)
        if method == "exists":
            for path_ in new:
                self._call("get_children", path_)
        else:
            for child in new:
                self._read(child)
        self._settle()

    def _settle(self) -> None:
        with self.lock:
            if self.outstanding or self.watch.closed:
                return
            strip = self.store._rel
            snapshot = sorted(
                (
                    KVPair(strip(p), d, rev)
                    for p, (d, rev) in self.data.items()
                    if d is not None and p != self.root
                ),
                key=lambda pair: pair.key,
            )
            if snapshot == self.last:
                return
            self.last = snapshot
            self.watch._emit(snapshot)


class _ZooKeeperLock(Lock):
    """The ZooKeeper lock recipe; the holder's value lives at the key as an ephemeral node."""

    store: ZooKeeperStore

    def __init__(self, store: ZooKeeperStore, key: str, value: bytes, ttl: float) -> None:
        super().__init__(store, key, value, ttl)
        self._key_path = store._abs(key)
        self._dir = f"/{LOCK_ROOT}/{store._path(key)}"
        self._id = uuid.uuid4().hex.encode()
        self._node: str | None = None
        self._releasing = False
        self._czxid: int | None = None

    def _acquire(self, timeout: float | None) -> int | None:
        store = self.store
        end = None if timeout is None else time.monotonic() + timeout
        wake = threading.Event()
        with store._mutex:
            store._waiters.add(wake)
        try:
            with store._errors(f"lock {self.key!r}"):
                self._node = None
                self._releasing = False
                while True:
                    store._check_open()
                    wake.clear()
                    names = self._enqueue() if self._node is None else None
                    predecessor = self._predecessor(wake, names)
                    if predecessor is None:
                        break
                    remaining = None if end is None else end - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        self._drop_node()
                        return None
                    wake.wait(remaining if remaining is not None else 1.0)
                token = self._write_value()
        except BaseException:
            with contextlib.suppress(Exception):
                self._drop_node()
            raise
        finally:
            with store._mutex:
                store._waiters.discard(wake)
        with store._mutex:
            store._locks.add(self)
        self._watch_key()
        return token

    def _enqueue(self) -> list[str] | None:
        """Create our sequence node and list the queue in one round trip (ZooKeeper answers
        a session's requests in order, so the listing includes our node)."""
        store = self.store
        deadline = store._deadline()
        path = self._dir + "/lock-"
        create = store._client.create_async(
            path, self._id, acl=store._acl_for(path), ephemeral=True, sequence=True
        )
        listing = store._client.get_children_async(self._dir)
        try:
            self._node = store._wait(create, deadline)
        except NoNodeError:  # first lock on this key: make the queue's container nodes
            self._node, _ = store._create(
                path, self._id, deadline, ephemeral=True, sequence=True, container_parents=True
            )
            return None
        try:
            names: list[str] = store._wait(listing, deadline)
        except NoNodeError:
            return None
        return names

    def _predecessor(self, wake: threading.Event, names: list[str] | None) -> str | None:
        """None when our node is first in line; else the node before it (watched)."""
        store = self.store
        assert self._node is not None
        if names is None:
            names = store._wait(store._client.get_children_async(self._dir), store._deadline())
        mine = self._node.rsplit("/", 1)[1]
        if mine not in names:  # our session expired meanwhile: queue again
            self._node = None
            return ""
        ordered = sorted(names, key=lambda n: n.rsplit("-", 1)[-1])
        index = ordered.index(mine)
        if index == 0:
            return None
        before = f"{self._dir}/{ordered[index - 1]}"
        stat = store._wait(
            store._client.exists_async(before, watch=lambda _event: wake.set()),
            store._deadline(),
        )
        return before if stat is not None else ""

    def _write_value(self) -> int:
        """Put our value at the key as an ephemeral node; its czxid is the fencing token."""
        store = self.store
        deadline = store._deadline()
        for _ in range(_RETRIES):
            try:
                _, stat = store._create(self._key_path, self.value, deadline, ephemeral=True)
            except NodeExistsError:
                # a plain key (or a stale holder's node) is in the way: the lock owns the key
                found = store._read(self._key_path, deadline)
                if found is None:
                    continue
                if found[1].numChildren:
                    raise NotSupportedError(
                        f"lock {self.key!r} on {store}: the key has children, and the holder's "
                        "value must be an ephemeral node, which cannot have children"
                    ) from None
                with contextlib.suppress(NoNodeError, BadVersionError):
                    store._wait(
                        store._client.delete_async(self._key_path, found[1].version), deadline
                    )
                continue
            self._czxid = int(stat.czxid)
            return self._czxid
        raise OperationTimeoutError(f"lock {self.key!r} on {store}: could not write its key")

    def _watch_key(self) -> None:
        """Someone deleting the key breaks the lock: mark it lost and leave the queue."""

        def on_event(event: Any) -> None:
            if self._releasing or not self._held:
                return
            if event.type == EventType.DELETED:
                self._mark_lost("its key was deleted")
                with contextlib.suppress(Exception):
                    if self._node is not None:
                        self.store._client.delete_async(self._node)
            elif not self.store.closed:
                with contextlib.suppress(Exception):
                    self.store._client.exists_async(self._key_path, watch=on_event)

        def on_exists(result: Any) -> None:
            with contextlib.suppress(Exception):
                if result.get_nowait() is None:
                    on_event(type("Deleted", (), {"type": EventType.DELETED})())

        try:
            self.store._client.exists_async(self._key_path, watch=on_event).rawlink(on_exists)
        except KazooException:
            self._mark_lost("could not watch its key")

    def _drop_node(self) -> None:
        if self._node is None:
            return
        store = self.store
        with contextlib.suppress(NoNodeError):
            store._wait(store._client.delete_async(self._node), store._deadline())
        self._node = None

    def _release(self) -> None:
        store = self.store
        self._releasing = True
        with store._mutex:
            store._locks.discard(self)
        if store.closed:
            return  # closing the session removed our nodes
        with store._errors(f"release lock {self.key!r}"):
            deadline = store._deadline()
            if not self.lost.is_set() and self._node is not None:
                # still held, so the key is our node: drop it and our place in one transaction
                tx = store._client.transaction()
                tx.delete(self._key_path)
                tx.delete(self._node)
                results = store._wait(tx.commit_async(), deadline)
                if not any(isinstance(r, Exception) for r in results):
                    self._node = None
                    store._prune_parents(self._key_path, deadline)
                    return
            found = store._read(self._key_path, deadline)
            # delete the key only if it is still the node we wrote (not a later holder's)
            if found is not None and found[1].czxid == self._czxid:
                with contextlib.suppress(NoNodeError, BadVersionError, NotEmptyError):
                    store._wait(
                        store._client.delete_async(self._key_path, found[1].version), deadline
                    )
            self._drop_node()
            store._prune_parents(self._key_path, deadline)
