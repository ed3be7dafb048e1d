"""Which players to remove: from an importance ranking, a rule, or a greedy search.

The rules return player indices (forward order of the layer map at the pruning granularity) to
remove for a given count ``k``; the two for users of a saved ranking return names, which say their
level, so a block pruner refuses sub-layer names and the reverse:

- :func:`least_important`: the names of the ``k`` lowest-scoring players of a ranking, at its own
  granularity (a block ranking's for ``prune``, a sub-layer ranking's for ``prune_sublayers``);
- :func:`least_important_blocks`: the names of the ``k`` least important *blocks* of a ranking of
  any granularity, what ``layerscope prune`` removes: a finer ranking is first aggregated with
  :func:`layerscope.core.levels.to_level` (a block's score is the mean of its players' scores,
  ``AGGREGATION_RULE``); a block whose aggregated score is missing refuses the ranking rather than
  guess where it belongs;
- :func:`least_players`: the same rule as positions in ``imp.players``, for a ranking already
  brought to the pruning level (what ``choose`` and ``curve`` use);
- :func:`angular_window`: Gromov et al.'s rule, the ``k`` consecutive blocks whose input and
  output are closest in angular distance (``extras["table"]`` of an ``angular-distance`` result);
- :func:`last_players`: the last ``k`` (the deepest blocks: a baseline);
- :func:`random_players`: the first ``k`` of a permutation drawn from ``seed`` (nested in ``k``);
- :func:`greedy_players`: remove one player at a time, each time the one whose removal costs
  least given those already removed (one coalition-engine evaluation per remaining player).
"""

from __future__ import annotations

import math
import numbers
import random
from typing import TYPE_CHECKING

from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance
from layerscope.core.layermap import LayerMap
from layerscope.core.levels import to_level
from layerscope.core.ties import short_windows

if TYPE_CHECKING:
    from layerscope.engine.coalitions import CoalitionEngine

RULES = ("last", "random", "greedy")  # orders that need no importance result
ANGULAR = "angular-distance"


def checked_count(k: int, n: int, what: str = "blocks") -> int:
    """``k`` players to remove out of ``n``: at least one removed, at least one kept."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ConfigError(f"the number of {what} to remove must be a whole number >= 1 (got {k!r})")
    if k >= n:
        raise ConfigError(f"cannot remove {k} of the model's {n} {what}: at least one must stay")
    return int(k)  # a NumPy count would reach the JSON written at the end


def count_from_fraction(fraction: float, n: int, what: str = "blocks") -> int:
    """floor(fraction * n) players (so a fraction never removes more than asked), checked."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction < 1:
        raise ConfigError(f"--fraction {fraction!r} must be in (0, 1)")
    k = int(math.floor(fraction * n + 1e-9))
    if k < 1:
        raise ConfigError(f"--fraction {fraction:g} of {n} {what} removes none (use at least {1 / n:.3g})")
    return checked_count(k, n, what)


def aggregated(imp: LayerImportance, granularity: str, where: str) -> LayerImportance:
    """``imp`` at ``granularity`` (``core.levels.to_level``), refused when a player's score is
    missing after aggregation; needs no model, so a bad ranking fails before one loads."""
    try:
        out = to_level(imp, granularity)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    _refuse_missing_scores(out, f"{where}: cannot aggregate the ranking to {granularity}s")
    return out


def _refuse_missing_scores(imp: LayerImportance, doing: str) -> None:
    """A missing score (NaN) ranks last, so it would be removed first: refused where players are chosen."""
    missing = [p for p, s in zip(imp.players, imp.scores) if s is None or not math.isfinite(s)]
    if missing:
        n = len(imp.players)
        raise ConfigError(f"{doing}: {missing[0]} has a missing score ({len(missing)} of {n} without one)")


def at_level(imp: LayerImportance, layer_map: LayerMap, granularity: str, where: str) -> LayerImportance:
    """:func:`aggregated`, refused unless its players are the layer map's."""
    out = aggregated(imp, granularity, where)
    want = layer_map.players(granularity)
    if out.players != want:
        raise ConfigError(
            f"{where}: its {granularity} players ({len(out.players)}, e.g. {out.players[0]!r}) are not the model's "
            f"({len(want)}, e.g. {want[0]!r}): ranking from another model?"
        )
    return out


def least_important(imp: LayerImportance, k: int) -> list[str]:
    """Names of the ``k`` lowest-scoring players of ``imp``, at its own granularity, in forward order
    (ties: the later player first, as ``ranking()`` reversed). A block ranking's names go to ``prune``,
    a sub-layer ranking's to ``prune_sublayers``; each refuses the other's names, so a ranking cannot be
    pruned at the wrong level. Blocks from a finer ranking: :func:`least_important_blocks`. Names come in
    the ranking's player order (forward order for every ranking layerscope writes)."""
    _refuse_short_windows(imp)
    checked_count(k, len(imp.players), f"{imp.granularity}s")
    _refuse_missing_scores(imp, f"cannot choose the least important {imp.granularity}s")
    return [imp.players[i] for i in least_players(imp, k)]


def _refuse_short_windows(imp: LayerImportance) -> None:
    """An angular distance over windows of more than one block scores its last blocks over shorter
    spans, so they are the least important for that alone: such a ranking is not read score by score."""
    short = short_windows(imp)
    if short:
        raise ConfigError(
            f"an angular distance with window {imp.method_config.get('window')} scores {', '.join(short)} over "
            "shorter spans, so ranking by score would remove them first: use angular_window(ranking, k) "
            "(Gromov's window, what layerscope prune removes)"
        )


def least_important_blocks(imp: LayerImportance, k: int) -> list[str]:
    """Names of the ``k`` least important blocks of ``imp``, whatever its granularity.

    A sub-layer, module or expert ranking is aggregated to blocks first (mean per block, the reduction
    ``layerscope prune --importance`` applies), so ``prune(model, least_important_blocks(imp, k))``
    removes what the command removes from the model the ranking was made on. The command also checks
    the ranking against the model (every block scored, the same names) and takes Gromov's window for
    an angular-distance result: :func:`~layerscope.pruning.choose.from_ranking` does both.
    """
    blocks = aggregated(imp, "block", "least_important_blocks")
    return least_important(blocks, k)


def least_players(imp: LayerImportance, k: int) -> list[int]:
    """Positions in ``imp.players`` of the ``k`` lowest scores, at ``imp``'s own granularity (ties:
    the later player first, as ``ranking()`` reversed); ``imp`` is already at the pruning level
    (:func:`at_level`), so positions are the layer map's player indices."""
    index = {p: i for i, p in enumerate(imp.players)}
    return sorted(index[p] for p in imp.ranking()[::-1][:k])


def angular_window(imp: LayerImportance, k: int) -> list[int]:
    """Gromov et al.: blocks l..l+k-1 for the l minimising d(l, l+k) (angular distance)."""
    table = (imp.extras or {}).get("table") if imp.method == ANGULAR else None
    if not isinstance(table, dict) or not isinstance(table.get(str(k)), list) or not table[str(k)]:
        raise ConfigError(
            f"the angular window needs an {ANGULAR} result with its distance table for windows of {k} blocks "
            f"(got {imp.method!r})"
        )
    row = [d if isinstance(d, (int, float)) and math.isfinite(d) else math.inf for d in table[str(k)]]
    if not any(math.isfinite(d) for d in row):
        raise ConfigError(f"the angular distance table has no finite distance for windows of {k} blocks")
    start = min(range(len(row)), key=lambda i: (row[i], i))
    return list(range(start, start + k))


def last_players(n: int, k: int) -> list[int]:
    return list(range(n - k, n))


def random_players(n: int, k: int, seed: int) -> list[int]:
    """The first ``k`` of a seeded permutation of ``0..n-1``: the sets for k and k+1 are nested."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[:k])


def greedy_players(engine: CoalitionEngine, k: int, progress: bool = False) -> tuple[list[int], list[float]]:
    """(players in the order removed, the value after each removal) for ``k`` greedy steps.

    Step t evaluates every remaining player's removal on top of the t already removed and takes
    the one leaving the highest value (ties: the earliest player)."""
    checked_count(k, engine.n, f"{engine.granularity}s")
    gone: list[int] = []
    values: list[float] = []
    for _ in range(k):
        left = [p for p in range(engine.n) if p not in gone]
        kept_if = [[q for q in left if q != p] for p in left]
        vals = engine.values(kept_if, progress=progress)
        # a removal whose value is NaN (an overflow) is the worst, not the best: max keeps a NaN found first
        best = max(range(len(left)), key=lambda j: (vals[j] if math.isfinite(vals[j]) else -math.inf, -j))
        gone.append(left[best])
        values.append(float(vals[best]))
    return gone, values
