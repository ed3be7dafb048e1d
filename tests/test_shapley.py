"""Shapley estimators on games whose values are known in closed form (no model involved), and
``shapley_importance`` on stories260K (the estimator's result as a LayerImportance)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from layerscope.core.errors import ConfigError
from layerscope.methods.shapley import (
    ESTIMATORS,
    ShapleyResult,
    auto_strata,
    exact_shapley,
    owen_shapley,
    permutation_shapley,
    proximity_shapley,
    shapley,
    shapley_importance,
)

ROOT = Path(__file__).resolve().parents[1]


# ---- games with known Shapley values ----------------------------------------------------------------
class Counting:
    """Wraps a game and records every coalition it is asked for."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[frozenset] = []

    def __call__(self, kept: frozenset) -> float:
        assert isinstance(kept, frozenset)
        self.calls.append(kept)
        return self.fn(kept)


def additive(w, base=0.0):
    w = list(w)
    return lambda S: base + sum(w[i] for i in S)


def unanimity(terms, base=0.0):
    """v(S) = base + sum_T c_T [T subset of S]; Shapley: c_T / |T| to each member of T."""
    return lambda S: base + sum(c for T, c in terms if set(T) <= S)


def unanimity_shapley(terms, n):
    phi = np.zeros(n)
    for T, c in terms:
        for i in T:
            phi[i] += c / len(T)
    return phi


def voting(weights, quota):
    return lambda S: 1.0 if sum(weights[i] for i in S) >= quota else 0.0


def pairwise(w, pairs):
    """Additive plus pairwise interactions: antithetic pairs are exact on such games."""
    return lambda S: sum(w[i] for i in S) + sum(a for (i, j), a in pairs if i in S and j in S)


# a small game with interactions of order 1-4, used for the sampling estimators
SMALL_N = 8
SMALL_TERMS = [
    ((0,), 0.3),
    ((1, 2), 0.5),
    ((2, 3, 4), 0.6),
    ((0, 5, 6, 7), -0.4),
    ((3,), 0.1),
    ((6, 7), 0.2),
    ((1, 4, 7), 0.35),
]
SMALL = unanimity(SMALL_TERMS, base=0.25)
SMALL_PHI = unanimity_shapley(SMALL_TERMS, SMALL_N)
# SMALL's 2**8 coalitions are all evaluated within a few hundred samples, and then the estimators return the
# exact values: tests of the sampling itself (stderr, convergence) use this wider game, which no budget
# below 2**14 evaluations exhausts; every player is in an interaction of three or more (antithetic pairs
# are exact on pairwise ones, so a stderr there would be zero)
WIDE_N = 14
WIDE_TERMS = SMALL_TERMS + [((8, 9, 10), 0.4), ((9, 10, 11), -0.3), ((12, 13, 1), 0.5), ((8, 11, 13, 2), 0.2)]
WIDE = unanimity(WIDE_TERMS, base=0.25)
WIDE_PHI = unanimity_shapley(WIDE_TERMS, WIDE_N)


# ---- exact -----------------------------------------------------------------------------------------------
def test_exact_additive_game():
    w = [0.5, -0.2, 0.0, 1.5, 0.25, 0.01]
    r = exact_shapley(additive(w, base=3.0), 6)
    np.testing.assert_allclose(r.values, w, atol=1e-12)
    assert r.n_evaluations == 2**6 and r.stderr is None and r.estimator == "exact"
    assert r.v_full == pytest.approx(3.0 + sum(w)) and r.v_empty == pytest.approx(3.0)


def test_exact_unanimity_game():
    r = exact_shapley(SMALL, SMALL_N)
    np.testing.assert_allclose(r.values, SMALL_PHI, atol=1e-12)


def test_exact_weighted_voting_textbook():
    # weights 50/49/1, quota 51: player 0 is pivotal in 4 of 6 orders, the others in 1 each
    r = exact_shapley(voting([50, 49, 1], 51), 3)
    np.testing.assert_allclose(r.values, [2 / 3, 1 / 6, 1 / 6], atol=1e-12)


def test_exact_weighted_voting_by_pivots():
    weights, quota = [4, 3, 2, 1, 1], 6
    n = len(weights)
    pivots = np.zeros(n)
    for order in itertools.permutations(range(n)):
        total = 0
        for p in order:
            if total < quota <= total + weights[p]:
                pivots[p] += 1
            total += weights[p]
    r = exact_shapley(voting(weights, quota), n)
    np.testing.assert_allclose(r.values, pivots / math.factorial(n), atol=1e-12)


def test_exact_efficiency_symmetry_null_player_on_random_game():
    rng = np.random.default_rng(3)
    n = 7
    table = {frozenset(S): rng.normal() for k in range(n + 1) for S in itertools.combinations(range(n), k)}
    # make player 6 a null player: v(S + 6) = v(S)
    for S in list(table):
        if 6 in S:
            table[S] = table[S - {6}]
    # make players 2 and 3 interchangeable: v(S) is v of S with 2 and 3 swapped
    swap = {2: 3, 3: 2}
    for S in sorted(table, key=sorted):
        swapped = frozenset(swap.get(p, p) for p in S)
        if sorted(S) < sorted(swapped):
            table[swapped] = table[S]
    r = exact_shapley(lambda S: table[S], n)
    assert r.values.sum() == pytest.approx(table[frozenset(range(n))] - table[frozenset()], abs=1e-12)
    assert r.values[6] == pytest.approx(0.0, abs=1e-12)
    assert r.values[2] == pytest.approx(r.values[3], abs=1e-12) and r.values[2] != pytest.approx(r.values[1])


def test_exact_evaluates_each_coalition_once():
    v = Counting(SMALL)
    r = exact_shapley(v, SMALL_N)
    assert len(v.calls) == len(set(v.calls)) == r.n_evaluations == 2**SMALL_N


def test_exact_single_player():
    r = exact_shapley(additive([0.7], base=0.1), 1)
    np.testing.assert_allclose(r.values, [0.7])


# ---- proximity (Zhang et al.) --------------------------------------------------------------------
def test_proximity_hand_computed_four_players():
    # v(S) = sum of w (1, 2, 3, 4) + 10 if players 0 and 2 are both kept (a non-neighbour synergy);
    # v(N) = 20. Exact Shapley: (1 + 5, 2, 3 + 5, 4) = (6, 2, 8, 4).
    w = [1, 2, 3, 4]

    def v(S):
        return sum(w[i] for i in S) + (10 if {0, 2} <= S else 0)

    # player 0: v(N)-v(N-0) = 11; R={0,1}: v(N-1)-v(N-01) = 18-7 = 11; R={0,1,2}: v(N-12)-v(N-012) = 5-4 = 1
    #           -> (11 + 11 + 1) / 3 = 23/3
    # player 1: 2; R={1,2}: v(N-2)-v(N-12) = 7-5 = 2; R={0,1}: v(N-0)-v(N-01) = 9-7 = 2;
    #           R={1,2,3}: v(N-23)-v(N-123) = 3-1 = 2 -> 2
    # player 2: 13; R={2,3}: v(N-3)-v(N-23) = 16-3 = 13; R={1,2}: v(N-1)-v(N-12) = 18-5 = 13;
    #           R={0,1,2}: v(N-01)-v(N-012) = 7-4 = 3 -> (13 + 13 + 13 + 3) / 4 = 10.5
    # player 3: 4; R={2,3}: v(N-2)-v(N-23) = 7-3 = 4; R={1,2,3}: v(N-12)-v(N-123) = 5-1 = 4 -> 4
    counted = Counting(v)
    r = proximity_shapley(counted, 4, max_window=3)
    np.testing.assert_allclose(r.values, [23 / 3, 2, 10.5, 4], atol=1e-12)
    # evaluations: v(N) plus windows of length 1, 2, 3 removed: 1 + 4 + 3 + 2
    assert r.n_evaluations == len(set(counted.calls)) == len(counted.calls) == 10
    assert r.config["terms_per_player"] == [3, 4, 4, 3]
    assert r.stderr is None and r.v_full == 20
    # it is a local approximation: here it overstates the synergy and breaks efficiency
    assert not np.allclose(r.values, exact_shapley(v, 4).values)


def test_proximity_leave_one_out_and_additive_exactness():
    w = np.linspace(-0.3, 0.9, 9)
    r1 = proximity_shapley(SMALL, SMALL_N, max_window=1)
    full = SMALL(frozenset(range(SMALL_N)))
    loo = [full - SMALL(frozenset(range(SMALL_N)) - {i}) for i in range(SMALL_N)]
    np.testing.assert_allclose(r1.values, loo)
    np.testing.assert_allclose(proximity_shapley(additive(w), 9).values, w, atol=1e-12)


def test_proximity_evaluation_count_64_players():
    r = proximity_shapley(additive(np.ones(64)), 64)
    assert r.n_evaluations == 64 + 63 + 62 + 1
    assert len(r.trace) == 64 + 63 + 62


def test_proximity_tiny_n_and_long_windows():
    r = proximity_shapley(additive([0.5]), 1, max_window=3)
    np.testing.assert_allclose(r.values, [0.5])
    r = proximity_shapley(SMALL, 3, max_window=10)  # windows capped at n
    assert r.n_evaluations == 1 + 3 + 2 + 1


# ---- permutation sampling ------------------------------------------------------------------------------
def test_permutation_converges_to_exact_within_stderr():
    r = permutation_shapley(WIDE, WIDE_N, budget=6000, seed=1)
    assert r.n_evaluations <= 6000 and r.config["stop_reason"] == "budget"
    z = np.abs(r.values - WIDE_PHI) / r.stderr
    assert np.all(z < 4), z
    assert np.max(np.abs(r.values - WIDE_PHI)) < 0.03


def test_permutation_stderr_shrinks_with_samples():
    small = permutation_shapley(WIDE, WIDE_N, max_permutations=40, seed=0)
    big = permutation_shapley(WIDE, WIDE_N, max_permutations=640, seed=0)
    ratio = np.max(big.stderr) / np.max(small.stderr)
    assert 0.15 < ratio < 0.4  # ~ sqrt(40/640) = 0.25
    assert np.max(np.abs(big.values - WIDE_PHI)) < np.max(np.abs(small.values - WIDE_PHI))


def test_permutation_target_stderr_stops_early():
    r = permutation_shapley(SMALL, SMALL_N, target_stderr=0.02, budget=10**6, seed=0)
    assert np.max(r.stderr) <= 0.02
    assert r.config["n_permutations"] >= 20
    assert r.trace[-1]["max_stderr"] <= 0.02 < r.trace[-2]["max_stderr"]


def test_antithetic_zero_variance_on_additive_and_pairwise_games():
    w = [0.1, 0.4, -0.2, 0.3, 0.0, 0.25]
    r = permutation_shapley(additive(w), 6, max_permutations=20, seed=0)
    np.testing.assert_allclose(r.values, w, atol=1e-12)
    assert np.max(r.stderr) < 1e-12
    # with pairwise interactions a permutation and its reverse see each partner once before and once
    # after: the pair average is exact, a single permutation is not
    pairs = [((0, 1), 0.5), ((1, 2), -0.3), ((3, 5), 0.8), ((0, 4), 0.2)]
    game = pairwise(w, pairs)
    exact = exact_shapley(game, 6).values
    anti = permutation_shapley(game, 6, max_permutations=40, seed=0)
    plain = permutation_shapley(game, 6, max_permutations=40, seed=0, antithetic=False)
    np.testing.assert_allclose(anti.values, exact, atol=1e-12)
    assert np.max(anti.stderr) < 1e-12 < 0.05 < np.max(plain.stderr)


def test_truncation_skips_zero_tail_without_changing_values():
    # v collapses to v(empty) whenever player 0 or 1 is missing (cornerstones): walking down from
    # the full model, everything after the collapse contributes exactly zero
    w = np.linspace(0.1, 0.8, 10)

    def collapse(S):
        return 0.25 + (sum(w[i] for i in S) if {0, 1} <= S else 0.0)

    full = permutation_shapley(collapse, 10, max_permutations=60, seed=4)
    trunc = permutation_shapley(collapse, 10, max_permutations=60, seed=4, truncation=1e-12, truncate_at="empty")
    np.testing.assert_allclose(trunc.values, full.values, atol=1e-12)
    assert trunc.n_evaluations < 0.7 * full.n_evaluations

    # TMC direction: once player 0 or 1 is in, the game is at v(N); the rest contributes zero
    def saturate(S):
        return 1.0 if S & {0, 1} else 0.0

    full = permutation_shapley(saturate, 10, max_permutations=60, seed=4)
    trunc = permutation_shapley(saturate, 10, max_permutations=60, seed=4, truncation=1e-12)
    np.testing.assert_allclose(trunc.values, full.values, atol=1e-12)
    np.testing.assert_allclose(trunc.values, exact_shapley(saturate, 10).values, atol=0.1)
    assert trunc.n_evaluations < 0.5 * full.n_evaluations


def test_budget_is_a_hard_cap():
    for budget in (40, 100, 333):
        r = permutation_shapley(SMALL, SMALL_N, budget=budget, seed=0)
        assert r.n_evaluations <= budget
    r = owen_shapley(SMALL, SMALL_N, budget=400, n_strata=4, seed=0)
    assert r.n_evaluations <= 400


def test_memo_and_batch_protocol():
    class Batched:
        def __init__(self):
            self.batches = []
            self.singles = 0

        def __call__(self, S):
            self.singles += 1
            return SMALL(S)

        def values(self, coalitions):
            self.batches.append(list(coalitions))
            return [SMALL(S) for S in coalitions]

    v = Batched()
    r = permutation_shapley(v, SMALL_N, max_permutations=30, seed=0)
    seen = [S for b in v.batches for S in b]
    assert len(seen) == len(set(seen))  # nothing asked twice
    assert r.n_evaluations == len(seen) + v.singles
    assert v.batches and all(len(b) <= 2 * (SMALL_N - 1) for b in v.batches)
    ref = permutation_shapley(SMALL, SMALL_N, max_permutations=30, seed=0)
    np.testing.assert_allclose(r.values, ref.values)


def test_determinism_under_seed():
    for name, kw in [("permutation", {"budget": 500}), ("owen", {"budget": 800, "n_strata": 4})]:
        a = shapley(WIDE, WIDE_N, name, seed=7, **kw)
        b = shapley(WIDE, WIDE_N, name, seed=7, **kw)
        c = shapley(WIDE, WIDE_N, name, seed=8, **kw)
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.stderr, b.stderr)
        assert a.n_evaluations == b.n_evaluations and a.trace == b.trace
        assert not np.array_equal(a.values, c.values)


def test_progress_callback_and_bar(capsys):
    snaps: list[ShapleyResult] = []
    r = permutation_shapley(SMALL, SMALL_N, max_permutations=10, seed=0, progress=snaps.append)
    assert len(snaps) == 5  # one per antithetic pair
    assert [s.n_evaluations for s in snaps] == sorted(s.n_evaluations for s in snaps)
    np.testing.assert_allclose(snaps[-1].values, r.values)
    permutation_shapley(SMALL, SMALL_N, max_permutations=4, seed=0, progress=True)
    owen_shapley(SMALL, SMALL_N, max_rounds=1, n_strata=4, progress=True)
    assert "shapley" in capsys.readouterr().err


class FakeBar:
    """Stands in for tqdm: records what the progress bar was told."""

    made: list[FakeBar] = []

    def __init__(self, total=None, **_):
        self.total, self.n, self.postfixes, self.closed = total, 0, [], False
        FakeBar.made.append(self)

    def update(self, k=1):
        self.n += k

    def set_postfix_str(self, text, refresh=True):
        self.postfixes.append(text)

    def close(self):
        self.closed = True


class ReportingGame:
    """A game with named players and a batch hook that reports each finished coalition (as the
    coalition engine does); records how far the bar had moved after each one."""

    def __init__(self, fn, n):
        self.fn, self.players = fn, [f"layers.{i}.mlp" for i in range(n)]
        self.bar_while_batching: list[int] = []

    def __call__(self, kept):
        return self.fn(kept)

    def values(self, coalitions, on_result=None):
        out = []
        for S in coalitions:
            out.append(self.fn(S))
            if on_result is not None:
                on_result(out[-1])
                self.bar_while_batching.append(FakeBar.made[-1].n)
        return out


@pytest.fixture
def fake_bar(monkeypatch):
    import tqdm

    FakeBar.made = []
    monkeypatch.setattr(tqdm, "tqdm", FakeBar)
    return FakeBar.made


def test_progress_bar_moves_inside_one_batch(fake_bar):
    game = ReportingGame(SMALL, SMALL_N)
    r = proximity_shapley(game, SMALL_N, progress=True)
    bar = fake_bar[-1]
    # proximity hands every window over in one batch: the bar moves coalition by coalition inside it
    assert game.bar_while_batching == list(range(1, r.n_evaluations + 1))
    assert bar.n == bar.total == r.n_evaluations and bar.closed
    assert bar.postfixes == []  # no running estimate to show, and no cryptic "0:0 1:0"
    np.testing.assert_array_equal(r.values, proximity_shapley(SMALL, SMALL_N).values)
    # exact: the same, in chunks
    game = ReportingGame(SMALL, SMALL_N)
    exact_shapley(game, SMALL_N, progress=True)
    assert game.bar_while_batching == list(range(1, 2**SMALL_N + 1)) and fake_bar[-1].n == 2**SMALL_N


def test_progress_text_names_the_leader_and_the_stop(fake_bar):
    game = ReportingGame(SMALL, SMALL_N)
    r = permutation_shapley(game, SMALL_N, budget=120, seed=0, progress=True)
    ref = permutation_shapley(SMALL, SMALL_N, budget=120, seed=0)
    np.testing.assert_array_equal(r.values, ref.values)  # progress never changes the numbers
    np.testing.assert_array_equal(r.stderr, ref.stderr)
    bar = fake_bar[-1]
    assert bar.total == 120 and bar.n == r.n_evaluations
    leader = int(np.argmax(r.values))
    assert bar.postfixes[-2].startswith(f"top: layers.{leader}.mlp {r.values[leader]:.3g} ± ")
    assert "largest stderr" in bar.postfixes[-2]
    assert bar.postfixes[-1] == "stopped: budget of 120 evaluations reached"
    assert r.config["stop_reason"] == "budget"
    # a plain function has no player names: "player i"
    owen_shapley(SMALL, SMALL_N, max_rounds=2, n_strata=4, seed=0, progress=True)
    assert fake_bar[-1].postfixes[-2].startswith("top: player ")
    assert fake_bar[-1].postfixes[-1] == "stopped: 2 rounds over the strata done (max_rounds)"


def test_progress_says_when_every_coalition_was_evaluated(fake_bar):
    n = 4
    r = permutation_shapley(ReportingGame(SMALL, n), n, budget=2000, seed=0, progress=True)
    assert r.config["stop_reason"] == "all coalitions evaluated" and r.n_evaluations == 2**n
    bar = fake_bar[-1]
    assert bar.n == bar.total == 2**n  # the bar ends full, not at "51% 1024/2000"
    assert bar.postfixes[-1] == f"stopped: all {2**n} coalitions evaluated: values exact"
    r = owen_shapley(SMALL, n, budget=10**4, n_strata=2, seed=0, progress=True)
    assert r.config["stop_reason"] == "all coalitions evaluated"
    assert fake_bar[-1].n == fake_bar[-1].total == 2**n


def test_an_owen_budget_below_one_round_says_what_fixes_it():
    """Strata chosen for the budget are the fewest already: the fix is a larger budget; only n_strata
    given by hand can go lower."""
    with pytest.raises(ConfigError, match="over 2 strata .*raise the budget to 20 or use the 'permutation'"):
        owen_shapley(SMALL, SMALL_N, budget=10)
    with pytest.raises(ConfigError, match="over 8 strata .*; lower n_strata or use"):
        owen_shapley(SMALL, SMALL_N, budget=30, n_strata=8)


def test_stop_text_in_words():
    from layerscope.methods.shapley.common import stop_text

    cfg = {"budget": 500, "target_stderr": 0.01, "max_permutations": 40, "max_rounds": 3}
    assert "every one of the 16 coalitions was evaluated" in stop_text("all coalitions evaluated", cfg, 16)
    assert "'exact' estimator" in stop_text("all coalitions evaluated", cfg, 16)
    exact = {**cfg, "values_exact": True}  # a result that returned them (a result saved before lacks the flag)
    assert "so the values are exact" in stop_text("all coalitions evaluated", exact, 16)
    assert stop_text("all coalitions evaluated", exact, 16, brief=True) == "all 16 coalitions evaluated: values exact"
    assert stop_text("budget", cfg, 498) == "the budget of 500 evaluations was reached (498 used)"
    # truncated walks are checked before each sample: the last may go past the budget, and the line says how
    assert "the last sample's truncated walks, started within it, went past it (514 used)" in stop_text(
        "budget", cfg, 514
    )
    assert stop_text("target_stderr", cfg, 10) == "every standard error is at most the target 0.01"
    assert stop_text("max_permutations", cfg, 10) == "40 permutations done (max_permutations)"


# ---- owen (stratified multilinear sampling) ------------------------------------------------------------
def test_owen_converges_to_exact_within_stderr():
    r = owen_shapley(WIDE, WIDE_N, budget=6000, n_strata=8, seed=1)
    assert r.n_evaluations <= 6000 and r.config["stop_reason"] == "budget"
    z = np.abs(r.values - WIDE_PHI) / r.stderr
    assert np.all(z < 4), z
    assert np.max(np.abs(r.values - WIDE_PHI)) < 0.03


@pytest.mark.parametrize(
    "fn, kw",
    [
        (owen_shapley, {"budget": 10**4}),
        (owen_shapley, {"budget": 10**4, "n_strata": 2}),  # saturated after one round, below min_rounds
        (owen_shapley, {"max_rounds": 500, "n_strata": 4}),
        (owen_shapley, {"target_stderr": 1e-9, "max_rounds": 500, "n_strata": 4}),  # the target is out of reach
        (permutation_shapley, {"budget": 10**4}),
        (permutation_shapley, {"max_permutations": 10**4}),
        (permutation_shapley, {"budget": 10**4, "truncation": 0.01}),
    ],
)
def test_sampling_that_evaluates_every_coalition_returns_the_exact_values(fn, kw):
    """Once every coalition is known the game is known whole: a sampled estimate of it would be noise (Owen's
    after a single round had no stderr, and its values broke efficiency), the exact values cost nothing."""
    exact = exact_shapley(SMALL, SMALL_N)
    r = fn(SMALL, SMALL_N, seed=0, **kw)
    assert r.n_evaluations == 2**SMALL_N
    np.testing.assert_allclose(r.values, exact.values, atol=1e-12)
    assert r.stderr is None  # nothing estimated: no error bars
    assert r.config["stop_reason"] == "all coalitions evaluated" and r.config["values_exact"] is True
    assert math.isclose(r.values.sum(), r.v_full - r.v_empty, abs_tol=1e-12)  # efficiency, exactly
    assert r.extras == {}  # no sample-based caveat: stderr_notes says nothing of these values
    json.loads(json.dumps(r.to_dict()))


def test_one_player_is_its_own_exact_value():
    """v(full) and v(empty) are the whole game of one player, before any sample is drawn: permutation refused
    it as a budget too small for one sample, and Owen returned 0."""
    game = additive([0.7], base=0.1)
    for r in (permutation_shapley(game, 1, budget=50), owen_shapley(game, 1, budget=50)):
        np.testing.assert_allclose(r.values, [0.7])
        assert r.stderr is None
        assert r.config["values_exact"] is True and r.n_evaluations == 2


def test_shapley_importance_of_a_few_blocks_is_exact_once_every_coalition_is_known(block_engine):
    """The repro: stories260K's few blocks have few coalitions; Owen and permutation under a budget above
    that count return the exact estimator's values, no stderr, and say so."""
    from layerscope.methods.shapley.common import stop_text

    exact = shapley_importance(block_engine, "exact")
    for estimator in ("owen", "permutation"):
        imp = shapley_importance(block_engine, estimator, budget=1000, seed=0)
        np.testing.assert_allclose(imp.scores, exact.scores, rtol=1e-9, atol=1e-12)
        assert imp.stderr is None and imp.n_evaluations == 2**block_engine.n
        assert imp.method_config["values_exact"] is True
        said = stop_text(imp.method_config["stop_reason"], imp.method_config, imp.n_evaluations)
        assert said.startswith(f"every one of the {2**block_engine.n} coalitions was evaluated, so the values are")


def test_owen_exact_on_pairwise_game_and_odd_strata():
    w = [0.1, 0.4, -0.2, 0.3, 0.0, 0.25]
    game = pairwise(w, [((0, 1), 0.5), ((1, 2), -0.3), ((3, 5), 0.8)])
    exact = exact_shapley(game, 6).values
    for strata in (1, 5, 8):
        r = owen_shapley(game, 6, max_rounds=3, n_strata=strata, seed=0)
        np.testing.assert_allclose(r.values, exact, atol=1e-12)
    # without the mirrored centre it is unbiased but noisy
    r = owen_shapley(game, 6, max_rounds=3, n_strata=4, antithetic=False, seed=0)
    assert np.max(r.stderr) > 0.01


def test_owen_target_stderr_and_rounds():
    r = owen_shapley(SMALL, SMALL_N, target_stderr=0.02, n_strata=4, seed=0)
    assert np.max(r.stderr) <= 0.02 and r.config["n_rounds"] >= 2
    r = owen_shapley(SMALL, SMALL_N, max_rounds=1, n_strata=4, seed=0)
    assert r.config["n_rounds"] == 1 and np.all(np.isnan(r.stderr))  # one sample per stratum: no stderr


def test_owen_default_strata_fit_the_budget():
    assert auto_strata(60, None) == 16
    assert auto_strata(60, 10**6) == 16
    assert auto_strata(60, 1000) == 8  # two rounds of 8 strata: 2 * 8 * 61 = 976 <= 998
    assert auto_strata(60, 300) == 2
    r = owen_shapley(SMALL, SMALL_N, budget=150, seed=0)
    assert r.config["n_strata"] == 8 and r.n_evaluations <= 150


# ---- dispatch and bad input ------------------------------------------------------------------------------
def test_dispatch_and_result_json():
    assert set(ESTIMATORS) >= {"exact", "proximity", "permutation", "owen"}
    r = shapley(SMALL, SMALL_N, "exact")
    np.testing.assert_allclose(r.values, SMALL_PHI, atol=1e-12)
    json.dumps(shapley(SMALL, SMALL_N, "permutation", max_permutations=4).to_dict())
    json.dumps(r.to_dict())


@pytest.mark.parametrize(
    "call",
    [
        lambda: exact_shapley(SMALL, 0),
        lambda: exact_shapley(SMALL, -3),
        lambda: exact_shapley(SMALL, 2.5),
        lambda: exact_shapley(additive(np.ones(15)), 15),
        lambda: proximity_shapley(SMALL, 4, max_window=0),
        lambda: permutation_shapley(SMALL, 0, budget=10),
        lambda: permutation_shapley(SMALL, SMALL_N, budget=0),
        lambda: permutation_shapley(SMALL, SMALL_N, budget=-5),
        lambda: permutation_shapley(SMALL, SMALL_N, budget=5),  # below one antithetic pair
        lambda: permutation_shapley(SMALL, SMALL_N),  # no stopping rule
        lambda: permutation_shapley(SMALL, SMALL_N, target_stderr=0),
        lambda: permutation_shapley(SMALL, SMALL_N, budget=100, truncation=-1),
        lambda: permutation_shapley(SMALL, SMALL_N, budget=100, truncate_at="middle"),
        lambda: owen_shapley(SMALL, SMALL_N, budget=10),  # below one round of 2 strata
        lambda: owen_shapley(SMALL, SMALL_N, budget=10**4, n_strata=0),
        lambda: shapley(SMALL, SMALL_N, "kernelshap"),
        lambda: shapley(SMALL, SMALL_N, "exact", budget=10),  # option the estimator lacks
        lambda: shapley(lambda S: float("nan"), 3, "exact"),
        lambda: shapley(42, 3, "exact"),
    ],
)
def test_bad_input_raises_config_error(call):
    with pytest.raises(ConfigError):
        call()


def test_exact_limit_can_be_raised():
    r = exact_shapley(additive(np.ones(15) * 0.1), 15, max_players=15)
    np.testing.assert_allclose(r.values, 0.1)


# ---- the benchmark's layer-like game: its closed form must be right ---------------------------------------
def test_bench_layer_like_game_closed_form_matches_enumeration():
    spec = importlib.util.spec_from_file_location("shapley_bench", ROOT / "bench" / "shapley_estimators.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.modules.pop(spec.name, None)
    for seed in (0, 1):
        g = bench.LayerLikeGame(n=10, n_pairs=2, seed=seed)
        np.testing.assert_allclose(g.shapley(), exact_shapley(g, 10).values, atol=1e-12)


# ---- shapley_importance: an estimator run on a coalition engine, as a LayerImportance -------------------
@pytest.fixture(scope="module")
def block_engine(stories):
    from layerscope.core.data import load_sft
    from layerscope.core.layermap import build_layer_map
    from layerscope.engine.coalitions import CoalitionEngine
    from layerscope.scoring import LossEvaluator

    model, tok = stories
    data = load_sft("demo", tok, max_length=64, limit=6)
    return CoalitionEngine(model, build_layer_map(model), LossEvaluator(tok, data.examples, batch_size=3), "block")


def test_shapley_importance_wraps_the_estimator(block_engine):
    eng = block_engine
    imp = shapley_importance(eng, "exact", model_name="stories", data={"task": "loss"}, seed=7)
    ref = shapley(eng, eng.n, "exact")
    assert imp.method == "shapley-exact" and imp.granularity == "block" and imp.players == list(eng.players)
    assert imp.scores == [float(v) for v in ref.values] and imp.stderr is None
    assert imp.n_evaluations == 2**eng.n and imp.seed == 7 and imp.data == {"task": "loss"}
    assert imp.method_config == {"estimator": "exact", **ref.config}
    assert imp.baseline["full"] == eng.full().value and imp.baseline["empty"] == ref.v_empty
    assert math.isfinite(imp.baseline["chance"]) and imp.model["name"] == "stories"
    assert set(imp.timings) == {"seconds", "capture_seconds", "threads"} and set(imp.extras) == {"trace", "engine"}
    json.loads(json.dumps(imp.to_dict()))  # JSON-ready


def test_shapley_importance_passes_the_seed_to_sampling_estimators(block_engine):
    eng = block_engine
    imp = shapley_importance(eng, "permutation", model_name="m", data={}, seed=3, budget=30)
    ref = shapley(eng, eng.n, "permutation", budget=30, seed=3)
    assert imp.scores == [float(v) for v in ref.values] and imp.seed == 3
    np.testing.assert_array_equal(imp.stderr, ref.stderr)
    assert shapley(eng, eng.n, "permutation", budget=30, seed=4).values.tolist() != imp.scores
    # proximity takes no seed: it is recorded, not passed on
    assert shapley_importance(eng, "proximity", model_name="m", data={}, seed=3).seed == 3
    with pytest.raises(ConfigError, match="unknown Shapley estimator"):
        shapley_importance(eng, "nope", model_name="m", data={})
    with pytest.raises(ConfigError, match="exact"):
        shapley_importance(eng, "exact", model_name="m", data={}, budget=5)


def test_an_option_the_setting_ignores_is_refused():
    """truncate_at= without truncation= changes nothing (every walk runs end to end): refused, as
    ``layerscope shapley --truncate-at`` without ``--truncation`` is, not recorded beside truncation=None."""
    with pytest.raises(ConfigError, match="^truncate_at='empty' applies with truncation=X; without truncation"):
        permutation_shapley(SMALL, SMALL_N, budget=100, truncate_at="empty")
    with pytest.raises(ConfigError, match="^truncate_at='full' applies with truncation=X"):
        shapley(SMALL, SMALL_N, "permutation", budget=100, truncate_at="full")
    # with truncation it is used and recorded; without either, the record is as it always was
    r = permutation_shapley(SMALL, SMALL_N, budget=100, truncation=0.01, truncate_at="empty")
    assert (r.config["truncation"], r.config["truncate_at"]) == (0.01, "empty")
    r = permutation_shapley(SMALL, SMALL_N, budget=100)
    assert (r.config["truncation"], r.config["truncate_at"]) == (None, "full")


def test_a_minimum_sample_count_without_a_stderr_target_is_refused():
    """min_permutations / min_rounds only delay the target_stderr test: without a target they would
    be recorded yet change nothing."""
    with pytest.raises(ConfigError, match="^min_permutations=5 applies with target_stderr=X"):
        permutation_shapley(SMALL, SMALL_N, budget=100, min_permutations=5)
    with pytest.raises(ConfigError, match="^min_rounds=3 applies with target_stderr=X"):
        owen_shapley(SMALL, SMALL_N, budget=10**4, min_rounds=3)
    with pytest.raises(ConfigError, match="min_rounds"):
        owen_shapley(SMALL, SMALL_N, target_stderr=0.1, min_rounds=0)
    # with a target they are used and recorded; without, the record keeps the defaults it always had
    r = permutation_shapley(
        SMALL, SMALL_N, target_stderr=10.0, min_permutations=3, max_permutations=50, antithetic=False
    )
    assert (r.config["min_permutations"], r.config["n_permutations"]) == (3, 3)
    assert permutation_shapley(SMALL, SMALL_N, budget=100).config["min_permutations"] == 20
    assert owen_shapley(SMALL, SMALL_N, budget=10**4).config["min_rounds"] == 2


def test_shapley_importance_through_the_engine_refuses_truncate_at_alone(block_engine):
    with pytest.raises(ConfigError, match="^truncate_at='empty' applies with truncation=X"):
        shapley_importance(block_engine, "permutation", budget=10, truncate_at="empty")


def test_shapley_importance_refuses_a_model_in_one_line():
    from tiny_models import tiny_model

    with pytest.raises(ConfigError, match="^shapley_importance: pass a CoalitionEngine, not a LlamaForCausalLM"):
        shapley_importance(tiny_model("llama", n_layers=2), "proximity")


def test_shapley_importance_defaults_as_ablate_and_records_the_seed_used(block_engine):
    """model_name= and data= are optional (data: what the engine's evaluator knows, as ablate fills it);
    without seed= a sampling estimator's own seed (0) is recorded, matching method_config."""
    from layerscope.scoring.sources import evaluator_info

    eng = block_engine
    imp = shapley_importance(eng, "permutation", budget=30)
    assert imp.seed == imp.method_config["seed"] == 0
    assert imp.scores == shapley_importance(eng, "permutation", budget=30, seed=0).scores
    # model_name's default, as ablate's: the name the model was loaded under
    assert imp.model["name"] == "stories260K" and imp.data == evaluator_info(eng.evaluator)
    assert shapley_importance(eng, "owen", budget=60).seed == 0
    assert shapley_importance(eng, "proximity").seed is None  # no seed given, none taken
    # truncation without truncate_at truncates near the empty model, as `layerscope shapley --truncation` does
    truncated = shapley_importance(eng, "permutation", budget=30, truncation=0.05)
    assert truncated.method_config["truncate_at"] == "empty"
    assert (
        shapley_importance(eng, "permutation", budget=30, truncation=0.05, truncate_at="full").method_config[
            "truncate_at"
        ]
        == "full"
    )


def test_shapley_importance_describes_sft_data_as_the_cli_does(stories, block_engine):
    from layerscope.core.data import load_sft
    from layerscope.scoring import evaluator_for

    model, tok = stories
    sft = load_sft("demo", tok, max_length=64, limit=6)
    _, cli_data = evaluator_for("loss:demo", model, tok, limit=6, batch_size=3, max_length=64)
    imp = shapley_importance(block_engine, "proximity", data=sft)
    assert imp.data == cli_data and imp.data["source"] == str(sft.source)


def test_engine_reports_each_computed_coalition(stories):
    from layerscope.core.data import load_sft
    from layerscope.core.layermap import build_layer_map
    from layerscope.engine.coalitions import CoalitionEngine
    from layerscope.scoring import LossEvaluator

    model, tok = stories
    data = load_sft("demo", tok, max_length=64, limit=3)
    eng = CoalitionEngine(model, build_layer_map(model), LossEvaluator(tok, data.examples, batch_size=3), "block")
    coalitions = [frozenset(range(eng.n)) - {i} for i in range(eng.n)] + [frozenset(range(eng.n))]
    seen: list[float] = []
    got = eng.values(coalitions, on_result=seen.append)
    # every coalition but the full model (a memo hit: captured at construction) is reported once
    assert len(seen) == eng.n and sorted(seen) == sorted(got[:-1])
    again: list[float] = []
    assert eng.values(coalitions, on_result=again.append) == got and again == []  # all memo hits now


# ---- pinned seeds: the sampling estimators' random draws stay in the same order ----------------------
@pytest.mark.parametrize(
    "fn, kw, values, n_evaluations, first_calls",
    [
        (
            permutation_shapley,
            dict(max_permutations=6, seed=3),
            [1 / 6, 0.308333333333, 0.35, 0.4, 0.375, 0.0, -0.1, 0.15],
            42,
            [[6], [6, 7], [2, 6, 7]],
        ),
        (
            permutation_shapley,
            dict(max_permutations=6, seed=3, truncation=0.01, antithetic=False),
            [0.1, 0.45, 0.366666666667, 0.5, 0.058333333333, -0.133333333333, 0.033333333333, 0.275],
            38,
            [[6], [6, 7], [2, 6, 7]],
        ),
        (
            owen_shapley,
            dict(max_rounds=2, n_strata=4, seed=3),
            [0.15, 0.425, 0.475, 0.325, 0.43125, -0.15, -0.05, 0.08125],
            50,
            [[0], [1], [2]],
        ),
    ],
)
def test_sampling_estimators_pinned_for_a_seed(fn, kw, values, n_evaluations, first_calls):
    """A seed fixes the estimate: refactors must keep the RNG call order (pinned from the released code)."""
    game = Counting(SMALL)
    r = fn(game, SMALL_N, **kw)
    assert r.values.tolist() == pytest.approx(values, abs=1e-9)
    assert r.n_evaluations == n_evaluations
    assert [sorted(s) for s in game.calls[:2]] == [[], list(range(SMALL_N))]  # v(empty), v(full) first
    assert [sorted(s) for s in game.calls[2:5]] == first_calls


def test_truncated_permutation_stops_when_its_walks_reach_no_new_coalitions():
    """n=5, budget 200, truncation 0.5: the truncated walks never reach 200 distinct coalitions (nor all 32),
    which used to loop forever; now it stops once it has walked as many orderings as the budget allows."""
    from layerscope.methods.shapley import permutation_shapley

    def value(kept):  # a layer-like game: the model works only when enough players are kept
        return 1.0 if len(kept) >= 3 else 0.0

    res = permutation_shapley(value, 5, budget=200, truncation=0.5, seed=0)
    assert res.config["stop_reason"] == "walks exhausted"
    assert res.n_evaluations < 32 and res.config["n_permutations"] >= 200


# ---- what the standard errors rest on -------------------------------------------------------------------
def test_stderr_dof_is_recorded_per_sample_unit():
    """Antithetic: one sample a pair (pairs - 1 dof); plain: one an ordering; owen: pooled (count - 1)
    over the stratum groups; the deterministic estimators record none."""
    anti = permutation_shapley(SMALL, SMALL_N, max_permutations=10, seed=0)
    plain = permutation_shapley(SMALL, SMALL_N, max_permutations=10, seed=0, antithetic=False)
    assert (anti.extras["stderr_dof"], anti.extras["stderr_samples"]) == (4, 5)
    assert (plain.extras["stderr_dof"], plain.extras["stderr_samples"]) == (9, 10)
    owen = owen_shapley(SMALL, SMALL_N, max_rounds=3, n_strata=4, seed=0)  # 2 groups x 3 samples
    assert owen.extras["stderr_dof"] == 4
    assert owen_shapley(SMALL, SMALL_N, max_rounds=1, n_strata=4, seed=0).extras["stderr_dof"] == 0  # stderr NaN
    assert exact_shapley(SMALL, SMALL_N).extras == {} and "extras" in anti.to_dict()
    assert "stderr_excludes" not in anti.extras and "stderr_zero_from_few_samples" not in anti.extras


def test_t_note_for_few_degrees_of_freedom():
    from layerscope.methods.shapley.common import stderr_notes, t_quantile

    assert t_quantile(4) == pytest.approx(2.776, abs=1e-3) and t_quantile(None) == 1.96
    anti = permutation_shapley(SMALL, SMALL_N, max_permutations=10, seed=0)
    (note,) = stderr_notes(anti.extras, anti.config)
    assert "5 antithetic pairs (4 dof)" in note and "±2.78 se" in note
    many = permutation_shapley(SMALL, SMALL_N, max_permutations=40, seed=0)
    assert stderr_notes(many.extras, many.config) == []  # 19 dof: ±1.96 is close enough
    owen = owen_shapley(SMALL, SMALL_N, max_rounds=2, n_strata=4, seed=0)
    assert "2 rounds over 4 strata (2 dof)" in stderr_notes(owen.extras, owen.config)[0]


def test_truncation_bias_is_flagged_and_its_total_measured():
    # the cornerstone game: walking down, a walk stops once player 0 or 1 is gone, skipping the rest
    w = np.linspace(0.1, 0.8, 10)

    def collapse(S):
        return 0.25 + (sum(w[i] for i in S) if {0, 1} <= S else 0.3 * sum(w[i] for i in S))

    r = permutation_shapley(collapse, 10, max_permutations=40, seed=4, truncation=0.5, truncate_at="empty")
    assert r.extras["stderr_excludes"] == "truncation bias"
    # the skipped remainder is what the values' total misses, walk by walk
    total = r.v_full - r.v_empty
    assert r.values.sum() == pytest.approx(total - r.extras["truncation_remainder"], abs=1e-9)
    assert 0 < r.extras["truncation_remainder"] < 0.5
    from layerscope.methods.shapley.common import stderr_notes

    (note,) = stderr_notes(r.extras, r.config)
    assert "covers sampling only" in note and "truncation at 0.5" in note and "cornerstone" in note
    assert "stderr_excludes" not in permutation_shapley(collapse, 10, max_permutations=40, seed=4).extras
    # truncation=0 never stops a walk: nothing is excluded
    assert "stderr_excludes" not in permutation_shapley(collapse, 10, max_permutations=4, truncation=0.0).extras


def test_zero_stderr_from_few_samples_is_flagged_not_exact():
    # a metric in steps of 0.05 (accuracy on 20 items): two pairs can agree by chance
    def coarse(S):
        return round((0.3 * (0 in S) + 0.2 * (1 in S) + 0.4 * ({0, 1, 2} <= S)) * 20) / 20

    r = permutation_shapley(coarse, 6, max_permutations=4, seed=1)
    exact = exact_shapley(coarse, 6).values
    zero = r.extras["stderr_zero_from_few_samples"]
    assert 1 in zero and r.stderr[1] == 0 and abs(r.values[1] - exact[1]) > 0.05  # "0.4 ± 0" for 0.333
    from layerscope.methods.shapley.common import stderr_notes

    notes = stderr_notes(r.extras, r.config, [f"p{i}" for i in range(6)])
    assert any(n.startswith("stderr 0 for p1, p3") and "not exact" in n for n in notes)
    # many samples: a zero spread is believable (antithetic pairs are exact on additive players)
    w = [0.1, 0.4, -0.2, 0.3, 0.0, 0.25]
    assert "stderr_zero_from_few_samples" not in permutation_shapley(additive(w), 6, max_permutations=40).extras


def test_cli_prints_the_stderr_notes(stories_path, tmp_path, capsys):
    from layerscope.cli.app import main

    args = ["shapley", "--model", str(stories_path), "--task", "loss:demo", "--estimator", "permutation"]
    args += ["--budget", "30", "--truncation", "0.05", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    got = capsys.readouterr()
    notes = [line for line in got.err.splitlines() if line.startswith("note: ")]  # on stderr, with the run's notes
    assert "note: " not in got.out
    assert any("dof): a 95% interval is ±" in n for n in notes)
    assert any("truncation at 0.05 biases the values" in n for n in notes)
    saved = json.loads((tmp_path / "importance.json").read_text())["extras"]
    assert saved["stderr_excludes"] == "truncation bias" and saved["stderr_dof"] >= 0


def test_a_failing_shapley_rerun_leaves_the_earlier_result(stories_path, tmp_path, capsys, monkeypatch):
    """As ablate (they share build_engine and write_result): a rerun killed once it has started leaves
    the earlier importance.json and bar.png as they were; one that finishes replaces them, with a note."""
    import layerscope.methods.shapley as shapley_api
    from layerscope.cli.app import main

    class Killed(Exception):
        pass

    args = ["shapley", "--model", str(stories_path), "--task", "loss:demo", "--limit", "4", "--max-length", "64"]
    args += ["--granularity", "block", "--estimator", "proximity", "--no-progress", "--out", str(tmp_path)]
    assert main(args) == 0
    before = {name: (tmp_path / name).read_bytes() for name in ("importance.json", "bar.png")}
    capsys.readouterr()
    real = shapley_api.shapley_importance

    def killed(*a, **k):
        raise Killed

    monkeypatch.setattr(shapley_api, "shapley_importance", killed)
    with pytest.raises(Killed):
        main(args)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert "earlier result in" in capsys.readouterr().err  # the log note: that result stays

    monkeypatch.setattr(shapley_api, "shapley_importance", real)
    assert main(args) == 0
    assert f"note: replaced the earlier result in {tmp_path} (importance.json, bar.png) with this run's\n" in (
        capsys.readouterr().err
    )


def test_a_budget_below_one_sample_is_refused_before_any_evaluation(stories_path, tmp_path, capsys, monkeypatch):
    """The player count is known once the layer map is built: a --budget too small for one antithetic
    pair (or one Owen round, or exact over too many players) is refused then, before the model is scored
    and before OUT/coalitions.jsonl is replaced."""
    from layerscope.cli.app import main
    from layerscope.engine import coalitions

    def no_engine(*a, **k):
        raise AssertionError("the engine was built")

    monkeypatch.setattr(coalitions, "CoalitionEngine", no_engine)
    base = ["shapley", "--model", str(stories_path), "--task", "loss:demo", "--limit", "4", "--max-length", "64"]
    base += ["--granularity", "block", "--no-progress", "--out", str(tmp_path / "o")]
    cases = [
        (["--estimator", "permutation", "--budget", "9"], "budget=9 is too small for one antithetic pair"),
        (["--estimator", "permutation", "--budget", "2", "--truncation", "0.1"], "too small for one truncated walk"),
        (["--estimator", "owen", "--budget", "13"], "owen: budget=13 is below one round"),
        (["--estimator", "exact", "--granularity", "module"], "exact Shapley needs 2**35"),
    ]
    for extra, said in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert said in err and err.count("error:") == 1, err
    assert not (tmp_path / "o" / "coalitions.jsonl").exists()


def test_check_players_matches_what_the_estimators_refuse():
    from layerscope.methods.shapley import check_players, shapley

    def game(s):
        return float(len(s))

    for n in (2, 3, 5):
        need = 2 * (n - 1) + 2
        check_players("permutation", n, budget=need)
        res = shapley(game, n, "permutation", budget=need)
        assert res.n_evaluations <= need
        with pytest.raises(ConfigError, match=f"budget={need - 1} is too small for one antithetic pair"):
            check_players("permutation", n, budget=need - 1)
        with pytest.raises(ConfigError, match="too small for one antithetic pair"):
            shapley(game, n, "permutation", budget=need - 1)  # refused before v(empty) is evaluated
    check_players("permutation", 5, budget=9, antithetic=False)  # one ordering: 4 + 2
    check_players("proximity", 64, max_window=3)  # nothing to check from the count
    with pytest.raises(ConfigError, match="n=15 exceeds max_players=14"):
        check_players("exact", 15)
