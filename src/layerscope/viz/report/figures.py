"""The report's figures as ``data:`` URIs (SVG), so the page needs no file beside it.

Rankings and module heatmaps are drawn by the same code as ``layerscope plot`` (``viz.plots``,
``viz.heatmap``), written to a private temporary folder and read back; the pruning and
fine-tuning figures exist only here. Each figure is an ``<img>`` of its own document, so the
ids matplotlib writes into one SVG cannot clash with another's.
"""

from __future__ import annotations

import base64
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

from layerscope.core.importance import LayerImportance
from layerscope.viz.literal_text import literal_text
from layerscope.viz.report.load import FinetuneRun, PruningCurve, curve_full, is_number
from layerscope.viz.report.model import SafeDepth
from layerscope.viz.report.wording import measure_label

# Widest figure on the page, in inches. The page is about 1070 px wide and an SVG inch is 96 px, so a
# figure up to ~11 in shows at its own size: its 7-9 pt text stays legible. A 200-block model's 40-inch
# bar chart shrunk to the page had text a few pixels tall.
MAX_WIDTH = 11.0


def data_uri(svg: bytes) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")


def _via_file(draw: Callable[[Path], object]) -> str:
    """Run ``draw(path)`` on a temporary .svg path and return the file as a data URI."""
    with tempfile.TemporaryDirectory(prefix="layerscope-report-") as tmp:
        path = Path(tmp) / "figure.svg"
        draw(path)
        return data_uri(path.read_bytes())


def ranking_figure(imp: LayerImportance, fraction: float) -> str:
    """Bars of the scores (error bars from stderr, the drop-to-chance line for ablation); a
    module-type x block heatmap for module-level results, its top ``fraction`` boxed (the report's
    --fraction, as its agreement and recommendation use)."""
    if imp.granularity == "module":
        from layerscope.viz.heatmap import plot_module_heatmap

        return _via_file(lambda p: plot_module_heatmap(imp, p, mark_top=fraction, max_width=MAX_WIDTH))
    from layerscope.viz.plots import bar_chart

    return _via_file(lambda p: bar_chart(imp, p, what="scores", max_width=MAX_WIDTH))


def removed_value_figure(imp: LayerImportance) -> str:
    """The value with each player removed, with the full model's value and chance as lines."""
    from layerscope.viz.plots import bar_chart

    title = "value with each player removed"
    return _via_file(lambda p: bar_chart(imp, p, what="removed_value", title=title, max_width=MAX_WIDTH))


def loss_curves_figure(imp: LayerImportance) -> str | None:
    if not (imp.extras.get("stage1_loss") or imp.extras.get("stage2_loss")):
        return None
    from layerscope.viz.heatmap import plot_loss_curves

    return _via_file(lambda p: plot_loss_curves(imp, p))


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig) -> str:
    from layerscope.viz.heatmap import save_figure

    return _via_file(lambda p: save_figure(fig, p))


def curve_panels(curves: list[PruningCurve]) -> list[list[PruningCurve]]:
    """The curves, one group per task, metric and unit (in the order first met): acc_norm and -loss on one
    axis, or blocks against sub-layers removed, are no one scale."""
    panels: dict[tuple[str, str, str], list[PruningCurve]] = {}
    for c in curves:
        panels.setdefault((c.measured_on, c.metric, c.unit), []).append(c)
    return list(panels.values())


def pruning_figures(curves: list[PruningCurve], depths: list[SafeDepth]) -> list[tuple[str, str]]:
    """(data URI, caption) of one pruning figure per panel (:func:`curve_panels`)."""
    return [
        (pruning_figure(panel, depths), f"{measure_label(panel[0])} as {panel[0].unit} are removed")
        for panel in curve_panels(curves)
        if any(c.values for c in panel)
    ]


def _short_labels(curves: list[PruningCurve]) -> list[str]:
    """The curves' labels without the folder they share ("piqa/ablation" is "ablation" in piqa's panel)."""
    heads = {c.label.split("/", 1)[0] for c in curves}
    if len(heads) == 1 and all("/" in c.label for c in curves):
        return [c.label.split("/", 1)[1] for c in curves]
    return [c.label for c in curves]


@literal_text  # drawn while saved: the labels made then are plain text too
def pruning_figure(curves: list[PruningCurve], depths: list[SafeDepth]) -> str:
    """:func:`pruning_plot` as a data URI."""
    return _save(pruning_plot(curves, depths))


@literal_text
def pruning_plot(curves: list[PruningCurve], depths: list[SafeDepth]):
    """Value against the number of removed players, one line per curve (measured alike: one panel of
    :func:`curve_panels`), with the full model's value, chance and the safe depths, as a ``Figure``."""
    from layerscope.viz.heatmap import plot_pruning_lines

    fig = _figure(8.4, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    with_values = [c for c in curves if c.values]
    shown = dict(zip(_short_labels(with_values), with_values))
    safe = {d.label: d for d in depths}
    lines = [(label, *map(list, zip(*sorted(zip(c.n_removed, c.values))))) for label, c in shown.items()]
    control = [c.ranking.startswith("random") for c in shown.values()]  # "random-seed0" in each curve's own file
    ranked = plot_pruning_lines(ax, lines, control)
    for label, colour in ranked:
        d = safe.get(shown[label.split(" (= ", 1)[0]].label)
        if d is not None and len(ranked) <= 4:  # a few lines stay readable; the text gives every safe depth
            ax.axvline(d.depth, color=colour, ls=":", lw=1.0)
    # each distinct full-model value and chance once: the curves of one task share them
    for name, colour, style, values in (
        ("full model", "0.3", "--", [curve_full(c) for c in curves]),
        ("chance", "#C44E52", ":", [c.baseline.get("chance") for c in curves]),
    ):
        for v in sorted({float(v) for v in values if is_number(v)}):
            ax.axhline(v, ls=style, lw=1.0, color=colour, label=f"{name} ({v:.3g})")
    ax.set_xlabel(f"{curves[0].unit} removed")
    label = measure_label(curves[0])
    ylabel = label if label != "value" else "value of the pruned model"
    if curves[0].metric == "-loss":
        ylabel += "\n(negated loss: higher = better)"
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)  # never over a curve
    ax.set_title(f"pruning curves: {label}" if label != "value" else "pruning curves", fontsize=10)
    fig.tight_layout()
    return fig


@literal_text
def finetune_figure(runs: list[FinetuneRun]) -> str:
    """:func:`finetune_plot` as a data URI."""
    return _save(finetune_plot(runs))


@literal_text
def finetune_plot(runs: list[FinetuneRun]):
    """Held-out loss before and after each fine-tuning run (lower is better), as dots joined by an arrow.

    Dots, not bars: a bar's length reads as its value, so bars need an axis from zero, on which a
    fine-tuning run's change of a percent or two is invisible; and bars on a cut axis (as this figure
    once drew them) showed a 0.8% change as four times the loss. A dot's position is its value, so the
    axis can zoom in on the change, and its label says that it does; the change is written beside it.
    """
    fig = _figure(max(4.5, 1.3 * len(runs) + 2.5), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for i, r in enumerate(runs):
        before = _num(r.report.get("heldout_loss_before"))
        after = _num(r.report.get("heldout_loss"))
        if math.isfinite(before) and math.isfinite(after):
            ax.annotate("", (i, after), (i, before), arrowprops={"arrowstyle": "->", "color": "0.5", "lw": 1.2})
            change = f"{after - before:+.3g}" + (f"\n({(after - before) / before:+.1%})" if before else "")
            ax.annotate(
                change, (i, (before + after) / 2), xytext=(9, 0), textcoords="offset points", fontsize=7, va="center"
            )
        ax.plot([i], [before], "o", ms=7, color="0.6", label="before" if i == 0 else None)
        ax.plot([i], [after], "o", ms=7, color="#4C72B0", label="after" if i == 0 else None)
    ax.set_xticks(range(len(runs)), [r.label for r in runs], rotation=20 if len(runs) > 3 else 0, fontsize=8)
    ax.set_xlim(-0.6, len(runs) - 0.4)
    ax.margins(y=0.25)
    ax.set_ylabel("held-out loss (nats)\naxis zoomed in: not from 0", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("fine-tuning: held-out loss (lower is better)", fontsize=10)
    fig.tight_layout()
    return fig


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
