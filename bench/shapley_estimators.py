"""How many value evaluations each Shapley estimator needs to reach a target accuracy.

For every *game* (a value function with reference Shapley values) and every estimator setting,
run a few seeds up to an evaluation cap and report the number of distinct evaluations after which
the running estimate stays within the target (Spearman >= 0.95 with the reference and max abs error
<= 0.01 by default) up to the cap; the median over seeds goes into the table. "never" means the
estimate was not (or not stably) within the target at the cap.

Games are plain functions returning a :class:`Game`; add one to ``GAMES`` and it goes through the
same loop (a model-backed game only needs a value function, reference values and a cap).

    python bench/shapley_estimators.py                 # all games, 9 seeds (~2-3 min on 1 core)
    python bench/shapley_estimators.py --seeds 3 --cap 50000 --games layer60
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from layerscope.methods.shapley import ShapleyResult, shapley


# ---- games ---------------------------------------------------------------------------------------
@dataclass
class Game:
    name: str
    n: int
    value: Callable[[frozenset], float]  # may also have values(list[frozenset]), the batch hook
    reference: np.ndarray  # exact (or trusted) Shapley values
    cap: int  # evaluation cap per run
    description: str = ""
    spearman_min: float = 0.95
    max_abs_err: float = 0.01
    checkpoints: tuple[int, ...] = (2_000, 10_000)  # also report the running error at these budgets
    extras: dict[str, Any] = field(default_factory=dict)


def _sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-z))


class LayerLikeGame:
    """A synthetic layer-removal game with exact Shapley values, shaped like the paper's findings.

    v(S) = chance + [C subset of S] * h(x(S \\ C)) + sum_T e_T [T subset of S]

    * C: "cornerstone" players; removing any of them collapses the score to chance.
    * x(S \\ C): kept "mass" of the other players (distinct positive integer weights, a few heavy),
      h a sigmoid normalised to h(0) = 0, h(total) = gain: the model degrades gracefully at first,
      then collapses once about ``1 - theta`` of the mass is gone.
    * e_T: unanimity terms: neighbour pairs (conditioned on C; positive = synergy,
      negative = redundancy), plus small extras that make the cornerstones' values distinct.

    Exact Shapley values: the unanimity part by closed form (e_T / |T| to each member of T), the
    sigmoid part by a dynamic program over (number kept, kept mass) of the non-cornerstone players.
    """

    def __init__(
        self,
        n: int = 60,
        cornerstones: Sequence[int] = (0, 1, 3),
        chance: float = 0.25,
        gain: float = 0.45,
        theta: float = 0.8,
        tau: float = 0.05,
        n_pairs: int = 8,
        seed: int = 0,
    ):
        rng = np.random.default_rng(seed)
        self.n = n
        self.C = [int(c) for c in cornerstones]
        self.rest = [i for i in range(n) if i not in self.C]
        self.chance = chance
        raw = np.exp(rng.normal(math.log(12.0), 0.7, len(self.rest)))
        heavy = rng.choice(len(self.rest), max(1, len(self.rest) // 20), replace=False)
        raw[heavy] *= 4.0  # a few "semi-important" layers
        mass = np.zeros(n, dtype=np.int64)
        used: set[int] = set()
        for idx in np.argsort(raw):  # distinct masses: no exact ties
            m = max(1, int(round(raw[idx])))
            while m in used:
                m += 1
            used.add(m)
            mass[self.rest[idx]] = m
        self.mass = mass
        self._mass = [int(m) for m in mass]
        self.total = int(mass.sum())
        lo, hi = _sigmoid(-theta / tau), _sigmoid((1 - theta) / tau)
        self._h = lambda x: gain * (_sigmoid((np.asarray(x, dtype=float) / self.total - theta) / tau) - lo) / (hi - lo)
        cands = [j for j in range(max(self.C) + 1, n - 1)]
        picks = rng.choice(len(cands), min(n_pairs, len(cands)), replace=False) if cands else []
        self.terms: list[tuple[tuple[int, ...], float]] = []
        for p in picks:
            j = cands[int(p)]
            self.terms.append((tuple(self.C) + (j, j + 1), float(rng.choice([-1.0, 1.0]) * rng.uniform(0.005, 0.02))))
        # small extras so that no two cornerstones tie: +0.02, +0.01, +0 on top of the shared part
        if len(self.C) >= 2:
            self.terms.append(((self.C[0], self.C[1]), 0.02))
        self.terms.append(((self.C[0],), 0.01))
        self.n_calls = 0

    # value function (one coalition, or a batch as a 0/1 matrix)
    def _batch(self, kept: np.ndarray) -> np.ndarray:
        kept = np.asarray(kept, dtype=bool)
        works = kept[:, self.C].all(axis=1)
        v = self.chance + works * self._h(kept.astype(np.int64) @ self.mass)
        for players, w in self.terms:
            v = v + w * kept[:, list(players)].all(axis=1)
        return v

    def __call__(self, kept: frozenset) -> float:
        """One coalition, in plain Python (a numpy round trip costs more for a single call)."""
        self.n_calls += 1
        v = self.chance
        if all(c in kept for c in self.C):
            x = sum(self._mass[i] for i in kept)
            v += float(self._h(x))
        for players, w in self.terms:
            if all(p in kept for p in players):
                v += w
        return v

    def values(self, coalitions: Sequence[frozenset]) -> np.ndarray:
        self.n_calls += len(coalitions)
        x = np.zeros((len(coalitions), self.n), dtype=bool)
        for r, s in enumerate(coalitions):
            x[r, list(s)] = True
        return self._batch(x)

    def shapley(self) -> np.ndarray:
        n, C, rest, mass, total = self.n, self.C, self.rest, self.mass, self.total
        # weight of a coalition of size s not containing the player: s!(n-s-1)!/n!
        weight = np.array([1.0 / (n * math.comb(n - 1, s)) for s in range(n)])
        h = self._h(np.arange(total + 1))

        def counts(players: list[int]) -> np.ndarray:  # counts[k, x]: subsets of size k and mass x
            d = np.zeros((len(players) + 1, total + 1))
            d[0, 0] = 1.0
            for t, p in enumerate(players):
                m = int(mass[p])
                d[1 : t + 2, m:] += d[0 : t + 1, : total + 1 - m].copy()
            return d

        phi = np.zeros(n)
        d = counts(rest)
        k = np.arange(len(rest) + 1)
        for c in C:  # c matters only when the other cornerstones are kept: gain h(x)
            phi[c] = float(np.sum(d * weight[k + len(C) - 1][:, None] * h[None, :]))
        for i in rest:  # i matters only when all cornerstones are kept
            di = counts([p for p in rest if p != i])
            ki = np.arange(len(rest))
            m = int(mass[i])
            step = np.zeros(total + 1)
            step[: total + 1 - m] = h[m:] - h[: total + 1 - m]
            phi[i] = float(np.sum(di * weight[ki + len(C)][:, None] * step[None, :]))
        for players, w in self.terms:
            for p in players:
                phi[p] += w / len(players)
        return phi


def layer_like_game(n: int = 60, seed: int = 0, cap: int = 100_000, name: str | None = None, **shape: Any) -> Game:
    g = LayerLikeGame(n=n, seed=seed, **shape)
    ref = g.shapley()
    full = g(frozenset(range(n)))
    pos = ref[ref > 0]
    top3 = np.sort(ref)[::-1][:3].sum() / pos.sum()
    half = g(frozenset(g.C) | frozenset(g.rest[::2]))
    lo, hi = ref[g.rest].min(), ref[g.rest].max()
    desc = (
        f"{n} players, cornerstones {g.C}, v(N)={full:.3f}, v(empty)={g.chance:.2f}, "
        f"v(cornerstones + every other player)={half:.3f}, top-3 share of positive Shapley mass {top3:.0%}, "
        f"cornerstone values {ref[g.C].min():.3f}..{ref[g.C].max():.3f}, other values {lo:.4f}..{hi:.4f}"
    )
    return Game(name or f"layer{n}", n, g, ref, cap, desc)


def stories_game(cap: int = 1024) -> Game:
    """stories260K at sub-layer granularity (10 players); value = -(token loss) on 48 of the model's own
    seeded generations (see experiments/shapley_report.py). All 2^10 coalition values are computed once
    with the coalition engine; the estimators then read that table, so their cost is counted in
    evaluations, not seconds."""
    import sys
    from pathlib import Path

    import torch

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "experiments"))
    from shapley_report import stories_heldout

    from layerscope.core.layermap import build_layer_map
    from layerscope.core.models import load_model
    from layerscope.engine.coalitions import CoalitionEngine
    from layerscope.methods.shapley import exact_shapley
    from layerscope.scoring import LossEvaluator

    torch.set_num_threads(1)
    m = load_model(str(root.parent / "shared" / "models" / "stories260K"))
    engine = CoalitionEngine(
        m.model, build_layer_map(m.model), LossEvaluator(m.tokenizer, stories_heldout(m.model, m.tokenizer)), "sublayer"
    )
    n = engine.n
    coalitions = [frozenset(i for i in range(n) if mask >> i & 1) for mask in range(2**n)]
    table = dict(zip(coalitions, engine.values(coalitions)))
    ref = exact_shapley(table.__getitem__, n).values
    desc = (
        f"stories260K, {n} sub-layer players, value = -loss on 48 own generations; v(N)={table[coalitions[-1]]:.3f}, "
        f"v(empty)={table[coalitions[0]]:.3f}; Shapley values {ref.min():.3f}..{ref.max():.3f}"
    )
    return Game("stories10", n, table.__getitem__, np.asarray(ref), cap, desc, checkpoints=(100, 300))


GAMES: dict[str, Callable[[], Game]] = {
    "stories10": stories_game,
    # sharp collapse once ~20% of the non-cornerstone mass is gone (the default shape)
    "layer60": lambda: layer_like_game(name="layer60"),
    # gradual degradation: a smoother, less threshold-like game (different weights, too)
    "layer60-gradual": lambda: layer_like_game(name="layer60-gradual", seed=1, theta=0.5, tau=0.15),
}


# ---- estimator settings ----------------------------------------------------------------------------
@dataclass
class Setting:
    label: str
    estimator: str
    options: dict[str, Any]
    sampled: bool = True  # False: deterministic, one run at its own fixed cost


SETTINGS: list[Setting] = [
    Setting("proximity (windows 1-3)", "proximity", {"max_window": 3}, sampled=False),
    Setting("permutation, plain", "permutation", {"antithetic": False}),
    Setting("permutation, antithetic", "permutation", {"antithetic": True}),
    Setting(
        "permutation, antithetic + truncation (walk down, tol 0.002)",
        "permutation",
        {"antithetic": True, "truncation": 0.002, "truncate_at": "empty"},
    ),
    Setting("owen, 8 strata", "owen", {"n_strata": 8}),
    Setting("owen, 16 strata (default)", "owen", {"n_strata": 16}),
]


# ---- the common loop -------------------------------------------------------------------------------
def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = rankdata(a), rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def _max_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)))


def within_target(game: Game, values: np.ndarray) -> bool:
    return (
        _spearman(values, game.reference) >= game.spearman_min and _max_err(values, game.reference) <= game.max_abs_err
    )


@dataclass
class Run:
    reached: int | None  # evaluations after which it stays within target
    final: ShapleyResult
    at: dict[int, np.ndarray]  # running estimate at each checkpoint


def run_once(game: Game, setting: Setting, seed: int) -> Run:
    """One estimator run up to the game's cap, watching the running estimate after every step."""
    since: list[int | None] = [None]
    at: dict[int, np.ndarray] = {}

    def watch(snap: ShapleyResult) -> None:
        for c in game.checkpoints:
            if c not in at and snap.n_evaluations >= c:
                at[c] = snap.values.copy()
        if within_target(game, snap.values):
            if since[0] is None:
                since[0] = snap.n_evaluations
        else:
            since[0] = None

    if not setting.sampled:
        res = shapley(game.value, game.n, setting.estimator, **setting.options)
        return Run(res.n_evaluations if within_target(game, res.values) else None, res, {})
    res = shapley(game.value, game.n, setting.estimator, budget=game.cap, seed=seed, progress=watch, **setting.options)
    watch(res)
    return Run(since[0], res, at)


def run(games: list[Game], settings: list[Setting], seeds: int) -> list[dict[str, Any]]:
    rows = []
    for game in games:
        print(f"# {game.name}: {game.description}", file=sys.stderr)
        for s in settings:
            t0 = time.perf_counter()
            runs = [run_once(game, s, seed) for seed in (range(seeds) if s.sampled else [0])]
            reached = [r.reached for r in runs]
            row: dict[str, Any] = {
                "game": game.name,
                "setting": s.label,
                "sampled": s.sampled,
                "runs": len(runs),
                "reached": sum(r is not None for r in reached),
                "per_seed": reached,
                "median": statistics.median([math.inf if r is None else r for r in reached]),
                "final_evals": runs[0].final.n_evaluations,
                "seconds": time.perf_counter() - t0,
                "at": {},
            }
            for c in game.checkpoints:
                got = [r.at[c] for r in runs if c in r.at]
                if len(got) == len(runs):
                    row["at"][c] = (
                        statistics.median(_spearman(v, game.reference) for v in got),
                        statistics.median(_max_err(v, game.reference) for v in got),
                    )
            if not s.sampled:
                final = runs[0].final.values
                row["own"] = (_spearman(final, game.reference), _max_err(final, game.reference))
            rows.append(row)
            print(f"  {s.label}: {reached} ({row['seconds']:.1f}s)", file=sys.stderr)
    return rows


def markdown(rows: list[dict[str, Any]], games: list[Game]) -> str:
    by_name = {g.name: g for g in games}
    checkpoints = sorted({c for g in games for c in g.checkpoints})
    out = [
        "| game | estimator | evaluations to target (median) | reached | per seed | "
        + " | ".join(f"at {c:,} evals: Spearman / max abs err" for c in checkpoints)
        + " |",
        "|---|---|---:|---:|---|" + "---|" * len(checkpoints),
    ]
    for r in rows:
        med = "never" if math.isinf(r["median"]) else f"{int(r['median']):,}"
        if not math.isinf(r["median"]) and r["reached"] < r["runs"]:
            med += " (some seeds never)"
        seeds = ", ".join("never" if x is None else f"{x:,}" for x in r["per_seed"])
        if not r["sampled"]:
            rho, err = r["own"]
            cells = [f"{rho:.3f} / {err:.4f} (deterministic, {r['final_evals']:,} evals)"]
            cells += [""] * (len(checkpoints) - 1)
        else:
            cells = [f"{r['at'][c][0]:.3f} / {r['at'][c][1]:.4f}" if c in r["at"] else "-" for c in checkpoints]
        out.append(
            f"| {r['game']} | {r['setting']} | {med} | {r['reached']}/{r['runs']} | {seeds} | "
            + " | ".join(cells)
            + " |"
        )
    notes = [
        f"- **{g.name}**: {g.description}. Target: Spearman >= {g.spearman_min} and max abs error <= "
        f"{g.max_abs_err} against the exact values, cap {g.cap:,} evaluations per run."
        for g in by_name.values()
    ]
    notes.append(
        "- 'evaluations' = distinct coalitions evaluated (memoised); 'evaluations to target' = the point "
        "after which the running estimate stays within target up to the cap (median over seeds; "
        "'never' = not within target, or not stably, at the cap); error columns are medians over seeds."
    )
    return "\n".join(out + [""] + notes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--games", nargs="*", default=list(GAMES), choices=list(GAMES))
    ap.add_argument("--seeds", type=int, default=9)
    ap.add_argument("--cap", type=int, default=None, help="evaluation cap per run (default: the game's)")
    args = ap.parse_args(argv)
    games = []
    for name in args.games:
        game = GAMES[name]()
        if args.cap is not None:
            game.cap = args.cap
        games.append(game)
    t0 = time.perf_counter()
    rows = run(games, SETTINGS, args.seeds)
    print(markdown(rows, games))
    print(f"\n({args.seeds} seeds, {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
