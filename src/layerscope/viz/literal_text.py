"""Figures whose text is shown as written: labels, model names and paths are the user's, and
matplotlib would read a ``$`` in them as the start of math (``cost$5`` fails to parse)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def literal_text(draw: F) -> F:
    """Run ``draw`` with matplotlib's math parsing off: every text it creates is plain."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
