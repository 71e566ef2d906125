"""Logs (text or JSON lines), Prometheus metrics and the ``/healthz`` endpoint."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .settings import parse_metrics_addr

__all__ = ["JSONFormatter", "Metrics", "MetricsServer", "setup_logging"]

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                data[key] = value if isinstance(value, int | float | bool | str) else str(value)
        if record.exc_info:
            data["error"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Metrics:
    """The registrar's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "pykv_registrar_events_total",
            "Docker container events seen, by action",
            ["action"],
            registry=self.registry,
        )
        self.published = Gauge(
            "pykv_registrar_endpoints_published",
            "Endpoints this registrar currently has in the store",
            registry=self.registry,
        )
        self.reconciles = Counter(
            "pykv_registrar_reconciles_total",
            "Full reconciliations of Docker and the store",
            registry=self.registry,
        )
        self.errors = Counter(
            "pykv_registrar_errors_total",
            "Errors, by where they happened (docker, store)",
            ["kind"],
            registry=self.registry,
        )
        self.store_latency = Histogram(
            "pykv_registrar_store_latency_seconds",
            "Latency of store calls, by operation",
            ["op"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.skipped = Counter(
            "pykv_registrar_skipped_total",
            "What was skipped, logged once each: containers whose labels make no valid entry, "
            "entries the store refused, malformed entries found in the store",
            ["what"],
            registry=self.registry,
        )
        self.cut = Counter(
            "pykv_registrar_labels_cut_total",
            "Containers published with tags or metadata cut to the bounds",
            registry=self.registry,
        )
        self.writes = Counter(
            "pykv_registrar_store_writes_total",
            "Store writes (put, delete) made by the registrar",
            ["op"],
            registry=self.registry,
        )


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """``GET /metrics`` (Prometheus text format) and ``GET /healthz`` on HOST:PORT."""

    def __init__(
        self,
        addr: str,
        metrics: Metrics,
        health: Callable[[], tuple[bool, dict[str, Any]]],
    ) -> None:
        host, port = parse_metrics_addr(addr)
        host = host or "0.0.0.0"  # noqa: S104 (operators choose; the default is all)
        registry = metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] == "/metrics":
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif self.path.split("?", 1)[0] == "/healthz":
                    ok, detail = health()
                    body = json.dumps({"ok": ok, **detail}).encode()
                    status, ctype = (200 if ok else 503), "application/json"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        server_class = _V6Server if ":" in host else ThreadingHTTPServer
        self.server = server_class((host, port), Handler)
        self.server.daemon_threads = True
        self.address = self.server.server_address
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="pykv-registrar-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
