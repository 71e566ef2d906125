"""Store URLs: an immutable, parsed form with secrets masked when shown.

``scheme[+variant]://[user[:password]@]host[:port][,host[:port]...][/path][?option=value&...]``

Several hosts are split host by host (IPv6 addresses in brackets). ``str(url)`` masks the
password and any secret query option (``token``, ``password``), so a URL can be logged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from urllib.parse import parse_qsl, quote, unquote

from ._errors import InvalidURLError

__all__ = ["SECRET_OPTIONS", "Host", "StoreURL"]

#: Query options whose values are masked in ``str()`` and logs.
SECRET_OPTIONS = frozenset({"password", "token", "secret"})
_MASK = "***"
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9.-]*(\+[a-z][a-z0-9.-]*)?$")


@dataclass(frozen=True)
class Host:
    """One ``host[:port]`` of a URL; ``port`` is ``None`` when the URL leaves it out."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def with_default_port(self, port: int) -> Host:
        return self if self.port is not None else Host(self.host, port)


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL. Immutable; build one with :meth:`parse`."""

    scheme: str
    variant: str | None = None
    hosts: tuple[Host, ...] = ()
    path: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    query: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def parse(cls, url: str) -> StoreURL:
        """Parse ``url``; raise :class:`InvalidURLError` naming what is wrong."""
        if not isinstance(url, str):
            raise InvalidURLError(f"a store URL must be a str, not {type(url).__name__}")
        shown = _mask_raw(url)
        scheme_part, sep, rest = url.partition("://")
        if not sep:
            raise InvalidURLError(
                f"{shown!r} is not a store URL: expected scheme://..., e.g. sqlite:///kv.db"
            )
        full_scheme = scheme_part.lower()
        if not _SCHEME_RE.match(full_scheme):
            raise InvalidURLError(f"{shown!r} has an invalid scheme {scheme_part!r}")
        scheme, _, variant = full_scheme.partition("+")
        rest, _, fragment = rest.partition("#")
        if fragment:
            raise InvalidURLError(f"{shown!r}: a store URL has no #fragment")
        rest, _, raw_query = rest.partition("?")
        netloc, slash, path = rest.partition("/")
        userinfo, at, hostlist = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, pw = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(pw) if colon else None
        # A password with an unencoded '/' or '@' splits the URL in odd places: then no part of
        # it may be echoed in an error, not even as a "port".
        secret_risk = "@" in url
        hosts = (
            tuple(_parse_host(h, shown, secret_risk) for h in hostlist.split(","))
            if hostlist
            else ()
        )
        query: dict[str, str] = {}
        try:
            pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=bool(raw_query))
        except ValueError as exc:
            raise InvalidURLError(f"{shown!r} has a malformed query string") from exc
        for key, value in pairs:
            if key in query:
                raise InvalidURLError(f"{shown!r} sets the option {key!r} twice")
            query[key] = value
        return cls(
            scheme=scheme,
            variant=variant or None,
            hosts=hosts,
            path=unquote(path) if slash else "",
            username=username,
            password=password,
            query=MappingProxyType(query),
        )

    @property
    def full_scheme(self) -> str:
        return f"{self.scheme}+{self.variant}" if self.variant else self.scheme

    @property
    def netloc(self) -> str:
        """The host list as written, e.g. ``h1:2379,h2:2379``."""
        return ",".join(str(h) for h in self.hosts)

    def replace(self, **changes: object) -> StoreURL:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def render(self, *, mask: bool = True) -> str:
        """The URL as text; secrets masked unless ``mask=False``."""
        out = f"{self.full_scheme}://"
        if self.username is not None or self.password is not None:
            out += quote(self.username or "", safe="")
            if self.password is not None:
                out += ":" + (_MASK if mask else quote(self.password, safe=""))
            out += "@"
        out += self.netloc
        if self.path or self.scheme == "sqlite":
            out += "/" + quote(self.path, safe="/:")
        if self.query:
            out += "?" + "&".join(
                f"{quote(k, safe='')}="
                + (_MASK if mask and k in SECRET_OPTIONS else quote(v, safe="/:"))
                for k, v in self.query.items()
            )
        return out

    def __str__(self) -> str:
        return self.render(mask=True)

    def __repr__(self) -> str:
        return f"StoreURL({str(self)!r})"


def _parse_host(text: str, shown: str, secret_risk: bool = False) -> Host:
    """One ``host[:port]``. With ``secret_risk`` (the URL has credentials) errors name no part
    of ``text``: a password with an unencoded '/' or '@' may have landed in it."""
    hint = " (percent-encode '/', '@' and ':' in credentials)" if secret_risk else ""

    def say(part: str) -> str:
        return "" if secret_risk else f" {part!r}"

    if not text:
        raise InvalidURLError(f"{shown!r} has an empty host in its host list")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise InvalidURLError(f"{shown!r}: unclosed '[' in host{say(text)}{hint}")
        host, tail = text[1:end], text[end + 1 :]
        if tail and not tail.startswith(":"):
            raise InvalidURLError(f"{shown!r}: unexpected{say(tail)} after host{say(text)}{hint}")
        port_text = tail[1:] if tail else None
    else:
        host, colon, port_text_raw = text.partition(":")
        port_text = port_text_raw if colon else None
        if ":" in port_text_raw:
            raise InvalidURLError(
                f"{shown!r}: IPv6 host{say(text)} must be written in [brackets]{hint}"
            )
    if not host:
        raise InvalidURLError(f"{shown!r} has an empty host name in{say(text) or ' a host'}{hint}")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidURLError(
                f"{shown!r} has an invalid port{say(port_text)} for host{say(host)}{hint}"
            )
        port = int(port_text)
    return Host(host, port)


# user:password@ up to the last '@' before any query: a password may hold '/', '@' or '#'
# unencoded (over-masking a path with an '@' is the safe side of the trade).
_USERINFO_PW_RE = re.compile(r"(://[^/@:?#]*:)[^?]*@")
_QUERY_SECRET_RE = re.compile(r"([?&](?:" + "|".join(sorted(SECRET_OPTIONS)) + r")=)[^&#]*")


def _mask_raw(url: str) -> str:
    """Mask secrets in an unparsed URL for use in error messages."""
    url = _USERINFO_PW_RE.sub(lambda m: m.group(1) + _MASK + "@", url)
    return _QUERY_SECRET_RE.sub(lambda m: m.group(1) + _MASK, url)


def mask_url(url: str) -> str:
    """``url`` with its password and secret options masked, parsed or not."""
    return _mask_raw(url)
