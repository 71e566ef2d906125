"""The conformance suite of both etcd stores on etcd 3.5, the second version of the matrix.

The compose servers run bookworm's etcd 3.4; ``scripts/provision.sh`` installs trixie's 3.5 as
ETCD35, which this module starts as a process on loopback with the v2 API enabled.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from _tls import stop

from pykv.testing import ConformanceTests

pytestmark = [pytest.mark.integration, pytest.mark.etcd]

ETCD35 = Path("/usr/local/lib/pykv/etcd-3.5/etcd")
CLIENT_PORT = 22479
PEER_PORT = 22480
BASE = f"http://127.0.0.1:{CLIENT_PORT}"


def _version() -> dict[str, str]:
    with urllib.request.urlopen(BASE + "/version", timeout=2) as resp:
        body: dict[str, str] = json.loads(resp.read())
    return body


@pytest.fixture(scope="module")
def etcd35(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An etcd 3.5 on 127.0.0.1:22479 with ``--enable-v2=true``: host:port."""
    if not ETCD35.exists():
        pytest.fail(f"{ETCD35} is missing: run `bash scripts/provision.sh`")
    d = tmp_path_factory.mktemp("etcd35")
    peer = f"http://127.0.0.1:{PEER_PORT}"
    with (d / "etcd.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(ETCD35), "--name=etcd35", f"--data-dir={d / 'data'}", "--enable-v2=true",
             f"--listen-client-urls={BASE}", f"--advertise-client-urls={BASE}",
             f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
             f"--initial-cluster=etcd35={peer}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    # /version answers before the member is ready; /health only once it has a
                    # leader and serves requests.
                    with urllib.request.urlopen(BASE + "/health", timeout=2) as resp:
                        if json.loads(resp.read()).get("health") == "true":
                            break
                except (OSError, ValueError):
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = "exited" if proc.poll() is not None else "did not become healthy in 30 s"
                    log.flush()
                    pytest.fail(
                        f"etcd 3.5 {why}; log:\n{(d / 'etcd.log').read_text()[-3000:]}",
                        pytrace=False,
                    )
                time.sleep(0.2)
            yield f"127.0.0.1:{CLIENT_PORT}"
        finally:
            stop(proc)


def test_server_is_etcd_35(etcd35: str) -> None:
    assert _version()["etcdserver"].startswith("3.5"), _version()


class TestEtcd3On35(ConformanceTests):
    @pytest.fixture
    def store_url(self, etcd35: str) -> str:
        return f"etcd://{etcd35}"


class TestEtcd2On35(ConformanceTests):
    @pytest.fixture
    def store_url(self, etcd35: str) -> str:
        return f"etcd2://{etcd35}"
