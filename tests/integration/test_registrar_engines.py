"""pykv-registrar against engines that really go away, and against Podman.

* A second, private dockerd (``_engines.PrivateDockerd``: own data and exec roots, socket,
  network namespace), stopped with SIGTERM by PID and started again, without and with
  ``--live-restore``. The machine's own engine, which the compose servers run on, is not touched.
* ``podman system service`` on a socket of its own (``_engines.PodmanService``), the registrar's
  DOCKER_HOST pointing at it.

The registrar runs as a subprocess (``RegistrarProc`` of test_registrar) on a sqlite store.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from _engines import Engine, PodmanService, PrivateDockerd
from _harness import HarnessError
from test_registrar import RegistrarProc, wait_for

import pykv
from pykv.discovery import Endpoint, Registry

pytestmark = [pytest.mark.integration, pytest.mark.docker]

TTL = 2.0
HTTPD = ("httpd", "-f", "-p", "80", "-h", "/www")


@contextlib.contextmanager
def running(engine: PrivateDockerd | PodmanService, image: str) -> Iterator[Engine]:
    """``engine`` started, holding ``image``, closed (with all it ran) at the end."""
    try:
        engine.start()
        engine.load(image)
        yield engine
    except HarnessError as exc:
        pytest.fail(f"{type(engine).__name__}: {exc}", pytrace=False)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def private_dockerd(busybox_image: str) -> Iterator[PrivateDockerd]:
    """A second dockerd holding the busybox image, started once for this module."""
    engine = PrivateDockerd()
    with running(engine, busybox_image):
        yield engine


@pytest.fixture(scope="module")
def podman(busybox_image: str) -> Iterator[PodmanService]:
    """``podman system service`` holding the busybox image, started once for this module."""
    service = PodmanService()
    with running(service, busybox_image):
        yield service


class Setup:
    """The registrar on ``engine``, its store, and containers named for this test."""

    def __init__(self, engine: Engine, image: str, tmp: Path) -> None:
        self.engine = engine
        self.image = image
        self.tag = uuid.uuid4().hex[:8]
        url = f"sqlite:///{tmp}/registry.db"
        self.reg = RegistrarProc(tmp, url, f"node-{self.tag}", f"svc-{self.tag}")
        self.store = pykv.open_store(url)
        self.registry = Registry(self.store, self.reg.prefix)
        self.slack = type(self.store).ttl_slack + 1.0
        self.names: list[str] = []

    def start(self, *flags: str) -> None:
        self.reg.start("--ttl", str(TTL), *flags, env={"DOCKER_HOST": self.engine.url})

    def run(self, short: str, *args: str) -> str:
        name = f"pt-{self.tag}-{short}"
        self.names.append(name)
        # httpd as PID 1 ignores SIGTERM: KILL makes stops (and engine shutdowns) quick.
        self.engine.docker("run", "-d", "--label", "pykv.test=1", "--name", name,
                           "--stop-signal", "KILL", "-p", "127.0.0.1::80", *args,
                           self.image, *HTTPD)  # fmt: skip
        return name

    def all(self) -> list[Endpoint]:
        return self.registry.all_endpoints()

    def of(self, name: str) -> list[Endpoint]:
        return [e for e in self.all() if e.container_name == name]

    def wait_published(self, name: str, timeout: float = 10) -> Endpoint:
        wait_for(lambda: len(self.of(name)) == 1, timeout, f"{name} published", self.reg)
        [endpoint] = self.of(name)
        return endpoint

    def wait_gone(self, name: str, timeout: float = 10) -> None:
        wait_for(lambda: not self.of(name), timeout, f"{name} withdrawn", self.reg)

    def metric(self, name: str) -> float:
        """A sample of the registrar's metrics (0 when it has none yet)."""
        m = re.search(rf"^{re.escape(name)} (\S+)$", self.reg.metrics(), re.M)
        return float(m.group(1)) if m else 0.0

    def running(self, name: str) -> bool:
        return self.engine.inspect(name)["State"]["Running"] is True

    def close(self) -> None:
        self.reg.stop()
        if self.names and self.engine.answers():
            with contextlib.suppress(HarnessError):
                self.engine.docker("rm", "-f", *self.names, timeout=60)
        self.store.close()


@pytest.fixture
def on_dockerd(
    private_dockerd: PrivateDockerd, busybox_image: str, tmp_path: Path
) -> Iterator[Setup]:
    setup = Setup(private_dockerd, busybox_image, tmp_path)
    try:
        yield setup
    finally:
        setup.close()
        if not private_dockerd.pid:  # a failed test left it stopped: the next one needs it
            private_dockerd.start()


@pytest.fixture
def on_podman(podman: PodmanService, busybox_image: str, tmp_path: Path) -> Iterator[Setup]:
    setup = Setup(podman, busybox_image, tmp_path)
    try:
        yield setup
    finally:
        setup.close()


# -- a real Docker engine restart -------------------------------------------------------------


def _restart_test(s: Setup, engine: PrivateDockerd, crash: bool) -> None:
    if engine.live_restore:
        engine.restart(live_restore=False)
    # `plain` first: it takes the first ephemeral port, which `always` gets after the restart
    # (the engine's port allocator starts afresh), so its published port changes.
    plain = s.run("plain")
    always = s.run("always", "--restart=always")
    s.start()
    before = s.wait_published(always)
    s.wait_published(plain)

    if crash:
        # SIGKILL: no shutdown, no events; the containers run on (their shims live) until the
        # engine, started again without --live-restore, kills and restarts them.
        engine.kill()
    else:
        # SIGTERM: the engine stops every container, announcing it on the event stream, and
        # exits.
        engine.stop()
    wait_for(lambda: s.reg.healthz().get("docker") == "disconnected", 10, "disconnected", s.reg)
    time.sleep(TTL + s.slack)
    assert s.reg.alive()
    if crash:
        # Nobody told it anything: it keeps its entries alive (they would have expired).
        assert {e.container_name for e in s.all()} == {plain, always}
    else:
        # The engine said they stopped before it went away.
        assert s.all() == []
    assert s.reg.healthz()["docker"] == "disconnected"

    engine.start()
    wait_for(lambda: s.running(always), 20, "the restart=always container restarted")
    new_port = engine.host_port(always)
    wait_for(lambda: [(e.container_name, e.port) for e in s.all()] == [(always, new_port)], 30,
             "restart=always republished at its new port, the other withdrawn", s.reg)  # fmt: skip
    wait_for(lambda: s.reg.healthz().get("ok") is True, 10, "healthy again", s.reg)
    [after] = s.of(always)
    assert after.id == before.id
    assert new_port != before.port  # as arranged above: the registrar followed the change
    assert after.container_id == before.container_id == engine.inspect(always)["Id"]
    assert engine.inspect(plain)["State"]["Running"] is False

    # Events after the restart are followed as before.
    born = s.run("born")
    assert s.wait_published(born).port == engine.host_port(born)
    engine.docker("stop", always)
    s.wait_gone(always)
    time.sleep(TTL + s.slack)  # nothing comes back, nothing is duplicated
    assert [e.container_name for e in s.all()] == [born]
    logs = s.reg.logs()
    assert "Docker unreachable" in logs
    if not crash:
        assert "events since 1" in logs  # resumed from the last event's time


def test_engine_stopped_and_started_again(
    on_dockerd: Setup, private_dockerd: PrivateDockerd
) -> None:
    _restart_test(on_dockerd, private_dockerd, crash=False)


def test_engine_crashed_and_started_again(
    on_dockerd: Setup, private_dockerd: PrivateDockerd
) -> None:
    _restart_test(on_dockerd, private_dockerd, crash=True)


def test_engine_restart_with_live_restore_keeps_entries_without_flapping(
    on_dockerd: Setup, private_dockerd: PrivateDockerd
) -> None:
    s, engine = on_dockerd, private_dockerd
    if not engine.live_restore:
        engine.restart(live_restore=True)
    one = s.run("one")
    two = s.run("two", "--restart=always")
    s.start()
    published = {name: s.wait_published(name) for name in (one, two)}
    wait_for(lambda: s.metric("pykv_registrar_reconciles_total") >= 1, 10, "first reconcile")
    puts = s.metric('pykv_registrar_store_writes_total{op="put"}')
    reconciles = s.metric("pykv_registrar_reconciles_total")
    assert puts >= 2

    engine.stop()  # the containers keep running
    wait_for(lambda: s.reg.healthz().get("docker") == "disconnected", 10, "disconnected", s.reg)
    time.sleep(TTL + s.slack)
    assert {e.container_name: e for e in s.all()} == published

    engine.start(live_restore=True)
    assert engine.inspect(one)["State"]["Running"] is True
    wait_for(lambda: s.metric("pykv_registrar_reconciles_total") > reconciles, 30,
             "reconciled after the reconnection", s.reg)  # fmt: skip
    wait_for(lambda: s.reg.healthz().get("ok") is True, 10, "healthy again", s.reg)
    # Same entries, and not one store write since: no withdraw and re-publish in between.
    assert {e.container_name: e for e in s.all()} == published
    assert s.metric('pykv_registrar_store_writes_total{op="put"}') == puts
    assert s.metric('pykv_registrar_store_writes_total{op="delete"}') == 0
    assert "withdrawn" not in s.reg.logs()
    assert all(published[n].port == engine.host_port(n) for n in (one, two))

    # Events after the restart are followed.
    engine.docker("stop", one)
    s.wait_gone(one)
    assert [e.container_name for e in s.all()] == [two]


# -- Podman -------------------------------------------------------------------------------------


def test_podman_socket_publishes_withdraws_and_syncs_at_start(on_podman: Setup) -> None:
    # Podman's inspect has State.Health = {"Status": ""} for a container without a health
    # check: that must read as "no health check", not as "not healthy yet".
    s, engine = on_podman, on_podman.engine
    early = s.run("early")  # running before the registrar starts
    s.start()
    first = s.wait_published(early)
    assert (first.address, first.port, first.protocol) == (
        "127.0.0.1",
        engine.host_port(early),
        "tcp",
    )
    assert first.service == "pykv-busybox"  # from "localhost/pykv-busybox:1"
    assert first.id == f"{s.reg.node}:{early}:80"

    late = s.run("late")
    e = s.wait_published(late)
    assert (e.address, e.port) == ("127.0.0.1", engine.host_port(late))
    assert e.container_id == engine.inspect(late)["Id"]

    engine.docker("stop", late)
    s.wait_gone(late)
    assert [x.container_name for x in s.all()] == [early]
    assert 'pykv_registrar_events_total{action="start"}' in s.reg.metrics()
