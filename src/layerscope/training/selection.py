"""Turn an importance ranking into the set of linear modules to fine-tune.

A ranking may score modules, sub-layers or whole blocks; fine-tuning always works on
linear modules (what LoRA adapts), so a sub-layer or block player expands to all of its
linear modules. Fractions are taken at the ranking's own granularity: "top 30% of blocks"
means ceil(0.3 * n_blocks) whole blocks.

Modes
-----
``all``            every linear module (the reference run).
``freeze-bottom``  every module except the ceil(F * N) least important players (ILA-freeze;
                   the paper freezes ~25%).
``top``            only the ceil(F * N) most important players (ILA-select; 10-30%).
``random``         ceil(F * N) players drawn uniformly under ``seed``: the control for
                   ``top`` at the same budget. Drawn among the ranking's players when there is
                   a ranking (so the budget is identical), else among all linear modules.
``random-matched`` the control for ``top`` at the same parameter count: as many players of each
                   kind as ``top`` picks (module type, e.g. up_proj, for a module ranking;
                   attn / mlp for a sub-layer ranking), drawn at random under ``seed`` among the
                   players of that kind. ILA favours some module types (often the wider MLP
                   projections), so a plain random draw trains fewer parameters than ``top``
                   does; this one differs from ``top`` only in which blocks it picks from.

``min_block`` (``--min-block B``) makes every mode leave blocks below B alone: players there
are not eligible, while F still counts the whole ranking, so ``top`` picks the same number
of players, the most important ones at or above block B. Why: the backward pass stops at the
lowest trainable block, so a selection that reaches block 0 (ILA's top modules often do)
pays for a backward through the whole model however few modules it trains; a cut at B
saves roughly the share of blocks below B of the backward, at the price of passing over
important low modules. ``docs/finetune.md`` measures that trade.

A ranking is tied to the model it was computed on: the weights fingerprint stored in the
file must match the loaded model's (skip with ``select_modules(..., check=False)``, e.g. for the
same model loaded in float16), and every player must exist in the model's layer map.
"""

from __future__ import annotations

import numbers
import random
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from layerscope.core.agreement import same_model_hint
from layerscope.core.errors import ConfigError, check_count
from layerscope.core.importance import LayerImportance, top_k_count
from layerscope.core.layermap import LayerMap, records_from_names
from layerscope.core.ties import TiedRankingWarning, short_window_note, tie_warning
from layerscope.training.choices import DEFAULT_FRACTION, MODES


@dataclass
class Selection:
    """Which linear modules to train, and how that was decided."""

    modules: list[str]  # stable names ("layers.3.self_attn.q_proj"), forward order
    mode: str
    fraction: float
    granularity: str  # of the players chosen (module | sublayer | block)
    players: list[str]  # the chosen players before expansion, forward order
    n_players: int  # players in the ranking (or linear modules for mode all)
    n_modules_total: int  # linear modules in the model
    seed: int | None = None
    source: dict[str, Any] = field(default_factory=dict)  # ranking method / model / data
    min_block: int | None = None  # blocks below this were not eligible (None: no cut)

    @property
    def blocks(self) -> list[int]:
        """Blocks holding at least one selected module, ascending."""
        return sorted({p.block for p in records_from_names(self.modules, "module")})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- checks


def check_ranking_matches(
    importance: LayerImportance, layer_map: LayerMap, fingerprint: str | None = None, where: str = "importance file"
) -> None:
    """Refuse a ranking computed on another model, with one line that says why."""
    name = importance.model.get("name", "?")
    n_blocks = importance.model.get("n_blocks")
    if isinstance(n_blocks, int) and n_blocks != layer_map.n_blocks:
        raise ConfigError(
            f"{where}: ranking is for a model with {n_blocks} blocks ({name!r}); the loaded model has "
            f"{layer_map.n_blocks}"
        )
    known = set(layer_map.players(importance.granularity))
    unknown = [p for p in importance.players if p not in known]
    if unknown:
        raise ConfigError(
            f"{where}: {len(unknown)} of its {importance.granularity} players are not in the loaded "
            f"model's layer map (e.g. {unknown[0]!r}; the model has e.g. "
            f"{layer_map.players(importance.granularity)[0]!r}): ranking from another model?"
        )
    # e.g. a 24-block model's ranking (no n_blocks recorded) on 32 blocks: every player it names exists here
    covered = {p.block for p in importance.player_records()}
    have = {p.block for p in records_from_names(layer_map.players(importance.granularity), importance.granularity)}
    if not have <= covered:
        raise ConfigError(
            f"{where}: ranking has no {importance.granularity} players in {len(have - covered)} of the loaded "
            f"model's blocks (e.g. block {min(have - covered)}): ranking from a smaller model?"
        )
    fp = importance.model.get("fingerprint")
    if fp and fingerprint and fp != fingerprint:
        raise ConfigError(
            f"{where}: ranking was computed on model {name!r} (weights fingerprint {fp}) but the loaded "
            f"model's fingerprint is {fingerprint}; a ranking only applies to the model it was computed "
            f"on ({same_model_hint(importance.model, '--ignore-fingerprint', loaded=True)})"
        )


def _check_fraction(fraction: float, mode: str) -> float:
    # the CLI checks --fraction itself before a model loads (cli.common.check_fraction): only the Python
    # API gets here, so the message names the argument
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ConfigError(f"fraction {fraction!r} for mode {mode!r} must be in (0, 1]")
    return float(fraction)


def _check_argument_types(layer_map: object, importance: object) -> None:
    """Refuse arguments of the wrong type in one line, not as an AttributeError deep in the selection
    (``select_modules(importance, layer_map)`` swaps the two first arguments easily)."""
    if isinstance(layer_map, LayerImportance) and isinstance(importance, LayerMap):
        raise ConfigError("select_modules(layer_map, importance, ...): the layer map comes first, then the ranking")
    if not isinstance(layer_map, LayerMap):
        raise ConfigError(
            f"layer_map must be a LayerMap (layerscope.core.layermap.build_layer_map(model)), "
            f"got {type(layer_map).__name__}"
        )
    if importance is not None and not isinstance(importance, LayerImportance):
        raise ConfigError(
            f"importance must be a LayerImportance (or None), got {type(importance).__name__}; "
            "load a ranking file with LayerImportance.load(path)"
        )


# ----------------------------------------------------------------------------- expansion


def expand_players(players: list[str], granularity: str, layer_map: LayerMap) -> list[str]:
    """Linear modules (stable names, forward order) covered by ``players`` of ``granularity``."""
    chosen = set(players)
    if granularity == "module":
        covered = chosen
    elif granularity == "sublayer":
        covered = {m for s in layer_map.sublayers if s.name in chosen for m in s.linears}
    elif granularity == "block":
        blocks = {layer_map.block_of(p) for p in players}
        covered = {m.name for m in layer_map.linears if m.block in blocks}
    else:
        raise ConfigError(
            f"cannot fine-tune from {granularity}-level players: only block, sublayer and module rankings "
            "name the linear modules LoRA adapts (routed experts are fused tensors)"
        )
    return [m.name for m in layer_map.linears if m.name in covered]


def select_modules(
    layer_map: LayerMap,
    importance: LayerImportance | None = None,
    mode: str = "top",
    fraction: float | None = None,
    seed: int = 0,
    *,
    fingerprint: str | None = None,
    check: bool = True,
    where: str = "importance file",
    min_block: int | None = None,
) -> Selection:
    """Choose the linear modules to train (see the module docstring for the modes).

    ``fingerprint``: the loaded model's weights fingerprint, checked against the ranking's.
    ``fraction`` defaults to 0.25 for freeze-bottom and 0.3 for top / random.
    ``min_block``: only blocks >= this are eligible (the backward then stops there).
    """
    _check_argument_types(layer_map, importance)
    if mode not in MODES:  # the CLI's --mode has these as choices: only the Python API gets here
        raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    fraction = _check_fraction(DEFAULT_FRACTION[mode] if fraction is None else fraction, mode)
    _check_min_block(min_block, layer_map)
    min_block = None if min_block is None else int(min_block)  # a NumPy integer would reach exported files
    all_modules = [m.name for m in layer_map.linears]
    if not all_modules:
        raise ConfigError("the model has no linear modules to fine-tune")
    source = _checked_source(importance, layer_map, fingerprint, check, where)
    if mode == "all":
        modules = _eligible(all_modules, layer_map, min_block)
        return Selection(
            modules=modules,
            mode=mode,
            fraction=1.0,
            granularity="module",
            players=modules,
            n_players=len(all_modules),
            n_modules_total=len(all_modules),
            seed=None,
            source=source,
            min_block=min_block,
        )
    if mode.startswith("random"):  # None would draw from the clock: another selection every run, none recorded
        check_count(seed, "seed", 0)
        seed = int(seed)  # random.Random takes no NumPy integer
    granularity, pool, players = _pick_players(layer_map, importance, mode, fraction, seed, min_block)
    if mode in ("top", "freeze-bottom"):  # the modes whose choice the scores make
        _warn_if_tied(importance, players, _eligible(pool, layer_map, min_block))
    players = _forward_order(players, granularity, layer_map)
    modules = expand_players(players, granularity, layer_map)
    if not modules:
        raise ConfigError(f"mode {mode} at fraction {fraction} selects no linear module")
    return Selection(
        modules=modules,
        mode=mode,
        fraction=fraction,
        granularity=granularity,
        players=players,
        n_players=len(pool),
        n_modules_total=len(all_modules),
        seed=seed if mode.startswith("random") else None,
        source=source,
        min_block=min_block,
    )


def _checked_source(
    importance: LayerImportance | None, layer_map: LayerMap, fingerprint: str | None, check: bool, where: str
) -> dict[str, Any]:
    """Where the ranking came from (empty without one), after checking it fits the loaded model."""
    if importance is None:
        return {}
    if check:
        check_ranking_matches(importance, layer_map, fingerprint, where)
    return _source_of(importance)


def _source_of(importance: LayerImportance) -> dict[str, Any]:
    return {
        "method": importance.method,
        "granularity": importance.granularity,
        "model": importance.model.get("name"),
        "fingerprint": importance.model.get("fingerprint"),
        **{k: importance.model[k] for k in ("fingerprint_precision", "dtype") if importance.model.get(k)},
        "data": importance.data.get("path") or importance.data.get("id") or importance.data.get("task"),
    }


def _eligible(players: list[str], layer_map: LayerMap, min_block: int | None) -> list[str]:
    return [p for p in players if layer_map.block_of(p) >= (min_block or 0)]


def _pick_players(
    layer_map: LayerMap,
    importance: LayerImportance | None,
    mode: str,
    fraction: float,
    seed: int,
    min_block: int | None,
) -> tuple[str, list[str], list[str]]:
    """The players a mode other than ``all`` picks: (granularity, the pool drawn from, picked in pool order)."""
    if mode == "random":
        granularity = importance.granularity if importance is not None else "module"
        pool = list(importance.players) if importance is not None else [m.name for m in layer_map.linears]
        k = top_k_count(fraction, len(pool))
        candidates = _eligible(pool, layer_map, min_block)
        _check_room(k, candidates, min_block, mode, fraction)
        picked = set(random.Random(seed).sample(candidates, k))
        return granularity, pool, [p for p in pool if p in picked]
    if importance is None:  # the CLI refuses this first (training.inputs.load_ranking): the API's message
        raise ConfigError(f"mode {mode!r} needs an importance ranking (importance=LayerImportance.load(path))")
    granularity, pool = importance.granularity, importance.players
    if mode in ("top", "random-matched"):
        k = top_k_count(fraction, len(pool))
        candidates = _eligible(importance.ranking(), layer_map, min_block)
        _check_room(k, candidates, min_block, mode, fraction)
        picked = set(candidates[:k])
        if mode == "random-matched":
            picked = _draw_matching_kinds(picked, candidates, _kind_of(granularity, layer_map), seed)
    else:  # freeze-bottom
        frozen = set(importance.bottom(fraction))
        picked = {p for p in _eligible(pool, layer_map, min_block) if p not in frozen}
        if not picked:
            raise ConfigError(
                f"--mode freeze-bottom --fraction {fraction} freezes all {len(pool)} players"
                f"{f' at or above block {min_block}' if min_block else ''}; nothing left to train "
                "(use a smaller fraction)"
            )
    return granularity, pool, [p for p in pool if p in picked]


def _warn_if_tied(importance: LayerImportance, chosen: list[str], pool: list[str]) -> None:
    """Tied scores, or an angular distance's short windows, decide a selection by layer position: say so
    (finetune, export, the demo and the report's recommendation all select here)."""
    for note in (tie_warning(importance, chosen, pool), short_window_note(importance)):
        if note:
            warnings.warn(note, TiedRankingWarning, stacklevel=3)  # at the caller of select_modules


def _kind_of(granularity: str, layer_map: LayerMap):
    """What makes two players interchangeable in size: a module's type, a sub-layer's kind."""
    if granularity == "block":
        return lambda p: "block"
    records = layer_map.player_records(granularity)
    kinds = {p.name: p.module_type if granularity == "module" else p.kind for p in records}
    return lambda p: kinds[p]


def _draw_matching_kinds(like: set[str], candidates: list[str], kind_of, seed: int) -> set[str]:
    """Random players, as many of each kind as in ``like``, drawn among ``candidates``."""
    want = Counter(map(kind_of, like))
    rng = random.Random(seed)
    drawn: set[str] = set()
    for kind in sorted(want):  # a fixed order, so a seed gives one draw
        drawn.update(rng.sample([p for p in candidates if kind_of(p) == kind], want[kind]))
    return drawn


def parse_selection_spec(text: str) -> tuple[str, float | None, int | None]:
    """``mode[:fraction][@min_block]``, e.g. ``top:0.3@15`` -> ("top", 0.3, 15): the short form scripts use
    to name a selection (``--mode top --fraction 0.3 --min-block 15``). Values are range-checked when the
    selection is made."""
    spec, at, cut = text.strip().partition("@")
    mode, colon, frac = spec.partition(":")
    if mode not in MODES:
        raise ConfigError(f"selection {text!r}: unknown mode {mode!r}; use one of {', '.join(MODES)}")
    try:
        fraction = float(frac) if colon else None
        min_block = int(cut) if at else None
    except ValueError:
        raise ConfigError(f"selection {text!r}: expected mode[:fraction][@min_block], e.g. top:0.3@15") from None
    return mode, fraction, min_block


def _check_min_block(min_block: int | None, layer_map: LayerMap) -> None:
    if min_block is None:
        return
    if (
        isinstance(min_block, bool)
        or not isinstance(min_block, numbers.Integral)
        or not 0 <= min_block < layer_map.n_blocks
    ):
        raise ConfigError(
            f"--min-block {min_block!r} is out of range: the model has {layer_map.n_blocks} blocks "
            f"(0..{layer_map.n_blocks - 1})"
        )


def _check_room(k: int, candidates: list[str], min_block: int | None, mode: str, fraction: float) -> None:
    if k > len(candidates):
        raise ConfigError(
            f"--mode {mode} --fraction {fraction:g} needs {k} players but only {len(candidates)} are "
            f"at or above --min-block {min_block}; lower the cut or the fraction"
        )


def _forward_order(players: list[str], granularity: str, layer_map: LayerMap) -> list[str]:
    order = {p: i for i, p in enumerate(layer_map.players(granularity))}
    return sorted(players, key=lambda p: order.get(p, len(order)))
