"""The registrar's desired state (pykv.registrar.desired): `docker inspect` documents and the
settings in, the entries this host should publish out. Pure: no Docker, no store."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from test_registrar_model import container

from pykv.discovery import Endpoint
from pykv.registrar import Settings
from pykv.registrar.desired import (
    Decision,
    DesiredTable,
    by_container,
    catalog_ttl,
    complaint,
    decide,
    desired_entries,
    entry_ttl,
    keeps_entries,
    model_settings,
)
from pykv.registrar.model import ModelSettings, evaluate

HOST = ModelSettings(node="host1", ip="192.0.2.10")
PREFIX = "services"


def c(cid: str, **kwargs: Any) -> dict[str, Any]:
    """A container's inspect document with its own id (hex, as Docker's)."""
    doc = container(**kwargs)
    doc["Id"] = cid * 64 if len(cid) == 1 else cid
    return doc


def bind(*specs: str) -> dict[str, list[dict[str, str]] | None]:
    """``"80/tcp=8080"`` or ``"80/tcp=127.0.0.1:8080"`` (bound) or ``"80/tcp"`` (exposed)."""
    ports: dict[str, list[dict[str, str]] | None] = {}
    for spec in specs:
        port, _, binding = spec.partition("=")
        host_ip, _, host_port = binding.rpartition(":")
        ports[port] = [{"HostIp": host_ip, "HostPort": host_port}] if binding else None
    return ports


def summary(entries: dict[str, str]) -> set[tuple[str, str, int, tuple[str, ...]]]:
    """(key, address, port, tags) of every entry; the key names the service and the id."""
    out = set()
    for key, value in entries.items():
        e = Endpoint.from_json(value)
        out.add((key, e.address, e.port, e.tags))
    return out


CASES: list[tuple[str, list[dict[str, Any]], ModelSettings, set[Any]]] = [
    (
        "one published port on all interfaces: the host address",
        [c("a", name="web-1", ports=bind("80/tcp=0.0.0.0:8080"))],
        HOST,
        {("services/web/host1:web-1:80", "192.0.2.10", 8080, ())},
    ),
    (
        "a specific host IP is published as it is",
        [c("a", name="web-1", ports=bind("80/tcp=127.0.0.1:18080"))],
        HOST,
        {("services/web/host1:web-1:80", "127.0.0.1", 18080, ())},
    ),
    (
        "--ip overrides even a specific host IP",
        [c("a", name="web-1", ports=bind("80/tcp=127.0.0.1:18080"))],
        replace(HOST, ip="198.51.100.7", ip_override=True),
        {("services/web/host1:web-1:80", "198.51.100.7", 18080, ())},
    ),
    (
        "several ports: -<port> names, udp is an endpoint of its own, unbound ports none",
        [c("a", name="dns", ports=bind("53/tcp=:1053", "53/udp=:1053", "9000/tcp"))],
        HOST,
        {
            ("services/web-53/host1:dns:53", "192.0.2.10", 1053, ()),
            ("services/web-53/host1:dns:53:udp", "192.0.2.10", 1053, ()),
        },
    ),
    (
        "SERVICE_<port>_NAME names that port without the -<port> suffix",
        [
            c(
                "a",
                name="app",
                ports=bind("80/tcp=:8080", "443/tcp=:8443"),
                labels={"SERVICE_NAME": "app", "SERVICE_443_NAME": "app-tls"},
            )
        ],
        HOST,
        {
            ("services/app-80/host1:app:80", "192.0.2.10", 8080, ()),
            ("services/app-tls/host1:app:443", "192.0.2.10", 8443, ()),
        },
    ),
    (
        "SERVICE_<port>_TAGS win over SERVICE_TAGS; global tags come last",
        [
            c(
                "a",
                name="app",
                ports=bind("80/tcp=:8080", "443/tcp=:8443"),
                env=["SERVICE_TAGS=a,b", "SERVICE_443_TAGS=tls"],
            )
        ],
        replace(HOST, tags=("global",)),
        {
            ("services/web-80/host1:app:80", "192.0.2.10", 8080, ("a", "b", "global")),
            ("services/web-443/host1:app:443", "192.0.2.10", 8443, ("tls", "global")),
        },
    ),
    (
        "SERVICE_<port>_IGNORE drops that port only; SERVICE_IGNORE the container",
        [
            c(
                "a",
                name="app",
                ports=bind("80/tcp=:8080", "443/tcp=:8443"),
                labels={"SERVICE_80_IGNORE": "true"},
            ),
            c("b", name="quiet", ports=bind("80/tcp=:9090"), env=["SERVICE_IGNORE=1"]),
        ],
        HOST,
        {("services/web-443/host1:app:443", "192.0.2.10", 8443, ())},
    ),
    (
        "-internal: every exposed port at the container's IP and port",
        [
            c(
                "a",
                name="db",
                ports=bind("5432/tcp"),
                networks={"backend": {"IPAddress": "10.0.0.7", "GlobalIPv6Address": ""}},
            )
        ],
        replace(HOST, internal=True),
        {("services/web/host1:db:5432", "10.0.0.7", 5432, ())},
    ),
    (
        "-internal on a network the container is not on: nothing",
        [c("a", name="db", ports=bind("5432/tcp"))],
        replace(HOST, internal=True, network="other"),
        set(),
    ),
    (
        "-explicit: only named services",
        [
            c("a", name="named", ports=bind("80/tcp=:8080"), env=["SERVICE_NAME=api"]),
            c("b", name="anon", ports=bind("80/tcp=:8081")),
        ],
        replace(HOST, explicit=True),
        {("services/api/host1:named:80", "192.0.2.10", 8080, ())},
    ),
    (
        "stopped, paused and unhealthy containers publish nothing",
        [
            c("a", name="down", running=False),
            c("b", name="paused", paused=True),
            c("d", name="sick", health="unhealthy"),
            c("e", name="fine", health="healthy"),
        ],
        HOST,
        {("services/web/host1:fine:80", "192.0.2.10", 8080, ())},
    ),
    (
        "a refused container does not hold back the others",
        [
            c("a", name="huge", labels={"SERVICE_NAME": "x" * 1000}),
            c("b", name="ok", ports=bind("80/tcp=:8081")),
        ],
        HOST,
        {("services/web/host1:ok:80", "192.0.2.10", 8081, ())},
    ),
]


@pytest.mark.parametrize(
    ("containers", "settings", "expected"),
    [pytest.param(cs, s, e, id=name) for name, cs, s, e in CASES],
)
def test_desired_entries(
    containers: list[dict[str, Any]], settings: ModelSettings, expected: set[Any]
) -> None:
    docs: dict[str, Any] = {doc["Id"]: doc for doc in containers}
    assert summary(desired_entries(docs, settings, prefix=PREFIX)) == expected


def test_destroyed_containers_have_no_entries() -> None:
    doc = c("a", name="web-1")
    previous = {doc["Id"]: {k: Endpoint.from_json(v) for k, v in _entries(doc).items()}}
    assert desired_entries({doc["Id"]: None}, HOST, previous=previous) == {}


def _entries(doc: dict[str, Any], settings: ModelSettings = HOST) -> dict[str, str]:
    return desired_entries({doc["Id"]: doc}, settings, prefix=PREFIX)


@pytest.mark.parametrize(
    ("deregister", "exit_code", "kept"),
    [
        ("always", 1, False),
        ("on-success", 0, False),  # a clean exit withdraws
        ("on-success", 137, True),  # a failure stays visible
    ],
)
def test_deregister_on_success_keeps_a_failed_containers_entries(
    deregister: str, exit_code: int, kept: bool
) -> None:
    running = c("a", name="job")
    before = {k: Endpoint.from_json(v) for k, v in _entries(running).items()}
    assert before
    stopped = c("a", name="job", running=False, exit_code=exit_code)
    after = desired_entries(
        {running["Id"]: stopped},
        HOST,
        prefix=PREFIX,
        deregister=deregister,
        previous={running["Id"]: before},
    )
    assert after == ({k: e.to_json() for k, e in before.items()} if kept else {})
    assert keeps_entries(stopped, HOST, deregister) is kept
    assert keeps_entries(running, HOST, deregister) is False  # it has endpoints of its own


def test_one_key_wanted_by_two_containers_goes_to_the_greatest_id() -> None:
    # A name reused before the old container's destroy event was handled: both want one key.
    old = c("1", name="web-1", ports=bind("80/tcp=:8080"))
    new = c("f", name="web-1", ports=bind("80/tcp=:9090"))
    for order in ([old, new], [new, old]):
        table = DesiredTable()
        for doc in order:
            table.apply(doc["Id"], decide(doc, HOST, prefix=PREFIX))
        [(key, value)] = table.targets().items()
        assert Endpoint.from_json(value).port == 9090
        assert table.target(key) == value
    table.apply(new["Id"], decide(None, HOST, prefix=PREFIX))  # the new one is destroyed
    assert Endpoint.from_json(table.target(key) or "").port == 8080


def test_table_reports_changes_only() -> None:
    table = DesiredTable()
    doc = c("a", name="web-1")
    first = table.apply(doc["Id"], decide(doc, HOST))
    assert first is not None
    assert first[0] == {}
    assert len(first[1]) == 1
    assert table.apply(doc["Id"], decide(doc, HOST)) is None  # same entries: nothing to write
    gone = table.apply(doc["Id"], decide(None, HOST))
    assert gone is not None
    assert gone == (first[1], {})
    assert doc["Id"] not in table
    assert table.apply(doc["Id"], Decision(None)) is None  # "keep" never changes anything


def test_complaints_are_said_once_until_they_change() -> None:
    table = DesiredTable()
    huge = c("a", labels={"SERVICE_NAME": "x" * 1000})
    decision = decide(huge, HOST)
    assert decision.refused
    assert decision.complaint == "skipped: service name is 1000 characters (limit 128)"
    assert table.note_complaint("a", decision.complaint) is True
    assert table.note_complaint("a", decision.complaint) is False
    assert table.skipped() == 1
    cut = decide(c("a", labels={"SERVICE_TAGS": "ok," + "y" * 300}), HOST)
    assert not cut.refused
    assert cut.complaint == (
        "published with labels cut: 1 tag(s) longer than 256 characters dropped"
    )
    assert table.note_complaint("a", cut.complaint) is True
    assert table.skipped() == 0
    assert table.note_complaint("a", "") is True
    assert complaint(evaluate(c("a"), HOST)) == ""


def test_ttl_and_catalog_ttl() -> None:
    assert entry_ttl(30.0) == 30.0
    assert entry_ttl(0.0) is None  # --ttl 0: persistent entries
    assert catalog_ttl(10.0, 60.0) == 10.0
    assert catalog_ttl(0.0, 60.0) == 60.0  # persistent entries: Consul's own deadline


@pytest.mark.parametrize(
    ("flags", "engine", "detected", "expected"),
    [
        ({}, "engine-a", "192.0.2.5", ("engine-a", "192.0.2.5", False)),
        ({"node": "n1"}, "engine-a", "192.0.2.5", ("n1", "192.0.2.5", False)),
        ({"ip": "198.51.100.1"}, "engine-a", "", ("engine-a", "198.51.100.1", True)),
    ],
)
def test_node_and_host_address(
    flags: dict[str, str], engine: str, detected: str, expected: tuple[str, str, bool]
) -> None:
    settings = Settings(store="memory://", tags=("t",), internal=True, **flags)  # type: ignore[arg-type]
    model = model_settings(settings, engine, detected)
    assert (model.node, model.ip, model.ip_override) == expected
    assert (model.tags, model.internal) == (("t",), True)


def test_store_entries_grouped_by_container() -> None:
    doc = c("a", name="web-1", ports=bind("80/tcp=:8080", "81/tcp=:8081"))
    entries = _entries(doc)
    foreign = Endpoint("db", "host1:db", "10.0.0.1", 5432).to_json()  # not from a container
    grouped = by_container({**entries, "services/db/x": foreign, "services/bad/y": "{"})
    assert list(grouped) == [doc["Id"]]
    assert {k: e.to_json() for k, e in grouped[doc["Id"]].items()} == entries
    assert json.loads(entries["services/web-80/host1:web-1:80"])["port"] == 8080
