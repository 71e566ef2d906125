"""The ``pykv-registrar`` command.

Order of start: every option is checked (:func:`.settings.parse_settings`), the registrar
extra's modules are looked for, the metrics server binds its address (``/healthz`` answers
503 until the registrar runs), and only then is the store opened, retried as
``--retry-attempts`` / ``--retry-interval`` say. Exit status: 0 stopped, 2 bad option or store
URL, 5 store unreachable after the retries, 6 the registrar extra is not installed.

Stopping: SIGTERM or SIGINT stops cleanly (threads joined, metrics server closed). With
``--deregister-on-exit`` this node's entries are withdrawn and the store closed. Without it the
store is deliberately *not* closed, because closing a store releases its TTL keys at once:
the entries stay until their TTL runs out, so restarting or upgrading the sidecar does not make
services flap; a registrar that stays away lets them expire.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError, OperationTimeoutError, PyKVError, UnavailableError
from .._registry import open_store
from .._store import Store
from . import missing_dependencies
from .settings import Settings, parse_metrics_addr, parse_settings

if TYPE_CHECKING:
    from .core import Registrar
    from .observe import Metrics

__all__ = ["main"]

log = logging.getLogger("pykv.registrar")

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 5
EXIT_NOT_INSTALLED = 6


def _open_store(settings: Settings, stop: threading.Event) -> Store | None:
    """Open the store, retrying while it is unreachable (None: stopped or retries used up)."""
    import tenacity

    from .threads import exponential_backoff

    attempts = settings.retry_attempts
    wait: Any = (
        tenacity.wait_fixed(settings.retry_interval)
        if settings.retry_interval > 0
        else exponential_backoff(0.5, settings.max_backoff)
    )
    give_up: Any = tenacity.stop_when_event_set(stop)
    if attempts >= 0:
        give_up = give_up | tenacity.stop_after_attempt(attempts + 1)
    retrying = tenacity.Retrying(
        wait=wait,
        retry=tenacity.retry_if_exception_type((UnavailableError, OperationTimeoutError)),
        stop=give_up,
        sleep=stop.wait,  # type: ignore[arg-type]  # its bool result is ignored
        before_sleep=lambda s: log.warning(
            "store unreachable (%s); retrying", s.outcome.exception() if s.outcome else ""
        ),
        reraise=True,
    )
    try:
        return retrying(open_store, settings.store)
    except (UnavailableError, OperationTimeoutError) as exc:
        if not stop.is_set():
            log.error("store unreachable after %d attempt(s): %s", attempts + 1, exc)
        return None


def _not_installed(missing: list[str]) -> int:
    sys.stderr.write(
        f"pykv-registrar: the registrar extra is not installed (missing: {', '.join(missing)}); "
        "install it with: pip install 'pykvstore[registrar]'\n"
    )
    return EXIT_NOT_INSTALLED


class _Process:
    """The command's state that the signal handlers and ``/healthz`` look at."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.registrar: Registrar | None = None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        self.stop.set()
        if self.registrar is not None:
            self.registrar.stop()

    def health(self) -> tuple[bool, dict[str, Any]]:
        if self.registrar is None:
            return False, {"store": "opening"}
        return self.registrar.health()


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)  # exits with status 2 on a bad option (and for --help)
    missing = missing_dependencies()
    if missing:
        return _not_installed(missing)
    from .observe import Metrics, MetricsServer, setup_logging

    setup_logging(settings.log_format, settings.log_level)
    process = _Process()
    signal.signal(signal.SIGTERM, process.on_signal)
    signal.signal(signal.SIGINT, process.on_signal)

    metrics = Metrics()
    server = None
    if settings.metrics_addr:
        try:
            server = MetricsServer(settings.metrics_addr, metrics, process.health)
        except OSError as exc:
            host, port = parse_metrics_addr(settings.metrics_addr)
            log.error("--metrics-addr: cannot listen on %s port %d: %s", host or "*", port, exc)
            return EXIT_USAGE
        server.start()
        log.info("metrics on http://%s:%d/metrics", *server.address[:2])
    try:
        code, store = _publish(settings, metrics, process)
    finally:
        if server is not None:
            server.close()
    if store is None:
        return code
    log.info("stopped")
    if settings.deregister_on_exit or not settings.ttl:
        store.close()
        return 0
    # Leave the TTL entries to expire instead of releasing them (see the module docs).
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _publish(settings: Settings, metrics: Metrics, process: _Process) -> tuple[int, Store | None]:
    """Open the store and run the registrar until stopped: (exit status, the store), the store
    None when the registrar did not run."""
    from .core import Registrar

    try:
        store = _open_store(settings, process.stop)
    except ConfigurationError as exc:
        log.error("bad store URL: %s", exc)
        return EXIT_USAGE, None
    if store is None:
        return (0 if process.stop.is_set() else EXIT_UNAVAILABLE), None
    try:
        registrar = Registrar(settings, store, metrics=metrics)
    except PyKVError as exc:
        log.error("%s", exc)
        store.close()
        return EXIT_USAGE, None
    process.registrar = registrar
    log.info(
        "publishing into %s below %r (ttl %s s)",
        store, settings.prefix, settings.ttl or "none",
    )  # fmt: skip
    if process.stop.is_set():
        registrar.stop()
    registrar.run()
    return 0, store


if __name__ == "__main__":
    raise SystemExit(main())
