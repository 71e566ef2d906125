"""The desired state: which entries this host should have in the store. Pure, no I/O.

Input is what the Docker engine says (``docker inspect`` documents, or None for a destroyed
container) and the settings; output is the entries (key -> endpoint) that should be published,
with how they are written (TTL, catalog checks). Every registrator convention is decided here
or in :mod:`.model` (one container's endpoints: ports, ``SERVICE_*`` labels, ``-internal``,
addresses, bounds); this module adds what spans containers and settings:

* the node name and host address (``--node``, else the engine's name; ``--ip``, else this
  host's primary address, and ``--ip`` then wins over specific host IPs);
* ``--deregister on-success``: a container that stopped with a non-zero exit code keeps what it
  had published (also what a previous registrar process published for it);
* one key wanted by two containers (a name reused before the old container's destroy event is
  handled): the greatest container id wins, so the choice does not depend on event order;
* the TTL of the entries (``--ttl``, 0: persistent) and, with ``--consul-catalog``, the catalog
  checks from ``SERVICE_CHECK_*``;
* what is worth one log line about a container (a refusal, labels cut to the bounds).

:func:`desired_entries` is the whole function for a set of containers. The registrar applies
the same decisions one container at a time (:func:`decide` into a :class:`DesiredTable`), so
that an event costs one ``inspect``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..discovery import CatalogCheck, Endpoint
from .model import Evaluation, ModelSettings, container_endpoints, container_state, evaluate
from .settings import Settings, parse_duration

__all__ = [
    "Decision",
    "DesiredTable",
    "by_container",
    "catalog_checks",
    "catalog_ttl",
    "complaint",
    "decide",
    "desired_entries",
    "entry_ttl",
    "keep_stopped",
    "keeps_entries",
    "model_settings",
]

Inspect = Mapping[str, Any]


def model_settings(settings: Settings, engine_name: str, detected_ip: str) -> ModelSettings:
    """The endpoint-shaping settings once the engine is known: ``--node`` else the engine's
    name; ``--ip`` (which then replaces specific host IPs too) else ``detected_ip``."""
    return ModelSettings(
        node=settings.node or engine_name,
        ip=settings.ip or detected_ip,
        ip_override=bool(settings.ip),
        internal=settings.internal,
        network=settings.network,
        explicit=settings.explicit,
        tags=settings.tags,
        ip_label=settings.use_ip_from_label,
    )


def entry_ttl(ttl: float) -> float | None:
    """The TTL the entries are written with: None (persistent) for ``--ttl 0``."""
    return ttl if ttl > 0 else None


def catalog_ttl(ttl: float, deregister_critical_after: float) -> float:
    """The catalog TTL check's period: the entries' TTL, else (persistent entries) the time
    after which Consul removes a critical service."""
    return entry_ttl(ttl) or deregister_critical_after


def keep_stopped(info: Inspect, deregister: str) -> bool:
    """``--deregister on-success``: a container that exited with a non-zero code (and is not
    restarting) keeps its entries."""
    state = info.get("State") or {}
    return (
        deregister == "on-success"
        and container_state(info) == "stopped"
        and not state.get("Restarting")
        and int(state.get("ExitCode") or 0) != 0
    )


def keeps_entries(info: Inspect, model: ModelSettings, deregister: str) -> bool:
    """Whether entries found in the store for this container (written by an earlier registrar
    process) stay: it has no endpoints of its own now, and failed under on-success."""
    return not container_endpoints(info, model) and keep_stopped(info, deregister)


def complaint(result: Evaluation) -> str:
    """The one log line's worth about a container: "" when there is nothing to say."""
    if result.refused:
        return f"skipped: {result.refused}"
    if result.cuts:
        return f"published with labels cut: {'; '.join(result.cuts)}"
    return ""


@dataclass(frozen=True)
class Decision:
    """What one container should have published now.

    ``endpoints`` is None when the container keeps whatever it has (on-success after a
    failure); ``complaint`` is what to log about it once (see :func:`complaint`), and
    ``refused`` tells a refusal from a cut.
    """

    endpoints: dict[str, Endpoint] | None
    complaint: str = ""
    refused: bool = False


def decide(
    info: Inspect | None, model: ModelSettings, *, prefix: str = "", deregister: str = "always"
) -> Decision:
    """The entries (key below ``prefix`` -> endpoint) of one container; ``info`` None: it was
    destroyed."""
    if info is None:
        return Decision({})
    result = evaluate(info, model)
    said = complaint(result)
    if not result.endpoints and keep_stopped(info, deregister):
        return Decision(None, said, bool(result.refused))
    return Decision({e.key(prefix): e for e in result.endpoints}, said, bool(result.refused))


def by_container(entries: Mapping[str, str]) -> dict[str, dict[str, Endpoint]]:
    """Store entries (key -> JSON) grouped by the container that published them; entries
    that do not parse or name no container are left out."""
    grouped: dict[str, dict[str, Endpoint]] = {}
    for key, value in entries.items():
        try:
            endpoint = Endpoint.from_json(value)
        except ValueError:
            continue
        if endpoint.container_id:
            grouped.setdefault(endpoint.container_id, {})[key] = endpoint
    return grouped


class DesiredTable:
    """The desired entries of every container, and the complaints logged about them.

    No I/O; thread-safe (workers apply containers in parallel, the publisher reads targets).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._desired: dict[str, dict[str, Endpoint]] = {}  # container id -> key -> endpoint
        self._owners: dict[str, dict[str, Endpoint]] = {}  # key -> container id -> endpoint
        self._complaints: dict[str, str] = {}  # container id -> what was last logged about it

    def __contains__(self, cid: object) -> bool:
        with self._lock:
            return cid in self._desired

    def containers(self) -> set[str]:
        with self._lock:
            return set(self._desired)

    def apply(
        self, cid: str, decision: Decision
    ) -> tuple[dict[str, Endpoint], dict[str, Endpoint]] | None:
        """Set the container's entries; (previous, new) when they changed, else None."""
        with self._lock:
            previous = self._desired.get(cid, {})
            new = decision.endpoints
            if new is None or new == previous:
                return None
            self._set(cid, new)
            return previous, new

    def adopt(self, cid: str, entries: dict[str, Endpoint]) -> bool:
        """Take ``entries`` as the container's unless it has some already (then False)."""
        with self._lock:
            if cid in self._desired:
                return False
            self._set(cid, entries)
            return True

    def _set(self, cid: str, new: dict[str, Endpoint]) -> None:
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

    def target(self, key: str) -> str | None:
        """The JSON that should be at ``key``, None when nothing should."""
        with self._lock:
            owners = self._owners.get(key)
            if not owners:
                return None
            # Two containers want one key only for an instant (a name reused after a destroy
            # whose event is not handled yet): event order is arbitrary, so pick
            # deterministically.
            return owners[max(owners)].to_json()

    def targets(self) -> dict[str, str]:
        """Every key that should exist, with its JSON."""
        with self._lock:
            return {key: owners[max(owners)].to_json() for key, owners in self._owners.items()}

    def published(self) -> dict[str, Endpoint]:
        with self._lock:
            return {k: next(iter(v.values())) for k, v in self._owners.items() if v}

    def note_complaint(self, cid: str, text: str) -> bool:
        """Remember what is said about a container ("" : nothing); True when it changed."""
        with self._lock:
            if self._complaints.get(cid, "") == text:
                return False
            if text:
                self._complaints[cid] = text
            else:
                self._complaints.pop(cid, None)
            return True

    def skipped(self) -> int:
        """Containers refused (skipped) as things stand."""
        with self._lock:
            return sum(1 for text in self._complaints.values() if text.startswith("skipped"))


def desired_entries(
    containers: Mapping[str, Inspect | None],
    model: ModelSettings,
    *,
    prefix: str = "",
    deregister: str = "always",
    previous: Mapping[str, Mapping[str, Endpoint]] | None = None,
) -> dict[str, str]:
    """Every entry (key -> JSON) this host should have, from the inspect documents of its
    containers (None: destroyed) and what each container had before (``previous``, for
    ``--deregister on-success``)."""
    table = DesiredTable()
    for cid, entries in (previous or {}).items():
        table.adopt(cid, dict(entries))
    for cid in sorted(containers):
        table.apply(cid, decide(containers[cid], model, prefix=prefix, deregister=deregister))
    return table.targets()


def catalog_checks(endpoint: Endpoint) -> list[CatalogCheck]:
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
