"""Figures drawn from :class:`LayerImportance` results only (never from models or data).

Uses matplotlib's object API with the Agg canvas, so nothing depends on a display or on
pyplot's global state; files are written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from layerscope.core.atomic import atomic_path
from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance, data_label
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
    label = data_label(imp.data)
    kind, rest = label.split(":", 1) if label.startswith(("task:", "sft:", "text:", "loss:")) else ("", label)
    data = Path(rest).stem if Path(rest).suffix in (".json", ".jsonl", ".txt", ".csv") else Path(rest).name
    data = f"loss {data}" if kind == "loss" else data  # two loss runs on other files read apart
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
    max_width: float = 40.0,
) -> Path:
    """One bar per player, coloured by kind (attention / MLP / block), saved to ``path`` (.png, .pdf, .svg).
    See :func:`bar_figure`."""
    fig = bar_figure(importance, what=what, title=title, error_bars=error_bars, dpi=dpi, max_width=max_width)
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)
    return path


@literal_text
def bar_figure(
    imp: LayerImportance,
    *,
    what: str = "auto",
    title: str | None = None,
    error_bars: bool = True,
    dpi: int = 120,
    max_width: float = 40.0,
):
    """The bar chart as a matplotlib ``Figure``.

    ``what``: "scores", or the name of a per-player list in ``extras`` (e.g. "removed_value", the
    value with each player removed, drawn with dashed lines at the full model's value and at
    chance). "auto" is the scores, so that every figure of one result (the run's own chart,
    ``layerscope plot``, the report) reads the same way: higher = more important. Scores get
    error bars from ``stderr`` and, for ablation, a dashed line at the drop that reaches chance.
    One or two bars far outside the rest (:func:`outliers`) are clipped at the axis edge, their
    values written there, so the others stay readable. A player with no score (NaN) gets a red x on
    the zero line, not an empty slot that reads as a score of zero. ``max_width`` (inches) caps the
    figure's width (a page that shrinks a wider one shrinks its text with it).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if what == "auto":
        what = "scores"
    values, ylabel, err = _bar_values(imp, what, error_bars)
    n = len(values)
    records = imp.player_records()
    kinds = [p.kind for p in records]
    fig = Figure(figsize=(min(max(6.0, 0.16 * n + 2.0), max_width), 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    clipped = outliers(values)
    limits = _clipped_limits(values, err, clipped)
    if limits:  # the axis always holds zero: an outlier between zero and the rest is on it, not clipped
        clipped = [i for i in clipped if not limits[0] <= values[i] <= limits[1]]
        limits = _clipped_limits(values, err, clipped)
    _draw_bars(ax, values, kinds, err, clipped, limits)
    _draw_reference_lines(ax, _reference_lines(imp, what), limits)
    if imp.granularity == "module":
        _ticks(ax, [f"{row}.{p.block}" for row, p in zip(module_rows(records), records)])
    else:
        _ticks(ax, [_label(p, imp.granularity) for p in records])
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_xlabel(
        {
            "block": "block",
            "sublayer": "sub-layer (a = attention, m = MLP)",
            "module": "module",
            "expert": "expert (e5.3 = routed expert 5 of block 3)",
        }[imp.granularity]
    )
    ax.set_title(title or result_title(imp), fontsize=10)
    _legend(ax, kinds, clipped=bool(clipped))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


# A value this many interquartile ranges (of the others) beyond the others' quartiles squeezes
# them into a sliver of the axis or colour scale: such values are clipped, their numbers written.
OUTLIER_IQR = 5.0


def outliers(values: Sequence[float], max_count: int = 2) -> list[int]:
    """Indices of at most ``max_count`` values far outside the rest: of the ``max_count`` values
    farthest from the median, those beyond ``OUTLIER_IQR`` x the interquartile range of the others
    from the others' quartiles (and beyond every value kept), provided the values kept span at most
    half the whole range. [] with fewer than 8 finite values, too few to call one an outlier, or
    when the others do not vary."""
    v = np.asarray([math.nan if x is None else float(x) for x in values])
    idx = np.flatnonzero(np.isfinite(v))
    if len(idx) < 8 or max_count < 1:
        return []
    far = idx[np.argsort(-np.abs(v[idx] - np.median(v[idx])), kind="stable")][:max_count]
    rest = np.setdiff1d(idx, far)
    q1, q3 = np.percentile(v[rest], [25, 75])
    scale = (q3 - q1) or np.ptp(v[rest])
    if scale == 0:
        return []
    out = {int(i) for i in far if v[i] > q3 + OUTLIER_IQR * scale or v[i] < q1 - OUTLIER_IQR * scale}
    kept = v[[i for i in idx if i not in out]]
    # a value tied with one kept is on the axis anyway: clipping it would hide nothing
    out = {i for i in out if v[i] > kept.max() or v[i] < kept.min()}
    # a long tail (ILA's open gates) is no outlier: clip only where it at least doubles the others' room
    return sorted(out) if out and np.ptp(kept) <= np.ptp(v[idx]) / 2 else []


def _clipped_limits(values: list[float], err: list[float] | None, clipped: list[int]) -> tuple[float, float] | None:
    """The y-range of the bars not clipped (with their error bars and the zero line), padded; None
    when nothing is clipped (matplotlib's own limits)."""
    if not clipped:
        return None
    e = err or [0.0] * len(values)
    kept = [(v - e[i], v + e[i]) for i, v in enumerate(values) if i not in clipped and math.isfinite(v)]
    lo, hi = min(0.0, *(a for a, _ in kept)), max(0.0, *(b for _, b in kept))
    pad = 0.06 * (hi - lo)  # none on the side of the zero line, where bars start
    return lo - (pad if lo < 0 else 0.0), hi + (pad if hi > 0 else 0.0)


def _draw_bars(
    ax,
    values: list[float],
    kinds: list[str],
    err: list[float] | None,
    clipped: list[int] = (),
    limits: tuple[float, float] | None = None,
) -> None:
    """One bar per player coloured by its kind; a missing value (NaN) draws as a red x on the zero line
    (an empty slot read as zero). A clipped bar ends at the axis edge, hatched, with its value written there."""
    heights = [0.0 if math.isnan(v) else v for v in values]
    if limits:
        heights = [min(max(h, limits[0]), limits[1]) for h in heights]
        if err:
            err = [0.0 if i in clipped else x for i, x in enumerate(err)]
    bars = ax.bar(
        list(range(len(values))),
        heights,
        color=[COLOURS[k] for k in kinds],
        width=0.8,
        yerr=err,
        ecolor="#333333",
        capsize=1.5 if err and len(values) <= 100 else 0,
        linewidth=0,
    )
    missing = [i for i, v in enumerate(values) if math.isnan(v)]
    if missing:
        ax.plot(missing, [0.0] * len(missing), "x", color="#C44E52", ms=7, mew=1.6, label="no score (NaN)")
    if not limits:
        return
    ax.set_ylim(*limits)
    for i in clipped:
        bars[i].set_hatch("///")
        bars[i].set_edgecolor("white")
        top = values[i] > limits[1]
        ax.annotate(
            f"{values[i]:.3g}",
            (i, limits[1] if top else limits[0]),
            xytext=(0, -3 if top else 3),
            textcoords="offset points",
            rotation=90 if len(values) > 12 else 0,
            ha="center",
            va="top" if top else "bottom",
            fontsize=7,
            bbox={"boxstyle": "square,pad=0.15", "fc": "white", "ec": "0.3", "lw": 0.5},
        )


def _draw_reference_lines(ax, lines: list[tuple[float, str, str]], limits: tuple[float, float] | None = None) -> None:
    """The dashed reference lines (chance in red) and the zero axis; a line beyond a clipped axis
    stays in the legend, marked so."""
    for y, label, style in lines:
        if limits and not limits[0] <= y <= limits[1]:
            label += ", off the axis"
        ax.axhline(
            y, linestyle=style, color="#444444" if "chance" not in label else "#C44E52", linewidth=1.0, label=label
        )
    ax.axhline(0.0, color="black", linewidth=0.5)


def _bar_values(imp: LayerImportance, what: str, error_bars: bool) -> tuple[list[float], str, list[float] | None]:
    """Bar heights (NaN where missing), the y-axis label and the error bars (or None)."""
    if what == "scores":
        values, ylabel = list(imp.scores), score_label(imp)
        err = list(imp.stderr) if (error_bars and imp.stderr is not None) else None
    else:
        values = imp.extras.get(what)
        if not isinstance(values, list) or len(values) != len(imp.players):
            raise ConfigError(f"result has no per-player extras[{what!r}] to plot")
        ylabel, err = (_removed_label(imp) if what == "removed_value" else what), None
    values = [float("nan") if v is None else float(v) for v in values]
    if err is not None:
        err = [0.0 if (e is None or not math.isfinite(e)) else float(e) for e in err]
    return values, ylabel, err


def _legend(ax, kinds: list[str], clipped: bool = False) -> None:
    from matplotlib.patches import Patch

    handles = [
        Patch(color=COLOURS[k], label={"attn": "attention", "mlp": "MLP"}.get(k, k))
        for k in dict.fromkeys(kinds)
        if k != "block"
    ]
    if clipped:  # the note that the axis does not reach every bar
        handles.append(
            Patch(facecolor="0.6", edgecolor="white", hatch="///", label="clipped at the axis\n(value written)")
        )
    line_handles, _ = ax.get_legend_handles_labels()
    if handles or line_handles:
        ax.legend(
            handles=handles + line_handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False
        )  # outside the axes: never hides a bar


MORE = "higher = more important"


def metric_of(imp: LayerImportance) -> str | None:
    """The value a task measured (acc_norm, -loss, ...), as the result's data records it."""
    metric = imp.data.get("metric")
    if metric:
        return str(metric)
    return "-loss" if imp.data.get("task") == "loss" else None


def score_label(imp: LayerImportance) -> str:
    """What a result's scores are and which way is important, for an axis or colour bar: the
    result's own ``extras["score_meaning"]`` where it has one (ILA), else by method, naming the
    task's metric."""
    meaning = imp.extras.get("score_meaning")
    if isinstance(meaning, str) and meaning.strip():
        lines = [part.strip() for part in meaning.split(";") if part.strip()]
        return "\n".join(lines if "important" in meaning else [*lines, f"({MORE})"])
    metric = metric_of(imp) or "value"
    if imp.method == "ablation" and metric == "-loss":  # "a drop in -loss" reads better as what it is
        return f"loss increase when removed\nloss(all but it) - loss(all) ({MORE})"
    if imp.method == "ablation":
        return f"drop in {metric} when removed\nv(all) - v(all but it) ({MORE})"
    if imp.method.startswith("shapley"):
        return f"Shapley value of {metric}\n({MORE})"
    if imp.method == "block-influence":
        return f"block influence: 1 - cos(block input, output)\n({MORE})"
    if imp.method == "angular-distance":
        n = imp.method_config.get("window", "n")
        return f"angular distance d(l, l+{n}) = arccos(cos)/pi\n({MORE}; lowest = pruning candidates)"
    return f"importance score\n({MORE})"


def _removed_label(imp: LayerImportance) -> str:
    return f"{metric_of(imp) or 'value'} with the player removed\n(lower = more important)"


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
        out.append((float(full) - float(chance), f"drop to chance ({full - chance:.3g})", "--"))
    return out


def _ticks(ax, labels: Sequence[str]) -> None:
    n = len(labels)
    step = max(1, math.ceil(n / 64))
    ax.set_xticks(list(range(0, n, step)))
    ax.set_xticklabels(labels[::step], rotation=90 if n > 12 else 0, fontsize=7 if n > 24 else 9)
