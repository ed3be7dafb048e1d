"""Do the ILA paper's fine-tuning claims hold? all vs freeze-bottom vs top-k vs random, same budget.

For one model and one importance ranking (learned on a *different* dataset than the one
tuned on), this runs ``layerscope finetune`` for each configuration and seed, each in its
own process (so peak-memory readings do not inherit an earlier run's heap), then prints a
markdown table and a verdict on three claims:

1. freezing the least important ~25% is at least as good as tuning everything;
2. tuning only the top 30% keeps >= 95% of the full run's held-out loss improvement;
3. at the same budget, the ranking's top 30% beats a random 30% (and, with ``random-matched:0.3`` in
   ``--configs``, a random 30% with the same module types and so the same parameter count).

Differences smaller than the spread between seeds are reported as "within noise".

Example (smoke, ~2 minutes on a 2-core CPU)::

    python experiments/finetune_claims.py --model ../shared/models/stories260K \\
        --make-ranking ../shared/data/alignment/alpaca_gpt4_1k.json \\
        --data ../shared/data/alignment/lima.json --limit 200 --steps 20 --seq-len 128 \\
        --eval-limit 50 --out runs/claims-smoke

``--make-ranking DATA`` computes a quick stand-in ranking (loss increase when each linear
module's output is zeroed, on DATA) when no ILA result is at hand; give ``--importance
FILE`` to test a real ILA ranking.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = "all,freeze-bottom:0.25,top:0.3,top:0.1,random:0.3"


def parse_configs(text: str) -> list[tuple[str, float | None, int | None]]:
    """``mode[:fraction][@min_block]`` items, e.g. ``top:0.3@15`` (top 30%, nothing below block 15)."""
    from layerscope.training.selection import parse_selection_spec

    return [parse_selection_spec(part) for part in text.split(",")]


def label(mode: str, frac: float | None, min_block: int | None = None) -> str:
    name = mode if frac is None else f"{mode} {frac:.0%}"
    return name if min_block is None else f"{name}, blocks >= {min_block}"


def run_name(mode: str, frac: float | None, min_block: int | None, seed: int) -> str:
    return f"{mode}-{frac or 1:g}{f'-b{min_block}' if min_block is not None else ''}-s{seed}"


# ----------------------------------------------------------------------------- a stand-in ranking


def make_ablation_ranking(model_spec: str, data: str, out: Path, limit: int = 32, seq_len: int = 128) -> Path:
    """Per-module ranking: held-out loss increase when the module's output is zeroed."""
    import torch

    from layerscope.core.data import load_sft
    from layerscope.core.importance import LayerImportance, model_info
    from layerscope.core.layermap import build_layer_map
    from layerscope.core.models import load_model
    from layerscope.scoring import LossEvaluator

    loaded = load_model(model_spec)
    lm = build_layer_map(loaded.model)
    sft = load_sft(data, loaded.tokenizer, max_length=seq_len, limit=limit, shuffle_seed=0)
    ev = LossEvaluator(loaded.tokenizer, sft.examples, batch_size=8)
    base = ev.evaluate(loaded.model).metrics["loss"]
    scores = []
    t0 = time.perf_counter()
    for m in lm.linears:
        h = loaded.model.get_submodule(m.path).register_forward_hook(lambda mod, i, o: torch.zeros_like(o))
        try:
            scores.append(ev.evaluate(loaded.model).metrics["loss"] - base)
        finally:
            h.remove()
    imp = LayerImportance(
        method="module-ablation-loss",
        granularity="module",
        players=[m.name for m in lm.linears],
        scores=scores,
        model=model_info(loaded.model, lm, model_spec),
        data={"path": data, "n_items": len(sft.examples), "hash": sft.fingerprint},
        baseline={"loss": base},
        timings={"total_s": time.perf_counter() - t0},
        method_config={"limit": limit, "seq_len": seq_len, "note": "stand-in for an ILA ranking"},
    )
    return imp.save(out)


# ----------------------------------------------------------------------------- running


def run_one(args, importance: Path, mode: str, frac: float | None, min_block: int | None, seed: int, out: Path) -> dict:
    report = out / "report.json"
    if report.exists() and not args.rerun:
        return json.loads(report.read_text())
    cmd = [
        sys.executable,
        "-m",
        "layerscope.cli",
        "finetune",
        "--model",
        args.model,
        "--data",
        args.data,
        "--importance",
        str(importance),
        "--mode",
        mode,
        "--method",
        args.method,
        "--max-steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--seq-len",
        str(args.seq_len),
        "--seed",
        str(seed),
        "--split-seed",
        "0",
        "--out",
        str(out),
        "--no-progress",
    ]
    if args.eval_tasks:  # "" evaluates no task: finetune then takes no --eval-tasks (it refuses an empty one)
        cmd += ["--eval-tasks", args.eval_tasks, "--eval-limit", str(args.eval_limit)]
    if frac is not None:
        cmd += ["--fraction", str(frac)]
    if args.ignore_fingerprint:
        cmd += ["--ignore-fingerprint"]
    if min_block is not None:
        cmd += ["--min-block", str(min_block)]
    if args.lr is not None:
        cmd += ["--lr", str(args.lr)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.device != "cpu":
        cmd += ["--device", args.device]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"run {label(mode, frac, min_block)} seed {seed} failed:\n{res.stderr[-2000:]}")
    print(f"  {label(mode, frac, min_block):18s} seed {seed}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return json.loads(report.read_text())


def base_metrics(args) -> dict:
    """Zero-shot accuracy of the untouched model (the same for every configuration)."""
    import torch

    from layerscope.core.models import load_model
    from layerscope.training import eval_tasks

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    tasks = [t for t in args.eval_tasks.split(",") if t]
    return eval_tasks(loaded.model, loaded.tokenizer, tasks, args.eval_limit) if tasks else {}


def truncation_timing(args, importance: Path, configs) -> list[dict]:
    """Forward+backward time with the backward stopping at the lowest trainable block vs forced to the bottom."""
    import torch

    from layerscope.core.importance import LayerImportance
    from layerscope.core.layermap import build_layer_map
    from layerscope.core.models import load_model
    from layerscope.training import (
        freeze_except,
        inject_lora,
        time_forward_backward,
        time_optimizer_step,
        timing_batch,
    )
    from layerscope.training.selection import select_modules

    torch.set_num_threads(args.threads)
    imp = LayerImportance.load(importance)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    # the ranking's own selections, plus the upper half of the blocks: a selection whose lowest
    # trainable block is known to be high, to show what the cut is worth when it applies.
    # Every selection is held in memory at once and timed in interleaved rounds (medians): timed one after
    # another, whichever comes first (always `all`) was off by up to 20% now and then, and every ratio with it
    prepared = []
    for mode, frac, min_block in [*configs, ("upper-half", None, None)]:
        loaded = load_model(args.model, device=args.device)
        lm = build_layer_map(loaded.model)
        if mode == "upper-half":
            sel = select_modules(lm, None, "all", min_block=lm.n_blocks // 2)
        else:
            sel = select_modules(lm, imp, mode, frac, seed=0, check=False, min_block=min_block)
        for p in loaded.model.parameters():
            p.requires_grad_(False)
        if args.method == "lora":
            pm = inject_lora(loaded.model, lm, sel.modules, task_type="CAUSAL_LM")
        else:
            freeze_except(loaded.model, lm, sel.modules)
            pm = loaded.model
        name = "upper half of blocks" if mode == "upper-half" else label(mode, frac, min_block)
        lowest = min(m.block for m in lm.linears if m.name in set(sel.modules))
        prepared.append((name, pm, lowest, lm.n_blocks))
    batch = timing_batch(args.data, loaded.tokenizer, args.batch_size, args.seq_len)
    samples: dict[str, dict[str, list[float]]] = {name: {"cut": [], "full": [], "opt": []} for name, *_ in prepared}
    for _ in range(args.rounds):
        for name, pm, _, _ in prepared:
            samples[name]["cut"].append(time_forward_backward(pm, batch, repeats=args.repeats, clock=clock))
            samples[name]["full"].append(
                time_forward_backward(pm, batch, repeats=args.repeats, force_input_grads=True, clock=clock)
            )
            samples[name]["opt"].append(time_optimizer_step(pm, args.repeats, clock))
    rows = []
    for name, _, lowest, n_blocks in prepared:
        cut, full, opt = (statistics.median(samples[name][k]) for k in ("cut", "full", "opt"))
        rows.append(
            {
                "config": name,
                "lowest_block": lowest,
                "n_blocks": n_blocks,
                "fwd_bwd_s": cut,
                "fwd_bwd_forced_s": full,
                "saving": 1 - cut / full,
                "optimizer_s": opt,
                "step_s": cut + opt,
                "method": args.method,
                "rounds": args.rounds,
            }
        )
    return rows


# ----------------------------------------------------------------------------- summary


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def spread(xs):
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarise(results: dict, base: dict, tasks: list[str]) -> tuple[str, dict]:
    ref = results["all"]
    # CPU time per step where every run has it (steady on a shared machine), else wall time
    clock = (
        "cpu_time_per_step_s"
        if all("cpu_time_per_step_s" in r for rs in results.values() for r in rs)
        else "time_per_step_s"
    )
    ref_time = mean([r[clock] for r in ref])
    ref_mem = mean([r["peak_memory_delta_bytes"] for r in ref])
    ref_gain = mean([r["heldout_loss_before"] - r["heldout_loss"] for r in ref])
    # each seed's gain against `all`'s gain with the same seed: their range shows how far claim 2's ratio moves
    ref_gain_by_seed = {r["config"]["seed"]: r["heldout_loss_before"] - r["heldout_loss"] for r in ref}
    # no eval tasks (--eval-tasks ""): no accuracy columns at all, not a column of nan
    lines = [
        "| config | trained modules | trainable params | held-out loss | loss gain vs all | "
        + "".join(f"{t} | " for t in tasks)
        + ("mean acc | " if tasks else "")
        + "time/step vs all | peak mem vs all | "
        "blocks in backward |",
        "|" + "---|" * (8 + (len(tasks) + 1 if tasks else 0)),
    ]
    base_loss = mean([r["heldout_loss_before"] for r in ref])
    accs0 = [base[t]["value"] for t in tasks if t in base]
    lines.append(
        f"| base model | 0 | 0 | {base_loss:.4f} | - | "
        + "".join(f"{base[t]['value']:.3f} | " if t in base else "- | " for t in tasks)
        + (f"{mean(accs0):.3f} | " if tasks else "")
        + "- | - | - |"
    )
    table = {}
    for name, runs in results.items():
        loss = [r["heldout_loss"] for r in runs]
        gain = mean([r["heldout_loss_before"] - r["heldout_loss"] for r in runs])
        acc = {t: mean([r["eval"][t]["value"] for r in runs if t in r["eval"]]) for t in tasks}
        row = {
            "loss": mean(loss),
            "loss_sd": spread(loss),
            "gain_ratio": gain / ref_gain if ref_gain else float("nan"),
            "gain_ratio_by_seed": [
                (r["heldout_loss_before"] - r["heldout_loss"]) / ref_gain_by_seed[r["config"]["seed"]]
                for r in runs
                if ref_gain_by_seed.get(r["config"]["seed"])
            ],
            "acc": acc,
            "mean_acc": mean(list(acc.values())) if acc else None,  # None: no eval tasks
            "mean_acc_sd": spread([mean([r["eval"][t]["value"] for t in tasks if t in r["eval"]]) for r in runs])
            if tasks
            else 0.0,
            "time_ratio": mean([r[clock] for r in runs]) / ref_time,
            "time_clock": clock,
            "mem_ratio": mean([r["peak_memory_delta_bytes"] for r in runs]) / ref_mem if ref_mem else float("nan"),
            "modules": runs[0]["trainable_modules"],
            "params": runs[0]["trainable_params"],
            "blocks_in_backward": mean([r["grad_flow"]["blocks_in_backward"] for r in runs]),
            "n_blocks": runs[0]["grad_flow"]["n_blocks"],
        }
        table[name] = row
        lines.append(
            f"| {name} | {row['modules']} | {row['params']:,} | {row['loss']:.4f} ± {row['loss_sd']:.4f} | "
            f"{row['gain_ratio']:.1%} | "
            + "".join(f"{acc[t]:.3f} | " for t in tasks)
            + (f"{row['mean_acc']:.3f} | " if tasks else "")
            + f"{row['time_ratio']:.2f}x | {row['mem_ratio']:.2f}x | "
            f"{row['blocks_in_backward']:.1f} / {row['n_blocks']} |"
        )
    return "\n".join(lines), table


def verdict(table: dict, timing: list[dict] | None = None) -> list[str]:
    out = []
    a = table.get("all")

    def cmp(x, y, what):
        """'x better than y' on loss (lower) with the seed spread as the noise level."""
        d = y["loss"] - x["loss"]
        noise = max(x["loss_sd"], y["loss_sd"])
        state = "within noise" if abs(d) <= noise else ("better" if d > 0 else "worse")
        return d, noise, state

    def accuracy(x, y) -> str:
        """The mean-accuracy clause of a verdict; nothing when no eval tasks were run."""
        if x.get("mean_acc") is None or y.get("mean_acc") is None:
            return ""
        return f"; mean accuracy {x['mean_acc']:.3f} vs {y['mean_acc']:.3f}"

    fb = table.get("freeze-bottom 25%")
    if a and fb:
        d, noise, state = cmp(fb, a, "loss")
        holds = state in ("better", "within noise")
        out.append(
            f"1. freeze-bottom 25% >= all: held-out loss {fb['loss']:.4f} vs {a['loss']:.4f} (Δ {d:+.4f}, seed "
            f"spread {noise:.4f}: {state}){accuracy(fb, a)} -> "
            f"{('HOLDS' if state == 'better' else 'HOLDS (within seed noise)') if holds else 'DOES NOT HOLD'}"
        )
    t30 = table.get("top 30%")
    if a and t30:
        r, by_seed = t30["gain_ratio"], t30["gain_ratio_by_seed"]
        if by_seed and min(by_seed) < 0.95 <= max(by_seed):
            state = "WITHIN SEED NOISE (the seeds fall on both sides of 95%)"
        else:
            state = "HOLDS" if r >= 0.95 else "DOES NOT HOLD"
        seeds = f" (per seed: {', '.join(f'{x:.1%}' for x in by_seed)})" if len(by_seed) > 1 else ""
        out.append(
            f"2. top-30% keeps >= 95% of all's loss improvement: it keeps {r:.1%}{seeds} -> {state} "
            f"(at {t30['time_ratio']:.2f}x the time per step, {t30['mem_ratio']:.2f}x the peak memory)"
        )
    r30 = table.get("random 30%")
    if t30 and r30:
        d, noise, state = cmp(t30, r30, "loss")
        out.append(
            f"3. ranking beats random at 30%: held-out loss {t30['loss']:.4f} vs {r30['loss']:.4f} (Δ {d:+.4f}, "
            f"seed spread {noise:.4f}: {state}){accuracy(t30, r30)} "
            f"-> {'HOLDS' if state == 'better' else 'DOES NOT HOLD' if state == 'worse' else 'UNDECIDED'}"
        )
    rm30 = table.get("random-matched 30%")
    if t30 and rm30:  # the same parameter count and module types: only the blocks differ
        d, noise, state = cmp(t30, rm30, "loss")
        out.append(
            f"3b. ranking beats a type-matched random 30% ({rm30['params']:,} vs {t30['params']:,} parameters): "
            f"held-out loss {t30['loss']:.4f} vs {rm30['loss']:.4f} (Δ {d:+.4f}, seed spread {noise:.4f}: "
            f"{state}) -> {'HOLDS' if state == 'better' else 'DOES NOT HOLD' if state == 'worse' else 'UNDECIDED'}"
        )
    same_run = {r["config"]: r["step_s"] for r in timing or []}
    for name, row in table.items():  # the time target, for the plain top 30% and any cut variant of it
        if not name.startswith("top 30%") or "all" not in same_run or name not in same_run:
            continue
        ratio = same_run[name] / same_run["all"]
        out.append(
            f"4. {name}: forward+backward+AdamW {ratio:.2f}x all's (same run), keeps {row['gain_ratio']:.1%} of the "
            f"loss gain, {row['mem_ratio']:.2f}x the peak memory -> time target (<= 0.75x) "
            f"{'MET' if ratio <= 0.75 else 'NOT MET'}"
        )
    return out


def timing_table(timing: list[dict], clock: str) -> list[str]:
    method = timing[0]["method"]
    rounds = timing[0].get("rounds", 1)
    lines = [
        f"Backward stopping at the lowest trainable block ({method}, one batch, forward+backward, then one "
        f"AdamW step, {clock} clock, all selections in one process, medians of {rounds} interleaved rounds):",
        "",
        "| selection | lowest trainable block | fwd+bwd s | forced to bottom s | saved by the cut | AdamW s | "
        "fwd+bwd vs all | step vs all |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    ref = next(r for r in timing if r["config"] == "all")
    lines += [
        f"| {r['config']} | {r['lowest_block']} / {r['n_blocks']} | {r['fwd_bwd_s']:.3f} | "
        f"{r['fwd_bwd_forced_s']:.3f} | {r['saving']:.0%} | {r['optimizer_s']:.3f} | "
        f"{r['fwd_bwd_s'] / ref['fwd_bwd_s']:.2f}x | {r['step_s'] / ref['step_s']:.2f}x |"
        for r in timing
    ]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--importance", default=None, help="ranking file, learned on another dataset than --data")
    p.add_argument(
        "--make-ranking",
        default=None,
        metavar="DATA",
        help="no ranking at hand: compute a stand-in (module ablation loss) on DATA",
    )
    p.add_argument("--data", default="../shared/data/alignment/lima.json", help="SFT data to tune on")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument(
        "--configs",
        default=CONFIGS,
        help="comma-separated mode[:fraction][@min_block], e.g. top:0.3@15 (default %(default)s)",
    )
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--method", default="lora", choices=("lora", "full"))
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-tasks", default="arc_easy,piqa,hellaswag")
    p.add_argument("--eval-limit", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1 is fastest on a shared 2-core box)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="clock for the backward-cut timing; cpu (process time, with --threads 1) is steadier on a shared machine",
    )
    p.add_argument("--repeats", type=int, default=5, help="forward+backward repeats in the backward-cut timing")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="interleaved rounds of that timing, medians reported (every selection is held in memory)",
    )
    p.add_argument(
        "--ignore-fingerprint",
        action="store_true",
        help="use the ranking even if the model's weights fingerprint differs (same model, other dtype)",
    )
    p.add_argument("--out", default="runs/finetune-claims")
    p.add_argument("--rerun", action="store_true", help="redo runs whose report.json exists")
    p.add_argument(
        "--timing-only",
        action="store_true",
        help="only the same-run forward+backward timing of every config (minutes, no training)",
    )
    args = p.parse_args(argv)
    if args.clock == "cpu" and args.device.startswith("cuda"):
        p.error("--clock cpu measures process time, which misses GPU work: use --clock wall with a GPU")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.importance:
        importance = Path(args.importance)
    elif args.make_ranking:
        print(f"computing a stand-in ranking on {args.make_ranking}", file=sys.stderr)
        importance = make_ablation_ranking(args.model, args.make_ranking, out / "ranking.json", seq_len=args.seq_len)
    else:
        p.error("give --importance FILE or --make-ranking DATA")

    tasks = [t for t in args.eval_tasks.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = parse_configs(args.configs)
    if configs[0][:1] != ("all",):
        configs.insert(0, ("all", None, None))
    t0 = time.perf_counter()
    if args.timing_only:
        timing = truncation_timing(args, importance, configs)
        text = "\n".join(timing_table(timing, args.clock))
        print(text)
        (out / "timing.md").write_text(text + "\n")
        (out / "timing.json").write_text(json.dumps({"truncation": timing, "args": vars(args)}, indent=2))
        return 0
    base = base_metrics(args)
    results: dict[str, list[dict]] = {}
    for mode, frac, min_block in configs:
        for seed in seeds:
            run_dir = out / "runs" / run_name(mode, frac, min_block, seed)
            results.setdefault(label(mode, frac, min_block), []).append(
                run_one(args, importance, mode, frac, min_block, seed, run_dir)
            )
    timing = truncation_timing(args, importance, configs)
    table_md, table = summarise(results, base, tasks)
    lines = [
        f"# ILA fine-tuning claims: {args.model}",
        "",
        f"ranking {importance} ({json.loads(Path(importance).read_text()).get('method')}), tuned on {args.data} "
        f"(limit {args.limit}), {args.method}, {args.steps} steps, batch {args.batch_size}, seq {args.seq_len}, "
        f"seeds {seeds}, eval limit {args.eval_limit}; time and memory are ratios to `all` in this run "
        f"(memory: {results['all'][0]['memory_kind']} growth during training)",
        "",
        table_md,
        "",
        *timing_table(timing, args.clock),
    ]
    lines += ["", "Verdict:", ""] + verdict(table, timing) + ["", f"total {time.perf_counter() - t0:.0f}s"]
    text = "\n".join(lines)
    print(text)
    (out / "summary.md").write_text(text + "\n")
    (out / "summary.json").write_text(
        json.dumps(
            {"table": table, "base": base, "truncation": timing, "verdict": verdict(table, timing), "args": vars(args)},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
