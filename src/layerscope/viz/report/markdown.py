"""The report as Markdown text (``layerscope report --format md``): the same content as the HTML
page, figures replaced by their numbers, for terminals and pull requests."""

from __future__ import annotations

import math

from layerscope.viz.report import MD_OPENING
from layerscope.viz.report.model import Report, Result, pruning_advice, safe_depth_rules
from layerscope.viz.report.provenance import provenance, selection_spec

TOP_ROWS = 10  # players listed per ranking; the HTML page lists all


def render_markdown(report: Report) -> str:
    m = report.model
    params = m.get("n_params")
    lines = [
        f"{MD_OPENING}{m.get('name', 'model')}",
        "",
        "## Model",
        "",
        f"- name: {m.get('name', '?')}",
        f"- architecture: {m.get('architecture', '?')} ({m.get('model_type', '?')})",
        f"- blocks: {m.get('n_blocks', '?')}",
        f"- parameters: {f'{params:,}' if isinstance(params, int) else 'not recorded in these results'}",
        f"- weights fingerprint: {m.get('fingerprint', '?')}",
        "",
    ]
    lines += [f"> {n}" for n in report.notes] + ([""] if report.notes else [])
    if report.results:  # a folder of pruning curves alone has none: no empty heading
        lines += ["## Results", ""]
    for r in report.results:
        lines += _result(r)
    lines += _agreement(report) + _cornerstones(report) + _pruning(report) + _finetuning(report) + _todo(report)
    lines += ["## Inputs", ""] + [f"- `{s}`" for s in report.sources]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "-"


def _cell(text: object) -> str:
    """A table cell's text: a | would end the cell, a < open an HTML tag (labels are run folder names)."""
    return str(text).replace("|", "\\|").replace("<", "&lt;")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return out + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows] + [""]


def _result(r: Result) -> list[str]:
    imp = r.imp
    lines = [f"### {r.label if r.label == imp.method else f'{r.label}: {imp.method}'}", ""]
    lines += [f"- {k}: {v}" for k, v in provenance(imp)] + [""]
    err = imp.stderr if r.has_error_bars else None
    rows = []
    for rank, p in enumerate(imp.ranking()[:TOP_ROWS], 1):
        i = imp.players.index(p)
        row = [str(rank), p, _fmt(imp.scores[i])]
        rows.append(row + ([_fmt(err[i])] if err else []))
    head = ["rank", "player", "score"] + (["stderr"] if err else [])
    more = len(imp.players) - TOP_ROWS
    return lines + _table(head, rows) + ([f"({more} more players)", ""] if more > 0 else [])


def _matrix(labels: list[str], m: list[list[float]]) -> list[str]:
    """Columns numbered, rows named with their number: as the page and ``compare`` show it."""
    cells = [
        [f"{lab} [{i + 1}]"] + [f"{v:.2f}" if math.isfinite(v) else "n/a" for v in row]
        for i, (lab, row) in enumerate(zip(labels, m))
    ]
    return _table([""] + [f"[{i + 1}]" for i in range(len(labels))], cells)


def _agreement(report: Report) -> list[str]:
    a = report.agreement
    if a is None:
        return []
    lines = ["## Agreement between methods", "", f"Compared at {a.level} level ({a.n_players} players). {a.rule}", ""]
    lines += ["Spearman rank correlation:", ""] + _matrix(a.labels, a.spearman)
    lines += [f"Jaccard overlap of the top {a.fraction:.0%} ({a.k} of {a.n_players}):", ""]
    lines += _matrix(a.labels, a.jaccard)
    lines += [f"Two random top-{a.k} sets would overlap by about {a.random_jaccard:.2f}.", ""]
    return lines + [f"In every method's top {a.k}: {', '.join(a.in_every_top) or 'none'}", ""]


def _cornerstones(report: Report) -> list[str]:
    if not report.cornerstones:
        return []
    lines = ["## Cornerstones", ""]
    for c in report.cornerstones:
        lines += [f"### {c.label}", "", f"Cornerstones: {c.summary}", "", f"Rule: {c.rule}.", ""]
        lines += [f"Value with each removed (full model {_fmt(c.full)}, chance {_fmt(c.chance)}):", ""]
        mark = set(c.players)
        lines += _table(
            ["removed", "value", ""], [[p, _fmt(v), "cornerstone" if p in mark else ""] for p, v in c.removed]
        )
    return lines


def _pruning(report: Report) -> list[str]:
    if not report.prunings:
        return []
    lines = ["## Pruning", ""]
    for p in report.prunings:
        lines += [f"### {p.label}" + (f" (order: {p.ranking})" if p.ranking else ""), ""]
        points = [[str(n), _fmt(v)] for n, v in sorted(zip(p.n_removed, p.values))]
        lines += _table([f"{p.unit} removed", "value"], points)
    if report.safe_depths:
        rows = [[d.label, f"{d.depth} {d.unit}", ", ".join(d.removed) or "-"] for d in report.safe_depths]
        lines += ["Safe depths:", ""] + _table(["order", "safe depth", "removed"], rows)
        lines += [f"Rule: {rule}." for rule in safe_depth_rules(report.safe_depths)] + [""]
    return lines


def _finetuning(report: Report) -> list[str]:
    if not report.finetunes:
        return []
    rows = []
    for f in report.finetunes:
        d, sel = f.report, f.report.get("selection") or {}
        rows.append(
            [
                f.label,
                selection_spec(sel),
                str(d.get("method")),
                str(d.get("trainable_modules", "")),
                f"{d['trainable_params']:,}" if isinstance(d.get("trainable_params"), int) else "-",
                str(d.get("steps", "")),
                _fmt(d.get("heldout_loss_before")),
                _fmt(d.get("heldout_loss")),
                _fmt(d.get("time_per_step_s")),
            ]
        )
    head = ["run", "selection", "method", "modules", "trainable", "steps", "loss before", "loss after", "s/step"]
    return ["## Fine-tuning", ""] + _table(head, rows)


def _todo(report: Report) -> list[str]:
    lines = ["## What to do", ""]
    rec = report.recommendation
    if rec is None:
        lines += ["No fine-tuning selection (no usable ranking among the inputs).", ""]
    else:
        lines += [
            f"Fine-tune the top {rec.fraction:.0%} of {rec.label} ({rec.method}): {len(rec.players)} players, "
            f"{len(rec.modules)} of {rec.n_modules_total} linear modules in blocks {', '.join(map(str, rec.blocks))}.",
            "",
            "```sh",
            *rec.commands,
            "```",
            "",
        ]
        for fmt, text in rec.snippets.items():
            lines += [f"{fmt}:", "", "```" + ("json" if fmt == "peft" else "yaml"), text.rstrip("\n"), "```", ""]
        lines += [f"> {n}" for n in rec.notes]
    for advice in pruning_advice(report.safe_depths):
        lines += [f"Pruning: {advice}.", ""]
    return lines
