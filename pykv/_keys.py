"""Key rules: normalisation and validation, done before any I/O."""

from __future__ import annotations

import functools
import re
import unicodedata

from ._errors import InvalidArgumentError, InvalidKeyError, InvalidTypeError

__all__ = ["MAX_KEY_BYTES", "join", "normalize_key", "normalize_prefix", "shorten", "to_bytes"]

MAX_KEY_BYTES = 1024

#: Named in error messages: C0 controls, DEL and C1 controls, the line and paragraph
#: separators, and the bidi controls (embeddings, overrides, isolates).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
#: Beyond the Basic Multilingual Plane (emoji and other astral characters) and its "Specials"
#: block (U+FFF0-U+FFFF, with U+FFFC and U+FFFD): ZooKeeper refuses them in paths (Java stores
#: astral characters as surrogate pairs), so no backend takes them and keys mean the same on all.
_NOT_PORTABLE = re.compile("[\U00010000-\U0010ffff\ufff0-\uffff]")
_BAD_SEGMENT = re.compile(r"(?:^|/)(?:\.{1,2})?(?:/|$)")
#: Longer keys are validated without the cache: they are invalid (or mostly slashes), and a
#: cache entry must never pin megabytes of a rejected key.
_CACHED_MAX_CHARS = MAX_KEY_BYTES + 2
_SHOWN_CHARS = 60


def shorten(text: str) -> str:
    """``repr(text)``, cut to its first characters when long (error messages stay short)."""
    if len(text) <= _SHOWN_CHARS + 20:
        return repr(text)
    return f"{text[:_SHOWN_CHARS]!r}... ({len(text)} characters)"


def _check_segments(key: str, original: str, what: str) -> None:
    # Fast path first: keys are validated on every call, so this is on the hot path.
    if len(key) * 4 > MAX_KEY_BYTES and len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKeyError(
            f"{what} {shorten(original)} is longer than {MAX_KEY_BYTES} bytes (UTF-8)"
        )
    # A key is printable text: no character of the Unicode categories "Other" (controls,
    # format characters such as bidi controls and zero-width joiners, surrogates, private use,
    # unassigned) or "Separator" but the ASCII space. Invisible characters make a key show as
    # another one, and Consul's HTTP API refuses them (it writes them, but cannot read them).
    if not key.isprintable():
        control = _CONTROL.search(key)
        if control:
            raise InvalidKeyError(
                f"{what} {shorten(original)} contains the control character {control.group()!r}"
            )
        char = next(c for c in key if not c.isprintable())
        raise InvalidKeyError(
            f"{what} {shorten(original)} contains the unprintable character {char!r} "
            f"(U+{ord(char):04X}, Unicode category {unicodedata.category(char)})"
        )
    if not key.isascii():
        astral = _NOT_PORTABLE.search(key)
        if astral:
            char = astral.group()
            raise InvalidKeyError(
                f"{what} {shorten(original)} contains {char!r} (U+{ord(char):04X}): keys are "
                "limited to the Basic Multilingual Plane without its Specials block "
                "(U+FFF0-U+FFFF), the characters every backend can hold"
            )
    bad = _BAD_SEGMENT.search(key)
    if bad:
        segment = bad.group().strip("/")
        if segment:
            raise InvalidKeyError(f"{what} {shorten(original)} has a {segment!r} segment")
        raise InvalidKeyError(f"{what} {shorten(original)} has an empty segment ('//')")
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidKeyError(f"{what} {shorten(original)} is not valid Unicode text") from exc


def normalize_key(key: str) -> str:
    """Return ``key`` without leading and trailing ``/``, or raise :class:`InvalidKeyError`.

    ``a/b``, ``/a/b`` and ``a/b/`` are the same key. The empty key is invalid.
    """
    if type(key) is not str:
        raise InvalidKeyError(f"a key must be a str, not {type(key).__name__}")
    if len(key) > _CACHED_MAX_CHARS:
        return _check_key(key)
    return _normalize_key(key)


def _check_key(key: str) -> str:
    stripped = key.strip("/")
    if stripped == "":
        raise InvalidKeyError(f"the key {shorten(key)} is empty")
    _check_segments(stripped, key, "key")
    return stripped


_normalize_key = functools.lru_cache(maxsize=8192)(_check_key)  # keys repeat; on every call


def normalize_prefix(prefix: str) -> str:
    """Like :func:`normalize_key`, but the empty prefix (the whole store) is allowed."""
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"a prefix must be a str, not {type(prefix).__name__}")
    stripped = prefix.strip("/")
    if stripped == "":
        return ""
    _check_segments(stripped, prefix, "prefix")
    return stripped


def join(prefix: str, key: str) -> str:
    """Join a normalised prefix and key, either of which may be empty."""
    if not prefix:
        return key
    return f"{prefix}/{key}" if key else prefix


def to_bytes(value: bytes | bytearray | memoryview | str) -> bytes:
    """A value as bytes: ``str`` is stored as its UTF-8 encoding.

    Raises :class:`~pykv.InvalidTypeError` (a TypeError) for other types and
    :class:`~pykv.InvalidArgumentError` (a ValueError) for text that is not valid Unicode.
    """
    if type(value) is bytes:  # the common case, first
        return value
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgumentError(
                f"a str value must be valid Unicode text; position {exc.start} holds the lone "
                f"surrogate {value[exc.start]!r} (pass bytes for binary data)"
            ) from exc
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise InvalidTypeError(f"a value must be bytes or str, not {type(value).__name__}")
