"""``layerscope report``: one self-contained HTML page (or Markdown text) of a model's results."""

from __future__ import annotations

import sys

from layerscope.cli.common import finite_float


def add_arguments(p) -> None:
    p.add_argument(
        "paths",
        nargs="+",
        metavar="RUN_OR_RESULT",
        help="importance results, fine-tuning report.json / pruning curves, run folders, or folders of runs",
    )
    p.add_argument("--out", default=None, help="output file (default report.html; with --format md, stdout)")
    p.add_argument("--format", choices=("html", "md"), default="html", help="html page or Markdown text (default html)")
    p.add_argument(
        "--fraction",
        type=finite_float,
        default=0.3,
        help="F: top-K size for agreement and the recommended fine-tuning selection (default 0.3)",
    )
    p.add_argument(
        "--ranking",
        default=None,
        metavar="LABEL",
        help="the result the fine-tuning recommendation follows (default: ILA's, else the first module-level one)",
    )
    p.add_argument(
        "--tolerance",
        type=finite_float,
        default=0.1,
        help="pruning: share of the full model's margin above chance it may lose (default 0.1)",
    )


def run(args) -> int:
    from layerscope.cli.common import check_fraction, check_output
    from layerscope.viz.report import write_report

    check_fraction(args.fraction)  # used once every result is read
    out = args.out if args.out is not None else ("report.html" if args.format == "html" else None)
    out = None if out == "-" else out  # "-": standard output, as check_output reads it
    check_output(out, kind="file")  # written after every result is read and drawn
    text, report = write_report(
        args.paths, out, args.format, fraction=args.fraction, ranking=args.ranking, tolerance=args.tolerance
    )
    if out is None:
        sys.stdout.write(text)
    else:
        print(
            f"wrote {out}: {len(report.results)} importance result(s), {len(report.finetunes)} fine-tuning run(s), "
            f"{len(report.prunings)} pruning curve(s) of {report.model.get('name', 'the model')}"
        )
    return 0
