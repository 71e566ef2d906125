"""Registrar settings: command-line flags, each with a ``PYKV_REGISTRAR_<FLAG>`` variable.

A flag given on the command line wins over its environment variable, which wins over the
default. The store is the positional ``REGISTRY_URL`` (registrator's form), else ``--store``,
else ``PYKV_STORE``, else the embedded sqlite store (:func:`pykv.default_store_url`); the
Docker endpoint comes from ``--docker-host`` or ``DOCKER_HOST`` (unix socket, ``tcp://``, or a
Podman socket), with ``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH`` as the Docker CLI reads
them.

Registrator's flags are accepted as they are written for it (``-ttl 30``, ``-ttl=30``,
``-internal``, ``-cleanup=false``, ``-retry-interval 2000`` in milliseconds, ``-useIpFromLabel
LABEL``), next to pykv's own (``--ttl 30s``); ``docs/registrar-compat.md`` maps each one.
Every value is checked here, before anything is opened: a bad one exits with status 2 and a
message naming the flag or variable.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .._defaults import default_store_url
from .._errors import InvalidKeyError
from .._keys import normalize_prefix
from ..discovery import DEFAULT_PREFIX
from .model import parse_bool

__all__ = [
    "ENV_PREFIX",
    "LOG_LEVELS",
    "Settings",
    "build_parser",
    "parse_duration",
    "parse_metrics_addr",
    "parse_settings",
    "registry_url",
]

ENV_PREFIX = "PYKV_REGISTRAR_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_MAX_DURATION = 10 * 365 * 86400.0  # ten years: a TTL beyond any backend's range is a typo


def parse_duration(text: str, unit: str = "s") -> float:
    """Seconds from ``30``, ``30s``, ``500ms``, ``2m``, ``1h`` (a bare number is in ``unit``)."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30, 30s, 500ms, 2m)")
    factor = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or unit]
    seconds = float(m.group(1)) * factor
    if seconds > _MAX_DURATION:
        raise ValueError(f"duration {text!r} is longer than ten years")
    return seconds


def parse_metrics_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; an empty host means every interface) as (host, port)."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"not HOST:PORT with a port 0-65535: {text!r}")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets: {text!r}") from None
    elif ":" in host or any(c.isspace() for c in host):
        raise ValueError(f"not HOST:PORT (an IPv6 host goes in brackets): {text!r}")
    return host, int(port_text)


#: registrator's registry URI schemes that name another pykv scheme, and those pykv refuses.
_SCHEME_ALIASES = {"consulkv": "consul", "consul-tls": "consul+tls", "consulkv-tls": "consul+tls"}
_REFUSED_SCHEMES = {"skydns2": "SkyDNS 2 is not a pykv backend; publish into etcd instead"}


def registry_url(url: str) -> str:
    """A registrator registry URI as a pykv store URL (``consulkv://`` -> ``consul://``).

    Raises ValueError for schemes pykv does not serve in that form."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a URL: {url!r} (e.g. consul://127.0.0.1:8500/prefix)")
    low = scheme.lower()
    if low in _REFUSED_SCHEMES:
        raise ValueError(f"{scheme}:// is not supported: {_REFUSED_SCHEMES[low]}")
    return f"{_SCHEME_ALIASES.get(low, scheme)}://{rest}"


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
    ttl_refresh: float = 0.0  # 0: ttl / 3 (Consul catalog TTL checks)
    resync: float = 0.0  # 0: only on (re)connect and store recovery
    deregister: str = "always"  # or "on-success"
    deregister_on_exit: bool = False
    cleanup: bool = False
    use_ip_from_label: str = ""
    retry_attempts: int = -1  # opening the store: -1 forever, 0 once, N retries
    retry_interval: float = 0.0  # 0: exponential backoff up to max_backoff
    docker_host: str = ""
    log_format: str = "text"
    log_level: str = "INFO"
    metrics_addr: str = ""
    consul_catalog: bool = False
    deregister_critical_after: float = 60.0
    workers: int = 4
    ping_interval: float = 5.0
    max_backoff: float = 30.0


def _duration_arg(unit: str = "s") -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            return parse_duration(text, unit)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = "duration"
    return convert


def _int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


# (flag, kind, default, help, registrator's spelling or ""); booleans are switches, written
# `--flag`/`--no-flag` or, as registrator writes them, `-flag` and `-flag=false`.
_OPTIONS: list[tuple[str, str, object, str, str]] = [
    ("store", "str", None,
     "store URL (default: $PYKV_STORE, else the embedded sqlite store); or give it as the "
     "positional REGISTRY_URL", ""),
    ("prefix", "str", DEFAULT_PREFIX, "key prefix of the endpoints in the store", ""),
    ("node", "str", "", "node name in ids and entries (default: the Docker engine's name)", ""),
    ("ip", "str", "",
     "address to publish for every port (default: the bound host IP, else this host's "
     "primary address)", "-ip"),
    ("internal", "bool", False, "publish every exposed port at the container's own IP",
     "-internal"),
    ("network", "str", "",
     "with --internal: the network whose IP is used (default: first by name)", ""),
    ("explicit", "bool", False, "only publish containers that set SERVICE_NAME", "-explicit"),
    ("tags", "str", "", "comma-separated tags added to every endpoint", "-tags"),
    ("ttl", "duration", 30.0,
     "TTL of the entries, kept alive while running (0: persistent)", "-ttl"),
    ("ttl-refresh", "duration", 0.0,
     "with --consul-catalog: how often TTL checks are passed (default ttl/3); must be below "
     "--ttl. The store renews TTL entries by itself", "-ttl-refresh"),
    ("resync", "duration", 0.0, "reconcile with Docker and the store every so often (0: off)",
     "-resync"),
    ("deregister", "choice", "always", "withdraw on stop/die: always, or on-success (exit 0)",
     "-deregister"),
    ("deregister-on-exit", "bool", False, "withdraw this node's entries when stopping", ""),
    ("cleanup", "bool", False, "remove this node's entries whose container is gone",
     "-cleanup"),
    ("use-ip-from-label", "str", "",
     "publish the address in this container label (e.g. a macvlan IP) instead of the host's",
     "-useIpFromLabel"),
    ("retry-attempts", "int", -1,
     "attempts to reach the store at start beyond the first (-1: forever); then exit 5",
     "-retry-attempts"),
    ("retry-interval", "duration", 0.0,
     "fixed wait between those attempts (default: exponential backoff up to 30 s); "
     "registrator's -retry-interval is in milliseconds", ""),
    ("docker-host", "str", "", "Docker endpoint (default: $DOCKER_HOST, else the local socket)",
     ""),
    ("log-format", "choice", "text", "text or json (one JSON object per line)", ""),
    ("log-level", "choice", "INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL", ""),
    ("metrics-addr", "str", "", "HOST:PORT serving /metrics (Prometheus) and /healthz", ""),
    ("consul-catalog", "bool", False, "also register Consul agent services with TTL checks", ""),
    ("deregister-critical-after", "duration", 60.0,
     "with --consul-catalog: Consul removes a service critical for this long", ""),
    ("workers", "int", 4, "parallel container handlers (events of one container stay in order)",
     ""),
]  # fmt: skip
_CHOICES = {
    "deregister": ("always", "on-success"),
    "log-format": ("text", "json"),
    "log-level": LOG_LEVELS,
}
_BOOLS = {flag for flag, kind, *_ in _OPTIONS if kind == "bool"}
_BOOL_SPELLINGS = {alias: flag for flag, kind, *_, alias in _OPTIONS if kind == "bool" and alias}
_BOOL_SPELLINGS.update({"--" + flag: flag for flag in _BOOLS})


def build_parser(prog: str = "pykv-registrar") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,
        description="Publish the Docker containers of this host into a pykv store, as TTL "
        "entries kept alive while the registrar runs. Every flag can also be set by an "
        f"environment variable {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}TTL=10s). Registrator's "
        "flags are accepted in registrator's spelling (-ttl 30, -internal, -cleanup=false).",
        epilog="Needs the registrar extra: pip install 'pykvstore[registrar]'. Exit status: 0 "
        "stopped, 2 bad option, 5 store unreachable after --retry-attempts, 6 missing extra.",
    )
    parser.add_argument(
        "registry_url", nargs="?", default=None, metavar="REGISTRY_URL",
        help="the store, as registrator takes it: consul://host:8500/prefix, etcd://..., "
        "zookeeper://... (consulkv:// and consul-tls:// are read as consul:// and "
        "consul+tls://); the path is the store's prefix",
    )  # fmt: skip
    for flag, kind, _default, help_text, alias in _OPTIONS:
        names = ["--" + flag, *([alias] if alias else [])]
        if kind == "bool":
            parser.add_argument(
                *names, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif kind == "choice":
            upper: Callable[[str], str] = str.upper if flag == "log-level" else str
            parser.add_argument(
                *names, choices=_CHOICES[flag], default=None, help=help_text, type=upper
            )
        elif kind == "duration":
            parser.add_argument(*names, type=_duration_arg(), default=None, help=help_text)
        elif kind == "int":
            parser.add_argument(*names, type=_int_arg, default=None, help=help_text)
        else:
            parser.add_argument(*names, default=None, help=help_text)
    parser.add_argument(
        "-retry-interval", dest="retry_interval", type=_duration_arg("ms"), default=None,
        help=argparse.SUPPRESS,  # registrator's spelling, in milliseconds
    )  # fmt: skip
    return parser


def _expand_bools(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Go's ``-flag=true|false`` for switches, as ``--flag`` / ``--no-flag``."""
    out: list[str] = []
    for n, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[n:])
        name, sep, value = arg.partition("=")
        flag = _BOOL_SPELLINGS.get(name) if sep else None
        if flag is None:
            out.append(arg)
            continue
        try:
            on = parse_bool(value)
        except ValueError:
            parser.error(f"{name}: {value!r} is not true or false")
        out.append(("--" if on else "--no-") + flag)
    return out


def _from_env(
    flag: str, kind: str, env: Mapping[str, str], parser: argparse.ArgumentParser
) -> object:
    env_name = ENV_PREFIX + flag.replace("-", "_").upper()
    raw = env.get(env_name)
    if raw is None or raw.strip() == "":
        return None
    try:
        if kind == "bool":
            return parse_bool(raw)
        if kind == "duration":
            return parse_duration(raw)
        if kind == "int":
            return int(raw)
    except ValueError as exc:
        parser.error(f"{env_name}: {exc}")
    value = raw.strip()
    if kind == "choice":
        value = value.upper() if flag == "log-level" else value
        if value not in _CHOICES[flag]:
            parser.error(f"{env_name} must be one of {', '.join(_CHOICES[flag])}, not {raw!r}")
    return value


def _check(values: dict[str, object], parser: argparse.ArgumentParser) -> None:
    """Cross-checks and the values argparse cannot check alone."""
    ttl = float(values["ttl"])  # type: ignore[arg-type]
    refresh = float(values["ttl_refresh"])  # type: ignore[arg-type]
    if refresh and not ttl:
        parser.error("--ttl-refresh needs a --ttl")
    if refresh and refresh >= ttl:
        parser.error(f"--ttl-refresh ({refresh:g} s) must be below --ttl ({ttl:g} s)")
    if int(values["workers"]) < 1:  # type: ignore[call-overload]
        parser.error("--workers must be >= 1")
    if int(values["retry_attempts"]) < -1:  # type: ignore[call-overload]
        parser.error("--retry-attempts must be -1 (forever), 0 or more")
    try:
        values["prefix"] = normalize_prefix(str(values["prefix"]))
    except InvalidKeyError as exc:
        parser.error(f"--prefix: {exc}")
    node = str(values["node"])
    if "/" in node or any(ord(c) < 0x20 or ord(c) == 0x7F for c in node) or len(node) > 128:
        parser.error(f"--node {node[:40]!r}: at most 128 characters, no '/' or controls")
    if values["metrics_addr"]:
        try:
            parse_metrics_addr(str(values["metrics_addr"]))
        except ValueError as exc:
            parser.error(f"--metrics-addr: {exc}")
    label = str(values["use_ip_from_label"])
    if label != label.strip() or "=" in label:
        parser.error(f"--use-ip-from-label: not a label name: {label!r}")


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from ``argv`` and ``environ`` (default: the process's). Exits on bad input."""
    env = os.environ if environ is None else environ
    parser = build_parser()
    raw = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(_expand_bools(raw, parser))
    values: dict[str, object] = {}
    for flag, kind, default, _help, _alias in _OPTIONS:
        attr = flag.replace("-", "_")
        value = getattr(args, attr)
        if value is None:
            value = _from_env(flag, kind, env, parser)
        values[attr] = default if value is None else value
    if args.registry_url is not None:
        if args.store is not None:
            parser.error("give the store either as REGISTRY_URL or as --store, not both")
        try:
            values["store"] = registry_url(args.registry_url)
        except ValueError as exc:
            parser.error(f"REGISTRY_URL: {exc}")
    if values["store"] is None:
        values["store"] = default_store_url()  # honours PYKV_STORE
    if not values["docker_host"]:
        values["docker_host"] = env.get("DOCKER_HOST", "")
    _check(values, parser)
    tags = str(values.pop("tags") or "")
    values["log_level"] = str(values["log_level"]).upper()
    return Settings(tags=tuple(t.strip() for t in tags.split(",") if t.strip()), **values)  # type: ignore[arg-type]
