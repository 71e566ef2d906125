"""pykv-registrar's options: registrator's spellings, the positional registry URL, and every
value checked before the store is opened (the command run as a subprocess)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pykv.registrar.settings import parse_metrics_addr, parse_settings, registry_url


def test_registrator_spellings_map_to_the_settings() -> None:
    s = parse_settings(
        ["-internal", "-explicit", "-ip", "10.0.0.5", "-tags", "a,b", "-ttl", "30",
         "-ttl-refresh=10", "-resync", "60", "-cleanup=true", "-deregister", "on-success",
         "-retry-attempts", "3", "-retry-interval", "2000", "-useIpFromLabel", "net.ip",
         "consul://127.0.0.1:8500/reg"],
        environ={},
    )  # fmt: skip
    assert (s.internal, s.explicit, s.ip, s.tags) == (True, True, "10.0.0.5", ("a", "b"))
    assert (s.ttl, s.ttl_refresh, s.resync) == (30, 10, 60)
    assert (s.cleanup, s.deregister, s.use_ip_from_label) == (True, "on-success", "net.ip")
    assert (s.retry_attempts, s.retry_interval) == (3, 2.0)  # registrator's is in ms
    assert s.store == "consul://127.0.0.1:8500/reg"


def test_go_style_boolean_values_and_pykv_spellings() -> None:
    s = parse_settings(["-internal=false", "--cleanup", "--retry-interval", "2"], environ={})
    assert (s.internal, s.cleanup, s.retry_interval) == (False, True, 2.0)
    s = parse_settings(["--no-cleanup"], environ={"PYKV_REGISTRAR_CLEANUP": "true"})
    assert s.cleanup is False  # the command line wins over the environment
    with pytest.raises(SystemExit):
        parse_settings(["-cleanup=maybe"], environ={})


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("consul://h:8500/p", "consul://h:8500/p"),
        ("consulkv://h:8500/p", "consul://h:8500/p"),
        ("consul-tls://h:8501/p", "consul+tls://h:8501/p"),
        ("etcd://h:2379/p", "etcd://h:2379/p"),
        ("zookeeper://h:2181/p", "zookeeper://h:2181/p"),
    ],
)
def test_registry_url_schemes(given: str, url: str) -> None:
    assert registry_url(given) == url


def test_refused_registry_urls_and_two_stores() -> None:
    with pytest.raises(ValueError, match="skydns2:// is not supported"):
        registry_url("skydns2://h:2379/skydns.local")
    with pytest.raises(SystemExit):
        parse_settings(["--store", "memory://a", "memory://b"], environ={})


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "LOUD"],
        ["--metrics-addr", "nohost"],
        ["--metrics-addr", "127.0.0.1:99999"],
        ["--metrics-addr", "::1:9105"],  # IPv6 needs brackets
        ["--ttl", "10", "--ttl-refresh", "10"],  # must be below the TTL
        ["--ttl", "0", "--ttl-refresh", "5"],
        ["--ttl", "1e400"],
        ["--ttl", "999999999999"],
        ["--retry-attempts", "-2"],
        ["--workers", "0"],
        ["--node", "a/b"],
        ["--prefix", "a//b"],
        ["--prefix", "a/../b"],
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_settings(argv, environ={})
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_bad_environment_values_name_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings([], environ={"PYKV_REGISTRAR_LOG_LEVEL": "chatty"})
    assert "PYKV_REGISTRAR_LOG_LEVEL must be one of" in capsys.readouterr().err
    assert parse_settings([], environ={"PYKV_REGISTRAR_LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_metrics_addr_forms() -> None:
    assert parse_metrics_addr("127.0.0.1:9105") == ("127.0.0.1", 9105)
    assert parse_metrics_addr(":9105") == ("", 9105)
    assert parse_metrics_addr("[::1]:9105") == ("::1", 9105)


# -- the command, before the store is opened --------------------------------------------------


def _registrar(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"import sys; {prelude}from pykv.registrar.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_bad_options_exit_2_without_opening_the_store(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    proc = _registrar("--store", f"sqlite:///{db}", "--log-level", "LOUD")
    assert proc.returncode == 2
    assert "--log-level" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not db.exists()


def test_a_taken_metrics_port_exits_2_before_opening_the_store(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _registrar("--store", f"sqlite:///{db}", "--metrics-addr", f"127.0.0.1:{port}")
    assert proc.returncode == 2, proc.stderr
    assert f"--metrics-addr: cannot listen on 127.0.0.1 port {port}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not db.exists()


def test_missing_extra_is_named_with_the_install_command(tmp_path: Path) -> None:
    # `sys.modules[name] = None` makes importing it fail as if it were not installed.
    hide = "sys.modules['docker'] = None; sys.modules['prometheus_client'] = None; "
    proc = _registrar("--store", f"sqlite:///{tmp_path}/x.db", prelude=hide)
    assert proc.returncode == 6
    assert "missing: docker, prometheus-client" in proc.stderr
    assert "pip install 'pykvstore[registrar]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    helped = _registrar("--help", prelude=hide)
    assert helped.returncode == 0
    assert "REGISTRY_URL" in helped.stdout
    assert "pip install 'pykvstore[registrar]'" in helped.stdout


def test_the_compatibility_table_matches_the_parser() -> None:
    """Every registrator flag docs/registrar-compat.md calls supported or mapped is accepted
    in registrator's spelling; every refused one is not."""
    from pykv.registrar.settings import build_parser

    doc = (Path(__file__).resolve().parents[2] / "docs" / "registrar-compat.md").read_text()
    accepted = set(build_parser()._option_string_actions)
    checked = 0
    for line in doc.split("## Flags", 1)[1].split("## Container", 1)[0].splitlines():
        cells = [c.strip() for c in line.replace("\\|", "/").strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`-") or cells[0].startswith("`-h "):
            continue
        flag = cells[0].strip("`").split()[0]
        if cells[2] == "refused":
            assert flag not in accepted, flag
        else:
            assert cells[2] in ("supported", "mapped"), line
            assert flag in accepted, flag
        checked += 1
    assert checked == 13
