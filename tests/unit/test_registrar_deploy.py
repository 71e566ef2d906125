"""The deployment examples in deploy/ are valid: the systemd unit passes `systemd-analyze
verify`, the Kubernetes DaemonSet the Kubernetes schema (kubernetes-validate --strict, whose
schemas ship in the package: no network). Each check also has a negative control, so that a
checker that accepts anything would fail here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "pykv-registrar.service"
DAEMONSET = ROOT / "deploy" / "kubernetes" / "pykv-registrar.yaml"
INSTALLED = "/opt/pykv/bin/pykv-registrar"  # where the unit's comments install it


def _verify_unit(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on ``text``, its ExecStart pointed at this environment's
    pykv-registrar (verify checks that the program exists)."""
    program = Path(sys.executable).parent / "pykv-registrar"
    assert program.exists(), program
    unit = tmp_path / "pykv-registrar.service"
    unit.write_text(text.replace(INSTALLED, str(program)))
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


@pytest.fixture
def systemd_analyze() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: scripts/provision.sh installs systemd")


@pytest.mark.usefixtures("systemd_analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED}\n" in text
    proc = _verify_unit(text, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # not even a warning
    # Exit statuses the registrar documents as not mended by a restart.
    assert "RestartPreventExitStatus=2 6\n" in text


@pytest.mark.usefixtures("systemd_analyze")
def test_systemd_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("KillSignal=SIGTERM", "KillSignal=SIGNOPE")
    proc = _verify_unit(broken, tmp_path)
    assert "SIGNOPE" in proc.stderr


def _validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate --strict against ``version`` ("latest": the newest it bundles)."""
    pinned = [] if version == "latest" else ["-k", version]
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *pinned, str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("version", ["1.25.0", "1.31.0", "latest"])
def test_daemonset_matches_the_kubernetes_schema(version: str) -> None:
    proc = _validate(DAEMONSET, version)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passed for resource daemonset/pykv-registrar" in proc.stdout + proc.stderr


def test_daemonset_mounts_the_docker_socket_read_only() -> None:
    docs: list[dict[str, Any]] = list(yaml.safe_load_all(DAEMONSET.read_text()))
    [ds] = [d for d in docs if d["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v.get("hostPath")]
    assert volume["hostPath"] == {"path": "/var/run/docker.sock", "type": "Socket"}
    [container] = pod["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": "/var/run/docker.sock", "readOnly": True}
    env = {e["name"]: e for e in container["env"]}
    assert env["PYKV_REGISTRAR_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    probe = container["livenessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/healthz", 9105)
    assert env["PYKV_REGISTRAR_METRICS_ADDR"]["value"].endswith(":9105")


def test_the_validator_rejects_a_broken_manifest(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(DAEMONSET.read_text().replace("readOnly: true", "readOnly: always"))
    proc = _validate(broken, "1.31.0")
    assert proc.returncode != 0
    assert "readOnly" in proc.stdout + proc.stderr
