"""Layer pruning (layerscope.pruning): saved models equal in-memory removal, on every architecture."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import transformers as tf
from tiny_models import FAMILIES, TinyTokenizer, random_sft, tiny_model

from layerscope.core.errors import ConfigError, DataError, ModelError
from layerscope.core.importance import LayerImportance
from layerscope.core.layermap import build_layer_map
from layerscope.engine import CoalitionEngine, removed
from layerscope.pruning import blocks as pb
from layerscope.pruning import choose
from layerscope.pruning import curve as pc
from layerscope.pruning import rankings as rk
from layerscope.pruning.save import NOTE, save_pruned
from layerscope.pruning.sublayers import prune_sublayers
from layerscope.scoring import LossEvaluator

torch.set_num_threads(1)
WORKING = [name for name, f in FAMILIES.items() if not f.refused_because]
REFUSED = [name for name, f in FAMILIES.items() if f.refused_because]
STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
IDS = torch.randint(3, 128, (2, 20), generator=torch.Generator().manual_seed(1))


def _logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _removed_logits(model, players, granularity) -> torch.Tensor:
    with removed(model, build_layer_map(model), players, granularity):
        return _logits(model)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) <= 1e-4 * max(1.0, float(b.abs().max()))


# ----------------------------------------------------------------------------- block pruning, every family


@pytest.mark.parametrize("name", WORKING)
def test_saved_block_pruned_model_equals_in_memory_removal(name, tmp_path):
    model = tiny_model(name, n_layers=4)
    gone = [0, 2]  # not contiguous, and the first block: layer_types patterns shift
    pruned = pb.prune(model, gone)
    out = save_pruned(pruned, None, tmp_path / "pruned", {"removed": gone})
    reloaded = tf.AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no layerscope
    assert build_layer_map(reloaded).n_blocks == 2
    assert _close(_logits(reloaded), _removed_logits(model, gone, "block"))
    assert json.loads((out / NOTE).read_text())["removed"] == gone
    config = json.loads((out / "config.json").read_text())
    for key, value in config.items():  # every per-layer list follows the kept blocks
        if isinstance(value, list) and "layer" in key and key != "mlp_only_layers":
            assert len(value) == 2, key


@pytest.mark.parametrize("name", REFUSED)
def test_refused_families_are_not_pruned(name):
    try:
        model = tiny_model(name, n_layers=2)
    except Exception as e:  # a family this transformers cannot even build
        pytest.skip(f"{name}: {e}")
    with pytest.raises(ModelError):
        pb.prune(model, [0])


def test_layer_types_follow_the_kept_blocks():
    model = tiny_model("gemma2", n_layers=4)  # sliding, full, sliding, full
    assert pb.prune(model, [0]).config.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    smol = tiny_model("smollm3", n_layers=4)  # no_rope_layers [1, 1, 1, 0]
    assert pb.prune(smol, [0]).config.no_rope_layers == [1, 1, 0]


def test_a_sliding_period_the_kept_blocks_break_is_dropped():
    """Gemma 3 also states its layout as a period; after pruning only layer_types can say it."""
    config = tf.AutoConfig.for_model("gemma3_text", num_hidden_layers=8, sliding_window_pattern=4)
    broken = pb.pruned_config(config, [0, 1, 2, 4, 5, 6, 7])  # block 3 (full attention) removed
    assert broken.layer_types[2:4] == ["sliding_attention", "sliding_attention"]
    assert "sliding_window_pattern" not in broken.to_dict()
    kept_period = pb.pruned_config(config, [0, 1, 2, 3])  # the first period: still every 4th block
    assert kept_period.to_dict()["sliding_window_pattern"] == 4


def test_a_layout_that_does_not_follow_is_refused(monkeypatch):
    """Were the config lists not carried over, the block settings check refuses (no silent change)."""
    real = pb.pruned_config

    def shifted(config, kept, **kw):  # the first n-k entries of layer_types: the pattern moves
        out = real(config, kept, **kw)
        out.layer_types = list(config.layer_types[: len(kept)])
        return out

    monkeypatch.setattr(pb, "pruned_config", shifted)
    with pytest.raises(ModelError, match="would change when moved"):
        pb.prune(tiny_model("gemma2", n_layers=4), [0])


def test_index_layouts_are_renumbered():
    d = {"first_k_dense_replace": 2, "decoder_sparse_step": 2, "mlp_only_layers": [0], "max_window_layers": 3}
    assert pb._index_layout({"moe_layers": [1, 3, 5]}, [1, 2, 3, 5]) == {"moe_layers": [0, 2, 3]}  # Llama 4
    # blocks 0..5 kept [1, 2, 3, 5]: dense were 0 (listed) and the even-positioned 0, 2, 4 (step 2);
    # blocks 0..2 attended fully (Qwen2's max_window_layers), of which 1 and 2 are kept
    assert pb._index_layout(d, [1, 2, 3, 5]) == {
        "first_k_dense_replace": 1,
        "max_window_layers": 2,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [1],
    }


def _variant(name, n_layers, **extra):
    """A tiny model of family ``name`` with config options ``extra`` on top of the table's."""
    f = FAMILIES[name]
    config = tf.AutoConfig.for_model(f.model_type, vocab_size=128, **{f.layers_key: n_layers}, **{**f.options, **extra})
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(config).eval()


def _saved_pruned(model, gone, out):
    """``model`` without blocks ``gone``, saved and reloaded with plain transformers: (config.json, reloaded),
    the reloaded logits checked against the in-place removal."""
    save_pruned(pb.prune(model, gone), None, out, {})
    reloaded = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    assert _close(_logits(reloaded), _removed_logits(model, gone, "block"))
    return json.loads((out / "config.json").read_text()), reloaded


def test_a_period_the_kept_blocks_break_leaves_the_saved_config(tmp_path):
    """Llama 4's interleave_moe_layer_step / no_rope_layer_interval and SmolLM3's no_rope_layer_interval abbreviate
    moe_layers / no_rope_layers; a period the pruned lists no longer follow is not saved beside them."""
    llama4 = _variant("llama4_text", 4, interleave_moe_layer_step=2, no_rope_layer_interval=2)
    assert llama4.config.moe_layers == [1, 3] and llama4.config.no_rope_layers == [1, 0, 1, 0]
    config, reloaded = _saved_pruned(llama4, [0, 2], tmp_path / "llama4")
    assert config["moe_layers"] == [0, 1] and config["no_rope_layers"] == [0, 0]
    assert "interleave_moe_layer_step" not in config and "no_rope_layer_interval" not in config
    assert reloaded.config.moe_layers == [0, 1] and reloaded.config.no_rope_layers == [0, 0]
    # blocks 2 and 3 removed: MoE on block 1 of 2 and NoPE on none is still every 2nd block: kept
    config, _ = _saved_pruned(llama4, [2, 3], tmp_path / "llama4-kept")
    assert config["interleave_moe_layer_step"] == 2 and config["no_rope_layer_interval"] == 2
    smol = _variant("smollm3", 4, no_rope_layer_interval=2)
    config, reloaded = _saved_pruned(smol, [0], tmp_path / "smol")
    assert config["no_rope_layers"] == [0, 1, 0] and "no_rope_layer_interval" not in config
    assert reloaded.config.no_rope_layers == [0, 1, 0]


def test_ernie_moe_range_is_renumbered(tmp_path):
    """ERNIE 4.5 says which blocks hold experts only as start / end / interval: renumbered, or refused."""
    ernie = _variant("ernie4_5_moe", 4, moe_layer_start_index=1)  # block 0 dense, blocks 1-3 MoE
    config, reloaded = _saved_pruned(ernie, [0], tmp_path / "first")  # all MoE now
    assert (config["moe_layer_start_index"], config["moe_layer_end_index"], config["moe_layer_interval"]) == (0, 2, 1)
    config, _ = _saved_pruned(ernie, [2], tmp_path / "middle")
    assert (config["moe_layer_start_index"], config["moe_layer_end_index"], config["moe_layer_interval"]) == (1, 2, 1)
    every_other = _variant("ernie4_5_moe", 4, moe_layer_interval=2)  # MoE on blocks 1 and 3
    config, reloaded = _saved_pruned(every_other, [0, 1], tmp_path / "interval")  # MoE on block 1 of 2
    assert (config["moe_layer_start_index"], config["moe_layer_end_index"], config["moe_layer_interval"]) == (0, 1, 2)
    assert type(reloaded.model.layers[0].mlp) is not type(reloaded.model.layers[1].mlp)
    with pytest.raises(ModelError, match=r"MoE at new positions \[0, 2\] of 3\) cannot be written as moe_layer_start"):
        pb.prune(every_other, [0])  # MoE on blocks 0 and 2 of 3: no start, end and interval say that


def test_exaone4_keeps_the_sliding_period_its_blocks_hold(tmp_path):
    """EXAONE 4's attention holds sliding_window_pattern (dropped, the class default 4 would change every block);
    layer_types says which blocks slide, and the saved model reloads with the same ones."""
    exaone = _variant("exaone4", 4, sliding_window_pattern=2)  # sliding, full, sliding, full
    config, reloaded = _saved_pruned(exaone, [1], tmp_path / "exaone")
    assert config["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention"]
    assert config["sliding_window_pattern"] == 2
    assert reloaded.config.layer_types == config["layer_types"]
    assert [layer.self_attn.is_sliding for layer in reloaded.model.layers] == [True, True, False]


def test_an_image_text_model_prunes_its_decoder(tmp_path):
    """Gemma 3's image-text model keeps its decoder's layer count and layer types in text_config."""
    from test_export import tiny_gemma3_with_vision

    model = tiny_gemma3_with_vision()
    pruned = pb.prune(model, [1])
    assert pruned.config.text_config.num_hidden_layers == 3 and len(pruned.config.text_config.layer_types) == 3
    reloaded = tf.AutoModelForCausalLM.from_pretrained(save_pruned(pruned, None, tmp_path / "p", {})).eval()
    ids = torch.tensor([[1, 5, 9, 13, 20, 7]])
    with torch.no_grad():
        assert _close(reloaded(ids).logits, pruned(ids).logits)


def test_bad_block_lists():
    model = tiny_model("llama", n_layers=3)
    with pytest.raises(ConfigError, match="at least one block must stay"):
        pb.prune(model, [0, 1, 2])
    with pytest.raises(ConfigError, match="out of range"):
        pb.prune(model, [5])
    with pytest.raises(ConfigError, match="no block"):
        pb.prune(model, [])
    assert build_layer_map(pb.prune(model, ["layers.1"])).n_blocks == 2


def test_prune_takes_only_block_names_and_integer_indices():
    model = tiny_model("llama", n_layers=4)
    lm = build_layer_map(model)
    for name in ("layers.1.mlp", "layers.1.self_attn.q_proj"):  # read as block 1 before
        with pytest.raises(ConfigError, match=f"^'{name}' is not a block: .*use prune_sublayers"):
            pb.prune(model, [name], lm)
    for bad in (1.7, True):  # 1.7 and True were block 1
        with pytest.raises(ConfigError, match=f"^block {bad!r} is not an integer index or a block name$"):
            pb.prune(model, [bad], lm)
    with pytest.raises(ConfigError, match="'1' is not a player"):
        pb.prune(model, ["1"], lm)
    assert pb.removed_blocks(lm, [np.int64(1), -1, "layers.0"]) == [0, 1, 3]


def test_prune_refuses_the_loaded_model_wrapper():
    from layerscope.core.models import LoadedModel

    model = tiny_model("llama", n_layers=3)
    loaded = LoadedModel(model=model, tokenizer=None, name="tiny")
    for call in (
        lambda: pb.prune(loaded, [1]),
        lambda: pb.prune(loaded, [1], build_layer_map(model)),
        lambda: prune_sublayers(loaded, [1], build_layer_map(model)),
    ):
        with pytest.raises(ModelError, match="^got the LoadedModel .*pass its \\.model"):
            call()


def test_engine_value_equals_the_pruned_model():
    model = tiny_model("llama", n_layers=4)
    ev = LossEvaluator(TinyTokenizer(), random_sft(6, 3).examples, batch_size=3)
    engine = CoalitionEngine(model, build_layer_map(model), ev, "block")
    pruned = pb.prune(model, [1, 3])
    assert math.isclose(engine.value([0, 2]), ev.evaluate(pruned).value, rel_tol=1e-5)


def test_shapley_method_uses_the_estimator_asked_for():
    from layerscope.methods.shapley import shapley

    model = tiny_model("llama", n_layers=4)
    lm = build_layer_map(model)
    ev = LossEvaluator(TinyTokenizer(), random_sft(6, 3).examples, batch_size=3)
    engine = CoalitionEngine(model, lm, ev, "block")
    choice, imp = choose.by_method("shapley", lm, "block", 2, engine=engine, estimator="exact")
    exact = shapley(engine, engine.n, "exact")
    assert imp.method_config["estimator"] == "exact" and imp.scores == pytest.approx(list(exact.values))
    assert choice.players == sorted(np.argsort(exact.values, kind="stable")[:2].tolist())


# ----------------------------------------------------------------------------- sub-layer pruning


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom", "mpt", "opt", "gemma2"])
def test_saved_sublayer_pruned_model_equals_in_memory_removal(name, tmp_path):
    model = tiny_model(name, n_layers=3)
    pruned, zeroed = prune_sublayers(model, [0, 3])
    assert zeroed and all(float(pruned.get_parameter(p).detach().abs().max()) == 0 for p in zeroed)
    out = save_pruned(pruned, None, tmp_path / "pruned", {"zeroed": zeroed})
    reloaded = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    assert build_layer_map(reloaded).n_blocks == 3  # the layer count stays
    assert _close(_logits(reloaded), _removed_logits(model, [0, 3], "sublayer"))
    assert float(model.get_parameter(zeroed[0]).detach().abs().max()) > 0  # the original is untouched


def test_sublayer_pruning_refuses_a_mixture_of_experts():
    """Zeroing the last linear of Qwen2-MoE's MLP (the shared expert's gate) leaves its experts adding to the
    output. In bfloat16 the logits check's tolerance (3e-2) let it pass beside a removed attention; the
    removed sub-layers must add exactly nothing, in any dtype."""
    with pytest.raises(ModelError, match=r"with model\.layers\.0\.mlp\.\S+ zeroed, layers\.0\.mlp still adds up to"):
        prune_sublayers(tiny_model("qwen2_moe", n_layers=2), [1])
    model = tiny_model("qwen2_moe", n_layers=4).to(torch.bfloat16)
    with pytest.raises(ModelError, match="layers.0.mlp still adds"):
        prune_sublayers(model, ["layers.0.mlp", "layers.3.self_attn"])
    pruned, _ = prune_sublayers(model, ["layers.3.self_attn"])  # an attention is removed exactly


def test_sublayer_pruning_refuses_a_sublayer_with_nothing_to_zero():
    """Inkling's MoE keeps its experts (and shared experts) as fused tensors of sub-modules: its output_path,
    the MLP itself, has no parameter to zero. Removing the last one moves the tiny model's logits by less than
    the float tolerance, so the logits check alone passed the unpruned copy (saved with "zeroed": [])."""
    model = tiny_model("inkling_text", n_layers=4)
    with pytest.raises(ModelError, match=r"^InklingForCausalLM: layers\.3\.mlp has no output projection of its own"):
        prune_sublayers(model, ["layers.3.mlp"])
    _, zeroed = prune_sublayers(model, ["layers.3.self_attn"])  # its attention has an o_proj
    assert zeroed == ["model.layers.3.self_attn.o_proj.weight"]


def test_logits_check_compares_with_what_the_removal_changes():
    """A removal whose effect is below the tolerance: a model that removed nothing must still be refused."""
    import copy

    model = tiny_model("llama", n_layers=3)
    lm = build_layer_map(model)
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight.mul_(1e-3)  # its removal moves the logits by ~1e-5
    base, without = _logits(model), _removed_logits(model, ["layers.2.mlp"], "sublayer")
    assert 0 < float((base - without).abs().max()) < 1e-4
    player = lm.players("sublayer").index("layers.2.mlp")
    with pytest.raises(ModelError, match="removal itself changes them by"):
        pb.check_equals_removal(model, copy.deepcopy(model), lm, [player], "sublayer")
    pruned, _ = prune_sublayers(model, [player], lm)  # the real removal passes, exactly
    assert pb.check_equals_removal(model, pruned, lm, [player], "sublayer") == 0.0


# ----------------------------------------------------------------------------- orders


def _module_ranking(model, scores_by_block) -> LayerImportance:
    from layerscope.core.importance import model_info

    lm = build_layer_map(model)
    players = lm.players("module")
    scores = [scores_by_block[lm.block_of(p)] + 0.001 * i for i, p in enumerate(players)]
    return LayerImportance("ila", "module", players, scores, model_info(model, lm, "tiny"))


def test_module_ranking_aggregates_to_blocks():
    model = tiny_model("llama", n_layers=4)
    imp = _module_ranking(model, [3.0, 0.5, 2.0, 0.1])
    level = rk.at_level(imp, build_layer_map(model), "block", "r")
    assert rk.least_players(level, 2) == [1, 3] and rk.least_important(level, 2) == ["layers.1", "layers.3"]
    imp.scores[0] = float("nan")
    with pytest.raises(ConfigError, match="cannot aggregate"):
        rk.at_level(imp, build_layer_map(model), "block", "r")
    blocks = rk.at_level(_module_ranking(model, [1, 2, 3, 4]), build_layer_map(model), "block", "r")
    with pytest.raises(ConfigError, match="cannot refine"):
        rk.at_level(blocks, build_layer_map(model), "sublayer", "r")


def _sublayer_ranking(model, scores) -> LayerImportance:
    from layerscope.core.importance import model_info

    lm = build_layer_map(model)
    return LayerImportance("ablation", "sublayer", lm.players("sublayer"), scores, model_info(model, lm, "tiny"))


def test_a_removal_that_tied_scores_decided_is_noted():
    """Two sub-layers tied at the cut: which one goes follows layer order, and prune says so."""
    model = tiny_model("llama", n_layers=5)
    lm = build_layer_map(model)
    tied = _sublayer_ranking(model, [5.0, 9.0, 1.0, 6.0, 1.0, 7.0, 8.0, 9.0, 2.0, 3.0])
    choice = choose.from_ranking(tied, lm, "sublayer", 1)
    assert choice.names == ["layers.2.self_attn"]
    assert choice.tie_note.startswith("1 of the 1 selected players tie in score with players left out")
    assert "(e.g. layers.2.self_attn with layers.1.self_attn)" in choice.tie_note  # the kept twin, not the chosen
    assert choose.from_ranking(tied, lm, "sublayer", 2).tie_note is None  # both tied ones go: nothing decided


def test_least_important_names_players_at_their_level_and_blocks_as_the_cli_does():
    """Player 0 of a sub-layer ranking is block 0's attention: read as a block index it removed block 0,
    whose MLP is a cornerstone. least_important gives names, which say their level (prune refuses a
    sub-layer's); least_important_blocks gives blocks (mean per block), as `prune` chooses them."""
    model = tiny_model("llama", n_layers=5)
    lm = build_layer_map(model)
    # layers.0.self_attn scores lowest of all, but layers.0.mlp highest: block 2 has the lowest mean
    imp = _sublayer_ranking(model, [0.0, 9.0, 1.0, 1.2, 0.3, 0.4, 0.8, 0.9, 2.0, 2.5])
    cli = choose.from_ranking(imp, lm, "block", 1)  # what `layerscope prune --importance R --remove 1` runs
    assert rk.least_important_blocks(imp, 1) == cli.names == ["layers.2"] and cli.players == [2]
    assert _close(_logits(pb.prune(model, rk.least_important_blocks(imp, 1))), _removed_logits(model, [2], "block"))
    assert rk.least_important(imp, 1) == ["layers.0.self_attn"]  # for prune_sublayers; prune refuses it:
    with pytest.raises(ConfigError, match="is not a block: .*or least_important_blocks"):
        pb.prune(model, rk.least_important(imp, 1))
    assert _close(_logits(pb.prune(model, cli)), _removed_logits(model, [2], "block"))  # a Choice: its names
    assert rk.least_important_blocks(imp, 2) == choose.from_ranking(imp, lm, "block", 2).names
    # a module (ILA) ranking: blocks too, not module 14 ("out of range" here, a wrong block on a deep model)
    modules = _module_ranking(model, [3.0, 0.5, 2.0, 0.1, 4.0])
    assert rk.least_important_blocks(modules, 2) == choose.from_ranking(modules, lm, "block", 2).names
    # the sub-layer choice still counts sub-layers, for prune_sublayers
    assert choose.from_ranking(imp, lm, "sublayer", 1).players == [0]
    with pytest.raises(ConfigError, match="at least one must stay"):
        rk.least_important_blocks(imp, 5)
    imp.scores[3] = float("nan")
    with pytest.raises(ConfigError, match="^least_important_blocks: cannot aggregate the ranking to blocks: layers.1 "):
        rk.least_important_blocks(imp, 1)


def test_prune_refuses_what_may_not_be_a_block_list():
    model = tiny_model("llama", n_layers=4)
    lm = build_layer_map(model)
    imp = _sublayer_ranking(model, [float(i) for i in range(8)])
    with pytest.raises(ConfigError, match="^prune takes block indices or names, not a sublayer ranking: .*blocks"):
        pb.prune(model, imp, lm)
    with pytest.raises(ConfigError, match="^'layers.0.self_attn' is not a block: .*use prune_sublayers"):
        pb.prune(model, choose.from_ranking(imp, lm, "sublayer", 1), lm)  # a Choice of sub-layers
    for bad, kind in (({1: 0.5}, "dict"), (None, "NoneType"), (1.0, "float")):
        with pytest.raises(ConfigError, match=f"^blocks must be a list of block indices or names \\(got a {kind}\\)$"):
            pb.removed_blocks(lm, bad)
    # one block alone is one block (a name is not read as its characters); arrays as before
    for one in (2, np.int64(2), torch.tensor(2), "layers.2", np.array([2]), torch.tensor([2])):
        assert pb.removed_blocks(lm, one) == [2]


def test_pruning_exports_the_choosers_and_lists_each_name_once():
    import layerscope.pruning as pruning

    assert pruning.least_important_blocks is rk.least_important_blocks and pruning.from_ranking is choose.from_ranking
    names = dir(pruning)  # after a read, the name is in the namespace too
    assert len(names) == len(set(names)) and {"least_important", "from_ranking", "prune"} <= set(names)


def test_angular_window_last_random():
    table = {"1": [0.3, 0.2, 0.4, 0.5], "2": [0.5, 0.6, 0.1], "3": [0.7, 0.6]}
    imp = LayerImportance("angular-distance", "block", [f"layers.{i}" for i in range(4)], [0.3, 0.2, 0.4, 0.5], {})
    imp.extras = {"table": table}
    assert rk.angular_window(imp, 1) == [1]
    assert rk.angular_window(imp, 2) == [2, 3]
    assert rk.angular_window(imp, 3) == [1, 2, 3]
    assert rk.last_players(5, 2) == [3, 4]
    assert set(rk.random_players(9, 3, 7)) <= set(rk.random_players(9, 4, 7))
    assert rk.random_players(9, 3, 7) == rk.random_players(9, 3, 7)
    # a distance that is not a number never wins a window; a table of none is refused
    imp.extras = {"table": {"1": [float("nan"), 0.4, None, 0.5], "2": [float("nan"), None, float("inf")]}}
    assert rk.angular_window(imp, 1) == [1]
    with pytest.raises(ConfigError, match="no finite distance"):
        rk.angular_window(imp, 2)
    # an angular-distance result gives Gromov's window under any label, as `prune` reads it
    imp.extras = {"table": table}
    for label in ("angular", "gromov"):
        schedule = pc.ranking_schedule(label, imp, 3)
        assert schedule.method == "angular-window" and schedule.removed == [[1], [2, 3], [1, 2, 3]]


class _AdditiveGame:
    """v(kept) = sum of the kept players' weights: greedy must remove the lightest first."""

    granularity = "block"

    def __init__(self, weights):
        self.w, self.n = weights, len(weights)

    def values(self, coalitions, progress=False):
        return [sum(self.w[p] for p in c) for c in coalitions]


def test_greedy_removes_what_costs_least():
    order, values = rk.greedy_players(_AdditiveGame([5.0, 1.0, 3.0, 0.5]), 3)
    assert order == [3, 1, 2]
    assert values == [9.0, 8.0, 5.0]

    # a removal whose value is NaN (an overflow) is never the best step, even found first
    class Overflowing(_AdditiveGame):
        def values(self, coalitions, progress=False):
            return [float("nan") if 0 not in c else v for c, v in zip(coalitions, super().values(coalitions))]

    order, _ = rk.greedy_players(Overflowing([5.0, 1.0, 3.0, 0.5]), 1)
    assert order == [3]


def test_counts():
    assert rk.count_from_fraction(0.5, 5) == 2
    with pytest.raises(ConfigError, match="removes none"):
        rk.count_from_fraction(0.1, 5)
    with pytest.raises(ConfigError, match="at least one must stay"):
        rk.checked_count(5, 5)


def test_method_names_agree_with_the_cli():
    from layerscope.cli.prune import METHOD_CHOICES
    from layerscope.cli.shapley import ESTIMATORS as CLI_ESTIMATORS
    from layerscope.methods.shapley import ESTIMATORS
    from layerscope.pruning.choose import METHODS

    assert METHOD_CHOICES == METHODS
    assert set(CLI_ESTIMATORS) == set(ESTIMATORS)


# ----------------------------------------------------------------------------- curve


def test_summary():
    s = pc.summary([0.50, 0.495, 0.46, 0.49, 0.30])
    assert s["within_1"] == 1 and s["within_5"] == 3
    assert math.isclose(s["auc"], (0.4975 + 0.4775 + 0.475 + 0.395) / 4)
    # a value that is not a number is never "within" anything
    assert pc.summary([0.5, float("nan"), 0.5])["within_5"] == 0


def test_pruning_curve_writes_what_the_report_reads(tmp_path):
    from layerscope.viz.report.load import load_inputs

    model = tiny_model("llama", n_layers=4)
    lm = build_layer_map(model)
    ev = LossEvaluator(TinyTokenizer(), random_sft(6, 3).examples, batch_size=3)
    engine = CoalitionEngine(model, lm, ev, "block")
    curves = pc.pruning_curve(engine, {"ila": _module_ranking(model, [3.0, 0.5, 2.0, 0.1])}, 3, model_name="tiny")
    labels = [c["label"] for c in curves["curves"]]
    assert labels == ["ila", "greedy", "last", "random-seed0", "random-seed1", "random-seed2"]
    ila = curves["curves"][0]
    assert ila["removed"][2] == ["layers.1", "layers.3"]
    assert math.isclose(ila["values"][2], ev.evaluate(pb.prune(model, [1, 3])).value, rel_tol=1e-5)
    greedy = curves["curves"][1]
    assert greedy["values"][1] >= max(c["values"][1] for c in curves["curves"])  # greedy's first step is best
    pc.write_curves(curves, tmp_path / "curve")
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 0
    assert "| greedy |" in (tmp_path / "curve" / "table.md").read_text()
    inputs = load_inputs([tmp_path / "curve"])
    assert sorted(p.ranking for p in inputs.prunings) == sorted(labels)
    assert inputs.prunings[0].n_removed == [0, 1, 2, 3]
    only = pc.pruning_curve(
        engine, {"ila": _module_ranking(model, [3.0, 0.5, 2.0, 0.1])}, 3, greedy=False, baselines=False
    )
    assert [c["label"] for c in only["curves"]] == ["ila"] and only["curves"][0]["values"] == ila["values"]


def test_pruning_curve_refuses_a_ranking_of_another_model():
    """Same config, other weights: the API ran it; prune-curve refuses it, and so does pruning_curve now."""
    model, other = tiny_model("llama", n_layers=4), tiny_model("llama", n_layers=4, seed=1)
    ev = LossEvaluator(TinyTokenizer(), random_sft(6, 3).examples, batch_size=3)
    engine = CoalitionEngine(model, build_layer_map(model), ev, "block")
    theirs = _module_ranking(other, [3.0, 0.5, 2.0, 0.1])
    fingerprint = r"^ranking 'ila': ranking was computed on model 'tiny' \(weights fingerprint"
    with pytest.raises(ConfigError, match=fingerprint):
        pc.pruning_curve(engine, {"ila": theirs}, 2, greedy=False, baselines=False)
    curves = pc.pruning_curve(engine, {"ila": theirs}, 2, greedy=False, baselines=False, ignore_fingerprint=True)
    assert [c["label"] for c in curves["curves"]] == ["ila"]


def test_pruning_curve_takes_a_list_of_rankings_labelled_by_method():
    """``pruning_curve(engine, [imp])`` was an AttributeError on ``list.items``: a list (or one result) is
    labelled by method, a repeated method numbered; anything else is refused in one line."""
    from dataclasses import replace

    model = tiny_model("llama", n_layers=4)
    ev = LossEvaluator(TinyTokenizer(), random_sft(4, 3).examples, batch_size=4)
    engine = CoalitionEngine(model, build_layer_map(model), ev, "block")
    ila = _module_ranking(model, [3.0, 0.5, 2.0, 0.1])
    other = replace(ila, scores=list(reversed(ila.scores)))
    curves = pc.pruning_curve(engine, [ila, other], 2, greedy=False, baselines=False)["curves"]
    assert [c["label"] for c in curves] == ["ila", "ila-2"]
    by_dict = pc.pruning_curve(engine, {"x": ila}, 2, greedy=False, baselines=False)["curves"]
    assert curves[0]["values"] == by_dict[0]["values"] and curves[1]["values"] != curves[0]["values"]
    assert pc.labelled_rankings(ila) == {"ila": ila}
    with pytest.raises(ConfigError, match=r"^rankings must map labels to LayerImportance results.* got str$"):
        pc.pruning_curve(engine, "ila.json", 2)
    with pytest.raises(ConfigError, match=r"^rankings: 'ila' is a str, not a LayerImportance result$"):
        pc.pruning_curve(engine, {"ila": "ila.json"}, 2)


# ----------------------------------------------------------------------------- healing and the command


def test_heal_merges_lora_into_a_plain_model():
    from layerscope.pruning.heal import heal

    pruned = pb.prune(tiny_model("llama", n_layers=3), [1])
    res = heal(pruned, TinyTokenizer(), random_sft(8, 0), random_sft(4, 1), max_steps=2, method="lora")
    assert type(res.model) is tf.LlamaForCausalLM
    assert not any("lora" in n for n, _ in res.model.named_parameters())
    assert res.loss_before is not None and math.isfinite(res.loss_after)


@pytest.mark.parametrize(
    "method, form",
    [
        ("lora", "names"),
        ("full", "names"),
        ("lora", "indices"),
        ("lora", "zeroed"),
        ("lora", "omitted"),
        ("full", "omitted"),
    ],
)
def test_healing_leaves_removed_sublayers_removed(method, form):
    """A zeroed output projection is not trained back by healing (a merged LoRA update or a bias would),
    whether the pruned sub-layers are named as prune_sublayers takes them, as it returns them, or not at
    all (found by their all-zero weights, with a warning)."""
    import warnings

    from layerscope.pruning.heal import heal

    model = tiny_model("qwen2", n_layers=3)  # biases on q / k / v
    lm = build_layer_map(model)
    gone = ["layers.1.self_attn", "layers.2.mlp"]
    pruned, zeroed = prune_sublayers(model, gone, lm)
    given = {"names": gone, "indices": [2, 5], "zeroed": zeroed, "omitted": None}[form]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = (random_sft(8, 0), random_sft(4, 1))
        res = heal(pruned, TinyTokenizer(), *data, max_steps=2, method=method, removed_sublayers=given)
    notes = [str(w.message) for w in caught if str(w.message).startswith("heal: ")]
    expected = "heal: layers.1.self_attn, layers.2.mlp have an all-zero output projection, as a pruned sub-layer has"
    assert notes == [] if given else len(notes) == 1 and notes[0].startswith(expected)
    assert res.model is pruned  # trained in place, as the docstring says
    assert res.frozen_sublayers == gone and res.to_dict()["frozen_sublayers"] == gone
    params = dict(res.model.named_parameters())
    assert zeroed and all(float(params[n].abs().sum()) == 0.0 for n in zeroed)
    kept = "model.layers.0.self_attn.o_proj.weight"
    assert not torch.equal(params[kept], dict(model.named_parameters())[kept])  # the rest did train


def test_healing_trains_zero_initialised_projections_when_asked():
    """freeze_zeroed=False: a projection that is zero by initialisation, not pruning, trains."""
    from layerscope.pruning.heal import heal

    model = tiny_model("llama", n_layers=2)
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.o_proj.weight.zero_()
    data = (random_sft(8, 0), random_sft(4, 1))
    res = heal(model, TinyTokenizer(), *data, max_steps=2, method="full", freeze_zeroed=False)
    assert res.frozen_sublayers == []
    assert float(res.model.model.layers[0].self_attn.o_proj.weight.abs().sum()) > 0


@pytest.mark.parametrize(
    "given, message",
    [
        (["bogus"], r"'bogus' is neither a sub-layer of the model \(e\.g\. layers\.0\.self_attn\) nor a parameter"),
        (["layers.9.mlp"], r"'layers\.9\.mlp' is neither a sub-layer"),
        (["layers.1"], r"'layers\.1' is neither a sub-layer"),  # a block, not a sub-layer
        (["model.layers.1.self_attn.q_proj.weight"], r"'model\.layers\.1\.self_attn\.q_proj\.weight' is neither"),
        ([2, 99], r"player index 99 out of range: there are 6 players"),
        ([1.5], r"player 1\.5 is not an index or a player name"),
        (2.0, r"a float; give a list of sub-layer names or indices"),
    ],
)
def test_heal_refuses_what_names_no_pruned_sublayer(given, message):
    """An entry heal cannot place is refused before anything trains (skipping it trained the sub-layer back)."""
    from layerscope.pruning.heal import heal

    pruned, _ = prune_sublayers(tiny_model("llama", n_layers=3), ["layers.1.self_attn"])
    before = {n: p.clone() for n, p in pruned.named_parameters()}
    with pytest.raises(ConfigError, match=f"^removed_sublayers: {message}"):
        heal(pruned, TinyTokenizer(), random_sft(8, 0), random_sft(4, 1), max_steps=2, removed_sublayers=given)
    assert all(torch.equal(p, before[n]) for n, p in pruned.named_parameters())


def test_save_pruned_refuses_the_loaded_model_wrapper_and_a_note_that_is_not_json(tmp_path):
    from layerscope.core.models import LoadedModel

    model = tiny_model("llama", n_layers=2)
    with pytest.raises(ModelError, match="^got the LoadedModel .*pass its \\.model"):
        save_pruned(LoadedModel(model=model, tokenizer=None, name="tiny"), None, tmp_path / "a", {})
    with pytest.raises(ConfigError, match=r"^note\['a'\]: not JSON \(Object of type object is not JSON serializable\)"):
        save_pruned(model, None, tmp_path / "b", {"removed": ["layers.1"], "a": object()})
    with pytest.raises(ConfigError, match=r"^note: a list, not a dict"):
        save_pruned(model, None, tmp_path / "c", [])
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
def test_the_tokenizer_is_saved_as_the_source_had_it(tmp_path):
    """load_model gives a tokenizer without a pad token its eos to pad batches; the pruned model's folder
    does not get it, and a pad token the source names is kept."""
    import shutil

    from layerscope.core.models import load_model

    loaded = load_model(STORIES)
    assert loaded.tokenizer.pad_token == "</s>"  # added for batching
    pruned = pb.prune(loaded.model, [4])
    out = save_pruned(pruned, loaded.tokenizer, tmp_path / "pruned", {})
    assert "pad_token" not in json.loads((out / "tokenizer_config.json").read_text())
    assert tf.AutoTokenizer.from_pretrained(out).pad_token is None
    assert loaded.tokenizer.pad_token == "</s>"  # the loaded one is left as it was
    padded = tmp_path / "padded"  # a source naming its pad token (the eos, as many do)
    shutil.copytree(STORIES, padded)
    config = json.loads((padded / "tokenizer_config.json").read_text())
    (padded / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "</s>"}))
    loaded = load_model(padded)
    out = save_pruned(pb.prune(loaded.model, [4]), loaded.tokenizer, tmp_path / "pruned-padded", {})
    assert tf.AutoTokenizer.from_pretrained(out).pad_token == "</s>"


def _sft_file(tmp_path: Path) -> str:
    records = [
        {"instruction": f"Tell me about a {t}.", "input": "", "output": f"Once upon a time there was a {t}."}
        for t in ("cat", "dog", "bird", "frog", "tree", "ball", "boat", "star", "sun", "moon")
    ]
    path = tmp_path / "sft.json"
    path.write_text(json.dumps(records))
    return str(path)


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
def test_prune_command_heals_and_saves_a_loadable_model(tmp_path, capsys):
    from layerscope.cli.app import main

    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(STORIES), "--method", "last", "--remove", "2", "--out", str(out)]
    argv += ["--heal", _sft_file(tmp_path), "--max-steps", "2", "--no-progress"]
    assert main(argv) == 0
    assert "held-out loss of the pruned model" in capsys.readouterr().out
    note = json.loads((out / NOTE).read_text())
    assert note["removed"] == ["layers.3", "layers.4"] and note["n_blocks_after"] == 3
    assert note["healing"]["steps"] == 2
    reloaded = tf.AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == 3
    assert tf.AutoTokenizer.from_pretrained(out)("Once upon").input_ids
    assert tf.AutoTokenizer.from_pretrained(out).pad_token is None  # as the source: layerscope's pad not saved
    assert not list(tmp_path.glob(".pruned*"))  # no temp folder left
    assert main(argv) == 2  # the folder exists now: refused, not overwritten


def test_prune_command_reports_the_healed_task_value(tmp_path, capsys):
    from layerscope.cli.app import main
    from layerscope.scoring import evaluator_for

    out, data = tmp_path / "pruned", _sft_file(tmp_path)
    argv = ["prune", "--model", str(STORIES), "--method", "last", "--remove", "1", "--out", str(out)]
    argv += ["--task", f"loss:{data}", "--heal", data, "--max-steps", "2", "--no-progress"]
    assert main(argv) == 0
    value = json.loads((out / NOTE).read_text())["value"]
    assert f"healed {value['healed']:.4f}" in capsys.readouterr().out
    reloaded = tf.AutoModelForCausalLM.from_pretrained(out)
    tok = tf.AutoTokenizer.from_pretrained(out)
    ev, _ = evaluator_for(f"loss:{data}", reloaded, tok, limit=200, batch_size=16, max_length=256)
    assert math.isclose(ev.evaluate(reloaded).value, value["healed"], rel_tol=1e-5)  # the saved model's value
    assert value["healed"] != value["pruned"]


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
def test_prune_command_follows_a_saved_ranking(tmp_path):
    from layerscope.cli.app import main
    from layerscope.core.models import load_model

    model = load_model(STORIES).model
    imp = _module_ranking(model, [5.0, 0.2, 3.0, 0.1, 4.0])
    imp.save(tmp_path / "ila" / "importance.json")
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(STORIES), "--importance", str(tmp_path / "ila"), "--fraction", "0.4"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    note = json.loads((out / NOTE).read_text())
    assert note["removed"] == ["layers.1", "layers.3"] and note["ranking"]["aggregated_to"] == "block"
    assert _close(
        _logits(tf.AutoModelForCausalLM.from_pretrained(out), IDS % 512),
        _removed_logits_on(model, [1, 3], IDS % 512),
    )
    with pytest.raises(DataError):
        LayerImportance.load(tmp_path / "nothing")


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
def test_least_important_blocks_removes_the_block_the_prune_command_removes(tmp_path):
    from layerscope.cli.app import main
    from layerscope.core.models import load_model

    model = load_model(STORIES).model  # 5 blocks
    _sublayer_ranking(model, [0.0, 9.0, 1.0, 1.2, 0.3, 0.4, 0.8, 0.9, 2.0, 2.5]).save(tmp_path / "abl")
    out = tmp_path / "pruned"
    argv = ["prune", "--model", str(STORIES), "--importance", str(tmp_path / "abl"), "--remove", "1"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / NOTE).read_text())["removed"] == ["layers.2"]
    api = pb.prune(model, rk.least_important_blocks(LayerImportance.load(tmp_path / "abl"), 1))
    assert _close(_logits(api, IDS % 512), _logits(tf.AutoModelForCausalLM.from_pretrained(out), IDS % 512))


def test_at_chance_note_of_curves_is_the_one_ablate_prints():
    from layerscope.methods.ablation import at_chance_note

    note = pc.at_chance_note({"baseline": {"full": 0.1333, "chance": 0.25}})
    assert note == at_chance_note(0.1333, 0.25) and "below chance (0.2500)" in note
    assert pc.at_chance_note({"baseline": {"full": 0.6, "chance": 0.25}}) is None
    assert pc.at_chance_note({"baseline": {"full": 0.2, "chance": float("nan")}}) is None  # chance unknown
    assert pc.at_chance_note({"baseline": {"full": 0.2, "chance": None}}) is None


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
def test_prune_curve_notes_a_full_model_at_chance_once_per_task(tmp_path, capsys, monkeypatch):
    """As ``ablate`` and ``shapley`` do: a task on which the full model is at chance gets the note on
    stderr, once (not once per curve); a task above chance gets none."""
    from layerscope.cli import prune_curve
    from layerscope.cli.app import main

    def fake_curves(loaded, lm, args, given, skip=frozenset()):
        for spec, full in (("arc_easy", 0.1333), ("piqa", 0.7)):
            values = [full, full + 0.1, full + 0.15]
            curves = [
                {
                    "label": lab,
                    "method": lab,
                    "source": {},
                    "values": values,
                    "removed": [[], ["layers.1"], ["layers.1", "layers.2"]],
                    **pc.summary(values),
                }
                for lab in ("ablation", "last")
            ]
            yield (
                spec,
                {
                    "kind": "pruning-curves",
                    "model": {"name": "stories260K", "n_blocks": 5},
                    "data": {"task": spec, "metric": "acc_norm"},
                    "granularity": "block",
                    "k_max": 2,
                    "baseline": {"full": full, "chance": 0.25 if spec == "arc_easy" else 0.5},
                    "curves": curves,
                },
            )

    monkeypatch.setattr(prune_curve, "task_curves", fake_curves)
    argv = ["prune-curve", "--model", str(STORIES), "--task", "arc_easy", "--task", "piqa", "--k-max", "2"]
    assert main([*argv, "--threads", "1", "--no-progress", "--out", str(tmp_path / "curves")]) == 0
    out, err = capsys.readouterr()
    assert "== arc_easy: full model acc_norm 0.1333, chance 0.2500" in out and "== piqa:" in out
    assert err.count("note: the full model scores") == 1
    assert "note: the full model scores 0.1333, below chance (0.2500)" in err


def _removed_logits_on(model, players, ids):
    with removed(model, build_layer_map(model), players, "block"):
        return _logits(model, ids)


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
def test_prune_curve_command(tmp_path, capsys):
    from layerscope.cli.app import main
    from layerscope.core.models import load_model
    from layerscope.viz.report.load import load_inputs

    imp = _module_ranking(load_model(STORIES).model, [5.0, 0.2, 3.0, 0.1, 4.0])
    imp.save(tmp_path / "ila" / "importance.json")
    out = tmp_path / "curves"
    argv = ["prune-curve", "--model", str(STORIES), "--task", "arc_easy", "--task", "loss:demo", "--limit", "8"]
    argv += ["--k-max", "2", "--importance", f"ila={tmp_path / 'ila'}", "--max-length", "64", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    for task in ("arc_easy", "demo"):
        curves = json.loads((out / task / "curves.json").read_text())
        labels = [c["label"] for c in curves["curves"]]
        assert labels[:5] == ["block-influence", "angular", "ablation", "ila", "shapley-exact"]
        assert labels[5:] == ["greedy", "last", "random-seed0", "random-seed1", "random-seed2"]
        ila = curves["curves"][3]
        assert ila["removed"][2] == ["layers.1", "layers.3"] and len(ila["values"]) == 3
        assert sorted(p.ranking for p in load_inputs([out / task]).prunings) == sorted(labels)
    assert "| greedy |" in capsys.readouterr().out
    # every coalition value was logged: a resumed run computes nothing and writes the same curves
    before = (out / "demo" / "curves.json").read_text()
    from layerscope.engine import coalitions

    engines, init = [], coalitions.CoalitionEngine.__init__

    def recording_init(self, *a, **kw):
        engines.append(self)
        init(self, *a, **kw)

    with mock.patch.object(coalitions.CoalitionEngine, "__init__", recording_init):
        assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert "resuming:" in capsys.readouterr().err
    assert engines and all(e.stats.evaluations == 0 and e.stats.resumed > 0 for e in engines)
    assert json.loads((out / "demo" / "curves.json").read_text())["curves"] == json.loads(before)["curves"]


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
def test_prune_curve_cache_size_changes_speed_not_values(tmp_path, monkeypatch):
    """--cache-mb reaches the engine; with no cache (every prefix recomputed) the curves are the same."""
    from layerscope.cli.app import main
    from layerscope.engine import coalitions

    budgets = []
    init = coalitions.CoalitionEngine.__init__

    def recording_init(self, *a, **kw):
        budgets.append(kw.get("cache_mb"))
        init(self, *a, **kw)

    monkeypatch.setattr(coalitions.CoalitionEngine, "__init__", recording_init)
    argv = ["prune-curve", "--model", str(STORIES), "--task", "loss:demo", "--limit", "4", "--k-max", "2"]
    argv += ["--max-length", "64", "--shapley", "none", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "cached")]) == 0
    assert main([*argv, "--cache-mb", "0", "--out", str(tmp_path / "uncached")]) == 0
    assert budgets == [2048.0, 0.0]
    cached, uncached = (json.loads((tmp_path / f / "demo" / "curves.json").read_text()) for f in ("cached", "uncached"))
    assert cached["curves"] == uncached["curves"]


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
def test_prune_curve_chooses_on_other_items(tmp_path):
    """--selection-items: ablation, Shapley and greedy choose on items after the scored ones."""
    from layerscope.cli.app import main

    out = tmp_path / "curves"
    argv = ["prune-curve", "--model", str(STORIES), "--task", "loss:demo", "--limit", "4", "--selection-items", "4"]
    assert main([*argv, "--k-max", "2", "--max-length", "64", "--no-progress", "--out", str(out)]) == 0
    curves = json.loads((out / "demo" / "curves.json").read_text())
    assert curves["chosen_on"]["first_item"] == 4 and "first_item" not in curves["data"]
    assert (out / "demo" / "selection" / "coalitions.jsonl").exists()
    chosen = {c["label"]: c for c in curves["curves"]}
    # greedy's steps are those of a greedy search on the other items, its values those of the scored ones
    from layerscope.core.layermap import build_layer_map
    from layerscope.core.models import load_model
    from layerscope.engine.coalitions import CoalitionEngine
    from layerscope.pruning.rankings import greedy_players
    from layerscope.scoring import evaluator_for

    loaded = load_model(STORIES)
    lm = build_layer_map(loaded.model)
    other, _ = evaluator_for("loss:demo", loaded.model, loaded.tokenizer, limit=4, batch_size=16, max_length=64, skip=4)
    order, _ = greedy_players(CoalitionEngine(loaded.model, lm, other, "block"), 2)
    names = lm.players("block")
    assert chosen["greedy"]["removed"][1:] == [[names[order[0]]], sorted(names[p] for p in order)]
    scored, _ = evaluator_for("loss:demo", loaded.model, loaded.tokenizer, limit=4, batch_size=16, max_length=64)
    value = CoalitionEngine(loaded.model, lm, scored, "block").values([[p for p in range(5) if p != order[0]]])[0]
    assert math.isclose(chosen["greedy"]["values"][1], value, rel_tol=1e-6)


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
def test_task_curves_measures_only_what_is_not_skipped(tmp_path):
    """experiments/pruning_curve.py --reuse adds costly orders to an earlier run through ``skip``."""
    from argparse import Namespace

    from layerscope.cli.prune_curve import task_curves
    from layerscope.core.layermap import build_layer_map
    from layerscope.core.models import load_model

    loaded = load_model(STORIES)
    args = Namespace(
        task=["loss:demo"],
        fields=None,
        subject=None,
        append_eos=True,
        data="loss:demo",
        limit=4,
        max_length=64,
        batch_size=4,
        k_max=2,
    )
    args.out, args.resume, args.selection_items = str(tmp_path), False, 0
    args.greedy, args.shapley, args.no_progress, args.cache_mb = True, "auto", True, 2048.0
    skip = {"block-influence", "angular", "ablation", "last", "random-seed0", "random-seed1", "random-seed2"}
    [(spec, curves)] = list(task_curves(loaded, build_layer_map(loaded.model), args, {}, frozenset(skip)))
    assert spec == "loss:demo" and [c["label"] for c in curves["curves"]] == ["shapley-exact", "greedy"]


def _reuse_setup():
    """experiments/pruning_curve.py as a module, stories260K, its layer map, and the loss:demo evaluator
    (4 examples of 64 tokens) with its data record: what the --reuse tests compare against."""
    import importlib.util

    from layerscope.cli.ablate import build_evaluator
    from layerscope.core.layermap import build_layer_map
    from layerscope.core.models import load_model

    path = Path(__file__).parents[1] / "experiments/pruning_curve.py"
    spec = importlib.util.spec_from_file_location("pruning_curve", path)
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)
    loaded = load_model(STORIES)
    ev, data = build_evaluator(loaded, "loss:demo", 4, 4, 64)
    return experiment, loaded, build_layer_map(loaded.model), ev, data


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
def test_reuse_of_curves_that_cannot_merge_is_refused_before_any_work(tmp_path):
    """experiments/pruning_curve.py --reuse: another K_max, model or items is refused up front."""
    from argparse import Namespace

    from layerscope.core.importance import model_info

    experiment, loaded, lm, ev, data = _reuse_setup()
    args = Namespace(
        task=["loss:demo"], fields=None, subject=None, append_eos=True, limit=4, batch_size=4, max_length=64, k_max=2
    )
    args.reuse = str(tmp_path)
    earlier = {"model": model_info(loaded.model, lm, loaded.name), "k_max": 2, "data": data, "granularity": "block"}
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "curves.json").write_text(json.dumps(earlier))
    experiment.check_reuse(args, loaded, lm)  # the same: merges
    for change, named in (({"k_max": 3}, "K_max"), ({"limit": 5}, "items")):
        with pytest.raises(ConfigError, match=f"its {named} differ"):
            experiment.check_reuse(Namespace(**{**vars(args), **change}), loaded, lm)
    (tmp_path / "demo" / "curves.json").write_text(json.dumps({**earlier, "model": {**earlier["model"], "dtype": "x"}}))
    with pytest.raises(ConfigError, match="its model .* differ"):  # another placement: merged() would refuse it
        experiment.check_reuse(args, loaded, lm)


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
def test_reuse_takes_curves_fingerprinted_before_the_bfloat16_fingerprint(tmp_path):
    """An older curves.json has no fingerprint_precision and the exact hash: still this model's, so --reuse
    takes it (up front and in the merge); another fingerprint is still refused."""
    from argparse import Namespace

    from layerscope.core.importance import model_info
    from layerscope.core.models import exact_weights_fingerprint

    experiment, loaded, lm, ev, data = _reuse_setup()
    now = model_info(loaded.model, lm, loaded.name)
    old = {k: v for k, v in now.items() if k != "fingerprint_precision"}
    args = Namespace(
        task=["loss:demo"],
        fields=None,
        subject=None,
        append_eos=True,
        limit=4,
        batch_size=4,
        max_length=64,
        k_max=2,
        reuse=str(tmp_path),
    )
    (tmp_path / "demo").mkdir()
    new = {"model": now, "k_max": 2, "data": data, "granularity": "block", "baseline": {"full": 1.0}, "seconds": 1}
    for fingerprint, same in ((exact_weights_fingerprint(loaded.model), True), ("0123456789abcdef", False)):
        earlier = {**new, "model": {**old, "fingerprint": fingerprint}, "curves": [], "seconds": 0}
        (tmp_path / "demo" / "curves.json").write_text(json.dumps(earlier))
        if same:
            experiment.check_reuse(args, loaded, lm)
        else:
            with pytest.raises(ConfigError, match="its model .* differ"):
                experiment.check_reuse(args, loaded, lm)
        out = experiment.merged(earlier, {**new, "curves": []}, tmp_path, loaded.model)
        assert isinstance(out["seconds"], dict) is same  # merged: {"this run", "reused", "reused_from"}


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
def test_reuse_measures_importance_curves_again(tmp_path):
    """A label does not say which file a ranking came from: --importance curves are never taken from --reuse."""
    from argparse import Namespace

    from layerscope.core.importance import model_info

    experiment, loaded, lm, ev, data = _reuse_setup()
    labels = ["block-influence", "angular", "ablation", "last", "random-seed0", "random-seed1", "random-seed2"]
    stale = {"label": "ila", "values": [0.0, 0.0, 0.0], "removed": [[], [], []]}
    earlier = {
        "model": model_info(loaded.model, lm, loaded.name),
        "data": data,
        "granularity": "block",
        "k_max": 2,
        "baseline": {"full": float(ev.evaluate(loaded.model).value)},  # the same: the curves merge
        "seconds": 0,
        "curves": [{"label": label, "values": [0.0] * 3, "removed": [[]] * 3} for label in labels] + [stale],
    }
    reuse = tmp_path / "earlier"
    (reuse / "demo").mkdir(parents=True)
    (reuse / "demo" / "curves.json").write_text(json.dumps(earlier))
    args = Namespace(
        task=["loss:demo"],
        fields=None,
        subject=None,
        append_eos=True,
        data="loss:demo",
        limit=4,
        max_length=64,
        batch_size=4,
        k_max=2,
    )
    args.out, args.resume, args.selection_items, args.reuse = str(tmp_path / "new"), False, 0, str(reuse)
    args.greedy, args.shapley, args.no_progress, args.cache_mb = False, "none", True, 2048.0
    given = {"ila": _module_ranking(loaded.model, [float(b) for b in range(lm.n_blocks)])}
    [(_, curves)] = list(experiment.curves_per_task(loaded, lm, args, given))
    ila = [c for c in curves["curves"] if c["label"] == "ila"]
    assert len(ila) == 1 and ila[0]["values"] != stale["values"]  # measured now, not the earlier file's
    assert "reused_from" in curves["seconds"]  # merged: the other curves are the earlier file's


def test_a_model_carrying_peft_adapters_is_refused_with_what_to_do():
    from peft import LoraConfig, get_peft_model

    adapted = get_peft_model(tiny_model("llama", n_layers=3), LoraConfig(r=4, target_modules=["q_proj"]))
    for pruning in (pb.prune, prune_sublayers):
        with pytest.raises(ConfigError, match=r"already carries peft adapters.*merge_and_unload\(\)"):
            pruning(adapted, [1])


def test_an_angular_ranking_over_wider_windows_is_not_read_score_by_score():
    imp = LayerImportance(
        "angular-distance",
        "block",
        [f"layers.{i}" for i in range(4)],
        [0.3, 0.2, 0.25, 0.1],
        {"name": "tiny"},
        method_config={"window": 2},
        extras={"short_windows": {"blocks": ["layers.3"]}},
    )
    for choose_least in (rk.least_important, rk.least_important_blocks):
        with pytest.raises(ConfigError, match=r"window 2 scores layers\.3 over shorter spans.*angular_window"):
            choose_least(imp, 1)
    imp.extras["short_windows"]["blocks"] = []  # window 1: every score spans one block
    assert rk.least_important(imp, 1) == ["layers.3"]


@pytest.mark.skipif(not (STORIES / "config.json").exists(), reason="stories260K not present")
def test_prune_curve_stopped_leaves_the_earlier_curves_and_a_finished_run_replaces_them(tmp_path, capsys, monkeypatch):
    """A fresh run stopped before it writes its curves leaves the earlier run's as they were; one that
    finishes replaces them (with a note), dropping a curve it does not draw; what layerscope did not write stays."""
    from layerscope.cli import prune_curve
    from layerscope.cli.app import main
    from layerscope.pruning.curve import earlier_curves

    out = tmp_path / "curves"
    argv = ["prune-curve", "--model", str(STORIES), "--task", "loss:demo", "--limit", "4", "--k-max", "1"]
    argv += ["--max-length", "64", "--shapley", "none", "--no-greedy", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    demo = out / "demo"
    labels = [c["label"] for c in json.loads((demo / "curves.json").read_text())["curves"]]
    (demo / "notes.txt").write_text("mine")
    (demo / "old-order").mkdir()  # a curve of the earlier run that this one does not draw
    (demo / "old-order" / "pruning.json").write_text("{}")
    earlier = json.loads((demo / "curves.json").read_text())
    earlier["curves"].append({**earlier["curves"][0], "label": "old-order"})
    (demo / "curves.json").write_text(json.dumps(earlier))
    before = {p: p.read_bytes() for p in demo.rglob("*") if p.is_file()}
    capsys.readouterr()
    real = prune_curve.task_curves

    def stopped(*a, **kw):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(prune_curve, "task_curves", stopped)
    assert main(argv) == 130
    assert "earlier curves" not in capsys.readouterr().err
    assert {p: p.read_bytes() for p in demo.rglob("*") if p.is_file()} == before

    monkeypatch.setattr(prune_curve, "task_curves", real)
    assert main(argv) == 0
    out_text, err = capsys.readouterr()
    n = len(labels) + 1
    # said at the end, once the new curves are written, beside the line naming them
    replaced = f"note: replaced the earlier curves in {demo} (curves.json, table.md, curve.png, {n} pruning.json)"
    assert err.strip().splitlines()[-1].startswith(replaced)
    wrote = f"wrote {demo} (curve.png, table.md, curves.json, {len(labels)} pruning.json)"
    assert out_text.strip().splitlines()[-1] == wrote
    assert not (demo / "old-order").exists() and (demo / "notes.txt").read_text() == "mine"
    assert [c["label"] for c in json.loads((demo / "curves.json").read_text())["curves"]] == labels
    # a file of the same name that is not layerscope's curves is left alone
    (demo / "curves.json").write_text('{"curves": "someone else\'s"}')
    assert earlier_curves(demo) == [] and (demo / "curves.json").exists()
    # and so is what a label folder that is a link points to, outside OUT
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pruning.json").write_text("{}")
    shutil.rmtree(demo / labels[0])
    (demo / labels[0]).symlink_to(elsewhere)
    (demo / "curves.json").write_text(json.dumps({"curves": [{"label": labels[0]}], "baseline": {"full": 0.5}}))
    # (not the pruning.json a label folder that is a link points to)
    assert earlier_curves(demo) == [demo / "curves.json", demo / "table.md", demo / "curve.png"]
