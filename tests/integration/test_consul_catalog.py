"""The Consul driver's service catalog (pykv.discovery.CatalogPublisher) on the harness Consul,
and ``pykv-registrar --consul-catalog`` publishing real busybox containers into it.

Consul runs in a container of the harness, so its HTTP checks reach a workload container only
over a Docker network they share: the registrar tests attach their container to Consul's own
compose network and run the registrar with ``--internal --network <that network>``, so the
published address (and the ``SERVICE_CHECK_HTTP`` URL built from it) is the container's IP
there. The test itself only talks to Consul (127.0.0.1) and to the Docker engine.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from _harness import ConsulACL
from pykv_consul import ConsulStore
from test_registrar import Containers, RegistrarProc, _docker, free_port, wait_for

import pykv
from pykv.discovery import CatalogCheck, CatalogPublisher, Endpoint, Registry

pytestmark = [pytest.mark.integration, pytest.mark.consul, pytest.mark.docker]

TTL = 2.0


# -- Consul's HTTP API, read directly -------------------------------------------------------


class Agent:
    """The harness Consul's HTTP API, to see what the driver did (not through the driver)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.base = f"http://{parsed.hostname}:{parsed.port}"
        self.headers = {"X-Consul-Token": token} if token else {}

    def get(self, path: str) -> Any:
        response = requests.get(self.base + path, headers=self.headers, timeout=5)
        response.raise_for_status()
        return response.json()

    def put(self, path: str) -> None:
        requests.put(self.base + path, headers=self.headers, timeout=5).raise_for_status()

    def catalog(self, name: str) -> list[dict[str, Any]]:
        return self.get(f"/v1/catalog/service/{name}")  # type: ignore[no-any-return]

    def checks(self, name: str) -> dict[str, dict[str, Any]]:
        """CheckID -> check, of the service ``name``."""
        return {c["CheckID"]: c for c in self.get(f"/v1/health/checks/{name}")}

    def statuses(self, name: str) -> dict[str, str]:
        return {cid: c["Status"] for cid, c in self.checks(name).items()}

    def deregister_named(self, prefix: str) -> None:
        for sid, service in self.get("/v1/agent/services").items():
            if service["Service"].startswith(prefix):
                self.put(f"/v1/agent/service/deregister/{sid}")


def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def agent(consul_url: str, tag: str) -> Iterator[Agent]:
    a = Agent(consul_url)
    try:
        yield a
    finally:
        a.deregister_named(f"pt-{tag}")


def open_consul(url: str) -> ConsulStore:
    s = pykv.open_store(url)
    assert isinstance(s, ConsulStore)
    return s


@pytest.fixture
def store(consul_url: str) -> Iterator[ConsulStore]:
    s = open_consul(consul_url)
    try:
        yield s
    finally:
        s.close()


def endpoint(tag: str, **kw: Any) -> Endpoint:
    fields: dict[str, Any] = {
        "service": f"pt-{tag}-web",
        "id": f"node-{tag}:pt-{tag}-web:80",
        "address": "127.0.0.1",
        "port": 8500,
        "tags": ("blue", "v2"),
        "metadata": {"version": "2", "check_http": "/", "bad key": "x"},
    }
    fields.update(kw)
    return Endpoint(**fields)


# Checks Consul runs inside its own container, on its own HTTP port: they can pass.
OWN_HTTP = CatalogCheck("http", "http://127.0.0.1:8500/v1/status/leader", 1.0, 1.0)
OWN_TCP = CatalogCheck("tcp", "127.0.0.1:8500", 1.0, 1.0)


# -- the protocol ---------------------------------------------------------------------------


def test_store_is_a_catalog_publisher(store: ConsulStore) -> None:
    assert isinstance(store, CatalogPublisher)
    publisher: CatalogPublisher = store  # and statically (mypy checks this line)
    assert publisher is store


def test_register_pass_expire_and_deregister(store: ConsulStore, agent: Agent, tag: str) -> None:
    ep = endpoint(tag)
    ttl_id, http_id, tcp_id = (f"service:{ep.id}:{k}" for k in ("ttl", "http", "tcp"))
    store.catalog_register(ep, ttl=TTL, checks=[OWN_HTTP, OWN_TCP], deregister_critical_after=60)

    [entry] = agent.catalog(ep.service)
    assert (entry["ServiceID"], entry["ServiceName"]) == (ep.id, ep.service)
    assert (entry["ServiceAddress"], entry["ServicePort"]) == ("127.0.0.1", 8500)
    assert entry["ServiceTags"] == ["blue", "v2"]
    assert entry["ServiceMeta"] == {"version": "2", "check_http": "/"}  # "bad key" left out
    assert agent.statuses(ep.service)[ttl_id] == "passing"  # at once
    all_passing = dict.fromkeys((ttl_id, http_id, tcp_id), "passing")
    until(lambda: agent.statuses(ep.service) == all_passing, 10, "HTTP and TCP checks passing")
    agent_checks = agent.get("/v1/agent/checks")
    assert agent_checks[http_id]["Type"] == "http"
    assert agent_checks[tcp_id]["Type"] == "tcp"
    assert agent_checks[ttl_id]["Type"] == "ttl"

    # Passed every TTL/3, the TTL check stays passing well past its TTL.
    stop = threading.Event()

    def passer() -> None:
        while not stop.wait(TTL / 3):
            store.catalog_pass_ttl(ep.id)

    thread = threading.Thread(target=passer, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 2.5 * TTL
        while time.monotonic() < deadline:
            assert agent.statuses(ep.service)[ttl_id] == "passing"
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(5)

    # Not passed any more: critical within the TTL (plus Consul's timer), still listed.
    until(lambda: agent.statuses(ep.service)[ttl_id] == "critical", TTL + 2, "TTL critical")
    assert [e["ServiceID"] for e in agent.catalog(ep.service)] == [ep.id]
    assert [e["ServiceID"] for e in agent.get(f"/v1/health/service/{ep.service}?passing")] == []
    store.catalog_pass_ttl(ep.id)
    assert agent.statuses(ep.service)[ttl_id] == "passing"

    store.catalog_deregister(ep.id)
    assert agent.catalog(ep.service) == []
    assert agent.checks(ep.service) == {}
    store.catalog_deregister(ep.id)  # a missing one is a no-op
    with pytest.raises(pykv.KeyNotFoundError):  # and it is not resurrected
        store.catalog_pass_ttl(ep.id)


def test_register_again_updates_service_and_replaces_checks(
    store: ConsulStore, agent: Agent, tag: str
) -> None:
    ep = endpoint(tag)
    store.catalog_register(ep, ttl=TTL, checks=[OWN_HTTP, OWN_TCP])
    assert len(agent.checks(ep.service)) == 3
    moved = endpoint(tag, port=9000, tags=("green",), metadata={})
    store.catalog_register(moved, ttl=TTL, checks=[OWN_TCP])
    [entry] = agent.catalog(ep.service)
    assert (entry["ServicePort"], entry["ServiceTags"], entry["ServiceMeta"]) == (
        9000,
        ["green"],
        {},
    )
    assert set(agent.checks(ep.service)) == {f"service:{ep.id}:ttl", f"service:{ep.id}:tcp"}
    with pytest.raises(ValueError, match="kind"):
        store.catalog_register(ep, ttl=TTL, checks=[CatalogCheck("grpc", "x:1")])
    with pytest.raises(ValueError, match="TTL"):
        store.catalog_register(ep, ttl=0)


def test_pass_registers_again_what_the_agent_lost(
    store: ConsulStore, agent: Agent, consul_url: str, tag: str
) -> None:
    ep = endpoint(tag)
    store.catalog_register(ep, ttl=TTL, checks=[OWN_TCP])
    # The agent forgets it (as another agent would after a failover, or Consul's reaper).
    agent.put(f"/v1/agent/service/deregister/{ep.id}")
    assert agent.catalog(ep.service) == []
    store.catalog_pass_ttl(ep.id)
    [entry] = agent.catalog(ep.service)
    assert entry["ServiceID"] == ep.id
    assert agent.statuses(ep.service)[f"service:{ep.id}:ttl"] == "passing"
    assert f"service:{ep.id}:tcp" in agent.checks(ep.service)
    # A store that never registered it cannot.
    with open_consul(consul_url) as other:
        agent.put(f"/v1/agent/service/deregister/{ep.id}")
        with pytest.raises(pykv.KeyNotFoundError, match="did not register"):
            other.catalog_pass_ttl(ep.id)
    assert agent.catalog(ep.service) == []


def test_token_is_used_and_a_wrong_one_is_denied(consul_acl: ConsulACL, tag: str) -> None:
    admin = Agent(consul_acl.url, consul_acl.token)
    ep = endpoint(tag)
    with (
        open_consul(consul_acl.url + "?token=wrong-token") as bad,
        pytest.raises(pykv.PermissionDeniedError),
    ):
        bad.catalog_register(ep, ttl=TTL)
    with open_consul(consul_acl.url + "?token=" + consul_acl.token) as good:
        try:
            good.catalog_register(ep, ttl=TTL)
            assert [e["ServiceID"] for e in admin.catalog(ep.service)] == [ep.id]
            good.catalog_pass_ttl(ep.id)
            good.catalog_deregister(ep.id)
            assert admin.catalog(ep.service) == []
        finally:
            admin.deregister_named(f"pt-{tag}")


def test_unreachable_agent_is_unavailable_within_the_timeout(tag: str) -> None:
    with open_consul(f"consul://127.0.0.1:{free_port()}?timeout=1") as s:
        started = time.monotonic()
        with pytest.raises(pykv.UnavailableError):
            s.catalog_register(endpoint(tag), ttl=TTL)
        with pytest.raises(pykv.UnavailableError):
            s.catalog_pass_ttl("x")
        assert time.monotonic() - started < 3


# -- pykv-registrar --consul-catalog ----------------------------------------------------------


@pytest.fixture
def consul_network(docker_engine: Any, docker_compose_project_name: str, consul_url: str) -> str:
    """The Docker network of the harness Consul (its HTTP checks reach containers on it)."""
    [container] = docker_engine.containers.list(
        filters={
            "label": [
                f"com.docker.compose.project={docker_compose_project_name}",
                "com.docker.compose.service=consul",
            ]
        }
    )
    return str(sorted(container.attrs["NetworkSettings"]["Networks"])[0])


@pytest.fixture
def containers(busybox_image: str, docker_labels: dict[str, str], tag: str) -> Iterator[Containers]:
    c = Containers(busybox_image, tag, docker_labels)
    try:
        yield c
    finally:
        c.cleanup()


@pytest.fixture
def registrar(tmp_path: Path, consul_url: str, tag: str) -> Iterator[RegistrarProc]:
    reg = RegistrarProc(tmp_path, consul_url, f"node-{tag}", f"svc-{tag}")
    try:
        yield reg
    finally:
        reg.stop()


def test_registrar_publishes_containers_as_consul_services(
    registrar: RegistrarProc,
    containers: Containers,
    consul_network: str,
    agent: Agent,
    store: ConsulStore,
    tag: str,
) -> None:
    ttl = 3.0
    registrar.start(
        "--ttl", str(ttl), "--consul-catalog", "--internal", "--network", consul_network,
        "--deregister-critical-after", "90s",
    )  # fmt: skip
    service = f"pt-{tag}-web"
    name = containers.run(
        "web", "--network", consul_network, "--expose", "80",
        "-e", f"SERVICE_NAME={service}", "-e", "SERVICE_TAGS=blue",
        "-e", "SERVICE_CHECK_HTTP=/index.html", "-e", "SERVICE_CHECK_INTERVAL=1s",
        "-e", "SERVICE_CHECK_TIMEOUT=1s",
    )  # fmt: skip
    ip = containers.inspect(name)["NetworkSettings"]["Networks"][consul_network]["IPAddress"]
    sid = f"{registrar.node}:{name}:80"
    ttl_id, http_id = f"service:{sid}:ttl", f"service:{sid}:http"

    wait_for(lambda: agent.catalog(service), 15, "the catalog service", registrar)
    [entry] = agent.catalog(service)
    assert (entry["ServiceID"], entry["ServiceAddress"], entry["ServicePort"]) == (sid, ip, 80)
    assert entry["ServiceTags"] == ["blue"]
    assert entry["ServiceMeta"]["check_http"] == "/index.html"
    # The key-value entry is written as well.
    [ep] = Registry(store, registrar.prefix).endpoints(service)
    assert (ep.id, ep.address, ep.port) == (sid, ip, 80)

    # Consul itself fetches the container's page: the HTTP check passes, beside the TTL check.
    both = {ttl_id: "passing", http_id: "passing"}
    wait_for(lambda: agent.statuses(service) == both, 15, "TTL and HTTP passing", registrar)
    check = agent.get("/v1/agent/checks")[http_id]
    assert check["Type"] == "http"
    assert f"http://{ip}:80/index.html" in check["Name"]
    # The registrar passes the TTL check: it stays passing for several TTLs.
    deadline = time.monotonic() + 2.5 * ttl
    while time.monotonic() < deadline:
        assert agent.statuses(service)[ttl_id] == "passing", registrar.logs()[-3000:]
        time.sleep(0.25)
    assert [e["Service"]["ID"] for e in agent.get(f"/v1/health/service/{service}?passing")] == [sid]

    # The container stops: the service and its checks are withdrawn (and the key).
    _docker("stop", "-t", "1", name)
    wait_for(lambda: agent.catalog(service) == [], 15, "the catalog service withdrawn", registrar)
    assert agent.checks(service) == {}
    assert Registry(store, registrar.prefix).endpoints(service) == []


def test_killed_registrar_leaves_a_critical_service(
    registrar: RegistrarProc,
    containers: Containers,
    consul_network: str,
    agent: Agent,
    tag: str,
) -> None:
    ttl = 2.0
    registrar.start(
        "--ttl", str(ttl), "--consul-catalog", "--internal", "--network", consul_network
    )
    service = f"pt-{tag}-app"
    name = containers.run(
        "app", "--network", consul_network, "--expose", "80", "-e", f"SERVICE_NAME={service}"
    )
    ttl_id = f"service:{registrar.node}:{name}:80:ttl"
    wait_for(lambda: agent.statuses(service).get(ttl_id) == "passing", 15, "TTL", registrar)
    assert registrar.signal(signal.SIGKILL) == -signal.SIGKILL
    # Nobody passes it any more: critical within the TTL (the agent keeps it listed until
    # DeregisterCriticalServiceAfter, 60 s by default, and its 30 s reaper).
    until(lambda: agent.statuses(service).get(ttl_id) == "critical", ttl + 2, "TTL critical")
    assert agent.get(f"/v1/health/service/{service}?passing") == []
