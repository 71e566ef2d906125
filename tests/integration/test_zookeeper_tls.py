"""The ZooKeeper store over TLS with client certificates, against a ZooKeeper 3.8 this module
starts (certificates made with openssl; TLS only, on 127.0.0.1:22801, with Netty's server
connection factory). Its certificate names only ``localhost``, so ``localhost`` is the right
host name and ``127.0.0.1`` a wrong one for the same server."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _tls import tls_zookeeper as start_tls_zookeeper

import pykv
from pykv.testing import drain_until

pytestmark = [pytest.mark.integration, pytest.mark.zookeeper]

PORT = 22801
GOOD = f"zk+tls://localhost:{PORT}"
WRONG_HOST = f"zk+tls://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def tls_zk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with start_tls_zookeeper(tmp_path_factory.mktemp("zookeeper-tls"), PORT) as d:
        yield d


def _files(d: Path, cert: str | None = "client", ca: str = "ca") -> dict[str, str]:
    files = {"ca": str(d / f"{ca}.pem")}
    if cert is not None:
        files |= {"cert": str(d / f"{cert}.pem"), "key": str(d / f"{cert}.key")}
    return files


def test_tls_with_client_certificate_and_matching_host(tls_zk: Path) -> None:
    d = tls_zk
    url = (
        f"{GOOD}/pykv-test/{uuid.uuid4().hex[:12]}"
        f"?ca={d / 'ca.pem'}&cert={d / 'client.pem'}&key={d / 'client.key'}"
    )
    with pykv.open_store(url, timeout=5) as store, pykv.open_store(url, timeout=5) as other:
        store.put("k", b"v", ttl=2)
        assert store.get("k").value == b"v"
        assert other.get("k").value == b"v"
        with store.watch_tree("") as tree:
            assert [p.key for p in tree.get(timeout=10)] == ["k"]
            other.put("j", b"w")
            drain_until(tree, lambda s: [p.key for p in s] == ["j", "k"], 10)
        with store.lock("l", ttl=2) as lock:
            assert lock.token is not None
            assert not other.lock("l", ttl=2).acquire(timeout=0.5)
        store.delete_tree("")
        assert store.list("") == []


def test_wrong_host_name_is_refused(tls_zk: Path) -> None:
    with pytest.raises(pykv.UnavailableError) as info:
        pykv.open_store(WRONG_HOST, timeout=2, **_files(tls_zk))
    message = str(info.value)
    assert f"127.0.0.1:{PORT}" in message
    assert "TLS handshake failed" in message
    assert "not valid for '127.0.0.1'" in message


def test_verify_false_skips_the_server_and_host_name_checks(tls_zk: Path) -> None:
    d = tls_zk
    with pykv.open_store(
        WRONG_HOST, verify=False, cert=str(d / "client.pem"), key=str(d / "client.key"), timeout=5
    ) as store:
        assert not store.exists(f"pykv-test/{uuid.uuid4().hex}")


def test_server_from_an_unknown_ca_is_refused(tls_zk: Path) -> None:
    with pytest.raises(pykv.UnavailableError) as info:
        pykv.open_store(GOOD, timeout=2, **_files(tls_zk, ca="other"))
    assert "certificate verify failed" in str(info.value)


@pytest.mark.parametrize("cert", [None, "other"], ids=["no-client-cert", "untrusted-client-cert"])
def test_client_certificate_is_required(tls_zk: Path, cert: str | None) -> None:
    with pytest.raises(pykv.UnavailableError) as info:
        pykv.open_store(GOOD, timeout=2, **_files(tls_zk, cert=cert))
    assert "TLS handshake failed" in str(info.value)


def test_tls_configuration_errors(tls_zk: Path) -> None:
    d = tls_zk
    with pytest.raises(pykv.ConfigurationError, match="no such file"):
        pykv.open_store(f"{GOOD}?ca=/nonexistent/ca.pem")
    with pytest.raises(pykv.ConfigurationError, match="need"):
        pykv.open_store(f"zk://localhost:{PORT}", ca=str(d / "ca.pem"))
    with pytest.raises(pykv.ConfigurationError, match="contradict"):
        pykv.open_store(GOOD, ca=str(d / "ca.pem"), verify=False)


def test_credentials_over_tls_log_no_warning(
    tls_zk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pykv")
    with pykv.open_store(
        f"{GOOD}/pykv-test/{uuid.uuid4().hex[:12]}",
        username="u",
        password="p",
        timeout=5,
        **_files(tls_zk),
    ) as store:
        store.put("k", b"v")
        store.delete_tree("")
    assert not [r for r in caplog.records if "clear text" in r.getMessage()]


def test_credentials_without_tls_log_one_warning(
    zookeeper_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pykv")
    with pykv.open_store(
        f"{zookeeper_url}/pykv-test/{uuid.uuid4().hex[:12]}", username="u", password="s3cret"
    ) as store:
        store.put("k", b"v")
        store.delete_tree("")
    warnings = [r.getMessage() for r in caplog.records if "clear text" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "username, password" in warnings[0]
    assert "s3cret" not in warnings[0]
