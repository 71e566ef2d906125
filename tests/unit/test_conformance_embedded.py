"""The conformance suite on the embedded stores (no network: they run with the unit tests)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from pykv.testing import ConformanceTests, FuzzTests


class TestMemoryStore(ConformanceTests):
    @pytest.fixture
    def store_url(self) -> str:
        return f"memory://conformance-{uuid.uuid4().hex}"


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
