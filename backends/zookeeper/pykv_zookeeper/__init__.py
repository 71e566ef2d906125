"""``zookeeper://`` (``zk://``) — Apache ZooKeeper, through kazoo.

URL form
    ``zookeeper://[user:password@]h1:2181,h2:2181,h3:2181/prefix?option=value`` (``zk://`` is
    the same; ``zookeeper+tls://`` turns TLS on). The client fails over between the hosts. The
    URL path is the store's prefix (the ``prefix`` option, when given, wins). Keys live at their
    natural path below it, ``/prefix/a/b``, holding the raw value, so ``zkCli.sh get
    /prefix/a/b`` shows what pykv wrote. The default port is 2181.

Options
    ``timeout`` (seconds, default 10): bounds every call, the connection at open included.
    ``session_timeout`` (seconds, default 10): the ZooKeeper session timeout asked for (the
    server clamps it to [2, 20] x its ``tickTime`` unless configured otherwise; keep it inside
    that range, since the lock grace below is computed from the value asked for).
    ``username``/``password`` (or the URL's user info): digest authentication; every node pykv
    creates at or below the prefix (and in its lock space) then gets the ACL ``auth::cdrwa``
    (creator-all), so other identities get ``NoAuth``, which pykv raises as
    :class:`~pykv.PermissionDeniedError`; wrong or missing credentials are reported that way
    when the store opens (ZooKeeper accepts any digest identity and refuses only access).
    ``tls``, ``ca``, ``cert``, ``key``, ``verify``: TLS to the server's ``secureClientPort``
    (Netty connection factory) with a CA bundle and a client certificate. The server's
    certificate must name the host as written in the URL (kazoo alone checks no host name);
    ``verify=false`` turns both checks off, for tests only. A failed handshake is reported
    with its reason (wrong host, unknown CA, refused client certificate). Tested against
    ZooKeeper 3.8.0 with a PEM key store and ``ssl.clientAuth=need``.

Directories and keys
    ZooKeeper nodes always exist as parents of their children, but pykv keys are only the nodes
    written with a value. pykv tells them apart by ZooKeeper's *null* data: parents that pykv
    creates only to hold children carry null data (as ``zkCli.sh create /dir`` does), while a
    key always carries bytes, possibly empty. ``get``/``list``/``watch`` ignore null-data
    nodes. Deleting a key that has children turns it back into such a directory node;
    deleting a leaf also removes the directory nodes above it that became empty.

Capabilities
    kv, atomic, ttl, watch, watch_tree, lock, shared, persistent.

    * Revisions are the node's ``mzxid`` (global, growing with every write). Compare-and-swap
      reads the node, compares its mzxid with ``previous.revision`` and writes with the node's
      ``version``, so a change in between fails with ``BadVersion``, raised as
      :class:`~pykv.KeyModifiedError`. Create-only writes use ``create``.
    * TTL keys are ephemeral nodes of the store's one session, so **ttl maps onto the session
      timeout**: a key written with any ``ttl`` disappears when the store closes (at once) or,
      when its process dies or loses the ensemble, when the server expires the session:
      ``session_timeout`` after the last heartbeat. Choose ``session_timeout`` no longer than
      the shortest ttl you need. If the session expires while the store is open (a long
      partition), pykv keeps the values of its TTL keys in memory and writes them again as
      soon as a new session is established (unless another client wrote the key meanwhile;
      a key this store deletes meanwhile stays deleted, even if the delete races the write).
      A plain ``put`` makes a key persistent again (delete and re-create in one transaction).
    * Ephemeral nodes cannot have children. ``put(key, ..., ttl=)`` (and ``lock``) on a key
      that has children, and writing below a TTL key, raise :class:`~pykv.NotSupportedError`.
    * Watches read the node and re-arm their ZooKeeper watch in the same request, so no change
      is missed (changes between two reads are coalesced into the last state); after every
      reconnect or new session they read again. ``watch_tree`` keeps a watched copy of the
      subtree (a data and a child watch per node) and emits a full sorted snapshot whenever it
      settles after a change.
    * Locks are the ZooKeeper lock recipe: an ephemeral sequential node per contender under
      ``/_pykv_locks/<prefix>/<key>/`` (outside the store's prefix, so ``list`` never shows
      it; these directories are container nodes the server removes once empty); the holder
      then writes its value as an ephemeral node at the key itself. The fencing token is that
      node's ``czxid``, so it grows with every acquisition. ``lost`` is set when the session
      is LOST (expired), when someone else deletes the key, and when the connection stays
      SUSPENDED for more than ``session_timeout / 6``: kazoo suspends at most 2/3 of the
      session timeout after the server last heard from it, and followers report session
      activity to the leader up to half a ``tickTime`` late, so the session may expire a
      little less than 1/3 of the timeout after the suspension; the holder stops trusting its
      lock before that (for any ``session_timeout`` of at least 3 ``tickTime``). A shorter
      suspension is a leader election or a reconnect to another server; the session survives
      those (the new leader renews every session), and with it the lock, which stays held.
      (Curator and kazoo's own advice, "SUSPENDED: stop trusting the lock", would lose every
      lock at every leader election, since followers drop their clients too.) Closing the
      store releases its locks.

Tested server versions
    ZooKeeper 3.8.0 (single node and a three-node ensemble), kazoo 2.11.

TTL slack
    10 s with the default ``session_timeout`` (a TTL key or a dead holder's lock lives until
    its session expires, whatever the ttl), plus up to two ``tickTime`` of the server's expiry
    granularity. With ``session_timeout=S`` the slack is ``S`` minus the ttl.

Other clients
    ``/zookeeper`` and ``/_pykv_locks`` are skipped when the store has no prefix.
"""

from ._store import ZooKeeperOptions, ZooKeeperStore

__all__ = ["ZooKeeperOptions", "ZooKeeperStore"]
