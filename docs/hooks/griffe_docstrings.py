"""Griffe extension: read the package's docstrings as the API reference shows them.

- Their doctests are titled ``Example:``; Google style's section is ``Examples:``. The one is read as
  the other, so the reference shows them as code, not as Markdown.
- Their cross-references are Sphinx roles (``:func:`~balanced_l1.detection.use_libra```), which Markdown
  would show verbatim; each becomes the name in code (the last part of a ``~`` path).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.M)
_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`(~?)([^`<]+?)(?:\s*<[^`>]+>)?`")


def _role(match: re.Match[str]) -> str:
    name = match.group(2).strip()
    if match.group(1):
        name = name.rsplit(".", 1)[-1]
    return f"`{name.lstrip('.')}`"


class SphinxDocstrings(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_role, _EXAMPLE.sub(r"\1Examples:", obj.docstring.value))
