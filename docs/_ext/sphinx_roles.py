"""A griffe extension for the docs build: Sphinx roles in docstrings become code spans.

The docstrings cross-reference with Sphinx roles (``:class:`~pykv.KeyNotFoundError```), which
read well in ``help()`` and editors; Markdown would show them raw. This rewrites each role to a
code span of its target, shortened as ``~`` asks.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|exc|data|obj):`(~?)([^`]+)`")


def _span(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):  # ~pykv.KeyNotFoundError shows as KeyNotFoundError
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_span, obj.docstring.value)
