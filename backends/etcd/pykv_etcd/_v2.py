"""``etcd2://`` — pykv on the etcd v2 API, over plain HTTP/JSON with urllib3.

The v2 API is gone from etcd 3.6: it needs etcd 3.4 or 3.5 started with ``--enable-v2=true``.
New deployments should use the v3 store (``etcd://``).

URL form
    ``etcd2://[user:password@]host1:2379[,host2:2379...][/prefix][?option=value...]``, and
    ``etcd2+tls://`` (or ``?tls=true``) for HTTPS. The port defaults to 2379. Requests go to one
    endpoint at a time and fail over to the next when it cannot be reached.

Options
    ``timeout`` (seconds, default 10) bounds every call, failover included; ``prefix`` (or the
    URL path); ``username``/``password`` (or the URL's user info): HTTP basic auth of etcd's v2
    auth; ``tls``, ``ca``, ``cert``, ``key``, ``verify`` for HTTPS with a CA bundle and a client
    certificate; ``max_refresh_rate`` (default 1000): the refresh writes per second this store's
    TTL keys may need (each takes 3/TTL); a put with a TTL beyond it raises
    :class:`~pykv.InvalidArgumentError` naming the limit.

Capabilities
    Everything: kv, atomic, ttl, watch, watch_tree, lock, shared, persistent.

Tested server versions
    etcd 3.4.23 (Debian 12) with ``--enable-v2=true``: single node, three-node cluster with its
    leader killed, v2 auth, TLS with client certificates. etcd 3.5.16 (Debian 13) with
    ``--enable-v2=true``: the conformance suite on a single node.

TTL slack
    2 s: v2 TTLs are whole seconds (pykv rounds up) and the leader expires keys on a 0.5 s tick.

Layout
    A pykv key ``K`` is the etcd node ``/<prefix>/K``: a plain file holding the value, readable
    with ``etcdctl get /<prefix>/K`` by any v2 client. v2 has real directories and a node cannot
    be both a file and a directory, while a pykv key may have a value and children. So:

    * A key that has children keeps its value in the leaf ``K/%value`` of the directory ``K``.
      When the first child is written below a key that is a file, pykv moves the value: it
      swaps the file's value for ``pykv:moving:<value>`` (compare-and-swap), deletes the file
      (compare-and-delete) and creates ``K/%value`` (create-only) with the same value and the
      remaining TTL. Readers and watches treat the marker as the value it carries, so watches
      see no event for the move, but the key's revision changes. A delete of ``K`` that falls
      between the last two steps of a move (one round trip) is undone by it.
    * Path segments starting with ``_`` are hidden by etcd v2 (listings and recursive watches
      skip them), so pykv stores a segment ``_x`` as ``%5Fx`` and a segment ``%x`` as ``%25x``;
      every other segment is stored as it is. ``%value`` cannot collide with a stored segment.
    * Lock bookkeeping lives in the hidden root directory ``/_pykv_locks``, one node per locked
      key named by its full node path with ``/`` written ``%2F``.

Values
    v2 stores text. A value that is valid UTF-8 and does not start with ``pykv:`` is stored as
    it is; any other value is stored as ``pykv:b64:`` followed by its base64 encoding. So every
    byte string round-trips and text stays readable by other v2 clients.

Revisions
    ``KVPair.revision`` is the node's ``modifiedIndex``. A v2 TTL can only be extended by a
    write (``refresh=true``), which also raises ``modifiedIndex`` without notifying watches:
    the revision of a TTL key moves on about every ttl/3 seconds. ``atomic_put`` and
    ``atomic_delete`` tell such refreshes from real writes, so compare-and-swap on a TTL key
    does not fail because it was kept alive: the owning store knows its own refreshes (each is
    a compare-and-swap on the index before it); another client asks etcd's event history,
    which skips refreshes: a wait from the compared index answers at once when a real write
    happened and stays silent (for 0.25 s) when only refreshes did. Watches report writes,
    never refreshes, so a watched TTL key's revision may be older than ``get()``'s.

TTL keys and locks
    ``put(..., ttl=T)`` writes the node with ``ttl=ceil(T)``; one thread per store refreshes
    it every T/3 seconds (keys due together over a pool of four connections) with
    ``refresh=true&prevIndex=<last index>``, so a key rewritten by someone else is never
    extended by this store. A lock creates its bookkeeping node with
    ``prevExist=false`` and a TTL; its ``createdIndex`` (etcd's global index) is the fencing
    token. The lock's value is a TTL key at the lock's own key. Waiters watch the bookkeeping
    node (``wait=true&waitIndex=``) instead of polling. ``lost`` is set when a refresh finds
    either node deleted or rewritten, or when no refresh succeeded for 3/4 of the TTL
    (counted from when the last confirmed refresh was sent; every call of the refreshing
    thread ends by then, so a hung server cannot delay it). etcd counts a TTL from when the
    member received the request, which may wait out a leader election: a lock granted more
    than TTL/4 after its request was sent is renewed before ``acquire`` returns (or given up
    and tried again). Lock decisions read with ``quorum=true``. A release that fails stops the
    refreshes, so etcd deletes both nodes within the TTL. ``acquire(timeout=T)`` returns
    within T (each call gets at least 0.5 s). ``close()`` stops every watch thread first and
    then waits for all of them together, at most one timeout.

Watches
    Long polls ``wait=true&waitIndex=N`` (recursive, to see ``K/%value``) on one thread per
    watch, each bounded by the timeout: a poll that times out is re-issued after a re-read of
    the watched state, and "event index cleared" (errorCode 401, the v2 history keeps 1000
    events) is answered by re-reading and going on from the index of the read, so the final
    state is always delivered. ``watch_tree`` keeps a snapshot and emits it whole.

Endpoints, failover and errors
    Reads are served by the endpoint in use. After a failover, a read answered by a member that
    has not yet applied this store's last write is repeated with ``quorum=true``. A request
    that could not connect moves on to the next endpoint (with a short backoff after a full
    round) until the timeout; so does a read or a plain put/delete that failed after it was
    sent. A conditional write (create-only, compare-and-swap, lock) whose outcome is unknown
    is not repeated: it raises :class:`~pykv.UnavailableError` (or
    :class:`~pykv.OperationTimeoutError`) saying so. Connection errors name the endpoints;
    HTTP 401 (v2 auth) raises :class:`~pykv.PermissionDeniedError`.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import contextlib
import json
import logging
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from pykv import (
    Capability,
    ConfigurationError,
    Host,
    InvalidArgumentError,
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
    KVPair,
    Lock,
    OperationTimeoutError,
    PermissionDeniedError,
    PyKVError,
    Store,
    StoreOptions,
    StoreURL,
    TLSOptions,
    UnavailableError,
    Watch,
)
from pykv.kit import Change, TreeFeed

__all__ = ["Etcd2Options", "Etcd2Store"]

log = logging.getLogger("pykv.etcd2")

DEFAULT_PORT = 2379
#: Text values starting with this are base64-encoded so that markers stay unambiguous.
RESERVED = "pykv:"
B64 = "pykv:b64:"
MOVING = "pykv:moving:"
#: Leaf holding the value of a key that also has children.
VALUE_LEAF = "%value"
LOCK_DIR = "/_pykv_locks"
#: How long a compare-and-swap waits to learn whether a TTL refresh was the only change.
REFRESH_PROBE = 0.25
#: The keepalive refreshes TTL keys over this many connections at once (v2 has no leases:
#: one write per key), handing them out in slices so that it checks on locks in between.
REFRESHERS = 4
REFRESH_SLICE = 64

# etcd v2 error codes (etcdserver/api/v2error)
E_NOT_FOUND = 100
E_COMPARE = 101
E_NOT_FILE = 102
E_NOT_DIR = 104
E_EXISTS = 105
E_DIR_NOT_EMPTY = 108
E_INDEX_CLEARED = 401
#: The least time a call that may be retried gives one member before it tries the next. With
#: three members and the default timeout each gets a third; the floor was 2 s, so that a call
#: whose first member was a partitioned ex-leader and second a member without a leader never
#: reached the third, the new leader (the fault suite saw operations resume 6.2 s late).
ATTEMPT_MIN = 1.0
#: Where a long poll's event carries the member's X-Etcd-Index (see _Poller._once).
ETCD_INDEX = "pykv-etcd-index"
#: A watch this many events behind the store reads its state again instead of replaying them
#: (etcd v2 answers a long poll with one event: about a hundred a second to catch up with).
RESYNC_BEHIND = 100

_DELETES = frozenset({"delete", "compareAndDelete", "expire"})


@dataclass(frozen=True)
class Etcd2Options(TLSOptions):
    """Options of ``etcd2://`` stores (see the module documentation)."""

    username: str | None = None
    password: str | None = None
    #: Refresh writes per second this store may need to keep its TTL keys alive (each key
    #: takes 3/TTL of them); a put with a TTL beyond it raises InvalidArgumentError.
    max_refresh_rate: float = 1000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.max_refresh_rate) and self.max_refresh_rate > 0):
            raise ConfigurationError(
                "option 'max_refresh_rate' must be a positive number of refresh writes per "
                f"second, not {self.max_refresh_rate!r}"
            )


# -- values and paths -----------------------------------------------------------------------


def encode_value(value: bytes) -> str:
    """The text stored for ``value``: itself when it is UTF-8 not starting with ``pykv:``."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    else:
        if not text.startswith(RESERVED):
            return text
    return B64 + base64.b64encode(value).decode("ascii")


def decode_value(text: str) -> bytes:
    """Inverse of :func:`encode_value`; a move marker decodes to the value it carries."""
    if text.startswith(MOVING):
        text = text[len(MOVING) :]
    if text.startswith(B64):
        try:
            return base64.b64decode(text[len(B64) :], validate=True)
        except (binascii.Error, ValueError):
            pass  # written by another client: show it as it is
    return text.encode("utf-8")


def _escape(segment: str) -> str:
    if segment[0] == "_":
        return "%5F" + segment[1:]
    if segment[0] == "%":
        return "%25" + segment[1:]
    return segment


def _unescape(name: str) -> str:
    if name.startswith("%5F"):
        return "_" + name[3:]
    if name.startswith("%25"):
        return "%" + name[3:]
    return name


def node_path(path: str) -> str:
    """The etcd node of a pykv path (prefix joined): ``/`` plus escaped segments."""
    if not path:
        return "/"
    return "/" + "/".join(_escape(s) for s in path.split("/"))


def _is_moving(node: dict[str, Any] | None) -> bool:
    return bool(node) and str(node.get("value", "")).startswith(MOVING)  # type: ignore[union-attr]


# -- HTTP -----------------------------------------------------------------------------------


@dataclass
class _Reply:
    status: int
    body: dict[str, Any]
    index: int  # X-Etcd-Index: the member's store index when it answered

    @property
    def code(self) -> int | None:
        code = self.body.get("errorCode")
        return int(code) if code is not None else None

    @property
    def node(self) -> dict[str, Any]:
        node: dict[str, Any] = self.body["node"]
        return node


class _IndexCleared(Exception):
    """A wait asked for history the member no longer keeps (errorCode 401)."""


@dataclass
class _Poll:
    """The long poll a watch thread is blocked in, so that close() can interrupt it."""

    stop: threading.Event = field(default_factory=threading.Event)
    response: urllib3.BaseHTTPResponse | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def interrupt(self) -> None:
        self.stop.set()
        with self.lock:
            resp = self.response
        if resp is not None:
            shutdown = getattr(resp, "shutdown", None)  # urllib3 >= 2.3
            with contextlib.suppress(Exception):
                if shutdown is not None:
                    shutdown()
                else:
                    resp.close()


# -- the store ------------------------------------------------------------------------------


@dataclass
class _TTLKey:
    key: str
    text: str  # the stored text we wrote
    ttl: int
    path: str  # the node holding it (the key's file or its %value leaf)
    index: int
    due: float
    misses: int = 0
    #: indexes of our write and of our refreshes since (each refresh was a CAS on the last)
    chain: list[int] = field(default_factory=list)


class _TTLKeys(dict[str, _TTLKey]):
    """A store's TTL keys by key, counting them by TTL: the refresh writes per second they
    need, without a pass over all of them on every put."""

    def __init__(self) -> None:
        super().__init__()
        self.by_ttl: dict[int, int] = {}

    def refresh_rate(self) -> float:
        return sum(3 * count / ttl for ttl, count in self.by_ttl.items())

    def _count(self, item: _TTLKey, step: int) -> None:
        count = self.by_ttl.get(item.ttl, 0) + step
        if count:
            self.by_ttl[item.ttl] = count
        else:
            del self.by_ttl[item.ttl]

    def __setitem__(self, key: str, item: _TTLKey) -> None:
        old = self.get(key)
        if old is not None:
            self._count(old, -1)
        super().__setitem__(key, item)
        self._count(item, 1)

    def __delitem__(self, key: str) -> None:
        self._count(self[key], -1)
        super().__delitem__(key)

    def pop(self, key: str, default: Any = None) -> Any:
        if key in self:
            self._count(self[key], -1)
        return super().pop(key, default)

    def clear(self) -> None:
        super().clear()
        self.by_ttl.clear()


class Etcd2Store(Store):
    """pykv on the etcd v2 API. See the module documentation."""

    schemes: ClassVar[tuple[str, ...]] = ("etcd2",)
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    options_class: ClassVar[type[StoreOptions]] = Etcd2Options
    distribution: ClassVar[str] = "pykvstore-etcd"
    ttl_slack: ClassVar[float] = 2.0
    options: Etcd2Options

    def __init__(self, url: StoreURL, options: StoreOptions) -> None:
        assert isinstance(options, Etcd2Options)
        super().__init__(url, options)
        scheme = "https" if options.tls else "http"
        hosts = url.hosts or (Host("127.0.0.1"),)
        self._endpoints = [f"{scheme}://{h.with_default_port(DEFAULT_PORT)}" for h in hosts]
        self._current = 0
        self._headers: dict[str, str] = {}
        if options.username is not None:
            self._headers.update(
                urllib3.make_headers(basic_auth=f"{options.username}:{options.password or ''}")
            )
        pool_args: dict[str, Any] = {"maxsize": 16, "block": False, "retries": False}
        options.check_files(url)
        if options.tls:
            pool_args["cert_reqs"] = "CERT_REQUIRED" if options.verify else "CERT_NONE"
            if options.ca:
                pool_args["ca_certs"] = options.ca
            if options.cert:
                pool_args["cert_file"] = options.cert
            if options.key:
                pool_args["key_file"] = options.key
            if not options.verify:
                pool_args["assert_hostname"] = False
        self._http = urllib3.PoolManager(num_pools=max(4, len(self._endpoints)), **pool_args)
        self._prefix_node = node_path(self.prefix)
        self._last_write = 0  # highest index this store wrote: stale-read detection
        self._mutex = threading.RLock()
        self._stop = threading.Event()
        self._ttl_keys = _TTLKeys()
        self._locks: set[_Etcd2Lock] = set()
        self._keepalive: threading.Thread | None = None
        self._refreshers: concurrent.futures.ThreadPoolExecutor | None = None
        self._late_warned = -60.0
        self._wake = threading.Event()
        self._poller = _Poller(self)

    # -- HTTP and errors: the one place that maps urllib3's and etcd's errors ---------------

    def _url(self, path: str, params: dict[str, str] | None) -> str:
        url = "/v2/keys" + quote(path, safe="/")
        return url + "?" + urlencode(params) if params else url

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: dict[str, str] | None = None,
        value: str | None = None,
        safe: bool = True,
        timeout: float | None = None,
    ) -> _Reply:
        """One request with failover. ``safe``: it may be repeated after it was maybe sent.

        Connection failures move on to the next endpoint until the deadline; an error after a
        non-repeatable request was sent is raised, since its outcome is unknown.
        """
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        url = self._url(path, params)
        headers = self._headers
        body = None
        if method == "PUT":
            body = "" if value is None else "value=" + quote(value, safe="")
            headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        failures: list[str] = []
        last: BaseException | None = None
        pause = 0.05
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tried = "; ".join(failures[-3:]) or "no attempt"
                if last is None or isinstance(last, Urllib3TimeoutError):
                    raise OperationTimeoutError(
                        f"{what} on {self}: no answer within {budget:g} s ({tried})"
                    ) from last
                raise UnavailableError(f"{what} on {self}: cannot reach etcd ({tried})") from last
            index = self._current
            endpoint = self._endpoints[index]
            read = remaining
            if safe and len(self._endpoints) > 1:  # leave time to try every member
                read = min(remaining, max(ATTEMPT_MIN, budget / len(self._endpoints)))
            try:
                resp = self._http.request(
                    method,
                    endpoint + url,
                    body=body,
                    headers=headers,
                    timeout=urllib3.Timeout(connect=min(remaining, 3.0), read=read),
                    redirect=False,
                )
            except SSLError as exc:
                raise UnavailableError(
                    f"{what} on {self}: TLS failed with {endpoint}: {exc}"
                ) from exc
            except HTTPError as exc:
                last = exc
                failures.append(f"{endpoint}: {_reason(exc)}")
                self._failover(index)
                not_sent = isinstance(exc, NewConnectionError | ConnectTimeoutError)
                if not (safe or not_sent):
                    if isinstance(exc, ReadTimeoutError):
                        raise OperationTimeoutError(
                            f"{what} on {self}: {endpoint} did not answer within {budget:g} s; "
                            "the write may or may not have been applied"
                        ) from exc
                    raise UnavailableError(
                        f"{what} on {self}: the connection to {endpoint} failed after the "
                        f"request was sent ({_reason(exc)}); the write may or may not have "
                        "been applied"
                    ) from exc
                if index == len(self._endpoints) - 1 or len(self._endpoints) == 1:
                    time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                    pause = min(pause * 2, 0.5)
                continue
            status = resp.status
            if status == 401:
                raise PermissionDeniedError(
                    f"{what} on {self}: etcd refused the credentials "
                    f"({status} {resp.data.decode('utf-8', 'replace').strip()})"
                )
            try:
                data = json.loads(resp.data) if resp.data else {}
            except ValueError:
                data = {"message": resp.data[:200].decode("utf-8", "replace")}
            if status >= 500:
                reason = f"{endpoint}: {status} {data.get('message')} {data.get('cause', '')}"
                if not safe:
                    raise UnavailableError(
                        f"{what} on {self}: {reason}; the write may or may not have been applied"
                    )
                failures.append(reason)
                last = None
                self._failover(index)
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                pause = min(pause * 2, 0.5)
                continue
            etcd_index = resp.headers.get("X-Etcd-Index")
            return _Reply(status, data, int(etcd_index) if etcd_index else 0)

    def _failover(self, index: int) -> None:
        if len(self._endpoints) > 1 and self._current == index:
            self._current = (index + 1) % len(self._endpoints)
            log.info("%s: failing over to %s", self, self._endpoints[self._current])

    def _fail(self, reply: _Reply, what: str) -> PyKVError:
        """The pykv error for an etcd error reply."""
        code = reply.code
        message = f"{what} on {self}: {reply.body.get('message')} ({reply.body.get('cause', '')})"
        if code == E_NOT_FOUND:
            return KeyNotFoundError(message)
        if code == E_COMPARE:
            return KeyModifiedError(message)
        if code == E_EXISTS:
            return KeyExistsError(message)
        if code in (110, 111):  # unauthorized
            return PermissionDeniedError(message)
        return UnavailableError(f"{message} [etcd errorCode {code}, HTTP {reply.status}]")

    def _written(self, reply: _Reply) -> dict[str, Any]:
        node = reply.node
        self._last_write = max(self._last_write, int(node["modifiedIndex"]))
        return node

    def _budget(self, deadline: float | None) -> float | None:
        """The timeout of one call that must end by ``deadline`` (None: the store's)."""
        if deadline is None:
            return None
        return min(self.timeout, max(0.05, deadline - time.monotonic()))

    def _get_node(
        self, path: str, what: str, *, deadline: float | None = None, **params: str
    ) -> _Reply:
        reply = self._call("GET", path, what, params=params or None, timeout=self._budget(deadline))
        if reply.index and reply.index < self._last_write and "quorum" not in params:
            # a member behind this store's own writes (after a failover): read through raft
            reply = self._call(
                "GET",
                path,
                what,
                params={**params, "quorum": "true"},
                timeout=self._budget(deadline),
            )
        return reply

    # -- paths ------------------------------------------------------------------------------

    def _node(self, key: str) -> str:
        return node_path(self._path(key))

    def _key_of(self, path: str) -> str | None:
        """The store-relative pykv key held by the file node ``path`` (None: not a key)."""
        base = self._prefix_node
        if base == "/":
            rel = path[1:]
        elif path.startswith(base + "/"):
            rel = path[len(base) + 1 :]
        else:
            return None
        segments = rel.split("/")
        if segments[-1] == VALUE_LEAF:
            segments.pop()
        if not segments or not segments[0]:
            return None
        return "/".join(_unescape(s) for s in segments)

    def _pair(self, key: str, node: dict[str, Any]) -> KVPair:
        return KVPair(key, decode_value(str(node.get("value", ""))), int(node["modifiedIndex"]))

    # -- reads ------------------------------------------------------------------------------

    def _read(
        self, key: str, what: str, deadline: float | None = None, *, quorum: bool = False
    ) -> tuple[dict[str, Any] | None, str, int]:
        """The node holding ``key``'s value (or None), its path, and the index of the read
        (``quorum``: read through raft, never from a member that is behind or cut off)."""
        path = self._node(key)
        extra = {"quorum": "true"} if quorum else {}
        for _ in range(10):
            reply = self._get_node(path, what, deadline=deadline, **extra)
            if reply.code in (E_NOT_FOUND, E_NOT_DIR):  # E_NOT_DIR: an ancestor is a file
                return None, path, int(reply.body.get("index", reply.index))
            if reply.code is not None:
                raise self._fail(reply, what)
            if not reply.node.get("dir"):
                return reply.node, path, reply.index
            leaf = path + "/" + VALUE_LEAF
            reply = self._get_node(leaf, what, deadline=deadline, **extra)
            if reply.code == E_NOT_FOUND:
                return None, leaf, int(reply.body.get("index", reply.index))
            if reply.code == E_NOT_DIR:
                continue  # the directory became a file meanwhile
            if reply.code is not None:
                raise self._fail(reply, what)
            return reply.node, leaf, reply.index
        raise UnavailableError(f"{what} on {self}: {key!r} keeps changing shape")

    def _get(self, key: str) -> KVPair:
        node, _, _ = self._read(key, f"get {key!r}")
        if node is None:
            raise KeyNotFoundError(f"{key!r} not found in {self}")
        return self._pair(key, node)

    def _walk(self, node: dict[str, Any], out: dict[str, KVPair], below: str) -> None:
        for child in node.get("nodes", ()):
            if child.get("dir"):
                self._walk(child, out, below)
                continue
            key = self._key_of(child["key"])
            if key is not None and (not below or key.startswith(below + "/")):
                out[key] = self._pair(key, child)

    def _read_tree(
        self, prefix: str, what: str, *, quorum: bool = False
    ) -> tuple[list[KVPair], int]:
        if quorum:
            reply = self._get_node(self._node(prefix), what, recursive="true", quorum="true")
        else:
            reply = self._get_node(self._node(prefix), what, recursive="true")
        if reply.code in (E_NOT_FOUND, E_NOT_DIR):
            return [], int(reply.body.get("index", reply.index))
        if reply.code is not None:
            raise self._fail(reply, what)
        out: dict[str, KVPair] = {}
        if reply.node.get("dir"):
            self._walk(reply.node, out, prefix)
        return [out[k] for k in sorted(out)], reply.index

    def _list(self, prefix: str) -> list[KVPair]:
        return self._read_tree(prefix, f"list {prefix!r}")[0]

    # -- writes -----------------------------------------------------------------------------

    def _write(
        self,
        key: str,
        text: str,
        ttl: int | None,
        *,
        create: bool = False,
        previous: int | None = None,
        what: str,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """Write ``text`` at ``key`` (create-only, or compare-and-swap on ``previous``); each
        write ends by ``deadline`` when one is given."""
        path = self._node(key)
        target = path
        params: dict[str, str] = {}
        if ttl is not None:
            params["ttl"] = str(ttl)
        if create:
            params["prevExist"] = "false"
        elif previous is not None:
            params["prevIndex"] = str(previous)
        plain = not create and previous is None
        probes = 0
        for _ in range(20):
            reply = self._call(
                "PUT",
                target,
                what,
                params=params,
                value=text,
                safe=plain,
                timeout=self._budget(deadline),
            )
            code = reply.code
            if code is None:
                return self._written(reply)
            if code == E_NOT_FILE or (code == E_EXISTS and target == path and create):
                # ``key`` is a directory: its value lives in its %value leaf
                if plain and target == path:
                    rmdir = self._call("DELETE", path, what, params={"dir": "true"})
                    if rmdir.code is None:  # it was an empty directory: write the plain file
                        continue
                if code == E_EXISTS and not self._is_dir(path, what):
                    raise self._fail(reply, what)
                target = path + "/" + VALUE_LEAF
                continue
            if code == E_NOT_DIR:  # an ancestor is a file: give it a %value leaf
                if target != path and reply.body.get("cause") == path:
                    target = path  # the directory became a file meanwhile
                    continue
                if previous is not None:  # below a file: the key cannot exist
                    raise KeyNotFoundError(f"{what} on {self}: {key!r} not found")
                self._move_into_dir(str(reply.body.get("cause", "")), what)
                continue
            if code == E_COMPARE and previous is not None and probes < 5:
                probes += 1
                current = self._refreshed_since(key, target, previous, reply, what)
                if current is not None:
                    params["prevIndex"] = str(current)
                    continue
            if code == E_NOT_FOUND and previous is not None and target != path:
                raise KeyNotFoundError(f"{what} on {self}: {key!r} not found")
            raise self._fail(reply, what)
        raise UnavailableError(f"{what} on {self}: {key!r} keeps changing shape")

    def _is_dir(self, path: str, what: str) -> bool:
        reply = self._call("GET", path, what)
        return reply.code is None and bool(reply.node.get("dir"))

    def _move_into_dir(self, path: str, what: str) -> None:
        """Turn the file ``path`` into a directory keeping its value in ``path/%value``."""
        if not path.startswith("/") or path == "/":
            raise UnavailableError(f"{what} on {self}: unexpected 'not a directory' at {path!r}")
        reply = self._call("GET", path, what, params={"quorum": "true"})
        if reply.code is not None or reply.node.get("dir"):
            return  # gone or already a directory: the caller retries
        node = reply.node
        text = str(node.get("value", ""))
        ttl = node.get("ttl")
        ttl_params = {"ttl": str(max(1, int(ttl)))} if ttl is not None else {}
        original = text[len(MOVING) :] if text.startswith(MOVING) else text
        index = int(node["modifiedIndex"])
        if not text.startswith(MOVING):
            reply = self._call(
                "PUT",
                path,
                what,
                params={"prevIndex": str(index), **ttl_params},
                value=MOVING + original,
                safe=False,
            )
            if reply.code is not None:
                return
            index = int(self._written(reply)["modifiedIndex"])
        reply = self._call("DELETE", path, what, params={"prevIndex": str(index)}, safe=False)
        if reply.code is not None:
            return
        self._written(reply)
        reply = self._call(
            "PUT",
            path + "/" + VALUE_LEAF,
            what,
            params={"prevExist": "false", **ttl_params},
            value=original,
            safe=False,
        )
        if reply.code is None:
            self._written(reply)

    def _refreshed_since(
        self, key: str, path: str, previous: int, reply: _Reply, what: str
    ) -> int | None:
        """The index to compare with when ``path`` changed only by TTL refreshes since
        ``previous`` (the index a compare failed on), else None."""
        current = _compare_index(reply)
        if current is None or current <= previous:
            return None
        with self._mutex:
            item = self._ttl_keys.get(key)
            if item is not None and item.path == path and previous in item.chain:
                return item.index  # our own refreshes: no need to ask etcd
        return self._only_refreshed(path, previous, what)

    def _only_refreshed(self, path: str, since: int, what: str) -> int | None:
        """The current index of ``path`` when every change after index ``since`` was a TTL
        refresh, else None.

        The v2 event history skips refreshes: a wait from ``since + 1`` answers at once when a
        real write happened, and blocks when only refreshes did. The index is read after the
        wait: the owner may have refreshed meanwhile, and a stale one would fail the compare.
        """
        reply = self._call("GET", path, what)
        if reply.code is not None or reply.node.get("ttl") is None:
            return None  # only TTL keys are refreshed
        poll = _Poll()
        try:
            event = self._wait(path, since + 1, False, poll, REFRESH_PROBE, what)
        except _IndexCleared:
            return None
        if event is not None:
            return None
        reply = self._call("GET", path, what)
        if reply.code is not None or reply.node.get("ttl") is None:
            return None
        return int(reply.node["modifiedIndex"])

    def _ttl_of(self, ttl: float | None, key: str) -> int | None:
        if ttl is None:
            return None
        seconds = max(1, math.ceil(ttl))
        self._check_refresh_rate(key, seconds)
        return seconds

    def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        text = encode_value(value)
        node = self._write(key, text, self._ttl_of(ttl, key), what=f"put {key!r}")
        self._track(key, text, ttl, node)

    def _atomic_put(
        self, key: str, value: bytes, previous: KVPair | None, ttl: float | None
    ) -> KVPair:
        text = encode_value(value)
        what = f"atomic_put {key!r}"
        node = self._write(
            key,
            text,
            self._ttl_of(ttl, key),
            create=previous is None,
            previous=None if previous is None else previous.revision,
            what=what,
        )
        self._track(key, text, ttl, node)
        return KVPair(key, value, int(node["modifiedIndex"]))

    def _delete_node(self, key: str, what: str, previous: int | None) -> None:
        path = self._node(key)
        params = None if previous is None else {"prevIndex": str(previous)}
        target = path
        probes = 0
        for _ in range(10):
            reply = self._call("DELETE", target, what, params=params, safe=previous is None)
            code = reply.code
            if code is None:
                self._written(reply)
                return
            if code == E_NOT_FILE and target == path:
                target = path + "/" + VALUE_LEAF
                continue
            if code == E_NOT_DIR and target != path:
                target = path
                continue
            if code in (E_NOT_FOUND, E_NOT_DIR) and previous is None:
                return
            if code == E_NOT_DIR:
                raise KeyNotFoundError(f"{what} on {self}: {key!r} not found")
            if code == E_COMPARE and previous is not None and params and probes < 5:
                probes += 1
                current = self._refreshed_since(key, target, previous, reply, what)
                if current is not None:
                    params["prevIndex"] = str(current)
                    continue
            raise self._fail(reply, what)
        raise UnavailableError(f"{what} on {self}: {key!r} keeps changing shape")

    def _delete(self, key: str) -> None:
        self._untrack(key)
        self._delete_node(key, f"delete {key!r}", None)

    def _atomic_delete(self, key: str, previous: KVPair) -> None:
        self._delete_node(key, f"atomic_delete {key!r}", previous.revision)
        self._untrack(key)

    def _delete_tree(self, prefix: str) -> None:
        what = f"delete_tree {prefix!r}"
        with self._mutex:
            for key in list(self._ttl_keys):
                if not prefix or key == prefix or key.startswith(prefix + "/"):
                    del self._ttl_keys[key]
        if not prefix and self.prefix:
            self._delete_below_prefix(what)
            return
        reply = self._call("DELETE", self._node(prefix), what, params={"recursive": "true"})
        if reply.code is None:
            self._written(reply)
        elif reply.code not in (E_NOT_FOUND, E_NOT_DIR):
            raise self._fail(reply, what)

    def _delete_below_prefix(self, what: str) -> None:
        """delete_tree("") with a prefix: the prefix's node holds the key the prefix names
        (a file, or the leaf ``%value``), which lies outside the store; delete the rest."""
        base = self._prefix_node
        reply = self._get_node(base, what)
        if reply.code == E_NOT_FOUND:
            return
        if reply.code is not None:
            raise self._fail(reply, what)
        if not reply.node.get("dir"):
            return  # a file: nothing below it
        for child in reply.node.get("nodes", ()):
            if child["key"] == f"{base}/{VALUE_LEAF}":
                continue
            gone = self._call("DELETE", child["key"], what, params={"recursive": "true"})
            if gone.code is None:
                self._written(gone)
            elif gone.code != E_NOT_FOUND:
                raise self._fail(gone, what)
        # the emptied directory too; etcd refuses (harmlessly) while %value is still in it
        gone = self._call("DELETE", base, what, params={"dir": "true"})
        if gone.code is None:
            self._written(gone)

    # -- TTL keys and locks: one keepalive thread per store ---------------------------------

    def _track(self, key: str, text: str, ttl: float | None, node: dict[str, Any]) -> None:
        with self._mutex:
            if ttl is None:
                self._ttl_keys.pop(key, None)
                return
            seconds = max(1, math.ceil(ttl))
            self._ttl_keys[key] = _TTLKey(
                key,
                text,
                seconds,
                str(node["key"]),
                int(node["modifiedIndex"]),
                # keys written together are refreshed spread over the next tenth of the TTL
                time.monotonic() + seconds / 3 - random.random() * seconds / 30,  # noqa: S311
                chain=[int(node["modifiedIndex"])],
            )
            self._ensure_keepalive()
        self._wake.set()

    def _check_refresh_rate(self, key: str, ttl: int) -> None:
        """Refuse a TTL key the keepalive could not refresh in time: each needs 3/TTL
        refresh writes per second, and the store's keys together at most
        ``max_refresh_rate`` (measured sustainable: bench/bench_scale.py)."""
        limit = self.options.max_refresh_rate
        with self._mutex:
            known = self._ttl_keys.get(key)
            rate = self._ttl_keys.refresh_rate()
        rate += 3 / ttl - (3 / known.ttl if known is not None else 0)
        if rate > limit:
            count = len(self._ttl_keys) + (known is None)
            raise InvalidArgumentError(
                f"put {key!r} with ttl={ttl} on {self}: keeping {count} TTL keys alive would "
                f"take {rate:,.0f} refresh writes per second (etcd v2 has no leases: one write "
                f"per key every TTL/3), above the limit of {limit:g} (option "
                "'max_refresh_rate'); use longer TTLs, fewer TTL keys per store, or etcd v3 "
                "(etcd://), whose leases keep any number of keys alive"
            )

    def _untrack(self, key: str) -> None:
        with self._mutex:
            self._ttl_keys.pop(key, None)

    def _ensure_keepalive(self) -> None:
        with self._mutex:
            if self._keepalive is None and not self._stop.is_set():
                self._keepalive = threading.Thread(
                    target=self._keepalive_loop, name=f"pykv-etcd2-keepalive {self}", daemon=True
                )
                self._keepalive.start()

    def _tell_locks(self) -> float | None:
        """Mark held locks lost whose renewal is overdue; the earliest deadline of the rest,
        by which the keepalive thread must be back (no call may keep it longer)."""
        with self._mutex:
            # Also locks whose acquire() has not returned yet: they count from their grant.
            locks = [lock for lock in self._locks if not lock.lost.is_set()]
        now = time.monotonic()
        tells = []
        for lock in locks:
            if now >= lock._tell_at():
                lock._mark_lost("it could not be renewed in time")
                if not lock.lost.is_set():  # not handed to its holder yet: look again soon
                    tells.append(now + 0.05)
            else:
                tells.append(lock._tell_at())
        return min(tells) if tells else None

    def _keepalive_loop(self) -> None:
        while not self._stop.is_set():
            cap = self._tell_locks()
            with self._mutex:
                dues = [t.due for t in self._ttl_keys.values()]
                dues += [lock._due for lock in self._locks]
            if cap is not None:
                dues.append(cap)
            wait = max(0.0, min(dues) - time.monotonic()) if dues else 1.0
            if self._wake.wait(min(wait, 1.0)):
                self._wake.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            with self._mutex:
                due_keys = [t for t in self._ttl_keys.values() if t.due <= now]
                due_locks = [lock for lock in self._locks if lock._due <= now]
            # Locks first: their lost deadline is tighter than a TTL key's expiry.
            for lock in due_locks:
                try:
                    lock._renew()
                except Exception:
                    log.exception("%s: renewing the lock %r failed", self, lock.key)
            due_keys.sort(key=lambda t: t.due)
            late = sum(1 for t in due_keys if now - t.due > t.ttl / 3)
            if late and now >= self._late_warned + 60:  # 2/3 of their TTL gone: say so
                self._late_warned = now
                log.warning(
                    "%s: the keepalive is falling behind: %d TTL keys were refreshed late "
                    "(%.0f refresh writes/s needed; lower the option 'max_refresh_rate' to "
                    "what this machine sustains, see bench/bench_scale.py)",
                    self,
                    late,
                    self._ttl_keys.refresh_rate(),
                )
            for start in range(0, len(due_keys), REFRESH_SLICE):
                cap = self._tell_locks()
                if self._stop.is_set():
                    return
                work = due_keys[start : start + REFRESH_SLICE]
                if len(work) == 1:
                    self._refresh_safely(work[0], cap)
                    continue
                if self._refreshers is None:
                    self._refreshers = concurrent.futures.ThreadPoolExecutor(
                        REFRESHERS, thread_name_prefix=f"pykv-etcd2-refresh {self}"
                    )
                # _refresh_safely never raises; every call ends by cap
                list(self._refreshers.map(lambda t, c=cap: self._refresh_safely(t, c), work))

    def _refresh_safely(self, item: _TTLKey, deadline: float | None) -> None:
        """Refresh one TTL key; a failure is logged and the key retried soon."""
        try:
            self._refresh_key(item, deadline)
        except PyKVError as exc:
            log.warning("%s: keeping the TTL key %r alive failed: %s", self, item.key, exc)
            item.due = time.monotonic() + min(item.ttl / 6, 0.5)
        except Exception:  # the keepalive must go on keeping the others alive
            log.exception("%s: keeping the TTL key %r alive failed", self, item.key)
            item.due = time.monotonic() + min(item.ttl / 6, 0.5)

    def _refresh(
        self, path: str, index: int, ttl: int, what: str, deadline: float | None = None
    ) -> _Reply:
        timeout = min(self.timeout, max(0.5, ttl / 3))
        if deadline is not None:
            timeout = min(timeout, max(0.05, deadline - time.monotonic()))
        return self._call(
            "PUT",
            path,
            what,
            params={"refresh": "true", "prevIndex": str(index), "ttl": str(ttl)},
            timeout=timeout,
        )

    def _refresh_key(self, item: _TTLKey, deadline: float | None = None) -> None:
        what = f"refresh TTL key {item.key!r}"
        reply = self._refresh(item.path, item.index, item.ttl, what, deadline)
        if reply.code is None:
            item.index = int(reply.node["modifiedIndex"])
            item.chain = [*item.chain[-63:], item.index]
            item.misses = 0
            item.due = time.monotonic() + item.ttl / 3
            return
        if reply.code not in (E_COMPARE, E_NOT_FOUND, E_NOT_FILE, E_NOT_DIR):
            raise self._fail(reply, what)
        node, path, _ = self._adopt(item.key, item.text, what, deadline)
        with self._mutex:
            if node is not None:
                item.path, item.index, item.misses = path, int(node["modifiedIndex"]), 0
                item.chain = [item.index]
                item.due = time.monotonic()  # refresh it where it is now
            elif item.misses == 0:
                item.misses = 1  # maybe in the middle of a move: look once more
                item.due = time.monotonic() + 0.1
            elif self._ttl_keys.get(item.key) is item:
                log.info(
                    "%s: TTL key %r was deleted or rewritten by another client", self, item.key
                )
                del self._ttl_keys[item.key]

    def _adopt(
        self, key: str, text: str, what: str, deadline: float | None = None, *, quorum: bool = False
    ) -> tuple[dict[str, Any] | None, str, int]:
        """The node of ``key`` if it still holds our value with a TTL (moved, or refreshed)."""
        node, path, index = self._read(key, what, deadline, quorum=quorum)
        if node is None or node.get("ttl") is None:
            return None, path, index
        if decode_value(str(node.get("value", ""))) != decode_value(text):
            return None, path, index
        return node, path, index

    def _lock(self, key: str, value: bytes, ttl: float) -> Lock:
        return _Etcd2Lock(self, key, value, ttl)

    # -- watches ----------------------------------------------------------------------------

    def _wait(
        self,
        path: str,
        index: int,
        recursive: bool,
        poll: _Poll,
        timeout: float,
        what: str,
    ) -> dict[str, Any] | None:
        """One long poll from ``index``: the event, or None when ``timeout`` passed first."""
        params = {"wait": "true", "waitIndex": str(index)}
        if recursive:
            params["recursive"] = "true"
        url = self._url(path, params)
        deadline = time.monotonic() + max(timeout, self.timeout)
        while True:
            if poll.stop.is_set():
                return None
            endpoint_index = self._current
            endpoint = self._endpoints[endpoint_index]
            remaining = deadline - time.monotonic()
            try:
                resp = self._http.request(
                    "GET",
                    endpoint + url,
                    headers=self._headers,
                    timeout=urllib3.Timeout(connect=min(3.0, max(remaining, 0.1)), read=timeout),
                    redirect=False,
                    preload_content=False,
                )
            except SSLError as exc:
                raise UnavailableError(
                    f"{what} on {self}: TLS failed with {endpoint}: {exc}"
                ) from exc
            except ReadTimeoutError:
                self._failover(endpoint_index)  # etcd sends a poll's headers at once: no answer
                return None
            except HTTPError as exc:
                self._failover(endpoint_index)
                if remaining <= 0:
                    raise UnavailableError(
                        f"{what} on {self}: cannot reach etcd ({endpoint}: {_reason(exc)})"
                    ) from exc
                if poll.stop.wait(0.1 if len(self._endpoints) > 1 else 0.5):
                    return None
                continue
            with poll.lock:
                poll.response = resp
            complete = False
            try:
                if poll.stop.is_set():
                    return None
                try:
                    data = resp.read()
                    complete = bool(data)
                except ReadTimeoutError:
                    # an idle long poll, or a member that stopped answering (cut off, frozen):
                    # the re-read that follows goes to the next member, so a silent member
                    # delays the watch by one poll, not by a poll and a read timing out
                    self._failover(endpoint_index)
                    return None
                except (HTTPError, OSError) as exc:
                    if poll.stop.is_set():
                        return None
                    self._failover(endpoint_index)
                    log.info("%s: %s: long poll on %s broke: %s", self, what, endpoint, exc)
                    if poll.stop.wait(0.1):
                        return None
                    continue
            finally:
                with poll.lock:
                    poll.response = None
                if not complete or poll.stop.is_set():
                    resp.close()  # the poll is still open on the server: never reuse it
                resp.release_conn()
            if resp.status == 401:
                raise PermissionDeniedError(f"{what} on {self}: etcd refused the credentials")
            if not data:  # the member closed the poll (shutdown, leader change)
                if poll.stop.is_set():
                    return None
                self._failover(endpoint_index)
                if poll.stop.wait(0.1):
                    return None
                continue
            body: dict[str, Any] = json.loads(data)
            code = body.get("errorCode")
            if code == E_INDEX_CLEARED:
                raise _IndexCleared(body.get("index"))
            if code is not None or resp.status >= 500:
                if resp.status >= 500:
                    self._failover(endpoint_index)
                    if poll.stop.wait(0.2):
                        return None
                    continue
                raise self._fail(_Reply(resp.status, body, 0), what)
            # the member's index when the poll began: how far behind the event is
            body[ETCD_INDEX] = int(resp.headers.get("X-Etcd-Index") or 0)
            return body

    def _start_watch(self, worker: _WatchWorker) -> None:
        self._poller.add(worker, worker.after)

    def _changed_since(self, key: str, since: int, *, tree: bool) -> bool | None:
        # The v2 history (the last 1000 events) answers a wait from `since + 1` at once when
        # something below the node changed after `since`; "event index cleared" means it was
        # forgotten, and a wait that blocks proves nothing in time: both resync.
        what = f"watch({key!r}, since={since})"
        index = self._read_tree(key, what)[1] if tree else self._read(key, what)[2]
        if since >= index:
            return False  # nothing at all was written after `since`
        try:
            event = self._wait(self._node(key), since + 1, True, _Poll(), REFRESH_PROBE, what)
        except _IndexCleared:
            return None
        if event is None:
            return None
        if tree:
            return True
        return True if self._key_of(str(event.get("node", {}).get("key", ""))) == key else None

    def _watch(self, key: str) -> Watch[KVPair | None]:
        # A watch's first event is the current state: read through raft, never from a member
        # that is behind (another client's acknowledged write must be in it).
        node, _, index = self._read(key, f"watch {key!r}", quorum=True)
        current = None if node is None else self._pair(key, node)
        worker = _KeyWatch(self, key, current, index)
        self._start_watch(worker)
        return worker.watch

    def _watch_tree(self, prefix: str) -> Watch[list[KVPair]]:
        pairs, index = self._read_tree(prefix, f"watch_tree {prefix!r}", quorum=True)
        worker = _TreeWatch(self, prefix, pairs, index)
        self._start_watch(worker)
        return worker.watch

    # -- closing ----------------------------------------------------------------------------

    def _close(self) -> None:
        try:
            # On the first failure to reach etcd the rest is left to expire (see
            # Store._release_for_close), so close() takes about one timeout at worst.
            reachable = self._release_for_close(list(self._locks), "etcd")
            with self._mutex:
                ttl_keys = list(self._ttl_keys.values()) if reachable else []
                self._ttl_keys.clear()
            # Delete only what is still our write, within one budget for all of them: a
            # server that stopped answering must not make close() wait 2 s per key. Keys left
            # expire within their TTL, as after a crash.
            deadline = time.monotonic() + self.timeout
            for done, item in enumerate(ttl_keys):
                left = deadline - time.monotonic()
                if left <= 0:
                    log.info(
                        "%s: close: %d TTL keys not deleted in %g s; they expire within their TTL",
                        self,
                        len(ttl_keys) - done,
                        self.timeout,
                    )
                    break
                with contextlib.suppress(PyKVError):
                    self._call(
                        "DELETE",
                        item.path,
                        f"close: delete TTL key {item.key!r}",
                        params={"prevIndex": str(item.index)},
                        timeout=min(left, 2.0),
                    )
        finally:
            self._stop.set()
            self._wake.set()
            with self._poller.lock:
                watches = list(self._poller.watches)
            # Stop both threads first, then wait for them together: a thread stuck in a call
            # ends with it, at the latest after one timeout.
            deadline = time.monotonic() + self.timeout
            self._poller.poll.interrupt()
            for worker in watches:
                worker.watch.close()
            if self._keepalive is not None and self._keepalive is not threading.current_thread():
                self._keepalive.join(timeout=max(0.0, deadline - time.monotonic()))
            self._poller.stop(deadline)
            if self._refreshers is not None:  # idle once the keepalive thread ended
                self._refreshers.shutdown(wait=False)
            self._http.clear()


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)


def _compare_index(reply: _Reply) -> int | None:
    """The current index from a 'Compare failed' cause like ``[12 != 15]``."""
    cause = str(reply.body.get("cause", ""))
    try:
        return int(cause.strip("[]").split("!=")[1].strip())
    except (IndexError, ValueError):
        return None


# -- watch workers ----------------------------------------------------------------------------


class _Poller:
    """Every watch of a store on one long poll of the store's root (recursive), one thread.

    Each event goes to every watch, whose ``_apply`` keeps what concerns it and skips what is
    not past its own index (``after``). A watch that starts behind the poll (its first read
    was older than the poll's position) reads its state again first, so it misses nothing.
    When etcd forgot the poll's position (its history keeps 1000 events) every watch reads its
    state again. ``lock`` serializes the thread's dispatch with adding watches."""

    def __init__(self, store: Etcd2Store) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.watches: list[_WatchWorker] = []
        self.next_index = 0
        self.poll = _Poll()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def add(self, worker: _WatchWorker, index: int) -> None:
        with self.lock:
            if self.poll.stop.is_set():
                raise UnavailableError(f"{worker.what}: the store {self.store} is closed")
            if index + 1 < self.next_index:
                worker.after = worker._resync()  # the poll is past the first read: read again
            else:
                worker.after = index
                if not self.watches:
                    self.next_index = index + 1  # no watch needs what came before
            self.watches.append(worker)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name=f"pykv-etcd2 watch(es) of {self.store}", daemon=True
                )
                self.thread.start()
        self.wake.set()

    def remove(self, worker: _WatchWorker) -> None:
        with self.lock:
            if worker in self.watches:
                self.watches.remove(worker)

    def stop(self, deadline: float) -> None:
        self.poll.interrupt()
        self.wake.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        pause = 0.1
        while not self.poll.stop.is_set():
            try:
                self._once()
                pause = 0.1
            except (UnavailableError, KeyNotFoundError) as exc:
                if self.poll.stop.is_set():
                    return
                log.warning("%s: watching: %s (retrying)", self.store, exc)
                self.poll.stop.wait(pause)
                pause = min(pause * 2, 2.0)
            except Exception as exc:  # anything else ends every watch with the error
                if self.poll.stop.is_set():
                    return
                log.exception("%s: the watch poll failed", self.store)
                error = (
                    exc
                    if isinstance(exc, PyKVError)
                    else UnavailableError(f"watching {self.store} failed: {exc}")
                )
                with self.lock:
                    watches, self.watches = self.watches, []
                    self.thread = None  # the next watch starts a new poll
                for worker in watches:
                    worker.watch._fail(error)
                return

    def _once(self) -> None:
        store = self.store
        with self.lock:
            idle, index = not self.watches, self.next_index
        if idle:
            self.wake.wait(1.0)
            self.wake.clear()
            return
        try:
            event = store._wait(store._node(""), index, True, self.poll, store.timeout, "watch")
        except _IndexCleared:
            log.info("%s: watching: event index cleared, re-reading", store)
            self._resync_all()
            return
        if event is None or self.poll.stop.is_set():
            return  # no answer in time: the next poll goes to the next member
        position = int(event["node"]["modifiedIndex"])
        behind = int(event.get(ETCD_INDEX) or 0) - position
        if behind > RESYNC_BEHIND:
            # Far behind (after an outage): the current state in one read per watch, not one
            # poll per event missed; the watches skip events up to their read.
            log.info("%s: watching: %d events behind, re-reading", store, behind)
            self._resync_all()
            return
        with self.lock:
            for worker in self.watches:
                if position > worker.after:
                    worker.after = position
                    worker._apply(event)
            self.next_index = max(self.next_index, position + 1)

    def _resync_all(self) -> None:
        """Every watch reads its state again; the poll goes on from the oldest read."""
        with self.lock:
            indices = [worker._resync() for worker in self.watches]
            for worker, read in zip(self.watches, indices, strict=True):
                worker.after = read
            if indices:
                self.next_index = min(indices) + 1


class _WatchWorker:
    """The state of one :class:`Watch`, fed by the store's :class:`_Poller`."""

    watch: Watch[Any]

    def __init__(self, store: Etcd2Store, description: str, path: str, index: int) -> None:
        self.store = store
        self.path = path
        self.what = description
        #: the index of the last event applied (or of the last read)
        self.after = index

    def _make_watch(self, description: str) -> None:
        self.watch = Watch(f"{description} on {self.store}", on_close=self._closed)

    def _closed(self) -> None:
        self.store._poller.remove(self)

    def _resync(self) -> int:
        raise NotImplementedError

    def _apply(self, event: dict[str, Any]) -> None:
        raise NotImplementedError


def _covers(dir_path: str, path: str) -> bool:
    return dir_path in ("/", path) or path.startswith(dir_path + "/")


class _KeyWatch(_WatchWorker):
    watch: Watch[KVPair | None]

    def __init__(self, store: Etcd2Store, key: str, current: KVPair | None, index: int) -> None:
        super().__init__(store, f"watch({key!r})", store._node(key), index)
        self._make_watch(f"watch({key!r})")
        self.key = key
        self.leaf = self.path + "/" + VALUE_LEAF
        self.last = current
        self.moving = False
        self.watch._emit(current)

    def _set(self, pair: KVPair | None) -> None:
        if pair != self.last:
            self.last = pair
            self.watch._emit(pair)

    def _resync(self) -> int:
        node, _, index = self.store._read(self.key, self.what, quorum=True)
        pair = None if node is None else self.store._pair(self.key, node)
        if pair is None or self.last is None or pair.value != self.last.value:
            self._set(pair)
        # a refresh of a TTL key changes its revision only: no event for that
        self.moving = False
        return index

    def _apply(self, event: dict[str, Any]) -> None:
        node = event["node"]
        path = str(node.get("key", ""))
        action = event.get("action")
        if action in _DELETES:
            if node.get("dir") or (event.get("prevNode") or {}).get("dir"):
                if _covers(path, self.path):
                    self.moving = False
                    self._set(None)
                return
            if path not in (self.path, self.leaf):
                return
            if action == "compareAndDelete" and _is_moving(event.get("prevNode")):
                self.moving = True  # the value is being moved into path/%value
                return
            self.moving = False
            self._set(None)
            return
        if path not in (self.path, self.leaf) or node.get("dir"):
            return
        text = str(node.get("value", ""))
        if text.startswith(MOVING):
            self.moving = True
            return
        pair = self.store._pair(self.key, node)
        if self.moving and path == self.leaf and self.last is not None:
            self.moving = False
            if pair.value == self.last.value:
                self.last = pair  # the move changed the revision, not the value
                return
        self.moving = False
        self.last = pair
        self.watch._emit(pair)


class _TreeWatch(_WatchWorker):
    """The events below the prefix, handed to the core's tree feed one by one (keys relative
    to the store; each event's position is its order here: this thread sees them in order)."""

    watch: Watch[list[KVPair]]

    def __init__(self, store: Etcd2Store, prefix: str, pairs: list[KVPair], index: int) -> None:
        super().__init__(store, f"watch_tree({prefix!r})", store._node(prefix), index)
        self._make_watch(f"watch_tree({prefix!r})")
        self.prefix = prefix
        self.moving: set[str] = set()
        self.seq = 0
        self.feed = TreeFeed(self.watch, "", 0, pairs, 0)

    def _change(self, key: str, pair: KVPair | None) -> None:
        self.seq += 1
        if pair is None:
            self.feed.apply([Change(self.seq, key, None, self.seq)])
        else:
            self.feed.apply([Change(pair.revision, key, pair.value, self.seq)])

    def _below(self, key: str) -> bool:
        return not self.prefix or key.startswith(self.prefix + "/")

    def _resync(self) -> int:
        pairs, index = self.store._read_tree(self.prefix, self.what, quorum=True)
        self.seq += 1
        self.moving.clear()
        # a refresh of a TTL key changes its revision only: no event for that
        self.feed.reset_relative(pairs, self.seq, resynced=False, values_only=True)
        return index

    def _apply(self, event: dict[str, Any]) -> None:
        node = event["node"]
        path = str(node.get("key", ""))
        action = event.get("action")
        if action in _DELETES and (node.get("dir") or (event.get("prevNode") or {}).get("dir")):
            self._remove_dir(path)
            return
        if node.get("dir"):
            return
        key = self.store._key_of(path)
        if key is None or not self._below(key):
            return
        if action in _DELETES:
            if action == "compareAndDelete" and _is_moving(event.get("prevNode")):
                self.moving.add(key)
                return
            self.moving.discard(key)
            self._change(key, None)
            return
        text = str(node.get("value", ""))
        if text.startswith(MOVING):
            self.moving.add(key)
            return
        pair = self.store._pair(key, node)
        if key in self.moving:
            self.moving.discard(key)
            old = self.feed.tree.get(key)
            if old is not None and old.value == pair.value and path.endswith("/" + VALUE_LEAF):
                self.feed.tree.put(pair)  # the move changed the revision, not the value
                return
        self._change(key, pair)

    def _remove_dir(self, path: str) -> None:
        if _covers(path, self.path):
            gone = [p.key for p in self.feed.tree.pairs()]
        else:
            key = self.store._key_of(path + "/x")
            if key is None:
                return
            base = key.rpartition("/")[0]
            gone = [
                p.key
                for p in self.feed.tree.pairs()
                if p.key == base or p.key.startswith(base + "/")
            ]
        if gone:
            self.seq += 1
            self.feed.apply([Change(self.seq, k, None, self.seq) for k in gone])


# -- locks ------------------------------------------------------------------------------------


class _Etcd2Lock(Lock):
    store: Etcd2Store

    def __init__(self, store: Etcd2Store, key: str, value: bytes, ttl: float) -> None:
        super().__init__(store, key, value, ttl)
        full = node_path(store._path(key))
        self._side = LOCK_DIR + "/" + full[1:].replace("/", "%2F")
        self._seconds = max(1, math.ceil(ttl))
        self._holder = ""
        self._side_index = 0
        self._value_path = ""
        self._value_index = 0
        self._text = encode_value(value)
        self._last_ok = 0.0  # monotonic time the last successful refresh was sent
        self._due = math.inf

    def _acquire(self, timeout: float | None) -> int | None:
        store = self.store
        what = f"lock {self.key!r}"
        deadline = None if timeout is None else time.monotonic() + timeout

        def call_deadline() -> float | None:
            # Calls end with the wait (but get half a second at least, so that a zero timeout
            # still tries once).
            return None if deadline is None else max(deadline, time.monotonic() + 0.5)

        poll = _Poll()
        while True:
            store._check_open()
            holder = uuid.uuid4().hex
            sent = time.monotonic()
            reply = store._call(
                "PUT",
                self._side,
                what,
                params={"prevExist": "false", "ttl": str(self._seconds)},
                value=holder,
                safe=False,
                timeout=store._budget(call_deadline()),
            )
            if reply.code is None:
                node = store._written(reply)
                self._holder, self._side_index = holder, int(node["modifiedIndex"])
                try:
                    written = store._write(
                        self.key, self._text, self._seconds, what=what, deadline=call_deadline()
                    )
                except BaseException:
                    with contextlib.suppress(PyKVError):
                        store._call(
                            "DELETE",
                            self._side,
                            what,
                            params={"prevValue": holder},
                            safe=False,
                            timeout=min(store.timeout, 1.0),
                        )  # else it expires within the TTL: nothing refreshes it
                    raise
                self._value_path = str(written["key"])
                self._value_index = int(written["modifiedIndex"])
                self._last_ok = sent
                if not self._fresh(what):
                    self._give_up(what)
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    continue
                self._due = self._last_ok + self._seconds / 3
                with store._mutex:
                    store._locks.add(self)
                    store._ensure_keepalive()
                store._wake.set()
                return int(node["createdIndex"])
            if reply.code != E_EXISTS:
                raise store._fail(reply, what)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            index = int(reply.body.get("index", reply.index))
            wait = store.timeout if remaining is None else min(remaining, store.timeout)
            # wake when the holder's bookkeeping node is deleted or expires
            with contextlib.suppress(_IndexCleared):
                store._wait(self._side, index + 1, False, poll, max(wait, 0.05), what)

    def _fresh(self, what: str) -> bool:
        """Renew a lock just won until its last confirmed renewal is recent; False when it
        cannot be.

        etcd counts a node's TTL from when the member received the request, and a request can
        wait there for seconds (a leader election after a partition): a lock whose grant took
        that long may expire moments after acquire() returns, before the keepalive thread has
        a chance to renew it or to tell the holder, and another client acquires it meanwhile.
        """
        store = self.store
        while time.monotonic() - self._last_ok > self._seconds / 4:
            sent = time.monotonic()
            if sent >= self._tell_at():
                return False
            try:
                reply = store._refresh(
                    self._side, self._side_index, self._seconds, what, self._tell_at()
                )
            except PyKVError as exc:
                log.info("%s: renewing lock %r just won failed: %s", store, self.key, exc)
                return False
            if reply.code is not None:
                return False
            self._side_index = int(reply.node["modifiedIndex"])
            self._last_ok = sent
            # The value node was written later, so it lives longer; the keepalive thread
            # renews it next (adopting it where it is if this refresh fails).
            with contextlib.suppress(PyKVError):
                reply = store._refresh(
                    self._value_path, self._value_index, self._seconds, what, self._tell_at()
                )
                if reply.code is None:
                    self._value_index = int(reply.node["modifiedIndex"])
        return True

    def _give_up(self, what: str) -> None:
        """Delete the nodes of a lock won too late to be trusted (best effort: else they
        expire within the TTL, since nothing refreshes them)."""
        store = self.store
        with contextlib.suppress(PyKVError):
            store._call(
                "DELETE",
                self._value_path,
                what,
                params={"prevIndex": str(self._value_index)},
                safe=False,
                timeout=min(store.timeout, 1.0),
            )
        with contextlib.suppress(PyKVError):
            store._call(
                "DELETE",
                self._side,
                what,
                params={"prevValue": self._holder},
                safe=False,
                timeout=min(store.timeout, 1.0),
            )
        self._value_path = ""

    def _tell_at(self) -> float:
        """When the lock must count as lost if no renewal succeeded: well before etcd can
        expire its nodes (the send time of the last confirmed refresh plus the TTL)."""
        return self._last_ok + self._seconds * 0.75

    def _renew(self) -> None:
        """Called by the store's keepalive thread. Every call ends by the lost deadline, so
        that the thread is back in time to tell the holder even when etcd hangs."""
        if not self._held or self.lost.is_set():
            return
        store = self.store
        what = f"renew lock {self.key!r}"
        sent = time.monotonic()
        self._due = sent + self._seconds / 3
        tell = self._tell_at()
        if sent >= tell:
            self._mark_lost("it could not be renewed in time")
            return
        try:
            reply = store._refresh(self._side, self._side_index, self._seconds, what, tell)
            if reply.code is not None:
                # Through raft: a member cut off from the others answers from a stale state.
                side = store._call(
                    "GET",
                    self._side,
                    what,
                    params={"quorum": "true"},
                    timeout=store._budget(tell),
                )
                if side.code is not None or side.node.get("value") != self._holder:
                    self._mark_lost(f"its bookkeeping node expired or was deleted ({reply.body})")
                    return
                self._side_index = int(side.node["modifiedIndex"])  # a refresh answered late
                self._due = time.monotonic()
                return
            self._side_index = int(reply.node["modifiedIndex"])
            reply = store._refresh(self._value_path, self._value_index, self._seconds, what, tell)
            if reply.code is not None:
                node, path, _ = store._adopt(self.key, self._text, what, tell, quorum=True)
                if node is None:
                    self._mark_lost("its key was deleted or overwritten")
                    return
                self._value_path, self._value_index = path, int(node["modifiedIndex"])
                self._due = time.monotonic()  # refresh it at its new place right away
            else:
                self._value_index = int(reply.node["modifiedIndex"])
            self._last_ok = sent
        except PyKVError as exc:
            log.warning("%s: renewing lock %r failed: %s", store, self.key, exc)
            self._due = time.monotonic() + min(0.5, self._seconds / 6)
        if time.monotonic() >= self._tell_at():
            self._mark_lost("it could not be renewed in time")

    def _release(self) -> None:
        store = self.store
        what = f"unlock {self.key!r}"
        with store._mutex:
            store._locks.discard(self)
        self._due = math.inf  # not renewed any more: the holder key expires within the TTL
        failed: PyKVError | None = None
        if self._value_path:
            try:
                reply = store._call(
                    "DELETE",
                    self._value_path,
                    what,
                    params={"prevIndex": str(self._value_index)},
                    safe=False,
                )
                if reply.code is None:
                    store._written(reply)
            except UnavailableError:
                raise  # etcd cannot be reached: a second call would wait out the timeout too
            except PyKVError as exc:
                failed = exc
        reply = store._call(
            "DELETE", self._side, what, params={"prevValue": self._holder}, safe=False
        )
        if reply.code is None:
            store._written(reply)
        if failed is not None:
            raise failed
