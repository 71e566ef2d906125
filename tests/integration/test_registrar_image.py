"""The sidecar image: built here on a locally made base image, run with the Docker socket.

The image is built outside any test's timeout: scripts/provision.sh makes the base image
``pykv-python-base:1`` (about a minute, once per machine) and scripts/test.sh builds
``pykv-registrar:test`` from the checkout (about half a minute) and names it in
``$PYKV_REGISTRAR_IMAGE``. Without that variable (a developer's loop) the fixture builds the
registrar image itself, on the provisioned base. The test runs it as a container that publishes
another container into a sqlite file on a mounted volume, read from the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import pykv
from pykv.discovery import Endpoint, Registry

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "pykv-registrar:test"


def _docker(
    *args: str, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


BASE_IMAGE = "pykv-python-base:1"


@pytest.fixture(scope="module")
def registrar_image(busybox_image: str) -> str:
    built = os.environ.get("PYKV_REGISTRAR_IMAGE")
    if built:
        assert _docker("image", "inspect", built, check=False).returncode == 0, (
            f"$PYKV_REGISTRAR_IMAGE names {built}, which does not exist"
        )
        return built
    assert _docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0, (
        f"no {BASE_IMAGE}: run scripts/provision.sh, which builds it"
    )
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(ROOT / "docker/build-registrar-image.sh"), IMAGE],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"registrar image built in {time.monotonic() - started:.1f} s")
    return IMAGE


@pytest.fixture
def names() -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    for name in created:
        _docker("rm", "-f", "-v", name, check=False)


def test_sidecar_container_publishes_other_containers(
    registrar_image: str,
    busybox_image: str,
    docker_labels: dict[str, str],
    names: list[str],
    tmp_path: Path,
) -> None:
    labels = [
        x for k, v in {"pykv.test": "1", **docker_labels}.items() for x in ("--label", f"{k}={v}")
    ]
    tag = uuid.uuid4().hex[:8]
    node, prefix = f"img-{tag}", f"img-{tag}"
    data = tmp_path / "data"
    data.mkdir()
    sidecar = f"pt-{tag}-registrar"
    names.append(sidecar)
    _docker(
        "run", "-d", "--name", sidecar, *labels,
        "-v", "/var/run/docker.sock:/var/run/docker.sock:ro", "-v", f"{data}:/data",
        registrar_image, "--node", node, "--prefix", prefix, "--ttl", "3",
        "--metrics-addr", "127.0.0.1:9105",
    )  # fmt: skip
    web = f"pt-{tag}-web"
    names.append(web)
    _docker(
        "run", "-d", "--name", web, *labels, "-p", "127.0.0.1::80", "-e", "SERVICE_NAME=imgweb",
        busybox_image, "httpd", "-f", "-p", "80", "-h", "/www",
    )  # fmt: skip
    info = json.loads(_docker("inspect", web).stdout)[0]
    host_port = int(info["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])

    db = data / "pykv.db"
    deadline = time.monotonic() + 30
    found: list[Endpoint] = []
    while time.monotonic() < deadline and not found:
        if db.exists():
            with pykv.open_store(f"sqlite:///{db}") as store:
                found = [e for e in Registry(store, prefix).endpoints("imgweb") if e.node == node]
        if not found:
            time.sleep(0.2)
    logs = _docker("logs", sidecar, check=False)
    assert found, f"not published; sidecar logs:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
    [e] = found
    assert (e.id, e.address, e.port) == (f"{node}:{web}:80", "127.0.0.1", host_port)
    assert e.container_id == info["Id"]
    # JSON log lines, one object each.
    first = (logs.stdout + logs.stderr).strip().splitlines()[0]
    assert json.loads(first)["logger"].startswith("pykv")

    # docker stop sends SIGTERM: a clean, quick exit.
    started = time.monotonic()
    _docker("stop", "-t", "20", sidecar)
    assert time.monotonic() - started < 15
    state = json.loads(_docker("inspect", sidecar).stdout)[0]["State"]
    assert state["ExitCode"] == 0


def test_compose_example_runs_the_sidecar(
    registrar_image: str,
    busybox_image: str,
    docker_labels: dict[str, str],
    names: list[str],
    tmp_path: Path,
) -> None:
    """docker/compose.registrar.yaml, as shipped, brings up a registrar on this image that
    publishes a container, reports healthy, and stops cleanly with `docker compose down`."""
    import os
    import socket
    import urllib.request

    tag = uuid.uuid4().hex[:8]
    data = tmp_path / "data"
    data.mkdir()
    with socket.socket() as s:  # a free port below 32768 for /metrics on the host network
        for port in range(19105, 19205):
            try:
                s.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
    env = {
        **os.environ,
        "PYKV_REGISTRAR_IMAGE": registrar_image,
        "PYKV_DATA_DIR": str(data),
        "PYKV_METRICS_PORT": str(port),
        "PYKV_REGISTRAR_NODE": f"compose-{tag}",
        "PYKV_REGISTRAR_PREFIX": f"compose-{tag}",
    }
    compose = [
        "docker",
        "compose",
        "-p",
        f"pt-{tag}",
        "-f",
        str(ROOT / "docker/compose.registrar.yaml"),
    ]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose, *args], capture_output=True, text=True, timeout=120,
                              env=env, check=False)  # fmt: skip

    up = run("up", "-d", "--no-build")
    try:
        assert up.returncode == 0, up.stderr
        labels = [
            x for k, v in {"pykv.test": "1", **docker_labels}.items()
            for x in ("--label", f"{k}={v}")
        ]  # fmt: skip
        web = f"pt-{tag}-web"
        names.append(web)
        _docker(
            "run", "-d", "--name", web, *labels, "-p", "127.0.0.1::80",
            "--label", "SERVICE_NAME=composeweb", busybox_image, "httpd", "-f", "-p", "80",
            "-h", "/www",
        )  # fmt: skip
        db = data / "pykv.db"
        deadline = time.monotonic() + 60
        found: list[Endpoint] = []
        health: dict[str, object] = {}
        while time.monotonic() < deadline and not (found and health.get("ok")):
            if db.exists():
                with pykv.open_store(f"sqlite:///{db}") as store:
                    found = Registry(store, f"compose-{tag}").endpoints("composeweb")
            try:
                url = f"http://127.0.0.1:{port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as r:
                    health = json.loads(r.read())
            except OSError:
                health = {}
            time.sleep(0.3)
        logs = run("logs").stdout[-3000:]
        assert found, f"not published; logs:\n{logs}"
        assert health.get("ok") is True, f"{health}\n{logs}"
        [e] = found
        assert (e.node, e.address, e.container_name) == (f"compose-{tag}", "127.0.0.1", web)
    finally:
        down = run("down", "-v", "-t", "20")
    assert down.returncode == 0, down.stderr
