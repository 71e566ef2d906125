"""The Consul store over HTTPS with client certificates, against a Consul agent this module
starts (certificates made with openssl; HTTPS on 127.0.0.1:22701, plain HTTP off)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _tls import make_certs, stop, wait_ready

import pykv

pytestmark = [pytest.mark.integration, pytest.mark.consul]

PORT = 22701
CONSUL = shutil.which("consul") or "/usr/local/bin/consul"


@pytest.fixture(scope="module")
def tls_consul(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if shutil.which("openssl") is None or not Path(CONSUL).exists():
        pytest.fail("this test needs openssl and consul (scripts/provision.sh installs consul)")
    d = tmp_path_factory.mktemp("consul-tls")
    make_certs(d)
    (d / "config.hcl").write_text(
        f"""
session_ttl_min = "1s"
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
ports {{
  http = -1
  https = {PORT}
  dns = -1
  grpc = -1
  serf_lan = {PORT + 1}
  serf_wan = {PORT + 2}
  server = {PORT + 3}
}}
ca_file = "{d / "ca.pem"}"
cert_file = "{d / "server.pem"}"
key_file = "{d / "server.key"}"
verify_incoming = true
"""
    )
    log = (d / "consul.log").open("w")
    proc = subprocess.Popen(
        [CONSUL, "agent", "-dev", "-node", "pykv-tls", "-config-file", str(d / "config.hcl")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"consul+tls://127.0.0.1:{PORT}", d, proc, d / "consul.log", write=True)
        yield d
    finally:
        stop(proc)
        log.close()


def test_tls_with_client_certificate(tls_consul: Path) -> None:
    d = tls_consul
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    url = (
        f"consul+tls://127.0.0.1:{PORT}/{prefix}"
        f"?ca={d / 'ca.pem'}&cert={d / 'client.pem'}&key={d / 'client.key'}"
    )
    with pykv.open_store(url, timeout=5) as store:
        store.put("k", b"v", ttl=2)
        assert store.get("k").value == b"v"
        with store.watch("k") as watch:
            assert watch.get(timeout=5) is not None
            store.put("k", b"w")
            assert watch.get(timeout=5) == store.get("k")
        with store.lock("l", ttl=2) as lock:
            assert lock.held
        store.delete_tree("")


def test_tls_failures_are_unavailable_errors(tls_consul: Path) -> None:
    d = tls_consul
    base = f"consul+tls://127.0.0.1:{PORT}"
    cases = [
        {"ca": str(d / "ca.pem")},  # no client certificate
        {"ca": str(d / "ca.pem"), "cert": str(d / "other.pem"), "key": str(d / "other.key")},
        {"cert": str(d / "client.pem"), "key": str(d / "client.key")},  # server not trusted
    ]
    for options in cases:
        with pykv.open_store(base, timeout=3, **options) as store:
            with pytest.raises(pykv.UnavailableError) as info:
                store.get("k")
            assert f"127.0.0.1:{PORT}" in str(info.value)
    with pytest.raises(pykv.ConfigurationError):
        pykv.open_store(base, key=str(d / "client.key"))
    with pytest.raises(pykv.ConfigurationError, match="need"):  # never falls back to clear text
        pykv.open_store(f"consul://127.0.0.1:{PORT}", ca=str(d / "ca.pem"), token="t")


def test_token_without_tls_logs_one_warning(
    consul_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pykv")
    # this server has no ACLs: the token is sent and ignored
    with pykv.open_store(f"{consul_url}/pykv-test/{uuid.uuid4().hex[:12]}?token=s3cret") as store:
        store.put("k", b"v")
        store.delete_tree("")
    warnings = [r.getMessage() for r in caplog.records if "clear text" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "(token)" in warnings[0]
    assert "s3cret" not in warnings[0]
