"""A child process for the conformance suite: ``python -m pykv.testing._child URL PREFIX
OPTIONS_JSON ACTION ARGS...``. It prints one JSON line when ready, then waits to be killed.

Actions: ``ttl-put KEY VALUE TTL``, ``lock KEY VALUE TTL``, ``put KEY VALUE``.
"""

from __future__ import annotations

import json
import sys
import time

import pykv


def main(argv: list[str]) -> int:
    url, prefix, options, action, *args = argv
    store = pykv.open_store(url, prefix=prefix, **json.loads(options))
    ready: dict[str, object] = {"action": action}
    if action == "ttl-put":
        key, value, ttl = args
        store.put(key, value, ttl=float(ttl))
    elif action == "put":
        key, value = args
        store.put(key, value)
    elif action == "lock":
        key, value, ttl = args
        lock = store.lock(key, value=value, ttl=float(ttl))
        if not lock.acquire(timeout=30):
            print(json.dumps({"error": "could not acquire"}), flush=True)
            return 1
        ready["token"] = lock.token
    else:
        print(json.dumps({"error": f"unknown action {action}"}), flush=True)
        return 2
    print(json.dumps(ready), flush=True)
    if action == "put":
        store.close()
        return 0
    while True:  # hold the TTL key or lock until killed
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
