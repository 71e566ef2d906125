"""The whole pykv contract against a real single-server Consul (fixture: consul_url)."""

import pytest

from pykv.testing import AsyncTests, ConformanceTests, FuzzTests, RecipeTests

pytestmark = [pytest.mark.integration, pytest.mark.consul]


class TestConsulStore(ConformanceTests):
    @pytest.fixture
    def store_url(self, consul_url: str) -> str:
        return consul_url


class TestConsulRecipesAndAsync(RecipeTests, AsyncTests):
    @pytest.fixture
    def store_url(self, consul_url: str) -> str:
        return consul_url


class TestConsulFuzz(FuzzTests):  # the fuzz suite, with fewer examples over the network
    fuzz_examples = 25
    store_url = TestConsulStore.store_url
