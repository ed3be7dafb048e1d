"""``layerscope ila``: run both ILA stages and write importance.json, heatmap.png, loss.png, adapter/.

While it runs, OUT/checkpoint/ holds the latest training checkpoint (``--checkpoint-every``);
``--resume`` continues from it after a kill. It is deleted once the outputs are written.

Under ``torchrun --nproc_per_node N -m layerscope ila ...`` or ``accelerate launch --multi_gpu
--num_processes N -m layerscope ila ...`` the N processes share each optimizer step (N x
--grad-accum micro-batches per step, see ``methods/ila/``); the main process alone prints and writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from layerscope.cli.common import (
    add_append_eos_arg,
    add_format_arg,
    add_model_args,
    add_seed_arg,
    add_seq_len_arg,
    check_at_least,
    check_data_file,
    check_output,
    check_threads,
    default_out,
    finite_float,
    load_from_args,
    nonempty,
    seed_everything,
)


def add_arguments(p) -> None:
    from layerscope.methods.ila.config import ILAConfig  # torch-free: --help stays fast

    d = ILAConfig()
    add_model_args(p)
    _add_data_args(p, d)
    _add_stage1_args(p, d)
    _add_stage2_args(p, d)
    add_seed_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_checkpoint_args(p)


def _add_data_args(p, d) -> None:
    p.add_argument(
        "--data",
        type=nonempty,
        default=None,
        help="SFT file (alpaca / messages / sharegpt / prompt-completion / reasoning / preference / text, "
        "JSON[L], optionally .gz); "
        "default: the shipped demo instruction set",
    )
    add_format_arg(p)
    add_append_eos_arg(p)
    p.add_argument(
        "--out",
        type=nonempty,
        default=default_out("ila"),
        help="output folder: importance.json, heatmap.png, loss.png and adapter/ (the stage-1 LoRA; not with "
        f"--adapter) (default {default_out('ila')})",
    )
    p.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=None,
        help="use N examples of --data drawn at random (with --data-seed), not the file's first N as eval's "
        "and ablate's --limit (default all)",
    )
    p.add_argument("--data-seed", type=int, default=0, help="seed of the --limit random draw (default 0)")
    add_seq_len_arg(p)
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"examples per micro-batch (default {d.batch_size})"
    )
    p.add_argument(
        "--grad-accum",
        type=int,
        default=d.grad_accum,
        help="micro-batches per optimizer step and process (default 1); with N processes (torchrun) a "
        "step takes N times as many: the same data as --grad-accum N x this in one process",
    )


# The options of stage 1 alone: ILAConfig field -> argparse attribute (the flag: ILAConfig's OPTION_FLAGS).
# Their defaults are None, filled from ILAConfig in ``_stage1``: so a flag given with --adapter (no stage 1
# runs) is told from one left out.
STAGE1_OPTIONS = {
    "r": "rank",
    "alpha": "alpha",
    "dropout": "lora_dropout",
    "lr": "lr",
    "lr_schedule": "lr_schedule",
    "max_steps": "max_steps",
    "min_steps": "min_steps",
    "eps": "eps",
    "check_every": "check_every",
    "patience": "patience",
}


def _add_stage1_args(p, d) -> None:
    from layerscope.methods.ila.config import LR_SCHEDULES

    g1 = p.add_argument_group("stage 1 (LoRA until epsilon-stable; none of these with --adapter)")
    # --lora-r / --lora-alpha: finetune's and export's spelling
    g1.add_argument("--rank", "--lora-r", dest="rank", type=int, default=None, help=f"LoRA rank r (default {d.r})")
    g1.add_argument(
        "--alpha",
        "--lora-alpha",
        dest="alpha",
        type=finite_float,
        default=None,
        help=f"LoRA alpha (default {d.alpha:g})",
    )
    g1.add_argument("--lora-dropout", type=finite_float, default=None, help=f"LoRA dropout (default {d.dropout:g})")
    g1.add_argument("--lr", type=finite_float, default=None, help=f"LoRA learning rate (default {d.lr:g})")
    g1.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=None,
        help=f"stage 1's rate after a warm-up over {d.warmup_ratio * 100:g}%% of --max-steps: linear falls to 0 at "
        "--max-steps, so the update shrinks near the cap whether or not it has settled; constant holds --lr "
        f"(default {d.lr_schedule})",
    )
    g1.add_argument("--max-steps", type=int, default=None, help=f"stage-1 step cap (default {d.max_steps})")
    g1.add_argument(
        "--min-steps",
        type=int,
        default=None,
        help=f"stage-1 step floor, at most --max-steps (default {d.min_steps}; a lower --max-steps caps it)",
    )
    g1.add_argument(
        "--eps",
        type=finite_float,
        default=None,
        help=f"stable when ||dW_t - dW_(t-k)|| / ||dW_t|| < eps (default {d.eps:g})",
    )
    g1.add_argument("--check-every", type=int, default=None, help=f"k: steps between checks (default {d.check_every})")
    g1.add_argument("--patience", type=int, default=None, help=f"consecutive stable checks (default {d.patience})")
    g1.add_argument(
        "--adapter",
        type=nonempty,
        default=None,
        help="reuse a saved stage-1 adapter folder (skips stage 1: its own rank, alpha and targets are used "
        "and recorded)",
    )


def _add_stage2_args(p, d) -> None:
    from layerscope.methods.ila.config import GATE_OPTIMIZERS, SPARSITY_MODES

    g2 = p.add_argument_group("stage 2 (gates)")
    g2.add_argument("--gate-steps", type=int, default=d.gate_steps, help=f"stage-2 steps (default {d.gate_steps})")
    g2.add_argument(
        "--gate-lr", type=finite_float, default=d.gate_lr, help=f"score learning rate (default {d.gate_lr:g})"
    )
    g2.add_argument(
        "--gate-init",
        type=finite_float,
        default=d.gate_init,
        help=f"initial score s (default {d.gate_init:g}: gate 0.95)",
    )
    g2.add_argument(
        "--gate-optimizer",
        default=d.gate_optimizer,
        choices=GATE_OPTIMIZERS,
        help="auto (default): adam for penalty, normalised SGD for budget",
    )
    g2.add_argument(
        "--sparsity",
        default=d.sparsity,
        choices=SPARSITY_MODES,
        help="penalty: loss + lambda*mean(gate) (default); budget: hard top-H mask, straight-through",
    )
    # None: not given (filled from ILAConfig in ``_config``), so the one the other --sparsity mode ignores is refused
    g2.add_argument(
        "--lambda",
        dest="lam",
        type=finite_float,
        default=None,
        help=f"penalty weight, --sparsity penalty only (default {d.lam:g})",
    )
    g2.add_argument(
        "--budget-fraction",
        type=finite_float,
        default=None,
        help=f"H as a fraction of modules, --sparsity budget only (default {d.budget_fraction:g})",
    )


def _add_checkpoint_args(p) -> None:
    from layerscope.methods.ila.config import CHECKPOINT_EVERY

    g3 = p.add_argument_group("checkpoints (OUT/checkpoint/, deleted once the result is written)")
    g3.add_argument(
        "--checkpoint-every",
        type=int,
        default=CHECKPOINT_EVERY,
        metavar="N",
        help=f"save the training state every N optimizer steps and at the end of stage 1 "
        f"(default {CHECKPOINT_EVERY}; 0: no checkpoints)",
    )
    g3.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint/ (same options, data, model and, on the CPU, --threads required: "
        "the result equals an uninterrupted run's); starts from scratch if there is none, and is refused where a "
        "finished result is and no checkpoint. Without --resume an "
        "existing checkpoint is overwritten; an earlier result in OUT stays until this run writes its own",
    )


def run(args) -> int:
    from layerscope.core.data import DEMO_DATA, load_sft
    from layerscope.core.distributed import is_main_process, join_from_env
    from layerscope.core.errors import ConfigError
    from layerscope.core.models import context_length
    from layerscope.methods.ila import checkpoint_folder, run_ila_to_folder
    from layerscope.methods.ila.outputs import stage1_stop_report

    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    config = _config(args)
    _check_inputs(args)
    ckpt_dir = checkpoint_folder(args.out)
    header = _peek(ckpt_dir, args.resume)  # a damaged checkpoint to resume from: refused before the model loads
    _refuse_resuming_a_finished_run(args, header)
    args.device = join_from_env(args.device)  # before the model is loaded, as ``ablate`` does
    main = is_main_process()
    seed_everything(args.seed)
    loaded = load_from_args(args)  # applies --threads
    if args.resume:
        _check_threads(ckpt_dir, header, loaded.model)
    data = load_sft(
        args.data or DEMO_DATA,
        loaded.tokenizer,
        max_length=args.seq_len,
        format=args.format,
        limit=args.limit,
        shuffle_seed=args.data_seed if args.limit is not None else None,
        append_eos=args.append_eos,
        context_length=context_length(loaded.model),
        quiet=True,  # its notes follow the line saying which examples were drawn
    )
    if main:
        print(f"data: {data.source}: {data_line(data.stats, len(data), args.limit, args.data_seed)}")
    for note in data.stats["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if main:
        _note_processes(config)
        _note_checkpoint(ckpt_dir, args.resume, header)
    written = run_ila_to_folder(
        loaded.model,
        loaded.tokenizer,
        data,
        config,
        args.out,
        model_name=loaded.name,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        note=lambda line: print(f"note: {line}", file=sys.stderr),
    )
    if written is None:
        return 0  # not the main process: that one prints
    ex, t = written.result.extras, written.result.timings
    mc = written.result.method_config
    stopped, warning = stage1_stop_report(ex, cap=mc["max_steps"], lr_schedule=mc["lr_schedule"])
    print(f"{stopped}, {t['stage1_s']:.1f}s; stage 2: {config.gate_steps} steps, {t['stage2_s']:.1f}s")
    print("most important modules: " + ", ".join(written.result.ranking()[:10]))
    print("mean score per module type: " + ", ".join(f"{k} {v:.2f}" for k, v in ex["score_by_type"].items()))
    adapter = "" if written.adapter is None else f", {written.adapter}/"
    print(f"wrote {written.importance}, {written.heatmap}, {written.loss}" + adapter)
    if warning:
        print(warning, file=sys.stderr)
    return 0


def data_line(stats: dict, kept: int, limit: int | None, seed: int) -> str:
    """Which examples ila trains on, in words: a --limit draw says it is random, of how many records, and
    the seed that drew it (eval and ablate's --limit takes the first N instead), e.g. ``14 random examples
    of 62 (--limit 14, --data-seed 0), 8 kept, 91 response tokens``."""
    drawn, of = stats["records"], stats.get("drawn_from")
    if limit is None or of is None:
        used = f"{drawn} examples"
    elif drawn < of:
        used = f"{drawn} random examples of {of} (--limit {limit}, --data-seed {seed})"
    else:  # the draw took every record: only their order is the seed's
        used = f"all {of} examples (--limit {limit} is at least the {of} records)"
    kept_part = f", {kept} kept" if kept < drawn else ""
    return f"{used}{kept_part}, {stats['response_tokens']} response tokens"


def _check_inputs(args) -> None:
    """What is read or written only after the model loads (the data, the output folder; the adapter
    folder is checked with the options, in ``_stage1``)."""
    check_threads(args)
    check_at_least(args, 1, limit="--limit")
    check_at_least(args, 2, seq_len="--max-length")
    check_data_file(args.data)
    check_output(args.out)


def _stage1(args) -> dict:
    """The stage-1 fields of ILAConfig: the flags given, else the defaults. A stage-1 flag with
    --adapter is refused: stage 1 does not run, and the adapter's own settings are used and recorded."""
    from layerscope.core.errors import ConfigError
    from layerscope.methods.ila import ILAConfig
    from layerscope.methods.ila.config import OPTION_FLAGS

    if args.adapter is not None and not Path(args.adapter).is_dir():
        raise ConfigError(f"--adapter {args.adapter}: no such adapter folder")
    if args.adapter is not None and not (Path(args.adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"--adapter {args.adapter}: no LoRA adapter there (expected adapter_config.json)")
    given = [OPTION_FLAGS[field] for field, attr in STAGE1_OPTIONS.items() if getattr(args, attr) is not None]
    if args.adapter is not None and given:
        raise ConfigError(
            f"{', '.join(given)}: stage-1 options, but --adapter skips stage 1 and uses the adapter's own "
            f"settings: drop {'it' if len(given) == 1 else 'them'}"
        )
    d = ILAConfig()
    return {f: getattr(d, f) if getattr(args, a) is None else getattr(args, a) for f, a in STAGE1_OPTIONS.items()}


def _config(args):
    """The run's ILAConfig (its own checks name the flags), and --min-steps at most --max-steps."""
    from layerscope.core.errors import ConfigError
    from layerscope.methods.ila import ILAConfig

    _check_sparsity_options(args)
    d = ILAConfig()
    config = ILAConfig(
        **_stage1(args),
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        gate_steps=args.gate_steps,
        gate_lr=args.gate_lr,
        gate_init=args.gate_init,
        gate_optimizer=args.gate_optimizer,
        sparsity=args.sparsity,
        lam=d.lam if args.lam is None else args.lam,
        budget_fraction=d.budget_fraction if args.budget_fraction is None else args.budget_fraction,
        seed=args.seed,
        adapter=args.adapter,
        progress=not args.no_progress,
    )
    # the loop caps min_steps at max_steps; a --min-steps given above it is a mistake (the default is left
    # as ILAConfig has it, so a run's recorded options and its checkpoint fingerprint stay as before)
    if args.min_steps is not None and config.min_steps > config.max_steps:
        cap = "--max-steps" if args.max_steps is not None else "the default --max-steps"
        raise ConfigError(
            f"--min-steps {config.min_steps} is above {cap} {config.max_steps}: lower --min-steps or raise --max-steps"
        )
    return config


def _check_sparsity_options(args) -> None:
    """--lambda weighs the penalty of --sparsity penalty, --budget-fraction sets the open gates of
    --sparsity budget: given with the other mode, either would have no effect (and be recorded as if used)."""
    from layerscope.core.errors import ConfigError

    unused = {"penalty": ("--budget-fraction", args.budget_fraction), "budget": ("--lambda", args.lam)}
    flag, value = unused[args.sparsity]
    if value is not None:
        uses = {"--budget-fraction": "budget", "--lambda": "penalty"}[flag]
        raise ConfigError(
            f"{flag} applies to --sparsity {uses}, not {args.sparsity}: drop it, or add --sparsity {uses}"
        )


def _note_processes(config) -> None:
    from layerscope.core.distributed import world_size

    w = world_size()
    if w > 1:
        print(
            f"data parallel: {w} processes, {w * config.grad_accum} micro-batches of {config.batch_size} "
            f"examples per optimizer step"
        )


def _note_checkpoint(ckpt_dir: Path, resume: bool, header: dict | None) -> None:
    """One line on what happens to an existing (or missing) checkpoint."""
    if header is None:  # none there
        if resume:
            print(f"note: no checkpoint in {ckpt_dir}; --resume starts from scratch", file=sys.stderr)
        return
    if resume:
        return  # said by run_ila once the checkpoint is found to be this run's (a refusal comes first)
    from layerscope.methods.ila.config import STAGE_NAMES

    stage = STAGE_NAMES.get(header.get("stage"))
    where = f"{stage}, step {header.get('step')}" if stage else "unreadable"
    print(
        f"note: ignoring the checkpoint in {ckpt_dir} ({where}); it will be overwritten (--resume would continue it)",
        file=sys.stderr,
    )


def _check_threads(ckpt_dir: Path, header: dict | None, model) -> None:
    """Refuse to resume a checkpoint written with another CPU thread count (``--threads``), where the
    model computes on the CPU: its float sums would be added in another order from here on, so the
    result would not be the uninterrupted run's. A checkpoint that did not record the count is not held to it."""
    from layerscope.core import checkpoint
    from layerscope.core.errors import ConfigError

    if not header or not any(p.device.type == "cpu" for p in model.parameters()):
        return  # nothing to resume, or (on a GPU) the CPU threads do not touch the numbers
    why = checkpoint.threads_mismatch(header)
    if why:
        raise ConfigError(f"{ckpt_dir}: {why}")


def _refuse_resuming_a_finished_run(args, header: dict | None) -> None:
    """--resume where no checkpoint is left but a finished result is: the checkpoint goes once the result is
    written, so there is nothing to resume, and a --resume that quietly trained again from scratch would not be
    what was asked. Refused before the model loads, the result left as it is."""
    from layerscope.core.errors import ConfigError
    from layerscope.methods.ila.outputs import RESULT_FILE

    if args.resume and header is None and (Path(args.out) / RESULT_FILE).is_file():
        raise ConfigError(
            f"--resume: {args.out} holds a finished result ({RESULT_FILE}) and no checkpoint, so there is nothing "
            "to resume; drop --resume to recompute it there, or give another --out"
        )


def _peek(ckpt_dir: Path, resume: bool) -> dict | None:
    """The checkpoint's header; an unreadable one (damaged, cut short) only matters when resuming
    from it: then it is refused in one line (``checkpoint.read_header`` turns safetensors' errors
    into ``ConfigError``)."""
    from layerscope.core import checkpoint
    from layerscope.core.errors import ConfigError

    try:
        return checkpoint.read_header(ckpt_dir)
    except ConfigError:
        if resume:
            raise
        return {}  # an unreadable checkpoint, about to be overwritten
