"""Hostile and careless labels: bounds, refusals and cuts of the registrar's desired state
(pure logic on `docker inspect` documents), registrator's SERVICE_ID and -useIpFromLabel, and
the supervised threads of a real Registrar on an embedded store."""

from __future__ import annotations

import threading
import time
from typing import Any

from test_registrar_model import NODE, container

import pykv
from pykv.discovery import Endpoint
from pykv.registrar import Registrar, Settings
from pykv.registrar.core import _checks
from pykv.registrar.model import (
    MAX_ENTRY_BYTES,
    MAX_ID,
    MAX_METADATA,
    MAX_NAME,
    MAX_TAGS,
    ModelSettings,
    evaluate,
    unique,
)


def ports(*numbers: int) -> dict[str, list[dict[str, str]] | None]:
    return {f"{n}/tcp": [{"HostIp": "", "HostPort": str(10000 + n)}] for n in numbers}


def test_a_huge_service_name_refuses_the_container_with_the_reason() -> None:
    result = evaluate(container(labels={"SERVICE_NAME": "x" * 1100}), NODE)
    assert result.endpoints == []
    assert result.refused == f"service name is 1100 characters (limit {MAX_NAME})"
    ok = evaluate(container(labels={"SERVICE_NAME": "x" * MAX_NAME}), NODE)
    assert [e.service for e in ok.endpoints] == ["x" * MAX_NAME]
    assert ok.refused == ""


def test_a_name_with_nothing_usable_is_refused() -> None:
    result = evaluate(container(env=["SERVICE_NAME=/../"]), NODE)
    assert (result.endpoints, result.refused) == (
        [],
        "service name '/../' has no usable characters",
    )


def test_tags_are_deduplicated_in_order_and_cut_to_the_bound() -> None:
    tags = ",".join(f"t{i % 40_000}" for i in range(80_000))  # 40,000 distinct, twice each
    result = evaluate(container(labels={"SERVICE_TAGS": tags}), NODE)
    [e] = result.endpoints
    assert e.tags == tuple(f"t{i}" for i in range(MAX_TAGS))
    assert result.cuts == (f"40000 tags, kept the first {MAX_TAGS}",)
    long = evaluate(container(labels={"SERVICE_TAGS": "ok," + "y" * 300}), NODE)
    assert long.endpoints[0].tags == ("ok",)
    assert long.cuts == ("1 tag(s) longer than 256 characters dropped",)


class Counted:
    """A string-like item that counts how often it is compared for equality."""

    compared = 0

    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        Counted.compared += 1
        return isinstance(other, Counted) and other.value == self.value


def test_deduplication_is_linear_in_comparisons() -> None:
    for n in (1_000, 10_000):
        Counted.compared = 0
        items = [Counted(i % (n // 2)) for i in range(n)]
        assert [c.value for c in unique(items)] == list(range(n // 2))
        # One comparison per repeat (hash collisions aside); a quadratic scan needs ~n^2/4.
        assert Counted.compared <= 2 * n


def test_metadata_is_cut_by_count_and_value_size() -> None:
    labels = {f"SERVICE_K{i:03d}": "v" for i in range(100)} | {"SERVICE_BIG": "z" * 5000}
    result = evaluate(container(labels=labels), NODE)
    [e] = result.endpoints
    assert list(e.metadata) == [f"k{i:03d}" for i in range(MAX_METADATA)]
    assert result.cuts == (
        "1 metadata value(s) dropped (keys over 128 or values over 4096 characters)",
        f"100 metadata keys, kept the first {MAX_METADATA} by name",
    )


def test_an_entry_over_the_size_bound_is_refused() -> None:
    labels = {f"SERVICE_K{i:02d}": "v" * 4000 for i in range(12)}  # 48 kB of metadata
    result = evaluate(container(labels=labels), NODE)
    assert result.endpoints == []
    assert result.refused.startswith("the entry of port 80 is ")
    assert result.refused.endswith(f"bytes of JSON (limit {MAX_ENTRY_BYTES})")


def test_absurd_port_keys_are_ignored_not_parsed() -> None:
    labels = {"SERVICE_" + "9" * 5000 + "_NAME": "x", "SERVICE_80_NAME": "web80"}
    [e] = evaluate(container(labels=labels), NODE).endpoints
    assert e.service == "web80"
    assert e.metadata == {}


def test_service_id_is_the_id_scoped_by_node() -> None:
    [e] = evaluate(container(env=["SERVICE_ID=api-1"]), NODE).endpoints
    assert e.id == "host1:api-1"
    other = ModelSettings(node="host2", ip="192.0.2.11")
    [f] = evaluate(container(env=["SERVICE_ID=api-1"]), other).endpoints
    assert f.id == "host2:api-1"
    assert e.key() != f.key()  # two hosts never write one key
    assert "id" not in e.metadata


def test_service_id_with_several_ports_and_port_specific_ids() -> None:
    c = container(ports=ports(80, 443), env=["SERVICE_ID=api", "SERVICE_443_ID=api-tls"])
    ids = [e.id for e in evaluate(c, NODE).endpoints]
    assert ids == ["host1:api:80", "host1:api-tls"]
    udp = container(ports={"53/udp": [{"HostIp": "", "HostPort": "1053"}]}, env=["SERVICE_ID=dns"])
    assert [e.id for e in evaluate(udp, NODE).endpoints] == ["host1:dns:udp"]


def test_service_id_is_sanitised_and_bounded() -> None:
    [e] = evaluate(container(env=["SERVICE_ID=a/b c"]), NODE).endpoints
    assert e.id == "host1:a-b-c"
    long = evaluate(container(env=["SERVICE_ID=" + "i" * 300]), NODE)
    assert long.endpoints == []
    assert long.refused == f"endpoint id is 306 characters (limit {MAX_ID})"


def test_ip_from_label() -> None:
    by_label = ModelSettings(node="host1", ip="192.0.2.10", ip_label="net.ip")
    [e] = evaluate(container(labels={"net.ip": "10.1.2.3/24"}), by_label).endpoints
    assert (e.address, e.port) == ("10.1.2.3", 8080)
    [e] = evaluate(container(), by_label).endpoints  # no label: the host address
    assert e.address == "192.0.2.10"
    bad = evaluate(container(labels={"net.ip": "not-an-ip"}), by_label)
    assert (bad.endpoints, bad.refused) == ([], "label net.ip = 'not-an-ip' is not an IP address")


def test_check_http_https_and_tcp_become_catalog_checks() -> None:
    meta = {"check_http": "/h", "check_https": "s", "check_tcp": "true", "check_interval": "2s"}
    e = Endpoint("web", "n:w:80", "10.0.0.5", 8080, metadata=meta)
    got = [(c.kind, c.target, c.interval, c.timeout) for c in _checks(e)]
    assert got == [
        ("http", "http://10.0.0.5:8080/h", 2.0, 5.0),
        ("http", "https://10.0.0.5:8080/s", 2.0, 5.0),
        ("tcp", "10.0.0.5:8080", 2.0, 5.0),
    ]
    script = Endpoint("web", "n:w:80", "10.0.0.5", 8080, metadata={"check_script": "x"})
    assert _checks(script) == []


# -- supervised threads -----------------------------------------------------------------------


def test_a_crashing_thread_is_logged_shown_and_restarted(caplog: Any) -> None:
    with pykv.open_store("memory://supervised") as store:
        reg = Registrar(Settings(store="memory://supervised", max_backoff=0.2), store)
        calls: list[int] = []
        down_seen = threading.Event()
        release = threading.Event()

        def target() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("boom")
            release.wait(10)  # the second run lives on until released

        thread = threading.Thread(target=reg._supervised, args=("probe", target))
        thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(calls) < 2:
            ok, detail = reg.health()
            if "probe" in detail.get("threads_down", {}):
                assert not ok
                assert detail["threads_down"]["probe"] == "RuntimeError: boom"
                down_seen.set()
            time.sleep(0.01)
        release.set()
        reg.stop()
        thread.join(10)
        assert len(calls) == 2  # restarted
        assert down_seen.is_set()
        assert reg.health()[1]["thread_restarts"] == 1
        assert "threads_down" not in reg.health()[1]
        assert "thread probe failed; restarting it" in caplog.text
        assert 'pykv_registrar_errors_total{kind="thread"} 1.0' in _metrics(reg)


def _metrics(reg: Registrar) -> str:
    from prometheus_client import generate_latest

    return generate_latest(reg.metrics.registry).decode()
