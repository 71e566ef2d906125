"""Recursive reads of a bigger ZooKeeper tree: ``list`` and ``delete_tree`` read level by level
in batched (multiRead) and pipelined requests; their result must equal reading the tree node by
node with kazoo, on both paths (batched, and node by node for servers without multiRead).

The server comes from the harness fixture ``zookeeper_url`` (see test_zookeeper.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient

import pykv

# Thousands of calls with kazoo (to build the trees and read them node by node): more than the
# default two minutes on a busy machine.
pytestmark = [pytest.mark.integration, pytest.mark.zookeeper, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def raw(zk_url: str) -> Iterator[KazooClient]:
    client = KazooClient(hosts=pykv.StoreURL.parse(zk_url).netloc)
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


@pytest.fixture(scope="module")
def tree(raw: KazooClient) -> Iterator[str]:
    """2,000 keys (and their directories, which hold values too) in nested directories of
    uneven depth and width below a scratch prefix."""
    prefix = f"pykv-scale-{uuid.uuid4().hex[:8]}"
    paths = []
    for i in range(2000):
        parents = [f"s{i % 7}", f"g{i % 13}", f"h{i % 5}"][: 1 + i % 3]
        paths.append("/".join([*parents, f"k{i}"]))
    create_levels(raw, f"/{prefix}/t", paths, [f"v{i}".encode() for i in range(len(paths))])
    yield prefix
    if raw.exists(f"/{prefix}"):
        raw.delete(f"/{prefix}", recursive=True)


def create_levels(raw: KazooClient, root: str, paths: list[str], values: list[bytes]) -> None:
    """Create ``root``, the directories of ``paths`` (empty values) and then ``paths``, a
    level at a time with every create of a level in flight at once."""
    raw.ensure_path(root)
    parents: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        parents.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    for depth in sorted({p.count("/") for p in parents}):
        level = sorted(p for p in parents if p.count("/") == depth)
        for op in [raw.create_async(f"{root}/{p}", b"") for p in level]:
            op.get(timeout=120)
    for op in [raw.create_async(f"{root}/{p}", v) for p, v in zip(paths, values, strict=True)]:
        op.get(timeout=120)


def node_by_node(raw: KazooClient, root: str) -> dict[str, tuple[bytes, int]]:
    """Every node below ``root`` read with one kazoo call at a time: relative path -> (value,
    mzxid)."""
    out: dict[str, tuple[bytes, int]] = {}
    stack = [root]
    while stack:
        path = stack.pop()
        for name in raw.get_children(path):
            child = f"{path}/{name}"
            data, stat = raw.get(child)
            out[child[len(root) + 1 :]] = (data, stat.mzxid)
            if stat.numChildren:
                stack.append(child)
    return out


@pytest.mark.parametrize("batched", [True, False], ids=["multiread", "node-by-node"])
def test_list_of_a_nested_tree_equals_reading_it_node_by_node(
    zk_url: str, raw: KazooClient, tree: str, batched: bool
) -> None:
    expected = node_by_node(raw, f"/{tree}/t")
    assert len(expected) > 2000  # the keys and their directories
    # correctness, not speed: time enough for node-by-node reads on a busy machine
    with pykv.open_store(zk_url, prefix=tree, timeout=120) as store:
        if not batched:
            store._multi_read = False  # type: ignore[attr-defined]  # as on ZooKeeper 3.5
        pairs = store.list("t")
        if batched:
            assert store._multi_read is True  # type: ignore[attr-defined]  # 3.6+ servers
    assert [p.key for p in pairs] == sorted(f"t/{k}" for k in expected)
    assert {p.key: (p.value, p.revision) for p in pairs} == {
        f"t/{k}": v for k, v in expected.items()
    }
    # a subtree, and a prefix with nothing below it
    with pykv.open_store(zk_url, prefix=tree, timeout=120) as store:
        sub = store.list("t/s3")
        assert {p.key for p in sub} == {f"t/{k}" for k in expected if k.startswith("s3/")}
        store.put("t/lonely", b"x")
        assert store.list("t/lonely") == []


def test_delete_tree_removes_a_nested_tree(zk_url: str, raw: KazooClient) -> None:
    prefix = f"pykv-scale-{uuid.uuid4().hex[:8]}"
    paths = [f"d/s{i % 5}/g{i % 11}/k{i}" for i in range(1500)]
    create_levels(raw, f"/{prefix}", paths, [b"v"] * len(paths))
    try:
        with pykv.open_store(zk_url, prefix=prefix, timeout=120) as store:
            store.put("kept", b"1")
            assert len(store.list("d")) > 1500
            store.delete_tree("d")
            assert raw.exists(f"/{prefix}/d") is None
            with pytest.raises(pykv.KeyNotFoundError):
                store.list("d")
            assert [p.key for p in store.list()] == ["kept"]
    finally:
        if raw.exists(f"/{prefix}"):
            raw.delete(f"/{prefix}", recursive=True)
