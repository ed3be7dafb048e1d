"""Shared pieces of the Shapley estimators: the result type, memoised access to the game,
progress reporting, argument checks and running statistics."""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from layerscope.core.errors import ConfigError, check_count
from layerscope.core.player_names import listed

Value = Callable[[frozenset], float]

# Why a sampling estimator stops once its memo holds every coalition: it then returns the exact values
# (``enumeration.exact_from_memo``), and the string is what results have always recorded for it.
ALL_EVALUATED = "all coalitions evaluated"


@dataclass
class ShapleyResult:
    values: np.ndarray  # phi_i for players 0..n-1
    stderr: np.ndarray | None  # Monte Carlo standard error; None for deterministic estimators
    n_evaluations: int  # distinct coalitions evaluated
    estimator: str
    config: dict[str, Any]
    trace: list[dict[str, Any]] = field(default_factory=list)  # running diagnostics, per step
    v_full: float | None = None  # value(all players kept), when evaluated
    v_empty: float | None = None  # value(no player kept), when evaluated
    extras: dict[str, Any] = field(default_factory=dict)  # what the stderr rests on and leaves out (stderr_facts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (numpy arrays become lists; an undefined stderr becomes None)."""
        return {
            "values": [float(x) for x in self.values],
            "stderr": None if self.stderr is None else [float(x) if math.isfinite(x) else None for x in self.stderr],
            "n_evaluations": int(self.n_evaluations),
            "estimator": self.estimator,
            "config": dict(self.config),
            "trace": list(self.trace),
            "v_full": self.v_full,
            "v_empty": self.v_empty,
            "extras": dict(self.extras),
        }


# ---- memoised access to the game --------------------------------------------------------------
class _Memo:
    """Coalitions are kept as int bitmasks (a frozenset per cached coalition would cost ~1 KB
    each for 60 players; an int costs ~40 bytes) and converted only when calling the game."""

    def __init__(self, value: Value, n: int) -> None:
        if not callable(value):
            raise ConfigError(f"value must be callable (got {type(value).__name__})")
        self.value = value
        self.n = n
        self.cache: dict[int, float] = {}
        many = getattr(value, "values", None)  # the optional batch hook (see many)
        self._many = many if callable(many) else None
        self._many_reports = self._many is not None and _takes_keyword(self._many, "on_result")
        self.on_new: Callable[[], None] | None = None  # called once per newly evaluated coalition (progress)

    @property
    def n_evaluations(self) -> int:
        return len(self.cache)

    @property
    def saturated(self) -> bool:
        """Every one of the 2**n coalitions is known: more samples cost nothing, so a budget can
        never be reached (only tiny games get here)."""
        return len(self.cache) >= (1 << self.n)

    def to_set(self, mask: int) -> frozenset:
        return frozenset(i for i in range(self.n) if (mask >> i) & 1)

    def missing(self, masks: Sequence[int]) -> int:
        """How many distinct coalitions among ``masks`` would cost a new evaluation."""
        return len({m for m in masks if m not in self.cache})

    def _store(self, mask: int, v: Any) -> float:
        v = float(v)
        if not math.isfinite(v):
            raise ConfigError(f"value function returned {v} for kept players {sorted(self.to_set(mask))}")
        self.cache[mask] = v
        return v

    def __call__(self, mask: int) -> float:
        v = self.cache.get(mask)
        if v is None:
            v = self._store(mask, self.value(self.to_set(mask)))
            self._tick()
        return v

    def _tick(self, *_: Any) -> None:
        if self.on_new is not None:
            self.on_new()

    def many(self, masks: Sequence[int]) -> np.ndarray:
        """Values of many coalitions (kept-player masks). The missing ones go to the value's batch
        hook ``values(list_of_frozensets) -> sequence of floats`` in one call when it has one (so an
        engine can order them to reuse work), else one call each."""
        todo = list(dict.fromkeys(m for m in masks if m not in self.cache))
        if todo:
            if self._many is not None:
                # a hook that reports each finished coalition moves the progress bar while the batch runs
                kw = {"on_result": self._tick} if self._many_reports and self.on_new is not None else {}
                got = list(self._many([self.to_set(m) for m in todo], **kw))
                if len(got) != len(todo):
                    raise ConfigError(f"value.values returned {len(got)} values for {len(todo)} coalitions")
                for m, v in zip(todo, got):
                    self._store(m, v)
            else:
                for m in todo:
                    self._store(m, self.value(self.to_set(m)))
                    self._tick()
        return np.array([self.cache[m] for m in masks], dtype=float)


# ---- progress -----------------------------------------------------------------------------------
class _Reporter:
    """``progress=True`` draws a tqdm bar on stderr; a callable receives a :class:`ShapleyResult`
    snapshot after every step; ``False``/``None`` does nothing.

    With ``memo`` the bar advances with every coalition evaluated, also inside one long batch (an
    engine computing all proximity windows at once), its total never exceeds the ``2**n``
    coalitions there are, and its text names the leading player (the value object's ``players``
    when it has them). :meth:`stopped` puts the stopping reason on the bar's last line."""

    def __init__(
        self,
        progress: bool | Callable[[ShapleyResult], None] | None,
        total: int | None,
        desc: str,
        memo: _Memo | None = None,
    ):
        self.callback = progress if callable(progress) else None
        self.bar = None
        self.last = 0
        self.memo = memo
        if progress is True:
            from tqdm import tqdm

            if memo is not None and total is not None:
                total = min(total, 1 << memo.n)  # a budget above 2**n is never reached
            self.bar = tqdm(total=total, desc=desc, unit="eval", file=sys.stderr, dynamic_ncols=True)
            if memo is not None:
                memo.on_new = self.tick

    def tick(self) -> None:
        """One more coalition evaluated."""
        if self.bar is not None:
            self.bar.update(1)
            self.last += 1

    def step(self, n_evaluations: int, snapshot: Callable[[], ShapleyResult]) -> None:
        if self.callback is None and self.bar is None:
            return
        snap = snapshot()
        if self.callback is not None:
            self.callback(snap)
        if self.bar is not None:
            self.bar.update(n_evaluations - self.last)  # coalitions the ticks did not see (resumed from a log)
            self.last = n_evaluations
            if snap.stderr is not None:  # a running estimate; the deterministic estimators have none until the end
                self.bar.set_postfix_str(leader_text(snap, self._names()), refresh=False)

    def stopped(self, reason: str, config: dict[str, Any]) -> None:
        """Say on the bar why the estimator stopped (see :func:`stop_text`)."""
        if self.bar is None:
            return
        if reason == ALL_EVALUATED:
            self.bar.total = self.last  # nothing is left to evaluate: the bar ends full
        self.bar.set_postfix_str("stopped: " + stop_text(reason, config, self.last, brief=True), refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.memo is not None:
            self.memo.on_new = None

    def _names(self) -> Sequence[str] | None:
        names = getattr(self.memo.value, "players", None) if self.memo is not None else None
        return names if isinstance(names, Sequence) and len(names) == self.memo.n else None


def leader_text(snap: ShapleyResult, names: Sequence[str] | None = None) -> str:
    """The leading player of a running estimate, with its standard error and the largest one:
    "top: layers.9.mlp 2.9 ± 0.1 (largest stderr 0.3)"."""
    i = int(np.argmax(snap.values))  # the first of equal maxima, as the stable ranking has it
    name = str(names[i]) if names is not None else f"player {i}"
    text = f"top: {name} {snap.values[i]:.3g}"
    se = snap.stderr
    if se is not None and math.isfinite(se[i]):
        text += f" ± {se[i]:.2g}"
    if se is not None and np.isfinite(se).any():
        text += f" (largest stderr {np.nanmax(se):.2g})"
    return text


def stop_text(reason: str, config: dict[str, Any], n_evaluations: int, brief: bool = False) -> str:
    """Why a sampling estimator stopped, in words (``config["stop_reason"]`` and its settings);
    ``brief``: a few words, for the end of a progress bar."""
    if reason == ALL_EVALUATED:
        if brief:  # the bar of a run going on now, which returns the exact values
            return f"all {n_evaluations} coalitions evaluated: values exact"
        if config.get("values_exact"):  # results saved before saturation gave exact values lack it
            return (
                f"every one of the {n_evaluations} coalitions was evaluated, so the values are exact, "
                "as the 'exact' estimator computes them from these same evaluations (no stderr: nothing was estimated)"
            )
        return (
            f"every one of the {n_evaluations} coalitions was evaluated, so more samples would cost "
            "nothing (the 'exact' estimator turns these same evaluations into exact values)"
        )
    if reason == "budget":
        if brief:
            return f"budget of {config.get('budget')} evaluations reached"
        budget = config.get("budget")
        if budget is not None and n_evaluations > budget:  # truncated walks: checked before each sample
            return (
                f"the budget of {budget} evaluations was reached; the last sample's truncated walks, started "
                f"within it, went past it ({n_evaluations} used)"
            )
        return f"the budget of {budget} evaluations was reached ({n_evaluations} used)"
    if reason == "target_stderr":
        return f"every standard error is at most the target {config.get('target_stderr'):g}"
    if reason == "max_permutations":
        return f"{config.get('max_permutations')} permutations done (max_permutations)"
    if reason == "walks exhausted":
        if brief:
            return "truncated walks reach no new coalitions"
        return (
            f"{config.get('budget')} orderings were walked and truncation kept them from reaching new coalitions "
            f"({n_evaluations} of the budget's {config.get('budget')} evaluations used): lower --truncation or "
            "the budget"
        )
    if reason == "max_rounds":
        return f"{config.get('max_rounds')} rounds over the strata done (max_rounds)"
    return reason or "done"


# ---- what a standard error rests on -------------------------------------------------------------
FEW_SAMPLES = 10  # below this many samples a zero sample variance says little, and t-quantiles are wide
ZERO_STDERR = 1e-12  # relative to |v(full) - v(empty)|: a stderr this small is zero up to rounding


def stderr_facts(se: np.ndarray, n_samples: int, dof: float, scale: float) -> dict[str, Any]:
    """The degrees of freedom behind ``se`` and the players whose stderr is zero only because a few
    samples happened to agree (quantised metrics do this often): their "0 ± 0" is not exact."""
    facts: dict[str, Any] = {"stderr_dof": float(dof), "stderr_samples": int(n_samples)}
    if dof + 1 < FEW_SAMPLES:
        zero = np.flatnonzero(np.isfinite(se) & (se <= ZERO_STDERR * max(abs(scale), 1e-300)))
        if zero.size:
            facts["stderr_zero_from_few_samples"] = [int(i) for i in zero]
    return facts


def t_quantile(dof: float | None) -> float:
    """The two-sided 95% Student-t factor for ``dof`` degrees of freedom (1.96 when unknown or large)."""
    if dof is None or not math.isfinite(dof):
        return 1.96
    if dof <= 0:
        return float("nan")  # one sample: no spread, no interval
    from scipy.stats import t  # scipy is slow to import; only reports need it

    return float(t.ppf(0.975, dof))


def stderr_notes(extras: dict[str, Any], config: dict[str, Any], names: Sequence[str] | None = None) -> list[str]:
    """Lines saying how far a sampled result's error bars can be trusted: a t-based 95% interval
    when the stderr rests on few degrees of freedom, what truncation leaves out of it, and the
    players whose zero stderr comes from too few samples."""
    notes = []
    dof = extras.get("stderr_dof")
    if dof is not None and dof < FEW_SAMPLES:
        q = t_quantile(dof)
        what = f"stderr from {_samples_text(extras, config)} ({dof:g} dof)"
        if math.isfinite(q):
            notes.append(f"{what}: a 95% interval is ±{q:.2f} se (Student t; ±1.96 se would cover too little)")
        else:
            notes.append(f"{what}: no error bars (one sample has no spread)")
    if extras.get("stderr_excludes"):
        tol, at = config.get("truncation"), config.get("truncate_at")
        skipped = (
            "those still kept once the model has collapsed, such as a cornerstone layer"
            if at == "empty"
            else "those still to join once the value is near v(full)"
        )
        text = (
            f"the stderr covers sampling only: truncation at {tol:g} biases the values (marginals after a walk "
            f"stops count as zero), most for the players those walks skip: {skipped}"
        )
        rem = extras.get("truncation_remainder")
        if rem is not None:  # the total of the skipped marginals, rigorous; its split among players is unknown
            text += f" (a walk skipped {rem:.3g} of value on average, in the metric's units)"
        notes.append(text)
    zero = extras.get("stderr_zero_from_few_samples")
    if zero:
        who = [str(names[i]) if names is not None else f"player {i}" for i in zero]
        notes.append(
            f"stderr 0 for {listed(who, 5)}: their samples agreed exactly, as few samples "
            f"({extras.get('stderr_samples')}) can (more so with a coarse metric): its error is unknown, not zero; "
            "the value is not exact"
        )
    return notes


def _samples_text(extras: dict[str, Any], config: dict[str, Any]) -> str:
    if "n_strata" in config:  # owen (n_rounds is known once the run ends)
        return f"{config.get('n_rounds', '?')} rounds over {config['n_strata']} strata"
    k = extras.get("stderr_samples")
    what = "antithetic pair" if config.get("antithetic") else "permutation"
    return f"{k} {what}" + ("" if k == 1 else "s")


def _takes_keyword(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


# ---- argument checks ---------------------------------------------------------------------------
def _check_int(name: str, x: Any, minimum: int, allow_none: bool = False) -> None:
    if x is None and allow_none:
        return
    check_count(x, name, minimum)


def _check_positive(name: str, x: Any, allow_zero: bool = False) -> None:
    if x is None:
        return
    ok = isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(x)
    if not ok or x < 0 or (x == 0 and not allow_zero):
        raise ConfigError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number (got {x!r})")


def _check_stopping(name: str, budget: Any, target_stderr: Any, max_count: Any, max_name: str) -> None:
    _check_int("budget", budget, 1, allow_none=True)
    _check_positive("target_stderr", target_stderr)
    _check_int(max_name, max_count, 1, allow_none=True)
    if budget is None and target_stderr is None and max_count is None:
        raise ConfigError(f"{name}: give a stopping rule: budget, target_stderr or {max_name}")


def _check_min_samples(name: str, minimum: Any, target_stderr: Any) -> None:
    _check_int(name, minimum, 1, allow_none=True)
    if minimum is not None and target_stderr is None:
        # the minimum only delays the stderr test; without a target it would be silently ignored
        raise ConfigError(f"{name}={minimum} applies with target_stderr=X; without it it has no effect")


def _full(n: int) -> int:
    return (1 << n) - 1


# ---- running mean / variance -------------------------------------------------------------------
class _Welford:
    """Per-player running mean and variance of i.i.d. sample vectors."""

    def __init__(self, n: int) -> None:
        self.count = 0
        self.mean = np.zeros(n)
        self.m2 = np.zeros(n)

    def add(self, x: np.ndarray) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def var_of_mean(self) -> np.ndarray:
        if self.count < 2:
            return np.full_like(self.mean, np.nan)
        return self.m2 / (self.count - 1) / self.count


def _max_or_nan(x: np.ndarray) -> float:
    return float(np.max(x)) if np.all(np.isfinite(x)) else float("nan")


def _max_or_none(x: np.ndarray) -> float | None:
    """For traces: JSON has no NaN, and None compares equal to itself."""
    m = _max_or_nan(x)
    return None if math.isnan(m) else m
