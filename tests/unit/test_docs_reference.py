"""The API reference page documents every public name of ``pykv``."""

from __future__ import annotations

from pathlib import Path

import pykv

PAGE = Path(__file__).parents[2] / "docs" / "reference" / "pykv.md"


def test_every_public_name_is_on_the_reference_page() -> None:
    page = PAGE.read_text()
    missing = [
        name
        for name in pykv.__all__
        if not name.startswith("_") and f"::: pykv.{name}\n" not in page
    ]
    assert missing == [], f"add these to {PAGE.name}: {missing}"
