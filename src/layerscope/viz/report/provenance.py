"""How each input of a report was made (method, data, settings, seed, cost, versions): the rows both
renderers print under a result, and a fine-tuning run's selection in its short form."""

from __future__ import annotations

from typing import Any

from layerscope.core.importance import LayerImportance, data_label
from layerscope.viz.report.load import is_number, number_or_none


def provenance(imp: LayerImportance) -> list[tuple[str, str]]:
    """(field, text) rows saying how a result was made."""
    d = imp.data
    data = data_label(d) or "-"
    items = next((d[k] for k in ("n_items", "n_sequences", "examples", "n_examples") if d.get(k) is not None), None)
    seconds = imp.timings.get("seconds", imp.timings.get("total_s"))  # ILA: stage1_s + stage2_s = total_s
    if seconds is None and imp.timings:
        seconds = sum(v for k, v in imp.timings.items() if k.endswith("_s") and is_number(v))
    rows = [
        ("method", f"{imp.method} ({imp.granularity}, {len(imp.players)} players)"),
        ("data / task", str(data)),
        ("items", "-" if items is None else str(items)),
        ("settings", ", ".join(f"{k}={_short(v)}" for k, v in imp.method_config.items()) or "-"),
        ("seed", "-" if imp.seed is None else str(imp.seed)),
        ("evaluations", "-" if imp.n_evaluations is None else str(imp.n_evaluations)),
        ("time taken", _time_taken(imp, seconds)),
        ("created", imp.created),
        ("versions", ", ".join(f"{k} {v}" for k, v in imp.versions.items()) or "-"),
    ]
    full, chance = number_or_none(imp.baseline.get("full")), number_or_none(imp.baseline.get("chance"))
    if full is not None:
        rows.append(("full model value", f"{full:.4g}" + (f" (chance {chance:.4g})" if chance is not None else "")))
    return rows


def _time_taken(imp: LayerImportance, seconds: Any) -> str:
    """The run's seconds; a resumed run's cover only what it computed itself, and say so."""
    text = "-" if not seconds else f"{seconds:.1f} s"
    resumed = ((imp.extras or {}).get("engine") or {}).get("resumed")
    if resumed:
        text += f" (this run's; {resumed} coalitions were taken from an earlier run's log)"
    return text


def selection_spec(sel: dict[str, Any]) -> str:
    """A fine-tuning report's selection in the short form ``mode fraction [@min_block]``."""
    cut = f" @{sel['min_block']}" if sel.get("min_block") else ""
    return f"{sel.get('mode', '?')} {sel.get('fraction', '')}{cut}"


def _short(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 60 else text[:57] + "..."
