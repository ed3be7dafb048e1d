"""Single-player ablation: remove one player at a time and measure how much the value drops.

For every player i, score_i = v(N) - v(N \\ {i}): the drop of the evaluator's headline value
(acc_norm / acc for multiple choice, -loss for held-out loss) when i alone is removed. Higher
= more important. The removed model's value per player is kept in ``extras["removed_value"]``.

**Cornerstones** (Zhang et al.): players whose removal alone brings the value down to about
random guessing. Player i is one when

    v(N \\ {i}) <= chance + max(abs_margin, rel_margin * (v(N) - chance))

with defaults ``abs_margin = 0.02`` (two accuracy points) and ``rel_margin = 0.10`` (10% of the
full model's gap above chance), so a removal that keeps less than ~10% of what the model knows
beyond guessing counts. Values below chance count too. When the full model itself is within
the margin of chance there are no cornerstones (nothing to collapse). For loss evaluation "chance" is the value
of a uniform next-token distribution, -ln(vocab size).
"""

from __future__ import annotations

import difflib
import inspect
import math
import time
from typing import Any

import numpy as np

from layerscope.core.data import SFTData
from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance, cpu_threads, model_info
from layerscope.engine.coalitions import CoalitionEngine, player_kinds
from layerscope.scoring.sources import evaluator_info, sft_data_info

DEFAULT_ABS_MARGIN = 0.02
DEFAULT_REL_MARGIN = 0.10


def chance_value(engine: CoalitionEngine, metrics: dict[str, float]) -> float:
    """Value of random guessing: the task's chance accuracy, or -ln(vocab) for a loss evaluator."""
    if "chance" in metrics:
        return float(metrics["chance"])
    head = engine.model.get_output_embeddings() if hasattr(engine.model, "get_output_embeddings") else None
    vocab = getattr(head, "out_features", None) or getattr(getattr(engine.model, "config", None), "vocab_size", None)
    return -math.log(vocab) if vocab else float("nan")


def chance_margin(
    full: float, chance: float, abs_margin: float = DEFAULT_ABS_MARGIN, rel_margin: float = DEFAULT_REL_MARGIN
) -> float:
    """How close to chance counts as "at chance": max(abs_margin, rel_margin * (full - chance))."""
    check_margins(abs_margin, rel_margin)
    return max(abs_margin, rel_margin * max(full - chance, 0.0))


def check_margins(abs_margin: float, rel_margin: float) -> None:
    for name, v in (("abs_margin", abs_margin), ("rel_margin", rel_margin)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ConfigError(f"{name} must be a number >= 0 (got {v!r})")


def at_chance(
    full: float, chance: float, abs_margin: float = DEFAULT_ABS_MARGIN, rel_margin: float = DEFAULT_REL_MARGIN
) -> bool:
    """True when the full model itself is within the cornerstone margin of chance on the task: then
    nothing can collapse to chance, and drops from removing players mostly measure noise. False when
    chance is unknown (NaN)."""
    margin = chance_margin(full, chance, abs_margin, rel_margin)
    return math.isfinite(chance) and full <= chance + margin


def at_chance_note(
    full: float, chance: float, abs_margin: float = DEFAULT_ABS_MARGIN, rel_margin: float = DEFAULT_REL_MARGIN
) -> str | None:
    """One line for reports when the full model is at chance (see :func:`at_chance`), else None."""
    if not at_chance(full, chance, abs_margin, rel_margin):
        return None
    margin = chance_margin(full, chance, abs_margin, rel_margin)
    where = f"below chance ({chance:.4f})" if full < chance else f"within {margin:.4g} above chance ({chance:.4f})"
    return (
        f"note: the full model scores {full:.4f}, {where}: it is at chance on "
        "this task, so the layer scores below mean little (try an easier task or a stronger model)"
    )


def cornerstones(
    removed_values: list[float],
    full: float,
    chance: float,
    abs_margin: float = DEFAULT_ABS_MARGIN,
    rel_margin: float = DEFAULT_REL_MARGIN,
) -> list[int]:
    """Indices of players whose removal alone leaves the value within the margin of chance (see module doc)."""
    margin = chance_margin(full, chance, abs_margin, rel_margin)  # validates the margins
    if not math.isfinite(chance) or at_chance(full, chance, abs_margin, rel_margin):
        return []  # chance unknown, or the full model is at chance already: "collapses to chance" means nothing
    return [i for i, v in enumerate(removed_values) if v <= chance + margin]


def _paired_stderr(full_pred: list[int] | None, pred: list[int] | None, golds: list[int] | None) -> float:
    """Standard error of the accuracy drop, paired over items (same items in both models)."""
    if full_pred is None or pred is None or golds is None or len(golds) < 2:
        return float("nan")
    d = np.array([(a == g) - (b == g) for a, b, g in zip(full_pred, pred, golds)], dtype=float)
    return float(d.std(ddof=1) / math.sqrt(len(d)))


def ablate(
    engine_or_model,
    evaluator=None,
    granularity: str | None = None,
    *,
    layer_map=None,
    model_name: str = "model",
    data: dict | SFTData | None = None,
    abs_margin: float = DEFAULT_ABS_MARGIN,
    rel_margin: float = DEFAULT_REL_MARGIN,
    progress: bool = False,
    seed: int | None = None,
    **engine_options,
) -> LayerImportance:
    """Remove each player alone; score = v(N) - v(N \\ {i}). Returns a :class:`LayerImportance`.

    Pass a :class:`CoalitionEngine` (its granularity is used; another ``granularity`` is refused), or a
    model and an evaluator (an engine is built at ``granularity``, default ``"sublayer"``, with
    ``engine_options``: ``cache_mb``, ``uncached``, ...). ``data``: the description recorded (see
    :func:`describe_data`; default: what the evaluator knows of its data).
    """
    check_margins(abs_margin, rel_margin)  # before the n + 1 evaluations, not after them
    engine = _engine_for(engine_or_model, evaluator, granularity, layer_map, progress, engine_options)
    described = describe_data(data, engine.evaluator)  # a bad data= fails before the evaluations too
    t0 = time.perf_counter()
    n = engine.n
    everyone = frozenset(range(n))
    results = engine.results([everyone] + [everyone - {i} for i in range(n)], progress=progress)
    seconds = time.perf_counter() - t0
    full, rem = results[0], results[1:]
    v_full = float(full.value)
    chance = chance_value(engine, full.metrics)
    removed_values = [float(r.value) for r in rem]
    cs = cornerstones(removed_values, v_full, chance, abs_margin, rel_margin)
    golds = getattr(engine.evaluator, "golds", None)
    stderr = [_paired_stderr(full.predictions, r.predictions, golds) for r in rem]
    return LayerImportance(
        method="ablation",
        granularity=engine.granularity,
        players=list(engine.players),
        scores=[v_full - v for v in removed_values],
        model=model_info(engine.model, engine.layer_map, model_name),
        data=described,
        method_config={
            "score": "v(N) - v(N without i)",
            "removal": "zero the player's output",
            "cornerstone_rule": {"abs_margin": abs_margin, "rel_margin": rel_margin},
            "engine_mode": engine.mode,
        },
        stderr=stderr if golds is not None and full.predictions is not None else None,
        n_evaluations=n + 1,
        baseline={"full": v_full, "chance": chance},
        seed=seed,
        timings={"seconds": seconds, "capture_seconds": engine.stats.capture_seconds, "threads": cpu_threads()},
        extras=_ablation_extras(engine, full, rem, removed_values, cs),
    )


def describe_data(data: dict | SFTData | None, evaluator) -> dict[str, Any]:
    """The ``data`` field of a result: a dict as given; SFT data (``load_sft``'s, what a
    ``LossEvaluator`` was built from) as ``layerscope ablate --task loss:FILE`` records it, with its
    source and fingerprint; None: what the evaluator knows (an MC task's source and fingerprint; a
    ``LossEvaluator`` keeps only tokenized examples, so its counts alone)."""
    if data is None:
        return evaluator_info(evaluator)
    if isinstance(data, SFTData):
        return sft_data_info(data)  # as evaluator_for describes it: API and CLI results read alike
    if not isinstance(data, dict):
        raise ConfigError(f"data= must be a dict, SFT data (load_sft) or None, got a {type(data).__name__}")
    return data


# the keywords ablate passes to CoalitionEngine itself (the engine's progress bar is ablate's own progress=)
_NOT_ENGINE_OPTIONS = ("self", "model", "layer_map", "evaluator", "granularity", "progress")


def engine_option_names() -> list[str]:
    """The ``CoalitionEngine`` keywords ``ablate`` forwards (``cache_mb``, ``uncached``, ...)."""
    params = inspect.signature(CoalitionEngine.__init__).parameters
    return [p for p in params if p not in _NOT_ENGINE_OPTIONS]


def _engine_for(
    engine_or_model, evaluator, granularity: str | None, layer_map, progress: bool, engine_options: dict
) -> CoalitionEngine:
    """The engine to ablate with: the one given, or one built around a model and an evaluator. What
    would be silently ignored is refused: options for an engine already built, another granularity."""
    if isinstance(engine_or_model, CoalitionEngine):
        return _given_engine(engine_or_model, evaluator, granularity, layer_map, engine_options)
    if evaluator is None:
        raise ConfigError("ablate: a model needs an evaluator")
    known = engine_option_names()
    unknown = [k for k in engine_options if k not in known]
    if unknown:  # CoalitionEngine's TypeError would not say which keywords there are
        near = difflib.get_close_matches(unknown[0], known, n=1)
        raise ConfigError(
            f"ablate: unknown keyword{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
            + (f" (did you mean {near[0]}?)" if near else "")
            + f"; ablate takes the engine options {', '.join(known)}"
        )
    from layerscope.core.layermap import build_layer_map

    return CoalitionEngine(
        engine_or_model,
        layer_map or build_layer_map(engine_or_model),
        evaluator,
        granularity or "sublayer",
        progress=progress,
        **engine_options,
    )


def _given_engine(
    engine: CoalitionEngine, evaluator, granularity: str | None, layer_map, engine_options: dict
) -> CoalitionEngine:
    """``engine`` itself, once nothing given beside it contradicts it or would go unused."""
    if evaluator is not None and evaluator is not engine.evaluator:
        raise ConfigError(
            "ablate: pass either an engine or a model and an evaluator, not an engine and another evaluator"
        )
    if granularity is not None and granularity != engine.granularity:
        raise ConfigError(
            f"ablate: granularity={granularity!r}, but the engine was built for {engine.granularity!r} "
            f"players; build a CoalitionEngine at {granularity!r} or leave granularity= out"
        )
    if layer_map is not None and layer_map is not engine.layer_map:
        raise ConfigError("ablate: layer_map= applies when ablate builds the engine; the engine has its own")
    if engine_options:
        raise ConfigError(
            f"ablate: {', '.join(f'{k}=' for k in engine_options)} set{'s' if len(engine_options) == 1 else ''} "
            "up an engine ablate builds from a model; the engine given is built already"
        )
    return engine


def _ablation_extras(engine: CoalitionEngine, full, rem: list, removed_values: list[float], cs: list[int]) -> dict:
    """Per-player details kept beside the scores: removed values and metrics, cornerstones, changed answers."""
    extras: dict[str, Any] = {
        "removed_value": removed_values,
        "removed_metrics": [dict(r.metrics) for r in rem],
        "full_metrics": dict(full.metrics),
        "cornerstones": [engine.players[i] for i in cs],
        "kinds": player_kinds(engine.layer_map, engine.granularity),
        "engine": engine.describe(),
    }
    if full.predictions is not None:
        extras["changed_predictions"] = [
            float(np.mean([a != b for a, b in zip(full.predictions, r.predictions)])) if r.predictions else float("nan")
            for r in rem
        ]
    return extras
