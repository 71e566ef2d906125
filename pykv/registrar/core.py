"""The registrar: Docker events in, store writes out, never losing track.

:class:`Registrar` wires the parts and runs their threads:

* :class:`.source.DockerSource` (thread ``engine``) follows the engine: on each (re)connection
  it asks for a reconciliation, and it hands every relevant event's container to the workers.
* ``worker-N`` (:class:`.threads.WorkerPool`): a container always goes to the same worker, so
  its events are handled in order. Handling is level-triggered: inspect the container, decide
  its entries (:func:`.desired.decide`, :mod:`.model`), put them in the
  :class:`.desired.DesiredTable`, and have the :class:`.publisher.Publisher` write the
  difference.
* ``reconciler`` (:class:`.reconciler.Reconciler`): on (re)connect, on ``--resync``, after a
  thread restart and after the store comes back: queues a sync of every running or known
  container through the workers (so a sync never overtakes an event), waits for them, then has
  the publisher diff this node's entries in the store against the desired ones. One TTL after
  the store came back it diffs the store once more (an entry written under a dying session or
  lease may vanish).
* ``ticker`` (the same class): pings Docker (a silent dead stream is closed and reconnected),
  requests the periodic resync, and passes Consul catalog TTL checks.

Every thread runs supervised (:class:`.threads.Supervisor`): an unexpected exception is logged
with its traceback, counted, shown by ``/healthz`` (503 while the thread is down), and the
thread is restarted after a back-off, followed by a full reconciliation.

A container whose labels make no valid entry (see the bounds in :mod:`.model`) is skipped:
one log line naming it and the reason, ``skipped_total{what="container"}``, and nothing else
changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .._store import Store
from ..discovery import Endpoint
from .desired import Decision, DesiredTable, catalog_checks, decide
from .model import container_state
from .observe import Metrics
from .publisher import Publisher
from .reconciler import Reconciler
from .settings import Settings
from .source import ENGINE_ERRORS, DockerSource, default_host_ip
from .threads import Supervisor, WorkerPool, exponential_backoff

__all__ = ["Registrar", "default_host_ip", "exponential_backoff"]

log = logging.getLogger("pykv.registrar")

#: The name tests and older code import; the function lives in :mod:`.desired`.
_checks = catalog_checks


class Registrar:
    """Publishes the containers of one Docker engine into ``store``. See the module docs.

    ``docker_factory`` returns a new client (one per connection); by default one built from
    ``settings.docker_host`` / the environment. The store is not closed by the registrar.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        metrics: Metrics | None = None,
        docker_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics or Metrics()
        self._stop = threading.Event()
        self._table = DesiredTable()
        self._source = DockerSource(
            settings, self.metrics, self._stop,
            on_connect=self.reconcile, on_event=self._on_event, factory=docker_factory,
        )  # fmt: skip
        self._publisher = Publisher(
            settings, store, self._table, self.metrics,
            node=lambda: self.node, on_store_down=lambda: self._reconciler.request(False),
        )  # fmt: skip
        self._workers = WorkerPool(settings.workers, self._sync_container, self._stop)
        self._reconciler = Reconciler(
            settings, self.metrics, self._stop,
            source=self._source, workers=self._workers, table=self._table,
            publisher=self._publisher,
        )  # fmt: skip
        self._supervisor = Supervisor(
            self._stop, self.metrics, settings.max_backoff, on_restart=self.reconcile
        )

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the threads and return at once."""
        loops: list[tuple[str, Callable[[], None]]] = [
            ("engine", self._source.run),
            ("reconciler", self._reconciler.run),
            ("ticker", self._reconciler.tick),
            *self._workers.loops(),
        ]
        for name, target in loops:
            self._supervisor.start(name, target)

    def _supervised(self, name: str, target: Callable[[], None]) -> None:
        """Run ``target`` supervised in this thread (see :class:`.threads.Supervisor`)."""
        self._supervisor.run(name, target)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once connected and the first reconciliation is done."""
        return self._reconciler.ready.wait(timeout)

    def run(self) -> None:
        """Start and block until :meth:`stop` (e.g. from a SIGTERM handler)."""
        self.start()
        self._stop.wait()
        self.shutdown()

    def stop(self) -> None:
        """Ask every thread to stop (safe from a signal handler)."""
        self._stop.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop, join the threads, and withdraw this node's entries if configured to."""
        self._stop.set()
        self._source.close_stream()
        self._workers.close()
        self._supervisor.join(timeout)
        if self.settings.deregister_on_exit:
            self.deregister_all()
        self._source.close()

    def deregister_all(self) -> None:
        """Withdraw every entry of this node from the store (and the catalog)."""
        count = self._publisher.withdraw_all()
        log.info("withdrew %d entries of node %s", count, self.node)

    # -- status -----------------------------------------------------------------------------

    @property
    def node(self) -> str:
        return self._source.node

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ok, detail) for ``/healthz``: ok when connected to Docker, the store writable, the
        first reconciliation done and no thread down. Skipped containers do not count."""
        connected = self._source.connected.is_set()
        down = self._supervisor.down()
        dirty = self._publisher.dirty
        detail: dict[str, Any] = {
            "docker": "connected" if connected else "disconnected",
            "store": "error: " + self._publisher.store_error if dirty else "ok",
            "node": self.node,
            "published": len(self._publisher.written),
            "skipped_containers": self._table.skipped(),
            "thread_restarts": self._supervisor.restarts,
        }
        if down:
            detail["threads_down"] = down
        ok = connected and not dirty and self._reconciler.ready.is_set() and not down
        return ok, detail

    def published(self) -> dict[str, Endpoint]:
        """What this registrar wants in the store now (key -> endpoint)."""
        return self._table.published()

    # -- per-container handling (worker threads) --------------------------------------------

    def _on_event(self, cid: str) -> None:
        self._workers.submit(cid)

    def _sync_container(self, cid: str) -> None:
        model = self._source.model
        if self._source.client is None or model is None:
            return
        try:
            info = self._source.inspect(cid)
        except ENGINE_ERRORS as exc:
            # A full reconciliation covers this container: now if the engine still answers,
            # else after the reconnection.
            self.metrics.errors.labels("docker").inc()
            log.warning("cannot inspect %s: %s", cid[:12], exc)
            self.reconcile()
            return
        decision = decide(
            info, model, prefix=self._publisher.prefix, deregister=self.settings.deregister
        )
        self._report(cid, info, decision)
        change = self._table.apply(cid, decision)
        if change is None:
            return
        previous, new = change
        if info is not None and new:
            name = info.get("Name", "").lstrip("/")
            log.info("container %s (%s): %d endpoint(s)", name, cid[:12], len(new))
        elif previous:
            why = "destroyed" if info is None else container_state(info)
            log.info("container %s: withdrawn (%s)", cid[:12], why)
        self._publisher.flush(set(previous) | set(new))

    def _report(self, cid: str, info: dict[str, Any] | None, decision: Decision) -> None:
        """Log (and count) a refusal or a cut once, until what there is to say changes."""
        if not self._table.note_complaint(cid, decision.complaint) or not decision.complaint:
            return
        assert info is not None  # a destroyed container has nothing to complain about
        name = str(info.get("Name") or "").lstrip("/")[:100]
        if decision.refused:
            self.metrics.skipped.labels("container").inc()
        else:
            self.metrics.cut.inc()
        log.warning(
            "container %s (%s) %s", name, cid[:12], decision.complaint,
            extra={"container": name, "container_id": cid},
        )  # fmt: skip

    def reconcile(self) -> None:
        """Ask for a full reconciliation now (what ``--resync`` does periodically)."""
        self._reconciler.request(docker_too=True)
