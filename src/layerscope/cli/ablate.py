"""``layerscope ablate``: remove one player at a time and measure the drop (cornerstone layers).

Also holds the task / evaluator options shared with ``layerscope shapley``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from layerscope.cli.common import add_model_args, add_seed_arg, load_from_args, seed_everything
from layerscope.core.errors import ConfigError

LOG_NAME = "coalitions.jsonl"
PACKING_TOLERANCE = 2e-3  # as evaluate_task: packed and one-row-per-choice log-likelihoods must agree this well


def add_task_args(p, default_out: str) -> None:
    p.add_argument(
        "--task",
        default="arc_easy",
        help="known task (arc_easy, arc_challenge, boolq, piqa, openbook_qa, hellaswag, mmlu), an MC file, "
        "or loss:<SFT file> for negative held-out loss (default arc_easy)",
    )
    p.add_argument("--limit", type=int, default=None, help="first N items / examples (default all)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (default 16)")
    p.add_argument(
        "--max-length", type=int, default=512, help="with loss:<file>: tokens kept per example (default 512)"
    )
    p.add_argument(
        "--granularity",
        default="sublayer",
        choices=("sublayer", "block", "module"),
        help="players: sub-layers (attention / MLP), blocks, or linear modules (default sublayer)",
    )
    p.add_argument(
        "--cache-mb",
        type=float,
        default=2048.0,
        help="memory for cached hidden states in MiB (default 2048; 0 recomputes prefixes)",
    )
    p.add_argument("--uncached", action="store_true", help="plain full forward per coalition (the slow reference)")
    p.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: reuse the coalition values logged in OUT/coalitions.jsonl "
        "(every finished value is logged as it is computed; the log must come from the same model, "
        "task and settings)",
    )
    add_seed_arg(p)


def build_evaluator(loaded, spec: str, limit: int | None, batch_size: int, max_length: int):
    """(evaluator, data description) for ``--task``: an MC task, or ``loss:<SFT file>``."""
    from layerscope.scoring.evaluate import LossEvaluator, MCEvaluator

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if spec.startswith("loss:"):
        from layerscope.core.data import load_sft

        path = spec[len("loss:") :]
        if not path:
            raise ConfigError("--task loss:<file>: give an SFT file after 'loss:'")
        data = load_sft(path, loaded.tokenizer, max_length=max_length, limit=limit)
        ev = LossEvaluator(loaded.tokenizer, data.examples, batch_size=batch_size)
        return ev, {
            "task": "loss",
            "source": str(data.source),
            "fingerprint": data.fingerprint,
            "n_examples": len(data.examples),
            "metric": "-loss",
        }
    from layerscope.core.tasks import load_task
    from layerscope.methods.ablation import evaluator_info

    task = load_task(spec, limit=limit)
    ev = MCEvaluator(loaded.tokenizer, task, batch_size, model=loaded.model)
    if any(b.attention_mask.dim() == 4 for b in ev.batches) and not ev.check_packing(loaded.model) <= PACKING_TOLERANCE:
        ev = MCEvaluator(loaded.tokenizer, task, batch_size, layout="plain", model=loaded.model)
    return ev, evaluator_info(ev)


def build_engine(args):
    """Model, layer map, evaluator and coalition engine from the shared options."""
    from layerscope.core.distributed import init_from_env, local_device
    from layerscope.core.layermap import build_layer_map
    from layerscope.engine.coalitions import CoalitionEngine

    args.device = local_device(args.device)
    init_from_env(args.device)  # under torchrun / accelerate launch: items are sharded across processes
    seed_everything(args.seed)
    loaded = load_from_args(args)
    lm = build_layer_map(loaded.model)
    ev, data = build_evaluator(loaded, args.task, args.limit, args.batch_size, args.max_length)
    log = open_log(args, loaded, lm, data)
    engine = CoalitionEngine(
        loaded.model,
        lm,
        ev,
        args.granularity,
        cache_mb=args.cache_mb,
        uncached=args.uncached,
        progress=not args.no_progress,
        log=log,
    )
    if log.n_resumed:
        print(f"resuming: {log.n_resumed} coalition values read from {log.path}", file=sys.stderr)
    return loaded, engine, data


def open_log(args, loaded, layer_map, data):
    """The coalition log under --out (rank 0 of a multi-process run writes it; the others only read)."""
    from layerscope.core.distributed import barrier, is_main_process
    from layerscope.core.models import weights_fingerprint
    from layerscope.engine.coalition_log import CoalitionLog

    path = Path(args.out) / LOG_NAME
    if not args.resume and path.exists() and is_main_process():
        print(f"note: starting afresh; --resume would continue from the {path} left by an earlier run", file=sys.stderr)
    p = next(iter(loaded.model.parameters()))
    run = {
        "model": loaded.name,
        "weights": weights_fingerprint(loaded.model),
        "dtype": str(p.dtype),
        "device": p.device.type,
        "granularity": args.granularity,
        "players": layer_map.players(args.granularity),
        "data": data,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "engine": "uncached" if args.uncached else "cached",
    }
    # rank 0 reads (and trims) the log first; the others read it before anyone appends, so every
    # process starts from the same memo and they all evaluate the same coalitions together
    log = CoalitionLog(path, run, resume=args.resume) if is_main_process() else None
    barrier()
    if log is None:
        log = CoalitionLog(path, run, resume=args.resume, read_only=True)
    barrier()
    return log


def add_arguments(p) -> None:
    add_model_args(p)
    add_task_args(p, "layerscope-out/ablate")
    p.add_argument(
        "--abs-margin",
        type=float,
        default=0.02,
        help="cornerstone if the value with the player removed is within this of chance (default 0.02)...",
    )
    p.add_argument(
        "--rel-margin",
        type=float,
        default=0.10,
        help="... or within this fraction of the full model's gap above chance (default 0.10)",
    )


def run(args) -> int:
    from layerscope.methods.ablation import ablate
    from layerscope.viz.plots import bar_chart

    loaded, engine, data = build_engine(args)
    from layerscope.core.distributed import is_main_process

    try:
        imp = ablate(
            engine,
            model_name=loaded.name,
            data=data,
            abs_margin=args.abs_margin,
            rel_margin=args.rel_margin,
            progress=not args.no_progress,
            seed=args.seed,
        )
    finally:
        engine.log.close()
    if not is_main_process():
        return 0  # every process holds the same result; one writes it
    out = Path(args.out)
    path = imp.save(out / "importance.json")
    chart = bar_chart(imp, out / "ablation.png")
    full, chance = imp.baseline["full"], imp.baseline["chance"]
    metric = data.get("metric", "value")
    print(
        f"{data.get('task')}: full model {metric} {full:.4f}, chance {chance:.4f}; "
        f"{len(imp.players)} {imp.granularity} players, {imp.timings['seconds']:.1f}s ({engine.mode} engine)"
    )
    cs = imp.extras["cornerstones"]
    print(f"cornerstones ({len(cs)}): {', '.join(cs) if cs else 'none'}")
    top = imp.ranking()[:5]
    s = imp.score_of()
    print("largest drops: " + ", ".join(f"{p} {s[p]:+.4f}" for p in top))
    print(f"wrote {path} and {chart}")
    return 0
