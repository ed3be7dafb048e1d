"""``layerscope report``: the page is self-contained (HTML parser, everywhere), renders in headless
Chromium without errors (where Chromium is installed), says the same as the Markdown summary, and
refuses bad input with one line and no partial page."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from layerscope.cli.app import main
from layerscope.core.importance import LayerImportance
from layerscope.viz.report import build_report, load_inputs, render
from layerscope.viz.report.load import PruningCurve
from layerscope.viz.report.model import safe_depth

TYPES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
N_BLOCKS = 4
MODULES = [f"layers.{b}.{'self_attn' if t[0] in 'qkvo' else 'mlp'}.{t}" for b in range(N_BLOCKS) for t in TYPES]
SUBLAYERS = [f"layers.{b}.{k}" for b in range(N_BLOCKS) for k in ("self_attn", "mlp")]
BLOCKS = [f"layers.{b}" for b in range(N_BLOCKS)]
MODEL = {"name": "tiny-llama", "architecture": "LlamaForCausalLM", "model_type": "llama", "n_blocks": N_BLOCKS}


def _imp(method, granularity, players, scores, fingerprint="f00d", **kw) -> LayerImportance:
    return LayerImportance(
        method=method,
        granularity=granularity,
        players=players,
        scores=scores,
        model={**MODEL, "fingerprint": fingerprint},
        **kw,
    )


def write_inputs(root: Path, fingerprint: str = "f00d") -> Path:
    """One run folder per method, a fine-tuning report and a pruning curve, as the commands write them."""
    removed = [0.30, 0.60, 0.55, 0.62, 0.58, 0.64, 0.66, 0.61]  # full 0.7, chance 0.25: layers.0.self_attn collapses
    _imp("ila", "module", MODULES, [(i * 7) % 11 / 3 for i in range(len(MODULES))], fingerprint, seed=0).save(
        root / "ila"
    )
    _imp(
        "ablation",
        "sublayer",
        SUBLAYERS,
        [0.7 - v for v in removed],
        fingerprint,
        stderr=[0.02] * len(SUBLAYERS),
        baseline={"full": 0.7, "chance": 0.25},
        method_config={"cornerstone_rule": {"abs_margin": 0.02, "rel_margin": 0.1}},
        extras={"removed_value": removed, "cornerstones": ["layers.0.self_attn"]},
        data={"task": "arc_easy", "n_items": 200},
    ).save(root / "ablation")
    _imp(
        "shapley-permutation",
        "sublayer",
        SUBLAYERS,
        [0.1, 0.05, 0.02, 0.03, 0.01, 0.04, 0.0, 0.06],
        fingerprint,
        stderr=[0.01] * 8,
    ).save(root / "shapley")
    _imp("block-influence", "block", BLOCKS, [0.4, 0.1, 0.15, 0.2], fingerprint).save(root / "similarity")
    (root / "ft").mkdir()
    ft = {
        "method": "lora",
        "selection": {"mode": "top", "fraction": 0.3, "source": {"method": "ila"}},
        "model": {**MODEL, "fingerprint": fingerprint},
        "trainable_params": 1000,
        "total_params": 11000,
        "trainable_modules": 9,
        "steps": 10,
        "heldout_loss_before": 2.5,
        "heldout_loss": 2.1,
        "time_per_step_s": 0.1,
    }
    (root / "ft" / "report.json").write_text(json.dumps(ft))
    (root / "prune").mkdir()
    points = [
        {"n_removed": n, "value": v, "removed": SUBLAYERS[-n:] if n else []}
        for n, v in [(0, 0.7), (1, 0.69), (2, 0.67), (3, 0.5), (4, 0.3)]
    ]
    curve = {
        "kind": "pruning-curve",
        "model": {**MODEL, "fingerprint": fingerprint},
        "baseline": {"full": 0.7, "chance": 0.25},
        "ranking": {"method": "ablation"},
        "points": points,
    }
    (root / "prune" / "pruning.json").write_text(json.dumps(curve))
    return root


class Page(HTMLParser):
    """Every tag with its attributes, and the text."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def text_of(page: str) -> str:
    """The page's text, whitespace collapsed."""
    return " ".join(html.unescape(" ".join(parse(page).text)).split())


EXTERNAL = re.compile(r"^(https?:)?//|^(ftp|ws|wss):", re.I)


def assert_self_contained(text: str) -> list[str]:
    """No external URL anywhere, every image inline; returns the images' data URIs."""
    page = parse(text)
    images = []
    for tag, attrs in page.tags:
        assert tag not in ("link", "iframe", "object", "embed", "base"), tag
        for key in ("src", "href", "data", "srcset", "poster", "action"):
            if key in attrs and attrs[key] is not None:
                assert not EXTERNAL.match(attrs[key].strip()), (tag, key, attrs[key][:80])
        if tag == "script":
            assert "src" not in attrs
        if tag == "img":
            assert attrs["src"].startswith("data:image/"), attrs["src"][:40]
            images.append(attrs["src"])
        if tag == "a" and "href" in attrs:
            assert attrs["href"].startswith("#"), attrs["href"]
    assert "@import" not in text and "url(" not in text
    for uri in images:  # an SVG may name its XML namespaces, and nothing else outside itself
        svg = base64.b64decode(uri.split(",", 1)[1]).decode("utf-8")
        refs = re.findall(r'(?:href|src)="([^"]+)"', svg)
        assert all(r.startswith(("#", "data:")) for r in refs), refs[:3]
    return images


def test_html_report_is_complete_and_self_contained(tmp_path, capsys):
    root = write_inputs(tmp_path / "runs")
    out = tmp_path / "report.html"
    assert main(["report", str(root), "--out", str(out)]) == 0
    assert "4 importance result(s), 1 fine-tuning run(s), 1 pruning curve(s)" in capsys.readouterr().out
    text = out.read_text()
    images = assert_self_contained(text)
    # 4 rankings + ILA has no loss curves here + 1 removed-value chart + pruning + fine-tuning
    assert len(images) == 4 + 1 + 1 + 1
    words = text_of(text)
    # each input's label as a word of the page, not only inside its source path ("ft" is in "left")
    prose = text_of(re.sub(r"<code>.*?</code>", " ", text, flags=re.S))
    for label in ("ila", "ablation", "shapley", "similarity", "ft", "prune"):
        assert re.search(rf"(?<![\w/.-]){label}(?![\w/.-])", prose), label
    for section in ("model", "results", "agreement", "cornerstones", "pruning", "finetuning", "todo"):
        assert f'id="{section}"' in text
    assert "f00d" in words and "LlamaForCausalLM" in words
    assert "Cornerstones: layers.0.self_attn" in words
    # a local model's own name does not load as --model: the command says what to put there
    assert "layerscope finetune --model MODEL" in words and "the folder or hub id tiny-llama was loaded from" in words
    assert "layerscope export" in words
    for fmt in ("peft", "axolotl", "llama-factory"):
        assert f"<summary>{fmt}</summary>" in text
    # 0.67 >= 0.7 - 0.1 * 0.45; 0.5 is not
    assert "Pruning: up to 2 players can go within the tolerance, in the order of prune" in words
    assert "Compared at block level" in words
    assert not list(tmp_path.glob(".report.html.*"))  # the temporary file was renamed away


def test_markdown_says_what_the_page_says(tmp_path, capsys):
    root = write_inputs(tmp_path / "runs")
    assert main(["report", str(root), "--format", "md"]) == 0
    md = capsys.readouterr().out
    report = build_report(load_inputs([root]))
    page = text_of(render(report, "html"))
    assert md.startswith("# layerscope report: tiny-llama")
    for needle in [
        "weights fingerprint: f00d",
        "Cornerstones: layers.0.self_attn",
        "In every method's top",
        "| prune | 2 players |",
        "Pruning: up to 2 players can go within the tolerance, in the order of prune",
        "| ft | top 0.3 (ila) | lora |",
        "layerscope export",
        "--to peft",
        "--to axolotl",
        "--to llama-factory",
    ]:
        assert needle in md, needle
    assert '"peft_type": "LORA"' not in md  # the configs are the export commands' to write, not pasted
    # the same agreement numbers and recommendation in both
    a = report.agreement
    assert a is not None and a.level == "block" and len(a.labels) == 4
    assert f"{a.spearman[0][3]:.2f}" in md and f"{a.spearman[0][3]:.2f}" in page
    rec = report.recommendation
    assert rec is not None and rec.label == "ila" and len(rec.players) == 9  # ceil(0.3 * 28)
    assert rec.modules[0] in md and rec.modules[0] in page


def test_agreement_players_in_every_top(tmp_path):
    root = write_inputs(tmp_path / "runs")
    report = build_report(load_inputs([root / "ablation", root / "shapley", root / "similarity"]), fraction=0.25)
    # top 25% of 4 blocks = 1 block; block 0 leads in all three (ablation: 0.4 + 0.1; shapley 0.15; BI 0.4)
    assert report.agreement.in_every_top == ["layers.0"]
    assert report.recommendation.label == "ablation"  # no ILA, no module ranking: the first one


def test_the_recommendation_passes_over_a_ranking_measured_at_chance(tmp_path):
    """The page warns that an at-chance result's scores mean little; it then recommended fine-tuning from
    it because it came first. It takes a usable one where there is one, and the first where none is."""
    root = tmp_path / "runs"
    blocks = [f"layers.{i}" for i in range(4)]
    _imp("ablation", "block", blocks, [0.4, 0.1, 0.2, 0.3], baseline={"full": 0.25, "chance": 0.25}).save(
        root / "at_chance"
    )
    _imp("ablation", "block", blocks, [0.1, 0.4, 0.2, 0.3], baseline={"full": 0.7, "chance": 0.25}).save(
        root / "usable"
    )
    report = build_report(load_inputs([root / "at_chance", root / "usable"]), fraction=0.25)
    assert report.recommendation.label == "usable"
    assert build_report(load_inputs([root / "at_chance"])).recommendation.label == "at_chance"


def test_a_tied_ranking_is_warned_at_the_top_and_pointed_to_beside_its_selection(tmp_path, capsys):
    """A ranking with every score the same is warned of with the other warnings at the top (it came after
    the configs); beside the selection, before the commands, a pointer to it."""
    root = tmp_path / "runs"
    _imp("ila", "module", MODULES, [0.0] * len(MODULES)).save(root / "ila")
    report = build_report(load_inputs([root / "ila"]))
    (top,) = [n for n in report.notes if "is the same to 5 digits" in n]
    assert top.startswith("ila: every score of the ila ranking") and "by layer, not importance" in top
    (note,) = report.recommendation.notes
    assert note.startswith("this selection follows layer order, not importance: every score of ila is the same")
    page, md = render(report, "html"), render(report, "md")
    escaped = html.escape(top, quote=True)
    assert page.index(escaped) < page.index('id="results"') and page.count(escaped) == 1
    assert page.index(html.escape(note, quote=True)) < page.index("<h3>Commands</h3>")
    assert md.index(top) < md.index("## Results") and md.index(note) < md.index("```sh")


def test_ila_modules_without_gradient_are_noted(tmp_path, capsys):
    root = tmp_path / "runs"
    scores = [(i * 7) % 11 / 3 for i in range(len(MODULES))]
    _imp("ila", "module", MODULES, scores, extras={"untrained_modules": MODULES[4:6]}).save(root / "ila")
    report = build_report(load_inputs([root / "ila"]))
    note = "ila: 2 of 28 modules got no gradient in ILA stage 1 (e.g. layers.0.mlp.gate_proj)"
    assert any(n.startswith(note) for n in report.notes)
    assert note in text_of(render(report, "html")) and note in render(report, "md")


@pytest.mark.parametrize(
    "extras, warned",
    [
        ({"stop_reason": "max_steps", "stop_step": 20, "stage1_stable": False}, True),
        ({"stop_reason": "max_steps", "stop_step": 20}, True),  # a result written before stage1_stable
        ({"stop_reason": "stable", "stop_step": 12, "stage1_stable": True}, False),
        ({"stop_reason": "loaded", "stop_step": 0, "stage1_stable": None}, False),  # a saved adapter reused
    ],
)
def test_ila_whose_stage_1_hit_the_step_cap_is_warned_at_the_top(tmp_path, extras, warned):
    """The warning ``layerscope ila`` prints on the command line, on the page and in the summary too."""
    root = tmp_path / "runs"
    _imp("ila", "module", MODULES, [float(i) for i in range(len(MODULES))], extras=extras).save(root / "ila")
    report = build_report(load_inputs([root / "ila"]))
    note = "ila: ILA stage 1 hit the step cap (step 20) before becoming stable: its ranking may not be stable"
    assert any(n.startswith(note) for n in report.notes) is warned
    page, md = render(report, "html"), render(report, "md")
    assert (note in text_of(page)) is warned and (f"> {note}" in md) is warned
    if warned:  # at the top, as the at-chance warning: before the first result
        assert page.index(html.escape(note, quote=True)) < page.index('id="results"')
        assert md.index(note) < md.index("## Results")


def _write_curve(path: Path, full: float, chance: float, method: str = "ablation") -> None:
    path.mkdir(parents=True, exist_ok=True)
    curve = {
        "kind": "pruning-curve",
        "model": {**MODEL, "fingerprint": "f00d"},
        "granularity": "block",
        "baseline": {"full": full, "chance": chance},
        "ranking": {"method": method},
        "points": [{"n_removed": n, "value": full + 0.05 * n, "removed": BLOCKS[:n]} for n in range(3)],
    }
    (path / "pruning.json").write_text(json.dumps(curve))


def test_pruning_curves_on_a_model_at_chance_are_warned_once_per_baseline(tmp_path):
    """docs/report.md: a result whose full model scores no better than chance gets a warning at the top;
    every curve of one prune-curve task shares that baseline, so one warning names them."""
    root = tmp_path / "curves"
    labels = ["ablation", "angular", "greedy", "last", "random-seed0", "random-seed1"]
    for label in labels:
        _write_curve(root / "arc_easy" / label, 0.1333, 0.25, label)
    _write_curve(root / "piqa" / "greedy-piqa", 0.7, 0.5)  # above chance: no warning
    report = build_report(load_inputs([root]))
    (note,) = report.notes
    assert note.startswith(
        "pruning curves arc_easy/ablation, arc_easy/angular, arc_easy/greedy, arc_easy/last and 2 more: "
        "the full model scores 0.1333"
    )
    assert "no better than chance (0.25)" in note and "greedy-piqa" not in note
    page, md = render(report, "html"), render(report, "md")
    assert note in text_of(page) and f"> {note}" in md
    assert page.index(html.escape(note, quote=True)) < page.index('id="pruning"')
    # within the margin above chance counts as at chance too; one curve is named in the singular
    _write_curve(tmp_path / "one" / "last", 0.255, 0.25)
    (one,) = build_report(load_inputs([tmp_path / "one"])).notes
    assert one.startswith("pruning curve last: the full model scores 0.255, no better than chance (0.25)")
    assert not build_report(load_inputs([root / "piqa"])).notes


def test_a_report_of_pruning_curves_alone_has_no_empty_results_section(tmp_path):
    root = tmp_path / "curves"
    _write_curve(root / "arc_easy" / "ablation", 0.7, 0.25)
    report = build_report(load_inputs([root]))
    page, md = render(report, "html"), render(report, "md")
    assert "## Results" not in md and "## Pruning" in md
    assert 'id="results"' not in page and 'href="#results"' not in page and 'id="pruning"' in page
    assert_self_contained(page)
    # with a result, the section is there
    _imp("block-influence", "block", BLOCKS, [0.4, 0.1, 0.15, 0.2]).save(tmp_path / "bi")
    both = build_report(load_inputs([root, tmp_path / "bi"]))
    assert "## Results" in render(both, "md") and 'id="results"' in render(both, "html")


def test_safe_depth_rule():
    curve = PruningCurve("c", "c.json", {}, [0, 1, 2, 3, 4], [1.0, 0.95, 0.91, 0.95, 0.2], {"full": 1.0, "chance": 0.0})
    assert safe_depth(curve, 0.1).depth == 3  # 0.91 >= 0.9
    assert safe_depth(curve, 0.05).depth == 1  # 0.91 < 0.95 stops it, however good depth 3 is
    assert safe_depth(PruningCurve("c", "c", {}, [0, 1], [1.0, 0.9], {}), 0.1) is None  # no chance: no claim


def _run_report(args, capsys) -> tuple[int, str]:
    code = main(["report", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_text(""), "empty file"),
        (lambda p: p.write_text("{not json"), "invalid JSON"),
        (lambda p: p.write_text(json.dumps({"schema_version": 99, "method": "x", "granularity": "block"})), "newer"),
        (lambda p: p.write_text(json.dumps({"hello": 1})), "not an importance result"),
    ],
    ids=["empty", "corrupt", "newer-schema", "unrecognised"],
)
def test_bad_file_one_line_exit_2_no_page(tmp_path, capsys, make, message):
    root = write_inputs(tmp_path / "runs")
    bad = tmp_path / "importance.json"
    make(bad)
    out = tmp_path / "report.html"
    code, err = _run_report([str(root), str(bad), "--out", str(out)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_damaged_run_below_the_folder_is_left_out_and_said(tmp_path, capsys):
    root = write_inputs(tmp_path / "runs")
    (root / "zz_broken").mkdir()
    (root / "zz_broken" / "importance.json").write_text("{not json")
    out = tmp_path / "report.md"
    code, err = _run_report([str(root), "--out", str(out)], capsys)
    assert code == 0 and "layerscope report: warning: skipped " in err and "zz_broken" in err
    text = out.read_text()
    assert "left out, cannot be read:" in text and "zz_broken/importance.json: invalid JSON" in text
    with pytest.warns(UserWarning, match="skipped"):
        assert len(build_report(load_inputs([root])).results) == 4  # every readable run is there
    # the folder's own run file is named by the caller: refused
    (root / "ila" / "importance.json").write_text("{not json")
    code, err = _run_report([str(root / "ila"), "--out", str(out)], capsys)
    assert code == 2 and "invalid JSON" in err


def test_a_result_of_an_older_version_is_not_held_to_a_new_fingerprint(tmp_path, capsys):
    """0.2.0 fingerprinted the exact weights, later versions read them at bfloat16's precision: the same model
    gives two fingerprints, which a report does not compare (one kind against the other)."""
    a = write_inputs(tmp_path / "a")  # no fingerprint_precision: an older result
    b = tmp_path / "b"
    new = _imp("block-influence", "block", BLOCKS, [0.1, 0.2, 0.3, 0.4], fingerprint="beef")
    new.model["fingerprint_precision"] = "bfloat16"
    new.save(b / "newer")
    out = tmp_path / "report.html"
    assert _run_report([str(a), str(b), "--out", str(out)], capsys)[0] == 0
    other = _imp("block-influence", "block", BLOCKS, [0.1, 0.2, 0.3, 0.4], fingerprint="cafe")
    other.model["fingerprint_precision"] = "bfloat16"
    other.save(b / "other")  # two of the new kind still have to agree
    code, err = _run_report([str(a), str(b), "--out", str(tmp_path / "r2.html")], capsys)
    assert code == 2 and "different models" in err and "cafe" in err


def test_results_of_different_models_refused(tmp_path, capsys):
    a = write_inputs(tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()
    _imp("block-influence", "block", BLOCKS, [0.1, 0.2, 0.3, 0.4], fingerprint="beef").save(b / "other")
    out = tmp_path / "report.html"
    code, err = _run_report([str(a), str(b), "--out", str(out)], capsys)
    assert code == 2 and "different models" in err and "beef" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    # the error names the input that gave the other fingerprint, not merely the first input read
    c = tmp_path / "c"
    _imp("block-influence", "block", BLOCKS, [0.1, 0.2, 0.3, 0.4], fingerprint="").save(c / "a_no_fingerprint")
    _imp("block-influence", "block", BLOCKS, [0.1, 0.2, 0.3, 0.4], fingerprint="f00d").save(c / "b_f00d")
    _imp("block-influence", "block", BLOCKS, [0.1, 0.2, 0.3, 0.4], fingerprint="beef").save(c / "c_beef")
    code, err = _run_report([str(c), "--out", str(out)], capsys)
    assert code == 2 and "b_f00d" in err and "a_no_fingerprint" not in err
    # without a fingerprint, block count and architecture are all there is: another model name is noted
    d = tmp_path / "d"
    _imp("block-influence", "block", BLOCKS, [0.1, 0.2, 0.3, 0.4], fingerprint="f00d").save(d / "a_f00d")
    other = _imp("block-influence", "block", BLOCKS, [0.1, 0.2, 0.3, 0.4], fingerprint="")
    other.model["name"] = "some-other-model"
    other.save(d / "b_unfingerprinted")
    md = tmp_path / "report.md"
    code, err = _run_report([str(d), "--out", str(md), "--format", "md"], capsys)
    assert code == 0, err  # names may differ for one model ("default"): said, not refused
    text = md.read_text()
    assert "b_unfingerprinted" in text and "some-other-model" in text and "check that they are one model" in text
    # ... and the same name under its hub organisation is the same model: nothing to say
    other.model["name"] = f"someorg/{MODEL['name']}"
    other.save(d / "b_unfingerprinted")
    code, err = _run_report([str(d), "--out", str(md), "--format", "md"], capsys)
    assert code == 0 and "check that they are one model" not in md.read_text()


def test_results_deeper_than_the_search_are_named_not_skipped_silently(tmp_path, capsys):
    root = write_inputs(tmp_path / "runs")
    deep = root / "curves" / "arc_easy" / "greedy"
    deep.mkdir(parents=True)
    (deep / "pruning.json").write_text((next(root.rglob("pruning.json"))).read_text())
    code, err = _run_report([str(root), "--out", str(tmp_path / "r.html")], capsys)
    assert code == 0 and "1 result file lies deeper than 2 folders" in err and "curves/arc_easy" in err
    # its folder passed too: it is read, so nothing to say (the note said "pass their folder" all the same)
    code, err = _run_report([str(root), str(root / "curves" / "arc_easy"), "--out", str(tmp_path / "r.html")], capsys)
    assert code == 0 and "deeper" not in err, err
    assert len(build_report(load_inputs([root, root / "curves" / "arc_easy"])).prunings) == 2


def test_empty_folder_and_missing_path(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = _run_report([str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")], capsys)
    assert code == 2 and "no importance, fine-tuning or pruning result" in err
    code, err = _run_report([str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")], capsys)
    assert code == 2 and "no such file or folder" in err
    assert not (tmp_path / "r.html").exists()


# ----------------------------------------------------------------------------- --out: its format, what it may replace


@pytest.mark.parametrize(
    "name, fmt",
    [("r.md", "md"), ("R.Markdown", "md"), ("r.html", "html"), ("r.htm", "html"), ("r.txt", "html"), ("r", "html")],
)
def test_format_follows_the_out_suffix(tmp_path, capsys, name, fmt):
    root = write_inputs(tmp_path / "runs")
    out = tmp_path / "sub" / name  # a missing parent folder is made
    code, err = _run_report([str(root), "--out", str(out)], capsys)
    assert code == 0, err
    text = out.read_text()
    assert text.startswith("# layerscope report: tiny-llama" if fmt == "md" else "<!DOCTYPE html>"), text[:40]


def test_format_given_wins_over_an_unknown_suffix(tmp_path, capsys):
    root = write_inputs(tmp_path / "runs")
    out = tmp_path / "r.txt"
    assert _run_report([str(root), "--format", "md", "--out", str(out)], capsys)[0] == 0
    assert out.read_text().startswith("# layerscope report: ")


@pytest.mark.parametrize("fmt, name", [("html", "r.md"), ("md", "r.html"), ("md", "r.HTM")])
def test_format_the_out_suffix_contradicts_is_refused_before_any_work(tmp_path, capsys, fmt, name):
    out = tmp_path / name
    # the input does not exist: refused for the format first, so before anything is read
    code, err = _run_report([str(tmp_path / "nope"), "--format", fmt, "--out", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--format {fmt} writes a" in err and f"not {Path(name).suffix}" in err and str(out) in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name, opening", [("r2.md", "# layerscope report: "), ("r2.HTML", "<!DOCTYPE html>")])
def test_write_report_takes_the_format_from_out_as_the_command_does(tmp_path, name, opening):
    from layerscope.viz.report import write_report

    root = write_inputs(tmp_path / "runs")
    text, _ = write_report([root / "ablation", str(root / "shapley")], tmp_path / name)
    assert text.startswith(opening) and (tmp_path / name).read_text() == text
    # one path is one run, as a str or a path (a str was read as its characters)
    for one in (str(root / "ablation"), root / "ablation"):
        text, report = write_report(one, None, "md")
        assert text.startswith("# layerscope report: ") and len(report.results) == 1


@pytest.mark.parametrize("fmt, name", [("html", "r.md"), ("md", "r.htm")])
def test_write_report_refuses_a_format_its_out_contradicts(tmp_path, fmt, name):
    from layerscope.core.errors import ConfigError
    from layerscope.viz.report import write_report

    out = tmp_path / name
    with pytest.raises(ConfigError) as e:  # before anything is read: the input does not exist
        write_report(tmp_path / "nope", out, fmt)
    message = str(e.value)
    assert message.startswith(f"out='{out}': fmt='{fmt}' writes a ") and "leave fmt out" in message
    assert "--" not in message.replace(str(out), "") and "\n" not in message
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="^fmt='pdf' must be one of html, md$"):
        write_report(tmp_path / "nope", None, "pdf")


@pytest.mark.parametrize("name", ["r.pdf", "r.txt", "report"])
def test_write_report_refuses_an_out_whose_suffix_names_no_format(tmp_path, name):
    """It wrote HTML into r.pdf without a word; the command's --out r.txt still writes html, as its help says."""
    from layerscope.core.errors import ConfigError
    from layerscope.viz.report import write_report

    root = write_inputs(tmp_path / "runs")
    out = tmp_path / name
    with pytest.raises(ConfigError) as e:
        write_report(root, out)
    message = str(e.value)
    assert message.startswith(f"out='{out}': a report is HTML or Markdown, named .html, .htm, .md or .markdown, ")
    assert "give fmt" in message and "\n" not in message and not out.exists()
    text, _ = write_report(root, out, "md")  # a format given names what the file holds: written under any name
    assert text.startswith("# layerscope report: ") and out.read_text() == text


@pytest.mark.parametrize(
    "paths, kind", [(None, "NoneType"), (3, "int"), (b"runs", "bytes"), ({"a": 1}, "dict"), (["runs", 2], "int")]
)
def test_write_report_refuses_paths_of_another_type_in_one_line(tmp_path, paths, kind):
    from layerscope.core.errors import ConfigError
    from layerscope.viz.report import write_report

    with pytest.raises(ConfigError, match=f"^paths must be a path or a list of paths \\(got a {kind}( among them)?"):
        write_report(paths, None)
    with pytest.raises(ConfigError, match="^out must be a file path or None \\(got a list\\)$"):
        write_report(tmp_path, [tmp_path / "r.md"])


def test_a_pruned_model_folder_is_named_with_what_report_reads_instead(tmp_path):
    """`layerscope prune`'s output holds a model and its note: report said "no importance, fine-tuning or
    pruning result in this folder", as if the pruning were lost."""
    from layerscope.core.errors import DataError
    from layerscope.viz.report.load import load_inputs

    pruned = tmp_path / "pruned"
    pruned.mkdir()
    (pruned / "pruning_note.json").write_text(json.dumps({"kind": "pruned-model", "n_blocks_after": 4}))
    for given in (pruned, pruned / "pruning_note.json"):
        with pytest.raises(
            DataError, match=r"a pruned model \(layerscope prune\), .* pruning curves of layerscope prune-curve"
        ):
            load_inputs(given)


FOREIGN = "my notes, not a report\n"


@pytest.mark.parametrize("name", ["notes.txt", "report.html", "notes.md"])
def test_an_existing_file_that_is_not_a_report_is_refused_and_left_alone(tmp_path, capsys, name):
    root = write_inputs(tmp_path / "runs")
    out = tmp_path / name
    out.write_text(FOREIGN)
    code, err = _run_report([str(root), "--out", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--out {out}: exists and is not a layerscope report; --overwrite replaces it" in err
    assert out.read_text() == FOREIGN
    assert not list(tmp_path.glob(f".{name}.*"))  # no temporary file either
    # refused before any work: a missing input is not even looked at
    code, err = _run_report([str(tmp_path / "nope"), "--out", str(out)], capsys)
    assert code == 2 and "not a layerscope report" in err and "nope" not in err


def test_overwrite_replaces_a_file_that_is_not_a_report(tmp_path, capsys):
    root = write_inputs(tmp_path / "runs")
    out = tmp_path / "notes.txt"
    out.write_text(FOREIGN)
    code, err = _run_report([str(root), "--out", str(out), "--overwrite"], capsys)
    assert code == 0, err
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_a_report_layerscope_wrote_is_replaced_without_overwrite(tmp_path, capsys, monkeypatch):
    root = write_inputs(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the default --out, report.html here, twice
        code, err = _run_report([str(root)], capsys)
        assert code == 0, err
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    md = tmp_path / "report.md"
    for _ in range(2):
        assert _run_report([str(root), "--out", str(md)], capsys)[0] == 0
    # either format's report counts as one: Markdown over an HTML page and back
    assert _run_report([str(root), "--out", str(tmp_path / "report.html"), "--format", "html"], capsys)[0] == 0
    (tmp_path / "page.html").write_text(md.read_text())
    assert _run_report([str(root), "--out", str(tmp_path / "page.html")], capsys)[0] == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_is_report_file_knows_both_renderings(tmp_path):
    from layerscope.viz.report import is_report_file

    report = build_report(load_inputs([write_inputs(tmp_path / "runs")]))
    for fmt in ("html", "md"):
        path = tmp_path / f"r.{fmt}"
        path.write_text(render(report, fmt))
        assert is_report_file(path)
    (tmp_path / "other.html").write_text("<!DOCTYPE html>\n<html><head><title>x</title></head></html>")
    (tmp_path / "empty.md").write_text("")
    (tmp_path / "binary").write_bytes(bytes(range(256)))
    for name in ("other.html", "empty.md", "binary", "missing"):
        assert not is_report_file(tmp_path / name)


def test_out_naming_a_folder_is_refused(tmp_path, capsys):
    root = write_inputs(tmp_path / "runs")
    (tmp_path / "r.html").mkdir()
    for extra in ([], ["--overwrite"]):
        code, err = _run_report([str(root), "--out", str(tmp_path / "r.html"), *extra], capsys)
        assert code == 2 and "is a folder; give a file name" in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "r.html").iterdir())


# ----------------------------------------------------------------------------- a real model, a real browser


@pytest.fixture(scope="module")
def real_results(tmp_path_factory, stories):
    """Sub-layer and module ablation (held-out loss) and block influence of stories260K."""
    from layerscope.core.data import load_sft
    from layerscope.core.layermap import build_layer_map
    from layerscope.methods.ablation import ablate
    from layerscope.methods.similarity import block_influence
    from layerscope.scoring import LossEvaluator

    model, tok = stories
    root = tmp_path_factory.mktemp("stories_runs")
    lm = build_layer_map(model)
    data = load_sft("demo", tok, max_length=64, limit=8, shuffle_seed=0)
    evaluator = LossEvaluator(tok, data.examples, batch_size=8)
    for gran in ("sublayer", "module"):
        ablate(model, evaluator, gran, layer_map=lm, model_name="stories260K").save(root / f"ablation_{gran}")
    block_influence(model, lm, [e.input_ids for e in data.examples], model_name="stories260K").save(root / "bi")
    return root


def test_report_of_real_results(real_results, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", str(real_results), "--out", str(out)]) == 0
    text = out.read_text()
    assert len(assert_self_contained(text)) >= 4  # three rankings and the removed-value chart(s)
    assert "stories260K" in text and "ablation_module" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PROBE = """<script>window.__probe=[];(function(){var ce=console.error;
console.error=function(){window.__probe.push('console.error: '+Array.prototype.join.call(arguments,' '));
ce.apply(console,arguments);};
window.addEventListener('error',function(ev){window.__probe.push('error: '+(ev.message||
(ev.target&&(ev.target.src||ev.target.href))||'?'));},true);
window.addEventListener('load',function(){var th=document.querySelector('table.sortable th');
if(th){th.click();th.click();}
var imgs=Array.prototype.map.call(document.images,function(i){var r=i.getBoundingClientRect();
return [i.naturalWidth,i.naturalHeight,r.width,r.height];});
var res=performance.getEntriesByType('resource').map(function(x){return x.name;});
var pre=document.createElement('pre');pre.id='layerscope-probe';
pre.textContent=JSON.stringify({errors:window.__probe,images:imgs,requests:res,
width:document.documentElement.clientWidth,scroll:document.documentElement.scrollWidth});
(window.parent!==window?parent.document.body:document.body).appendChild(pre);});})();</script>"""


def browse(page: Path, width: int = 1280) -> dict:
    """Load ``page`` (with the probe script injected first) in headless Chromium; what the probe saw.

    Headless Chromium keeps its window at least ~500 px wide, so narrower widths (a phone) are
    laid out in an iframe of that width (``srcdoc``: same origin, so the probe can report out)."""
    probed = page.with_name("probed_" + page.name)
    text = page.read_text().replace("<head>", "<head>" + PROBE, 1)
    if width < 600:
        frame = f'<iframe style="width:{width}px;height:3000px;border:0" srcdoc="{html.escape(text)}"></iframe>'
        text = f"<!DOCTYPE html><html><head></head><body style='margin:0'>{frame}</body></html>"
    probed.write_text(text)
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
    ]  # containers' small /dev/shm
    cmd += [f"--window-size={max(width, 800)},2000"]
    cmd += ["--virtual-time-budget=5000", "--dump-dom", probed.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="layerscope-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe did not report (chromium exit {done.returncode}): {done.stderr[-400:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")
def test_report_renders_in_chromium(real_results, tmp_path):
    out = tmp_path / "report.html"
    write_inputs(tmp_path / "synthetic")
    assert main(["report", str(real_results), "--out", str(out)]) == 0
    n_images = len(assert_self_contained(out.read_text()))
    for width in (1280, 400):
        seen = browse(out, width)
        assert seen["errors"] == [] and seen["requests"] == [], seen
        assert len(seen["images"]) == n_images
        assert seen["scroll"] <= seen["width"] <= width  # nothing makes the page scroll sideways
        for natural_w, natural_h, w, h in seen["images"]:
            assert natural_w > 0 and natural_h > 0 and w > 0 and h > 0
            assert w <= seen["width"]  # scaled to the screen, never wider
    # the probe does catch what it looks for
    bad = tmp_path / "bad.html"
    bad.write_text(out.read_text().replace("</main>", '<img src="file:///nonexistent.png"></main>'))
    assert any("nonexistent" in e for e in browse(bad)["errors"])


def test_user_strings_missing_scores_and_fraction_are_shown_as_they_are(tmp_path, capsys):
    """A `$` in a label draws as written; a score saved as null is NaN again (no traceback, Spearman over the
    scored players); ILA's time is its total, not stage 1 + stage 2 + total; the heatmap boxes the --fraction."""
    root = tmp_path / "runs"
    ila = _imp("ila", "module", MODULES, [(i * 7) % 11 / 3 for i in range(len(MODULES))])
    ila.timings = {"stage1_s": 20.0, "stage2_s": 10.0, "total_s": 30.0}
    ila.save(root / "cost$5_vs_$10")
    scores = [0.4, float("nan"), 0.15, 0.2]
    _imp("block-influence", "block", BLOCKS, scores).save(root / "similarity")
    assert json.loads((root / "similarity" / "importance.json").read_text())["scores"][1] is None
    assert math.isnan(LayerImportance.load(root / "similarity").scores[1])
    out = tmp_path / "report.html"
    assert main(["report", str(root), "--fraction", "0.2", "--out", str(out)]) == 0
    capsys.readouterr()
    page = text_of(out.read_text())
    assert "cost$5_vs_$10" in page and "red boxes: top 20%" in page and "30.0 s" in page and "60.0 s" not in page
    report = build_report(load_inputs([root]), fraction=0.2)
    assert math.isfinite(report.agreement.spearman[0][1])  # over the three blocks both scored
    assert main(["report", str(root), "--format", "md", "--out", "-"]) == 0
    assert capsys.readouterr().out.startswith("# layerscope report") and not Path("-").exists()


def test_a_score_that_is_not_a_number_is_refused(tmp_path, capsys):
    root = tmp_path / "runs"
    _imp("block-influence", "block", BLOCKS, [0.4, 0.1, 0.15, 0.2]).save(root / "similarity")
    path = root / "similarity" / "importance.json"
    d = json.loads(path.read_text())
    d["scores"][2] = "high"
    path.write_text(json.dumps(d))
    assert main(["report", str(root), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "the score of 'layers.2' is not a number" in err and len(err.strip().splitlines()) == 1


def test_pruning_curves_say_what_was_removed_and_in_which_order(tmp_path):
    """prune-curve's files name their granularity: the page counts blocks, names each curve's order, and
    draws each curve against its own full-model line when the curves were measured on different tasks."""
    root = write_inputs(tmp_path / "runs")
    for name, full in (("prune", 0.7), ("prune_piqa", 0.65)):
        (root / name).mkdir(exist_ok=True)
        curve = {
            "kind": "pruning-curve",
            "model": {**MODEL, "fingerprint": "f00d"},
            "granularity": "block",
            "baseline": {"full": full, "chance": 0.25},
            "ranking": {"method": "block-influence"},
            "points": [{"n_removed": n, "value": full - 0.01 * n, "removed": BLOCKS[:n]} for n in range(3)],
        }
        (root / name / "pruning.json").write_text(json.dumps(curve))
    report = build_report(load_inputs([root]))
    page, md = text_of(render(report, "html")), render(report, "md")
    assert "value as blocks are removed" in page and "up to 2 blocks can go within the tolerance" in page
    assert "prune (block-influence)" in page and "| prune | 2 blocks |" in md


# ----------------------------------------------------------------------------- figures: what they say


def test_plot_labels_name_the_metric_and_which_way_is_important():
    from layerscope.viz.heatmap import module_heatmap_figure
    from layerscope.viz.plots import bar_figure

    def ylabel(imp, what="auto"):
        return " ".join(bar_figure(imp, what=what).axes[0].get_ylabel().split())

    removed = [0.30, 0.60, 0.55, 0.62, 0.58, 0.64, 0.66, 0.61]
    acc = _imp(
        "ablation",
        "sublayer",
        SUBLAYERS,
        [0.7 - v for v in removed],
        baseline={"full": 0.7, "chance": 0.25},
        extras={"removed_value": removed},
        data={"task": "arc_easy", "metric": "acc_norm"},
    )
    # one convention for a result's own chart, `plot` and the report: the scores, higher = more important
    assert ylabel(acc) == ylabel(acc, "scores")
    assert "acc_norm" in ylabel(acc) and "higher = more important" in ylabel(acc)
    assert "acc_norm with the player removed" in ylabel(acc, "removed_value")
    assert "lower = more important" in ylabel(acc, "removed_value")
    loss = _imp("ablation", "sublayer", SUBLAYERS, [0.1] * 8, data={"task": "loss", "metric": "-loss"})
    assert "loss increase when removed" in ylabel(loss) and "higher = more important" in ylabel(loss)
    angular = _imp("angular-distance", "block", BLOCKS, [0.2, 0.1, 0.3, 0.4], method_config={"window": 2})
    assert "d(l, l+2)" in ylabel(angular) and "lowest = pruning candidates" in ylabel(angular)
    meaning = "gate logit s_i; the gate is sigmoid(s_i); higher = more important"
    ila = _imp("ila", "module", MODULES, [i / 10 for i in range(len(MODULES))], extras={"score_meaning": meaning})
    colourbar = module_heatmap_figure(ila).axes[-1].get_ylabel()
    assert "gate logit s_i" in colourbar and "higher = more important" in colourbar


def test_the_clipping_rule_picks_only_values_far_outside_the_rest():
    from layerscope.viz.plots import outliers

    rest = [0.1, 0.05, 0.2, 0.15, 0.12, 0.3, 0.08, 0.22, 0.18, 0.25]
    assert outliers(rest) == []  # an ordinary spread: nothing clipped
    assert outliers([9.5, *rest, 4.8]) == [0, 11]  # demo ablation: two bars far beyond the rest
    # 1.0 is beyond 5 IQR of the others, but clipping it gains little: 0.6 keeps them on half the axis
    assert outliers([*rest, 0.6, 1.0], max_count=1) == []
    assert outliers([-6.0, *rest]) == [0]  # below as well as above
    assert outliers([9.5, 0.1, 0.2, 0.3]) == []  # too few values to call one an outlier
    assert outliers([4.0, 4.0, 4.0, *rest]) == []  # three alike, two may go: the third keeps them on the axis
    assert outliers([4.0, 4.0, 4.0, *rest], max_count=3) == [0, 1, 2]
    closed, opening = [-1.9 + 0.02 * i for i in range(40)], [-0.5 + 0.3 * i for i in range(11)]
    tail = closed + opening + [2.9, 3.3, 3.7, 4.0, 4.4, 5.2, 5.8]  # ILA's gates: most shut, a tail open
    assert outliers(tail, max_count=7) == []  # a long tail, not outliers: the scale keeps them


def test_a_clipped_bar_writes_its_value_and_the_heatmap_keeps_exact_numbers():
    from layerscope.viz.heatmap import module_heatmap_figure
    from layerscope.viz.plots import bar_figure

    players = [f"layers.{b}" for b in range(12)]
    scores = [0.98] + [0.03 + 0.004 * i for i in range(11)]  # block influence: block 0 far above the rest
    ax = bar_figure(_imp("block-influence", "block", players, scores)).axes[0]
    assert ax.get_ylim()[1] < 0.2  # the axis fits the others
    assert "0.98" in [t.get_text() for t in ax.texts]
    assert any("clipped" in t.get_text() for t in ax.get_legend().get_texts())  # the note
    # a low outlier between zero and the rest is on the axis (bars start at zero): nothing clipped
    low = [0.49, 0.5, 0.48, 0.51, 0.49, 0.5, 0.25, 0.49, 0.5, 0.48, 0.5, 0.49]
    ax = bar_figure(_imp("block-influence", "block", players, low)).axes[0]
    legend = ax.get_legend()  # blocks have no kinds to explain: a legend only for what is clipped
    assert not ax.texts and (legend is None or not any("clipped" in t.get_text() for t in legend.get_texts()))
    grid = [4.0 if "mlp" in p and p.startswith("layers.0.") else 0.1 + 0.01 * i for i, p in enumerate(MODULES)]
    fig = module_heatmap_figure(_imp("ablation", "module", MODULES, grid))
    assert fig.axes[0].images[0].get_clim()[1] < 1.0
    assert "clipped" in fig.axes[0].get_title() and "4.00" in [t.get_text() for t in fig.axes[0].texts]


def test_ila_loss_plot_smooths_names_its_axis_and_merges_legends():
    from layerscope.viz.heatmap import loss_figure, smoothing_window

    assert smoothing_window(32) >= 3 and smoothing_window(4) == 1
    extras = {
        "stage1_loss": [2.0 - 0.05 * i + 0.3 * (i % 2) for i in range(32)],
        "stage2_loss": [0.3 + 0.1 * (i % 3) for i in range(16)],
        "stage2_penalty": [0.95 - 0.03 * i for i in range(16)],
    }
    fig = loss_figure(_imp("ila", "module", MODULES, [0.0] * len(MODULES), extras=extras))
    fig.canvas.draw()
    ax1, ax2 = fig.axes[:2]
    assert ax1.get_ylabel() == ax2.get_ylabel() == "loss (nats)"
    labels = [t.get_text() for t in ax2.get_legend().get_texts()]
    assert any("mean gate" in lab for lab in labels) and any("task loss" in lab for lab in labels)
    per_step, mean = ax1.get_lines()[:2]
    assert list(per_step.get_ydata()) != list(mean.get_ydata())  # the moving mean is no copy of the steps
    for ax in (ax1, ax2):  # below the axes, never over a curve
        assert ax.get_legend().get_window_extent().y1 <= ax.get_window_extent().y0


def test_tie_advice_does_not_suggest_the_loss_task_a_result_already_used(tmp_path):
    # zeroing q_proj or k_proj (gate/up/down) gives one value: a block's modules tie exactly
    level = {"q_proj": 2.0, "k_proj": 2.0, "v_proj": 2.5, "o_proj": 2.5}
    scores = [level.get(p.rsplit(".", 1)[1], 4.0) / (1 + int(p.split(".")[1])) for p in MODULES]
    notes = {}
    for name, data in (("loss", {"task": "loss", "metric": "-loss"}), ("acc", {"task": "arc_easy", "metric": "acc"})):
        _imp("ablation", "module", MODULES, scores, data=data).save(tmp_path / name)
        (notes[name],) = build_report(load_inputs([tmp_path / name])).recommendation.notes
    assert "--task loss" in notes["acc"]
    assert "--task loss" not in notes["loss"] and "the ties are exact" in notes["loss"]
    assert "layer order" in notes["loss"] and "more data would not separate them" in notes["loss"]


def test_figures_with_many_players_get_the_full_width(tmp_path):
    wide = {**MODEL, "n_blocks": 20}
    LayerImportance("block-influence", "block", [f"layers.{b}" for b in range(20)], [0.1] * 20, wide).save(
        tmp_path / "wide"
    )
    page = render(build_report(load_inputs([tmp_path / "wide"])), "html")
    assert '<div class="pair">' not in page  # the details go below the figure
    narrow = render(build_report(load_inputs([write_inputs(tmp_path / "runs") / "similarity"])), "html")
    assert '<div class="pair">' in narrow


def test_a_resumed_runs_time_says_it_covers_that_run_alone():
    """--resume of a finished ablation takes every value from the log in ~0 s: the time is that run's, said so."""
    from layerscope.viz.report.provenance import provenance

    imp = _imp("ablation", "block", ["layers.0", "layers.1"], [0.1, 0.2], timings={"seconds": 0.0027})
    assert dict(provenance(imp))["time taken"] == "0.0 s"
    imp.extras["engine"] = {"resumed": 3}
    assert (
        dict(provenance(imp))["time taken"] == "0.0 s (this run's; 3 coalitions were taken from an earlier run's log)"
    )


def test_a_loss_result_names_its_data_file_in_titles_and_the_report():
    """Two ablations on --task loss:A and loss:B read "loss" alike in the report and in every plot title."""
    from layerscope.viz.plots import result_title
    from layerscope.viz.report.provenance import provenance

    imp = _imp("ablation", "block", BLOCKS, [0.4, 0.3, 0.2, 0.1], data={"task": "loss", "source": "/d/lima.json"})
    assert result_title(imp) == "ablation - tiny-llama - loss lima"
    assert dict(provenance(imp))["data / task"] == "loss:/d/lima.json"
    arc = _imp("ablation", "block", BLOCKS, [0.4, 0.3, 0.2, 0.1], data={"task": "arc_easy", "source": "/d/a.jsonl"})
    assert result_title(arc) == "ablation - tiny-llama - arc_easy"
    assert dict(provenance(arc))["data / task"] == "arc_easy"


def test_cornerstones_of_a_model_at_chance_are_not_assessed_rather_than_none(tmp_path):
    """ "Cornerstones: none" beside removals that score under chance read as a contradiction: with the full
    model at chance already, no removal can drop it there, and the page says so."""
    root = tmp_path / "runs"
    subs = [f"layers.{b}.{s}" for b in range(N_BLOCKS) for s in ("self_attn", "mlp")]
    extras = {"removed_value": [0.125] * len(subs), "cornerstones": []}
    cfg = {"cornerstone_rule": {"abs_margin": 0.02, "rel_margin": 0.1}}
    base = {"full": 0.1875, "chance": 0.25}
    _imp("ablation", "sublayer", subs, [0.06] * len(subs), extras=extras, baseline=base, method_config=cfg).save(
        root / "abl"
    )
    report = build_report(load_inputs([root / "abl"]))
    expected = "not assessed: the full model is at chance already, so no removal can drop it there"
    assert report.cornerstones[0].summary == expected
    assert f"Cornerstones: {expected}" in render(report, "md")
    assert expected in text_of(render(report, "html"))


def test_identical_curves_are_drawn_once_and_the_advice_is_one_line():
    """A prune-curve run has a dozen curves, often several the same: each was a legend entry over a hidden
    line and a paragraph of its own."""
    from layerscope.viz.heatmap import merged_lines
    from layerscope.viz.report.model import SafeDepth, pruning_advice

    lines = [("a", [0, 1], [1.0, 0.5]), ("b", [0, 1], [1.0, 0.4]), ("c", [0, 1], [1.0, 0.5])]
    assert [label for label, _, _ in merged_lines(lines)] == ["a (= c)", "b"]

    def depth(label, n, task="piqa", unit="blocks"):
        return SafeDepth(label, n, BLOCKS[:n], 0.6, "rule", unit=unit, measured_on=task)

    assert pruning_advice([depth("ila", 2), depth("last", 1), depth("random-seed0", 3)]) == [
        "up to 2 blocks can go within the tolerance, in the order of ila (layers.0, layers.1)"
    ]
    assert pruning_advice([depth("ila", 0)]) == ["no ranked order removes even one block within the tolerance"]
    assert pruning_advice([]) == []
    # depths on two tasks, or in blocks and in sub-layers, are not one number: a line each, named
    mixed = [depth("ila", 1), depth("last", 3, task="arc_easy"), depth("ablation", 2, unit="sublayers")]
    assert pruning_advice(mixed) == [
        "on piqa (blocks): up to 1 block can go within the tolerance, in the order of ila (layers.0)",
        "on arc_easy (blocks): up to 3 blocks can go within the tolerance, in the order of last "
        "(layers.0, layers.1, layers.2)",
        "on piqa (sublayers): up to 2 sublayers can go within the tolerance, in the order of ablation "
        "(layers.0, layers.1)",
    ]


def test_jaccard_cells_are_white_at_the_random_overlap():
    """0.33 against random sets' 0.30 was coloured as agreement; colour now measures overlap beyond chance."""
    from layerscope.viz.report.html import _above_random, _colour

    assert _colour(_above_random(0.30, 0.30), -1.0) == "#ffffff"
    assert _above_random(1.0, 0.3) == 1.0 and _above_random(0.0, 0.3) == -1.0
    assert _above_random(0.33, 0.30) < 0.05


def test_agreement_grids_number_their_columns():
    """Run-folder names as column heads made a grid of seven results wider than a 1200-px page."""
    from layerscope.viz.report.html import _grid
    from layerscope.viz.report.markdown import _matrix

    labels = ["ablation", "shapley_permutation_arc_easy"]
    page = _grid(labels, [[1.0, 0.5], [0.5, 1.0]], -1.0)
    assert '<th class=num title="shapley_permutation_arc_easy">2</th>' in page
    assert "<th>shapley_permutation_arc_easy <small>[2]</small></th>" in page
    md = _matrix(labels, [[1.0, 0.5], [0.5, 1.0]])
    assert md[0] == "|  | [1] | [2] |" and md[3] == "| shapley_permutation_arc_easy [2] | 0.50 | 1.00 |"


# ----------------------------------------------------------------------------- QA findings: what the page may not claim


def _blocks_run(root: Path, name: str, scores, **kw) -> None:
    _imp(kw.pop("method", "block-influence"), "block", BLOCKS, scores, **kw).save(root / name)


def test_agreement_shows_compares_tie_notes_and_marks_what_is_no_agreement(tmp_path):
    """compare's tie notes were dropped from the page; a Jaccard with a top set ties decided was coloured
    as agreement; a constant ranking's Spearman (undefined) showed as 0.00."""
    root = tmp_path / "runs"
    _blocks_run(root, "all_equal", [0.5] * 4)
    _blocks_run(root, "first", [0.4, 0.3, 0.2, 0.1])
    _blocks_run(root, "second", [0.4, 0.1, 0.3, 0.2])
    report = build_report(load_inputs([root]), fraction=0.25)
    a = report.agreement
    (tie,) = [n for n in a.notes if n.startswith("all_equal: top 25%: every score")]
    assert "layer order, not importance" in tie
    assert a.no_order == ["all_equal"] and a.tied_top == ["all_equal"]
    assert math.isnan(a.spearman[0][1]) and a.spearman_undefined[0][1] and not a.spearman_undefined[1][2]
    assert a.jaccard_tied[0][1] and a.jaccard_tied[1][0] and not a.jaccard_tied[1][2]
    page, md = render(report, "html"), render(report, "md")
    section = page[page.index('id="agreement"') : page.index('id="todo"')]
    assert html.escape(tie, quote=True) in section  # beside the grids, not only on the command line
    spearman_row = re.search(r"<th>all_equal <small>\[1\]</small></th>(.*?)</tr>", section).group(1)
    assert "undef." in spearman_row and "0.00" not in spearman_row
    jaccard = section[section.index("Jaccard overlap") :]
    tied_row = re.search(r"<th>all_equal <small>\[1\]</small></th>(.*?)</tr>", jaccard).group(1)
    assert tied_row.count("class=flag") == 2 and "1.00*" in tied_row  # off the diagonal: grey, starred
    assert "background:#" not in tied_row.split("</td>", 1)[1]  # no blue for the tie's "agreement"
    assert "| all_equal [1] | undef. | undef. | undef. |" in md and "| all_equal [1] | 1.00 | 1.00* |" in md
    assert f"> {tie}" in md


def test_a_ranking_with_no_order_is_not_recommended_when_another_has_one(tmp_path):
    root = tmp_path / "runs"
    _blocks_run(root, "a_all_equal", [0.5] * 4)
    _blocks_run(root, "b_scored", [0.1, 0.4, 0.2, 0.3])
    report = build_report(load_inputs([root]), fraction=0.25)
    assert report.recommendation.label == "b_scored" and report.recommendation.players == ["layers.1"]
    note = next(n for n in report.notes if n.startswith("a_all_equal: every score"))
    page = render(report, "html")
    assert page.index(html.escape(note, quote=True)) < page.index('id="model"')  # with the warnings at the top
    # the only ranking: recommended, and said so
    alone = build_report(load_inputs([root / "a_all_equal"]), fraction=0.25)
    assert alone.recommendation.label == "a_all_equal" and "layer order" in alone.recommendation.notes[0]


def _finetune(root: Path, name: str, before: float, after: float, **extra) -> None:
    (root / name).mkdir(parents=True)
    report = {
        "method": "lora",
        "selection": {"mode": "top", "fraction": 0.3},
        "model": {**MODEL, "fingerprint": "f00d"},
        "trainable_params": 1000,
        "trainable_modules": 9,
        "steps": 10,
        "heldout_loss_before": before,
        "heldout_loss": after,
        **extra,
    }
    (root / name / "report.json").write_text(json.dumps(report))


def test_the_finetuning_figure_does_not_draw_bars_on_a_cut_axis(tmp_path):
    """A 0.8% loss change was drawn as bars four times apart on an axis starting at 3.93."""
    from layerscope.viz.report.figures import finetune_plot

    _finetune(tmp_path, "ft_top", 3.977, 3.946)
    _finetune(tmp_path, "ft_rand", 3.977, 3.945)
    runs = load_inputs([tmp_path]).finetunes
    ax = finetune_plot(runs).axes[0]
    bars = [c for c in ax.containers if type(c).__name__ == "BarContainer"]
    assert all(ax.get_ylim()[0] <= 0 for _ in bars)  # bars only ever from zero; here dots, on an axis said zoomed
    assert not bars and "not from 0" in ax.get_ylabel()
    assert any("-0.8%" in t.get_text() for t in ax.texts)  # the change, written beside its arrow


def test_the_finetuning_section_shows_the_downstream_evaluation(tmp_path):
    root = tmp_path / "runs"
    _blocks_run(root, "bi", [0.4, 0.1, 0.15, 0.2])
    evals = {"arc_easy": {"value": 0.41, "metric": "acc_norm", "n": 200, "acc": 0.4, "chance": 0.25}}
    _finetune(root, "ft_eval", 2.5, 2.1, eval=evals)
    _finetune(root, "ft_plain", 2.5, 2.2, eval={})
    report = build_report(load_inputs([root]))
    page, md = text_of(render(report, "html")), render(report, "md")
    for text in (page, md):
        assert "arc_easy acc_norm after" in text and "0.41 (n=200, chance 0.25)" in text
    assert "| ft_plain | top 0.3 | lora | 9 | 1,000 | 10 | 2.5 | 2.2 | - | - |" in md


def _curve(root: Path, label: str, data: dict, full: float, chance: float, method: str, slope: float = 0.1) -> None:
    (root / label).mkdir(parents=True)
    curve = {
        "kind": "pruning-curve",
        "model": {**MODEL, "fingerprint": "f00d"},
        "granularity": "block",
        "data": data,
        "baseline": {"full": full, "chance": chance},
        "ranking": {"method": method},
        "points": [{"n_removed": n, "value": full - slope * n * abs(full), "removed": BLOCKS[:n]} for n in range(3)],
    }
    (root / label / "pruning.json").write_text(json.dumps(curve))


def test_pruning_curves_of_other_tasks_and_metrics_get_a_panel_each(tmp_path):
    """acc_norm and -loss shared one unlabelled axis, each curve had its own full / chance legend entries,
    and "random (6 seeds)" lumped the seeds of two tasks."""
    from layerscope.viz.report.figures import curve_panels, pruning_plot

    root = tmp_path / "curves"
    arc = {"task": "arc_easy", "metric": "acc_norm", "chance": 0.25}
    loss = {"task": "loss", "source": "/d/lima.json", "metric": "-loss"}
    for task, data, full, chance in (("arc", arc, 0.7, 0.25), ("lima", loss, -4.98, -6.24)):
        for i, method in enumerate(("ablation", "last", "random-seed0", "random-seed1", "random-seed2")):
            _curve(root / task, method, data, full, chance, method, slope=0.05 * (i + 1))
    report = build_report(load_inputs([root]))
    panels = curve_panels(report.prunings)
    assert [[c.label for c in p] for p in panels] == [
        [f"{task}/{m}" for m in ("ablation", "last", "random-seed0", "random-seed1", "random-seed2")]
        for task in ("arc", "lima")
    ]
    for panel, ylabel in zip(panels, ("acc_norm on arc_easy", "-loss on lima.json")):
        ax = pruning_plot(panel, report.safe_depths).axes[0]
        assert ax.get_ylabel().startswith(ylabel)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend[0] == "random (3 seeds)" and "ablation" in legend and "last" in legend
        assert sum(x.startswith("full model") for x in legend) == 1 and sum(x.startswith("chance") for x in legend) == 1
    page = render(report, "html")
    assert len(assert_self_contained(page)) == 2
    assert "acc_norm on arc_easy as blocks are removed" in page and "-loss on lima.json as blocks are removed" in page


def test_missing_scores_are_marked_in_charts_and_noted_on_a_page_of_one(tmp_path):
    """A NaN score drew as an empty slot, read as zero, and a page of one result said nothing of it."""
    from layerscope.viz.heatmap import module_heatmap_figure
    from layerscope.viz.plots import bar_figure

    imp = _imp("ablation", "block", BLOCKS, [0.1, math.nan, 0.3, 0.05], data={"task": "arc_easy"})
    ax = bar_figure(imp).axes[0]
    (marks,) = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert list(marks.get_xdata()) == [1] and list(marks.get_ydata()) == [0.0]
    assert "no score (NaN)" in [t.get_text() for t in ax.get_legend().get_texts()]
    scores = [float(i) for i in range(len(MODULES))]
    scores[3] = math.nan
    heat = module_heatmap_figure(_imp("ila", "module", MODULES, scores)).axes[0]
    assert [t.get_text() for t in heat.texts if t.get_text() == "x"] == ["x"] and "no score" in heat.get_title()
    imp.save(tmp_path / "nan")
    report = build_report(load_inputs([tmp_path / "nan"]))
    (note,) = [n for n in report.notes if "no score (NaN)" in n]
    assert note.startswith("nan: 1 of its 4 players have no score (NaN)")
    assert note in text_of(render(report, "html")) and f"> {note}" in render(report, "md")


def test_the_results_table_says_what_kind_of_data_and_keeps_task_names_whole(tmp_path):
    from layerscope.viz.report.wording import data_text

    assert data_text({"task": "loss", "source": "/d/lima.json", "metric": "-loss"}) == "loss: lima.json"
    assert data_text({"source": "/d/lima.json", "format": "alpaca"}) == "SFT data: lima.json"
    assert data_text({"source": "/d/book.txt", "kind": "text"}) == "text: book.txt"
    assert data_text({"task": "org/mmlu_pro", "metric": "acc"}) == "task: org/mmlu_pro"
    assert data_text({"task": "/d/tasks/mine.jsonl"}) == "task: mine.jsonl" and data_text({}) == "-"
    root = tmp_path / "runs"
    _blocks_run(root, "loss", [0.4, 0.1, 0.15, 0.2], data={"task": "loss", "source": "/d/lima.json"})
    _blocks_run(root, "sft", [0.4, 0.1, 0.15, 0.3], data={"source": "/d/lima.json", "kind": "sft"})
    _blocks_run(root, "task", [0.4, 0.2, 0.15, 0.3], data={"task": "org/mmlu_pro"})
    page = render(build_report(load_inputs([root])), "html")
    table = page[page.index('id="results"') : page.index("</table>", page.index('id="results"'))]
    cells = re.findall(r'<td title="([^"]*)">([^<]*)</td>', table)
    assert cells == [
        ("loss:/d/lima.json", "loss: lima.json"),
        ("/d/lima.json", "SFT data: lima.json"),
        ("org/mmlu_pro", "task: org/mmlu_pro"),
    ]


def test_markdown_escapes_every_text_from_the_inputs(tmp_path):
    """Raw HTML passed into the heading, model name, method, task and settings lines; cells escaped < not &."""
    x = "<img src=x onerror=alert(1)>&amp;"
    imp = _imp(
        "ablation" + x,
        "block",
        BLOCKS,
        [0.4, 0.1, 0.15, 0.2],
        data={"task": "arc" + x},
        method_config={"k" + x: x},
    )
    imp.model["name"] = "model" + x
    imp.save(tmp_path / ("run" + x.replace("/", "")))
    md = render(build_report(load_inputs([tmp_path])), "md")
    outside_code = re.sub(r"```.*?```", "", md, flags=re.S)
    outside_code = re.sub(r"`[^`\n]*`", "", outside_code)
    assert "<img" not in outside_code and "&amp;" + "amp;" in outside_code  # & itself escaped: shown as typed
    assert md.startswith("# layerscope report: model&lt;img src=x onerror=alert(1)&gt;&amp;amp;")
    for line in ("- name: model&lt;img", "### run&lt;img", "- method: ablation&lt;img", "- data / task: arc&lt;img"):
        assert line in md, line
    assert "- settings: k&lt;img src=x onerror=alert(1)&gt;&amp;amp;=&lt;img" in md


def test_no_selection_is_explained_without_an_option_the_report_lacks(tmp_path):
    """ "pass --model to resolve them": report has no --model."""
    root = tmp_path / "runs"
    imp = _imp("block-influence", "block", BLOCKS, [0.4, 0.1, 0.15, 0.2])
    imp.model["model_type"] = "mystery"
    imp.save(root / "bi")
    report = build_report(load_inputs([root]))
    assert report.recommendation is None
    reason = report.no_selection
    assert reason.startswith("bi: a block ranking of a 'mystery' model names no linear modules")
    assert "pass --model" not in reason and "a report reads no model" in reason and "layerscope export" in reason
    page, md = text_of(render(report, "html")), render(report, "md")
    assert f"No fine-tuning selection: {reason}" in page and "pass --model" not in page + md
    assert "No fine-tuning selection: bi: a block ranking of a &#x27;mystery&#x27;" not in md  # quotes stay quotes
    assert "No fine-tuning selection: bi: a block ranking of a 'mystery' model" in md


def test_counts_block_sets_one_block_models_and_step_ticks_read_plainly(tmp_path):
    from layerscope.viz.heatmap import loss_figure
    from layerscope.viz.report.wording import blocks_text, number_ranges, plural

    assert (plural(1, "player"), plural(2, "player"), plural(0, "run")) == ("1 player", "2 players", "0 runs")
    assert number_ranges([15, *range(13), 40]) == "0-12, 15, 40" and blocks_text([3]) == "block 3"
    assert blocks_text([0, 1, 2, 4]) == "blocks 0-2, 4"
    one = {**MODEL, "n_blocks": 1}
    LayerImportance("ablation", "block", ["layers.0"], [0.3], one, data={"task": "arc_easy"}).save(tmp_path / "one")
    report = build_report(load_inputs([tmp_path / "one"]))
    page, md = text_of(render(report, "html")), render(report, "md")
    assert "1 importance result, 0 fine-tuning runs, 0 pruning curves" in page
    said = (
        "1 player, which is every one of the model's 7 linear modules: the top 30% of 1 ranked player leaves none "
        "out, so this is LoRA on all modules, not a selection"
    )
    assert f"Fine-tune the top 30% of one (ablation): {said}." in md and said in page
    extras = {"stage1_loss": [2.0, 1.9, 1.8, 1.7], "stage2_loss": [0.5, 0.4, 0.3]}
    fig = loss_figure(_imp("ila", "module", MODULES, [0.0] * len(MODULES), extras=extras))
    fig.canvas.draw()
    for ax in fig.axes[:2]:
        assert all(float(x).is_integer() for x in ax.get_xticks()), ax.get_xticks()


def test_figures_of_a_200_block_model_stay_legible_and_its_blocks_read_as_ranges(tmp_path):
    from layerscope.viz.report import figures

    n = 200
    model = {**MODEL, "n_blocks": n}
    blocks = [f"layers.{i}" for i in range(n)]
    bi = LayerImportance("block-influence", "block", blocks, [(i * 37) % 101 / 100 for i in range(n)], model)
    modules = [f"layers.{b}.{'self_attn' if t[0] in 'qkvo' else 'mlp'}.{t}" for b in range(n) for t in TYPES]
    ila = LayerImportance("ila", "module", modules, [(i * 7) % 11 / 3 for i in range(len(modules))], model)
    for imp in (bi, ila):
        svg = base64.b64decode(figures.ranking_figure(imp, 0.3).split(",", 1)[1]).decode()
        width_pt = float(re.search(r'<svg[^>]* width="([\d.]+)pt"', svg).group(1))
        assert width_pt <= figures.MAX_WIDTH * 72 + 1, (imp.method, width_pt)  # shown near its own size
    ila.save(tmp_path / "ila")
    rec = build_report(load_inputs([tmp_path / "ila"])).recommendation
    text = rec.summary
    assert "blocks " in text and len(text) < 400 and re.search(r"\d+-\d+", text)


# ----------------------------------------------------------------------------- the Markdown's layout


def _curves_run(root: Path) -> Path:
    """A prune-curve task folder: curves.json, one <label>/pruning.json per curve (two equal), curve.png."""
    task = root / "curves" / "arc_easy"
    values = {"ablate": [0.7, 0.68, 0.5], "ablation": [0.7, 0.68, 0.5], "last": [0.7, 0.6, 0.4]}
    for label, vals in values.items():
        (task / label).mkdir(parents=True)
        curve = {
            "kind": "pruning-curve",
            "model": {**MODEL, "fingerprint": "f00d"},
            "granularity": "block",
            "data": {"task": "arc_easy", "metric": "acc_norm"},
            "baseline": {"full": 0.7, "chance": 0.25},
            "ranking": {"method": "ablation" if label.startswith("abl") else label},
            "points": [{"n_removed": k, "value": v, "removed": BLOCKS[:k]} for k, v in enumerate(vals)],
        }
        (task / label / "pruning.json").write_text(json.dumps(curve))
    (task / "curves.json").write_text(json.dumps({"kind": "pruning-curves", "curves": [{"label": x} for x in values]}))
    (task / "curve.png").write_bytes(b"\x89PNG")
    return task


def test_markdown_prunes_in_one_table_per_task_with_equal_curves_in_one_column(tmp_path):
    """A prune-curve run was a 4-row table per curve, two of them identical, and "1 blocks"."""
    _curves_run(tmp_path)
    md = render(build_report(load_inputs([tmp_path])), "md")
    section = md[md.index("## Pruning") : md.index("## What to do")]
    assert section.count("| blocks removed |") == 1 and section.count("### ") == 1
    assert "### acc_norm on arc_easy" in section and "chart: [curve.png](" in section
    assert "| blocks removed | ablate (ablation) = ablation | last |" in section  # both orders named
    assert "| 1 | 0.68 | 0.6 |" in section and "| 2 | 0.5 | 0.4 |" in section
    assert "| last | 0 blocks |" in section and "| ablate | 1 block |" in section
    assert "1 blocks" not in md
    # the page: one points table for the task too, equal curves in one column
    page = render(build_report(load_inputs([tmp_path])), "html")
    assert page.count("<summary>points: ") == 1 and "ablate (ablation) = ablation" in page
    assert "1 blocks" not in text_of(page)


def test_markdown_links_the_charts_beside_each_result_relative_to_the_report(tmp_path, monkeypatch):
    root = write_inputs(tmp_path / "runs")
    (root / "ila" / "heatmap.png").write_bytes(b"\x89PNG")
    (root / "similarity" / "bar.png").write_bytes(b"\x89PNG")
    _curves_run(root)
    monkeypatch.chdir(tmp_path)
    md = render(build_report(load_inputs(["runs"])), "md")  # on stdout: from the current folder
    assert "- charts: [heatmap.png](runs/ila/heatmap.png)" in md
    assert "- charts: [bar.png](runs/similarity/bar.png)" in md
    assert "chart: [curve.png](runs/curves/arc_easy/curve.png)" in md
    assert md.count("](") == 3  # no link to a chart that is not there
    out = tmp_path / "notes" / "r.md"
    from layerscope.viz.report import write_report

    text, _ = write_report(["runs"], out)  # a file: from its folder
    assert "[heatmap.png](../runs/ila/heatmap.png)" in text
    assert "[heatmap.png](../runs/ila/heatmap.png)" in render(
        build_report(load_inputs(["runs"])), "md", links_from=tmp_path / "notes"
    )


def test_every_label_is_its_runs_path_below_the_folder_the_runs_share(tmp_path):
    """``runs/ablate_blk`` beside ``angular_distance`` was two rules: a clash renamed only some."""
    write_inputs(tmp_path / "runs")
    _blocks_run(tmp_path / "sim", "angular_distance", [0.4, 0.1, 0.15, 0.2])
    _curves_run(tmp_path)
    inputs = load_inputs([tmp_path / "runs", tmp_path / "sim", tmp_path / "curves"])
    labels = [lab for lab, _, _ in inputs.results] + [f.label for f in inputs.finetunes]
    labels += [c.label for c in inputs.prunings]
    assert set(labels) >= {"runs/ila", "runs/ablation", "sim/angular_distance", "runs/ft", "curves/arc_easy/last"}
    assert all(lab.count("/") >= 1 for lab in labels)
    # the runs of one folder are named below it; one run alone by its folder's name
    assert "ila" in [lab for lab, _, _ in load_inputs([tmp_path / "runs"]).results]
    assert [lab for lab, _, _ in load_inputs([tmp_path / "runs" / "ila"]).results] == ["ila"]
    # --ranking names a result by its label, or by its last part where that names one result alone
    assert build_report(inputs, ranking="shapley").recommendation.label == "runs/shapley"
    assert build_report(inputs, ranking="runs/shapley").recommendation.label == "runs/shapley"


def test_markdown_what_to_do_gives_the_export_commands_and_a_preview_not_the_configs(tmp_path):
    root = write_inputs(tmp_path / "runs")
    report = build_report(load_inputs([root]))
    md = render(report, "md")
    todo = md[md.index("## What to do") : md.index("## Inputs")]
    rec = report.recommendation
    assert (
        f"{len(rec.modules)} modules selected: {', '.join(rec.modules[:5])} ... and {len(rec.modules) - 5} more" in todo
    )
    assert "as a peft, axolotl or llama-factory config" in todo
    assert all(f"--to {fmt}" in todo for fmt in ("peft", "axolotl", "llama-factory"))
    assert "```json" not in todo and "```yaml" not in todo and rec.modules[-1] not in todo
    assert len(todo.splitlines()) < 20
    # the page keeps the configs (folded)
    page = render(report, "html")
    assert "peft_type" in page and rec.modules[-1] in page
