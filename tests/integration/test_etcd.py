"""The conformance suite on the etcd v3 store (single node)."""

from __future__ import annotations

import pytest

from pykv.testing import AsyncTests, ConformanceTests, RecipeTests

pytestmark = [pytest.mark.integration, pytest.mark.etcd]


class TestEtcd(ConformanceTests):
    @pytest.fixture
    def store_url(self, etcd_url: str) -> str:
        return etcd_url


class TestEtcdRecipesAndAsync(RecipeTests, AsyncTests):
    @pytest.fixture
    def store_url(self, etcd_url: str) -> str:
        return etcd_url
