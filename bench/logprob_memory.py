"""Benchmark: the memory the evaluator's log-softmax takes above its logits (``scoring/runner.py``).

Builds logits [U, V] in ``--dtype`` (the scored positions of one batch, as the evaluator selects them) and
scores one token per position, in a fresh process, reporting the peak memory above the logits:
CUDA's allocator peak on a GPU, the process's peak resident memory on a CPU (``ru_maxrss``).

    python bench/logprob_memory.py                          # U=600, V=128256 (Llama 3), bfloat16, CPU
    python bench/logprob_memory.py --whole                  # the normaliser over all positions at once
    python bench/logprob_memory.py --device cuda

Also prints the mean time of ``--repeats`` further calls (after the measured one).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--positions", type=int, default=600, help="scored positions U (default 600: 16 ARC items)")
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--whole", action="store_true", help="one chunk: the normaliser over all U x V at once (as before)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls after the measured one (default 5)")
    args = p.parse_args(argv)
    from types import SimpleNamespace

    from layerscope.scoring import runner

    if args.whole:
        runner._LSE_CHUNK_ELEMENTS = args.positions * args.vocab

    torch.manual_seed(0)
    dev = torch.device(args.device)
    # drawn in their own dtype: a float32 draw would raise the resident peak before the measurement starts
    logits = torch.randn(args.positions, args.vocab, device=dev, dtype=getattr(torch, args.dtype))
    idx = torch.arange(args.positions)
    batch = SimpleNamespace(score_uniq=idx, score_tok=torch.randint(args.vocab, (args.positions,)))
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = runner._scored_logprobs(batch, logits)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        runner._scored_logprobs(batch, logits)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / max(1, args.repeats) * 1000
    mib = 2**20
    size = logits.numel() * logits.element_size() / mib
    print(
        f"U={args.positions} V={args.vocab} {args.dtype} on {args.device}: logits {size:.0f} MiB, "
        f"peak above them {peak / mib:.0f} MiB (float32 U x V = {args.positions * args.vocab * 4 / mib:.0f} MiB); "
        f"sum of log-probs {out.sum().item():.6f}; {ms:.0f} ms a call"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
