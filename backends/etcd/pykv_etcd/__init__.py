"""pykv driver (work in progress)."""
