"""The fine-tuning runs as one table, the same on the page and in the Markdown text: each run's
selection and cost, its held-out loss before and after, and beside it the zero-shot tasks the trained
model was scored on (``finetune --eval-tasks``: ``eval.<task>`` in its report.json)."""

from __future__ import annotations

from typing import Any

from layerscope.viz.report.load import FinetuneRun, is_number
from layerscope.viz.report.provenance import selection_spec

HEAD = ["run", "selection", "method", "modules", "trainable", "steps", "loss before", "loss after", "s/step"]
NUMERIC_FROM = 3  # columns from this one on hold numbers (right-aligned on the page)
EVAL_NOTE = (
    "task columns: the trained model's score on each zero-shot task (finetune --eval-tasks), on n items, "
    "beside the chance score of guessing"
)


def eval_columns(runs: list[FinetuneRun]) -> list[tuple[str, str]]:
    """(task, metric) of every task any run was evaluated on, in the order first met."""
    seen: dict[tuple[str, str], None] = {}
    for f in runs:
        for task, r in _evals(f).items():
            seen[(task, str(r.get("metric") or "value"))] = None
    return list(seen)


def finetune_table(runs: list[FinetuneRun]) -> tuple[list[str], list[list[tuple[str, float | None]]]]:
    """(head, rows): each cell is (text, number to sort by, or None)."""
    tasks = eval_columns(runs)
    head = HEAD + [f"{task} {metric} after" for task, metric in tasks]
    rows = []
    for f in runs:
        d, sel = f.report, f.report.get("selection") or {}
        src = (sel.get("source") or {}).get("method")
        params = d.get("trainable_params")
        row = [
            (f.label, None),
            (selection_spec(sel) + (f" ({src})" if src else ""), None),
            (str(d.get("method") or "-"), None),
            (str(d.get("trainable_modules", "")), _sortable(d.get("trainable_modules"))),
            (f"{params:,}" if isinstance(params, int) else "-", _sortable(params)),
            (str(d.get("steps", "")), _sortable(d.get("steps"))),
            *[_number(d.get(k)) for k in ("heldout_loss_before", "heldout_loss", "time_per_step_s")],
        ]
        evals = _evals(f)
        for task, metric in tasks:
            r = evals.get(task)
            row.append(_eval_cell(r) if r is not None and str(r.get("metric") or "value") == metric else ("-", None))
        rows.append(row)
    return head, rows


def _evals(f: FinetuneRun) -> dict[str, dict[str, Any]]:
    ev = f.report.get("eval")
    return {str(k): v for k, v in ev.items() if isinstance(v, dict)} if isinstance(ev, dict) else {}


def _eval_cell(r: dict[str, Any]) -> tuple[str, float | None]:
    """ "0.41 (n=200, chance 0.25)": a task score says little without its items and its chance."""
    value = r.get("value")
    if not is_number(value):
        return "-", None
    extra = []
    if isinstance(r.get("n"), int):
        extra.append(f"n={r['n']}")
    if is_number(r.get("chance")):
        extra.append(f"chance {r['chance']:.3g}")
    return f"{value:.4g}" + (f" ({', '.join(extra)})" if extra else ""), float(value)


def _number(v: Any) -> tuple[str, float | None]:
    return (f"{v:.4g}", float(v)) if is_number(v) else ("-", None)


def _sortable(v: Any) -> float | None:
    return float(v) if is_number(v) else None
