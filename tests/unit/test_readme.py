"""The README's capability table is generated from the declarations, never typed by hand."""

from __future__ import annotations

from pathlib import Path

from pykv._cli import capability_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_capability_table_matches_installed_backends() -> None:
    text = README.read_text(encoding="utf-8")
    block = text.split("<!-- capabilities:start -->")[1].split("<!-- capabilities:end -->")[0]
    documented = [line for line in block.strip().splitlines()]
    generated = [
        line
        for line in capability_table(markdown=True).splitlines()
        if not line.startswith("(failed")
    ]
    assert documented == generated, (
        "README capability table is stale; regenerate it with `pykv backends --markdown`"
    )
