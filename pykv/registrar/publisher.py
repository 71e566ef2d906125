"""The publisher: makes the store hold the desired entries, through :mod:`pykv.discovery`'s
layout, as TTL keys (and Consul catalog services with ``--consul-catalog``).

``written`` is what this process believes the store holds (key -> JSON). :meth:`Publisher.flush`
(a worker, after a container changed) writes a key only when its target differs.
:meth:`Publisher.sync` (the reconciler) lists this node's entries in the store and writes only
the difference, or everything when forced.

Store failures
    When the store fails (unavailable, time-out) the publisher marks itself ``dirty`` and calls
    ``on_store_down``: workers keep updating the desired state without writing, and the
    reconciler retries with back-off, then rewrites every desired entry (TTL keys may have
    expired meanwhile) and deletes every key it wrote that should be gone, listed or not (the
    store may write its expired TTL keys again itself once it is back).

Hostile or careless input
    An entry the store refuses (an invalid key) is skipped: one log line, ``skipped_total
    {what="entry"}``, never taken for a store outage. Malformed values found under the prefix
    are skipped, counted (``what="malformed"``) and logged once each.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .._errors import (
    InvalidKeyError,
    KeyNotFoundError,
    OperationTimeoutError,
    PyKVError,
    UnavailableError,
)
from .._store import Store
from ..discovery import CatalogPublisher, Endpoint, MalformedEntries
from .desired import DesiredTable, catalog_checks, catalog_ttl, entry_ttl
from .observe import Metrics
from .settings import Settings

__all__ = ["STORE_DOWN", "Publisher"]

log = logging.getLogger("pykv.registrar")

#: Errors that mean the store is away (not that it refused one entry).
STORE_DOWN = (UnavailableError, OperationTimeoutError)
#: Errors about one entry, not about the store: that entry is skipped, the rest goes on.
_ENTRY_REFUSED = (InvalidKeyError,)


class Publisher:
    """Writes ``table``'s targets into ``store`` below ``settings.prefix``, for node ``node()``."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        table: DesiredTable,
        metrics: Metrics,
        *,
        node: Callable[[], str],
        on_store_down: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self._table = table
        self._metrics = metrics
        self._node = node
        self._on_store_down = on_store_down
        self.ttl = entry_ttl(settings.ttl)
        self.prefix = settings.prefix.strip("/")
        self._catalog: CatalogPublisher | None = None
        if settings.consul_catalog:
            if not isinstance(store, CatalogPublisher):
                raise PyKVError(
                    f"--consul-catalog needs a store with a service catalog (Consul); "
                    f"{store} has none"
                )
            self._catalog = store
        self._write = threading.RLock()  # serialises store writes and the state below
        self.written: dict[str, str] = {}  # key -> JSON this process wrote
        self.dirty = False  # the store failed: the reconciler must rewrite everything
        self.store_error = ""
        self._refused: dict[str, str] = {}  # key -> the target the store refused
        self._malformed = MalformedEntries(log)

    @property
    def has_catalog(self) -> bool:
        return self._catalog is not None

    # -- single writes ----------------------------------------------------------------------

    def _timed(self, op: str) -> contextlib.AbstractContextManager[None]:
        return _Timer(self._metrics.store_latency.labels(op))

    def _put(self, key: str, value: str) -> None:
        with self._timed("put"):
            self.store.put(key, value, ttl=self.ttl)
        self._metrics.writes.labels("put").inc()
        if self._catalog is not None:
            endpoint = Endpoint.from_json(value)
            self._catalog.catalog_register(
                endpoint,
                ttl=catalog_ttl(self.settings.ttl, self.settings.deregister_critical_after),
                checks=catalog_checks(endpoint),
                deregister_critical_after=self.settings.deregister_critical_after,
            )

    def _delete(self, key: str) -> None:
        with self._timed("delete"):
            self.store.delete(key)
        self._metrics.writes.labels("delete").inc()
        if self._catalog is not None:
            self._catalog.catalog_deregister(key.rsplit("/", 1)[-1])

    def _write_entry(self, key: str, target: str) -> bool:
        """Put ``target`` at ``key``; False when the store refuses that entry (logged once,
        counted), which is not a store failure. Store outages raise."""
        try:
            self._put(key, target)
        except _ENTRY_REFUSED as exc:
            self.written.pop(key, None)
            if self._refused.get(key) != target:
                self._refused[key] = target
                self._metrics.skipped.labels("entry").inc()
                log.warning("the store refused the entry %s: %s", key[:200], exc)
            return False
        self._refused.pop(key, None)
        self.written[key] = target
        return True

    def mark_dirty(self, exc: BaseException) -> None:
        """The store failed: stop writing until :meth:`sync` succeeds."""
        self._metrics.errors.labels("store").inc()
        if not self.dirty:
            log.warning("store unavailable (%s); will retry and catch up", exc)
        self.dirty = True
        self.store_error = str(exc)
        self._on_store_down()

    # -- after a container changed ----------------------------------------------------------

    def flush(self, keys: Iterable[str]) -> None:
        """Write the targets of ``keys`` that differ from what was written."""
        with self._write:
            if self.dirty:
                return  # the reconciler rewrites everything once the store is back
            for key in sorted(keys):
                target = self._table.target(key)
                if target == self.written.get(key):
                    continue
                try:
                    if target is None:
                        self._delete(key)
                        self.written.pop(key, None)
                    else:
                        self._write_entry(key, target)
                except STORE_DOWN as exc:
                    self.mark_dirty(exc)
                    return
                except PyKVError as exc:
                    self._metrics.errors.labels("store").inc()
                    log.error("store write of %s failed: %s", key[:300], exc)
            self._metrics.published.set(len(self.written))

    # -- reconciliation ---------------------------------------------------------------------

    def node_entries(self) -> dict[str, str]:
        """This node's entries in the store now (key -> JSON)."""
        try:
            with self._timed("list"):
                pairs = self.store.list(self.prefix)
        except KeyNotFoundError:
            return {}
        node = self._node()
        entries = {}
        for pair in pairs:
            try:
                endpoint = Endpoint.from_json(pair.value)
            except ValueError as exc:
                if self._malformed.note(pair, exc):
                    self._metrics.skipped.labels("malformed").inc()
                continue
            if endpoint.node == node:
                key = (
                    f"{self.prefix}/{pair.key[len(self.prefix) + 1 :]}"
                    if self.prefix
                    else (pair.key)
                )
                entries[key] = pair.value.decode("utf-8", "replace")
        return entries

    def sync(self, force: bool, adopt: Callable[[dict[str, str]], None] | None = None) -> None:
        """Make this node's entries in the store exactly the targets. ``force`` rewrites every
        target (and first hands the entries found to ``adopt``). Raises PyKVError."""
        with self._write:
            present = self.node_entries()
            if force and adopt is not None:
                adopt(present)
            targets = self._table.targets()
            writes = self._write_targets(targets, present, force)
            for key in list(self._refused):
                if targets.get(key) is None:
                    del self._refused[key]
            deletes = self._delete_stale(targets, present)
            self.dirty = False
            self.store_error = ""
            self._metrics.published.set(len(self.written))
            if writes or deletes:
                log.info("store reconciled: %d written, %d removed", writes, deletes)

    def _write_targets(self, targets: dict[str, str], present: dict[str, str], force: bool) -> int:
        writes = 0
        for key, value in sorted(targets.items()):
            if self._refused.get(key) == value:
                continue  # refused before; the store's rules did not change
            if force or present.get(key) != value or self.written.get(key) != value:
                if not self._write_entry(key, value):
                    continue
                writes += 1
            self.written[key] = value
        return writes

    def _delete_stale(self, targets: dict[str, str], present: dict[str, str]) -> int:
        deletes = 0
        for key in sorted(set(present) | set(self.written)):
            if key in targets:
                continue
            if key in self.written or self.settings.cleanup:
                # A key this process wrote is deleted even when the listing missed it: a
                # TTL key that expired during a store outage may be written again by the
                # store (a new lease or session) right after the listing, and only the
                # delete tells the store it is no longer wanted.
                if key in present or key in self.written:
                    self._delete(key)
                    deletes += 1
                self.written.pop(key, None)
        return deletes

    def withdraw_all(self) -> int:
        """Delete every entry of this node (and its catalog services); how many there were."""
        with self._write:
            keys = set(self.written)
            with contextlib.suppress(PyKVError):
                keys |= set(self.node_entries())
            for key in sorted(keys):
                try:
                    self._delete(key)
                except PyKVError as exc:
                    log.error("could not withdraw %s: %s", key, exc)
            self.written.clear()
            self._metrics.published.set(0)
        return len(keys)

    def pass_catalog_checks(self) -> None:
        """Pass the catalog TTL checks of the services written."""
        if self._catalog is None:
            return
        for key in list(self.written):
            try:
                self._catalog.catalog_pass_ttl(key.rsplit("/", 1)[-1])
            except PyKVError as exc:
                self._metrics.errors.labels("store").inc()
                log.warning("catalog TTL pass of %s failed: %s", key, exc)


class _Timer:
    def __init__(self, histogram: Any) -> None:
        self._histogram = histogram
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._histogram.observe(time.perf_counter() - self._start)
