"""Ties in a ranking: which scores are equal for all practical purposes, and when ties rather than
importance decided an order or a selection, said in one line with what to do about it.

A ranking cut short (an ILA run with few gate steps, accuracy on few items) leaves many players with
the same score; sorting then falls back on layer order, silently. These helpers find the tied groups
and word the warning that ``run_ila``, the selection for fine-tuning and the report give.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the functions take a result; importance.py imports this module
    from layerscope.core.importance import LayerImportance


def rank_value(x: float | None) -> float:
    """A score as ranking reads it: a missing or non-finite one ranks last."""
    return x if x is not None and math.isfinite(x) else -math.inf


# Scores this close, relative to the largest |score|, are tied: float32 holds about 7 digits, and an
# ILA run cut short leaves its gates a few units in the last place apart, which is noise, not an order.
TIE_RTOL = 1e-5


class TiedRankingWarning(UserWarning):
    """A module selection that tied scores decided, not importance."""


def tie_groups(scores: list[float], rtol: float = TIE_RTOL) -> list[list[int]]:
    """Indices of players whose scores tie, one list per group of two or more, in score order.

    Neighbours in sorted order tie when they differ by at most ``rtol`` times the largest finite
    |score|; missing or non-finite scores tie with each other (they rank last together).
    """
    values = [rank_value(x) for x in scores]
    finite = [abs(v) for v in values if math.isfinite(v)]
    tol = rtol * max(finite, default=0.0)
    order = sorted(range(len(values)), key=lambda i: values[i])
    groups: list[list[int]] = []
    run = order[:1]
    for prev, i in zip(order, order[1:]):
        a, b = values[prev], values[i]
        if a == b or b - a <= tol:
            run.append(i)
            continue
        if len(run) > 1:
            groups.append(run)
        run = [i]
    if len(run) > 1:
        groups.append(run)
    return groups


def levelled(scores: list[float], rtol: float = TIE_RTOL) -> list[float]:
    """Scores as a ranking orders them: each tied group (:func:`tie_groups`) at its highest score, so
    forward order, not float noise, orders it. An ablation's 0.0 and -1.4e-17 (the same accuracy, minus
    rounding) would otherwise rank by the rounding."""
    values = [rank_value(x) for x in scores]
    for group in tie_groups(scores, rtol):
        top = max(values[i] for i in group)
        for i in group:
            values[i] = top
    return values


def ties_across(imp: LayerImportance, chosen, pool=None) -> list[str]:
    """The chosen players whose score ties that of a player of ``pool`` (default: all players) left
    out: which of them were chosen followed forward order, not importance."""
    return [kept for kept, _ in _tied_pairs(imp, chosen, pool)]


def _tied_pairs(imp: LayerImportance, chosen, pool=None) -> list[tuple[str, str]]:
    """(chosen player, a player of ``pool`` left out that ties with it), in layer order of the chosen."""
    chosen = set(chosen)
    pool = set(imp.players if pool is None else pool) | chosen
    partner: dict[str, str] = {}
    for group in tie_groups(imp.scores):
        names = [imp.players[i] for i in group if imp.players[i] in pool]
        left_out = [n for n in names if n not in chosen]
        if left_out:
            partner.update((n, left_out[0]) for n in names if n in chosen)
    return [(p, partner[p]) for p in imp.players if p in partner]


def _all_tied(imp: LayerImportance) -> bool:
    return len(imp.players) > 1 and imp.tied_fraction() == 1.0 and len(tie_groups(imp.scores)) == 1


def ranking_tie_warning(imp: LayerImportance, at_least: float = 0.5) -> str | None:
    """One line when ties, not importance, order much of a ranking as it is made: every score the same,
    or ``at_least`` of the players tied with another; None otherwise (a pair or two of tied scores is
    common and matters only where a selection splits them: :func:`tie_warning`)."""
    n = len(imp.players)
    if _all_tied(imp):
        return (
            f"every score of the {imp.method} ranking ({n} players) is the same to 5 digits, so it orders "
            f"them by layer, not importance; {_tie_advice(imp)}"
        )
    tied = round(imp.tied_fraction() * n) if n else 0
    if n > 1 and tied >= at_least * n:
        return (
            f"{tied} of the {n} scores of the {imp.method} ranking tie with another to 5 digits, so layer "
            f"order, not importance, orders much of it; {_tie_advice(imp)}"
        )
    return None


def tie_warning(imp: LayerImportance, chosen, pool=None) -> str | None:
    """One line saying that ties, not importance, decided (part of) a selection, why that matters and
    what to do; None when the scores decided it."""
    if _all_tied(imp):
        return (
            f"every score of the {imp.method} ranking ({len(imp.players)} players) is the same to 5 digits, "
            f"so the selection follows layer order, not importance; {_tie_advice(imp)}"
        )
    across = _tied_pairs(imp, chosen, pool)
    if not across:
        return None
    kept, left_out = across[0]
    return (
        f"{len(across)} of the {len(set(chosen))} selected players tie in score with players left out (e.g. "
        f"{kept} with {left_out}), so layer order, not importance, chose between them; {_tie_advice(imp)}"
    )


def _tie_advice(imp: LayerImportance) -> str:
    method = imp.method
    if method.startswith("ila"):
        return "rerun ila with more --gate-steps (or a larger --gate-lr) for a ranking that separates them"
    on_loss = imp.data.get("task") == "loss" or imp.data.get("metric") == "-loss"
    if method.startswith(("ablation", "shapley")) and on_loss:
        # a held-out loss (--task loss:FILE) ties only where removals really are alike: zeroing q_proj or
        # k_proj flattens the attention alike, zeroing gate/up/down_proj silences the MLP alike
        return (
            "these values are a held-out loss already, so the ties are exact (those removals give the same "
            "model); more data would not separate them"
        )
    if method.startswith(("ablation", "shapley")):
        return "rerun on more items (--limit), or with --task loss:FILE, whose values tie far less often than accuracy"
    return "recompute the ranking on more data"


def short_windows(imp: LayerImportance) -> list[str]:
    """The blocks an angular distance over windows of more than one block scored over shorter spans (its
    last ``window - 1``, ``extras["short_windows"]``): smaller for that alone, so last in its ranking."""
    if imp.method != "angular-distance":
        return []
    return list(((imp.extras or {}).get("short_windows") or {}).get("blocks") or [])


def short_window_note(imp: LayerImportance) -> str | None:
    """One line when a ranking's order at its end comes from window length, not importance; None otherwise."""
    short = short_windows(imp)
    if not short:
        return None
    which = short[0] if len(short) == 1 else f"{short[0]} to {short[-1]}"
    return (
        f"the angular distance with window {imp.method_config.get('window')} scores {which} over shorter "
        "spans, so they rank least important for that alone; rank blocks on a window-1 result (pruning's "
        "window rule reads extras['table'] and is unaffected)"
    )
