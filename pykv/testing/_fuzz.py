"""Property tests (hypothesis) of keys, prefixes and values: :class:`FuzzTests`.

They check the key rules against a reference written from the contract, not from the code
(a key is printable text: no Unicode "Other" or "Separator" character but the space, and
only characters of the Basic Multilingual Plane outside its Specials block U+FFF0-U+FFFF):
every invalid key raises :class:`~pykv.InvalidKeyError` on every call and writes nothing; every
valid key, however odd, round-trips exactly; no key or prefix reaches outside the store's
prefix; every value round-trips byte for byte. Needs ``hypothesis``.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from .. import (
    ConfigurationError,
    InvalidArgumentError,
    InvalidKeyError,
    KeyExistsError,
    KeyNotFoundError,
    Store,
)
from .._keys import MAX_KEY_BYTES
from ._suite import BaseStoreTests, OpenStore

__all__ = ["FuzzTests", "expected_key"]

#: Code points named by the contract: C0, DEL, C1, U+2028/2029, bidi controls.
_FORBIDDEN = frozenset(
    [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F)]
) | frozenset(range(0x2066, 0x206A))


def _unprintable(char: str) -> bool:
    """The contract's rule: Unicode categories "Other" (C*) and "Separator" (Z*) but ' '."""
    return char != " " and unicodedata.category(char)[0] in "CZ"


def expected_key(key: str) -> str | None:
    """The key the contract makes of ``key`` (normalised), or None when it is invalid."""
    stripped = key.strip("/")
    if not stripped:
        return None
    for char in stripped:
        code = ord(char)
        if code in _FORBIDDEN or 0xD800 <= code <= 0xDFFF or _unprintable(char):
            return None
        if code >= 0xFFF0:  # astral characters and the Specials block: not on every backend
            return None
    if any(segment in ("", ".", "..") for segment in stripped.split("/")):
        return None
    if len(stripped.encode("utf-8")) > MAX_KEY_BYTES:
        return None
    return stripped


# Characters that stress key handling: separators, dots, escapes of URLs, globs, regexes and
# shells, quotes, the forbidden ones, and multi-byte and astral text.
_ODD = [
    *"/./..%?#&=+*[]{}()|\\^$:;,'\"`~!@ -_<>",
    *"\x00\x01\x1f\x7f\x80\x85\x9f\u2028\u2029\u202a\u202e\u2066\u2069\ud800\udfff",
    *"\u00a0\u00e9\u0131\u03a3\u05d0\u0645\u200b\u200d\u2060\ufeff\ufffd\uffff\u4e2d\ue000",
    "\U0001f600",
    "\U0010ffff",
]
_chars = st.one_of(st.sampled_from(_ODD), st.characters(codec=None, exclude_categories=[]))
_segment = st.one_of(
    st.text(_chars, min_size=1, max_size=10),
    st.sampled_from(["", ".", "..", "...", ".a", "a.", "a", "b", "ab"]),
)
_structured = st.builds(
    lambda lead, segments, trail: lead + "/".join(segments) + trail,
    st.sampled_from(["", "/", "//"]),
    st.lists(_segment, min_size=1, max_size=6),
    st.sampled_from(["", "/", "//"]),
)
_long = st.builds(
    lambda char, n, tail: char * n + tail,
    st.sampled_from(["a", "\u00e9", "\u4e2d", "\U0001f600", "/"]),
    st.integers(200, 1100),
    st.sampled_from(["", "x", "/x"]),
)
#: Keys of every kind: mostly valid, many invalid.
KEYS = st.one_of(st.text(_chars, max_size=30), _structured, _long)
#: Keys the contract accepts.
VALID_KEYS = KEYS.filter(lambda k: expected_key(k) is not None)
#: Keys the contract refuses: a valid key with one flaw added.
INVALID_KEYS = st.one_of(
    st.builds(
        lambda key, bad, at: key[:at] + bad + key[at:],
        VALID_KEYS,
        st.sampled_from(
            [chr(c) for c in sorted(_FORBIDDEN)]
            + ["\ud800", "\udc00", "\udfff", "\ufffd", "\U0001f600", "\U0010ffff"]
        ),
        st.integers(0, 40),
    ),
    st.builds(
        lambda key, seg: f"{key}/{seg}/x",
        VALID_KEYS,
        st.sampled_from(["", ".", ".."]),
    ),
    st.builds(lambda key: key + "/" + "z" * MAX_KEY_BYTES, VALID_KEYS),
    st.sampled_from(["", "/", "//", ".", "..", "/../", "a/../../b"]),
)
VALUES = st.one_of(
    st.binary(max_size=2048),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=300),
    st.sampled_from([b"", b"\x00", b"\xff\xfe", "\x00", "\U0001f600", b"\r\n", "%2F"]),
)


class FuzzTests(BaseStoreTests):
    """Fuzzing of keys, prefixes and values (hypothesis); subclass it like
    :class:`~pykv.testing.ConformanceTests` (a ``store_url`` fixture). ``fuzz_examples`` sets
    the examples per property: lower it for network backends."""

    #: Examples per property (each costs a few calls to the store).
    fuzz_examples: ClassVar[int] = 200
    #: A regular expression matching valid keys this backend cannot hold yet: a known and
    #: reported defect, left out of the round-trip properties so the rest still runs. Pin the
    #: defect itself with its own (xfail) test.
    unsupported_keys: ClassVar[str | None] = None

    def _supported(self, *keys: str) -> bool:
        pattern = self.unsupported_keys
        return pattern is None or not any(re.search(pattern, key) for key in keys)

    def _settings(self, share: float = 1.0) -> settings:
        return settings(
            max_examples=max(3, int(self.fuzz_examples * share)),
            deadline=None,
            database=None,  # nothing written into the user's tree
            suppress_health_check=[
                HealthCheck.function_scoped_fixture,
                HealthCheck.too_slow,
                HealthCheck.filter_too_much,
                HealthCheck.data_too_large,
            ],
        )

    def _run(self, test: Callable[..., None], share: float = 1.0, **strategies: Any) -> None:
        given(**strategies)(self._settings(share)(test))()

    def test_fuzz_valid_keys_round_trip(self, store: Store) -> None:
        def check(key: str, value: bytes) -> None:
            assume(self._supported(key))
            expected = expected_key(key)
            assert expected is not None
            store.put(key, value)
            pair = store.get(key)
            assert (pair.key, pair.value) == (expected, value)
            assert store.exists(key)
            assert expected in [p.key for p in store.list("")]
            store.delete(key)
            with pytest.raises(KeyNotFoundError):
                store.get(expected)

        self._run(check, key=VALID_KEYS, value=st.binary(max_size=64))

    def test_fuzz_any_text_key_is_refused_or_round_trips(self, store: Store) -> None:
        def check(key: str) -> None:
            expected = expected_key(key)
            if expected is None:
                with pytest.raises(InvalidKeyError):
                    store.put(key, b"v")
                return
            assume(self._supported(key))
            store.put(key, b"v")
            assert store.get(expected).key == expected
            store.delete(expected)

        self._run(check, key=KEYS)
        assert store.list("") == [], "keys were left behind"

    def test_fuzz_invalid_keys_raise_before_io(self, store: Store) -> None:
        store.put("sentinel", b"s")

        def check(key: str) -> None:
            assert expected_key(key) is None
            calls: list[Callable[[], object]] = [
                lambda: store.get(key),
                lambda: store.put(key, b"x"),
                lambda: store.put(key, b"x", ttl=self.ttl),
                lambda: store.delete(key),
                lambda: store.exists(key),
                lambda: store.atomic_put(key, b"x", None),
                lambda: store.lock(key),
            ]
            if key.strip("/"):  # the empty prefix is the whole store, valid there
                calls += [
                    lambda: store.list(key),
                    lambda: store.delete_tree(key),
                    lambda: store.watch_tree(key),
                ]
            for call in calls:
                with pytest.raises(InvalidKeyError):
                    call()

        self._run(check, key=INVALID_KEYS)
        assert [(p.key, p.value) for p in store.list("")] == [("sentinel", b"s")]

    def test_fuzz_no_prefix_escape(self, open_store: OpenStore) -> None:
        outer = open_store()
        inner = open_store(prefix=f"{outer.prefix}/in")
        # Around the inner store's view: its prefix key itself, string-prefix siblings, others.
        sentinels = {"in": b"1", "inx": b"2", "in-x/y": b"3", "i/n": b"4", "other/in": b"5"}
        for key, value in sentinels.items():
            outer.put(key, value)

        def check(ops: list[tuple[str, str]]) -> None:
            assume(self._supported(*(key for _, key in ops)))
            for op, key in ops:
                if op == "put":
                    inner.put(key, b"w")
                elif op == "ttl":
                    inner.put(key, b"t", ttl=self.ttl)
                elif op == "atomic":
                    with contextlib.suppress(KeyExistsError):
                        inner.atomic_put(key, b"a", None)
                elif op == "delete":
                    inner.delete(key)
                else:
                    inner.delete_tree(key)
            for key, value in sentinels.items():
                assert outer.get(key).value == value, f"{key!r} changed by the inner store"
            seen = [p.key for p in inner.list("")]
            assert sorted(f"in/{k}" for k in seen) == sorted(p.key for p in outer.list("in")), (
                "the inner store's view is not the outer one's below 'in'"
            )

        ops = st.lists(
            st.tuples(st.sampled_from(["put", "ttl", "atomic", "delete", "tree"]), VALID_KEYS),
            min_size=1,
            max_size=5,
        )
        self._run(check, share=0.5, ops=ops)

    def test_fuzz_store_prefixes(self, open_store: OpenStore) -> None:
        outer = open_store()
        outer.put("fence", b"f")

        def check(prefix: str, key: str) -> None:
            wanted = expected_key(prefix)
            below = f"{outer.prefix}/{prefix.strip('/')}".rstrip("/")
            if wanted is None and prefix.strip("/"):
                with pytest.raises((InvalidKeyError, ConfigurationError)):
                    open_store(prefix=below).close()
                return
            assume(self._supported(prefix, key))
            scoped = open_store(prefix=below)
            try:
                scoped.put(key, b"p")
                assert scoped.get(key).value == b"p"
                full = "/".join(p for p in (wanted, expected_key(key)) if p)
                if len(full.encode("utf-8")) <= MAX_KEY_BYTES:  # else not a key of outer's
                    assert outer.get(full).value == b"p"
                scoped.delete(key)
                assert not scoped.exists(key)
                assert [p.key for p in outer.list("")] == ["fence"]
            finally:
                scoped.close()
            assert outer.get("fence").value == b"f"

        self._run(check, share=0.2, prefix=KEYS, key=VALID_KEYS)

    def test_fuzz_values_round_trip(self, store: Store) -> None:
        def check(value: bytes | str) -> None:
            expected = value.encode("utf-8") if isinstance(value, str) else value
            store.put("v", value)
            assert store.get("v").value == expected
            pair = store.atomic_put("v", value, store.get("v"))
            assert (pair.value, store.get("v").value) == (expected, expected)

        self._run(check, value=VALUES)

    def test_fuzz_values_that_are_not_text_or_bytes(self, store: Store) -> None:
        def check(value: object) -> None:
            with pytest.raises(InvalidArgumentError):  # InvalidTypeError is one too
                store.put("bad", value)  # type: ignore[arg-type]

        bad = st.one_of(
            st.none(),
            st.integers(),
            st.floats(),
            st.lists(st.integers(), max_size=3),
            st.text(min_size=1, max_size=5).map(lambda t: t + "\ud800"),  # a lone surrogate
        )
        self._run(check, share=0.25, value=bad)
        assert not store.exists("bad")
