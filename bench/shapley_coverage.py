"""How often the Shapley estimators' error bars cover the true value.

On 12-player games with exact Shapley values (enumeration), run each estimator setting with many
seeds and report, over all players and seeds, how often |estimate - truth| <= q * stderr: with
q = 1.96 (what a reader of "± 2 se" assumes) and with q the Student-t quantile for the result's
``extras["stderr_dof"]``. A well-calibrated 95% interval covers 0.95. The table also gives the
cornerstone player 0's coverage and bias (in mean stderrs: truncation shifts it), and the share of
players reported with stderr exactly 0 while wrong (quantised values, few samples).

Games: ``layer`` (a few big players, many tiny ones, the model works only when enough are kept,
cornerstone player 0 without which it is near chance) and ``acc`` (the same read as an accuracy on
200 items: values in steps of 1/200).

    python bench/shapley_coverage.py                  # 60 seeds per row (a few seconds on 1 core)
    python bench/shapley_coverage.py --seeds 300      # the table in docs/shapley.md (~10 s)
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np

from layerscope.methods.shapley import exact_shapley, owen_shapley, permutation_shapley
from layerscope.methods.shapley.common import t_quantile

N = 12


# ---- games ---------------------------------------------------------------------------------------
def layer_game(n: int = N, seed: int = 2) -> Callable[[frozenset], float]:
    """Layer-like: players 0, 1, 5 and n-1 large, the rest small; a sigmoid in the kept weight; and
    without player 0 (the cornerstone) the value stays near chance."""
    r = np.random.default_rng(seed)
    w = np.full(n, 0.05) + r.uniform(0, 0.05, n)
    w[[0, 1, 5, n - 1]] = [1.0, 0.8, 0.6, 0.7]
    tot = w.sum()

    def v(S: frozenset) -> float:
        x = 1.0 / (1.0 + math.exp(-8 * (sum(w[i] for i in S) / tot - 0.7)))
        if 0 not in S:
            x *= 0.1
        return float(-6.0 + 4.6 * x)  # "chance" -6, full model about -1.7

    return v


def acc_game(n: int = N) -> Callable[[frozenset], float]:
    """The layer game read as an accuracy on 200 items (0.29 at chance, 0.49 at best)."""
    base = layer_game(n)
    return lambda S: round((0.29 + 0.2 * (base(S) + 6.0) / 4.6) * 200) / 200


def memoised(v: Callable[[frozenset], float]) -> Callable[[frozenset], float]:
    cache: dict[frozenset, float] = {}
    return lambda S: cache[S] if S in cache else cache.setdefault(S, v(S))


# ---- settings: the review's rows (tol as a share of v(N) - v(empty) on the layer game) ------------
def rows(span: float) -> list[tuple[str, str, Callable, dict]]:
    P, OW = permutation_shapley, owen_shapley
    return [
        ("layer", "permutation, 5 pairs", P, dict(max_permutations=10)),
        ("layer", "owen, 2 rounds x 16 strata", OW, dict(max_rounds=2)),
        ("layer", "permutation, target_stderr 0.035", P, dict(target_stderr=0.035)),
        ("layer", "permutation, budget 400", P, dict(budget=400)),
        ("layer", "permutation, budget 400, truncate empty 5%", P, dict(budget=400, truncation=0.05 * span)),
        ("layer", "permutation, budget 400, truncate empty 18%", P, dict(budget=400, truncation=0.18 * span)),
        (
            "layer",
            "permutation, budget 400, truncate full 18%",
            P,
            dict(budget=400, truncation=0.18 * span, truncate_at="full"),
        ),
        ("layer", "permutation, 9 pairs, truncate empty 18%", P, dict(max_permutations=18, truncation=0.18 * span)),
        ("acc", "permutation, 5 pairs", P, dict(max_permutations=10)),
        ("acc", "permutation, 9 pairs, truncate empty 0.03", P, dict(max_permutations=18, truncation=0.03)),
    ]


def study(value: Callable, phi: np.ndarray, fn: Callable, kw: dict, seeds: int) -> dict:
    kw = {"truncate_at": "empty", **kw} if "truncation" in kw else kw
    err, se, q = [], [], []
    for s in range(seeds):
        r = fn(value, N, seed=1000 + s, **kw)
        err.append(r.values - phi)
        se.append(r.stderr)
        q.append(t_quantile(r.extras["stderr_dof"]))
    err, se, q = np.array(err), np.array(se, dtype=float), np.array(q)[:, None]
    covered = np.abs(err) <= 1.96 * se  # a NaN stderr covers nothing
    covered_t = np.abs(err) <= q * se
    wrong_zero = (se == 0) & (np.abs(err) > 1e-9)
    return {
        "z": covered.mean(),
        "t": covered_t.mean(),
        "p0": covered[:, 0].mean(),
        "p0_t": covered_t[:, 0].mean(),
        "bias0": err[:, 0].mean() / np.nanmean(se[:, 0]),
        "zero": wrong_zero.mean(),
        "tq": float(np.median(q)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=60, help="runs per row (default 60)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the estimators do not use torch)")
    args = ap.parse_args()
    try:  # the package imports torch through its engine; keep it from taking every core
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    games = {"layer": memoised(layer_game()), "acc": memoised(acc_game())}
    truth = {name: exact_shapley(v, N) for name, v in games.items()}
    span = truth["layer"].v_full - truth["layer"].v_empty
    t0 = time.perf_counter()
    print(f"coverage of ±q·stderr over {args.seeds} seeds x {N} players (0.95 is calibrated)\n")
    print(
        "| game | setting | cover ±1.96 se | cover ±t se (median t) | player 0: ±1.96 / ±t | player 0 bias / se "
        "| wrong with stderr 0 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for game, label, fn, kw in rows(span):
        s = study(games[game], truth[game].values, fn, kw, args.seeds)
        print(
            f"| {game} | {label} | {s['z']:.2f} | {s['t']:.2f} ({s['tq']:.2f}) | {s['p0']:.2f} / {s['p0_t']:.2f} "
            f"| {s['bias0']:+.1f} | {s['zero']:.1%} |"
        )
    print(f"\n{time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
