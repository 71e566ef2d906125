"""The pykv conformance suite: the contract as tests, shipped so every backend runs the same.

A backend's conformance module is a fixture and a few lines::

    import pytest
    from pykv.testing import ConformanceTests

    class TestMyStore(ConformanceTests):
        @pytest.fixture
        def store_url(self) -> str:
            return "mystore://127.0.0.1:1234"

Each test opens its stores below its own random prefix and deletes that tree afterwards. The
classes are grouped by capability (:class:`KeyValueTests`, :class:`ListTests`,
:class:`AtomicTests`, :class:`WatchTests`, :class:`WatchTreeTests`,
:class:`ResumeWatchTests`, :class:`TTLTests`, :class:`LockTests`, :class:`MultiClientTests`);
a test needing a capability the backend does not declare is skipped with that reason, while a
declared capability that fails is a failure.

Class attributes tune the suite for a backend: ``ttl`` (seconds used for TTL keys and locks)
and ``extra_slack`` (seconds added to the backend's declared ``ttl_slack`` in waits).
Override ``force_compaction(store)`` where the backend's change history can be forgotten on
demand, so the resync rule of ``watch(since=)`` is tested (skipped otherwise).
"""

import pytest

pytest.register_assert_rewrite("pykv.testing._suite", "pykv.testing._support")

from ._suite import (  # noqa: E402
    AtomicTests,
    BaseStoreTests,
    ConformanceTests,
    KeyValueTests,
    ListTests,
    LockTests,
    MultiClientTests,
    ResumeWatchTests,
    TTLTests,
    WatchTests,
    WatchTreeTests,
)
from ._support import ChildProcess, drain_until, wait_until  # noqa: E402

__all__ = [
    "AtomicTests",
    "BaseStoreTests",
    "ChildProcess",
    "ConformanceTests",
    "KeyValueTests",
    "ListTests",
    "LockTests",
    "MultiClientTests",
    "ResumeWatchTests",
    "TTLTests",
    "WatchTests",
    "WatchTreeTests",
    "drain_until",
    "wait_until",
]
