"""Show the code that runs: notebooks display library source instead of copying it."""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

from . import check

__all__ = ["show", "source"]


def source(obj: Any) -> str:
    """The source text of a function, class, method or module, dedented."""
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (TypeError, OSError) as e:
        raise ValueError(f"obj: no source available for {obj!r} ({e})") from None


def show(obj: Any, *, lines: tuple[int, int] | None = None):
    """Display the source of ``obj`` highlighted (HTML in Jupyter, plain text elsewhere).

    ``lines=(first, last)`` shows only those lines (1-based, inclusive) of the source.
    Returns the displayed object so a notebook cell can end with ``show(fn)``.
    """
    text = source(obj)
    if lines is not None:
        if (not isinstance(lines, (tuple, list)) or len(lines) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in lines)):
            check.fail("lines", "(first, last) with 1 <= first <= last", lines)
        first, last = lines
        if not (1 <= first <= last):
            check.fail("lines", "(first, last) with 1 <= first <= last", lines)
        text = "\n".join(text.splitlines()[first - 1:last]) + "\n"
    where = _where(obj)
    return _Source(text, where)


def _where(obj: Any) -> str:
    module = inspect.getmodule(obj)
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", ""))
    mod = module.__name__ if module else "?"
    return f"{mod}.{name}" if name and name != mod else mod


class _Source:
    """Renders as highlighted HTML in Jupyter and as plain text in a terminal."""

    def __init__(self, text: str, where: str):
        self.text, self.where = text, where

    def __repr__(self) -> str:
        return f"# {self.where}\n{self.text}"

    def _repr_html_(self) -> str:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        fmt = HtmlFormatter(noclasses=True, style="friendly", nobackground=False)
        body = highlight(self.text, PythonLexer(), fmt)
        return f"<div><small><code>{self.where}</code></small>{body}</div>"
