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
    which later versions may add. With a TTL the key is ephemeral: it lives while the writing
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
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ._errors import InvalidKeyError, KeyNotFoundError, WatchClosedError
from ._store import Closing, KVPair, Store, Watch

if TYPE_CHECKING:
    pass

__all__ = [
    "DEFAULT_PREFIX",
    "CatalogCheck",
    "CatalogPublisher",
    "Endpoint",
    "EndpointWatch",
    "Registry",
    "check_segment",
]

DEFAULT_PREFIX = "services"
PROTOCOLS = ("tcp", "udp")


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
        """Build from the JSON object; unknown keys are ignored. Raises ValueError when broken."""
        try:
            return cls(
                service=str(data["service"]),
                id=str(data["id"]),
                address=str(data["address"]),
                port=int(data["port"]),
                protocol=str(data.get("protocol", "tcp")),
                tags=tuple(str(t) for t in data.get("tags", ())),
                metadata={str(k): str(v) for k, v in dict(data.get("metadata", {})).items()},
                node=str(data.get("node", "")),
                container_id=str(data.get("container_id", "")),
                container_name=str(data.get("container_name", "")),
            )
        except (KeyError, TypeError, InvalidKeyError) as exc:
            raise ValueError(f"not an endpoint: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Endpoint:
        try:
            data = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not an endpoint: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("not an endpoint: the JSON value is not an object")
        return cls.from_dict(data)


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


def _parse(pairs: Sequence[KVPair]) -> list[Endpoint]:
    """Endpoints of a listing; values that are not endpoints are skipped (not our data)."""
    endpoints = []
    for pair in pairs:
        try:
            endpoints.append(Endpoint.from_json(pair.value))
        except ValueError:
            continue
    endpoints.sort(key=lambda e: (e.service, e.id))
    return endpoints


class EndpointWatch(Closing):
    """A :class:`~pykv.Watch` of endpoint lists: the full sorted list first, then on each change.

    Events whose list equals the previous one (a TTL refresh, a rewrite with the same data) are
    skipped. Iterate it or call :meth:`get`; :meth:`close` ends it.
    """

    def __init__(self, inner: Watch[list[KVPair]], service: str | None) -> None:
        self._inner = inner
        self._service = service
        self._last: list[Endpoint] | None = None

    def _convert(self, pairs: list[KVPair]) -> list[Endpoint]:
        endpoints = _parse(pairs)
        if self._service is not None:
            endpoints = [e for e in endpoints if e.service == self._service]
        return endpoints

    def get(self, timeout: float | None = None) -> list[Endpoint]:
        """The next changed list; :class:`TimeoutError` when none comes within ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            endpoints = self._convert(self._inner.get(remaining))
            if endpoints != self._last:
                self._last = endpoints
                return endpoints

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
    Used as a context manager, it deregisters on exit the endpoints it registered.
    """

    def __init__(self, store: Store, prefix: str = DEFAULT_PREFIX) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self._registered: dict[str, Endpoint] = {}

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
        return [e for e in _parse(pairs) if e.service == service]

    def all_endpoints(self) -> list[Endpoint]:
        """Every endpoint of every service, sorted by service and id."""
        try:
            pairs = self.store.list(self.prefix)
        except KeyNotFoundError:
            return []
        return _parse(pairs)

    def services(self) -> list[str]:
        """The names of services with at least one endpoint, sorted."""
        return sorted({e.service for e in self.all_endpoints()})

    def watch(self, service: str | None = None) -> EndpointWatch:
        """Watch one service (or every service when None): lists of endpoints, first the
        current one, then one per change."""
        prefix = self.prefix if service is None else self._service_prefix(service)
        return EndpointWatch(self.store.watch_tree(prefix), service)

    def close(self) -> None:
        """Deregister what this registry registered. The store stays open."""
        for endpoint in list(self._registered.values()):
            self.deregister(endpoint)
