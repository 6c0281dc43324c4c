"""A Griffe extension for the Python API page: docstring examples shown as code.

The docstrings' ``>>>`` examples (which pytest runs) are plain text to Markdown,
where ``[...]`` in an output reads as a link. Each run of ``>>>`` / ``...``
lines and the output after them, up to a blank line, is fenced as ``pycon``.
"""

from __future__ import annotations

from typing import Any

import griffe

__all__ = ["FenceDoctests", "fence_doctests"]


def fence_doctests(text: str) -> str:
    """``text`` with every doctest block fenced.

    >>> fence_doctests("Adds.\\n\\n>>> 1 + 1\\n2\\n\\nDone.").splitlines()[2:6]
    ['```pycon', '>>> 1 + 1', '2', '```']
    """
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        starts = line.lstrip().startswith(">>>")
        if starts and not inside:
            out.append("```pycon")
            inside = True
        elif inside and not line.strip():
            out.append("```")
            inside = False
        out.append(line)
    if inside:
        out.append("```")
    return "\n".join(out)


class FenceDoctests(griffe.Extension):
    """Fences the doctest blocks of every docstring loaded."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
