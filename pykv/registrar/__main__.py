"""``python -m pykv.registrar``: the same as the ``pykv-registrar`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
