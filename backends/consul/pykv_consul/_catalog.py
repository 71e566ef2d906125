"""Consul agent service definitions for the catalog protocol of :mod:`pykv.discovery`.

Typed structurally (the attributes read), so the driver does not depend on the discovery
layer's classes: :class:`pykv.discovery.Endpoint` and :class:`~pykv.discovery.CatalogCheck`
fit, and so does anything shaped like them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = ["CheckLike", "EndpointLike", "service_definition", "ttl_check_id"]

log = logging.getLogger("pykv.consul")

#: Consul's rules for service metadata (agent/structs: ValidateServiceMetadata).
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_META_MAX_PAIRS = 64
_META_MAX_VALUE = 512


class EndpointLike(Protocol):
    """What the catalog reads of an endpoint (:class:`pykv.discovery.Endpoint`)."""

    @property
    def service(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def tags(self) -> Sequence[str]: ...
    @property
    def metadata(self) -> Mapping[str, str]: ...


class CheckLike(Protocol):
    """What the catalog reads of a check (:class:`pykv.discovery.CatalogCheck`)."""

    @property
    def kind(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def interval(self) -> float: ...
    @property
    def timeout(self) -> float: ...


def ttl_check_id(service_id: str) -> str:
    return f"service:{service_id}:ttl"


def _duration(seconds: float) -> str:
    """A Go duration Consul parses, in whole milliseconds (at least 1 ms)."""
    return f"{max(1, round(seconds * 1000))}ms"


def _meta(service_id: str, metadata: Mapping[str, str]) -> dict[str, str]:
    """The metadata Consul accepts: it refuses the whole registration over one bad pair, so
    pairs it would refuse are left out (logged) instead."""
    meta: dict[str, str] = {}
    for key, value in sorted(metadata.items()):
        if (
            not _META_KEY.match(key)
            or key.startswith("consul-")
            or len(value) > _META_MAX_VALUE
            or len(meta) >= _META_MAX_PAIRS
        ):
            log.warning(
                "catalog service %s: metadata %r left out (Consul refuses it)", service_id, key
            )
            continue
        meta[key] = value
    return meta


def service_definition(
    endpoint: EndpointLike,
    *,
    ttl: float,
    checks: Sequence[CheckLike],
    deregister_critical_after: float | None,
) -> dict[str, Any]:
    """The body of ``PUT /v1/agent/service/register`` for ``endpoint``.

    The TTL check starts ``passing`` (the caller registers what it knows to be up and passes it
    from then on); the HTTP and TCP checks start ``critical`` until Consul first runs them.
    """
    if not ttl > 0:
        raise ValueError(f"the catalog TTL must be positive, not {ttl!r}")
    sid = endpoint.id
    expire: dict[str, str] = {}
    if deregister_critical_after is not None:
        # On the TTL check only: the publisher decides whether the endpoint exists, the
        # HTTP/TCP checks only whether it is healthy (a failing app stays listed, critical).
        # Consul's floor is 1 min and its reaper runs every 30 s.
        expire["DeregisterCriticalServiceAfter"] = _duration(deregister_critical_after)
    definitions: list[dict[str, Any]] = [
        {
            "CheckID": ttl_check_id(sid),
            "Name": "pykv TTL",
            "Notes": "passed by its publisher while the endpoint is up",
            "TTL": _duration(ttl),
            "Status": "passing",
            **expire,
        }
    ]
    seen: dict[str, int] = {}
    for check in checks:
        kind = check.kind.lower()
        if kind not in ("http", "tcp"):
            raise ValueError(f"catalog check kind must be 'http' or 'tcp', not {check.kind!r}")
        seen[kind] = seen.get(kind, 0) + 1
        suffix = "" if seen[kind] == 1 else f":{seen[kind]}"
        definitions.append(
            {
                "CheckID": f"service:{sid}:{kind}{suffix}",
                "Name": f"{'HTTP GET' if kind == 'http' else 'TCP'} {check.target}",
                kind.upper(): check.target,
                "Interval": _duration(check.interval),
                "Timeout": _duration(check.timeout),
            }
        )
    return {
        "ID": sid,
        "Name": endpoint.service,
        "Address": endpoint.address,
        "Port": endpoint.port,
        "Tags": list(endpoint.tags),
        "Meta": _meta(sid, endpoint.metadata),
        "Checks": definitions,
    }
