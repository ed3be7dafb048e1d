"""Shapley values of a coalition engine's players as a :class:`LayerImportance`: the estimator's
values and error bars plus the baseline, evaluation count, running trace and engine description."""

from __future__ import annotations

import inspect
import time
from typing import Any

from layerscope.core.importance import LayerImportance, cpu_threads, model_info
from layerscope.methods.shapley.common import ShapleyResult

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


def shapley_importance(
    engine,
    estimator: str,
    *,
    model_name: str,
    data: dict,
    seed: int | None = None,
    progress: bool = False,
    **estimator_options: Any,
) -> LayerImportance:
    """Run the estimator named ``estimator`` (see :func:`shapley`) on a :class:`CoalitionEngine`.

    ``seed`` goes to the estimators that sample (permutation, owen) and is recorded in the result;
    ``estimator_options`` are that estimator's keyword options (``budget``, ``max_window``, ...).
    The method is ``shapley-<estimator>``; ``timings["seconds"]`` counts the estimator alone.
    """
    from layerscope.methods.shapley import shapley  # the package imports this module: import at call time

    if seed is not None and _takes_seed(estimator):
        estimator_options["seed"] = seed
    t0 = time.perf_counter()
    res = shapley(engine, engine.n, estimator, progress=progress, **estimator_options)
    seconds = time.perf_counter() - t0
    return LayerImportance(
        method=f"shapley-{estimator}",
        granularity=engine.granularity,
        players=list(engine.players),
        scores=[float(v) for v in res.values],
        model=model_info(engine.model, engine.layer_map, model_name),
        data=data,
        method_config={"estimator": estimator, **res.config},
        stderr=None if res.stderr is None else [float(x) for x in res.stderr],
        n_evaluations=int(res.n_evaluations),
        baseline=_baseline(engine, res),
        seed=seed,
        timings={"seconds": seconds, "capture_seconds": engine.stats.capture_seconds, "threads": cpu_threads()},
        extras={"trace": res.trace[-TRACE_KEPT:], "engine": engine.describe(), **res.extras},
    )
