import json
import re
import warnings

import pytest
import yaml
from tiny_models import tiny_model

from layerscope.core.errors import ConfigError
from layerscope.core.importance import LayerImportance, model_info
from layerscope.core.layermap import build_layer_map
from layerscope.training.export import export_selection, write_export
from layerscope.training.selection import select_modules
from layerscope.training.virtual_layermap import layer_map_from_importance


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("llama", n_layers=4)
    return model, build_layer_map(model)


def ranking(model, lm, granularity="module", scores=None):
    players = lm.players(granularity)
    scores = [float((i * 5) % len(players)) for i in range(len(players))] if scores is None else scores
    return LayerImportance(
        method="test", granularity=granularity, players=players, scores=scores, model=model_info(model, lm, "tiny")
    )


def adapted_by(config_kwargs) -> set[str]:
    """Apply a LoraConfig to a fresh tiny model; return the adapted module paths."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    cfg = config_kwargs if isinstance(config_kwargs, LoraConfig) else LoraConfig(**config_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pm = get_peft_model(tiny_model("llama", n_layers=4), cfg)
    return {n for n, m in pm.get_base_model().named_modules() if isinstance(m, LoraLayer)}


def paths(lm, sel) -> set[str]:
    return {m.path for m in lm.linears if m.name in set(sel.modules)}


@pytest.mark.parametrize(
    "granularity,mode,fraction",
    [("module", "top", 0.3), ("module", "freeze-bottom", 0.25), ("block", "top", 0.5), ("sublayer", "top", 0.25)],
)
@pytest.mark.parametrize("virtual", [False, True])
def test_peft_export_loads_and_adapts_exactly_the_selection(tiny, tmp_path, granularity, mode, fraction, virtual):
    from peft import LoraConfig

    model, lm = tiny
    imp = ranking(model, lm, granularity)
    used_map = layer_map_from_importance(imp) if virtual else lm
    sel = select_modules(used_map, imp, mode, fraction)
    ex = export_selection(sel, used_map, "peft")
    path = write_export(ex, tmp_path)
    assert path.name == "adapter_config.json"
    loaded = LoraConfig.from_pretrained(str(tmp_path))
    assert adapted_by(loaded) == paths(lm, sel)
    assert adapted_by(json.loads(path.read_text())) == paths(lm, sel)
    if granularity == "block":  # every selected block takes all 7 types: the per-layer form is used
        assert ex.config["layers_to_transform"] == [2, 3] and ex.config["layers_pattern"] == "layers"


def axolotl_unfrozen(patterns: list[str], model) -> set[str]:
    """axolotl's rule: each '.' is literal, re.match against parameter names."""
    regs = [re.compile(p.replace(".", "\\.")) for p in patterns]
    return {n for n, _ in model.named_parameters() if any(r.match(n) for r in regs)}


@pytest.mark.parametrize("virtual", [False, True])
def test_axolotl_full_and_lora(tiny, tmp_path, virtual):
    model, lm = tiny
    imp = ranking(model, lm)
    used_map = layer_map_from_importance(imp) if virtual else lm
    sel = select_modules(used_map, imp, "freeze-bottom", 0.25)
    full = export_selection(sel, used_map, "axolotl", "full", header=["from test"])
    cfg = yaml.safe_load(full.text)
    assert set(cfg) == {"unfrozen_parameters"} and full.text.startswith("# from test")
    assert axolotl_unfrozen(cfg["unfrozen_parameters"], model) == {f"{p}.weight" for p in paths(lm, sel)}

    lora = yaml.safe_load(export_selection(sel, used_map, "axolotl", "lora").text)
    assert lora["adapter"] == "lora" and lora["lora_r"] == 8
    kwargs = {
        "r": 8,
        "target_modules": lora["lora_target_modules"],
        "layers_to_transform": lora.get("peft_layers_to_transform"),
        "layers_pattern": (lora.get("peft_layers_pattern") or [None])[0],
    }
    assert adapted_by(kwargs) == paths(lm, sel)

    blocks = select_modules(lm, ranking(model, lm, "block"), "top", 0.5)
    lb = yaml.safe_load(export_selection(blocks, lm, "axolotl", "lora").text)
    assert lb["peft_layers_to_transform"] == [2, 3] and lb["peft_layers_pattern"] == ["layers"]
    assert len(lb["lora_target_modules"]) == 7


def lf_trainable(cfg, model, n_blocks) -> set[str]:
    """LLaMA-Factory's freeze rule: last n (or first -n) blocks, '.{i}.{module}' substring match."""
    n = cfg["freeze_trainable_layers"]
    ids = range(n_blocks - n, n_blocks) if n > 0 else range(-n)
    mods = cfg["freeze_trainable_modules"].split(",")
    keys = [f".{i}.{'' if m == 'all' else m}" for m in mods for i in ids]
    return {name for name, _ in model.named_parameters() if any(k in name for k in keys)}


def test_llama_factory(tiny):
    model, lm = tiny
    # LoRA: lora_target lists every module, which peft matches exactly
    sel = select_modules(lm, ranking(model, lm), "top", 0.3)
    ex = export_selection(sel, lm, "llama-factory", "lora")
    cfg = yaml.safe_load(ex.text)
    assert cfg["finetuning_type"] == "lora" and ex.exact
    assert adapted_by({"r": 8, "target_modules": cfg["lora_target"].split(",")}) == paths(lm, sel)
    every = export_selection(select_modules(lm, None, "all"), lm, "llama-factory", model=model)
    assert yaml.safe_load(every.text)["lora_target"] == "all" and every.exact

    # freeze: the top two blocks' MLPs are expressible exactly ...
    sub = select_modules(lm, ranking(model, lm, "sublayer", scores=[0, 0, 0, 0, 0, 1, 0, 1]), "top", 0.25)
    exact = export_selection(sub, lm, "llama-factory", "full")
    cfg = yaml.safe_load(exact.text)
    assert exact.exact and cfg == {
        "finetuning_type": "freeze",
        "freeze_trainable_layers": 2,
        "freeze_trainable_modules": "mlp",
    }
    assert lf_trainable(cfg, model, 4) == {f"{p}.weight" for p in paths(lm, sub)}
    # ... so are whole blocks, named by their children: "all" would also train their norms
    blocks = select_modules(lm, ranking(model, lm, "block", scores=[0, 0, 1, 1]), "top", 0.5)
    whole = export_selection(blocks, lm, "llama-factory", "full")
    cfg = yaml.safe_load(whole.text)
    assert cfg["freeze_trainable_modules"] == "self_attn,mlp" and whole.exact and "NOT" not in whole.text
    assert lf_trainable(cfg, model, 4) == {f"{p}.weight" for p in paths(lm, blocks)}
    # ... a scattered per-module selection is not: approximated, and the file says so
    approx = export_selection(sel, lm, "llama-factory", "full")
    assert not approx.exact and "NOT EXACT" in approx.text
    cfg = yaml.safe_load(approx.text)
    assert cfg["finetuning_type"] == "freeze" and isinstance(cfg["freeze_trainable_layers"], int)


@pytest.mark.parametrize("virtual", [False, True])
def test_llama_factory_freeze_of_a_child_with_its_own_norms_is_not_exact(virtual):
    """Qwen3's self_attn holds q_norm / k_norm: LLaMA-Factory unfreezes them with the child."""
    model = tiny_model("qwen3", n_layers=4)
    lm = build_layer_map(model)
    imp = ranking(model, lm, "sublayer", scores=[0, 0, 0, 0, 1, 0, 1, 0])  # the last two blocks' attention
    used_map = layer_map_from_importance(imp) if virtual else lm
    sel = select_modules(used_map, imp, "top", 0.25)
    ex = export_selection(sel, used_map, "llama-factory", "full")
    cfg = yaml.safe_load(ex.text)
    assert cfg["freeze_trainable_layers"] == 2 and cfg["freeze_trainable_modules"] == "self_attn"
    assert not ex.exact and "q_norm" in ex.text
    trained = lf_trainable(cfg, model, 4)
    assert {n for n in trained if "norm" in n} == {
        f"model.layers.{b}.self_attn.{k}_norm.weight" for b in (2, 3) for k in "qk"
    }
    # its MLP holds linear modules only: exact
    mlp = select_modules(lm, ranking(model, lm, "sublayer", scores=[0, 0, 0, 0, 0, 1, 0, 1]), "top", 0.25)
    assert export_selection(mlp, lm, "llama-factory", "full").exact


def test_llama_factory_freeze_without_the_model_of_an_unknown_family_is_not_claimed_exact(tiny):
    model, lm = tiny
    imp = ranking(model, lm, "module")
    imp.model["model_type"] = "somefamily"
    used_map = layer_map_from_importance(imp)
    last_mlps = [m.name for m in used_map.linears if m.block >= 2 and m.sublayer == "mlp"]
    imp.scores = [1.0 if p in last_mlps else 0.0 for p in imp.players]
    sel = select_modules(used_map, imp, "top", len(last_mlps) / len(imp.players))
    ex = export_selection(sel, used_map, "llama-factory", "full")
    assert yaml.safe_load(ex.text)["freeze_trainable_modules"] == "mlp"
    assert not ex.exact and "NOT CHECKED" in ex.text and "--model" in ex.text


def test_errors_and_cli(tiny, tmp_path, capsys):
    from layerscope.cli.app import main

    model, lm = tiny
    sel = select_modules(lm, ranking(model, lm), "top", 0.3)
    with pytest.raises(ConfigError, match="--to"):
        export_selection(sel, lm, "deepspeed")
    with pytest.raises(ConfigError, match="LoraConfig"):
        export_selection(sel, lm, "peft", "full")
    f = ranking(model, lm).save(tmp_path / "imp.json")
    out = tmp_path / "ax.yaml"
    assert (
        main(
            [
                "export",
                str(f),
                "--to",
                "axolotl",
                "--fraction",
                "0.25",
                "--mode",
                "freeze-bottom",
                "--method",
                "full",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cfg = yaml.safe_load(out.read_text())
    assert axolotl_unfrozen(cfg["unfrozen_parameters"], model) == {
        f"{p}.weight" for p in paths(lm, select_modules(lm, ranking(model, lm), "freeze-bottom", 0.25))
    }
    capsys.readouterr()
    assert main(["export", str(f), "--to", "peft", "--fraction", "0.1"]) == 0
    assert len(json.loads(capsys.readouterr().out)["target_modules"]) == 3
    assert main(["export", str(f), "--to", "peft", "--fraction", "1.5"]) == 2
    assert "fraction" in capsys.readouterr().err


def tiny_gemma3_with_vision():
    """Gemma 3's image-text model: its vision tower holds q_proj / k_proj / v_proj and numbered layers too."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=28)
    cfg = tf.Gemma3Config(
        text_config=dict(text, head_dim=8, vocab_size=300, sliding_window=4),
        vision_config=dict(vision, patch_size=14),
        mm_tokens_per_image=4,
        image_token_index=299,
        boi_token_index=297,
        eoi_token_index=298,
    )
    return tf.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("granularity,mode,fraction", [("block", "top", 0.5), ("module", "all", 1.0)])
def test_exports_of_a_model_with_a_vision_tower_adapt_only_the_decoder(granularity, mode, fraction):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    model = tiny_gemma3_with_vision()
    lm = build_layer_map(model)
    assert {"q_proj", "k_proj", "v_proj"} <= set(lm.other_module_names)  # the vision tower's
    sel = select_modules(lm, ranking(model, lm, granularity) if mode != "all" else None, mode, fraction)
    peft_ex = export_selection(sel, lm, "peft")
    axolotl = yaml.safe_load(export_selection(sel, lm, "axolotl", "lora").text)
    factory = yaml.safe_load(export_selection(sel, lm, "llama-factory", "lora").text)
    assert peft_ex.exact and any("also name other modules" in note for note in peft_ex.notes)
    configs = [peft_ex.config, {"target_modules": axolotl["lora_target_modules"]}]
    configs.append({"target_modules": factory["lora_target"].split(",")})
    for cfg in configs:
        keys = ("target_modules", "layers_to_transform", "layers_pattern")
        kwargs = {k: v for k, v in cfg.items() if k in keys}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            pm = get_peft_model(tiny_gemma3_with_vision(), LoraConfig(r=4, **kwargs))
        adapted = {n for n, m in pm.get_base_model().named_modules() if isinstance(m, LoraLayer)}
        assert adapted == paths(lm, sel), sorted(adapted - paths(lm, sel))[:3]


def test_a_selection_of_types_the_vision_tower_lacks_keeps_the_per_layer_form():
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    model = tiny_gemma3_with_vision()
    lm = build_layer_map(model)
    mlps = select_modules(lm, ranking(model, lm, "sublayer", scores=[0, 0, 0, 1, 0, 0, 0, 1]), "top", 0.25)
    ex = export_selection(mlps, lm, "peft")
    assert ex.config["layers_to_transform"] == [1, 3] and not any(
        "also name other modules" in note for note in ex.notes
    )
    kwargs = {k: ex.config[k] for k in ("target_modules", "layers_to_transform", "layers_pattern")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pm = get_peft_model(tiny_gemma3_with_vision(), LoraConfig(r=4, **kwargs))
    assert {n for n, m in pm.get_base_model().named_modules() if isinstance(m, LoraLayer)} == paths(lm, mlps)


def test_lora_injection_on_a_model_with_a_vision_tower_adapts_only_the_decoder():
    from layerscope.training.lora import inject_lora, lora_adapted_paths

    model = tiny_gemma3_with_vision()
    lm = build_layer_map(model)
    adapted = lora_adapted_paths(inject_lora(model, lm, r=4))  # raises if peft adapted anything else
    assert set(adapted) == {m.path for m in lm.linears}


# ---- the export command: loading --model as the ranking was made, what --out names -------------


def test_a_bfloat16_ranking_exports_with_model_loaded_as_it_records(stories_path, tmp_path, capsys):
    """A ranking computed in bfloat16 exports with a plain --model: --dtype auto loads the dtype the
    ranking records; --dtype says otherwise, and is obeyed."""
    from layerscope.cli.app import main
    from layerscope.core.models import load_model

    net = load_model(str(stories_path), dtype="bfloat16").model
    lm = build_layer_map(net)
    imp = ranking(net, lm)
    f = imp.save(tmp_path / "bf16.json")
    assert LayerImportance.load(f).model["dtype"] == "bfloat16"
    for extra in ([], ["--dtype", "bfloat16"]):
        capsys.readouterr()
        assert main(["export", str(f), "--to", "peft", "--model", str(stories_path), "--threads", "1", *extra]) == 0
        got = capsys.readouterr()
        # stdout is the config alone: where the model loaded is said on stderr
        assert set(json.loads(got.out)["target_modules"]) == paths(lm, select_modules(lm, imp, "top", 0.3))
        assert "dtype: bfloat16" in got.err
    # the fingerprint reads weights at bfloat16's precision: the float32 load is the same model
    assert main(["export", str(f), "--to", "peft", "--model", str(stories_path), "--dtype", "float32"]) == 0
    assert "dtype: float32" in capsys.readouterr().err
    # float16 rounds the weights otherwise: refused, with the option that accepts it
    assert main(["export", str(f), "--to", "peft", "--model", str(stories_path), "--dtype", "float16"]) == 2
    assert "--ignore-fingerprint" in capsys.readouterr().err


def test_out_is_a_file_of_the_formats_suffix_or_a_folder(tiny, tmp_path, capsys):
    from layerscope.cli.app import main

    model, lm = tiny
    f = str(ranking(model, lm).save(tmp_path / "imp.json"))
    assert main(["export", f, "--to", "peft", "--out", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["peft_type"] == "LORA"
    assert main(["export", f, "--to", "axolotl", "--out", str(tmp_path / "a.yml")]) == 0
    assert isinstance(yaml.safe_load((tmp_path / "a.yml").read_text()), dict)
    assert main(["export", f, "--to", "llama-factory", "--out", str(tmp_path / "run")]) == 0  # no suffix: a folder
    assert (tmp_path / "run" / "llama-factory.yaml").is_file()
    (tmp_path / "v1.2").mkdir()  # an existing folder, whatever its name
    assert main(["export", f, "--to", "peft", "--out", str(tmp_path / "v1.2")]) == 0
    assert (tmp_path / "v1.2" / "adapter_config.json").is_file()
    capsys.readouterr()
    # any other name is a folder to create, dots and all (a model's name: Llama-3.1-8B)
    assert main(["export", f, "--to", "peft", "--out", str(tmp_path / "Llama-3.1-8B")]) == 0
    assert (tmp_path / "Llama-3.1-8B" / "adapter_config.json").is_file()
    capsys.readouterr()
    for fmt, out, wanted in [("axolotl", "x.json", ".yaml or .yml"), ("peft", "x.yaml", ".json")]:
        assert main(["export", f, "--to", fmt, "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"--to {fmt} writes a {wanted} file" in err and "\n" not in err
        assert not (tmp_path / out).exists()  # neither a file of the wrong kind nor a folder of that name


def test_fraction_with_mode_all_is_said_to_have_no_effect(tiny, tmp_path, capsys):
    from layerscope.cli.app import main

    model, lm = tiny
    f = str(ranking(model, lm).save(tmp_path / "imp.json"))
    assert main(["export", f, "--to", "peft", "--mode", "all", "--fraction", "0.1"]) == 0
    got = capsys.readouterr()
    assert len(json.loads(got.out)["target_modules"]) == len(lm.module_types())  # every module
    assert "note: --mode all uses every module: --fraction 0.1 has no effect" in got.err
    assert main(["export", f, "--to", "peft", "--mode", "all"]) == 0
    assert "--fraction" not in capsys.readouterr().err


def test_a_selection_peft_refuses_to_convert_is_marked_not_exact():
    """On transformers 5 peft converts an expert projection's name of some MoE families to the fused
    experts, and refuses gate_proj without up_proj outright: the export says so instead of crashing."""
    from layerscope.training.selection import Selection

    model = tiny_model("ernie4_5_moe", n_layers=2, vocab=512)
    lm = build_layer_map(model)
    gate = [m.name for m in lm.linears if m.type == "gate_proj"][:1]
    assert gate, [m.name for m in lm.linears]
    selection = Selection(gate, "top", 0.1, "module", gate, len(lm.linears), len(lm.linears))
    for fmt in ("peft", "axolotl", "llama-factory"):
        ex = export_selection(selection, lm, fmt)
        assert not ex.exact and "refuses these targets" in ex.notes[-1], (fmt, ex.notes)


# ---- from a review of the export command: what --out replaces, and what "exact" may claim ---------


def test_out_refuses_an_existing_file_unless_overwrite(tiny, tmp_path, capsys):
    """A second export to the same file would silently replace the first: refused in one line, exit 2,
    the file untouched; --overwrite replaces it."""
    from layerscope.cli.app import main

    model, lm = tiny
    f = str(ranking(model, lm).save(tmp_path / "imp.json"))
    for fmt, out, written in [
        ("peft", tmp_path / "a.json", tmp_path / "a.json"),
        ("axolotl", tmp_path / "b.yml", tmp_path / "b.yml"),
        ("llama-factory", tmp_path / "run", tmp_path / "run" / "llama-factory.yaml"),  # a folder: its file
    ]:
        assert main(["export", f, "--to", fmt, "--out", str(out)]) == 0
        first = written.read_text()
        capsys.readouterr()
        assert main(["export", f, "--to", fmt, "--out", str(out), "--lora-r", "4"]) == 2
        err = capsys.readouterr().err.strip()
        assert "exists; --overwrite replaces it" in err and "\n" not in err, err
        assert str(written) in err  # a folder's: the file in it that would be replaced
        assert written.read_text() == first
        assert main(["export", f, "--to", fmt, "--out", str(out), "--lora-r", "4", "--overwrite"]) == 0
        assert written.read_text() != first
    capsys.readouterr()


def test_an_adapter_config_is_never_written_beside_trained_adapter_weights(tiny, tmp_path, capsys):
    """`export --to peft --out adapter` into a saved peft adapter would replace the config its weights were
    saved with (r, targets), and PeftModel.from_pretrained would load them under the new one: refused,
    --overwrite or not, and by write_export too."""
    from peft import LoraConfig, get_peft_model

    from layerscope.cli.app import main

    model, lm = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trained = get_peft_model(tiny_model("llama", n_layers=4), LoraConfig(r=4, target_modules=["q_proj"]))
    adapter = tmp_path / "adapter"
    trained.save_pretrained(str(adapter))
    saved = (adapter / "adapter_config.json").read_text()
    assert any(p.name.startswith("adapter_model") for p in adapter.iterdir())
    f = str(ranking(model, lm).save(tmp_path / "imp.json"))
    for out in (adapter, adapter / "adapter_config.json"):
        for extra in ([], ["--overwrite"]):
            capsys.readouterr()
            assert main(["export", f, "--to", "peft", "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert "holds trained adapter weights" in err and "\n" not in err, err
    assert (adapter / "adapter_config.json").read_text() == saved
    (adapter / "adapter_config.json").unlink()  # weights without their config: still an adapter's folder
    assert main(["export", f, "--to", "peft", "--out", str(adapter), "--overwrite"]) == 2
    assert not (adapter / "adapter_config.json").exists()
    sel = select_modules(lm, ranking(model, lm), "top", 0.3)
    with pytest.raises(ConfigError, match="holds trained adapter weights"):
        write_export(export_selection(sel, lm, "peft"), adapter)
    # another config file in that folder does not touch the adapter: written
    assert main(["export", f, "--to", "peft", "--out", str(adapter / "layerscope.json")]) == 0


def test_mode_all_without_the_model_writes_no_bare_module_types():
    """Without --model the modules outside the blocks are unknown, so --mode all may not be written as bare
    types: CTRL's MLP linears are named 0 and 2, like its blocks h.0 and h.2, which peft cannot adapt."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    model = tiny_model("ctrl", n_layers=4)
    lm = build_layer_map(model)
    imp = ranking(model, lm)
    virtual = layer_map_from_importance(imp)
    sel = select_modules(virtual, imp, "all")
    ex = export_selection(sel, virtual, "peft")
    assert ex.config["layers_to_transform"] == [0, 1, 2, 3] and ex.config["layers_pattern"] == "h"
    kwargs = {k: v for k, v in ex.config.items() if k in ("target_modules", "layers_to_transform", "layers_pattern")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(tiny_model("ctrl", n_layers=4), LoraConfig(r=4, **kwargs))
    adapted = {n for n, m in pm.get_base_model().named_modules() if isinstance(m, LoraLayer)}
    assert ex.exact and adapted == {m.path for m in lm.linears}
    axolotl = export_selection(sel, virtual, "axolotl")
    assert axolotl.config["lora_target_modules"] == ex.config["target_modules"]
    # with the model, bare types are still written where they are exact (a plain llama)
    llama = tiny_model("llama", n_layers=4)
    llm = build_layer_map(llama)
    assert export_selection(select_modules(llm, None, "all"), llm, "peft").config["target_modules"] == (
        llm.module_types()
    )


def test_mode_all_of_an_image_text_model_without_the_model_is_not_claimed_exact():
    """Gemma 3's vision tower has layers.<i>.self_attn.q_proj of its own: without the model, whatever
    names are written may reach it, so no format says exact; with it, they are exact."""
    model = tiny_gemma3_with_vision()
    lm = build_layer_map(model)
    imp = ranking(model, lm)
    virtual = layer_map_from_importance(imp)
    sel = select_modules(virtual, imp, "all")
    assert virtual.architecture == "Gemma3ForConditionalGeneration"
    for fmt, method in [("peft", "lora"), ("axolotl", "lora"), ("axolotl", "full"), ("llama-factory", "lora")]:
        ex = export_selection(sel, virtual, fmt, method)
        assert not ex.exact and any("NOT CHECKED: without --model" in n for n in ex.notes), (fmt, method)
    assert "NOT CHECKED: without --model" in export_selection(sel, virtual, "axolotl").text
    assert export_selection(select_modules(lm, None, "all"), lm, "peft").exact


def lf_all_linear_modules(model) -> list[str]:
    """LLaMA-Factory's find_all_linear_modules: last names of modules whose class name holds 'Linear'."""
    names = set()
    for name, module in model.named_modules():
        cls = type(module).__name__
        if "lm_head" not in name and "Linear" in cls and "Embedding" not in cls:
            names.add(name.split(".")[-1])
    return sorted(names)


def test_llama_factory_lora_target_all_only_where_its_own_all_is_the_layer_maps_linears():
    """LLaMA-Factory's `all` keeps only modules whose class name holds 'Linear': GPT-2's Conv1D are dropped
    (no target at all), so every module is listed by name; a llama's `all` is its linears."""
    model = tiny_model("gpt2", n_layers=4)
    lm = build_layer_map(model)
    assert lf_all_linear_modules(model) == []  # what `all` would hand peft
    sel = select_modules(lm, None, "all")
    ex = export_selection(sel, lm, "llama-factory", "lora", model=model)
    target = ex.config["lora_target"]
    assert target != "all" and ex.exact and "Conv1D" in ex.text
    assert set(target.split(",")) == {m.path for m in lm.linears}
    # without the model it cannot be known what `all` takes: every module by name, and why
    imp = ranking(model, lm)
    virtual = layer_map_from_importance(imp)
    ex = export_selection(select_modules(virtual, imp, "all"), virtual, "llama-factory")
    assert ex.config["lora_target"] != "all" and "not known" in ex.text
    # a llama: LLaMA-Factory's all is exactly its linear module types
    llama = tiny_model("llama", n_layers=4)
    llm = build_layer_map(llama)
    assert lf_all_linear_modules(llama) == sorted(llm.module_types())
    ex = export_selection(select_modules(llm, None, "all"), llm, "llama-factory", model=llama)
    assert ex.config["lora_target"] == "all" and ex.exact


def test_llama_factory_freeze_of_a_child_whose_name_starts_a_siblings_is_not_exact():
    """OPT's block holds self_attn and self_attn_layer_norm: LLaMA-Factory unfreezes '.<i>.self_attn' by
    substring, so the norm goes with the attention and the export cannot be exact."""
    model = tiny_model("opt", n_layers=4)
    lm = build_layer_map(model)
    attn = [m.name for m in lm.linears if m.block >= 2 and m.name.split(".")[2] == "self_attn"]
    players = lm.players("module")
    imp = ranking(model, lm, scores=[1.0 if p in attn else 0.0 for p in players])
    sel = select_modules(lm, imp, "top", len(attn) / len(players))
    assert sorted(sel.modules) == sorted(attn)
    ex = export_selection(sel, lm, "llama-factory", "full")
    cfg = yaml.safe_load(ex.text)
    assert cfg["freeze_trainable_layers"] == 2 and cfg["freeze_trainable_modules"] == "self_attn"
    trained = lf_trainable(cfg, model, 4)
    assert {n for n in trained if "layer_norm" in n} == {
        f"model.decoder.layers.{b}.self_attn_layer_norm.{p}" for b in (2, 3) for p in ("weight", "bias")
    }
    assert not ex.exact and "self_attn_layer_norm.weight" in ex.text and "substring" in ex.text
    # its fc1 / fc2 have no sibling of a longer name: exact
    fcs = [m.name for m in lm.linears if m.block >= 2 and m.type == "fc1"]
    imp = ranking(model, lm, scores=[1.0 if p in fcs else 0.0 for p in players])
    ex = export_selection(select_modules(lm, imp, "top", len(fcs) / len(players)), lm, "llama-factory", "full")
    assert yaml.safe_load(ex.text)["freeze_trainable_modules"] == "fc1" and ex.exact
