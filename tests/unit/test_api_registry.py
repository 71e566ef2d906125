"""The public surface, the error tree, the backend registry and open_store."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

import pykv
from pykv import _registry


def test_public_surface_is_exactly_all() -> None:
    public = {name for name in dir(pykv) if not name.startswith("_")}
    submodules = {"testing", "discovery", "registrar", "aio", "recipes", "kit"}
    assert public - submodules == set(pykv.__all__) - {"__version__"}
    for name in pykv.__all__:
        assert getattr(pykv, name) is not None


def test_error_tree() -> None:
    errors = [getattr(pykv, n) for n in pykv.__all__ if n.endswith("Error")]
    assert all(issubclass(e, pykv.PyKVError) for e in errors)
    assert issubclass(pykv.InvalidURLError, pykv.ConfigurationError)
    assert issubclass(pykv.UnknownBackendError, pykv.ConfigurationError)
    assert issubclass(pykv.OperationTimeoutError, pykv.UnavailableError)
    assert issubclass(pykv.LockLostError, pykv.LockError)
    assert not issubclass(pykv.PermissionDeniedError, pykv.UnavailableError)
    assert str(pykv.KeyNotFoundError("'a' not found")) == "'a' not found"


def test_unknown_scheme_suggests_and_lists() -> None:
    with pytest.raises(pykv.UnknownBackendError) as info:
        pykv.open_store("sqlit:///x.db")
    assert "did you mean 'sqlite'" in str(info.value)
    assert "memory" in str(info.value)


def test_known_but_missing_backend_names_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_entry_points", lambda name=None: [])
    with pytest.raises(pykv.UnknownBackendError) as info:
        pykv.open_store("consul://127.0.0.1:8500")
    assert "pip install pykvstore-consul" in str(info.value)


def test_two_distributions_claiming_a_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [
        importlib.metadata.EntryPoint("memory", "pykv._memory:MemoryStore", "pykv.backends"),
        importlib.metadata.EntryPoint("memory", "other_pkg:MemoryStore", "pykv.backends"),
    ]
    monkeypatch.setattr(_registry, "_entry_points", lambda name=None: eps)
    with pytest.raises(pykv.ConfigurationError) as info:
        _registry.load_backend("memory")
    assert "pykv._memory:MemoryStore" in str(info.value)
    assert "other_pkg:MemoryStore" in str(info.value)


def test_require_capabilities() -> None:
    with pykv.open_store("memory://req", require=["kv", pykv.Capability.LOCK]) as store:
        assert pykv.Capability.LOCK in store.capabilities
    with pytest.raises(pykv.NotSupportedError) as info:
        pykv.open_store("memory://req", require=[pykv.Capability.SHARED])
    assert "shared" in str(info.value)


def test_open_store_returns_new_objects_sharing_memory_by_name() -> None:
    a, b = pykv.open_store("memory://same"), pykv.open_store("memory://same")
    other = pykv.open_store("memory://different")
    assert a is not b
    a.put("k", b"1")
    assert b.get("k").value == b"1"
    assert not other.exists("k")
    for s in (a, b, other):
        s.close()


def test_url_path_is_prefix_for_memory() -> None:
    with pykv.open_store("memory://pfx/app") as scoped, pykv.open_store("memory://pfx") as root:
        scoped.put("k", b"v")
        assert root.get("app/k").value == b"v"
        assert scoped.prefix == "app"


def test_unknown_option_and_variant() -> None:
    with pytest.raises(pykv.ConfigurationError, match="'colour'"):
        pykv.open_store("memory://x?colour=red")
    with pytest.raises(pykv.ConfigurationError, match="variant"):
        pykv.open_store("memory+fast://x")
    with pytest.raises(pykv.ConfigurationError, match="timeout"):
        pykv.open_store("memory://x", timeout=0)


def test_opening_sqlite_loads_no_network_driver(tmp_path: object) -> None:
    code = (
        f"import sys, pykv; pykv.open_store('sqlite:///{tmp_path}/x.db').close(); "
        "print(sorted(m for m in sys.modules if m.startswith(('pykv_', 'consul', 'kazoo', "
        "'grpc', 'docker'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_default_store_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYKV_STORE", "memory://from-env")
    assert pykv.default_store_url() == "memory://from-env"
    monkeypatch.delenv("PYKV_STORE")
    url = pykv.default_store_url()
    assert url.startswith("sqlite:////")
    assert url.endswith("/pykv/pykv.db")


def test_lock_and_watch_argument_checks() -> None:
    with pykv.open_store("memory://args") as store:
        with pytest.raises(ValueError, match="ttl"):
            store.put("k", b"v", ttl=0)
        with pytest.raises(ValueError, match="ttl"):
            store.lock("k", ttl=-1)
        with pytest.raises(TypeError):
            store.put("k", 3)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            store.atomic_put("k", b"v", "rev")  # type: ignore[arg-type]


def test_new_pair_is_a_plain_frozen_kvpair() -> None:
    import dataclasses

    from pykv._store import new_pair

    fast, slow = new_pair("a/b", b"v", 7), pykv.KVPair("a/b", b"v", 7)
    assert type(fast) is pykv.KVPair
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    assert dataclasses.asdict(fast) == {"key": "a/b", "value": b"v", "revision": 7}
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.key = "x"  # type: ignore[misc]
