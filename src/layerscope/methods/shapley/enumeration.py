"""Deterministic estimators: exact enumeration of all coalitions, and Zhang et al.'s proximity
estimator over contiguous removal windows."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from layerscope.core.errors import ConfigError
from layerscope.methods.shapley.common import ShapleyResult, Value, _check_int, _full, _Memo, _Reporter

EXACT_MAX_PLAYERS = 14  # 2**14 = 16384 coalitions: seconds for a toy game, days for a model


# ---- exact --------------------------------------------------------------------------------------
def check_exact_players(n: int, max_players: int = EXACT_MAX_PLAYERS) -> None:
    """Refuse more than ``max_players`` players (2**n evaluations), before any is evaluated."""
    _check_int("n", n, 1)
    _check_int("max_players", max_players, 1)
    if n > max_players:
        raise ConfigError(
            f"exact Shapley needs 2**{n} = {2**n} evaluations; n={n} exceeds max_players={max_players} "
            "(use the 'permutation' or 'owen' estimator)"
        )


def exact_shapley(
    value: Value,
    n: int,
    max_players: int = EXACT_MAX_PLAYERS,
    progress: bool | Callable[[ShapleyResult], None] | None = False,
) -> ShapleyResult:
    """phi_i = sum over S not containing i of |S|!(n-|S|-1)!/n! [v(S+i) - v(S)], by enumerating all
    ``2**n`` coalitions (each evaluated once). Refuses ``n > max_players``."""
    check_exact_players(n, max_players)
    memo = _Memo(value, n)
    vals = np.empty(1 << n)
    rep = _Reporter(progress, 1 << n, "shapley exact", memo)
    chunk = 256
    order = trie_order(n)
    partial = lambda: ShapleyResult(np.zeros(n), None, memo.n_evaluations, "exact", {"n": n})  # noqa: E731
    try:
        for start in range(0, 1 << n, chunk):
            block = order[start : start + chunk]
            vals[block] = memo.many([int(m) for m in block])
            rep.step(memo.n_evaluations, partial)
    finally:
        rep.close()
    return ShapleyResult(
        shapley_of_table(vals, n),
        None,
        memo.n_evaluations,
        "exact",
        {"n": n},
        [],
        v_full=float(vals[_full(n)]),
        v_empty=float(vals[0]),
    )


def shapley_of_table(vals: np.ndarray, n: int) -> np.ndarray:
    """The exact Shapley values of a game of ``n`` players given whole: ``vals[mask]`` is the value of each
    of the ``2**n`` coalitions (kept-player masks), as :func:`exact_shapley` and :func:`exact_from_memo` hold it."""
    masks = np.arange(1 << n, dtype=np.int64)
    size = np.zeros_like(masks)
    for i in range(n):
        size += (masks >> i) & 1
    # weight of a coalition of size k not containing i: k!(n-k-1)!/n! = 1 / (n * C(n-1, k))
    weight = np.array([1.0 / (n * math.comb(n - 1, k)) for k in range(n)])
    phi = np.empty(n)
    for i in range(n):
        without = masks[((masks >> i) & 1) == 0]
        phi[i] = float(np.sum(weight[size[without]] * (vals[without | (1 << i)] - vals[without])))
    return phi


def exact_from_memo(memo: _Memo, estimator: str, config: dict[str, Any], trace: list[dict[str, Any]]) -> ShapleyResult:
    """What a sampling estimator returns once its memo holds every coalition (``memo.saturated``): the
    game is then known whole, so the exact Shapley values cost nothing more, and a sampled estimate of
    them (after as few as one round, its stderr undefined) would only add noise. Like the exact
    estimator's, they carry no stderr (None: nothing was estimated, so reports and plots draw no error
    bars). ``config`` records it (``values_exact``), beside the samples drawn so far."""
    vals = np.array([memo.cache[m] for m in range(1 << memo.n)])
    config["values_exact"] = True
    return ShapleyResult(
        shapley_of_table(vals, memo.n),
        None,
        memo.n_evaluations,
        estimator,
        config,
        trace,
        v_full=float(vals[_full(memo.n)]),
        v_empty=float(vals[0]),
    )


def trie_order(n: int) -> np.ndarray:
    """Every kept-player mask of ``n`` players, sorted by removal pattern in forward order (player 0's
    bit first): the depth-first order of the trie of patterns. Any run of ``2**k`` consecutive masks
    from a multiple of ``2**k`` shares the first ``n - k`` players' pattern, so chunks handed to an
    engine one by one are whole subtrees: no prefix state is needed by two chunks (the order of
    ``range(2**n)`` splits on the LAST players instead, so every chunk recomputes every prefix)."""
    k = np.arange(1 << n, dtype=np.int64)
    removed = np.zeros_like(k)
    for p in range(n):  # removal bit of player p = bit (n - 1 - p) of the position k
        removed |= ((k >> (n - 1 - p)) & 1) << p
    return ((1 << n) - 1) ^ removed


# ---- proximity (Zhang et al.) ---------------------------------------------------------------------
def _window_mask(start: int, stop: int) -> int:
    """Bitmask of players start..stop-1."""
    return ((1 << (stop - start)) - 1) << start


def proximity_shapley(
    value: Value, n: int, max_window: int = 3, progress: bool | Callable[[ShapleyResult], None] | None = False
) -> ShapleyResult:
    """The estimator of Zhang, Dong & Kawaguchi (arXiv 2409.14381), as in their scripts.

    For player i: the equal-weight mean of v(N) - v(N \\ {i}) and, for every contiguous window R of
    length 2..max_window inside 0..n-1 with i at its first or last position,
    v(N \\ (R \\ {i})) - v(N \\ R). Only windows of removed players are evaluated:
    1 + n + (n-1) + ... + (n-max_window+1) calls (190 for 64 players). It measures contributions
    next to the full model only, so it is a local approximation, not an unbiased Shapley value.
    """
    _check_int("n", n, 1)
    _check_int("max_window", max_window, 1)
    memo = _Memo(value, n)
    full = _full(n)
    lengths = range(1, min(max_window, n) + 1)
    windows = [(s, s + L) for L in lengths for s in range(0, n - L + 1)]
    rep = _Reporter(progress, 1 + len(windows), "shapley proximity", memo)
    try:
        vals = memo.many([full] + [full & ~_window_mask(a, b) for a, b in windows])
        rep.step(memo.n_evaluations, lambda: ShapleyResult(np.zeros(n), None, memo.n_evaluations, "proximity", {}))
    finally:
        rep.close()
    v_full = float(vals[0])

    def removed(a: int, b: int) -> float:  # v(N without players a..b-1); a == b means v(N)
        return v_full if a == b else memo(full & ~_window_mask(a, b))

    phi = np.empty(n)
    n_terms = []
    for i in range(n):
        terms = [v_full - removed(i, i + 1)]
        for L in lengths:
            if L < 2:
                continue
            if i + L <= n:  # R = i..i+L-1, i first
                terms.append(removed(i + 1, i + L) - removed(i, i + L))
            if i - L + 1 >= 0:  # R = i-L+1..i, i last
                terms.append(removed(i - L + 1, i) - removed(i - L + 1, i + 1))
        phi[i] = float(np.mean(terms))
        n_terms.append(len(terms))
    trace = [{"removed": list(range(a, b)), "value": float(vals[k + 1])} for k, (a, b) in enumerate(windows)]
    v_empty = memo.cache.get(0)
    return ShapleyResult(
        phi,
        None,
        memo.n_evaluations,
        "proximity",
        {"n": n, "max_window": max_window, "terms_per_player": n_terms},
        trace,
        v_full=v_full,
        v_empty=v_empty,
    )
