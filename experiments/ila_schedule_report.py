"""Does ILA's epsilon criterion measure the update settling, or the learning rate decaying?

Stage 1 stops once r = ||dW_t - dW_(t-k)|| / ||dW_t|| stays below eps. Under the default schedule the rate
falls linearly to zero at --max-steps, which shrinks r whether or not the update has settled (docs/ila.md).
This report sets runs of experiments/ila_overlap.py made with `--lr-schedule linear` (RUNS/<model>) beside
the same datasets and seeds made with `--lr-schedule constant` (RUNS/<model>_constant_lr) and writes:

- where stage 1 stopped under each schedule (and the linear rate there, as a fraction of its peak), and how
  far the two rankings of the same data and seed agree (Jaccard of the top 10% / 30%, Spearman);
- the cross-dataset overlaps (alignment vs alignment, alignment vs reasoning) under each schedule;
- a plot of r per check, both schedules (solid: linear, dashed: constant), beside sqrt(k / t): r of an update
  that is a sum of t independent steps of equal size (a random walk), and k / t: r of equal steps in one fixed
  direction. At a constant rate r falls between the two with no settling at all.

    python experiments/ila_schedule_report.py --model default --md runs/ila_schedule.md \
        --plot docs/img/ila_smollm2_schedule.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ila_overlap import ROOT, model_slug  # noqa: E402
from ila_overlap_report import LEVELS, Overlaps, load_runs, mean, pairs  # noqa: E402

from layerscope.core import atomic  # noqa: E402
from layerscope.core.importance import top_k_count  # noqa: E402
from layerscope.methods.ila import ILAConfig  # noqa: E402
from layerscope.methods.ila.stages import _stage1_lr_factor  # noqa: E402
from layerscope.viz.compare import expected_random_jaccard  # noqa: E402

SCHEDULES = ("linear", "constant")
GROUPS = ("alignment vs alignment", "alignment vs reasoning")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="default")
    p.add_argument("--runs-dir", default=str(ROOT / "runs"))
    p.add_argument("--md", default=None, help="markdown output (default RUNS/ila_schedule.md)")
    p.add_argument("--plot", default=None, help="plot of r per check (default RUNS/ila_schedule.png)")
    return p.parse_args(argv)


def penalty_runs(root: Path) -> dict:
    """{(dataset, seed): the penalty reading's LayerImportance} of the runs under ``root``."""
    if not root.is_dir():
        sys.exit(f"ila_schedule_report: no runs in {root}")
    runs, _ = load_runs(root)
    return {key: v["penalty"] for key, v in runs.items() if "penalty" in v}


def rate_at_stop(imp) -> float:
    """Stage 1's learning rate at its last step, as a fraction of the peak (--lr)."""
    mc = imp.method_config
    config = ILAConfig(
        max_steps=mc["max_steps"],
        warmup_ratio=mc["warmup_ratio"],
        lr_schedule=mc.get("lr_schedule", "linear"),
    )
    return _stage1_lr_factor(config)(int(imp.extras["stop_step"]) - 1)


def last_loss(imp, window: int = 8) -> float:
    losses = imp.extras.get("stage1_loss") or []
    return float(np.mean(losses[-window:])) if losses else float("nan")


def last_r(imp) -> float:
    curve = imp.extras.get("stage1_stability") or [[0, float("nan")]]
    return float(curve[-1][1])


def random_walk_r(imp) -> float:
    """sqrt(k / t) at the stop: r of t independent equal steps, checked every k."""
    return (imp.method_config["check_every"] / int(imp.extras["stop_step"])) ** 0.5


def stops_table(by_schedule: dict, keys: list) -> list[str]:
    module, block = Overlaps("module"), Overlaps("block")
    lines = [
        "| run | linear: stop step | rate there / peak | r | loss (last 8) | constant: stop step | r | sqrt(k/t) | "
        "loss (last 8) | J10% module | J30% module | J30% block | Spearman module |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        lin, con = by_schedule["linear"][key], by_schedule["constant"][key]
        lines.append(
            f"| {key[0]} s{key[1]} | {lin.extras['stop_step']} ({lin.extras['stop_reason']}) | "
            f"{rate_at_stop(lin):.2f} | {last_r(lin):.3f} | {last_loss(lin):.3f} | "
            f"{con.extras['stop_step']} ({con.extras['stop_reason']}) | {last_r(con):.3f} | "
            f"{random_walk_r(con):.3f} | {last_loss(con):.3f} | "
            f"{module.jaccard(lin, con, 0.1):.2f} | {module.jaccard(lin, con, 0.3):.2f} | "
            f"{block.jaccard(lin, con, 0.3):.2f} | {module.spearman(lin, con):.2f} |"
        )
    return lines


def overlap_table(by_schedule: dict, keys: list) -> list[str]:
    overlaps = {lv: Overlaps(lv) for lv in LEVELS}
    lines = [
        "| pairs | schedule | n | J10% module | J30% module | J30% block | Spearman module |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in GROUPS:
        for schedule in SCHEDULES:
            runs = {key: {"penalty": by_schedule[schedule][key]} for key in keys}
            ps = pairs(runs, "penalty")[group]
            if not ps:
                continue
            m, b = overlaps["module"], overlaps["block"]
            lines.append(
                f"| {group} | {schedule} | {len(ps)} | {mean(m.jaccard(x, y, 0.1) for x, y in ps):.2f} | "
                f"{mean(m.jaccard(x, y, 0.3) for x, y in ps):.2f} | {mean(b.jaccard(x, y, 0.3) for x, y in ps):.2f} | "
                f"{mean(m.spearman(x, y) for x, y in ps):.2f} |"
            )
    any_imp = by_schedule["linear"][keys[0]]
    n_mod, n_block = len(any_imp.players), len(Overlaps("block").at_level(any_imp).players)
    chance = [expected_random_jaccard(top_k_count(f, n), n) for f, n in ((0.1, n_mod), (0.3, n_mod), (0.3, n_block))]
    lines.append("| chance (random sets) | - | - | " + " | ".join(f"{c:.2f}" for c in chance) + " | 0.00 |")
    return lines


def plot(by_schedule: dict, keys: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    eps = None
    for i, key in enumerate(keys):
        for schedule, style in zip(SCHEDULES, ("-", "--")):
            imp = by_schedule[schedule][key]
            pts = [(s, r) for s, r in imp.extras.get("stage1_stability") or [] if r == r and r != float("inf")]
            if pts:
                ax.plot(*zip(*pts), linestyle=style, color=f"C{i}", label=f"{key[0]} s{key[1]} {schedule}")
            eps = imp.method_config.get("eps", eps)
    if eps:
        ax.axhline(eps, color="k", linewidth=0.8, label=f"eps {eps:g}")
    k = by_schedule["constant"][keys[0]].method_config["check_every"]
    steps = np.arange(k, max(ax.get_xlim()[1], k + 1))
    ax.plot(steps, np.sqrt(k / steps), color="grey", linestyle=":", label="sqrt(k/t): a random walk")
    ax.plot(steps, k / steps, color="grey", linestyle="-.", label="k/t: one fixed direction")
    ax.set_yscale("log")
    ax.set_xlabel("stage-1 step")
    ax.set_ylabel("relative update change r")
    ax.set_title("ILA stage 1: linear-decay rate (solid) vs constant rate (dashed)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    slug = model_slug(args.model)
    runs_dir = Path(args.runs_dir)
    by_schedule = {"linear": penalty_runs(runs_dir / slug), "constant": penalty_runs(runs_dir / f"{slug}_constant_lr")}
    keys = sorted(set(by_schedule["linear"]) & set(by_schedule["constant"]))
    if not keys:
        sys.exit("ila_schedule_report: no dataset and seed has a run under both schedules")
    con = by_schedule["constant"][keys[0]].method_config
    lines = [
        f"## ILA stage 1 under a linear-decay vs a constant learning rate, {slug}",
        "",
        f"{len(keys)} runs per schedule (penalty reading); constant: cap {con['max_steps']}, "
        f"warm-up {round(con['warmup_ratio'] * con['max_steps'])} steps, then lr {con['lr']:g} held.",
        "",
        "### Where stage 1 stops, and how far the two rankings agree",
        "",
        *stops_table(by_schedule, keys),
        "",
        "### Cross-dataset overlap under each schedule",
        "",
        *overlap_table(by_schedule, keys),
        "",
    ]
    md = Path(args.md) if args.md else runs_dir / "ila_schedule.md"
    atomic.write_text(md, "\n".join(lines))
    plot(by_schedule, keys, Path(args.plot) if args.plot else runs_dir / "ila_schedule.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
