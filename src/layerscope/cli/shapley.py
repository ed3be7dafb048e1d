"""``layerscope shapley``: Shapley values of layers (exact, proximity, permutation, owen) with error bars."""

from __future__ import annotations

import sys

from layerscope.cli.ablate import add_task_args, build_engine, metric_name
from layerscope.cli.common import add_model_args, default_out, finite_float
from layerscope.core.errors import ConfigError

ESTIMATORS = ("proximity", "permutation", "owen", "exact")
MAX_WINDOW = 3  # --max-window's default


def add_arguments(p) -> None:
    add_model_args(p)
    add_task_args(
        p,
        default_out("shapley"),
        seed_uses="the permutations or strata of --estimator permutation / owen (exact and proximity draw nothing)",
    )
    p.add_argument(
        "--estimator",
        default="proximity",
        choices=ESTIMATORS,
        help="proximity: Zhang et al.'s windows next to the full model (~3n evaluations, a local "
        "approximation); permutation / owen: Monte Carlo with error bars; exact: all 2^n coalitions "
        "(n <= 14). Default proximity",
    )
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help="permutation / owen: at most this many distinct coalition evaluations (with --truncation it is "
        "checked before each sample, whose walks' lengths are not known beforehand: the last may go past it)",
    )
    p.add_argument(
        "--target-stderr",
        type=finite_float,
        default=None,
        help="permutation / owen: stop when every player's standard error is below this",
    )
    p.add_argument(
        "--max-window", type=int, default=None, help=f"proximity: longest removed window (default {MAX_WINDOW})"
    )
    p.add_argument(
        "--truncation",
        type=finite_float,
        default=None,
        help="permutation: stop a walk once the value is within this of the end it walks towards "
        "(TMC-Shapley); skipped contributions count as zero",
    )
    p.add_argument(
        "--truncate-at",
        default=None,
        choices=("empty", "full"),
        help="permutation with --truncation: 'empty' walks down from the full model and stops when it "
        "has collapsed to v(empty) (suits layers: a broken model stays broken); 'full' walks up (default empty)",
    )


def estimator_options(args) -> dict:
    """The estimator's keyword options from the flags (the seed travels separately), range-checked
    here because the estimator sees them only after the model is loaded and the full model scored."""
    _check_ranges(args)
    kw: dict = {}
    if args.max_window is not None and args.estimator != "proximity":
        raise ConfigError(f"--max-window applies to --estimator proximity, not {args.estimator}")
    if args.truncate_at is not None and args.truncation is None:
        raise ConfigError("--truncate-at applies with --truncation X (--estimator permutation)")
    if args.estimator in ("permutation", "owen"):
        if args.budget is None and args.target_stderr is None:
            raise ConfigError(f"--estimator {args.estimator} needs --budget N and/or --target-stderr X")
        if args.budget is not None:
            kw["budget"] = args.budget
        if args.target_stderr is not None:
            kw["target_stderr"] = args.target_stderr
        if args.truncation is not None:
            if args.estimator != "permutation":
                raise ConfigError("--truncation applies to --estimator permutation only")
            kw["truncation"] = args.truncation
            kw["truncate_at"] = args.truncate_at or "empty"
    else:
        if args.budget is not None or args.target_stderr is not None or args.truncation is not None:
            raise ConfigError(
                f"--budget / --target-stderr / --truncation apply to permutation (and owen), not {args.estimator}"
            )
        if args.estimator == "proximity":
            kw["max_window"] = MAX_WINDOW if args.max_window is None else args.max_window
    return kw


def _check_ranges(args) -> None:
    if args.budget is not None and args.budget < 2:
        raise ConfigError(f"--budget {args.budget} is too small: v(full) and v(empty) alone take 2 evaluations")
    if args.target_stderr is not None and not args.target_stderr > 0:
        raise ConfigError(f"--target-stderr must be > 0, got {args.target_stderr:g}")
    if args.truncation is not None and not args.truncation >= 0:
        raise ConfigError(f"--truncation must be >= 0, got {args.truncation:g}")
    if args.max_window is not None and args.max_window < 1:
        raise ConfigError(f"--max-window must be >= 1, got {args.max_window}")


def planned_coalitions(engine, estimator: str, kw: dict) -> tuple[int | None, bool]:
    """(coalitions the estimator will compute in this process, whether that is the number rather than
    a cap), for the up-front estimate: exact's 2^n and proximity's windows are known beforehand (less
    what the memo holds); permutation and owen compute at most about their --budget (None without one:
    --target-stderr alone decides when they stop)."""
    n = engine.n
    if estimator == "exact":
        return engine.to_compute(_subsets(n)), True
    if estimator == "proximity":
        w = min(kw.get("max_window", MAX_WINDOW), n)
        everyone = frozenset(range(n))
        windows = [everyone - set(range(s, s + length)) for length in range(1, w + 1) for s in range(n - length + 1)]
        return engine.to_compute([everyone, *windows]), True
    return kw.get("budget"), False


def _subsets(n: int):
    for mask in range(1 << n):
        yield [p for p in range(n) if mask >> p & 1]


def run(args) -> int:
    from layerscope.cli.ablate import write_result
    from layerscope.core.distributed import is_main_process
    from layerscope.engine.run_estimate import print_estimate
    from layerscope.methods.ablation import at_chance_note
    from layerscope.methods.shapley import check_players, shapley_importance
    from layerscope.methods.shapley.common import stderr_notes, stop_text

    kw = estimator_options(args)  # fail on bad options before loading anything
    # what needs the player count (a --budget below one sample, exact's cap): once the layer map is
    # built, before any evaluation and before OUT/coalitions.jsonl is replaced
    loaded, engine, data = build_engine(args, check_players=lambda n: check_players(args.estimator, n, **kw))
    try:
        count, exact_count = planned_coalitions(engine, args.estimator, kw)
        print_estimate(engine, count, data, exact_count=exact_count)
        imp = shapley_importance(
            engine,
            args.estimator,
            model_name=loaded.name,
            data=data,
            seed=args.seed,
            progress=not args.no_progress and is_main_process(),
            **kw,
        )
    finally:
        engine.log.close()
    if not is_main_process():
        return 0  # every process holds the same result; one writes it
    path, written = write_result(imp, args.out)
    charts = ", ".join(str(c) for c in written)
    s, se = imp.score_of(), dict(zip(imp.players, imp.stderr or [float("nan")] * len(imp.players)))
    full, chance = imp.baseline["full"], imp.baseline["chance"]
    print(
        f"{data.get('task')}: full model {metric_name(data)} {full:.4f}, chance {chance:.4f}; "
        f"{args.estimator} Shapley over {engine.n} {engine.granularity} players, {imp.n_evaluations} evaluations, "
        f"{imp.timings['seconds']:.1f}s"
    )
    reason = imp.method_config.get("stop_reason")
    if reason:
        print("stopped: " + stop_text(reason, imp.method_config, imp.n_evaluations))
    note = at_chance_note(full, chance)
    if note:
        print(note, file=sys.stderr)
    print(
        "top: " + ", ".join(f"{p} {s[p]:+.4f}" + (f"±{se[p]:.4f}" if se[p] == se[p] else "") for p in imp.ranking()[:6])
    )
    for line in stderr_notes(imp.extras, imp.method_config, imp.players):  # how far the ± above can be read
        print("note: " + line, file=sys.stderr)
    print(f"wrote {path} and {charts}")
    return 0
