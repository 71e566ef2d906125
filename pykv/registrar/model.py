"""The service model: which endpoints a container gets, from its ``docker inspect`` document.

Pure functions, no I/O, compatible with gliderlabs/registrator's conventions:

* One endpoint per published port (with ``internal``: per exposed port, at the container's IP
  and port). ``udp`` ports are endpoints of their own.
* Id ``<node>:<container-name>:<container-port>[:udp]``; ``node`` is the Docker engine's name.
  ``SERVICE_ID`` / ``SERVICE_<port>_ID`` replace ``<container-name>:<container-port>`` (the
  node stays in front, so two hosts never write one key; ``:<port>`` is appended when several
  ports share one ``SERVICE_ID``).
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
* ``ip_label`` (registrator's ``-useIpFromLabel``): the address in that container label (a
  CIDR suffix is dropped) replaces the host address; not with ``internal``.
* Bounded (``MAX_*``): too many or too long tags and metadata values are cut; a name, id,
  address label or whole entry beyond the bounds refuses the container, with the reason in
  :class:`Evaluation` (the registrar logs it once and counts it).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..discovery import Endpoint

__all__ = [
    "MAX_ENTRY_BYTES",
    "Evaluation",
    "ModelSettings",
    "container_endpoints",
    "container_state",
    "evaluate",
    "image_base_name",
    "parse_bool",
    "service_attributes",
    "unique",
]

_T = TypeVar("_T")
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}
_NAME_JUNK = re.compile(r"[^A-Za-z0-9_.:@+-]+")
# SERVICE_<port>_<KEY> with a numeric port: port-specific attributes.
_PORT_KEY = re.compile(r"^(\d+)_(.+)$")
# Attributes that shape the endpoint itself; every other one is metadata.
_NOT_METADATA = frozenset({"NAME", "TAGS", "IGNORE", "ID"})

# Bounds on what labels may put into one entry: one careless or hostile container must not
# wedge the registrar or the store (keys are at most 1,024 bytes; Consul refuses values over
# 512 KiB, ZooKeeper over 1 MiB). Beyond them tags and metadata are cut; a name, id or entry
# beyond them refuses the container (a cut name or id would publish a different service).
MAX_NAME = 128  # characters of a service name, after sanitising
MAX_ID = 256  # characters of an endpoint id
MAX_TAGS = 64  # tags per endpoint
MAX_TAG = 256  # characters per tag
MAX_METADATA = 64  # metadata keys per endpoint
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 4096
MAX_ENTRY_BYTES = 32 * 1024  # the JSON of one entry


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
    ip_label: str = ""  # -useIpFromLabel: the container label holding its address


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


@dataclass(frozen=True)
class Evaluation:
    """What one container should have published, and why not or what was cut.

    ``refused`` names why the container gets no endpoint at all although it asks for some (a
    name, id, address or entry beyond the bounds); ``cuts`` what was dropped from its labels
    (tags, metadata) to keep its entries within the bounds.
    """

    endpoints: list[Endpoint]
    refused: str = ""
    cuts: tuple[str, ...] = ()


class _Refused(Exception):
    """Raised inside :func:`evaluate`: the container gets no endpoint, for this reason."""


def unique(items: Iterable[_T]) -> list[_T]:
    """``items`` without repeats, in first-seen order, in linear time."""
    return list(dict.fromkeys(items))


def _short(text: str, limit: int = 40) -> str:
    """``text`` quoted, cut to ``limit`` characters for a log line (labels can be huge)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def _split_attributes(
    attrs: Mapping[str, str],
) -> tuple[dict[str, str], dict[int, dict[str, str]]]:
    """General ``SERVICE_<KEY>`` attributes, and ``SERVICE_<port>_<KEY>`` ones by port."""
    general: dict[str, str] = {}
    by_port: dict[int, dict[str, str]] = {}
    for key, value in attrs.items():
        m = _PORT_KEY.match(key)
        if m is None:
            general[key] = value
        elif len(m.group(1)) <= 5:  # a longer number is no port (and int() of it is costly)
            by_port.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return general, by_port


def _tags(raw: str, extra: Sequence[str], cuts: list[str]) -> tuple[str, ...]:
    tags = unique(t for t in (t.strip() for t in [*raw.split(","), *extra]) if t)
    long = [t for t in tags if len(t) > MAX_TAG]
    if long:
        cuts.append(f"{len(long)} tag(s) longer than {MAX_TAG} characters dropped")
        tags = [t for t in tags if len(t) <= MAX_TAG]
    if len(tags) > MAX_TAGS:
        cuts.append(f"{len(tags)} tags, kept the first {MAX_TAGS}")
        tags = tags[:MAX_TAGS]
    return tuple(tags)


def _metadata(merged: Mapping[str, str], cuts: list[str]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    dropped = 0
    for key, value in sorted(merged.items()):
        if key in _NOT_METADATA:
            continue
        if len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            dropped += 1
            continue
        metadata[key.lower()] = value
    if dropped:
        cuts.append(
            f"{dropped} metadata value(s) dropped (keys over {MAX_METADATA_KEY} or values "
            f"over {MAX_METADATA_VALUE} characters)"
        )
    if len(metadata) > MAX_METADATA:
        cuts.append(f"{len(metadata)} metadata keys, kept the first {MAX_METADATA} by name")
        metadata = dict(list(metadata.items())[:MAX_METADATA])
    return metadata


def _label_ip(container: Mapping[str, Any], label: str) -> str:
    """The address in the container's label ``label`` (``-useIpFromLabel``), "" if unset."""
    raw = str(((container.get("Config") or {}).get("Labels") or {}).get(label) or "").strip()
    if not raw:
        return ""
    address = raw.split("/", 1)[0]  # registrator strips a CIDR suffix (10.0.0.5/24)
    try:
        return str(ipaddress.ip_address(address.strip("[]")))
    except ValueError:
        raise _Refused(f"label {label} = {_short(raw)} is not an IP address") from None


def evaluate(container: Mapping[str, Any], settings: ModelSettings) -> Evaluation:
    """The endpoints ``container`` should have now, or why it gets none (see the bounds)."""
    cuts: list[str] = []
    try:
        endpoints = _endpoints(container, settings, cuts)
    except _Refused as exc:
        return Evaluation([], str(exc), tuple(unique(cuts)))
    return Evaluation(endpoints, "", tuple(unique(cuts)))


def container_endpoints(container: Mapping[str, Any], settings: ModelSettings) -> list[Endpoint]:
    """The endpoints ``container`` should have now (empty when it should have none)."""
    return evaluate(container, settings).endpoints


@dataclass(frozen=True)
class _Container:
    """What every endpoint of one container shares."""

    name: str
    id: str
    base_name: str  # the image's base name: the default service name
    ports: list[_Port]
    general: dict[str, str]  # SERVICE_<KEY> attributes
    by_port: dict[int, dict[str, str]]  # SERVICE_<port>_<KEY> attributes
    internal_ip: str  # with ``internal``: the container's address
    label_ip: str  # with ``ip_label``: the address in that label


def _endpoints(
    container: Mapping[str, Any], settings: ModelSettings, cuts: list[str]
) -> list[Endpoint]:
    if container_state(container) != "published":
        return []
    attrs = service_attributes(container)
    if parse_bool_default(attrs.get("IGNORE"), False):
        return []
    ports = _ports(container, settings.internal)
    if not ports:
        return []
    addresses = _addresses(container, settings)
    if addresses is None:
        return []
    image = str((container.get("Config") or {}).get("Image") or container.get("Image") or "")
    general, by_port = _split_attributes(attrs)
    c = _Container(
        name=str(container.get("Name") or "").lstrip("/"),
        id=str(container.get("Id") or ""),
        base_name=image_base_name(image),
        ports=ports,
        general=general,
        by_port=by_port,
        internal_ip=addresses[0],
        label_ip=addresses[1],
    )
    endpoints = (_port_endpoint(c, p, settings, cuts) for p in ports)
    return [e for e in endpoints if e is not None]


def _addresses(container: Mapping[str, Any], settings: ModelSettings) -> tuple[str, str] | None:
    """(internal address, label address), "" where not used; None: no endpoint at all."""
    if settings.internal:
        internal_ip = _container_ip(container, settings.network)
        if not internal_ip:
            # host network mode (or not on the chosen network): the host's address
            if settings.network and settings.network != "host":
                return None
            internal_ip = settings.ip
        return internal_ip, ""
    if settings.ip_label:
        return "", _label_ip(container, settings.ip_label)
    return "", ""


def _service_name(c: _Container, p: _Port, merged: Mapping[str, str], named: bool) -> str:
    raw_name = merged["NAME"].strip() if named else c.base_name
    if len(c.ports) > 1 and not c.by_port.get(p.port, {}).get("NAME", "").strip():
        raw_name = f"{raw_name}-{p.port}"
    name = sanitize_name(raw_name)
    if not name:
        raise _Refused(f"service name {_short(raw_name)} has no usable characters")
    if len(name) > MAX_NAME:
        raise _Refused(f"service name is {len(name)} characters (limit {MAX_NAME})")
    return name


def _port_endpoint(
    c: _Container, p: _Port, settings: ModelSettings, cuts: list[str]
) -> Endpoint | None:
    """The endpoint of one port, None when it gets none (ignored, or not explicit)."""
    port_attrs = c.by_port.get(p.port, {})
    merged = {**c.general, **port_attrs}
    if parse_bool_default(merged.get("IGNORE"), False):
        return None
    named = merged.get("NAME", "").strip() != ""
    if settings.explicit and not named:
        return None
    name = _service_name(c, p, merged, named)
    endpoint_id = _endpoint_id(settings.node, c.name, p, merged, port_attrs, c.ports)
    tags = _tags(merged.get("TAGS", ""), settings.tags, cuts)
    metadata = _metadata(merged, cuts)
    if settings.internal:
        address, port = c.internal_ip, p.port
    else:
        address = settings.ip if settings.ip_override or not p.host_ip else p.host_ip
        address = c.label_ip or address
        port = p.host_port
    try:
        endpoint = Endpoint(
            service=name,
            id=endpoint_id,
            address=_unbracket(address),
            port=port,
            protocol=p.protocol,
            tags=tags,
            metadata=metadata,
            node=settings.node,
            container_id=c.id,
            container_name=c.name,
        )
    except (ValueError, TypeError) as exc:  # InvalidKeyError is a ValueError
        raise _Refused(f"port {p.port}: {_short(str(exc), 200)}") from None
    size = len(endpoint.to_json().encode("utf-8"))
    if size > MAX_ENTRY_BYTES:
        raise _Refused(
            f"the entry of port {p.port} is {size} bytes of JSON (limit {MAX_ENTRY_BYTES})"
        )
    return endpoint


def _endpoint_id(
    node: str,
    container_name: str,
    p: _Port,
    merged: Mapping[str, str],
    port_attrs: Mapping[str, str],
    ports: Sequence[_Port],
) -> str:
    """``<node>:<container>:<port>[:udp]``, or ``<node>:<SERVICE_ID>`` (registrator's id,
    scoped by the node so that two hosts never write the same key; ``:<port>`` is appended
    when several ports share one general SERVICE_ID)."""
    raw = merged.get("ID", "").strip()
    if raw:
        service_id = sanitize_name(raw)
        if not service_id:
            raise _Refused(f"SERVICE_ID {_short(raw)} has no usable characters")
        endpoint_id = f"{node}:{service_id}"
        if len(ports) > 1 and not port_attrs.get("ID", "").strip():
            endpoint_id += f":{p.port}"
    else:
        endpoint_id = f"{node}:{container_name}:{p.port}"
    if p.protocol == "udp":
        endpoint_id += ":udp"
    if len(endpoint_id) > MAX_ID:
        raise _Refused(f"endpoint id is {len(endpoint_id)} characters (limit {MAX_ID})")
    return endpoint_id


def parse_bool_default(value: str | None, default: bool) -> bool:
    """A ``SERVICE_*`` boolean; an unreadable value counts as true (someone meant to set it)."""
    if value is None:
        return default
    try:
        return parse_bool(value)
    except ValueError:
        return True
