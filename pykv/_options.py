"""Typed store options.

Each backend declares one frozen dataclass of options, derived from :class:`StoreOptions`.
Values come from the URL's query string and from keyword arguments to ``open_store`` (keywords
win). Text from the query string is coerced to the field's type; an unknown option, or a value
that cannot be coerced, is a :class:`~pykv.ConfigurationError` naming the option.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ._errors import ConfigurationError
from ._url import SECRET_OPTIONS

__all__ = [
    "CREDENTIAL_OPTIONS",
    "DEFAULT_TIMEOUT",
    "MAX_TIMEOUT",
    "StoreOptions",
    "TLSOptions",
    "build_options",
    "cleartext_credentials",
]

DEFAULT_TIMEOUT = 10.0
#: The largest ``timeout`` option: a day. A call that may take longer is a hang; larger values
#: overflow the timers of SQLite, threads and client libraries.
MAX_TIMEOUT = 86400.0

OptionsT = TypeVar("OptionsT", bound="StoreOptions")

_TRUE = frozenset({"1", "true", "yes", "on"})
# An empty value is neither: ``verify=`` must not quietly mean "verify=false".
_FALSE = frozenset({"0", "false", "no", "off"})
#: Options that carry credentials: sent in clear text unless the store speaks TLS.
CREDENTIAL_OPTIONS = ("token", "username", "password")


@dataclass(frozen=True)
class StoreOptions:
    """Options every store takes.

    timeout: seconds every call may take before it fails (default 10).
    prefix: a key prefix (chroot) that scopes every key the store touches.
    """

    timeout: float = DEFAULT_TIMEOUT
    prefix: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The @dataclass decorator, applied after this runs, keeps a __repr__ already in the
        # class's own namespace: so every backend's options show their secrets masked.
        cls.__repr__ = StoreOptions.__repr__  # type: ignore[method-assign]

    def __post_init__(self) -> None:
        if not (
            isinstance(self.timeout, int | float)
            and not isinstance(self.timeout, bool)
            and math.isfinite(self.timeout)
            and 0 < self.timeout <= MAX_TIMEOUT
        ):
            raise ConfigurationError(
                f"option 'timeout' must be a number of seconds > 0 and <= {MAX_TIMEOUT:g}, "
                f"not {self.timeout!r}"
            )

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.masked().items())
        return f"{type(self).__qualname__}({fields})"

    def masked(self) -> dict[str, object]:
        """The options as a dict, secrets masked, for logs and ``repr``."""
        return {
            f.name: (
                "***"
                if f.name in SECRET_OPTIONS and getattr(self, f.name)
                else getattr(self, f.name)
            )
            for f in dataclasses.fields(self)
        }


@dataclass(frozen=True)
class TLSOptions(StoreOptions):
    """Options of network stores that speak TLS (``scheme+tls://`` or ``?tls=true``).

    ca: CA bundle file to verify the server; cert/key: client certificate and key files;
    verify: set false only for testing against self-signed servers.

    ca, cert and key need TLS, key needs cert, and verify=false contradicts ca: each mistake is
    a :class:`~pykv.ConfigurationError`, so a URL never silently falls back to clear text or to
    an unverified server.
    """

    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        files = [name for name in ("ca", "cert", "key") if getattr(self, name) is not None]
        if files and not self.tls:
            raise ConfigurationError(
                f"option{'s' if len(files) > 1 else ''} {', '.join(map(repr, files))} "
                f"need{'' if len(files) > 1 else 's'} TLS, which this store was not asked to "
                "speak: use a '+tls' scheme (e.g. etcd+tls://) or tls=true"
            )
        if self.key is not None and self.cert is None:
            raise ConfigurationError("option 'key' needs 'cert' (the client certificate)")
        if self.ca is not None and not self.verify:
            raise ConfigurationError(
                "options 'ca' and 'verify=false' contradict each other: a CA bundle is only "
                "used to verify the server; drop one of them"
            )

    def check_files(self, where: object) -> None:
        """Raise :class:`~pykv.ConfigurationError` naming the first of ca/cert/key that is not
        a file: at open, rather than as a failed handshake on every connection attempt."""
        for name in ("ca", "cert", "key"):
            file = getattr(self, name)
            if file is not None and not os.path.isfile(file):
                raise ConfigurationError(f"{where}: option {name!r}: no such file {file!r}")


def cleartext_credentials(options: StoreOptions) -> list[str]:
    """The credential options (token, username, password) that ``options`` would send
    without TLS: empty when there are none or the store speaks TLS."""
    if isinstance(options, TLSOptions) and options.tls:
        return []
    return [name for name in CREDENTIAL_OPTIONS if getattr(options, name, None)]


def _coerce(name: str, tp: Any, value: object) -> object:
    """Coerce ``value`` (text from a URL, or a Python object) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _coerce(name, args[0], value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigurationError(f"option {name!r} must be true or false, not {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigurationError(f"option {name!r} must be a number, not {value!r}")
        if isinstance(value, int | float):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
        raise ConfigurationError(f"option {name!r} must be a number, not {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if hasattr(value, "__fspath__"):
            return str(value)
        raise ConfigurationError(f"option {name!r} must be text, not {type(value).__name__}")
    return value


def build_options(
    cls: type[OptionsT], scheme: str, query: Mapping[str, str], overrides: Mapping[str, object]
) -> OptionsT:
    """Build the backend's options from the URL query and keyword overrides (keywords win)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
    merged: dict[str, object] = {**query, **overrides}
    unknown = sorted(set(merged) - set(fields))
    if unknown:
        raise ConfigurationError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for {scheme}:// stores; known options: {', '.join(sorted(fields))}"
        )
    values = {name: _coerce(name, fields[name], value) for name, value in merged.items()}
    try:
        return cls(**values)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigurationError(f"invalid options for {scheme}:// stores: {exc}") from exc
