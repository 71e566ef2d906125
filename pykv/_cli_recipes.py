"""``pykv elect NAME -- CMD`` and ``pykv members NAME``: the recipes on the command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from ._store import Store
from .recipes import Election, Group

__all__ = ["add_recipe_commands"]

EXIT_CONFLICT = 4


def _say(line: str) -> None:
    sys.stderr.write(f"pykv: {line}\n")
    sys.stderr.flush()


def _elect_options(defaults: bool = True) -> argparse.ArgumentParser:
    """The options of ``elect``; without ``defaults`` (for options given after NAME), an
    option not given leaves the value parsed before NAME alone."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    p = argparse.ArgumentParser(add_help=not defaults, prog="pykv elect")
    p.add_argument("--value", default=default(""), help="the leader's value (default empty)")
    p.add_argument("--ttl", type=float, default=default(15), help="TTL, seconds (default 15)")
    p.add_argument("--wait", type=float, default=default(None), help="give up after S seconds")
    p.add_argument(
        "--kill-after",
        type=float,
        default=default(10),
        help="SIGKILL the command S s after SIGTERM (default 10)",
    )
    return p


def cmd_elect(store: Store, args: argparse.Namespace) -> int:
    command = list(args.command)
    if "--" in command:  # options may also come after NAME, before the --
        split = command.index("--")
        _elect_options(defaults=False).parse_args(command[:split], namespace=args)
        command = command[split + 1 :]
    if not command:
        _say("error: elect needs a command after --")
        return 2
    election = Election(store, args.name, ttl=args.ttl)
    if not election.campaign(args.value, timeout=args.wait):
        _say(f"not elected leader of {args.name!r} within {args.wait} s")
        return EXIT_CONFLICT
    env = {
        **os.environ,
        "PYKV_ELECTION": election.name,
        "PYKV_LEADER_TOKEN": str(election.token),
    }
    try:
        proc = subprocess.Popen(command, env=env)
    except OSError as exc:
        election.resign()
        _say(f"cannot run {command[0]!r}: {exc.strerror}")
        return 127
    lost = election.lost
    stopping = threading.Event()

    def on_sigterm(*_: object) -> None:
        stopping.set()
        proc.terminate()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)

    # A command that is no longer leader must not go on acting as one.
    def watchdog() -> None:
        while proc.poll() is None:
            if lost.wait(0.2):
                _say(f"leadership of {args.name!r} lost; terminating the command")
                proc.terminate()
                try:
                    proc.wait(timeout=args.kill_after)
                except subprocess.TimeoutExpired:
                    proc.kill()
                return

    threading.Thread(target=watchdog, name="pykv-elect-watchdog", daemon=True).start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        code = proc.wait()
    finally:
        was_lost = lost.is_set()
        election.resign()
    if was_lost and not stopping.is_set():
        return EXIT_CONFLICT
    return code


def _print_members(members: dict[str, bytes], as_json: bool) -> None:
    if as_json:
        out = {m: v.decode("utf-8", errors="backslashreplace") for m, v in members.items()}
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    else:
        for member, value in members.items():
            text = value.decode("utf-8", errors="backslashreplace")
            sys.stdout.write(f"{member}\t{text}\n" if text else f"{member}\n")
    sys.stdout.flush()


def cmd_members(store: Store, args: argparse.Namespace) -> int:
    group = Group(store, args.name)
    as_json = bool(getattr(args, "json", False) or args.json)
    if not args.watch:
        _print_members(group.members(), as_json)
        return 0
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with group.watch() as members:
        while not stop.is_set():
            try:
                current = members.get(timeout=0.2)
            except TimeoutError:
                continue
            if not as_json:
                sys.stdout.write(f"--- {len(current)} members\n")
            _print_members(current, as_json)
    return 0


def add_recipe_commands(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``elect`` and ``members`` to the ``pykv`` command's subparsers; ``parents`` carry
    the common options (``--store``, ``--json``, ...), accepted after the command too."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "elect",
        parents=[*parents, _elect_options()],
        help="run a command while leader of an election",
        description="Campaign in election NAME, run COMMAND once leader with PYKV_LEADER_TOKEN "
        "set to the fencing token, resign when it exits. If leadership is lost, the command "
        "is terminated (then killed after --kill-after seconds) and pykv exits with 4.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("command", nargs="*", metavar="-- COMMAND")
    p.set_defaults(func=cmd_elect)

    p = subparsers.add_parser(
        "members",
        parents=parents,
        help="list (or watch) the live members of a group",
        description="The members of group NAME, one per line with its metadata; with --watch, "
        "the list again on each change until interrupted.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--watch", action="store_true", help="print the list again on each change")
    p.set_defaults(func=cmd_members)
