"""A check shared by the drivers that serve every watch of a store from one stream or poll."""

from __future__ import annotations

import threading

from pykv import KVPair, Store, Watch
from pykv.testing import drain_until


def check_many_watches_share_threads(
    store: Store, count: int = 1000, keys: int = 50
) -> list[Watch[KVPair | None]]:
    """``count`` watches over ``keys`` keys cost fewer than 20 threads, and each still gets its
    own key's events. Returns the watches, every one closed."""
    before = threading.active_count()
    watches = [store.watch(f"many/{i % keys}") for i in range(count)]
    try:
        for watch in watches:
            assert watch.get(timeout=10) is None
        grown = threading.active_count() - before
        assert grown < 20, f"{grown} threads for {count:,} watches"
        for i in range(keys):
            store.put(f"many/{i}", str(i))
        for n, watch in enumerate(watches):
            event = drain_until(watch, lambda e: e is not None, 10)
            assert event is not None
            assert event.value == str(n % keys).encode()
    finally:
        for watch in watches:
            watch.close()
    return watches
