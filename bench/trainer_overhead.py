"""Benchmark: where a fine-tuning step's time goes, for two selections, in one process.

The per-run step-time ratios in docs/finetune.md (the Trainer's whole step, each config in its
own process) sit above the same-run forward+backward ratios. This script measures both for the
same selections in the same process, on batches of the same shape, so the gap can be split into:

- ``fwd_bwd``: one forward + backward (the model's compute; the selection changes it),
- ``adamw``: one AdamW step over the trainable parameters,
- ``clip``: gradient-norm clipping over them (the Trainer does it every step, max_grad_norm 1),
- ``rest``: everything else inside the Trainer's step (its bookkeeping, the scheduler, peft's
  per-layer dispatch is already inside ``fwd_bwd``).

Every training example is cut to exactly ``--seq-len`` tokens (shorter ones are left out), so every
step sees a batch of the same shape and the step times are comparable with the fixed-batch ones.
Selections are interleaved (A, B, A, B, ...) so a shared, drifting CPU slows both alike.

    OMP_NUM_THREADS=1 python bench/trainer_overhead.py --model default \\
        --importance runs/ila/smollm2_lima_s0/importance.json \\
        --data ../shared/data/alignment/alpaca_gpt4_1k.json --configs all,top:0.3,top:0.3@15
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from layerscope.core.data import SFTData, collate, load_sft
from layerscope.core.importance import LayerImportance
from layerscope.core.layermap import build_layer_map
from layerscope.core.models import load_model
from layerscope.training import FinetuneConfig, finetune, time_forward_backward, time_optimizer_step
from layerscope.training.selection import parse_selection_spec, select_modules


def full_length(data: SFTData, seq_len: int) -> SFTData:
    kept = [e for e in data.examples if len(e.input_ids) == seq_len]
    if len(kept) < 8:
        raise SystemExit(f"only {len(kept)} examples reach {seq_len} tokens; lower --seq-len")
    return replace(data, examples=kept)


def time_clip(model, repeats: int) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    t0 = time.process_time()
    for _ in range(repeats):
        torch.nn.utils.clip_grad_norm_(params, 1.0)
    dt = (time.process_time() - t0) / repeats
    for p in params:
        p.grad = None
    return dt


def measure(args, imp: LayerImportance | None, config: str, rep: int) -> dict:
    mode, frac, min_block = parse_selection_spec(config)
    loaded = load_model(args.model)
    lm = build_layer_map(loaded.model)
    sel = select_modules(lm, imp, mode, frac, seed=0, check=False, min_block=min_block)
    data = full_length(
        load_sft(args.data, loaded.tokenizer, max_length=args.seq_len, limit=args.limit, shuffle_seed=0), args.seq_len
    )
    train, held = replace(data, examples=data.examples[4:]), replace(data, examples=data.examples[:4])
    cfg = FinetuneConfig(
        method=args.method,
        max_steps=args.steps,
        batch_size=args.batch_size,
        seed=rep,
        eval_before=False,
        save_adapter=False,
    )
    report = finetune(loaded.model, loaded.tokenizer, train, held, sel, cfg)
    model = report.trained_model
    batch = collate(train.examples[: args.batch_size], loaded.tokenizer.pad_token_id)
    fb = time_forward_backward(model, batch, repeats=args.repeats, clock=time.process_time)
    return {
        "config": config,
        "rep": rep,
        "trainer_step_s": report.cpu_time_per_step_s,
        "fwd_bwd_s": fb,
        "adamw_s": time_optimizer_step(model, args.repeats, time.process_time),
        "clip_s": time_clip(model, args.repeats),
        "trainable_params": report.trainable_params,
        "modules": len(sel.modules),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--importance", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--configs", default="all,top:0.3,top:0.3@15")
    p.add_argument("--method", default="lora", choices=["lora", "full"])
    p.add_argument("--steps", type=int, default=6, help="Trainer steps per measurement (the first is dropped)")
    p.add_argument("--repeats", type=int, default=4, help="repeats of each fixed-batch timing")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the configs")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--limit", type=int, default=400)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)

    imp = LayerImportance.load(args.importance)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    rows = []
    for rep in range(args.rounds):
        for c in configs:
            rows.append(measure(args, imp, c, rep))
            r = rows[-1]
            print(
                f"round {rep} {c:12s} trainer {r['trainer_step_s']:.3f}s  fwd+bwd {r['fwd_bwd_s']:.3f}s  "
                f"adamw {r['adamw_s']:.4f}s  clip {r['clip_s']:.4f}s",
                file=sys.stderr,
                flush=True,
            )

    def med(c, key):
        return statistics.median(r[key] for r in rows if r["config"] == c)

    base = configs[0]
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); {args.method}, batch {args.batch_size} x {args.seq_len}, "
        f"{args.steps} Trainer steps x {args.rounds} rounds (medians)\n"
    )
    print(
        "| selection | Trainer step s | fwd+bwd s | AdamW s | clip s | rest s | Trainer step vs "
        f"{base} | fwd+bwd+AdamW vs {base} |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in configs:
        step, fb, opt, clip = (med(c, k) for k in ("trainer_step_s", "fwd_bwd_s", "adamw_s", "clip_s"))
        rest = step - fb - opt - clip
        print(
            f"| {c} | {step:.3f} | {fb:.3f} | {opt:.4f} | {clip:.4f} | {rest:.3f} | "
            f"{step / med(base, 'trainer_step_s'):.2f}x | "
            f"{(fb + opt) / (med(base, 'fwd_bwd_s') + med(base, 'adamw_s')):.2f}x |"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
