"""The ``pykv`` command line.

    pykv [--store URL] [--json] [--timeout S] [-v] COMMAND ...

Commands: get, put, rm, ls, watch, lock, demo, backends, completion (and services, when
discovery is installed). Options go anywhere: ``pykv get KEY --json`` is ``pykv --json get
KEY``. The store is ``--store URL``, else ``$PYKV_STORE``, else the embedded sqlite file in the
user's data directory. Errors are one line on stderr (``-v`` adds the traceback); no traceback
is printed without ``-v``.

Exit codes:
    0  success
    1  other error
    2  usage error (bad arguments: an unknown option, a TTL or timeout out of range)
    3  key not found
    4  conflict: CAS failed, or the lock was not acquired within --wait (or was lost)
    5  backend unavailable or timed out
    6  configuration error (bad URL, option or key) or permission denied
    130 interrupted (Ctrl-C)
    ``pykv lock`` exits with the command's exit status.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import _errors as errors
from ._defaults import STORE_ENV, default_store_url
from ._options import MAX_TIMEOUT
from ._registry import available_backends, open_store
from ._store import MAX_TTL, Capability, KVPair, Store
from ._url import mask_url
from ._version import __version__

__all__ = ["capability_table", "main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT = 0, 1, 2, 3, 4
EXIT_UNAVAILABLE, EXIT_CONFIG, EXIT_INTERRUPTED = 5, 6, 130

_EXIT_BY_ERROR: list[tuple[type[BaseException], int]] = [
    (errors.InvalidKeyError, EXIT_CONFIG),
    (errors.InvalidArgumentError, EXIT_USAGE),
    (errors.KeyNotFoundError, EXIT_NOT_FOUND),
    (errors.KeyExistsError, EXIT_CONFLICT),
    (errors.KeyModifiedError, EXIT_CONFLICT),
    (errors.LockError, EXIT_CONFLICT),
    (errors.UnavailableError, EXIT_UNAVAILABLE),
    (errors.ConfigurationError, EXIT_CONFIG),
    (errors.PermissionDeniedError, EXIT_CONFIG),
    (errors.NotSupportedError, EXIT_CONFIG),
]


def _pair_json(pair: KVPair) -> dict[str, Any]:
    out: dict[str, Any] = {"key": pair.key, "revision": pair.revision}
    try:
        out["value"] = pair.value.decode("utf-8")
    except UnicodeDecodeError:
        out["value_base64"] = base64.b64encode(pair.value).decode("ascii")
    return out


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="backslashreplace")


def _emit_json(obj: object) -> None:
    print(json.dumps(obj, ensure_ascii=False), flush=True)


class _Stopper:
    """Turns SIGTERM into a clean stop of a long-running command (watch, put --ttl)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self.event.set())


def cmd_get(store: Store, args: argparse.Namespace) -> int:
    pair = store.get(args.key)
    if args.json:
        _emit_json(_pair_json(pair))
    else:
        sys.stdout.buffer.write(pair.value)
        if sys.stdout.isatty() and not pair.value.endswith(b"\n"):
            sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
    return EXIT_OK


def cmd_put(store: Store, args: argparse.Namespace) -> int:
    value: bytes = sys.stdin.buffer.read() if args.value == "-" else args.value.encode()
    store.put(args.key, value, ttl=args.ttl)
    pair = store.get(args.key)
    if args.json:
        _emit_json(_pair_json(pair))
    elif not args.quiet:
        print(f"put {pair.key} (revision {pair.revision})", file=sys.stderr)
    if args.ttl is not None:
        print(
            f"keeping {pair.key} alive (ttl {args.ttl:g} s) until interrupted",
            file=sys.stderr,
            flush=True,
        )
        stopper = _Stopper()
        while not stopper.event.wait(1.0):
            if store.background_error is not None:  # the key may be gone: say so, exit 5
                raise errors.UnavailableError(
                    f"keeping {pair.key} alive failed: {store.background_error}"
                ) from store.background_error
    return EXIT_OK


def cmd_rm(store: Store, args: argparse.Namespace) -> int:
    if args.all:
        if args.keys:
            return _usage_error("rm --all deletes the whole store; it takes no KEY")
        store.delete_tree("")
        return EXIT_OK
    if not args.keys:
        return _usage_error("rm needs a KEY (or --all to delete the whole store)")
    if args.recursive and any(not key.strip("/") for key in args.keys):
        # '' and '/' name the whole store: too easy to type by accident (rm -r "$UNSET_VAR").
        return _usage_error("rm -r '' would delete the whole store; say rm --all to mean it")
    for key in args.keys:
        if args.recursive:
            store.delete_tree(key)
        else:
            store.delete(key)
    return EXIT_OK


def cmd_ls(store: Store, args: argparse.Namespace) -> int:
    prefix = args.prefix.strip("/")
    pairs = store.list(prefix)
    base = len(prefix) + 1 if prefix else 0
    if args.recursive:
        rows = pairs
        if args.json:
            _emit_json([_pair_json(p) for p in rows])
        else:
            for p in rows:
                print(p.key)
        return EXIT_OK
    # Like ls: the direct children, with a trailing / for those that have children themselves.
    children: dict[str, bool] = {}
    for p in pairs:
        head, sep, _ = p.key[base:].partition("/")
        children[head] = children.get(head, False) or bool(sep)
    if args.json:
        _emit_json([{"name": n, "has_children": c} for n, c in sorted(children.items())])
    else:
        for name, has_children in sorted(children.items()):
            print(name + ("/" if has_children else ""))
    return EXIT_OK


def cmd_watch(store: Store, args: argparse.Namespace) -> int:
    stopper = _Stopper()
    watch: Any = store.watch_tree(args.key) if args.tree else store.watch(args.key)
    seen = 0
    with watch:
        while not stopper.event.is_set():
            try:
                event = watch.get(timeout=0.2)
            except errors.WatchTimeoutError:  # no event yet; a failed watch raises its error
                continue
            seen += 1
            if args.tree:
                if args.json:
                    _emit_json([_pair_json(p) for p in event])
                else:
                    print(f"--- {len(event)} keys")
                    for p in event:
                        print(f"{p.key} = {_text(p.value)}")
                    sys.stdout.flush()
            elif args.json:
                _emit_json(None if event is None else _pair_json(event))
            else:
                line = "(absent)" if event is None else _text(event.value)
                print(f"{args.key.strip('/')}: {line}", flush=True)
            if args.count and seen >= args.count:
                break
    return EXIT_OK


def cmd_lock(store: Store, args: argparse.Namespace) -> int:
    command = list(args.command)
    if not command:
        return _usage_error("lock needs a command after --")
    lock = store.lock(args.key, value=args.value.encode(), ttl=args.ttl)
    if not lock.acquire(timeout=args.wait):
        print(f"pykv: lock {args.key!r} not acquired within {args.wait} s", file=sys.stderr)
        return EXIT_CONFLICT
    env = {**os.environ, "PYKV_LOCK_KEY": lock.key, "PYKV_LOCK_TOKEN": str(lock.token)}
    try:
        proc = subprocess.Popen(command, env=env)
    except OSError as exc:
        lock.release()
        print(f"pykv: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127

    # If the lock is lost, the command must not go on believing it holds it.
    def watchdog() -> None:
        if lock.lost.wait() and proc.poll() is None:
            print(f"pykv: lock {args.key!r} lost; terminating the command", file=sys.stderr)
            proc.terminate()

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        code = proc.wait()
    finally:
        if lock.held or lock.lost.is_set():
            try:
                lock.release()
            except errors.LockLostError:
                code = code or EXIT_CONFLICT
    return code


def cmd_demo(store: Store, args: argparse.Namespace) -> int:
    """A short tour of what pykv does, on a scratch prefix of the store."""
    import time
    import uuid

    base = f"pykv-demo/{uuid.uuid4().hex[:8]}"
    say = print

    say(f"pykv demo on {store} (keys under {base}/)")
    store.put(f"{base}/config/mode", "fast")
    pair = store.get(f"{base}/config/mode")
    say(f"  put/get     {pair.key} = {_text(pair.value)!r} at revision {pair.revision}")
    new = store.atomic_put(f"{base}/config/mode", "safe", pair)
    say(f"  CAS         swapped to {_text(new.value)!r} (revision {new.revision})")
    try:
        store.atomic_put(f"{base}/config/mode", "stale", pair)
    except errors.KeyModifiedError:
        say("  CAS         a stale update was refused (KeyModifiedError)")
    with store.watch_tree(f"{base}/services") as tree:
        tree.get(timeout=args.wait)
        store.put(f"{base}/services/web-1", "10.0.0.5:8080", ttl=5)
        snap = tree.get(timeout=args.wait)
        say(f"  watch_tree  saw {[p.key for p in snap]} appear (an ephemeral TTL key)")
    lock = store.lock(f"{base}/leader", value="demo", ttl=5)
    start = time.monotonic()
    with lock:
        held_for = time.monotonic() - start
        say(f"  lock        acquired in {held_for * 1000:.1f} ms, fencing token {lock.token}")
    say(f"  ls          {[p.key for p in store.list(base)]}")
    store.delete_tree(base)
    say("  cleanup     deleted the demo keys; ephemeral keys die with this process")
    say("pykv works. Try: pykv put greeting hello && pykv get greeting")
    return EXIT_OK


def capability_table(markdown: bool = True) -> str:
    """The capability table of installed backends, from their declarations."""
    caps = list(Capability)
    rows: list[list[str]] = []
    by_class: dict[type[Store], list[str]] = {}
    broken: list[str] = []
    for scheme, cls in available_backends().items():
        if isinstance(cls, Exception):
            broken.append(f"{scheme}: {cls}")
            continue
        by_class.setdefault(cls, []).append(scheme)
    for cls, schemes in sorted(by_class.items(), key=lambda kv: kv[1][0]):
        rows.append(
            [", ".join(f"`{s}://`" if markdown else s for s in schemes), cls.distribution]
            + [("✓" if c in cls.capabilities else "—") for c in caps]
            + [f"{cls.ttl_slack:g} s"]
        )
    header = ["scheme", "package"] + [c.value for c in caps] + ["ttl slack"]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines += [f"(failed to load) {b}" for b in broken]
    return "\n".join(lines)


def cmd_backends(args: argparse.Namespace) -> int:
    if args.json:
        out: list[dict[str, object]] = []
        for scheme, cls in available_backends().items():
            if isinstance(cls, Exception):
                out.append({"scheme": scheme, "error": str(cls)})
            else:
                out.append(
                    {
                        "scheme": scheme,
                        "class": f"{cls.__module__}.{cls.__qualname__}",
                        "package": cls.distribution,
                        "capabilities": sorted(c.value for c in cls.capabilities),
                        "ttl_slack": cls.ttl_slack,
                    }
                )
        _emit_json(out)
    else:
        print(capability_table(markdown=args.markdown))
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    from ._cli_completion import completion_script

    sys.stdout.write(completion_script(args.shell, build_parser()))
    return EXIT_OK


def _usage_error(message: str) -> int:
    print(f"pykv: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _seconds(maximum: float, *, zero: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, > 0 (or >= 0) and <= ``maximum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        low_ok = value >= 0 if zero else value > 0
        if not (math.isfinite(value) and low_ok and value <= maximum):
            low = ">= 0" if zero else "> 0"
            raise argparse.ArgumentTypeError(
                f"{text!r} is out of range: give seconds {low} and <= {maximum:g}"
            )
        return value

    return parse


class _CommandParser(argparse.ArgumentParser):
    """A command's parser that takes options anywhere among its arguments (``pykv get KEY
    --json``, ``pykv lock KEY --wait 1 -- CMD``): argparse's intermixed parsing."""

    _intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:  # the inner passes of the intermixed parse (Python < 3.13)
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _common_options(defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after it. A command's copy has no defaults,
    so it never overwrites what was given before the command."""
    sup: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", metavar="URL", help=f"store URL (default: ${STORE_ENV})", **sup)
    common.add_argument("--json", action="store_true", help="machine-readable output", **sup)
    common.add_argument(
        "--timeout",
        type=_seconds(MAX_TIMEOUT),
        metavar="S",
        help="per-call timeout, seconds",
        **sup,
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        help="log more; show tracebacks",
        **({"default": 0} if defaults else sup),
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pykv",
        description="Keys, values, watches and locks on any pykv store.",
        epilog=(
            f"The store is --store, else ${STORE_ENV}, else the embedded sqlite default. "
            "Options may also follow the command. "
            "Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 conflict or lock not acquired, "
            "5 unavailable, 6 configuration or permission; lock returns its command's status."
        ),
        parents=[_common_options(defaults=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = _common_options(defaults=False)
    sub: Any = parser.add_subparsers(
        dest="subcommand", required=True, metavar="COMMAND", parser_class=_CommandParser
    )

    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, parents=[common], **kwargs)
        return parser

    p = add("get", help="print a key's value")
    p.add_argument("key")
    p.set_defaults(func=cmd_get)

    p = add("put", help="write a key ('-' reads the value from stdin)")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument(
        "--ttl",
        type=_seconds(MAX_TTL),
        metavar="S",
        help="ephemeral: keep the key alive until interrupted",
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_put)

    p = add("rm", help="delete keys")
    p.add_argument("keys", nargs="*", metavar="KEY")
    p.add_argument("-r", "--recursive", action="store_true", help="delete everything below")
    p.add_argument("--all", action="store_true", help="delete the whole store (every key)")
    p.set_defaults(func=cmd_rm)

    p = add("ls", help="list the keys below a prefix")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("-r", "--recursive", action="store_true", help="every key, recursively")
    p.set_defaults(func=cmd_ls)

    p = add("watch", help="print a key's changes (or a tree's snapshots)")
    p.add_argument("key")
    p.add_argument("--tree", action="store_true", help="watch everything below KEY")
    p.add_argument("--count", type=int, default=0, help="stop after N events")
    p.set_defaults(func=cmd_watch)

    p = add(
        "lock",
        help="run a command while holding a lock (like flock)",
        description="Acquire the lock, run COMMAND with PYKV_LOCK_TOKEN set to the fencing "
        "token, release when it exits. If the lock is lost, the command is terminated.",
    )
    p.add_argument("key")
    p.add_argument("command", nargs="*", metavar="-- COMMAND")
    p.add_argument(
        "--ttl", type=_seconds(MAX_TTL), default=15, metavar="S", help="lock TTL (default 15)"
    )
    p.add_argument(
        "--wait",
        type=_seconds(float("inf"), zero=True),
        default=None,
        metavar="S",
        help="give up after S seconds",
    )
    p.add_argument("--value", default="", help="value readable at KEY while held")
    p.set_defaults(func=cmd_lock)

    p = add("demo", help="a short tour of pykv on the store")
    p.add_argument("--wait", type=float, default=10, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)

    p = add("backends", help="the installed backends and their capabilities")
    p.add_argument("--markdown", action="store_true", help="as a Markdown table")
    p.set_defaults(func=cmd_backends, no_store=True)

    p = add(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script. bash: source <(pykv completion bash), e.g. in "
        "~/.bashrc. zsh: source <(pykv completion zsh) in ~/.zshrc (after compinit), or save "
        "it as _pykv in a directory of $fpath.",
    )
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(func=cmd_completion, no_store=True)

    try:
        from ._cli_services import (  # type: ignore[import-not-found,unused-ignore]
            add_services_command,
        )
    except ImportError:  # discovery not available in this build
        pass
    else:
        add_services_command(sub, parents=[common])
    from ._cli_recipes import add_recipe_commands

    add_recipe_commands(sub, parents=[common])
    return parser


def _command_after_key(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``pykv lock KEY CMD -x`` (flock's form, without ``--``; also ``pykv elect NAME CMD``):
    insert ``--`` before CMD, so CMD's own options are not taken for pykv's. Options before
    CMD stay pykv's."""

    def takes_value(p: argparse.ArgumentParser) -> set[str]:
        return {
            o for a in p._actions if a.option_strings and a.nargs != 0 for o in a.option_strings
        }

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    top_valued = takes_value(parser)
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":  # options before it
        i += 2 if argv[i] in top_valued else 1
    if i >= len(argv) or argv[i] not in ("lock", "elect"):
        return argv
    valued = takes_value(sub.choices[argv[i]])
    positionals = 0
    j = i + 1
    while j < len(argv):
        word = argv[j]
        if word == "--":
            return argv
        if word.startswith("-") and word != "-":
            j += 2 if word in valued else 1
            continue
        positionals += 1
        if positionals == 2:  # KEY, then the command
            return [*argv[:j], "--", *argv[j:]]
        j += 1
    return argv


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(
        _command_after_key(parser, list(sys.argv[1:] if argv is None else argv))
    )
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    url = args.store or default_store_url()
    try:
        if getattr(args, "no_store", False):
            code = args.func(args)
        else:
            options: dict[str, Any] = {}
            if args.timeout is not None:
                options["timeout"] = args.timeout
            with open_store(url, **options) as store:
                code = args.func(store, args)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        code = EXIT_OK
    except Exception as exc:  # noqa: BLE001  (one line, the traceback only with -v)
        code = next((c for t, c in _EXIT_BY_ERROR if isinstance(exc, t)), EXIT_ERROR)
        kind = type(exc).__name__ if isinstance(exc, errors.PyKVError) else "unexpected error"
        print(f"pykv: {kind}: {exc}", file=sys.stderr)
        if args.verbose:
            import traceback

            traceback.print_exc()
    sys.stdout.flush()
    if code and args.verbose:
        print(f"pykv: store was {mask_url(url)}", file=sys.stderr)
    sys.exit(code)
