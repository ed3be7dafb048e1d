"""The Markdown tables of docs/pruning.md from `prune-curve` / pruning_curve.py results.

    python experiments/pruning_curve_table.py runs/smol-pruning/piqa              # one task, per order
    python experiments/pruning_curve_table.py --summary runs/smol-pruning/arc_easy runs/smol-pruning/piqa ...
    python experiments/pruning_curve_table.py --plot docs/img/x.png runs/smol-pruning/arc_easy ...  # one panel each

Per task: the value at K = 0, 1, 2, 4, 6, 8, 10, 12 (those up to K_max), the blocks removed at K = 4,
the AUC and the largest K within 1 / 5 points, orders by AUC with the random seeds folded into one
row of ranges. --summary: one row per order, one AUC column per task.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SHOWN_K = (0, 1, 2, 4, 6, 8, 10, 12)


def load(folder: str) -> dict:
    return json.loads((Path(folder) / "curves.json").read_text())


def fmt(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:.3f}"


def span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)} to {fmt(hi)}" if lo < 0 else f"{fmt(lo)}-{fmt(hi)}"


def task_table(curves: dict) -> str:
    ks = [k for k in SHOWN_K if k <= curves["k_max"]]
    head = "| order | " + " | ".join(f"K={k}" for k in ks) + " | removed at K=4 | AUC | K within 1 / 5 points |"
    lines = [head, "|---" * (len(ks) + 4) + "|"]
    plain = [c for c in curves["curves"] if c["method"] != "random"]
    for c in sorted(plain, key=lambda c: -c["auc"]):
        gone = ", ".join(name.rsplit(".", 1)[-1] for name in c["removed"][4]) if curves["k_max"] >= 4 else ""
        vals = " | ".join(fmt(c["values"][k]) for k in ks)
        lines.append(f"| {c['label']} | {vals} | {gone} | {c['auc']:.3f} | {c['within_1']} / {c['within_5']} |")
    rand = [c for c in curves["curves"] if c["method"] == "random"]
    if rand:
        vals = " | ".join(span([c["values"][k] for c in rand]) for k in ks)
        auc = span([c["auc"] for c in rand])
        within = f"{span([c['within_1'] for c in rand])} / {span([c['within_5'] for c in rand])}"
        lines.append(f"| random ({len(rand)} seeds) | {vals} | | {auc} | {within} |")
    return "\n".join(lines)


def summary_table(folders: list[str]) -> str:
    tasks = [(Path(f).name, load(f)) for f in folders]
    labels = list(dict.fromkeys(c["label"] for _, d in tasks for c in d["curves"] if c["method"] != "random"))
    lines = ["| order | " + " | ".join(name for name, _ in tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    lines.append("| full model | " + " | ".join(fmt(d["baseline"]["full"]) for _, d in tasks) + " |")
    for label in labels:
        cells = []
        for _, d in tasks:
            c = next((c for c in d["curves"] if c["label"] == label), None)
            cells.append("-" if c is None else f"{c['auc']:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    rand = [[c["auc"] for c in d["curves"] if c["method"] == "random"] for _, d in tasks]
    seeds = "/".join(str(n) for n in sorted({len(r) for r in rand if r}))
    lines.append(f"| random ({seeds or 'no'} seeds) | " + " | ".join(span(r) if r else "-" for r in rand) + " |")
    return "\n".join(lines)


def plot_panels(folders: list[str], path: str) -> None:
    """One panel per task, the same colour for an order in every panel, random seeds in grey."""
    from matplotlib.figure import Figure

    tasks = [load(f) for f in folders]
    labels = list(dict.fromkeys(c["label"] for d in tasks for c in d["curves"] if c["method"] != "random"))
    colour = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    cols = min(2, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig = Figure(figsize=(6.0 * cols, 3.8 * rows))
    for j, (folder, d) in enumerate(zip(folders, tasks)):
        ax = fig.add_subplot(rows, cols, j + 1)
        for c in d["curves"]:
            ks = range(len(c["values"]))
            if c["method"] == "random":
                first = c["label"].endswith("seed0")
                ax.plot(ks, c["values"], "-", lw=0.8, color="0.65", label="random (3 seeds)" if first else None)
            else:
                ax.plot(ks, c["values"], "-o", ms=3, lw=1.2, color=colour[c["label"]], label=c["label"])
        chance = d["baseline"].get("chance")
        if isinstance(chance, float):
            ax.axhline(chance, ls="--", lw=1.0, color="#C44E52", label="chance")
        ax.set_title(f"{Path(folder).name} ({d['data'].get('metric', 'value')})", fontsize=10)
        ax.set_xlabel("blocks removed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"pruning curves: {tasks[0]['model'].get('name')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="task folders holding curves.json")
    p.add_argument("--summary", action="store_true", help="AUC per order and task")
    p.add_argument("--plot", default=None, metavar="PNG", help="draw one panel per task here instead")
    args = p.parse_args(argv)
    if args.plot:
        plot_panels(args.folders, args.plot)
    elif args.summary:
        print(summary_table(args.folders))
    else:
        for f in args.folders:
            d = load(f)
            print(f"{Path(f).name}: full {d['baseline']['full']:.3f}, chance {d['baseline']['chance']:.3f}\n")
            print(task_table(d) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
