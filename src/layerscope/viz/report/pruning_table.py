"""The pruning curves' points as tables, the same in both renderings: one table per task, metric and unit
(the panels of ``figures.curve_panels``), the number removed (K) as rows and one column per order, as a
reader compares orders at one K. Curves equal at every point (a prune-curve run's ``ablate`` and
``ablation``, or ``greedy`` where it follows ablation's order) share one column whose header names them all:
two identical columns read as two results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from layerscope.viz.report.load import PruningCurve
from layerscope.viz.report.wording import measure_label


@dataclass
class PruningTable:
    title: str  # what the values are: "acc on arc_easy"
    unit: str  # what is removed: "blocks", "sublayers", ...
    folder: str  # the folder the curves' labels share ("curves/arc_easy"), stated once; "" when none
    orders: list[str]  # one column header per distinct curve: "ablate = ablation = greedy", "bi (block-influence)"
    rows: list[tuple[int, list[float | None]]]  # (K, the value of each column at K; None where it has no point)
    curves: list[PruningCurve]

    @property
    def head(self) -> list[str]:
        return [f"{self.unit} removed", *self.orders]


def pruning_tables(panels: list[list[PruningCurve]]) -> list[PruningTable]:
    """One :class:`PruningTable` per panel (``figures.curve_panels``)."""
    return [_table(panel) for panel in panels if panel]


def _table(panel: list[PruningCurve]) -> PruningTable:
    folder = _shared_folder([c.label for c in panel])
    columns: list[tuple[list[str], dict[int, float]]] = []  # (names, K -> value)
    for c in panel:
        name = c.label[len(folder) + 1 :] if folder else c.label
        if c.ranking and c.ranking != name.rsplit("/", 1)[-1]:
            name += f" ({c.ranking})"  # the order followed, where the label does not say it
        points = dict(sorted(zip(c.n_removed, c.values)))
        twin = next((col for col in columns if col[1] == points), None)
        if twin is None:
            columns.append(([name], points))
        else:
            twin[0].append(name)
    ks = sorted({k for _, points in columns for k in points})
    return PruningTable(
        title=measure_label(panel[0]),
        unit=panel[0].unit,
        folder=folder,
        orders=[" = ".join(names) for names, _ in columns],
        rows=[(k, [points.get(k) for _, points in columns]) for k in ks],
        curves=panel,
    )


def _shared_folder(labels: list[str]) -> str:
    """The folder part all ``labels`` share ("curves/arc_easy" of "curves/arc_easy/ablate", ...), never a
    curve's own name: each column keeps at least its last part."""
    parts = [Path(label).parts[:-1] for label in labels]
    shared: list[str] = []
    for names in zip(*parts):
        if len(set(names)) > 1:
            break
        shared.append(names[0])
    return "/".join(shared)
