"""The whole pykv contract against a real single-server Consul (fixture: consul_url)."""

import pytest

from pykv.testing import AsyncTests, ConformanceTests, RecipeTests

pytestmark = [pytest.mark.integration, pytest.mark.consul]


class TestConsulStore(ConformanceTests):
    @pytest.fixture
    def store_url(self, consul_url: str) -> str:
        return consul_url


class TestConsulRecipesAndAsync(RecipeTests, AsyncTests):
    @pytest.fixture
    def store_url(self, consul_url: str) -> str:
        return consul_url
