"""Benchmark: exact Shapley on the coalition engine, the earlier traversal vs the trie walk.

Both run in the same process on the same evaluator, alternating (old, new, new, old, ... per
repeat), and each timing is the ``shapley(engine, n, "exact")`` call alone (the capture pass,
the same for both, is reported apart):

- **old**: whole blocks, removed ones included (``CoalitionEngine(whole_blocks=True)``), and
  exact enumeration handing the engine chunks in index order (``range(2**n)``), which splits on
  the LAST players, so every chunk recomputed every shallow prefix;
- **new**: chunks in trie order (``enumeration.trie_order``: each chunk a subtree) and sub-layer
  stages where the architecture allows (``engine/stages.py``).

Printed per granularity: block calls, stage runs (blocks, or sub-layers where the plan splits
blocks: the unit of work), the distinct-prefix bound of each plan (the least stage runs any
traversal of that plan needs, ``CoalitionEngine.prefix_bound``), wall times, and whether the
2**n coalition values and the Shapley values are bit-identical.

    python bench/exact_shapley.py --threads 1            # stories260K, ARC-Easy limit 50
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from unittest import mock

import numpy as np
import torch
from ablation_engine import cpu_name  # noqa: E402  (a sibling script: python bench/exact_shapley.py)

from layerscope.core.layermap import build_layer_map
from layerscope.core.models import load_model
from layerscope.core.tasks import load_task
from layerscope.engine.coalitions import CoalitionEngine
from layerscope.methods.shapley import enumeration, shapley
from layerscope.scoring import MCEvaluator


def index_order(n: int) -> np.ndarray:
    """The chunk order exact enumeration used before the trie walk."""
    return np.arange(1 << n, dtype=np.int64)


def run_once(model, lm, ev, granularity: str, old: bool) -> dict:
    engine = CoalitionEngine(model, lm, ev, granularity, whole_blocks=old)
    everyone = [frozenset(i for i in range(engine.n) if (k >> i) & 1) for k in range(1 << engine.n)]
    with mock.patch.object(enumeration, "trie_order", index_order) if old else contextlib.nullcontext():
        t0 = time.perf_counter()
        res = shapley(engine, engine.n, "exact")
        seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "block_calls": engine.stats.block_forwards,
        "stage_runs": engine.stats.stage_runs,
        "bound": engine.prefix_bound(everyone),
        "full": engine.stats.block_forwards_full,
        "stages": engine.describe()["stages"],
        "phi": np.asarray(res.values),
        "values": np.array([engine.value(c) for c in everyone]),  # memo hits: no further work
        "peak_mib": engine.stats.peak_cache_bytes / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="../shared/models/stories260K")
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--granularity", nargs="+", default=["block", "sublayer"], choices=("block", "sublayer", "module"))
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each traversal, alternating (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    model, lm = loaded.model, build_layer_map(loaded.model)
    task = load_task(args.task, limit=args.limit)
    ev = MCEvaluator(loaded.tokenizer, task, args.batch_size, model=model)
    ev.evaluate(model)  # warm-up and the one-off packing probe
    print(
        f"model {loaded.name} ({lm.n_blocks} blocks), task {task.name} ({len(task.items)} items, "
        f"{len(ev.batches)} batches), {args.threads} thread(s), {cpu_name()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}",
        flush=True,
    )
    print()
    print("| granularity | traversal | plan | block calls | stage runs | prefix bound | runs / bound | seconds |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    full = 0
    ok = True
    for g in args.granularity:
        runs: dict[bool, list[dict]] = {True: [], False: []}
        for r in range(args.repeats):
            for old in (True, False) if r % 2 == 0 else (False, True):
                runs[old].append(run_once(model, lm, ev, g, old))
                print(f"  {g} {'old' if old else 'new'}: {runs[old][-1]['seconds']:.1f}s", file=sys.stderr, flush=True)
        best = {old: min(rs, key=lambda x: x["seconds"]) for old, rs in runs.items()}
        full = best[True]["full"]
        for old in (True, False):
            x = best[old]
            print(
                f"| {g} | {'old: index chunks' if old else 'new: trie walk'} | {x['stages']} | {x['block_calls']} | "
                f"{x['stage_runs']} | {x['bound']} | {x['stage_runs'] / max(x['bound'], 1):.2f} | {x['seconds']:.1f} |"
            )
        same = all(np.array_equal(a["values"], best[True]["values"]) for rs in runs.values() for a in rs)
        same_phi = np.array_equal(best[True]["phi"], best[False]["phi"])
        ok = ok and same and same_phi
        print(
            f"| {g} | | **speed-up {best[True]['seconds'] / best[False]['seconds']:.2f}x**, "
            f"block calls {best[True]['block_calls'] / max(best[False]['block_calls'], 1):.2f}x fewer | "
            f"values bit-identical: {same and same_phi} | | | | |"
        )
    print()
    print(f"(plain full forwards: {full} block calls for the last granularity's coalitions)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
