"""``layerscope prune``: remove the least important layers and save a plain Hugging Face model."""

from __future__ import annotations

import sys
import time

from layerscope.cli.common import (
    add_append_eos_arg,
    add_fields_arg,
    add_model_args,
    add_seed_arg,
    add_seq_len_alias,
    add_subject_arg,
    check_at_least,
    check_exact_fits,
    check_output,
    check_threads,
    default_out,
    finite_float,
    learning_rate_text,
    load_from_args,
    may_read_sft,
    nonempty,
    seed_everything,
    settle_append_eos,
    task_spec,
)
from layerscope.core.errors import ConfigError, percent_hint

# pruning.choose.METHODS, spelled here so --help needs no numpy / torch (tests/test_pruning.py keeps them equal)
METHOD_CHOICES = ("block-influence", "angular", "ablation", "shapley", "ila", "greedy", "last", "random")
# the Shapley estimators that run without a budget of their own (permutation / owen need one: `layerscope shapley`),
# and auto, resolved as prune-curve resolves it, so prune removes the blocks the curve of the same task chose
ESTIMATORS = ("auto", "exact", "proximity")
EXACT_MAX_PLAYERS = 14  # methods.shapley.EXACT_MAX_PLAYERS, spelled here for --help (tests/test_options.py)
DEFAULT_TASK = "arc_easy"  # what the engine methods (ablation, shapley, greedy) score without --task
# the SFT data prune may read, whose text records --append-eos ends
SFT_READ = "SFT data (--task loss:<file>, --heal, or an SFT --data of --method block-influence / angular)"
DEFAULTS = {
    "estimator": "auto",
    "data": "arc_easy",
    "limit": 200,
    "batch_size": 16,
    "max_steps": 100,
    "heal_method": "lora",
}


def add_arguments(p) -> None:
    from layerscope.core.data import DEFAULT_MAX_LENGTH
    from layerscope.training.config import DEFAULT_LR

    add_model_args(p, quantized=False)  # pruning removes plain weights: --load-in is refused, saying why
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--importance", type=nonempty, help="importance result (file or run folder) whose ranking picks the layers"
    )
    which.add_argument(
        "--method",
        choices=METHOD_CHOICES,  # with ila, refused in one line saying to run `layerscope ila` first
        metavar="{" + ",".join(m for m in METHOD_CHOICES if m != "ila") + "}",
        help="compute the order here: block-influence / angular (Gromov et al.'s window) on --data; ablation, "
        "shapley (--estimator) or greedy on --task; last; random (under --seed). For ILA's ranking run "
        "`layerscope ila` first and pass --importance",
    )
    how_many = p.add_mutually_exclusive_group(required=True)
    how_many.add_argument("--remove", type=int, metavar="K", help="number of blocks (or sub-layers) to remove")
    how_many.add_argument(
        "--fraction",
        type=finite_float,
        metavar="F",
        help="remove floor(F x n) of the n players: blocks, or sub-layers with --granularity sublayer",
    )
    p.add_argument(
        "--granularity",
        choices=("block", "sublayer"),
        default="block",
        help="block: the blocks are taken out (fewer layers); sublayer: attention / MLP sub-layers are zeroed "
        "(same layer count). Default block",
    )
    p.add_argument(
        "--out",
        type=nonempty,
        default=default_out("prune"),
        help=f"new model folder, which must not exist (default {default_out('prune')})",
    )
    p.add_argument(
        "--task",
        type=task_spec,
        default=None,
        help="task name, MC file or loss:<SFT file>: the value function of --method ablation / shapley / greedy "
        "(default arc_easy), and the value printed for the full and the pruned model (and the healed one with "
        "--heal). That comparison is made only with --task or one of those methods; --heal, with or without it, "
        "compares the held-out loss before and after healing",
    )
    add_subject_arg(p)
    add_fields_arg(p)
    p.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        default=None,
        help=f"Shapley estimator of --method shapley: exact (2^n coalitions: at most {EXACT_MAX_PLAYERS} players, "
        f"i.e. {EXACT_MAX_PLAYERS} blocks or {EXACT_MAX_PLAYERS // 2} blocks' sub-layers), proximity, auto (exact up "
        "to 10 players, else proximity; as prune-curve) (default auto). permutation / owen need a budget: run "
        "`layerscope shapley --budget N --out R` and pass --importance R",
    )
    p.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=None,
        help=f"the first N items of --task / sequences of --data (default {DEFAULTS['limit']}; refused where "
        "neither is used: with --importance, --method last or random and no --task)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"rows per forward pass where --task or --data is scored (default {DEFAULTS['batch_size']})",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help=f"tokens per sequence of --data, loss:<file> example or --heal example (default {DEFAULT_MAX_LENGTH})",
    )
    add_seq_len_alias(p)
    add_append_eos_arg(p, SFT_READ)
    p.add_argument(
        "--data",
        type=nonempty,
        default=None,
        help=f"sequences for block-influence / angular (as `similarity`; default {DEFAULTS['data']})",
    )
    p.add_argument(
        "--heal", type=nonempty, default=None, metavar="DATA", help="SFT file: fine-tune the pruned model on it"
    )
    p.add_argument(
        "--max-steps", type=int, default=None, help=f"healing steps (with --heal; default {DEFAULTS['max_steps']})"
    )
    p.add_argument(
        "--heal-method",
        choices=("lora", "full"),
        default=None,
        help=f"with --heal: lora (merged) or full (default {DEFAULTS['heal_method']})",
    )
    p.add_argument(
        "--lr",
        type=finite_float,
        default=None,
        help=f"with --heal: healing learning rate (default {learning_rate_text(DEFAULT_LR['lora'])} with "
        f"--heal-method lora, {learning_rate_text(DEFAULT_LR['full'])} with full, as `finetune`)",
    )
    p.add_argument(
        "--ignore-fingerprint",
        action="store_true",
        help="accept a ranking whose weights fingerprint differs "
        "(float16, or an older layerscope's ranking in another dtype)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_seed_arg(p)


def run(args) -> int:
    _check_numbers(args)
    _check_unused(args)
    _check_task(args)
    importance = _load_ranking(args.importance, args.granularity)
    if args.method:
        from layerscope.pruning.choose import check_method

        check_method(args.method, args.granularity)
    _check_out(args.out)  # after the inputs: a missing --importance is the error to fix first, not the output
    seed_everything(args.seed)
    loaded = load_from_args(args)
    from layerscope.core.layermap import build_layer_map

    layer_map = build_layer_map(loaded.model)
    _check_exact(args, layer_map)
    heal_data = _heal_data(args, loaded)
    k = _count(args, layer_map)
    engine, task_data = _engine(args, loaded, layer_map)
    choice, sequences = _choose(args, importance, loaded, layer_map, engine, k)
    print(f"removing {len(choice.names)} {args.granularity}(s) ({choice.method}): {', '.join(choice.names)}")
    if choice.tie_note:
        print(f"note: {choice.tie_note}", file=sys.stderr)
    pruned, note = _prune(args, loaded, layer_map, choice, sequences)
    note["value"] = _values(args, engine, task_data, choice)
    if note["value"] is None and heal_data is None:
        print(
            "note: no value compared before and after pruning; --task T (e.g. arc_easy) measures both models",
            file=sys.stderr,
        )
    if heal_data is not None:
        gone = choice.names if args.granularity == "sublayer" else None  # zeroed in place: not to be trained back
        pruned, note["healing"] = _heal(args, pruned, loaded.tokenizer, heal_data, gone)
        if note["value"] is not None:  # the task value of the healed model, beside the pruned one's
            note["value"]["healed"] = float(engine.evaluator.evaluate(pruned).value)
            value = note["value"]
            print(f"{_value_name(args, value)} ({value['metric']}): healed {value['healed']:.4f}")
    from layerscope.pruning.save import save_pruned

    out = save_pruned(pruned, loaded.tokenizer, args.out, note)
    print(f"wrote {out} ({note['parameters']['after']:,} parameters, was {note['parameters']['before']:,})")
    return 0


# ----------------------------------------------------------------------------- checks before loading


def _check_out(out: str) -> None:
    """A new folder that can be written: refused before any work. The default --out exists after any earlier
    run, so its refusal says what to do rather than only that it exists (no --overwrite: a pruned model is
    never replaced in place)."""
    from pathlib import Path

    from layerscope.pruning.save import check_destination

    if out == default_out("prune") and Path(out).exists():
        raise ConfigError(
            f"{out} (the default --out): already exists, from an earlier prune; give --out another folder, "
            f"or remove it (rm -r {out})"
        )
    check_destination(out)
    check_output(out)  # e.g. under a file, or in a folder that cannot be written


def _check_numbers(args) -> None:
    if getattr(args, "load_in", None):
        raise ConfigError(
            f"--load-in {args.load_in}: prune saves a smaller copy of the model's plain weights; load it without "
            "--load-in (quantise the pruned model afterwards)"
        )
    if args.remove is not None and args.remove < 1:
        raise ConfigError(f"--remove {args.remove}: remove at least one {args.granularity}")
    if args.fraction is not None and not 0 < args.fraction < 1:
        raise ConfigError(
            f"--fraction {args.fraction:g} must be in (0, 1){percent_hint(args.fraction, below_one=True)}"
        )
    if args.max_steps is not None and args.max_steps < 1:
        raise ConfigError(f"--max-steps must be >= 1, got {args.max_steps}")
    check_at_least(args, 1, limit="--limit", batch_size="--batch-size")
    check_at_least(args, 2, max_length="--max-length")
    check_threads(args)


def _chosen_by(args) -> str:
    """How the blocks are chosen, as the user said it: for messages."""
    return f"--method {args.method}" if args.method else "--importance"


def _scored_task(args) -> str | None:
    """The task the coalition engine scores: --task, or arc_easy for a method that needs one; else None."""
    from layerscope.pruning.choose import NEEDS_ENGINE

    return args.task or (DEFAULT_TASK if args.method in NEEDS_ENGINE else None)


def _check_unused(args) -> None:
    """Refuse options the chosen method (or the absence of --heal) would ignore, then fill in their defaults."""
    from layerscope.pruning.choose import NEEDS_ENGINE, NEEDS_SEQUENCES

    how = _chosen_by(args)
    if args.estimator is not None and args.method != "shapley":
        raise ConfigError(f"--estimator applies to --method shapley, not {how}")
    if args.data is not None and args.method not in NEEDS_SEQUENCES:
        raise ConfigError(
            f"--data applies to --method {' / '.join(NEEDS_SEQUENCES)} (the text they measure), not {how}; "
            "the value reported before and after pruning is --task's"
        )
    scores = args.task is not None or args.method in (*NEEDS_ENGINE, *NEEDS_SEQUENCES)
    for flag, given in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if given is not None and not scores:
            raise ConfigError(
                f"{flag} applies to the items of --task (or the sequences of --method {' / '.join(NEEDS_SEQUENCES)}); "
                f"{how} without --task scores nothing: drop it, or add --task T"
            )
    _check_max_length(args, how)
    settle_append_eos(args, lambda: _reads_sft(args), SFT_READ)
    healing = [
        flag
        for flag, given in (("--max-steps", args.max_steps), ("--heal-method", args.heal_method), ("--lr", args.lr))
        if given is not None
    ]
    if healing and not args.heal:
        raise ConfigError(f"{' / '.join(healing)}: healing options; give --heal DATA (nothing is trained without it)")
    for attr, value in DEFAULTS.items():
        if getattr(args, attr) is None:
            setattr(args, attr, value)


def _check_task(args) -> None:
    """The task the engine scores, read before the model loads: a misspelt name, a missing file, or
    --fields or --subject that do not fit it fail in a second."""
    from layerscope.cli.ablate import check_task_spec, task_fields, task_subject

    how = _chosen_by(args)
    task = _scored_task(args)
    if task is None:
        for flag, given in (("--fields", args.fields), ("--subject", args.subject)):
            if given is not None:
                raise ConfigError(f"{flag} applies to the items of --task; {how} without --task scores none: drop it")
        return
    default_by = None if args.task else how
    args.fields = task_fields(args.fields, [task], default_by=default_by)
    task_subject(args.subject, [task], default_by=default_by)
    check_task_spec(task, args.limit, args.fields, args.subject)


def _check_max_length(args, how: str) -> None:
    """--max-length cuts text: of --data, of a loss:<file> task or of --heal; a multiple-choice task
    (arc_easy, the default of the engine methods) has none to cut."""
    from layerscope.core.data import DEFAULT_MAX_LENGTH
    from layerscope.pruning.choose import NEEDS_SEQUENCES
    from layerscope.scoring.sources import LOSS_PREFIX

    task = _scored_task(args)
    cut = args.method in NEEDS_SEQUENCES or args.heal or (task or "").startswith(LOSS_PREFIX)
    if args.max_length is not None and not cut:
        why = f"--task {task} is multiple choice" if task else f"{how} without --task reads no text"
        raise ConfigError(f"--max-length applies to --data, --task loss:<file> or --heal; {why}: drop it")
    if args.max_length is None:
        args.max_length = DEFAULT_MAX_LENGTH


def _reads_sft(args) -> bool:
    """Whether this run may read SFT records: :func:`_reads_sft_besides_data`, or the --data of block-influence /
    angular where it names SFT data or a file (read as SFT records where it holds them: ``may_read_sft``)."""
    from layerscope.pruning.choose import NEEDS_SEQUENCES

    sequences = (args.data or DEFAULTS["data"]) if args.method in NEEDS_SEQUENCES else None
    return _reads_sft_besides_data(args) or may_read_sft([], sequences)


def _reads_sft_besides_data(args) -> bool:
    """Whether this run reads SFT records whatever --data holds: a loss:<file> task, or --heal."""
    task = _scored_task(args)
    return bool(args.heal) or may_read_sft([task] if task else [], None)


def _check_exact(args, layer_map) -> None:
    """--estimator auto resolved on the model's players, and exact Shapley on too many of them refused, as soon
    as the model's layers are known, before any work."""
    from layerscope.cli.prune_curve import shapley_estimator

    if args.method != "shapley":
        return
    n = len(layer_map.players(args.granularity))
    args.estimator = shapley_estimator(args.estimator, n)
    if args.estimator == "exact":
        check_exact_fits(n, f"{args.granularity}s", "--estimator exact", "--estimator proximity or auto")


def _load_ranking(path, granularity: str):
    """The ranking, checked to aggregate to ``granularity`` (no model needed for that)."""
    if path is None:
        return None
    from layerscope.core.importance import LayerImportance
    from layerscope.pruning.rankings import aggregated

    importance = LayerImportance.load(path)
    aggregated(importance, granularity, str(path))
    return importance


def _heal_data(args, loaded):
    if not args.heal:
        return None
    from layerscope.core.models import context_length
    from layerscope.pruning.heal import load_heal_data

    limit = context_length(loaded.model)
    return load_heal_data(
        args.heal,
        loaded.tokenizer,
        args.max_length,
        seed=args.seed,
        context_length=limit,
        append_eos=args.append_eos,
    )


def _count(args, layer_map) -> int:
    from layerscope.pruning.rankings import checked_count, count_from_fraction

    n = len(layer_map.players(args.granularity))
    what = f"{args.granularity}s"
    return (
        checked_count(args.remove, n, what) if args.remove is not None else count_from_fraction(args.fraction, n, what)
    )


def _engine(args, loaded, layer_map):
    """(a coalition engine on --task when a method needs one or a task was named, else None; the description of
    the items it scores, as ablate records it, or None)."""
    task = _scored_task(args)
    if task is None:
        return None, None
    from layerscope.cli.ablate import build_evaluator
    from layerscope.engine.coalitions import CoalitionEngine

    ev, data = build_evaluator(
        loaded,
        task,
        args.limit,
        args.batch_size,
        args.max_length,
        args.append_eos,
        fields=args.fields,
        subject=args.subject,
    )
    return CoalitionEngine(loaded.model, layer_map, ev, args.granularity, progress=not args.no_progress), data


def _choose(args, importance, loaded, layer_map, engine, k):
    """(the players to remove, the description of the sequences of --data they were chosen on, or None)."""
    from layerscope.pruning import choose

    if importance is not None:
        from layerscope.core.models import weights_fingerprint
        from layerscope.training.selection import check_ranking_matches

        recorded = importance.model.get("fingerprint")
        fingerprint = None if args.ignore_fingerprint else weights_fingerprint(loaded.model, like=recorded)
        check_ranking_matches(importance, layer_map, fingerprint, where=str(args.importance))
        return choose.from_ranking(importance, layer_map, args.granularity, k, str(args.importance)), None
    sequences = read = None
    if args.method in choose.NEEDS_SEQUENCES:
        from layerscope.cli.common import read_data_sequences

        sequences, read = read_data_sequences(args, loaded, _reads_sft_besides_data(args), SFT_READ)
    choice, _ = choose.by_method(
        args.method,
        layer_map,
        args.granularity,
        k,
        engine=engine,
        model=loaded.model,
        sequences=sequences,
        tokenizer=loaded.tokenizer,
        seed=args.seed,
        model_name=loaded.name,
        progress=not args.no_progress,
        estimator=args.estimator,
        batch_size=args.batch_size,
    )
    return choice, read


# ----------------------------------------------------------------------------- pruning, value, healing


def _prune(args, loaded, layer_map, choice, sequences: dict | None):
    """(the pruned model, the note saved beside it); ``sequences``: what the ranking was computed on (--data of
    block-influence / angular, as ``load_sequences`` describes it), None where no sequences were read."""
    from layerscope.core.importance import model_info
    from layerscope.pruning.blocks import layer_count_key
    from layerscope.training.freezing import count_params

    before = count_params(loaded.model)[1]
    read_sft = _reads_sft_besides_data(args) or (sequences or {}).get("kind") == "sft"
    if args.granularity == "block":
        from layerscope.pruning.blocks import prune

        pruned = prune(loaded.model, choice.players, layer_map)
        saved = {"what": "the blocks are removed; the kept blocks are renumbered 0..n-k-1"}
    else:
        from layerscope.pruning.sublayers import prune_sublayers

        pruned, zeroed = prune_sublayers(loaded.model, choice.players, layer_map)
        saved = {"what": "the sub-layers' output projections (weight and bias) are zero", "zeroed": zeroed}
    note = {
        "kind": "pruned-model",
        "source_model": model_info(loaded.model, layer_map, loaded.name),
        "granularity": args.granularity,
        "removed": choice.names,
        "n_removed": len(choice.names),
        "n_blocks_after": getattr(pruned.config, layer_count_key(pruned.config)),
        "ranking": {"method": choice.method, **choice.source},
        **({"tie_note": choice.tie_note} if choice.tie_note else {}),
        **({"sequences": sequences} if sequences is not None else {}),  # as prune-curve's curves.json has them
        # --append-eos shaped the SFT data read (the value's loss:<file>, --heal, an SFT --data): recorded where
        # some was read, not where --data turned out to be a task's items
        **({"append_eos": args.append_eos} if read_sft else {}),
        "saved": saved,
        "parameters": {"before": before, "after": count_params(pruned)[1]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "check": "logits equal the source model's with the same players removed in place (engine.removed)",
    }
    return pruned, note


def _values(args, engine, data: dict | None, choice):
    """The value function before and after pruning, when there is one (a --task), beside what it scored
    (``data``: the task read, its items and fingerprint, as ablate's result records them: ``mmlu:anatomy`` and
    its items with --subject anatomy)."""
    if engine is None:
        return None
    from layerscope.cli.ablate import metric_name

    kept = [p for p in range(engine.n) if p not in choice.players]
    full, after = engine.full().value, engine.value(kept)
    value = {**data, "metric": metric_name(data), "full": float(full), "pruned": float(after)}
    print(f"{_value_name(args, value)} ({value['metric']}): full model {full:.4f} -> pruned {after:.4f}")
    return value


def _value_name(args, value: dict) -> str:
    """The task a printed value is of: the task read (``mmlu:anatomy``), or for a loss the --task that names
    its file (the result's task is ``loss``)."""
    return _scored_task(args) if value["task"] == "loss" else value["task"]


def _heal(args, pruned, tokenizer, heal_data, removed_sublayers: list[str] | None = None):
    from layerscope.pruning.heal import heal

    train, heldout = heal_data
    print(f"healing: {args.heal_method}, {args.max_steps} steps on {len(train.examples)} examples")
    res = heal(
        pruned,
        tokenizer,
        train,
        heldout,
        max_steps=args.max_steps,
        method=args.heal_method,
        lr=args.lr,
        seed=args.seed,
        progress=not args.no_progress,
        removed_sublayers=removed_sublayers,
    )
    print(f"held-out loss of the pruned model {res.loss_before:.4f} -> healed {res.loss_after:.4f}")
    return res.model, res.to_dict()
