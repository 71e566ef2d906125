"""Fixtures for the integration tests: real Consul, etcd and ZooKeeper servers and a Docker engine.

Run ``bash scripts/provision.sh`` first (it installs Docker, Compose and builds the images); the
servers come from compose.yaml beside this file through pytest-docker, under a compose project
name of this session's own. Only the services that the selected tests use are started, all at
once when the first of them is needed; they are removed at the end of the session (also after
Ctrl-C or SIGTERM).

Selecting backends: ``--backends=consul,etcd`` (this conftest must be loaded for the option to
exist, so give pytest a path under tests/integration) or ``PYKV_BACKENDS=consul,etcd`` (ignored
when CI=true); default: all of consul, etcd, zookeeper and docker. A test belongs to a backend
through its marker (``@pytest.mark.etcd``) or through the fixtures it uses; tests of other
backends are deselected. No test is skipped for want of a server: one that does not come up
fails the tests that need it, with its log, locally and in CI.

Fixtures (session-scoped unless said otherwise):

``consul_url``, ``consul_acl``, ``etcd_url``, ``etcd2_url``, ``etcd_auth``, ``zookeeper_url``
    single servers; the ACL and auth ones yield an object with the URL and the credentials.
``consul_cluster``, ``etcd_cluster``, ``zookeeper_cluster`` (function-scoped)
    a three-node cluster (see ``_harness.Cluster`` for its operations), restored after each test.
``docker_engine``, ``busybox_image``, ``docker_labels``
    a docker-py client, the workload image's name, labels for containers a test creates.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from _harness import (
    CLUSTERS,
    COMPOSE_FILE,
    HOST,
    SESSION_LABEL,
    Cluster,
    Compose,
    ConsulACL,
    EtcdAuth,
    HarnessError,
    SessionLock,
    env_float,
    free_cluster_net,
    make_cluster,
    project_name,
    remove_labelled,
    remove_stale_projects,
    teardown_on_exit,
)

ALL_BACKENDS = ("consul", "etcd", "zookeeper", "docker")
BUSYBOX_IMAGE = os.environ.get("PYKV_BUSYBOX_IMAGE", "pykv-busybox:1")

# Which compose services each fixture needs: they are started for the tests that use the fixture,
# and their logs are attached to a failure of such a test.
SINGLE_SERVICES = {
    "consul_url": ["consul"],
    "consul_acl": ["consul-acl"],
    "etcd_url": ["etcd"],
    "etcd2_url": ["etcd"],
    "etcd_auth": ["etcd-auth"],
    "zookeeper_url": ["zookeeper"],
}
CLUSTER_FIXTURES = {f"{backend}_cluster": backend for backend in CLUSTERS}
FIXTURE_SERVICES = SINGLE_SERVICES | {
    name: list(CLUSTERS[backend].ports) for name, backend in CLUSTER_FIXTURES.items()
}
# The backend a fixture belongs to, for selecting tests by backend.
FIXTURE_BACKEND = {
    **{name: services[0].split("-")[0] for name, services in SINGLE_SERVICES.items()},
    **CLUSTER_FIXTURES,
    "docker_engine": "docker",
    "busybox_image": "docker",
    "docker_labels": "docker",
}
THIS_DIR = Path(__file__).parent

compose_key = pytest.StashKey["Compose"]()
lock_key = pytest.StashKey[SessionLock]()
used_services_key = pytest.StashKey[set[str]]()


# ------------------------------------------------------------------------------------------------
# Options, markers, selection


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backends",
        default=None,
        help="comma-separated backends whose integration tests run: "
        f"{','.join(ALL_BACKENDS)} (default: $PYKV_BACKENDS, else all)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs real servers started by the harness")
    for backend in ALL_BACKENDS:
        config.addinivalue_line("markers", f"{backend}: needs the {backend} integration servers")


def selected_backends(config: pytest.Config) -> set[str]:
    # In CI everything runs unless the command line itself says otherwise.
    from_env = "" if os.environ.get("CI") == "true" else os.environ.get("PYKV_BACKENDS")
    value = config.getoption("--backends") or from_env or ""
    names = {name.strip() for name in value.split(",") if name.strip()} or set(ALL_BACKENDS)
    unknown = names - set(ALL_BACKENDS)
    if unknown:
        raise pytest.UsageError(f"unknown backends {sorted(unknown)}; known: {ALL_BACKENDS}")
    return names


def item_backends(item: pytest.Item) -> set[str]:
    """Backends a test needs: its markers and the fixtures it uses."""
    marked = {mark.name for mark in item.iter_markers() if mark.name in ALL_BACKENDS}
    used = {
        FIXTURE_BACKEND[name]
        for name in getattr(item, "fixturenames", ())
        if name in FIXTURE_BACKEND
    }
    return marked | used


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected = selected_backends(config)
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        if THIS_DIR not in Path(str(item.path)).parents:
            keep.append(item)
            continue
        item.add_marker(pytest.mark.integration)
        (keep if item_backends(item) <= selected else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Any:
    """Take the machine's integration lock before the first test (outside any test's timeout)
    when integration tests are to run; pytest_sessionfinish releases it after the teardown."""
    integration = any(THIS_DIR in Path(str(item.path)).parents for item in session.items)
    if integration and not session.config.option.collectonly:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")

        def waiting(message: str) -> None:
            if reporter is not None:
                reporter.write_line(message)

        lock = SessionLock()
        try:
            lock.acquire(env_float("PYKV_LOCK_TIMEOUT", 1800.0), waiting)
        except HarnessError as exc:
            raise pytest.UsageError(str(exc)) from None
        session.config.stash[lock_key] = lock
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Any:
    try:
        return (yield)  # the runner tears the session's fixtures down in here
    finally:
        lock = session.config.stash.get(lock_key, None)
        if lock is not None:
            lock.release()


def pytest_report_header(config: pytest.Config) -> str:
    return f"pykv integration backends: {','.join(sorted(selected_backends(config)))}"


# ------------------------------------------------------------------------------------------------
# Server logs on failure


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    compose = item.config.stash.get(compose_key, None)
    # Setup failures of the harness carry the failing server's log in their message already.
    if report.failed and call.when == "call" and compose is not None:
        used: set[str] = item.stash.get(used_services_key, set())
        services = set(used)
        for name in getattr(item, "fixturenames", ()):
            services.update(FIXTURE_SERVICES.get(name, ()))
        services &= compose.started
        if services:
            report.sections.append(
                (
                    f"server logs: {' '.join(sorted(services))}",
                    compose.logs(sorted(services), tail=100),
                )
            )
    return report


# ------------------------------------------------------------------------------------------------
# pytest-docker's fixtures, adapted


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_compose_project_name(_compose: Compose) -> str:
    return _compose.project


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    # Nothing up front: `servers` starts the services the selected tests use.
    return []


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["--profile cluster down --volumes --remove-orphans --timeout=3"]


# ------------------------------------------------------------------------------------------------
# The engine and the compose project

PROVISION_HINT = " (run `bash scripts/provision.sh`)"


@contextlib.contextmanager
def as_failure(hint: str = "") -> Iterator[None]:
    """A harness or docker error becomes a plain test failure: its message, no traceback."""
    try:
        yield
    except (HarnessError, docker.errors.DockerException) as exc:
        raise pytest.fail.Exception(f"{exc}{hint}", pytrace=False) from None


@pytest.fixture(scope="session")
def _docker() -> Iterator[Any]:
    # The harness's own client: the server fixtures do not pull in `docker_engine`, whose use
    # marks a test as one of the docker backend.
    with as_failure(PROVISION_HINT):
        client = docker.from_env(timeout=60)
        client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def docker_engine(_docker: Any) -> Any:
    """A docker-py ``DockerClient`` for the local engine, checked to answer."""
    return _docker


@pytest.fixture(scope="session")
def busybox_image(docker_engine: Any) -> str:
    """Name of the tiny busybox workload image (sh, httpd, nc, sleep, ...)."""
    with as_failure(PROVISION_HINT):
        docker_engine.images.get(BUSYBOX_IMAGE)
    return BUSYBOX_IMAGE


@pytest.fixture(scope="session")
def docker_labels(docker_compose_project_name: str) -> dict[str, str]:
    """Labels for containers a test creates: the session removes such containers at its end."""
    return {SESSION_LABEL: docker_compose_project_name}


@pytest.fixture(scope="session")
def _compose(_docker: Any) -> Iterator[Compose]:
    """This session's compose project; taken down on SIGTERM or at exit if pytest-docker's
    teardown never comes."""
    compose = Compose(project_name(), COMPOSE_FILE, _docker)
    with as_failure():
        remove_stale_projects(_docker)
        os.environ.setdefault("PYKV_CLUSTER_NET", free_cluster_net(_docker))
    with teardown_on_exit(compose):
        yield compose
        remove_labelled(_docker, compose.project)


@pytest.fixture(scope="session")
def servers(request: pytest.FixtureRequest, _compose: Compose, docker_services: object) -> Compose:
    """The compose project, with the services of every selected test started but not waited
    for: each server fixture waits for its own. pytest-docker's teardown takes them down."""
    with as_failure(PROVISION_HINT):
        for image in needed_images(request.session.items):
            _compose.client.images.get(image)
    request.config.stash[compose_key] = _compose
    needed = {
        service
        for item in request.session.items
        for name in getattr(item, "fixturenames", ())
        for service in FIXTURE_SERVICES.get(name, ())
    }
    with as_failure():
        _compose.start(needed)
    return _compose


def needed_images(items: list[pytest.Item]) -> set[str]:
    names = {name for item in items for name in getattr(item, "fixturenames", ())}
    images = set()
    if names & {"consul_url", "consul_acl", "consul_cluster"}:
        images.add(os.environ.get("PYKV_CONSUL_IMAGE", "pykv-servers:1"))
    if names & {"etcd_url", "etcd2_url", "etcd_auth", "etcd_cluster"}:
        images.add(os.environ.get("PYKV_ETCD_IMAGE", "pykv-servers:1"))
    if names & {"zookeeper_url", "zookeeper_cluster"}:
        images.add(os.environ.get("PYKV_ZOOKEEPER_IMAGE", "pykv-servers:1"))
    return images


def ensure(servers: Compose, fixture: str) -> None:
    with as_failure():
        servers.ensure(FIXTURE_SERVICES[fixture])


# ------------------------------------------------------------------------------------------------
# Single servers


@pytest.fixture(scope="session")
def consul_url(servers: Compose) -> str:
    """Single Consul 1.8 server; sessions accept TTLs down to 1 s."""
    ensure(servers, "consul_url")
    return f"consul://{HOST}:18500"


@pytest.fixture(scope="session")
def consul_acl(servers: Compose) -> ConsulACL:
    """Single Consul server with ACLs on, default policy deny."""
    ensure(servers, "consul_acl")
    return ConsulACL(url=f"consul://{HOST}:18510", token="pykv-root-token")


@pytest.fixture(scope="session")
def etcd_url(servers: Compose) -> str:
    """Single etcd 3.4 server, v3 API."""
    ensure(servers, "etcd_url")
    return f"etcd://{HOST}:12379"


@pytest.fixture(scope="session")
def etcd2_url(servers: Compose) -> str:
    """The same etcd server through its v2 API (enabled with --enable-v2)."""
    ensure(servers, "etcd2_url")
    return f"etcd2://{HOST}:12379"


@pytest.fixture(scope="session")
def etcd_auth(servers: Compose) -> EtcdAuth:
    """Single etcd server with authentication enabled."""
    ensure(servers, "etcd_auth")
    return EtcdAuth(url=f"etcd://{HOST}:12390", user="root", password="pykv-root-pass")


@pytest.fixture(scope="session")
def zookeeper_url(servers: Compose) -> str:
    """Single ZooKeeper 3.8 server; sessions may be as short as 1 s."""
    ensure(servers, "zookeeper_url")
    return f"zookeeper://{HOST}:12181"


@pytest.fixture(scope="session")
def zk_url(request: pytest.FixtureRequest) -> str:
    """The harness's single ZooKeeper server, or PYKV_ZOOKEEPER_URL (a server of your own)."""
    url = os.environ.get("PYKV_ZOOKEEPER_URL")
    if url:
        return url
    harness: str = request.getfixturevalue("zookeeper_url")
    return harness


# ------------------------------------------------------------------------------------------------
# Clusters: started once per session, restored after every test that used one


def session_cluster(servers: Compose, backend: str) -> Cluster:
    with as_failure():
        return make_cluster(backend, servers)


def restored(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[Cluster]:
    request.node.stash.setdefault(used_services_key, set()).update(cluster.services())
    with as_failure():
        cluster.wait_healthy()
    yield cluster
    with as_failure():
        cluster.restore()


@pytest.fixture(scope="session")
def _consul_cluster(servers: Compose) -> Cluster:
    return session_cluster(servers, "consul")


@pytest.fixture(scope="session")
def _etcd_cluster(servers: Compose) -> Cluster:
    return session_cluster(servers, "etcd")


@pytest.fixture(scope="session")
def _zookeeper_cluster(servers: Compose) -> Cluster:
    return session_cluster(servers, "zookeeper")


@pytest.fixture
def consul_cluster(request: pytest.FixtureRequest, _consul_cluster: Cluster) -> Iterator[Cluster]:
    """Three Consul servers (consul1-3) on 127.0.0.1:18501-18503."""
    yield from restored(request, _consul_cluster)


@pytest.fixture
def etcd_cluster(request: pytest.FixtureRequest, _etcd_cluster: Cluster) -> Iterator[Cluster]:
    """Three etcd members (etcd1-3) on 127.0.0.1:12381-12383, v2 API enabled."""
    yield from restored(request, _etcd_cluster)


@pytest.fixture
def zookeeper_cluster(
    request: pytest.FixtureRequest, _zookeeper_cluster: Cluster
) -> Iterator[Cluster]:
    """Three ZooKeeper servers (zk1-3) on 127.0.0.1:12281-12283."""
    yield from restored(request, _zookeeper_cluster)
