"""The sqlite store's revisions and change feed (schema 2): what the conformance suite cannot
see from outside — nothing logged when nobody watches, registrations, migration of schema 1."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

import pykv
from pykv import _sqlite


def log_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM pykv_log").fetchone()[0])


def watchers(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM pykv_watchers").fetchone()[0])


def test_changes_are_logged_only_while_someone_watches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite, "IDLE_UNREGISTER", 0.2)
    db = tmp_path / "f.db"
    url = f"sqlite:///{db}"
    with pykv.open_store(url) as writer, pykv.open_store(url) as watcher:
        writer.put("a", b"1")
        writer.delete("a")
        assert log_rows(db) == 0
        assert watchers(db) == 0
        with watcher.watch("a") as watch:
            assert watch.get(timeout=5) is None
            assert watchers(db) == 1
            writer.put("a", b"2")
            writer.delete("a")
            event = watch.get(timeout=5)
            assert event is not None
            assert event.value == b"2"
            assert watch.get(timeout=5) is None
            assert log_rows(db) == 2
        deadline = time.monotonic() + 5
        while watchers(db) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watchers(db) == 0  # idle: writers stopped logging
        writer.put("a", b"3")
        assert log_rows(db) == 2
        with watcher.watch("a") as watch:  # and a new watch registers again
            assert watch.get(timeout=5) == writer.get("a")
            writer.put("a", b"4")
            assert watch.get(timeout=5) == writer.get("a")


def test_a_lapsed_registration_is_renewed_and_the_watch_resyncs(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    url = f"sqlite:///{db}"
    with pykv.open_store(url) as writer, pykv.open_store(url) as watcher:
        assert isinstance(watcher, _sqlite.SQLiteStore)
        with watcher.watch("k") as watch:
            assert watch.get(timeout=5) is None
            # another process swept the registration (as if this one had hung for a minute)
            with sqlite3.connect(db) as conn:
                conn.execute("DELETE FROM pykv_watchers")
            writer.put("k", b"unlogged")
            assert log_rows(db) == 0
            watcher._next_register = 0.0
            event = watch.get(timeout=5)
            assert event is not None
            assert event.value == b"unlogged"
            assert watchers(db) == 1


def test_revisions_never_go_back_whatever_the_clock(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    future = 10**17  # far beyond the microsecond clock
    with pykv.open_store(f"sqlite:///{db}") as store:
        store.put("k", b"1")
        store.put("gone", b"1")
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE pykv_kv SET revision = ?", (future,))
        store.put("k", b"2")
        assert store.get("k").revision == future + 1
        store.delete("gone")
        store.put("gone", b"again")  # a deleted key comes back above its old revision
        assert store.get("gone").revision > future
        before = store.get("k").revision
        store.put("other", b"x")
        store.put("k", b"3")
        assert store.get("k").revision > before


SCHEMA_1 = """
CREATE TABLE pykv_kv (path TEXT PRIMARY KEY, value BLOB, revision INTEGER NOT NULL,
    owner TEXT, ttl REAL, expires REAL) WITHOUT ROWID;
CREATE INDEX pykv_kv_revision ON pykv_kv(revision);
CREATE INDEX pykv_kv_expires ON pykv_kv(expires) WHERE expires IS NOT NULL;
CREATE INDEX pykv_kv_owner ON pykv_kv(owner) WHERE owner IS NOT NULL;
CREATE TABLE pykv_locks (path TEXT PRIMARY KEY, holder TEXT, token INTEGER NOT NULL,
    expires REAL) WITHOUT ROWID;
CREATE TABLE pykv_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO pykv_meta VALUES ('schema_version', 1), ('compacted', 3);
INSERT INTO pykv_kv VALUES ('kept', x'6b', 5, NULL, NULL, NULL);
INSERT INTO pykv_kv VALUES ('dead', NULL, 100000000000000000, NULL, NULL, NULL);
INSERT INTO pykv_locks VALUES ('jobs', NULL, 7, NULL);
"""


def test_schema_1_files_are_migrated(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA_1)
    with pykv.open_store(f"sqlite:///{db}") as store:
        assert store.get("kept") == pykv.KVPair("kept", b"k", 5)
        assert not store.exists("dead")
        assert [p.key for p in store.list("")] == ["kept"]
        store.put("dead", b"alive")  # above the tombstone's revision
        assert store.get("dead").revision > 10**17
        with store.lock("jobs") as lock:
            assert lock.token == 8
    with sqlite3.connect(db) as conn:
        meta = dict(conn.execute("SELECT name, value FROM pykv_meta").fetchall())
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert meta["schema_version"] == 2
    assert "compacted" not in meta
    assert "pykv_kv_revision" not in indexes


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "v9.db"
    with pykv.open_store(f"sqlite:///{db}"):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE pykv_meta SET value = 9 WHERE name = 'schema_version'")
    with pytest.raises(pykv.ConfigurationError, match="schema 9"):
        pykv.open_store(f"sqlite:///{db}")
