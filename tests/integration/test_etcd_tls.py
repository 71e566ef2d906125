"""The etcd v3 store over TLS with client certificates, against an etcd this module starts
(certificates made with openssl; etcd on 127.0.0.1:22601)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import pykv
from pykv.testing import drain_until

pytestmark = [pytest.mark.integration, pytest.mark.etcd]

PORT = 22601
ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_certs(d: Path) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pykv-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client", "other"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        signer = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"]
        if name == "other":  # self-signed: from a CA the server does not trust
            signer = ["-signkey", f"{name}.key"]
        _openssl("x509", "-req", "-in", f"{name}.csr", *signer, "-days", "2",
                 "-extfile", "san.cnf", "-out", f"{name}.pem", cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if shutil.which("openssl") is None or not Path(ETCD).exists():
        pytest.fail("this test needs openssl and etcd (scripts/provision.sh installs etcd)")
    d = tmp_path_factory.mktemp("etcd-tls")
    _make_certs(d)
    log = (d / "etcd.log").open("w")
    proc = subprocess.Popen(
        [ETCD, "--name", "tls", "--data-dir", str(d / "data"),
         "--listen-client-urls", f"https://127.0.0.1:{PORT}",
         "--advertise-client-urls", f"https://127.0.0.1:{PORT}",
         "--listen-peer-urls", f"http://127.0.0.1:{PORT + 1}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{PORT + 1}",
         "--initial-cluster", f"tls=http://127.0.0.1:{PORT + 1}",
         "--cert-file", str(d / "server.pem"), "--key-file", str(d / "server.key"),
         "--trusted-ca-file", str(d / "ca.pem"), "--client-cert-auth"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with pykv.open_store(
                    f"etcd+tls://127.0.0.1:{PORT}",
                    ca=str(d / "ca.pem"),
                    cert=str(d / "client.pem"),
                    key=str(d / "client.key"),
                    timeout=2,
                ) as probe:
                    probe.exists("probe")
                break
            except pykv.UnavailableError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((d / "etcd.log").read_text()[-3000:]) from None
                time.sleep(0.2)
        yield d
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


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
