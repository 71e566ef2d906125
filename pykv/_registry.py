"""Backends by URL scheme, found lazily through the ``pykv.backends`` entry-point group.

Only the entry point named like the scheme asked for is loaded: opening a ``sqlite://`` store
never imports the Consul driver. Two distributions claiming one scheme is an error naming both.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ._errors import ConfigurationError, NotSupportedError, UnknownBackendError
from ._options import build_options, cleartext_credentials
from ._store import Capability, Store
from ._url import StoreURL

__all__ = ["ENTRY_POINT_GROUP", "available_backends", "load_backend", "open_store"]

log = logging.getLogger("pykv")

ENTRY_POINT_GROUP = "pykv.backends"

#: Schemes of the backends the pykv project ships, and the distribution that provides each.
KNOWN_DISTRIBUTIONS: Mapping[str, str] = {
    "memory": "pykvstore",
    "sqlite": "pykvstore",
    "consul": "pykvstore-consul",
    "etcd": "pykvstore-etcd",
    "etcd3": "pykvstore-etcd",
    "etcd2": "pykvstore-etcd",
    "zookeeper": "pykvstore-zookeeper",
    "zk": "pykvstore-zookeeper",
}
# The import name is pykv, but "pykv" on the package index is an unrelated project.
_EXTRAS = {
    "pykvstore-consul": "consul",
    "pykvstore-etcd": "etcd",
    "pykvstore-zookeeper": "zookeeper",
}


def _entry_points(name: str | None = None) -> list[importlib.metadata.EntryPoint]:
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    found = list(eps) if name is None else [ep for ep in eps if ep.name == name]
    # The same distribution can be visible twice (e.g. an editable install and a path entry).
    unique: dict[tuple[str, str], importlib.metadata.EntryPoint] = {}
    for ep in found:
        unique.setdefault((ep.name, ep.value), ep)
    return list(unique.values())


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else "?"


def load_backend(scheme: str) -> type[Store]:
    """The store class registered for ``scheme`` (without a ``+variant``)."""
    eps = _entry_points(scheme)
    if not eps:
        known = sorted({ep.name for ep in _entry_points()} | set(KNOWN_DISTRIBUTIONS))
        msg = f"no pykv backend is installed for the scheme {scheme!r}"
        if scheme in KNOWN_DISTRIBUTIONS:
            dist = KNOWN_DISTRIBUTIONS[scheme]
            extra = _EXTRAS.get(dist)
            msg += f"; install it with: pip install {dist}"
            if extra:
                msg += f"  (or pip install 'pykvstore[{extra}]')"
        else:
            close = difflib.get_close_matches(scheme, known, n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
            msg += f"; known schemes: {', '.join(known)}"
        raise UnknownBackendError(msg)
    if len(eps) > 1:
        claims = ", ".join(f"{_dist_name(ep)} ({ep.value})" for ep in eps)
        raise ConfigurationError(
            f"several installed distributions claim the scheme {scheme!r}: {claims}; "
            "uninstall all but one"
        )
    try:
        cls = eps[0].load()
    except ImportError as exc:
        raise UnknownBackendError(
            f"the backend for {scheme!r} ({_dist_name(eps[0])}) failed to import: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Store)):
        raise ConfigurationError(
            f"the entry point {scheme!r} of {_dist_name(eps[0])} is not a pykv Store class"
        )
    return cls


def available_backends() -> dict[str, type[Store] | Exception]:
    """Every registered scheme and its store class (or the error loading it raised)."""
    out: dict[str, type[Store] | Exception] = {}
    for name in sorted({ep.name for ep in _entry_points()}):
        try:
            out[name] = load_backend(name)
        except Exception as exc:  # noqa: BLE001  (shown in `pykv backends`, never raised)
            out[name] = exc
    return out


def open_store(
    url: str | StoreURL,
    *,
    require: Iterable[Capability | str] = (),
    **options: Any,
) -> Store:
    """Open the store at ``url``. The result is a new object and a context manager.

    ``url`` examples: ``sqlite:///kv.db``, ``memory://jobs``, ``consul://127.0.0.1:8500/app``,
    ``etcd://h1:2379,h2:2379/app``, ``zk://h1:2181/app``. Options come from the query string
    and from keyword arguments (keywords win): every backend takes ``timeout`` (seconds, default
    10) and ``prefix``; see each backend's documentation for the rest. ``require`` lists
    capabilities the backend must declare, else :class:`~pykv.NotSupportedError` is raised.
    """
    parsed = url if isinstance(url, StoreURL) else StoreURL.parse(url)
    cls = load_backend(parsed.scheme)
    wanted = set()
    for c in [require] if isinstance(require, str) else require:
        try:
            wanted.add(Capability(c))
        except ValueError:
            raise ConfigurationError(
                f"require= names the unknown capability {c!r}; capabilities are "
                f"{', '.join(str(k) for k in Capability)}"
            ) from None
    missing = wanted - cls.capabilities
    if missing:
        raise NotSupportedError(
            f"{parsed.scheme}:// stores lack the required capabilities "
            f"{', '.join(sorted(str(c) for c in missing))} (they have "
            f"{', '.join(sorted(str(c) for c in cls.capabilities))})"
        )
    query = dict(parsed.query)
    if parsed.variant is not None:
        if parsed.variant != "tls":
            raise ConfigurationError(
                f"unknown scheme variant {parsed.full_scheme!r}; the only variant is '+tls'"
            )
        query["tls"] = "true"
    # What the URL itself says, unless an option overrides it: the path is the key prefix
    # (except for file-based stores) and user:password@ are the credentials.
    fields = {f.name for f in dataclasses.fields(cls.options_class)}
    given = set(query) | set(options)
    if cls.url_path_is_prefix and parsed.path and "prefix" not in given:
        query["prefix"] = parsed.path
    for name, value in (("username", parsed.username), ("password", parsed.password)):
        if value is not None and name in fields and name not in given:
            query[name] = value
    opts = build_options(cls.options_class, parsed.scheme, query, options)
    cleartext = cleartext_credentials(opts)
    if cleartext:  # before the store connects and sends them
        log.warning(
            "%s sends its credentials (%s) in clear text: anyone on the network path can read "
            "them; use %s+tls:// or tls=true",
            parsed,
            ", ".join(cleartext),
            parsed.scheme,
        )
    store = cls(parsed, opts)
    log.debug("opened %s", store)
    return store
