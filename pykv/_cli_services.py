"""``pykv services [NAME] [--watch] [--json]``: the endpoints published by pykv.discovery."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ._store import Store
from .discovery import DEFAULT_PREFIX, Endpoint, Registry

__all__ = ["add_services_command", "format_table", "run_services"]

_COLUMNS = ("SERVICE", "ID", "ADDRESS", "PORT", "PROTO", "NODE", "TAGS")


def add_services_command(
    subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()
) -> argparse.ArgumentParser:
    """Add ``services`` to the ``pykv`` command's subparsers (``parents``: the options every
    command takes, ``--json`` among them)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "services",
        parents=list(parents),
        help="list (or watch) the endpoints of services",
        description="Without NAME: every endpoint of every service. With --watch: the full "
        "list again on every change, until interrupted.",
    )
    p.add_argument("name", nargs="?", default=None, metavar="NAME", help="one service")
    p.add_argument("--watch", action="store_true", help="print the list again on each change")
    if not parents:  # alone (not under pykv's common options): its own --json
        # Own dest: a subparser default must not clobber the global --json.
        p.add_argument("--json", dest="services_json", action="store_true", help="JSON output")
    p.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"registry prefix (default {DEFAULT_PREFIX})"
    )
    p.set_defaults(func=run_services)
    return p


def format_table(endpoints: Sequence[Endpoint]) -> str:
    """A fixed-width table with a header line."""
    rows = [_COLUMNS] + [
        (
            e.service,
            e.id,
            e.address,
            str(e.port),
            e.protocol,
            e.node,
            ",".join(e.tags),
        )
        for e in endpoints
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _print(endpoints: Sequence[Endpoint], as_json: bool) -> None:
    if as_json:
        text = json.dumps([e.to_dict() for e in endpoints], ensure_ascii=False)
    else:
        text = format_table(endpoints)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_services(store: Store, args: argparse.Namespace) -> int:
    """Print the endpoints of ``args.name`` (or all); with ``args.watch`` until interrupted."""
    registry = Registry(store, getattr(args, "prefix", DEFAULT_PREFIX))
    as_json = bool(getattr(args, "services_json", False) or getattr(args, "json", False))
    name = getattr(args, "name", None)
    if not getattr(args, "watch", False):
        endpoints = registry.endpoints(name) if name else registry.all_endpoints()
        _print(endpoints, as_json)
        return 0
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    first = True
    with registry.watch(name) as watch:
        for endpoints in watch.follow(stop):  # a failed watch raises: no spinning on it
            if not as_json and not first:
                sys.stdout.write("\n")
            first = False
            _print(endpoints, as_json)
    sys.stdout.flush()
    return 0
