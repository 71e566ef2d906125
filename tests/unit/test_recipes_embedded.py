"""The recipe and asyncio conformance suites on the embedded stores, and the hash ring."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from pykv.recipes import HashRing
from pykv.testing import AsyncTests, RecipeTests


class TestMemoryRecipes(RecipeTests):
    @pytest.fixture
    def store_url(self) -> str:
        return f"memory://recipes-{uuid.uuid4().hex}"


class TestSQLiteRecipes(RecipeTests):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/recipes.db"


class TestMemoryAsync(AsyncTests):
    @pytest.fixture
    def store_url(self) -> str:
        return f"memory://aio-{uuid.uuid4().hex}"


class TestSQLiteAsync(AsyncTests):
    @pytest.fixture
    def store_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/aio.db"


def moved(before: list[str], after: list[str], items: int = 20_000) -> float:
    """The fraction of items whose owner changes from one member set to the other."""
    r1, r2 = HashRing(before), HashRing(after)
    keys = [f"item-{i}" for i in range(items)]
    return sum(r1.owner(k) != r2.owner(k) for k in keys) / items


@pytest.mark.parametrize("n", [3, 5, 10])
def test_a_join_or_leave_moves_about_one_nth(n: int) -> None:
    members = [f"node-{i}" for i in range(n)]
    joined = moved(members, [*members, "new"])
    left = moved(members, members[1:])
    # Ideal: 1/(n+1) of the items move on a join, 1/n on a leave; vnodes keep it near that.
    assert joined <= 1.35 / (n + 1), joined
    assert left <= 1.35 / n, left
    assert joined > 0
    assert left > 0


def test_ring_is_balanced_and_deterministic() -> None:
    ring = HashRing(["a", "b", "c", "d"], vnodes=128)
    counts: dict[str, int] = {}
    for i in range(20_000):
        owner = ring.owner(f"k{i}")
        counts[owner] = counts.get(owner, 0) + 1
    assert set(counts) == {"a", "b", "c", "d"}
    assert max(counts.values()) < 2 * min(counts.values())
    assert HashRing(["d", "c", "b", "a"], vnodes=128).owner("k1") == ring.owner("k1")


def test_ring_errors() -> None:
    with pytest.raises(LookupError):
        HashRing([]).owner("x")
    with pytest.raises(ValueError, match="vnodes"):
        HashRing(["a"], vnodes=0)
