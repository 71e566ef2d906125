"""The registrar's service model, from `docker inspect` documents (pure logic, no Docker)."""

from __future__ import annotations

from typing import Any

import pytest

from pykv.registrar.model import (
    ModelSettings,
    container_endpoints,
    container_state,
    image_base_name,
    parse_bool,
    service_attributes,
)
from pykv.registrar.settings import parse_duration, parse_settings

NODE = ModelSettings(node="host1", ip="192.0.2.10")


def container(
    *,
    name: str = "web-1",
    image: str = "registry:5000/team/web:1.2",
    ports: dict[str, list[dict[str, str]] | None] | None = None,
    exposed: list[str] | None = None,
    env: list[str] | None = None,
    labels: dict[str, str] | None = None,
    networks: dict[str, dict[str, str]] | None = None,
    running: bool = True,
    paused: bool = False,
    health: str | None = None,
    exit_code: int = 0,
) -> dict[str, Any]:
    ports = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]} if ports is None else ports
    state: dict[str, Any] = {
        "Running": running,
        "Paused": paused,
        "Restarting": False,
        "ExitCode": exit_code,
    }
    if health is not None:
        state["Health"] = {"Status": health, "FailingStreak": 0, "Log": []}
    return {
        "Id": "c0ffee" + "0" * 58,
        "Name": "/" + name,
        "Image": "sha256:abc",
        "State": state,
        "Config": {
            "Image": image,
            "Env": env or ["PATH=/bin"],
            "Labels": labels or {},
            "ExposedPorts": {p: {} for p in (exposed if exposed is not None else list(ports))},
        },
        "NetworkSettings": {
            "Ports": ports,
            "Networks": networks
            if networks is not None
            else {"bridge": {"IPAddress": "172.17.0.2", "GlobalIPv6Address": ""}},
        },
    }


def one(c: dict[str, Any], settings: ModelSettings = NODE) -> Any:
    eps = container_endpoints(c, settings)
    assert len(eps) == 1, eps
    return eps[0]


def test_default_endpoint_from_image_base_name() -> None:
    e = one(container())
    assert e.service == "web"
    assert e.id == "host1:web-1:80"
    assert (e.address, e.port, e.protocol) == ("192.0.2.10", 8080, "tcp")
    assert e.node == "host1"
    assert e.container_name == "web-1"
    assert e.container_id.startswith("c0ffee")
    assert e.tags == ()
    assert e.metadata == {}


@pytest.mark.parametrize(
    ("image", "base"),
    [
        ("web", "web"),
        ("web:1", "web"),
        ("team/web:1", "web"),
        ("registry:5000/team/web:1.2", "web"),
        ("registry:5000/web@sha256:0123", "web"),
        ("registry:5000/web:2@sha256:0123", "web"),
    ],
)
def test_image_base_name(image: str, base: str) -> None:
    assert image_base_name(image) == base


def test_specific_host_ip_is_published_and_ip_flag_overrides() -> None:
    c = container(ports={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}]})
    assert one(c).address == "127.0.0.1"
    forced = ModelSettings(node="host1", ip="198.51.100.7", ip_override=True)
    assert one(c, forced).address == "198.51.100.7"


def test_ipv6_binding() -> None:
    c = container(ports={"80/tcp": [{"HostIp": "::1", "HostPort": "18080"}]})
    e = one(c)
    assert (e.address, e.port) == ("::1", 18080)


def test_binding_choice_is_deterministic_ipv4_specific_first() -> None:
    bindings = [
        {"HostIp": "::", "HostPort": "8080"},
        {"HostIp": "0.0.0.0", "HostPort": "8080"},
        {"HostIp": "::1", "HostPort": "9000"},
        {"HostIp": "127.0.0.1", "HostPort": "9001"},
    ]
    assert (one(container(ports={"80/tcp": bindings})).port) == 9001
    assert one(container(ports={"80/tcp": list(reversed(bindings))})).port == 9001


def test_unpublished_ports_get_no_endpoint_without_internal() -> None:
    c = container(ports={"80/tcp": None, "443/tcp": []}, exposed=["80/tcp", "443/tcp"])
    assert container_endpoints(c, NODE) == []


def test_several_ports_append_the_port_and_udp_is_its_own_endpoint() -> None:
    c = container(
        ports={
            "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "1053"}],
            "53/tcp": [{"HostIp": "127.0.0.1", "HostPort": "1053"}],
            "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "1080"}],
        }
    )
    eps = container_endpoints(c, NODE)
    assert [(e.service, e.id, e.protocol, e.port) for e in eps] == [
        ("web-53", "host1:web-1:53", "tcp", 1053),
        ("web-53", "host1:web-1:53:udp", "udp", 1053),
        ("web-80", "host1:web-1:80", "tcp", 1080),
    ]


def test_service_name_env_and_port_specific_name() -> None:
    assert one(container(env=["SERVICE_NAME=api"])).service == "api"
    c = container(
        ports={
            "80/tcp": [{"HostIp": "", "HostPort": "1080"}],
            "443/tcp": [{"HostIp": "", "HostPort": "1443"}],
        },
        env=["SERVICE_NAME=api", "SERVICE_443_NAME=api-tls"],
    )
    assert [e.service for e in container_endpoints(c, NODE)] == ["api-80", "api-tls"]


def test_tags_from_env_port_specific_and_global() -> None:
    settings = ModelSettings(node="host1", ip="192.0.2.10", tags=("dc1", "prod"))
    e = one(container(env=["SERVICE_TAGS= prod, v2 ,,blue"]), settings)
    assert e.tags == ("prod", "v2", "blue", "dc1")
    e = one(container(env=["SERVICE_TAGS=a", "SERVICE_80_TAGS=b,c"]))
    assert e.tags == ("b", "c")


def test_metadata_from_other_service_keys() -> None:
    c = container(
        env=[
            "SERVICE_VERSION=1",
            "SERVICE_80_VERSION=2",
            "SERVICE_REGION=eu",
            "SERVICE_CHECK_HTTP=/health",
            "SERVICE_443_OTHER=x",  # another port's: not this one's
            "SERVICE_NAME=n",
            "SERVICE_TAGS=t",
            "SERVICE_IGNORE=false",
        ]
    )
    assert one(c).metadata == {"check_http": "/health", "region": "eu", "version": "2"}


def test_labels_win_over_env() -> None:
    c = container(
        env=["SERVICE_NAME=from-env", "SERVICE_TAGS=e"],
        labels={"SERVICE_NAME": "from-label", "com.example": "ignored"},
    )
    e = one(c)
    assert e.service == "from-label"
    assert e.tags == ("e",)


def test_only_service_env_values_are_read() -> None:
    env = ["SECRET_TOKEN=hunter2", "SERVICE_NAME=svc", "NOEQUALS", "SERVICE_=empty"]
    assert service_attributes(container(env=env)) == {"NAME": "svc"}


@pytest.mark.parametrize(
    ("value", "ignored"),
    [("true", True), ("1", True), ("yes", True), ("on", True), ("garbage", True),
     ("false", False), ("0", False), ("no", False), ("off", False), ("", False)],
)  # fmt: skip
def test_service_ignore_is_a_boolean(value: str, ignored: bool) -> None:
    eps = container_endpoints(container(env=[f"SERVICE_IGNORE={value}"]), NODE)
    assert (eps == []) is ignored
    eps = container_endpoints(container(labels={"SERVICE_IGNORE": value}), NODE)
    assert (eps == []) is ignored


def test_port_specific_ignore() -> None:
    c = container(
        ports={
            "80/tcp": [{"HostIp": "", "HostPort": "1080"}],
            "443/tcp": [{"HostIp": "", "HostPort": "1443"}],
        },
        env=["SERVICE_443_IGNORE=true"],
    )
    assert [e.id for e in container_endpoints(c, NODE)] == ["host1:web-1:80"]


def test_label_false_overrides_env_ignore() -> None:
    c = container(env=["SERVICE_IGNORE=true"], labels={"SERVICE_IGNORE": "false"})
    assert len(container_endpoints(c, NODE)) == 1


def test_explicit_publishes_only_named_services() -> None:
    explicit = ModelSettings(node="host1", ip="192.0.2.10", explicit=True)
    assert container_endpoints(container(), explicit) == []
    assert one(container(env=["SERVICE_NAME=x"]), explicit).service == "x"
    c = container(
        ports={
            "80/tcp": [{"HostIp": "", "HostPort": "1080"}],
            "443/tcp": [{"HostIp": "", "HostPort": "1443"}],
        },
        labels={"SERVICE_443_NAME": "tls"},
    )
    assert [e.service for e in container_endpoints(c, explicit)] == ["tls"]


def test_internal_uses_container_ip_and_every_exposed_port() -> None:
    internal = ModelSettings(node="host1", ip="192.0.2.10", internal=True)
    c = container(
        ports={"80/tcp": [{"HostIp": "", "HostPort": "1080"}], "9000/tcp": None},
        exposed=["80/tcp", "9000/tcp", "53/udp"],
        networks={
            "zeta": {"IPAddress": "10.9.0.2"},
            "alpha": {"IPAddress": "10.1.0.2"},
        },
    )
    eps = container_endpoints(c, internal)
    assert [(e.id, e.address, e.port, e.protocol) for e in eps] == [
        ("host1:web-1:53:udp", "10.1.0.2", 53, "udp"),
        ("host1:web-1:80", "10.1.0.2", 80, "tcp"),
        ("host1:web-1:9000", "10.1.0.2", 9000, "tcp"),
    ]
    chosen = ModelSettings(node="host1", ip="192.0.2.10", internal=True, network="zeta")
    assert {e.address for e in container_endpoints(c, chosen)} == {"10.9.0.2"}
    missing = ModelSettings(node="host1", ip="192.0.2.10", internal=True, network="nope")
    assert container_endpoints(c, missing) == []


def test_internal_ipv6_only_network_and_host_mode() -> None:
    internal = ModelSettings(node="host1", ip="192.0.2.10", internal=True)
    c = container(networks={"v6": {"IPAddress": "", "GlobalIPv6Address": "fd00::2"}})
    assert one(c, internal).address == "fd00::2"
    host_mode = container(ports={}, exposed=["80/tcp"], networks={"host": {"IPAddress": ""}})
    assert one(host_mode, internal).address == "192.0.2.10"


@pytest.mark.parametrize(
    ("kwargs", "state"),
    [
        ({}, "published"),
        ({"running": False}, "stopped"),
        ({"paused": True}, "paused"),
        ({"health": "starting"}, "starting"),
        ({"health": "unhealthy"}, "unhealthy"),
        ({"health": "healthy"}, "published"),
        ({"health": ""}, "published"),  # Podman's way of saying "no health check"
    ],
)
def test_state_gates_publication(kwargs: dict[str, Any], state: str) -> None:
    c = container(**kwargs)
    assert container_state(c) == state
    assert bool(container_endpoints(c, NODE)) is (state == "published")


def test_service_names_are_sanitised_to_one_segment() -> None:
    assert one(container(env=["SERVICE_NAME=a/b c"])).service == "a-b-c"
    assert container_endpoints(container(env=["SERVICE_NAME=.."]), NODE) == []


def test_sctp_ports_are_skipped() -> None:
    c = container(ports={"9/sctp": [{"HostIp": "", "HostPort": "9"}]})
    assert container_endpoints(c, NODE) == []


def test_parse_helpers() -> None:
    assert parse_bool("TRUE") is True
    with pytest.raises(ValueError, match="boolean"):
        parse_bool("maybe")
    assert parse_duration("30") == 30
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


def test_settings_flags_env_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYKV_STORE", raising=False)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    s = parse_settings([], environ={})
    assert (s.ttl, s.deregister, s.workers) == (30, "always", 4)
    assert s.store.startswith("sqlite:///")
    assert s.store.endswith("pykv.db")
    env = {
        "PYKV_REGISTRAR_TTL": "10s",
        "PYKV_REGISTRAR_INTERNAL": "true",
        "PYKV_REGISTRAR_TAGS": "a, b",
        "PYKV_REGISTRAR_DEREGISTER": "on-success",
        "PYKV_REGISTRAR_STORE": "memory://x",
        "DOCKER_HOST": "tcp://127.0.0.1:2375",
    }
    s = parse_settings([], environ=env)
    assert (s.ttl, s.internal, s.tags, s.deregister) == (10, True, ("a", "b"), "on-success")
    assert (s.store, s.docker_host) == ("memory://x", "tcp://127.0.0.1:2375")
    s = parse_settings(["--ttl", "3", "--store", "memory://y", "--explicit"], environ=env)
    assert (s.ttl, s.store, s.explicit) == (3, "memory://y", True)
    monkeypatch.setenv("PYKV_STORE", "memory://from-pykv-store")
    assert parse_settings([], environ={}).store == "memory://from-pykv-store"
    with pytest.raises(SystemExit):
        parse_settings([], environ={"PYKV_REGISTRAR_DEREGISTER": "sometimes"})
    with pytest.raises(SystemExit):
        parse_settings([], environ={"PYKV_REGISTRAR_TTL": "soon"})
