"""The core's TTL-key registry (pykv/_ttlkeys.py): its bookkeeping, with hooks over a dict."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pykv._ttlkeys import Created, TTLKeys


class Server:
    """A key space with revisions, written by the hooks (and by "other clients")."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, int, str]] = {}  # path -> (value, revision, owner)
        self.revision = 0
        self.fail_next = 0

    def write(self, path: str, value: bytes, owner: str) -> int:
        self.revision += 1
        self.data[path] = (value, self.revision, owner)
        return self.revision

    def create(self, owner: str) -> Callable[[str, bytes], Created]:
        def hook(path: str, value: bytes) -> Created:
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("down")
            if path in self.data:
                return Created(False, ours=self.data[path][2] == owner)
            return Created(True, self.write(path, value, owner))

        return hook

    def delete_if_at(self, path: str, revision: int) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("down")
        if path in self.data and self.data[path][1] == revision:
            del self.data[path]


def test_lost_keys_come_back_where_nobody_wrote_them() -> None:
    server, keys = Server(), TTLKeys[str, str]()
    for path in ("a", "b", "c"):
        keys.remember("lease1", path, path.encode())
    keys.remember("lease2", "other-group", b"x")
    assert keys.lose("lease1") == 3
    server.write("b", b"theirs", "someone")  # written by another client meanwhile
    keys.recreate("lease1", server.create("me"), server.delete_if_at)
    assert server.data["a"][0] == b"a"
    assert server.data["c"][0] == b"c"
    assert server.data["b"][0] == b"theirs"
    assert keys.count("lease1") == 2  # b is theirs now: no longer tracked
    assert not keys.pending("lease1")
    assert "other-group" not in server.data  # another group's keys are not touched


def test_a_failed_write_is_retried_by_the_next_call() -> None:
    server, keys = Server(), TTLKeys[str, str]()
    keys.remember("g", "a", b"1")
    keys.lose("g")
    server.fail_next = 1
    with pytest.raises(ConnectionError):
        keys.recreate("g", server.create("me"), server.delete_if_at)
    assert keys.pending("g")
    keys.recreate("g", server.create("me"), server.delete_if_at)
    assert server.data["a"][0] == b"1"
    assert not keys.pending("g")


def racing(
    server: Server, keys: TTLKeys[str, str], *, undo_fails: bool
) -> Callable[[str, bytes], Created]:
    """A create hook during which this store deletes the key (its delete sent while the
    re-creation's write was in flight); optionally the undo that follows fails once."""
    create = server.create("me")

    def hook(path: str, value: bytes) -> Created:
        result = create(path, value)
        keys.forget(path)
        server.fail_next = 1 if undo_fails else 0
        return result

    return hook


def lost_key() -> tuple[Server, TTLKeys[str, str]]:
    server, keys = Server(), TTLKeys[str, str]()
    keys.remember("g", "a", b"1")
    keys.lose("g")
    return server, keys


def test_a_delete_racing_with_the_recreation_wins() -> None:
    server, keys = lost_key()
    keys.recreate("g", racing(server, keys, undo_fails=False), server.delete_if_at)
    assert "a" not in server.data  # the re-creation undid itself


def test_an_undo_that_fails_is_retried_and_spares_a_newer_write() -> None:
    server, keys = lost_key()
    with pytest.raises(ConnectionError):
        keys.recreate("g", racing(server, keys, undo_fails=True), server.delete_if_at)
    assert keys.pending("g")
    server.write("a", b"newer", "someone")  # written again since the re-creation
    keys.recreate("g", server.create("me"), server.delete_if_at)
    assert server.data["a"][0] == b"newer"


def test_forget_restore_and_groups() -> None:
    keys = TTLKeys[str, str]()
    keys.remember("g", "t/a", b"1")
    keys.remember("g", "t/b", b"1")
    keys.remember("h", "u", b"1")
    entry = keys.forget("u")
    keys.restore("u", entry)  # the delete failed: tracked again
    assert keys.count("h") == 1
    keys.remember("g", "u", b"2")  # moved to another group
    assert keys.count("h") == 0
    keys.forget_where(lambda p: p.startswith("t/"))
    assert keys.count("g") == 1
    keys.drop_group("g")
    assert len(keys) == 0


def test_lost_groups_lists_the_groups_with_work_left_and_clear_forgets_all() -> None:
    keys: TTLKeys[str, str] = TTLKeys()
    keys.remember("a", "k1", b"1")
    keys.remember("b", "k2", b"2")
    assert keys.lost_groups() == []
    keys.lose("a")
    assert keys.lost_groups() == ["a"]
    keys.recreate("a", lambda path, value: Created(True, 7), lambda path, at: None)
    assert keys.lost_groups() == []
    keys.lose("b")
    keys.clear()
    assert keys.lost_groups() == []
    assert len(keys) == 0


def test_group_of_names_the_group_a_path_lives_on() -> None:
    keys: TTLKeys[str, str] = TTLKeys()
    keys.remember("a", "k", b"1")
    assert keys.group_of("k") == "a"
    keys.forget("k")
    assert keys.group_of("k") is None
