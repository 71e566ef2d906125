"""pykv: one key-value, watch and lock interface over Consul, etcd, ZooKeeper and embedded stores.

    import pykv

    with pykv.open_store("sqlite:///kv.db") as store:
        store.put("config/mode", "fast")
        pair = store.get("config/mode")          # KVPair(key='config/mode', value=b'fast', ...)
        store.atomic_put("config/mode", "safe", pair)
        with store.lock("jobs/nightly", ttl=10) as lock:
            run_job(fencing_token=lock.token)

See :class:`pykv.Store` for the contract every backend follows.
"""

from ._defaults import default_store_url
from ._errors import (
    ConfigurationError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidRevisionError,
    InvalidTypeError,
    InvalidURLError,
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
    LockError,
    LockLostError,
    NotSupportedError,
    OperationTimeoutError,
    PermissionDeniedError,
    PyKVError,
    UnavailableError,
    UnknownBackendError,
    WatchClosedError,
    WatchTimeoutError,
)
from ._options import StoreOptions, TLSOptions
from ._registry import available_backends, load_backend, open_store
from ._store import Capability, KVPair, Lock, Store, TreeChange, Watch
from ._url import Host, StoreURL
from ._version import __version__

__all__ = [
    "Capability",
    "ConfigurationError",
    "Host",
    "InvalidArgumentError",
    "InvalidKeyError",
    "InvalidRevisionError",
    "InvalidTypeError",
    "InvalidURLError",
    "KVPair",
    "KeyExistsError",
    "KeyModifiedError",
    "KeyNotFoundError",
    "Lock",
    "LockError",
    "LockLostError",
    "NotSupportedError",
    "OperationTimeoutError",
    "PermissionDeniedError",
    "PyKVError",
    "Store",
    "StoreOptions",
    "StoreURL",
    "TLSOptions",
    "TreeChange",
    "UnavailableError",
    "UnknownBackendError",
    "Watch",
    "WatchClosedError",
    "WatchTimeoutError",
    "__version__",
    "available_backends",
    "default_store_url",
    "load_backend",
    "open_store",
]
