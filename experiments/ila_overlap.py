"""Run ILA over alignment and reasoning datasets x seeds, for the overlap report (ila_overlap_report.py).

The ILA paper (arXiv 2410.17875) reports that the top modules found on different alignment datasets
overlap by ~90% (Jaccard), and by ~86% between alignment and reasoning data. This script produces the
runs that test it; `experiments/ila_overlap_report.py` turns them into tables, plots and verdicts.

For every (dataset, seed) it runs stage 1 (LoRA until epsilon-stable) once and saves the adapter, then
stage 2 in both readings of the sparsity budget from that same adapter (no retraining):

    RUNS/<model>/<dataset>_s<seed>/adapter/               stage-1 LoRA adapter (peft)
                                   penalty/importance.json  stage 2, --sparsity penalty (holds stage 1's log)
                                   budget/importance.json   stage 2, --sparsity budget (adapter reloaded)
    RUNS/<model>/<dataset>_s<seed>_x<F>/penalty/...         the stability run: stage 1 forced to F x the
                                                            stable run's stop step, stage 2 F x as long

Finished results are always read back, so re-running the same command continues where it stopped; with
--resume an interrupted stage also continues from its last checkpoint (run_ila's checkpoints, in
<run>/checkpoint, removed when the result is saved). The data subset (--limit examples drawn with
--data-seed) is the same for every seed, so seeds vary only LoRA init, dropout and batch order.

Parallel lanes (one torch thread each, on a shared CPU): --lane i/n runs every n-th job starting at i;
the stability run is the fourth job, after its base run (it waits for it if another lane has it).

Smoke (seconds):   python experiments/ila_overlap.py --model ../shared/models/stories260K --limit 32 \
                       --seq-len 128 --max-steps 10 --min-steps 4 --check-every 2 --gate-steps 5
SmolLM2 (docs/ila.md; 105 min for the whole grid in two lanes of 1 thread on the shared 2-core CPU):
    for i in 0 1; do python experiments/ila_overlap.py --model default --threads 1 --lane $i/2 --resume \
        > runs/ila_lane$i.log 2>&1 & done
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DATASETS = ("alpaca_5000", "alpaca_gpt4_1k", "lima", "gsm8k_cot")
SPARSITY = ("penalty", "budget")
WAIT_POLL_S = 30


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="default", help="model spec for load_model (default: SmolLM2)")
    p.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help="comma-separated file stems, looked up in ../shared/data/{alignment,reasoning} (.json / .jsonl), or paths",
    )
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds (default 0,1)")
    p.add_argument("--limit", type=int, default=480, help="examples drawn per dataset (--data-seed)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=240, help="stage-1 cap")
    p.add_argument("--min-steps", type=int, default=72, help="stage-1 floor")
    p.add_argument("--check-every", type=int, default=8)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--lr-schedule",
        choices=("linear", "constant"),
        default="linear",
        help="stage 1's rate after warm-up (default linear); constant runs go to RUNS/<model>_constant_lr",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="stage-1 warm-up in steps (default 10%% of the cap; 24 keeps a 360-step cap's warm-up at the 240 cap's)",
    )
    p.add_argument(
        "--sparsity",
        default=",".join(SPARSITY),
        help="comma-separated stage-2 readings to run (default penalty,budget; penalty always runs first)",
    )
    p.add_argument("--gate-steps", type=int, default=48)
    p.add_argument("--gate-lr", type=float, default=0.3)
    p.add_argument("--long-factor", type=int, default=2, help="stability run length (default 2x; 1: none)")
    p.add_argument("--long-dataset", default=None, help="dataset of the stability run (default: the first)")
    p.add_argument("--lane", default="0/1", help="i/n: run every n-th job starting at job i (default 0/1)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted stage from its checkpoint")
    p.add_argument("--checkpoint-every", type=int, default=16)
    p.add_argument("--runs-dir", default=str(ROOT / "runs"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, auto: as load_model")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, auto: as load_model")
    return p.parse_args(argv)


def model_slug(spec: str) -> str:
    from layerscope.core.models import DEFAULT_ALIASES, DEFAULT_MODEL_NAME

    return DEFAULT_MODEL_NAME if spec.lower() in DEFAULT_ALIASES else Path(spec.rstrip("/")).name.removesuffix(".gguf")


def dataset_path(name: str) -> Path:
    if Path(name).is_file():
        return Path(name)
    for sub in ("alignment", "reasoning"):
        for ext in (".json", ".jsonl"):
            if (SHARED_DATA / sub / f"{name}{ext}").is_file():
                return SHARED_DATA / sub / f"{name}{ext}"
    sys.exit(f"ila_overlap: dataset {name!r} not found in {SHARED_DATA}/alignment or /reasoning")


def dataset_stem(name: str) -> str:
    return Path(name).name.split(".")[0]


def parse_lane(spec: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        sys.exit(f"ila_overlap: --lane {spec!r} must be i/n, e.g. 0/2")
    if not 0 <= i < n:
        sys.exit(f"ila_overlap: --lane {spec!r}: need 0 <= i < n")
    return i, n


def jobs(args) -> list[tuple[str, int, int]]:
    """(dataset, seed, length factor) in run order; factor > 1 is the stability run."""
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = [(d, s, 1) for d in datasets for s in seeds]
    if args.long_factor > 1:
        # Fourth in line: with two lanes it lands in the lane that does not run its base run, at
        # about the time the base finishes, and both lanes get the same amount of work.
        out.insert(min(3, len(out)), (args.long_dataset or datasets[0], seeds[0], args.long_factor))
    return out


def run_dir(root: Path, dataset: str, seed: int, factor: int) -> Path:
    return root / (f"{dataset_stem(dataset)}_s{seed}" + (f"_x{factor}" if factor > 1 else ""))


def config_for(args, seed: int, sparsity: str, out: Path, *, steps: int | None = None, adapter: Path | None = None):
    from layerscope.methods.ila import ILAConfig

    factor_gate = 1 if steps is None else args.long_factor
    stage2 = dict(
        batch_size=args.batch_size,
        gate_steps=factor_gate * args.gate_steps,
        gate_lr=args.gate_lr,
        sparsity=sparsity,
        seed=seed,
    )
    if adapter is not None:
        # stage 1 is skipped: the adapter carries its own stage-1 settings, and ILAConfig refuses
        # stage-1 options (max_steps, min_steps, check_every, eps, lr, ...) next to adapter=
        return ILAConfig(adapter=str(adapter), **stage2)
    cap = steps or args.max_steps
    warmup = {} if args.warmup_steps is None else {"warmup_ratio": args.warmup_steps / cap}
    return ILAConfig(
        **warmup,
        max_steps=cap,
        min_steps=steps or args.min_steps,
        check_every=args.check_every,
        eps=args.eps,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        save_adapter=str(out / "adapter"),
        **stage2,
    )


# stage-1 settings a run folder's name does not spell (the schedule names the model folder, not its warm-up)
STAGE1_SETTINGS = ("lr", "lr_schedule", "warmup_ratio", "max_steps", "min_steps", "check_every", "eps")


def check_same_stage1(done, config, result: Path) -> None:
    """A finished result is reused only if its stage 1 ran with this run's settings: another --warmup-steps
    or cap into the same RUNS folder would otherwise be read back as if it were this run."""
    if config.adapter is not None:
        return  # stage 2 on a saved adapter: stage 1's settings are the adapter's own
    differ = [
        f"{key} {done.method_config.get(key)!r} -> {getattr(config, key)!r}"
        for key in STAGE1_SETTINGS
        if done.method_config.get(key) != getattr(config, key)
    ]
    if differ:
        sys.exit(
            f"ila_overlap: {result} was made with other stage-1 settings ({', '.join(differ)}): use another --runs-dir"
        )


def run_stage(args, loaded, data, config, out: Path, sparsity: str):
    """One ILA run into out/<sparsity>/importance.json, checkpointed in out/checkpoint."""
    from layerscope.core.importance import LayerImportance
    from layerscope.methods.ila import run_ila
    from layerscope.viz.heatmap import plot_loss_curves, plot_module_heatmap

    result = out / sparsity / "importance.json"
    if result.exists():
        done = LayerImportance.load(result)
        check_same_stage1(done, config, result)
        print(f"[done] {result}", file=sys.stderr, flush=True)
        return done
    stage1 = f"stage 1 from adapter {config.adapter}" if config.adapter else f"stage-1 cap {config.max_steps}"
    print(
        f"== {out.name} {sparsity}: {stage1}, stage-2 {config.gate_steps} steps",
        file=sys.stderr,
        flush=True,
    )
    ckpt = out / "checkpoint"
    imp = run_ila(
        loaded.model,
        loaded.tokenizer,
        data,
        config,
        model_name=loaded.name,
        checkpoint_dir=ckpt,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
    )
    plot_module_heatmap(imp, out / sparsity / "heatmap.png")
    plot_loss_curves(imp, out / sparsity / "loss.png")
    imp.save(result)  # last: a result file means the run is complete
    shutil.rmtree(ckpt, ignore_errors=True)
    return imp


def wait_for(path: Path) -> None:
    while not path.exists():
        print(f"[wait] {path} (another lane runs it)", file=sys.stderr, flush=True)
        time.sleep(WAIT_POLL_S)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from layerscope.core.data import load_sft
    from layerscope.core.importance import LayerImportance
    from layerscope.core.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    lane, lanes = parse_lane(args.lane)
    root = Path(args.runs_dir) / (model_slug(args.model) + ("" if args.lr_schedule == "linear" else "_constant_lr"))
    readings = [r.strip() for r in args.sparsity.split(",") if r.strip()]
    if not set(readings) <= set(SPARSITY):
        sys.exit(f"ila_overlap: --sparsity {args.sparsity!r}: choose from {', '.join(SPARSITY)}")
    mine = jobs(args)[lane::lanes]
    print(f"lane {lane}/{lanes}: {mine}", file=sys.stderr, flush=True)
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    data_cache: dict[str, object] = {}
    t0 = time.perf_counter()
    for dataset, seed, factor in mine:
        if dataset not in data_cache:
            data_cache[dataset] = load_sft(
                str(dataset_path(dataset)),
                loaded.tokenizer,
                max_length=args.seq_len,
                limit=args.limit,
                shuffle_seed=args.data_seed,
            )
        data = data_cache[dataset]
        out = run_dir(root, dataset, seed, factor)
        if factor > 1:
            base = run_dir(root, dataset, seed, 1) / "penalty" / "importance.json"
            wait_for(base)
            steps = factor * int(LayerImportance.load(base).extras["stop_step"])
            run_stage(args, loaded, data, config_for(args, seed, "penalty", out, steps=steps), out, "penalty")
            continue
        run_stage(args, loaded, data, config_for(args, seed, "penalty", out), out, "penalty")
        if "budget" in readings:
            adapter = out / "adapter"
            run_stage(args, loaded, data, config_for(args, seed, "budget", out, adapter=adapter), out, "budget")
    print(f"lane {lane}/{lanes} finished in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
