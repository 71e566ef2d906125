"""Certificates and TLS servers (etcd, ZooKeeper) for the TLS tests: made here with openssl,
on loopback."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pykv

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
JAVA = shutil.which("java") or "/usr/bin/java"
#: Debian's ZooKeeper (scripts/provision.sh installs it): the server jar names most of what it
#: needs in its manifest; Netty's TLS handler needs codec, resolver and unix-common besides, and
#: slf4j-simple sends the server's log to its stderr.
ZOOKEEPER_JARS = [
    f"/usr/share/java/{name}.jar"
    for name in (
        "zookeeper",
        "netty-codec",
        "netty-resolver",
        "netty-transport-native-unix-common",
        "slf4j-simple",
    )
]
SAN = "IP:127.0.0.1,DNS:localhost"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(d: Path, server_san: str = SAN) -> None:
    """ca.pem; server/client certificates signed by it; "other", self-signed (untrusted).
    The server's certificate names ``server_san``, the others ``SAN``."""
    if shutil.which("openssl") is None:
        raise AssertionError("the TLS tests need openssl")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pykv-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text(f"subjectAltName={SAN}\n")
    (d / "server-san.cnf").write_text(f"subjectAltName={server_san}\n")
    for name in ("server", "client", "other"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        signer = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"]
        if name == "other":  # self-signed: from a CA the server does not trust
            signer = ["-signkey", f"{name}.key"]
        _openssl("x509", "-req", "-in", f"{name}.csr", *signer, "-days", "2",
                 "-extfile", "server-san.cnf" if name == "server" else "san.cnf",
                 "-out", f"{name}.pem", cwd=d)  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def wait_ready(
    url: str, d: Path, proc: subprocess.Popen[bytes], log: Path, write: bool = False
) -> None:
    """Wait (30 s at most) until the server ``proc`` answers ``url`` with the client
    certificate of ``d``; a read, or a write with ``write``. Fails with the server's log."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with pykv.open_store(
                url,
                ca=str(d / "ca.pem"),
                cert=str(d / "client.pem"),
                key=str(d / "client.key"),
                timeout=2,
            ) as probe:
                if write:
                    probe.put("probe", b"1")
                else:
                    probe.exists("probe")
            return
        except pykv.UnavailableError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(log.read_text()[-3000:]) from None
            time.sleep(0.2)


@contextmanager
def tls_etcd(d: Path, port: int, scheme: str, *, enable_v2: bool) -> Iterator[Path]:
    """An etcd requiring client certificates on https://127.0.0.1:PORT, ready for ``scheme``."""
    if not Path(ETCD).exists():
        raise AssertionError("this test needs etcd (scripts/provision.sh installs it)")
    make_certs(d)
    name = f"tls{port}"
    with (d / "etcd.log").open("w") as log:
        proc = subprocess.Popen(
            [ETCD, "--name", name, "--data-dir", str(d / "data"),
             f"--enable-v2={'true' if enable_v2 else 'false'}",
             "--listen-client-urls", f"https://127.0.0.1:{port}",
             "--advertise-client-urls", f"https://127.0.0.1:{port}",
             "--listen-peer-urls", f"http://127.0.0.1:{port + 1}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{port + 1}",
             "--initial-cluster", f"{name}=http://127.0.0.1:{port + 1}",
             "--cert-file", str(d / "server.pem"), "--key-file", str(d / "server.key"),
             "--trusted-ca-file", str(d / "ca.pem"), "--client-cert-auth"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_ready(f"{scheme}+tls://127.0.0.1:{port}", d, proc, d / "etcd.log")
            yield d
        finally:
            stop(proc)


@contextmanager
def tls_zookeeper(d: Path, port: int) -> Iterator[Path]:
    """A ZooKeeper 3.8 serving only TLS on 127.0.0.1:PORT and requiring client certificates.

    Its certificate names only ``DNS:localhost``: ``zk+tls://localhost:PORT`` matches it and
    ``zk+tls://127.0.0.1:PORT`` (the same socket) does not, so host name checks can be tested
    without leaving loopback.
    """
    missing = [j for j in [JAVA, *ZOOKEEPER_JARS] if not Path(j).exists()]
    if missing:
        raise AssertionError(f"this test needs {missing} (scripts/provision.sh installs them)")
    make_certs(d, server_san="DNS:localhost")
    # ZooKeeper reads a PEM key store holding the private key and its certificate chain
    (d / "server-store.pem").write_text(
        (d / "server.key").read_text() + (d / "server.pem").read_text()
    )
    (d / "zoo.cfg").write_text(
        f"tickTime=500\ndataDir={d / 'data'}\nsecureClientPort={port}\n"
        "secureClientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
    )
    ssl = {
        "serverCnxnFactory": "org.apache.zookeeper.server.NettyServerCnxnFactory",
        "ssl.keyStore.location": d / "server-store.pem",
        "ssl.keyStore.type": "PEM",
        "ssl.trustStore.location": d / "ca.pem",
        "ssl.trustStore.type": "PEM",
        "ssl.clientAuth": "need",
    }
    with (d / "zookeeper.log").open("w") as log:
        proc = subprocess.Popen(
            [JAVA, "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             "-cp", ":".join(ZOOKEEPER_JARS),
             *(f"-Dzookeeper.{k}={v}" for k, v in ssl.items()),
             "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(d / "zoo.cfg")],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_ready(f"zk+tls://localhost:{port}", d, proc, d / "zookeeper.log")
            yield d
        finally:
            stop(proc)
