"""The scale simulation: many hosts publish endpoints through pykv.discovery, watchers follow.

Run it through ``scripts/scale-sim.sh``, which starts a 3-node cluster per backend in a private
network namespace and calls this with the cluster's addresses and server PIDs.

How hosts are simulated: each host is one pykv store of its own (its own connections, its own
session or lease, its own keepalive thread) with a ``Registry`` that registers ``--endpoints``
endpoints with ``ttl=--ttl``: service ``svcNN`` (one per endpoint slot), id ``hostNNNN``. The
hosts are spread over ``--host-procs`` worker processes (default 4), each opening its share of
the stores from a small thread pool (hosts booting in parallel). Host ``h`` lists the cluster's
nodes starting at node ``h mod 3``, so the hosts spread over the nodes. Watchers are
``--watchers`` stores, each with one ``Registry.watch()`` of the whole prefix (every service)
followed by a thread of its own, spread over ``--watcher-procs`` processes (default 2).

Phases, in order: publish (time from the start signal until every worker has every endpoint
acknowledged); a quiet window of ``--duration`` seconds with only the hosts connected, over
which the servers' own metrics count keepalive requests; open the watchers (one at a time per
process, each first list holding every endpoint); ``--changes`` changes, one every
``--change-interval`` seconds (default 1), half re-registering an endpoint with a new port,
half deregistering one; per change, the time from the write's start until the last watcher's
list showed it. Process CPU and RSS come from /proc.

Every process uses ``time.monotonic()``, which is one clock for the whole machine on Linux.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pykv
from pykv.discovery import Endpoint, Registry

SCHEMES = {"etcd": "etcd", "etcd2": "etcd2", "consul": "consul", "zookeeper": "zk"}
CHANGE_PORT = 40000  # change k re-registers with port CHANGE_PORT + k: never an initial port
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def host_url(scheme: str, nodes: Sequence[str], host: int) -> str:
    """The URL of host ``host``: every node, starting at node ``host mod len(nodes)``."""
    first = host % len(nodes)
    return f"{scheme}://{','.join([*nodes[first:], *nodes[:first]])}"


def endpoint(host: int, slot: int, port: int | None = None) -> Endpoint:
    return Endpoint(
        f"svc{slot:02d}",
        f"host{host:04d}",
        f"10.{host // 65536 % 256}.{host // 256 % 256}.{host % 256}",
        8000 + slot if port is None else port,
    )


# ---- /proc ----------------------------------------------------------------------------------


@dataclass
class Usage:
    cpu: float  # seconds of CPU (user + system) since the process started
    rss: int  # bytes


def usage(pid: int) -> Usage | None:
    """CPU and RSS of ``pid`` and its threads; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # ended, not yet reaped
        return None
    return Usage((int(fields[11]) + int(fields[12])) / TICKS, int(statm.split()[1]) * PAGE)


def total(pids: Sequence[int]) -> Usage:
    found = [u for u in map(usage, pids) if u is not None]
    return Usage(sum(u.cpu for u in found), sum(u.rss for u in found))


class Sampler(threading.Thread):
    """Samples the CPU and RSS of process groups every ``period`` seconds, with phase marks."""

    def __init__(self, groups: dict[str, list[int]], period: float = 2.0) -> None:
        super().__init__(daemon=True, name="sampler")
        self.groups = groups
        self.period = period
        self.t0 = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.phases: list[tuple[str, float]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def mark(self, phase: str) -> None:
        self.phases.append((phase, round(time.monotonic() - self.t0, 2)))
        log(f"phase: {phase}")

    def run(self) -> None:
        while not self.stop.wait(self.period):
            with self.lock:
                row: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 2)}
                for name, pids in self.groups.items():
                    found = [x for x in map(usage, pids) if x is not None]
                    row[name] = {
                        "cpu": sum(x.cpu for x in found),
                        "rss": sum(x.rss for x in found),
                        "n": len(found),  # processes alive: a change makes the delta meaningless
                    }
                self.samples.append(row)


# ---- the servers' own metrics ---------------------------------------------------------------


def http_get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as reply:  # loopback URLs only
        return str(reply.read().decode())


def http_post(url: str, body: bytes, timeout: float = 10.0) -> str:
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return str(reply.read().decode())


PROM_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def prometheus(text: str, name: str, labels: str = "") -> float:
    """The sum of the samples of metric ``name`` (whose labels contain ``labels``)."""
    found = 0.0
    for line in text.splitlines():
        match = PROM_LINE.match(line)
        if match and match.group(1) == name and labels in (match.group(2) or ""):
            found += float(match.group(3))
    return found


def zk_command(node: str, command: str, timeout: float = 10.0) -> str:
    import socket

    host, port = node.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(command.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def mntr(node: str) -> dict[str, str]:
    pairs = (line.split("\t", 1) for line in zk_command(node, "mntr").splitlines() if "\t" in line)
    return {k: v for k, v in pairs}


def server_counters(backend: str, nodes: Sequence[str]) -> dict[str, float]:
    """Cumulative request counters summed over the cluster's nodes (what keepalives move)."""
    counters: dict[str, float] = {}

    def add(name: str, value: float) -> None:
        counters[name] = counters.get(name, 0.0) + value

    for node in nodes:
        if backend == "etcd":
            text = http_get(f"http://{node}/metrics")
            add(
                "lease keepalive messages",
                prometheus(text, "grpc_server_msg_received_total", 'grpc_method="LeaseKeepAlive"'),
            )
            add(
                "lease grants",
                prometheus(text, "grpc_server_handled_total", 'grpc_method="LeaseGrant"'),
            )
            add("grpc messages", prometheus(text, "grpc_server_msg_received_total"))
        elif backend == "etcd2":
            stats = json.loads(http_get(f"http://{node}/v2/stats/store"))
            if node == nodes[0]:  # every member applies every write: one member counts them
                for name in (
                    "compareAndSwapSuccess",
                    "compareAndSwapFail",
                    "setsSuccess",
                    "setsFail",
                    "updateSuccess",
                    "updateFail",
                    "createSuccess",
                    "createFail",
                ):
                    add(f"v2 {name}", float(stats.get(name, 0)))
                add(
                    "v2 writes",
                    sum(
                        float(stats.get(k, 0))
                        for k in stats
                        if k.endswith(("Success", "Fail")) and "get" not in k and "watch" not in k
                    ),
                )
        elif backend == "consul":
            text = http_get(f"http://{node}/v1/agent/metrics?format=prometheus")
            renew = 0.0
            requests = 0.0
            for line in text.splitlines():
                match = PROM_LINE.match(line)
                if not match:
                    continue
                name = match.group(1)
                # Consul 1.8 names its HTTP timers per method and path (the session id in it):
                # consul_http_PUT_v1_session_renew_<id>_count; counts are the requests.
                if name.startswith("consul_http_") and name.endswith("_count"):
                    requests += float(match.group(3))
                    if name.startswith("consul_http_PUT_v1_session_renew"):
                        renew += float(match.group(3))
            add("session renew requests", renew)
            add("http requests", requests)
        else:
            stats = mntr(node)
            add("packets received", float(stats.get("zk_packets_received", 0)))
            add("alive connections", float(stats.get("zk_num_alive_connections", 0)))
            if "zk_global_sessions" in stats and stats.get("zk_server_state") == "leader":
                add("global sessions", float(stats["zk_global_sessions"]))
    return counters


def sessions(backend: str, nodes: Sequence[str]) -> float | None:
    """How many sessions or leases the cluster holds now; None where there are none."""
    if backend == "etcd":
        reply = json.loads(http_post(f"http://{nodes[0]}/v3/lease/leases", b"{}"))
        return float(len(reply.get("leases", [])))
    if backend == "consul":
        return float(len(json.loads(http_get(f"http://{nodes[0]}/v1/session/list"))))
    if backend == "zookeeper":
        for node in nodes:
            stats = mntr(node)
            if stats.get("zk_server_state") == "leader" and "zk_global_sessions" in stats:
                return float(stats["zk_global_sessions"])
        # else count the connections: one per session
        return sum(float(mntr(node).get("zk_num_alive_connections", 0)) for node in nodes)
    return None


# ---- worker processes -----------------------------------------------------------------------


def send(stream: IO[str], message: dict[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def exit_with_parent() -> None:
    """End this worker when the controller ends, even in the middle of a phase."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def hosts_worker(args: argparse.Namespace) -> None:
    """Open ``--count`` hosts from ``--first``, register, then obey change commands on stdin."""
    exit_with_parent()
    nodes = args.urls.split(",")
    scheme = SCHEMES[args.backend]
    stores: dict[int, pykv.Store] = {}
    registries: dict[int, Registry] = {}
    lock = threading.Lock()

    def publish(host: int) -> None:
        store = pykv.open_store(host_url(scheme, nodes, host), timeout=args.timeout)
        registry = Registry(store)
        for slot in range(args.endpoints):
            registry.register(endpoint(host, slot), ttl=args.ttl)
        with lock:
            stores[host] = store
            registries[host] = registry

    send(sys.stdout, {"ready": True})
    sys.stdin.readline()  # the start signal
    started = time.monotonic()
    errors: list[str] = []
    with ThreadPoolExecutor(args.threads) as pool:
        for future in [pool.submit(publish, h) for h in range(args.first, args.first + args.count)]:
            try:
                future.result()
            except Exception as exc:  # reported to the controller
                errors.append(f"{type(exc).__name__}: {exc}")
    send(
        sys.stdout,
        {
            "published": time.monotonic() - started,
            "hosts": len(stores),
            "errors": errors[:5],
            "error_count": len(errors),
        },
    )
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        host, slot, k = command["host"], command["slot"], command["k"]
        t0 = time.monotonic()
        error = None
        try:
            if command["op"] == "update":
                registries[host].register(endpoint(host, slot, CHANGE_PORT + k), ttl=args.ttl)
            else:
                registries[host].deregister(endpoint(host, slot))
        except Exception as exc:  # reported to the controller
            error = f"{type(exc).__name__}: {exc}"
        send(sys.stdout, {"k": k, "t0": t0, "t1": time.monotonic(), "error": error})
    for store in stores.values():
        with contextlib.suppress(Exception):
            store.close()


def visible(endpoints: list[Endpoint], change: dict[str, Any]) -> bool:
    """Whether a (sorted) list shows ``change``: the new port, or the endpoint gone."""
    wanted = (change["service"], change["id"])
    i = bisect.bisect_left(endpoints, wanted, key=lambda e: (e.service, e.id))
    found = i < len(endpoints) and (endpoints[i].service, endpoints[i].id) == wanted
    if change["op"] == "delete":
        return not found
    return found and endpoints[i].port == change["port"]


def watchers_worker(args: argparse.Namespace) -> None:
    """``--count`` watchers of the whole prefix; report when each saw each planned change."""
    exit_with_parent()
    nodes = args.urls.split(",")
    scheme = SCHEMES[args.backend]
    plan: list[dict[str, Any]] = json.loads(Path(args.plan).read_text())
    seen = [[math.nan] * len(plan) for _ in range(args.count)]
    opened = [math.nan] * args.count
    took = [math.nan] * args.count  # each watcher's own opening time
    held = [0] * args.count  # how many endpoints its first list held
    dead = [False] * args.count  # its watch failed
    events = [0] * args.count
    errors: list[str] = []
    stop = threading.Event()
    started = time.monotonic()

    # Watchers open --open-concurrency at a time per process, as hosts starting one after
    # another would: 25 opening at once in one process (each reading and parsing every
    # endpoint, all under one GIL) made etcd's watch_tree calls pass their 30 s timeout.
    opening = threading.Semaphore(args.open_concurrency)

    def follow(w: int) -> None:
        host = args.first + w
        holding = opening.acquire()
        began = time.monotonic()
        try:
            with pykv.open_store(host_url(scheme, nodes, host), timeout=args.timeout) as store:
                watch = Registry(store).watch()
                pending = set(range(len(plan)))
                for endpoints in watch.follow(stop):
                    now = time.monotonic()
                    events[w] += 1
                    if math.isnan(opened[w]):  # the first list: what the store holds now
                        held[w] = len(endpoints)
                        opened[w] = now - started
                        took[w] = now - began
                        opening.release()
                        holding = False
                    for k in [k for k in pending if visible(endpoints, plan[k])]:
                        seen[w][k] = now
                        pending.discard(k)
                watch.close()
        except Exception as exc:  # reported to the controller
            errors.append(f"watcher {host}: {type(exc).__name__}: {exc}")
            dead[w] = True
        finally:
            if holding:
                opening.release()

    before = usage(os.getpid())
    threads = [threading.Thread(target=follow, args=(w,), daemon=True) for w in range(args.count)]
    for t in threads:
        t.start()
    send(sys.stdout, {"started": True, "rss_before": before.rss if before else 0})
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "status":
            send(
                sys.stdout,
                {
                    "opened": sum(not math.isnan(o) for o in opened),
                    "seen": sum(not math.isnan(s) for row in seen for s in row),
                    "errors": errors[:5],
                },
            )
        elif command["op"] == "quit":
            break
    stop.set()
    for t in threads:
        t.join(timeout=5)
    send(
        sys.stdout,
        {
            "seen": seen,
            "opened": opened,
            "took": took,
            "held": held,
            "dead": dead,
            "events": events,
            "errors": errors,
        },
    )


# ---- the controller -------------------------------------------------------------------------


class Worker:
    """A worker process of this script, talking JSON lines on its stdin and stdout."""

    def __init__(
        self, role: str, args: argparse.Namespace, first: int, count: int, extra: Sequence[str] = ()
    ) -> None:
        command = [
            sys.executable,
            __file__,
            role,
            "--backend",
            args.backend,
            "--urls",
            args.urls,
            "--first",
            str(first),
            "--count",
            str(count),
            "--ttl",
            str(args.ttl),
            "--endpoints",
            str(args.endpoints),
            "--hosts",
            str(args.hosts),
            "--timeout",
            str(args.timeout),
            *extra,
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.first = first
        self.count = count

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        send(self.process.stdin, message)

    def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.pid} ended (exit {self.process.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send({"op": "quit"})
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def wait_ready(
    scheme: str, nodes: Sequence[str], pids: Sequence[int], limit: float = 120.0
) -> None:
    deadline = time.monotonic() + limit
    while True:
        gone = [pid for pid in pids if usage(pid) is None]
        if gone:
            raise RuntimeError(f"server processes {gone} ended before the cluster was ready")
        try:
            with pykv.open_store(host_url(scheme, nodes, 0), timeout=5) as store:
                store.put("scale-ready", "1")
                store.delete("scale-ready")
            return
        except pykv.PyKVError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def split(total_count: int, parts: int) -> Iterator[tuple[int, int]]:
    first = 0
    for i in range(parts):
        count = total_count // parts + (1 if i < total_count % parts else 0)
        if count:
            yield first, count
        first += count


def controller(args: argparse.Namespace) -> None:
    nodes = args.urls.split(",")
    scheme = SCHEMES[args.backend]
    server_pids = [int(p) for p in args.server_pids.split(",") if p]
    interval = args.ttl / 3
    duration = args.duration if args.duration is not None else 3 * interval
    result: dict[str, Any] = {
        "backend": args.backend,
        "hosts": args.hosts,
        "endpoints": args.endpoints,
        "watchers": args.watchers,
        "ttl": args.ttl,
        "host_procs": args.host_procs,
        "watcher_procs": args.watcher_procs,
        "window": duration,
        "findings": [],
    }
    log(f"{args.backend}: waiting for the cluster {args.urls}")
    wait_ready(scheme, nodes, server_pids)
    sampler = Sampler({"servers": server_pids, "hosts": [], "watchers": []})
    sampler.start()

    # Publish.
    hosts = [
        Worker("_hosts", args, first, count, ["--threads", str(args.threads)])
        for first, count in split(args.hosts, args.host_procs)
    ]
    for w in hosts:
        w.receive()
    sampler.groups["hosts"] = [w.pid for w in hosts]
    servers_before = total(server_pids)
    sampler.mark("publish")
    started = time.monotonic()
    for w in hosts:
        w.send({"op": "start"})
    replies = [w.receive() for w in hosts]
    result["publish_s"] = time.monotonic() - started
    result["publish_worker_s"] = [r["published"] for r in replies]
    result["publish_server_cpu_s"] = total(server_pids).cpu - servers_before.cpu
    failed = sum(r["error_count"] for r in replies)
    result["publish_failed_hosts"] = failed
    if failed:
        samples = [e for r in replies for e in r["errors"]][:5]
        result["findings"].append(f"{failed} hosts failed to publish: {samples}")
        log(f"{failed} hosts failed to publish, e.g. {samples}")
    with pykv.open_store(host_url(scheme, nodes, 0), timeout=60) as store:
        listed = len(Registry(store).all_endpoints())
    result["listed_after_publish"] = listed
    log(f"published {listed} endpoints in {result['publish_s']:.1f} s")

    # The quiet window: only the hosts' keepalives reach the servers.
    sampler.mark("keepalive window")
    time.sleep(min(5.0, interval))
    counters_before = server_counters(args.backend, nodes)
    servers_before, hosts_before = total(server_pids), total([w.pid for w in hosts])
    window_start = time.monotonic()
    time.sleep(duration)
    counters_after = server_counters(args.backend, nodes)
    window = time.monotonic() - window_start
    servers_after, hosts_after = total(server_pids), total([w.pid for w in hosts])
    deltas = {k: counters_after[k] - counters_before.get(k, 0.0) for k in counters_after}
    result["window_s"] = window
    result["counter_deltas"] = deltas
    keepalive_key = {
        "etcd": "lease keepalive messages",
        "etcd2": "v2 writes",
        "consul": "session renew requests",
        "zookeeper": "packets received",
    }
    per_host = deltas[keepalive_key[args.backend]] / args.hosts / (window / interval)
    result["keepalive_metric"] = keepalive_key[args.backend]
    result["keepalive_per_host_per_interval"] = per_host
    result["all_requests_per_host_per_interval"] = {
        k: v / args.hosts / (window / interval) for k, v in deltas.items()
    }
    result["server_cpu_idle_cores"] = (servers_after.cpu - servers_before.cpu) / window
    result["hosts_cpu_idle_cores"] = (hosts_after.cpu - hosts_before.cpu) / window
    result["hosts_rss_bytes"] = hosts_after.rss
    result["server_rss_bytes"] = servers_after.rss
    held = sessions(args.backend, nodes)
    result["sessions"] = held
    result["sessions_per_store"] = None if held is None else held / args.hosts
    log(
        f"keepalive: {per_host:.2f} {keepalive_key[args.backend]} per host per TTL/3; "
        f"sessions/leases {held}; server CPU {result['server_cpu_idle_cores']:.2f} cores"
    )

    # Watchers.
    rng = random.Random(13)
    targets = rng.sample(
        [(h, s) for h in range(args.hosts) for s in range(args.endpoints)], args.changes
    )
    plan: list[dict[str, Any]] = [
        {
            "k": k,
            "host": h,
            "slot": s,
            "service": endpoint(h, s).service,
            "id": endpoint(h, s).id,
            "op": "update" if k % 2 == 0 else "delete",
            "port": CHANGE_PORT + k,
        }
        for k, (h, s) in enumerate(targets)
    ]
    plan_path = Path(args.out) / f".scale-plan-{args.backend}-{os.getpid()}.json"
    plan_path.write_text(json.dumps(plan))
    sampler.mark("watchers open")
    opening = time.monotonic()
    watchers = [
        Worker(
            "_watchers",
            args,
            args.hosts + first,
            count,
            ["--plan", str(plan_path), "--open-concurrency", str(args.open_concurrency)],
        )
        for first, count in split(args.watchers, args.watcher_procs)
    ]
    starts = [w.receive() for w in watchers]
    sampler.groups["watchers"] = [w.pid for w in watchers]
    rss_base = sum(s["rss_before"] for s in starts)
    deadline = time.monotonic() + args.open_timeout
    while True:
        for w in watchers:
            w.send({"op": "status"})
        status = [w.receive() for w in watchers]
        opened = sum(s["opened"] for s in status)
        werrors = [e for s in status for e in s["errors"]]
        if opened == args.watchers or werrors or time.monotonic() > deadline:
            break
        time.sleep(1)
    result["watchers_open_s"] = time.monotonic() - opening
    result["watchers_opened"] = opened
    if opened < args.watchers:
        result["findings"].append(
            f"only {opened} of {args.watchers} watchers had the full list after "
            f"{result['watchers_open_s']:.0f} s; errors: {werrors[:3]}"
        )
    log(f"{opened} watchers open in {result['watchers_open_s']:.1f} s")
    time.sleep(2)
    w_usage = total([w.pid for w in watchers])
    result["watcher_rss_bytes"] = w_usage.rss
    result["watcher_rss_per_watcher_bytes"] = (w_usage.rss - rss_base) / args.watchers
    idle_start = time.monotonic()
    time.sleep(min(10.0, duration))
    w_idle = total([w.pid for w in watchers])
    result["watcher_idle_cpu_cores"] = (w_idle.cpu - w_usage.cpu) / (time.monotonic() - idle_start)

    # Changes.
    sampler.mark("changes")
    owner = {h: w for w in hosts for h in range(w.first, w.first + w.count)}
    w_before, s_before = total([w.pid for w in watchers]), total(server_pids)
    done: dict[int, dict[str, Any]] = {}
    change_start = time.monotonic()
    for change in plan:
        due = change_start + change["k"] * args.change_interval
        time.sleep(max(0.0, due - time.monotonic()))
        worker = owner[change["host"]]
        worker.send(
            {"op": change["op"], "host": change["host"], "slot": change["slot"], "k": change["k"]}
        )
        done[change["k"]] = worker.receive()
    deadline = time.monotonic() + args.converge_timeout
    while time.monotonic() < deadline:
        for w in watchers:
            w.send({"op": "status"})
        if sum(w.receive()["seen"] for w in watchers) >= args.watchers * len(plan):
            break
        time.sleep(1)
    changes_window = time.monotonic() - change_start
    w_after, s_after = total([w.pid for w in watchers]), total(server_pids)
    result["watcher_rss_after_changes_bytes"] = w_after.rss
    result["watcher_cpu_per_change_s"] = (w_after.cpu - w_before.cpu) / len(plan)
    result["watcher_cpu_per_watcher_per_change_s"] = result["watcher_cpu_per_change_s"] / max(
        1, args.watchers
    )
    result["server_cpu_changes_cores"] = (s_after.cpu - s_before.cpu) / changes_window
    reports = []
    for w in watchers:
        w.send({"op": "quit"})
        reports.append(w.receive())
        w.close()
    plan_path.unlink(missing_ok=True)
    seen = [row for r in reports for row in r["seen"]]
    result["watcher_events"] = [e for r in reports for e in r["events"]]
    result["watch_open_s"] = [o for r in reports for o in r["opened"]]
    result["watch_open_each_s"] = [o for r in reports for o in r.get("took", [])]
    result["watch_first_list_len"] = [n for r in reports for n in r.get("held", [])]
    werrors = [e for r in reports for e in r["errors"]]
    if werrors:
        result["findings"].append(f"watcher errors: {werrors[:3]}")
    convergence: list[float] = []
    per_watcher: list[float] = []
    missed = 0
    change_errors = [d["error"] for d in done.values() if d["error"]]
    if change_errors:
        result["findings"].append(f"{len(change_errors)} changes failed: {change_errors[:3]}")
    # A watcher whose watch failed is left out of "all watchers", and counted: one dead
    # watcher would otherwise make every change "missed".
    dead = [d for r in reports for d in r.get("dead", [False] * len(r["seen"]))]
    alive = [row for row, gone in zip(seen, dead, strict=True) if not gone]
    result["watchers_failed"] = sum(dead)
    result["delays_s"] = [
        [None if math.isnan(row[k]) else row[k] - done[k]["t0"] for row in seen]
        for k in range(len(plan))
    ]
    for k in range(len(plan)):
        times = [row[k] for row in alive]
        if not times or any(math.isnan(t) for t in times) or done[k]["error"]:
            missed += 1
            continue
        t0 = done[k]["t0"]
        convergence.append(max(times) - t0)
        per_watcher.extend(t - t0 for t in times)
    result["convergence_s"] = convergence
    result["changes_missed"] = missed
    result["convergence_p50_s"] = percentile(convergence, 50)
    result["convergence_p99_s"] = percentile(convergence, 99)
    result["per_watcher_p50_s"] = percentile(per_watcher, 50)
    result["write_p50_s"] = percentile([d["t1"] - d["t0"] for d in done.values()], 50)
    if missed:
        result["findings"].append(
            f"{missed} of {len(plan)} changes never reached every watcher within "
            f"{args.converge_timeout:.0f} s after the last change"
        )
    log(
        f"convergence p50 {result['convergence_p50_s'] * 1000:.0f} ms, "
        f"p99 {result['convergence_p99_s'] * 1000:.0f} ms, missed {missed}"
    )

    sampler.mark("stop")
    for w in hosts:
        w.close()
    sampler.stop.set()
    sampler.join()
    result["timeline"] = {"samples": sampler.samples, "phases": sampler.phases}
    result["server_rss_end_bytes"] = total(server_pids).rss
    save(Path(args.out) / "scale-sim.json", result)
    print(table(json.loads((Path(args.out) / "scale-sim.json").read_text())))


def save(path: Path, result: dict[str, Any]) -> None:
    """Merge this backend's result into the file of every backend's latest result."""
    results: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError):
            results = json.loads(path.read_text())
    results[result["backend"]] = result
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def table(results: dict[str, Any]) -> str:
    """A Markdown table of every backend's latest result."""
    header = [
        "backend",
        "hosts x endpoints",
        "publish",
        "keepalive req/host/(TTL/3)",
        "sessions/store",
        "convergence p50 / p99",
        "watcher RSS, CPU/change",
        "server CPU idle / changes",
    ]
    rows = []
    for name in ("etcd", "etcd2", "consul", "zookeeper"):
        r = results.get(name)
        if r is None:
            continue
        held = r.get("sessions_per_store")
        rows.append(
            [
                name,
                f"{r['hosts']} x {r['endpoints']}",
                f"{r['publish_s']:.1f} s",
                f"{r['keepalive_per_host_per_interval']:.2f} ({r['keepalive_metric']})",
                "none (per key)" if held is None else f"{held:.2f}",
                (
                    f"{r['convergence_p50_s'] * 1000:.0f} / {r['convergence_p99_s'] * 1000:.0f} ms"
                    if r["convergence_s"]
                    else "none reached all"
                )
                + (f" ({r['changes_missed']} missed)" if r["changes_missed"] else "")
                + (f", {r['watchers_failed']} watchers failed" if r.get("watchers_failed") else ""),
                f"{r['watcher_rss_per_watcher_bytes'] / 2**20:.0f} MiB, "
                f"{r['watcher_cpu_per_watcher_per_change_s'] * 1000:.0f} ms",
                f"{r['server_cpu_idle_cores']:.2f} / {r['server_cpu_changes_cores']:.2f} cores",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "role", nargs="?", default="controller", choices=["controller", "_hosts", "_watchers"]
    )
    parser.add_argument("--backend", choices=sorted(SCHEMES), required=True)
    parser.add_argument("--urls", required=True, help="the cluster's nodes, host:port,...")
    parser.add_argument("--server-pids", default="")
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--ttl", type=float, default=30.0)
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="the quiet window counting keepalives (default 3 x TTL/3)",
    )
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--change-interval", type=float, default=1.0)
    parser.add_argument("--host-procs", type=int, default=4)
    parser.add_argument("--watcher-procs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="publishing threads per worker")
    parser.add_argument("--timeout", type=float, default=30.0, help="each store's call timeout")
    parser.add_argument("--open-timeout", type=float, default=600.0)
    parser.add_argument("--converge-timeout", type=float, default=60.0)
    parser.add_argument("--out", default="docs/results")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--plan", default="")
    parser.add_argument(
        "--open-concurrency", type=int, default=1, help="watchers opening at once per process"
    )
    args = parser.parse_args(argv)
    if args.role == "_hosts":
        hosts_worker(args)
    elif args.role == "_watchers":
        watchers_worker(args)
    else:
        controller(args)


if __name__ == "__main__":
    main()
