"""Benchmark: how a fine-tuning step's time depends on the lowest trainable block.

The backward pass stops at the lowest block that holds a trainable module, so a LoRA selection's
step time is bounded below by where that block sits, however few adapters it has. For each cut
block b this measures, in one process and on one batch (CPU clock; wall clock on a GPU):

- ``floor(b)``: the plain model with no adapter at all, the backward forced to run down to
  block b (its input made to require grad). No LoRA selection whose lowest module is in block b
  can be cheaper than this: it is the same forward and the same backward, minus every adapter.
- ``all >= b``: LoRA on every linear module at or above block b (``--mode all --min-block b``),
  the most a selection with that cut can cost.

Both are given as ratios to LoRA on every module (``all``). Rounds are interleaved so a shared,
drifting CPU slows every point alike; medians are reported. Writes a table (stdout, and
``OUT/backward_depth.md``), the rows (``backward_depth.json``) and a plot (``backward_depth.png``).

    OMP_NUM_THREADS=1 python bench/backward_depth.py --model default \\
        --data ../shared/data/alignment/alpaca_gpt4_1k.json --cuts 0,4,8,12,15,20,25,29 --out runs/bench/depth
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from layerscope.core import atomic
from layerscope.core.atomic import atomic_path
from layerscope.core.layermap import build_layer_map
from layerscope.core.models import load_model
from layerscope.training import inject_lora, select_modules, synchronize, time_forward_backward, timing_batch


def grad_from_block(model, layer_map, block: int):
    """A forward pre-hook making block ``block``'s input hidden states require grad (a leaf copy),
    so autograd records that block and everything above it, and nothing below."""
    target = model.get_submodule(layer_map.block_path(block))

    def hook(module, args, kwargs):
        if args:
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        kwargs = dict(kwargs, hidden_states=kwargs["hidden_states"].detach().requires_grad_(True))
        return args, kwargs

    return target.register_forward_pre_hook(hook, with_kwargs=True)


def forward_only(model, batch, repeats: int, clock) -> float:
    model.train()
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    times = []
    with torch.no_grad():
        for r in range(repeats + 1):
            synchronize(device)
            t0 = clock()
            model(**batch)
            synchronize(device)
            if r:
                times.append(clock() - t0)
    return sum(times) / len(times)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{torch.get_num_threads()} CPU thread(s), {platform.machine()}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--data", required=True)
    p.add_argument("--cuts", default=None, help="comma-separated cut blocks (default: 0 and every ~sixth block)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu (CPU clock) or cuda (wall clock, synchronized)")
    p.add_argument("--out", default="runs/bench/backward_depth")
    args = p.parse_args(argv)

    # process time is steadier on a shared CPU but blind to GPU work: a GPU is timed by the wall clock
    clock = time.perf_counter if args.device.startswith("cuda") else time.process_time
    clock_name = "wall clock" if args.device.startswith("cuda") else "CPU clock"
    loaded = load_model(args.model, device=args.device)
    model, lm = loaded.model, build_layer_map(loaded.model)
    n = lm.n_blocks
    cuts = (
        sorted({int(c) for c in args.cuts.split(",")}) if args.cuts else sorted({*range(0, n, max(1, n // 6)), n - 1})
    )
    if any(not 0 <= c < n for c in cuts):
        raise SystemExit(f"--cuts must lie in 0..{n - 1}")
    batch = timing_batch(args.data, loaded.tokenizer, args.batch_size, args.seq_len)
    for q in model.parameters():
        q.requires_grad_(False)

    # floors on the plain model first; every LoRA selection then gets a freshly loaded model, because
    # peft injects adapters in place
    samples: dict[str, list[float]] = {}

    def add(key, value):
        samples.setdefault(key, []).append(value)

    for rnd in range(args.rounds):
        print(f"round {rnd + 1}/{args.rounds}: floors", file=sys.stderr, flush=True)
        add("forward", forward_only(model, batch, args.repeats, clock))
        for b in cuts:
            h = grad_from_block(model, lm, b)
            try:
                add(f"floor@{b}", time_forward_backward(model, batch, args.repeats, clock=clock))
            finally:
                h.remove()
    for rnd in range(args.rounds):
        for b in [None, *cuts]:
            print(f"round {rnd + 1}/{args.rounds}: LoRA on all modules >= {b or 0}", file=sys.stderr, flush=True)
            fresh = load_model(args.model, device=args.device).model
            for q in fresh.parameters():
                q.requires_grad_(False)
            sel = select_modules(lm, None, "all", min_block=b)
            pm = inject_lora(fresh, lm, sel.modules, task_type="CAUSAL_LM")
            add("all" if b is None else f"all@{b}", time_forward_backward(pm, batch, args.repeats, clock=clock))

    med = {k: statistics.median(v) for k, v in samples.items()}
    ref = med["all"]
    rows = [
        {
            "cut_block": b,
            "blocks_in_backward": n - b,
            "floor_s": med[f"floor@{b}"],
            "all_above_s": med[f"all@{b}"],
            "floor_vs_all": med[f"floor@{b}"] / ref,
            "all_above_vs_all": med[f"all@{b}"] / ref,
        }
        for b in cuts
    ]
    head = (
        f"{Path(loaded.name).name}: {n} blocks, batch {args.batch_size} x {args.seq_len}, {clock_name}, "
        f"{device_name(args.device)}, torch {torch.__version__}; medians of "
        f"{args.rounds} rounds x {args.repeats} repeats. LoRA on every module: {ref:.3f} s per forward+backward; "
        f"forward alone (no graph): {med['forward']:.3f} s ({med['forward'] / ref:.2f}x)."
    )
    lines = [
        head,
        "",
        "| lowest trainable block | blocks in backward | floor: no adapters, s | floor vs all | "
        "LoRA on all blocks >= b, s | vs all |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['cut_block']} | {r['blocks_in_backward']} | {r['floor_s']:.3f} | {r['floor_vs_all']:.2f}x | "
        f"{r['all_above_s']:.3f} | {r['all_above_vs_all']:.2f}x |"
        for r in rows
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "backward_depth.md", text + "\n")
    atomic.write_json(
        out / "backward_depth.json",
        {"rows": rows, "all_s": ref, "forward_s": med["forward"], "samples": samples, "args": vars(args)},
    )
    plot(rows, med["forward"] / ref, out / "backward_depth.png", loaded.name, n)
    return 0


def plot(rows, forward_ratio: float, path: Path, model: str, n_blocks: int) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    xs = [r["cut_block"] for r in rows]
    ax.plot(xs, [r["all_above_vs_all"] for r in rows], "o-", label="LoRA on every module at or above the block")
    ax.plot(xs, [r["floor_vs_all"] for r in rows], "s-", label="floor: backward to the block, no adapters")
    ax.axhline(0.75, color="grey", ls="--", lw=1, label="target: 0.75x of all")
    ax.axhline(forward_ratio, color="grey", ls=":", lw=1, label="forward alone")
    ax.set_xlabel(f"lowest trainable block (of {n_blocks})")
    ax.set_ylabel("forward+backward time vs LoRA on all")
    ax.set_ylim(0, 1.1)
    ax.set_title(f"{Path(model).name}: step time against backward depth", fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
