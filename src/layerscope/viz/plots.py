"""Figures drawn from :class:`LayerImportance` results only (never from models or data).

Uses matplotlib's object API with the Agg canvas, so nothing depends on a display or on
pyplot's global state; files are written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from layerscope.core.atomic import atomic_path
from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance
from layerscope.core.layermap import Player, records_from_names
from layerscope.core.player_names import split_name
from layerscope.viz.literal_text import literal_text

COLOURS = {"attn": "#4C72B0", "mlp": "#DD8452", "block": "#55A868", "expert": "#8172B3"}


def player_kind(name: str, granularity: str) -> str:
    """ "attn" / "mlp" / "block" from a player's stable name."""
    return records_from_names([name], granularity)[0].kind


def short_label(name: str, granularity: str) -> str:
    """Compact tick label: "3" for a block, "a3"/"m3" for sub-layers, "q_proj.3" for modules."""
    return _label(records_from_names([name], granularity)[0], granularity)


def module_rows(records: Sequence[Player]) -> list[str]:
    """Each module player's row name: its type ("q_proj"), or its name below the block
    ("attn.c_proj") where a block holds two modules of one type (GPT-2's attention and MLP
    c_proj, a MoE's experts), so no two players of a block share a heatmap cell or a label."""
    seen: set[tuple[int, str]] = set()
    for p in records:
        if (p.block, p.module_type) in seen:
            return [split_name(p.name)[2] for p in records]  # type: ignore[index]  (a player's name has its block)
        seen.add((p.block, p.module_type))
    return [p.module_type for p in records]


def _label(player: Player, granularity: str) -> str:
    if granularity == "block":
        return str(player.block)
    if granularity == "sublayer":
        return {"attn": "a", "mlp": "m"}[player.kind] + str(player.block)
    if granularity == "expert":  # "e5.3": routed expert 5 of block 3; "shared_expert.3"
        return f"{'e' if player.expert is not None else ''}{player.module_type}.{player.block}"
    return f"{player.module_type}.{player.block}"


def result_title(imp: LayerImportance) -> str:
    """A short figure title, "method - model - data": names only, never a folder path (results made
    before names were stored kept the model as a path: its last component is the name)."""
    model = Path(str(imp.model.get("name") or "model")).name
    data = str(imp.data.get("task") or imp.data.get("source") or "")
    data = data.split(":", 1)[-1] if data.startswith(("task:", "sft:", "text:")) else data
    data = Path(data).stem if Path(data).suffix in (".json", ".jsonl", ".txt", ".csv") else Path(data).name
    return f"{imp.method} - {model}" + (f" - {data}" if data else "")


@literal_text
def bar_chart(
    importance: LayerImportance,
    path: str | Path,
    *,
    what: str = "auto",
    title: str | None = None,
    error_bars: bool = True,
    dpi: int = 120,
) -> Path:
    """One bar per player, coloured by kind (attention / MLP / block), saved to ``path`` (.png, .pdf, .svg).

    ``what``: "scores", or the name of a per-player list in ``extras`` (e.g. "removed_value");
    "auto" plots ``extras["removed_value"]`` for ablation results (the value with each player
    removed, with dashed lines at the full model's value and at chance) and the scores otherwise
    (with error bars from ``stderr`` and, for ablation-style drops, a dashed line at the drop
    that would reach chance).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    imp = importance
    if what == "auto":
        what = "removed_value" if isinstance(imp.extras.get("removed_value"), list) else "scores"
    values, ylabel, err = _bar_values(imp, what, error_bars)
    n = len(values)
    records = imp.player_records()
    kinds = [p.kind for p in records]
    fig = Figure(figsize=(min(max(6.0, 0.16 * n + 2.0), 40.0), 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    _draw_bars(ax, values, kinds, err)
    _draw_reference_lines(ax, _reference_lines(imp, what))
    if imp.granularity == "module":
        _ticks(ax, [f"{row}.{p.block}" for row, p in zip(module_rows(records), records)])
    else:
        _ticks(ax, [_label(p, imp.granularity) for p in records])
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(
        {
            "block": "block",
            "sublayer": "sub-layer (a = attention, m = MLP)",
            "module": "module",
            "expert": "expert (e5.3 = routed expert 5 of block 3)",
        }[imp.granularity]
    )
    ax.set_title(title or result_title(imp), fontsize=10)
    _legend(ax, kinds)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)
    return path


def _draw_bars(ax, values: list[float], kinds: list[str], err: list[float] | None) -> None:
    """One bar per player coloured by its kind; a missing value (NaN) draws as an empty slot."""
    ax.bar(
        list(range(len(values))),
        [0.0 if math.isnan(v) else v for v in values],
        color=[COLOURS[k] for k in kinds],
        width=0.8,
        yerr=err,
        ecolor="#333333",
        capsize=1.5 if err else 0,
        linewidth=0,
    )


def _draw_reference_lines(ax, lines: list[tuple[float, str, str]]) -> None:
    """The dashed reference lines (chance in red) and the zero axis."""
    for y, label, style in lines:
        ax.axhline(
            y, linestyle=style, color="#444444" if "chance" not in label else "#C44E52", linewidth=1.0, label=label
        )
    ax.axhline(0.0, color="black", linewidth=0.5)


def _bar_values(imp: LayerImportance, what: str, error_bars: bool) -> tuple[list[float], str, list[float] | None]:
    """Bar heights (NaN where missing), the y-axis label and the error bars (or None)."""
    if what == "scores":
        values, ylabel = list(imp.scores), _score_label(imp)
        err = list(imp.stderr) if (error_bars and imp.stderr is not None) else None
    else:
        values = imp.extras.get(what)
        if not isinstance(values, list) or len(values) != len(imp.players):
            raise ConfigError(f"result has no per-player extras[{what!r}] to plot")
        ylabel, err = ("value with the player removed" if what == "removed_value" else what), None
    values = [float("nan") if v is None else float(v) for v in values]
    if err is not None:
        err = [0.0 if (e is None or not math.isfinite(e)) else float(e) for e in err]
    return values, ylabel, err


def _legend(ax, kinds: list[str]) -> None:
    from matplotlib.patches import Patch

    handles = [
        Patch(color=COLOURS[k], label={"attn": "attention", "mlp": "MLP"}.get(k, k))
        for k in dict.fromkeys(kinds)
        if k != "block"
    ]
    line_handles, _ = ax.get_legend_handles_labels()
    if handles or line_handles:
        ax.legend(
            handles=handles + line_handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False
        )  # outside the axes: never hides a bar


def _score_label(imp: LayerImportance) -> str:
    if imp.method == "ablation":
        return "drop when removed: v(N) - v(N\\i)"
    if imp.method.startswith("shapley"):
        return "Shapley value"
    if imp.method == "block-influence":
        return "block influence (1 - cos)"
    if imp.method == "angular-distance":
        return "angular distance d(l, l+n)"
    return "importance score"


def _reference_lines(imp: LayerImportance, what: str) -> list[tuple[float, str, str]]:
    full, chance = imp.baseline.get("full"), imp.baseline.get("chance")
    ok = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
    out: list[tuple[float, str, str]] = []
    if what == "removed_value":
        if ok(full):
            out.append((float(full), f"full model ({full:.3g})", "--"))
        if ok(chance):
            out.append((float(chance), f"chance ({chance:.3g})", "--"))
    elif what == "scores" and imp.method == "ablation" and ok(full) and ok(chance):
        out.append((float(full) - float(chance), "drop to chance", "--"))
    return out


def _ticks(ax, labels: Sequence[str]) -> None:
    n = len(labels)
    step = max(1, math.ceil(n / 64))
    ax.set_xticks(list(range(0, n, step)))
    ax.set_xticklabels(labels[::step], rotation=90 if n > 12 else 0, fontsize=7 if n > 24 else 9)
