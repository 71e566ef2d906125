"""The conformance suite on the etcd v3 store (single node)."""

from __future__ import annotations

import pytest
from pyetcd import etcdrpc
from pykv_etcd._v3 import EtcdStore

from pykv import Store
from pykv.testing import AsyncTests, ConformanceTests, FuzzTests, RecipeTests

pytestmark = [pytest.mark.integration, pytest.mark.etcd]


class TestEtcd(ConformanceTests):
    @pytest.fixture
    def store_url(self, etcd_url: str) -> str:
        return etcd_url

    def force_compaction(self, store: Store) -> None:
        assert isinstance(store, EtcdStore)
        head = store._call("head", "Range", etcdrpc.RangeRequest(key=b"\0", keys_only=True))
        request = etcdrpc.CompactionRequest(revision=head.header.revision, physical=True)
        store._call("compact", "Compact", request)


class TestEtcdRecipesAndAsync(RecipeTests, AsyncTests):
    @pytest.fixture
    def store_url(self, etcd_url: str) -> str:
        return etcd_url


class TestEtcdFuzz(FuzzTests):  # the fuzz suite, with fewer examples over the network
    fuzz_examples = 25
    store_url = TestEtcd.store_url
