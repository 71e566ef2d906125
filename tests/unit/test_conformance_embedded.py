"""The conformance suite on the embedded stores (no network: they run with the unit tests)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from pykv import Store
from pykv._memory import HISTORY
from pykv.testing import ConformanceTests, FuzzTests


class TestMemoryStore(ConformanceTests):
    @pytest.fixture
    def store_url(self) -> str:
        return f"memory://conformance-{uuid.uuid4().hex}"

    def force_compaction(self, store: Store) -> None:
        # memory:// remembers the last HISTORY deletions: push the test's out of it
        for i in range(HISTORY):
            store.put(f"churn/{i}", b"x")
            store.delete(f"churn/{i}")


class TestSQLiteStore(ConformanceTests):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/conformance.db"


class TestMemoryFuzz(FuzzTests):
    @pytest.fixture
    def store_url(self) -> str:
        return f"memory://fuzz-{uuid.uuid4().hex}"


class TestSQLiteFuzz(FuzzTests):
    fuzz_examples = 100  # each example commits to disk

    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/fuzz.db"
