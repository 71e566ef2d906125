"""``sqlite:///PATH`` — the embedded, persistent default store.

URL form
    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (as SQLAlchemy writes
    them). ``sqlite://`` alone is the default file under the user's data directory
    (see :func:`pykv.default_store_url`).

Permissions
    The default file is private: its directory is created 0700 and the file 0600 (SQLite gives
    its -wal and -shm files the file's mode). An explicit path follows the umask, like any file
    the process creates; missing directories are created too. A file or directory pykv may not
    use raises :class:`~pykv.PermissionDeniedError`.

Options
    ``timeout`` (seconds, default 10): how long a call waits for the database lock;
    ``prefix``: a key prefix; ``synchronous`` (``normal`` default, or ``full``/``off``):
    SQLite's durability setting (``normal`` with WAL survives process crashes, ``full`` also
    power loss); ``poll_interval`` (seconds, default 0.005): how often watches look for
    commits of other processes.

Capabilities
    Everything: kv, atomic, ttl, watch, watch_tree, lock, shared (between processes on one
    host), persistent. TTL slack: a TTL key of a killed process disappears within its TTL plus
    0.5 s (the sweep interval). Several processes may use one file at once; it is stored in WAL
    mode, so readers never block writers. One keepalive thread per store refreshes its TTL
    keys and locks; if it fails it logs, sets ``lost`` on every lock it keeps, records the
    error in :attr:`~pykv.Store.background_error` and starts over on a new connection.

Layout (schema 2)
    Table ``pykv_kv(path, value, revision, owner, ttl, expires)`` holds keys at their full path,
    one B-tree keyed by path, so a put writes one page. Revisions are taken from the clock in
    microseconds (a hybrid clock: never lower than the process's last revision, the key's
    previous revision + 1, or any deleted key's revision + 1, which ``pykv_meta.deleted``
    remembers), so they grow with every write of a key and, across keys, in write order.
    Expired TTL keys are invisible at once and swept (deleted) on access. ``pykv_locks`` holds
    lock bookkeeping and fencing tokens.

    Change feed: while any process watches, it is registered in ``pykv_watchers`` and triggers
    append every change (insert, new value, deletion) to ``pykv_log`` in commit order; each
    watching process reads the log from its position. Nobody watching, nothing is logged, so
    plain writes cost no more than one row. Old log rows are pruned (``pykv_meta.log_pruned``);
    a watcher that fell behind them re-reads its keys and delivers the final state.
    Registrations of dead processes expire after a minute. Schema 1 files (global revision
    counter with an index, tombstones) are migrated on open.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal, NoReturn

from ._errors import (
    ConfigurationError,
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
    OperationTimeoutError,
    PermissionDeniedError,
    PyKVError,
    UnavailableError,
)
from ._feeds import Change, WatchHub
from ._options import StoreOptions
from ._store import Capability, KVPair, Lock, Store, Watch, new_pair
from ._url import StoreURL

__all__ = ["SQLiteOptions", "SQLiteStore"]

log = logging.getLogger("pykv.sqlite")

SCHEMA_VERSION = 2
#: Log rows older than this many changes are pruned; watchers further behind re-read.
LOG_HISTORY = 10_000
SWEEP_INTERVAL = 0.5
PURGE_INTERVAL = 60.0
#: A watching process's registration lives this long unless renewed (every third of it).
WATCHER_TTL = 60.0
#: A store whose watches are all closed stops its registration after this many seconds.
IDLE_UNREGISTER = 5.0
#: At most this many extra connections serve get() from concurrent threads (WAL readers never
#: block each other or the writer); more threads than that share the main connection.
MAX_READERS = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pykv_kv (
    path     TEXT PRIMARY KEY,
    value    BLOB,
    revision INTEGER NOT NULL,
    owner    TEXT,
    ttl      REAL,
    expires  REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pykv_kv_expires ON pykv_kv(expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS pykv_kv_owner ON pykv_kv(owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS pykv_locks (
    path    TEXT PRIMARY KEY,
    holder  TEXT,
    token   INTEGER NOT NULL,
    expires REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pykv_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO pykv_meta VALUES ('schema_version', 2);
INSERT OR IGNORE INTO pykv_meta VALUES ('deleted', 0), ('log_pruned', 0);
CREATE TABLE IF NOT EXISTS pykv_watchers (id TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pykv_log (
    seq      INTEGER PRIMARY KEY,
    path     TEXT NOT NULL,
    revision INTEGER NOT NULL,
    value    BLOB,
    expires  REAL
);
CREATE TRIGGER IF NOT EXISTS pykv_log_insert AFTER INSERT ON pykv_kv
WHEN EXISTS (SELECT 1 FROM pykv_watchers) BEGIN
    INSERT INTO pykv_log (path, revision, value, expires)
    VALUES (NEW.path, NEW.revision, NEW.value, NEW.expires);
END;
CREATE TRIGGER IF NOT EXISTS pykv_log_update AFTER UPDATE OF value, revision ON pykv_kv
WHEN EXISTS (SELECT 1 FROM pykv_watchers) BEGIN
    INSERT INTO pykv_log (path, revision, value, expires)
    VALUES (NEW.path, NEW.revision, NEW.value, NEW.expires);
END;
CREATE TRIGGER IF NOT EXISTS pykv_log_delete AFTER DELETE ON pykv_kv BEGIN
    UPDATE pykv_meta SET value = MAX(value, OLD.revision) WHERE name = 'deleted';
    INSERT INTO pykv_log (path, revision, value, expires)
    SELECT OLD.path, OLD.revision, NULL, NULL WHERE EXISTS (SELECT 1 FROM pykv_watchers);
END;
"""

#: Schema 1 -> 2: tombstones become deletions (the trigger remembers their revisions), the
#: global revision index goes.
_MIGRATE_1 = """
DELETE FROM pykv_kv WHERE value IS NULL;
UPDATE pykv_meta SET value = MAX(value, (SELECT value FROM pykv_meta WHERE name = 'compacted'))
WHERE name = 'deleted';
DELETE FROM pykv_meta WHERE name = 'compacted';
DROP INDEX IF EXISTS pykv_kv_revision;
UPDATE pykv_meta SET value = 2 WHERE name = 'schema_version';
"""

_LIVE = "value IS NOT NULL AND (expires IS NULL OR expires > ?)"
_PUT = (
    "INSERT INTO pykv_kv (path, value, revision, owner, ttl, expires) "
    "VALUES (?, ?, MAX(?, (SELECT value + 1 FROM pykv_meta WHERE name = 'deleted')), ?, ?, ?) "
    "ON CONFLICT (path) DO UPDATE SET value = excluded.value, "
    "revision = MAX(excluded.revision, pykv_kv.revision + 1), owner = excluded.owner, "
    "ttl = excluded.ttl, expires = excluded.expires"
)
_GET = f"SELECT value, revision FROM pykv_kv WHERE path = ? AND {_LIVE}"
_LOG_TOP = "SELECT COALESCE(MAX(seq), 0) FROM pykv_log"


@dataclass(frozen=True)
class SQLiteOptions(StoreOptions):
    """Options of ``sqlite://`` stores (see the module documentation)."""

    synchronous: Literal["off", "normal", "full"] = "normal"
    poll_interval: float = 0.005

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.synchronous not in ("off", "normal", "full"):
            raise ConfigurationError(
                f"option 'synchronous' must be off, normal or full, not {self.synchronous!r}"
            )
        if not 0 < self.poll_interval <= 1:
            raise ConfigurationError("option 'poll_interval' must be in (0, 1] seconds")


def _upper(range_start: str) -> str:
    """The exclusive upper bound of every path starting with ``range_start`` ending in '/'."""
    return range_start[:-1] + "0"  # '0' sorts right after '/'


class SQLiteStore(Store):
    """The embedded SQLite store. See the module documentation."""

    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    options_class: ClassVar[type[StoreOptions]] = SQLiteOptions
    ttl_slack: ClassVar[float] = 1.0
    url_path_is_prefix: ClassVar[bool] = False
    options: SQLiteOptions

    def __init__(self, url: StoreURL, options: StoreOptions) -> None:
        super().__init__(url, options)
        assert isinstance(options, SQLiteOptions)
        if url.hosts:
            raise ConfigurationError(
                f"{url}: an sqlite URL has no host; write sqlite:///relative.db or "
                "sqlite:////absolute/path.db"
            )
        if "\x00" in url.path:
            raise ConfigurationError(f"{url}: the sqlite path holds a NUL character")
        if url.path and (url.path.endswith("/") or os.path.isdir(url.path)):
            raise UnavailableError(
                f"{url}: the sqlite path {url.path!r} is a directory; name a database file"
            )
        #: The default file is private (0700 directory, 0600 file); explicit ones follow umask.
        self._private = not url.path
        if url.path:
            self.path = url.path
        else:
            from ._defaults import default_sqlite_path

            self.path = default_sqlite_path()
        self._id = uuid.uuid4().hex
        self._head = f"{self.prefix}/" if self.prefix else ""  # self._path(), inlined
        self._last_revision = 0
        self._mutex = threading.RLock()
        self._conn = self._connect(create=True)
        # One cursor for put (under the mutex): no cursor object per call. Its statements run
        # to completion (an upsert, a key lookup), so none stays open.
        self._cursor = self._conn.cursor()
        # get() reads on a pool of reader connections (one cursor each), so threads read in
        # parallel and never wait for a write transaction; each get is its own read
        # transaction, which sees every commit made before it started.
        self._readers: collections.deque[sqlite3.Cursor] = collections.deque()
        self._reader_count = 0
        self._next_sweep = 0.0
        self._next_purge = time.monotonic() + PURGE_INTERVAL
        # watches: one dispatcher thread per store, started with the first watch
        self._hub = WatchHub()
        self._dispatch_lock = threading.RLock()
        self._dispatcher: threading.Thread | None = None
        self._dispatch_conn: sqlite3.Connection | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._dispatched = 0  # position in pykv_log up to which changes were delivered
        self._registered = False
        self._next_register = 0.0
        # keepalive of TTL keys and locks: one thread, started with the first of them
        self._ttls: set[float] = set()
        self._locks: set[_SQLiteLock] = set()
        self._keepalive: threading.Thread | None = None
        self._keepalive_wake = threading.Event()

    # -- connections and errors ------------------------------------------------------------

    def _where(self) -> str:
        return f"the sqlite store {self.path!r}"

    def _errors(self, what: str) -> _ErrorMap:
        """Map sqlite3's errors to pykv's, naming the file. The one place that does it."""
        return _ErrorMap(self, what)

    def _connect(self, *, create: bool = False) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        if create:
            try:
                if not os.path.isdir(directory):
                    os.makedirs(directory, mode=0o700 if self._private else 0o777, exist_ok=True)
                if self._private:  # create it 0600 before SQLite creates it with the umask
                    os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            except PermissionError as exc:
                raise PermissionDeniedError(f"cannot create {self._where()}: {exc}") from exc
            except OSError as exc:
                raise UnavailableError(f"cannot create {self._where()}: {exc}") from exc
        with self._errors("open"):
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
                if create:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if mode != "wal":
                        log.warning("%s: journal mode is %s, not wal", self.path, mode)
                    conn.executescript(_SCHEMA)
                    version = self._migrate(conn)
                    if version != SCHEMA_VERSION:
                        raise ConfigurationError(
                            f"{self._where()} has pykv schema {version}; this pykv reads "
                            f"schema {SCHEMA_VERSION}"
                        )
                conn.execute(f"PRAGMA synchronous = {self.options.synchronous}")
            except BaseException:
                conn.close()
                raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> int:
        """Bring an older pykv file up to this schema; return the file's schema version."""
        version: int = conn.execute(
            "SELECT value FROM pykv_meta WHERE name = 'schema_version'"
        ).fetchone()[0]
        if version != 1:
            return version
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute(
                "SELECT value FROM pykv_meta WHERE name = 'schema_version'"
            ).fetchone()[0]
            if version == 1:
                log.info("%s: migrating the pykv schema 1 -> 2", self.path)
                for statement in filter(str.strip, _MIGRATE_1.split(";")):
                    conn.execute(statement)
                version = 2
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return version

    def _revision(self) -> int:
        """The next revision from this process's hybrid clock (microseconds; call it with
        the mutex held). SQL raises it further when the key's history demands."""
        rev = time.time_ns() // 1000
        if rev <= self._last_revision:
            rev = self._last_revision + 1
        self._last_revision = rev
        return rev

    @contextlib.contextmanager
    def _write_txn(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._mutex, self._errors(what):
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        self._wake.set()

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            self._sweep(self._conn, self._mutex)
            if now >= self._next_purge:
                self._next_purge = now + PURGE_INTERVAL
                with self._mutex:
                    self._purge(self._conn)

    def _sweep(
        self, conn: sqlite3.Connection, mutex: contextlib.AbstractContextManager[object]
    ) -> None:
        """Delete expired TTL keys (of dead processes) so watchers see them go, and expired
        watcher registrations (of dead processes) so nobody logs for them."""
        with mutex, self._errors("sweep expired keys"):
            now = time.time()
            row = conn.execute(
                "SELECT MIN(expires) FROM pykv_kv WHERE expires IS NOT NULL"
            ).fetchone()
            expired = row[0] is not None and row[0] <= now
            if expired:
                conn.execute(
                    "DELETE FROM pykv_kv WHERE expires IS NOT NULL AND expires <= ?", (now,)
                )
            if conn.execute("SELECT 1 FROM pykv_watchers WHERE expires <= ?", (now,)).fetchone():
                conn.execute("DELETE FROM pykv_watchers WHERE expires <= ?", (now,))
        if expired:
            self._wake.set()

    def _purge(self, conn: sqlite3.Connection) -> None:
        """Prune the change log, remembering up to which position it was dropped."""
        with self._errors("prune the change log"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                mark = conn.execute(_LOG_TOP).fetchone()[0] - LOG_HISTORY
                if (
                    mark > 0
                    and conn.execute("SELECT 1 FROM pykv_log WHERE seq < ?", (mark,)).fetchone()
                ):
                    conn.execute("DELETE FROM pykv_log WHERE seq < ?", (mark,))
                    conn.execute(
                        "UPDATE pykv_meta SET value = MAX(value, ?) WHERE name = 'log_pruned'",
                        (mark - 1,),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- keys and values -------------------------------------------------------------------

    def _get(self, key: str) -> KVPair:
        try:  # not a context manager: this is the hottest path
            cursor: sqlite3.Cursor | None
            try:
                cursor = self._readers.pop()  # atomic: no lock needed
            except IndexError:
                cursor = self._new_reader()
            if cursor is None:  # as many readers as allowed are busy: the main connection
                with self._mutex:
                    row = self._cursor.execute(_GET, (self._head + key, time.time())).fetchone()
            else:
                try:
                    row = cursor.execute(_GET, (self._head + key, time.time())).fetchone()
                finally:
                    if self._closed:
                        cursor.connection.close()
                    else:
                        self._readers.append(cursor)
        except sqlite3.Error as exc:
            raise_mapped(self, exc, "get", key)
        if row is None:
            raise KeyNotFoundError(f"{key!r} not found in {self}")
        return new_pair(key, row[0], row[1])

    def _new_reader(self) -> sqlite3.Cursor | None:
        """A cursor on a new reader connection for :meth:`_get`, or None at the limit."""
        with self._mutex:
            if self._reader_count >= MAX_READERS or self._closed:
                return None
            self._reader_count += 1
        try:
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")  # a reader never writes
        except BaseException:
            with self._mutex:
                self._reader_count -= 1
            raise
        return conn.cursor()

    def _exists(self, key: str) -> bool:
        with self._mutex, self._errors(f"exists {key!r}"):
            row = self._conn.execute(
                f"SELECT 1 FROM pykv_kv WHERE path = ? AND {_LIVE}", (self._path(key), time.time())
            ).fetchone()
        return row is not None

    def _owner_fields(self, ttl: float | None) -> tuple[str | None, float | None, float | None]:
        if ttl is None:
            return None, None, None
        self._track_ttl(ttl)
        return self._id, ttl, time.time() + ttl

    def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        # The hottest write path: _maybe_sweep's test, _owner_fields and _revision inlined.
        if time.monotonic() >= self._next_sweep:
            self._maybe_sweep()
        owner, ttl_, expires = (None, None, None) if ttl is None else self._owner_fields(ttl)
        try:
            with self._mutex:
                rev = time.time_ns() // 1000
                if rev <= self._last_revision:
                    rev = self._last_revision + 1
                self._last_revision = rev
                self._cursor.execute(_PUT, (self._head + key, value, rev, owner, ttl_, expires))
        except sqlite3.Error as exc:
            raise_mapped(self, exc, "put", key)
        if self._dispatcher is not None:  # self._notify(), inlined
            self._wake.set()

    def _notify(self) -> None:
        """Wake this store's watch dispatcher after a write of its own."""
        if self._dispatcher is not None:
            self._wake.set()

    def _delete(self, key: str) -> None:
        self._maybe_sweep()
        with self._mutex, self._errors(f"delete {key!r}"):
            self._conn.execute("DELETE FROM pykv_kv WHERE path = ?", (self._path(key),))
        self._wake.set()

    def _list(self, prefix: str) -> list[KVPair]:
        base = self._path(prefix)
        lo = base + "/" if base else ""
        with self._mutex, self._errors(f"list {prefix!r}"):
            if base:
                rows = self._conn.execute(
                    "SELECT path, value, revision FROM pykv_kv WHERE path >= ? AND path < ? "
                    f"AND {_LIVE} ORDER BY path",
                    (lo, _upper(lo), time.time()),
                ).fetchall()
            else:
                rows = self._conn.execute(
                    f"SELECT path, value, revision FROM pykv_kv WHERE {_LIVE} ORDER BY path",
                    (time.time(),),
                ).fetchall()
        rel = self._strip()
        return [new_pair(p[rel:], v, r) for p, v, r in rows]

    def _delete_tree(self, prefix: str) -> None:
        base = self._path(prefix)
        with self._mutex, self._errors(f"delete_tree {prefix!r}"):
            if base:
                lo = base + "/"
                self._conn.execute(
                    "DELETE FROM pykv_kv WHERE path = ? OR (path >= ? AND path < ?)",
                    # delete_tree("") spares the prefix's own key (outside the store): NULL
                    (base if prefix else None, lo, _upper(lo)),
                )
            else:
                self._conn.execute("DELETE FROM pykv_kv")
        self._wake.set()

    def _current(self, conn: sqlite3.Connection, path: str) -> tuple[bytes, int] | None:
        row = conn.execute(
            f"SELECT value, revision FROM pykv_kv WHERE path = ? AND {_LIVE}", (path, time.time())
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def _check_previous(
        self, key: str, current: tuple[bytes, int] | None, previous: KVPair | None
    ) -> None:
        if previous is None:
            if current is not None:
                raise KeyExistsError(f"{key!r} already exists in {self}")
        elif current is None:
            raise KeyNotFoundError(f"{key!r} not found in {self}")
        elif current[1] != previous.revision:
            raise KeyModifiedError(
                f"{key!r} is at revision {current[1]}, not {previous.revision}, in {self}"
            )

    def _atomic_put(
        self, key: str, value: bytes, previous: KVPair | None, ttl: float | None
    ) -> KVPair:
        path = self._path(key)
        owner, ttl_, expires = self._owner_fields(ttl)
        with self._write_txn(f"atomic_put {key!r}") as conn:
            self._check_previous(key, self._current(conn, path), previous)
            conn.execute(_PUT, (path, value, self._revision(), owner, ttl_, expires))
            revision = conn.execute(
                "SELECT revision FROM pykv_kv WHERE path = ?", (path,)
            ).fetchone()[0]
        return KVPair(key, value, revision)

    def _atomic_delete(self, key: str, previous: KVPair) -> None:
        path = self._path(key)
        with self._write_txn(f"atomic_delete {key!r}") as conn:
            self._check_previous(key, self._current(conn, path), previous)
            conn.execute("DELETE FROM pykv_kv WHERE path = ?", (path,))

    # -- watches ---------------------------------------------------------------------------

    def _ensure_dispatcher(self) -> sqlite3.Connection:
        """Start the dispatcher (with the dispatch lock held); return its connection."""
        if self._dispatch_conn is None:
            self._dispatch_conn = self._connect()
        if not self._registered:
            self._register(self._dispatch_conn)
        if self._dispatcher is None:
            self._dispatcher = threading.Thread(
                target=self._dispatch_loop, name=f"pykv-sqlite-watch-{self.path}", daemon=True
            )
            self._dispatcher.start()
        return self._dispatch_conn

    def _register(self, conn: sqlite3.Connection) -> bool:
        """Register (or renew) this store as a watcher, so that writers log their changes;
        return False if the registration had lapsed (changes may have gone unlogged). The
        change-stream position is taken after registering: later commits are all logged."""
        with self._errors("register a watcher"):
            expires = time.time() + WATCHER_TTL
            renewed = conn.execute(
                "UPDATE pykv_watchers SET expires = ? WHERE id = ?", (expires, self._id)
            ).rowcount
            if not renewed:
                conn.execute("INSERT INTO pykv_watchers VALUES (?, ?)", (self._id, expires))
                self._dispatched = conn.execute(_LOG_TOP).fetchone()[0]
        self._registered = True
        self._next_register = time.monotonic() + WATCHER_TTL / 6
        return bool(renewed)

    def _unregister(self, conn: sqlite3.Connection) -> None:
        """Stop the change log for this store's sake (nothing is watched any more)."""
        with self._errors("unregister a watcher"):
            conn.execute("DELETE FROM pykv_watchers WHERE id = ?", (self._id,))
        self._registered = False

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """A read transaction on the dispatcher's connection, with its change-stream position."""
        with self._dispatch_lock:
            conn = self._ensure_dispatcher()
            with self._errors("watch"):
                conn.execute("BEGIN")
                try:
                    rev = conn.execute(_LOG_TOP).fetchone()[0]
                    yield conn, rev
                finally:
                    conn.execute("COMMIT")

    def _read_path(self, conn: sqlite3.Connection, path: str) -> KVPair | None:
        cur = self._current(conn, path)
        return None if cur is None else KVPair(path, cur[0], cur[1])

    def _read_tree(self, conn: sqlite3.Connection, base: str) -> list[KVPair]:
        if base:
            lo = base + "/"
            rows = conn.execute(
                "SELECT path, value, revision FROM pykv_kv WHERE path >= ? AND path < ? "
                f"AND {_LIVE} ORDER BY path",
                (lo, _upper(lo), time.time()),
            ).fetchall()
        else:
            rows = conn.execute(
                f"SELECT path, value, revision FROM pykv_kv WHERE {_LIVE} ORDER BY path",
                (time.time(),),
            ).fetchall()
        return [KVPair(p, v, r) for p, v, r in rows]

    def _watch(self, key: str) -> Watch[KVPair | None]:
        path = self._path(key)
        with self._snapshot() as (conn, rev):
            pair = self._read_path(conn, path)
            current = None if pair is None else KVPair(key, pair.value, pair.revision)
            return self._hub.add_key(f"watch({key!r}) on {self}", path, self._strip(), current, rev)

    def _watch_tree(self, prefix: str) -> Watch[list[KVPair]]:
        base = self._path(prefix)
        strip = self._strip()
        with self._snapshot() as (conn, rev):
            current = [
                KVPair(p.key[strip:], p.value, p.revision) for p in self._read_tree(conn, base)
            ]
            return self._hub.add_tree(
                f"watch_tree({prefix!r}) on {self}", base, strip, current, rev
            )

    def _dispatch_loop(self) -> None:
        conn = self._dispatch_conn
        assert conn is not None
        data_version = -1
        next_sweep = 0.0
        idle_since: float | None = None
        interval = self.options.poll_interval
        while not self._stop.is_set():
            woken = self._wake.wait(interval)
            if self._stop.is_set():
                break
            self._wake.clear()
            try:
                with self._dispatch_lock:
                    now = time.monotonic()
                    if now >= next_sweep:
                        next_sweep = now + SWEEP_INTERVAL / 2
                        self._sweep(conn, contextlib.nullcontext())
                        if now >= self._next_purge:
                            self._next_purge = now + PURGE_INTERVAL
                            self._purge(conn)
                    if not self._registered:
                        continue
                    if self._hub.active:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = now
                    elif now - idle_since > IDLE_UNREGISTER:
                        self._unregister(conn)  # writers stop logging until the next watch
                        continue
                    if now >= self._next_register and not self._register(conn):
                        log.warning("%s: the watch registration had lapsed; re-reading", self)
                        self._resync(conn)
                        continue
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                    if not woken and version == data_version:
                        continue
                    data_version = version
                    self._dispatch_once(conn)
            except PyKVError as exc:
                log.warning("watching %s: %s (retrying)", self, exc)
                time.sleep(min(1.0, self.timeout))
            except Exception as exc:  # noqa: BLE001  (logged by _background_failed; ends the watches)
                self._background_failed("the watch dispatcher", exc)
                with self._dispatch_lock:
                    self._hub.fail_all(UnavailableError(f"watching {self} failed: {exc}"))
                    self._dispatcher = None  # the next watch starts a new dispatcher
                return

    def _resync(self, conn: sqlite3.Connection) -> None:
        """Re-read every watched key and tree and deliver what changed (the log is no help)."""
        with self._errors("re-read watched keys"):
            conn.execute("BEGIN")
            try:
                top = conn.execute(_LOG_TOP).fetchone()[0]
                self._hub.resync(
                    lambda p: self._read_path(conn, p), lambda b: self._read_tree(conn, b), top
                )
                self._dispatched = top
            finally:
                conn.execute("COMMIT")

    def _dispatch_once(self, conn: sqlite3.Connection) -> None:
        with self._errors("read changes"):
            conn.execute("BEGIN")
            try:
                pruned = conn.execute(
                    "SELECT value FROM pykv_meta WHERE name = 'log_pruned'"
                ).fetchone()[0]
                rows = conn.execute(
                    "SELECT seq, revision, path, value, expires FROM pykv_log WHERE seq > ? "
                    "ORDER BY seq",
                    (self._dispatched,),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
        if pruned > self._dispatched:  # fell behind the pruned part of the log
            self._resync(conn)
            return
        if not rows:
            return
        now = time.time()
        self._dispatched = rows[-1][0]
        self._hub.apply(
            Change(rev, path, None if expires is not None and expires <= now else value, seq)
            for seq, rev, path, value, expires in rows
        )

    # -- TTL keepalive and locks -----------------------------------------------------------

    def _track_ttl(self, ttl: float) -> None:
        with self._mutex:
            if ttl not in self._ttls:
                self._ttls.add(ttl)
                self._keepalive_wake.set()
            self._ensure_keepalive()

    def _ensure_keepalive(self) -> None:
        if self._keepalive is None:
            self._keepalive = threading.Thread(
                target=self._keepalive_loop,
                name=f"pykv-sqlite-keepalive-{self.path}",
                daemon=True,
            )
            self._keepalive.start()

    def _keepalive_interval(self) -> float:
        ttls = list(self._ttls) + [lock.ttl for lock in list(self._locks)]
        return max(0.05, min(ttls) / 3) if ttls else 1.0

    def _keepalive_loop(self) -> None:
        conn: sqlite3.Connection | None = None
        failures = 0
        refreshed = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    if conn is None:
                        conn = self._connect()
                    self._keepalive_wake.wait(self._keepalive_interval())
                    self._keepalive_wake.clear()
                    if self._stop.is_set():
                        break
                    try:
                        self._refresh(conn)
                        refreshed = time.monotonic()
                    except PyKVError as exc:
                        log.warning("keeping TTL keys of %s alive failed: %s", self, exc)
                        if self._ttls and time.monotonic() - refreshed > min(self._ttls):
                            self._background_failed("keeping TTL keys alive (they may expire)", exc)
                    for lock in list(self._locks):
                        lock._renew(conn)
                    failures = 0
                except Exception as exc:  # noqa: BLE001  (logged by _keeper_failed)
                    # The keys and locks it keeps may now expire unseen: say so everywhere (every
                    # lock is lost), then start over on a new connection, backing off.
                    self._keeper_failed(exc)
                    if conn is not None:
                        conn.close()
                        conn = None
                    failures += 1
                    self._stop.wait(min(5.0, 0.05 * 2**failures))
        finally:
            if conn is not None:
                conn.close()

    def _keeper_failed(self, exc: Exception) -> None:
        self._background_failed("the keepalive of TTL keys and locks", exc)
        for lock in list(self._locks):
            lock._mark_lost(f"the keepalive failed: {exc!r}")

    def _refresh(self, conn: sqlite3.Connection) -> None:
        if not self._ttls:
            return
        with self._errors("refresh TTL keys"):
            conn.execute(
                "UPDATE pykv_kv SET expires = ? + ttl WHERE owner = ? AND value IS NOT NULL",
                (time.time(), self._id),
            )

    def _lock(self, key: str, value: bytes, ttl: float) -> Lock:
        return _SQLiteLock(self, key, value, ttl)

    # -- closing ---------------------------------------------------------------------------

    def _close(self) -> None:
        for lock in list(self._locks):
            with contextlib.suppress(PyKVError):
                lock._cleanup_lost() if lock.lost.is_set() else lock.release()
        try:
            if self._ttls:
                with self._mutex, self._errors("close"):
                    self._conn.execute("DELETE FROM pykv_kv WHERE owner = ?", (self._id,))
        finally:
            self._stop.set()
            self._wake.set()
            self._keepalive_wake.set()
            for thread in (self._dispatcher, self._keepalive):
                if thread is not None and thread is not threading.current_thread():
                    thread.join(timeout=self.timeout)
            self._hub.close_all()
            with self._mutex:
                self._conn.close()
            while self._readers:  # readers in use close themselves (see _get)
                self._readers.pop().connection.close()
            if self._dispatch_conn is not None:
                if self._registered:
                    with contextlib.suppress(PyKVError):  # else it expires by itself
                        self._unregister(self._dispatch_conn)
                self._dispatch_conn.close()


class _ErrorMap:
    """Context manager mapping sqlite3 errors (a class: it is on every call's hot path)."""

    __slots__ = ("key", "store", "what")

    def __init__(self, store: SQLiteStore, what: str, key: str | None = None) -> None:
        self.store, self.what, self.key = store, what, key

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is not None and isinstance(exc, sqlite3.Error):
            raise_mapped(self.store, exc, self.what, self.key)


def raise_mapped(store: SQLiteStore, exc: sqlite3.Error, what: str, key: str | None) -> NoReturn:
    """Raise the pykv error for a sqlite3 error: the one place that maps them."""
    what = what if key is None else f"{what} {key!r}"
    where, text = store._where(), str(exc)
    if isinstance(exc, sqlite3.OperationalError):
        if "locked" in text or "busy" in text:
            raise OperationTimeoutError(
                f"{what}: {where} stayed locked by another connection for more "
                f"than the timeout ({store.timeout} s)"
            ) from exc
        if "unable to open" in text or "readonly" in text or "disk I/O" in text:
            if _denied(store.path):
                raise PermissionDeniedError(
                    f"{what}: this process may not use {where}: {text}"
                ) from exc
            raise UnavailableError(f"{what}: cannot use {where}: {text}") from exc
        raise UnavailableError(f"{what} failed on {where}: {text}") from exc
    if isinstance(exc, sqlite3.DatabaseError):
        raise UnavailableError(f"{what}: {where} is not a usable SQLite database ({exc})") from exc
    raise UnavailableError(f"{what} failed on {where}: {text}") from exc


def _denied(path: str) -> bool:
    """Whether file permissions keep this process from reading and writing ``path`` (or
    from creating it in its directory)."""
    try:
        os.close(os.open(path, os.O_RDWR))  # the real check: ACLs, immutable files, root
    except PermissionError:
        return True
    except FileNotFoundError:
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.stat(directory)
        except PermissionError:  # a parent directory may not be searched
            return True
        except OSError:
            return False
        return not os.access(directory, os.W_OK | os.X_OK)
    except OSError:
        return False
    return False


class _SQLiteLock(Lock):
    store: SQLiteStore

    def __init__(self, store: SQLiteStore, key: str, value: bytes, ttl: float) -> None:
        super().__init__(store, key, value, ttl)
        self._holder = ""
        self._expires = 0.0

    def _try(self) -> tuple[int | None, float]:
        """One attempt: (token, 0) when acquired, else (None, the holder's expiry time)."""
        store = self.store
        path = store._path(self.key)
        holder = uuid.uuid4().hex
        with store._write_txn(f"lock {self.key!r}") as conn:
            now = time.time()
            row = conn.execute(
                "SELECT holder, token, expires FROM pykv_locks WHERE path = ?", (path,)
            ).fetchone()
            if row is not None and row[0] is not None and row[2] > now:
                return None, row[2]
            token = (row[1] if row is not None else 0) + 1
            expires = now + self.ttl
            conn.execute(
                "INSERT INTO pykv_locks (path, holder, token, expires) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET holder = excluded.holder, "
                "token = excluded.token, expires = excluded.expires",
                (path, holder, token, expires),
            )
            conn.execute(_PUT, (path, self.value, store._revision(), holder, self.ttl, expires))
        self._holder, self._expires = holder, expires
        return token, 0.0

    def _acquire(self, timeout: float | None) -> int | None:
        store = self.store
        deadline = None if timeout is None else time.monotonic() + timeout
        watch: Watch[KVPair | None] | None = None
        try:
            while True:
                token, holder_expires = self._try()
                if token is not None:
                    with store._mutex:
                        store._locks.add(self)
                        store._ensure_keepalive()
                    store._keepalive_wake.set()
                    return token
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                if watch is None:  # wake up when the lock key changes (released, swept)
                    watch = store.watch(self.key)
                    continue
                wait = max(0.01, min(1.0, holder_expires - time.time() + 0.01))
                if remaining is not None:
                    wait = min(wait, remaining)
                with contextlib.suppress(TimeoutError):
                    watch.get(timeout=wait)
                store._check_open()
        finally:
            if watch is not None:
                watch.close()

    def _renew(self, conn: sqlite3.Connection) -> None:
        """Called by the store's keepalive thread."""
        if not self._held or self.lost.is_set():
            return
        store = self.store
        path = store._path(self.key)
        try:
            with store._errors(f"renew lock {self.key!r}"):
                now = time.time()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    held = conn.execute(
                        "UPDATE pykv_locks SET expires = ? WHERE path = ? AND holder = ?",
                        (now + self.ttl, path, self._holder),
                    ).rowcount
                    present = conn.execute(
                        "UPDATE pykv_kv SET expires = ? WHERE path = ? AND owner = ? "
                        "AND value IS NOT NULL",
                        (now + self.ttl, path, self._holder),
                    ).rowcount
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except PyKVError as exc:
            if time.time() > self._expires - self.ttl / 3:
                self._mark_lost(f"could not renew it in time: {exc}")
            return
        if not held:
            self._mark_lost("another holder took it over")
        elif not present:
            self._mark_lost("its key was deleted or overwritten")
            # keep holding the bookkeeping row until the holder releases, so nobody else
            # acquires before this holder has been told
        else:
            self._expires = now + self.ttl

    def _release(self) -> None:
        store = self.store
        path = store._path(self.key)
        with store._mutex:
            store._locks.discard(self)
        with store._write_txn(f"unlock {self.key!r}") as conn:
            conn.execute(
                "UPDATE pykv_locks SET holder = NULL, expires = NULL WHERE path = ? AND holder = ?",
                (path, self._holder),
            )
            conn.execute("DELETE FROM pykv_kv WHERE path = ? AND owner = ?", (path, self._holder))
