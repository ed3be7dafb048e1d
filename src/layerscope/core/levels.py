"""Bring importance results of different granularities to one level, so they can be compared.

The levels, finest to coarsest: module -> sublayer -> block, and expert -> block (an expert is
part of a MoE MLP, not made of linear modules, and a block's attention has no experts, so expert
results meet the others at block level). A result only aggregates upwards (a block score cannot
be split into its modules). Which player belongs to which coarser one
comes from the layer map's :class:`~layerscope.core.layermap.Player` records rebuilt from the
result's own player names, never from parsing names here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance
from layerscope.core.layermap import check_granularity, layer_map_from_names
from layerscope.core.player_names import with_article

LEVELS = ("module", "expert", "sublayer", "block")  # finest first: every level is listed after those below it
COARSER = {"module": ("sublayer", "block"), "expert": ("block",), "sublayer": ("block",), "block": ()}

AGGREGATION_RULE = (
    "Results of different granularities are compared at one level (module -> sublayer -> block, "
    "expert -> block, coarser only): a sub-layer's score is the mean of its modules' scores, a block's "
    "the mean of all its players' scores (its modules, its attention and MLP sub-layers, or its "
    "experts); a group with a missing score is missing."
)


def reaches(granularity: str, level: str) -> bool:
    """A ``granularity`` result aggregates to ``level`` (itself or a coarser level above it)."""
    return level == check_granularity(granularity) or level in COARSER[granularity]


def coarsest(granularities: Iterable[str]) -> str:
    """The finest level every one of ``granularities`` reaches (e.g. module + sublayer + block -> block,
    module + expert -> block)."""
    levels = [check_granularity(g) for g in granularities]
    if not levels:
        raise ConfigError("no granularities to choose a level from")
    return next(lv for lv in LEVELS if all(reaches(g, lv) for g in levels))


def to_level(imp: LayerImportance, level: str) -> LayerImportance:
    """``imp`` aggregated to ``level`` (itself when already there).

    Rule: a sub-layer's score is the mean of its modules' scores; a block's score is the mean of
    all its players' scores (its modules, its two sub-layers, or its experts). A group holding a missing (NaN)
    score scores NaN, so it ranks last rather than on a partial mean. Means keep rankings between
    blocks of equal size exactly as sums would. The same rule as ``LayerImportance.by_block``.

    The result keeps the method, model, data, config and baseline; ``stderr`` and per-player
    ``extras`` are dropped (they no longer line up with the players), and
    ``extras["aggregated_from"]`` records the source granularity and player count.
    """
    check_granularity(level)
    if not reaches(imp.granularity, level):
        verb = "refine" if LEVELS.index(level) < LEVELS.index(imp.granularity) else "bring"
        raise ConfigError(
            f"cannot {verb} {with_article(imp.granularity)}-level {imp.method} result to {level} level "
            "(aggregation only goes coarser: module -> sublayer -> block, expert -> block)"
        )
    if level == imp.granularity:
        return imp
    groups = _groups(imp, level)
    score = imp.score_of()
    return LayerImportance(
        method=imp.method,
        granularity=level,
        players=list(groups),
        scores=[_mean([score[m] for m in members]) for members in groups.values()],
        model=dict(imp.model),
        data=dict(imp.data),
        method_config=dict(imp.method_config),
        stderr=None,
        n_evaluations=imp.n_evaluations,
        baseline=dict(imp.baseline),
        seed=imp.seed,
        versions=dict(imp.versions),
        created=imp.created,
        timings=dict(imp.timings),
        extras={"aggregated_from": {"granularity": imp.granularity, "n_players": len(imp.players), "rule": "mean"}},
    )


def _groups(imp: LayerImportance, level: str) -> dict[str, list[str]]:
    """Coarse player name -> the result's players inside it, both in forward order."""
    layer_map = layer_map_from_names(imp.players, imp.granularity)
    coarse = layer_map.player_records(level)
    if level == "block":
        name_of_block = {p.block: p.name for p in coarse}
        member_of = {p.name: name_of_block[p.block] for p in imp.player_records()}
    else:  # module -> sublayer: each sub-layer record lists its linear modules
        member_of = {m: s.name for s in coarse for m in s.linears}
    groups: dict[str, list[str]] = {p.name: [] for p in coarse}
    for player in imp.players:
        groups[member_of[player]].append(player)
    return {name: members for name, members in groups.items() if members}


def _mean(values: list[float | None]) -> float:
    if any(v is None or not math.isfinite(v) for v in values):
        return math.nan
    return sum(values) / len(values)  # type: ignore[arg-type]
