"""Benchmark: coalitions shared among processes (``--shard``) against one process.

Runs the same ``layerscope ablate`` and ``layerscope shapley`` command three ways, each with
``--threads 1`` per process: one process; two processes under ``torchrun`` (gloo on CPU) with
``--shard coalitions``; two with ``--shard items``. Printed per command: the method's own seconds
(``timings.seconds`` of the main process: coalitions only, after the capture pass), the capture
seconds, the command's wall time (start-up and model loading included), the ratios to one process,
and whether the scores (and stderr) are bit-identical to one process's.

    python bench/coalition_sharding.py                    # stories260K, ARC-Easy limit 200
    python bench/coalition_sharding.py --model default --limit 40 --budget 200

A machine with other work running will make the times noisy: compare ratios from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORIES = ROOT.parent / "shared" / "models" / "stories260K"
ARC = ROOT.parent / "shared" / "data" / "eval" / "arc_easy.jsonl"
WAYS = [("1 process", 1, None), ("2 x coalitions", 2, "coalitions"), ("2 x items", 2, "items")]


def command(kind: str, args, out: Path) -> list[str]:
    common = ["--model", args.model, "--task", args.task, "--limit", str(args.limit), "--batch-size", "16"]
    common += ["--threads", "1", "--no-progress", "--out", str(out)]
    if kind == "ablate":
        return ["ablate", *common]
    return ["shapley", *common, "--estimator", "permutation", "--budget", str(args.budget)]


def run_once(kind: str, args, procs: int, shard: str | None, out: Path) -> dict:
    argv = command(kind, args, out) + (["--shard", shard] if shard else [])
    if procs == 1:
        cmd = [sys.executable, "-m", "layerscope", *argv]
    else:
        cmd = ["torchrun", "--standalone", "--nproc_per_node", str(procs), "-m", "layerscope", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    imp = json.loads((out / "importance.json").read_text())
    return {
        "seconds": imp["timings"]["seconds"],
        "capture": imp["timings"]["capture_seconds"],
        "wall": wall,
        "scores": imp["scores"],
        "stderr": imp.get("stderr"),
        "evaluations": imp["n_evaluations"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(STORIES))
    ap.add_argument("--task", default=str(ARC))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--budget", type=int, default=120, help="shapley permutation: distinct evaluations")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    print(f"model {args.model}, task {args.task} limit {args.limit}, permutation budget {args.budget}")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("ablate", "shapley"):
            got = {}
            for name, procs, shard in WAYS:
                got[name] = run_once(kind, args, procs, shard, Path(tmp) / f"{kind}-{procs}-{shard}")
            base = got["1 process"]
            print(f"{kind} ({base['evaluations']} coalitions)")
            print(f"  {'way':16} {'method s':>9} {'ratio':>6} {'capture s':>9} {'wall s':>7} {'ratio':>6}  identical")
            for name, g in got.items():
                same = g["scores"] == base["scores"] and g["stderr"] == base["stderr"]
                print(
                    f"  {name:16} {g['seconds']:9.2f} {g['seconds'] / base['seconds']:6.2f} {g['capture']:9.2f} "
                    f"{g['wall']:7.1f} {g['wall'] / base['wall']:6.2f}  {'yes' if same else 'NO'}"
                )
                rows.append({"command": kind, "way": name, **{k: v for k, v in g.items() if k != "stderr"}})
            print()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
