"""``layerscope ablate``: remove one player at a time and measure the drop (cornerstone layers).

Also holds the task / evaluator options shared with ``layerscope shapley``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from layerscope.cli.common import (
    add_cache_arg,
    add_fields_arg,
    add_model_args,
    add_seed_arg,
    add_sft_only_args,
    add_subject_arg,
    check_at_least,
    check_data_file,
    check_output,
    check_sft_only_options,
    check_threads,
    default_out,
    finite_float,
    load_from_args,
    nonempty,
    parse_fields,
    refuse_mc_options_on_sft,
    seed_everything,
    task_spec,
)
from layerscope.core.errors import ConfigError
from layerscope.engine.settings import DEFAULT_CACHE_MB

DEFAULT_TASK = "arc_easy"  # what ablate and shapley score without --task


def add_task_args(p, default_out: str, seed_uses: str) -> None:

    p.add_argument(
        "--task",
        type=task_spec,
        default=None,  # DEFAULT_TASK, filled in by check_task_args: messages then tell a default from a given task
        help="known task (arc_easy, arc_challenge, boolq, piqa, openbook_qa, hellaswag, mmlu or mmlu:SUBJECT), an "
        f"MC file, or loss:<SFT file> for negative held-out loss (default {DEFAULT_TASK})",
    )
    p.add_argument("--limit", metavar="N", type=int, default=None, help="first N items / examples (default all)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (default 16)")
    add_sft_only_args(p, "loss:<file>")
    add_subject_arg(p)
    add_fields_arg(p)
    p.add_argument(
        "--granularity",
        default="sublayer",
        choices=("sublayer", "block", "module", "expert"),
        help="players: sub-layers (attention / MLP), blocks, linear modules, or the experts of a "
        "mixture-of-experts model (default sublayer)",
    )
    add_cache_arg(p)
    p.set_defaults(cache_mb=None)  # None: not given (the default applies; --uncached refuses a given one)
    p.add_argument("--uncached", action="store_true", help="plain full forward per coalition (the slow reference)")
    p.add_argument(
        "--coalition-batch",
        type=int,
        default=1,
        metavar="N",
        help="evaluate N coalitions in one forward, their rows stacked: for a small model on a large GPU "
        "(values agree with one at a time to float tolerance, checked at start; default 1)",
    )
    p.add_argument("--out", type=nonempty, default=default_out, help=f"output folder (default {default_out})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: reuse the coalition values logged in OUT/coalitions.jsonl "
        "(every finished value is logged as it is computed; the log must come from the same model, "
        "task and settings, --threads included). Without it the log is replaced when the run starts; an earlier "
        "result in OUT stays until this run writes its own",
    )
    p.add_argument(
        "--shard",
        default="auto",
        choices=("auto", "coalitions", "items"),
        help="under torchrun / accelerate launch: each process evaluates whole coalitions on every item "
        "(coalitions), or every coalition on its share of the items (items); auto: coalitions when a "
        "batch of coalitions has at least one per process, else items (default; no effect in one process)",
    )
    add_seed_arg(p, uses=seed_uses)


def build_evaluator(
    loaded,
    spec: str,
    limit: int | None,
    batch_size: int,
    max_length: int,
    append_eos: bool = True,
    skip: int = 0,
    fields: dict | None = None,
    subject: str | None = None,
):
    """(evaluator, data description) for ``--task``: an MC task (its field names renamed by ``fields``, MMLU's
    subjects picked by ``subject``), or ``loss:<SFT file>`` (``limit`` items from item ``skip`` on)."""
    from layerscope.scoring import evaluator_for

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    return evaluator_for(
        spec,
        loaded.model,
        loaded.tokenizer,
        limit=limit,
        batch_size=batch_size,
        max_length=max_length,
        append_eos=append_eos,
        skip=skip,
        fields=fields,
        subject=subject,
    )


def metric_name(data: dict) -> str:
    """What a task's value is, for printed lines: the metric its data description names
    (``scoring.sources.evaluator_info``): acc_norm / acc, or -loss (minus the mean held-out loss, in nats)."""
    return data.get("metric") or "value"


def check_task_args(args) -> None:
    """The shared options checked before the model loads: a bad task or output folder fails in a second."""
    check_threads(args)
    check_at_least(args, 1, limit="--limit", batch_size="--batch-size", coalition_batch="--coalition-batch")
    check_at_least(args, 2, max_length="--max-length")
    if args.cache_mb is None:
        args.cache_mb = DEFAULT_CACHE_MB
    elif args.uncached:
        raise ConfigError("--cache-mb sets the cached engine's memory; --uncached caches nothing: give one")
    if args.cache_mb < 0:
        raise ConfigError(f"--cache-mb must be >= 0, got {args.cache_mb:g}")
    check_output(args.out)
    from layerscope.scoring.sources import LOSS_PREFIX

    # a task the command chose itself is named as such where --fields or --subject cannot apply to it
    default_by = None if args.task else getattr(args, "command", None) or "ablate"
    args.task = args.task or DEFAULT_TASK
    args.fields = task_fields(args.fields, [args.task], default_by=default_by)
    task_subject(args.subject, [args.task], default_by=default_by)
    check_task_spec(args.task, args.limit, args.fields, args.subject)
    check_sft_only_options(args, args.task.startswith(LOSS_PREFIX), args.task)


def task_fields(text: str | None, specs: list[str], default_by: str | None = None) -> dict | None:
    """``--fields`` parsed; refused where no task would read it: SFT data (``loss:<file>``) has no fields
    to rename, and a known task (arc_easy) is read by its own. ``default_by``: the option or command
    that chose ``specs`` when no --task was given (the message names it, not a --task never typed)."""
    from layerscope.core.tasks.registry import names_known_task
    from layerscope.scoring.sources import LOSS_PREFIX

    if text and default_by is not None:
        raise ConfigError(
            f"--fields renames a custom file's fields; {default_by} scores {' and '.join(specs)} by default "
            "(a known task): drop it, or give --task FILE"
        )
    if text and all(spec.startswith(LOSS_PREFIX) or names_known_task(spec) for spec in specs):
        tasks = " ".join(f"--task {spec}" for spec in specs)
        one = len(specs) == 1
        if all(spec.startswith(LOSS_PREFIX) for spec in specs):
            what = "is SFT data" if one else "are SFT data"
        else:
            what = "is a known task, read as it is" if one else "are known tasks or SFT data"
        raise ConfigError(f"--fields names a multiple-choice file's fields; {tasks} {what}: drop it")
    return parse_fields(text)


def task_subject(subject: str | None, specs: list[str], default_by: str | None = None) -> None:
    """``--subject`` refused where it would pick nothing, before anything loads: beside a task the command chose
    itself (``default_by``, as :func:`task_fields` names it) and beside SFT data (``loss:<file>``), as eval
    refuses it beside ``--data``. With any other task that is not MMLU the loader (``load_task``) refuses it,
    naming the task, as in eval; with several tasks (prune-curve) it picks the subjects of each."""
    from layerscope.scoring.sources import LOSS_PREFIX

    if subject is None:
        return
    if default_by is not None:
        raise ConfigError(
            f"--subject picks MMLU subjects; {default_by} scores {' and '.join(specs)} by default: drop it, or give "
            "--task mmlu (or an MMLU file)"
        )
    if any(spec.startswith(LOSS_PREFIX) for spec in specs):
        refuse_mc_options_on_sft("--task loss:", {"--subject": subject})


def fields_for(spec: str, fields: dict | None) -> dict | None:
    """The ``--fields`` of one of several tasks: an MC file's; a known task is read by its own names."""
    from layerscope.core.tasks.registry import names_known_task

    return None if names_known_task(spec) else fields


def check_task_spec(spec: str, limit: int | None, fields: dict | None = None, subject: str | None = None) -> None:
    """A --task read before the model loads: a misspelt name, a missing file or a --subject that is not
    MMLU's fails in a second."""
    from layerscope.core.tasks import load_task
    from layerscope.scoring.sources import LOSS_PREFIX

    if spec.startswith(LOSS_PREFIX):
        if not spec[len(LOSS_PREFIX) :]:
            raise ConfigError("--task loss:<file>: give an SFT file after 'loss:'")
        check_data_file(spec[len(LOSS_PREFIX) :])
    else:
        load_task(spec, limit=limit, fields=fields, subject=subject)  # read again with the model; task files are small


def build_engine(args, check_players=None):
    """Model, evaluator and coalition engine (logging to OUT/coalitions.jsonl) from the shared options.
    ``check_players(n)``: options that depend on the number of players, checked once the layer map is
    built, before any evaluation and before the log is opened (so a refused run leaves OUT as it was)."""
    from layerscope.core.distributed import is_main_process, join_from_env, working_together
    from layerscope.core.layermap import build_layer_map
    from layerscope.engine.coalition_log import coalition_log_path
    from layerscope.engine.coalitions import CoalitionEngine

    check_task_args(args)
    args.device = join_from_env(args.device)  # under torchrun / accelerate launch: work is shared (--shard)
    seed_everything(args.seed)
    loaded = load_from_args(args)
    lm = build_layer_map(loaded.model)
    if check_players is not None:
        check_players(len(lm.players(args.granularity)))
    ev, data = build_evaluator(
        loaded,
        args.task,
        args.limit,
        args.batch_size,
        args.max_length,
        args.append_eos,
        fields=args.fields,
        subject=args.subject,
    )
    path = coalition_log_path(args.out)
    if not args.resume and path.exists() and is_main_process():
        print(f"note: {replaced_log_note(path, args.out)}", file=sys.stderr)
    shared = args.shard != "items" and working_together()  # then each process logs what it computes alone
    log = open_run_log(loaded, lm, args.granularity, data, args, args.out, uncached=args.uncached, per_process=shared)
    engine = CoalitionEngine(
        loaded.model,
        lm,
        ev,
        args.granularity,
        cache_mb=args.cache_mb,
        uncached=args.uncached,
        progress=not args.no_progress,
        log=log,
        shard=args.shard,
        coalition_batch=args.coalition_batch,
    )
    return loaded, engine, data


def replaced_log_note(path: Path, out_dir) -> str:
    """What a run starting afresh says of the coalition log it replaces: an interrupted run's (which
    ``--resume`` would continue), or the log of the finished result in ``out_dir``, which stays until
    this run writes its own."""
    from layerscope.methods.ila.outputs import earlier_result

    if earlier_result(out_dir):
        return (
            f"starting afresh: this run's coalition log replaces {path}, the log of the earlier result in {out_dir}; "
            "that result stays until this run writes its own"
        )
    return f"starting afresh; --resume would continue from the {path} left by an earlier run"


def write_result(imp, out_dir) -> tuple[Path, list[Path]]:
    """``imp`` written to ``out_dir``: importance.json and its charts (named as ``layerscope plot``
    names them), each replacing the earlier run's file atomically. Only then does what is left of an
    earlier result there go (a chart of another kind), with a note on stderr: until this run has its
    result, an earlier one stays whole, whether the run fails, is killed, or is refused."""
    from layerscope.cli.plot import write_figures
    from layerscope.methods.ila.outputs import drop_earlier_result, earlier_result

    out = Path(out_dir)
    earlier = earlier_result(out)  # read before this run's files land
    path = imp.save(out / "importance.json")
    charts = write_figures(imp, out)
    line = drop_earlier_result(out, earlier, [path, *charts])
    if line:
        print(f"note: {line}", file=sys.stderr)
    return path, charts


def open_run_log(loaded, lm, granularity: str, data: dict, args, out_dir, *, uncached: bool, per_process=False):
    """The coalition log under ``out_dir``, headed by what this run's values depend on (model,
    players, data, batching); with ``args.resume`` it reads back the values logged before."""
    from layerscope.engine.coalition_log import describe_run, open_coalition_log

    run = describe_run(
        loaded.model,
        loaded.name,
        lm.players(granularity),
        granularity=granularity,
        data=data,
        batch_size=args.batch_size,
        max_length=args.max_length,
        uncached=uncached,
        coalition_batch=getattr(args, "coalition_batch", 1),
        tokenizer=loaded.tokenizer,
    )
    log = open_coalition_log(out_dir, run, resume=args.resume, per_process=per_process)
    if log.n_resumed:
        print(f"note: resuming: {resumed_phrase(log)}", file=sys.stderr)
    if log.renamed_from is not None:
        print(
            f"note: the log was written with the model named {log.renamed_from!r}; "
            "its weights and tokenizer are this model's",
            file=sys.stderr,
        )
    if args.resume and not log.n_resumed:  # as ila and finetune say it: a misspelt --out must not look resumed
        print(f"note: no coalition values in {log.path}; --resume starts from scratch", file=sys.stderr)
    return log


def resumed_phrase(log) -> str:
    """``183 coalition values read from OUT/coalitions.jsonl``; where processes that shared coalitions left
    one log each, every log read (the count is of distinct values, whichever log held them)."""
    files = [str(p) for p in log.read_from] or [str(log.path)]
    where = files[0] if len(files) == 1 else f"{len(files)} logs: {', '.join(files)}"
    return f"{log.n_resumed} coalition values read from {where}"


def add_arguments(p) -> None:
    add_model_args(p)
    add_task_args(p, default_out("ablate"), seed_uses="recorded only, ablation draws nothing at random")
    p.add_argument(
        "--abs-margin",
        type=finite_float,
        default=0.02,
        help="a player is a cornerstone if the value with it removed is within this of chance, or "
        "within --rel-margin of the gap (default 0.02)",
    )
    p.add_argument(
        "--rel-margin",
        type=finite_float,
        default=0.10,
        help="a player is a cornerstone if the value with it removed is within this fraction of the full "
        "model's gap above chance, or within --abs-margin (default 0.10)",
    )


def run(args) -> int:
    from layerscope.methods.ablation import ablate, at_chance_note

    for flag, value in (("--abs-margin", args.abs_margin), ("--rel-margin", args.rel_margin)):
        if not value >= 0:  # used only once every player is scored
            raise ConfigError(f"{flag} must be >= 0, got {value:g}")
    loaded, engine, data = build_engine(args)
    from layerscope.core.distributed import is_main_process
    from layerscope.engine.run_estimate import print_estimate

    try:
        everyone = frozenset(range(engine.n))  # ablate evaluates the full model and each player removed
        print_estimate(engine, engine.to_compute([everyone] + [everyone - {i} for i in range(engine.n)]), data)
        imp = ablate(
            engine,
            model_name=loaded.name,
            data=data,
            abs_margin=args.abs_margin,
            rel_margin=args.rel_margin,
            progress=not args.no_progress,
            seed=args.seed,
        )
    finally:
        engine.log.close()
    if not is_main_process():
        return 0  # every process holds the same result; one writes it
    path, written = write_result(imp, args.out)
    charts = ", ".join(str(c) for c in written)
    full, chance = imp.baseline["full"], imp.baseline["chance"]
    metric = metric_name(data)
    print(
        f"{data.get('task')}: full model {metric} {full:.4f}, chance {chance:.4f}; "
        f"{len(imp.players)} {imp.granularity} players, {imp.timings['seconds']:.1f}s ({engine.mode} engine)"
    )
    note = at_chance_note(full, chance, args.abs_margin, args.rel_margin)
    if note:
        print(note, file=sys.stderr)
    cs = imp.extras["cornerstones"]
    print(f"cornerstones ({len(cs)}): {', '.join(cs) if cs else 'none'}")
    top = imp.ranking()[:5]
    s = imp.score_of()
    print("largest drops: " + ", ".join(f"{p} {s[p]:+.4f}" for p in top))
    print(f"wrote {path} and {charts}")
    return 0
