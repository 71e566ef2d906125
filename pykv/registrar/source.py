"""The Docker source: the engine's container events and ``inspect``, kept connected.

:meth:`DockerSource.run` is the ``engine`` thread's loop (run supervised by the registrar). It
connects (tenacity back-off while the engine is away), subscribes to container events *first*,
then reports the connection (the registrar then reconciles every container, so that no start
between the two is missed), then reads the stream and reports each relevant event's container.
When the stream breaks it reconnects and resumes with ``since`` = the last event's time.
:meth:`DockerSource.ping` closes a silent dead stream (a half-open connection never ends it) so
that the loop reconnects.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import requests
import tenacity

from .desired import model_settings
from .model import ModelSettings
from .observe import Metrics
from .settings import Settings
from .threads import exponential_backoff

__all__ = ["ACTIONS", "ENGINE_ERRORS", "DockerSource", "default_host_ip", "parse_event"]

log = logging.getLogger("pykv.registrar")

#: Container events that can change what is published; others (exec_*, attach, ...) are skipped.
ACTIONS = frozenset(
    {"start", "die", "stop", "kill", "pause", "unpause", "health_status", "rename", "destroy"}
)
#: What a lost or broken engine connection raises.
ENGINE_ERRORS: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    OSError,
    ValueError,  # a truncated JSON chunk when the connection dies mid-event
)


def default_host_ip() -> str:
    """This host's primary address: the source address of the default route.

    A UDP socket's connect() only picks a route; nothing is sent.
    """
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                return str(s.getsockname()[0])
        except OSError:
            continue
    return "127.0.0.1"


def parse_event(event: dict[str, Any]) -> tuple[str | None, str, str]:
    """(``since`` token of the event or None, its action without detail, container id)."""
    time_nano = event.get("timeNano")
    since = None
    if isinstance(time_nano, int):
        since = f"{time_nano // 1_000_000_000}.{time_nano % 1_000_000_000:09d}"
    action = str(event.get("Action") or event.get("status") or "")
    cid = str((event.get("Actor") or {}).get("ID") or event.get("id") or "")
    return since, action, cid


class DockerSource:
    """One Docker engine, followed: reports connections and container events to callbacks.

    ``factory`` returns a new client (one per connection); by default one built from
    ``settings.docker_host`` / the environment.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        stop: threading.Event,
        *,
        on_connect: Callable[[], None],
        on_event: Callable[[str], None],
        factory: Callable[[], Any] | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._stop = stop
        self._on_connect = on_connect
        self._on_event = on_event
        self._factory = factory or self._default_factory
        self.connected = threading.Event()
        #: The endpoint-shaping settings, known once the engine answered the first time.
        self.model: ModelSettings | None = None
        self.client: Any = None
        self._stream: Any = None
        self._since: str | None = None

    def _default_factory(self) -> Any:
        if self._settings.docker_host:
            return docker.DockerClient(base_url=self._settings.docker_host, timeout=10)
        return docker.from_env(timeout=10)

    @property
    def node(self) -> str:
        return self.model.node if self.model else self._settings.node

    # -- queries (from any thread) ----------------------------------------------------------

    def inspect(self, cid: str) -> dict[str, Any] | None:
        """The container's inspect document, None when it no longer exists. Raises
        :data:`ENGINE_ERRORS` (or AttributeError before the first connection)."""
        try:
            return self.client.api.inspect_container(cid)  # type: ignore[no-any-return]
        except docker.errors.NotFound:
            return None

    def running(self) -> list[str]:
        """Ids of the running containers. Raises :data:`ENGINE_ERRORS`."""
        return [c["Id"] for c in self.client.api.containers(all=False)]

    def ping(self) -> None:
        """Check the connection; a failing one is closed, so that :meth:`run` reconnects."""
        client = self.client
        if client is None or not self.connected.is_set():
            return
        try:
            client.ping()
        except ENGINE_ERRORS as exc:
            # A half-open connection never ends the stream by itself: close it to reconnect.
            log.warning("Docker ping failed (%s); reconnecting", exc)
            self.close_stream()

    # -- the engine thread ------------------------------------------------------------------

    def run(self) -> None:
        """Connect, read events, reconnect; return when stopping."""
        while not self._stop.is_set():
            retrying = tenacity.Retrying(
                wait=exponential_backoff(0.2, self._settings.max_backoff),
                retry=tenacity.retry_if_exception_type(ENGINE_ERRORS),
                stop=tenacity.stop_when_event_set(self._stop),
                sleep=self._sleep,
                before_sleep=self._log_retry,
                reraise=True,
            )
            try:
                stream = retrying(self._connect)
            except ENGINE_ERRORS:
                break  # only when stopping
            self._read(stream)
            if not self._stop.is_set():
                log.warning("Docker event stream ended; reconnecting")
                self._stop.wait(0.1)

    def _read(self, stream: Iterator[dict[str, Any]]) -> None:
        try:
            for event in stream:
                if self._stop.is_set():
                    break
                self._route(event)
        except ENGINE_ERRORS as exc:
            if not self._stop.is_set():
                self._metrics.errors.labels("docker").inc()
                log.warning("Docker event stream broke: %s", exc)
        finally:
            self.connected.clear()
            self.close_stream()

    def _connect(self) -> Iterator[dict[str, Any]]:
        client = self._factory()
        try:
            client.ping()
            if self.model is None:
                name = str(client.info().get("Name") or socket.gethostname())
                self.model = model_settings(
                    self._settings, name, "" if self._settings.ip else default_host_ip()
                )
            # Subscribe before listing containers, so that no start between the two is missed.
            stream = client.api.events(
                since=self._since, filters={"type": ["container"]}, decode=True
            )
        except BaseException:
            with contextlib.suppress(Exception):
                client.close()
            raise
        old, self.client, self._stream = self.client, client, stream
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()
        if self._stop.is_set():  # close() may have closed the previous stream meanwhile
            self.close_stream()
        self.connected.set()
        self._on_connect()
        log.info("connected to Docker as node %s; events since %s", self.node, self._since)
        return stream  # type: ignore[no-any-return]

    def _route(self, event: dict[str, Any]) -> None:
        since, action, cid = parse_event(event)
        if since is not None:
            self._since = since
        base = action.split(":", 1)[0]
        if base not in ACTIONS:
            return
        self._metrics.events.labels(base).inc()
        if cid:
            log.debug("event %s %s", action, cid[:12])
            self._on_event(cid)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        self._metrics.errors.labels("docker").inc()
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        log.warning("Docker unreachable (%s); retrying in %.1f s", exc, wait)

    # -- closing ----------------------------------------------------------------------------

    def close_stream(self) -> None:
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def close(self) -> None:
        """Close the client (after the engine thread stopped)."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
