"""Figures for module-granularity results: a module-type x block heatmap, ILA's loss curves,
and the generic matrix / line figures ``compare`` draws. Reads only ``LayerImportance``.

Uses matplotlib's object API (``Figure`` + Agg canvas), never pyplot, so no global state or
display backend is touched; every figure is written atomically (temp file + rename).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from layerscope.core import atomic
from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance
from layerscope.viz.literal_text import literal_text
from layerscope.viz.plots import module_rows, result_title


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
    imp: LayerImportance, path: str | Path, *, title: str | None = None, mark_top: float | None = 0.3
) -> Path:
    """Heatmap of scores (module type x block); red boxes mark the top ``mark_top`` fraction."""
    cells = module_cells(imp)
    types, blocks, grid = _grid(cells, imp.scores)
    fig = _figure(max(5.0, 0.32 * len(blocks) + 2.5), max(2.5, 0.42 * len(types) + 1.4))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(blocks)), [str(b) for b in blocks], fontsize=7 if len(blocks) > 16 else 9)
    ax.set_yticks(range(len(types)), types)
    ax.set_xlabel("block")
    ax.set_ylabel("module type")
    meaning = "gate logit" if imp.method == "ila" else "score"
    fig.colorbar(im, ax=ax, label=f"{imp.method} {meaning}")
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
                    linewidth=1.2,
                )
            )
    if len(blocks) <= 12:
        for i in range(len(types)):
            for j in range(len(blocks)):
                if np.isfinite(grid[i, j]):
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
    note = f" (red boxes: top {mark_top:.0%})" if mark_top else ""
    ax.set_title(title or f"{result_title(imp)}{note}", fontsize=10)
    return save_figure(fig, path)


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
    s1, s2 = imp.extras.get("stage1_loss"), imp.extras.get("stage2_loss")
    if not s1 and not s2:
        raise ConfigError("this result has no loss curves (extras stage1_loss / stage2_loss)")
    fig = _figure(10, 3.4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    if s1:
        x = np.arange(1, len(s1) + 1)
        ax1.plot(x, s1, color="0.75", lw=0.8, label="per step")
        ax1.plot(x, _smooth(s1, max(1, len(s1) // 20)), color="C0", label="moving mean")
        stop = imp.extras.get("stop_step")
        if stop:
            ax1.axvline(stop, color="C3", ls="--", lw=0.8, label=f"stop: {imp.extras.get('stop_reason', '?')}")
        ax1.legend(fontsize=7)
    ax1.set_title("stage 1: LoRA SFT loss", fontsize=10)
    ax1.set_xlabel("step")
    if s2:
        x = np.arange(1, len(s2) + 1)
        ax2.plot(x, s2, color="0.75", lw=0.8)
        ax2.plot(x, _smooth(s2, max(1, len(s2) // 20)), color="C0", label="task loss")
        pen = imp.extras.get("stage2_penalty")
        if pen:
            twin = ax2.twinx()
            twin.plot(x, pen, color="C2", label="mean gate")
            twin.set_ylabel("mean sigmoid(s)", color="C2")
        ax2.legend(fontsize=7, loc="upper left")
    ax2.set_title("stage 2: gate training", fontsize=10)
    ax2.set_xlabel("step")
    fig.tight_layout()
    return save_figure(fig, path)


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
    fig = _figure(5.5, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    dashed = dashed or set()
    for name, y in series.items():
        ax.plot(
            x,
            y,
            "--" if name in dashed else "-o",
            ms=3,
            lw=1.5 if name not in dashed else 1.0,
            color="0.4" if name in dashed else None,
            label=name,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if len(series) <= 12:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
