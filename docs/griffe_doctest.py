"""A griffe extension for the API reference: docstring examples (``>>>`` lines and their output) become
Python code blocks, and Sphinx roles (``:func:`x```) become code spans, so the reference renders them as code.

Used by mkdocs.yml (mkdocstrings' ``extensions`` option); not part of the package.

>>> doctest_to_markdown("Sum.\\n\\n>>> 1 + 1\\n2")
'Sum.\\n\\n```python\\n>>> 1 + 1\\n2\\n```'
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|data|meth|attr|mod|exc|obj|py:\w+):`~?([^`]+)`")


def doctest_to_markdown(text: str) -> str:
    """``text`` with each run of ``>>>`` / ``...`` lines and the output lines after it (up to a blank line) fenced
    as a Python block, and Sphinx roles turned into code spans."""
    out: list[str] = []
    in_block = False
    for line in text.split("\n"):
        stripped = line.strip()
        if not in_block and stripped.startswith(">>>"):
            out.append("```python")
            in_block = True
        elif in_block and not stripped:
            out.append("```")
            in_block = False
        out.append(line if in_block else _ROLE.sub(r"`\1`", line))
    if in_block:
        out.append("```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Rewrites every loaded object's docstring with :func:`doctest_to_markdown`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = doctest_to_markdown(obj.docstring.value)
