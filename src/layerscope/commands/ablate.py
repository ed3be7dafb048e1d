"""``layerscope ablate``: remove one player at a time and measure the drop (cornerstone layers).

Also holds the task / evaluator options shared with ``layerscope shapley``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .common import add_model_args, add_seed_arg, load_from_args, seed_everything

PACKING_TOLERANCE = 2e-3  # as evaluate_task: packed and one-row-per-choice log-likelihoods must agree this well


def add_task_args(p, default_out: str) -> None:
    p.add_argument("--task", default="arc_easy",
                   help="known task (arc_easy, arc_challenge, boolq, piqa, openbook_qa, hellaswag, mmlu), an MC file, "
                        "or loss:<SFT file> for negative held-out loss (default arc_easy)")
    p.add_argument("--limit", type=int, default=None, help="first N items / examples (default all)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (default 16)")
    p.add_argument("--max-length", type=int, default=512, help="with loss:<file>: tokens kept per example (default 512)")
    p.add_argument("--granularity", default="sublayer", choices=("sublayer", "block", "module"),
                   help="players: sub-layers (attention / MLP), blocks, or linear modules (default sublayer)")
    p.add_argument("--cache-mb", type=float, default=2048.0,
                   help="memory for cached hidden states in MiB (default 2048; 0 recomputes prefixes)")
    p.add_argument("--uncached", action="store_true", help="plain full forward per coalition (the slow reference)")
    p.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_seed_arg(p)


def build_evaluator(loaded, spec: str, limit: int | None, batch_size: int, max_length: int):
    """(evaluator, data description) for ``--task``: an MC task, or ``loss:<SFT file>``."""
    from ..evaluate import LossEvaluator, MCEvaluator

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if spec.startswith("loss:"):
        from ..data import load_sft

        path = spec[len("loss:"):]
        if not path:
            raise ConfigError("--task loss:<file>: give an SFT file after 'loss:'")
        data = load_sft(path, loaded.tokenizer, max_length=max_length, limit=limit)
        ev = LossEvaluator(loaded.tokenizer, data.examples, batch_size=batch_size)
        return ev, {"task": "loss", "source": str(data.source), "fingerprint": data.fingerprint,
                    "n_examples": len(data.examples), "metric": "-loss"}
    from ..ablation import evaluator_info
    from ..tasks import load_task

    task = load_task(spec, limit=limit)
    ev = MCEvaluator(loaded.tokenizer, task, batch_size, model=loaded.model)
    if any(b.attention_mask.dim() == 4 for b in ev.batches) and not ev.check_packing(loaded.model) <= PACKING_TOLERANCE:
        ev = MCEvaluator(loaded.tokenizer, task, batch_size, layout="plain", model=loaded.model)
    return ev, evaluator_info(ev)


def build_engine(args):
    """Model, layer map, evaluator and coalition engine from the shared options."""
    from ..coalitions import CoalitionEngine
    from ..layermap import build_layer_map

    seed_everything(args.seed)
    loaded = load_from_args(args)
    lm = build_layer_map(loaded.model)
    ev, data = build_evaluator(loaded, args.task, args.limit, args.batch_size, args.max_length)
    engine = CoalitionEngine(loaded.model, lm, ev, args.granularity, cache_mb=args.cache_mb, uncached=args.uncached,
                             progress=not args.no_progress)
    return loaded, engine, data


def add_arguments(p) -> None:
    add_model_args(p)
    add_task_args(p, "layerscope-out/ablate")
    p.add_argument("--abs-margin", type=float, default=0.02,
                   help="cornerstone if the value with the player removed is within this of chance (default 0.02)...")
    p.add_argument("--rel-margin", type=float, default=0.10,
                   help="... or within this fraction of the full model's gap above chance (default 0.10)")


def run(args) -> int:
    from ..ablation import ablate
    from ..plots import bar_chart

    loaded, engine, data = build_engine(args)
    imp = ablate(engine, model_name=loaded.name, data=data, abs_margin=args.abs_margin, rel_margin=args.rel_margin,
                 progress=not args.no_progress, seed=args.seed)
    out = Path(args.out)
    path = imp.save(out / "importance.json")
    chart = bar_chart(imp, out / "ablation.png")
    full, chance = imp.baseline["full"], imp.baseline["chance"]
    metric = data.get("metric", "value")
    print(f"{data.get('task')}: full model {metric} {full:.4f}, chance {chance:.4f}; "
          f"{len(imp.players)} {imp.granularity} players, {imp.timings['seconds']:.1f}s ({engine.mode} engine)")
    cs = imp.extras["cornerstones"]
    print(f"cornerstones ({len(cs)}): {', '.join(cs) if cs else 'none'}")
    top = imp.ranking()[:5]
    s = imp.score_of()
    print("largest drops: " + ", ".join(f"{p} {s[p]:+.4f}" for p in top))
    print(f"wrote {path} and {chart}")
    return 0
