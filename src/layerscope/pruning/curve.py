"""Pruning curves: the value of the model as 1..K_max players are removed, one curve per order.

A **schedule** says which players are removed at each K: the K least important of a ranking
(nested in K), Gromov et al.'s best window of K consecutive blocks (not nested), the greedy
search, the last K, or K drawn at random (one schedule per seed). Every point is a coalition of
one :class:`~layerscope.engine.coalitions.CoalitionEngine`, so all curves are measured on the same
items in one batch that reuses shared prefixes; the engine's values equal those of the pruned
models saved by :func:`layerscope.pruning.prune` (tests/test_pruning.py).

Summaries per curve (``POINT`` = 0.01 of the value: one accuracy point, or 0.01 nats of -loss):

- ``auc``: the area under the curve from K = 0 to K_max divided by K_max (trapezoids), i.e. the
  mean value over that range; higher is better;
- ``within_1`` / ``within_5``: the largest K whose value, and that of every smaller K, stays
  within 1 / 5 points of the full model.

:func:`write_curves` writes ``curves.json`` (everything), ``<label>/pruning.json`` per curve in the
``"kind": "pruning-curve"`` format ``layerscope report`` reads, ``curve.png`` and ``table.md``.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerscope.core import atomic
from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance, model_info
from layerscope.pruning import rankings as rk
from layerscope.viz.literal_text import literal_text

POINT = 0.01
WITHIN = (1, 5)
DEFAULT_SEEDS = (0, 1, 2)
BASELINES = ("last", "random")  # the rule orders: last K, and K at random per seed


@dataclass
class Schedule:
    label: str  # "block-influence", "angular", "greedy", "last", "random-seed0", ...
    method: str
    removed: list[list[int]]  # removed[k - 1]: the players removed at K = k
    source: dict[str, Any] = field(default_factory=dict)


def ranking_schedule(label: str, imp: LayerImportance, k_max: int) -> Schedule:
    """The K least important players for K = 1..k_max (``imp`` already at the engine's level)."""
    if imp.method == rk.ANGULAR:  # as `prune` does: an angular-distance result means Gromov's window
        removed = [rk.angular_window(imp, k) for k in range(1, k_max + 1)]
        return Schedule(label, "angular-window", removed, {"rule": "best window of K consecutive blocks"})
    removed = [rk.least_players(imp, k) for k in range(1, k_max + 1)]
    source = {"method": imp.method, "granularity": imp.extras.get("aggregated_from", {}).get("granularity")}
    return Schedule(label, imp.method, removed, source)


def rule_schedules(n: int, k_max: int, seeds=DEFAULT_SEEDS, which=BASELINES) -> list[Schedule]:
    """The baselines (``which`` of them): last K, and K at random for each seed."""
    out = []
    if "last" in which:
        out.append(Schedule("last", "last", [rk.last_players(n, k) for k in range(1, k_max + 1)]))
    for s in seeds if "random" in which else ():
        removed = [rk.random_players(n, k, s) for k in range(1, k_max + 1)]
        out.append(Schedule(f"random-seed{s}", "random", removed, {"seed": s}))
    return out


def labelled_rankings(
    rankings: Mapping[str, LayerImportance] | Sequence[LayerImportance] | LayerImportance | None,
) -> dict[str, LayerImportance]:
    """label -> ranking. A list (or one ranking) is labelled by each ranking's method, a repeated method
    numbered from its second use (``ablation``, ``ablation-2``): labels name the curves' folders."""
    if rankings is None:
        return {}
    if isinstance(rankings, LayerImportance):
        rankings = [rankings]
    if isinstance(rankings, Mapping):
        labelled = dict(rankings)
    elif isinstance(rankings, Sequence) and not isinstance(rankings, (str, bytes)):
        labelled, seen = {}, Counter()
        for imp in rankings:
            method = getattr(imp, "method", None) or "ranking"
            seen[method] += 1
            labelled[method if seen[method] == 1 else f"{method}-{seen[method]}"] = imp
    else:
        raise ConfigError(
            f"rankings must map labels to LayerImportance results, or be a list of them; got {type(rankings).__name__}"
        )
    wrong = [label for label, imp in labelled.items() if not isinstance(imp, LayerImportance)]
    if wrong:
        raise ConfigError(
            f"rankings: {wrong[0]!r} is a {type(labelled[wrong[0]]).__name__}, not a LayerImportance result"
        )
    return labelled


def _check_rankings_fit(rankings: Mapping[str, LayerImportance], engine, ignore_fingerprint: bool) -> None:
    from layerscope.core.models import ModelFingerprint
    from layerscope.training.selection import check_ranking_matches

    ours = ModelFingerprint(engine.model)  # read once for every ranking
    for label, imp in rankings.items():
        recorded = imp.model.get("fingerprint")
        fingerprint = ours.like(recorded) if recorded and not ignore_fingerprint else None
        check_ranking_matches(imp, engine.layer_map, fingerprint, where=f"ranking {label!r}")


def pruning_curve(
    engine,
    rankings: Mapping[str, LayerImportance] | Sequence[LayerImportance] | None = None,
    k_max: int | None = None,
    *,
    greedy: bool = True,
    greedy_engine=None,
    seeds=DEFAULT_SEEDS,
    baselines: bool | Sequence[str] = True,
    model_name: str | None = None,
    data: dict[str, Any] | None = None,
    progress: bool = False,
    ignore_fingerprint: bool = False,
) -> dict[str, Any]:
    """Curves of ``engine``'s value for every ranking (label -> result, or a list of results labelled by
    method: :func:`labelled_rankings`; an angular-distance result gives the window rule, as in ``prune``),
    the greedy search and
    the baselines (last-K and random per seed; ``baselines`` false: neither, or a list of those drawn:
    ``["last"]``, ``["random"]``). Rankings finer than the
    engine's granularity are aggregated first. Greedy chooses its steps by ``greedy_engine``'s value
    (default ``engine``: the scored items; another engine on other items makes it out of sample). A
    ranking must be the engine's model's: its weights fingerprint is checked, as ``prune-curve`` does
    (``ignore_fingerprint``: the same model in float16)."""
    from layerscope.methods.ablation import chance_value
    from layerscope.scoring.sources import evaluator_info

    which = _baselines(baselines)
    rankings = labelled_rankings(rankings)
    _check_rankings_fit(rankings, engine, ignore_fingerprint)
    n = engine.n
    k_max = rk.checked_count(n - 1 if k_max is None else k_max, n, f"{engine.granularity}s")
    schedules = [
        ranking_schedule(label, rk.at_level(imp, engine.layer_map, engine.granularity, label), k_max)
        for label, imp in rankings.items()
    ]
    if greedy:
        order, _ = rk.greedy_players(greedy_engine or engine, k_max, progress=progress)
        schedules.append(Schedule("greedy", "greedy", [sorted(order[:k]) for k in range(1, k_max + 1)]))
    schedules += rule_schedules(n, k_max, seeds, which)
    full = engine.full()
    coalitions = [[p for p in range(n) if p not in gone] for s in schedules for gone in s.removed]
    values = iter(engine.values(coalitions, progress=progress))
    v_full = float(full.value)
    names = engine.players
    curves = []
    for s in schedules:
        vals = [v_full] + [float(next(values)) for _ in s.removed]
        curves.append(
            {
                "label": s.label,
                "method": s.method,
                "source": s.source,
                "values": vals,
                "removed": [[]] + [[names[p] for p in gone] for gone in s.removed],
                **summary(vals),
            }
        )
    return {
        "kind": "pruning-curves",
        "model": model_info(engine.model, engine.layer_map, model_name),
        "data": data if data is not None else evaluator_info(engine.evaluator),
        "granularity": engine.granularity,
        "k_max": k_max,
        "baseline": {"full": v_full, "chance": chance_value(engine, full.metrics)},
        "point": POINT,
        "rules": {
            "auc": "area under value(K) for K = 0..K_max by trapezoids, divided by K_max",
            "within": "largest K whose value and every smaller K's stay >= full - d points (1 point = 0.01)",
        },
        "curves": curves,
    }


def _baselines(baselines) -> tuple[str, ...]:
    if isinstance(baselines, bool):
        return BASELINES if baselines else ()
    which = (baselines,) if isinstance(baselines, str) else tuple(baselines)
    unknown = [b for b in which if b not in BASELINES]
    if unknown:
        raise ConfigError(f"baselines: {unknown[0]!r} is not one of {', '.join(BASELINES)} (or give True / False)")
    return which


def same_as_order(imp: LayerImportance, method: str, engine, data: dict[str, Any]) -> bool:
    """Whether ``imp`` is the ranking ``method`` would compute on ``engine`` (scoring ``data``): the same method,
    granularity, players and items (``data``, as results record it), and the same full-model value, which
    a different tokenization of those items (``--max-length``, renamed fields) or batch would change. The
    model is not compared here: ``prune-curve`` checks every ranking's weights fingerprint first."""
    import json

    if imp.method != method or imp.granularity != engine.granularity or list(imp.players) != list(engine.players):
        return False
    try:
        if json.loads(json.dumps(imp.data)) != json.loads(json.dumps(data)):  # as both read back from a file
            return False
    except (TypeError, ValueError):
        return False
    full = (imp.baseline or {}).get("full")
    if not isinstance(full, (int, float)) or isinstance(full, bool) or not math.isfinite(full):
        return False
    return math.isclose(float(full), float(engine.full().value), rel_tol=1e-6, abs_tol=1e-9)


def at_chance_note(curves: dict[str, Any]) -> str | None:
    """The note ``ablate`` and ``shapley`` print when the full model scores no better than chance
    (:func:`layerscope.methods.ablation.at_chance_note`), for the baseline of ``curves``; else None."""
    from layerscope.methods.ablation import at_chance_note as note

    baseline = curves.get("baseline") or {}
    full, chance = baseline.get("full"), baseline.get("chance")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (full, chance)):
        return None
    return note(float(full), float(chance))


def summary(values: list[float]) -> dict[str, Any]:
    """AUC (mean value over K = 0..K_max) and the largest K within 1 / 5 points of ``values[0]``."""
    k_max = len(values) - 1
    auc = sum((a + b) / 2 for a, b in zip(values, values[1:])) / k_max if k_max else values[0]
    out: dict[str, Any] = {"auc": auc}
    for d in WITHIN:
        depth = 0
        for k, v in enumerate(values):
            if not v >= values[0] - d * POINT - 1e-12:  # a NaN ends it too
                break
            depth = k
        out[f"within_{d}"] = depth
    return out


# ----------------------------------------------------------------------------- writing


def curve_file(curves: dict[str, Any], curve: dict[str, Any]) -> dict[str, Any]:
    """One curve in the format ``layerscope report`` reads (``viz/report/load.py``)."""
    return {
        "kind": "pruning-curve",
        "model": curves["model"],
        "data": curves["data"],
        "granularity": curves["granularity"],
        "baseline": curves["baseline"],
        "ranking": {"method": curve["label"], **curve["source"]},
        "points": [
            {"n_removed": k, "value": v, "removed": gone}
            for k, (v, gone) in enumerate(zip(curve["values"], curve["removed"]))
        ],
    }


def table(curves: dict[str, Any]) -> str:
    """A Markdown table: one row per curve, best AUC first."""
    rows = sorted(curves["curves"], key=lambda c: -c["auc"])
    lines = [
        f"| order | AUC (mean value, K = 0..{curves['k_max']}) | largest K within 1 point | within 5 points |",
        "|---|---|---|---|",
    ]
    lines += [f"| {c['label']} | {c['auc']:.4f} | {c['within_1']} | {c['within_5']} |" for c in rows]
    return "\n".join(lines) + "\n"


def write_curves(curves: dict[str, Any], out: str | Path) -> list[Path]:
    """curves.json, one <label>/pruning.json per curve, curve.png and table.md under ``out``."""
    out = Path(out)
    labels = [c["label"] for c in curves["curves"]]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"pruning curves need distinct labels (got {labels})")
    paths = []
    for c in curves["curves"]:
        path = out / c["label"] / "pruning.json"
        atomic.write_json(path, curve_file(curves, c))
        paths.append(path)
    paths.append(_plot(curves, out / "curve.png"))
    atomic.write_text(out / "table.md", table(curves))
    atomic.write_json(out / "curves.json", curves)  # last: its presence says the run finished
    return [*paths, out / "table.md", out / "curves.json"]


def earlier_curves(out: str | Path) -> list[Path]:
    """The files of an earlier run's curves in ``out`` (prune-curve), read before a new run writes its
    own there; nothing is removed here (``drop_earlier_curves`` does it once the new curves are
    written). Only curves layerscope wrote count: OUT/curves.json must read as them; then table.md,
    curve.png and the <label>/pruning.json of each curve it names. Empty when there are none."""
    import json

    out = Path(out)
    result = out / "curves.json"
    if result.is_symlink() or not result.is_file():
        return []
    try:
        earlier = json.loads(result.read_text(encoding="utf-8"))
        labels = [str(c["label"]) for c in earlier["curves"]]
        earlier["baseline"]["full"]
    except (OSError, ValueError, KeyError, TypeError):  # not curves of ours (or not readable): left alone
        return []
    own = [
        out / label / "pruning.json"
        for label in labels
        if Path(label).name == label and label not in (".", "..") and not (out / label).is_symlink()
    ]
    beside = [p for p in [out / "table.md", out / "curve.png", *own] if not p.is_symlink() and p.is_file()]
    return [result, *beside]


def drop_earlier_curves(earlier: list[Path], written: list[Path]) -> list[Path]:
    """Once this run's curves are written (``written``): remove the files of the ``earlier`` ones
    (``earlier_curves``, read before) that this run did not write over, the pruning.json of a curve it
    does not draw say, and a label folder left empty by that. Returns what was removed."""
    kept = {Path(p) for p in written}
    gone = []
    for path in earlier:
        if path in kept:
            continue
        try:
            path.unlink()
        except OSError:
            continue
        gone.append(path)
        if path.name == "pruning.json":
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only if empty now
    return gone


@literal_text
def _plot(curves: dict[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure

    from layerscope.viz.heatmap import plot_pruning_lines

    fig = Figure(figsize=(8.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    lines = [(c["label"], list(range(len(c["values"]))), c["values"]) for c in curves["curves"]]
    plot_pruning_lines(ax, lines, [c["method"] == "random" for c in curves["curves"]])
    chance = curves["baseline"].get("chance")
    if isinstance(chance, float) and math.isfinite(chance):
        ax.axhline(chance, ls="--", lw=1.0, color="#C44E52", label=f"chance ({chance:.3g})")
    task = curves["data"].get("task", "value")
    ax.set_xlabel(f"{curves['granularity']}s removed")
    ax.set_ylabel(f"{task} ({curves['data'].get('metric', 'value')})")
    ax.set_title(f"pruning curve: {curves['model'].get('name')}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)  # never over a curve
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
