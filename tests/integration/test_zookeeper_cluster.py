"""The ZooKeeper driver on a three-node ensemble whose leader is killed.

Uses the harness fixture ``zookeeper_cluster``. With PYKV_ZOOKEEPER_LOCAL_CLUSTER=1 it runs
its own ensemble instead: three ZooKeeper processes on loopback ports 22281-22283 (jars in
/usr/share/java), for machines without Docker.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import pykv
from pykv.testing._support import drain_until, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.zookeeper]

SESSION = 20.0  # the longest session tickTime=1000 allows: the lock grace is SESSION / 4


def _mode(port: int) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"srvr")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
    except OSError:
        return None
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


class LocalEnsemble:
    """Three ZooKeeper processes on loopback, with the harness cluster handle's interface."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.nodes = ["1", "2", "3"]
        self.ports = {n: 22280 + int(n) for n in self.nodes}
        self.url = "zk://" + ",".join(f"127.0.0.1:{p}" for p in self.ports.values())
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        servers = "\n".join(
            f"server.{n}=127.0.0.1:{22880 + int(n)}:{23880 + int(n)}" for n in self.nodes
        )
        for n in self.nodes:
            data = os.path.join(base, n)
            os.makedirs(data)
            with open(os.path.join(data, "myid"), "w") as f:
                f.write(n)
            with open(os.path.join(data, "zoo.cfg"), "w") as f:
                f.write(
                    f"tickTime=1000\ninitLimit=10\nsyncLimit=5\ndataDir={data}\n"
                    f"clientPort={self.ports[n]}\nclientPortAddress=127.0.0.1\n"
                    "minSessionTimeout=1000\nadmin.enableServer=false\n"
                    f"4lw.commands.whitelist=srvr,ruok\n{servers}\n"
                )

    def start(self, node: str) -> None:
        cfg = os.path.join(self.base, node, "zoo.cfg")
        with open(os.path.join(self.base, node, "log"), "ab") as log:
            self.procs[node] = subprocess.Popen(
                [
                    "java",
                    "-Xmx128m",
                    "-XX:+UseSerialGC",
                    "-XX:TieredStopAtLevel=1",
                    "-cp",
                    "/usr/share/java/*",
                    "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                    cfg,
                ],
                stdout=log,
                stderr=log,
            )

    def kill(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def pause(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGSTOP)

    def unpause(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGCONT)

    def url_for(self, node: str) -> str:
        return f"zk://127.0.0.1:{self.ports[node]}"

    def leader(self) -> str:
        for n in self.nodes:
            if n in self.procs and _mode(self.ports[n]) == "leader":
                return n
        raise AssertionError("no leader")

    def wait_healthy(self, timeout: float) -> None:
        wait_until(
            lambda: (
                sorted(_mode(self.ports[n]) or "" for n in self.procs)
                in (["follower", "follower", "leader"], ["follower", "leader"])
            ),
            timeout,
            "a quorum",
            interval=0.5,
        )

    def stop(self) -> None:
        for node in list(self.procs):
            self.kill(node)


@pytest.fixture(scope="module")
def local_ensemble() -> Iterator[LocalEnsemble]:
    if shutil.which("java") is None:
        pytest.fail("PYKV_ZOOKEEPER_LOCAL_CLUSTER=1 needs java and the ZooKeeper jars")
    base = tempfile.mkdtemp(prefix="pykv-zk-cluster-")
    ensemble = LocalEnsemble(base)
    try:
        for node in ensemble.nodes:
            ensemble.start(node)
        ensemble.wait_healthy(90)
        yield ensemble
    finally:
        ensemble.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Any:
    """The harness's ``zookeeper_cluster`` (restored after each test), or the local one."""
    if os.environ.get("PYKV_ZOOKEEPER_LOCAL_CLUSTER") == "1":
        return request.getfixturevalue("local_ensemble")
    return request.getfixturevalue("zookeeper_cluster")


def test_leader_kill(cluster: Any) -> None:
    cluster.wait_healthy(90)
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    options: dict[str, Any] = {"prefix": prefix, "timeout": 10, "session_timeout": SESSION}
    holder = pykv.open_store(cluster.url, **options)
    observer = pykv.open_store(cluster.url, **options)
    leader = cluster.leader()
    try:
        holder.put("eph", b"alive", ttl=5)
        lock = holder.lock("leader", value=b"holder", ttl=5)
        assert lock.acquire(timeout=10)
        token = lock.token
        session = holder._client.client_id  # type: ignore[attr-defined]
        holder.put("w/a", b"0")
        with observer.watch("w/a") as watch, observer.watch_tree("w") as tree:
            assert watch.get(timeout=10) is not None
            assert len(tree.get(timeout=10)) == 1

            cluster.kill(leader)
            killed = time.monotonic()
            # the first write waits for the new quorum within the timeout, or fails and is retried
            while True:
                try:
                    holder.put("w/a", b"1")
                    break
                except pykv.UnavailableError:
                    assert time.monotonic() - killed < 20, "no quorum 20 s after the kill"
            resumed = time.monotonic() - killed
            assert resumed < 10, f"operations resumed only after {resumed:.1f} s"

            for i in range(2, 100):
                holder.put("w/a", str(i))
            holder.put("w/b", b"new")
            final = holder.get("w/a")
            assert drain_until(watch, lambda e: e is not None and e.value == b"99", 20) == final
            drain_until(
                tree,
                lambda s: [(p.key, p.value) for p in s] == [("w/a", b"99"), ("w/b", b"new")],
                20,
            )

            # the session survived the election, and with it the TTL key and the lock
            assert holder._client.client_id == session  # type: ignore[attr-defined]
            assert observer.get("eph").value == b"alive"
            assert lock.held, f"lock lost over the election (resumed after {resumed:.1f} s)"
            assert not lock.lost.is_set()
            assert lock.token == token
            assert observer.get("leader").value == b"holder"
            assert not observer.lock("leader", ttl=5).acquire(timeout=1)

            holder.put("w/a", b"later")
            drain_until(watch, lambda e: e is not None and e.value == b"later", 10)
        lock.release()
        assert observer.lock("leader", ttl=5).acquire(timeout=10)
        holder.close()
        wait_until(lambda: not observer.exists("eph"), 10, "the TTL key to go with its store")
    finally:
        holder.close()
        with observer:
            observer.delete_tree("")
        cluster.start(leader)
        cluster.wait_healthy(90)


def test_partitioned_holder_is_told_before_another_client_acquires(cluster: Any) -> None:
    """The holder's only server freezes: the holder must set ``lost`` (suspended longer than
    session_timeout / 6) before the server expires its session and a client on the other
    servers takes the lock."""
    cluster.wait_healthy(90)
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    others = [n for n in cluster.nodes if n != follower]
    others_url = "zk://" + ",".join(cluster.url_for(n).split("://", 1)[1] for n in others)
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    session = 6.0
    holder = pykv.open_store(
        cluster.url_for(follower), prefix=prefix, timeout=2, session_timeout=session
    )
    contender = pykv.open_store(others_url, prefix=prefix, timeout=10, session_timeout=session)
    try:
        lock = holder.lock("leader", value=b"holder", ttl=session)
        assert lock.acquire(timeout=10)
        theirs = contender.lock("leader", value=b"contender", ttl=session)
        acquired_at: list[float] = []

        def contend() -> None:
            if theirs.acquire(timeout=40):
                acquired_at.append(time.monotonic())

        thread = threading.Thread(target=contend)
        thread.start()
        time.sleep(0.5)
        paused = time.monotonic()
        cluster.pause(follower)
        # calls on the frozen server fail within the store's timeout, they do not hang
        for call in (lambda: holder.get("leader"), lambda: holder.put("other", b"x")):
            start = time.monotonic()
            with pytest.raises(pykv.UnavailableError):
                call()
            assert time.monotonic() - start < 3
        assert lock.lost.wait(session), "the partitioned holder was never told"
        lost_at = time.monotonic()
        thread.join(45)
        assert acquired_at, "the contender never got the lock after the holder's session expired"
        assert lost_at < acquired_at[0], (
            f"lost {lost_at - paused:.2f} s after the pause, but the contender acquired after "
            f"{acquired_at[0] - paused:.2f} s"
        )
        assert contender.get("leader").value == b"contender"
        assert theirs.token is not None
        assert lock.token is not None
        assert theirs.token > lock.token
        theirs.release()
    finally:
        cluster.unpause(follower)
        holder.close()
        with contender:
            contender.delete_tree("")


def _server_of(store: pykv.Store, cluster: Any) -> str:
    """The node the store's main session is connected to right now."""
    connection = store._client._connection  # type: ignore[attr-defined]
    wait_until(lambda: connection._socket is not None, 10, "a connection")
    port = connection._socket.getpeername()[1]
    return str(next(n for n in cluster.nodes if cluster.url_for(n).endswith(f":{port}")))


def _reach(watch: pykv.Watch[Any], tree: pykv.Watch[Any], value: bytes) -> None:
    """Both watches reach ``value`` of ``w/c`` within 5 s (the fault suite's bound)."""
    drain_until(watch, lambda e: e is not None and e.value == value, 5)
    drain_until(tree, lambda s: s[0].key == "w/c" and s[0].value == value, 5)
    assert watch.error is None
    assert tree.error is None


def test_watches_survive_their_server_being_killed_while_the_key_changes(cluster: Any) -> None:
    """Fault-suite finding: after the server of a watching store was SIGKILLed, its watch and
    watch_tree went silent for good (kazoo reconnected on the same session). The watches must
    reach the final state after each kill, or fail loudly; silence is the bug. The tree holds
    as many keys as the smoke's did by then (see test_zookeeper_faults for the mechanism)."""
    cluster.wait_healthy(90)
    prefix = f"pykv-test/{uuid.uuid4().hex[:12]}"
    watcher = pykv.open_store(cluster.url, prefix=prefix, timeout=3)
    writers: list[pykv.Store] = []
    try:
        watcher.put("w/c", b"0")
        for i in range(250):
            watcher.put(f"w/k{i:03}", b"")
        with watcher.watch("w/c") as watch, watcher.watch_tree("w") as tree:
            assert watch.get(timeout=10) is not None
            assert tree.get(timeout=10)
            count = 0
            for _round in range(4):
                node = _server_of(watcher, cluster)
                other = next(n for n in cluster.nodes if n != node)
                writer = pykv.open_store(cluster.url_for(other), prefix=prefix, timeout=3)
                writers.append(writer)
                stop = threading.Event()
                done: list[int] = []

                def write(
                    writer: pykv.Store = writer,
                    stop: threading.Event = stop,
                    done: list[int] = done,
                ) -> None:
                    nonlocal count
                    while not stop.is_set():
                        try:
                            writer.put("w/c", str(count + 1).encode())
                            count += 1
                        except (pykv.UnavailableError, pykv.OperationTimeoutError):
                            time.sleep(0.05)
                    done.append(count)

                thread = threading.Thread(target=write, daemon=True)
                thread.start()
                time.sleep(0.5)
                cluster.kill(node)
                time.sleep(2)
                cluster.start(node)
                time.sleep(1)
                stop.set()
                thread.join(15)
                assert done, "the writer did not stop"
                cluster.wait_healthy(90)
                final = str(done[0]).encode()
                assert watcher.get("w/c").value == final
                _reach(watch, tree, final)
    finally:
        for writer in writers:
            writer.close()
        with watcher:
            watcher.delete_tree("")
