"""Summarise the importance results in one or more folders: for each result, its top players and the share of
positive mass in its top 3; the single-ablation table and cornerstones where an ablation result is present; and the
Spearman matrix between all results (block-granularity results are repeated for each sub-layer of the block).

    python experiments/importance_summary.py runs/shapley/smollm2_arc_easy
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from layerscope.core.importance import LayerImportance


def top3_positive_share(values) -> float:
    pos = np.clip(np.asarray([v if v is not None else 0.0 for v in values], dtype=float), 0, None)
    return float(np.sort(pos)[::-1][:3].sum() / pos.sum()) if pos.sum() > 0 else float("nan")


def summarise(folder: Path) -> str:
    results = {  # similarity writes <method>/importance.json: name those by their folder
        (p.parent.name if p.name == "importance.json" else p.stem): LayerImportance.load(p)
        for p in sorted(folder.rglob("*.json"))
        if p.name != "comparison.json"
    }
    if not results:
        raise SystemExit(f"{folder}: no importance results")
    sub = next((r for r in results.values() if r.granularity == "sublayer"), None)
    lines = [f"### {folder.name}", ""]
    if sub is not None:
        d = sub.data
        lines.append(
            f"Model {sub.model.get('name')}, task {d.get('task')} ({d.get('n_items')} items); full model "
            f"{sub.baseline.get('full', float('nan')):.4f}, chance {sub.baseline.get('chance', float('nan')):.4f}."
        )
        lines.append("")
    lines += ["| result | method | evaluations | top 5 | top-3 share of positive mass |", "|---|---|---:|---|---:|"]
    for k, r in results.items():
        lines.append(
            f"| {k} | {r.method} | {r.n_evaluations if r.n_evaluations is not None else '-'} | "
            f"{', '.join(r.ranking()[:5])} | {top3_positive_share(r.scores):.2f} |"
        )
    abl = next((r for r in results.values() if r.method == "ablation"), None)
    if abl is not None:
        lines += [
            "",
            f"Cornerstones (removal alone brings the value within the margin of chance): "
            f"{', '.join(abl.extras.get('cornerstones', [])) or 'none'}",
            "",
            "| player | value with it removed | drop | ± |",
            "|---|---:|---:|---:|",
        ]
        se = abl.stderr or [float("nan")] * len(abl.players)
        for p, v, s, e in zip(abl.players, abl.extras["removed_value"], abl.scores, se):
            lines.append(f"| {p} | {v:.4f} | {s:+.4f} | {e:.4f} |")
    if sub is not None and len(results) > 1:
        per = {}
        for k, r in results.items():
            if r.granularity == "sublayer":
                per[k] = [s if s is not None else 0.0 for s in r.scores]
            elif r.granularity == "block":
                by_block = {p.block: s for p, s in zip(r.player_records(), r.scores)}
                per[f"{k} (per block)"] = [by_block[p.block] for p in sub.player_records()]
        names = list(per)
        lines += [
            "",
            "Spearman between results (sub-layer level):",
            "",
            "| | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for x in names:
            lines.append(f"| {x} | " + " | ".join(f"{spearmanr(per[x], per[y]).statistic:+.2f}" for y in names) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="folders holding importance .json results")
    print("\n\n".join(summarise(f) for f in ap.parse_args().folders))
