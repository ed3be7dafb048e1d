"""Does ILA's epsilon criterion measure the update settling, or the learning rate decaying?

Stage 1 stops once r = ||dW_t - dW_(t-k)|| / ||dW_t|| stays below eps. Under the default schedule the rate
falls linearly to zero at --max-steps, which shrinks r whether or not the update has settled (docs/ila.md).
This report sets runs of experiments/ila_overlap.py made under different stage-1 schedules beside each other:

- linear:       `--lr-schedule linear` with the default cap and early stop (RUNS/<model>);
- linear-long:  `--lr-schedule linear --max-steps 360 --min-steps 360`, as many steps as the constant runs took,
                which separates "constant rate" from "longer training" (RUNS/linear360/<model>);
- constant:     `--lr-schedule constant --max-steps 360` (RUNS/<model>_constant_lr).

Each is optional (--linear / --linear-long / --constant point elsewhere, e.g. docs/results/ila_schedule/*).
It writes:

- where stage 1 stopped under each schedule (and the rate there, as a fraction of its peak), its loss, and how
  far each ranking agrees with the constant-rate ranking of the same data and seed (Jaccard of the top 10% / 30%,
  Spearman);
- the cross-dataset overlaps (alignment vs alignment, alignment vs reasoning) under each schedule;
- a plot of r per check, one line style per schedule, beside sqrt(k / t): r of an update that is a sum of t
  independent steps of equal size (a random walk), and k / t: r of equal steps in one fixed direction. At a
  constant rate r falls between the two with no settling at all.

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
from ila_overlap_report import LEVELS, Overlaps, load_runs, mean, pairs, type_matched_chance  # noqa: E402

from layerscope.core import atomic  # noqa: E402
from layerscope.core.importance import top_k_count  # noqa: E402
from layerscope.methods.ila import ILAConfig  # noqa: E402
from layerscope.methods.ila.stages import _stage1_lr_factor  # noqa: E402
from layerscope.viz.compare import expected_random_jaccard  # noqa: E402

SCHEDULES = ("linear", "linear-long", "constant")
LINE_STYLES = {"linear": "-", "linear-long": ":", "constant": "--"}
REFERENCE = "constant"
GROUPS = ("alignment vs alignment", "alignment vs reasoning")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="default")
    p.add_argument("--runs-dir", default=str(ROOT / "runs"))
    for schedule, default in (
        ("linear", "RUNS/<model>"),
        ("linear-long", "RUNS/linear360/<model>"),
        ("constant", "RUNS/<model>_constant_lr"),
    ):
        p.add_argument(f"--{schedule}", default=None, metavar="DIR", help=f"runs of this schedule (default {default})")
    p.add_argument("--md", default=None, help="markdown output (default RUNS/ila_schedule.md)")
    p.add_argument("--plot", default=None, help="plot of r per check (default RUNS/ila_schedule.png)")
    return p.parse_args(argv)


def schedule_dirs(args) -> dict[str, Path]:
    slug, runs = model_slug(args.model), Path(args.runs_dir)
    defaults = {
        "linear": runs / slug,
        "linear-long": runs / "linear360" / slug,
        "constant": runs / f"{slug}_constant_lr",
    }
    given = {"linear": args.linear, "linear-long": args.linear_long, "constant": args.constant}
    return {s: Path(given[s]) if given[s] else defaults[s] for s in SCHEDULES}


def penalty_runs(root: Path) -> dict:
    """{(dataset, seed): the penalty reading's LayerImportance} of the runs under ``root`` ({} if none)."""
    if not root.is_dir():
        return {}
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


def stops_table(by_schedule: dict) -> list[str]:
    """One row per run and schedule; the agreement columns compare with the constant-rate run of the same key."""
    module, block = Overlaps("module"), Overlaps("block")
    reference = by_schedule.get(REFERENCE, {})
    lines = [
        "| run | schedule | stop step | rate there / peak | r | sqrt(k/t) | loss (last 8) | "
        f"vs {REFERENCE}: J10% module | J30% module | J30% block | Spearman module |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({key for runs in by_schedule.values() for key in runs})
    for key in keys:
        for schedule, runs in by_schedule.items():
            if key not in runs:
                continue
            imp, ref = runs[key], reference.get(key)
            agree = "| - | - | - | - |"
            if ref is not None and schedule != REFERENCE:
                agree = (
                    f"| {module.jaccard(imp, ref, 0.1):.2f} | {module.jaccard(imp, ref, 0.3):.2f} | "
                    f"{block.jaccard(imp, ref, 0.3):.2f} | {module.spearman(imp, ref):.2f} |"
                )
            lines.append(
                f"| {key[0]} s{key[1]} | {schedule} | {imp.extras['stop_step']} ({imp.extras['stop_reason']}) | "
                f"{rate_at_stop(imp):.2f} | {last_r(imp):.3f} | {random_walk_r(imp):.3f} | {last_loss(imp):.3f} "
                + agree
            )
    return lines


def overlap_table(by_schedule: dict) -> list[str]:
    overlaps = {lv: Overlaps(lv) for lv in LEVELS}
    lines = [
        "| pairs | schedule | n | J10% module | J30% module | J30% module, chance with the same types | "
        "J30% block | Spearman module |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group in GROUPS:
        for schedule, runs in by_schedule.items():
            ps = pairs({key: {"penalty": imp} for key, imp in runs.items()}, "penalty")[group]
            if not ps:
                continue
            m, b = overlaps["module"], overlaps["block"]
            lines.append(
                f"| {group} | {schedule} | {len(ps)} | {mean(m.jaccard(x, y, 0.1) for x, y in ps):.2f} | "
                f"{mean(m.jaccard(x, y, 0.3) for x, y in ps):.2f} | "
                f"{mean(type_matched_chance(x, y) for x, y in ps):.2f} | "
                f"{mean(b.jaccard(x, y, 0.3) for x, y in ps):.2f} | {mean(m.spearman(x, y) for x, y in ps):.2f} |"
            )
    any_imp = next(iter(next(iter(by_schedule.values())).values()))
    n_mod, n_block = len(any_imp.players), len(Overlaps("block").at_level(any_imp).players)
    chance = [expected_random_jaccard(top_k_count(f, n), n) for f, n in ((0.1, n_mod), (0.3, n_mod), (0.3, n_block))]
    cells = [f"{c:.2f}" for c in chance]
    lines.append("| chance (random sets) | - | - | " + " | ".join([*cells[:2], "-", cells[2]]) + " | 0.00 |")
    return lines


def plot(by_schedule: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    datasets = sorted({key[0] for runs in by_schedule.values() for key in runs})
    eps, k = None, None
    for schedule, runs in by_schedule.items():
        for key, imp in sorted(runs.items()):
            curve = imp.extras.get("stage1_stability") or []
            pts = [(s, r) for s, r in curve if r == r and r != float("inf")]
            if pts:
                color = f"C{datasets.index(key[0])}"
                ax.plot(
                    *zip(*pts), linestyle=LINE_STYLES[schedule], color=color, label=f"{key[0]} s{key[1]} {schedule}"
                )
            eps = imp.method_config.get("eps", eps)
            k = imp.method_config["check_every"]
    if eps:
        ax.axhline(eps, color="k", linewidth=0.8, label=f"eps {eps:g}")
    steps = np.arange(k, max(ax.get_xlim()[1], k + 1))
    ax.plot(steps, np.sqrt(k / steps), color="grey", linestyle=(0, (1, 3)), label="sqrt(k/t): a random walk")
    ax.plot(steps, k / steps, color="grey", linestyle="-.", label="k/t: one fixed direction")
    ax.set_yscale("log")
    ax.set_xlabel("stage-1 step")
    ax.set_ylabel("relative update change r")
    styles = ", ".join(
        f"{s} {'solid' if st == '-' else 'dotted' if st == ':' else 'dashed'}"
        for s, st in LINE_STYLES.items()
        if s in by_schedule
    )
    ax.set_title(f"ILA stage 1 by learning-rate schedule ({styles})", fontsize=9)
    ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def describe(schedule: str, runs: dict) -> str:
    mc = next(iter(runs.values())).method_config
    warmup = round(mc["warmup_ratio"] * mc["max_steps"])
    floor = ", no early stop" if mc.get("min_steps", 0) >= mc["max_steps"] else ""
    return (
        f"- {schedule}: {len(runs)} runs (seeds {', '.join(sorted({str(s) for _, s in runs}))}), "
        f"{mc.get('lr_schedule', 'linear')} rate, cap {mc['max_steps']}{floor}, warm-up {warmup} steps, lr {mc['lr']:g}"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    found = {s: penalty_runs(d) for s, d in schedule_dirs(args).items()}
    by_schedule = {s: runs for s, runs in found.items() if runs}
    if not by_schedule:
        looked = ", ".join(str(d) for d in schedule_dirs(args).values())
        sys.exit(f"ila_schedule_report: no penalty runs in any of {looked}")
    lines = [
        f"## ILA stage 1 by learning-rate schedule, {model_slug(args.model)}",
        "",
        *(describe(s, runs) for s, runs in by_schedule.items()),
        "",
        "### Where stage 1 stops, and how far each ranking agrees with the constant-rate one",
        "",
        *stops_table(by_schedule),
        "",
        "### Cross-dataset overlap under each schedule",
        "",
        *overlap_table(by_schedule),
        "",
    ]
    runs_dir = Path(args.runs_dir)
    md = Path(args.md) if args.md else runs_dir / "ila_schedule.md"
    atomic.write_text(md, "\n".join(lines))
    plot(by_schedule, Path(args.plot) if args.plot else runs_dir / "ila_schedule.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
