"""The report as one self-contained HTML page: CSS inline, every figure an inline ``data:`` SVG,
no request to anywhere, readable from a phone width up. A small script makes tables sortable;
without it the page is complete (every table is already in a meaningful order)."""

from __future__ import annotations

import html
import math
import time

from layerscope.viz.report import HTML_OPENING, figures
from layerscope.viz.report.agreement import Agreement, jaccard_flags, no_order_legend, spearman_flags, tied_top_legend
from layerscope.viz.report.finetune_table import EVAL_NOTE, HEAD, NUMERIC_FROM, finetune_table
from layerscope.viz.report.model import Recommendation, Report, Result, pruning_advice, safe_depth_rules
from layerscope.viz.report.provenance import provenance
from layerscope.viz.report.pruning_table import pruning_tables
from layerscope.viz.report.wording import data_text, plural

CSS = """
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;background:#fff;margin:0}
main{max-width:1100px;margin:0 auto;padding:12px 16px 48px}
h1{font-size:1.5em;margin:.4em 0 .1em}h2{font-size:1.25em;border-bottom:2px solid #e4e7eb;padding-bottom:.2em;
margin-top:1.8em}h3{font-size:1.05em;margin:1.4em 0 .4em}
.sub{color:#5b6570;margin:0 0 1em}
nav{font-size:.92em;background:#f5f7f9;border-radius:6px;padding:6px 10px}nav a{margin-right:.9em;white-space:nowrap}
figure{margin:.6em 0}figure img{max-width:100%;height:auto;display:block;border:1px solid #eef0f2}
figcaption{font-size:.85em;color:#5b6570}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}
th,td{border:1px solid #dfe3e8;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f5f7f9}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.grid td{text-align:center;min-width:3.6em;font-variant-numeric:tabular-nums}
dl.prov{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:.88em;margin:.4em 0}
dl.prov dt{color:#5b6570}dl.prov dd{margin:0;overflow-wrap:anywhere}
pre{background:#f5f7f9;padding:8px 10px;border-radius:5px;overflow-x:auto;font-size:.82em}
code{font-size:.92em;overflow-wrap:anywhere}.note{color:#8a4b00}
details{margin:.4em 0}summary{cursor:pointer;color:#24527a}
th.sortable{cursor:pointer}
table.grid td.flag{background:repeating-linear-gradient(45deg,#f4f4f4 0 4px,#e4e4e4 4px 8px);color:#555}
.pair>*{min-width:0}
@media (min-width:900px){.pair{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:18px;
align-items:start}}
@media (max-width:600px){body{font-size:14px}main{padding:8px}dl.prov{grid-template-columns:6.5em 1fr}}
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.classList.add('sortable');th.title='sort';
    th.addEventListener('click',function(){
      var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),asc=th.dataset.asc!=='1';
      th.dataset.asc=asc?'1':'0';
      rows.sort(function(x,y){
        var a=x.cells[i].dataset.v||x.cells[i].textContent,c=y.cells[i].dataset.v||y.cells[i].textContent;
        var na=parseFloat(a),nc=parseFloat(c);
        var r=(!isNaN(na)&&!isNaN(nc))?na-nc:a.localeCompare(c);return asc?r:-r;});
      rows.forEach(function(r){b.appendChild(r);});});});});
"""


def e(x) -> str:
    return html.escape(str(x), quote=True)


def render_html(report: Report) -> str:
    name = report.model.get("name", "model")
    parts = [_model_section(report)]
    sections = [("model", "Model")]
    if report.results:  # a folder of pruning curves alone has none: no empty section
        parts.append(_overview(report))
        parts += [_method_section(r, report.fraction) for r in report.results]
        sections.append(("results", "Results"))
    if report.agreement:
        parts.append(_agreement_section(report.agreement))
        sections.append(("agreement", "Agreement"))
    if report.cornerstones:
        parts.append(_cornerstones_section(report))
        sections.append(("cornerstones", "Cornerstones"))
    if report.prunings:
        parts.append(_pruning_section(report))
        sections.append(("pruning", "Pruning"))
    if report.finetunes:
        parts.append(_finetune_section(report))
        sections.append(("finetuning", "Fine-tuning"))
    parts.append(_todo_section(report))
    sections.append(("todo", "What to do"))
    nav = "<nav>" + " ".join(f'<a href="#{a}">{e(t)}</a>' for a, t in sections) + "</nav>"
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in report.notes)
    return (
        f"{HTML_OPENING}{e(name)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>layerscope report</h1><p class=sub>{e(name)} &middot; {plural(len(report.results), 'importance result')}"
        f", {plural(len(report.finetunes), 'fine-tuning run')}, {plural(len(report.prunings), 'pruning curve')} "
        f"&middot; written {e(time.strftime('%Y-%m-%d %H:%M'))}</p>{nav}{notes}"
        + "".join(parts)
        + _sources(report)
        + f"</main><script>{SORT_JS}</script></body></html>\n"
    )


def _model_section(report: Report) -> str:
    m = report.model
    params = m.get("n_params")
    rows = [
        ("name", m.get("name", "?")),
        ("architecture", f"{m.get('architecture', '?')} ({m.get('model_type', '?')})"),
        ("blocks", m.get("n_blocks", "?")),
        ("parameters", f"{params:,}" if isinstance(params, int) else "not recorded in these results"),
        ("weights fingerprint", m.get("fingerprint", "?")),
    ]
    return '<h2 id="model">Model</h2>' + _dl(rows)


def _dl(rows) -> str:
    return '<dl class="prov">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows) + "</dl>"


def _overview(report: Report) -> str:
    head = ["result", "method", "level", "players", "data / task", "top 3"]
    body = []
    for r in report.results:
        # the kind and a name (full path on hover): a file name alone read ILA's SFT data and a held-out loss
        # on the same file alike, and cut a task named "org/name" at its slash
        data = f'<td title="{e(dict(provenance(r.imp))["data / task"])}">{e(data_text(r.imp.data))}</td>'
        body.append(
            f'<tr><td><a href="#r-{e(_anchor(r.label))}">{e(r.label)}</a></td><td>{e(r.imp.method)}</td>'
            f"<td>{e(r.imp.granularity)}</td><td class=num>{len(r.imp.players)}</td>"
            f"{data}<td>{e(', '.join(r.imp.ranking()[:3]))}</td></tr>"
        )
    return '<h2 id="results">Results</h2>' + _table(head, body, sortable=True)


def _table(head: list[str], body: list[str], sortable: bool = False, cls: str = "") -> str:
    c = " ".join(x for x in (cls, "sortable" if sortable else "") if x)
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    rows = "".join(body)
    return f'<div class="scroll"><table class="{c}"><thead><tr>{th}</tr></thead><tbody>{rows}</tbody></table></div>'


def _anchor(label: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in label)


def _figure(uri: str | None, caption: str) -> str:
    if not uri:
        return ""
    return f'<figure><img src="{uri}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>'


def _method_section(r: Result, fraction: float) -> str:
    imp = r.imp
    what = f"module-type x block heatmap (red boxes: top {fraction:.0%})" if imp.granularity == "module" else "scores"
    bars = " with error bars (standard error)" if r.has_error_bars else ""
    title = r.label if r.label == imp.method else f"{r.label}: {imp.method}"
    out = f'<h3 id="r-{e(_anchor(r.label))}">{e(title)}</h3>'
    fig = _figure(figures.ranking_figure(imp, fraction), f"{r.label}: {what}{bars}")
    if _wide(imp):  # shrunk beside the details, its tick labels would be a few pixels tall
        out += fig + _dl(provenance(imp))
    else:
        out += '<div class="pair">' + fig + _dl(provenance(imp)) + "</div>"
    if imp.method == "ila":
        out += _figure(figures.loss_curves_figure(imp), f"{r.label}: ILA training losses")
    err = imp.stderr if r.has_error_bars else None
    rows = []
    for rank, p in enumerate(imp.ranking(), 1):
        i = imp.players.index(p)
        s = imp.scores[i]
        se = f"{err[i]:.4g}" if err and err[i] is not None and math.isfinite(err[i]) else ""
        score = _fmt(s) if math.isfinite(s) else "no score"
        rows.append(
            f"<tr><td class=num>{rank}</td><td>{e(p)}</td><td class=num data-v='{_v(s)}'>{score}</td>"
            f"<td class=num>{se}</td></tr>"
        )
    table = _table(["rank", "player", "score", "stderr"], rows, sortable=True)
    return out + f"<details><summary>full ranking ({len(rows)} players)</summary>{table}</details>"


WIDE = 16  # columns (bars, or heatmap blocks) beyond which a figure gets the page's full width


def _wide(imp) -> bool:
    """Whether the ranking figure has more columns than fit beside the details column."""
    if imp.granularity == "module":
        return len({p.block for p in imp.player_records()}) > WIDE
    return len(imp.players) > WIDE


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _v(v) -> str:
    return f"{v:.10g}" if isinstance(v, (int, float)) and math.isfinite(v) else "-Infinity"  # JS parseFloat reads it


def _colour(v: float, lo: float) -> str:
    """Background for a matrix cell: white at 0, blue towards 1, red towards -1 (Spearman)."""
    if not math.isfinite(v):
        return "#eee"
    t = max(lo, min(1.0, v))
    base = (37, 99, 235) if t >= 0 else (220, 38, 38)
    mix = [round(255 + (c - 255) * abs(t) * 0.85) for c in base]
    return "#" + "".join(f"{c:02x}" for c in mix)


def _cell(v: float) -> str:
    return f"{v:.2f}" if math.isfinite(v) else "n/a"  # n/a: e.g. Spearman with fewer than two scored players


def _above_random(v: float, random: float) -> float:
    """A Jaccard as agreement beyond chance: 0 at what two random top sets overlap by, 1 at identical
    sets, -1 at disjoint ones (0.33 against a random 0.30 is no agreement, and should not look like it)."""
    if not math.isfinite(v) or not 0 < random < 1:
        return v
    return (v - random) / (1 - random) if v >= random else (v - random) / random


def _grid(labels: list[str], m: list[list[float]], lo: float, shade=lambda v: v, flags=None) -> str:
    """A matrix of values, each cell coloured by ``shade(value)`` in [-1, 1]. Columns are numbered and
    rows named with their number (as ``compare`` prints them): run-folder names as column heads made a
    grid of seven results wider than the page. ``flags[i][j]``: (text, why) for a cell whose number is
    not agreement, drawn grey and striped with that text, ``why`` on hover; None for a plain cell."""
    numbers = "".join(f'<th class=num title="{e(lab)}">{i + 1}</th>' for i, lab in enumerate(labels))
    head = f"<tr><th></th>{numbers}</tr>"
    rows = []
    for i, (lab, row) in enumerate(zip(labels, m)):
        cells = ""
        for j, v in enumerate(row):
            flag = flags[i][j] if flags else None
            if flag:
                cells += f'<td class=flag title="{e(flag[1])}">{e(flag[0])}</td>'
                continue
            colour = f"background:{_colour(shade(v), lo)};color:{'#fff' if abs(shade(v)) > 0.6 else '#111'}"
            cells += f'<td style="{colour}">{_cell(v)}</td>'
        rows.append(f"<tr><th>{e(lab)} <small>[{i + 1}]</small></th>{cells}</tr>")
    return f'<div class="scroll"><table class="grid"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def _agreement_section(a: Agreement) -> str:
    out = '<h2 id="agreement">Agreement between methods</h2>'
    out += (
        f"<p>Compared at <b>{e(a.level)}</b> level ({plural(a.n_players, 'player')}). {e(a.rule)}</p>"
        "<p><small>Blue: the methods agree; red: they rank in opposite orders; white: no relation (for Jaccard:"
        f" the overlap of two random top sets, {a.random_jaccard:.2f}); grey stripes: no agreement to read "
        "(why on hover and below).</small></p>"
        f"<h3>Spearman rank correlation</h3>{_grid(a.labels, a.spearman, -1.0, flags=spearman_flags(a))}"
    )
    if a.no_order:
        out += f"<p><small>{e(no_order_legend(a))}</small></p>"
    out += (
        f"<h3>Jaccard overlap of the top {a.fraction:.0%} ({a.k} of {a.n_players})</h3>"
        f"{_grid(a.labels, a.jaccard, -1.0, lambda v: _above_random(v, a.random_jaccard), jaccard_flags(a))}"
    )
    if a.tied_top:
        out += f"<p><small>{e(tied_top_legend(a))}</small></p>"
    out += f"<p>Two random top-{a.k} sets would overlap by about {a.random_jaccard:.2f}.</p>"
    out += "".join(f'<p class="note">{e(n)}</p>' for n in a.notes)  # compare's: ties, missing scores, windows
    common = ", ".join(a.in_every_top) if a.in_every_top else "none"
    return out + f"<p><b>In every method's top {a.k}:</b> {e(common)}</p>"


def _cornerstones_section(report: Report) -> str:
    out = '<h2 id="cornerstones">Cornerstones</h2>'
    for c in report.cornerstones:
        r = next(r for r in report.results if r.label == c.label)
        out += f"<h3>{e(c.label)}</h3><p><b>Cornerstones:</b> {e(c.summary)}<br><small>Rule: {e(c.rule)}.</small></p>"
        out += _figure(figures.removed_value_figure(r.imp), f"{c.label}: value of the model with each player removed")
        rows = [
            f"<tr><td>{e(p)}</td><td class=num>{_fmt(v)}</td><td>{'cornerstone' if p in c.players else ''}</td></tr>"
            for p, v in c.removed
        ]
        ref = f"full model {_fmt(c.full)}, chance {_fmt(c.chance)}"
        out += f"<details><summary>value with each removed ({e(ref)})</summary>"
        out += _table(["removed", "value", ""], rows, sortable=True) + "</details>"
    return out


def _pruning_section(report: Report) -> str:
    out = '<h2 id="pruning">Pruning</h2>'
    # one figure per task and metric: acc_norm and -loss on one axis had no unit to read
    out += "".join(
        _figure(uri, caption) for uri, caption in figures.pruning_figures(report.prunings, report.safe_depths)
    )
    if report.safe_depths:  # one table, not a paragraph per curve: a prune-curve run has a dozen
        rows = [
            f"<tr><td>{e(d.label)}</td><td class=num>{e(plural(d.depth, d.unit.removesuffix('s'), d.unit))}</td>"
            f"<td>{e(', '.join(d.removed) or '-')}</td></tr>"
            for d in report.safe_depths
        ]
        out += _table(["order", "safe depth", "removed"], rows, sortable=True)
        out += "".join(f"<p><small>Rule: {e(rule)}.</small></p>" for rule in safe_depth_rules(report.safe_depths))
    # one table per task and metric, a column per order (equal curves share one): not a table per curve
    for table in pruning_tables(figures.curve_panels(report.prunings)):
        rows = [
            f"<tr><td class=num>{k}</td>"
            + "".join(f"<td class=num>{_fmt(v) if v is not None else '-'}</td>" for v in values)
            + "</tr>"
            for k, values in table.rows
        ]
        where = f" ({e(table.folder)}/)" if table.folder else ""
        out += f"<details><summary>points: {e(table.title)}{where}</summary>{_table(table.head, rows)}</details>"
    return out


def _finetune_section(report: Report) -> str:
    out = '<h2 id="finetuning">Fine-tuning</h2>'
    caption = "held-out loss before and after each run (an arrow per run, the change beside it)"
    out += _figure(figures.finetune_figure(report.finetunes), caption)
    head, table = finetune_table(report.finetunes)
    rows = []
    for row in table:
        cells = "".join(
            f"<td class=num data-v='{'' if raw is None else f'{raw:.10g}'}'>{e(text)}</td>"
            if i >= NUMERIC_FROM
            else f"<td>{e(text)}</td>"
            for i, (text, raw) in enumerate(row)
        )
        rows.append(f"<tr>{cells}</tr>")
    out += _table(head, rows, sortable=True)
    if len(head) > len(HEAD):
        out += f"<p><small>{e(EVAL_NOTE)}</small></p>"
    return out


def _todo_section(report: Report) -> str:
    out = '<h2 id="todo">What to do</h2>'
    rec = report.recommendation
    out += _recommendation(rec) if rec else f"<p>No fine-tuning selection: {e(report.no_selection)}.</p>"
    out += "".join(f"<p><b>Pruning:</b> {e(advice)}.</p>" for advice in pruning_advice(report.safe_depths))
    return out


def _recommendation(rec: Recommendation) -> str:
    out = f"<p><b>Fine-tune the top {rec.fraction:.0%} of {e(rec.label)} ({e(rec.method)})</b>: {e(rec.summary)}.</p>"
    # beside the selection it is about, before the commands that would act on it
    out += "".join(f'<p class="note">{e(n)}</p>' for n in rec.notes)
    out += (
        f"<details><summary>selected modules</summary><p><code>{e(', '.join(rec.modules))}</code></p></details>"
        "<h3>Commands</h3><pre>" + e("\n".join(rec.commands)) + "</pre>"
    )
    out += "<h3>Configs</h3>"
    for i, (fmt, text) in enumerate(rec.snippets.items()):
        out += f"<details{' open' if i == 0 else ''}><summary>{e(fmt)}</summary><pre>{e(text)}</pre></details>"
    return out


def _sources(report: Report) -> str:
    items = "".join(f"<li><code>{e(s)}</code></li>" for s in report.sources)
    return f"<h2 id=inputs>Inputs</h2><ul>{items}</ul>"
