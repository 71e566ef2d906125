"""pykv's fault-injection suite: workloads, nemeses and checkers (see README.md)."""
