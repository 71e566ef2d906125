"""The conformance suite on the embedded stores (no network: they run with the unit tests)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from pykv.testing import ConformanceTests


class TestMemoryStore(ConformanceTests):
    @pytest.fixture
    def store_url(self) -> str:
        return f"memory://conformance-{uuid.uuid4().hex}"


class TestSQLiteStore(ConformanceTests):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/conformance.db"
