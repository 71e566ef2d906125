"""The etcd stores — v3 (``etcd://``) and v2 (``etcd2://``) — over TLS with client certificates,
against one etcd this module starts (certificates made with openssl; etcd with --enable-v2 on
127.0.0.1:22601, serving both APIs)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _harness import EtcdAuth
from _tls import tls_etcd as start_tls_etcd

import pykv
from pykv.testing import drain_until

pytestmark = [pytest.mark.integration, pytest.mark.etcd]

PORT = 22601

both_apis = pytest.mark.parametrize("scheme", ["etcd", "etcd2"])


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with start_tls_etcd(tmp_path_factory.mktemp("etcd-tls"), PORT, "etcd2", enable_v2=True) as d:
        yield d


@both_apis
def test_tls_with_client_certificate(tls_etcd: Path, scheme: str) -> None:
    d = tls_etcd
    url = (
        f"{scheme}+tls://127.0.0.1:{PORT}/pykv-test/{uuid.uuid4().hex[:12]}"
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


@both_apis
def test_tls_option_on_plain_scheme(tls_etcd: Path, scheme: str) -> None:
    d = tls_etcd
    with pykv.open_store(
        f"{scheme}://127.0.0.1:{PORT}",
        tls=True,
        ca=str(d / "ca.pem"),
        cert=str(d / "client.pem"),
        key=str(d / "client.key"),
    ) as store:
        assert not store.exists(f"pykv-test/{uuid.uuid4().hex}")


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_false_skips_the_server_check_on_v2(tls_etcd: Path) -> None:
    d = tls_etcd
    with pykv.open_store(
        f"etcd2+tls://127.0.0.1:{PORT}",
        verify=False,
        cert=str(d / "client.pem"),
        key=str(d / "client.key"),
        timeout=3,
    ) as store:
        assert not store.exists(f"pykv-test/{uuid.uuid4().hex}")


@pytest.mark.parametrize(
    ("scheme", "cert"), [("etcd", "other"), ("etcd2", "other"), ("etcd2", None)]
)
def test_untrusted_or_missing_client_certificate_is_refused(
    tls_etcd: Path, scheme: str, cert: str | None
) -> None:
    d = tls_etcd
    files = {} if cert is None else {"cert": str(d / f"{cert}.pem"), "key": str(d / f"{cert}.key")}
    with (
        pykv.open_store(
            f"{scheme}+tls://127.0.0.1:{PORT}", ca=str(d / "ca.pem"), timeout=2, **files
        ) as store,
        pytest.raises(pykv.UnavailableError),
    ):
        store.get("k")


@both_apis
def test_server_from_an_unknown_ca_is_refused(tls_etcd: Path, scheme: str) -> None:
    d = tls_etcd
    with (
        pykv.open_store(
            f"{scheme}+tls://127.0.0.1:{PORT}",
            ca=str(d / "other.pem"),
            cert=str(d / "client.pem"),
            key=str(d / "client.key"),
            timeout=2,
        ) as store,
        pytest.raises(pykv.UnavailableError) as info,
    ):
        store.get("k")
    if scheme == "etcd2":
        assert "TLS" in str(info.value)


def test_tls_configuration_errors_v3(tls_etcd: Path) -> None:
    d = tls_etcd
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(f"etcd+tls://127.0.0.1:{PORT}?ca=/nonexistent/ca.pem")
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(f"etcd+tls://127.0.0.1:{PORT}", cert=str(d / "client.pem"))
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(f"etcd+tls://127.0.0.1:{PORT}", verify=False)


def test_tls_configuration_errors_v2(tls_etcd: Path) -> None:
    d = tls_etcd
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(f"etcd2+tls://127.0.0.1:{PORT}?ca=/nonexistent/ca.pem")
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(f"etcd2+tls://127.0.0.1:{PORT}", key=str(d / "client.key"))
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(f"etcd2://127.0.0.1:{PORT}", ca=str(d / "ca.pem"))


def test_tls_files_without_tls_are_refused_v3(tls_etcd: Path) -> None:
    with pytest.raises(pykv.ConfigurationError, match="need"):  # never falls back to clear text
        pykv.open_store(f"etcd://127.0.0.1:{PORT}", ca=str(tls_etcd / "ca.pem"))


def test_credentials_without_tls_log_one_warning(
    etcd_auth: EtcdAuth, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pykv")
    url = etcd_auth.url.replace("://", f"://{etcd_auth.user}:{etcd_auth.password}@", 1)
    with pykv.open_store(f"{url}/pykv-test/{uuid.uuid4().hex[:12]}") as store:
        store.put("k", b"v")
        store.delete_tree("")
    warnings = [r.getMessage() for r in caplog.records if "clear text" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "username, password" in warnings[0]
    assert etcd_auth.password not in warnings[0]


def test_credentials_without_tls_log_one_warning_v2(
    etcd2_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pykv")
    # v2 auth is off on this server: the basic-auth header is sent and ignored
    with pykv.open_store(
        f"{etcd2_url}/pykv-test/{uuid.uuid4().hex[:12]}", username="u", password="s3cret"
    ) as store:
        store.put("k", b"v")
        store.delete_tree("")
    warnings = [r.getMessage() for r in caplog.records if "clear text" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "s3cret" not in warnings[0]
