"""The pykv command line, run as a user would (a subprocess on a temporary sqlite store)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def test_options_after_the_command_and_its_arguments(pykv_cli: Run) -> None:
    run = pykv_cli
    assert run("put", "app/k", "v", "-q").returncode == 0
    assert json.loads(run("get", "app/k", "--json").stdout)["value"] == "v"
    assert json.loads(run("get", "--json", "app/k").stdout)["value"] == "v"
    assert json.loads(run("ls", "app", "--json", "-r").stdout)[0]["key"] == "app/k"
    script = "import os, sys; print(os.environ['PYKV_LOCK_TOKEN']); sys.exit(5)"
    after = run("lock", "jobs/y", "--wait", "1", "--", sys.executable, "-c", script)
    assert (after.returncode, after.stdout.strip().isdigit()) == (5, True), after.stderr
    # flock's form: the command without --; its own options stay its own
    bare = run("lock", "jobs/y", "--wait=1", sys.executable, "-c", script)
    assert bare.returncode == 5, bare.stderr
    assert int(bare.stdout) > int(after.stdout)
    assert run("lock", "jobs/y", "--wait", "1").returncode == 2  # no command


@pytest.mark.parametrize(
    "args",
    [
        ("put", "k", "v", "--ttl", "0"),
        ("put", "k", "v", "--ttl", "nan"),
        ("put", "k", "v", "--ttl", "inf"),
        ("put", "k", "v", "--ttl", "-1"),
        ("--timeout", "1e308", "get", "k"),
        ("get", "k", "--timeout", "0"),
        ("lock", "k", "--ttl", "1e10", "--", "true"),
        ("lock", "k", "--wait", "nan", "--", "true"),
    ],
)
def test_out_of_range_seconds_are_usage_errors_without_traceback(
    pykv_cli: Run, args: tuple[str, ...]
) -> None:
    out = pykv_cli(*args)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "out of range" in out.stderr


def test_rm_of_the_whole_store_needs_all(pykv_cli: Run) -> None:
    run = pykv_cli
    run("put", "a/b", "1")
    run("put", "c", "2")
    for args in (("rm", "-r", ""), ("rm", "-r", "/"), ("rm", "-r", "a", "//"), ("rm",)):
        refused = run(*args)
        assert refused.returncode == 2, args
        assert "--all" in refused.stderr
    assert run("ls", "-r").stdout.split() == ["a/b", "c"]
    assert run("rm", "--all", "c").returncode == 2
    assert run("rm", "--all").returncode == 0
    assert run("ls", "-r").stdout.split() == []


def test_verbose_never_shows_the_password(pykv_cli: Run) -> None:
    for url in ("etcd://user:hunter2/xyz@127.0.0.1:99999/p", "etcd://user:p@ss@127.0.0.1:0/p"):
        out = pykv_cli("-v", "--store", url, "get", "k")
        assert out.returncode == 6, out.stderr
        for secret in ("hunter2", "xyz", "ss@"):
            assert secret not in out.stderr
        assert "store was etcd://user:***@" in out.stderr


def test_unexpected_errors_are_one_line_without_verbose(pykv_cli: Run, tmp_path: Path) -> None:
    # A value file that cannot be read is no pykv error: still one line, exit 1.
    out = pykv_cli("put", "k", "-", stdin=None)
    assert out.returncode == 0  # empty stdin is an empty value
    missing = pykv_cli("--store", f"sqlite:///{tmp_path}/missing-dir/", "get", "k")
    assert missing.returncode in (5, 6)
    assert missing.stderr.count("\n") == 1
    assert "Traceback" not in missing.stderr


def _failed_watch() -> Any:
    from pykv import OperationTimeoutError
    from pykv._store import Watch

    watch: Any = Watch("a watch that timed out")
    watch._fail(OperationTimeoutError("no answer from the server within 10 s"))
    return watch


def _returns_within(seconds: float, target: Callable[[], object]) -> BaseException | None:
    """Run ``target`` in a thread; fail if it is still running after ``seconds``."""
    import threading

    error: list[BaseException | None] = [None]

    def body() -> None:
        try:
            target()
        except BaseException as exc:
            error[0] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the command spins on a failed watch"
    return error[0]


def test_watch_command_ends_with_the_error_of_a_failed_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    import pykv
    from pykv import UnavailableError
    from pykv._cli import cmd_watch

    with pykv.open_store("memory://failed-watch") as store:
        monkeypatch.setattr(store, "watch", lambda key: _failed_watch())
        monkeypatch.setattr(store, "watch_tree", lambda key: _failed_watch())
        for tree in (False, True):
            args = argparse.Namespace(key="k", tree=tree, json=False, count=0)
            error = _returns_within(10, lambda: cmd_watch(store, args))  # noqa: B023
            assert isinstance(error, UnavailableError)
            assert isinstance(error.__cause__, TimeoutError)


def test_services_watch_ends_with_the_error_of_a_failed_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    import pykv
    from pykv import UnavailableError
    from pykv._cli_services import run_services

    with pykv.open_store("memory://failed-services-watch") as store:
        monkeypatch.setattr(store, "watch_tree", lambda prefix: _failed_watch())
        args = argparse.Namespace(name=None, watch=True, json=False, prefix="services")
        error = _returns_within(10, lambda: run_services(store, args))
        assert isinstance(error, UnavailableError)


def _completion_env() -> dict[str, str]:
    bindir = os.path.dirname(sys.executable)  # where the pykv script is installed
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}


def test_bash_completion_loads_and_completes(pykv_cli: Run, tmp_path: Path) -> None:
    pykv_cli("put", "app/db/url", "x")
    pykv_cli("put", "app/greeting", "y")
    pykv_cli("put", "svc/10.0.0.5:8080", "up")
    script = pykv_cli("completion", "bash")
    assert script.returncode == 0
    (tmp_path / "pykv.bash").write_text(script.stdout)
    probe = f"""
source {tmp_path}/pykv.bash || exit 9
complete -p pykv
t() {{ COMP_LINE="$1"; COMP_POINT=${{#COMP_LINE}}; COMPREPLY=(); _pykv; echo "${{COMPREPLY[*]}}"; }}
t "pykv "
t "pykv get app/"
t "pykv get --js"
t "pykv completion "
t "pykv --json rm svc/10.0.0.5:"
t "pykv put k v --ttl "
"""
    env = {**_completion_env(), "PYKV_STORE": f"sqlite:///{tmp_path}/cli.db"}
    out = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "complete -F _pykv pykv"
    assert {"get", "put", "rm", "ls", "watch", "lock", "completion"} <= set(lines[1].split())
    assert lines[2].split() == ["app/db/", "app/greeting"]
    assert lines[3] == "--json"
    assert lines[4].split() == ["bash", "zsh"]
    assert lines[5] == "8080"  # bash replaces what follows the ':'
    assert lines[6] == ""


def test_bash_completion_loads_as_documented() -> None:
    out = subprocess.run(
        ["bash", "-c", "source <(pykv completion bash) && complete -p pykv"],
        capture_output=True,
        text=True,
        env=_completion_env(),
        timeout=60,
        check=False,
    )
    assert (out.returncode, out.stdout.strip()) == (0, "complete -F _pykv pykv"), out.stderr


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed here")
def test_zsh_completion_completes_in_a_real_zsh(pykv_cli: Run, tmp_path: Path) -> None:
    pykv_cli("put", "app/db/url", "x")
    pykv_cli("put", "app/greeting", "y")
    (tmp_path / "_pykv").write_text(pykv_cli("completion", "zsh").stdout)
    assert subprocess.run(["zsh", "-n", str(tmp_path / "_pykv")], check=False).returncode == 0
    # An interactive zsh in a pseudo-terminal: what a user sees after pressing Tab.
    driver = f"""
zmodload zsh/zpty
zpty -b z 'zsh -f -i'
zpty -w z 'PS1="> "; autoload -U compinit; compinit -u; source {tmp_path}/_pykv; echo READY'
zpty -r z line '*READY*'; zpty -r z line '*READY*'
probe() {{
  zpty -w -n z "$1"$'\\t'
  local out="" chunk deadline=$(( SECONDS + 10 ))
  while (( SECONDS < deadline )); do
    zpty -r -t z chunk && out+=$chunk
    [[ $out == *$2* ]] && break
    sleep 0.1
  done
  print -r -- "${{out//$'\\e'\\[[0-9;?]#[a-zA-Z]/}}" | tr -d '\\r\\a' | tr '\\n' ' '
  print
  zpty -w -n z $'\\C-u'; sleep 0.3; while zpty -r -t z chunk; do :; done
}}
probe "pykv completion " zsh
probe "pykv get app/" greeting
probe "pykv get --js" json
zpty -d z
"""
    env = {**_completion_env(), "PYKV_STORE": f"sqlite:///{tmp_path}/cli.db"}
    out = subprocess.run(
        ["zsh", "-f", "-c", driver],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        check=False,
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out
    assert "bash" in lines[0]
    assert "zsh" in lines[0]
    assert "app/db/" in lines[1]
    assert "app/greeting" in lines[1]
    assert "--json" in lines[2]
