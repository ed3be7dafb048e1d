"""One report of everything known about a model's layers: ``layerscope report``.

- ``load``: read importance results, fine-tuning reports and pruning curves (files or folders);
- ``model``: what the report says (one model, agreement, cornerstones, recommendations), computed once;
- ``figures``: the figures as inline SVG ``data:`` URIs;
- ``html`` / ``markdown``: the two renderings of the same content.

``write_report`` does all of it and writes atomically: a refused input leaves no page behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from layerscope.viz.report.load import Inputs, load_inputs
from layerscope.viz.report.model import DEFAULT_FRACTION, DEFAULT_TOLERANCE, Report, build_report

FORMATS = ("html", "md")
# what each format's file is named with: ``layerscope report`` infers --format from --out's suffix
SUFFIXES = {"html": (".html", ".htm"), "md": (".md", ".markdown")}

# How every report opens (html.py / markdown.py write exactly this): how ``is_report_file`` tells a
# report layerscope wrote, which a later report may replace, from any other file.
HTML_OPENING = (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width,initial-scale=1">'
    "<title>layerscope report: "
)
MD_OPENING = "# layerscope report: "

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "Inputs",
    "Report",
    "build_report",
    "chosen_format",
    "format_of",
    "is_report_file",
    "load_inputs",
    "render",
    "write_report",
]


def format_of(path: str | Path) -> str | None:
    """The format a file name asks for by its suffix (``.md`` / ``.markdown``, ``.html`` / ``.htm``), else None."""
    suffix = Path(path).suffix.lower()
    return next((fmt for fmt, names in SUFFIXES.items() if suffix in names), None)


def chosen_format(
    out: str | os.PathLike | None,
    fmt: str | None,
    *,
    out_arg: str = "out",
    fmt_arg: str = "fmt",
    refuse_unknown_suffix: bool = False,
) -> str:
    """The format a report to ``out`` is written in: ``fmt``, else the one ``out``'s suffix names, else
    html. A ``fmt`` that ``out``'s suffix contradicts is refused (a Markdown file holding HTML, or the
    reverse, is worse than no file). ``refuse_unknown_suffix``: without ``fmt``, an ``out`` whose suffix
    names no format (``r.pdf``) is refused too, not filled with HTML (``write_report``; the command
    writes html there, as its ``--format`` help says). ``out_arg`` / ``fmt_arg`` name the two in the message:
    the arguments here, the options (``--out``, ``--format``) for ``layerscope report``."""
    from layerscope.core.errors import ConfigError

    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"{_said(fmt_arg, fmt)} must be one of {', '.join(FORMATS)}")
    named = None if out is None else format_of(out)
    if refuse_unknown_suffix and out is not None and fmt is None and named is None:
        *others, last = (s for names in SUFFIXES.values() for s in names)
        suffix = Path(out).suffix
        raise ConfigError(
            f"{_said(out_arg, out)}: a report is HTML or Markdown, named {', '.join(others)} or {last}, "
            f"{f'not {suffix}' if suffix else 'and this name has no suffix'}: name it so, or give {fmt_arg} "
            "to write one under this name"
        )
    if fmt is not None and named is not None and fmt != named:
        raise ConfigError(
            f"{_said(out_arg, out)}: {_said(fmt_arg, fmt)} writes a {' or '.join(SUFFIXES[fmt])} file, not "
            f"{Path(out).suffix}: name it so, or leave {fmt_arg} out (the suffix chooses it)"
        )
    return fmt or named or "html"


def _said(name: str, value) -> str:
    """An option as a command line spells it (``--format md``), an argument as Python does (``fmt='md'``)."""
    return f"{name} {value}" if name.startswith("-") else f"{name}={str(value)!r}"


def is_report_file(path: str | Path) -> bool:
    """Whether the file at ``path`` is a report layerscope wrote (either format), told by its opening
    bytes; an unreadable file is not one."""
    openings = [o.encode("utf-8") for o in (HTML_OPENING, MD_OPENING)]
    try:
        with open(path, "rb") as f:
            head = f.read(max(len(o) for o in openings))
    except OSError:
        return False
    return any(head.startswith(o) for o in openings)


def render(report: Report, fmt: str = "html", links_from: str | os.PathLike | None = None) -> str:
    """``report`` as an HTML page or Markdown text. ``links_from``: the folder the Markdown's links to the
    charts beside each result are relative to, the one its file is written in (default: the current folder,
    where stdout's text is read from); the page draws its figures inline and links nothing."""
    from layerscope.core.errors import ConfigError

    if fmt == "html":
        from layerscope.viz.report.html import render_html

        return render_html(report)
    if fmt == "md":
        from layerscope.viz.report.markdown import render_markdown

        return render_markdown(report, links_from)
    raise ConfigError(f"report format {fmt!r} must be one of {', '.join(FORMATS)}")


def write_report(
    paths: str | os.PathLike | list[str | os.PathLike],
    out: str | os.PathLike | None,
    fmt: str | None = None,
    *,
    fraction: float = DEFAULT_FRACTION,
    ranking: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    ignore_fingerprint: bool = False,
    links_from: str | os.PathLike | None = None,
) -> tuple[str, Report]:
    """Read ``paths`` (one path, or a list of them: result files, run folders, folders of runs),
    build and render the report; write it to ``out`` (atomically) when given. Returns (text, report).

    ``fmt`` (``"html"`` or ``"md"``): default what ``out``'s suffix says (``.md`` / ``.markdown``,
    ``.html`` / ``.htm``; another suffix is refused: give ``fmt`` for it), else html (no ``out``); one
    the suffix contradicts is refused. Both before anything is read.
    ``links_from``: the folder the Markdown's chart links are relative to (default: ``out``'s folder,
    else the current one); a caller that writes ``text`` itself passes the folder it writes it to.
    """
    from layerscope.core import atomic
    from layerscope.core.errors import ConfigError

    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise ConfigError(f"out must be a file path or None (got a {type(out).__name__})")
    fmt = chosen_format(out, fmt, refuse_unknown_suffix=True)  # HTML in r.pdf would be a file nothing opens
    inputs = load_inputs(paths)
    report = build_report(
        inputs, fraction=fraction, ranking=ranking, tolerance=tolerance, ignore_fingerprint=ignore_fingerprint
    )
    if links_from is None and out is not None:
        links_from = Path(out).expanduser().parent
    text = render(report, fmt, links_from)
    if out is not None:
        atomic.write_text(out, text)
    return text, report
