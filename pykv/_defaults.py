"""Where the default store lives: ``PYKV_STORE``, else a sqlite file in the user data dir."""

from __future__ import annotations

import os

__all__ = ["STORE_ENV", "default_sqlite_path", "default_store_url"]

STORE_ENV = "PYKV_STORE"


def default_sqlite_path() -> str:
    """``<user data dir>/pykv/pykv.db`` (e.g. ``~/.local/share/pykv/pykv.db`` on Linux)."""
    import platformdirs

    return os.path.join(platformdirs.user_data_dir("pykv", appauthor=False), "pykv.db")


def default_store_url() -> str:
    """The URL of the default store: ``$PYKV_STORE`` if set, else the default sqlite file."""
    env = os.environ.get(STORE_ENV, "").strip()
    if env:
        return env
    return "sqlite:///" + default_sqlite_path()
