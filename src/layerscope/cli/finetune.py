"""``layerscope finetune``: fine-tune only the modules an importance ranking picks, and measure it."""

from __future__ import annotations

from layerscope.cli.common import add_model_args, add_seed_arg, add_selection_args, load_from_args


def add_arguments(p) -> None:
    add_model_args(p)
    p.add_argument("--data", required=True, help="SFT file (alpaca / messages / sharegpt / prompt-completion / text)")
    p.add_argument(
        "--heldout",
        default=None,
        help="separate held-out SFT file (default: --heldout-fraction of --data, split with --seed)",
    )
    p.add_argument("--heldout-fraction", type=float, default=0.1, help="share of --data held out (default 0.1)")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use N records of --data (the first N after a shuffle under --split-seed)",
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the --limit shuffle and the held-out split, kept apart from --seed so runs with "
        "different training seeds share one held-out set (default 0)",
    )
    p.add_argument("--importance", default=None, help="importance result (JSON) whose ranking picks the modules")
    add_selection_args(p)
    p.add_argument("--max-steps", type=int, default=100, help="optimizer steps (default 100)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 2e-4 lora, 2e-5 full)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per step per device (default 4)")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens kept per example (default 512)")
    p.add_argument(
        "--lisa-layers",
        type=int,
        default=0,
        help="LISA schedule: only this many random selected blocks train at a time (default 0: off)",
    )
    p.add_argument("--lisa-interval", type=int, default=20, help="LISA: steps between block switches (default 20)")
    p.add_argument(
        "--eval-tasks", default="", help="comma list of zero-shot tasks after training, e.g. arc_easy,piqa,hellaswag"
    )
    p.add_argument("--eval-limit", type=int, default=200, help="items per eval task (default 200)")
    p.add_argument("--eval-batch-size", type=int, default=8, help="rows per forward in evaluation (default 8)")
    p.add_argument(
        "--out", default=None, help="output folder for report.json and adapter/ (default finetune-<mode>-<method>)"
    )
    p.add_argument("--save-checkpoints", action="store_true", help="keep Trainer checkpoints under OUT/checkpoints")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=50,
        help="steps between Trainer checkpoints with --save-checkpoints / --resume (default 50)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest Trainer checkpoint in OUT/checkpoints (implies --save-checkpoints)",
    )
    p.add_argument("--gradient-checkpointing", action="store_true", help="non-reentrant activation checkpointing")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument(
        "--ignore-fingerprint",
        action="store_true",
        help="accept a ranking whose weights fingerprint differs (same model in another dtype)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_seed_arg(p)


def run(args) -> int:
    from layerscope.cli.common import seed_everything
    from layerscope.core.distributed import is_main_process
    from layerscope.training import FinetuneConfig, finetune
    from layerscope.training.inputs import backward_depth_note, choose_modules, load_ranking, load_train_heldout

    importance = load_ranking(args.importance, args.mode)
    config = FinetuneConfig(
        method=args.method,
        max_steps=args.max_steps,
        lr=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        seed=args.seed,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lisa_layers=args.lisa_layers,
        lisa_interval=args.lisa_interval,
        eval_tasks=[t.strip() for t in args.eval_tasks.split(",") if t.strip()],
        eval_limit=args.eval_limit,
        eval_batch_size=args.eval_batch_size,
        out_dir=args.out or f"finetune-{args.mode}-{args.method}",
        save_checkpoints=args.save_checkpoints or args.resume,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
        progress=not args.no_progress,
        model_name=args.model,
    )
    seed_everything(args.seed)
    loaded = load_from_args(args)
    selection, layer_map = choose_modules(
        importance,
        args.mode,
        args.fraction,
        args.seed,
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
        heldout_fraction=args.heldout_fraction,
    )

    say = print if is_main_process() else (lambda *a, **k: None)  # under torchrun every process trains; one reports
    say(
        f"training {len(selection.modules)} of {selection.n_modules_total} linear modules "
        f"({args.mode}, fraction {selection.fraction:g}, {args.method}) on {len(train.examples)} examples, "
        f"held out {len(heldout.examples)}"
    )
    note = backward_depth_note(selection, layer_map)
    if note:
        say(note)
    rep = finetune(loaded.model, loaded.tokenizer, train, heldout, selection, config)
    _print_report(rep, say)
    return 0


def _print_report(rep, say) -> None:
    gf = rep.grad_flow
    say(
        f"trainable parameters {rep.trainable_params:,} of {rep.total_params:,} "
        f"({100 * rep.trainable_params / rep.total_params:.2f}%)"
    )
    say(
        f"backward stops at block {gf['lowest_trainable_block']} ({gf['blocks_in_backward']} of {gf['n_blocks']} "
        f"blocks in the graph)"
    )
    say(
        f"{rep.steps} steps, {rep.time_per_step_s:.3f} s/step, {rep.tokens_per_s:.0f} tokens/s, "
        f"peak memory {rep.peak_memory_bytes / 2**20:.0f} MiB "
        f"({rep.memory_kind}, +{rep.peak_memory_delta_bytes / 2**20:.0f} MiB during training)"
    )
    before = f"{rep.heldout_loss_before:.4f} -> " if rep.heldout_loss_before is not None else ""
    say(f"held-out loss {before}{rep.heldout_loss:.4f}")
    for name, r in rep.eval.items():
        say(f"{name}: {r['metric']} {r['value']:.4f} (n={r['n']})")
    say(f"wrote {rep.paths.get('report')}" + (f" and {rep.paths['adapter']}" if "adapter" in rep.paths else ""))
