"""The Consul store: KV through /v1/kv and /v1/txn, TTL keys and locks through sessions."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, TypeVar

from pykv import (
    Capability,
    ConfigurationError,
    Host,
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
    KVPair,
    Lock,
    PermissionDeniedError,
    PyKVError,
    Store,
    StoreURL,
    TLSOptions,
    UnavailableError,
    Watch,
)
from pykv.kit import Created, TTLKeys

from ._catalog import CheckLike, EndpointLike, service_definition, ttl_check_id
from ._transport import SessionRejected, Transport, TxnFailed, b64, parse_duration
from ._watch import KeySub, Sub, TreeSub, WatchMux

__all__ = ["ConsulOptions", "ConsulStore"]

log = logging.getLogger("pykv.consul")

T = TypeVar("T")

DEFAULT_PORT = 8500
DEFAULT_TLS_PORT = 8501
#: Consul's largest session TTL (24 h).
MAX_SESSION_TTL = 86400.0
#: Longest ``wait`` of a blocking query (shorter when the store's timeout is). A query begun
#: just before its server is cut off from its peers runs its whole wait on the old data (the
#: server still thinks it leads), and the next one fails only after BLOCKING_SLACK: short
#: enough that a watch fails over and sees a change within 5 s of it.
MAX_WAIT = 2.0
_TTL_RANGE = re.compile(r"between \[([^=\]]+)=")


@dataclass(frozen=True)
class ConsulOptions(TLSOptions):
    """Options of consul:// stores (see the module documentation).

    token: ACL token, sent as the X-Consul-Token header. consistent: reads in Consul's
    ``consistent`` mode (the leader confirms it still leads) instead of ``default``.
    """

    token: str | None = None
    consistent: bool = False


@dataclass(eq=False)
class _Session:
    """A Consul session of this store: Behavior=delete, no lock-delay, no health checks."""

    id: str
    ttl: float  # Consul's session TTL; Consul invalidates it 2 * ttl after the last renewal
    purpose: str
    on_lost: Callable[[str], None]
    #: Locks stop trusting the session when renewals keep failing; TTL sessions keep trying.
    gives_up: bool
    last_ok: float = field(default_factory=time.monotonic)
    next_due: float = 0.0
    lost: bool = False

    def __post_init__(self) -> None:
        self.next_due = self.last_ok + self.ttl / 3


class ConsulStore(Store):
    """A pykv store on Consul's KV and session APIs. See :mod:`pykv_consul`."""

    schemes: ClassVar[tuple[str, ...]] = ("consul",)
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    options_class = ConsulOptions
    distribution: ClassVar[str] = "pykvstore-consul"
    #: Sessions are created with half the requested TTL, so Consul (which keeps a session up
    #: to twice its TTL) removes keys within the TTL; the slack covers timers and raft.
    ttl_slack: ClassVar[float] = 1.0
    options: ConsulOptions

    def __init__(self, url: StoreURL, options: ConsulOptions) -> None:
        super().__init__(url, options)
        if url.username is not None or url.password is not None:
            raise ConfigurationError(
                f"{url}: Consul takes an ACL token as ?token=..., not user:password@"
            )
        options.check_files(url)
        port = DEFAULT_TLS_PORT if options.tls else DEFAULT_PORT
        hosts = [h.with_default_port(port) for h in url.hosts] or [Host("127.0.0.1", port)]
        tls: dict[str, Any] = {}
        if options.tls:
            tls["cert_reqs"] = "CERT_REQUIRED" if options.verify else "CERT_NONE"
            tls["ca_certs"] = options.ca
            tls["cert_file"] = options.cert
            tls["key_file"] = options.key
            if not options.verify:
                tls["assert_hostname"] = False
        self._transport = Transport(
            str(self),
            hosts,
            scheme="https" if options.tls else "http",
            token=options.token,
            consistent=options.consistent,
            tls=tls,
            timeout=self.timeout,
        )
        self._wait = max(0.5, min(MAX_WAIT, self.timeout))
        # names this store's sessions in Consul (with the prefix), for operators and tests
        self._id = f"[{self.prefix or '/'} {uuid.uuid4().hex[:8]}]"
        self._mutex = threading.RLock()
        self._stop = threading.Event()
        # sessions: one per TTL value for TTL keys, one per held (or wanted) lock
        self._ttl_sessions: dict[float, _Session] = {}
        self._ttl_creating: dict[float, threading.Lock] = {}
        self._sessions: set[_Session] = set()
        self._session_ttl_min = 0.0  # learnt from the server when it refuses a shorter TTL
        # This store's TTL keys (Consul path -> (ttl, value)), written again when Consul
        # invalidates the session of their TTL while the store is open (see _recreate_loop).
        self._ttl_keys: TTLKeys[str, float] = TTLKeys(self._mutex)
        self._recreator: threading.Thread | None = None
        self._recreate_wake = threading.Event()
        self._renewer: threading.Thread | None = None
        self._renew_wake = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._watches: set[Watch[Any]] = set()
        self._locks: set[Lock] = set()
        # Agent services this store registered (id -> definition), to register again on an
        # agent that does not know them (failover, agent data lost, reaped while critical).
        # The lock serialises register / deregister / re-register so none resurrects a
        # service another has just removed.
        self._catalog: dict[str, dict[str, Any]] = {}
        self._catalog_lock = threading.Lock()
        self._mux = WatchMux(
            str(self),
            self._transport,
            wait=self._wait,
            give_up=max(30.0, 3 * self.timeout),
            stop=self._stop,
            start_thread=self._start_thread,
        )

    # -- helpers ----------------------------------------------------------------------------

    def _pair(self, key: str, entry: dict[str, Any]) -> KVPair:
        return KVPair(key, entry.get("Value") or b"", entry["ModifyIndex"])

    def _tree_base(self, prefix: str) -> str:
        """The Consul prefix of everything strictly below ``prefix`` ('' = the whole KV)."""
        base = self._path(prefix)
        return base + "/" if base else ""

    def _pairs(self, entries: list[dict[str, Any]] | None) -> list[KVPair]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        pairs = []
        for entry in entries or ():
            key = entry["Key"][strip:]
            # Folder markers ("dir/") and other paths pykv cannot name are not keys.
            if key and not key.endswith("/") and "//" not in key and not key.startswith("/"):
                pairs.append(self._pair(key, entry))
        pairs.sort(key=lambda p: p.key)
        return pairs

    def _read(self, key: str) -> tuple[int, KVPair | None]:
        path = self._path(key)
        index, entry = self._transport.kv_get(f"get {key!r}", path)
        return index, None if entry is None else self._pair(key, entry)

    # -- keys and values --------------------------------------------------------------------

    def _get(self, key: str) -> KVPair:
        pair = self._read(key)[1]
        if pair is None:
            raise KeyNotFoundError(f"{key!r} not found in {self}")
        return pair

    def _txn_write(
        self,
        what: str,
        key: str,
        guards: list[dict[str, Any]],
        value: bytes,
        ttl: float | None,
        *,
        results: bool = True,
    ) -> list[Any]:
        """``guards``, ``delete``, then the write, in one transaction; returns the results
        (when asked for).

        The ``delete`` does two things Consul's own writes do not: it frees a key a session
        holds (Consul keeps a held key's session on a plain write, so a plain write would
        leave a TTL key ephemeral), and it makes every write change the ModifyIndex (Consul
        skips a write whose value, flags and session are unchanged). A TTL write is a
        ``lock`` by the store's session for that TTL."""
        path = self._path(key)
        for attempt in (1, 2):
            ops = [*guards, {"Verb": "delete", "Key": path}]
            if ttl is None:
                ops.append({"Verb": "set", "Key": path, "Value": b64(value)})
            else:
                session = self._ttl_session(ttl)
                ops.append(
                    {"Verb": "lock", "Key": path, "Value": b64(value), "Session": session.id}
                )
            try:
                found = self._transport.txn(what, ops, idempotent=not guards, results=results)
            except TxnFailed as exc:
                if ttl is not None and attempt == 1 and _session_invalid(exc):
                    self._forget_ttl_session(ttl, "it was invalidated")
                    continue
                raise
            if ttl is None:
                self._ttl_keys.forget(path)
            else:
                self._ttl_keys.remember(ttl, path, value)
            return found
        raise AssertionError("unreachable")

    def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        try:
            self._txn_write(f"put {key!r}", key, [], value, ttl, results=False)
        except TxnFailed as exc:
            raise UnavailableError(f"put {key!r} on {self} failed: {exc}") from exc

    def _delete(self, key: str) -> None:
        path = self._path(key)
        # Forgotten before the delete is sent, so that a re-creation after the TTL session was
        # invalidated cannot outlive it (see _recreate).
        self._ttl_keys.forget(path)
        self._transport.kv_delete(f"delete {key!r}", path)

    def _list(self, prefix: str) -> list[KVPair]:
        base = self._tree_base(prefix)
        _, entries = self._transport.kv_get(f"list {prefix!r}", base, recurse=True)
        return self._pairs(entries)

    def _delete_tree(self, prefix: str) -> None:
        base = self._tree_base(prefix)
        ops: list[dict[str, Any]] = [{"Verb": "delete-tree", "Key": base}]
        if prefix:
            ops.insert(0, {"Verb": "delete", "Key": self._path(prefix)})
        # before the delete, as in _delete
        self._ttl_keys.forget_where(lambda p: p.startswith(base) or p == base[:-1])
        try:
            self._transport.txn(f"delete_tree {prefix!r}", ops, idempotent=True)
        except TxnFailed as exc:
            raise UnavailableError(f"delete_tree {prefix!r} on {self} failed: {exc}") from exc

    def _cas_failed(self, key: str, previous: KVPair | None, exc: TxnFailed) -> PyKVError:
        if previous is None:
            return KeyExistsError(f"{key!r} already exists in {self}")
        current = self._read(key)[1]
        if current is None:
            return KeyNotFoundError(f"{key!r} not found in {self}")
        if current.revision == previous.revision:  # not a revision conflict after all
            return UnavailableError(f"compare-and-swap of {key!r} on {self} failed: {exc}")
        return KeyModifiedError(
            f"{key!r} is at revision {current.revision}, not {previous.revision}, in {self}"
        )

    def _atomic_put(
        self, key: str, value: bytes, previous: KVPair | None, ttl: float | None
    ) -> KVPair:
        path = self._path(key)
        # check-index fails on a missing key too (delete-cas would not)
        guard: dict[str, Any] = (
            {"Verb": "check-not-exists", "Key": path}
            if previous is None
            else {"Verb": "check-index", "Key": path, "Index": previous.revision}
        )
        try:
            results = self._txn_write(f"atomic_put {key!r}", key, [guard], value, ttl)
        except TxnFailed as exc:
            if any(e.get("OpIndex") == 0 for e in exc.errors):
                raise self._cas_failed(key, previous, exc) from exc
            raise UnavailableError(f"atomic_put {key!r} on {self} failed: {exc}") from exc
        return KVPair(key, value, int(results[-1]["KV"]["ModifyIndex"]))

    def _atomic_delete(self, key: str, previous: KVPair) -> None:
        path = self._path(key)
        ops: list[dict[str, Any]] = [
            {"Verb": "check-index", "Key": path, "Index": previous.revision},
            {"Verb": "delete", "Key": path},
        ]
        # Forgotten before the delete is sent, as in _delete; remembered again if nothing
        # was deleted.
        tracked = self._ttl_keys.forget(path)
        try:
            try:
                self._transport.txn(f"atomic_delete {key!r}", ops, idempotent=False)
            except TxnFailed as exc:
                raise self._cas_failed(key, previous, exc) from exc
        except BaseException:
            self._ttl_keys.restore(path, tracked)
            raise

    # -- sessions ---------------------------------------------------------------------------

    def _create_session(
        self, purpose: str, ttl: float, on_lost: Callable[[str], None], *, gives_up: bool
    ) -> _Session:
        """A session whose holder's keys Consul deletes within ``ttl`` of the last renewal.

        Consul invalidates a session up to twice its TTL after the last renewal, so the session
        gets half the TTL, raised to the server's minimum (``session_ttl_min``) when needed.
        No health checks: the session must outlive the failure of the agent it was made on
        (failover to another agent keeps renewing it). No lock-delay: fencing tokens protect
        against a stale holder, and a dead holder's lock must be free within its TTL.
        """
        self._check_open()
        for _ in range(2):
            session_ttl = min(MAX_SESSION_TTL, max(ttl / 2, self._session_ttl_min))
            body = {
                "Name": f"pykv {purpose} {self._id}"[:256],
                "TTL": f"{max(1, round(session_ttl * 1000))}ms",
                "Behavior": "delete",
                "LockDelay": "0s",
                "Checks": [],
                "NodeChecks": [],
            }
            try:
                session_id = self._transport.create_session(f"create a session for {purpose}", body)
            except SessionRejected as exc:
                found = _TTL_RANGE.search(str(exc))
                if found is None or self._session_ttl_min:
                    raise
                self._session_ttl_min = parse_duration(found.group(1))
                log.warning(
                    "%s: the server's minimum session TTL is %g s; TTL keys and locks with a "
                    "TTL below %g s live up to %g s after their owner is gone",
                    self,
                    self._session_ttl_min,
                    2 * self._session_ttl_min,
                    2 * self._session_ttl_min,
                )
                continue
            session = _Session(session_id, session_ttl, purpose, on_lost, gives_up=gives_up)
            with self._mutex:
                if self._closed:
                    self._destroy(session)
                    self._check_open()
                self._sessions.add(session)
                self._ensure_renewer()
            self._renew_wake.set()
            return session
        raise AssertionError("unreachable")

    def _destroy(self, session: _Session) -> None:
        """Forget a session and destroy it (Consul deletes the keys it holds at once)."""
        with self._mutex:
            self._sessions.discard(session)
        self._transport.destroy_session(f"destroy the session of {session.purpose}", session.id)

    def _ttl_session(self, ttl: float) -> _Session:
        """The session of this store's TTL keys with ``ttl``, created on first use. Creating
        one is a request to Consul: it holds a lock of its TTL (so two writers do not create
        two), never the store's mutex, which every other call takes."""
        with self._mutex:
            session = self._ttl_sessions.get(ttl)
            if session is not None and not session.lost:
                return session
            creating = self._ttl_creating.setdefault(ttl, threading.Lock())
        with creating:
            with self._mutex:
                session = self._ttl_sessions.get(ttl)
            if session is not None and not session.lost:
                return session  # another writer created it meanwhile

            def lost(reason: str, ttl: float = ttl) -> None:
                self._forget_ttl_session(ttl, reason)

            session = self._create_session(
                f"TTL keys ({ttl:g} s) of {self}", ttl, lost, gives_up=False
            )
            with self._mutex:
                self._ttl_sessions[ttl] = session
            return session

    def _forget_ttl_session(self, ttl: float, reason: str) -> None:
        with self._mutex:
            session = self._ttl_sessions.pop(ttl, None)
            if session is not None:
                session.lost = True
                self._sessions.discard(session)
                lost = self._ttl_keys.lose(ttl)
                if lost and not self._closed:
                    self._ensure_recreator()
                    self._recreate_wake.set()
        if session is not None:
            log.warning(
                "%s: the session of TTL keys (%g s) ended (%s); Consul deleted its keys; "
                "writing them again",
                self,
                ttl,
                reason,
            )

    def _ensure_recreator(self) -> None:
        """Called with ``_mutex`` held."""
        if self._recreator is None:
            self._recreator = threading.Thread(
                target=self._recreate_loop, name=f"pykv-consul-recreate {self}", daemon=True
            )
            self._recreator.start()

    def _recreate_loop(self) -> None:
        """Writes the TTL keys of an invalidated session again (with a new session), unless
        someone wrote them meanwhile; retries every 0.5 s while Consul cannot be reached."""
        while not self._stop.is_set():
            self._recreate_wake.wait(1.0)
            self._recreate_wake.clear()
            while not self._stop.is_set():
                try:
                    if not self._recreate():
                        break
                except PyKVError as exc:
                    log.info("%s: could not write a TTL key again (%s); retrying", self, exc)
                    self._stop.wait(0.5)
                except Exception:  # the thread must outlive any surprise
                    log.exception("%s: writing a TTL key again failed", self)
                    self._stop.wait(0.5)

    def _recreate(self) -> bool:
        """Write again (or undo re-creations of) the TTL keys of lost sessions; False when
        nothing is left."""
        groups = self._ttl_keys.lost_groups()
        for ttl in groups:
            self._ttl_keys.recreate(ttl, partial(self._create, ttl=ttl), self._delete_at)
        return bool(groups)

    def _create(self, path: str, value: bytes, ttl: float) -> Created:
        """Write the TTL key ``path`` if it is absent, on the session of ``ttl``."""
        session = self._ttl_session(ttl)
        ops = [
            {"Verb": "check-not-exists", "Key": path},
            {"Verb": "lock", "Key": path, "Value": b64(value), "Session": session.id},
        ]
        try:
            results = self._transport.txn(f"re-create TTL key {path!r}", ops, idempotent=False)
        except TxnFailed as exc:
            if _session_invalid(exc):
                self._forget_ttl_session(ttl, "it was invalidated")
                raise UnavailableError(f"re-create {path!r} on {self}: {exc}") from exc
            # The key exists: written by this store meanwhile (keep it), or by another client
            # (theirs wins).
            _, current = self._transport.kv_get(f"get {path!r}", path)
            return Created(False, ours=current is not None and current.get("Session") == session.id)
        return Created(True, int(results[-1]["KV"]["ModifyIndex"]))

    def _delete_at(self, path: str, index: int) -> None:
        """Delete ``path`` unless it was written since ``index`` (undo a re-creation)."""
        ops = [{"Verb": "delete-cas", "Key": path, "Index": index}]
        with contextlib.suppress(TxnFailed):  # written again since: not ours to delete
            self._transport.txn(f"undo the re-creation of {path!r}", ops, idempotent=True)

    def _ensure_renewer(self) -> None:
        if self._renewer is None:
            self._renewer = threading.Thread(
                target=self._renew_loop, name=f"pykv-consul-renew {self}", daemon=True
            )
            self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.is_set():
            with self._mutex:
                sessions = list(self._sessions)
            now = time.monotonic()
            due = min((s.next_due for s in sessions), default=now + 1.0)
            if due > now:
                self._renew_wake.wait(due - now)
                self._renew_wake.clear()
                continue
            for session in sessions:
                if self._stop.is_set():
                    return
                if session.next_due <= time.monotonic() and session in self._sessions:
                    try:
                        self._renew(session)
                    except Exception:  # the renewer must outlive any surprise
                        log.exception("%s: renewing %s failed", self, session.purpose)
                        session.next_due = time.monotonic() + session.ttl / 6

    def _renew(self, session: _Session) -> None:
        started = time.monotonic()
        try:
            alive = self._transport.renew_session(
                f"renew the session of {session.purpose}",
                session.id,
                timeout=min(self.timeout, max(0.2, session.ttl / 3)),
            )
        except PyKVError as exc:
            silent = time.monotonic() - session.last_ok
            session.next_due = time.monotonic() + min(session.ttl / 6, 0.5)
            # Consul invalidates the session 2 * ttl after the last renewal it saw: stop trusting
            # a lock well before that, so `lost` is set before another client can acquire.
            if session.gives_up and silent > 1.5 * session.ttl:
                self._lose(session, f"no renewal succeeded for {silent:.1f} s ({exc})")
            else:
                log.info("%s: renewing %s failed (%s); retrying", self, session.purpose, exc)
            return
        if alive:
            session.last_ok = started
            session.next_due = started + session.ttl / 3
        else:
            self._lose(session, "Consul invalidated its session")

    def _lose(self, session: _Session, reason: str) -> None:
        with self._mutex:
            self._sessions.discard(session)
            session.lost = True
        try:
            session.on_lost(reason)
        except Exception:
            log.exception("%s: handling the loss of %s failed", self, session.purpose)

    # -- watches ----------------------------------------------------------------------------

    def _start_thread(self, name: str, target: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                target()
            finally:
                with self._mutex:
                    self._threads.discard(thread)

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._mutex:
            self._check_open()
            self._threads.add(thread)
        thread.start()
        return thread

    def _poll(
        self,
        what: str,
        path: str,
        index: int,
        on_change: Callable[[Any], bool],
        stop: threading.Event,
        on_error: Callable[[PyKVError], None],
    ) -> None:
        """Blocking queries on ``path`` from ``index`` until ``stop`` (a held lock's watch of
        its key, on the store's connections); ``on_change(entry)`` after each answer returns
        False to end. Errors are retried with back-off (the watch survives agent failures and
        leader elections) until nothing succeeded for the give-up time."""
        give_up = max(30.0, 3 * self.timeout)
        index = max(1, index)  # index 0 would make a query that does not block
        failing_since: float | None = None
        backoff = 0.05
        try:
            while not stop.is_set() and not self._stop.is_set():
                try:
                    new_index, data = self._transport.kv_get(
                        what, path, index=index, wait=self._wait
                    )
                except PermissionDeniedError as exc:
                    on_error(exc)
                    return
                except PyKVError as exc:
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > give_up:
                        on_error(exc)
                        return
                    log.info("%s: %s (retrying in %.2f s)", self, exc, backoff)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                failing_since, backoff = None, 0.05
                if stop.is_set():
                    return
                index = max(1, new_index)  # see _watch.Poller.run
                if not on_change(data):
                    return
        except Exception as exc:  # never end silently: the consumer gets the error
            log.exception("%s: %s failed", self, what)
            on_error(UnavailableError(f"{what} on {self} failed: {exc!r}"))

    def _changed_since(self, key: str, since: int, *, tree: bool) -> bool | None:
        # A single-key read answers with the index of the whole KV store, deletions included:
        # at or below `since`, nothing changed anywhere. A prefix's own index forgets
        # deletions once Consul reaps their tombstones, so it cannot prove a tree unchanged.
        index = self._read(key or "pykv-since-probe")[0]
        return False if index <= since else None

    def _watch(self, key: str) -> Watch[KVPair | None]:
        path = self._path(key)
        index, current = self._read(key)
        return self._serve(
            f"watch({key!r}) on {self}",
            lambda watch: KeySub(watch, key, path, current, index),
            tree=False,
        )

    def _watch_tree(self, prefix: str) -> Watch[list[KVPair]]:
        base = self._tree_base(prefix)
        index, entries = self._transport.kv_get(f"watch_tree {prefix!r}", base, recurse=True)
        return self._serve(
            f"watch_tree({prefix!r}) on {self}",
            lambda watch: TreeSub(watch, base, self._pairs(entries), index, self._pairs),
            tree=True,
        )

    def _serve(self, what: str, subscribe: Callable[[Watch[T]], Sub], *, tree: bool) -> Watch[T]:
        """A watch that emits its first event and is then served by a poller (``_watch``)."""
        subs: list[Sub] = []

        def closed() -> None:
            for sub in subs:
                self._mux.leave(sub, tree=tree)
            with self._mutex:
                self._watches.discard(watch)

        watch: Watch[T] = Watch(what, on_close=closed)
        subs.append(subscribe(watch))
        with self._mutex:
            self._check_open()
            self._watches.add(watch)
        try:
            self._mux.join(subs[0], tree=tree)
        except BaseException:
            watch.close()
            raise
        return watch

    # -- agent services (pykv.discovery.CatalogPublisher) ----------------------------------

    def catalog_register(
        self,
        endpoint: EndpointLike,
        *,
        ttl: float,
        checks: Sequence[CheckLike] = (),
        deregister_critical_after: float | None = None,
    ) -> None:
        """Register (or update) ``endpoint`` as a service of the current agent, with a passing
        TTL check (``service:<id>:ttl``) and ``checks``; checks it no longer has are removed."""
        definition = service_definition(
            endpoint, ttl=ttl, checks=checks, deregister_critical_after=deregister_critical_after
        )
        self._check_open()
        with self._catalog_lock:
            self._agent_register(f"register catalog service {endpoint.id!r}", definition)
            self._catalog[endpoint.id] = definition

    def catalog_deregister(self, endpoint_id: str) -> None:
        """Deregister the agent service ``endpoint_id`` (and its checks); unknown: no-op."""
        self._check_open()
        with self._catalog_lock:
            self._catalog.pop(endpoint_id, None)
            self._transport.agent_put(
                f"deregister catalog service {endpoint_id!r}",
                f"/v1/agent/service/deregister/{endpoint_id}",
            )

    def catalog_pass_ttl(self, endpoint_id: str) -> None:
        """Pass the TTL check of ``endpoint_id``. When the agent does not know it (a failover
        to another agent, or Consul reaped it while critical) and this store registered it,
        register it again, passing; else :class:`~pykv.KeyNotFoundError`."""
        self._check_open()
        what = f"pass the TTL check of catalog service {endpoint_id!r}"
        if self._transport.agent_put(what, f"/v1/agent/check/pass/{ttl_check_id(endpoint_id)}"):
            return
        with self._catalog_lock:
            definition = self._catalog.get(endpoint_id)
            if definition is None:
                raise KeyNotFoundError(
                    f"{what}: the agent has no such check, and {self} did not register the service"
                )
            log.info(
                "%s: the agent lost catalog service %r; registering it again", self, endpoint_id
            )
            self._agent_register(what, definition)

    def _agent_register(self, what: str, definition: dict[str, Any]) -> None:
        # replace-existing-checks: checks the definition no longer has are removed.
        self._transport.agent_put(
            what,
            "/v1/agent/service/register",
            definition,
            query="?replace-existing-checks=true",
        )

    # -- locks and closing ------------------------------------------------------------------

    def _lock(self, key: str, value: bytes, ttl: float) -> Lock:
        from ._lock import ConsulLock

        return ConsulLock(self, key, value, ttl)

    def _close(self) -> None:
        # On the first failure to reach Consul the rest is left to expire (see
        # Store._release_for_close), so close() takes about one timeout at worst.
        reachable = self._release_for_close(list(self._locks), "Consul")
        with self._mutex:
            sessions = list(self._sessions)
            self._ttl_sessions.clear()
            self._ttl_keys.clear()
        try:
            for session in sessions:  # Consul deletes the TTL keys and lock keys they hold
                if not reachable:
                    log.warning(
                        "%s: close: Consul could not be reached; it removes the keys of %d "
                        "sessions within their TTL",
                        self,
                        len(sessions),
                    )
                    break
                try:
                    self._destroy(session)
                except PyKVError as exc:
                    reachable = not isinstance(exc, UnavailableError)
                    log.warning(
                        "%s: could not destroy the session of %s (%s); Consul removes its keys "
                        "within its TTL",
                        self,
                        session.purpose,
                        exc,
                    )
        finally:
            self._stop.set()
            self._renew_wake.set()
            self._recreate_wake.set()
            with self._mutex:
                watches = list(self._watches)
            for watch in watches:
                watch.close()
            with self._mutex:
                threads = list(self._threads)
                threads += [self._renewer] if self._renewer is not None else []
                threads += [self._recreator] if self._recreator is not None else []
            # Watch threads end when their blocking query returns (<= MAX_WAIT s); a short
            # join keeps close() quick, and the threads are daemons.
            deadline = time.monotonic() + 1.0
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join(timeout=max(0.0, deadline - time.monotonic()))
            self._transport.close()


def _session_invalid(exc: TxnFailed) -> bool:
    return "invalid session" in str(exc).lower()
