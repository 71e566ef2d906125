"""The pykv command line, run as a user would (a subprocess on a temporary sqlite store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def pykv_cli(tmp_path: Path) -> Run:
    env = {**os.environ, "PYKV_STORE": f"sqlite:///{tmp_path}/cli.db"}

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pykv", *args],
            capture_output=True,
            check=False,
            text=True,
            env=env,
            input=stdin,
            timeout=60,
        )

    return run


def test_put_get_ls_rm(pykv_cli: Run) -> None:
    run = pykv_cli
    assert run("put", "app/greeting", "hello").returncode == 0
    assert run("put", "app/db/url", "-", stdin="sqlite://").returncode == 0
    got = run("get", "/app/greeting/")
    assert (got.returncode, got.stdout) == (0, "hello")
    data = json.loads(run("--json", "get", "app/greeting").stdout)
    assert data["key"] == "app/greeting"
    assert data["value"] == "hello"
    assert isinstance(data["revision"], int)
    assert run("ls", "app").stdout.split() == ["db/", "greeting"]
    assert run("ls", "-r").stdout.split() == ["app/db/url", "app/greeting"]
    assert run("rm", "-r", "app/db").returncode == 0
    assert run("ls", "-r").stdout.split() == ["app/greeting"]


def test_exit_codes_and_one_line_errors(pykv_cli: Run) -> None:
    run = pykv_cli
    missing = run("get", "missing")
    assert missing.returncode == 3
    assert missing.stderr.count("\n") == 1
    assert "Traceback" not in missing.stderr
    bad_key = run("get", "a//b")
    assert bad_key.returncode == 6
    assert "'a//b'" in bad_key.stderr
    bad_url = run("--store", "consull://h", "get", "k")
    assert bad_url.returncode == 6
    assert "did you mean 'consul'" in bad_url.stderr
    usage = run("frobnicate")
    assert usage.returncode == 2


def test_lock_runs_command_with_token(pykv_cli: Run) -> None:
    run = pykv_cli
    first = run(
        "lock",
        "jobs/x",
        "--",
        sys.executable,
        "-c",
        "import os; print(os.environ['PYKV_LOCK_TOKEN'])",
    )
    second = run(
        "lock",
        "jobs/x",
        "--",
        sys.executable,
        "-c",
        "import os; print(os.environ['PYKV_LOCK_TOKEN'])",
    )
    assert first.returncode == 0
    assert int(second.stdout) > int(first.stdout)
    failing = run("lock", "jobs/x", "--", sys.executable, "-c", "raise SystemExit(7)")
    assert failing.returncode == 7


def test_watch_count(pykv_cli: Run) -> None:
    run = pykv_cli
    run("put", "w", "1")
    out = run("--json", "watch", "w", "--count", "1")
    assert json.loads(out.stdout)["value"] == "1"


def test_backends_table(pykv_cli: Run) -> None:
    run = pykv_cli
    out = run("backends")
    assert out.returncode == 0
    assert "sqlite" in out.stdout
    rows = json.loads(run("--json", "backends").stdout)
    sqlite = next(r for r in rows if r["scheme"] == "sqlite")
    assert "persistent" in sqlite["capabilities"]
