"""Distribution names, the one version source, license files and install hints agree."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pykv
from pykv import _registry
from pykv._cli import capability_table

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = sorted(p for p in (ROOT / "backends").iterdir() if (p / "pyproject.toml").exists())
NAME_RE = re.compile(r'^name\s*=\s*"([^"]+)"', re.MULTILINE)


def _project_name(pyproject: Path) -> str:
    found = NAME_RE.search(pyproject.read_text(encoding="utf-8"))
    assert found, f"no [project] name in {pyproject}"
    return found.group(1)


def test_distribution_names_are_pykvstore_family() -> None:
    # "pykv" on the package index is an unrelated project: no distribution may be called that.
    assert _project_name(ROOT / "pyproject.toml") == "pykvstore"
    for backend in BACKENDS:
        assert _project_name(backend / "pyproject.toml") == f"pykvstore-{backend.name.lstrip('_')}"


def test_every_distribution_has_the_one_version() -> None:
    for dist in ("pykvstore", "pykvstore-consul", "pykvstore-etcd", "pykvstore-zookeeper"):
        assert importlib.metadata.version(dist) == pykv.__version__, dist
    for pyproject in [ROOT / "pyproject.toml", *(b / "pyproject.toml" for b in BACKENDS)]:
        text = pyproject.read_text(encoding="utf-8")
        assert 'dynamic = ["version"]' in text, pyproject
        assert not re.search(r"^version\s*=", text, re.MULTILINE), f"{pyproject} sets a version"


def test_cli_prints_the_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pykv", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, f"pykv {pykv.__version__}")


def test_every_distribution_ships_the_license() -> None:
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text
    assert "Version 2.0, January 2004" in license_text
    for backend in BACKENDS:
        assert (backend / "LICENSE").read_text(encoding="utf-8") == license_text, backend


def test_declared_distribution_is_the_installed_one() -> None:
    # The capability table's package column and the install hints come from these declarations.
    for scheme, cls in pykv.available_backends().items():
        assert not isinstance(cls, Exception), f"{scheme}: {cls}"
        [ep] = [ep for ep in _registry._entry_points(scheme)]
        assert ep.dist is not None
        assert cls.distribution == ep.dist.name, scheme
        assert _registry.KNOWN_DISTRIBUTIONS[scheme] == ep.dist.name, scheme


def test_install_hint_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_entry_points", lambda name=None: [])
    with pytest.raises(pykv.UnknownBackendError) as info:
        pykv.open_store("zk://127.0.0.1:2181")
    assert "pip install pykvstore-zookeeper" in str(info.value)
    assert "pip install 'pykvstore[zookeeper]'" in str(info.value)


def test_testing_extra_declares_pytest() -> None:
    requires = importlib.metadata.requires("pykvstore") or []
    assert any(r.startswith("pytest") and "extra == 'testing'" in r for r in requires), requires


def test_docs_capability_table_is_generated() -> None:
    text = (ROOT / "docs" / "backends" / "index.md").read_text(encoding="utf-8")
    block = text.split("<!-- capabilities:start -->")[1].split("<!-- capabilities:end -->")[0]
    generated = [ln for ln in capability_table(markdown=True).splitlines() if ln.startswith("|")]
    assert block.strip().splitlines() == generated, (
        "docs/backends/index.md's capability table is stale; regenerate: pykv backends --markdown"
    )
