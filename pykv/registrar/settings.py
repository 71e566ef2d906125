"""Registrar settings: command-line flags, each with a ``PYKV_REGISTRAR_<FLAG>`` variable.

A flag given on the command line wins over its environment variable, which wins over the
default. ``--store`` falls back to ``PYKV_STORE`` and then to the embedded sqlite store
(:func:`pykv.default_store_url`); the Docker endpoint comes from ``--docker-host`` or
``DOCKER_HOST`` (unix socket, ``tcp://``, or a Podman socket), with ``DOCKER_TLS_VERIFY`` and
``DOCKER_CERT_PATH`` as the Docker CLI reads them.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .._defaults import default_store_url
from ..discovery import DEFAULT_PREFIX
from .model import parse_bool

__all__ = ["ENV_PREFIX", "Settings", "build_parser", "parse_duration", "parse_settings"]

ENV_PREFIX = "PYKV_REGISTRAR_"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds from ``30``, ``30s``, ``500ms``, ``2m``, ``1h``."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30, 30s, 500ms, 2m)")
    factor = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    return float(m.group(1)) * factor


@dataclass(frozen=True)
class Settings:
    store: str
    prefix: str = DEFAULT_PREFIX
    node: str = ""
    ip: str = ""
    internal: bool = False
    network: str = ""
    explicit: bool = False
    tags: tuple[str, ...] = ()
    ttl: float = 30.0  # 0: persistent entries (then use --cleanup)
    resync: float = 0.0  # 0: only on (re)connect and store recovery
    deregister: str = "always"  # or "on-success"
    deregister_on_exit: bool = False
    cleanup: bool = False
    docker_host: str = ""
    log_format: str = "text"
    log_level: str = "INFO"
    metrics_addr: str = ""
    consul_catalog: bool = False
    deregister_critical_after: float = 60.0
    workers: int = 4
    ping_interval: float = 5.0
    max_backoff: float = 30.0


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _bool_arg(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


# (flag, type, default, help); booleans are switches on the command line.
_OPTIONS: list[tuple[str, str, object, str]] = [
    ("store", "str", None, "store URL (default: $PYKV_STORE, else the embedded sqlite store)"),
    ("prefix", "str", DEFAULT_PREFIX, "key prefix of the endpoints in the store"),
    ("node", "str", "", "node name in ids and entries (default: the Docker engine's name)"),
    (
        "ip",
        "str",
        "",
        "address to publish for every port (default: the bound host IP, "
        "else this host's primary address)",
    ),
    ("internal", "bool", False, "publish every exposed port at the container's own IP"),
    (
        "network",
        "str",
        "",
        "with --internal: the network whose IP is used (default: first by name)",
    ),
    ("explicit", "bool", False, "only publish containers that set SERVICE_NAME"),
    ("tags", "str", "", "comma-separated tags added to every endpoint"),
    ("ttl", "duration", 30.0, "TTL of the entries, kept alive while running (0: persistent)"),
    ("resync", "duration", 0.0, "reconcile with Docker and the store every so often (0: off)"),
    ("deregister", "choice", "always", "withdraw on stop/die: always, or on-success (exit 0)"),
    ("deregister-on-exit", "bool", False, "withdraw this node's entries when stopping"),
    ("cleanup", "bool", False, "remove this node's entries whose container is gone"),
    ("docker-host", "str", "", "Docker endpoint (default: $DOCKER_HOST, else the local socket)"),
    ("log-format", "choice", "text", "text or json (one JSON object per line)"),
    ("log-level", "str", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    ("metrics-addr", "str", "", "HOST:PORT serving /metrics (Prometheus) and /healthz"),
    ("consul-catalog", "bool", False, "also register Consul agent services with TTL checks"),
    (
        "deregister-critical-after",
        "duration",
        60.0,
        "with --consul-catalog: Consul removes a service critical for this long",
    ),
    ("workers", "int", 4, "parallel container handlers (events of one container stay in order)"),
]
_CHOICES = {"deregister": ("always", "on-success"), "log-format": ("text", "json")}


def build_parser(prog: str = "pykv-registrar") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Publish the Docker containers of this host into a pykv store, as TTL "
        "entries kept alive while the registrar runs. Every flag can also be set by an "
        f"environment variable {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}TTL=10s).",
    )
    for flag, kind, _default, help_text in _OPTIONS:
        name = "--" + flag
        if kind == "bool":
            parser.add_argument(
                name, action="store_const", const=True, default=None, help=help_text
            )
        elif kind == "choice":
            parser.add_argument(name, choices=_CHOICES[flag], default=None, help=help_text)
        elif kind == "duration":
            parser.add_argument(name, type=_duration_arg, default=None, help=help_text)
        elif kind == "int":
            parser.add_argument(name, type=int, default=None, help=help_text)
        else:
            parser.add_argument(name, default=None, help=help_text)
    return parser


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from ``argv`` and ``environ`` (default: the process's). Exits on bad input."""
    env = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    values: dict[str, object] = {}
    for flag, kind, default, _ in _OPTIONS:
        attr = flag.replace("-", "_")
        value = getattr(args, attr)
        if value is None:
            env_name = ENV_PREFIX + attr.upper()
            raw = env.get(env_name)
            if raw is not None and raw.strip() != "":
                try:
                    if kind == "bool":
                        value = parse_bool(raw)
                    elif kind == "duration":
                        value = parse_duration(raw)
                    elif kind == "int":
                        value = int(raw)
                    else:
                        value = raw.strip()
                except ValueError as exc:
                    parser.error(f"{env_name}: {exc}")
                if kind == "choice" and value not in _CHOICES[flag]:
                    parser.error(f"{env_name} must be one of {', '.join(_CHOICES[flag])}")
        if value is None:
            value = default
        values[attr] = value
    if values["store"] is None:
        values["store"] = default_store_url()  # honours PYKV_STORE
    if not values["docker_host"]:
        values["docker_host"] = env.get("DOCKER_HOST", "")
    tags = str(values.pop("tags") or "")
    ttl = float(values["ttl"])  # type: ignore[arg-type]
    if ttl < 0:
        parser.error("--ttl must be >= 0")
    workers = int(values["workers"])  # type: ignore[call-overload]
    if workers < 1:
        parser.error("--workers must be >= 1")
    return Settings(tags=tuple(t.strip() for t in tags.split(",") if t.strip()), **values)  # type: ignore[arg-type]
