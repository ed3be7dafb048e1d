"""One report of everything known about a model's layers: ``layerscope report``.

- ``load``: read importance results, fine-tuning reports and pruning curves (files or folders);
- ``model``: what the report says (one model, agreement, cornerstones, recommendations), computed once;
- ``figures``: the figures as inline SVG ``data:`` URIs;
- ``html`` / ``markdown``: the two renderings of the same content.

``write_report`` does all of it and writes atomically: a refused input leaves no page behind.
"""

from __future__ import annotations

from pathlib import Path

from layerscope.viz.report.load import Inputs, load_inputs
from layerscope.viz.report.model import DEFAULT_FRACTION, DEFAULT_TOLERANCE, Report, build_report

FORMATS = ("html", "md")

__all__ = ["FORMATS", "Inputs", "Report", "build_report", "load_inputs", "render", "write_report"]


def render(report: Report, fmt: str = "html") -> str:
    from layerscope.core.errors import ConfigError

    if fmt == "html":
        from layerscope.viz.report.html import render_html

        return render_html(report)
    if fmt == "md":
        from layerscope.viz.report.markdown import render_markdown

        return render_markdown(report)
    raise ConfigError(f"--format {fmt!r} must be one of {', '.join(FORMATS)}")


def write_report(
    paths: list[str | Path],
    out: str | Path | None,
    fmt: str = "html",
    *,
    fraction: float = DEFAULT_FRACTION,
    ranking: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[str, Report]:
    """Read ``paths``, build and render the report; write it to ``out`` (atomically) when given.
    Returns (text, report)."""
    from layerscope.core import atomic

    report = build_report(load_inputs(paths), fraction=fraction, ranking=ranking, tolerance=tolerance)
    text = render(report, fmt)
    if out is not None:
        atomic.write_text(out, text)
    return text, report
