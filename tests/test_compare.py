"""compare (Jaccard / Spearman / random baseline), the module heatmap, and the ila / compare /
plot commands end to end (ila on the real stories260K model, a few steps)."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import warnings

import pytest

from layerscope.cli.app import main
from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance
from layerscope.viz.compare import compare, expected_random_jaccard, load_results, write_comparison
from layerscope.viz.heatmap import module_grid, plot_module_heatmap

TYPES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PLAYERS = [f"layers.{b}.{'self_attn' if t[0] in 'qkvo' else 'mlp'}.{t}" for b in range(4) for t in TYPES]
PNG = b"\x89PNG"


def result(scores, fingerprint="abc", players=PLAYERS, granularity="module", **kw) -> LayerImportance:
    return LayerImportance(
        method="ila",
        granularity=granularity,
        players=list(players),
        scores=list(scores),
        model={"name": "m", "fingerprint": fingerprint},
        **kw,
    )


def test_expected_random_jaccard():
    # n=4, k=2: |A∩B| = 2, 1, 0 with probability 1/6, 4/6, 1/6 -> J = 1, 1/3, 0
    assert expected_random_jaccard(2, 4) == pytest.approx(1 / 6 + 4 / 6 / 3)
    assert expected_random_jaccard(5, 5) == 1.0
    # against brute force over all pairs of subsets
    n, k = 7, 3
    subsets = [set(c) for c in itertools.combinations(range(n), k)]
    brute = sum(len(a & b) / len(a | b) for a in subsets for b in subsets) / len(subsets) ** 2
    assert expected_random_jaccard(k, n) == pytest.approx(brute)


def test_compare_numbers():
    n = len(PLAYERS)
    base = list(range(n))  # ascending: the top is the last players
    same_top = base[:-3] + [base[-2], base[-1], base[-3]]  # same top sets, slightly different order
    reverse = base[::-1]
    comp = compare([result(base), result(same_top), result(reverse)], ["a", "b", "c"], fraction=0.25)
    k = math.ceil(0.25 * n)
    assert comp.k == k == 7
    assert comp.jaccard[0][1] == 1.0 and comp.jaccard[0][2] == 0.0
    assert comp.jaccard[1][0] == comp.jaccard[0][1] and comp.jaccard[2][2] == 1.0
    assert comp.spearman[0][2] == pytest.approx(-1.0)
    assert 0.98 < comp.spearman[0][1] < 1.0
    assert set(comp.sweep) == {"0.1", "0.2", "0.25", "0.3", "0.4", "0.5"}
    assert comp.sweep_mean["0.25"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert comp.random_jaccard["0.25"] == pytest.approx(expected_random_jaccard(7, n))
    text = comp.format_text()
    assert "Jaccard of top-25% sets" in text and "random" in text


def test_compare_refuses_bad_input():
    a = result(range(len(PLAYERS)))
    with pytest.raises(ConfigError, match="at least two"):
        compare([a])
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="must be in \\(0, 1\\]"):
            compare([a, a], fraction=bad)
    with pytest.raises(ConfigError, match="cannot compare x with y: results are from different models"):
        compare([a, result(range(len(PLAYERS)), fingerprint="other")], ["x", "y"])
    blocks = result(range(4), players=[f"layers.{i}" for i in range(4)], granularity="block")
    with pytest.raises(ConfigError, match="r2: cannot refine a block-level ila result to module level"):
        compare([a, blocks], level="module")
    with pytest.raises(ConfigError, match="different models"):  # the model check comes before any aggregation
        compare([a, result(range(4), fingerprint="other", players=blocks.players, granularity="block")])
    five = result(range(5), players=[f"layers.{i}" for i in range(5)], granularity="block")
    with pytest.raises(ConfigError, match="different players: 1 only in the second .e.g. layers.4.; different models"):
        compare([a, five])  # 4 blocks vs 5: not one layer map
    # experts of the MoE blocks only (1 and 3) against every block: the cause is named
    experts = result(
        range(4),
        players=[
            "layers.1.mlp.experts.0",
            "layers.1.mlp.experts.1",
            "layers.3.mlp.experts.0",
            "layers.3.mlp.experts.1",
        ],
        granularity="expert",
    )
    with pytest.raises(ConfigError, match="2 only in the first .e.g. layers.0.; an expert-level result scores only"):
        compare([a, experts])


def test_compare_wants_one_label_per_result():
    a = result(range(len(PLAYERS)))
    for labels in (["only-one"], ["x", "y", "z"], []):
        with pytest.raises(ConfigError, match=f"^labels: {len(labels)} given for 2 results"):
            compare([a, a], labels)
    with pytest.raises(ConfigError, match="^sources: 1 given for 2 results"):
        compare([a, a], ["x", "y"], sources=["s"])


def test_compare_takes_paths_as_the_command_does(tmp_path):
    """Paths (str or PathLike: an importance.json or its run folder) are loaded; labelled and sourced as
    ``layerscope compare`` labels them; they mix with result objects; anything else is refused in one line."""
    n = len(PLAYERS)
    result(range(n)).save(tmp_path / "ila" / "importance.json")
    result(list(range(n))[::-1]).save(tmp_path / "other.json")
    comp = compare([str(tmp_path / "ila"), tmp_path / "other.json"])
    assert comp.labels == ["ila", "other"]
    assert comp.sources == [str(tmp_path / "ila"), str(tmp_path / "other.json")]
    assert comp.spearman[0][1] == pytest.approx(-1.0)
    mixed = compare([result(range(n)), str(tmp_path / "ila")])
    assert mixed.labels == ["r1", "ila"] and mixed.spearman[0][1] == pytest.approx(1.0)
    assert compare([tmp_path / "ila", tmp_path / "other.json"], ["x", "y"]).labels == ["x", "y"]
    with pytest.raises(ConfigError, match="^compare: result 2 is a dict; pass LayerImportance objects or paths"):
        compare([result(range(n)), {"scores": []}])
    with pytest.raises(ConfigError, match="^compare: results= must be a list"):
        compare(str(tmp_path / "ila"))


def test_constant_scores_give_spearman_zero_without_a_warning():
    flat = result([1.0] * len(PLAYERS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning reached the user
        comp = compare([flat, flat])
    assert comp.spearman[0][1] == 0.0


def test_scores_equal_but_for_rounding_share_one_rank_in_spearman():
    """-1/30 summed from 4 or from 5 terms differs in the last bit; as ranks those are one tie (TIE_RTOL),
    not an order scipy would invent."""
    from scipy.stats import spearmanr

    a = [-1 / 30 - 1.4e-17 * (i % 2) if i < 6 else float(i) for i in range(8)]
    b = [3.0, 1.0, 2.0, 0.0, 5.0, 4.0, 6.0, 7.0]
    players = PLAYERS[:8]
    got = compare([result(a, players=players), result(b, players=players)]).spearman[0][1]
    assert got == pytest.approx(spearmanr([-1 / 30] * 6 + [6.0, 7.0], b).statistic)
    assert got != pytest.approx(spearmanr(a, b).statistic)


def test_a_top_set_cut_inside_tied_scores_is_noted(capsys, tmp_path):
    """Which tied players count as top follows layer order, and the Jaccard moves with it: said, per result."""
    scores = [float(i) for i in range(len(PLAYERS))]
    tied = list(scores)
    tied[-9:] = [100.0] * 9  # top 30% = 9 of 28 players: the cut falls outside the tie, no note
    clear = compare([result(scores), result(tied)])
    assert clear.notes == []
    tied[-10:] = [100.0] * 10  # 10 tie for 9 places
    comp = compare([result(scores), result(tied)], labels=["a", "b"])
    assert len(comp.notes) == 1 and comp.notes[0].startswith("b: top 30%: 9 of the 9 selected players tie in score")
    assert json.loads(json.dumps(comp.to_dict()))["notes"] == comp.notes
    for name, r in (("a", result(scores)), ("b", result(tied))):
        r.save(tmp_path / name / "importance.json")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "note: b: top 30%: 9 of the 9 selected players tie" in err


def test_compare_across_granularities():
    """Module, sub-layer and block results of one model compare at the coarsest level (block)."""
    n = len(PLAYERS)
    modules = result(range(n))  # ascending: later blocks matter more
    subs = result(
        range(8), players=[f"layers.{b}.{k}" for b in range(4) for k in ("self_attn", "mlp")], granularity="sublayer"
    )
    blocks = result([0.1, 0.2, 0.3, 0.4], players=[f"layers.{i}" for i in range(4)], granularity="block")
    comp = compare([modules, subs, blocks], ["ila", "ablation", "bi"], fraction=0.25)
    assert comp.level == "block" and comp.n_players == 4 and comp.k == 1
    assert comp.granularities == ["module", "sublayer", "block"]
    assert comp.spearman[0][1] == pytest.approx(1.0) and comp.spearman[0][2] == pytest.approx(1.0)
    assert comp.jaccard[1][2] == 1.0  # block 3 on top everywhere
    assert "compared at block level; aggregated by mean score: ila (module), ablation (sublayer)" in comp.format_text()
    sub_level = compare([modules, subs], ["ila", "ablation"], level="sublayer")
    assert sub_level.level == "sublayer" and sub_level.n_players == 8
    assert sub_level.spearman[0][1] == pytest.approx(1.0)
    same = compare([modules, modules], level="module")
    assert same.level == "module" and "aggregated" not in same.format_text()


def test_module_grid_and_heatmap(tmp_path):
    scores = [float(i) for i in range(len(PLAYERS))]
    types, blocks, grid = module_grid(result(scores))
    assert types == TYPES and blocks == [0, 1, 2, 3] and grid.shape == (7, 4)
    assert grid[TYPES.index("up_proj"), 2] == PLAYERS.index("layers.2.mlp.up_proj")
    gpt2 = result([1.0], players=["h.11.attn.c_attn"])
    assert module_grid(gpt2)[:2] == (["c_attn"], [11])
    # GPT-2's attention and MLP both end in c_proj: each keeps its own row (and its own bar label)
    names = ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc", "h.0.mlp.c_proj"]
    both = result([1.0, 2.0, 3.0, 4.0], players=names)
    rows, _, cells = module_grid(both)
    assert rows == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"] and list(cells[:, 0]) == [1, 2, 3, 4]
    assert plot_module_heatmap(both, tmp_path / "gpt2.png").read_bytes()[:4] == PNG
    out = plot_module_heatmap(result(scores), tmp_path / "h.png")
    assert out.read_bytes()[:4] == PNG
    with pytest.raises(ConfigError, match="module-granularity"):
        module_grid(result([1.0, 2.0], players=["layers.0", "layers.1"], granularity="block"))


def test_write_comparison_files(tmp_path):
    n = len(PLAYERS)
    comp = compare([result(range(n)), result(list(range(n))[::-1])], ["a", "b"])
    paths = write_comparison(comp, tmp_path / "cmp")
    assert json.loads(paths["json"].read_text())["jaccard"][0][1] == 0.0
    assert paths["jaccard"].read_bytes()[:4] == PNG and paths["sweep"].read_bytes()[:4] == PNG


def test_compare_and_plot_commands(tmp_path, capsys):
    n = len(PLAYERS)
    a, b = tmp_path / "run_a", tmp_path / "run_b"
    result(range(n)).save(a)
    result(list(range(n))[::-1]).save(b / "importance.json")
    assert main(["compare", str(a), str(b / "importance.json"), "--fraction", "0.2", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "run_a" in out and "run_b" in out and "Jaccard of top-20% sets" in out
    assert (tmp_path / "c" / "comparison.json").exists()
    labels, _ = load_results([a, b])
    assert labels == ["run_a", "run_b"]

    result(range(n), fingerprint="zzz").save(tmp_path / "other")
    assert main(["compare", str(a), str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different models" in err[0]
    assert main(["compare", str(a), str(b), "--fraction", "1.2"]) == 2
    assert "must be in (0, 1]" in capsys.readouterr().err

    assert main(["plot", str(a)]) == 0
    assert (a / "heatmap.png").read_bytes()[:4] == PNG
    blk = tmp_path / "blocks.json"
    result([0.1, 0.5, 0.2], players=["layers.0", "layers.1", "layers.2"], granularity="block").save(blk)
    assert main(["plot", str(blk), "--out", str(tmp_path / "bars.png")]) == 0  # via layerscope.plots.bar_chart
    assert (tmp_path / "bars.png").read_bytes()[:4] == PNG
    # --out a folder (existing, or a path without a suffix): the figure goes inside, named after the result
    for folder in (tmp_path, tmp_path / "figures"):
        assert main(["plot", str(blk), "--out", str(folder)]) == 0
        assert (folder / "blocks.png").read_bytes()[:4] == PNG  # a file result: its stem, as compare labels it
    assert main(["plot", str(blk), "--out", str(tmp_path / "bars.svg")]) == 0
    assert (tmp_path / "bars.svg").read_text().lstrip().startswith("<?xml")
    capsys.readouterr()
    assert main(["plot", str(blk), "--out", str(tmp_path / "bars.txt")]) == 2  # refused before drawing
    assert "cannot write '.txt' figures" in capsys.readouterr().err and not (tmp_path / "bars.txt").exists()


def test_ila_command_end_to_end(tmp_path, stories_path, capsys):
    from layerscope.core.data import DEMO_DATA

    out = tmp_path / "ila"
    common = [
        "--model",
        str(stories_path),
        "--data",
        DEMO_DATA,
        "--limit",
        "16",
        "--seq-len",
        "64",
        "--batch-size",
        "4",
        "--gate-steps",
        "4",
        "--no-progress",
        "--seed",
        "1",
    ]
    assert main(["ila", *common, "--out", str(out), "--max-steps", "6", "--min-steps", "2", "--check-every", "2"]) == 0
    text = capsys.readouterr().out
    assert "stage 1: stopped" in text and "most important modules" in text
    imp = LayerImportance.load(out)
    assert imp.method == "ila" and len(imp.players) == 5 * 7 and imp.extras["stop_step"] <= 6
    assert imp.data["n_items"] == imp.data["stats"]["kept"] and imp.data["stats"]["records"] == 16
    assert imp.model["n_blocks"] == 5
    for name in ("heatmap.png", "loss.png"):
        assert (out / name).read_bytes()[:4] == PNG
    assert (out / "adapter" / "adapter_config.json").exists()
    # reuse the adapter: stage 2 only, same seed -> the same scores
    again = tmp_path / "again"
    assert main(["ila", *common, "--out", str(again), "--adapter", str(out / "adapter")]) == 0
    assert LayerImportance.load(again).scores == imp.scores
    assert main(["ila", *common, "--out", str(again), "--sparsity", "budget", "--budget-fraction", "0"]) == 2
    assert "budget_fraction" in capsys.readouterr().err


def test_folders_of_several_results(tmp_path, capsys):
    """A folder holding one result per subfolder (similarity's or demo's output) is read whole."""
    n = len(PLAYERS)
    run = tmp_path / "run"
    result(range(n)).save(run / "ila")
    result(
        range(8), players=[f"layers.{b}.{k}" for b in range(4) for k in ("self_attn", "mlp")], granularity="sublayer"
    ).save(run / "ablation")
    result([0.1, 0.2, 0.3, 0.4], players=[f"layers.{i}" for i in range(4)], granularity="block").save(
        run / "similarity"
    )
    (run / "peft_top30").mkdir()  # a subfolder without a result is skipped
    labels, results = load_results([run])
    assert labels == ["ablation", "ila", "similarity"] and [r.granularity for r in results] == [
        "sublayer",
        "module",
        "block",
    ]
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "3 results, 4 players" in out and "compared at block level" in out
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["level"] == "block" and saved["sources"][0].endswith("ablation/importance.json")
    assert main(["compare", str(run / "ila"), str(run / "ablation"), "--level", "sublayer"]) == 0
    assert "2 results, 8 players" in capsys.readouterr().out
    # two folders with same-named results: labels carry the parent folder
    result(range(n)).save(tmp_path / "run2" / "ila")
    labels, _ = load_results([run / "ila", tmp_path / "run2" / "ila"])
    assert labels == ["run/ila", "run2/ila"]
    # ... and plot names their figures as compare labels them, not both ila.png (one overwriting the other)
    both = tmp_path / "both"
    for parent in ("run", "run2"):
        result(range(n)).save(both / parent / "ila")
    assert main(["plot", str(both), "--out", str(tmp_path / "figs2")]) == 0
    assert sorted(p.name for p in (tmp_path / "figs2").iterdir()) == ["run2_ila.png", "run_ila.png"]

    assert main(["plot", str(run)]) == 0
    assert (run / "ila" / "heatmap.png").read_bytes()[:4] == PNG
    assert (run / "ablation" / "bar.png").read_bytes()[:4] == PNG and (run / "similarity" / "bar.png").exists()
    figs = tmp_path / "figs"
    assert main(["plot", str(run), "--out", str(figs)]) == 0
    assert sorted(p.name for p in figs.iterdir()) == ["ablation.png", "ila.png", "similarity.png"]
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "one.png")]) == 2
    assert "holds 3 results: give a folder" in capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    for cmd in (["compare", str(tmp_path / "empty"), str(run)], ["plot", str(tmp_path / "empty")]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no importance results" in err[0]
    assert main(["compare", str(run), "--level", "module"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot refine a sublayer-level ila result to module level" in err[0]


def test_compare_help_states_the_rule(capsys):
    from layerscope.cli.compare import AGGREGATION_HELP
    from layerscope.core.levels import AGGREGATION_RULE

    assert AGGREGATION_HELP.startswith(AGGREGATION_RULE)  # --help says what the library does
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--level {block,sublayer,module,expert}" in text and "a block's the mean of all its players' scores" in text


def test_titles_name_the_model_not_a_path():
    from layerscope.viz.plots import result_title

    r = result(range(len(PLAYERS)))
    r.model["name"] = "../shared/models/stories260K"  # a result written before names were stored
    r.data = {"source": "/work/shared/data/alignment/lima.json"}
    assert result_title(r) == "ila - stories260K - lima"
    r.data = {"task": "arc_easy", "source": "/x/arc_easy.jsonl"}
    r.model["name"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert result_title(r) == "ila - SmolLM2-135M-Instruct - arc_easy"
    r.data = {}
    assert result_title(r) == "ila - SmolLM2-135M-Instruct"


def test_comparison_json_is_strict_json_when_a_spearman_is_undefined(tmp_path):
    n = len(PLAYERS)
    holes = result([float("nan")] * (n - 1) + [1.0])  # one finite score: no rank correlation
    comp = compare([result(range(n)), holes], ["a", "b"])
    text = write_comparison(comp, tmp_path / "cmp")["json"].read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in comparison.json"))
    assert loaded["spearman"][0][1] is None


def test_sweep_legend_is_outside_and_equal_lines_stay_apart():
    from layerscope.viz.heatmap import lines_figure

    series = {"a vs b": [1.0, 0.5, 0.4], "a vs c": [1.0, 0.5, 0.4], "random sets": [0.1, 0.2, 0.3]}
    fig = lines_figure([0.1, 0.2, 0.3], series, title="t", xlabel="K", ylabel="J", dashed={"random sets"})
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1  # beside the axes, not on them
    first, second = ax.get_lines()[:2]
    assert (first.get_marker(), first.get_linestyle()) != (second.get_marker(), second.get_linestyle())
    assert "a vs c (= a vs b)" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_missing_scores_give_no_agreement_and_a_note():
    """NaN is "no score": it ranks last, so an all-NaN result agreed perfectly (Jaccard 1.0 at every
    fraction) and two finite pairs gave Spearman +-1; now NaN, with a note naming the result."""
    blocks = [f"layers.{i}" for i in range(5)]
    a = result([5, 4, 3, 2, 1], players=blocks, granularity="block")
    none = result([math.nan] * 5, players=blocks, granularity="block")
    two = result([5, 4, math.nan, math.nan, math.nan], players=blocks, granularity="block")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = compare([a, none, two], labels=["a", "none", "two"], fraction=0.4)
    assert all(math.isnan(v) for f in c.sweep for v in (c.sweep[f][0][1], c.sweep[f][1][2]))
    assert math.isnan(c.jaccard[0][1]) and math.isnan(c.spearman[0][2])
    assert c.jaccard[0][2] == 1.0  # top 40% = 2 players, both scored in "two"
    assert c.notes[0] == (
        "none: 5 of its 5 players have no score (NaN): they rank last, a top set that would need them gets no "
        "Jaccard (nan), and Spearman leaves them out"
    )
    assert c.notes[1].startswith("two: 3 of its 5 players have no score")


def test_the_report_counts_no_unscored_player_in_every_top(tmp_path):
    from layerscope.viz.report import write_report

    blocks = [f"layers.{i}" for i in range(5)]
    for name, scores in (("a", [5, 4, 3, 2, 1]), ("none", [math.nan] * 5)):
        result(scores, players=blocks, granularity="block").save(tmp_path / name / "importance.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        page = write_report([tmp_path / "a", tmp_path / "none"], tmp_path / "r.md")
    text = page.read_text() if hasattr(page, "read_text") else (tmp_path / "r.md").read_text()
    assert "In every method's top 2: none" in text  # was layers.0, layers.1: "none"'s layer order
    assert "none: 5 of its 5 players have no score (NaN)" in text


def test_one_model_in_two_dtypes_is_named_and_accepted_on_request(tmp_path, capsys):
    """bfloat16 weights have another fingerprint: compare and report said "different models" and had no
    way round it; they say what differs and take --ignore-fingerprint, as prune and export do."""
    from layerscope.viz.report import write_report

    blocks = [f"layers.{i}" for i in range(5)]
    for name, fp, dtype in (("f32", "aaa", "float32"), ("b16", "bbb", "bfloat16")):
        model = {"name": "m", "fingerprint": fp, "dtype": dtype, "n_blocks": 5}
        LayerImportance("ablation", "block", blocks, [5, 4, 3, 2, 1], model).save(tmp_path / name / "importance.json")
    runs = [str(tmp_path / "f32"), str(tmp_path / "b16")]
    assert main(["compare", *runs]) == 2
    err = capsys.readouterr().err
    assert "(m aaa vs m bbb: same name, other weights (float32 vs bfloat16); the same model in another dtype? " in err
    assert err.rstrip().endswith("pass --ignore-fingerprint)")
    assert main(["compare", *runs, "--ignore-fingerprint"]) == 0
    assert "1.00" in capsys.readouterr().out
    assert main(["report", *runs, "--format", "md", "--out", "-"]) == 2
    assert "the same model in another dtype? pass --ignore-fingerprint" in capsys.readouterr().err
    text, report = write_report(runs, None, "md", ignore_fingerprint=True)
    assert report.agreement.jaccard[0][1] == 1.0


def test_one_result_given_twice_is_noted():
    a = result(range(len(PLAYERS)))
    b = result(list(range(len(PLAYERS)))[::-1])
    c = compare([a, b, a], labels=["ila", "other", "ila/importance.json"])
    assert c.notes[0] == "ila/importance.json is the same result as ila (given twice?): their agreement says nothing"
    assert not [n for n in compare([a, b], labels=["x", "y"]).notes if "same result" in n]


def test_a_damaged_result_below_a_folder_is_skipped_with_a_warning(tmp_path, capsys):
    run = tmp_path / "run"
    n = len(PLAYERS)
    result(range(n)).save(run / "a")
    result(range(n)[::-1]).save(run / "b")
    (run / "broken").mkdir()
    (run / "broken" / "importance.json").write_text('{"schema_version": 1, "method": "ila", ')  # cut short
    with pytest.warns(UserWarning, match=r"skipped .*broken/importance.json: invalid JSON"):
        labels, results = load_results([run])
    assert labels == ["a", "b"] and len(results) == 2

    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0
    captured = capsys.readouterr()
    assert "layerscope compare: warning: skipped " in captured.err and "broken" in captured.err
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [s.rsplit("/", 2)[-2] for s in saved["sources"]] == ["a", "b"]
    assert any(note.startswith("skipped ") and "broken" in note for note in saved["notes"])

    assert main(["plot", str(run)]) == 0
    assert (run / "a" / "heatmap.png").exists() and not (run / "broken" / "heatmap.png").exists()
    assert "warning: skipped" in capsys.readouterr().err

    # named by the caller, it is refused: the file itself, or a run folder whose own result it is
    assert main(["compare", str(run / "a"), str(run / "broken")]) == 2
    assert "broken/importance.json: invalid JSON" in capsys.readouterr().err
    (run / "broken" / "sub").mkdir()  # its own result is refused even beside readable ones below it
    result(range(n)).save(run / "broken" / "sub")
    assert main(["compare", str(run / "a"), str(run / "broken")]) == 2
    assert "broken/importance.json: invalid JSON" in capsys.readouterr().err
    shutil.rmtree(run / "broken" / "sub")
    # a folder none of whose results can be read is refused
    (run / "a" / "importance.json").write_text("{}")
    (run / "b" / "importance.json").write_text("[]")
    assert main(["compare", str(run), str(run)]) == 2
    assert "none of its 3 results can be read" in capsys.readouterr().err
