"""HTTP calls to Consul agents: py-consul clients with per-call timeouts, failover between the
agents of the URL, and the one place where requests/py-consul exceptions become pykv errors."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import consul
import consul.std
import requests
import requests.adapters
from consul.exceptions import (
    ACLDisabled,
    ACLPermissionDenied,
    BadRequest,
    ClientError,
    ConsulException,
    NotFound,
)

from pykv import (
    Host,
    OperationTimeoutError,
    PermissionDeniedError,
    PyKVError,
    UnavailableError,
)

__all__ = ["Response", "SessionRejected", "Transport", "TxnFailed", "b64"]

log = logging.getLogger("pykv.consul")

T = TypeVar("T")

#: An idempotent call gives one agent, when others are left to try, this share of its time
#: (at least ATTEMPT_MIN s): Consul answers in milliseconds unless the agent waits for a leader.
ATTEMPT_SHARE = 1 / 3
ATTEMPT_MIN = 1.0
#: How late (beyond its wait and Consul's jitter of wait/16) a blocking query may answer before
#: the agent is taken for cut off: an ex-leader cut off from its peers holds the query.
BLOCKING_SLACK = 1.0


class Response(Protocol):
    """py-consul's ``consul.base.Response`` named tuple."""

    @property
    def code(self) -> int: ...
    @property
    def headers(self) -> Any: ...
    @property
    def body(self) -> str: ...


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


class TxnFailed(PyKVError):
    """A /v1/txn was rolled back (HTTP 409); ``errors`` are Consul's ``Errors`` entries."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(e.get("What", e)) for e in errors))
        self.errors = errors


def raw(response: Response) -> Response:
    """A py-consul callback that hands the response back unchecked."""
    return response


def check(response: Response) -> Response:
    """Raise py-consul's exception for an error status (as its own callbacks do)."""
    code = response.code
    if code == 400:
        raise BadRequest(f"{code} {response.body}")
    if code == 401:
        raise ACLDisabled(response.body)
    if code == 403:
        raise ACLPermissionDenied(response.body)
    if code == 404:
        raise NotFound(response.body)
    if 400 <= code < 500:
        raise ClientError(f"{code} {response.body}")
    if code >= 500:
        raise ConsulException(f"{code} {response.body}")
    return response


class _HTTPClient(consul.std.HTTPClient):  # type: ignore[misc]
    """py-consul's requests transport, with the timeout of each call set by :class:`Transport`
    (per thread) instead of one fixed value, no retries, and no proxies from the environment
    (the agent is a direct peer, usually on loopback)."""

    def __init__(self, host: str, port: int, scheme: str, verify: bool | str, cert: Any) -> None:
        super().__init__(host, port, scheme, verify, cert, connections_timeout=None)
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=32, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.trust_env = False
        self.local = threading.local()

    def timeout(self, params: Any) -> tuple[float, float]:
        timeout: tuple[float, float] = self.local.timeout
        return timeout

    def close(self) -> None:
        self.session.close()


class _Client(consul.std.Consul):  # type: ignore[misc]
    def http_connect(
        self, host: str, port: int, scheme: str, verify: bool | str = True, cert: Any = None
    ) -> _HTTPClient:
        return _HTTPClient(host, port, scheme, verify, cert)


class Transport:
    """The Consul agents of one store (or of one watch thread), tried in turn.

    A connection error moves on to the next agent at once, within the call's timeout, when the
    request cannot have reached the agent (or the call is idempotent). An idempotent call also
    moves on after a 5xx or after its share of the time on one agent (a server cut off from its
    peers holds requests for its RPC hold time, ~7 s, and a server still forwarding to a lost
    leader longer), as does any call answered "No cluster leader" (never applied). A time-out,
    a 5xx or a lost connection on the last agent tried raises a typed error, and the next
    call starts at the next agent.
    """

    def __init__(
        self,
        name: str,
        hosts: Sequence[Host],
        *,
        scheme: str,
        token: str | None,
        consistent: bool,
        verify: bool | str,
        cert: Any,
        timeout: float,
        start: int = 0,
    ) -> None:
        self.name = name
        self.hosts = list(hosts)
        self.timeout = timeout
        self._clients: list[_Client] = []
        for host in self.hosts:
            assert host.port is not None
            client = _Client(
                host=host.host,
                port=host.port,
                scheme=scheme,
                consistency="consistent" if consistent else "default",
                verify=verify,
                cert=cert,
            )
            # py-consul lets CONSUL_HTTP_TOKEN override the token it is given: use ours only.
            client.token = token
            self._clients.append(client)
        self.current = start % len(self._clients)
        self._rotate_lock = threading.Lock()

    def clone(self, name: str) -> Transport:
        """A transport of its own (own connections) for a thread doing blocking queries."""
        first = self._clients[0]
        return Transport(
            name,
            self.hosts,
            scheme=first.scheme,
            token=first.token,
            consistent=first.consistency == "consistent",
            verify=first.http.verify,
            cert=first.http.cert,
            timeout=self.timeout,
            start=self.current,
        )

    def close(self) -> None:
        for client in self._clients:
            client.http.close()

    def _rotate(self, index: int) -> None:
        with self._rotate_lock:
            if self.current == index and len(self._clients) > 1:
                self.current = (index + 1) % len(self._clients)
                log.info(
                    "%s: switching from Consul agent %s to %s",
                    self.name,
                    self.hosts[index],
                    self.hosts[self.current],
                )

    def call(
        self,
        what: str,
        fn: Callable[[Any], T],
        *,
        idempotent: bool = True,
        timeout: float | None = None,
        blocking: float = 0.0,
    ) -> T:
        """Run ``fn(client)`` on the current agent, failing over; map every error.

        ``timeout`` bounds the whole call (default: the store's); ``blocking`` is the ``wait``
        of a blocking query, added (with Consul's jitter of wait/16) to the read time-out, which
        then allows at most BLOCKING_SLACK more; a blocking query is not retried here (its
        caller polls again, on the next agent).
        """
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        tried = 0
        while True:
            index = self.current
            client = self._clients[index]
            where = f"Consul agent {self.hosts[index]} ({self.name})"
            remaining = max(0.05, deadline - time.monotonic())
            retry = idempotent and not blocking and tried + 1 < len(self._clients)
            budget = min(remaining, max(ATTEMPT_MIN, limit * ATTEMPT_SHARE)) if retry else remaining
            read = min(budget, BLOCKING_SLACK) + blocking * 17 / 16 if blocking else budget
            client.http.local.timeout = (budget, read)
            try:
                return fn(client)
            except requests.ConnectionError as exc:
                tried += 1
                self._rotate(index)
                not_sent = isinstance(exc, requests.ConnectTimeout) or _refused(exc)
                if (
                    tried < len(self._clients)
                    and (idempotent or not_sent)
                    and deadline - time.monotonic() > 0.05
                ):
                    continue
                if isinstance(exc, requests.exceptions.SSLError):
                    raise UnavailableError(f"{what}: TLS failed with {where}: {exc}") from exc
                if isinstance(exc, requests.ConnectTimeout):
                    raise OperationTimeoutError(
                        f"{what}: no connection to {where} within {limit:g} s"
                    ) from exc
                tail = f" (and {tried - 1} other agents)" if tried > 1 else ""
                raise UnavailableError(f"{what}: cannot reach {where}{tail}: {exc}") from exc
            except requests.Timeout as exc:
                tried += 1
                self._rotate(index)
                if retry and deadline - time.monotonic() > 0.05:
                    log.info("%s: %s did not answer within %.2g s", what, where, budget)
                    continue
                raise OperationTimeoutError(
                    f"{what}: {where} did not answer within {limit:g} s"
                ) from exc
            except requests.RequestException as exc:
                self._rotate(index)
                raise UnavailableError(f"{what} failed on {where}: {exc}") from exc
            except (ACLPermissionDenied, ACLDisabled) as exc:
                raise PermissionDeniedError(
                    f"{what}: {where} denied access ({_text(exc)}); check the token option "
                    "and the token's ACL policy"
                ) from exc
            except (BadRequest, ClientError, NotFound) as exc:
                raise UnavailableError(f"{what}: {where} rejected the call: {_text(exc)}") from exc
            except ConsulException as exc:
                tried += 1
                self._rotate(index)  # no leader, RPC error: another agent may do better
                unapplied = "No cluster leader" in str(exc)
                if (
                    retry or (unapplied and not blocking and tried < len(self._clients))
                ) and deadline - time.monotonic() > 0.05:
                    log.info("%s failed on %s: %s", what, where, _text(exc))
                    continue
                raise UnavailableError(f"{what} failed on {where}: {_text(exc)}") from exc

    # -- the raw endpoints py-consul does not cover the way pykv needs ---------------------

    def txn(self, what: str, ops: list[dict[str, Any]], *, idempotent: bool) -> list[Any]:
        """Apply a KV transaction; its results, or :class:`TxnFailed` when rolled back.

        (py-consul's ``txn.put`` sends no ACL token, so the call is made here.)"""
        body = json.dumps([{"KV": op} for op in ops])

        def run(client: Any) -> Response:
            response: Response = client.http.put(
                raw, "/v1/txn", headers=client.prepare_headers(), data=body
            )
            if response.code == 409 and "Permission denied" in response.body:
                raise ACLPermissionDenied(response.body)  # a rolled-back txn: ACLs said no
            return response if response.code == 409 else check(response)

        response = self.call(what, run, idempotent=idempotent)
        data = json.loads(response.body)
        if response.code == 409:
            raise TxnFailed(data.get("Errors") or [])
        results: list[Any] = data.get("Results") or []
        return results

    def create_session(self, what: str, body: dict[str, Any]) -> str:
        """Create a session; :class:`consul.ConsulException` text is kept for TTL parsing.

        (py-consul's ``session.create`` only takes whole TTLs of 10 s or more.)"""
        data = json.dumps(body)

        def run(client: Any) -> Response:
            response: Response = client.http.put(
                raw, "/v1/session/create", headers=client.prepare_headers(), data=data
            )
            # A rejected TTL comes as a 500 with the accepted range: keep it for the caller.
            return response if "Session TTL" in response.body else check(response)

        response = self.call(what, run, idempotent=False)
        if response.code != 200:
            # Keep Consul's text: "Invalid Session TTL ..., must be between [1s=24h0m0s]".
            raise SessionRejected(f"{what}: Consul refused: {response.body.strip()}")
        session_id: str = json.loads(response.body)["ID"]
        return session_id

    def renew_session(self, what: str, session_id: str, timeout: float) -> bool:
        """Renew a session: False when Consul no longer knows it (it was invalidated)."""

        def run(client: Any) -> Response:
            response: Response = client.http.put(
                raw, f"/v1/session/renew/{session_id}", headers=client.prepare_headers()
            )
            return response if response.code == 404 else check(response)

        return self.call(what, run, timeout=timeout).code != 404

    def agent_put(
        self,
        what: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: list[tuple[str, str]] | None = None,
    ) -> bool:
        """PUT to an agent endpoint (``/v1/agent/...``, all idempotent); False when the agent
        does not know the service or check named in the path. Agent state is local to the
        agent: after a failover the next agent may not know what the previous one had."""
        data = "" if body is None else json.dumps(body)

        def run(client: Any) -> Response:
            response: Response = client.http.put(
                raw, path, params=params, headers=client.prepare_headers(), data=data
            )
            # Consul 1.8 answers an unknown TTL check with a 500 (later versions with a 404):
            # not a server failure, so no failover for it.
            return response if _unknown(response) else check(response)

        return not _unknown(self.call(what, run))


def _unknown(response: Response) -> bool:
    if response.code == 404:
        return True
    return response.code == 500 and any(
        marker in response.body
        for marker in ("does not have associated TTL", "Unknown check", "Unknown service")
    )


class SessionRejected(UnavailableError):
    """Consul refused to create a session (its text is the message)."""


def _refused(exc: requests.ConnectionError) -> bool:
    """True when the request cannot have reached the agent (refused, unresolvable)."""
    text = str(exc)
    return any(
        marker in text
        for marker in ("NewConnectionError", "Connection refused", "Name or service not known")
    )


def _text(exc: Exception) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
