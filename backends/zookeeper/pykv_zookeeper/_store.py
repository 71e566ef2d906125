"""The ZooKeeper store. See the package documentation for the data layout and semantics."""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import (
    EXCEPTIONS,
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
    UnimplementedError,
)
from kazoo.handlers.threading import AsyncResult as ThreadingAsyncResult
from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.protocol.serialization import (
    Create2,
    GetChildren,
    GetData,
    int_struct,
    multiheader_struct,
    read_buffer,
    read_string,
    stat_struct,
    write_string,
)
from kazoo.protocol.states import EventType, KazooState, KeeperState, ZnodeStat
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
from pykv.kit import Change, Created, TreeFeed, TTLKeys

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
#: The session of everything that is not ephemeral (reads, plain writes, watches).
_MAIN_SESSION_TIMEOUT = 10.0
#: The longest a non-strict session's connection may stay silent before it fails over.
_READ_TIMEOUT = 3.0
#: How often the session worker retries a cleanup that failed (a lock node to delete).
_CLEANUP_INTERVAL = 0.5
#: Recursive reads (list, delete_tree, since checks) batch this many nodes per multiRead
#: request (ZooKeeper 3.6+), with this many requests in flight; a level of a walk with fewer
#: nodes than _BATCH_FROM, or a server without multiRead, gets one pipelined request per
#: node, at most _IN_FLIGHT at once (kazoo's cost per request, not the round trip, then
#: bounds a walk: about 12 s for 50,000 nodes, against under 2 s batched).
_BATCH = 256
_WINDOW = 8
_BATCH_FROM = 32
_IN_FLIGHT = 256
#: delete_tree deletes this many nodes per multi request (ZooKeeper 3.4+).
_DELETE_BATCH = 1000


@dataclass(frozen=True)
class ZooKeeperOptions(TLSOptions):
    """Options of ``zookeeper://`` stores (see the module documentation)."""

    session_timeout: float | None = None
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.session_timeout is not None and not (
            math.isfinite(self.session_timeout) and self.session_timeout > 0
        ):
            raise ConfigurationError("option 'session_timeout' must be a positive number")


class _Result(ThreadingAsyncResult):  # type: ignore[misc]
    """kazoo's async result, with kazoo's "xids do not match" (a reply out of order on the
    connection: kazoo drops the connection and ends its connection loop, python-zk/kazoo#254)
    delivered as what it is to the caller, a ConnectionLoss: the request may or may not have
    been applied. Raw, it is a RuntimeError that escaped pykv's error mapping."""

    def set_exception(self, exception: BaseException) -> None:
        if isinstance(exception, RuntimeError) and _xid_mismatch(exception):
            lost = ConnectionLoss(f"kazoo: {exception.args[0] % exception.args[1:]}")
            lost.__cause__ = exception
            exception = lost
        super().set_exception(exception)


def _xid_mismatch(exc: BaseException) -> bool:
    return bool(exc.args) and str(exc.args[0]).startswith("xids do not match")


class _Handler(SequentialThreadingHandler):  # type: ignore[misc]
    """kazoo's threading handler, remembering why the last TLS handshake failed: kazoo only
    retries, so the store names the reason when it gives up; its results map kazoo's
    out-of-order replies to a ConnectionLoss (:class:`_Result`)."""

    tls_error: ssl.SSLError | None = None

    def async_result(self) -> _Result:
        return _Result(self)

    def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            sock = super().create_connection(*args, **kwargs)
        except ssl.SSLError as exc:
            self.tls_error = exc
            raise
        self.tls_error = None
        return sock


class _CreateContainer(Create2):  # type: ignore[misc]
    type = 19  # ZooKeeper's OpCode.createContainer (flags 4 = CONTAINER)


class _MultiRead:
    """A kazoo request for ZooKeeper's multiRead (opcode 22, ZooKeeper 3.6+): getData or
    getChildren of many paths in one round trip, without watches. Its result has one entry per
    operation: ``(data, stat)``, a list of child names, or the KazooException of that one."""

    type = 22
    watcher = None  # kazoo registers no watch for it

    def __init__(self, ops: list[tuple[int, str]]) -> None:
        self.ops = ops

    def __repr__(self) -> str:
        return f"MultiRead({len(self.ops)} operations)"

    def serialize(self) -> bytearray:
        out = bytearray()
        for kind, path in self.ops:
            out += multiheader_struct.pack(kind, False, -1)
            out += write_string(path)
            out.append(0)  # no watch
        out += multiheader_struct.pack(-1, True, -1)
        return out

    def deserialize(self, buf: bytes, offset: int) -> list[Any]:
        results: list[Any] = []
        while True:
            kind, done, _ = multiheader_struct.unpack_from(buf, offset)
            offset += multiheader_struct.size
            if done:
                return results
            if kind == GetData.type:
                data, offset = read_buffer(buf, offset)
                stat = ZnodeStat._make(stat_struct.unpack_from(buf, offset))
                offset += stat_struct.size
                results.append((data, stat))
            elif kind == GetChildren.type:
                count = int_struct.unpack_from(buf, offset)[0]
                offset += int_struct.size
                names = []
                for _ in range(max(0, count)):
                    name, offset = read_string(buf, offset)
                    names.append(name)
                results.append(names)
            elif kind == -1:
                code = int_struct.unpack_from(buf, offset)[0]
                offset += int_struct.size
                results.append(EXCEPTIONS[code]())
            else:
                raise ValueError(f"unexpected result type {kind} in a multiRead response")


def _stop_quietly(client: KazooClient) -> None:
    try:
        client.stop()
        client.close()
    except Exception:
        log.debug("error while stopping a probe client", exc_info=True)


def _is_ephemeral(stat: Any) -> bool:
    # Containers and TTL nodes carry negative marker owners; real sessions are positive.
    return bool(stat.ephemeralOwner > 0)


def _ttl_class(ttl: float) -> float:
    """The session timeout of the TTL class ``ttl`` belongs to: rounded down, never up, so a
    key dies no later than asked; to whole seconds below a minute, to whole minutes above
    (a few sessions serve every TTL an application uses). At least 1 s: kazoo bounds its
    connection handshake by the timeout asked, and servers grant no less than 2 tickTime."""
    if ttl < 60:
        return float(max(1, math.floor(ttl)))
    return float(math.floor(ttl / 60) * 60)


@dataclass(eq=False)
class _Cleanup:
    """Lock nodes left behind by a release or an acquisition that failed: deleted by the
    session worker once the connection is back, dropped once the session has expired (its
    ephemeral nodes went with it)."""

    session_id: int | None
    directory: str
    prefix: str  # our queue nodes are named "<prefix>-lock-<sequence>"
    key_path: str | None = None
    czxid: int | None = None  # the key node we wrote, deleted only while it is still ours
    next_try: float = 0.0


class _Session:
    """One ZooKeeper session of a store: a kazoo client, its connection state, and the locks
    whose nodes live on it. The store's main session serves reads, plain writes and watches;
    ephemeral nodes live on the session of their TTL class (see the module documentation)."""

    def __init__(self, store: ZooKeeperStore, timeout: float, *, strict: bool, name: str):
        self.store = store
        self.name = name
        self.asked = timeout
        #: Locks on a strict session stop trusting themselves as soon as it is suspended.
        self.strict = strict
        #: The timeout the server granted (it clamps the ask to its min/max session timeout).
        self.negotiated: float | None = None
        self.session_id: int | None = None
        self.suspended_since: float | None = None
        self.connected = threading.Event()
        self.resync = threading.Event()
        #: kazoo's connection loop died: the upkeep worker starts the client again
        self.restart = False
        self.locks: set[_ZooKeeperLock] = set()
        self.cleanups: list[_Cleanup] = []
        self.warned = False
        self.handler = _Handler()
        self.client = KazooClient(
            hosts=store._hosts,
            timeout=timeout,
            auth_data=store._auth,
            # reconnect quickly during failover; the session timeout bounds how long we try
            connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_delay=1.0),
            logger=logging.getLogger("pykv.zookeeper.kazoo"),
            handler=self.handler,
            **store._tls,
        )
        self._hook_negotiation()
        # listen before connecting, so that no state change is missed
        self.client.add_listener(self._on_state)

    def __str__(self) -> str:
        return f"{self.name} session of {self.store}"

    def _hook_negotiation(self) -> None:
        """Record the session timeout the server negotiated: kazoo only logs it. Its private
        connect step returns the read timeout, which it derives as 2/3 of that value."""
        connection = self.client._connection
        connect = connection._connect

        def connect_and_record(*args: Any) -> Any:
            result = connect(*args)
            self.negotiated = round(float(result[0]) * 1.5) / 1000.0
            if not self.strict:
                # A server cut off without a reset is noticed only by the heartbeat: kazoo pings
                # after read/2 idle and drops the connection read/2 later, so watches on it
                # went silent for up to 2/3 of the session timeout (6.7 s). Fail over sooner;
                # the session lives on. (Strict sessions keep kazoo's: a drop loses their locks.)
                return (min(result[0], _READ_TIMEOUT * 1000.0), *result[1:])
            return result

        connection._connect = connect_and_record

    def start(self, timeout: float | None = None) -> None:
        """Connect within ``timeout`` (the store's by default), or raise."""
        store = self.store
        wait = store.timeout if timeout is None else timeout
        # kazoo's start(timeout) stops the client on a time-out, which waits out a connection
        # attempt of up to the session timeout; wait ourselves and stop it in the background.
        started = self.client.start_async()
        started.wait(wait)
        if not self.client.connected:
            self.shutdown(wait=False)
            if self.client.client_state == KeeperState.AUTH_FAILED:
                raise PermissionDeniedError(f"{store}: authentication failed")
            if self.handler.tls_error is not None:
                raise UnavailableError(
                    f"cannot connect to ZooKeeper at {store._hosts} for {store}: TLS handshake "
                    f"failed: {self.handler.tls_error}"
                )
            raise UnavailableError(
                f"cannot connect to ZooKeeper at {store._hosts} for {store} within {wait:g} s"
            )
        self.connected.set()
        self.session_id = self.current()
        if self.negotiated is not None and self.negotiated > self.asked and not self.warned:
            self.warned = True
            log.warning(
                "%s: ZooKeeper granted a session timeout of %g s, not the %g s asked (its "
                "minSessionTimeout): TTL keys and locks of this class outlive a dead owner by "
                "up to %g s",
                self,
                self.negotiated,
                self.asked,
                self.negotiated,
            )

    def current(self) -> int | None:
        """The id of the session, also while reconnecting (kazoo's ``client_id`` is None
        then); None once it expired, until a new one begins."""
        sid = self.client._session_id
        return int(sid) if sid else None

    def grace(self) -> float:
        """How long a suspended connection may last before this session's locks count as
        lost: none on a strict session; else 1/6 of the session timeout (see
        :meth:`ZooKeeperStore._suspension_grace`)."""
        if self.strict:
            return 0.0
        return (self.negotiated or self.asked) / 6.0

    def mark_locks_lost(self, reason: str) -> None:
        with self.store._mutex:
            locks = list(self.locks)
        for lock in locks:
            lock._mark_lost(reason)

    def _on_state(self, state: str) -> None:
        """kazoo's connection listener: runs on its connection thread, so it must not block."""
        store = self.store
        if state != KazooState.CONNECTED:
            self.connected.clear()
        if state == KazooState.SUSPENDED:
            if self.strict:
                # the session is as short as the TTL: no time to wait and see
                self.mark_locks_lost(f"the connection of its {self} was suspended")
            else:
                # the session may still live: the worker marks locks lost if this lasts too long
                self.suspended_since = time.monotonic()
        elif state == KazooState.LOST:
            self.suspended_since = None
            self.mark_locks_lost(f"its {self} expired")
            if self.client.client_state == KeeperState.CLOSED and not self.client._stopped.is_set():
                # kazoo's connection loop died (not stopped by us): nothing reconnects this
                # client any more. The upkeep worker starts it again, with a new session.
                log.warning("%s: kazoo's connection loop ended; starting it again", self)
                self.restart = True
        elif state == KazooState.CONNECTED:
            self.suspended_since = None
            session = self.current()
            if self.session_id is None:  # the first connection
                self.session_id = session
            elif session != self.session_id:
                log.warning("%s: a new ZooKeeper session; re-creating its TTL keys", self)
                self.session_id = session
                self.resync.set()
            self.connected.set()
            if self is store._main:
                # never re-arm here, on kazoo's connection thread: see _watch_worker
                store._rewatch.set()
        with store._mutex:
            waiters = list(store._waiters)
        for event in waiters:
            event.set()

    def shutdown(self, *, wait: bool = True, timeout: float | None = None) -> threading.Thread:
        closer = threading.Thread(target=self._stop_client, daemon=True)
        closer.start()
        if wait:
            closer.join(self.store.timeout if timeout is None else timeout)
        return closer

    def _stop_client(self) -> None:
        with contextlib.suppress(Exception):
            self.client.remove_listener(self._on_state)
        try:
            self.client.stop()
            self.client.close()
        except Exception:
            log.debug("error while stopping the kazoo client of %s", self, exc_info=True)


class ZooKeeperStore(Store):
    """A store on a ZooKeeper ensemble. See the module documentation."""

    schemes: ClassVar[tuple[str, ...]] = ("zookeeper", "zk")
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    options_class = ZooKeeperOptions
    distribution: ClassVar[str] = "pykvstore-zookeeper"
    ttl_slack: ClassVar[float] = 2.0
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
        self._auth = auth
        self._tls: dict[str, Any] = {}
        if options.tls:
            options.check_files(url)
            self._tls = {
                "use_ssl": True,
                "ca": options.ca,
                "certfile": options.cert,
                "keyfile": options.key,
                "verify_certs": options.verify,
                # kazoo's default accepts a certificate of any host that the CA signed
                "check_hostname": options.verify,
            }
        self._mutex = threading.Lock()
        self._multi_read: bool | None = None  # see _has_multi_read
        self._probe_after = 0.0
        # this store's TTL keys, re-created after their session expired
        self._ttl_keys: TTLKeys[str, _Session] = TTLKeys()
        self._watchers: set[_Watcher] = set()
        self._waiters: set[threading.Event] = set()
        self._stop = threading.Event()
        # set on each (re)connect of the main session: the watch worker arms every watch again
        self._rewatch = threading.Event()
        # With session_timeout, one session of that length holds everything (the TTL asked is
        # then not honoured); without, each TTL class gets a session of its own, made lazily.
        self._shared = options.session_timeout is not None
        self._main = _Session(
            self,
            options.session_timeout or _MAIN_SESSION_TIMEOUT,
            strict=False,
            name="main",
        )
        self._classes: dict[float, _Session] = {}
        self._classes_lock = threading.Lock()
        self._client = self._main.client
        self._main.start()
        self._worker = threading.Thread(
            target=self._session_worker, name=f"pykv-zk-session {self}", daemon=True
        )
        self._worker.start()
        self._upkeep = threading.Thread(
            target=self._upkeep_worker, name=f"pykv-zk-upkeep {self}", daemon=True
        )
        self._upkeep.start()
        self._rewatcher = threading.Thread(
            target=self._watch_worker, name=f"pykv-zk-watch {self}", daemon=True
        )
        self._rewatcher.start()
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
        session: _Session | None = None,
    ) -> T:
        """Run an idempotent ``call(deadline)``, again after a connection loss (a failover)
        once ``session`` (the main one by default) reconnected, until the store's timeout; map
        errors on the way out. ``lost``: the connection loss that a first attempt already met."""
        if deadline is None:
            deadline = self._deadline()
        connected = (session or self._main).connected
        while True:
            if lost is not None:
                remaining = deadline - time.monotonic()
                if self._stop.is_set() or not connected.wait(max(0.0, remaining)):
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

    def _session_for(self, ttl: float, timeout: float | None = None) -> _Session:
        """The session that holds the ephemeral nodes of ``ttl``, opened on first use (within
        ``timeout``, the store's by default)."""
        if self._shared:
            return self._main
        bucket = _ttl_class(ttl)
        with self._classes_lock:
            session = self._classes.get(bucket)
            if session is None:
                self._check_open()
                session = _Session(self, bucket, strict=True, name=f"ttl={bucket:g}s")
                session.start(timeout)
                self._classes[bucket] = session
        return session

    def _schedule(self, session: _Session, job: _Cleanup) -> None:
        """Have the session worker delete lock nodes that could not be deleted now."""
        with self._mutex:
            session.cleanups.append(job)

    def _sessions(self) -> list[_Session]:
        with self._classes_lock:
            return [self._main, *self._classes.values()]

    def session_timeout_for(self, ttl: float) -> float:
        """The session timeout (seconds) ZooKeeper granted to TTL keys and locks of ``ttl``:
        how long they outlive a dead owner, before the server's expiry granularity (see the
        module documentation). More than ``ttl`` when the server's ``minSessionTimeout`` is
        above it. Opens that TTL's session if needed."""
        session = self._session_for(ttl)
        return session.negotiated or session.asked

    def _acl_for(self, path: str) -> Any:
        """Creator-all inside the store's prefix and lock space; open above them."""
        if self._acl is OPEN_ACL_UNSAFE:
            return OPEN_ACL_UNSAFE
        for base in (self._root, self._lock_base):
            if base in ("/", path) or path.startswith(base + "/"):
                return self._acl
        return OPEN_ACL_UNSAFE

    def _ensure_parents(
        self,
        path: str,
        deadline: float,
        *,
        container: bool = False,
        client: KazooClient | None = None,
    ) -> None:
        """Create the missing ancestors of ``path`` as directory nodes (null data).

        All creates are pipelined in one round trip; ZooKeeper runs a session's requests in
        order, so each parent exists before its child is created.
        """
        client = client or self._client
        parts = path.strip("/").split("/")[:-1]
        results = []
        current = ""
        for part in parts:
            current += "/" + part
            if container and current.startswith(f"/{LOCK_ROOT}/"):
                op = self._create_container(current, client)
            else:
                op = client.create_async(current, None, acl=self._acl_for(current))
            results.append(op)
        for op in results:
            with contextlib.suppress(NodeExistsError):
                self._wait(op, deadline)

    def _create_container(self, path: str, client: KazooClient) -> Any:
        """Create a container node: the server deletes it once its last child is gone.

        kazoo has no API for containers; this sends ZooKeeper's createContainer request.
        """
        result = client.handler.async_result()
        client._call(_CreateContainer(path, b"", self._acl_for(path), 4), result)
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
        client: KazooClient | None = None,
    ) -> tuple[str, Any]:
        """Create ``path`` (and its parents) through ``client`` (the main one by default: an
        ephemeral node belongs to the session of the client that creates it)."""
        client = client or self._client
        for _ in range(_RETRIES):
            try:
                created: tuple[str, Any] = self._wait(
                    client.create_async(
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
                self._ensure_parents(path, deadline, container=container_parents, client=client)
        raise UnavailableError(f"could not create {path} on {self}: its parents kept vanishing")

    def _read(
        self, path: str, deadline: float, client: KazooClient | None = None
    ) -> tuple[bytes | None, Any] | None:
        """(data, stat) of a node, or None when it does not exist."""
        try:
            data, stat = self._wait((client or self._client).get_async(path), deadline)
        except NoNodeError:
            return None
        return data, stat

    def _replace(
        self,
        path: str,
        value: bytes,
        version: int,
        *,
        ephemeral: bool,
        deadline: float,
        client: KazooClient | None = None,
    ) -> Any:
        """Re-create an existing node as persistent or ephemeral in one transaction (an
        ephemeral one owned by ``client``'s session).

        The trailing set_data returns the new stat (all ops of a multi share one zxid).
        """
        tx = (client or self._client).transaction()
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

    def _track(self, path: str, value: bytes | None, session: _Session | None = None) -> None:
        if value is None or session is None:
            self._ttl_keys.forget(path)
        else:
            self._ttl_keys.remember(session, path, value)

    def _owned(self, path: str, session: _Session) -> bool:
        return self._ttl_keys.group_of(path) is session

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
        if ttl is None:
            self._retrying(lambda: f"put {key!r}", lambda d: self._write(path, value, None, d))
            return
        with self._errors(f"put {key!r}"):
            session = self._session_for(ttl)
        self._retrying(
            lambda: f"put {key!r}", lambda d: self._write(path, value, session, d), session=session
        )

    def _write(self, path: str, value: bytes, session: _Session | None, deadline: float) -> Any:
        """Write a key as persistent, or as ephemeral on ``session``; return its new stat."""
        for _ in range(_RETRIES):
            if session is not None:
                client = session.client
                if self._owned(path, session):
                    try:
                        stat = self._wait(client.set_async(path, value), deadline)
                    except NoNodeError:
                        self._track(path, None)
                        continue
                    if stat.ephemeralOwner == session.session_id:
                        self._track(path, value, session)
                        return stat
                    self._track(path, None)
                    continue
                try:
                    _, stat = self._create(path, value, deadline, ephemeral=True, client=client)
                except NodeExistsError:
                    found = self._read(path, deadline, client)
                    if found is None:
                        continue
                    try:
                        stat = self._replace(
                            path,
                            value,
                            found[1].version,
                            ephemeral=True,
                            deadline=deadline,
                            client=client,
                        )
                    except (BadVersionError, NoNodeError):
                        continue
                self._track(path, value, session)
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
        """Every node strictly below ``base``: (path, data, stat), level by level, each level
        read in batched, pipelined requests (see :meth:`_read_many`)."""
        out: list[tuple[str, bytes | None, Any]] = []
        parents = [base]
        while parents:
            children: list[str] = []
            for parent, names in self._read_many(GetChildren.type, parents, deadline):
                if names is None:
                    continue
                hidden = _HIDDEN_TOP if parent == "/" else ()
                prefix = parent.rstrip("/")
                children.extend(f"{prefix}/{n}" for n in names if n not in hidden)
            parents = []
            for child, found in self._read_many(GetData.type, children, deadline):
                if found is None:
                    continue
                data, stat = found
                out.append((child, data, stat))
                if stat.numChildren:
                    parents.append(child)
        return out

    def _read_many(self, kind: int, paths: list[str], deadline: float) -> Iterator[tuple[str, Any]]:
        """getData (``(data, stat)``) or getChildren (names) of every path, in order; None
        for a path that is gone. Many requests are in flight at once, never more than a
        window's worth, and every wait ends at ``deadline``."""
        if len(paths) >= _BATCH_FROM and self._has_multi_read():
            batches = [paths[i : i + _BATCH] for i in range(0, len(paths), _BATCH)]
            pending: collections.deque[tuple[list[str], Any]] = collections.deque()
            for batch in batches:
                if len(pending) >= _WINDOW:
                    yield from self._batch_results(kind, *pending.popleft(), deadline)
                pending.append((batch, self._submit(_MultiRead([(kind, p) for p in batch]))))
            while pending:
                yield from self._batch_results(kind, *pending.popleft(), deadline)
            return
        call = self._client.get_async if kind == GetData.type else self._client.get_children_async
        ops: collections.deque[tuple[str, Any]] = collections.deque()
        for path in paths:
            if len(ops) >= _IN_FLIGHT:
                yield self._one_result(*ops.popleft(), deadline)
            ops.append((path, call(path)))
        while ops:
            yield self._one_result(*ops.popleft(), deadline)

    def _one_result(self, path: str, op: Any, deadline: float) -> tuple[str, Any]:
        try:
            return path, self._wait(op, deadline)
        except NoNodeError:
            return path, None

    def _batch_results(
        self, kind: int, paths: list[str], op: Any, deadline: float
    ) -> Iterator[tuple[str, Any]]:
        results = self._wait(op, deadline)
        if len(results) != len(paths):
            raise UnavailableError(
                f"{self}: a multiRead of {len(paths)} nodes answered {len(results)} results"
            )
        for path, result in zip(paths, results, strict=True):
            if isinstance(result, NoNodeError):
                yield path, None
            elif isinstance(result, Exception):
                raise result
            else:
                yield path, result

    def _submit(self, request: Any) -> Any:
        """Send a request kazoo has no method for; its async result."""
        result = self._client.handler.async_result()
        self._client._call(request, result)
        return result

    def _has_multi_read(self) -> bool:
        """Whether the servers answer multiRead (ZooKeeper 3.6+), asked once per store. A
        server without it closes the session that sends it, so a throwaway session asks; when
        it cannot ask, walks go node by node and it asks again a minute later."""
        if self._multi_read is None and time.monotonic() >= self._probe_after:
            self._multi_read = self._probe_multi_read()
            if self._multi_read is None:
                self._probe_after = time.monotonic() + 60.0
        return bool(self._multi_read)

    def _probe_multi_read(self) -> bool | None:
        # short waits: the probe spends the time of the call that needs the answer
        wait = min(self.timeout / 4, 2.0)
        probe = KazooClient(
            hosts=self._hosts,
            timeout=_MAIN_SESSION_TIMEOUT,
            auth_data=self._auth,
            connection_retry=KazooRetry(max_tries=0),
            logger=logging.getLogger("pykv.zookeeper.kazoo"),
            handler=_Handler(),
            **self._tls,
        )
        supported: bool | None
        try:
            probe.start(timeout=wait)
            result = probe.handler.async_result()
            probe._call(_MultiRead([(GetData.type, "/")]), result)
            answer = result.get(timeout=wait)
            supported = isinstance(answer, list) and len(answer) == 1
        except (UnimplementedError, ConnectionLoss, SessionExpiredError) as exc:
            log.info("%s: no multiRead (%s); recursive reads go node by node", self, exc)
            supported = False  # the server refused it and dropped the probe's session
        except Exception as exc:  # noqa: BLE001  (no answer: node by node for now)
            log.info("%s: could not ask for multiRead (%r); node by node for now", self, exc)
            supported = None
        threading.Thread(target=_stop_quietly, args=(probe,), daemon=True).start()
        return supported

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
            if base != self._root:  # the root node holds the key the prefix names: not ours
                nodes.insert(0, base)
            # deepest first; each depth level in one pipelined round trip
            by_depth: dict[int, list[str]] = {}
            for node in nodes:
                by_depth.setdefault(node.count("/"), []).append(node)
            busy = False
            for depth in sorted(by_depth, reverse=True):
                for node in by_depth[depth]:
                    self._track(node, None)
                busy = self._delete_many(by_depth[depth], deadline) or busy
            if not busy:
                break
        below = base.rstrip("/") + "/"
        self._ttl_keys.forget_where(lambda p: p.startswith(below))
        if base != self._root:
            self._prune_parents(base, deadline)
        elif base != "/":  # the emptied root node goes too, unless it holds a value
            found = self._read(base, deadline)
            if found is not None and found[0] is None and not found[1].numChildren:
                with contextlib.suppress(NotEmptyError, BadVersionError, NoNodeError):
                    self._wait(self._client.delete_async(base, found[1].version), deadline)

    def _delete_many(self, nodes: list[str], deadline: float) -> bool:
        """Delete ``nodes`` (leaves by then), _DELETE_BATCH per multi request, _WINDOW
        requests in flight; a batch that fails as a whole (a node already gone, or given a
        child concurrently) is done node by node. Returns whether a node had a child."""
        busy = False
        pending: collections.deque[tuple[list[str], Any]] = collections.deque()

        def settle(batch: list[str], op: Any) -> bool:
            results = self._wait(op, deadline)
            if not any(isinstance(r, Exception) for r in results):
                return False
            return self._delete_each(batch, deadline)

        for start in range(0, len(nodes), _DELETE_BATCH):
            batch = nodes[start : start + _DELETE_BATCH]
            if len(pending) >= _WINDOW:
                busy = settle(*pending.popleft()) or busy
            if len(batch) == 1:
                busy = self._delete_each(batch, deadline) or busy
                continue
            transaction = self._client.transaction()
            for node in batch:
                transaction.delete(node)
            pending.append((batch, transaction.commit_async()))
        while pending:
            busy = settle(*pending.popleft()) or busy
        return busy

    def _delete_each(self, nodes: list[str], deadline: float) -> bool:
        busy = False
        ops = [(n, self._client.delete_async(n)) for n in nodes]
        for _, op in ops:
            try:
                self._wait(op, deadline)
            except NoNodeError:
                pass
            except NotEmptyError:
                busy = True  # written to concurrently: walk again
        return busy

    def _atomic_put(
        self, key: str, value: bytes, previous: KVPair | None, ttl: float | None
    ) -> KVPair:
        path = self._abs(key)
        with self._errors(f"atomic_put {key!r}"):
            session = None if ttl is None else self._session_for(ttl)
            deadline = self._deadline()
            if previous is None:
                stat = self._create_only(key, path, value, session, deadline)
            else:
                stat = self._swap(key, path, value, previous, session, deadline)
            self._track(path, value, session)
        return KVPair(key, value, stat.mzxid)

    def _create_only(
        self, key: str, path: str, value: bytes, session: _Session | None, deadline: float
    ) -> Any:
        ephemeral = session is not None
        client = self._client if session is None else session.client
        for _ in range(_RETRIES):
            try:
                _, stat = self._create(path, value, deadline, ephemeral=ephemeral, client=client)
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
                            path,
                            value,
                            stat.version,
                            ephemeral=True,
                            deadline=deadline,
                            client=client,
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
        self,
        key: str,
        path: str,
        value: bytes,
        previous: KVPair,
        session: _Session | None,
        deadline: float,
    ) -> Any:
        stat = self._check(key, path, previous, deadline)
        ephemeral = session is not None
        try:
            if session is not None and stat.ephemeralOwner != session.session_id:
                return self._replace(
                    path,
                    value,
                    stat.version,
                    ephemeral=True,
                    deadline=deadline,
                    client=session.client,
                )
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
        tracked = self._ttl_keys.forget(path)
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
                self._ttl_keys.restore(path, tracked)
                raise
            self._prune_parents(path, deadline)

    # -- sessions ----------------------------------------------------------------------------

    def _suspension_grace(self) -> float:
        """How long the shared session (``session_timeout`` given) may stay suspended before
        its locks count as lost.

        kazoo pings every S/3 of the session timeout S and suspends when a ping stays
        unanswered for another S/3, so at most 2/3 S after the server last heard from it; a
        follower reports its clients' activity to the leader up to half a tickTime late. The
        session can thus expire S/3 minus that after SUSPENDED, and S/6 stays ahead of it
        whenever S >= 3 tickTime. A leader election or a reconnect to another server ends a
        suspension sooner (the session survives them: the new leader renews every session), so
        locks outlive both. S is the timeout the server negotiated. The sessions of TTL classes
        have no grace: they are as short as their TTL.
        """
        return self._main.grace()

    def _session_worker(self) -> None:
        """Marks a session's locks lost when its suspension lasts longer than its grace. It
        never waits on the network, so nothing delays it; the upkeep worker does the rest."""
        while not self._stop.wait(0.05):
            for session in self._sessions():
                since = session.suspended_since
                if since is not None and time.monotonic() - since >= session.grace():
                    session.suspended_since = None
                    session.mark_locks_lost(
                        f"the connection of its {session} was suspended for more than "
                        f"{session.grace():.1f} s"
                    )

    def _upkeep_worker(self) -> None:
        """Re-creates a session's TTL keys after it expired (when a new session began), and
        deletes the lock nodes of releases and acquisitions that failed."""
        while not self._stop.wait(0.05):
            for session in self._sessions():
                if self._stop.is_set():
                    return
                try:
                    if session.restart:
                        session.client.start_async()
                        session.restart = False
                    self._clean_up(session)
                    self._resync(session)
                except Exception:  # logged, and tried again on the next round
                    log.warning("%s: session upkeep failed", session, exc_info=True)

    def _watch_worker(self) -> None:
        """Arms every watch again after the main session (re)connected: the server forgot
        them with the connection, and kazoo does not send them again.

        Not in kazoo's state listener: that runs on kazoo's connection thread, and a request
        queued there wakes that very thread with a byte on a socket pair that holds a few
        hundred. Re-arming a tree of N keys queues 2N+1 requests: from the listener, past some
        140 keys, the thread blocked on its own socket pair for good (no request, answer, event
        or ping any more, and no error). Here the connection thread drains them as they come."""
        while not self._stop.is_set():
            if not self._rewatch.wait(0.5) or self._stop.is_set():
                continue
            self._rewatch.clear()
            with self._mutex:
                watchers = list(self._watchers)
            for watcher in watchers:
                try:
                    watcher.refresh()
                except Exception as exc:  # the watch ends with it, never silently
                    log.warning("%s: could not arm %s again", self, watcher.watch, exc_info=True)
                    watcher._fail(exc)

    def _resync(self, session: _Session) -> None:
        """After a new session began, write its TTL keys again (where nobody wrote them
        meanwhile); what fails stays queued for the next round."""
        if not session.connected.is_set():
            return
        if session.resync.is_set():
            session.resync.clear()
            self._ttl_keys.lose(session)
        if not self._ttl_keys.pending(session) or self._stop.is_set():
            return
        try:
            with self._errors(f"re-create the TTL keys of {session}"):
                self._ttl_keys.recreate(
                    session, partial(self._create_again, session), self._delete_at
                )
        except Exception:  # retried on a later round
            log.warning("%s: could not re-create its TTL keys", session, exc_info=True)
            self._stop.wait(0.5)

    def _clean_up(self, session: _Session) -> None:
        """Delete the lock nodes of failed releases and acquisitions on ``session``."""
        with self._mutex:
            jobs = list(session.cleanups)
        for job in jobs:
            if not session.connected.is_set() or job.next_try > time.monotonic():
                continue
            done = job.session_id != session.current()  # expired: its nodes are gone
            if not done:
                try:
                    self._remove_lock_nodes(session.client, job, self._deadline())
                    done = True
                except (KazooException, KazooTimeoutError) as exc:
                    log.info(
                        "%s: lock cleanup in %s failed (%r); retrying", session, job.directory, exc
                    )
                    job.next_try = time.monotonic() + _CLEANUP_INTERVAL
            if done:
                with self._mutex, contextlib.suppress(ValueError):
                    session.cleanups.remove(job)

    def _remove_lock_nodes(self, client: KazooClient, job: _Cleanup, deadline: float) -> None:
        """Delete the key node a lock wrote (only while it is still that node) and every
        queue node named with the acquisition's prefix."""
        if job.key_path is not None and job.czxid is not None:
            found = self._read(job.key_path, deadline, client)
            if found is not None and found[1].czxid == job.czxid:
                with contextlib.suppress(NoNodeError, BadVersionError, NotEmptyError):
                    self._wait(client.delete_async(job.key_path, found[1].version), deadline)
        try:
            names: list[str] = self._wait(client.get_children_async(job.directory), deadline)
        except NoNodeError:
            names = []
        mine = [n for n in names if n.startswith(job.prefix + "-")]
        ops = [client.delete_async(f"{job.directory}/{n}") for n in mine]
        for op in ops:
            with contextlib.suppress(NoNodeError):
                self._wait(op, deadline)
        if job.key_path is not None:
            self._prune_parents(job.key_path, deadline)

    def _create_again(self, session: _Session, path: str, value: bytes) -> Created:
        """Write the TTL key ``path`` on ``session`` if it is absent (``TTLKeys`` hook)."""
        deadline = self._deadline()
        try:
            _, stat = self._create(path, value, deadline, ephemeral=True, client=session.client)
        except NodeExistsError:
            found = self._read(path, deadline)
            ours = found is not None and found[1].ephemeralOwner == session.session_id
            return Created(False, ours=ours)  # not ours: someone else wrote it, theirs wins
        return Created(True, stat.version)

    def _delete_at(self, path: str, version: int) -> None:
        """Delete ``path`` unless it was written since (``TTLKeys`` hook: undo a re-creation)."""
        with contextlib.suppress(NoNodeError, BadVersionError, NotEmptyError):
            self._wait(self._client.delete_async(path, version), self._deadline())

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
        with self._classes_lock:  # after this, no TTL class opens a session any more
            sessions = [self._main, *self._classes.values()]
            self._classes.clear()
        with self._mutex:
            watchers = list(self._watchers)
            locks = [lock for session in sessions for lock in session.locks]
            waiters = list(self._waiters)
            self._ttl_keys.clear()
        for watcher in watchers:
            watcher.watch.close()
        for event in waiters:
            event.set()
        for lock in locks:
            # closing the sessions below releases them: the locks are no longer held
            lock._releasing = True
            lock._held = False
        # closing a session deletes its ephemeral nodes (TTL keys, held locks) at once; the
        # sessions close in parallel, all within the store's timeout
        closers = [session.shutdown(wait=False) for session in sessions]
        end = self._deadline()
        for closer in closers:
            closer.join(max(0.0, end - time.monotonic()))
        self._rewatch.set()  # wakes the watch worker, which sees _stop
        for name in ("_worker", "_upkeep", "_rewatcher"):
            worker = getattr(self, name, None)
            if worker is not None:
                worker.join(_JOIN_TIMEOUT)


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
    an exists watch on the root while it is absent. Whenever no read is outstanding, the
    paths read or removed since the last time go to the core's tree feed, which delivers a
    snapshot if they changed anything (the cost follows what changed, not the tree)."""

    def __init__(self, store: ZooKeeperStore, prefix: str, path: str) -> None:
        super().__init__(store, f"watch_tree {prefix!r} on {store}")
        self.root = path
        self.data: dict[str, tuple[bytes | None, int]] = {}
        self.children: dict[str, set[str]] = {}
        self.outstanding = 0
        #: created at the first settled state (which is the first snapshot)
        self.feed: TreeFeed | None = None
        #: paths read or removed since the feed last saw them
        self.dirty: dict[str, None] = {}
        self.seq = 0

    def refresh(self) -> None:
        with self.lock:
            if self.watch.closed:
                return
            # also the children listed but never read: a first read lost with the connection
            # leaves a child in `children` only, and no later listing shows it as new
            listed = (f"{p.rstrip('/')}/{n}" for p, names in self.children.items() for n in names)
            paths = [self.root, *dict.fromkeys([*self.data, *listed])]
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
            self.dirty[known] = None
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
                    self.dirty[path] = None
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
            rel = self.store._rel
            if self.feed is None:
                current = [
                    KVPair(rel(p), d, rev)
                    for p, (d, rev) in self.data.items()
                    if d is not None and p != self.root
                ]
                self.feed = TreeFeed(self.watch, "", 0, current, 0)
            else:
                changes = []
                for path in self.dirty:
                    if path == self.root:
                        continue
                    data, revision = self.data.get(path, (None, 0))
                    self.seq += 1  # the reads are ordered here already (newest mzxid wins)
                    changes.append(Change(revision, rel(path), data, self.seq))
                self.feed.apply(changes)
            self.dirty.clear()


class _ZooKeeperLock(Lock):
    """The ZooKeeper lock recipe; the holder's value lives at the key as an ephemeral node.

    Queue nodes are named ``<prefix>-lock-<sequence>`` with a prefix new for every
    acquisition, so that a node whose create timed out or lost its connection (and may have
    been made anyway) is found again, and removed when the acquisition is given up."""

    store: ZooKeeperStore

    def __init__(self, store: ZooKeeperStore, key: str, value: bytes, ttl: float) -> None:
        super().__init__(store, key, value, ttl)
        self._key_path = store._abs(key)
        self._dir = f"/{LOCK_ROOT}/{store._path(key)}"
        self._id = uuid.uuid4().hex.encode()
        self._session: _Session | None = None
        self._prefix = ""
        self._node: str | None = None
        self._sent_create = False
        self._releasing = False
        self._czxid: int | None = None
        self._written_in: int | None = None  # the session that wrote the key

    def _acquire(self, timeout: float | None) -> int | None:
        store = self.store
        end = None if timeout is None else time.monotonic() + timeout
        with store._errors(f"lock {self.key!r}"):
            session = store._session_for(
                self.ttl, None if timeout is None else min(timeout, store.timeout)
            )
        self._session = session
        self._prefix = uuid.uuid4().hex
        self._node = None
        self._sent_create = False
        self._releasing = False
        wake = threading.Event()
        with store._mutex:
            store._waiters.add(wake)
        try:
            token = self._queue(session, end, wake)
        except BaseException:
            self._abandon(session)
            raise
        finally:
            with store._mutex:
                store._waiters.discard(wake)
        if token is None:
            self._abandon(session)
            return None
        with store._mutex:
            session.locks.add(self)
        self._held = True  # from here on a suspension or an expiry marks it lost
        if session.current() != self._written_in or (
            session.strict and not session.connected.is_set()
        ):
            self._mark_lost(f"its {session} was suspended or expired as it was acquired")
        self._watch_key(session)
        return token

    def _queue(self, session: _Session, end: float | None, wake: threading.Event) -> int | None:
        """Wait in the queue until first, then write the key; None when ``end`` passed.

        Every round trip is bounded by the store's timeout and by ``end``; a lost connection
        is waited out as long as both allow (the session, and our node, may survive it)."""
        store = self.store
        what = f"lock {self.key!r}"
        trouble_since: float | None = None
        while True:
            store._check_open()
            wake.clear()
            now = time.monotonic()
            if end is not None and now >= end:
                return None
            deadline = now + store.timeout if end is None else min(now + store.timeout, end)
            try:
                names = self._enqueue(session.client, deadline) if self._node is None else None
                predecessor = self._predecessor(session.client, wake, names, deadline)
                if predecessor is None:
                    return self._write_value(session, deadline)
                trouble_since = None
            except (ConnectionLoss, SessionExpiredError, KazooTimeoutError) as exc:
                now = time.monotonic()
                if end is not None and now >= end:
                    return None
                if isinstance(exc, KazooTimeoutError):  # the store's timeout, not ours
                    raise store._mapped(exc, what) from exc
                trouble_since = trouble_since or now
                limit = trouble_since + store.timeout
                if end is not None:
                    limit = min(limit, end)
                if not session.connected.wait(max(0.0, limit - now)):
                    if end is not None and time.monotonic() >= end:
                        return None
                    raise store._mapped(exc, what) from exc
                continue
            except KazooException as exc:
                raise store._mapped(exc, what) from exc
            remaining = None if end is None else end - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            wake.wait(remaining if remaining is not None else 1.0)

    def _enqueue(self, client: KazooClient, deadline: float) -> list[str] | None:
        """Create our sequence node and list the queue in one round trip (ZooKeeper answers
        a session's requests in order, so the listing includes our node). After a create whose
        answer was lost, first look for the node it may have made."""
        store = self.store
        if self._sent_create:
            client.sync_async(self._dir)  # a follower catches up with the leader first
            try:
                names: list[str] = store._wait(client.get_children_async(self._dir), deadline)
            except NoNodeError:
                names = []
            mine = self._mine(names)
            if mine:
                self._node = f"{self._dir}/{mine[0]}"
                return names
        path = f"{self._dir}/{self._prefix}-lock-"
        self._sent_create = True
        create = client.create_async(
            path, self._id, acl=store._acl_for(path), ephemeral=True, sequence=True
        )
        listing = client.get_children_async(self._dir)
        try:
            self._node = store._wait(create, deadline)
        except NoNodeError:  # first lock on this key: make the queue's container nodes
            self._node, _ = store._create(
                path,
                self._id,
                deadline,
                ephemeral=True,
                sequence=True,
                container_parents=True,
                client=client,
            )
            return None
        try:
            names = store._wait(listing, deadline)
        except NoNodeError:
            return None
        return names

    def _mine(self, names: list[str]) -> list[str]:
        """The queue nodes of this acquisition, oldest first."""
        return sorted((n for n in names if n.startswith(self._prefix + "-")), key=lambda n: n[-10:])

    def _predecessor(
        self, client: KazooClient, wake: threading.Event, names: list[str] | None, deadline: float
    ) -> str | None:
        """None when our node is first in line; else the node before it (watched)."""
        store = self.store
        assert self._node is not None
        if names is None:
            try:
                names = store._wait(client.get_children_async(self._dir), deadline)
            except NoNodeError:  # our node expired with its session, then the queue went
                names = []
        mine = self._node.rsplit("/", 1)[1]
        if mine not in names:  # our session expired meanwhile: queue again
            self._node = None
            return ""
        # a second node of ours (a create retried after its answer was lost): never wait
        # for ourselves; remove it
        extra = [n for n in self._mine(names) if n != mine]
        for name in extra:
            client.delete_async(f"{self._dir}/{name}")
        ordered = sorted((n for n in names if n not in extra), key=lambda n: n[-10:])
        index = ordered.index(mine)
        if index == 0:
            return None
        before = f"{self._dir}/{ordered[index - 1]}"
        stat = store._wait(
            client.exists_async(before, watch=lambda _event: wake.set()),
            deadline,
        )
        return before if stat is not None else ""

    def _write_value(self, session: _Session, deadline: float) -> int:
        """Put our value at the key as an ephemeral node; its czxid is the fencing token."""
        store = self.store
        client = session.client
        self._written_in = session.current()
        for _ in range(_RETRIES):
            try:
                _, stat = store._create(
                    self._key_path, self.value, deadline, ephemeral=True, client=client
                )
            except NodeExistsError:
                # a plain key (or a stale holder's node) is in the way: the lock owns the key
                found = store._read(self._key_path, deadline, client)
                if found is None:
                    continue
                if found[1].numChildren:
                    raise NotSupportedError(
                        f"lock {self.key!r} on {store}: the key has children, and the holder's "
                        "value must be an ephemeral node, which cannot have children"
                    ) from None
                with contextlib.suppress(NoNodeError, BadVersionError):
                    store._wait(client.delete_async(self._key_path, found[1].version), deadline)
                continue
            self._czxid = int(stat.czxid)
            return self._czxid
        raise OperationTimeoutError(f"lock {self.key!r} on {store}: could not write its key")

    def _watch_key(self, session: _Session) -> None:
        """Someone deleting (or replacing) the key breaks the lock: mark it lost and leave the
        queue. A watch that cannot be armed again marks it lost too: without it nothing would
        tell the holder."""
        client = session.client

        def watching() -> bool:
            return not self._releasing and self._held and not self.lost.is_set()

        def lose(reason: str) -> None:
            self._mark_lost(reason)

        def arm() -> None:
            try:
                client.exists_async(self._key_path, watch=on_event).rawlink(on_exists)
            except Exception as exc:  # noqa: BLE001 - whatever it is, the lock is unwatched
                lose(f"could not watch its key ({exc!r})")

        def on_event(event: Any) -> None:
            if not watching():
                return
            if event.type == EventType.DELETED:
                lose("its key was deleted")
            else:
                arm()

        def on_exists(result: Any) -> None:
            if not watching():
                return
            try:
                stat = result.get_nowait()
            except Exception as exc:  # noqa: BLE001 - whatever it is, the lock is unwatched
                lose(f"could not watch its key ({exc!r})")
                return
            if stat is None:
                lose("its key was deleted")
            elif stat.czxid != self._czxid:
                lose("its key was replaced")

        arm()

    def _mark_lost(self, reason: str) -> None:
        if not self._held or self.lost.is_set():
            return
        super()._mark_lost(reason)
        session = self._session
        if session is not None and not self.store.closed:
            # a lock that no longer trusts itself must not keep others out either: its nodes
            # go (the key only while it is still the node it wrote), now or after a reconnect
            self.store._schedule(
                session,
                _Cleanup(session.current(), self._dir, self._prefix, self._key_path, self._czxid),
            )

    def _abandon(self, session: _Session) -> None:
        """Leave the queue after an acquisition was given up, without waiting: a create whose
        answer was lost may have made a node, so the session worker deletes every node of
        this acquisition's prefix once the connection allows."""
        node, self._node = self._node, None
        if node is not None:
            with contextlib.suppress(Exception):  # at once when possible; the job makes sure
                session.client.delete_async(node)
        if self._sent_create:
            self.store._schedule(session, _Cleanup(session.current(), self._dir, self._prefix))

    def _release(self) -> None:
        store = self.store
        session = self._session
        self._releasing = True
        if session is None:
            return
        with store._mutex:
            session.locks.discard(self)
        if store.closed:
            return  # closing the session removed our nodes
        what = f"release lock {self.key!r}"
        client = session.client
        job = _Cleanup(session.current(), self._dir, self._prefix, self._key_path, self._czxid)
        fast = not self.lost.is_set() and self._node is not None

        def attempt(deadline: float) -> None:
            nonlocal fast
            if fast:
                # still held, so the key is our node: drop it and our place in one transaction
                fast = False
                tx = client.transaction()
                tx.delete(self._key_path)
                tx.delete(self._node)
                results = store._wait(tx.commit_async(), deadline)
                if not any(isinstance(r, Exception) for r in results):
                    store._prune_parents(self._key_path, deadline)
                    return
            # the key only if it is still the node we wrote (not a later holder's); a retry
            # after a lost answer lands here too
            store._remove_lock_nodes(client, job, deadline)

        try:
            store._retrying(lambda: what, attempt, session=session)
        except (UnavailableError, OperationTimeoutError) as exc:
            # the lock must not stay taken while this session lives: keep deleting its nodes
            store._schedule(session, job)
            raise type(exc)(
                f"{exc}; its nodes will be deleted once the connection is back (or go with "
                "the session)"
            ) from exc
        finally:
            self._node = None
