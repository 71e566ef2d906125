"""A child process for the recipe conformance tests: ``python -m pykv.testing._recipe_child URL
PREFIX OPTIONS_JSON ACTION ARGS...``. It prints one JSON line when ready.

Actions that then wait to be killed: ``elect NAME VALUE TTL``, ``join GROUP MEMBER TTL``,
``semaphore NAME LIMIT TTL``. ``count NAME TIMES GO`` prints ready, waits for the key GO to
exist (so that every child starts at once), adds 1 TIMES times, prints the values it got and
exits.
"""

from __future__ import annotations

import json
import sys
import time

import pykv
from pykv.recipes import Counter, Election, Group, Semaphore


def _say(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    url, prefix, options, action, *args = argv
    store = pykv.open_store(url, prefix=prefix, **json.loads(options))
    ready: dict[str, object] = {"action": action}
    if action == "elect":
        name, value, ttl = args
        election = Election(store, name, ttl=float(ttl))
        if not election.campaign(value, timeout=60):
            _say({"error": "not elected"})
            return 1
        ready["token"] = election.token
    elif action == "join":
        group, member, ttl = args
        Group(store, group).join(member, b"child", ttl=float(ttl))
    elif action == "semaphore":
        name, limit, ttl = args
        if not Semaphore(store, name, int(limit), value=b"child", ttl=float(ttl)).acquire(60):
            _say({"error": "no slot"})
            return 1
    elif action == "count":
        name, times, go = args
        _say(ready)
        deadline = time.monotonic() + 60
        while not store.exists(go) and time.monotonic() < deadline:
            time.sleep(0.01)
        counter = Counter(store, name)
        values = [counter.add(1, timeout=120) for _ in range(int(times))]
        _say({"values": values})
        store.close()
        return 0
    else:
        _say({"error": f"unknown action {action}"})
        return 2
    _say(ready)
    while True:  # hold until killed
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
