"""Benchmark: what the coalition engine's per-call weights check costs (``engine/weights_stamp.py``).

The engine stamps the model's parameters at construction and again before every ``values()`` /
``value()`` call; this times one stamp on a loaded model (median and min of ``--repeats``), and the
same model with every linear weight transposed in place of its layout (a non-contiguous weight,
which the sampling must read without copying). Results go in docs/performance.md, "Ablation engine".

    python bench/weights_stamp.py --model default --repeats 20 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from layerscope.core.models import load_model
from layerscope.engine.weights_stamp import weights_stamp


def time_stamp(model: torch.nn.Module, repeats: int) -> list[float]:
    weights_stamp(model)  # warm-up: first-call allocations are not the steady cost
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        weights_stamp(model)
        times.append(time.perf_counter() - t0)
    return times


def transpose_layouts(model: torch.nn.Module) -> int:
    """Give every 2-D linear weight a transposed (non-contiguous) layout, same values; returns how many."""
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.dim() == 2:
            module.weight = torch.nn.Parameter(module.weight.detach().t().contiguous().t(), requires_grad=False)
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model).model
    tensors = sum(1 for _ in model.parameters())
    print(f"{args.model}: {tensors} parameter tensors, {args.threads} thread(s), {args.repeats} repeats")
    print("| layout | median ms | min ms |\n|---|---:|---:|")
    for label in ("as loaded", "linear weights transposed (non-contiguous)"):
        if label.startswith("linear"):
            transpose_layouts(model)
        times = time_stamp(model, args.repeats)
        print(f"| {label} | {statistics.median(times) * 1e3:.1f} | {min(times) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
