"""``etcd://`` (v3 API) and ``etcd2://`` (v2 API) — the pykvstore-etcd driver distribution.

etcd v3: ``etcd://``, ``etcd3://`` (:class:`EtcdStore`)
=======================================================

URL form
    ``etcd://[user:password@]host1:2379[,host2:2379...][/prefix][?option=value...]``;
    ``etcd3://`` is the same store, ``etcd+tls://`` (or ``?tls=true``) speaks TLS. The port
    defaults to 2379. A call that finds its endpoint unavailable (refused, no leader, leader
    changed) is retried on the next endpoint, with a short backoff, within the call's timeout;
    with several endpoints one attempt gets at most 2 s, so a member that lost its leader and
    holds requests is left for another. Compare-and-swap writes are retried only when etcd
    surely did not get them (else the retry could report a conflict with itself): an attempt
    with an unknown outcome raises :class:`~pykv.UnavailableError` or
    :class:`~pykv.OperationTimeoutError`.

Options
    ``timeout`` (seconds, default 10) bounds every call, retries included; ``prefix`` (or the
    URL path) scopes every key; ``username``/``password`` (or ``user:password@`` in the URL)
    log in to etcd's auth (the token is renewed when it expires); ``tls``, ``ca``, ``cert``,
    ``key`` for TLS and client certificates (``verify=false`` is not available on gRPC: pass
    the CA with ``ca=``).

Capabilities
    All: kv, atomic, ttl, watch, watch_tree, lock, shared, persistent.

    * Revisions are etcd mod revisions; compare-and-swap runs in transactions (create revision
      0 for create-only, mod revision otherwise; a failed transaction reads the key to tell
      :class:`~pykv.KeyNotFoundError` from :class:`~pykv.KeyModifiedError`).
    * TTL keys: one lease per store and TTL (whole seconds), kept alive by one background
      thread at a third of the TTL. If etcd expires the lease anyway (the store was cut off for
      longer than the TTL), a new lease is granted and the store's TTL keys are written again,
      unless someone else wrote them meanwhile; their values are kept in memory for that. A
      key this store deletes meanwhile stays deleted, even if the delete races the write; keys
      that could not be written yet are retried with each renewal.
      ``close()`` revokes the leases, so TTL keys vanish at once.
    * Watches read the current state and watch from the revision after that read (no gap).
      Each watch is a supervised gRPC stream: after a server restart, a leader change or an
      endpoint failure it resumes from the revision after the last event seen; when that
      revision was compacted it re-reads the state, emits what changed and goes on.
      ``watch_tree`` snapshots are built from the event stream, one per batch of events.
    * Locks: the lock key holds the holder's value; contenders queue as keys under
      ``\\x00pykv-locks/`` (never listed or watched by pykv), ordered by create revision, each
      watching only its predecessor (no polling). Each acquisition has a lease of its own for
      its queue key and lock key: a free lock is taken with a lease grant and one transaction
      (queue up and create the lock key), and released by revoking the lease. The fencing
      token is the create revision of the lock key. ``lost`` is set when the lock key is
      deleted or overwritten, when the lease expires, or when no renewal was confirmed for
      nearly the whole TTL (counted from when the last confirmed renewal was sent; the lock's
      key is checked with every renewal, at a third of the TTL); from then on the lease counts
      as dead: it is no longer renewed but revoked, and a lock is never granted on it. A
      waiter never passes a holder that has not been told: the holder's keys go only after
      ``lost`` is set. A release that cannot reach etcd raises, and lets the lease go (still
      revoking it in the background), so etcd deletes the lock key within the TTL.
      ``acquire(timeout=T)`` returns within T (each call gets at least 0.5 s).
    * Each watch is one gRPC stream and one thread; a store with thousands of watches should
      rather watch a common prefix with ``watch_tree``.

Tested server versions
    etcd 3.4.23 (Debian 12: single node, three-node cluster, auth, TLS with client
    certificates) and etcd 3.5.16 (Debian 13: the conformance suite on a single node).

TTL slack
    2 s: lease TTLs are whole seconds rounded up (etcd's minimum is 2 s with its default
    tuning), and etcd looks for expired leases every 0.5 s.

etcd v2: ``etcd2://`` (``Etcd2Store``)
======================================

The same contract on the v2 HTTP API, for etcd up to 3.5 started with ``--enable-v2``. The v2
API is gone from etcd 3.6. See :mod:`pykv_etcd._v2` for its URL form, options, value encoding,
capabilities and TTL slack.
"""

from __future__ import annotations

from typing import Any

from ._v3 import EtcdOptions, EtcdStore

__all__ = ["Etcd2Options", "Etcd2Store", "EtcdOptions", "EtcdStore"]


def __getattr__(name: str) -> Any:
    # The v2 store loads on demand, so the v3 store never pays for (or depends on) it.
    if name in ("Etcd2Store", "Etcd2Options"):
        from . import _v2

        return getattr(_v2, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
