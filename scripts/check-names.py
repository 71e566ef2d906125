#!/usr/bin/env python3
"""Check that the project's distribution names are still free (or ours) on the package index.

The import name is ``pykv``, but the name ``pykv`` on the package index belongs to an unrelated
project, so the distributions are named ``pykvstore`` and ``pykvstore-<backend>``. Run this
before a release (it is not part of CI: CI reaches the index only to install):

    python3 scripts/check-names.py               # every name must have no release there yet
    python3 scripts/check-names.py --ours 0.1.0   # after a release: only our versions are there

For each distribution it also looks up the name with a separator inside it (``pykv-store``):
the index refuses a new name that equals an existing one once separators are dropped.
It asks pip (``pip index versions``), the index's ordinary client, one name at a time.
Exit status: 0 all free or ours, 1 a name is taken, 2 a lookup failed (no index reachable).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME_RE = re.compile(r'^name\s*=\s*"([^"]+)"', re.MULTILINE)


def distribution_names() -> list[str]:
    """The names in the root and every shipped backend's pyproject.toml (not the template)."""
    files = [ROOT / "pyproject.toml"]
    files += sorted(
        p for p in ROOT.glob("backends/*/pyproject.toml") if not p.parent.name.startswith("_")
    )
    names = []
    for f in files:
        found = NAME_RE.search(f.read_text(encoding="utf-8"))
        if not found:
            sys.exit(f"check-names: no [project] name in {f}")
        names.append(found.group(1))
    return names


def variants(name: str) -> list[str]:
    """The name itself, then the name with a separator after the "pykv" it starts with."""
    out = [name]
    if name.startswith("pykvstore"):
        out.append("pykv-store" + name[len("pykvstore") :])
    return out


def versions(name: str, timeout: float) -> list[str] | None:
    """Released versions of ``name`` on the index; [] when there are none; None when unknown."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", "--disable-pip-version-check", name],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        print(f"  {name}: no answer within {timeout:g} s", file=sys.stderr)
        return None
    text = proc.stdout + proc.stderr
    if proc.returncode == 0:
        listed = re.search(r"Available versions:\s*(.+)", text)
        return [v.strip() for v in listed.group(1).split(",")] if listed else []
    if "No matching distribution found" in text:
        return []
    print(f"  {name}: pip failed: {text.strip()[-500:]}", file=sys.stderr)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ours", nargs="*", default=[], metavar="VERSION", help="versions we released"
    )
    parser.add_argument("--timeout", type=float, default=60, help="seconds per lookup")
    args = parser.parse_args()
    status = 0
    for dist in distribution_names():
        for name in variants(dist):
            found = versions(name, args.timeout)
            if found is None:
                print(f"? {name}: lookup failed")
                status = max(status, 2)
            elif not found:
                print(f"ok {name}: no release on the index")
            elif name == dist and set(found) <= set(args.ours):
                print(f"ok {name}: only our releases ({', '.join(found)})")
            else:
                print(f"TAKEN {name}: released there as {', '.join(found)}")
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
