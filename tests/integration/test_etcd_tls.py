"""The etcd v3 store over TLS with client certificates, against an etcd this module starts
(certificates made with openssl; etcd on 127.0.0.1:22601)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _tls import tls_etcd as start_tls_etcd

import pykv
from pykv.testing import drain_until

pytestmark = [pytest.mark.integration, pytest.mark.etcd]

PORT = 22601


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with start_tls_etcd(tmp_path_factory.mktemp("etcd-tls"), PORT, "etcd", enable_v2=False) as d:
        yield d


def test_tls_with_client_certificate(tls_etcd: Path) -> None:
    d = tls_etcd
    url = (
        f"etcd+tls://127.0.0.1:{PORT}/pykv-test/{uuid.uuid4().hex[:12]}"
        f"?ca={d / 'ca.pem'}&cert={d / 'client.pem'}&key={d / 'client.key'}"
    )
    with pykv.open_store(url) as store:
        store.put("k", b"v", ttl=2)
        assert store.get("k").value == b"v"
        with store.watch_tree("") as tree:
            assert [p.key for p in tree.get(timeout=10)] == ["k"]
            store.put("j", b"w")
            drain_until(tree, lambda s: [p.key for p in s] == ["j", "k"], 10)
        with store.lock("l", ttl=2) as lock:
            assert lock.token is not None
        store.delete_tree("")


def test_tls_option_on_plain_scheme(tls_etcd: Path) -> None:
    d = tls_etcd
    with pykv.open_store(
        f"etcd://127.0.0.1:{PORT}",
        tls=True,
        ca=str(d / "ca.pem"),
        cert=str(d / "client.pem"),
        key=str(d / "client.key"),
    ) as store:
        assert not store.exists(f"pykv-test/{uuid.uuid4().hex}")


def test_untrusted_client_certificate_is_refused(tls_etcd: Path) -> None:
    d = tls_etcd
    with (
        pykv.open_store(
            f"etcd+tls://127.0.0.1:{PORT}",
            ca=str(d / "ca.pem"),
            cert=str(d / "other.pem"),
            key=str(d / "other.key"),
            timeout=2,
        ) as store,
        pytest.raises(pykv.UnavailableError),
    ):
        store.get("k")


def test_server_from_an_unknown_ca_is_refused(tls_etcd: Path) -> None:
    d = tls_etcd
    with (
        pykv.open_store(
            f"etcd+tls://127.0.0.1:{PORT}",
            ca=str(d / "other.pem"),
            cert=str(d / "client.pem"),
            key=str(d / "client.key"),
            timeout=2,
        ) as store,
        pytest.raises(pykv.UnavailableError),
    ):
        store.get("k")


def test_tls_configuration_errors(tls_etcd: Path) -> None:
    d = tls_etcd
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(f"etcd+tls://127.0.0.1:{PORT}?ca=/nonexistent/ca.pem")
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(f"etcd+tls://127.0.0.1:{PORT}", cert=str(d / "client.pem"))
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(f"etcd+tls://127.0.0.1:{PORT}", verify=False)
