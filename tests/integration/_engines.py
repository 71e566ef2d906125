"""Private container engines for the registrar's tests: a second dockerd, a Podman API service.

Each engine runs in a network namespace of its own (``ip netns add``), entered with
``nsenter --net`` so that the engine's process *is* the PID we started (nsenter execs it): its
bridge, its iptables rules (dockerd's ``DOCKER`` chains, netavark's ``NETAVARK-*`` ones), its
published ports and its docker-proxy/conmon port forwarders all live in that namespace, and the
machine's own engine, its networks and the compose servers the other tests use are never touched.
Only the API socket, a file under the engine's scratch directory in /tmp (short: unix socket paths
are limited to 108 bytes), is shared, which is all the registrar needs: it reads published ports
from the API and never connects to them.

Everything an engine leaves is removed by :meth:`close`: its containers, the engine by PID (and
dockerd's own containerd, by the PID in its pid file), the mounts under its scratch directory,
the namespace, the cgroups named after it and the directory. A scratch directory whose owning
test process died is swept the same way by :func:`sweep_stale` before a new engine starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import HarnessError, pid_alive

SCRATCH_PREFIX = "pykv-eng-"
_OWNER = "owner.pid"  # the test process that made the scratch directory


def _run(args: list[str], timeout: float = 60, stdin: bytes | None = None) -> str:
    try:
        proc = subprocess.run(args, input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{' '.join(args)}: no answer within {timeout} s") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise HarnessError(f"{' '.join(args)} failed ({proc.returncode}): {err}")
    return proc.stdout.decode(errors="replace").strip()


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _end(pid: int, marker: str, timeout: float) -> None:
    """SIGTERM, then SIGKILL, the process ``pid`` if its command line names ``marker`` (a pid
    file may outlive its process, and the number may have been reused since)."""
    if pid <= 0 or marker not in _cmdline(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_exit(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_exit(pid, 5)


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _unmount_below(root: Path) -> None:
    """Unmount everything mounted at or below ``root``, deepest first (lazily: a mount still
    busy for a moment goes when it is no longer used)."""
    prefix = str(root)
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in sorted({p for p in points if p == prefix or p.startswith(prefix + "/")},
                        key=len, reverse=True):  # fmt: skip
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)


def _remove_cgroups(name: str) -> None:
    """rmdir the cgroup ``name`` in every v1 hierarchy (and v2), children first; a cgroup still in
    use stays (rmdir refuses)."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / name.strip("/")
        if not top.is_dir():
            continue
        for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                sub.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


class _Scratch:
    """A scratch directory in /tmp and a network namespace of the same name."""

    def __init__(self, kind: str) -> None:
        sweep_stale()
        self.root = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{kind}-", dir="/tmp"))
        (self.root / _OWNER).write_text(str(os.getpid()))
        self.name = self.root.name  # also the netns and cgroup name
        self.netns = Path("/run/netns") / self.name
        _run(["ip", "netns", "add", self.name])
        _run(["ip", "-n", self.name, "link", "set", "lo", "up"])

    def nsenter(self) -> list[str]:
        return ["nsenter", f"--net={self.netns}", "--"]

    def remove(self) -> None:
        _unmount_below(self.root)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30,
                       check=False)  # fmt: skip
        _remove_cgroups(self.name)
        shutil.rmtree(self.root, ignore_errors=True)


class Engine:
    """What the private Docker engine and the Podman service share: a docker CLI on their socket."""

    scratch: _Scratch

    @property
    def socket(self) -> Path:
        return self.scratch.root / "engine.sock"

    @property
    def url(self) -> str:
        """The engine's endpoint, for DOCKER_HOST."""
        return f"unix://{self.socket}"

    def docker(self, *args: str, timeout: float = 60) -> str:
        """The docker CLI against this engine."""
        return _run(["docker", "-H", self.url, *args], timeout=timeout)

    def answers(self) -> bool:
        try:
            self.docker("version", "-f", "{{.Server.Version}}", timeout=5)
        except HarnessError:
            return False
        return True

    def wait_answers(self, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.answers():
            if proc.poll() is not None or time.monotonic() >= deadline:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                raise HarnessError(f"the engine did not answer on {self.socket}:\n{tail}")
            time.sleep(0.1)

    def load(self, image: str) -> None:
        """Copy ``image`` from the machine's engine: ``docker save | docker -H ... load``."""
        saved = subprocess.run(
            ["docker", "save", image], capture_output=True, timeout=120, check=True
        ).stdout
        self.docker_load(saved)

    def docker_load(self, tar: bytes) -> None:
        _run(["docker", "-H", self.url, "load"], timeout=120, stdin=tar)

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self.docker("inspect", name))[0]  # type: ignore[no-any-return]

    def host_port(self, name: str, spec: str = "80/tcp") -> int:
        return int(self.inspect(name)["NetworkSettings"]["Ports"][spec][0]["HostPort"])

    def remove_all_containers(self) -> None:
        ids = self.docker("ps", "-aq").split()
        if ids:
            self.docker("rm", "-f", "-v", *ids, timeout=120)


class PrivateDockerd(Engine):
    """A second dockerd with its own --data-root, --exec-root, --pidfile, socket, network
    namespace (its docker0 and iptables rules are in there) and cgroup parent.

    ``stop()`` sends SIGTERM to that dockerd by PID, as an init system would; ``start()`` starts
    it again on the same state, with or without ``--live-restore``.
    """

    def __init__(self) -> None:
        self.scratch = _Scratch("dockerd")
        self.proc: subprocess.Popen[bytes] | None = None
        self.live_restore = False
        self.log = self.scratch.root / "dockerd.log"
        self.starts = 0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else 0

    def start(self, *, live_restore: bool = False, timeout: float = 60) -> None:
        assert not self.pid, "already running"
        root = self.scratch.root
        args = [
            *self.scratch.nsenter(),
            "dockerd",
            "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "dockerd.pid"),
            "-H", self.url,
            "--cgroup-parent", f"/{self.scratch.name}",
            # Its own, unused address range (in its own namespace anyway).
            "--bip", "10.213.7.1/24",
            "--shutdown-timeout", "2",
        ]  # fmt: skip
        if live_restore:
            args.append("--live-restore")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        self.live_restore = live_restore
        self.starts += 1
        self.wait_answers(self.proc, self.log, timeout)

    def stop(self, timeout: float = 60) -> float:
        """SIGTERM to dockerd by PID; wait for it to exit; the seconds it took."""
        assert self.proc is not None, "never started"
        assert self.pid, "not running"
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise HarnessError(f"dockerd did not stop within {timeout} s of SIGTERM") from None
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL to dockerd by PID: a crash. Its containerd and the containers live on."""
        assert self.proc is not None, "never started"
        self.proc.kill()
        self.proc.wait(10)

    def restart(self, *, live_restore: bool = False) -> None:
        self.stop()
        self.start(live_restore=live_restore)

    def close(self) -> None:
        try:
            if self.pid:
                with contextlib.suppress(HarnessError):
                    self.remove_all_containers()
                # Without --live-restore, shutting down also stops whatever is left.
                if self.live_restore:
                    with contextlib.suppress(HarnessError):
                        self.restart(live_restore=False)
                with contextlib.suppress(HarnessError):
                    self.stop()
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        finally:
            _stop_scratch_processes(self.scratch.root)
            self.scratch.remove()


class PodmanService(Engine):
    """``podman system service --time=0`` on a socket of its own, with private storage
    (--root/--runroot), network configuration and namespace.

    containers.conf: cgroupfs (no systemd here), events in a file (no journald: the Docker
    events API reads them back), and default ulimits no higher than the service's own: podman's
    defaults for root containers (RLIMIT_NOFILE and RLIMIT_NPROC of 1048576) fail here, without
    CAP_SYS_RESOURCE, with ``error setting rlimit type 7: operation not permitted``.
    """

    def __init__(self) -> None:
        self.scratch = _Scratch("podman")
        root = self.scratch.root
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        # podman lowers its own RLIMIT_NPROC to 32768 (seen here): the service is started with
        # at most that, so that it and its containers have the same.
        hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        self.nproc = nproc = min(32768 if hard == resource.RLIM_INFINITY else hard, 32768)
        self.conf = root / "containers.conf"
        self.conf.write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{root / "events.log"}"\n'
        )
        self.log = root / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def podman(self) -> list[str]:
        return _podman(self.scratch.root)

    def start(self, timeout: float = 60) -> None:
        env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        env.pop("DOCKER_HOST", None)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["prlimit", f"--nproc={self.nproc}:{self.nproc}", "--", *self.scratch.nsenter(),
                 *self.podman(), "system", "service", "--time=0", self.url],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        self.wait_answers(self.proc, self.log, timeout)

    def docker_load(self, tar: bytes) -> None:
        # `podman load` into the storage the service uses.
        _run([*self.podman(), "load"], timeout=120, stdin=tar)

    def close(self) -> None:
        try:
            remove_podman_containers(self.scratch.root)
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            _stop_scratch_processes(self.scratch.root)
            self.scratch.remove()
            _remove_cgroups("libpod_parent")  # podman's cgroups, left empty by its containers


def _podman(root: Path) -> list[str]:
    """The podman CLI on the storage of the service in ``root``."""
    return [
        "podman",
        "--root", str(root / "storage"),
        "--runroot", str(root / "run"),
        "--network-config-dir", str(root / "networks"),
        "--tmpdir", str(root / "tmp"),
    ]  # fmt: skip


def remove_podman_containers(root: Path) -> None:
    if (root / "storage").is_dir():
        env = {**os.environ, "CONTAINERS_CONF": str(root / "containers.conf")}
        subprocess.run([*_podman(root), "rm", "-f", "-t", "0", "--all"], capture_output=True,
                       timeout=120, env=env, check=False)  # fmt: skip


def _stop_scratch_processes(root: Path) -> None:
    """End the processes that serve this scratch directory and outlived their parent: dockerd's
    containerd (by the PID in its pid file) and any dockerd whose pid file is there."""
    for pid_file in (root / "exec" / "containerd" / "containerd.pid", root / "dockerd.pid"):
        _end(_read_pid(pid_file), str(root), timeout=20)


def sweep_stale() -> list[Path]:
    """Remove the scratch directories (and their engines) of test processes that are gone."""
    swept = []
    for root in Path("/tmp").glob(f"{SCRATCH_PREFIX}*"):
        owner = _read_pid(root / _OWNER)
        if not root.is_dir() or (owner and pid_alive(owner)):
            continue
        # dockerd stops its containers when it stops; podman's are removed with its CLI. Then
        # the engines' processes, found by PID files or by their command lines naming the dir.
        _stop_scratch_processes(root)
        remove_podman_containers(root)
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and str(root) in _cmdline(int(proc.name)):
                _end(int(proc.name), str(root), timeout=20)
        scratch = object.__new__(_Scratch)
        scratch.root, scratch.name = root, root.name
        scratch.netns = Path("/run/netns") / root.name
        scratch.remove()
        swept.append(root)
    if swept:
        _remove_cgroups("libpod_parent")
    return swept
