"""The reconciler: full passes over Docker and the store, and the periodic chores.

``reconciler`` thread (:meth:`Reconciler.run`): on (re)connect, on ``--resync``, after a
thread restart and after the store comes back, it queues a sync of every running or known
container through the workers (so that a sync never overtakes an event), waits for them, then
has the publisher diff this node's entries in the store against the desired ones (the first
pass, and the first after a store failure, rewrite everything). One TTL after the store came
back it diffs the store once more: an entry written under a dying session or lease may vanish.
At most one Docker pass a second, however many ask; a failing store is retried with back-off.

``ticker`` thread (:meth:`Reconciler.tick`): pings Docker (a silent dead stream is closed and
reconnected), requests the periodic resync and the check after a recovery, and passes Consul
catalog TTL checks.
"""

from __future__ import annotations

import logging
import threading
import time

from .._errors import PyKVError
from .desired import DesiredTable, by_container, keeps_entries
from .observe import Metrics
from .publisher import Publisher
from .settings import Settings
from .source import ENGINE_ERRORS, DockerSource
from .threads import WorkerPool, backoff_seconds, exponential_backoff

__all__ = ["Reconciler"]

log = logging.getLogger("pykv.registrar")


class Reconciler:
    """Brings the desired table and the store in line with Docker, when asked to."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        stop: threading.Event,
        *,
        source: DockerSource,
        workers: WorkerPool,
        table: DesiredTable,
        publisher: Publisher,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._stop = stop
        self._source = source
        self._workers = workers
        self._table = table
        self._publisher = publisher
        self.ready = threading.Event()  # the first full reconciliation is done
        self._reconcile_wanted = threading.Event()
        self._docker_reconcile = False
        self._verify_at = 0.0  # when to check the store once more after it came back

    def request(self, docker_too: bool) -> None:
        """Ask for a pass over the store, and over Docker first when ``docker_too``."""
        if docker_too:
            self._docker_reconcile = True
        self._reconcile_wanted.set()

    def run(self) -> None:
        """The reconciler thread's loop; returns when stopping."""
        first = True
        failures = 0
        last_docker = 0.0
        backoff = exponential_backoff(0.2, self.settings.max_backoff)
        while not self._stop.is_set():
            if not self._reconcile_wanted.wait(0.5):
                continue
            self._reconcile_wanted.clear()
            docker_too, self._docker_reconcile = self._docker_reconcile, False
            if docker_too:
                # At most one Docker pass a second, however many ask (inspect errors do).
                self._stop.wait(max(0.0, last_docker + 1.0 - time.monotonic()))
                last_docker = time.monotonic()
            try:
                if self._reconcile_once(docker_too, force=first):
                    first = False
                    failures = 0
            except PyKVError as exc:
                self._publisher.mark_dirty(exc)
                failures += 1
                self._stop.wait(backoff_seconds(backoff, failures))
                self.request(docker_too=docker_too)

    def _reconcile_once(self, docker_too: bool, force: bool) -> bool:
        """One pass; False when Docker was away (the reconnection asks again). Raises
        PyKVError when the store fails."""
        if docker_too and not self._docker_sync():
            self._docker_reconcile = True  # engine gone: the reconnect asks again
            return False
        recovering = self._publisher.dirty
        self._publisher.sync(force=force or recovering, adopt=self._adopt_failed)
        ttl = self._publisher.ttl
        if recovering and ttl is not None:
            # A TTL key written just as the store came back may still vanish with the
            # session or lease it was written under: check once that all stayed.
            self._verify_at = time.monotonic() + ttl + 1.0
        self.metrics.reconciles.inc()
        if docker_too:
            self.ready.set()
        return True

    def _docker_sync(self) -> bool:
        """Sync every running or known container through the workers; False if Docker failed."""
        if self._source.client is None:
            return False
        try:
            running = self._source.running()
        except ENGINE_ERRORS as exc:
            self.metrics.errors.labels("docker").inc()
            log.warning("cannot list containers: %s", exc)
            return False
        for cid in sorted(set(running) | self._table.containers()):
            self._workers.submit(cid)
        return self._workers.drain(timeout=300)

    def tick(self) -> None:
        """The ticker thread's loop; returns when stopping."""
        last_resync = last_ping = last_pass = time.monotonic()
        ttl = self._publisher.ttl
        pass_every = self.settings.ttl_refresh or (ttl or 30.0) / 3
        while not self._stop.wait(0.5):
            now = time.monotonic()
            if self.settings.resync > 0 and now - last_resync >= self.settings.resync:
                last_resync = now
                self.request(docker_too=True)
            if self._verify_at and now >= self._verify_at:
                self._verify_at = 0.0
                self.request(docker_too=False)
            if now - last_ping >= self.settings.ping_interval:
                last_ping = now
                self._source.ping()
            if self._publisher.has_catalog and now - last_pass >= pass_every:
                last_pass = now
                self._publisher.pass_catalog_checks()

    def _adopt_failed(self, entries: dict[str, str]) -> None:
        """--deregister on-success after a restart: keep the entries of failed containers."""
        model = self._source.model
        if self.settings.deregister != "on-success" or self._source.client is None:
            return
        for cid, endpoints in by_container(entries).items():
            if cid in self._table:
                continue
            info = self._source.inspect(cid)
            if info is None or model is None:
                continue
            if keeps_entries(info, model, self.settings.deregister):
                self._table.adopt(cid, endpoints)
