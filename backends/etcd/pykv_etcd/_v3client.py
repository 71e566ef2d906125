"""The etcd v3 connection: endpoints, auth, deadlines, failover and error mapping (gRPC)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from pyetcd import etcdrpc

from pykv import (
    ConfigurationError,
    OperationTimeoutError,
    PermissionDeniedError,
    PyKVError,
    TLSOptions,
    UnavailableError,
)

log = logging.getLogger("pykv.etcd")

DEFAULT_PORT = 2379
#: Lock bookkeeping namespace: outside every store prefix and below "\x01".
LOCK_NAMESPACE = b"\x00pykv-locks/"
#: Lower bound of the whole keyspace as pykv sees it (everything below is bookkeeping).
KEYSPACE_START = b"\x01"
#: range_end "\x00" means "every key >= key" in etcd.
RANGE_ALL = b"\x00"
#: A lock waiter re-checks its predecessor at least this often (a safety net, not polling).
LOCK_WAIT_CHUNK = 30.0
_MAX_BACKOFF = 1.0

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # Come back quickly after a restart of the server (gRPC's default backoff reaches 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Detect dead connections under long-lived watch streams; etcd allows pings every 5 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]

# Text etcd puts in errors about credentials, whatever the gRPC status code.
_AUTH_TEXT = (
    "authentication failed",
    "user name is empty",
    "permission denied",
    "invalid auth token",
    "user name not found",
    "auth: revision in header is old",
)


# gRPC and etcd errors that mean the request was not applied, so that retrying is safe.
_UNSENT_TEXT = (
    "failed to connect",
    "connection refused",
    "no leader",
    "connections to all backends failing",
    "dns resolution failed",
    "name resolution",
)


@dataclass(frozen=True)
class EtcdOptions(TLSOptions):
    """Options of etcd:// stores (see the package documentation).

    username/password: etcd user credentials (also accepted in the URL as ``user:pw@``).
    """

    username: str | None = None
    password: str | None = None


def _b(text: str) -> bytes:
    return text.encode("utf-8")


def _absent(key: bytes, range_end: bytes | None = None) -> Any:
    """A txn compare that holds when ``key`` (or every key in the range) does not exist."""
    extra = {} if range_end is None else {"range_end": range_end}
    return etcdrpc.Compare(
        key=key,
        target=etcdrpc.Compare.CREATE,
        result=etcdrpc.Compare.EQUAL,
        create_revision=0,
        **extra,
    )


def _unchanged(key: bytes, revision: int) -> Any:
    """A txn compare that holds when ``key`` was last modified at ``revision``."""
    return etcdrpc.Compare(
        key=key, target=etcdrpc.Compare.MOD, result=etcdrpc.Compare.EQUAL, mod_revision=revision
    )


def _range_end(prefix: bytes) -> bytes:
    """The range_end of every key starting with ``prefix`` (which ends in a byte < 0xff)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


# -- the connection: endpoints, auth, deadlines, failover, error mapping ----------------------


@dataclass
class _Endpoint:
    target: str
    channel: grpc.Channel
    kv: Any
    lease: Any
    watch: Any
    auth: Any


class _Client:
    """gRPC channels to the store's endpoints, with auth and failover.

    Every unary call goes through :meth:`call`: a deadline of the store's timeout, retries on
    UNAVAILABLE (refused connection, leader change, no leader) on the next endpoint with a short
    backoff, and one re-authentication when the auth token expired.
    """

    def __init__(
        self,
        name: str,
        timeout: float,
        options: EtcdOptions,
        targets: Sequence[str],
        on_failover: Callable[[_Endpoint], None],
    ) -> None:
        #: the store, as errors name it
        self.name = name
        self.timeout = timeout
        self._on_failover = on_failover
        self._credentials: grpc.ChannelCredentials | None = None
        if options.tls:
            self._credentials = _tls_credentials(options)
        self._endpoints = [self._connect(t) for t in targets]
        self._current = 0
        self._closed = False
        self._mutex = threading.Lock()
        #: gRPC calls of lock waiters and their endpoints, cancelled on close or failover
        self._waits: dict[Any, _Endpoint] = {}
        self._stopping = False
        self._user, self._password = options.username, options.password
        self._metadata: tuple[tuple[str, str], ...] = ()
        if self._user is not None or self._password is not None:
            if not self._user or self._password is None:
                raise ConfigurationError(
                    f"{name}: etcd authentication needs both a username and a password"
                )
            self._authenticate(time.monotonic() + self.timeout)

    def _connect(self, target: str) -> _Endpoint:
        if self._credentials is not None:
            channel = grpc.secure_channel(target, self._credentials, options=_CHANNEL_OPTIONS)
        else:
            channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        return _Endpoint(
            target,
            channel,
            etcdrpc.KVStub(channel),
            etcdrpc.LeaseStub(channel),
            etcdrpc.WatchStub(channel),
            etcdrpc.AuthStub(channel),
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def endpoint(self) -> _Endpoint:
        return self._endpoints[self._current]

    def failover(self, failed: _Endpoint) -> None:
        """Move on to the next endpoint after ``failed`` did not answer."""
        with self._mutex:
            moved = len(self._endpoints) > 1 and self._endpoints[self._current] is failed
            if moved:
                self._current = (self._current + 1) % len(self._endpoints)
                log.info(
                    "etcd endpoint %s failed; trying %s", failed.target, self.endpoint().target
                )
        if moved:
            with self._mutex:
                waits = [call for call, ep in self._waits.items() if ep is failed]
            for call in waits:
                call.cancel()  # the waiter re-reads the lock's state and waits elsewhere
            self._on_failover(failed)

    def _authenticate(self, deadline: float) -> None:
        request = etcdrpc.AuthenticateRequest(name=self._user, password=self._password)
        response = self.call("authenticate", "auth", "Authenticate", request, deadline=deadline)
        self._metadata = (("token", response.token),)

    def attempt_timeout(self, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if len(self._endpoints) > 1:
            # Leave time to try another endpoint: a member that lost its leader holds
            # requests until its proposal times out.
            remaining = min(remaining, max(1.0, min(2.0, self.timeout / 3)))
        return max(remaining, 0.001)

    def call(
        self,
        what: str,
        stub: str,
        method: str,
        request: Any,
        *,
        deadline: float | None = None,
        conditional: bool = False,
    ) -> Any:
        """One unary RPC within the deadline (default: now + the store's timeout).

        A ``conditional`` write (a compare-and-swap) is retried only when etcd surely did not
        get it; after an attempt with an unknown outcome a retry could report a conflict with
        its own first attempt, so the error is raised instead.
        """
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        backoff = 0.02
        reauthenticated = False
        while True:
            ep = self.endpoint()
            if self._closed:
                raise UnavailableError(f"{what}: the store {self.name} is closed")
            try:
                fn = getattr(getattr(ep, stub), method)
                metadata = self._metadata if method != "Authenticate" else ()
                return fn(request, timeout=self.attempt_timeout(deadline), metadata=metadata)
            except ValueError as exc:  # gRPC's "Cannot invoke RPC on closed channel!"
                if self._closed:
                    raise UnavailableError(f"{what}: the store {self.name} is closed") from exc
                raise
            except grpc.RpcError as exc:
                code = exc.code()
                if (
                    code == grpc.StatusCode.UNAUTHENTICATED
                    and method != "Authenticate"
                    and self._metadata
                    and not reauthenticated
                ):
                    reauthenticated = True  # the token expired (etcd's default TTL is 5 min)
                    self._authenticate(deadline)
                    continue
                retry = code == grpc.StatusCode.UNAVAILABLE or (
                    code == grpc.StatusCode.DEADLINE_EXCEEDED and len(self._endpoints) > 1
                )
                if retry:
                    # The endpoint did not answer: the next call goes elsewhere even when this
                    # one is not retried (no time left, or a write of unknown outcome).
                    self.failover(ep)
                if retry and conditional:
                    details = (exc.details() or "").lower()
                    retry = code == grpc.StatusCode.UNAVAILABLE and any(
                        text in details for text in _UNSENT_TEXT
                    )
                if retry and time.monotonic() + backoff < deadline:
                    time.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF / 4)
                    continue
                raise self.error(exc, what, ep) from exc

    def wait_deleted(self, path: bytes, after: int, deadline: float | None) -> None:
        """Block until ``path`` is deleted at a revision > ``after``, the deadline, an error or
        :data:`LOCK_WAIT_CHUNK`; the caller re-checks the state either way."""
        client = self
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
            with self._mutex:
                self._waits[call] = ep
            if self._stopping:
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
            if silent.is_set() and not self._stopping:
                log.info("wait for a lock: %s did not answer; failing over", ep.target)
                client.failover(ep)
                return
            if self._stopping or exc.code() in (
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
                with self._mutex:
                    self._waits.pop(call, None)

    def error(self, exc: grpc.RpcError, what: str, ep: _Endpoint | None = None) -> PyKVError:
        """Map a gRPC error to pykv's: the one place that does it."""
        code = exc.code()
        details = exc.details() or str(code)
        where = f"{what} on {self.name} (endpoint {(ep or self.endpoint()).target})"
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or any(
            text in details for text in _AUTH_TEXT
        ):
            return PermissionDeniedError(f"{where}: etcd refused the credentials: {details}")
        if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
            return _LeaseGoneError(f"{where}: {details}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return OperationTimeoutError(f"{where}: no answer within {self.timeout} s")
        if code == grpc.StatusCode.UNAVAILABLE:
            return UnavailableError(f"{where}: etcd is unavailable: {details}")
        return UnavailableError(f"{where}: etcd failed the call ({code.name}): {details}")

    def cancel_waits(self) -> None:
        """End every lock waiter's wait, and those to come (the store closes)."""
        self._stopping = True
        with self._mutex:
            waits = list(self._waits)
        for call in waits:
            call.cancel()

    def close(self) -> None:
        self._closed = True
        for ep in self._endpoints:
            ep.channel.close()


class _LeaseGoneError(UnavailableError):
    """etcd no longer knows a lease of the store (it expired or was revoked)."""


def _tls_credentials(options: EtcdOptions) -> grpc.ChannelCredentials:
    if not options.verify:
        raise ConfigurationError(
            "etcd:// stores cannot skip certificate verification (gRPC has no such switch); "
            "pass the server's CA bundle with ca=PATH"
        )

    def read(path: str | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the TLS {what} file {path!r}: {exc}") from exc

    if (options.cert is None) != (options.key is None):
        raise ConfigurationError("TLS client authentication needs both cert= and key=")
    return grpc.ssl_channel_credentials(
        root_certificates=read(options.ca, "CA"),
        private_key=read(options.key, "key"),
        certificate_chain=read(options.cert, "certificate"),
    )
