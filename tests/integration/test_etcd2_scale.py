"""etcd v2 TTL keys at scale: the keepalive refreshes them concurrently, and a store refuses
TTL keys it could not keep alive (option ``max_refresh_rate``) with an error naming the limit.
"""

from __future__ import annotations

import time
import uuid

import pytest

import pykv

pytestmark = [pytest.mark.integration, pytest.mark.etcd]


def test_ttl_keys_beyond_the_refresh_limit_are_refused(etcd2_url: str) -> None:
    prefix = f"pykv-test-{uuid.uuid4().hex[:8]}"
    # a TTL of 3 s needs a refresh write per second: ten such keys fill a limit of 10/s
    with pykv.open_store(etcd2_url, prefix=prefix, max_refresh_rate=10) as store:
        for i in range(10):
            store.put(f"k{i}", b"v", ttl=3)
        store.put("k0", b"again", ttl=3)  # rewriting a key it keeps needs nothing more
        with pytest.raises(pykv.InvalidArgumentError) as refused:
            store.put("k10", b"v", ttl=3)
        message = str(refused.value)
        assert "max_refresh_rate" in message
        assert "10" in message
        assert "'k10'" in message
        with pytest.raises(pykv.KeyNotFoundError):
            store.get("k10")  # refused before anything was written
        with pytest.raises(pykv.InvalidArgumentError):
            store.atomic_put("k11", b"v", None, ttl=3)
        store.put("plain", b"v")  # keys without a TTL need no refresh at all
        store.delete("k1")  # a deleted key frees its share
        store.put("k10", b"v", ttl=30)  # a longer TTL needs a tenth of a write per second
        with pytest.raises(pykv.InvalidArgumentError):
            store.put("k12", b"v", ttl=3)
        assert len(store.list()) == 11  # k0, k2..k9, k10, plain
        store.delete_tree("")
    with pytest.raises(pykv.ConfigurationError, match="max_refresh_rate"):
        pykv.open_store(etcd2_url, max_refresh_rate=0)


def test_many_ttl_keys_outlive_their_ttl(etcd2_url: str) -> None:
    prefix = f"pykv-test-{uuid.uuid4().hex[:8]}"
    with pykv.open_store(etcd2_url, prefix=prefix) as store:
        for i in range(60):  # 45 refresh writes per second: well within any machine's reach
            store.put(f"k/{i:03d}", str(i), ttl=4)
        with pykv.open_store(etcd2_url, prefix=prefix) as reader:
            # three TTLs plus the slack: each key was refreshed several times (concurrently)
            time.sleep(3 * 4 + store.ttl_slack)
            pairs = reader.list("k")
            assert [p.value for p in pairs] == [str(i).encode() for i in range(60)]
            assert store.background_error is None
        store.delete_tree("")
