"""The service model: which endpoints a container gets, from its ``docker inspect`` document.

Pure functions, no I/O, compatible with gliderlabs/registrator's conventions:

* One endpoint per published port (with ``internal``: per exposed port, at the container's IP
  and port). ``udp`` ports are endpoints of their own.
* Id ``<node>:<container-name>:<container-port>[:udp]``; ``node`` is the Docker engine's name.
* Name: ``SERVICE_<port>_NAME``, else ``SERVICE_NAME``, else the image's base name
  (``registry:5000/team/web:1.2`` gives ``web``); ``-<port>`` is appended when the container has
  several ports and no port-specific name.
* Tags: ``SERVICE_<port>_TAGS`` or ``SERVICE_TAGS`` (comma-separated), then the global tags.
* Metadata: every other ``SERVICE_<port>_<KEY>`` / ``SERVICE_<KEY>`` as ``key`` (lower case), the
  port-specific value winning; the health-check keys (``check_http``, ...) are kept there too.
* Container labels win over environment variables of the same name. Only environment entries
  whose name starts with ``SERVICE_`` are ever looked at; other values are never read.
* ``SERVICE_IGNORE`` (or ``SERVICE_<port>_IGNORE``) is a boolean: ``true/1/yes/on`` ignore,
  ``false/0/no/off`` do not.
* ``explicit``: only ports whose service is named (``SERVICE_NAME`` or ``SERVICE_<port>_NAME``).
* Published when running, not paused, and healthy if the container has a health check.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..discovery import Endpoint

__all__ = [
    "ModelSettings",
    "container_endpoints",
    "container_state",
    "image_base_name",
    "parse_bool",
    "service_attributes",
]

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}
_NAME_JUNK = re.compile(r"[^A-Za-z0-9_.:@+-]+")
# SERVICE_<port>_<KEY> with a numeric port: port-specific attributes.
_PORT_KEY = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class ModelSettings:
    """The registrar options that shape endpoints."""

    node: str
    ip: str = ""  # host address for ports bound to all interfaces (and the --ip override)
    ip_override: bool = False  # True: ``ip`` replaces even specific host IPs
    internal: bool = False
    network: str = ""
    explicit: bool = False
    tags: tuple[str, ...] = ()


def parse_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def image_base_name(image: str) -> str:
    """``registry:5000/team/web:1.2@sha256:...`` -> ``web``."""
    name = image.split("@", 1)[0]
    name = name.rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def sanitize_name(name: str) -> str:
    """A service name usable as one key segment (``/`` and other junk become ``-``)."""
    cleaned = _NAME_JUNK.sub("-", name).strip("-")
    return "" if cleaned in ("", ".", "..") else cleaned


def service_attributes(container: Mapping[str, Any]) -> dict[str, str]:
    """``SERVICE_*`` attributes, keys without the prefix (``NAME``, ``80_TAGS``): labels win."""
    config = container.get("Config") or {}
    attrs: dict[str, str] = {}
    for entry in config.get("Env") or ():
        # Split off the name first: the value of any other variable is never looked at.
        name, sep, value = entry.partition("=")
        if sep and name.startswith("SERVICE_") and len(name) > 8:
            attrs[name[8:]] = value
    for name, value in (config.get("Labels") or {}).items():
        if name.startswith("SERVICE_") and len(name) > 8:
            attrs[name[8:]] = str(value)
    return attrs


def container_state(container: Mapping[str, Any]) -> str:
    """``published`` when endpoints should exist, else why not: ``stopped``, ``paused``,
    ``starting`` (health check not yet passed), ``unhealthy``."""
    state = container.get("State") or {}
    if not state.get("Running") or state.get("Restarting"):
        return "stopped"
    if state.get("Paused"):
        return "paused"
    # Podman reports {"Status": ""} for a container without a health check.
    status = (state.get("Health") or {}).get("Status")
    if status:
        if status == "healthy":
            return "published"
        return "unhealthy" if status == "unhealthy" else "starting"
    return "published"


@dataclass(frozen=True)
class _Port:
    port: int  # the container's port
    protocol: str
    host_ip: str
    host_port: int  # 0 when not published


def _ports(container: Mapping[str, Any], internal: bool) -> list[_Port]:
    net = container.get("NetworkSettings") or {}
    bindings: Mapping[str, Any] = net.get("Ports") or {}
    exposed: Iterable[str] = (container.get("Config") or {}).get("ExposedPorts") or {}
    result: dict[tuple[int, str], _Port] = {}
    for spec in sorted(set(bindings) | (set(exposed) if internal else set())):
        port_text, _, proto = spec.partition("/")
        try:
            port = int(port_text)
        except ValueError:
            continue
        proto = proto or "tcp"
        if proto not in ("tcp", "udp"):
            continue  # sctp: no endpoint
        chosen = _choose_binding(bindings.get(spec) or [])
        if chosen is None and not internal:
            continue
        host_ip, host_port = chosen if chosen is not None else ("", 0)
        result[(port, proto)] = _Port(port, proto, host_ip, host_port)
    return [result[k] for k in sorted(result)]


def _choose_binding(bindings: Iterable[Mapping[str, Any]]) -> tuple[str, int] | None:
    """One binding per port, chosen deterministically: a specific host IP (IPv4 first) over
    the wildcard ones, then the lowest port."""
    candidates = []
    for b in bindings:
        try:
            host_port = int(b.get("HostPort") or 0)
        except ValueError:
            continue
        if host_port <= 0:
            continue
        ip = str(b.get("HostIp") or "")
        wildcard = ip in ("", "0.0.0.0", "::")  # noqa: S104 (a comparison, not a bind)
        v6 = ":" in ip
        candidates.append((wildcard, v6, host_port, ip))
    if not candidates:
        return None
    wildcard, _, host_port, ip = min(candidates)
    return ("" if wildcard else ip, host_port)


def _container_ip(container: Mapping[str, Any], network: str) -> str:
    """The container's address on ``network``, or on the first network by name (IPv4 first)."""
    networks: Mapping[str, Any] = (container.get("NetworkSettings") or {}).get("Networks") or {}
    names = [network] if network else sorted(networks)
    for name in names:
        info = networks.get(name) or {}
        ip = info.get("IPAddress") or info.get("GlobalIPv6Address") or ""
        if ip:
            return str(ip)
    return ""


def _unbracket(ip: str) -> str:
    ip = ip.strip()
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip  # a host name


def container_endpoints(container: Mapping[str, Any], settings: ModelSettings) -> list[Endpoint]:
    """The endpoints ``container`` should have now (empty when it should have none)."""
    if container_state(container) != "published":
        return []
    attrs = service_attributes(container)
    if parse_bool_default(attrs.get("IGNORE"), False):
        return []
    ports = _ports(container, settings.internal)
    if not ports:
        return []
    container_name = str(container.get("Name") or "").lstrip("/")
    container_id = str(container.get("Id") or "")
    image = str((container.get("Config") or {}).get("Image") or container.get("Image") or "")
    base_name = image_base_name(image)
    internal_ip = ""
    if settings.internal:
        internal_ip = _container_ip(container, settings.network)
        if not internal_ip:
            # host network mode (or not on the chosen network): the host's address
            if settings.network and settings.network != "host":
                return []
            internal_ip = settings.ip
    endpoints = []
    for p in ports:
        port_attrs = {}
        general = {}
        for key, value in attrs.items():
            m = _PORT_KEY.match(key)
            if m:
                if int(m.group(1)) == p.port:
                    port_attrs[m.group(2)] = value
            else:
                general[key] = value
        merged = {**general, **port_attrs}
        if parse_bool_default(merged.get("IGNORE"), False):
            continue
        named = "NAME" in merged and merged["NAME"].strip() != ""
        if settings.explicit and not named:
            continue
        name = merged["NAME"].strip() if named else base_name
        if len(ports) > 1 and not port_attrs.get("NAME", "").strip():
            name = f"{name}-{p.port}"
        name = sanitize_name(name)
        if not name:
            continue
        tags: list[str] = []
        for raw_tag in [*merged.get("TAGS", "").split(","), *settings.tags]:
            tag = raw_tag.strip()
            if tag and tag not in tags:
                tags.append(tag)
        metadata = {
            k.lower(): v for k, v in sorted(merged.items()) if k not in ("NAME", "TAGS", "IGNORE")
        }
        if settings.internal:
            address, port = internal_ip, p.port
        else:
            address = settings.ip if settings.ip_override or not p.host_ip else p.host_ip
            port = p.host_port
        endpoint_id = f"{settings.node}:{container_name}:{p.port}"
        if p.protocol == "udp":
            endpoint_id += ":udp"
        endpoints.append(
            Endpoint(
                service=name,
                id=endpoint_id,
                address=_unbracket(address),
                port=port,
                protocol=p.protocol,
                tags=tuple(tags),
                metadata=metadata,
                node=settings.node,
                container_id=container_id,
                container_name=container_name,
            )
        )
    return endpoints


def parse_bool_default(value: str | None, default: bool) -> bool:
    """A ``SERVICE_*`` boolean; an unreadable value counts as true (someone meant to set it)."""
    if value is None:
        return default
    try:
        return parse_bool(value)
    except ValueError:
        return True
