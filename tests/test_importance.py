import json
import math

import pytest

from layerscope.core.agreement import spearman, top_jaccard
from layerscope.core.errors import ConfigError, DataError
from layerscope.core.importance import LayerImportance, top_k_count


def make(scores, fp="abc", players=None, gran="sublayer"):
    players = players or [f"layers.{i // 2}.{'self_attn' if i % 2 == 0 else 'mlp'}" for i in range(len(scores))]
    return LayerImportance(
        method="test",
        granularity=gran,
        players=players,
        scores=list(scores),
        model={"name": "m", "fingerprint": fp},
        seed=0,
    )


def test_roundtrip(tmp_path):
    r = make([0.1, 0.5, float("nan"), 0.2])
    path = r.save(tmp_path)
    assert path.name == "importance.json"
    d = json.loads(path.read_text())
    assert d["schema_version"] == 1 and d["scores"][2] is None  # NaN is not valid JSON
    back = LayerImportance.load(tmp_path)
    assert back.players == r.players and back.scores[:2] == [0.1, 0.5]
    assert back.ranking()[-1] == r.players[2]  # missing scores rank last
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left


def test_save_checks_what_changed_since_the_result_was_made(tmp_path):
    """A result's lists can be changed after it is built: save refuses what load would refuse, so no
    file is written that cannot be read back (or that ranks players without scores)."""
    import numpy as np

    from layerscope.core.errors import ConfigError

    r = make([0.1, 0.5, 0.3, 0.2])
    r.scores.append(1.0)
    with pytest.raises(ConfigError, match="4 players but 5 scores"):
        r.save(tmp_path)
    r.scores = np.array([0.1, 0.5, 0.3, 0.2])
    with pytest.raises(ConfigError, match="scores must be a list of numbers"):
        r.save(tmp_path)
    assert not list(tmp_path.iterdir())


def test_load_takes_a_path_and_says_so():
    from layerscope.core.errors import ConfigError

    r = make([0.1, 0.5, 0.3, 0.2])
    with pytest.raises(ConfigError, match="^LayerImportance.load takes a path .*, not LayerImportance$"):
        LayerImportance.load(r)


def test_least_important_refuses_a_missing_score_it_would_remove_first():
    from layerscope.core.errors import ConfigError
    from layerscope.pruning import least_important

    r = make([float("nan"), 0.5, 0.3, 0.2])
    assert r.ranking()[-1] == r.players[0]  # a missing score ranks last: removed first were it read as a score
    with pytest.raises(ConfigError, match=rf"least important .*: {r.players[0]} has a missing score \(1 of 4"):
        least_important(r, 1)


@pytest.mark.parametrize("name", ["x.JSON", "x.Json", "x.json"])
def test_a_json_suffix_in_any_case_names_the_file(tmp_path, name):
    r = make([0.1, 0.5])
    path = r.save(tmp_path / name)
    assert path == tmp_path / name and path.is_file()  # "x.JSON" was a folder holding importance.json
    assert LayerImportance.load(path).scores == [0.1, 0.5]


def test_dir_lists_each_lazy_name_once():
    """A lazy attribute read once lives in the package's namespace too: dir() listed it twice."""
    import layerscope
    import layerscope.engine
    import layerscope.methods.ila
    import layerscope.pruning
    import layerscope.training

    for package in (layerscope, layerscope.engine, layerscope.methods.ila, layerscope.pruning, layerscope.training):
        for name in package.__all__[:2]:
            getattr(package, name)
        names = dir(package)
        assert len(names) == len(set(names)), package.__name__
        assert set(package.__all__) <= set(names)
    assert layerscope.LayerImportance is LayerImportance


def test_top_and_ranking():
    r = make([0.1, 0.5, 0.3, 0.2, 0.0, 0.4])
    assert r.top(0.3) == ["layers.0.mlp", "layers.2.mlp"]
    assert r.bottom(0.2) == ["layers.2.self_attn", "layers.0.self_attn"]
    assert top_k_count(0.1, 6) == 1 and top_k_count(1.0, 6) == 6


def test_scores_tied_to_five_digits_rank_in_forward_order_not_by_their_rounding():
    """An ablation's drops 0.0 and -1.4e-17 are the same accuracy minus float rounding: the rounding put the
    later player first, against "ties broken by forward order"; a real difference still orders."""
    r = make([-1.3877787807814457e-17, 0.5, 0.0, 0.25])
    assert r.ranking() == ["layers.0.mlp", "layers.1.mlp", "layers.0.self_attn", "layers.1.self_attn"]
    assert make([0.3, 0.30000001, 0.2, 0.1]).ranking()[:2] == ["layers.0.self_attn", "layers.0.mlp"]
    assert make([0.3, 0.31, 0.2, 0.1]).ranking()[:2] == ["layers.0.mlp", "layers.0.self_attn"]


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan")])
def test_fraction_out_of_range(bad):
    with pytest.raises(ConfigError, match="fraction"):
        make([1, 2]).top(bad)


def test_jaccard_spearman_and_incomparable():
    a, b = make([1, 2, 3, 4]), make([1, 2, 4, 3])
    assert top_jaccard(a, b, 0.5) == 1.0
    assert spearman(a, b) == pytest.approx(0.8)
    with pytest.raises(ConfigError, match="different models"):
        top_jaccard(a, make([1, 2, 3, 4], fp="zzz"))
    with pytest.raises(ConfigError, match="granularit"):
        spearman(a, make([1, 2, 3, 4], gran="module"))


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        LayerImportance.load(tmp_path / "x.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="invalid JSON"):
        LayerImportance.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(DataError, match="schema_version"):
        LayerImportance.load(tmp_path / "old.json")
    with pytest.raises(ConfigError, match="scores"):
        make([1, 2]).__class__(method="x", granularity="block", players=["a"], scores=[1, 2], model={})


def test_other_outputs_passed_as_a_ranking_are_named(tmp_path):
    """A folder of several results, or another command's output, is refused saying what it is."""
    for name in ("block_influence", "angular_distance"):
        make([1.0, 2.0]).save(tmp_path / "sim" / name)
    with pytest.raises(DataError, match=r"holds 2 results \(angular_distance, block_influence\); pass one"):
        LayerImportance.load(tmp_path / "sim")
    make([1.0, 2.0]).save(tmp_path / "one" / "ila")
    assert LayerImportance.load(tmp_path / "one").scores == [1.0, 2.0]  # a single result inside is taken
    outputs = {
        "ft/report.json": ({"trainable_modules": [], "steps": 5}, "a fine-tuning report"),
        "pruned/pruning_note.json": ({"kind": "pruned-model", "n_blocks_after": 4}, "a pruning note"),
        "curves/arc/curves.json": ({"kind": "pruning-curves", "curves": []}, "pruning curves"),
        "cmp/comparison.json": ({"jaccard": [], "spearman": []}, "a comparison"),
    }
    for rel, (content, what) in outputs.items():
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).write_text(json.dumps(content))
        for given in (tmp_path / rel, (tmp_path / rel).parent):
            with pytest.raises(DataError, match=f"{what} .*, not an importance result"):
                LayerImportance.load(given)
    # a peft adapter's config, and any other JSON object, are named for what they are not ("schema_version None")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "target_modules": ["q_proj"]}))
    with pytest.raises(DataError, match=r"a peft adapter config \(.*, not an importance result"):
        LayerImportance.load(tmp_path / "adapter_config.json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataError, match=r"other.json: not a layerscope importance result \(no schema_version"):
        LayerImportance.load(tmp_path / "other.json")


# ---- levels: aggregation to a coarser granularity ---------------------------------------------

TYPES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODULES = [f"layers.{b}.{'self_attn' if t[0] in 'qkvo' else 'mlp'}.{t}" for b in range(3) for t in TYPES]


def test_to_level_means_per_group():
    from layerscope.core.levels import to_level

    scores = [float(i) for i in range(len(MODULES))]
    mod = make(scores, players=MODULES, gran="module")
    mod.stderr = [0.1] * len(MODULES)
    mod.extras = {"removed_value": scores}
    sub = to_level(mod, "sublayer")
    assert sub.granularity == "sublayer" and sub.players[:2] == ["layers.0.self_attn", "layers.0.mlp"]
    assert len(sub.players) == 6
    assert sub.scores[0] == pytest.approx(sum(scores[0:4]) / 4)  # q, k, v, o of block 0
    assert sub.scores[1] == pytest.approx(sum(scores[4:7]) / 3)  # gate, up, down of block 0
    blk = to_level(mod, "block")
    assert blk.players == ["layers.0", "layers.1", "layers.2"]
    assert blk.scores == pytest.approx([sum(scores[7 * b : 7 * b + 7]) / 7 for b in range(3)])
    assert blk.scores == pytest.approx(list(mod.by_block().values()))  # one rule with by_block
    assert blk.stderr is None and blk.extras == {
        "aggregated_from": {"granularity": "module", "n_players": 21, "rule": "mean"}
    }
    assert blk.model == mod.model and blk.method == mod.method
    # sub-layers to blocks: the mean of attention and MLP
    assert to_level(sub, "block").scores == pytest.approx(
        [(a + m) / 2 for a, m in zip(sub.scores[::2], sub.scores[1::2])]
    )
    assert to_level(blk, "block") is blk


def test_to_level_missing_score_and_refusals():
    from layerscope.core.levels import coarsest, to_level

    sub = make([1.0, float("nan"), 3.0, 4.0])
    blk = to_level(sub, "block")
    assert math.isnan(blk.scores[0]) and blk.scores[1] == 3.5
    assert blk.ranking()[-1] == "layers.0"  # a group with a missing score ranks last
    with pytest.raises(ConfigError, match="cannot refine a block-level test result to sublayer level"):
        to_level(blk, "sublayer")
    with pytest.raises(ConfigError, match="unknown granularity"):
        to_level(sub, "head")
    assert coarsest(["module", "sublayer"]) == "sublayer" and coarsest(["block", "module"]) == "block"


def test_result_paths(tmp_path):
    from layerscope.core.importance import result_paths

    one = make([1, 2]).save(tmp_path / "run")
    assert result_paths(tmp_path / "run") == [tmp_path / "run"]
    assert result_paths(one) == [one]
    make([1, 2]).save(tmp_path / "several" / "b_method")
    make([2, 1]).save(tmp_path / "several" / "a_method")
    (tmp_path / "several" / "not_a_result").mkdir()
    assert result_paths(tmp_path / "several") == [
        tmp_path / "several" / "a_method" / "importance.json",
        tmp_path / "several" / "b_method" / "importance.json",
    ]
    # as report reads them: a run folder's own result and those below it, two folders deep (similarity's
    # OUT/block_influence/ inside a folder of runs), shallower first
    make([1, 2]).save(tmp_path / "runs" / "ila")
    make([1, 2]).save(tmp_path / "runs" / "bi" / "block_influence")
    make([1, 2]).save(tmp_path / "runs" / "ila" / "extra")
    make([1, 2]).save(tmp_path / "runs" / "a" / "b" / "too_deep")
    assert result_paths(tmp_path / "runs") == [
        tmp_path / "runs" / "ila" / "importance.json",
        tmp_path / "runs" / "bi" / "block_influence" / "importance.json",
        tmp_path / "runs" / "ila" / "extra" / "importance.json",
    ]
    assert result_paths(tmp_path / "runs" / "ila") == [
        tmp_path / "runs" / "ila",
        tmp_path / "runs" / "ila" / "extra" / "importance.json",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no importance results"):
        result_paths(tmp_path / "empty")


# ---- the model's name in a result ---------------------------------------------------------------


def test_model_name_is_never_a_path(tmp_path, monkeypatch):
    from layerscope.core.models import DEFAULT_MODEL_NAME, model_name

    folder = tmp_path / "models" / "my-model"
    folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert model_name("models/my-model") == "my-model"
    assert model_name("./models/my-model/") == "my-model"
    assert model_name(str(folder)) == "my-model"
    assert model_name("../missing/other-model") == "other-model"
    assert model_name("default") == DEFAULT_MODEL_NAME
    assert model_name("/x/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"
    assert model_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    snap = tmp_path / "hub" / "models--org--name" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    assert model_name(str(snap)) == "org/name"


def test_model_info_stores_name_and_fingerprint(stories_path):
    from layerscope.core.importance import model_info
    from layerscope.core.layermap import build_layer_map
    from layerscope.core.models import load_model

    loaded = load_model(stories_path)
    assert loaded.name == "stories260K"
    lm = build_layer_map(loaded.model)
    for name in (str(stories_path), "model", None):  # a path, the old placeholder, nothing: the model's own name
        info = model_info(loaded.model, lm, name)
        assert info["name"] == "stories260K" and len(info["fingerprint"]) == 16


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model", None, "model must be a JSON object, got null"),
        ("data", [], "data must be a JSON object, got a list"),
        ("players", [0, 1], "players must be a list of names"),
        ("scores", "high", "scores must be a list of numbers"),
        ("scores", [0.1, "high"], "the score of 'layers.1' is not a number"),
        ("stderr", 0.1, "stderr must be a list of numbers"),
        ("stderr", [0.1, "x"], "stderr must be a list of numbers"),
        ("method", 3, "method must be a name"),
        ("players", ["layers.0", "layers.1.mlp"], "player 'layers.1.mlp' names below a block, not a block player"),
        ("players", ["layers.0", "embed"], "player 'embed' names no block"),
        ("granularity", "sublayer", "player 'layers.0' names a block, not a sublayer player"),
    ],
)
def test_fields_of_the_wrong_type_are_refused_in_one_line(tmp_path, field, value, message):
    """A hand-edited or foreign result: one DataError naming the file, not an AttributeError later."""
    from layerscope.core.errors import DataError

    path = LayerImportance("ablation", "block", ["layers.0", "layers.1"], [0.1, 0.2], {"name": "m"}).save(tmp_path)
    d = json.loads(path.read_text())
    d[field] = value
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match=message) as e:
        LayerImportance.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_an_infinite_score_is_refused_not_ranked_last():
    """JSON has no infinity: saved as null it would load as NaN and rank last, so +inf is refused up front."""
    with pytest.raises(ConfigError, match=r"the score of 'layers.1' is inf; scores are finite \(NaN: unknown\)"):
        LayerImportance("ablation", "block", ["layers.0", "layers.1"], [0.1, math.inf], {"name": "m"})
    nan = LayerImportance("ablation", "block", ["layers.0", "layers.1"], [math.nan, 0.2], {"name": "m"})
    assert nan.ranking() == ["layers.1", "layers.0"]  # unknown ranks last


def test_a_notebook_sees_one_line_and_may_pass_arrays():
    import numpy as np

    r = LayerImportance(
        "ablation",
        "block",
        ["layers.0", "layers.1", "layers.2", "layers.3"],
        np.array([0.1, 0.5, 0.2, 0.3]),
        {"name": "m"},
    )
    assert r.scores == [0.1, 0.5, 0.2, 0.3] and isinstance(r.scores, list)  # saved as JSON like any other
    assert (
        repr(r)
        == "LayerImportance(ablation, block, model 'm', 4 players: layers.1 +0.5, layers.3 +0.3, layers.2 +0.2, ...)"
    )
    r = LayerImportance("ila", "block", ["layers.0"], [1.0], {"name": "m"}, stderr=np.array([0.5]))
    assert r.stderr == [0.5] and repr(r).endswith("1 players: layers.0 +1)")
