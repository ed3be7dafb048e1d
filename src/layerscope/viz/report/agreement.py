"""The report's agreement between methods: ``layerscope compare``'s matrices and notes, with what the
numbers cannot say marked where they stand. A Jaccard with a ranking whose top K was cut inside a group
of tied scores measures layer order, not agreement; a ranking whose scores are all equal has no order,
so its rank correlation is undefined (``compare`` writes 0.0, which reads as "no relation")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from layerscope.core.ties import tie_groups, tie_warning

if TYPE_CHECKING:
    from layerscope.core.importance import LayerImportance
    from layerscope.viz.report.model import Result


@dataclass
class Agreement:
    level: str
    labels: list[str]
    spearman: list[list[float]]  # NaN where undefined or unknown (``spearman_undefined`` tells which)
    jaccard: list[list[float]]
    fraction: float
    k: int
    n_players: int
    random_jaccard: float
    in_every_top: list[str]  # players every method puts in its top K, forward order
    rule: str
    notes: list[str] = field(default_factory=list)  # compare's: ties, missing scores, short windows
    tied_top: list[str] = field(default_factory=list)  # results whose top K ties, not scores, decided
    no_order: list[str] = field(default_factory=list)  # results whose scores are all equal (at ``level``)
    spearman_undefined: list[list[bool]] = field(default_factory=list)  # a ranking of the pair has no order
    jaccard_tied: list[list[bool]] = field(default_factory=list)  # a top set of the pair was cut inside a tie


def agreement(results: list[Result], fraction: float, notes: list[str], ignore_fingerprint: bool = False):
    """The agreement of ``results`` (None for fewer than two, said in ``notes``). Notes that concern the
    page as a whole (one result given twice) join ``notes``; the others stay beside the grids."""
    if len(results) < 2:
        if results:
            notes.append("agreement between methods needs at least two importance results")
        return None
    from layerscope.core.levels import AGGREGATION_RULE, to_level
    from layerscope.viz.compare import compare

    labels = [r.label for r in results]
    comp = compare([r.imp for r in results], labels, fraction=fraction, ignore_fingerprint=ignore_fingerprint)
    at_level = [to_level(r.imp, comp.level) for r in results]
    # a player with no score (NaN, ranked last) is in no top set: an unscored result shares no top player
    tops = [{p for p, s in zip(r.players, r.scores) if math.isfinite(s)} & set(r.top(fraction)) for r in at_level]
    common = [p for p in at_level[0].players if all(p in t for t in tops)]
    twins = [n for n in comp.notes if "the same result as" in n]
    notes += twins
    # the top set compare's tie notes speak of (an unscored result has no Jaccard to mark)
    tied = [any(math.isfinite(s) for s in r.scores) and tie_warning(r, r.top(fraction)) is not None for r in at_level]
    n = len(results)
    undefined = [[_no_order_between(at_level[i], at_level[j]) for j in range(n)] for i in range(n)]
    spearman = [[math.nan if undefined[i][j] else v for j, v in enumerate(row)] for i, row in enumerate(comp.spearman)]
    return Agreement(
        level=comp.level,
        labels=labels,
        spearman=spearman,
        jaccard=comp.jaccard,
        fraction=fraction,
        k=comp.k,
        n_players=comp.n_players,
        random_jaccard=comp.random_jaccard[f"{fraction:g}"],
        in_every_top=common,
        rule=AGGREGATION_RULE,
        notes=[x for x in comp.notes if x not in twins],
        tied_top=[lab for lab, t in zip(labels, tied) if t],
        no_order=[lab for lab, r in zip(labels, at_level) if no_order(r.scores)],
        spearman_undefined=undefined,
        jaccard_tied=[[i != j and (tied[i] or tied[j]) for j in range(n)] for i in range(n)],
    )


def no_order(scores: list[float]) -> bool:
    """Whether scores say nothing about order: two or more scored players, every one tied with the
    others (``core.ties.tie_groups``), or none scored at all."""
    finite = [s for s in scores if s is not None and math.isfinite(s)]
    if not finite:
        return bool(scores)
    groups = tie_groups(finite)
    return len(finite) > 1 and len(groups) == 1 and len(groups[0]) == len(finite)


def _no_order_between(a: LayerImportance, b: LayerImportance) -> bool:
    """Whether either ranking is constant over the players both scored: the rank correlation of the pair
    is undefined (a constant has no ranks to correlate)."""
    both = [i for i, (x, y) in enumerate(zip(a.scores, b.scores)) if math.isfinite(x) and math.isfinite(y)]
    if len(both) < 3:  # compare gives no correlation (NaN) this short: nothing more to say
        return False
    return no_order([a.scores[i] for i in both]) or no_order([b.scores[i] for i in both])


# ----------------------------------------------------------------------------- cells that are no agreement

UNDEFINED = "undef."  # a rank correlation with a ranking that has no order


def spearman_flags(a: Agreement) -> list[list[tuple[str, str] | None]]:
    """(text, why) of each Spearman cell a ranking without order makes undefined, else None: the page
    and the Markdown mark them alike."""
    why = "undefined: a ranking of this pair has every score the same (no order to correlate)"
    return [[(UNDEFINED, why) if u else None for u in row] for row in a.spearman_undefined]


def jaccard_flags(a: Agreement) -> list[list[tuple[str, str] | None]]:
    """(text, why) of each Jaccard cell whose top sets ties decided (the number with a *), else None."""
    why = "a top set of this pair was cut inside a group of tied scores: layer order chose it, not importance"
    return [
        [(f"{v:.2f}*", why) if t and math.isfinite(v) else None for v, t in zip(vs, ts)]
        for vs, ts in zip(a.jaccard, a.jaccard_tied)
    ]


def no_order_legend(a: Agreement) -> str:
    """What an undefined Spearman cell means, naming the rankings without order."""
    its = "its" if len(a.no_order) == 1 else "their"
    return (
        f"{UNDEFINED}: every score of {', '.join(a.no_order)} is the same at {a.level} level, so {its} rank "
        "correlation with any ranking is undefined (not 0: no relation was measured)."
    )


def tied_top_legend(a: Agreement) -> str:
    """What a starred Jaccard cell means, naming the rankings whose top set ties decided."""
    return (
        f"*: the top {a.fraction:.0%} of {', '.join(a.tied_top)} is cut inside a group of tied scores, so layer "
        "order, not importance, chose part of it; an overlap with it is not agreement (not coloured as such)."
    )
