"""The ``pykv-registrar`` command.

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

import tenacity

from .._errors import ConfigurationError, OperationTimeoutError, PyKVError, UnavailableError
from .._registry import open_store
from .._store import Store
from .core import Registrar
from .observe import Metrics, MetricsServer, setup_logging
from .settings import Settings, parse_settings

__all__ = ["main"]

log = logging.getLogger("pykv.registrar")


def _open_store(settings: Settings, stop: threading.Event) -> Store | None:
    """Open the store, retrying with backoff while it is unreachable (None: stopped)."""
    retrying = tenacity.Retrying(
        wait=tenacity.wait_exponential_jitter(initial=0.5, max=settings.max_backoff),
        retry=tenacity.retry_if_exception_type((UnavailableError, OperationTimeoutError)),
        stop=tenacity.stop_when_event_set(stop),
        sleep=stop.wait,  # type: ignore[arg-type]  # its bool result is ignored
        before_sleep=lambda s: log.warning(
            "store unreachable (%s); retrying", s.outcome.exception() if s.outcome else ""
        ),
        reraise=True,
    )
    try:
        return retrying(open_store, settings.store)
    except (UnavailableError, OperationTimeoutError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    setup_logging(settings.log_format, settings.log_level)
    stop = threading.Event()
    registrar: Registrar | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()
        if registrar is not None:
            registrar.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        store = _open_store(settings, stop)
    except ConfigurationError as exc:
        log.error("bad store URL: %s", exc)
        return 2
    if store is None:
        return 0
    metrics = Metrics()
    try:
        registrar = Registrar(settings, store, metrics=metrics)
    except PyKVError as exc:
        log.error("%s", exc)
        store.close()
        return 2
    server = None
    if settings.metrics_addr:
        server = MetricsServer(settings.metrics_addr, metrics, registrar.health)
        server.start()
        log.info("metrics on http://%s:%d/metrics", *server.address[:2])
    log.info(
        "publishing into %s below %r (ttl %s s)", store, settings.prefix, settings.ttl or "none"
    )
    if stop.is_set():
        registrar.stop()
    registrar.run()
    if server is not None:
        server.close()
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


if __name__ == "__main__":
    raise SystemExit(main())
