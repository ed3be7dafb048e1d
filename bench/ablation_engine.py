"""Benchmark: the coalition engine vs. scoring every ablated model from scratch.

Default workload: the single sub-layer ablation sweep (every player removed alone, plus the
full model) of the default model on a zero-shot task, done twice with the same evaluator:

- **engine**: ``CoalitionEngine`` (full model captured once; each coalition starts at the block
  of its first removed player; removed modules are not computed);
- **reference**: ``uncached=True``, i.e. a plain full forward per coalition with hooks that
  zero the removed players' outputs (the paper's method).

The two are interleaved coalition by coalition, so a shared, noisy CPU slows both alike.
Prints both times, the ratio, the largest |difference| of values and of log-likelihoods,
and whether every chosen answer is identical.

    python bench/ablation_engine.py --limit 100
    python bench/ablation_engine.py --limit 20 --workload proximity   # Zhang et al.'s windows 1..3
    python bench/ablation_engine.py --limit 20 --workload owen        # centre coalitions + neighbours
    python bench/ablation_engine.py --limit 20 --workload permutation # prefixes of orderings and their reverses
    python bench/ablation_engine.py ... --whole-blocks                # the engine's earlier traversal
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

from layerscope.core.layermap import build_layer_map
from layerscope.core.models import load_model
from layerscope.core.tasks import load_task
from layerscope.engine.coalitions import CoalitionEngine
from layerscope.scoring import MCEvaluator


def workload_groups(workload: str, n: int, centres: int = 2, seed: int = 0) -> list[list[frozenset]]:
    """Coalitions to evaluate, in groups: each group goes to the engine in one ``values()`` call,
    as the Shapley estimators hand over their batches."""
    everyone = frozenset(range(n))
    if workload == "sweep":  # one player removed at a time
        return [[everyone - {i}] for i in range(n)]
    if workload == "proximity":  # Zhang et al.: every contiguous window of 1..3 removed players
        return [[everyone - set(range(s, s + L)) for L in (1, 2, 3) for s in range(n - L + 1)]]
    if workload == "owen":  # a random centre coalition (keep-probability q) and its n one-player neighbours
        rng = np.random.default_rng(seed)
        groups = []
        for c in range(centres):
            q = (c + 0.5) / centres
            centre = frozenset(int(i) for i in np.flatnonzero(rng.random(n) < q))
            groups.append([centre] + [centre ^ {i} for i in range(n)])
        return groups
    if workload == "permutation":  # the prefixes of a random ordering, and of its reverse (antithetic pair)
        rng = np.random.default_rng(seed)
        groups = []
        for _ in range(centres):
            order = [int(i) for i in rng.permutation(n)]
            for o in (order, order[::-1]):
                groups.append([frozenset(o[:k]) for k in range(1, n)])
        return groups
    raise SystemExit(f"unknown workload {workload!r}")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--granularity", default="sublayer", choices=("sublayer", "block", "module"))
    p.add_argument("--workload", default="sweep", choices=("sweep", "proximity", "owen", "permutation"))
    p.add_argument(
        "--centres", type=int, default=2, help="owen / permutation workload: centre coalitions / orderings (default 2)"
    )
    p.add_argument(
        "--whole-blocks", action="store_true", help="the engine's earlier traversal: whole blocks, removed ones run"
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-mb", type=float, default=2048.0)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    lm = build_layer_map(model)
    task = load_task(args.task, limit=args.limit)
    ev = MCEvaluator(tok, task, args.batch_size, model=model)
    tokens = sum(int(b.input_ids.numel()) for b in ev.batches)
    print(
        f"model {loaded.name} ({lm.n_blocks} blocks), task {task.name} ({len(task.items)} items, "
        f"{len(ev.batches)} batches, {tokens} padded tokens), {args.granularity}, workload {args.workload}",
        flush=True,
    )
    ev.evaluate(model)  # warm-up and the one-off packing probe, outside both timings

    t0 = time.perf_counter()
    engine = CoalitionEngine(model, lm, ev, args.granularity, cache_mb=args.cache_mb, whole_blocks=args.whole_blocks)
    t_engine = time.perf_counter() - t0  # capture = the full model's evaluation, + self-check
    ref = CoalitionEngine(model, lm, ev, args.granularity, uncached=True)
    t0 = time.perf_counter()
    ref_full = ref.full()
    t_ref = time.perf_counter() - t0
    print(
        f"engine mode {engine.mode} ({engine.describe()['stages']}); capture + self-check {t_engine:.1f}s; "
        f"reference full model {t_ref:.1f}s",
        flush=True,
    )

    groups = workload_groups(args.workload, engine.n, args.centres)
    n_coal = sum(len(g) for g in groups) + 1
    res_e: list = []
    res_r: list = []
    done = 0
    for group in groups:
        t0 = time.perf_counter()
        res_e += engine.results(group)
        t_engine += time.perf_counter() - t0
        t0 = time.perf_counter()
        res_r += [ref.result(c) for c in group]
        t_ref += time.perf_counter() - t0
        done += len(group)
        if done % 10 < len(group) or done == n_coal - 1:
            print(
                f"  {done}/{n_coal - 1} coalitions: engine {t_engine:.1f}s, reference {t_ref:.1f}s "
                f"(ratio {t_ref / t_engine:.2f}x)",
                file=sys.stderr,
                flush=True,
            )

    full_e = engine.full()
    pairs = list(zip(res_e, res_r)) + [(full_e, ref_full)]
    dv = max(abs(a.value - b.value) for a, b in pairs)
    dl = max(
        float(
            np.abs(
                np.concatenate([np.array(x) for x in a.loglikelihoods])
                - np.concatenate([np.array(x) for x in b.loglikelihoods])
            ).max()
        )
        for a, b in pairs
    )
    same = all(a.predictions == b.predictions for a, b in pairs)
    st = engine.stats
    print()
    print("| path | seconds | coalitions/s |")
    print("|---|---:|---:|")
    print(f"| reference: full forward + zeroing hooks, per coalition | {t_ref:.1f} | {n_coal / t_ref:.3f} |")
    print(f"| CoalitionEngine (incl. capture and self-check) | {t_engine:.1f} | {n_coal / t_engine:.3f} |")
    print()
    print(f"- speed ratio (reference / engine): **{t_ref / t_engine:.2f}x**")
    bound, seen = 0, set()  # each group is one values() call, one walk, over coalitions not memoised before it
    for g in groups:
        bound += engine.prefix_bound([c for c in g if c not in seen])
        seen.update(g)
    print(
        f"- block calls: engine {st.block_forwards} vs reference {ref.stats.block_forwards} "
        f"({ref.stats.block_forwards / max(st.block_forwards, 1):.2f}x fewer); stage runs {st.stage_runs}, "
        f"distinct-prefix bound {bound} ({st.stage_runs / max(bound, 1):.2f}x of it); path-state hits {st.path_hits}"
    )
    print(f"- largest |value difference| {dv:.2e}; largest |log-likelihood difference| {dl:.2e}")
    print(f"- chosen answers identical for every coalition: {same}")
    print(
        f"- full model acc_norm {full_e.value:.4f}; cached hidden states {st.peak_cache_bytes / 2**20:.0f} MiB "
        f"(+ {st.kwargs_bytes / 2**20:.1f} MiB block arguments)"
    )
    print(
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, "
        f"device {args.device}"
    )
    return 0 if same and dv <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
