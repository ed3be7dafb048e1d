"""Shapley values of a coalition engine's players as a :class:`LayerImportance`: the estimator's
values and error bars plus the baseline, evaluation count, running trace and engine description."""

from __future__ import annotations

import inspect
import time
from typing import TYPE_CHECKING, Any

from layerscope.core.errors import ConfigError, check_count
from layerscope.core.importance import LayerImportance, cpu_threads, model_info
from layerscope.methods.shapley.common import ShapleyResult

if TYPE_CHECKING:
    from layerscope.core.data import SFTData

TRACE_KEPT = 200  # trace steps kept in the result; a long run's full trace would dwarf the scores


def _takes_seed(estimator: str) -> bool:
    from layerscope.methods.shapley import ESTIMATORS  # the package imports this module: import at call time

    fn = ESTIMATORS.get(estimator)
    return fn is not None and "seed" in inspect.signature(fn).parameters


def _baseline(engine, res: ShapleyResult) -> dict[str, float]:
    """v(full), chance and (when the estimator measured it) v(empty)."""
    # the engine is torch-backed; importing ablation here keeps the estimators importable without torch
    from layerscope.methods.ablation import chance_value

    full = engine.full()  # every estimator evaluated the full model already: a memo hit
    baseline = {"full": float(full.value), "chance": chance_value(engine, full.metrics)}
    if res.v_empty is not None:
        baseline["empty"] = float(res.v_empty)
    return baseline


# what shapley_importance reads of its engine: an object without them is not a CoalitionEngine
_ENGINE_ATTRIBUTES = ("n", "players", "granularity", "model", "layer_map", "evaluator", "full", "stats", "describe")


def _check_engine(engine) -> None:
    """Refuse anything but a coalition engine in one line (a bare model would fail deep inside with
    "no attribute 'n'"). A model is not wrapped here as ``ablate`` does it: the estimator's options
    already fill the keyword arguments, and the engine's own (``cache_mb``, ...) would mix with them."""
    if not all(hasattr(engine, a) for a in _ENGINE_ATTRIBUTES):
        raise ConfigError(
            f"shapley_importance: pass a CoalitionEngine, not a {type(engine).__name__}: build one with "
            "CoalitionEngine(model, build_layer_map(model), evaluator, granularity)"
        )


def shapley_importance(
    engine,
    estimator: str,
    *,
    model_name: str = "model",
    data: dict | SFTData | None = None,
    seed: int | None = None,
    progress: bool = False,
    **estimator_options: Any,
) -> LayerImportance:
    """Run the estimator named ``estimator`` (see :func:`shapley`) on a :class:`CoalitionEngine`.

    ``seed`` goes to the estimators that sample (permutation, owen); the result records the seed they
    used (their default, 0, when none is given), or the one given to an estimator that takes none.
    ``data`` is described as ``ablate`` describes it (default: what the engine's evaluator knows).
    ``estimator_options`` are that estimator's keyword options (``budget``, ``max_window``, ...);
    ``truncation`` without ``truncate_at`` truncates near the empty model, as ``layerscope shapley`` does.
    The method is ``shapley-<estimator>``; ``timings["seconds"]`` counts the estimator alone.
    """
    # the package imports this module, and ablation is torch-backed like the engine: both imported when used
    from layerscope.methods.ablation import describe_data
    from layerscope.methods.shapley import shapley

    _check_engine(engine)
    described = describe_data(data, engine.evaluator)  # a bad data= fails before the estimator runs
    if seed is not None and _takes_seed(estimator):
        check_count(seed, "seed", 0)  # numpy's own error for a float or a string names no argument
        estimator_options["seed"] = int(seed)
    if estimator_options.get("truncation") is not None and estimator_options.get("truncate_at") is None:
        # a removal walk ends at the empty model, whose value the engine knows: truncate near it, as the
        # CLI does (docs/shapley.md); the bare estimator's "full" stays for games in general
        estimator_options["truncate_at"] = "empty"
    t0 = time.perf_counter()
    res = shapley(engine, engine.n, estimator, progress=progress, **estimator_options)
    seconds = time.perf_counter() - t0
    return LayerImportance(
        method=f"shapley-{estimator}",
        granularity=engine.granularity,
        players=list(engine.players),
        scores=[float(v) for v in res.values],
        model=model_info(engine.model, engine.layer_map, model_name),
        data=described,
        method_config={"estimator": estimator, **res.config},
        stderr=None if res.stderr is None else [float(x) for x in res.stderr],
        n_evaluations=int(res.n_evaluations),
        baseline=_baseline(engine, res),
        seed=res.config.get("seed", seed),  # a sampling estimator's own default when no seed was given
        timings={"seconds": seconds, "capture_seconds": engine.stats.capture_seconds, "threads": cpu_threads()},
        extras={"trace": res.trace[-TRACE_KEPT:], "engine": engine.describe(), **res.extras},
    )
