"""Stratified Owen sampling of Shapley values: the multilinear extension on a grid of inclusion
probabilities, with a shared centre."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from layerscope.core.errors import ConfigError
from layerscope.methods.shapley.common import (
    ALL_EVALUATED,
    ShapleyResult,
    Value,
    _check_int,
    _check_min_samples,
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

OWEN_MAX_STRATA = 16


def auto_strata(n: int, budget: int | None, antithetic: bool = True) -> int:
    """Default grid: 16 strata, fewer when the budget would not cover two rounds (a round costs
    up to n_strata * (n + 1) evaluations), never fewer than 2 (1 without antithetic pairs)."""
    if budget is None:
        return OWEN_MAX_STRATA
    fit = (budget - 2) // (2 * (n + 1))
    if antithetic:
        fit -= fit % 2  # an even grid pairs every stratum with its mirror
    return int(min(OWEN_MAX_STRATA, max(2 if antithetic else 1, fit)))


def owen_shapley(
    value: Value,
    n: int,
    budget: int | None = None,
    target_stderr: float | None = None,
    *,
    n_strata: int | None = None,
    antithetic: bool = True,
    min_rounds: int | None = None,
    max_rounds: int | None = None,
    seed: int = 0,
    progress: bool | Callable[[ShapleyResult], None] | None = False,
) -> ShapleyResult:
    """Shapley values as the integral over q in [0, 1] of E[v(S + i) - v(S)], S keeping each other
    player with probability q (Owen's multilinear extension), estimated by stratified sampling.

    ``q`` is drawn uniformly inside each of ``n_strata`` equal strata in turn (one *round* visits all
    strata; by default 16 strata, fewer when ``budget`` is too small for two rounds, see
    :func:`auto_strata`). For each draw a centre coalition C keeps each player with probability q,
    and every player's marginal contribution is measured against C: v(C + i) - v(C) for i outside,
    v(C) - v(C - i) for i inside (C - i is distributed as the i-less coalition should be). So
    ``n + 1`` evaluations give one sample for all players. With ``antithetic`` the complement of C
    (keep-probability 1 - q, the mirrored stratum) is measured too and averaged into the sample.

    Stratum weights are exact (1/n_strata each), so the estimate is unbiased once every stratum has
    a sample; the standard error is the stratified one, sum_k w_k^2 s_k^2 / c_k (NaN until every
    stratum has two samples). ``budget`` is a hard cap on distinct evaluations and must allow one
    round. The target is checked at the end of each round after ``min_rounds`` rounds (2 when not
    given; only with ``target_stderr``). Once every coalition has been evaluated (a game of few
    players) sampling stops, whatever the stopping rule, and the exact values are returned, no stderr
    (``stop_reason`` "all coalitions evaluated", ``values_exact``: :func:`exact_from_memo`).
    """
    _check_int("n", n, 1)
    _check_stopping("owen", budget, target_stderr, max_rounds, "max_rounds")
    _check_int("n_strata", n_strata, 1, allow_none=True)
    _check_min_samples("min_rounds", min_rounds, target_stderr)
    min_rounds = 2 if min_rounds is None else min_rounds  # recorded, as results always had it
    n_strata, n_groups = _owen_grid(n, budget, n_strata, antithetic)
    memo = _Memo(value, n)
    rng = np.random.default_rng(seed)
    config = {
        "n": n,
        "budget": budget,
        "target_stderr": target_stderr,
        "n_strata": n_strata,
        "antithetic": antithetic,
        "min_rounds": min_rounds,
        "max_rounds": max_rounds,
        "seed": seed,
    }
    run = _OwenRun(memo, config, n_groups)
    rep = _Reporter(progress, budget, "shapley owen", memo)
    try:
        reason = run.sample_until_stopped(rng, rep)
        rep.stopped(reason, config)
    finally:
        rep.close()
    config["n_rounds"] = run.rounds
    config["stop_reason"] = reason
    config["n_centres"] = int(sum(g.count for g in run.groups)) * (2 if antithetic else 1)
    if reason == ALL_EVALUATED:
        return exact_from_memo(memo, "owen", config, run.trace)
    return run.snapshot()


def _owen_grid(n: int, budget: int | None, n_strata: int | None, antithetic: bool) -> tuple[int, int]:
    """The number of strata (chosen by :func:`auto_strata` when not given) and of stratum groups
    (a stratum and its mirror form one group with antithetic pairs); refuses a budget below one round."""
    chosen = n_strata is None
    if chosen:
        n_strata = auto_strata(n, budget, antithetic)
    n_groups = (n_strata + 1) // 2 if antithetic else n_strata
    per_group = (2 if antithetic else 1) * (n + 1)
    if budget is not None and budget < n_groups * per_group + 2:
        # the strata chosen for a budget are already the fewest: only n_strata given by hand can go lower
        fix = f"raise the budget to {n_groups * per_group + 2}" if chosen else "lower n_strata"
        raise ConfigError(
            f"owen: budget={budget} is below one round over {n_strata} strata "
            f"(up to {n_groups * per_group + 2} evaluations for n={n}); {fix} or use the 'permutation' estimator"
        )
    return n_strata, n_groups


class _OwenRun:
    """One run of :func:`owen_shapley`: the game's end points, running statistics per stratum group
    and the trace. ``config`` holds the run's settings and is shared with every snapshot (the
    caller completes it when the run stops)."""

    def __init__(self, memo: _Memo, config: dict[str, Any], n_groups: int) -> None:
        n, n_strata, antithetic = memo.n, config["n_strata"], config["antithetic"]
        self.memo = memo
        self.config = config
        self.n_groups = n_groups
        # group k covers stratum k and, with antithetic pairs, its mirror n_strata-1-k (the middle
        # stratum of an odd grid mirrors onto itself and so carries half the width)
        self.weights = np.array(
            [(2.0 if antithetic and k != n_strata - 1 - k else 1.0) / n_strata for k in range(n_groups)]
        )
        self.groups = [_Welford(n) for _ in range(n_groups)]
        self.v_empty = memo(0)
        self.v_full = memo(_full(n))
        self.trace: list[dict[str, Any]] = []
        self.bits = np.array([1 << i for i in range(n)], dtype=object)  # Python ints: n may exceed 63
        self.rounds = 0

    def estimate(self) -> tuple[np.ndarray, np.ndarray]:
        groups = self.groups
        have = [k for k, g in enumerate(groups) if g.count > 0]
        w = self.weights[have] / self.weights[have].sum()  # renormalised only while the first round runs
        phi = sum(wk * groups[k].mean for wk, k in zip(w, have))
        var = sum(wk**2 * groups[k].var_of_mean() for wk, k in zip(w, have))
        return np.asarray(phi, dtype=float), np.sqrt(np.asarray(var, dtype=float))

    def snapshot(self) -> ShapleyResult:
        phi, se = self.estimate()
        samples = sum(g.count for g in self.groups)
        extras = stderr_facts(se, samples, self.dof(), self.v_full - self.v_empty)
        return ShapleyResult(
            phi,
            se,
            self.memo.n_evaluations,
            "owen",
            self.config,
            self.trace,
            v_full=self.v_full,
            v_empty=self.v_empty,
            extras=extras,
        )

    def dof(self) -> float:
        """Degrees of freedom of the stratified stderr: the pooled sum of (count - 1) over the groups,
        what Welch-Satterthwaite gives when the groups spread alike (per-player Satterthwaite figures
        from two samples a group are too noisy to use: docs/shapley.md). 0 until every group has two samples."""
        counts = [g.count for g in self.groups]
        return float(sum(c - 1 for c in counts)) if min(counts) >= 2 else 0.0

    def sample_until_stopped(self, rng: np.random.Generator, rep: _Reporter) -> str:
        """Run rounds over all strata until a stopping rule holds; returns its reason."""
        c = self.config
        target_stderr, max_rounds = c["target_stderr"], c["max_rounds"]
        while True:
            if self.memo.saturated:  # the game is known whole: the exact values beat any further round
                return ALL_EVALUATED
            if max_rounds is not None and self.rounds >= max_rounds:
                return "max_rounds"
            if not self._round(rng, rep):
                return "budget"
            self.rounds += 1
            _, se = self.estimate()
            self.trace.append(
                {"rounds": self.rounds, "evaluations": self.memo.n_evaluations, "max_stderr": _max_or_none(se)}
            )
            if self.memo.saturated:  # before the target: exact values, even where this round met it too
                return ALL_EVALUATED
            if target_stderr is not None and self.rounds >= c["min_rounds"] and _max_or_nan(se) <= target_stderr:
                return "target_stderr"

    def _round(self, rng: np.random.Generator, rep: _Reporter) -> bool:
        """One sample per stratum group; False when the budget stops the round part-way."""
        n, n_strata, budget = self.memo.n, self.config["n_strata"], self.config["budget"]
        for k in range(self.n_groups):
            q = (k + rng.random()) / n_strata
            keep = rng.random(n) < q
            centres = [keep, ~keep] if self.config["antithetic"] else [keep]
            masks = [self._centre_masks(c) for c in centres]
            if (
                budget is not None
                and self.memo.n_evaluations + self.memo.missing([m for ms in masks for m in ms]) > budget
            ):
                return False
            self.groups[k].add(np.mean([self._marginals(ms, c) for ms, c in zip(masks, centres)], axis=0))
            rep.step(self.memo.n_evaluations, self.snapshot)
        return True

    def _centre_masks(self, keep: np.ndarray) -> list[int]:
        """The centre coalition and, for every player, the centre with that player flipped."""
        centre = int(sum(self.bits[keep])) if keep.any() else 0
        return [centre] + [centre ^ (1 << i) for i in range(self.memo.n)]

    def _marginals(self, masks: list[int], keep: np.ndarray) -> np.ndarray:
        vals = self.memo.many(masks)
        return np.where(keep, vals[0] - vals[1:], vals[1:] - vals[0])
