"""Do the important layers found by ILA agree across alignment datasets, seeds and run lengths?

The ILA paper (arXiv 2410.17875) reports that the top modules found on different alignment
datasets overlap by nearly 90% (Jaccard). This script runs ILA on one model over the three
alignment sets in ../shared/data/alignment x several seeds, plus one run trained 3x longer,
and writes a markdown section with:

- the cross-dataset Jaccard matrix of the top-30% module sets (mean over seed pairs; the
  diagonal is the same dataset with different seeds) and the Spearman matrix likewise,
- the same-dataset / different-seed overlaps,
- the stability overlap: the epsilon-stable run vs. one whose stage 1 runs 3x as many steps
  (forced: min = max = 3 x the stop step) and whose stage 2 runs 3x as many steps,
- the chance level (expected Jaccard of two random top-K sets),
- stage-1 / stage-2 wall times and losses.

Each run is saved to RUNS/<model>/<dataset>_s<seed>/ (importance.json, heatmap.png, loss.png,
adapter/); with --reuse finished runs are read back instead of re-run. The data subset
(--limit examples, drawn with --data-seed) is the same for every seed, so seeds vary only
LoRA init, dropout and batch order.

Smoke (seconds):   python experiments/ila_overlap.py --model ../shared/models/stories260K \
                       --limit 32 --seq-len 128 --max-steps 10 --gate-steps 5
stories260K:       python experiments/ila_overlap.py --model ../shared/models/stories260K --limit 256 --seq-len 256
SmolLM2, ~4.5 min a run on the shared 2-core CPU (measured under load with 1 thread, 4 x ~110
tokens: stage-1 step 7.0 s, stage-2 step 5.4 s), 7 runs ~40 min in all:
                   python experiments/ila_overlap.py --model default --threads 1 --limit 96 --seq-len 128 \
                       --batch-size 4 --max-steps 24 --min-steps 12 --check-every 4 --eps 0.15 \
                       --gate-steps 16 --gate-lr 0.3
(--threads 1: with other jobs on the 2 cores, 2 torch threads ran 3-4x slower than 1.)
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data" / "alignment"
DATASETS = ("alpaca_5000", "alpaca_gpt4_1k", "lima")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        default=str(ROOT.parent / "shared" / "models" / "stories260K"),
        help="model spec for layerscope.models.load_model (default: stories260K; 'default' = SmolLM2)",
    )
    p.add_argument("--data-dir", default=str(DATA_DIR))
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated file stems in --data-dir")
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds (default 0,1)")
    p.add_argument("--limit", type=int, default=256, help="examples per dataset (random subset, --data-seed)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=200, help="stage-1 cap")
    p.add_argument("--min-steps", type=int, default=20, help="stage-1 floor")
    p.add_argument("--check-every", type=int, default=10)
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--gate-steps", type=int, default=100)
    p.add_argument("--gate-lr", type=float, default=0.1)
    p.add_argument("--sparsity", default="penalty", choices=("penalty", "budget"))
    p.add_argument("--long-factor", type=int, default=3, help="length of the stability run (default 3x)")
    p.add_argument("--fraction", type=float, default=0.3, help="top-K fraction for the overlaps (default 0.3)")
    p.add_argument("--runs-dir", default=str(ROOT / "runs"))
    p.add_argument("--reuse", action="store_true", help="read back finished runs instead of re-running them")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--md", default=None, help="markdown output (default RUNS/<model>/ila_overlap.md)")
    return p.parse_args(argv)


def model_slug(spec: str) -> str:
    from layerscope.core.models import DEFAULT_ALIASES, DEFAULT_MODEL_NAME

    return DEFAULT_MODEL_NAME if spec.lower() in DEFAULT_ALIASES else Path(spec.rstrip("/")).name.removesuffix(".gguf")


def run_one(args, loaded, data, seed: int, out: Path, *, max_steps=None, min_steps=None, gate_steps=None):
    from layerscope.core.importance import LayerImportance
    from layerscope.methods.ila import ILAConfig, run_ila
    from layerscope.viz.heatmap import plot_loss_curves, plot_module_heatmap

    if args.reuse and (out / "importance.json").exists():
        print(f"[reuse] {out}", file=sys.stderr)
        return LayerImportance.load(out)
    config = ILAConfig(
        max_steps=max_steps or args.max_steps,
        min_steps=min_steps if min_steps is not None else args.min_steps,
        check_every=args.check_every,
        eps=args.eps,
        lr=args.lr,
        batch_size=args.batch_size,
        gate_steps=gate_steps or args.gate_steps,
        gate_lr=args.gate_lr,
        sparsity=args.sparsity,
        seed=seed,
        save_adapter=str(out / "adapter"),
    )
    print(f"== {out.name}: stage-1 cap {config.max_steps}, stage-2 {config.gate_steps} steps", file=sys.stderr)
    imp = run_ila(loaded.model, loaded.tokenizer, data, config, model_name=loaded.name)
    imp.save(out / "importance.json")
    plot_module_heatmap(imp, out / "heatmap.png")
    plot_loss_curves(imp, out / "loss.png")
    return imp


def _mean(xs) -> float:
    xs = list(xs)
    return float(np.mean(xs)) if xs else float("nan")


def _tail_loss(curve: list[float]) -> float:
    n = max(1, len(curve) // 10)
    return _mean(curve[-n:]) if curve else float("nan")


def markdown(args, slug: str, runs: dict, long_key, long_imp, wall: float) -> str:
    from layerscope.core.importance import spearman, top_jaccard, top_k_count
    from layerscope.viz.compare import expected_random_jaccard

    f = args.fraction
    datasets = list(dict.fromkeys(d for d, _ in runs))
    seeds = list(dict.fromkeys(s for _, s in runs))
    any_imp = next(iter(runs.values()))
    n = len(any_imp.players)
    k = top_k_count(f, n)
    chance = expected_random_jaccard(k, n)

    def pair_mean(fn, a: str, b: str) -> float:
        if a == b:
            return _mean(fn(runs[a, s], runs[a, t]) for s, t in itertools.combinations(seeds, 2))
        return _mean(fn(runs[a, s], runs[b, t]) for s in seeds for t in seeds)

    jac = lambda x, y: top_jaccard(x, y, f)  # noqa: E731
    lines = [
        f"## ILA overlap on {slug}",
        "",
        f"{len(datasets)} datasets x {len(seeds)} seeds; {args.limit} examples each (subset seed {args.data_seed}), "
        f"{args.seq_len} tokens, batch {args.batch_size}; stage 1: lr {args.lr:g}, cap {args.max_steps}, floor "
        f"{args.min_steps}, eps {args.eps:g} every {args.check_every} steps; stage 2: {args.gate_steps} steps, "
        f"gate lr {args.gate_lr:g}, sparsity {args.sparsity}. {n} modules; top {f:.0%} = {k} modules; "
        f"two random top-{k} sets give Jaccard {chance:.2f} on average. Total wall time {wall / 60:.1f} min.",
        "",
        f"### Jaccard of top-{f:.0%} sets across datasets",
        "(off-diagonal: mean over all seed pairs; diagonal: same dataset, different seeds)",
        "",
        "| | " + " | ".join(datasets) + " |",
        "|---" * (len(datasets) + 1) + "|",
    ]
    for a in datasets:
        lines.append(f"| {a} | " + " | ".join(f"{pair_mean(jac, a, b):.2f}" for b in datasets) + " |")
    cross = [pair_mean(jac, a, b) for a, b in itertools.combinations(datasets, 2)]
    same = [pair_mean(jac, a, a) for a in datasets] if len(seeds) > 1 else []
    lines += [
        "",
        f"Mean cross-dataset Jaccard {_mean(cross):.2f}"
        + (f"; mean same-dataset (different seed) Jaccard {_mean(same):.2f}" if same else "")
        + f"; chance {chance:.2f}.",
        "",
        "### Spearman rank correlation (same layout)",
        "",
        "| | " + " | ".join(datasets) + " |",
        "|---" * (len(datasets) + 1) + "|",
    ]
    for a in datasets:
        lines.append(f"| {a} | " + " | ".join(f"{pair_mean(spearman, a, b):.2f}" for b in datasets) + " |")
    if len(seeds) > 1:
        lines += [
            "",
            "### Same dataset, different seeds",
            "",
            "| dataset | seeds | Jaccard | Spearman |",
            "|---|---|---|---|",
        ]
        for a in datasets:
            for s, t in itertools.combinations(seeds, 2):
                lines.append(
                    f"| {a} | {s} vs {t} | {jac(runs[a, s], runs[a, t]):.2f} | {spearman(runs[a, s], runs[a, t]):.2f} |"
                )
    if long_imp is not None:
        base = runs[long_key]
        lines += [
            "",
            f"### Stability: {long_key[0]} seed {long_key[1]}, epsilon-stable vs {args.long_factor}x longer",
            "",
            f"Stage 1 stopped at step {base.extras['stop_step']} ({base.extras['stop_reason']}); the long run "
            f"trained {long_imp.extras['stop_step']} stage-1 steps and {long_imp.method_config['gate_steps']} "
            f"stage-2 steps. Jaccard of top-{f:.0%} sets {jac(base, long_imp):.2f}, Spearman "
            f"{spearman(base, long_imp):.2f}.",
        ]
    lines += [
        "",
        "### Runs",
        "",
        "| run | examples | stage-1 stop | stage-1 loss first -> last | stage-2 loss | stage-1 s | stage-2 s | "
        f"top-{f:.0%} by module type |",
        "|---|---|---|---|---|---|---|---|",
    ]
    all_runs = list(runs.items()) + (
        [((long_key[0], f"{long_key[1]} x{args.long_factor}"), long_imp)] if long_imp else []
    )
    for (d, s), imp in all_runs:
        ex, t = imp.extras, imp.timings
        types: dict[str, int] = {}
        record = {p.name: p for p in imp.player_records()}
        for name in imp.top(f):
            types[record[name].module_type] = types.get(record[name].module_type, 0) + 1
        comp = ", ".join(f"{ty} {c}" for ty, c in sorted(types.items(), key=lambda kv: -kv[1]))
        s1 = ex.get("stage1_loss") or [float("nan")]
        lines.append(
            f"| {d} s{s} | {imp.data.get('n_items')} | {ex['stop_step']} ({ex['stop_reason']}) | "
            f"{s1[0]:.3f} -> {_tail_loss(s1):.3f} | {_tail_loss(ex.get('stage2_loss', [])):.3f} | "
            f"{t.get('stage1_s', 0):.1f} | {t.get('stage2_s', 0):.1f} | {comp} |"
        )
    s1t = [imp.timings.get("stage1_s", 0) for imp in runs.values()]
    s2t = [imp.timings.get("stage2_s", 0) for imp in runs.values()]
    lines += ["", f"Mean wall time per run: stage 1 {_mean(s1t):.1f} s, stage 2 {_mean(s2t):.1f} s.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from layerscope.core.data import load_sft
    from layerscope.core.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    slug = model_slug(args.model)
    root = Path(args.runs_dir) / slug
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    loaded = load_model(args.model)
    runs = {}
    long_key, long_imp = (datasets[0], seeds[0]), None
    for d in datasets:
        data = load_sft(
            str(Path(args.data_dir) / f"{d}.json"),
            loaded.tokenizer,
            max_length=args.seq_len,
            limit=args.limit,
            shuffle_seed=args.data_seed,
        )
        for s in seeds:
            runs[d, s] = run_one(args, loaded, data, s, root / f"{d}_s{s}")
        if (d, seeds[0]) == long_key and args.long_factor > 1:
            steps = args.long_factor * int(runs[long_key].extras["stop_step"])
            long_imp = run_one(
                args,
                loaded,
                data,
                seeds[0],
                root / f"{d}_s{seeds[0]}_x{args.long_factor}",
                max_steps=steps,
                min_steps=steps,
                gate_steps=args.long_factor * args.gate_steps,
            )
    md = markdown(args, slug, runs, long_key, long_imp, time.perf_counter() - t0)
    out = Path(args.md) if args.md else root / "ila_overlap.md"
    from layerscope.core import atomic

    atomic.write_text(out, md)
    print(md)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
