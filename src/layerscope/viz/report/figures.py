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
from layerscope.viz.report.load import FinetuneRun, PruningCurve
from layerscope.viz.report.model import SafeDepth


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

        return _via_file(lambda p: plot_module_heatmap(imp, p, mark_top=fraction))
    from layerscope.viz.plots import bar_chart

    return _via_file(lambda p: bar_chart(imp, p, what="scores"))


def removed_value_figure(imp: LayerImportance) -> str:
    """The value with each player removed, with the full model's value and chance as lines."""
    from layerscope.viz.plots import bar_chart

    return _via_file(lambda p: bar_chart(imp, p, what="removed_value", title="value with each player removed"))


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


@literal_text
def pruning_figure(curves: list[PruningCurve], depths: list[SafeDepth]) -> str:
    """Value against the number of removed players, one line per curve, with full / chance / safe depth."""
    from layerscope.viz.heatmap import plot_pruning_lines

    fig = _figure(8.4, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    safe = {d.label: d for d in depths}
    with_values = [c for c in curves if c.values]
    lines = [(c.label, *map(list, zip(*sorted(zip(c.n_removed, c.values))))) for c in with_values]
    control = [c.ranking.startswith("random") for c in with_values]  # "random-seed0" in each curve's own file
    ranked = plot_pruning_lines(ax, lines, control)
    for label, colour in ranked:
        d = safe.get(label.split(" (= ", 1)[0])
        if d is not None and len(ranked) <= 4:  # a few lines stay readable; the text gives every safe depth
            ax.axvline(d.depth, color=colour, ls=":", lw=1.0)
    # one full / chance line when every curve shares them; else each curve's own, in its colour
    shared = all(c.baseline == curves[0].baseline for c in curves)
    for i, c in enumerate(curves[:1] if shared else curves):
        for key, colour, style in (("full", "0.3", "--"), ("chance", "#C44E52", ":")):
            v = c.baseline.get(key)
            if isinstance(v, float) and math.isfinite(v):
                who = "" if shared else f", {c.label}"
                ax.axhline(v, ls=style, lw=1.0, color=colour if shared else f"C{i % 10}", label=f"{key} ({v:.3g}{who})")
    units = {c.unit for c in curves}
    ax.set_xlabel(f"{units.pop() if len(units) == 1 else 'players'} removed")
    ax.set_ylabel("value of the pruned model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)  # never over a curve
    ax.set_title("pruning curve", fontsize=10)
    fig.tight_layout()
    return _save(fig)


@literal_text
def finetune_figure(runs: list[FinetuneRun]) -> str:
    """Held-out loss before and after each fine-tuning run (lower is better)."""
    import numpy as np

    fig = _figure(max(4.5, 1.1 * len(runs) + 2.5), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(len(runs))
    before = [_num(r.report.get("heldout_loss_before")) for r in runs]
    after = [_num(r.report.get("heldout_loss")) for r in runs]
    ax.bar(xs - 0.2, before, width=0.4, color="0.7", label="before")
    ax.bar(xs + 0.2, after, width=0.4, color="#4C72B0", label="after")
    finite = [v for v in before + after if math.isfinite(v)]
    if finite:
        lo, hi = min(finite), max(finite)
        pad = (hi - lo) * 0.5 or abs(hi) * 0.05 or 1.0
        ax.set_ylim(lo - pad, hi + pad * 0.5)  # the differences are what matter, not the distance from 0
    ax.set_xticks(xs, [r.label for r in runs], rotation=20 if len(runs) > 3 else 0, fontsize=8)
    ax.set_ylabel("held-out loss")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("fine-tuning: held-out loss (lower is better)", fontsize=10)
    fig.tight_layout()
    return _save(fig)


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
