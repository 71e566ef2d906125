"""Service discovery on any pykv store: endpoints published as TTL keys.

    import pykv
    from pykv.discovery import Endpoint, Registry

    with pykv.open_store("etcd://127.0.0.1:2379") as store:
        registry = Registry(store)
        registry.register(Endpoint("web", "node1:web-1:80", "10.0.0.5", 8080), ttl=30)
        registry.endpoints("web")            # [Endpoint(service='web', ...)]
        with registry.watch("web") as watch:
            for endpoints in watch:          # the full list, first now, then on each change
                ...

Layout (a public format: other tools read it)
    One key per endpoint at ``<prefix>/<service>/<id>`` below the store's own prefix; the
    registry prefix defaults to ``services``. ``<service>`` and ``<id>`` are single key segments
    (no ``/``, not ``.`` or ``..``, no control characters). The value is a UTF-8 JSON object::

        {"service": "web", "id": "node1:web-1:80", "address": "10.0.0.5", "port": 8080,
         "protocol": "tcp", "tags": ["prod"], "metadata": {"version": "2"},
         "node": "node1", "container_id": "3f2a...", "container_name": "web-1"}

    ``service``, ``id``, ``address`` (IPv4, IPv6 without brackets, or a host name) and ``port``
    (int) are always present; ``protocol`` is ``tcp`` or ``udp``; ``tags`` a list of strings;
    ``metadata`` an object of string values; ``node`` the host (Docker engine) that published
    it; ``container_id`` and ``container_name`` are empty for endpoints not from a container.
    Writers emit keys in this order with compact separators; readers must ignore unknown keys,
    which later versions may add. A value that is not such an object (bad JSON, a known key of
    the wrong type, a port out of range, more than :data:`MAX_ENTRY_BYTES`) is malformed:
    :class:`Registry` skips it, counts it in :attr:`Registry.skipped` and logs it once, and
    the other endpoints keep flowing. With a TTL the key is ephemeral: it lives while the writing
    store is open and disappears within the TTL (plus the backend's slack) after the writer
    dies, so a dead host's endpoints vanish by themselves.

Backend-specific catalogs
    :class:`CatalogPublisher` is the protocol a store implements when its backend has its own
    service catalog with health checks (Consul's agent services). ``pykv-registrar
    --consul-catalog`` uses it through ``isinstance(store, CatalogPublisher)``; the key-value
    layout above is written either way.
"""

from __future__ import annotations

import json
import logging
import operator
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ._errors import (
    InvalidKeyError,
    KeyNotFoundError,
    WatchClosedError,
    WatchTimeoutError,
)
from ._store import Closing, KVPair, Store, Watch

__all__ = [
    "DEFAULT_PREFIX",
    "CatalogCheck",
    "CatalogPublisher",
    "Endpoint",
    "EndpointWatch",
    "MalformedEntries",
    "Registry",
    "check_segment",
]

log = logging.getLogger("pykv.discovery")

_SORT_KEY = operator.attrgetter("service", "id")

DEFAULT_PREFIX = "services"
PROTOCOLS = ("tcp", "udp")
#: Readers skip larger values unparsed: no writer of this layout comes near it.
MAX_ENTRY_BYTES = 1024 * 1024
_STRINGS = ("service", "id", "address", "protocol", "node", "container_id", "container_name")


def check_segment(value: str, what: str) -> str:
    """Return ``value`` if it can be one key segment, else raise :class:`~pykv.InvalidKeyError`."""
    if not isinstance(value, str) or not value:
        raise InvalidKeyError(f"the {what} must be a non-empty string, not {value!r}")
    if "/" in value or value in (".", "..") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidKeyError(f"the {what} {value!r} cannot be a key segment")
    return value


@dataclass(frozen=True)
class Endpoint:
    """One network endpoint of a service. See the module documentation for its JSON form."""

    service: str
    id: str
    address: str
    port: int
    protocol: str = "tcp"
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    node: str = ""
    container_id: str = ""
    container_name: str = ""

    def __post_init__(self) -> None:
        check_segment(self.service, "service name")
        check_segment(self.id, "endpoint id")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise TypeError(f"port must be an int, not {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range")
        # Accept any sequence / mapping, store immutable-looking copies.
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "metadata", dict(self.metadata))

    def key(self, prefix: str = DEFAULT_PREFIX) -> str:
        """The store key: ``<prefix>/<service>/<id>``."""
        return "/".join(p for p in (prefix.strip("/"), self.service, self.id) if p)

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "id": self.id,
            "address": self.address,
            "port": self.port,
            "protocol": self.protocol,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "node": self.node,
            "container_id": self.container_id,
            "container_name": self.container_name,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Endpoint:
        """Build from the JSON object; unknown keys are ignored. Raises ValueError when a known
        key is missing or of the wrong type, or the endpoint is invalid."""
        for name in ("service", "id", "address", "port"):
            if name not in data:
                raise ValueError(f"not an endpoint: no {name!r}")
        for name in _STRINGS:
            if name in data and not isinstance(data[name], str):
                raise ValueError(f"not an endpoint: {name!r} is not a string")
        port = data["port"]
        if isinstance(port, bool) or not isinstance(port, int):
            raise ValueError(f"not an endpoint: 'port' is not an integer: {_cut(repr(port))}")
        tags = data.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("not an endpoint: 'tags' is not a list of strings")
        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError("not an endpoint: 'metadata' is not an object of strings")
        try:
            return cls(
                service=data["service"],
                id=data["id"],
                address=data["address"],
                port=port,
                protocol=data.get("protocol", "tcp"),
                tags=tuple(tags),
                metadata=metadata,
                node=data.get("node", ""),
                container_id=data.get("container_id", ""),
                container_name=data.get("container_name", ""),
            )
        except (TypeError, ValueError) as exc:  # InvalidKeyError is a ValueError
            raise ValueError(f"not an endpoint: {_cut(str(exc))}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Endpoint:
        """Parse the JSON form. Raises ValueError, and only ValueError, for anything else:
        bad JSON or UTF-8, nesting too deep to parse, numbers out of range, wrong types."""
        if len(text) > MAX_ENTRY_BYTES:
            raise ValueError(f"not an endpoint: {len(text)} bytes (limit {MAX_ENTRY_BYTES})")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"not an endpoint: {_cut(str(exc) or type(exc).__name__)}") from exc
        if not isinstance(data, dict):
            raise ValueError("not an endpoint: the JSON value is not an object")
        return cls.from_dict(data)


def _cut(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class CatalogCheck:
    """A health check the backend's catalog runs itself (``SERVICE_CHECK_HTTP`` / ``_TCP``)."""

    kind: str  # "http" or "tcp"
    target: str  # URL for http, "host:port" for tcp
    interval: float = 10.0
    timeout: float = 5.0


@runtime_checkable
class CatalogPublisher(Protocol):
    """What a store offers when its backend has a service catalog (Consul's agent services).

    The registrar calls these besides writing the key-value layout, only when asked
    (``--consul-catalog``). ``ttl`` is the TTL check's period: the service turns critical when
    :meth:`catalog_pass_ttl` is not called within it, and the backend removes it
    ``deregister_critical_after`` seconds later (None: never). Errors are pykv errors, as for
    every store call.
    """

    def catalog_register(
        self,
        endpoint: Endpoint,
        *,
        ttl: float,
        checks: Sequence[CatalogCheck] = (),
        deregister_critical_after: float | None = None,
    ) -> None:
        """Register (or update) ``endpoint`` as a catalog service with a TTL check."""

    def catalog_deregister(self, endpoint_id: str) -> None:
        """Remove the catalog service ``endpoint_id``; a missing one is a no-op."""

    def catalog_pass_ttl(self, endpoint_id: str) -> None:
        """Mark the TTL check of ``endpoint_id`` as passing for another ``ttl``."""


class MalformedEntries:
    """Counts the malformed entries a reader skipped, and logs each one once.

    An entry is one key at one revision: rewriting a bad key counts (and logs) again. The
    memory of what was seen is bounded; a long-forgotten entry may be logged a second time.
    """

    _REMEMBER = 10_000

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._lock = threading.Lock()
        self.count = 0  #: distinct malformed entries seen

    def note(self, pair: KVPair, error: BaseException) -> bool:
        """Record that ``pair`` is malformed; True (and logged) the first time it is seen."""
        ident = (pair.key, pair.revision)
        with self._lock:
            if ident in self._seen:
                return False
            self._seen[ident] = None
            if len(self._seen) > self._REMEMBER:
                self._seen.popitem(last=False)
            self.count += 1
        self._log.warning(
            "skipping malformed endpoint entry %s (revision %s): %s",
            _cut(pair.key, 200),
            pair.revision,
            error,
        )
        return True

    def parse(self, pairs: Sequence[KVPair]) -> list[Endpoint]:
        """The endpoints of a listing, sorted by service and id; malformed ones skipped."""
        endpoints = []
        for pair in pairs:
            try:
                endpoints.append(Endpoint.from_json(pair.value))
            except ValueError as exc:
                self.note(pair, exc)
        endpoints.sort(key=lambda e: (e.service, e.id))
        return endpoints


class EndpointWatch(Closing):
    """A :class:`~pykv.Watch` of endpoint lists: the full sorted list first, then on each change.

    Events whose list equals the previous one (a TTL refresh, a rewrite with the same data) are
    skipped, and so are malformed entries (counted by the registry). Iterate it, call
    :meth:`get`, or :meth:`follow` it until a stop event; :meth:`close` ends it.
    """

    def __init__(
        self,
        inner: Watch[list[KVPair]],
        service: str | None,
        malformed: MalformedEntries | None = None,
    ) -> None:
        self._inner = inner
        self._service = service
        self._malformed = malformed or MalformedEntries()
        self._last: list[Endpoint] | None = None
        #: the last snapshot's entries by key: (revision, value, endpoint or None if malformed)
        self._parsed: dict[str, tuple[int, bytes, Endpoint | None]] = {}

    def _wanted(self, endpoint: Endpoint | None) -> bool:
        return endpoint is not None and (self._service is None or endpoint.service == self._service)

    def _convert(self, pairs: list[KVPair]) -> list[Endpoint] | None:
        """The sorted endpoints of a snapshot; None when none of ours changed since the last.

        Each entry is parsed once per key and revision, then reused: parsing every entry on
        every change cost a watcher of 20,000 endpoints about a second of CPU per change."""
        previous = self._parsed
        parsed: dict[str, tuple[int, bytes, Endpoint | None]] = {}
        changed = self._last is None
        for pair in pairs:
            old = previous.get(pair.key)
            if old is not None and old[0] == pair.revision and old[1] == pair.value:
                parsed[pair.key] = old
                continue
            try:
                endpoint: Endpoint | None = Endpoint.from_json(pair.value)
            except ValueError as exc:
                self._malformed.note(pair, exc)
                endpoint = None
            parsed[pair.key] = (pair.revision, pair.value, endpoint)
            before = None if old is None else old[2]
            if endpoint != before and (self._wanted(endpoint) or self._wanted(before)):
                changed = True
        if not changed:
            changed = any(self._wanted(previous[key][2]) for key in previous.keys() - parsed.keys())
        self._parsed = parsed
        if not changed:
            return None
        service = self._service
        endpoints = [
            e
            for _, _, e in parsed.values()
            if e is not None and (service is None or e.service == service)
        ]
        endpoints.sort(key=_SORT_KEY)
        return endpoints

    def get(self, timeout: float | None = None) -> list[Endpoint]:
        """The next changed list; :class:`~pykv.WatchTimeoutError` (a :class:`TimeoutError`)
        when none comes within ``timeout``.

        A watch that failed raises its error on this and every later call, never a
        :class:`TimeoutError` (a time-out that ended the watch is raised as
        :class:`~pykv.UnavailableError` caused by it), so a polling loop can take
        ``WatchTimeoutError`` as "nothing yet" and end on anything else, as :meth:`follow` does.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            endpoints = self._convert(self._inner.get(remaining))
            if endpoints is not None:
                self._last = endpoints
                return endpoints

    def follow(self, stop: threading.Event, poll: float = 0.2) -> Iterator[list[Endpoint]]:
        """Each changed list until ``stop`` is set or the watch is closed (checked every
        ``poll`` seconds). A failed watch ends it with the watch's error."""
        while not stop.is_set():
            try:
                yield self.get(timeout=poll)
            except WatchClosedError:
                return
            except WatchTimeoutError:  # no change yet; a failed watch raises its own error
                continue

    def __iter__(self) -> Iterator[list[Endpoint]]:
        return self

    def __next__(self) -> list[Endpoint]:
        try:
            return self.get()
        except WatchClosedError:
            raise StopIteration from None

    def close(self) -> None:
        self._inner.close()

    @property
    def closed(self) -> bool:
        return self._inner.closed


class Registry(Closing):
    """Endpoints of services in a store, below ``prefix`` (default ``services``).

    The registry does not own the store: TTL endpoints stay alive while the store is open.
    Used as a context manager, it deregisters on exit the endpoints it registered. Malformed
    entries below the prefix are skipped by every reader (see the module documentation).
    """

    def __init__(self, store: Store, prefix: str = DEFAULT_PREFIX) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self._registered: dict[str, Endpoint] = {}
        self._malformed = MalformedEntries()

    @property
    def skipped(self) -> int:
        """How many malformed entries (key at a revision) this registry's readers skipped."""
        return self._malformed.count

    def __repr__(self) -> str:
        return f"<Registry {self.prefix!r} on {self.store}>"

    def _service_prefix(self, service: str) -> str:
        check_segment(service, "service name")
        return f"{self.prefix}/{service}" if self.prefix else service

    def register(self, endpoint: Endpoint, ttl: float | None = 30.0) -> None:
        """Publish ``endpoint``: a TTL key kept alive while the store is open (``ttl=None``:
        a persistent key that only :meth:`deregister` removes)."""
        key = endpoint.key(self.prefix)
        self.store.put(key, endpoint.to_json(), ttl=ttl)
        self._registered[key] = endpoint

    def deregister(self, endpoint: Endpoint | tuple[str, str]) -> None:
        """Withdraw an endpoint (or a ``(service, id)`` pair). A missing one is a no-op."""
        if isinstance(endpoint, Endpoint):
            service, endpoint_id = endpoint.service, endpoint.id
        else:
            service, endpoint_id = endpoint
        key = f"{self._service_prefix(service)}/{check_segment(endpoint_id, 'endpoint id')}"
        self.store.delete(key)
        self._registered.pop(key, None)

    def endpoints(self, service: str) -> list[Endpoint]:
        """The endpoints of ``service``, sorted by id; empty when there are none."""
        try:
            pairs = self.store.list(self._service_prefix(service))
        except KeyNotFoundError:
            return []
        return [e for e in self._malformed.parse(pairs) if e.service == service]

    def all_endpoints(self) -> list[Endpoint]:
        """Every endpoint of every service, sorted by service and id."""
        try:
            pairs = self.store.list(self.prefix)
        except KeyNotFoundError:
            return []
        return self._malformed.parse(pairs)

    def services(self) -> list[str]:
        """The names of services with at least one endpoint, sorted."""
        return sorted({e.service for e in self.all_endpoints()})

    def watch(self, service: str | None = None) -> EndpointWatch:
        """Watch one service (or every service when None): lists of endpoints, first the
        current one, then one per change."""
        prefix = self.prefix if service is None else self._service_prefix(service)
        return EndpointWatch(self.store.watch_tree(prefix), service, self._malformed)

    def close(self) -> None:
        """Deregister what this registry registered. The store stays open."""
        for endpoint in list(self._registered.values()):
            self.deregister(endpoint)
