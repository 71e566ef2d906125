"""pykv.discovery on the embedded stores: layout, register/deregister, TTL, watch, CLI."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import pykv
from pykv._cli_services import add_services_command, format_table, run_services
from pykv.discovery import CatalogPublisher, Endpoint, Registry


@pytest.fixture
def store() -> Iterator[pykv.Store]:
    with pykv.open_store(f"memory://disc-{uuid.uuid4().hex}") as s:
        yield s


def ep(service: str = "web", eid: str = "n1:web-1:80", **kw: object) -> Endpoint:
    return Endpoint(service, eid, kw.pop("address", "10.0.0.5"), kw.pop("port", 8080), **kw)  # type: ignore[arg-type]


def test_json_layout_is_the_documented_public_format(store: pykv.Store) -> None:
    reg = Registry(store)
    e = ep(tags=("a", "b"), metadata={"v": "2"}, node="n1", container_id="c1", container_name="w")
    reg.register(e, ttl=30)
    pair = store.get("services/web/n1:web-1:80")
    assert json.loads(pair.value) == {
        "service": "web",
        "id": "n1:web-1:80",
        "address": "10.0.0.5",
        "port": 8080,
        "protocol": "tcp",
        "tags": ["a", "b"],
        "metadata": {"v": "2"},
        "node": "n1",
        "container_id": "c1",
        "container_name": "w",
    }
    assert list(json.loads(pair.value)) == [
        "service", "id", "address", "port", "protocol", "tags", "metadata", "node",
        "container_id", "container_name",
    ]  # fmt: skip


def test_round_trip_and_unknown_fields_ignored() -> None:
    e = ep(protocol="udp", tags=("x",), metadata={"k": "v"}, address="::1")
    assert Endpoint.from_json(e.to_json()) == e
    data = e.to_dict() | {"future_field": [1, 2]}
    assert Endpoint.from_json(json.dumps(data)) == e


@pytest.mark.parametrize(
    "text",
    [b"not json", b"[]", b'{"service": "a"}', b'{"service":"a/b","id":"x","address":"h","port":1}'],
)
def test_from_json_rejects_broken_values(text: bytes) -> None:
    with pytest.raises(ValueError, match="not an endpoint"):
        Endpoint.from_json(text)


@pytest.mark.parametrize("bad", ["", "a/b", ".", "..", "a\nb"])
def test_service_and_id_must_be_key_segments(bad: str) -> None:
    with pytest.raises(pykv.InvalidKeyError):
        ep(service=bad)
    with pytest.raises(pykv.InvalidKeyError):
        ep(eid=bad)


def test_endpoint_validation() -> None:
    with pytest.raises(ValueError, match="protocol"):
        ep(protocol="sctp")
    with pytest.raises(ValueError, match="range"):
        ep(port=70000)
    with pytest.raises(TypeError):
        ep(port="80")


def test_register_endpoints_services_deregister(store: pykv.Store) -> None:
    reg = Registry(store, prefix="disc")
    a1, a2, b1 = ep("a", "n:a1:1"), ep("a", "n:a2:1"), ep("b", "n:b1:1")
    for e in (a2, b1, a1):
        reg.register(e)
    store.put("disc/a/garbage", b"not an endpoint")  # skipped, not an error
    store.put("disc/ab/x", ep("ab", "x").to_json())  # a sibling service must not leak into "a"
    assert reg.endpoints("a") == [a1, a2]
    assert reg.services() == ["a", "ab", "b"]
    assert reg.endpoints("missing") == []
    reg.deregister(a1)
    reg.deregister(("b", "n:b1:1"))
    reg.deregister(("b", "n:b1:1"))  # missing: no-op
    assert reg.endpoints("a") == [a2]
    assert reg.endpoints("b") == []


def test_empty_registry(store: pykv.Store) -> None:
    reg = Registry(store)
    assert reg.all_endpoints() == []
    assert reg.services() == []


def test_context_manager_deregisters_what_it_registered(store: pykv.Store) -> None:
    other = ep("web", "other")
    Registry(store).register(other, ttl=None)
    with Registry(store) as reg:
        reg.register(ep(), ttl=5)
        assert len(reg.endpoints("web")) == 2
    assert Registry(store).endpoints("web") == [other]


def test_ttl_entries_vanish_when_the_writer_dies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/d.db"
    code = (
        "import sys, pykv, time\n"
        "from pykv.discovery import Endpoint, Registry\n"
        f"s = pykv.open_store({url!r})\n"
        "Registry(s).register(Endpoint('web', 'child', '127.0.0.1', 1), ttl=1)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        with pykv.open_store(url) as s:
            reg = Registry(s)
            time.sleep(1.6)  # longer than the TTL: the child keeps it alive
            assert [e.id for e in reg.endpoints("web")] == ["child"]
            child.kill()
            child.wait(5)
            deadline = time.monotonic() + 1 + pykv.load_backend("sqlite").ttl_slack + 1.5
            while reg.endpoints("web") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert reg.endpoints("web") == []
    finally:
        child.kill()
        child.wait(5)


def test_watch_yields_full_lists_on_change(store: pykv.Store) -> None:
    reg = Registry(store)
    with reg.watch("web") as w:
        assert w.get(timeout=2) == []
        reg.register(ep(eid="1"))
        assert [e.id for e in w.get(timeout=2)] == ["1"]
        reg.register(ep("other", "x"))  # another service: no event for "web"
        reg.register(ep(eid="2"))
        assert [e.id for e in w.get(timeout=2)] == ["1", "2"]
        reg.register(ep(eid="2"))  # same data again: skipped
        with pytest.raises(TimeoutError):
            w.get(timeout=0.3)
        reg.deregister(ep(eid="1"))
        assert [e.id for e in w.get(timeout=2)] == ["2"]
    assert w.closed


def test_watch_all_services(store: pykv.Store) -> None:
    reg = Registry(store)
    with reg.watch() as w:
        assert w.get(timeout=2) == []
        reg.register(ep("a", "1"))
        reg.register(ep("b", "1"))
        seen = w.get(timeout=2)
        if len(seen) == 1:
            seen = w.get(timeout=2)
        assert [(e.service, e.id) for e in seen] == [("a", "1"), ("b", "1")]


def test_catalog_protocol_is_structural() -> None:
    class Fake:
        def catalog_register(self, endpoint, *, ttl, checks=(), deregister_critical_after=None):  # type: ignore[no-untyped-def]
            pass

        def catalog_deregister(self, endpoint_id):  # type: ignore[no-untyped-def]
            pass

        def catalog_pass_ttl(self, endpoint_id):  # type: ignore[no-untyped-def]
            pass

    assert isinstance(Fake(), CatalogPublisher)
    with pykv.open_store("memory://x") as s:
        assert not isinstance(s, CatalogPublisher)


def test_services_command_table_and_json(
    store: pykv.Store, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = Registry(store)
    reg.register(ep("web", "n:w:80", tags=("a", "b"), node="n"))
    reg.register(ep("db", "n:d:5432", port=5432, protocol="udp", node="n"))
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    add_services_command(parser.add_subparsers(dest="command"))

    assert run_services(store, parser.parse_args(["services"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SERVICE", "ID", "ADDRESS", "PORT", "PROTO", "NODE", "TAGS"]
    assert lines[1].split() == ["db", "n:d:5432", "10.0.0.5", "5432", "udp", "n"]
    assert lines[2].split() == ["web", "n:w:80", "10.0.0.5", "8080", "tcp", "n", "a,b"]

    assert run_services(store, parser.parse_args(["services", "web", "--json"])) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in data] == ["n:w:80"]
    assert run_services(store, parser.parse_args(["--json", "services", "db"])) == 0
    assert [d["id"] for d in json.loads(capsys.readouterr().out)] == ["n:d:5432"]


def test_format_table_empty() -> None:
    assert format_table([]).split() == ["SERVICE", "ID", "ADDRESS", "PORT", "PROTO", "NODE", "TAGS"]


_CLI = "import sys; from pykv._cli import main; main(sys.argv[1:])"


def test_services_watch_command_through_pykv_cli(tmp_path: Path) -> None:
    """`pykv services NAME --watch --json` in a subprocess sees registrations of another."""
    url = f"sqlite:///{tmp_path}/w.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLI, "--store", url, "services", "web", "--watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first:
            pytest.fail(f"pykv services failed: {proc.stderr.read() if proc.stderr else ''}")
        assert json.loads(first) == []
        with pykv.open_store(url) as s:
            Registry(s).register(ep(eid="n:w:1"), ttl=None)
            assert [d["id"] for d in json.loads(proc.stdout.readline())] == ["n:w:1"]
    finally:
        proc.terminate()
        proc.wait(5)
    assert proc.returncode == 0


# -- malformed entries and failed watches -----------------------------------------------------

GOOD = {"service": "web", "id": "n:w:80", "address": "10.0.0.5", "port": 80}
#: Values a careless or hostile writer can leave under the prefix, each of which used to raise
#: OverflowError, RecursionError or TypeError out of every reader.
MALFORMED: dict[str, bytes] = {
    "inf-port": b'{"service":"web","id":"x","address":"a","port":1e400}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "deep-small": b'{"service":' + b"[" * 5_000 + b"]" * 5_000 + b"}",
    "float-port": json.dumps(GOOD | {"port": 80.5}).encode(),
    "str-port": json.dumps(GOOD | {"port": "80"}).encode(),
    "bool-port": json.dumps(GOOD | {"port": True}).encode(),
    "big-port": json.dumps(GOOD | {"port": 10**30}).encode(),
    "int-service": json.dumps(GOOD | {"service": 5}).encode(),
    "tags-string": json.dumps(GOOD | {"tags": "a,b"}).encode(),
    "tags-ints": json.dumps(GOOD | {"tags": [1, 2]}).encode(),
    "metadata-list": json.dumps(GOOD | {"metadata": [["a", "b"]]}).encode(),
    "metadata-nested": json.dumps(GOOD | {"metadata": {"a": {"b": "c"}}}).encode(),
    "no-address": json.dumps({k: v for k, v in GOOD.items() if k != "address"}).encode(),
    "id-with-slash": json.dumps(GOOD | {"id": "a/b"}).encode(),
    "not-utf8": b'{"service":"\xff"}',
    "array": b"[1,2,3]",
    "huge": json.dumps(GOOD | {"pad": "x" * 2_000_000}).encode(),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_from_json_raises_only_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="not an endpoint"):
        Endpoint.from_json(MALFORMED[name])


def test_readers_skip_count_and_log_each_malformed_entry_once(
    store: pykv.Store, caplog: pytest.LogCaptureFixture
) -> None:
    reg = Registry(store)
    good = ep()
    reg.register(good, ttl=None)
    for name, value in MALFORMED.items():
        store.put(f"services/web/{name}", value)
    caplog.set_level("WARNING", logger="pykv.discovery")
    assert reg.endpoints("web") == [good]
    assert reg.all_endpoints() == [good]
    assert reg.services() == ["web"]
    assert reg.skipped == len(MALFORMED)
    lines = [r for r in caplog.records if "malformed endpoint entry" in r.getMessage()]
    assert len(lines) == len(MALFORMED)  # once each, however often they are read
    assert all(len(r.getMessage()) < 600 for r in lines)  # a huge value is not echoed
    # A bad entry written again is a new one: counted and logged again.
    store.put("services/web/inf-port", MALFORMED["inf-port"])
    assert reg.endpoints("web") == [good]
    assert reg.skipped == len(MALFORMED) + 1


def test_watch_skips_malformed_entries_and_good_ones_keep_flowing(store: pykv.Store) -> None:
    reg = Registry(store)
    store.put("services/web/deep", MALFORMED["deep"])
    with reg.watch("web") as watch:
        assert watch.get(timeout=5) == []
        second = ep(eid="n:w:81", port=81)
        reg.register(second, ttl=None)
        assert watch.get(timeout=5) == [second]
        store.put("services/web/inf", MALFORMED["inf-port"])
        third = ep(eid="n:w:82", port=82)
        reg.register(third, ttl=None)
        assert watch.get(timeout=5) == [second, third]
    assert reg.skipped == 2


def test_watch_parses_only_changed_entries(store: pykv.Store) -> None:
    """Each entry is parsed once per revision: a change to one endpoint of many reuses the
    others (parsing them all cost a second per change at 20,000 endpoints)."""
    reg = Registry(store)
    for i in range(50):
        reg.register(ep(eid=f"{i:02d}"), ttl=None)
    with reg.watch() as watch:
        first = watch.get(timeout=5)
        assert len(first) == 50
        reg.register(ep(eid="07", port=9090), ttl=None)
        second = watch.get(timeout=5)
        assert [e.port for e in second if e.id == "07"] == [9090]
        assert all(a is b for a, b in zip(first, second, strict=True) if a.id != "07")
        store.put("services/web/07", b"{")  # malformed now: gone from the list
        assert [e.id for e in watch.get(timeout=5)] == [f"{i:02d}" for i in range(50) if i != 7]
        reg.register(ep(eid="07"), ttl=None)
        assert watch.get(timeout=5) == first
    assert reg.skipped == 1


def test_follow_ends_with_the_error_of_a_failed_watch(store: pykv.Store) -> None:
    """Issue 16 defect 3: OperationTimeoutError is a TimeoutError; a loop that polls with a
    timeout must end on it instead of spinning."""
    reg = Registry(store)
    stop = threading.Event()
    with reg.watch() as watch:
        updates = watch.follow(stop, poll=0.05)
        assert next(updates) == []
        # A driver reports a failed watch this way (the watch's documented producer side).
        watch._inner._fail(pykv.OperationTimeoutError("watch of services timed out"))
        # The core raises a watch's time-out as UnavailableError (never a TimeoutError, which
        # means "no event yet"), keeping the time-out as its cause.
        with pytest.raises(pykv.UnavailableError, match="timed out") as failed:
            next(updates)
        assert not isinstance(failed.value, TimeoutError)
        assert isinstance(failed.value.__cause__, pykv.OperationTimeoutError)
    with reg.watch() as watch:
        updates = watch.follow(stop, poll=0.05)
        assert next(updates) == []
        stop.set()
        assert list(updates) == []  # a stop ends it quietly


def test_services_command_skips_malformed_entries(
    store: pykv.Store, capsys: pytest.CaptureFixture[str]
) -> None:
    Registry(store).register(ep(node="n"), ttl=None)
    store.put("services/web/bad", MALFORMED["inf-port"])
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    add_services_command(parser.add_subparsers(dest="command"))
    assert run_services(store, parser.parse_args(["services", "--json"])) == 0
    assert [d["id"] for d in json.loads(capsys.readouterr().out)] == ["n1:web-1:80"]
