"""Hostile and careless input: bad arguments, odd keys, secrets, file modes (issue 14), and
the failure paths of watches and of the sqlite keepalive (issue 16)."""

from __future__ import annotations

import gc
import logging
import math
import os
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pykv
from pykv import (
    ConfigurationError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidURLError,
    OperationTimeoutError,
    PyKVError,
    UnavailableError,
    WatchTimeoutError,
)
from pykv._keys import _normalize_key
from pykv._store import MAX_TTL, Watch
from pykv._url import mask_url


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[pykv.Store]:
    url = (
        f"memory://hostile-{id(request)}"
        if request.param == "memory"
        else f"sqlite:///{tmp_path}/h.db"
    )
    with pykv.open_store(url) as s:
        yield s


# -- item 4: every error is a PyKVError, and the built-in type users expect --------------------


@pytest.mark.parametrize(
    ("call", "builtin"),
    [
        (lambda s: s.put("k", None), TypeError),
        (lambda s: s.put("k", 12), TypeError),
        (lambda s: s.put("k", "\ud800"), ValueError),
        (lambda s: s.put("k", "ok", ttl=0), ValueError),
        (lambda s: s.put("k", "ok", ttl=-1), ValueError),
        (lambda s: s.put("k", "ok", ttl=math.nan), ValueError),
        (lambda s: s.put("k", "ok", ttl=math.inf), ValueError),
        (lambda s: s.put("k", "ok", ttl=1e308), ValueError),
        (lambda s: s.put("k", "ok", ttl=MAX_TTL + 1), ValueError),
        (lambda s: s.put("k", "ok", ttl="5"), TypeError),
        (lambda s: s.put("k", "ok", ttl=True), TypeError),
        (lambda s: s.atomic_put("k", "ok", None, ttl=math.inf), ValueError),
        (lambda s: s.atomic_put("k", "ok", "previous"), TypeError),
        (lambda s: s.atomic_delete("k", None), TypeError),
        (lambda s: s.lock("k", ttl=math.nan), ValueError),
        (lambda s: s.lock("k", ttl=1e10), ValueError),
        (lambda s: s.lock("k").acquire(timeout=-1), ValueError),
        (lambda s: s.lock("k").acquire(timeout=math.nan), ValueError),
        (lambda s: s.watch("k").get(timeout=-1), ValueError),
        (lambda s: s.watch("k").get(timeout="1"), TypeError),
        (lambda s: s.get(b"k"), ValueError),
    ],
)
def test_bad_arguments_raise_pykv_errors_of_the_builtin_type(
    store: pykv.Store, call: Callable[[pykv.Store], object], builtin: type[Exception]
) -> None:
    with pytest.raises(PyKVError) as info:
        call(store)
    assert isinstance(info.value, builtin)
    assert isinstance(info.value, InvalidArgumentError)
    assert not store.exists("k")


def test_huge_waits_are_waits_not_overflows(store: pykv.Store) -> None:
    with store.watch("w") as watch:
        assert watch.get(timeout=1e308) is None  # the first event, at once
        store.put("w", "1")
        assert watch.get(timeout=math.inf) is not None
    lock = store.lock("l")
    assert lock.acquire(timeout=1e308)
    lock.release()
    store.put("t", "x", ttl=MAX_TTL)  # the bound itself is accepted
    assert store.get("t").value == b"x"


def test_open_store_argument_errors_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        pykv.open_store("memory://x", timeout=1e308)
    with pytest.raises(ConfigurationError, match="timeout"):
        pykv.open_store("memory://x?timeout=nan")
    with pytest.raises(ConfigurationError, match="NUL"):
        pykv.open_store(f"sqlite:///{tmp_path}/a\x00b.db")
    with pytest.raises(ConfigurationError, match=r"'leader'.*kv, atomic"):
        pykv.open_store("memory://x", require=["leader"])
    with pykv.open_store("memory://x", require="lock") as s:  # one capability as a str
        assert s.capabilities


# -- item 6: keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "char",
    [*"\x80\x85\x9f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"],
)
def test_c1_separators_and_bidi_controls_are_refused(store: pykv.Store, char: str) -> None:
    for key in (f"a{char}b", f"a/{char}", char):
        with pytest.raises(InvalidKeyError, match="control character"):
            store.put(key, "x")
        with pytest.raises(InvalidKeyError):
            store.list(key)
    assert store.list("") == []


@pytest.mark.parametrize(
    "char", [*"\xa0\xad\u200b\u200d\u200f\u202f\u2065\u206a\u3000\ufeff\ue000\U000e0001"]
)
def test_every_unprintable_character_is_refused(store: pykv.Store, char: str) -> None:
    # Other (format, private use, unassigned) and separator characters: keys must be visible
    # text, and Consul's HTTP API cannot read keys holding them.
    with pytest.raises(InvalidKeyError, match=f"U\\+{ord(char):04X}"):
        store.put(f"a{char}b", "x")


def test_printable_neighbours_of_the_refused_characters_are_keys(store: pykv.Store) -> None:
    for char in (" ", "\xa1", "\xae", "\u2027", "\u2030", "\u2070", "\uff21", "\u4e2d"):
        store.put(f"a{char}b", "x")
        assert store.get(f"a{char}b").key == f"a{char}b"


@pytest.mark.parametrize("char", ["\U0001f600", "\U00010000", "\U0002f800", "\ufffc", "\ufffd"])
def test_astral_and_specials_characters_are_refused_on_every_backend(
    store: pykv.Store, char: str
) -> None:
    # ZooKeeper cannot hold them in a path; one key rule for every backend refuses them all.
    with pytest.raises(InvalidKeyError, match="Basic Multilingual Plane"):
        store.put(f"a{char}b", "x")


def test_long_keys_are_cut_in_messages_and_never_cached() -> None:
    store = pykv.open_store("memory://long-keys")
    huge = "k" * (1 << 20)
    with pytest.raises(InvalidKeyError) as info:
        store.get(huge)
    assert len(str(info.value)) < 300
    assert "1048576 characters" in str(info.value)
    before = _normalize_key.cache_info().currsize
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(100):
            with pytest.raises(InvalidKeyError):
                store.get(huge + str(i))
        gc.collect()
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert retained < 5 << 20, f"{retained} bytes retained by 100 rejected 1 MiB keys"
    assert _normalize_key.cache_info().currsize == before
    store.put("short", "x")  # valid keys are still cached
    hits = _normalize_key.cache_info().hits
    store.get("short")
    assert _normalize_key.cache_info().hits == hits + 1


# -- item 9: secrets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("etcd://user:hunter2/xyz@127.0.0.1:2379", "hunter2"),
        ("etcd://user:hunter2/xyz@127.0.0.1:2379", "xyz"),
        ("consul://user:s3cr3t@h:notaport", "s3cr3t"),
        ("etcd://user:pw:with:colons@h:1", "colons"),
        ("zk://user:top@secret@[::1", "secret"),
        ("consul://h:99999/x?token=T0KEN&x=1", "T0KEN"),
        ("etcd://u:p@ss#frag@h", "ss#frag"),
    ],
)
def test_odd_urls_never_echo_secrets(url: str, secret: str) -> None:
    try:
        shown = str(pykv.StoreURL.parse(url))
    except InvalidURLError as exc:
        shown = str(exc)
    assert secret not in shown
    assert secret not in mask_url(url)


def test_passwords_with_at_signs_are_masked_whole() -> None:
    url = "etcd://user:p@ss@127.0.0.1:2379/app"
    assert mask_url(url) == "etcd://user:***@127.0.0.1:2379/app"
    parsed = pykv.StoreURL.parse(url)
    assert parsed.password == "p@ss"
    assert "ss" not in str(parsed).replace("127.0.0.1", "")


def test_options_reprs_mask_secrets() -> None:
    shown = 0
    for cls in {c for c in pykv.available_backends().values() if isinstance(c, type)}:
        fields = {f for f in cls.options_class.__dataclass_fields__ if f in ("token", "password")}
        if not fields:
            continue
        secrets: dict[str, Any] = dict.fromkeys(fields, "TOPSECRET")
        options = cls.options_class(**secrets)
        assert "TOPSECRET" not in repr(options), cls
        assert "***" in repr(options)
        shown += 1
    assert shown >= 1 or not any(s in pykv.available_backends() for s in ("consul", "etcd", "zk"))


# -- item 12: file modes of the default store ----------------------------------------------------


def test_default_store_is_private_and_explicit_paths_follow_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    old = os.umask(0o022)
    try:
        with pykv.open_store("sqlite://") as default:
            default.put("k", "v")
            path = Path(default.path)  # type: ignore[attr-defined]
            assert path.parent == tmp_path / "data" / "pykv"
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            wal = Path(f"{path}-wal")
            assert not wal.exists() or stat.S_IMODE(wal.stat().st_mode) == 0o600
        explicit = tmp_path / "mine" / "kv.db"
        with pykv.open_store(f"sqlite:///{explicit}") as s:
            s.put("k", "v")
        assert stat.S_IMODE(explicit.stat().st_mode) == 0o644
        assert stat.S_IMODE(explicit.parent.stat().st_mode) == 0o755
    finally:
        os.umask(old)


# -- issue 16, defect 3: a failed watch is not "no event yet" ----------------------------------


def test_a_watch_that_failed_with_a_timeout_does_not_raise_timeout_error() -> None:
    watch: Watch[int] = Watch("test watch")
    with pytest.raises(WatchTimeoutError):  # no event yet: a TimeoutError, and the watch goes on
        watch.get(timeout=0.01)
    cause = OperationTimeoutError("the server did not answer within 10 s")
    watch._fail(cause)
    for _ in range(2):  # every later call too
        with pytest.raises(PyKVError) as info:
            watch.get(timeout=0.01)
        assert not isinstance(info.value, TimeoutError)
        assert isinstance(info.value, UnavailableError)
        assert info.value.__cause__ is cause
    assert watch.error is info.value


def test_events_queued_before_a_failure_come_first() -> None:
    watch: Watch[int] = Watch("test watch")
    watch._emit(1)
    watch._fail(UnavailableError("gone"))
    assert watch.get(timeout=0) == 1
    with pytest.raises(UnavailableError, match="gone"):
        watch.get(timeout=0)


# -- issue 16, defect 4: the sqlite keepalive --------------------------------------------------


def test_sqlite_keepalive_that_fails_marks_locks_lost_reports_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path}/keeper.db"
    with pykv.open_store(url) as store, pykv.open_store(url) as other:
        store.put("ephemeral", "e", ttl=1)
        lock = store.lock("held", ttl=1)
        assert lock.acquire(timeout=5)
        assert store.background_error is None
        # A TTL no API call lets through, set behind the store's back: the keeper's next
        # round fails with an error it does not expect (as ttl=inf once made it overflow).
        with caplog.at_level(logging.ERROR, logger="pykv"):
            lock.ttl = None  # type: ignore[assignment]
            store._keepalive_wake.set()  # type: ignore[attr-defined]
            assert lock.lost.wait(10), "the keeper failed without marking its lock lost"
        held: object = lock.held
        assert held is False
        error: object = store.background_error
        assert isinstance(error, TypeError)
        assert any("keepalive" in r.getMessage() for r in caplog.records)
        # Never two holders: the other store gets the lock only after this one was told.
        assert other.lock("held", ttl=1).acquire(timeout=10)
        with pytest.raises(pykv.LockLostError):
            lock.release()
        # The keeper started over: a TTL key outlives its TTL while the store is open.
        store.put("ephemeral", "again", ttl=1)
        time.sleep(2.5)
        assert other.get("ephemeral").value == b"again"
        keeper = store._keepalive  # type: ignore[attr-defined]
        assert keeper is not None
        assert keeper.is_alive()


def test_sqlite_refuses_ttls_that_would_kill_the_keeper(tmp_path: Path) -> None:
    with pykv.open_store(f"sqlite:///{tmp_path}/ttl.db") as store:
        for ttl in (math.inf, 3e10, 1e308):
            with pytest.raises(InvalidArgumentError):
                store.put("k", "v", ttl=ttl)
            with pytest.raises(InvalidArgumentError):
                store.lock("l", ttl=ttl)
        store.put("k", "v", ttl=1)
        time.sleep(1.5)
        assert store.get("k").value == b"v"
        assert store.background_error is None
        assert all(t.name != "pykv-sqlite-keepalive" or t.is_alive() for t in threading.enumerate())


# -- exit code of a store the process may not use ----------------------------------------------


def test_sqlite_permission_denied_is_permission_denied(tmp_path: Path) -> None:
    db = tmp_path / "denied.db"
    with pykv.open_store(f"sqlite:///{db}") as s:
        s.put("k", "v")
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    if os.geteuid() == 0:  # root ignores modes; an immutable file stops it too
        if subprocess.run(["chattr", "+i", str(db)], check=False).returncode:
            pytest.skip("chattr +i is not available here")
    else:
        db.chmod(0o400)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pykv", "--store", f"sqlite:///{db}", "put", "k", "w"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(db)], check=False)
    assert run.returncode == 6, run.stderr
    assert "PermissionDeniedError" in run.stderr
    assert "Traceback" not in run.stderr


def test_sqlite_watch_dispatcher_that_fails_ends_its_watches_and_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pykv.open_store(f"sqlite:///{tmp_path}/dispatch.db") as store:
        watch = store.watch("k")
        assert watch.get(timeout=5) is None
        real = store._dispatch_once  # type: ignore[attr-defined]
        failures = iter([RuntimeError("a bug in the dispatcher")])

        def failing_once(conn: object) -> None:
            error = next(failures, None)
            if error is not None:
                raise error
            real(conn)

        monkeypatch.setattr(store, "_dispatch_once", failing_once)
        store.put("k", "1")

        def drain() -> None:
            while True:  # an event may come first; then the error, never silence
                watch.get(timeout=10)

        with pytest.raises(UnavailableError, match="a bug in the dispatcher"):
            drain()
        error: object = store.background_error
        assert isinstance(error, RuntimeError)
        # A new watch gets a new dispatcher and its events.
        with store.watch("k") as again:
            assert again.get(timeout=5) is not None
            store.put("k", "2")
            assert again.get(timeout=5) == store.get("k")
