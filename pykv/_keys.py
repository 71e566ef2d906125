"""Key rules: normalisation and validation, done before any I/O."""

from __future__ import annotations

import functools
import re

from ._errors import InvalidKeyError

__all__ = ["MAX_KEY_BYTES", "join", "normalize_key", "normalize_prefix", "to_bytes"]

MAX_KEY_BYTES = 1024


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_SEGMENT = re.compile(r"(?:^|/)(?:\.{1,2})?(?:/|$)")


def _check_segments(key: str, original: str, what: str) -> None:
    # Fast path first: keys are validated on every call, so this is on the hot path.
    if len(key) * 4 > MAX_KEY_BYTES and len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"{what} {original!r} is longer than {MAX_KEY_BYTES} bytes (UTF-8)")
    control = _CONTROL.search(key)
    if control:
        raise InvalidKeyError(
            f"{what} {original!r} contains the control character {control.group()!r}"
        )
    bad = _BAD_SEGMENT.search(key)
    if bad:
        segment = bad.group().strip("/")
        if segment:
            raise InvalidKeyError(f"{what} {original!r} has a {segment!r} segment")
        raise InvalidKeyError(f"{what} {original!r} has an empty segment ('//')")
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidKeyError(f"{what} {original!r} is not valid Unicode text") from exc


def normalize_key(key: str) -> str:
    """Return ``key`` without leading and trailing ``/``, or raise :class:`InvalidKeyError`.

    ``a/b``, ``/a/b`` and ``a/b/`` are the same key. The empty key is invalid.
    """
    if type(key) is not str:
        raise InvalidKeyError(f"a key must be a str, not {type(key).__name__}: {key!r}")
    return _normalize_key(key)


@functools.lru_cache(maxsize=8192)  # keys repeat; validation is on every call's path
def _normalize_key(key: str) -> str:
    stripped = key.strip("/")
    if stripped == "":
        raise InvalidKeyError(f"the key {key!r} is empty")
    _check_segments(stripped, key, "key")
    return stripped


def normalize_prefix(prefix: str) -> str:
    """Like :func:`normalize_key`, but the empty prefix (the whole store) is allowed."""
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"a prefix must be a str, not {type(prefix).__name__}: {prefix!r}")
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
    """A value as bytes: ``str`` is stored as its UTF-8 encoding."""
    if type(value) is bytes:  # the common case, first
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"a value must be bytes or str, not {type(value).__name__}")
