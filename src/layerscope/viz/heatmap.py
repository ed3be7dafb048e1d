"""Figures for module-granularity results: a module-type x block heatmap, ILA's loss curves,
and the generic matrix / line figures ``compare`` draws. Reads only ``LayerImportance``.

Uses matplotlib's object API (``Figure`` + Agg canvas), never pyplot, so no global state or
display backend is touched; every figure is written atomically (temp file + rename).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from layerscope.core import atomic
from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance
from layerscope.viz.literal_text import literal_text
from layerscope.viz.plots import module_rows, outliers, result_title, score_label


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    return path


def module_cells(imp: LayerImportance) -> list[tuple[str, int, str]]:
    """(player, block, row) of each player of a module-granularity result, in its order."""
    if imp.granularity != "module":
        raise ConfigError(f"a module heatmap needs a module-granularity result, this one is {imp.granularity!r}")
    records = imp.player_records()
    return [(p.name, p.block, row) for p, row in zip(records, module_rows(records))]


def module_grid(imp: LayerImportance, values: list[float] | None = None) -> tuple[list[str], list[int], np.ndarray]:
    """Rows = module types (first-seen order; names below the block where a block holds two modules
    of one type: ``plots.module_rows``), columns = block indices; NaN where absent."""
    return _grid(module_cells(imp), imp.scores if values is None else values)


def _grid(cells: list[tuple[str, int, str]], values: list[float]) -> tuple[list[str], list[int], np.ndarray]:
    types = list(dict.fromkeys(row for _, _, row in cells))
    blocks = sorted({block for _, block, _ in cells})
    grid = np.full((len(types), len(blocks)), np.nan)
    col = {b: j for j, b in enumerate(blocks)}
    for (_, block, row), v in zip(cells, values):
        grid[types.index(row), col[block]] = np.nan if v is None else float(v)
    return types, blocks, grid


@literal_text
def plot_module_heatmap(
    imp: LayerImportance,
    path: str | Path,
    *,
    title: str | None = None,
    mark_top: float | None = 0.3,
    max_width: float | None = None,
) -> Path:
    """Heatmap of scores (module type x block); red boxes mark the top ``mark_top`` fraction."""
    return save_figure(module_heatmap_figure(imp, title=title, mark_top=mark_top, max_width=max_width), path)


LABEL_PITCH = 11.0  # points of axis width per block number written under a heatmap (7 pt text, turned upright)


@literal_text
def module_heatmap_figure(
    imp: LayerImportance, *, title: str | None = None, mark_top: float | None = 0.3, max_width: float | None = None
):
    """The heatmap as a ``Figure``. Cells far outside the rest (``plots.outliers``, up to a tenth
    of them) would leave every other cell one dark band: the colour scale stops at the others and
    extends past them, and the outlying cells carry their exact numbers. A module with no score (NaN)
    shows a red x (an empty cell is a module the block does not have). ``max_width`` (inches) caps the
    width; block numbers are then written every few blocks."""
    cells = module_cells(imp)
    types, blocks, grid = _grid(cells, imp.scores)
    width = max(5.0, 0.32 * len(blocks) + 2.5)
    fig = _figure(min(width, max_width or width), max(2.5, 0.42 * len(types) + 1.4))
    ax = fig.add_subplot(1, 1, 1)
    flat = grid.ravel()
    # at least 3: zeroing gate_proj, up_proj or down_proj gives one value, so outlying cells come in threes
    clipped = set(outliers(flat, max_count=max(3, len(cells) // 10)))
    kept = [v for i, v in enumerate(flat) if i not in clipped and np.isfinite(v)]
    vmin, vmax = (min(kept), max(kept)) if clipped else (None, None)
    im = ax.imshow(
        np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", interpolation="nearest", vmin=vmin, vmax=vmax
    )
    # about 2.5 in of the width go to the row names and the colour bar; the numbers share the rest
    axis_pt = (fig.get_figwidth() - 2.5) * 72
    step = math.ceil(len(blocks) / max(1, int(axis_pt / LABEL_PITCH)))
    labels = [str(b) for b in blocks[::step]]
    upright = axis_pt / len(labels) < 16  # three digits side by side need about that
    fontsize = 7 if len(blocks) > 16 else 9
    ax.set_xticks(range(0, len(blocks), step), labels, fontsize=fontsize, rotation=90 if upright else 0)
    ax.set_yticks(range(len(types)), types)
    ax.set_xlabel("block")
    ax.set_ylabel("module type")
    low, high = any(flat[i] < vmin for i in clipped), any(flat[i] > vmax for i in clipped)
    extend = {(True, True): "both", (True, False): "min", (False, True): "max"}.get((low, high), "neither")
    cbar = fig.colorbar(im, ax=ax, extend=extend)
    cbar.set_label(score_label(imp), fontsize=8)
    if mark_top:
        from matplotlib.patches import Rectangle

        cell_of = {name: (block, row) for name, block, row in cells}
        for name in imp.top(mark_top):
            block, row = cell_of[name]
            ax.add_patch(
                Rectangle(
                    (blocks.index(block) - 0.46, types.index(row) - 0.46),
                    0.92,
                    0.92,
                    fill=False,
                    edgecolor="red",
                    linewidth=1.2 if len(blocks) <= 40 else 0.6,  # thick boxes over narrow cells hide them
                )
            )
    for i in range(len(types)):
        for j in range(len(blocks)):
            # every number on a small grid; on a wide one only the clipped cells', whose colour no longer says it
            if np.isfinite(grid[i, j]) and (len(blocks) <= 12 or i * len(blocks) + j in clipped):
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="black",
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "alpha": 0.5, "lw": 0},
                )
    unscored = [(types.index(row), blocks.index(block)) for (_, block, row), s in zip(cells, imp.scores) if _nan(s)]
    for i, j in unscored:
        ax.text(j, i, "x", ha="center", va="center", fontsize=8, color="#C44E52", fontweight="bold")
    note = f" (red boxes: top {mark_top:.0%})" if mark_top else ""
    if unscored:
        note += f"; red x: no score ({len(unscored)})"
    clip = ""
    if clipped:  # said under any title: the colours of those cells no longer tell their values
        clip = f"\ncolour scale clipped to [{vmin:.3g}, {vmax:.3g}]: {len(clipped)} cell(s) beyond, numbers exact"
    ax.set_title((title or result_title(imp) + note) + clip, fontsize=10)
    return fig


def _nan(v) -> bool:
    return v is None or not math.isfinite(v)


def _smooth(y: list[float], n: int) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if len(y) < 3 or n <= 1:
        return y
    n = min(n, len(y))
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    for i in range(len(y)):
        lo = max(0, i - n + 1)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


@literal_text
def plot_loss_curves(imp: LayerImportance, path: str | Path) -> Path:
    """Stage-1 (LoRA) and stage-2 (gates) training loss of an ILA result."""
    return save_figure(loss_figure(imp), path)


def smoothing_window(n: int) -> int:
    """The moving mean's window for ``n`` steps: a twentieth of them, at least 3; 1 (no moving
    mean) when there are too few steps for a window of 3 to say more than the steps themselves."""
    return max(3, n // 20) if n >= 8 else 1


def _loss_lines(ax, loss: list[float], label: str) -> None:
    """The per-step loss, and its moving mean where that differs from it (window > 1)."""
    x = np.arange(1, len(loss) + 1)
    w = smoothing_window(len(loss))
    if w == 1:
        ax.plot(x, loss, color="C0", label=f"{label}, per step")
        return
    ax.plot(x, loss, color="0.75", lw=0.8, label=f"{label}, per step")
    ax.plot(x, _smooth(loss, w), color="C0", label=f"moving mean of {w} steps")


def _legend_below(ax, *axes) -> None:
    """One legend for ``ax`` and its twin axes, below the plot: never over a curve."""
    handles, labels = [], []
    for a in (ax, *axes):
        h, lab = a.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)


@literal_text
def loss_figure(imp: LayerImportance):
    """The two stages' losses side by side as a ``Figure``; stage 2 with the mean gate on a right axis."""
    s1, s2 = imp.extras.get("stage1_loss"), imp.extras.get("stage2_loss")
    if not s1 and not s2:
        raise ConfigError("this result has no loss curves (extras stage1_loss / stage2_loss)")
    fig = _figure(10, 3.8)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    if s1:
        _loss_lines(ax1, s1, "SFT loss")
        stop = imp.extras.get("stop_step")
        if stop:
            ax1.axvline(stop, color="C3", ls="--", lw=0.8, label=f"stop: {imp.extras.get('stop_reason', '?')}")
        _legend_below(ax1)
    ax1.set_title("stage 1: LoRA SFT loss", fontsize=10)
    twins = []
    if s2:
        _loss_lines(ax2, s2, "task loss")
        pen = imp.extras.get("stage2_penalty")
        if pen:
            twin = ax2.twinx()
            twin.plot(np.arange(1, len(pen) + 1), pen, color="C2", label="mean gate sigmoid(s), right axis")
            twin.set_ylabel("mean gate sigmoid(s)", color="C2")
            twins.append(twin)
        _legend_below(ax2, *twins)
    ax2.set_title("stage 2: gate training", fontsize=10)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps come whole: no tick at 1.5
    fig.tight_layout()
    return fig


@literal_text
def plot_matrix(
    labels: list[str],
    matrix,
    path: str | Path,
    *,
    title: str,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "magma",
) -> Path:
    """A labelled square matrix with its values written in the cells."""
    m = np.asarray(matrix, dtype=float)
    n = len(labels)
    fig = _figure(max(4.0, 0.7 * n + 2.5), max(3.2, 0.6 * n + 1.8))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    for i in range(n):
        for j in range(n):
            if math.isfinite(m[i, j]):
                dark = (m[i, j] - vmin) / ((vmax - vmin) or 1) < 0.6
                ax.text(
                    j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white" if dark else "black"
                )
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


# Markers and dashes cycled over the lines of one figure: two lines that coincide (two pairs
# with the same overlap) stay told apart, the later one's hollow marker around the earlier one's.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
STYLES = ("-", (0, (4, 2)), (0, (1, 1.5)), "-.")


@literal_text
def plot_lines(
    x: list[float],
    series: dict[str, list[float]],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    dashed: set[str] | None = None,
) -> Path:
    return save_figure(lines_figure(x, series, title=title, xlabel=xlabel, ylabel=ylabel, dashed=dashed), path)


@literal_text
def lines_figure(
    x: list[float],
    series: dict[str, list[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    dashed: set[str] | None = None,
):
    """One line per series (``dashed``: grey reference lines), legend outside the axes; a line
    equal to an earlier one says so in the legend."""
    fig = _figure(7.5, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    dashed = dashed or set()
    drawn: dict[str, list[float]] = {}
    for i, (name, y) in enumerate(series.items()):
        if name in dashed:
            ax.plot(x, y, "--", lw=1.0, color="0.4", label=name)
            continue
        same = next((n for n, other in drawn.items() if np.allclose(other, y, equal_nan=True)), None)
        ax.plot(
            x,
            y,
            ls=STYLES[i % len(STYLES)],
            marker=MARKERS[i % len(MARKERS)],
            ms=8 - 1.5 * (i % 3),  # a later marker, smaller, sits inside an earlier one at the same point
            mfc="none",
            mew=1.2,
            lw=1.5,
            label=name + (f" (= {same})" if same else ""),
        )
        drawn[name] = y
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.04)
    ax.grid(alpha=0.3)
    if len(series) <= 12:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)  # never over a line
    ax.set_title(title, fontsize=10)
    return fig


def merged_lines(lines: list[tuple[str, list, list]]) -> list[tuple[str, list, list]]:
    """``(label, xs, ys)`` lines with the identical ones drawn once, labelled ``"a (= b, c)"``: a line
    drawn over an equal one hides it, and the legend would name a curve no one can see."""
    groups: list[tuple[list[str], list, list]] = []
    for label, xs, ys in lines:
        twin = next(
            (g for g in groups if list(g[1]) == list(xs) and np.allclose(g[2], ys, equal_nan=True, rtol=0, atol=0)),
            None,
        )
        if twin is None:
            groups.append(([label], xs, ys))
        else:
            twin[0].append(label)
    return [(names[0] + (f" (= {', '.join(names[1:])})" if names[1:] else ""), xs, ys) for names, xs, ys in groups]


def plot_pruning_lines(ax, lines: list[tuple[str, list, list]], control: list[bool]) -> list[tuple[str, Any]]:
    """Pruning curves on ``ax``: the random controls (``control``) grey under one legend entry, the ranked
    orders in colour with identical ones drawn once (:func:`merged_lines`), whole-number x ticks.
    Returns (label, colour) of each ranked line drawn."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    randoms = [line for is_random, line in zip(control, lines) if is_random]
    for k, (_, xs, ys) in enumerate(randoms):
        ax.plot(xs, ys, "-", lw=0.8, color="0.6", label=f"random ({len(randoms)} seeds)" if k == 0 else None)
    ranked = merged_lines([line for is_random, line in zip(control, lines) if not is_random])
    palette = colormaps["tab20" if len(ranked) > 10 else "tab10"]
    drawn = []
    for i, (label, xs, ys) in enumerate(ranked):
        colour = palette(i % palette.N)
        ax.plot(xs, ys, "-o", ms=3, color=colour, label=label)
        drawn.append((label, colour))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # players come whole
    return drawn
