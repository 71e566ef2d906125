"""HTTP calls to Consul agents on urllib3: one keep-alive connection pool per agent, per-call
timeouts, failover between the agents of the URL, and the one place where urllib3's errors and
Consul's error answers become pykv errors."""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from pykv import (
    Host,
    OperationTimeoutError,
    PermissionDeniedError,
    PyKVError,
    UnavailableError,
)

__all__ = ["Reply", "SessionRejected", "Transport", "TxnFailed", "b64", "parse_duration"]

log = logging.getLogger("pykv.consul")

Reply = urllib3.BaseHTTPResponse

#: An idempotent call gives one agent, when others are left to try, this share of its time
#: (at least ATTEMPT_MIN s): Consul answers in milliseconds unless the agent waits for a leader.
ATTEMPT_SHARE = 1 / 3
ATTEMPT_MIN = 1.0
#: How late (beyond its wait and Consul's jitter of wait/16) a blocking query may answer before
#: the agent is taken for cut off: an ex-leader cut off from its peers holds the query.
BLOCKING_SLACK = 1.0
#: Connections kept per agent: enough for many threads of one store at once (beyond it urllib3
#: opens more and closes them after use, so nothing ever waits for a connection).
POOL_SIZE = 32

_DURATION = re.compile(r"([\d.]+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds of a Go duration as Consul prints them ("10s", "1m30s", "24h0m0s")."""
    return sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _decoded(entry: dict[str, Any]) -> dict[str, Any]:
    value = entry.get("Value")
    if value is not None:
        entry["Value"] = base64.b64decode(value)
    return entry


class TxnFailed(PyKVError):
    """A /v1/txn was rolled back (HTTP 409); ``errors`` are Consul's ``Errors`` entries."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(e.get("What", e)) for e in errors))
        self.errors = errors


class SessionRejected(UnavailableError):
    """Consul refused to create a session (its text is the message)."""


def _text(reply: Reply) -> str:
    return reply.data.decode("utf-8", "replace").strip()


def _never(reply: Reply) -> bool:
    return False


def _not_found(reply: Reply) -> bool:
    return reply.status == 404


def _rolled_back(reply: Reply) -> bool:
    """A transaction's conflict; not one that ACLs refused (a 409 too)."""
    return reply.status == 409 and b"Permission denied" not in reply.data


def _unknown(reply: Reply) -> bool:
    """The agent does not know the service or check: a 404, or a 500 on Consul 1.8 (not a
    server failure, so no failover for it)."""
    if reply.status == 404:
        return True
    return reply.status == 500 and any(
        marker in reply.data
        for marker in (b"does not have associated TTL", b"Unknown check", b"Unknown service")
    )


class Transport:
    """The Consul agents of one store (or of one watch thread), tried in turn.

    A connection error moves on to the next agent at once, within the call's timeout, when the
    request cannot have reached the agent (or the call is idempotent). An idempotent call also
    moves on after a 5xx or after its share of the time on one agent (a server cut off from its
    peers holds requests for its RPC hold time, ~7 s, and a server still forwarding to a lost
    leader longer), as does any call answered "No cluster leader" (never applied). A time-out,
    a 5xx or a lost connection on the last agent tried raises a typed error, and the next
    call starts at the next agent.

    urllib3 directly rather than an API client on requests: a call is one ``urlopen`` on a
    keep-alive pool, with its own connect and read time-outs, no retries and no proxies from
    the environment (the agent is a direct peer, usually on loopback); the ACL token goes only
    in the ``X-Consul-Token`` header.
    """

    def __init__(
        self,
        name: str,
        hosts: Sequence[Host],
        *,
        scheme: str,
        token: str | None,
        consistent: bool,
        tls: dict[str, Any],
        timeout: float,
        start: int = 0,
    ) -> None:
        self.name = name
        self.hosts = list(hosts)
        self.timeout = timeout
        self._scheme = scheme
        self._token = token
        self._consistent = consistent
        self._tls = tls
        self._headers = {"X-Consul-Token": token} if token else {}
        pool_class = (
            urllib3.HTTPSConnectionPool if scheme == "https" else urllib3.HTTPConnectionPool
        )
        self._pools: list[urllib3.HTTPConnectionPool] = []
        for host in self.hosts:
            assert host.port is not None
            self._pools.append(
                pool_class(
                    host.host,
                    host.port,
                    maxsize=POOL_SIZE,
                    block=False,
                    retries=False,
                    **tls,
                )
            )
        self.current = start % len(self._pools)
        self._rotate_lock = threading.Lock()
        # The time-outs of a first attempt with the store's timeout (alone, or with agents
        # left to try), made once: urllib3.Timeout validates its values on every creation.
        self._first = {
            retry: urllib3.Timeout(connect=budget, read=budget)
            for retry, budget in (
                (False, timeout),
                (True, min(timeout, max(ATTEMPT_MIN, timeout * ATTEMPT_SHARE))),
            )
        }

    def clone(self, name: str) -> Transport:
        """A transport of its own (own connections) for a thread doing blocking queries."""
        return Transport(
            name,
            self.hosts,
            scheme=self._scheme,
            token=self._token,
            consistent=self._consistent,
            tls=self._tls,
            timeout=self.timeout,
            start=self.current,
        )

    def close(self) -> None:
        for pool in self._pools:
            pool.close()

    def _rotate(self, index: int) -> None:
        with self._rotate_lock:
            if self.current == index and len(self._pools) > 1:
                self.current = (index + 1) % len(self._pools)
                log.info(
                    "%s: switching from Consul agent %s to %s",
                    self.name,
                    self.hosts[index],
                    self.hosts[self.current],
                )

    def _where(self, index: int) -> str:
        return f"Consul agent {self.hosts[index]} ({self.name})"

    def request(
        self,
        what: str,
        method: str,
        path: str,
        *,
        body: bytes | str | None = None,
        accept: Callable[[Reply], bool] = _never,
        idempotent: bool = True,
        timeout: float | None = None,
        blocking: float = 0.0,
    ) -> Reply:
        """One call on the current agent, failing over; every error mapped to pykv's.

        ``path`` is quoted, with its query string. An answer of 400 or more is an error unless
        ``accept`` takes it. ``timeout`` bounds the whole call (default: the store's);
        ``blocking`` is the ``wait`` of a blocking query, added (with Consul's jitter of
        wait/16) to the read time-out, which then allows at most BLOCKING_SLACK more; a
        blocking query is not retried here (its caller polls again, on the next agent).
        """
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        count = len(self._pools)
        tried = 0
        while True:
            index = self.current
            remaining = max(0.05, deadline - time.monotonic())
            retry = idempotent and not blocking and tried + 1 < count
            budget = min(remaining, max(ATTEMPT_MIN, limit * ATTEMPT_SHARE)) if retry else remaining
            if tried or blocking or timeout is not None:
                read = min(budget, BLOCKING_SLACK) + blocking * 17 / 16 if blocking else budget
                timeouts = urllib3.Timeout(connect=budget, read=read)
            else:  # the common case, microseconds after the deadline was set
                timeouts = self._first[retry]
            try:
                reply = self._pools[index].urlopen(
                    method,
                    path,
                    body=body,
                    headers=self._headers,
                    retries=False,
                    redirect=False,
                    timeout=timeouts,
                )
            except ReadTimeoutError as exc:
                tried += 1
                self._rotate(index)
                if retry and deadline - time.monotonic() > 0.05:
                    log.info(
                        "%s: %s did not answer within %.2g s", what, self._where(index), budget
                    )
                    continue
                raise OperationTimeoutError(
                    f"{what}: {self._where(index)} did not answer within {limit:g} s"
                ) from exc
            except (ConnectTimeoutError, ProtocolError, SSLError) as exc:
                # A lost or refused connection, or a failed TLS handshake.
                tried += 1
                self._rotate(index)
                not_sent = isinstance(exc, ConnectTimeoutError)  # NewConnectionError included
                if (
                    tried < count
                    and (idempotent or not_sent)
                    and deadline - time.monotonic() > 0.05
                ):
                    continue
                where = self._where(index)
                if isinstance(exc, SSLError):
                    raise UnavailableError(f"{what}: TLS failed with {where}: {exc}") from exc
                if not isinstance(exc, NewConnectionError) and not_sent:
                    raise OperationTimeoutError(
                        f"{what}: no connection to {where} within {limit:g} s"
                    ) from exc
                tail = f" (and {tried - 1} other agents)" if tried > 1 else ""
                raise UnavailableError(f"{what}: cannot reach {where}{tail}: {exc}") from exc
            except HTTPError as exc:
                self._rotate(index)
                raise UnavailableError(f"{what} failed on {self._where(index)}: {exc}") from exc
            status = reply.status
            if status < 400 or accept(reply):
                return reply
            text = _text(reply)
            if status in (401, 403) or (status == 409 and "Permission denied" in text):
                # (a transaction that ACLs refuse is rolled back: 409)
                raise PermissionDeniedError(
                    f"{what}: {self._where(index)} denied access ({text or status}); check the "
                    "token option and the token's ACL policy"
                )
            if status < 500:
                raise UnavailableError(
                    f"{what}: {self._where(index)} rejected the call: {status} {text}"
                )
            tried += 1
            self._rotate(index)  # no leader, RPC error: another agent may do better
            unapplied = "No cluster leader" in text
            if (
                retry or (unapplied and not blocking and tried < count)
            ) and deadline - time.monotonic() > 0.05:
                log.info("%s failed on %s: %s %s", what, self._where(index), status, text)
                continue
            raise UnavailableError(f"{what} failed on {self._where(index)}: {status} {text}")

    # -- the endpoints pykv uses ---------------------------------------------------------------

    def kv_get(
        self,
        what: str,
        path: str,
        *,
        recurse: bool = False,
        index: int = 0,
        wait: float = 0.0,
    ) -> tuple[int, Any]:
        """``GET /v1/kv/<path>``: (X-Consul-Index, the entry or None; with ``recurse`` the list
        of entries or None), values decoded. With ``index``, a blocking query of ``wait`` s."""
        query = []
        if recurse:
            query.append("recurse=1")
        if index:
            query.append(f"index={index}&wait={wait:.3f}s")
        if self._consistent:
            query.append("consistent=1")
        url = "/v1/kv/" + quote(path, safe="/:")
        if query:
            url += "?" + "&".join(query)
        reply = self.request(what, "GET", url, accept=_not_found, blocking=wait if index else 0.0)
        at = int(reply.headers.get("X-Consul-Index") or 0)
        if reply.status == 404:
            return at, None
        entries = json.loads(reply.data)
        if recurse:
            return at, [_decoded(entry) for entry in entries]
        return at, _decoded(entries[0])

    def kv_delete(self, what: str, path: str) -> None:
        self.request(what, "DELETE", "/v1/kv/" + quote(path, safe="/:"))

    def txn(
        self, what: str, ops: list[dict[str, Any]], *, idempotent: bool, results: bool = True
    ) -> list[Any]:
        """Apply a KV transaction; its results (not read unless ``results``: []), or
        :class:`TxnFailed` when rolled back."""
        body = json.dumps([{"KV": op} for op in ops]).encode()
        reply = self.request(
            what, "PUT", "/v1/txn", body=body, accept=_rolled_back, idempotent=idempotent
        )
        if reply.status == 409:
            raise TxnFailed(json.loads(reply.data).get("Errors") or [])
        if not results:
            return []
        found: list[Any] = json.loads(reply.data).get("Results") or []
        return found

    def create_session(self, what: str, body: dict[str, Any]) -> str:
        """Create a session; a refused one raises :class:`SessionRejected` with Consul's text."""
        reply = self.request(
            what,
            "PUT",
            "/v1/session/create",
            body=json.dumps(body),
            # A rejected TTL comes as a 500 with the accepted range: keep it for the caller.
            accept=lambda r: b"Session TTL" in r.data,
            idempotent=False,
        )
        if reply.status != 200:
            # Keep Consul's text: "Invalid Session TTL ..., must be between [1s=24h0m0s]".
            raise SessionRejected(f"{what}: Consul refused: {_text(reply)}")
        session_id: str = json.loads(reply.data)["ID"]
        return session_id

    def renew_session(self, what: str, session_id: str, timeout: float) -> bool:
        """Renew a session: False when Consul no longer knows it (it was invalidated)."""
        path = f"/v1/session/renew/{quote(session_id, safe='')}"
        reply = self.request(what, "PUT", path, accept=_not_found, timeout=timeout)
        return reply.status != 404

    def destroy_session(self, what: str, session_id: str) -> None:
        self.request(what, "PUT", f"/v1/session/destroy/{quote(session_id, safe='')}")

    def agent_put(
        self,
        what: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: str = "",
    ) -> bool:
        """PUT to an agent endpoint (``/v1/agent/...``, all idempotent); False when the agent
        does not know the service or check named in the path. Agent state is local to the
        agent: after a failover the next agent may not know what the previous one had."""
        data = "" if body is None else json.dumps(body)
        url = quote(path, safe="/:") + query
        return not _unknown(self.request(what, "PUT", url, body=data, accept=_unknown))
