"""The sqlite store under bad conditions: locked, unreadable or foreign files, never hanging."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

import pykv
from pykv import _sqlite


def test_locked_database_times_out_clearly_and_keeps_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/kv.db"
    with pykv.open_store(url) as store:
        store.put("safe", b"before")
    blocker = sqlite3.connect(tmp_path / "kv.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pykv.open_store(url, timeout=0.5) as store:
            start = time.monotonic()
            with pytest.raises(pykv.OperationTimeoutError) as info:
                store.put("safe", b"during")
            assert time.monotonic() - start < 5
            assert "kv.db" in str(info.value)
            assert "locked" in str(info.value)
    except pykv.OperationTimeoutError:
        pass  # opening itself may time out on the exclusive lock: also a clear error
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with pykv.open_store(url) as store:
        assert store.get("safe").value == b"before"


def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(pykv.UnavailableError) as info:
        pykv.open_store(f"sqlite:///{path}")
    assert "garbage.db" in str(info.value)
    assert path.read_bytes() == b"this is not sqlite" * 100


def test_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(pykv.UnavailableError, match="adir"):
        pykv.open_store(f"sqlite:///{tmp_path}/adir/")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(pykv.UnavailableError, match=r"dir\.db"):
        pykv.open_store(f"sqlite:///{tmp_path}/dir.db")


def test_sqlite_url_with_host_is_rejected() -> None:
    with pytest.raises(pykv.ConfigurationError, match="no host"):
        pykv.open_store("sqlite://localhost/kv.db")


def test_bad_sqlite_options(tmp_path: Path) -> None:
    with pytest.raises(pykv.ConfigurationError, match="synchronous"):
        pykv.open_store(f"sqlite:///{tmp_path}/x.db?synchronous=sometimes")


def test_data_persists_across_opens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    with pykv.open_store(url) as store:
        store.put("persist", b"yes")
        store.put("ephemeral", b"no", ttl=5)
    with pykv.open_store(url) as store:
        assert store.get("persist").value == b"yes"
        assert not store.exists("ephemeral")


def test_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pykv.open_store("sqlite:///rel.db") as store:
        store.put("k", b"v")
    assert (tmp_path / "rel.db").exists()


def last_event(watch: pykv.Watch[pykv.KVPair | None], quiet: float = 0.5) -> object:
    """The last event before the watch has been quiet for ``quiet`` seconds."""
    event: object = watch.get(timeout=5)
    while True:
        try:
            event = watch.get(timeout=quiet)
        except TimeoutError:
            return event


def test_watchers_behind_the_pruned_log_resync(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    with pykv.open_store(url) as store, store.watch("w") as watch:
        assert watch.get(timeout=5) is None
        store.put("w", b"1")
        assert watch.get(timeout=5) is not None
        assert isinstance(store, _sqlite.SQLiteStore)
        # simulate a dispatcher far behind: the log was pruned beyond what it has seen
        with store._mutex:
            store._conn.execute("UPDATE pykv_meta SET value = 1000000000 WHERE name = 'log_pruned'")
        store.delete("w")
        assert last_event(watch) is None
