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

:class:`FuzzTests` fuzzes keys, prefixes and values with hypothesis (which it needs; imported
only when it is used); subclass it the same way and set ``fuzz_examples`` to taste.

Override ``force_compaction(store)`` where the backend's change history can be forgotten on
demand, so the resync rule of ``watch(since=)`` is tested (skipped otherwise).
"""

from typing import TYPE_CHECKING, Any

import pytest

pytest.register_assert_rewrite("pykv.testing._suite", "pykv.testing._support")
pytest.register_assert_rewrite("pykv.testing._recipes", "pykv.testing._aio")

from ._aio import AsyncTests  # noqa: E402
from ._recipes import RecipeTests  # noqa: E402
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

if TYPE_CHECKING:
    from ._fuzz import FuzzTests

__all__ = [
    "AsyncTests",
    "AtomicTests",
    "BaseStoreTests",
    "ChildProcess",
    "ConformanceTests",
    "FuzzTests",
    "KeyValueTests",
    "ListTests",
    "LockTests",
    "MultiClientTests",
    "RecipeTests",
    "ResumeWatchTests",
    "TTLTests",
    "WatchTests",
    "WatchTreeTests",
    "drain_until",
    "wait_until",
]


def __getattr__(name: str) -> Any:
    # FuzzTests needs hypothesis: import it only for those who use it.
    if name == "FuzzTests":
        from ._fuzz import FuzzTests

        return FuzzTests
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
