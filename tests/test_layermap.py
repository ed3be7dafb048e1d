import copy

import pytest
import transformers as tf
from tiny_models import ARCHS, FAMILY_NAMES, tiny_model

from layerscope.core.errors import ConfigError, ModelError
from layerscope.core.layermap import GRANULARITIES, build_layer_map, records_from_names


@pytest.mark.parametrize("arch", ARCHS)
def test_discovers_blocks_sublayers_and_linears(arch):
    model = tiny_model(arch, n_layers=3)
    lm = build_layer_map(model)
    assert lm.n_blocks == 3
    subs = lm.players("sublayer")
    assert len(subs) == 6
    assert [s.kind for s in lm.sublayers] == ["attn", "mlp"] * 3
    assert [s.block for s in lm.sublayers] == [0, 0, 1, 1, 2, 2]
    assert lm.players("block") == [f"{lm.prefix}.{i}" for i in range(3)]
    # every linear module resolves to a real module and belongs to one sub-layer
    for m in lm.linears:
        model.get_submodule(m.path)
        assert m.name.startswith(f"{lm.prefix}.{m.block}.")
    assert sum(len(s.linears) for s in lm.sublayers) == len(lm.linears)
    for s in lm.sublayers:
        model.get_submodule(s.hook_path)
        model.get_submodule(s.output_path)
    # the last linear of each sub-layer is its output projection
    outs = {s.output_path.rsplit(".", 1)[-1] for s in lm.sublayers}
    assert outs <= {"o_proj", "down_proj", "c_proj", "dense", "dense_4h_to_h", "out_proj", "fc2"}


def test_llama_names_are_stable():
    lm = build_layer_map(tiny_model("llama", n_layers=2))
    assert lm.blocks_path == "model.layers"
    assert lm.players("sublayer")[:2] == ["layers.0.self_attn", "layers.0.mlp"]
    assert lm.players("module")[:7] == [
        f"layers.0.{p}"
        for p in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ]
    assert lm.module_types() == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert lm.final_norm_path == "model.norm"


def test_stories260k(stories_path):
    model = tf.AutoModelForCausalLM.from_pretrained(stories_path)
    lm = build_layer_map(model)
    assert lm.n_blocks == 5 and len(lm.linears) == 35 and len(lm.sublayers) == 10


def test_peft_wrapped_model_keeps_stable_names():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama", 2), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    lm = build_layer_map(model)
    assert lm.players("sublayer")[0] == "layers.0.self_attn"
    assert "layers.1.mlp.down_proj" in lm.players("module")


def _peft_model(base, targets):
    """A copy of ``base`` wrapped by peft with fresh LoRA on ``targets``: B is zero, so it computes as ``base``."""
    from peft import LoraConfig, get_peft_model

    fan_in_fan_out = base.config.model_type == "gpt2"  # Conv1D stores weights transposed
    config = LoraConfig(r=4, target_modules=targets, fan_in_fan_out=fan_in_fan_out)
    return get_peft_model(copy.deepcopy(base), config).eval()


def _records(lm, granularity, prefix=""):
    return [
        (p.name, p.block, p.kind, tuple(prefix + t for t in p.targets), p.linears)
        for p in lm.player_records(granularity)
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_peft_wrapped_model_has_the_base_models_players(arch):
    """LoRA on every linear: each wrapper is one linear under its base name (nothing inside it is a
    player: base_layer, lora_A, lora_B), at its path in the peft model; blocks and sub-layers agree too."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = tiny_model(arch, n_layers=2)
    lm = build_layer_map(base)
    model = _peft_model(base, lm.module_types())
    pm = build_layer_map(model)
    for gran in ("block", "sublayer", "module"):
        assert _records(pm, gran) == _records(lm, gran, "base_model.model."), gran
    assert all(isinstance(model.get_submodule(m.path), BaseTunerLayer) for m in pm.linears)
    assert [s.output_path for s in pm.sublayers] == [f"base_model.model.{s.output_path}" for s in lm.sublayers]
    assert pm.module_types() == lm.module_types() and pm.clashing_types() == lm.clashing_types()
    assert pm.child_params == lm.child_params  # adapter weights sit inside linears
    assert not {"lora_A", "lora_B", "base_layer", "default"} & set(pm.other_module_names)


@pytest.mark.parametrize("granularity", ["block", "sublayer", "module"])
def test_ablating_a_fresh_peft_model_equals_ablating_the_base(granularity):
    """The QA case: LoRA on q_proj / v_proj only. With B = 0 the peft model computes as the base model,
    so every player's removal must give the base model's value, under the same name."""
    from tiny_models import TinyTokenizer, random_sft

    from layerscope.methods.ablation import ablate
    from layerscope.scoring import LossEvaluator

    base = tiny_model("llama", n_layers=2)
    ev = LossEvaluator(TinyTokenizer(), random_sft(4, 2).examples, batch_size=2)
    want = ablate(base, ev, granularity)
    got = ablate(_peft_model(base, ["q_proj", "v_proj"]), ev, granularity)
    assert got.players == want.players == build_layer_map(base).players(granularity)
    assert got.extras["removed_value"] == pytest.approx(want.extras["removed_value"], abs=1e-6)
    assert got.scores == pytest.approx(want.scores, abs=1e-6)


def test_experts_of_a_model_with_lora_on_fused_expert_weights_keep_the_base_models_names():
    """peft wraps a fused experts module whose parameters it adapts (target_parameters) and keeps the
    original as base_layer: the expert players keep the base model's names, and removing one gives the
    base model's value (B = 0: the same function)."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from tiny_models import TinyTokenizer, random_sft

    from layerscope.methods.ablation import ablate
    from layerscope.scoring import LossEvaluator

    base = tiny_model("mixtral", n_layers=2)
    ev = LossEvaluator(TinyTokenizer(), random_sft(4, 2).examples, batch_size=2)
    want = ablate(base, ev, "expert")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: target_parameters is experimental
        adapted = get_peft_model(
            base, LoraConfig(r=2, target_modules=[], target_parameters=["mlp.experts.gate_up_proj"])
        )
    adapted.eval()
    got = ablate(adapted, ev, "expert")
    assert got.players == want.players == build_layer_map(base).players("expert")
    assert got.scores == pytest.approx(want.scores, abs=1e-6)


def test_removing_a_lora_wrapped_module_zeroes_base_and_adapter():
    """Removing a module player of a peft model zeroes its wrapper's output, base + LoRA: with B != 0,
    the model without the adapted modules is the base model without them."""
    import torch

    from layerscope.engine.removal import removed

    base = tiny_model("llama", n_layers=2)
    model = _peft_model(base, ["q_proj", "v_proj"])
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_()
    ids = torch.randint(2, 128, (2, 9))
    adapted = [n for n in build_layer_map(base).players("module") if n.endswith(("q_proj", "v_proj"))]
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base(ids).logits)  # the adapters do change the model
        with removed(model, build_layer_map(model), adapted, "module"):
            got = model(ids).logits
        with removed(base, build_layer_map(base), adapted, "module"):
            want = base(ids).logits
    torch.testing.assert_close(got, want)


def test_encoder_models_are_refused():
    bert = tf.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, is_decoder=True
    )
    with pytest.raises(ModelError, match="encoder"):
        build_layer_map(tf.AutoModelForCausalLM.from_config(bert))
    t5 = tf.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    with pytest.raises(ModelError, match="encoder-decoder"):
        build_layer_map(tf.T5ForConditionalGeneration(t5))


def test_hybrid_and_miscounted_block_lists_are_named():
    """Jamba mixes state-space and attention blocks: said so, not 'found no list of decoder blocks'."""
    jamba = tf.AutoConfig.for_model(
        "jamba",
        vocab_size=64,
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=2,
        num_experts_per_tok=1,
        mamba_d_state=8,
        attn_layer_period=2,
        attn_layer_offset=1,
        use_mamba_kernels=False,
    )
    with pytest.raises(ModelError, match=r"blocks are of different kinds \(JambaAttentionDecoderLayer, "):
        build_layer_map(tf.AutoModelForCausalLM.from_config(jamba))
    llama = tiny_model("llama", n_layers=2)
    llama.config.num_hidden_layers = 3  # a config that disagrees with the weights
    with pytest.raises(ModelError, match=r"expected a ModuleList of 3 blocks.*another count: model.layers \(2\)"):
        build_layer_map(llama)


def test_block_index_validation():
    lm = build_layer_map(tiny_model("llama", 3))
    assert lm.resolve_blocks([0, -1]) == [0, 2]
    with pytest.raises(ConfigError, match="out of range"):
        lm.resolve_blocks([3])
    with pytest.raises(ConfigError, match="granularity"):
        lm.players("head")


@pytest.mark.parametrize("arch", ARCHS)
def test_player_records_agree_with_the_map_and_with_names(arch):
    lm = build_layer_map(tiny_model(arch, n_layers=2))
    for gran in (g for g in GRANULARITIES if g != "expert"):  # dense models have no experts (tests/test_moe.py)
        records = lm.player_records(gran)
        assert [p.name for p in records] == lm.players(gran)
        assert all(p.targets and p.linears for p in records)
        # a saved result has only the names: they give the same block and kind
        again = records_from_names([p.name for p in records], gran)
        assert [(p.block, p.kind) for p in again] == [(p.block, p.kind) for p in records]
    blocks = lm.player_records("block")
    assert blocks[1].kind == "block" and blocks[1].targets == tuple(s.hook_path for s in lm.sublayers[2:4])
    assert sum(len(p.linears) for p in blocks) == len(lm.linears)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_module_names_alone_group_into_the_maps_sublayers(family):
    """A saved module ranking's sub-layers (compare --level sublayer, the report) are the model's own:
    OPT's fc1 / fc2 form layers.i.mlp, a MoE's router, experts and shared expert one MLP."""
    from layerscope.core.player_names import layer_map_from_names

    lm = build_layer_map(tiny_model(family, n_layers=2))
    rebuilt = layer_map_from_names(lm.players("module"), "module")
    # a MoE of fused experts holds no linear module: a module ranking says nothing about that MLP
    expected = [(s.name, s.linears) for s in lm.sublayers if s.linears]
    if family == "granitemoeshared":
        # its shared MLP counts under the (linear-free) MoE's name, which no module name carries
        expected = [(n.replace("block_sparse_moe", "shared_mlp"), lins) for n, lins in expected]
    assert [(s.name, s.linears) for s in rebuilt.sublayers] == expected


def test_records_from_names_alone():
    sub = records_from_names(["h.0.attn", "h.0.mlp", "h.1.self_attention", "h.1.feed_forward"], "sublayer")
    assert [(p.block, p.kind) for p in sub] == [(0, "attn"), (0, "mlp"), (1, "attn"), (1, "mlp")]
    mods = records_from_names(["layers.3.self_attn.out_proj", "layers.3.fc2"], "module")
    assert [(p.block, p.kind, p.module_type) for p in mods] == [(3, "attn", "out_proj"), (3, "mlp", "fc2")]
    assert records_from_names(["transformer.h.2", "transformer.h.0"], "block")[0].block == 2  # order kept
    with pytest.raises(ConfigError, match="block-list name"):
        records_from_names(["layers.0.mlp", "blocks.1.mlp"], "sublayer")
    with pytest.raises(ConfigError, match="block-list name"):
        records_from_names(["mlp"], "sublayer")
    lm = build_layer_map(tiny_model("llama", 2))
    assert lm.block_of("layers.1.mlp.up_proj") == 1
    with pytest.raises(ConfigError, match="not a player of this model"):
        lm.block_of("h.1.mlp")
