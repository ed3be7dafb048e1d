"""From a method name or a saved ranking to the players to remove (what ``layerscope prune`` runs).

Methods that need a value function (``ablation``, ``shapley``, ``greedy``) take a coalition
engine; the representation methods (``block-influence``, ``angular``) take token sequences;
``last`` and ``random`` need neither. ILA trains adapters, which is a run of its own: compute it
with ``layerscope ila`` and pass the result as a ranking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance
from layerscope.core.layermap import LayerMap
from layerscope.core.ties import tie_warning
from layerscope.pruning import rankings as rk

METHODS = ("block-influence", "angular", "ablation", "shapley", "ila", "greedy", "last", "random")
NEEDS_ENGINE = ("ablation", "shapley", "greedy")
NEEDS_SEQUENCES = ("block-influence", "angular")
BLOCK_ONLY = ("block-influence", "angular")


@dataclass
class Choice:
    players: list[int]  # indices at the pruning granularity, ascending
    names: list[str]
    method: str
    source: dict[str, Any] = field(default_factory=dict)  # the ranking followed (method, model, data)
    tie_note: str | None = None  # set when tied scores, not the ranking, decided some of the players


def check_method(method: str, granularity: str) -> None:
    """Refuse a method that cannot run here, before anything is loaded."""
    if method not in METHODS:
        raise ConfigError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}")
    if method == "ila":
        raise ConfigError(
            "--method ila trains adapters: run `layerscope ila --out R` first and pass --importance R/importance.json"
        )
    if method in BLOCK_ONLY and granularity != "block":
        raise ConfigError(f"--method {method} scores whole blocks; it cannot prune {granularity}s")


def from_ranking(imp: LayerImportance, layer_map: LayerMap, granularity: str, k: int, where: str = "ranking") -> Choice:
    """The ``k`` least important players of a saved ranking (aggregated to ``granularity``), as
    ``layerscope prune --importance`` chooses them: ``.names`` are what ``prune`` (blocks) or
    ``prune_sublayers`` take; ``.players`` are indices at ``granularity``. ``where`` names the
    ranking in error messages."""
    level = rk.at_level(imp, layer_map, granularity, where)
    if imp.method == rk.ANGULAR and granularity == "block":
        players = rk.angular_window(imp, k)  # Gromov et al.'s window, not the k smallest single distances
    else:
        players = rk.least_players(level, k)
    source = {
        "method": imp.method,
        "granularity": imp.granularity,
        "aggregated_to": granularity if imp.granularity != granularity else None,
        "model": imp.model.get("name"),
        "fingerprint": imp.model.get("fingerprint"),
        "data": imp.data,
        "file": where,
    }
    choice = _choice(players, layer_map, granularity, imp.method, source)
    if not (imp.method == rk.ANGULAR and granularity == "block"):
        choice.tie_note = tie_warning(level, [level.players[p] for p in players])
    return choice


def by_method(
    method: str,
    layer_map: LayerMap,
    granularity: str,
    k: int,
    *,
    engine=None,
    model=None,
    sequences=None,
    tokenizer=None,
    seed: int = 0,
    model_name: str | None = None,
    progress: bool = False,
    estimator: str = "proximity",
    batch_size: int = 8,
) -> tuple[Choice, LayerImportance | None]:
    """(the players ``method`` removes, the ranking it computed on the way, if any); ``estimator``:
    the Shapley estimator of ``method="shapley"`` (``methods.shapley.ESTIMATORS``); ``batch_size``:
    sequences per forward of the similarity methods (an engine has its evaluator's)."""
    check_method(method, granularity)
    if method in NEEDS_ENGINE and engine is None:
        raise ConfigError(f"--method {method} needs a value function (a coalition engine on a task)")
    n = len(layer_map.players(granularity))
    if method == "last":
        return _choice(rk.last_players(n, k), layer_map, granularity, method, {}), None
    if method == "random":
        return _choice(rk.random_players(n, k, seed), layer_map, granularity, method, {"seed": seed}), None
    if method == "greedy":
        order, values = rk.greedy_players(engine, k, progress=progress)
        source = {"order": [engine.players[p] for p in order], "values": values}
        return _choice(sorted(order), layer_map, granularity, method, source), None
    inputs = dict(engine=engine, model=model, sequences=sequences, tokenizer=tokenizer, model_name=model_name)
    inputs["batch_size"] = batch_size
    imp = _compute_ranking(method, layer_map, seed=seed, progress=progress, estimator=estimator, **inputs)
    return from_ranking(imp, layer_map, granularity, k, f"--method {method}"), imp


def _compute_ranking(
    method: str,
    layer_map: LayerMap,
    *,
    engine,
    model,
    sequences,
    tokenizer,
    model_name,
    seed: int,
    progress: bool,
    estimator: str = "proximity",
    batch_size: int = 8,
) -> LayerImportance:
    if method in NEEDS_SEQUENCES:
        from layerscope.methods.similarity import similarity

        results = similarity(
            model,
            layer_map,
            sequences,
            batch_size=batch_size,
            tokenizer=tokenizer,
            model_name=model_name or "model",
            progress=progress,
        )
        return results["angular_distance" if method == "angular" else "block_influence"]
    if method == "ablation":
        from layerscope.methods.ablation import ablate

        return ablate(engine, model_name=model_name or "model", progress=progress, seed=seed)
    from layerscope.methods.shapley import shapley_importance
    from layerscope.scoring.sources import evaluator_info

    data = evaluator_info(engine.evaluator)
    return shapley_importance(
        engine, estimator, model_name=model_name or "model", data=data, seed=seed, progress=progress
    )


def _choice(players: list[int], layer_map: LayerMap, granularity: str, method: str, source: dict) -> Choice:
    names = layer_map.players(granularity)
    players = sorted(players)
    return Choice(players, [names[p] for p in players], method, source)
