"""Machinery behind the integration fixtures: the compose project, its servers and clusters.

Nothing here imports pykv: the fixtures hand out store URLs, and the smoke tests talk to the
servers with their own clients, so a broken harness is never mistaken for a broken driver.

Every wait is bounded: subprocesses have timeouts, poll loops have deadlines, and HTTP and socket
calls to the servers time out after a second or two (a paused container accepts connections on its
published port but never answers).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, TypeVar

import docker
import requests

COMPOSE_FILE = Path(__file__).with_name("compose.yaml")
HOST = "127.0.0.1"
PROJECT_PREFIX = "pykv-it-"
# Labels put on containers that tests create outside compose, so the session removes them too.
SESSION_LABEL = "org.pykv.test-session"

T = TypeVar("T")


class HarnessError(Exception):
    """A server did not come up, a cluster did not heal, or docker did not answer."""


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


START_TIMEOUT = env_float("PYKV_START_TIMEOUT", 120.0)  # a server to become healthy
HEAL_TIMEOUT = env_float("PYKV_HEAL_TIMEOUT", 90.0)  # a cluster to be whole again


def poll(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
    """Call ``check`` until it returns something other than None; HarnessError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise HarnessError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(interval)


def run(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command, stdout and stderr together; HarnessError when it fails or times out."""
    try:
        proc = subprocess.run(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{' '.join(args)}: no answer within {timeout:.0f} s") from exc
    except FileNotFoundError as exc:
        raise HarnessError(f"{args[0]} not found: run `bash scripts/provision.sh`") from exc
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc


# ------------------------------------------------------------------------------------------------
# The compose project


class Compose:
    """One compose project: the services of compose.yaml under a project name of its own."""

    def __init__(self, project: str, file: Path, client: Any) -> None:
        self.project = project
        self.file = file
        self.client = client  # docker.DockerClient
        self.started: set[str] = set()

    def run(self, *args: str, timeout: float = 60.0) -> str:
        cmd = ["docker", "compose", "--ansi=never", "-f", str(self.file), "-p", self.project]
        # The profile makes the cluster services known to every subcommand; `up` still starts
        # only the services it is given.
        cmd += ["--profile", "cluster", *args]
        return run(cmd, timeout).stdout

    def start(self, services: Iterable[str]) -> None:
        """Create and start ``services`` without waiting for them (they come up in parallel)."""
        todo = sorted(set(services) - self.started)
        if todo:
            self.run("up", "--detach", "--no-recreate", *todo, timeout=180.0)
            self.started.update(todo)

    def ensure(self, services: Sequence[str], timeout: float = START_TIMEOUT) -> None:
        """Start ``services`` if need be and wait until docker reports each of them healthy."""
        self.start(services)
        for service in services:
            self.wait_healthy(service, timeout)

    def container(self, service: str) -> Any:
        found = self.client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={self.project}",
                    f"com.docker.compose.service={service}",
                ]
            },
        )
        if not found:
            raise HarnessError(f"no container for service {service} in project {self.project}")
        return found[0]

    def health(self, service: str) -> str:
        """The container's state: its health status while running, else its status."""
        state = self.container(service).attrs["State"]
        if state["Status"] != "running" or state.get("Paused"):
            return str(state["Status"])
        return str(state.get("Health", {}).get("Status", "running"))

    def wait_healthy(self, service: str, timeout: float) -> None:
        def check() -> bool | None:
            status = self.health(service)
            if status == "healthy":
                return True
            if status in {"unhealthy", "exited", "dead"}:
                raise HarnessError(f"{service} is {status}{self._last_probe(service)}")
            return None

        try:
            poll(f"{service} healthy", check, timeout, interval=0.3)
        except HarnessError as exc:
            raise HarnessError(
                f"server {service} did not come up: {exc}\n"
                f"--- docker compose logs {service} (last 60 lines) ---\n"
                f"{self.logs([service], tail=60)}"
            ) from None

    def _last_probe(self, service: str) -> str:
        log = self.container(service).attrs["State"].get("Health", {}).get("Log") or []
        if not log:
            return ""
        last = log[-1]
        return f" (last health check exit {last.get('ExitCode')}: {last.get('Output', '')!r})"

    def logs(self, services: Iterable[str], tail: int = 200) -> str:
        try:
            return self.run(
                "logs", "--no-color", "--timestamps", f"--tail={tail}", *services, timeout=30.0
            )
        except HarnessError as exc:
            return f"(no logs: {exc})"

    def down(self) -> None:
        """Remove the project's containers, networks and volumes, and containers tests labelled."""
        self.run("down", "--volumes", "--remove-orphans", "--timeout=3", timeout=180.0)
        remove_labelled(self.client, self.project)


def remove_labelled(client: Any, project: str) -> None:
    for container in client.containers.list(
        all=True, filters={"label": f"{SESSION_LABEL}={project}"}
    ):
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


def project_name() -> str:
    """A compose project name unique to this test session; it names the pid that owns it."""
    return f"{PROJECT_PREFIX}{os.getpid()}-{random.randrange(16**4):04x}"


def remove_stale_projects(client: Any) -> list[str]:
    """Take down projects left by test sessions whose process is gone (killed with -9, say)."""
    projects: set[str] = set()
    for container in client.containers.list(
        all=True, filters={"label": "com.docker.compose.project"}
    ):
        name = str(container.labels.get("com.docker.compose.project", ""))
        if name.startswith(PROJECT_PREFIX):
            projects.add(name)
    removed = []
    for name in sorted(projects):
        match = re.fullmatch(rf"{re.escape(PROJECT_PREFIX)}(\d+)-[0-9a-f]+", name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        down = ["down", "--volumes", "--remove-orphans", "--timeout=1"]
        run(["docker", "compose", "-p", name, *down], timeout=120.0)
        remove_labelled(client, name)
        removed.append(name)
    return removed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    return True


def free_cluster_net(client: Any) -> str:
    """First three octets of a /24 that no docker network and no host route uses."""
    taken: list[ipaddress.IPv4Network] = []
    for network in client.networks.list():
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                net = ipaddress.ip_network(config["Subnet"], strict=False)
                if isinstance(net, ipaddress.IPv4Network):
                    taken.append(net)
    taken.extend(host_routes())
    candidates = list(range(256))
    random.shuffle(candidates)
    for third in candidates:
        net = ipaddress.IPv4Network(f"10.213.{third}.0/24")
        if not any(net.overlaps(other) for other in taken):
            return f"10.213.{third}"
    raise HarnessError("no free /24 in 10.213.0.0/16 for the cluster network")


def host_routes() -> list[ipaddress.IPv4Network]:
    routes = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            fields = line.split()
            dest = socket.inet_ntoa(int(fields[1], 16).to_bytes(4, "little"))
            mask = socket.inet_ntoa(int(fields[7], 16).to_bytes(4, "little"))
            if dest != "0.0.0.0":
                routes.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
    return routes


class SessionLock:
    """One integration session per machine at a time, since the host ports are fixed.

    An flock on a file in /tmp: the kernel releases it when the holder dies. The file names the
    holder's pid, for the message of a session that waits.
    """

    path = Path(tempfile.gettempdir()) / "pykv-integration.lock"

    def __init__(self) -> None:
        self._handle: IO[str] | None = None

    def acquire(self, timeout: float, waiting: Callable[[str], None]) -> None:
        handle = self.path.open("a+")
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self.path.read_text().strip() or "?"
                if time.monotonic() >= deadline:
                    handle.close()
                    raise HarnessError(
                        f"integration session of pid {holder} held {self.path} "
                        f"for {timeout:.0f} s (PYKV_LOCK_TIMEOUT)"
                    ) from None
                if not told:
                    waiting(f"waiting for the integration session of pid {holder} to end")
                    told = True
                time.sleep(0.5)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.truncate(0)
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


@contextlib.contextmanager
def teardown_on_exit(compose: Compose) -> Iterator[None]:
    """Make sure the project is taken down, also when the run is cut short.

    pytest tears fixtures down after Ctrl-C already; SIGTERM (a cancelled CI job) is turned into
    the same KeyboardInterrupt, and an atexit hook takes the project down if teardown never ran.
    """
    done = False

    def fallback() -> None:
        if not done:
            with contextlib.suppress(HarnessError, docker.errors.DockerException):
                compose.down()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_sigterm)
    atexit.register(fallback)
    try:
        yield
    finally:
        done = True
        atexit.unregister(fallback)
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------------
# What the credentialed fixtures yield


@dataclass(frozen=True)
class ConsulACL:
    url: str  # consul://127.0.0.1:18510
    token: str  # the initial management ("master") token; anonymous requests are denied


@dataclass(frozen=True)
class EtcdAuth:
    url: str  # etcd://127.0.0.1:12390
    user: str  # root, with the root role
    password: str


# ------------------------------------------------------------------------------------------------
# Talking to the servers from the host


def http_json(method: str, url: str, body: object = None, timeout: float = 2.0) -> Any:
    """A JSON request; None when the server does not answer or answers with an error."""
    try:
        response = requests.request(method, url, json=body, timeout=timeout)
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def four_letter_word(address: str, word: str, timeout: float = 2.0) -> str | None:
    """ZooKeeper's answer to a four-letter word (srvr, ruok, ...); None when it does not answer."""
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(word.encode())
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return None


def zookeeper_mode(address: str) -> str | None:
    """standalone, leader or follower while the server serves; None otherwise."""
    answer = four_letter_word(address, "srvr")
    match = re.search(r"^Mode: (\w+)", answer or "", re.MULTILINE)
    return match.group(1) if match else None


# ------------------------------------------------------------------------------------------------
# Clusters


@dataclass(frozen=True)
class ClusterSpec:
    backend: str  # consul, etcd or zookeeper: also the pykv URL scheme
    ports: dict[str, int]  # node (= compose service) -> published client port


CLUSTERS = {
    "consul": ClusterSpec("consul", {"consul1": 18501, "consul2": 18502, "consul3": 18503}),
    "etcd": ClusterSpec("etcd", {"etcd1": 12381, "etcd2": 12382, "etcd3": 12383}),
    "zookeeper": ClusterSpec("zookeeper", {"zk1": 12281, "zk2": 12282, "zk3": 12283}),
}


class Cluster:
    """Three server containers of one backend on the compose network ``cluster``.

    Node operations act on one container: ``kill`` (SIGKILL), ``start``, ``restart``, ``pause``
    and ``unpause`` (cgroup freezer), ``disconnect`` and ``reconnect`` (leave and rejoin the
    cluster network; a disconnected node is unreachable from the host as well, since its port
    is published through that network), ``isolate`` (cut off from its peers, still reachable
    from the host) and ``cut_clients`` (cut off from the host, still in the cluster), both
    undone by ``heal_network``. ``restore`` undoes all of them and waits until the cluster is
    whole again; the fixtures call it after every test.
    """

    def __init__(self, spec: ClusterSpec, compose: Compose) -> None:
        self.spec = spec
        self.compose = compose
        self.backend = spec.backend
        self.nodes: tuple[str, ...] = tuple(spec.ports)
        self.url = f"{spec.backend}://" + ",".join(self.address(n) for n in self.nodes)
        self.network = f"{compose.project}_cluster"
        self._ips = {node: self._ip(node) for node in self.nodes}
        self._gateway = str(
            client_gateway(compose.client.networks.get(self.network).attrs, self.network)
        )
        self._netfaults: set[str] = set()  # nodes with iptables rules of ours

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    # -- addresses --------------------------------------------------------------------------

    def address(self, node: str) -> str:
        """``127.0.0.1:PORT``: where ``node``'s client port is published."""
        return f"{HOST}:{self.spec.ports[node]}"

    def url_for(self, node: str) -> str:
        """The pykv URL of ``node`` alone."""
        return f"{self.spec.backend}://{self.address(node)}"

    def _http(self, node: str) -> str:
        return f"http://{self.address(node)}"

    def services(self) -> list[str]:
        return list(self.nodes)

    def _ip(self, node: str) -> str:
        networks = self.compose.container(node).attrs["NetworkSettings"]["Networks"]
        return str(networks[self.network]["IPAddress"])

    # -- node operations --------------------------------------------------------------------

    def _container(self, node: str) -> Any:
        if node not in self.spec.ports:
            raise ValueError(f"{node!r} is not one of {self.nodes}")
        return self.compose.container(node)

    def kill(self, node: str) -> None:
        self._container(node).kill()

    def start(self, node: str) -> None:
        self._container(node).start()

    def restart(self, node: str) -> None:
        self._container(node).restart(timeout=5)

    def pause(self, node: str) -> None:
        self._container(node).pause()

    def unpause(self, node: str) -> None:
        self._container(node).unpause()

    def disconnect(self, node: str) -> None:
        self.compose.client.networks.get(self.network).disconnect(self._container(node))

    def reconnect(self, node: str) -> None:
        # Same address and DNS name as before: peers know the node by both.
        self.compose.client.networks.get(self.network).connect(
            self._container(node), ipv4_address=self._ips[node], aliases=[node]
        )

    # -- network faults (iptables inside a node's network namespace) -------------------------

    def _iptables(self, node: str, *rules: Sequence[str]) -> None:
        pid = self._container(node).attrs["State"]["Pid"]
        for rule in rules:
            run(["nsenter", "-t", str(pid), "-n", "iptables", "-w", "5", *rule], timeout=15.0)

    def isolate(self, node: str) -> None:
        """Cut ``node`` off from its peers, both ways; clients on the host still reach it."""
        peers = [self._ips[n] for n in self.nodes if n != node]
        self._iptables(
            node,
            *(["-I", "INPUT", "-s", ip, "-j", "DROP"] for ip in peers),
            *(["-I", "OUTPUT", "-d", ip, "-j", "DROP"] for ip in peers),
        )
        self._netfaults.add(node)

    def cut_clients(self, node: str) -> None:
        """Cut ``node`` off from the host (its clients), both ways; its peers still reach it.

        The host reaches a published port through the network's gateway address."""
        self._iptables(
            node,
            ["-I", "INPUT", "-s", self._gateway, "-j", "DROP"],
            ["-I", "OUTPUT", "-d", self._gateway, "-j", "DROP"],
        )
        self._netfaults.add(node)

    def heal_network(self, node: str | None = None) -> None:
        """Drop the rules of :meth:`isolate` and :meth:`cut_clients` (on every node: None)."""
        for name in [node] if node else sorted(self._netfaults):
            if self.state(name) in {"running", "disconnected"}:
                self._iptables(name, ["-F", "INPUT"], ["-F", "OUTPUT"])
            self._netfaults.discard(name)

    def state(self, node: str) -> str:
        """running, paused, exited, ... or disconnected."""
        attrs = self._container(node).attrs
        if attrs["State"]["Status"] == "running" and self.network not in (
            attrs["NetworkSettings"]["Networks"] or {}
        ):
            return "disconnected"
        return str(attrs["State"]["Status"])

    def up_nodes(self) -> list[str]:
        """Nodes that run, are not paused and are on the network."""
        return [n for n in self.nodes if self.state(n) == "running"]

    def restore(self, timeout: float = HEAL_TIMEOUT) -> None:
        """Unpause, start and reconnect every node, lift network faults, then wait until the
        cluster is whole."""
        for node in self.nodes:
            state = self.state(node)
            if state == "paused":
                self.unpause(node)
            elif state == "disconnected":
                self.reconnect(node)
            elif state != "running":
                self.start(node)
        self.heal_network()
        self.wait_healthy(timeout)

    # -- leader and health ------------------------------------------------------------------

    def leader(self, timeout: float = 30.0) -> str:
        """The node that leads, once every node that is up agrees on one that is up itself."""
        return poll(f"{self.backend} cluster leader", self._agreed_leader, timeout)

    def current_leader(self) -> str | None:
        """The leader the nodes that are up agree on right now, without waiting; None if none."""
        return self._agreed_leader()

    def wait_healthy(self, timeout: float = HEAL_TIMEOUT) -> None:
        """Wait until every node is up, in the cluster, and they agree on a leader."""
        problem = ""

        def check() -> bool | None:
            nonlocal problem
            down = [n for n in self.nodes if self.state(n) != "running"]
            if down:
                problem = f"not running: {down}"
                return None
            if self._agreed_leader() is None:
                problem = "nodes do not agree on a leader"
                return None
            problem = self._unhealthy() or ""
            return None if problem else True

        try:
            poll(f"{self.backend} cluster healthy", check, timeout, interval=0.3)
        except HarnessError as exc:
            raise HarnessError(
                f"{exc} ({problem})\n--- docker compose logs ---\n"
                f"{self.compose.logs(self.nodes, tail=40)}"
            ) from None

    def leader_among(self, nodes: Sequence[str]) -> str | None:
        """The leader ``nodes`` agree on, one of them, right now; None if none (a leader cut
        off from the others is not agreed on by the majority that elected another)."""
        return self._agreed_leader(list(nodes))

    def _agreed_leader(self, among: list[str] | None = None) -> str | None:
        up = self.up_nodes() if among is None else among
        if not up:
            return None
        views = {self._leader_seen_by(node) for node in up}
        if len(views) != 1:
            return None
        (leader,) = views
        return leader if leader in up else None

    def _leader_seen_by(self, node: str) -> str | None:
        raise NotImplementedError

    def _unhealthy(self) -> str | None:
        """What is wrong beyond running and agreeing on a leader; None when nothing."""
        return None


class ConsulCluster(Cluster):
    def _leader_seen_by(self, node: str) -> str | None:
        leader = http_json("GET", f"{self._http(node)}/v1/status/leader")
        if not isinstance(leader, str) or not leader:
            return None
        ip = leader.rsplit(":", 1)[0]
        return next((n for n, node_ip in self._ips.items() if node_ip == ip), None)

    def _unhealthy(self) -> str | None:
        for node in self.nodes:
            peers = http_json("GET", f"{self._http(node)}/v1/status/peers")
            if not isinstance(peers, list) or len(peers) != len(self.nodes):
                return f"{node} sees raft peers {peers}"
        critical = http_json("GET", f"{self._http(self.nodes[0])}/v1/health/state/critical")
        if critical != []:
            return f"critical checks: {critical}"
        return None


class EtcdCluster(Cluster):
    def _leader_seen_by(self, node: str) -> str | None:
        status = http_json("POST", f"{self._http(node)}/v3/maintenance/status", {})
        members = http_json("POST", f"{self._http(node)}/v3/cluster/member/list", {})
        if not isinstance(status, dict) or not isinstance(members, dict):
            return None
        leader_id = status.get("leader")
        for member in members.get("members", []):
            if member.get("ID") == leader_id:
                return str(member.get("name")) or None
        return None

    def _unhealthy(self) -> str | None:
        for node in self.nodes:
            health = http_json("GET", f"{self._http(node)}/health")
            if not isinstance(health, dict) or health.get("health") != "true":
                return f"{node} /health: {health}"
        return None


class ZooKeeperCluster(Cluster):
    def _agreed_leader(self, among: list[str] | None = None) -> str | None:
        up = self.up_nodes() if among is None else among
        modes = {node: zookeeper_mode(self.address(node)) for node in up}
        leaders = [n for n, mode in modes.items() if mode == "leader"]
        followers = [n for n, mode in modes.items() if mode == "follower"]
        if len(leaders) == 1 and len(leaders) + len(followers) == len(up):
            return leaders[0]
        return None


CLUSTER_CLASSES: dict[str, type[Cluster]] = {
    "consul": ConsulCluster,
    "etcd": EtcdCluster,
    "zookeeper": ZooKeeperCluster,
}


def client_gateway(network: dict[str, Any], name: str) -> str:
    """The gateway address of a docker network: where the host's traffic comes from."""
    for config in (network.get("IPAM") or {}).get("Config") or []:
        if config.get("Gateway"):
            return str(config["Gateway"])
        if config.get("Subnet"):
            return str(next(ipaddress.ip_network(config["Subnet"], strict=False).hosts()))
    raise HarnessError(f"docker network {name} has no gateway")


def make_cluster(backend: str, compose: Compose) -> Cluster:
    spec = CLUSTERS[backend]
    compose.ensure(list(spec.ports))
    cluster = CLUSTER_CLASSES[backend](spec, compose)
    cluster.wait_healthy()
    return cluster


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.25) -> None:
    """Poll a boolean ``check`` until true; HarnessError after ``timeout``."""
    poll(what, lambda: True if check() else None, timeout, interval)
