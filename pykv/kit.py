"""The driver kit: the machinery every backend shares, for the drivers in ``backends/``.

A driver supplies its backend's primitives (reads, writes, a change source); the kit holds
what is the same everywhere. Today that is the watch feeds (see :mod:`pykv._feeds`): a driver
turns what its backend reports into :class:`Change` records or re-reads and hands them to a
:class:`KeyFeed` (one ``watch``) or :class:`TreeFeed` (one ``watch_tree``), or to a
:class:`WatchHub` when all its changes arrive as one ordered stream. The feeds drop repeats and
stale positions, keep tree snapshots sorted change by change, attach each snapshot's delta
(what ``watch_tree(events=True)`` yields) and deliver re-reads only when they differ.

:class:`TTLKeys` (see :mod:`pykv._ttlkeys`) tracks which TTL key lives on which session or
lease, and writes them again after one was lost, through two driver hooks (create if absent,
delete if unchanged), undoing a re-creation that lost a race with the store's own delete.
"""

from __future__ import annotations

from ._feeds import Change, KeyFeed, Snapshot, SortedTree, TreeFeed, WatchHub, below, diff
from ._ttlkeys import Created, TTLKeys

__all__ = [
    "Change",
    "Created",
    "KeyFeed",
    "Snapshot",
    "SortedTree",
    "TTLKeys",
    "TreeFeed",
    "WatchHub",
    "below",
    "diff",
]
