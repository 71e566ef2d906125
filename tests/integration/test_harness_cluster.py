"""The cluster fixtures' node operations do what they say, on each of the three clusters.

Writes and reads go straight to the servers (Consul's and etcd's HTTP APIs, kazoo), not through
pykv. Every wait is bounded by the harness's timeouts.
"""

from __future__ import annotations

import base64
import socket
import uuid

import pytest
import requests
from _harness import Cluster, http_json, wait_for
from kazoo.client import KazooClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLUSTER_FIXTURES = [
    pytest.param("consul_cluster", marks=pytest.mark.consul, id="consul"),
    pytest.param("etcd_cluster", marks=pytest.mark.etcd, id="etcd"),
    pytest.param("zookeeper_cluster", marks=pytest.mark.zookeeper, id="zookeeper"),
]


@pytest.fixture(params=CLUSTER_FIXTURES)
def cluster(request: pytest.FixtureRequest) -> Cluster:
    handle: Cluster = request.getfixturevalue(request.param)
    return handle


def put(cluster: Cluster, node: str, key: str, value: str) -> None:
    """Write through ``node``; raises when the write does not commit within 10 s."""
    base = f"http://{cluster.address(node)}"
    if cluster.backend == "consul":
        response = requests.put(f"{base}/v1/kv/{key}", data=value, timeout=10)
        assert response.json() is True
    elif cluster.backend == "etcd":
        body = {"key": b64(key), "value": b64(value)}
        response = requests.post(f"{base}/v3/kv/put", json=body, timeout=10)
        assert response.status_code == 200, response.text
    else:
        client = KazooClient(hosts=cluster.address(node), timeout=10)
        client.start(timeout=15)
        try:
            client.create("/" + key, value.encode(), makepath=True)
        finally:
            client.stop()
            client.close()


def get(cluster: Cluster, node: str, key: str) -> str | None:
    """A read through ``node`` that is current as of the leader; None when ``node`` can't say."""
    base = f"http://{cluster.address(node)}"
    if cluster.backend == "consul":
        found = http_json("GET", f"{base}/v1/kv/{key}")
        return base64.b64decode(found[0]["Value"]).decode() if found else None
    if cluster.backend == "etcd":
        found = http_json("POST", f"{base}/v3/kv/range", {"key": b64(key)})
        kvs = (found or {}).get("kvs") or []
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None
    client = KazooClient(hosts=cluster.address(node), timeout=5)
    try:
        client.start(timeout=5)
        client.sync("/" + key)
        data, _ = client.get("/" + key)
        return bytes(data).decode()
    except Exception:
        return None
    finally:
        client.stop()
        client.close()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def answers(cluster: Cluster, node: str) -> bool:
    """Whether ``node``'s published client port answers a request within a second."""
    host, port = cluster.address(node).rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1) as sock:
            sock.settimeout(1)
            if cluster.backend == "zookeeper":
                sock.sendall(b"ruok")
                return sock.recv(4) == b"imok"
            sock.sendall(b"GET /version HTTP/1.0\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


def key() -> str:
    return f"pykv-harness/{uuid.uuid4().hex}"


def test_kill_the_leader_and_a_new_one_is_elected(cluster: Cluster) -> None:
    old = cluster.leader()
    cluster.kill(old)
    wait_for("killed", lambda: cluster.state(old) == "exited", 10)
    new = cluster.leader(timeout=60)
    assert new != old
    k = key()
    put(cluster, new, k, "after the election")
    cluster.start(old)
    cluster.wait_healthy()
    # The old leader came back as a follower and caught up.
    wait_for("old leader caught up", lambda: get(cluster, old, k) == "after the election", 30)


def test_pause_the_leader_and_it_comes_back_after_unpause(cluster: Cluster) -> None:
    old = cluster.leader()
    cluster.pause(old)
    assert cluster.state(old) == "paused"
    assert not answers(cluster, old)
    new = cluster.leader(timeout=60)  # the other two elect one of them
    assert new != old
    cluster.unpause(old)
    cluster.wait_healthy()
    wait_for("paused node answers again", lambda: answers(cluster, old), 30)


def test_disconnect_a_follower_and_it_catches_up_after_reconnect(cluster: Cluster) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n != leader)
    cluster.disconnect(follower)
    assert cluster.state(follower) == "disconnected"
    assert not answers(cluster, follower)  # its port is published through the lost network
    k = key()
    put(cluster, leader, k, "while it was away")  # two of three still make a quorum
    cluster.reconnect(follower)
    cluster.wait_healthy()
    wait_for("follower caught up", lambda: get(cluster, follower, k) == "while it was away", 30)


def test_restart_and_restore_from_lost_quorum(cluster: Cluster) -> None:
    leader = cluster.leader()
    first, second = (n for n in cluster.nodes if n != leader)
    cluster.restart(first)
    cluster.wait_healthy()
    # Two of three gone: no quorum, so the survivor steps down, until restore() brings both back.
    cluster.kill(first)
    cluster.disconnect(second)
    wait_for("survivor without quorum steps down", lambda: cluster.current_leader() is None, 30)
    cluster.restore()
    assert cluster.up_nodes() == list(cluster.nodes)
    assert cluster.leader() in cluster.nodes


def test_isolate_the_leader_from_its_peers(cluster: Cluster) -> None:
    old = cluster.leader()
    others = [n for n in cluster.nodes if n != old]
    cluster.isolate(old)
    wait_for(
        "the majority elects another leader",
        lambda: cluster.leader_among(others) not in (None, old),
        60,
    )
    assert answers(cluster, old)  # clients on the host still reach the isolated node
    cluster.heal_network(old)
    cluster.wait_healthy()


def test_cut_the_clients_off_a_node(cluster: Cluster) -> None:
    leader = cluster.leader()
    node = next(n for n in cluster.nodes if n != leader)
    cluster.cut_clients(node)
    assert not answers(cluster, node)
    k = key()
    put(cluster, leader, k, "while cut off")
    cluster.heal_network(node)
    # Its peers reached it all along: it has the write as soon as clients reach it again.
    wait_for("node answers again", lambda: answers(cluster, node), 10)
    assert get(cluster, node, k) == "while cut off"
    assert cluster.current_leader() == leader
