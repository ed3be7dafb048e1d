"""The report's content, computed once from the inputs: both renderers (HTML, Markdown) read
only this, so the page and the text summary cannot disagree.

Rules stated in the report itself:

- one model per report: inputs whose weights fingerprints (or, without one, block counts /
  architectures) differ are refused; an input without a fingerprint that names another model is noted;
- agreement is computed at the coarsest granularity among the results (``core.levels``);
- the recommended fine-tuning selection is the top F of one ranking (ILA's when there is one:
  it is the method that scores what fine-tuning changes; never one whose scores are all the same
  while another has an order), expanded to linear modules;
- the safe pruning depth is the largest number of removed players at which the curve, and
  every shallower point, keeps at least ``1 - tolerance`` of the full model's margin above chance.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerscope.core.agreement import same_model_hint
from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance, top_k_count
from layerscope.viz.report.agreement import Agreement, agreement, no_order
from layerscope.viz.report.load import FinetuneRun, Inputs, PruningCurve, curve_full, is_number, number_or_none
from layerscope.viz.report.top_notes import top_notes
from layerscope.viz.report.wording import blocks_text, plural

DEFAULT_FRACTION = 0.3  # top-K for agreement and F for the fine-tuning selection
DEFAULT_TOLERANCE = 0.1  # share of the margin above chance a pruned model may lose
EXPORT_FORMATS = ("peft", "axolotl", "llama-factory")


@dataclass
class Result:
    label: str
    source: str
    imp: LayerImportance

    @property
    def has_error_bars(self) -> bool:
        return self.imp.stderr is not None and any(is_number(e) for e in self.imp.stderr)


@dataclass
class Cornerstones:
    label: str
    rule: str
    players: list[str]
    removed: list[tuple[str, float]]  # (player, value with it removed), most damaging first
    full: float | None
    chance: float | None
    at_chance: bool = False  # the full model is at chance already: no removal can drop it there

    @property
    def summary(self) -> str:
        """The players, "none", or why there are none to find."""
        if self.at_chance:
            return "not assessed: the full model is at chance already, so no removal can drop it there"
        return ", ".join(self.players) or "none"


@dataclass
class Recommendation:
    label: str  # the ranking it comes from
    source: str
    method: str
    fraction: float
    players: list[str]
    modules: list[str]
    n_modules_total: int
    blocks: list[int]
    commands: list[str]
    snippets: dict[str, str]  # format -> config text
    notes: list[str] = field(default_factory=list)
    n_ranked: int = 0  # players the ranking ranks (the top ``fraction`` of them is selected)

    @property
    def summary(self) -> str:
        """What the selection holds, in words both renderers print after "Fine-tune the top F of X"."""
        players, total = plural(len(self.players), "player"), self.n_modules_total
        if len(self.modules) < total:
            return f"{players}, {len(self.modules)} of {total} linear modules in {blocks_text(self.blocks)}"
        # a 1-block model's top 30% is its one block: "7 of 7 modules" read as a choice that was made
        return (
            f"{players}, which is every one of the model's {total} linear modules: the top "
            f"{self.fraction:.0%} of {plural(self.n_ranked, 'ranked player')} leaves none out, so this is LoRA on "
            "all modules, not a selection"
        )


@dataclass
class SafeDepth:
    label: str
    depth: int
    removed: list[str]
    threshold: float
    rule: str
    unit: str = "players"  # what is removed: blocks, sub-layers, ... (the curve's own unit)
    measured_on: str = ""  # the curve's task (``core.importance.data_label``); "" when its file does not say


def safe_depth_rules(depths: list[SafeDepth]) -> list[str]:
    """The rules behind ``depths``, each once (curves of one task share theirs)."""
    return list(dict.fromkeys(d.rule for d in depths))


def pruning_advice(depths: list[SafeDepth]) -> list[str]:
    """The lines for "What to do": per task and unit the curves were measured on, the deepest safe
    removal and the orders that reach it (the random controls named only where nothing else does), or
    that none removes anything within tolerance. Depths on different tasks, or in blocks against
    sub-layers, are not one number: each group gets its line, named when there are several."""
    groups: dict[tuple[str, str], list[SafeDepth]] = {}
    for d in depths:
        groups.setdefault((d.measured_on, d.unit), []).append(d)
    lines = []
    for (measured_on, unit), group in groups.items():
        line = _advice(group)
        if len(groups) > 1:
            line = f"on {measured_on or 'an unnamed task'} ({unit}): {line}"
        lines.append(line)
    return lines


def _advice(depths: list[SafeDepth]) -> str:
    ranked = [d for d in depths if not d.label.split("/")[-1].startswith("random")] or depths
    deepest = max(d.depth for d in ranked)
    if deepest == 0:
        return f"no ranked order removes even one {ranked[0].unit.removesuffix('s')} within the tolerance"
    best = [d for d in ranked if d.depth == deepest]
    orders, gone = ", ".join(d.label for d in best), ", ".join(best[0].removed)
    unit = best[0].unit if deepest > 1 else best[0].unit.removesuffix("s")
    return f"up to {deepest} {unit} can go within the tolerance, in the order of {orders} ({gone})"


@dataclass
class Report:
    model: dict[str, Any]
    results: list[Result]
    finetunes: list[FinetuneRun]
    prunings: list[PruningCurve]
    agreement: Agreement | None
    cornerstones: list[Cornerstones]
    recommendation: Recommendation | None
    safe_depths: list[SafeDepth]
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    fraction: float = DEFAULT_FRACTION  # the top share the agreement, recommendation and heatmap boxes use
    no_selection: str = ""  # why there is no recommendation, when there is none
    charts: dict[str, list[str]] = field(default_factory=dict)  # input source -> the PNG charts beside it


def charts_beside(source: str) -> list[str]:
    """The PNG charts the command that wrote ``source`` left beside it: the run folder's (``bar.png``,
    ``heatmap.png``, ``loss.png``) for a run file; for a prune-curve curve (``OUT/<task>/<label>/pruning.json``)
    also its task's ``curve.png``. Paths as ``source`` is written (relative where it is); none for a result
    file named alone, whose folder holds other things."""
    from layerscope.viz.report.load import RUN_FILES

    path = Path(source)
    if path.name not in RUN_FILES:
        return []
    found = sorted(path.parent.glob("*.png"))
    if path.name == "pruning.json" and (path.parent.parent / "curves.json").is_file():
        found += [path.parent.parent / "curve.png"]
    return [str(f) for f in found if f.is_file()]


def build_report(
    inputs: Inputs,
    *,
    fraction: float = DEFAULT_FRACTION,
    ranking: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    ignore_fingerprint: bool = False,
) -> Report:
    """The report of ``inputs``: refuses inputs of different models (one line); ``ignore_fingerprint``:
    inputs whose weights fingerprints differ (one model in two dtypes) are reported as one model's."""
    top_k_count(fraction, 1)  # range check, one line
    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
        raise ConfigError(f"--tolerance {tolerance!r} must be in [0, 1)")
    model = _one_model(inputs, ignore_fingerprint)
    results = [Result(lab, src, imp) for lab, src, imp in inputs.results]
    notes = top_notes(inputs, results)
    comparison = agreement(results, fraction, notes, ignore_fingerprint)
    recommendation, no_selection = _recommendation(results, fraction, ranking)
    return Report(
        model=model,
        results=results,
        finetunes=inputs.finetunes,
        prunings=inputs.prunings,
        agreement=comparison,
        cornerstones=[c for r in results if (c := _cornerstones(r)) is not None],
        recommendation=recommendation,
        no_selection=no_selection,
        fraction=fraction,
        safe_depths=[d for p in inputs.prunings if (d := safe_depth(p, tolerance)) is not None],
        notes=notes,
        sources=(sources := [r.source for r in results] + [x.source for x in (*inputs.finetunes, *inputs.prunings)]),
        charts={src: found for src in sources if (found := charts_beside(src))},
    )


# ----------------------------------------------------------------------------- one model


def _one_model(inputs: Inputs, ignore_fingerprint: bool = False) -> dict[str, Any]:
    """The model every input belongs to (merged details), or a ConfigError naming two that differ."""
    items = [(src, imp.model) for _, src, imp in inputs.results]
    items += [(f.source, f.model) for f in inputs.finetunes] + [(p.source, p.model) for p in inputs.prunings]
    merged = dict(items[0][1])
    first: dict[str, tuple[Any, str, Any]] = {}  # key -> (value, the input that gave it first, that input's model name)
    for src, m in items:
        for key in ("n_blocks", "architecture") if ignore_fingerprint else ("fingerprint", "n_blocks", "architecture"):
            b = m.get(key)
            if not b:
                continue
            # an older result's exact fingerprint and a bfloat16-precision one do not compare: each kind apart
            bucket = f"{key}/{m.get('fingerprint_precision')}" if key == "fingerprint" else key
            a, a_src, a_name = first.setdefault(bucket, (b, src, m.get("name")))
            if a != b:
                same = key == "fingerprint" and a_name == m.get("name")
                hint = (
                    same_model_hint(m, "--ignore-fingerprint")  # both of one kind
                    if same
                    else "make one report per model"
                )
                raise ConfigError(
                    f"results of different models in one report: {a_src} is {a_name} ({key} {a}), "
                    f"{src} is {m.get('name')} ({key} {b}); {hint}"
                )
        for k, v in m.items():
            if k != "fingerprint_precision":  # the kind of the first input's fingerprint, the one merged
                merged.setdefault(k, v)
    merged.setdefault("n_params", merged.get("parameters") or _base_params(inputs.finetunes))
    return merged


def _base_params(runs: list[FinetuneRun]) -> int | None:
    """The model's own parameter count, from a fine-tuning report (LoRA adds its trainable adapters)."""
    for f in runs:
        total, trainable = f.report.get("total_params"), f.report.get("trainable_params")
        if isinstance(total, int) and isinstance(trainable, int):
            return total - trainable if f.report.get("method") == "lora" else total
    return None


# ----------------------------------------------------------------------------- cornerstones


def _cornerstones(r: Result) -> Cornerstones | None:
    from layerscope.methods.ablation import at_chance

    ex, imp = r.imp.extras, r.imp
    if "cornerstones" not in ex or not isinstance(ex.get("removed_value"), list):
        return None
    rule_cfg = imp.method_config.get("cornerstone_rule") or {}
    a, rel = rule_cfg.get("abs_margin"), rule_cfg.get("rel_margin")
    rule = (
        "a player is a cornerstone when the model with it removed scores within max("
        f"{a if a is not None else '?'}, {rel if rel is not None else '?'} x (full - chance)) of chance"
    )
    removed = [(p, float(v)) for p, v in zip(imp.players, ex["removed_value"]) if v is not None]
    full, chance = number_or_none(imp.baseline.get("full")), number_or_none(imp.baseline.get("chance"))
    margins = {k: v for k, v in (("abs_margin", a), ("rel_margin", rel)) if isinstance(v, (int, float))}
    return Cornerstones(
        label=r.label,
        rule=rule,
        players=list(ex["cornerstones"]),
        removed=sorted(removed, key=lambda pv: pv[1]),
        full=full,
        chance=chance,
        at_chance=full is not None and chance is not None and at_chance(full, chance, **margins),
    )


# ----------------------------------------------------------------------------- what to do


def choose_ranking(results: list[Result], label: str | None) -> Result | None:
    """The ranking named ``label``; else ILA's; else the first module-level one; else the first; among
    the results that have an order (not every score the same) and whose full model beats chance, where
    any do (the page warns of the others at its top: it must not go on to recommend one of them)."""
    if not results:
        return None
    if label is not None:
        for r in results:
            if r.label == label:
                return r
        # a label is its run's path below the folder the runs share (runs/ila): its last parts name it too,
        # where they name one result alone (--ranking ila)
        ends = [r for r in results if r.label.endswith("/" + label.strip("/"))]
        if len(ends) == 1:
            return ends[0]
        raise ConfigError(f"--ranking {label!r} is none of the results ({', '.join(r.label for r in results)})")
    from layerscope.viz.report.top_notes import result_at_chance_note

    ordered = [r for r in results if not no_order(r.imp.scores)]
    results = [r for r in ordered if result_at_chance_note(r) is None] or ordered or results
    for pick in (lambda r: r.imp.method == "ila", lambda r: r.imp.granularity == "module", lambda r: True):
        found = [r for r in results if pick(r)]
        if found:
            return found[0]
    return None


def _recommendation(results: list[Result], fraction: float, label: str | None) -> tuple[Recommendation | None, str]:
    """The recommended selection, or None and why there is none (said under "What to do")."""
    from layerscope.core.ties import tie_warning
    from layerscope.training.export import describe, export_selection
    from layerscope.training.inputs import choose_modules

    chosen = choose_ranking(results, label)
    if chosen is None:
        return None, "no importance result among the inputs"
    unresolved = _names_no_modules(chosen)
    if unresolved:
        return None, f"{chosen.label}: {unresolved}"
    try:
        selection, layer_map = choose_modules(chosen.imp, "top", fraction, where=chosen.source)
    except ConfigError as e:
        return None, f"{chosen.label}: {e}"
    header = describe(selection, layer_map, chosen.source)
    snippets = {fmt: export_selection(selection, layer_map, fmt, header=header).text for fmt in EXPORT_FORMATS}
    # the warning finetune and export print: shown beside the selection it is about; a ranking with no
    # order at all is warned of at the top of the page (top_notes), so here it is only pointed to
    tied = tie_warning(chosen.imp, selection.players)
    if tied and no_order(chosen.imp.scores):
        tied = (
            f"this selection follows layer order, not importance: every score of {chosen.label} is the same "
            "(see the warning at the top)"
        )
    rec = Recommendation(
        label=chosen.label,
        source=chosen.source,
        method=chosen.imp.method,
        fraction=fraction,
        players=selection.players,
        modules=selection.modules,
        n_modules_total=selection.n_modules_total,
        blocks=selection.blocks,
        commands=_commands(chosen, fraction),
        snippets=snippets,
        notes=[tied] if tied else [],
        n_ranked=len(chosen.imp.players),
    )
    return rec, ""


def _names_no_modules(r: Result) -> str | None:
    """Why a block or sub-layer ranking of a family whose linear-module names layerscope does not know
    cannot become a module selection here: ``export`` and ``finetune`` find them in the model given with
    --model, and a report reads no model."""
    from layerscope.core.player_names import with_article
    from layerscope.training.virtual_layermap import KNOWN_LINEARS

    model_type = str(r.imp.model.get("model_type") or "").lower()
    if r.imp.granularity == "module" or model_type in KNOWN_LINEARS:
        return None
    src = shlex.quote(r.source)
    of = f"a {model_type!r} model" if model_type else "a model of unknown type"
    return (
        f"{with_article(r.imp.granularity)} ranking of {of} names no linear modules, and a report reads no model "
        f"to find them in; select from it with `layerscope export {src} --to peft --model MODEL` or "
        f"`layerscope finetune --model MODEL --importance {src}`, or add a module-level result (ILA's) to the report"
    )


def _commands(r: Result, fraction: float) -> list[str]:
    src, name = shlex.quote(r.source), str(r.imp.model.get("name") or "")
    sel = f"--mode top --fraction {fraction:g}"
    # a result records the model's own name; a local folder's ("stories260K") does not load as written
    loads = name.lower() in ("smollm2-135m-instruct",) or "/" in name
    model = shlex.quote(name) if loads else "MODEL"
    out = [f"layerscope finetune --model {model} --importance {src} {sel} --data YOUR_SFT_DATA.json --out runs/ft_top"]
    if not loads:
        out[0] += f"  # MODEL: the folder or hub id {name or 'the model'} was loaded from"
    out += [
        f"layerscope export {src} --to {fmt} {sel} --out {name}"
        for fmt, name in (("peft", "adapter_config.json"), ("axolotl", "axolotl.yaml"), ("llama-factory", "lf.yaml"))
    ]
    return out


def safe_depth(curve: PruningCurve, tolerance: float = DEFAULT_TOLERANCE) -> SafeDepth | None:
    """The deepest point that, with every shallower one, keeps ``1 - tolerance`` of the margin above chance."""
    points = sorted(zip(curve.n_removed, curve.values, curve.removed or [[]] * len(curve.values)))
    full = curve_full(curve)
    chance = number_or_none(curve.baseline.get("chance"))
    if full is None or chance is None or full <= chance:
        return None
    threshold = full - tolerance * (full - chance)
    depth, removed = 0, []
    for n, v, gone in points:
        if v < threshold:
            break
        depth, removed = n, list(gone)
    return SafeDepth(
        label=curve.label,
        depth=depth,
        removed=removed,
        threshold=threshold,
        rule=f"deepest point at which the value stays >= full - {tolerance:g} x (full - chance) = {threshold:.4g}, "
        "and so does every shallower point",
        unit=curve.unit,
        measured_on=curve.measured_on,
    )
