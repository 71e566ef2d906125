"""The ZooKeeper driver's multiRead request (opcode 22) against the jute wire layout, byte for
byte: what the server reads, and parsing what it answers (results, per-operation errors)."""

from __future__ import annotations

import struct

from kazoo.exceptions import NoAuthError, NoNodeError
from kazoo.protocol.states import ZnodeStat
from pykv_zookeeper._store import _MultiRead


def header(kind: int, done: bool, err: int) -> bytes:
    return struct.pack("!iBi", kind, done, err)


def text(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("!i", len(raw)) + raw


STAT = ZnodeStat(10, 11, 12, 13, 1, 0, 0, 0, 3, 2, 14)


def test_request_is_a_multi_operation_record_of_reads_without_watches() -> None:
    request = _MultiRead([(4, "/a"), (8, "/a/b")])
    assert request.type == 22
    assert bytes(request.serialize()) == (
        header(4, False, -1) + text("/a") + b"\x00"
        + header(8, False, -1) + text("/a/b") + b"\x00"
        + header(-1, True, -1)
    )  # fmt: skip


def test_response_yields_one_result_per_operation_in_order() -> None:
    stat = struct.pack("!qqqqiiiqiiq", *STAT)
    body = (
        header(4, False, 0) + struct.pack("!i", 3) + b"abc" + stat
        + header(8, False, 0) + struct.pack("!i", 2) + text("x") + text("\u00e9t\u00e9")
        + header(-1, False, NoNodeError.code) + struct.pack("!i", NoNodeError.code)
        + header(4, False, 0) + struct.pack("!i", -1) + stat
        + header(-1, False, NoAuthError.code) + struct.pack("!i", NoAuthError.code)
        + header(8, False, 0) + struct.pack("!i", 0)
        + header(-1, True, -1)
    )  # fmt: skip
    prefix = b"\xff" * 7  # kazoo hands over the reply with an offset past its header
    results = _MultiRead([]).deserialize(prefix + body, len(prefix))
    assert results[0] == (b"abc", STAT)
    assert results[1] == ["x", "\u00e9t\u00e9"]
    assert isinstance(results[2], NoNodeError)
    assert results[3] == (None, STAT)
    assert isinstance(results[4], NoAuthError)
    assert results[5] == []
    assert len(results) == 6
