"""``layerscope demo``: the main job, end to end, on the default model and the shipped instructions.

1. load SmolLM2-135M-Instruct (fetched and converted on first use) and print its layer map;
2. ILA: LoRA SFT until epsilon-stable, then importance gates -> module ranking + heatmap;
3. sub-layer ablation with held-out SFT loss as the value -> bar chart + cornerstones;
4. ShortGPT block influence on the same text;
5. how the three rankings agree (per block, Spearman), and an exported peft config for the top 30%;
then one report page (OUT/report.html) and the commands that put the ranking to use.
Sized to finish in a few minutes on a 2-core CPU (measured: docs/performance.md, "Demo timing"); every
step is also its own command.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from layerscope.cli.common import (
    add_hidden_alias,
    add_model_args,
    add_seed_arg,
    add_seq_len_alias,
    default_out,
    finite_float,
    load_from_args,
    nonempty,
    seed_everything,
)

# The demo's ILA, sized to stop "stable" on the shipped instructions within a few minutes on a 2-core
# CPU (measurements: docs/performance.md, "Demo timing"). The stability ratio r falls about as
# check_every / t while the LoRA update still grows, faster once the learning rate decays towards the
# cap (docs/ila.md), so with checks every 4 steps eps = 0.15 is met about two thirds of the way to the
# cap; the library's eps = 0.05 with checks every 10 steps needs some 200 steps.
DEMO_STEPS = 48  # stage-1 cap; the learning rate decays linearly to zero there
DEMO_EPS = 0.15
DEMO_CHECK_EVERY = 4
DEMO_PATIENCE = 2
DEMO_GATE_STEPS = 16


def add_arguments(p) -> None:
    add_model_args(p)
    add_seed_arg(p)
    p.add_argument(
        "--data", type=nonempty, default="demo", help="SFT data (default: the instruction set shipped with layerscope)"
    )
    p.add_argument(
        "--out", type=nonempty, default=default_out("demo"), help=f"output folder (default {default_out('demo')})"
    )
    p.add_argument(
        "--max-steps",
        dest="steps",
        metavar="MAX_STEPS",
        type=int,
        default=DEMO_STEPS,
        help=f"stage-1 LoRA step cap (default {DEMO_STEPS})",
    )
    add_hidden_alias(p, "--steps", "steps", type=int)  # demo's name before it took ila's
    p.add_argument(
        "--eps",
        type=finite_float,
        default=DEMO_EPS,
        help=f"stage-1 stability threshold, checked every {DEMO_CHECK_EVERY} steps (default {DEMO_EPS}; docs/ila.md)",
    )
    p.add_argument(
        "--gate-steps", type=int, default=DEMO_GATE_STEPS, help=f"stage-2 gate steps (default {DEMO_GATE_STEPS})"
    )
    p.add_argument(
        "--max-length",
        dest="seq_len",
        metavar="MAX_LENGTH",
        type=int,
        default=160,
        help="tokens kept per example (default 160)",
    )
    add_seq_len_alias(p, dest="seq_len")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _per_block(imp) -> list[float]:
    """Mean score per block, ascending: rankings of any granularity compared block by block."""
    return list(imp.by_block().values())


def run(args) -> int:
    from layerscope.cli.common import check_at_least, check_data_file, check_output, check_threads

    check_threads(args)  # options used only after the model loads (or after ILA), checked first
    check_at_least(args, 1, steps="--max-steps", gate_steps="--gate-steps")
    check_at_least(args, 2, seq_len="--max-length")
    check_data_file(args.data)
    check_output(args.out)
    ila_config = _ila_config(args)  # before the model loads: a bad --eps is refused at once
    out = Path(args.out)
    seed_everything(args.seed)
    clock = _StepClock()
    loaded = load_from_args(args)
    lm, train, heldout = _model_and_data(args, loaded)
    clock.lap("model and data")
    ila = _ila_step(ila_config, loaded, train, out)
    clock.lap("ILA")
    abl = _ablation_step(loaded, lm, heldout, out, progress=not args.no_progress)
    clock.lap("ablation")
    bi = _similarity_step(loaded, lm, heldout, out)
    clock.lap("block influence")
    _agreement_step(ila, abl, bi, lm, out)
    report = _report_step(out)
    clock.lap("agreement and report")
    print(f"done in {clock.total():.0f} s ({clock.summary()}); results in {out}/ (importance.json files, PNG charts)")
    print(f"report: {report} (one page, opens from disk)")
    _print_next_steps(args, out)
    return 0


def _report_step(out: Path) -> Path:
    """The one-page HTML report of everything the demo wrote."""
    from layerscope.viz.report import write_report

    path = out / "report.html"
    write_report([out], path)
    return path


def _print_next_steps(args, out: Path) -> None:
    """The commands that put the ILA ranking to use, runnable as printed."""
    from shlex import quote

    model = f" --model {quote(args.model)}" if args.model != "default" else ""
    data = f" --data {quote(args.data)}"
    ila, ft, ax = (quote(str(out / name)) for name in ("ila", "ft_top30", "axolotl"))
    print("next steps:")
    print(f"  layerscope finetune{model}{data} --importance {ila} --mode top --fraction 0.3 --max-steps 100 \\")
    print(f"      --out {ft}     # LoRA on ILA's top 30% only")
    print(f"  layerscope export {ila} --to axolotl --fraction 0.3 --out {ax}")
    print(f"  layerscope report {quote(str(out))} --format md    # this run as text, for a terminal or a pull request")


def _model_and_data(args, loaded):
    """Step 1: the layer map and the (train, held-out) split of the SFT data."""
    from layerscope.core.data import load_sft, split_heldout
    from layerscope.core.layermap import build_layer_map
    from layerscope.core.models import context_length

    lm = build_layer_map(loaded.model)
    print(f"[1/5] model: {loaded.name} -- {lm.summary()}")

    data = load_sft(
        args.data,
        loaded.tokenizer,
        max_length=args.seq_len,
        shuffle_seed=args.seed,
        context_length=context_length(loaded.model),
    )
    train, heldout = split_heldout(data, fraction=0.15, seed=args.seed)
    print(
        f"      data: {data.source} ({data.format}); "
        f"{len(train.examples)} train / {len(heldout.examples)} held-out examples"
    )
    return lm, train, heldout


class _StepClock:
    """Wall time of each demo step, for the closing line (the demo's promised time is checked
    against these: docs/performance.md, "Demo timing")."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append((name, now - self.last))
        self.last = now

    def total(self) -> float:
        return self.last - self.start

    def summary(self) -> str:
        return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.laps)


def _ila_config(args):
    """The demo's short ILA (constants above); validated here, so bad options fail before any work."""
    from layerscope.methods.ila.config import ILAConfig

    return ILAConfig(
        max_steps=args.steps,
        min_steps=min(8, args.steps),
        check_every=DEMO_CHECK_EVERY,
        eps=args.eps,
        patience=DEMO_PATIENCE,
        batch_size=4,
        lr=2e-3,
        gate_steps=args.gate_steps,
        gate_lr=0.3,  # short run: larger gate lr
        seed=args.seed,
        progress=not args.no_progress,
    )


def _ila_step(cfg, loaded, train, out: Path):
    """Step 2: a short ILA run -> module ranking, heatmap and loss curves under OUT/ila."""
    from layerscope.cli.plot import write_figures
    from layerscope.methods.ila import run_ila
    from layerscope.methods.ila.outputs import stage1_stop_report

    print("[2/5] ILA: stage 1 LoRA until epsilon-stable, stage 2 importance gates")
    ila = run_ila(loaded.model, loaded.tokenizer, train, cfg, model_name=loaded.name)
    ila.save(out / "ila")
    write_figures(ila, out / "ila")  # heatmap.png and loss.png
    stopped, warning = stage1_stop_report(
        ila.extras, cap_flag="--max-steps", eps_flag="--eps", command="demo", cap=ila.method_config.get("max_steps")
    )
    print(
        f"      {stopped}; stage 1 {ila.timings.get('stage1_s', float('nan')):.0f} s, "
        f"stage 2 {ila.timings.get('stage2_s', float('nan')):.0f} s"
    )
    if warning:
        print(warning, file=sys.stderr)
    print(f"      top modules: {', '.join(ila.top(0.1)[:6])}")
    return ila


def _ablation_step(loaded, lm, heldout, out: Path, progress: bool = True):
    """Step 3: sub-layer ablation valued by held-out loss -> OUT/ablation."""
    from layerscope.cli.plot import write_figures
    from layerscope.methods.ablation import ablate
    from layerscope.scoring import LossEvaluator

    print("[3/5] sub-layer ablation, value = -(held-out loss on response tokens)")
    evaluator = LossEvaluator(loaded.tokenizer, heldout.examples, batch_size=8)
    abl = ablate(
        loaded.model,
        evaluator,
        "sublayer",
        layer_map=lm,
        model_name=loaded.name,
        progress=progress,
        data={
            "source": heldout.source,
            "n_items": len(heldout.examples),
            "fingerprint": heldout.fingerprint,
            "metric": "-loss",  # what the plots and the report name: the value is minus the held-out loss
        },
    )
    abl.save(out / "ablation")
    write_figures(abl, out / "ablation")  # bar.png, as layerscope plot names it
    top = ", ".join(f"{p} ({s:+.3f})" for p, s in zip(abl.ranking()[:5], sorted(abl.scores, reverse=True)[:5]))
    print(f"      full-model loss {-abl.baseline.get('full', float('nan')):.3f}; largest loss increases: {top}")
    return abl


def _similarity_step(loaded, lm, heldout, out: Path):
    """Step 4: ShortGPT block influence on the held-out text -> OUT/similarity."""
    from layerscope.cli.plot import write_figures
    from layerscope.methods.similarity import block_influence

    print("[4/5] ShortGPT block influence")
    seqs = [e.input_ids for e in heldout.examples]
    # the data it read, as ``layerscope similarity`` records it (the report shows it beside the result)
    data = {"source": str(heldout.source), "kind": "sft", "fingerprint": heldout.fingerprint}
    bi = block_influence(loaded.model, lm, seqs, model_name=loaded.name, data=data)
    bi.save(out / "similarity")
    write_figures(bi, out / "similarity")  # bar.png, as layerscope plot names it
    return bi


def _agreement_step(ila, abl, bi, lm, out: Path) -> None:
    """Step 5: Spearman between the three rankings per block, and a peft config for ILA's top 30%."""
    from scipy.stats import spearmanr

    from layerscope.training.export import export_selection, write_export
    from layerscope.training.selection import select_modules

    print("[5/5] agreement between methods (per block, Spearman)")
    per_block = {"ila": _per_block(ila), "ablation": _per_block(abl), "block influence": bi.scores}
    names = list(per_block)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            r = spearmanr(per_block[a], per_block[b]).statistic
            print(f"      {a:>15s} vs {b:<15s} rho = {r:+.2f}")
    sel = select_modules(lm, ila, mode="top", fraction=0.3, fingerprint=ila.model.get("fingerprint"))
    write_export(export_selection(sel, lm, "peft"), out / "peft_top30")
    print(f"      peft LoraConfig for ILA's top 30% ({len(sel.modules)} modules): {out / 'peft_top30'}")
