"""``layerscope report``: one self-contained HTML page (or Markdown text) of a model's results."""

from __future__ import annotations

import sys
from pathlib import Path

from layerscope.cli.common import finite_float, nonempty


def add_arguments(p) -> None:
    p.add_argument(
        "paths",
        nargs="+",
        type=nonempty,
        metavar="RUN_OR_RESULT",
        help="importance results, fine-tuning report.json / pruning curves, run folders, or folders of runs",
    )
    p.add_argument(
        "--out",
        type=nonempty,
        default=None,
        help="output file, '-' for stdout (default report.html; with --format md, stdout). An existing file "
        "is replaced only if it is a layerscope report, else refused unless --overwrite",
    )
    p.add_argument(
        "--format",
        choices=("html", "md"),
        default=None,
        help="html page or Markdown text (default: as --out's suffix says, .md / .markdown or .html / .htm; else html)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the file --out names even if it is not a layerscope report",
    )
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
    p.add_argument(
        "--ignore-fingerprint",
        action="store_true",
        help="report inputs whose weights fingerprints differ "
        "(float16, or an older layerscope's ranking in another dtype) as one model's",
    )


def format_and_out(out: str | None, fmt: str | None) -> tuple[str, Path | None]:
    """(format, file) of a report: --format, else the one --out's suffix names, else html; --out, else
    report.html for html and stdout (None) for md. A --format its --out's suffix contradicts is refused."""
    from layerscope.viz.report import chosen_format

    to_stdout = out is not None and str(out) == "-"
    fmt = chosen_format(None if to_stdout else out, fmt, out_arg="--out", fmt_arg="--format")
    if out is None:
        return fmt, (Path("report.html") if fmt == "html" else None)
    return fmt, None if to_stdout else Path(out).expanduser()


def check_replace(path: Path | None, overwrite: bool, where: str) -> None:
    """An existing file at ``path`` is replaced only if it is a report layerscope wrote, or with ``overwrite``."""
    from layerscope.core.errors import ConfigError
    from layerscope.viz.report import is_report_file

    if path is None or overwrite or path.is_dir() or not (path.exists() or path.is_symlink()):
        return  # a folder: check_output's to refuse
    if not is_report_file(path):
        raise ConfigError(f"{where}: exists and is not a layerscope report; --overwrite replaces it")


def run(args) -> int:
    from layerscope.cli.common import check_fraction, check_output
    from layerscope.core import atomic
    from layerscope.viz.report import write_report

    check_fraction(args.fraction)  # used once every result is read
    fmt, out = format_and_out(args.out, args.format)
    where = f"--out {args.out if args.out is not None else out}"
    check_output(out, kind="file")  # written after every result is read and drawn
    check_replace(out, args.overwrite, where)
    text, report = write_report(
        args.paths,
        None,
        fmt,
        fraction=args.fraction,
        ranking=args.ranking,
        tolerance=args.tolerance,
        ignore_fingerprint=args.ignore_fingerprint,
        links_from=None if out is None else Path(out).parent,  # chart links read from where the file lies
    )
    if out is None:
        sys.stdout.write(text)
        return 0
    check_replace(out, args.overwrite, where)  # again: a file may have appeared while the results were read
    atomic.write_text(out, text)
    print(
        f"wrote {out}: {len(report.results)} importance result(s), {len(report.finetunes)} fine-tuning run(s), "
        f"{len(report.prunings)} pruning curve(s) of {report.model.get('name', 'the model')}"
    )
    return 0
