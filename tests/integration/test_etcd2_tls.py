"""The etcd v2 store over HTTPS with client certificates, against an etcd this module starts
(certificates made with openssl; etcd with --enable-v2 on 127.0.0.1:23611)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _tls import tls_etcd

import pykv
from pykv.testing import drain_until

pytestmark = [pytest.mark.integration, pytest.mark.etcd]

PORT = 23611


@pytest.fixture(scope="module")
def tls_etcd2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with tls_etcd(tmp_path_factory.mktemp("etcd2-tls"), PORT, "etcd2", enable_v2=True) as d:
        yield d


def test_tls_with_client_certificate(tls_etcd2: Path) -> None:
    d = tls_etcd2
    url = (
        f"etcd2+tls://127.0.0.1:{PORT}/pykv-test/{uuid.uuid4().hex[:12]}"
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


def test_tls_option_on_plain_scheme(tls_etcd2: Path) -> None:
    d = tls_etcd2
    with pykv.open_store(
        f"etcd2://127.0.0.1:{PORT}",
        tls=True,
        ca=str(d / "ca.pem"),
        cert=str(d / "client.pem"),
        key=str(d / "client.key"),
    ) as store:
        assert not store.exists(f"pykv-test/{uuid.uuid4().hex}")


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_false_skips_the_server_check(tls_etcd2: Path) -> None:
    d = tls_etcd2
    with pykv.open_store(
        f"etcd2+tls://127.0.0.1:{PORT}",
        verify=False,
        cert=str(d / "client.pem"),
        key=str(d / "client.key"),
        timeout=3,
    ) as store:
        assert not store.exists(f"pykv-test/{uuid.uuid4().hex}")


@pytest.mark.parametrize("cert", ["other", None])
def test_untrusted_or_missing_client_certificate_is_refused(
    tls_etcd2: Path, cert: str | None
) -> None:
    d = tls_etcd2
    files = {} if cert is None else {"cert": str(d / f"{cert}.pem"), "key": str(d / f"{cert}.key")}
    with (
        pykv.open_store(
            f"etcd2+tls://127.0.0.1:{PORT}", ca=str(d / "ca.pem"), timeout=2, **files
        ) as store,
        pytest.raises(pykv.UnavailableError),
    ):
        store.get("k")


def test_server_from_an_unknown_ca_is_refused(tls_etcd2: Path) -> None:
    d = tls_etcd2
    with (
        pykv.open_store(
            f"etcd2+tls://127.0.0.1:{PORT}",
            ca=str(d / "other.pem"),
            cert=str(d / "client.pem"),
            key=str(d / "client.key"),
            timeout=2,
        ) as store,
        pytest.raises(pykv.UnavailableError) as info,
    ):
        store.get("k")
    assert "TLS" in str(info.value)


def test_tls_configuration_errors(tls_etcd2: Path) -> None:
    d = tls_etcd2
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(f"etcd2+tls://127.0.0.1:{PORT}?ca=/nonexistent/ca.pem")
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(f"etcd2+tls://127.0.0.1:{PORT}", key=str(d / "client.key"))
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(f"etcd2://127.0.0.1:{PORT}", ca=str(d / "ca.pem"))
