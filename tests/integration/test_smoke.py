"""Each server answers its own client, so a broken harness is never mistaken for a broken driver.

No pykv here: Consul through py-consul, etcd v3 through pyetcd (etcd-sdk-python), etcd v2
through its HTTP API, ZooKeeper through kazoo, Docker through docker-py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import consul
import grpc
import pyetcd
import pytest
import requests
from _harness import Cluster, ConsulACL, EtcdAuth
from kazoo.client import KazooClient

pytestmark = pytest.mark.integration


def host_port(url: str) -> tuple[str, int]:
    """Host and port of the first address in a pykv URL."""
    first = urlsplit(url).netloc.split(",")[0]
    host, port = first.rsplit(":", 1)
    return host, int(port)


def unique_key() -> str:
    return f"pykv-smoke/{uuid.uuid4().hex}"


@contextmanager
def etcd_client(url: str, user: str | None = None, password: str | None = None) -> Iterator[Any]:
    host, port = host_port(url)
    client = pyetcd.client(host, port, timeout=10, user=user, password=password)
    if user is not None:
        # pyetcd sends the auth token twice: as metadata and as call credentials, which grpc
        # refuses on a plain-text channel. The metadata alone is what etcd reads.
        client.call_credentials = None
    try:
        yield client
    finally:
        client.close()


@contextmanager
def zookeeper_client(hosts: str) -> Iterator[KazooClient]:
    client = KazooClient(hosts=hosts, timeout=10)
    client.start(timeout=15)
    try:
        yield client
    finally:
        client.stop()
        client.close()


# ---- single nodes -------------------------------------------------------------------------


@pytest.mark.consul
def test_consul_put_get(consul_url: str) -> None:
    host, port = host_port(consul_url)
    client = consul.Consul(host=host, port=port)
    key = unique_key()
    assert client.kv.put(key, "value")
    _, data = client.kv.get(key)
    assert data is not None
    assert data["Value"] == b"value"


@pytest.mark.consul
def test_consul_accepts_one_second_session_ttl(consul_url: str) -> None:
    # Straight HTTP: py-consul itself refuses TTLs below Consul's default minimum of 10 s.
    host, port = host_port(consul_url)
    base = f"http://{host}:{port}/v1/session"
    created = requests.put(f"{base}/create", json={"TTL": "1s"}, timeout=10)
    assert created.status_code == 200, created.text  # the server refuses TTLs below its minimum
    session = created.json()["ID"]
    time.sleep(2.5)  # a TTL session lives up to twice its TTL
    assert requests.get(f"{base}/info/{session}", timeout=10).json() in (None, [])


@pytest.mark.consul
def test_consul_acl_denies_anonymous_and_accepts_the_token(consul_acl: ConsulACL) -> None:
    host, port = host_port(consul_acl.url)
    key = unique_key()
    with pytest.raises(consul.ACLPermissionDenied):
        consul.Consul(host=host, port=port).kv.put(key, "value")
    client = consul.Consul(host=host, port=port, token=consul_acl.token)
    assert client.kv.put(key, "value")
    _, data = client.kv.get(key)
    assert data is not None
    assert data["Value"] == b"value"


@pytest.mark.etcd
def test_etcd_v3_put_get(etcd_url: str) -> None:
    key = unique_key()
    with etcd_client(etcd_url) as client:
        client.put(key, "value")
        value, _ = client.get(key)
    assert value == b"value"


@pytest.mark.etcd
def test_etcd_v2_put_get(etcd2_url: str) -> None:
    host, port = host_port(etcd2_url)
    url = f"http://{host}:{port}/v2/keys/{unique_key()}"
    put = requests.put(url, data={"value": "value"}, timeout=10)
    assert put.status_code == 201, put.text
    got = requests.get(url, timeout=10)
    assert got.json()["node"]["value"] == "value"


@pytest.mark.etcd
def test_etcd_auth_requires_credentials(etcd_auth: EtcdAuth) -> None:
    key = unique_key()
    with etcd_client(etcd_auth.url) as anonymous, pytest.raises(grpc.RpcError) as info:
        anonymous.put(key, "value")
    assert "user name is empty" in str(info.value)
    with etcd_client(etcd_auth.url, etcd_auth.user, etcd_auth.password) as client:
        client.put(key, "value")
        value, _ = client.get(key)
    assert value == b"value"


@pytest.mark.zookeeper
def test_zookeeper_create_get(zookeeper_url: str) -> None:
    path = "/" + unique_key()
    with zookeeper_client(urlsplit(zookeeper_url).netloc) as client:
        client.create(path, b"value", makepath=True)
        data, _ = client.get(path)
        client.delete(path)
    assert data == b"value"


@pytest.mark.docker
def test_busybox_httpd_serves_on_loopback(
    docker_engine: Any, busybox_image: str, docker_labels: dict[str, str]
) -> None:
    container = docker_engine.containers.run(
        busybox_image,
        ["httpd", "-f", "-p", "80", "-h", "/www"],
        detach=True,
        ports={"80/tcp": ("127.0.0.1", 18080)},
        labels=docker_labels,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                page = requests.get("http://127.0.0.1:18080/", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert page.status_code == 200
        assert "pykv busybox" in page.text
    finally:
        container.remove(force=True)


# ---- clusters: write on one node, read on another -----------------------------------------


@pytest.mark.consul
def test_consul_cluster_replicates(consul_cluster: Cluster) -> None:
    key = unique_key()
    writer, *readers = consul_cluster.nodes
    host, port = host_port(consul_cluster.url_for(writer))
    assert consul.Consul(host=host, port=port).kv.put(key, "value")
    for reader in readers:
        host, port = host_port(consul_cluster.url_for(reader))
        _, data = consul.Consul(host=host, port=port).kv.get(key)
        assert data is not None
        assert data["Value"] == b"value"


@pytest.mark.etcd
def test_etcd_cluster_replicates(etcd_cluster: Cluster) -> None:
    key = unique_key()
    writer, *readers = etcd_cluster.nodes
    with etcd_client(etcd_cluster.url_for(writer)) as client:
        client.put(key, "value")
        # Members advertise the loopback URLs their ports are published on.
        advertised = sorted(url for member in client.members for url in member.client_urls)
    assert advertised == sorted(f"http://{etcd_cluster.address(n)}" for n in etcd_cluster.nodes)
    for reader in readers:
        with etcd_client(etcd_cluster.url_for(reader)) as client:
            value, _ = client.get(key)  # linearizable: goes through the leader
        assert value == b"value"


@pytest.mark.zookeeper
def test_zookeeper_cluster_replicates(zookeeper_cluster: Cluster) -> None:
    path = "/" + unique_key()
    writer, *readers = zookeeper_cluster.nodes
    with zookeeper_client(zookeeper_cluster.address(writer)) as client:
        client.create(path, b"value", makepath=True)
    for reader in readers:
        with zookeeper_client(zookeeper_cluster.address(reader)) as client:
            client.sync(path)  # a follower may lag until it syncs with the leader
            data, _ = client.get(path)
        assert data == b"value"
