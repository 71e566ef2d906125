"""pykv-registrar against the real Docker engine, publishing into a pykv store.

Every test runs the registrar as a subprocess (``python -m pykv.registrar``) with its own node
name and key prefix, on a store shared with the test: every test runs on a sqlite file and on
the Consul, etcd and ZooKeeper servers of the harness (``@on_every_store``). It drives
locally built busybox containers with the docker CLI. Containers (and networks) carry the
label ``pykv.test=1`` and the harness's session label and are removed at the end; ports are
published on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pykv
from pykv.discovery import Endpoint, Registry

pytestmark = [pytest.mark.integration, pytest.mark.docker]

TTL = 2.0

on_every_store = pytest.mark.parametrize(
    "store_kind",
    [
        "sqlite",
        pytest.param("consul", marks=pytest.mark.consul),
        pytest.param("etcd", marks=pytest.mark.etcd),
        pytest.param("zookeeper", marks=pytest.mark.zookeeper),
    ],
    indirect=True,
)


# -- fixtures -------------------------------------------------------------------------------


def _docker(*args: str, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


class Containers:
    """Creates labelled containers with names unique to the test; removes them at the end."""

    def __init__(self, image: str, tag: str, labels: dict[str, str]) -> None:
        self.image = image
        self.tag = tag
        self.labels = [
            x for k, v in {"pykv.test": "1", **labels}.items() for x in ("--label", f"{k}={v}")
        ]
        self.names: list[str] = []
        self.networks: list[str] = []

    def name(self, short: str) -> str:
        return f"pt-{self.tag}-{short}"

    def run(self, short: str, *args: str, cmd: tuple[str, ...] | None = None) -> str:
        name = self.name(short)
        self.names.append(name)
        command = cmd or ("httpd", "-f", "-p", "80", "-h", "/www")
        _docker("run", "-d", *self.labels, "--name", name, *args, self.image, *command)
        return name

    def network(self, short: str) -> str:
        name = self.name(short)
        _docker("network", "create", *self.labels, name)
        self.networks.append(name)
        return name

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(_docker("inspect", name))[0]  # type: ignore[no-any-return]

    def host_port(self, name: str, spec: str) -> int:
        bindings = self.inspect(name)["NetworkSettings"]["Ports"][spec]
        return int(bindings[0]["HostPort"])

    def cleanup(self) -> None:
        for name in self.names:
            _docker("rm", "-f", "-v", name, check=False)
        for net in self.networks:
            _docker("network", "rm", net, check=False)


@pytest.fixture
def containers(busybox_image: str, docker_labels: dict[str, str]) -> Iterator[Containers]:
    c = Containers(busybox_image, uuid.uuid4().hex[:8], docker_labels)
    try:
        yield c
    finally:
        c.cleanup()


def free_port() -> int:
    for _ in range(50):
        port = 20000 + int.from_bytes(os.urandom(2), "big") % 10000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class RegistrarProc:
    """``python -m pykv.registrar`` as a subprocess with its own node name and prefix."""

    def __init__(self, tmp: Path, store_url: str, node: str, prefix: str) -> None:
        self.tmp = tmp
        self.store_url = store_url
        self.node = node
        self.prefix = prefix
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.runs = 0
        self.log = tmp / "registrar-0.log"

    def start(
        self,
        *flags: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
        positional_url: bool = False,
    ) -> None:
        """Start it; ``positional_url``: the store as registrator's REGISTRY_URL argument."""
        self.port = free_port()
        self.runs += 1
        self.log = self.tmp / f"registrar-{self.runs}.log"
        store = [self.store_url] if positional_url else ["--store", self.store_url]
        args = [
            sys.executable, "-m", "pykv.registrar",
            "--node", self.node, "--prefix", self.prefix,
            "--metrics-addr", f"127.0.0.1:{self.port}", "--log-format", "json",
            "--log-level", "DEBUG", *flags, *store,
        ]  # fmt: skip
        full_env = {**os.environ, **(env or {})}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=full_env)
        if wait:
            wait_for(lambda: self.healthz().get("ok") is True, 20, "registrar ready", self)

    def healthz(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())  # type: ignore[no-any-return]
        except OSError:
            return {}

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return r.read().decode()  # type: ignore[no-any-return]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int, wait: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(wait)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.tmp.glob("registrar-*.log"))
        )


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, reg: RegistrarProc | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    tail = "\n".join(reg.logs().splitlines()[-40:]) if reg else ""
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{tail}")


class World:
    def __init__(
        self, reg: RegistrarProc, registry: Registry, containers: Containers, slack: float
    ) -> None:
        self.reg = reg
        self.registry = registry
        self.c = containers
        #: the store's TTL slack (plus a margin for this loaded two-core machine)
        self.slack = slack + 1.0

    @property
    def node(self) -> str:
        return self.reg.node

    def mine(self) -> list[Endpoint]:
        """Endpoints of this test's containers."""
        prefix = f"pt-{self.c.tag}-"
        return [e for e in self.registry.all_endpoints() if e.container_name.startswith(prefix)]

    def of(self, name: str) -> list[Endpoint]:
        return [e for e in self.mine() if e.container_name == name]

    def wait_published(self, name: str, count: int = 1, timeout: float = 10) -> list[Endpoint]:
        wait_for(lambda: len(self.of(name)) == count, timeout, f"{count} endpoint(s) of {name}",
                 self.reg)  # fmt: skip
        return self.of(name)

    def wait_gone(self, name: str, timeout: float = 10) -> None:
        wait_for(lambda: not self.of(name), timeout, f"{name} withdrawn", self.reg)


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def world(
    request: pytest.FixtureRequest, store_kind: str, tmp_path: Path, containers: Containers
) -> Iterator[World]:
    if store_kind == "sqlite":
        url = f"sqlite:///{tmp_path}/registry.db"
    else:
        url = str(request.getfixturevalue(f"{store_kind}_url"))
    reg = RegistrarProc(tmp_path, url, f"node-{containers.tag}", f"svc-{containers.tag}")
    store = pykv.open_store(url)
    try:
        yield World(reg, Registry(store, reg.prefix), containers, type(store).ttl_slack)
    finally:
        reg.stop()
        store.close()


# -- the service model --------------------------------------------------------------------


@on_every_store
def test_names_ids_tags_metadata_and_published_port(world: World) -> None:
    world.reg.start("--ttl", str(TTL), "--tags", "global")
    name = world.c.run(
        "web", "-p", "127.0.0.1::80",
        "-e", "SERVICE_TAGS=a,b", "-e", "SERVICE_VERSION=3", "-e", "SECRET_TOKEN=s3cr3t-v4lue",
    )  # fmt: skip
    [e] = world.wait_published(name)
    info = world.c.inspect(name)
    assert e.service == "pykv-busybox"  # the image's base name
    assert e.id == f"{world.node}:{name}:80"
    assert (e.address, e.port, e.protocol) == (
        "127.0.0.1",
        world.c.host_port(name, "80/tcp"),
        "tcp",
    )
    assert e.tags == ("a", "b", "global")
    assert e.metadata == {"version": "3"}
    assert (e.node, e.container_id, e.container_name) == (world.node, info["Id"], name)
    raw = world.registry.store.get(f"{world.reg.prefix}/pykv-busybox/{e.id}").value
    assert json.loads(raw)["container_id"] == info["Id"]
    assert "s3cr3t-v4lue" not in world.reg.logs()  # never logs other env values
    assert 'pykv_registrar_events_total{action="start"}' in world.reg.metrics()


@on_every_store
def test_ipv6_host_binding(world: World) -> None:
    world.reg.start("--ttl", str(TTL))
    name = world.c.run("v6", "-p", "[::1]::80")
    [e] = world.wait_published(name)
    assert (e.address, e.port) == ("::1", world.c.host_port(name, "80/tcp"))


@on_every_store
def test_several_ports_udp_and_port_specific_names(world: World) -> None:
    world.reg.start("--ttl", str(TTL))
    name = world.c.run(
        "multi", "-p", "127.0.0.1::80", "-p", "127.0.0.1::53/udp", "-p", "127.0.0.1::53",
        "-e", "SERVICE_NAME=app", "-e", "SERVICE_53_NAME=dns",
    )  # fmt: skip
    eps = world.wait_published(name, count=3)
    got = sorted((e.service, e.id, e.protocol, e.port) for e in eps)
    assert got == sorted(
        [
            ("app-80", f"{world.node}:{name}:80", "tcp", world.c.host_port(name, "80/tcp")),
            ("dns", f"{world.node}:{name}:53", "tcp", world.c.host_port(name, "53/tcp")),
            ("dns", f"{world.node}:{name}:53:udp", "udp", world.c.host_port(name, "53/udp")),
        ]
    )
    assert [e.id for e in world.registry.endpoints("dns") if e.container_name == name] == [
        f"{world.node}:{name}:53",
        f"{world.node}:{name}:53:udp",
    ]


@on_every_store
def test_unpublished_container_gets_nothing_without_internal(world: World) -> None:
    world.reg.start("--ttl", str(TTL))
    hidden = world.c.run("hidden", "--expose", "9000")
    shown = world.c.run("shown", "-p", "127.0.0.1::80")
    world.wait_published(shown)
    time.sleep(1)
    assert world.of(hidden) == []


@on_every_store
def test_ignore_is_boolean_and_labels_win_over_env(world: World) -> None:
    world.reg.start("--ttl", str(TTL))
    ignored = world.c.run("ign", "-p", "127.0.0.1::80", "-e", "SERVICE_IGNORE=true")
    not_ignored = world.c.run("noign", "-p", "127.0.0.1::80", "-e", "SERVICE_IGNORE=false")
    relabelled = world.c.run(
        "lbl", "-p", "127.0.0.1::80",
        "-e", "SERVICE_IGNORE=true", "--label", "SERVICE_IGNORE=false",
        "-e", "SERVICE_NAME=from-env", "--label", "SERVICE_NAME=from-label",
    )  # fmt: skip
    world.wait_published(not_ignored)
    [e] = world.wait_published(relabelled)
    assert e.service == "from-label"
    time.sleep(1)
    assert world.of(ignored) == []


@on_every_store
def test_explicit_publishes_only_named_services(world: World) -> None:
    world.reg.start("--ttl", str(TTL), "--explicit")
    anonymous = world.c.run("anon", "-p", "127.0.0.1::80")
    named = world.c.run("named", "-p", "127.0.0.1::80", "--label", "SERVICE_NAME=explicit-svc")
    [e] = world.wait_published(named)
    assert e.service == "explicit-svc"
    time.sleep(1)
    assert world.of(anonymous) == []


@on_every_store
def test_internal_publishes_container_ip_on_a_chosen_network(world: World) -> None:
    net = world.c.network("net")
    world.reg.start("--ttl", str(TTL), "--internal", "--network", net)
    name = world.c.run("int", "--network", net, "--expose", "9000", "-p", "127.0.0.1::80")
    eps = world.wait_published(name, count=2)
    ip = world.c.inspect(name)["NetworkSettings"]["Networks"][net]["IPAddress"]
    assert sorted((e.address, e.port) for e in eps) == [(ip, 80), (ip, 9000)]
    assert {e.service for e in eps} == {"pykv-busybox-80", "pykv-busybox-9000"}


@on_every_store
def test_internal_default_network_is_the_first_by_name(world: World) -> None:
    world.reg.start("--ttl", str(TTL), "--internal")
    net = world.c.network("znet")  # sorts after "bridge"
    name = world.c.run("int2", "--expose", "7000")
    _docker("network", "connect", net, name)
    [e] = world.wait_published(name)
    nets = world.c.inspect(name)["NetworkSettings"]["Networks"]
    assert e.address == nets["bridge"]["IPAddress"]
    assert e.port == 7000


# -- events -------------------------------------------------------------------------------


@on_every_store
def test_health_check_gates_publication(world: World) -> None:
    world.reg.start("--ttl", str(TTL))
    name = world.c.run(
        "health", "-p", "127.0.0.1::80",
        "--health-cmd", "test -f /tmp/ok", "--health-interval", "1s",
        "--health-retries", "1", "--health-timeout", "1s",
    )  # fmt: skip
    time.sleep(2.5)  # several failed probes: still "starting"/"unhealthy"
    assert world.of(name) == []
    _docker("exec", name, "touch", "/tmp/ok")
    world.wait_published(name, timeout=15)
    _docker("exec", name, "rm", "/tmp/ok")
    world.wait_gone(name, timeout=15)
    _docker("exec", name, "touch", "/tmp/ok")
    world.wait_published(name, timeout=15)


@on_every_store
def test_pause_withdraws_and_unpause_republishes(world: World) -> None:
    world.reg.start("--ttl", str(TTL))
    name = world.c.run("pause", "-p", "127.0.0.1::80")
    [before] = world.wait_published(name)
    _docker("pause", name)
    world.wait_gone(name)
    time.sleep(TTL + world.slack)  # the registrar must not re-publish a paused container
    assert world.of(name) == []
    _docker("unpause", name)
    assert world.wait_published(name) == [before]


@on_every_store
def test_rapid_events_of_one_container_end_in_its_final_state(world: World) -> None:
    world.reg.start("--ttl", str(TTL))
    name = world.c.run("rapid", "-p", "127.0.0.1::80")
    world.wait_published(name)
    for _ in range(5):
        _docker("pause", name)
        _docker("unpause", name)
    _docker("pause", name)
    world.wait_gone(name)
    time.sleep(1)
    assert world.of(name) == []  # no late, out-of-order republication
    _docker("unpause", name)
    world.wait_published(name)
    time.sleep(1)
    assert len(world.of(name)) == 1


@on_every_store
def test_rename_republishes_under_the_new_id(world: World) -> None:
    world.reg.start("--ttl", str(TTL))
    name = world.c.run("old", "-p", "127.0.0.1::80")
    world.wait_published(name)
    new = world.c.name("new")
    world.c.names.append(new)
    _docker("rename", name, new)
    [e] = world.wait_published(new)
    assert e.id == f"{world.node}:{new}:80"
    wait_for(lambda: not world.of(name), 5, "old id withdrawn")
    assert [x.id for x in world.mine()] == [e.id]


_TRAPPING = ("sh", "-c", 'httpd -p 80 -h /www; trap "exit 0" TERM; while :; do sleep 0.1; done')


@on_every_store
@pytest.mark.parametrize("mode", ["always", "on-success"])
def test_deregister_modes(world: World, mode: str) -> None:
    world.reg.start("--ttl", str(TTL), "--deregister", mode)
    clean = world.c.run("clean", "-p", "127.0.0.1::80", cmd=_TRAPPING)
    failed = world.c.run("failed", "-p", "127.0.0.1::80", cmd=_TRAPPING)
    world.wait_published(clean)
    [failed_ep] = world.wait_published(failed)
    _docker("stop", "-t", "5", clean)
    _docker("kill", failed)  # SIGKILL: exit code 137
    assert world.c.inspect(clean)["State"]["ExitCode"] == 0
    assert world.c.inspect(failed)["State"]["ExitCode"] == 137
    world.wait_gone(clean)
    if mode == "always":
        world.wait_gone(failed)
    else:
        time.sleep(TTL + world.slack)  # kept alive, not just not yet expired
        assert world.of(failed) == [failed_ep]
        _docker("rm", failed)  # destroy always withdraws
        world.wait_gone(failed)


@on_every_store
def test_stop_then_start_and_destroy(world: World) -> None:
    world.reg.start("--ttl", str(TTL))
    name = world.c.run("cycle", "-p", "127.0.0.1::80")
    world.wait_published(name)
    _docker("stop", "-t", "1", name)
    world.wait_gone(name)
    _docker("start", name)
    [e] = world.wait_published(name)
    assert e.port == world.c.host_port(name, "80/tcp")
    _docker("rm", "-f", name)
    world.wait_gone(name)


# -- reconciliation, TTL, restarts ----------------------------------------------------------


@on_every_store
def test_containers_running_before_start_are_published(world: World) -> None:
    names = [world.c.run(f"pre{i}", "-p", "127.0.0.1::80") for i in range(3)]
    world.reg.start("--ttl", str(TTL))
    for name in names:
        world.wait_published(name)


@on_every_store
def test_sigkill_entries_vanish_within_ttl_and_restart_republishes(world: World) -> None:
    a = world.c.run("a", "-p", "127.0.0.1::80")
    b = world.c.run("b", "-p", "127.0.0.1::80", "-p", "127.0.0.1::53/udp")
    doomed = world.c.run("doomed", "-p", "127.0.0.1::80")
    world.reg.start("--ttl", str(TTL))
    for name, count in ((a, 1), (b, 2), (doomed, 1)):
        world.wait_published(name, count)
    time.sleep(TTL + world.slack)  # kept alive while the registrar runs
    assert len(world.mine()) == 4

    world.reg.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: not world.mine(), TTL + world.slack, "entries of a killed registrar")
    assert time.monotonic() - killed_at <= TTL + world.slack

    # While it is away: one container dies, one is born.
    _docker("rm", "-f", doomed)
    born = world.c.run("born", "-p", "127.0.0.1::80")
    world.reg.start("--ttl", str(TTL))
    for name, count in ((a, 1), (b, 2), (born, 1)):
        world.wait_published(name, count)
    time.sleep(TTL + world.slack)
    ids = [e.id for e in world.mine()]
    assert len(ids) == len(set(ids)) == 4
    assert world.of(doomed) == []


@on_every_store
def test_quick_restart_reowns_entries_and_drops_dead_ones(world: World) -> None:
    """Restarted before the TTL ran out: the old process's entries are taken over (they
    outlive the old TTL) and a container removed meanwhile is gone by the TTL."""
    keep = world.c.run("keep", "-p", "127.0.0.1::80")
    doomed = world.c.run("doomed", "-p", "127.0.0.1::80")
    world.reg.start("--ttl", str(TTL))
    world.wait_published(keep)
    world.wait_published(doomed)
    world.reg.signal(signal.SIGKILL)
    _docker("rm", "-f", doomed)
    world.reg.start("--ttl", str(TTL))
    time.sleep(TTL + world.slack)
    assert [e.container_name for e in world.mine()] == [keep]


@on_every_store
def test_cleanup_removes_ghosts_of_persistent_entries(world: World) -> None:
    keep = world.c.run("keep", "-p", "127.0.0.1::80")
    ghost = world.c.run("ghost", "-p", "127.0.0.1::80")
    world.reg.start("--ttl", "0")  # persistent entries: registrator's old behaviour
    world.wait_published(keep)
    world.wait_published(ghost)
    world.reg.signal(signal.SIGKILL)
    _docker("rm", "-f", ghost)
    time.sleep(TTL)
    assert world.of(ghost)  # persistent: the dead container's entry stays...
    world.reg.start("--ttl", "0")
    time.sleep(1)
    assert world.of(ghost)  # ... also after a restart without --cleanup
    world.reg.signal(signal.SIGTERM)
    world.reg.start("--ttl", "0", "--cleanup")
    world.wait_gone(ghost, timeout=5)  # --cleanup: gone at once
    assert [e.container_name for e in world.mine()] == [keep]


@on_every_store
def test_sigterm_leaves_entries_to_the_ttl_unless_deregister_on_exit(world: World) -> None:
    name = world.c.run("term", "-p", "127.0.0.1::80")
    world.reg.start("--ttl", str(TTL))
    world.wait_published(name)
    assert world.reg.signal(signal.SIGTERM) == 0
    assert world.of(name)  # still there: a sidecar restart does not flap services
    wait_for(lambda: not world.of(name), TTL + world.slack, "expiry after SIGTERM")

    world.reg.start("--ttl", str(TTL), "--deregister-on-exit")
    world.wait_published(name)
    assert world.reg.signal(signal.SIGTERM) == 0
    assert world.of(name) == []  # withdrawn before exiting
    assert '"message": "stopped"' in world.reg.logs()


@on_every_store
def test_periodic_resync_repairs_the_store(world: World) -> None:
    name = world.c.run("resync", "-p", "127.0.0.1::80")
    world.reg.start("--ttl", str(TTL), "--resync", "1s")
    [e] = world.wait_published(name)
    world.registry.store.delete(e.key(world.reg.prefix))  # someone deletes it behind our back
    assert world.of(name) == []
    assert world.wait_published(name, timeout=5) == [e]


#: The compose service of each network store, and the options of the registrar's store there:
#: calls time out fast, and ZooKeeper's session is as short as the TTL so that the outage
#: expires it (its ephemeral entries vanish and must be re-created).
_STORE_SERVICE = {"consul": "consul", "etcd": "etcd", "zookeeper": "zookeeper"}
_OUTAGE_OPTIONS = {"sqlite": "timeout=0.5", "zookeeper": f"timeout=1&session_timeout={TTL:g}"}
#: Longer than the TTL, Consul's session invalidation (2 x TTL/2), etcd's lease and
#: ZooKeeper's session: every TTL entry of the registrar may be gone when the store returns.
_OUTAGE = 2 * TTL + 1


@contextlib.contextmanager
def store_outage(
    world: World, store_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[None]:
    """The registrar's store unreachable inside the block, and serving again after it.

    sqlite: another connection holds the database's write lock (every write times out).
    Network stores: ``docker pause`` of the server's container (connections hang, new ones get
    no answer); unpaused even on failure, and waited for until it serves again."""
    if store_kind == "sqlite":
        import sqlite3

        blocker = sqlite3.connect(tmp_path / "registry.db", timeout=5, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        return
    servers = request.getfixturevalue("servers")
    service = _STORE_SERVICE[store_kind]
    container = servers.container(service)
    container.pause()
    try:
        yield
    finally:
        container.reload()
        if container.attrs["State"].get("Paused"):
            container.unpause()
        # Docker may count the probes of the paused container as failures ("unhealthy"):
        # healthy again after the next probe that passes.
        wait_for(lambda: servers.health(service) == "healthy", 30, f"{service} healthy again")
        wait_for(lambda: _serves(world.reg.store_url), 30, f"{service} serving again")


def _serves(url: str) -> bool:
    """A fresh client can write, read and delete a key (the server is back, not just up)."""
    key = f"probe-{uuid.uuid4().hex[:8]}"
    try:
        with pykv.open_store(url.split("?", 1)[0], timeout=2) as store:
            store.put(key, b"x")
            ok = store.get(key).value == b"x"
            store.delete(key)
            return ok
    except pykv.PyKVError:
        return False


@on_every_store
def test_store_unavailable_is_retried_and_caught_up(
    world: World, store_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    world.reg.store_url += "?" + _OUTAGE_OPTIONS.get(store_kind, "timeout=1")
    stays = world.c.run("stays", "-p", "127.0.0.1::80")
    goes = world.c.run("goes", "-p", "127.0.0.1::80")
    world.reg.start("--ttl", str(TTL))
    [stays_ep] = world.wait_published(stays)
    world.wait_published(goes)
    with store_outage(world, store_kind, request, tmp_path):
        began = time.monotonic()
        # Meanwhile: one container is born, one is removed; writing either fails.
        new = world.c.run("new", "-p", "127.0.0.1::80")
        _docker("rm", "-f", goes)
        wait_for(lambda: world.reg.healthz().get("ok") is False, 10, "unhealthy store", world.reg)
        assert world.reg.healthz()["store"].startswith("error: ")
        assert world.reg.alive()
        time.sleep(max(0.0, _OUTAGE - (time.monotonic() - began)))
    world.wait_published(new, timeout=15)
    world.wait_gone(goes, timeout=5)
    assert world.wait_published(stays, timeout=5) == [stays_ep]
    wait_for(lambda: world.reg.healthz().get("ok") is True, 10, "healthy again", world.reg)
    # Caught up for good: no late expiry of an entry written under a dying session or lease,
    # no entry twice, nothing of the removed container.
    time.sleep(TTL + 2)
    assert sorted(e.container_name for e in world.mine()) == sorted([new, stays])
    assert world.reg.alive()
    assert world.reg.healthz().get("ok") is True
    assert _metric(world.reg.metrics(), 'pykv_registrar_errors_total{kind="store"}') >= 1


def _metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


# -- the Docker engine going away -------------------------------------------------------------

_PROXY = r"""
import os, socket, sys, threading
listen, target = sys.argv[1], sys.argv[2]
if os.path.exists(listen):
    os.unlink(listen)
server = socket.socket(socket.AF_UNIX)
server.bind(listen)
server.listen(64)
print("ready", flush=True)
def pump(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
while True:
    client, _ = server.accept()
    upstream = socket.socket(socket.AF_UNIX)
    upstream.connect(target)
    threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
"""


class SocketProxy:
    """A unix-socket proxy to the real engine that the test can kill: a broken connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PROXY, str(self.path), "/var/run/docker.sock"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@on_every_store
def test_engine_connection_loss_reconnects_resumes_and_reconciles(
    world: World, tmp_path: Path
) -> None:
    proxy = SocketProxy(tmp_path / "docker.sock")
    proxy.start()
    try:
        survivor = world.c.run("survivor", "-p", "127.0.0.1::80")
        world.reg.start("--ttl", str(TTL), env={"DOCKER_HOST": f"unix://{proxy.path}"})
        victim = world.c.run("victim", "-p", "127.0.0.1::80")  # an event before the break
        world.wait_published(survivor)
        world.wait_published(victim)

        proxy.kill()  # the event stream breaks, and the engine is unreachable
        wait_for(lambda: world.reg.healthz().get("docker") == "disconnected", 10, "disconnect")
        # Meanwhile (events the registrar cannot see): one dies, one is born, one is paused.
        _docker("rm", "-f", victim)
        born = world.c.run("born", "-p", "127.0.0.1::80")
        time.sleep(TTL + world.slack)
        assert world.reg.alive()  # it keeps running, and keeps its entries alive
        assert world.of(survivor)

        proxy.start()
        world.wait_published(born, timeout=20)
        world.wait_gone(victim, timeout=5)
        assert world.of(survivor)
        wait_for(lambda: world.reg.healthz().get("ok") is True, 10, "healthy again")
        # Events after the reconnection are followed as before.
        _docker("pause", born)
        world.wait_gone(born)
        logs = world.reg.logs()
        assert "Docker event stream" in logs or "Docker unreachable" in logs
        assert "since 1" in logs  # resumed from the last event's time
    finally:
        proxy.kill()


# -- load -------------------------------------------------------------------------------------


@on_every_store
def test_many_containers_started_together_are_published(world: World) -> None:
    world.reg.start("--ttl", str(TTL))
    names = [world.c.name(f"m{i}") for i in range(30)]
    world.c.names.extend(names)
    for name in names:
        _docker("create", "--label", "pykv.test=1", "--name", name, "-p", "127.0.0.1::80",
                world.c.image, "httpd", "-f", "-p", "80", "-h", "/www")  # fmt: skip
    _docker("start", *names, timeout=120)
    last_start = time.monotonic()
    wait_for(lambda: len(world.mine()) == len(names), 10, "all published")
    assert time.monotonic() - last_start < 10


# -- hostile and careless input (issue 14) ------------------------------------------------------


def _log_lines(reg: RegistrarProc, needle: str) -> list[dict[str, Any]]:
    lines = []
    for line in reg.logs().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if needle in record.get("message", ""):
                lines.append(record)
    return lines


@on_every_store
def test_a_container_with_hostile_labels_is_skipped_and_nothing_else_changes(
    world: World, docker_engine: Any
) -> None:
    world.reg.start("--ttl", str(TTL), "--resync", "1s")
    before = world.c.run("before", "-p", "127.0.0.1::80")
    world.wait_published(before)
    bad = world.c.run("bad", "-p", "127.0.0.1::80", "--label", "SERVICE_NAME=" + "x" * 1100)
    # 40,000 tags (240 kB: too long for one command-line argument, so through the API).
    many = world.c.name("tags")
    world.c.names.append(many)
    tags = ",".join(f"t{i}" for i in range(40_000))
    docker_engine.containers.run(
        world.c.image, ["httpd", "-f", "-p", "80", "-h", "/www"], name=many, detach=True,
        labels={**dict(x.split("=", 1) for x in world.c.labels[1::2]), "SERVICE_TAGS": tags},
        ports={"80/tcp": ("127.0.0.1", None)},
    )  # fmt: skip
    after = world.c.run("after", "-p", "127.0.0.1::80")  # started after the bad ones
    world.wait_published(after)
    [e] = world.wait_published(many)
    assert e.tags == tuple(f"t{i}" for i in range(64))
    assert world.of(before)
    time.sleep(3.5)  # a few resyncs: each evaluates every container again
    assert world.of(bad) == []
    health = world.reg.healthz()
    assert health["ok"] is True, health
    assert health["skipped_containers"] >= 1
    assert "threads_down" not in health
    skipped = _log_lines(world.reg, f"container {bad} (")
    assert len(skipped) == 1, skipped  # one line, however many evaluations
    assert skipped[0]["level"] == "warning"
    assert skipped[0]["message"].endswith("skipped: service name is 1100 characters (limit 128)")
    cut = [r for r in _log_lines(world.reg, f"container {many} (") if r["level"] == "warning"]
    assert len(cut) == 1, cut
    assert "40000 tags, kept the first 64" in cut[0]["message"]
    metrics = world.reg.metrics()
    assert _metric(metrics, 'pykv_registrar_skipped_total{what="container"}') >= 1
    assert _metric(metrics, "pykv_registrar_labels_cut_total") >= 1
    assert _metric(metrics, 'pykv_registrar_errors_total{kind="store"}') == 0
    # Events of other containers are still followed.
    _docker("pause", after)
    world.wait_gone(after)
    assert world.reg.alive()


#: Entries a careless or hostile writer can leave under the registrar's prefix.
_MALFORMED = {
    "inf-port": b'{"service":"web","id":"x","address":"a","port":1e400,"node":"n"}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "wrong-types": b'{"service":"web","id":"y","address":"a","port":"80","tags":7}',
}


@on_every_store
def test_malformed_entries_are_skipped_by_registrar_and_readers(world: World) -> None:
    store = world.registry.store
    for name, value in _MALFORMED.items():
        store.put(f"{world.reg.prefix}/web/{name}", value)
    world.reg.start("--ttl", str(TTL), "--resync", "1s", "--cleanup")
    name = world.c.run("good", "-p", "127.0.0.1::80")
    [e] = world.wait_published(name)
    assert world.registry.skipped == len(_MALFORMED)
    assert [x.id for x in world.registry.endpoints(e.service)] == [e.id]
    with world.registry.watch() as watch:  # every service: the malformed ones are below "web"
        assert e.id in [x.id for x in watch.get(timeout=10)]
    metrics = world.reg.metrics()
    reconciles = _metric(metrics, "pykv_registrar_reconciles_total")
    wait_for(
        lambda: _metric(world.reg.metrics(), "pykv_registrar_reconciles_total") >= reconciles + 2,
        15, "the reconciler to keep running", world.reg,
    )  # fmt: skip
    health = world.reg.healthz()
    assert health["ok"] is True, health
    assert health["thread_restarts"] == 0
    metrics = world.reg.metrics()
    assert _metric(metrics, 'pykv_registrar_skipped_total{what="malformed"}') == len(_MALFORMED)
    assert len(_log_lines(world.reg, "malformed endpoint entry")) == len(_MALFORMED)
    # --cleanup removes only this node's entries: the malformed ones are nobody's.
    assert store.exists(f"{world.reg.prefix}/web/inf-port")
    # `pykv services` prints the good endpoint and skips the rest.
    proc = subprocess.run(
        [sys.executable, "-m", "pykv", "--store", world.reg.store_url, "services", "--json",
         "--prefix", world.reg.prefix],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert e.id in [d["id"] for d in json.loads(proc.stdout)]
    assert proc.stderr.count("malformed endpoint entry") == len(_MALFORMED)


# -- registrator's conventions (issue 15) -------------------------------------------------------


@on_every_store
def test_registrator_invocation_service_id_scoped_by_node_and_ip_from_label(
    world: World, tmp_path: Path
) -> None:
    """Two registrars (two hosts) started as registrator is, with the store as the positional
    URL, publish one container's SERVICE_ID each under their own node: neither overwrites."""
    other = RegistrarProc(tmp_path / "other", world.reg.store_url, f"{world.node}-b",
                          world.reg.prefix)  # fmt: skip
    other.tmp.mkdir()
    flags = ("-ttl", f"{TTL:g}", "-tags", "reg", "-useIpFromLabel", "net.ip", "-cleanup=false")
    try:
        world.reg.start(*flags, positional_url=True)
        other.start(*flags, positional_url=True)
        name = world.c.run(
            "sid", "-p", "127.0.0.1::80",
            "--label", "SERVICE_ID=shared-id", "--label", "SERVICE_NAME=sid",
            "--label", "net.ip=10.9.8.7/24",
        )  # fmt: skip
        wait_for(lambda: len(world.of(name)) == 2, 10, "both nodes' entries", world.reg)
        got = sorted((e.id, e.node, e.address, e.tags) for e in world.of(name))
        assert got == [
            (f"{world.node}-b:shared-id", f"{world.node}-b", "10.9.8.7", ("reg",)),
            (f"{world.node}:shared-id", world.node, "10.9.8.7", ("reg",)),
        ]
        port = world.c.host_port(name, "80/tcp")
        assert {e.port for e in world.of(name)} == {port}
        assert other.signal(signal.SIGKILL) != 0
        time.sleep(TTL + world.slack)  # the other host's entry expires, ours stays
        assert [e.node for e in world.of(name)] == [world.node]
    finally:
        other.stop()
