"""``zookeeper://`` (``zk://``) — Apache ZooKeeper, through kazoo.

URL form
    ``zookeeper://[user:password@]h1:2181,h2:2181,h3:2181/prefix?option=value`` (``zk://`` is
    the same; ``zookeeper+tls://`` turns TLS on). The client fails over between the hosts. The
    URL path is the store's prefix (the ``prefix`` option, when given, wins). Keys live at their
    natural path below it, ``/prefix/a/b``, holding the raw value, so ``zkCli.sh get
    /prefix/a/b`` shows what pykv wrote. The default port is 2181.

Options
    ``timeout`` (seconds, default 10): bounds every call, the connection at open included.
    ``session_timeout`` (seconds, unset by default): unset, every TTL gets a session as long
    as itself (see TTL keys below), and reads, plain writes and watches use a main session of
    10 s. Set, one session of that length holds everything, TTL keys and locks included: the
    ttl asked is then not honoured (a dead owner's keys and locks live ``session_timeout``
    whatever their ttl), but locks survive leader elections (see Locks).
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
    * TTL keys are ephemeral nodes, and a ZooKeeper session's timeout is how long they outlive
      a dead owner, so **each TTL class has a session of its own**, opened on first use and
      shared by every key and lock of that class: its timeout is the ttl rounded down (to
      whole seconds below a minute, whole minutes above; 1 s at least), so a key of
      ``ttl=T`` disappears when the store closes (at once) or, when its process dies or loses
      the ensemble, at most ``T`` plus the slack below after the last heartbeat. Moving a key
      to another ttl moves its node to that class's session. The server clamps every session
      timeout to its [``minSessionTimeout``, ``maxSessionTimeout``] (by default [2, 20] x
      ``tickTime``, i.e. [4 s, 40 s]): a ttl below the minimum lives as long as the minimum
      (**the floor**; pykv reads the timeout granted, logs a warning when it is more than
      asked, and ``store.session_timeout_for(ttl)`` returns it), one above the maximum is
      shortened to it. If a class's session expires while the store is open (a long
      partition), pykv keeps the values of its TTL keys in memory and writes them again on
      that class's new session as soon as it is established (unless another client wrote the
      key meanwhile; a key this store deletes meanwhile stays deleted, even if the delete
      races the write); the other classes are not touched. A plain ``put`` makes a key
      persistent again (delete and re-create in one transaction).
    * Ephemeral nodes cannot have children. ``put(key, ..., ttl=)`` (and ``lock``) on a key
      that has children, and writing below a TTL key, raise :class:`~pykv.NotSupportedError`.
    * Watches read the node and re-arm their ZooKeeper watch in the same request, so no change
      is missed (changes between two reads are coalesced into the last state); after every
      reconnect or new session they read again. ``watch_tree`` keeps a watched copy of the
      subtree (a data and a child watch per node) and emits a full sorted snapshot whenever it
      settles after a change.
    * Locks are the ZooKeeper lock recipe: an ephemeral sequential node per contender under
      ``/_pykv_locks/<prefix>/<key>/`` (outside the store's prefix, so ``list`` never shows
      it; these directories are container nodes the server removes once empty), on the
      session of the lock's ttl class; the holder then writes its value as an ephemeral node
      at the key itself. The fencing token is that node's ``czxid``, so it grows with every
      acquisition. Queue nodes are named ``<uuid>-lock-<sequence>``, the uuid new for every
      acquisition: a create whose answer is lost with its connection may still have made the
      node, so the acquisition looks for it by that name after reconnecting (and never waits
      behind a second node of its own), and an acquisition that gives up (its timeout, an
      error) has every node of that name deleted, in the background if the connection is
      down. ``acquire(timeout)`` bounds every round trip, the wait for a reconnection and the
      opening of the class's session by the timeout (and each by the store's ``timeout``).
      ``lost`` is set when the session is LOST (expired), when someone else deletes or
      replaces the key, when the watch on the key cannot be armed again (without it nothing
      would tell the holder), and when the connection is SUSPENDED: at once on a ttl class's
      session, since it is as short as the ttl and kazoo suspends only 2/3 of the timeout
      after the server last heard from it (so a leader election, which suspends every client,
      loses the locks held across it); after ``session_timeout / 6`` on the shared session of
      ``session_timeout=S``: followers report session activity to the leader up to half a
      ``tickTime`` late, so the session may expire a little less than S/3 after the
      suspension, and S/6 stays ahead of it for any S of at least 3 ``tickTime`` (S is the
      timeout granted); a shorter suspension is a leader election or a reconnect to another
      server, which the session and the lock survive. A ``release()`` that fails (the
      connection lost for longer than the store's timeout) raises, but does not leave the
      lock taken: pykv keeps deleting its nodes, the key only while it is still the node this
      lock wrote, as soon as the connection is back (or the session's expiry removes them).
      A lock marked lost gives its place up the same way, so it never keeps others out.
      Closing the store releases its locks.

Tested server versions
    ZooKeeper 3.8.0 (single node and a three-node ensemble), kazoo 2.11.

TTL slack
    A TTL key or a dead holder's lock of ``ttl=T`` is removed when its session expires: the
    server expires a session in ``tickTime`` buckets, up to one ``tickTime`` after its
    timeout, and up to half a ``tickTime`` more when the owner's last heartbeat reached a
    follower. The declared ``ttl_slack`` is 2 s, which holds for a ``tickTime`` up to 1.3 s
    (the test servers run 1 s); with ZooKeeper's default ``tickTime`` of 2 s it is 3 s. The
    floor: a ``T`` below the server's ``minSessionTimeout`` (4 s by default) lives that
    minimum plus the slack. With ``session_timeout=S`` set, the slack is ``S`` minus the ttl,
    plus the above.

Other clients
    ``/zookeeper`` and ``/_pykv_locks`` are skipped when the store has no prefix.
"""

from ._store import ZooKeeperOptions, ZooKeeperStore

__all__ = ["ZooKeeperOptions", "ZooKeeperStore"]
