"""``layerscope finetune``: fine-tune only the modules an importance ranking picks, and measure it."""

from __future__ import annotations

import sys
from pathlib import Path

from layerscope.cli.common import (
    add_append_eos_arg,
    add_format_arg,
    add_hidden_alias,
    add_model_args,
    add_seed_arg,
    add_selection_args,
    add_seq_len_arg,
    default_out,
    finite_float,
    learning_rate_text,
    load_from_args,
    name_list,
    nonempty,
)

DEFAULT_HELDOUT_FRACTION = 0.1  # the share of --data held out when no --heldout file is given


def add_arguments(p) -> None:

    # defaults come from FinetuneConfig (torch-free), so the CLI and the Python API cannot drift apart
    from layerscope.training.config import DEFAULT_LR, FinetuneConfig

    d = FinetuneConfig()
    add_model_args(p)
    _add_data_args(p)
    p.add_argument(
        "--importance",
        type=nonempty,
        default=None,
        help="importance result whose ranking picks the modules: its importance.json or the run folder "
        "holding it (required unless --mode all or random)",
    )
    add_selection_args(p, seed_flag="--selection-seed (default --seed)")
    _add_training_args(p, d, DEFAULT_LR)
    _add_eval_args(p, d)
    _add_run_args(p, d)
    add_seed_arg(p, default=d.seed)


def _add_data_args(p) -> None:
    p.add_argument(
        "--data",
        type=nonempty,
        required=True,
        help="SFT file (alpaca / messages / sharegpt / prompt-completion / reasoning / preference / text)",
    )
    add_format_arg(p, "--data and --heldout")
    add_append_eos_arg(p)
    p.add_argument(
        "--heldout",
        type=nonempty,
        default=None,
        help="separate held-out SFT file (default: --heldout-fraction of --data, split with --data-seed)",
    )
    p.add_argument(
        "--heldout-fraction",
        type=finite_float,
        default=None,  # None: not given, so a fraction beside --heldout is told from the default (refused there)
        help=f"share of --data held out, without --heldout (default {DEFAULT_HELDOUT_FRACTION})",
    )
    p.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=None,
        help="use N records of --data: a random subset drawn with --data-seed (the first N after a shuffle, "
        "not the file's first N); the held-out share is split off these N (default all)",
    )
    p.add_argument(  # ila's name for its --limit draw; dest split_seed, as training.inputs names it
        "--data-seed",
        dest="split_seed",
        metavar="DATA_SEED",
        type=int,
        default=0,
        help="seed of the --limit shuffle and the held-out split, kept apart from --seed so runs with "
        "different training seeds share one held-out set (default 0)",
    )
    add_hidden_alias(p, "--split-seed", "split_seed", type=int)  # its name before it took ila's
    p.add_argument(
        "--selection-seed",
        type=int,
        default=None,
        help="seed of the --mode random / random-matched draw (default --seed); fix it to train one "
        "random selection under several training seeds",
    )


def _add_training_args(p, d, default_lr: dict) -> None:
    p.add_argument("--max-steps", type=int, default=d.max_steps, help=f"optimizer steps (default {d.max_steps})")
    p.add_argument(
        "--lr",
        type=finite_float,
        default=None,
        help=f"learning rate (default {learning_rate_text(default_lr['lora'])} lora, "
        f"{learning_rate_text(default_lr['full'])} full)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"examples per micro-batch and process; a step takes --grad-accum of them (default {d.batch_size})",
    )
    p.add_argument(
        "--grad-accum", type=int, default=d.grad_accum, help=f"gradient accumulation steps (default {d.grad_accum})"
    )
    add_seq_len_arg(p)
    p.add_argument(
        "--lisa-layers",
        type=int,
        default=d.lisa_layers,
        help="LISA schedule (Pan et al. 2024): only N blocks train at a time, drawn at random from the blocks "
        f"holding selected modules and drawn again every --lisa-interval steps (default {d.lisa_layers}: off)",
    )
    p.add_argument(
        "--lisa-interval",
        type=int,
        default=None,  # None: not given; refused without --lisa-layers, where it would do nothing
        help=f"LISA: steps between block switches, with --lisa-layers (default {d.lisa_interval})",
    )


def _add_eval_args(p, d) -> None:
    p.add_argument(
        "--eval-tasks",
        type=name_list,
        default=[],
        help="comma-separated list of zero-shot multiple-choice tasks after training, e.g. arc_easy,piqa,hellaswag (no "
        "loss:FILE: the held-out loss is reported anyway); subjects after mmlu:SUBJECT join it "
        "(mmlu:anatomy,virology,piqa: two tasks) (default none)",
    )
    p.add_argument(  # None: not given; refused without --eval-tasks, where it would do nothing
        "--eval-limit", type=int, default=None, help=f"items per eval task (default {d.eval_limit})"
    )
    p.add_argument(
        "--eval-batch-size",
        type=int,
        default=d.eval_batch_size,
        help=f"rows per forward in evaluation (default {d.eval_batch_size})",
    )


def _add_run_args(p, d) -> None:
    p.add_argument(
        "--out",
        type=nonempty,
        default=None,
        help="output folder: report.json, and adapter/ (lora: a peft adapter) or trained/ (full: the trained "
        f"tensors) (default {default_out('finetune-<mode>-<method>')}, e.g. {default_out('finetune-top-lora')})",
    )
    p.add_argument("--save-checkpoints", action="store_true", help="keep Trainer checkpoints under OUT/checkpoints")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,  # None: not given; refused without --save-checkpoints / --resume, where none are kept
        help=f"steps between Trainer checkpoints, with --save-checkpoints / --resume (default {d.checkpoint_every})",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest intact Trainer checkpoint in OUT/checkpoints (implies --save-checkpoints); "
        "refused when the options that change training, the data or the model differ from the checkpoint's",
    )
    p.add_argument("--gradient-checkpointing", action="store_true", help="non-reentrant activation checkpointing")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 mixed precision (GPU); --method full with --dtype auto on a bfloat16 GPU turns it on and loads "
        "float32 weights (AdamW's small updates round away in bfloat16 weights)",
    )
    p.add_argument(
        "--ignore-fingerprint",
        action="store_true",
        help="accept a ranking whose weights fingerprint differs "
        "(float16, or an older layerscope's ranking in another dtype)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from layerscope.cli.common import check_selection_args, seed_everything
    from layerscope.core.distributed import is_main_process
    from layerscope.training import finetune
    from layerscope.training.inputs import backward_depth_note, load_ranking, ranking_at_chance_note

    importance = load_ranking(args.importance, args.mode)
    if (note := ranking_at_chance_note(importance, args.mode)) and is_main_process():
        print(f"note: {note}", file=sys.stderr)
    _choose_precision(args)  # before the config: it may turn on --bf16
    check_selection_args(args, seed=("--selection-seed", "selection_seed"))  # fills in the LoRA defaults
    config = _finetune_config(args)
    _check_late_options(args, config)
    if args.mode == "all" and args.fraction is not None and is_main_process():
        print(f"note: --mode all trains every module: --fraction {args.fraction:g} has no effect", file=sys.stderr)
    seed_everything(args.seed)
    loaded = load_from_args(args)
    selection, layer_map, train, heldout = _selection_and_data(args, importance, loaded)

    say = print if is_main_process() else (lambda *a, **k: None)  # under torchrun every process trains; one reports
    say(
        f"training {len(selection.modules)} of {selection.n_modules_total} linear modules "
        f"({args.mode}, fraction {selection.fraction:g}, {args.method}) on {len(train.examples)} examples, "
        f"held out {len(heldout.examples)}{_drawn(train, args)}"
    )
    note = backward_depth_note(selection, layer_map)
    if note:
        say(note)
    rep = finetune(
        loaded.model, loaded.tokenizer, train, heldout, selection, config, ignore_fingerprint=args.ignore_fingerprint
    )
    _print_report(rep, say, config.method)
    return 0


def _drawn(train, args) -> str:
    """``: 400 random records of 1000 (--limit 400, --data-seed 0)`` where --limit drew a subset at random
    (unlike eval's and ablate's --limit, the file's first N), else nothing."""
    stats = getattr(train, "stats", None) or {}
    drawn_from, records = stats.get("drawn_from"), stats.get("records")
    if not drawn_from or records is None or records >= drawn_from:
        return ""
    return f": {records} random records of {drawn_from} (--limit {args.limit}, --data-seed {args.split_seed})"


def _choose_precision(args) -> None:
    """``--method full`` trains the weights themselves, so they must be float32: AdamW updates bfloat16
    weights with no float32 copy, and at full fine-tuning's learning rates most updates round away
    (docs/large-models.md). So there ``--dtype auto``
    loads float32 and, where auto would have picked bfloat16 (a GPU that supports it), trains in bf16
    mixed precision (``--bf16``: the Trainer's autocast over float32 weights), said in a note and recorded
    in report.json (``model.dtype``, ``model.mixed_precision``, ``config.bf16``); a half-precision
    ``--dtype`` and quantised weights (``--load-in``) are refused before the model loads. With ``--resume`` a
    half-precision ``--dtype`` is allowed, with a note: an earlier version's ``--dtype auto`` trained bfloat16
    weights with bf16 off on a GPU, and a checkpoint of such a run resumes only with the same. Not under
    accelerate's FSDP with mixed precision, which keeps float32 master weights itself. LoRA is unchanged:
    its adapters are float32 over frozen weights of any dtype."""
    if args.method != "full":
        return
    from layerscope.core.errors import ConfigError

    if getattr(args, "load_in", None):
        raise ConfigError(
            f"--load-in {args.load_in} with --method full: quantised weights cannot be trained; use --method lora "
            "(QLoRA: float32 adapters over the quantised weights) or load without --load-in"
        )
    from layerscope.core.devices import AUTO, DTYPES, dtype_name, resolve_device, resolve_dtype
    from layerscope.training.config import DEFAULT_LR
    from layerscope.training.freezing import HALF_PRECISION, launcher_keeps_float32_weights

    if launcher_keeps_float32_weights():
        return
    given = str(args.dtype).strip()
    lr = args.lr if args.lr is not None else DEFAULT_LR["full"]
    if given.lower() != AUTO:
        if DTYPES.get(given) in HALF_PRECISION:
            if not getattr(args, "resume", False):
                raise ConfigError(
                    f"--dtype {given} with --method full: AdamW would update {dtype_name(DTYPES[given])} weights with "
                    f"no float32 copy, and at --lr {lr:g} most updates round away; drop --dtype (auto trains float32 "
                    "weights, in bf16 mixed precision on a GPU) or use --method lora"
                )
            from layerscope.core.distributed import is_main_process

            if is_main_process():  # a run an earlier version started so (--dtype auto on a GPU) resumes only so
                print(
                    f"note: --method full --dtype {given}: the weights train in {dtype_name(DTYPES[given])} with no "
                    f"float32 copy (at --lr {lr:g} most updates round away); kept so that a run started so can resume",
                    file=sys.stderr,
                )
        return
    auto = resolve_dtype(AUTO, resolve_device(args.device))
    if auto not in HALF_PRECISION:
        return  # float32 already (the CPU, a GPU without native bfloat16)
    args.dtype, args.bf16 = "float32", True
    from layerscope.core.distributed import is_main_process

    if is_main_process():
        print(
            f"note: --method full trains float32 weights in bf16 mixed precision (--dtype auto would load "
            f"{dtype_name(auto)}, whose weights AdamW's updates at --lr {lr:g} mostly leave unchanged)",
            file=sys.stderr,
        )


def _check_late_options(args, config) -> None:
    """What is used only once a model is loaded or training is over, checked first: an unknown
    --eval-tasks name or an unwritable --out must not cost a training run."""
    from layerscope.cli.common import check_at_least, check_data_file, check_output, check_threads
    from layerscope.core.errors import ConfigError
    from layerscope.training.finetuning import load_eval_tasks
    from layerscope.training.saving import saved_folder

    check_threads(args)
    check_at_least(args, 1, limit="--limit")
    check_at_least(args, 2, seq_len="--max-length")
    _refuse_unused_options(args)
    if not args.heldout and not 0 < _heldout_fraction(args) < 1:
        raise ConfigError(f"--heldout-fraction must be between 0 and 1 (exclusive), got {args.heldout_fraction:g}")
    check_data_file(args.data)
    check_data_file(args.heldout)
    check_output(config.out_dir)
    # adapter/ or trained/, written after training: a file there would cost the run
    check_output(saved_folder(config.out_dir, config.method))
    check_output(Path(config.out_dir) / "report.json", kind="file")
    load_eval_tasks(config.eval_tasks, config.eval_limit)
    from layerscope.training.resuming import refuse_earlier_checkpoints

    refuse_earlier_checkpoints(config)  # before the model loads, and before a note says what is replaced
    earlier = Path(config.out_dir) / "report.json"
    from layerscope.core.distributed import is_main_process

    if earlier.is_file() and not config.resume and is_main_process():  # the default --out is shared by runs of
        # other fractions, seeds, ...: a replaced run is said, not silent
        saved = saved_folder(config.out_dir, config.method).name
        print(
            f"note: {config.out_dir} holds an earlier run; its report.json and {saved}/ are replaced", file=sys.stderr
        )


def _heldout_fraction(args) -> float:
    return DEFAULT_HELDOUT_FRACTION if args.heldout_fraction is None else args.heldout_fraction


def _refuse_unused_options(args) -> None:
    """An option that would do nothing in this run is refused, not silently dropped: the run would
    not be the one its command line reads as."""
    from layerscope.core.errors import ConfigError

    unused = {
        "--checkpoint-every": (
            args.checkpoint_every is not None and not (args.save_checkpoints or args.resume),
            "checkpoints are kept only with --save-checkpoints or --resume",
        ),
        "--lisa-interval": (
            args.lisa_interval is not None and not args.lisa_layers,
            "it is the LISA schedule's, with --lisa-layers",
        ),
        "--heldout-fraction": (
            args.heldout_fraction is not None and bool(args.heldout),
            "--heldout gives the held-out set",
        ),
        "--eval-limit": (args.eval_limit is not None and not args.eval_tasks, "it is --eval-tasks' item count"),
    }
    for flag, (refused, why) in unused.items():
        if refused:
            raise ConfigError(f"{flag} has no effect here: {why}; drop it")


def _finetune_config(args):
    """The options of the run, checked before the model is loaded (a bad flag fails fast)."""
    from layerscope.core.models import model_name
    from layerscope.core.tasks.registry import split_task_list
    from layerscope.training import FinetuneConfig

    return FinetuneConfig(
        method=args.method,
        max_steps=args.max_steps,
        lr=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        seed=args.seed,
        # not given (None): the config's defaults, as check_selection_args fills them in
        **{k: getattr(args, k) for k in ("lora_r", "lora_alpha", "lora_dropout") if getattr(args, k) is not None},
        lisa_layers=args.lisa_layers,
        **({} if args.lisa_interval is None else {"lisa_interval": args.lisa_interval}),
        # names, stripped (an empty one is refused by name_list); mmlu:anatomy,virology is one task
        eval_tasks=split_task_list(args.eval_tasks),
        **({} if args.eval_limit is None else {"eval_limit": args.eval_limit}),
        eval_batch_size=args.eval_batch_size,
        out_dir=args.out or default_out(f"finetune-{args.mode}-{args.method}"),
        save_checkpoints=args.save_checkpoints or args.resume,
        **({} if args.checkpoint_every is None else {"checkpoint_every": args.checkpoint_every}),
        resume=args.resume,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
        progress=not args.no_progress,
        model_name=model_name(args.model),  # "default" or a path: the model's own name, as results record it
    )


def _selection_and_data(args, importance, loaded):
    """(selection, layer map, train, held-out): the ranking checked against the model, and the data split."""
    from layerscope.core.models import context_length
    from layerscope.training.inputs import choose_modules, load_train_heldout

    selection, layer_map = choose_modules(
        importance,
        args.mode,
        args.fraction,
        args.seed if args.selection_seed is None else args.selection_seed,
        model=loaded.model,
        min_block=args.min_block,
        ignore_fingerprint=args.ignore_fingerprint,
        where=str(args.importance or "importance"),
    )
    train, heldout = load_train_heldout(
        args.data,
        loaded.tokenizer,
        args.seq_len,
        limit=args.limit,
        split_seed=args.split_seed,
        heldout=args.heldout,
        heldout_fraction=_heldout_fraction(args),
        format=args.format,
        append_eos=args.append_eos,
        context_length=context_length(loaded.model),
    )
    return selection, layer_map, train, heldout


def _print_report(rep, say, method: str) -> None:
    gf = rep.grad_flow
    say(
        f"trainable parameters {rep.trainable_params:,} of {rep.total_params:,} "
        f"({100 * rep.trainable_params / rep.total_params:.2f}%)"
    )
    say(
        f"backward stops at block {gf['lowest_trainable_block']} ({gf['blocks_in_backward']} of {gf['n_blocks']} "
        f"blocks in the graph)"
    )
    speed = (
        f"{rep.time_per_step_s:.3f} s/step, {rep.tokens_per_s:.0f} tokens/s"
        if rep.time_per_step_s is not None
        else "no step trained in this run (its checkpoint had reached --max-steps), so no speed"
    )
    say(
        f"{rep.steps} steps, {speed}, "
        f"peak memory {rep.peak_memory_bytes / 2**20:.0f} MiB "
        f"({rep.memory_kind}, +{rep.peak_memory_delta_bytes / 2**20:.0f} MiB during training)"
    )
    before = f"{rep.heldout_loss_before:.4f} -> " if rep.heldout_loss_before is not None else ""
    say(f"held-out loss {before}{rep.heldout_loss:.4f}")
    for name, r in rep.eval.items():
        say(f"{name}: {r['metric']} {r['value']:.4f} (n={r['n']})")
    saved = rep.paths.get("adapter") or rep.paths.get("trained")  # lora: adapter/, full: trained/
    say(f"wrote {rep.paths.get('report')}" + (f" and {saved}" if saved else ""))
    if saved:
        from layerscope.training.saving import how_to_load

        say(f"load: {how_to_load(saved, method)}")
