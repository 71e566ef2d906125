"""``consul://`` — pykv on Consul's KV and session HTTP APIs, spoken directly over urllib3.

URL form
    ``consul://[host[:port][,host[:port]...]][/prefix][?option=value...]``, e.g.
    ``consul://10.0.0.1:8500,10.0.0.2:8500/app?token=...``. The default host is
    ``127.0.0.1``, the default port 8500 (8501 for ``consul+tls://``). The URL path is the key
    prefix unless the ``prefix`` option is given. Calls go to the first agent; a connection
    error moves on to the next one (within the call's timeout when the request cannot have
    been sent, or the call is idempotent), and a time-out or a 5xx answer makes the next call
    start at the next agent. Proxy and ``CONSUL_HTTP_*`` environment variables are ignored.

Options
    ``timeout`` (seconds, default 10): bounds every HTTP call, failover included; a blocking
    query waits at most min(timeout, 5 s) plus Consul's jitter on top of it.
    ``prefix``: key prefix. ``token``: ACL token, sent only as the ``X-Consul-Token`` header
    (never in a query string, masked in ``str(store)``); a wrong or insufficient token raises
    :class:`~pykv.PermissionDeniedError`. ``consistent`` (bool, default false): reads in
    Consul's ``consistent`` mode instead of ``default``. TLS: ``consul+tls://`` or
    ``tls=true``, with ``ca`` (CA bundle), ``cert`` and ``key`` (client certificate) and
    ``verify`` (false only for tests).

Capabilities
    All: kv, atomic, ttl, watch, watch_tree, lock, shared, persistent.

    * Revisions are ModifyIndex (a raft index: it grows across all keys).
    * Every write is one transaction: ``delete`` then ``set`` (or ``lock`` by the store's
      TTL session for a TTL write), after the guard of ``atomic_put`` (``check-not-exists``
      or ``check-index``). The ``delete`` frees a key that any session holds (Consul keeps a
      held key's session on a plain write, so a plain PUT would leave a TTL key ephemeral)
      and makes every write change the ModifyIndex (Consul skips a write that changes
      nothing). The price: a write costs a bit more than a bare PUT (see bench/).
      ``delete_tree`` deletes the key and ``prefix/`` (never ``prefixX``).
    * Watches are blocking queries with the last index (``wait`` as above); an index that
      goes backwards restarts from the answer's index; the key's ModifyIndex (the snapshot for
      trees) is compared so unrelated writes make no events. Failed queries are retried with
      back-off on the next agent; a watch fails after nothing succeeded for max(30 s,
      3 x timeout), or at once on a permission error. A closed watch's thread ends with its
      current blocking query (at most 5 s later).
    * TTL keys are held by a session with ``Behavior=delete``, one per TTL value per store
      (not one per key; one session cannot serve two TTLs), renewed every third of its TTL by
      one background thread and destroyed by ``close()``, which deletes the keys at once.
      If Consul invalidates the session anyway (the store was cut off for longer than the
      TTL), a new session is created and the store's TTL keys are written again, unless
      someone wrote them meanwhile; their values are kept in memory for that (as on etcd and
      ZooKeeper). A key this store deletes meanwhile stays deleted, even if the delete races
      the write; while Consul cannot be reached, a background thread retries every 0.5 s.
    * A lock is its key, holding the lock's value, acquired with a session of its own (two
      Lock objects of one store must exclude each other; a session re-acquires what it holds).
      The fencing token is the key's ModifyIndex at acquisition. Release destroys the session
      and Consul deletes the key. Lock-delay is 0 (Consul's default 15 s would block every
      new holder after a holder dies): fencing tokens protect against a stale holder, and the
      contract wants a dead holder's lock free within its TTL.
    * Sessions have no health checks (not even ``serfHealth``): a session must survive the
      failure of the agent it was created on, since the store fails over and keeps renewing.

TTL slack
    Consul invalidates a session up to twice its TTL after the last renewal, so pykv creates
    sessions with half the requested TTL: keys go within the TTL, plus about 1 s
    (``ttl_slack``) for timers and raft. Consul refuses session TTLs below its
    ``session_ttl_min`` (default 10 s): then pykv uses that minimum, and keys and locks with a
    TTL below 2 x session_ttl_min live up to 2 x session_ttl_min (20 s by default) after
    their owner is gone. Lower it in the server configuration, e.g. ``session_ttl_min = "1s"``
    (HCL) or ``"session_ttl_min": "1s"`` (JSON). After a leader change the new leader restarts
    every session timer, so a dead owner's keys may live one more TTL.
    A lock holder sets ``lost`` when renewals fail for 0.75 x its TTL (Consul drops the
    session after the TTL).

Service catalog
    ``ConsulStore`` implements :class:`pykv.discovery.CatalogPublisher` (used by
    ``pykv-registrar --consul-catalog``) on the agent API, through the same transport (token
    header, timeout, agent failover, error mapping) as the KV calls:

    * ``catalog_register(endpoint, ttl=..., checks=..., deregister_critical_after=...)``:
      ``PUT /v1/agent/service/register?replace-existing-checks=true`` with ``ID`` = the
      endpoint id, ``Name`` = its service, ``Address``, ``Port``, ``Tags``, ``Meta`` = its
      metadata (pairs Consul refuses, e.g. keys outside ``[a-zA-Z0-9_-]``, are left out and
      logged), and the checks: ``service:<id>:ttl`` (a TTL check, registered ``passing``,
      with ``DeregisterCriticalServiceAfter``), plus ``service:<id>:http`` / ``:tcp`` from the
      ``CatalogCheck`` objects (``Interval``, ``Timeout``; they start ``critical`` until
      Consul first runs them, and do not carry ``DeregisterCriticalServiceAfter``: a failing
      application stays listed as critical, only a silent publisher gets it removed).
      Consul's floor for ``DeregisterCriticalServiceAfter`` is 1 min, and its reaper runs
      every 30 s.
    * ``catalog_pass_ttl(id)``: ``PUT /v1/agent/check/pass/service:<id>:ttl``. When the agent
      does not know the check (after a failover to another agent, or Consul reaped the service
      while critical) and this store registered it, it is registered again on the current
      agent; otherwise :class:`~pykv.KeyNotFoundError`.
    * ``catalog_deregister(id)``: ``PUT /v1/agent/service/deregister/<id>``; unknown: no-op.

    Agent services live on the agent they were registered with, not in the KV store: they
    ignore the store's prefix, and ``close()`` leaves them (their TTL check turns critical
    within the TTL, and Consul removes them after ``deregister_critical_after``). A
    registration left on an agent the store failed over from does the same.
    A token needs ``service:write`` on the service name (ACLs on) to register.

Tested server versions
    Consul 1.8.7 (single server and three-server cluster), with urllib3 2.x.
"""

from ._lock import ConsulLock
from ._store import ConsulOptions, ConsulStore

__all__ = ["ConsulLock", "ConsulOptions", "ConsulStore"]
