"""The registrar's logs, metrics endpoint and health endpoint (no Docker needed)."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

import pytest

from pykv.registrar.observe import JSONFormatter, Metrics, MetricsServer


def test_json_log_lines_carry_extra_fields() -> None:
    record = logging.LogRecord("pykv.registrar", logging.WARNING, __file__, 1, "x %s", ("y",), None)
    record.container = "abc"
    data = json.loads(JSONFormatter().format(record))
    assert data["message"] == "x y"
    assert data["level"] == "warning"
    assert data["logger"] == "pykv.registrar"
    assert data["container"] == "abc"
    assert data["time"].endswith("Z")


def test_metrics_and_healthz_endpoints() -> None:
    metrics = Metrics()
    metrics.events.labels("start").inc(3)
    metrics.published.set(7)
    state: dict[str, Any] = {"ok": True}
    server = MetricsServer("127.0.0.1:0", metrics, lambda: (state["ok"], {"docker": "x"}))
    server.start()
    base = f"http://127.0.0.1:{server.address[1]}"
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'pykv_registrar_events_total{action="start"} 3.0' in text
        assert "pykv_registrar_endpoints_published 7.0" in text
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            assert json.loads(r.read()) == {"ok": True, "docker": "x"}
        state["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/healthz", timeout=5)
        assert info.value.code == 503
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/other", timeout=5)
        assert info.value.code == 404
    finally:
        server.close()
