"""Tables, plots and verdict numbers from the runs of experiments/ila_overlap.py.

Reads RUNS/<model>/<dataset>_s<seed>/{penalty,budget}/importance.json (and the stability run
<dataset>_s<seed>_x<F>/penalty) and writes one markdown section with, for each sparsity reading:

- a summary: Jaccard of the top 10% / 30% / 50% sets and Spearman of the whole ranking, at module
  level and at block level (gate logits averaged per block, `core.levels.to_level`), for
  alignment vs alignment (different datasets), alignment vs reasoning, the same dataset with another
  seed, the stability run (stable vs F x longer), two random rankings, and the analytic chance level;
- the dataset x dataset matrices at 30% (off-diagonal: mean over all seed pairs; diagonal: the same
  dataset, other seed);
- every run's stage-1 stop (step, reason, last relative update change), examples, tokens and times,

and a plot of every run's stage-1 relative-update-change curve against eps.

    python experiments/ila_overlap_report.py --model default --md runs/SmolLM2-135M-Instruct/ila_overlap.md \
        --plot docs/img/ila_smollm2_stability.png
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ila_overlap import ROOT, SPARSITY, dataset_path, model_slug  # noqa: E402

from layerscope.core import atomic  # noqa: E402
from layerscope.core.agreement import spearman, top_jaccard  # noqa: E402
from layerscope.core.importance import LayerImportance, top_k_count  # noqa: E402
from layerscope.core.levels import to_level  # noqa: E402
from layerscope.viz.compare import expected_random_jaccard  # noqa: E402

FRACTIONS = (0.1, 0.3, 0.5)
LEVELS = ("module", "block")
RANDOM_SEEDS = (101, 202)
RUN_DIR = re.compile(r"^(?P<dataset>.+)_s(?P<seed>\d+)(?:_x(?P<factor>\d+))?$")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="default")
    p.add_argument("--runs-dir", default=str(ROOT / "runs"))
    p.add_argument("--md", default=None, help="markdown output (default RUNS/<model>/ila_overlap.md)")
    p.add_argument("--plot", default=None, help="stage-1 stability plot (default RUNS/<model>/ila_stability.png)")
    return p.parse_args(argv)


def load_runs(root: Path):
    """{(dataset, seed): {sparsity: LayerImportance}} and {(dataset, seed, factor): LayerImportance}."""
    runs: dict[tuple[str, int], dict] = {}
    long_runs: dict[tuple[str, int, int], object] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        m = RUN_DIR.match(d.name)
        if not m:
            continue
        key = (m["dataset"], int(m["seed"]))
        if m["factor"]:
            if (d / "penalty" / "importance.json").exists():
                long_runs[key + (int(m["factor"]),)] = LayerImportance.load(d / "penalty" / "importance.json")
            continue
        found = {s: LayerImportance.load(d / s / "importance.json") for s in SPARSITY if (d / s).is_dir()}
        if found:
            runs[key] = found
    return runs, long_runs


def is_reasoning(dataset: str) -> bool:
    return dataset_path(dataset).parent.name == "reasoning"


def random_ranking(like, seed: int):
    scores = np.random.default_rng(seed).permutation(len(like.players)).astype(float)
    return LayerImportance(
        method="random", granularity=like.granularity, players=list(like.players), scores=scores, model=like.model
    )


class Overlaps:
    """Jaccard / Spearman between runs at a level, with results aggregated once per level."""

    def __init__(self, level: str):
        self.level, self._cache = level, {}

    def at_level(self, imp):
        key = id(imp)
        if key not in self._cache:
            self._cache[key] = (imp, to_level(imp, self.level))
        return self._cache[key][1]

    def jaccard(self, a, b, fraction: float) -> float:
        return top_jaccard(self.at_level(a), self.at_level(b), fraction)

    def spearman(self, a, b) -> float:
        return spearman(self.at_level(a), self.at_level(b))


def mean(xs) -> float:
    xs = [x for x in xs if x == x]
    return float(np.mean(xs)) if xs else float("nan")


def pairs(runs, sparsity: str):
    """Named lists of run pairs: cross-dataset alignment, alignment vs reasoning, same dataset."""
    keys = sorted(k for k in runs if sparsity in runs[k])
    out: dict[str, list] = {"alignment vs alignment": [], "alignment vs reasoning": [], "same dataset, other seed": []}
    for (da, sa), (db, sb) in itertools.combinations(keys, 2):
        a, b = runs[da, sa][sparsity], runs[db, sb][sparsity]
        if da == db:
            out["same dataset, other seed"].append((a, b))
        elif is_reasoning(da) != is_reasoning(db):
            out["alignment vs reasoning"].append((a, b))
        elif not is_reasoning(da):
            out["alignment vs alignment"].append((a, b))
    return out


def type_matched_chance(a, b, fraction: float = 0.3, draws: int = 2000, seed: int = 0) -> float:
    """Mean Jaccard of two random top-``fraction`` module sets that keep each ranking's count of every
    module type (q_proj, up_proj, ...): the overlap that two rankings agreeing only on which *types* matter
    would show. A ranking that picks MLP projections alone overlaps another such one far above plain chance."""
    rng = np.random.default_rng(seed)
    types = [p.module_type for p in a.player_records()]  # b ranks the same players (pairs are of one model)
    by_type: dict[str, list[int]] = {}
    for i, t in enumerate(types):
        by_type.setdefault(t, []).append(i)

    def counts(imp) -> dict[str, int]:
        top = set(imp.top(fraction))
        return {t: sum(1 for name, ty in zip(imp.players, types) if ty == t and name in top) for t in by_type}

    ca, cb = counts(a), counts(b)
    total = 0.0
    for _ in range(draws):
        sa = {i for t, idx in by_type.items() for i in rng.choice(idx, ca[t], replace=False)}
        sb = {i for t, idx in by_type.items() for i in rng.choice(idx, cb[t], replace=False)}
        total += len(sa & sb) / len(sa | sb)
    return total / draws


def summary_table(runs, long_runs, sparsity: str) -> list[str]:
    groups = pairs(runs, sparsity)
    if sparsity == "penalty":
        for (d, s, f), imp in sorted(long_runs.items()):
            if (d, s) in runs and "penalty" in runs[d, s]:
                groups[f"stability: {d} s{s} vs {f}x longer"] = [(runs[d, s]["penalty"], imp)]
    any_imp = next(iter(runs.values()))[sparsity]
    overlaps = {lv: Overlaps(lv) for lv in LEVELS}
    rand = [random_ranking(overlaps[lv].at_level(any_imp), seed) for lv in LEVELS for seed in RANDOM_SEEDS]
    head = "| pairs | n | " + " | ".join(f"J{f:.0%} {lv}" for lv in LEVELS for f in FRACTIONS)
    lines = [
        head + " | Spearman module | Spearman block | J30% module, range over pairs | J30% module, same-type chance |",
        "|---" * (3 + len(LEVELS) * len(FRACTIONS) + 3) + "|",
    ]
    for name, ps in groups.items():
        if not ps:
            continue
        cells = [f"{mean(overlaps[lv].jaccard(a, b, f) for a, b in ps):.2f}" for lv in LEVELS for f in FRACTIONS]
        cells += [f"{mean(overlaps[lv].spearman(a, b) for a, b in ps):.2f}" for lv in LEVELS]
        j30 = [overlaps["module"].jaccard(a, b, 0.3) for a, b in ps]
        cells.append(f"{min(j30):.2f}-{max(j30):.2f}")
        cells.append(f"{mean(type_matched_chance(a, b) for a, b in ps):.2f}")
        lines.append(f"| {name} | {len(ps)} | " + " | ".join(cells) + " |")
    rand_cells = [
        f"{top_jaccard(rand[2 * i], rand[2 * i + 1], f):.2f}" for i, _ in enumerate(LEVELS) for f in FRACTIONS
    ]
    rand_cells += [f"{spearman(rand[2 * i], rand[2 * i + 1]):.2f}" for i, _ in enumerate(LEVELS)]
    lines.append("| two random rankings | 1 | " + " | ".join(rand_cells) + " | - | - |")
    chance = []
    for lv in LEVELS:
        n = len(overlaps[lv].at_level(any_imp).players)
        chance += [f"{expected_random_jaccard(top_k_count(f, n), n):.2f}" for f in FRACTIONS]
    lines.append("| chance (expected, random sets) | - | " + " | ".join(chance) + " | 0.00 | 0.00 | - | - |")
    return lines


def matrix(runs, sparsity: str, level: str, fraction: float) -> list[str]:
    ov = Overlaps(level)
    datasets = sorted({d for d, _ in runs}, key=lambda d: (is_reasoning(d), d))
    seeds = sorted({s for _, s in runs})

    def cell(a: str, b: str, fn) -> float:
        if a == b:
            return mean(
                fn(runs[a, s][sparsity], runs[a, t][sparsity])
                for s, t in itertools.combinations(seeds, 2)
                if (a, s) in runs and (a, t) in runs
            )
        return mean(
            fn(runs[a, s][sparsity], runs[b, t][sparsity])
            for s in seeds
            for t in seeds
            if (a, s) in runs and (b, t) in runs
        )

    out = []
    for title, fn in (
        (f"Jaccard of top-{fraction:.0%} sets", lambda x, y: ov.jaccard(x, y, fraction)),
        ("Spearman", ov.spearman),
    ):
        out += [
            f"{title}, {level} level:",
            "",
            "| | " + " | ".join(datasets) + " |",
            "|---" * (len(datasets) + 1) + "|",
        ]
        out += [f"| {a} | " + " | ".join(f"{cell(a, b, fn):.2f}" for b in datasets) + " |" for a in datasets]
        out.append("")
    return out


def runs_table(runs, long_runs) -> list[str]:
    lines = [
        "| run | examples | tokens/example | stage-1 stop | last r | stage-1 tokens | stage-1 s | "
        "stage-2 s penalty | stage-2 s budget |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [((d, s), v["penalty"], v.get("budget")) for (d, s), v in sorted(runs.items()) if "penalty" in v]
    rows += [((d, f"{s} x{f}"), imp, None) for (d, s, f), imp in sorted(long_runs.items())]
    for (d, s), pen, bud in rows:
        ex, stats = pen.extras, pen.data.get("stats", {})
        n = pen.data.get("n_items") or 0
        per_ex = stats.get("tokens", 0) / n if n else float("nan")
        step = int(ex["stop_step"])
        batch = pen.method_config["batch_size"] * pen.method_config.get("grad_accum", 1)
        r = (ex.get("stage1_stability") or [[0, float("nan")]])[-1][1]
        lines.append(
            f"| {d} s{s} | {n} | {per_ex:.0f} | {step} ({ex['stop_reason']}) | {r:.3f} | "
            f"{step * batch * per_ex / 1e3:.0f}k | {pen.timings.get('stage1_s', 0):.0f} | "
            f"{pen.timings.get('stage2_s', 0):.0f} | {bud.timings.get('stage2_s', 0) if bud else float('nan'):.0f} |"
        )
    return lines


def plot_stability(runs, long_runs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    eps = None
    items = [(f"{d} s{s}", v["penalty"]) for (d, s), v in sorted(runs.items()) if "penalty" in v]
    items += [(f"{d} s{s} x{f}", imp) for (d, s, f), imp in sorted(long_runs.items())]
    for label, imp in items:
        curve = imp.extras.get("stage1_stability") or []
        pts = [(st, r) for st, r in curve if r == r and r != float("inf")]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=label, linestyle="--" if " x" in label else "-")
        eps = imp.method_config.get("eps", eps)
    if eps:
        ax.axhline(eps, color="k", linewidth=0.8, label=f"eps {eps:g}")
    ax.set_yscale("log")
    ax.set_xlabel("stage-1 step")
    ax.set_ylabel("relative update change r")
    ax.set_title("ILA stage 1: ||dW_t - dW_(t-k)|| / ||dW_t|| per check")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def markdown(runs, long_runs, slug: str) -> str:
    any_imp = next(iter(runs.values()))["penalty"]
    cfg = any_imp.method_config
    n_modules = len(any_imp.players)
    lines = [
        f"## ILA overlap on {slug}",
        "",
        f"{len({d for d, _ in runs})} datasets x {len({s for _, s in runs})} seeds; stage 1: LoRA r {cfg['r']}, "
        f"lr {cfg['lr']:g}, batch {cfg['batch_size']}, cap {cfg['max_steps']}, floor {cfg['min_steps']}, "
        f"eps {cfg['eps']:g} every {cfg['check_every']} steps (patience {cfg['patience']}); stage 2: "
        f"{cfg['gate_steps']} steps, gate lr {cfg['gate_lr']:g}. {n_modules} modules in "
        f"{len(any_imp.by_block())} blocks.",
        "",
    ]
    for sparsity in SPARSITY:
        if not any(sparsity in v for v in runs.values()):
            continue
        lines += [f"### Sparsity {sparsity}: summary (means over the pairs)", ""]
        lines += summary_table(runs, long_runs, sparsity)
        lines += ["", f"### Sparsity {sparsity}: dataset x dataset", ""]
        for level in LEVELS:
            lines += matrix(runs, sparsity, level, 0.3)
    lines += ["### Runs", ""] + runs_table(runs, long_runs) + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(args.runs_dir) / model_slug(args.model)
    runs, long_runs = load_runs(root)
    if not runs:
        sys.exit(f"ila_overlap_report: no finished runs under {root}")
    md = markdown(runs, long_runs, model_slug(args.model))
    out = Path(args.md) if args.md else root / "ila_overlap.md"
    atomic.write_text(out, md)
    plot_stability(runs, long_runs, Path(args.plot) if args.plot else root / "ila_stability.png")
    print(md)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
