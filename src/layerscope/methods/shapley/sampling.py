"""Monte Carlo estimators: permutation sampling (with antithetic pairs and truncation) and
stratified Owen sampling of the multilinear extension."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from layerscope.core.errors import ConfigError
from layerscope.methods.shapley.common import (
    ShapleyResult,
    Value,
    _check_int,
    _check_positive,
    _check_stopping,
    _full,
    _max_or_nan,
    _max_or_none,
    _Memo,
    _Reporter,
    _Welford,
)


# ---- permutation sampling ------------------------------------------------------------------------
def _prefix_masks(order: Sequence[int]) -> list[int]:
    masks = [0]
    for p in order:
        masks.append(masks[-1] | (1 << int(p)))
    return masks


def _walk(
    memo: _Memo, order: np.ndarray, v_empty: float, v_full: float, truncation: float | None, truncate_at: str
) -> np.ndarray:
    """Marginal contributions of every player along one ordering (players join in ``order``).

    With truncation (TMC-Shapley, Ghorbani & Zou 2019) the walk stops once the remaining
    contributions can only be small: walking up from the empty coalition, when
    |v(S) - v(N)| < tol; walking down from the full one ("empty"), when |v(S) - v(empty)| < tol
    (a layer model that has collapsed to chance stays there as more layers go). The skipped
    contributions count as zero: exact when the rest of the walk is flat, otherwise a heuristic
    with a small bias (their sum is below tol, but single ones need not be).
    """
    n = len(order)
    prefix = _prefix_masks(order)
    out = np.zeros(n)
    if truncation is None:
        vals = memo.many(prefix[1:n])
        vals = np.concatenate([[v_empty], vals, [v_full]])
        out[order] = np.diff(vals)
        return out
    if truncate_at == "full":  # S grows from the empty coalition
        prev = v_empty
        if abs(prev - v_full) < truncation:
            return out
        for k in range(1, n + 1):
            cur = v_full if k == n else memo(prefix[k])
            out[order[k - 1]] = cur - prev
            if abs(cur - v_full) < truncation:
                break
            prev = cur
    else:  # S shrinks from the full coalition
        nxt = v_full
        if abs(nxt - v_empty) < truncation:
            return out
        for k in range(n - 1, -1, -1):
            cur = v_empty if k == 0 else memo(prefix[k])
            out[order[k]] = nxt - cur
            if abs(cur - v_empty) < truncation:
                break
            nxt = cur
    return out


def permutation_shapley(
    value: Value,
    n: int,
    budget: int | None = None,
    target_stderr: float | None = None,
    *,
    antithetic: bool = True,
    truncation: float | None = None,
    truncate_at: str = "full",
    min_permutations: int = 20,
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
    least ``min_permutations`` are done and the largest standard error is <= ``target_stderr``.
    ``budget`` caps distinct evaluations: without truncation a sample that could exceed it is not
    started; with truncation (walk lengths unknown beforehand) a sample starts while the count is
    below the budget, so the last one may overshoot by its length.
    """
    _check_int("n", n, 1)
    _check_stopping("permutation", budget, target_stderr, max_permutations, "max_permutations")
    _check_int("min_permutations", min_permutations, 1)
    _check_positive("truncation", truncation, allow_zero=True)
    if truncate_at not in ("full", "empty"):
        raise ConfigError(f"truncate_at must be 'full' or 'empty' (got {truncate_at!r})")
    memo = _Memo(value, n)
    full = _full(n)
    rng = np.random.default_rng(seed)
    per_sample = 2 if antithetic else 1
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
    v_empty = memo(0)
    v_full = memo(full)
    stats = _Welford(n)
    trace: list[dict[str, Any]] = []
    n_perm = 0

    def snapshot() -> ShapleyResult:
        return ShapleyResult(
            stats.mean.copy(),
            np.sqrt(stats.var_of_mean()),
            memo.n_evaluations,
            "permutation",
            config,
            trace,
            v_full=v_full,
            v_empty=v_empty,
        )

    rep = _Reporter(progress, budget, "shapley permutation")
    reason = ""
    try:
        while True:
            if target_stderr is None and max_permutations is None and memo.saturated:
                reason = "all coalitions evaluated"
                break
            first = rng.permutation(n)
            orders = [first, first[::-1]] if antithetic else [first]
            if budget is not None:
                # a truncated walk's length is unknown in advance: then only require room for one more
                # evaluation (the sample may overshoot the budget by its own length)
                need = memo.missing([m for o in orders for m in _prefix_masks(o)]) if truncation is None else 1
                if memo.n_evaluations + need > budget:
                    reason = "budget"
                    break
            sample = np.mean([_walk(memo, o, v_empty, v_full, truncation, truncate_at) for o in orders], axis=0)
            stats.add(sample)
            n_perm += per_sample
            se = np.sqrt(stats.var_of_mean())
            trace.append({"permutations": n_perm, "evaluations": memo.n_evaluations, "max_stderr": _max_or_none(se)})
            rep.step(memo.n_evaluations, snapshot)
            if target_stderr is not None and n_perm >= min_permutations and _max_or_nan(se) <= target_stderr:
                reason = "target_stderr"
                break
            if max_permutations is not None and n_perm >= max_permutations:
                reason = "max_permutations"
                break
    finally:
        rep.close()
    if stats.count == 0:
        raise ConfigError(
            f"budget={budget} is too small for one {'antithetic pair of ' if antithetic else ''}"
            f"permutation{'s' if antithetic else ''} of {n} players "
            f"(needs up to {per_sample * (n - 1) + 2} evaluations)"
        )
    config["n_permutations"] = n_perm
    config["stop_reason"] = reason
    return snapshot()


# ---- stratified multilinear (Owen) sampling with a shared centre ------------------------------------
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
    min_rounds: int = 2,
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
    round. The target is checked at the end of each round after ``min_rounds`` rounds.
    """
    _check_int("n", n, 1)
    _check_stopping("owen", budget, target_stderr, max_rounds, "max_rounds")
    _check_int("n_strata", n_strata, 1, allow_none=True)
    _check_int("min_rounds", min_rounds, 1)
    if n_strata is None:
        n_strata = auto_strata(n, budget, antithetic)
    n_groups = (n_strata + 1) // 2 if antithetic else n_strata
    per_group = (2 if antithetic else 1) * (n + 1)
    if budget is not None and budget < n_groups * per_group + 2:
        raise ConfigError(
            f"owen: budget={budget} is below one round over {n_strata} strata "
            f"(up to {n_groups * per_group + 2} evaluations for n={n}); "
            "lower n_strata or use the 'permutation' estimator"
        )
    memo = _Memo(value, n)
    full = _full(n)
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
    # group k covers stratum k and, with antithetic pairs, its mirror n_strata-1-k (the middle
    # stratum of an odd grid mirrors onto itself and so carries half the width)
    weights = np.array([(2.0 if antithetic and k != n_strata - 1 - k else 1.0) / n_strata for k in range(n_groups)])
    groups = [_Welford(n) for _ in range(n_groups)]
    v_empty = memo(0)
    v_full = memo(full)
    trace: list[dict[str, Any]] = []
    bits = np.array([1 << i for i in range(n)], dtype=object)  # Python ints: n may exceed 63

    def estimate() -> tuple[np.ndarray, np.ndarray]:
        have = [k for k, g in enumerate(groups) if g.count > 0]
        w = weights[have] / weights[have].sum()  # renormalised only while the first round runs
        phi = sum(wk * groups[k].mean for wk, k in zip(w, have))
        var = sum(wk**2 * groups[k].var_of_mean() for wk, k in zip(w, have))
        return np.asarray(phi, dtype=float), np.sqrt(np.asarray(var, dtype=float))

    def snapshot() -> ShapleyResult:
        phi, se = estimate()
        return ShapleyResult(phi, se, memo.n_evaluations, "owen", config, trace, v_full=v_full, v_empty=v_empty)

    def centre_masks(keep: np.ndarray) -> list[int]:
        centre = int(sum(bits[keep])) if keep.any() else 0
        return [centre] + [centre ^ (1 << i) for i in range(n)]

    def marginals(masks: list[int], keep: np.ndarray) -> np.ndarray:
        vals = memo.many(masks)
        return np.where(keep, vals[0] - vals[1:], vals[1:] - vals[0])

    rep = _Reporter(progress, budget, "shapley owen")
    rounds = 0
    reason = ""
    try:
        while not reason:
            if max_rounds is not None and rounds >= max_rounds:
                reason = "max_rounds"
                break
            if target_stderr is None and max_rounds is None and memo.saturated:
                reason = "all coalitions evaluated"
                break
            for k in range(n_groups):
                q = (k + rng.random()) / n_strata
                keep = rng.random(n) < q
                centres = [keep, ~keep] if antithetic else [keep]
                masks = [centre_masks(c) for c in centres]
                if budget is not None and memo.n_evaluations + memo.missing([m for ms in masks for m in ms]) > budget:
                    reason = "budget"
                    break
                groups[k].add(np.mean([marginals(ms, c) for ms, c in zip(masks, centres)], axis=0))
                rep.step(memo.n_evaluations, snapshot)
            else:
                rounds += 1
                _, se = estimate()
                trace.append({"rounds": rounds, "evaluations": memo.n_evaluations, "max_stderr": _max_or_none(se)})
                if target_stderr is not None and rounds >= min_rounds and _max_or_nan(se) <= target_stderr:
                    reason = "target_stderr"
    finally:
        rep.close()
    config["n_rounds"] = rounds
    config["stop_reason"] = reason
    config["n_centres"] = int(sum(g.count for g in groups)) * (2 if antithetic else 1)
    return snapshot()
