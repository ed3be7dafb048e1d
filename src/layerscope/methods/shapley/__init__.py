"""Shapley-value estimators over a plain value function.

A *game* here is ``value(kept) -> float`` where ``kept`` is the frozenset of players that stay in
(players are ``0..n-1`` in forward order, so ``value(frozenset(range(n)))`` is the full model).
Estimators never look inside the value function: the coalition engine that removes layers and
scores the model lives elsewhere (``layerscope.engine.coalitions``), which keeps these functions testable on
games whose Shapley values are known in closed form.

Estimators (all return :class:`ShapleyResult`, pick one by name with :func:`shapley`):

* ``exact`` - enumerate all ``2**n`` coalitions (small ``n`` only).
* ``proximity`` - Zhang et al. (arXiv 2409.14381): average of marginal contributions measured next
  to the full model with contiguous windows removed. Cheap (``~3n`` calls) but a local
  approximation, not an unbiased Shapley estimate.
* ``permutation`` - Monte Carlo over random orderings, antithetic pairs, optional TMC truncation.
* ``owen`` - stratified sampling of the multilinear extension (Owen 1972): draw a centre coalition
  with keep-probability ``q`` from a stratified grid and measure every player's marginal
  contribution against it (``n + 1`` calls give one sample for all ``n`` players). Stratifying
  ``q`` removes the variance that comes from *where* in an ordering a player arrives, which is
  large in layer games (a model works only when enough layers are kept), and because all players
  share each centre their errors move together, so rankings come out better than per-player
  errors suggest (measurements: docs/shapley.md, "Choosing an estimator").

:func:`shapley_importance` runs one on a coalition engine and returns a ``LayerImportance``.

Every estimator memoises the value function on the coalition, so ``n_evaluations`` is the number
of *distinct* coalitions evaluated. A value object may also offer
``values(list_of_frozensets) -> sequence of floats``; estimators then hand it whole batches
(all coalitions of a permutation, all windows, all neighbours of a centre), so an engine can order
them to reuse computation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from layerscope.core.errors import ConfigError
from layerscope.methods.shapley.common import ShapleyResult, Value
from layerscope.methods.shapley.enumeration import EXACT_MAX_PLAYERS, exact_shapley, proximity_shapley
from layerscope.methods.shapley.importance import shapley_importance
from layerscope.methods.shapley.owen import OWEN_MAX_STRATA, auto_strata, owen_shapley
from layerscope.methods.shapley.permutation import permutation_shapley

__all__ = [
    "EXACT_MAX_PLAYERS",
    "ESTIMATORS",
    "OWEN_MAX_STRATA",
    "ShapleyResult",
    "Value",
    "auto_strata",
    "exact_shapley",
    "owen_shapley",
    "permutation_shapley",
    "proximity_shapley",
    "shapley",
    "shapley_importance",
]


# ---- dispatch -----------------------------------------------------------------------------------
ESTIMATORS: dict[str, Callable[..., ShapleyResult]] = {
    "exact": exact_shapley,
    "proximity": proximity_shapley,
    "permutation": permutation_shapley,
    "owen": owen_shapley,
}


def check_players(estimator: str, n: int, **kw: Any) -> None:
    """What the estimator named ``estimator`` would refuse for ``n`` players and its keyword options
    ``kw``, checked from them alone, before anything is evaluated: exact's player cap, and a budget too
    small for one permutation sample or one Owen round. The estimator checks the rest when it runs."""
    from layerscope.methods.shapley.enumeration import check_exact_players
    from layerscope.methods.shapley.owen import _owen_grid
    from layerscope.methods.shapley.permutation import check_permutation_budget

    if estimator == "exact":
        check_exact_players(n, kw.get("max_players", EXACT_MAX_PLAYERS))
    elif estimator == "permutation" and kw.get("budget") is not None and kw["budget"] >= 2:
        check_permutation_budget(n, kw["budget"], kw.get("antithetic", True), kw.get("truncation"))
    elif estimator == "owen" and kw.get("budget") is not None:
        _owen_grid(n, kw["budget"], kw.get("n_strata"), kw.get("antithetic", True))


def shapley(value: Value, n: int, estimator: str, **kw: Any) -> ShapleyResult:
    """Run the estimator named ``estimator`` (one of :data:`ESTIMATORS`) with its keyword options."""
    fn = ESTIMATORS.get(estimator)
    if fn is None:
        raise ConfigError(f"unknown Shapley estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    try:
        inspect.signature(fn).bind(value, n, **kw)
    except TypeError as e:  # an option this estimator does not take
        raise ConfigError(f"estimator {estimator!r}: {e}") from None
    return fn(value, n, **kw)
