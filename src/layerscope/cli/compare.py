"""``layerscope compare``: Jaccard of top-K sets and Spearman between importance results of one model,
at one granularity (results of finer granularities are aggregated to it)."""

from __future__ import annotations

import sys
from pathlib import Path

from layerscope.cli.common import add_hidden_alias, check_fraction, finite_float, nonempty
from layerscope.core.errors import ConfigError


def _fractions(text: str) -> tuple[float, ...]:
    try:
        fractions = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--sweep: expected comma-separated fractions like 0.1,0.3,0.5, got {text!r}") from None
    for f in fractions:
        check_fraction(f, f"--sweep {text}: fraction")
    return fractions


# the rule as core.levels.AGGREGATION_RULE states it; repeated here so that --help imports nothing heavy
AGGREGATION_HELP = (
    "Results of different granularities are compared at one level (module -> sublayer -> block, "
    "expert -> block, coarser only): a sub-layer's score is the mean of its modules' scores, a block's "
    "the mean of all its players' scores (its modules, its attention and MLP sub-layers, or its "
    "experts); a group with a missing score is missing. Results of different models are refused."
)


def add_arguments(p) -> None:
    p.epilog = AGGREGATION_HELP
    p.add_argument(
        "results",
        nargs="+",
        type=nonempty,
        metavar="DIR_OR_FILE",
        help="importance.json files, run folders, or folders holding several results (every importance.json up "
        "to 2 folders below, as report reads them: e.g. the output of similarity or demo, or a folder of runs)",
    )
    p.add_argument(
        "--level",
        choices=("block", "sublayer", "module", "expert"),
        default=None,
        help="granularity to compare at (default: the coarsest of the inputs); finer inputs are aggregated "
        "by mean score, a level finer than an input is refused",
    )
    # the name ablate / shapley / prune give the same notion
    add_hidden_alias(p, "--granularity", "level", choices=("block", "sublayer", "module", "expert"))
    p.add_argument("--fraction", type=finite_float, default=0.3, help="K as a fraction of the players (default 0.3)")
    p.add_argument(
        "--sweep", type=nonempty, default="0.1,0.2,0.3,0.4,0.5", help="fractions for the sweep (default 0.1,...,0.5)"
    )
    p.add_argument(
        "--out",
        type=nonempty,
        default=None,
        help="folder for comparison.json, jaccard.png, sweep.png (default: print only)",
    )
    p.add_argument(
        "--ignore-fingerprint",
        action="store_true",
        help="compare results whose weights fingerprints differ "
        "(float16, or an older layerscope's ranking in another dtype)",
    )


def run(args) -> int:
    from layerscope.cli.common import check_output
    from layerscope.core.importance import load_found
    from layerscope.viz.compare import compare, result_labels, write_comparison

    check_output(args.out)
    if args.out and Path(args.out).suffix and not Path(args.out).is_dir():  # x.json would become a folder
        raise ConfigError(
            f"--out {args.out}: compare writes a folder (comparison.json, jaccard.png, sweep.png); give a folder name"
        )
    check_fraction(args.fraction)
    sweep = _fractions(args.sweep)  # both checked before any result is read
    found = load_found(args.results)  # warns for each damaged result below a folder, left out
    comp = compare(
        found.results,
        result_labels(found.files),
        fraction=args.fraction,
        sweep=sweep,
        sources=[str(f) for f in found.files],
        level=args.level,
        ignore_fingerprint=args.ignore_fingerprint,
    )
    print(comp.format_text())
    for note in comp.notes:
        print(f"note: {note}", file=sys.stderr)
    comp.notes += [f"skipped {why}" for why in found.skipped]  # said above as warnings; kept in comparison.json
    if args.out:
        paths = write_comparison(comp, args.out)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
