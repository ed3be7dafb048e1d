"""Permutation sampling of Shapley values, with antithetic pairs and truncation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from layerscope.core.errors import ConfigError
from layerscope.methods.shapley.common import (
    ALL_EVALUATED,
    ShapleyResult,
    Value,
    _check_int,
    _check_min_samples,
    _check_positive,
    _check_stopping,
    _full,
    _max_or_nan,
    _max_or_none,
    _Memo,
    _Reporter,
    _Welford,
    stderr_facts,
)
from layerscope.methods.shapley.enumeration import exact_from_memo


def _prefix_masks(order: Sequence[int]) -> list[int]:
    masks = [0]
    for p in order:
        masks.append(masks[-1] | (1 << int(p)))
    return masks


def _walk(
    memo: _Memo, order: np.ndarray, v_empty: float, v_full: float, truncation: float | None, truncate_at: str
) -> tuple[np.ndarray, float]:
    """Marginal contributions of every player along one ordering (players join in ``order``), and
    the part of v(N) - v(empty) the walk skipped (0 without truncation).

    With truncation (TMC-Shapley, Ghorbani & Zou 2019) the walk stops once the remaining
    contributions can only be small: walking up from the empty coalition, when
    |v(S) - v(N)| < tol; walking down from the full one ("empty"), when |v(S) - v(empty)| < tol
    (a layer model that has collapsed to chance stays there as more layers go). The skipped
    contributions count as zero: exact when the rest of the walk is flat, otherwise a heuristic
    with a small bias (their sum is below tol, but single ones need not be). The skipped sum is
    the only part of that bias measured: how it splits among players is unknown.
    """
    n = len(order)
    prefix = _prefix_masks(order)
    out = np.zeros(n)
    if truncation is None:
        vals = memo.many(prefix[1:n])
        vals = np.concatenate([[v_empty], vals, [v_full]])
        out[order] = np.diff(vals)
        return out, 0.0
    if truncate_at == "full":  # S grows from the empty coalition
        cur = v_empty
        if abs(cur - v_full) < truncation:
            return out, v_full - cur
        for k in range(1, n + 1):
            prev, cur = cur, (v_full if k == n else memo(prefix[k]))
            out[order[k - 1]] = cur - prev
            if abs(cur - v_full) < truncation:
                break
        return out, v_full - cur
    # S shrinks from the full coalition
    cur = v_full
    if abs(cur - v_empty) < truncation:
        return out, cur - v_empty
    for k in range(n - 1, -1, -1):
        nxt, cur = cur, (v_empty if k == 0 else memo(prefix[k]))
        out[order[k]] = nxt - cur
        if abs(cur - v_empty) < truncation:
            break
    return out, cur - v_empty


def permutation_shapley(
    value: Value,
    n: int,
    budget: int | None = None,
    target_stderr: float | None = None,
    *,
    antithetic: bool = True,
    truncation: float | None = None,
    truncate_at: str | None = None,
    min_permutations: int | None = None,
    max_permutations: int | None = None,
    seed: int = 0,
    progress: bool | Callable[[ShapleyResult], None] | None = False,
) -> ShapleyResult:
    """Monte Carlo permutation sampling (Castro et al. 2009).

    Each sample is the vector of marginal contributions along a uniformly random ordering; with
    ``antithetic`` a sample is the mean over an ordering and its reverse (one sample, so the
    standard error is computed over pairs). The reverse moves every player from early to late, so
    the pair cancels much of the "position" noise; it is exact for games with at most pairwise
    interactions.

    Stopping: after each sample, stop when ``max_permutations`` orderings are done, or when at
    least ``min_permutations`` (20 when not given; only with ``target_stderr``) are done and the
    largest standard error is <= ``target_stderr``.
    ``budget`` caps distinct evaluations: without truncation a sample that could exceed it is not
    started; with truncation (walk lengths unknown beforehand) a sample starts while the count is
    below the budget, so the last one may overshoot by its length.

    ``truncate_at`` (``"full"`` when not given) says which end a truncated walk stops near; it applies
    only with ``truncation``, and is refused without it (it would change nothing).

    Once every coalition has been evaluated (a game of few players) sampling stops, whatever the
    stopping rule, and the exact values are returned, no stderr (``stop_reason`` "all coalitions
    evaluated", ``values_exact``: :func:`exact_from_memo`), with no truncation bias either.
    """
    _check_permutation_args(n, budget, target_stderr, min_permutations, max_permutations, truncation, truncate_at)
    truncate_at = truncate_at or "full"  # recorded so even without truncation, as results always had it
    min_permutations = 20 if min_permutations is None else min_permutations  # recorded, as results always had it
    memo = _Memo(value, n)
    rng = np.random.default_rng(seed)
    config = {
        "n": n,
        "budget": budget,
        "target_stderr": target_stderr,
        "antithetic": antithetic,
        "truncation": truncation,
        "truncate_at": truncate_at,
        "min_permutations": min_permutations,
        "max_permutations": max_permutations,
        "seed": seed,
    }
    if budget is not None and budget < 2:
        raise ConfigError(f"budget={budget} is too small: v(full) and v(empty) alone take 2 evaluations")
    check_permutation_budget(n, budget, antithetic, truncation)  # before anything is evaluated
    run = _PermutationRun(memo, config)
    rep = _Reporter(progress, budget, "shapley permutation", memo)
    try:
        reason = run.sample_until_stopped(rng, rep)
        rep.stopped(reason, config)
    finally:
        rep.close()
    config["n_permutations"] = run.n_perm
    config["stop_reason"] = reason
    if reason == ALL_EVALUATED:  # one player: v(full) and v(empty) are the whole game, before any sample
        return exact_from_memo(memo, "permutation", config, run.trace)
    if run.stats.count == 0:  # check_permutation_budget refuses this before any evaluation; kept as a guard
        raise ConfigError(_too_small_for_one_sample(n, budget, antithetic))
    return run.snapshot()


def check_permutation_budget(
    n: int, budget: int | None, antithetic: bool = True, truncation: float | None = None
) -> None:
    """Refuse a ``budget`` too small for one sample of ``n`` players (one ordering, or an antithetic
    pair), known from the options alone: without truncation a sample takes (2 or 1) * (n - 1) new
    evaluations beside v(full) and v(empty); a truncated walk starts only with room for one more."""
    if budget is None:
        return
    if truncation is None:
        need = (2 if antithetic else 1) * (n - 1) + 2
    else:
        need = 3
    if budget < need:
        raise ConfigError(_too_small_for_one_sample(n, budget, antithetic, truncation))


def _too_small_for_one_sample(n: int, budget: int | None, antithetic: bool, truncation: float | None = None) -> str:
    if truncation is not None:
        return (
            f"budget={budget} is too small for one truncated walk: v(full) and v(empty) take 2 evaluations "
            "and a walk starts only with room for one more (needs at least 3)"
        )
    return (
        f"budget={budget} is too small for one {'antithetic pair of ' if antithetic else ''}"
        f"permutation{'s' if antithetic else ''} of {n} players "
        f"(needs up to {(2 if antithetic else 1) * (n - 1) + 2} evaluations)"
    )


def _check_permutation_args(
    n: int,
    budget: int | None,
    target_stderr: float | None,
    min_permutations: int | None,
    max_permutations: int | None,
    truncation: float | None,
    truncate_at: str,
) -> None:
    _check_int("n", n, 1)
    _check_stopping("permutation", budget, target_stderr, max_permutations, "max_permutations")
    _check_min_samples("min_permutations", min_permutations, target_stderr)
    _check_positive("truncation", truncation, allow_zero=True)
    if truncate_at not in (None, "full", "empty"):
        raise ConfigError(f"truncate_at must be 'full' or 'empty' (got {truncate_at!r})")
    if truncate_at is not None and truncation is None:
        # every walk then runs end to end: the option would be silently ignored (the CLI refuses it too)
        raise ConfigError(f"truncate_at={truncate_at!r} applies with truncation=X; without truncation it has no effect")


class _PermutationRun:
    """One run of :func:`permutation_shapley`: the game's end points, the running per-player
    statistics and the trace. ``config`` holds the run's settings and is shared with every
    snapshot (the caller completes it when the run stops)."""

    def __init__(self, memo: _Memo, config: dict[str, Any]) -> None:
        self.memo = memo
        self.config = config
        self.v_empty = memo(0)
        self.v_full = memo(_full(memo.n))
        self.stats = _Welford(memo.n)
        self.trace: list[dict[str, Any]] = []
        self.n_perm = 0
        self.skipped = 0.0  # sum over walks of |the part of v(N) - v(empty) truncation skipped|

    def snapshot(self) -> ShapleyResult:
        se = np.sqrt(self.stats.var_of_mean())
        return ShapleyResult(
            self.stats.mean.copy(),
            se,
            self.memo.n_evaluations,
            "permutation",
            self.config,
            self.trace,
            v_full=self.v_full,
            v_empty=self.v_empty,
            extras=self._extras(se),
        )

    def _extras(self, se: np.ndarray) -> dict[str, Any]:
        """What the stderr rests on: one sample per pair with antithetic pairs (the two walks of a
        pair are not independent), per ordering without; truncation bias is outside it."""
        count = self.stats.count
        extras = stderr_facts(se, count, max(count - 1, 0), self.v_full - self.v_empty)
        if self.config["truncation"]:  # truncation=0 never stops a walk early
            extras["stderr_excludes"] = "truncation bias"
            extras["truncation_remainder"] = self.skipped / self.n_perm if self.n_perm else None
        return extras

    def sample_until_stopped(self, rng: np.random.Generator, rep: _Reporter) -> str:
        """Add one sample per ordering drawn from ``rng`` until a stopping rule holds; returns its reason."""
        c, memo = self.config, self.memo
        target_stderr, max_permutations = c["target_stderr"], c["max_permutations"]
        while True:
            if memo.saturated:  # the game is known whole: the exact values beat any further sample
                return ALL_EVALUATED
            first = rng.permutation(c["n"])
            orders = [first, first[::-1]] if c["antithetic"] else [first]
            if self._over_budget(orders):
                return "budget"
            se = self._add_sample(orders)
            rep.step(memo.n_evaluations, self.snapshot)
            if memo.saturated:  # before the other rules: exact values, whichever of them this sample met too
                return ALL_EVALUATED
            if target_stderr is not None and self.n_perm >= c["min_permutations"] and _max_or_nan(se) <= target_stderr:
                return "target_stderr"
            if max_permutations is not None and self.n_perm >= max_permutations:
                return "max_permutations"
            if self._walks_exhausted():
                return "walks exhausted"

    def _walks_exhausted(self) -> bool:
        """Truncated walks may never reach the coalitions the budget would pay for (nor all 2^n): once
        there have been as many orderings as the budget has evaluations, the walks are adding less than one
        new coalition an ordering, and sampling stops instead of looping forever. A run that stops by
        budget, target or saturation never gets here first unless its walks had stalled."""
        budget = self.config["budget"]
        return self.config["truncation"] is not None and budget is not None and self.n_perm >= budget

    def _over_budget(self, orders: list[np.ndarray]) -> bool:
        budget = self.config["budget"]
        if budget is None:
            return False
        # a truncated walk's length is unknown in advance: then only require room for one more
        # evaluation (the sample may overshoot the budget by its own length)
        if self.config["truncation"] is None:
            need = self.memo.missing([m for o in orders for m in _prefix_masks(o)])
        else:
            need = 1
        return self.memo.n_evaluations + need > budget

    def _add_sample(self, orders: list[np.ndarray]) -> np.ndarray:
        """Walk ``orders``, add their mean as one sample, trace it; returns the per-player standard errors."""
        truncation, truncate_at = self.config["truncation"], self.config["truncate_at"]
        walks = [_walk(self.memo, o, self.v_empty, self.v_full, truncation, truncate_at) for o in orders]
        self.stats.add(np.mean([w for w, _ in walks], axis=0))
        self.skipped += sum(abs(r) for _, r in walks)
        self.n_perm += len(orders)
        se = np.sqrt(self.stats.var_of_mean())
        self.trace.append(
            {"permutations": self.n_perm, "evaluations": self.memo.n_evaluations, "max_stderr": _max_or_none(se)}
        )
        return se
