"""Pure logic: URL parsing and masking, key rules, typed options."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pykv import ConfigurationError, InvalidKeyError, InvalidURLError, StoreOptions, StoreURL
from pykv._keys import normalize_key, normalize_prefix, to_bytes
from pykv._options import TLSOptions, build_options
from pykv._url import Host, mask_url


class TestURL:
    def test_several_hosts_split_host_by_host(self) -> None:
        url = StoreURL.parse("etcd://h1:2379,h2,[::1]:2380/app/x?timeout=3")
        assert url.scheme == "etcd"
        assert url.hosts == (Host("h1", 2379), Host("h2", None), Host("::1", 2380))
        assert url.path == "app/x"
        assert dict(url.query) == {"timeout": "3"}
        assert url.netloc == "h1:2379,h2,[::1]:2380"

    def test_variant(self) -> None:
        url = StoreURL.parse("consul+tls://c:8501")
        assert (url.scheme, url.variant, url.full_scheme) == ("consul", "tls", "consul+tls")

    def test_sqlite_paths_as_sqlalchemy_writes_them(self) -> None:
        assert StoreURL.parse("sqlite:///kv.db").path == "kv.db"
        assert StoreURL.parse("sqlite:////var/lib/pykv/kv.db").path == "/var/lib/pykv/kv.db"
        assert StoreURL.parse("sqlite:///kv.db").hosts == ()

    def test_secrets_masked_in_str_and_repr(self) -> None:
        url = StoreURL.parse("etcd://root:s3cret@h:2379/p?token=abc&timeout=2")
        assert url.username == "root"
        assert url.password == "s3cret"
        for shown in (str(url), repr(url)):
            assert "s3cret" not in shown
            assert "abc" not in shown
        assert str(url) == "etcd://root:***@h:2379/p?token=***&timeout=2"
        assert "s3cret" in url.render(mask=False)

    def test_mask_raw_text(self) -> None:
        assert mask_url("consul://u:pw@h/x?token=t") == "consul://u:***@h/x?token=***"

    def test_immutable(self) -> None:
        url = StoreURL.parse("memory://x")
        with pytest.raises(AttributeError):
            url.scheme = "y"  # type: ignore[misc]
        with pytest.raises(TypeError):
            url.query["a"] = "b"  # type: ignore[index]

    @pytest.mark.parametrize(
        "text",
        [
            "no-scheme",
            "1bad://h",
            "etcd://h:99999",
            "etcd://h:port",
            "etcd://h1,,h2",
            "etcd://[::1",
            "etcd://::1:2379",
            "etcd://h?timeout=1&timeout=2",
            "etcd://h#frag",
        ],
    )
    def test_invalid_urls(self, text: str) -> None:
        with pytest.raises(InvalidURLError):
            StoreURL.parse(text)

    def test_invalid_url_message_masks_password(self) -> None:
        with pytest.raises(InvalidURLError) as info:
            StoreURL.parse("etcd://u:topsecret@h:notaport")
        assert "topsecret" not in str(info.value)


class TestKeys:
    @pytest.mark.parametrize(
        ("raw", "norm"), [("a/b", "a/b"), ("/a/b", "a/b"), ("a/b/", "a/b"), ("//a//"[1:-1], "a")]
    )
    def test_normalize(self, raw: str, norm: str) -> None:
        assert normalize_key(raw) == norm

    @pytest.mark.parametrize(
        "bad", ["", "/", "a//b", "./a", "a/..", "a\tb", "a\x7f", "x" * 1025, "€" * 342]
    )
    def test_invalid(self, bad: str) -> None:
        with pytest.raises(InvalidKeyError) as info:
            normalize_key(bad)
        assert repr(bad)[:20] in str(info.value) or "longer" in str(info.value)

    def test_limit_is_in_utf8_bytes(self) -> None:
        assert normalize_key("€" * 341)  # 1023 bytes
        with pytest.raises(InvalidKeyError):
            normalize_key("€" * 342)  # 1026 bytes

    def test_non_str_key(self) -> None:
        with pytest.raises(InvalidKeyError):
            normalize_key(b"a")  # type: ignore[arg-type]

    def test_prefix_may_be_empty(self) -> None:
        assert normalize_prefix("") == ""
        assert normalize_prefix("/") == ""
        assert normalize_prefix("/a/") == "a"

    def test_values(self) -> None:
        assert to_bytes("é") == b"\xc3\xa9"
        assert to_bytes(bytearray(b"x")) == b"x"
        with pytest.raises(TypeError):
            to_bytes(3)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Opts(TLSOptions):
    retries: int = 3
    token: str | None = None


class TestOptions:
    def test_query_text_is_coerced(self) -> None:
        opts = build_options(
            _Opts, "x", {"timeout": "2.5", "tls": "yes", "retries": "5", "ca": "/ca.pem"}, {}
        )
        assert (opts.timeout, opts.tls, opts.retries, opts.ca) == (2.5, True, 5, "/ca.pem")

    def test_keywords_win(self) -> None:
        opts = build_options(_Opts, "x", {"timeout": "2"}, {"timeout": 7})
        assert opts.timeout == 7

    def test_unknown_option_names_it_and_lists_known(self) -> None:
        with pytest.raises(ConfigurationError) as info:
            build_options(StoreOptions, "memory", {"tiemout": "1"}, {})
        assert "'tiemout'" in str(info.value)
        assert "timeout" in str(info.value)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("timeout", "soon"),
            ("timeout", "-1"),
            ("timeout", "nan"),
            ("tls", "maybe"),
            ("retries", "1.5"),
        ],
    )
    def test_bad_values(self, field: str, value: str) -> None:
        with pytest.raises(ConfigurationError) as info:
            build_options(_Opts, "x", {field: value}, {})
        assert field in str(info.value)

    def test_masked(self) -> None:
        opts = build_options(_Opts, "x", {"token": "t0k"}, {})
        assert opts.masked()["token"] == "***"
