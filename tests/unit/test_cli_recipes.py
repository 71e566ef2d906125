"""``pykv elect`` and ``pykv members``, run as a user would, on a temporary sqlite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pykv
from pykv.recipes import Election, Group


def cli(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pykv", "--store", url, *args],
        capture_output=True,
        check=False,
        text=True,
        env=os.environ.copy(),
        timeout=timeout,
    )


def test_elect_runs_the_command_as_leader(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    show = "import os; print(os.environ['PYKV_LEADER_TOKEN'], os.environ['PYKV_ELECTION'])"
    first = cli(url, "elect", "svc/leader", "--value", "me", "--", sys.executable, "-c", show)
    second = cli(url, "elect", "svc/leader", "--", sys.executable, "-c", show)
    assert first.returncode == 0, first.stderr
    token1, name = first.stdout.split()
    assert name == "svc/leader"
    assert int(second.stdout.split()[0]) > int(token1)
    failing = cli(url, "elect", "svc/leader", "--", sys.executable, "-c", "raise SystemExit(7)")
    assert failing.returncode == 7
    with pykv.open_store(url) as store:
        assert Election(store, "svc/leader").leader() is None  # resigned on exit


def test_elect_waits_and_gives_up(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    with pykv.open_store(url) as store:
        election = Election(store, "busy")
        assert election.campaign(b"other", timeout=5)
        taken = cli(url, "elect", "busy", "--wait", "0.5", "--", sys.executable, "-c", "")
        assert taken.returncode == 4
        assert "not elected" in taken.stderr
        election.resign()


def test_elect_stops_the_command_when_leadership_is_lost(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    # Options both before and after NAME.
    elect = ["elect", "--ttl", "2", "lost", "--value", "x", "--"]
    sleeper = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pykv", "--store", url, *elect, *sleeper],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "up"
        with pykv.open_store(url) as store:
            store.delete("lost")  # someone else takes the key away: leadership is gone
        start = time.monotonic()
        code = proc.wait(timeout=30)
        assert time.monotonic() - start < 30
        assert code == 4
        assert proc.stderr is not None
        assert "leadership of 'lost' lost" in proc.stderr.read()
        with pykv.open_store(url) as store:
            assert store.exists("lost") is False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_members(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    with pykv.open_store(url) as store:
        group = Group(store, "workers")
        group.join("w1", b"10.0.0.1", ttl=30)
        group.join("w2", ttl=30)
        listed = cli(url, "members", "workers")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == ["w1\t10.0.0.1", "w2"]
        as_json = cli(url, "members", "workers", "--json")
        assert json.loads(as_json.stdout) == {"w1": "10.0.0.1", "w2": ""}
    empty = cli(url, "members", "nobody")
    assert (empty.returncode, empty.stdout) == (0, "")
