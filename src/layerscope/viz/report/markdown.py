"""The report as Markdown text (``layerscope report --format md``): the same content as the HTML
page, figures replaced by their numbers, for terminals and pull requests.

Every text that came from the inputs (model and run names, methods, tasks, settings, notes) is
escaped as HTML (``&``, ``<``, ``>``) wherever Markdown would read HTML in it, in prose and in table
cells alike: a Markdown viewer renders raw HTML. Code blocks and code spans show their text as it is,
so commands and configs are left alone there."""

from __future__ import annotations

import html
import math
import os
from urllib.parse import quote

from layerscope.viz.report import MD_OPENING
from layerscope.viz.report.agreement import jaccard_flags, no_order_legend, spearman_flags, tied_top_legend
from layerscope.viz.report.figures import curve_panels
from layerscope.viz.report.finetune_table import EVAL_NOTE, HEAD, finetune_table
from layerscope.viz.report.model import Report, Result, pruning_advice, safe_depth_rules
from layerscope.viz.report.provenance import provenance
from layerscope.viz.report.pruning_table import pruning_tables
from layerscope.viz.report.wording import plural

TOP_ROWS = 10  # players listed per ranking; the HTML page lists all
PREVIEW_MODULES = 5  # selected modules named under "What to do"; the export commands write them all


def t(text: object) -> str:
    """Text from the inputs, as Markdown shows it literally: no HTML tag, no entity read as one."""
    return html.escape(str(text), quote=False)


def _code(text: object) -> str:
    """An inline code span (shown as written, nothing escaped): fenced with more backticks than it holds."""
    text = str(text)
    fence = "`" * (_longest_backticks(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _longest_backticks(text: str) -> int:
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return longest


def render_markdown(report: Report, links_from: str | os.PathLike | None = None) -> str:
    """``links_from``: the folder the text is read from (its file's), which chart links are relative to;
    default the current folder."""
    links = _Links(report, links_from)
    m = report.model
    params = m.get("n_params")
    lines = [
        f"{MD_OPENING}{t(m.get('name', 'model'))}",
        "",
        "## Model",
        "",
        f"- name: {t(m.get('name', '?'))}",
        f"- architecture: {t(m.get('architecture', '?'))} ({t(m.get('model_type', '?'))})",
        f"- blocks: {t(m.get('n_blocks', '?'))}",
        f"- parameters: {f'{params:,}' if isinstance(params, int) else 'not recorded in these results'}",
        f"- weights fingerprint: {t(m.get('fingerprint', '?'))}",
        "",
    ]
    lines += [f"> {t(n)}" for n in report.notes] + ([""] if report.notes else [])
    if report.results:  # a folder of pruning curves alone has none: no empty heading
        lines += ["## Results", ""]
    for r in report.results:
        lines += _result(r, links)
    lines += _agreement(report) + _cornerstones(report) + _pruning(report, links) + _finetuning(report, links)
    lines += _todo(report)
    lines += ["## Inputs", ""] + [f"- {_code(s)}" for s in report.sources]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "-"


def _cell(text: object) -> str:
    """A table cell's text: escaped as all text from the inputs is (:func:`t`), and a | would end the cell."""
    return t(text).replace("|", "\\|")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return out + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows] + [""]


class _Links:
    """Markdown links to the PNG charts beside the inputs (``Report.charts``), relative to ``links_from``."""

    def __init__(self, report: Report, links_from: str | os.PathLike | None):
        self.charts = report.charts
        self.base = os.path.abspath(links_from if links_from is not None else os.curdir)

    def of(self, *sources: str) -> str:
        """The charts of ``sources`` (each once), as links; "" when there are none."""
        paths = list(dict.fromkeys(c for src in sources for c in self.charts.get(src, [])))
        return ", ".join(self._link(c) for c in paths)

    def _link(self, path: str) -> str:
        rel = os.path.relpath(os.path.abspath(path), self.base).replace(os.sep, "/")
        name = os.path.basename(path)
        text = t(name).replace("[", "\\[").replace("]", "\\]")
        return f"[{text}]({quote(rel, safe='/._-~')})"


def _result(r: Result, links: _Links) -> list[str]:
    imp = r.imp
    lines = [f"### {t(r.label if r.label == imp.method else f'{r.label}: {imp.method}')}", ""]
    lines += [f"- {k}: {t(v)}" for k, v in provenance(imp)]
    charts = links.of(r.source)
    lines += ([f"- charts: {charts}"] if charts else []) + [""]
    err = imp.stderr if r.has_error_bars else None
    rows = []
    for rank, p in enumerate(imp.ranking()[:TOP_ROWS], 1):
        i = imp.players.index(p)
        row = [str(rank), p, _fmt(imp.scores[i]) if math.isfinite(imp.scores[i]) else "no score"]
        rows.append(row + ([_fmt(err[i])] if err else []))
    head = ["rank", "player", "score"] + (["stderr"] if err else [])
    more = len(imp.players) - TOP_ROWS
    return lines + _table(head, rows) + ([f"({more} more players)", ""] if more > 0 else [])


def _matrix(labels: list[str], m: list[list[float]], flags=None) -> list[str]:
    """Columns numbered, rows named with their number: as the page and ``compare`` show it. ``flags``: the
    marked cells' text (``agreement.spearman_flags`` / ``jaccard_flags``), as the page writes them."""
    cells = [
        [f"{lab} [{i + 1}]"]
        + [
            flags[i][j][0] if flags and flags[i][j] else f"{v:.2f}" if math.isfinite(v) else "n/a"
            for j, v in enumerate(row)
        ]
        for i, (lab, row) in enumerate(zip(labels, m))
    ]
    return _table([""] + [f"[{i + 1}]" for i in range(len(labels))], cells)


def _agreement(report: Report) -> list[str]:
    a = report.agreement
    if a is None:
        return []
    compared = f"Compared at {a.level} level ({plural(a.n_players, 'player')}). {a.rule}"
    lines = ["## Agreement between methods", "", t(compared), ""]
    lines += ["Spearman rank correlation:", ""] + _matrix(a.labels, a.spearman, spearman_flags(a))
    if a.no_order:
        lines += [t(no_order_legend(a)), ""]
    lines += [f"Jaccard overlap of the top {a.fraction:.0%} ({a.k} of {a.n_players}):", ""]
    lines += _matrix(a.labels, a.jaccard, jaccard_flags(a))
    if a.tied_top:
        lines += [t(tied_top_legend(a)), ""]
    lines += [f"Two random top-{a.k} sets would overlap by about {a.random_jaccard:.2f}.", ""]
    lines += [line for n in a.notes for line in (f"> {t(n)}", "")]
    return lines + [f"In every method's top {a.k}: {t(', '.join(a.in_every_top) or 'none')}", ""]


def _cornerstones(report: Report) -> list[str]:
    if not report.cornerstones:
        return []
    lines = ["## Cornerstones", ""]
    for c in report.cornerstones:
        lines += [f"### {t(c.label)}", "", f"Cornerstones: {t(c.summary)}", "", f"Rule: {t(c.rule)}.", ""]
        lines += [f"Value with each removed (full model {_fmt(c.full)}, chance {_fmt(c.chance)}):", ""]
        mark = set(c.players)
        lines += _table(
            ["removed", "value", ""], [[p, _fmt(v), "cornerstone" if p in mark else ""] for p, v in c.removed]
        )
    return lines


def _pruning(report: Report, links: _Links) -> list[str]:
    if not report.prunings:
        return []
    lines = ["## Pruning", ""]
    for table in pruning_tables(curve_panels(report.prunings)):
        lines += [f"### {t(table.title)}", ""]
        said = [f"one column per order {t(table.unit)} were removed in"]
        if any(" = " in o for o in table.orders):
            said.append("curves equal at every point share one (a = b)")
        said += [f"curves in {_code(table.folder + '/')}"] if table.folder else []
        charts = links.of(*(c.source for c in table.curves))
        said += [f"chart: {charts}"] if charts else []
        lines += [f"{'; '.join(said).capitalize()}.", ""]
        rows = [[str(k), *(_fmt(v) if v is not None else "-" for v in values)] for k, values in table.rows]
        lines += _table(table.head, rows)
    if report.safe_depths:
        rows = [
            [d.label, plural(d.depth, d.unit.removesuffix("s"), d.unit), ", ".join(d.removed) or "-"]
            for d in report.safe_depths
        ]
        lines += ["Safe depths:", ""] + _table(["order", "safe depth", "removed"], rows)
        lines += [f"Rule: {t(rule)}." for rule in safe_depth_rules(report.safe_depths)] + [""]
    return lines


def _finetuning(report: Report, links: _Links) -> list[str]:
    if not report.finetunes:
        return []
    head, rows = finetune_table(report.finetunes)
    lines = ["## Fine-tuning", ""] + _table(head, [[text for text, _ in row] for row in rows])
    lines += [f"Charts of {t(f.label)}: {charts}" for f in report.finetunes if (charts := links.of(f.source))]
    lines += [""] if lines[-1] else []
    return lines + ([t(EVAL_NOTE), ""] if len(head) > len(HEAD) else [])


def _todo(report: Report) -> list[str]:
    lines = ["## What to do", ""]
    rec = report.recommendation
    if rec is None:
        lines += [f"No fine-tuning selection: {t(report.no_selection)}.", ""]
    else:
        lines += [
            f"Fine-tune the top {rec.fraction:.0%} of {t(rec.label)} ({t(rec.method)}): {t(rec.summary)}.",
            "",
        ]
        lines += [line for n in rec.notes for line in (f"> {t(n)}", "")]
        lines += ["```sh", *rec.commands, "```", ""]
        # the configs themselves (a line per module, three times) buried the page: the export commands
        # above write each of them; the page (HTML) shows them folded
        shown = ", ".join(rec.modules[:PREVIEW_MODULES])
        more = len(rec.modules) - PREVIEW_MODULES
        lines += [
            f"{plural(len(rec.modules), 'module')} selected: {t(shown)}"
            + (f" ... and {more} more" if more > 0 else "")
            + f". The `export` commands above write them as a {_either(list(rec.snippets))} config.",
            "",
        ]
    for advice in pruning_advice(report.safe_depths):
        lines += [f"Pruning: {t(advice)}.", ""]
    return lines


def _either(names: list[str]) -> str:
    """ "a, b or c"."""
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 2 else names)
