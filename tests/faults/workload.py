"""Workload processes of the fault suite: ``python workload.py ROLE --url URL --prefix P --dir D``.

Each process appends one JSON object per line to ``D/ROLE-ID.jsonl`` (flushed at once, so a
SIGKILLed process leaves a readable history) and stops when the file ``D/stop`` (watchers:
``D/stop-watch``) appears. Times are ``time.monotonic()``: one clock shared by every process on
this host (CLOCK_MONOTONIC), so histories of different processes can be merged.

Roles:

``lock``
    contend for the lock ``lock`` (short TTL); while holding, write the fencing token to the
    :class:`FencedRegister` every 50 ms, checking ``lost`` before each write; record acquire,
    release and lost times. ``--unlocked`` skips the lock (a negative control: an unlocked
    workload whose histories the checkers must flag).
``writer``
    alternate plain puts of unique keys ``w/ID-N`` and compare-and-swap increments of
    ``counter``; record every acknowledged and every indeterminate operation.
``watcher``
    watch ``counter`` and the tree ``w`` for the whole run; record every event and error.
``ttl-owner``
    write ephemeral keys ``e/0..2`` and hold the lock ``ttl-lock``, print ``ready`` and wait to
    be SIGKILLed.

Only the standard library and pykv are imported here: the script runs in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pykv

COUNTER = "counter"
LOCK_KEY = "lock"
TTL_LOCK_KEY = "ttl-lock"
TTL_KEYS = ("e/0", "e/1", "e/2")


class Recorder:
    """Appends JSON lines to one file; thread-safe; every line is flushed at once."""

    def __init__(self, path: Path, proc: str) -> None:
        self.proc = proc
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._mutex = threading.Lock()

    def record(self, kind: str, **fields: Any) -> None:
        fields.setdefault("t", time.monotonic())
        line = json.dumps({"type": kind, "proc": self.proc, **fields})
        with self._mutex:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


class FencedRegister:
    """A register outside the cluster that refuses a token lower than the highest it has seen.

    It is a file guarded by ``flock``, shared by every lock worker of a run; each write is
    logged to ``register.jsonl`` with its time, taken under the file lock, so the log's order is
    the order in which the register saw the writes. ``fenced=False`` accepts every token (the
    negative control of the stale-write checker).
    """

    def __init__(self, directory: Path, fenced: bool = True) -> None:
        self.state = directory / "register.state"
        self.log = directory / "register.jsonl"
        self.fenced = fenced

    def write(self, proc: str, token: int) -> bool:
        with self.state.open("a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                handle.seek(0)
                text = handle.read().strip()
                highest = int(text) if text else -1
                accepted = token >= highest or not self.fenced
                if accepted:
                    handle.seek(0)
                    handle.truncate()
                    handle.write(str(max(token, highest)))
                    handle.flush()
                entry = {
                    "type": "register",
                    "proc": proc,
                    "t": time.monotonic(),
                    "token": token,
                    "highest": highest,
                    "accepted": accepted,
                }
                with self.log.open("a", encoding="utf-8") as log:
                    log.write(json.dumps(entry) + "\n")
                return accepted
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


PARENT = os.getppid()


def stopped(directory: Path, name: str = "stop") -> bool:
    """Told to stop, or orphaned: a runner that died cannot tell its workloads any more."""
    return (directory / name).exists() or os.getppid() != PARENT


def open_store(args: argparse.Namespace) -> pykv.Store:
    """Open the store, retrying while the cluster is down (bounded by the stop file)."""
    while True:
        try:
            return pykv.open_store(args.url, prefix=args.prefix, timeout=args.timeout)
        except pykv.PyKVError:
            if stopped(args.dir):
                raise
            time.sleep(0.5)


def run_lock(args: argparse.Namespace, rec: Recorder) -> None:
    register = FencedRegister(args.dir, fenced=not args.unfenced)
    store = open_store(args)
    rec.record("open")  # contending from here (opening imports the driver: slow under load)
    lock = store.lock(LOCK_KEY, value=rec.proc, ttl=args.ttl)
    own_token = 0
    try:
        while not stopped(args.dir):
            # -- acquire ------------------------------------------------------------------
            t0 = time.monotonic()
            if args.unlocked:
                time.sleep(random.uniform(0.0, 0.2))
                own_token += 1
                token: int = own_token
            else:
                try:
                    if not lock.acquire(timeout=10):
                        rec.record("acquire-timeout", t0=t0)
                        continue
                except pykv.PyKVError as exc:
                    rec.record("acquire-error", t0=t0, error=describe(exc))
                    time.sleep(0.2)
                    continue
                assert lock.token is not None
                token = lock.token
            rec.record("acquire", t0=t0, token=token)
            # -- hold: act only while the lock is not known lost ------------------------------
            hold_until = time.monotonic() + random.uniform(0.1, 0.6)
            lost = False
            while time.monotonic() < hold_until:
                if not args.unlocked and lock.lost.wait(0.05):
                    lost = True
                    rec.record("lost", token=token)
                    break
                if args.unlocked:
                    time.sleep(0.05)
                register.write(rec.proc, token)
            # -- release ------------------------------------------------------------------
            if args.unlocked:
                rec.record("release", token=token, ok=True)
            elif not lost:
                t_release = time.monotonic()
                try:
                    lock.release()
                    rec.record("release", t=t_release, t1=time.monotonic(), token=token, ok=True)
                except pykv.LockLostError as exc:
                    rec.record(
                        "release",
                        t=t_release,
                        token=token,
                        ok=False,
                        lost=True,
                        error=describe(exc),
                    )
                except pykv.PyKVError as exc:
                    rec.record("release", t=t_release, token=token, ok=False, error=describe(exc))
            else:
                with contextlib.suppress(pykv.PyKVError):
                    lock.release()  # cleans up the lost hold; raises LockLostError
            time.sleep(random.uniform(0.0, 0.1))
    finally:
        with contextlib.suppress(Exception):
            store.close()


def run_writer(args: argparse.Namespace, rec: Recorder) -> None:
    store = open_store(args)
    n = 0
    try:
        while not stopped(args.dir):
            n += 1
            key, value = f"w/{args.id}-{n}", f"{args.id}-{n}"
            t0 = time.monotonic()
            try:
                store.put(key, value)
                rec.record("put", t0=t0, key=key, value=value, ok=True)
            except pykv.PyKVError as exc:
                rec.record("put", t0=t0, key=key, value=value, ok=False, error=describe(exc))
            t0 = time.monotonic()
            try:
                previous = store.get(COUNTER)
            except pykv.PyKVError as exc:
                rec.record("read", t0=t0, ok=False, error=describe(exc))
                continue
            new = int(previous.value) + 1
            t0 = time.monotonic()
            try:
                store.atomic_put(COUNTER, str(new), previous)
                rec.record("cas", t0=t0, value=new, ok=True)
            except (pykv.KeyModifiedError, pykv.KeyExistsError, pykv.KeyNotFoundError) as exc:
                rec.record("cas", t0=t0, value=new, ok=False, definite=True, error=describe(exc))
            except pykv.PyKVError as exc:
                rec.record("cas", t0=t0, value=new, ok=False, error=describe(exc))
    finally:
        with contextlib.suppress(Exception):
            store.close()


def run_watcher(args: argparse.Namespace, rec: Recorder) -> None:
    store = open_store(args)

    def follow(kind: str) -> None:
        while not stopped(args.dir, "stop-watch"):
            try:
                watch: pykv.Watch[Any] = (
                    store.watch(COUNTER) if kind == "watch" else store.watch_tree("w")
                )
            except pykv.PyKVError as exc:
                rec.record(f"{kind}-error", error=describe(exc))
                time.sleep(0.5)
                continue
            with watch:
                while not stopped(args.dir, "stop-watch"):
                    try:
                        event = watch.get(timeout=0.5)
                    except pykv.WatchTimeoutError:  # no event yet; the watch goes on
                        continue
                    except Exception as exc:
                        rec.record(f"{kind}-error", error=describe(exc))
                        break
                    if kind == "watch":
                        value = None if event is None else int(event.value)
                        revision = None if event is None else event.revision
                        rec.record("watch", value=value, revision=revision)
                    else:
                        revision = max((p.revision for p in event), default=0)
                        rec.record("tree", count=len(event), revision=revision)

    threads = [threading.Thread(target=follow, args=(k,), daemon=True) for k in ("watch", "tree")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with contextlib.suppress(Exception):
        store.close()


def run_ttl_owner(args: argparse.Namespace, rec: Recorder) -> None:
    store = open_store(args)
    for key in TTL_KEYS:
        store.put(key, "alive", ttl=args.ttl)
    lock = store.lock(TTL_LOCK_KEY, value=rec.proc, ttl=args.ttl)
    if not lock.acquire(timeout=30):
        raise SystemExit("ttl-owner: could not acquire ttl-lock")
    rec.record("ttl-ready", token=lock.token)
    print("ready", flush=True)
    while os.getppid() == PARENT:  # until SIGKILL (or the runner is gone)
        time.sleep(1.0)


def _stamp(record: logging.LogRecord) -> bool:
    record.mono = time.monotonic()
    return True


ROLES = {"lock": run_lock, "writer": run_writer, "watcher": run_watcher, "ttl-owner": run_ttl_owner}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--id", default="0")
    parser.add_argument("--ttl", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--unlocked", action="store_true", help="negative control: no lock")
    parser.add_argument("--unfenced", action="store_true", help="negative control: no fencing")
    args = parser.parse_args(argv)
    proc = f"{args.role}-{args.id}"
    # pykv's and the client libraries' warnings (reconnects, renewals failing, locks lost) go
    # to this process's .out file, with the monotonic time the history uses
    logging.basicConfig(level=logging.WARNING, format="%(mono).3f %(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_stamp)
    if args.role == "watcher":
        # the drivers log each broken watch connection or long poll at INFO: the runner counts
        # these lines as the watch's reconnects (see runner.watch_log)
        logging.getLogger("pykv").setLevel(logging.INFO)
    rec = Recorder(args.dir / f"{proc}.jsonl", proc)
    rec.record("start", pid=os.getpid())
    try:
        ROLES[args.role](args, rec)
    except Exception as exc:
        rec.record("crash", error=describe(exc))
        raise
    finally:
        rec.record("exit")
        rec.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
