"""The pykv exception tree.

Every error pykv raises derives from :class:`PyKVError`. A client library's exception never
reaches the user unwrapped: each driver maps its client's errors in one place to the most
specific class below and keeps the original as ``__cause__``::

    PyKVError
    ├── ConfigurationError          bad URL, option or environment; raised before any I/O
    │   ├── InvalidURLError         the URL cannot be parsed
    │   └── UnknownBackendError     no installed backend serves the URL's scheme
    ├── InvalidArgumentError        a bad argument (also a ValueError): a TTL or timeout that
    │   │                           is not a finite positive number within bounds, bad text
    │   ├── InvalidKeyError         the key breaks the key rules; raised before any I/O
    │   ├── InvalidRevisionError    a watch's ``since`` is not an int >= 0 (also a TypeError)
    │   └── InvalidTypeError        an argument of the wrong type (also a TypeError)
    ├── KeyNotFoundError            get/list/atomic_* on a key that does not exist
    ├── KeyExistsError              atomic_put(previous=None) on a key that exists
    ├── KeyModifiedError            atomic_* whose previous revision is stale
    ├── NotSupportedError           the backend cannot do this (see its capabilities)
    ├── UnavailableError            the backend cannot be reached or refused the call
    │   └── OperationTimeoutError   the call did not finish within the store's timeout
    ├── WatchTimeoutError           ``Watch.get(timeout=)``: no event yet (also a TimeoutError);
    │                               never raised for a watch that failed
    ├── PermissionDeniedError       wrong or missing credentials, or access denied
    ├── LockError                   misuse of a lock (release when not held, double acquire)
    │   └── LockLostError           the lock was lost while it was believed held
    └── WatchClosedError            ``Watch.get`` on a watch that was closed
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "InvalidRevisionError",
    "InvalidTypeError",
    "InvalidURLError",
    "KeyExistsError",
    "KeyModifiedError",
    "KeyNotFoundError",
    "LockError",
    "LockLostError",
    "NotSupportedError",
    "OperationTimeoutError",
    "PermissionDeniedError",
    "PyKVError",
    "UnavailableError",
    "UnknownBackendError",
    "WatchClosedError",
    "WatchTimeoutError",
]


class PyKVError(Exception):
    """Base class of every error pykv raises."""


class ConfigurationError(PyKVError):
    """A URL, option or environment setting is wrong. Raised before any I/O."""


class InvalidURLError(ConfigurationError):
    """A store URL cannot be parsed."""


class UnknownBackendError(ConfigurationError):
    """No installed backend serves a URL scheme."""


class InvalidArgumentError(PyKVError, ValueError):
    """An argument has a bad value: a TTL or timeout that is not a finite positive number within
    bounds, text that cannot be encoded as UTF-8. Also a :class:`ValueError`."""


class InvalidKeyError(InvalidArgumentError):
    """A key breaks the key rules (empty, ``..`` segment, control character, too long)."""


class InvalidRevisionError(InvalidArgumentError, TypeError):
    """A revision argument (a watch's ``since``) is not an int >= 0. Raised before any I/O;
    it is a :class:`ValueError` for a negative int and a :class:`TypeError` for a non-int."""


class InvalidTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong type (a value that is not bytes or str, a ``previous`` that is
    not a KVPair). Also a :class:`TypeError`."""


class KeyNotFoundError(PyKVError, KeyError):
    """The key does not exist."""

    def __str__(self) -> str:  # KeyError's repr-quoting would garble the message
        return str(self.args[0]) if self.args else "key not found"


class KeyExistsError(PyKVError):
    """A create-only write found the key already present."""


class KeyModifiedError(PyKVError):
    """A compare-and-swap found a revision other than the expected one."""


class NotSupportedError(PyKVError):
    """The backend cannot perform this operation."""


class UnavailableError(PyKVError):
    """The backend cannot be reached, or it failed the call."""


class OperationTimeoutError(UnavailableError, TimeoutError):
    """The call did not finish within the store's timeout."""


class PermissionDeniedError(PyKVError):
    """The backend rejected the credentials, or they do not allow the call."""


class LockError(PyKVError):
    """A lock was used wrongly: released when not held, or acquired twice by one object."""


class LockLostError(LockError):
    """A lock was lost (session expired, key deleted, backend gone) while believed held."""


class WatchClosedError(PyKVError):
    """The watch was closed; no more events will come."""


class WatchTimeoutError(PyKVError, TimeoutError):
    """``Watch.get(timeout=...)`` saw no event within the timeout; the watch goes on.

    A watch that *failed* never raises this (nor any other :class:`TimeoutError`): a failure
    that was a timeout is raised as :class:`UnavailableError` with the timeout as its cause, so
    a loop that retries on :class:`TimeoutError` ends with the error instead of spinning.
    """
