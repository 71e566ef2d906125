"""The registrar's engine: Docker events in, store writes out, never losing track.

Threads
    * ``engine``: connects to Docker (tenacity backoff while it is away), subscribes to container
      events *first*, then asks for a reconciliation, then reads the stream and routes every
      event to the worker of its container. When the stream breaks it reconnects and resumes
      with ``since`` = the last event's time.
    * ``worker-N``: one queue each; a container always goes to the same worker, so its events
      are handled in order. Handling is level-triggered: inspect the container, compute the
      endpoints it should have (:mod:`.model`), write the difference.
    * ``reconciler``: on (re)connect, on ``--resync`` and after the store comes back: queues a
      sync of every running or known container through the workers (so a sync never overtakes
      an event), waits for them, then diffs this node's entries in the store against what
      should be there and writes only the difference. One TTL after the store came back it
      diffs the store once more (an entry written under a dying session or lease may vanish).
    * ``ticker``: pings Docker (a silent dead stream is closed and reconnected), requests the
      periodic resync, and passes Consul catalog TTL checks.

    Every thread runs supervised: an unexpected exception is logged with its traceback,
    counted (``errors_total{kind="thread"}``), shown by ``/healthz`` (503 while the thread is
    down), and the thread is restarted after a backoff, followed by a full reconciliation.

Hostile or careless input
    A container whose labels make no valid entry (see the bounds in :mod:`.model`) is skipped:
    one log line naming it and the reason, ``skipped_total{what="container"}``, and nothing
    else changes. An entry the store refuses (an invalid key) is skipped the same way
    (``what="entry"``), never taken for a store outage. Malformed values found under the prefix
    are skipped, counted (``what="malformed"``) and logged once each.

Writes
    ``_written`` is what this process believes the store holds (key -> JSON). A worker writes a
    key only when its target differs. When the store fails (unavailable, time-out) the registrar
    marks itself dirty: workers keep updating the desired state without writing, and the
    reconciler retries with backoff, then rewrites every desired entry (TTL keys may have
    expired meanwhile) and deletes every key it wrote that should be gone, listed or not (the
    store may write its expired TTL keys again itself once it is back).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import docker
import docker.errors
import requests
import tenacity

from .._errors import (
    InvalidKeyError,
    KeyNotFoundError,
    OperationTimeoutError,
    PyKVError,
    UnavailableError,
)
from .._store import Store
from ..discovery import CatalogCheck, CatalogPublisher, Endpoint, MalformedEntries
from .model import ModelSettings, container_endpoints, container_state, evaluate
from .observe import Metrics
from .settings import Settings, parse_duration

__all__ = ["Registrar", "default_host_ip", "exponential_backoff"]

log = logging.getLogger("pykv.registrar")

#: Container events that can change what is published; others (exec_*, attach, ...) are skipped.
ACTIONS = frozenset(
    {"start", "die", "stop", "kill", "pause", "unpause", "health_status", "rename", "destroy"}
)
_ENGINE_ERRORS: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    OSError,
    ValueError,  # a truncated JSON chunk when the connection dies mid-event
)
_STORE_DOWN = (UnavailableError, OperationTimeoutError)
#: Errors about one entry, not about the store: that entry is skipped, the rest goes on.
_ENTRY_REFUSED = (InvalidKeyError,)


def default_host_ip() -> str:
    """This host's primary address: the source address of the default route.

    A UDP socket's connect() only picks a route; nothing is sent.
    """
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                return str(s.getsockname()[0])
        except OSError:
            continue
    return "127.0.0.1"


class _Barrier:
    def __init__(self, count: int) -> None:
        self._left = count
        self._cond = threading.Condition()

    def done(self) -> None:
        with self._cond:
            self._left -= 1
            self._cond.notify_all()

    def wait(self, stop: threading.Event, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._left > 0 and not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
            return self._left <= 0


class Registrar:
    """Publishes the containers of one Docker engine into ``store``. See the module docs.

    ``docker_factory`` returns a new client (one per connection); by default one built from
    ``settings.docker_host`` / the environment. The store is not closed by the registrar.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        metrics: Metrics | None = None,
        docker_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or Metrics()
        self._factory = docker_factory or self._default_factory
        self._ttl: float | None = settings.ttl if settings.ttl > 0 else None
        self._prefix = settings.prefix.strip("/")
        self._catalog: CatalogPublisher | None = None
        if settings.consul_catalog:
            if not isinstance(store, CatalogPublisher):
                raise PyKVError(
                    f"--consul-catalog needs a store with a service catalog (Consul); "
                    f"{store} has none"
                )
            self._catalog = store
        self._stop = threading.Event()
        self._state = threading.RLock()  # guards the dicts below
        self._write = threading.RLock()  # serialises store writes
        self._model: ModelSettings | None = None
        self._desired: dict[str, dict[str, Endpoint]] = {}  # container id -> key -> endpoint
        self._owners: dict[str, dict[str, Endpoint]] = {}  # key -> container id -> endpoint
        self._written: dict[str, str] = {}  # key -> JSON this process wrote
        self._dirty = False  # the store failed: the reconciler must rewrite everything
        self._verify_at = 0.0  # when to check the store once more after it came back
        self._store_error = ""
        self._client: Any = None
        self._stream: Any = None
        self._since: str | None = None
        self._connected = threading.Event()
        self._ready = threading.Event()  # first reconciliation done
        self._reconcile_wanted = threading.Event()
        self._docker_reconcile = False
        self._queues: list[queue.SimpleQueue[tuple[str, Any]]] = [
            queue.SimpleQueue() for _ in range(settings.workers)
        ]
        self._threads: list[threading.Thread] = []
        self._down: dict[str, str] = {}  # thread name -> the error it is restarting after
        self._restarts = 0
        self._complaints: dict[str, str] = {}  # container id -> what was last logged about it
        self._refused: dict[str, str] = {}  # key -> the target the store refused
        self._malformed = MalformedEntries(log)

    # -- life cycle -------------------------------------------------------------------------

    def _default_factory(self) -> Any:
        if self.settings.docker_host:
            return docker.DockerClient(base_url=self.settings.docker_host, timeout=10)
        return docker.from_env(timeout=10)

    def start(self) -> None:
        """Start the threads and return at once."""
        targets: list[tuple[str, Callable[[], None]]] = [
            ("engine", self._engine_loop),
            ("reconciler", self._reconcile_loop),
            ("ticker", self._tick_loop),
        ]
        for n, q in enumerate(self._queues):
            targets.append((f"worker-{n}", lambda q=q: self._worker_loop(q)))  # type: ignore[misc]
        for name, target in targets:
            thread = threading.Thread(
                target=self._supervised, args=(name, target), name=f"pykv-registrar-{name}",
                daemon=True,
            )  # fmt: skip
            thread.start()
            self._threads.append(thread)

    def _supervised(self, name: str, target: Callable[[], None]) -> None:
        """Run ``target`` until it returns (it does when stopping); restart it after a crash."""
        backoff = exponential_backoff(0.5, self.settings.max_backoff)
        failures = 0
        while not self._stop.is_set():
            try:
                target()
                return
            except Exception as exc:
                failures += 1
                self.metrics.errors.labels("thread").inc()
                with self._state:
                    self._down[name] = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("thread %s failed; restarting it", name)
            self._stop.wait(_backoff_seconds(backoff, failures))
            with self._state:
                self._down.pop(name, None)
                self._restarts += 1
            self._request_reconcile(docker_too=True)  # whatever it was doing is redone

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once connected and the first reconciliation is done."""
        return self._ready.wait(timeout)

    def run(self) -> None:
        """Start and block until :meth:`stop` (e.g. from a SIGTERM handler)."""
        self.start()
        self._stop.wait()
        self.shutdown()

    def stop(self) -> None:
        """Ask every thread to stop (safe from a signal handler)."""
        self._stop.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop, join the threads, and withdraw this node's entries if configured to."""
        self._stop.set()
        self._close_stream()
        for q in self._queues:
            q.put(("", None))
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        if self.settings.deregister_on_exit:
            self.deregister_all()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()

    def deregister_all(self) -> None:
        """Withdraw every entry of this node from the store (and the catalog)."""
        with self._write:
            keys = set(self._written)
            with contextlib.suppress(PyKVError):
                keys |= set(self._node_entries())
            for key in sorted(keys):
                try:
                    self._delete(key)
                except PyKVError as exc:
                    log.error("could not withdraw %s: %s", key, exc)
            self._written.clear()
            self.metrics.published.set(0)
        log.info("withdrew %d entries of node %s", len(keys), self.node)

    # -- status -----------------------------------------------------------------------------

    @property
    def node(self) -> str:
        return self._model.node if self._model else self.settings.node

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ok, detail) for ``/healthz``: ok when connected to Docker, the store writable, the
        first reconciliation done and no thread down. Skipped containers do not count."""
        connected = self._connected.is_set()
        with self._state:
            down = dict(self._down)
            skipped = sum(1 for text in self._complaints.values() if text.startswith("skipped"))
        detail: dict[str, Any] = {
            "docker": "connected" if connected else "disconnected",
            "store": "error: " + self._store_error if self._dirty else "ok",
            "node": self.node,
            "published": len(self._written),
            "skipped_containers": skipped,
            "thread_restarts": self._restarts,
        }
        if down:
            detail["threads_down"] = down
        ok = connected and not self._dirty and self._ready.is_set() and not down
        return ok, detail

    def published(self) -> dict[str, Endpoint]:
        """What this registrar wants in the store now (key -> endpoint)."""
        with self._state:
            return {k: next(iter(v.values())) for k, v in self._owners.items() if v}

    # -- engine connection ------------------------------------------------------------------

    def _close_stream(self) -> None:
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def _connect(self) -> Iterator[dict[str, Any]]:
        client = self._factory()
        try:
            client.ping()
            if self._model is None:
                info = client.info()
                node = self.settings.node or str(info.get("Name") or socket.gethostname())
                ip = self.settings.ip or default_host_ip()
                self._model = ModelSettings(
                    node=node,
                    ip=ip,
                    ip_override=bool(self.settings.ip),
                    internal=self.settings.internal,
                    network=self.settings.network,
                    explicit=self.settings.explicit,
                    tags=self.settings.tags,
                    ip_label=self.settings.use_ip_from_label,
                )
            # Subscribe before listing containers, so that no start between the two is missed.
            stream = client.api.events(
                since=self._since, filters={"type": ["container"]}, decode=True
            )
        except BaseException:
            with contextlib.suppress(Exception):
                client.close()
            raise
        old, self._client, self._stream = self._client, client, stream
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()
        if self._stop.is_set():  # shutdown() may have closed the previous stream meanwhile
            self._close_stream()
        self._connected.set()
        self._request_reconcile(docker_too=True)
        log.info("connected to Docker as node %s; events since %s", self.node, self._since)
        return stream  # type: ignore[no-any-return]

    def _engine_loop(self) -> None:
        while not self._stop.is_set():
            retrying = tenacity.Retrying(
                wait=exponential_backoff(0.2, self.settings.max_backoff),
                retry=tenacity.retry_if_exception_type(_ENGINE_ERRORS),
                stop=tenacity.stop_when_event_set(self._stop),
                sleep=self._sleep,
                before_sleep=self._log_engine_retry,
                reraise=True,
            )
            try:
                stream = retrying(self._connect)
            except _ENGINE_ERRORS:
                break  # only when stopping
            try:
                for event in stream:
                    if self._stop.is_set():
                        break
                    self._route(event)
            except _ENGINE_ERRORS as exc:
                if not self._stop.is_set():
                    self.metrics.errors.labels("docker").inc()
                    log.warning("Docker event stream broke: %s", exc)
            finally:
                self._connected.clear()
                self._close_stream()
            if not self._stop.is_set():
                log.warning("Docker event stream ended; reconnecting")
                self._stop.wait(0.1)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _log_engine_retry(self, state: tenacity.RetryCallState) -> None:
        self.metrics.errors.labels("docker").inc()
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        log.warning("Docker unreachable (%s); retrying in %.1f s", exc, wait)

    def _route(self, event: dict[str, Any]) -> None:
        time_nano = event.get("timeNano")
        if isinstance(time_nano, int):
            self._since = f"{time_nano // 1_000_000_000}.{time_nano % 1_000_000_000:09d}"
        action = str(event.get("Action") or event.get("status") or "")
        base = action.split(":", 1)[0]
        if base not in ACTIONS:
            return
        self.metrics.events.labels(base).inc()
        cid = str((event.get("Actor") or {}).get("ID") or event.get("id") or "")
        if cid:
            log.debug("event %s %s", action, cid[:12])
            self._queue_of(cid).put(("sync", cid))

    def _queue_of(self, cid: str) -> queue.SimpleQueue[tuple[str, Any]]:
        return self._queues[int(cid[:8], 16) % len(self._queues) if _is_hex(cid[:8]) else 0]

    # -- per-container handling -------------------------------------------------------------

    def _worker_loop(self, q: queue.SimpleQueue[tuple[str, Any]]) -> None:
        while not self._stop.is_set():
            kind, arg = q.get()
            if kind == "sync":
                try:
                    self._sync_container(arg)
                except Exception:  # a bug must not kill the worker
                    log.exception("handling container %s failed", arg[:12])
            elif kind == "barrier":
                arg.done()
            else:
                return

    def _sync_container(self, cid: str) -> None:
        client, model = self._client, self._model
        if client is None or model is None:
            return
        try:
            info: dict[str, Any] | None = client.api.inspect_container(cid)
        except docker.errors.NotFound:
            info = None
        except _ENGINE_ERRORS as exc:
            # A full reconciliation covers this container: now if the engine still answers,
            # else after the reconnection.
            self.metrics.errors.labels("docker").inc()
            log.warning("cannot inspect %s: %s", cid[:12], exc)
            self._request_reconcile(docker_too=True)
            return
        endpoints = self._evaluate(cid, info, model) if info is not None else []
        with self._state:
            if info is None:
                self._complaints.pop(cid, None)
            previous = self._desired.get(cid, {})
            if not endpoints and info is not None and self._keep_stopped(info):
                return  # --deregister on-success: a failed container stays published
            new = {e.key(self._prefix): e for e in endpoints}
            if new == previous:
                return
            self._set_desired(cid, new)
        if info is not None and new:
            log.info(
                "container %s (%s): %d endpoint(s)",
                info.get("Name", "").lstrip("/"),
                cid[:12],
                len(new),
            )
        elif previous:
            log.info("container %s: withdrawn (%s)", cid[:12], _why(info))
        self._flush(set(previous) | set(new))

    def _evaluate(self, cid: str, info: dict[str, Any], model: ModelSettings) -> list[Endpoint]:
        """The container's endpoints; a refusal or a cut is logged (and counted) once."""
        result = evaluate(info, model)
        complaint = ""
        if result.refused:
            complaint = f"skipped: {result.refused}"
        elif result.cuts:
            complaint = f"published with labels cut: {'; '.join(result.cuts)}"
        with self._state:
            if self._complaints.get(cid, "") == complaint:
                return result.endpoints
            if complaint:
                self._complaints[cid] = complaint
            else:
                self._complaints.pop(cid, None)
        if complaint:
            name = str(info.get("Name") or "").lstrip("/")[:100]
            if result.refused:
                self.metrics.skipped.labels("container").inc()
            else:
                self.metrics.cut.inc()
            log.warning(
                "container %s (%s) %s", name, cid[:12], complaint,
                extra={"container": name, "container_id": cid},
            )  # fmt: skip
        return result.endpoints

    def _keep_stopped(self, info: dict[str, Any]) -> bool:
        state = info.get("State") or {}
        return (
            self.settings.deregister == "on-success"
            and container_state(info) == "stopped"
            and not state.get("Restarting")
            and int(state.get("ExitCode") or 0) != 0
        )

    def _set_desired(self, cid: str, new: dict[str, Endpoint]) -> None:
        """Called with ``_state`` held."""
        for key in self._desired.get(cid, {}):
            owners = self._owners.get(key)
            if owners is not None:
                owners.pop(cid, None)
                if not owners:
                    del self._owners[key]
        if new:
            self._desired[cid] = new
            for key, endpoint in new.items():
                self._owners.setdefault(key, {})[cid] = endpoint
        else:
            self._desired.pop(cid, None)

    def _target(self, key: str) -> str | None:
        with self._state:
            owners = self._owners.get(key)
            if not owners:
                return None
            # Two containers want one key only for an instant (a name reused after a destroy
            # whose event is not handled yet): the newest container id order is arbitrary, so
            # pick deterministically.
            return owners[max(owners)].to_json()

    # -- store writes -----------------------------------------------------------------------

    def _timed(self, op: str) -> contextlib.AbstractContextManager[None]:
        return _Timer(self.metrics.store_latency.labels(op))

    def _put(self, key: str, value: str) -> None:
        with self._timed("put"):
            self.store.put(key, value, ttl=self._ttl)
        self.metrics.writes.labels("put").inc()
        if self._catalog is not None:
            endpoint = Endpoint.from_json(value)
            self._catalog.catalog_register(
                endpoint,
                ttl=self._ttl or self.settings.deregister_critical_after,
                checks=_checks(endpoint),
                deregister_critical_after=self.settings.deregister_critical_after,
            )

    def _delete(self, key: str) -> None:
        with self._timed("delete"):
            self.store.delete(key)
        self.metrics.writes.labels("delete").inc()
        if self._catalog is not None:
            self._catalog.catalog_deregister(key.rsplit("/", 1)[-1])

    def _flush(self, keys: Iterable[str]) -> None:
        with self._write:
            if self._dirty:
                return  # the reconciler rewrites everything once the store is back
            for key in sorted(keys):
                target = self._target(key)
                if target == self._written.get(key):
                    continue
                try:
                    if target is None:
                        self._delete(key)
                        self._written.pop(key, None)
                    else:
                        self._write_entry(key, target)
                except _STORE_DOWN as exc:
                    self._mark_dirty(exc)
                    return
                except PyKVError as exc:
                    self.metrics.errors.labels("store").inc()
                    log.error("store write of %s failed: %s", key[:300], exc)
            self.metrics.published.set(len(self._written))

    def _write_entry(self, key: str, target: str) -> bool:
        """Put ``target`` at ``key``; False when the store refuses that entry (logged once,
        counted), which is not a store failure. Store outages raise."""
        try:
            self._put(key, target)
        except _ENTRY_REFUSED as exc:
            self._written.pop(key, None)
            if self._refused.get(key) != target:
                self._refused[key] = target
                self.metrics.skipped.labels("entry").inc()
                log.warning("the store refused the entry %s: %s", key[:200], exc)
            return False
        self._refused.pop(key, None)
        self._written[key] = target
        return True

    def _mark_dirty(self, exc: BaseException) -> None:
        self.metrics.errors.labels("store").inc()
        if not self._dirty:
            log.warning("store unavailable (%s); will retry and catch up", exc)
        self._dirty = True
        self._store_error = str(exc)
        self._request_reconcile(docker_too=False)

    def _node_entries(self) -> dict[str, str]:
        """This node's entries in the store now (key -> JSON)."""
        try:
            with self._timed("list"):
                pairs = self.store.list(self._prefix)
        except KeyNotFoundError:
            return {}
        entries = {}
        for pair in pairs:
            try:
                endpoint = Endpoint.from_json(pair.value)
            except ValueError as exc:
                if self._malformed.note(pair, exc):
                    self.metrics.skipped.labels("malformed").inc()
                continue
            if endpoint.node == self.node:
                key = (
                    f"{self._prefix}/{pair.key[len(self._prefix) + 1 :]}"
                    if self._prefix
                    else (pair.key)
                )
                entries[key] = pair.value.decode("utf-8", "replace")
        return entries

    def _adopt_failed(self, entries: dict[str, str]) -> None:
        """--deregister on-success after a restart: keep the entries of failed containers."""
        client = self._client
        if self.settings.deregister != "on-success" or client is None:
            return
        by_container: dict[str, dict[str, Endpoint]] = {}
        for key, value in entries.items():
            with contextlib.suppress(ValueError):
                endpoint = Endpoint.from_json(value)
                if endpoint.container_id:
                    by_container.setdefault(endpoint.container_id, {})[key] = endpoint
        for cid, endpoints in by_container.items():
            with self._state:
                if cid in self._desired:
                    continue
            try:
                info = client.api.inspect_container(cid)
            except docker.errors.NotFound:
                continue
            if container_endpoints(info, self._model) if self._model else []:
                continue
            if self._keep_stopped(info):
                with self._state:
                    if cid not in self._desired:
                        self._set_desired(cid, endpoints)

    def _store_sync(self, force: bool) -> None:
        """Make this node's entries in the store exactly what should be there."""
        with self._write:
            present = self._node_entries()
            if force:
                self._adopt_failed(present)
            with self._state:
                targets = {k: self._target(k) for k in self._owners}
            writes = deletes = 0
            for key, value in sorted(targets.items()):
                if value is None:
                    continue
                if self._refused.get(key) == value:
                    continue  # refused before; the store's rules did not change
                if force or present.get(key) != value or self._written.get(key) != value:
                    if not self._write_entry(key, value):
                        continue
                    writes += 1
                self._written[key] = value
            for key in list(self._refused):
                if targets.get(key) is None:
                    del self._refused[key]
            for key in sorted(set(present) | set(self._written)):
                if key in targets:
                    continue
                if key in self._written or self.settings.cleanup:
                    # A key this process wrote is deleted even when the listing missed it: a
                    # TTL key that expired during a store outage may be written again by the
                    # store (a new lease or session) right after the listing, and only the
                    # delete tells the store it is no longer wanted.
                    if key in present or key in self._written:
                        self._delete(key)
                        deletes += 1
                    self._written.pop(key, None)
            self._dirty = False
            self._store_error = ""
            self.metrics.published.set(len(self._written))
            if writes or deletes:
                log.info("store reconciled: %d written, %d removed", writes, deletes)

    # -- reconciliation ---------------------------------------------------------------------

    def _request_reconcile(self, docker_too: bool) -> None:
        if docker_too:
            self._docker_reconcile = True
        self._reconcile_wanted.set()

    def reconcile(self) -> None:
        """Ask for a full reconciliation now (what ``--resync`` does periodically)."""
        self._request_reconcile(docker_too=True)

    def _reconcile_loop(self) -> None:
        first = True
        failures = 0
        last_docker = 0.0
        backoff = exponential_backoff(0.2, self.settings.max_backoff)
        while not self._stop.is_set():
            if not self._reconcile_wanted.wait(0.5):
                continue
            self._reconcile_wanted.clear()
            docker_too, self._docker_reconcile = self._docker_reconcile, False
            if docker_too:
                # At most one Docker pass a second, however many ask (inspect errors do).
                self._stop.wait(max(0.0, last_docker + 1.0 - time.monotonic()))
                last_docker = time.monotonic()
            try:
                if docker_too and not self._docker_sync():
                    self._docker_reconcile = True  # engine gone: the reconnect asks again
                    continue
                recovering = self._dirty
                self._store_sync(force=first or self._dirty)
                if recovering and self._ttl is not None:
                    # A TTL key written just as the store came back may still vanish with the
                    # session or lease it was written under: check once that all stayed.
                    self._verify_at = time.monotonic() + self._ttl + 1.0
                self.metrics.reconciles.inc()
                first = False
                failures = 0
                if docker_too:
                    self._ready.set()
            except PyKVError as exc:
                self._mark_dirty(exc)
                failures += 1
                self._stop.wait(_backoff_seconds(backoff, failures))
                self._request_reconcile(docker_too=docker_too)

    def _docker_sync(self) -> bool:
        """Sync every running or known container through the workers; False if Docker failed."""
        client = self._client
        if client is None:
            return False
        try:
            running = [c["Id"] for c in client.api.containers(all=False)]
        except _ENGINE_ERRORS as exc:
            self.metrics.errors.labels("docker").inc()
            log.warning("cannot list containers: %s", exc)
            return False
        with self._state:
            known = set(self._desired)
        barrier = _Barrier(len(self._queues))
        for cid in sorted(set(running) | known):
            self._queue_of(cid).put(("sync", cid))
        for q in self._queues:
            q.put(("barrier", barrier))
        return barrier.wait(self._stop, timeout=300)

    def _tick_loop(self) -> None:
        last_resync = last_ping = last_pass = time.monotonic()
        pass_every = self.settings.ttl_refresh or (self._ttl or 30.0) / 3
        while not self._stop.wait(0.5):
            now = time.monotonic()
            if self.settings.resync > 0 and now - last_resync >= self.settings.resync:
                last_resync = now
                self._request_reconcile(docker_too=True)
            if self._verify_at and now >= self._verify_at:
                self._verify_at = 0.0
                self._request_reconcile(docker_too=False)
            if now - last_ping >= self.settings.ping_interval:
                last_ping = now
                self._ping()
            if self._catalog is not None and now - last_pass >= pass_every:
                last_pass = now
                self._pass_catalog_checks()

    def _ping(self) -> None:
        client = self._client
        if client is None or not self._connected.is_set():
            return
        try:
            client.ping()
        except _ENGINE_ERRORS as exc:
            # A half-open connection never ends the stream by itself: close it to reconnect.
            log.warning("Docker ping failed (%s); reconnecting", exc)
            self._close_stream()

    def _pass_catalog_checks(self) -> None:
        assert self._catalog is not None
        for key in list(self._written):
            try:
                self._catalog.catalog_pass_ttl(key.rsplit("/", 1)[-1])
            except PyKVError as exc:
                self.metrics.errors.labels("store").inc()
                log.warning("catalog TTL pass of %s failed: %s", key, exc)


class _Timer:
    def __init__(self, histogram: Any) -> None:
        self._histogram = histogram
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._histogram.observe(time.perf_counter() - self._start)


def exponential_backoff(initial: float, maximum: float) -> Any:
    """tenacity's exponential wait with jitter, from ``initial`` up to ``maximum`` seconds."""
    try:
        return tenacity.wait_exponential_jitter(multiplier=initial, max=maximum)
    except TypeError:  # tenacity before 9.1 calls it ``initial``
        return tenacity.wait_exponential_jitter(initial=initial, max=maximum)


def _backoff_seconds(wait: Any, attempt: int) -> float:
    """A tenacity wait strategy's delay for the ``attempt``-th consecutive failure."""
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt
    return float(wait(state))


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def _why(info: dict[str, Any] | None) -> str:
    return "destroyed" if info is None else container_state(info)


def _checks(endpoint: Endpoint) -> list[CatalogCheck]:
    """Catalog checks from registrator's ``SERVICE_CHECK_HTTP`` / ``_HTTPS`` (a path),
    ``SERVICE_CHECK_TCP`` (true), ``SERVICE_CHECK_INTERVAL`` and ``SERVICE_CHECK_TIMEOUT``.
    The other ``SERVICE_CHECK_*`` stay metadata only (see docs/registrar-compat.md)."""
    meta = endpoint.metadata
    host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
    interval = _duration(meta.get("check_interval"), 10.0)
    timeout = _duration(meta.get("check_timeout"), 5.0)
    checks = []
    for name, scheme in (("check_http", "http"), ("check_https", "https")):
        path = meta.get(name)
        if path:
            url = f"{scheme}://{host}:{endpoint.port}/{path.lstrip('/')}"
            checks.append(CatalogCheck("http", url, interval, timeout))
    if meta.get("check_tcp", "").strip().lower() in ("1", "true", "yes", "on"):
        checks.append(CatalogCheck("tcp", f"{host}:{endpoint.port}", interval, timeout))
    return checks


def _duration(text: str | None, default: float) -> float:
    if not text:
        return default
    try:
        return parse_duration(text)
    except ValueError:
        return default
