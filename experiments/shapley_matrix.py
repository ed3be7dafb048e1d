"""Report for one model and task from the importance files in a folder: per method its evaluations,
time, top players and the share of positive mass in the top 3; the ablation's cornerstones; the
Spearman matrix between all methods (sub-layer level).

It reads whatever is there, so methods run separately (``layerscope shapley --out DIR/...``, an
interrupted ``shapley_report.py``) combine into one report::

    python experiments/shapley_matrix.py runs/shapley/smollm2_arc_easy [more.json ...] --out report.md

Files: every ``*.json`` in the folder (and any extra paths) that is a LayerImportance. Block-level
results (block influence) are spread to sub-layers: each sub-layer takes its block's score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from layerscope.core import atomic
from layerscope.core.errors import LayerscopeError
from layerscope.core.importance import LayerImportance

ORDER = [
    "ablation",
    "shapley-proximity",
    "shapley-exact",
    "shapley-permutation",
    "shapley-owen",
    "block-influence",
    "angular-distance",
]


def top3_positive_share(values) -> float:
    pos = np.clip(np.asarray(values, dtype=float), 0, None)
    return float(np.sort(pos)[::-1][:3].sum() / pos.sum()) if pos.sum() > 0 else float("nan")


def load_results(paths: list[Path]) -> dict[str, LayerImportance]:
    found: dict[str, LayerImportance] = {}
    for p in paths:
        try:
            r = LayerImportance.load(p)
        except LayerscopeError:
            continue  # not a result file (a report, a log)
        found[r.method] = r
    return dict(sorted(found.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER)))


def per_sublayer(results: dict[str, LayerImportance]) -> tuple[list[str], dict[str, list[float]]]:
    sub = [r for r in results.values() if r.granularity == "sublayer"]
    if not sub:
        raise SystemExit("no sub-layer result in the folder")
    players = sub[0].players
    blocks = [p.block for p in sub[0].player_records()]
    out = {}
    for name, r in results.items():
        if r.granularity == "sublayer":
            if r.players != players:
                raise SystemExit(f"{name}: players differ from {sub[0].method}'s")
            out[name] = list(r.scores)
        elif r.granularity == "block":
            by_block = {p.block: s for p, s in zip(r.player_records(), r.scores)}
            out[f"{name} (per block)"] = [by_block[b] for b in blocks]
    return players, out


def report(results: dict[str, LayerImportance], title: str) -> str:
    players, scores = per_sublayer(results)
    first = next(iter(results.values()))
    base = next((r.baseline for r in results.values() if r.baseline and "full" in r.baseline), {})
    lines = [f"### {title}", ""]
    if base:
        lines += [
            f"Full model value {base['full']:.4f}, chance {base.get('chance', float('nan')):.4f}. "
            f"{len(players)} sub-layer players; data: {first.data}.",
            "",
        ]
    lines += [
        "| method | evaluations | seconds | top 5 players | top-3 share of positive mass | mean stderr |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, r in results.items():
        secs = (r.timings or {}).get("seconds", (r.timings or {}).get("total_s"))
        known = [x for x in (r.stderr or []) if x is not None]  # one sample leaves no spread to measure
        se = f"{np.mean(known):.4f}" if known else "-"
        lines.append(
            f"| {name} | {r.n_evaluations if r.n_evaluations is not None else '-'} | "
            f"{'-' if secs is None else f'{secs:.0f}'} | {', '.join(r.ranking()[:5])} | "
            f"{top3_positive_share(r.scores):.2f} | {se} |"
        )
    abl = results.get("ablation")
    if abl is not None:
        cs = abl.extras.get("cornerstones", [])
        lines += [
            "",
            f"Cornerstones (removal alone brings the value within the margin of chance): {', '.join(cs) or 'none'}",
        ]
    names = list(scores)
    lines += [
        "",
        "Spearman correlation between methods (sub-layer level; a block-level result gives both sub-layers "
        "its block's score):",
        "",
        "| | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for x in names:
        row = [float(spearmanr(scores[x], scores[y]).statistic) for y in names]
        lines.append(f"| {x} | " + " | ".join(f"{v:+.2f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("extra", nargs="*", type=Path, help="more result files (e.g. from `layerscope shapley --out`)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the markdown here (default: print only)")
    a = ap.parse_args()
    results = load_results(sorted(a.folder.glob("*.json")) + list(a.extra))
    text = report(results, a.title or str(a.folder))
    print(text)
    if a.out:
        atomic.write_text(a.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
