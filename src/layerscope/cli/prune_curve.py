"""``layerscope prune-curve``: which ranking prunes best - the value as 1..K_max blocks are removed, per ranking."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from layerscope.cli.common import (
    add_append_eos_arg,
    add_cache_arg,
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
    load_from_args,
    may_read_sft,
    nonempty,
    seed_everything,
    settle_append_eos,
    task_spec,
)
from layerscope.cli.prune import EXACT_MAX_PLAYERS  # spelled there for --help
from layerscope.core.errors import ConfigError

SHAPLEY_CHOICES = ("auto", "exact", "proximity", "none")
# the orders prune-curve computes itself, in the order their curves are drawn (--orders picks some)
ORDERS = ("block-influence", "angular", "ablation", "shapley", "greedy", "last", "random")
# the orders an --importance ranking can stand for, when it is the one prune-curve would compute (same method,
# blocks, items, full-model value): not computed again. Shapley's proximity estimate depends on its samples
REUSABLE = {"ablation": "ablation", "shapley": "shapley-exact"}
# a ranking given under a label of the curves' own would be replaced by that curve
OWN_LABELS = {"block-influence", "angular", "ablation", "greedy", "last"} | {f"shapley-{e}" for e in SHAPLEY_CHOICES}
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a label names a folder
RESERVED = {"selection", "curves.json", "table.md", "curve.png", "coalitions.jsonl"}  # beside it in OUT/<task>/
# the SFT data prune-curve may read, whose text records --append-eos ends
SFT_READ = "SFT data (a --task loss:<file>, or an SFT --data of block-influence / angular)"


def own_label(label: str) -> bool:
    """One of the curves prune-curve draws itself (its random seeds included)."""
    return label in OWN_LABELS or re.fullmatch(r"random-seed\d+", label) is not None


def add_arguments(p) -> None:
    from layerscope.core.data import DEFAULT_MAX_LENGTH

    add_model_args(p, quantized=False)  # pruning removes plain weights: --load-in is refused, saying why
    p.add_argument(
        "--task",
        action="append",
        type=task_spec,
        default=None,
        help="value function, repeatable: task name, MC file or loss:<SFT file> (default arc_easy)",
    )
    add_subject_arg(p)
    add_fields_arg(p)
    p.add_argument(
        "--importance",
        action="append",
        default=[],
        metavar="[LABEL=]PATH",
        help="a ranking to draw a curve for (any granularity: aggregated to blocks), repeatable; its curve is "
        "labelled LABEL, or the run folder's name (runs/ila and runs/ila/importance.json: ila); e.g. runs/ila, "
        "ila=runs/ila",
    )
    p.add_argument("--k-max", type=int, default=None, help="largest number of blocks removed (default n_blocks - 1)")
    p.add_argument(
        "--orders",
        default=None,
        metavar="LIST",
        help=f"the orders computed here, comma-separated, of {','.join(ORDERS)}; none: only the --importance "
        "rankings; e.g. last,random: those and the cheap baselines (default all; --no-greedy and --estimator none "
        "take theirs out)",
    )
    p.add_argument(
        "--greedy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the greedy order: K_max steps of one evaluation per remaining block, the costliest curve (default on)",
    )
    p.add_argument(  # --estimator, as `shapley` and `prune` name it; dest shapley: experiments/pruning_curve.py
        "--estimator",
        dest="shapley",
        choices=SHAPLEY_CHOICES,
        default="auto",
        help=f"Shapley ranking on each task: exact (2^n coalitions: at most {EXACT_MAX_PLAYERS} blocks), proximity, "
        "auto (exact up to 10 blocks, else proximity) or none (default auto)",
    )
    # the option's earlier name, still accepted
    p.add_argument("--shapley", dest="shapley", choices=SHAPLEY_CHOICES, default="auto", help=argparse.SUPPRESS)
    p.add_argument(
        "--data",
        type=nonempty,
        default="arc_easy",
        help="sequences for block influence / angular distance (as `similarity`; default arc_easy)",
    )
    p.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=200,
        help="the first N items of each task / sequences of --data (default 200)",
    )
    p.add_argument(
        "--selection-items",
        type=int,
        default=0,
        metavar="N",
        help="ablation, Shapley and greedy choose their blocks on N other items of each task, those after the "
        "--limit scored ones, so their curves are out of sample like the similarity rules' "
        "(default 0: on the scored items, in-sample)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (default 16)")
    p.add_argument(
        "--max-length",
        type=int,
        default=DEFAULT_MAX_LENGTH,
        help=f"tokens per sequence / loss example (default {DEFAULT_MAX_LENGTH})",
    )
    add_seq_len_alias(p)
    add_append_eos_arg(p, SFT_READ)
    add_cache_arg(p)
    p.add_argument(
        "--ignore-fingerprint",
        action="store_true",
        help="accept a ranking whose weights fingerprint differs "
        "(float16, or an older layerscope's ranking in another dtype)",
    )
    p.add_argument(
        "--out",
        type=nonempty,
        default=default_out("prune-curve"),
        help=f"output folder: one subfolder per task (default {default_out('prune-curve')})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: every coalition value is logged to OUT/<task>/coalitions.jsonl as it is "
        "computed, and read back (the log must come from the same model, task and settings)",
    )
    add_seed_arg(p)


def run(args) -> int:
    given = check_arguments(args)
    from layerscope.core.distributed import is_main_process, join_from_env

    args.device = join_from_env(args.device)  # under torchrun / accelerate launch: work is shared as in ablate
    seed_everything(args.seed)
    loaded = load_from_args(args)
    from layerscope.core.layermap import build_layer_map

    lm = build_layer_map(loaded.model)
    check_rankings(args, given, loaded, lm)
    from layerscope.cli.ablate import metric_name
    from layerscope.pruning.curve import at_chance_note

    wrote, replaced = [], []
    for spec, curves in task_curves(loaded, lm, args, given):
        if not is_main_process():
            continue  # every process holds the same curves; one writes them
        folder = Path(args.out) / task_folder(spec)
        written, note = _write_curves(curves, folder)
        wrote.append(f"{folder} ({_file_list(written)})")
        replaced += [note] if note else []
        full, chance, metric = curves["baseline"]["full"], curves["baseline"]["chance"], metric_name(curves["data"])
        print(f"== {spec}: full model {metric} {full:.4f}, chance {chance:.4f}; {folder}")
        note = at_chance_note(curves)  # as ablate and shapley say it, once per task
        if note:
            sys.stdout.flush()  # after the line it is about, where both go to one terminal
            print(note, file=sys.stderr)
        print((folder / "table.md").read_text())
        print(point_note(metric))
    if replaced:  # said last, beside the line naming what replaced them, not before the tables
        sys.stdout.flush()
        print("\n".join(replaced), file=sys.stderr)
    if wrote:
        print(f"wrote {'; '.join(wrote)}")
    return 0


def _write_curves(curves: dict, folder: Path) -> tuple[list[Path], str | None]:
    """One task's curves written to ``folder``, each file replacing the earlier run's atomically; only
    then does what is left of earlier curves there go (a curve this run does not draw): until this run
    has its curves, earlier ones stay whole, whether it fails, is stopped or is refused. Returns the files
    written, and the note saying which earlier ones were replaced (None where there were none)."""
    from layerscope.pruning import write_curves
    from layerscope.pruning.curve import drop_earlier_curves, earlier_curves

    earlier = earlier_curves(folder)  # read before this run's files land
    written = write_curves(curves, folder)
    if not earlier:
        return written, None
    drop_earlier_curves(earlier, written)
    return written, f"note: replaced the earlier curves in {folder} ({_file_list(earlier)}) with this run's"


def _file_list(paths: list[Path]) -> str:
    """``curves.json, table.md, curve.png, 3 pruning.json``: a task folder's files, the per-curve ones counted."""
    pruning = sum(p.name == "pruning.json" for p in paths)
    return ", ".join([p.name for p in paths if p.name != "pruning.json"] + [f"{pruning} pruning.json"] * bool(pruning))


def point_note(metric: str) -> str:
    """What the table's "within 1 / 5 points" measures, in the task's own unit."""
    if metric == "-loss":
        unit = "0.01 nats of loss (the value, -loss, is minus the mean loss)"
    else:
        unit = f"0.01 {metric} (one accuracy point)"
    return (
        "within d points: the largest K whose value, and every smaller K's, stays >= the full model's - d points; "
        f"1 point = {unit}"
    )


def task_curves(loaded, lm, args, given: dict, skip: frozenset[str] = frozenset()):
    """Yields (task spec, pruning curves) per ``args.task``: block influence and the angular window
    on ``args.data``, ablation and Shapley on the task, the ``given`` rankings, greedy, last-K and
    random, all on one block-level coalition engine per task; of the orders computed here only those of
    ``args.orders`` (:func:`chosen_orders`; default all). A given ranking that is the ablation (or exact
    Shapley) ranking this run would compute stands for it, with a note, and it is not computed again.
    Every coalition value is logged to OUT/<task>/coalitions.jsonl as it is computed; ``args.resume``
    reads an earlier run's back. The curves labelled in ``skip`` are not measured
    (experiments/pruning_curve.py --reuse has them)."""
    from layerscope.core.distributed import is_main_process
    from layerscope.methods.ablation import ablate
    from layerscope.methods.shapley import shapley_importance
    from layerscope.methods.similarity import similarity
    from layerscope.pruning import pruning_curve
    from layerscope.pruning.choose import NEEDS_SEQUENCES

    progress = not args.no_progress and is_main_process()  # the bars of Shapley and similarity: one process's
    orders = run_orders(args)
    estimator = shapley_estimator(args.shapley, lm.n_blocks) if "shapley" in orders else None
    # every task's items (and the items chosen on) load first: data that does not fit fails before any work
    evaluators = {spec: _evaluators(loaded, spec, args) for spec in args.task}
    similar = [label for label in NEEDS_SEQUENCES if label in orders and label not in skip]
    sequences = None  # what the similarity orders measured, recorded in every task's curves.json
    if similar:
        from layerscope.cli.common import read_data_sequences

        seqs, sequences = read_data_sequences(args, loaded, may_read_sft(args.task, None), SFT_READ)
        sim = similarity(loaded.model, lm, seqs, tokenizer=loaded.tokenizer, model_name=loaded.name)
        similarity_rankings = {"block-influence": sim["block_influence"], "angular": sim["angular_distance"]}
        similarity_rankings = {label: similarity_rankings[label] for label in similar}
    else:
        similarity_rankings = {}
    for spec, (ev, data, selection) in evaluators.items():
        folder = Path(args.out) / task_folder(spec)
        engine = _logged_engine(loaded, lm, ev, data, folder, args)
        # the engine whose value ablation, Shapley and greedy choose their blocks by: the scored
        # items themselves (in-sample), or --selection-items others after them
        chooser, chosen_on = engine, data
        if selection is not None:
            chosen_on = selection[1]
            chooser = _logged_engine(loaded, lm, *selection, folder / "selection", args)
        rankings = dict(similarity_rankings)
        computed = {"ablation"} if "ablation" in orders else set()
        computed |= {f"shapley-{estimator}"} if estimator else set()
        given_as = _given_as(computed - skip, given, chooser, chosen_on, args)
        for order, label in given_as.items():
            if is_main_process():
                print(
                    f"note: --importance {label} is the {order} ranking of these blocks on this task's items (same "
                    f"model, items and full-model value): its curve stands for {order}, not computed again",
                    file=sys.stderr,
                )
        if "ablation" in computed and "ablation" not in skip and "ablation" not in given_as:
            rankings["ablation"] = ablate(chooser, model_name=loaded.name, progress=progress)
        rankings.update(given)
        if estimator is not None and f"shapley-{estimator}" not in skip and f"shapley-{estimator}" not in given_as:
            rankings[f"shapley-{estimator}"] = shapley_importance(
                chooser, estimator, model_name=loaded.name, data=chosen_on, progress=progress
            )
        rankings = {label: imp for label, imp in rankings.items() if label not in skip}
        baselines = [b for b in BASELINES if b in orders and ("random-seed0" if b == "random" else b) not in skip]
        t0 = time.perf_counter()
        curves = pruning_curve(
            engine,
            rankings,
            args.k_max,
            greedy="greedy" in orders and "greedy" not in skip,
            greedy_engine=chooser,
            baselines=baselines,
            model_name=loaded.name,
            data=data,
            progress=progress,
            ignore_fingerprint=True,  # checked once above (check_rankings), --ignore-fingerprint honoured
        )
        curves["seconds"] = time.perf_counter() - t0
        curves["chosen_on"] = "the scored items" if chooser is engine else chosen_on
        curves["orders"] = list(orders)  # the orders computed here (or given: curves["given_as"])
        curves["given_as"] = given_as
        if sequences is not None:
            curves["sequences"] = sequences
        yield spec, curves


def _given_as(orders: set[str], given: dict, chooser, chosen_on: dict, args) -> dict[str, str]:
    """order -> the label of a --importance ranking that is the one this run would compute for that order
    (``orders``: the labels computed here, e.g. ablation, shapley-exact), on ``chooser``'s items. None under
    --ignore-fingerprint: a ranking of the model at another precision is not the same."""
    from layerscope.pruning.curve import same_as_order

    if getattr(args, "ignore_fingerprint", False):
        return {}
    found = {}
    for order in ORDERS:
        method = REUSABLE.get(order)
        if method not in orders:
            continue
        label = next((lb for lb, imp in given.items() if same_as_order(imp, method, chooser, chosen_on)), None)
        if label is not None:
            found[method] = label
    return found


def run_orders(args) -> tuple[str, ...]:
    """The orders of ``args.orders`` (checked by :func:`chosen_orders`), or every order --no-greedy and
    --estimator none leave (an args namespace built without --orders: the API, the experiment's tests)."""
    orders = getattr(args, "orders", None)
    if orders is None or isinstance(orders, str):
        orders = chosen_orders(orders, args.greedy, args.shapley, given=True)
    return tuple(orders)


def chosen_orders(text: str | None, greedy: bool = True, shapley: str = "auto", given: bool = False) -> tuple[str, ...]:
    """--orders LIST as the orders computed here, in ORDERS' order, less greedy under --no-greedy and
    Shapley under --estimator none. Refused in one line: an unknown name, an empty list, none beside an
    order, an order named and switched off, and nothing to draw at all (no order, no --importance: ``given``)."""
    choices = ", ".join(ORDERS)
    if text is None:
        named = set(ORDERS)
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise ConfigError(f"--orders {text!r}: name one or more of {choices} (comma-separated), or none")
        unknown = [n for n in names if n not in (*ORDERS, "none")]
        if unknown:
            raise ConfigError(f"--orders {text!r}: unknown order {unknown[0]!r}; choose from {choices}, or none")
        if "none" in names and len(names) > 1:
            raise ConfigError(f"--orders {text!r}: none (only the --importance rankings) stands alone")
        named = set(names) - {"none"}
        if "greedy" in named and not greedy:
            raise ConfigError(f"--orders {text!r} names greedy, which --no-greedy switches off; drop one")
        if "shapley" in named and shapley == "none":
            raise ConfigError(f"--orders {text!r} names shapley, which --estimator none switches off; drop one")
    if not greedy:
        named.discard("greedy")
    if shapley == "none":
        named.discard("shapley")
    orders = tuple(o for o in ORDERS if o in named)
    if not orders and not given:
        raise ConfigError(f"--orders {text!r}: no curve to draw; choose an order of {choices} or give --importance")
    return orders


def _evaluators(loaded, spec: str, args):
    """(evaluator, data, None or (evaluator, data) of the --selection-items after the scored ones)."""
    from layerscope.cli.ablate import build_evaluator, fields_for

    kw = dict(fields=fields_for(spec, args.fields), subject=args.subject)
    scoring = (args.batch_size, args.max_length, args.append_eos)
    ev, data = build_evaluator(loaded, spec, args.limit, *scoring, **kw)
    if not args.selection_items:
        return ev, data, None
    selection = build_evaluator(loaded, spec, args.selection_items, *scoring, skip=args.limit, **kw)
    return ev, data, selection


def _logged_engine(loaded, lm, evaluator, data: dict, folder: Path, args):
    """A block-level coalition engine logging every value to ``folder``/coalitions.jsonl (read back
    with ``args.resume``)."""
    from layerscope.cli.ablate import open_run_log
    from layerscope.core.distributed import working_together
    from layerscope.engine.coalitions import CoalitionEngine

    # under a launcher a batch of coalitions may be shared among the processes (shard auto): each logs its own
    log = open_run_log(loaded, lm, "block", data, args, folder, uncached=False, per_process=working_together())
    return CoalitionEngine(
        loaded.model, lm, evaluator, "block", cache_mb=args.cache_mb, progress=not args.no_progress, log=log
    )


BASELINES = ("last", "random")  # as layerscope.pruning.curve.BASELINES (not imported: --help reads this module)


def shapley_estimator(choice: str, n_blocks: int, exact_max: int = 10) -> str | None:
    if choice == "none":
        return None
    if choice == "auto":
        return "exact" if n_blocks <= exact_max else "proximity"
    return choice


def task_folder(spec: str) -> str:
    """The output subfolder of a task: its name, or the SFT / MC file's stem."""
    from layerscope.scoring.sources import LOSS_PREFIX

    name = spec[len(LOSS_PREFIX) :] if spec.startswith(LOSS_PREFIX) else spec
    return Path(name).name.split(".")[0] or "task"


# ----------------------------------------------------------------------------- checks


def check_arguments(args) -> dict:
    """Everything that needs no model; returns the --importance rankings by label."""
    defaulted = not args.task
    args.task = args.task or ["arc_easy"]
    check_threads(args)
    check_at_least(args, 1, limit="--limit", batch_size="--batch-size", k_max="--k-max")
    check_at_least(args, 0, selection_items="--selection-items", cache_mb="--cache-mb")
    check_at_least(args, 2, max_length="--max-length")
    check_output(args.out)
    args.orders = chosen_orders(args.orders, args.greedy, args.shapley, given=bool(args.importance))
    if getattr(args, "load_in", None):
        raise ConfigError(f"--load-in {args.load_in}: pruning curves remove blocks of plain weights; load without it")
    from layerscope.cli.ablate import check_task_spec, fields_for, task_fields, task_subject

    # renames the fields of each multiple-choice file
    args.fields = task_fields(args.fields, args.task, default_by="prune-curve" if defaulted else None)
    task_subject(args.subject, args.task, default_by="prune-curve" if defaulted else None)
    settle_append_eos(args, lambda: _reads_sft(args), SFT_READ)
    for spec in args.task:  # every task, before the model loads: a misspelt second one costs nothing
        check_task_spec(spec, args.limit, fields_for(spec, args.fields), args.subject)
    folders = [task_folder(t) for t in args.task]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"--task: two tasks would share an output folder ({', '.join(folders)})")
    from layerscope.core.importance import LayerImportance
    from layerscope.pruning.rankings import aggregated

    paths, spec_of = {}, {}
    for spec in args.importance:  # every label first: a clash costs no ranking read
        label, path, plain = importance_label(spec)
        if label in spec_of:
            raise ConfigError(
                f"--importance {spec_of[label]!r} and --importance {spec!r} would both be labelled {label!r}; "
                f"name them apart with LABEL=PATH (e.g. {label}-2={path})"
            )
        # selection: the chooser's log folder; the file names each task folder holds
        if own_label(label) or label in RESERVED:
            if plain:  # e.g. runs/ablation: the curve prune-curve draws itself under that name would replace it
                raise ConfigError(
                    f"--importance {spec!r}: the label {label!r} (its folder's name) is taken by prune-curve's own "
                    f"curves and files; give LABEL=PATH (e.g. mine={path})"
                )
            raise ConfigError(f"--importance {spec!r}: the label {label!r} is taken; choose another")
        spec_of[label], paths[label] = spec, path
    given = {}
    for label, path in paths.items():
        given[label] = LayerImportance.load(path)
        aggregated(given[label], "block", path)
    return given


def _reads_sft(args) -> bool:
    """Whether this run may read SFT records: a loss:<file> task, or the --data of block-influence / angular where
    it names SFT data or a file (read as SFT records where it holds them: ``may_read_sft``)."""
    from layerscope.pruning.choose import NEEDS_SEQUENCES

    similar = any(order in NEEDS_SEQUENCES for order in args.orders)
    return may_read_sft(args.task, args.data if similar else None)


def importance_label(spec: str) -> tuple[str, str, bool]:
    """(label, path, whether ``spec`` is a plain path) of one --importance: LABEL=PATH, or a plain PATH labelled
    by its run folder's name (a file: its folder's, so runs/ila/importance.json is ila). A spec that is an
    existing path is a plain path, even with a '=' in it."""
    if "=" in spec and not Path(spec).exists():
        label, _, path = spec.partition("=")
        if not label or not path:
            raise ConfigError(f"--importance {spec!r}: give PATH or LABEL=PATH (e.g. ila=runs/ila)")
        if not LABEL.fullmatch(label):
            raise ConfigError(f"--importance {spec!r}: a label is letters, digits, '_', '.', '-' (it names a folder)")
        return label, path, False
    if not spec.strip():
        raise ConfigError("--importance '': give PATH or LABEL=PATH (e.g. ila=runs/ila)")
    where = Path(spec)
    folder = where.parent if where.is_file() or (not where.exists() and where.suffix) else where
    label = folder.resolve().name if folder.name in ("", ".", "..") else folder.name
    if not LABEL.fullmatch(label):
        raise ConfigError(
            f"--importance {spec!r}: its folder's name {label!r} cannot label a curve (letters, digits, '_', '.', "
            f"'-'); give LABEL=PATH (e.g. mine={spec})"
        )
    return label, spec, True


def check_rankings(args, given: dict, loaded, lm) -> None:
    """Each --importance ranking comes from this model (and --k-max and --estimator exact fit it)."""
    from layerscope.core.models import ModelFingerprint
    from layerscope.pruning.rankings import checked_count
    from layerscope.training.selection import check_ranking_matches

    if args.k_max is not None:
        checked_count(args.k_max, lm.n_blocks, "blocks")
    if args.shapley == "exact" and "shapley" in run_orders(args):  # else it fails after similarity and ablation
        check_exact_fits(lm.n_blocks, "blocks", "--estimator exact", "--estimator proximity or auto")
    ours = ModelFingerprint(loaded.model)  # read once for every ranking
    for label, imp in given.items():
        recorded = imp.model.get("fingerprint")
        fingerprint = ours.like(recorded) if recorded and not args.ignore_fingerprint else None
        check_ranking_matches(imp, lm, fingerprint, where=f"--importance {label}")
