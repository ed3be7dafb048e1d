"""An up-front bound on how long a run of many coalitions takes, printed before it starts.

Each coalition the engine computes runs at most the whole model over every item: at most about one
full evaluation, the one the engine timed when it captured the full model's states
(``EngineStats.capture_seconds``). Most cost less (a coalition starts at its first removed player
and reuses the cached prefix before it), so ``coalitions x full evaluation`` is an upper bound, and
the note says "up to". It is printed only when that bound is long (:data:`LONG_RUN_SECONDS`).
"""

from __future__ import annotations

import sys

LONG_RUN_SECONDS = 120.0  # the note is printed when the bound is longer than this (tests set it to 0)

__all__ = ["LONG_RUN_SECONDS", "estimate_note", "format_seconds", "print_estimate"]


def format_seconds(seconds: float) -> str:
    """A duration for a note: ``1.9 s``, ``0.25 s``, ``4.2 min``, ``3.1 h``."""
    if seconds < 1:
        return f"{seconds:.2g} s"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_note(
    n_coalitions: int | None,
    full_seconds: float,
    n_items: int | None = None,
    *,
    items_word: str = "items",
    threshold: float | None = None,
    exact_count: bool = True,
) -> str | None:
    """The note's text (without ``note: ``), or None when the bound is at most ``threshold`` seconds
    (default :data:`LONG_RUN_SECONDS`) or cannot be given (count not known, no timing).

    ``n_coalitions``: coalitions still to compute; ``full_seconds``: one full evaluation's time;
    ``exact_count=False``: the count is a cap (a budget), not the number that will run."""
    if threshold is None:
        threshold = LONG_RUN_SECONDS
    if not n_coalitions or n_coalitions < 1 or not full_seconds > 0:
        return None
    bound = n_coalitions * full_seconds
    if not bound > threshold:
        return None
    count = f"about {n_coalitions:,}" if exact_count else f"at most about {n_coalitions:,}"
    of = f" of {n_items:,} {items_word}" if n_items else ""
    return (
        f"{count} coalitions, each up to {format_seconds(full_seconds)} (one full evaluation{of}): "
        f"up to {format_seconds(bound)}; --limit N scores fewer {items_word}"
    )


def print_estimate(engine, n_coalitions: int | None, data: dict | None, *, exact_count: bool = True) -> str | None:
    """Print the note for ``engine`` about to compute ``n_coalitions`` (this process's share) on stderr,
    from the main process only; returns the text printed (None: nothing)."""
    from layerscope.core.distributed import is_main_process

    if not is_main_process():
        return None
    data = data or {}
    if data.get("n_items"):
        n_items, word = data["n_items"], "items"
    else:
        n_items, word = data.get("n_examples"), "examples"
    text = estimate_note(n_coalitions, engine.stats.capture_seconds, n_items, items_word=word, exact_count=exact_count)
    if text:
        print(f"note: {text}", file=sys.stderr)
    return text
