"""The warnings at the top of a report: runs left out because they cannot be read, what makes an input's
numbers mean little (a full model at chance, scores that ties rather than importance order, players with
no score, ILA stopped before stable, modules no gradient reached) and inputs whose model may be another's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from layerscope.viz.report.load import Inputs, PruningCurve, curve_full, number_or_none

if TYPE_CHECKING:
    from layerscope.viz.report.model import Result


def top_notes(inputs: Inputs, results: list[Result]) -> list[str]:
    """Every warning the report's inputs call for: runs left out, results, curves, then model names."""
    checks = (result_at_chance_note, _tied_note, _unscored_note, _unstable_note, _untrained_note)
    notes = [n for r in results for note in checks if (n := note(r))]
    skipped = [f"left out, cannot be read: {why}" for why in inputs.skipped]
    return skipped + notes + _curves_at_chance_notes(inputs.prunings) + _unfingerprinted_name_notes(inputs)


def _at_chance_note(label: str, full: float | None, chance: float | None, consequence: str) -> str | None:
    """A warning when the full model is no better than chance on the value measured: what was measured
    on it is noise (``consequence`` says what, in words)."""
    from layerscope.methods.ablation import at_chance  # the rule export, finetune and ablate use

    if full is None or chance is None or not at_chance(full, chance):
        return None
    return f"{label}: the full model scores {full:.4g}, no better than chance ({chance:.4g}); {consequence}"


def result_at_chance_note(r: Result) -> str | None:
    full, chance = number_or_none(r.imp.baseline.get("full")), number_or_none(r.imp.baseline.get("chance"))
    return _at_chance_note(r.label, full, chance, "its scores mean little")


NAMED_CURVES = 4  # curves named in one at-chance note; the rest are counted


def _curves_at_chance_notes(curves: list[PruningCurve]) -> list[str]:
    """The at-chance warning for pruning curves: one per baseline (every curve of one prune-curve task
    shares its full model and chance), naming the curves."""
    groups: dict[tuple[float | None, float | None], list[str]] = {}
    for c in curves:
        groups.setdefault((curve_full(c), number_or_none(c.baseline.get("chance"))), []).append(c.label)
    notes = []
    for (full, chance), labels in groups.items():
        names = ", ".join(labels[:NAMED_CURVES])
        if len(labels) > NAMED_CURVES:
            names += f" and {len(labels) - NAMED_CURVES} more"
        label = f"pruning curve{'s' if len(labels) > 1 else ''} {names}"
        what = "the curves move around chance, so they and any safe depth mean little"
        if (note := _at_chance_note(label, full, chance, what)) is not None:
            notes.append(note)
    return notes


def _tied_note(r: Result) -> str | None:
    """A ranking whose scores are all the same, or mostly tied (``core.ties.ranking_tie_warning``): its
    order is layer order, which every figure, grid and selection drawn from it then shows as importance."""
    import math
    from dataclasses import replace

    from layerscope.core.ties import ranking_tie_warning

    imp = r.imp
    scored = [i for i, s in enumerate(imp.scores) if math.isfinite(s)]
    if len(scored) < len(imp.scores):  # players with no score tie with each other: that is not an order's tie
        if not scored:
            return None  # _unscored_note says it
        keep = lambda xs: [xs[i] for i in scored]  # noqa: E731
        imp = replace(imp, players=keep(imp.players), scores=keep(imp.scores), stderr=None, extras={})
    warning = ranking_tie_warning(imp)
    return f"{r.label}: {warning}" if warning else None


def _unscored_note(r: Result) -> str | None:
    """Players with no score (NaN): on a page of one result as on a page of many (the agreement's own
    note says what they do to the comparison)."""
    import math

    unknown = sum(1 for s in r.imp.scores if not math.isfinite(s))
    if not unknown:
        return None
    return (
        f"{r.label}: {unknown} of its {len(r.imp.players)} players have no score (NaN): its chart marks them "
        "with a red x (no bar), and its ranking lists them last"
    )


def _unstable_note(r: Result) -> str | None:
    """ILA whose stage 1 stopped at the step cap before the LoRA update became stable (the warning
    ``layerscope ila`` prints): its ranking may change with more steps."""
    ex = r.imp.extras
    stable = ex.get("stage1_stable")  # None: stage 1 was skipped (a saved adapter), or an older result
    if stable is not False and not (stable is None and r.imp.method == "ila" and ex.get("stop_reason") == "max_steps"):
        return None
    step = ex.get("stop_step")
    at = f" (step {step})" if isinstance(step, int) and not isinstance(step, bool) else ""
    return (
        f"{r.label}: ILA stage 1 hit the step cap{at} before becoming stable: its ranking may not be stable; "
        "raise --max-steps or --eps and rerun"
    )


def _untrained_note(r: Result) -> str | None:
    """ILA modules no gradient reached (a zero LoRA update): their gates say nothing about the data."""
    untrained = r.imp.extras.get("untrained_modules") or []
    if not untrained:
        return None
    return (
        f"{r.label}: {len(untrained)} of {len(r.imp.players)} modules got no gradient in ILA stage 1 (e.g. "
        f"{untrained[0]}); their scores come from the sparsity penalty alone"
    )


def _unfingerprinted_name_notes(inputs: Inputs) -> list[str]:
    """An input without a weights fingerprint was checked on block count and architecture alone,
    which two models of one family share: where its model name differs from another input's, the
    report says so (names alone may differ for one model, "default" and its own name, so it is not
    refused)."""
    items = [(src, imp.model) for _, src, imp in inputs.results]
    items += [(f.source, f.model) for f in inputs.finetunes] + [(p.source, p.model) for p in inputs.prunings]

    def own(name: Any) -> str:  # "HuggingFaceTB/SmolLM2-135M-Instruct" is "SmolLM2-135M-Instruct"
        return str(name).rsplit("/", 1)[-1].lower() if name else ""

    for src, m in items:
        if m.get("fingerprint") or not own(m.get("name")):
            continue
        other = next(((s, o) for s, o in items if own(o.get("name")) not in ("", own(m.get("name")))), None)
        if other is not None:
            return [
                f"{src} carries no weights fingerprint and names the model {m.get('name')}, while {other[0]} "
                f"names {other[1].get('name')}: check that they are one model"
            ]
    return []
