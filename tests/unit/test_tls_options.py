"""Pure logic: the TLS option rules every network backend shares, and which credentials a
store would send in clear text. Every case fails in ``open_store`` before any connection."""

from __future__ import annotations

import pytest

import pykv
from pykv import ConfigurationError
from pykv._options import TLSOptions, build_options, cleartext_credentials
from pykv._registry import load_backend

# Port 1 on loopback: nothing listens there, and none of these cases gets as far as connecting.
NETWORK_URLS = [
    "consul://127.0.0.1:1",
    "etcd://127.0.0.1:1",
    "etcd3://127.0.0.1:1",
    "etcd2://127.0.0.1:1",
    "zookeeper://127.0.0.1:1",
    "zk://127.0.0.1:1",
]


def _tls(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}+tls://{rest}"


@pytest.mark.parametrize("url", NETWORK_URLS)
@pytest.mark.parametrize("option", ["ca", "cert", "key"])
def test_tls_files_without_tls_are_refused(url: str, option: str) -> None:
    extra = "&cert=/c.pem" if option == "key" else ""
    with pytest.raises(ConfigurationError, match=rf"'{option}'.* needs? TLS.*\+tls"):
        pykv.open_store(f"{url}?{option}=/{option}.pem{extra}")
    with pytest.raises(ConfigurationError, match="TLS"):
        pykv.open_store(url, **{option: f"/{option}.pem", "cert": "/c.pem"})
    with pytest.raises(ConfigurationError, match="TLS"):
        pykv.open_store(f"{url}?tls=false&{option}=/{option}.pem{extra}")


@pytest.mark.parametrize("url", NETWORK_URLS)
def test_empty_verify_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"'verify' must be true or false, not ''"):
        pykv.open_store(_tls(url) + "?verify=")
    with pytest.raises(ConfigurationError, match=r"'tls' must be true or false, not ''"):
        pykv.open_store(url + "?tls=")


@pytest.mark.parametrize("url", NETWORK_URLS)
def test_ca_with_verify_false_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"'ca' and 'verify=false' contradict"):
        pykv.open_store(_tls(url) + "?ca=/ca.pem&verify=false")
    with pytest.raises(ConfigurationError, match="contradict"):
        pykv.open_store(_tls(url), ca="/ca.pem", verify=False)


@pytest.mark.parametrize("url", NETWORK_URLS)
def test_key_needs_cert(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"'key' needs 'cert'"):
        pykv.open_store(_tls(url) + "?key=/k.pem")


@pytest.mark.parametrize(
    "query",
    [
        {"tls": "true", "ca": "/ca.pem", "cert": "/c.pem", "key": "/k.pem"},
        {"tls": "true", "cert": "/both.pem"},
        {"tls": "true", "verify": "false"},
        {"tls": "1", "verify": "yes", "ca": "/ca.pem"},
        {"verify": "true"},
        {},
    ],
)
def test_consistent_tls_options_are_accepted(query: dict[str, str]) -> None:
    for url in NETWORK_URLS:
        cls = load_backend(url.split(":", 1)[0]).options_class
        opts = build_options(cls, "x", query, {})
        assert isinstance(opts, TLSOptions)
        assert opts.tls == (query.get("tls") in ("true", "1"))


@pytest.mark.parametrize(
    ("url", "options", "sent"),
    [
        ("consul://h", {"token": "t"}, ["token"]),
        ("consul+tls://h", {"token": "t"}, []),
        ("consul://h", {}, []),
        ("etcd://h", {"username": "u", "password": "p"}, ["username", "password"]),
        ("etcd+tls://h", {"username": "u", "password": "p"}, []),
        ("etcd2://h", {"username": "u"}, ["username"]),
        ("etcd2://h", {"tls": True, "username": "u"}, []),
        ("zk://h", {"username": "u", "password": "p"}, ["username", "password"]),
        ("zk+tls://h", {"username": "u", "password": "p"}, []),
    ],
)
def test_cleartext_credentials(url: str, options: dict[str, object], sent: list[str]) -> None:
    parsed = pykv.StoreURL.parse(url)
    query = {"tls": "true"} if parsed.variant == "tls" else {}
    opts = build_options(load_backend(parsed.scheme).options_class, parsed.scheme, query, options)
    assert cleartext_credentials(opts) == sent


def test_embedded_stores_have_no_credentials() -> None:
    with pykv.open_store("memory://") as store:
        assert cleartext_credentials(store.options) == []
