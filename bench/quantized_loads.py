"""Benchmark: a model loaded in float32, 4-bit and 8-bit (bitsandbytes), on the same task items: the
weights' size as stored, the evaluation's time, the process's peak memory and its anonymous memory after
the evaluation, the accuracy,
and how far the quantised log-likelihoods move from float32's.

Each load runs in its own process, so the peak resident memory (``ru_maxrss``) is that load's alone
(on a GPU, peak CUDA memory is reported instead). On a CPU, bitsandbytes saved neither (docs/large-models.md).

    python bench/quantized_loads.py --model default --limit 100 --threads 1           # CPU
    python bench/quantized_loads.py --model default --device cuda --dtype bfloat16    # a GPU

A shared CPU makes times noisy: compare ratios from the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

MODES = ("none", "4bit", "8bit")


def measure(args) -> dict:
    """One load (``args.load_in``) in this process: timings, memory, scores."""
    import resource
    import time

    import torch

    from layerscope.core.models import load_model
    from layerscope.core.tasks import load_task
    from layerscope.scoring.multiple_choice import mc_evaluator

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    loaded = load_model(args.model, device=args.device, dtype=args.dtype, load_in=args.load_in)
    load_s = time.perf_counter() - start
    task = load_task(args.task, limit=args.task_limit)
    evaluator = mc_evaluator(loaded.tokenizer, task, args.batch_size, loaded.model)
    start = time.perf_counter()
    result = evaluator.evaluate(loaded.model)
    if args.device == "cuda":
        torch.cuda.synchronize()
    eval_s = time.perf_counter() - start
    if args.device == "cuda":
        peak, held = torch.cuda.max_memory_allocated() / 2**20, torch.cuda.memory_allocated() / 2**20
    else:  # the peak includes the load itself; what stays resident afterwards is what a long run holds
        peak, held = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, _resident_mib()
    return {
        "load_in": args.load_in or "none",
        "load_s": round(load_s, 2),
        "eval_s": round(eval_s, 2),
        "peak_mib": round(peak),
        "held_mib": round(held),
        "weights_mib": round(_tensor_bytes(loaded.model) / 2**20),
        "acc": result.metrics.get("acc"),
        "acc_norm": result.metrics.get("acc_norm"),
        "loglik": [x for item in result.loglikelihoods for x in item],
    }


def _tensor_bytes(model) -> int:
    """Bytes of the model's parameters and buffers as stored (packed 4-/8-bit weights at their size)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _resident_mib() -> float:
    """This process's anonymous resident memory now (Linux), MiB: the pages of a weights file that a load
    leaves mapped count in the resident size too, but the kernel drops them when memory runs short."""
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("RssAnon:"))
    return int(kib) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--limit", type=int, default=100, help="task items (default 100)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--load-in", default=None, help=argparse.SUPPRESS)  # one measurement, in a child process
    p.add_argument("--task-limit", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load_in is not None:
        args.load_in = None if args.load_in == "none" else args.load_in
        print(json.dumps(measure(args)))
        return
    rows = []
    for mode in MODES:
        child = [sys.executable, __file__, "--load-in", mode, "--task-limit", str(args.limit)]
        child += ["--model", args.model, "--task", args.task, "--batch-size", str(args.batch_size)]
        child += ["--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads)]
        out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base = rows[0]
    print(f"{args.model} on {args.task} ({args.limit} items), {args.device} {args.dtype}, {args.threads} thread(s)")
    header = f"{'weights':8} {'MiB':>5} {'load s':>7} {'eval s':>7} {'x fp':>6} {'peak MiB':>9} {'anon MiB':>9}"
    print(header + f" {'acc':>6} {'acc_norm':>8}  max |dLL|")
    for row in rows:
        gap = max(abs(a - b) for a, b in zip(row["loglik"], base["loglik"]))
        print(
            f"{row['load_in']:8} {row['weights_mib']:5d} {row['load_s']:7.1f} {row['eval_s']:7.1f} "
            f"{row['eval_s'] / base['eval_s']:6.2f} "
            f"{row['peak_mib']:9d} {row['held_mib']:9d} {row['acc']:6.3f} {row['acc_norm']:8.3f}  {gap:.3f}"
        )


if __name__ == "__main__":
    main()
